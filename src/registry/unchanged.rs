//! "Nothing changed, nothing new in the registry": the decision in front of a BuildKit build's
//! pushes. With `BUILDKIT_INLINE_CACHE=1` (which the agent sets, so that a new host can use the
//! pushed image as cache) BuildKit 0.8 writes the cache record in the image's config
//! (`moby.buildkit.cache.v0`) differently on every build, so a build whose every step is CACHED
//! still gets a new image id, and a push makes a new manifest digest: `latest` moves, one more
//! untagged image is left in the registry, and whatever is keyed on the digest sees a new image.
//!
//! So before the pushes the registry is asked for each tag's manifest and config, and the image the
//! daemon just built is compared with it, field by field, BuildKit's cache record aside
//! ([`differences`]). When one is the same image, its digest is kept: the tags that point at it are
//! left alone, the others get its manifest put under them by the agent (a registry-side tag, no
//! layer moves), and nothing is pushed. Any doubt — a registry error, a manifest list, another
//! media type, a field that cannot be compared — means "changed": the tags are pushed as before.

use std::time::Duration;

use serde_json::Value;

use crate::docker::daemon::Daemon;
use crate::error::Error;
use crate::registry::Credential;
use crate::registry::api::{self, Access, ApiError, Manifest, Registry};
use crate::registry::reference::Repository;

/// The image config's field where BuildKit records its inline cache: the one field that differs
/// between two fully cached builds, and that no container reads.
pub const INLINE_CACHE_FIELD: &str = "moby.buildkit.cache.v0";

/// The registry's image that this build is the same as: kept instead of pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The registry's manifest digest.
    pub digest: String,
    /// The digest of the registry's image config (its image id).
    pub config_digest: String,
    /// The image's `created`, as its config has it.
    pub created: String,
    /// The tags (as given, without the repository) that pointed at it already.
    pub already: Vec<String>,
    /// The tags the agent put its manifest under.
    pub tagged: Vec<String>,
}

impl Kept {
    /// Whether `tag` is one of the kept tags.
    pub fn holds(&self, tag: &str) -> bool {
        self.already.iter().chain(&self.tagged).any(|kept| kept == tag)
    }

    /// The log line of one tag: `unchanged since 2026-…Z: kept sha256:…`.
    pub fn line(&self, tag: &str) -> String {
        let how = if self.tagged.iter().any(|tagged| tagged == tag) { " (tagged in the registry)" } else { "" };
        format!("unchanged since {}: kept {}{how}", self.created, self.digest)
    }
}

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The registry holds this image: nothing to push.
    Unchanged(Kept),
    /// Push as before, for this reason.
    Changed(String),
}

/// What the registry holds under the tags: each tag's manifest (or none), and the config of each
/// distinct single-image manifest. Asked for before the comparison needs it — while the image
/// builds — since it does not depend on the build.
pub struct RegistryImages {
    registry: Registry,
    tags: Vec<String>,
    /// Per tag, in the order of `tags`.
    manifests: Vec<Option<Manifest>>,
    /// Per distinct manifest digest, in the order of the tags: its config's digest and the config.
    configs: Vec<(String, String, Value)>,
}

impl RegistryImages {
    /// The config of the image under the first tag the registry holds: the image a build is
    /// compared with first.
    pub fn compared_config(&self) -> Option<&Value> {
        self.configs.first().map(|(_, _, config)| config)
    }
}

