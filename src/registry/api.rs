//! The registry's HTTP API (the OCI distribution spec): the agent's own client, for its own calls —
//! a tag's or a digest's manifest, an image's config, and a manifest put under a tag (the image
//! index; the tags of an image found unchanged). Layers never pass through it: the daemon moves them.
//!
//! Written here over `reqwest` (already in the tree for the AWS calls) rather than taken from
//! `oci-client`, which the agent used before: oci-client 0.18 turns a 429 into an error without the
//! response's headers, so a registry's `Retry-After` could not be honoured (issue 23), and the agent
//! used five of its calls. What it does:
//! - plain HTTP to registries on loopback (the daemon's rule for `127.0.0.0/8` and `localhost`),
//!   HTTPS otherwise; Docker Hub at `registry-1.docker.io`, its repositories without a `/` under
//!   `library/`;
//! - the registry's challenge (`WWW-Authenticate`) answered as the docker CLI does: `Basic` with the
//!   run's login (htpasswd registries, ECR), or the bearer-token flow (`Bearer realm=…,service=…`,
//!   as Docker Hub uses: a token for `repository:PATH:pull` or `pull,push` from the realm, asked
//!   with the login when there is one, anonymously otherwise). The token is registered with the
//!   redactor and the headers that carry a login are marked sensitive; a login is never sent to a
//!   plain-HTTP realm off loopback;
//! - a 429, from the registry or its token server, waited out as its `Retry-After` asks (seconds or
//!   an HTTP date), else with the rate limit's own backoff, within [`rate_limit::PATIENCE`];
//! - every answer read up to a bound, manifests and blobs checked against their digests.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use sha2::Digest as _;

use crate::registry::Credential;
use crate::registry::rate_limit::{self, Backoff};
use crate::registry::reference::{DOCKER_HUB, Repository};

/// A Docker image manifest (v2 schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list: Docker's multi-platform index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The two single-image manifest types.
pub const IMAGE_MANIFESTS: &[&str] = &[DOCKER_MANIFEST, OCI_MANIFEST];
/// Every manifest type a tag may hold: single images and indexes.
pub const ANY_MANIFEST: &[&str] = &[DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX];

/// Docker Hub's registry API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The largest manifest read: the distribution registry's own limit for a manifest it accepts.
const MANIFEST_LIMIT: usize = 4 << 20;
/// The largest blob read (image configs only: a few kB, up to a few MB with a long history).
const BLOB_LIMIT: usize = 16 << 20;
/// The most of an error's or a token's answer read.
const ANSWER_LIMIT: usize = 64 << 10;
/// The most of a registry's error message kept.
const MESSAGE_LIMIT: usize = 512;

/// What a call needs the registry to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

impl Access {
    /// The token scope's actions.
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// A registry call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: the connection failed, timed out or broke off.
    #[error("{url} could not be reached: {message}")]
    Unreachable { url: String, message: String },
    /// The registry answered with an error; `codes` are its error envelope's codes (`MANIFEST_UNKNOWN`).
    #[error("{url} answered {status}{}", message_part(.message))]
    Refused { url: String, status: StatusCode, codes: Vec<String>, message: String },
    /// The token server (a bearer challenge's realm) answered with an error.
    #[error("the token server {url} answered {status}{}", message_part(.message))]
    TokenRefused { url: String, status: StatusCode, message: String },
    /// A 429 that outlasted the rate limit's patience, asked for a longer wait than it allows, or
    /// is a pull quota (`quota`: not waited for).
    #[error("{url} answered 429 Too Many Requests{}", message_part(.message))]
    RateLimited { url: String, message: String, waited: Duration, asked: Option<Duration>, quota: bool },
    /// An answer the agent cannot use: too large, not JSON, not what its digest says, a challenge
    /// it cannot answer.
    #[error("{url}: {message}")]
    Unusable { url: String, message: String },
}

fn message_part(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(": {message}") }
}

