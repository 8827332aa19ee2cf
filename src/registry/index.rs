//! Multi-platform images: one image index (a Docker manifest list, or an OCI image index) that names
//! per-platform manifests already pushed, pushed by the agent to the registry itself — a daemon
//! without the containerd image store builds one platform per build and cannot push an index.
//!
//! The registry client is `oci-client` (the ORAS project's, well kept): it speaks the distribution
//! API, plain HTTP for the registries it is told to (the daemon's rule: 127.0.0.0/8 and `localhost`),
//! HTTPS otherwise, with basic auth (htpasswd registries, ECR tokens as `AWS:password`) or the
//! bearer-token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`, as Docker Hub uses),
//! whichever the registry's `/v2/` challenge asks for. What the agent adds: each manifest's media type
//! and size read from the registry, its config checked to be of the platform it is listed under, the
//! index's media type chosen to match the manifests, and errors of the push class naming the tag and
//! the registry.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

use crate::error::Error;
pub use crate::registry::reference::Platform;
use crate::registry::reference::{DOCKER_HUB, Repository};
use crate::registry::{Credential, rate_limit};

/// One platform's image, already pushed to the repository: its manifest's digest (`sha256:…`, as
/// the daemon's push reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub platform: Platform,
    pub digest: String,
}

/// What was pushed: the index's digest and media type, and the tags it was pushed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedIndex {
    pub digest: String,
    pub media_type: &'static str,
    pub tags: Vec<String>,
}

/// The manifest types a platform's image may have, in the order they are asked for.
const MANIFEST_MEDIA_TYPES: &[&str] = &[IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE];

/// A registry client for one repository, with the run's login for its registry (if any).
pub struct IndexPusher {
    client: Client,
    auth: RegistryAuth,
    repository: Repository,
    /// The registry host as oci-client addresses it (`index.docker.io` for Docker Hub).
    registry: String,
    /// The repository's path as the registry knows it (`library/` added for Docker Hub's official).
    path: String,
}

