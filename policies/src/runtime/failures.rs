//! Policy runs that gave up: recording `PolicyFailed` (with a deterministic event id, so a
//! redelivery does not record it twice), and the operator's tools behind
//! `lifeline policies failed` and `lifeline policies retry`.
//!
//! Every `PolicyFailed` and every retry marker goes to one stream, [`FAILURES_STREAM`]: failures
//! are rare, and the operator lists them without scanning the log.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use lifeline_model::codec::{self, decode_recorded};
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
use lifeline_model::system_events::{PolicyFailed, SystemEvent};
use lifeline_store::{EventStore, StoreTransaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::RuntimeError;
use crate::handler::{PolicyError, PolicyHandler};

/// The stream holding every `PolicyFailed` and every retry marker.
pub const FAILURES_STREAM: &str = "policyfailures-log";

/// The event type of the marker a successful retry records.
///
/// Not in `lifeline_model` yet: to be replaced by a `SystemEvent::PolicyRetrySucceeded` of the
/// model (same type name, same payload) so that the codec knows it.
pub const RETRY_SUCCEEDED_TYPE: &str = "PolicyRetrySucceeded";

/// The namespace of every id the runtimes derive (UUIDv5).
const RUNTIME_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6c69_6e65_2d72_756e_7469_6d65);

/// The payload of [`RETRY_SUCCEEDED_TYPE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRetrySucceeded {
    pub policy: String,
    pub event_id: Uuid,
    /// The `PolicyFailed` event this retry resolves.
    pub failure_event_id: Uuid,
    pub retried_at: DateTime<Utc>,
}

/// A policy run that gave up and has not been retried successfully since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPolicyRun {
    pub policy: String,
    /// The source event the policy gave up on.
    pub event_id: Uuid,
    pub error: String,
    pub deliveries: u32,
    pub failed_at: DateTime<Utc>,
    /// The id of the `PolicyFailed` event.
    pub failure_event_id: Uuid,
}

/// Which failed runs [`retry_failed`] retries; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryFilter {
    pub policy: Option<String>,
    pub event_id: Option<Uuid>,
}

impl RetryFilter {
    fn matches(&self, run: &FailedPolicyRun) -> bool {
        self.policy
            .as_deref()
            .is_none_or(|policy| policy == run.policy)
            && self
                .event_id
                .is_none_or(|event_id| event_id == run.event_id)
    }
}

/// What [`retry_failed`] did.
#[derive(Debug, Default)]
pub struct RetryReport {
    /// Re-run successfully; each now has a retry marker and is no longer listed.
    pub succeeded: Vec<FailedPolicyRun>,
    /// Still failing, with the error of this attempt; still listed.
    pub failed: Vec<(FailedPolicyRun, String)>,
}

/// The deterministic id of the `PolicyFailed` of `policy` on `event_id` in attempt round
/// `round` (the runtimes record round 0; a redelivery finds it already stored).
pub fn policy_failed_event_id(policy: &str, event_id: Uuid, round: u32) -> Uuid {
    Uuid::new_v5(
        &RUNTIME_NAMESPACE,
        format!("policy-failed/{policy}/{event_id}/{round}").as_bytes(),
    )
}

/// [`FAILURES_STREAM`] as a stream id.
pub fn failures_stream() -> StreamId {
    // A constant in the stream id alphabet: parsing cannot fail.
    StreamId::parse(FAILURES_STREAM).unwrap_or_else(|_| unreachable!("constant stream id"))
}

