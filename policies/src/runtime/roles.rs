//! The roles a `lifeline` process runs: `relay`, `worker` (policy consumers and the given
//! store subscribers), `embedded` (policies and subscribers fed by the store, no NATS); all
//! stop on one shutdown watch channel.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use lifeline_store::{
    run_subscription_group, run_subscription_with, EventStore, Subscriber, SubscriberError,
    SubscriptionError, SubscriptionOptions,
};
use tokio::sync::watch;

use super::bus::BusConfig;
use super::consumer::{run_policy_consumers, ConsumerOptions};
use super::embedded::{run_embedded_policies, EmbeddedOptions};
use super::relay::{Relay, RelayOptions};
use super::{sleep_or_shutdown, Restarts, RuntimeError};
use crate::handler::PolicyHandler;

/// A runtime role of a `lifeline` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes the store's log to JetStream.
    Relay,
    /// Runs every policy consumer (JetStream) and the given store subscribers (projections): the
    /// inbox on its own, the others as one group ([`run_roles`]).
    Worker,
    /// Runs every policy and the given store subscribers from the store: no NATS.
    Embedded,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Worker => "worker",
            Role::Embedded => "embedded",
        }
    }
}

/// The settings of every role.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    pub bus: BusConfig,
    pub relay: RelayOptions,
    pub consumer: ConsumerOptions,
    pub embedded: EmbeddedOptions,
}

