//! The one error type of the agent, and the exit code of every failure class.
//!
//! Every variant maps, in [`Error::exit_code`], to one of the documented [`exit`] codes. Messages
//! are lowercase fragments ("failed to …") and each error may carry a hint; both are printed once,
//! as text, after passing through the secret redactor (see `run.rs`).

use std::fmt;
use std::path::PathBuf;

/// Exit codes by failure class. The README's table is generated from the same list
/// ([`exit::TABLE`]) and a test keeps the two in step.
pub mod exit {
    /// The run succeeded (or the dry run printed a valid plan).
    pub const OK: u8 = 0;
    /// A bug in the agent: an unexpected internal failure.
    pub const INTERNAL: u8 = 1;
    /// The command line could not be parsed (unknown flag, missing value).
    pub const USAGE: u8 = 2;
    /// Flags or environment variables hold invalid values.
    pub const CONFIG: u8 = 3;
    /// A local file could not be read or written (ssh key, known_hosts, docker config, output).
    pub const LOCAL_FILE: u8 = 4;
    /// An `SSM:` reference could not be resolved (missing, denied, no region, no credentials), or
    /// `agent host` could not write a parameter.
    pub const SECRETS: u8 = 10;
    /// EC2 refused or failed a call about the host's instance (`ssh://user@i-…`): permissions,
    /// credentials, region, or an endpoint that cannot be reached.
    pub const EC2: u8 = 11;
    /// The daemon's host name could not be resolved (or its EC2 instance does not exist).
    pub const NAME_RESOLUTION: u8 = 20;
    /// The daemon's host refused the connection.
    pub const CONNECTION_REFUSED: u8 = 21;
    /// Connecting to the daemon's host, or waiting for its answer, timed out.
    pub const TIMEOUT: u8 = 22;
    /// The SSH host key is not in known_hosts (never trusted on first use).
    pub const HOST_KEY_UNKNOWN: u8 = 23;
    /// The SSH host key differs from the one in known_hosts, or is revoked.
    pub const HOST_KEY_CHANGED: u8 = 24;
    /// The SSH server refused the user's key.
    pub const SSH_AUTH: u8 = 25;
    /// The remote Docker socket is missing or not accessible to the SSH user.
    pub const REMOTE_SOCKET: u8 = 26;
    /// The SSH connection failed or dropped for another reason.
    pub const SSH: u8 = 27;
    /// The TLS handshake with the daemon (`tcp://` with `DOCKER_TLS_VERIFY`) failed: a certificate
    /// was refused, or the port does not speak TLS.
    pub const TLS: u8 = 28;
    /// The TCP connection to the daemon (`tcp://`) failed or dropped for another reason.
    pub const TCP: u8 = 29;
    /// The Docker daemon did not answer or answered with an error.
    pub const DAEMON: u8 = 30;
    /// The Docker daemon's API is older than the agent supports.
    pub const DAEMON_TOO_OLD: u8 = 31;
    /// The host's disk filled up during the build, the export or the push.
    pub const HOST_DISK_FULL: u8 = 32;
    /// The host's Docker could not run a step for a reason of its own (networking, the container
    /// runtime, the storage driver, a daemon restart mid-build).
    pub const HOST_RUNTIME: u8 = 33;
    /// A registry login failed (Docker Hub, a private registry, or ECR).
    pub const LOGIN: u8 = 40;
    /// A registry answered 429 Too Many Requests (a base image's pull, a login, a push, the comparison).
    pub const RATE_LIMITED: u8 = 41;
    /// The image build failed.
    pub const BUILD: u8 = 50;
    /// Pushing a tag failed.
    pub const PUSH: u8 = 60;