/// Appends `PolicyFailed` for `policy` on `event_id` inside `tx`. `event` gives the correlation
/// when it could be read.
pub(crate) async fn record_failure(
    tx: &mut StoreTransaction<'_>,
    policy: &str,
    event_id: Uuid,
    event: Option<&RecordedEvent>,
    error: &str,
    deliveries: u32,
) -> Result<(), RuntimeError> {
    let now = Utc::now();
    let failed = SystemEvent::PolicyFailed(PolicyFailed {
        policy: policy.to_owned(),
        event_id,
        error: error.to_owned(),
        deliveries,
        failed_at: now,
    });
    let correlation_id = event.map_or(event_id, |event| event.metadata.correlation_id);
    let metadata = EventMetadata::system(
        format!("policy:{policy}"),
        correlation_id,
        Some(event_id),
        now,
    );
    let new_event = codec::to_new_event(
        &failed,
        policy_failed_event_id(policy, event_id, 0),
        metadata,
    );
    let outcome = tx
        .append(&failures_stream(), ExpectedVersion::Any, &[new_event])
        .await?;
    if outcome.already_stored {
        tracing::debug!(%policy, %event_id, "PolicyFailed was recorded already");
    } else {
        tracing::error!(%policy, %event_id, deliveries, error, "policy gave up on an event; PolicyFailed recorded");
    }
    Ok(())
}

/// Every policy run that gave up and was not retried successfully since, oldest first.
pub async fn list_failed(store: &EventStore) -> Result<Vec<FailedPolicyRun>, RuntimeError> {
    let events = store.read_stream(&failures_stream()).await?;
    Ok(open_runs(&events))
}

/// The `PolicyFailed` events recorded for one policy, and how many of those runs are still
/// open (not retried successfully since).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounts {
    pub recorded: u64,
    pub open: u64,
}

/// [`FailureCounts`] by policy name (one read of the failures stream), for the metrics; a
/// policy that never failed is not listed.
pub async fn failure_counts(
    store: &EventStore,
) -> Result<BTreeMap<String, FailureCounts>, RuntimeError> {
    let events = store.read_stream(&failures_stream()).await?;
    Ok(failure_counts_of(&events))
}

/// [`failure_counts`] of the failures stream's `events` (all of them, in order), for a reader
/// that keeps what it read and reads only what was appended since.
pub fn failure_counts_of(events: &[RecordedEvent]) -> BTreeMap<String, FailureCounts> {
    let mut counts: BTreeMap<String, FailureCounts> = BTreeMap::new();
    for event in events
        .iter()
        .filter(|event| event.event_type != RETRY_SUCCEEDED_TYPE)
    {
        if let Ok(SystemEvent::PolicyFailed(failed)) = decode_recorded::<SystemEvent>(event) {
            counts.entry(failed.policy).or_default().recorded += 1;
        }
    }
    for run in open_runs(events) {
        counts.entry(run.policy).or_default().open += 1;
    }
    counts
}

