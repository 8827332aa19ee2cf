//! The build's metadata file (`--metadata-file`): the keys buildx writes, so that a pipeline that
//! reads buildx's metadata reads ours, and what the agent knows beyond them (each step, cached or
//! not, with its time; the context's size and how much of it was sent), under `agent.` keys.

use serde_json::{Map, Value, json};

use super::{BuildSummary, Engine};

/// buildx's key for the pushed manifest's digest.
pub const DIGEST: &str = "containerimage.digest";
/// buildx's key for the image id, the digest of the image's config.
pub const CONFIG_DIGEST: &str = "containerimage.config.digest";
/// buildx's key for the image's names, comma-separated.
pub const NAMES: &str = "image.name";

/// A finished build, as the metadata file describes it.
#[derive(Debug, Clone)]
pub struct Built {
    pub engine: Engine,
    pub summary: BuildSummary,
    /// The context after .dockerignore: files and bytes.
    pub context_files: u64,
    pub context_bytes: u64,
    /// Why the cache missed, as the cache line says it (see [`super::cache_miss`]).
    pub cache: Option<super::cache_miss::CacheReport>,
    /// The context's part of the build's time: the agent's walk of it, and with BuildKit its
    /// transfer.
    pub context_time: std::time::Duration,
}

impl Built {
    /// The build's steps and how many were CACHED, as the cache line counts them (without `FROM`).
    pub fn step_counts(&self) -> (usize, usize) {
        self.cache
            .as_ref()
            .map_or((self.summary.steps.len(), self.summary.cached()), |cache| (cache.steps, cache.cached))
    }
}

/// Writes the metadata file (atomically) for the build, with the first push's digest if `pushed`.
pub fn write(
    path: &std::path::Path,
    names: &[String],
    pushed: bool,
    built: &Built,
    digest: Option<&str>,
    placement: &Map<String, Value>,
) -> crate::error::Result<()> {
    let digest = match (pushed, digest) {
        (true, Some(digest)) => Some(digest),
        (true, None) => {
            tracing::warn!("the daemon reported no digest for the push: the metadata has none");
            None
        }
        (false, _) => None,
    };
    let metadata = BuildMetadata {
        names,
        digest,
        engine: built.engine,
        summary: &built.summary,
        context_files: built.context_files,
        context_bytes: built.context_bytes,
        cache: built.cache.as_ref(),
        placement: Some(placement),
    };
    crate::files::write_atomically(path, metadata.to_text().as_bytes(), 0o644, true, "--metadata-file")
}

/// One platform's build in a multi-platform run, as the metadata file describes it.
pub struct PlatformBuilt {
    /// `linux/arm64`.
    pub platform: String,
    /// The daemon it was built on.
    pub host: String,
    /// Its own tags (`TAG-<arch>`).
    pub names: Vec<String>,
    pub built: Built,
    /// Its pushed manifest's digest, which the index names.
    pub digest: Option<String>,
    /// Where it ran: `agent.host`, and `agent.failed_hosts` / `agent.fallback` as a single-platform
    /// run has them (see `placement` in the runner).
    pub placement: Map<String, Value>,
}

/// Writes the metadata file of a multi-platform run (atomically): buildx's keys for the index
/// (`containerimage.digest` is the index's digest; there is no one config, so no
/// `containerimage.config.digest`), and under `agent.platforms` each platform's own keys, as the
/// single-platform file has them, with the host it was built on (and the hosts passed over). The
/// run's `placement` (every host passed over, whether the fallback built any) goes at the top.
pub fn write_platforms(
    path: &std::path::Path,
    names: &[String],
    index_digest: Option<&str>,
    platforms: &[PlatformBuilt],
    placement: &Map<String, Value>,
) -> crate::error::Result<()> {
    let mut object = Map::new();
    if let Some(digest) = index_digest {
        object.insert(DIGEST.to_string(), json!(digest));
    }
    object.insert(NAMES.to_string(), json!(names.join(",")));
    let mut each = Map::new();
    for platform in platforms {
        let metadata = BuildMetadata {
            names: &platform.names,
            digest: platform.digest.as_deref(),
            engine: platform.built.engine,
            summary: &platform.built.summary,
            context_files: platform.built.context_files,
            context_bytes: platform.built.context_bytes,
            cache: platform.built.cache.as_ref(),
            placement: Some(&platform.placement),
        };
        each.insert(platform.platform.clone(), metadata.to_json());
    }
    object.insert("agent.platforms".to_string(), Value::Object(each));
    object.extend(placement.iter().map(|(key, value)| (key.clone(), value.clone())));
    let mut text = serde_json::to_string_pretty(&Value::Object(object)).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    crate::files::write_atomically(path, text.as_bytes(), 0o644, true, "--metadata-file")
}

