//! Deliveries given up on, and the operator's tools behind `GET
//! /v1/operations/deliveries/failed`, `POST /v1/operations/deliveries/retry`, `lifeline
//! deliveries failed` and `lifeline deliveries retry`.
//!
//! A retry does not send anything itself: it appends a [`ConnectorRedeliveryRequested`] to
//! [`FAILURES_STREAM`] (at the stream's version read, so two operators retrying at once request
//! each failure once), and the agency's delivery worker, the one process holding its lease,
//! sends the task event again when it reaches that request in the log. A failure answered by a
//! request is no longer listed; if the delivery fails again, that new failure is. A failure no
//! longer worth sending when an operator retries it (its task handled in the inbox, or a later
//! change of the task superseding it) is settled instead (`ConnectorFailureSettled`, with the
//! reason) and leaves the list too; the worker checks again when it reaches a request, and
//! records a request it no longer sends (`ConnectorRedeliverySkipped`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, NewEvent, RecordedEvent};
use lifeline_model::procedure::AgencyId;
use lifeline_model::task::TaskStatus;
use lifeline_store::{AppendError, EventStore, StoreError};
use uuid::Uuid;

use super::events::{
    failures_stream, ConnectorDeliveryFailed, ConnectorFailureSettled,
    ConnectorRedeliveryRequested, DeliveryKind, DELIVERY_FAILED, FAILURE_SETTLED,
    REDELIVERY_REQUESTED, SCHEMA_VERSION,
};
use crate::tasks::TaskDesk;

/// How often a retry reads the failures stream again when a failure was appended meanwhile.
const MAX_ROUNDS: usize = 5;

/// A delivery given up on and not requested again since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    pub task_id: Uuid,
    pub agency: String,
    /// The task event whose delivery failed.
    pub source_event_id: Uuid,
    pub kind: DeliveryKind,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub reason: String,
    pub permanent: bool,
    pub failed_at: DateTime<Utc>,
    /// The `ConnectorDeliveryFailed` event.
    pub failure_event_id: Uuid,
}

/// Which failed deliveries [`request_redelivery`] asks to send again; `None` matches all.
/// `configured`: the agencies with a connector (a failure of another is left listed, not
/// requested: no worker would send it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedeliveryFilter {
    pub agency: Option<AgencyId>,
    pub task_id: Option<Uuid>,
    pub configured: Vec<AgencyId>,
}

impl RedeliveryFilter {
    fn matches(&self, failed: &FailedDelivery) -> bool {
        self.agency
            .is_none_or(|agency| agency.as_str() == failed.agency)
            && self.task_id.is_none_or(|task_id| task_id == failed.task_id)
    }
}

/// What [`request_redelivery`] did.
#[derive(Debug, Default)]
pub struct RedeliveryReport {
    /// Requested: the agency's worker sends each again; no longer listed.
    pub requested: Vec<FailedDelivery>,
    /// Settled, with why: no longer worth sending (a creation whose task is no longer open, a
    /// change a later one superseded, a task that does not exist); no longer listed.
    pub settled: Vec<(FailedDelivery, String)>,
    /// Left listed, with why: its agency has no connector configured here.
    pub skipped: Vec<(FailedDelivery, String)>,
}

/// Failure from listing or requesting.
#[derive(Debug, thiserror::Error)]
pub enum FailuresError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read task {task_id}: {reason}")]
    Task { task_id: Uuid, reason: String },
    #[error("the failures stream kept changing; try again")]
    Busy,
    #[error("cannot record the redelivery request: {0}")]
    Append(String),
}

/// Every failed delivery not requested again since, oldest first.
pub async fn list_failed_deliveries(
    store: &EventStore,
) -> Result<Vec<FailedDelivery>, FailuresError> {
    let events = store.read_stream(&failures_stream()).await?;
    Ok(open_failures(&events))
}

