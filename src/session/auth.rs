//! The session's Auth service: the registry logins of the run, handed to BuildKit when it pulls a
//! base image from one of those registries (`Credentials`). Token fetching is left to the daemon
//! (`FetchToken` answers Unimplemented, on which BuildKit asks for credentials and fetches the
//! token itself), so no registry traffic leaves the agent's side.
//!
//! bollard's own provider is crate-private, hence this small one.

use std::collections::HashMap;

use bollard::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse, GetTokenAuthorityRequest,
    GetTokenAuthorityResponse, VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use tonic::{Request, Response, Status};

use crate::registry::Credential;
use crate::secrets::Secret;

/// The logins, by the host BuildKit names when it asks.
#[derive(Clone, Default)]
pub struct Logins {
    by_host: HashMap<String, (String, Secret)>,
}

impl Logins {
    /// Every login of the run, under its registry host (Docker Hub also as
    /// `registry-1.docker.io`, the host BuildKit asks for).
    pub fn new(credentials: &[Credential]) -> Logins {
        let mut by_host = HashMap::new();
        for credential in credentials {
            let login = (credential.user.clone(), credential.password.clone());
            if credential.registry == crate::registry::reference::DOCKER_HUB {
                by_host.insert("registry-1.docker.io".to_string(), login.clone());
                by_host.insert("index.docker.io".to_string(), login.clone());
            }
            by_host.insert(credential.registry.clone(), login);
        }
        Logins { by_host }
    }

    /// The service, and the methods to announce.
    pub fn service(self) -> (AuthServer<Logins>, &'static [&'static str]) {
        (AuthServer::new(self), &["Credentials", "FetchToken", "GetTokenAuthority", "VerifyTokenAuthority"])
    }
}

#[tonic::async_trait]
impl Auth for Logins {
    async fn credentials(&self, request: Request<CredentialsRequest>) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.get_ref().host.as_str();
        let response = match self.by_host.get(host) {
            Some((user, password)) => {
                tracing::debug!("BuildKit asked for the login to {host}: given");
                CredentialsResponse { username: user.clone(), secret: password.expose().to_string() }
            }
            None => {
                tracing::debug!("BuildKit asked for the login to {host}: none, anonymous");
                CredentialsResponse::default()
            }
        };
        Ok(Response::new(response))
    }

    async fn fetch_token(&self, _: Request<FetchTokenRequest>) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("the daemon fetches registry tokens itself"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}
