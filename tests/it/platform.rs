//! Issue 15, the building blocks of multi-platform builds: the world's arm64 host (a daemon of its
//! own behind an sshd of its own, arm64 steps under QEMU) and the image index pushed to the Docker
//! Hub stand-in, checked through the registry API.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::registry::Credential;
use agent::registry::index::{Platform, PlatformImage, push_index};
use agent::registry::reference::Repository;
use agent::secrets::Secret;

use crate::agent::{Agent, Outcome};
use crate::world::{NOT_UP, World, on_every_engine, read};

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Where the registry API is asked: the htpasswd hub or the ECR stand-in (basic auth), or the
/// token-auth "tokenhub" (a bearer token from its token server first, with the hub's login).
#[derive(Clone, Copy)]
pub(crate) enum Api {
    Hub,
    Ecr,
    TokenHub,
}

impl World {
    fn arm64(&self, key: &str) -> String {
        self.var(key)
            .unwrap_or_else(|| panic!("{key} missing from the env file: {NOT_UP} (the arm64 host is new)"))
            .to_string()
    }

    /// A run against the arm64 host over its own sshd, with its own key and known_hosts.
    fn on_arm64_host(&self) -> Agent {
        Agent::new()
            .env("DOCKER_HOST", self.arm64("TW_ARM64_DOCKER_HOST"))
            .env("JETS_SSH_KEY", read(Path::new(&self.arm64("TW_ARM64_KEY"))))
            .env("JETS_SSH_KNOWN", read(Path::new(&self.arm64("TW_ARM64_KNOWN_HOSTS"))))
    }

    fn registry(&self, api: Api) -> String {
        match api {
            Api::Hub => self.hub_registry.clone(),
            Api::Ecr => self.ecr_registry.clone(),
            Api::TokenHub => self.arm64("TW_TOKENHUB_REGISTRY"),
        }
    }

    fn login(&self, api: Api, agent: Agent) -> Agent {
        agent
            .env("DOCKER_REGISTRY", self.registry(api))
            .env("DOCKER_USER", &self.hub_user)
            .env("DOCKER_PASS", self.hub_pass())
    }

    /// `GET http://REGISTRY/v2/NAME/WHAT` with the login (given to curl on stdin, never on its
    /// command line) and an Accept header: the status, the response headers and the body.
    pub(crate) fn registry_get(&self, api: Api, name: &str, what: &str, accept: &str) -> (u16, String, Vec<u8>) {
        let (user, password) = match api {
            Api::Ecr => (&self.ecr_user, self.ecr_pass()),
            Api::Hub | Api::TokenHub => (&self.hub_user, self.hub_pass()),
        };
        let credentials = format!("{user}:{password}").replace('\\', "\\\\").replace('"', "\\\"");
        let basic = format!("user = \"{credentials}\"\n");
        let authorization = match api {
            Api::Hub | Api::Ecr => basic,
            Api::TokenHub => {
                let url = format!(
                    "{}?service=agent-testworld-tokenhub&scope=repository:{name}:pull",
                    self.arm64("TW_TOKENAUTH_URL")
                );
                let (status, _, body) = curl(&url, &basic, "application/json");
                assert_eq!(status, 200, "the token server: {}", String::from_utf8_lossy(&body));
                let body: serde_json::Value = serde_json::from_slice(&body).expect("a token");
                format!("header = \"Authorization: Bearer {}\"\n", body["token"].as_str().expect("token"))
            }
        };
        curl(&format!("http://{}/v2/{name}/{what}", self.registry(api)), &authorization, accept)
    }

    /// The manifest (as JSON) of `name` at `reference`, with its digest.
    pub(crate) fn manifest(&self, api: Api, name: &str, reference: &str, accept: &str) -> (serde_json::Value, String) {
        let (status, headers, body) = self.registry_get(api, name, &format!("manifests/{reference}"), accept);
        assert_eq!(status, 200, "GET manifest {name}:{reference}: {}", String::from_utf8_lossy(&body));
        let digest = headers
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase().strip_prefix("docker-content-digest:").map(|d| d.trim().to_string())
            })
            .expect("Docker-Content-Digest");
        (serde_json::from_slice(&body).expect("a JSON manifest"), digest)
    }

    /// The config (as JSON) of the image manifest `name@digest`.
    pub(crate) fn image_config(&self, api: Api, name: &str, digest: &str) -> serde_json::Value {
        let (manifest, _) = self.manifest(api, name, digest, &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"));
        let config = manifest["config"]["digest"].as_str().expect("config digest");
        let (status, _, body) = self.registry_get(api, name, &format!("blobs/{config}"), "*/*");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("a JSON config")
    }
}

