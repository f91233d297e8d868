//! Tamper evidence over the stored log: the sealer ([`seal_new_events`]), the verifier
//! ([`verify`]) and inclusion proofs ([`inclusion_proof`]), with their SQL for both backends.
//! The hashing, Merkle and signature code is pure, in `lifeline_model::integrity`.
//!
//! What `verify` detects, and where it names it (the first bad position in commit order):
//! - an altered payload, metadata, type or id: the event's own hash no longer matches, at
//!   that event;
//! - a deleted event: the stream's next event jumps a version (at that event), the stream's
//!   head in `streams` disagrees (at its last event), and the seal over it no longer matches;
//! - a forged event inserted: its hash does not chain (at it or the stream's next event), a
//!   life event without its office's signature (at it), a seal that no longer matches;
//! - events swapped in commit order, or any change inside a sealed range: the seal's Merkle
//!   root no longer matches, named at the first event of that seal's range (a seal commits to
//!   its range as a whole, so that is the finest place it can name);
//! - an altered, removed or re-signed seal: the seal chain or the node's signature.

use std::collections::HashMap;

use futures::TryStreamExt;
use lifeline_model::envelope::{EventMetadata, LogCursor};
use lifeline_model::integrity::{
    audit_path, event_hash, is_office_signed, merkle_root, office_message, office_owner,
    EventHashInput, Hash32, InclusionProof, KeyPair, Keyring, ProvenEvent, Seal,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::StoreError;
use crate::store::EventStore;

/// The most events one seal covers; the sealer seals a longer backlog in several seals.
pub const MAX_SEAL_EVENTS: usize = 50_000;

/// The answer of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub events_checked: u64,
    pub seals_checked: u64,
    /// Events after the last seal: chained and signed, not yet sealed.
    pub unsealed_events: u64,
    /// Seals kept outside the database (anchors) compared with the log's
    /// ([`verify_anchored`]); 0 for a plain [`verify`].
    #[serde(default)]
    pub anchors_checked: u64,
    /// The first bad position in commit order; `None`: the log is intact.
    pub first_bad: Option<BadPosition>,
}

/// Where the log stops being trustworthy, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPosition {
    /// 0 when the evidence names no event (a stream whose events are all gone).
    pub global_position: i64,
    pub reason: String,
}

/// What [`inclusion_proof`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ProofLookup {
    NoSuchEvent,
    /// The event is stored but no seal covers it yet.
    NotSealed,
    Proof(Box<InclusionProof>),
}

/// One event row as the integrity checks read it: the stored JSON as stored, not re-encoded.
#[derive(Debug, Clone)]
struct IntegrityRow {
    cursor: LogCursor,
    stream_id: String,
    stream_version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    event_hash: Option<Hash32>,
}

impl IntegrityRow {
    fn recompute(&self, prev_hash: &Hash32) -> Hash32 {
        event_hash(
            &EventHashInput {
                stream_id: &self.stream_id,
                stream_version: self.stream_version,
                event_id: self.event_id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                payload: &self.payload,
                metadata: &self.metadata,
            },
            prev_hash,
        )
    }
}

/// The documents are read as their stored text ([`parse_stored_json`]), on both databases.
const ROW_COLUMNS: &str = "global_position, transaction_id, stream_id, stream_version, \
     event_id, event_type, schema_version, CAST(payload AS TEXT) AS payload, \
     CAST(metadata AS TEXT) AS metadata, event_hash";

