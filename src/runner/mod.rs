//! The run-state and the dispatcher: what earlier steps produced (the resolved configuration, the
//! hosts, the logins, each slot's build) kept for later ones, and each step handed to the domain
//! that does its work (ssh, aws, nodes, registry, image), or to the slot's build ([`slot`]): the
//! one path every build goes through. [`placement`] says where each build ran, for the metadata.

mod placement;
pub mod slot;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::aws::ec2::{InstanceAccess, is_instance_id};
use crate::aws::{self, EcrTokens};
use crate::config::Config;
use crate::config::resolve::Resolved;
use crate::docker::budget::{self, Budget, Pruned};
use crate::docker::host::Tls;
use crate::error::{Error, Result};
use crate::image;
use crate::nodes::{Access, Host, Hosts};
use crate::plan::{BuildFigures, Mode, Step, StepRunner, Timings};
use crate::registry::index::PlatformImage;
use crate::registry::reference::{Platform, Repository};
use crate::registry::{self, Credential};
use crate::secrets::{Origin, SsmRef};
use crate::ssh;
use slot::{Comparison, SlotBuild, TagPush};

/// A host with more images than this is not asked for its disk use, only its image count (from
/// the check's `/info`) is logged: a 20.10 daemon takes about 0.8 ms per image (and as long for
/// the build cache) to answer `/system/df`, and beside the build and the pushes it slows them
/// (measured: a warm run of the demo app 0.3-1 s slower on a host with 1200 images).
const DISK_USE_MAX_IMAGES: u64 = 300;

/// The prune of each host may take this many connect timeouts (2 minutes by default).
const PRUNE_WAIT_FACTOR: u32 = 6;

/// The metadata file's key for where the run's time went, up to the step that writes it.
const TIMINGS_KEY: &str = "agent.timings";

/// How long `--check` waits for the host's disk use line after its last step.
const DISK_USE_CHECK_WAIT: Duration = Duration::from_secs(3);

/// What a run holds between its steps.
pub struct Runner<'a> {
    /// The configuration, read by the one step that resolves it (its `SSM:` references fetched).
    config: &'a Config,
    /// The run's connect timeout, which also bounds the registry's answers, the cache pull (three)
    /// and the prune (six); and the AWS region (`AWS_REGION`) for SSM and ECR tokens.
    connect_timeout: Duration,
    region: Option<String>,
    /// The configuration's values, typed: from the start when it holds no `SSM:` reference, else
    /// once the step that fetches them has run.
    resolved: Option<Resolved>,
    /// The AWS SDK configuration, loaded on first use.
    aws: Option<aws_config::SdkConfig>,
    /// ECR passwords by region, asked for while the hosts are connected.
    ecr_tokens: EcrTokens,
    /// The hosts, once connected.
    hosts: Option<Hosts>,
    /// The platforms of a multi-platform run, as the connect step placed them.
    platforms: Vec<crate::config::platforms::PlatformHost>,
    /// The registries logged into, for config.json, builds and pushes.
    pub credentials: Vec<Credential>,
    /// Each slot's build (one for a single-platform run), in slot order.
    slots: Vec<SlotBuild>,
    /// The manifest digest of the image index (multi-platform runs), for the metadata file.
    index_digest: Option<String>,
    /// How the hosts were reached, kept for a failover after the connection.
    reach: Option<Reach>,
}

/// The connect step's settings, owned: what [`Access`] borrows for a failover during the build.
struct Reach {
    read_timeout: Duration,
    failover_timeout: Duration,
    tls: Option<Tls>,
    ssh_key_file: std::path::PathBuf,
    known_hosts_file: std::path::PathBuf,
    instances: Option<InstanceAccess>,
}

impl<'a> Runner<'a> {
    /// A run of `config`; without `SSM:` references, its values are typed here, before any step.
    pub fn new(config: &'a Config) -> Result<Self> {
        let resolved = match config.ssm_references().is_empty() {
            true => Some(Resolved::new(config, &BTreeMap::new())?),
            false => None,
        };
        Ok(Runner {
            config,
            connect_timeout: config.connect_timeout,
            region: config.region.as_ref().map(|region| region.value.clone()),
            resolved,
            aws: None,
            ecr_tokens: EcrTokens::default(),
            hosts: None,
            platforms: Vec::new(),
            credentials: Vec::new(),
            slots: Vec::new(),
            index_digest: None,
            reach: None,
        })
    }

