//! The cache budget (`--keep-storage`) and the host disk line, against the world's cold daemon.
//!
//! The prune empties a build cache: these tests use the cold daemon, the "new or wiped host" that
//! only the wiped-host test (build.rs) relies on, and that one wipes it whole anyway. They and it
//! take the cold host in turn: a lock across one `cargo test` process (`World::cold_host`) and
//! nextest's serial group `cold-host` (`.config/nextest.toml`) across processes.

use std::process::Command;

use crate::agent::{Agent, Outcome};
use crate::world::{Engine, World, on_every_engine};

/// What `/system/df` says the cold daemon's build cache takes (shared records once, as `docker
/// system df` counts them).
fn build_cache_bytes(world: &World) -> u64 {
    build_cache_bytes_at(&world.cold_docker_sock)
}

/// What `/system/df` says the build cache of the daemon at `socket` takes.
fn build_cache_bytes_at(socket: &std::path::Path) -> u64 {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .arg("http://docker/system/df")
        .output()
        .expect("curl");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let df: serde_json::Value = serde_json::from_slice(&output.stdout).expect("/system/df answers JSON");
    df["BuildCache"]
        .as_array()
        .map(|records| {
            records
                .iter()
                .filter(|record| !record["Shared"].as_bool().unwrap_or(false))
                .map(|record| record["Size"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// A build on the cold daemon of a context holding `bytes` of random data, so that its build
/// cache holds at least that much; `extra` goes to `agent run`.
fn build_on_cold(world: &World, name: &str, bytes: usize, extra: &[&str]) -> Outcome {
    build_on(&format!("unix://{}", world.cold_docker_sock.display()), name, bytes, extra)
}

/// As [`build_on_cold`], on the daemon at `docker_host`.
fn build_on(docker_host: &str, name: &str, bytes: usize, extra: &[&str]) -> Outcome {
    let agent = Agent::new().env("DOCKER_HOST", docker_host);
    let blob: Vec<u8> = (0..bytes).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(agent.work.path().join("blob"), [name.as_bytes(), &blob].concat()).unwrap();
    std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nCOPY blob /blob\n").unwrap();
    let image = format!("agent-it/budget-{name}-{}", std::process::id());
    // One context key per test, so that a run does not add a copy of the context to the cache.
    let outcome = agent.args(["run", "--image", &image, "--no-push", "--context-key", &image]).args(extra).run();
    outcome.expect_code(0);
    outcome
}

/// The prune step's outcome line, e.g. `step 4/4 keep the build cache within 1MB: freed 4.2 MB (…)`.
fn prune_line(outcome: &Outcome) -> String {
    let line = outcome.stderr.lines().rev().find(|line| line.contains("keep the build cache within"));
    line.unwrap_or_else(|| panic!("no prune step:\n{}", outcome.stderr)).to_string()
}

/// A daemon whose cache a test may prune, held for the test: on 20.10 the world's cold daemon (the
/// shared one is every other test's cache), on a newer engine the engine itself, its cache lock
/// held exclusively (the tests there that expect CACHED steps hold it shared).
struct Prunable {
    docker_host: String,
    sock: std::path::PathBuf,
    _cold: Option<std::sync::MutexGuard<'static, ()>>,
    _cache: Option<std::fs::File>,
}

fn prunable(engine: &Engine) -> Prunable {
    let world = World::shared();
    if engine.is_bookworm() {
        let cold = World::cold_host();
        let docker_host = format!("unix://{}", world.cold_docker_sock.display());
        Prunable { docker_host, sock: world.cold_docker_sock.clone(), _cold: Some(cold), _cache: None }
    } else {
        let cache = engine.cache_lock(true);
        Prunable { docker_host: engine.unix_host(), sock: engine.sock.clone(), _cold: None, _cache: Some(cache) }
    }
}

on_every_engine! {
    /// Issue 16: a budget below the cache prunes it down to the budget; the log says how much was
    /// freed, and `/system/df` agrees. The run also logs the host's disk line (the cold daemon holds
    /// few images, so a run asks it beside the build). Issue 22: with `keep-storage` below API 1.48,
    /// `reserved-space` and `max-used-space` from it on.
    fn a_budget_below_the_cache_prunes_it_down_and_the_daemon_agrees(engine) {
        let host = prunable(engine);
        build_on(&host.docker_host, "below", 4_000_000, &[]);
        let before = build_cache_bytes_at(&host.sock);
        assert!(before >= 4_000_000, "the build left {before} bytes of cache");
        let outcome = build_on(&host.docker_host, "below", 4_000_000, &["--keep-storage", "1MB"]);
        assert!(outcome.stderr.contains("host disk: images "), "{}", outcome.stderr);
        let line = prune_line(&outcome);
        let after = build_cache_bytes_at(&host.sock);
        assert!(after <= 1024 * 1024, "{after} bytes of build cache left over a 1 MiB budget\n{}", outcome.stderr);
        let freed = line.split("freed ").nth(1).and_then(|rest| rest.split(" (").next());
        let freed = freed.unwrap_or_else(|| panic!("the log does not say what was freed: {line}"));
        assert_eq!(freed, human_bytes(before - after), "{line}\n/system/df: {before} bytes before, {after} after");
    }
}

/// Issue 16: the prune never touches what a build running at that moment uses. A build of one app
/// is in its `RUN sleep` step (holding its COPY steps' records and its own) while another app's run
/// prunes the cache to one byte; the first build succeeds, and built again, every step is CACHED.
#[test]
fn a_prune_leaves_a_running_build_its_cache() {
    let world = World::shared();
    let _cold = World::cold_host();
    let slow = Agent::new().env("DOCKER_HOST", format!("unix://{}", world.cold_docker_sock.display()));
    let image = format!("agent-it/budget-running-{}", std::process::id());
    std::fs::copy("/bin/busybox", slow.work.path().join("busybox")).unwrap();
    std::fs::write(slow.work.path().join("blob"), format!("running {image} {:?}", std::time::SystemTime::now()))
        .unwrap();
    std::fs::write(
        slow.work.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY blob /blob\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo slow-build-running; /bin/busybox sleep 4\"]\n",
    )
    .unwrap();
    let slow = slow.args(["run", "--image", &image, "--no-push", "--context-key", &image]);
    let watch = crate::agent::Watch::default();
    let outcome = std::thread::scope(|scope| {
        let running = scope.spawn(|| slow.run_watched(&watch));
        watch.wait_for("slow-build-running", std::time::Duration::from_secs(60));
        let pruning = build_on_cold(world, "pruning", 1_000_000, &["--keep-storage", "1"]);
        let line = prune_line(&pruning);
        assert!(line.contains(": freed "), "{line}");
        running.join().expect("the slow build's thread")
    });
    outcome.expect_code(0);
    let cached = |outcome: &Outcome| {
        outcome.expect_code(0);
        let steps: Vec<&str> = outcome.stderr.lines().filter(|line| line.contains("  step ")).collect();
        assert_eq!(steps.len(), 3, "{}", outcome.stderr);
        steps.iter().filter(|line| line.contains(": CACHED")).count()
    };
    assert_eq!(cached(&slow.run()), 3, "the prune took records of the running build");
    // With the build over and its image removed (BuildKit keeps, without `all`, records an image
    // shares), the same prune does take them: what kept them before was the running build.
    let cold = format!("unix://{}", world.cold_docker_sock.display());
    let removed =
        Command::new("docker").args(["-H", &cold, "rmi", &format!("{image}:latest")]).output().expect("docker");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    build_on_cold(world, "pruning", 1_000_000, &["--keep-storage", "1"]);
    assert!(cached(&slow.run()) < 3, "a prune to one byte kept the records of a finished build");
}

/// Issue 16: a budget above the cache leaves it alone.
#[test]
fn a_budget_above_the_cache_leaves_it_alone() {
    let world = World::shared();
    let _cold = World::cold_host();
    build_on_cold(world, "above", 2_000_000, &[]);
    let before = build_cache_bytes(world);
    let outcome = build_on_cold(world, "above", 2_000_000, &["--keep-storage", "100GB"]);
    let line = prune_line(&outcome);
    assert!(line.contains(", within the budget: nothing freed"), "{line}");
    assert_eq!(build_cache_bytes(world), before, "{}", outcome.stderr);
}

on_every_engine! {
    /// Issue 16: with the classic builder the prune removes only dangling images older than an hour:
    /// the one a build left a moment ago (as a build running beside the prune would) stays.
    fn the_classic_prune_keeps_young_dangling_images(engine) {
        let host = prunable(engine);
        let classic = ["--builder", "classic"];
        build_on(&host.docker_host, "classic-a", 1_000_000, &classic);
        let image = format!("agent-it/budget-classic-a-{}", std::process::id());
        let cold = host.docker_host.clone();
        let inspect = |reference: &str| {
            Command::new("docker")
                .args(["-H", &cold, "image", "inspect", "--format", "{{.Id}}", reference])
                .output()
                .expect("docker")
        };
        let first = inspect(&format!("{image}:latest"));
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        let id = String::from_utf8_lossy(&first.stdout).trim().to_string();
        // The same tag built again leaves the first image dangling.
        let agent = Agent::new().env("DOCKER_HOST", &cold);
        std::fs::write(agent.work.path().join("blob"), "another content").unwrap();
        std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nCOPY blob /blob\n").unwrap();
        let outcome = agent.args(["run", "--image", &image, "--no-push", "--keep-storage", "1"]).args(classic).run();
        outcome.expect_code(0);
        let line = prune_line(&outcome);
        // Nothing else removed, or (a world kept from an earlier run) only images over an hour old.
        assert!(line.contains("dangling image") && line.contains(" older than 1h"), "{line}");
        assert_ne!(inspect(&format!("{image}:latest")).stdout, first.stdout, "the second build did not move the tag");
        assert!(inspect(&id).status.success(), "the young dangling image {id} was removed: {line}");
    }
}

/// Issue 16: a size docker would not read is a config error (exit 3) with a hint, before anything runs.
#[test]
fn a_bad_budget_is_a_config_error_with_a_hint() {
    for (flag, env) in [(Some("40XB"), None), (None, Some("forty gigs"))] {
        let mut agent = Agent::new().args(["run", "--image", "app", "--dry"]);
        if let Some(flag) = flag {
            agent = agent.args(["--keep-storage", flag]);
        }
        if let Some(env) = env {
            agent = agent.env("AGENT_KEEP_STORAGE", env);
        }
        let outcome = agent.run();
        outcome.expect_code(3);
        assert!(outcome.stderr.contains("hint: give a size as docker does, binary"), "{}", outcome.stderr);
        let subject = if flag.is_some() { "--keep-storage: " } else { "AGENT_KEEP_STORAGE: " };
        assert!(outcome.stderr.contains(subject), "{}", outcome.stderr);
    }
}

/// `--dry` shows the prune step with the budget in bytes.
#[test]
fn the_dry_run_shows_the_budget() {
    let outcome = Agent::new().args(["run", "--image", "app", "--dry", "--keep-storage", "500MB"]).run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("keep the build cache within 500MB"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("budget 500MB = 524288000 bytes (from flag --keep-storage)"), "{}", outcome.stdout);
}

/// Bytes as the agent logs them (docker's decimal units, one decimal).
fn human_bytes(bytes: u64) -> String {
    agent::output::human_bytes(bytes)
}

/// Issue 16: on a host of more than 300 images the line gives their count only (sizing them would
/// slow the run); on a smaller one, the sizes. Which one the shared daemon is depends on what ran
/// before: `/info` says.
#[test]
fn a_big_host_gets_its_image_count_and_a_small_one_its_sizes() {
    let world = World::shared();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(&world.docker_sock)
        .arg("http://docker/info")
        .output()
        .expect("curl");
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).expect("/info answers JSON");
    let images = info["Images"].as_u64().expect("/info counts the images");
    let outcome = Agent::new()
        .env("DOCKER_HOST", format!("unix://{}", world.docker_sock.display()))
        .args(["run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(0);
    if images > 300 {
        assert!(
            outcome.stderr.contains(" images (their sizes not asked: on a host of more than 300"),
            "{}",
            outcome.stderr
        );
        assert!(!outcome.stderr.contains("host disk: images "), "{}", outcome.stderr);
    } else {
        assert!(outcome.stderr.contains("host disk: images "), "{}", outcome.stderr);
    }
}

/// A Unix socket in front of the cold daemon that answers 500 to every connection whose first
/// request asks for the build cache's size or its prune (the agent opens a stream of its own for
/// each), and passes every other connection through, byte for byte.
struct RefusingProxy {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl RefusingProxy {
    fn start(world: &World) -> RefusingProxy {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let daemon = world.cold_docker_sock.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let daemon = daemon.clone();
                std::thread::spawn(move || {
                    let mut first = vec![0u8; 4096];
                    let Ok(read) = client.read(&mut first) else { return };
                    first.truncate(read);
                    let line = String::from_utf8_lossy(&first).lines().next().unwrap_or_default().to_string();
                    if line.contains("/build/prune") || line.contains("/system/df?type=build-cache") {
                        let body = r#"{"message":"injected failure"}"#;
                        let answer = format!(
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(answer.as_bytes());
                        return;
                    }
                    let Ok(mut upstream) = UnixStream::connect(&daemon) else { return };
                    if upstream.write_all(&first).is_err() {
                        return;
                    }
                    let (mut client_back, mut upstream_back) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut upstream_back, &mut client_back);
                        let _ = client_back.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut client, &mut upstream);
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RefusingProxy { socket, _dir: dir }
    }
}

/// Issue 16: a prune that fails is a warning, not a failed run: the build succeeded, exit 0.
#[test]
fn a_failed_prune_is_a_warning_and_the_run_succeeds() {
    let world = World::shared();
    let _cold = World::cold_host();
    let proxy = RefusingProxy::start(world);
    let agent = Agent::new().env("DOCKER_HOST", format!("unix://{}", proxy.socket.display()));
    let image = format!("agent-it/budget-refused-{}", std::process::id());
    let outcome = agent.args(["run", "--image", &image, "--no-push", "--keep-storage", "1"]).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("WARN"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("the build cache was not pruned: "), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("injected failure"), "{}", outcome.stderr);
    assert!(prune_line(&outcome).contains("not pruned (see the warning)"), "{}", outcome.stderr);
}
