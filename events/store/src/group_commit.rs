//! Group commit: concurrent [`crate::EventStore::append`] calls share one transaction, so one
//! commit (one WAL flush) serves many appends, while each keeps its own expected-version check
//! and idempotency.
//!
//! On PostgreSQL a group is written by the fast path (`batch`: one statement for a group of new
//! streams, else lock + write + commit), and up to [`parallel_groups`] groups are in flight at
//! once, so a group gathers while the one before it commits. An append the fast path cannot
//! settle runs on the careful path afterwards, alone. On SQLite (one writer) groups run one
//! after another, each append in a savepoint of the group's transaction.

use lifeline_model::envelope::{ExpectedVersion, NewEvent, StreamId};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;
use tokio::sync::{mpsc, oneshot};

use crate::append::{self, AppendOutcome};
use crate::batch;
use crate::error::{AppendError, StoreError};
use crate::store::{BackendKind, EventStore};

/// The most appends one transaction takes.
pub(crate) const MAX_GROUP: usize = 128;

/// How many groups may be in flight at once on PostgreSQL: one per core, at least 2 (one
/// group is written while the one before commits) and at most 8. Measured on 2 cores (W1 at
/// concurrency 32): 1 group 10.4k appends/s, 2 groups 13.5-14.8k/s, 4 groups 10.3k/s (smaller
/// groups, more commits).
fn parallel_groups() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().clamp(2, 8))
}

/// How many appends may wait for the committer before callers queue on the channel.
const QUEUE: usize = 1024;

/// One caller's append, waiting for its group's commit.
pub(crate) struct Request {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// The caller's side: a channel to the committer task.
#[derive(Debug)]
pub(crate) struct GroupCommitter {
    sender: mpsc::Sender<Request>,
}

impl GroupCommitter {
    /// Starts the committer task on `store`, which must not itself group its appends (the task
    /// would send to itself). The task ends when every `GroupCommitter` is dropped.
    pub(crate) fn start(store: EventStore) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, receiver, sender.downgrade()));
        Self { sender }
    }

    /// Appends through the committer and waits for the group's commit.
    pub(crate) async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, AppendError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream: stream.clone(),
            expected,
            events: events.to_vec(),
            reply,
        };
        self.sender.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> AppendError {
    AppendError::Store(StoreError::CommitFailed(
        "the group committer stopped".to_owned(),
    ))
}

/// Takes the first waiting append, then every other one already waiting (up to
/// [`MAX_GROUP`]), and commits them as a group while the next group gathers.
async fn run(
    store: EventStore,
    mut receiver: mpsc::Receiver<Request>,
    requests: mpsc::WeakSender<Request>,
) {
    let parallel = match store.backend() {
        BackendKind::Postgres => parallel_groups(),
        BackendKind::Sqlite => 1,
    };
    // Under load each slot keeps its connection from group to group (no pool round trip, no
    // liveness ping per group). Idle, the committer holds none: a slot gives its connection
    // back when no append is waiting, and the loop releases the free slots' connections
    // before it waits (closing the pool waits for every connection to come back).
    let (slot_back, mut free_slots) = mpsc::channel::<Slot>(parallel);
    for _ in 0..parallel {
        let _ = slot_back.try_send(Slot { connection: None });
    }
    loop {
        let first = match receiver.try_recv() {
            Ok(request) => request,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                release_free_slots(&mut free_slots, &slot_back);
                match receiver.recv().await {
                    Some(request) => request,
                    None => return,
                }
            }
        };
        let Some(mut slot) = free_slots.recv().await else {
            return;
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let store = store.clone();
        let slot_back = slot_back.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            match store.backend() {
                BackendKind::Postgres => commit_group_postgres(&store, &mut slot, group).await,
                BackendKind::Sqlite => commit_group_in_savepoints(&store, group).await,
            }
            let waiting = requests
                .upgrade()
                .is_some_and(|sender| sender.capacity() < sender.max_capacity());
            if !waiting {
                slot.connection = None;
            }
            let _ = slot_back.send(slot).await;
        });
    }
}

/// Gives the connections of the slots not in use back to the pool.
fn release_free_slots(free_slots: &mut mpsc::Receiver<Slot>, slot_back: &mpsc::Sender<Slot>) {
    let mut released = Vec::new();
    while let Ok(mut slot) = free_slots.try_recv() {
        slot.connection = None;
        released.push(slot);
    }
    for slot in released {
        let _ = slot_back.try_send(slot);
    }
}

/// One of the committer's parallel groups, with the connection it keeps.
struct Slot {
    connection: Option<PoolConnection<Postgres>>,
}

