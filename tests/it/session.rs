//! Issue 14: the agent's own BuildKit session over ssh — the context synced by FileSync under a
//! key that is the same on a fresh machine, so a one-file change sends one file; .dockerignore'd
//! files neither sent nor in the image; a Dockerfile outside the context.

use std::path::Path;

use crate::agent::{Agent, Outcome};
use crate::world::{World, read};

/// A run over ssh, Jets-style, building with BuildKit and pushing nothing.
fn over_ssh(world: &World) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("it/session-{name}-{}-{nanos}", std::process::id())
}

/// Removes a test's image from the host once the run is over.
fn remove_image(repository: &str) {
    crate::world::remove_images_after_the_run(&[&format!("{repository}:latest")]);
}

/// `(files sent, files walked)` from the session's counter line, `context: sent 1 of 52 files, …`.
fn sent(outcome: &Outcome) -> (u64, u64) {
    let line = outcome
        .stderr
        .lines()
        .find_map(|line| line.split_once("context: sent ").map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no context counter in the log:\n{}", outcome.stderr));
    let mut words = line.split_whitespace();
    let sent = words.next().and_then(|word| word.parse().ok()).expect("files sent");
    let _of = words.next();
    let walked = words.next().and_then(|word| word.parse().ok()).expect("files walked");
    (sent, walked)
}

/// A checkout of the app under `root`: `root/services/api` with 50 files of 1 MB (one of them
/// this test's own, so the first build is cold).
fn checkout(root: &Path, id: &str) -> std::path::PathBuf {
    let app = root.join("services/api");
    std::fs::create_dir_all(app.join("data")).unwrap();
    std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY . /app/\n").unwrap();
    for index in 0..50u32 {
        // Cheap, distinct, incompressible enough: a counter pattern seeded by the file's index.
        let mut content = vec![0u8; 1 << 20];
        let mut state = 0x9e37_79b9_u32.wrapping_mul(index + 1);
        for byte in content.iter_mut() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = state as u8;
        }
        std::fs::write(app.join(format!("data/{index:02}.bin")), content).unwrap();
    }
    std::fs::write(app.join("data/id.txt"), id).unwrap();
    app
}

