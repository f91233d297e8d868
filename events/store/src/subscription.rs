//! Catch-up subscriptions that turn live: a [`Subscriber`] handles every event of the global
//! log once, in commit order, its effects and checkpoint committed in one transaction.
//!
//! The rule on failure: if [`Subscriber::handle`] returns an error, the whole batch is rolled
//! back (effects and checkpoint), and [`run_subscription`] returns
//! [`SubscriptionError::Handler`] with the failing event's id and cursor; the caller decides
//! whether to retry (running the subscription again resumes at the last committed checkpoint,
//! so no effect is doubled) or to stop. [`run_subscription_group`] runs several subscribers on
//! one read and one transaction per batch, each with its own checkpoint, by the same rule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lifeline_model::envelope::{LogCursor, RecordedEvent};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::error::{StoreError, SubscriberError, SubscriptionError};
use crate::postgres::NOTIFY_CHANNEL;
use crate::store::{CheckpointMove, EventStore, StoreTransaction};

/// A reader of the global log whose effects live in the store's database.
#[async_trait]
pub trait Subscriber: Send {
    /// The checkpoint name: stable across restarts, unique per subscriber.
    fn name(&self) -> &str;

    /// Handles one event inside `tx`, which also saves the checkpoint. Use `tx` for every write
    /// (never [`EventStore::append`], which on SQLite would wait for `tx`'s own lock).
    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError>;

    /// The event types whose payloads this subscriber reads, if not every type's. The
    /// subscription then reads the other events without their payload
    /// ([`EventStore::read_all_with_payloads_of`]: `serde_json::Value::Null` in its place), so
    /// nobody renders or parses JSON this subscriber never looks at. Every event is still handed
    /// to [`Subscriber::prepare_batch`] and [`Subscriber::handle`], with its header and metadata.
    fn payload_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Called before the first event of every batch (every transaction): a subscriber that holds
    /// rows back between [`Subscriber::handle`] calls forgets them here, since the batch before
    /// may have been rolled back.
    fn begin_batch(&mut self) {}

    /// Called after [`Subscriber::begin_batch`] with the whole batch, in its transaction,
    /// before any [`Subscriber::handle`]: a subscriber may look up here, in a few statements,
    /// the rows the batch will need (instead of one lookup per event).
    async fn prepare_batch(
        &mut self,
        _tx: &mut StoreTransaction<'_>,
        _events: &[RecordedEvent],
    ) -> Result<(), SubscriberError> {
        Ok(())
    }

    /// Called after the last event of a batch, in its transaction, before the checkpoint moves:
    /// a subscriber writes here what it held back (one save per row instead of one per event).
    async fn end_batch(&mut self, _tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        Ok(())
    }
}

