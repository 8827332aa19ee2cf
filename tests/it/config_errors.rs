//! Malformed input: every case exits with the configuration class, names the variable or flag,
//! says what is wrong with a hint, and never panics.

use crate::agent::Agent;

const CONFIG: i32 = 3;

/// Runs `agent run --dry --image app EXTRA...` and checks that the configuration is refused.
fn refused(agent: Agent, extra: &[&str]) -> String {
    let outcome = agent.args(["run", "--dry", "--image", "app"]).args(extra).run();
    outcome.expect_code(CONFIG);
    assert!(outcome.stdout.is_empty(), "a refused config prints no plan:\n{}", outcome.stdout);
    assert!(outcome.stderr.starts_with("error: invalid configuration"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("hint:"), "{}", outcome.stderr);
    outcome.stderr
}

#[test]
fn malformed_docker_hosts_are_refused() {
    for (value, reason) in [
        ("ftp://x", "unknown scheme \"ftp\""),
        ("ssh://", "names no host"),
        ("tcp://host:notaport", "is not a number"),
        ("ssh://host:99999", "out of range"),
        ("ssh://user:password@host", "may not hold a password"),
        ("docker-host:2375", "has no scheme"),
        ("SSM:", "names no parameter"),
    ] {
        let stderr = refused(Agent::new().env("DOCKER_HOST", value), &[]);
        assert!(stderr.contains("DOCKER_HOST: "), "{value}: {stderr}");
        assert!(stderr.contains(reason), "{value}: {stderr}");
    }
}

#[test]
fn the_host_flag_is_named_when_it_holds_the_bad_value() {
    let stderr = refused(Agent::new(), &["--host", "ftp://x"]);
    assert!(stderr.contains("--host: unknown scheme"), "{stderr}");
}

#[test]
fn a_password_in_docker_host_is_not_echoed() {
    let stderr = refused(Agent::new().env("DOCKER_HOST", "ssh://user:hunter2secret@host"), &[]);
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
}

#[test]
fn bad_build_args_are_refused() {
    let stderr = refused(Agent::new(), &["--build-arg", "=value"]);
    assert!(stderr.contains("--build-arg: \"=value\" has no valid name"), "{stderr}");
}

#[test]
fn bad_image_references_are_refused() {
    for (image, reason) in [
        ("Upper/Case", "is not valid"),
        ("app:tag", "holds a tag"),
        ("registry.example.com//app", "empty path component"),
    ] {
        let outcome = Agent::new().args(["run", "--dry", "--image", image]).run();
        outcome.expect_code(CONFIG);
        assert!(outcome.stderr.contains("--image: "), "{image}: {}", outcome.stderr);
        assert!(outcome.stderr.contains(reason), "{image}: {}", outcome.stderr);
    }
    let outcome = Agent::new().env("REPOSITORY_URI", "not a repo").args(["run", "--dry"]).run();
    outcome.expect_code(CONFIG);
    assert!(outcome.stderr.contains("REPOSITORY_URI: "), "{}", outcome.stderr);
}

#[test]
fn a_missing_image_is_refused_with_a_hint() {
    let outcome = Agent::new().args(["run", "--dry"]).run();
    outcome.expect_code(CONFIG);
    assert!(outcome.stderr.contains("no image repository is given"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("REPOSITORY_URI"), "{}", outcome.stderr);
}

#[test]
fn every_problem_is_reported_together() {
    let stderr = refused(
        Agent::new().env("DOCKER_HOST", "ftp://x").env("IMAGE_TAG", "bad tag").env("DOCKER_PASS", "pw-without-user"),
        &["--build-arg", "=x", "--context", "missing-dir"],
    );
    for subject in ["DOCKER_HOST: ", "IMAGE_TAG: ", "DOCKER_USER: ", "--build-arg: ", "--context: "] {
        assert!(stderr.contains(subject), "{subject} missing in:\n{stderr}");
    }
    assert!(stderr.contains("(5 problems)"), "{stderr}");
    assert!(!stderr.contains("pw-without-user"), "{stderr}");
}

#[test]
fn a_bad_ssm_reference_names_its_variable() {
    let stderr = refused(Agent::new().env("DOCKER_PASS", "SSM:/bad path").env("DOCKER_USER", "u"), &[]);
    assert!(stderr.contains("DOCKER_PASS: the SSM: parameter name"), "{stderr}");
}

#[test]
fn a_zero_connect_timeout_is_refused() {
    let stderr = refused(Agent::new(), &["--connect-timeout", "0"]);
    assert!(stderr.contains("--connect-timeout"), "{stderr}");
}
