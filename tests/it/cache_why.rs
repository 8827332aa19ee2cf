//! Issue 24: why the cache missed, against the real daemons — the context line names the files
//! that crossed the wire, the cache line names the first step that was not CACHED and the reason
//! the agent can prove (a changed file and its COPY step, a build argument), "every step CACHED"
//! when nothing changed, nothing sent or rebuilt for a file in `.dockerignore`; the closing line
//! says where the time went; the metadata file holds `agent.cache` and `agent.timings`.

use std::path::Path;

use crate::agent::{Agent, Outcome};
use crate::build::{example_app, full_run, unique};
use crate::world::{Engine, World, on_every_engine, read};

/// The info line whose message starts with `prefix` (after the time, the level and, with `-v`, the
/// target), e.g. `cache: `; the rest of its message.
fn line<'a>(outcome: &'a Outcome, prefix: &str) -> &'a str {
    outcome
        .stderr
        .lines()
        .filter_map(|line| line.split_once(" INFO ").map(|(_, message)| message))
        .map(|message| match message.split_once(": ") {
            Some((target, rest)) if target.starts_with("agent::") => rest,
            _ => message,
        })
        .find_map(|message| message.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line:\n{}", outcome.stderr))
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).expect("the metadata file is JSON")
}

on_every_engine! {
    /// The example app built three times with BuildKit: cold, unchanged (every step CACHED, nothing
    /// sent), then one new source file: the context line names it, the cache line names it with
    /// its `COPY src/` step and says the step after it once; the closing line has the phases and
    /// the metadata file the same figures.
    fn one_changed_source_file_is_named_with_its_copy_step(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let repository = unique("cachewhy-file");
        let first = full_run(world, &repository);
        let app = example_app(first.work.path());
        std::fs::write(app.join("src/id.txt"), &repository).unwrap();
        let metadata_file = first.work.path().join("metadata.json");
        let run = || {
            let outcome = full_run(world, &repository)
                .env("DOCKER_HOST", &engine.docker_host)
                .args(["run", "--context", app.to_str().unwrap(), "--metadata-file", metadata_file.to_str().unwrap()])
                .run();
            outcome.expect_code(0);
            buildkit_settles();
            outcome
        };
        run();

        let unchanged = run();
        assert_eq!(line(&unchanged, "cache: "), "every step CACHED (6 of 6)", "{}", unchanged.stderr);
        let sent = line(&unchanged, "context: ");
        assert_nothing_the_build_reads_was_sent(engine, sent);
        let meta = metadata(&metadata_file);
        assert_eq!(meta["agent.cache"], serde_json::json!({"steps": 6, "cached": 6, "first_rebuilt": null}));

        std::fs::write(app.join("src/nonce.txt"), format!("{repository} again")).unwrap();
        let changed = run();
        let sent = line(&changed, "context: ");
        assert!(sent.contains("(src/nonce.txt)") || sent.contains("(src/nonce.txt; .dockerignore for the frontend)"), "{sent}");
        assert_eq!(
            line(&changed, "cache: "),
            "4 of 6 steps CACHED; [5/6] COPY src/ /app/src/ rebuilt: src/nonce.txt changed; 1 more step rebuilt \
             after step 5",
            "{}",
            changed.stderr
        );
        let done = line(&changed, "done: ");
        for phase in ["connect ", "logins ", "context ", "build ", "(4 of 6 CACHED)", "compare ", "push ", "files "] {
            assert!(done.contains(phase), "{phase} is not in `{done}`");
        }
        let meta = metadata(&metadata_file);
        let cache = &meta["agent.cache"];
        assert_eq!((cache["steps"].as_u64(), cache["cached"].as_u64()), (Some(6), Some(4)), "{meta}");
        assert_eq!(cache["first_rebuilt"]["step"], "[5/6] COPY src/ /app/src/", "{meta}");
        assert_eq!(cache["first_rebuilt"]["reason"], "files-changed", "{meta}");
        assert_eq!(cache["first_rebuilt"]["files"], serde_json::json!(["src/nonce.txt"]), "{meta}");
        assert_eq!(cache["first_rebuilt"]["rebuilt_after"], 1, "{meta}");
        let timings = &meta["agent.timings"];
        for phase in ["connect", "logins", "context", "build", "compare", "push", "files"] {
            assert!(timings["seconds"][phase].as_f64().is_some(), "no {phase} in {meta}");
        }
        assert_eq!((timings["steps"].as_u64(), timings["cached"].as_u64()), (Some(6), Some(4)), "{meta}");
        assert!(meta["agent.context"]["sent_files"].as_u64().is_some(), "{meta}");
    }
}

