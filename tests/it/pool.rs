//! Issue 16: a pool of hosts. Two daemons behind two sshds of the test world (the world's daemon
//! over the world's sshd, and the "arm64 host", an amd64-native daemon behind its own sshd): each
//! image lands on the host its repository hashes to, the next by the same hash takes the build
//! when that host does not answer, and the local daemon is the fallback when none does. A stopped
//! host is a relay this test starts in front of a world sshd and stops; a dead host is a port with
//! nothing listening, or a listener that accepts and never speaks. The world's own servers are
//! never stopped.
//!
//! The two sshds accept different client keys, so the runs get no JETS_SSH_KEY: the agent offers
//! the `~/.ssh/id_*` files, here the world's key as `id_ed25519` and the arm64 host's as `id_ecdsa`
//! (a key file is read by its content, not its name). JETS_SSH_KNOWN holds both hosts' lines.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::docker::host::DockerHost;

use crate::agent::{Agent, Outcome, Watch};
use crate::world::{World, on_every_engine, read};

/// A TCP relay this test owns, in front of a world sshd: stopping it closes its port and cuts
/// every connection through it, as a host that goes down.
struct Relay {
    port: u16,
    stopped: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopped = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (stopped, accepted, streams) = (stopped.clone(), accepted.clone(), streams.clone());
            std::thread::spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => break,
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut kept = streams.lock().unwrap();
                    kept.push(client.try_clone().unwrap());
                    kept.push(server.try_clone().unwrap());
                    drop(kept);
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                    {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Write);
                        });
                    }
                }
                // The listener is dropped here: the port refuses from now on.
            })
        };
        Relay { port, stopped, accepted, streams, acceptor: Some(acceptor) }
    }

    /// Closes the port and cuts every connection through it.
    fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Connections relayed so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test world's two SSH hosts as a pool, and how to reach them.
struct Pool {
    world: &'static World,
    /// known_hosts lines for every host of the pool (and its relays).
    known: String,
}

