//! The image: the build context, the build on the daemon with its progress in the log and why its
//! cache missed ([`cache_miss`]), the tags, and the pushes with each registry's credentials.

pub mod cache_miss;
pub mod context;
pub mod definitions;
pub mod metadata;
mod progress;
pub mod spec;

pub use progress::{BuildSummary, StepRecord};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::models::{BuildInfo, BuildInfoAux};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use crate::docker::daemon::{Daemon, Facts};
use crate::error::Error;
use crate::output::human_bytes;
use crate::registry::{Credential, rate_limit};
use progress::Progress;
use spec::{BuildSpec, Builder};

/// Attempts of a push before its failure is final.
const PUSH_ATTEMPTS: u32 = 3;

/// What to build, as the plan says.
pub struct BuildRequest<'a> {
    pub context: context::Context,
    pub reference: &'a str,
    /// The build's arguments, target, labels, platform, pull and cache flags.
    pub build: &'a BuildSpec,
    /// Images to use as cache sources (the pulled `latest` on a cold host).
    pub cache_from: Vec<String>,
    /// The secrets and ssh agents the session serves to `RUN --mount` (BuildKit only).
    pub mounts: crate::session::SessionMounts,
    /// The BuildKit session's shared key for the context.
    pub shared_key: crate::session::context_key::SharedKey,
}

/// The longest message of the build's stream (one line of JSON) the agent takes: BuildKit's status
/// messages carry a batch of vertices and log chunks, far below this; a host that sends an endless
/// line gets a clear error instead of the agent's memory.
const MAX_BUILD_MESSAGE: usize = 16 * 1024 * 1024;

/// The build step on one host: the cache image pulled if the host lacks it (given up after
/// `cache_wait`), the context scanned, the engine chosen from the host's facts, the image built.
pub async fn build_on(
    daemon: &Daemon,
    facts: Option<&Facts>,
    request: BuildJob<'_>,
    credentials: &[Credential],
) -> Result<metadata::Built, Error> {
    let BuildJob { build, reference, cache_image, registry, mounts, cache_wait } = request;
    let mut cache_from = Vec::new();
    if let Some(cache_image) = cache_image {
        let pull = pull_for_cache(daemon, cache_image, registry, credentials);
        if let Ok(true) = tokio::time::timeout(cache_wait, pull).await {
            cache_from.push(cache_image.to_string());
        }
    }
    let scan_started = Instant::now();
    let context = context::Context::scan_off_runtime(&build.context, &build.dockerfile).await?;
    let scan_time = scan_started.elapsed();
    let (context_files, context_bytes) = (context.files as u64, context.bytes);
    let request =
        BuildRequest { context, reference, build, cache_from, mounts, shared_key: build.shared_key(reference) };
    let engine = Engine::on(build.builder.value, facts);
    let summary = match self::build(daemon, request, engine, credentials).await {
        Ok(summary) => summary,
        Err(error) => return Err(crate::docker::cause::named(daemon, "the build", error).await),
    };
    // The context's part of the build: the walk here, and with BuildKit its transfer (the classic
    // builder's upload goes on beside its build: it cannot be told apart).
    let context_time = scan_time + summary.context.as_ref().map_or(Duration::ZERO, |sent| sent.sync_time);
    Ok(metadata::Built { engine, summary, context_files, context_bytes, cache: None, context_time })
}

