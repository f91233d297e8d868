//! [`EventStore`]: one API over PostgreSQL (production) and SQLite (embedded default), and
//! [`StoreTransaction`], the transaction appends, subscribers and group commit run in.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{
    EventHeader, ExpectedVersion, LogCursor, NewEvent, RecordedEvent, RecordedEventText, StreamId,
    StreamVersion,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::append::{self, AppendOutcome, TxAppendError, TxConnection};
use crate::error::{AppendError, StoreError};
use crate::group_commit::GroupCommitter;
use crate::projections::{self, NewTaskRows};
use crate::{batch, postgres, sqlite};

static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long PostgreSQL lets a session sit idle inside a transaction before it ends it: appends
/// keep their transactions short, and one that hangs must not hold back every reader.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an SQLite connection waits for another process's write lock.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// How many times an append that lost an idempotency race retries before giving up.
const DUPLICATE_RACE_RETRIES: usize = 3;

/// The event log. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct EventStore {
    backend: Backend,
    /// Bumped after every committed transaction that appended: the in-process wake-up of
    /// subscriptions (PostgreSQL also notifies other processes with `pg_notify`).
    appended: Arc<watch::Sender<u64>>,
    /// PostgreSQL's `lifeline_events` notifications (every process's appends), heard on one
    /// connection per store and its clones, however many readers wait on them.
    notified: Arc<crate::subscription::SharedListener>,
    /// The last hashes of the streams this process read (PostgreSQL): an append expecting the
    /// version read skips locking its stream (see `batch::KnownHashes`).
    known_hashes: Arc<batch::KnownHashes>,
    /// Set by [`EventStore::with_group_commit`]: appends then share transactions.
    group: Option<Arc<GroupCommitter>>,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(PgPool),
    Sqlite {
        pool: SqlitePool,
        /// SQLite has one writer: writers queue here, in order, instead of polling SQLite's
        /// busy handler; `BEGIN IMMEDIATE` still guards against other processes.
        writer: Arc<Mutex<()>>,
    },
}

/// One subscriber's checkpoint move, for [`StoreTransaction::commit_advancing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMove<'a> {
    pub subscriber: &'a str,
    pub from: LogCursor,
    pub to: LogCursor,
}

/// See [`EventStore::known_hash_appends`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnownHashAppends {
    pub written: u64,
    pub refused: u64,
}

/// Which database an [`EventStore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Postgres,
    Sqlite,
}

/// Whether the SQLite database `options` open lives in memory: a file named `:memory:`, or one
/// opened in memory (`sqlite::memory:`, which sqlx names `file:sqlx-in-memory-<n>`, or a URL's
/// `mode=memory` with any name). sqlx keeps that flag to itself, with no getter; its `Debug`
/// form shows it (its URL form would too, but building that panics on some file names, such as
/// `file:notes.sqlite`). The test `an_in_memory_sqlite_store_is_known_as_one` fails if a new
/// sqlx shows it otherwise.
pub(crate) fn sqlite_in_memory(options: &SqliteConnectOptions) -> bool {
    options.get_filename() == Path::new(":memory:")
        || format!("{options:?}").contains("in_memory: true")
}