/// A pause after a session build before the next one with the same context: BuildKit releases
/// the context's snapshot a moment after the build's end, and a build that starts before that makes
/// a new one and is sent every file (Docker 28's log, a CI run: "not reusing ref … for local: … is
/// locked", 0.4 s after the first build). Back-to-back CodeBuild runs are never that close.
fn buildkit_settles() {
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

/// A warm run's context line: nothing the build reads was sent. Docker 26 and 28 have their
/// frontend read `.dockerignore` again on every build (20.10 does not): at most that one file.
fn assert_nothing_the_build_reads_was_sent(engine: &Engine, sent: &str) {
    if engine.name == "20.10" {
        assert!(sent.starts_with("sent 0 of "), "{sent}");
    } else {
        assert!(
            sent.starts_with("sent 0 of ")
                || sent.contains("sent 1 of ") && sent.contains("(.dockerignore for the frontend)"),
            "{sent}"
        );
    }
}

on_every_engine! {
    /// A build argument whose value differs from the one the registry's image was built with is
    /// named; one taken from the environment is a secret: named, its value never printed.
    fn a_changed_build_argument_is_named_and_a_secret_ones_value_never_shown(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let repository = unique("cachewhy-arg");
        let first = full_run(world, &repository);
        let app = first.work.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::copy("/bin/busybox", app.join("busybox")).unwrap();
        std::fs::write(
            app.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nARG VERSION\nARG TOKEN\n\
                 RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo $VERSION $TOKEN {repository} > /v\"]\n"
            ),
        )
        .unwrap();
        let metadata_file = first.work.path().join("metadata.json");
        // At the most verbose level: the secret's value must not show there either.
        let run = |version: &str, token: &str| {
            let outcome = full_run(world, &repository)
                .env("DOCKER_HOST", &engine.docker_host)
                .env("TOKEN", token)
                .env("RUST_LOG", "trace")
                .args(["-vv"])
                .args(["run", "--context", app.to_str().unwrap(), "--metadata-file", metadata_file.to_str().unwrap()])
                .args(["--build-arg", &format!("VERSION={version}"), "--build-arg", "TOKEN"])
                .run();
            outcome.expect_code(0);
            buildkit_settles();
            outcome
        };
        let token = |n: u32| format!("cachewhy-token-{}-{n}", std::process::id());
        run("1", &token(1));
        let version_changed = run("2", &token(1));
        assert_eq!(
            line(&version_changed, "cache: ").split_once(" rebuilt: ").map(|(_, reason)| reason),
            Some("the build argument VERSION differs from the registry's image"),
            "{}",
            version_changed.stderr
        );
        let token_changed = run("2", &token(2));
        assert!(
            line(&token_changed, "cache: ").ends_with(" rebuilt: the build argument TOKEN differs from the registry's image"),
            "{}",
            token_changed.stderr
        );
        let meta = read(&metadata_file);
        let first_rebuilt = &metadata(&metadata_file)["agent.cache"]["first_rebuilt"];
        assert_eq!(first_rebuilt["reason"], "build-args", "{meta}");
        assert_eq!(first_rebuilt["build_args"], serde_json::json!(["TOKEN"]), "{meta}");
        for outcome in [&version_changed, &token_changed] {
            let base64 = |text: &str| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(text)
            };
            for secret in [token(1), token(2), base64(&token(1)), base64(&token(2))] {
                assert!(!outcome.all_output().contains(&secret), "the secret build argument's value was shown:\n{}", outcome.stderr);
            }
        }
        assert!(!meta.contains(&token(2)), "the secret build argument's value is in the metadata:\n{meta}");
    }
}

