//! What each step of the plan does for real. The plan decides the order and the dry run; the
//! runner holds what earlier steps produced (resolved values, the daemon connection) for later ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::account;
use crate::config::{Config, Value};
use crate::daemon::Daemon;
use crate::docker_host::DockerHost;
use crate::error::{ConnectClass, Error, Result};
use crate::plan::{Step, StepRunner};
use crate::ssh::files::{self, Installed};
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::{KnownHosts, meaningful_lines};
use crate::ssh::transport::{SshSession, SshTarget, Timeouts, connect_tcp};

/// Keepalive interval on the SSH connection: a dead host is noticed after about four of these.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The agent's runner.
pub struct Runner<'a> {
    config: &'a Config,
    daemon: Option<Daemon>,
}

impl<'a> Runner<'a> {
    pub fn new(config: &'a Config) -> Self {
        Runner { config, daemon: None }
    }

    /// Closes what the run opened.
    pub async fn finish(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.close().await;
        }
    }

    fn ssh_key(&self) -> Result<Option<Arc<SshKey>>> {
        match &self.config.ssh_key {
            None => Ok(None),
            Some(sourced) => match &sourced.value {
                Value::Known(key) => Ok(Some(key.clone())),
                Value::Ssm(reference) => {
                    Err(Error::Unsupported { step: format!("use {reference} before it is resolved") })
                }
            },
        }
    }

    fn known_hosts_text(&self) -> Result<Option<&str>> {
        match &self.config.known_hosts {
            None => Ok(None),
            Some(sourced) => match &sourced.value {
                Value::Known(text) => Ok(Some(text)),
                Value::Ssm(reference) => {
                    Err(Error::Unsupported { step: format!("use {reference} before it is resolved") })
                }
            },
        }
    }

    async fn install_key(&self, path: &Path) -> Result<Option<String>> {
        let Some(key) = self.ssh_key()? else {
            return Ok(Some("no JETS_SSH_KEY".to_string()));
        };
        warn_if_home_is_not_the_accounts(path);
        let passphrase = self.config.ssh_key_passphrase.as_ref();
        let same_key = |existing: &str| {
            SshKey::parse(existing, passphrase).is_ok_and(|other| other.key.public_key() == key.key.public_key())
        };
        let outcome = files::install_key(path, key.text.expose(), same_key)?;
        Ok(Some(match outcome {
            Installed::AlreadyThere => {
                format!("{} already holds {}", path.display(), key.describe())
            }
            _ => format!("wrote {} ({})", path.display(), key.describe()),
        }))
    }

    async fn install_known_hosts(&self, path: &Path) -> Result<Option<String>> {
        let Some(text) = self.known_hosts_text()? else {
            return Ok(Some("no JETS_SSH_KNOWN".to_string()));
        };
        let lines = meaningful_lines(text);
        Ok(Some(match files::install_known_hosts(path, &lines)? {
            Installed::Added(count) => {
                format!("added {count} line{} to {}", if count == 1 { "" } else { "s" }, path.display())
            }
            _ => format!("{} already holds every line", path.display()),
        }))
    }

    async fn connect(&mut self, host: &DockerHost, timeout: Duration) -> Result<Option<String>> {
        let daemon = match host {
            DockerHost::Unix { path } => Daemon::unix(path, timeout)?,
            DockerHost::Tcp { host: name, port } => {
                let daemon = Daemon::tcp(name, *port, self.config.tls.as_ref(), timeout)?;
                // A first connection of our own, so that an unknown name, a refusal or a timeout is
                // reported as such (bollard's errors do not tell them apart).
                let probe = tokio::time::timeout(timeout, connect_tcp("tcp", name, *port)).await;
                match probe {
                    Err(_) => {
                        return Err(Error::Connect {
                            target: host.to_string(),
                            class: ConnectClass::Timeout,
                            detail: format!("no answer within {}s", timeout.as_secs()),
                        });
                    }
                    Ok(result) => drop(result?),
                }
                daemon
            }
            DockerHost::Ssh { user, host: name, port, socket } => {
                let user = match user.clone().or_else(account::user_name) {
                    Some(user) => user,
                    None => {
                        return Err(Error::Config(vec![
                            crate::error::Problem::new(
                                "DOCKER_HOST",
                                "names no user, and the current user has no name (no /etc/passwd entry, no USER)",
                            )
                            .hint("write the user into the address: ssh://user@host"),
                        ]));
                    }
                };
                let keys = self.login_keys(name)?;
                let known = Arc::new(self.known_hosts()?);
                let target = SshTarget { host: name.clone(), port: *port, user, socket: socket.clone() };
                let session =
                    SshSession::connect(target, &keys, known, Timeouts { connect: timeout, keepalive: KEEPALIVE })
                        .await?;
                Daemon::over_ssh(Arc::new(session), host.to_string(), timeout)?
            }
        };
        self.daemon = Some(daemon);
        Ok(Some(format!("connected over {}", host.transport())))
    }

    /// The keys to log in with: JETS_SSH_KEY, else the usual `~/.ssh/id_*` files.
    fn login_keys(&self, host: &str) -> Result<Vec<(String, Arc<russh::keys::PrivateKey>)>> {
        if let Some(key) = self.ssh_key()? {
            return Ok(vec![(key.describe(), Arc::new(key.key.clone()))]);
        }
        let dir =
            self.config.ssh_key_file.value.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".ssh"));
        let candidates: Vec<PathBuf> = ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|name| dir.join(name)).collect();
        let mut keys = Vec::new();
        for path in &candidates {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            match SshKey::parse(&text, self.config.ssh_key_passphrase.as_ref()) {
                Ok(key) => keys.push((format!("{} ({})", key.describe(), path.display()), Arc::new(key.key))),
                Err(error) => tracing::warn!("skipping {}: it {error}", path.display()),
            }
        }
        if keys.is_empty() {
            let tried: Vec<String> = candidates.iter().map(|path| path.display().to_string()).collect();
            return Err(Error::NoSshKey { host: host.to_string(), tried: tried.join(", ") });
        }
        Ok(keys)
    }

    /// JETS_SSH_KNOWN and the known_hosts file, both trusted.
    fn known_hosts(&self) -> Result<KnownHosts> {
        let mut known = KnownHosts::default();
        if let Some(text) = self.known_hosts_text()? {
            known.add(&meaningful_lines(text).join("\n"), "JETS_SSH_KNOWN");
        }
        let path = &self.config.known_hosts_file.value;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bad = known.add(&text, &path.display().to_string());
                if !bad.is_empty() {
                    tracing::debug!(
                        "{}: {} lines are not known_hosts entries and were skipped",
                        path.display(),
                        bad.len()
                    );
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::LocalFile { action: "read", path: path.clone(), source, hint: None });
            }
        }
        Ok(known)
    }

    async fn check_daemon(&mut self) -> Result<Option<String>> {
        let Some(daemon) = self.daemon.as_mut() else {
            return Err(Error::Internal("the daemon check ran before the connection".to_string()));
        };
        let facts = daemon.check().await?;
        Ok(Some(facts.summary()))
    }
}

