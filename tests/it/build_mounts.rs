//! Issue 14: build secrets (`--secret`) and SSH agent forwarding (`--ssh`) over the BuildKit
//! session, against the real daemon: a RUN step proves it saw each value without printing it, no
//! output and no layer of the image holds a value, a missing required secret names its id, and the
//! classic builder refuses the flags before anything runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent::{Agent, Outcome};
use crate::world::{Engine, World, on_every_engine};

/// Values unique to one test run, so that no cached layer can stand in for the proof.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn sha256(value: &str) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(value.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap().to_string()
}

/// A context with a static busybox installed as /bin, and `run` as its last lines.
fn busybox_context(dir: &Path, run: &str) -> PathBuf {
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).expect("busybox (from busybox-static)");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin\"]\n{run}\n"
        ),
    )
    .unwrap();
    context
}

/// Every encoding of a value a careless log could show: as is, base64, hex.
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine;
    vec![
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
        value.bytes().map(|byte| format!("{byte:02x}")).collect(),
    ]
}

fn assert_nowhere(engine: &Engine, outcome: &Outcome, image: &str, values: &[&str]) {
    let output = outcome.all_output();
    let saved = engine.docker().args(["save", image]).output().expect("docker save");
    assert!(saved.status.success(), "docker save {image}");
    let history = engine.docker().args(["history", "--no-trunc", image]).output().expect("docker history");
    let inspect = engine.docker().args(["image", "inspect", image]).output().expect("docker inspect");
    let image_bytes = [saved.stdout, history.stdout, inspect.stdout].concat();
    for value in values {
        for encoded in encodings(value) {
            assert!(!output.contains(&encoded), "a secret ({encoded}) appears in the output:\n{output}");
            assert!(
                !image_bytes.windows(encoded.len()).any(|window| window == encoded.as_bytes()),
                "a secret ({encoded}) is in the image {image} (docker save, history or inspect)"
            );
        }
    }
}

fn remove_image(image: &str) {
    crate::world::remove_images_after_the_run(&[image]);
}

/// Removes `image` from `engine`: from the shared 20.10 daemon once the run is over (see
/// [`crate::world::remove_images_after_the_run`]), from a newer engine now.
fn remove_image_on(engine: &Engine, image: &str) {
    if engine.is_bookworm() {
        remove_image(image);
    } else {
        let _ = engine.docker().args(["rmi", "-f", image]).output();
    }
}

/// A run over SSH on `engine`, Jets-style.
fn over_ssh_to(engine: &Engine) -> Agent {
    let world = World::shared();
    Agent::new()
        .env("DOCKER_HOST", &engine.docker_host)
        .env("JETS_SSH_KEY", std::fs::read_to_string(&world.key_ed25519).unwrap())
        .env("JETS_SSH_KNOWN", std::fs::read_to_string(&world.known_hosts_hashed).unwrap())
}

on_every_engine! {
    fn secrets_from_env_and_from_ssm_reach_the_run_step_and_appear_in_no_output_nor_the_image(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let env_value = unique("env-secret-value");
        let ssm_value = unique("ssm-secret-value");
        let parameter = format!("/agent-tests/build-secret/{}/{}", engine.name, std::process::id());
        crate::logins::put_parameter(world, &parameter, &ssm_value, true);
        let agent = over_ssh_to(engine)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &world.moto_url)
            .env("NPM_TOKEN", &env_value)
            .env("API_KEY", format!("SSM:{parameter}"));
        // The step compares digests (build args, not secret) and prints only "ok".
        let context = busybox_context(
            agent.work.path(),
            "ARG ENV_SHA\nARG SSM_SHA\n\
             RUN --mount=type=secret,id=npm,required=true --mount=type=secret,id=api,required=true \
             test \"$(sha256sum < /run/secrets/npm | cut -d' ' -f1)\" = \"$ENV_SHA\" && \
             test \"$(sha256sum < /run/secrets/api | cut -d' ' -f1)\" = \"$SSM_SHA\" && \
             test ! -e /run/secrets/npm.copy && echo ok > /secrets-seen",
        );
        let tag = unique("secrets");
        let image = format!("agent-it/secrets:{tag}");
        let outcome = agent
            .args(["-vv", "run", "--context", context.to_str().unwrap(), "--image", "agent-it/secrets", "--tag", &tag])
            .args([
                "--no-push",
                "--builder",
                "buildkit",
                "--secret",
                "id=npm,env=NPM_TOKEN",
                "--secret",
                "id=api,env=API_KEY",
            ])
            .args(["--build-arg", &format!("ENV_SHA={}", sha256(&env_value))])
            .args(["--build-arg", &format!("SSM_SHA={}", sha256(&ssm_value))])
            .run();
        outcome.expect_code(0);
        let seen = engine
            .docker()
            .args(["run", "--rm", "--entrypoint", "/bin/cat", &image, "/secrets-seen"])
            .output()
            .expect("docker run");
        assert_eq!(String::from_utf8_lossy(&seen.stdout), "ok\n", "{}", outcome.stderr);
        assert_nowhere(engine, &outcome, &image, &[&env_value, &ssm_value]);
        remove_image_on(engine, &image);
    }
}

