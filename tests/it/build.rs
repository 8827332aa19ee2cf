//! Issue 6: the whole run over ssh — build on the remote daemon, tags pushed to the ECR stand-in,
//! the cache on the second run, .dockerignore, and a failing build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent::{Agent, Outcome};
use crate::world::{Engine, World, on_every_engine, read};

/// A copy of the example app (with busybox) in a temporary directory.
pub(crate) fn example_app(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/app");
    let app = dir.join("app");
    copy_tree(&source, &app);
    std::fs::copy("/bin/busybox", app.join("busybox")).expect("busybox (from busybox-static)");
    let _ = std::fs::remove_file(app.join("imagedefinitions.json"));
    app
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "busybox" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A run over ssh, Jets-style.
pub(crate) fn over_ssh(world: &World) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
}

/// A run over ssh that pushes to the ECR stand-in with moto's token.
pub(crate) fn full_run(world: &World, repository: &str) -> Agent {
    over_ssh(world)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &world.moto_url)
        .env("ECR_REGISTRY", &world.ecr_registry)
        .env("REPOSITORY_URI", format!("{}/{repository}", world.ecr_registry))
}

pub(crate) fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("it/{name}-{}-{nanos}", std::process::id())
}

fn step_lines(outcome: &Outcome) -> Vec<String> {
    // The build's own steps are indented under the agent's "step N/M build …" line.
    outcome.stderr.lines().filter(|line| line.contains("INFO   step ")).map(str::to_string).collect()
}

on_every_engine! {
    /// The whole pipeline on each engine: DOCKER_HOST and the SSH key from Parameter Store, the
    /// build over SSH, both tags pushed to the ECR stand-in, imagedefinitions.json written.
    fn a_full_run_builds_pushes_both_tags_and_writes_imagedefinitions(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let repository = unique("full");
        let parameter = format!("/agent-tests/full-run/{}/{}", engine.name, std::process::id());
        crate::logins::put_parameter(world, &format!("{parameter}/host"), &engine.docker_host, false);
        crate::logins::put_parameter(world, &format!("{parameter}/key"), &read(&world.key_ed25519), true);
        let agent = full_run(world, &repository)
            .env("DOCKER_HOST", format!("SSM:{parameter}/host"))
            .env("JETS_SSH_KEY", format!("SSM:{parameter}/key"))
            .env("CODEBUILD_RESOLVED_SOURCE_VERSION", "0123456789abcdef");
        let app = example_app(agent.work.path());
        // A unique source file, so the source layers are this test's own.
        std::fs::write(app.join("src/id.txt"), &repository).unwrap();
        let agent = agent.args(["run", "--context", app.to_str().unwrap(), "--image-definitions", "web"]);
        let outcome = agent.run();
        outcome.expect_code(0);
        assert!(outcome.stderr.contains(&format!("Docker {}", engine.version)), "{}", outcome.stderr);
        let mut tags = world.ecr_tags(&repository);
        tags.sort();
        assert_eq!(tags, ["0123456", "latest"], "{}", outcome.stderr);
        assert!(outcome.stderr.contains("pushed sha256:"), "{}", outcome.stderr);
        let definitions: serde_json::Value =
            serde_json::from_str(&read(&agent.work.path().join("imagedefinitions.json"))).unwrap();
        assert_eq!(
            definitions,
            serde_json::json!([{ "name": "web", "imageUri": format!("{}/{repository}:0123456", world.ecr_registry) }])
        );
        // The SSM lookup, eleven steps and the comparison with the registry before the pushes.
        assert!(outcome.stderr.contains("done: 13 steps"), "{}", outcome.stderr);
        assert_in_dockerfile_order(&outcome);
    }
}

/// The build's step lines come in the Dockerfile's order (`step 2/8` before `step 3/8`), whatever
/// order the builder reported them in (Docker 28's BuildKit reports CACHED steps last first).
pub(crate) fn assert_in_dockerfile_order(outcome: &Outcome) {
    let numbers: Vec<u32> = step_lines(outcome)
        .iter()
        .filter_map(|line| line.split("INFO   step ").nth(1))
        .filter_map(|rest| rest.split('/').next()?.parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]), "steps out of order {numbers:?}:\n{}", outcome.stderr);
}