    /// Every exit code with its name and meaning, in order, for `--help` and the README.
    pub const TABLE: &[(u8, &str, &str)] = &[
        (OK, "ok", "the run succeeded, or the dry run printed a valid plan"),
        (INTERNAL, "internal", "a bug in the agent"),
        (USAGE, "usage", "the command line could not be parsed"),
        (CONFIG, "config", "flags or environment variables hold invalid values"),
        (LOCAL_FILE, "local-file", "a local file could not be read or written"),
        (SECRETS, "secrets", "an SSM: reference could not be resolved, or a parameter written"),
        (EC2, "ec2", "EC2 refused or failed a call about the host's instance"),
        (NAME_RESOLUTION, "name-resolution", "the daemon's host name did not resolve"),
        (CONNECTION_REFUSED, "connection-refused", "the daemon's host refused the connection"),
        (TIMEOUT, "timeout", "connecting or waiting for an answer timed out"),
        (HOST_KEY_UNKNOWN, "host-key-unknown", "the SSH host key is not in known_hosts"),
        (HOST_KEY_CHANGED, "host-key-changed", "the SSH host key changed or is revoked"),
        (SSH_AUTH, "ssh-auth", "the SSH server refused the key"),
        (REMOTE_SOCKET, "remote-socket", "the remote Docker socket is missing or not accessible"),
        (SSH, "ssh", "the SSH connection failed or dropped"),
        (TLS, "tls", "the TLS handshake with the daemon failed"),
        (TCP, "tcp", "the TCP connection to the daemon failed or dropped"),
        (DAEMON, "daemon", "the Docker daemon did not answer or answered with an error"),
        (DAEMON_TOO_OLD, "daemon-too-old", "the Docker daemon's API is too old"),
        (HOST_DISK_FULL, "host-disk-full", "the host's disk filled up during the build, the export or the push"),
        (HOST_RUNTIME, "host-runtime", "the host's Docker could not run a step (networking, runtime, storage)"),
        (LOGIN, "login", "a registry login failed"),
        (RATE_LIMITED, "rate-limited", "a registry answered 429 Too Many Requests"),
        (BUILD, "build", "the image build failed"),
        (PUSH, "push", "pushing a tag failed"),
    ];
}

