//! The build's secrets (`--secret id=…`), served to BuildKit through the session's Secrets service
//! (`moby.buildkit.secrets.v1.Secrets/GetSecret`) for `RUN --mount=type=secret,id=…`.
//!
//! Hand-written rather than bollard's `SecretProvider`: that one is crate-private and reads the
//! agent's environment or a file when BuildKit asks, so it could serve neither a value resolved
//! from SSM nor one the redactor already knows. Here every value is known (and registered with the
//! redactor) before the build starts, and is held in memory only.

use std::collections::BTreeMap;

use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};

/// The gRPC methods the service answers (announced by the session as
/// `/moby.buildkit.secrets.v1.Secrets/GetSecret`).
pub const METHODS: &[&str] = &["GetSecret"];

/// BuildKit's limit on a secret's size (`MaxSecretSize` in its secrets provider): larger ones are
/// refused when the flag is read, not in the middle of the build.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// A secret's bytes. Never printed: its `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps the bytes and registers them with the redactor (as text, where they are text).
    pub fn new(bytes: Vec<u8>) -> Self {
        crate::secrets::redactor().register(&String::from_utf8_lossy(&bytes));
        SecretBytes(bytes)
    }

    /// The bytes, for the one place that hands them to BuildKit.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", crate::secrets::MASK, self.0.len())
    }
}

/// The secrets of one build, by id.
#[derive(Debug, Default, Clone)]
pub struct BuildSecrets {
    values: BTreeMap<String, SecretBytes>,
}

impl BuildSecrets {
    pub fn insert(&mut self, id: impl Into<String>, value: SecretBytes) {
        self.values.insert(id.into(), value);
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The ids served, for the log (never the values).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The tonic service that answers BuildKit's requests, and the methods to announce.
    pub fn service(self) -> (SecretsServer<BuildSecrets>, &'static [&'static str]) {
        (SecretsServer::new(self), METHODS)
    }

    /// What BuildKit gets for `id`: the value, or NotFound (which BuildKit reports as
    /// "secret ID: not found", an error only for a `required=true` mount).
    fn lookup(&self, id: &str) -> Result<&SecretBytes, tonic::Status> {
        self.values.get(id).ok_or_else(|| {
            tracing::debug!("BuildKit asked for the secret {id:?}, which no --secret gives");
            tonic::Status::not_found(format!("no --secret gives the secret {id:?}"))
        })
    }
}

#[tonic::async_trait]
impl Secrets for BuildSecrets {
    async fn get_secret(
        &self,
        request: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        let id = &request.get_ref().id;
        let value = self.lookup(id)?;
        tracing::debug!("serving the secret {id:?} to BuildKit ({} bytes)", value.expose().len());
        Ok(tonic::Response::new(GetSecretResponse { data: value.expose().to_vec() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_are_served_by_id_and_unknown_ids_are_not_found() {
        let mut secrets = BuildSecrets::default();
        secrets.insert("npm", SecretBytes::new(b"token-served-by-id".to_vec()));
        let answer =
            secrets.get_secret(tonic::Request::new(GetSecretRequest { id: "npm".into(), ..Default::default() }));
        assert_eq!(answer.await.unwrap().into_inner().data, b"token-served-by-id");
        let missing =
            secrets.get_secret(tonic::Request::new(GetSecretRequest { id: "other".into(), ..Default::default() }));
        assert_eq!(missing.await.unwrap_err().code(), tonic::Code::NotFound);
    }

    #[test]
    fn secret_bytes_never_print_and_are_redacted() {
        let value = SecretBytes::new(b"bytes-of-a-build-secret".to_vec());
        assert_eq!(format!("{value:?}"), format!("{} (23 bytes)", crate::secrets::MASK));
        assert!(!crate::secrets::redact("x bytes-of-a-build-secret").contains("bytes-of"));
    }
}
