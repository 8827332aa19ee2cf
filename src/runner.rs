//! What each step of the plan does for real. The plan decides the order and the dry run; the
//! runner holds what earlier steps produced (resolved values, the daemon connection) for later ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use crate::account;
use crate::aws;
use crate::build_mounts::{SecretSource, SessionMounts, SshKeys};
use crate::cli::Builder;
use crate::config::{Config, Value};
use crate::daemon::{AuthError, Daemon, Facts};
use crate::docker_host::DockerHost;
use crate::error::{ConnectClass, Error, Result};
use crate::image::build_secrets::SecretBytes;
use crate::image::{self, BuildRequest, Engine, context::Context};
use crate::plan::{Step, StepRunner};
use crate::registry::Credential;
use crate::secrets::{Origin, Secret, SsmRef};
use crate::ssh::files::{self, Installed};
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::{KnownHosts, meaningful_lines};
use crate::ssh::transport::{SshSession, SshTarget, Timeouts, connect_tcp};

/// Variables whose values are secrets, wherever they come from.
const SECRET_VARIABLES: &[&str] = &["JETS_SSH_KEY", "DOCKER_PASS", "JETS_SSH_KEY_PASSPHRASE"];

/// The agent's runner.
pub struct Runner<'a> {
    config: &'a Config,
    daemon: Option<Daemon>,
    /// The values of the `SSM:` references, once resolved.
    resolved: BTreeMap<SsmRef, String>,
    /// The AWS SDK configuration, loaded on first use.
    aws: Option<aws_config::SdkConfig>,
    /// ECR passwords by region (one GetAuthorizationToken call per region).
    ecr_passwords: BTreeMap<String, Secret>,
    /// GetAuthorizationToken calls started early, while the SSH connection is made (they do not
    /// depend on each other), awaited by the ECR login steps.
    ecr_prefetch: BTreeMap<String, tokio::task::JoinHandle<Result<Secret>>>,
    /// The registries logged into, for config.json, builds and pushes.
    pub credentials: Vec<Credential>,
    /// What the daemon check learnt.
    facts: Option<Facts>,
    /// What the build did, for the metadata file.
    built: Option<Built>,
    /// The manifest digest of the first push, for the metadata file.
    pushed_digest: Option<String>,
}

/// A finished build, as the metadata file describes it.
struct Built {
    engine: Engine,
    summary: image::BuildSummary,
    context_files: u64,
    context_bytes: u64,
}

impl<'a> Runner<'a> {
    pub fn new(config: &'a Config) -> Self {
        Runner {
            config,
            daemon: None,
            resolved: BTreeMap::new(),
            aws: None,
            ecr_passwords: BTreeMap::new(),
            ecr_prefetch: BTreeMap::new(),
            credentials: Vec::new(),
            facts: None,
            built: None,
            pushed_digest: None,
        }
    }

    async fn aws(&mut self) -> &aws_config::SdkConfig {
        if self.aws.is_none() {
            let region = self.config.region.as_ref().map(|region| region.value.as_str());
            self.aws = Some(aws::sdk_config(region, self.config.connect_timeout).await);
        }
        self.aws.as_ref().expect("loaded above")
    }

    /// The value of a configuration entry: given, or resolved from SSM.
    fn value<'v>(&'v self, value: &'v Value<String>) -> Result<&'v str> {
        match value {
            Value::Known(text) => Ok(text),
            Value::Ssm(reference) => self.resolved_text(reference),
        }
    }

    fn resolved_text(&self, reference: &SsmRef) -> Result<&str> {
        self.resolved
            .get(reference)
            .map(String::as_str)
            .ok_or_else(|| Error::Internal(format!("{reference} was used before it was resolved")))
    }

