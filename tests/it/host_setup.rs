//! Issue 25: a user's first hour. `agent host keygen` makes the login key into Parameter Store,
//! `agent host keyscan` the host's keys; a run that reads both from Parameter Store connects,
//! builds and pushes. Against the real parts: an sshd of the test's own (its authorized_keys a
//! file of the test's), moto's Parameter Store, the world's daemon and ECR stand-in.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::agent::{Agent, Outcome};
use crate::build::{example_app, full_run, unique};
use crate::faults::own_sshd_authorizing;
use crate::world::World;

/// An `agent` with moto's Parameter Store as its AWS.
fn with_aws(world: &World) -> Agent {
    Agent::new()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &world.moto_url)
}

/// A parameter's value, decrypted, as moto holds it.
fn parameter(world: &World, name: &str) -> String {
    let script = format!(
        "import sys, boto3\n\
         ssm = boto3.client('ssm', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
         p = ssm.get_parameter(Name=sys.stdin.read(), WithDecryption=True)['Parameter']\n\
         sys.stdout.write(p['Type'] + '\\n' + p['Value'])\n",
        world.moto_url
    );
    let mut child = Command::new(&world.python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(name.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "get_parameter {name}");
    String::from_utf8(output.stdout).unwrap()
}

/// No line of the private key in the run's output.
fn assert_key_not_in(outcome: &Outcome, private: &str) {
    let output = outcome.all_output();
    for line in private.lines().filter(|line| !line.starts_with("-----") && line.len() >= 16) {
        assert!(!output.contains(line), "a line of the private key appears in the output:\n{output}");
    }
}

/// No file under `dir` holds a line of the private key.
fn assert_key_not_under(dir: &Path, private: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_key_not_under(&path, private);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            for line in private.lines().filter(|line| !line.starts_with("-----") && line.len() >= 16) {
                assert!(!text.contains(line), "{} holds a line of the private key", path.display());
            }
        }
    }
}

#[test]
fn keygen_and_keyscan_into_parameter_store_then_a_run_from_them_builds_and_pushes() {
    let world = World::shared();
    let prefix = format!("/agent-tests/host-setup/{}", unique("keys").replace('/', "-"));
    let (key_parameter, known_parameter) = (format!("{prefix}/ssh-key"), format!("{prefix}/known-hosts"));

    // keygen: the public key on stdout, the private key in Parameter Store only (traced as loudly
    // as the agent can).
    let keygen_agent = with_aws(world).env("RUST_LOG", "trace").args([
        "-vv",
        "host",
        "keygen",
        "--put-parameter",
        &key_parameter,
        "--comment",
        "ci@agent-tests",
    ]);
    let keygen = keygen_agent.run();
    keygen.expect_code(0);
    let public = keygen.stdout.trim().to_string();
    assert!(public.starts_with("ssh-ed25519 AAAA") && public.ends_with(" ci@agent-tests"), "{public}");
    let stored = parameter(world, &key_parameter);
    let (kind, private) = stored.split_once('\n').unwrap();
    assert_eq!(kind, "SecureString");
    assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "the parameter holds an OpenSSH key");
    assert_key_not_in(&keygen, private);
    assert_key_not_under(keygen_agent.home.path(), private);
    assert_key_not_under(keygen_agent.work.path(), private);
    assert!(keygen.stderr.contains(&format!("set JETS_SSH_KEY: SSM:{key_parameter}")), "{}", keygen.stderr);

    // The host authorizes the public key (an sshd of the test's own, its own authorized_keys).
    let keys_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(keys_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let authorized = keys_dir.path().join("authorized_keys");
    std::fs::write(&authorized, format!("{public}\n")).unwrap();
    let (sshd, _) = own_sshd_authorizing(world, Some(&authorized));
    let url = format!("ssh://{}@127.0.0.1:{}", world.ssh_user, sshd.port);

    // keyscan: hashed lines on stdout, fingerprints on stderr, the lines in Parameter Store.
    let keyscan = with_aws(world).args(["host", "keyscan", &url, "--put-parameter", &known_parameter]).run();
    keyscan.expect_code(0);
    let lines: Vec<&str> = keyscan.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "ed25519, ecdsa and rsa: {}", keyscan.stdout);
    assert!(lines.iter().all(|line| line.starts_with("|1|")), "hashed, as ssh-keyscan -H: {}", keyscan.stdout);
    for kind in ["ssh-ed25519 SHA256:", "ecdsa-sha2-nistp256 SHA256:", "ssh-rsa SHA256:"] {
        assert!(keyscan.stderr.contains(kind), "{kind}: {}", keyscan.stderr);
    }
    assert!(keyscan.stderr.contains("ssh-keygen -lf"), "{}", keyscan.stderr);
    let known = parameter(world, &known_parameter);
    assert_eq!(known.split_once('\n').unwrap().1.trim(), keyscan.stdout.trim());

    // The fingerprints are the host's: the same as OpenSSH's ssh-keyscan reads.
    let openssh = Command::new("sh")
        .arg("-c")
        .arg(format!("ssh-keyscan -p {} 127.0.0.1 2>/dev/null | ssh-keygen -lf -", sshd.port))
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&openssh.stdout).lines() {
        let fingerprint = line.split_whitespace().nth(1).unwrap();
        assert!(keyscan.stderr.contains(fingerprint), "{fingerprint} missing from {}", keyscan.stderr);
    }

    // The run reads both from Parameter Store, connects, builds and pushes.
    let repository = unique("host-setup");
    let agent = full_run(world, &repository)
        .env("DOCKER_HOST", &url)
        .env("JETS_SSH_KEY", format!("SSM:{key_parameter}"))
        .env("JETS_SSH_KNOWN", format!("SSM:{known_parameter}"));
    let app = example_app(agent.work.path());
    let run = agent.args(["run", "--context", app.to_str().unwrap()]).run();
    run.expect_code(0);
    assert_eq!(world.ecr_tags(&repository).len(), 1, "{}", run.stderr);
    assert_key_not_in(&run, private);

    // Never replaced unless told.
    let again = with_aws(world).args(["host", "keygen", "--put-parameter", &key_parameter]).run();
    again.expect_code(10);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert!(again.stderr.contains("--overwrite"), "{}", again.stderr);
    assert_eq!(parameter(world, &key_parameter), stored, "the refused keygen changed nothing");
    let replaced = with_aws(world).args(["host", "keygen", "--put-parameter", &key_parameter, "--overwrite"]).run();
    replaced.expect_code(0);
    assert_ne!(parameter(world, &key_parameter), stored);
    let again = with_aws(world).args(["host", "keyscan", &url, "--put-parameter", &known_parameter]).run();
    again.expect_code(10);
    assert!(again.stdout.is_empty(), "nothing printed when the parameter is refused: {}", again.stdout);
}

