//! Each server of the test world answers the way the other tests rely on. These need the world
//! up (`scripts/testworld up`); they use the system curl and ssh and the world's python (boto3).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::world::World;

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` with `input` on its standard input (how secrets reach curl: never on argv).
fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    {
        let mut stdin = child.stdin.take().expect("child stdin");
        stdin.write_all(input.as_bytes()).expect("write to child stdin");
    }
    child.wait_with_output().expect("wait for child")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A value quoted for a curl config file.
fn curl_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// HTTP status of `GET http://REGISTRY/v2/`, with basic auth given to curl on stdin.
fn registry_status(registry: &str, auth: Option<(&str, &str)>) -> String {
    let url = format!("http://{registry}/v2/");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}"]);
    let out = match auth {
        None => run(cmd.arg(&url).stdin(Stdio::null())),
        Some((user, pass)) => {
            cmd.args(["-K", "-"]).arg(&url);
            run_with_stdin(&mut cmd, &format!("user = {}\n", curl_quote(&format!("{user}:{pass}"))))
        }
    };
    stdout(&out)
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Runs a python snippet with boto3 against moto; the snippet finds the endpoint in TW_MOTO_URL.
fn moto_python(world: &World, script: &str, extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(&world.python);
    cmd.arg("-c")
        .arg(script)
        .env("TW_MOTO_URL", &world.moto_url)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE")
        .stdin(Stdio::null());
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    run(&mut cmd)
}

const BOTO3_CLIENT: &str = r#"
import base64, os, sys
import boto3
kw = dict(endpoint_url=os.environ["TW_MOTO_URL"], region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
"#;

#[test]
fn docker_daemon_answers_ping_on_unix_socket() {
    let world = World::shared();
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(&world.docker_sock)
        .arg("http://localhost/_ping"));
    assert_eq!(stdout(&out), "OK", "{}", describe(&out));
}

#[test]
fn docker_daemon_answers_ping_over_tcp() {
    let world = World::shared();
    let out =
        run(Command::new("curl").args(["-sS", "--max-time", "20"]).arg(format!("http://{}/_ping", world.docker_tcp)));
    assert_eq!(stdout(&out), "OK", "{}", describe(&out));
}

fn assert_login_as_agent_test_in_group_docker(out: &Output) {
    assert!(out.status.success(), "ssh login failed: {}", describe(out));
    let id = stdout(out);
    assert!(id.contains("(agent-test)"), "unexpected `id`: {id}");
    assert!(id.contains("(docker)"), "agent-test is not in group docker: {id}");
}

#[test]
fn sshd_accepts_the_ed25519_key() {
    let world = World::shared();
    let out = run(world.ssh_command(&world.key_ed25519, &world.known_hosts_hashed).arg("id"));
    assert_login_as_agent_test_in_group_docker(&out);
}

#[test]
fn sshd_accepts_the_rsa_pem_key() {
    let world = World::shared();
    let pem = std::fs::read_to_string(&world.key_rsa_pem).expect("read the RSA PEM key");
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "not a PEM RSA key");
    let out = run(world.ssh_command(&world.key_rsa_pem, &world.known_hosts_hashed).arg("id"));
    assert_login_as_agent_test_in_group_docker(&out);
}

#[test]
fn sshd_accepts_the_ecdsa_key_with_plain_known_hosts() {
    let world = World::shared();
    let out = run(world.ssh_command(&world.key_ecdsa, &world.known_hosts_plain).arg("id"));
    assert_login_as_agent_test_in_group_docker(&out);
}

#[test]
fn sshd_is_trusted_through_an_rsa_only_known_hosts() {
    let world = World::shared();
    let known = std::fs::read_to_string(&world.known_hosts_rsa).expect("read known_hosts_rsa");
    assert!(known.lines().all(|l| l.starts_with("|1|") && l.contains(" ssh-rsa ")), "{known}");
    let out = run(world.ssh_command(&world.key_ed25519, &world.known_hosts_rsa).arg("id"));
    assert_login_as_agent_test_in_group_docker(&out);
}

