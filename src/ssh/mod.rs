//! SSH: the key and known_hosts files the agent installs, the keys and host keys it logs in with,
//! the host-key check, and the russh transport that carries the Docker API to the remote daemon's
//! socket.

pub mod account;
pub mod files;
pub mod install;
pub mod key;
pub mod keyscan;
pub mod known_hosts;
pub mod login;
pub mod transport;