on_every_engine! {
    /// A file that `.dockerignore` leaves out changes: nothing the build reads is sent, every step
    /// is CACHED.
    fn a_changed_file_in_dockerignore_sends_and_rebuilds_nothing(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let repository = unique("cachewhy-ignored");
        let first = full_run(world, &repository);
        let app = example_app(first.work.path());
        std::fs::write(app.join("src/id.txt"), &repository).unwrap();
        std::fs::write(app.join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\nCOPY . /ctx/\n").unwrap();
        std::fs::create_dir_all(app.join("tmp")).unwrap();
        let run = || {
            let outcome = full_run(world, &repository)
                .env("DOCKER_HOST", &engine.docker_host)
                .args(["run", "--context", app.to_str().unwrap(), "--no-push"])
                .run();
            outcome.expect_code(0);
            buildkit_settles();
            outcome
        };
        std::fs::write(app.join("tmp/cache.bin"), "first").unwrap();
        run();
        std::fs::write(app.join("tmp/cache.bin"), "second, and longer").unwrap();
        std::fs::write(app.join("NOTES.md"), "ignored too").unwrap();
        let outcome = run();
        let sent = line(&outcome, "context: ");
        assert!(!sent.contains("cache.bin") && !sent.contains("NOTES.md"), "{sent}");
        assert_nothing_the_build_reads_was_sent(engine, sent);
        assert_eq!(line(&outcome, "cache: "), "every step CACHED (2 of 2)", "{}", outcome.stderr);
        crate::world::remove_images_after_the_run(&[&format!("{}/{repository}:latest", world.ecr_registry)]);
    }
}

/// The classic builder is sent the whole context: it cannot say which file changed, and the line
/// says "not known" with why, never a guess.
#[test]
fn the_classic_builder_says_not_known_for_a_changed_file() {
    let world = World::shared();
    let repository = unique("cachewhy-classic");
    let first: Agent = full_run(world, &repository);
    let app = example_app(first.work.path());
    std::fs::write(app.join("src/id.txt"), &repository).unwrap();
    let run = || {
        let outcome = full_run(world, &repository)
            .args(["run", "--context", app.to_str().unwrap(), "--builder", "classic", "--no-push"])
            .run();
        outcome.expect_code(0);
        outcome
    };
    run();
    std::fs::write(app.join("src/nonce.txt"), "changed").unwrap();
    let outcome = run();
    // FROM is a step of the classic builder's count (never CACHED there), not of the cache line's.
    let cache = line(&outcome, "cache: ");
    assert!(
        cache.starts_with("4 of 7 steps CACHED; [6/8] COPY src/ /app/src/ rebuilt: not known (the classic"),
        "{cache}"
    );
    assert!(cache.ends_with("does not say which files changed); 2 more steps rebuilt after step 6"), "{cache}");
    assert!(!cache.contains("nonce"), "{cache}");
    crate::world::remove_images_after_the_run(&[&format!("{}/{repository}:latest", world.ecr_registry)]);
}

on_every_engine! {
    /// The base image moves under its tag (pushed again with other content): the child's first
    /// step after `FROM` is rebuilt, and the line names the base, whose layers are not the ones the
    /// registry's image was built on; built again, every step is CACHED. The base is built and
    /// pushed by the agent on the world's 20.10 daemon, into the Docker Hub stand-in.
    fn a_moved_base_image_is_named(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let hub_login = |agent: Agent| {
            agent
                .env("DOCKER_REGISTRY", &world.hub_registry)
                .env("DOCKER_USER", &world.hub_user)
                .env("DOCKER_PASS", world.hub_pass())
        };
        let base = format!("{}/{}", world.hub_registry, unique("cachewhy-base"));
        let holder = Agent::new();
        let base_dir = holder.work.path().join("base");
        std::fs::create_dir_all(&base_dir).unwrap();
        std::fs::copy("/bin/busybox", base_dir.join("busybox")).unwrap();
        std::fs::write(base_dir.join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\nCOPY version /version\n")
            .unwrap();
        let push_base = |version: &str| {
            std::fs::write(base_dir.join("version"), format!("{base} {version}")).unwrap();
            let outcome = hub_login(crate::build::over_ssh(world))
                .args(["run", "--context", base_dir.to_str().unwrap(), "--image", &base, "--tag", "1"])
                .run();
            outcome.expect_code(0);
        };
        push_base("one");

        let repository = unique("cachewhy-child");
        let app = holder.work.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), &repository).unwrap();
        std::fs::write(app.join("Dockerfile"), format!("FROM {base}:1\nCOPY a /a\n")).unwrap();
        let child = || {
            let outcome = hub_login(full_run(world, &repository))
                .env("DOCKER_HOST", &engine.docker_host)
                .args(["run", "--context", app.to_str().unwrap()])
                .run();
            outcome.expect_code(0);
            buildkit_settles();
            outcome
        };
        child();
        assert_eq!(line(&child(), "cache: "), "every step CACHED (1 of 1)");
        push_base("two");
        let moved = child();
        let cache = line(&moved, "cache: ");
        assert!(
            cache.starts_with(&format!("0 of 1 step CACHED; [2/2] COPY a /a rebuilt: the base image {base}:1 (sha256:")),
            "{}",
            moved.stderr
        );
        assert!(cache.ends_with(") is not the one the registry's image was built on"), "{cache}");
        assert_eq!(line(&child(), "cache: "), "every step CACHED (1 of 1)");
        crate::world::remove_images_after_the_run(&[&format!("{base}:1")]);
    }
}