impl ApiError {
    /// The registry has no such manifest, blob or repository.
    pub fn is_not_found(&self) -> bool {
        match self {
            ApiError::Refused { status, codes, .. } => {
                *status == StatusCode::NOT_FOUND
                    || codes
                        .iter()
                        .any(|code| ["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"].contains(&code.as_str()))
            }
            _ => false,
        }
    }

    /// The registry refused the login, or asked for one the run does not have.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ApiError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN)
    }

    /// How long the agent waited for a rate limit before giving up, and why it stopped: the words
    /// that follow "during …" in the run's error.
    pub fn patience_spent(&self) -> Option<String> {
        let ApiError::RateLimited { waited, asked, quota, .. } = self else { return None };
        let patience = rate_limit::PATIENCE.as_secs();
        if *quota {
            return Some("a pull quota, which lifts in hours, not seconds: not retried".to_string());
        }
        Some(match asked {
            Some(asked) if *waited + *asked > rate_limit::PATIENCE => format!(
                "{}its Retry-After asked for {}s more, longer than the agent waits ({patience}s)",
                if waited.is_zero() { String::new() } else { format!("after {}s of retries, ", waited.as_secs()) },
                asked.as_secs()
            ),
            _ => format!("after {}s of retries", waited.as_secs()),
        })
    }
}

/// One manifest as the registry served it: its bytes (to be put under another tag unchanged), its
/// digest, and its media type (from its body: an OCI manifest may leave it out, then the OCI type;
/// empty when the body names none and has no config).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: bytes::Bytes,
    pub digest: String,
    pub media_type: String,
}

impl Manifest {
    /// The config a single image's manifest names.
    pub fn config(&self) -> Result<Descriptor, String> {
        #[derive(serde::Deserialize)]
        struct Image {
            config: Descriptor,
        }
        let image: Image = serde_json::from_slice(&self.bytes).map_err(|error| format!("its config: {error}"))?;
        Ok(image.config)
    }
}

/// A blob named by a manifest: an image's config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// What a call does once it has answered the registry's challenge.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Sends the request again, with the login or the token found.
    Retry,
    /// Stops, with the challenge's answer as the call's result: [`Registry::authorize`] asks for
    /// nothing else (a wrong login shows on the first request that uses it, or at the token server).
    Stop,
}

/// The authorizations found for a repository, by access (a push token allows pulls too).
#[derive(Default)]
struct Authorizations {
    pull: Option<HeaderValue>,
    push: Option<HeaderValue>,
}

/// A client for one repository of one registry, with the run's login for that registry (if any).
pub struct Registry {
    http: reqwest::Client,
    /// `https://host` (`http://` on loopback).
    base: String,
    repository: Repository,
    /// The repository's path as the registry knows it (`library/` added for Docker Hub's official).
    path: String,
    login: Option<Credential>,
    authorizations: Mutex<Authorizations>,
}

