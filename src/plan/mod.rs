//! The plan: the ordered steps of a run, built from the [`Config`]. `agent run --dry` prints it;
//! `agent run` executes it, step by step, through the one loop in [`execute`] — so the dry run
//! cannot drift from the real one. [`render`] turns it into the dry run's text.

mod render;
pub mod timings;

pub use render::render;
pub use timings::{BuildFigures, Phase, Timings};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{Build, Config, RegistryLogin, Sourced, Value};
use crate::docker::budget::Budget;
use crate::docker::host::DockerHost;
use crate::error::Result;
use crate::output::{Event, report};
use crate::registry::reference::{Platform, Repository};
use crate::secrets::{Origin, SsmRef};

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Step {
    /// Fetch every `SSM:` reference at once (GetParameters, with decryption).
    ResolveSsm { references: Vec<(Origin, SsmRef)>, region: Option<Sourced<String>> },
    /// Write the SSH private key to its file (0600, directory 0700).
    /// `in_memory`: the run's own key for EC2 Instance Connect, written nowhere.
    InstallSshKey { origin: Origin, path: PathBuf, key: Option<String>, in_memory: bool },
    /// Add the known_hosts lines that are not there yet.
    InstallKnownHosts { origin: Origin, path: PathBuf, entries: Vec<String> },
    /// Open the connection to the daemon (to each platform's, in a multi-platform run).
    Connect {
        /// The daemon to build on; with a pool, the host the image hashes to, else the pool's first.
        host: Sourced<Value<DockerHost>>,
        timeout: Duration,
        /// For a host that is an EC2 instance: how long its start may take, and its address asked for.
        start_timeout: Duration,
        host_address: crate::aws::ec2::AddressKind,
        read_timeout: Duration,
        tls: Option<PathBuf>,
        /// With a pool or a fallback: how the host is chosen and what takes over.
        pool: Option<Box<Pool>>,
        /// The platforms of a multi-platform run, each with its own host if it has one; else empty.
        platforms: Vec<crate::config::platforms::PlatformHost>,
        /// The image repository, whose hash orders a pool's hosts.
        repository: String,
        /// Where a key file is looked for beside, and the known_hosts file trusted with the pasted lines.
        ssh_key_file: PathBuf,
        known_hosts_file: PathBuf,
        /// The ECR registries logged into later, whose tokens are asked for while the hosts connect.
        ecr_registries: Vec<(String, Option<String>)>,
    },
    /// Check every host's daemon in one round trip each (see [`crate::docker::daemon::Daemon::CHECK`]).
    CheckDaemon {
        /// The flags given (`--secret`, `--ssh`) that need BuildKit when the daemon chooses the builder.
        needs_buildkit: Vec<&'static str>,
    },
    /// Log into a registry with a user and password, checked by the daemon.
    Login { registry: Sourced<Value<String>>, user: Sourced<Value<String>>, password: Origin },
    /// Log into a registry with a token from ECR's GetAuthorizationToken.
    EcrLogin { registry: String, region: Option<String>, origin: Origin },
    /// Record the logins in the docker CLI's config.json, merged with what is there.
    WriteDockerConfig { path: PathBuf },
    /// Build the image on the daemon.
    Build {
        /// What to build and how, as configured.
        build: Box<Build>,
        image: Repository,
        /// Every tag; the first is built, the others tagged.
        tags: Vec<String>,
        /// Whether the tags are pushed (then the image's `latest` is pulled as cache on a host that
        /// lacks it: a new or wiped host).
        push: bool,
        /// Whether the registry is asked, while the image builds, what the tags hold.
        compare: bool,
    },
    /// Tag the built image with another tag.
    Tag { source: String, target: String },
    /// Two or more platforms (`--platform a,b`): every platform built at once, each on its own
    /// host (the run's slot of the same index), tagged and pushed from there as `TAG-<arch>`.
    BuildPlatforms {
        build: Box<Build>,
        image: Repository,
        tags: Vec<String>,
        /// `linux/arm64`, in the order of `--platform` (slot `i` is platform `i`).
        platforms: Vec<Platform>,
        push: bool,
        /// Whether each platform's tags in the registry are compared with its build before its pushes.
        compare: bool,
    },
    /// One image index naming every platform's pushed image, under each tag.
    PushIndex { image: Repository, tags: Vec<String>, platforms: Vec<Platform> },
    /// Ask the registry whether a tag already holds the image just built (see [`crate::registry::unchanged`]);
    /// if so, keep its digest: the tags without it get its manifest, and no tag is pushed.
    KeepUnchanged { image: Repository, tags: Vec<String> },
    /// Push one tag.
    Push { reference: String, registry: String },
    /// Write imagedefinitions.json for CodePipeline's ECS deploy action.
    WriteImageDefinitions { path: PathBuf, container: String, image_uri: String },
    /// Write the build's metadata as JSON with buildx's keys (`--metadata-file`).
    WriteMetadata {
        path: PathBuf,
        /// Every tag built, as `image.name` lists them.
        names: Vec<String>,
        /// Whether the tags are pushed (only then is there a manifest digest).
        pushed: bool,
        /// The platforms of a multi-platform run (the digest is the index's); else empty.
        platforms: Vec<Platform>,
    },
    /// Prune each host's build cache down to the budget (`--keep-storage`) after a successful run.
    PruneCache { budget: Sourced<Budget> },
}

