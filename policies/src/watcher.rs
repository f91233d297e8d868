//! The overdue watcher: finds open or claimed tasks past their due time that are not marked
//! overdue yet, and records `TaskOverdue` on each task's stream, exactly once per task.
//!
//! Candidates come from the inbox projection (which may lag); the decision is made on the task's
//! own stream, read in the same transaction as the append, which names the version it read. The
//! event id is UUIDv5(task id + "/overdue"), so a second watcher or a restart never doubles it:
//! re-appending it is a no-op, and a conflicting append is skipped until the next round.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeline_model::codec;
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, StreamId, StreamVersion};
use lifeline_model::task::{Task, TaskCommand, TaskEvent};
use lifeline_store::projections::{self, ProjectionError};
use lifeline_store::{AppendError, EventStore, StoreError};
use tokio::sync::watch;
use uuid::Uuid;

/// The namespace of the watcher's deterministic event ids.
pub const WATCHER_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6c69_6e65_7761_7463_6865_7201);

/// The actor named in the metadata of `TaskOverdue` events.
pub const WATCHER_ACTOR: &str = "watcher:overdue";

/// How many overdue candidates one round looks at.
const CANDIDATES_PER_ROUND: u32 = 500;

/// Where the watcher reads the time: the system clock, or a fixed one in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why a round of the watcher failed (a fault: the next round retries).
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("task stream {stream} holds an event that cannot be read: {source}")]
    Decode {
        stream: String,
        #[source]
        source: codec::DecodeError,
    },
}

/// The id of the `TaskOverdue` event of `task_id`.
pub fn overdue_event_id(task_id: Uuid) -> Uuid {
    Uuid::new_v5(&WATCHER_NAMESPACE, format!("{task_id}/overdue").as_bytes())
}

/// One round: marks every open or claimed task due before `now` and not yet overdue. Returns how
/// many `TaskOverdue` events this call appended (tasks marked by someone else meanwhile, closed,
/// or changed concurrently are skipped; the latter are looked at again next round).
pub async fn check_overdue_once(
    store: &EventStore,
    now: DateTime<Utc>,
) -> Result<usize, WatcherError> {
    let candidates = projections::open_tasks_due_before(store, now, CANDIDATES_PER_ROUND).await?;
    let mut marked = 0;
    for candidate in candidates {
        if mark_overdue(store, candidate.task_id, now).await? {
            marked += 1;
        }
    }
    Ok(marked)
}

/// Marks one task overdue if its stream says it is open, due before `now`, and not marked yet.
/// True if this call appended the event.
async fn mark_overdue(
    store: &EventStore,
    task_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, WatcherError> {
    let stream = match StreamId::for_kind("task", task_id) {
        Ok(stream) => stream,
        Err(_) => return Ok(false),
    };
    let mut tx = store.begin().await?;
    let stored = tx.read_stream(&stream).await?;
    let version = stored.last().map(|event| event.stream_version);
    let mut task = Task::default();
    let mut cause = None;
    for event in &stored {
        let task_event: TaskEvent =
            codec::decode_recorded(event).map_err(|source| WatcherError::Decode {
                stream: stream.to_string(),
                source,
            })?;
        apply(&mut task, task_event);
        cause = Some(event.event_id);
    }
    let events = match task.decide(TaskCommand::MarkOverdue { at: now }) {
        Ok(events) if !events.is_empty() => events,
        // Already overdue, closed, not yet due, or not created: nothing to do.
        Ok(_) | Err(_) => {
            tx.rollback().await?;
            return Ok(false);
        }
    };
    let Some(version) = version else {
        tx.rollback().await?;
        return Ok(false);
    };
    let new_events: Vec<_> = events
        .iter()
        .map(|event| {
            codec::to_new_event(
                event,
                overdue_event_id(task_id),
                EventMetadata::system(WATCHER_ACTOR, task_id, cause, now),
            )
        })
        .collect();
    match tx
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(version.0)),
            &new_events,
        )
        .await
    {
        Ok(outcome) if outcome.already_stored => {
            tx.rollback().await?;
            Ok(false)
        }
        Ok(_) => {
            tx.commit().await?;
            tracing::info!(%task_id, due_at = ?task.due_at, "task marked overdue");
            Ok(true)
        }
        Err(AppendError::Conflict { .. }) | Err(AppendError::EventIdMismatch { .. }) => {
            tracing::debug!(%task_id, "task changed while marking it overdue; next round");
            tx.rollback().await?;
            Ok(false)
        }
        Err(error) => {
            tx.rollback().await?;
            Err(error.into())
        }
    }
}

/// The task's state after `event` (the aggregate's own `apply`, without the cqrs-es trait).
fn apply(task: &mut Task, event: TaskEvent) {
    match event {
        TaskEvent::TaskCreated(created) => {
            task.task_id = Some(created.task_id);
            task.procedure = Some(created.procedure);
            task.life_event_id = Some(created.life_event_id);
            task.office = Some(created.office);
            task.application = created.application;
            task.due_at = Some(created.due_at);
            task.status = lifeline_model::task::TaskStatus::Open;
        }
        TaskEvent::TaskClaimed(claimed) => {
            task.claimed_by = Some(claimed.by);
            task.status = lifeline_model::task::TaskStatus::Claimed;
        }
        TaskEvent::TaskCompleted(completed) => {
            task.outcome = Some(completed.outcome);
            task.status = lifeline_model::task::TaskStatus::Completed;
        }
        TaskEvent::TaskRejected(_) => task.status = lifeline_model::task::TaskStatus::Rejected,
        TaskEvent::TaskCancelled(_) => task.status = lifeline_model::task::TaskStatus::Cancelled,
        TaskEvent::TaskAmended(amended) => task.application = amended.application,
        TaskEvent::TaskOverdue(_) => task.overdue = true,
    }
}

/// Runs [`check_overdue_once`] every `interval` with `clock`'s time until `shutdown` turns true
/// (or its sender is dropped). A failed round is logged and retried at the next tick.
pub async fn run_overdue_watcher(
    store: EventStore,
    interval: Duration,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WatcherError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Ok(());
                }
            }
            _ = ticker.tick() => {
                match check_overdue_once(&store, clock.now()).await {
                    Ok(0) => {}
                    Ok(marked) => tracing::info!(marked, "overdue watcher round"),
                    Err(error) => tracing::warn!(%error, "overdue watcher round failed; retrying next tick"),
                }
            }
        }
    }
}