/// Runs the example app three times with `builder`: cold, unchanged (every step CACHED), and with
/// one source file changed (only the steps from its COPY on rebuilt).
fn cached_rebuilds(engine: &Engine, builder: &str, engine_line: &str) {
    let world = World::shared();
    // No prune of this engine's cache between the runs (tests/it/budget.rs prunes the new engines).
    let _cache = engine.cache_lock(false);
    let repository = unique(&format!("cache-{builder}"));
    let agent = full_run(world, &repository);
    let app = example_app(agent.work.path());
    std::fs::write(app.join("src/id.txt"), &repository).unwrap();
    let args = ["run", "--context", app.to_str().unwrap(), "--builder", builder];
    let run = || {
        let outcome = full_run(world, &repository).env("DOCKER_HOST", &engine.docker_host).args(args).run();
        outcome.expect_code(0);
        assert!(outcome.stderr.contains(engine_line), "{}", outcome.stderr);
        assert!(outcome.stderr.contains(&format!("Docker {}", engine.version)), "{}", outcome.stderr);
        assert_in_dockerfile_order(&outcome);
        outcome
    };
    run();
    // FROM scratch is a step of the classic builder only, and never "cached"; CMD only records
    // metadata (the classic builder may or may not call it cached, BuildKit does not list it).
    let builds = |line: &&String| !line.contains(" FROM ") && !line.contains(" CMD ");
    let second = run();
    let steps = step_lines(&second);
    assert_eq!(steps.iter().filter(builds).count(), 6, "{}", second.stderr);
    for line in steps.iter().filter(builds) {
        assert!(line.contains(": CACHED"), "not cached on an unchanged rebuild: {line}\n{}", second.stderr);
    }

    std::fs::write(app.join("src/main.sh"), "echo changed\n").unwrap();
    let third = run();
    let steps: Vec<String> = step_lines(&third).into_iter().filter(|line| builds(&line)).collect();
    let source_step = steps.iter().position(|line| line.contains("COPY src/")).expect("the COPY src/ step");
    for line in &steps[..source_step] {
        assert!(line.contains(": CACHED"), "a step before the change was rebuilt: {line}\n{}", third.stderr);
    }
    for line in &steps[source_step..] {
        assert!(!line.contains(": CACHED"), "a step after the change was cached: {line}\n{}", third.stderr);
    }
}

on_every_engine! {
    fn an_unchanged_rebuild_is_all_cached_and_a_source_change_rebuilds_only_after_it_with_buildkit(engine) {
        cached_rebuilds(engine, "auto", "(BuildKit)");
    }
}

on_every_engine! {
    fn an_unchanged_rebuild_is_all_cached_and_a_source_change_rebuilds_only_after_it_with_the_classic_builder(
        engine
    ) {
        cached_rebuilds(engine, "classic", "(classic builder)");
    }
}

/// A Dockerfile `FROM` a private image in the Docker Hub stand-in (htpasswd): refused without the
/// login, built with it — the credentials go with the build (the classic builder's
/// X-Registry-Config, BuildKit's session).
fn private_base_image(builder: &str) {
    let world = World::shared();
    let base = format!("{}/{}", world.hub_registry, unique(&format!("base-{builder}")));
    let hub_login = |agent: Agent| {
        agent
            .env("DOCKER_REGISTRY", &world.hub_registry)
            .env("DOCKER_USER", &world.hub_user)
            .env("DOCKER_PASS", world.hub_pass())
    };
    // The base image, built and pushed by the agent on another daemon (the world's arm64 host, a
    // native amd64 dockerd), so that the build here must pull it. Not built here and removed: an
    // image removed from the shared daemon fails a classic build running beside it (see
    // crate::world::remove_images_after_the_run).
    let arm64 = format!("unix://{}", world.var("TW_ARM64_DOCKER_SOCK").expect("TW_ARM64_DOCKER_SOCK"));
    let agent = hub_login(Agent::new().env("DOCKER_HOST", &arm64));
    let app = example_app(agent.work.path());
    std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n").unwrap();
    agent.args(["run", "--context", app.to_str().unwrap(), "--image", &base, "--tag", "1"]).run().expect_code(0);
    // The arm64 host builds with BuildKit only: removing there is safe now.
    let _ = Command::new("docker")
        .args(["rmi", "--no-prune", &format!("{base}:1"), &format!("{base}:latest")])
        .env("DOCKER_HOST", &arm64)
        .output();
    crate::world::remove_images_after_the_run(&[&format!("{base}:1")]);

    let child = |agent: Agent| {
        let dir = agent.work.path().join("child");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), format!("FROM {base}:1\nRUN [\"/bin/busybox\", \"true\"]\n")).unwrap();
        let tag = format!("{}", std::process::id());
        let context = dir.to_str().unwrap().to_string();
        agent
            .args([
                "run",
                "--context",
                &context,
                "--image",
                "agent-it/child",
                "--tag",
                &tag,
                "--no-push",
                "--builder",
                builder,
            ])
            .run()
    };
    let refused = child(over_ssh(world));
    refused.expect_code(50);
    assert!(refused.stderr.contains("hint: log in to the base image's registry"), "{}", refused.stderr);
    let built = child(hub_login(over_ssh(world)));
    crate::world::remove_images_after_the_run(&[&format!("agent-it/child:{}", std::process::id())]);
    built.expect_code(0);
    assert!(built.stderr.contains(&format!("FROM {base}:1")), "{}", built.stderr);
}

