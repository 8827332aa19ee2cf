//! Issue 27: `agent host idle-stop` — on the host, one look per timer tick; the command runs once
//! no client has been connected for --after, never while one is. The command writes a file here
//! instead of powering off. Clients are read from the kernel's tables: an SSH connection to a
//! port of the test's own sshd (a real agent run through it), a connection to a socket of the
//! test's own.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Outcome};
use crate::build::over_ssh;
use crate::faults::{free_port, own_sshd};
use crate::world::World;

/// One look: `agent host idle-stop` watching `port` and `socket`, its state in `dir`, its command
/// appending a line to `dir/ran`.
fn look(dir: &Path, after: &str, port: u16, socket: &Path) -> Outcome {
    look_with(dir, after, port, socket, &[])
}

/// [`look`] with more flags.
fn look_with(dir: &Path, after: &str, port: u16, socket: &Path, more: &[&str]) -> Outcome {
    Agent::new()
        .args(["host", "idle-stop", "--after", after, "--port", &port.to_string()])
        .args(["--socket", socket.to_str().unwrap(), "--state", dir.join("state").to_str().unwrap()])
        .args(["--command", &format!("echo ran >> {}", dir.join("ran").display())])
        .args(more)
        .run()
}

fn ran(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("ran")).map(|text| text.lines().count()).unwrap_or(0)
}

/// A client of the daemon's socket keeps the host; once it has gone for --after, the command
/// runs, once: the clock starts again after it.
#[test]
fn a_client_of_the_daemons_socket_keeps_the_host_and_the_command_runs_once_idle() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let port = free_port();

    let first = look(dir.path(), "2s", port, &socket);
    first.expect_code(0);
    assert!(first.stderr.contains("idle for 0s of 2s"), "{}", first.stderr);

    let client = UnixStream::connect(&socket).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let busy = look(dir.path(), "2s", port, &socket);
    busy.expect_code(0);
    assert!(busy.stderr.contains("busy: 0 SSH connections, 1 client of the daemon's socket"), "{}", busy.stderr);
    assert_eq!(ran(dir.path()), 0);

    drop((client, accepted));
    look(dir.path(), "2s", port, &socket).expect_code(0);
    assert_eq!(ran(dir.path()), 0, "idle for less than 2s");
    std::thread::sleep(Duration::from_millis(2100));
    let due = look(dir.path(), "2s", port, &socket);
    due.expect_code(0);
    assert!(due.stderr.contains("running \"echo ran >> "), "{}", due.stderr);
    assert_eq!(ran(dir.path()), 1);
    look(dir.path(), "2s", port, &socket).expect_code(0);
    assert_eq!(ran(dir.path()), 1, "once per idle period");
}

