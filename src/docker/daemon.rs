//! The Docker daemon: one connection to the `DOCKER_HOST` target (over the SSH transport, plain
//! or TLS TCP, or a local Unix socket) that both bollard and the raw calls bollard lacks (`/auth`,
//! the BuildKit session and build) open their streams on, and the check that it answers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::Docker;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::docker::host::Tls;
use crate::error::{ConnectClass, Error};
use crate::ssh::transport::{SshSession, channel_failure_in, classify_io};

/// The oldest API the agent speaks (Docker 1.12). Older daemons are refused with their own exit code.
pub const MINIMUM_API: (u32, u32) = (1, 24);

/// The first API with BuildKit outside experimental mode (Docker 18.09).
pub const BUILDKIT_API: (u32, u32) = (1, 39);

/// The most of an answer's body the agent reads (`/system/df` lists every image and cache record:
/// about 1 kB each, so 16 MiB holds a host of 15 000): a host that answers more gets a clear error
/// rather than the agent's memory.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The most of an error's body the agent reads (a daemon's error is a line of JSON).
pub const MAX_ERROR_ANSWER: usize = 64 * 1024;

/// Seconds a single API request may take before bollard gives up (builds and pushes stream, and
/// each chunk resets nothing: so this is generous).
pub const REQUEST_TIMEOUT_SECS: u64 = 3600;

/// A client for one daemon, with what is needed to explain its failures. A clone shares the
/// connection (for a request of its own in a background task).
#[derive(Clone)]
pub struct Daemon {
    pub docker: Docker,
    /// The daemon's address, for messages.
    pub target: String,
    /// The one way to the daemon: bollard's connections and the raw calls' are opened on it.
    transport: Arc<Transport>,
    connect_timeout: Duration,
    /// The API version the raw calls use, e.g. `1.41`: bollard's, lowered to the daemon's.
    api: String,
}

/// How the daemon is reached: one per daemon. Every HTTP connection to it, bollard's or a raw
/// call's, is a stream this opens (for ssh://, a channel of the one SSH session).
enum Transport {
    Ssh(Arc<SshSession>),
    Unix(String),
    Tcp { host: String, port: u16 },
    Tls { host: String, port: u16, config: Arc<rustls::ClientConfig> },
}

/// A byte stream to the daemon.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Transport {
    /// A new stream to the daemon. Failures are I/O errors, as hyper's connectors return; an SSH
    /// channel's carries its [`crate::ssh::transport::ChannelFailure`] inside.
    async fn open(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Transport::Ssh(session) => Box::new(session.open_channel().await?),
            Transport::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Transport::Tcp { host, port } => Box::new(connect_tcp(host, *port).await?),
            Transport::Tls { host, port, config } => {
                let tcp = connect_tcp(host, *port).await?;
                let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|error| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("a host name TLS cannot check: {error}"))
                })?;
                Box::new(tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?)
            }
        })
    }

    fn ssh(&self) -> Option<&SshSession> {
        match self {
            Transport::Ssh(session) => Some(session),
            _ => None,
        }
    }

    /// A bollard client whose every HTTP connection is a stream of this transport; hyper-util's
    /// pool keeps them open between requests.
    fn docker(self: &Arc<Self>) -> Result<Docker, Error> {
        let connector = StreamConnector { transport: self.clone() };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(8)
            .build(connector);
        Docker::connect_with_custom_transport(
            move |request: bollard::BollardRequest| {
                let client = client.clone();
                async move { client.request(request).await.map_err(bollard::errors::Error::from) }
            },
            Some("http://docker"),
            REQUEST_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|error| Error::Internal(format!("failed to set up the Docker client: {error}")))
    }
}

/// A TCP connection with Nagle off (requests are small and answered at once).
async fn connect_tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    // A failure only leaves Nagle on, so it is ignored.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What the check learnt about the daemon.
#[derive(Debug, Clone)]
pub struct Facts {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
    pub driver: String,
    /// How many images the host holds (`/info`), if it said: what `/system/df` takes time to size.
    pub images: Option<u64>,
}