/// curl with its credentials or Authorization header from a config on stdin.
fn curl(url: &str, config: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-K", "-", "-o", "-", "-w", "%{stderr}%{http_code}", "-D"])
        .arg(&headers)
        .args(["-H", &format!("Accept: {accept}")])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    child.stdin.take().unwrap().write_all(config.as_bytes()).unwrap();
    let output = child.wait_with_output().expect("curl output");
    let status = String::from_utf8_lossy(&output.stderr).trim().parse().unwrap_or(0);
    (status, std::fs::read_to_string(&headers).unwrap_or_default(), output.stdout)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("it/{name}-{}-{nanos}", std::process::id())
}

/// A context with both busyboxes, whose Dockerfile picks the platform's (`ARG TARGETARCH`) and
/// records `uname -m` of a RUN step, failing unless it is `expected_machine`.
fn multi_arch_app(dir: &Path, world: &World, expected_machine: &str) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox-amd64")).expect("busybox (from busybox-static)");
    std::fs::copy(world.arm64("TW_BUSYBOX_ARM64"), app.join("busybox-arm64")).expect("the arm64 busybox");
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM scratch\nARG TARGETARCH\nCOPY busybox-${{TARGETARCH}} /bin/busybox\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && uname -m >/machine && \
             echo machine=$(uname -m) && test $(uname -m) = {expected_machine}\"]\n"
        ),
    )
    .unwrap();
    app
}

fn build_and_push(agent: Agent, app: &Path, image: &str, tag: &str, platform: &str) -> Outcome {
    let outcome = agent
        .args(["run", "--context", app.to_str().unwrap(), "--image", image, "--tag", tag, "--platform", platform])
        .run();
    outcome.expect_code(0);
    outcome
}

