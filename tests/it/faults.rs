//! Faults: servers that die or go away while the agent works. Each fault is injected into a
//! server this test starts itself (its own sshd, its own registry), never into the shared test
//! world. The agent must exit with the fault's class, name the cause, within a bounded time, and a
//! re-run after the fault must succeed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{Agent, Watch};
use crate::world::{World, read};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process this test started, with its descendants killed when it is dropped.
pub(crate) struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl Server {
    /// The server's own directory (an sshd's `sshd.log` is there).
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

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

pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An sshd of this test's own, configured as the world's but on another port.
pub(crate) fn own_sshd(world: &World) -> (Server, String) {
    own_sshd_authorizing(world, None)
}

/// [`own_sshd`], reading the test user's authorized keys from `authorized_keys` when given (a
/// file of the test's own) rather than the world's.
pub(crate) fn own_sshd_authorizing(world: &World, authorized_keys: Option<&Path>) -> (Server, String) {
    own_sshd_with(world, authorized_keys, &[])
}

/// [`own_sshd_authorizing`], with `extra` lines added to its configuration.
pub(crate) fn own_sshd_with(world: &World, authorized_keys: Option<&Path>, extra: &[String]) -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config: String = read(&world.state_dir.join("sshd_config"))
        .lines()
        .map(|line| {
            if line.starts_with("Port ") {
                format!("Port {port}")
            } else if line.starts_with("PidFile ") {
                format!("PidFile {}", dir.path().join("sshd.pid").display())
            } else if let (true, Some(file)) = (line.starts_with("AuthorizedKeysFile "), authorized_keys) {
                format!("AuthorizedKeysFile {}", file.display())
            } else {
                line.to_string()
            }
        })
        .chain(extra.iter().cloned())
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

/// A run over ssh to this test's own sshd.
fn over_own_sshd(world: &World, sshd: &Server, known: &str) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", format!("ssh://{}@127.0.0.1:{}", world.ssh_user, sshd.port))
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", known)
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

/// How the proxy answers a request it picks.
#[derive(Clone, Copy)]
enum Fault {
    /// `503 Service Unavailable`, without a registry error body (the daemon does not retry it).
    Unavailable,
    /// The connection closed without an answer: the registry went away.
    Dropped,
}

/// A loopback proxy in front of a registry that answers the requests `picks` chooses with a
/// fault, as long as `remaining` is above zero, and passes everything else through. Each request
/// gets its own upstream connection (`Connection: close`), so that every request is seen.
struct FaultProxy {
    port: u16,
    remaining: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: u16, fault: Fault, count: usize, picks: fn(&str, &str) -> bool) -> FaultProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let remaining = Arc::new(AtomicUsize::new(count));
        let faults = remaining.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let faults = faults.clone();
                std::thread::spawn(move || {
                    let pick = |method: &str, path: &str| {
                        picks(method, path)
                            && faults.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
                    };
                    let _ = proxy_one(client, upstream, fault, pick);
                });
            }
        });
        FaultProxy { port, remaining }
    }

    /// No more faults: everything passes through.
    fn heal(&self) {
        self.remaining.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

fn proxy_one(
    mut client: std::net::TcpStream,
    upstream: u16,
    fault: Fault,
    pick: impl Fn(&str, &str) -> bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let Some(request) = read_request_head(&mut client)? else { return Ok(()) };
    let (method, path) = request.method_and_path();
    if pick(method, path) {
        if let Fault::Unavailable = fault {
            client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        }
        return client.shutdown(std::net::Shutdown::Both);
    }
    forward(client, &request, upstream)
}

/// A request's head as a registry proxy of a test reads it, and what followed it in the same reads.
pub(crate) struct RequestHead {
    pub(crate) head: String,
    after: Vec<u8>,
}

impl RequestHead {
    pub(crate) fn method_and_path(&self) -> (&str, &str) {
        let mut words = self.head.split_whitespace();
        (words.next().unwrap_or_default(), words.next().unwrap_or_default())
    }
}

/// Reads a request's head from `client`; `None` when it closed first or opened with TLS. The daemon
/// tries TLS first on a loopback registry: that is answered as Go's HTTP server answers a TLS hello
/// ("HTTP/" where a TLS record should be), which is what makes containerd's resolver (Docker 26, 28)
/// fall back to plain HTTP; 20.10 falls back on any failure.
pub(crate) fn read_request_head(client: &mut std::net::TcpStream) -> std::io::Result<Option<RequestHead>> {
    use std::io::{Read, Write};
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if buffer.first() == Some(&0x16) {
            client.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")?;
            client.shutdown(std::net::Shutdown::Both)?;
            return Ok(None);
        }
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    Ok(Some(RequestHead { head, after: buffer[end + 4..].to_vec() }))
}

/// Sends `request` on to the registry at `upstream` (one request per connection) and its answer back.
pub(crate) fn forward(mut client: std::net::TcpStream, request: &RequestHead, upstream: u16) -> std::io::Result<()> {
    use std::io::Write;
    let mut head: String = request
        .head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    head.push_str("Connection: close\r\n\r\n");
    let mut server = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
    server.write_all(head.as_bytes())?;
    server.write_all(&request.after)?;
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    std::io::copy(&mut server, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// Whether a request uploads a manifest: the last request of a push, after its layers.
fn manifest_upload(method: &str, path: &str) -> bool {
    method == "PUT" && path.contains("/manifests/")
}

/// The tags of a repository in a registry without authentication.
fn registry_tags(port: u16, repository: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /v2/{repository}/tags/list HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let mut tags: Vec<String> = value["tags"]
        .as_array()
        .map(|tags| tags.iter().filter_map(|tag| tag.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// What a [`slow_app`]'s RUN step prints first: from then on the build is busy on the host.
const RUNNING: &str = "slow-app-running";

/// A context whose build takes a few seconds (so a fault can strike during it); its RUN step says
/// [`RUNNING`] as it starts.
fn slow_app(dir: &Path, seconds: u32, nonce: &str) -> PathBuf {
    let app = dir.join("slow");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
    // A file of its own before the RUN: neither builder has the step cached (a LABEL would not
    // do: BuildKit does not key its cache on metadata).
    std::fs::write(app.join("nonce.txt"), nonce).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY nonce.txt /nonce.txt\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {RUNNING}; /bin/busybox sleep {seconds}\"]\n"
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
    let agent = over_own_sshd(world, &sshd, &known);
    let app = slow_app(agent.work.path(), 6, &nonce());
    let agent = agent.args(["run", "--image", "agent-it/fault-sshd", "--no-push", "--context", app.to_str().unwrap()]);
    let watch = Watch::default();
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| agent.run_watched(&watch));
        watch.wait_for(RUNNING, Duration::from_secs(60));
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
    let rerun = over_own_sshd(world, &sshd, &known)
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
    let watch = Watch::default();
    let outcome = std::thread::scope(|scope| {
        let run = scope.spawn(|| agent.run_watched(&watch));
        watch.wait_for(RUNNING, Duration::from_secs(60));
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

#[test]
fn a_registry_that_drops_the_connection_mid_push_is_retried_and_the_push_lands() {
    let registry = own_registry();
    let proxy = FaultProxy::start(registry.port, Fault::Dropped, 1, manifest_upload);
    let repository = format!("127.0.0.1:{}/agent-it/fault-dropped", proxy.port);
    let agent = Agent::new().env("DOCKER_HOST", "unix:///var/run/docker.sock");
    let app = slow_app(agent.work.path(), 0, &nonce());
    let outcome = agent.args(["run", "--image", &repository, "--tag", "v1", "--context", app.to_str().unwrap()]).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains(&format!("push {repository}:v1 failed")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("retrying in 1s"), "{}", outcome.stderr);
    assert_eq!(registry_tags(registry.port, "agent-it/fault-dropped"), ["v1"]);
}

#[test]
fn a_registry_answering_503_to_every_push_is_a_push_failure_and_a_rerun_succeeds() {
    let registry = own_registry();
    let proxy = FaultProxy::start(registry.port, Fault::Unavailable, usize::MAX, manifest_upload);
    let repository = format!("127.0.0.1:{}/agent-it/fault-503", proxy.port);
    let run = || {
        let agent = Agent::new().env("DOCKER_HOST", "unix:///var/run/docker.sock");
        let app = slow_app(agent.work.path(), 0, &nonce());
        agent.args(["run", "--image", &repository, "--tag", "v1", "--context", app.to_str().unwrap()]).run()
    };
    let outcome = run();
    outcome.expect_code(60);
    assert!(
        outcome.stderr.contains(&format!("failed to push {repository}:v1 to 127.0.0.1:{}", proxy.port)),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("503 Service Unavailable"), "{}", outcome.stderr);
    assert_eq!(outcome.stderr.matches("retrying in").count(), 2, "three attempts: {}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(60), "took {:?}", outcome.elapsed);
    assert!(registry_tags(registry.port, "agent-it/fault-503").is_empty(), "no tag may land");

    proxy.heal();
    run().expect_code(0);
    assert_eq!(registry_tags(registry.port, "agent-it/fault-503"), ["v1"]);
}

/// Stops (SIGSTOP) or resumes (SIGCONT) a server and every process it started.
fn signal_all(server: &Server, signal: i32) {
    for pid in std::iter::once(server.child.id()).chain(descendants(server.child.id())) {
        // SAFETY: a plain kill(2) of a process this test's own server started.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

/// Regression (keepalive budget): russh gives up at `keepalive_max + 1` silent intervals, so a
/// frozen host was noticed after 4 intervals (60 s) while the plan and `--read-timeout` say 3 (45 s).
/// The read timeout is 6 s here (a keepalive every 2 s): the last answer comes at most 2 s before
/// the freeze, so the run must end 4 to 6 s after it — 8 s with the old count.
#[test]
fn an_ssh_host_that_stops_answering_mid_build_fails_after_the_read_timeout_and_a_rerun_succeeds() {
    let world = World::shared();
    let (sshd, known) = own_sshd(world);
    let agent = over_own_sshd(world, &sshd, &known).env("AGENT_READ_TIMEOUT", "6");
    let app = slow_app(agent.work.path(), 30, &nonce());
    let agent =
        agent.args(["run", "--image", "agent-it/fault-silent", "--no-push", "--context", app.to_str().unwrap()]);
    let watch = Watch::default();
    let (outcome, silent_for) = std::thread::scope(|scope| {
        let run = scope.spawn(|| agent.run_watched(&watch));
        watch.wait_for(RUNNING, Duration::from_secs(60));
        // The host freezes: the TCP connection stays open, nothing answers.
        signal_all(&sshd, libc::SIGSTOP);
        let frozen_at = std::time::Instant::now();
        let outcome = run.join().unwrap();
        let silent_for = frozen_at.elapsed();
        signal_all(&sshd, libc::SIGCONT);
        (outcome, silent_for)
    });
    outcome.expect_code(27);
    assert!(outcome.stderr.contains("stopped answering"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("for 6s"), "{}", outcome.stderr);
    assert!(
        silent_for <= Duration::from_millis(6_700),
        "the read timeout is 6s, the run ended {silent_for:?} after the host froze"
    );
    drop(sshd);

    let (sshd, known) = own_sshd(world);
    let app = slow_app(agent.work.path(), 0, &nonce());
    over_own_sshd(world, &sshd, &known)
        .args(["run", "--image", "agent-it/fault-silent", "--no-push", "--context", app.to_str().unwrap()])
        .run()
        .expect_code(0);
}
