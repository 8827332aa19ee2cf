//! Issue 21, the agent for arm64 CodeBuild: the static aarch64 binary that `scripts/release` leaves
//! in target/dist/<profile>/, run under QEMU user emulation (the world registers `qemu-aarch64`
//! with binfmt_misc), through the whole pipeline against the test world; and the two-arch image
//! index that `scripts/image --push` pushed to the world's Docker Hub stand-in.
//!
//! These tests build nothing: `scripts/test` runs `scripts/image --push` first, which runs
//! `scripts/release` (the aarch64 build takes minutes, more than a test may). A missing binary or
//! index fails them.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::agent::Agent;
use crate::logins::{put_parameter, with_aws};
use crate::platform::{Api, DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::redaction::{assert_no_form, forms, login_forms};
use crate::world::{World, read};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const NOT_BUILT: &str = "run scripts/release or scripts/image --push (scripts/test does)";
/// ELF's e_machine for AArch64.
const EM_AARCH64: u16 = 183;

/// target/dist/PROFILE/, as scripts/release leaves it: the release profile, or the one
/// `AGENT_PROFILE` names (scripts/test sets quick-static).
fn dist_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), |dir| manifest.join(dir));
    let profile = std::env::var("AGENT_PROFILE").unwrap_or_else(|_| "release".to_string());
    target.join("dist").join(profile)
}

/// The aarch64 binary; its absence fails the test.
fn aarch64_binary() -> PathBuf {
    let bin = dist_dir().join("agent-aarch64-linux");
    assert!(bin.is_file(), "no aarch64 binary at {}: {NOT_BUILT}", bin.display());
    bin
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn output(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("start {command:?}: {error}"))
}

/// This machine runs it only through QEMU: the test is about emulation, not a native run.
fn assert_this_machine_is_not_arm64() {
    let machine = output(Command::new("uname").arg("-m"));
    assert_eq!(text(&machine.stdout).trim(), "x86_64", "these tests run the aarch64 binary under QEMU on x86_64");
}

#[test]
fn aarch64_binary_is_a_static_arm64_elf_whose_checksum_is_in_sha256sums() {
    let bin = aarch64_binary();
    let mut header = [0u8; 20];
    std::fs::File::open(&bin).and_then(|mut file| file.read_exact(&mut header)).expect("read the ELF header");
    assert_eq!(&header[..4], b"\x7fELF", "{} is not an ELF", bin.display());
    assert_eq!(header[4], 2, "not a 64-bit ELF");
    assert_eq!(u16::from_le_bytes([header[18], header[19]]), EM_AARCH64, "not an AArch64 ELF");
    let file = output(Command::new("file").arg("-b").arg(&bin).env("LC_ALL", "C"));
    let said = text(&file.stdout);
    assert!(said.contains("ARM aarch64") && said.contains("statically linked"), "{said}");
    assert!(!said.contains("not stripped"), "the shipped binary is stripped: {said}");

    // Both binaries are in SHA256SUMS, and their files match it.
    let sums = read(&dist_dir().join("SHA256SUMS"));
    let names: Vec<&str> = sums.lines().filter_map(|line| line.split_whitespace().nth(1)).collect();
    assert_eq!(names, ["agent-x86_64-linux", "agent-aarch64-linux"], "{sums}");
    let check = output(Command::new("sha256sum").args(["--check", "--strict", "SHA256SUMS"]).current_dir(dist_dir()));
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
}

#[test]
fn aarch64_binary_prints_its_version_under_qemu() {
    assert_this_machine_is_not_arm64();
    let run = output(Command::new(aarch64_binary()).arg("--version"));
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout).trim(), format!("agent {VERSION}"), "a stale aarch64 binary: {NOT_BUILT}");
}

/// QEMU's user mode has no NETLINK_SOCK_DIAG: `agent host idle-stop` counts the daemon's socket's
/// clients from /proc/net/unix instead, and says that --ignore-client can leave none out.
#[test]
fn aarch64_binary_counts_socket_clients_without_sock_diag_under_qemu() {
    assert_this_machine_is_not_arm64();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let _client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    let state = dir.path().join("state");
    let run = output(
        Command::new(aarch64_binary())
            .args(["host", "idle-stop", "--after", "1m", "--dry", "--ignore-client", "monitor", "--socket"])
            .arg(&socket)
            .arg("--state")
            .arg(&state),
    );
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("1 client of the daemon's socket (a process not known)"), "{stderr}");
    assert!(stderr.contains("--ignore-client leaves none out"), "{stderr}");
}