/// The arm64 host: `--platform linux/arm64` over its own sshd builds a FROM scratch image whose
/// RUN step runs the arm64 busybox (under QEMU) and sees `aarch64`, and whose config says arm64.
#[test]
fn the_arm64_host_over_ssh_builds_an_arm64_image_whose_run_steps_see_aarch64() {
    let world = World::shared();
    let name = unique("arm64-host");
    let image = format!("{}/{name}", world.hub_registry);
    let agent = world.login(Api::Hub, world.on_arm64_host());
    let app = multi_arch_app(agent.work.path(), world, "aarch64");
    build_and_push(agent, &app, &image, "t-arm64", "linux/arm64");

    // the image on the arm64 host's own daemon
    let inspect = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket", &world.arm64("TW_ARM64_DOCKER_SOCK")])
        .arg(format!("http://localhost/images/{image}:t-arm64/json"))
        .output()
        .expect("curl");
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("image inspect JSON");
    assert_eq!(inspect["Architecture"], "arm64", "{inspect}");
    assert_eq!(inspect["Os"], "linux");

    // and in the registry
    let (manifest, digest) = world.manifest(Api::Hub, &name, "t-arm64", &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"));
    assert!(manifest["config"].is_object(), "{manifest}");
    assert_eq!(world.image_config(Api::Hub, &name, &digest)["architecture"], "arm64");
}

/// Pushes the two single-platform images of one repository: amd64 on the world's daemon, arm64 on
/// the arm64 host; returns the repository's path in the registry and the digests the registry has.
pub(crate) fn two_platform_images(world: &World, api: Api, what: &str) -> (String, Vec<PlatformImage>) {
    let name = unique(what);
    let image = format!("{}/{name}", world.registry(api));
    let amd64 = world.login(api, Agent::new().env("DOCKER_HOST", world.docker_tcp_url()));
    let app = multi_arch_app(amd64.work.path(), world, "x86_64");
    build_and_push(amd64, &app, &image, "t-amd64", "linux/amd64");
    let arm64 = world.login(api, world.on_arm64_host());
    let app = multi_arch_app(arm64.work.path(), world, "aarch64");
    build_and_push(arm64, &app, &image, "t-arm64", "linux/arm64");
    let images = [("linux/amd64", "t-amd64"), ("linux/arm64", "t-arm64")]
        .into_iter()
        .map(|(platform, tag)| PlatformImage {
            platform: Platform::parse(platform).unwrap(),
            digest: world.manifest(api, &name, tag, DOCKER_MANIFEST).1,
        })
        .collect();
    (name, images)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn login_of(world: &World, api: Api, password: &str) -> Credential {
    Credential::new(world.registry(api), world.hub_user.clone(), Secret::new(password))
}

/// Two platforms built on two hosts, their index pushed under two tags; checked through the
/// registry API: the index lists both manifests by digest, with their platforms, media types and
/// sizes, and each config's architecture is the one listed.
fn an_index_of_two_hosts_images(api: Api) -> (String, Vec<PlatformImage>) {
    let world = World::shared();
    let (name, images) = two_platform_images(world, api, "index");
    let repository = Repository::parse(&format!("{}/{name}", world.registry(api))).unwrap();
    let tags = vec!["t".to_string(), "latest".to_string()];
    let credential = login_of(world, api, &world.hub_pass());
    let pushed = runtime()
        .block_on(push_index(&repository, Some(&credential), &tags, &images, Duration::from_secs(20)))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(pushed.media_type, DOCKER_MANIFEST_LIST);

    for tag in &tags {
        let (index, digest) = world.manifest(api, &name, tag, DOCKER_MANIFEST_LIST);
        assert_eq!(digest, pushed.digest, "{tag}");
        assert_eq!(index["mediaType"], DOCKER_MANIFEST_LIST, "{index}");
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2, "{index}");
        for (entry, image) in manifests.iter().zip(&images) {
            assert_eq!(entry["digest"], image.digest.as_str(), "{index}");
            assert_eq!(entry["mediaType"], DOCKER_MANIFEST, "{index}");
            assert_eq!(entry["platform"]["os"], "linux", "{index}");
            assert_eq!(entry["platform"]["architecture"], image.platform.architecture.as_str(), "{index}");
            let config = world.image_config(api, &name, &image.digest);
            assert_eq!(config["architecture"], image.platform.architecture.as_str(), "{tag}: {config}");
            // the size is the manifest's, byte for byte
            let (status, _, body) =
                world.registry_get(api, &name, &format!("manifests/{}", image.digest), DOCKER_MANIFEST);
            assert_eq!(status, 200);
            assert_eq!(entry["size"].as_u64(), Some(body.len() as u64), "{index}");
        }
    }
    (name, images)
}

#[test]
fn an_image_index_of_two_hosts_images_lists_both_platforms_under_every_tag() {
    an_index_of_two_hosts_images(Api::Hub);
}

/// The same through a registry with Docker Hub's bearer-token flow: the agent's client got its
/// push token from the token server with the login (the server logs the agent's user agent).
#[test]
fn an_image_index_is_pushed_through_the_bearer_token_flow() {
    let world = World::shared();
    let (name, images) = an_index_of_two_hosts_images(Api::TokenHub);
    let log = read(Path::new(&world.arm64("TW_TOKENAUTH_LOG")));
    let scope = format!("repository:{name}:pull,push");
    assert!(
        log.lines().any(|line| line.contains("200 user='hubuser'") && line.contains(&scope) && line.contains("agent/")),
        "no push token for the agent in the token server's log"
    );

    // a login the token server refuses: a push error that says so, naming tag and registry
    let repository = Repository::parse(&format!("{}/{name}", world.registry(Api::TokenHub))).unwrap();
    let wrong = login_of(world, Api::TokenHub, "not-the-hub-password");
    let error = runtime()
        .block_on(push_index(&repository, Some(&wrong), &["t2".to_string()], &images, Duration::from_secs(20)))
        .expect_err("a wrong password");
    assert_eq!(error.exit_code(), 60);
    let message = error.to_string();
    assert!(message.contains("unauthorized: the token server refused the credentials"), "{message}");
    assert!(
        message.contains(&format!("{repository}:t2")) && message.contains(&world.registry(Api::TokenHub)),
        "{message}"
    );
    assert!(!message.contains("not-the-hub-password"), "{message}");
}

/// An index listing an image under a platform it is not of is refused before anything is pushed,
/// and a refused login is a push error naming the tag and the registry (exit class 60).
#[test]
fn an_index_with_a_wrong_platform_or_a_wrong_login_is_a_push_error_and_nothing_is_pushed() {
    let world = World::shared();
    let (name, mut images) = two_platform_images(world, Api::Hub, "index-refused");
    let repository = Repository::parse(&format!("{}/{name}", world.hub_registry)).unwrap();
    let tags = vec!["bad".to_string()];

    let swap_platforms = |images: &mut Vec<PlatformImage>| {
        let amd64 = images[0].platform.clone();
        images[0].platform = std::mem::replace(&mut images[1].platform, amd64);
    };
    swap_platforms(&mut images); // the amd64 image listed as linux/arm64, and the other way round
    let credential = login_of(world, Api::Hub, &world.hub_pass());
    let error = runtime()
        .block_on(push_index(&repository, Some(&credential), &tags, &images, Duration::from_secs(20)))
        .expect_err("a mislabelled platform");
    assert_eq!(error.exit_code(), 60);
    let message = error.to_string();
    assert!(message.contains(&format!("{}:bad", repository)), "{message}");
    assert!(message.contains(&world.hub_registry), "{message}");
    assert!(message.contains("is an image for linux/"), "{message}");

    swap_platforms(&mut images);
    let wrong = login_of(world, Api::Hub, "not-the-hub-password");
    let error = runtime()
        .block_on(push_index(&repository, Some(&wrong), &tags, &images, Duration::from_secs(20)))
        .expect_err("a wrong password");
    assert_eq!(error.exit_code(), 60);
    assert!(error.to_string().contains("unauthorized"), "{error}");
    assert!(error.hint().unwrap_or_default().contains("check the registry login"), "{error}");
    assert!(!error.to_string().contains("not-the-hub-password"));

    let (status, _, _) = world.registry_get(Api::Hub, &name, "manifests/bad", DOCKER_MANIFEST_LIST);
    assert_eq!(status, 404, "no index may be pushed under the tag");
}

/// A context for a multi-platform run: both busyboxes, and a RUN step that records `uname -m`
/// and fails unless it matches the platform built (`TARGETARCH`), or, with `fail_on`, fails on
/// that machine only.
fn per_platform_app(dir: &Path, world: &World, fail_on: Option<&str>) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox-amd64")).expect("busybox (from busybox-static)");
    std::fs::copy(world.arm64("TW_BUSYBOX_ARM64"), app.join("busybox-arm64")).expect("the arm64 busybox");
    // a file of this run's own before the RUN step, so that it runs rather than being CACHED
    std::fs::write(app.join("run-id"), unique("run")).unwrap();
    let fail = match fail_on {
        Some(machine) => format!(" && if [ $(uname -m) = {machine} ]; then echo only {machine} fails; exit 7; fi"),
        None => String::new(),
    };
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM scratch\nARG TARGETARCH\nCOPY busybox-${{TARGETARCH}} /bin/busybox\nCOPY run-id /\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && uname -m >/machine && \
             echo machine=$(uname -m) && case $TARGETARCH/$(uname -m) in amd64/x86_64|arm64/aarch64) ;; *) exit 9;; esac{fail}\"]\n"
        ),
    )
    .unwrap();
    app
}

