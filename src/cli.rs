//! The command line: `agent run [--dry]` and its flags (clap derive), and the environment variables
//! that are read without a flag because they hold secrets or come from CodeBuild.
//!
//! Flags that the Jets-style setup also names as a variable read it with clap's `env` (shown in
//! `--help`, values hidden). Secrets (`JETS_SSH_KEY`, `DOCKER_PASS`, the key's passphrase) are read
//! from the environment only: a secret on a command line is visible to every process on the host.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::error::exit;
use crate::image::spec::{Builder, ProgressMode};
use crate::output::LogFormat;

/// Builds Docker images on a remote Docker host that keeps its layer cache between builds.
///
/// Run it in an AWS CodeBuild buildspec phase with the Jets-style variables (DOCKER_HOST,
/// JETS_SSH_KEY, JETS_SSH_KNOWN, DOCKER_USER, DOCKER_PASS); rehearse it anywhere with
/// `agent run --dry`.
#[derive(Debug, Parser)]
#[command(name = "agent", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log output: -v for debug, -vv for trace (RUST_LOG, when set, takes precedence)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output: warnings and errors only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "AGENT_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the image on the Docker host and push its tags (or, with --dry, print the plan)
    Run(Box<RunArgs>),
    /// Set up a remote Docker host: its host keys and a login key, into Parameter Store
    /// (`agent run --check` checks a host)
    #[command(subcommand)]
    Host(HostCommand),
}

/// The `agent host` commands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Print every host key the host's sshd offers as hashed known_hosts lines (stdout), each
    /// key's type and SHA256 fingerprint on stderr to compare with the host's own; optionally
    /// store the lines in Parameter Store, for JETS_SSH_KNOWN: SSM:NAME
    Keyscan(KeyscanArgs),
    /// Make a new ed25519 key pair to log in to the host with: the private key goes into Parameter
    /// Store as a SecureString and nowhere else (for JETS_SSH_KEY: SSM:NAME); the public key line
    /// is printed on stdout, for the host's authorized_keys
    Keygen(KeygenArgs),
    /// On the Docker host, from a systemd timer: run a command (by default `systemctl poweroff`,
    /// which stops an EBS-backed instance) once no client has been connected for --after; never
    /// while one is (every build has one: the agent's SSH connection, the docker CLI's). Each run is
    /// one look; examples/host/agent-idle-stop.timer runs it every minute
    IdleStop(IdleStopArgs),
}

/// The flags of `agent host idle-stop`.
#[derive(Debug, Clone, Args)]
pub struct IdleStopArgs {
    /// How long the host must have had no client (30m, 1h, 90s)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub after: std::time::Duration,

    /// What to run once idle that long, with /bin/sh -c
    #[arg(long, default_value = "systemctl poweroff", value_name = "COMMAND")]
    pub command: String,

    /// A local TCP port whose established connections are clients (repeatable): the sshd's
    #[arg(long, default_value = "22", value_name = "PORT")]
    pub port: Vec<u16>,

    /// The daemon's socket, whose connections are clients (repeatable)
    #[arg(long, default_value = "/var/run/docker.sock", value_name = "PATH")]
    pub socket: Vec<std::path::PathBuf>,

    /// A process whose connections to the daemon's socket do not count, by its name as `ps -o comm`
    /// shows it (repeatable): a monitoring agent that holds the socket open
    #[arg(long, value_name = "NAME")]
    pub ignore_client: Vec<String>,

    /// Where the time a client was last seen is kept (with the boot's id: a boot starts the clock again)
    #[arg(long, default_value = "/run/agent/idle-stop", value_name = "PATH")]
    pub state: std::path::PathBuf,

    /// Look and say what would be done: no command run, no state written
    #[arg(long)]
    pub dry: bool,
}

/// The flags of `agent host keyscan`.
#[derive(Debug, Clone, Args)]
pub struct KeyscanArgs {
    /// The host: ssh://[user@]host[:port], as in DOCKER_HOST (a socket path after it is ignored)
    #[arg(value_name = "URL")]
    pub url: String,

    /// Also store the lines in Parameter Store as a SecureString of this name (e.g. /ci/docker/known_hosts)
    #[arg(long, value_name = "NAME")]
    pub put_parameter: Option<String>,

    /// Replace the parameter if it exists (never replaced otherwise)
    #[arg(long, requires = "put_parameter")]
    pub overwrite: bool,