impl EventStore {
    /// Connects to `postgres://...` (or `postgresql://...`) or `sqlite:...`. An SQLite file and
    /// its directory are created if missing; SQLite runs in WAL mode with a busy timeout and
    /// foreign keys on. Does not migrate: call [`EventStore::migrate`]. PostgreSQL gets a pool
    /// of 10 connections ([`EventStore::connect_with_pool`] chooses).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, 10).await
    }

    /// [`EventStore::connect`] with at most `postgres_connections` PostgreSQL connections.
    pub async fn connect_with_pool(
        url: &str,
        postgres_connections: u32,
    ) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(url)?;
                Self::connect_postgres(options, postgres_connections).await
            }
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)?;
                Self::connect_sqlite(options).await
            }
            other => Err(StoreError::UnsupportedUrl {
                scheme: other.to_owned(),
            }),
        }
    }

    /// Connects to PostgreSQL with a pool of at most `max_connections`.
    pub async fn connect_postgres(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let idle_timeout = format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis());
        let options = options
            .application_name("lifeline")
            .options([("idle_in_transaction_session_timeout", idle_timeout)]);
        // sqlx pings every connection it takes from the pool by default: a round trip on top
        // of nearly every operation. A connection back from work a moment ago is alive; one
        // idle for longer (a restarted server, a dropped link) is pinged first and replaced if
        // the ping fails.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self::with_backend(Backend::Postgres(pool)))
    }

    /// Connects to SQLite with the store's settings applied over `options`.
    pub async fn connect_sqlite(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let in_memory = sqlite_in_memory(&options);
        if !in_memory {
            if let Some(directory) = options.get_filename().parent() {
                if !directory.as_os_str().is_empty() {
                    std::fs::create_dir_all(directory).map_err(|source| {
                        StoreError::CreateDirectory {
                            path: directory.to_owned(),
                            source,
                        }
                    })?;
                }
            }
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = if in_memory {
            // The database lives as long as a connection to it: one connection, opened now and
            // never retired (sqlx would close it after 10 idle minutes or 30 in all, and with it
            // every event recorded).
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        }
        .connect_with(options)
        .await?;
        Ok(Self::with_backend(Backend::Sqlite {
            pool,
            writer: Arc::new(Mutex::new(())),
        }))
    }

    fn with_backend(backend: Backend) -> Self {
        let (appended, _) = watch::channel(0);
        Self {
            backend,
            appended: Arc::new(appended),
            notified: Arc::new(crate::subscription::SharedListener::default()),
            known_hashes: Arc::new(batch::KnownHashes::default()),
            group: None,
        }
    }

    /// This store with group commit: concurrent [`EventStore::append`] calls are gathered
    /// into one transaction (one commit, one WAL flush) of up to 128 appends, each in a savepoint
    /// of its own, so each keeps its own expected-version check and idempotency; a lone append
    /// goes alone. Needs a tokio runtime (the committer is a task). Clones share the committer.
    pub fn with_group_commit(self) -> Self {
        let committer_store = Self {
            group: None,
            ..self.clone()
        };
        Self {
            group: Some(Arc::new(GroupCommitter::start(committer_store))),
            ..self
        }
    }

    /// Whether appends are grouped (see [`EventStore::with_group_commit`]).
    pub fn groups_commits(&self) -> bool {
        self.group.is_some()
    }

    /// Applies the migrations embedded from `migrations/postgres` or `migrations/sqlite`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                POSTGRES_MIGRATOR.run(pool).await?;
                // Before anything appends (`serve`, `migrate` and `demo` all migrate first):
                // the log's order is the order of the transaction ids.
                let (log, server): (i64, i64) = sqlx::query_as(
                    "SELECT coalesce((SELECT max(transaction_id) FROM events), 0), \
                            pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
                )
                .fetch_one(pool)
                .await?;
                if server <= log {
                    return Err(StoreError::TransactionCounterBehind { log, server });
                }
            }
            Backend::Sqlite { pool, .. } => SQLITE_MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// The migrations of this version not applied to the database, oldest first, as
    /// `(version, description)`: empty when the database is at this version's schema. Only
    /// reads (nothing is created): for the commands that must not change a live database's
    /// schema (`lifeline verify`, `export`, ...), which [`EventStore::migrate`] would.
    pub async fn pending_migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let applied = self.applied_migrations().await?;
        Ok(self
            .migrator()
            .iter()
            .filter(|migration| {
                !migration.migration_type.is_down_migration()
                    && !applied.contains(&migration.version)
            })
            .map(|migration| (migration.version, migration.description.to_string()))
            .collect())
    }

    /// The migrations applied to the database that this version does not know (a newer
    /// version migrated it), oldest first. Only reads.
    pub async fn unknown_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let known: Vec<i64> = self
            .migrator()
            .iter()
            .map(|migration| migration.version)
            .collect();
        let mut unknown: Vec<i64> = self
            .applied_migrations()
            .await?
            .into_iter()
            .filter(|version| !known.contains(version))
            .collect();
        unknown.sort_unstable();
        Ok(unknown)
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match &self.backend {
            Backend::Postgres(_) => &POSTGRES_MIGRATOR,
            Backend::Sqlite { .. } => &SQLITE_MIGRATOR,
        }
    }

    /// The versions recorded as applied (none if the migrations table does not exist).
    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let applied = match &self.backend {
            Backend::Postgres(pool) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(pool)
                        .await?;
                if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(pool)
                        .await?
                } else {
                    Vec::new()
                }
            }
            Backend::Sqlite { pool, .. } => {
                let exists: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(pool)
                .await?;
                if exists > 0 {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(pool)
                        .await?
                } else {
                    Vec::new()
                }
            }
        };
        Ok(applied)
    }

    /// Where the log stands now, for a reader that wants every event committed by now: on
    /// PostgreSQL the next transaction id not yet given (`pg_snapshot_xmax`), below which every
    /// event committed by now lies; `None` on SQLite, whose reader sees every commit at once.
    /// See [`EventStore::readable_up_to`].
    pub async fn log_end_now(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => Ok(Some(
                sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                    .fetch_one(pool)
                    .await?,
            )),
            Backend::Sqlite { .. } => Ok(None),
        }
    }

    /// Whether [`EventStore::read_all`] now reads every event of a transaction whose id is below
    /// `end` (from [`EventStore::log_end_now`]): none of them is still running. An empty page of
    /// `read_all` then means that the log up to `end` has been read.
    pub async fn readable_up_to(&self, end: Option<i64>) -> Result<bool, StoreError> {
        match (&self.backend, end) {
            (Backend::Postgres(pool), Some(end)) => {
                let horizon: i64 = sqlx::query_scalar(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                )
                .fetch_one(pool)
                .await?;
                Ok(horizon >= end)
            }
            _ => Ok(true),
        }
    }

    /// How many migrations this version has for this store's database.
    pub fn migrations_total(&self) -> usize {
        self.migrator()
            .iter()
            .filter(|migration| !migration.migration_type.is_down_migration())
            .count()
    }

    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Sqlite { .. } => BackendKind::Sqlite,
        }
    }

    /// The PostgreSQL pool, if this store runs on PostgreSQL (for wake-up listeners and tests).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite { .. } => None,
        }
    }

    /// The SQLite pool, if this store runs on SQLite (for the integrity module and tests).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Postgres(_) => None,
            Backend::Sqlite { pool, .. } => Some(pool),
        }
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite { pool, .. } => pool.close().await,
        }
    }

    /// Appends `events` to `stream` in one transaction of its own, if the stream is at
    /// `expected`.
    ///
    /// Re-sending a batch whose event ids are all stored already, as this very batch, appends
    /// nothing and answers the original positions with `already_stored`, also when the first
    /// append was still in flight; a batch that is only partly stored, or stored elsewhere, is
    /// [`AppendError::EventIdMismatch`]. The event id decides before the expected version does.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, AppendError> {
        match &self.group {
            Some(group) => group.append(stream, expected, events).await,
            None => self.append_ungrouped(stream, expected, events).await,
        }
    }

    /// [`EventStore::append`] in a transaction of its own: on PostgreSQL the one-statement fast
    /// path (`batch`), and the careful path when that cannot settle it.
    pub(crate) async fn append_ungrouped(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, AppendError> {
        let encoded = append::encode_batch(events)?;
        if let Backend::Postgres(pool) = &self.backend {
            let group = [batch::GroupAppend {
                stream,
                expected,
                events: &encoded,
                known_hash: self.known_hashes.at(stream, expected),
            }];
            let written = batch::append_group(pool, &group).await;
            self.known_hashes.count(&group, &written);
            match written {
                Ok(answers) => {
                    if let Some(batch::Answer::Stored(outcome, _)) = answers.first() {
                        self.notify_appended();
                        return Ok(*outcome);
                    }
                }
                Err(batch::FastError::Careful) => {}
                Err(batch::FastError::Store(error)) => return Err(error.into()),
            }
        }
        self.append_careful(stream, expected, &encoded).await
    }

    /// Appends in a transaction of its own with `append::append_in_tx` (about seven round trips),
    /// retrying lost idempotency races.
    pub(crate) async fn append_careful(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        encoded: &[append::EncodedEvent<'_>],
    ) -> Result<AppendOutcome, AppendError> {
        for _ in 0..DUPLICATE_RACE_RETRIES {
            let mut tx = self.begin().await?;
            match append::append_in_tx(&mut tx.connection_for_append()?, stream, expected, encoded)
                .await
            {
                Ok(outcome) if outcome.already_stored => {
                    tx.rollback().await?;
                    return Ok(outcome);
                }
                Ok(outcome) => {
                    tx.appended = true;
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Err(TxAppendError::Append(error)) => {
                    tx.rollback().await?;
                    return Err(error);
                }
                Err(TxAppendError::DuplicateEventId) => {
                    // A concurrent append stored one of these ids and has committed: look it up.
                    tx.rollback().await?;
                    let mut tx = self.begin_read().await?;
                    let event_ids: Vec<Uuid> =
                        encoded.iter().map(|event| event.event.event_id).collect();
                    let stored =
                        append::lookup_event_ids(&mut tx.connection_for_append()?, &event_ids)
                            .await?;
                    tx.rollback().await?;
                    if !stored.is_empty() {
                        return append::classify_stored(stream, &event_ids, stored);
                    }
                    tracing::debug!(stream = %stream, "idempotency race lost to an append that rolled back; retrying");
                }
            }
        }
        Err(AppendError::Store(StoreError::Corrupt {
            global_position: 0,
            reason: format!(
                "append to {stream} kept colliding with concurrent appends of the same event ids"
            ),
        }))
    }

    /// Begins a write transaction: on PostgreSQL a plain transaction, on SQLite
    /// `BEGIN IMMEDIATE` after taking the store's writer lock, so rowid order is commit order.
    ///
    /// Used by subscriptions (effects and checkpoint in one transaction), by tests that hold a
    /// transaction open, and by group commit. Keep it short: on PostgreSQL an open transaction
    /// holds back every reader of the global log; on SQLite it blocks every other writer. Do not
    /// call [`EventStore::append`] while holding one on SQLite: it would wait for this very lock.
    pub async fn begin(&self) -> Result<StoreTransaction<'_>, StoreError> {
        self.begin_on(false).await
    }

    /// [`EventStore::begin`] for a subscriber's batch, whose look-ups all go by key: on
    /// PostgreSQL the transaction also prefers index scans (`SET LOCAL enable_seqscan = off`,
    /// sent with its `BEGIN`, so no extra round trip).
    ///
    /// Without it, a batch's `key IN (..)` look-ups were planned as sequential scans whenever
    /// the table had no statistics yet (never analysed: autovacuum off, or a table just
    /// filled): PostgreSQL then guesses that a few hundred keys match half the table. In W3
    /// every batch of the life-event and person projections read their whole tables that way,
    /// more rows every second as the tables grew.
    pub async fn begin_keyed(&self) -> Result<StoreTransaction<'_>, StoreError> {
        self.begin_on(true).await
    }

    /// [`EventStore::begin`] for a policy batch that reads first and writes last, which
    /// PostgreSQL is asked to begin only at its first write: until then its reads run on its
    /// connection outside any transaction (each statement with its own snapshot, as inside a
    /// `READ COMMITTED` one), and the transaction has no id to hold back the gap-free readers
    /// of the log with. Streams read held ([`StoreTransaction::read_streams_held`]) are read
    /// plainly and held at the first write, which fails
    /// ([`StoreError::HeldStreamMoved`], nothing written) if one of them moved in between:
    /// read again, in a transaction begun at once. A first write that is a whole group of new
    /// streams ([`StoreTransaction::append_whole_with_new_tasks`]) holds them in its own
    /// statement, run as its own transaction: the transaction's id then lives for that one
    /// statement, and the transaction ends with it (any later write fails,
    /// [`StoreError::TransactionEnded`]; [`StoreTransaction::commit`] only wakes the
    /// subscriptions). On SQLite, [`EventStore::begin`].
    pub async fn begin_deferred(&self) -> Result<StoreTransaction<'_>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => Ok(StoreTransaction {
                store: self,
                inner: TxInner::Deferred {
                    conn: pool.acquire().await?,
                    held: batch::HeldStreams::default(),
                },
                appended: false,
            }),
            Backend::Sqlite { .. } => self.begin_on(false).await,
        }
    }

    async fn begin_on(&self, keyed: bool) -> Result<StoreTransaction<'_>, StoreError> {
        let inner = match &self.backend {
            Backend::Postgres(pool) if keyed => TxInner::Postgres(
                pool.begin_with("BEGIN; SET LOCAL enable_seqscan = off")
                    .await?,
            ),
            Backend::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
            Backend::Sqlite { pool, writer } => {
                let guard = Arc::clone(writer).lock_owned().await;
                let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                TxInner::Sqlite {
                    tx,
                    _writer: Some(guard),
                }
            }
        };
        Ok(StoreTransaction {
            store: self,
            inner,
            appended: false,
        })
    }

    /// A read-only transaction (a deferred one on SQLite, taking no lock).
    async fn begin_read(&self) -> Result<StoreTransaction<'_>, StoreError> {
        let inner = match &self.backend {
            Backend::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
            Backend::Sqlite { pool, .. } => TxInner::Sqlite {
                tx: pool.begin().await?,
                _writer: None,
            },
        };
        Ok(StoreTransaction {
            store: self,
            inner,
            appended: false,
        })
    }

    /// The events of each of `streams`, in version order ([`StoreTransaction::read_streams`] in
    /// a read-only transaction of its own: one statement on PostgreSQL).
    pub async fn read_streams(
        &self,
        streams: &[&StreamId],
    ) -> Result<HashMap<StreamId, Vec<RecordedEvent>>, StoreError> {
        let mut tx = self.begin_read().await?;
        let read = tx.read_streams(streams).await?;
        tx.rollback().await?;
        Ok(read)
    }

    /// Every event of `stream`, in version order.
    pub async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_after(stream, StreamVersion(0)).await
    }

    /// The events of `stream` with a version above `after`, in version order.
    pub async fn read_stream_after(
        &self,
        stream: &StreamId,
        after: StreamVersion,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                let (events, last_hash) = postgres::read_stream_after_with_last_hash(
                    &mut *pool.acquire().await?,
                    stream,
                    after,
                )
                .await?;
                if let (Some(last), Some(hash)) = (events.last(), last_hash) {
                    self.known_hashes
                        .remember(stream, last.stream_version, hash);
                }
                Ok(events)
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::read_stream_after(&mut *pool.acquire().await?, stream, after).await
            }
        }
    }

    /// How many appends to existing streams this store wrote by the last hash it had read,
    /// without locking the stream, and how many of those the database refused because the
    /// stream had moved (they then went the careful way). PostgreSQL; zeros on SQLite.
    pub fn known_hash_appends(&self) -> KnownHashAppends {
        let (written, refused) = self.known_hashes.counts();
        KnownHashAppends { written, refused }
    }

    /// The last hashes of the streams this process read, shared by the store's clones and its
    /// group committer (PostgreSQL; see `batch::KnownHashes`).
    pub(crate) fn known_hashes(&self) -> &batch::KnownHashes {
        &self.known_hashes
    }

    /// The stream's current version; `None` if it has no event.
    pub async fn stream_version(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StreamVersion>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::current_version(&mut *pool.acquire().await?, stream).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::current_version(&mut *pool.acquire().await?, stream).await
            }
        }
    }

    /// Up to `limit` events after `after`, in commit order, gap-free: on PostgreSQL only events
    /// of transactions older than every transaction still running are returned, so an event can
    /// never appear later behind the cursor of the last event returned. An empty answer means
    /// "nothing more for now", not "the end of the log".
    pub async fn read_all(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::read_all(&mut *pool.acquire().await?, after, limit).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::read_all(&mut *pool.acquire().await?, after, limit).await
            }
        }
    }

    /// [`EventStore::read_all`] where only the events whose type is in `payload_types` carry
    /// their payload; every other event comes with `serde_json::Value::Null` in its place (its
    /// header and metadata as always). For a reader that folds a few event types only
    /// ([`crate::Subscriber::payload_types`]): the database does not render, nor this process
    /// parse, the JSON of the others (the records' declarations are the largest payloads).
    pub async fn read_all_with_payloads_of(
        &self,
        after: LogCursor,
        limit: usize,
        payload_types: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::read_all_with_payloads_of(
                    &mut *pool.acquire().await?,
                    after,
                    limit,
                    payload_types,
                )
                .await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::read_all_with_payloads_of(
                    &mut *pool.acquire().await?,
                    after,
                    limit,
                    payload_types,
                )
                .await
            }
        }
    }

    /// [`EventStore::read_all`] with each payload as its stored JSON text
    /// ([`RecordedEventText`]; `event.payload` is null): for a reader that parses payloads
    /// straight into its own types (the projections' rebuild), skipping the
    /// `serde_json::Value` that [`EventStore::read_all`] builds of every payload.
    pub async fn read_all_payload_text(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEventText>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::read_all_payload_text(&mut *pool.acquire().await?, after, limit).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::read_all_payload_text(&mut *pool.acquire().await?, after, limit).await
            }
        }
    }

    /// [`EventStore::read_all`] without payloads and metadata: for a reader that only routes
    /// or counts events (the relay), which then neither transfers nor decodes their JSON.
    pub async fn read_all_headers(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<EventHeader>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::read_all_headers(&mut *pool.acquire().await?, after, limit).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::read_all_headers(&mut *pool.acquire().await?, after, limit).await
            }
        }
    }

    /// The stored event with this id, if any.
    pub async fn event_by_id(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::event_by_id(&mut *pool.acquire().await?, event_id).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::event_by_id(&mut *pool.acquire().await?, event_id).await
            }
        }
    }

    /// The cursor of the first event, in commit order, recorded at or after `at` (every event
    /// before it was recorded earlier); `None` if none was. It reads the log from its start
    /// until it finds one (there is no index on the time): for rare work only, such as the
    /// relay's republishing after its stream was lost.
    pub async fn first_recorded_since(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Option<LogCursor>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::first_recorded_since(&mut *pool.acquire().await?, at).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::first_recorded_since(&mut *pool.acquire().await?, at).await
            }
        }
    }

    /// Where `subscriber` stands; [`LogCursor::START`] if it never saved a checkpoint.
    pub async fn load_checkpoint(&self, subscriber: &str) -> Result<LogCursor, StoreError> {
        let cursor = match &self.backend {
            Backend::Postgres(pool) => {
                postgres::load_checkpoint(&mut *pool.acquire().await?, subscriber).await?
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::load_checkpoint(&mut *pool.acquire().await?, subscriber).await?
            }
        };
        Ok(cursor.unwrap_or(LogCursor::START))
    }

    /// Saves where `subscriber` stands, for subscribers whose effect is outside the database
    /// (the NATS relay saves after the publish is acknowledged). Subscribers whose effect is in
    /// the database save in the effect's transaction instead ([`crate::run_subscription`]).
    pub async fn save_checkpoint(
        &self,
        subscriber: &str,
        cursor: LogCursor,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => {
                postgres::save_checkpoint(&mut *pool.acquire().await?, subscriber, cursor).await
            }
            Backend::Sqlite { pool, .. } => {
                sqlite::save_checkpoint(&mut *pool.acquire().await?, subscriber, cursor).await
            }
        }
    }

    /// A receiver that changes after every committed append of this process.
    pub(crate) fn appended_receiver(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The store's shared listener of PostgreSQL notifications.
    pub(crate) fn shared_listener(&self) -> &Arc<crate::subscription::SharedListener> {
        &self.notified
    }

    pub(crate) fn notify_appended(&self) {
        self.appended
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// A transaction on the store: appends (each atomic on its own, in a savepoint), reads, and
/// checkpoints, all committed together or not at all.
///
/// Dropping it without [`StoreTransaction::commit`] rolls it back (but for a deferred one whose
/// write was its own transaction: [`EventStore::begin_deferred`]).
pub struct StoreTransaction<'s> {
    store: &'s EventStore,
    inner: TxInner,
    appended: bool,
}

enum TxInner {
    Postgres(sqlx::Transaction<'static, Postgres>),
    /// A deferred transaction not begun yet: its connection, outside any transaction, and what
    /// it read held ([`StoreTransaction::read_streams_held`]).
    Deferred {
        conn: PoolConnection<Postgres>,
        held: batch::HeldStreams,
    },
    /// A deferred transaction that ended with its first write (its own transaction, committed):
    /// nothing more can be written or read.
    Ended,
    /// A deferred transaction whose begin, hold or first write failed: nothing more can be
    /// written or read, and nothing was written (but for a write that was its own transaction,
    /// whose error may have come after its commit).
    Failed,
    Sqlite {
        tx: sqlx::Transaction<'static, Sqlite>,
        /// The store's writer lock; `None` for read-only transactions.
        _writer: Option<OwnedMutexGuard<()>>,
    },
}

/// The connection of a [`StoreTransaction`], for subscribers that write tables of their own
/// (projections) in the same transaction as their checkpoint.
pub enum TransactionConnection<'t> {
    Postgres(&'t mut PgConnection),
    Sqlite(&'t mut SqliteConnection),
}

impl std::fmt::Debug for StoreTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTransaction")
            .field("backend", &self.store.backend())
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

impl<'s> StoreTransaction<'s> {
    /// The store this transaction runs on.
    pub fn store(&self) -> &'s EventStore {
        self.store
    }

    /// Appends like [`EventStore::append`], inside this transaction: the batch is atomic on its
    /// own (a savepoint), and visible to others only when the transaction commits.
    pub async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, AppendError> {
        let encoded = append::encode_batch(events)?;
        self.begin_writes().await?;
        if let TxInner::Postgres(tx) = &mut self.inner {
            // The fast path first (`batch`): about four round trips instead of the careful
            // path's eight.
            // No known hash inside a transaction: a group that moves streams locks them.
            let group = [batch::GroupAppend {
                stream,
                expected,
                events: &encoded,
                known_hash: None,
            }];
            if let Some(Some(outcome)) = append_fast(tx, &group).await?.pop() {
                self.appended = true;
                return Ok(outcome);
            }
        }
        self.append_careful(stream, expected, &encoded).await
    }

    /// The careful path of [`StoreTransaction::append`] (`append::append_in_tx`), in a
    /// savepoint of its own.
    async fn append_careful(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        encoded: &[append::EncodedEvent<'_>],
    ) -> Result<AppendOutcome, AppendError> {
        // Its callers began the transaction (`begin_writes`).
        let outcome = match &mut self.inner {
            TxInner::Deferred { .. } | TxInner::Ended | TxInner::Failed => {
                return Err(StoreError::TransactionEnded.into())
            }
            TxInner::Postgres(tx) => {
                let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
                let result = append::append_in_tx(
                    &mut TxConnection::Postgres(&mut savepoint),
                    stream,
                    expected,
                    encoded,
                )
                .await;
                finish_savepoint(savepoint, result).await?
            }
            TxInner::Sqlite { tx, .. } => {
                let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
                let result = append::append_in_tx(
                    &mut TxConnection::Sqlite(&mut savepoint),
                    stream,
                    expected,
                    encoded,
                )
                .await;
                finish_savepoint(savepoint, result).await?
            }
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                // Another transaction stored one of these ids and committed: look it up.
                let event_ids: Vec<Uuid> =
                    encoded.iter().map(|event| event.event.event_id).collect();
                let stored =
                    append::lookup_event_ids(&mut self.connection_for_append()?, &event_ids)
                        .await?;
                append::classify_stored(stream, &event_ids, stored)?
            }
        };
        if !outcome.already_stored {
            self.appended = true;
        }
        Ok(outcome)
    }

    /// Appends to several streams like [`StoreTransaction::append`] one after another, each
    /// append atomic on its own, and answers each one's result in order. On PostgreSQL the
    /// appends go in one statement (and one savepoint) when they can. When that statement is
    /// refused, the appends whose every event is already stored in their stream (a redelivery)
    /// are answered from their ids and the others go grouped again, up to
    /// [`REGROUP_ATTEMPTS`] times; what is left (a stream not as expected, an id stored
    /// elsewhere) runs on the careful path, one append at a time.
    ///
    /// The grouped statement takes the new streams' keys in stream-id order, the careful path
    /// in the order given: two transactions creating the same streams, one grouped and one
    /// append at a time, could wait for each other both ways (a deadlock PostgreSQL ends by
    /// failing one). Regrouping the rest of a redelivery keeps such a batch off the careful
    /// path.
    pub async fn append_many(
        &mut self,
        appends: &[(&StreamId, ExpectedVersion, &[NewEvent])],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        Ok(self.append_many_with_new_tasks(appends, &[]).await?.0)
    }

    /// Appends that all create their streams (`ExpectedVersion::NoStream`), stored whole by one
    /// statement with the new tasks' inbox rows (`tasks`, as [`projections::insert_new_tasks`]
    /// writes them), or not at all: every append's outcome, or `None` when the group is not
    /// stored whole (a stream or event id stored already or meanwhile: a conflict or a
    /// redelivery, which [`StoreTransaction::append_many`] answers append by append), and then
    /// nothing of it, rows included, was written and the transaction goes on. Always `None` on
    /// SQLite, and for appends that do not all create streams.
    ///
    /// In a deferred transaction not begun yet ([`EventStore::begin_deferred`]) the statement is
    /// its own transaction and holds the streams read held first (`None`, nothing written, if
    /// one moved): stored, it has committed and this transaction has ended. An error may then
    /// come after its commit (re-sending the same event ids is safe), and the transaction has
    /// failed either way.
    pub async fn append_whole_with_new_tasks(
        &mut self,
        appends: &[(&StreamId, ExpectedVersion, &[NewEvent])],
        tasks: &[&projections::TaskRow],
    ) -> Result<Option<Vec<AppendOutcome>>, StoreError> {
        // A deferred transaction not begun yet writes the group as its own transaction, holding
        // what it read held; begun, the transaction holds them already.
        let (conn, held): (&mut PgConnection, _) = match &mut self.inner {
            TxInner::Postgres(tx) => (tx, None),
            TxInner::Deferred { conn, held } => (conn, Some(&*held)),
            TxInner::Ended | TxInner::Failed => return Err(StoreError::TransactionEnded),
            TxInner::Sqlite { .. } => return Ok(None),
        };
        let Ok(encoded) = appends
            .iter()
            .map(|(_, _, events)| append::encode_batch(events))
            .collect::<Result<Vec<_>, _>>()
        else {
            return Ok(None);
        };
        let group: Vec<batch::GroupAppend<'_>> = appends
            .iter()
            .zip(&encoded)
            .map(|((stream, expected, _), events)| batch::GroupAppend {
                stream,
                expected: *expected,
                events,
                known_hash: None,
            })
            .collect();
        let Ok(tasks) = NewTaskRows::new(tasks) else {
            return Ok(None);
        };
        let ends = held.is_some();
        let stored = match batch::append_group_whole(conn, &group, tasks, held).await {
            Ok(stored) => stored,
            Err(error) => {
                if ends {
                    self.inner = TxInner::Failed;
                }
                return Err(error);
            }
        };
        if stored.is_some() {
            self.appended = true;
            if ends {
                self.inner = TxInner::Ended;
            }
        }
        Ok(stored)
    }

    /// [`StoreTransaction::append_many`] for appends that create tasks, with the new tasks'
    /// inbox rows (`tasks`, as [`projections::insert_new_tasks`] writes them): on PostgreSQL,
    /// when the appends create streams only and their grouped statement stores every one of
    /// them, that statement inserts the rows too, one round trip instead of two, and the answer
    /// says so (true). Otherwise (false) no row was written: the caller inserts those of the
    /// appends it counts as its own (not those found already stored).
    pub async fn append_many_with_new_tasks(
        &mut self,
        appends: &[(&StreamId, ExpectedVersion, &[NewEvent])],
        tasks: &[&projections::TaskRow],
    ) -> Result<(Vec<Result<AppendOutcome, AppendError>>, bool), StoreError> {
        self.begin_writes().await?;
        // Rows that do not encode are left to the caller's own insert, which reports it.
        let tasks = NewTaskRows::new(tasks).ok().flatten();
        let mut tasks_written = false;
        let encoded: Vec<Result<Vec<append::EncodedEvent<'_>>, AppendError>> = appends
            .iter()
            .map(|(_, _, events)| append::encode_batch(events))
            .collect();
        let mut stored: Vec<Option<AppendOutcome>> = vec![None; appends.len()];
        // A group with an append that does not encode is not tried: that append's error is
        // answered below, the others go the careful way.
        let group: Option<Vec<batch::GroupAppend<'_>>> = appends
            .iter()
            .zip(&encoded)
            .map(|((stream, expected, _), events)| {
                Some(batch::GroupAppend {
                    stream,
                    expected: *expected,
                    events: events.as_ref().ok()?,
                    known_hash: None,
                })
            })
            .collect();
        if let (TxInner::Postgres(tx), Some(group)) = (&mut self.inner, group) {
            (stored, tasks_written) = append_fast_with_new_tasks(tx, &group, tasks).await?;
            if stored.iter().any(Option::is_some) {
                self.appended = true;
            }
            for _ in 0..REGROUP_ATTEMPTS {
                let regrouped = regroup(tx, &group, &mut stored).await?;
                if regrouped.appended {
                    self.appended = true;
                }
                if !regrouped.again {
                    break;
                }
            }
        }
        let mut answered = Vec::with_capacity(appends.len());
        for (((stream, expected, _), encoded), stored) in appends.iter().zip(encoded).zip(stored) {
            answered.push(match (stored, encoded) {
                (Some(outcome), _) => Ok(outcome),
                (None, Ok(encoded)) => self.append_careful(stream, *expected, &encoded).await,
                (None, Err(error)) => Err(error),
            });
        }
        Ok((answered, tasks_written))
    }

    /// The stored events among `event_ids`, as this transaction sees them, in no particular
    /// order (one statement on PostgreSQL).
    pub async fn events_by_ids(
        &mut self,
        event_ids: &[Uuid],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.connection()? {
            TransactionConnection::Postgres(conn) => postgres::events_by_ids(conn, event_ids).await,
            TransactionConnection::Sqlite(tx) => {
                let mut found = Vec::with_capacity(event_ids.len());
                for &event_id in event_ids {
                    found.extend(sqlite::event_by_id(tx, event_id).await?);
                }
                Ok(found)
            }
        }
    }

    /// The stored event with this id, as this transaction sees it.
    pub async fn event_by_id(
        &mut self,
        event_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        match self.connection()? {
            TransactionConnection::Postgres(conn) => postgres::event_by_id(conn, event_id).await,
            TransactionConnection::Sqlite(conn) => sqlite::event_by_id(conn, event_id).await,
        }
    }

    /// The events of `stream`, as this transaction sees them.
    pub async fn read_stream(
        &mut self,
        stream: &StreamId,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.connection()? {
            TransactionConnection::Postgres(conn) => {
                postgres::read_stream_after(conn, stream, StreamVersion(0)).await
            }
            TransactionConnection::Sqlite(conn) => {
                sqlite::read_stream_after(conn, stream, StreamVersion(0)).await
            }
        }
    }

    /// The events of each of `streams`, as this transaction sees them: every stream asked for
    /// is answered, with no events if it has none (one statement on PostgreSQL).
    pub async fn read_streams(
        &mut self,
        streams: &[&StreamId],
    ) -> Result<HashMap<StreamId, Vec<RecordedEvent>>, StoreError> {
        let mut read: HashMap<StreamId, Vec<RecordedEvent>> = streams
            .iter()
            .map(|stream| ((*stream).clone(), Vec::new()))
            .collect();
        match self.connection()? {
            TransactionConnection::Postgres(conn) => {
                for event in postgres::read_streams(conn, streams).await? {
                    if let Some(events) = read.get_mut(&event.stream_id) {
                        events.push(event);
                    }
                }
            }
            TransactionConnection::Sqlite(conn) => {
                for (stream, events) in &mut read {
                    *events = sqlite::read_stream_after(conn, stream, StreamVersion(0)).await?;
                }
            }
        }
        Ok(read)
    }

    /// [`StoreTransaction::read_streams`], with the streams held: until this transaction ends,
    /// no other transaction can append to any of them, so what was read stays the streams'
    /// latest events until this transaction's own writes commit.
    ///
    /// A policy that prefills tasks from a record reads the record this way: a correction or a
    /// void of the record then commits either before the read (and is read) or after the
    /// policy's tasks (and the `corrections` policy, which runs after it commits, finds them).
    /// Without it, one committing in between was missed by both.
    ///
    /// On PostgreSQL the streams' rows are locked `FOR SHARE` first (an append updates its
    /// stream's row, so it waits), then read in a statement of its own, whose snapshot includes
    /// an append the lock waited for; both in one call (migration 12). The lock gives the
    /// transaction its id, and with it holds back the gap-free readers of the log until the
    /// commit: call it after every read that needs no hold. On SQLite every write transaction
    /// already excludes the others.
    ///
    /// In a deferred transaction not begun yet ([`EventStore::begin_deferred`]) the streams are
    /// read plainly and their versions noted: its first write holds them, and fails if one
    /// moved in between.
    pub async fn read_streams_held(
        &mut self,
        streams: &[&StreamId],
    ) -> Result<HashMap<StreamId, Vec<RecordedEvent>>, StoreError> {
        if self.is_deferred() {
            let read = self.read_streams(streams).await?;
            if let TxInner::Deferred { held, .. } = &mut self.inner {
                for stream in streams {
                    let version = read
                        .get(*stream)
                        .and_then(|events| events.last())
                        .map_or(0, |event| event.stream_version.0);
                    held.note(stream.as_str(), version);
                }
            }
            return Ok(read);
        }
        let TxInner::Postgres(tx) = &mut self.inner else {
            return self.read_streams(streams).await;
        };
        let mut read: HashMap<StreamId, Vec<RecordedEvent>> = streams
            .iter()
            .map(|stream| ((*stream).clone(), Vec::new()))
            .collect();
        for event in postgres::read_streams_held(tx, streams).await? {
            if let Some(events) = read.get_mut(&event.stream_id) {
                events.push(event);
            }
        }
        Ok(read)
    }

    /// The stream's version, as this transaction sees it.
    pub async fn stream_version(
        &mut self,
        stream: &StreamId,
    ) -> Result<Option<StreamVersion>, StoreError> {
        append::current_version(&mut self.connection_for_append()?, stream).await
    }

    /// Saves where `subscriber` stands, committed with the rest of this transaction.
    pub async fn save_checkpoint(
        &mut self,
        subscriber: &str,
        cursor: LogCursor,
    ) -> Result<(), StoreError> {
        self.begin_writes().await?;
        match self.connection()? {
            TransactionConnection::Postgres(conn) => {
                postgres::save_checkpoint(conn, subscriber, cursor).await
            }
            TransactionConnection::Sqlite(conn) => {
                sqlite::save_checkpoint(conn, subscriber, cursor).await
            }
        }
    }

    /// Moves `subscriber`'s checkpoint from `from` to `to`; false (and nothing written) if it
    /// is no longer at `from` because another runner of the same subscriber moved it.
    pub async fn advance_checkpoint(
        &mut self,
        subscriber: &str,
        from: LogCursor,
        to: LogCursor,
    ) -> Result<bool, StoreError> {
        self.begin_writes().await?;
        match self.connection()? {
            TransactionConnection::Postgres(conn) => {
                postgres::advance_checkpoint(conn, subscriber, from, to).await
            }
            TransactionConnection::Sqlite(conn) => {
                sqlite::advance_checkpoint(conn, subscriber, from, to).await
            }
        }
    }

    /// The transaction's connection, for a subscriber's own tables. Call
    /// [`StoreTransaction::begin_writes`] before writing through it: in a deferred transaction
    /// not begun yet, the connection is outside any transaction. Fails only for a deferred
    /// transaction that has ended ([`StoreError::TransactionEnded`]).
    pub fn connection(&mut self) -> Result<TransactionConnection<'_>, StoreError> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(TransactionConnection::Postgres(tx)),
            TxInner::Deferred { conn, .. } => Ok(TransactionConnection::Postgres(conn)),
            TxInner::Ended | TxInner::Failed => Err(StoreError::TransactionEnded),
            TxInner::Sqlite { tx, .. } => Ok(TransactionConnection::Sqlite(tx)),
        }
    }

    /// Whether this is a deferred transaction that has not begun yet
    /// ([`EventStore::begin_deferred`]): nothing written.
    pub fn is_deferred(&self) -> bool {
        matches!(self.inner, TxInner::Deferred { .. })
    }

    /// Begins a deferred transaction that has not begun yet, holding the streams it read held
    /// ([`StoreTransaction::read_streams_held`]): [`StoreError::HeldStreamMoved`] (and nothing
    /// written, the transaction unusable) if one moved since it was read. Every write of the
    /// store's calls it first; a caller that writes through [`StoreTransaction::connection`]
    /// calls it before. Any other transaction is begun already.
    pub async fn begin_writes(&mut self) -> Result<(), StoreError> {
        match &self.inner {
            TxInner::Deferred { .. } => {}
            TxInner::Ended | TxInner::Failed => return Err(StoreError::TransactionEnded),
            TxInner::Postgres(_) | TxInner::Sqlite { .. } => return Ok(()),
        }
        let TxInner::Deferred { conn, held } = std::mem::replace(&mut self.inner, TxInner::Failed)
        else {
            return Err(StoreError::TransactionEnded);
        };
        let mut tx = sqlx::Transaction::begin(conn, None).await?;
        if !held.hold(&mut tx).await? {
            return Err(StoreError::HeldStreamMoved);
        }
        self.inner = TxInner::Postgres(tx);
        Ok(())
    }

    /// Commits; then wakes this process's subscriptions if anything was appended. A deferred
    /// transaction not begun has nothing to commit; one that ended with its write, committed
    /// it then; one whose begin, hold or write failed answers [`StoreError::TransactionEnded`].
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::Deferred { .. } | TxInner::Ended => {}
            // Its begin, hold or write failed: committing would drop that failure silently.
            TxInner::Failed => return Err(StoreError::TransactionEnded),
            TxInner::Sqlite { tx, _writer } => tx.commit().await?,
        }
        if self.appended {
            self.store.notify_appended();
        }
        Ok(())
    }

    /// Moves the checkpoints of `moves` (each like [`StoreTransaction::advance_checkpoint`]) and
    /// commits: true once committed; false if a checkpoint was no longer at its `from` (another
    /// runner of the same subscriber moved it), and then the transaction is rolled back.
    ///
    /// On PostgreSQL, when every checkpoint is stored already, the moves and the `COMMIT` go in
    /// one message (`lifeline_advance_checkpoints`, migration 16): a subscription's transaction
    /// holds an id from its first write, and with it every gap-free reader of the log, and it
    /// now ends without waiting for this client's turn to send `COMMIT`. The message ends with
    /// a `BEGIN`, so that the sqlx transaction it runs in stays open until its own (empty)
    /// commit, which holds nothing back. As with [`StoreTransaction::commit`], an error does
    /// not say that nothing was committed: a connection lost after the message, or that empty
    /// commit failing, answers an error for a batch that did commit (its rows and checkpoints
    /// together, so a caller that reloads its checkpoint resumes right either way).
    pub async fn commit_advancing(
        mut self,
        moves: &[CheckpointMove<'_>],
    ) -> Result<bool, StoreError> {
        let all_stored = moves.iter().all(|one| one.from != LogCursor::START);
        let message = match &self.inner {
            TxInner::Postgres(_) if all_stored => postgres::advance_and_commit_message(moves),
            _ => None,
        };
        if let (Some(message), TxInner::Postgres(tx)) = (message, &mut self.inner) {
            return match sqlx::raw_sql(sqlx::AssertSqlSafe(message))
                .execute(&mut **tx)
                .await
            {
                Ok(_) => {
                    self.commit().await?;
                    Ok(true)
                }
                Err(error) if postgres::is_checkpoint_moved(&error) => {
                    self.rollback().await?;
                    Ok(false)
                }
                Err(error) => Err(error.into()),
            };
        }
        for one in moves {
            if !self
                .advance_checkpoint(one.subscriber, one.from, one.to)
                .await?
            {
                self.rollback().await?;
                return Ok(false);
            }
        }
        self.commit().await?;
        Ok(true)
    }

    /// Rolls back everything this transaction did. A deferred transaction whose write was its
    /// own transaction has committed it: [`StoreError::TransactionEnded`].
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Postgres(tx) => tx.rollback().await?,
            TxInner::Deferred { .. } | TxInner::Failed => {}
            // Its write committed on its own: nothing to roll back.
            TxInner::Ended => return Err(StoreError::TransactionEnded),
            TxInner::Sqlite { tx, _writer } => tx.rollback().await?,
        }
        Ok(())
    }

    fn connection_for_append(&mut self) -> Result<TxConnection<'_>, StoreError> {
        Ok(match self.connection()? {
            TransactionConnection::Postgres(conn) => TxConnection::Postgres(conn),
            TransactionConnection::Sqlite(conn) => TxConnection::Sqlite(conn),
        })
    }
}