impl Registry {
    /// `credential` is the run's login for the repository's registry, if it has one; `timeout`
    /// bounds connecting and each read. Fails only when no HTTP client can be made (its TLS).
    pub fn new(
        repository: &Repository,
        credential: Option<&Credential>,
        timeout: Duration,
    ) -> Result<Registry, ApiError> {
        let registry = repository.registry();
        let path = if registry == DOCKER_HUB && !repository.path.contains('/') {
            format!("library/{}", repository.path)
        } else {
            repository.path.clone()
        };
        let base = match registry {
            DOCKER_HUB => format!("https://{DOCKER_HUB_API}"),
            loopback if is_insecure_registry(loopback) => format!("http://{loopback}"),
            other => format!("https://{other}"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ApiError::Unusable { url: base.clone(), message: format!("no HTTP client: {error}") })?;
        Ok(Registry {
            http,
            base,
            repository: repository.clone(),
            path,
            login: credential.cloned(),
            authorizations: Mutex::default(),
        })
    }

    /// The repository, as the run names it.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The repository's path at the registry (`library/alpine` for Docker Hub's `alpine`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The registry as the user knows it, for messages ("Docker Hub (docker.io)").
    pub fn name(&self) -> String {
        crate::docker::cause::registry_name(self.repository.registry())
    }

    /// Answers the registry's challenge for `access` once, up front (`GET /v2/`), so that the calls
    /// that follow share one token instead of each asking the token server, and a refused login
    /// shows before anything else is asked.
    pub async fn authorize(&self, access: Access) -> Result<(), ApiError> {
        if self.authorization(access).is_some() {
            return Ok(());
        }
        let url = format!("{}/v2/", self.base);
        self.call(access, "the login", Then::Stop, || self.http.get(&url)).await.map(drop)
    }

    /// The manifest `reference` (a tag or a digest) names, of one of the `accepted` media types;
    /// checked against the digest when it is one.
    pub async fn manifest(&self, reference: &str, accepted: &[&str]) -> Result<Manifest, ApiError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.path);
        let accept = accepted.join(", ");
        let what = if reference.starts_with("sha256:") { "a manifest's read" } else { "a tag's read" };
        let response =
            self.call(Access::Pull, what, Then::Retry, || self.http.get(&url).header(ACCEPT, &accept)).await?;
        let bytes = read_bounded(response, MANIFEST_LIMIT, &url).await?;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(ApiError::Unusable {
                url,
                message: format!("the registry served a manifest of digest {digest}"),
            });
        }
        let fields: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| ApiError::Unusable {
            url: url.clone(),
            message: format!("the manifest is not JSON: {error}"),
        })?;
        let media_type = match fields["mediaType"].as_str() {
            Some(media_type) => media_type.to_string(),
            None if fields["config"].is_object() => OCI_MANIFEST.to_string(),
            None => String::new(),
        };
        Ok(Manifest { bytes: bytes.into(), digest, media_type })
    }

    /// The manifest `tag` points at, or `None` when the registry has no such tag (or no such
    /// repository) yet.
    pub async fn tag_manifest(&self, tag: &str, accepted: &[&str]) -> Result<Option<Manifest>, ApiError> {
        match self.manifest(tag, accepted).await {
            Ok(manifest) => Ok(Some(manifest)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A blob of the repository (an image's config), whole, checked against its digest and size.
    pub async fn blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.path, descriptor.digest);
        if descriptor.size > BLOB_LIMIT as u64 {
            let message = format!("the blob is {} bytes; the agent reads up to {BLOB_LIMIT}", descriptor.size);
            return Err(ApiError::Unusable { url, message });
        }
        // A registry may redirect a blob to storage elsewhere (S3, a CDN): reqwest follows, and
        // drops the Authorization header when the host changes.
        let response = self.call(Access::Pull, "a config's read", Then::Retry, || self.http.get(&url)).await?;
        let bytes = read_bounded(response, BLOB_LIMIT, &url).await?;
        let digest = sha256_digest(&bytes);
        if digest != descriptor.digest || bytes.len() as u64 != descriptor.size {
            let message = format!("the registry served {} bytes of digest {digest}", bytes.len());
            return Err(ApiError::Unusable { url, message });
        }
        Ok(bytes)
    }

    /// Puts `bytes` of `media_type` under `tag`: a registry-side tag, no layer moves.
    pub async fn put_manifest(
        &self,
        tag: &str,
        bytes: &bytes::Bytes,
        media_type: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.path);
        let put = || self.http.put(&url).header(CONTENT_TYPE, media_type).body(bytes.clone());
        self.call(Access::Push, what, Then::Retry, put).await.map(drop)
    }

    /// Sends the request `build` makes, with the authorization found for `access`: a 401 is
    /// answered once (the registry's challenge: a login or a token), then the request sent again
    /// or not as `then` says; a 429 waited out as [`Backoff`] allows. Any other error status is
    /// the call's error.
    async fn call(
        &self,
        access: Access,
        what: &str,
        then: Then,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let mut challenged = false;
        let mut backoff = Backoff::default();
        loop {
            let mut request = build();
            if let Some(header) = self.authorization(access) {
                request = request.header(AUTHORIZATION, header);
            }
            let request = request.build().map_err(|error| ApiError::Unusable {
                url: self.base.clone(),
                message: format!("the request: {error}"),
            })?;
            let url = request.url().to_string();
            let response = self.http.execute(request).await.map_err(|error| unreachable(&url, &error))?;
            let status = response.status();
            tracing::debug!("{} answered {what}: {status}", self.name());
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let asked = retry_after(response.headers());
                let error = refused(response, &url).await;
                self.wait_out(&mut backoff, what, asked, error).await?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|value| value.to_str().ok());
                let challenge = challenge.map(str::to_string);
                if let Some(challenge) = challenge
                    && self.answer(access, &challenge, &url).await?
                {
                    match then {
                        Then::Retry => continue,
                        Then::Stop => return Ok(response),
                    }
                }
            }
            return Err(refused(response, &url).await);
        }
    }

    /// The authorization header found for `access` (a push token allows pulls too).
    fn authorization(&self, access: Access) -> Option<HeaderValue> {
        let found = self.authorizations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match access {
            Access::Pull => found.pull.clone().or_else(|| found.push.clone()),
            Access::Push => found.push.clone(),
        }
    }

    /// Answers a registry's `WWW-Authenticate` challenge for `access`: `Ok(true)` when an
    /// authorization was found to try, `Ok(false)` when there is none (a `Basic` challenge and no
    /// login, a scheme the agent does not speak).
    async fn answer(&self, access: Access, challenge: &str, url: &str) -> Result<bool, ApiError> {
        let challenges = http_auth::parse_challenges(challenge).unwrap_or_default();
        let param = |challenge: &http_auth::ChallengeRef, name: &str| {
            challenge
                .params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.to_unescaped())
        };
        if let Some(bearer) = challenges.iter().find(|challenge| challenge.scheme.eq_ignore_ascii_case("bearer")) {
            let realm = param(bearer, "realm").ok_or_else(|| ApiError::Unusable {
                url: url.to_string(),
                message: "a bearer challenge without a realm".to_string(),
            })?;
            let service = param(bearer, "service");
            let token = self.token(access, &realm, service.as_deref()).await?;
            self.remember(access, &format!("Bearer {token}"));
            return Ok(true);
        }
        if challenges.iter().any(|challenge| challenge.scheme.eq_ignore_ascii_case("basic")) {
            let Some(login) = &self.login else { return Ok(false) };
            self.remember(Access::Push, &basic(login));
            return Ok(true);
        }
        Ok(false)
    }

    fn remember(&self, access: Access, header: &str) {
        let Ok(mut header) = HeaderValue::from_str(header) else { return };
        header.set_sensitive(true);
        let mut found = self.authorizations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match access {
            Access::Pull => found.pull = Some(header),
            Access::Push => found.push = Some(header),
        }
    }

    /// A bearer token for this repository and `access` from the token server at `realm`, asked
    /// with the run's login when there is one (never over plain HTTP off loopback).
    async fn token(&self, access: Access, realm: &str, service: Option<&str>) -> Result<String, ApiError> {
        let mut url = reqwest::Url::parse(realm).map_err(|error| ApiError::Unusable {
            url: realm.to_string(),
            message: format!("the bearer challenge's realm is not a URL: {error}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{}:{}", self.path, access.actions()));
        }
        let login = match &self.login {
            Some(login) if url.scheme() != "https" && !url.host_str().is_some_and(is_insecure_registry) => {
                return Err(ApiError::Unusable {
                    url: realm.to_string(),
                    message: format!(
                        "the token server is plain HTTP; the agent sends the login for {} over HTTPS only",
                        login.registry
                    ),
                });
            }
            Some(login) => Some(basic(login)),
            None => None,
        };
        let mut backoff = Backoff::default();
        let what = "a token's request";
        loop {
            let mut request = self.http.get(url.clone());
            if let Some(login) = &login {
                let mut header = HeaderValue::from_str(login).map_err(|_| ApiError::Unusable {
                    url: realm.to_string(),
                    message: "the login cannot be sent in a header".to_string(),
                })?;
                header.set_sensitive(true);
                request = request.header(AUTHORIZATION, header);
            }
            let response = request.send().await.map_err(|error| unreachable(realm, &error))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let asked = retry_after(response.headers());
                let error = refused(response, realm).await;
                self.wait_out(&mut backoff, what, asked, error).await?;
                continue;
            }
            if !status.is_success() {
                let message = match refused(response, realm).await {
                    ApiError::Refused { message, .. } => message,
                    other => other.to_string(),
                };
                return Err(ApiError::TokenRefused { url: realm.to_string(), status, message });
            }
            let body = read_bounded(response, ANSWER_LIMIT, realm).await?;
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let token = answer["token"].as_str().or_else(|| answer["access_token"].as_str()).unwrap_or_default();
            if token.is_empty() || HeaderValue::from_str(token).is_err() {
                return Err(ApiError::Unusable {
                    url: realm.to_string(),
                    message: "the token server's answer holds no token".to_string(),
                });
            }
            crate::secrets::redactor().register(token);
            return Ok(token.to_string());
        }
    }

    /// Waits before the next attempt of a call answered 429 (`error`), as the registry's
    /// `Retry-After` asks or the backoff says; `Err` once the patience is spent or the registry
    /// asks for more than is left.
    async fn wait_out(
        &self,
        backoff: &mut Backoff,
        what: &str,
        asked: Option<Duration>,
        error: ApiError,
    ) -> Result<(), ApiError> {
        let waited = backoff.waited();
        let (url, message) = match error {
            ApiError::Refused { url, message, .. } => (url, message),
            other => (String::new(), other.to_string()),
        };
        let quota = asked.is_none() && rate_limit::is_pull_quota(&message);
        let next = if quota { None } else { backoff.next_wait(asked) };
        let Some(wait) = next else {
            return Err(ApiError::RateLimited { url, message, waited, asked, quota });
        };
        let why = if asked.is_some() { ", as its Retry-After asks" } else { "" };
        tracing::warn!(
            "{} answered {what} with 429 Too Many Requests (rate-limited); retrying in {}s{why}",
            self.name(),
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// `Basic` and the base64 of `user:password`.
fn basic(login: &Credential) -> String {
    let pair = format!("{}:{}", login.user, login.password.expose());
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

fn unreachable(url: &str, error: &reqwest::Error) -> ApiError {
    // reqwest's error names the URL; its source says what happened.
    let mut message = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message = cause.to_string();
        source = cause.source();
    }
    if message.is_empty() {
        message = if error.is_timeout() { "timed out".to_string() } else { error.to_string() };
    }
    ApiError::Unreachable { url: url.to_string(), message }
}

/// An error answer as [`ApiError::Refused`]: its status, and its error envelope's codes and
/// messages (distribution's `{"errors":[{"code","message"}]}`), else the start of its body.
async fn refused(response: reqwest::Response, url: &str) -> ApiError {
    let status = response.status();
    let body = read_bounded(response, ANSWER_LIMIT, url).await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let (codes, message) = match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) => {
            let codes: Vec<String> = envelope.errors.iter().map(|each| each.code.clone()).collect();
            let message = envelope
                .errors
                .iter()
                .map(|each| {
                    if each.message.is_empty() { each.code.clone() } else { format!("{}: {}", each.code, each.message) }
                })
                .collect::<Vec<_>>()
                .join("; ");
            (codes, message)
        }
        Err(_) => (Vec::new(), String::from_utf8_lossy(&body).trim().to_string()),
    };
    let mut message = crate::output::escape_controls(&message).into_owned();
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    ApiError::Refused { url: url.to_string(), status, codes, message }
}