impl World {
    /// A run whose amd64 builds on the world's daemon over the world's sshd and whose arm64 builds
    /// on the arm64 host over its own sshd, each with its own key and known_hosts given by the
    /// per-arch variables; `DOCKER_HOST` and the unsuffixed SSH variables are not set.
    fn on_two_hosts(&self) -> Agent {
        Agent::new()
            .env("DOCKER_HOST_X86_64", self.ssh_url())
            .env("JETS_SSH_KEY_X86_64", read(&self.key_ed25519))
            .env("JETS_SSH_KNOWN_X86_64", read(&self.known_hosts_hashed))
            .env("DOCKER_HOST_ARM64", self.arm64("TW_ARM64_DOCKER_HOST"))
            .env("JETS_SSH_KEY_ARM64", read(Path::new(&self.arm64("TW_ARM64_KEY"))))
            .env("JETS_SSH_KNOWN_ARM64", read(Path::new(&self.arm64("TW_ARM64_KNOWN_HOSTS"))))
    }

    /// Checks through the registry API that every tag names one index of the two platforms, whose
    /// manifests' configs carry their architecture, and that it is `digest`.
    fn expect_index_of_both_platforms(&self, api: Api, name: &str, tags: &[&str], digest: &str) {
        for tag in tags {
            let (index, index_digest) = self.manifest(api, name, tag, &format!("{DOCKER_MANIFEST_LIST}, {OCI_INDEX}"));
            assert_eq!(index_digest, digest, "{tag}: {index}");
            let manifests = index["manifests"].as_array().expect("manifests");
            let architectures: Vec<&str> =
                manifests.iter().map(|entry| entry["platform"]["architecture"].as_str().unwrap_or("")).collect();
            assert_eq!(architectures, ["amd64", "arm64"], "{tag}: {index}");
            for entry in manifests {
                let config = self.image_config(api, name, entry["digest"].as_str().expect("a digest"));
                assert_eq!(config["architecture"], entry["platform"]["architecture"], "{tag}: {config}");
                assert_eq!(config["os"], "linux", "{tag}: {config}");
            }
        }
    }
}

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