/// One invalid value found while building the configuration. All of them are reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The flag or environment variable that holds the value, e.g. `DOCKER_HOST` or `--build-arg`.
    pub subject: String,
    /// What is wrong, as a lowercase fragment. Never contains a secret value.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { subject: subject.into(), message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Everything that can make a run fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more configuration problems, reported together.
    #[error("invalid configuration ({} problem{})", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Config(Vec<Problem>),

    /// A local file could not be read or written.
    #[error("failed to {action} {}: {source}", .path.display())]
    LocalFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: Option<String>,
    },

    /// `agent host idle-stop`'s command failed.
    #[error("the idle command {command:?} failed ({status})")]
    IdleCommand { command: String, status: String },

    /// The SSH key in a variable or file cannot be used.
    #[error("{subject} {error}")]
    SshKey { subject: String, error: KeyError },

    /// The key file exists and holds another key: it is never overwritten.
    #[error("{} already holds a different key", .path.display())]
    KeyFileExists { path: PathBuf },

    /// There is no key to log in with.
    #[error("no SSH key to log in to {host} with: JETS_SSH_KEY is unset and none of {tried} exists")]
    NoSshKey { host: String, tried: String },

    /// The connection to the daemon's host could not be opened.
    #[error("failed to connect to {target}: {detail}")]
    Connect { target: String, class: ConnectClass, detail: String },

    /// The EC2 instance named as the host could not be found, started or reached in time.
    #[error("the EC2 instance {instance}: {detail}")]
    Instance { instance: String, kind: InstanceFailure, detail: String },

    /// The SSH host key is in no known_hosts entry.
    #[error(
        "the host key of {host} is unknown (it presented {presented}{}); the agent never trusts a host on first use",
        if .other_types.is_empty() { String::new() } else { format!(", known_hosts holds only other key types for it: {}", .other_types.join(", ")) }
    )]
    HostKeyUnknown {
        host: String,
        keyscan: String,
        presented: String,
        /// Keys of other types known for the host.
        other_types: Vec<String>,
        /// `@cert-authority` lines that name the host (host certificates are not supported).
        cert_authorities: Vec<String>,
    },

    /// The SSH host key differs from the known one.
    #[error("the host key of {host} has changed: it presented {presented}, known_hosts expects {}", .expected.join(", "))]
    HostKeyChanged { host: String, keyscan: String, presented: String, expected: Vec<String> },

    /// The SSH host key is marked `@revoked`.
    #[error("the host key of {host} is revoked ({presented}, @revoked in {source_line})")]
    HostKeyRevoked { host: String, presented: String, source_line: String },

    /// The SSH server refused the key.
    #[error("{host} refused the SSH key {key} for user {user}")]
    SshAuth { host: String, user: String, key: String },

    /// The remote Docker socket could not be opened through SSH.
    #[error("failed to open the Docker socket {socket} on {host}: {detail}")]
    RemoteSocket { host: String, socket: String, detail: String },

    /// The SSH connection failed after it was opened.
    #[error("the SSH connection to {host} failed: {detail}")]
    Ssh { host: String, detail: String },

    /// The daemon did not answer, or answered with an error.
    #[error("the Docker daemon at {target} {detail}")]
    Daemon { target: String, detail: String },

    /// The daemon's API is older than the agent supports.
    #[error("the Docker daemon at {target} speaks API {version}, older than {minimum}, the oldest the agent supports")]
    DaemonTooOld { target: String, version: String, minimum: String },

    /// An `SSM:` reference could not be resolved.
    #[error("failed to resolve {parameter} (from {variable}): {detail}")]
    Secrets { parameter: String, variable: String, detail: String, hint: String },

    /// A parameter could not be written into Parameter Store (`agent host`).
    #[error("failed to write the parameter {parameter}: {detail}")]
    ParameterWrite { parameter: String, detail: String, hint: String },

    /// A registry login failed.
    #[error("failed to log in to {registry}: {detail}")]
    Login { registry: String, detail: String, hint: String },

    /// The build failed.
    #[error("the build failed{}: {message}", .step.as_ref().map(|step| format!(" at {step}")).unwrap_or_default())]
    Build {
        step: Option<String>,
        message: String,
        output: Vec<String>,
        /// How many of the Dockerfile's steps the host carried out (not from its cache) before the
        /// failure: with none, a pool may give the build to its next host.
        built: usize,
    },

    /// A push failed.
    #[error("failed to push {reference} to {registry}: {message}")]
    Push { reference: String, registry: String, message: String },

    /// The host's disk filled up: the daemon said "no space left on device" (see
    /// [`crate::docker::cause`]). `disk` is the host's disk line, when the daemon answered it.
    #[error("the disk of the Docker host {target} is full: {during} failed: {message}{}", .disk.as_ref().map(|disk| format!(" (host disk: {disk})")).unwrap_or_default())]
    HostDiskFull {
        target: String,
        during: String,
        message: String,
        disk: Option<String>,
        /// Steps the host carried out before the failure, when known (see [`Error::Build`]).
        built: Option<usize>,
    },

    /// The host's Docker could not run a step for a reason of its own (see [`crate::docker::cause`]).
    #[error("the Docker host {target} could not carry out {during}: {message}")]
    HostRuntime {
        target: String,
        during: String,
        message: String,
        /// Steps the host carried out before the failure, when known (see [`Error::Build`]).
        built: Option<usize>,
    },

    /// A registry answered 429 Too Many Requests.
    #[error("{registry} answered 429 Too Many Requests (a rate limit) during {during}: {message}")]
    RateLimited { registry: String, during: String, message: String },

    /// A bug: something the agent assumed could not happen.
    #[error("internal error: {0}")]
    Internal(String),

    /// A failure of one platform's build or push in a multi-platform run: the class is the cause's.
    #[error("{platform}: {source}")]
    Platform { platform: String, source: Box<Error> },
}

impl Error {
    /// Whether the host failed on its own (its disk, its runtime) before it carried out any step
    /// of the build: then another host of a pool may take the build, with nothing run twice.
    pub fn host_failed_before_any_step(&self) -> bool {
        matches!(self, Error::HostDiskFull { built: Some(0), .. } | Error::HostRuntime { built: Some(0), .. })
    }

