//! The test world that `scripts/testworld up` brings up on loopback: a Docker daemon (unix socket
//! and a TCP forward), an OpenSSH server with keys for the user `agent-test`, two registries
//! standing in for Docker Hub and Amazon ECR, and a moto server for SSM and ECR.
//!
//! Everything is read from the env file the script writes (`KEY=value` lines): by default
//! `<repo>/target/testworld/env`, else `$AGENT_TESTWORLD_ENV`, else `$AGENT_TESTWORLD_DIR/env`.
//! Secrets (registry passwords, the key passphrase) live in files named there, never in the env
//! file itself.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What a test says when the world is not there.
pub const NOT_UP: &str = "test world not up: run scripts/testworld up";

/// The line sshd (LogLevel VERBOSE) writes once per incoming connection.
pub const SSH_CONNECTION_LINE: &str = "Connection from 127.0.0.1 port";

/// The servers, keys and files of the test world.
#[derive(Debug, Clone)]
pub struct World {
    /// The env file this was read from.
    pub env_file: PathBuf,
    /// TW_STATE_DIR
    pub state_dir: PathBuf,
    /// TW_DOCKER_SOCK: the daemon's unix socket (`/var/run/docker.sock`).
    pub docker_sock: PathBuf,
    /// TW_COLD_DOCKER_SOCK: a second daemon, the world's own, that tests may wipe (a new host).
    pub cold_docker_sock: PathBuf,
    /// TW_DOCKER_TCP: `127.0.0.1:PORT`, plain TCP forwarded to the daemon's socket.
    pub docker_tcp: String,
    /// `127.0.0.1:PORT` of the daemon behind TLS with a client certificate.
    pub docker_tls: String,
    /// The client's ca.pem, cert.pem and key.pem for `docker_tls`.
    pub docker_cert_path: PathBuf,
    /// TW_SSH_HOST (`127.0.0.1`)
    pub ssh_host: String,
    /// TW_SSH_PORT
    pub ssh_port: u16,
    /// TW_SSH_USER (`agent-test`, member of group docker)
    pub ssh_user: String,
    /// TW_SSH_LOG: sshd's log (one "Connection from 127.0.0.1 port" line per connection).
    pub ssh_log: PathBuf,
    /// TW_KEY_ED25519: authorized, OpenSSH format, no passphrase.
    pub key_ed25519: PathBuf,
    /// TW_KEY_RSA_PEM: authorized, RSA 3072 in PEM (`BEGIN RSA PRIVATE KEY`).
    pub key_rsa_pem: PathBuf,
    /// TW_KEY_ECDSA: authorized, ECDSA P-256, OpenSSH format.
    pub key_ecdsa: PathBuf,
    /// TW_KEY_ED25519_ENC: authorized, encrypted with the passphrase in `key_passphrase_file`.
    pub key_ed25519_enc: PathBuf,
    /// TW_KEY_PASSPHRASE_FILE: the passphrase of `key_ed25519_enc` (no trailing newline).
    pub key_passphrase_file: PathBuf,
    /// TW_KEY_ASKPASS: an SSH_ASKPASS program that prints that passphrase.
    pub key_askpass: PathBuf,
    /// TW_KEY_UNAUTHORIZED: a valid ed25519 key that sshd does not accept.
    pub key_unauthorized: PathBuf,
    /// A local account for the test that runs the docker CLI over OpenSSH after the agent.
    pub ci_user: String,
    /// An authorized key that only one test uses (to count its connections in sshd's log).
    pub key_solo: PathBuf,
    /// TW_KNOWN_HOSTS_HASHED: `ssh-keyscan -H`, every host key type.
    pub known_hosts_hashed: PathBuf,
    /// TW_KNOWN_HOSTS_PLAIN: `[127.0.0.1]:PORT TYPE KEY`, every host key type.
    pub known_hosts_plain: PathBuf,
    /// TW_KNOWN_HOSTS_RSA: hashed, RSA host key only (as the Jets docs generate it).
    pub known_hosts_rsa: PathBuf,
    /// TW_HUB_REGISTRY: `127.0.0.1:PORT`, the registry standing in for Docker Hub.
    pub hub_registry: String,
    /// TW_HUB_USER
    pub hub_user: String,
    /// TW_HUB_PASS_FILE
    pub hub_pass_file: PathBuf,
    /// TW_HUB_LOG
    pub hub_log: PathBuf,
    /// TW_ECR_REGISTRY: `127.0.0.1:PORT`, the registry standing in for ECR.
    pub ecr_registry: String,
    /// TW_ECR_USER (`AWS`)
    pub ecr_user: String,
    /// TW_ECR_PASS_FILE (holds `123456789012-auth-token`, what moto's GetAuthorizationToken gives)
    pub ecr_pass_file: PathBuf,
    /// TW_ECR_LOG
    pub ecr_log: PathBuf,
    /// TW_ECR_ACCOUNT (`123456789012`, moto's default account)
    pub ecr_account: String,
    /// TW_MOTO_URL: `http://127.0.0.1:PORT` (SSM and ECR; any credentials, region us-east-1).
    pub moto_url: String,
    /// TW_MOTO_LOG
    pub moto_log: PathBuf,
    /// TW_PYTHON: a python with boto3 (the moto venv).
    pub python: PathBuf,
    /// Every `KEY=value` of the env file, for keys without a field.
    pub vars: BTreeMap<String, String>,
}

