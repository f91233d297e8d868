//! The PostgreSQL statements of the store: one function per primitive the shared append,
//! read and checkpoint logic needs.

use chrono::Utc;
use lifeline_model::envelope::{
    EventHeader, EventMetadata, GlobalPosition, LogCursor, Payload, RecordedEvent,
    RecordedEventText, StreamId, StreamVersion,
};
use lifeline_model::integrity::Hash32;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::append::{CanonicalTexts, Claim, EncodedEvent, InsertError, StoredRef};
use crate::error::StoreError;
use crate::store::CheckpointMove;

/// The channel every append notifies in its transaction; only a wake-up, never a cursor.
pub(crate) const NOTIFY_CHANNEL: &str = "lifeline_events";

const EVENT_COLUMNS: &str = "global_position, transaction_id, stream_id, stream_version, \
     event_id, event_type, schema_version, payload, metadata";
/// [`EVENT_COLUMNS`] with the payload of events whose type is in the array `$4` only (null for
/// the others).
const EVENT_COLUMNS_SOME_PAYLOADS: &str = "global_position, transaction_id, stream_id, \
     stream_version, event_id, event_type, schema_version, \
     CASE WHEN event_type = ANY($4) THEN payload END AS payload, metadata";
/// [`EVENT_COLUMNS`] with the payload as text in `payload_text` (and a null `payload`).
const EVENT_COLUMNS_PAYLOAD_TEXT: &str = "global_position, transaction_id, stream_id, \
     stream_version, event_id, event_type, schema_version, NULL::json AS payload, \
     payload::text AS payload_text, metadata";
/// An event's header; its topic is the payload's top-level `procedure` if a string
/// (`lifeline_model::envelope::TOPIC_FIELD`, `Payload::topic`), taken out of the `json` text
/// once.
const HEADER_COLUMNS: &str =
    "global_position, transaction_id, stream_id, stream_version, event_id, event_type, \
     (SELECT CASE WHEN json_typeof(field) = 'string' THEN field #>> '{}' END \
      FROM (SELECT payload -> 'procedure' AS field) AS topic_field) AS topic";

pub(crate) async fn lookup_event_ids(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<Vec<StoredRef>, StoreError> {
    let rows = sqlx::query(
        "SELECT event_id, stream_id, stream_version, global_position \
         FROM events WHERE event_id = ANY($1)",
    )
    .bind(event_ids.to_vec())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let global_position: i64 = row.try_get("global_position")?;
            let stream_id: String = row.try_get("stream_id")?;
            Ok(StoredRef {
                event_id: row.try_get("event_id")?,
                stream_id: parse_stream_id(global_position, stream_id)?,
                stream_version: StreamVersion(row.try_get("stream_version")?),
                global_position: GlobalPosition(global_position),
            })
        })
        .collect()
}

pub(crate) async fn current_version(
    conn: &mut PgConnection,
    stream: &StreamId,
) -> Result<Option<StreamVersion>, StoreError> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(version.map(StreamVersion))
}

/// Creates the stream at `count` events; `None` if it exists already.
pub(crate) async fn create_stream(
    conn: &mut PgConnection,
    stream: &StreamId,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(
        "INSERT INTO streams (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO NOTHING RETURNING version",
    )
    .bind(stream.as_str())
    .bind(count)
    .fetch_optional(conn)
    .await?;
    Ok(version.map(|version| (StreamVersion(version), None)))
}

/// Moves the stream from exactly `expected` to `expected + count`; `None` if it was elsewhere.
pub(crate) async fn advance_stream(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: StreamVersion,
    count: i64,
) -> Result<Option<Claim>, StoreError> {
    let claimed: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "UPDATE streams SET version = version + $3 \
         WHERE stream_id = $1 AND version = $2 RETURNING version, last_hash",
    )
    .bind(stream.as_str())
    .bind(expected.0)
    .bind(count)
    .fetch_optional(conn)
    .await?;
    claimed.map(claim).transpose()
}

/// Moves the stream forward by `count` whatever its version (creating it if needed).
pub(crate) async fn bump_stream(
    conn: &mut PgConnection,
    stream: &StreamId,
    count: i64,
) -> Result<Claim, StoreError> {
    let claimed: (i64, Option<Vec<u8>>) = sqlx::query_as(
        "INSERT INTO streams (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + excluded.version \
         RETURNING version, last_hash",
    )
    .bind(stream.as_str())
    .bind(count)
    .fetch_one(conn)
    .await?;
    claim(claimed)
}