on_every_engine! {
    /// Issue 15 end to end: `--platform linux/amd64,linux/arm64` with a host per arch builds both at
    /// once, each on its own host over its own SSH login, pushes each as `TAG-<arch>` from its host
    /// and then one index under every tag; the log names the platform of each build line, and the
    /// metadata file and imagedefinitions.json name the index. Issue 22: amd64 on each engine.
    fn two_platforms_on_two_hosts_push_an_index_for_every_tag_whose_manifests_carry_their_architecture(engine) {
        let world = World::shared();
        let _cache = engine.cache_lock(false);
        let name = unique("two-hosts");
        let image = format!("{}/{name}", world.hub_registry);
        let agent = world.login(Api::Hub, world.on_two_hosts().env("DOCKER_HOST_X86_64", &engine.docker_host));
        let app = per_platform_app(agent.work.path(), world, None);
        let metadata = agent.work.path().join("metadata.json");
        let agent = agent
            .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "t1", "--tag", "t2"])
            .args(["--platform", "linux/amd64,linux/arm64", "--image-definitions", "app", "--metadata-file"])
            .args([metadata.to_str().unwrap()]);
        let outcome = agent.run();
        outcome.expect_code(0);
        let log = &outcome.stderr;
        assert!(log.contains("connect to the hosts of linux/amd64, linux/arm64"), "{log}");
        assert!(log.contains(&format!("[linux/amd64] built on {}", engine.docker_host)), "{log}");
        assert!(log.contains(&format!("[linux/arm64] built on {}", world.arm64("TW_ARM64_DOCKER_HOST"))), "{log}");
        assert!(log.lines().any(|line| line.contains("[linux/arm64]") && line.contains("machine=aarch64")), "{log}");
        assert!(log.lines().any(|line| line.contains("[linux/amd64]") && line.contains("machine=x86_64")), "{log}");
        assert!(!log.contains("no DOCKER_HOST_ARM64"), "{log}");

        let metadata: serde_json::Value = serde_json::from_str(&read(&metadata)).expect("metadata JSON");
        let digest = metadata["containerimage.digest"].as_str().expect("the index digest").to_string();
        world.expect_index_of_both_platforms(Api::Hub, &name, &["t1", "t2"], &digest);
        assert!(metadata.get("containerimage.config.digest").is_none(), "no one config: {metadata}");
        let (index, _) = world.manifest(Api::Hub, &name, "t1", &format!("{DOCKER_MANIFEST_LIST}, {OCI_INDEX}"));
        for (entry, host) in
            index["manifests"].as_array().unwrap().iter().zip([engine.docker_host.clone(), world.arm64("TW_ARM64_DOCKER_HOST")])
        {
            let platform = format!("linux/{}", entry["platform"]["architecture"].as_str().unwrap());
            let each = &metadata["agent.platforms"][&platform];
            assert_eq!(each["containerimage.digest"], entry["digest"], "{metadata}");
            assert!(each["agent.host"].as_str().unwrap_or_default().starts_with(&host), "{metadata}");
            assert_eq!(each["agent.steps"].as_array().map(Vec::len), Some(3), "{metadata}");
        }
        // each platform's own tags, pushed from its host
        for (tag, architecture) in
            [("t1-amd64", "amd64"), ("t2-amd64", "amd64"), ("t1-arm64", "arm64"), ("t2-arm64", "arm64")]
        {
            let (_, digest) = world.manifest(Api::Hub, &name, tag, &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"));
            assert_eq!(world.image_config(Api::Hub, &name, &digest)["architecture"], architecture, "{tag}");
        }
        let definitions = read(&agent.work.path().join("imagedefinitions.json"));
        assert!(definitions.contains(&format!("{image}:t2")), "{definitions}");
    }
}