/// OpenSSH reads `~/.ssh` from the account's home in /etc/passwd, not from `$HOME`: a key written
/// under another `$HOME` is not seen by later `ssh`, `git` or `docker` commands.
fn warn_if_home_is_not_the_accounts(path: &Path) {
    let (Some(account), Ok(home)) = (account::current(), std::env::var("HOME")) else {
        return;
    };
    if Path::new(&home) != account.home && path.starts_with(&home) {
        tracing::warn!(
            "HOME is {home} but the account's home in /etc/passwd is {}: OpenSSH (ssh, git, docker over ssh://) looks \
             in {}/.ssh, not in $HOME/.ssh; pass --ssh-key-file if later commands need the key",
            account.home.display(),
            account.home.display()
        );
    }
}

impl StepRunner for Runner<'_> {
    async fn run(&mut self, step: &Step) -> Result<Option<String>> {
        match step {
            Step::InstallSshKey { path, .. } => self.install_key(path).await,
            Step::InstallKnownHosts { path, .. } => self.install_known_hosts(path).await,
            Step::Connect { host, timeout, .. } => match &host.value {
                Value::Known(target) => self.connect(target, *timeout).await,
                Value::Ssm(reference) => {
                    Err(Error::Unsupported { step: format!("connect to the daemon in {reference}") })
                }
            },
            Step::CheckDaemon => self.check_daemon().await,
            other => Err(Error::Unsupported { step: other.title() }),
        }
    }
}