/// A pool of hosts (or one host with a fallback), as the connect step tries them.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The pool's hosts, in the order given.
    pub hosts: Vec<Sourced<Value<DockerHost>>>,
    /// The order in which they are tried for this image (indexes into `hosts`), when every address
    /// is known before the run (an `SSM:` one is known after step 1).
    pub order: Option<Vec<usize>>,
    /// The image repository the order is hashed from.
    pub repository: String,
    pub fallback: Option<Sourced<Value<DockerHost>>>,
    /// How long a host with a next one has to answer.
    pub failover_timeout: Duration,
}

/// The steps of a run, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// Builds the plan from a validated configuration.
    pub fn new(config: &Config, cwd: &std::path::Path) -> Plan {
        let mut steps = Vec::new();
        let references: Vec<(Origin, SsmRef)> = config
            .ssm_references()
            .into_iter()
            .map(|(origin, reference)| (origin.clone(), reference.clone()))
            .collect();
        if !references.is_empty() {
            steps.push(Step::ResolveSsm { references, region: config.region.clone() });
        }
        if let Some(key) = &config.ssh_key {
            let description = match &key.value {
                Value::Known(key) => Some(key.describe()),
                Value::Ssm(_) => None,
            };
            steps.push(Step::InstallSshKey {
                origin: key.origin.clone(),
                path: config.ssh_key_file.value.clone(),
                key: description,
                in_memory: matches!(&key.value, Value::Known(key) if key.instance_connect),
            });
        }
        if let Some(known) = &config.known_hosts {
            let entries = match &known.value {
                Value::Known(text) => {
                    let mut hosts = crate::ssh::known_hosts::KnownHosts::default();
                    hosts.add_pasted(text, "");
                    hosts.describe_entries()
                }
                Value::Ssm(_) => Vec::new(),
            };
            steps.push(Step::InstallKnownHosts {
                origin: known.origin.clone(),
                path: config.known_hosts_file.value.clone(),
                entries,
            });
        }
        let repository = config.image.value.to_string();
        let known: Option<Vec<String>> = config
            .hosts
            .iter()
            .map(|host| match &host.value {
                Value::Known(host) => Some(host.to_string()),
                Value::Ssm(_) => None,
            })
            .collect();
        let order = known.map(|names| crate::nodes::affinity::order(&names, &repository));
        let first = order.as_ref().and_then(|order| order.first().copied()).unwrap_or(0);
        let pool = (config.hosts.len() > 1 || config.fallback_host.is_some()).then(|| {
            Box::new(Pool {
                hosts: config.hosts.clone(),
                order,
                repository,
                fallback: config.fallback_host.clone(),
                failover_timeout: config.failover_timeout,
            })
        });
        steps.push(Step::Connect {
            pool,
            host: config.hosts[first].clone(),
            timeout: config.connect_timeout,
            start_timeout: config.start_timeout,
            host_address: config.host_address,
            read_timeout: config.read_timeout,
            tls: config.tls.as_ref().map(|tls| tls.cert_dir.clone()),
            platforms: config.build.platform_hosts.clone(),
            repository: config.image.value.to_string(),
            ssh_key_file: config.ssh_key_file.value.clone(),
            known_hosts_file: config.known_hosts_file.value.clone(),
            ecr_registries: config
                .ecr_logins
                .iter()
                .map(|login| (login.registry.clone(), login.region.clone()))
                .collect(),
        });
        steps.push(Step::CheckDaemon { needs_buildkit: config.build.needs_buildkit() });
        if let Some(RegistryLogin { registry, user, password }) = &config.registry_login {
            steps.push(Step::Login {
                registry: registry.clone(),
                user: user.clone(),
                password: password.origin.clone(),
            });
        }
        for login in &config.ecr_logins {
            steps.push(Step::EcrLogin {
                registry: login.registry.clone(),
                region: login.region.clone(),
                origin: login.origin.clone(),
            });
        }
        if config.registry_login.is_some() || !config.ecr_logins.is_empty() {
            steps.push(Step::WriteDockerConfig { path: config.docker_config_dir.join("config.json") });
        }
        let image = &config.image.value;
        let tags = &config.tags.value;
        let platforms: Vec<Platform> = config.build.platform_hosts.iter().map(|each| each.platform.clone()).collect();
        if !platforms.is_empty() {
            steps.push(Step::BuildPlatforms {
                build: Box::new(config.build.clone()),
                image: image.clone(),
                tags: tags.clone(),
                platforms: platforms.clone(),
                push: config.push,
                compare: config.compares_with_registry(),
            });
            if config.push {
                steps.push(Step::PushIndex { image: image.clone(), tags: tags.clone(), platforms });
            }
        } else {
            Self::single_platform_steps(config, &mut steps);
        }
        Self::output_steps(config, cwd, &mut steps);
        Plan { steps }
    }

    /// Build, tag and push on the one host.
    fn single_platform_steps(config: &Config, steps: &mut Vec<Step>) {
        let image = &config.image.value;
        let tags = &config.tags.value;
        let first = image.with_tag(&tags[0]);
        steps.push(Step::Build {
            build: Box::new(config.build.clone()),
            image: image.clone(),
            tags: tags.clone(),
            push: config.push,
            compare: config.compares_with_registry(),
        });
        for tag in &tags[1..] {
            steps.push(Step::Tag { source: first.clone(), target: image.with_tag(tag) });
        }
        if config.push && !config.always_push {
            steps.push(Step::KeepUnchanged { image: image.clone(), tags: tags.clone() });
        }
        if config.push {
            for tag in tags {
                steps.push(Step::Push { reference: image.with_tag(tag), registry: image.registry().to_string() });
            }
        }
    }

    /// imagedefinitions.json and the metadata file, after the pushes.
    fn output_steps(config: &Config, cwd: &std::path::Path, steps: &mut Vec<Step>) {
        let image = &config.image.value;
        let tags = &config.tags.value;
        if let Some(container) = &config.image_definitions {
            // CodePipeline deploys the commit's tag when there is one: the last tag is the most specific.
            let tag = tags.last().expect("a config always has a tag");
            steps.push(Step::WriteImageDefinitions {
                path: cwd.join("imagedefinitions.json"),
                container: container.clone(),
                image_uri: image.with_tag(tag),
            });
        }
        if let Some(path) = &config.metadata_file {
            steps.push(Step::WriteMetadata {
                path: path.clone(),
                names: tags.iter().map(|tag| image.with_tag(tag)).collect(),
                pushed: config.push,
                platforms: config.build.platform_hosts.iter().map(|each| each.platform.clone()).collect(),
            });
        }
        if let Some(budget) = &config.keep_storage {
            steps.push(Step::PruneCache { budget: budget.clone() });
        }
    }
}

