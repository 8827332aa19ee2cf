//! The image: the build context, the build on the daemon with its progress in the log, the tags,
//! and the pushes with each registry's credentials.

pub mod context;
pub mod dockerignore;
mod progress;

pub use progress::BuildSummary;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use crate::config::Build;
use crate::daemon::Daemon;
use crate::error::Error;
use crate::registry::Credential;
use progress::Progress;

/// Attempts of a push before its failure is final.
const PUSH_ATTEMPTS: u32 = 3;

/// What to build, as the plan says.
pub struct BuildRequest<'a> {
    pub context: context::Context,
    pub reference: &'a str,
    /// The build's arguments, target, labels, platform, pull and cache flags.
    pub build: &'a Build,
    /// Images to use as cache sources (the pulled `latest` on a cold host).
    pub cache_from: Vec<String>,
}

fn credentials_for(credentials: &[Credential], registry: &str) -> Option<DockerCredentials> {
    credentials.iter().find(|credential| credential.registry == registry).map(|credential| DockerCredentials {
        username: Some(credential.user.clone()),
        password: Some(credential.password.expose().to_string()),
        serveraddress: Some(credential.server_address()),
        ..Default::default()
    })
}

/// Every login, as the build's X-Registry-Config (for private base images).
fn registry_config(credentials: &[Credential]) -> HashMap<String, DockerCredentials> {
    credentials
        .iter()
        .filter_map(|credential| {
            credentials_for(std::slice::from_ref(credential), &credential.registry)
                .map(|docker| (credential.server_address(), docker))
        })
        .collect()
}

/// Pulls `reference` if the daemon does not have it, so that a new or wiped host can use the
/// pushed image's layers as cache (`docker pull REPO:latest || true`). Returns whether the image
/// is there now and was pulled.
pub async fn pull_for_cache(daemon: &Daemon, reference: &str, registry: &str, credentials: &[Credential]) -> bool {
    if daemon.docker.inspect_image(reference).await.is_ok() {
        return false;
    }
    let (repository, tag) = split_reference(reference);
    let options = CreateImageOptionsBuilder::default().from_image(repository).tag(tag).build();
    let mut stream = daemon.docker.create_image(Some(options), None, credentials_for(credentials, registry));
    let started = Instant::now();
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            tracing::info!("no {reference} to use as cache ({})", first_line(&error.to_string()));
            return false;
        }
    }
    tracing::info!("pulled {reference} as cache for a cold host in {:.2}s", started.elapsed().as_secs_f64());
    true
}

/// `repo:tag` into its parts (a port's colon is not a tag's).
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (reference, "latest"),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The daemon's builder for one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    BuildKit,
    Classic,
}

impl Engine {
    fn describe(self) -> &'static str {
        match self {
            Engine::BuildKit => "BuildKit",
            Engine::Classic => "classic builder",
        }
    }
}

