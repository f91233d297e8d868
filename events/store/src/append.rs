//! The append algorithm, written once for both backends: idempotency by event id, the expected
//! version check, gap-free stream versions, the per-stream hash chain, all inside a
//! transaction the caller owns.
//!
//! [`append_in_tx`] never commits: [`crate::EventStore::append`] runs it in a transaction of its
//! own, [`crate::StoreTransaction::append`] inside a savepoint of a larger one, and a later group
//! commit can run many of them in one transaction, each keeping its own version check and
//! idempotency.

use std::collections::{HashMap, HashSet};

use lifeline_model::envelope::{
    ExpectedVersion, GlobalPosition, NewEvent, StreamId, StreamVersion,
};
use lifeline_model::integrity::{canonical_json, event_hash_of_json, EventHashInput, Hash32};
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::error::{AppendError, StoreError};
use crate::{postgres, sqlite};

/// What a successful append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The global position of the batch's first event.
    pub first_position: GlobalPosition,
    /// The global position of the batch's last event.
    pub last_position: GlobalPosition,
    /// The stream's version right after the batch: the version of its last event.
    pub stream_version: StreamVersion,
    /// True if every event id was stored already, exactly as this batch: nothing was appended
    /// and the positions are those of the original append.
    pub already_stored: bool,
}

/// A stored event's place, as the idempotency check needs it.
#[derive(Debug, Clone)]
pub(crate) struct StoredRef {
    pub(crate) event_id: Uuid,
    pub(crate) stream_id: StreamId,
    pub(crate) stream_version: StreamVersion,
    pub(crate) global_position: GlobalPosition,
}

/// An event checked and encoded before the transaction writes anything.
pub(crate) struct EncodedEvent<'a> {
    pub(crate) event: &'a NewEvent,
    pub(crate) metadata: serde_json::Value,
}

/// Why inserting one row failed.
pub(crate) enum InsertError {
    /// Another transaction stored this event id first (PostgreSQL waited for it to commit). On
    /// PostgreSQL the transaction is now aborted: roll back (to the savepoint) and look it up.
    DuplicateEventId,
    Store(StoreError),
}

/// Why [`append_in_tx`] stored nothing.
pub(crate) enum TxAppendError {
    /// See [`InsertError::DuplicateEventId`].
    DuplicateEventId,
    Append(AppendError),
}

impl From<StoreError> for TxAppendError {
    fn from(error: StoreError) -> Self {
        Self::Append(AppendError::Store(error))
    }
}

/// A connection inside a transaction, of either backend.
pub(crate) enum TxConnection<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Refuses empty batches and repeated event ids, and encodes metadata, before any I/O.
pub(crate) fn encode_batch(events: &[NewEvent]) -> Result<Vec<EncodedEvent<'_>>, AppendError> {
    if events.is_empty() {
        return Err(AppendError::EmptyBatch);
    }
    let mut seen = HashSet::with_capacity(events.len());
    events
        .iter()
        .map(|event| {
            if !seen.insert(event.event_id) {
                return Err(AppendError::DuplicateEventInBatch(event.event_id));
            }
            let metadata =
                serde_json::to_value(&event.metadata).map_err(|source| StoreError::Encode {
                    event_id: event.event_id,
                    source,
                })?;
            Ok(EncodedEvent { event, metadata })
        })
        .collect()
}

/// An event's payload and metadata as canonical JSON (`integrity::canonical_json`): made once,
/// hashed, and stored as they are.
pub(crate) struct CanonicalTexts {
    pub(crate) payload: String,
    pub(crate) metadata: String,
}