impl Step {
    /// The step's name, as the log and the plan show it.
    pub fn title(&self) -> String {
        match self {
            Step::ResolveSsm { references, .. } => {
                format!("resolve {} SSM parameter{}", references.len(), if references.len() == 1 { "" } else { "s" })
            }
            Step::InstallSshKey { .. } => "install ssh key".to_string(),
            Step::InstallKnownHosts { .. } => "install known_hosts".to_string(),
            Step::Connect { platforms, .. } if !platforms.is_empty() => {
                let names: Vec<String> = platforms.iter().map(|each| each.platform.to_string()).collect();
                format!("connect to the hosts of {}", names.join(", "))
            }
            Step::Connect { host, pool, .. } => match (&host.value, pool) {
                (_, Some(pool)) if pool.hosts.len() > 1 && pool.order.is_none() => {
                    format!("connect to a host of the pool of {}", pool.hosts.len())
                }
                (Value::Known(host), Some(pool)) if pool.hosts.len() > 1 => {
                    format!("connect to {host} (of a pool of {})", pool.hosts.len())
                }
                (Value::Known(host), _) => format!("connect to {host}"),
                (Value::Ssm(reference), _) => format!("connect to the daemon in {reference}"),
            },
            Step::CheckDaemon { .. } => "check daemon".to_string(),
            Step::Login { registry, .. } => format!("log in to {}", show(&registry.value)),
            Step::EcrLogin { registry, .. } => format!("log in to ECR {registry}"),
            Step::WriteDockerConfig { .. } => "write docker config".to_string(),
            Step::Build { image, tags, .. } => format!("build {}", image.with_tag(&tags[0])),
            Step::Tag { target, .. } => format!("tag {target}"),
            Step::BuildPlatforms { image, tags, platforms, .. } => {
                format!("build {} for {}", image.with_tag(&tags[0]), join(platforms))
            }
            Step::PushIndex { image, tags, .. } => {
                format!("push the image index {image} ({} tag{})", tags.len(), if tags.len() == 1 { "" } else { "s" })
            }
            Step::KeepUnchanged { .. } => "compare with the registry".to_string(),
            Step::Push { reference, .. } => format!("push {reference}"),
            Step::WriteImageDefinitions { .. } => "write imagedefinitions.json".to_string(),
            Step::WriteMetadata { .. } => "write build metadata".to_string(),
            Step::PruneCache { budget } => format!("keep the build cache within {}", budget.value.text),
        }
    }