impl IndexPusher {
    /// `credential` is the run's login for the repository's registry, if it has one; `timeout`
    /// bounds connecting and each read.
    pub fn new(repository: &Repository, credential: Option<&Credential>, timeout: Duration) -> IndexPusher {
        let registry = repository.registry().to_string();
        let path = if registry == DOCKER_HUB && !repository.path.contains('/') {
            format!("library/{}", repository.path)
        } else {
            repository.path.clone()
        };
        let protocol = if is_insecure_registry(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            user_agent: concat!("agent/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let auth = match credential {
            Some(credential) => RegistryAuth::Basic(credential.user.clone(), credential.password.expose().to_string()),
            None => RegistryAuth::Anonymous,
        };
        IndexPusher { client: Client::new(config), auth, repository: repository.clone(), registry, path }
    }

    fn reference_by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.registry.clone(), self.path.clone(), digest.to_string())
    }

    fn reference_by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.path.clone(), tag.to_string())
    }

    fn error(&self, what: &str, context: String, error: OciDistributionError) -> Error {
        if rate_limit::is_rate_limited(&error) {
            return Error::RateLimited {
                registry: crate::docker::cause::registry_name(self.repository.registry()),
                during: format!("{context} (after {}s of retries)", rate_limit::PATIENCE.as_secs()),
                message: crate::output::escape_controls(&error.to_string()).into_owned(),
            };
        }
        let detail = match &error {
            OciDistributionError::UnauthorizedError { .. } => {
                "unauthorized: the registry refused the credentials (or there were none)".to_string()
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                format!("unauthorized: the token server refused the credentials: {}", reason.trim())
            }
            other => other.to_string(),
        };
        let detail = crate::output::escape_controls(&detail);
        Error::Push {
            reference: format!("{}:{what}", self.repository),
            registry: self.repository.registry().to_string(),
            message: format!("{context}: {detail}"),
        }
    }

    /// The index entry of one platform's image: its manifest's media type and size as the registry
    /// has them, after checking that its config is of that platform (a variant the config names is
    /// taken when the platform names none).
    pub async fn describe(&self, image: &PlatformImage, tag: &str) -> Result<ImageIndexEntry, Error> {
        let reference = self.reference_by_digest(&image.digest);
        let context = || format!("reading the {} manifest {}", image.platform, image.digest);
        let (body, digest) = self
            .patiently("a manifest's read", || {
                self.client.pull_manifest_raw(&reference, &self.auth, MANIFEST_MEDIA_TYPES)
            })
            .await
            .map_err(|error| self.error(tag, context(), error))?;
        let fields: serde_json::Value = serde_json::from_slice(&body).map_err(|error| Error::Push {
            reference: self.repository.with_tag(tag),
            registry: self.repository.registry().to_string(),
            message: format!("{}: not JSON: {error}", context()),
        })?;
        let media_type = match fields["mediaType"].as_str() {
            Some(IMAGE_MANIFEST_MEDIA_TYPE) => IMAGE_MANIFEST_MEDIA_TYPE,
            Some(OCI_IMAGE_MEDIA_TYPE) | None if fields["config"].is_object() => OCI_IMAGE_MEDIA_TYPE,
            other => {
                return Err(Error::Push {
                    reference: self.repository.with_tag(tag),
                    registry: self.repository.registry().to_string(),
                    message: format!(
                        "{}: it is {}, not a single-platform image manifest",
                        context(),
                        other.unwrap_or("of no known media type")
                    ),
                });
            }
        };
        let manifest: OciImageManifest = serde_json::from_slice(&body).map_err(|error| Error::Push {
            reference: self.repository.with_tag(tag),
            registry: self.repository.registry().to_string(),
            message: format!("{}: {error}", context()),
        })?;
        let config = self
            .patiently("a config's read", || async {
                let mut config = Vec::new();
                self.client.pull_blob(&reference, &manifest.config, &mut config).await.map(|()| config)
            })
            .await
            .map_err(|error| self.error(tag, format!("reading the {} image's config", image.platform), error))?;
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
        let (os, architecture) = (config["os"].as_str().unwrap_or(""), config["architecture"].as_str().unwrap_or(""));
        if os != image.platform.os || architecture != image.platform.architecture {
            return Err(Error::Push {
                reference: self.repository.with_tag(tag),
                registry: self.repository.registry().to_string(),
                message: format!(
                    "the image {} listed as {} is an image for {os}/{architecture}",
                    image.digest, image.platform
                ),
            });
        }
        let variant = image.platform.variant.clone().or_else(|| config["variant"].as_str().map(str::to_string));
        Ok(ImageIndexEntry {
            media_type: media_type.to_string(),
            digest,
            size: i64::try_from(body.len()).unwrap_or(i64::MAX),
            platform: Some(oci_client::manifest::Platform {
                architecture: image.platform.architecture.as_str().into(),
                os: image.platform.os.as_str().into(),
                os_version: None,
                os_features: None,
                variant,
                features: None,
            }),
            annotations: None,
            artifact_type: None,
        })
    }

    /// Fetches the token for `operation` (bearer flow) once for the repository, so that the
    /// requests that follow share it instead of each asking the token server.
    pub async fn authorize(&self, tag: &str, operation: oci_client::RegistryOperation) -> Result<(), Error> {
        let reference = self.reference_by_tag(tag);
        self.patiently("the login", || self.client.auth(&reference, &self.auth, operation))
            .await
            .map(drop)
            .map_err(|error| self.error(tag, format!("logging in to {}", self.repository.registry()), error))
    }

    /// Pushes the index of `entries` under `tag`; returns its digest.
    pub async fn push(&self, tag: &str, index: &IndexBody) -> Result<String, Error> {
        let content_type = http::HeaderValue::from_static(index.media_type);
        self.client.store_auth_if_needed(self.reference_by_tag(tag).resolve_registry(), &self.auth).await;
        let reference = self.reference_by_tag(tag);
        self.patiently("the index's push", || {
            self.client.push_manifest_raw(&reference, index.bytes.clone(), content_type.clone())
        })
        .await
        .map_err(|error| self.error(tag, "pushing the image index".to_string(), error))?;
        Ok(index.digest.clone())
    }
}

/// A tag's manifest as the registry serves it: its bytes (to put under another tag unchanged),
/// digest and media type.
#[derive(Debug, Clone)]
pub struct TagManifest {
    pub bytes: bytes::Bytes,
    pub digest: String,
    /// `mediaType` of the body; an OCI manifest may leave it out (then the OCI type).
    pub media_type: String,
}

impl TagManifest {
    /// A manifest as the registry served it; its media type from its body (an OCI manifest may
    /// leave it out: then the OCI type; empty when the body names none and has no config).
    fn read(bytes: bytes::Bytes, digest: String) -> Result<TagManifest, OciDistributionError> {
        let fields: serde_json::Value = serde_json::from_slice(&bytes)?;
        let media_type = match fields["mediaType"].as_str() {
            Some(media_type) => media_type.to_string(),
            None if fields["config"].is_object() => OCI_IMAGE_MEDIA_TYPE.to_string(),
            None => String::new(),
        };
        Ok(TagManifest { bytes, digest, media_type })
    }
}