/// How a subscription reads and waits.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionOptions {
    /// Events handled per transaction (at most: a read takes what is there). On PostgreSQL a
    /// transaction that stays open after its first write holds back every gap-free reader of
    /// the log (the relay among them): a subscriber should read and fold first and write at
    /// the end of the batch (`Subscriber::end_batch`), as the projections do.
    pub batch_size: usize,
    /// How long to wait, when caught up, before reading again without a wake-up. Needed
    /// because wake-ups can be lost and because on PostgreSQL an event can be committed but
    /// not yet readable (an older transaction is still running).
    pub poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Runs `subscriber` from its checkpoint until `shutdown` turns true (or its sender is
/// dropped), with [`SubscriptionOptions::default`].
pub async fn run_subscription<S: Subscriber + ?Sized>(
    store: &EventStore,
    subscriber: &mut S,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SubscriptionError> {
    run_subscription_with(store, subscriber, shutdown, SubscriptionOptions::default()).await
}

/// Runs `subscriber` from its checkpoint until `shutdown` turns true (or its sender is
/// dropped): read a batch after the checkpoint, handle each event and advance the checkpoint in
/// one transaction, commit, repeat; when caught up, wait for a wake-up or the poll interval.
///
/// A batch in progress when shutdown fires is finished and committed first. If another runner
/// of the same subscriber moved the checkpoint meanwhile, the batch is rolled back and reading
/// resumes from the moved checkpoint, so effects are never doubled.
pub async fn run_subscription_with<S: Subscriber + ?Sized>(
    store: &EventStore,
    subscriber: &mut S,
    mut shutdown: watch::Receiver<bool>,
    options: SubscriptionOptions,
) -> Result<(), SubscriptionError> {
    let name = subscriber.name().to_owned();
    let mut wake_ups = WakeUps::new(store).await;
    let mut cursor = store.load_checkpoint(&name).await?;
    tracing::info!(subscriber = %name, ?cursor, "subscription starting");
    let batch_size = options.batch_size.max(1);
    let payload_types = subscriber.payload_types();
    loop {
        if *shutdown.borrow() {
            break;
        }
        wake_ups.mark_seen();
        let batch = read_batch(store, cursor, batch_size, payload_types).await?;
        let Some(last) = batch.last() else {
            if wake_ups.wait(&mut shutdown, options.poll_interval).await {
                break;
            }
            continue;
        };
        let next = last.cursor();
        let mut tx = store.begin_keyed().await?;
        if let Err(failure) = apply_in(&mut tx, subscriber, &batch).await {
            tx.rollback().await?;
            return Err(failure.into_error(name));
        }
        let advanced = [CheckpointMove {
            subscriber: &name,
            from: cursor,
            to: next,
        }];
        if tx.commit_advancing(&advanced).await? {
            cursor = next;
            // A batch smaller than asked for was all there was: wait for the next append
            // instead of reading again at once to find nothing.
            if batch.len() < batch_size && wake_ups.wait(&mut shutdown, options.poll_interval).await
            {
                break;
            }
        } else {
            cursor = store.load_checkpoint(&name).await?;
            tracing::warn!(subscriber = %name, ?cursor, "checkpoint moved by another runner; batch rolled back");
        }
    }
    tracing::info!(subscriber = %name, ?cursor, "subscription stopped");
    Ok(())
}

/// The next batch after `after`: with every payload, or only those of `payload_types`
/// ([`Subscriber::payload_types`]).
async fn read_batch(
    store: &EventStore,
    after: LogCursor,
    batch_size: usize,
    payload_types: Option<&[&'static str]>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    match payload_types {
        Some(types) => {
            store
                .read_all_with_payloads_of(after, batch_size, types)
                .await
        }
        None => store.read_all(after, batch_size).await,
    }
}

/// Why a subscriber's batch failed, before its name is attached.
struct BatchFailure {
    event_id: uuid::Uuid,
    cursor: LogCursor,
    source: SubscriberError,
}

impl BatchFailure {
    /// A failure of the whole batch (not of one event): named by its last event.
    fn whole(batch: &[RecordedEvent], source: SubscriberError) -> Self {
        let last = batch.last();
        Self {
            event_id: last.map(|event| event.event_id).unwrap_or_default(),
            cursor: last.map(RecordedEvent::cursor).unwrap_or(LogCursor::START),
            source,
        }
    }

    fn into_error(self, subscriber: String) -> SubscriptionError {
        SubscriptionError::Handler {
            subscriber,
            event_id: self.event_id,
            cursor: self.cursor,
            source: self.source,
        }
    }
}

/// Hands `batch` (not empty) to `subscriber` inside `tx`: `begin_batch`, `prepare_batch`, every
/// `handle`, `end_batch`. Moves no checkpoint; on failure the caller rolls `tx` back.
async fn apply_in<S: Subscriber + ?Sized>(
    tx: &mut StoreTransaction<'_>,
    subscriber: &mut S,
    batch: &[RecordedEvent],
) -> Result<(), BatchFailure> {
    fold_in(tx, subscriber, batch).await?;
    write_in(tx, subscriber, batch).await
}

/// The first part of [`apply_in`]: `begin_batch`, `prepare_batch` and every `handle` (where a
/// subscriber reads and folds).
async fn fold_in<S: Subscriber + ?Sized>(
    tx: &mut StoreTransaction<'_>,
    subscriber: &mut S,
    batch: &[RecordedEvent],
) -> Result<(), BatchFailure> {
    subscriber.begin_batch();
    if let Err(source) = subscriber.prepare_batch(tx, batch).await {
        tracing::warn!(subscriber = %subscriber.name(), error = %source, "subscriber failed to prepare its batch; rolled back");
        return Err(BatchFailure::whole(batch, source));
    }
    for event in batch {
        if let Err(source) = subscriber.handle(tx, event).await {
            tracing::warn!(
                subscriber = %subscriber.name(),
                event_id = %event.event_id,
                global_position = event.global_position.0,
                error = %source,
                "subscriber failed; batch rolled back"
            );
            return Err(BatchFailure {
                event_id: event.event_id,
                cursor: event.cursor(),
                source,
            });
        }
    }
    Ok(())
}

/// The second part of [`apply_in`]: `end_batch` (where a subscriber writes what it held back).
async fn write_in<S: Subscriber + ?Sized>(
    tx: &mut StoreTransaction<'_>,
    subscriber: &mut S,
    batch: &[RecordedEvent],
) -> Result<(), BatchFailure> {
    if let Err(source) = subscriber.end_batch(tx).await {
        tracing::warn!(subscriber = %subscriber.name(), error = %source, "subscriber failed to write its batch; rolled back");
        return Err(BatchFailure::whole(batch, source));
    }
    Ok(())
}

/// The payload types a group reads: every type if any member reads every type, else the union.
fn group_payload_types(subscribers: &[Box<dyn Subscriber>]) -> Option<Vec<&'static str>> {
    let mut types: Vec<&'static str> = Vec::new();
    for subscriber in subscribers {
        for event_type in subscriber.payload_types()? {
            if !types.contains(event_type) {
                types.push(event_type);
            }
        }
    }
    Some(types)
}

/// Runs several subscribers as one reader of the log until `shutdown` turns true (or its
/// sender is dropped): each batch is read once, from the checkpoint furthest behind, and every
/// subscriber handles the part of it after its own checkpoint; all their effects and
/// checkpoints commit in one transaction. Each keeps its own checkpoint, so a member can also
/// run alone ([`run_subscription_with`]) or be rebuilt, and the group picks it up where it is.
///
/// Within a batch every member folds first (`begin_batch`, `prepare_batch`, every `handle`),
/// then every member writes (`end_batch`) and its checkpoint moves: so a member must not read
/// what another member writes (the projections each read only their own tables).
///
/// The price of sharing: a member that fails rolls back the whole batch, for every member; the
/// error names the member, and the caller may run it alone and the others on as a group.
pub async fn run_subscription_group(
    store: &EventStore,
    subscribers: &mut [Box<dyn Subscriber>],
    mut shutdown: watch::Receiver<bool>,
    options: SubscriptionOptions,
) -> Result<(), SubscriptionError> {
    if subscribers.is_empty() {
        return Ok(());
    }
    // Owned: a subscriber is `Send`, not `Sync`, so no shared borrow of one may cross an await.
    let names: Vec<String> = subscribers
        .iter()
        .map(|subscriber| subscriber.name().to_owned())
        .collect();
    let mut wake_ups = WakeUps::new(store).await;
    let mut cursors = load_checkpoints(store, &names).await?;
    tracing::info!(subscribers = ?names, ?cursors, "group subscription starting");
    let batch_size = options.batch_size.max(1);
    let payload_types = group_payload_types(subscribers);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some(from) = cursors.iter().min().copied() else {
            break;
        };
        wake_ups.mark_seen();
        let batch = read_batch(store, from, batch_size, payload_types.as_deref()).await?;
        let Some(last) = batch.last() else {
            if wake_ups.wait(&mut shutdown, options.poll_interval).await {
                break;
            }
            continue;
        };
        let next = last.cursor();
        let mut tx = store.begin_keyed().await?;
        // The batch is in cursor order: a member's part is what follows its checkpoint.
        let parts: Vec<&[RecordedEvent]> = cursors
            .iter()
            .map(|&cursor| &batch[batch.partition_point(|event| event.cursor() <= cursor)..])
            .collect();
        // Every member reads and folds first, then every member writes: on PostgreSQL the
        // transaction takes its transaction id (which holds back every gap-free reader of the
        // log until the commit) at its first write, so the members' look-ups are not spent
        // holding one.
        for ((subscriber, name), part) in subscribers.iter_mut().zip(&names).zip(&parts) {
            if part.is_empty() {
                continue;
            }
            if let Err(failure) = fold_in(&mut tx, subscriber.as_mut(), part).await {
                tx.rollback().await?;
                return Err(failure.into_error(name.clone()));
            }
        }
        let mut moves = Vec::with_capacity(names.len());
        for (((subscriber, name), &cursor), part) in
            subscribers.iter_mut().zip(&names).zip(&cursors).zip(&parts)
        {
            if part.is_empty() {
                continue;
            }
            if let Err(failure) = write_in(&mut tx, subscriber.as_mut(), part).await {
                tx.rollback().await?;
                return Err(failure.into_error(name.clone()));
            }
            moves.push(CheckpointMove {
                subscriber: name,
                from: cursor,
                to: next,
            });
        }
        // Every member's checkpoint at once, sent with the commit (on PostgreSQL).
        if tx.commit_advancing(&moves).await? {
            for cursor in &mut cursors {
                *cursor = (*cursor).max(next);
            }
            if batch.len() < batch_size && wake_ups.wait(&mut shutdown, options.poll_interval).await
            {
                break;
            }
        } else {
            cursors = load_checkpoints(store, &names).await?;
            tracing::warn!(subscribers = ?names, ?cursors, "a checkpoint was moved by another runner; batch rolled back");
        }
    }
    tracing::info!(subscribers = ?names, ?cursors, "group subscription stopped");
    Ok(())
}