    /// The AWS region of the parameter, and of an EC2 instance [default: AWS_REGION, else AWS_DEFAULT_REGION]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Seconds to wait for the host's sshd
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// For an EC2 instance (ssh://user@i-…): seconds it may take to be started, when stopped, and
    /// answer
    #[arg(long, default_value_t = 180, env = "AGENT_START_TIMEOUT", value_name = "SECONDS")]
    pub start_timeout: u64,

    /// For an EC2 instance: which of its addresses to scan, private or public
    #[arg(long, value_enum, default_value_t, env = "AGENT_HOST_ADDRESS", value_name = "KIND")]
    pub host_address: crate::aws::ec2::AddressKind,

    /// Print what would be done, and do nothing: no connection, no parameter written
    #[arg(long)]
    pub dry: bool,
}

/// The flags of `agent host keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// The SecureString parameter that receives the private key (e.g. /ci/docker/ssh-key)
    #[arg(long, value_name = "NAME", required = true)]
    pub put_parameter: String,

    /// The comment of the public key line [default: agent SSM:NAME]
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,

    /// Replace the parameter if it exists (never replaced otherwise)
    #[arg(long)]
    pub overwrite: bool,

    /// The AWS region of the parameter, and of an EC2 instance [default: AWS_REGION, else AWS_DEFAULT_REGION]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Print what would be done, and do nothing: no key made, no parameter written
    #[arg(long)]
    pub dry: bool,
}

/// What the `--ssh` agents sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SshSign {
    /// SSH user authentication only.
    Logins,
    /// Any data.
    Anything,
}

