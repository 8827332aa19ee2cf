//! A build's base image (its `FROM`) as its registry holds it now: its manifest's digest and its
//! layers, for one platform. The cache line compares them with the image the build is compared
//! with (the registry's, under the first tag): an image is built on its base's layers, so when
//! those are not the first layers of that image, the base is not the one it was built on.

use std::time::Duration;

use serde_json::Value;

use crate::registry::Credential;
use crate::registry::api::{self, Access, Registry};
use crate::registry::reference::Repository;

/// The base image's manifest digest (the platform's, out of an index) and its layers (diff_ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseLayers {
    pub digest: String,
    pub diff_ids: Vec<String>,
}

/// A `FROM` reference as BuildKit names it (`host/repo:tag@sha256:…`, `repo:tag`): the repository,
/// and the tag or digest to read (the digest when there is one: what the build resolved).
pub fn split_reference(reference: &str) -> Option<(Repository, String)> {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (repository, tag) = match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (name, crate::registry::reference::LATEST),
    };
    let repository = Repository::parse(repository).ok()?;
    Some((repository, digest.unwrap_or(tag).to_string()))
}

/// Reads the base image `reference` for `os`/`arch` from its registry, with the run's login for
/// that registry if it has one. An `Err` says why it could not be read (the cache line then
/// claims nothing about the base).
pub async fn layers(
    reference: &str,
    (os, arch): (&str, &str),
    credentials: &[Credential],
    timeout: Duration,
) -> Result<BaseLayers, String> {
    let (repository, tag_or_digest) =
        split_reference(reference).ok_or_else(|| format!("{reference:?} is not an image reference"))?;
    let credential = credentials.iter().find(|credential| credential.registry == repository.registry());
    let registry = Registry::new(&repository, credential, timeout).map_err(|error| error.to_string())?;
    registry.authorize(Access::Pull).await.map_err(|error| error.to_string())?;
    let manifest = match registry.tag_manifest(&tag_or_digest, api::ANY_MANIFEST).await {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return Err(format!("the registry has no {reference}")),
        Err(error) => return Err(error.to_string()),
    };
    let parsed: Value = serde_json::from_slice(&manifest.bytes).map_err(|error| error.to_string())?;
    // An index: the platform's manifest, read by its digest (and checked against it).
    let manifest = if parsed["manifests"].is_array() {
        let digest =
            platform_manifest(&parsed, os, arch).ok_or_else(|| format!("{reference} has no {os}/{arch} image"))?;
        registry.manifest(&digest, api::IMAGE_MANIFESTS).await.map_err(|error| error.to_string())?
    } else {
        manifest
    };
    let config = registry.blob(&manifest.config()?).await.map_err(|error| error.to_string())?;
    let config: Value = serde_json::from_slice(&config).map_err(|error| format!("its config: {error}"))?;
    Ok(BaseLayers { digest: manifest.digest, diff_ids: diff_ids(&config) })
}

/// The digest of an index's manifest for `os`/`arch`.
fn platform_manifest(index: &Value, os: &str, arch: &str) -> Option<String> {
    let manifests = index["manifests"].as_array()?;
    let entry =
        manifests.iter().find(|entry| entry["platform"]["os"] == os && entry["platform"]["architecture"] == arch)?;
    entry["digest"].as_str().map(str::to_string)
}

/// An image config's layers (`rootfs.diff_ids`).
pub fn diff_ids(config: &Value) -> Vec<String> {
    let ids = config["rootfs"]["diff_ids"].as_array().map(Vec::as_slice).unwrap_or_default();
    ids.iter().filter_map(|id| id.as_str().map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_references_split_into_repository_and_what_to_read() {
        let (repository, what) = split_reference("127.0.0.1:5000/base:1@sha256:0ffe").unwrap();
        assert_eq!((repository.to_string().as_str(), what.as_str()), ("127.0.0.1:5000/base", "sha256:0ffe"));
        let (repository, what) = split_reference("127.0.0.1:5000/team/base:1").unwrap();
        assert_eq!((repository.to_string().as_str(), what.as_str()), ("127.0.0.1:5000/team/base", "1"));
        let (repository, what) = split_reference("docker.io/library/alpine").unwrap();
        assert_eq!((repository.registry(), what.as_str()), ("docker.io", "latest"));
    }

    #[test]
    fn an_index_gives_the_platforms_manifest() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(platform_manifest(&index, "linux", "amd64").as_deref(), Some("sha256:b"));
        assert_eq!(platform_manifest(&index, "linux", "s390x"), None);
    }
}
