//! Issue 23: failures the host causes are named as the host's. Each test starts a Docker host of
//! its own (`scripts/fault-host`: a dockerd of the engine under test whose data lives on a small
//! loop-mounted ext4, with a bridge of its own), reaches it over the world's sshd as a user would,
//! breaks it — fills its disk, deletes its bridge — and takes it down when done. Nothing of the
//! shared world is touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent::{Agent, Outcome, Watch};
use crate::build::{full_run, unique};
use crate::world::{Engine, World, on_every_engine};

/// A Docker host this test owns; taken down (dockerd and containerd stopped, disk unmounted,
/// bridge deleted) when dropped, also when the test fails.
struct FaultHost {
    dir: tempfile::TempDir,
    sock: PathBuf,
    bridge: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fault-host")
}

impl FaultHost {
    fn up(engine: &Engine, disk_mb: u32) -> FaultHost {
        let dir = tempfile::Builder::new().prefix("agent-fault-host-").tempdir().expect("a temporary directory");
        // the world's ssh user reaches the socket through it (its group, docker, opens the socket)
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let name = if engine.is_bookworm() { "20" } else { engine.name.as_str() };
        let output = Command::new(script())
            .args(["up", dir.path().to_str().unwrap(), name, &disk_mb.to_string()])
            .output()
            .expect("scripts/fault-host");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let host =
            |key: &str| stdout.lines().find_map(|line| line.strip_prefix(key)).map(str::to_string).unwrap_or_default();
        let fault = FaultHost { sock: PathBuf::from(host("SOCK=")), bridge: host("BRIDGE="), dir };
        assert!(output.status.success(), "fault-host up: {}{stdout}", String::from_utf8_lossy(&output.stderr));
        fault
    }

    /// The host as a user's DOCKER_HOST names it: over the world's sshd.
    fn docker_host(&self, world: &World) -> String {
        format!("{}{}", world.ssh_url(), self.sock.display())
    }

    /// Fills the host's disk, leaving a few kilobytes.
    fn fill(&self) {
        let status = Command::new(script()).args(["fill", self.dir.path().to_str().unwrap(), "64"]).status().unwrap();
        assert!(status.success(), "fault-host fill");
    }