#[test]
fn aarch64_binary_rehearses_a_jets_style_run_under_qemu_without_showing_the_key() {
    assert_this_machine_is_not_arm64();
    let world = World::shared();
    let key = read(&world.key_ed25519);
    let outcome = Agent::new()
        .program(&aarch64_binary())
        .env("DOCKER_HOST", world.ssh_url())
        .env("JETS_SSH_KEY", &key)
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
        .env("REPOSITORY_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app")
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", "89abcdef0123456789abcdef0123456789abcdef")
        .env("AWS_REGION", "us-east-1")
        .args(["run", "--dry"])
        .run();
    outcome.expect_code(0);
    for step in [
        &format!("agent {VERSION} plan"),
        "install ssh key",
        "install known_hosts",
        &format!("connect to {}", world.ssh_url()),
        "check daemon",
        "log in to ECR 123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "build 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:latest",
        "push 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:89abcde",
    ] {
        assert!(outcome.stdout.contains(step), "the plan lacks {step:?}:\n{}", outcome.stdout);
    }
    for line in key.lines().filter(|line| !line.starts_with("-----")) {
        assert_no_form(&outcome, "a line of the SSH key", &forms(line));
    }
}

/// The whole pipeline on arm64 (under QEMU), as an arm64 CodeBuild job runs it: every setting
/// from Parameter Store (host, key, known_hosts, the hub's password), the key and known_hosts
/// installed, one SSH connection, the Docker Hub login and the ECR token (moto), the build
/// through the BuildKit session, the push to the ECR stand-in and imagedefinitions.json; at
/// trace, no secret in any form.
#[test]
fn aarch64_binary_runs_the_whole_pipeline_over_ssh_under_qemu_and_prints_no_secret() {
    assert_this_machine_is_not_arm64();
    let world = World::shared();
    let key = read(&world.key_ed25519);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let prefix = format!("/agent-tests/aarch64/{}-{nanos}", std::process::id());
    put_parameter(world, &format!("{prefix}/host"), &world.ssh_url(), false);
    put_parameter(world, &format!("{prefix}/key"), &key, true);
    put_parameter(world, &format!("{prefix}/known"), &read(&world.known_hosts_hashed), false);
    put_parameter(world, &format!("{prefix}/pass"), &world.hub_pass(), true);
    let repository = format!("agent-tests/aarch64-{}-{nanos}", std::process::id());
    let image = format!("{}/{repository}", world.ecr_registry);
    let connections_before = world.ssh_connection_count();
    let agent = with_aws(world)
        .program(&aarch64_binary())
        .env("RUST_LOG", "trace")
        .env("DOCKER_HOST", format!("SSM:{prefix}/host"))
        .env("JETS_SSH_KEY", format!("SSM:{prefix}/key"))
        .env("JETS_SSH_KNOWN", format!("SSM:{prefix}/known"))
        .env("DOCKER_REGISTRY", &world.hub_registry)
        .env("DOCKER_USER", &world.hub_user)
        .env("DOCKER_PASS", format!("SSM:{prefix}/pass"))
        .env("ECR_REGISTRY", &world.ecr_registry)
        .args(["run", "-vv", "--image", &image, "--tag", "t1", "--image-definitions", "app"]);
    std::fs::write(agent.work.path().join("Dockerfile"), "FROM scratch\nCOPY app.txt /\n").unwrap();
    std::fs::write(agent.work.path().join("app.txt"), format!("built by the aarch64 agent {nanos}\n")).unwrap();
    let outcome = agent.run();
    outcome.expect_code(0);

    assert_eq!(world.ecr_tags(&repository), ["t1"], "{}", outcome.stderr);
    assert!(world.ssh_connection_count() > connections_before, "no SSH connection reached the world's sshd");
    for logged in ["BuildKit session", "logged in as hubuser", "logged in with an ECR token", "aws_smithy_runtime"] {
        assert!(outcome.stderr.contains(logged), "the log lacks {logged:?}:\n{}", outcome.stderr);
    }
    // The key and known_hosts were installed, as the Jets setup expects (later ssh commands use them).
    let ssh = agent.home.path().join(".ssh");
    assert_eq!(read(&ssh.join("id_rsa")).trim_end(), key.trim_end());
    assert_eq!(read(&ssh.join("known_hosts")).trim_end(), read(&world.known_hosts_hashed).trim_end());
    let definitions: serde_json::Value =
        serde_json::from_str(&read(&agent.work.path().join("imagedefinitions.json"))).expect("imagedefinitions.json");
    assert_eq!(definitions[0]["name"], "app", "{definitions}");
    assert_eq!(definitions[0]["imageUri"], format!("{image}:t1"), "{definitions}");

    assert_no_form(&outcome, "the hub password", &login_forms(&world.hub_user, &world.hub_pass()));
    assert_no_form(&outcome, "the ECR password", &login_forms("AWS", &world.ecr_pass()));
    assert_no_form(&outcome, "the AWS secret key", &forms("test-secret-access-key"));
    for line in key.lines().filter(|line| !line.starts_with("-----")) {
        assert_no_form(&outcome, "a line of the SSH key", &forms(line));
    }
}