impl Pool {
    /// The world's sshd with a socket path where no daemon listens (kept while the directory is):
    /// its connection works, its daemon check fails (exit 26 alone).
    fn sshd_without_a_daemon(&self) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let down = format!("ssh://{}@127.0.0.1:{}{}", self.world.ssh_user, self.world.ssh_port, socket.display());
        (dir, down)
    }

    fn new() -> Pool {
        let world = World::shared();
        assert!(world.var("TW_ARM64_DOCKER_HOST").is_some(), "the arm64 host is missing from the world");
        let known = format!(
            "{}{}",
            read(&world.known_hosts_plain),
            read(Path::new(&self_arm64(world, "TW_ARM64_KNOWN_HOSTS_PLAIN")))
        );
        Pool { world, known }
    }

    /// The world's daemon over the world's sshd, reached at `port` (its own, or a relay's).
    fn world_host(&self, port: u16) -> String {
        format!("ssh://{}@127.0.0.1:{port}/var/run/docker.sock", self.world.ssh_user)
    }

    fn arm64_host(&self) -> String {
        self_arm64(self.world, "TW_ARM64_DOCKER_HOST")
    }

    fn arm64_port(&self) -> u16 {
        self_arm64(self.world, "TW_ARM64_SSH_PORT").parse().unwrap()
    }

    /// Trust the world sshd's keys at a relay's port too.
    fn trust_relay(&mut self, relay: &Relay) {
        let lines = read(&self.world.known_hosts_plain)
            .replace(&format!("[127.0.0.1]:{}", self.world.ssh_port), &format!("[127.0.0.1]:{}", relay.port));
        self.known.push_str(&lines);
    }

    /// A run with both hosts' keys in `~/.ssh` and the pool's known_hosts.
    fn agent(&self, hosts: &[String]) -> Agent {
        let agent = Agent::new().env("JETS_SSH_KNOWN", &self.known).env("AGENT_HOSTS", hosts.join(","));
        let ssh = agent.home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        for (name, key) in [
            ("id_ed25519", self.world.key_ed25519.clone()),
            ("id_ecdsa", PathBuf::from(self_arm64(self.world, "TW_ARM64_KEY"))),
        ] {
            std::fs::write(ssh.join(name), read(&key)).unwrap();
            std::fs::set_permissions(ssh.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        agent
    }

    /// The daemon socket behind a host of the pool, to look for images.
    fn socket_of(&self, host: &str) -> PathBuf {
        if host.contains(&format!(":{}/", self.arm64_port())) {
            PathBuf::from(self_arm64(self.world, "TW_ARM64_DOCKER_SOCK"))
        } else {
            self.world.docker_sock.clone()
        }
    }
}

fn self_arm64(world: &World, key: &str) -> String {
    world.var(key).unwrap_or_else(|| panic!("{key} missing from the world's env file")).to_string()
}

/// A host as the agent names it (the address normalised: port and socket written out).
fn canonical(host: &str) -> String {
    DockerHost::parse(host, false).unwrap().to_string()
}

/// `count` image repositories whose chosen host in `pool` is `pool[host]`.
fn images_hashing_to(pool: &[String], host: usize, count: usize, prefix: &str) -> Vec<String> {
    let names: Vec<String> = pool.iter().map(|host| canonical(host)).collect();
    (0..)
        .map(|n| format!("agent-it/{prefix}-{n}"))
        .filter(|image| agent::nodes::affinity::order(&names, image)[0] == host)
        .take(count)
        .collect()
}

fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// Builds `image` (not pushed) with a metadata file; returns the outcome and the metadata.
fn build(agent: Agent, image: &str, extra: &[&str]) -> (Outcome, Option<serde_json::Value>) {
    build_watched(agent, image, extra, &Watch::default())
}

/// [`build`], its stderr copied into `watch` as it comes.
fn build_watched(agent: Agent, image: &str, extra: &[&str], watch: &Watch) -> (Outcome, Option<serde_json::Value>) {
    let metadata = agent.work.path().join("metadata.json");
    let mut args = vec!["run", "--image", image, "--no-push", "--metadata-file", metadata.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = agent.args(args);
    let outcome = agent.run_watched(watch);
    let json = std::fs::read_to_string(&metadata).ok().map(|text| serde_json::from_str(&text).unwrap());
    (outcome, json)
}

/// Whether the daemon behind `socket` has `image:latest`.
fn has_image(socket: &Path, image: &str) -> bool {
    let output = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost/images/{image}:latest/json"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout) == "200"
}

/// Removes `image:latest` from the daemon behind `socket`: from the world's shared daemon only
/// once the whole run is over (see [`crate::world::remove_images_after_the_run`]: removing an image
/// there fails a classic build running beside it), from the arm64 host (BuildKit builds only) now.
fn remove_image(socket: &Path, image: &str) {
    if socket == World::shared().docker_sock {
        crate::world::remove_images_after_the_run(&[&format!("{image}:latest")]);
        return;
    }
    let _ = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-X", "DELETE", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost/images/{image}:latest?force=1"))
        .output();
}

/// Removes the `latest-<arch>` tags a multi-platform run without a push leaves on a host (on the
/// shared daemon once the run is over, as [`remove_image`] does).
fn remove_platform_images(socket: &Path, image: &str) {
    if socket == World::shared().docker_sock {
        let tags: Vec<String> = ["amd64", "arm64"].iter().map(|arch| format!("{image}:latest-{arch}")).collect();
        crate::world::remove_images_after_the_run(&tags.iter().map(String::as_str).collect::<Vec<_>>());
        return;
    }
    for arch in ["amd64", "arm64"] {
        let _ = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-X", "DELETE", "--max-time", "20", "--unix-socket"])
            .arg(socket)
            .arg(format!("http://localhost/images/{image}:latest-{arch}?force=1"))
            .output();
    }
}

/// What [`app`]'s RUN step prints first, when it has one: from then on the build is busy on the host.
const RUNNING: &str = "pool-app-running";

/// A context of its own (so the build is the image's, not a cache hit of another test's), with a
/// RUN step that sleeps `seconds` when given (saying [`RUNNING`] as it starts).
fn app(dir: &Path, nonce: &str, sleep: Option<u32>) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("nonce.txt"), nonce).unwrap();
    let mut dockerfile = String::from("FROM scratch\n");
    if let Some(seconds) = sleep {
        std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
        dockerfile.push_str("COPY busybox /bin/busybox\nCOPY nonce.txt /nonce.txt\n");
        dockerfile.push_str(&format!(
            "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {RUNNING}; /bin/busybox sleep {seconds}\"]\n"
        ));
    } else {
        dockerfile.push_str("COPY nonce.txt /nonce.txt\n");
    }
    std::fs::write(app.join("Dockerfile"), dockerfile).unwrap();
    app
}

