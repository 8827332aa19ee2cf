//! Issue 27: `JETS_SSH_KEY=ec2-instance-connect` — a key made for the run, in memory only, its
//! public half pushed with EC2 Instance Connect's SendSSHPublicKey right before the agent connects.
//! Against moto's EC2 (the instance at 127.0.0.1) and the world's EC2 Instance Connect stand-in
//! (scripts/testworld-eic-server.py), which keeps each pushed key for its lifetime and serves it to
//! an sshd of the test's own through `AuthorizedKeysCommand`, as the real host's
//! `eic_run_authorized_keys` reads them from the instance metadata. That sshd reads no
//! authorized_keys file: a pushed key is the only way in.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::agent::Agent;
use crate::build::{example_app, unique};
use crate::faults::{Server, free_port, own_sshd_with, wait_for_port};
use crate::instances::{state, stopped_instance};
use crate::world::{World, read};

/// An sshd of the test's own whose only authorized keys are those pushed to `instance` through
/// the stand-in at `eic_url`; its known_hosts lines naming the instance.
fn instance_connect_sshd(world: &World, eic_url: &str, instance: &str) -> (Server, String) {
    let script = world.var("TW_EIC_SCRIPT").expect("TW_EIC_SCRIPT (scripts/testworld up)");
    let extra = [
        format!("AuthorizedKeysCommand /usr/bin/python3 {script} authorized-keys {eic_url} {instance} %u"),
        "AuthorizedKeysCommandUser nobody".to_string(),
    ];
    let (sshd, known) = own_sshd_with(world, Some(Path::new("none")), &extra);
    let known = known.replace(&format!("[127.0.0.1]:{}", sshd.port), &format!("[{instance}]:{}", sshd.port));
    (sshd, known)
}

/// A run over EC2 Instance Connect to `instance`'s sshd, pushing to the ECR stand-in.
fn instance_connect_run(world: &World, eic_url: &str, instance: &str, sshd: &Server, known: &str) -> Agent {
    crate::logins::with_aws(world)
        .env("DOCKER_HOST", format!("ssh://{}@{instance}:{}", world.ssh_user, sshd.port))
        .env("JETS_SSH_KEY", "ec2-instance-connect")
        .env("JETS_SSH_KNOWN", known)
        .env("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", eic_url)
        .env("ECR_REGISTRY", &world.ecr_registry)
}

/// The fingerprint after `prefix` in `text` (`SHA256:…`).
fn fingerprint_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let at = text.find(prefix)? + prefix.len();
    text[at..].split(|c: char| c.is_whitespace() || c == ')' || c == ',').find(|word| word.starts_with("SHA256:"))
}

/// Done when (issue 27): a run with `ec2-instance-connect` connects with no key stored anywhere and
/// leaks none; it starts the stopped instance, builds and pushes. The key the sshd accepted is the
/// one the run pushed; the world's own key, not pushed, is refused there.
#[test]
fn a_run_with_ec2_instance_connect_pushes_a_key_of_its_own_builds_and_pushes_and_stores_no_key() {
    let world = World::shared();
    let eic_url = world.var("TW_EIC_URL").expect("TW_EIC_URL (scripts/testworld up)").to_string();
    let id = stopped_instance(world);
    let (sshd, known) = instance_connect_sshd(world, &eic_url, &id);
    let repository = unique("instance-connect");
    let agent = instance_connect_run(world, &eic_url, &id, &sshd, &known)
        .env("REPOSITORY_URI", format!("{}/{repository}", world.ecr_registry));
    let home = agent.home.path().to_path_buf();
    let app = example_app(agent.work.path());
    std::fs::write(app.join("src/id.txt"), &repository).unwrap();
    let outcome = agent.args(["run", "--context", app.to_str().unwrap()]).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains(&format!("started {id} in ")), "{}", outcome.stderr);
    assert_eq!(state(world, &id), "running");
    assert!(world.ecr_tags(&repository).contains(&"latest".to_string()), "{}", outcome.stderr);

    // The key pushed is the key the sshd let in.
    let pushed = fingerprint_after(&outcome.stderr, "pushed this run's key (")
        .unwrap_or_else(|| panic!("no pushed key in the log: {}", outcome.stderr))
        .to_string();
    assert!(outcome.stderr.contains(&format!("to {id} for {} with EC2 Instance Connect", world.ssh_user)));
    let sshd_log = read(&sshd.dir().join("sshd.log"));
    assert!(
        sshd_log.contains(&format!("Accepted publickey for {} ", world.ssh_user)) && sshd_log.contains(&pushed),
        "the sshd accepted another key than {pushed}: {sshd_log}"
    );

    // Stored nowhere, shown nowhere: no key file, no private key in any output.
    for name in ["id_rsa", "id_ed25519", "id_ecdsa"] {
        assert!(!home.join(".ssh").join(name).exists(), "{name} was written");
    }
    let all = outcome.all_output();
    assert!(!all.contains("PRIVATE KEY") && !all.contains("b3BlbnNzaC1rZXktdjE"), "{all}");
    assert!(outcome.stderr.contains("later ssh, git and docker (ssh://) commands of the buildspec have no key"));
    assert!(!all.contains("test-secret-access-key"));

    // The world's own key was never pushed: this sshd refuses it.
    let outcome = instance_connect_run(world, &eic_url, &id, &sshd, &known)
        .env("JETS_SSH_KEY", read(&world.key_ed25519))
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(25);
}

