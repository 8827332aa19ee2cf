//! Faults: servers that die or go away while the agent works. Each fault is injected into a
//! server this test starts itself (its own sshd, its own registry), never into the shared test
//! world. The agent must exit with the fault's class, name the cause, within a bounded time, and a
//! re-run after the fault must succeed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::world::World;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process this test started, with its descendants killed when it is dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    /// Kills the server and every process it started (sshd's per-connection processes).
    fn kill(&mut self) {
        for pid in descendants(self.child.id()) {
            // SAFETY: a plain kill(2) of a process this test's own server started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The parent pid is the second field after the command's closing parenthesis.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(parent) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An sshd of this test's own, configured as the world's but on another port.
fn own_sshd(world: &World) -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config: String = read(&world.state_dir.join("sshd_config"))
        .lines()
        .map(|line| {
            if line.starts_with("Port ") {
                format!("Port {port}")
            } else if line.starts_with("PidFile ") {
                format!("PidFile {}", dir.path().join("sshd.pid").display())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config_path = dir.path().join("sshd_config");
    std::fs::write(&config_path, config + "\n").unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-f")
        .arg(&config_path)
        .arg("-E")
        .arg(dir.path().join("sshd.log"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start sshd");
    wait_for_port(port);
    let known: Vec<String> = ["ed25519", "rsa", "ecdsa"]
        .iter()
        .map(|kind| {
            let public = read(&world.state_dir.join(format!("hostkeys/ssh_host_{kind}_key.pub")));
            format!("[127.0.0.1]:{port} {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        })
        .collect();
    (Server { child, _dir: dir, port }, known.join("\n"))
}

/// A registry of this test's own, without authentication.
fn own_registry() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    wait_for_port(port);
    Server { child, _dir: dir, port }
}

/// A context whose build takes a few seconds (so a fault can strike during it).
fn slow_app(dir: &Path, seconds: u32, nonce: &str) -> PathBuf {
    let app = dir.join("slow");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nLABEL nonce={nonce}\nRUN [\"/bin/busybox\", \"sleep\", \"{seconds}\"]\n"
        ),
    )
    .unwrap();
    app
}

fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

#[test]
fn sshd_killed_during_a_build_is_an_ssh_failure_and_a_rerun_succeeds() {
    let world = World::shared();
    let (mut sshd, known) = own_sshd(world);
    let agent = Agent::new()
        .env("DOCKER_HOST", format!("ssh://{}@127.0.0.1:{}", world.ssh_user, sshd.port))
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", &known);
    let app = slow_app(agent.work.path(), 6, &nonce());
    let agent = agent.args(["run", "--image", "agent-it/fault-sshd", "--no-push", "--context", app.to_str().unwrap()]);
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| agent.run());
        std::thread::sleep(Duration::from_secs(3));
        sshd.kill();
        run.join().unwrap()
    });
    outcome.expect_code(27);
    assert!(outcome.stderr.contains("the SSH connection to"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("dropped") || outcome.stderr.contains("closed"), "{}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(30), "took {:?}", outcome.elapsed);

    // The host is back: the same run succeeds.
    let (sshd, known) = own_sshd(world);
    let app = slow_app(agent.work.path(), 1, &nonce());
    let rerun = Agent::new()
        .env("DOCKER_HOST", format!("ssh://{}@127.0.0.1:{}", world.ssh_user, sshd.port))
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", &known)
        .args(["run", "--image", "agent-it/fault-sshd", "--no-push", "--context", app.to_str().unwrap()])
        .run();
    rerun.expect_code(0);
}

#[test]
fn a_registry_gone_before_the_push_is_a_push_failure_naming_tag_and_registry() {
    let mut registry = own_registry();
    let repository = format!("127.0.0.1:{}/agent-it/fault-registry", registry.port);
    let agent = Agent::new().env("DOCKER_HOST", "unix:///var/run/docker.sock");
    let app = slow_app(agent.work.path(), 3, &nonce());
    let agent = agent.args(["run", "--image", &repository, "--tag", "v1", "--context", app.to_str().unwrap()]);
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| agent.run());
        std::thread::sleep(Duration::from_secs(1));
        registry.kill();
        run.join().unwrap()
    });
    outcome.expect_code(60);
    assert!(
        outcome.stderr.contains(&format!("failed to push {repository}:v1 to 127.0.0.1:{}", registry.port)),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("retrying"), "transient failures are retried: {}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(60), "took {:?}", outcome.elapsed);
}

#[test]
fn a_stopped_daemon_behind_ssh_is_a_remote_socket_failure() {
    // A daemon that stopped without cleaning up leaves a socket nothing listens on.
    let world = World::shared();
    let dir = tempfile::Builder::new().prefix("agent-it-stale").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let outcome = Agent::new()
        .env("DOCKER_HOST", format!("{}{}", world.ssh_url(), socket.display()))
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
        .args(["run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(26);
    assert!(outcome.stderr.contains(&socket.display().to_string()), "{}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(15), "took {:?}", outcome.elapsed);
}
