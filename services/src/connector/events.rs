//! What a connector sends (the [`DeliveryMessage`]: a task's application, nothing else) and
//! what it records about each delivery: [`ConnectorDelivered`] in the stream
//! `delivery-<task_id>`, or [`ConnectorDeliveryFailed`] in [`FAILURES_STREAM`], beside the
//! operators' [`ConnectorRedeliveryRequested`]; schema version 1.
//!
//! These are services' own events, appended through the store API: no model change, no SQL.
//! A `ConnectorDeliveryFailed` is what an operator looks for (`GET
//! /v1/operations/deliveries/failed`): the agency refused the application (4xx) or never
//! answered; the task stays open in the inbox, and the operator may have it sent again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{EventMetadata, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The event type of a successful delivery.
pub const DELIVERED: &str = "ConnectorDelivered";
/// The event type of a delivery given up on.
pub const DELIVERY_FAILED: &str = "ConnectorDeliveryFailed";
/// The schema version of both.
pub const SCHEMA_VERSION: u32 = 1;

/// Which change of a task a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Created,
    Amended,
    Cancelled,
}

/// The JSON body POSTed to an agency system. Receivers must be idempotent by `delivery_id`
/// (and, for `created`, by `task_id`): after a crash Lifeline may send one delivery again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    /// The log event this delivery carries; the same on every retry.
    pub delivery_id: Uuid,
    pub kind: DeliveryKind,
    pub task_id: Uuid,
    pub procedure: String,
    pub office: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// Only the fields the procedure's agency receives (dotted paths); empty on `cancelled`.
    pub application: BTreeMap<String, Value>,
    /// The fields an amendment changed (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_fields: Vec<String>,
    /// Set when the task repeats (`reissue`) or undoes (`reversal`) a completed task: a
    /// reversal's `created` asks the agency to revoke what that task produced, not to do it
    /// again. (Until 2026-12-07 absent: a reversal looked like a new application.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<crate::http::agency::FollowUpBody>,
}

/// The agency system accepted a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorDelivered {
    pub task_id: Uuid,
    pub agency: String,
    /// The task event delivered.
    pub source_event_id: Uuid,
    pub kind: DeliveryKind,
    pub attempts: u32,
    pub status: u16,
    /// What the agency answered with its 2xx: `none`, `completed`, `rejected`, or `refused`
    /// (a result Lifeline could not apply, e.g. an invalid outcome: the task stays open).
    pub answer: String,
    /// The [`ConnectorRedeliveryRequested`] event this delivery answers, if it was sent again
    /// at an operator's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_of: Option<Uuid>,
    /// Recorded after the fact: the worker stopped after the agency system's answer was
    /// applied (the task claimed and closed by `connector:<agency>`) and before it recorded
    /// the delivery; `attempts` and `status` are then not known (0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    pub at: DateTime<Utc>,
}

/// A delivery given up on: a permanent refusal (4xx) or every attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorDeliveryFailed {
    pub task_id: Uuid,
    pub agency: String,
    pub source_event_id: Uuid,
    pub kind: DeliveryKind,
    pub attempts: u32,
    /// The last HTTP status, if any answer came.
    pub last_status: Option<u16>,
    /// `refused` (4xx), `server_error`, `timeout` or `connection`.
    pub reason: String,
    /// True when the agency refused the application itself: sending it again helps only once
    /// the agency system's side changed.
    pub permanent: bool,
    /// The task needs a person (always true today): an operator may have it sent again.
    pub manual_handling: bool,
    /// As in [`ConnectorDelivered::redelivery_of`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_of: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// An operator's request to send a failed delivery again (`POST
/// /v1/operations/deliveries/retry`, `lifeline deliveries retry`), in [`FAILURES_STREAM`].
/// The agency's worker sends the task event `source_event_id` again when it reaches this event
/// in the log, and records the outcome under an id derived from this event's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRedeliveryRequested {
    pub task_id: Uuid,
    pub agency: String,
    /// The task event to send again.
    pub source_event_id: Uuid,
    /// The `ConnectorDeliveryFailed` event this request answers.
    pub failure_event_id: Uuid,
    /// The operator (token subject or `cli:<user>`).
    pub requested_by: String,
    pub at: DateTime<Utc>,
}

/// The event type of [`ConnectorRedeliveryRequested`].
pub const REDELIVERY_REQUESTED: &str = "ConnectorRedeliveryRequested";

/// A failed delivery an operator's retry found no longer worth sending (its task handled in
/// the inbox, a later change superseding it), in [`FAILURES_STREAM`]: no longer listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorFailureSettled {
    pub task_id: Uuid,
    pub agency: String,
    /// The `ConnectorDeliveryFailed` event settled.
    pub failure_event_id: Uuid,
    pub reason: String,
    /// The operator whose retry settled it.
    pub settled_by: String,
    pub at: DateTime<Utc>,
}

/// The event type of [`ConnectorFailureSettled`].
pub const FAILURE_SETTLED: &str = "ConnectorFailureSettled";

/// A requested redelivery the worker did not send, with why (the task handled or changed since
/// the request): its outcome, in `delivery-<task_id>`, so that the request is accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRedeliverySkipped {
    pub task_id: Uuid,
    pub agency: String,
    pub source_event_id: Uuid,
    /// The [`ConnectorRedeliveryRequested`] event.
    pub redelivery_of: Uuid,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// The event type of [`ConnectorRedeliverySkipped`].
pub const REDELIVERY_SKIPPED: &str = "ConnectorRedeliverySkipped";

/// The stream of every `ConnectorDeliveryFailed` and every [`ConnectorRedeliveryRequested`]:
/// failures are rare, and the operator lists them without scanning the log. (Until 2026-12-07
/// a failure went to `delivery-<task_id>`, where nobody looked, and could not be retried.)
pub const FAILURES_STREAM: &str = "connectorfailures-log";

/// [`FAILURES_STREAM`] as a stream id.
pub fn failures_stream() -> StreamId {
    // A constant in the stream id alphabet: parsing cannot fail.
    StreamId::parse(FAILURES_STREAM).unwrap_or_else(|_| unreachable!("constant stream id"))
}

/// `delivery-<task_id>`: the accepted deliveries of a task.
pub fn delivery_stream(task_id: Uuid) -> Option<StreamId> {
    StreamId::for_kind("delivery", task_id).ok()
}

/// The id of the outcome event of delivering `source_event_id` by `agency`'s connector: the
/// same for every run, so a restart appends it at most once and can tell a delivery is done.
/// For a redelivery, `source_event_id` is the [`ConnectorRedeliveryRequested`] event's id.
pub fn outcome_event_id(agency: &str, source_event_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("lifeline:connector:{agency}:{source_event_id}").as_bytes(),
    )
}

/// An outcome ready to append.
pub(crate) fn outcome_event<T: Serialize>(
    event_type: &str,
    body: &T,
    event_id: Uuid,
    metadata: EventMetadata,
) -> Option<NewEvent> {
    Some(NewEvent {
        event_id,
        event_type: event_type.to_owned(),
        schema_version: SCHEMA_VERSION,
        payload: serde_json::to_value(body).ok()?,
        metadata,
    })
}