fn built_on(metadata: &Option<serde_json::Value>) -> String {
    metadata.as_ref().expect("a metadata file")["agent.host"].as_str().expect("agent.host").to_string()
}

#[test]
fn the_same_image_lands_on_the_same_host_every_time_and_images_spread_over_both() {
    let pool = Pool::new();
    let hosts = [pool.world_host(pool.world.ssh_port), pool.arm64_host()];
    let run = nonce();
    let mut landed = Vec::new();
    for (host, images) in [0, 1].map(|host| (host, images_hashing_to(&hosts, host, 2, &format!("pool-affinity-{run}"))))
    {
        for image in images {
            for attempt in 0..2 {
                let agent = pool.agent(&hosts);
                let context = app(agent.work.path(), &format!("{image}-{attempt}"), None);
                let (outcome, metadata) = build(agent, &image, &["--context", context.to_str().unwrap()]);
                outcome.expect_code(0);
                assert_eq!(built_on(&metadata), canonical(&hosts[host]), "{image}, run {attempt}\n{}", outcome.stderr);
                assert!(metadata.as_ref().unwrap().get("agent.failed_hosts").is_none(), "{metadata:?}");
                assert!(!outcome.stderr.contains("did not answer"), "{}", outcome.stderr);
            }
            let (here, there) = (pool.socket_of(&hosts[host]), pool.socket_of(&hosts[1 - host]));
            assert!(has_image(&here, &image), "{image} is not on {}", hosts[host]);
            assert!(!has_image(&there, &image), "{image} is also on {}", hosts[1 - host]);
            landed.push((here, image));
        }
    }
    for (socket, image) in landed {
        remove_image(&socket, &image);
    }
}

#[test]
fn when_the_chosen_host_is_stopped_the_next_takes_the_build_and_the_log_and_metadata_say_so() {
    let mut pool = Pool::new();
    let mut relay = Relay::start(pool.world.ssh_port);
    pool.trust_relay(&relay);
    let hosts = [pool.world_host(relay.port), pool.arm64_host()];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-failover-{}", nonce()))[0];

    // Up: it builds on its own host, through the relay.
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap()]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[0]));
    assert!(relay.accepted() >= 1);

    // Stopped: the next host by the same hash takes it.
    relay.stop();
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap()]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[1]));
    let failed = &metadata.as_ref().unwrap()["agent.failed_hosts"];
    assert_eq!(failed[0]["host"], canonical(&hosts[0]), "{failed}");
    assert_eq!(failed[0]["class"], "connection-refused", "{failed}");
    let warning = format!("{} did not answer", canonical(&hosts[0]));
    assert!(outcome.stderr.contains(&warning), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("{} takes the build", canonical(&hosts[1]))), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("refused"), "{}", outcome.stderr);
    assert!(has_image(&pool.socket_of(&hosts[1]), image));
    remove_image(&pool.world.docker_sock, image);
    remove_image(&pool.socket_of(&hosts[1]), image);
}

#[test]
fn a_host_that_accepts_but_never_speaks_costs_the_failover_timeout_and_no_more() {
    let pool = Pool::new();
    // Accepted by the kernel, never read: the SSH handshake gets no banner.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = pool.world_host(silent.local_addr().unwrap().port());
    let hosts = [silent_host, pool.world_host(pool.world.ssh_port)];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-silent-{}", nonce()))[0];
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap(), "--failover-timeout", "2"]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[1]));
    assert_eq!(metadata.as_ref().unwrap()["agent.failed_hosts"][0]["class"], "timeout");
    assert!(outcome.stderr.contains("no answer within 2s"), "{}", outcome.stderr);
    // 2 s for the silent host, then a normal run (about a second here).
    assert!(outcome.elapsed < Duration::from_secs(12), "took {:?}", outcome.elapsed);
    remove_image(&pool.world.docker_sock, image);
}

