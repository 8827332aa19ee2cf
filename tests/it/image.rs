//! The release binary and the agent's own image, as `scripts/image` leaves them: the binary is
//! static, and the `FROM scratch` image built from it (by the agent, on the local daemon) runs
//! `--version`, a Jets-style `run --dry` and a `run --check` against a mounted daemon socket.
//!
//! These tests build nothing: `scripts/test` runs `scripts/image` first (a release build takes
//! minutes, more than a test may).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const SOCKET: &str = "/var/run/docker.sock";
const NOT_BUILT: &str = "run scripts/image first (scripts/test does)";

fn image() -> String {
    format!("agent:{VERSION}")
}

/// target/dist/PROFILE/agent-x86_64-linux, as scripts/release leaves it (stripped): the release
/// profile, or the one `AGENT_PROFILE` names (scripts/test sets quick-static).
fn release_binary() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), |dir| manifest.join(dir));
    let profile = std::env::var("AGENT_PROFILE").unwrap_or_else(|_| "release".to_string());
    let bin = target.join("dist").join(profile).join("agent-x86_64-linux");
    assert!(bin.is_file(), "no release binary at {}: {NOT_BUILT}", bin.display());
    bin
}

/// The docker CLI, on the local daemon whatever DOCKER_HOST says: the variables a test passes to
/// the agent in the container (`-e DOCKER_HOST`) must not redirect the CLI itself.
fn docker() -> Command {
    let mut command = Command::new("docker");
    command.args(["-H", &format!("unix://{SOCKET}")]).env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT");
    command.stdin(Stdio::null());
    command
}

fn output(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("start {command:?}: {error}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the image exists, with a hint when it does not.
fn require_image() {
    let inspect = output(docker().args(["image", "inspect", "--format", "{{.Id}}", &image()]));
    assert!(inspect.status.success(), "no image {}: {NOT_BUILT}\n{}", image(), text(&inspect.stderr));
}

/// A throwaway ed25519 key (private key text, public key line).
fn throwaway_key() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "image-test", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    (std::fs::read_to_string(&path).unwrap(), std::fs::read_to_string(path.with_extension("pub")).unwrap())
}

/// A build context with a one-line Dockerfile, to mount where the image's working directory is
/// (as CodeBuild's source would be), readable by the image's user.
fn context() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    work
}

#[test]
fn release_binary_is_static_and_of_this_version() {
    let bin = release_binary();
    let ldd = output(Command::new("ldd").arg(&bin).env("LC_ALL", "C"));
    let said = format!("{}{}", text(&ldd.stdout), text(&ldd.stderr));
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "{} is not static; ldd says:\n{said}",
        bin.display()
    );
    let version = output(Command::new(&bin).arg("--version"));
    assert!(version.status.success());
    assert_eq!(text(&version.stdout).trim(), format!("agent {VERSION}"), "the release binary is stale: {NOT_BUILT}");
}

#[test]
fn image_prints_its_version() {
    require_image();
    let run = output(docker().args(["run", "--rm", &image(), "--version"]));
    assert!(run.status.success(), "docker run failed:\n{}", text(&run.stderr));
    assert_eq!(text(&run.stdout).trim(), format!("agent {VERSION}"));
}

