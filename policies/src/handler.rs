//! The seam between the rules and the runtimes: a runtime hands each event to a
//! [`PolicyHandler`] inside a store transaction; the handler appends what the policy decides.

use async_trait::async_trait;
use lifeline_model::envelope::RecordedEvent;
use lifeline_store::{StoreError, StoreTransaction};

use crate::runtime::Notices;

/// Why a policy could not handle an event. The runtime retries (with backoff) and, after the
/// configured number of deliveries, records `PolicyFailed` and moves on.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The event or the facts it needs could not be read or decoded, or a rule refused it: a
    /// retry will not help until the cause is fixed (still retried, in case it is transient).
    #[error("policy {policy} refused event {event_id}: {message}")]
    Refused {
        policy: String,
        event_id: uuid::Uuid,
        message: String,
    },
    /// The store failed (connection lost, conflict with a concurrent writer...): retry.
    #[error(transparent)]
    Store(#[from] lifeline_store::StoreError),
    #[error(transparent)]
    Append(#[from] lifeline_store::AppendError),
    /// A new task's inbox row could not be written beside its creation: retry.
    #[error(transparent)]
    Projection(#[from] lifeline_store::projections::ProjectionError),
    /// A notice named an event its store does not hold (in the notice's stream).
    #[error("event {event_id} named by a bus message is not in the store")]
    Missing { event_id: uuid::Uuid },
}

impl PolicyError {
    /// Whether the store was unreachable or overloaded ([`lifeline_store::StoreError::is_transient`]):
    /// the policy did not get to decide, so the runtimes retry without counting an attempt and
    /// never give up on it (a database outage must not turn events into `PolicyFailed`, nor
    /// let JetStream drop them).
    pub fn is_transient(&self) -> bool {
        self.store_error().is_some_and(StoreError::is_transient)
    }

    /// Whether this is a deferred transaction's first write finding a stream it read held
    /// moved ([`lifeline_store::StoreError::HeldStreamMoved`]): nothing was written, and the
    /// batch is to run again in a transaction begun at once.
    pub fn is_held_stream_moved(&self) -> bool {
        matches!(self.store_error(), Some(StoreError::HeldStreamMoved))
    }

    /// The store's own error, however the policy's store calls wrapped it.
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(error)
            | Self::Append(lifeline_store::AppendError::Store(error))
            | Self::Projection(lifeline_store::projections::ProjectionError::Store(error)) => {
                Some(error)
            }
            _ => None,
        }
    }
}

/// A set of named policies. Each name is one durable consumer (NATS) or one subscriber
/// (embedded): its checkpoint and its retries are its own.
#[async_trait]
pub trait PolicyHandler: Send + Sync {
    /// The stable names of the policies, e.g. `birth-registration`.
    fn policy_names(&self) -> Vec<&'static str>;

    /// Whether `policy` reacts to events of this type at all (others are acknowledged unread).
    fn wants(&self, policy: &str, event_type: &str) -> bool;

    /// Which notices `policy`'s JetStream consumer receives: one filter subject
    /// ([`crate::runtime::BusConfig::filter_subject`]; nats-server 2.9 has one filter per
    /// consumer), narrowed to what the policy can want. [`Notices::All`] (the default): every
    /// notice, which [`PolicyHandler::wants`] sorts; it still sorts what a filter lets through.
    fn notices(&self, _policy: &str) -> Notices {
        Notices::All
    }

    /// Whether a runtime may run `policy`'s batches in a deferred transaction
    /// ([`lifeline_store::EventStore::begin_deferred`]: begun on PostgreSQL only at its first
    /// write, so that its reads hold back no reader of the log). A handler that says so reads
    /// before it writes, calls [`StoreTransaction::begin_writes`] before writing through the
    /// transaction's connection, and writes nothing after a write that ended the transaction;
    /// a batch that fails with [`PolicyError::is_held_stream_moved`] is run again in a plain
    /// transaction. False by default.
    fn defers_begin(&self, _policy: &str) -> bool {
        false
    }

    /// Runs `policy` on `event`: looks up the facts it needs, decides, and appends the
    /// resulting events inside `tx` with deterministic event ids and "stream must not exist"
    /// where a new stream is created, so that handling the same event twice has the effect of
    /// handling it once. The caller commits `tx`.
    async fn apply(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), PolicyError>;

    /// Runs `policy` on each of `events`, in order, inside `tx`, with the effect of
    /// [`PolicyHandler::apply`] on each one after another. On failure the caller rolls `tx`
    /// back (a deferred transaction's write that ended it is committed: see
    /// [`PolicyHandler::defers_begin`]); the error comes with the index of the event it came from, if one did. The
    /// default applies them one by one; a handler may write a batch's effects together.
    async fn apply_batch(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), (Option<usize>, PolicyError)> {
        apply_each(self, policy, tx, events).await
    }

    /// Runs `policy` on the events `notices` name (a runtime's notices: each event's id and
    /// stream, the event not yet read), in order, inside `tx`: the effect of reading them and
    /// calling [`PolicyHandler::apply_batch`]. The default reads them by id in one statement; a
    /// handler that reads their streams anyway may take them from that read instead. An event
    /// not found fails with its index.
    async fn apply_notices(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        notices: &[Noticed<'_>],
    ) -> Result<(), (Option<usize>, PolicyError)> {
        let events = read_noticed(tx, notices).await?;
        self.apply_batch(policy, tx, &events).await
    }
}

/// An event a runtime was told of (a bus notice): its id and its stream.
#[derive(Debug, Clone, Copy)]
pub struct Noticed<'a> {
    pub event_id: uuid::Uuid,
    pub stream_id: &'a str,
}

/// The events `notices` name, in their order, read by id in one statement. An id twice is
/// handed over twice, as one at a time would.
pub async fn read_noticed(
    tx: &mut StoreTransaction<'_>,
    notices: &[Noticed<'_>],
) -> Result<Vec<RecordedEvent>, (Option<usize>, PolicyError)> {
    let ids: Vec<uuid::Uuid> = notices.iter().map(|notice| notice.event_id).collect();
    let found = tx
        .events_by_ids(&ids)
        .await
        .map_err(|error| (None, PolicyError::Store(error)))?;
    pick_noticed(notices, |_, notice| {
        found.iter().find(|event| event.event_id == notice.event_id)
    })
}

/// The events `notices` name, in their order, each as `find` finds it (given the notice's
/// index); one not found fails with its index (`PolicyError::Missing`).
pub fn pick_noticed<'e>(
    notices: &[Noticed<'_>],
    find: impl Fn(usize, &Noticed<'_>) -> Option<&'e RecordedEvent>,
) -> Result<Vec<RecordedEvent>, (Option<usize>, PolicyError)> {
    notices
        .iter()
        .enumerate()
        .map(|(index, notice)| {
            find(index, notice).cloned().ok_or((
                Some(index),
                PolicyError::Missing {
                    event_id: notice.event_id,
                },
            ))
        })
        .collect()
}

/// [`PolicyHandler::apply`] on each of `events`, in order (what
/// [`PolicyHandler::apply_batch`] does unless a handler writes a batch together); the error
/// comes with the index of its event.
pub async fn apply_each<H: PolicyHandler + ?Sized>(
    handler: &H,
    policy: &str,
    tx: &mut StoreTransaction<'_>,
    events: &[RecordedEvent],
) -> Result<(), (Option<usize>, PolicyError)> {
    for (index, event) in events.iter().enumerate() {
        handler
            .apply(policy, tx, event)
            .await
            .map_err(|error| (Some(index), error))?;
    }
    Ok(())
}
