//! Multi-platform images: one image index (a Docker manifest list, or an OCI image index) that names
//! per-platform manifests already pushed, pushed by the agent to the registry itself — a daemon
//! without the containerd image store builds one platform per build and cannot push an index.
//!
//! The registry calls are [`api::Registry`]'s. What this adds: each manifest's media type and size
//! read from the registry, its config checked to be of the platform it is listed under, the index's
//! media type chosen to match the manifests, and errors of the push class naming the tag and the
//! registry.

use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::registry::Credential;
use crate::registry::api::{
    self, Access, ApiError, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Registry,
};
pub use crate::registry::reference::Platform;
use crate::registry::reference::Repository;

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

/// One entry of an index: a platform's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub platform: EntryPlatform,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A registry call of the index's push that failed, as the run's error: a 429 that outlasted the
/// patience is `rate-limited`, anything else a push error naming `tag` and the registry.
fn push_error(registry: &Registry, tag: &str, context: String, error: ApiError) -> Error {
    let repository = registry.repository();
    if let (Some(spent), ApiError::RateLimited { url, message, .. }) = (error.patience_spent(), &error) {
        return Error::RateLimited {
            registry: registry.name(),
            during: format!("{context} ({spent})"),
            message: if message.is_empty() { format!("the answer to {url}") } else { message.clone() },
        };
    }
    let detail = match &error {
        _ if error.is_unauthorized() => {
            format!("unauthorized: the registry refused the credentials (or there were none): {error}")
        }
        ApiError::TokenRefused { message, .. } => {
            format!("unauthorized: the token server refused the credentials: {}", message.trim())
        }
        other => other.to_string(),
    };
    Error::Push {
        reference: repository.with_tag(tag),
        registry: repository.registry().to_string(),
        message: format!("{context}: {detail}"),
    }
}

