//! Nothing changed, nothing new in the registry: a BuildKit build that is the same image as the
//! registry's (BuildKit's inline cache record aside) keeps the registry's digest, and a changed
//! one is pushed. Real runs over SSH against the ECR stand-in; the registry asked through its API,
//! and its storage counted for the manifests it holds.

use std::path::Path;

use crate::agent::Outcome;
use crate::build::{example_app, full_run, unique};
use crate::platform::{Api, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::world::{World, on_every_engine};

/// One run of the example app at `app` into the ECR stand-in's `repository`, with `extra` args.
fn run(world: &World, repository: &str, app: &Path, extra: &[&str]) -> Outcome {
    run_on(world, &world.ssh_url(), repository, app, extra)
}

/// As [`run`], on the daemon at `docker_host`.
fn run_on(world: &World, docker_host: &str, repository: &str, app: &Path, extra: &[&str]) -> Outcome {
    let agent = full_run(world, repository)
        .env("DOCKER_HOST", docker_host)
        .args(["run", "--context", app.to_str().unwrap()])
        .args(extra);
    let outcome = agent.run();
    outcome.expect_code(0);
    outcome
}

/// The digest a tag points at, through the registry API (`Docker-Content-Digest`).
fn digest_of(world: &World, repository: &str, tag: &str) -> String {
    manifest_of(world, repository, tag).0
}

/// The digest and the manifest a tag points at, through the registry API.
fn manifest_of(world: &World, repository: &str, tag: &str) -> (String, serde_json::Value) {
    let (manifest, digest) = world.manifest(Api::Ecr, repository, tag, &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"));
    (digest, manifest)
}

/// How many manifests the registry holds for the repository (tagged or not): the revisions in its
/// storage, as distribution keeps them.
fn manifest_count(world: &World, repository: &str) -> usize {
    let revisions = world
        .state_dir
        .join("ecr/data/docker/registry/v2/repositories")
        .join(repository)
        .join("_manifests/revisions/sha256");
    std::fs::read_dir(&revisions).map(|entries| entries.count()).unwrap_or(0)
}

/// A copy of the example app with a source file of its own, so that its last layers are this
/// test's.
fn own_app(dir: &Path, repository: &str) -> std::path::PathBuf {
    let app = example_app(dir);
    std::fs::write(app.join("src/id.txt"), repository).unwrap();
    app
}

on_every_engine! {
    fn an_unchanged_app_keeps_its_digest_and_the_registry_gets_no_new_manifest(engine) {
        // No prune of this engine's cache between the runs.
        let _cache = engine.cache_lock(false);
        let world = World::shared();
        let repository = unique("stable");
        let dir = tempfile::tempdir().unwrap();
        let app = own_app(dir.path(), &repository);
        let first = run_on(world, &engine.docker_host, &repository, &app, &["-t", "latest"]);
        assert!(first.stderr.contains("pushed sha256:"), "{}", first.stderr);
        let (digest, manifest) = manifest_of(world, &repository, "latest");
        assert_eq!(manifest_count(world, &repository), 1);

        let metadata = dir.path().join("metadata.json");
        let metadata_arg = metadata.to_str().unwrap();
        let second = run_on(world, &engine.docker_host, &repository, &app, &["-t", "latest", "--metadata-file", metadata_arg]);
        assert!(second.stderr.contains("6 steps, 6 CACHED"), "{}", second.stderr);
        assert!(second.stderr.contains("unchanged since "), "{}", second.stderr);
        assert!(second.stderr.contains(&format!(": kept {digest}")), "{}", second.stderr);
        assert!(!second.stderr.contains("pushed sha256:"), "{}", second.stderr);
        assert_eq!(digest_of(world, &repository, "latest"), digest);
        assert_eq!(manifest_count(world, &repository), 1, "the second run left a manifest in the registry");
        let metadata: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
        assert_eq!(metadata["containerimage.digest"], digest.as_str());
        // The config digest is the registry's image's (the first run's build), not this build's.
        assert_eq!(metadata["containerimage.config.digest"], manifest["config"]["digest"]);
    }
}

#[test]
fn a_changed_label_alone_is_pushed_with_a_new_digest() {
    let world = World::shared();
    let repository = unique("stable-label");
    let dir = tempfile::tempdir().unwrap();
    let app = own_app(dir.path(), &repository);
    run(world, &repository, &app, &["-t", "latest"]);
    let before = digest_of(world, &repository, "latest");
    let labelled = run(world, &repository, &app, &["-t", "latest", "--label", "stable.test=changed"]);
    // Every step is still CACHED: only the config differs.
    assert!(labelled.stderr.contains("6 steps, 6 CACHED"), "{}", labelled.stderr);
    assert!(labelled.stderr.contains("changed ("), "{}", labelled.stderr);
    assert!(labelled.stderr.contains("pushed sha256:"), "{}", labelled.stderr);
    assert!(!labelled.stderr.contains("unchanged since"), "{}", labelled.stderr);
    assert_ne!(digest_of(world, &repository, "latest"), before);
    assert_eq!(manifest_count(world, &repository), 2);
}

#[test]
fn a_new_tag_on_an_unchanged_image_gets_the_same_digest() {
    let world = World::shared();
    let repository = unique("stable-tag");
    let dir = tempfile::tempdir().unwrap();
    let app = own_app(dir.path(), &repository);
    run(world, &repository, &app, &["-t", "latest", "-t", "aaaaaaa"]);
    let digest = digest_of(world, &repository, "latest");
    let retagged = run(world, &repository, &app, &["-t", "latest", "-t", "bbbbbbb"]);
    assert!(retagged.stderr.contains(&format!("kept {digest} (tagged in the registry)")), "{}", retagged.stderr);
    assert_eq!(digest_of(world, &repository, "bbbbbbb"), digest);
    assert_eq!(digest_of(world, &repository, "aaaaaaa"), digest);
    let mut tags = world.ecr_tags(&repository);
    tags.sort();
    assert_eq!(tags, ["aaaaaaa", "bbbbbbb", "latest"]);
    assert_eq!(manifest_count(world, &repository), 1);
}

#[test]
fn always_push_pushes_every_tag_of_an_unchanged_image() {
    let world = World::shared();
    let repository = unique("stable-always");
    let dir = tempfile::tempdir().unwrap();
    let app = own_app(dir.path(), &repository);
    run(world, &repository, &app, &["-t", "latest"]);
    let pushed = run(world, &repository, &app, &["-t", "latest", "--always-push"]);
    assert!(!pushed.stderr.contains("compare with the registry"), "{}", pushed.stderr);
    assert!(pushed.stderr.contains("pushed sha256:"), "{}", pushed.stderr);
    // AGENT_ALWAYS_PUSH says the same.
    let agent = full_run(world, &repository).env("AGENT_ALWAYS_PUSH", "1").args([
        "run",
        "--context",
        app.to_str().unwrap(),
        "-t",
        "latest",
    ]);
    let by_env = agent.run();
    by_env.expect_code(0);
    assert!(by_env.stderr.contains("pushed sha256:"), "{}", by_env.stderr);
    assert!(!by_env.stderr.contains("unchanged since"), "{}", by_env.stderr);
}

#[test]
fn the_classic_builder_pushes_as_before() {
    let world = World::shared();
    let repository = unique("stable-classic");
    let dir = tempfile::tempdir().unwrap();
    let app = own_app(dir.path(), &repository);
    run(world, &repository, &app, &["-t", "latest", "--builder", "classic"]);
    let again = run(world, &repository, &app, &["-t", "latest", "--builder", "classic"]);
    assert!(again.stderr.contains("classic builder: every tag is pushed"), "{}", again.stderr);
    assert!(again.stderr.contains("pushed sha256:"), "{}", again.stderr);
}
