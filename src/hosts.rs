//! The hosts a run builds on: one or more Docker daemons, each with its target, its connection
//! and what its check learnt (like buildx's nodes). The connect step reaches them all at once, one
//! SSH connection each; one host, the common case, is a list of one and costs nothing extra.
//! Choosing hosts per platform, or from a pool, adds to this list; the steps already read it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;

use crate::account;
use crate::config::Tls;
use crate::daemon::{Daemon, Facts};
use crate::disk::{DiskUse, disk_use};
use crate::docker_host::DockerHost;
use crate::error::{ConnectClass, Error, Problem, Result};
use crate::secrets::Secret;
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::KnownHosts;
use crate::ssh::login::{login_keys, trusted_hosts};
use crate::ssh::transport::{SshSession, SshTarget, Timeouts, connect_tcp};

/// The longest the disk use may hold up a run (a 20.10 daemon sizes every container and volume
/// for it); slower, the line is left out.
const DISK_USE_WAIT: Duration = Duration::from_secs(3);

/// What every host is reached with: timeouts, TLS, and the SSH login.
pub struct Access<'a> {
    pub connect_timeout: Duration,
    /// Unanswered this long, an SSH connection counts as dropped (a keepalive goes every third).
    pub read_timeout: Duration,
    pub tls: Option<&'a Tls>,
    /// JETS_SSH_KEY; without it, the `id_*` files beside `ssh_key_file`.
    pub ssh_key: Option<&'a SshKey>,
    pub ssh_key_file: &'a Path,
    pub ssh_key_passphrase: Option<&'a Secret>,
    /// JETS_SSH_KNOWN, trusted with the known_hosts file.
    pub known_hosts: Option<&'a str>,
    pub known_hosts_file: &'a Path,
}

/// One daemon of the run.
pub struct Host {
    /// Where it is, as configured.
    pub target: DockerHost,
    pub daemon: Daemon,
    /// What the daemon check learnt; `None` before the check.
    pub facts: Option<Facts>,
    /// What its images and build cache take, asked alongside the check; `None` if it did not say.
    pub disk: Option<DiskUse>,
}

/// The run's hosts, in the order they were given; never empty.
pub struct Hosts {
    hosts: Vec<Host>,
}

impl Hosts {
    /// Connects to every target at once; the first failure is the outcome.
    pub async fn connect(targets: &[DockerHost], access: &Access<'_>) -> Result<Hosts> {
        // The host keys are read once for all SSH hosts, and only when there is one.
        let known = match targets.iter().any(|target| matches!(target, DockerHost::Ssh { .. })) {
            true => Some(Arc::new(trusted_hosts(access.known_hosts, access.known_hosts_file)?)),
            false => None,
        };
        let hosts = try_join_all(targets.iter().map(|target| connect(target, access, known.clone()))).await?;
        if hosts.is_empty() {
            return Err(Error::Internal("a run without a host".to_string()));
        }
        Ok(Hosts { hosts })
    }

    /// The host the build runs on (the only one, until hosts are chosen per platform or from a pool).
    pub fn first(&self) -> &Host {
        &self.hosts[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// Checks every daemon at once, keeping what each check learnt.
    pub async fn check(&mut self) -> Result<()> {
        try_join_all(self.hosts.iter_mut().map(|host| async move {
            host.facts = Some(host.daemon.check().await?);
            // The disk use never fails the run: a failure or a slow answer is a debug line, and
            // the line is left out. (One more round trip on the open connection: the check holds
            // the daemon mutably while it settles the API version.)
            let timeout = host.daemon.connect_timeout().min(DISK_USE_WAIT);
            host.disk = match tokio::time::timeout(timeout, disk_use(&host.daemon)).await {
                Ok(Ok(disk)) => Some(disk),
                Err(_) => {
                    tracing::debug!("{}: no disk use within {}s", host.target, timeout.as_secs());
                    None
                }
                Ok(Err(error)) => {
                    tracing::debug!("{}: no disk use: {error}", host.target);
                    None
                }
            };
            Ok::<_, Error>(())
        }))
        .await?;
        Ok(())
    }

    /// The daemon check's line: one host's facts, or each host's.
    pub fn summary(&self) -> String {
        let facts = |host: &Host| {
            let facts = host.facts.as_ref().map(Facts::summary).unwrap_or_else(|| "not checked".into());
            match &host.disk {
                Some(disk) => format!("{facts}; {}", disk.summary()),
                None => facts,
            }
        };
        match self.hosts.as_slice() {
            [host] => facts(host),
            hosts => {
                hosts.iter().map(|host| format!("{}: {}", host.target, facts(host))).collect::<Vec<_>>().join("; ")
            }
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        futures_util::future::join_all(self.hosts.iter().map(|host| host.daemon.close())).await;
    }
}

/// One connection to one target.
async fn connect(target: &DockerHost, access: &Access<'_>, known: Option<Arc<KnownHosts>>) -> Result<Host> {
    let timeout = access.connect_timeout;
    let daemon = match target {
        DockerHost::Unix { path } => Daemon::unix(path, timeout)?,
        DockerHost::Tcp { host: name, port } => {
            let daemon = Daemon::tcp(name, *port, access.tls, timeout)?;
            // A first connection of our own, so that an unknown name, a refusal or a timeout is
            // reported as such (bollard's errors do not tell them apart).
            match tokio::time::timeout(timeout, connect_tcp("tcp", name, *port)).await {
                Err(_) => {
                    return Err(Error::Connect {
                        target: target.to_string(),
                        class: ConnectClass::Timeout,
                        detail: format!("no answer within {}s", timeout.as_secs()),
                    });
                }
                Ok(result) => drop(result?),
            }
            daemon
        }
        DockerHost::Ssh { user, host: name, port, socket } => {
            let Some(user) = user.clone().or_else(account::user_name) else {
                return Err(Error::Config(vec![
                    Problem::new(
                        "DOCKER_HOST",
                        "names no user, and the current user has no name (no /etc/passwd entry, no USER)",
                    )
                    .hint("write the user into the address: ssh://user@host"),
                ]));
            };
            let keys = login_keys(name, access.ssh_key, access.ssh_key_file, access.ssh_key_passphrase)?;
            let known = known.ok_or_else(|| Error::Internal("an SSH host without its known hosts".to_string()))?;
            let ssh = SshTarget { host: name.clone(), port: *port, user, socket: socket.clone() };
            let timeouts = Timeouts { connect: timeout, keepalive: access.read_timeout / 3 };
            let session = SshSession::connect(ssh, &keys, known, timeouts).await?;
            Daemon::over_ssh(Arc::new(session), target.to_string(), timeout)?
        }
    };
    Ok(Host { target: target.clone(), daemon, facts: None, disk: None })
}
