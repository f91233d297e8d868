//! The cqrs-es event repository over the store: aggregates run on
//! `CqrsFramework<A, PersistedEventStore<LifelineRepository, A>>`.
//!
//! Mapping: the aggregate id IS the stream id (`birth-<uuid>`); `sequence` is the stream
//! version; `event_version` is the schema version in decimal (`"2"`; a `"2.0"` style version is
//! read by its major number); cqrs-es metadata (a string map) carries the envelope metadata
//! under the keys `actor`, `role`, `office`, `correlation_id`, `causation_id`,
//! `idempotency_key`, `recorded_at`, and optionally `command_id`: with it, the event ids of a
//! command are UUIDv5(command_id, "<index in batch>"), so a retried command is idempotent;
//! without it they are new UUIDv7. Other keys are not stored. On read the metadata map has the
//! same keys plus `event_id`.
//!
//! Snapshots are not supported (none are read, updates are ignored): use
//! `PersistedEventStore::new_event_store`.

use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use lifeline_model::envelope::OfficeSignature;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, NewEvent, RecordedEvent, Role, StreamId,
    StreamVersion,
};
use lifeline_model::integrity::{is_office_signed, sign_office_event, KeyPair};
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

use crate::append::AppendOutcome;
use crate::error::{AppendError, StoreError};
use crate::store::EventStore;

/// The cqrs-es `PersistedEventRepository` of Lifeline.
///
/// cqrs-es serialises an event enum externally tagged (`{"<variant>": body}`); the log stores
/// the bare body, whichever path appended the event, and the tag is put back on read. So an
/// aggregate's event variants must be named like their `event_type()` (Lifeline's all are).
#[derive(Debug, Clone)]
pub struct LifelineRepository {
    store: EventStore,
    /// Signs life events (`integrity::OFFICE_SIGNED_EVENT_TYPES`) with their office's key
    /// before they are appended; `None`: events are appended unsigned (and `verify` reports
    /// unsigned life events).
    office_signer: Option<Arc<dyn OfficeSigner>>,
}

/// The keys of the registry offices, for signing their life events.
pub trait OfficeSigner: Send + Sync + std::fmt::Debug {
    /// The signing key of `office`.
    fn office_key(&self, office: &str) -> Result<KeyPair, String>;
}

/// An office whose key could not be had: the event is not appended.
#[derive(Debug, thiserror::Error)]
#[error("no signing key for office {office}: {reason}")]
pub struct OfficeKeyError {
    pub office: String,
    pub reason: String,
}

/// A cqrs-es field that cannot be mapped to the envelope.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("metadata key {key:?} has an invalid value {value:?}")]
    InvalidMetadata { key: &'static str, value: String },
    #[error("metadata is not a JSON object of strings")]
    MetadataShape,
    #[error("event version {0:?} is not a schema version number")]
    EventVersion(String),
    #[error("sequence {0} is out of range")]
    Sequence(usize),
    #[error("a batch mixes aggregates {0:?} and {1:?}")]
    MixedAggregates(String, String),
}