/// Asks the registry for the manifest of each of `tags` of `repository` and for the config of each
/// manifest they point at. An `Err` is the reason the image is to be pushed (a registry error, a
/// manifest list, another media type).
pub async fn registry_images(
    repository: &Repository,
    tags: &[String],
    credential: Option<&Credential>,
    timeout: Duration,
) -> Result<RegistryImages, String> {
    if tags.is_empty() {
        return Err("no tag".to_string());
    }
    let registry = Registry::new(repository, credential, timeout).map_err(|error| error.to_string())?;
    registry.authorize(Access::Pull).await.map_err(|error| registry_failure(&error))?;
    // Indexes are accepted so that the registry serves what the tag holds: asked for image
    // manifests only, a registry may answer with one platform's manifest out of an index.
    let manifests =
        futures_util::future::join_all(tags.iter().map(|tag| registry.tag_manifest(tag, api::ANY_MANIFEST))).await;
    let manifests = manifests
        .into_iter()
        .zip(tags)
        .map(|(manifest, tag)| manifest.map_err(|error| format!("the registry's {tag}: {}", registry_failure(&error))))
        .collect::<Result<Vec<Option<Manifest>>, String>>()?;
    let mut distinct: Vec<(&Manifest, api::Descriptor)> = Vec::new();
    for manifest in manifests.iter().flatten() {
        if distinct.iter().any(|(seen, _)| seen.digest == manifest.digest) {
            continue;
        }
        if !api::IMAGE_MANIFESTS.contains(&manifest.media_type.as_str()) {
            return Err(format!(
                "the registry's {} is {}, not one image's manifest",
                manifest.digest,
                if manifest.media_type.is_empty() { "of no known media type" } else { &manifest.media_type }
            ));
        }
        let config = manifest.config().map_err(|error| format!("the registry's {}: {error}", manifest.digest))?;
        distinct.push((manifest, config));
    }
    let configs = distinct.iter().map(|(manifest, config)| async {
        let context =
            |error: &dyn std::fmt::Display| format!("the config of the registry's {}: {error}", manifest.digest);
        let bytes = registry.blob(config).await.map_err(|error| context(&registry_failure(&error)))?;
        let parsed: Value = serde_json::from_slice(&bytes).map_err(|error| context(&error))?;
        Ok::<_, String>((manifest.digest.clone(), config.digest.clone(), parsed))
    });
    let configs = futures_util::future::try_join_all(configs).await?;
    Ok(RegistryImages { registry, tags: tags.to_vec(), manifests, configs })
}

/// A registry call's failure as the comparison's reason to push: a 429 that outlasted the retries
/// is said plainly (the pushes may well pass: Docker Hub counts manifest reads as pulls, not pushes).
fn registry_failure(error: &ApiError) -> String {
    match error.patience_spent() {
        Some(spent) => format!("rate-limited: the registry answered 429 Too Many Requests ({spent})"),
        None => error.to_string(),
    }
}

/// Compares the image `local` (a reference the daemon knows) with what the registry holds (as
/// [`registry_images`] found it), and when one is the same image puts it under the tags that lack
/// it. Never fails: whatever goes wrong is [`Verdict::Changed`] with the reason.
pub async fn keep_if_unchanged(
    daemon: &Daemon,
    local: &str,
    registry_images: Result<RegistryImages, String>,
) -> Verdict {
    let compared = match registry_images {
        Ok(images) => compare(daemon, local, &images).await,
        Err(reason) => Err(reason),
    };
    compared.unwrap_or_else(Verdict::Changed)
}

