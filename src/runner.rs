//! The run-state and the dispatcher: what earlier steps produced (the resolved configuration, the
//! hosts, the logins, the build) kept for later ones, and each step handed to the domain module
//! that does its work (ssh, aws, hosts, registry, image, image_definitions).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::aws::{self, EcrTokens};
use crate::budget::{self, Budget, Pruned};
use crate::build_mounts::SessionMounts;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::hosts::{Access, Candidate, Hosts, Slot};
use crate::image::{self, BuildStep, metadata::Built};
use crate::plan::{Mode, Step, StepRunner};
use crate::registry::{self, Credential};
use crate::resolve::Resolved;
use crate::secrets::{Origin, SsmRef};
use crate::ssh;

/// A host with more images than this is not asked for its disk use, only its image count (from
/// the check's `/info`) is logged: a 20.10 daemon takes about 0.8 ms per image (and as long for
/// the build cache) to answer `/system/df`, and beside the build and the pushes it slows them
/// (measured: a warm run of the demo app 0.3-1 s slower on a host with 1200 images).
const DISK_USE_MAX_IMAGES: u64 = 300;

/// The prune of each host may take this many connect timeouts (2 minutes by default).
const PRUNE_WAIT_FACTOR: u32 = 6;

/// How long `--check` waits for the host's disk use line after its last step.
const DISK_USE_CHECK_WAIT: Duration = Duration::from_secs(3);

/// What a run holds between its steps.
pub struct Runner<'a> {
    config: &'a Config,
    /// The configuration's values, typed, once its `SSM:` references are resolved.
    resolved: Option<Resolved>,
    /// The AWS SDK configuration, loaded on first use.
    aws: Option<aws_config::SdkConfig>,
    /// ECR passwords by region, asked for while the hosts are connected.
    ecr_tokens: EcrTokens,
    /// The hosts, once connected.
    hosts: Option<Hosts>,
    /// The registries logged into, for config.json, builds and pushes.
    pub credentials: Vec<Credential>,
    /// What the build did, for the metadata file.
    built: Option<Built>,
    /// The manifest digest of the first push, for the metadata file.
    pushed_digest: Option<String>,
}

impl<'a> Runner<'a> {
    pub fn new(config: &'a Config) -> Self {
        Runner {
            config,
            resolved: None,
            aws: None,
            ecr_tokens: EcrTokens::default(),
            hosts: None,
            credentials: Vec::new(),
            built: None,
            pushed_digest: None,
        }
    }

    async fn aws(&mut self) -> aws_config::SdkConfig {
        if let Some(config) = &self.aws {
            return config.clone();
        }
        let region = self.config.region.as_ref().map(|region| region.value.as_str());
        let config = aws::sdk_config(region, self.config.connect_timeout).await;
        self.aws = Some(config.clone());
        config
    }

    /// The typed configuration; without `SSM:` references it needs no step to resolve it.
    fn resolved(&mut self) -> Result<&Resolved> {
        if self.resolved.is_none() {
            if !self.config.ssm_references().is_empty() {
                return Err(Error::Internal("an SSM: reference was used before it was resolved".to_string()));
            }
            self.resolved = Some(Resolved::new(self.config, &BTreeMap::new())?);
        }
        self.resolved.as_ref().ok_or_else(|| Error::Internal("resolved above".to_string()))
    }

    fn hosts(&self) -> Result<&Hosts> {
        self.hosts.as_ref().ok_or_else(|| Error::Internal("a step needed a host before the connection".to_string()))
    }

    async fn resolve_ssm(&mut self, references: &[(Origin, SsmRef)]) -> Result<String> {
        let config = self.aws().await;
        let parameters = aws::resolve_ssm(&config, references).await?;
        let values: BTreeMap<SsmRef, String> =
            parameters.into_iter().map(|(reference, parameter)| (reference, parameter.value)).collect();
        self.resolved = Some(Resolved::new(self.config, &values)?);
        Ok(format!(
            "{} value{} from region {}",
            values.len(),
            if values.len() == 1 { "" } else { "s" },
            config.region().map(|region| region.to_string()).unwrap_or_default()
        ))
    }