/// The docker CLI on the world's arm64 host, logged into the hub stand-in in a config of its own
/// (the password on stdin).
struct Arm64Docker {
    socket: String,
    config: tempfile::TempDir,
}

impl Arm64Docker {
    fn logged_in(world: &World) -> Arm64Docker {
        let socket =
            world.var("TW_ARM64_DOCKER_SOCK").expect("TW_ARM64_DOCKER_SOCK: the world has no arm64 host").to_string();
        let docker = Arm64Docker { socket, config: tempfile::tempdir().unwrap() };
        let mut login = docker
            .command()
            .args(["login", &world.hub_registry, "--username", &world.hub_user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker login");
        login.stdin.take().unwrap().write_all(world.hub_pass().as_bytes()).unwrap();
        let done = login.wait_with_output().unwrap();
        assert!(done.status.success(), "docker login: {}", text(&done.stderr));
        docker
    }

    fn command(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .args(["-H", &format!("unix://{}", self.socket)])
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let done = output(self.command().args(args));
        assert!(done.status.success(), "docker {args:?}: {}{}", text(&done.stdout), text(&done.stderr));
        done
    }
}

/// The file at `path` in a container's export.
fn file_in_export(export: &[u8], path: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(export);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new(path) {
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            return contents;
        }
    }
    panic!("the image lacks /{path}");
}

/// `scripts/image --push` (run by scripts/test with the hub's login, the arm64 platform built on
/// the world's arm64 host) pushed REPOSITORY:VERSION and :latest as an index of linux/amd64 and
/// linux/arm64, each platform's config of its architecture; pulled on the arm64 host, its arm64
/// image runs its entrypoint under QEMU and holds this build's aarch64 binary.
#[test]
fn the_agents_two_arch_image_index_names_both_platforms_and_its_arm64_image_runs_on_the_arm64_host() {
    let world = World::shared();
    let pushed = world.state_dir.join("agent-image-index");
    assert!(pushed.is_file(), "no {}: {NOT_BUILT}", pushed.display());
    let repository = read(&pushed).trim().to_string();
    let name = repository
        .strip_prefix(&format!("{}/", world.hub_registry))
        .unwrap_or_else(|| panic!("{repository} is not in the hub stand-in {}", world.hub_registry));
    for tag in [VERSION, "latest"] {
        let (index, _) = world.manifest(Api::Hub, name, tag, &format!("{DOCKER_MANIFEST_LIST}, {OCI_INDEX}"));
        let manifests = index["manifests"].as_array().unwrap_or_else(|| panic!("{tag} is not an index: {index}"));
        let platforms: Vec<String> = manifests
            .iter()
            .map(|manifest| {
                format!("{}/{}", manifest["platform"]["os"], manifest["platform"]["architecture"]).replace('"', "")
            })
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{tag}: {index}");
        for (manifest, architecture) in manifests.iter().zip(["amd64", "arm64"]) {
            let digest = manifest["digest"].as_str().expect("a digest");
            assert_eq!(world.image_config(Api::Hub, name, digest)["architecture"], architecture, "{tag}: {index}");
        }
    }

    let docker = Arm64Docker::logged_in(world);
    let image = format!("{repository}:{VERSION}");
    docker.run(&["pull", "--quiet", "--platform", "linux/arm64", &image]);
    let inspect =
        docker.run(&["image", "inspect", "--format", "{{.Architecture}} {{json .Config.Entrypoint}}", &image]);
    assert_eq!(text(&inspect.stdout).trim(), r#"arm64 ["/agent"]"#);
    let version = docker.run(&["run", "--rm", "--platform", "linux/arm64", &image, "--version"]);
    assert_eq!(text(&version.stdout).trim(), format!("agent {VERSION}"));

    let created = docker.run(&["create", "--platform", "linux/arm64", &image]);
    let container = text(&created.stdout).trim().to_string();
    let export = output(docker.command().args(["export", &container]));
    let _ = docker.command().args(["rm", "--force", &container]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(export.status.success(), "docker export: {}", text(&export.stderr));
    let binary = std::fs::read(aarch64_binary()).unwrap();
    assert!(
        file_in_export(&export.stdout, "agent") == binary,
        "the arm64 image's /agent is not this build's: {NOT_BUILT}"
    );
}

/// The buildspec's install commands, with the download folder and the install path moved into
/// `dir` and `uname -m` saying `machine`; the `aws s3 cp` lines are done by `download`, which puts
/// files into the download folder. Returns the first failure.
fn run_buildspec_install(dir: &Path, machine: &str, download: &dyn Fn(&Path)) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let buildspec = read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/buildspec.yml")));
    let spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&buildspec).expect("buildspec.yml is YAML");
    let commands: Vec<&str> = spec["phases"]["install"]["commands"]
        .as_sequence()
        .expect("install commands")
        .iter()
        .filter_map(|command| command.as_str())
        .collect();
    assert!(commands.iter().any(|command| command.contains("sha256sum --check")), "no checksum check: {commands:?}");
    let fake_machine = dir.join("fake-machine");
    std::fs::create_dir_all(&fake_machine).unwrap();
    let uname = fake_machine.join("uname");
    std::fs::write(&uname, format!("#!/bin/sh\necho {machine}\n")).unwrap();
    std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("usr-local-bin")).unwrap();
    let path = format!("{}:{}", fake_machine.display(), std::env::var("PATH").unwrap_or_default());
    let mut downloaded = false;
    for command in commands {
        if command.starts_with("agent ") {
            continue;
        }
        if command.starts_with("aws ") {
            if !downloaded {
                download(&dir.join("download"));
                downloaded = true;
            }
            continue;
        }
        let command = command
            .replace("/tmp/agent-download", &dir.join("download").display().to_string())
            .replace("/usr/local/bin/agent", &dir.join("usr-local-bin/agent").display().to_string());
        let done = output(Command::new("sh").arg("-c").arg(&command).env("PATH", &path));
        if !done.status.success() {
            return Err(format!("`{command}` failed: {}{}", text(&done.stdout), text(&done.stderr)));
        }
    }
    Ok(())
}