async fn compare(daemon: &Daemon, local: &str, images: &RegistryImages) -> Result<Verdict, String> {
    if images.configs.is_empty() {
        return Ok(Verdict::Changed("no tag is in the registry yet".to_string()));
    }
    let (inspect_path, history_path) = (format!("/images/{local}/json"), format!("/images/{local}/history"));
    let (inspect, history) =
        futures_util::future::try_join(get_json(daemon, &inspect_path), get_json(daemon, &history_path))
            .await
            .map_err(|error| error.to_string())?;
    let local_id = inspect["Id"].as_str().unwrap_or_default();

    // The manifests the tags point at, in the order of the tags: the first that is the same image.
    let mut first_difference = None;
    let mut chosen = None;
    for (digest, config_digest, config) in &images.configs {
        let difference = if config_digest == local_id { None } else { differences(&inspect, &history, config) };
        match difference {
            None => {
                let created = config["created"].as_str().unwrap_or("an unknown time").to_string();
                chosen = Some((digest, config_digest, created));
                break;
            }
            Some(difference) => {
                first_difference.get_or_insert(format!("{difference} differs from the registry's {digest}"));
            }
        }
    }
    let Some((digest, config_digest, created)) = chosen else {
        return Ok(Verdict::Changed(first_difference.unwrap_or_default()));
    };
    let manifest = images
        .manifests
        .iter()
        .flatten()
        .find(|manifest| &manifest.digest == digest)
        .ok_or_else(|| format!("the registry's {digest} went missing"))?;
    let (mut already, mut missing) = (Vec::new(), Vec::new());
    for (tag, each) in images.tags.iter().zip(&images.manifests) {
        if each.as_ref().is_some_and(|each| &each.digest == digest) {
            already.push(tag.clone());
        } else {
            missing.push(tag.clone());
        }
    }
    if !missing.is_empty() {
        let registry = &images.registry;
        registry.authorize(Access::Push).await.map_err(|error| registry_failure(&error))?;
        let puts =
            missing.iter().map(|tag| registry.put_manifest(tag, &manifest.bytes, &manifest.media_type, "a tag's push"));
        for (result, tag) in futures_util::future::join_all(puts).await.into_iter().zip(&missing) {
            result.map_err(|error| {
                format!("putting the registry's {digest} under {tag}: {}", registry_failure(&error))
            })?;
        }
    }
    Ok(Verdict::Unchanged(Kept {
        digest: digest.clone(),
        config_digest: config_digest.clone(),
        created,
        already,
        tagged: missing,
    }))
}

/// `GET` of a Docker API path, its JSON body.
async fn get_json(daemon: &Daemon, path: &str) -> Result<Value, Error> {
    let body = daemon.call(http::Method::GET, &daemon.api_path(path), path).await?;
    serde_json::from_slice(&body).map_err(|error| Error::Daemon {
        target: daemon.target.clone(),
        detail: format!("answered {path} with JSON the agent cannot read: {error}"),
    })
}

/// The image config's top-level fields that the daemon's inspect and history can be compared
/// with (and BuildKit's cache record, left out on purpose). A field outside this list cannot be
/// compared: the image counts as changed.
const COMPARABLE_FIELDS: &[&str] = &[
    "architecture",
    "os",
    "variant",
    "os.version",
    "os.features",
    "created",
    "author",
    "comment",
    "config",
    "container",
    "container_config",
    "docker_version",
    "history",
    "rootfs",
    INLINE_CACHE_FIELD,
];

/// The first way the daemon's image (its inspect, `GET /images/{id}/json`, and history, `GET
/// /images/{id}/history`) differs from a registry's image config, or `None` when they are the
/// same image: the same layers (rootfs diff_ids), run config, container config, platform,
/// `created`, author, comment and history. BuildKit's inline cache record is not compared.
pub fn differences(inspect: &Value, history: &Value, config: &Value) -> Option<String> {
    let Some(fields) = config.as_object() else { return Some("the registry's config is not an object".to_string()) };
    if let Some(field) = fields.keys().find(|field| !COMPARABLE_FIELDS.contains(&field.as_str())) {
        return Some(format!("the registry's config has {field:?}, which the daemon does not show"));
    }
    if !is_empty(&config["os.features"]) {
        return Some("the registry's config has os.features, which the daemon does not show".to_string());
    }
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let pairs = [
        ("os", "Os"),
        ("architecture", "Architecture"),
        ("variant", "Variant"),
        ("os.version", "OsVersion"),
        ("created", "Created"),
        ("author", "Author"),
        ("docker_version", "DockerVersion"),
        ("container", "Container"),
    ];
    for (field, shown) in pairs {
        if text(&config[field]) != text(&inspect[shown]) {
            return Some(format!("{field} ({:?} here, {:?} there)", text(&inspect[shown]), text(&config[field])));
        }
    }
    // The daemon shows the last history entry's comment when the image has none of its own.
    let history_entries = config["history"].as_array().map(Vec::as_slice).unwrap_or_default();
    let comment = match text(&config["comment"]) {
        comment if comment.is_empty() => {
            history_entries.last().map(|entry| text(&entry["comment"])).unwrap_or_default()
        }
        comment => comment,
    };
    if comment != text(&inspect["Comment"]) {
        return Some("comment".to_string());
    }
    for (field, shown) in [("config", "Config"), ("container_config", "ContainerConfig")] {
        if meaningful(&config[field]) != meaningful(&inspect[shown]) {
            return Some(format!("the image's {field}"));
        }
    }
    if text(&config["rootfs"]["type"]) != text(&inspect["RootFS"]["Type"])
        || config["rootfs"]["diff_ids"] != inspect["RootFS"]["Layers"]
    {
        return Some("the layers".to_string());
    }
    history_differences(history_entries, history)
}

