//! `agent run --dry`: the whole plan printed, every secret masked, nothing written, no connection.

use std::net::TcpListener;

use crate::agent::{Agent, tree_listing};

const PASSWORD: &str = "dckr_pat_dry-run-secret-9f8e7d";
const PASSPHRASE: &str = "passphrase-dry-run-1234";

/// A loopback port that accepts connections, to prove that none arrives.
fn listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.set_nonblocking(true).expect("non-blocking");
    listener
}

fn assert_no_connection(listener: &TcpListener) {
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the dry run connected: {other:?}"),
    }
}

/// A fresh throwaway key, encrypted with PASSPHRASE (ssh-keygen comes with the test world).
fn throwaway_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "dry-run-test", "-N", PASSPHRASE, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    std::fs::read_to_string(path).unwrap()
}

fn jets_agent(port: u16, key: &str) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", format!("ssh://ec2-user@127.0.0.1:{port}"))
        .env("JETS_SSH_KEY", key)
        .env("JETS_SSH_KEY_PASSPHRASE", PASSPHRASE)
        .env(
            "JETS_SSH_KNOWN",
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy",
        )
        .env("DOCKER_USER", "ci-bot")
        .env("DOCKER_PASS", PASSWORD)
        .env("REPOSITORY_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web")
        .env("ECR_REGISTRY", "210987654321.dkr.ecr.us-east-1.amazonaws.com")
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", "0123456789abcdef0123456789abcdef01234567")
        .env("AWS_REGION", "eu-west-1")
}