/// Parses a stored JSON document for the integrity check, refusing a key given twice in any
/// object: Lifeline never writes one (its canonical JSON; jsonb's output before migration 10),
/// and one added behind the store's back would hash as the original (serde keeps the last of
/// the two) while SQL readers take the first (SQLite's `json_extract`: an event's topic, so the
/// relay's subject). Until 2026-12-07 `verify` passed such a document.
fn parse_stored_json(
    text: &str,
    global_position: i64,
    what: &str,
) -> Result<serde_json::Value, StoreError> {
    struct Strict(serde_json::Value);
    struct StrictVisitor;
    impl<'de> serde::de::Visitor<'de> for StrictVisitor {
        type Value = serde_json::Value;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON value")
        }
        fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Bool(value))
        }
        fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
            Ok(value.into())
        }
        fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
            Ok(value.into())
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
            serde_json::Number::from_f64(value)
                .map(serde_json::Value::Number)
                .ok_or_else(|| E::custom("a number out of range"))
        }
        fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
            Ok(serde_json::Value::String(value.to_owned()))
        }
        fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
            Ok(serde_json::Value::String(value))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut items: A,
        ) -> Result<Self::Value, A::Error> {
            let mut values = Vec::new();
            while let Some(Strict(value)) = items.next_element()? {
                values.push(value);
            }
            Ok(serde_json::Value::Array(values))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut entries: A,
        ) -> Result<Self::Value, A::Error> {
            let mut map = serde_json::Map::new();
            while let Some(key) = entries.next_key::<String>()? {
                if map.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "the key {key:?} is given twice"
                    )));
                }
                let Strict(value) = entries.next_value()?;
                map.insert(key, value);
            }
            Ok(serde_json::Value::Object(map))
        }
    }
    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(StrictVisitor).map(Strict)
        }
    }
    serde_json::from_str::<Strict>(text)
        .map(|Strict(value)| value)
        .map_err(|error| corrupt(global_position, format!("{what}: {error}")))
}

const SEAL_COLUMNS: &str = "seq, from_transaction_id, from_global_position, to_transaction_id, \
     to_global_position, event_count, merkle_root, prev_seal_hash, seal_hash, key_id, signature";

fn corrupt(global_position: i64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        global_position,
        reason: reason.into(),
    }
}

fn hash_column(global_position: i64, bytes: Option<Vec<u8>>) -> Result<Option<Hash32>, StoreError> {
    bytes
        .map(|bytes| Hash32::from_slice(&bytes))
        .transpose()
        .map_err(|error| corrupt(global_position, format!("event_hash: {error}")))
}

/// Checks `row` as `decoded`, or, if it could not be decoded, names it at its cursor with its
/// stored `event_hash` if that can be read on its own.
fn check_row<'r, R: Row>(
    verifier: &mut Verifier<'_>,
    row: &'r R,
    decoded: Result<IntegrityRow, StoreError>,
) -> Result<(), StoreError>
where
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    match decoded {
        Ok(decoded) => verifier.check(decoded),
        Err(error) => {
            let cursor = LogCursor {
                transaction_id: row.try_get("transaction_id")?,
                global_position: row.try_get("global_position")?,
            };
            let stored = row
                .try_get::<Option<Vec<u8>>, _>("event_hash")
                .ok()
                .flatten()
                .and_then(|bytes| Hash32::from_slice(&bytes).ok());
            verifier.undecodable(cursor, stored, &error);
        }
    }
    Ok(())
}

fn decode_pg_row(row: &PgRow) -> Result<IntegrityRow, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    Ok(IntegrityRow {
        cursor: LogCursor {
            transaction_id: row.try_get("transaction_id")?,
            global_position,
        },
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(global_position, "schema version"))?,
        payload: parse_stored_json(
            &row.try_get::<String, _>("payload")?,
            global_position,
            "payload",
        )?,
        metadata: parse_stored_json(
            &row.try_get::<String, _>("metadata")?,
            global_position,
            "metadata",
        )?,
        event_hash: hash_column(global_position, row.try_get("event_hash")?)?,
    })
}

fn decode_sqlite_row(row: &SqliteRow) -> Result<IntegrityRow, StoreError> {
    let global_position: i64 = row.try_get("global_position")?;
    let schema_version: i64 = row.try_get("schema_version")?;
    let event_id: String = row.try_get("event_id")?;
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(IntegrityRow {
        cursor: LogCursor {
            transaction_id: row.try_get("transaction_id")?,
            global_position,
        },
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_id: Uuid::parse_str(&event_id)
            .map_err(|error| corrupt(global_position, format!("event id: {error}")))?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(global_position, "schema version"))?,
        payload: parse_stored_json(&payload, global_position, "payload")?,
        metadata: parse_stored_json(&metadata, global_position, "metadata")?,
        event_hash: hash_column(global_position, row.try_get("event_hash")?)?,
    })
}

