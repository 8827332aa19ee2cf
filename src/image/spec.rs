//! What a build needs, typed: the context, the Dockerfile, the arguments, the builder and how much
//! of the build the log shows. The configuration makes one; the image domain reads nothing else.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::registry::reference::Platform;
use crate::secrets::Sourced;
use crate::session::context_key::{self, SharedKey};

/// What to build and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub build_args: Vec<BuildArg>,
    pub target: Option<String>,
    pub labels: Vec<(String, String)>,
    /// The one platform to build for (`--platform linux/arm64`), if any.
    pub platform: Option<Platform>,
    pub pull: bool,
    pub no_cache: bool,
    pub builder: Sourced<Builder>,
    /// How much of the build the log shows.
    pub progress: Sourced<ProgressMode>,
    /// `--context-key` (`AGENT_CONTEXT_KEY`): BuildKit's shared key for the context, given.
    pub context_key: Option<Sourced<String>>,
    /// `CODEBUILD_SRC_DIR`: the source root the derived context key is relative to.
    pub source_root: Option<PathBuf>,
    /// `--stable-mtimes`: unchanged tracked files sent with mtimes made from their git blob ids.
    pub stable_mtimes: bool,
}

impl BuildSpec {
    /// BuildKit's shared key for this build's context: the given one (`--context-key`), else one
    /// derived from the image repository and the context's path.
    pub fn shared_key(&self, reference: &str) -> SharedKey {
        if let Some(given_key) = &self.context_key {
            return context_key::given(&given_key.value, &given_key.origin.to_string());
        }
        context_key::derive(repository_of(reference), &self.context, self.source_root.as_deref())
    }
}

/// `registry/app:tag` (or `@digest`) without its tag: the repository.
fn repository_of(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => reference,
    }
}

/// One `--build-arg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildArg {
    pub key: String,
    /// The value; `None` when `KEY` alone named an environment variable that is unset (the docker
    /// CLI then leaves the argument out).
    pub value: Option<String>,
    /// Whether the value came from the environment variable `KEY` (the plan then does not print it).
    pub from_env: bool,
}

/// How much of the build the log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Every step with its time and CACHED, and the output of RUN steps, each line prefixed with its step
    Plain,
    /// The steps only; a RUN step's output only when it fails
    Steps,
}

/// Which of the daemon's builders builds the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Builder {
    /// BuildKit when the daemon offers it, else the classic builder
    Auto,
    /// BuildKit, with a session for the registry credentials
    Buildkit,
    /// The classic builder (DOCKER_BUILDKIT=0)
    Classic,
}