/// What `aws s3 cp` gets from a folder holding scripts/release's files: `names` from target/dist/,
/// each saved as given.
fn download_from_dist(names: &[(&str, &str)]) -> impl Fn(&Path) + use<> {
    let names: Vec<(String, String)> = names.iter().map(|(from, to)| (from.to_string(), to.to_string())).collect();
    move |download: &Path| {
        for (from, to) in &names {
            std::fs::copy(dist_dir().join(from), download.join(to))
                .unwrap_or_else(|error| panic!("{from}: {error} ({NOT_BUILT})"));
        }
    }
}

/// On an arm64 CodeBuild machine the buildspec installs agent-aarch64-linux (run here under QEMU)
/// after checking it against SHA256SUMS; on x86_64, agent-x86_64-linux; a binary whose checksum
/// differs (here the x86_64 one uploaded under the aarch64 name) is refused and not installed.
#[test]
fn buildspec_installs_the_binary_of_the_machine_only_when_its_checksum_matches() {
    for machine in ["aarch64", "x86_64"] {
        let dir = tempfile::tempdir().unwrap();
        let binary = format!("agent-{machine}-linux");
        let download = download_from_dist(&[("SHA256SUMS", "SHA256SUMS"), (&binary, &binary)]);
        run_buildspec_install(dir.path(), machine, &download).unwrap_or_else(|error| panic!("{machine}: {error}"));
        let installed = dir.path().join("usr-local-bin/agent");
        assert!(std::fs::read(&installed).unwrap() == std::fs::read(dist_dir().join(&binary)).unwrap(), "{machine}");
        let version = output(Command::new(&installed).arg("--version"));
        assert_eq!(text(&version.stdout).trim(), format!("agent {VERSION}"), "{machine}: {}", text(&version.stderr));
    }

    let dir = tempfile::tempdir().unwrap();
    let download = download_from_dist(&[("SHA256SUMS", "SHA256SUMS"), ("agent-x86_64-linux", "agent-aarch64-linux")]);
    let error = run_buildspec_install(dir.path(), "aarch64", &download).expect_err("a wrong binary was installed");
    assert!(error.contains("sha256sum --check") && error.contains("FAILED"), "{error}");
    assert!(!dir.path().join("usr-local-bin/agent").exists(), "installed despite the check");
}
