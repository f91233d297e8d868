//! Group commit: concurrent [`crate::EventStore::append`] calls share one transaction, so one
//! commit (one WAL flush) serves many appends, while each keeps its own expected-version check
//! and idempotency in a savepoint of its own.

use lifeline_model::envelope::{ExpectedVersion, NewEvent, StreamId};
use tokio::sync::{mpsc, oneshot};

use crate::append::AppendOutcome;
use crate::error::{AppendError, StoreError};
use crate::store::EventStore;

/// The most appends one transaction takes.
pub(crate) const MAX_GROUP: usize = 128;

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
        tokio::spawn(run(store, receiver));
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
/// [`MAX_GROUP`]), runs them in one transaction, commits, and answers each.
async fn run(store: EventStore, mut receiver: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = receiver.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        commit_group(&store, &mut group).await;
    }
}

async fn commit_group(store: &EventStore, group: &mut Vec<Request>) {
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
