//! The envelope every stored event travels in: stream ids, positions, versions and metadata.
//!
//! These types are what the store reads and writes; they know nothing of what a payload means.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The position of an event in the whole log, assigned by the store at append time.
///
/// Positions are unique and increase with append order, but a reader must not use them alone as
/// a cursor on PostgreSQL: see [`LogCursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GlobalPosition(pub i64);

/// The version of a stream: the number of events in it. The first event of a stream has version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamVersion(pub i64);

/// What an append expects of its stream before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check at all.
    Any,
    /// The stream must not exist yet ("stream must not exist").
    NoStream,
    /// The stream's current version must be exactly this.
    Exact(StreamVersion),
}

/// Where a reader of the global log stands: the last event it has taken, in commit order.
///
/// On PostgreSQL commit order is the pair (`transaction_id`, `global_position`): a sequence value
/// taken by one transaction may become visible after a later one commits, so a reader that only
/// remembered "position > N" would skip it. On SQLite (one writer) `transaction_id` equals the
/// position's own row order and the pair still orders correctly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogCursor {
    pub transaction_id: i64,
    pub global_position: i64,
}

impl LogCursor {
    /// The cursor before the first event of the log.
    pub const START: LogCursor = LogCursor {
        transaction_id: 0,
        global_position: 0,
    };
}

/// A stream id such as `birth-<uuid>`, `death-<uuid>`, `task-<uuid>`, `person-<pin>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

/// A stream id that is empty, too long, or has characters outside `[a-z0-9-_.:]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id {0:?}: expected <kind>-<id> in lowercase letters, digits, '-', '_', '.', ':' (at most 200 characters)")]
pub struct InvalidStreamId(pub String);

impl StreamId {
    pub const MAX_LEN: usize = 200;

    /// Parses a stream id, refusing anything that is not `<kind>-<id>` in a safe alphabet.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidStreamId> {
        let value = value.into();
        let well_formed = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.contains('-')
            && !value.starts_with('-')
            && value.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.' | b':')
            });
        if well_formed {
            Ok(Self(value))
        } else {
            Err(InvalidStreamId(value))
        }
    }

    /// Builds `<kind>-<id>`; the caller guarantees both parts are in the safe alphabet.
    pub fn for_kind(kind: &str, id: impl fmt::Display) -> Result<Self, InvalidStreamId> {
        Self::parse(format!("{kind}-{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`: `birth`, `death`, `task`, `person`...
    pub fn kind(&self) -> &str {
        self.0.split('-').next().unwrap_or_default()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

/// Who acts in the system. `System` is Lifeline itself (policies, watchers, the relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Registrar,
    Agency,
    Auditor,
    Operator,
    System,
}

/// Who recorded an event, why, and in answer to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The person or process that acted (a user id, or `policy:<name>` for Lifeline itself).
    pub actor: String,
    pub role: Role,
    /// The office or agency the actor acted for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office: Option<String>,
    /// Shared by every event that follows from one request.
    pub correlation_id: Uuid,
    /// The event (or request) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
    /// The client's `Idempotency-Key`, when the event came from an HTTP request that had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The recording office's Ed25519 signature of a life event (see
    /// `integrity::office_message`); absent on every other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office_signature: Option<OfficeSignature>,
}

/// An office's signature of a life event: which key, and the signature in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficeSignature {
    pub key_id: String,
    pub signature: String,
}

impl EventMetadata {
    /// Metadata for an event Lifeline records by itself, caused by `cause`.
    pub fn system(
        actor: impl Into<String>,
        correlation_id: Uuid,
        cause: Option<Uuid>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            actor: actor.into(),
            role: Role::System,
            office: None,
            correlation_id,
            causation_id: cause,
            recorded_at: at,
            idempotency_key: None,
            office_signature: None,
        }
    }
}

/// An event about to be appended. `event_id` is the idempotency key of the append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
}