#[test]
fn when_no_host_of_the_pool_answers_the_fallback_builds_with_a_warning_naming_them() {
    let pool = Pool::new();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(refused), pool.world_host(silent.local_addr().unwrap().port())];
    let image = format!("agent-it/pool-fallback-{}", nonce());
    let agent = pool.agent(&hosts).env("AGENT_FALLBACK_HOST", format!("unix://{}", pool.world.docker_sock.display()));
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) =
        build(agent, &image, &["--context", context.to_str().unwrap(), "--failover-timeout", "2"]);
    outcome.expect_code(0);
    let metadata = metadata.unwrap();
    assert_eq!(metadata["agent.host"], format!("unix://{}", pool.world.docker_sock.display()));
    assert_eq!(metadata["agent.fallback"], true);
    let failed: Vec<&str> =
        metadata["agent.failed_hosts"].as_array().unwrap().iter().map(|host| host["host"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = hosts.iter().map(|host| canonical(host)).collect();
    let mut found: Vec<String> = failed.iter().map(|host| host.to_string()).collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
    assert!(outcome.stderr.contains("no host of the pool answered"), "{}", outcome.stderr);
    for host in &hosts {
        assert!(outcome.stderr.contains(&canonical(host)), "{}", outcome.stderr);
    }
    assert!(has_image(&pool.world.docker_sock, &image));
    remove_image(&pool.world.docker_sock, &image);

    // Without the fallback the run fails as a pool of one would: with the chosen host's class.
    let agent = pool.agent(&hosts);
    let (outcome, _) = build(agent, &image, &["--failover-timeout", "2", "--connect-timeout", "3"]);
    let names: Vec<String> = hosts.iter().map(|host| canonical(host)).collect();
    let chosen = agent::nodes::affinity::order(&names, &image)[0];
    outcome.expect_code(if chosen == 0 { 21 } else { 22 });
    assert!(outcome.stderr.contains("error: failed to connect to ssh://127.0.0.1"), "{}", outcome.stderr);
}

#[test]
fn a_changed_host_key_on_the_chosen_host_stops_the_run_and_does_not_fail_over() {
    let mut pool = Pool::new();
    // The arm64 host's port with the world sshd's keys: the arm64 sshd presents another key.
    let arm64 = format!("[127.0.0.1]:{}", pool.arm64_port());
    let world = format!("[127.0.0.1]:{}", pool.world.ssh_port);
    pool.known = format!(
        "{}{}",
        read(&pool.world.known_hosts_plain),
        read(&pool.world.known_hosts_plain).replace(&world, &arm64)
    );
    let hosts = [pool.world_host(pool.world.ssh_port), pool.arm64_host()];
    let image = &images_hashing_to(&hosts, 1, 1, &format!("pool-key-{}", nonce()))[0];
    let agent = pool.agent(&hosts);
    let (outcome, metadata) = build(agent, image, &[]);
    outcome.expect_code(24);
    assert!(outcome.stderr.contains("has changed"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("did not answer"), "{}", outcome.stderr);
    assert!(metadata.is_none());
    assert!(!has_image(&pool.world.docker_sock, image));
}

#[test]
fn eight_concurrent_runs_land_on_their_hosts_and_with_one_host_stopped_mid_way_the_rest_fail_over() {
    let mut pool = Pool::new();
    let mut relay = Relay::start(pool.world.ssh_port);
    pool.trust_relay(&relay);
    let hosts = [pool.world_host(relay.port), pool.arm64_host()];
    let run = nonce();
    let on_world = images_hashing_to(&hosts, 0, 4, &format!("pool-eight-{run}"));
    let on_arm64 = images_hashing_to(&hosts, 1, 4, &format!("pool-eight-{run}"));
    let all: Vec<(usize, &String)> =
        on_world.iter().map(|image| (0, image)).chain(on_arm64.iter().map(|image| (1, image))).collect();

    // Eight agent processes at once, different apps: each lands on its hash's host.
    let outcomes: Vec<(usize, &String, Outcome, Option<serde_json::Value>)> = std::thread::scope(|scope| {
        let runs: Vec<_> = all
            .iter()
            .map(|&(host, image)| {
                let agent = pool.agent(&hosts);
                let context = app(agent.work.path(), &format!("{image}-first"), None);
                scope.spawn(move || {
                    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap()]);
                    (host, image, outcome, metadata)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (host, image, outcome, metadata) in &outcomes {
        outcome.expect_code(0);
        assert_eq!(built_on(metadata), canonical(&hosts[*host]), "{image}");
    }

    // Again, and the world host goes down while two of its builds run: those fail with the
    // connection's class, the runs that start after it fail over, the arm64 host's runs go on.
    let slow = 20;
    let watches = [Watch::default(), Watch::default()];
    let (cut, later) = std::thread::scope(|scope| {
        let cut: Vec<_> = on_world[..2]
            .iter()
            .zip(&watches)
            .map(|(image, watch)| {
                let agent = pool.agent(&hosts);
                let context = app(agent.work.path(), &format!("{image}-slow-{}", nonce()), Some(slow));
                scope.spawn(move || build_watched(agent, image, &["--context", context.to_str().unwrap()], watch))
            })
            .collect();
        let steady: Vec<_> = on_arm64[..2]
            .iter()
            .map(|image| {
                let agent = pool.agent(&hosts);
                let context = app(agent.work.path(), &format!("{image}-second"), None);
                scope.spawn(move || build(agent, image, &["--context", context.to_str().unwrap()]))
            })
            .collect();
        // Both slow runs are in their RUN step, through the relay.
        for watch in &watches {
            watch.wait_for(RUNNING, Duration::from_secs(60));
        }
        relay.stop();
        let later: Vec<_> = on_world[2..]
            .iter()
            .chain(&on_arm64[2..])
            .map(|image| {
                let agent = pool.agent(&hosts);
                let context = app(agent.work.path(), &format!("{image}-second"), None);
                scope.spawn(move || build(agent, image, &["--context", context.to_str().unwrap()]))
            })
            .collect();
        let cut: Vec<_> = cut.into_iter().map(|run| run.join().unwrap()).collect();
        let mut later: Vec<_> = later.into_iter().map(|run| run.join().unwrap()).collect();
        later.extend(steady.into_iter().map(|run| run.join().unwrap()));
        (cut, later)
    });
    for (outcome, metadata) in &cut {
        outcome.expect_code(27);
        assert!(outcome.stderr.contains("the SSH connection to"), "{}", outcome.stderr);
        assert!(outcome.elapsed < Duration::from_secs(slow as u64 + 30), "took {:?}", outcome.elapsed);
        assert!(metadata.is_none());
    }
    for (outcome, metadata) in &later {
        outcome.expect_code(0);
        assert_eq!(built_on(metadata), canonical(&hosts[1]), "{}", outcome.stderr);
    }
    let failed_over: Vec<_> =
        later.iter().filter(|(_, metadata)| metadata.as_ref().unwrap().get("agent.failed_hosts").is_some()).collect();
    assert_eq!(failed_over.len(), 2, "the two world-host runs that started after it stopped fail over");

    // A rerun of a cut build lands on the next host.
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &format!("{}-rerun", on_world[0]), None);
    let (outcome, metadata) = build(agent, &on_world[0], &["--context", context.to_str().unwrap()]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[1]));

    for image in on_world.iter().chain(&on_arm64) {
        remove_image(&pool.world.docker_sock, image);
        remove_image(&pool.socket_of(&hosts[1]), image);
    }
}

on_every_engine! {
    /// A pool whose chosen host's daemon is down fails over to the next, each engine in turn.
    fn a_host_whose_sshd_answers_but_whose_daemon_is_down_is_passed_over(engine) {
        let pool = Pool::new();
        let _cache = engine.cache_lock(false);
        // The world's sshd, a socket where no daemon listens: the candidate's check fails (exit 26 alone).
        let (_dir, down) = pool.sshd_without_a_daemon();
        let hosts = [down, engine.docker_host.clone()];
        let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-daemon-down-{}", nonce()))[0];
        let agent = pool.agent(&hosts);
        let context = app(agent.work.path(), &nonce(), None);
        let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap()]);
        outcome.expect_code(0);
        assert_eq!(built_on(&metadata), canonical(&hosts[1]));
        assert_eq!(metadata.as_ref().unwrap()["agent.failed_hosts"][0]["class"], "remote-socket", "{metadata:?}");
        assert!(has_image(&engine.sock, image), "{}", outcome.stderr);
        remove_image(&engine.sock, image);
    }
}

/// A refused SSH key is the configuration's, the same on every try: the run stops (exit 25) rather
/// than building elsewhere and hiding it.
#[test]
fn a_refused_ssh_key_stops_the_run_and_does_not_fail_over() {
    let pool = Pool::new();
    let hosts = [pool.world_host(pool.world.ssh_port), pool.arm64_host()];
    let image = &images_hashing_to(&hosts, 1, 1, &format!("pool-auth-{}", nonce()))[0];
    let agent = pool.agent(&hosts);
    // Only the world's key: the arm64 host refuses it.
    std::fs::remove_file(agent.home.path().join(".ssh/id_ecdsa")).unwrap();
    let (outcome, metadata) = build(agent, image, &[]);
    outcome.expect_code(25);
    assert!(!outcome.stderr.contains("did not answer"), "{}", outcome.stderr);
    assert!(metadata.is_none());
}

/// A `@cert-authority` line: host certificates are not supported, so it lets no host in.
fn cert_authority_line(patterns: &str) -> String {
    format!(
        "@cert-authority {patterns} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy"
    )
}

/// The warnings about `@cert-authority` lines in a run's log.
fn cert_authority_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("@cert-authority lines are not supported"))
        .collect()
}

