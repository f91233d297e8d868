//! The store's errors: operational failures ([`StoreError`]) kept apart from the answers an
//! append can get ([`AppendError`]), and what subscribers and subscriptions report.

use std::path::PathBuf;

use lifeline_model::envelope::{GlobalPosition, LogCursor, StreamId, StreamVersion};
use uuid::Uuid;

/// An operational failure: the database is unreachable, a statement failed, a stored row cannot
/// be decoded. Callers retry or report it as a fault (HTTP 5xx); it is never a domain answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url scheme {scheme:?}: expected postgres://... or sqlite:...")]
    UnsupportedUrl { scheme: String },
    #[error("cannot create the directory {path:?} of the sqlite database: {source}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode event {event_id}: {source}")]
    Encode {
        event_id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    /// A grouped append's transaction did not commit (whether it did is unknown if the
    /// connection broke during the commit): re-send with the same event ids, which is safe.
    #[error("the append's transaction did not commit: {0}")]
    CommitFailed(String),
    #[error("stored event at position {global_position} is malformed: {reason}")]
    Corrupt {
        global_position: i64,
        reason: String,
    },
    /// A [`crate::Lease`] could not be taken or is no longer held.
    #[error("lease: {0}")]
    Lease(String),
    /// A deferred transaction's first write found a stream it had read held moved since the
    /// read (`EventStore::begin_deferred`): nothing was written; read again, held.
    #[error("a stream read held moved before the transaction's first write: read it again")]
    HeldStreamMoved,
    /// A deferred transaction that ended with its first write (committed on its own), or whose
    /// begin, hold or first write failed, was asked to go on (or, failed, to commit).
    #[error(
        "the transaction has ended: its write committed on its own, or its begin, hold or write \
         failed"
    )]
    TransactionEnded,
    /// PostgreSQL's transaction counter is not past the newest transaction id in the log: the
    /// log was restored into another cluster (`pg_dump`/`pg_restore`, a logical copy). New
    /// events would sort before the log's, and every reader's checkpoint would pass over them.
    #[error(
        "the server's next transaction id ({server}) is not past the log's newest ({log}): the \
         log was copied logically (pg_dump, logical replication) into another cluster, where new \
         events would sort before it; restore a physical backup instead (deploy/README.md, \
         \"Backup and restore\")"
    )]
    TransactionCounterBehind { log: i64, server: i64 },
}

impl StoreError {
    /// Whether PostgreSQL refused the statement with `serialization_failure` (40001): on this
    /// store, an append whose stream's previous event came from a younger transaction
    /// (migration 17), refused before anything was stored; run again in a new transaction.
    pub fn is_serialization_failure(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(database))
            if database.code().as_deref() == Some("40001"))
    }

    /// Whether this is the database being unreachable or overloaded for now, not a fault of
    /// the work at hand: the connection lost or refused, the pool exhausted or closed, the
    /// server shutting down, starting or out of connections (SQLSTATE classes 08, 53, 57P),
    /// a serialization failure or a deadlock (40001, 40P01), or a commit whose fate is unknown.
    /// Retrying later is the answer, however often; a policy run that failed so has not been
    /// attempted. On SQLite, a busy or locked database (primary codes 5 and 6). A protocol
    /// error is not transient (it can come from the statement itself).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => match error {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed => true,
                sqlx::Error::Database(database) => {
                    let Some(code) = database.code() else {
                        return false;
                    };
                    if database
                        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                        .is_some()
                    {
                        // Extended result codes: the primary code is the low byte.
                        return code
                            .parse::<i32>()
                            .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
                    }
                    let code = code.as_ref();
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || matches!(code, "40001" | "40P01")
                }
                _ => false,
            },
            Self::CommitFailed(_) | Self::HeldStreamMoved => true,
            _ => false,
        }
    }
}

/// Why an append stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream was not at the expected version (HTTP 409). Nothing was stored.
    #[error("stream {stream} is not at the expected version {expected:?} (actual {actual:?})")]
    Conflict {
        stream: StreamId,
        expected: lifeline_model::envelope::ExpectedVersion,
        /// The stream's version when the conflict was seen; `None` if the stream does not exist.
        actual: Option<StreamVersion>,
    },
    /// Some event ids of the batch are stored already, but not as this very batch (another
    /// stream, other versions, or only part of the batch): re-sending is not a no-op here.
    #[error(
        "event {event_id} is already stored in {stored_stream} at version {stored_version:?}, \
         which is not where this append to {stream} would put it \
         ({stored_count} of {batch_len} event ids of the batch are stored)"
    )]
    EventIdMismatch {
        stream: StreamId,
        event_id: Uuid,
        stored_stream: StreamId,
        stored_version: StreamVersion,
        stored_position: GlobalPosition,
        stored_count: usize,
        batch_len: usize,
    },
    /// The batch names one event id twice.
    #[error("event id {0} appears twice in one append")]
    DuplicateEventInBatch(Uuid),
    /// The batch is empty: there is nothing to append.
    #[error("an append needs at least one event")]
    EmptyBatch,
    /// An operational failure; whether anything was stored is unknown only if the commit itself
    /// failed, and re-sending the same event ids is then safe.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// What a [`crate::Subscriber`] returns when it cannot handle an event.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl SubscriberError {
    /// Wraps any error of the subscriber's own.
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Failed(error.into())
    }
}

impl From<sqlx::Error> for SubscriberError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// Why [`crate::run_subscription`] stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber refused an event. The whole batch was rolled back and the checkpoint still
    /// points before `cursor`'s batch: running the subscription again retries from there.
    #[error("subscriber {subscriber} failed on event {event_id} at {cursor:?}: {source}")]
    Handler {
        subscriber: String,
        event_id: Uuid,
        cursor: LogCursor,
        #[source]
        source: SubscriberError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SubscriptionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}