/// Removes a container made with `docker create`, also when the test fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "--force", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[test]
fn image_holds_the_release_binary_and_what_it_needs_at_run_time() {
    require_image();
    let config = output(docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{.Config.User}} {{.Config.WorkingDir}}",
        &image(),
    ]));
    assert_eq!(text(&config.stdout).trim(), r#"["/agent"] agent /work"#);

    let created = output(docker().args(["create", &image()]));
    assert!(created.status.success(), "docker create failed:\n{}", text(&created.stderr));
    let container = Container(text(&created.stdout).trim().to_string());
    let export = output(docker().args(["export", &container.0]));
    assert!(export.status.success(), "docker export failed:\n{}", text(&export.stderr));

    // path -> (mode, uid, contents)
    let mut entries = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(export.stdout.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string().trim_end_matches('/').to_string();
        let (mode, uid) = (entry.header().mode().unwrap(), entry.header().uid().unwrap());
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).unwrap();
        entries.insert(path, (mode, uid, contents));
    }
    let entry = |path: &str| entries.get(path).unwrap_or_else(|| panic!("the image lacks /{path}"));

    let binary = std::fs::read(release_binary()).unwrap();
    let (mode, uid, contents) = entry("agent");
    assert!(*contents == binary, "/agent is not the release binary: {NOT_BUILT}");
    assert_eq!((mode & 0o7777, *uid), (0o755, 0));

    let passwd = String::from_utf8(entry("etc/passwd").2.clone()).unwrap();
    assert!(passwd.lines().any(|line| line == "agent:x:1000:1000:agent:/home/agent:/sbin/nologin"), "{passwd}");
    assert!(String::from_utf8_lossy(&entry("etc/group").2).lines().any(|line| line == "agent:x:1000:"));
    let (mode, _, certs) = entry("etc/ssl/certs/ca-certificates.crt");
    assert_eq!(mode & 0o777, 0o644);
    assert!(String::from_utf8_lossy(certs).matches("BEGIN CERTIFICATE").count() > 100, "too few CA roots");

    for (path, mode, uid) in [
        ("tmp", 0o1777, 0),
        ("root", 0o700, 0),
        ("home", 0o755, 0),
        ("home/agent", 0o700, 1000),
        ("work", 0o755, 1000),
        ("etc", 0o755, 0),
    ] {
        let (actual_mode, actual_uid, _) = entry(path);
        assert_eq!((actual_mode & 0o7777, *actual_uid), (mode, uid), "mode and owner of /{path}");
    }
}

#[test]
fn image_rehearses_a_jets_style_run_without_showing_the_key() {
    require_image();
    let (key, public) = throwaway_key();
    let known = format!("build.example.com {}", public.trim());
    let work = context();

    // The values travel in the environment of `docker run`, never on its command line.
    let run = output(
        docker()
            .args(["run", "--rm", "-v", &format!("{}:/work:ro", work.path().display())])
            .args(["-e", "DOCKER_HOST=ssh://ec2-user@build.example.com"])
            .args(["-e", "JETS_SSH_KEY", "-e", "JETS_SSH_KNOWN", "-e", "REPOSITORY_URI"])
            .args(["-e", "CODEBUILD_RESOLVED_SOURCE_VERSION", "-e", "AWS_REGION"])
            .args([&image(), "run", "--dry"])
            .env("JETS_SSH_KEY", &key)
            .env("JETS_SSH_KNOWN", &known)
            .env("REPOSITORY_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app")
            .env("CODEBUILD_RESOLVED_SOURCE_VERSION", "89abcdef0123456789abcdef0123456789abcdef")
            .env("AWS_REGION", "us-east-1"),
    );
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    for line in key.lines().filter(|line| !line.starts_with("-----")) {
        assert!(
            !stdout.contains(line) && !stderr.contains(line),
            "a line of the key appears in the output:\n{stdout}{stderr}"
        );
    }
    for step in [
        &format!("agent {VERSION} plan"),
        "install ssh key",
        "write /home/agent/.ssh/id_rsa",
        "install known_hosts",
        "connect to ssh://ec2-user@build.example.com",
        "check daemon",
        "log in to ECR 123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "context /work: 1 file",
        "build 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:latest",
        "tag 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:89abcde",
        "push 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:latest",
        "push 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:89abcde",
    ] {
        assert!(stdout.contains(step), "the plan lacks {step:?}:\n{stdout}");
    }
}

#[test]
fn image_checks_the_local_daemon_through_a_mounted_socket() {
    require_image();
    let work = context();
    let group = std::fs::metadata(SOCKET).unwrap_or_else(|error| panic!("{SOCKET}: {error}")).gid();
    // The image's user (uid 1000) opens the socket through the socket's group, as a CodeBuild
    // job would pass it with --group-add.
    let run = output(
        docker()
            .args(["run", "--rm", "-v", &format!("{}:/work:ro", work.path().display())])
            .args(["-v", &format!("{SOCKET}:{SOCKET}"), "--group-add", &group.to_string()])
            .args([&image(), "run", "--check", "--image", "agent-test/image-check"]),
    );
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("connect to unix:///var/run/docker.sock: connected over unix"), "{all}");
    assert!(all.contains("check daemon: Docker"), "{all}");
    assert!(all.contains("skipped (--check changes nothing)"), "{all}");
}
