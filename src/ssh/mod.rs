//! SSH: the key and known_hosts files the agent installs, the host-key check, and the russh
//! transport that carries the Docker API to the remote daemon's socket.

pub mod files;
pub mod key;
pub mod known_hosts;
pub mod transport;