impl World {
    /// Where the env file is looked for.
    pub fn env_file_path() -> PathBuf {
        if let Some(p) = std::env::var_os("AGENT_TESTWORLD_ENV").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(d) = std::env::var_os("AGENT_TESTWORLD_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("env");
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("testworld").join("env")
    }

    /// True when an env file exists (the world was brought up and not taken down).
    pub fn is_up() -> bool {
        Self::env_file_path().is_file()
    }

    /// Reads the env file; panics with "test world not up: run scripts/testworld up" if missing.
    pub fn load() -> World {
        let path = Self::env_file_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => panic!("{NOT_UP} (cannot read {}: {e})", path.display()),
        };
        Self::parse(&path, &text)
    }

    /// One `World` per test binary, loaded on first use.
    pub fn shared() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(World::load)
    }

    fn parse(path: &Path, text: &str) -> World {
        let mut vars = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                vars.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
        let s = |key: &str| -> String { required(&vars, path, key) };
        let p = |key: &str| -> PathBuf { PathBuf::from(required(&vars, path, key)) };
        let ssh_port_text = s("TW_SSH_PORT");
        let ssh_port = ssh_port_text
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("{}: TW_SSH_PORT={ssh_port_text:?} is not a port: {e}", path.display()));
        let world = World {
            env_file: path.to_path_buf(),
            state_dir: p("TW_STATE_DIR"),
            docker_sock: p("TW_DOCKER_SOCK"),
            cold_docker_sock: p("TW_COLD_DOCKER_SOCK"),
            docker_tcp: s("TW_DOCKER_TCP"),
            ssh_host: s("TW_SSH_HOST"),
            ssh_port,
            ssh_user: s("TW_SSH_USER"),
            ssh_log: p("TW_SSH_LOG"),
            key_ed25519: p("TW_KEY_ED25519"),
            key_rsa_pem: p("TW_KEY_RSA_PEM"),
            key_ecdsa: p("TW_KEY_ECDSA"),
            key_ed25519_enc: p("TW_KEY_ED25519_ENC"),
            key_passphrase_file: p("TW_KEY_PASSPHRASE_FILE"),
            key_askpass: p("TW_KEY_ASKPASS"),
            key_unauthorized: p("TW_KEY_UNAUTHORIZED"),
            key_solo: p("TW_KEY_SOLO"),
            ci_user: s("TW_CI_USER"),
            docker_tls: s("TW_DOCKER_TLS"),
            docker_cert_path: p("TW_DOCKER_CERT_PATH"),
            known_hosts_hashed: p("TW_KNOWN_HOSTS_HASHED"),
            known_hosts_plain: p("TW_KNOWN_HOSTS_PLAIN"),
            known_hosts_rsa: p("TW_KNOWN_HOSTS_RSA"),
            hub_registry: s("TW_HUB_REGISTRY"),
            hub_user: s("TW_HUB_USER"),
            hub_pass_file: p("TW_HUB_PASS_FILE"),
            hub_log: p("TW_HUB_LOG"),
            ecr_registry: s("TW_ECR_REGISTRY"),
            ecr_user: s("TW_ECR_USER"),
            ecr_pass_file: p("TW_ECR_PASS_FILE"),
            ecr_log: p("TW_ECR_LOG"),
            ecr_account: s("TW_ECR_ACCOUNT"),
            moto_url: s("TW_MOTO_URL"),
            moto_log: p("TW_MOTO_LOG"),
            python: p("TW_PYTHON"),
            vars: BTreeMap::new(),
        };
        World { vars, ..world }
    }

    /// A value of the env file by its key (`TW_...`), if present.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The Docker Hub stand-in's password.
    pub fn hub_pass(&self) -> String {
        read_secret(&self.hub_pass_file, "the hub registry password")
    }

    /// The ECR stand-in's password (`123456789012-auth-token`).
    pub fn ecr_pass(&self) -> String {
        read_secret(&self.ecr_pass_file, "the ECR registry password")
    }

    /// The passphrase of `key_ed25519_enc`.
    pub fn key_passphrase(&self) -> String {
        read_secret(&self.key_passphrase_file, "the key passphrase")
    }

    /// How many connections sshd has logged so far (the log only grows while the world is up;
    /// compare before/after, and expect `>=` since other tests may connect at the same time).
    pub fn ssh_connection_count(&self) -> usize {
        let bytes = std::fs::read(&self.ssh_log)
            .unwrap_or_else(|e| panic!("cannot read sshd log {}: {e}", self.ssh_log.display()));
        String::from_utf8_lossy(&bytes).lines().filter(|line| line.contains(SSH_CONNECTION_LINE)).count()
    }

    /// `ssh://agent-test@127.0.0.1:PORT`
    pub fn ssh_url(&self) -> String {
        format!("ssh://{}@{}:{}", self.ssh_user, self.ssh_host, self.ssh_port)
    }

    /// `tcp://127.0.0.1:PORT`
    pub fn docker_tcp_url(&self) -> String {
        format!("tcp://{}", self.docker_tcp)
    }

    /// The port of the TCP forward to the daemon.
    pub fn docker_tcp_port(&self) -> u16 {
        port_of(&self.docker_tcp)
    }

    /// The port of the Docker Hub stand-in.
    pub fn hub_port(&self) -> u16 {
        port_of(&self.hub_registry)
    }

    /// The port of the ECR stand-in.
    pub fn ecr_port(&self) -> u16 {
        port_of(&self.ecr_registry)
    }

    /// The port of the moto server.
    pub fn moto_port(&self) -> u16 {
        port_of(self.moto_url.trim_start_matches("http://"))
    }

    /// The system `ssh` to the world's sshd as `agent-test`, non-interactive (BatchMode), with
    /// strict host key checking against `known_hosts`; append the remote command with `.arg(..)`.
    pub fn ssh_command(&self, key: &Path, known_hosts: &Path) -> Command {
        self.ssh_command_with(key, known_hosts, true)
    }

    /// As `ssh_command`; with `batch_mode` false ssh may ask SSH_ASKPASS for a key passphrase.
    pub fn ssh_command_with(&self, key: &Path, known_hosts: &Path, batch_mode: bool) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", if batch_mode { "BatchMode=yes" } else { "BatchMode=no" }])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=20"])
            .args(["-o", "LogLevel=ERROR"])
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg(format!("{}@{}", self.ssh_user, self.ssh_host))
            .stdin(Stdio::null());
        cmd
    }
}