impl Facts {
    /// Whether the daemon offers BuildKit: a Linux daemon of API 1.39 or later (Windows daemons
    /// have only the classic builder).
    pub fn offers_buildkit(&self) -> bool {
        self.os == "linux" && parse_api(&self.api_version).is_some_and(|api| api >= BUILDKIT_API)
    }
}

impl Daemon {
    fn assemble(transport: Transport, target: String, connect_timeout: Duration) -> Result<Daemon, Error> {
        let transport = Arc::new(transport);
        let docker = transport.docker()?;
        let client = docker.client_version();
        let api = format!("{}.{}", client.major_version, client.minor_version);
        Ok(Daemon { docker, target, transport, connect_timeout, api })
    }

    /// The daemon behind an open SSH connection.
    pub fn over_ssh(session: Arc<SshSession>, target: String, connect_timeout: Duration) -> Result<Daemon, Error> {
        Daemon::assemble(Transport::Ssh(session), target, connect_timeout)
    }

    /// A daemon on a local Unix socket.
    pub fn unix(path: &str, connect_timeout: Duration) -> Result<Daemon, Error> {
        Daemon::assemble(Transport::Unix(path.to_string()), format!("unix://{path}"), connect_timeout)
    }

    /// A daemon on TCP, plain or with TLS client certificates (as the docker CLI reads
    /// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`).
    pub fn tcp(host: &str, port: u16, tls: Option<&Tls>, connect_timeout: Duration) -> Result<Daemon, Error> {
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let target = format!("tcp://{address}");
        let transport = match tls {
            None => {
                let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    tracing::warn!(
                        "{target} is plain TCP: the Docker API, and the registry credentials sent with builds and pushes, \
                         cross the network unencrypted and unauthenticated; prefer ssh:// or set DOCKER_TLS_VERIFY=1"
                    );
                }
                Transport::Tcp { host: host.to_string(), port }
            }
            Some(tls) => {
                let file = |name: &str| tls.cert_dir.join(name);
                for name in ["ca.pem", "cert.pem", "key.pem"] {
                    if !file(name).is_file() {
                        return Err(Error::LocalFile {
                            action: "read the TLS file",
                            path: file(name),
                            source: std::io::Error::from(std::io::ErrorKind::NotFound),
                            hint: Some(
                                "DOCKER_TLS_VERIFY is set: put ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH"
                                    .to_string(),
                            ),
                        });
                    }
                }
                Transport::Tls { host: host.to_string(), port, config: tls_config(&tls.cert_dir)? }
            }
        };
        Daemon::assemble(transport, target, connect_timeout)
    }

    /// What [`Daemon::check`] asks, as the plan shows it.
    pub const CHECK: &str = "ping, version and info in one round trip: server and API version, OS/arch, storage driver";

    /// Ping, read the version and the storage driver, and settle the API version to speak.
    pub async fn check(&mut self) -> Result<Facts, Error> {
        // Ping, version and info at once: one round trip instead of three. bollard sends
        // unversioned paths, so the daemon answers in its own API version: nothing needs
        // negotiating before these calls.
        let all = tokio::time::timeout(self.connect_timeout, async {
            tokio::join!(self.docker.ping(), self.docker.version(), self.docker.info())
        })
        .await;
        let (version, info) = match all {
            Err(_) => return Err(self.timeout("ping")),
            Ok((Err(error), _, _)) | Ok((_, Err(error), _)) | Ok((_, _, Err(error))) => return Err(self.explain(error)),
            Ok((Ok(_), Ok(version), Ok(info))) => (version, info),
        };
        let api_version = version.api_version.clone().unwrap_or_default();
        if parse_api(&api_version).is_some_and(|api| api < MINIMUM_API) {
            return Err(Error::DaemonTooOld {
                target: self.target.clone(),
                version: api_version,
                minimum: format!("{}.{}", MINIMUM_API.0, MINIMUM_API.1),
            });
        }
        // The version this client speaks: the daemon's, or bollard's if the daemon is newer.
        let client = self.docker.client_version();
        if let Some((major, minor)) = parse_api(&api_version) {
            if (major, minor) < (client.major_version as u32, client.minor_version as u32) {
                self.api = format!("{major}.{minor}");
            }
        }
        Ok(Facts {
            version: version.version.unwrap_or_else(|| "?".to_string()),
            api_version,
            os: version.os.unwrap_or_else(|| "?".to_string()),
            arch: version.arch.unwrap_or_else(|| "?".to_string()),
            driver: info.driver.unwrap_or_else(|| "?".to_string()),
            images: info.images.and_then(|count| u64::try_from(count).ok()),
        })
    }

    fn timeout(&self, what: &str) -> Error {
        if let Some(ssh) = self.transport.ssh().filter(|ssh| ssh.is_closed()) {
            return Error::Ssh { host: self.target.clone(), detail: ssh.end_reason() };
        }
        Error::Connect {
            target: self.target.clone(),
            class: ConnectClass::Timeout,
            detail: format!("the daemon did not answer the {what} request within {}s", self.connect_timeout.as_secs()),
        }
    }

    /// Turns a bollard error into the agent's error, with its class.
    pub fn explain(&self, error: bollard::errors::Error) -> Error {
        if let Some(failure) = channel_failure_in(&error) {
            return failure;
        }
        use bollard::errors::Error as B;
        match &error {
            B::RequestTimeoutError => {
                return Error::Connect {
                    target: self.target.clone(),
                    class: ConnectClass::Timeout,
                    detail: "the request timed out".to_string(),
                };
            }
            B::DockerResponseServerError { status_code, message } => {
                let message = crate::output::escape_controls(message);
                return Error::Daemon {
                    target: self.target.clone(),
                    detail: format!("answered {status_code}: {message}"),
                };
            }
            _ => {}
        }
        if let Some(io) = find_io_error(&error) {
            if self.target.starts_with("unix://") {
                let path = self.target.trim_start_matches("unix://");
                let detail = match io.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("is not running: the socket {path} does not exist")
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        format!("refused access: permission denied on {path} (is the user in group docker?)")
                    }
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("is not running: nothing listens on {path}")
                    }
                    _ => format!("did not answer: {io}"),
                };
                return Error::Daemon { target: self.target.clone(), detail };
            }
            if self.transport.ssh().is_none() {
                return Error::Connect {
                    target: self.target.clone(),
                    class: classify_connection(&error),
                    detail: tls_detail(io),
                };
            }
        }
        if let Some(ssh) = self.transport.ssh().filter(|ssh| ssh.is_closed()) {
            return Error::Ssh { host: self.target.clone(), detail: ssh.end_reason() };
        }
        Error::Daemon { target: self.target.clone(), detail: format!("did not answer: {}", error_chain(&error)) }
    }

    /// Asks the daemon to log into a registry (`POST /auth`, as `docker login` does), so that a
    /// wrong password fails here rather than at the push. bollard has no call for it.
    pub async fn auth(&self, server: &str, user: &str, password: &crate::secrets::Secret) -> Result<(), AuthError> {
        let body = serde_json::json!({ "username": user, "password": password.expose(), "serveraddress": server });
        let path = format!("/v{}/auth", self.api);
        let request = http::Request::post(path)
            .header(http::header::HOST, "docker")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|error| {
                AuthError::Transport(Error::Internal(format!("failed to build the /auth request: {error}")))
            })?;
        let exchange = async {
            let stream = self.open_stream().await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|error| self.raw_failure(&error))?;
            tokio::spawn(connection);
            let response = sender.send_request(request).await.map_err(|error| self.raw_failure(&error))?;
            let status = response.status();
            let body = self.read_body(response.into_body(), MAX_ERROR_ANSWER, "the login").await?;
            Ok::<_, Error>((status, body))
        };
        // The daemon itself talks to the registry: give it more than a connect timeout.
        let (status, body) = tokio::time::timeout(self.connect_timeout * 3, exchange)
            .await
            .map_err(|_| AuthError::Transport(self.timeout("/auth")))?
            .map_err(AuthError::Transport)?;
        if status.is_success() {
            return Ok(());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("message").and_then(|message| message.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(AuthError::Refused { status: status.as_u16(), message })
    }

    /// The API version the raw calls speak, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api
    }

    /// The versioned path of an API call, e.g. `/v1.41/session`.
    pub fn api_path(&self, path: &str) -> String {
        format!("/v{}{path}", self.api)
    }

    /// Sends one request on a stream of its own and returns the response, its body still to be
    /// read (for the calls bollard cannot make: the build of the agent's own BuildKit session).
    pub async fn raw_request<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.send_on_own_stream(request, false).await
    }

    /// One bodiless request on a stream of its own (beside the run's other requests), its answer's
    /// body; an answer that is not a success is the daemon's error, naming `what` and quoting the
    /// daemon. `path` goes as given: [`Daemon::api_path`] versions it.
    pub async fn call(&self, method: http::Method, path: &str, what: &str) -> Result<bytes::Bytes, Error> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "docker")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|error| Error::Internal(format!("failed to make the request for {what}: {error}")))?;
        let response = self.raw_request(request).await?;
        let status = response.status();
        let limit = if status.is_success() { MAX_ANSWER } else { MAX_ERROR_ANSWER };
        let body = self.read_body(response.into_body(), limit, what).await?;
        if !status.is_success() {
            return Err(Error::Daemon {
                target: self.target.clone(),
                detail: format!("refused {what} ({status}): {}", String::from_utf8_lossy(&body).trim()),
            });
        }
        Ok(body)
    }

    /// One HTTP/1 connection on a new stream of the daemon's transport, for one request; with
    /// `upgrades` it stays open for the protocol switch the request asks for.
    async fn send_on_own_stream<B>(
        &self,
        request: http::Request<B>,
        upgrades: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.open_stream().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| self.raw_failure(&error))?;
        if upgrades {
            tokio::spawn(connection.with_upgrades());
        } else {
            tokio::spawn(connection);
        }
        sender.send_request(request).await.map_err(|error| self.raw_failure(&error))
    }

    /// Sends a request that asks to switch protocols (`/session`) and returns the upgraded stream.
    pub async fn upgrade<B>(&self, request: http::Request<B>) -> Result<hyper::upgrade::Upgraded, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self.send_on_own_stream(request, true).await?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = self.read_body(response.into_body(), MAX_ERROR_ANSWER, "the BuildKit session").await?;
            let body = crate::output::escape_controls(String::from_utf8_lossy(&body).trim()).into_owned();
            return Err(Error::Daemon {
                target: self.target.clone(),
                detail: format!("refused the BuildKit session ({status}): {body}"),
            });
        }
        hyper::upgrade::on(response).await.map_err(|error| self.raw_failure(&error))
    }

    /// A stream of its own for a raw call, its failure explained as bollard's are.
    async fn open_stream(&self) -> Result<Box<dyn Stream>, Error> {
        self.transport.open().await.map_err(|error| {
            channel_failure_in(&error).unwrap_or_else(|| Error::Connect {
                target: self.target.clone(),
                class: classify_connection(&error),
                detail: tls_detail(&error),
            })
        })
    }

    /// An answer's body, at most `limit` bytes of it: a longer one is the daemon's error, naming
    /// `what` and the limit.
    pub async fn read_body(
        &self,
        body: hyper::body::Incoming,
        limit: usize,
        what: &str,
    ) -> Result<bytes::Bytes, Error> {
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Error::Daemon {
                target: self.target.clone(),
                detail: format!(
                    "answered more than {} for {what}: the agent reads at most that much of an answer",
                    crate::output::human_bytes(limit as u64)
                ),
            }),
            Err(error) => Err(match error.downcast::<hyper::Error>() {
                Ok(error) => self.broke_off(what, &*error),
                Err(error) => {
                    Error::Daemon { target: self.target.clone(), detail: format!("broke off {what}: {error}") }
                }
            }),
        }
    }

    /// A raw stream that broke off mid-answer (`what`: e.g. "the build"): the SSH connection's
    /// own failure when it is the cause (a frozen or killed host), else the daemon's.
    pub fn broke_off(&self, what: &str, error: &(dyn std::error::Error + 'static)) -> Error {
        if let Some(failure) = channel_failure_in(error) {
            return failure;
        }
        if let Some(ssh) = self.transport.ssh().filter(|ssh| ssh.is_closed()) {
            return Error::Ssh { host: self.target.clone(), detail: ssh.end_reason() };
        }
        Error::Daemon { target: self.target.clone(), detail: format!("broke off {what}: {}", error_chain(error)) }
    }

    fn raw_failure(&self, error: &(dyn std::error::Error + 'static)) -> Error {
        if let Some(failure) = channel_failure_in(error) {
            return failure;
        }
        Error::Daemon { target: self.target.clone(), detail: format!("did not answer: {}", error_chain(error)) }
    }

    /// Closes the SSH connection, if any.
    pub async fn close(&self) {
        if let Some(ssh) = self.transport.ssh() {
            ssh.close().await;
        }
    }
}

/// hyper-util's connector: each new HTTP connection is a new stream of the daemon's transport.
#[derive(Clone)]
struct StreamConnector {
    transport: Arc<Transport>,
}

impl tower_service::Service<http::Uri> for StreamConnector {
    type Response = TokioIo<DaemonIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let transport = self.transport.clone();
        Box::pin(async move { Ok(TokioIo::new(DaemonIo(transport.open().await?))) })
    }
}