/// The index entry of one platform's image: its manifest's media type and size as the registry
/// has them, after checking that its config is of that platform (a variant the config names is
/// taken when the platform names none).
async fn describe(registry: &Registry, image: &PlatformImage, tag: &str) -> Result<IndexEntry, Error> {
    let context = || format!("reading the {} manifest {}", image.platform, image.digest);
    let unusable = |message: String| {
        let repository = registry.repository();
        Error::Push { reference: repository.with_tag(tag), registry: repository.registry().to_string(), message }
    };
    let manifest = registry
        .manifest(&image.digest, api::IMAGE_MANIFESTS)
        .await
        .map_err(|error| push_error(registry, tag, context(), error))?;
    let media_type = match manifest.media_type.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST => manifest.media_type.clone(),
        "" => {
            return Err(unusable(format!(
                "{}: it is of no known media type, not a single-platform image manifest",
                context()
            )));
        }
        other => return Err(unusable(format!("{}: it is {other}, not a single-platform image manifest", context()))),
    };
    let config = manifest.config().map_err(|error| unusable(format!("{}: {error}", context())))?;
    let config = registry
        .blob(&config)
        .await
        .map_err(|error| push_error(registry, tag, format!("reading the {} image's config", image.platform), error))?;
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
    let (os, architecture) = (config["os"].as_str().unwrap_or(""), config["architecture"].as_str().unwrap_or(""));
    if os != image.platform.os || architecture != image.platform.architecture {
        return Err(unusable(format!(
            "the image {} listed as {} is an image for {os}/{architecture}",
            image.digest, image.platform
        )));
    }
    let variant = image.platform.variant.clone().or_else(|| config["variant"].as_str().map(str::to_string));
    Ok(IndexEntry {
        media_type,
        digest: manifest.digest,
        size: manifest.bytes.len() as u64,
        platform: EntryPlatform {
            architecture: image.platform.architecture.clone(),
            os: image.platform.os.clone(),
            variant,
        },
    })
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
    pub fn new(entries: Vec<IndexEntry>) -> IndexBody {
        let media_type = if entries.iter().all(|entry| entry.media_type == DOCKER_MANIFEST) {
            DOCKER_MANIFEST_LIST
        } else {
            OCI_INDEX
        };
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Index<'a> {
            schema_version: u32,
            media_type: &'a str,
            manifests: Vec<IndexEntry>,
        }
        let index = Index { schema_version: 2, media_type, manifests: entries };
        let bytes = serde_json::to_vec_pretty(&index).expect("an image index serialises");
        let digest = api::sha256_digest(&bytes);
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
    let registry = Registry::new(repository, credential, timeout).map_err(|error| Error::Push {
        reference: repository.with_tag(first_tag),
        registry: repository.registry().to_string(),
        message: error.to_string(),
    })?;
    let logging_in = || format!("logging in to {}", repository.registry());
    registry.authorize(Access::Pull).await.map_err(|error| push_error(&registry, first_tag, logging_in(), error))?;
    let entries =
        futures_util::future::try_join_all(images.iter().map(|image| describe(&registry, image, first_tag))).await?;
    let index = IndexBody::new(entries);
    registry.authorize(Access::Push).await.map_err(|error| push_error(&registry, first_tag, logging_in(), error))?;
    let pushes = tags.iter().map(|tag| async {
        registry
            .put_manifest(tag, &index.bytes, index.media_type, "the index's push")
            .await
            .map_err(|error| push_error(&registry, tag, "pushing the image index".to_string(), error))
    });
    futures_util::future::try_join_all(pushes).await?;
    Ok(PushedIndex { digest: index.digest, media_type: index.media_type, tags: tags.to_vec() })
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

    fn entry(media_type: &str) -> IndexEntry {
        IndexEntry {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 428,
            platform: EntryPlatform { architecture: "arm".to_string(), os: "linux".to_string(), variant: None },
        }
    }

    #[test]
    fn docker_manifests_make_a_manifest_list_and_any_oci_one_an_oci_index() {
        let docker = IndexBody::new(vec![entry(DOCKER_MANIFEST), entry(DOCKER_MANIFEST)]);
        assert_eq!(docker.media_type, DOCKER_MANIFEST_LIST);
        let body: serde_json::Value = serde_json::from_slice(&docker.bytes).unwrap();
        assert_eq!(body["mediaType"], DOCKER_MANIFEST_LIST);
        assert_eq!(body["schemaVersion"], 2);
        assert_eq!(body["manifests"][0]["platform"], serde_json::json!({"architecture": "arm", "os": "linux"}));
        assert_eq!(body["manifests"][0]["size"], 428);
        assert_eq!(api::sha256_digest(&docker.bytes), docker.digest);
        assert!(docker.digest.starts_with("sha256:") && docker.digest.len() == 7 + 64, "{}", docker.digest);
        let mixed = IndexBody::new(vec![entry(DOCKER_MANIFEST), entry(OCI_MANIFEST)]);
        assert_eq!(mixed.media_type, OCI_INDEX);
    }

    /// Issue 23: a 429 that outlasted the retries is rate-limited (exit 41), naming the registry
    /// as the user knows it and how long the agent waited; any other registry error stays the push's.
    #[test]
    fn a_429_after_the_retries_is_rate_limited_and_names_the_registry() {
        let hub = Registry::new(&Repository::parse("me/app").unwrap(), None, Duration::from_secs(5)).unwrap();
        let url = "https://registry-1.docker.io/v2/me/app/manifests/v1".to_string();
        let limited = ApiError::RateLimited {
            url: url.clone(),
            message: "TOOMANYREQUESTS: slow down".to_string(),
            waited: crate::registry::rate_limit::PATIENCE,
            asked: None,
            quota: false,
        };
        let error = push_error(&hub, "v1", "pushing the image index".to_string(), limited);
        assert_eq!(error.exit_code(), crate::error::exit::RATE_LIMITED);
        assert!(error.to_string().starts_with("Docker Hub (docker.io) answered 429"), "{error}");
        assert!(error.to_string().contains("pushing the image index (after 30s of retries)"), "{error}");
        let other = ApiError::Refused {
            url,
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            codes: Vec::new(),
            message: String::new(),
        };
        assert_eq!(push_error(&hub, "v1", "pushing".to_string(), other).exit_code(), crate::error::exit::PUSH);
    }
}