/// The flags of `agent run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Print the plan (every step, where each value comes from, secrets masked) and do nothing:
    /// no file is written and no connection is made
    #[arg(long)]
    pub dry: bool,

    /// Check without changing anything: resolve SSM references, connect to the daemon, check it
    /// and the registry logins; write no file, build and push nothing
    #[arg(long, conflicts_with = "dry")]
    pub check: bool,

    /// The Docker daemon: ssh://[user@]host[:port][/socket], tcp://host[:port] or unix:///path;
    /// may be SSM:/parameter. Repeat for a pool: each image builds on the host its repository
    /// hashes to, the next by the same hash taking over when it does not answer (--host wins over
    /// AGENT_HOSTS, which wins over DOCKER_HOST) [default: the local socket]
    #[arg(long = "host", short = 'H', env = "DOCKER_HOST", hide_env_values = true, value_name = "URL")]
    pub host: Vec<String>,

    /// The daemon to build on when no host of the pool answers (cold, but the build is done), e.g.
    /// unix:///var/run/docker.sock; may be SSM:/parameter
    #[arg(long, env = "AGENT_FALLBACK_HOST", hide_env_values = true, value_name = "URL")]
    pub fallback_host: Option<String>,

    /// The image repository to build and push, without tag (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/app)
    #[arg(long, env = "REPOSITORY_URI", hide_env_values = true, value_name = "REPO")]
    pub image: Option<String>,

    /// A tag to build and push; repeat for several [default: latest, plus IMAGE_TAG or else the
    /// first 7 characters of CODEBUILD_RESOLVED_SOURCE_VERSION]
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    pub tags: Vec<String>,

    /// The build context directory
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub context: PathBuf,

    /// The Dockerfile [default: DIR/Dockerfile]
    #[arg(long, short = 'f', value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// A build-time variable, KEY=VALUE, or KEY alone to pass the value of the environment variable KEY; repeatable
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,

    /// The build stage to stop at (a multi-stage Dockerfile's `FROM … AS NAME`)
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,

    /// A label to set on the image, KEY=VALUE; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// The platform to build for, e.g. linux/amd64 [default: the daemon's]; two or more, comma
    /// separated, build one image per platform, each on DOCKER_HOST_<ARCH> when set
    #[arg(long, env = "PLATFORMS", value_name = "OS/ARCH[,OS/ARCH...]")]
    pub platform: Option<String>,

    /// Always pull newer versions of the base images
    #[arg(long)]
    pub pull: bool,

    /// Build without using the daemon's layer cache
    #[arg(long)]
    pub no_cache: bool,

    /// The daemon's builder: auto is BuildKit when the daemon offers it (Linux, API 1.39 or later),
    /// else the classic builder [default: DOCKER_BUILDKIT=1 or 0 as for the docker CLI, else auto]
    #[arg(long, value_enum, value_name = "BUILDER")]
    pub builder: Option<Builder>,

    /// A secret for `RUN --mount=type=secret`, as buildx writes it: id=ID,env=VARIABLE (which may
    /// hold SSM:/parameter) or id=ID,src=FILE; repeatable; needs BuildKit
    #[arg(long = "secret", value_name = "id=ID,env=VAR|src=FILE")]
    pub secrets: Vec<String>,

    /// SSH agent forwarding for `RUN --mount=type=ssh`: `default` (the key in JETS_SSH_KEY) or
    /// ID=PATH[,PATH] (private key files), held in memory; repeatable; needs BuildKit
    #[arg(long = "ssh", value_name = "default|ID=PATH")]
    pub ssh: Vec<String>,

    /// What the --ssh agents sign for the build: `logins`, SSH user authentication only (what ssh
    /// and git over SSH ask for), or `anything` (e.g. `ssh-keygen -Y sign`, commit signing)
    #[arg(long, value_enum, default_value_t = SshSign::Logins, env = "AGENT_SSH_SIGN", value_name = "WHAT")]
    pub ssh_sign: SshSign,

    /// Let --ssh forward a key that also logs into a host of the run (JETS_SSH_KEY, JETS_SSH_KEY_<ARCH>):
    /// whoever is root on the build's host could then log into the others with it while the build runs
    #[arg(long, env = "AGENT_SSH_FORWARD_LOGIN_KEY")]
    pub ssh_forward_login_key: bool,

    /// The name under which the Docker host keeps its copy of the context between BuildKit builds,
    /// so that only changed files are sent [default: derived from the image repository and the
    /// context's path in CODEBUILD_SRC_DIR or the git checkout]
    #[arg(long, env = "AGENT_CONTEXT_KEY", value_name = "KEY")]
    pub context_key: Option<String>,

    /// With BuildKit, send each file git tracks and that is unchanged since checkout with an mtime
    /// made from its content (1980-01-01 plus a fraction of a second), so that a fresh clone does
    /// not send every file again; the image's files get those mtimes
    #[arg(long, env = "AGENT_STABLE_MTIMES", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true", value_name = "BOOL")]
    pub stable_mtimes: Option<bool>,

    /// Build and tag, but push nothing
    #[arg(long)]
    pub no_push: bool,

    /// Push every tag even when the registry already holds the same image (by default a BuildKit
    /// build that is the same image as a tag's in the registry keeps that image's digest)
    #[arg(long, env = "AGENT_ALWAYS_PUSH", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true", value_name = "BOOL")]
    pub always_push: Option<bool>,

    /// Write imagedefinitions.json (CodePipeline's ECS format) for this container name, in the working directory
    #[arg(long, value_name = "CONTAINER_NAME")]
    pub image_definitions: Option<String>,

    /// The registry that DOCKER_USER/DOCKER_PASS log into; may be SSM:/parameter [default: Docker Hub]
    #[arg(long, env = "DOCKER_REGISTRY", hide_env_values = true, value_name = "HOST")]
    pub registry: Option<String>,

    /// The user name for that registry (its password is read from DOCKER_PASS); may be SSM:/parameter
    #[arg(long, env = "DOCKER_USER", hide_env_values = true, value_name = "NAME")]
    pub registry_user: Option<String>,

    /// ECR registries to log into with an ECR token, comma-separated, in addition to the image's own
    #[arg(
        long = "ecr-registry",
        env = "ECR_REGISTRY",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub ecr_registries: Vec<String>,

    /// The AWS region for SSM and ECR [default: AWS_REGION, else AWS_DEFAULT_REGION]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Where to install the SSH private key from JETS_SSH_KEY [default: ~/.ssh/id_rsa]
    #[arg(long, value_name = "PATH")]
    pub ssh_key_file: Option<PathBuf>,

    /// Where to add the host keys from JETS_SSH_KNOWN [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "PATH")]
    pub known_hosts_file: Option<PathBuf>,

    /// Seconds to wait for a connection to the Docker host
    #[arg(long, default_value_t = 20, env = "AGENT_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: u64,

    /// Seconds a host of a pool (or the fallback) has to answer before the next one is tried; the
    /// last one tried has the whole --connect-timeout
    #[arg(long, default_value_t = 5, env = "AGENT_FAILOVER_TIMEOUT", value_name = "SECONDS")]
    pub failover_timeout: u64,

    /// Seconds an EC2 instance named as the host (ssh://user@i-…) may take to be started (when
    /// stopped, or stopping) and to answer on its sshd
    #[arg(long, default_value_t = 180, env = "AGENT_START_TIMEOUT", value_name = "SECONDS")]
    pub start_timeout: u64,

    /// Which address of an EC2 instance named as the host the agent connects to: private (CodeBuild
    /// in the instance's VPC) or public
    #[arg(long, value_enum, default_value_t, env = "AGENT_HOST_ADDRESS", value_name = "KIND")]
    pub host_address: crate::aws::ec2::AddressKind,

    /// Seconds the SSH connection may go unanswered before the run fails as a dropped connection
    /// (a keepalive is sent every third of it; a build step may be silent for longer)
    #[arg(long, default_value_t = 45, env = "AGENT_READ_TIMEOUT", value_name = "SECONDS")]
    pub read_timeout: u64,

    /// The build's log: plain shows the output of RUN steps, steps only the steps
    /// [default: BUILDKIT_PROGRESS as docker reads it (quiet is steps), else plain]
    #[arg(long, value_enum, env = "AGENT_PROGRESS", value_name = "MODE")]
    pub progress: Option<ProgressMode>,

    /// Write the build's metadata as JSON (buildx's keys: containerimage.digest, image.name,
    /// containerimage.config.digest; and each step, cached or not, with its time) after a successful run
    #[arg(long, value_name = "PATH")]
    pub metadata_file: Option<PathBuf>,

    /// After a successful run, prune each host's build cache down to this size if it is over it
    /// (docker's units, binary as `docker builder prune --keep-storage` reads them: 40GB is 40 GiB)
    #[arg(long, env = "AGENT_KEEP_STORAGE", value_name = "SIZE")]
    pub keep_storage: Option<String>,
}