impl LifelineRepository {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            office_signer: None,
        }
    }

    /// This repository, signing every life event with its office's key before the append.
    pub fn with_office_signer(self, signer: Arc<dyn OfficeSigner>) -> Self {
        Self {
            office_signer: Some(signer),
            ..self
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// What `persist` does (signs, maps, appends one aggregate's events), answering where the
    /// events went: `None` if the batch was stored before under the same event ids (a retried
    /// command), which changes nothing.
    pub async fn append_serialized(
        &self,
        events: &[SerializedEvent],
    ) -> Result<Option<AppendOutcome>, PersistenceError> {
        let Some((stream, expected, new_events)) = self.to_append(events)? else {
            return Ok(None);
        };
        appended(
            &stream,
            self.store.append(&stream, expected, &new_events).await,
        )
    }

    /// [`Self::append_serialized`] with a last word: in a transaction of its own, the events are
    /// written (which holds their stream until the commit), then the event `guard` is read and
    /// handed to `check` (`None` if it is not stored); a refusal rolls the append back and is
    /// answered as `Ok(Err(refusal))`, with nothing stored.
    ///
    /// The read comes after the stream is held, so it sees what any writer that held the same
    /// stream first committed meanwhile: a policy that read the stream `FOR SHARE`
    /// (`StoreTransaction::read_streams_held`) and stored `guard` in that transaction makes this
    /// append wait for its commit, and `check` then sees `guard`. A writer that holds the
    /// stream after this append reads it with these events. A batch stored before (a retried
    /// command) is not checked again: `Ok(Ok(None))`, or its first outcome.
    pub async fn append_serialized_checked<E>(
        &self,
        events: &[SerializedEvent],
        guard: Uuid,
        check: impl FnOnce(Option<&RecordedEvent>) -> Result<(), E>,
    ) -> Result<Result<Option<AppendOutcome>, E>, PersistenceError> {
        let Some((stream, expected, new_events)) = self.to_append(events)? else {
            return Ok(Ok(None));
        };
        let mut tx = self.store.begin().await.map_err(store_error)?;
        let outcome = match appended(&stream, tx.append(&stream, expected, &new_events).await) {
            Ok(Some(outcome)) if !outcome.already_stored => outcome,
            other => {
                // Nothing was written: the rollback only ends the transaction, and an error
                // of its own would hide the answer.
                let _ = tx.rollback().await;
                return other.map(Ok);
            }
        };
        let guarded = tx.event_by_id(guard).await.map_err(store_error)?;
        if let Err(refusal) = check(guarded.as_ref()) {
            tx.rollback().await.map_err(store_error)?;
            return Ok(Err(refusal));
        }
        tx.commit().await.map_err(store_error)?;
        Ok(Ok(Some(outcome)))
    }

    /// One aggregate's serialised events as an append: the stream, the version expected and the
    /// events, signed when the repository signs; `None` for no events.
    fn to_append(
        &self,
        events: &[SerializedEvent],
    ) -> Result<Option<(StreamId, ExpectedVersion, Vec<NewEvent>)>, PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        if let Some(other) = events
            .iter()
            .find(|event| event.aggregate_id != first.aggregate_id)
        {
            return Err(unknown(MappingError::MixedAggregates(
                first.aggregate_id.clone(),
                other.aggregate_id.clone(),
            )));
        }
        let stream = parse_stream(&first.aggregate_id)?;
        let expected = match first.sequence {
            0 | 1 => ExpectedVersion::NoStream,
            sequence => ExpectedVersion::Exact(StreamVersion(
                i64::try_from(sequence - 1)
                    .map_err(|_| unknown(MappingError::Sequence(sequence)))?,
            )),
        };
        let mut new_events = events
            .iter()
            .enumerate()
            .map(|(index, event)| to_new_event(index, event))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(signer) = &self.office_signer {
            for event in &mut new_events {
                if !is_office_signed(&event.event_type) {
                    continue;
                }
                let Some(office) = event.metadata.office.clone() else {
                    continue;
                };
                let key = signer
                    .office_key(&office)
                    .map_err(|reason| unknown(OfficeKeyError { office, reason }))?;
                let (key_id, signature) = sign_office_event(
                    &key,
                    stream.as_str(),
                    event.event_id,
                    &event.event_type,
                    &event.payload,
                );
                event.metadata.office_signature = Some(OfficeSignature { key_id, signature });
            }
        }
        Ok(Some((stream, expected, new_events)))
    }
}

/// An append's answer as cqrs-es takes it: where the events went, `None` for a batch stored
/// before under the same event ids (a retried command, which changes nothing).
fn appended(
    stream: &StreamId,
    result: Result<AppendOutcome, AppendError>,
) -> Result<Option<AppendOutcome>, PersistenceError> {
    match result {
        Ok(outcome) => Ok(Some(outcome)),
        Err(AppendError::Conflict { .. }) => Err(PersistenceError::OptimisticLockError),
        // Every event id of the batch is stored in this stream already: the command (same
        // command id) was applied before and is being retried; it changes nothing.
        Err(AppendError::EventIdMismatch {
            stored_stream,
            stored_count,
            batch_len,
            ..
        }) if stored_stream == *stream && stored_count == batch_len => Ok(None),
        Err(AppendError::Store(error)) => Err(store_error(error)),
        Err(error) => Err(unknown(error)),
    }
}