/// A BuildKit build whose uncached RUN step needs `mount` (required), with no flag serving it.
fn build_with_an_unserved_mount(mount: &str, image: &str) -> Outcome {
    World::shared();
    let agent = Agent::new();
    let run = format!("RUN --mount={mount},required=true echo {}", unique("never-cached"));
    let context = busybox_context(agent.work.path(), &run);
    agent
        .args(["run", "--context", context.to_str().unwrap(), "--image", image])
        .args(["--tag", &unique("t"), "--no-push", "--builder", "buildkit"])
        .run()
}

#[test]
fn a_missing_required_secret_fails_the_build_naming_its_id() {
    let outcome = build_with_an_unserved_mount("type=secret,id=npm_token", "agent-it/missing-secret");
    outcome.expect_code(50);
    assert!(outcome.stderr.contains("npm_token"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("hint: the Dockerfile mounts the secret \"npm_token\""), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("--secret id=npm_token,"), "{}", outcome.stderr);
}

#[test]
fn secret_and_ssh_with_the_classic_builder_are_config_errors_before_anything_runs() {
    let agent = Agent::new().env("TOKEN", "classic-secret-value").env("DOCKER_HOST", "tcp://127.0.0.1:9");
    let outcome = agent
        .args(["run", "--image", "agent-it/classic", "--builder", "classic", "--secret", "id=t,env=TOKEN"])
        .args(["--ssh", "default=missing-key"])
        .run();
    outcome.expect_code(3);
    assert!(outcome.stderr.contains("--secret: needs BuildKit, but the classic builder is chosen (flag --builder)"));
    assert!(outcome.stderr.contains("--ssh: needs BuildKit"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("missing-key does not exist"), "every problem at once:\n{}", outcome.stderr);
    assert!(!outcome.stderr.contains("connect"), "nothing ran:\n{}", outcome.stderr);
    let from_env = Agent::new().env("DOCKER_BUILDKIT", "0").env("TOKEN", "classic-secret-value");
    let outcome = from_env.args(["run", "--image", "agent-it/classic", "--secret", "id=t,env=TOKEN"]).run();
    outcome.expect_code(3);
    assert!(outcome.stderr.contains("(env DOCKER_BUILDKIT)"), "{}", outcome.stderr);
}

#[test]
fn missing_secret_sources_are_listed_together_as_config_errors() {
    let outcome = Agent::new()
        .args(["run", "--image", "agent-it/x", "--secret", "id=a,env=UNSET_VAR", "--secret", "id=b,src=nowhere.txt"])
        .args(["--ssh", "default"])
        .run();
    outcome.expect_code(3);
    for expected in [
        "--secret id=a: reads the environment variable UNSET_VAR, which is not set",
        "--secret id=b: the file",
        "--ssh default: forwards the key in JETS_SSH_KEY, which is not set",
    ] {
        assert!(outcome.stderr.contains(expected), "{expected}\n{}", outcome.stderr);
    }
}

#[test]
fn the_dry_run_lists_secrets_and_ssh_ids_without_values() {
    let agent = Agent::new().env("TOKEN", "dry-run-secret-value").env("FROM_SSM", "SSM:/ci/token");
    std::fs::write(agent.work.path().join("token.txt"), "dry-run-file-secret").unwrap();
    let outcome = agent
        .args([
            "run",
            "--dry",
            "--image",
            "agent-it/dry",
            "--secret",
            "id=t,env=TOKEN",
            "--secret",
            "id=f,src=token.txt",
        ])
        .args(["--secret", "id=s,env=FROM_SSM", "--region", "us-east-1"])
        .run();
    outcome.expect_code(0);
    let plan = outcome.all_output();
    assert!(plan.contains("secret t from env TOKEN (value ********)"), "{plan}");
    assert!(plan.contains("secret f from file "), "{plan}");
    assert!(plan.contains("secret s from SSM:/ci/token (via env FROM_SSM)"), "{plan}");
    assert!(plan.contains("--secret id=s <- SSM:/ci/token"), "resolved with the other SSM references:\n{plan}");
    assert!(!plan.contains("dry-run-secret-value") && !plan.contains("dry-run-file-secret"), "{plan}");
}

/// OpenSSH's ssh-keygen and the libraries it loads, copied flat into the context, and the COPY
/// lines that put each at its own path in the image, so that a build step can use the forwarded
/// agent with a real agent client.
fn add_ssh_keygen(context: &Path) -> String {
    let listed = Command::new("ldd").arg("/usr/bin/ssh-keygen").output().expect("ldd");
    let mut files = vec![PathBuf::from("/usr/bin/ssh-keygen")];
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        if let Some(path) = line.split_whitespace().find(|word| word.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    let mut copies = String::new();
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        std::fs::copy(&file, context.join(name)).unwrap_or_else(|error| panic!("copy {}: {error}", file.display()));
        copies.push_str(&format!("COPY {name} {}\n", file.display()));
    }
    std::fs::write(context.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    copies.push_str("COPY passwd /etc/passwd\n");
    copies
}

/// `--ssh` runs: the build step signs with the forwarded agent (ssh-keygen -Y sign with only the
/// public key in hand: no SSH login, so `--ssh-sign anything`) and verifies the signature against
/// the expected public key; the log names the signature with the key's fingerprint.
fn ssh_forwarding_proves_the_key(engine: &Engine, agent: Agent, public_key: &str, ssh_flag: &str) {
    let mut context = agent.work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    let copies = add_ssh_keygen(&context);
    context = busybox_context(
        agent.work.path(),
        &format!(
            "{copies}COPY key.pub allowed_signers /\n\
             RUN --mount=type=ssh,id={id},required=true echo {nonce} > /data && \
             ssh-keygen -Y sign -f /key.pub -n agent-test /data && \
             ssh-keygen -Y verify -f /allowed_signers -I test -n agent-test -s /data.sig < /data && echo ok > /ssh-seen",
            id = ssh_flag.split('=').next().unwrap(),
            nonce = unique("nonce"),
        ),
    );
    std::fs::write(context.join("key.pub"), public_key).unwrap();
    std::fs::write(context.join("allowed_signers"), format!("test {public_key}")).unwrap();
    let tag = unique("ssh");
    let image = format!("agent-it/ssh:{tag}");
    let outcome = agent
        .args(["-vv", "run", "--context", context.to_str().unwrap(), "--image", "agent-it/ssh", "--tag", &tag])
        .args(["--no-push", "--builder", "buildkit", "--ssh", ssh_flag, "--ssh-sign", "anything"])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stderr.contains("bytes that are no SSH login with"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("SHA256:"), "{}", outcome.stderr);
    let seen = engine
        .docker()
        .args(["run", "--rm", "--entrypoint", "/bin/cat", &image, "/ssh-seen"])
        .output()
        .expect("docker run");
    assert_eq!(String::from_utf8_lossy(&seen.stdout), "ok\n", "{}", outcome.stderr);
    remove_image_on(engine, &image);
}

on_every_engine! {
    fn ssh_default_forwards_jets_ssh_key_over_ssh_and_a_build_step_signs_with_it(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let public = std::fs::read_to_string(world.key_ed25519.with_extension("pub")).unwrap();
        // JETS_SSH_KEY logs into the host too: forwarded only when told.
        let agent = over_ssh_to(engine).env("AGENT_SSH_FORWARD_LOGIN_KEY", "true");
        ssh_forwarding_proves_the_key(engine, agent, &public, "default");
    }
}

/// Issue 26: a key that logs into a host of the run is not forwarded unless the run says so: by
/// `--ssh default` (JETS_SSH_KEY) or by a key file holding the same key; a config error (exit 3)
/// with the deploy-key hint, before anything connects.
#[test]
fn a_login_key_of_the_run_is_not_forwarded_unless_told() {
    let world = World::shared();
    for flag in ["default".to_string(), format!("git={}", world.key_ed25519.display())] {
        let outcome =
            crate::build::over_ssh(world).args(["run", "--image", "agent-it/login-key", "--ssh", &flag]).run();
        outcome.expect_code(3);
        let id = flag.split('=').next().unwrap();
        assert!(
            outcome.stderr.contains(&format!("--ssh {id}: would forward JETS_SSH_KEY, the login key of ssh://")),
            "{}",
            outcome.stderr
        );
        assert!(outcome.stderr.contains("a deploy key of its own"), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("--ssh-forward-login-key"), "{}", outcome.stderr);
        assert!(!outcome.stderr.contains("connect to"), "refused before connecting: {}", outcome.stderr);
        // The rehearsal says so too.
        let dry =
            crate::build::over_ssh(world).args(["run", "--dry", "--image", "agent-it/login-key", "--ssh", &flag]).run();
        dry.expect_code(3);
        assert!(dry.stderr.contains(&format!("--ssh {id}: would forward JETS_SSH_KEY")), "{}", dry.stderr);
    }
    // Another key is forwarded as ever.
    let outcome = crate::build::over_ssh(world)
        .args(["run", "--dry", "--image", "agent-it/login-key", "--ssh", &format!("git={}", world.key_ecdsa.display())])
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.contains("signing SSH logins only"), "{}", outcome.stdout);
}

/// Without JETS_SSH_KEY the run logs in with `~/.ssh/id_*`, as OpenSSH would: forwarding that key
/// is refused the same way, in a dry run too.
#[test]
fn a_login_key_from_the_home_ssh_directory_is_not_forwarded_unless_told() {
    let world = World::shared();
    let known = std::fs::read_to_string(&world.known_hosts_hashed).unwrap();
    let agent = Agent::new().env("DOCKER_HOST", world.ssh_url()).env("JETS_SSH_KNOWN", known);
    let ssh = agent.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::copy(&world.key_ed25519, ssh.join("id_ed25519")).unwrap();
    let flag = format!("git={}", world.key_ed25519.display());
    let expected = "--ssh git: would forward the login key of ssh://agent-test@";
    for dry in [&["--dry"][..], &[]] {
        let outcome =
            agent.args_cloned(&[&["run", "--image", "agent-it/login-key", "--ssh", &flag][..], dry].concat()).run();
        outcome.expect_code(3);
        assert!(outcome.stderr.contains(expected) && outcome.stderr.contains(" (~/.ssh): "), "{}", outcome.stderr);
    }
    let ecdsa = format!("git={}", world.key_ecdsa.display());
    agent.args_cloned(&["run", "--dry", "--image", "agent-it/login-key", "--ssh", &ecdsa]).run().expect_code(0);
}

/// A BuildKit build whose step asks the forwarded agent (holding the world's ECDSA key, `--ssh git=`)
/// to sign data (`ssh-keygen -Y sign`) with the key whose public half is beside `key`.
fn sign_through_the_forwarded_ecdsa_key(world: &World, key: &Path, image: &str) -> Outcome {
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let agent = Agent::new();
    let mut context = agent.work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    let copies = add_ssh_keygen(&context);
    context = busybox_context(
        agent.work.path(),
        &format!(
            "{copies}COPY key.pub /\nRUN --mount=type=ssh,id=git echo {} > /data && ssh-keygen -Y sign -f /key.pub -n agent-test /data",
            unique("nonce")
        ),
    );
    std::fs::write(context.join("key.pub"), public).unwrap();
    agent
        .args(["run", "--context", context.to_str().unwrap(), "--image", image, "--tag", &unique("t")])
        .args(["--no-push", "--builder", "buildkit", "--ssh", &format!("git={}", world.key_ecdsa.display())])
        .run()
}

/// Issue 26: a forwarded agent signs SSH logins only, unless `--ssh-sign anything`: a build step
/// that asks it to sign other data (`ssh-keygen -Y sign`) is refused, and the log says so with the
/// key's fingerprint and how to allow it.
#[test]
fn a_forwarded_agent_refuses_to_sign_what_is_no_ssh_login() {
    let world = World::shared();
    let outcome = sign_through_the_forwarded_ecdsa_key(world, &world.key_ecdsa, "agent-it/ssh-refused");
    outcome.expect_code(50);
    assert!(outcome.stderr.contains("ssh agent \"git\": refused to sign"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("ecdsa-sha2-nistp256 SHA256:"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("unless --ssh-sign anything"), "{}", outcome.stderr);
}

#[test]
fn ssh_id_with_a_key_file_forwards_that_key() {
    let world = World::shared();
    let path = world.key_ecdsa.clone();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    ssh_forwarding_proves_the_key(
        &World::shared().engine("20.10"),
        Agent::new(),
        &public,
        &format!("git={}", path.display()),
    );
}

#[test]
fn an_ssh_mount_no_ssh_flag_gives_fails_the_build_naming_its_id() {
    let outcome = build_with_an_unserved_mount("type=ssh,id=github", "agent-it/missing-ssh");
    outcome.expect_code(50);
    assert!(
        outcome.stderr.contains("hint: the Dockerfile mounts the ssh agent \"github\": give --ssh github=KEYFILE"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_forwarded_agent_holds_only_its_own_key() {
    // The agent holds the ECDSA key; the step asks it to sign with the ed25519 one, and must fail.
    let world = World::shared();
    let outcome = sign_through_the_forwarded_ecdsa_key(world, &world.key_ed25519, "agent-it/ssh-other");
    outcome.expect_code(50);
    assert!(outcome.stderr.contains("ssh-keygen -Y sign"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("No private key found for public key"), "{}", outcome.stderr);
}

/// Regression: a directory that `COPY` names (a FileSync follow path) reached BuildKit empty — the
/// walk did not descend below a followed directory (found with the ssh test's nested context).
#[test]
fn a_copied_directory_reaches_the_image_with_everything_below_it() {
    World::shared();
    let agent = Agent::new();
    let context =
        busybox_context(agent.work.path(), "COPY tree/ /copied/\nRUN test \"$(cat /copied/a/b/leaf.txt)\" = leaf");
    std::fs::create_dir_all(context.join("tree/a/b")).unwrap();
    std::fs::write(context.join("tree/a/b/leaf.txt"), "leaf").unwrap();
    let tag = unique("t");
    let outcome = agent
        .args(["run", "--context", context.to_str().unwrap(), "--image", "agent-it/nested", "--tag", &tag])
        .args(["--no-push", "--builder", "buildkit"])
        .run();
    outcome.expect_code(0);
    remove_image(&format!("agent-it/nested:{tag}"));
}

#[test]
fn ssh_id_with_an_encrypted_key_file_opens_it_with_the_passphrase() {
    let world = World::shared();
    let path = world.key_ed25519_enc.clone();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let agent = Agent::new().env("JETS_SSH_KEY_PASSPHRASE", world.key_passphrase());
    ssh_forwarding_proves_the_key(&World::shared().engine("20.10"), agent, &public, &format!("git={}", path.display()));
}
