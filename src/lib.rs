//! `agent` builds Docker images in AWS CodeBuild on a remote Docker host that keeps its layer
//! cache between builds. The folders are listed in the order a run meets them:
//!
//! - [`run`]: the top level that ties the rest together (`main.rs` calls only it); [`host`]: the
//!   `agent host` commands that set a remote host up (its host keys, a login key);
//! - [`cli`]: the command line (clap) and the environment variables it reads;
//! - [`config`]: flags and environment turned into one validated [`config::Config`] (`SSM:`
//!   references kept as such), then resolved ([`config::resolve`]) into the typed values the steps read;
//! - [`plan`]: the ordered steps a run consists of, printed by `--dry`, executed by `run`, each
//!   timed once into its phase;
//! - [`runner`]: the run-state, each step handed to the domain that does its work, and the one
//!   pipeline (build, tag, compare, push) every slot goes through;
//! - [`nodes`]: the hosts a run builds on, connected and checked together, failing over along each
//!   slot's candidates, in the order rendezvous hashing gives a pool for an image;
//!
//! then the domains the steps call, each importing nothing above it:
//!
//! - [`ssh`]: the key and known_hosts files, the login keys, the host-key check, the SSH transport;
//! - [`docker`]: one daemon: its address, the bollard client and its check, disk use, the cache budget;
//! - [`registry`]: logins and config.json, image references, the image index, the comparison with
//!   what the registry holds;
//! - [`image`]: the build on a daemon, its context, progress, why its cache missed, and metadata,
//!   imagedefinitions.json;
//! - [`session`]: the agent's own BuildKit session (FileSync, credentials, build secrets, SSH
//!   agents, .dockerignore, the context key);
//!
//! and the leaves every part uses:
//!
//! - [`aws`]: SSM parameters, ECR tokens, and EC2 instances as hosts (asked for, started);
//! - [`secrets`]: `SSM:` references, sourced values, secret values and the redactor every output
//!   passes through;
//! - [`files`]: the user's files, written atomically;
//! - [`output`]: the progress reporter, logging (tracing) to stderr, text or JSON;
//! - [`error`]: the one error type and its documented exit codes.

// The flow of a run, in order (one module a group, so that rustfmt keeps the order).
pub mod host;
pub mod run;

pub mod cli;

pub mod config;

pub mod plan;

pub mod runner;

pub mod nodes;

// The domains the steps call.
pub mod ssh;

pub mod docker;

pub mod registry;

pub mod image;

pub mod session;

// The leaves every part uses.
pub mod aws;

pub mod secrets;

pub mod files;

pub mod output;

pub mod error;