#[test]
fn sshd_accepts_the_encrypted_key_with_its_passphrase() {
    let world = World::shared();
    assert!(!world.key_passphrase().is_empty());
    let out = run(world
        .ssh_command_with(&world.key_ed25519_enc, &world.known_hosts_hashed, false)
        .env("SSH_ASKPASS", &world.key_askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env_remove("DISPLAY")
        .arg("id"));
    assert_login_as_agent_test_in_group_docker(&out);
}

#[test]
fn sshd_refuses_the_unauthorized_key() {
    let world = World::shared();
    let out = run(world.ssh_command(&world.key_unauthorized, &world.known_hosts_hashed).arg("true"));
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{}", describe(&out));
}

#[test]
fn sshd_logs_one_countable_line_per_connection() {
    let world = World::shared();
    let before = world.ssh_connection_count();
    let out = run(world.ssh_command(&world.key_ed25519, &world.known_hosts_hashed).arg("true"));
    assert!(out.status.success(), "{}", describe(&out));
    let after = world.ssh_connection_count();
    assert!(after > before, "sshd log {} did not count the connection ({before} -> {after})", world.ssh_log.display());
}

fn check_registry(name: &str, registry: &str, user: &str, pass: &str) {
    assert_eq!(registry_status(registry, None), "401", "{name} registry at {registry} without auth");
    assert_eq!(
        registry_status(registry, Some((user, pass))),
        "200",
        "{name} registry at {registry} with its credentials"
    );
    assert_eq!(
        registry_status(registry, Some((user, "not-the-password"))),
        "401",
        "{name} registry at {registry} with a wrong password"
    );
}

#[test]
fn hub_registry_demands_basic_auth() {
    let world = World::shared();
    check_registry("hub", &world.hub_registry, &world.hub_user, &world.hub_pass());
}

#[test]
fn ecr_registry_demands_basic_auth() {
    let world = World::shared();
    assert_eq!(world.ecr_user, "AWS");
    check_registry("ecr", &world.ecr_registry, &world.ecr_user, &world.ecr_pass());
}

#[test]
fn moto_keeps_an_ssm_secure_string() {
    let world = World::shared();
    let name = format!("/agent-testworld/{}", unique("param"));
    let script = format!(
        "{BOTO3_CLIENT}\n{}",
        r#"
ssm = boto3.client("ssm", **kw)
name = os.environ["TW_PARAM"]
ssm.put_parameter(Name=name, Value="value-of-" + name, Type="SecureString", Overwrite=True)
p = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
print(p["Type"])
print(p["Value"])
"#
    );
    let out = moto_python(world, &script, &[("TW_PARAM", name.as_str())]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), format!("SecureString\nvalue-of-{name}"), "{}", describe(&out));
}

#[test]
fn moto_ecr_token_opens_the_ecr_registry() {
    let world = World::shared();
    let script = format!(
        "{BOTO3_CLIENT}\n{}",
        r#"
ecr = boto3.client("ecr", **kw)
d = ecr.get_authorization_token()["authorizationData"][0]
print(base64.b64decode(d["authorizationToken"]).decode())
print(d["proxyEndpoint"])
"#
    );
    let out = moto_python(world, &script, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let token = lines.next().unwrap_or_default();
    assert_eq!(token, format!("{}:{}", world.ecr_user, world.ecr_pass()), "{}", describe(&out));
    let endpoint = lines.next().unwrap_or_default();
    assert!(endpoint.contains(&format!("{}.dkr.ecr.", world.ecr_account)), "proxyEndpoint {endpoint}");
    // the token's user and password open the ECR stand-in
    let (user, pass) = token.split_once(':').expect("token is USER:PASSWORD");
    assert_eq!(registry_status(&world.ecr_registry, Some((user, pass))), "200");
}