fn decode_seal<'r, R: Row>(row: &'r R) -> Result<Seal, StoreError>
where
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row.try_get("seq")?;
    let hash = |column: &'static str| -> Result<Hash32, StoreError> {
        let bytes: Vec<u8> = row.try_get(column)?;
        Hash32::from_slice(&bytes)
            .map_err(|error| corrupt(0, format!("seal {seq} {column}: {error}")))
    };
    Ok(Seal {
        seq,
        from: LogCursor {
            transaction_id: row.try_get("from_transaction_id")?,
            global_position: row.try_get("from_global_position")?,
        },
        to: LogCursor {
            transaction_id: row.try_get("to_transaction_id")?,
            global_position: row.try_get("to_global_position")?,
        },
        event_count: row.try_get("event_count")?,
        merkle_root: hash("merkle_root")?,
        prev_seal_hash: hash("prev_seal_hash")?,
        seal_hash: hash("seal_hash")?,
        key_id: row.try_get("key_id")?,
        signature: row.try_get("signature")?,
    })
}

/// The latest seal, if any.
pub async fn last_seal(store: &EventStore) -> Result<Option<Seal>, StoreError> {
    let sql = format!("SELECT {SEAL_COLUMNS} FROM log_seals ORDER BY seq DESC LIMIT 1");
    if let Some(pool) = store.postgres_pool() {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(pool)
            .await?;
        return row.as_ref().map(decode_seal).transpose();
    }
    let pool = sqlite_pool(store)?;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(decode_seal).transpose()
}

/// The seal numbered `seq`, if there is one.
pub async fn seal_at(store: &EventStore, seq: i64) -> Result<Option<Seal>, StoreError> {
    let sql = format!("SELECT {SEAL_COLUMNS} FROM log_seals WHERE seq = $1");
    if let Some(pool) = store.postgres_pool() {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(seq)
            .fetch_optional(pool)
            .await?;
        return row.as_ref().map(decode_seal).transpose();
    }
    let pool = sqlite_pool(store)?;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(seq)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(decode_seal).transpose()
}

fn sqlite_pool(store: &EventStore) -> Result<&sqlx::SqlitePool, StoreError> {
    store
        .sqlite_pool()
        .ok_or_else(|| corrupt(0, "the store has neither a PostgreSQL nor an SQLite pool"))
}

/// Seals the events that became visible (gap-free, in commit order) since the last seal, at
/// most [`MAX_SEAL_EVENTS`] of them: signs the seal with the node key and stores it. `None`:
/// nothing new, or another sealer stored this seal number first.
pub async fn seal_new_events(
    store: &EventStore,
    node_key: &KeyPair,
) -> Result<Option<Seal>, StoreError> {
    let previous = last_seal(store).await?;
    let after = previous.as_ref().map_or(LogCursor::START, |seal| seal.to);
    let limit = i64::try_from(MAX_SEAL_EVENTS).unwrap_or(i64::MAX);
    // The same gap-free predicate as `read_all`: nothing can later commit behind `to`.
    let rows: Vec<(i64, i64, Option<Vec<u8>>)> = if let Some(pool) = store.postgres_pool() {
        sqlx::query_as(
            "SELECT transaction_id, global_position, event_hash FROM events \
             WHERE (transaction_id, global_position) > ($1, $2) \
               AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint) \
             ORDER BY transaction_id, global_position LIMIT $3",
        )
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_as(
            "SELECT transaction_id, global_position, event_hash FROM events \
             WHERE (transaction_id, global_position) > ($1, $2) \
             ORDER BY transaction_id, global_position LIMIT $3",
        )
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(sqlite_pool(store)?)
        .await?
    };
    let Some(&(to_transaction_id, to_global_position, _)) = rows.last() else {
        return Ok(None);
    };
    let mut hashes = Vec::with_capacity(rows.len());
    for (_, global_position, hash) in rows {
        match hash_column(global_position, hash)? {
            Some(hash) => hashes.push(hash),
            None => {
                return Err(corrupt(
                    global_position,
                    "no event hash (written before the integrity migration or behind the store's back): not sealed",
                ))
            }
        }
    }
    let to = LogCursor {
        transaction_id: to_transaction_id,
        global_position: to_global_position,
    };
    let seal = Seal::sign(previous.as_ref(), to, &hashes, node_key);
    let sql = "INSERT INTO log_seals (seq, from_transaction_id, from_global_position, \
         to_transaction_id, to_global_position, event_count, merkle_root, prev_seal_hash, \
         seal_hash, key_id, signature, sealed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (seq) DO NOTHING";
    macro_rules! insert_seal {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(seal.seq)
                .bind(seal.from.transaction_id)
                .bind(seal.from.global_position)
                .bind(seal.to.transaction_id)
                .bind(seal.to.global_position)
                .bind(seal.event_count)
                .bind(seal.merkle_root.0.to_vec())
                .bind(seal.prev_seal_hash.0.to_vec())
                .bind(seal.seal_hash.0.to_vec())
                .bind(seal.key_id.clone())
                .bind(seal.signature.clone())
                .bind(chrono::Utc::now())
                .execute($pool)
                .await?
                .rows_affected()
        };
    }
    let inserted = match store.postgres_pool() {
        Some(pool) => insert_seal!(pool),
        None => insert_seal!(sqlite_pool(store)?),
    };
    Ok((inserted == 1).then_some(seal))
}