    /// Whether the step writes a file or changes a daemon or registry (skipped by `--check`).
    pub fn changes_something(&self) -> bool {
        match self {
            Step::ResolveSsm { .. }
            | Step::Connect { .. }
            | Step::CheckDaemon { .. }
            | Step::Login { .. }
            | Step::EcrLogin { .. } => false,
            Step::InstallSshKey { .. }
            | Step::InstallKnownHosts { .. }
            | Step::WriteDockerConfig { .. }
            | Step::Build { .. }
            | Step::Tag { .. }
            | Step::BuildPlatforms { .. }
            | Step::PushIndex { .. }
            | Step::KeepUnchanged { .. }
            | Step::Push { .. }
            | Step::WriteImageDefinitions { .. }
            | Step::WriteMetadata { .. }
            | Step::PruneCache { .. } => true,
        }
    }
}

pub(super) fn show<T: std::fmt::Display>(value: &Value<T>) -> String {
    match value {
        Value::Known(value) => value.to_string(),
        Value::Ssm(reference) => format!("from {reference}"),
    }
}

/// Platforms as a list in a line: `linux/amd64, linux/arm64`.
pub(super) fn join(platforms: &[Platform]) -> String {
    platforms.iter().map(Platform::to_string).collect::<Vec<_>>().join(", ")
}

/// How the plan is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Print every step; execute none.
    Dry,
    /// Execute the steps that change nothing (resolve, connect, check, log in); skip the others.
    Check,
    /// Execute every step.
    Run,
}

/// Carries out the plan: in [`Mode::Dry`] prints it; in [`Mode::Run`] executes each step in order,
/// logging its outcome and duration, and stops at the first failure.
pub async fn execute(plan: &Plan, mode: Mode, runner: &mut impl StepRunner) -> Result<()> {
    if mode == Mode::Dry {
        crate::output::print(&render(plan));
        // The rehearsal fails as the run would on a context it cannot send (a file it may not read,
        // a .dockerignore no Docker reads): the plan says why beside the context, and so does the
        // error. (A second walk of the context, in a dry run only.)
        for step in &plan.steps {
            if let Step::Build { build, .. } = step {
                crate::image::context::Context::scan(&build.spec.context, &build.spec.dockerfile)?;
            }
        }
        return Ok(());
    }
    let total = plan.steps.len();
    let started = Instant::now();
    let mut timings = Timings::default();
    for (index, step) in plan.steps.iter().enumerate() {
        let (number, title) = (index + 1, step.title());
        let title = title.as_str();
        if mode == Mode::Check && step.changes_something() {
            report(Event::StepSkipped { number, total, title, reason: "--check changes nothing" });
            continue;
        }
        report(Event::StepStarted { number, total, title });
        let step_started = Instant::now();
        match runner.carry_out(step, &timings).await {
            Ok(outcome) => {
                let (outcome, elapsed) = (outcome.as_deref().unwrap_or("ok"), step_started.elapsed());
                timings.add(step.phase(), elapsed);
                if matches!(step, Step::Build { .. } | Step::BuildPlatforms { .. }) {
                    timings.build_done(runner.build_figures());
                }
                report(Event::StepDone { number, total, title, outcome, elapsed });
            }
            Err(error) => {
                report(Event::StepFailed { number, total, title, elapsed: step_started.elapsed() });
                return Err(error);
            }
        }
    }
    runner.after_steps(mode).await;
    let phases = timings.line();
    report(Event::RunDone { total, elapsed: started.elapsed(), phases: &phases, figures: timings.figures() });
    Ok(())
}

/// What executes a step. The agent's own runner does the real work; the plan does not care how.
#[expect(async_fn_in_trait, reason = "the runner is used in this crate only, with one executor")]
pub trait StepRunner {
    /// Executes one step; `Ok(Some(text))` replaces "ok" in the step's log line. `timings` is where
    /// the run's time went so far (for the metadata file).
    async fn carry_out(&mut self, step: &Step, timings: &Timings) -> Result<Option<String>>;

    /// After a build step: the context's part of its time and its CACHED steps.
    fn build_figures(&self) -> BuildFigures {
        BuildFigures::default()
    }

    /// After the last step of a run that succeeded, before its closing line (e.g. the lines that
    /// come in the background, given their last chance).
    async fn after_steps(&mut self, _mode: Mode) {}
}