async fn load_checkpoints(
    store: &EventStore,
    names: &[String],
) -> Result<Vec<LogCursor>, StoreError> {
    let mut cursors = Vec::with_capacity(names.len());
    for name in names {
        cursors.push(store.load_checkpoint(name).await?);
    }
    Ok(cursors)
}

/// What wakes a caught-up reader of the log: this process's appends, and on PostgreSQL the
/// `lifeline_events` notifications of every process. Never a cursor: only a reason to read.
///
/// Use: [`WakeUps::mark_seen`] right before reading; when the read found nothing new, or less
/// than it asked for (it is caught up), [`WakeUps::wait`]. A wake-up that comes between the two
/// is not lost.
///
/// Every append wakes every reader, so under a stream of small appends a reader would read once
/// per append. A wake-up therefore reads no sooner than [`MIN_READ_GAP`] after the reader's
/// previous read: the appends of that gap are read together.
pub struct WakeUps {
    local: watch::Receiver<u64>,
    /// The store's shared listener (PostgreSQL), `None` on SQLite.
    notified: Option<watch::Receiver<u64>>,
    /// Set after a wake-up: the next read may still find nothing, because on PostgreSQL a
    /// committed event is readable only once every older transaction has ended. Until a
    /// wait runs to its full poll interval, the wait after such an empty read is short
    /// ([`HELD_BACK_FIRST`], doubling), so an event held back only by a short transaction of
    /// another writer (a projection's, whose commit wakes nobody) is read within milliseconds.
    held_back: Option<Duration>,
    /// When the reader last read (its last [`WakeUps::mark_seen`]).
    last_read: Option<Instant>,
}