/// What the build step hands to [`build_on`].
pub struct BuildJob<'a> {
    pub build: &'a BuildSpec,
    pub reference: &'a str,
    /// The image to pull as cache when the host lacks it.
    pub cache_image: Option<&'a str>,
    /// The registry of the cache image, for its credentials.
    pub registry: &'a str,
    pub mounts: crate::session::SessionMounts,
    /// How long the cache pull may take before the build goes on without it.
    pub cache_wait: Duration,
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
            let error = error.to_string();
            if crate::docker::cause::says_rate_limited(&error) {
                let by = crate::docker::cause::limiting_registry(&error, None)
                    .unwrap_or_else(|| crate::docker::cause::registry_name(registry));
                tracing::warn!(
                    "no {reference} to use as cache: rate-limited, {by} answered 429 Too Many Requests ({}); the \
                     build goes on without it",
                    first_line(&error)
                );
            } else {
                tracing::info!("no {reference} to use as cache ({})", first_line(&error));
            }
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
    /// The builder `builder` asks for on `host`: `auto` is BuildKit where the daemon offers it.
    pub fn on(builder: Builder, facts: Option<&Facts>) -> Engine {
        match builder {
            Builder::Buildkit => Engine::BuildKit,
            Builder::Classic => Engine::Classic,
            Builder::Auto if facts.is_some_and(Facts::offers_buildkit) => Engine::BuildKit,
            Builder::Auto => Engine::Classic,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Engine::BuildKit => "BuildKit",
            Engine::Classic => "classic builder",
        }
    }
}

/// Builds the image with `engine`, logging each step with its duration and whether it was
/// CACHED. The classic builder gets the context as a tar; BuildKit syncs it through the agent's
/// own session (FileSync), so that only what changed since the last build crosses the wire.
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
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&request.context.dockerfile)
        .t(request.reference)
        .rm(true)
        .forcerm(true)
        .nocache(request.build.no_cache)
        .buildargs(&build_args)
        .labels(&labels);
    if request.build.pull {
        options = options.pull("1");
    }
    if let Some(target) = &request.build.target {
        options = options.target(target);
    }
    if let Some(platform) = &request.build.platform {
        options = options.platform(&platform.to_string());
    }
    if !request.cache_from.is_empty() {
        options = options.cachefrom(&request.cache_from);
    }
    if engine == Engine::BuildKit {
        return build_with_session(daemon, request, options, credentials).await;
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
    let body =
        http_body_util::StreamBody::new(request.context.stream().map(|chunk| chunk.map(hyper::body::Frame::data)));
    // Credentials for private base images: the classic builder takes them with the request
    // (X-Registry-Config, keyed by server address, base64url of JSON as the docker CLI sends them).
    let config = registry_config(credentials);
    let config = match config.is_empty() {
        true => None,
        false => Some(
            serde_json::to_string(&config)
                .map(|json| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, json))
                .map_err(|error| Error::Internal(format!("failed to encode the registry logins: {error}")))?,
        ),
    };
    // Read as the session build's stream is, with its bounds (not bollard's decoder, which keeps
    // a line that never ends).
    let built = run_build(daemon, &options.build(), body, config.as_deref(), request.build.progress.value).await;
    built.map_err(|error| context::send_failure(&sent).unwrap_or(error))
}

