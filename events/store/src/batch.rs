//! The fast path of appends on PostgreSQL: a group of appends (a lone one, or many gathered by
//! group commit) written by one statement.
//!
//! The careful path (`append::append_in_tx`) takes about seven round trips per append. Here a
//! group takes one statement when every append creates a new stream (`NoStream`) or expects a
//! version whose last hash this process has read ([`KnownHashes`]), run on its own (autocommit:
//! the statement is the transaction); otherwise `BEGIN`, one statement that locks the group's
//! existing streams (in stream-id order, so two groups cannot deadlock), the writing statement,
//! `COMMIT`. The event hashes are chained here, in Rust, from the locked streams' last hashes
//! (or the known ones, which the writing statement checks: migration 11; zeros for a new
//! stream).
//!
//! The writing statement inserts the new streams (`ON CONFLICT DO NOTHING`), moves the locked
//! ones, inserts every event (`ON CONFLICT (event_id) DO NOTHING`), and ends in
//! `lifeline_grouped_append_check`, which raises unless every planned row was written: then the
//! statement stores nothing. A group that creates streams only calls the function
//! `lifeline_append_new_streams` (migration 7) instead, the same statement without moved
//! streams, planned once per connection rather than once per group; inside a caller's
//! transaction it calls `lifeline_try_append_new_streams` (migration 8), the same statement in
//! an exception block that answers a refusal instead of raising it, so that it needs no
//! savepoint ([`Refusal`]). Nothing is ever half-written, and nothing is decided here that the
//! careful path would decide differently:
//! - an append this path cannot settle on what it saw (its stream is not where it expects: a
//!   conflict or an idempotent re-send, which the event id decides; an event id seen twice in
//!   the group) is [`Answer::Careful`], and is run on the careful path after the group;
//! - a group the database refused as planned (someone created one of its streams or stored one
//!   of its event ids meanwhile) is [`FastError::Careful`]: nothing of it is stored, and every
//!   append of it goes the careful way.
//!
//! A policy's group may carry its new tasks' inbox rows
//! (`StoreTransaction::append_many_with_new_tasks`, `StoreTransaction::append_whole_with_new_tasks`):
//! when the group creates streams only and its statement is to store every append, the rows
//! are inserted by the same statement ([`append_group_with_new_tasks`],
//! [`append_group_whole`]), one round trip instead of two.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};
use lifeline_model::integrity::{canonical_json, event_hash_of_json, EventHashInput, Hash32};
use sqlx::{Acquire, AssertSqlSafe, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::append::{AppendOutcome, EncodedEvent};
use crate::error::StoreError;
use crate::postgres;
use crate::projections::NewTaskRows;

/// The SQLSTATE `lifeline_grouped_append_check` raises (migration 4).
const CHECK_FAILED: &str = "LLG01";

/// One append of a group.
#[derive(Clone, Copy)]
pub(crate) struct GroupAppend<'a> {
    pub(crate) stream: &'a StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: &'a [EncodedEvent<'a>],
    /// The stream's last hash at the `Exact` version expected, as this process read it
    /// ([`KnownHashes::at`]): the stream need not be locked, the writing statement checks it.
    pub(crate) known_hash: Option<Hash32>,
}

/// How many streams one generation of [`KnownHashes`] holds: it remembers the last
/// `KNOWN_STREAMS` to `2 * KNOWN_STREAMS` streams read.
const KNOWN_STREAMS: usize = 4096;

/// The version and last hash of streams this process read last (on PostgreSQL). An event never
/// changes, so the hash of a stream's event at version `v` is the stream's last hash as long as
/// the stream is at `v`: an append expecting `v` may chain from it without locking the stream,
/// and the writing statement moves the stream only if it is still at `v` with that hash
/// (migration 11). A stream that moved meanwhile makes the statement store nothing, and the
/// append goes the careful way (a conflict, or a re-sent append), as after a lock.
///
/// Two generations: a stream read goes into the current one; when that is full it becomes the
/// previous one (the one before is forgotten), and a stream found in the previous one moves
/// back. So the streams read last are never all forgotten at once (until 2026-12-07 the one
/// map was emptied when full, and an agency's claim or completion of a task read just before
/// then went the locked way).
#[derive(Debug, Default)]
pub(crate) struct KnownHashes {
    streams: std::sync::Mutex<Generations>,
    /// Appends written by a known hash, without a lock.
    written: AtomicU64,
    /// Appends whose known hash the writing statement refused (their stream had moved).
    refused: AtomicU64,
}

impl KnownHashes {
    /// Counts what became of the group's appends that went by a known hash (none if the group
    /// took the lock), and moves each stream such an append stored to the version and last hash
    /// it left: the next append to it (an agency's completion after its claim, with no read
    /// between) goes by a known hash too. A stream this process has not read is not added.
    pub(crate) fn count(&self, group: &[GroupAppend<'_>], result: &Result<Vec<Answer>, FastError>) {
        if let Ok(answers) = result {
            for (append, answer) in group.iter().zip(answers) {
                if let (Some(_), Answer::Stored(outcome, last_hash)) = (append.known_hash, answer) {
                    if !outcome.already_stored {
                        self.advance(append.stream, outcome.stream_version, *last_hash);
                    }
                }
            }
        }
        if group.iter().any(needs_lock) {
            return;
        }
        let known = |append: &&GroupAppend<'_>| append.known_hash.is_some();
        let (counter, count) = match result {
            Ok(answers) => (
                &self.written,
                group
                    .iter()
                    .zip(answers)
                    .filter(|(append, answer)| {
                        known(append) && matches!(answer, Answer::Stored(..))
                    })
                    .count(),
            ),
            Err(FastError::Careful) => (&self.refused, group.iter().filter(known).count()),
            Err(FastError::Store(_)) => return,
        };
        counter.fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (written, refused) since the store was opened.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Moves a stream this process knows to `version`, whose event has hash `hash` (an append
    /// it made); a stream it does not know stays unknown.
    fn advance(&self, stream: &StreamId, version: StreamVersion, hash: Hash32) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        if let Some(entry) = streams.get_mut(stream.as_str()) {
            if entry.0 < version.0 {
                *entry = (version.0, hash);
            }
        }
    }

    /// Remembers that `stream` was read at `version`, whose event has hash `hash`.
    pub(crate) fn remember(&self, stream: &StreamId, version: StreamVersion, hash: Hash32) {
        let Ok(mut streams) = self.streams.lock() else {
            return;
        };
        let known = streams.take(stream.as_str());
        let entry = match known {
            Some(entry) if entry.0 >= version.0 => entry,
            _ => (version.0, hash),
        };
        streams.insert(stream.as_str().to_owned(), entry);
    }

    /// The last hash of `stream` at the version `expected` names, if this process read it there.
    pub(crate) fn at(&self, stream: &StreamId, expected: ExpectedVersion) -> Option<Hash32> {
        let ExpectedVersion::Exact(StreamVersion(version)) = expected else {
            return None;
        };
        if version <= 0 {
            return None;
        }
        let streams = self.streams.lock().ok()?;
        streams
            .get(stream.as_str())
            .filter(|(read, _)| *read == version)
            .map(|(_, hash)| *hash)
    }
}

/// The two generations of [`KnownHashes`]: stream id -> (version read, its event's hash).
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<String, (i64, Hash32)>,
    previous: HashMap<String, (i64, Hash32)>,
}

impl Generations {
    fn get(&self, stream: &str) -> Option<&(i64, Hash32)> {
        self.current
            .get(stream)
            .or_else(|| self.previous.get(stream))
    }

    fn get_mut(&mut self, stream: &str) -> Option<&mut (i64, Hash32)> {
        match self.current.get_mut(stream) {
            Some(entry) => Some(entry),
            None => self.previous.get_mut(stream),
        }
    }

    /// Takes `stream` out of whichever generation holds it.
    fn take(&mut self, stream: &str) -> Option<(i64, Hash32)> {
        self.current
            .remove(stream)
            .or_else(|| self.previous.remove(stream))
    }

    /// Puts `stream` (held by neither generation) into the current one, which becomes the
    /// previous one first if full.
    fn insert(&mut self, stream: String, entry: (i64, Hash32)) {
        if self.current.len() >= KNOWN_STREAMS {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(stream, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(index: usize) -> StreamId {
        StreamId::parse(format!("task-{index}")).unwrap()
    }

    fn hash(index: usize) -> Hash32 {
        let mut bytes = [0_u8; 32];
        bytes[..8].copy_from_slice(&(index as u64).to_le_bytes());
        Hash32(bytes)
    }

    fn known(hashes: &KnownHashes, index: usize, version: i64) -> Option<Hash32> {
        hashes.at(
            &stream(index),
            ExpectedVersion::Exact(StreamVersion(version)),
        )
    }

    #[test]
    fn the_streams_read_last_are_kept_when_a_generation_fills() {
        let hashes = KnownHashes::default();
        for index in 0..KNOWN_STREAMS {
            hashes.remember(&stream(index), StreamVersion(1), hash(index));
        }
        // The current generation is full: the next stream starts a new one.
        hashes.remember(
            &stream(KNOWN_STREAMS),
            StreamVersion(1),
            hash(KNOWN_STREAMS),
        );
        assert_eq!(
            known(&hashes, KNOWN_STREAMS - 1, 1),
            Some(hash(KNOWN_STREAMS - 1))
        );
        assert_eq!(known(&hashes, KNOWN_STREAMS, 1), Some(hash(KNOWN_STREAMS)));
        // A stream in the previous generation moves on with an append, and a read brings it
        // back into the current one at its new version.
        hashes.advance(&stream(5), StreamVersion(2), hash(50));
        assert_eq!(known(&hashes, 5, 2), Some(hash(50)));
        assert_eq!(known(&hashes, 5, 1), None);
        hashes.remember(&stream(5), StreamVersion(2), hash(50));
        // A read of an older version does not move a stream back.
        hashes.remember(&stream(5), StreamVersion(1), hash(5));
        assert_eq!(known(&hashes, 5, 2), Some(hash(50)));
        // Another generation later, what was not read again is forgotten; what was, is not.
        for index in KNOWN_STREAMS + 1..2 * KNOWN_STREAMS + 1 {
            hashes.remember(&stream(index), StreamVersion(1), hash(index));
        }
        assert_eq!(known(&hashes, 1, 1), None);
        assert_eq!(known(&hashes, 5, 2), Some(hash(50)));
        assert_eq!(
            known(&hashes, 2 * KNOWN_STREAMS, 1),
            Some(hash(2 * KNOWN_STREAMS))
        );
        let streams = hashes.streams.lock().unwrap();
        assert!(streams.current.len() + streams.previous.len() <= 2 * KNOWN_STREAMS);
    }
}

/// What became of one append of a group that committed.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Stored, or found stored; with the stream's last hash after it (as planned).
    Stored(AppendOutcome, Hash32),
    /// Not written: run it on the careful path.
    Careful,
}

/// Why a group stored nothing.
#[derive(Debug)]
pub(crate) enum FastError {
    /// The database was not as planned: run every append of the group on the careful path.
    Careful,
    /// A fault. Before the commit was sent nothing was stored; [`StoreError::CommitFailed`]
    /// means the commit's outcome is unknown (re-sending the same event ids is safe).
    Store(StoreError),
}

impl From<sqlx::Error> for FastError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// What [`plan`] made of one append.
enum Planned {
    Careful,
    /// Its rows are in the writing statement; the stream's version and last hash after it.
    Write(StreamVersion, Hash32),
}

/// A stream as the group found it and leaves it.
struct StreamState {
    /// The last hash the writing statement must find (a known, not a locked, stream).
    checked_hash: Option<Hash32>,
    /// The version it had when the group locked it; `None` if it did not exist (or, without
    /// the lock, is assumed not to exist: the insert then checks).
    found: Option<i64>,
    version: i64,
    last_hash: Hash32,
}

/// The rows the writing statement binds, column by column.
#[derive(Default)]
struct Rows {
    new_ids: Vec<String>,
    new_versions: Vec<i64>,
    new_hashes: Vec<Vec<u8>>,
    moved_ids: Vec<String>,
    moved_from: Vec<i64>,
    moved_versions: Vec<i64>,
    moved_hashes: Vec<Vec<u8>>,
    moved_prev_hashes: Vec<Option<Vec<u8>>>,
    stream_ids: Vec<String>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    schema_versions: Vec<i32>,
    payloads: Vec<postgres::JsonText>,
    metadata: Vec<postgres::JsonText>,
    recorded_at: Vec<DateTime<Utc>>,
    hashes: Vec<Vec<u8>>,
}

/// Appends a group (see the module docs) on a connection of the pool. The answers are in the
/// group's order.
pub(crate) async fn append_group(
    pool: &PgPool,
    group: &[GroupAppend<'_>],
) -> Result<Vec<Answer>, FastError> {
    let mut conn = pool.acquire().await?;
    append_group_with(&mut conn, group).await
}

/// Appends a group on `conn`, which must not be in a transaction: one statement on its own
/// when no append needs a lock, else a transaction of its own.
pub(crate) async fn append_group_with(
    conn: &mut PgConnection,
    group: &[GroupAppend<'_>],
) -> Result<Vec<Answer>, FastError> {
    if !group.iter().any(needs_lock) {
        // One statement, its own transaction.
        return append_group_on(conn, group, Refusal::Raise).await;
    }
    let mut tx = conn.begin().await?;
    let answers = append_group_on(&mut tx, group, Refusal::Raise).await?;
    if answers
        .iter()
        .all(|answer| matches!(answer, Answer::Careful))
    {
        tx.rollback().await?;
        return Ok(answers);
    }
    tx.commit()
        .await
        .map_err(|error| FastError::Store(StoreError::CommitFailed(error.to_string())))?;
    Ok(answers)
}

/// How the writing statement of a group that only creates streams meets a log that is not as
/// planned (it stores nothing either way, and the group is answered [`FastError::Careful`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The statement raises: right where the statement is its own transaction, or runs in a
    /// savepoint. `lifeline_append_new_streams` (migration 7).
    Raise,
    /// The server undoes the statement in a PL/pgSQL exception block and answers the refusal,
    /// leaving the caller's transaction usable: no savepoint needed around it, at the price of
    /// the block's subtransaction. `lifeline_try_append_new_streams` (migration 8).
    Answer,
}

/// Whether [`append_group_on`] with [`Refusal::Answer`] runs the group without raising when
/// the log is not as planned: true when every append creates its stream. Inside a transaction
/// such a group needs no savepoint.
pub(crate) fn refuses_without_raising(group: &[GroupAppend<'_>]) -> bool {
    group.iter().all(creates_stream)
}

/// Whether the append expects its stream not to exist.
fn creates_stream(append: &GroupAppend<'_>) -> bool {
    matches!(
        append.expected,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion(0))
    )
}

/// Whether the append must see its stream first: anything but "create it", unless its last
/// hash is known.
fn needs_lock(append: &GroupAppend<'_>) -> bool {
    !creates_stream(append) && append.known_hash.is_none()
}

/// Appends a group on `conn`: inside the caller's transaction (which must roll back, at least
/// to a savepoint, after [`FastError::Careful`]), or on its own when no append needs a lock.
pub(crate) async fn append_group_on(
    conn: &mut PgConnection,
    group: &[GroupAppend<'_>],
    refusal: Refusal,
) -> Result<Vec<Answer>, FastError> {
    Ok(append_group_with_new_tasks(conn, group, refusal, None)
        .await?
        .0)
}

/// [`append_group_on`], which also inserts `tasks` (new tasks' inbox rows, as
/// `projections::insert_new_tasks` does) in its writing statement when that statement stores
/// the whole group and answers a refusal (creating streams only, [`Refusal::Answer`]); true if
/// it did. Otherwise the rows are not written (the caller writes those of the appends it
/// counts as its own).
pub(crate) async fn append_group_with_new_tasks(
    conn: &mut PgConnection,
    group: &[GroupAppend<'_>],
    refusal: Refusal,
    tasks: Option<NewTaskRows>,
) -> Result<(Vec<Answer>, bool), FastError> {
    // With a lock, every stream of the group is seen as it is; without, the known ones are
    // taken as read, and checked by the writing statement.
    let (locked, known) = if group.iter().any(needs_lock) {
        let mut stream_ids: Vec<&str> = group.iter().map(|append| append.stream.as_str()).collect();
        stream_ids.sort_unstable();
        stream_ids.dedup();
        (lock_streams(conn, &stream_ids).await?, HashMap::new())
    } else {
        let known = group
            .iter()
            .filter_map(|append| match (append.expected, append.known_hash) {
                (ExpectedVersion::Exact(StreamVersion(version)), Some(hash)) => {
                    Some((append.stream.as_str(), (version, hash)))
                }
                _ => None,
            })
            .collect();
        (HashMap::new(), known)
    };
    let (answers, rows) = plan(group, &locked, &known)?;
    if rows.event_ids.is_empty() {
        return Ok((finish(group, answers, &HashMap::new())?, false));
    }
    // The rows go with the statement only if it is to store every append of the group.
    let tasks = tasks.filter(|_| stores_every_append(group, &answers));
    let (positions, tasks_written) = write(conn, &rows, refusal, tasks, None).await?;
    Ok((finish(group, answers, &positions)?, tasks_written))
}

/// A group that creates streams only, stored whole or not at all (inside the caller's
/// transaction, which stays usable either way), with `tasks` (new tasks' inbox rows) inserted by
/// the same statement: every append's outcome, or `None` when the group is not stored whole
/// (an append the plan leaves to the careful path, a stream or event id stored meanwhile) and
/// nothing of it was written.
///
/// With `held` (streams read plainly by a deferred transaction, and the versions read), the
/// statement first locks those streams `FOR SHARE` and stores nothing (`None`) if one of them
/// moved since (migration 15): run outside a transaction, it is then the deferred transaction's
/// one write and its commit.
pub(crate) async fn append_group_whole(
    conn: &mut PgConnection,
    group: &[GroupAppend<'_>],
    tasks: Option<NewTaskRows>,
    held: Option<&HeldStreams>,
) -> Result<Option<Vec<AppendOutcome>>, StoreError> {
    if group.is_empty() || !refuses_without_raising(group) {
        return Ok(None);
    }
    let Some((answers, rows)) = settled(plan(group, &HashMap::new(), &HashMap::new()))? else {
        return Ok(None);
    };
    if rows.event_ids.is_empty() || !stores_every_append(group, &answers) {
        return Ok(None);
    }
    let Some((positions, _)) = settled(write(conn, &rows, Refusal::Answer, tasks, held).await)?
    else {
        return Ok(None);
    };
    let stored_in_part = || StoreError::Corrupt {
        global_position: 0,
        reason: "a whole group was stored in part".to_owned(),
    };
    settled(finish(group, answers, &positions))?
        .ok_or_else(stored_in_part)?
        .into_iter()
        .map(|answer| match answer {
            Answer::Stored(outcome, _) => Ok(outcome),
            Answer::Careful => Err(stored_in_part()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A fast-path step's result with [`FastError::Careful`] as `None` (nothing stored).
fn settled<T>(result: Result<T, FastError>) -> Result<Option<T>, StoreError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(FastError::Careful) => Ok(None),
        Err(FastError::Store(error)) => Err(error),
    }
}

/// Whether the writing statement of `answers` (the plan of `group`) stores every append of
/// the group: each planned to be written, each with events (an append of none is answered
/// apart from the statement).
fn stores_every_append(group: &[GroupAppend<'_>], answers: &[Planned]) -> bool {
    group
        .iter()
        .zip(answers)
        .all(|(append, answer)| matches!(answer, Planned::Write(..)) && !append.events.is_empty())
}

/// Locks the group's existing streams, in stream-id order; answers their version and last hash.
async fn lock_streams(
    conn: &mut PgConnection,
    stream_ids: &[&str],
) -> Result<HashMap<String, (i64, Option<Hash32>)>, FastError> {
    let rows = sqlx::query(
        "SELECT stream_id, version, last_hash FROM streams WHERE stream_id = ANY($1) \
         ORDER BY stream_id FOR UPDATE",
    )
    .bind(stream_ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let stream_id: String = row.try_get("stream_id")?;
            let version: i64 = row.try_get("version")?;
            let last_hash =
                postgres::decode_last_hash(row.try_get("last_hash")?).map_err(FastError::Store)?;
            Ok((stream_id, (version, last_hash)))
        })
        .collect()
}

/// Decides each append against the streams as found (and as the group's earlier appends leave
/// them), chains the hashes, and lays out the rows to write.
fn plan<'g>(
    group: &'g [GroupAppend<'g>],
    locked: &HashMap<String, (i64, Option<Hash32>)>,
    known: &HashMap<&'g str, (i64, Hash32)>,
) -> Result<(Vec<Planned>, Rows), FastError> {
    let mut streams: HashMap<&str, StreamState> = HashMap::new();
    let mut seen_ids: HashSet<Uuid> = HashSet::new();
    let mut answers = Vec::with_capacity(group.len());
    let mut rows = Rows::default();
    let mut order: Vec<&str> = Vec::new();
    for append in group {
        let key = append.stream.as_str();
        let state = streams.entry(key).or_insert_with(|| {
            order.push(key);
            if let Some((version, last_hash)) = known.get(key) {
                return StreamState {
                    checked_hash: Some(*last_hash),
                    found: Some(*version),
                    version: *version,
                    last_hash: *last_hash,
                };
            }
            match locked.get(key) {
                Some((version, last_hash)) => StreamState {
                    checked_hash: None,
                    found: Some(*version),
                    version: *version,
                    // A stream older than the integrity migration chains from zeros.
                    last_hash: last_hash.unwrap_or(Hash32::ZERO),
                },
                None => StreamState {
                    checked_hash: None,
                    found: None,
                    version: 0,
                    last_hash: Hash32::ZERO,
                },
            }
        });
        let exists = state.found.is_some() || state.version > 0;
        let fits = match append.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion(0)) => !exists,
            ExpectedVersion::Exact(StreamVersion(version)) => exists && state.version == version,
        };
        let fresh_ids = append
            .events
            .iter()
            .all(|event| !seen_ids.contains(&event.event.event_id));
        if !fits || !fresh_ids {
            answers.push(Planned::Careful);
            continue;
        }
        for event in append.events {
            seen_ids.insert(event.event.event_id);
            let schema_version = i32::try_from(event.event.schema_version).map_err(|_| {
                FastError::Store(StoreError::Corrupt {
                    global_position: 0,
                    reason: format!(
                        "schema version {} of event {} does not fit the column",
                        event.event.schema_version, event.event.event_id
                    ),
                })
            })?;
            state.version += 1;
            // One encoding of each for both the hash and the `json` parameter.
            let payload = canonical_json(&event.event.payload);
            let metadata = canonical_json(&event.metadata);
            let hash = event_hash_of_json(
                &EventHashInput {
                    stream_id: key,
                    stream_version: state.version,
                    event_id: event.event.event_id,
                    event_type: &event.event.event_type,
                    schema_version: event.event.schema_version,
                    payload: &event.event.payload,
                    metadata: &event.metadata,
                },
                &payload,
                &metadata,
                &state.last_hash,
            );
            state.last_hash = hash;
            rows.stream_ids.push(key.to_owned());
            rows.versions.push(state.version);
            rows.event_ids.push(event.event.event_id);
            rows.event_types.push(event.event.event_type.clone());
            rows.schema_versions.push(schema_version);
            rows.payloads.push(postgres::JsonText(payload));
            rows.metadata.push(postgres::JsonText(metadata));
            rows.recorded_at.push(event.event.metadata.recorded_at);
            rows.hashes.push(hash.0.to_vec());
        }
        answers.push(Planned::Write(
            StreamVersion(state.version),
            state.last_hash,
        ));
    }
    // Streams moved in stream id order, the order in which a holder locks them
    // (`StoreTransaction::read_streams_held`): a group and a holder never wait for each other
    // both ways.
    order.sort_unstable();
    for key in order {
        let Some(state) = streams.get(key) else {
            continue;
        };
        match state.found {
            Some(from) if state.version != from => {
                rows.moved_ids.push(key.to_owned());
                rows.moved_from.push(from);
                rows.moved_versions.push(state.version);
                rows.moved_hashes.push(state.last_hash.0.to_vec());
                rows.moved_prev_hashes
                    .push(state.checked_hash.map(|hash| hash.0.to_vec()));
            }
            None if state.version > 0 => {
                rows.new_ids.push(key.to_owned());
                rows.new_versions.push(state.version);
                rows.new_hashes.push(state.last_hash.0.to_vec());
            }
            _ => {}
        }
    }
    Ok((answers, rows))
}

/// The writing statement of a group that moves streams: one call of the function of migration
/// 11 (migration 9's, which also checks the last hash of each stream the group did not lock),
/// planned once per connection with a plan that probes `streams` by key whatever its size (see
/// migration 9). Its first twelve parameters are those of `lifeline_append_new_streams`
/// ([`WRITE_NEW_STREAMS_SQL`]). It raises when the log is not as planned.
const WRITE_MOVING_SQL: &str = "SELECT o_ids AS ids, o_positions AS positions \
     FROM lifeline_append_known_streams($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                                        $13, $14, $15, $16, $17)";

/// The writing statement of a group that creates streams only: one call of the function of
/// migration 7, whose statement is planned once per connection (the same statement prepared
/// here was planned anew on every group: see the migration). It raises when the log is not as
/// planned.
const WRITE_NEW_STREAMS_SQL: &str = "SELECT o_ids AS ids, o_positions AS positions \
     FROM lifeline_append_new_streams($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// [`WRITE_NEW_STREAMS_SQL`] through migration 8's function: the same statement, whose refusal
/// is answered (`refused`) instead of raised.
const TRY_WRITE_NEW_STREAMS_SQL: &str =
    "SELECT o_ids AS ids, o_positions AS positions, o_refused AS refused \
     FROM lifeline_try_append_new_streams($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// [`TRY_WRITE_NEW_STREAMS_SQL`] holding streams first (`$13`, `$14`: migration 15).
const TRY_WRITE_NEW_STREAMS_HELD_SQL: &str =
    "SELECT o_ids AS ids, o_positions AS positions, o_refused AS refused \
     FROM lifeline_try_append_new_streams_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14)";

/// [`TRY_WRITE_NEW_STREAMS_SQL`] (or, `held`, [`TRY_WRITE_NEW_STREAMS_HELD_SQL`]) that also
/// inserts new tasks' inbox rows (`tasks`, their arrays from `$first` on) when the append is not
/// refused: one statement instead of two. The function's call is materialized once; the insert
/// reads its answer, so it runs after it, and inserts nothing when it refused (its writes
/// undone).
fn try_write_new_streams_with_tasks_sql(tasks: &NewTaskRows, held: bool, first: usize) -> String {
    let call = if held {
        "lifeline_try_append_new_streams_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14)"
    } else {
        "lifeline_try_append_new_streams($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    };
    format!(
        "WITH appended AS MATERIALIZED (SELECT o_ids, o_positions, o_refused FROM {call}), \
         inbox AS ({}) \
         SELECT o_ids AS ids, o_positions AS positions, o_refused AS refused FROM appended",
        tasks.insert_sql(first, "appended, ", "NOT appended.o_refused")
    )
}

/// Streams a deferred transaction read without a lock, to be held where it writes: each one's
/// id and the version it was read at (0: no events).
#[derive(Debug, Default, Clone)]
pub(crate) struct HeldStreams {
    pub(crate) ids: Vec<String>,
    pub(crate) versions: Vec<i64>,
}

impl HeldStreams {
    /// Notes `stream`, read at `version` (a stream noted twice keeps its first version: the
    /// hold then finds it moved if it did in between).
    pub(crate) fn note(&mut self, stream: &str, version: i64) {
        if !self.ids.iter().any(|id| id == stream) {
            self.ids.push(stream.to_owned());
            self.versions.push(version);
        }
    }

    /// Locks the streams `FOR SHARE` until the transaction `conn` is in ends, and answers
    /// whether each is still at the version noted (`lifeline_hold_streams`, migration 15).
    pub(crate) async fn hold(&self, conn: &mut PgConnection) -> Result<bool, StoreError> {
        if self.ids.is_empty() {
            return Ok(true);
        }
        let held: bool = sqlx::query_scalar("SELECT lifeline_hold_streams($1, $2)")
            .bind(&self.ids)
            .bind(&self.versions)
            .fetch_one(conn)
            .await?;
        Ok(held)
    }
}

/// The writing statement; answers the global position of every event id it stored, and
/// whether it inserted `tasks` (only a statement that answers its refusal takes them). `held`
/// streams are held first (only by a statement that creates streams and answers its refusal:
/// any other is refused, [`FastError::Careful`], before it is sent).
async fn write(
    conn: &mut PgConnection,
    rows: &Rows,
    refusal: Refusal,
    tasks: Option<NewTaskRows>,
    held: Option<&HeldStreams>,
) -> Result<(HashMap<Uuid, GlobalPosition>, bool), FastError> {
    let moves = !rows.moved_ids.is_empty();
    let answers_refusal = !moves && refusal == Refusal::Answer;
    let held = held.filter(|held| !held.ids.is_empty());
    if held.is_some() && !answers_refusal {
        return Err(FastError::Careful);
    }
    let tasks = tasks.filter(|_| answers_refusal);
    let first_task_param = if held.is_some() { 15 } else { 13 };
    let with_tasks = tasks
        .as_ref()
        .map(|tasks| try_write_new_streams_with_tasks_sql(tasks, held.is_some(), first_task_param));
    let sql = if moves {
        WRITE_MOVING_SQL
    } else if let Some(sql) = &with_tasks {
        sql.as_str()
    } else if held.is_some() {
        TRY_WRITE_NEW_STREAMS_HELD_SQL
    } else if answers_refusal {
        TRY_WRITE_NEW_STREAMS_SQL
    } else {
        WRITE_NEW_STREAMS_SQL
    };
    let tasks_written = tasks.is_some();
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(&rows.new_ids)
        .bind(&rows.new_versions)
        .bind(&rows.new_hashes)
        .bind(&rows.stream_ids)
        .bind(&rows.versions)
        .bind(&rows.event_ids)
        .bind(&rows.event_types)
        .bind(&rows.schema_versions)
        .bind(&rows.payloads)
        .bind(&rows.metadata)
        .bind(&rows.recorded_at)
        .bind(&rows.hashes);
    let query = match held {
        Some(held) => query.bind(&held.ids).bind(&held.versions),
        None => query,
    };
    let query = if moves {
        query
            .bind(&rows.moved_ids)
            .bind(&rows.moved_from)
            .bind(&rows.moved_versions)
            .bind(&rows.moved_hashes)
            .bind(&rows.moved_prev_hashes)
    } else if let Some(tasks) = tasks {
        tasks.bind(query)
    } else {
        query
    };
    let row = match query.fetch_one(conn).await {
        Ok(row) => row,
        // A statement that answers its refusal raises nothing for one: an error it raises came
        // from outside the function (the inbox rows' insert), and has failed the transaction.
        Err(error) if !answers_refusal && is_not_as_planned(&error) => {
            return Err(FastError::Careful)
        }
        Err(error) => return Err(error.into()),
    };
    if answers_refusal && row.try_get::<bool, _>("refused")? {
        return Err(FastError::Careful);
    }
    let ids: Vec<Uuid> = row.try_get("ids")?;
    let positions: Vec<i64> = row.try_get("positions")?;
    Ok((
        ids.into_iter()
            .zip(positions.into_iter().map(GlobalPosition))
            .collect(),
        tasks_written,
    ))
}

/// The check refused the group, or a unique key did (a stream's version taken under a stream
/// this group assumed new): nothing was stored.
fn is_not_as_planned(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|database_error| {
        database_error.code().as_deref() == Some(CHECK_FAILED)
            || database_error.is_unique_violation()
    })
}

/// Fills in each stored append's positions.
fn finish(
    group: &[GroupAppend<'_>],
    answers: Vec<Planned>,
    positions: &HashMap<Uuid, GlobalPosition>,
) -> Result<Vec<Answer>, FastError> {
    group
        .iter()
        .zip(answers)
        .map(|(append, answer)| {
            let (stream_version, last_hash) = match answer {
                Planned::Careful => return Ok(Answer::Careful),
                Planned::Write(version, last_hash) => (version, last_hash),
            };
            let position = |event: &EncodedEvent<'_>| {
                positions
                    .get(&event.event.event_id)
                    .copied()
                    .ok_or_else(|| {
                        FastError::Store(StoreError::Corrupt {
                            global_position: 0,
                            reason: format!(
                            "a grouped append committed without answering the position of event {}",
                            event.event.event_id
                        ),
                        })
                    })
            };
            let (Some(first), Some(last)) = (append.events.first(), append.events.last()) else {
                return Ok(Answer::Careful);
            };
            let first_position = position(first)?;
            let last_position = position(last)?;
            Ok(Answer::Stored(
                AppendOutcome {
                    first_position,
                    last_position,
                    stream_version,
                    already_stored: false,
                },
                last_hash,
            ))
        })
        .collect()
}
