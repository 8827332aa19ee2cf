//! The SSH transport: one russh connection for the whole run, and one `direct-streamlocal`
//! channel to the remote Docker socket per HTTP connection, so the remote host needs sshd and
//! nothing else. The daemon module (`crate::docker::daemon`) opens its channels for bollard and for the
//! raw calls alike.
//!
//! Failures keep their class: the handshake's host-key verdict is recorded here, and a channel
//! that cannot be opened fails with an I/O error that carries a [`ChannelFailure`], found again by
//! [`channel_failure_in`] where the error is explained (bollard and hyper wrap it on the way).

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::known_hosts::{HostKeyError, KnownHosts, describe};
use crate::error::{ConnectClass, Error};

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The host's name: what known_hosts names it by, and what messages say (an EC2 instance's id).
    pub host: String,
    /// Where the TCP connection goes when that is not `host` (an EC2 instance's address, which
    /// changes on every start): known_hosts lines naming it are trusted too.
    pub address: Option<String>,
    pub port: u16,
    pub user: String,
    pub socket: String,
}

impl SshTarget {
    fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The commands that print the host's keys, for a hint: the agent's own, and OpenSSH's.
    fn keyscan(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!(
            "agent host keyscan ssh://{}@{host}:{}` or `ssh-keyscan -H -p {} {}",
            self.user, self.port, self.port, self.host
        )
    }
}

/// How long to wait, and how to notice a dead peer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For name resolution, the TCP connection, and the SSH handshake and authentication.
    pub connect: Duration,
    /// Keepalive interval once connected; the connection is declared dead when nothing has come
    /// back for [`KEEPALIVE_TICKS`] intervals (the `--read-timeout`).
    pub keepalive: Duration,
}

/// How many keepalive intervals of silence make the read timeout.
pub const KEEPALIVE_TICKS: u32 = 3;

/// russh's `keepalive_max` for a budget of `ticks` intervals. russh counts a tick each interval
/// of silence and gives up when the count *exceeds* `keepalive_max`, i.e. at tick
/// `keepalive_max + 1`: a maximum of 3 gave up after 4 intervals (60 s for a stated 45 s).
fn russh_keepalive_max(ticks: u32) -> usize {
    ticks.saturating_sub(1).max(1) as usize
}

/// The open SSH connection, shared by every HTTP connection of the run.
pub struct SshSession {
    handle: client::Handle<Verifier>,
    target: SshTarget,
    /// Why the connection ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
}

/// What the handshake saw: the host key verdict (the handler can only say yes or no to russh).
#[derive(Default)]
struct Verdict {
    presented: Option<String>,
    refused: Option<HostKeyError>,
}

/// The russh handler: checks the host key against known_hosts.
struct Verifier {
    known: Arc<KnownHosts>,
    host: String,
    address: Option<String>,
    port: u16,
    verdict: Arc<Mutex<Verdict>>,
    /// How long the server may go unanswered (keepalive interval × ticks), for the end's reason.
    read_timeout: Duration,
    ended: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn disconnected(&mut self, reason: client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let (why, result) = match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => ("the server closed the connection".to_string(), Ok(())),
            client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => (
                format!(
                    "the host stopped answering: no reply to keepalives for {}s (--read-timeout)",
                    self.read_timeout.as_secs()
                ),
                Err(russh::Error::KeepaliveTimeout),
            ),
            client::DisconnectReason::Error(error) => (format!("the connection dropped: {error}"), Err(error)),
        };
        self.ended.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(why);
        result
    }

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let mut verdict = self.verdict.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            // No certificate algorithm is offered, so a certificate here is refused.
            PublicKeyOrCertificate::Certificate(_) => {
                verdict.presented = Some("a host certificate".to_string());
                return Ok(false);
            }
        };
        verdict.presented = Some(describe(key));
        // A line naming the host (an instance's id pins its key whatever its address), else one naming
        // the address it was reached at.
        let by_address = || self.address.as_ref().map(|address| self.known.check(address, self.port, key));
        match self.known.check(&self.host, self.port, key) {
            Ok(()) => Ok(true),
            // Only where no line pins the host itself: a changed key for the id stays changed.
            Err(HostKeyError::Unknown { .. }) if matches!(by_address(), Some(Ok(()))) => Ok(true),
            Err(refused) => {
                verdict.refused = Some(refused);
                Ok(false)
            }
        }
    }
}

