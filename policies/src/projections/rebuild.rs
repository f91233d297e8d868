//! Rebuilding the projections from the log: empty the tables, forget the checkpoints, replay
//! every event (or every event recorded before a time) through the live subscribers' code.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{LogCursor, RecordedEvent, RecordedEventText};
use lifeline_store::projections::{self, ProjectionError};
use lifeline_store::{CheckpointMove, EventStore, StoreError, Subscriber, SubscriberError};

use super::{
    decode_event_text, projections, DecodedMap, Projection, SharedDecoded, PROJECTION_NAMES,
};

/// Events read and handled per transaction while catching up.
const CATCH_UP_BATCH: usize = 8000;

/// Why a rebuild or a catch-up stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("projection {subscriber} failed on event {event_id}: {source}")]
    Handler {
        subscriber: String,
        event_id: uuid::Uuid,
        #[source]
        source: SubscriberError,
    },
    #[error("projection {subscriber} was moved by another runner while catching up: stop the projections before rebuilding")]
    CheckpointMoved { subscriber: String },
    #[error("event {event_id} at position {global_position} cannot be read: {source}")]
    Undecodable {
        event_id: uuid::Uuid,
        global_position: i64,
        #[source]
        source: lifeline_model::codec::DecodeError,
    },
    #[error("a rebuild task stopped: {0}")]
    Task(String),
}

impl ProjectionsError {
    fn task(error: tokio::task::JoinError) -> Self {
        Self::Task(error.to_string())
    }
}

/// How many events each projection replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events_per_projection: Vec<(String, u64)>,
}

/// Runs `subscriber` from its checkpoint until it is caught up (the gap-free reader has nothing
/// more for now), or until the first event recorded at or after `recorded_before`, if given:
/// events stop there in commit order, so the result is a prefix of the log. Returns the number
/// of events handled. Each batch commits its rows with its checkpoint, like
/// [`lifeline_store::run_subscription`].
pub async fn catch_up<S: Subscriber + ?Sized>(
    store: &EventStore,
    subscriber: &mut S,
    recorded_before: Option<DateTime<Utc>>,
) -> Result<u64, ProjectionsError> {
    let name = subscriber.name().to_owned();
    let mut cursor = store.load_checkpoint(&name).await?;
    let mut handled = 0_u64;
    loop {
        let (batch, reached_cutoff) = read_batch(store, cursor, recorded_before).await?;
        let Some(last) = batch.last() else {
            return Ok(handled);
        };
        let next = last.cursor();
        apply_batch(store, subscriber, cursor, &batch).await?;
        handled += batch.len() as u64;
        cursor = next;
        if reached_cutoff {
            return Ok(handled);
        }
    }
}

/// Batches the reader may run ahead of the slowest projection in [`catch_up_together`].
const BATCHES_AHEAD: usize = 2;

/// One batch of [`catch_up_together`], read after `after`.
struct SharedBatch {
    after: LogCursor,
    events: Vec<RecordedEvent>,
    decoded: SharedDecoded,
}

/// [`catch_up`] for several projections standing at the same checkpoint: each batch is read
/// once, with its payloads as text, and decoded once, straight into the events, then handed to
/// every projection. Each projection works through the batches in a task of its own, each batch
/// in its own transaction with its checkpoint, up to [`BATCHES_AHEAD`] batches behind the
/// reader: the reading, the decoding and the projections' folding and writing run on every core
/// at once, and no projection waits for a slower one at the end of every batch.
async fn catch_up_together(
    store: &EventStore,
    subscribers: &mut Vec<Box<dyn Projection>>,
    recorded_before: Option<DateTime<Utc>>,
) -> Result<u64, ProjectionsError> {
    let Some(first) = subscribers.first() else {
        return Ok(0);
    };
    let mut cursor = store.load_checkpoint(first.name()).await?;
    for subscriber in subscribers.iter() {
        if store.load_checkpoint(subscriber.name()).await? != cursor {
            return Err(ProjectionsError::CheckpointMoved {
                subscriber: subscriber.name().to_owned(),
            });
        }
    }
    let mut senders = Vec::with_capacity(subscribers.len());
    let mut workers = Vec::with_capacity(subscribers.len());
    for mut subscriber in subscribers.drain(..) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Arc<SharedBatch>>(BATCHES_AHEAD);
        senders.push(sender);
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            while let Some(batch) = receiver.recv().await {
                subscriber.preset_decoded(Arc::clone(&batch.decoded));
                if let Err(error) =
                    apply_batch(&store, subscriber.as_mut(), batch.after, &batch.events).await
                {
                    return (subscriber, Err(error));
                }
            }
            (subscriber, Ok(()))
        }));
    }
    let mut handled = 0_u64;
    let read = async {
        loop {
            let (events, decoded, reached_cutoff) =
                read_decoded_batch(store.clone(), cursor, recorded_before).await?;
            let Some(last) = events.last() else {
                return Ok(());
            };
            let next = last.cursor();
            let count = events.len() as u64;
            let batch = Arc::new(SharedBatch {
                after: cursor,
                events,
                decoded,
            });
            for sender in &senders {
                if sender.send(Arc::clone(&batch)).await.is_err() {
                    // That projection stopped on an error, reported below.
                    return Ok(());
                }
            }
            handled += count;
            cursor = next;
            if reached_cutoff {
                return Ok(());
            }
        }
    };
    let read: Result<(), ProjectionsError> = read.await;
    drop(senders);
    let mut failed = read.err();
    for worker in workers {
        let (subscriber, applied) = worker.await.map_err(ProjectionsError::task)?;
        subscribers.push(subscriber);
        if let Err(error) = applied {
            failed.get_or_insert(error);
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(handled),
    }
}