impl IndexPusher {
    /// The manifest `tag` points at, as it is: an image's manifest (Docker v2 schema 2 or OCI) or an
    /// index (the media type says which); `Ok(None)` when the registry has no such tag (or no such
    /// repository) yet. Indexes are accepted so that the registry serves what the tag holds: asked
    /// for image manifests only, a registry may answer with one platform's manifest out of an index.
    pub async fn tag_manifest(&self, tag: &str) -> Result<Option<TagManifest>, OciDistributionError> {
        let reference = self.reference_by_tag(tag);
        let accepted = [MANIFEST_MEDIA_TYPES, &[IMAGE_MANIFEST_LIST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE]].concat();
        let pulled =
            self.patiently("a tag's read", || self.client.pull_manifest_raw(&reference, &self.auth, &accepted));
        let (bytes, digest) = match pulled.await {
            Ok(pulled) => pulled,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        TagManifest::read(bytes, digest).map(Some)
    }

    /// The manifest a digest names, as it is (an image's manifest or an index).
    pub async fn manifest_by_digest(&self, digest: &str) -> Result<TagManifest, OciDistributionError> {
        let reference = self.reference_by_digest(digest);
        let accepted = [MANIFEST_MEDIA_TYPES, &[IMAGE_MANIFEST_LIST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE]].concat();
        let (bytes, digest) = self.client.pull_manifest_raw(&reference, &self.auth, &accepted).await?;
        TagManifest::read(bytes, digest)
    }

    /// A blob of the repository (an image's config), whole.
    pub async fn blob(
        &self,
        descriptor: &oci_client::manifest::OciDescriptor,
    ) -> Result<Vec<u8>, OciDistributionError> {
        let reference = self.reference_by_tag(crate::registry::reference::LATEST);
        self.patiently("a config's read", || async {
            let mut out = Vec::new();
            self.client.pull_blob(&reference, descriptor, &mut out).await.map(|()| out)
        })
        .await
    }

    /// Puts `manifest` (bytes as the registry served them) under `tag`: a registry-side tag, no
    /// layer moves.
    pub async fn put_manifest(&self, tag: &str, manifest: &TagManifest) -> Result<(), OciDistributionError> {
        let content_type = http::HeaderValue::from_str(&manifest.media_type)
            .map_err(|_| OciDistributionError::GenericError(Some("an unreadable media type".to_string())))?;
        self.client.store_auth_if_needed(self.reference_by_tag(tag).resolve_registry(), &self.auth).await;
        let reference = self.reference_by_tag(tag);
        self.patiently("a tag's push", || {
            self.client.push_manifest_raw(&reference, manifest.bytes.clone(), content_type.clone())
        })
        .await
        .map(drop)
    }

    /// `call`, again after each 429 within the rate limit's patience (see [`rate_limit`]).
    async fn patiently<T, Fut>(&self, what: &str, call: impl FnMut() -> Fut) -> Result<T, OciDistributionError>
    where
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        rate_limit::patiently(&crate::docker::cause::registry_name(self.repository.registry()), what, call).await
    }
}

/// Whether a registry's answer means "no such manifest" (the tag or the repository is not there).
fn is_not_found(error: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode;
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|each| matches!(each.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)),
        _ => false,
    }
}

/// An index, serialised: the bytes pushed, their digest and media type.
#[derive(Debug, Clone)]
pub struct IndexBody {
    pub bytes: bytes::Bytes,
    pub digest: String,
    pub media_type: &'static str,
}

impl IndexBody {
    /// A Docker manifest list when every manifest is Docker v2 schema 2 (what registries and
    /// clients that predate OCI understand), an OCI image index otherwise.
    pub fn new(entries: Vec<ImageIndexEntry>) -> IndexBody {
        let media_type = if entries.iter().all(|entry| entry.media_type == IMAGE_MANIFEST_MEDIA_TYPE) {
            IMAGE_MANIFEST_LIST_MEDIA_TYPE
        } else {
            OCI_IMAGE_INDEX_MEDIA_TYPE
        };
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            manifests: entries,
            artifact_type: None,
            annotations: None,
        };
        let bytes = serde_json::to_vec_pretty(&index).expect("an image index serialises");
        let digest = sha256_digest(&bytes);
        IndexBody { bytes: bytes.into(), digest, media_type }
    }
}

/// Pushes one index naming `images` under every tag of `tags`: reads every platform's manifest
/// (concurrently), then puts the same index under each tag. Nothing is pushed unless every
/// platform's manifest is there and of its platform.
pub async fn push_index(
    repository: &Repository,
    credential: Option<&Credential>,
    tags: &[String],
    images: &[PlatformImage],
    timeout: Duration,
) -> Result<PushedIndex, Error> {
    let first_tag = tags.first().map(String::as_str).unwrap_or(crate::registry::reference::LATEST);
    let pusher = IndexPusher::new(repository, credential, timeout);
    pusher.authorize(first_tag, oci_client::RegistryOperation::Pull).await?;
    let entries =
        futures_util::future::try_join_all(images.iter().map(|image| pusher.describe(image, first_tag))).await?;
    let index = IndexBody::new(entries);
    pusher.authorize(first_tag, oci_client::RegistryOperation::Push).await?;
    futures_util::future::try_join_all(tags.iter().map(|tag| pusher.push(tag, &index))).await?;
    Ok(PushedIndex { digest: index.digest, media_type: index.media_type, tags: tags.to_vec() })
}