/// Seals until nothing new is visible; answers the seals made.
pub async fn seal_all(store: &EventStore, node_key: &KeyPair) -> Result<Vec<Seal>, StoreError> {
    let mut seals = Vec::new();
    while let Some(seal) = seal_new_events(store, node_key).await? {
        seals.push(seal);
    }
    Ok(seals)
}

/// The running state of [`verify`]: one pass over the log in commit order.
struct Verifier<'k> {
    keyring: &'k Keyring,
    seals: Vec<Seal>,
    /// The seal whose range the scan is in (index into `seals`).
    seal_index: usize,
    leaves: Vec<Hash32>,
    range_first: Option<LogCursor>,
    heads: HashMap<String, StreamHead>,
    first_bad: Option<(LogCursor, BadPosition)>,
    events_checked: u64,
    seals_checked: u64,
    unsealed_events: u64,
    anchors_checked: u64,
}

struct StreamHead {
    version: i64,
    hash: Hash32,
    cursor: LogCursor,
}

impl<'k> Verifier<'k> {
    fn new(keyring: &'k Keyring, seals: Vec<Seal>, anchors: &[Seal]) -> Self {
        let mut verifier = Self {
            keyring,
            seals,
            seal_index: 0,
            leaves: Vec::new(),
            range_first: None,
            heads: HashMap::new(),
            first_bad: None,
            events_checked: 0,
            seals_checked: 0,
            unsealed_events: 0,
            anchors_checked: 0,
        };
        verifier.check_seal_chain();
        verifier.check_anchors(anchors);
        verifier
    }

    /// Each anchor (a seal kept outside the database when it was made) against the log's seal
    /// of its number: the same seal, or a fault at the start of the anchored range. The seals
    /// chain by hash ([`Verifier::check_seal_chain`]), so an anchored seal still in the log
    /// vouches for every seal before it; one gone or different means seals were deleted or
    /// made again, which the log alone cannot show once they are made again over rewritten
    /// events. The anchors' signatures were checked by the caller ([`check_anchor`]).
    fn check_anchors(&mut self, anchors: &[Seal]) {
        let by_seq: HashMap<i64, &Seal> = self.seals.iter().map(|seal| (seal.seq, seal)).collect();
        let mut faults = Vec::new();
        for anchor in anchors {
            let stored = by_seq.get(&anchor.seq);
            let problem = match stored {
                None => Some(format!(
                    "seal {} (anchored with hash {}) is no longer in the log (seals deleted)",
                    anchor.seq,
                    anchor.seal_hash.to_hex()
                )),
                Some(stored) if stored.seal_hash != anchor.seal_hash => Some(format!(
                    "seal {} is not the one anchored (hash {} in the log, {} anchored): the \
                     seals were made again, the events they cover may have been rewritten",
                    anchor.seq,
                    stored.seal_hash.to_hex(),
                    anchor.seal_hash.to_hex()
                )),
                Some(_) => None,
            };
            self.anchors_checked += 1;
            if let Some(problem) = problem {
                let at = LogCursor {
                    transaction_id: anchor.from.transaction_id,
                    global_position: anchor.from.global_position.saturating_add(1),
                };
                faults.push((at, problem));
            }
        }
        for (at, problem) in faults {
            self.fault(at, problem);
        }
    }

