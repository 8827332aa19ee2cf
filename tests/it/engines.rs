//! Issue 22: what holds on the newer engines beyond the tests that run on every engine
//! (`on_every_engine!`): Docker 28 set up as Docker 29 (minimum API 1.44) gets no request below
//! that version from the agent.

use crate::agent::Agent;
use crate::build::{example_app, full_run, unique};
use crate::world::World;

/// The API versions in the paths of the requests a dockerd with `--debug` logged (Docker 28:
/// `msg="handling POST request" … request-url=/v1.51/session`), e.g. `(1, 51)`; unversioned paths
/// are not listed.
fn requested_api_versions(log: &str) -> Vec<(u32, u32)> {
    log.lines()
        .filter(|line| line.contains("msg=\"handling "))
        .filter_map(|line| line.split("request-url=").nth(1))
        .filter_map(|url| url.trim_start_matches('"').strip_prefix("/v"))
        .filter_map(|rest| {
            let version = rest.split('/').next()?;
            let (major, minor) = version.split_once('.')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// Every kind of request the agent makes on a host: the check, a BuildKit build with its session
/// (over SSH), the comparison with the registry, the push, the disk line and the cache budget's
/// prune, then a classic build; Docker 28 with `DOCKER_MIN_API_VERSION=1.44` (as Docker 29)
/// refuses nothing, and its log shows no request below 1.44.
#[test]
fn docker_29s_minimum_api_is_never_undercut() {
    let world = World::shared();
    let engine = world.engine("28");
    let _cache = engine.cache_lock(true);
    let log_path = world.var("TW_ENGINE_28_LOG").expect("TW_ENGINE_28_LOG").to_string();
    let log_before = std::fs::metadata(&log_path).map(|meta| meta.len()).unwrap_or(0) as usize;
    let repository = unique("min-api");
    for builder in ["auto", "classic"] {
        let agent = full_run(world, &repository).env("DOCKER_HOST", &engine.docker_host);
        let app = example_app(agent.work.path());
        std::fs::write(app.join("src/id.txt"), format!("{repository} {builder}")).unwrap();
        let outcome =
            agent.args(["run", "--context", app.to_str().unwrap(), "--builder", builder, "--keep-storage", "1"]).run();
        outcome.expect_code(0);
        assert!(outcome.stderr.contains(&format!("Docker {}", engine.version)), "{}", outcome.stderr);
    }
    let log = std::fs::read(&log_path).expect("engine 28's log");
    let ours = String::from_utf8_lossy(&log[log_before.min(log.len())..]).into_owned();
    let versions = requested_api_versions(&ours);
    assert!(!versions.is_empty(), "dockerd 28 logged no versioned request (is it run with --debug?)");
    let below: Vec<_> = versions.iter().filter(|version| **version < (1, 44)).collect();
    assert!(below.is_empty(), "requests below API 1.44: {below:?}");
    assert!(!ours.contains("is too old"), "dockerd 28 refused a request as too old");
}

/// The agent's check against a daemon that refuses an old client: `agent run --check` passes.
#[test]
fn the_check_passes_on_a_daemon_with_minimum_api_1_44() {
    let world = World::shared();
    let engine = world.engine("28");
    let outcome = Agent::new()
        .env("DOCKER_HOST", &engine.docker_host)
        .env("JETS_SSH_KEY", crate::world::read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", crate::world::read(&world.known_hosts_hashed))
        .args(["run", "--check", "--image", "agent-it/check", "--no-push"])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains(&format!("Docker {}", engine.version)), "{}", outcome.stderr);
}
