//! The dry run's text: each step's lines (where every value comes from, secrets masked), the
//! pool's, and the plan as `agent run --dry` prints it.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Plan, Pool, Step, join, show};
use crate::aws::ec2::{AddressKind, is_instance_id};
use crate::config::{Build, Sourced, Value};
use crate::docker::host::DockerHost;
use crate::image::spec::{BuildSpec, Builder, ProgressMode};
use crate::registry::reference::{LATEST, platform_tag};
use crate::secrets::MASK;

impl Step {
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
            Step::InstallSshKey { origin, path, key, in_memory: true } => {
                lines.push(format!("key from {origin}: {} (the key itself is {MASK})", key.as_deref().unwrap_or("")));
                lines.push(format!(
                    "its public half is pushed to each instance for the URL's user right before connecting \
                     (accepted for 60 s); the key is kept in memory only: {} is not written, so later ssh, git \
                     and docker (ssh://) commands of the buildspec have no key",
                    path.display()
                ));
            }
            Step::InstallSshKey { origin, path, key, in_memory: false } => {
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
            Step::Connect {
                host, timeout, read_timeout, tls, platforms, pool, start_timeout, host_address, ..
            } => {
                lines.extend(instance_lines(self, *host_address, *start_timeout));
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
                let Build { spec, platform_hosts, secrets, ssh, ssh_sign_anything, ssh_forward_login_key } =
                    build.as_ref();
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
                    lines.push(format!(
                        "ssh agent {} holding {} (in memory), signing {}{}",
                        forward.id,
                        forward.describe(),
                        if *ssh_sign_anything { "anything (--ssh-sign anything)" } else { "SSH logins only" },
                        if *ssh_forward_login_key {
                            "; a host login key may be forwarded (--ssh-forward-login-key)"
                        } else {
                            ""
                        }
                    ));
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

/// One line for each host of the connect step that is an EC2 instance: how it is reached and started.
fn instance_lines(step: &Step, address: AddressKind, start_timeout: Duration) -> Vec<String> {
    let Step::Connect { host, platforms, pool, .. } = step else { return Vec::new() };
    let mut hosts: Vec<&Sourced<Value<DockerHost>>> = vec![host];
    if let Some(pool) = pool {
        hosts.extend(pool.hosts.iter().chain(&pool.fallback));
    }
    hosts.extend(platforms.iter().filter_map(|each| each.host.as_ref()));
    let mut names: Vec<&str> = Vec::new();
    for host in hosts {
        if let Value::Known(DockerHost::Ssh { host, .. }) = &host.value
            && is_instance_id(host)
            && !names.contains(&host.as_str())
        {
            names.push(host);
        }
    }
    names
        .into_iter()
        .map(|name| {
            format!(
                "connect to {name} (an EC2 instance: its {} address asked of EC2, started if stopped, up to {} s; \
                 known_hosts lines naming {name} pin its key whatever its address)",
                address.as_str(),
                start_timeout.as_secs()
            )
        })
        .collect()
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