/// A RUN step that fails only on arm64 fails the run with the build's class (50), naming the
/// platform and the step; no index is pushed under any tag.
#[test]
fn a_step_failing_only_on_arm64_fails_the_run_naming_the_platform_and_pushes_no_index() {
    let world = World::shared();
    let name = unique("arm64-fails");
    let image = format!("{}/{name}", world.hub_registry);
    let agent = world.login(Api::Hub, world.on_two_hosts());
    let app = per_platform_app(agent.work.path(), world, Some("aarch64"));
    let agent = agent
        .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "t1"])
        .args(["--platform", "linux/amd64,linux/arm64"]);
    let outcome = agent.run();
    outcome.expect_code(50);
    let error = outcome.stderr.lines().find(|line| line.starts_with("error: ")).expect("an error line");
    assert!(error.starts_with("error: linux/arm64: the build failed at"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("only aarch64 fails"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("hint: "), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("push the image index"), "{}", outcome.stderr);
    for tag in ["t1", "latest"] {
        let (status, _, _) = world.registry_get(
            Api::Hub,
            &name,
            &format!("manifests/{tag}"),
            &format!("{DOCKER_MANIFEST_LIST}, {OCI_INDEX}"),
        );
        assert_eq!(status, 404, "no index may be pushed under {tag}");
    }
}

/// Without an arm64 host, linux/arm64 builds on `DOCKER_HOST` (here the world's daemon, amd64)
/// under emulation, with a warning that says so; the index goes to the registry with Docker Hub's
/// bearer-token flow (tokenhub), logged into with the run's own login.
#[test]
fn without_an_arm64_host_arm64_is_emulated_on_docker_host_with_a_warning_and_the_index_goes_through_a_bearer_token() {
    let world = World::shared();
    let name = unique("emulated");
    let image = format!("{}/{name}", world.registry(Api::TokenHub));
    let agent = world.login(Api::TokenHub, Agent::new().env("DOCKER_HOST", world.docker_tcp_url()));
    let app = per_platform_app(agent.work.path(), world, None);
    let metadata = agent.work.path().join("metadata.json");
    let agent = agent.args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "t1"]).args([
        "--platform",
        "linux/amd64,linux/arm64",
        "--metadata-file",
        metadata.to_str().unwrap(),
    ]);
    let outcome = agent.run();
    outcome.expect_code(0);
    let warning = outcome
        .stderr
        .lines()
        .find(|line| line.contains("WARN") && line.contains("linux/arm64 builds emulated"))
        .unwrap_or_else(|| panic!("no emulation warning in\n{}", outcome.stderr));
    assert!(warning.contains(&world.docker_tcp_url()) && warning.contains("no DOCKER_HOST_ARM64"), "{warning}");
    assert!(!outcome.stderr.contains("linux/amd64 builds emulated"), "{}", outcome.stderr);
    let metadata: serde_json::Value = serde_json::from_str(&read(&metadata)).expect("metadata JSON");
    let digest = metadata["containerimage.digest"].as_str().expect("the index digest");
    world.expect_index_of_both_platforms(Api::TokenHub, &name, &["t1"], digest);
}

/// The cold-host pull works per platform: a host that has never built the app pulls each
/// platform's `latest-<arch>` (pushed by an earlier run on another host) and builds every step of
/// each platform from it, CACHED. Here the earlier run is on the world's daemon, the new host the
/// arm64 host, which takes both platforms (its `DOCKER_HOST`, no per-arch host).
#[test]
fn a_new_host_pulls_each_platforms_latest_tag_and_builds_from_it_as_cache() {
    let world = World::shared();
    let name = unique("platform-cache");
    let image = format!("{}/{name}", world.hub_registry);
    let first = world.login(Api::Hub, Agent::new().env("DOCKER_HOST", world.docker_tcp_url()));
    let app = per_platform_app(first.work.path(), world, None);
    let first = first
        .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "latest"])
        .args(["--platform", "linux/amd64,linux/arm64"]);
    first.run().expect_code(0);

    let second = world.login(Api::Hub, world.on_arm64_host());
    let outcome = second
        .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "second"])
        .args(["--platform", "linux/amd64,linux/arm64"])
        .run();
    outcome.expect_code(0);
    let log = &outcome.stderr;
    for arch in ["amd64", "arm64"] {
        let pulled = format!("[linux/{arch}] pulled {image}:latest-{arch} as cache for a cold host");
        assert!(log.contains(&pulled), "missing {pulled:?} in\n{log}");
        let steps: Vec<&str> = log.lines().filter(|line| line.contains(&format!("[linux/{arch}]   step "))).collect();
        assert_eq!(steps.len(), 3, "{log}");
        assert!(steps.iter().all(|line| line.contains(": CACHED")), "{arch}: not built from the pulled cache\n{log}");
    }
}