    /// A row that cannot even be decoded (a hash of the wrong length, a payload number out of
    /// range): a fault at its position, and the scan goes on. (Until 2026-12-07 it ended the
    /// verification with an error, answered 503 "retry later", and no position was reported.)
    /// Its stored hash, if that can be read, still counts in its seal's range.
    fn undecodable(&mut self, cursor: LogCursor, stored: Option<Hash32>, error: &StoreError) {
        self.leaf(cursor, stored);
        self.fault(cursor, format!("the stored row cannot be decoded: {error}"));
    }

    fn fault(&mut self, cursor: LogCursor, reason: String) {
        if self
            .first_bad
            .as_ref()
            .is_some_and(|(first, _)| *first <= cursor)
        {
            return;
        }
        let bad = BadPosition {
            global_position: cursor.global_position,
            reason,
        };
        self.first_bad = Some((cursor, bad));
    }

    /// Each seal's number, link to the previous seal, range start and signature; named at the
    /// start of its range (the event after `from`).
    fn check_seal_chain(&mut self) {
        let mut faults = Vec::new();
        let mut previous: Option<&Seal> = None;
        for (index, seal) in self.seals.iter().enumerate() {
            let expected_seq = i64::try_from(index).unwrap_or(i64::MAX) + 1;
            let expected_prev = previous.map_or(Hash32::ZERO, |seal| seal.seal_hash);
            let expected_from = previous.map_or(LogCursor::START, |seal| seal.to);
            let problem = if seal.seq != expected_seq {
                Some(format!("seal {expected_seq} is missing"))
            } else if seal.prev_seal_hash != expected_prev {
                Some(format!(
                    "seal {} does not chain to seal {}",
                    seal.seq,
                    seal.seq - 1
                ))
            } else if seal.from != expected_from {
                Some(format!(
                    "seal {} does not start where seal {} ends",
                    seal.seq,
                    seal.seq - 1
                ))
            } else {
                seal.check_signature(self.keyring)
                    .err()
                    .map(|error| format!("seal {}: {error}", seal.seq))
            };
            if let Some(problem) = problem {
                // Just after `from`: before every event of the range.
                let at = LogCursor {
                    transaction_id: seal.from.transaction_id,
                    global_position: seal.from.global_position.saturating_add(1),
                };
                faults.push((at, problem));
            }
            previous = Some(seal);
        }
        for (at, problem) in faults {
            self.fault(at, problem);
        }
    }

    /// Closes the current seal's range: its count and Merkle root against the hashes seen.
    fn finish_seal(&mut self, next: Option<LogCursor>) {
        let Some(seal) = self.seals.get(self.seal_index) else {
            return;
        };
        let at = self.range_first.or(next).unwrap_or(seal.to);
        let count = i64::try_from(self.leaves.len()).unwrap_or(i64::MAX);
        let problem = if count != seal.event_count {
            Some(format!(
                "seal {} covers {} events, the log has {count} in its range (events deleted or inserted)",
                seal.seq, seal.event_count
            ))
        } else if merkle_root(&self.leaves) != seal.merkle_root {
            Some(format!(
                "seal {}: the Merkle root of its range does not match (events altered, inserted or reordered)",
                seal.seq
            ))
        } else {
            None
        };
        self.seals_checked += 1;
        self.seal_index += 1;
        self.leaves.clear();
        self.range_first = None;
        if let Some(problem) = problem {
            self.fault(at, problem);
        }
    }

