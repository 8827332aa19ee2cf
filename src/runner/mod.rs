//! The run-state and the dispatcher: what earlier steps produced (the resolved configuration, the
//! hosts, the logins, the build) kept for later ones, and each step handed to the domain module
//! that does its work (ssh, aws, hosts, registry, image, image_definitions).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::aws::{self, EcrTokens};
use crate::config::Config;
use crate::config::resolve::Resolved;
use crate::docker::budget::{self, Budget, Pruned};
use crate::error::{Error, Result};
use crate::image::{self, BuildStep, metadata::Built};
use crate::nodes::{Access, Candidate, Hosts, Slot, pool_candidates};
use crate::plan::{Mode, Step, StepRunner};
use crate::registry::index::PlatformImage;
use crate::registry::{self, Credential};
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
    /// The manifest digest of the first push (of the index in a multi-platform run), for the metadata file.
    pushed_digest: Option<String>,
    /// Each platform's pushed image, for the index (multi-platform runs).
    platform_images: Vec<PlatformImage>,
    /// What each platform's build did, for the metadata file (multi-platform runs).
    platform_builds: Vec<crate::image::metadata::PlatformBuilt>,
    /// The registry's image kept instead of pushing this build's (the same image): its tags are
    /// not pushed.
    kept: Option<(crate::registry::reference::Repository, crate::registry::unchanged::Kept)>,
    /// What the registry holds under the tags, asked for while the image builds (for the
    /// comparison before the pushes).
    registry_images: Option<tokio::task::JoinHandle<RegistryImagesResult>>,
}

