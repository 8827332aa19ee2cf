//! Issue 13: no secret at any level. The whole pipeline at `RUST_LOG=trace -vv` against the real
//! test world with secrets that hold `"`, `\`, `%`, spaces and a 4-character password, and one
//! regression test per redaction fix (userinfo echo, panic hook, DOCKER_PASS newline, JSON-escaped
//! password, URL-encoded build arg).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use crate::agent::{Agent, Outcome};
use crate::logins::{put_parameter, with_aws};
use crate::world::{World, read};

const MASK: &str = "********";

/// A registry of the test's own (Debian's `docker-registry` with an htpasswd file), for users whose
/// passwords the test world does not have. Stopped when dropped.
struct OwnRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl OwnRegistry {
    fn start(users: &[(&str, &str)]) -> OwnRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut htpasswd = String::new();
        for (user, password) in users {
            // The password goes on stdin (-i), never on a command line.
            let mut child = Command::new("htpasswd")
                .args(["-iBn", user])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("htpasswd (apache2-utils)");
            child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "htpasswd for {user}");
            htpasswd.push_str(String::from_utf8_lossy(&output.stdout).trim());
            htpasswd.push('\n');
        }
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {addr}\n  secret: redaction-test-{pid}\n\
             auth:\n  htpasswd:\n    realm: redaction-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            pid = std::process::id(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry");
        let registry = OwnRegistry { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "the test's registry did not start on {}", registry.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text between the quotes of a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The text between the quotes of Rust's Debug of a string.
fn debug_escaped(text: &str) -> String {
    let quoted = format!("{text:?}");
    quoted[1..quoted.len() - 1].to_string()
}

/// The pieces of a longer base64 stream that encode these bytes at offset 0, 1 or 2 of a group.
fn base64_pieces(bytes: &[u8]) -> Vec<String> {
    (0..3usize)
        .filter_map(|offset| {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(bytes);
            let encoded = STANDARD_NO_PAD.encode(&padded);
            let (first, last) = ((8 * offset).div_ceil(6), (8 * padded.len()) / 6);
            (last >= first + 8).then(|| encoded[first..last].to_string())
        })
        .flat_map(|piece| [piece.replace('+', "-").replace('/', "_"), piece])
        .collect()
}

/// Every form in which a secret could be printed: as it is, JSON- and Debug-escaped (also JSON
/// inside Debug), each URL-encoded with `+` and `%20` for a space, and base64 (std and URL-safe,
/// alone and inside a longer message).
pub(crate) fn forms(secret: &str) -> Vec<String> {
    let json = json_escaped(secret);
    let mut forms = Vec::new();
    for escaped in [secret.to_string(), json.clone(), debug_escaped(secret), debug_escaped(&json)] {
        let plus: String = form_urlencoded::byte_serialize(escaped.as_bytes()).collect();
        forms.push(plus.replace('+', "%20"));
        forms.push(plus);
        forms.push(escaped);
    }
    for engine in [STANDARD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms.extend(base64_pieces(secret.as_bytes()));
    forms.sort();
    forms.dedup();
    forms
}

/// The forms of a registry login: the password's, and base64 of `user:password` (config.json's
/// `auth`, a Basic authorization) and of the `X-Registry-Auth` JSON.
pub(crate) fn login_forms(user: &str, password: &str) -> Vec<String> {
    let mut all = forms(password);
    let pair = format!("{user}:{password}");
    all.push(pair.clone());
    all.extend([STANDARD, URL_SAFE].map(|engine| engine.encode(&pair)));
    let header = serde_json::json!({ "username": user, "password": password, "serveraddress": "x" }).to_string();
    all.extend(base64_pieces(format!("\"password\":\"{}\"", json_escaped(password)).as_bytes()));
    all.push(URL_SAFE.encode(header));
    all
}

pub(crate) fn assert_no_form(outcome: &Outcome, what: &str, forms: &[String]) {
    let output = outcome.all_output();
    for form in forms {
        assert!(!output.contains(form.as_str()), "{what} appears in the output as {form:?}:\n{output}");
    }
}

#[test]
fn the_whole_pipeline_at_trace_prints_no_secret_in_any_form() {
    let world = World::shared();
    // A long password with `"`, `\`, `%` and spaces, and a 4-character one.
    let users = [("redact-long", "Pa\"s\\ %w0rd 9 x"), ("redact-short", "k9%Z")];
    let registry = OwnRegistry::start(&users);
    let build_secret = "b\"\\ %uild-s3cret";
    let ecr_token = STANDARD.encode(format!("AWS:{}", world.ecr_pass()));
    let key = read(&world.key_ed25519);
    for (user, password) in users {
        let prefix = format!("/agent-tests/redaction/{}/{user}", std::process::id());
        put_parameter(world, &format!("{prefix}/host"), &world.ssh_url(), false);
        put_parameter(world, &format!("{prefix}/key"), &key, false);
        put_parameter(world, &format!("{prefix}/known"), &read(&world.known_hosts_hashed), false);
        // Pasted with a line ending, as Parameter Store values often are.
        put_parameter(world, &format!("{prefix}/pass"), &format!("{password}\n"), true);
        let repository = format!("agent-tests/redaction-{}-{user}", std::process::id());
        let agent = with_aws(world)
            .env("RUST_LOG", "trace")
            .env("DOCKER_HOST", format!("SSM:{prefix}/host"))
            .env("JETS_SSH_KEY", format!("SSM:{prefix}/key"))
            .env("JETS_SSH_KNOWN", format!("SSM:{prefix}/known"))
            .env("DOCKER_REGISTRY", &registry.addr)
            .env("DOCKER_USER", user)
            .env("DOCKER_PASS", format!("SSM:{prefix}/pass"))
            .env("ECR_REGISTRY", &world.ecr_registry)
            .env("BUILD_TOKEN", build_secret)
            .args(["run", "-vv", "--image", &format!("{}/{repository}", world.ecr_registry), "--tag", "t1"])
            .args(["--build-arg", "BUILD_TOKEN"]);
        std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nARG BUILD_TOKEN\nCOPY Dockerfile /\n")
            .unwrap();
        let outcome = agent.run();
        outcome.expect_code(0);
        assert_eq!(world.ecr_tags(&repository), ["t1"], "{}", outcome.stderr);
        // The run was logged at length (the capped libraries at debug): the SDK, the BuildKit
        // session, the logins. (The build URL with its build args is bollard's debug line for the
        // classic builder only: see the next test.)
        assert!(outcome.stderr.contains(" DEBUG "), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("aws_smithy_runtime"), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("BuildKit session"), "{}", outcome.stderr);
        assert!(outcome.stderr.contains(&format!("logged in as {user}")), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("logged in with an ECR token"), "{}", outcome.stderr);

        assert_no_form(&outcome, "the registry password", &login_forms(user, password));
        assert_no_form(&outcome, "the build arg from the environment", &forms(build_secret));
        assert_no_form(&outcome, "the ECR token", &forms(&ecr_token));
        assert_no_form(&outcome, "the ECR password", &login_forms("AWS", &world.ecr_pass()));
        assert_no_form(&outcome, "the AWS secret key", &forms("test-secret-access-key"));
        for line in key.lines().filter(|line| !line.starts_with("-----")) {
            assert_no_form(&outcome, "a line of the SSH key", &forms(line));
        }
    }
}

#[test]
fn userinfo_echo_a_tcp_or_ssh_password_never_comes_back() {
    for host in ["tcp://alice:s3cr3t-pw@127.0.0.1", "tcp://alice:s3cr3t-pw@host:2375", "ssh://alice:s3/cr3t@host"] {
        let outcome = Agent::new().env("DOCKER_HOST", host).args(["run", "--dry", "--image", "app"]).run();
        outcome.expect_code(3);
        assert!(outcome.stderr.contains("DOCKER_HOST"), "{}", outcome.stderr);
        for typed in ["s3cr3t", "s3/cr3t", "alice", "pw@"] {
            assert!(!outcome.all_output().contains(typed), "{host}: {typed} came back:\n{}", outcome.all_output());
        }
    }
}

#[test]
fn panic_hook_prints_one_redacted_error_line_and_exits_1() {
    let secret = "pan1c \"secret\"";
    let outcome = Agent::new()
        .env("DOCKER_USER", "u")
        .env("DOCKER_PASS", secret)
        .env("AGENT_TEST_PANIC", secret)
        .args(["run", "--dry", "--image", "app"])
        .run();
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let errors: Vec<&str> = outcome.stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", outcome.stderr);
    assert!(errors[0].contains(&format!("a test panic with {MASK}")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("hint: "), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    assert_no_form(&outcome, "the secret in the panic", &forms(secret));
}

/// An agent that logs into the Docker Hub stand-in over the local socket.
fn hub_login(world: &World, password: &str) -> Agent {
    with_aws(world)
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .env("DOCKER_REGISTRY", &world.hub_registry)
        .env("DOCKER_USER", &world.hub_user)
        .env("DOCKER_PASS", password)
        .args(["run", "--image", "app", "--check"])
}

#[test]
fn docker_pass_newline_is_stripped_as_docker_login_does() {
    let world = World::shared();
    for ending in ["\n", "\r\n", "\n\n"] {
        let outcome = hub_login(world, &format!("{}{ending}", world.hub_pass())).run();
        outcome.expect_code(0);
        assert!(outcome.stderr.contains("logged in as hubuser"), "{ending:?}: {}", outcome.stderr);
    }
    // From Parameter Store too.
    let name = format!("/agent-tests/redaction/{}/newline-pass", std::process::id());
    put_parameter(world, &name, &format!("{}\n", world.hub_pass()), true);
    let outcome = hub_login(world, &format!("SSM:{name}")).run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("logged in as hubuser"), "{}", outcome.stderr);
}

#[test]
fn json_escaped_password_is_masked_on_a_failing_login_at_trace() {
    let world = World::shared();
    let wrong = "wr\"o\\ng %pw";
    let outcome = hub_login(world, wrong).env("RUST_LOG", "trace").args(["-vv"]).run();
    outcome.expect_code(40);
    assert!(outcome.stderr.contains("401"), "{}", outcome.stderr);
    assert_no_form(&outcome, "the wrong password", &login_forms(&world.hub_user, wrong));
}

#[test]
fn url_encoded_build_arg_from_the_environment_is_masked_at_debug() {
    let value = "my tok%en \"\\x";
    for (format, builder) in [("text", "classic"), ("json", "classic"), ("text", "buildkit")] {
        let agent = Agent::new()
            .env("DOCKER_HOST", "unix:///var/run/docker.sock")
            .env("RUST_LOG", "trace")
            .env("TOKEN", value)
            .args(["run", "-vv", "--log-format", format, "--no-push", "--builder", builder])
            .args(["--image", &format!("agent-tests/redaction-arg-{}", std::process::id())])
            .args(["--build-arg", "TOKEN", "--build-arg", "PLAIN=visible value"]);
        std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nARG TOKEN\nARG PLAIN\nCOPY Dockerfile /\n")
            .unwrap();
        let outcome = agent.run();
        outcome.expect_code(0);
        // Both builders' requests are the agent's own (not bollard's, whose debug line of the
        // classic build's URL held the value URL-encoded): no form of it anywhere, at trace.
        assert_no_form(&outcome, "the build arg from the environment", &forms(value));
    }
}