impl PersistedEventRepository for LifelineRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.get_last_events::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let stream = parse_stream(aggregate_id)?;
        let after = i64::try_from(last_sequence)
            .map_err(|_| unknown(MappingError::Sequence(last_sequence)))?;
        let events = self
            .store
            .read_stream_after(&stream, StreamVersion(after))
            .await
            .map_err(store_error)?;
        events.iter().map(to_serialized::<A>).collect()
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append_serialized(events).await.map(|_| ())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self.get_events::<A>(aggregate_id).await?;
        let (mut feed, stream) = ReplayStream::new(events.len().max(1));
        for event in events {
            feed.push(Ok(event)).await?;
        }
        Ok(stream)
    }

    /// Every event of every stream whose kind (the part before the first `-`) is `A::TYPE`,
    /// in commit order. Scans the whole log: meant for rebuilding a view, not for requests.
    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        const PAGE: usize = 500;
        let (mut feed, stream) = ReplayStream::new(PAGE);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut cursor = LogCursor::START;
            loop {
                let page = match store.read_all(cursor, PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = feed.push(Err(store_error(error))).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                cursor = last.cursor();
                for event in page
                    .iter()
                    .filter(|event| event.stream_id.kind() == A::TYPE)
                {
                    if feed.push(to_serialized::<A>(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }
}

fn to_serialized<A: Aggregate>(event: &RecordedEvent) -> Result<SerializedEvent, PersistenceError> {
    let sequence = usize::try_from(event.stream_version.0).map_err(|_| {
        PersistenceError::DeserializationError(Box::new(StoreError::Corrupt {
            global_position: event.global_position.0,
            reason: format!("stream version {}", event.stream_version.0),
        }))
    })?;
    Ok(SerializedEvent {
        aggregate_id: event.stream_id.to_string(),
        sequence,
        aggregate_type: A::TYPE.to_owned(),
        event_type: event.event_type.clone(),
        event_version: event.schema_version.to_string(),
        // cqrs-es deserialises the externally tagged form `{"<event type>": body}`.
        payload: tagged_payload(&event.event_type, event.payload.to_value()),
        metadata: metadata_to_map(event),
    })
}

/// The envelope metadata as cqrs-es' string map.
pub fn metadata_to_map(event: &RecordedEvent) -> Value {
    let metadata = &event.metadata;
    let mut map = serde_json::Map::new();
    let mut put = |key: &str, value: String| {
        map.insert(key.to_owned(), Value::String(value));
    };
    put("event_id", event.event_id.to_string());
    put("actor", metadata.actor.clone());
    put("role", role_name(metadata.role).to_owned());
    put("correlation_id", metadata.correlation_id.to_string());
    put("recorded_at", metadata.recorded_at.to_rfc3339());
    if let Some(office) = &metadata.office {
        put("office", office.clone());
    }
    if let Some(causation_id) = metadata.causation_id {
        put("causation_id", causation_id.to_string());
    }
    if let Some(key) = &metadata.idempotency_key {
        put("idempotency_key", key.clone());
    }
    Value::Object(map)
}

fn to_new_event(index: usize, event: &SerializedEvent) -> Result<NewEvent, PersistenceError> {
    let map = match &event.metadata {
        Value::Object(map) => map,
        Value::Null => &serde_json::Map::new(),
        _ => return Err(unknown(MappingError::MetadataShape)),
    };
    let get = |key: &'static str| -> Result<Option<&str>, PersistenceError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.as_str())),
            Some(_) => Err(unknown(MappingError::MetadataShape)),
        }
    };
    let invalid = |key: &'static str, value: &str| {
        unknown(MappingError::InvalidMetadata {
            key,
            value: value.to_owned(),
        })
    };
    let parse_uuid = |key: &'static str| -> Result<Option<Uuid>, PersistenceError> {
        get(key)?
            .map(|value| Uuid::parse_str(value).map_err(|_| invalid(key, value)))
            .transpose()
    };
    let role = match get("role")? {
        None => Role::System,
        Some(value) => serde_json::from_value(Value::String(value.to_owned()))
            .map_err(|_| invalid("role", value))?,
    };
    let recorded_at = match get("recorded_at")? {
        None => Utc::now(),
        Some(value) => DateTime::parse_from_rfc3339(value)
            .map_err(|_| invalid("recorded_at", value))?
            .with_timezone(&Utc),
    };
    let event_id = match parse_uuid("command_id")? {
        Some(command_id) => Uuid::new_v5(&command_id, index.to_string().as_bytes()),
        None => Uuid::now_v7(),
    };
    let metadata = EventMetadata {
        actor: get("actor")?.unwrap_or("system").to_owned(),
        role,
        office: get("office")?.map(str::to_owned),
        correlation_id: parse_uuid("correlation_id")?.unwrap_or_else(Uuid::new_v4),
        causation_id: parse_uuid("causation_id")?,
        recorded_at,
        idempotency_key: get("idempotency_key")?.map(str::to_owned),
        office_signature: None,
    };
    Ok(NewEvent {
        event_id,
        event_type: event.event_type.clone(),
        schema_version: parse_event_version(&event.event_version)?,
        // The log holds the bare body, the same whichever path appended the event.
        payload: bare_payload(&event.event_type, event.payload.clone()),
        metadata,
    })
}