/// The BuildKit build: the agent's session serves the context and the Dockerfile's directory
/// (FileSync) and the registry logins (Auth); the build request names the session
/// (`remote=client-session`) and carries no body.
async fn build_with_session(
    daemon: &Daemon,
    request: BuildRequest<'_>,
    options: BuildImageOptionsBuilder,
    credentials: &[Credential],
) -> Result<BuildSummary, Error> {
    use crate::session::{SessionBuilder, auth::Logins, filesync};
    let context_dir = &request.build.context;
    let dockerfile = &request.build.dockerfile;
    let dockerfile_name = dockerfile.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let excludes = context::read_dockerignore(context_dir)?;
    let git = if request.build.stable_mtimes { stable_mtimes(context_dir) } else { None };
    let dirs = filesync::build_dirs(context_dir, dockerfile, excludes, git);
    let syncer = filesync::FileSyncer::new(dirs);
    let counters = syncer.counters();
    let (files, files_methods) = syncer.service();
    let (auth, auth_methods) = Logins::new(credentials).service();
    let name = context_dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    tracing::info!(
        "sending the build context: {} file{}, {} (BuildKit), by FileSync: only what changed crosses the wire",
        request.context.files,
        if request.context.files == 1 { "" } else { "s" },
        human_bytes(request.context.bytes),
    );
    tracing::info!("context key from {}", request.shared_key.source);
    // The build's secrets and ssh agents are always served (empty without --secret/--ssh), so that
    // a `required` mount nobody gives fails with BuildKit's own "not found" naming its id.
    let mounts = request.mounts;
    if !mounts.secrets.is_empty() || !mounts.ssh.is_empty() {
        let ids: Vec<&str> = mounts.secrets.ids().collect();
        let agents: Vec<&str> = mounts.ssh.iter().map(|(id, _)| id.as_str()).collect();
        tracing::debug!(
            "the session serves the secrets [{}] and the ssh agents [{}]",
            ids.join(", "),
            agents.join(", ")
        );
    }
    let agents = crate::session::ssh_forward::SshAgents::start(&mounts.ssh, mounts.ssh_sign_anything)
        .await
        .map_err(|error| Error::Internal(error.to_string()))?;
    let (secrets, secrets_methods) = mounts.secrets.service();
    let (ssh, ssh_methods) = agents.service();
    let session = SessionBuilder::new(&name, &request.shared_key.key)
        .serve(files, files_methods)
        .serve(auth, auth_methods)
        .serve(secrets, secrets_methods)
        .serve(ssh, ssh_methods)
        .start(daemon)
        .await?;
    let options = options
        .dockerfile(&dockerfile_name)
        .remote("client-session")
        .session(&session.id)
        .version(BuilderVersion::BuilderBuildKit)
        .build();
    let empty = http_body_util::Empty::<bytes::Bytes>::new();
    let result = run_build(daemon, &options, empty, None, request.build.progress.value).await;
    session.close().await;
    let mut summary = result?;
    let sent = ContextSent {
        files: counters.files(),
        bytes: counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
        files_walked: request.context.files as u64,
        bytes_walked: request.context.bytes,
        paths: counters.paths(),
        synced: counters.synced_paths(),
        every_file: counters.every_file_asked(),
        sync_time: counters.sync_time(),
    };
    tracing::info!(
        context.sent_files = sent.files,
        context.sent_bytes = sent.bytes,
        context.files = sent.files_walked,
        context.bytes = sent.bytes_walked,
        "{}",
        sent.describe()
    );
    if sent.paths.len() > cache_miss::NAMED_IN_A_LINE {
        tracing::debug!("context: every file sent: {}", sent.paths.join(", "));
    }
    summary.context = Some(sent);
    Ok(summary)
}

/// Git's index for `--stable-mtimes`, and the context's path in the checkout.
fn stable_mtimes(
    context_dir: &std::path::Path,
) -> Option<(std::sync::Arc<crate::session::git_times::GitIndex>, String)> {
    let Some(index) = crate::session::git_times::GitIndex::find(context_dir) else {
        tracing::warn!("--stable-mtimes: the context is not in a git checkout; mtimes are sent as they are");
        return None;
    };
    let context = std::fs::canonicalize(context_dir).ok()?;
    let relative = context.strip_prefix(&index.root).ok()?;
    let in_checkout = relative
        .components()
        .map(|component| component.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Some((std::sync::Arc::new(index), in_checkout))
}

/// `POST /build` with `body` (the context's tar for the classic builder; nothing for a session
/// build) and the registry logins, its JSON stream read into the progress, one bounded line at a time.
async fn run_build<B>(
    daemon: &Daemon,
    options: &bollard::query_parameters::BuildImageOptions,
    body: B,
    registry_config: Option<&str>,
    mode: spec::ProgressMode,
) -> Result<BuildSummary, Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let query = serde_urlencoded::to_string(options)
        .map_err(|error| Error::Internal(format!("failed to encode the build's parameters: {error}")))?;
    let mut request = http::Request::post(format!("{}?{query}", daemon.api_path("/build")))
        .header(http::header::HOST, "docker")
        .header(http::header::CONTENT_TYPE, "application/x-tar");
    if let Some(config) = registry_config {
        request = request.header("X-Registry-Config", config);
    }
    let request =
        request.body(body).map_err(|error| Error::Internal(format!("failed to build the /build request: {error}")))?;
    let response = daemon.raw_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = daemon.read_body(body, crate::docker::daemon::MAX_ERROR_ANSWER, "the build's refusal").await?;
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value.get("message").and_then(|message| message.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
        return Err(Error::Daemon { target: daemon.target.clone(), detail: format!("answered {status}: {message}") });
    }
    let mut progress = Progress::new(mode);
    let mut pending: Vec<u8> = Vec::new();
    // How much of `pending` holds no newline: each frame is scanned once, not the whole line again.
    let mut scanned = 0;
    loop {
        let frame = match http_body_util::BodyExt::frame(&mut body).await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Err(daemon.broke_off("the build", &error)),
        };
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        loop {
            let Some(newline) = pending[scanned..].iter().position(|byte| *byte == b'\n').map(|at| scanned + at) else {
                scanned = pending.len();
                if pending.len() > MAX_BUILD_MESSAGE {
                    return Err(Error::Daemon {
                        target: daemon.target.clone(),
                        detail: format!(
                            "sent a build message longer than {} without its end: the agent reads at most that much of one",
                            crate::output::human_bytes(MAX_BUILD_MESSAGE as u64)
                        ),
                    });
                }
                break;
            };
            scanned = 0;
            let line: Vec<u8> = pending.drain(..=newline).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let info: BuildInfo = serde_json::from_slice(&line).map_err(|error| Error::Daemon {
                target: daemon.target.clone(),
                detail: format!("sent a build message the agent cannot read: {error}"),
            })?;
            if let Some(failure) = progress.info(info) {
                return Err(failure);
            }
        }
    }
    Ok(progress.finish())
}

