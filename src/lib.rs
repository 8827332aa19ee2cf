//! `agent` builds Docker images in AWS CodeBuild on a remote Docker host that keeps its layer
//! cache between builds. The modules are listed in the order a run meets them:
//!
//! - [`run`]: the top level that ties the rest together (`main.rs` calls only it);
//! - [`cli`]: the command line (clap) and the environment variables it reads;
//! - [`config`]: flags and environment turned into one validated [`config::Config`], `SSM:`
//!   references kept as such;
//! - [`resolve`]: those references fetched in one batch and parsed, giving the typed
//!   [`resolve::Resolved`] the steps read;
//! - [`plan`]: the ordered steps a run consists of, printed by `--dry`, executed by `run`;
//! - [`runner`]: the run-state, and each step handed to the module that does its work;
//! - [`hosts`]: the daemons a run builds on, connected and checked together, failing over along each
//!   slot's candidates; [`affinity`]: the order of a pool's hosts for an image (rendezvous hashing);
//!
//! then the domain modules the steps call:
//!
//! - [`ssh`]: the key and known_hosts files, the login keys, the host-key check, the SSH transport;
//! - [`secrets`]: `SSM:` references, secret values and the redactor every output passes through;
//! - [`aws`]: SSM parameters and ECR tokens;
//! - [`docker_host`]: the `DOCKER_HOST` grammar; [`daemon`]: the bollard client for one daemon, and
//!   its check;
//! - [`registry`]: registry logins, and the docker CLI's config.json;
//! - [`image_ref`]: image references and tags; [`image`]: the build context (.dockerignore, streamed
//!   tar), build, tag, push and the metadata file;
//! - [`build_mounts`]: `--secret` and `--ssh` (build secrets and forwarded SSH keys), read and checked;
//! - [`session`]: the agent's own BuildKit session (credentials, the context by FileSync);
//! - [`image_index`]: multi-platform images: the image index pushed to the registry;
//! - [`image_definitions`]: CodePipeline's imagedefinitions.json;
//! - [`account`]: the user the agent runs as;
//!
//! and what every part reports through:
//!
//! - [`output`]: the progress reporter, logging (tracing) to stderr, text or JSON;
//! - [`error`]: the one error type and its documented exit codes.

// The flow of a run, in order (one module a group, so that rustfmt keeps the order).
pub mod run;

pub mod cli;

pub mod config;

pub mod resolve;

pub mod plan;

pub mod runner;

pub mod hosts;

pub mod affinity;

// The domain modules the steps call.
pub mod ssh;

pub mod secrets;

pub mod aws;

pub mod docker_host;

pub mod daemon;

pub mod disk;

pub mod budget;

pub mod registry;

pub mod image_ref;

pub mod image;

pub mod build_mounts;

pub mod session;

pub mod image_index;
pub mod platforms;
pub mod unchanged;

pub mod image_definitions;

pub mod account;

// What every part reports through.
pub mod output;

pub mod error;