    async fn aws(&mut self) -> aws_config::SdkConfig {
        if let Some(config) = &self.aws {
            return config.clone();
        }
        let config = aws::sdk_config(self.region.as_deref(), self.connect_timeout).await;
        self.aws = Some(config.clone());
        config
    }

    /// The typed configuration.
    fn resolved(&self) -> Result<&Resolved> {
        let unresolved = || Error::Internal("an SSM: reference was used before it was resolved".to_string());
        self.resolved.as_ref().ok_or_else(unresolved)
    }

    fn hosts(&self) -> Result<&Hosts> {
        self.hosts.as_ref().ok_or_else(|| Error::Internal("a step needed a host before the connection".to_string()))
    }

    /// The single-platform run's one slot, its host, and the logins.
    fn single_slot(&mut self) -> Result<(&mut SlotBuild, &Host, &[Credential])> {
        let host = self.hosts.as_ref().ok_or_else(|| Error::Internal("a build step before the connection".into()))?;
        let slot = self.slots.first_mut().ok_or_else(|| Error::Internal("a step of the build before it".into()))?;
        Ok((slot, host.for_slot(0)?, &self.credentials))
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

    async fn connect(&mut self, step: &Step) -> Result<String> {
        let Step::Connect {
            timeout,
            start_timeout,
            host_address,
            read_timeout,
            tls,
            pool,
            platforms,
            repository,
            ssh_key_file,
            known_hosts_file,
            ecr_registries,
            ..
        } = step
        else {
            return Err(Error::Internal("the connection from another step".into()));
        };
        if !ecr_registries.is_empty() {
            let config = self.aws().await;
            let logins = ecr_registries.iter();
            self.ecr_tokens.prefetch(&config, logins.map(|(registry, region)| (registry.as_str(), region.as_deref())));
        }
        self.platforms = platforms.clone();
        let slots = self.resolved()?.slots(repository);
        // EC2 is asked only when a host is an instance (`ssh://user@i-…`).
        let any_instance = slots.iter().flat_map(|slot| &slot.candidates).any(|candidate| {
            matches!(&candidate.target, crate::docker::host::DockerHost::Ssh { host, .. } if is_instance_id(host))
        });
        let instances = match any_instance {
            true => {
                Some(InstanceAccess { aws: self.aws().await, address: *host_address, start_timeout: *start_timeout })
            }
            false => None,
        };
        let resolved = self.resolved()?;
        let tls = tls.as_ref().map(|cert_dir| Tls { cert_dir: cert_dir.clone() });
        let access = Access {
            connect_timeout: *timeout,
            read_timeout: *read_timeout,
            tls: tls.as_ref(),
            ssh_key_file,
            ssh_key_passphrase: resolved.ssh_key_passphrase.as_ref(),
            known_hosts_file,
            instances: instances.as_ref(),
        };
        let failover_timeout = pool.as_ref().map_or(*timeout, |pool| pool.failover_timeout);
        let hosts = Hosts::connect_with_failover(&slots, &access, failover_timeout).await?;
        let single = resolved.platforms.is_empty();
        let target = &hosts.for_slot(0)?.target;
        // Where each build goes when its chosen host did not answer (a platform's own host has no
        // next); platforms that went the same way (the same pool) in one line.
        let mut moves = Vec::new();
        for (index, slot) in slots.iter().enumerate() {
            let failed = hosts.failed_for_slot(index);
            if failed.is_empty() {
                continue;
            }
            let target = &hosts.for_slot(index)?.target;
            let failed: Vec<String> = failed.iter().map(|host| format!("{} ({})", host.target, host.class)).collect();
            moves.push(((target, failed), slot.name.as_str()));
        }
        for ((target, failed), names) in crate::nodes::grouped(moves) {
            let what = if names.is_empty() { String::new() } else { format!("{}: ", names.join(", ")) };
            if resolved.on_fallback(target) {
                tracing::warn!(
                    "{what}no host of the pool answered ({}): building on the fallback {target}, whose cache may be \
                     cold",
                    failed.join(", ")
                );
            } else {
                tracing::warn!("{what}building on {target}, failed over from {}", failed.join(", "));
            }
        }
        let transports: Vec<&str> = hosts.iter().map(|host| host.target.transport()).collect();
        let mut outcome = format!("connected over {}", transports.join(", "));
        if resolved.hosts.len() > 1 || resolved.fallback_host.is_some() {
            if single {
                outcome.push_str(&format!(" to {target}"));
            } else {
                // Where the pool put each platform (a platform's own host is in the plan).
                let placed = slots
                    .iter()
                    .enumerate()
                    .map(|(index, slot)| Ok(format!("{} on {}", slot.name, hosts.for_slot(index)?.target)))
                    .collect::<Result<Vec<String>>>()?;
                outcome.push_str(&format!(" ({})", placed.join(", ")));
            }
        }
        self.hosts = Some(hosts);
        self.reach = Some(Reach {
            read_timeout: *read_timeout,
            failover_timeout,
            tls,
            ssh_key_file: ssh_key_file.clone(),
            known_hosts_file: known_hosts_file.clone(),
            instances,
        });
        Ok(outcome)
    }

    /// Slot `slot`'s host failed the build on its own before it carried out any step: the slot's
    /// next host takes it (see [`Hosts::fail_over`]), with a warning. Whether one did.
    async fn fail_over(&mut self, slot: usize, error: &Error) -> Result<bool> {
        let reach = self.reach.as_ref().ok_or_else(|| Error::Internal("a failover before the connection".into()))?;
        let resolved = self.resolved.as_ref().ok_or_else(|| Error::Internal("a failover before the values".into()))?;
        let access = Access {
            connect_timeout: self.connect_timeout,
            read_timeout: reach.read_timeout,
            tls: reach.tls.as_ref(),
            ssh_key_file: &reach.ssh_key_file,
            ssh_key_passphrase: resolved.ssh_key_passphrase.as_ref(),
            known_hosts_file: &reach.known_hosts_file,
            instances: reach.instances.as_ref(),
        };
        let hosts = self.hosts.as_mut().ok_or_else(|| Error::Internal("a failover before the connection".into()))?;
        let failed = hosts.for_slot(slot)?.target.to_string();
        let class =
            crate::error::exit::TABLE.iter().find(|row| row.0 == error.exit_code()).map_or("error", |row| row.1);
        let Some(host) = hosts.fail_over(slot, error, &access, reach.failover_timeout).await? else {
            return Ok(false);
        };
        let target = host.target.to_string();
        let fallback = if resolved.on_fallback(&host.target) { " (the fallback, whose cache may be cold)" } else { "" };
        tracing::warn!(
            "{failed} failed the build before it ran any step [{class}]: {}; {target}{fallback} takes the build",
            crate::secrets::redact(&error.to_string())
        );
        Ok(true)
    }

    async fn check_hosts(&mut self, needs_buildkit: &[&'static str]) -> Result<String> {
        let hosts = self.hosts.as_mut().ok_or_else(|| Error::Internal("the check ran before the connection".into()))?;
        hosts.check().await?;
        hosts.start_disk_use(DISK_USE_MAX_IMAGES);
        // Before any login or upload: --secret and --ssh cannot work on a daemon without BuildKit.
        for facts in hosts.iter().filter_map(|host| host.facts.as_ref()) {
            crate::config::mounts::check_builder_offers_mounts(needs_buildkit, facts)?;
        }
        let summary = hosts.summary();
        self.warn_of_emulation()?;
        Ok(summary)
    }

    /// A warning for each platform that its host runs under emulation (QEMU): much slower.
    fn warn_of_emulation(&self) -> Result<()> {
        let hosts = self.hosts()?;
        for (slot, each) in self.platforms.iter().enumerate() {
            let host = hosts.for_slot(slot)?;
            let Some(facts) = &host.facts else { continue };
            let arch = each.platform.architecture.as_str();
            if same_arch(&facts.arch, arch) {
                continue;
            }
            match &each.host {
                None => tracing::warn!(
                    "{} builds emulated on {} ({} host): no DOCKER_HOST_{} is set; emulation is often 10-20x slower",
                    each.platform,
                    host.target,
                    facts.arch,
                    arch.to_ascii_uppercase()
                ),
                Some(given) => tracing::warn!(
                    "{} builds emulated on {} (from {}): its daemon is {}",
                    each.platform,
                    host.target,
                    given.origin,
                    facts.arch
                ),
            }
        }
        Ok(())
    }

    /// The single-platform run's build: its slot made, built on the slot's host.
    async fn build(&mut self, step: &Step) -> Result<String> {
        let Step::Build { build, image, tags, push, compare } = step else {
            return Err(Error::Internal("the build from another step".into()));
        };
        loop {
            let mounts = crate::config::resolve::session_mounts(build, self.resolved()?)?;
            self.slots = vec![SlotBuild::new(image, tags, None, &build.spec, *push, *compare, self.connect_timeout)];
            let (slot, host, credentials) = self.single_slot()?;
            let error = match slot.build(host, mounts, credentials).await {
                Ok(built) => {
                    let (steps, cached) = built.step_counts();
                    return Ok(format!("{steps} steps, {cached} CACHED"));
                }
                Err(error) => error,
            };
            // A pool's next host takes a build its host failed before running anything.
            if !error.host_failed_before_any_step() || !self.fail_over(0, &error).await? {
                return Err(error);
            }
        }
    }

    /// Builds every platform at once, each on its slot's host, and tags and pushes it from there
    /// as `TAG-<arch>`; the first failure ends the others and is the outcome, naming its platform.
    async fn build_platforms(&mut self, step: &Step) -> Result<String> {
        use tracing::Instrument as _;
        let Step::BuildPlatforms { build, image, tags, platforms, push, compare } = step else {
            return Err(Error::Internal("the platforms' builds from another step".into()));
        };
        let mounts = platforms
            .iter()
            .map(|_| crate::config::resolve::session_mounts(build, self.resolved()?))
            .collect::<Result<Vec<_>>>()?;
        let timeout = self.connect_timeout;
        let mut slots: Vec<SlotBuild> = platforms
            .iter()
            .map(|platform| SlotBuild::new(image, tags, Some(platform), &build.spec, *push, *compare, timeout))
            .collect();
        let hosts = self.hosts()?;
        let credentials = &self.credentials;
        let jobs = slots.iter_mut().zip(mounts).enumerate().map(|(index, (slot, mounts))| {
            let platform = slot.platform.clone().map(|platform| platform.to_string()).unwrap_or_default();
            let span = tracing::info_span!(crate::output::PLATFORM_SPAN, platform = %platform);
            async move {
                let host = hosts.for_slot(index)?;
                slot.complete(host, mounts, credentials).await
            }
            .instrument(span)
            .map(move |result: Result<()>| {
                result.map_err(|error| Error::Platform { platform: platform.clone(), source: Box::new(error) })
            })
        });
        futures_util::future::try_join_all(jobs).await?;
        let mut outcome = Vec::new();
        for slot in &slots {
            let built = slot.built.as_ref().ok_or_else(|| Error::Internal("a platform's build is missing".into()))?;
            let platform = slot.platform.as_ref().map(ToString::to_string).unwrap_or_default();
            let (steps, cached) = built.step_counts();
            outcome.push(format!("{platform} {steps} steps, {cached} CACHED"));
        }
        self.slots = slots;
        Ok(outcome.join("; "))
    }

    /// Pushes the index of every platform's image under each tag.
    async fn push_index(&mut self, image: &Repository, tags: &[String], platforms: &[Platform]) -> Result<String> {
        let mut images = Vec::new();
        for platform in platforms {
            let slot = self.slots.iter().find(|slot| slot.platform.as_ref() == Some(platform));
            let slot = slot.ok_or_else(|| Error::Internal(format!("no build of {platform} for the index")))?;
            let digest = slot.digest.clone().ok_or_else(|| Error::Push {
                reference: image.with_tag(&slot.tags[0]),
                registry: image.registry().to_string(),
                message: "the daemon reported no digest for the push, so no index can name it".to_string(),
            })?;
            images.push(PlatformImage { platform: platform.clone(), digest });
        }
        let credential = self.credentials.iter().find(|credential| credential.registry == image.registry());
        let pushed = crate::registry::index::push_index(image, credential, tags, &images, self.connect_timeout).await?;
        self.index_digest = Some(pushed.digest.clone());
        Ok(format!("pushed {} ({}) under {}", pushed.digest, pushed.media_type, pushed.tags.join(", ")))
    }

    async fn login(&mut self, password_origin: &Origin) -> Result<String> {
        let login = self.resolved()?.registry_login.clone();
        let login = login.ok_or_else(|| Error::Internal("a login step without a login".to_string()))?;
        let credential = Credential::new(login.registry.clone(), login.user.clone(), login.password);
        let hint = format!("check the user and the password (from {password_origin}) for {}", login.registry);
        // Every host at once (the hosts of a multi-platform run).
        let checks = self.hosts()?.iter().map(|host| registry::log_in(&host.daemon, &credential, &hint));
        futures_util::future::try_join_all(checks).await?;
        self.credentials.push(credential);
        Ok(format!("logged in as {}", login.user))
    }

    async fn ecr_login(&mut self, registry: &str, region: Option<&str>) -> Result<String> {
        let config = self.aws().await;
        let password = self.ecr_tokens.password(&config, region, registry).await?;
        let credential = Credential::new(registry, "AWS", password);
        let hint = "check that the registry belongs to the account and region of the build's AWS credentials";
        let checks = self.hosts()?.iter().map(|host| registry::log_in(&host.daemon, &credential, hint));
        futures_util::future::try_join_all(checks).await?;
        self.credentials.push(credential);
        Ok("logged in with an ECR token".to_string())
    }

    /// Prunes the build cache of every host the run built on down to `budget`. Never fails the run:
    /// a host's failure is a warning, and the outcome says what each host freed.
    async fn prune_cache(&self, budget: &Budget) -> String {
        let Ok(hosts) = self.hosts() else { return "no host".to_string() };
        // The classic builder leaves dangling images on the hosts it built on (each platform's own).
        let classic_on: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.built.as_ref().is_some_and(|built| built.engine == image::Engine::Classic))
            .filter_map(|(index, _)| hosts.for_slot(index).ok().map(|host| host.target.to_string()))
            .collect();
        let classic_on = &classic_on;
        let outcomes = futures_util::future::join_all(hosts.iter().map(|host| async move {
            let buildkit = host.facts.as_ref().is_some_and(|facts| facts.offers_buildkit());
            let classic = classic_on.contains(&host.target.to_string());
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
            let limit = self.connect_timeout * PRUNE_WAIT_FACTOR;
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
    async fn carry_out(&mut self, step: &Step, timings: &Timings) -> Result<Option<String>> {
        let outcome = match step {
            Step::ResolveSsm { references, .. } => self.resolve_ssm(references).await?,
            Step::InstallSshKey { path, .. } => {
                let resolved = self.resolved()?;
                match &resolved.ssh_key {
                    Some(key) if key.instance_connect => ssh::install::keep_in_memory(path, key),
                    Some(key) => ssh::install::install_key(path, key, resolved.ssh_key_passphrase.as_ref())?,
                    None => "no JETS_SSH_KEY".to_string(),
                }
            }
            Step::InstallKnownHosts { path, .. } => match &self.resolved()?.known_hosts {
                Some(text) => ssh::install::install_known_hosts(path, text)?,
                None => "no JETS_SSH_KNOWN".to_string(),
            },
            Step::Connect { .. } => self.connect(step).await?,
            Step::CheckDaemon { needs_buildkit } => self.check_hosts(needs_buildkit).await?,
            Step::Login { password, .. } => self.login(password).await?,
            Step::EcrLogin { registry, region, .. } => self.ecr_login(registry, region.as_deref()).await?,
            Step::Build { .. } => self.build(step).await?,
            Step::BuildPlatforms { .. } => self.build_platforms(step).await?,
            Step::PushIndex { image, tags, platforms } => self.push_index(image, tags, platforms).await?,
            Step::Tag { source, target } => {
                image::tag(&self.hosts()?.for_slot(0)?.daemon, source, target).await?;
                return Ok(None);
            }
            Step::KeepUnchanged { .. } => {
                let (slot, host, credentials) = self.single_slot()?;
                match slot.compare(host, credentials).await? {
                    Comparison::Classic => "built with the classic builder: every tag is pushed".to_string(),
                    Comparison::Changed(reason) => format!("changed ({reason}): every tag is pushed"),
                    Comparison::Unchanged(kept) => {
                        format!("the registry's {} is this image: kept, nothing pushed", kept.digest)
                    }
                }
            }
            Step::Push { reference, .. } => {
                let (slot, host, credentials) = self.single_slot()?;
                match slot.push(host, reference, credentials).await? {
                    TagPush::Kept(line) => line,
                    TagPush::Pushed(pushed) => format!("pushed {pushed}"),
                }
            }
            Step::WriteImageDefinitions { path, container, image_uri } => {
                crate::image::definitions::write(path, container, image_uri)?;
                format!("wrote {}", path.display())
            }
            Step::WriteMetadata { path, names, pushed, platforms } if !platforms.is_empty() => {
                let (resolved, hosts) = (self.resolved()?, self.hosts()?);
                let mut placement = placement::of_run(resolved, hosts)?;
                placement.insert(TIMINGS_KEY.to_string(), timings.to_json());
                let mut builds = Vec::new();
                for (index, slot) in self.slots.iter().enumerate() {
                    let built =
                        slot.built.clone().ok_or_else(|| Error::Internal("a platform's build is missing".into()))?;
                    builds.push(crate::image::metadata::PlatformBuilt {
                        platform: slot.platform.as_ref().map(ToString::to_string).unwrap_or_default(),
                        host: hosts.for_slot(index)?.target.to_string(),
                        names: slot.references(),
                        built,
                        digest: slot.digest.clone().filter(|_| *pushed),
                        placement: placement::of_slot(resolved, hosts, index)?,
                    });
                }
                let digest = self.index_digest.as_deref().filter(|_| *pushed);
                image::metadata::write_platforms(path, names, digest, &builds, &placement)?;
                format!("wrote {}", path.display())
            }
            Step::WriteMetadata { path, names, pushed, .. } => {
                let mut placement = placement::of_slot(self.resolved()?, self.hosts()?, 0)?;
                placement.insert(TIMINGS_KEY.to_string(), timings.to_json());
                let slot = self
                    .slots
                    .first()
                    .ok_or_else(|| Error::Internal("the metadata step ran before the build".into()))?;
                let built = slot
                    .built
                    .as_ref()
                    .ok_or_else(|| Error::Internal("the metadata step ran before the build".into()))?;
                image::metadata::write(path, names, *pushed, built, slot.digest.as_deref(), &placement)?;
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

    fn build_figures(&self) -> BuildFigures {
        // A multi-platform run's builds go at once: the longest context is the one waited for.
        let built = self.slots.iter().filter_map(|slot| slot.built.as_ref());
        built.fold(BuildFigures::default(), |figures, built| {
            let (steps, cached) = built.step_counts();
            BuildFigures {
                context: figures.context.max(built.context_time),
                steps: figures.steps + steps,
                cached: figures.cached + cached,
            }
        })
    }

    async fn after_steps(&mut self, mode: Mode) {
        // The disk use line: `--check` is asked for what the host is like, so it waits for it a
        // little; a run never waits (the line comes while the build and the pushes go on, or not at
        // all).
        let wait = match mode {
            Mode::Check => self.connect_timeout.min(DISK_USE_CHECK_WAIT),
            Mode::Run | Mode::Dry => Duration::ZERO,
        };
        if let Some(hosts) = self.hosts.as_mut() {
            hosts.settle_disk_use(wait).await;
        }
    }
}

/// Whether a daemon's architecture (`docker version`'s, Go's names) is `arch` (a platform's).
fn same_arch(daemon: &str, arch: &str) -> bool {
    fn canonical(name: &str) -> &str {
        match name {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    }
    canonical(daemon) == canonical(arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemons_arch_matches_a_platforms_by_either_name() {
        assert!(same_arch("amd64", "amd64") && same_arch("x86_64", "amd64") && same_arch("aarch64", "arm64"));
        assert!(!same_arch("amd64", "arm64"));
    }
}
