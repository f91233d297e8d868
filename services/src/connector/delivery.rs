//! [`DeliveryWorker`]: reads the log from its own checkpoint (`connector:<agency>`), and for each
//! `TaskCreated`, `TaskAmended` or `TaskCancelled` of its agency POSTs the signed
//! [`DeliveryMessage`], retrying 5xx, timeouts and connection errors with exponential back-off
//! and jitter; then applies the agency's synchronous answer (if any), appends the outcome event
//! to `delivery-<task_id>`, and only then advances the checkpoint.
//!
//! No HTTP call runs inside a database transaction. Deliveries are sequential. The outcome
//! event's id is fixed per (agency, task event), so after a crash at most the one delivery in
//! flight is sent again: receivers must be idempotent by `delivery_id` / `task_id`.
//!
//! A delivery given up on (`ConnectorDeliveryFailed`, in `connectorfailures-log`) is sent again
//! only when an operator asks ([`super::failures`]): the worker meets the
//! `ConnectorRedeliveryRequested` in the log and sends the task event it names, the same
//! message with the same `delivery_id`, its outcome's id fixed per request.
//!
//! Every worker process runs a worker per connector agency, but only the one holding the
//! agency's lease ([`lease_name`], a [`Lease`] of the store) delivers; the others wait and try
//! for it every poll interval, each on one standing database connection
//! ([`lifeline_store::LeaseCandidate`]). The holder confirms its lease before every delivery,
//! so one whose database session ended (the lease then passes to another process) stops before
//! it sends again. (Until 2026-12-07 every worker process delivered every task: two `serve
//! --role worker` replicas sent each one twice.)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lifeline_model::codec;
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, RecordedEvent, StreamId};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{Application, FollowUpKind, Task, TaskEvent, TaskStatus};
use lifeline_store::{EventStore, Lease, StoreError};
use rand::Rng;
use uuid::Uuid;

use super::config::AgencyConnector;
use super::events::{
    delivery_stream, failures_stream, outcome_event, outcome_event_id, ConnectorDelivered,
    ConnectorDeliveryFailed, ConnectorRedeliveryRequested, ConnectorRedeliverySkipped,
    DeliveryKind, DeliveryMessage, DELIVERED, DELIVERY_FAILED, REDELIVERY_REQUESTED,
    REDELIVERY_SKIPPED,
};
use super::failures::{redelivery_refusal, still_wanted};
use super::signing::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::http::agency::FollowUpBody;
use crate::http::connectors::{apply_agency_result, connector_officer, AgencyResult};
use crate::tasks::TaskDesk;

/// The largest answer body read from an agency system.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Events read from the log per batch.
const READ_BATCH: usize = 200;

/// The checkpoint of `agency`'s worker: `connector:<agency>`.
pub fn checkpoint_name(agency: AgencyId) -> String {
    format!("connector:{agency}")
}

/// What a task event comes to for an agency's system ([`DeliveryWorker::change_for`]).
enum Change {
    /// A message to send.
    Send(DeliveryMessage),
    /// A creation of this agency's task not sent because the task was closed (or claimed)
    /// first: the task id and the task as it stands.
    ClosedBeforeSent(Uuid, Task),
    /// Nothing for this agency.
    Nothing,
}

/// The lease that lets one process at a time deliver `agency`'s tasks: `connector:<agency>`.
pub fn lease_name(agency: AgencyId) -> String {
    format!("connector:{agency}")
}

/// A fault that stops a pass of the worker; the next pass starts again at the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the delivery lease was lost: {0}")]
    LeaseLost(StoreError),
    #[error("cannot append the delivery outcome of task {task_id}: {reason}")]
    Append { task_id: Uuid, reason: String },
    #[error("cannot build the http client: {0}")]
    Client(String),
    #[error("event {event_id} cannot be decoded: {reason}")]
    Decode { event_id: Uuid, reason: String },
    #[error("cannot apply the agency's answer to task {task_id}: {reason}")]
    Task { task_id: Uuid, reason: String },
}