/// Builds the image with `engine`, logging each step with its duration and whether it was
/// CACHED.
pub async fn build(
    daemon: &Daemon,
    request: BuildRequest<'_>,
    engine: Engine,
    credentials: &[Credential],
) -> Result<BuildSummary, Error> {
    let mut build_args: HashMap<String, String> = HashMap::new();
    for arg in &request.build.build_args {
        if let Some(value) = &arg.value {
            build_args.insert(arg.key.clone(), value.clone());
        }
    }
    if engine == Engine::BuildKit {
        // BuildKit uses a pulled image as cache only if the image records its cache: every image
        // the agent pushes does, so that a new or wiped host can start from the last push.
        build_args.entry(INLINE_CACHE.to_string()).or_insert_with(|| "1".to_string());
    }
    let labels: HashMap<String, String> = request.build.labels.iter().cloned().collect();
    let session = session_id();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&request.context.dockerfile)
        .t(request.reference)
        .rm(true)
        .forcerm(true)
        .nocache(request.build.no_cache)
        .buildargs(&build_args)
        .labels(&labels);
    if engine == Engine::BuildKit {
        options = options.version(BuilderVersion::BuilderBuildKit).session(&session);
    }
    if request.build.pull {
        options = options.pull("1");
    }
    if let Some(target) = &request.build.target {
        options = options.target(target);
    }
    if let Some(platform) = &request.build.platform {
        options = options.platform(platform);
    }
    if !request.cache_from.is_empty() {
        options = options.cachefrom(&request.cache_from);
    }
    tracing::info!(
        "sending the build context: {} file{}, {} ({})",
        request.context.files,
        if request.context.files == 1 { "" } else { "s" },
        human_bytes(request.context.bytes),
        engine.describe()
    );
    // A file that changed or failed while it was sent explains the failure better than the
    // daemon's view of a truncated upload does.
    let sent = request.context.failure_slot();
    let context = match engine {
        Engine::Classic => request.context,
        Engine::BuildKit => request.context.without_hiding_dockerignore(),
    };
    let body = bollard::body_try_stream(context.stream());
    // Credentials for private base images: the classic builder takes them with the request
    // (X-Registry-Config, keyed by server address), BuildKit asks the session for them by host.
    let config = match engine {
        Engine::Classic => registry_config(credentials),
        Engine::BuildKit => session_credentials(credentials),
    };
    let mut stream = daemon.docker.build_image(options.build(), (!config.is_empty()).then_some(config), Some(body));

    let mut progress = Progress::default();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(context::send_failure(&sent).unwrap_or_else(|| progress.failure(error)));
            }
            Err(other) => return Err(context::send_failure(&sent).unwrap_or_else(|| daemon.explain(other))),
        };
        if let Some(detail) = info.error_detail.and_then(|detail| detail.message) {
            return Err(context::send_failure(&sent).unwrap_or_else(|| progress.failure(detail)));
        }
        if let Some(BuildInfoAux::BuildKit(status)) = info.aux {
            progress.status(status);
        }
        if let Some(text) = info.stream {
            progress.text(&text);
        }
    }
    Ok(progress.finish())
}

/// The build argument that makes BuildKit record its cache in the image.
const INLINE_CACHE: &str = "BUILDKIT_INLINE_CACHE";