/// The body of `response`, up to `limit` bytes; more is an error.
async fn read_bounded(mut response: reqwest::Response, limit: usize, url: &str) -> Result<Vec<u8>, ApiError> {
    let too_large =
        || ApiError::Unusable { url: url.to_string(), message: format!("the answer is over {limit} bytes") };
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| unreachable(url, &error))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A 429's `Retry-After`: delay-seconds, or an HTTP date (a date passed is no wait).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `sha256:` and the hex of the SHA-256 of `bytes`: a content digest as registries name it.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let mut digest = String::with_capacity(7 + 2 * hash.len());
    digest.push_str("sha256:");
    for byte in hash.iter() {
        digest.push_str(&format!("{byte:02x}"));
    }
    digest
}

/// The daemon's rule for plain HTTP: registries on 127.0.0.0/8 (and `localhost`), any port.
pub fn is_insecure_registry(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(is_insecure_registry("127.0.0.1:5000"));
        assert!(is_insecure_registry("127.8.9.10"));
        assert!(is_insecure_registry("localhost:5000"));
        assert!(!is_insecure_registry("docker.io"));
        assert!(!is_insecure_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com"));
        assert!(!is_insecure_registry("127.0.0.1.example.com:5000"));
    }

    #[test]
    fn docker_hub_is_asked_at_its_api_host_and_official_images_get_the_library_prefix() {
        let timeout = Duration::from_secs(5);
        let official = Registry::new(&Repository::parse("alpine").unwrap(), None, timeout).unwrap();
        assert_eq!((official.base.as_str(), official.path()), ("https://registry-1.docker.io", "library/alpine"));
        let user = Registry::new(&Repository::parse("me/app").unwrap(), None, timeout).unwrap();
        assert_eq!(user.path(), "me/app");
        let local = Registry::new(&Repository::parse("127.0.0.1:5000/app").unwrap(), None, timeout).unwrap();
        assert_eq!((local.base.as_str(), local.path()), ("http://127.0.0.1:5000", "app"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(115) && wait <= Duration::from_secs(120), "{wait:?}");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn a_rate_limit_says_how_long_the_agent_waited_and_why_it_stopped() {
        let limited = |waited, asked: Option<u64>| ApiError::RateLimited {
            url: "https://registry-1.docker.io/v2/me/app/manifests/v1".to_string(),
            message: String::new(),
            waited: Duration::from_secs(waited),
            asked: asked.map(Duration::from_secs),
            quota: false,
        };
        assert_eq!(limited(30, None).patience_spent().unwrap(), "after 30s of retries");
        assert_eq!(
            limited(0, Some(3600)).patience_spent().unwrap(),
            "its Retry-After asked for 3600s more, longer than the agent waits (30s)"
        );
        assert_eq!(
            limited(3, Some(40)).patience_spent().unwrap(),
            "after 3s of retries, its Retry-After asked for 40s more, longer than the agent waits (30s)"
        );
        let quota = ApiError::RateLimited {
            url: String::new(),
            message: String::new(),
            waited: Duration::ZERO,
            asked: None,
            quota: true,
        };
        assert_eq!(quota.patience_spent().unwrap(), "a pull quota, which lifts in hours, not seconds: not retried");
    }

    #[test]
    fn only_an_unknown_manifest_blob_or_repository_is_not_found() {
        let refused = |status: u16, code: &str| ApiError::Refused {
            url: String::new(),
            status: StatusCode::from_u16(status).unwrap(),
            codes: vec![code.to_string()],
            message: String::new(),
        };
        assert!(refused(404, "MANIFEST_UNKNOWN").is_not_found());
        assert!(refused(404, "NAME_UNKNOWN").is_not_found());
        assert!(refused(404, "").is_not_found());
        assert!(!refused(401, "UNAUTHORIZED").is_not_found());
        assert!(refused(401, "UNAUTHORIZED").is_unauthorized());
        assert!(!refused(403, "DENIED").is_not_found());
        let unreachable = ApiError::Unreachable { url: String::new(), message: "connection reset".to_string() };
        assert!(!unreachable.is_not_found());
    }
}