/// What a successful run built and pushed.
pub struct BuildMetadata<'a> {
    /// Every tag built, `repository:tag`.
    pub names: &'a [String],
    /// The pushed manifest's digest; `None` when nothing was pushed.
    pub digest: Option<&'a str>,
    pub engine: Engine,
    pub summary: &'a BuildSummary,
    /// The context after .dockerignore: files and bytes.
    pub context_files: u64,
    pub context_bytes: u64,
    /// Why the cache missed (`agent.cache`).
    pub cache: Option<&'a super::cache_miss::CacheReport>,
    /// Where the build ran, under `agent.` keys (`agent.host`, `agent.failed_hosts`, `agent.fallback`).
    pub placement: Option<&'a Map<String, Value>>,
}

impl BuildMetadata<'_> {
    /// The JSON object, keys sorted. Without a push `containerimage.digest` is left out: the daemon
    /// has no manifest of an image it has not pushed (buildx, on the docker driver, writes the image
    /// id there instead; that id is `containerimage.config.digest` here).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(digest) = self.digest {
            object.insert(DIGEST.to_string(), json!(digest));
        }
        if let Some(id) = self.summary.image_id.as_deref().filter(|id| !id.is_empty()) {
            object.insert(CONFIG_DIGEST.to_string(), json!(id));
        }
        object.insert(NAMES.to_string(), json!(self.names.join(",")));
        object.insert(
            "agent.builder".to_string(),
            json!(match self.engine {
                Engine::BuildKit => "buildkit",
                Engine::Classic => "classic",
            }),
        );
        let steps: Vec<Value> = self
            .summary
            .steps
            .iter()
            .map(|step| {
                json!({
                    // BuildKit names a step with its build arguments' values expanded.
                    "step": crate::secrets::redact(&step.title),
                    "cached": step.cached,
                    "seconds": (step.seconds * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        object.insert("agent.steps".to_string(), Value::Array(steps));
        object.insert(
            "agent.context".to_string(),
            json!({
                "files": self.context_files,
                "bytes": self.context_bytes,
                // What crossed the wire: the whole context unless the build reports less (a file
                // sync that sends only what changed).
                "sent_bytes": self.summary.context.as_ref().map_or(self.context_bytes, |sent| sent.bytes),
                "sent_files": self.summary.context.as_ref().map_or(self.context_files, |sent| sent.files),
            }),
        );
        if let Some(cache) = self.cache {
            object.insert("agent.cache".to_string(), cache.to_json());
        }
        if let Some(placement) = self.placement {
            object.extend(placement.iter().map(|(key, value)| (key.clone(), value.clone())));
        }
        Value::Object(object)
    }

    /// The file's text: the JSON, pretty-printed, with a final newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_else(|_| "{}".to_string());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::StepRecord;

    fn summary() -> BuildSummary {
        BuildSummary {
            steps: vec![
                StepRecord { title: "step 2/3 COPY busybox /bin/busybox".to_string(), cached: true, seconds: 0.0 },
                StepRecord { title: "step 3/3 RUN make".to_string(), cached: false, seconds: 1.234_567 },
            ],
            image_id: Some("sha256:c0ffee".to_string()),
            context: None,
        }
    }

    #[test]
    fn metadata_has_buildx_keys_and_each_step() {
        let summary = summary();
        let names = ["127.0.0.1:5000/app:latest".to_string(), "127.0.0.1:5000/app:0123456".to_string()];
        let metadata = BuildMetadata {
            names: &names,
            digest: Some("sha256:beef"),
            engine: Engine::BuildKit,
            summary: &summary,
            context_files: 3,
            cache: None,
            placement: None,
            context_bytes: 2048,
        };
        assert_eq!(
            metadata.to_json(),
            json!({
                "containerimage.digest": "sha256:beef",
                "containerimage.config.digest": "sha256:c0ffee",
                "image.name": "127.0.0.1:5000/app:latest,127.0.0.1:5000/app:0123456",
                "agent.builder": "buildkit",
                "agent.steps": [
                    { "step": "step 2/3 COPY busybox /bin/busybox", "cached": true, "seconds": 0.0 },
                    { "step": "step 3/3 RUN make", "cached": false, "seconds": 1.235 },
                ],
                "agent.context": { "files": 3, "bytes": 2048, "sent_bytes": 2048, "sent_files": 3 },
            })
        );
        assert!(metadata.to_text().ends_with("}\n"));
    }

    #[test]
    fn metadata_without_a_push_has_no_digest_key() {
        let sent =
            crate::image::ContextSent { files: 1, bytes: 10, files_walked: 1, bytes_walked: 20, ..Default::default() };
        let summary = BuildSummary { context: Some(sent), ..summary() };
        let names = ["app:latest".to_string()];
        let metadata = BuildMetadata {
            names: &names,
            digest: None,
            engine: Engine::Classic,
            summary: &summary,
            context_files: 1,
            cache: None,
            placement: None,
            context_bytes: 20,
        };
        let json = metadata.to_json();
        assert!(json.get(DIGEST).is_none(), "{json}");
        assert_eq!(json[CONFIG_DIGEST], "sha256:c0ffee");
        assert_eq!(json[NAMES], "app:latest");
        assert_eq!(json["agent.builder"], "classic");
        assert_eq!(json["agent.context"]["sent_bytes"], 10);
    }
}