/// The EC2 Instance Connect stand-in for this test alone, with `args` after `serve PORT` (`--ttl 3`,
/// `--deny-user U`, `--throttle-first N`).
fn own_stand_in(world: &World, args: &[&str]) -> (KillOnDrop, String) {
    let port = free_port();
    let mut command = Command::new("/usr/bin/python3");
    command.arg(world.var("TW_EIC_SCRIPT").expect("TW_EIC_SCRIPT (scripts/testworld up)"));
    command.args(["serve", &port.to_string()]).args(args);
    let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("python3");
    wait_for_port(port);
    (KillOnDrop(child), format!("http://127.0.0.1:{port}"))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stand-in as the real service behaves: a pushed key logs in (OpenSSH's own client) while it
/// is fresh, and no more once its lifetime is over.
#[test]
fn a_pushed_key_logs_in_until_it_expires() {
    let world = World::shared();
    let (_stand_in, eic_url) = own_stand_in(world, &["--ttl", "3"]);
    let id = "i-0bbbbbbbbbbbbbbb1";
    let (sshd, _) = instance_connect_sshd(world, &eic_url, id);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(made.success());
    let public = read(&key.with_extension("pub"));
    let body = serde_json::json!({"InstanceId": id, "InstanceOSUser": world.ssh_user, "SSHPublicKey": public.trim()});
    let pushed = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "X-Amz-Target: AWSEC2InstanceConnectService.SendSSHPublicKey"])
        .args(["-H", "Authorization: AWS4-HMAC-SHA256 Credential=test/20261206/us-east-1/ec2-instance-connect/aws4_request, SignedHeaders=host, Signature=0"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1", "--data", &body.to_string(), &eic_url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&pushed.stdout).contains("\"Success\": true"), "{pushed:?}");
    let ssh = || {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&key)
            .args(["-p", &sshd.port.to_string(), &format!("{}@127.0.0.1", world.ssh_user), "true"])
            .output()
            .unwrap()
    };
    let fresh = ssh();
    assert!(fresh.status.success(), "{}", String::from_utf8_lossy(&fresh.stderr));
    std::thread::sleep(std::time::Duration::from_secs(4));
    let expired = ssh();
    assert!(!expired.status.success(), "the key still logs in after its lifetime");
    assert!(String::from_utf8_lossy(&expired.stderr).contains("Permission denied"), "{expired:?}");
}

