//! SSH agent forwarding for `RUN --mount=type=ssh` (`--ssh default`, `--ssh ID=PATH`): one
//! in-memory ssh-agent per id, holding the keys given, served to BuildKit through the session's SSH
//! service (`moby.sshforward.v1.SSH/CheckAgent` and `/ForwardAgent`).
//!
//! The agent protocol is russh's agent server (`russh::keys::agent::server`), not hand-written:
//! each `ForwardAgent` call is one agent connection, its bytes carried both ways in `BytesMessage`s.
//! The keys never touch a disk and never leave the process: a build step can ask the agent for its
//! public keys and for signatures, nothing else (adding, removing and locking keys are refused once
//! the agent holds its keys). bollard's `SshProvider` only relays `SSH_AUTH_SOCK`, which CodeBuild
//! does not have.
//!
//! Whoever is root on the host can use a forwarded agent while the build runs, so each request
//! passes a [`Guard`] first: it signs only SSH user-authentication data (what `ssh` and `git` over
//! SSH ask for) unless the run says `--ssh-sign anything`, logs every signature with the key's
//! fingerprint and, for a login, the user and service it is for, and ends a connection whose
//! message is longer than OpenSSH's agent allows.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard_buildkit_proto::moby::sshforward::v1::ssh_server::{Ssh, SshServer};
use bollard_buildkit_proto::moby::sshforward::v1::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use futures_util::{Stream, StreamExt};
use russh::keys::PrivateKey;
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::server::{Agent, MessageType};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// The gRPC methods the service answers (announced by the session as `/moby.sshforward.v1.SSH/…`).
pub const METHODS: &[&str] = &["CheckAgent", "ForwardAgent"];

/// The id BuildKit uses for `RUN --mount=type=ssh` without `id=`.
pub const DEFAULT_ID: &str = "default";

/// The gRPC metadata key that names the id of a `ForwardAgent` call (BuildKit's `KeySSHID`).
const ID_METADATA: &str = "buildkit.ssh.id";

/// Bytes buffered in each direction of one forwarded agent connection.
const PIPE_BYTES: usize = 64 * 1024;

/// The longest agent message a build step may send: OpenSSH's own limit (`AGENT_MAX_LEN`). A
/// longer one ends the connection, so that a host cannot make the agent buffer without bound.
const MAX_MESSAGE: usize = 256 * 1024;

/// `SSH_AGENTC_SIGN_REQUEST` (draft-miller-ssh-agent, 3.6).
const SIGN_REQUEST: u8 = 13;

/// `SSH_AGENTC_REMOVE_ALL_IDENTITIES`: what a refused sign request is replaced with. The sealed
/// agent refuses it, so the build step gets `SSH_AGENT_FAILURE` in the order it asked.
const REFUSED: [u8; 5] = [0, 0, 0, 1, 19];

/// `SSH_MSG_USERAUTH_REQUEST` (RFC 4252).
const USERAUTH_REQUEST: u8 = 50;

/// Why an agent could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("could not load the key into the in-memory ssh agent for --ssh {id}: {reason}")]
pub struct AgentError {
    pub id: String,
    pub reason: String,
}

/// An agent that, once sealed, answers only "list keys" and "sign".
#[derive(Clone, Default)]
struct SealedAgent {
    sealed: Arc<AtomicBool>,
}

impl Agent for SealedAgent {
    fn confirm_request(&self, message: MessageType) -> impl Future<Output = bool> + Send {
        let allowed =
            matches!(message, MessageType::RequestKeys | MessageType::Sign) || !self.sealed.load(Ordering::SeqCst);
        async move { allowed }
    }
}

/// One in-memory ssh-agent: each `connect` is a new connection to it.
struct InMemoryAgent {
    connections: mpsc::Sender<std::io::Result<DuplexStream>>,
}