/// With `--log-format json` the closing line carries its figures as fields, and the cache line its
/// counts and reason.
#[test]
fn json_logs_carry_the_closing_lines_figures_and_the_cache_lines_counts() {
    let world = World::shared();
    let repository = unique("cachewhy-json");
    let first = full_run(world, &repository);
    let app = example_app(first.work.path());
    std::fs::write(app.join("src/id.txt"), &repository).unwrap();
    let run = || {
        let outcome = full_run(world, &repository)
            .args(["run", "--context", app.to_str().unwrap(), "--no-push", "--log-format", "json"])
            .run();
        outcome.expect_code(0);
        buildkit_settles();
        outcome
    };
    run();
    let outcome = run();
    let events: Vec<serde_json::Value> =
        outcome.stderr.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let message =
        |event: &serde_json::Value, prefix: &str| event["message"].as_str().is_some_and(|m| m.starts_with(prefix));
    let done = events.iter().find(|event| message(event, "done: ")).unwrap_or_else(|| panic!("{}", outcome.stderr));
    assert!(done["message"].as_str().unwrap().contains(" — connect "), "{done}");
    assert!(done["seconds.total"].as_f64().unwrap() > 0.0, "{done}");
    assert!(done["seconds.build"].as_f64().unwrap() > 0.0, "{done}");
    assert_eq!(done["seconds.push"].as_f64(), Some(0.0), "{done}");
    assert_eq!((done["cache.steps"].as_u64(), done["cache.cached"].as_u64()), (Some(6), Some(6)), "{done}");
    let cache = events.iter().find(|event| message(event, "cache: ")).unwrap_or_else(|| panic!("{}", outcome.stderr));
    assert_eq!(cache["cache.reason"], "every-step-cached", "{cache}");
    let context =
        events.iter().find(|event| message(event, "context: ")).unwrap_or_else(|| panic!("{}", outcome.stderr));
    assert_eq!(context["context.sent_bytes"].as_u64(), Some(0), "{context}");
    assert!(context["context.files"].as_u64().unwrap() > 0, "{context}");
    assert_eq!((cache["cache.steps"].as_u64(), cache["cache.cached"].as_u64()), (Some(6), Some(6)), "{cache}");
    crate::world::remove_images_after_the_run(&[&format!("{}/{repository}:latest", world.ecr_registry)]);
}