    fn free(&self) {
        for entry in std::fs::read_dir(self.dir.path().join("disk")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("fill.") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    /// Restarts its dockerd as systemd does for `systemctl restart docker` (an update): SIGTERM,
    /// then started again.
    fn restart_daemon(&self) {
        let status = Command::new(script()).args(["restart", self.dir.path().to_str().unwrap()]).status().unwrap();
        assert!(status.success(), "fault-host restart");
    }

    fn delete_bridge(&self) {
        let status = Command::new("ip").args(["link", "delete", &self.bridge, "type", "bridge"]).status().unwrap();
        assert!(status.success(), "ip link delete {}", self.bridge);
    }
}

impl Drop for FaultHost {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", self.dir.path().to_str().unwrap()]).status();
    }
}

/// A context whose Dockerfile copies a static busybox and a 3 MB blob that ends with `run` (so
/// that it is never in a host's cache from another run), then runs `run`.
fn app(dir: &Path, run: &str) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox")).expect("busybox (from busybox-static)");
    let mut blob: Vec<u8> = (0..3_000_000u32).map(|at| (at.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    blob.extend_from_slice(run.as_bytes());
    std::fs::write(app.join("blob"), blob).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!("FROM scratch\nCOPY busybox /bin/busybox\nCOPY blob /blob\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"{run}\"]\n"),
    )
    .unwrap();
    app
}

fn run_on(host: &FaultHost, repository: &str, app: &Path, builder: &str) -> Outcome {
    let world = World::shared();
    let agent: Agent = full_run(world, repository).env("DOCKER_HOST", host.docker_host(world));
    agent.args(["run", "--context", app.to_str().unwrap(), "--builder", builder]).run()
}

on_every_engine! {
    /// The host's disk: a RUN that fills it and fails is the step's failure (class build) with a
    /// hint about the disk, since only its output says so; a disk already full when the build
    /// starts is `host-disk-full` (32), read from the daemon's own error, with the host's disk line
    /// and the hint; freed, the same run pushes. With either builder; nothing pushed before.
    fn a_full_host_disk_is_host_disk_full_and_a_freed_one_builds(engine) {
        let world = World::shared();
        let host = FaultHost::up(engine, 200);
        for builder in ["buildkit", "classic"] {
            let repository = unique(&format!("disk-full-{builder}"));
            let work = tempfile::tempdir().unwrap();
            let filling = app(work.path(), "/bin/busybox dd if=/dev/zero of=/fill bs=1M count=400");
            let outcome = run_on(&host, &repository, &filling, builder);
            outcome.expect_code(50);
            assert!(outcome.stderr.contains("No space left on device"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("the step's output says a disk filled up"), "{builder}: {}", outcome.stderr);

            host.fill();
            let app = app(work.path(), &format!("echo {repository}"));
            let outcome = run_on(&host, &repository, &app, builder);
            outcome.expect_code(32);
            assert!(outcome.stderr.contains("is full"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("no space left on device"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("docker builder prune"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("--keep-storage"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("host disk: images"), "{builder}: {}", outcome.stderr);
            assert!(!outcome.stderr.contains("fix the Dockerfile"), "{builder}: {}", outcome.stderr);
            assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed from a full host");

            host.free();
            let outcome = run_on(&host, &repository, &app, builder);
            outcome.expect_code(0);
            assert!(!world.ecr_tags(&repository).is_empty(), "{}", outcome.stderr);
        }
    }
}

on_every_engine! {
    /// The host's networking: its bridge deleted under its daemon, a RUN step cannot get a network
    /// endpoint: `host-runtime` (33), with the daemon's words and the hint to read its log and
    /// restart it — not "fix the Dockerfile". With either builder; nothing pushed.
    fn a_host_whose_bridge_is_gone_is_host_runtime(engine) {
        let world = World::shared();
        let host = FaultHost::up(engine, 200);
        host.delete_bridge();
        for builder in ["buildkit", "classic"] {
            let repository = unique(&format!("no-bridge-{builder}"));
            let work = tempfile::tempdir().unwrap();
            let app = app(work.path(), &format!("echo {repository}"));
            let outcome = run_on(&host, &repository, &app, builder);
            outcome.expect_code(33);
            assert!(outcome.stderr.contains("could not carry out the build at step"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("failed to create endpoint"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("journalctl -u docker"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("systemctl restart docker"), "{builder}: {}", outcome.stderr);
            assert!(!outcome.stderr.contains("fix the Dockerfile"), "{builder}: {}", outcome.stderr);
            assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed");
        }
    }
}

/// A pool gives a build to its next host when its host failed on its own before it ran any step
/// (here its disk is full when the build starts): nothing runs twice, the warning names the host,
/// its class and the one that took the build, the metadata lists it under `agent.failed_hosts`, and
/// the image is pushed from the fallback. With either builder.
#[test]
fn a_pool_gives_the_build_to_its_next_host_when_its_host_fails_before_any_step() {
    let world = World::shared();
    let engine = world.engine("20.10");
    let host = FaultHost::up(&engine, 200);
    host.fill();
    for builder in ["buildkit", "classic"] {
        let repository = unique(&format!("disk-full-failover-{builder}"));
        let work = tempfile::tempdir().unwrap();
        let app = app(work.path(), &format!("echo {repository}"));
        let metadata = work.path().join("metadata.json");
        let agent = full_run(world, &repository)
            .env("DOCKER_HOST", host.docker_host(world))
            .env("AGENT_FALLBACK_HOST", world.ssh_url());
        let outcome = agent
            .args(["run", "--context", app.to_str().unwrap(), "--builder", builder])
            .args(["--metadata-file", metadata.to_str().unwrap()])
            .run();
        outcome.expect_code(0);
        let warning = format!("{} failed the build before it ran any step [host-disk-full]", host.docker_host(world));
        assert!(outcome.stderr.contains(&warning), "{builder}: {}", outcome.stderr);
        assert!(outcome.stderr.contains("takes the build"), "{builder}: {}", outcome.stderr);
        assert!(!world.ecr_tags(&repository).is_empty(), "{}", outcome.stderr);
        let metadata: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
        assert_eq!(metadata["agent.fallback"], true, "{metadata}");
        assert_eq!(metadata["agent.failed_hosts"][0]["class"], "host-disk-full", "{metadata}");
    }
}

/// A host that failed after it ran a step (its bridge gone, the build's COPY steps done, its RUN
/// refused a network) keeps the build's failure: the pool's next host does not take it, so that
/// no step runs twice.
#[test]
fn a_host_that_failed_after_a_step_ran_is_not_failed_over() {
    let world = World::shared();
    let engine = world.engine("20.10");
    let host = FaultHost::up(&engine, 200);
    host.delete_bridge();
    let repository = unique("no-bridge-no-failover");
    let work = tempfile::tempdir().unwrap();
    let app = app(work.path(), &format!("echo {repository}"));
    let agent = full_run(world, &repository)
        .env("DOCKER_HOST", host.docker_host(world))
        .env("AGENT_FALLBACK_HOST", world.ssh_url());
    let outcome = agent.args(["run", "--context", app.to_str().unwrap()]).run();
    outcome.expect_code(33);
    assert!(!outcome.stderr.contains("takes the build"), "{}", outcome.stderr);
    assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed");
}

on_every_engine! {
    /// The host's daemon restarted during a BuildKit build (`systemctl restart docker`, as an update
    /// does): BuildKit's build dies with it, the stream breaks off, and the daemon answers again
    /// within seconds: `host-runtime` (33), saying it restarted — not a daemon that is down (30).
    /// (The classic builder's build outlives a graceful restart: dockerd waits for it.)
    fn a_daemon_restarted_during_the_build_is_host_runtime(engine) {
        let world = World::shared();
        let host = FaultHost::up(engine, 200);
        let repository = unique("restarted");
        let work = tempfile::tempdir().unwrap();
        let marker = format!("running-{}", std::process::id());
        let app = app(work.path(), &format!("echo {marker}; sleep 30"));
        let agent = full_run(world, &repository)
            .env("DOCKER_HOST", host.docker_host(world))
            .args(["run", "--context", app.to_str().unwrap(), "--builder", "buildkit"]);
        let watch = Watch::default();
        let outcome = std::thread::scope(|scope| {
            let run = scope.spawn(|| agent.run_watched(&watch));
            watch.wait_for(&marker, std::time::Duration::from_secs(60));
            host.restart_daemon();
            run.join().unwrap()
        });
        outcome.expect_code(33);
        assert!(outcome.stderr.contains("it restarted (or crashed) during the build"), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("journalctl -u docker"), "{}", outcome.stderr);
        assert!(outcome.elapsed < std::time::Duration::from_secs(30), "took {:?}", outcome.elapsed);
        assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed");
    }
}