impl Progress {
    /// One message of the build's stream; the error if it reports the build's failure.
    fn info(&mut self, info: BuildInfo) -> Option<Error> {
        if let Some(detail) = info.error_detail.and_then(|detail| detail.message) {
            return Some(self.failure(detail));
        }
        match info.aux {
            Some(BuildInfoAux::BuildKit(status)) => self.status(status),
            Some(BuildInfoAux::Default(image)) => self.image_id(image.id.unwrap_or_default()),
            None => {}
        }
        if let Some(text) = info.stream {
            self.text(&text);
        }
        None
    }
}

/// How much of the context crossed the wire in a session build, and which files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContextSent {
    /// Files and bytes sent as FileSync DATA (what BuildKit did not have).
    pub files: u64,
    pub bytes: u64,
    /// Files and bytes of the context after .dockerignore.
    pub files_walked: u64,
    pub bytes_walked: u64,
    /// The files sent, relative to the context, in the order BuildKit asked for them: those whose
    /// size, mode or mtime differed from the host's copy.
    pub paths: Vec<String>,
    /// Of those, the ones the build's own sync asked for (not only the frontend, by name).
    pub synced: Vec<String>,
    /// Whether the build's sync asked for every file it listed (the host had no copy of them, or
    /// every one changed).
    pub every_file: bool,
    /// How long the build's sync took, from BuildKit's call to its end.
    pub sync_time: Duration,
}

impl ContextSent {
    /// The files only the frontend asked for (`.dockerignore`, read before the build).
    fn frontend_only(&self) -> Vec<String> {
        let synced: std::collections::HashSet<&String> = self.synced.iter().collect();
        self.paths.iter().filter(|path| !synced.contains(path)).cloned().collect()
    }

    /// `context: sent 2 of 301 files (src/app.rb, Gemfile.lock), 1.0 MB of 301.0 MB`.
    pub fn describe(&self) -> String {
        format!(
            "context: sent {} of {} file{}{}, {} of {}",
            self.files,
            self.files_walked,
            if self.files_walked == 1 { "" } else { "s" },
            cache_miss::named_paths(&self.synced, &self.frontend_only()),
            human_bytes(self.bytes),
            human_bytes(self.bytes_walked)
        )
    }
}

/// The build argument that makes BuildKit record its cache in the image.
const INLINE_CACHE: &str = "BUILDKIT_INLINE_CACHE";

/// Tags `source` as `target`.
pub async fn tag(daemon: &Daemon, source: &str, target: &str) -> Result<(), Error> {
    let (repository, tag) = split_reference(target);
    let options = TagImageOptionsBuilder::default().repo(repository).tag(tag).build();
    daemon.docker.tag_image(source, Some(options)).await.map_err(|error| daemon.explain(error))
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest, as the registry has it (`None` if the daemon reported none).
    pub digest: Option<String>,
    /// Layers uploaded.
    pub layers_pushed: usize,
    /// Layers the registry already had.
    pub layers_existing: usize,
}