#[test]
fn keyscan_names_what_is_wrong_with_the_host() {
    let world = World::shared();
    let not_ssh = Agent::new().args(["host", "keyscan", "tcp://127.0.0.1:2375"]).run();
    not_ssh.expect_code(3);
    assert!(not_ssh.stderr.contains("not an ssh:// host"), "{}", not_ssh.stderr);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused = Agent::new().args(["host", "keyscan", &format!("ssh://u@127.0.0.1:{port}")]).run();
    refused.expect_code(21);
    let dry = with_aws(world)
        .args(["host", "keyscan", &format!("ssh://u@127.0.0.1:{port}"), "--put-parameter", "/x", "--dry"])
        .run();
    dry.expect_code(0);
    assert!(dry.stderr.contains("would store the lines in the SecureString /x"), "{}", dry.stderr);
    let dry = with_aws(world).args(["host", "keygen", "--put-parameter", "/agent-tests/never", "--dry"]).run();
    dry.expect_code(0);
    assert!(dry.stdout.is_empty(), "no key is made by a dry run");
}

/// The example host's CloudFormation template (examples/host) is valid: cfn-lint, from PyPI,
/// installed into the world's venv by `scripts/testworld install`.
#[test]
fn the_host_template_passes_cfn_lint() {
    let world = World::shared();
    let cfn_lint = world.python.parent().expect("the venv's bin").join("cfn-lint");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/host/host.yaml");
    let output = Command::new(&cfn_lint).arg(&template).output().expect("cfn-lint (scripts/testworld install)");
    assert!(
        output.status.success(),
        "cfn-lint {}:\n{}{}",
        template.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The template's UserData is a valid shell script with the parameters filled in (`bash -n`), and
/// with OnDemand its idle-stop units say what examples/host's do.
#[test]
fn the_host_templates_user_data_is_a_shell_script_whose_idle_units_match_the_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/host");
    let template = std::fs::read_to_string(dir.join("host.yaml")).unwrap();
    let start = template.find("Fn::Base64: !Sub |\n").expect("UserData") + "Fn::Base64: !Sub |\n".len();
    let block = &template[start..];
    let end = block.find("\n\n").unwrap_or(block.len());
    let mut script = String::new();
    for line in block[..end].lines() {
        script.push_str(line.strip_prefix("          ").unwrap_or(line.trim_start()));
        script.push('\n');
    }
    for (name, value) in [
        ("KeepStorage", "60GB"),
        ("AuthorizedKey", ""),
        ("OnDemand", "true"),
        ("AgentUrl", "https://example.com/agent-x86_64-linux"),
        ("IdleMinutes", "30"),
    ] {
        script = script.replace(&format!("${{{name}}}"), value);
    }
    assert!(!script.contains("${"), "a parameter the test does not fill: {script}");
    let checked = Command::new("bash").args(["-n", "-c", &script]).output().unwrap();
    assert!(checked.status.success(), "{}\n{script}", String::from_utf8_lossy(&checked.stderr));
    let service = std::fs::read_to_string(dir.join("agent-idle-stop.service")).unwrap();
    let timer = std::fs::read_to_string(dir.join("agent-idle-stop.timer")).unwrap();
    for line in service.lines().chain(timer.lines()) {
        if line.starts_with("ExecStart=") || line.starts_with("On") || line.starts_with("Type=") {
            assert!(script.lines().any(|each| each == line), "{line:?} is not in the template's units:\n{script}");
        }
    }
}