/// Regression (issue 16 follow-up): each SSH host of a run read the known_hosts file and warned of
/// its `@cert-authority` lines again, so a pool whose chosen host failed over warned twice (and a
/// line of JETS_SSH_KNOWN, installed into the file by the run, once more). The file is read once
/// per run, and each such line is warned of once.
#[test]
fn known_hosts_is_read_and_each_cert_authority_line_warned_of_once_when_the_pool_fails_over() {
    let mut pool = Pool::new();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(refused), pool.world_host(pool.world.ssh_port)];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-known-once-{}", nonce()))[0];
    pool.known.push_str(&format!("{}\n", cert_authority_line("*.pasted.example")));
    let agent = pool.agent(&hosts).env("RUST_LOG", "info,agent=debug");
    let known_hosts = agent.home.path().join(".ssh/known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", cert_authority_line("*.file.example"))).unwrap();
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap()]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[1]), "{}", outcome.stderr);
    assert_eq!(metadata.as_ref().unwrap()["agent.failed_hosts"][0]["host"], canonical(&hosts[0]));

    let warnings = cert_authority_warnings(&outcome.stderr);
    assert_eq!(warnings.len(), 2, "one warning per line, not per host:\n{}", outcome.stderr);
    assert_eq!(warnings.iter().filter(|line| line.contains("JETS_SSH_KNOWN line ")).count(), 1, "{warnings:#?}");
    let file_line = format!("{} line 1: @cert-authority", known_hosts.display());
    assert_eq!(warnings.iter().filter(|line| line.contains(&file_line)).count(), 1, "{warnings:#?}");
    let reads = format!("read {}: ", known_hosts.display());
    assert_eq!(outcome.stderr.matches(&reads).count(), 1, "the file is read once:\n{}", outcome.stderr);
    remove_image(&pool.world.docker_sock, image);
}