impl std::fmt::Display for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} layer{} pushed, {} already there)",
            self.digest.as_deref().unwrap_or("no digest reported"),
            self.layers_pushed,
            if self.layers_pushed == 1 { "" } else { "s" },
            self.layers_existing
        )
    }
}

/// Pushes one tag with the registry's credentials, retrying transient failures with backoff, and
/// a registry's 429 as long as [`rate_limit::PATIENCE`] allows (the daemon's errors are text: no
/// Retry-After reaches the agent, so the waits are the backoff's).
pub async fn push(
    daemon: &Daemon,
    reference: &str,
    registry: &str,
    credentials: &[Credential],
) -> Result<Pushed, Error> {
    let mut delay = Duration::from_secs(1);
    let mut attempt = 0;
    let mut rate_limit = rate_limit::Backoff::default();
    loop {
        attempt += 1;
        let failed = |error| crate::docker::cause::named(daemon, "the push", error);
        match push_once(daemon, reference, registry, credentials).await {
            Ok(summary) => return Ok(summary),
            Err(PushFailure::Final(error)) => return Err(failed(error).await),
            Err(PushFailure::Transient(error)) if attempt >= PUSH_ATTEMPTS => return Err(failed(error).await),
            Err(PushFailure::Transient(error)) => {
                tracing::warn!("push {reference} failed ({error}); retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(PushFailure::RateLimited(error)) => match rate_limit.next_wait(None) {
                Some(wait) => {
                    tracing::warn!(
                        "push {reference}: rate-limited, the registry answered 429 Too Many Requests; retrying in {}s",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                }
                None => return Err(failed(error).await),
            },
        }
    }
}

enum PushFailure {
    Transient(Error),
    /// A registry's 429 Too Many Requests: retried as long as the rate limit's patience allows.
    RateLimited(Error),
    Final(Error),
}

async fn push_once(
    daemon: &Daemon,
    reference: &str,
    registry: &str,
    credentials: &[Credential],
) -> Result<Pushed, PushFailure> {
    let (repository, tag) = split_reference(reference);
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = daemon.docker.push_image(repository, Some(options), credentials_for(credentials, registry));
    // An error the daemon reports in the push's stream, classed for the retry loop.
    let failure = |message: String| {
        let message = crate::output::escape_controls(&message).into_owned();
        let (rate_limited, transient) = (crate::docker::cause::says_rate_limited(&message), is_transient(&message));
        let error = Error::Push { reference: reference.to_string(), registry: registry.to_string(), message };
        match (rate_limited, transient) {
            (true, _) => PushFailure::RateLimited(error),
            (false, true) => PushFailure::Transient(error),
            (false, false) => PushFailure::Final(error),
        }
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
            Some(status) if layer_was_there(status) => existed += 1,
            Some(status) if status.contains("digest: ") => {
                digest =
                    status.split("digest: ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string);
            }
            _ => {}
        }
    }
    Ok(Pushed { digest, layers_pushed: pushed, layers_existing: existed })
}

/// Whether a layer's push status says the registry had it already: as it is, or mounted from
/// another repository of the registry (`Mounted from 127.0.0.1:5000/other`, the repository named).
fn layer_was_there(status: &str) -> bool {
    status == "Layer already exists" || status.starts_with("Mounted from ")
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

    /// Regression: a layer mounted from another repository was counted as neither pushed nor there
    /// (the daemon names the repository after "Mounted from"), so a push read "0 layers pushed, 0
    /// already there".
    #[test]
    fn a_layer_mounted_from_another_repository_counts_as_already_there() {
        assert!(layer_was_there("Mounted from 127.0.0.1:49153/hand/c"));
        assert!(layer_was_there("Layer already exists"));
        assert!(!layer_was_there("Pushed"));
        assert!(!layer_was_there("Mounted"));
    }
}
