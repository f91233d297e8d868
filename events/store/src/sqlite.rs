//! The SQLite statements of the store: one function per primitive the shared append,
//! read and checkpoint logic needs.

use chrono::Utc;
use lifeline_model::envelope::{
    EventHeader, EventMetadata, GlobalPosition, LogCursor, Payload, RecordedEvent,
    RecordedEventText, StreamId, StreamVersion,
};
use lifeline_model::integrity::Hash32;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::append::{CanonicalTexts, Claim, EncodedEvent, InsertError, StoredRef};
use crate::error::StoreError;

const EVENT_COLUMNS: &str = "global_position, transaction_id, stream_id, stream_version, \
     event_id, event_type, schema_version, payload, metadata";
/// [`EVENT_COLUMNS`] with the payload of events whose type is in the JSON array `$4` only (null
/// for the others).
const EVENT_COLUMNS_SOME_PAYLOADS: &str = "global_position, transaction_id, stream_id, \
     stream_version, event_id, event_type, schema_version, \
     CASE WHEN event_type IN (SELECT value FROM json_each($4)) THEN payload END AS payload, \
     metadata";
/// [`EVENT_COLUMNS`] with the payload as text in `payload_text` (and a null `payload`).
const EVENT_COLUMNS_PAYLOAD_TEXT: &str = "global_position, transaction_id, stream_id, \
     stream_version, event_id, event_type, schema_version, NULL AS payload, \
     payload AS payload_text, metadata";
/// An event's header; its topic is the payload's top-level `procedure` if a string
/// (`lifeline_model::envelope::TOPIC_FIELD`, `Payload::topic`).
const HEADER_COLUMNS: &str =
    "global_position, transaction_id, stream_id, stream_version, event_id, event_type, \
     CASE WHEN json_type(payload, '$.procedure') = 'text' \
          THEN json_extract(payload, '$.procedure') END AS topic";

pub(crate) async fn lookup_event_ids(
    conn: &mut SqliteConnection,
    event_ids: &[Uuid],
) -> Result<Vec<StoredRef>, StoreError> {
    let mut found = Vec::new();
    for event_id in event_ids {
        let row = sqlx::query(
            "SELECT stream_id, stream_version, global_position FROM events WHERE event_id = $1",
        )
        .bind(event_id.hyphenated().to_string())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let global_position: i64 = row.try_get("global_position")?;
            let stream_id: String = row.try_get("stream_id")?;
            found.push(StoredRef {
                event_id: *event_id,
                stream_id: parse_stream_id(global_position, stream_id)?,
                stream_version: StreamVersion(row.try_get("stream_version")?),
                global_position: GlobalPosition(global_position),
            });
        }
    }
    Ok(found)
}

pub(crate) async fn current_version(
    conn: &mut SqliteConnection,
    stream: &StreamId,
) -> Result<Option<StreamVersion>, StoreError> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
            .bind(stream.as_str().to_owned())
            .fetch_optional(conn)
            .await?;
    Ok(version.map(StreamVersion))
}

/// Creates the stream at `count` events; `None` if it exists already.
pub(crate) async fn create_stream(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(
        "INSERT INTO streams (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO NOTHING RETURNING version",
    )
    .bind(stream.as_str().to_owned())
    .bind(count)
    .fetch_optional(conn)
    .await?;
    Ok(version.map(|version| (StreamVersion(version), None)))
}

/// Moves the stream from exactly `expected` to `expected + count`; `None` if it was elsewhere.
pub(crate) async fn advance_stream(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    expected: StreamVersion,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    let claimed: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "UPDATE streams SET version = version + $3 \
         WHERE stream_id = $1 AND version = $2 RETURNING version, last_hash",
    )
    .bind(stream.as_str().to_owned())
    .bind(expected.0)
    .bind(count)
    .fetch_optional(conn)
    .await?;
    claimed.map(claim).transpose()
}

/// Moves the stream forward by `count` whatever its version (creating it if needed).
pub(crate) async fn bump_stream(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    count: i64,
) -> Result<Claim, StoreError> {
    let claimed: (i64, Option<Vec<u8>>) = sqlx::query_as(
        "INSERT INTO streams (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + excluded.version \
         RETURNING version, last_hash",
    )
    .bind(stream.as_str().to_owned())
    .bind(count)
    .fetch_one(conn)
    .await?;
    claim(claimed)
}

fn claim((version, last_hash): (i64, Option<Vec<u8>>)) -> Result<Claim, StoreError> {
    let last_hash = last_hash
        .map(|bytes| Hash32::from_slice(&bytes))
        .transpose()
        .map_err(|error| StoreError::Corrupt {
            global_position: 0,
            reason: format!("streams.last_hash: {error}"),
        })?;
    Ok((StreamVersion(version), last_hash))
}