/// The first retry after a wake-up whose read found nothing.
const HELD_BACK_FIRST: Duration = Duration::from_millis(2);

/// The shortest time between two reads of one reader that a wake-up causes: what a reader
/// adds, at most, to an event's way through it, and what bounds its reads to a few hundred a
/// second however many appends wake it.
pub const MIN_READ_GAP: Duration = Duration::from_millis(4);

/// The first and longest wait before the shared listener connects again.
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// One `LISTEN lifeline_events` connection per store (and its clones), whose notifications
/// bump a counter every [`WakeUps`] of the store watches. It runs while anyone watches, and
/// starts again with the next [`WakeUps`] after the last one is gone.
pub(crate) struct SharedListener {
    counter: watch::Sender<u64>,
    running: AtomicBool,
}

impl Default for SharedListener {
    fn default() -> Self {
        Self {
            counter: watch::channel(0).0,
            running: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedListener")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedListener {
    /// A receiver of the notifications of `pool`'s database; starts the listening task if it
    /// is not running.
    fn subscribe(self: &Arc<Self>, pool: &sqlx::PgPool) -> watch::Receiver<u64> {
        let receiver = self.counter.subscribe();
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(listen_for(Arc::downgrade(self), pool.clone()));
        }
        receiver
    }

    fn bump(&self) {
        self.counter
            .send_modify(|counter| *counter = counter.wrapping_add(1));
    }
}

/// The shared listener's task: relays notifications to the counter, connecting again after a
/// failure (and then bumping the counter: notifications may have been missed meanwhile). Ends
/// when the store is gone or nobody watches.
async fn listen_for(shared: Weak<SharedListener>, pool: sqlx::PgPool) {
    let mut listener: Option<PgListener> = None;
    let mut retry = LISTEN_RETRY_FIRST;
    loop {
        {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.counter.receiver_count() == 0 {
                shared.running.store(false, Ordering::Release);
                // A reader that subscribed meanwhile saw `running` still set: keep going.
                if shared.counter.receiver_count() == 0
                    || shared.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        }
        let Some(connected) = listener.as_mut() else {
            match listen(&pool).await {
                Ok(connected) => {
                    listener = Some(connected);
                    retry = LISTEN_RETRY_FIRST;
                    if let Some(shared) = shared.upgrade() {
                        shared.bump();
                    }
                }
                Err(_) if pool.is_closed() => {
                    if let Some(shared) = shared.upgrade() {
                        shared.running.store(false, Ordering::Release);
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, ?retry, "cannot listen for wake-ups; readers poll meanwhile");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LISTEN_RETRY_MAX);
                }
            }
            continue;
        };
        // Wakes now and then to notice that nobody watches any more.
        match tokio::time::timeout(Duration::from_secs(1), connected.try_recv()).await {
            Err(_elapsed) => {}
            Ok(received) => {
                match received {
                    // Whatever else is buffered is the same news.
                    Ok(Some(_notification)) => while connected.next_buffered().is_some() {},
                    // The connection was lost (the next call connects again): notifications
                    // may be lost, so readers read.
                    Ok(None) => {}
                    Err(error) => {
                        if pool.is_closed() {
                            if let Some(shared) = shared.upgrade() {
                                shared.running.store(false, Ordering::Release);
                            }
                            return;
                        }
                        tracing::warn!(%error, "lost the wake-up listener; readers poll until it reconnects");
                        listener = None;
                    }
                }
                if let Some(shared) = shared.upgrade() {
                    shared.bump();
                }
            }
        }
    }
}

impl std::fmt::Debug for WakeUps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeUps").finish_non_exhaustive()
    }
}