    async fn resolve_ssm(&mut self, references: &[(Origin, SsmRef)]) -> Result<Option<String>> {
        let config = self.aws().await.clone();
        let parameters = aws::resolve_ssm(&config, references).await?;
        for (origin, reference) in references {
            // The values of secret variables are secret whatever the parameter's type.
            if SECRET_VARIABLES.contains(&origin.subject().as_str()) || matches!(origin, Origin::BuildSecret { .. }) {
                if let Some(parameter) = parameters.get(reference) {
                    crate::secrets::redactor().register(&parameter.value);
                }
            }
        }
        self.resolved = parameters.into_iter().map(|(reference, parameter)| (reference, parameter.value)).collect();
        // Check what the parameters hold, all at once, as the configuration is checked.
        let mut problems = Vec::new();
        for (origin, reference) in references {
            let subject = format!("{} ({reference})", origin.subject());
            let text = self.resolved_text(reference)?;
            let outcome = match origin.subject().as_str() {
                "DOCKER_HOST" | "--host" => DockerHost::parse(text, self.config.tls.is_some())
                    .map(drop)
                    .map_err(|error| crate::error::Problem::new(&subject, error.message).hint(error.hint)),
                "JETS_SSH_KEY" => SshKey::parse(text, self.config.ssh_key_passphrase.as_ref())
                    .map(drop)
                    .map_err(|error| crate::error::Problem::new(&subject, error.to_string()).hint(error.hint())),
                "JETS_SSH_KNOWN" => crate::config::check_known_hosts(text, &subject),
                "DOCKER_REGISTRY" | "--registry" => crate::config::normalise_registry(text)
                    .map(drop)
                    .map_err(|message| crate::error::Problem::new(&subject, message)),
                _ => Ok(()),
            };
            if let Err(problem) = outcome {
                problems.push(problem);
            }
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let region = self.aws.as_ref().and_then(|config| config.region()).map(|region| region.to_string());
        Ok(Some(format!(
            "{} value{} from region {}",
            self.resolved.len(),
            if self.resolved.len() == 1 { "" } else { "s" },
            region.unwrap_or_default()
        )))
    }

    fn daemon(&self) -> Result<&Daemon> {
        self.daemon.as_ref().ok_or_else(|| Error::Internal("a login ran before the connection".to_string()))
    }

    async fn login(
        &mut self,
        registry: &Value<String>,
        user: &Value<String>,
        password_origin: &Origin,
    ) -> Result<Option<String>> {
        let registry = match registry {
            Value::Known(host) => host.clone(),
            Value::Ssm(reference) => crate::config::normalise_registry(self.resolved_text(reference)?)
                .map_err(|message| Error::Internal(format!("{reference}: {message}")))?,
        };
        let user = self.value(user)?.trim().to_string();
        let password = match self.config.registry_login.as_ref().map(|login| &login.password.value) {
            Some(Value::Known(secret)) => secret.clone(),
            Some(Value::Ssm(reference)) => Secret::new(crate::config::password_text(self.resolved_text(reference)?)),
            None => return Err(Error::Internal("a login step without a password".to_string())),
        };
        let credential = Credential::new(registry.clone(), user.clone(), password);
        self.check_login(
            &credential,
            &format!("check the user and the password (from {password_origin}) for {registry}"),
        )
        .await?;
        self.credentials.push(credential);
        Ok(Some(format!("logged in as {user}")))
    }

    async fn ecr_login(&mut self, registry: &str, region: Option<&str>) -> Result<Option<String>> {
        let key = region.unwrap_or_default().to_string();
        let prefetched = match self.ecr_prefetch.remove(&key) {
            Some(task) => {
                Some(task.await.map_err(|error| Error::Internal(format!("the ECR token task failed: {error}")))??)
            }
            None => None,
        };
        if let Some(password) = prefetched {
            self.ecr_passwords.insert(key.clone(), password);
        }
        let password = match self.ecr_passwords.get(&key) {
            Some(password) => password.clone(),
            None => {
                let config = self.aws().await.clone();
                let password = aws::ecr_password(&config, region, registry).await?;
                self.ecr_passwords.insert(key, password.clone());
                password
            }
        };
        let credential = Credential::new(registry, "AWS", password);
        self.check_login(
            &credential,
            "check that the registry belongs to the account and region of the build's AWS credentials",
        )
        .await?;
        self.credentials.push(credential);
        Ok(Some("logged in with an ECR token".to_string()))
    }

    /// Starts the ECR token requests of the plan's ECR logins, one per region, in the background.
    async fn prefetch_ecr_tokens(&mut self) {
        if self.config.ecr_logins.is_empty() || !self.ecr_prefetch.is_empty() {
            return;
        }
        let config = self.aws().await.clone();
        for login in &self.config.ecr_logins {
            let key = login.region.clone().unwrap_or_default();
            if self.ecr_prefetch.contains_key(&key) || self.ecr_passwords.contains_key(&key) {
                continue;
            }
            let (config, region, registry) = (config.clone(), login.region.clone(), login.registry.clone());
            let task = tokio::spawn(async move { aws::ecr_password(&config, region.as_deref(), &registry).await });
            self.ecr_prefetch.insert(key, task);
        }
    }

    /// Asks the daemon to log in; a refusal is a login failure naming the registry.
    async fn check_login(&self, credential: &Credential, hint: &str) -> Result<()> {
        match self.daemon()?.auth(&credential.server_address(), &credential.user, &credential.password).await {
            Ok(()) => Ok(()),
            Err(AuthError::Transport(error)) => Err(error),
            Err(AuthError::Refused { status, message }) => Err(Error::Login {
                registry: credential.registry.clone(),
                detail: format!("the registry refused the credentials ({status}: {message})"),
                hint: hint.to_string(),
            }),
        }
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
                    let key = SshKey::parse(self.resolved_text(reference)?, self.config.ssh_key_passphrase.as_ref())
                        .map_err(|error| Error::SshKey { subject: format!("JETS_SSH_KEY ({reference})"), error })?;
                    Ok(Some(Arc::new(key)))
                }
            },
        }
    }

    fn known_hosts_text(&self) -> Result<Option<&str>> {
        match &self.config.known_hosts {
            None => Ok(None),
            Some(sourced) => self.value(&sourced.value).map(Some),
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
            Installed::KeptDifferent => {
                tracing::warn!(
                    "{} already holds a different key and was left untouched: the agent logs in with JETS_SSH_KEY \
                     from memory, but later ssh, git and docker (ssh://) commands will find the other key there, \
                     not JETS_SSH_KEY; to install it for them, pass --ssh-key-file PATH and point ssh at it \
                     (IdentityFile, or ssh -i PATH)",
                    path.display()
                );
                format!("kept the different key in {}; {} is used from memory", path.display(), key.describe())
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

    async fn connect(
        &mut self,
        host: &DockerHost,
        timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Option<String>> {
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
                let session = SshSession::connect(
                    target,
                    &keys,
                    known,
                    Timeouts { connect: timeout, keepalive: read_timeout / 3 },
                )
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
            known.add_pasted(text, "JETS_SSH_KNOWN");
        }
        let path = &self.config.known_hosts_file.value;
        // Read as bytes: a line that is not UTF-8 (a Latin-1 comment) must not make the file unreadable.
        match std::fs::read(path) {
            Ok(bytes) => {
                let bad = known.add(&String::from_utf8_lossy(&bytes), &path.display().to_string());
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
        for line in known.cert_authority_lines() {
            tracing::warn!(
                "{line}: @cert-authority lines are not supported: the agent does not accept host certificates, \
                 so this line lets no host in; add the host's own key (ssh-keyscan) to JETS_SSH_KNOWN"
            );
        }
        Ok(known)
    }

    /// The values of the build's secrets and the keys of its ssh agents, from the configuration
    /// and the resolved `SSM:` references.
    fn session_mounts(&self, build: &crate::config::Build) -> Result<SessionMounts> {
        let mut mounts = SessionMounts::default();
        for secret in &build.secrets {
            let value = match &secret.source {
                SecretSource::Env { value: Value::Known(value), .. } | SecretSource::File { value, .. } => {
                    value.clone()
                }
                SecretSource::Env { value: Value::Ssm(reference), .. } => {
                    SecretBytes::new(self.resolved_text(reference)?.as_bytes().to_vec())
                }
            };
            mounts.secrets.insert(secret.id.clone(), value);
        }
        for forward in &build.ssh {
            let keys = match &forward.keys {
                SshKeys::JetsSshKey => {
                    let key = self.ssh_key()?.ok_or_else(|| {
                        Error::Internal(format!("--ssh {} without JETS_SSH_KEY passed the config check", forward.id))
                    })?;
                    vec![Arc::new(key.key.clone())]
                }
                SshKeys::Files(files) => files.iter().map(|file| Arc::new(file.key.key.clone())).collect(),
            };
            mounts.ssh.push((forward.id.clone(), keys));
        }
        Ok(mounts)
    }

    async fn check_daemon(&mut self) -> Result<Option<String>> {
        let Some(daemon) = self.daemon.as_mut() else {
            return Err(Error::Internal("the daemon check ran before the connection".to_string()));
        };
        let facts = daemon.check().await?;
        // Before any login or upload: --secret and --ssh cannot work on a daemon without BuildKit.
        crate::build_mounts::check_builder_offers_mounts(&self.config.build, &facts)?;
        let summary = facts.summary();
        self.facts = Some(facts);
        Ok(Some(summary))
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
            Step::ResolveSsm { references, .. } => self.resolve_ssm(references).await,
            Step::Connect { host, timeout, read_timeout, .. } => {
                let target = match &host.value {
                    Value::Known(target) => target.clone(),
                    Value::Ssm(reference) => {
                        let text = self.resolved_text(reference)?;
                        DockerHost::parse(text, self.config.tls.is_some()).map_err(|error| {
                            Error::Config(vec![
                                crate::error::Problem::new(format!("DOCKER_HOST ({reference})"), error.message)
                                    .hint(error.hint),
                            ])
                        })?
                    }
                };
                self.prefetch_ecr_tokens().await;
                self.connect(&target, *timeout, *read_timeout).await
            }
            Step::CheckDaemon => self.check_daemon().await,
            Step::Login { registry, user, password } => self.login(&registry.value, &user.value, password).await,
            Step::EcrLogin { registry, region, .. } => self.ecr_login(registry, region.as_deref()).await,
            Step::Build { build, reference, cache_image, registry } => {
                let daemon = self.daemon()?;
                let mut cache_from = Vec::new();
                if let Some(cache_image) = cache_image {
                    let pull = image::pull_for_cache(daemon, cache_image, registry, &self.credentials);
                    if let Ok(true) = tokio::time::timeout(self.config.connect_timeout * 3, pull).await {
                        cache_from.push(cache_image.clone());
                    }
                }
                let context = Context::scan_off_runtime(&build.context, &build.dockerfile).await?;
                let (context_files, context_bytes) = (context.files as u64, context.bytes);
                let request = BuildRequest {
                    context,
                    reference,
                    build,
                    cache_from,
                    mounts: self.session_mounts(build)?,
                    shared_key: crate::session::key::for_build(build, reference),
                };
                let engine = match build.builder.value {
                    Builder::Buildkit => Engine::BuildKit,
                    Builder::Classic => Engine::Classic,
                    Builder::Auto if self.facts.as_ref().is_some_and(Facts::offers_buildkit) => Engine::BuildKit,
                    Builder::Auto => Engine::Classic,
                };
                let summary = image::build(daemon, request, engine, &self.credentials).await?;
                let outcome = format!("{} steps, {} CACHED", summary.steps.len(), summary.cached());
                self.built = Some(Built { engine, summary, context_files, context_bytes });
                Ok(Some(outcome))
            }
            Step::Tag { source, target } => {
                image::tag(self.daemon()?, source, target).await?;
                Ok(None)
            }
            Step::Push { reference, registry } => {
                let pushed = image::push(self.daemon()?, reference, registry, &self.credentials).await?;
                if self.pushed_digest.is_none() {
                    self.pushed_digest = pushed.digest.clone();
                }
                Ok(Some(format!("pushed {pushed}")))
            }
            Step::WriteImageDefinitions { path, container, image_uri } => {
                crate::image_definitions::write(path, container, image_uri)?;
                Ok(Some(format!("wrote {}", path.display())))
            }
            Step::WriteMetadata { path, names, pushed } => {
                let Some(built) = &self.built else {
                    return Err(Error::Internal("the metadata step ran before the build".to_string()));
                };
                let digest = match (pushed, &self.pushed_digest) {
                    (true, Some(digest)) => Some(digest.as_str()),
                    (true, None) => {
                        tracing::warn!("the daemon reported no digest for the push: the metadata has none");
                        None
                    }
                    (false, _) => None,
                };
                let metadata = image::metadata::BuildMetadata {
                    names,
                    digest,
                    engine: built.engine,
                    summary: &built.summary,
                    context_files: built.context_files,
                    context_bytes: built.context_bytes,
                };
                files::write_atomically(path, metadata.to_text().as_bytes(), 0o644, true)?;
                Ok(Some(format!("wrote {}", path.display())))
            }
            Step::WriteDockerConfig { path } => {
                let count = crate::registry::write_config(path, &self.credentials)?;
                Ok(Some(format!("{count} login{} in {}", if count == 1 { "" } else { "s" }, path.display())))
            }
        }
    }
}