/// A stored event's payload: the JSON text as read from the log (checked to be JSON when read,
/// without building anything from it), parsed into a `serde_json::Value` only when a reader
/// asks for one (`Deref`, once per value). Readers that parse the payload into their own types
/// take [`Payload::text`] instead ([`crate::codec::decode_recorded`] does), so the live readers
/// never build and drop a `Value` tree per event read.
pub struct Payload {
    text: Box<serde_json::value::RawValue>,
    value: OnceLock<serde_json::Value>,
}

impl Payload {
    /// The payload of an event read without it (JSON `null`).
    pub fn null() -> Self {
        Self::from(serde_json::Value::Null)
    }

    /// A payload from its JSON text; an error if the text is not one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Self::from_raw)
    }

    /// A payload from JSON text already checked to be one JSON value.
    pub fn from_raw(text: Box<serde_json::value::RawValue>) -> Self {
        Self {
            text,
            value: OnceLock::new(),
        }
    }

    /// The payload's JSON text, as stored.
    pub fn text(&self) -> &str {
        self.text.get()
    }

    /// Whether the payload is JSON `null` (an event read without its payload).
    pub fn is_null(&self) -> bool {
        self.text.get() == "null"
    }

    /// The payload as a `serde_json::Value` of its own (parsed from the text, not kept, unless
    /// one was parsed already).
    pub fn to_value(&self) -> serde_json::Value {
        match self.value.get() {
            Some(value) => value.clone(),
            None => serde_json::from_str(self.text.get()).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The `Value`, if one was already parsed or given (a reader may then read it in place).
    pub fn parsed(&self) -> Option<&serde_json::Value> {
        self.value.get()
    }

    /// The payload's top-level [`TOPIC_FIELD`] if it is a string: the event's
    /// [`EventHeader::topic`], as the stores' header reads select it.
    pub fn topic(&self) -> Option<String> {
        match self.value.get() {
            Some(value) => value.get(TOPIC_FIELD)?.as_str().map(str::to_owned),
            None => {
                #[derive(serde::Deserialize)]
                struct Topic {
                    #[serde(default)]
                    procedure: Option<serde_json::Value>,
                }
                let topic: Topic = serde_json::from_str(self.text.get()).ok()?;
                match topic.procedure? {
                    serde_json::Value::String(topic) => Some(topic),
                    _ => None,
                }
            }
        }
    }
}

/// The payload field an event's [`EventHeader::topic`] is read from (a task's creation and
/// completion name their procedure there).
pub const TOPIC_FIELD: &str = "procedure";

impl Deref for Payload {
    type Target = serde_json::Value;

    fn deref(&self) -> &serde_json::Value {
        // The text was checked to be JSON when the payload was made, so this parse cannot
        // fail short of a value nested deeper than serde_json's recursion limit, which
        // `RawValue`'s own check refuses too.
        self.value.get_or_init(|| {
            serde_json::from_str(self.text.get()).unwrap_or(serde_json::Value::Null)
        })
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        let text = serde_json::value::to_raw_value(&value)
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        let cell = OnceLock::new();
        let _ = cell.set(value);
        Self { text, value: cell }
    }
}

impl Clone for Payload {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            value: self.value.clone(),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.get())
    }
}

/// Payloads are equal when their JSON values are (whatever the spacing or key order of the
/// texts they were read from).
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.text.get() == other.text.get() || **self == **other
    }
}

impl PartialEq<serde_json::Value> for Payload {
    fn eq(&self, other: &serde_json::Value) -> bool {
        **self == *other
    }
}

impl PartialEq<Payload> for serde_json::Value {
    fn eq(&self, other: &Payload) -> bool {
        *self == **other
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value.get() {
            Some(value) => value.serialize(serializer),
            None => self.text.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::from)
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub global_position: GlobalPosition,
    /// Commit-order key together with `global_position` (see [`LogCursor`]).
    pub transaction_id: i64,
    pub stream_id: StreamId,
    pub stream_version: StreamVersion,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Payload,
    pub metadata: EventMetadata,
}

impl RecordedEvent {
    /// The cursor that points at this event: a reader that saved it resumes right after it.
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            transaction_id: self.transaction_id,
            global_position: self.global_position.0,
        }
    }

    /// The event without its payload and metadata.
    pub fn header(&self) -> EventHeader {
        EventHeader {
            global_position: self.global_position,
            transaction_id: self.transaction_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            topic: self.payload.topic(),
        }
    }
}

