//! Issue 14 (part): the build's output in the log (`--progress plain`, the default, and `steps`)
//! with either builder, a secret echoed by a RUN step masked, and `--metadata-file` against the
//! registry's own digest.

use std::path::Path;
use std::process::Command;

use crate::agent::{Agent, Outcome};
use crate::world::World;

fn token(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A run against the world's daemon over TCP, logged into the Docker Hub stand-in, so that its
/// password is a secret the agent knows.
fn logged_in(world: &World) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", world.docker_tcp_url())
        .env("DOCKER_REGISTRY", &world.hub_registry)
        .env("DOCKER_USER", &world.hub_user)
        .env("DOCKER_PASS", world.hub_pass())
}

/// A context whose RUN step prints a line that its command does not hold (`answer 42 for TOKEN`)
/// and the Hub password, read from a file of the context.
fn context_with_talking_run(dir: &Path, world: &World, token: &str, exit: u8) -> String {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox")).expect("busybox (from busybox-static)");
    std::fs::write(app.join("secret.txt"), world.hub_pass()).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY secret.txt /secret.txt\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo answer $((40+2)) for {token}; \
             echo password: $(/bin/busybox cat /secret.txt); exit {exit}\"]\n"
        ),
    )
    .unwrap();
    app.to_str().unwrap().to_string()
}

fn build_talking_run(world: &World, builder: &str, progress: Option<&str>, exit: u8) -> (Outcome, String) {
    let token = token(&format!("talk-{builder}"));
    let agent = logged_in(world);
    let context = context_with_talking_run(agent.work.path(), world, &token, exit);
    let mut args =
        vec!["run", "--context", &context, "--image", "agent-it/progress", "--no-push", "--builder", builder];
    let tag = token.clone();
    args.extend(["--tag", &tag]);
    if let Some(progress) = progress {
        args.extend(["--progress", progress]);
    }
    let outcome = agent.args(args).run();
    crate::world::remove_images_after_the_run(&[&format!("agent-it/progress:{token}")]);
    (outcome, token)
}

/// The log lines that show the RUN step's output, by the text only its output holds.
fn output_lines(outcome: &Outcome, token: &str) -> Vec<String> {
    let answer = format!("answer 42 for {token}");
    outcome
        .stderr
        .lines()
        .filter(|line| line.contains(" | ") && (line.contains(&answer) || line.contains("password: ")))
        .map(str::to_string)
        .collect()
}

fn run_output_at_the_default_progress(builder: &str) {
    let world = World::shared();
    let (outcome, token) = build_talking_run(world, builder, None, 0);
    outcome.expect_code(0);
    let lines = output_lines(&outcome, &token);
    assert_eq!(lines.len(), 2, "{}", outcome.stderr);
    // Each prefixed with its step, `[N/M] RUN … | line`, the secret masked.
    assert!(lines[0].contains("] RUN [") && lines[0].ends_with(&format!(" | answer 42 for {token}")), "{lines:?}");
    assert!(lines[1].ends_with(" | password: ********"), "{lines:?}");
}

#[test]
fn run_output_is_logged_with_its_step_and_secrets_masked_at_the_default_progress_with_buildkit() {
    run_output_at_the_default_progress("buildkit");
}

#[test]
fn run_output_is_logged_with_its_step_and_secrets_masked_at_the_default_progress_with_the_classic_builder() {
    run_output_at_the_default_progress("classic");
}

#[test]
fn run_output_is_not_logged_at_progress_steps_unless_the_step_fails() {
    let world = World::shared();
    for builder in ["buildkit", "classic"] {
        let (quiet, token) = build_talking_run(world, builder, Some("steps"), 0);
        quiet.expect_code(0);
        assert!(output_lines(&quiet, &token).is_empty(), "{builder}: {}", quiet.stderr);
        assert!(
            quiet.stderr.contains(" RUN [\"/bin/busybox\""),
            "{builder}: the step line is missing\n{}",
            quiet.stderr
        );

        let (failed, token) = build_talking_run(world, builder, Some("steps"), 3);
        failed.expect_code(50);
        // Shown once, in the error's output of the failing step, the secret masked there too.
        let answer = format!("answer 42 for {token}");
        assert_eq!(failed.stderr.matches(&answer).count(), 1, "{builder}: {}", failed.stderr);
        assert!(failed.stderr.contains("password: ********"), "{builder}: {}", failed.stderr);
    }
}

#[test]
fn buildkit_progress_quiet_means_steps_and_a_bad_value_is_a_config_error() {
    let world = World::shared();
    let agent = logged_in(world).env("BUILDKIT_PROGRESS", "quiet");
    let plan = agent.args(["run", "--dry", "--image", "agent-it/progress"]).run();
    plan.expect_code(0);
    assert!(plan.stdout.contains("a RUN step's output only if it fails (env BUILDKIT_PROGRESS)"), "{}", plan.stdout);
    let bad = Agent::new().env("BUILDKIT_PROGRESS", "fancy").args(["run", "--dry", "--image", "app"]).run();
    bad.expect_code(3);
    assert!(bad.stderr.contains("BUILDKIT_PROGRESS"), "{}", bad.stderr);
}

/// The digest of `name:tag` as the Docker Hub stand-in serves it (`Docker-Content-Digest`).
fn registry_digest(world: &World, name: &str, tag: &str) -> String {
    let accept = format!("{}, {}", crate::platform::DOCKER_MANIFEST, crate::platform::OCI_MANIFEST);
    world.manifest(crate::platform::Api::Hub, name, tag, &accept).1
}