#[test]
fn dry_run_prints_every_step_masks_secrets_writes_nothing_and_connects_nowhere() {
    let daemon = listener();
    let port = daemon.local_addr().unwrap().port();
    let key = throwaway_key();
    // Every server the run would talk to is a listener here that must see no connection.
    let (registry, aws) = (listener(), listener());
    let agent = jets_agent(port, &key)
        .env("DOCKER_REGISTRY", format!("127.0.0.1:{}", registry.local_addr().unwrap().port()))
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", aws.local_addr().unwrap().port()))
        .args(["run", "--dry", "--image-definitions", "web", "--build-arg", "MODE=ci"]);
    // CodeBuild's source directory, which the context key is relative to.
    let source_dir = agent.work.path().display().to_string();
    let agent = agent.env("CODEBUILD_SRC_DIR", source_dir);
    std::fs::create_dir(agent.home.path().join(".ssh")).unwrap();
    std::fs::write(agent.home.path().join(".ssh/known_hosts"), "existing line\n").unwrap();
    let home_before = tree_listing(agent.home.path());
    let work_before = tree_listing(agent.work.path());

    let outcome = agent.run();
    outcome.expect_code(0);

    assert_eq!(tree_listing(agent.home.path()), home_before, "the dry run changed HOME");
    assert_eq!(tree_listing(agent.work.path()), work_before, "the dry run changed the working directory");
    assert_no_connection(&daemon);
    assert_no_connection(&registry);
    assert_no_connection(&aws);

    let output = outcome.all_output();
    for secret in [PASSWORD, PASSPHRASE].into_iter().chain(key.lines().filter(|line| !line.starts_with("-----"))) {
        assert!(!output.contains(secret), "a secret appears in the output:\n{output}");
    }
    for step in [
        "install ssh key",
        "install known_hosts",
        &format!("connect to ssh://ec2-user@127.0.0.1:{port}/var/run/docker.sock"),
        "check daemon",
        "log in to 127.0.0.1:",
        "log in to ECR 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "log in to ECR 210987654321.dkr.ecr.us-east-1.amazonaws.com",
        "write docker config",
        "build 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:latest",
        "tag 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:0123456",
        "push 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:latest",
        "push 123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:0123456",
        "write imagedefinitions.json",
    ] {
        assert!(outcome.stdout.contains(step), "the plan lacks {step:?}:\n{}", outcome.stdout);
    }

    let home = agent.home.path().display().to_string();
    let work = agent.work.path().display().to_string();
    insta::with_settings!({filters => vec![
        (home.as_str(), "[HOME]"),
        (work.as_str(), "[WORK]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"agent \d+\.\d+\.\d+", "agent [VERSION]"),
        (r"SHA256:[A-Za-z0-9+/]+", "SHA256:[FINGERPRINT]"),
    ]}, {
        insta::assert_snapshot!("jets_style_plan", outcome.stdout);
    });
}

#[test]
fn dry_run_keeps_ssm_references_unfetched() {
    let moto = listener();
    let endpoint = format!("http://127.0.0.1:{}", moto.local_addr().unwrap().port());
    let outcome = Agent::new()
        .env("DOCKER_HOST", "SSM:/ci/docker-host")
        .env("JETS_SSH_KEY", "SSM:/ci/ssh-key")
        .env("JETS_SSH_KNOWN", "SSM:/ci/known-hosts")
        .env("DOCKER_USER", "SSM:/ci/docker-user")
        .env("DOCKER_PASS", "SSM:/ci/docker-pass")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .args(["run", "--dry", "--image", "app"])
        .run();
    outcome.expect_code(0);
    assert_no_connection(&moto);
    assert!(outcome.stdout.contains("resolve 5 SSM parameters"), "{}", outcome.stdout);
    for line in [
        "DOCKER_HOST <- SSM:/ci/docker-host",
        "JETS_SSH_KEY <- SSM:/ci/ssh-key",
        "JETS_SSH_KNOWN <- SSM:/ci/known-hosts",
        "DOCKER_USER <- SSM:/ci/docker-user",
        "DOCKER_PASS <- SSM:/ci/docker-pass",
        "connect to the daemon in SSM:/ci/docker-host",
        "region us-east-1 (from env AWS_REGION)",
    ] {
        assert!(outcome.stdout.contains(line), "the plan lacks {line:?}:\n{}", outcome.stdout);
    }
}

#[test]
fn dry_run_shows_where_values_come_from() {
    let outcome = Agent::new()
        .env("DOCKER_HOST", "tcp://127.0.0.1:1")
        .env("IMAGE_TAG", "v7")
        .args(["run", "--dry", "--image", "registry.example.com/team/app", "--no-push", "--build-arg", "TOKEN"])
        .env("TOKEN", "build-arg-from-env-value")
        .run();
    outcome.expect_code(0);
    let plan = &outcome.stdout;
    assert!(plan.contains("daemon tcp://127.0.0.1:1 (from env DOCKER_HOST)"), "{plan}");
    assert!(plan.contains("tag registry.example.com/team/app:v7"), "{plan}");
    assert!(plan.contains("build arg TOKEN (value from env TOKEN)"), "{plan}");
    assert!(!plan.contains("build-arg-from-env-value"), "{plan}");
    assert!(!plan.contains("push "), "--no-push plans no push:\n{plan}");
}

#[test]
fn dry_run_uses_the_local_socket_by_default() {
    let outcome = Agent::new().args(["run", "--dry", "--image", "app"]).run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("connect to unix:///var/run/docker.sock"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("(from default)"), "{}", outcome.stdout);
}

/// Issue 16: with a pool, the plan shows the pool, the host this image hashes to and the failover
/// order (the same as the agent computes), and the fallback; `--host` repeated wins over
/// AGENT_HOSTS, which wins over DOCKER_HOST; an `SSM:` entry leaves the order to the run.
#[test]
fn dry_run_shows_the_pool_the_chosen_host_the_failover_order_and_the_fallback() {
    let (first, second) = (listener(), listener());
    let hosts = [first.local_addr().unwrap().port(), second.local_addr().unwrap().port()]
        .map(|port| format!("ssh://ec2-user@127.0.0.1:{port}/var/run/docker.sock"));
    let image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web";
    let order = agent::nodes::affinity::order(&hosts, image);
    let outcome = Agent::new()
        .env("DOCKER_HOST", "ssh://ignored@127.0.0.1:9")
        .env("AGENT_HOSTS", hosts.join(", "))
        .env("AGENT_FALLBACK_HOST", "unix:///var/run/docker.sock")
        .args(["run", "--dry", "--image", image])
        .run();
    outcome.expect_code(0);
    let plan = &outcome.stdout;
    assert!(plan.contains(&format!("connect to {} (of a pool of 2)", hosts[order[0]])), "{plan}");
    assert!(plan.contains(&format!("pool of 2 hosts (from env AGENT_HOSTS): {}, {}", hosts[0], hosts[1])), "{plan}");
    let failover = format!("failover order: {}, {}", hosts[order[0]], hosts[order[1]]);
    assert!(plan.contains(&format!("{image} hashes to {} ", hosts[order[0]])), "{plan}");
    assert!(plan.contains(&failover), "{plan}");
    assert!(plan.contains("fallback unix:///var/run/docker.sock (from env AGENT_FALLBACK_HOST)"), "{plan}");
    assert!(plan.contains("each host but the last tried has 5s to answer, the last 20s"), "{plan}");
    assert!(!plan.contains("ignored@"), "DOCKER_HOST is not part of the pool when AGENT_HOSTS is set:\n{plan}");
    assert_no_connection(&first);
    assert_no_connection(&second);

    // --host repeated wins over AGENT_HOSTS.
    let outcome = Agent::new()
        .env("AGENT_HOSTS", hosts.join(","))
        .args(["run", "--dry", "--image", image, "--host", "tcp://127.0.0.1:1", "-H", "tcp://127.0.0.1:2"])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("pool of 2 hosts (from flag --host): tcp://127.0.0.1:1, tcp://127.0.0.1:2"));
    assert!(outcome.stdout.contains("no fallback host: when no host of the pool answers, the run fails"));

    // An address from Parameter Store is known after step 1 only.
    let outcome = Agent::new()
        .env("AGENT_HOSTS", format!("{},SSM:/ci/second-host", hosts[0]))
        .env("AWS_REGION", "eu-west-1")
        .args(["run", "--dry", "--image", image])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("are known once step 1 has resolved the addresses"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("connect to a host of the pool of 2"), "{}", outcome.stdout);
}

