//! The integration tests: one binary that runs the real `agent` executable, against the real
//! servers of the test world (`scripts/testworld up`), which every run needs (its secrets are what
//! the suite-wide check looks for in each run's output).
//!
//! A few call the library instead, where the executable cannot show what they check: `hosts`
//! (`nodes::Hosts::connect` over the world's sshd: one connection per target, the slots' order),
//! `platform` (`registry::index::push_index` against the world's registries; `rate_limits`, the
//! same behind a stand-in answering 429), `ssh` (a daemon over the SSH transport, dropped
//! mid-request), `parsers` (the parsers never panic, on corpora),
//! and the helpers of `dry_run`, `pool` and `budget` (`nodes::affinity::order`, `output::human_bytes`).

mod aarch64;
mod agent;
mod budget;
mod build;
mod build_mounts;
mod buildspec;
mod cache_why;
mod cli;
mod config_errors;
mod context_vs_cli;
mod dry_run;
mod engines;
pub(crate) mod faults;
mod host_faults;
mod host_setup;
mod hostile_session;
mod hosts;
mod idle_stop;
mod image;
mod instance_connect;
mod instances;
mod logins;
mod parsers;
mod platform;
mod pool;
mod progress;
mod rate_limits;
mod redaction;
mod session;
mod ssh;
mod stable_digest;
mod world;
mod world_answers;