/// Appends `events` to `stream` in the caller's transaction (see the module docs).
pub(crate) async fn append_in_tx(
    conn: &mut TxConnection<'_>,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[EncodedEvent<'_>],
) -> Result<AppendOutcome, TxAppendError> {
    let event_ids: Vec<Uuid> = events.iter().map(|event| event.event.event_id).collect();
    let stored = lookup_event_ids(conn, &event_ids).await?;
    if !stored.is_empty() {
        return classify_stored(stream, &event_ids, stored).map_err(TxAppendError::Append);
    }
    let count = i64::try_from(events.len()).map_err(|_| {
        TxAppendError::Append(AppendError::Store(StoreError::Corrupt {
            global_position: 0,
            reason: format!("a batch of {} events is too large", events.len()),
        }))
    })?;
    // Claiming the version locks the stream's row (PostgreSQL) or runs under the one writer
    // (SQLite), and answers the hash of the stream's last event: the chain is extended under the
    // same lock that serialises the version check, so concurrent appends cannot fork it.
    let claimed = match expected {
        ExpectedVersion::Any => Some(bump_stream(conn, stream, count).await?),
        ExpectedVersion::NoStream | ExpectedVersion::Exact(StreamVersion(0)) => {
            create_stream(conn, stream, count).await?
        }
        ExpectedVersion::Exact(version) => advance_stream(conn, stream, version, count).await?,
    };
    let Some((last_version, last_hash)) = claimed else {
        // A concurrent append of these very event ids may have won the race for the version:
        // the event id decides before the version does.
        let stored = lookup_event_ids(conn, &event_ids).await?;
        if !stored.is_empty() {
            return classify_stored(stream, &event_ids, stored).map_err(TxAppendError::Append);
        }
        let actual = current_version(conn, stream).await?;
        return Err(TxAppendError::Append(AppendError::Conflict {
            stream: stream.clone(),
            expected,
            actual,
        }));
    };
    let first_version = last_version.0 - count + 1;
    // A stream older than the integrity migration has no last hash: its new events chain from
    // zeros, and `verify` reports its unhashed old rows.
    let mut prev_hash = last_hash.unwrap_or(Hash32::ZERO);
    let mut positions = Vec::with_capacity(events.len());
    for (offset, event) in (0_i64..).zip(events) {
        let version = StreamVersion(first_version + offset);
        let texts = CanonicalTexts {
            payload: canonical_json(&event.event.payload),
            metadata: canonical_json(&event.metadata),
        };
        let hash = event_hash_of_json(
            &EventHashInput {
                stream_id: stream.as_str(),
                stream_version: version.0,
                event_id: event.event.event_id,
                event_type: &event.event.event_type,
                schema_version: event.event.schema_version,
                payload: &event.event.payload,
                metadata: &event.metadata,
            },
            &texts.payload,
            &texts.metadata,
            &prev_hash,
        );
        prev_hash = hash;
        let inserted = match conn {
            TxConnection::Postgres(conn) => {
                postgres::insert_event(conn, stream, version, event, texts, &hash).await
            }
            TxConnection::Sqlite(conn) => {
                sqlite::insert_event(conn, stream, version, event, texts, &hash).await
            }
        };
        match inserted {
            Ok(position) => positions.push(position),
            Err(InsertError::DuplicateEventId) => return Err(TxAppendError::DuplicateEventId),
            Err(InsertError::Store(error)) => return Err(error.into()),
        }
    }
    match conn {
        TxConnection::Postgres(conn) => {
            postgres::set_last_hash(conn, stream, &prev_hash).await?;
            postgres::notify_appended(conn).await?;
        }
        TxConnection::Sqlite(conn) => sqlite::set_last_hash(conn, stream, &prev_hash).await?,
    }
    let (Some(first_position), Some(last_position)) = (positions.first(), positions.last()) else {
        return Err(AppendError::EmptyBatch.into());
    };
    Ok(AppendOutcome {
        first_position: *first_position,
        last_position: *last_position,
        stream_version: last_version,
        already_stored: false,
    })
}

impl From<AppendError> for TxAppendError {
    fn from(error: AppendError) -> Self {
        Self::Append(error)
    }
}