/// What the attempts at one delivery came to.
#[derive(Debug)]
enum Attempts {
    Accepted {
        status: u16,
        attempts: u32,
        answer: Vec<u8>,
    },
    Failed {
        attempts: u32,
        last_status: Option<u16>,
        reason: &'static str,
        permanent: bool,
    },
}

/// A delivery to make: the message, the task event it carries, the id its outcome gets, and
/// the operator's request it answers (a redelivery).
#[derive(Debug)]
struct Due {
    message: DeliveryMessage,
    source_event_id: Uuid,
    outcome_id: Uuid,
    redelivery_of: Option<Uuid>,
}

/// The outbound side of one agency's connector.
pub struct DeliveryWorker {
    store: EventStore,
    tasks: Arc<TaskDesk>,
    agency: AgencyId,
    connector: AgencyConnector,
    client: reqwest::Client,
    poll_interval: Duration,
}

impl std::fmt::Debug for DeliveryWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryWorker")
            .field("agency", &self.agency)
            .finish_non_exhaustive()
    }
}

impl DeliveryWorker {
    pub fn new(
        store: EventStore,
        tasks: Arc<TaskDesk>,
        agency: AgencyId,
        connector: AgencyConnector,
    ) -> Result<Self, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(connector.timeout)
            .connect_timeout(connector.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| DeliveryError::Client(error.to_string()))?;
        Ok(Self {
            store,
            tasks,
            agency,
            connector,
            client,
            poll_interval: Duration::from_secs(1),
        })
    }

    /// How long [`DeliveryWorker::run`] waits when the log has nothing new (default 1 s).
    #[must_use]
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    pub fn agency(&self) -> AgencyId {
        self.agency
    }

    /// Delivers until `shutdown` completes, while it holds the agency's lease (waiting for it
    /// meanwhile); a failed pass is logged and retried after the poll interval. Stopping
    /// mid-delivery is safe: the delivery is sent again on restart.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut lease: Option<Lease> = None;
        let mut candidate = self.store.lease_candidate(&lease_name(self.agency));
        let mut waiting_logged = false;
        loop {
            if lease.is_none() {
                match candidate.try_take(&self.store).await {
                    Ok(Some(held)) => {
                        tracing::info!(agency = %self.agency, "connector lease taken: delivering");
                        lease = Some(held);
                        waiting_logged = false;
                    }
                    Ok(None) if !waiting_logged => {
                        tracing::info!(agency = %self.agency,
                            "another process delivers for this agency; standing by");
                        waiting_logged = true;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(agency = %self.agency, %error, "cannot take the connector lease; retrying");
                    }
                }
            }
            if let Some(held) = lease.as_mut() {
                tokio::select! {
                    () = &mut shutdown => return,
                    result = self.pass(Some(held)) => match result {
                        Ok(_) => {}
                        Err(DeliveryError::LeaseLost(error)) => {
                            tracing::warn!(agency = %self.agency, %error, "connector lease lost; standing by");
                            lease = None;
                        }
                        Err(error) => {
                            tracing::error!(agency = %self.agency, %error, "connector pass failed; retrying");
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// One pass: from the checkpoint to the end of the log as it is now, without a lease (the
    /// caller is the only deliverer: tests, a one-off run). Answers how many deliveries were
    /// made (accepted or failed).
    pub async fn run_once(&self) -> Result<usize, DeliveryError> {
        self.pass(None).await
    }

    /// One pass; with a lease, it is confirmed before every delivery.
    async fn pass(&self, mut lease: Option<&mut Lease>) -> Result<usize, DeliveryError> {
        let name = checkpoint_name(self.agency);
        let mut cursor = self.store.load_checkpoint(&name).await?;
        let mut deliveries = 0;
        loop {
            let batch = self.store.read_all(cursor, READ_BATCH).await?;
            let Some(last) = batch.last() else {
                return Ok(deliveries);
            };
            let end = last.cursor();
            for event in &batch {
                if let Some(due) = self.due(event).await? {
                    if let Some(lease) = lease.as_deref_mut() {
                        lease.confirm().await.map_err(DeliveryError::LeaseLost)?;
                    }
                    self.deliver_and_record(event, due).await?;
                    deliveries += 1;
                    // The outcome is appended: move past it before the next HTTP call.
                    self.store.save_checkpoint(&name, event.cursor()).await?;
                }
            }
            self.store.save_checkpoint(&name, end).await?;
            cursor = end;
        }
    }

    /// The delivery to make for `event`, if it is a task change of this agency, or an operator's
    /// request to send one again, not delivered yet. A request no longer to send (the task
    /// handled or changed since) gets its outcome here, `ConnectorRedeliverySkipped`.
    async fn due(&self, event: &RecordedEvent) -> Result<Option<Due>, DeliveryError> {
        if event.event_type == REDELIVERY_REQUESTED && event.stream_id == failures_stream() {
            return self.redelivery_due(event).await;
        }
        let message = match self.change_for(event).await? {
            Change::Send(message) => message,
            Change::ClosedBeforeSent(task_id, task) => {
                self.record_answered_creation(event, task_id, &task).await?;
                return Ok(None);
            }
            Change::Nothing => return Ok(None),
        };
        let outcome_id = outcome_event_id(self.agency.as_str(), event.event_id);
        if self.store.event_by_id(outcome_id).await?.is_some() {
            // Delivered before a restart that came ahead of the checkpoint.
            return Ok(None);
        }
        Ok(Some(Due {
            message,
            source_event_id: event.event_id,
            outcome_id,
            redelivery_of: None,
        }))
    }

    /// [`Self::due`] for an operator's `ConnectorRedeliveryRequested`: the task event it names,
    /// checked again as the operator's retry checked it ([`redelivery_refusal`]).
    async fn redelivery_due(&self, event: &RecordedEvent) -> Result<Option<Due>, DeliveryError> {
        let request: ConnectorRedeliveryRequested = serde_json::from_str(event.payload.text())
            .map_err(|error| DeliveryError::Decode {
                event_id: event.event_id,
                reason: error.to_string(),
            })?;
        if request.agency != self.agency.as_str() {
            return Ok(None);
        }
        let outcome_id = outcome_event_id(self.agency.as_str(), event.event_id);
        if self.store.event_by_id(outcome_id).await?.is_some() {
            return Ok(None);
        }
        let source = self.store.event_by_id(request.source_event_id).await?;
        let kind = source
            .as_ref()
            .and_then(|source| match source.event_type.as_str() {
                "TaskCreated" => Some(DeliveryKind::Created),
                "TaskAmended" => Some(DeliveryKind::Amended),
                "TaskCancelled" => Some(DeliveryKind::Cancelled),
                _ => None,
            });
        let refusal = match (&source, kind) {
            (Some(_), Some(kind)) => redelivery_refusal(
                &self.store,
                &self.tasks,
                request.task_id,
                kind,
                request.source_event_id,
            )
            .await
            .map_err(|error| DeliveryError::Task {
                task_id: request.task_id,
                reason: error.to_string(),
            })?,
            _ => Some("the task event named is not a stored task change".to_owned()),
        };
        let message = match (refusal, &source) {
            (None, Some(source)) => self.message_for(source).await?.ok_or_else(|| {
                "the task change is no longer to send (its creation was never sent)".to_owned()
            }),
            (Some(reason), _) => Err(reason),
            (None, None) => Err("the task event named is not stored".to_owned()),
        };
        match message {
            Ok(message) => Ok(Some(Due {
                message,
                source_event_id: request.source_event_id,
                outcome_id,
                redelivery_of: Some(event.event_id),
            })),
            Err(reason) => {
                self.record_skipped(event, &request, outcome_id, reason)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Records that the redelivery `request` (the log event `event`) was not sent, and why.
    async fn record_skipped(
        &self,
        event: &RecordedEvent,
        request: &ConnectorRedeliveryRequested,
        outcome_id: Uuid,
        reason: String,
    ) -> Result<(), DeliveryError> {
        let task_id = request.task_id;
        tracing::info!(agency = %self.agency, %task_id, source_event_id = %request.source_event_id,
            reason, "redelivery requested but not sent");
        let at = Utc::now();
        let skipped = ConnectorRedeliverySkipped {
            task_id,
            agency: request.agency.clone(),
            source_event_id: request.source_event_id,
            redelivery_of: event.event_id,
            reason,
            at,
        };
        let payload = serde_json::to_value(skipped).map_err(|error| DeliveryError::Append {
            task_id,
            reason: error.to_string(),
        })?;
        self.append_outcome(event, task_id, REDELIVERY_SKIPPED, payload, outcome_id, at)
            .await
    }

    /// Appends the outcome `payload` (of type `event_type`, id `outcome_id`) of the delivery
    /// found at the log event `event`: a failure to the failures stream, anything else to
    /// `delivery-<task_id>`.
    async fn append_outcome(
        &self,
        event: &RecordedEvent,
        task_id: Uuid,
        event_type: &str,
        payload: serde_json::Value,
        outcome_id: Uuid,
        at: chrono::DateTime<Utc>,
    ) -> Result<(), DeliveryError> {
        let append_error = |reason: String| DeliveryError::Append { task_id, reason };
        let metadata = EventMetadata::system(
            checkpoint_name(self.agency),
            event.metadata.correlation_id,
            Some(event.event_id),
            at,
        );
        let new_event = outcome_event(event_type, &payload, outcome_id, metadata)
            .ok_or_else(|| append_error("unserialisable outcome".to_owned()))?;
        let stream = if event_type == DELIVERY_FAILED {
            failures_stream()
        } else {
            delivery_stream(task_id).ok_or_else(|| append_error("bad stream id".to_owned()))?
        };
        self.store
            .append(&stream, ExpectedVersion::Any, &[new_event])
            .await
            .map_err(|error| append_error(error.to_string()))?;
        Ok(())
    }

    /// The message for the task event `event` if it is a change of this agency's task that is
    /// to be sent (whether or not it was sent before).
    async fn message_for(
        &self,
        event: &RecordedEvent,
    ) -> Result<Option<DeliveryMessage>, DeliveryError> {
        Ok(match self.change_for(event).await? {
            Change::Send(message) => Some(message),
            Change::ClosedBeforeSent(..) | Change::Nothing => None,
        })
    }

    /// What the task event `event` comes to for this agency's system ([`Change`]).
    async fn change_for(&self, event: &RecordedEvent) -> Result<Change, DeliveryError> {
        if event.stream_id.kind() != "task"
            || !matches!(
                event.event_type.as_str(),
                "TaskCreated" | "TaskAmended" | "TaskCancelled"
            )
        {
            return Ok(Change::Nothing);
        }
        let decoded: TaskEvent =
            codec::decode_recorded(event).map_err(|error| DeliveryError::Decode {
                event_id: event.event_id,
                reason: error.to_string(),
            })?;
        let message = match decoded {
            TaskEvent::TaskCreated(created) => {
                if created.agency != self.agency {
                    return Ok(Change::Nothing);
                }
                // A task closed before its creation is delivered (the worker behind, or a
                // connector configured for an agency with a history) is not sent: the agency
                // system would be asked to act on a task completed in the inbox, cancelled,
                // or of a voided record. (Until 2026-12-07 every creation was sent.) Nor are
                // its later changes ([`Self::creation_sent`]).
                if let Some((_, task)) = self.task_of_agency(created.task_id).await? {
                    if !still_wanted(DeliveryKind::Created, task.status) {
                        tracing::info!(agency = %self.agency, task_id = %created.task_id,
                            status = ?task.status, "not delivering a task closed or claimed before its delivery");
                        return Ok(Change::ClosedBeforeSent(created.task_id, task));
                    }
                }
                // A reversal asks the agency system to revoke what the task it follows
                // produced: if that task never reached it (worked in the inbox), neither does
                // the reversal, which a person works in the inbox too. (Until 2026-12-07 it
                // was sent, naming a task the agency system never had.)
                if let Some(follow_up) = created
                    .follow_up
                    .as_ref()
                    .filter(|follow_up| follow_up.kind == FollowUpKind::Reversal)
                {
                    if !self.creation_delivered(follow_up.follows).await? {
                        tracing::info!(agency = %self.agency, task_id = %created.task_id,
                            follows = %follow_up.follows,
                            "not delivering a reversal of a task the agency system never received");
                        return Ok(Change::Nothing);
                    }
                }
                DeliveryMessage {
                    delivery_id: event.event_id,
                    kind: DeliveryKind::Created,
                    task_id: created.task_id,
                    procedure: created.procedure.as_str().to_owned(),
                    office: Some(created.office.to_string()),
                    due_at: Some(created.due_at),
                    application: minimised(created.procedure, &created.application),
                    changed_fields: Vec::new(),
                    follow_up: created.follow_up.as_ref().map(FollowUpBody::of),
                }
            }
            TaskEvent::TaskAmended(amended) => {
                let Some((procedure, task)) = self.task_of_agency(amended.task_id).await? else {
                    return Ok(Change::Nothing);
                };
                if !self.creation_sent(amended.task_id).await? {
                    return Ok(Change::Nothing);
                }
                DeliveryMessage {
                    delivery_id: event.event_id,
                    kind: DeliveryKind::Amended,
                    task_id: amended.task_id,
                    procedure: procedure.as_str().to_owned(),
                    office: task.office.as_ref().map(ToString::to_string),
                    due_at: task.due_at,
                    application: minimised(procedure, &amended.application),
                    changed_fields: amended.changed_fields,
                    follow_up: task.follow_up.as_ref().map(FollowUpBody::of),
                }
            }
            TaskEvent::TaskCancelled(cancelled) => {
                let Some((procedure, task)) = self.task_of_agency(cancelled.task_id).await? else {
                    return Ok(Change::Nothing);
                };
                if !self.creation_sent(cancelled.task_id).await? {
                    return Ok(Change::Nothing);
                }
                DeliveryMessage {
                    delivery_id: event.event_id,
                    kind: DeliveryKind::Cancelled,
                    task_id: cancelled.task_id,
                    procedure: procedure.as_str().to_owned(),
                    office: task.office.as_ref().map(ToString::to_string),
                    due_at: task.due_at,
                    application: Default::default(),
                    changed_fields: Vec::new(),
                    follow_up: task.follow_up.as_ref().map(FollowUpBody::of),
                }
            }
            _ => return Ok(Change::Nothing),
        };
        Ok(Change::Send(message))
    }

    /// Whether the creation of `task_id` was delivered (or its delivery failed): its outcome
    /// event is stored. A change of a task whose creation was never sent (closed before it)
    /// is not sent either: the agency system knows no such task.
    async fn creation_sent(&self, task_id: Uuid) -> Result<bool, DeliveryError> {
        let stream = StreamId::for_kind("task", task_id).map_err(|error| DeliveryError::Task {
            task_id,
            reason: error.to_string(),
        })?;
        let events = self.store.read_stream(&stream).await?;
        let Some(created) = events.first() else {
            return Ok(false);
        };
        let outcome = outcome_event_id(self.agency.as_str(), created.event_id);
        Ok(self.store.event_by_id(outcome).await?.is_some())
    }

    /// Whether the agency system accepted the creation of `task_id` (a `ConnectorDelivered` of
    /// kind `created` in `delivery-<task_id>`, first time or at an operator's request), or
    /// acted on the task through this connector (its answer or callback claimed it: it had
    /// the task, even if the worker stopped before recording the delivery).
    async fn creation_delivered(&self, task_id: Uuid) -> Result<bool, DeliveryError> {
        let Some(stream) = delivery_stream(task_id) else {
            return Ok(false);
        };
        let recorded = self.store.read_stream(&stream).await?.iter().any(|event| {
            event.event_type == DELIVERED
                && serde_json::from_str::<ConnectorDelivered>(event.payload.text())
                    .is_ok_and(|delivered| delivered.kind == DeliveryKind::Created)
        });
        if recorded {
            return Ok(true);
        }
        Ok(self
            .task_of_agency(task_id)
            .await?
            .is_some_and(|(_, task)| self.acted_on(&task)))
    }

    /// Whether this agency's system acted on `task` through the connector (claimed it with its
    /// answer to a delivery, or with a callback).
    fn acted_on(&self, task: &Task) -> bool {
        task.claimed_by.as_deref() == Some(connector_officer(self.agency).as_str())
    }

    /// A creation of this agency's task left unsent because the task is closed, where the
    /// agency system closed it itself (its answer to this very creation, applied before the
    /// worker stopped short of recording the delivery): recorded now as delivered, `recovered`,
    /// so that the task's delivery history is whole. (Until the thirty-first session nothing
    /// was recorded, and a later reversal of the task was not sent, as if the agency system
    /// had never had it.)
    async fn record_answered_creation(
        &self,
        event: &RecordedEvent,
        task_id: Uuid,
        task: &Task,
    ) -> Result<(), DeliveryError> {
        if !self.acted_on(task) {
            return Ok(());
        }
        let outcome_id = outcome_event_id(self.agency.as_str(), event.event_id);
        if self.store.event_by_id(outcome_id).await?.is_some() {
            return Ok(());
        }
        let answer = match task.status {
            TaskStatus::Completed => "completed",
            TaskStatus::Rejected => "rejected",
            _ => return Ok(()),
        };
        tracing::warn!(agency = %self.agency, %task_id, answer,
            "the agency system closed a task whose delivery was not recorded (the worker stopped in between); recorded now");
        let at = Utc::now();
        let delivered = ConnectorDelivered {
            task_id,
            agency: self.agency.as_str().to_owned(),
            source_event_id: event.event_id,
            kind: DeliveryKind::Created,
            attempts: 0,
            status: 0,
            answer: answer.to_owned(),
            redelivery_of: None,
            recovered: true,
            at,
        };
        let payload = serde_json::to_value(delivered).map_err(|error| DeliveryError::Append {
            task_id,
            reason: error.to_string(),
        })?;
        self.append_outcome(event, task_id, DELIVERED, payload, outcome_id, at)
            .await
    }

    /// The procedure and state of `task_id` if it belongs to this agency.
    async fn task_of_agency(
        &self,
        task_id: Uuid,
    ) -> Result<Option<(ProcedureId, Task)>, DeliveryError> {
        let loaded = self
            .tasks
            .load(task_id)
            .await
            .map_err(|error| DeliveryError::Task {
                task_id,
                reason: error.to_string(),
            })?;
        Ok(loaded.and_then(|loaded| {
            let procedure = loaded.state.procedure?;
            (procedure.agency() == self.agency).then_some((procedure, loaded.state))
        }))
    }

    /// Delivers `due`, found at the log event `event`, and appends its outcome.
    async fn deliver_and_record(
        &self,
        event: &RecordedEvent,
        due: Due,
    ) -> Result<(), DeliveryError> {
        let Due {
            message,
            source_event_id,
            outcome_id,
            redelivery_of,
        } = due;
        let task_id = message.task_id;
        let body = serde_json::to_vec(&message).map_err(|error| DeliveryError::Append {
            task_id,
            reason: error.to_string(),
        })?;
        let attempts = self.deliver(task_id, &body).await;
        let at = Utc::now();
        let agency = self.agency.as_str().to_owned();
        let (event_type, payload) = match attempts {
            Attempts::Accepted {
                status,
                attempts,
                answer,
            } => {
                let answer = if message.kind == DeliveryKind::Cancelled {
                    "none".to_owned()
                } else {
                    self.apply_answer(task_id, &answer).await?
                };
                tracing::info!(agency = %self.agency, %task_id, status, attempts, answer,
                    redelivery = redelivery_of.is_some(), "delivered to the agency system");
                let body = ConnectorDelivered {
                    task_id,
                    agency,
                    source_event_id,
                    kind: message.kind,
                    attempts,
                    status,
                    answer,
                    redelivery_of,
                    recovered: false,
                    at,
                };
                (DELIVERED, serde_json::to_value(body))
            }
            Attempts::Failed {
                attempts,
                last_status,
                reason,
                permanent,
            } => {
                tracing::warn!(agency = %self.agency, %task_id, attempts, ?last_status, reason, permanent,
                    "delivery failed; listed for the operator (lifeline deliveries failed)");
                let body = ConnectorDeliveryFailed {
                    task_id,
                    agency,
                    source_event_id,
                    kind: message.kind,
                    attempts,
                    last_status,
                    reason: reason.to_owned(),
                    permanent,
                    manual_handling: true,
                    redelivery_of,
                    at,
                };
                (DELIVERY_FAILED, serde_json::to_value(body))
            }
        };
        let payload = payload.map_err(|error| DeliveryError::Append {
            task_id,
            reason: error.to_string(),
        })?;
        self.append_outcome(event, task_id, event_type, payload, outcome_id, at)
            .await
    }

    /// Sends `body` until it is accepted, refused for good, or the attempts run out.
    async fn deliver(&self, task_id: Uuid, body: &[u8]) -> Attempts {
        let max_attempts = self.connector.max_attempts.max(1);
        let mut last_status = None;
        let mut reason = "connection";
        for attempt in 1..=max_attempts {
            let timestamp = Utc::now().timestamp();
            let signature = sign(self.connector.secret.expose(), timestamp, body);
            let sent = self
                .client
                .post(&self.connector.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature)
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                Ok(response) => {
                    let status = response.status();
                    last_status = Some(status.as_u16());
                    if status.is_success() {
                        let answer = read_bounded(response).await;
                        return Attempts::Accepted {
                            status: status.as_u16(),
                            attempts: attempt,
                            answer,
                        };
                    }
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        return Attempts::Failed {
                            attempts: attempt,
                            last_status,
                            reason: "refused",
                            permanent: true,
                        };
                    }
                    reason = "server_error";
                }
                Err(error) if error.is_timeout() => {
                    last_status = None;
                    reason = "timeout";
                }
                Err(_) => {
                    last_status = None;
                    reason = "connection";
                }
            }
            tracing::info!(agency = %self.agency, %task_id, attempt, reason, ?last_status, "delivery attempt failed");
            if attempt < max_attempts {
                tokio::time::sleep(self.wait_after(attempt)).await;
            }
        }
        Attempts::Failed {
            attempts: max_attempts,
            last_status,
            reason,
            permanent: false,
        }
    }

    /// Exponential back-off plus up to 50% jitter.
    fn wait_after(&self, attempt: u32) -> Duration {
        let base = self.connector.backoff(attempt);
        let jitter_ms = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=jitter_ms)
        };
        base.saturating_add(Duration::from_millis(jitter))
    }

    /// Applies a synchronous answer (`{"result": "completed", "outcome": {..}}` or
    /// `{"result": "rejected", "reason": ".."}`); an empty or result-less body is `none`.
    async fn apply_answer(&self, task_id: Uuid, answer: &[u8]) -> Result<String, DeliveryError> {
        if answer.iter().all(u8::is_ascii_whitespace) {
            return Ok("none".to_owned());
        }
        let Ok(result) = serde_json::from_slice::<AgencyResult>(answer) else {
            tracing::warn!(agency = %self.agency, %task_id, "the agency's answer is not a result; ignored");
            return Ok("none".to_owned());
        };
        let Some(kind) = result.result.clone() else {
            return Ok("none".to_owned());
        };
        match apply_agency_result(&self.tasks, self.agency, task_id, result, Utc::now()).await {
            Ok(_) => Ok(kind),
            Err(error) if error.status.is_server_error() => Err(DeliveryError::Task {
                task_id,
                reason: error.code.to_owned(),
            }),
            Err(error) => {
                let fields: Vec<&str> = error.fields.keys().map(String::as_str).collect();
                tracing::warn!(agency = %self.agency, %task_id, code = error.code, ?fields,
                    "the agency's answer was refused; the task stays as it was");
                Ok("refused".to_owned())
            }
        }
    }
}

/// Only what the procedure's agency receives, whatever the stored application holds.
fn minimised(
    procedure: ProcedureId,
    application: &Application,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    application
        .0
        .iter()
        .filter(|(field, _)| procedure.receives(field))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect()
}

/// The body of an answer, at most [`MAX_ANSWER_BYTES`]; what cannot be read counts as empty.
async fn read_bounded(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Vec::new();
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return body,
            Err(_) => return Vec::new(),
        }
    }
}