/// `--platform linux/amd64,linux/arm64` with a pool and the arm64 host as linux/arm64's own host:
/// linux/amd64 goes to the pool.
fn pool_and_own_host_args<'a>(image: &'a str, context: &'a str, metadata: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run", "--image", image, "--no-push", "--platform", "linux/amd64,linux/arm64"];
    args.extend(["--context", context, "--metadata-file", metadata]);
    args
}

/// Issues 15 and 16 together: with a pool, a platform without a host of its own builds on the
/// pool's host for the image, failing over like a single-platform run, beside a platform on its
/// own host. Regression: such a run's metadata had no `agent.failed_hosts` / `agent.fallback`
/// and its log no "failed over" line. Its plan (`--dry`) shows both placements.
#[test]
fn a_platform_on_the_pool_fails_over_beside_a_platform_on_its_own_host_and_the_metadata_and_log_say_so() {
    let pool = Pool::new();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(refused), pool.world_host(pool.world.ssh_port)];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-platforms-{}", nonce()))[0];
    let fallback = format!("unix://{}", pool.world.docker_sock.display());
    let with_hosts =
        |agent: Agent| agent.env("DOCKER_HOST_ARM64", pool.arm64_host()).env("AGENT_FALLBACK_HOST", &fallback);

    // The plan: linux/amd64 on the pool, linux/arm64 on its own host.
    let agent = with_hosts(pool.agent(&hosts));
    let context = app(agent.work.path(), &nonce(), None);
    let kept = tempfile::tempdir().unwrap(); // the run's own directories go with it
    let metadata_path = kept.path().join("metadata.json");
    let (context, metadata_path) = (context.to_str().unwrap().to_string(), metadata_path.to_str().unwrap().to_string());
    let mut dry = pool_and_own_host_args(image, &context, &metadata_path);
    dry.push("--dry");
    let plan = with_hosts(pool.agent(&hosts)).args(dry).run();
    plan.expect_code(0);
    for line in [
        "connect to the hosts of linux/amd64, linux/arm64".to_string(),
        "linux/amd64: on the pool's host for the image below, or the next that answers".to_string(),
        format!("linux/arm64: daemon {} (from env DOCKER_HOST_ARM64)", canonical(&pool.arm64_host())),
        "pool of 2 hosts (from env AGENT_HOSTS)".to_string(),
        format!("{image} hashes to {}", canonical(&hosts[0])),
        format!("failover order: {}, {}", canonical(&hosts[0]), canonical(&hosts[1])),
        format!("fallback {fallback} (from env AGENT_FALLBACK_HOST)"),
    ] {
        assert!(plan.stdout.contains(&line), "missing {line:?} in\n{}", plan.stdout);
    }

    // The run: linux/amd64 fails over to the pool's next host, linux/arm64 builds on its own.
    let outcome = agent.args(pool_and_own_host_args(image, &context, &metadata_path)).run();
    outcome.expect_code(0);
    let log = &outcome.stderr;
    let failed_over = format!(
        "linux/amd64: building on {}, failed over from {} (connection-refused)",
        canonical(&hosts[1]),
        canonical(&hosts[0])
    );
    assert!(log.contains(&failed_over), "missing {failed_over:?} in\n{log}");
    let connected = format!(
        "connected over ssh, ssh (linux/amd64 on {}, linux/arm64 on {})",
        canonical(&hosts[1]),
        canonical(&pool.arm64_host())
    );
    assert!(log.contains(&connected), "missing {connected:?} in\n{log}");
    assert!(log.contains(&format!("[linux/amd64] built on {}", canonical(&hosts[1]))), "{log}");
    assert!(log.contains(&format!("[linux/arm64] built on {}", canonical(&pool.arm64_host()))), "{log}");
    assert!(!log.contains("linux/arm64: building on"), "{log}");

    let metadata: serde_json::Value = serde_json::from_str(&read(Path::new(&metadata_path))).unwrap();
    assert_eq!(metadata["agent.failed_hosts"][0]["host"], canonical(&hosts[0]), "{metadata}");
    assert_eq!(metadata["agent.failed_hosts"][0]["class"], "connection-refused", "{metadata}");
    assert_eq!(metadata["agent.fallback"], false, "{metadata}");
    let amd64 = &metadata["agent.platforms"]["linux/amd64"];
    assert_eq!(amd64["agent.host"], canonical(&hosts[1]), "{metadata}");
    assert_eq!(amd64["agent.failed_hosts"][0]["host"], canonical(&hosts[0]), "{metadata}");
    assert_eq!(amd64["agent.fallback"], false, "{metadata}");
    let arm64 = &metadata["agent.platforms"]["linux/arm64"];
    assert_eq!(arm64["agent.host"], canonical(&pool.arm64_host()), "{metadata}");
    assert!(arm64.get("agent.failed_hosts").is_none() && arm64.get("agent.fallback").is_none(), "{metadata}");
    remove_platform_images(&pool.world.docker_sock, image);
    remove_platform_images(&pool.socket_of(&pool.arm64_host()), image);
}