/// How many failed deliveries are open, by agency: for the metrics.
pub async fn open_failure_counts(
    store: &EventStore,
) -> Result<std::collections::BTreeMap<String, u64>, FailuresError> {
    let events = store.read_stream(&failures_stream()).await?;
    Ok(open_failure_counts_of(&events))
}

/// [`open_failure_counts`] of the failures stream's `events` (all of them, in order), for a
/// reader that keeps what it read and reads only what was appended since.
pub fn open_failure_counts_of(events: &[RecordedEvent]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for failed in open_failures(events) {
        *counts.entry(failed.agency).or_insert(0) += 1;
    }
    counts
}

/// The failures among `events` (of the failures stream) that no request answered, oldest first.
fn open_failures(events: &[RecordedEvent]) -> Vec<FailedDelivery> {
    let mut open: HashMap<Uuid, FailedDelivery> = HashMap::new();
    let mut order = Vec::new();
    for event in events {
        match event.event_type.as_str() {
            DELIVERY_FAILED => {
                match serde_json::from_str::<ConnectorDeliveryFailed>(event.payload.text()) {
                    Ok(failed) => {
                        order.push(event.event_id);
                        open.insert(
                            event.event_id,
                            FailedDelivery {
                                task_id: failed.task_id,
                                agency: failed.agency,
                                source_event_id: failed.source_event_id,
                                kind: failed.kind,
                                attempts: failed.attempts,
                                last_status: failed.last_status,
                                reason: failed.reason,
                                permanent: failed.permanent,
                                failed_at: failed.at,
                                failure_event_id: event.event_id,
                            },
                        );
                    }
                    Err(error) => {
                        tracing::warn!(event_id = %event.event_id, %error, "unreadable delivery failure");
                    }
                }
            }
            // A request or a settlement: it answers the failure it names.
            REDELIVERY_REQUESTED | FAILURE_SETTLED => {
                #[derive(serde::Deserialize)]
                struct Answers {
                    failure_event_id: Uuid,
                }
                match serde_json::from_str::<Answers>(event.payload.text()) {
                    Ok(answer) => {
                        open.remove(&answer.failure_event_id);
                    }
                    Err(error) => {
                        tracing::warn!(event_id = %event.event_id, %error, "unreadable answer to a delivery failure");
                    }
                }
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| open.remove(&id))
        .collect()
}

/// Whether a delivery of `kind` is still wanted for a task in `status`: a creation only while
/// the task is open (the agency system would be asked to act on a task someone handled in the
/// inbox, or one cancelled); an amendment or cancellation always (the agency system has the
/// task). The delivery worker decides the same way when it reaches the request.
pub fn still_wanted(kind: DeliveryKind, status: TaskStatus) -> bool {
    kind != DeliveryKind::Created || status == TaskStatus::Open
}

/// Why the task event `source_event_id` (a change of kind `kind` of `task_id`) is no longer to
/// be sent again, if it is not: the task does not exist, a creation's task is no longer open,
/// an amendment's task is closed, or an amendment was superseded by a later change (sending it
/// would take the agency system back to older facts). Asked by the operator's retry and again
/// by the worker when it reaches the request.
pub async fn redelivery_refusal(
    store: &EventStore,
    tasks: &TaskDesk,
    task_id: Uuid,
    kind: DeliveryKind,
    source_event_id: Uuid,
) -> Result<Option<String>, FailuresError> {
    let task_error = |reason: String| FailuresError::Task { task_id, reason };
    let Some(loaded) = tasks
        .load(task_id)
        .await
        .map_err(|error| task_error(error.to_string()))?
    else {
        return Ok(Some("no such task".to_owned()));
    };
    let status = loaded.state.status;
    if !still_wanted(kind, status) {
        return Ok(Some(
            format!("the task is {status:?}, no longer open").to_lowercase(),
        ));
    }
    if kind == DeliveryKind::Amended {
        if status.is_closed() {
            return Ok(Some(format!("the task is {status:?}").to_lowercase()));
        }
        let events = store.read_stream(&loaded.stream_id).await?;
        let later = events
            .iter()
            .skip_while(|event| event.event_id != source_event_id)
            .skip(1)
            .any(|event| matches!(event.event_type.as_str(), "TaskAmended" | "TaskCancelled"));
        if later {
            return Ok(Some("superseded by a later change of the task".to_owned()));
        }
    }
    Ok(None)
}

/// Requests every listed failed delivery that `filter` matches to be sent again, as
/// `requested_by`.
pub async fn request_redelivery(
    store: &EventStore,
    tasks: &TaskDesk,
    filter: &RedeliveryFilter,
    requested_by: &str,
) -> Result<RedeliveryReport, FailuresError> {
    let stream = failures_stream();
    for _ in 0..MAX_ROUNDS {
        let events = store.read_stream(&stream).await?;
        let expected = events.last().map_or(ExpectedVersion::NoStream, |event| {
            ExpectedVersion::Exact(event.stream_version)
        });
        let mut report = RedeliveryReport::default();
        let mut new_events = Vec::new();
        let at = Utc::now();
        for failed in open_failures(&events) {
            if !filter.matches(&failed) {
                continue;
            }
            let correlation_id = events
                .iter()
                .find(|event| event.event_id == failed.failure_event_id)
                .map_or(failed.failure_event_id, |event| {
                    event.metadata.correlation_id
                });
            let metadata = EventMetadata::system(
                format!("operator:{requested_by}"),
                correlation_id,
                Some(failed.failure_event_id),
                at,
            );
            if !filter
                .configured
                .iter()
                .any(|agency| agency.as_str() == failed.agency)
            {
                let why = format!("no connector is configured for {}", failed.agency);
                report.skipped.push((failed, why));
                continue;
            }
            if let Some(reason) = redelivery_refusal(
                store,
                tasks,
                failed.task_id,
                failed.kind,
                failed.source_event_id,
            )
            .await?
            {
                let settled = ConnectorFailureSettled {
                    task_id: failed.task_id,
                    agency: failed.agency.clone(),
                    failure_event_id: failed.failure_event_id,
                    reason: reason.clone(),
                    settled_by: requested_by.to_owned(),
                    at,
                };
                new_events.push(NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: FAILURE_SETTLED.to_owned(),
                    schema_version: SCHEMA_VERSION,
                    payload: serde_json::to_value(&settled)
                        .map_err(|error| FailuresError::Append(error.to_string()))?,
                    metadata,
                });
                report.settled.push((failed, reason));
                continue;
            }
            let request = ConnectorRedeliveryRequested {
                task_id: failed.task_id,
                agency: failed.agency.clone(),
                source_event_id: failed.source_event_id,
                failure_event_id: failed.failure_event_id,
                requested_by: requested_by.to_owned(),
                at,
            };
            new_events.push(NewEvent {
                event_id: Uuid::now_v7(),
                event_type: REDELIVERY_REQUESTED.to_owned(),
                schema_version: SCHEMA_VERSION,
                payload: serde_json::to_value(&request)
                    .map_err(|error| FailuresError::Append(error.to_string()))?,
                metadata,
            });
            report.requested.push(failed);
        }
        if new_events.is_empty() {
            return Ok(report);
        }
        match store.append(&stream, expected, &new_events).await {
            Ok(_) => {
                for failed in &report.requested {
                    tracing::info!(task_id = %failed.task_id, agency = %failed.agency,
                        source_event_id = %failed.source_event_id, requested_by,
                        "redelivery requested");
                }
                for (failed, reason) in &report.settled {
                    tracing::info!(task_id = %failed.task_id, agency = %failed.agency,
                        source_event_id = %failed.source_event_id, requested_by, reason,
                        "failed delivery settled without sending it again");
                }
                return Ok(report);
            }
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::Store(error)) => return Err(error.into()),
            Err(error) => return Err(FailuresError::Append(error.to_string())),
        }
    }
    Err(FailuresError::Busy)
}
