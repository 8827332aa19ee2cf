//! The hosts a run builds on: one or more Docker daemons, each with its target, its connection
//! and what its check learnt (like buildx's nodes). A run has one [`Slot`] per build (one per
//! platform; one for a single-platform run), each with the targets that may take it, in the order
//! they are tried. The connect step fills every slot at once, one SSH connection per distinct
//! target; one host, the common case, is one slot of one candidate and costs nothing extra.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;

use crate::account;
use crate::config::Tls;
use crate::daemon::{Daemon, Facts};
use crate::disk::DiskUseWatch;
use crate::docker_host::DockerHost;
use crate::error::{ConnectClass, Error, Problem, Result};
use crate::secrets::Secret;
use crate::ssh::key::SshKey;
use crate::ssh::login::{login_keys, trusted_hosts};
use crate::ssh::transport::{SshSession, SshTarget, Timeouts, connect_tcp};

/// What every host is reached with: timeouts, TLS, and the SSH files.
pub struct Access<'a> {
    pub connect_timeout: Duration,
    /// Unanswered this long, an SSH connection counts as dropped (a keepalive goes every third).
    pub read_timeout: Duration,
    pub tls: Option<&'a Tls>,
    /// Where keys are looked for when a candidate has no key of its own (`id_*` beside it).
    pub ssh_key_file: &'a Path,
    pub ssh_key_passphrase: Option<&'a Secret>,
    /// Trusted for every SSH host, with the candidate's own pasted known_hosts.
    pub known_hosts_file: &'a Path,
}

/// Where one build may run: its candidates in the order they are tried.
pub struct Slot {
    /// What the build is for in the log: its platform (`linux/arm64`), or empty for a single-platform run.
    pub name: String,
    /// Never empty.
    pub candidates: Vec<Candidate>,
}

/// One target that may take a slot, with the SSH login it is reached with.
#[derive(Clone)]
pub struct Candidate {
    pub target: DockerHost,
    /// JETS_SSH_KEY (or its per-arch variable); without it, the `id_*` files beside `ssh_key_file`.
    pub ssh_key: Option<Arc<SshKey>>,
    /// JETS_SSH_KNOWN (or its per-arch variable), trusted with the known_hosts file.
    pub known_hosts: Option<String>,
}

impl Slot {
    /// A slot with a single candidate.
    pub fn single(name: impl Into<String>, candidate: Candidate) -> Slot {
        Slot { name: name.into(), candidates: vec![candidate] }
    }
}

/// One daemon of the run.
pub struct Host {
    /// Where it is, as configured.
    pub target: DockerHost,
    pub daemon: Daemon,
    /// What the daemon check learnt; `None` before the check.
    pub facts: Option<Facts>,
}

/// The run's hosts, each connected once, and the host each slot got; never empty.
pub struct Hosts {
    hosts: Vec<Host>,
    /// For each slot, in the order given, the index of its host in `hosts`.
    slots: Vec<usize>,
    /// The disk use of each host, asked once its check passed, still to come.
    disk_use: Vec<DiskUseWatch>,
}

impl Hosts {
    /// Fills every slot at once with its first candidate (slots naming the same target share its
    /// connection); the first failure is the outcome.
    pub async fn connect(slots: &[Slot], access: &Access<'_>) -> Result<Hosts> {
        let mut distinct: Vec<&Candidate> = Vec::new();
        let mut chosen = Vec::with_capacity(slots.len());
        for slot in slots {
            let candidate =
                slot.candidates.first().ok_or_else(|| Error::Internal(format!("slot {:?} has no host", slot.name)))?;
            let index = match distinct.iter().position(|seen| seen.target == candidate.target) {
                Some(index) => index,
                None => {
                    distinct.push(candidate);
                    distinct.len() - 1
                }
            };
            chosen.push(index);
        }
        if distinct.is_empty() {
            return Err(Error::Internal("a run without a host".to_string()));
        }
        let hosts = try_join_all(distinct.iter().map(|candidate| connect(candidate, access))).await?;
        Ok(Hosts { hosts, slots: chosen, disk_use: Vec::new() })
    }

    /// The host slot `slot` builds on.
    pub fn for_slot(&self, slot: usize) -> Result<&Host> {
        let index = self.slots.get(slot).ok_or_else(|| Error::Internal(format!("no slot {slot}")))?;
        self.hosts.get(*index).ok_or_else(|| Error::Internal(format!("slot {slot} has no host")))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// Checks every daemon at once, keeping what each check learnt.
    pub async fn check(&mut self) -> Result<()> {
        try_join_all(self.hosts.iter_mut().map(|host| async move {
            host.facts = Some(host.daemon.check().await?);
            Ok::<_, Error>(())
        }))
        .await?;
        Ok(())
    }

    /// Asks each checked host that holds at most `max_images` images (or does not say) for its disk
    /// use in the background (see [`crate::disk`]), once: the run does not wait for it.
    pub fn start_disk_use(&mut self, max_images: u64) {
        let several = self.hosts.len() > 1;
        for host in &self.hosts {
            let Some(facts) = &host.facts else { continue };
            if self.disk_use.iter().any(|watch| watch.target() == host.daemon.target) {
                continue;
            }
            if let Some(images) = facts.images.filter(|images| *images > max_images) {
                let prefix = if several { format!("{}: ", host.target) } else { String::new() };
                tracing::info!(
                    "{prefix}host disk: {images} images (their sizes not asked: on a host of more than {max_images} \
                     images that would slow the run)"
                );
                continue;
            }
            let prefix = if several { format!("{}: ", host.target) } else { String::new() };
            self.disk_use.push(DiskUseWatch::start(host.daemon.clone(), prefix));
        }
    }

    /// Gives the disk use lines still to come at most `wait` more, then leaves them out.
    pub async fn settle_disk_use(&mut self, wait: Duration) {
        futures_util::future::join_all(self.disk_use.drain(..).map(|watch| watch.settle(wait))).await;
    }

    /// The daemon check's line: one host's facts, or each host's.
    pub fn summary(&self) -> String {
        let facts = |host: &Host| host.facts.as_ref().map(Facts::summary).unwrap_or_else(|| "not checked".into());
        match self.hosts.as_slice() {
            [host] => facts(host),
            hosts => {
                hosts.iter().map(|host| format!("{}: {}", host.target, facts(host))).collect::<Vec<_>>().join("; ")
            }
        }
    }

    /// Closes every connection (a disk use still to come is left out).
    pub async fn close(&mut self) {
        self.settle_disk_use(Duration::ZERO).await;
        futures_util::future::join_all(self.hosts.iter().map(|host| host.daemon.close())).await;
    }
}

/// One connection to one target.
async fn connect(candidate: &Candidate, access: &Access<'_>) -> Result<Host> {
    let target = &candidate.target;
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
            let keys = login_keys(name, candidate.ssh_key.as_deref(), access.ssh_key_file, access.ssh_key_passphrase)?;
            let known = Arc::new(trusted_hosts(candidate.known_hosts.as_deref(), access.known_hosts_file)?);
            let ssh = SshTarget { host: name.clone(), port: *port, user, socket: socket.clone() };
            let timeouts = Timeouts { connect: timeout, keepalive: access.read_timeout / 3 };
            let session = SshSession::connect(ssh, &keys, known, timeouts).await?;
            Daemon::over_ssh(Arc::new(session), target.to_string(), timeout)?
        }
    };
    Ok(Host { target: target.clone(), daemon, facts: None })
}
