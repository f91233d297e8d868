//! The agency inbox projection: one row per task, folded from the task's events.

use std::collections::HashSet;
use std::sync::OnceLock;

use async_trait::async_trait;
use lifeline_model::codec::EventFamily;
use lifeline_model::envelope::RecordedEvent;
use lifeline_model::task::{TaskCreated, TaskEvent, TaskStatus};
use lifeline_store::projections::{self, TaskRow};
use lifeline_store::{StoreTransaction, Subscriber, SubscriberError};
use uuid::Uuid;

use super::{task_id_of, DecodedBatch, DecodedEvent, HeldRows, Projection, SharedDecoded};

/// The checkpoint name of the inbox projection.
pub const INBOX_PROJECTION: &str = "projection-inbox";

/// Keeps `projection_tasks` up to date.
///
/// Within a batch it folds a task's events into one row held in memory and saves each changed
/// row once, at the end of the batch (in the batch's transaction, before the checkpoint moves).
#[derive(Debug, Default)]
pub struct InboxProjection {
    /// The rows of the tasks this batch changed, as folded so far.
    held: HeldRows<Uuid, TaskRow>,
    decoded: DecodedBatch,
}

impl InboxProjection {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Subscriber for InboxProjection {
    fn name(&self) -> &str {
        INBOX_PROJECTION
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        if !is_task_event(&event.event_type) {
            return Ok(());
        }
        let decoded = self.decoded.take(event).map_err(SubscriberError::failed)?;
        let Some(DecodedEvent::Task(task_event)) = decoded.as_deref() else {
            return Ok(());
        };
        let task_id = task_id_of(task_event);
        let row = match self.held.take(&task_id) {
            Some(row) => Some(row),
            // A task's first event creates its row: nothing to load.
            None if matches!(task_event, TaskEvent::TaskCreated(_)) => None,
            None => match self.held.known(&task_id) {
                Some(known) => known.cloned(),
                None => projections::load_task(tx, task_id).await?,
            },
        };
        match apply_task_event(row, task_event) {
            Some(row) => self.held.put(task_id, row),
            None => {
                tracing::warn!(%task_id, event_id = %event.event_id, event_type = %event.event_type,
                    "task event for a task the inbox does not know; skipped");
            }
        }
        Ok(())
    }

    /// Task events only: the records (with their declarations, the largest payloads) are read
    /// without theirs.
    fn payload_types(&self) -> Option<&'static [&'static str]> {
        Some(task_event_types())
    }

    fn begin_batch(&mut self) {
        self.held.clear();
        self.decoded.clear();
    }

    /// Looks up at once the stored rows of the tasks whose events the batch continues.
    async fn prepare_batch(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), SubscriberError> {
        // Only task events make inbox rows: the others (records with their declarations, the
        // largest payloads) are not decoded.
        self.decoded
            .fill_where(events, is_task_event)
            .map_err(SubscriberError::failed)?;
        let mut created = HashSet::new();
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        for event in events {
            match self.decoded.get(&event.event_id) {
                Some(DecodedEvent::Task(TaskEvent::TaskCreated(task))) => {
                    created.insert(task.task_id);
                }
                Some(DecodedEvent::Task(task_event)) => {
                    let task_id = task_id_of(task_event);
                    if !created.contains(&task_id) && seen.insert(task_id) {
                        wanted.push(task_id);
                    }
                }
                _ => {}
            }
        }
        let stored = projections::load_tasks(tx, &wanted).await?;
        self.held.know_all(wanted, stored, |row| row.task_id);
        Ok(())
    }

    async fn end_batch(&mut self, tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        projections::save_tasks(tx, &self.held.drain()).await?;
        Ok(())
    }
}

impl Projection for InboxProjection {
    fn preset_decoded(&mut self, decoded: SharedDecoded) {
        self.decoded.preset(decoded);
    }
}

/// Whether events of `event_type` are task events (the only ones the inbox reads).
fn is_task_event(event_type: &str) -> bool {
    TaskEvent::current_version(event_type).is_some()
}

/// Every task event type.
fn task_event_types() -> &'static [&'static str] {
    static TYPES: OnceLock<Vec<&'static str>> = OnceLock::new();
    TYPES.get_or_init(|| TaskEvent::SCHEMAS.iter().map(|(name, _)| *name).collect())
}

/// The inbox row a task's creation makes: what [`apply_task_event`] folds `TaskCreated` into,
/// and what a policy writes beside the event it appends ([`crate::engine`]).
pub fn created_row(created: &TaskCreated) -> TaskRow {
    TaskRow {
        task_id: created.task_id,
        procedure: created.procedure,
        agency: created.agency,
        office: created.office.clone(),
        life_event_id: created.life_event_id,
        status: TaskStatus::Open,
        claimed_by: None,
        due_at: created.due_at,
        overdue: false,
        created_at: created.created_at,
        updated_at: created.created_at,
        application: created.application.clone(),
        outcome: None,
        reason: None,
    }
}

/// What one task event does to the task's inbox row. Pure. `None`: the row does not exist and
/// the event does not create it (an event of a task whose creation was never seen).
pub fn apply_task_event(row: Option<TaskRow>, event: &TaskEvent) -> Option<TaskRow> {
    if let TaskEvent::TaskCreated(created) = event {
        return Some(created_row(created));
    }
    let mut row = row?;
    match event {
        TaskEvent::TaskCreated(_) => {}
        TaskEvent::TaskClaimed(claimed) => {
            row.status = TaskStatus::Claimed;
            row.claimed_by = Some(claimed.by.clone());
            row.updated_at = claimed.at;
        }
        TaskEvent::TaskCompleted(completed) => {
            row.status = TaskStatus::Completed;
            row.outcome = Some(completed.outcome.clone());
            row.updated_at = completed.at;
        }
        TaskEvent::TaskRejected(rejected) => {
            row.status = TaskStatus::Rejected;
            row.reason = Some(rejected.reason.clone());
            row.updated_at = rejected.at;
        }
        TaskEvent::TaskCancelled(cancelled) => {
            row.status = TaskStatus::Cancelled;
            row.reason = Some(cancelled.reason.clone());
            row.updated_at = cancelled.at;
        }
        TaskEvent::TaskAmended(amended) => {
            row.application = amended.application.clone();
            row.updated_at = amended.at;
        }
        TaskEvent::TaskOverdue(overdue) => {
            row.overdue = true;
            row.updated_at = overdue.at;
        }
    }
    Some(row)
}
