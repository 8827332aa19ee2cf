//! The hosts a run builds on: one or more Docker daemons, each with its target, its connection
//! and what its check learnt (like buildx's nodes). A run has one [`Slot`] per build (one per
//! platform; one for a single-platform run), each with the targets that may take it, in the order
//! they are tried (the pool in the order the image hashes to, then the fallback). The connect step fills every slot at once, one SSH connection per distinct target,
//! passing over a candidate that does not answer to the next ([`Hosts::connect_with_failover`]);
//! one host, the common case, is one slot of one candidate and costs nothing extra.

pub mod affinity;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};

use crate::aws::ec2::{InstanceAccess, is_instance_id};
use crate::docker::daemon::{Daemon, Facts};
use crate::docker::disk::DiskUseWatch;
use crate::docker::host::DockerHost;
use crate::docker::host::Tls;
use crate::error::{ConnectClass, Error, InstanceFailure, Problem, Result};
use crate::secrets::Secret;
use crate::ssh::account;
use crate::ssh::key::SshKey;
use crate::ssh::login::{TrustedHosts, login_keys};
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
    /// How EC2 instances named as hosts (`ssh://user@i-…`) are asked for and started; `None` when
    /// no candidate is one.
    pub instances: Option<&'a InstanceAccess>,
}

/// Where one build may run: its candidates in the order they are tried.
#[derive(Clone)]
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
    /// Each slot's name (its platform; empty for a single-platform run), for errors.
    slot_names: Vec<String>,
    /// The disk use of each host, asked once its check passed, still to come.
    disk_use: Vec<DiskUseWatch>,
    /// The candidates that did not answer, passed over for the next.
    failed: Vec<FailedHost>,
    /// For each slot, the indexes in `failed` of its candidates passed over, in the order tried.
    slot_failed: Vec<Vec<usize>>,
    /// Each slot as given, and the index of the candidate that took it: for a failover after the
    /// connection ([`Hosts::fail_over`]).
    given: Vec<Slot>,
    next: Vec<usize>,
}

/// A host of a slot that did not answer, and why; the next candidate took the slot.
#[derive(Debug, Clone)]
pub struct FailedHost {
    pub target: DockerHost,
    /// The error, as the log shows it (redacted like every output).
    pub reason: String,
    /// The error's exit class (`connection-refused`, `timeout`, …).
    pub class: &'static str,
}

impl FailedHost {
    fn new(target: &DockerHost, error: &Error) -> FailedHost {
        let reason = crate::secrets::redact(&error.to_string());
        let code = error.exit_code();
        let class = crate::error::exit::TABLE.iter().find(|row| row.0 == code).map_or("error", |row| row.1);
        FailedHost { target: target.clone(), reason, class }
    }
}

/// Whether an error means that the host does not answer (down, unreachable, not serving the daemon),
/// so that the next candidate may take its build. A host-key failure never is: a changed key stops the
/// run. Neither is a refused SSH key, a TLS failure or a daemon that is too old: those are the
/// configuration's, the same on every try, and failing over would hide them behind a slower, colder
/// build.
pub fn is_not_answering(error: &Error) -> bool {
    match error {
        Error::Connect { class, .. } => !matches!(class, ConnectClass::Tls),
        Error::Ssh { .. } | Error::RemoteSocket { .. } | Error::Daemon { .. } => true,
        // An instance not ready in time, or gone (as a name that does not resolve); a refused EC2
        // call or a missing address is the configuration's.
        Error::Instance { kind, .. } => matches!(kind, InstanceFailure::Timeout | InstanceFailure::NotFound),
        _ => false,
    }
}

