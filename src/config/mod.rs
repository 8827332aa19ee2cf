//! The validated configuration: flags and environment turned into one [`Config`], with every
//! problem found at once and reported together (see [`crate::error::Problem`]).
//!
//! Values that may be `SSM:` references are kept as [`Value::Ssm`] until the plan's "resolve SSM
//! parameters" step fetches them; everything else is checked here, before any step runs.

pub mod mounts;
pub mod platforms;
pub mod resolve;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;

use crate::cli::{Environment, RunArgs};
use crate::docker::budget::Budget;
use crate::docker::host::{DockerHost, Tls};
use crate::error::{Error, Problem};
use crate::image::spec::{BuildArg, BuildSpec, Builder, ProgressMode};
use crate::registry::reference::{self as image_ref, EcrRegistry, Platform, Repository};
use crate::secrets::{Origin, Secret, SsmRef};
use crate::ssh::key::SshKey;
use crate::ssh::known_hosts::KnownHosts;
use std::sync::Arc;

pub use crate::secrets::{Sourced, Value};

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pool of daemons to build on, in the order given, without duplicates; never empty (one for
    /// DOCKER_HOST or the local socket, the common case).
    pub hosts: Vec<Sourced<Value<DockerHost>>>,
    /// The daemon to build on when no host of the pool answers.
    pub fallback_host: Option<Sourced<Value<DockerHost>>>,
    /// How long a host that has a next one to fail over to may take to answer.
    pub failover_timeout: Duration,
    /// HTTPS with client certificates for `tcp://` daemons (`DOCKER_TLS_VERIFY`).
    pub tls: Option<Tls>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long an EC2 instance named as a host may take to be started and answer.
    pub start_timeout: Duration,
    /// Which address of such an instance is connected to.
    pub host_address: crate::aws::ec2::AddressKind,
    /// How long the SSH connection may go unanswered (keepalives every third of it).
    pub read_timeout: Duration,
    /// The SSH private key to install and log in with (`JETS_SSH_KEY`), decoded.
    pub ssh_key: Option<Sourced<Value<Arc<SshKey>>>>,
    /// The passphrase of an encrypted `JETS_SSH_KEY`.
    pub ssh_key_passphrase: Option<Secret>,
    /// Where the key is installed.
    pub ssh_key_file: Sourced<PathBuf>,
    /// The host keys to trust (`JETS_SSH_KNOWN`).
    pub known_hosts: Option<Sourced<Value<String>>>,
    /// Where the host keys are added.
    pub known_hosts_file: Sourced<PathBuf>,
    /// The `DOCKER_USER`/`DOCKER_PASS` login, if both are set.
    pub registry_login: Option<RegistryLogin>,
    /// Registries to log into with an ECR token.
    pub ecr_logins: Vec<EcrLogin>,
    /// The AWS region for SSM (and ECR registries whose host names none).
    pub region: Option<Sourced<String>>,
    /// The image repository.
    pub image: Sourced<Repository>,
    /// The tags to build and push, in order, without duplicates.
    pub tags: Sourced<Vec<String>>,
    /// What to build.
    pub build: Build,
    /// Whether to push the tags.
    pub push: bool,
    /// `--always-push`: push even when the registry holds the same image (no comparison first).
    pub always_push: bool,
    /// The container name for imagedefinitions.json.
    pub image_definitions: Option<String>,
    /// Where to write the build's metadata (buildx's `--metadata-file`), absolute.
    pub metadata_file: Option<PathBuf>,
    /// The build cache budget of each host (`--keep-storage`).
    pub keep_storage: Option<Sourced<Budget>>,
    /// The commit being built (`CODEBUILD_RESOLVED_SOURCE_VERSION`), for the image's labels.
    pub revision: Option<String>,
    /// The docker CLI's configuration directory (`DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config_dir: PathBuf,
}

/// The login with `DOCKER_USER`/`DOCKER_PASS`.
#[derive(Debug, Clone)]
pub struct RegistryLogin {
    /// The registry host; `docker.io` when `DOCKER_REGISTRY` is unset.
    pub registry: Sourced<Value<String>>,
    pub user: Sourced<Value<String>>,
    pub password: Sourced<Value<Secret>>,
}

/// A registry to log into with a token from ECR's GetAuthorizationToken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrLogin {
    pub registry: String,
    /// The region to ask for the token: the host's own, else the configured region.
    pub region: Option<String>,
    /// Where the registry was named: the image repository or `ECR_REGISTRY`.
    pub origin: Origin,
}

/// What to build and how: what the image domain needs ([`BuildSpec`]), and what the run decides
/// around it (the platforms' hosts, the secrets and SSH agents its session serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub spec: BuildSpec,
    /// Two or more platforms (`--platform a,b`): each with its host; empty for one platform or none.
    pub platform_hosts: Vec<crate::config::platforms::PlatformHost>,
    /// `--secret`: the build's secrets, values read (and registered with the redactor).
    pub secrets: Vec<crate::config::mounts::BuildSecret>,
    /// `--ssh`: the forwarded agents and their keys.
    pub ssh: Vec<crate::config::mounts::SshForward>,
    /// `--ssh-sign anything`: the agents sign any data, not only SSH logins.
    pub ssh_sign_anything: bool,
    /// `--ssh-forward-login-key`: `--ssh` may forward a key that logs into a host of the run.
    pub ssh_forward_login_key: bool,
}

impl Build {
    /// The flags given that need BuildKit, when the daemon chooses the builder (`--builder auto`):
    /// a daemon without BuildKit fails its check then.
    pub fn needs_buildkit(&self) -> Vec<&'static str> {
        if self.spec.builder.value != Builder::Auto {
            return Vec::new();
        }
        [("--secret", !self.secrets.is_empty()), ("--ssh", !self.ssh.is_empty())]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect()
    }
}

/// The names of flags and variables, as messages and the plan show them.
pub(crate) mod names {
    pub const DOCKER_HOST: &str = "DOCKER_HOST";
    pub const AGENT_HOSTS: &str = "AGENT_HOSTS";
    pub const AGENT_FALLBACK_HOST: &str = "AGENT_FALLBACK_HOST";
    pub const JETS_SSH_KEY: &str = "JETS_SSH_KEY";
    pub const JETS_SSH_KEY_PASSPHRASE: &str = "JETS_SSH_KEY_PASSPHRASE";
    pub const JETS_SSH_KNOWN: &str = "JETS_SSH_KNOWN";
    pub const DOCKER_USER: &str = "DOCKER_USER";
    pub const DOCKER_PASS: &str = "DOCKER_PASS";
    pub const DOCKER_REGISTRY: &str = "DOCKER_REGISTRY";
    pub const ECR_REGISTRY: &str = "ECR_REGISTRY";
    pub const REPOSITORY_URI: &str = "REPOSITORY_URI";
    pub const IMAGE_TAG: &str = "IMAGE_TAG";
    pub const SOURCE_VERSION: &str = "CODEBUILD_RESOLVED_SOURCE_VERSION";
}

/// Tells whether a clap argument came from its flag, its environment variable, or its default.
pub trait ArgOrigins {
    /// Where the argument `id` (spelt `flag`, read from `env` if it has a variable) came from.
    fn origin(&self, id: &str, flag: &'static str, env: Option<&'static str>) -> Origin;
}

impl ArgOrigins for clap::ArgMatches {
    fn origin(&self, id: &str, flag: &'static str, env: Option<&'static str>) -> Origin {
        match (self.value_source(id), env) {
            (Some(ValueSource::EnvVariable), Some(env)) => Origin::Env(env),
            (Some(ValueSource::CommandLine), _) => Origin::Flag(flag),
            _ => Origin::Default,
        }
    }
}