fn claim((version, last_hash): (i64, Option<Vec<u8>>)) -> Result<Claim, StoreError> {
    Ok((StreamVersion(version), decode_last_hash(last_hash)?))
}

/// A JSON text already encoded (`integrity::canonical_json`), bound as a `json` parameter as
/// it is: the bytes hashed are the bytes sent and stored (the log's documents are `json`,
/// migration 10), and nothing is serialised twice.
#[derive(Debug, Clone)]
pub(crate) struct JsonText(pub(crate) String);

/// PostgreSQL's `json` type and its array type (sqlx's `Json` declares `jsonb`).
const JSON_OID: sqlx::postgres::types::Oid = sqlx::postgres::types::Oid(114);
const JSON_ARRAY_OID: sqlx::postgres::types::Oid = sqlx::postgres::types::Oid(199);

impl sqlx::Type<sqlx::Postgres> for JsonText {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(JSON_OID)
    }
}

impl sqlx::postgres::PgHasArrayType for JsonText {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(JSON_ARRAY_OID)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for JsonText {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        // json's binary form is its text.
        buf.extend_from_slice(self.0.as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// A `streams.last_hash` column read back: `None` for a stream older than the hash chain.
pub(crate) fn decode_last_hash(bytes: Option<Vec<u8>>) -> Result<Option<Hash32>, StoreError> {
    decode_hash(bytes, "streams.last_hash", 0)
}

/// A stored hash column (`None` where it is null), or `Corrupt` naming `column` and the event's
/// position (0 when the row is not an event).
fn decode_hash(
    bytes: Option<Vec<u8>>,
    column: &str,
    global_position: i64,
) -> Result<Option<Hash32>, StoreError> {
    bytes
        .map(|bytes| Hash32::from_slice(&bytes))
        .transpose()
        .map_err(|error| StoreError::Corrupt {
            global_position,
            reason: format!("{column}: {error}"),
        })
}

/// Records the hash of the stream's last event; the caller holds the stream's row lock.
pub(crate) async fn set_last_hash(
    conn: &mut PgConnection,
    stream: &StreamId,
    last_hash: &Hash32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE streams SET last_hash = $2 WHERE stream_id = $1")
        .bind(stream.as_str())
        .bind(last_hash.0.to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn insert_event(
    conn: &mut PgConnection,
    stream: &StreamId,
    version: StreamVersion,
    event: &EncodedEvent<'_>,
    texts: CanonicalTexts,
    event_hash: &Hash32,
) -> Result<GlobalPosition, InsertError> {
    let schema_version = i32::try_from(event.event.schema_version).map_err(|_| {
        InsertError::Store(StoreError::Corrupt {
            global_position: 0,
            reason: format!(
                "schema version {} of event {} does not fit the column",
                event.event.schema_version, event.event.event_id
            ),
        })
    })?;
    let result: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at, event_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING global_position",
    )
    .bind(stream.as_str())
    .bind(version.0)
    .bind(event.event.event_id)
    .bind(event.event.event_type.as_str())
    .bind(schema_version)
    .bind(JsonText(texts.payload))
    .bind(JsonText(texts.metadata))
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
        database_error.is_unique_violation()
            && database_error.constraint() == Some("events_event_id_unique")
    })
}

/// Queues the wake-up; PostgreSQL delivers it at commit (and folds repeats within one transaction).
pub(crate) async fn notify_appended(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn read_stream_after(
    conn: &mut PgConnection,
    stream: &StreamId,
    after: StreamVersion,
) -> Result<Vec<RecordedEvent>, StoreError> {
    Ok(read_stream_after_with_last_hash(conn, stream, after)
        .await?
        .0)
}

/// The events of every stream of `streams`, by stream and then version.
pub(crate) async fn read_streams(
    conn: &mut PgConnection,
    streams: &[&StreamId],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let ids: Vec<&str> = streams.iter().map(|stream| stream.as_str()).collect();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE stream_id = ANY($1) ORDER BY stream_id, stream_version"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode_event).collect()
}

/// [`read_streams`], with the streams' rows locked `FOR SHARE` first, until the transaction
/// ends, in stream id order (shared locks do not conflict with one another, and a group append
/// moves its streams in that order), and the events read after the lock, with a snapshot that
/// includes an append the lock waited for: `lifeline_read_streams_held` (migration 12), two
/// statements in one round trip. A stream that does not exist is not locked.
pub(crate) async fn read_streams_held(
    conn: &mut PgConnection,
    streams: &[&StreamId],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let ids: Vec<&str> = streams.iter().map(|stream| stream.as_str()).collect();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM lifeline_read_streams_held($1) \
         ORDER BY stream_id, stream_version"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode_event).collect()
}

/// [`read_stream_after`], and the hash of the last event read (`None` if nothing was read, or
/// for an event stored before the integrity migration).
pub(crate) async fn read_stream_after_with_last_hash(
    conn: &mut PgConnection,
    stream: &StreamId,
    after: StreamVersion,
) -> Result<(Vec<RecordedEvent>, Option<Hash32>), StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, event_hash FROM events \
         WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(stream.as_str())
        .bind(after.0)
        .fetch_all(conn)
        .await?;
    let last_hash = match rows.last() {
        Some(row) => decode_hash(
            row.try_get("event_hash")?,
            "events.event_hash",
            row.try_get("global_position").unwrap_or(0),
        )?,
        None => None,
    };
    let events = rows.iter().map(decode_event).collect::<Result<_, _>>()?;
    Ok((events, last_hash))
}

/// The next events after `after` in commit order, only from transactions older than every
/// transaction still running, so nothing can later appear behind the returned cursor.
pub(crate) async fn read_all(
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    read_global(conn, EVENT_COLUMNS, after, limit, None, decode_event).await
}

/// [`read_all`] with the payloads of events of `payload_types` only; the others' is null.
pub(crate) async fn read_all_with_payloads_of(
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
    payload_types: &[&str],
) -> Result<Vec<RecordedEvent>, StoreError> {
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<EventHeader>, StoreError> {
    read_global(conn, HEADER_COLUMNS, after, limit, None, decode_header).await
}

/// `columns` of up to `limit` events after `after` in commit order (see [`read_all`]), each
/// row decoded by `decode`; `payload_types`, if given, is bound as `$4`.
async fn read_global<T>(
    conn: &mut PgConnection,
    columns: &str,
    after: LogCursor,
    limit: i64,
    payload_types: Option<&[&str]>,
    decode: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = format!(
        "SELECT {columns} FROM events \
         WHERE (transaction_id, global_position) > ($1, $2) \
           AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint) \
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
fn cursor_of(row: &PgRow) -> Result<LogCursor, StoreError> {
    Ok(LogCursor {
        transaction_id: row.try_get("transaction_id")?,
        global_position: row.try_get("global_position")?,
    })
}

/// See [`crate::EventStore::first_recorded_since`].
pub(crate) async fn first_recorded_since(
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    event_id: Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(event_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode_event).transpose()
}

/// The stored events among `event_ids`, in no particular order.
pub(crate) async fn events_by_ids(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(event_ids)
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode_event).collect()
}

pub(crate) async fn load_checkpoint(
    conn: &mut PgConnection,
    subscriber: &str,
) -> Result<Option<LogCursor>, StoreError> {
    let row = sqlx::query(
        "SELECT transaction_id, global_position FROM checkpoints WHERE subscriber = $1",
    )
    .bind(subscriber)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(cursor_of).transpose()
}

/// Saves `cursor` for `subscriber`, whatever was saved before.
pub(crate) async fn save_checkpoint(
    conn: &mut PgConnection,
    subscriber: &str,
    cursor: LogCursor,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO checkpoints (subscriber, transaction_id, global_position, updated_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subscriber) DO UPDATE SET transaction_id = excluded.transaction_id, \
         global_position = excluded.global_position, updated_at = excluded.updated_at",
    )
    .bind(subscriber)
    .bind(cursor.transaction_id)
    .bind(cursor.global_position)
    .bind(Utc::now())
    .execute(conn)
    .await?;
    Ok(())
}

/// The SQLSTATE `lifeline_advance_checkpoints` raises (migration 16).
const CHECKPOINT_MOVED: &str = "LLC01";

/// The simple-query message of [`crate::StoreTransaction::commit_advancing`]: the checkpoints
/// moved by `lifeline_advance_checkpoints`, `COMMIT`, and `BEGIN` (an empty transaction for
/// sqlx to commit). Its values are literals (a simple query takes no parameters): cursors are
/// numbers, and a subscriber name with any character but ASCII letters, digits and `-_.:/@`
/// gets `None` (the statement-by-statement way) rather than being quoted. `None` too for no
/// move.
pub(crate) fn advance_and_commit_message(moves: &[CheckpointMove<'_>]) -> Option<String> {
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c))
    };
    if moves.is_empty() || !moves.iter().all(|one| plain(one.subscriber)) {
        return None;
    }
    let numbers = |of: &dyn Fn(&CheckpointMove<'_>) -> i64| {
        let listed: Vec<String> = moves.iter().map(|one| of(one).to_string()).collect();
        format!("ARRAY[{}]::bigint[]", listed.join(","))
    };
    let names: Vec<String> = moves
        .iter()
        .map(|one| format!("'{}'", one.subscriber))
        .collect();
    Some(format!(
        "SELECT lifeline_advance_checkpoints(ARRAY[{}]::text[], {}, {}, {}, {}); COMMIT; BEGIN",
        names.join(","),
        numbers(&|one| one.from.transaction_id),
        numbers(&|one| one.from.global_position),
        numbers(&|one| one.to.transaction_id),
        numbers(&|one| one.to.global_position),
    ))
}

/// Whether `error` is `lifeline_advance_checkpoints` refusing a checkpoint that moved.
pub(crate) fn is_checkpoint_moved(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database_error| database_error.code().as_deref() == Some(CHECKPOINT_MOVED))
}

