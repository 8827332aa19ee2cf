//! A registry's rate limit (429 Too Many Requests): how long the agent waits for it to lift before
//! the run fails with [`Error::RateLimited`](crate::error::Error::RateLimited), for its own registry
//! calls (the comparison, the image index) and for the pushes it asks the daemon for.
//!
//! `Retry-After` is not honoured, because the agent never sees it: oci-client 0.18 turns a 429
//! into an error that keeps the body (`RegistryError` with the `TOOMANYREQUESTS` code, or
//! `ServerError { code: 429 }`, or the token server's `AuthenticationFailure(body)`) but drops the
//! response's headers, and the daemon does not relay them either (its push and pull errors are
//! text). So the waits are the agent's own: doubling from [`FIRST_WAIT`], each at most
//! [`LONGEST_WAIT`], [`PATIENCE`] in all.

use std::future::Future;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::docker::cause::says_rate_limited;

/// How long the agent waits in all, per call, for a rate limit to lift. The limits that lift by
/// waiting are the per-second throttles (ECR's API rates, a registry's burst limit): they clear
/// within seconds. The quota kind (Docker Hub's pulls per 6 hours) does not clear in minutes,
/// and waiting for it would only burn the build's minutes: so half a minute, then the run fails
/// with the hint (log in, a pull-through cache, later).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The first wait after a 429; each next one doubles.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest single wait, so that [`PATIENCE`] holds several attempts (1, 2, 4, 8, 15 s).
pub const LONGEST_WAIT: Duration = Duration::from_secs(15);

/// The waits between the attempts of one call that a registry answers with 429.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    waited: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_WAIT, waited: Duration::ZERO }
    }
}

impl Backoff {
    /// The wait before the next attempt, or `None` when [`PATIENCE`] is spent.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let left = PATIENCE.saturating_sub(self.waited);
        if left.is_zero() {
            return None;
        }
        let wait = self.next.min(LONGEST_WAIT).min(left);
        self.waited += wait;
        self.next *= 2;
        Some(wait)
    }

    /// How long the waits took so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Whether oci-client's error is a registry's 429: Docker Hub's and distribution's
/// `TOOMANYREQUESTS` error code, a 429 with another body, or a token server's 429 body.
pub fn is_rate_limited(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|each| each.code == OciErrorCode::Toomanyrequests || says_rate_limited(&each.message)),
        OciDistributionError::ServerError { code: 429, .. } => true,
        OciDistributionError::AuthenticationFailure(body) => says_rate_limited(body),
        _ => false,
    }
}

/// `call` again after each 429, as [`Backoff`] waits, with a warning naming `registry` and `what`;
/// its last error once [`PATIENCE`] is spent.
pub async fn patiently<T, F, Fut>(registry: &str, what: &str, mut call: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match call().await {
            Err(error) if is_rate_limited(&error) => match backoff.next_wait() {
                Some(wait) => {
                    tracing::warn!(
                        "{registry} answered {what} with 429 Too Many Requests (rate-limited); retrying in {}s",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                }
                None => return Err(error),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    #[test]
    fn the_waits_double_up_to_the_longest_and_stop_at_the_patience() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = std::iter::from_fn(|| backoff.next_wait()).map(|wait| wait.as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 15]);
        assert_eq!(backoff.waited(), PATIENCE);
    }

    #[test]
    fn a_429_is_told_apart_in_each_form_oci_client_gives_it() {
        let docker_hub = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}"#;
        let envelope: OciEnvelope = serde_json::from_str(docker_hub).unwrap();
        let url = "http://127.0.0.1:5000/v2/app/manifests/latest".to_string();
        assert!(is_rate_limited(&OciDistributionError::RegistryError { envelope, url: url.clone() }));
        let plain = OciDistributionError::ServerError { code: 429, url: url.clone(), message: String::new() };
        assert!(is_rate_limited(&plain));
        assert!(is_rate_limited(&OciDistributionError::AuthenticationFailure(docker_hub.to_string())));
        let denied = OciEnvelope {
            errors: vec![OciError { code: OciErrorCode::Denied, message: "denied".into(), detail: Default::default() }],
        };
        assert!(!is_rate_limited(&OciDistributionError::RegistryError { envelope: denied, url: url.clone() }));
        assert!(!is_rate_limited(&OciDistributionError::ServerError { code: 503, url, message: String::new() }));
    }
}