/// A bad entry of AGENT_HOSTS, a bad fallback and a zero failover timeout are configuration errors.
#[test]
fn a_bad_pool_entry_or_fallback_is_a_config_error_listing_each() {
    let outcome = Agent::new()
        .env("AGENT_HOSTS", "ssh://a.example.com,ftp://nowhere")
        .env("AGENT_FALLBACK_HOST", "gopher://x")
        .args(["run", "--dry", "--image", "app", "--failover-timeout", "0"])
        .run();
    outcome.expect_code(3);
    for subject in ["AGENT_HOSTS", "AGENT_FALLBACK_HOST", "--failover-timeout"] {
        assert!(outcome.stderr.contains(subject), "{subject}:\n{}", outcome.stderr);
    }
}

#[test]
fn dry_run_shows_the_host_of_each_platform_and_which_spelling_won() {
    let outcome = Agent::new()
        .env("PLATFORMS", "linux/amd64,linux/arm64,linux/riscv64")
        .env("DOCKER_HOST_X86_64", "ssh://ci@amd.example:2201")
        .env("DOCKER_HOST_ARM64", "ssh://ci@arm.example:2202")
        .env("DOCKER_HOST_AARCH64", "ssh://ci@other.example:2203")
        .args(["run", "--dry", "--image", "app"])
        .run();
    outcome.expect_code(0);
    let plan = &outcome.stdout;
    for line in [
        "platform linux/amd64 on ssh://ci@amd.example:2201/var/run/docker.sock (from env DOCKER_HOST_X86_64), pushed as TAG-amd64",
        "platform linux/arm64 on ssh://ci@arm.example:2202/var/run/docker.sock (from env DOCKER_HOST_ARM64), pushed as TAG-arm64",
        "platform linux/arm64: DOCKER_HOST_ARM64 wins over DOCKER_HOST_AARCH64 (both are set)",
        "platform linux/riscv64 on the run's default host (DOCKER_HOST, or the pool's: see the connect step), emulated",
    ] {
        assert!(plan.contains(line), "missing {line:?} in\n{plan}");
    }
}