#[test]
fn a_private_base_image_is_pulled_with_the_login_by_buildkit() {
    private_base_image("buildkit");
}

#[test]
fn a_private_base_image_is_pulled_with_the_login_by_the_classic_builder() {
    private_base_image("classic");
}

/// A new or wiped host: the agent pulls the pushed `latest` and builds from it as cache, with
/// either builder. The cold host is the world's second daemon, wiped whole here (its builds use
/// COPY steps only: it has no bridge network). Both builders in one test: they share the host.
#[test]
fn a_wiped_host_pulls_latest_and_builds_from_it_as_cache() {
    let world = World::shared();
    let _cold = World::cold_host();
    let cold = format!("unix://{}", world.cold_docker_sock.display());
    let wipe = || {
        for args in [["system", "prune", "-af"], ["builder", "prune", "-af"]] {
            let output = Command::new("docker").arg("-H").arg(&cold).args(args).output().expect("docker");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
    };
    for builder in ["buildkit", "classic"] {
        let repository = unique(&format!("cold-{builder}"));
        let run = || {
            let agent = full_run(world, &repository).env("DOCKER_HOST", &cold);
            let app = agent.work.path().join("app");
            std::fs::create_dir_all(&app).unwrap();
            std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
            std::fs::write(app.join("unique.txt"), &repository).unwrap();
            std::fs::write(
                app.join("Dockerfile"),
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY unique.txt /unique.txt\nCOPY unique.txt /again.txt\n",
            )
            .unwrap();
            let outcome = agent.args(["run", "--context", app.to_str().unwrap(), "--builder", builder]).run();
            outcome.expect_code(0);
            outcome
        };
        wipe();
        let first = run();
        assert!(first.stderr.contains(":latest to use as cache ("), "{}", first.stderr);
        wipe();
        let second = run();
        assert!(second.stderr.contains(":latest as cache for a cold host"), "{}", second.stderr);
        let copies: Vec<String> = step_lines(&second).into_iter().filter(|line| line.contains(" COPY ")).collect();
        assert_eq!(copies.len(), 3, "{}", second.stderr);
        for line in copies {
            assert!(line.contains(": CACHED"), "{builder}: not built from the pulled cache: {line}\n{}", second.stderr);
        }
    }
}

#[test]
fn dockerignore_keeps_files_out_of_the_image() {
    let world = World::shared();
    let agent = Agent::new().env("DOCKER_HOST", world.docker_tcp_url());
    let app = example_app(agent.work.path());
    std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\nCOPY . /ctx/\n").unwrap();
    std::fs::create_dir_all(app.join("tmp")).unwrap();
    std::fs::write(app.join("tmp/cache.bin"), "x").unwrap();
    std::fs::write(app.join("KEEP.md"), "kept by an exception").unwrap();
    let tag = format!("agent-it/dockerignore:{}", std::process::id());
    let outcome = agent
        .args([
            "run",
            "--context",
            app.to_str().unwrap(),
            "--image",
            "agent-it/dockerignore",
            "--tag",
            tag.split(':').nth(1).unwrap(),
            "--no-push",
        ])
        .run();
    outcome.expect_code(0);
    let listing = Command::new("docker")
        .args(["run", "--rm", &tag, "/bin/busybox", "find", "/ctx"])
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .output()
        .expect("docker run");
    crate::world::remove_images_after_the_run(&[&tag]);
    let files = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    for kept in ["/ctx/Dockerfile", "/ctx/.dockerignore", "/ctx/KEEP.md", "/ctx/src/main.sh", "/ctx/deps.txt"] {
        assert!(files.lines().any(|line| line == kept), "{kept} missing:\n{files}");
    }
    for dropped in ["/ctx/README.md", "/ctx/tmp", "/ctx/tmp/cache.bin"] {
        assert!(!files.lines().any(|line| line == dropped), "{dropped} was sent:\n{files}");
    }
}

/// A RUN step that fails with `builder`: the build's exit class, the step and its output, and
/// nothing pushed.
fn failing_run_step(builder: &str, step: &str, message: &str) {
    let world = World::shared();
    let repository = unique(&format!("failing-{builder}"));
    let agent = full_run(world, &repository);
    let app = example_app(agent.work.path());
    std::fs::write(
        app.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo compiling widget.c; echo 'widget.c:3: error: expected ;' >&2; exit 3\"]\n",
    )
    .unwrap();
    let outcome = agent.args(["run", "--context", app.to_str().unwrap(), "--builder", builder]).run();
    outcome.expect_code(50);
    assert!(outcome.stderr.contains(&format!("the build failed at {step} RUN")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("widget.c:3: error: expected ;"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(message), "{}", outcome.stderr);
    assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed after a failed build");
}

#[test]
fn a_failing_run_step_exits_with_the_build_class_shows_its_output_and_pushes_nothing_with_buildkit() {
    failing_run_step("buildkit", "step 2/2", "exit code: 3");
}

#[test]
fn a_failing_run_step_exits_with_the_build_class_shows_its_output_and_pushes_nothing_with_the_classic_builder() {
    failing_run_step("classic", "step 3/3", "returned a non-zero code: 3");
}

#[test]
fn four_runs_of_different_apps_against_one_host_at_once_all_succeed() {
    let world = World::shared();
    let before = world.ssh_connection_count();
    let runs: Vec<_> = (0..4)
        .map(|index| {
            let repository = unique(&format!("concurrent-{index}"));
            let agent = full_run(world, &repository);
            let app = example_app(agent.work.path());
            std::fs::write(app.join("src/id.txt"), format!("app number {index}")).unwrap();
            let agent = agent.args(["run", "--context", app.to_str().unwrap()]);
            (repository, agent)
        })
        .collect();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs.iter().map(|(_, agent)| scope.spawn(|| agent.run())).collect();
        handles.into_iter().map(|handle| handle.join().expect("a run thread")).collect()
    });
    for ((repository, _), outcome) in runs.iter().zip(&outcomes) {
        outcome.expect_code(0);
        assert_eq!(world.ecr_tags(repository), ["latest"], "{}", outcome.stderr);
    }
    // One SSH connection each (other tests may connect meanwhile: at least four, and each run's
    // log names its own single connect step).
    assert!(world.ssh_connection_count() - before >= 4);
    for outcome in &outcomes {
        assert_eq!(outcome.stderr.matches("connected over ssh").count(), 1, "{}", outcome.stderr);
    }
}

on_every_engine! {
    /// Issue 23: a RUN step whose process is killed with SIGKILL (what the host's out-of-memory
    /// killer sends; here a shell the step starts, since the step's first process is its
    /// container's init, which a signal from inside cannot kill) fails the build with its class (50)
    /// and a hint about memory, read from the daemon's error, on each engine and with either
    /// builder; nothing is pushed.
    fn a_step_killed_with_sigkill_fails_the_build_with_the_memory_hint(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        for builder in ["buildkit", "classic"] {
            let repository = unique(&format!("sigkill-{builder}"));
            let agent = full_run(world, &repository).env("DOCKER_HOST", &engine.docker_host);
            let app = example_app(agent.work.path());
            std::fs::write(
                app.join("Dockerfile"),
                format!(
                    "FROM scratch\nCOPY busybox /bin/busybox\n\
                     RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {repository}; /bin/busybox sh -c 'kill -9 $$'; exit $?\"]\n"
                ),
            )
            .unwrap();
            let outcome = agent.args(["run", "--context", app.to_str().unwrap(), "--builder", builder]).run();
            outcome.expect_code(50);
            // BuildKit counts the steps after FROM (2/2), the classic builder FROM too (3/3).
            assert!(outcome.stderr.contains("/2 RUN [") || outcome.stderr.contains("/3 RUN ["), "{}", outcome.stderr);
            assert!(outcome.stderr.contains("137"), "{}", outcome.stderr);
            assert!(outcome.stderr.contains("killed (SIGKILL, exit code 137)"), "{builder}: {}", outcome.stderr);
            assert!(outcome.stderr.contains("out-of-memory killer"), "{builder}: {}", outcome.stderr);
            assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed after a failed build");
        }
    }
}