#[test]
fn a_one_file_change_on_a_fresh_machine_sends_only_that_file_over_ssh() {
    let world = World::shared();
    let repository = unique("sync");
    // Two fresh "machines": another checkout directory (as CodeBuild's source path changes every
    // build), another HOME; the same repository and the same path in the checkout.
    let first_root = tempfile::tempdir().unwrap();
    let second_root = tempfile::tempdir().unwrap();
    let run = |root: &Path, app: &Path| {
        let outcome = over_ssh(world)
            .env("CODEBUILD_SRC_DIR", root.display().to_string())
            .args(["run", "--no-push", "--builder", "buildkit", "--image", &repository])
            .args(["--context", app.to_str().unwrap()])
            .run();
        outcome.expect_code(0);
        outcome
    };
    let first = run(first_root.path(), &checkout(first_root.path(), &repository));
    let (sent_first, walked) = sent(&first);
    assert_eq!(walked, 52, "{}", first.stderr);
    assert_eq!(sent_first, 52, "a cold build sends everything:\n{}", first.stderr);

    // The same files at another path (`cp -a` keeps their times: fsutil compares size and mtime,
    // so a checkout that rewrote every mtime would send every file again).
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(first_root.path().join("services"))
        .arg(second_root.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let second_app = second_root.path().join("services/api");
    std::fs::write(second_app.join("data/07.bin"), b"changed").unwrap();
    let second = run(second_root.path(), &second_app);
    assert_eq!(sent(&second), (1, 52), "only the changed file is sent:\n{}", second.stderr);
    assert!(second.stderr.contains("context key from image"), "{}", second.stderr);
    assert!(second.stderr.contains("in CODEBUILD_SRC_DIR"), "{}", second.stderr);
    let key_line = second.stderr.lines().find(|line| line.contains("context key from")).unwrap();
    assert!(!key_line.contains(&second_root.path().display().to_string()), "{key_line}");
    remove_image(&repository);
}

#[test]
fn dockerignored_files_are_neither_sent_nor_in_the_image_and_a_dockerfile_elsewhere_works() {
    let world = World::shared();
    let repository = unique("ignore");
    let agent = over_ssh(world);
    let context = agent.work.path().join("context");
    std::fs::create_dir_all(context.join("secrets")).unwrap();
    std::fs::create_dir_all(context.join("src")).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).expect("busybox (from busybox-static)");
    std::fs::write(context.join(".dockerignore"), "secrets\n*.log\n").unwrap();
    std::fs::write(context.join("secrets/token.txt"), "do not send").unwrap();
    std::fs::write(context.join("debug.log"), "noise").unwrap();
    std::fs::write(context.join("src/main.sh"), &repository).unwrap();
    // The Dockerfile lives outside the context, as with `docker build -f ../docker/Dockerfile.prod`.
    let docker = agent.work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("Dockerfile.prod"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY . /ctx/\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"test -f /ctx/src/main.sh && test ! -e /ctx/secrets && test ! -e /ctx/debug.log\"]\n",
    )
    .unwrap();
    let outcome = agent
        .args(["run", "--no-push", "--builder", "buildkit", "--image", &repository])
        .args(["--context", context.to_str().unwrap(), "-f", docker.join("Dockerfile.prod").to_str().unwrap()])
        .run();
    outcome.expect_code(0);
    // busybox, .dockerignore, src/main.sh; the Dockerfile travels from its own directory.
    let (files, walked) = sent(&outcome);
    assert_eq!(walked, 4, "the scan counts the Dockerfile from outside too:\n{}", outcome.stderr);
    assert_eq!(files, 3, "{}", outcome.stderr);
    assert!(outcome.stderr.contains("step 3/3 RUN"), "{}", outcome.stderr);
    remove_image(&repository);
}

#[test]
fn a_given_context_key_is_used_and_shown_in_the_plan() {
    let outcome = Agent::new()
        .env("AGENT_CONTEXT_KEY", "shop-web")
        .args(["run", "--dry", "--image", "registry.example/app", "--builder", "buildkit"])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("(from env AGENT_CONTEXT_KEY \"shop-web\")"), "{}", outcome.stdout);
}

fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

#[test]
fn with_stable_mtimes_a_fresh_clone_with_one_file_changed_sends_only_that_file() {
    let world = World::shared();
    let repository = unique("clone");
    let origin = tempfile::tempdir().unwrap();
    let app = checkout(origin.path(), &repository);
    git(origin.path(), &["init", "-q"]);
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["commit", "-q", "-m", "the app"]);
    // Each build on a fresh machine: a fresh clone (every mtime new) at a new path.
    let build = |changed: bool| {
        let machine = tempfile::tempdir().unwrap();
        git(machine.path(), &["clone", "-q", origin.path().to_str().unwrap(), "src"]);
        let source = machine.path().join("src");
        if changed {
            std::fs::write(source.join("services/api/data/03.bin"), b"changed").unwrap();
        }
        let outcome = over_ssh(world)
            .env("CODEBUILD_SRC_DIR", source.display().to_string())
            .env("AGENT_STABLE_MTIMES", "1")
            .args(["run", "--no-push", "--builder", "buildkit", "--image", &repository])
            .args(["--context", source.join("services/api").to_str().unwrap()])
            .run();
        outcome.expect_code(0);
        outcome
    };
    assert!(app.is_dir());
    let first = build(false);
    assert_eq!(sent(&first), (52, 52), "{}", first.stderr);
    let second = build(true);
    assert_eq!(sent(&second), (1, 52), "only the changed file is sent from a fresh clone:\n{}", second.stderr);
    remove_image(&repository);
}
