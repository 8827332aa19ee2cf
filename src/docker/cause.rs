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
}