impl WakeUps {
    /// Wake-ups for `store`. On PostgreSQL they come from the store's shared listener (one
    /// connection for all its readers); while it cannot listen, readers poll.
    pub async fn new(store: &EventStore) -> Self {
        let notified = store
            .postgres_pool()
            .map(|pool| store.shared_listener().subscribe(pool));
        Self {
            local: store.appended_receiver(),
            notified,
            held_back: None,
            last_read: None,
        }
    }

    /// Forgets wake-ups that came before the read about to happen.
    pub fn mark_seen(&mut self) {
        self.local.borrow_and_update();
        if let Some(notified) = self.notified.as_mut() {
            notified.borrow_and_update();
        }
        self.last_read = Some(Instant::now());
    }

    /// Waits for a wake-up (then until [`MIN_READ_GAP`] after the last read), the poll
    /// interval (shorter while a wake-up's event may still be held back, see [`WakeUps`]) or
    /// shutdown; true if shutdown.
    pub async fn wait(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        poll_interval: Duration,
    ) -> bool {
        let Self {
            local,
            notified,
            held_back,
            last_read,
        } = self;
        // After a wake-up, the read that followed found nothing new to wait for (else the
        // caller would not wait): retry soon, doubling, until the poll interval.
        let (timeout, short) = match *held_back {
            Some(delay) if delay < poll_interval => (delay, true),
            _ => (poll_interval, false),
        };
        let remote = async {
            match notified {
                // A closed channel (the store is gone) is no wake-up.
                Some(notified) => {
                    if notified.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let woken = tokio::select! {
            changed = shutdown.changed() => return changed.is_err() || *shutdown.borrow(),
            _ = local.changed() => true,
            () = remote => true,
            () = tokio::time::sleep(timeout) => {
                *held_back = if short { Some(timeout * 2) } else { None };
                false
            }
        };
        if woken {
            *held_back = Some(HELD_BACK_FIRST);
            let gap = last_read.map_or(Duration::ZERO, |read| {
                MIN_READ_GAP.saturating_sub(read.elapsed())
            });
            if !gap.is_zero() {
                tokio::select! {
                    changed = shutdown.changed() => return changed.is_err() || *shutdown.borrow(),
                    () = tokio::time::sleep(gap) => {}
                }
            }
        }
        false
    }
}

async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}