fn required(vars: &BTreeMap<String, String>, path: &Path, key: &str) -> String {
    match vars.get(key) {
        Some(value) if !value.is_empty() => value.clone(),
        _ => panic!("{NOT_UP} ({} has no {key}; the script is newer than this world)", path.display()),
    }
}

fn read_secret(path: &Path, what: &str) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {what} from {}: {e} ({NOT_UP})", path.display()));
    text.trim_end_matches(['\r', '\n']).to_owned()
}

/// The port of `HOST:PORT`.
pub fn port_of(addr: &str) -> u16 {
    let port = addr.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
    port.trim_end_matches('/').parse().unwrap_or_else(|e| panic!("{addr:?} has no port: {e}"))
}

impl World {
    /// The cold daemon, for a test that wipes or prunes it: the tests that do take it in turn
    /// (threads of one `cargo test`; across nextest's processes, its serial group `cold-host`).
    pub fn cold_host() -> std::sync::MutexGuard<'static, ()> {
        static COLD_HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());
        COLD_HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tags of a repository in the ECR stand-in, through the registry API (basic auth given
    /// to curl on stdin). Empty when the repository does not exist.
    pub fn ecr_tags(&self, name: &str) -> Vec<String> {
        use std::io::Write as _;
        let url = format!("http://{}/v2/{name}/tags/list", self.ecr_registry);
        let mut child = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-K", "-"])
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl");
        let credentials = format!("{}:{}", self.ecr_user, self.ecr_pass()).replace('\\', "\\\\").replace('"', "\\\"");
        child.stdin.take().unwrap().write_all(format!("user = \"{credentials}\"\n").as_bytes()).unwrap();
        let output = child.wait_with_output().expect("curl output");
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        body["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(|tag| tag.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// Removes images after the whole run instead of now: appends them to `removed-images` in the
/// world's state, which `scripts/test` removes when every test is done. Removing an image while a
/// classic build runs beside it breaks that build: Docker 20.10's classic builder looks for a cached
/// step among every image with the same parent (every `FROM scratch` image here), and one that
/// vanishes between the listing and the lookup fails it with `unable to find image sha256:…`.
/// So no test removes an image from the shared daemon while the run goes on: it calls this.
pub fn remove_images_after_the_run(images: &[&str]) {
    use std::io::Write as _;
    let path = World::shared().state_dir.join("removed-images");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("removed-images");
    // One write per call: appends of whole lines from several test processes do not interleave.
    let lines: String = images.iter().map(|image| format!("{image}\n")).collect();
    file.write_all(lines.as_bytes()).expect("removed-images");
}

/// A file of the world (a key, known_hosts lines) as text; a missing one is a broken world.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// One Docker engine of the world, as a build host reached over the world's sshd: Debian
/// bookworm's 20.10 (the shared daemon), and the newer engines `scripts/testworld up` brings up
/// beside it (`TW_ENGINES`): 26.1.5 with the classic image store, 28.5.2 with the containerd image
/// store and minimum API 1.44.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `20.10`, `26` or `28`.
    pub name: String,
    /// The daemon's version, e.g. `28.5.2`.
    pub version: String,
    /// Its unix socket on this machine.
    pub sock: PathBuf,
    /// `ssh://agent-test@127.0.0.1:PORT[/socket]`: the daemon over the world's sshd.
    pub docker_host: String,
}

impl Engine {
    /// Debian bookworm's Docker 20.10, the daemon every other test uses.
    pub fn is_bookworm(&self) -> bool {
        self.name == "20.10"
    }

    /// `unix://<socket>`, for the docker CLI on this machine.
    pub fn unix_host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// The docker CLI on this machine, talking to this engine.
    pub fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        docker.arg("-H").arg(self.unix_host());
        docker
    }

    /// A test that needs this engine's build cache left alone while it runs (it expects steps
    /// CACHED, a prune would take them) holds this shared; a test that prunes the cache holds it
    /// exclusively. A file lock in the world's state: nextest runs tests in processes of their own.
    pub fn cache_lock(&self, exclusive: bool) -> std::fs::File {
        let path = World::shared().state_dir.join(format!("engine-{}-cache.lock", self.name));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
        use std::os::fd::AsRawFd as _;
        let operation = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            panic!("lock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        file
    }
}

impl World {
    /// Every engine of the world, 20.10 first.
    pub fn engines(&self) -> Vec<Engine> {
        let mut engines = vec![Engine {
            name: "20.10".to_string(),
            version: "20.10".to_string(),
            sock: self.docker_sock.clone(),
            docker_host: self.ssh_url(),
        }];
        let names = self.var("TW_ENGINES").unwrap_or_else(|| panic!("{NOT_UP} (no TW_ENGINES: an older world)"));
        for name in names.split(',').filter(|name| !name.is_empty()) {
            let var = |what: &str| {
                let key = format!("TW_ENGINE_{name}_{what}");
                self.var(&key).unwrap_or_else(|| panic!("{NOT_UP} (no {key})")).to_string()
            };
            engines.push(Engine {
                name: name.to_string(),
                version: var("VERSION"),
                sock: PathBuf::from(var("SOCK")),
                docker_host: var("DOCKER_HOST"),
            });
        }
        engines
    }

    /// The engine called `name` (`20.10`, `26`, `28`).
    pub fn engine(&self, name: &str) -> Engine {
        let engines = self.engines();
        engines
            .into_iter()
            .find(|engine| engine.name == name)
            .unwrap_or_else(|| panic!("no engine {name} in the world"))
    }
}

/// A test run on every engine of the world: `on_every_engine! { fn name(engine) { … } }` makes
/// the module `name` with one test per engine (`name::docker_20_10`, `name::docker_26`,
/// `name::docker_28`), each calling the body with its [`Engine`]. The body sees the enclosing
/// module's items.
macro_rules! on_every_engine {
    ($(#[$meta:meta])* fn $name:ident($engine:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn on($engine: &$crate::world::Engine) $body

            #[test]
            fn docker_20_10() {
                on(&$crate::world::World::shared().engine("20.10"))
            }

            #[test]
            fn docker_26() {
                on(&$crate::world::World::shared().engine("26"))
            }

            #[test]
            fn docker_28() {
                on(&$crate::world::World::shared().engine("28"))
            }
        }
    };
}
pub(crate) use on_every_engine;