    async fn connect(&mut self) -> Result<String> {
        if !self.config.ecr_logins.is_empty() {
            let config = self.aws().await;
            let logins = self.config.ecr_logins.iter();
            self.ecr_tokens.prefetch(&config, logins.map(|login| (login.registry.as_str(), login.region.as_deref())));
        }
        let config = self.config;
        let resolved = self.resolved()?;
        let access = Access {
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            tls: config.tls.as_ref(),
            ssh_key_file: &config.ssh_key_file.value,
            ssh_key_passphrase: config.ssh_key_passphrase.as_ref(),
            known_hosts_file: &config.known_hosts_file.value,
        };
        let candidate = Candidate {
            target: resolved.host.clone(),
            ssh_key: resolved.ssh_key.clone(),
            known_hosts: resolved.known_hosts.clone(),
        };
        let hosts = Hosts::connect(&[Slot::single("", candidate)], &access).await?;
        let transports: Vec<&str> = hosts.iter().map(|host| host.target.transport()).collect();
        self.hosts = Some(hosts);
        Ok(format!("connected over {}", transports.join(", ")))
    }

    async fn check_hosts(&mut self) -> Result<String> {
        let hosts = self.hosts.as_mut().ok_or_else(|| Error::Internal("the check ran before the connection".into()))?;
        hosts.check().await?;
        hosts.start_disk_use(DISK_USE_MAX_IMAGES);
        // Before any login or upload: --secret and --ssh cannot work on a daemon without BuildKit.
        for facts in hosts.iter().filter_map(|host| host.facts.as_ref()) {
            crate::build_mounts::check_builder_offers_mounts(&self.config.build, facts)?;
        }
        Ok(hosts.summary())
    }

    async fn login(&mut self, password_origin: &Origin) -> Result<String> {
        let login = self.resolved()?.registry_login.clone();
        let login = login.ok_or_else(|| Error::Internal("a login step without a login".to_string()))?;
        let credential = Credential::new(login.registry.clone(), login.user.clone(), login.password);
        let hint = format!("check the user and the password (from {password_origin}) for {}", login.registry);
        for host in self.hosts()?.iter() {
            registry::log_in(&host.daemon, &credential, &hint).await?;
        }
        self.credentials.push(credential);
        Ok(format!("logged in as {}", login.user))
    }

    async fn ecr_login(&mut self, registry: &str, region: Option<&str>) -> Result<String> {
        let config = self.aws().await;
        let password = self.ecr_tokens.password(&config, region, registry).await?;
        let credential = Credential::new(registry, "AWS", password);
        let hint = "check that the registry belongs to the account and region of the build's AWS credentials";
        for host in self.hosts()?.iter() {
            registry::log_in(&host.daemon, &credential, hint).await?;
        }
        self.credentials.push(credential);
        Ok("logged in with an ECR token".to_string())
    }

    /// Prunes the build cache of every host the run built on down to `budget`. Never fails the run:
    /// a host's failure is a warning, and the outcome says what each host freed.
    async fn prune_cache(&self, budget: &Budget) -> String {
        let Ok(hosts) = self.hosts() else { return "no host".to_string() };
        let classic = self.built.as_ref().is_some_and(|built| built.engine == image::Engine::Classic);
        let outcomes = futures_util::future::join_all(hosts.iter().map(|host| async move {
            let buildkit = host.facts.as_ref().is_some_and(|facts| facts.offers_buildkit());
            let mut pruned = Pruned::default();
            let prune = async {
                if buildkit {
                    budget::prune_build_cache(&host.daemon, budget, &mut pruned).await?;
                }
                if classic {
                    budget::prune_dangling_images(&host.daemon, budget, &mut pruned).await?;
                }
                Ok::<_, Error>(())
            };
            // A big cache takes BuildKit a while to prune, but a hung daemon must not hold the run.
            let limit = self.config.connect_timeout * PRUNE_WAIT_FACTOR;
            let failure = match tokio::time::timeout(limit, prune).await {
                Ok(Ok(())) => return pruned.summary(buildkit, classic),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {}s (the daemon may go on pruning)", limit.as_secs()),
            };
            tracing::warn!("{}: the build cache was not pruned: {failure}", host.target);
            "not pruned (see the warning)".to_string()
        }))
        .await;
        let several = outcomes.len() > 1;
        let lines: Vec<String> = hosts
            .iter()
            .zip(outcomes)
            .map(|(host, outcome)| if several { format!("{}: {outcome}", host.target) } else { outcome })
            .collect();
        lines.join("; ")
    }

