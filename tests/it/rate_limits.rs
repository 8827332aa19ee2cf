//! Issue 23, `rate-limited` (exit 41): a registry that answers 429 Too Many Requests. Each test
//! starts a registry stand-in of its own on loopback (the daemon speaks plain HTTP to 127.0.0.0/8):
//! it answers 429 with Docker Hub's JSON body (and a `Retry-After` when the test gives one), to
//! every request or to the first few a test picks, passing the others to a registry of the world. The daemon's words for
//! a 429 differ between Docker 20.10 and the newer engines, and between BuildKit and the classic
//! builder: the daemon-facing tests run on every engine of the world, with both builders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{Agent, Outcome};
use crate::build::{full_run, unique};
use crate::world::{Engine, World, on_every_engine, port_of};

/// Docker Hub's body for a 429, word for word.
const DOCKER_HUB_429: &str = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}"#;

/// A registry stand-in on 127.0.0.1: 429 to the requests `picks` chooses while its budget of 429s
/// lasts; every other request passed to `upstream` (a registry of the world), or, without one,
/// answered 429 too. Each request gets a connection of its own (`Connection: close`).
struct RateLimitedRegistry {
    port: u16,
    /// The 429s still to answer.
    remaining: Arc<AtomicUsize>,
    /// The 429s answered.
    answered: Arc<AtomicUsize>,
    /// The `Retry-After` of the 429s, if any.
    retry_after: Arc<Mutex<Option<String>>>,
    /// When each picked request came, and whether it was answered 429.
    picked: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl RateLimitedRegistry {
    /// Every request answered 429.
    fn always() -> RateLimitedRegistry {
        Self::start(None, usize::MAX, |_, _| true)
    }

    /// In front of the registry on `upstream`; no 429 until [`Self::limit`].
    fn in_front_of(upstream: u16, picks: fn(&str, &str) -> bool) -> RateLimitedRegistry {
        Self::start(Some(upstream), 0, picks)
    }

    fn start(upstream: Option<u16>, count: usize, picks: fn(&str, &str) -> bool) -> RateLimitedRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stand_in = RateLimitedRegistry {
            port,
            remaining: Arc::new(AtomicUsize::new(count)),
            answered: Arc::new(AtomicUsize::new(0)),
            retry_after: Arc::new(Mutex::new(None)),
            picked: Arc::new(Mutex::new(Vec::new())),
        };
        let (budget, counter) = (stand_in.remaining.clone(), stand_in.answered.clone());
        let (retry_after, picked) = (stand_in.retry_after.clone(), stand_in.picked.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (budget, counter) = (budget.clone(), counter.clone());
                let (retry_after, picked) = (retry_after.clone(), picked.clone());
                std::thread::spawn(move || {
                    let limit = |method: &str, path: &str| {
                        let chosen = upstream.is_none() || picks(method, path);
                        let limited = upstream.is_none()
                            || (chosen
                                && budget
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                    .is_ok());
                        if limited {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        if chosen {
                            picked.lock().unwrap().push((Instant::now(), limited));
                        }
                        limited.then(|| retry_after.lock().unwrap().clone())
                    };
                    let _ = serve_one(client, upstream, limit);
                });
            }
        });
        stand_in
    }

    /// The 429s carry `Retry-After: value` (seconds or an HTTP date).
    fn retry_after(&self, value: &str) {
        *self.retry_after.lock().unwrap() = Some(value.to_string());
    }

    /// How long after each 429 the next picked request came.
    fn waits_after_429(&self) -> Vec<Duration> {
        let picked = self.picked.lock().unwrap();
        picked.windows(2).filter(|pair| pair[0].1).map(|pair| pair[1].0 - pair[0].0).collect()
    }

    /// The next `count` picked requests are answered 429.
    fn limit(&self, count: usize) {
        self.remaining.store(count, Ordering::SeqCst);
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Serves one request: 429 when `limit` says so (`Some`, with the `Retry-After` to send, if any),
/// else passed to `upstream`.
fn serve_one(
    mut client: std::net::TcpStream,
    upstream: Option<u16>,
    limit: impl Fn(&str, &str) -> Option<Option<String>>,
) -> std::io::Result<()> {
    use std::io::Write;
    let Some(request) = crate::faults::read_request_head(&mut client)? else { return Ok(()) };
    let (method, path) = request.method_and_path();
    let limited = limit(method, path);
    let Some(upstream) = upstream.filter(|_| limited.is_none()) else {
        let body = if method == "HEAD" { "" } else { DOCKER_HUB_429 };
        let retry_after = match limited.flatten() {
            Some(value) => format!("Retry-After: {value}\r\n"),
            None => String::new(),
        };
        write!(
            client,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n{retry_after}\
             Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            DOCKER_HUB_429.len()
        )?;
        return client.shutdown(std::net::Shutdown::Both);
    };
    crate::faults::forward(client, &request, upstream)
}

/// A context of a static busybox, a file of `nonce` (so its layers are this test's own) and
/// `from` as its base image.
fn app(dir: &Path, from: &str, nonce: &str) -> PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy("/bin/busybox", app.join("busybox")).expect("busybox (from busybox-static)");
    std::fs::write(app.join("nonce.txt"), nonce).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {from}\nCOPY busybox /bin/busybox\nCOPY nonce.txt /nonce.txt\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built\"]\n"
        ),
    )
    .unwrap();
    app
}

