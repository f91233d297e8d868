//! The runtimes' figures for the operators' `/metrics`: how far the relay is behind the log, and
//! how many events each policy still has to process, in either runtime.
//!
//! - Relay: the committed events after its checkpoint, and when the first of them was recorded.
//! - Policies on JetStream: each durable consumer's `num_pending` (notices not yet delivered)
//!   plus `num_ack_pending` (delivered and not yet acknowledged, including those waiting for a
//!   delayed redelivery after a failed attempt). A consumer that does not exist yet counts the
//!   whole stream (it will start from its first message); no stream counts 0.
//! - Policies embedded: the committed events after each `policy:<name>` checkpoint.
//!
//! A filtered consumer (`PolicyHandler::notices`: one event type, or `corrections`' record
//! events) counts only the notices its filter lets through; an unfiltered one (a durable created
//! by an earlier version) and the embedded subscriptions count every event, also those the
//! policy only skips.
//!
//! Failures by policy are [`super::failures::failure_counts`].

use async_nats::jetstream::{self, context::ConsumerInfoErrorKind, context::GetStreamErrorKind};
use lifeline_store::stats::{self, LogLag};
use lifeline_store::EventStore;

use super::bus::BusConfig;
use super::consumer::ConsumerOptions;
use super::embedded::subscriber_name;
use super::relay::RelayOptions;
use super::roles::RuntimeSettings;
use super::RuntimeError;

/// Where a deployment's policies run, and so where their lag (and the relay's) is read.
#[derive(Debug, Clone)]
pub enum LagProbe {
    /// With NATS: the relay's checkpoint and the policies' durable consumers.
    JetStream(Box<JetStreamProbe>),
    /// Without: the embedded runtime's `policy:<name>` checkpoints; there is no relay.
    Embedded,
}

/// The JetStream connection and the names (stream, durable consumers, relay checkpoint) of a
/// deployment with NATS.
#[derive(Debug, Clone)]
pub struct JetStreamProbe {
    pub jetstream: jetstream::Context,
    pub settings: RuntimeSettings,
}

impl LagProbe {
    pub fn jetstream(jetstream: jetstream::Context, settings: RuntimeSettings) -> Self {
        Self::JetStream(Box::new(JetStreamProbe {
            jetstream,
            settings,
        }))
    }

    /// Whether there is a relay to measure.
    pub fn has_relay(&self) -> bool {
        matches!(self, Self::JetStream(_))
    }

    /// The relay's lag; `None` without NATS (no relay).
    pub async fn relay_lag(&self, store: &EventStore) -> Result<Option<LogLag>, RuntimeError> {
        match self {
            Self::JetStream(probe) => relay_lag(store, &probe.settings.relay).await.map(Some),
            Self::Embedded => Ok(None),
        }
    }

    /// The lag of each of `policies`, in this deployment's runtime.
    pub async fn policy_lags(
        &self,
        store: &EventStore,
        policies: &[String],
    ) -> Result<Vec<PolicyLag>, RuntimeError> {
        match self {
            Self::JetStream(probe) => {
                // Nothing is asked of a server not connected: a request would only wait for
                // its time-out, and stay queued in the client until the connection comes.
                super::bus::nats_connected(&probe.jetstream)
                    .map_err(|reason| RuntimeError::nats("read the consumers' lag", reason))?;
                let settings = &probe.settings;
                jetstream_policy_lags(
                    &probe.jetstream,
                    &settings.bus,
                    &settings.consumer,
                    policies,
                )
                .await
            }
            Self::Embedded => embedded_policy_lags(store, policies).await,
        }
    }
}

/// How many events or notices one policy still has to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLag {
    pub policy: String,
    pub pending: u64,
}

/// How far the relay whose options are `relay` is behind the log's head.
pub async fn relay_lag(store: &EventStore, relay: &RelayOptions) -> Result<LogLag, RuntimeError> {
    Ok(stats::subscriber_lag(store, &relay.checkpoint).await?)
}

/// The lag of each of `policies` in the embedded runtime (their store checkpoints).
pub async fn embedded_policy_lags(
    store: &EventStore,
    policies: &[String],
) -> Result<Vec<PolicyLag>, RuntimeError> {
    let mut lags = Vec::with_capacity(policies.len());
    for policy in policies {
        let lag = stats::subscriber_lag(store, &subscriber_name(policy)).await?;
        lags.push(PolicyLag {
            policy: policy.clone(),
            pending: lag.events,
        });
    }
    Ok(lags)
}

/// The lag of each of `policies` on JetStream: their durable consumers on `bus`'s stream.
pub async fn jetstream_policy_lags(
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    options: &ConsumerOptions,
    policies: &[String],
) -> Result<Vec<PolicyLag>, RuntimeError> {
    let stream = match jetstream.get_stream(&bus.stream_name).await {
        Ok(stream) => stream,
        Err(error) => {
            let missing = matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(ref inner)
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if !missing {
                return Err(RuntimeError::nats("get the event stream", error));
            }
            // Nothing was ever relayed: nothing to process (the relay's lag shows the rest).
            return Ok(policies
                .iter()
                .map(|policy| PolicyLag {
                    policy: policy.clone(),
                    pending: 0,
                })
                .collect());
        }
    };
    let messages = stream.cached_info().state.messages;
    let mut lags = Vec::with_capacity(policies.len());
    for policy in policies {
        let pending = match stream.consumer_info(options.durable_name(policy)).await {
            Ok(info) => info
                .num_pending
                .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)),
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => messages,
            Err(error) => return Err(RuntimeError::nats("get a policy consumer's info", error)),
        };
        lags.push(PolicyLag {
            policy: policy.clone(),
            pending,
        });
    }
    Ok(lags)
}