/// Moves the checkpoint of `subscriber` from `from` to `to`; false if it is no longer at `from`
/// (another runner of the same subscriber moved it).
pub(crate) async fn advance_checkpoint(
    conn: &mut PgConnection,
    subscriber: &str,
    from: LogCursor,
    to: LogCursor,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE checkpoints SET transaction_id = $2, global_position = $3, updated_at = $4 \
         WHERE subscriber = $1 AND transaction_id = $5 AND global_position = $6",
    )
    .bind(subscriber)
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
    .bind(subscriber)
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(Utc::now())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        global_position,
        reason,
    };
    let schema_version: i32 = row.try_get("schema_version")?;
    // Straight from the column's text into the struct, without a `serde_json::Value` between.
    let metadata = row
        .try_get::<sqlx::types::Json<EventMetadata>, _>("metadata")
        .map_err(|error| corrupt(format!("metadata: {error}")))?
        .0;
    Ok(RecordedEvent {
        global_position: GlobalPosition(global_position),
        transaction_id: row.try_get("transaction_id")?,
        stream_id: parse_stream_id(global_position, row.try_get("stream_id")?)?,
        stream_version: StreamVersion(row.try_get("stream_version")?),
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
        // Null only where the read left it out (`EVENT_COLUMNS_SOME_PAYLOADS`).
        // The text only, checked to be JSON: a reader parses it into its own types
        // (`lifeline_model::envelope::Payload`).
        payload: row
            .try_get::<Option<sqlx::types::Json<Box<serde_json::value::RawValue>>>, _>("payload")?
            .map_or_else(Payload::null, |text| Payload::from_raw(text.0)),
        metadata,
    })
}