fn run_on(engine: &Engine, agent: Agent, app: &Path, extra: &[&str]) -> Outcome {
    agent.env("DOCKER_HOST", &engine.docker_host).args(["run", "--context", app.to_str().unwrap()]).args(extra).run()
}

/// What every rate-limited report says, whoever the registry: its name, the 429, the hint's three
/// ways out; not the Dockerfile's hint.
fn assert_rate_limited(outcome: &Outcome, registry: &str, during: &str) {
    outcome.expect_code(41);
    let stderr = &outcome.stderr;
    assert!(stderr.contains(&format!("error: {registry} answered 429 Too Many Requests")), "{stderr}");
    assert!(stderr.contains(&format!("during {during}")), "{stderr}");
    assert!(stderr.contains(&format!("hint: log in to {registry}")), "{stderr}");
    assert!(stderr.contains("pull-through cache"), "{stderr}");
    assert!(stderr.contains("run again later"), "{stderr}");
    assert!(!stderr.contains("fix the Dockerfile"), "{stderr}");
}

on_every_engine! {
    /// A base image whose registry answers 429: `rate-limited` (41) naming the registry, from the
    /// daemon's own words (BuildKit names the host; the classic builder only says
    /// "toomanyrequests", so the registry is read from the failing FROM), with either builder;
    /// nothing pushed.
    fn a_base_image_pull_answered_429_is_rate_limited(engine) {
        let world = World::shared();
        let hub = RateLimitedRegistry::always();
        for builder in ["buildkit", "classic"] {
            let repository = unique(&format!("rate-limited-from-{builder}"));
            let work = tempfile::tempdir().unwrap();
            let app = app(work.path(), &format!("{}/library/base:1", hub.host()), &repository);
            let outcome = run_on(engine, full_run(world, &repository), &app, &["--builder", builder]);
            assert_rate_limited(&outcome, &hub.host(), "the build at ");
            assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed");
        }
    }
}