    /// Counts the row at `cursor` with its stored hash into its seal's range (closing the
    /// ranges before it).
    fn leaf(&mut self, cursor: LogCursor, stored: Option<Hash32>) {
        self.events_checked += 1;
        while self
            .seals
            .get(self.seal_index)
            .is_some_and(|seal| cursor > seal.to)
        {
            self.finish_seal(Some(cursor));
        }
        match self.seals.get(self.seal_index) {
            Some(_) => {
                self.leaves.push(stored.unwrap_or(Hash32::ZERO));
                self.range_first.get_or_insert(cursor);
            }
            None => self.unsealed_events += 1,
        }
    }

    fn check(&mut self, row: IntegrityRow) {
        let cursor = row.cursor;
        self.leaf(cursor, row.event_hash);
        let head = self.heads.get(&row.stream_id);
        let expected_version = head.map_or(1, |head| head.version + 1);
        let prev_hash = head.map_or(Hash32::ZERO, |head| head.hash);
        let stored = row.event_hash;
        if let Some(stored) = stored {
            self.heads.insert(
                row.stream_id.clone(),
                StreamHead {
                    version: row.stream_version,
                    hash: stored,
                    cursor,
                },
            );
        }
        let Some(stored) = stored else {
            self.fault(
                cursor,
                "no event hash (written before the integrity migration or behind the store's back)"
                    .to_owned(),
            );
            return;
        };
        if row.stream_version != expected_version {
            self.fault(
                cursor,
                format!(
                    "stream {}: version {} where {expected_version} was due (events deleted, inserted or moved)",
                    row.stream_id, row.stream_version
                ),
            );
            return;
        }
        if row.recompute(&prev_hash) != stored {
            self.fault(
                cursor,
                format!(
                    "event {} ({} v{}): its hash does not match its content and its stream's chain",
                    row.event_id, row.stream_id, row.stream_version
                ),
            );
            return;
        }
        if is_office_signed(&row.event_type) {
            if let Err(problem) = self.check_office_signature(&row) {
                self.fault(cursor, format!("event {}: {problem}", row.event_id));
            }
        }
    }

    fn check_office_signature(&self, row: &IntegrityRow) -> Result<(), String> {
        let metadata: EventMetadata = serde_json::from_value(row.metadata.clone())
            .map_err(|error| format!("metadata: {error}"))?;
        let office = metadata
            .office
            .ok_or_else(|| format!("a {} names no office", row.event_type))?;
        // The office that signs is the record's: a recording names it at the top of its
        // payload, a correction in its declaration (a void names none). Another office's key
        // does not vouch for it. (Until 2026-12-07 only the metadata's office was compared.)
        let recorded_by = row
            .payload
            .get("office")
            .or_else(|| row.payload.pointer("/declaration/office"))
            .and_then(serde_json::Value::as_str);
        if let Some(recorded_by) = recorded_by.filter(|recorded_by| *recorded_by != office) {
            return Err(format!(
                "a {} of office {recorded_by} signed as office {office}",
                row.event_type
            ));
        }
        let signature = metadata
            .office_signature
            .ok_or_else(|| format!("a {} without its office's signature", row.event_type))?;
        let message = office_message(&row.stream_id, row.event_id, &row.event_type, &row.payload);
        self.keyring
            .verify(
                &office_owner(&office),
                &signature.key_id,
                &message,
                &signature.signature,
            )
            .map_err(|error| format!("office signature: {error}"))
    }

    /// After the last event: seals whose range was never reached, and the stream heads.
    fn finish(mut self, stream_heads: Vec<(String, i64, Option<Hash32>)>) -> VerifyReport {
        while self.seal_index < self.seals.len() {
            self.finish_seal(None);
        }
        for (stream_id, version, last_hash) in stream_heads {
            match self.heads.remove(&stream_id) {
                None => self.fault(
                    LogCursor::START,
                    format!("stream {stream_id} is at version {version} but has no event left"),
                ),
                Some(head) => {
                    if head.version != version || last_hash.is_some_and(|hash| hash != head.hash) {
                        self.fault(
                            head.cursor,
                            format!(
                                "stream {stream_id} ends at version {} here but was appended to version {version} (events deleted or altered)",
                                head.version
                            ),
                        );
                    }
                }
            }
        }
        let orphans: Vec<(String, LogCursor)> = self
            .heads
            .drain()
            .map(|(stream_id, head)| (stream_id, head.cursor))
            .collect();
        for (stream_id, cursor) in orphans {
            self.fault(
                cursor,
                format!("stream {stream_id} has events but was never appended to (forged)"),
            );
        }
        VerifyReport {
            events_checked: self.events_checked,
            seals_checked: self.seals_checked,
            unsealed_events: self.unsealed_events,
            anchors_checked: self.anchors_checked,
            first_bad: self.first_bad.map(|(_, bad)| bad),
        }
    }
}