fn decode_event_text(row: &PgRow) -> Result<RecordedEventText, StoreError> {
    Ok(RecordedEventText {
        event: decode_event(row)?,
        payload: row.try_get("payload_text")?,
    })
}

fn decode_header(row: &PgRow) -> Result<EventHeader, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    Ok(EventHeader {
        global_position: GlobalPosition(global_position),
        transaction_id: row.try_get("transaction_id")?,
        stream_id: parse_stream_id(global_position, row.try_get("stream_id")?)?,
        stream_version: StreamVersion(row.try_get("stream_version")?),
        event_id: row.try_get("event_id")?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(n: i64) -> LogCursor {
        LogCursor {
            transaction_id: n,
            global_position: n + 1,
        }
    }

    #[test]
    fn the_checkpoints_message_commits_right_after_moving_them() {
        let moves = [
            CheckpointMove {
                subscriber: "projection-persons",
                from: cursor(1),
                to: cursor(7),
            },
            CheckpointMove {
                subscriber: "policy:birth/x_1.2@a",
                from: cursor(2),
                to: cursor(7),
            },
        ];
        assert_eq!(
            advance_and_commit_message(&moves).unwrap(),
            "SELECT lifeline_advance_checkpoints(\
             ARRAY['projection-persons','policy:birth/x_1.2@a']::text[], \
             ARRAY[1,2]::bigint[], ARRAY[2,3]::bigint[], ARRAY[7,7]::bigint[], \
             ARRAY[8,8]::bigint[]); COMMIT; BEGIN"
        );
    }

    #[test]
    fn a_name_that_would_need_quoting_is_not_put_in_the_message() {
        for name in ["it's", "back\\slash", "space d", "", "é"] {
            let moves = [CheckpointMove {
                subscriber: name,
                from: cursor(1),
                to: cursor(2),
            }];
            assert_eq!(advance_and_commit_message(&moves), None, "{name}");
        }
        assert_eq!(advance_and_commit_message(&[]), None);
    }
}