/// The failed runs of the failures stream's `events` that no retry marker resolved, oldest
/// first.
fn open_runs(events: &[RecordedEvent]) -> Vec<FailedPolicyRun> {
    let mut open: HashMap<(String, Uuid), FailedPolicyRun> = HashMap::new();
    let mut order: Vec<(String, Uuid)> = Vec::new();
    for event in events {
        if event.event_type == RETRY_SUCCEEDED_TYPE {
            match serde_json::from_str::<PolicyRetrySucceeded>(event.payload.text()) {
                Ok(marker) => {
                    open.remove(&(marker.policy, marker.event_id));
                }
                Err(error) => {
                    tracing::warn!(event_id = %event.event_id, %error, "unreadable retry marker");
                }
            }
            continue;
        }
        match decode_recorded::<SystemEvent>(event) {
            Ok(SystemEvent::PolicyFailed(failed)) => {
                let key = (failed.policy.clone(), failed.event_id);
                // A run seen before keeps its first place (`order` may hold it twice, once
                // retried and failed again: the first removal below takes it). Until the
                // thirty-second session a linear search here made a long stream quadratic.
                if !open.contains_key(&key) {
                    order.push(key.clone());
                }
                open.insert(
                    key,
                    FailedPolicyRun {
                        policy: failed.policy,
                        event_id: failed.event_id,
                        error: failed.error,
                        deliveries: failed.deliveries,
                        failed_at: failed.failed_at,
                        failure_event_id: event.event_id,
                    },
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(event_id = %event.event_id, %error, "unreadable event in the failures stream");
            }
        }
    }
    order
        .into_iter()
        .filter_map(|key| open.remove(&key))
        .collect()
}

/// Re-runs every listed failed run that `filter` matches, directly against the store: the
/// policy's apply and the retry marker in one transaction. A run that fails again stays listed.
pub async fn retry_failed(
    store: &EventStore,
    handler: &dyn PolicyHandler,
    filter: &RetryFilter,
) -> Result<RetryReport, RuntimeError> {
    if let Some(policy) = &filter.policy {
        let known = handler.policy_names();
        if !known.contains(&policy.as_str()) {
            return Err(RuntimeError::UnknownPolicy {
                policy: policy.clone(),
                known,
            });
        }
    }
    let mut report = RetryReport::default();
    for run in list_failed(store).await? {
        if !filter.matches(&run) {
            continue;
        }
        match retry_one(store, handler, &run).await {
            Ok(()) => {
                tracing::info!(policy = %run.policy, event_id = %run.event_id, "retry succeeded");
                report.succeeded.push(run);
            }
            Err(error) => {
                tracing::warn!(policy = %run.policy, event_id = %run.event_id, %error, "retry failed");
                report.failed.push((run, error.to_string()));
            }
        }
    }
    Ok(report)
}

/// [`retry_one_once`], run again (up to [`RETRY_ON_SERIALIZATION`] times) when the store
/// refused it for ordering: an append of the run, or its `PolicyRetrySucceeded` on the shared
/// failures stream, met a stream a younger transaction changed meanwhile (migration 17). The
/// next try is a new transaction, younger than that one.
async fn retry_one(
    store: &EventStore,
    handler: &dyn PolicyHandler,
    run: &FailedPolicyRun,
) -> Result<(), RetryError> {
    let mut tries = 0;
    loop {
        match retry_one_once(store, handler, run).await {
            Err(error) if tries < RETRY_ON_SERIALIZATION && error.is_serialization_failure() => {
                tries += 1;
            }
            other => return other,
        }
    }
}

/// How many times [`retry_one`] runs a retry again after an ordering refusal.
const RETRY_ON_SERIALIZATION: u32 = 3;

async fn retry_one_once(
    store: &EventStore,
    handler: &dyn PolicyHandler,
    run: &FailedPolicyRun,
) -> Result<(), RetryError> {
    let mut tx = store.begin().await.map_err(RuntimeError::from)?;
    let event = tx
        .event_by_id(run.event_id)
        .await
        .map_err(RuntimeError::from)?
        .ok_or(RuntimeError::EventMissing {
            event_id: run.event_id,
        })?;
    handler.apply(&run.policy, &mut tx, &event).await?;
    let now = Utc::now();
    let marker = PolicyRetrySucceeded {
        policy: run.policy.clone(),
        event_id: run.event_id,
        failure_event_id: run.failure_event_id,
        retried_at: now,
    };
    let payload = serde_json::to_value(&marker).map_err(RuntimeError::Encode)?;
    let new_event = NewEvent {
        event_id: Uuid::new_v5(
            &RUNTIME_NAMESPACE,
            format!("policy-retry/{}", run.failure_event_id).as_bytes(),
        ),
        event_type: RETRY_SUCCEEDED_TYPE.to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata::system(
            "operator:policies-retry",
            event.metadata.correlation_id,
            Some(run.failure_event_id),
            now,
        ),
    };
    tx.append(&failures_stream(), ExpectedVersion::Any, &[new_event])
        .await
        .map_err(RuntimeError::from)?;
    tx.commit().await.map_err(RuntimeError::from)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum RetryError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl RetryError {
    /// Whether the store refused the retry with `serialization_failure` (see [`retry_one`]).
    fn is_serialization_failure(&self) -> bool {
        let store = match self {
            Self::Runtime(RuntimeError::Store(error)) | Self::Policy(PolicyError::Store(error)) => {
                Some(error)
            }
            Self::Runtime(RuntimeError::Append(lifeline_store::AppendError::Store(error)))
            | Self::Policy(PolicyError::Append(lifeline_store::AppendError::Store(error))) => {
                Some(error)
            }
            _ => None,
        };
        store.is_some_and(lifeline_store::StoreError::is_serialization_failure)
    }
}
