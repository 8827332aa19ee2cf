//! Whose failure it was: a build or a push that the daemon failed is the Dockerfile's (or the
//! registry login's) unless the daemon's own words say it was the host's — its disk full, its
//! networking, container runtime or storage driver broken, the daemon restarted under the build —
//! or a registry's rate limit.
//!
//! Read from the daemon's error, never from a step's output: a step that exited non-zero failed
//! in its own way, whatever it printed (a `RUN df` that prints "no space left on device" is not a
//! full disk), so its failure stays the build's. The words are the ones Docker 20.10's BuildKit
//! and classic builder, and 26's and 28's, return (tested on each in `tests/it/faults.rs`).

use std::time::Duration;

use crate::docker::daemon::Daemon;
use crate::docker::disk;
use crate::error::{Error, step_exited};

/// How long the disk line may take when the disk is full: the error is printed without it after.
const DISK_LINE_WAIT: Duration = Duration::from_secs(5);
/// How long a daemon that broke off a build is given to answer again, as one restarted by
/// systemd does (docker.service restarts it after 2 s) — then the build died with its daemon, a
/// fault of the host's; a daemon still silent after it stays a daemon failure (`daemon`, 30).
const DAEMON_BACK_WAIT: Duration = Duration::from_secs(10);

/// `error`, named as the host's when the daemon's words say so; `during` names what failed
/// ("the build", "the push of REF").
pub async fn named(daemon: &Daemon, during: &str, error: Error) -> Error {
    if let Error::Daemon { detail, .. } = &error {
        if detail.starts_with("broke off") && answers_again(daemon).await {
            let message = format!("the daemon {detail}, and answers again: it restarted (or crashed) during {during}");
            return Error::HostRuntime {
                target: daemon.target.clone(),
                during: during.to_string(),
                message,
                built: None,
            };
        }
    }
    let Some(message) = daemon_words(&error) else { return error };
    let during = match &error {
        Error::Build { step: Some(step), .. } => format!("{during} at {step}"),
        _ => during.to_string(),
    };
    // The classic builder's failures are the daemon's answer to the request: "answered 500: …".
    let message = strip_status(message).to_string();
    if says_rate_limited(&message) {
        return rate_limited(&error, during, message);
    }
    if disk_full(&message) {
        let disk = match tokio::time::timeout(DISK_LINE_WAIT, disk::disk_use(daemon)).await {
            Ok(Ok(used)) => Some(used.summary().trim_start_matches("host disk: ").to_string()),
            _ => None,
        };
        return Error::HostDiskFull { target: daemon.target.clone(), during, message, disk, built: built(&error) };
    }
    if runtime_failed(&message) {
        return Error::HostRuntime { target: daemon.target.clone(), during, message, built: built(&error) };
    }
    error
}

/// Whether the daemon answers a ping within [`DAEMON_BACK_WAIT`].
async fn answers_again(daemon: &Daemon) -> bool {
    let deadline = tokio::time::Instant::now() + DAEMON_BACK_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), daemon.docker.ping()).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// How many steps the host carried out before the failure, when known: a build's own count; none
/// when the daemon refused the build's request itself (the classic builder's "answered 500").
fn built(error: &Error) -> Option<usize> {
    match error {
        Error::Build { built, .. } => Some(*built),
        Error::Daemon { detail, .. } if detail.starts_with("answered ") => Some(0),
        _ => None,
    }
}

/// The daemon's own words in a build's or a push's failure, or `None` when a step's process
/// exited non-zero (its failure is its own).
fn daemon_words(error: &Error) -> Option<&str> {
    let message = match error {
        Error::Build { message, .. } | Error::Push { message, .. } => message.as_str(),
        Error::Daemon { detail, .. } => detail.as_str(),
        _ => return None,
    };
    (!step_exited(message)).then_some(message)
}