/// The registry's history (oldest first, RFC 3339 times) against the daemon's (newest first, whole
/// seconds, no author).
fn history_differences(entries: &[Value], shown: &Value) -> Option<String> {
    let Some(shown) = shown.as_array() else { return Some("the daemon's history is not a list".to_string()) };
    if entries.len() != shown.len() {
        return Some(format!("the history ({} entries here, {} there)", shown.len(), entries.len()));
    }
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    for (at, (entry, shown)) in entries.iter().zip(shown.iter().rev()).enumerate() {
        if !is_empty(&entry["author"]) {
            return Some(format!("history entry {}: its author, which the daemon does not show", at + 1));
        }
        let seconds = match entry["created"].as_str() {
            Some(created) => match time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            {
                Ok(created) => created.unix_timestamp(),
                Err(_) => return Some(format!("history entry {}: an unreadable time {created:?}", at + 1)),
            },
            // Go's zero time, as the daemon shows a history entry without one.
            None => -62_135_596_800,
        };
        let same = text(&entry["created_by"]) == text(&shown["CreatedBy"])
            && text(&entry["comment"]) == text(&shown["Comment"])
            && shown["Created"].as_i64() == Some(seconds);
        if !same {
            return Some(format!("history entry {} ({})", at + 1, text(&entry["created_by"])));
        }
    }
    None
}