/// A role whose `ec2:osuser` condition names another user: class ec2 (11), the call, the service's
/// words and a hint naming the action and the condition; nothing of the key is shown.
#[test]
fn a_refused_push_is_named_as_ec2_instance_connects_with_the_policy_in_the_hint() {
    let world = World::shared();
    let (_stand_in, eic_url) = own_stand_in(world, &["--deny-user", world.ssh_user.as_str()]);
    let id = stopped_instance(world);
    let (sshd, known) = instance_connect_sshd(world, &eic_url, &id);
    let outcome =
        instance_connect_run(world, &eic_url, &id, &sshd, &known).args(["run", "--check", "--image", "app"]).run();
    outcome.expect_code(11);
    assert!(
        outcome.stderr.contains("ec2-instance-connect:SendSSHPublicKey failed: AuthException"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains(&format!("ec2:osuser = {}", world.ssh_user)), "{}", outcome.stderr);
    assert!(!outcome.all_output().contains("PRIVATE KEY"));
}

/// Many builds pushing at once may be throttled: the push is tried again (1, 2, 4 s), and the run
/// goes on once it takes.
#[test]
fn a_throttled_push_is_tried_again_and_the_run_goes_on() {
    let world = World::shared();
    let (_stand_in, eic_url) = own_stand_in(world, &["--throttle-first", "2"]);
    let id = stopped_instance(world);
    let (sshd, known) = instance_connect_sshd(world, &eic_url, &id);
    let outcome =
        instance_connect_run(world, &eic_url, &id, &sshd, &known).args(["run", "--check", "--image", "app"]).run();
    outcome.expect_code(0);
    let retries: Vec<&str> = outcome.stderr.lines().filter(|line| line.contains("ThrottlingException")).collect();
    assert_eq!(retries.len(), 2, "{}", outcome.stderr);
    assert!(retries[0].contains("trying again in 1s") && retries[1].contains("trying again in 2s"), "{retries:?}");
    assert!(outcome.stderr.contains("pushed this run's key ("), "{}", outcome.stderr);
}

/// The key can only be pushed to an instance: a host named otherwise is a configuration error
/// before anything is connected.
#[test]
fn ec2_instance_connect_for_a_host_that_is_not_an_instance_is_a_config_error() {
    let world = World::shared();
    let outcome = Agent::new()
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", "ec2-instance-connect")
        .args(["run", "--check", "--image", "app"])
        .run();
    outcome.expect_code(3);
    assert!(outcome.stderr.contains("is not named by its instance id"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("ssh://ec2-user@i-0123456789abcdef0"), "{}", outcome.stderr);
    // The rehearsal says so too; a parameter holding the word is checked once resolved.
    let dry = Agent::new()
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", "ec2-instance-connect")
        .args(["run", "--dry", "--image", "app"])
        .run();
    dry.expect_code(3);
    assert!(dry.stderr.contains("JETS_SSH_KEY: is ec2-instance-connect, but ssh://"), "{}", dry.stderr);
    // A String or a SecureString parameter alike: the word is no secret, and is not masked.
    for secure in [false, true] {
        let parameter = format!("/{}/key", unique("eic"));
        crate::logins::put_parameter(world, &parameter, "ec2-instance-connect", secure);
        let resolved = crate::logins::with_aws(world)
            .env("DOCKER_HOST", world.ssh_url())
            .env("JETS_SSH_KEY", format!("SSM:{parameter}"))
            .args(["run", "--check", "--image", "app"])
            .run();
        resolved.expect_code(3);
        assert!(resolved.stderr.contains("is ec2-instance-connect, but ssh://"), "{}", resolved.stderr);
    }
}

/// The plan says the key is made for the run, pushed before connecting, and not written.
#[test]
fn the_plan_says_the_key_is_made_for_the_run_pushed_and_not_written() {
    let outcome = Agent::new()
        .env("DOCKER_HOST", "ssh://ec2-user@i-0123456789abcdef0")
        .env("JETS_SSH_KEY", "ec2-instance-connect")
        .args(["run", "--dry", "--image", "app"])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("made for this run and pushed with EC2 Instance Connect"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("is not written"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("PRIVATE KEY"));
}

/// A host per platform, each an instance: each gets its own push of the run's one key before it is
/// connected (the amd64 host is the world's daemon, the arm64 host the world's arm64 daemon, each
/// behind an sshd that takes only pushed keys).
#[test]
fn each_instance_of_the_run_gets_its_own_push_of_the_one_key() {
    let world = World::shared();
    let eic_url = world.var("TW_EIC_URL").expect("TW_EIC_URL (scripts/testworld up)").to_string();
    let (amd64, arm64) = (stopped_instance(world), stopped_instance(world));
    let (amd64_sshd, amd64_known) = instance_connect_sshd(world, &eic_url, &amd64);
    let (arm64_sshd, arm64_known) = instance_connect_sshd(world, &eic_url, &arm64);
    let arm64_socket = world.var("TW_ARM64_DOCKER_SOCK").expect("TW_ARM64_DOCKER_SOCK").to_string();
    let outcome = instance_connect_run(world, &eic_url, &amd64, &amd64_sshd, &format!("{amd64_known}\n{arm64_known}"))
        .env("DOCKER_HOST_ARM64", format!("ssh://{}@{arm64}:{}{arm64_socket}", world.ssh_user, arm64_sshd.port))
        .args(["run", "--check", "--image", "app", "--platform", "linux/amd64,linux/arm64"])
        .run();
    outcome.expect_code(0);
    let pushes: Vec<&str> = outcome.stderr.lines().filter(|line| line.contains("pushed this run's key (")).collect();
    assert_eq!(pushes.len(), 2, "{}", outcome.stderr);
    for id in [&amd64, &arm64] {
        assert!(pushes.iter().any(|line| line.contains(&format!("to {id} for "))), "{}", outcome.stderr);
    }
    let keys: Vec<&str> = pushes.iter().filter_map(|line| fingerprint_after(line, "pushed this run's key (")).collect();
    assert_eq!(keys[0], keys[1], "one key for the run: {pushes:?}");
    for sshd in [&amd64_sshd, &arm64_sshd] {
        assert!(read(&sshd.dir().join("sshd.log")).contains(keys[0]), "each sshd accepted the run's key");
    }
}