#[test]
fn dry_run_of_two_platforms_plans_their_builds_at_once_then_one_index_and_names_each_ssh_login() {
    let outcome = Agent::new()
        .env("PLATFORMS", "linux/amd64,linux/arm64")
        .env("DOCKER_HOST_AMD64", "ssh://ci@amd.example:2201")
        .env("JETS_SSH_KNOWN_AMD64", "SSM:/ci/amd-known")
        .env("DOCKER_HOST_AARCH64", "ssh://ci@arm.example:2202")
        .env("JETS_SSH_KEY_AARCH64", "SSM:/ci/arm-key")
        .env("AWS_REGION", "eu-west-1")
        .args(["run", "--dry", "--image", "registry.example/app", "--tag", "v1"])
        .run();
    outcome.expect_code(0);
    let plan = &outcome.stdout;
    for line in [
        "resolve 2 SSM parameters",
        "connect to the hosts of linux/amd64, linux/arm64",
        "linux/amd64: daemon ssh://ci@amd.example:2201/var/run/docker.sock (from env DOCKER_HOST_AMD64)",
        "linux/amd64: SSH key from JETS_SSH_KEY (the fallback), host keys from env JETS_SSH_KNOWN_AMD64",
        "linux/arm64: SSH key from env JETS_SSH_KEY_AARCH64, host keys from JETS_SSH_KNOWN (the fallback)",
        "build registry.example/app:v1 for linux/amd64, linux/arm64",
        "linux/arm64: build and tag registry.example/app:v1-arm64",
        "push the image index registry.example/app (1 tag)",
    ] {
        assert!(plan.contains(line), "missing {line:?} in\n{plan}");
    }
    assert!(!plan.contains("connect to unix://"), "{plan}");
}

#[test]
fn a_platform_list_with_a_bad_or_repeated_entry_is_a_config_error() {
    let outcome = Agent::new().args(["run", "--dry", "--image", "app", "--platform", "linux/amd64,linux/amd64"]).run();
    outcome.expect_code(3);
    assert!(outcome.stderr.contains("given twice"), "{}", outcome.stderr);
}

/// The whole plan of a two-platform run, reviewed as a snapshot: each platform's host and SSH
/// login, the builds at once with their own tags and cache images, the index, the outputs.
#[test]
fn two_platform_plan() {
    let agent = Agent::new()
        .env("PLATFORMS", "linux/amd64,linux/arm64")
        .env("DOCKER_HOST", "ssh://ci@build.example")
        .env("DOCKER_HOST_AARCH64", "ssh://ci@arm.example:2202")
        .env("JETS_SSH_KEY_AARCH64", "SSM:/ci/arm-key")
        .env("JETS_SSH_KNOWN_ARM64", "SSM:/ci/arm-known")
        .env("AWS_REGION", "eu-west-1")
        .env("AGENT_CONTEXT_KEY", "web")
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", "0123456789abcdef")
        .args(["run", "--dry", "--image", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web"])
        .args(["--image-definitions", "web", "--metadata-file", "build.json"]);
    let outcome = agent.run();
    outcome.expect_code(0);
    let home = agent.home.path().display().to_string();
    let work = agent.work.path().display().to_string();
    insta::with_settings!({filters => vec![
        (home.as_str(), "[HOME]"),
        (work.as_str(), "[WORK]"),
        (r"agent \d+\.\d+\.\d+", "agent [VERSION]"),
    ]}, {
        insta::assert_snapshot!("two_platform_plan", outcome.stdout);
    });
}
