//! The integration tests: one binary that runs the real `agent` executable, against the real
//! servers of the test world (`scripts/testworld up`) where a test needs them.

mod agent;
mod build;
mod buildspec;
mod cli;
mod config_errors;
mod dry_run;
mod faults;
mod image;
mod logins;
mod parsers;
mod platform;
mod redaction;
mod ssh;
mod world;
mod world_answers;
