//! The plan: the ordered steps of a run, built from the [`Config`]. `agent run --dry` prints it;
//! `agent run` executes it, step by step, through the one loop in [`execute`] — so the dry run
//! cannot drift from the real one.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{Build, Config, RegistryLogin, Sourced, Value};
use crate::docker::budget::Budget;
use crate::docker::host::DockerHost;
use crate::error::Result;
use crate::image::spec::{BuildSpec, Builder, ProgressMode};
use crate::output::{Event, report};
use crate::registry::reference::{LATEST, Platform, Repository, platform_tag};
use crate::secrets::{MASK, Origin, SsmRef};

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Step {
    /// Fetch every `SSM:` reference at once (GetParameters, with decryption).
    ResolveSsm { references: Vec<(Origin, SsmRef)>, region: Option<Sourced<String>> },
    /// Write the SSH private key to its file (0600, directory 0700).
    InstallSshKey { origin: Origin, path: PathBuf, key: Option<String> },
    /// Add the known_hosts lines that are not there yet.
    InstallKnownHosts { origin: Origin, path: PathBuf, entries: Vec<String> },
    /// Open the connection to the daemon (to each platform's, in a multi-platform run).
    Connect {
        /// The daemon to build on; with a pool, the host the image hashes to, else the pool's first.
        host: Sourced<Value<DockerHost>>,
        timeout: Duration,
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

    /// What the step would do, one line each, for the dry-run plan. Never holds a secret.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match self {
            Step::ResolveSsm { references, region } => {
                for (origin, reference) in references {
                    lines.push(format!("{} <- {reference} (GetParameters, with decryption)", origin.subject()));
                }
                lines.push(match region {
                    Some(region) => format!("region {} (from {})", region.value, region.origin),
                    None => "region from the AWS configuration (no AWS_REGION set)".to_string(),
                });
                lines.push(
                    "credentials from the default AWS chain (environment, profile, CodeBuild's role)".to_string(),
                );
            }
            Step::InstallSshKey { origin, path, key } => {
                lines.push(match key {
                    Some(key) => format!("key from {origin}: {key} (the key itself is {MASK})"),
                    None => format!("key from {origin}: {MASK}"),
                });
                lines.push(format!(
                    "write {} (mode 0600, directory 0700); an existing different key is never overwritten",
                    path.display()
                ));
            }
            Step::InstallKnownHosts { origin, path, entries } => {
                lines.push(format!("host keys from {origin}"));
                for entry in entries {
                    lines.push(format!("  {entry}"));
                }
                lines.push(format!(
                    "append the lines not already in {} (its mode kept; a new file is 0644)",
                    path.display()
                ));
            }
            Step::Connect { host, timeout, read_timeout, tls, platforms, pool, .. } => {
                let default_host = match pool {
                    Some(pool) if pool.hosts.len() > 1 => {
                        "the pool's host for the image below, or the next that answers"
                    }
                    Some(_) => "the DOCKER_HOST daemon below, or the fallback",
                    None => "the DOCKER_HOST daemon below",
                };
                for each in platforms {
                    let Some(own) = &each.host else {
                        lines.push(format!("{}: on {default_host} (emulated if it is of another arch)", each.platform));
                        continue;
                    };
                    let key = match &each.ssh_key {
                        Some(key) => format!("{}", key.origin),
                        None => "JETS_SSH_KEY (the fallback)".to_string(),
                    };
                    let known = match &each.known_hosts {
                        Some(known) => format!("{}", known.origin),
                        None => "JETS_SSH_KNOWN (the fallback)".to_string(),
                    };
                    lines.push(format!("{}: daemon {} (from {})", each.platform, own.value_text(), own.origin));
                    if matches!(own.value, Value::Known(DockerHost::Ssh { .. }) | Value::Ssm(_)) {
                        lines.push(format!("{}: SSH key from {key}, host keys from {known}", each.platform));
                    }
                }
                if !platforms.is_empty() && platforms.iter().all(|each| each.host.is_some()) {
                    lines.push(format!("connect timeout {}s", timeout.as_secs()));
                    return lines;
                }
                if let Some(pool) = pool {
                    lines.extend(pool.describe(timeout));
                    if pool.hosts.len() > 1 && pool.order.is_none() {
                        lines.push(format!("connect timeout {}s", timeout.as_secs()));
                        return lines;
                    }
                }
                match &host.value {
                    Value::Known(DockerHost::Ssh { user, host: name, port, socket }) => {
                        lines.push(format!("daemon {} (from {})", host.value_text(), host.origin));
                        lines.push(format!(
                            "one SSH connection to {name}:{port} as {}, host key checked against known_hosts",
                            user.as_deref().unwrap_or("the current user")
                        ));
                        lines.push(format!("each HTTP connection is a channel to the remote socket {socket}"));
                        lines.push(format!(
                            "keepalive every {}s: unanswered for {}s, the connection counts as dropped",
                            (*read_timeout / 3).as_secs(),
                            read_timeout.as_secs()
                        ));
                    }
                    Value::Known(DockerHost::Tcp { .. }) => {
                        lines.push(format!("daemon {} (from {})", host.value_text(), host.origin));
                        lines.push(match tls {
                            Some(dir) => {
                                format!("HTTPS with the client certificate in {}", dir.display())
                            }
                            None => "plain HTTP (no DOCKER_TLS_VERIFY)".to_string(),
                        });
                    }
                    Value::Known(DockerHost::Unix { .. }) => {
                        lines.push(format!("daemon {} (from {})", host.value_text(), host.origin));
                    }
                    Value::Ssm(reference) => {
                        lines.push(format!(
                            "daemon address held in {reference} (from {}), resolved in step 1",
                            host.origin
                        ));
                    }
                }
                lines.push(format!("connect timeout {}s", timeout.as_secs()));
            }
            Step::CheckDaemon { .. } => {
                lines.push(crate::docker::daemon::Daemon::CHECK.to_string());
            }
            Step::Login { registry, user, password } => {
                lines.push(format!("registry {} (from {})", show(&registry.value), registry.origin));
                lines.push(format!("user {} (from {})", show(&user.value), user.origin));
                lines.push(format!("password {MASK} (from {password}), checked by the daemon"));
            }
            Step::EcrLogin { registry, region, origin } => {
                lines.push(format!("registry {registry} (from {origin})"));
                lines.push(format!(
                    "token from ECR GetAuthorizationToken in region {}, checked by the daemon",
                    region.as_deref().unwrap_or("of the AWS configuration")
                ));
            }
            Step::WriteDockerConfig { path } => {
                lines.push(format!("merge the logins into {} (mode 0600), keeping every other entry", path.display()));
            }
            Step::Build { build, image, tags, push, .. } => {
                let reference = &image.with_tag(&tags[0]);
                let cache_image = push.then(|| image.with_tag(LATEST));
                let Build { spec, platform_hosts, secrets, ssh } = build.as_ref();
                let BuildSpec {
                    context,
                    dockerfile,
                    build_args,
                    target,
                    labels,
                    platform,
                    pull,
                    no_cache,
                    builder,
                    progress,
                    ..
                } = spec;
                lines.push(match crate::image::context::Context::scan(context, dockerfile) {
                    Ok(scanned) => format!(
                        "context {}: {} file{}, {} after .dockerignore",
                        context.display(),
                        scanned.files,
                        if scanned.files == 1 { "" } else { "s" },
                        crate::output::human_bytes(scanned.bytes)
                    ),
                    Err(error) => format!("context {} (cannot be read: {error})", context.display()),
                });
                lines.push(format!("Dockerfile {}", dockerfile.display()));
                lines.push(format!("tag {reference}"));
                for arg in build_args {
                    lines.push(match (&arg.value, arg.from_env) {
                        (Some(value), false) => format!("build arg {}={value}", arg.key),
                        (Some(_), true) => {
                            format!("build arg {} (value from env {})", arg.key, arg.key)
                        }
                        (None, _) => {
                            format!("build arg {} (env {} is unset: left out)", arg.key, arg.key)
                        }
                    });
                }
                if let Some(target) = target {
                    lines.push(format!("target stage {target}"));
                }
                for (key, value) in labels {
                    lines.push(format!("label {key}={value}"));
                }
                if let Some(platform) = platform {
                    lines.push(format!("platform {platform}"));
                }
                for each in platform_hosts {
                    let suffix = each.platform.tag_suffix();
                    lines.push(match &each.host {
                        Some(host) => format!(
                            "platform {} on {} (from {}), pushed as TAG-{suffix}",
                            each.platform,
                            host.value_text(),
                            host.origin
                        ),
                        None => format!(
                            "platform {} on the run's default host (DOCKER_HOST, or the pool's: see the connect step), emulated if its arch differs (no DOCKER_HOST_<ARCH> for it), pushed as TAG-{suffix}",
                            each.platform
                        ),
                    });
                    for chosen in &each.chosen {
                        lines.push(format!("platform {}: {chosen}", each.platform));
                    }
                }
                if *pull {
                    lines.push("pull newer base images".to_string());
                }
                if *no_cache {
                    lines.push("without the layer cache".to_string());
                }
                for secret in secrets {
                    lines.push(format!("secret {} from {} (value {MASK})", secret.id, secret.source.describe()));
                }
                for forward in ssh {
                    lines.push(format!("ssh agent {} holding {} (in memory)", forward.id, forward.describe()));
                }
                lines.push(match builder.value {
                    Builder::Auto => format!(
                        "BuildKit if the daemon offers it (Linux, API 1.39 or later), else the classic builder ({})",
                        builder.origin
                    ),
                    Builder::Buildkit => format!("BuildKit ({})", builder.origin),
                    Builder::Classic => format!("classic builder ({})", builder.origin),
                });
                if builder.value != Builder::Classic {
                    lines.push(
                        "with BuildKit: build arg BUILDKIT_INLINE_CACHE=1 (the pushed image carries its cache for a new host)"
                            .to_string(),
                    );
                }
                if builder.value != Builder::Classic {
                    let key = build.spec.shared_key(reference);
                    lines.push(format!(
                        "with BuildKit: the context synced by the agent's session, context key {} (from {})",
                        &key.key[..16],
                        key.source
                    ));
                    if spec.stable_mtimes {
                        lines.push(
                            "with BuildKit: files git tracks, unchanged since checkout, sent with mtimes made from their content"
                                .to_string(),
                        );
                    }
                }
                if let Some(cache_image) = cache_image {
                    lines.push(format!(
                        "if the daemon lacks {cache_image}, pull it first as cache (a new or wiped host)"
                    ));
                }
                lines.push(match progress.value {
                    ProgressMode::Plain => format!(
                        "log each step, and each output line of RUN steps prefixed with its step ({})",
                        progress.origin
                    ),
                    ProgressMode::Steps => {
                        format!("log each step; a RUN step's output only if it fails ({})", progress.origin)
                    }
                });
            }
            Step::Tag { source, target } => lines.push(format!("{source} -> {target}")),
            Step::BuildPlatforms { build, image, tags, platforms, push, .. } => {
                let build_step = Step::Build {
                    build: build.clone(),
                    image: image.clone(),
                    tags: tags.clone(),
                    push: false,
                    compare: false,
                };
                lines.push("every platform at once, each on its host:".to_string());
                for platform in platforms {
                    let references: Vec<String> =
                        tags.iter().map(|tag| image.with_tag(&platform_tag(tag, Some(platform)))).collect();
                    lines.push(format!("  {platform}: build and tag {}", references.join(", ")));
                    if *push {
                        lines.push(format!(
                            "  {platform}: push them from its host; cache from {} when the host lacks it",
                            image.with_tag(&platform_tag(LATEST, Some(platform)))
                        ));
                    }
                }
                if *push {
                    lines.push(
                        "with BuildKit, a platform whose TAG-<arch> in the registry is the same image keeps it, unpushed \
                         (unless --always-push), so the index of unchanged platforms keeps its digest too"
                            .to_string(),
                    );
                }
                lines.push("the first failure fails the run, naming its platform; no index is pushed then".to_string());
                // The common build's lines, but for its tag: each platform has its own (above).
                lines.extend(build_step.details().into_iter().filter(|line| !line.starts_with("tag ")));
            }
            Step::PushIndex { image, tags, platforms } => {
                lines.push(format!(
                    "one index (Docker manifest list, or OCI index for OCI manifests) of {}, each manifest by digest",
                    join(platforms)
                ));
                lines.push(format!("pushed by the agent to {} under {}", image.registry(), tags.join(", ")));
                lines.push("with the run's login for that registry (basic auth, or the bearer-token flow)".to_string());
            }
            Step::KeepUnchanged { image, tags } => {
                lines.push(format!(
                    "with BuildKit: ask {} for the manifest and config under {}",
                    image.registry(),
                    tags.join(", ")
                ));
                lines.push(
                    "the same image (layers, config, platform, created, history; BuildKit's cache record aside): \
                     keep its digest, put it under the tags that lack it, push nothing"
                        .to_string(),
                );
                lines.push("else, or on any doubt, push every tag (--always-push: always)".to_string());
            }
            Step::Push { registry, .. } => lines.push(format!("to registry {registry}")),
            Step::WriteImageDefinitions { path, container, image_uri } => {
                lines.push(format!("write {} (atomically)", path.display()));
                lines.push(crate::image::definitions::render(container, image_uri));
            }
            Step::WriteMetadata { path, names, pushed, platforms } if !platforms.is_empty() => {
                lines.push(format!("write {} (atomically) after a successful run", path.display()));
                lines.push(format!("image.name {}", names.join(",")));
                lines.push(if *pushed {
                    "containerimage.digest: the image index's digest".to_string()
                } else {
                    "no containerimage.digest: nothing is pushed".to_string()
                });
                lines.push(format!(
                    "agent.platforms: for each of {}, its host, manifest digest, image id and steps",
                    join(platforms)
                ));
            }
            Step::WriteMetadata { path, names, pushed, .. } => {
                lines.push(format!("write {} (atomically) after a successful run", path.display()));
                lines.push(format!("image.name {}", names.join(",")));
                lines.push(if *pushed {
                    "containerimage.digest: the pushed manifest's digest".to_string()
                } else {
                    "no containerimage.digest: nothing is pushed".to_string()
                });
                lines.push(
                    "containerimage.config.digest: the image id; each step, CACHED or not, with its time".to_string(),
                );
            }
            Step::PruneCache { budget } => {
                lines.push(format!(
                    "budget {} (from {}), binary units as docker reads them",
                    budget.value, budget.origin
                ));
                lines.push(
                    "on each host built on: BuildKit's POST /build/prune with keep-storage, least recently used first, \
                     never a record a running build holds"
                        .to_string(),
                );
                lines.push(format!(
                    "with the classic builder: the dangling images older than {}, if all dangling images are over the budget",
                    crate::docker::budget::CLASSIC_MIN_AGE
                ));
                lines.push("a failure is a warning: the run has succeeded by then".to_string());
            }
        }
        lines
    }
}