/// A new BuildKit session's id: 16 random bytes, as hex.
fn session_id() -> String {
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

/// Every login keyed by the host BuildKit asks its session for (Docker Hub is
/// `registry-1.docker.io` there).
fn session_credentials(credentials: &[Credential]) -> HashMap<String, DockerCredentials> {
    let mut hosts = HashMap::new();
    for credential in credentials {
        let Some(docker) = credentials_for(std::slice::from_ref(credential), &credential.registry) else { continue };
        if credential.registry == crate::image_ref::DOCKER_HUB {
            hosts.insert("registry-1.docker.io".to_string(), docker.clone());
        }
        hosts.insert(credential.registry.clone(), docker);
    }
    hosts
}

/// Tags `source` as `target`.
pub async fn tag(daemon: &Daemon, source: &str, target: &str) -> Result<(), Error> {
    let (repository, tag) = split_reference(target);
    let options = TagImageOptionsBuilder::default().repo(repository).tag(tag).build();
    daemon.docker.tag_image(source, Some(options)).await.map_err(|error| daemon.explain(error))
}

/// Pushes one tag with the registry's credentials, retrying transient failures with backoff.
/// Returns the pushed digest and how many layers were uploaded and how many were already there.
pub async fn push(
    daemon: &Daemon,
    reference: &str,
    registry: &str,
    credentials: &[Credential],
) -> Result<String, Error> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=PUSH_ATTEMPTS {
        match push_once(daemon, reference, registry, credentials).await {
            Ok(summary) => return Ok(summary),
            Err(PushFailure::Final(error)) => return Err(error),
            Err(PushFailure::Transient(error)) if attempt == PUSH_ATTEMPTS => return Err(error),
            Err(PushFailure::Transient(error)) => {
                tracing::warn!("push {reference} failed ({error}); retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

enum PushFailure {
    Transient(Error),
    Final(Error),
}

async fn push_once(
    daemon: &Daemon,
    reference: &str,
    registry: &str,
    credentials: &[Credential],
) -> Result<String, PushFailure> {
    let (repository, tag) = split_reference(reference);
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = daemon.docker.push_image(repository, Some(options), credentials_for(credentials, registry));
    // An error the daemon reports in the push's stream, classed for the retry loop.
    let failure = |message: String| {
        let transient = is_transient(&message);
        let error = Error::Push { reference: reference.to_string(), registry: registry.to_string(), message };
        if transient { PushFailure::Transient(error) } else { PushFailure::Final(error) }
    };
    let (mut pushed, mut existed) = (0usize, 0usize);
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => return Err(failure(error)),
            Err(other) => return Err(PushFailure::Final(daemon.explain(other))),
        };
        if let Some(message) = info.error_detail.and_then(|detail| detail.message) {
            return Err(failure(message));
        }
        match info.status.as_deref() {
            Some("Pushed") => pushed += 1,
            Some("Layer already exists") | Some("Mounted from") => existed += 1,
            Some(status) if status.contains("digest: ") => {
                digest =
                    status.split("digest: ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string);
            }
            _ => {}
        }
    }
    Ok(format!(
        "{} ({pushed} layer{} pushed, {existed} already there)",
        digest.unwrap_or_else(|| "no digest reported".to_string()),
        if pushed == 1 { "" } else { "s" }
    ))
}

/// Whether a push error is worth another attempt: the network or the registry's server side,
/// not authentication or a missing repository. Status codes count only as codes — the number
/// after `status`, `code` or `HTTP`, or before its reason phrase — and words only as whole
/// words, so a digest, a size or a name that merely contains `500` or `eof` is not transient.
fn is_transient(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    let permanent = ["unauthorized", "denied", "authentication required", "not found", "name unknown", "forbidden"];
    if permanent.iter().any(|word| message.contains(word)) {
        return false;
    }
    let phrases = [
        "timeout",
        "timed out",
        "connection reset",
        "connection refused",
        "broken pipe",
        "temporarily",
        "internal server error",
        "bad gateway",
        "service unavailable",
    ];
    if phrases.iter().any(|phrase| message.contains(phrase)) {
        return true;
    }
    let words: Vec<&str> =
        message.split(|c: char| !c.is_ascii_alphanumeric()).filter(|word| !word.is_empty()).collect();
    let server_error = |word: &str| matches!(word, "500" | "502" | "503" | "504");
    words.iter().enumerate().any(|(at, word)| {
        *word == "eof"
            || (server_error(word) && at > 0 && matches!(words[at - 1], "status" | "code" | "http" | "https"))
    })
}

/// `1.2 MB`-style sizes for the log.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_reference("127.0.0.1:5000/app:v1"), ("127.0.0.1:5000/app", "v1"));
        assert_eq!(split_reference("127.0.0.1:5000/app"), ("127.0.0.1:5000/app", "latest"));
        assert_eq!(split_reference("app:latest"), ("app", "latest"));
    }

    #[test]
    fn transient_push_errors_are_told_apart() {
        assert!(is_transient("received unexpected HTTP status: 503 Service Unavailable"));
        assert!(is_transient("read tcp 1.2.3.4: connection reset by peer"));
        assert!(!is_transient("unauthorized: authentication required"));
        assert!(!is_transient("denied: requested access to the resource is denied"));
    }

    #[test]
    fn transient_push_errors_match_status_codes_as_codes_not_substrings() {
        assert!(is_transient("received unexpected HTTP status: 500 Internal Server Error"));
        assert!(is_transient("unexpected status code 502"));
        assert!(is_transient("http 504"));
        assert!(is_transient("unexpected EOF"));
        assert!(is_transient("Patch https://r/v2/app/blobs/uploads/x: EOF"));
        assert!(!is_transient("blob sha256:5003e1f2c500aa exceeds the quota of 500 MB"));
        assert!(!is_transient("manifest invalid: layer 1500 of 2500 is malformed"));
        assert!(!is_transient("tag v500 is immutable"));
        assert!(!is_transient("invalid reference: geofence-app"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(300_000_000), "300.0 MB");
    }
}