on_every_engine! {
    /// A push to a registry that answers 429 to everything: the cache pull says it is rate-limited
    /// and the build goes on; the push is retried for the rate limit's patience (30 s), then the
    /// run is `rate-limited` (41) naming the registry and the tag.
    fn a_push_answered_429_is_rate_limited_after_the_retries(engine) {
        let world = World::shared();
        let registry = RateLimitedRegistry::always();
        let repository = unique("rate-limited-push");
        let work = tempfile::tempdir().unwrap();
        let app = app(work.path(), "scratch", &repository);
        let agent = full_run(world, &repository).env("REPOSITORY_URI", format!("{}/{repository}", registry.host()));
        let outcome = run_on(engine, agent, &app, &["--always-push", "-t", "latest"]);
        let reference = format!("{}/{repository}:latest", registry.host());
        assert_rate_limited(&outcome, &registry.host(), &format!("the push of {reference}"));
        assert!(outcome.stderr.contains("to use as cache: rate-limited"), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("retrying in 15s"), "{}", outcome.stderr);
        assert!(outcome.elapsed >= std::time::Duration::from_secs(30), "{:?}", outcome.elapsed);
        assert!(registry.answered() >= 6, "{} answers of 429", registry.answered());
    }
}

on_every_engine! {
    /// The daemon's login check (`/auth`) answered 429 is `rate-limited`, not a refused login.
    fn a_login_answered_429_is_rate_limited_not_refused(engine) {
        let world = World::shared();
        let registry = RateLimitedRegistry::always();
        let repository = unique("rate-limited-login");
        let work = tempfile::tempdir().unwrap();
        let app = app(work.path(), "scratch", &repository);
        let agent = full_run(world, &repository)
            .env("DOCKER_REGISTRY", registry.host())
            .env("DOCKER_USER", &world.hub_user)
            .env("DOCKER_PASS", world.hub_pass());
        let outcome = run_on(engine, agent, &app, &[]);
        assert_rate_limited(&outcome, &registry.host(), "the login");
        assert!(!outcome.stderr.contains("refused the credentials"), "{}", outcome.stderr);
        assert!(world.ecr_tags(&repository).is_empty(), "nothing may be pushed");
    }
}

/// Whether a request reads a manifest: the comparison's first call for each tag.
fn manifest_read(method: &str, path: &str) -> bool {
    method == "GET" && path.contains("/manifests/")
}

/// The comparison before the pushes, in front of the ECR stand-in: a first run pushes the app
/// (`name` makes its repository), then `limit` sets the stand-in's 429s for the manifest reads and
/// the same app runs again. Returns the second run and the stand-in.
fn compare_again_rate_limited(name: &str, limit: impl FnOnce(&RateLimitedRegistry)) -> (Outcome, RateLimitedRegistry) {
    let world = World::shared();
    let engine = world.engine("20.10");
    let _cache = engine.cache_lock(false);
    let ecr = RateLimitedRegistry::in_front_of(port_of(&world.ecr_registry), manifest_read);
    let repository = unique(name);
    let work = tempfile::tempdir().unwrap();
    let app = app(work.path(), "scratch", &repository);
    let agent = || {
        full_run(world, &repository)
            .env("ECR_REGISTRY", ecr.host())
            .env("REPOSITORY_URI", format!("{}/{repository}", ecr.host()))
    };
    let first = run_on(&engine, agent(), &app, &["-t", "latest"]);
    first.expect_code(0);
    assert_eq!(world.ecr_tags(&repository), ["latest"], "{}", first.stderr);

    limit(&ecr);
    let second = run_on(&engine, agent(), &app, &["-t", "latest"]);
    second.expect_code(0);
    (second, ecr)
}

/// The agent's own registry call, the comparison before the pushes, answered 429 twice with
/// `Retry-After: 3` in front of the ECR stand-in: it waits as asked (not its own 1 s, then 2 s),
/// finds the registry's image the same and keeps it, and nothing is pushed.
#[test]
fn the_comparison_answered_429_waits_as_retry_after_asks_and_keeps_the_unchanged_image() {
    let (second, ecr) = compare_again_rate_limited("rate-limited-compare", |ecr| {
        ecr.retry_after("3");
        ecr.limit(2);
    });
    assert_eq!(ecr.answered(), 2, "{}", second.stderr);
    let retried = format!(
        "{} answered a tag's read with 429 Too Many Requests (rate-limited); retrying in 3s, as its Retry-After asks",
        ecr.host()
    );
    assert_eq!(second.stderr.matches(&retried).count(), 2, "{}", second.stderr);
    let waits = ecr.waits_after_429();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(waits.iter().all(|wait| *wait >= Duration::from_secs(3)), "asked again sooner than asked: {waits:?}");
    assert!(second.stderr.contains("unchanged since "), "{}", second.stderr);
    assert!(!second.stderr.contains("pushed sha256:"), "{}", second.stderr);
}