/// A stored event read with its payload left as the stored JSON text, for a reader that parses
/// it straight into its own types (a projection rebuild) instead of into a
/// `serde_json::Value` first: `event.payload` is `Value::Null`, `payload` holds the text.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEventText {
    pub event: RecordedEvent,
    pub payload: String,
}

/// A stored event without its payload and metadata: where it stands in the log and what it is.
/// Enough to route it (the relay's notices) and to move a cursor past it, read without
/// transferring or decoding any JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    pub global_position: GlobalPosition,
    /// Commit-order key together with `global_position` (see [`LogCursor`]).
    pub transaction_id: i64,
    pub stream_id: StreamId,
    pub stream_version: StreamVersion,
    pub event_id: Uuid,
    pub event_type: String,
    /// The procedure the event names, if its payload has a top-level `procedure` string
    /// ([`TOPIC_FIELD`]; a task's creation and completion): part of its notice's subject on the
    /// bus.
    pub topic: Option<String>,
}

impl EventHeader {
    /// The cursor that points at this event (as [`RecordedEvent::cursor`]).
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            transaction_id: self.transaction_id,
            global_position: self.global_position.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_parsed_strictly() {
        assert!(StreamId::parse("birth-3f1c").is_ok());
        assert!(StreamId::parse("person-079190001234").is_ok());
        for bad in [
            "",
            "birth",
            "-x",
            "Birth-1",
            "birth-1 2",
            "birth-1;drop",
            &"a-".repeat(200),
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(StreamId::parse("task-9").unwrap().kind(), "task");
    }

    #[test]
    fn payloads_read_as_text_parse_only_when_asked() {
        let read = Payload::from_text("{ \"b\": [1, 2],\n \"a\": \"Nguyễn\" }".to_owned()).unwrap();
        assert!(read.parsed().is_none());
        assert_eq!(read.text(), "{ \"b\": [1, 2],\n \"a\": \"Nguyễn\" }");
        // Equal by value, whatever the spacing or key order of the text.
        let given = Payload::from(serde_json::json!({"a": "Nguyễn", "b": [1, 2]}));
        assert_eq!(read, given);
        assert_eq!(read, serde_json::json!({"a": "Nguyễn", "b": [1, 2]}));
        assert_ne!(
            read,
            Payload::from(serde_json::json!({"a": "Nguyễn", "b": [2, 1]}))
        );
        assert_eq!(read["a"], "Nguyễn");
        assert!(read.parsed().is_some(), "parsed once asked, and kept");
        // Serialised as the JSON value it holds.
        let text = serde_json::to_string(&Payload::from_text("{\"n\":1}".to_owned()).unwrap());
        assert_eq!(text.unwrap(), "{\"n\":1}");
        let round: Payload = serde_json::from_str("{\"n\": 1}").unwrap();
        assert_eq!(round, serde_json::json!({"n": 1}));
        assert!(Payload::null().is_null());
        assert_eq!(Payload::null(), serde_json::Value::Null);
        assert_eq!(
            Payload::from_text("{\"n\":1}".to_owned())
                .unwrap()
                .to_value(),
            serde_json::json!({"n": 1})
        );
    }

    #[test]
    fn text_that_is_not_one_json_value_is_refused() {
        for bad in ["", "{", "{\"a\":1} {\"b\":2}", "nul", "[1,]"] {
            assert!(
                Payload::from_text(bad.to_owned()).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn cursors_order_by_transaction_then_position() {
        let early_tx_late_pos = LogCursor {
            transaction_id: 10,
            global_position: 50,
        };
        let late_tx_early_pos = LogCursor {
            transaction_id: 11,
            global_position: 40,
        };
        assert!(early_tx_late_pos < late_tx_early_pos);
    }
}