/// An object without its empty fields (null, `""`, `false`, `[]`, `{}`): the registry's config holds
/// what BuildKit wrote, the daemon shows every field of its own struct, empty or not. Only the
/// top level: inside a field, an empty value means something (`ExposedPorts: {"80/tcp": {}}`).
fn meaningful(value: &Value) -> serde_json::Map<String, Value> {
    match value.as_object() {
        Some(fields) => {
            fields.iter().filter(|(_, value)| !is_empty(value)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        None => serde_json::Map::new(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(flag) => !flag,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The registry's config and the daemon's view of the same image, as seen on Docker 20.10.
    fn same_image() -> (Value, Value, Value) {
        let config = json!({
            "architecture": "amd64",
            "config": {
                "Env": ["PATH=/usr/bin:/bin"],
                "Cmd": ["/bin/sh", "-c", "cat /app/build-info.txt"],
                "WorkingDir": "/",
                "ArgsEscaped": true,
                "OnBuild": null,
                "ExposedPorts": {"80/tcp": {}}
            },
            "created": "2026-11-24T20:52:57.841944957Z",
            "history": [
                {"created": "2026-11-24T15:26:00.262570918Z", "created_by": "COPY busybox /bin/busybox # buildkit", "comment": "buildkit.dockerfile.v0"},
                {"created": "2026-11-24T20:52:57.841944957Z", "created_by": "CMD [\"/bin/sh\"]", "comment": "buildkit.dockerfile.v0", "empty_layer": true}
            ],
            "moby.buildkit.cache.v0": "eyJsYXllcnMiOltdfQ==",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:0d87"]}
        });
        let inspect = json!({
            "Id": "sha256:e83c",
            "Comment": "buildkit.dockerfile.v0",
            "Created": "2026-11-24T20:52:57.841944957Z",
            "Container": "",
            "ContainerConfig": {"Hostname": "", "Env": null, "Cmd": null, "Labels": null},
            "DockerVersion": "",
            "Author": "",
            "Config": {
                "Hostname": "",
                "User": "",
                "AttachStdin": false,
                "Env": ["PATH=/usr/bin:/bin"],
                "Cmd": ["/bin/sh", "-c", "cat /app/build-info.txt"],
                "ArgsEscaped": true,
                "Volumes": null,
                "WorkingDir": "/",
                "ExposedPorts": {"80/tcp": {}},
                "Labels": null
            },
            "Architecture": "amd64",
            "Os": "linux",
            "RootFS": {"Type": "layers", "Layers": ["sha256:0d87"]}
        });
        let history = json!([
            {"Comment": "buildkit.dockerfile.v0", "Created": 1795553577, "CreatedBy": "CMD [\"/bin/sh\"]", "Id": "sha256:e83c", "Size": 0},
            {"Comment": "buildkit.dockerfile.v0", "Created": 1795533960, "CreatedBy": "COPY busybox /bin/busybox # buildkit", "Id": "<missing>", "Size": 1982256}
        ]);
        (inspect, history, config)
    }

    #[test]
    fn the_same_image_with_another_inline_cache_record_is_unchanged() {
        let (inspect, history, mut config) = same_image();
        assert_eq!(differences(&inspect, &history, &config), None);
        config[INLINE_CACHE_FIELD] = json!("c29tZXRoaW5nIGVsc2U=");
        assert_eq!(differences(&inspect, &history, &config), None);
    }

    #[test]
    fn any_compared_field_that_differs_is_a_change() {
        /// A change to the daemon's inspect, its history or the registry's config.
        type Change = fn(&mut Value, &mut Value, &mut Value);
        let changes: [(&str, Change); 9] = [
            ("label", |_, _, config| config["config"]["Labels"] = json!({"a": "b"})),
            ("env", |inspect, _, _| inspect["Config"]["Env"] = json!(["PATH=/bin", "X=1"])),
            ("port", |_, _, config| config["config"]["ExposedPorts"] = json!({"81/tcp": {}})),
            ("layer", |inspect, _, _| inspect["RootFS"]["Layers"] = json!(["sha256:0d87", "sha256:ffff"])),
            ("created", |_, _, config| config["created"] = json!("2026-11-24T20:52:58Z")),
            ("arch", |inspect, _, _| inspect["Architecture"] = json!("arm64")),
            ("history", |_, history, _| history[1]["CreatedBy"] = json!("COPY other /bin/busybox")),
            ("history time", |_, history, _| history[1]["Created"] = json!(1795533961)),
            ("unknown field", |_, _, config| config["moby.buildkit.buildinfo.v1"] = json!("e30=")),
        ];
        for (name, change) in changes {
            let (mut inspect, mut history, mut config) = same_image();
            change(&mut inspect, &mut history, &mut config);
            assert!(differences(&inspect, &history, &config).is_some(), "{name}");
        }
    }

    #[test]
    fn a_history_entry_with_an_author_cannot_be_compared() {
        let (inspect, history, mut config) = same_image();
        config["history"][0]["author"] = json!("someone");
        assert!(differences(&inspect, &history, &config).unwrap().contains("author"));
    }

    #[test]
    fn kept_tags_say_how_they_were_kept() {
        let kept = Kept {
            digest: "sha256:98d0".to_string(),
            config_digest: "sha256:e83c".to_string(),
            created: "2026-11-24T20:52:57Z".to_string(),
            already: vec!["latest".to_string()],
            tagged: vec!["0123456".to_string()],
        };
        assert!(kept.holds("latest") && kept.holds("0123456") && !kept.holds("other"));
        assert_eq!(kept.line("latest"), "unchanged since 2026-11-24T20:52:57Z: kept sha256:98d0");
        assert_eq!(
            kept.line("0123456"),
            "unchanged since 2026-11-24T20:52:57Z: kept sha256:98d0 (tagged in the registry)"
        );
    }
}