/// What each slot has to say, grouped: each distinct thing once, with the names of the slots that
/// said it (empty names, a single-platform run's slot, left out), in the order first said — so that
/// platforms sharing a pool that fail over together get one line.
pub fn grouped<'a, K: PartialEq>(said: impl IntoIterator<Item = (K, &'a str)>) -> Vec<(K, Vec<&'a str>)> {
    let mut groups: Vec<(K, Vec<&'a str>)> = Vec::new();
    for (what, name) in said {
        let names = match groups.iter_mut().find(|(seen, _)| *seen == what) {
            Some((_, names)) => names,
            None => {
                groups.push((what, Vec::new()));
                &mut groups.last_mut().expect("pushed above").1
            }
        };
        if !name.is_empty() {
            names.push(name);
        }
    }
    groups
}

impl Hosts {
    /// Fills every slot at once, each with its first candidate that answers within the connect
    /// timeout; see [`Hosts::connect_with_failover`].
    pub async fn connect(slots: &[Slot], access: &Access<'_>) -> Result<Hosts> {
        Hosts::connect_with_failover(slots, access, access.connect_timeout).await
    }

    /// Fills every slot at once, trying its candidates in order: a candidate with a next one has
    /// `failover_timeout` to connect (its daemon is checked too, so that a host whose sshd answers
    /// but whose daemon does not is passed over), the last one the whole connect timeout. A candidate
    /// that does not answer ([`is_not_answering`]) is recorded and the next one takes the slot, with a
    /// warning; any other failure is the outcome. Slots naming the same target share its connection,
    /// and a target that failed for one slot is not tried again for another. A slot whose every
    /// candidate failed fails the run with its first candidate's error (a pool of one: as ever).
    pub async fn connect_with_failover(
        slots: &[Slot],
        access: &Access<'_>,
        failover_timeout: Duration,
    ) -> Result<Hosts> {
        if slots.is_empty() {
            return Err(Error::Internal("a run without a host".to_string()));
        }
        // Read once for every SSH candidate, not once per host.
        let trusted = TrustedHosts::new(access.known_hosts_file);
        let mut hosts: Vec<Host> = Vec::new();
        let mut failed: Vec<(FailedHost, Error)> = Vec::new();
        // For each slot, the index of the candidate being tried.
        let mut next = vec![0usize; slots.len()];
        let mut chosen: Vec<Option<usize>> = vec![None; slots.len()];
        loop {
            let mut attempts: Vec<(&Candidate, Duration, bool, Duration)> = Vec::new();
            for (index, slot) in slots.iter().enumerate() {
                while chosen[index].is_none() {
                    let Some(candidate) = slot.candidates.get(next[index]) else {
                        let first = slot
                            .candidates
                            .first()
                            .ok_or_else(|| Error::Internal(format!("slot {:?} has no host", slot.name)))?;
                        let position = failed.iter().position(|(host, _)| host.target == first.target);
                        let error = match position {
                            Some(position) => failed.swap_remove(position).1,
                            None => Error::Internal(format!("slot {:?} failed without an error", slot.name)),
                        };
                        // Every slot left without a host by the same failures (a pool shared by platforms).
                        let left: Vec<&str> = slots
                            .iter()
                            .zip(&chosen)
                            .filter(|(slot, chosen)| {
                                chosen.is_none()
                                    && slot.candidates.iter().all(|candidate| {
                                        candidate.target == first.target
                                            || failed.iter().any(|(host, _)| host.target == candidate.target)
                                    })
                            })
                            .map(|(slot, _)| slot.name.as_str())
                            .collect();
                        return Err(for_platforms(error, &left));
                    };
                    if let Some(host) = hosts.iter().position(|host| host.target == candidate.target) {
                        chosen[index] = Some(host);
                    } else if failed.iter().any(|(host, _)| host.target == candidate.target) {
                        next[index] += 1;
                    } else {
                        let last = next[index] + 1 == slot.candidates.len();
                        if !attempts.iter().any(|(seen, ..)| seen.target == candidate.target) {
                            let timeout = if last { access.connect_timeout } else { failover_timeout };
                            attempts.push((candidate, timeout, !last, start_timeout(access, last, failover_timeout)));
                        }
                        break;
                    }
                }
            }
            if attempts.is_empty() {
                break;
            }
            let outcomes = join_all(attempts.iter().map(|(candidate, timeout, check, start)| {
                attempt(candidate, access, &trusted, *timeout, *check, *start)
            }))
            .await;
            for ((candidate, ..), outcome) in attempts.iter().zip(outcomes) {
                match outcome {
                    Ok(host) => hosts.push(host),
                    Err(error) if is_not_answering(&error) => {
                        failed.push((FailedHost::new(&candidate.target, &error), error));
                    }
                    Err(error) => {
                        // The hosts connected so far are dropped with their connections.
                        let trying: Vec<&str> = slots
                            .iter()
                            .enumerate()
                            .filter(|(index, slot)| {
                                chosen[*index].is_none()
                                    && slot
                                        .candidates
                                        .get(next[*index])
                                        .is_some_and(|next| next.target == candidate.target)
                            })
                            .map(|(_, slot)| slot.name.as_str())
                            .collect();
                        return Err(for_platforms(error, &trying));
                    }
                }
            }
            // Say who took each slot whose candidate failed in this round (a slot of one candidate
            // fails with its error, which says it all); slots that shared the host (platforms on the
            // same pool) in one warning.
            let mut warnings = Vec::new();
            for (index, slot) in slots.iter().enumerate() {
                if chosen[index].is_some() || slot.candidates.len() < 2 {
                    continue;
                }
                let Some(candidate) = slot.candidates.get(next[index]) else { continue };
                let Some((host, _)) = failed.iter().find(|(host, _)| host.target == candidate.target) else {
                    continue;
                };
                let after = slot.candidates[next[index] + 1..]
                    .iter()
                    .find(|next| !failed.iter().any(|(host, _)| host.target == next.target))
                    .map(|next| format!("{} takes the build", next.target))
                    .unwrap_or_else(|| "no other host is left to take the build".to_string());
                let (target, why) = (host.target.to_string(), format!("{} [{}]; {after}", host.reason, host.class));
                warnings.push(((target, why), slot.name.as_str()));
            }
            for ((target, why), names) in grouped(warnings) {
                let what = if names.is_empty() { String::new() } else { format!(" ({})", names.join(", ")) };
                tracing::warn!("{target} did not answer{what}: {why}");
            }
        }
        // A slot's host is its candidate `next`: those before it were passed over.
        let slot_failed = slots
            .iter()
            .zip(&next)
            .map(|(slot, next)| {
                slot.candidates[..*next]
                    .iter()
                    .filter_map(|candidate| failed.iter().position(|(host, _)| host.target == candidate.target))
                    .collect()
            })
            .collect();
        let slots_given = slots;
        let slots = chosen
            .into_iter()
            .map(|host| host.ok_or_else(|| Error::Internal("a slot was left without a host".to_string())))
            .collect::<Result<Vec<usize>>>()?;
        let failed = failed.into_iter().map(|(host, _)| host).collect();
        let slot_names = slots_given.iter().map(|slot| slot.name.clone()).collect();
        let given = slots_given.to_vec();
        Ok(Hosts { hosts, slots, slot_names, failed, slot_failed, disk_use: Vec::new(), given, next })
    }

    /// Slot `slot`'s host failed the build on its own before it carried out any step (`error`: its
    /// disk full, its runtime broken; see [`Error::host_failed_before_any_step`]), so nothing would
    /// run twice elsewhere: the host is recorded as failed (the metadata names it) and the slot's next
    /// candidate that answers takes the slot, connected and checked as at the start (within
    /// `failover_timeout`, the last one within the connect timeout). Returns the new host, or `None`
    /// when no candidate is left (a pool of one: the run fails with `error`).
    pub async fn fail_over(
        &mut self,
        slot: usize,
        error: &Error,
        access: &Access<'_>,
        failover_timeout: Duration,
    ) -> Result<Option<&Host>> {
        let candidates = self.given.get(slot).map(|given| given.candidates.clone()).unwrap_or_default();
        if self.next.get(slot).is_none_or(|next| next + 1 >= candidates.len()) {
            return Ok(None);
        }
        let target = self.for_slot(slot)?.target.clone();
        self.record_failed(slot, FailedHost::new(&target, error));
        let trusted = TrustedHosts::new(access.known_hosts_file);
        loop {
            self.next[slot] += 1;
            let Some(candidate) = candidates.get(self.next[slot]) else { return Ok(None) };
            if self.failed.iter().any(|host| host.target == candidate.target) {
                continue;
            }
            if let Some(index) = self.hosts.iter().position(|host| host.target == candidate.target) {
                self.slots[slot] = index;
                return Ok(self.hosts.get(index));
            }
            let last = self.next[slot] + 1 == candidates.len();
            let timeout = if last { access.connect_timeout } else { failover_timeout };
            let start = start_timeout(access, last, failover_timeout);
            match attempt(candidate, access, &trusted, timeout, true, start).await {
                Ok(host) => {
                    self.hosts.push(host);
                    self.slots[slot] = self.hosts.len() - 1;
                    return Ok(self.hosts.last());
                }
                Err(error) if is_not_answering(&error) => {
                    self.record_failed(slot, FailedHost::new(&candidate.target, &error));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn record_failed(&mut self, slot: usize, host: FailedHost) {
        self.failed.push(host);
        if let Some(passed) = self.slot_failed.get_mut(slot) {
            passed.push(self.failed.len() - 1);
        }
    }

    /// The candidates of slot `slot` that did not answer before its host took it, in the order tried.
    pub fn failed_for_slot(&self, slot: usize) -> Vec<&FailedHost> {
        let indexes = self.slot_failed.get(slot).map(Vec::as_slice).unwrap_or_default();
        indexes.iter().filter_map(|index| self.failed.get(*index)).collect()
    }

    /// The hosts that did not answer, in the order they were tried.
    pub fn failed(&self) -> &[FailedHost] {
        &self.failed
    }

    /// The host slot `slot` builds on.
    pub fn for_slot(&self, slot: usize) -> Result<&Host> {
        let index = self.slots.get(slot).ok_or_else(|| Error::Internal(format!("no slot {slot}")))?;
        self.hosts.get(*index).ok_or_else(|| Error::Internal(format!("slot {slot} has no host")))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// Checks every daemon at once, keeping what each check learnt (a host checked while it was
    /// connected, to fail over past it, is not asked again).
    /// A failure names the platforms that build on the host, as a failure to connect does.
    pub async fn check(&mut self) -> Result<()> {
        let (slots, names) = (&self.slots, &self.slot_names);
        let checks = self.hosts.iter_mut().enumerate().filter(|(_, host)| host.facts.is_none()).map(
            |(index, host)| async move {
                match host.daemon.check().await {
                    Ok(facts) => host.facts = Some(facts),
                    Err(error) => {
                        let on_it: Vec<&str> = slots
                            .iter()
                            .zip(names)
                            .filter(|(slot, _)| **slot == index)
                            .map(|(_, name)| name.as_str())
                            .collect();
                        return Err(for_platforms(error, &on_it));
                    }
                }
                Ok::<_, Error>(())
            },
        );
        try_join_all(checks).await?;
        Ok(())
    }

    /// Asks each checked host that holds at most `max_images` images (or does not say) for its disk
    /// use in the background (see [`crate::docker::disk`]), once: the run does not wait for it.
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

/// The error that leaves the slots `names` without a host: in a multi-platform run it names their
/// platforms, as a build's failure does (the exit class is the cause's).
fn for_platforms(error: Error, names: &[&str]) -> Error {
    let names: Vec<&str> = names.iter().copied().filter(|name| !name.is_empty()).collect();
    if names.is_empty() {
        return error;
    }
    Error::Platform { platform: names.join(", "), source: Box::new(error) }
}

/// How long an EC2 instance that is a candidate may take to be started and answer: the whole start
/// timeout when it is the last candidate (or the only one); with a next one, the failover timeout —
/// the user's word on how long a build waits for one host of a pool. Its start is asked for all the
/// same, so the next run finds it running.
fn start_timeout(access: &Access<'_>, last: bool, failover_timeout: Duration) -> Duration {
    let start = access.instances.map_or(failover_timeout, |instances| instances.start_timeout);
    if last { start } else { failover_timeout.min(start) }
}

/// One candidate tried: connected within `timeout` (an EC2 instance first made ready within
/// `start_timeout`), and its daemon checked when `check`.
async fn attempt(
    candidate: &Candidate,
    access: &Access<'_>,
    trusted: &TrustedHosts,
    timeout: Duration,
    check: bool,
    start_timeout: Duration,
) -> Result<Host> {
    let mut host = connect(candidate, access, trusted, timeout, start_timeout).await?;
    if check {
        // Within the failover timeout too: a daemon that hangs behind a live sshd must not cost
        // the whole connect timeout before the next host is tried.
        let checked = tokio::time::timeout(timeout, host.daemon.check()).await.map_err(|_| Error::Connect {
            target: candidate.target.to_string(),
            class: ConnectClass::Timeout,
            detail: format!("the daemon did not answer its check within {}s", timeout.as_secs()),
        })?;
        host.facts = Some(checked?);
    }
    Ok(host)
}

/// One connection to one target, within `timeout` (its daemon's requests get the connect timeout).
async fn connect(
    candidate: &Candidate,
    access: &Access<'_>,
    trusted: &TrustedHosts,
    timeout: Duration,
    start_timeout: Duration,
) -> Result<Host> {
    let target = &candidate.target;
    let daemon = match target {
        DockerHost::Unix { path } => Daemon::unix(path, access.connect_timeout)?,
        DockerHost::Tcp { host: name, port } => {
            let daemon = Daemon::tcp(name, *port, access.tls, access.connect_timeout)?;
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
            let known = trusted.for_host(candidate.known_hosts.as_deref())?;
            // An EC2 instance: known_hosts names it by its id, the connection goes to its address.
            let address = match (is_instance_id(name), access.instances) {
                (false, _) => None,
                (true, Some(instances)) => {
                    Some(crate::aws::ec2::ready_address(instances, name, *port, start_timeout).await?)
                }
                (true, None) => return Err(Error::Internal(format!("{name} is an instance, without EC2 access"))),
            };
            if let (Some(key), Some(instances)) = (candidate.ssh_key.as_deref(), access.instances)
                && key.instance_connect
            {
                // Right before connecting: the instance accepts the key for 60 s.
                let pushed = std::time::Instant::now();
                crate::aws::instance_connect::send_public_key(&instances.aws, name, &user, &key.public_line()).await?;
                tracing::info!(
                    "pushed this run's key ({}) to {name} for {user} with EC2 Instance Connect in {:.2}s",
                    key.describe_public(),
                    pushed.elapsed().as_secs_f64()
                );
            }
            let ssh = SshTarget { host: name.clone(), address, port: *port, user, socket: socket.clone() };
            let timeouts = Timeouts { connect: timeout, keepalive: access.read_timeout / 3 };
            let session = SshSession::connect(ssh, &keys, known, timeouts).await?;
            Daemon::over_ssh(Arc::new(session), target.to_string(), access.connect_timeout)?
        }
    };
    Ok(Host { target: target.clone(), daemon, facts: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_slots_say_is_grouped_once_with_their_names_in_the_order_first_said() {
        let said = [("a down", "linux/amd64"), ("b down", "linux/arm64"), ("a down", "linux/arm/v7"), ("c", "")];
        let groups = grouped(said);
        assert_eq!(
            groups,
            [("a down", vec!["linux/amd64", "linux/arm/v7"]), ("b down", vec!["linux/arm64"]), ("c", vec![])]
        );
    }
}
