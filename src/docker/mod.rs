//! One Docker daemon: its address (`DOCKER_HOST`'s grammar, TLS settings), the bollard client and
//! its check, the host's disk use, and the build cache budget.

pub mod budget;
pub mod cause;
pub mod daemon;
pub mod disk;
pub mod host;