impl Sourced<Value<DockerHost>> {
    fn value_text(&self) -> String {
        show(&self.value)
    }
}

impl Pool {
    /// The pool's lines of the plan: its hosts, the order for this image, the fallback.
    fn describe(&self, connect_timeout: &Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if self.hosts.len() > 1 {
            let origin = &self.hosts[0].origin;
            let names: Vec<String> = self.hosts.iter().map(Sourced::value_text).collect();
            lines.push(format!("pool of {} hosts (from {origin}): {}", self.hosts.len(), names.join(", ")));
            match &self.order {
                Some(order) => {
                    let ordered: Vec<String> = order.iter().map(|&index| self.hosts[index].value_text()).collect();
                    lines.push(format!(
                        "{} hashes to {} (rendezvous hashing of the repository); failover order: {}",
                        self.repository,
                        ordered[0],
                        ordered.join(", ")
                    ));
                }
                None => lines.push(format!(
                    "the host {} hashes to, and the failover order, are known once step 1 has resolved the addresses",
                    self.repository
                )),
            }
            lines.push(format!(
                "a host that does not answer (refused, unreachable, no answer within {}s, its daemon down) passes \
                 the build to the next; a changed host key, a refused SSH key or a TLS failure stop the run",
                self.failover_timeout.as_secs()
            ));
        }
        lines.push(match &self.fallback {
            Some(fallback) => format!(
                "fallback {} (from {}): when no host of the pool answers, build there (cold cache), with a warning",
                fallback.value_text(),
                fallback.origin
            ),
            None => "no fallback host: when no host of the pool answers, the run fails".to_string(),
        });
        lines.push(format!(
            "each host but the last tried has {}s to answer, the last {}s",
            self.failover_timeout.as_secs(),
            connect_timeout.as_secs()
        ));
        lines
    }
}

