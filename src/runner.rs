//! The run-state and the dispatcher: what earlier steps produced (the resolved configuration, the
//! hosts, the logins, the build) kept for later ones, and each step handed to the domain module
//! that does its work (ssh, aws, hosts, registry, image, image_definitions).

use std::collections::BTreeMap;

use crate::aws::{self, EcrTokens};
use crate::build_mounts::SessionMounts;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::hosts::{Access, Hosts, Slot, pool_candidates};
use crate::image::{self, BuildStep, metadata::Built};
use crate::plan::{Step, StepRunner};
use crate::registry::{self, Credential};
use crate::resolve::Resolved;
use crate::secrets::{Origin, SsmRef};
use crate::ssh;

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
        let candidates = pool_candidates(resolved, &config.image.value.to_string());
        let slot = Slot { name: String::new(), candidates };
        let hosts = Hosts::connect_with_failover(&[slot], &access, config.failover_timeout).await?;
        let target = &hosts.for_slot(0)?.target;
        if !hosts.failed().is_empty() {
            let failed: Vec<String> =
                hosts.failed().iter().map(|host| format!("{} ({})", host.target, host.class)).collect();
            if resolved.fallback_host.as_ref() == Some(target) && !resolved.hosts.contains(target) {
                tracing::warn!(
                    "no host of the pool answered ({}): building on the fallback {target}, whose cache may be cold",
                    failed.join(", ")
                );
            } else {
                tracing::warn!("building on {target}, failed over from {}", failed.join(", "));
            }
        }
        let transports: Vec<&str> = hosts.iter().map(|host| host.target.transport()).collect();
        let mut outcome = format!("connected over {}", transports.join(", "));
        if resolved.hosts.len() > 1 || resolved.fallback_host.is_some() {
            outcome.push_str(&format!(" to {target}"));
        }
        self.hosts = Some(hosts);
        Ok(outcome)
    }

    async fn check_hosts(&mut self) -> Result<String> {
        let hosts = self.hosts.as_mut().ok_or_else(|| Error::Internal("the check ran before the connection".into()))?;
        hosts.check().await?;
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

    /// Where the build ran, for the metadata file: `agent.host`, and when a host did not answer,
    /// `agent.failed_hosts` (each with why) and `agent.fallback` (whether the fallback built it).
    fn placement(&mut self) -> Result<serde_json::Map<String, serde_json::Value>> {
        use serde_json::json;
        let fallback_host = self.resolved()?.fallback_host.clone();
        let in_pool = |target| self.resolved.as_ref().is_some_and(|resolved| resolved.hosts.contains(target));
        let hosts = self.hosts()?;
        let target = &hosts.for_slot(0)?.target;
        let mut placement = serde_json::Map::new();
        placement.insert("agent.host".to_string(), json!(target.to_string()));
        if !hosts.failed().is_empty() {
            let failed: Vec<serde_json::Value> = hosts
                .failed()
                .iter()
                .map(|host| json!({ "host": host.target.to_string(), "class": host.class, "error": host.reason }))
                .collect();
            placement.insert("agent.failed_hosts".to_string(), json!(failed));
        }
        if fallback_host.is_some() {
            let used = fallback_host.as_ref() == Some(target) && !in_pool(target);
            placement.insert("agent.fallback".to_string(), json!(used));
        }
        Ok(placement)
    }

    /// Closes what the run opened.
    pub async fn finish(&mut self) {
        if let Some(hosts) = self.hosts.take() {
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
                let placement = self.placement()?;
                let built = self
                    .built
                    .as_ref()
                    .ok_or_else(|| Error::Internal("the metadata step ran before the build".into()))?;
                image::metadata::write(path, names, *pushed, built, self.pushed_digest.as_deref(), &placement)?;
                format!("wrote {}", path.display())
            }
            Step::WriteDockerConfig { path } => {
                let count = registry::write_config(path, &self.credentials)?;
                format!("{count} login{} in {}", if count == 1 { "" } else { "s" }, path.display())
            }
        };
        Ok(Some(outcome))
    }
}
