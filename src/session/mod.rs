//! The agent's own BuildKit session: the daemon's `POST /session` upgraded to HTTP/2 on one more
//! stream of the agent's connection (over SSH, one more channel), on which the agent serves gRPC
//! (tonic) to the daemon: Health always, and whatever services the build needs (registry
//! credentials, the context by FileSync, and more added by their own modules through
//! [`SessionBuilder::serve`]).
//!
//! bollard opens a session of its own only for its own build call, serving credentials alone and
//! taking the context as a tar; the agent needs the session to carry the context (FileSync) with a
//! shared key of its choosing, hence this module.

pub mod auth;
pub mod build_secrets;
pub mod context_key;
pub mod dockerignore;
pub mod filesync;
pub mod git_times;
pub mod ssh_forward;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::health::health_check_response::ServingStatus;
use bollard::health::health_server::{Health, HealthServer};
use bollard::health::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

use crate::docker::daemon::Daemon;
use crate::error::Error;

/// The services of a session before it starts, and the gRPC methods they expose.
pub struct SessionBuilder {
    id: String,
    name: String,
    shared_key: String,
    routes: RoutesBuilder,
    methods: Vec<String>,
}

/// A session the daemon knows, served until [`Session::close`].
pub struct Session {
    /// The id the build request names (`session=`).
    pub id: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl SessionBuilder {
    /// A session named `name` (the docker CLI uses the context directory's name) whose synced
    /// directories BuildKit keeps under `shared_key`, serving Health.
    pub fn new(name: &str, shared_key: &str) -> SessionBuilder {
        let mut builder = SessionBuilder {
            id: new_id(),
            name: header_safe(name),
            shared_key: header_safe(shared_key),
            routes: RoutesBuilder::default(),
            methods: Vec::new(),
        };
        builder = builder.serve(HealthServer::new(Healthy), &["Check", "Watch"]);
        builder
    }

    /// Adds a tonic service and the names of the methods of it the daemon may call (as in the
    /// proto, e.g. `["GetSecret"]`); the daemon calls only methods the session announced.
    pub fn serve<S>(mut self, service: S, methods: &[&str]) -> SessionBuilder
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.methods.extend(methods.iter().map(|method| format!("/{}/{method}", S::NAME)));
        self.routes.add_service(service);
        self
    }

    /// The session's id, known before it starts.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Opens the session on the daemon: `POST /session` upgraded to h2c, then serves the
    /// services on it until closed.
    pub async fn start(self, daemon: &Daemon) -> Result<Session, Error> {
        let mut request = http::Request::post(daemon.api_path("/session"))
            .header(http::header::HOST, "docker")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "h2c")
            .header("X-Docker-Expose-Session-Uuid", &self.id)
            .header("X-Docker-Expose-Session-Name", &self.name)
            .header("X-Docker-Expose-Session-Sharedkey", &self.shared_key);
        for method in &self.methods {
            request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
        }
        let request = request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|error| Error::Internal(format!("failed to build the /session request: {error}")))?;
        let upgraded = daemon.upgrade(request).await?;
        let io = SessionIo(TokioIo::new(upgraded));
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let routes = self.routes.routes();
        let server = tokio::spawn(async move {
            // One connection; the stream must not end, or tonic shuts the server down at once.
            let incoming = futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok::<_, Infallible>(io)]),
                futures_util::stream::pending(),
            );
            let served = tonic::transport::Server::builder()
                // The daemon's side is grpc-go: its default window sizes make a slow first sync.
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(8 * 1024 * 1024))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = signal.await;
                })
                .await;
            if let Err(error) = served {
                tracing::debug!("the BuildKit session ended: {error}");
            }
        });
        tracing::debug!("BuildKit session {} open, serving {}", self.id, self.methods.join(" "));
        Ok(Session { id: self.id, shutdown: Some(shutdown), server })
    }
}

impl Session {
    /// Ends the session: tells the daemon (HTTP/2 GOAWAY), waits a moment for it to let go.
    pub async fn close(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server).await.is_err() {
            self.server.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A new session's id: 16 random bytes, as hex.
pub fn new_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    if random.is_err() {
        // Unique is all a session id needs to be.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes[..8].copy_from_slice(&(nanos.as_nanos() as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A header value from any text: printable ASCII kept, anything else as `_`.
fn header_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect()
}

/// The upgraded stream, as tonic's server takes connections.
struct SessionIo(TokioIo<hyper::upgrade::Upgraded>);

impl tonic::transport::server::Connected for SessionIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SessionIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The Health service: the daemon checks that the session answers.
#[derive(Clone, Copy)]
struct Healthy;

#[tonic::async_trait]
impl Health for Healthy {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    async fn list(&self, _: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("the agent's session lists no services"))
    }

    type WatchStream = futures_util::stream::Once<futures_util::future::Ready<Result<HealthCheckResponse, Status>>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(futures_util::stream::once(futures_util::future::ready(Ok(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        })))))
    }
}

/// What the build's session serves for the mounts, resolved: the secrets' values and each agent's
/// keys. Made once the `SSM:` references are resolved.
#[derive(Debug, Default)]
pub struct SessionMounts {
    pub secrets: build_secrets::BuildSecrets,
    pub ssh: Vec<(String, Vec<std::sync::Arc<russh::keys::PrivateKey>>)>,
    /// `--ssh-sign anything`: the agents sign any data, not only SSH logins (see [`ssh_forward`]).
    pub ssh_sign_anything: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (first, second) = (new_id(), new_id());
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }

    #[test]
    fn header_values_are_ascii() {
        assert_eq!(header_safe("app\u{e9}\n"), "app__");
    }
}