/// The body the log stores for a cqrs-es payload: the value inside the `{"<event type>": body}`
/// tag, or null for a unit variant (serialised as the bare string `"<event type>"`).
fn bare_payload(event_type: &str, payload: Value) -> Value {
    match payload {
        Value::Object(mut tagged) if tagged.len() == 1 && tagged.contains_key(event_type) => {
            tagged.remove(event_type).unwrap_or(Value::Null)
        }
        Value::String(name) if name == event_type => Value::Null,
        other => other,
    }
}

/// The cqrs-es form of a stored body: the inverse of [`bare_payload`].
fn tagged_payload(event_type: &str, body: Value) -> Value {
    match body {
        Value::Null => Value::String(event_type.to_owned()),
        body => {
            let mut tagged = serde_json::Map::new();
            tagged.insert(event_type.to_owned(), body);
            Value::Object(tagged)
        }
    }
}

fn parse_event_version(event_version: &str) -> Result<u32, PersistenceError> {
    let major = event_version.split('.').next().unwrap_or_default();
    major
        .parse()
        .map_err(|_| unknown(MappingError::EventVersion(event_version.to_owned())))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Registrar => "registrar",
        Role::Agency => "agency",
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

fn parse_stream(aggregate_id: &str) -> Result<StreamId, PersistenceError> {
    StreamId::parse(aggregate_id).map_err(unknown)
}

fn store_error(error: StoreError) -> PersistenceError {
    PersistenceError::ConnectionError(Box::new(error))
}

fn unknown(error: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialized(metadata: Value, event_version: &str) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: "birth-1".to_owned(),
            sequence: 1,
            aggregate_type: "birth".to_owned(),
            event_type: "BirthRecorded".to_owned(),
            event_version: event_version.to_owned(),
            payload: serde_json::json!({}),
            metadata,
        }
    }

    #[test]
    fn command_ids_make_event_ids_repeatable() {
        let command_id = Uuid::new_v4().to_string();
        let metadata =
            serde_json::json!({ "command_id": command_id, "actor": "u1", "role": "registrar" });
        let first = to_new_event(0, &serialized(metadata.clone(), "1")).unwrap();
        let again = to_new_event(0, &serialized(metadata.clone(), "1")).unwrap();
        let second = to_new_event(1, &serialized(metadata, "1")).unwrap();
        assert_eq!(first.event_id, again.event_id);
        assert_ne!(first.event_id, second.event_id);
        assert_eq!(first.metadata.role, Role::Registrar);
        assert_eq!(first.metadata.actor, "u1");
    }

    #[test]
    fn missing_metadata_gets_defaults_and_bad_metadata_is_refused() {
        let event = to_new_event(0, &serialized(serde_json::json!({}), "2.0")).unwrap();
        assert_eq!(event.metadata.role, Role::System);
        assert_eq!(event.schema_version, 2);
        assert!(to_new_event(0, &serialized(serde_json::json!({ "role": "king" }), "1")).is_err());
        assert!(to_new_event(0, &serialized(serde_json::json!({}), "one")).is_err());
    }
}
