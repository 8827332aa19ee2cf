//! Issue 4: the SSH files and the pure-Rust connection to the remote daemon, against the test
//! world's real sshd and dockerd. `--check` stops after the read-only steps (connect, check).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Outcome};
use crate::world::{World, read};

/// An agent aimed at the world's sshd with the ed25519 key and hashed known_hosts.
fn over_ssh(world: &World) -> Agent {
    Agent::new()
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
        .env("AGENT_CONNECT_TIMEOUT", "10")
        .args(["run", "--image", "app"])
}

fn check(agent: Agent) -> Outcome {
    agent.args(["--check"]).run()
}

fn assert_daemon_checked(outcome: &Outcome) {
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("check daemon: Docker "), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("(API 1."), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("storage driver"), "{}", outcome.stderr);
}

/// Issue 16: the check logs the host's disk use in a line of its own. On the world's cold daemon,
/// whose `/system/df` answers at once (the shared daemon holds more than 300 images: its line gives
/// their count only, see budget.rs).
#[test]
fn the_check_line_shows_the_host_disk_use() {
    let world = World::shared();
    let cold = format!("unix://{}", world.cold_docker_sock.display());
    let outcome = Agent::new().env("DOCKER_HOST", &cold).args(["run", "--image", "app", "--check"]).run();
    assert_daemon_checked(&outcome);
    assert!(outcome.stderr.contains("host disk: images "), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(", build cache "), "{}", outcome.stderr);
}

#[test]
fn connects_with_an_ed25519_key_and_hashed_known_hosts() {
    assert_daemon_checked(&check(over_ssh(World::shared())));
}

#[test]
fn connects_with_an_rsa_pem_key_and_rsa_only_known_hosts() {
    let world = World::shared();
    let outcome = check(
        over_ssh(world)
            .env("JETS_SSH_KEY", read(&world.key_rsa_pem))
            .env("JETS_SSH_KNOWN", read(&world.known_hosts_rsa)),
    );
    assert_daemon_checked(&outcome);
}

#[test]
fn connects_with_a_key_pasted_with_literal_newlines_and_plain_known_hosts() {
    let world = World::shared();
    let one_line = read(&world.key_ed25519).trim_end().replace('\n', "\\n");
    let outcome = check(
        over_ssh(world)
            .env("JETS_SSH_KEY", format!("\"{one_line}\""))
            .env("JETS_SSH_KNOWN", read(&world.known_hosts_plain)),
    );
    assert_daemon_checked(&outcome);
}

#[test]
fn connects_with_an_ecdsa_key() {
    let world = World::shared();
    assert_daemon_checked(&check(over_ssh(world).env("JETS_SSH_KEY", read(&world.key_ecdsa))));
}

#[test]
fn connects_with_an_encrypted_key_and_its_passphrase() {
    let world = World::shared();
    let outcome = check(
        over_ssh(world)
            .env("JETS_SSH_KEY", read(&world.key_ed25519_enc))
            .env("JETS_SSH_KEY_PASSPHRASE", world.key_passphrase()),
    );
    assert_daemon_checked(&outcome);
    assert!(!outcome.all_output().contains(&world.key_passphrase()));
}

#[test]
fn an_encrypted_key_without_passphrase_is_a_config_error() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("JETS_SSH_KEY", read(&world.key_ed25519_enc)));
    outcome.expect_code(3);
    assert!(outcome.stderr.contains("JETS_SSH_KEY: is an encrypted key"), "{}", outcome.stderr);
}

#[test]
fn without_jets_ssh_key_the_usual_key_files_are_used() {
    let world = World::shared();
    let agent = over_ssh(world).env("JETS_SSH_KEY", "");
    std::fs::create_dir_all(agent.home.path().join(".ssh")).unwrap();
    std::fs::copy(&world.key_ecdsa, agent.home.path().join(".ssh/id_ecdsa")).unwrap();
    assert_daemon_checked(&check(agent));
}