/// The host-key algorithms to offer: those known_hosts holds for the host, in russh's order of
/// preference (an RSA entry means rsa-sha2-512 and rsa-sha2-256, never SHA-1). With none known,
/// russh's default list, and the check refuses whatever the server presents.
fn host_key_algorithms(known: &KnownHosts, host: &str, address: Option<&str>, port: u16) -> Vec<Algorithm> {
    let mut wanted = known.algorithms_for(host, port);
    if let Some(address) = address {
        wanted.extend(known.algorithms_for(address, port));
    }
    russh::Preferred::DEFAULT
        .key
        .iter()
        .filter(|algorithm| match algorithm {
            Algorithm::Rsa { hash: None } => false,
            Algorithm::Rsa { .. } => wanted.iter().any(|known| known.clone().is_rsa()),
            other => wanted.contains(other),
        })
        .cloned()
        .collect()
}

impl SshSession {
    /// Opens the connection: resolve, connect, handshake with the host-key check, authenticate
    /// with the first key the server accepts. Every stage is under the connect timeout.
    pub async fn connect(
        target: SshTarget,
        keys: &[(String, Arc<PrivateKey>)],
        known: Arc<KnownHosts>,
        timeouts: Timeouts,
    ) -> Result<SshSession, Error> {
        let name = target.name();
        let timed_out = |stage: &str| Error::Connect {
            target: format!("ssh://{name}"),
            class: ConnectClass::Timeout,
            detail: format!("no answer within {}s ({stage})", timeouts.connect.as_secs()),
        };
        let deadline = tokio::time::Instant::now() + timeouts.connect;

        // First offer only the host-key types known_hosts holds for the host, so the server
        // presents a key we can check. A server with none of them fails the negotiation: then
        // shake hands once more with russh's default list, only to see the key it presents and
        // refuse it with the fingerprints (exit 23/24) rather than a generic handshake error.
        let known_algorithms = host_key_algorithms(&known, &target.host, target.address.as_deref(), target.port);
        let mut offers = vec![(!known_algorithms.is_empty()).then_some(known_algorithms)];
        if offers[0].is_some() {
            offers.push(None);
        }
        let mut handle = None;
        for algorithms in offers {
            let tcp = tokio::time::timeout_at(
                deadline,
                connect_tcp("ssh", target.address.as_deref().unwrap_or(&target.host), target.port),
            )
            .await
            .map_err(|_| timed_out("TCP connection"))??;
            let mut preferred = russh::Preferred::default();
            if let Some(algorithms) = algorithms {
                preferred.key = Cow::Owned(algorithms);
            }
            let config = Arc::new(client::Config {
                preferred,
                keepalive_interval: Some(timeouts.keepalive),
                keepalive_max: russh_keepalive_max(KEEPALIVE_TICKS),
                nodelay: true,
                ..Default::default()
            });
            let verdict = Arc::new(Mutex::new(Verdict::default()));
            // Each attempt its own: a failed first handshake must not stand as the session's end.
            let ended = Arc::new(Mutex::new(None));
            let verifier = Verifier {
                known: known.clone(),
                host: target.host.clone(),
                address: target.address.clone(),
                port: target.port,
                verdict: verdict.clone(),
                read_timeout: timeouts.keepalive * KEEPALIVE_TICKS,
                ended: ended.clone(),
            };
            let handshake =
                tokio::time::timeout_at(deadline, client::connect_stream(config, QuickAck(tcp), verifier)).await;
            let error = match handshake {
                Err(_) => return Err(timed_out("SSH handshake")),
                Ok(Ok(connected)) => {
                    handle = Some((connected, ended));
                    break;
                }
                Ok(Err(error)) => error,
            };
            let verdict = verdict.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if verdict.refused.is_none()
                && matches!(error, russh::Error::NoCommonAlgo { kind: russh::AlgorithmKind::Key, .. })
            {
                tracing::debug!("ssh: {name} has none of the host-key types known_hosts holds for it: {error}");
                continue;
            }
            let presented = verdict.presented.clone().unwrap_or_else(|| "no key".to_string());
            let unknown = |other_types: Vec<String>| Error::HostKeyUnknown {
                host: name.clone(),
                keyscan: target.keyscan(),
                presented: presented.clone(),
                other_types,
                cert_authorities: known.cert_authority_lines_for(&target.host, target.port),
            };
            return Err(match &verdict.refused {
                Some(HostKeyError::Unknown { other_types, .. }) => unknown(other_types.clone()),
                None if matches!(error, russh::Error::UnknownKey) => unknown(Vec::new()),
                Some(HostKeyError::Changed { expected, .. }) => Error::HostKeyChanged {
                    host: name,
                    keyscan: target.keyscan(),
                    presented,
                    expected: expected.clone(),
                },
                Some(HostKeyError::Revoked { source, .. }) => {
                    Error::HostKeyRevoked { host: name, presented, source_line: source.clone() }
                }
                None => Error::Ssh { host: name, detail: format!("the SSH handshake failed: {error}") },
            });
        }
        let Some((mut handle, ended)) = handle else {
            return Err(Error::Ssh {
                host: name,
                detail: "the SSH handshake failed: no host-key algorithm in common with the server".to_string(),
            });
        };

        let mut refused = Vec::new();
        for (label, key) in keys {
            let hash = if key.algorithm().is_rsa() {
                match tokio::time::timeout_at(deadline, handle.best_supported_rsa_hash()).await {
                    Err(_) => return Err(timed_out("authentication")),
                    // The server named its signature algorithms; `Some(None)` would be SHA-1 only.
                    Ok(Ok(Some(hash))) => hash.or(Some(HashAlg::Sha256)),
                    Ok(Ok(None)) | Ok(Err(_)) => Some(HashAlg::Sha256),
                }
            } else {
                None
            };
            let attempt = handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key.clone(), hash));
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(timed_out("authentication")),
                Ok(Ok(result)) if result.success() => {
                    tracing::debug!("ssh: authenticated as {} with {label}", target.user);
                    return Ok(SshSession { handle, target, ended });
                }
                Ok(Ok(_)) => refused.push(label.clone()),
                Ok(Err(error)) => {
                    return Err(Error::Ssh { host: name, detail: format!("authentication failed: {error}") });
                }
            }
        }
        Err(Error::SshAuth { host: name, user: target.user.clone(), key: refused.join(", ") })
    }

    /// Whether the connection has ended (dropped, or closed by the server).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Why the connection ended, in words.
    pub fn end_reason(&self) -> String {
        self.ended.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone().unwrap_or_else(|| {
            "the connection was closed (the host went away or stopped answering keepalives)".to_string()
        })
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "done", "en").await;
    }

    /// A new channel to the remote Docker socket, for one HTTP connection. A failure is an I/O
    /// error (as hyper's connectors return) whose inner error is the [`ChannelFailure`].
    pub async fn open_channel(&self) -> io::Result<russh::ChannelStream<client::Msg>> {
        let host = self.target.name();
        let failure = if self.handle.is_closed() {
            ChannelFailure::Ssh { host, detail: self.end_reason() }
        } else {
            match self.handle.channel_open_direct_streamlocal(self.target.socket.as_str()).await {
                Ok(channel) => return Ok(channel.into_stream()),
                Err(russh::Error::ChannelOpenFailure(reason)) => ChannelFailure::Socket {
                    host,
                    socket: self.target.socket.clone(),
                    detail: match reason {
                        russh::ChannelOpenFailure::AdministrativelyProhibited => {
                            "sshd forbids forwarding to sockets (AllowStreamLocalForwarding)".to_string()
                        }
                        russh::ChannelOpenFailure::ConnectFailed => {
                            "sshd could not connect to it: the socket does not exist or the user may not open it"
                                .to_string()
                        }
                        other => format!("sshd refused the channel ({other:?})"),
                    },
                },
                Err(error) => ChannelFailure::Ssh { host, detail: format!("failed to open a channel: {error}") },
            }
        };
        Err(io::Error::other(failure))
    }
}