/// Origins for tests and callers without clap matches: every value given counts as a flag.
pub struct AllFlags;

impl ArgOrigins for AllFlags {
    fn origin(&self, _id: &str, flag: &'static str, _env: Option<&'static str>) -> Origin {
        Origin::Flag(flag)
    }
}

impl Config {
    /// Whether the registry is asked, while the image builds, what its tags hold, so that an
    /// unchanged image is not pushed again: pushing, without `--always-push`, with a builder that
    /// may be BuildKit (the classic builder's images are pushed as before).
    pub fn compares_with_registry(&self) -> bool {
        self.push && !self.always_push && self.build.spec.builder.value != Builder::Classic
    }

    /// Builds the configuration, or reports every problem found.
    pub fn new(args: &RunArgs, origins: &impl ArgOrigins, env: &Environment, cwd: &Path) -> Result<Config, Error> {
        let mut problems = Vec::new();
        let home = env.get("HOME").map(PathBuf::from);
        let daemons = daemons(args, origins, env, home.as_deref(), &mut problems);
        let timeouts = timeouts(args, &mut problems);
        let ssh = ssh_login(args, env, home.as_deref(), cwd, &mut problems);
        let registry_login = registry_login(args, origins, env, &mut problems);
        let region = aws_region(args, env, &mut problems);
        let image = image_repository(args, origins, &mut problems);
        let revision = env.get(names::SOURCE_VERSION).map(|text| text.trim().to_string());
        let tags = default_or_given_tags(args, env, revision.as_deref(), &mut problems);
        let ecr_logins = ecr_logins(args, origins, image.as_ref(), region.as_ref(), &mut problems);
        let build = check_build(args, env, revision.as_deref(), cwd, &mut problems);
        let image_definitions = image_definitions(args, &mut problems);
        let metadata_file = metadata_file(args, cwd, &mut problems);
        let keep_storage = keep_storage(args, origins, &mut problems);
        let docker_config_dir = docker_config_dir(env, home.as_deref(), cwd);

        match (daemons.hosts, ssh.key_file, ssh.known_hosts_file, image, tags, build) {
            (Some(hosts), Some(ssh_key_file), Some(known_hosts_file), Some(image), Some(tags), Some(build))
                if problems.is_empty() =>
            {
                Ok(Config {
                    hosts,
                    fallback_host: daemons.fallback_host,
                    failover_timeout: timeouts.failover,
                    tls: daemons.tls,
                    connect_timeout: timeouts.connect,
                    start_timeout: timeouts.start,
                    host_address: args.host_address,
                    read_timeout: timeouts.read,
                    ssh_key: ssh.key,
                    ssh_key_passphrase: ssh.key_passphrase,
                    ssh_key_file,
                    known_hosts: ssh.known_hosts,
                    known_hosts_file,
                    registry_login,
                    ecr_logins,
                    region,
                    image,
                    tags,
                    build,
                    push: !args.no_push,
                    always_push: args.always_push.unwrap_or(false),
                    image_definitions,
                    metadata_file,
                    keep_storage,
                    revision,
                    docker_config_dir,
                })
            }
            _ => {
                if problems.is_empty() {
                    return Err(Error::Internal("a configuration value is missing but no problem was recorded".into()));
                }
                Err(Error::Config(problems))
            }
        }
    }

    /// Every `SSM:` reference in the configuration, with the variable that holds it, in a stable order.
    pub fn ssm_references(&self) -> Vec<(&Origin, &SsmRef)> {
        let mut references = Vec::new();
        for host in self.hosts.iter().chain(&self.fallback_host) {
            if let Value::Ssm(reference) = &host.value {
                references.push((&host.origin, reference));
            }
        }
        if let Some(Sourced { value: Value::Ssm(reference), origin }) = &self.ssh_key {
            references.push((origin, reference));
        }
        if let Some(Sourced { value: Value::Ssm(reference), origin }) = &self.known_hosts {
            references.push((origin, reference));
        }
        if let Some(login) = &self.registry_login {
            if let Value::Ssm(reference) = &login.registry.value {
                references.push((&login.registry.origin, reference));
            }
            if let Value::Ssm(reference) = &login.user.value {
                references.push((&login.user.origin, reference));
            }
            if let Value::Ssm(reference) = &login.password.value {
                references.push((&login.password.origin, reference));
            }
        }
        for platform in &self.build.platform_hosts {
            if let Some(Sourced { value: Value::Ssm(reference), origin }) = &platform.host {
                references.push((origin, reference));
            }
            if let Some(Sourced { value: Value::Ssm(reference), origin }) = &platform.ssh_key {
                references.push((origin, reference));
            }
            if let Some(Sourced { value: Value::Ssm(reference), origin }) = &platform.known_hosts {
                references.push((origin, reference));
            }
        }
        for secret in &self.build.secrets {
            if let crate::config::mounts::SecretSource::Env { value: Value::Ssm(reference), origin, .. } =
                &secret.source
            {
                references.push((origin, reference));
            }
        }
        references
    }
}

/// The daemons to build on: the pool, the fallback, and the TLS they are reached with.
struct Daemons {
    /// `None` when an entry of the pool is wrong (the problem recorded).
    hosts: Option<Vec<Sourced<Value<DockerHost>>>>,
    fallback_host: Option<Sourced<Value<DockerHost>>>,
    tls: Option<Tls>,
}