#[test]
fn the_whole_run_opens_exactly_one_ssh_connection() {
    // Only this test uses the "solo" key: sshd's lines naming its fingerprint are this test's.
    let world = World::shared();
    let fingerprint = {
        let output = Command::new("ssh-keygen").arg("-lf").arg(&world.key_solo).output().expect("ssh-keygen");
        String::from_utf8_lossy(&output.stdout).split_whitespace().nth(1).expect("a fingerprint").to_string()
    };
    let accepted = || {
        read(&world.ssh_log)
            .lines()
            .filter(|line| line.contains("Accepted publickey") && line.contains(&fingerprint))
            .count()
    };
    let before = accepted();
    let outcome = check(over_ssh(world).env("JETS_SSH_KEY", read(&world.key_solo)));
    assert_daemon_checked(&outcome);
    // sshd logs "Accepted" before it answers the login, so every connection the agent logged in
    // with is in the log by the time the agent has ended; the first is waited for all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(accepted() - before, 1, "the run should open exactly one SSH connection");
}

#[test]
fn tcp_to_the_test_daemon_works() {
    let world = World::shared();
    let outcome = check(Agent::new().env("DOCKER_HOST", world.docker_tcp_url()).args(["run", "--image", "app"]));
    assert_daemon_checked(&outcome);
    assert!(!outcome.stderr.contains("WARN"), "loopback tcp needs no warning: {}", outcome.stderr);
}

#[test]
fn the_local_socket_works() {
    let outcome = check(Agent::new().env("DOCKER_HOST", "unix:///var/run/docker.sock").args(["run", "--image", "app"]));
    assert_daemon_checked(&outcome);
}

/// Asserts a failure: its exit code, a message naming the cause, and a bounded time.
fn assert_fails(outcome: &Outcome, code: i32, words: &[&str]) {
    outcome.expect_code(code);
    for word in words {
        assert!(outcome.stderr.contains(word), "expected {word:?} in:\n{}", outcome.stderr);
    }
    assert!(outcome.stderr.contains("hint:"), "{}", outcome.stderr);
    assert!(outcome.elapsed < Duration::from_secs(15), "took {:?}", outcome.elapsed);
}

#[test]
fn an_unknown_host_is_refused_with_the_keyscan_command() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("JETS_SSH_KNOWN", ""));
    let keyscan = format!("ssh-keyscan -H -p {} 127.0.0.1", world.ssh_port);
    assert_fails(&outcome, 23, &["host key of 127.0.0.1", "is unknown", "SHA256:", &keyscan]);
}

#[test]
fn a_changed_host_key_is_refused_with_both_fingerprints() {
    let world = World::shared();
    // The unauthorized client key's public half stands in for "some other host key".
    let other = read(&world.key_unauthorized.with_extension("pub"));
    let other_key: Vec<&str> = other.split_whitespace().take(2).collect();
    let line = format!("[127.0.0.1]:{} {}", world.ssh_port, other_key.join(" "));
    let outcome = check(over_ssh(world).env("JETS_SSH_KNOWN", &line));
    assert_fails(
        &outcome,
        24,
        &["has changed", "it presented ssh-ed25519 SHA256:", "known_hosts expects ssh-ed25519 SHA256:"],
    );
}

