//! The runtimes that feed the policies: the relay (store -> JetStream), the JetStream policy
//! consumers, the embedded store subscriptions, the operator's failed-run tools, the roles a
//! `lifeline` process runs, and their figures for `/metrics` (`stats`: relay and policy lag).
//!
//! Only this module (the relay and the consumers) knows NATS. Every runtime hands events to the
//! same [`PolicyHandler`](crate::PolicyHandler) inside a store transaction.

pub mod bus;
pub mod consumer;
pub mod embedded;
pub mod failures;
pub mod relay;
pub mod roles;
pub mod stats;

use std::time::Duration;

use tokio::sync::watch;

pub use bus::{connect_nats, BusConfig, EventNotice, Notices};
pub use consumer::{run_policy_consumer, run_policy_consumers, ConsumerOptions};
pub use embedded::{run_embedded_policies, EmbeddedOptions, PolicySubscriber};
pub use failures::{
    failure_counts, failure_counts_of, list_failed, retry_failed, FailedPolicyRun, FailureCounts,
    RetryFilter, RetryReport,
};
pub use relay::{Relay, RelayOptions};
pub use roles::{run_roles, Role, RuntimeSettings};

/// An operational failure of a runtime: the store or NATS. Runtimes log these and retry with
/// backoff; they reach the caller only from start-up steps and the operator's tools.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] lifeline_store::StoreError),
    #[error(transparent)]
    Append(#[from] lifeline_store::AppendError),
    #[error("nats: cannot {action}: {source}")]
    Nats {
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("event {event_id} named by a bus message is not in the store")]
    EventMissing { event_id: uuid::Uuid },
    #[error("malformed bus message: {0}")]
    MalformedNotice(#[source] serde_json::Error),
    #[error("cannot encode a bus message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("role {role} needs a NATS connection (set the NATS url)")]
    NatsRequired { role: &'static str },
    /// A retry of failed runs named a policy the handler does not have: a mistake, not
    /// "nothing to retry".
    #[error("no policy named {policy:?}: one of {}", known.join(", "))]
    UnknownPolicy {
        policy: String,
        known: Vec<&'static str>,
    },
}

impl RuntimeError {
    pub(crate) fn nats(action: &'static str, source: impl Into<async_nats::Error>) -> Self {
        Self::Nats {
            action,
            source: source.into(),
        }
    }
}

/// How a failing policy run is retried: how many attempts in all, and the exponential delay
/// between them (`base_delay * 2^(attempt-1)`, at most `max_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before `PolicyFailed` is recorded and the event is left behind (at least 1).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempt`-th failed attempt (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        self.base_delay
            .saturating_mul(1_u32 << exponent)
            .min(self.max_delay)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// The consecutive failures of a loop that restarts a long-running task (a subscription), for
/// [`RetryPolicy::delay_after`]. A run that lasted at least `max_delay` before it failed was
/// healthy: the count starts again, so an outage long after the last one waits `base_delay`
/// first, not the longest delay earned by every outage in the process's life.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    failures: u32,
}

impl Restarts {
    /// Counts a failure of a run that lasted `ran_for`; answers the delay before the next run.
    pub(crate) fn after_failure(&mut self, retry: &RetryPolicy, ran_for: Duration) -> Duration {
        if ran_for >= retry.max_delay {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        retry.delay_after(self.failures)
    }
}

/// Waits `delay` or until shutdown; true if shutdown.
pub(crate) async fn sleep_or_shutdown(
    delay: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        let delays: Vec<_> = (1..=5).map(|attempt| policy.delay_after(attempt)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 500, 500]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(policy.delay_after(200), Duration::from_millis(500));
    }

    #[test]
    fn restarts_back_off_while_failing_and_start_again_after_a_healthy_run() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        };
        let mut restarts = Restarts::default();
        let quick = Duration::from_millis(10);
        let delays: Vec<_> = (0..8)
            .map(|_| restarts.after_failure(&policy, quick).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        // An hour of work, then an outage: it waits as for a first failure.
        assert_eq!(
            restarts.after_failure(&policy, Duration::from_secs(3_600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            restarts.after_failure(&policy, quick),
            Duration::from_secs(2)
        );
        // A run just short of the longest delay still counts as the same outage.
        assert_eq!(
            restarts.after_failure(&policy, Duration::from_secs(59)),
            Duration::from_secs(4)
        );
    }
}
