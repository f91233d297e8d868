//! The embedded runtime: the very same [`PolicyHandler`] fed by store subscriptions, one
//! [`PolicySubscriber`] per policy (checkpoint `policy:<name>`), no NATS.
//!
//! A failing event rolls its batch back ([`run_subscription`] resumes from the checkpoint);
//! the runner retries with backoff up to the configured attempts, then marks the event as given
//! up: the next run records `PolicyFailed` for it, in the batch's transaction, instead of
//! applying the policy, and the checkpoint moves past it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use lifeline_model::envelope::RecordedEvent;
use lifeline_store::{
    run_subscription_with, EventStore, StoreTransaction, Subscriber, SubscriberError,
    SubscriptionError, SubscriptionOptions,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::failures::record_failure;
use super::{sleep_or_shutdown, RetryPolicy};
use crate::handler::{PolicyError, PolicyHandler};

/// How the embedded policies read and retry.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddedOptions {
    pub retry: RetryPolicy,
    pub subscription: SubscriptionOptions,
}

/// The subscriber (and checkpoint) name of `policy` in the embedded runtime: `policy:<name>`.
pub fn subscriber_name(policy: &str) -> String {
    format!("policy:{policy}")
}

/// One policy of a handler as a store [`Subscriber`] named `policy:<name>`.
pub struct PolicySubscriber {
    handler: Arc<dyn PolicyHandler>,
    policy: String,
    name: String,
    /// Events given up on, with the last error and the attempts made: recorded as
    /// `PolicyFailed` when next met.
    given_up: HashMap<Uuid, (String, u32)>,
}

impl PolicySubscriber {
    pub fn new(handler: Arc<dyn PolicyHandler>, policy: &str) -> Self {
        Self {
            handler,
            policy: policy.to_owned(),
            name: subscriber_name(policy),
            given_up: HashMap::new(),
        }
    }

    /// Runs the subscription until `shutdown`, retrying a failing event in-process with
    /// backoff up to `options.retry.max_attempts`, then recording `PolicyFailed` and moving on.
    pub async fn run(
        mut self,
        store: EventStore,
        options: EmbeddedOptions,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut attempts: HashMap<Uuid, u32> = HashMap::new();
        let mut unavailable: HashMap<Uuid, u32> = HashMap::new();
        loop {
            let result =
                run_subscription_with(&store, &mut self, shutdown.clone(), options.subscription)
                    .await;
            let delay = match result {
                Ok(()) => break,
                // The store away (a transient error inside the policy): no attempt was made;
                // waited out, never recorded as PolicyFailed. Past `MAX_UNAVAILABLE_RUNS` for
                // one event (a fault that only looks like the store's absence), such failures
                // count as attempts, as in the JetStream consumers.
                Err(SubscriptionError::Handler {
                    event_id, source, ..
                }) if transient(&source)
                    && unavailable.get(&event_id).copied().unwrap_or(0) < MAX_UNAVAILABLE_RUNS =>
                {
                    *unavailable.entry(event_id).or_insert(0) += 1;
                    let delay = options.retry.max_delay.min(options.retry.base_delay * 4);
                    tracing::warn!(subscriber = %self.name, %source, ?delay, "store unavailable; will retry");
                    delay
                }
                Err(SubscriptionError::Handler {
                    event_id, source, ..
                }) => {
                    let attempt = attempts.entry(event_id).or_insert(0);
                    *attempt += 1;
                    let attempt = *attempt;
                    if attempt >= options.retry.attempts() {
                        attempts.remove(&event_id);
                        unavailable.remove(&event_id);
                        self.given_up
                            .insert(event_id, (source.to_string(), attempt));
                        continue;
                    }
                    let delay = options.retry.delay_after(attempt);
                    tracing::warn!(subscriber = %self.name, %event_id, attempt, ?delay, error = %source, "policy failed; will retry");
                    delay
                }
                Err(SubscriptionError::Store(error)) => {
                    let delay = options.retry.max_delay.min(options.retry.base_delay * 4);
                    tracing::warn!(subscriber = %self.name, %error, ?delay, "store failed; will retry");
                    delay
                }
            };
            if sleep_or_shutdown(delay, &mut shutdown).await {
                break;
            }
        }
    }
}

#[async_trait]
impl Subscriber for PolicySubscriber {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        if !self.handler.wants(&self.policy, &event.event_type) {
            return Ok(());
        }
        if let Some((error, attempts)) = self.given_up.get(&event.event_id) {
            record_failure(
                tx,
                &self.policy,
                event.event_id,
                Some(event),
                error,
                *attempts,
            )
            .await
            .map_err(SubscriberError::failed)?;
            // Kept: if this batch rolls back, the next run records it again (a second
            // recording of a committed one is a no-op: the event id is deterministic).
            return Ok(());
        }
        self.handler
            .apply(&self.policy, tx, event)
            .await
            .map_err(SubscriberError::failed)
    }
}

/// How many runs the store's absence may fail on one event before such failures count as
/// attempts (`ConsumerOptions::max_unavailable_deliveries` of the JetStream consumers).
const MAX_UNAVAILABLE_RUNS: u32 = 100;

/// Whether a subscriber's failure is the store being unavailable, not the policy's.
fn transient(error: &SubscriberError) -> bool {
    match error {
        SubscriberError::Store(error) => error.is_transient(),
        SubscriberError::Append(lifeline_store::AppendError::Store(error)) => error.is_transient(),
        SubscriberError::Failed(error) => error
            .downcast_ref::<PolicyError>()
            .is_some_and(PolicyError::is_transient),
        SubscriberError::Append(_) => false,
    }
}

/// Runs one [`PolicySubscriber`] per policy of `handler` until `shutdown`.
pub async fn run_embedded_policies(
    store: EventStore,
    handler: Arc<dyn PolicyHandler>,
    options: EmbeddedOptions,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for policy in handler.policy_names() {
        let subscriber = PolicySubscriber::new(Arc::clone(&handler), policy);
        tasks.spawn(subscriber.run(store.clone(), options, shutdown.clone()));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a policy subscription task ended abnormally");
        }
    }
}