/// Why a channel to the remote Docker socket could not be opened: the inner error of the I/O
/// error [`SshSession::open_channel`] returns, so the reason travels with the error itself and
/// nothing is left behind for a later, unrelated error to pick up.
#[derive(Debug, Clone)]
pub enum ChannelFailure {
    /// sshd refused the channel to the socket.
    Socket { host: String, socket: String, detail: String },
    /// The SSH connection itself failed or had ended.
    Ssh { host: String, detail: String },
}

impl ChannelFailure {
    /// The agent's error for it, with its exit class.
    pub fn to_error(&self) -> Error {
        match self.clone() {
            ChannelFailure::Socket { host, socket, detail } => Error::RemoteSocket { host, socket, detail },
            ChannelFailure::Ssh { host, detail } => Error::Ssh { host, detail },
        }
    }
}

impl std::fmt::Display for ChannelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_error().fmt(f)
    }
}

impl std::error::Error for ChannelFailure {}

/// The [`ChannelFailure`] an error was caused by, if any, as the agent's error. The whole chain
/// is walked, and the inside of every I/O error too: `io::Error::source` skips the error it wraps.
pub fn channel_failure_in(error: &(dyn std::error::Error + 'static)) -> Option<Error> {
    if let Some(failure) = error.downcast_ref::<ChannelFailure>() {
        return Some(failure.to_error());
    }
    let wrapped = error.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = wrapped.and_then(|inner| channel_failure_in(inner)) {
        return Some(found);
    }
    error.source().and_then(channel_failure_in)
}

/// Resolves the host and connects to the first address that answers, keeping the failure's class.
pub async fn connect_tcp(scheme: &str, host: &str, port: u16) -> Result<tokio::net::TcpStream, Error> {
    let target =
        if host.contains(':') { format!("{scheme}://[{host}]:{port}") } else { format!("{scheme}://{host}:{port}") };
    let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| Error::Connect {
            target: target.clone(),
            class: ConnectClass::NameResolution,
            detail: format!("{host:?} did not resolve ({error})"),
        })?
        .collect();
    let mut last = None;
    for address in &addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last = Some((address, error)),
        }
    }
    let Some((address, error)) = last else {
        return Err(Error::Connect {
            target,
            class: ConnectClass::NameResolution,
            detail: format!("{host:?} resolved to no address"),
        });
    };
    Err(Error::Connect { class: classify_io(&error), target, detail: format!("{address}: {error}") })
}

/// The class of a socket error.
pub fn classify_io(error: &io::Error) -> ConnectClass {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectClass::Refused,
        io::ErrorKind::TimedOut => ConnectClass::Timeout,
        _ => ConnectClass::Other,
    }
}

/// The SSH socket, re-arming `TCP_QUICKACK` after every read. sshd leaves Nagle on for a
/// connection without a terminal, and Linux delays our ACKs: a small packet sshd sends right after
/// another waits up to 40 ms for that ACK — on every channel open and every end of a response.
/// Acknowledging at once removes the stall (measured: about 40 ms per channel on loopback).
struct QuickAck(tokio::net::TcpStream);

impl QuickAck {
    fn acknowledge_quickly(&self) {
        // A failure only leaves delayed ACKs on, so it is ignored.
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.acknowledge_quickly();
        }
        result
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