/// Checks the whole log in one consistent snapshot: every event's hash and its stream's chain,
/// every seal (its range's Merkle root, the seal chain, the node's signature) and every life
/// event's office signature, with the public keys of `keyring`. Names the first bad position in
/// commit order.
///
/// The log alone cannot show that its newest seals were deleted and made again over rewritten
/// events (by someone able to write its tables, with the sealer signing the result):
/// [`verify_anchored`] compares seals kept outside the database.
pub async fn verify(store: &EventStore, keyring: &Keyring) -> Result<VerifyReport, StoreError> {
    verify_anchored(store, keyring, &[]).await
}

/// Why an anchor cannot be used: its own hash does not match its fields, or its signature is
/// not one of `keyring`'s node keys. Checked before [`verify_anchored`]: a bad anchor is the
/// auditor's evidence gone wrong, not the log's.
pub fn check_anchor(anchor: &Seal, keyring: &Keyring) -> Result<(), String> {
    anchor
        .check_signature(keyring)
        .map_err(|error| format!("anchor of seal {}: {error}", anchor.seq))
}

/// [`verify`], also comparing each of `anchors` (seals kept outside the database: the sealer's
/// anchor file, or seals an auditor fetched earlier) with the log's seal of the same number: a
/// seal gone or different is a fault at the start of the anchored range. The anchors'
/// signatures must have been checked ([`check_anchor`]).
pub async fn verify_anchored(
    store: &EventStore,
    keyring: &Keyring,
    anchors: &[Seal],
) -> Result<VerifyReport, StoreError> {
    let seals_sql = format!("SELECT {SEAL_COLUMNS} FROM log_seals ORDER BY seq");
    let events_sql =
        format!("SELECT {ROW_COLUMNS} FROM events ORDER BY transaction_id, global_position");
    let heads_sql = "SELECT stream_id, version, last_hash FROM streams";
    if let Some(pool) = store.postgres_pool() {
        let mut tx = pool.begin().await?;
        // One snapshot for seals, events and stream heads. A read-only transaction takes no
        // transaction id, so it holds back no gap-free reader.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let seals = sqlx::query(sqlx::AssertSqlSafe(seals_sql))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(decode_seal)
            .collect::<Result<Vec<_>, _>>()?;
        let mut verifier = Verifier::new(keyring, seals, anchors);
        {
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(events_sql)).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                check_row(&mut verifier, &row, decode_pg_row(&row))?;
            }
        }
        let heads = stream_heads(sqlx::query_as(heads_sql).fetch_all(&mut *tx).await?)?;
        tx.rollback().await?;
        return Ok(verifier.finish(heads));
    }
    let pool = sqlite_pool(store)?;
    let mut tx = pool.begin().await?;
    let seals = sqlx::query(sqlx::AssertSqlSafe(seals_sql))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(decode_seal)
        .collect::<Result<Vec<_>, _>>()?;
    let mut verifier = Verifier::new(keyring, seals, anchors);
    {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(events_sql)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            check_row(&mut verifier, &row, decode_sqlite_row(&row))?;
        }
    }
    let heads = stream_heads(sqlx::query_as(heads_sql).fetch_all(&mut *tx).await?)?;
    tx.rollback().await?;
    Ok(verifier.finish(heads))
}