/// Every per-arch variable may be `SSM:/path`: the arm64 host, its key and its known_hosts and the
/// amd64 key come from Parameter Store in the run's one batch; `--check` then reaches both hosts,
/// each over its own SSH login, and no key appears in any output.
#[test]
fn per_arch_hosts_and_ssh_logins_from_parameter_store_are_resolved_in_one_batch_and_checked() {
    let world = World::shared();
    let prefix = format!("/agent-tests/per-arch/{}", std::process::id());
    let arm64_key = read(Path::new(&world.arm64("TW_ARM64_KEY")));
    let amd64_key = read(&world.key_ed25519);
    for (name, value, secure) in [
        ("arm64-host", world.arm64("TW_ARM64_DOCKER_HOST"), false),
        ("arm64-key", arm64_key.clone(), true),
        ("arm64-known", read(Path::new(&world.arm64("TW_ARM64_KNOWN_HOSTS"))), false),
        ("amd64-key", amd64_key.clone(), true),
    ] {
        crate::logins::put_parameter(world, &format!("{prefix}/{name}"), &value, secure);
    }
    let outcome = crate::logins::with_aws(world)
        .env("DOCKER_HOST_AARCH64", format!("SSM:{prefix}/arm64-host"))
        .env("JETS_SSH_KEY_AARCH64", format!("SSM:{prefix}/arm64-key"))
        .env("JETS_SSH_KNOWN_AARCH64", format!("SSM:{prefix}/arm64-known"))
        .env("DOCKER_HOST_AMD64", world.ssh_url())
        .env("JETS_SSH_KEY_AMD64", format!("SSM:{prefix}/amd64-key"))
        .env("JETS_SSH_KNOWN", read(&world.known_hosts_hashed))
        .args(["run", "--check", "--image", "app", "--platform", "linux/amd64,linux/arm64"])
        .run();
    outcome.expect_code(0);
    let log = &outcome.stderr;
    assert!(log.contains("resolve 4 SSM parameters: 4 values"), "{log}");
    assert!(log.contains("connected over ssh, ssh"), "{log}");
    assert!(log.contains(&world.arm64("TW_ARM64_DOCKER_HOST")) && log.contains(&world.ssh_url()), "{log}");
    for key in [&arm64_key, &amd64_key] {
        let body = key.lines().nth(1).expect("a key body line");
        assert!(!outcome.all_output().contains(body), "a key leaked:\n{}", outcome.all_output());
    }
}

/// The per-arch key is the one used for its host, not the unsuffixed one: the arm64 host accepts
/// only its own key, so `JETS_SSH_KEY_ARM64` holding the world's other key is refused (ssh-auth,
/// 25), naming that host, even though `JETS_SSH_KEY` holds the right one.
#[test]
fn the_arm64_host_is_reached_with_the_per_arch_key_and_a_wrong_one_is_refused_as_ssh_auth() {
    let world = World::shared();
    let arm64_key = read(Path::new(&world.arm64("TW_ARM64_KEY")));
    let outcome = world
        .on_two_hosts()
        .env("JETS_SSH_KEY", &arm64_key)
        .env("JETS_SSH_KEY_ARM64", read(&world.key_ed25519))
        .args(["run", "--check", "--image", "app", "--platform", "linux/amd64,linux/arm64"])
        .run();
    outcome.expect_code(25);
    let port = world.arm64("TW_ARM64_SSH_PORT");
    assert!(outcome.stderr.contains(&format!("127.0.0.1:{port} refused the SSH key")), "{}", outcome.stderr);
}

