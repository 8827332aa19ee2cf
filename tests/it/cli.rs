//! `--help`, `--version` and command-line usage errors.

use crate::agent::Agent;

#[test]
fn version_prints_name_and_version() {
    let outcome = Agent::new().args(["--version"]).run();
    outcome.expect_code(0);
    assert_eq!(outcome.stdout, format!("agent {}\n", env!("CARGO_PKG_VERSION")));
    let outcome = Agent::new().args(["run", "--version"]).run();
    outcome.expect_code(0);
}

#[test]
fn help_names_the_run_command() {
    let outcome = Agent::new().args(["--help"]).run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("run "), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("remote Docker host"), "{}", outcome.stdout);
}

#[test]
fn run_help_documents_every_flag_variable_and_exit_code() {
    let outcome = Agent::new().args(["run", "--help"]).run();
    outcome.expect_code(0);
    for word in [
        "--dry",
        "--host",
        "--image",
        "--tag",
        "--context",
        "--file",
        "--build-arg",
        "--target",
        "--label",
        "--platform",
        "--pull",
        "--no-cache",
        "--no-push",
        "--image-definitions",
        "--registry",
        "--registry-user",
        "--ecr-registry",
        "--region",
        "--ssh-key-file",
        "--known-hosts-file",
        "--connect-timeout",
        "DOCKER_HOST",
        "REPOSITORY_URI",
        "DOCKER_REGISTRY",
        "DOCKER_USER",
        "ECR_REGISTRY",
        "JETS_SSH_KEY",
        "JETS_SSH_KNOWN",
        "DOCKER_PASS",
        "IMAGE_TAG",
        "CODEBUILD_RESOLVED_SOURCE_VERSION",
        "AWS_REGION",
        "Exit codes",
        "config",
    ] {
        assert!(outcome.stdout.contains(word), "`agent run --help` does not mention {word}:\n{}", outcome.stdout);
    }
}

#[test]
fn help_never_shows_environment_values() {
    let outcome = Agent::new()
        .env("DOCKER_HOST", "ssh://secret-host.example")
        .env("DOCKER_USER", "secret-user")
        .args(["run", "--help"])
        .run();
    outcome.expect_code(0);
    assert!(!outcome.stdout.contains("secret-host") && !outcome.stdout.contains("secret-user"), "{}", outcome.stdout);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let outcome = Agent::new().args(["run", "--no-such-flag"]).run();
    outcome.expect_code(2);
    assert!(outcome.stderr.contains("--no-such-flag"), "{}", outcome.stderr);
}

#[test]
fn missing_subcommand_is_a_usage_error() {
    Agent::new().run().expect_code(2);
}

#[test]
fn readme_lists_the_same_exit_codes_as_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let help = Agent::new().args(["run", "--help"]).run().stdout;
    let codes = help.split("Exit codes:").nth(1).expect("exit codes in help");
    for line in codes.lines().filter(|line| !line.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (code, name) = (words.next().unwrap(), words.next().unwrap());
        assert!(
            readme.contains(&format!("| {code} | `{name}` |")),
            "README's exit code table lacks | {code} | `{name}` |"
        );
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let world = crate::world::World::shared();
    let outcome = Agent::new()
        .env("DOCKER_HOST", world.docker_tcp_url())
        .args(["--log-format", "json", "run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(0);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(value["message"].is_string() && value["level"].is_string(), "{line}");
    }
}

#[test]
fn quiet_runs_print_only_warnings_and_errors() {
    let world = crate::world::World::shared();
    let outcome =
        Agent::new().env("DOCKER_HOST", world.docker_tcp_url()).args(["run", "-q", "--image", "app", "--check"]).run();
    outcome.expect_code(0);
    assert_eq!(outcome.stderr, "", "a quiet successful run prints nothing");
}