fn stream_heads(
    rows: Vec<(String, i64, Option<Vec<u8>>)>,
) -> Result<Vec<(String, i64, Option<Hash32>)>, StoreError> {
    rows.into_iter()
        .map(|(stream_id, version, hash)| Ok((stream_id, version, hash_column(0, hash)?)))
        .collect()
}

/// An inclusion proof of one event: its fields, the hash of its stream's previous event, its
/// leaf index and audit path in the seal that covers it, and that seal.
pub async fn inclusion_proof(
    store: &EventStore,
    event_id: Uuid,
) -> Result<ProofLookup, StoreError> {
    let row_sql = format!("SELECT {ROW_COLUMNS} FROM events WHERE event_id = $1");
    let prev_sql = "SELECT event_hash FROM events WHERE stream_id = $1 AND stream_version = $2";
    let seal_sql = format!(
        "SELECT {SEAL_COLUMNS} FROM log_seals \
         WHERE (from_transaction_id, from_global_position) < ($1, $2) \
           AND (to_transaction_id, to_global_position) >= ($1, $2) ORDER BY seq LIMIT 1"
    );
    let range_sql = "SELECT transaction_id, global_position, event_hash FROM events \
         WHERE (transaction_id, global_position) > ($1, $2) \
           AND (transaction_id, global_position) <= ($3, $4) \
         ORDER BY transaction_id, global_position";
    macro_rules! lookup {
        ($pool:expr, $event_id:expr, $decode:expr) => {{
            let pool = $pool;
            let row = sqlx::query(sqlx::AssertSqlSafe(row_sql))
                .bind($event_id)
                .fetch_optional(pool)
                .await?;
            let Some(row) = row.as_ref().map($decode).transpose()? else {
                return Ok(ProofLookup::NoSuchEvent);
            };
            let prev: Option<Option<Vec<u8>>> = if row.stream_version > 1 {
                sqlx::query_scalar(prev_sql)
                    .bind(row.stream_id.clone())
                    .bind(row.stream_version - 1)
                    .fetch_optional(pool)
                    .await?
            } else {
                None
            };
            let seal = sqlx::query(sqlx::AssertSqlSafe(seal_sql))
                .bind(row.cursor.transaction_id)
                .bind(row.cursor.global_position)
                .fetch_optional(pool)
                .await?;
            let Some(seal) = seal.as_ref().map(decode_seal).transpose()? else {
                return Ok(ProofLookup::NotSealed);
            };
            let range: Vec<(i64, i64, Option<Vec<u8>>)> = sqlx::query_as(range_sql)
                .bind(seal.from.transaction_id)
                .bind(seal.from.global_position)
                .bind(seal.to.transaction_id)
                .bind(seal.to.global_position)
                .fetch_all(pool)
                .await?;
            (row, prev.flatten(), seal, range)
        }};
    }
    let (row, prev, seal, range) = match store.postgres_pool() {
        Some(pool) => lookup!(pool, event_id, decode_pg_row),
        None => lookup!(
            sqlite_pool(store)?,
            event_id.hyphenated().to_string(),
            decode_sqlite_row
        ),
    };
    let prev_hash = hash_column(row.cursor.global_position, prev)?.unwrap_or(Hash32::ZERO);
    let mut leaf_index = None;
    let mut hashes = Vec::with_capacity(range.len());
    for (index, (transaction_id, global_position, hash)) in range.into_iter().enumerate() {
        if (LogCursor {
            transaction_id,
            global_position,
        }) == row.cursor
        {
            leaf_index = Some(index);
        }
        hashes.push(hash_column(global_position, hash)?.unwrap_or(Hash32::ZERO));
    }
    let leaf_index = leaf_index.ok_or_else(|| {
        corrupt(
            row.cursor.global_position,
            "the event is not in its seal's range",
        )
    })?;
    Ok(ProofLookup::Proof(Box::new(InclusionProof {
        audit_path: audit_path(&hashes, leaf_index),
        leaf_index: leaf_index as u64,
        event: ProvenEvent {
            global_position: row.cursor.global_position,
            stream_id: row.stream_id,
            stream_version: row.stream_version,
            event_id: row.event_id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            payload: row.payload,
            metadata: row.metadata,
            prev_hash,
        },
        seal,
    })))
}