/// A daemon's answer without its status: "answered 500: write /blob: …" → "write /blob: …".
fn strip_status(detail: &str) -> &str {
    detail
        .strip_prefix("answered ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(status, _)| status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()))
        .map_or(detail, |(_, message)| message)
}

/// A registry's 429 Too Many Requests in the daemon's (or a registry's) words. Docker 20.10's
/// BuildKit: "pulling from host HOST failed with status code [manifests TAG]: 429 Too Many
/// Requests"; 26's and 28's: "unexpected status from HEAD request to URL: 429 Too Many Requests";
/// the classic builder, a push and Docker Hub's body: "toomanyrequests: You have reached your pull
/// rate limit…"; the `/auth` login check: "login attempt to URL failed with status: 429 Too Many
/// Requests".
pub fn says_rate_limited(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("too many requests") || message.contains("toomanyrequests")
}

/// The registry a rate-limit message names, as the user knows it (Docker Hub's hosts are
/// "Docker Hub (docker.io)"): the host of a registry API URL in it (`http://HOST/v2/…`; the
/// docker.com link of Docker Hub's message is not one), BuildKit 0.8's "pulling from host HOST",
/// an image reference it names, else the image of the failing step (`FROM REF`, `[internal] load
/// metadata for REF`): the classic builder says only "toomanyrequests: …".
pub fn limiting_registry(message: &str, step: Option<&str>) -> Option<String> {
    let from_url = message.match_indices("://").find_map(|(at, sign)| {
        let rest = &message[at + sign.len()..];
        let (host, path) = rest.split_once('/')?;
        (path == "v2" || path.starts_with("v2/")).then_some(host).filter(|host| !host.is_empty())
    });
    let from_words = || {
        let after = |sign: &str| message.split_once(sign).map(|(_, rest)| rest);
        let host = after("pulling from host ").and_then(|rest| rest.split_whitespace().next());
        let reference = after("resolve reference \"").and_then(|rest| rest.split('"').next()).or_else(|| {
            let word = after("resolve source metadata for ")?.split_whitespace().next()?;
            Some(word.trim_end_matches(':'))
        });
        host.map(str::to_string).or_else(|| reference.map(registry_of))
    };
    let from_step = || {
        let step = step?;
        // `COPY --from=IMAGE`: the image is pulled as a base image is.
        if let Some((_, image)) = step.split_once(" --from=") {
            return image.split_whitespace().next().map(registry_of);
        }
        let rest = step.split_once("FROM ").or_else(|| step.split_once("metadata for "))?.1;
        rest.split_whitespace().find(|word| !word.starts_with("--")).map(registry_of)
    };
    from_url.map(str::to_string).or_else(from_words).or_else(from_step).map(|host| registry_name(&host))
}

/// The registry of an image reference: its first component when that is a host (it has a `.` or
/// a `:`, or is `localhost`), else Docker Hub.
fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// A registry host as the user knows it: Docker Hub's (`docker.io`, `registry-1.docker.io`,
/// `index.docker.io`) are "Docker Hub (docker.io)".
pub fn registry_name(host: &str) -> String {
    if ["docker.io", "registry-1.docker.io", "index.docker.io", "registry.hub.docker.com"].contains(&host) {
        "Docker Hub (docker.io)".to_string()
    } else {
        host.to_string()
    }
}

/// A registry's 429 as [`Error::RateLimited`], naming the registry from the daemon's words, else
/// from the failing step's image, else the push's registry.
fn rate_limited(error: &Error, during: String, message: String) -> Error {
    let (step, pushed_to, during) = match error {
        Error::Build { step, .. } => (step.as_deref(), None, during),
        Error::Push { reference, registry, .. } => (None, Some(registry.as_str()), format!("{during} of {reference}")),
        _ => (None, None, during),
    };
    let registry = limiting_registry(&message, step)
        .or_else(|| pushed_to.map(registry_name))
        .unwrap_or_else(|| "a registry".to_string());
    Error::RateLimited { registry, during, message }
}

/// ENOSPC, as the daemon writes it: "write /var/lib/docker/overlay2/…/blob: no space left on
/// device" (BuildKit's context copy), "Error processing tar file(exit status 1): write /blob: no
/// space left on device" (the classic builder), "failed to register layer: … no space left on device".
fn disk_full(message: &str) -> bool {
    message.to_ascii_lowercase().contains("no space left on device")
}

/// The host's Docker failing on its own: its networking (a bridge or iptables gone), the
/// container runtime (runc, containerd, the shim) or the storage driver. A command the runtime
/// could not find or start is the Dockerfile's ("executable file not found").
fn runtime_failed(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    if [
        "executable file not found",
        "exec format error",
        "no such file or directory: unknown",
        "permission denied: unknown",
    ]
    .iter()
    .any(|users| message.contains(users))
    {
        return false;
    }
    [
        // networking: 20.10..28 "failed to create endpoint NAME on network bridge: adding interface
        // vethX to bridge docker0 failed: could not find bridge docker0"
        "failed to create endpoint",
        "could not find bridge",
        "failed to set up container networking",
        "failed to setup network",
        "iptables failed",
        "iptables: no chain",
        // the container runtime and containerd
        "oci runtime create failed",
        "failed to create shim",
        "failed to start shim",
        "shim exited",
        "runc did not terminate",
        "containerd.sock",
        "connection error: desc = \"transport",
        // the storage driver
        "error creating overlay mount",
        "failed to mount overlay",
        "driver failed programming",
    ]
    .iter()
    .any(|sign| message.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_exited_is_its_own_failure_whatever_it_says() {
        assert!(step_exited("process \"/bin/sh -c df\" did not complete successfully: exit code: 1"));
        assert!(step_exited("executor failed running [/bin/sh -c df]: exit code: 2\n"));
        assert!(step_exited("The command '/bin/sh -c df' returned a non-zero code: 137"));
        assert!(!step_exited("write /blob: no space left on device"));
        assert!(!step_exited("exit code: "));
        let error = Error::Build {
            step: None,
            message: "process \"/bin/sh -c echo no space left on device; exit 1\" did not complete successfully: exit code: 1"
                .to_string(),
            output: vec!["no space left on device".to_string()],
            built: 1,
        };
        assert!(daemon_words(&error).is_none());
    }

    #[test]
    fn the_daemons_words_for_a_full_disk_and_a_broken_runtime() {
        assert!(disk_full("write /tmp/fx/root/overlay2/qxg8/diff/blob: no space left on device"));
        assert!(disk_full("Error processing tar file(exit status 1): write /blob: no space left on device"));
        assert!(!disk_full("failed to compute cache key: \"/blob\" not found"));
        let bridge = "executor failed running [/bin/busybox sh -c echo hi]: failed to create endpoint qp6h on network \
                      bridge: adding interface veth6fa1bd8 to bridge fxbr0 failed: could not find bridge fxbr0: route \
                      ip+net: no such network interface";
        assert!(runtime_failed(bridge));
        let missing = "process \"/bin/nope\" failed: OCI runtime create failed: runc create failed: unable to start \
                       container process: exec: \"/bin/nope\": stat /bin/nope: no such file or directory: unknown";
        assert!(!runtime_failed(missing));
        assert!(!runtime_failed("failed to compute cache key: \"/blob\" not found"));
    }

    /// The daemons' own words for a base image's registry answering 429 (verbatim from Docker
    /// 20.10, 26 and 28, BuildKit and the classic builder, against the tests' stand-in), the push's
    /// and the login check's, and Docker Hub's as users meet it: each names the registry.
    #[test]
    fn a_429_in_the_daemons_words_names_the_registry() {
        let stand_in = "127.0.0.1:45429";
        let cases = [
            // Docker 20.10, BuildKit
            (
                "failed to solve with frontend dockerfile.v0: failed to create LLB definition: pulling from host \
              127.0.0.1:45429 failed with status code [manifests 1]: 429 Too Many Requests",
                None,
            ),
            // Docker 26 and 28, BuildKit
            (
                "127.0.0.1:45429/library/base:1: failed to resolve source metadata for 127.0.0.1:45429/library/base:1: \
              unexpected status from HEAD request to http://127.0.0.1:45429/v2/library/base/manifests/1: 429 Too Many \
              Requests",
                None,
            ),
            // Docker 20.10 and 26, the classic builder (and their pushes): the registry is not named
            (
                "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating \
              and upgrading: https://www.docker.com/increase-rate-limit",
                Some("step 1/4 FROM 127.0.0.1:45429/library/base:1"),
            ),
            // Docker 28, the classic builder (containerd image store)
            (
                "unknown: failed to resolve reference \"127.0.0.1:45429/library/base:1\": unexpected status from HEAD \
              request to http://127.0.0.1:45429/v2/library/base/manifests/1: 429 Too Many Requests",
                None,
            ),
            // Docker 28, a push
            (
                "unexpected status from HEAD request to http://127.0.0.1:45429/v2/rl/probe/blobs/sha256:8c2f: 429 Too \
              Many Requests",
                None,
            ),
            // every engine, the /auth login check
            ("login attempt to http://127.0.0.1:45429/v2/ failed with status: 429 Too Many Requests", None),
        ];
        for (message, step) in cases {
            assert!(says_rate_limited(message), "{message}");
            assert_eq!(limiting_registry(message, step).as_deref(), Some(stand_in), "{message}");
        }
        let hub = "docker.io/library/alpine:3.19: failed to resolve source metadata for docker.io/library/alpine:3.19: \
                   failed to copy: httpReadSeeker: failed open: unexpected status code \
                   https://registry-1.docker.io/v2/library/alpine/manifests/sha256:51b6: 429 Too Many Requests - Server \
                   message: toomanyrequests: You have reached your pull rate limit.";
        assert_eq!(limiting_registry(hub, None).as_deref(), Some("Docker Hub (docker.io)"));
        let classic = "toomanyrequests: You have reached your pull rate limit.";
        assert_eq!(
            limiting_registry(classic, Some("step 1/2 FROM alpine:3.19 AS base")).as_deref(),
            Some("Docker Hub (docker.io)")
        );
        assert_eq!(
            limiting_registry(classic, Some("step 1/2 FROM --platform=linux/arm64 ghcr.io/o/i")).as_deref(),
            Some("ghcr.io")
        );
        // Docker 20.10, the classic builder, `COPY --from=IMAGE`
        let copy = "step 3/3 COPY --from=127.0.0.1:45429/tools:1 /bin/tool /bin/tool";
        let from_flag = "invalid from flag value 127.0.0.1:45429/tools:1: toomanyrequests: You have reached your pull \
                         rate limit. You may increase the limit by authenticating and upgrading: \
                         https://www.docker.com/increase-rate-limit";
        assert!(says_rate_limited(from_flag));
        assert_eq!(limiting_registry(from_flag, Some(copy)).as_deref(), Some(stand_in));
        assert_eq!(limiting_registry(classic, None), None, "the docker.com link is not a registry");
        assert!(!says_rate_limited("failed to compute cache key: \"/blob\" not found"));
    }

    /// A step of the user's that prints a 429 (a `curl` in a RUN) and exits non-zero is its own
    /// failure, not a rate limit.
    #[test]
    fn a_step_that_prints_a_429_is_not_a_rate_limit() {
        let error = Error::Build {
            step: Some("step 3/4 RUN curl -f https://example.com".to_string()),
            message: "process \"/bin/sh -c curl -f https://example.com\" did not complete successfully: exit code: 22"
                .to_string(),
            output: vec!["curl: (22) The requested URL returned error: 429 Too Many Requests".to_string()],
            built: 2,
        };
        assert!(daemon_words(&error).is_none());
    }
}