/// `sha256:` and the hex of the SHA-256 of `bytes`: a content digest as registries name it.
fn sha256_digest(bytes: &[u8]) -> String {
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
    fn platforms_parse_with_and_without_a_variant() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert_eq!(arm64.to_string(), "linux/arm64");
        assert_eq!(arm64.tag_suffix(), "arm64");
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(arm.variant.as_deref(), Some("v7"));
        assert_eq!(arm.tag_suffix(), "arm-v7");
        for bad in ["linux", "linux/", "/arm64", "linux/arm64/v8/x", "linux/arm 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(is_insecure_registry("127.0.0.1:5000"));
        assert!(is_insecure_registry("127.8.9.10"));
        assert!(is_insecure_registry("localhost:5000"));
        assert!(!is_insecure_registry("docker.io"));
        assert!(!is_insecure_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com"));
        assert!(!is_insecure_registry("127.0.0.1.example.com:5000"));
    }

    fn entry(media_type: &str) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 428,
            platform: None,
            annotations: None,
            artifact_type: None,
        }
    }

    #[test]
    fn docker_manifests_make_a_manifest_list_and_any_oci_one_an_oci_index() {
        let docker = IndexBody::new(vec![entry(IMAGE_MANIFEST_MEDIA_TYPE), entry(IMAGE_MANIFEST_MEDIA_TYPE)]);
        assert_eq!(docker.media_type, IMAGE_MANIFEST_LIST_MEDIA_TYPE);
        let body: serde_json::Value = serde_json::from_slice(&docker.bytes).unwrap();
        assert_eq!(body["mediaType"], IMAGE_MANIFEST_LIST_MEDIA_TYPE);
        assert_eq!(body["schemaVersion"], 2);
        assert_eq!(sha256_digest(&docker.bytes), docker.digest);
        assert!(docker.digest.starts_with("sha256:") && docker.digest.len() == 7 + 64, "{}", docker.digest);
        let mixed = IndexBody::new(vec![entry(IMAGE_MANIFEST_MEDIA_TYPE), entry(OCI_IMAGE_MEDIA_TYPE)]);
        assert_eq!(mixed.media_type, OCI_IMAGE_INDEX_MEDIA_TYPE);
    }

    #[test]
    fn only_an_unknown_manifest_or_repository_is_a_missing_tag() {
        use oci_client::errors::{OciEnvelope, OciError, OciErrorCode};
        let envelope = |code| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError { code, message: String::new(), detail: serde_json::Value::Null }],
            },
            url: "http://127.0.0.1:5000/v2/app/manifests/latest".to_string(),
        };
        assert!(is_not_found(&envelope(OciErrorCode::ManifestUnknown)));
        assert!(is_not_found(&envelope(OciErrorCode::NameUnknown)));
        assert!(!is_not_found(&envelope(OciErrorCode::Denied)));
        assert!(!is_not_found(&envelope(OciErrorCode::Unauthorized)));
        assert!(!is_not_found(&OciDistributionError::GenericError(Some("connection reset".to_string()))));
    }

    /// Issue 23: a 429 that outlasted the retries is rate-limited (exit 41), naming the registry
    /// as the user knows it; any other registry error stays the push's.
    #[test]
    fn a_429_after_the_retries_is_rate_limited_and_names_the_registry() {
        let hub = IndexPusher::new(&Repository::parse("me/app").unwrap(), None, Duration::from_secs(5));
        let limited = OciDistributionError::ServerError {
            code: 429,
            url: "https://index.docker.io/v2/me/app/manifests/v1".to_string(),
            message: String::new(),
        };
        let error = hub.error("v1", "pushing the image index".to_string(), limited);
        assert_eq!(error.exit_code(), crate::error::exit::RATE_LIMITED);
        assert!(error.to_string().starts_with("Docker Hub (docker.io) answered 429"), "{error}");
        assert!(error.to_string().contains("pushing the image index (after 30s of retries)"), "{error}");
        let other = OciDistributionError::ServerError { code: 503, url: String::new(), message: String::new() };
        assert_eq!(hub.error("v1", "pushing".to_string(), other).exit_code(), crate::error::exit::PUSH);
    }

    #[test]
    fn docker_hub_official_images_get_the_library_prefix() {
        let official = IndexPusher::new(&Repository::parse("alpine").unwrap(), None, Duration::from_secs(5));
        assert_eq!((official.registry.as_str(), official.path.as_str()), ("docker.io", "library/alpine"));
        let user = IndexPusher::new(&Repository::parse("me/app").unwrap(), None, Duration::from_secs(5));
        assert_eq!(user.path, "me/app");
    }
}