/// Nothing changed, nothing new in the registry, per platform: built again unchanged, each
/// platform keeps its `TAG-<arch>` manifest, so the index under the tag keeps its digest; the
/// registry is the token-auth one (the comparison and the registry-side tag use the bearer flow).
#[test]
fn an_unchanged_two_platform_image_keeps_each_platforms_manifest_and_the_index_digest() {
    let world = World::shared();
    let name = unique("stable-platforms");
    let image = format!("{}/{name}", world.registry(Api::TokenHub));
    let dir = tempfile::tempdir().unwrap();
    let app = per_platform_app(dir.path(), world, None);
    let run = |tags: &[&str]| {
        let agent = world.login(Api::TokenHub, Agent::new().env("DOCKER_HOST", world.docker_tcp_url()));
        let metadata = dir.path().join("metadata.json");
        let mut args = vec!["run", "--context", app.to_str().unwrap(), "--image", &image];
        for tag in tags {
            args.extend(["--tag", tag]);
        }
        let agent = agent.args(args).args(["--platform", "linux/amd64,linux/arm64", "--metadata-file"]);
        let outcome = agent.args([metadata.to_str().unwrap()]).run();
        outcome.expect_code(0);
        let metadata: serde_json::Value = serde_json::from_str(&read(&metadata)).expect("metadata JSON");
        (outcome, metadata["containerimage.digest"].as_str().expect("the index digest").to_string())
    };
    let (_, first) = run(&["t1"]);
    let (second, digest) = run(&["t1", "t2"]);
    assert_eq!(digest, first, "{}", second.stderr);
    for arch in ["amd64", "arm64"] {
        let kept = format!("[linux/{arch}] {image}:t1-{arch}: unchanged since ");
        assert!(second.stderr.contains(&kept), "missing {kept:?} in\n{}", second.stderr);
        let tagged = format!("{image}:t2-{arch}: unchanged since ");
        assert!(second.stderr.contains(&tagged), "missing {tagged:?} in\n{}", second.stderr);
    }
    // No platform's image is pushed (the index is, with the same bytes: the same digest).
    assert!(!second.stderr.contains("] pushed "), "{}", second.stderr);
    world.expect_index_of_both_platforms(Api::TokenHub, &name, &["t1", "t2"], &first);
}

/// Any doubt is a push: a tag that holds an image index (here from a two-platform run) is not
/// compared with a single-platform build, which is pushed over it as before.
#[test]
fn a_tag_holding_an_image_index_is_pushed_over_as_before() {
    let world = World::shared();
    let name = unique("stable-index");
    let image = format!("{}/{name}", world.registry(Api::TokenHub));
    let dir = tempfile::tempdir().unwrap();
    let app = per_platform_app(dir.path(), world, None);
    let run = |platforms: &str| {
        let agent = world.login(Api::TokenHub, Agent::new().env("DOCKER_HOST", world.docker_tcp_url()));
        let outcome = agent
            .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "t1"])
            .args(["--platform", platforms])
            .run();
        outcome.expect_code(0);
        outcome
    };
    run("linux/amd64,linux/arm64");
    let single = run("linux/amd64");
    assert!(single.stderr.contains("manifest.list.v2+json, not one image's manifest"), "{}", single.stderr);
    assert!(single.stderr.contains("pushed sha256:"), "{}", single.stderr);
    let (manifest, _) = world.manifest(Api::TokenHub, &name, "t1", &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"));
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST, "{manifest}");
}

/// Issue 24: with several platforms, each says why its cache missed, on its own lines prefixed
/// with its platform, and in its own `agent.cache`; the closing line counts the steps of both.
#[test]
fn each_platform_says_why_its_cache_missed() {
    let world = World::shared();
    let image = format!("{}/{}", world.hub_registry, unique("cachewhy-platforms"));
    let dir = tempfile::tempdir().unwrap();
    let app = per_platform_app(dir.path(), world, None);
    let metadata = dir.path().join("metadata.json");
    let run = || {
        let outcome = world
            .login(Api::Hub, world.on_two_hosts())
            .args(["run", "--context", app.to_str().unwrap(), "--image", &image, "--tag", "t1"])
            .args(["--platform", "linux/amd64,linux/arm64", "--metadata-file", metadata.to_str().unwrap()])
            .run();
        outcome.expect_code(0);
        outcome
    };
    run();
    std::fs::write(app.join("run-id"), unique("again")).unwrap();
    let outcome = run();
    let metadata: serde_json::Value = serde_json::from_str(&read(&metadata)).expect("metadata JSON");
    for arch in ["amd64", "arm64"] {
        let sent = format!("[linux/{arch}] context: sent 1 of 4 files (run-id), ");
        assert!(outcome.stderr.contains(&sent), "missing {sent:?} in\n{}", outcome.stderr);
        let cache = format!(
            "[linux/{arch}] cache: 1 of 3 steps CACHED; [2/3] COPY run-id / rebuilt: run-id changed; 1 more step \
             rebuilt after step 2"
        );
        assert!(outcome.stderr.contains(&cache), "missing {cache:?} in\n{}", outcome.stderr);
        let each = &metadata["agent.platforms"][format!("linux/{arch}")]["agent.cache"];
        assert_eq!(each["first_rebuilt"]["files"], serde_json::json!(["run-id"]), "{metadata}");
    }
    assert!(outcome.stderr.contains("(2 of 6 CACHED)"), "{}", outcome.stderr);
    assert_eq!(metadata["agent.timings"]["cached"], 2, "{metadata}");
}
