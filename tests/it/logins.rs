//! Issue 5: SSM references, redaction, and the registry logins (Docker Hub and ECR stand-ins)
//! against the test world's moto server, registries and daemon.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agent::{Agent, Outcome};
use crate::world::{World, read};

/// Stores an SSM parameter in moto (through boto3; the value goes on stdin, never on a command line).
pub(crate) fn put_parameter(world: &World, name: &str, value: &str, secure: bool) {
    let script = format!(
        "import sys, boto3\n\
         ssm = boto3.client('ssm', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
         ssm.put_parameter(Name='{name}', Value=sys.stdin.read(), Type='{}', Overwrite=True)\n",
        world.moto_url,
        if secure { "SecureString" } else { "String" }
    );
    let mut child = Command::new(&world.python).args(["-c", &script]).stdin(Stdio::piped()).spawn().expect("python");
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "put_parameter {name}");
}

/// A unique parameter prefix for one test.
fn prefix(test: &str) -> String {
    format!("/agent-tests/{test}/{}", std::process::id())
}

/// An agent with AWS pointed at moto.
pub(crate) fn with_aws(world: &World) -> Agent {
    Agent::new()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &world.moto_url)
        .env("AGENT_CONNECT_TIMEOUT", "10")
}

/// Everything the Jets-style setup uses, as SSM references; the Docker Hub stand-in for the login.
fn jets_over_ssm(world: &World, test: &str) -> (Agent, Vec<String>) {
    let prefix = prefix(test);
    let key = read(&world.key_ed25519);
    put_parameter(world, &format!("{prefix}/host"), &world.ssh_url(), false);
    put_parameter(world, &format!("{prefix}/key"), &key, true);
    put_parameter(world, &format!("{prefix}/known"), &read(&world.known_hosts_hashed), false);
    put_parameter(world, &format!("{prefix}/user"), &world.hub_user, false);
    put_parameter(world, &format!("{prefix}/pass"), &world.hub_pass(), true);
    let agent = with_aws(world)
        .env("DOCKER_HOST", format!("SSM:{prefix}/host"))
        .env("JETS_SSH_KEY", format!("SSM:{prefix}/key"))
        .env("JETS_SSH_KNOWN", format!("SSM:{prefix}/known"))
        .env("DOCKER_USER", format!("SSM:{prefix}/user"))
        .env("DOCKER_PASS", format!("SSM:{prefix}/pass"))
        .env("DOCKER_REGISTRY", &world.hub_registry);
    let mut secrets: Vec<String> = key.lines().filter(|line| !line.starts_with("-----")).map(str::to_string).collect();
    secrets.push(world.hub_pass());
    secrets.push("test-secret-access-key".to_string());
    (agent, secrets)
}

fn assert_no_secret(outcome: &Outcome, secrets: &[String]) {
    let output = outcome.all_output();
    for secret in secrets {
        assert!(!output.contains(secret.as_str()), "a secret appears in the output:\n{output}");
    }
}

#[test]
fn ssm_references_resolve_and_the_run_proceeds_without_showing_a_secret() {
    let world = World::shared();
    let (agent, secrets) = jets_over_ssm(world, "resolve");
    for verbosity in [None, Some("-v"), Some("-vv")] {
        let mut args = vec!["run", "--image", "app", "--check"];
        args.extend(verbosity);
        let outcome = agent.args_cloned(&args).run();
        outcome.expect_code(0);
        assert!(
            outcome.stderr.contains("resolve 5 SSM parameters: 5 values from region us-east-1"),
            "{}",
            outcome.stderr
        );
        assert!(outcome.stderr.contains("check daemon: Docker "), "{}", outcome.stderr);
        assert!(
            outcome.stderr.contains(&format!("log in to {}: logged in as {}", world.hub_registry, world.hub_user)),
            "{}",
            outcome.stderr
        );
        assert_no_secret(&outcome, &secrets);
    }
}