    /// The documented exit code of this failure's class.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::SshKey { .. } | Error::IdleCommand { .. } => exit::CONFIG,
            Error::LocalFile { .. } | Error::KeyFileExists { .. } => exit::LOCAL_FILE,
            Error::NoSshKey { .. } | Error::SshAuth { .. } => exit::SSH_AUTH,
            Error::Connect { class, target, .. } => match class {
                ConnectClass::NameResolution => exit::NAME_RESOLUTION,
                ConnectClass::Refused => exit::CONNECTION_REFUSED,
                ConnectClass::Timeout => exit::TIMEOUT,
                ConnectClass::Tls => exit::TLS,
                ConnectClass::Other if target.starts_with("ssh://") => exit::SSH,
                ConnectClass::Other => exit::TCP,
            },
            Error::Instance { kind, .. } => match kind {
                InstanceFailure::NotFound | InstanceFailure::NoAddress => exit::NAME_RESOLUTION,
                InstanceFailure::Timeout => exit::TIMEOUT,
                InstanceFailure::Denied | InstanceFailure::KeyPush { .. } => exit::EC2,
            },
            Error::HostKeyUnknown { .. } => exit::HOST_KEY_UNKNOWN,
            Error::HostKeyChanged { .. } | Error::HostKeyRevoked { .. } => exit::HOST_KEY_CHANGED,
            Error::RemoteSocket { .. } => exit::REMOTE_SOCKET,
            Error::Ssh { .. } => exit::SSH,
            Error::Daemon { .. } => exit::DAEMON,
            Error::DaemonTooOld { .. } => exit::DAEMON_TOO_OLD,
            Error::Secrets { .. } | Error::ParameterWrite { .. } => exit::SECRETS,
            Error::Build { .. } => exit::BUILD,
            Error::Push { .. } => exit::PUSH,
            Error::Login { .. } => exit::LOGIN,
            Error::HostDiskFull { .. } => exit::HOST_DISK_FULL,
            Error::HostRuntime { .. } => exit::HOST_RUNTIME,
            Error::RateLimited { .. } => exit::RATE_LIMITED,
            Error::Internal(_) => exit::INTERNAL,
            Error::Platform { source, .. } => source.exit_code(),
        }
    }

    /// A hint on how to fix the failure, if there is a useful one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config(_) => None,
            Error::Instance { instance, kind, .. } => Some(match kind {
                InstanceFailure::NotFound => format!(
                    "check the instance id in DOCKER_HOST and the region (AWS_REGION, --region): {instance} must \
                     exist there and not be terminated"
                ),
                InstanceFailure::NoAddress => "AGENT_HOST_ADDRESS=public needs an instance with a public address \
                                               (or leave it private: CodeBuild in the instance's VPC)"
                    .to_string(),
                InstanceFailure::Timeout => format!(
                    "raise --start-timeout (AGENT_START_TIMEOUT), and check that {instance}'s sshd starts at boot and \
                     that its security group lets the build in"
                ),
                InstanceFailure::Denied => "allow ec2:DescribeInstances and ec2:StartInstances (on the instance) to \
                                            the build's role; check AWS_REGION and the network path to EC2 (a VPC \
                                            endpoint or NAT, or AWS_ENDPOINT_URL_EC2)"
                    .to_string(),
                InstanceFailure::KeyPush { user } => format!(
                    "allow ec2-instance-connect:SendSSHPublicKey on {instance} to the build's role, with the condition \
                     ec2:osuser = {user}; the instance must be running, with the ec2-instance-connect package \
                     (preinstalled on Amazon Linux 2023 and Ubuntu); check AWS_REGION and the network path to \
                     EC2 Instance Connect (AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT)"
                ),
            }),
            Error::LocalFile { hint, .. } => hint.clone(),
            Error::IdleCommand { .. } => Some(
                "check --command: it runs with /bin/sh -c as the timer's user (root), e.g. \"systemctl poweroff\""
                    .to_string(),
            ),
            Error::SshKey { error, .. } => Some(error.hint().to_string()),
            Error::KeyFileExists { .. } => Some(
                "the agent never overwrites a key: remove that file if it is stale, \
                 or install JETS_SSH_KEY elsewhere with --ssh-key-file PATH"
                    .to_string(),
            ),
            Error::NoSshKey { .. } => Some("set JETS_SSH_KEY to the private key of the Docker host's user".to_string()),
            Error::Connect { class, target, .. } => Some(
                match class {
                    ConnectClass::NameResolution => "check the host name in DOCKER_HOST and the build's DNS",
                    ConnectClass::Refused => {
                        "check that the host is up and that sshd (or the daemon) listens on that port"
                    }
                    ConnectClass::Timeout => {
                        "check the host's address, its security group and network ACLs, or raise --connect-timeout"
                    }
                    ConnectClass::Tls => {
                        "check DOCKER_CERT_PATH: the daemon must trust cert.pem/key.pem (\"unknown CA\" or \
                         \"bad certificate\": the daemon refused them), ca.pem must have signed the daemon's \
                         certificate for this host name (\"invalid peer certificate\"), and the port must speak \
                         TLS (\"corrupt message\": unset DOCKER_TLS_VERIFY, or use the daemon's TLS port, 2376 by \
                         convention)"
                    }
                    ConnectClass::Other if target.starts_with("tcp://") => {
                        "check DOCKER_HOST and that the daemon listens there; a port that speaks TLS resets a plain \
                         connection: then set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"
                    }
                    ConnectClass::Other => "check DOCKER_HOST and that the host is reachable from the build",
                }
                .to_string(),
            ),
            Error::HostKeyUnknown { keyscan, cert_authorities, .. } => Some(format!(
                "{}add the host's key to JETS_SSH_KNOWN: run `{keyscan}` on a machine that reaches the host, \
                 check the fingerprints with the host's administrator, and store the output",
                if cert_authorities.is_empty() {
                    String::new()
                } else {
                    format!(
                        "host certificates are not supported, so the @cert-authority line ({}) cannot vouch for \
                         this host; ",
                        cert_authorities.join(", ")
                    )
                }
            )),
            Error::HostKeyChanged { keyscan, .. } => Some(format!(
                "if the host was rebuilt, confirm its new key with its administrator and replace JETS_SSH_KNOWN \
                 with the output of `{keyscan}`; otherwise someone may be intercepting the connection"
            )),
            Error::HostKeyRevoked { .. } => {
                Some("the host's key was revoked: ask its administrator for the new one".to_string())
            }
            Error::SshAuth { user, .. } => Some(format!(
                "add the public half of JETS_SSH_KEY (JETS_SSH_KEY_<ARCH> for a platform's own host) to ~{user}/.ssh/authorized_keys on the host, or fix the user in DOCKER_HOST"
            )),
            Error::RemoteSocket { socket, .. } => Some(format!(
                "check that dockerd runs on the host, that {socket} is its socket (give another as ssh://user@host/path), \
                 that the SSH user may open it (group docker), and that sshd allows AllowStreamLocalForwarding"
            )),
            Error::Ssh { .. } => Some("run again; if it persists, check the host's sshd log".to_string()),
            Error::Daemon { detail, .. } if detail.contains("permission denied") => Some(
                "add the user to the socket's group (`usermod -aG docker USER`; in a container, \
                 `--group-add` the socket's gid)"
                    .to_string(),
            ),
            Error::Daemon { .. } => Some("check that dockerd runs on the host: `systemctl status docker`".to_string()),
            Error::DaemonTooOld { .. } => Some("upgrade Docker on the host".to_string()),
            Error::Secrets { hint, .. } | Error::Login { hint, .. } | Error::ParameterWrite { hint, .. } => {
                Some(hint.clone())
            }
            Error::Build { message, .. } if refused_by_a_registry(message) => Some(
                "log in to the base image's registry: DOCKER_REGISTRY with DOCKER_USER/DOCKER_PASS, or ECR_REGISTRY \
                 for ECR"
                    .to_string(),
            ),
            Error::Build { message, .. } if missing_build_secret(message).is_some() => {
                let id = missing_build_secret(message).unwrap_or_default();
                Some(format!(
                    "the Dockerfile mounts the secret {id:?} with required=true: give it with --secret id={id},env=VARIABLE \
                     or --secret id={id},src=FILE"
                ))
            }
            Error::Build { message, .. } if missing_ssh_id(message).is_some() => {
                let id = missing_ssh_id(message).unwrap_or_default();
                Some(if id == "default" {
                    "the Dockerfile mounts an ssh agent: give --ssh default (the key in JETS_SSH_KEY) or --ssh default=KEYFILE"
                        .to_string()
                } else {
                    format!("the Dockerfile mounts the ssh agent {id:?}: give --ssh {id}=KEYFILE")
                })
            }
            Error::Build { message, .. } if killed_by_sigkill(message) => Some(
                "the step was killed (SIGKILL, exit code 137), most often by the host's out-of-memory killer: its \
                 kernel log says so (`journalctl -k` or `dmesg` on the host: \"Out of memory: Killed process\"); give \
                 the host more memory, or the step less to do at once (fewer parallel jobs)"
                    .to_string(),
            ),
            Error::Build { message, output, .. } if step_exited(message) && says_disk_full(output) => Some(
                "the step's output says a disk filled up: if it is the host's (`df -h /var/lib/docker` on the host), free \
                 it (`docker builder prune` there, or --keep-storage SIZE) or give the host a bigger disk; else fix the step"
                    .to_string(),
            ),
            Error::Build { .. } => Some("fix the Dockerfile or the sources, then run again".to_string()),
            Error::Push { message, .. } => Some(
                if message.contains("unauthorized") || message.contains("denied") {
                    "check the registry login (DOCKER_USER/DOCKER_PASS, ECR_REGISTRY) and that the repository exists"
                } else {
                    "check that the registry is reachable from the Docker host, then run again"
                }
                .to_string(),
            ),
            Error::HostDiskFull { .. } => Some(
                "free the host's disk: `docker builder prune` on the host (or --keep-storage SIZE, which prunes each \
                 host's build cache down to SIZE after every run), `docker image prune -a` for old images, or give \
                 the host a bigger disk; nothing was pushed"
                    .to_string(),
            ),
            Error::HostRuntime { .. } => Some(
                "the host's Docker is broken, not the Dockerfile: read the daemon's log on the host (`journalctl -u \
                 docker`) and restart it (`systemctl restart docker`, which also recreates its bridge and iptables \
                 rules), then run again"
                    .to_string(),
            ),
            Error::RateLimited { registry, .. } => Some(rate_limit_hint(registry)),
            Error::Internal(_) => Some("this is a bug in the agent; please report it with the log above".to_string()),
            Error::Platform { source, .. } => source.hint(),
        }
    }

    /// The whole report as printed on stderr: the message, each problem, and the hints.
    pub fn report(&self) -> String {
        let mut out = String::new();
        self.write_report(&mut out).expect("writing to a String cannot fail");
        out
    }

    fn write_report(&self, out: &mut impl fmt::Write) -> fmt::Result {
        writeln!(out, "error: {self}")?;
        if let Error::Config(problems) = self {
            for problem in problems {
                writeln!(out, "  - {}: {}", problem.subject, problem.message)?;
                if let Some(hint) = &problem.hint {
                    writeln!(out, "    hint: {hint}")?;
                }
            }
        }
        let cause = match self {
            Error::Platform { source, .. } => source.as_ref(),
            other => other,
        };
        if let Error::Build { output, .. } = cause {
            if !output.is_empty() {
                writeln!(out, "  last output of the failing step:")?;
                for line in output {
                    writeln!(out, "    | {line}")?;
                }
            }
        }
        if let Some(hint) = self.hint() {
            writeln!(out, "  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Why an EC2 instance named as the host could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceFailure {
    /// EC2 knows no such instance (or it is terminated).
    NotFound,
    /// It runs, without an address of the kind asked for.
    NoAddress,
    /// It was not running with an sshd answering within the start timeout.
    Timeout,
    /// EC2 refused the call, or could not be asked (credentials, region, endpoint).
    Denied,
    /// EC2 Instance Connect did not take the run's key for `user` (permissions, the instance's
    /// state, an endpoint that cannot be reached).
    KeyPush { user: String },
}

/// The kind of failure when opening a connection, each with its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectClass {
    NameResolution,
    Refused,
    Timeout,
    /// The TLS handshake failed (certificates, or a port that does not speak TLS).
    Tls,
    Other,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to do about a registry's rate limit: log in, a pull-through cache, or later.
fn rate_limit_hint(registry: &str) -> String {
    if registry.contains("docker.io") {
        "Docker Hub limits pulls per address, anonymous ones most (a NAT'd CodeBuild shares one address): log in with \
         DOCKER_USER/DOCKER_PASS, pull the base images through ECR's pull-through cache for Docker Hub (FROM \
         ECR_REGISTRY/docker-hub/library/IMAGE:TAG), or run again later"
            .to_string()
    } else if registry.contains(".dkr.ecr.") {
        "ECR throttles requests per account and region (its service quotas, e.g. for image pushes and pulls): run \
         again later, spread the builds that push at once, or ask AWS for a higher quota"
            .to_string()
    } else {
        format!(
            "log in to {registry} (DOCKER_REGISTRY with DOCKER_USER/DOCKER_PASS: anonymous clients get the lowest \
             limit), pull its images through a pull-through cache, or run again later"
        )
    }
}

/// Whether a build failed because a registry refused to serve a base image without a login.
fn refused_by_a_registry(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["401 unauthorized", "no basic auth credentials", "authentication required", "pull access denied"]
        .iter()
        .any(|sign| message.contains(sign))
}

/// Whether the daemon says a step's process ended with exit code 137 (128 + SIGKILL): BuildKit's
/// "did not complete successfully: exit code: 137" (20.10: "executor failed running [...]: exit code:
/// 137"), the classic builder's "returned a non-zero code: 137". Read from the daemon's error, never
/// from the step's own output.
fn killed_by_sigkill(message: &str) -> bool {
    let message = message.trim_end();
    message.ends_with("exit code: 137") || message.ends_with("returned a non-zero code: 137")
}

/// Whether the message is a step's process ending with a non-zero exit code: BuildKit's
/// "did not complete successfully: exit code: N" (20.10: "executor failed running [...]: exit
/// code: N"), the classic builder's "returned a non-zero code: N".
pub fn step_exited(message: &str) -> bool {
    let message = message.trim_end();
    let code_at_end = |sign: &str| {
        message.rsplit_once(sign).is_some_and(|(_, code)| !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
    };
    code_at_end("exit code: ") || code_at_end("returned a non-zero code: ")
}

/// Whether a step's last output lines say ENOSPC: only a hint, never the class (the step's output
/// is the step's own; see [`crate::docker::cause`]).
fn says_disk_full(output: &[String]) -> bool {
    output.iter().any(|line| line.to_ascii_lowercase().contains("no space left on device"))
}

/// The id of a `RUN --mount=type=secret,required=true` that BuildKit found no value for: its
/// message reads "secret ID: not found".
pub fn missing_build_secret(message: &str) -> Option<&str> {
    // BuildKit 0.8 (Docker 20.10) writes "secret ID not found: not found"; later ones "secret ID: not found".
    message.match_indices("secret ").find_map(|(at, _)| {
        let rest = &message[at + "secret ".len()..];
        let id = rest.split([' ', ':']).next()?;
        let after = &rest[id.len()..];
        (!id.is_empty() && (after.starts_with(": not found") || after.starts_with(" not found"))).then_some(id)
    })
}

/// The id of a `RUN --mount=type=ssh` that no `--ssh` serves: BuildKit says
/// `no SSH key "ID" forwarded from the client`.
/// (or, when the session's agent was asked, the agent's own `no --ssh gives the ssh id "ID"`).
pub fn missing_ssh_id(message: &str) -> Option<&str> {
    let rest = message.split_once("no SSH key \"").or_else(|| message.split_once("no --ssh gives the ssh id \""))?.1;
    Some(rest.split_once('"')?.0)
}

/// Why an SSH private key (`ssh::key`) could not be used. Messages never contain the key. Kept here,
/// with the error it is part of, so that this leaf needs nothing of `ssh`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("holds no private key (no \"-----BEGIN … PRIVATE KEY-----\" line)")]
    NotAKey,
    #[error("holds a public key, not a private key")]
    PublicKey,
    #[error("is an encrypted key and no passphrase was given")]
    Encrypted,
    #[error("could not be decrypted with the passphrase in JETS_SSH_KEY_PASSPHRASE")]
    WrongPassphrase,
    #[error("could not be read as a private key: {0}")]
    Corrupt(String),
}

impl KeyError {
    pub fn hint(&self) -> &'static str {
        match self {
            KeyError::NotAKey | KeyError::Corrupt(_) => {
                "store the whole private key file, from its -----BEGIN line to its -----END line \
                 (OpenSSH, PEM RSA or PKCS#8 format)"
            }
            KeyError::PublicKey => {
                "store the private key (the file without .pub), e.g. the contents of ~/.ssh/id_ed25519"
            }
            KeyError::Encrypted => "set JETS_SSH_KEY_PASSPHRASE, or store a key without passphrase",
            KeyError::WrongPassphrase => "check JETS_SSH_KEY_PASSPHRASE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_secrets_and_ssh_ids_are_named_in_the_hint() {
        let message = "failed to compute cache key: secret npm_token: not found";
        assert_eq!(missing_build_secret(message), Some("npm_token"));
        let error = Error::Build { step: None, message: message.to_string(), output: Vec::new(), built: 0 };
        assert!(error.hint().unwrap().contains("--secret id=npm_token,"), "{:?}", error.hint());
        assert_eq!(error.exit_code(), exit::BUILD);
        assert_eq!(missing_build_secret("image not found"), None);
        let docker_20_10 =
            "RUN --mount=type=secret,id=npm_token,required=true echo: secret npm_token not found: not found";
        assert_eq!(missing_build_secret(docker_20_10), Some("npm_token"));
        let ssh = "failed to solve: no SSH key \"github\" forwarded from the client";
        assert_eq!(missing_ssh_id(ssh), Some("github"));
        let error = Error::Build { step: None, message: ssh.to_string(), output: Vec::new(), built: 0 };
        assert!(error.hint().unwrap().contains("--ssh github="), "{:?}", error.hint());
    }

    /// Issue 23: a step killed with SIGKILL (the OOM killer's signal) keeps the build's class, with a
    /// hint about memory; any other exit code keeps the Dockerfile's hint.
    #[test]
    fn a_step_killed_with_sigkill_gets_the_memory_hint() {
        let messages = [
            "process \"/bin/busybox sh -c kill -9 $$\" did not complete successfully: exit code: 137",
            "executor failed running [/bin/busybox sh -c kill -9 $$]: exit code: 137",
            "The command '/bin/busybox sh -c kill -9 $$' returned a non-zero code: 137",
        ];
        for message in messages {
            let error = Error::Build { step: None, message: message.to_string(), output: Vec::new(), built: 0 };
            assert_eq!(error.exit_code(), exit::BUILD);
            assert!(error.hint().unwrap().contains("out-of-memory killer"), "{message}: {:?}", error.hint());
        }
        let other = Error::Build { step: None, message: "exit code: 1137".to_string(), output: Vec::new(), built: 0 };
        assert!(other.hint().unwrap().contains("fix the Dockerfile"), "{:?}", other.hint());
        let output = vec!["exit code: 137".to_string()];
        let printed = Error::Build { step: None, message: "exit code: 1".to_string(), output, built: 0 };
        assert!(printed.hint().unwrap().contains("fix the Dockerfile"), "the step's own output is not read");
    }

    /// Issue 23: a rate limit's hint: for Docker Hub the login and ECR's pull-through cache in the
    /// form a Dockerfile names it; for another registry its login; both say later.
    #[test]
    fn a_rate_limit_hint_names_the_ways_out() {
        let limited = |registry: &str| Error::RateLimited {
            registry: registry.to_string(),
            during: "the build".to_string(),
            message: "toomanyrequests: You have reached your pull rate limit.".to_string(),
        };
        let hub = limited("Docker Hub (docker.io)");
        assert_eq!(hub.exit_code(), exit::RATE_LIMITED);
        let hint = hub.hint().unwrap();
        for words in ["DOCKER_USER/DOCKER_PASS", "ECR_REGISTRY/docker-hub/library/IMAGE:TAG", "run again later"] {
            assert!(hint.contains(words), "{words}: {hint}");
        }
        let ecr = limited("123456789012.dkr.ecr.eu-west-1.amazonaws.com").hint().unwrap();
        assert!(ecr.contains("ECR throttles") && ecr.contains("run again later"), "{ecr}");
        let other = limited("ghcr.io").hint().unwrap();
        for words in ["log in to ghcr.io", "pull-through cache", "run again later"] {
            assert!(other.contains(words), "{words}: {other}");
        }
        assert_eq!(
            hub.to_string(),
            "Docker Hub (docker.io) answered 429 Too Many Requests (a rate limit) during the build: toomanyrequests: You \
             have reached your pull rate limit."
        );
    }

    #[test]
    fn exit_codes_are_unique_and_listed_in_order() {
        let codes: Vec<u8> = exit::TABLE.iter().map(|row| row.0).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    fn config_report_lists_every_problem_with_its_hint() {
        let error = Error::Config(vec![
            Problem::new("DOCKER_HOST", "unknown scheme \"ftp\"").hint("use ssh://"),
            Problem::new("--build-arg", "\"X\" has no '='"),
        ]);
        assert_eq!(
            error.report(),
            "error: invalid configuration (2 problems)\n  \
             - DOCKER_HOST: unknown scheme \"ftp\"\n    hint: use ssh://\n  \
             - --build-arg: \"X\" has no '='\n"
        );
        assert_eq!(error.exit_code(), exit::CONFIG);
    }
}
