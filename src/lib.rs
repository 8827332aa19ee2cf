//! `agent` builds Docker images in AWS CodeBuild on a remote Docker host that keeps its layer
//! cache between builds. The modules follow the run's concerns, one each:
//!
//! - [`cli`]: the command line (clap) and the environment variables it reads;
//! - [`config`]: flags and environment turned into one validated [`config::Config`];
//! - [`plan`]: the ordered steps a run consists of, printed by `--dry`, executed by `run`;
//! - [`image`]: the build context (.dockerignore, streamed tar), build, tag and push;
//! - [`build_mounts`]: `--secret` and `--ssh` (build secrets and forwarded SSH keys), read and checked;
//! - [`docker_host`]: the `DOCKER_HOST` grammar; [`image_ref`]: image references and tags;
//! - [`ssh`]: the key and known_hosts files, the host-key check, the SSH transport;
//! - [`secrets`]: `SSM:` references, secret values and the redactor every output passes through;
//! - [`output`]: logging (tracing) to stderr, text or JSON;
//! - [`daemon`]: the bollard client for the target daemon, and its check;
//! - [`session`]: the agent's own BuildKit session (credentials, the context by FileSync);
//! - [`runner`]: what each step of the plan does for real;
//! - [`aws`]: SSM parameters and ECR tokens;
//! - [`registry`]: registry credentials and the docker CLI's config.json;
//! - [`image_definitions`]: CodePipeline's imagedefinitions.json;
//! - [`image_index`]: multi-platform images: the image index pushed to the registry;
//! - [`account`]: the user the agent runs as;
//! - [`error`]: the one error type and its documented exit codes;
//! - [`run`]: the top level that ties them together.

pub mod account;
pub mod aws;
pub mod build_mounts;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod docker_host;
pub mod error;
pub mod hosts;
pub mod image;
pub mod image_definitions;
pub mod image_index;
pub mod image_ref;
pub mod output;
pub mod plan;
pub mod registry;
pub mod resolve;
pub mod run;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod ssh;