#[test]
fn the_metadata_file_holds_the_registrys_digest_the_image_id_and_each_step() {
    let world = World::shared();
    for builder in ["buildkit", "classic"] {
        let name = format!("it/{}", token(&format!("metadata-{builder}")));
        let agent = logged_in(world);
        let context = agent.work.path().join("app");
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("id.txt"), &name).unwrap();
        std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY id.txt /id.txt\n").unwrap();
        let image = format!("{}/{name}", world.hub_registry);
        let metadata = agent.work.path().join("metadata.json");
        // The agent (and its temporary directories) lives until the file is read.
        let agent = agent
            .args(["run", "--context", context.to_str().unwrap(), "--image", &image, "--tag", "latest", "--tag", "v1"])
            .args(["--builder", builder, "--metadata-file", metadata.to_str().unwrap()]);
        let outcome = agent.run();
        outcome.expect_code(0);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
        assert_eq!(json["containerimage.digest"], registry_digest(world, &name, "v1"), "{builder}: {json}");
        assert_eq!(json["containerimage.digest"], registry_digest(world, &name, "latest"), "{builder}: {json}");
        assert_eq!(json["image.name"], format!("{image}:latest,{image}:v1"), "{builder}: {json}");
        let id = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &format!("{image}:v1")])
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .output()
            .expect("docker image inspect");
        assert_eq!(json["containerimage.config.digest"], String::from_utf8_lossy(&id.stdout).trim(), "{json}");
        let steps = json["agent.steps"].as_array().expect("agent.steps");
        assert!(
            steps.iter().any(|step| step["step"].as_str().is_some_and(|title| title.ends_with("COPY id.txt /id.txt"))
                && step["cached"] == false
                && step["seconds"].is_number()),
            "{builder}: {json}"
        );
        assert_eq!(json["agent.context"]["files"], 2, "{json}");
        if builder == "buildkit" {
            // Built again unchanged: BuildKit's session sends nothing, and the file says so.
            agent.run().expect_code(0);
            let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
            assert_eq!(again["agent.context"]["sent_bytes"], 0, "{again}");
            assert_eq!(again["containerimage.digest"], json["containerimage.digest"], "{again}");
        }
        crate::world::remove_images_after_the_run(&[&format!("{image}:v1"), &format!("{image}:latest")]);
    }
}

#[test]
fn the_metadata_file_without_a_push_has_no_digest() {
    let world = World::shared();
    let agent = Agent::new().env("DOCKER_HOST", world.docker_tcp_url());
    std::fs::write(agent.work.path().join("Dockerfile"), format!("FROM scratch\nLABEL it={}\n", token("nopush")))
        .unwrap();
    let missing =
        Agent::new().args(["run", "--dry", "--image", "app", "--metadata-file", "no-such-dir/metadata.json"]).run();
    missing.expect_code(3);
    assert!(missing.stderr.contains("--metadata-file") && missing.stderr.contains("no-such-dir"), "{}", missing.stderr);

    let metadata = agent.work.path().join("out/metadata.json");
    std::fs::create_dir_all(metadata.parent().unwrap()).unwrap();
    let agent =
        agent.args(["run", "--no-push", "--image", "agent-it/metadata", "--metadata-file", metadata.to_str().unwrap()]);
    let outcome = agent.run();
    outcome.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
    assert!(json.get("containerimage.digest").is_none(), "{json}");
    assert!(json["containerimage.config.digest"].as_str().is_some_and(|id| id.starts_with("sha256:")), "{json}");
    assert_eq!(json["image.name"], "agent-it/metadata:latest", "{json}");
}

crate::world::on_every_engine! {
    /// Issue 26: text from the host reaches the log escaped. A step whose Dockerfile line holds raw
    /// ESC and BEL bytes (a terminal title, a screen clear) and whose output forges a log line:
    /// every control character but tab is escaped in the step's name, its output, the daemon's
    /// error and the final report, with either builder, in the text and the JSON log; no line of
    /// the log starts with the forged text.
    fn text_from_the_host_reaches_the_log_escaped(engine) {
        let world = World::shared();
        let nonce = token("hostile");
        for builder in ["buildkit", "classic"] {
            for format in ["text", "json"] {
                let agent = Agent::new()
                    .env("DOCKER_HOST", &engine.docker_host)
                    .env("JETS_SSH_KEY", crate::world::read(&world.key_ed25519))
                    .env("JETS_SSH_KNOWN", crate::world::read(&world.known_hosts_hashed));
                let app = agent.work.path().join("app");
                std::fs::create_dir_all(&app).unwrap();
                std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
                std::fs::write(
                    app.join("Dockerfile"),
                    format!(
                        "FROM scratch\nCOPY busybox /bin/busybox\n\
                         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin\"]\n\
                         RUN echo '\x1b]0;title\x07\x1b[2J hidden {nonce}'; printf '\\n[ 9.99s]  INFO done: forged\\n'; exit 3\n"
                    ),
                )
                .unwrap();
                let outcome = agent
                    .args(["run", "--image", "agent-it/hostile-text", "--no-push", "--builder", builder])
                    .args(["--log-format", format, "--context", app.to_str().unwrap()])
                    .run();
                outcome.expect_code(50);
                let output = outcome.all_output();
                assert!(!output.contains('\x1b') && !output.contains('\x07'), "{builder}/{format}: {output:?}");
                assert!(output.contains("\\x1b"), "{builder}/{format}: the escape is shown: {output}");
                assert!(output.contains(&nonce), "{builder}/{format}: {output}");
                assert!(!outcome.stderr.lines().any(|line| line.starts_with("[ 9.99s]")), "{builder}/{format}: {output}");
                if format == "json" {
                    for line in outcome.stderr.lines().filter(|line| line.starts_with('{')) {
                        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                    }
                }
            }
        }
    }
}