/// A stream to the daemon as hyper's connection type.
struct DaemonIo(Box<dyn Stream>);

impl Connection for DaemonIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for DaemonIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for DaemonIo {
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

impl Facts {
    /// The one log line of the daemon check.
    pub fn summary(&self) -> String {
        format!(
            "Docker {} (API {}), {}/{}, storage driver {}",
            self.version, self.api_version, self.os, self.arch, self.driver
        )
    }
}

/// Why the daemon's `/auth` did not log in.
#[derive(Debug)]
pub enum AuthError {
    /// The daemon could not be asked.
    Transport(Error),
    /// The daemon (or the registry behind it) said no.
    Refused { status: u16, message: String },
}

/// The rustls configuration the docker CLI would use for `DOCKER_CERT_PATH`: its CA, and its
/// client certificate and key.
fn tls_config(dir: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |name: &str, detail: String| Error::LocalFile {
        action: "read the TLS file",
        path: dir.join(name),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
        hint: Some(
            "DOCKER_CERT_PATH must hold PEM files ca.pem, cert.pem and key.pem, as for the docker CLI".to_string(),
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).map_err(|error| bad("ca.pem", error.to_string()))? {
        let cert = cert.map_err(|error| bad("ca.pem", error.to_string()))?;
        roots.add(cert).map_err(|error| bad("ca.pem", error.to_string()))?;
    }
    let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .map_err(|error| bad("cert.pem", error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad("cert.pem", error.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|error| bad("key.pem", error.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Internal(format!("TLS set-up: {error}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| bad("key.pem", error.to_string()))?;
    Ok(Arc::new(config))
}

/// `"1.41"` as `(1, 41)`.
pub fn parse_api(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn find_io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

/// The class of a failed connection to a `tcp://` daemon: a TLS failure (rustls's error, also
/// when wrapped in an I/O error) has its own, the rest is classified as socket errors are.
fn classify_connection(error: &(dyn std::error::Error + 'static)) -> ConnectClass {
    // io::Error's `source` skips the error it wraps (hyper-rustls nests rustls's error in two
    // I/O errors), so the wrapped errors are looked into as well.
    fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let wrapped = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        wrapped.is_some_and(|inner| is_tls(inner)) || error.source().is_some_and(is_tls)
    }
    if is_tls(error) {
        return ConnectClass::Tls;
    }
    find_io_error(error).map(classify_io).unwrap_or(ConnectClass::Other)
}

/// The words of a connection failure, saying so when it was the TLS handshake.
fn tls_detail(io: &std::io::Error) -> String {
    if classify_connection(io) == ConnectClass::Tls {
        format!("the TLS handshake failed: {io}")
    } else {
        io.to_string()
    }
}

/// An error and its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare() {
        assert_eq!(parse_api("1.41"), Some((1, 41)));
        assert!(parse_api("1.23").unwrap() < MINIMUM_API);
        assert!(parse_api("1.24").unwrap() >= MINIMUM_API);
        assert_eq!(parse_api("garbage"), None);
    }
}