#[test]
fn a_missing_parameter_names_its_path_and_variable() {
    let world = World::shared();
    let outcome = with_aws(world)
        .env("DOCKER_PASS", "SSM:/agent-tests/no/such/parameter")
        .env("DOCKER_USER", "u")
        .args(["run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(10);
    assert!(outcome.stderr.contains("SSM:/agent-tests/no/such/parameter (from DOCKER_PASS)"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("does not exist"), "{}", outcome.stderr);
}

#[test]
fn no_region_is_a_secrets_error_with_a_hint() {
    let world = World::shared();
    let outcome = with_aws(world)
        .env("AWS_REGION", "")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("DOCKER_HOST", "SSM:/agent-tests/any")
        .args(["run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(10);
    assert!(outcome.stderr.contains("no AWS region"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("AWS_REGION"), "{}", outcome.stderr);
}

#[test]
fn an_unreachable_ssm_endpoint_fails_in_bounded_time() {
    let world = World::shared();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let outcome = with_aws(world)
        .env("AWS_ENDPOINT_URL_SSM", format!("http://127.0.0.1:{closed}"))
        .env("AGENT_CONNECT_TIMEOUT", "2")
        .env("DOCKER_HOST", "SSM:/agent-tests/any")
        .args(["run", "--image", "app", "--check"])
        .run();
    outcome.expect_code(10);
    assert!(outcome.stderr.contains("SSM:/agent-tests/any (from DOCKER_HOST)"), "{}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(30), "took {:?}", outcome.elapsed);
}

/// An agent that logs into the Docker Hub stand-in over the local socket.
fn hub_login(world: &World, password: &str) -> Agent {
    with_aws(world)
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .env("DOCKER_REGISTRY", &world.hub_registry)
        .env("DOCKER_USER", &world.hub_user)
        .env("DOCKER_PASS", password)
}

#[test]
fn the_right_hub_password_logs_in_and_a_wrong_one_fails_at_login() {
    let world = World::shared();
    let outcome = hub_login(world, &world.hub_pass()).args(["run", "--image", "app", "--check"]).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("logged in as hubuser"), "{}", outcome.stderr);

    let wrong = "wrong-password-31337";
    let outcome = hub_login(world, wrong).args(["run", "--image", "app", "--check", "-v"]).run();
    outcome.expect_code(40);
    assert!(outcome.stderr.contains(&format!("failed to log in to {}", world.hub_registry)), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("401"), "{}", outcome.stderr);
    assert_no_secret(&outcome, &[wrong.to_string(), world.hub_pass()]);
}

#[test]
fn ecr_logs_in_with_the_token_and_the_docker_cli_can_push_with_the_config() {
    let world = World::shared();
    let agent = with_aws(world)
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .env("ECR_REGISTRY", &world.ecr_registry)
        .args(["run", "--image", "app", "--no-push"]);
    let docker_dir = agent.home.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}},"detachKeys":"ctrl-e,e"}"#,
    )
    .unwrap();
    let outcome = agent.run();
    outcome.expect_code(0);
    assert!(
        outcome.stderr.contains(&format!("log in to ECR {}: logged in with an ECR token", world.ecr_registry)),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("write docker config: 1 login in"), "{}", outcome.stderr);
    assert_no_secret(&outcome, &[world.ecr_pass()]);

    let config_path = docker_dir.join("config.json");
    assert_eq!(std::fs::metadata(&config_path).unwrap().mode() & 0o777, 0o600);
    let config: serde_json::Value = serde_json::from_str(&read(&config_path)).unwrap();
    assert_eq!(config["auths"]["registry.example.com"]["auth"], "dXNlcjpwYXNz", "the user's entry is kept");
    assert_eq!(config["detachKeys"], "ctrl-e,e", "the user's settings are kept");
    assert!(config["auths"][&world.ecr_registry]["auth"].is_string(), "{config}");

    // The docker CLI pushes with that config.json alone.
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let tag = format!("{}/agent-tests/ecr-login:{}", world.ecr_registry, std::process::id());
    let docker = |args: &[&str]| {
        let output = Command::new("docker")
            .args(args)
            .env("DOCKER_CONFIG", &docker_dir)
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("docker");
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    // --no-cache: the classic builder's cache lookup fails when an image is removed beside it
    // (see crate::world::remove_images_after_the_run), and this image needs no cache.
    docker(&["build", "--no-cache", "-q", "-t", &tag, &context.path().display().to_string()]);
    docker(&["push", &tag]);
    crate::world::remove_images_after_the_run(&[&tag]);
}

/// Regression: a `credsStore` in config.json made later `docker` commands ignore the `auths`
/// entry the agent wrote (the CLI asks the store first). Checked with both docker CLIs: they push
/// with the login, and without the agent's empty `credHelpers` entry they would not.
#[test]
fn a_creds_store_in_config_json_does_not_hide_the_login_from_later_docker_commands() {
    let world = World::shared();
    let agent = hub_login(world, &world.hub_pass()).args(["run", "--image", "app", "--no-push"]);
    let docker_dir = agent.home.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let config_path = docker_dir.join("config.json");
    std::fs::write(&config_path, r#"{"credsStore":"agent-test-empty","psFormat":"table"}"#).unwrap();
    // A credential helper that holds nothing, as a fresh Docker Desktop keychain: the CLI then
    // replaces the auths entry's user and password with empty ones.
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-agent-test-empty");
    std::fs::write(&helper, "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n").unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", helpers.path().display(), std::env::var("PATH").unwrap_or_default());
    let outcome = agent.run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("credsStore \"agent-test-empty\" would hide the login"), "{}", outcome.stderr);
    let config: serde_json::Value = serde_json::from_str(&read(&config_path)).unwrap();
    assert_eq!(config["credsStore"], "agent-test-empty");
    assert_eq!(config["credHelpers"][&world.hub_registry], "");

    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let without_entry = tempfile::tempdir().unwrap();
    let mut hidden = config.clone();
    hidden.as_object_mut().unwrap().remove("credHelpers");
    std::fs::write(without_entry.path().join("config.json"), hidden.to_string()).unwrap();
    for cli in ["/usr/bin/docker", "/usr/local/bin/docker"].into_iter().filter(|cli| Path::new(cli).exists()) {
        let tag = format!("{}/agent-tests/creds-store:{}", world.hub_registry, std::process::id());
        let docker = |config: &Path, args: &[&str]| {
            Command::new(cli)
                .args(args)
                .env("DOCKER_CONFIG", config)
                .env("PATH", &path)
                .env("DOCKER_HOST", "unix:///var/run/docker.sock")
                .env("DOCKER_BUILDKIT", "0")
                .output()
                .expect("docker")
        };
        // --no-cache: as in the test above.
        let context = context.path().display().to_string();
        let built = docker(&docker_dir, &["build", "--no-cache", "-q", "-t", &tag, &context]);
        assert!(built.status.success(), "{cli} build: {}", String::from_utf8_lossy(&built.stderr));
        let pushed = docker(&docker_dir, &["push", &tag]);
        assert!(pushed.status.success(), "{cli} push with the login: {}", String::from_utf8_lossy(&pushed.stderr));
        let refused = docker(without_entry.path(), &["push", &tag]);
        assert!(!refused.status.success(), "{cli} pushed without the credHelpers entry: the test shows nothing");
        crate::world::remove_images_after_the_run(&[&tag]);
    }
}