/// Done when (issue 27): beside a running build, looked at every 300 ms with --after 2s, the
/// command never runs while the agent's SSH connection is open (the build's RUN sleeps 5 s); it
/// runs within seconds of the run's end.
#[test]
fn the_idle_watcher_never_stops_the_host_during_a_build_and_stops_it_after() {
    let world = World::shared();
    let (sshd, known) = own_sshd(world);
    let dir = tempfile::tempdir().unwrap();
    let no_socket = dir.path().join("no-daemon.sock");
    look(dir.path(), "2s", sshd.port, &no_socket).expect_code(0);

    let agent = over_ssh(world)
        .env("DOCKER_HOST", format!("ssh://{}@127.0.0.1:{}", world.ssh_user, sshd.port))
        .env("JETS_SSH_KNOWN", &known);
    let context = agent.work.path().join("slow");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).unwrap();
    let nonce = format!("{:?}", std::time::SystemTime::now());
    std::fs::write(context.join("nonce"), nonce).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY nonce /nonce\nRUN [\"/bin/busybox\", \"sleep\", \"5\"]\n",
    )
    .unwrap();
    let run = std::thread::spawn({
        let context = context.clone();
        move || agent.args(["run", "--context", context.to_str().unwrap(), "--image", "idle-watch", "--no-push"]).run()
    });
    let started = Instant::now();
    let mut looks = 0;
    while !run.is_finished() {
        look(dir.path(), "2s", sshd.port, &no_socket).expect_code(0);
        looks += 1;
        assert_eq!(ran(dir.path()), 0, "the command ran during the build, {:?} after its start", started.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    let outcome = run.join().unwrap();
    outcome.expect_code(0);
    assert!(started.elapsed() > Duration::from_secs(5) && looks > 10, "{looks} looks in {:?}", started.elapsed());

    let ended = Instant::now();
    while ran(dir.path()) == 0 {
        assert!(ended.elapsed() < Duration::from_secs(10), "the command did not run after the build");
        look(dir.path(), "2s", sshd.port, &no_socket).expect_code(0);
        std::thread::sleep(Duration::from_millis(300));
    }
    // The last look that saw the connection was at most a look (~300 ms) before the run ended.
    assert!(ended.elapsed() >= Duration::from_millis(1200), "ran {:?} after the build", ended.elapsed());
}

#[test]
fn a_duration_that_is_not_one_is_a_usage_error_and_a_failing_command_is_named() {
    let outcome = Agent::new().args(["host", "idle-stop", "--after", "soon"]).run();
    outcome.expect_code(2);
    assert!(outcome.stderr.contains("--after"), "{}", outcome.stderr);

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let idle = |command: &str| {
        Agent::new()
            .args(["host", "idle-stop", "--after", "0s", "--port", &free_port().to_string()])
            .args(["--socket", "/nonexistent.sock", "--state", state.to_str().unwrap(), "--command", command])
            .run()
    };
    idle("true").expect_code(0);
    let failed = idle("exit 7");
    failed.expect_code(3);
    assert!(failed.stderr.contains("the idle command \"exit 7\" failed (exit status: 7)"), "{}", failed.stderr);
    assert!(failed.stderr.contains("hint:"), "{}", failed.stderr);
}

/// The unit files of examples/host pass `systemd-analyze verify` (the service's ExecStart pointed
/// at the built binary: verify checks that it exists), and the service runs idle-stop as the
/// README says.
#[test]
fn the_example_units_pass_systemd_analyze_verify() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/host");
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(examples.join("agent-idle-stop.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/agent host idle-stop --after 30m"), "{service}");
    std::fs::write(
        dir.path().join("agent-idle-stop.service"),
        service.replace("/usr/local/bin/agent", env!("CARGO_BIN_EXE_agent")),
    )
    .unwrap();
    std::fs::copy(examples.join("agent-idle-stop.timer"), dir.path().join("agent-idle-stop.timer")).unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("agent-idle-stop.service"))
        .arg(dir.path().join("agent-idle-stop.timer"))
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by scripts/testworld install)");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    assert!(verified.stderr.is_empty(), "{}", String::from_utf8_lossy(&verified.stderr));
}

/// A monitoring agent that holds the daemon's socket open would keep the host up for ever: the
/// look names the process at the other end of each connection (sock_diag, /proc/PID/fd), and
/// `--ignore-client NAME` leaves that process's connections out, so the host goes idle beside it.
#[test]
fn a_client_is_named_by_its_process_and_an_ignored_one_does_not_keep_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let port = free_port();
    // A client of its own process, named as monitoring agents are: python3 holding the connection.
    let mut monitor = std::process::Command::new("python3")
        .arg("-c")
        .arg("import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(60)")
        .arg(&socket)
        .spawn()
        .expect("python3");
    let (_accepted, _) = listener.accept().unwrap();
    let pid = monitor.id();

    let busy = look(dir.path(), "1s", port, &socket);
    busy.expect_code(0);
    let named = format!("busy: 0 SSH connections, 1 client of the daemon's socket (python3 (pid {pid}))");
    assert!(busy.stderr.contains(&named), "{}", busy.stderr);

    let ignoring = |dir: &Path| look_with(dir, "1s", port, &socket, &["--ignore-client", "python3"]);
    let idle = ignoring(dir.path());
    idle.expect_code(0);
    assert!(idle.stderr.contains(&format!("not counted (--ignore-client): python3 (pid {pid})")), "{}", idle.stderr);
    assert!(idle.stderr.contains("idle for 0s of 1s"), "{}", idle.stderr);
    std::thread::sleep(Duration::from_millis(1100));
    ignoring(dir.path()).expect_code(0);
    assert_eq!(ran(dir.path()), 1, "stopped beside the ignored client");
    let _ = monitor.kill();
    let _ = monitor.wait();
}