/// Regression (issue 15 follow-up): a platform's own host that did not answer failed the run with
/// an error naming the host but not the platform, unlike a failed build. It is wrapped like a
/// build's failure, naming the platform, with the connection's class (21, refused).
#[test]
fn a_platforms_own_host_that_does_not_answer_fails_the_run_naming_the_platform_with_the_connect_class() {
    let pool = Pool::new();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(pool.world.ssh_port), pool.arm64_host()];
    let image = format!("agent-it/pool-own-down-{}", nonce());
    let agent = pool.agent(&hosts).env("DOCKER_HOST_ARM64", pool.world_host(refused));
    let (outcome, metadata) = build(agent, &image, &["--platform", "linux/amd64,linux/arm64"]);
    outcome.expect_code(21);
    let error = outcome.stderr.lines().find(|line| line.starts_with("error: ")).expect("an error line");
    let expected = format!("error: linux/arm64: failed to connect to ssh://127.0.0.1:{refused}");
    assert!(error.starts_with(&expected), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("hint: "), "{}", outcome.stderr);
    // A host with no next one: its error says it all, no warning repeats it first.
    assert!(!outcome.stderr.contains("did not answer"), "{}", outcome.stderr);
    assert!(metadata.is_none());
}

/// Two platforms without hosts of their own share the pool: its host that does not answer is tried
/// once and warned of once, naming both platforms, and both go to the next host in one line. When
/// no host of the pool answers, the error names both platforms, with the chosen host's class.
#[test]
fn platforms_sharing_the_pool_fail_over_together_with_one_warning_and_fail_together_naming_both() {
    let pool = Pool::new();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(refused), pool.world_host(pool.world.ssh_port)];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-shared-{}", nonce()))[0];
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) =
        build(agent, image, &["--context", context.to_str().unwrap(), "--platform", "linux/amd64,linux/arm64"]);
    outcome.expect_code(0);
    let log = &outcome.stderr;
    let (down, next) = (canonical(&hosts[0]), canonical(&hosts[1]));
    let warned = format!("{down} did not answer (linux/amd64, linux/arm64): ");
    assert_eq!(log.matches(&format!("{down} did not answer")).count(), 1, "{log}");
    assert!(log.contains(&warned) && log.contains(&format!("; {next} takes the build")), "{log}");
    let moved = format!("linux/amd64, linux/arm64: building on {next}, failed over from {down} (connection-refused)");
    assert!(log.contains(&moved), "missing {moved:?} in\n{log}");
    let metadata = metadata.expect("a metadata file");
    assert_eq!(metadata["agent.failed_hosts"].as_array().map(Vec::len), Some(1), "{metadata}");
    for platform in ["linux/amd64", "linux/arm64"] {
        let each = &metadata["agent.platforms"][platform];
        assert_eq!(each["agent.host"], next, "{metadata}");
        assert_eq!(each["agent.failed_hosts"][0]["host"], down, "{metadata}");
    }
    remove_platform_images(&pool.world.docker_sock, image);

    // No host of the pool answers: the error names both platforms, with the chosen host's class.
    let also_refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hosts = [pool.world_host(refused), pool.world_host(also_refused)];
    let (outcome, _) = build(pool.agent(&hosts), image, &["--platform", "linux/amd64,linux/arm64"]);
    outcome.expect_code(21);
    let error = outcome.stderr.lines().find(|line| line.starts_with("error: ")).expect("an error line");
    assert!(error.starts_with("error: linux/amd64, linux/arm64: failed to connect to ssh://127.0.0.1:"), "{error}");
}

