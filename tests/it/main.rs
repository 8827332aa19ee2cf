//! The integration tests: one binary that runs the real `agent` executable, against the real
//! servers of the test world (`scripts/testworld up`) where a test needs them.

mod aarch64;
mod agent;
mod budget;
mod build;
mod build_mounts;
mod buildspec;
mod cli;
mod config_errors;
mod context_vs_cli;
mod dry_run;
mod faults;
mod hosts;
mod image;
mod logins;
mod parsers;
mod platform;
mod pool;
mod progress;
mod redaction;
mod session;
mod ssh;
mod stable_digest;
mod world;
mod world_answers;