/// Decides what a re-sent batch gets: the original positions if every event id is stored as
/// this very batch (same stream, consecutive versions in batch order), an error otherwise.
pub(crate) fn classify_stored(
    stream: &StreamId,
    event_ids: &[Uuid],
    stored: Vec<StoredRef>,
) -> Result<AppendOutcome, AppendError> {
    let stored_count = stored.len();
    let by_id: HashMap<Uuid, StoredRef> = stored
        .into_iter()
        .map(|stored_ref| (stored_ref.event_id, stored_ref))
        .collect();
    let in_batch_order: Vec<Option<&StoredRef>> = event_ids
        .iter()
        .map(|event_id| by_id.get(event_id))
        .collect();
    let first = in_batch_order.first().copied().flatten();
    let mismatch = |found: &StoredRef| AppendError::EventIdMismatch {
        stream: stream.clone(),
        event_id: found.event_id,
        stored_stream: found.stream_id.clone(),
        stored_version: found.stream_version,
        stored_position: found.global_position,
        stored_count,
        batch_len: event_ids.len(),
    };
    let Some(first) = first else {
        // The first event is not stored but some later one is: a partially stored batch.
        let found = in_batch_order.iter().flatten().next().copied();
        return match found {
            Some(found) => Err(mismatch(found)),
            None => Err(AppendError::Store(StoreError::Corrupt {
                global_position: 0,
                reason: "idempotency lookup returned ids outside the batch".to_owned(),
            })),
        };
    };
    let mut last = first;
    for (offset, found) in (0_i64..).zip(&in_batch_order) {
        let Some(found) = found else {
            return Err(mismatch(first));
        };
        if found.stream_id != *stream || found.stream_version.0 != first.stream_version.0 + offset {
            return Err(mismatch(found));
        }
        last = found;
    }
    Ok(AppendOutcome {
        first_position: first.global_position,
        last_position: last.global_position,
        stream_version: last.stream_version,
        already_stored: true,
    })
}

pub(crate) async fn lookup_event_ids(
    conn: &mut TxConnection<'_>,
    event_ids: &[Uuid],
) -> Result<Vec<StoredRef>, StoreError> {
    match conn {
        TxConnection::Postgres(conn) => postgres::lookup_event_ids(conn, event_ids).await,
        TxConnection::Sqlite(conn) => sqlite::lookup_event_ids(conn, event_ids).await,
    }
}

pub(crate) async fn current_version(
    conn: &mut TxConnection<'_>,
    stream: &StreamId,
) -> Result<Option<StreamVersion>, StoreError> {
    match conn {
        TxConnection::Postgres(conn) => postgres::current_version(conn, stream).await,
        TxConnection::Sqlite(conn) => sqlite::current_version(conn, stream).await,
    }
}

/// The stream's version after a claim, and the hash of its last event before it (`None` for a
/// new stream, or one older than the integrity migration).
pub(crate) type Claim = (StreamVersion, Option<Hash32>);

async fn create_stream(
    conn: &mut TxConnection<'_>,
    stream: &StreamId,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    match conn {
        TxConnection::Postgres(conn) => postgres::create_stream(conn, stream, count).await,
        TxConnection::Sqlite(conn) => sqlite::create_stream(conn, stream, count).await,
    }
}

async fn advance_stream(
    conn: &mut TxConnection<'_>,
    stream: &StreamId,
    expected: StreamVersion,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    match conn {
        TxConnection::Postgres(conn) => {
            postgres::advance_stream(conn, stream, expected, count).await
        }
        TxConnection::Sqlite(conn) => sqlite::advance_stream(conn, stream, expected, count).await,
    }
}

async fn bump_stream(
    conn: &mut TxConnection<'_>,
    stream: &StreamId,
    count: i64,
) -> Result<Claim, StoreError> {
    match conn {
        TxConnection::Postgres(conn) => postgres::bump_stream(conn, stream, count).await,
        TxConnection::Sqlite(conn) => sqlite::bump_stream(conn, stream, count).await,
    }
}
