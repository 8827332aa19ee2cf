//! A registry's rate limit (429 Too Many Requests): how long the agent waits for it to lift before
//! the run fails with [`Error::RateLimited`](crate::error::Error::RateLimited), for its own registry
//! calls (the comparison, the image index, the base image's read: [`crate::registry::api`]) and for
//! the pushes it asks the daemon for.
//!
//! The agent's own calls wait as the registry's `Retry-After` asks, when it gives one (at least
//! [`FIRST_WAIT`], so that a `0` does not make a busy loop); a registry that asks for more than the
//! patience has left is not waited for at all: the run fails at once and says so. Without one —
//! and for the daemon's pushes, whose errors are text and relay no header — the waits double from
//! [`FIRST_WAIT`], each at most [`LONGEST_WAIT`]. Either way [`PATIENCE`] in all. Docker Hub's pull
//! quota without a `Retry-After` is not waited for at all ([`is_pull_quota`]).

use std::time::Duration;

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

/// Whether a 429's message is Docker Hub's pull quota ("You have reached your pull rate limit"):
/// a limit per hours of pulls, which no wait the agent can afford lifts. Without a `Retry-After`
/// such an answer is not waited for: the comparison pushes at once, the cache line does without.
pub fn is_pull_quota(message: &str) -> bool {
    message.to_ascii_lowercase().contains("pull rate limit")
}

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
    /// The wait before the next attempt: what the registry's `Retry-After` asks (`asked`), else
    /// the next of the doubling waits; `None` when [`PATIENCE`] is spent, or would be before the
    /// registry's asked wait is over.
    pub fn next_wait(&mut self, asked: Option<Duration>) -> Option<Duration> {
        let left = PATIENCE.saturating_sub(self.waited);
        let doubling = self.next.min(LONGEST_WAIT);
        self.next *= 2;
        let wait = match asked {
            Some(asked) if asked.max(FIRST_WAIT) > left => return None,
            Some(asked) => asked.max(FIRST_WAIT),
            None if left.is_zero() => return None,
            None => doubling.min(left),
        };
        self.waited += wait;
        Some(wait)
    }

    /// How long the waits took so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_double_up_to_the_longest_and_stop_at_the_patience() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = std::iter::from_fn(|| backoff.next_wait(None)).map(|wait| wait.as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 15]);
        assert_eq!(backoff.waited(), PATIENCE);
    }

    #[test]
    fn docker_hubs_pull_quota_is_told_from_a_throttle() {
        assert!(is_pull_quota("TOOMANYREQUESTS: You have reached your pull rate limit. You may increase the limit"));
        assert!(!is_pull_quota("TOOMANYREQUESTS: Rate exceeded"));
    }

    #[test]
    fn a_retry_after_is_waited_as_asked_unless_it_outlasts_the_patience() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_wait(Some(Duration::from_secs(3))), Some(Duration::from_secs(3)));
        assert_eq!(backoff.next_wait(Some(Duration::ZERO)), Some(FIRST_WAIT), "no busy loop on a 0");
        assert_eq!(backoff.next_wait(Some(Duration::from_secs(20))), Some(Duration::from_secs(20)));
        assert_eq!(backoff.waited(), Duration::from_secs(24));
        assert_eq!(backoff.next_wait(Some(Duration::from_secs(7))), None, "7 s more would pass the 30");
        assert_eq!(backoff.next_wait(None), Some(Duration::from_secs(6)), "the rest of the patience");
        assert_eq!(backoff.next_wait(None), None);
        let mut asked_too_much = Backoff::default();
        assert_eq!(asked_too_much.next_wait(Some(Duration::from_secs(3600))), None);
        assert_eq!(asked_too_much.waited(), Duration::ZERO);
    }
}