/// The next batch after `cursor`, cut before the first event recorded at or after
/// `recorded_before`; true if it was cut there (nothing after it is wanted).
async fn read_batch(
    store: &EventStore,
    cursor: LogCursor,
    recorded_before: Option<DateTime<Utc>>,
) -> Result<(Vec<RecordedEvent>, bool), ProjectionsError> {
    let mut batch = store.read_all(cursor, CATCH_UP_BATCH).await?;
    let reached_cutoff = cut_before(&mut batch, recorded_before, |event| event);
    Ok((batch, reached_cutoff))
}

/// Cuts `batch` before its first event recorded at or after `recorded_before`, if given; true
/// if it was cut there (nothing after it is wanted).
fn cut_before<T>(
    batch: &mut Vec<T>,
    recorded_before: Option<DateTime<Utc>>,
    event_of: impl Fn(&T) -> &RecordedEvent,
) -> bool {
    let Some(cutoff) = recorded_before else {
        return false;
    };
    match batch
        .iter()
        .position(|item| event_of(item).metadata.recorded_at >= cutoff)
    {
        Some(first_late) => {
            batch.truncate(first_late);
            true
        }
        None => false,
    }
}

/// [`read_batch`] for [`catch_up_together`]: the payloads read as text and decoded once for
/// every projection ([`Projection::preset_decoded`]); the events handed to the projections
/// carry no payload of their own.
async fn read_decoded_batch(
    store: EventStore,
    cursor: LogCursor,
    recorded_before: Option<DateTime<Utc>>,
) -> Result<(Vec<RecordedEvent>, SharedDecoded, bool), ProjectionsError> {
    let mut batch = store.read_all_payload_text(cursor, CATCH_UP_BATCH).await?;
    let reached_cutoff = cut_before(&mut batch, recorded_before, |text| &text.event);
    let mut decoded = DecodedMap::with_capacity_and_hasher(batch.len(), Default::default());
    let mut events = Vec::with_capacity(batch.len());
    for RecordedEventText { event, payload } in batch {
        match decode_event_text(&event, &payload) {
            Ok(Some(one)) => {
                decoded.insert(event.event_id, Arc::new(one));
            }
            Ok(None) => {}
            Err(error) => {
                return Err(ProjectionsError::Undecodable {
                    event_id: event.event_id,
                    global_position: event.global_position.0,
                    source: error,
                })
            }
        }
        events.push(event);
    }
    Ok((events, Arc::new(decoded), reached_cutoff))
}

/// Handles `batch` (not empty, read after `cursor`) in one transaction that also moves the
/// subscriber's checkpoint from `cursor` to the batch's last event.
async fn apply_batch<S: Subscriber + ?Sized>(
    store: &EventStore,
    subscriber: &mut S,
    cursor: LogCursor,
    batch: &[RecordedEvent],
) -> Result<(), ProjectionsError> {
    let name = subscriber.name().to_owned();
    let Some(last) = batch.last() else {
        return Ok(());
    };
    let mut tx = store.begin_keyed().await?;
    subscriber.begin_batch();
    if let Err(source) = subscriber.prepare_batch(&mut tx, batch).await {
        tx.rollback().await?;
        return Err(ProjectionsError::Handler {
            subscriber: name,
            event_id: last.event_id,
            source,
        });
    }
    for event in batch {
        if let Err(source) = subscriber.handle(&mut tx, event).await {
            tx.rollback().await?;
            return Err(ProjectionsError::Handler {
                subscriber: name,
                event_id: event.event_id,
                source,
            });
        }
    }
    if let Err(source) = subscriber.end_batch(&mut tx).await {
        tx.rollback().await?;
        return Err(ProjectionsError::Handler {
            subscriber: name,
            event_id: last.event_id,
            source,
        });
    }
    let advanced = [CheckpointMove {
        subscriber: &name,
        from: cursor,
        to: last.cursor(),
    }];
    if !tx.commit_advancing(&advanced).await? {
        return Err(ProjectionsError::CheckpointMoved { subscriber: name });
    }
    Ok(())
}

/// Empties every projection table, forgets the projections' checkpoints and replays the whole
/// log through each projection; the result equals what the live projections build.
///
/// Run it with the projections stopped (no `run_subscription` of any of them, in any process):
/// a running projection would keep writing from its old cursor. Other subscribers (policies, the
/// relay) are untouched. If it fails midway, the tables and checkpoints stay consistent with each
/// other: starting the projections (or running this again) completes the work.
pub async fn rebuild_projections(store: &EventStore) -> Result<RebuildReport, ProjectionsError> {
    rebuild(store, None).await
}

/// Like [`rebuild_projections`], replaying only the events recorded before `recorded_before`
/// (stopping at the first later one in commit order): the projections as of that moment.
/// Starting the live projections afterwards brings them up to date again.
pub async fn rebuild_projections_until(
    store: &EventStore,
    recorded_before: DateTime<Utc>,
) -> Result<RebuildReport, ProjectionsError> {
    rebuild(store, Some(recorded_before)).await
}

async fn rebuild(
    store: &EventStore,
    recorded_before: Option<DateTime<Utc>>,
) -> Result<RebuildReport, ProjectionsError> {
    let mut tx = store.begin().await?;
    projections::clear_projections(&mut tx, &PROJECTION_NAMES).await?;
    tx.commit().await?;
    let mut report = RebuildReport::default();
    let mut subscribers = projections();
    let handled = catch_up_together(store, &mut subscribers, recorded_before).await?;
    for subscriber in &subscribers {
        tracing::info!(
            projection = subscriber.name(),
            handled,
            "projection rebuilt"
        );
        report
            .events_per_projection
            .push((subscriber.name().to_owned(), handled));
    }
    Ok(report)
}