/// Platforms as a list in a line: `linux/amd64, linux/arm64`.
fn join(platforms: &[Platform]) -> String {
    platforms.iter().map(Platform::to_string).collect::<Vec<_>>().join(", ")
}

fn show<T: std::fmt::Display>(value: &Value<T>) -> String {
    match value {
        Value::Known(value) => value.to_string(),
        Value::Ssm(reference) => format!("from {reference}"),
    }
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

/// Renders the plan as the dry run prints it.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent {} plan, {} steps (dry run: nothing is written, no connection is made)",
        env!("CARGO_PKG_VERSION"),
        plan.steps.len()
    );
    let width = plan.steps.len().to_string().len();
    for (index, step) in plan.steps.iter().enumerate() {
        let _ = writeln!(out, "\n{:>width$}. {}", index + 1, step.title());
        for line in step.details() {
            let _ = writeln!(out, "{:width$}    {line}", "");
        }
    }
    out
}

/// Carries out the plan: in [`Mode::Dry`] prints it; in [`Mode::Run`] executes each step in order,
/// logging its outcome and duration, and stops at the first failure.
pub async fn execute(plan: &Plan, mode: Mode, runner: &mut impl StepRunner) -> Result<()> {
    if mode == Mode::Dry {
        crate::output::print(&render(plan));
        return Ok(());
    }
    let total = plan.steps.len();
    let started = Instant::now();
    for (index, step) in plan.steps.iter().enumerate() {
        let (number, title) = (index + 1, step.title());
        let title = title.as_str();
        if mode == Mode::Check && step.changes_something() {
            report(Event::StepSkipped { number, total, title, reason: "--check changes nothing" });
            continue;
        }
        report(Event::StepStarted { number, total, title });
        let step_started = Instant::now();
        match runner.carry_out(step).await {
            Ok(outcome) => {
                let outcome = outcome.as_deref().unwrap_or("ok");
                report(Event::StepDone { number, total, title, outcome, elapsed: step_started.elapsed() });
            }
            Err(error) => {
                report(Event::StepFailed { number, total, title, elapsed: step_started.elapsed() });
                return Err(error);
            }
        }
    }
    runner.after_steps(mode).await;
    report(Event::RunDone { total, elapsed: started.elapsed() });
    Ok(())
}

/// What executes a step. The agent's own runner does the real work; the plan does not care how.
#[expect(async_fn_in_trait, reason = "the runner is used in this crate only, with one executor")]
pub trait StepRunner {
    /// Executes one step; `Ok(Some(text))` replaces "ok" in the step's log line.
    async fn carry_out(&mut self, step: &Step) -> Result<Option<String>>;

    /// After the last step of a run that succeeded, before its closing line (e.g. the lines that
    /// come in the background, given their last chance).
    async fn after_steps(&mut self, _mode: Mode) {}
}