type RegistryImagesResult = std::result::Result<crate::registry::unchanged::RegistryImages, String>;

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
            platform_images: Vec::new(),
            platform_builds: Vec::new(),
            kept: None,
            registry_images: None,
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
        let repository = config.image.value.to_string();
        let slots = slots(resolved, &repository);
        let hosts = Hosts::connect_with_failover(&slots, &access, config.failover_timeout).await?;
        let single = resolved.platforms.is_empty();
        let target = &hosts.for_slot(0)?.target;
        // Where each build goes when its chosen host did not answer (a platform's own host has no
        // next); platforms that went the same way (the same pool) in one line.
        let mut moves: Vec<(&crate::docker::host::DockerHost, Vec<String>, Vec<&str>)> = Vec::new();
        for (index, slot) in slots.iter().enumerate() {
            let failed = hosts.failed_for_slot(index);
            if failed.is_empty() {
                continue;
            }
            let target = &hosts.for_slot(index)?.target;
            let failed: Vec<String> = failed.iter().map(|host| format!("{} ({})", host.target, host.class)).collect();
            match moves.iter_mut().find(|(seen, same, _)| *seen == target && *same == failed) {
                Some((.., names)) => names.push(&slot.name),
                None => moves.push((target, failed, vec![&slot.name])),
            }
        }
        for (target, failed, names) in moves {
            let names: Vec<&str> = names.into_iter().filter(|name| !name.is_empty()).collect();
            let what = if names.is_empty() { String::new() } else { format!("{}: ", names.join(", ")) };
            if on_fallback(resolved, target) {
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
        Ok(outcome)
    }

    async fn check_hosts(&mut self) -> Result<String> {
        let hosts = self.hosts.as_mut().ok_or_else(|| Error::Internal("the check ran before the connection".into()))?;
        hosts.check().await?;
        hosts.start_disk_use(DISK_USE_MAX_IMAGES);
        // Before any login or upload: --secret and --ssh cannot work on a daemon without BuildKit.
        for facts in hosts.iter().filter_map(|host| host.facts.as_ref()) {
            crate::config::mounts::check_builder_offers_mounts(&self.config.build, facts)?;
        }
        let summary = hosts.summary();
        self.warn_of_emulation()?;
        Ok(summary)
    }

    /// A warning for each platform that its host runs under emulation (QEMU): much slower.
    fn warn_of_emulation(&self) -> Result<()> {
        let hosts = self.hosts()?;
        for (slot, each) in self.config.build.platform_hosts.iter().enumerate() {
            let host = hosts.for_slot(slot)?;
            let Some(facts) = &host.facts else { continue };
            let arch = each.arch();
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

    /// Builds every platform at once, each on its slot's host, and tags and pushes it from there
    /// as `TAG-<arch>`; the first failure ends the others and is the outcome, naming its platform.
    async fn build_platforms(
        &mut self,
        build: &crate::config::Build,
        image: &crate::registry::reference::Repository,
        tags: &[String],
        platforms: &[String],
        push: bool,
    ) -> Result<String> {
        use tracing::Instrument as _;
        self.resolved()?;
        let hosts = self.hosts()?;
        let resolved = self.resolved.as_ref();
        let registry = image.registry().to_string();
        let cache_wait = self.config.connect_timeout * 3;
        let credentials = &self.credentials;
        let (compares, timeout) = (self.config.compares_with_registry(), self.config.connect_timeout);
        let jobs = platforms.iter().enumerate().map(|(slot, platform)| {
            let registry = registry.clone();
            let span = tracing::info_span!(crate::output::PLATFORM_SPAN, platform = %platform);
            async move {
                let host = hosts.for_slot(slot)?;
                let suffix = crate::config::platforms::tag_suffix(platform);
                let mut build = build.clone();
                build.spec.platform = Some(platform.clone());
                if image::Engine::on(build.spec.builder.value, host.facts.as_ref()) == image::Engine::Classic {
                    add_platform_args(&mut build, platform);
                }
                let mounts = match resolved {
                    Some(resolved) => crate::config::resolve::session_mounts(&build, resolved)?,
                    None => return Err(Error::Internal("the builds ran before the configuration was resolved".into())),
                };
                let references: Vec<String> =
                    tags.iter().map(|tag| image.with_tag(&format!("{tag}-{suffix}"))).collect();
                let cache_image = image.with_tag(&format!("{}-{suffix}", crate::registry::reference::LATEST));
                let request = BuildStep {
                    build: &build.spec,
                    reference: &references[0],
                    cache_image: push.then_some(cache_image.as_str()),
                    registry: &registry,
                    mounts,
                    cache_wait,
                };
                let own_tags: Vec<String> = tags.iter().map(|tag| format!("{tag}-{suffix}")).collect();
                let credential = credentials.iter().find(|credential| credential.registry == registry);
                // What the registry holds under this platform's tags, asked while it builds.
                let registry_images = async {
                    match push && compares {
                        true => Some(
                            crate::registry::unchanged::registry_images(image, &own_tags, credential, timeout).await,
                        ),
                        false => None,
                    }
                };
                let (built, registry_images) = futures_util::future::join(
                    image::build_on(&host.daemon, host.facts.as_ref(), request, credentials),
                    registry_images,
                )
                .await;
                let mut built = built?;
                tracing::info!(
                    "built on {}: {} steps, {} CACHED",
                    host.target,
                    built.summary.steps.len(),
                    built.summary.cached()
                );
                for reference in &references[1..] {
                    image::tag(&host.daemon, &references[0], reference).await?;
                }
                let mut digest = None;
                // The same decision as a single platform's, on this platform's own tags: an
                // unchanged platform keeps its manifest, so the index of unchanged platforms is too.
                if let Some(registry_images) = registry_images.filter(|_| built.engine == image::Engine::BuildKit) {
                    let verdict =
                        crate::registry::unchanged::keep_if_unchanged(&host.daemon, &references[0], registry_images)
                            .await;
                    match verdict {
                        crate::registry::unchanged::Verdict::Unchanged(kept) => {
                            for (reference, tag) in references.iter().zip(&own_tags) {
                                tracing::info!("{reference}: {}", kept.line(tag));
                            }
                            built.summary.image_id = Some(kept.config_digest.clone());
                            digest = Some(kept.digest);
                        }
                        crate::registry::unchanged::Verdict::Changed(reason) => {
                            tracing::info!("changed ({reason}): its tags are pushed");
                        }
                    }
                }
                if push && digest.is_none() {
                    for reference in &references {
                        let pushed = image::push(&host.daemon, reference, &registry, credentials).await?;
                        tracing::info!("pushed {reference}: {pushed}");
                        digest = digest.or(pushed.digest);
                    }
                }
                Ok((built, digest, host.target.to_string(), references))
            }
            .instrument(span)
            .map(move |result: Result<_>| {
                result.map_err(|error| Error::Platform { platform: platform.clone(), source: Box::new(error) })
            })
        });
        let done = futures_util::future::try_join_all(jobs).await?;
        let mut images = Vec::new();
        let mut outcome = Vec::new();
        for (slot, (platform, (built, digest, host, names))) in platforms.iter().zip(done).enumerate() {
            outcome.push(format!("{platform} {} steps, {} CACHED", built.summary.steps.len(), built.summary.cached()));
            if push {
                let digest = digest.ok_or_else(|| Error::Push {
                    reference: image.with_tag(&format!(
                        "{}-{}",
                        tags[0],
                        crate::config::platforms::tag_suffix(platform)
                    )),
                    registry: registry.clone(),
                    message: "the daemon reported no digest for the push, so no index can name it".to_string(),
                })?;
                let parsed = crate::registry::index::Platform::parse(platform).map_err(Error::Internal)?;
                images.push(PlatformImage { platform: parsed, digest });
            }
            let digest = images.last().filter(|_| push).map(|image| image.digest.clone());
            let resolved = self.resolved.as_ref().ok_or_else(|| Error::Internal("resolved above".into()))?;
            let placement = placement(resolved, self.hosts()?, slot)?;
            self.platform_builds.push(crate::image::metadata::PlatformBuilt {
                platform: platform.clone(),
                host,
                names,
                built,
                digest,
                placement,
            });
        }
        self.platform_images = images;
        Ok(outcome.join("; "))
    }

    /// Before the pushes of a BuildKit build: whether a tag of the registry already holds this same
    /// image; if so it is kept (the other tags get its manifest) and the pushes are skipped. The
    /// metadata file then names the registry's manifest and config.
    async fn keep_unchanged(
        &mut self,
        image: &crate::registry::reference::Repository,
        tags: &[String],
    ) -> Result<String> {
        let built = self.built.as_ref().ok_or_else(|| Error::Internal("the comparison ran before the build".into()))?;
        if built.engine != image::Engine::BuildKit {
            return Ok("built with the classic builder: every tag is pushed".to_string());
        }
        let registry_images = match self.registry_images.take() {
            Some(asked) => asked.await.unwrap_or_else(|error| Err(format!("the registry was not asked: {error}"))),
            None => self.ask_registry(image, tags).await,
        };
        let host = self.hosts()?.for_slot(0)?;
        let local = image.with_tag(&tags[0]);
        let verdict = crate::registry::unchanged::keep_if_unchanged(&host.daemon, &local, registry_images).await;
        match verdict {
            crate::registry::unchanged::Verdict::Changed(reason) => {
                Ok(format!("changed ({reason}): every tag is pushed"))
            }
            crate::registry::unchanged::Verdict::Unchanged(kept) => {
                let outcome = format!("the registry's {} is this image: kept, nothing pushed", kept.digest);
                self.pushed_digest = Some(kept.digest.clone());
                if let Some(built) = self.built.as_mut() {
                    built.summary.image_id = Some(kept.config_digest.clone());
                }
                self.kept = Some((image.clone(), kept));
                Ok(outcome)
            }
        }
    }

    /// What the registry holds under `tags` of `image`, asked with the run's login for it.
    fn ask_registry(
        &self,
        image: &crate::registry::reference::Repository,
        tags: &[String],
    ) -> impl Future<Output = RegistryImagesResult> + Send + 'static {
        let credential = self.credentials.iter().find(|credential| credential.registry == image.registry()).cloned();
        let (image, tags, timeout) = (image.clone(), tags.to_vec(), self.config.connect_timeout);
        async move { crate::registry::unchanged::registry_images(&image, &tags, credential.as_ref(), timeout).await }
    }

    /// The push step's line for a tag whose image the registry already holds (nothing to push).
    fn kept_line(&self, reference: &str) -> Option<String> {
        let (image, kept) = self.kept.as_ref()?;
        let tag = self.config.tags.value.iter().find(|tag| kept.holds(tag) && image.with_tag(tag) == reference)?;
        Some(kept.line(tag))
    }

    /// Pushes the index of every platform's image under each tag.
    async fn push_index(&mut self, image: &crate::registry::reference::Repository, tags: &[String]) -> Result<String> {
        let credential = self.credentials.iter().find(|credential| credential.registry == image.registry());
        let pushed = crate::registry::index::push_index(
            image,
            credential,
            tags,
            &self.platform_images,
            self.config.connect_timeout,
        )
        .await?;
        self.pushed_digest = Some(pushed.digest.clone());
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
        let target = |built: &Built, host: &str| (built.engine == image::Engine::Classic).then(|| host.to_string());
        let classic_on: Vec<String> = match &self.built {
            Some(built) => hosts.for_slot(0).map(|host| target(built, &host.target.to_string())).ok().flatten(),
            None => None,
        }
        .into_iter()
        .chain(self.platform_builds.iter().filter_map(|each| target(&each.built, &each.host)))
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
                // The registry is asked what it holds under the tags while the image builds, for
                // the comparison before the pushes.
                let config = self.config;
                if config.compares_with_registry() {
                    let asked = self.ask_registry(&config.image.value, &config.tags.value);
                    self.registry_images = Some(tokio::spawn(asked));
                }
                let mounts = crate::config::resolve::session_mounts(build, self.resolved()?)?;
                let request = BuildStep {
                    build: &build.spec,
                    reference,
                    cache_image: cache_image.as_deref(),
                    registry,
                    mounts,
                    cache_wait: self.config.connect_timeout * 3,
                };
                let host = self.hosts()?.for_slot(0)?;
                let built = image::build_on(&host.daemon, host.facts.as_ref(), request, &self.credentials).await?;
                let outcome = format!("{} steps, {} CACHED", built.summary.steps.len(), built.summary.cached());
                self.built = Some(built);
                outcome
            }
            Step::BuildPlatforms { build, image, tags, platforms, push } => {
                self.build_platforms(build, image, tags, platforms, *push).await?
            }
            Step::PushIndex { image, tags, .. } => self.push_index(image, tags).await?,
            Step::Tag { source, target } => {
                image::tag(&self.hosts()?.for_slot(0)?.daemon, source, target).await?;
                return Ok(None);
            }
            Step::KeepUnchanged { image, tags } => self.keep_unchanged(image, tags).await?,
            Step::Push { reference, registry } => {
                if let Some(line) = self.kept_line(reference) {
                    return Ok(Some(line));
                }
                let pushed =
                    image::push(&self.hosts()?.for_slot(0)?.daemon, reference, registry, &self.credentials).await?;
                if self.pushed_digest.is_none() {
                    self.pushed_digest = pushed.digest.clone();
                }
                format!("pushed {pushed}")
            }
            Step::WriteImageDefinitions { path, container, image_uri } => {
                crate::image::definitions::write(path, container, image_uri)?;
                format!("wrote {}", path.display())
            }
            Step::WriteMetadata { path, names, pushed, platforms } if !platforms.is_empty() => {
                self.resolved()?;
                let resolved = self.resolved.as_ref().ok_or_else(|| Error::Internal("resolved above".into()))?;
                let placement = run_placement(resolved, self.hosts()?)?;
                let digest = self.pushed_digest.as_deref().filter(|_| *pushed);
                image::metadata::write_platforms(path, names, digest, &self.platform_builds, &placement)?;
                format!("wrote {}", path.display())
            }
            Step::WriteMetadata { path, names, pushed, .. } => {
                self.resolved()?;
                let resolved = self.resolved.as_ref().ok_or_else(|| Error::Internal("resolved above".into()))?;
                let placement = placement(resolved, self.hosts()?, 0)?;
                let built = self
                    .built
                    .as_ref()
                    .ok_or_else(|| Error::Internal("the metadata step ran before the build".into()))?;
                image::metadata::write(path, names, *pushed, built, self.pushed_digest.as_deref(), &placement)?;
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

/// The run's slots: one for a single-platform run; one per platform (named by it) otherwise, on
/// the platform's own host when it has one, else on the pool ([`pool_candidates`]: the one place
/// that says where a build without a host of its own goes).
fn slots(resolved: &Resolved, repository: &str) -> Vec<Slot> {
    if resolved.platforms.is_empty() {
        return vec![Slot { name: String::new(), candidates: pool_candidates(resolved, repository) }];
    }
    resolved
        .platforms
        .iter()
        .map(|each| {
            let candidates = match &each.host {
                Some(host) => vec![Candidate {
                    target: host.clone(),
                    ssh_key: each.ssh_key.clone(),
                    known_hosts: each.known_hosts.clone(),
                }],
                None => pool_candidates(resolved, repository),
            };
            Slot { name: each.platform.clone(), candidates }
        })
        .collect()
}

/// Whether `target` is the fallback host, not one of the pool (a build there found no host of the
/// pool answering).
fn on_fallback(resolved: &Resolved, target: &crate::docker::host::DockerHost) -> bool {
    resolved.fallback_host.as_ref() == Some(target) && !resolved.hosts.contains(target)
}

/// Where slot `slot`'s build ran, for the metadata file: `agent.host`, and when a host did not
/// answer, `agent.failed_hosts` (each with why); `agent.fallback` (whether the fallback built it)
/// when the slot may go to a fallback (it uses the pool and there is one).
fn placement(resolved: &Resolved, hosts: &Hosts, slot: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::json;
    let target = &hosts.for_slot(slot)?.target;
    let mut placement = serde_json::Map::new();
    placement.insert("agent.host".to_string(), json!(target.to_string()));
    let failed = hosts.failed_for_slot(slot);
    if !failed.is_empty() {
        placement.insert("agent.failed_hosts".to_string(), failed_hosts_json(&failed));
    }
    let uses_pool = resolved.platforms.get(slot).is_none_or(|each| each.host.is_none());
    if uses_pool && resolved.fallback_host.is_some() {
        placement.insert("agent.fallback".to_string(), json!(on_fallback(resolved, target)));
    }
    Ok(placement)
}

/// The metadata file's `agent.failed_hosts`: each host passed over, with its error's class and text.
fn failed_hosts_json(failed: &[&crate::nodes::FailedHost]) -> serde_json::Value {
    let failed: Vec<serde_json::Value> = failed
        .iter()
        .map(|host| serde_json::json!({ "host": host.target.to_string(), "class": host.class, "error": host.reason }))
        .collect();
    serde_json::Value::Array(failed)
}

/// Where a multi-platform run's builds ran, for the top of its metadata file: `agent.failed_hosts`
/// (every host passed over, for any platform) and `agent.fallback` (whether any platform built on
/// the fallback), as a single-platform run has them; each platform's own are under `agent.platforms`.
fn run_placement(resolved: &Resolved, hosts: &Hosts) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut placement = serde_json::Map::new();
    let failed: Vec<&crate::nodes::FailedHost> = hosts.failed().iter().collect();
    if !failed.is_empty() {
        placement.insert("agent.failed_hosts".to_string(), failed_hosts_json(&failed));
    }
    let pooled: Vec<usize> =
        (0..resolved.platforms.len()).filter(|slot| resolved.platforms[*slot].host.is_none()).collect();
    if resolved.fallback_host.is_some() && !pooled.is_empty() {
        let mut used = false;
        for slot in pooled {
            used |= on_fallback(resolved, &hosts.for_slot(slot)?.target);
        }
        placement.insert("agent.fallback".to_string(), serde_json::json!(used));
    }
    Ok(placement)
}

/// BuildKit sets `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH` and `TARGETVARIANT` for a build's
/// platform; the classic builder does not, so a multi-platform Dockerfile (`COPY app-${TARGETARCH}`)
/// gets them as build arguments there, unless the user gave them.
fn add_platform_args(build: &mut crate::config::Build, platform: &str) {
    let mut parts = platform.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    let args = [("TARGETPLATFORM", Some(platform)), ("TARGETOS", os), ("TARGETARCH", arch), ("TARGETVARIANT", variant)];
    for (key, value) in args {
        if !build.spec.build_args.iter().any(|arg| arg.key == key) {
            let value = Some(value.unwrap_or_default().to_string());
            build.spec.build_args.push(crate::image::spec::BuildArg { key: key.to_string(), value, from_env: false });
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
    use crate::config::tests::{config, fixture};

    #[test]
    fn the_classic_builder_gets_the_platform_args_buildkit_sets_but_not_over_the_users() {
        let dir = fixture();
        let argv = ["--image", "app", "--build-arg", "TARGETOS=mine", "--platform", "linux/amd64,linux/arm/v7"];
        let mut build = config(&argv, &[], dir.path()).unwrap().build;
        add_platform_args(&mut build, "linux/arm/v7");
        let args: Vec<(&str, Option<&str>)> =
            build.spec.build_args.iter().map(|arg| (arg.key.as_str(), arg.value.as_deref())).collect();
        assert_eq!(
            args,
            [
                ("TARGETOS", Some("mine")),
                ("TARGETPLATFORM", Some("linux/arm/v7")),
                ("TARGETARCH", Some("arm")),
                ("TARGETVARIANT", Some("v7")),
            ]
        );
    }

    #[test]
    fn a_daemons_arch_matches_a_platforms_by_either_name() {
        assert!(same_arch("amd64", "amd64") && same_arch("x86_64", "amd64") && same_arch("aarch64", "arm64"));
        assert!(!same_arch("amd64", "arm64"));
    }
}