impl InMemoryAgent {
    /// Starts the agent and loads `keys` into it.
    async fn start(id: &str, keys: &[Arc<PrivateKey>]) -> Result<InMemoryAgent, AgentError> {
        let (connections, incoming) = mpsc::channel(8);
        let agent = SealedAgent::default();
        let sealed = agent.sealed.clone();
        // The server ends when `connections` is dropped (its stream of connections ends).
        tokio::spawn(russh::keys::agent::server::serve(tokio_stream::wrappers::ReceiverStream::new(incoming), agent));
        let this = InMemoryAgent { connections };
        let mut client = AgentClient::connect(this.connect().await?);
        for key in keys {
            client
                .add_identity(key, &[])
                .await
                .map_err(|error| AgentError { id: id.to_string(), reason: error.to_string() })?;
        }
        sealed.store(true, Ordering::SeqCst);
        Ok(this)
    }

    /// A new connection to the agent.
    async fn connect(&self) -> Result<DuplexStream, AgentError> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        self.connections
            .send(Ok(theirs))
            .await
            .map_err(|_| AgentError { id: String::new(), reason: "the agent has stopped".to_string() })?;
        Ok(ours)
    }
}

/// The agents of one build, by `--ssh` id.
#[derive(Default)]
pub struct SshAgents {
    agents: BTreeMap<String, InMemoryAgent>,
    /// `--ssh-sign anything`: sign any data, not only SSH logins.
    sign_anything: bool,
}

impl SshAgents {
    /// Starts one agent per id with its keys.
    pub async fn start(ids: &[(String, Vec<Arc<PrivateKey>>)], sign_anything: bool) -> Result<SshAgents, AgentError> {
        let mut agents = BTreeMap::new();
        for (id, keys) in ids {
            agents.insert(id.clone(), InMemoryAgent::start(id, keys).await?);
        }
        Ok(SshAgents { agents, sign_anything })
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The tonic service that answers BuildKit's requests, and the methods to announce.
    pub fn service(self) -> (SshServer<SshAgents>, &'static [&'static str]) {
        (SshServer::new(self), METHODS)
    }

    fn agent(&self, id: &str) -> Result<&InMemoryAgent, tonic::Status> {
        let id = if id.is_empty() { DEFAULT_ID } else { id };
        self.agents.get(id).ok_or_else(|| {
            tracing::debug!("BuildKit asked for the ssh id {id:?}, which no --ssh gives");
            tonic::Status::not_found(format!("no --ssh gives the ssh id {id:?}"))
        })
    }
}