async fn commit_group_postgres(store: &EventStore, slot: &mut Slot, group: Vec<Request>) {
    let Some(pool) = store.postgres_pool() else {
        return commit_group_in_savepoints(store, group).await;
    };
    let encoded: Vec<Result<Vec<append::EncodedEvent<'_>>, AppendError>> = group
        .iter()
        .map(|request| append::encode_batch(&request.events))
        .collect();
    let mut plan = Vec::with_capacity(group.len());
    let mut index_of = Vec::with_capacity(group.len());
    for (index, (request, events)) in group.iter().zip(&encoded).enumerate() {
        if let Ok(events) = events {
            plan.push(batch::GroupAppend {
                stream: &request.stream,
                expected: request.expected,
                events,
                known_hash: store.known_hashes().at(&request.stream, request.expected),
            });
            index_of.push(index);
        }
    }
    // None: not settled yet.
    let mut answers: Vec<Option<Result<AppendOutcome, AppendError>>> =
        (0..group.len()).map(|_| None).collect();
    let written = if plan.is_empty() {
        Ok(Vec::new())
    } else {
        let connection = match slot.connection.take() {
            Some(connection) => Ok(connection),
            None => pool.acquire().await,
        };
        match connection {
            Ok(mut connection) => {
                let written = batch::append_group_with(&mut connection, &plan).await;
                store.known_hashes().count(&plan, &written);
                // A fault may have left the connection unusable: the next group takes a new one.
                if !matches!(written, Err(batch::FastError::Store(_))) {
                    slot.connection = Some(connection);
                }
                written
            }
            Err(error) => Err(batch::FastError::Store(StoreError::Database(error))),
        }
    };
    match written {
        Ok(results) => {
            let mut stored = false;
            for (index, result) in index_of.iter().zip(results) {
                if let batch::Answer::Stored(outcome, _) = result {
                    stored = true;
                    answers[*index] = Some(Ok(outcome));
                }
            }
            if stored {
                store.notify_appended();
            }
        }
        Err(batch::FastError::Careful) => {}
        // The group's statement was refused, nothing stored, because one of its appends met a
        // stream whose previous event came from a younger transaction (migration 17; an
        // `Any` append that waited for a lock, say): each goes the careful way, in a
        // transaction of its own, rather than the whole group failing.
        Err(batch::FastError::Store(error)) if error.is_serialization_failure() => {}
        Err(batch::FastError::Store(error)) => {
            let message = error.to_string();
            for index in index_of {
                answers[index] = Some(Err(AppendError::Store(match &error {
                    StoreError::CommitFailed(_) => StoreError::CommitFailed(message.clone()),
                    _ => StoreError::CommitFailed(format!(
                        "the group's append failed before its commit: {message}"
                    )),
                })));
            }
        }
    }
    drop(plan);
    for ((request, events), answer) in group.iter().zip(encoded).zip(answers.iter_mut()) {
        if answer.is_some() {
            continue;
        }
        *answer = Some(match events {
            Ok(events) => {
                store
                    .append_careful(&request.stream, request.expected, &events)
                    .await
            }
            Err(error) => Err(error),
        });
    }
    for (request, answer) in group.into_iter().zip(answers) {
        if let Some(answer) = answer {
            let _ = request.reply.send(answer);
        }
    }
}

async fn commit_group_in_savepoints(store: &EventStore, mut group: Vec<Request>) {
    // A lone append takes the ordinary path (with its retries of idempotency races).
    if group.len() == 1 {
        if let Some(request) = group.pop() {
            let result = store
                .append_ungrouped(&request.stream, request.expected, &request.events)
                .await;
            let _ = request.reply.send(result);
        }
        return;
    }
    let mut tx = match store.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            let message = error.to_string();
            for request in group.drain(..) {
                let _ = request
                    .reply
                    .send(Err(AppendError::Store(StoreError::CommitFailed(
                        message.clone(),
                    ))));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(group.len());
    for request in group.iter() {
        // Each append runs in a savepoint: a conflict or a duplicate rolls back only itself.
        results.push(
            tx.append(&request.stream, request.expected, &request.events)
                .await,
        );
    }
    let committed = tx.commit().await;
    for (request, result) in group.drain(..).zip(results) {
        // Without the commit no answer stands: even a conflict may have been with a groupmate
        // whose write is gone.
        let answer = match &committed {
            Ok(()) => result,
            Err(error) => Err(AppendError::Store(StoreError::CommitFailed(
                error.to_string(),
            ))),
        };
        let _ = request.reply.send(answer);
    }
}