/// Runs `roles` until `shutdown` turns true (or its sender is dropped), then waits for every
/// runtime to stop. `jetstream` is required by `Relay` and `Worker` (see
/// [`super::connect_nats`]). `subscribers` (projections) run under `Worker` or `Embedded`, each
/// restarted with backoff if it fails; with neither role they are not run. Those named in
/// [`SUBSCRIBERS_ALONE`] (the inbox) run on their own subscription; the others as one group
/// ([`run_subscription_group`]).
///
/// Errors only at start-up (a role that needs NATS without a connection); afterwards faults are
/// logged and retried.
pub async fn run_roles(
    store: EventStore,
    jetstream: Option<jetstream::Context>,
    roles: &[Role],
    handler: Arc<dyn PolicyHandler>,
    subscribers: Vec<Box<dyn Subscriber>>,
    settings: RuntimeSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let needs_nats = roles
        .iter()
        .find(|role| matches!(role, Role::Relay | Role::Worker));
    if let (Some(role), None) = (needs_nats, &jetstream) {
        return Err(RuntimeError::NatsRequired {
            role: role.as_str(),
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut run_subscribers = false;
    for role in roles {
        match (role, &jetstream) {
            (Role::Relay, Some(jetstream)) => {
                let relay = Relay::new(
                    store.clone(),
                    jetstream.clone(),
                    settings.bus.clone(),
                    settings.relay.clone(),
                );
                let shutdown = shutdown.clone();
                tasks.spawn(async move { relay.run(shutdown).await });
            }
            (Role::Worker, Some(jetstream)) => {
                run_subscribers = true;
                tasks.spawn(run_policy_consumers(
                    store.clone(),
                    jetstream.clone(),
                    settings.bus.clone(),
                    settings.consumer.clone(),
                    Arc::clone(&handler),
                    shutdown.clone(),
                ));
            }
            (Role::Embedded, _) => {
                run_subscribers = true;
                tasks.spawn(run_embedded_policies(
                    store.clone(),
                    Arc::clone(&handler),
                    settings.embedded,
                    shutdown.clone(),
                ));
            }
            (Role::Relay | Role::Worker, None) => {}
        }
    }
    let (alone, subscribers): (Vec<_>, Vec<_>) = subscribers
        .into_iter()
        .partition(|subscriber| SUBSCRIBERS_ALONE.contains(&subscriber.name()));
    if run_subscribers {
        for subscriber in alone {
            let mut options = settings.embedded;
            options.subscription.batch_size = PROJECTION_BATCH_SIZE;
            tasks.spawn(run_subscriber(
                store.clone(),
                subscriber,
                options,
                shutdown.clone(),
            ));
        }
    }
    if run_subscribers && !subscribers.is_empty() {
        tasks.spawn(run_subscriber_group(
            store.clone(),
            subscribers,
            settings.embedded,
            shutdown.clone(),
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a runtime task ended abnormally");
        }
    }
    Ok(())
}

/// The most events the subscriber group (the projections) handles per batch. Caught up, a
/// batch is whatever arrived since the last one (a few dozen at 500 births/s); behind, every
/// batch is full, and its fixed cost (about twenty round trips: the read, each projection's
/// look-ups and upserts, the checkpoints, the commit) limits how fast it catches up. With 200
/// (the policies' size), `lifeline serve` at 500 births/s (W5) handled about 1,250 events/s
/// against 2,300 arriving, and its inbox fell 7-12 s behind (p99); with 1,000, 1.4-3.4 s. With
/// 2,000 the inbox did no better and the log's readers waited longer behind the projections'
/// bigger write phase (the gap-free horizon).
pub const PROJECTION_BATCH_SIZE: usize = 1_000;

/// The store subscribers [`run_roles`] runs on their own instead of in the group: the inbox,
/// which agencies work from and whose lag is the time a new task takes to reach them. In the
/// group, a task waited for the batch in progress and then for its own batch, each the three
/// projections' look-ups, folds and writes: about 150 ms a batch at 500 births/s on 2 cores,
/// 230 ms (p50) from the task in the log to its inbox row. Alone, the inbox reads only the task
/// events' payloads and does little per batch: 48-53 ms (W3 at 500/s, interleaved; first task
/// p99 620-705 -> 301-357 ms; see ARCHITECTURE.md). It costs one read and one commit more per
/// batch.
pub const SUBSCRIBERS_ALONE: [&str; 1] = [crate::projections::inbox::INBOX_PROJECTION];

/// Runs the store subscribers as one group (one read and one transaction per batch for all:
/// [`run_subscription_group`]) until shutdown, restarting it with backoff after a failure (each
/// member resumes from its own checkpoint, so nothing is doubled). A member that refuses an
/// event (its own fault, not the store's) leaves the group and is retried alone, so that it does
/// not hold the others back.
async fn run_subscriber_group(
    store: EventStore,
    mut subscribers: Vec<Box<dyn Subscriber>>,
    options: EmbeddedOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let group_options = SubscriptionOptions {
        batch_size: PROJECTION_BATCH_SIZE,
        ..options.subscription
    };
    let mut alone = tokio::task::JoinSet::new();
    let mut restarts = Restarts::default();
    while !subscribers.is_empty() {
        let started = Instant::now();
        let error =
            match run_subscription_group(&store, &mut subscribers, shutdown.clone(), group_options)
                .await
            {
                Ok(()) => break,
                Err(error) => error,
            };
        if let SubscriptionError::Handler {
            subscriber: failed,
            source,
            ..
        } = &error
        {
            let own_fault = !matches!(source, SubscriberError::Store(_));
            let position = subscribers
                .iter()
                .position(|subscriber| subscriber.name() == failed);
            if let (true, Some(position)) = (own_fault && subscribers.len() > 1, position) {
                let subscriber = subscribers.remove(position);
                tracing::error!(subscriber = %failed, %error, "subscriber left its group; it is retried alone");
                alone.spawn(run_subscriber(
                    store.clone(),
                    subscriber,
                    options,
                    shutdown.clone(),
                ));
                continue;
            }
        }
        let delay = restarts.after_failure(&options.retry, started.elapsed());
        tracing::error!(%error, ?delay, "subscriber group failed; restarting");
        if sleep_or_shutdown(delay, &mut shutdown).await {
            break;
        }
    }
    while let Some(joined) = alone.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a subscriber task ended abnormally");
        }
    }
}

/// Runs one store subscriber until shutdown, restarting it with backoff after a failure (it
/// resumes from its checkpoint, so nothing is doubled).
async fn run_subscriber(
    store: EventStore,
    mut subscriber: Box<dyn Subscriber>,
    options: EmbeddedOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut restarts = Restarts::default();
    loop {
        let started = Instant::now();
        match run_subscription_with(
            &store,
            subscriber.as_mut(),
            shutdown.clone(),
            options.subscription,
        )
        .await
        {
            Ok(()) => break,
            Err(error) => {
                let delay = restarts.after_failure(&options.retry, started.elapsed());
                tracing::error!(subscriber = %subscriber.name(), %error, ?delay, "subscriber failed; restarting");
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    break;
                }
            }
        }
    }
}