/// Docker Hub's pull quota (its body, no `Retry-After`) lifts in hours: the comparison asks once,
/// is not retried, and the tags are pushed at once (a push does not count against the quota).
#[test]
fn the_comparison_does_not_wait_for_a_pull_quota_and_the_tags_are_pushed() {
    let (second, ecr) = compare_again_rate_limited("rate-limited-quota", |ecr| ecr.limit(usize::MAX));
    assert_eq!(ecr.answered(), 1, "asked once: {}", second.stderr);
    assert!(!second.stderr.contains("retrying in"), "{}", second.stderr);
    let said = "rate-limited: the registry answered 429 Too Many Requests (a pull quota, which lifts in hours, \
                not seconds: not retried)";
    assert!(second.stderr.contains(said), "{}", second.stderr);
    assert!(second.stderr.contains("pushed sha256:"), "{}", second.stderr);
}

/// Whether a request puts a manifest: the image index's push.
fn manifest_put(method: &str, path: &str) -> bool {
    method == "PUT" && path.contains("/manifests/")
}

/// The agent's own push of a multi-platform image index, in front of the Docker Hub stand-in:
/// answered 429 twice with `Retry-After: 2`, it waits as asked and lands; answered 429 with a
/// `Retry-After` an hour away (an HTTP date), it does not wait at all: rate-limited (exit 41) at
/// once, naming the registry and the wait asked for, and no index is pushed.
#[test]
fn the_image_index_push_waits_as_retry_after_asks_and_not_past_its_patience() {
    use agent::registry::Credential;
    use agent::registry::index::push_index;
    use agent::registry::reference::Repository;
    use agent::secrets::Secret;

    let world = World::shared();
    let (name, images) = crate::platform::two_platform_images(world, crate::platform::Api::Hub, "index-429");
    let hub = RateLimitedRegistry::in_front_of(port_of(&world.hub_registry), manifest_put);
    let repository = Repository::parse(&format!("{}/{name}", hub.host())).unwrap();
    let credential = Credential::new(hub.host(), world.hub_user.clone(), Secret::new(world.hub_pass()));
    let push = |tag: &str| {
        let tags = [tag.to_string()];
        let timeout = Duration::from_secs(20);
        crate::platform::runtime().block_on(push_index(&repository, Some(&credential), &tags, &images, timeout))
    };

    hub.retry_after("2");
    hub.limit(2);
    let pushed = push("retried").unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(hub.answered(), 2);
    let waits = hub.waits_after_429();
    assert!(waits.len() == 2 && waits.iter().all(|wait| *wait >= Duration::from_secs(2)), "{waits:?}");
    let (_, digest) =
        world.manifest(crate::platform::Api::Hub, &name, "retried", crate::platform::DOCKER_MANIFEST_LIST);
    assert_eq!(digest, pushed.digest);

    let an_hour_away = std::time::SystemTime::now() + Duration::from_secs(3600);
    hub.retry_after(&httpdate::fmt_http_date(an_hour_away));
    hub.limit(usize::MAX);
    let started = Instant::now();
    let error = push("limited").expect_err("a registry answering 429 to every put");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?} for nothing", started.elapsed());
    assert_eq!(hub.answered(), 3, "asked once: {error}");
    assert_eq!(error.exit_code(), 41, "{error}");
    let message = error.to_string();
    assert!(message.starts_with(&format!("{} answered 429 Too Many Requests", hub.host())), "{message}");
    assert!(message.contains("during pushing the image index (its Retry-After asked for 3"), "{message}");
    assert!(message.contains("s more, longer than the agent waits (30s))"), "{message}");
    assert!(message.contains("TOOMANYREQUESTS: You have reached your pull rate limit"), "{message}");
    assert!(!message.contains(&world.hub_pass()), "{message}");
    let (status, _, _) = world.registry_get(
        crate::platform::Api::Hub,
        &name,
        "manifests/limited",
        crate::platform::DOCKER_MANIFEST_LIST,
    );
    assert_eq!(status, 404, "no index may be pushed under the tag");
}