type ForwardedBytes = Pin<Box<dyn Stream<Item = Result<BytesMessage, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Ssh for SshAgents {
    async fn check_agent(
        &self,
        request: tonic::Request<CheckAgentRequest>,
    ) -> Result<tonic::Response<CheckAgentResponse>, tonic::Status> {
        self.agent(&request.get_ref().id)?;
        Ok(tonic::Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = ForwardedBytes;

    async fn forward_agent(
        &self,
        request: tonic::Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<tonic::Response<Self::ForwardAgentStream>, tonic::Status> {
        let id =
            request.metadata().get(ID_METADATA).and_then(|value| value.to_str().ok()).unwrap_or_default().to_string();
        let id = id.as_str();
        let connection = self.agent(id)?.connect().await.map_err(|error| tonic::Status::unavailable(error.reason))?;
        tracing::debug!(
            "BuildKit opened a connection to the ssh agent {:?}",
            if id.is_empty() { DEFAULT_ID } else { id }
        );
        let (from_agent, mut to_agent) = tokio::io::split(connection);
        let mut from_build = request.into_inner();
        let mut guard = Guard::new(if id.is_empty() { DEFAULT_ID } else { id }, self.sign_anything);
        tokio::spawn(async move {
            while let Some(Ok(message)) = from_build.next().await {
                let passed = match guard.pass(&message.data) {
                    Ok(passed) => passed,
                    Err(why) => {
                        tracing::warn!("ssh agent {:?}: the connection is ended: {why}", guard.id);
                        break;
                    }
                };
                if to_agent.write_all(&passed).await.is_err() {
                    break;
                }
            }
            // The build step closed its socket: the agent sees the end and closes its side.
            let _ = to_agent.shutdown().await;
        });
        let to_build = tokio_util::io::ReaderStream::new(from_agent).map(|chunk| match chunk {
            Ok(bytes) => Ok(BytesMessage { data: bytes.to_vec() }),
            Err(error) => Err(tonic::Status::internal(format!("the ssh agent connection failed: {error}"))),
        });
        Ok(tonic::Response::new(Box::pin(to_build)))
    }
}

/// Checks what a build step asks a forwarded agent, message by message (see the module's doc).
struct Guard {
    id: String,
    sign_anything: bool,
    /// The start of a message whose rest has not come yet.
    pending: Vec<u8>,
}

impl Guard {
    fn new(id: &str, sign_anything: bool) -> Guard {
        Guard { id: id.to_string(), sign_anything, pending: Vec::new() }
    }

    /// The bytes to pass on to the agent for `chunk`: whole messages, each sign request that is
    /// refused replaced by one the agent answers with a failure. An error ends the connection.
    fn pass(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        self.pending.extend_from_slice(chunk);
        let mut passed = Vec::new();
        while self.pending.len() >= 4 {
            let length =
                u32::from_be_bytes([self.pending[0], self.pending[1], self.pending[2], self.pending[3]]) as usize;
            if length == 0 || length > MAX_MESSAGE {
                return Err(format!("a message of {length} bytes (at most {MAX_MESSAGE})"));
            }
            if self.pending.len() < 4 + length {
                break;
            }
            let message: Vec<u8> = self.pending.drain(..4 + length).collect();
            if message[4] == SIGN_REQUEST && !self.allows(&message[5..]) {
                passed.extend_from_slice(&REFUSED);
            } else {
                passed.extend_from_slice(&message);
            }
        }
        Ok(passed)
    }

    /// Whether to sign, as the sign request's body asks (key blob, data, flags); logged either way.
    fn allows(&self, body: &[u8]) -> bool {
        let mut fields = Fields(body);
        let (Some(blob), Some(data)) = (fields.string(), fields.string()) else {
            tracing::warn!("ssh agent {:?}: refused a sign request it cannot read", self.id);
            return false;
        };
        let key = russh::keys::PublicKey::from_bytes(blob)
            .map(|key| crate::ssh::known_hosts::describe(&key))
            .unwrap_or_else(|_| "a key it does not hold".to_string());
        match user_authentication(data) {
            Some((user, service)) => {
                tracing::info!(
                    "ssh agent {:?}: signs an SSH login as {:?} (service {:?}) with {key}",
                    self.id,
                    crate::output::escape_controls(&user),
                    crate::output::escape_controls(&service)
                );
                true
            }
            None if self.sign_anything => {
                tracing::info!(
                    "ssh agent {:?}: signs {} bytes that are no SSH login with {key} (--ssh-sign anything)",
                    self.id,
                    data.len()
                );
                true
            }
            None => {
                tracing::warn!(
                    "ssh agent {:?}: refused to sign {} bytes that are no SSH login with {key}: it signs SSH logins \
                     only (as ssh and git over SSH ask), unless --ssh-sign anything",
                    self.id,
                    data.len()
                );
                false
            }
        }
    }
}

/// The user and service of SSH user-authentication data (RFC 4252, section 7: the session
/// identifier, `SSH_MSG_USERAUTH_REQUEST`, user, service, "publickey", TRUE, the algorithm and
/// the public key), and nothing after it; `None` for any other data.
fn user_authentication(data: &[u8]) -> Option<(String, String)> {
    let mut fields = Fields(data);
    fields.string()?;
    if fields.byte()? != USERAUTH_REQUEST {
        return None;
    }
    let user = String::from_utf8_lossy(fields.string()?).into_owned();
    let service = String::from_utf8_lossy(fields.string()?).into_owned();
    if fields.string()? != b"publickey" || fields.byte()? != 1 {
        return None;
    }
    fields.string()?;
    fields.string()?;
    fields.0.is_empty().then_some((user, service))
}

/// The SSH wire encoding's fields, read in turn.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let length = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let value = self.0.get(4..4 + length)?;
        self.0 = &self.0[4 + length..];
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh key for this test run (see [`crate::ssh::key::tests::generated_key`]).
    fn test_key() -> PrivateKey {
        russh::keys::decode_secret_key(&crate::ssh::key::tests::generated_key().0, None).unwrap()
    }

    #[tokio::test]
    async fn the_agent_lists_and_signs_with_its_key_and_refuses_changes() {
        let key = Arc::new(test_key());
        let agents = SshAgents::start(&[(DEFAULT_ID.to_string(), vec![key.clone()])], false).await.unwrap();
        let mut client = AgentClient::connect(agents.agent("").unwrap().connect().await.unwrap());
        let identities = client.request_identities().await.unwrap();
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0].public_key().key_data(), key.public_key().key_data());
        let connect = async || AgentClient::connect(agents.agent("default").unwrap().connect().await.unwrap());
        assert!(connect().await.add_identity(&test_key(), &[]).await.is_err(), "a sealed agent takes no new key");
        assert!(connect().await.remove_all_identities().await.is_err(), "a sealed agent keeps its keys");
        assert_eq!(connect().await.request_identities().await.unwrap().len(), 1);
        assert_eq!(agents.agent("other").err().map(|status| status.code()), Some(tonic::Code::NotFound));
    }

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn sign_request(blob: &[u8], data: &[u8]) -> Vec<u8> {
        let mut body = vec![SIGN_REQUEST];
        body.extend(string(blob));
        body.extend(string(data));
        body.extend(0u32.to_be_bytes());
        let mut message = (body.len() as u32).to_be_bytes().to_vec();
        message.extend(body);
        message
    }

    fn login_data(user: &str, blob: &[u8]) -> Vec<u8> {
        let mut data = string(&[7; 32]);
        data.push(USERAUTH_REQUEST);
        for field in [user.as_bytes(), b"ssh-connection", b"publickey"] {
            data.extend(string(field));
        }
        data.push(1);
        data.extend(string(b"ssh-ed25519"));
        data.extend(string(blob));
        data
    }

    /// What the agent answers to `request` once the guard has passed it.
    async fn answer(agents: &SshAgents, guard: &mut Guard, request: &[u8]) -> u8 {
        use tokio::io::AsyncReadExt;
        let mut connection = agents.agent("").unwrap().connect().await.unwrap();
        // In two pieces, as a stream may cut it.
        let (first, second) = request.split_at(request.len() / 2);
        let mut passed = guard.pass(first).unwrap();
        assert!(passed.is_empty(), "nothing passes before the message is whole");
        passed.extend(guard.pass(second).unwrap());
        connection.write_all(&passed).await.unwrap();
        let mut length = [0u8; 4];
        connection.read_exact(&mut length).await.unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
        connection.read_exact(&mut reply).await.unwrap();
        reply[0]
    }

    #[tokio::test]
    async fn the_agent_signs_ssh_logins_and_refuses_other_data_unless_told() {
        const SIGN_RESPONSE: u8 = 14;
        const FAILURE: u8 = 5;
        let key = Arc::new(test_key());
        let blob = key.public_key().to_bytes().unwrap();
        let agents = SshAgents::start(&[(DEFAULT_ID.to_string(), vec![key.clone()])], false).await.unwrap();
        let mut guard = Guard::new(DEFAULT_ID, false);
        let login = sign_request(&blob, &login_data("git", &blob));
        assert_eq!(answer(&agents, &mut guard, &login).await, SIGN_RESPONSE);
        let other = sign_request(&blob, b"SSHSIG\0\0\0\x04file some commit or blob to sign");
        assert_eq!(answer(&agents, &mut guard, &other).await, FAILURE, "not a login: refused");
        let mut told = Guard::new(DEFAULT_ID, true);
        assert_eq!(answer(&agents, &mut told, &other).await, SIGN_RESPONSE, "--ssh-sign anything");
        // A login's data with anything after it is no login.
        let mut longer = login_data("git", &blob);
        longer.push(0);
        assert_eq!(answer(&agents, &mut guard, &sign_request(&blob, &longer)).await, FAILURE);
        // A message longer than OpenSSH allows ends the connection.
        assert!(guard.pass(&(MAX_MESSAGE as u32 + 1).to_be_bytes()).is_err());
    }
}