/// Records the hash of the stream's last event; the caller holds the stream's row lock.
pub(crate) async fn set_last_hash(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    last_hash: &Hash32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE streams SET last_hash = $2 WHERE stream_id = $1")
        .bind(stream.as_str().to_owned())
        .bind(last_hash.0.to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts one event. The caller holds the only write transaction (BEGIN IMMEDIATE), so the
/// next position is the largest one plus one and positions are handed out in commit order.
pub(crate) async fn insert_event(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    version: StreamVersion,
    event: &EncodedEvent<'_>,
    texts: CanonicalTexts,
    event_hash: &Hash32,
) -> Result<GlobalPosition, InsertError> {
    let result: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "INSERT INTO events (global_position, transaction_id, stream_id, stream_version, \
         event_id, event_type, schema_version, payload, metadata, recorded_at, event_hash) \
         SELECT next.position, next.position, $1, $2, $3, $4, $5, $6, $7, $8, $9 \
         FROM (SELECT COALESCE(MAX(global_position), 0) + 1 AS position FROM events) AS next \
         RETURNING global_position",
    )
    .bind(stream.as_str().to_owned())
    .bind(version.0)
    .bind(event.event.event_id.hyphenated().to_string())
    .bind(event.event.event_type.clone())
    .bind(i64::from(event.event.schema_version))
    .bind(texts.payload)
    .bind(texts.metadata)
    .bind(event.event.metadata.recorded_at)
    .bind(event_hash.0.to_vec())
    .fetch_one(conn)
    .await;
    match result {
        Ok(position) => Ok(GlobalPosition(position)),
        Err(error) if is_event_id_violation(&error) => Err(InsertError::DuplicateEventId),
        Err(error) => Err(InsertError::Store(error.into())),
    }
}

fn is_event_id_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|database_error| {
        database_error.is_unique_violation() && database_error.message().contains("events.event_id")
    })
}

pub(crate) async fn read_stream_after(
    conn: &mut SqliteConnection,
    stream: &StreamId,
    after: StreamVersion,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(stream.as_str().to_owned())
        .bind(after.0)
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode_event).collect()
}

/// The next events after `after` in commit order (rowid order: SQLite has one writer).
pub(crate) async fn read_all(
    conn: &mut SqliteConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    read_global(conn, EVENT_COLUMNS, after, limit, None, decode_event).await
}

/// [`read_all`] with the payloads of events of `payload_types` only; the others' is null.
pub(crate) async fn read_all_with_payloads_of(
    conn: &mut SqliteConnection,
    after: LogCursor,
    limit: i64,
    payload_types: &[&str],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let payload_types = serde_json::Value::from(payload_types).to_string();
    read_global(
        conn,
        EVENT_COLUMNS_SOME_PAYLOADS,
        after,
        limit,
        Some(payload_types),
        decode_event,
    )
    .await
}