/// The daemons to build on: TLS (`DOCKER_TLS_VERIFY`), the pool and the fallback host.
fn daemons(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    env: &Environment,
    home: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Daemons {
    let host_origin = origins.origin("host", "--host", Some(names::DOCKER_HOST));
    let tls = docker_tls(env, home);
    let hosts = host_pool(args, host_origin, env, tls.is_some(), problems);
    let fallback_host = fallback_host(args, origins, tls.is_some(), problems);
    Daemons { hosts, fallback_host, tls }
}

/// HTTPS with client certificates for `tcp://` daemons, when `DOCKER_TLS_VERIFY` is set: the
/// certificates from `DOCKER_CERT_PATH`, else `~/.docker`.
fn docker_tls(env: &Environment, home: Option<&Path>) -> Option<Tls> {
    env.get("DOCKER_TLS_VERIFY").map(|_| Tls {
        cert_dir: env
            .get("DOCKER_CERT_PATH")
            .map(PathBuf::from)
            .or_else(|| home.map(|home| home.join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker")),
    })
}

/// The pool: every --host given, else AGENT_HOSTS, else DOCKER_HOST (a pool of one), else the
/// local socket; without duplicates. `None` when an entry is wrong (the problem recorded).
fn host_pool(
    args: &RunArgs,
    host_origin: Origin,
    env: &Environment,
    tls: bool,
    problems: &mut Vec<Problem>,
) -> Option<Vec<Sourced<Value<DockerHost>>>> {
    let given: Vec<&str> = args.host.iter().map(|text| text.trim()).filter(|text| !text.is_empty()).collect();
    let agent_hosts: Vec<&str> = env
        .get(names::AGENT_HOSTS)
        .map(|text| text.split(',').map(str::trim).filter(|entry| !entry.is_empty()).collect())
        .unwrap_or_default();
    let (entries, pool_origin) = match host_origin {
        Origin::Flag(_) if !given.is_empty() => (given, host_origin),
        _ if !agent_hosts.is_empty() => (agent_hosts, Origin::Env(names::AGENT_HOSTS)),
        _ if !given.is_empty() => (given, host_origin),
        _ => (Vec::new(), Origin::Default),
    };
    let problems_before_hosts = problems.len();
    let mut hosts = Vec::new();
    for text in &entries {
        if let Some(value) = host_value(text, tls, &pool_origin, problems) {
            if !hosts.iter().any(|seen: &Sourced<Value<DockerHost>>| seen.value == value) {
                hosts.push(Sourced { value, origin: pool_origin.clone() });
            }
        }
    }
    if entries.is_empty() {
        let local = DockerHost::parse("", false).expect("the default host is valid");
        hosts.push(Sourced { value: Value::Known(local), origin: Origin::Default });
    }
    (problems.len() == problems_before_hosts).then_some(hosts)
}

/// The daemon to build on when no host of the pool answers (`--fallback-host`), if given.
fn fallback_host(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    tls: bool,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Value<DockerHost>>> {
    let fallback_origin = origins.origin("fallback_host", "--fallback-host", Some(names::AGENT_FALLBACK_HOST));
    args.fallback_host
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .and_then(|text| host_value(text, tls, &fallback_origin, problems))
        .map(|value| Sourced { value, origin: fallback_origin })
}

/// How long to wait for the daemons.
struct Timeouts {
    failover: Duration,
    start: Duration,
    connect: Duration,
    read: Duration,
}

/// The failover, connect and read timeouts, checked; the failover timeout is at most the connect one.
fn timeouts(args: &RunArgs, problems: &mut Vec<Problem>) -> Timeouts {
    if args.failover_timeout == 0 {
        problems.push(
            Problem::new("--failover-timeout", "the timeout is 0 seconds")
                .hint("give a number of seconds above 0, e.g. 5"),
        );
    }
    if args.read_timeout < 3 {
        problems.push(
            Problem::new("--read-timeout", format!("{} seconds is too short", args.read_timeout))
                .hint("give 3 seconds or more (a keepalive goes every third of it), e.g. 45"),
        );
    }
    if args.start_timeout == 0 {
        problems.push(
            Problem::new("--start-timeout", "the timeout is 0 seconds")
                .hint("give a number of seconds above 0, e.g. 180"),
        );
    }
    if args.connect_timeout == 0 {
        problems.push(
            Problem::new("--connect-timeout", "the timeout is 0 seconds")
                .hint("give a number of seconds above 0, e.g. 20"),
        );
    }
    Timeouts {
        failover: Duration::from_secs(args.failover_timeout.min(args.connect_timeout)),
        start: Duration::from_secs(args.start_timeout),
        connect: Duration::from_secs(args.connect_timeout),
        read: Duration::from_secs(args.read_timeout),
    }
}

/// What the SSH login to the daemons uses: the key, the trusted host keys, and where they go.
struct SshLogin {
    key: Option<Sourced<Value<Arc<SshKey>>>>,
    key_passphrase: Option<Secret>,
    /// `None` when it has no place (the problem recorded).
    key_file: Option<Sourced<PathBuf>>,
    known_hosts: Option<Sourced<Value<String>>>,
    /// `None` when it has no place (the problem recorded).
    known_hosts_file: Option<Sourced<PathBuf>>,
}

/// The SSH key (`JETS_SSH_KEY`, `JETS_SSH_KEY_PASSPHRASE`), the host keys (`JETS_SSH_KNOWN`), and
/// the files they are installed in (`--ssh-key-file`, `--known-hosts-file`).
fn ssh_login(
    args: &RunArgs,
    env: &Environment,
    home: Option<&Path>,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> SshLogin {
    let key_passphrase = env.get(names::JETS_SSH_KEY_PASSPHRASE).map(Secret::new);
    let key = ssh_key(env, key_passphrase.as_ref(), problems);
    let known_hosts = known_hosts(env, problems);
    let key_file = path_in_home(args.ssh_key_file.as_deref(), "--ssh-key-file", ".ssh/id_rsa", home, cwd, problems);
    let known_hosts_file =
        path_in_home(args.known_hosts_file.as_deref(), "--known-hosts-file", ".ssh/known_hosts", home, cwd, problems);
    SshLogin { key, key_passphrase, key_file, known_hosts, known_hosts_file }
}

/// The SSH private key of `JETS_SSH_KEY`, decoded (with the passphrase if encrypted), or its `SSM:`
/// reference.
fn ssh_key(
    env: &Environment,
    passphrase: Option<&Secret>,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Value<Arc<SshKey>>>> {
    let text = env.get(names::JETS_SSH_KEY)?;
    // `ec2-instance-connect` is a word, not a secret: not handed to the redactor.
    if crate::ssh::key::is_instance_connect_setting(text) {
        return match SshKey::from_setting(text, None) {
            Ok(key) => Some(Sourced { value: Value::Known(Arc::new(key)), origin: Origin::Env(names::JETS_SSH_KEY) }),
            Err(error) => {
                problems.push(Problem::new(names::JETS_SSH_KEY, error.to_string()).hint(error.hint()));
                None
            }
        };
    }
    let value = match secret_value(text, names::JETS_SSH_KEY, problems)? {
        Value::Ssm(reference) => Value::Ssm(reference),
        Value::Known(secret) => match SshKey::from_setting(secret.expose(), passphrase) {
            Ok(key) => Value::Known(Arc::new(key)),
            Err(error) => {
                problems.push(Problem::new(names::JETS_SSH_KEY, error.to_string()).hint(error.hint()));
                return None;
            }
        },
    };
    Some(Sourced { value, origin: Origin::Env(names::JETS_SSH_KEY) })
}

/// The host keys to trust from `JETS_SSH_KNOWN`, checked, or its `SSM:` reference.
fn known_hosts(env: &Environment, problems: &mut Vec<Problem>) -> Option<Sourced<Value<String>>> {
    let text = env.get(names::JETS_SSH_KNOWN)?;
    let value = plain_value(text, names::JETS_SSH_KNOWN, problems)?;
    if let Value::Known(text) = &value {
        if let Err(problem) = check_known_hosts(text, names::JETS_SSH_KNOWN) {
            problems.push(problem);
            return None;
        }
    }
    Some(Sourced { value, origin: Origin::Env(names::JETS_SSH_KNOWN) })
}

/// The registry login with `DOCKER_USER` (`--registry-user`) and `DOCKER_PASS`, at `DOCKER_REGISTRY`
/// (`--registry`): when both are set; one without the other is a problem.
fn registry_login(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    env: &Environment,
    problems: &mut Vec<Problem>,
) -> Option<RegistryLogin> {
    let user_origin = origins.origin("registry_user", "--registry-user", Some(names::DOCKER_USER));
    let user = args.registry_user.as_deref().filter(|text| !text.trim().is_empty());
    let password = env.get(names::DOCKER_PASS);
    match (user, password) {
        (Some(user), Some(password)) => {
            let user = plain_value(user.trim(), names::DOCKER_USER, problems);
            let password = secret_value(password_text(password), names::DOCKER_PASS, problems);
            let registry = login_registry(args, origins, problems);
            match (registry, user, password) {
                (Some(registry), Some(user), Some(password)) => Some(RegistryLogin {
                    registry,
                    user: Sourced { value: user, origin: user_origin },
                    password: Sourced { value: password, origin: Origin::Env(names::DOCKER_PASS) },
                }),
                _ => None,
            }
        }
        (Some(_), None) => {
            problems.push(
                Problem::new(names::DOCKER_PASS, "is not set, but DOCKER_USER is")
                    .hint("set DOCKER_PASS to the password or access token of DOCKER_USER, or unset DOCKER_USER"),
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                Problem::new(names::DOCKER_USER, "is not set, but DOCKER_PASS is")
                    .hint("set DOCKER_USER (or --registry-user) to the user that DOCKER_PASS belongs to"),
            );
            None
        }
        (None, None) => None,
    }
}

/// The registry the `DOCKER_USER` login is for: `--registry` (`DOCKER_REGISTRY`) normalised, or its
/// `SSM:` reference, else Docker Hub.
fn login_registry(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Value<String>>> {
    let registry_origin = origins.origin("registry", "--registry", Some(names::DOCKER_REGISTRY));
    let Some(text) = args.registry.as_deref().map(str::trim).filter(|text| !text.is_empty()) else {
        return Some(Sourced { value: Value::Known(image_ref::DOCKER_HUB.to_string()), origin: Origin::Default });
    };
    match SsmRef::parse(text) {
        Ok(Some(reference)) => Some(Sourced { value: Value::Ssm(reference), origin: registry_origin }),
        Ok(None) => match normalise_registry(text) {
            Ok(host) => Some(Sourced { value: Value::Known(host), origin: registry_origin }),
            Err(message) => {
                problems.push(Problem::new(registry_origin.subject(), message).hint(REGISTRY_HINT));
                None
            }
        },
        Err(message) => {
            problems.push(Problem::new(registry_origin.subject(), message).hint(SSM_HINT));
            None
        }
    }
}

/// The AWS region: `--region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, trimmed; a value that
/// is no region name is a problem.
fn aws_region(args: &RunArgs, env: &Environment, problems: &mut Vec<Problem>) -> Option<Sourced<String>> {
    let region = match (&args.region, env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION")) {
        (Some(region), _, _) => Some(Sourced { value: region.trim().to_string(), origin: Origin::Flag("--region") }),
        (None, Some(region), _) => {
            Some(Sourced { value: region.trim().to_string(), origin: Origin::Env("AWS_REGION") })
        }
        (None, None, Some(region)) => {
            Some(Sourced { value: region.trim().to_string(), origin: Origin::Env("AWS_DEFAULT_REGION") })
        }
        (None, None, None) => None,
    };
    if let Some(region) = &region {
        if region.value.is_empty()
            || !region.value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(
                Problem::new(region.origin.subject(), format!("{:?} is not an AWS region name", region.value))
                    .hint("write a region such as eu-west-1"),
            );
        }
    }
    region
}

/// The image repository to build and push (`--image`, `REPOSITORY_URI`); missing or wrong is a problem.
fn image_repository(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Repository>> {
    let image_origin = origins.origin("image", "--image", Some(names::REPOSITORY_URI));
    let Some(text) = args.image.as_deref().map(str::trim).filter(|text| !text.is_empty()) else {
        problems
            .push(Problem::new("--image", "no image repository is given").hint(
                "pass --image REPO or set REPOSITORY_URI, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
            ));
        return None;
    };
    match Repository::parse(text) {
        Ok(repository) => Some(Sourced { value: repository, origin: image_origin }),
        Err(message) => {
            problems.push(
                Problem::new(image_origin.subject(), message)
                    .hint("an image repository looks like registry.example.com/team/app"),
            );
            None
        }
    }
}

/// The registries to log into with an ECR token: the image's own registry if it is ECR's, then each
/// of `--ecr-registry` (`ECR_REGISTRY`) once, with the region its host names, else the configured one.
fn ecr_logins(
    args: &RunArgs,
    origins: &impl ArgOrigins,
    image: Option<&Sourced<Repository>>,
    region: Option<&Sourced<String>>,
    problems: &mut Vec<Problem>,
) -> Vec<EcrLogin> {
    let mut ecr_logins: Vec<EcrLogin> = Vec::new();
    if let Some(image) = image {
        if let Some(ecr) = EcrRegistry::detect(image.value.registry()) {
            ecr_logins.push(EcrLogin { registry: ecr.host, region: Some(ecr.region), origin: image.origin.clone() });
        }
    }
    let ecr_origin = origins.origin("ecr_registries", "--ecr-registry", Some(names::ECR_REGISTRY));
    for entry in args.ecr_registries.iter().map(|entry| entry.trim()).filter(|entry| !entry.is_empty()) {
        match normalise_registry(entry) {
            Ok(host) => {
                if ecr_logins.iter().any(|login| login.registry == host) {
                    continue;
                }
                let region =
                    EcrRegistry::detect(&host).map(|ecr| ecr.region).or_else(|| region.map(|r| r.value.clone()));
                ecr_logins.push(EcrLogin { registry: host, region, origin: ecr_origin.clone() });
            }
            Err(message) => problems.push(Problem::new(ecr_origin.subject(), message).hint(REGISTRY_HINT)),
        }
    }
    ecr_logins
}

/// The container name for imagedefinitions.json (`--image-definitions`), trimmed; an empty one or
/// one with control characters is a problem.
fn image_definitions(args: &RunArgs, problems: &mut Vec<Problem>) -> Option<String> {
    let name = args.image_definitions.as_ref()?;
    if name.trim().is_empty() || name.chars().any(|c| c.is_control()) {
        problems.push(
            Problem::new("--image-definitions", "the container name is empty or holds control characters")
                .hint("give the container name of the ECS task definition, e.g. web"),
        );
    }
    Some(name.trim().to_string())
}

/// Where to write the build's metadata (`--metadata-file`), absolute; a directory, or a file in a
/// directory that does not exist, is a problem.
fn metadata_file(args: &RunArgs, cwd: &Path, problems: &mut Vec<Problem>) -> Option<PathBuf> {
    let path = absolute(args.metadata_file.as_ref()?, cwd);
    let dir = path.parent().unwrap_or(Path::new("/"));
    if path.is_dir() {
        problems.push(
            Problem::new("--metadata-file", format!("{} is a directory", path.display()))
                .hint("name a file, e.g. --metadata-file build-metadata.json"),
        );
    } else if !dir.is_dir() {
        problems.push(
            Problem::new("--metadata-file", format!("the directory {} does not exist", dir.display()))
                .hint("create it first, or name a file in an existing directory"),
        );
    }
    Some(path)
}

/// The build cache budget of each host (`--keep-storage`, `AGENT_KEEP_STORAGE`), if given.
fn keep_storage(args: &RunArgs, origins: &impl ArgOrigins, problems: &mut Vec<Problem>) -> Option<Sourced<Budget>> {
    let text = args.keep_storage.as_deref().filter(|text| !text.trim().is_empty())?;
    let origin = origins.origin("keep_storage", "--keep-storage", Some("AGENT_KEEP_STORAGE"));
    match Budget::parse(text) {
        Ok(budget) => Some(Sourced { value: budget, origin }),
        Err(message) => {
            problems.push(
                Problem::new(origin.subject(), message)
                    .hint("give a size as docker does, binary: e.g. 40GB (40 GiB), 500MB, 1.5g"),
            );
            None
        }
    }
}

/// The docker CLI's configuration directory: `DOCKER_CONFIG` (absolute), else `~/.docker`, else
/// `/root/.docker`.
fn docker_config_dir(env: &Environment, home: Option<&Path>, cwd: &Path) -> PathBuf {
    env.get("DOCKER_CONFIG")
        .map(|dir| absolute(Path::new(dir), cwd))
        .or_else(|| home.map(|home| home.join(".docker")))
        .unwrap_or_else(|| PathBuf::from("/root/.docker"))
}

/// Checks that every line of known_hosts text is an entry.
pub fn check_known_hosts(text: &str, subject: &str) -> Result<(), Problem> {
    let mut known = KnownHosts::default();
    let bad = known.add_pasted(text, subject);
    if bad.is_empty() && !known.hosts.is_empty() {
        return Ok(());
    }
    let message = if known.hosts.is_empty() {
        "holds no known_hosts entry".to_string()
    } else {
        let lines: Vec<String> = bad.iter().map(|bad| bad.line.to_string()).collect();
        format!("line {} is not a known_hosts entry", lines.join(", "))
    };
    Err(Problem::new(subject, message).hint(
        "store the output of `ssh-keyscan -H -p PORT HOST`: lines like `|1|…|…= ssh-ed25519 AAAA…` or `[host]:2222 ssh-rsa AAAA…`",
    ))
}

pub const SSM_HINT: &str = "write SSM:/path/to/parameter, e.g. SSM:/codebuild/docker/host";
const REGISTRY_HINT: &str =
    "write the registry's host name, with a port if it has one, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com";

/// A password as `docker login --password-stdin` reads it: without the line ending a value pasted
/// into Parameter Store or a file often carries (`\n`, `\r\n`), which a registry would refuse.
pub fn password_text(text: &str) -> &str {
    text.trim_end_matches(['\r', '\n'])
}

/// One daemon address as given: an `SSM:` reference kept for later, or a parsed address; `None` with
/// the problem recorded.
pub fn host_value(text: &str, tls: bool, origin: &Origin, problems: &mut Vec<Problem>) -> Option<Value<DockerHost>> {
    match SsmRef::parse(text) {
        Ok(Some(reference)) => Some(Value::Ssm(reference)),
        Ok(None) => match DockerHost::parse(text, tls) {
            Ok(host) => Some(Value::Known(host)),
            Err(error) => {
                problems.push(Problem::new(origin.subject(), error.message).hint(error.hint));
                None
            }
        },
        Err(message) => {
            problems.push(Problem::new(origin.subject(), message).hint(SSM_HINT));
            None
        }
    }
}

/// A secret as given: an `SSM:` reference kept for later, or the value; `None` with the problem recorded.
fn secret_value(text: &str, name: &'static str, problems: &mut Vec<Problem>) -> Option<Value<Secret>> {
    match SsmRef::parse(text) {
        Ok(Some(reference)) => Some(Value::Ssm(reference)),
        Ok(None) => Some(Value::Known(Secret::new(text))),
        Err(message) => {
            problems.push(Problem::new(name, message).hint(SSM_HINT));
            None
        }
    }
}

/// A plain value as given: an `SSM:` reference kept for later, or the text; `None` with the problem
/// recorded.
fn plain_value(text: &str, name: &'static str, problems: &mut Vec<Problem>) -> Option<Value<String>> {
    match SsmRef::parse(text) {
        Ok(Some(reference)) => Some(Value::Ssm(reference)),
        Ok(None) => Some(Value::Known(text.to_string())),
        Err(message) => {
            problems.push(Problem::new(name, message).hint(SSM_HINT));
            None
        }
    }
}

/// A registry host as the user may write it (`https://host/`, `host:port`) reduced to `host[:port]`.
pub fn normalise_registry(text: &str) -> Result<String, String> {
    let host = text.trim();
    let host = host.strip_prefix("https://").or_else(|| host.strip_prefix("http://")).unwrap_or(host);
    let host = host.trim_end_matches('/');
    let host = host.strip_suffix("/v1").or_else(|| host.strip_suffix("/v2")).unwrap_or(host);
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        return Ok(image_ref::DOCKER_HUB.to_string());
    }
    if host.is_empty() || host.contains('/') {
        return Err(format!("{text:?} is not a registry host"));
    }
    // The same grammar as an image reference's registry part.
    Repository::parse(&format!("{host}/x"))
        .ok()
        .filter(|repository| repository.domain.as_deref() == Some(host) || host == "localhost")
        .map(|_| host.to_string())
        .ok_or_else(|| format!("{text:?} is not a registry host"))
}

/// A file the agent writes: the path given (absolute), else `default` under HOME; `None` when HOME
/// is not set either (the problem recorded).
fn path_in_home(
    given: Option<&Path>,
    flag: &'static str,
    default: &str,
    home: Option<&Path>,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<PathBuf>> {
    match (given, home) {
        (Some(path), _) => Some(Sourced { value: absolute(path, cwd), origin: Origin::Flag(flag) }),
        (None, Some(home)) => Some(Sourced { value: home.join(default), origin: Origin::Default }),
        (None, None) => {
            problems.push(
                Problem::new("HOME", format!("is not set, so ~/{default} has no place"))
                    .hint(format!("set HOME, or pass {flag} PATH")),
            );
            None
        }
    }
}

/// The path made absolute against the working directory, without `.` components.
pub(crate) fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) };
    joined.components().filter(|component| !matches!(component, std::path::Component::CurDir)).collect()
}

/// The tags to build and push: each `--tag`, else `latest` and `IMAGE_TAG` or the commit's first 7
/// characters; without duplicates. `None` when a tag is wrong (the problems recorded).
fn default_or_given_tags(
    args: &RunArgs,
    env: &Environment,
    revision: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Sourced<Vec<String>>> {
    let mut ok = true;
    let mut tags: Vec<String> = Vec::new();
    let mut add = |tag: &str, subject: &str, problems: &mut Vec<Problem>| match image_ref::check_tag(tag) {
        Ok(()) => {
            if !tags.iter().any(|known| known == tag) {
                tags.push(tag.to_string());
            }
        }
        Err(message) => {
            ok = false;
            problems.push(Problem::new(subject, message).hint("a tag is up to 128 letters, digits, '_', '.' and '-'"));
        }
    };
    let origin = if !args.tags.is_empty() {
        for tag in &args.tags {
            add(tag.trim(), "--tag", problems);
        }
        Origin::Flag("--tag")
    } else {
        add(image_ref::LATEST, "--tag", problems);
        if let Some(tag) = env.get(names::IMAGE_TAG) {
            add(tag.trim(), names::IMAGE_TAG, problems);
            Origin::Env(names::IMAGE_TAG)
        } else if let Some(revision) = revision {
            let short: String = revision.chars().take(7).collect();
            add(&short, names::SOURCE_VERSION, problems);
            Origin::Env(names::SOURCE_VERSION)
        } else {
            Origin::Default
        }
    };
    ok.then_some(Sourced { value: tags, origin })
}

/// What to build and how, checked: the context and Dockerfile, the build args and labels, the
/// builder and progress, the target, the platforms, the secrets and SSH agents, the context key.
/// `None` when any of it is wrong (the problems recorded).
fn check_build(
    args: &RunArgs,
    env: &Environment,
    revision: Option<&str>,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Build> {
    let before = problems.len();
    let files = context_and_dockerfile(args, cwd, problems);
    let build_args = build_args(args, env, problems);
    let labels = labels(args, env, revision, problems);
    let builder = builder(args, env, problems);
    let progress = progress_mode(args.progress, env, problems);
    check_target(args, problems);
    let passphrase = env.get(names::JETS_SSH_KEY_PASSPHRASE).map(Secret::new);
    let platforms = platforms(args, env, passphrase.as_ref(), problems);
    let mounts = mounts(args, env, passphrase.as_ref(), builder.as_ref(), cwd, problems);
    let context_key = context_key(args, env, problems);
    let source_root = env.get("CODEBUILD_SRC_DIR").filter(|dir| !dir.trim().is_empty()).map(PathBuf::from);
    let builder = builder.filter(|_| problems.len() == before)?;
    let spec = BuildSpec {
        context: files.context,
        dockerfile: files.dockerfile,
        build_args,
        target: args.target.clone(),
        labels,
        platform: platforms.single,
        pull: args.pull,
        no_cache: args.no_cache,
        builder,
        progress,
        context_key,
        source_root,
        stable_mtimes: args.stable_mtimes.unwrap_or(false),
    };
    Some(Build {
        spec,
        platform_hosts: platforms.hosts,
        secrets: mounts.secrets,
        ssh: mounts.ssh,
        ssh_sign_anything: args.ssh_sign == crate::cli::SshSign::Anything,
        ssh_forward_login_key: args.ssh_forward_login_key,
    })
}

/// The build context and the Dockerfile, absolute.
struct BuildFiles {
    context: PathBuf,
    dockerfile: PathBuf,
}

/// The build context (`--context`), which must be a directory, and the Dockerfile (`--file`, else
/// the context's `Dockerfile`), which must exist.
fn context_and_dockerfile(args: &RunArgs, cwd: &Path, problems: &mut Vec<Problem>) -> BuildFiles {
    let context = absolute(&args.context, cwd);
    if !context.is_dir() {
        let message = if context.exists() { "is not a directory" } else { "does not exist" };
        problems.push(
            Problem::new("--context", format!("the build context {} {message}", context.display()))
                .hint("run the agent in the source directory, or pass --context DIR"),
        );
    }
    let dockerfile = match &args.file {
        Some(file) => absolute(file, cwd),
        None => context.join("Dockerfile"),
    };
    if context.is_dir() && !dockerfile.is_file() {
        problems.push(
            Problem::new("--file", format!("the Dockerfile {} does not exist", dockerfile.display()))
                .hint("pass --file PATH to name the Dockerfile"),
        );
    }
    BuildFiles { context, dockerfile }
}

/// The build args (`--build-arg KEY=VALUE`, or `KEY` for the environment's value, registered with
/// the redactor); one without a valid name is a problem.
fn build_args(args: &RunArgs, env: &Environment, problems: &mut Vec<Problem>) -> Vec<BuildArg> {
    let mut build_args = Vec::new();
    for text in &args.build_args {
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key, Some(value.to_string())),
            None => (text.as_str(), None),
        };
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push(
                Problem::new("--build-arg", format!("{:?} has no valid name before '='", truncate(text)))
                    .hint("write --build-arg KEY=VALUE, or --build-arg KEY to pass the environment variable KEY"),
            );
            continue;
        }
        let from_env = value.is_none();
        let value = value.or_else(|| env.get(key).map(str::to_string));
        // A value taken from the environment is treated as a secret (the plan does not print it,
        // and bollard's debug line of the build URL holds it URL-encoded); one on the command line
        // is not, the command line being visible anyway.
        if let (true, Some(value)) = (from_env, &value) {
            crate::secrets::redactor().register(value);
        }
        build_args.push(BuildArg { key: key.to_string(), value, from_env });
    }
    build_args
}

/// The image's labels: each `--label KEY=VALUE`, then the revision and the creation time
/// (`SOURCE_DATE_EPOCH`) unless given.
fn labels(
    args: &RunArgs,
    env: &Environment,
    revision: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    for text in &args.labels {
        match text.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => labels.push((key.trim().to_string(), value.to_string())),
            _ => problems.push(
                Problem::new("--label", format!("{:?} is not KEY=VALUE", truncate(text)))
                    .hint("write --label KEY=VALUE"),
            ),
        }
    }
    if let Some(revision) = revision {
        if !labels.iter().any(|(key, _)| key == "org.opencontainers.image.revision") {
            labels.push(("org.opencontainers.image.revision".to_string(), revision.to_string()));
        }
    }
    // The creation time only from SOURCE_DATE_EPOCH (reproducible builds' convention): a wall-clock
    // label would change the image on every build, so an unchanged rebuild would never be fully
    // cached and every run would push a new image.
    match env.get("SOURCE_DATE_EPOCH").map(|text| text.trim().parse::<u64>().ok().and_then(rfc3339)) {
        Some(Some(created)) if !labels.iter().any(|(key, _)| key == "org.opencontainers.image.created") => {
            labels.push(("org.opencontainers.image.created".to_string(), created));
        }
        Some(Some(_)) => {}
        Some(None) => problems.push(
            Problem::new("SOURCE_DATE_EPOCH", "is not a number of seconds since 1970")
                .hint("set it to e.g. the commit's time: git log -1 --format=%ct"),
        ),
        None => {}
    }
    labels
}

/// The daemon's builder: `--builder`, else `DOCKER_BUILDKIT` read as the docker CLI does, else auto;
/// `None` when `DOCKER_BUILDKIT` is no boolean (the problem recorded).
fn builder(args: &RunArgs, env: &Environment, problems: &mut Vec<Problem>) -> Option<Sourced<Builder>> {
    match (args.builder, env.get("DOCKER_BUILDKIT").map(str::trim)) {
        (Some(builder), _) => Some(Sourced { value: builder, origin: Origin::Flag("--builder") }),
        (None, None | Some("")) => Some(Sourced { value: Builder::Auto, origin: Origin::Default }),
        // The docker CLI reads it as a Go boolean.
        (None, Some(text)) => match text {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => {
                Some(Sourced { value: Builder::Buildkit, origin: Origin::Env("DOCKER_BUILDKIT") })
            }
            "0" | "f" | "F" | "false" | "FALSE" | "False" => {
                Some(Sourced { value: Builder::Classic, origin: Origin::Env("DOCKER_BUILDKIT") })
            }
            _ => {
                problems.push(
                    Problem::new("DOCKER_BUILDKIT", format!("{:?} is not a boolean", truncate(text)))
                        .hint("set DOCKER_BUILDKIT=1 for BuildKit, 0 for the classic builder, or unset it"),
                );
                None
            }
        },
    }
}

/// Checks that `--target` names a stage: not empty, without whitespace.
fn check_target(args: &RunArgs, problems: &mut Vec<Problem>) {
    if let Some(target) = &args.target {
        if target.trim().is_empty() || target.chars().any(char::is_whitespace) {
            problems.push(
                Problem::new("--target", format!("{target:?} is not a stage name"))
                    .hint("name a stage from `FROM image AS NAME`"),
            );
        }
    }
}

/// The platforms to build for: one (or none) for the build itself, or two or more each with its host.
struct Platforms {
    /// The one platform of `--platform`; `None` when none or two or more are given.
    single: Option<Platform>,
    /// Each platform with its host, when two or more are given; else empty.
    hosts: Vec<crate::config::platforms::PlatformHost>,
}

/// The platforms of `--platform` (`PLATFORMS`): one is the build's own; two or more are each given
/// their host (`DOCKER_HOST_<ARCH>` and its SSH key), with `passphrase` for the keys.
fn platforms(args: &RunArgs, env: &Environment, passphrase: Option<&Secret>, problems: &mut Vec<Problem>) -> Platforms {
    let platforms = match &args.platform {
        Some(text) => crate::config::platforms::parse_list(text, problems),
        None => Vec::new(),
    };
    let hosts = match platforms.len() {
        0 | 1 => Vec::new(),
        _ => {
            let tls = env.get("DOCKER_TLS_VERIFY").is_some();
            crate::config::platforms::hosts_for(&platforms, env, tls, passphrase, problems)
        }
    };
    let single = platforms.first().filter(|_| hosts.is_empty()).cloned();
    Platforms { single, hosts }
}

/// What the build's session serves: its secrets and SSH agents.
struct Mounts {
    secrets: Vec<crate::config::mounts::BuildSecret>,
    ssh: Vec<crate::config::mounts::SshForward>,
}

/// The build's secrets (`--secret`) and SSH agents (`--ssh`, with `passphrase` for their keys);
/// either with the classic builder chosen is a problem, as they need BuildKit.
fn mounts(
    args: &RunArgs,
    env: &Environment,
    passphrase: Option<&Secret>,
    builder: Option<&Sourced<Builder>>,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Mounts {
    let secrets = crate::config::mounts::parse_secrets(&args.secrets, env, cwd, problems);
    let ssh =
        crate::config::mounts::parse_ssh(&args.ssh, env.get(names::JETS_SSH_KEY).is_some(), passphrase, cwd, problems);
    if let Some(Sourced { value: Builder::Classic, origin }) = builder {
        let needs = [("--secret", !args.secrets.is_empty()), ("--ssh", !args.ssh.is_empty())];
        for (flag, given) in needs {
            if given {
                problems.push(
                    Problem::new(flag, format!("needs BuildKit, but the classic builder is chosen ({origin})")).hint(
                        "drop --builder classic / DOCKER_BUILDKIT=0 to build with BuildKit, or build without the flag",
                    ),
                );
            }
        }
    }
    Mounts { secrets, ssh }
}

/// The name of this app's build context (`--context-key`, `AGENT_CONTEXT_KEY`), if given; an empty
/// one is a problem.
fn context_key(args: &RunArgs, env: &Environment, problems: &mut Vec<Problem>) -> Option<Sourced<String>> {
    let key = args.context_key.as_deref()?;
    if key.trim().is_empty() {
        problems.push(
            Problem::new("--context-key", "is empty")
                .hint("give a name for this app's context, or leave it out to derive one"),
        );
        return None;
    }
    let origin = if env.get("AGENT_CONTEXT_KEY") == Some(key) {
        Origin::Env("AGENT_CONTEXT_KEY")
    } else {
        Origin::Flag("--context-key")
    };
    Some(Sourced { value: key.to_string(), origin })
}

/// The build's log: `--progress` (or `AGENT_PROGRESS`), else `BUILDKIT_PROGRESS` with the docker
/// CLI's values (`quiet` is the closest to the step lines alone; `auto` and `tty` draw on a terminal,
/// which a CodeBuild log is not, so they are plain), else plain.
fn progress_mode(flag: Option<ProgressMode>, env: &Environment, problems: &mut Vec<Problem>) -> Sourced<ProgressMode> {
    let plain = Sourced { value: ProgressMode::Plain, origin: Origin::Default };
    if let Some(mode) = flag {
        return Sourced { value: mode, origin: Origin::Flag("--progress") };
    }
    let Some(text) = env.get("BUILDKIT_PROGRESS").map(str::trim) else { return plain };
    let from_env = |value| Sourced { value, origin: Origin::Env("BUILDKIT_PROGRESS") };
    match text.to_ascii_lowercase().as_str() {
        "plain" | "auto" | "tty" | "rawjson" => from_env(ProgressMode::Plain),
        "quiet" => from_env(ProgressMode::Steps),
        _ => {
            problems.push(
                Problem::new("BUILDKIT_PROGRESS", format!("{:?} is not a progress mode", truncate(text)))
                    .hint("set BUILDKIT_PROGRESS to plain or quiet, or pass --progress plain|steps"),
            );
            plain
        }
    }
}

/// Seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ`; `None` past the year 9999.
pub fn rfc3339(seconds: u64) -> Option<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()?;
    time.format(&time::format_description::well_known::Rfc3339).ok()
}

/// A value cut short for an error message.
fn truncate(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    pub(crate) fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        dir
    }

    pub(crate) fn config(argv: &[&str], env: &[(&str, &str)], cwd: &Path) -> Result<Config, Error> {
        let mut full = vec!["agent", "run"];
        full.extend_from_slice(argv);
        let (cli, _) = parse(full).unwrap();
        let Command::Run(args) = cli.command else { panic!("not a run") };
        let mut env = env.to_vec();
        env.push(("HOME", "/home/ci"));
        Config::new(&args, &AllFlags, &Environment::from_pairs(env), cwd)
    }

    fn problems(argv: &[&str], env: &[(&str, &str)]) -> Vec<(String, String)> {
        let dir = fixture();
        match config(argv, env, dir.path()) {
            Err(Error::Config(problems)) => problems.into_iter().map(|p| (p.subject, p.message)).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_has_defaults() {
        let dir = fixture();
        let config = config(&["--image", "app"], &[], dir.path()).unwrap();
        assert_eq!(config.hosts.len(), 1);
        assert_eq!(config.hosts[0].value, Value::Known(DockerHost::Unix { path: "/var/run/docker.sock".into() }));
        assert_eq!(config.hosts[0].origin, Origin::Default);
        assert!(config.fallback_host.is_none());
        assert_eq!(config.tags.value, ["latest"]);
        assert_eq!(config.ssh_key_file.value, PathBuf::from("/home/ci/.ssh/id_rsa"));
        assert_eq!(config.build.spec.dockerfile, dir.path().join("Dockerfile"));
        assert!(config.registry_login.is_none() && config.ecr_logins.is_empty());
        assert!(config.push);
    }

    #[test]
    fn the_pool_comes_from_the_flags_then_agent_hosts_then_docker_host() {
        let dir = fixture();
        let pool = |argv: &[&str], env: &[(&str, &str)]| {
            let mut all = vec!["--image", "app"];
            all.extend_from_slice(argv);
            let config = config(&all, env, dir.path()).unwrap();
            let hosts: Vec<String> = config.hosts.iter().map(|host| show(&host.value)).collect();
            (hosts, config.hosts[0].origin.clone())
        };
        let env = [("AGENT_HOSTS", " ssh://a.example.com , SSM:/ci/b,,ssh://a.example.com")];
        assert_eq!(
            pool(&[], &env),
            (vec!["ssh://a.example.com:22/var/run/docker.sock".into(), "SSM:/ci/b".into()], Origin::Env("AGENT_HOSTS"))
        );
        assert_eq!(
            pool(&["--host", "tcp://h1:2375", "--host", "tcp://h2:2375"], &env),
            (vec!["tcp://h1:2375".into(), "tcp://h2:2375".into()], Origin::Flag("--host"))
        );
        assert_eq!(pool(&[], &[]), (vec!["unix:///var/run/docker.sock".into()], Origin::Default));
        let config = config(
            &["--image", "app", "--fallback-host", "unix:///var/run/docker.sock", "--failover-timeout", "60"],
            &[],
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            config.fallback_host.unwrap().value,
            Value::Known(DockerHost::Unix { path: crate::docker::host::DEFAULT_SOCKET.into() })
        );
        assert_eq!(config.failover_timeout, Duration::from_secs(20), "at most the connect timeout");
        let found = problems(&["--image", "app", "--failover-timeout", "0"], &[("AGENT_HOSTS", "ssh://ok,ftp://no")]);
        let subjects: Vec<&str> = found.iter().map(|(subject, _)| subject.as_str()).collect();
        assert_eq!(subjects, ["AGENT_HOSTS", "--failover-timeout"]);
    }

    #[test]
    fn an_instance_host_takes_the_start_timeout_and_the_address_kind() {
        let dir = fixture();
        let url = "ssh://ec2-user@i-0123456789abcdef0:2222";
        let given = config(&["--image", "app", "--host", url], &[], dir.path()).unwrap();
        assert_eq!(given.start_timeout, Duration::from_secs(180));
        assert_eq!(given.host_address, crate::aws::ec2::AddressKind::Private);
        let flags = ["--image", "app", "--host", url, "--start-timeout", "60", "--host-address", "public"];
        let given = config(&flags, &[], dir.path()).unwrap();
        assert_eq!(given.start_timeout, Duration::from_secs(60));
        assert_eq!(given.host_address, crate::aws::ec2::AddressKind::Public);
        let found = problems(&["--image", "app", "--start-timeout", "0"], &[]);
        let subjects: Vec<&str> = found.iter().map(|(subject, _)| subject.as_str()).collect();
        assert_eq!(subjects, ["--start-timeout"]);
    }

    fn show(value: &Value<DockerHost>) -> String {
        match value {
            Value::Known(host) => host.to_string(),
            Value::Ssm(reference) => reference.to_string(),
        }
    }

    #[test]
    fn default_tags_follow_image_tag_then_commit() {
        let dir = fixture();
        let sha = [("CODEBUILD_RESOLVED_SOURCE_VERSION", "0123456789abcdef")];
        let with_commit = config(&["--image", "app"], &sha, dir.path()).unwrap();
        assert_eq!(with_commit.tags.value, ["latest", "0123456"]);
        let mut env = sha.to_vec();
        env.push(("IMAGE_TAG", "v1"));
        assert_eq!(config(&["--image", "app"], &env, dir.path()).unwrap().tags.value, ["latest", "v1"]);
        assert_eq!(config(&["--image", "app", "-t", "x", "-t", "x"], &env, dir.path()).unwrap().tags.value, ["x"]);
        assert!(
            with_commit
                .build
                .spec
                .labels
                .contains(&("org.opencontainers.image.revision".into(), "0123456789abcdef".into()))
        );
    }

    #[test]
    fn ssm_references_are_kept_for_later() {
        let dir = fixture();
        let env = [("JETS_SSH_KEY", "SSM:/ci/key"), ("DOCKER_PASS", "SSM:/ci/pass")];
        let config =
            config(&["--image", "app", "--host", "SSM:/ci/host", "--registry-user", "bob"], &env, dir.path()).unwrap();
        let names: Vec<String> = config.ssm_references().iter().map(|(_, r)| r.name.clone()).collect();
        assert_eq!(names, ["/ci/host", "/ci/key", "/ci/pass"]);
    }

    #[test]
    fn ecr_registries_come_from_the_image_and_the_list() {
        let dir = fixture();
        let image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app";
        let env = [("AWS_REGION", "us-east-2")];
        let config = config(
            &["--image", image, "--ecr-registry", "127.0.0.1:5001, 123456789012.dkr.ecr.eu-west-1.amazonaws.com"],
            &env,
            dir.path(),
        )
        .unwrap();
        let logins: Vec<(&str, Option<&str>)> =
            config.ecr_logins.iter().map(|l| (l.registry.as_str(), l.region.as_deref())).collect();
        assert_eq!(
            logins,
            [
                ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", Some("eu-west-1")),
                ("127.0.0.1:5001", Some("us-east-2"))
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(
            &[
                "--host",
                "ftp://x",
                "--image",
                "Bad",
                "--build-arg",
                "=v",
                "--tag=-x",
                "--label",
                "nolabel",
                "--connect-timeout",
                "0",
                "--registry-user",
                "bob",
            ],
            &[],
        );
        let subjects: Vec<&str> = found.iter().map(|(subject, _)| subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["--host", "--connect-timeout", "DOCKER_PASS", "--image", "--tag", "--build-arg", "--label"]
        );
    }

    #[test]
    fn the_context_key_comes_from_the_flag_and_an_empty_one_is_a_problem() {
        let dir = fixture();
        let build = config(&["--image", "app", "--context-key", "web"], &[("CODEBUILD_SRC_DIR", "/src")], dir.path())
            .unwrap()
            .build;
        let key = build.spec.context_key.unwrap();
        assert_eq!((key.value.as_str(), key.origin), ("web", Origin::Flag("--context-key")));
        assert_eq!(build.spec.source_root.as_deref(), Some(Path::new("/src")));
        assert!(!build.spec.stable_mtimes);
        let found = problems(&["--image", "app", "--context-key", " "], &[]);
        assert!(found.iter().any(|(subject, _)| subject == "--context-key"), "{found:?}");
    }

    #[test]
    fn missing_image_and_context_are_problems() {
        let dir = fixture();
        let found = match config(&["--context", "nowhere"], &[], dir.path()) {
            Err(Error::Config(problems)) => problems,
            other => panic!("{other:?}"),
        };
        assert_eq!(found[0].subject, "--image");
        assert!(found[1].message.contains("does not exist"), "{found:?}");
    }

    #[test]
    fn build_args_take_values_from_the_environment() {
        let dir = fixture();
        let config = config(
            &["--image", "app", "--build-arg", "A=1", "--build-arg", "B", "--build-arg", "C"],
            &[("B", "from-env")],
            dir.path(),
        )
        .unwrap();
        let args: Vec<(&str, Option<&str>, bool)> =
            config.build.spec.build_args.iter().map(|a| (a.key.as_str(), a.value.as_deref(), a.from_env)).collect();
        assert_eq!(args, [("A", Some("1"), false), ("B", Some("from-env"), true), ("C", None, true)]);
    }

    #[test]
    fn the_builder_comes_from_the_flag_then_docker_buildkit() {
        let dir = fixture();
        let builder = |argv: &[&str], env: &[(&str, &str)]| {
            let mut all = vec!["--image", "app"];
            all.extend_from_slice(argv);
            let builder = config(&all, env, dir.path()).unwrap().build.spec.builder;
            (builder.value, builder.origin)
        };
        assert_eq!(builder(&[], &[]), (Builder::Auto, Origin::Default));
        assert_eq!(builder(&[], &[("DOCKER_BUILDKIT", "0")]), (Builder::Classic, Origin::Env("DOCKER_BUILDKIT")));
        assert_eq!(builder(&[], &[("DOCKER_BUILDKIT", "true")]), (Builder::Buildkit, Origin::Env("DOCKER_BUILDKIT")));
        assert_eq!(
            builder(&["--builder", "classic"], &[("DOCKER_BUILDKIT", "1")]),
            (Builder::Classic, Origin::Flag("--builder"))
        );
        let found = problems(&["--image", "app", "--read-timeout", "2"], &[("DOCKER_BUILDKIT", "yes please")]);
        assert!(found.iter().any(|(subject, _)| subject == "DOCKER_BUILDKIT"), "{found:?}");
        assert!(found.iter().any(|(subject, _)| subject == "--read-timeout"), "{found:?}");
    }

    #[test]
    fn the_progress_mode_comes_from_the_flag_then_buildkit_progress() {
        let dir = fixture();
        let progress = |argv: &[&str], env: &[(&str, &str)]| {
            let mut all = vec!["--image", "app"];
            all.extend_from_slice(argv);
            let progress = config(&all, env, dir.path()).unwrap().build.spec.progress;
            (progress.value, progress.origin)
        };
        assert_eq!(progress(&[], &[]), (ProgressMode::Plain, Origin::Default));
        let from_env = Origin::Env("BUILDKIT_PROGRESS");
        assert_eq!(progress(&[], &[("BUILDKIT_PROGRESS", "quiet")]), (ProgressMode::Steps, from_env.clone()));
        assert_eq!(progress(&[], &[("BUILDKIT_PROGRESS", "auto")]), (ProgressMode::Plain, from_env));
        assert_eq!(
            progress(&["--progress", "plain"], &[("BUILDKIT_PROGRESS", "quiet")]),
            (ProgressMode::Plain, Origin::Flag("--progress"))
        );
        let found = problems(&["--image", "app"], &[("BUILDKIT_PROGRESS", "fancy")]);
        assert!(found.iter().any(|(subject, _)| subject == "BUILDKIT_PROGRESS"), "{found:?}");
    }

    #[test]
    fn created_comes_from_source_date_epoch() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(1_700_000_000).as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(rfc3339(951_782_400).as_deref(), Some("2000-02-29T00:00:00Z"));
        assert_eq!(rfc3339(u64::MAX), None);
        let dir = fixture();
        let config = config(&["--image", "app"], &[("SOURCE_DATE_EPOCH", "1700000000")], dir.path()).unwrap();
        assert!(
            config
                .build
                .spec
                .labels
                .contains(&("org.opencontainers.image.created".into(), "2023-11-14T22:13:20Z".into()))
        );
    }

    #[test]
    fn registries_are_normalised() {
        assert_eq!(normalise_registry("https://index.docker.io/v1/"), Ok("docker.io".into()));
        assert_eq!(normalise_registry("127.0.0.1:5000"), Ok("127.0.0.1:5000".into()));
        assert_eq!(normalise_registry("https://ghcr.io"), Ok("ghcr.io".into()));
        assert!(normalise_registry("not a host").is_err());
        assert!(normalise_registry("host/path").is_err());
    }
}