/// The fast path (`batch`) for `group` inside `tx` (in a savepoint of its own unless the group
/// only creates streams): each append's outcome if the group stored it, `None` for one it left
/// to the careful path. Nothing stays of a group that stored nothing.
async fn append_fast(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    group: &[batch::GroupAppend<'_>],
) -> Result<Vec<Option<AppendOutcome>>, StoreError> {
    Ok(append_fast_with_new_tasks(tx, group, None).await?.0)
}

/// [`append_fast`], which also inserts `tasks` (new tasks' inbox rows) in the group's writing
/// statement when the group creates streams only and that statement stores all of it; true if
/// it did (`batch::append_group_with_new_tasks`).
async fn append_fast_with_new_tasks(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    group: &[batch::GroupAppend<'_>],
    tasks: Option<NewTaskRows>,
) -> Result<(Vec<Option<AppendOutcome>>, bool), StoreError> {
    if batch::refuses_without_raising(group) {
        // Creating streams only: a refusal leaves nothing written and `tx` usable, so no
        // savepoint (two round trips) is needed. Any other error fails the transaction, as it
        // would through a savepoint: the caller rolls it back.
        return match batch::append_group_with_new_tasks(tx, group, batch::Refusal::Answer, tasks)
            .await
        {
            Ok((answers, tasks_written)) => Ok((stored_outcomes(answers), tasks_written)),
            Err(batch::FastError::Careful) => Ok((vec![None; group.len()], false)),
            Err(batch::FastError::Store(error)) => Err(error),
        };
    }
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    let answers = match batch::append_group_on(&mut savepoint, group, batch::Refusal::Raise).await {
        Ok(answers) => answers,
        Err(batch::FastError::Careful) => {
            savepoint.rollback().await?;
            return Ok((vec![None; group.len()], false));
        }
        Err(batch::FastError::Store(error)) => {
            savepoint.rollback().await?;
            return Err(error);
        }
    };
    let stored = stored_outcomes(answers);
    if stored.iter().any(Option::is_some) {
        savepoint.commit().await?;
    } else {
        savepoint.rollback().await?;
    }
    Ok((stored, false))
}

/// How many times [`StoreTransaction::append_many`] looks up what a refused group had stored
/// already and groups the rest again.
const REGROUP_ATTEMPTS: usize = 2;

/// What one [`regroup`] did.
struct Regrouped {
    /// The rest went grouped and stored something.
    appended: bool,
    /// Worth another round: the rest was refused again (another transaction may have stored
    /// some of it since the look-up, which the next look-up finds).
    again: bool,
}

/// After a group was refused (`stored`: what it stored, `None` for an append left): answers
/// the appends left whose every event is already stored in their stream, in order (a
/// redelivery), and appends the others grouped again when there are two or more, filling in
/// `stored`. Does nothing when none of the appends left is found stored (the refusal is a
/// conflict, which the careful path answers).
async fn regroup(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    group: &[batch::GroupAppend<'_>],
    stored: &mut [Option<AppendOutcome>],
) -> Result<Regrouped, StoreError> {
    let done = Regrouped {
        appended: false,
        again: false,
    };
    let left: Vec<usize> = (0..group.len())
        .filter(|&index| stored[index].is_none())
        .collect();
    if left.len() < 2 {
        return Ok(done);
    }
    let ids: Vec<Uuid> = left
        .iter()
        .flat_map(|&index| group[index].events.iter().map(|event| event.event.event_id))
        .collect();
    let found = postgres::lookup_event_ids(tx, &ids).await?;
    if found.is_empty() {
        return Ok(done);
    }
    let mut by_id: HashMap<Uuid, append::StoredRef> = found
        .into_iter()
        .map(|stored_ref| (stored_ref.event_id, stored_ref))
        .collect();
    let mut rest = Vec::new();
    for index in left {
        let append = &group[index];
        let event_ids: Vec<Uuid> = append
            .events
            .iter()
            .map(|event| event.event.event_id)
            .collect();
        let refs: Vec<append::StoredRef> = event_ids
            .iter()
            .filter_map(|event_id| by_id.remove(event_id))
            .collect();
        if refs.is_empty() {
            rest.push(index);
        } else if refs.len() == event_ids.len() {
            // Stored whole, in this stream and in order: a re-send. Anything else (stored in
            // part, or elsewhere) is the careful path's to answer.
            if let Ok(outcome) = append::classify_stored(append.stream, &event_ids, refs) {
                stored[index] = Some(outcome);
            }
        }
    }
    if rest.len() < 2 {
        return Ok(done);
    }
    let subgroup: Vec<batch::GroupAppend<'_>> = rest.iter().map(|&index| group[index]).collect();
    let answers = append_fast(tx, &subgroup).await?;
    let appended = answers.iter().any(Option::is_some);
    for (index, answer) in rest.into_iter().zip(answers) {
        stored[index] = answer;
    }
    Ok(Regrouped {
        appended,
        again: !appended,
    })
}

/// Each append's outcome if the group stored it, `None` for one left to the careful path.
fn stored_outcomes(answers: Vec<batch::Answer>) -> Vec<Option<AppendOutcome>> {
    answers
        .into_iter()
        .map(|answer| match answer {
            batch::Answer::Stored(outcome, _) => Some(outcome),
            batch::Answer::Careful => None,
        })
        .collect()
}

/// Releases the savepoint of an append that stored (or found) its batch, rolls it back
/// otherwise. `None`: the append lost an idempotency race and the caller must look the ids up.
async fn finish_savepoint<DB: sqlx::Database>(
    savepoint: sqlx::Transaction<'_, DB>,
    result: Result<AppendOutcome, TxAppendError>,
) -> Result<Option<AppendOutcome>, AppendError> {
    match result {
        Ok(outcome) if !outcome.already_stored => {
            savepoint.commit().await?;
            Ok(Some(outcome))
        }
        Ok(outcome) => {
            savepoint.rollback().await?;
            Ok(Some(outcome))
        }
        Err(TxAppendError::Append(error)) => {
            savepoint.rollback().await?;
            Err(error)
        }
        Err(TxAppendError::DuplicateEventId) => {
            savepoint.rollback().await?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_url_schemes_are_refused() {
        let error = EventStore::connect("mysql://localhost/x")
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::UnsupportedUrl { scheme } if scheme == "mysql"));
    }

    /// A database before `migrate` has every migration pending, after it none; looking does
    /// not create the migrations table.
    #[tokio::test]
    async fn pending_migrations_are_read_without_migrating() {
        let store = EventStore::connect("sqlite::memory:").await.unwrap();
        let pending = store.pending_migrations().await.unwrap();
        assert_eq!(pending.len(), store.migrations_total());
        assert_eq!(
            pending.first().map(|(version, _)| *version),
            SQLITE_MIGRATOR
                .iter()
                .next()
                .map(|migration| migration.version)
        );
        assert_eq!(store.pending_migrations().await.unwrap(), pending);
        store.migrate().await.unwrap();
        assert!(store.pending_migrations().await.unwrap().is_empty());
        assert!(store.unknown_migrations().await.unwrap().is_empty());
        // A migration of a newer version, applied: unknown to this one.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (29990101000001, 'from the future', true, x'00', 0)",
        )
        .execute(store.sqlite_pool().unwrap())
        .await
        .unwrap();
        assert_eq!(
            store.unknown_migrations().await.unwrap(),
            [29990101000001_i64]
        );
        store.close().await;
    }

    /// `sqlite::memory:` and `mode=memory` are databases in memory: one connection that is never
    /// retired (the database goes with it), and a lease that is the process's own, with no lease
    /// file in the working directory. Until 2026-12-07 `sqlite::memory:` (which sqlx names
    /// `file:sqlx-in-memory-<n>`) got eight connections and a lease file, `mode=memory` was taken
    /// for a file, and the one connection of either was closed after 10 idle minutes.
    #[tokio::test]
    async fn an_in_memory_sqlite_store_is_known_as_one() {
        for (url, in_memory) in [
            ("sqlite::memory:", true),
            ("sqlite:lifeline-memory-test?mode=memory", true),
            ("sqlite:lifeline-data/lifeline.sqlite", false),
            ("sqlite:file:notes.sqlite", false),
        ] {
            let options: SqliteConnectOptions = url.parse().unwrap();
            assert_eq!(sqlite_in_memory(&options), in_memory, "{url}");
        }
        assert!(sqlite_in_memory(
            &SqliteConnectOptions::new().filename(":memory:")
        ));

        for url in ["sqlite::memory:", "sqlite:lifeline-memory-test?mode=memory"] {
            let store = EventStore::connect(url).await.unwrap();
            store.migrate().await.unwrap();
            let pool = store.sqlite_pool().unwrap();
            assert_eq!(pool.options().get_max_connections(), 1, "{url}");
            assert_eq!(pool.options().get_min_connections(), 1, "{url}");
            assert_eq!(pool.options().get_idle_timeout(), None, "{url}");
            assert_eq!(pool.options().get_max_lifetime(), None, "{url}");
            let lease = store.try_lease("relay").await.unwrap();
            assert!(lease.is_some());
            let filename = pool.connect_options().get_filename().to_owned();
            for stray in [
                format!("{}.lease-relay", filename.display()),
                filename.display().to_string(),
            ] {
                let stray = std::env::current_dir().unwrap().join(stray);
                assert!(!stray.exists(), "{url}: {}", stray.display());
            }
            store.close().await;
        }
    }
}