/// A fresh public key of `kind` (ssh-keygen's `-t`, `-b`), as `type base64`.
fn fresh_public_key(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let made = Command::new("ssh-keygen").args(["-q", "-N", "", "-C", ""]).args(args).arg("-f").arg(&path).output();
    assert!(made.expect("ssh-keygen").status.success());
    read(&path.with_extension("pub")).split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Regression: a server offering none of the key types known_hosts holds for it failed with a
/// generic handshake error (exit 27); it is an unknown host key, with the fingerprints.
#[test]
fn a_server_with_none_of_the_known_key_types_is_an_unknown_host_key_with_fingerprints() {
    let world = World::shared();
    // The world's sshd has ed25519, RSA and ECDSA P-256 host keys, no P-384 one.
    let line = format!("[127.0.0.1]:{} {}", world.ssh_port, fresh_public_key(&["-t", "ecdsa", "-b", "384"]));
    let outcome = check(over_ssh(world).env("JETS_SSH_KNOWN", &line));
    assert_fails(
        &outcome,
        23,
        &[
            "is unknown (it presented ssh-ed25519 SHA256:",
            "known_hosts holds only other key types for it: ecdsa-sha2-nistp384 SHA256:",
            "JETS_SSH_KNOWN line 1",
            "ssh-keyscan",
        ],
    );
}

/// Regression: `@cert-authority` lines were accepted silently, and the host then "unknown". Now
/// a warning names the line, and the error's hint says host certificates are not supported.
#[test]
fn a_cert_authority_line_is_warned_about_and_named_in_the_unknown_host_hint() {
    let world = World::shared();
    let line = format!("@cert-authority [127.0.0.1]:{} {}", world.ssh_port, fresh_public_key(&["-t", "ed25519"]));
    let outcome = check(over_ssh(world).env("JETS_SSH_KNOWN", &line));
    assert_fails(&outcome, 23, &["is unknown", "host certificates are not supported", "JETS_SSH_KNOWN line 1"]);
    let warning = outcome.stderr.lines().find(|line| line.contains("WARN") && line.contains("@cert-authority"));
    let warning = warning.unwrap_or_else(|| panic!("a warning about @cert-authority in:\n{}", outcome.stderr));
    assert!(warning.contains("JETS_SSH_KNOWN line 1: @cert-authority lines are not supported"), "{warning}");
}

/// Regression: a known_hosts that is a symlink was replaced by a regular file, and a non-UTF-8
/// one could not be read or was rewritten lossily. The link stays, the bytes stay, lines are added.
#[test]
fn a_symlinked_non_utf8_known_hosts_keeps_its_link_and_bytes() {
    let world = World::shared();
    let agent = over_ssh(world).args(["--no-push"]);
    let ssh_dir = agent.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let target = agent.home.path().join("dotfiles-known_hosts");
    let theirs = b"# h\xf4te de build (Latin-1)\nold.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeewfGQida1Is0o6P7eidCdWOm9M3C0W042few7eesN\n";
    std::fs::write(&target, theirs).unwrap();
    std::os::unix::fs::symlink(&target, ssh_dir.join("known_hosts")).unwrap();
    agent.run().expect_code(0);
    assert!(std::fs::symlink_metadata(ssh_dir.join("known_hosts")).unwrap().file_type().is_symlink());
    let now = std::fs::read(&target).unwrap();
    assert!(now.starts_with(theirs), "the user's bytes come first, unchanged");
    assert!(now.len() > theirs.len(), "the host's lines were added");
}

#[test]
fn a_revoked_host_key_is_refused() {
    let world = World::shared();
    let known = read(&world.known_hosts_plain);
    let ed25519 = known.lines().find(|line| line.contains("ssh-ed25519")).expect("an ed25519 host key");
    let revoked = format!("{known}\n@revoked * {}", ed25519.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
    let outcome = check(over_ssh(world).env("JETS_SSH_KNOWN", revoked));
    assert_fails(&outcome, 24, &["is revoked"]);
}

#[test]
fn a_wrong_user_key_is_refused() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("JETS_SSH_KEY", read(&world.key_unauthorized)));
    assert_fails(&outcome, 25, &["refused the SSH key", "for user agent-test"]);
}

#[test]
fn a_wrong_socket_path_is_refused() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("DOCKER_HOST", format!("{}/var/run/no-such-docker.sock", world.ssh_url())));
    assert_fails(&outcome, 26, &["/var/run/no-such-docker.sock", "does not exist or the user may not open it"]);
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn sshd_down_is_connection_refused() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("DOCKER_HOST", format!("ssh://agent-test@127.0.0.1:{}", closed_port())));
    assert_fails(&outcome, 21, &["Connection refused"]);
}