    /// Closes what the run opened.
    pub async fn finish(&mut self) {
        if let Some(mut hosts) = self.hosts.take() {
            hosts.close().await;
        }
    }
}

impl StepRunner for Runner<'_> {
    async fn run(&mut self, step: &Step) -> Result<Option<String>> {
        let outcome = match step {
            Step::ResolveSsm { references, .. } => self.resolve_ssm(references).await?,
            Step::InstallSshKey { path, .. } => match self.resolved()?.ssh_key.clone() {
                Some(key) => ssh::install::install_key(path, &key, self.config.ssh_key_passphrase.as_ref())?,
                None => "no JETS_SSH_KEY".to_string(),
            },
            Step::InstallKnownHosts { path, .. } => match &self.resolved()?.known_hosts {
                Some(text) => ssh::install::install_known_hosts(path, text)?,
                None => "no JETS_SSH_KNOWN".to_string(),
            },
            Step::Connect { .. } => self.connect().await?,
            Step::CheckDaemon => self.check_hosts().await?,
            Step::Login { password, .. } => self.login(password).await?,
            Step::EcrLogin { registry, region, .. } => self.ecr_login(registry, region.as_deref()).await?,
            Step::Build { build, reference, cache_image, registry } => {
                let mounts = SessionMounts::new(build, self.resolved()?)?;
                let request = BuildStep {
                    build,
                    reference,
                    cache_image: cache_image.as_deref(),
                    registry,
                    mounts,
                    cache_wait: self.config.connect_timeout * 3,
                };
                let built = image::build_on(self.hosts()?.for_slot(0)?, request, &self.credentials).await?;
                let outcome = format!("{} steps, {} CACHED", built.summary.steps.len(), built.summary.cached());
                self.built = Some(built);
                outcome
            }
            Step::Tag { source, target } => {
                image::tag(&self.hosts()?.for_slot(0)?.daemon, source, target).await?;
                return Ok(None);
            }
            Step::Push { reference, registry } => {
                let pushed =
                    image::push(&self.hosts()?.for_slot(0)?.daemon, reference, registry, &self.credentials).await?;
                if self.pushed_digest.is_none() {
                    self.pushed_digest = pushed.digest.clone();
                }
                format!("pushed {pushed}")
            }
            Step::WriteImageDefinitions { path, container, image_uri } => {
                crate::image_definitions::write(path, container, image_uri)?;
                format!("wrote {}", path.display())
            }
            Step::WriteMetadata { path, names, pushed } => {
                let built = self
                    .built
                    .as_ref()
                    .ok_or_else(|| Error::Internal("the metadata step ran before the build".into()))?;
                image::metadata::write(path, names, *pushed, built, self.pushed_digest.as_deref())?;
                format!("wrote {}", path.display())
            }
            Step::PruneCache { budget } => self.prune_cache(&budget.value).await,
            Step::WriteDockerConfig { path } => {
                let count = registry::write_config(path, &self.credentials)?;
                format!("{count} login{} in {}", if count == 1 { "" } else { "s" }, path.display())
            }
        };
        Ok(Some(outcome))
    }

    async fn after_steps(&mut self, mode: Mode) {
        // The disk use line: `--check` is asked for what the host is like, so it waits for it a
        // little; a run never waits (the line comes while the build and the pushes go on, or not at
        // all).
        let wait = match mode {
            Mode::Check => self.config.connect_timeout.min(DISK_USE_CHECK_WAIT),
            Mode::Run | Mode::Dry => Duration::ZERO,
        };
        if let Some(hosts) = self.hosts.as_mut() {
            hosts.settle_disk_use(wait).await;
        }
    }
}
