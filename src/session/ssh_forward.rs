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
}

impl SshAgents {
    /// Starts one agent per id with its keys.
    pub async fn start(ids: &[(String, Vec<Arc<PrivateKey>>)]) -> Result<SshAgents, AgentError> {
        let mut agents = BTreeMap::new();
        for (id, keys) in ids {
            agents.insert(id.clone(), InMemoryAgent::start(id, keys).await?);
        }
        Ok(SshAgents { agents })
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
        let id = request.metadata().get(ID_METADATA).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let connection = self.agent(id)?.connect().await.map_err(|error| tonic::Status::unavailable(error.reason))?;
        tracing::debug!(
            "BuildKit opened a connection to the ssh agent {:?}",
            if id.is_empty() { DEFAULT_ID } else { id }
        );
        let (from_agent, mut to_agent) = tokio::io::split(connection);
        let mut from_build = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(message)) = from_build.next().await {
                if to_agent.write_all(&message.data).await.is_err() {
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
        let agents = SshAgents::start(&[(DEFAULT_ID.to_string(), vec![key.clone()])]).await.unwrap();
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
}