#[test]
fn tcp_to_a_closed_port_is_connection_refused() {
    let outcome = check(
        Agent::new().env("DOCKER_HOST", format!("tcp://127.0.0.1:{}", closed_port())).args(["run", "--image", "app"]),
    );
    assert_fails(&outcome, 21, &["Connection refused"]);
}

#[test]
fn an_unresolvable_host_is_a_name_resolution_error() {
    let world = World::shared();
    let outcome = check(over_ssh(world).env("DOCKER_HOST", "ssh://agent-test@no-such-host.invalid"));
    assert_fails(&outcome, 20, &["did not resolve"]);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let world = World::shared();
    let outcome = over_ssh(world)
        .env("DOCKER_HOST", format!("ssh://agent-test@127.0.0.1:{port}"))
        .env("AGENT_CONNECT_TIMEOUT", "2")
        .args(["--check"])
        .run();
    assert_fails(&outcome, 22, &["no answer within 2s"]);
    assert!(outcome.elapsed < Duration::from_secs(6), "took {:?}", outcome.elapsed);
    drop(listener);
}

#[test]
fn files_are_private_added_once_and_never_clobber_a_key() {
    let world = World::shared();
    let agent = over_ssh(world).args(["--no-push"]);
    let ssh_dir = agent.home.path().join(".ssh");
    for _ in 0..2 {
        let outcome = agent.run();
        outcome.expect_code(0);
        assert!(outcome.stderr.contains("check daemon: Docker "), "{}", outcome.stderr);
    }
    assert_eq!(std::fs::metadata(&ssh_dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(ssh_dir.join("id_rsa")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(read(&ssh_dir.join("id_rsa")), read(&world.key_ed25519));
    let known = read(&ssh_dir.join("known_hosts"));
    let expected =
        read(&world.known_hosts_hashed).lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
    assert_eq!(known.lines().count(), expected, "each line once after two runs:\n{known}");
    assert_eq!(std::fs::read_dir(&ssh_dir).unwrap().count(), 2, "no temporary files left");
}

/// Regression: a different key in `~/.ssh/id_rsa` aborted the run (exit 4) though JETS_SSH_KEY was
/// in memory. The file stays byte-for-byte, the run logs in with the key from memory, and one
/// warning says where later commands will not find it.
#[test]
fn a_different_key_in_id_rsa_is_kept_and_the_run_uses_the_key_from_memory() {
    let world = World::shared();
    let agent = over_ssh(world).args(["--no-push"]);
    let ssh_dir = agent.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    // The test world's RSA key is not the one in JETS_SSH_KEY (ed25519).
    let theirs = read(&world.key_rsa_pem);
    std::fs::write(ssh_dir.join("id_rsa"), &theirs).unwrap();
    let outcome = agent.run();
    outcome.expect_code(0);
    let path = ssh_dir.join("id_rsa").display().to_string();
    let warnings: Vec<&str> =
        outcome.stderr.lines().filter(|line| line.contains("WARN") && line.contains("different key")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", outcome.stderr);
    assert!(
        warnings[0].contains(&format!("{path} already holds a different key and was left untouched")),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("--ssh-key-file"), "{warnings:?}");
    assert_eq!(read(&ssh_dir.join("id_rsa")), theirs, "the user's key is untouched");
}

#[test]
fn the_docker_cli_over_openssh_works_with_the_installed_files() {
    // OpenSSH reads ~/.ssh from the account's home in /etc/passwd, so this runs as the world's
    // CI account, whose home is its own.
    let world = World::shared();
    let home = Path::new("/home").join(&world.ci_user);
    let _ = std::fs::remove_dir_all(home.join(".ssh"));
    let run_as = |program: &str, args: &[&str], env: &[(&str, String)]| {
        let mut command = Command::new("runuser");
        command.args(["-u", &world.ci_user, "--", "env", "-i"]);
        command.arg(format!("HOME={}", home.display()));
        command.arg(format!("PATH={}", std::env::var("PATH").unwrap_or_default()));
        for (name, value) in env {
            command.arg(format!("{name}={value}"));
        }
        command.arg(program).args(args);
        let output = command.current_dir("/").output().expect("runuser");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The agent binary must be readable by that account: copy it somewhere world-readable.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let binary = dir.path().join("agent");
    std::fs::copy(env!("CARGO_BIN_EXE_agent"), &binary).unwrap();
    let context_dir = dir.path().join("app");
    std::fs::create_dir(&context_dir).unwrap();
    std::fs::write(context_dir.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let context = context_dir.display().to_string();
    let env = [
        ("DOCKER_HOST", world.ssh_url()),
        ("JETS_SSH_KEY", read(&world.key_ed25519)),
        ("JETS_SSH_KNOWN", read(&world.known_hosts_hashed)),
    ];
    let (code, _, stderr) =
        run_as(binary.to_str().unwrap(), &["run", "--image", "app", "--no-push", "--context", &context], &env);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("check daemon: Docker "), "{stderr}");
    let (code, stdout, stderr) =
        run_as("docker", &["version", "--format", "{{.Server.APIVersion}}"], &[("DOCKER_HOST", world.ssh_url())]);
    assert_eq!(code, Some(0), "docker over OpenSSH failed:\n{stderr}");
    assert!(stdout.trim().starts_with("1."), "{stdout}");
}

#[test]
fn tcp_with_tls_client_certificates_works() {
    let world = World::shared();
    let outcome = check(
        Agent::new()
            .env("DOCKER_HOST", format!("tcp://{}", world.docker_tls))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", world.docker_cert_path.display().to_string())
            .args(["run", "--image", "app"]),
    );
    assert_daemon_checked(&outcome);
}

#[test]
fn tls_without_its_certificates_says_which_file_is_missing() {
    let world = World::shared();
    let empty = tempfile::tempdir().unwrap();
    let outcome = check(
        Agent::new()
            .env("DOCKER_HOST", format!("tcp://{}", world.docker_tls))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", empty.path().display().to_string())
            .args(["run", "--image", "app"]),
    );
    assert_fails(&outcome, 4, &["ca.pem", "DOCKER_CERT_PATH"]);
}

/// A DOCKER_CERT_PATH with the world's files except those named in `own`, which are a
/// self-signed certificate (and its key) that nobody trusts, made with the openssl CLI.
fn cert_dir_with_untrusted(world: &World, own: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(world.docker_cert_path.join(name), dir.path().join(name)).unwrap();
    }
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=untrusted"])
        .arg("-keyout")
        .arg(dir.path().join("untrusted-key.pem"))
        .arg("-out")
        .arg(dir.path().join("untrusted.pem"))
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for name in own {
        let source = if *name == "key.pem" { "untrusted-key.pem" } else { "untrusted.pem" };
        std::fs::copy(dir.path().join(source), dir.path().join(name)).unwrap();
    }
    dir
}

fn over_tls(address: &str, cert_dir: &Path) -> Outcome {
    check(
        Agent::new()
            .env("DOCKER_HOST", format!("tcp://{address}"))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_dir.display().to_string())
            .args(["run", "--image", "app"]),
    )
}

/// Regression: a TLS failure on `tcp://` exited 27 ("ssh"). Each way TLS fails has the TLS class.
#[test]
fn a_tls_failure_on_tcp_exits_with_the_tls_class_not_ssh() {
    let world = World::shared();
    // The daemon does not trust our client certificate.
    let outcome = over_tls(&world.docker_tls, cert_dir_with_untrusted(world, &["cert.pem", "key.pem"]).path());
    assert_fails(&outcome, 28, &["the TLS handshake failed", "DOCKER_CERT_PATH"]);
    // Our ca.pem did not sign the daemon's certificate.
    let outcome = over_tls(&world.docker_tls, cert_dir_with_untrusted(world, &["ca.pem"]).path());
    assert_fails(&outcome, 28, &["the TLS handshake failed", "invalid peer certificate"]);
    // TLS to a port that speaks plain HTTP.
    let outcome = over_tls(&world.docker_tcp, &world.docker_cert_path);
    assert_fails(&outcome, 28, &["the TLS handshake failed", "corrupt message", "2376"]);
}

/// Regression: a plain TCP failure exited 27 ("ssh"); it has its own class, and a plain
/// connection to a TLS port says to turn TLS on.
#[test]
fn plain_tcp_to_a_tls_port_exits_with_the_tcp_class_and_says_to_use_tls() {
    let world = World::shared();
    let outcome =
        check(Agent::new().env("DOCKER_HOST", format!("tcp://{}", world.docker_tls)).args(["run", "--image", "app"]));
    assert_fails(&outcome, 29, &["failed to connect to tcp://", "DOCKER_TLS_VERIFY=1"]);
}

#[test]
fn plain_tcp_to_another_host_is_warned_about() {
    let outcome = check(Agent::new().env("DOCKER_HOST", "tcp://docker.invalid:2375").args(["run", "--image", "app"]));
    assert_fails(&outcome, 20, &["WARN", "plain TCP", "did not resolve"]);
}

#[test]
fn a_daemon_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = Agent::new()
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .env("AGENT_CONNECT_TIMEOUT", "2")
        .args(["run", "--image", "app", "--check"])
        .run();
    assert_fails(&outcome, 22, &["did not answer the ping request within 2s"]);
    drop(listener);
}

/// Guards the finding of issue 12: the SSH session used to keep its last channel failure for the
/// next error to be explained, so a failure a caller swallowed (as `pull_for_cache` does with a
/// cold pull's `inspect_image`) was blamed for a later, unrelated error. The reason now travels
/// inside the error it belongs to. Real sshd, a socket path that does not exist on the host.
#[test]
fn a_swallowed_ssh_failure_does_not_colour_a_later_unrelated_error() {
    use std::sync::Arc;

    use agent::docker::daemon::Daemon;
    use agent::error::Error;
    use agent::ssh::key::SshKey;
    use agent::ssh::known_hosts::KnownHosts;
    use agent::ssh::transport::{SshSession, SshTarget, Timeouts};

    let world = World::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = SshKey::parse(&read(&world.key_ed25519), None).unwrap();
        let mut known = KnownHosts::default();
        assert!(known.add(&read(&world.known_hosts_plain), "the world's known_hosts").is_empty());
        let target = SshTarget {
            host: world.ssh_host.clone(),
            address: None,
            port: world.ssh_port,
            user: world.ssh_user.clone(),
            socket: "/var/run/no-such-docker.sock".to_string(),
        };
        let timeouts = Timeouts { connect: Duration::from_secs(10), keepalive: Duration::from_secs(10) };
        let session =
            SshSession::connect(target, &[("ed25519".to_string(), Arc::new(key.key))], Arc::new(known), timeouts)
                .await
                .unwrap();
        let daemon = Daemon::over_ssh(Arc::new(session), world.ssh_url(), Duration::from_secs(10)).unwrap();

        // A cold pull's inspect fails on the channel, and the caller lets it go.
        assert!(daemon.docker.inspect_image("agent-it/swallowed:never").await.is_err());
        // A later error that has nothing to do with it is the daemon's own answer.
        let unrelated =
            bollard::errors::Error::DockerResponseServerError { status_code: 500, message: "unrelated".to_string() };
        let explained = daemon.explain(unrelated);
        assert!(
            matches!(&explained, Error::Daemon { detail, .. } if detail.contains("answered 500: unrelated")),
            "{explained:?}"
        );
        // The channel failure itself is still explained as what it is, from the error it came with.
        let carried = daemon.docker.inspect_image("agent-it/carried:never").await.unwrap_err();
        let explained = daemon.explain(carried);
        assert!(
            matches!(&explained, Error::RemoteSocket { socket, .. } if socket == "/var/run/no-such-docker.sock"),
            "{explained:?}"
        );
        daemon.close().await;
    });
}