/// The environment variables read without a flag, with what each is for; printed in `--help`.
pub const ENV_ONLY: &[(&str, &str)] = &[
    ("JETS_SSH_KEY", "the SSH private key for the Docker host (secret; may be SSM:/parameter)"),
    ("JETS_SSH_KEY_PASSPHRASE", "the passphrase of an encrypted JETS_SSH_KEY (secret)"),
    ("JETS_SSH_KNOWN", "known_hosts line(s) for the Docker host (may be SSM:/parameter)"),
    (
        "AGENT_HOSTS",
        "a pool of Docker hosts, comma-separated, each may be SSM:/parameter (used instead of DOCKER_HOST; --host wins)",
    ),
    ("DOCKER_PASS", "the password or token for DOCKER_USER (secret; may be SSM:/parameter)"),
    ("IMAGE_TAG", "a tag added to `latest` when no --tag is given"),
    ("CODEBUILD_RESOLVED_SOURCE_VERSION", "the commit; its first 7 characters tag the image when IMAGE_TAG is unset"),
    ("AWS_REGION, AWS_DEFAULT_REGION", "the AWS region for SSM and ECR"),
    ("DOCKER_TLS_VERIFY, DOCKER_CERT_PATH", "TLS for tcp:// daemons, as the docker CLI reads them"),
    ("DOCKER_CONFIG", "the directory of the docker config.json [default: ~/.docker]"),
    ("SOURCE_DATE_EPOCH", "seconds since 1970 for the image's org.opencontainers.image.created label"),
    ("BUILDKIT_PROGRESS", "plain, auto or tty (the build's output shown) or quiet (steps only), as docker reads it"),
    ("RUST_LOG", "log filter, e.g. agent=debug (overrides -v and -q)"),
];

/// The text after `agent run --help`: environment-only variables and exit codes.
pub fn run_after_help() -> String {
    let mut text = String::from("Environment (read without a flag):\n");
    for (name, meaning) in ENV_ONLY {
        text.push_str(&format!("  {name}\n          {meaning}\n"));
    }
    text.push_str("\nExit codes:\n");
    for (code, name, meaning) in exit::TABLE {
        text.push_str(&format!("  {code:>3}  {name:<19} {meaning}\n"));
    }
    text
}

/// The clap command with the generated help texts attached.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommand("run", |run| run.after_long_help(run_after_help()))
}

/// Parses the command line. The matches are kept to tell where each value came from.
pub fn parse<I, T>(argv: I) -> Result<(Cli, clap::ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::FromArgMatches;
    let matches = command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches))
}

/// A snapshot of the environment, read once: the config is built from it, and tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process's environment. Values that are not UTF-8 are kept out (and so read as unset).
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// The value of a variable; an empty value counts as unset, as CodeBuild leaves unset ones empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|value| !value.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        command().debug_assert();
    }

    #[test]
    fn repeatable_flags_collect() {
        let (cli, _) =
            parse(["agent", "run", "--tag", "a", "-t", "b", "--build-arg", "X=1", "--build-arg", "Y"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not a run") };
        assert_eq!(args.tags, ["a", "b"]);
        assert_eq!(args.build_args, ["X=1", "Y"]);
    }

    #[test]
    fn help_lists_env_only_variables_and_exit_codes() {
        let help = run_after_help();
        assert!(help.contains("JETS_SSH_KEY"));
        assert!(help.contains("  3  config"));
    }
}