/// [`read_all`] with each payload as its stored text (`RecordedEventText`).
pub(crate) async fn read_all_payload_text(
    conn: &mut SqliteConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<RecordedEventText>, StoreError> {
    read_global(
        conn,
        EVENT_COLUMNS_PAYLOAD_TEXT,
        after,
        limit,
        None,
        decode_event_text,
    )
    .await
}

/// [`read_all`] without payloads and metadata.
pub(crate) async fn read_all_headers(
    conn: &mut SqliteConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<EventHeader>, StoreError> {
    read_global(conn, HEADER_COLUMNS, after, limit, None, decode_header).await
}

/// `columns` of up to `limit` events after `after` in commit order (see [`read_all`]), each
/// row decoded by `decode`; `payload_types` (a JSON array of event types), if given, is bound
/// as `$4`.
async fn read_global<T>(
    conn: &mut SqliteConnection,
    columns: &str,
    after: LogCursor,
    limit: i64,
    payload_types: Option<String>,
    decode: fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = format!(
        "SELECT {columns} FROM events \
         WHERE (transaction_id, global_position) > ($1, $2) \
         ORDER BY transaction_id, global_position \
         LIMIT $3"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(limit);
    if let Some(payload_types) = payload_types {
        query = query.bind(payload_types);
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(decode).collect()
}

/// The cursor a row's `transaction_id` and `global_position` make.
fn cursor_of(row: &SqliteRow) -> Result<LogCursor, StoreError> {
    Ok(LogCursor {
        transaction_id: row.try_get("transaction_id")?,
        global_position: row.try_get("global_position")?,
    })
}

/// See [`crate::EventStore::first_recorded_since`].
pub(crate) async fn first_recorded_since(
    conn: &mut SqliteConnection,
    at: chrono::DateTime<Utc>,
) -> Result<Option<LogCursor>, StoreError> {
    let row = sqlx::query(
        "SELECT transaction_id, global_position FROM events WHERE recorded_at >= $1 \
         ORDER BY transaction_id, global_position LIMIT 1",
    )
    .bind(at)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(cursor_of).transpose()
}

pub(crate) async fn event_by_id(
    conn: &mut SqliteConnection,
    event_id: Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(event_id.hyphenated().to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode_event).transpose()
}

pub(crate) async fn load_checkpoint(
    conn: &mut SqliteConnection,
    subscriber: &str,
) -> Result<Option<LogCursor>, StoreError> {
    let row = sqlx::query(
        "SELECT transaction_id, global_position FROM checkpoints WHERE subscriber = $1",
    )
    .bind(subscriber.to_owned())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(cursor_of).transpose()
}

/// Saves `cursor` for `subscriber`, whatever was saved before.
pub(crate) async fn save_checkpoint(
    conn: &mut SqliteConnection,
    subscriber: &str,
    cursor: LogCursor,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO checkpoints (subscriber, transaction_id, global_position, updated_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subscriber) DO UPDATE SET transaction_id = excluded.transaction_id, \
         global_position = excluded.global_position, updated_at = excluded.updated_at",
    )
    .bind(subscriber.to_owned())
    .bind(cursor.transaction_id)
    .bind(cursor.global_position)
    .bind(Utc::now())
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the checkpoint of `subscriber` from `from` to `to`; false if it is no longer at `from`
/// (another runner of the same subscriber moved it).
pub(crate) async fn advance_checkpoint(
    conn: &mut SqliteConnection,
    subscriber: &str,
    from: LogCursor,
    to: LogCursor,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE checkpoints SET transaction_id = $2, global_position = $3, updated_at = $4 \
         WHERE subscriber = $1 AND transaction_id = $5 AND global_position = $6",
    )
    .bind(subscriber.to_owned())
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(Utc::now())
    .bind(from.transaction_id)
    .bind(from.global_position)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 1 {
        return Ok(true);
    }
    if from != LogCursor::START {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO checkpoints (subscriber, transaction_id, global_position, updated_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (subscriber) DO NOTHING",
    )
    .bind(subscriber.to_owned())
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(Utc::now())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

fn decode_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        global_position,
        reason,
    };
    let schema_version: i64 = row.try_get("schema_version")?;
    let event_id: String = row.try_get("event_id")?;
    // Null only where the read left it out (`EVENT_COLUMNS_SOME_PAYLOADS`).
    let payload: Option<String> = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(RecordedEvent {
        global_position: GlobalPosition(global_position),
        transaction_id: row.try_get("transaction_id")?,
        stream_id: parse_stream_id(global_position, row.try_get("stream_id")?)?,
        stream_version: StreamVersion(row.try_get("stream_version")?),
        event_id: Uuid::parse_str(&event_id)
            .map_err(|error| corrupt(format!("event id {event_id:?}: {error}")))?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
        payload: match payload {
            Some(payload) => {
                Payload::from_text(payload).map_err(|error| corrupt(format!("payload: {error}")))?
            }
            None => Payload::null(),
        },
        metadata: serde_json::from_str::<EventMetadata>(&metadata)
            .map_err(|error| corrupt(format!("metadata: {error}")))?,
    })
}

fn decode_event_text(row: &SqliteRow) -> Result<RecordedEventText, StoreError> {
    Ok(RecordedEventText {
        event: decode_event(row)?,
        payload: row.try_get("payload_text")?,
    })
}

fn decode_header(row: &SqliteRow) -> Result<EventHeader, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    let event_id: String = row.try_get("event_id")?;
    Ok(EventHeader {
        global_position: GlobalPosition(global_position),
        transaction_id: row.try_get("transaction_id")?,
        stream_id: parse_stream_id(global_position, row.try_get("stream_id")?)?,
        stream_version: StreamVersion(row.try_get("stream_version")?),
        event_id: Uuid::parse_str(&event_id).map_err(|error| StoreError::Corrupt {
            global_position,
            reason: format!("event id {event_id:?}: {error}"),
        })?,
        event_type: row.try_get("event_type")?,
        topic: row.try_get("topic")?,
    })
}

fn parse_stream_id(global_position: i64, stream_id: String) -> Result<StreamId, StoreError> {
    StreamId::parse(stream_id).map_err(|error| StoreError::Corrupt {
        global_position,
        reason: error.to_string(),
    })
}