/// When each token request came, and its query.
type TokenRequests = Arc<Mutex<Vec<(Instant, String)>>>;

/// A registry with a bearer challenge whose token server is itself: `/token` answered 429 with
/// `Retry-After: 2` the first time, then a token; `/v2/` answered 401 with the challenge unless the
/// request carries that token. `realm` overrides the challenge's realm. Returns its port and the
/// times and queries of the token requests.
fn bearer_registry(token: &'static str, realm: Option<&'static str>) -> (u16, TokenRequests) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let Ok(Some(request)) = crate::faults::read_request_head(&mut client) else { continue };
            let (_, path) = request.method_and_path();
            let (status, extra, body) = if let Some(query) = path.strip_prefix("/token?") {
                let mut asked = log.lock().unwrap();
                asked.push((Instant::now(), query.to_string()));
                if asked.len() == 1 {
                    ("429 Too Many Requests", "Retry-After: 2\r\n".to_string(), DOCKER_HUB_429.to_string())
                } else {
                    ("200 OK", String::new(), format!(r#"{{"token":"{token}","expires_in":300}}"#))
                }
            } else if request.head.contains(&format!("Bearer {token}")) {
                ("200 OK", String::new(), "{}".to_string())
            } else {
                let realm = realm.map(str::to_string).unwrap_or_else(|| format!("http://127.0.0.1:{port}/token"));
                (
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"stand-in\"\r\n"),
                    "{}".to_string(),
                )
            };
            let _ = write!(
                client,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, asked)
}

/// A token server's 429 is waited out as its `Retry-After` asks, like the registry's; the token it
/// then gives is masked in any output; and a login is never sent to a plain-HTTP token server off
/// loopback.
#[test]
fn a_token_servers_429_waits_as_asked_and_its_token_is_never_printed() {
    use agent::registry::Credential;
    use agent::registry::api::{Access, Registry};
    use agent::registry::reference::Repository;
    use agent::secrets::Secret;

    const TOKEN: &str = "stand-in-token-5f0c2a9e71d4";
    let (port, asked) = bearer_registry(TOKEN, None);
    let repository = Repository::parse(&format!("127.0.0.1:{port}/team/app")).unwrap();
    let registry = Registry::new(&repository, None, Duration::from_secs(5)).unwrap();
    crate::platform::runtime().block_on(registry.authorize(Access::Pull)).unwrap_or_else(|error| panic!("{error}"));
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[1].0 - asked[0].0 >= Duration::from_secs(2), "asked again sooner than asked: {asked:?}");
    assert!(asked[1].1.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{asked:?}");
    assert!(asked[1].1.contains("service=stand-in"), "{asked:?}");
    let redacted = agent::secrets::redact(&format!("Authorization: Bearer {TOKEN}"));
    assert!(!redacted.contains(TOKEN), "{redacted}");

    let (port, asked) = bearer_registry(TOKEN, Some("http://tokens.example.invalid/token"));
    let repository = Repository::parse(&format!("127.0.0.1:{port}/app")).unwrap();
    let login = Credential::new(format!("127.0.0.1:{port}"), "someone", Secret::new("a-password-for-no-one"));
    let registry = Registry::new(&repository, Some(&login), Duration::from_secs(5)).unwrap();
    let error = crate::platform::runtime().block_on(registry.authorize(Access::Pull)).expect_err("a plain-HTTP realm");
    assert!(error.to_string().contains("the token server is plain HTTP"), "{error}");
    assert!(asked.lock().unwrap().is_empty());
}