/// Regression (issue 15 follow-up): a platform's own host whose sshd answers but whose daemon does
/// not failed the check naming neither the platform nor, in the line, what it was for. The error
/// names the platform, with the remote socket's class (26).
#[test]
fn a_platforms_own_host_whose_daemon_is_down_fails_the_check_naming_the_platform() {
    let pool = Pool::new();
    let (_dir, down) = pool.sshd_without_a_daemon();
    let hosts = [pool.arm64_host()];
    let agent = pool.agent(&hosts).env("DOCKER_HOST_ARM64", &down);
    let (outcome, _) = build(agent, "agent-it/pool-own-daemon-down", &["--platform", "linux/amd64,linux/arm64"]);
    outcome.expect_code(26);
    let error = outcome.stderr.lines().find(|line| line.starts_with("error: ")).expect("an error line");
    assert!(error.starts_with("error: linux/arm64: "), "{}", outcome.stderr);
}

/// Regression: a host whose sshd answers but whose daemon never does (a socket that accepts and
/// never replies) was checked within the whole connect timeout (20 s) before the next host took
/// the build; its check now has the failover timeout, as its connection has.
#[test]
fn a_host_whose_daemon_hangs_behind_a_live_sshd_costs_the_failover_timeout_and_no_more() {
    let pool = Pool::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    // Bound and kept, never accepted from: a connection waits in the backlog with no answer.
    let _hung = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let hung = format!("ssh://{}@127.0.0.1:{}{}", pool.world.ssh_user, pool.world.ssh_port, socket.display());
    let hosts = [hung, pool.arm64_host()];
    let image = &images_hashing_to(&hosts, 0, 1, &format!("pool-daemon-hung-{}", nonce()))[0];
    let agent = pool.agent(&hosts);
    let context = app(agent.work.path(), &nonce(), None);
    let (outcome, metadata) = build(agent, image, &["--context", context.to_str().unwrap(), "--failover-timeout", "2"]);
    outcome.expect_code(0);
    assert_eq!(built_on(&metadata), canonical(&hosts[1]));
    assert_eq!(metadata.as_ref().unwrap()["agent.failed_hosts"][0]["class"], "timeout", "{metadata:?}");
    assert!(outcome.stderr.contains("did not answer its check within 2s"), "{}", outcome.stderr);
    // 2 s for the hung daemon, then a normal run (about a second here), far from the 20 s.
    assert!(outcome.elapsed < Duration::from_secs(12), "took {:?}", outcome.elapsed);
    remove_image(&pool.socket_of(&hosts[1]), image);
}
