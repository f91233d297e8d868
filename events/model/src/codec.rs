//! The one place that maps every event to its stored form (`event_type`, `schema_version`,
//! `payload`) and back, running upcasters on the way in.
//!
//! The stored payload is the event's body alone (`{"life_event_id": ..., "child": ...}`); the
//! type lives in `event_type`. cqrs-es serialises an event enum externally tagged
//! (`{"BirthRecorded": {...}}`): [`to_cqrs_payload`] and [`from_cqrs_payload`] convert, and
//! [`Upcaster`] accepts either form so `PersistedEventStore::with_upcasters(codec::upcasters())`
//! reads every stored version.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::DomainEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::{EventMetadata, NewEvent, RecordedEvent};
use crate::life_event::LifeEventEvent;
use crate::system_events::SystemEvent;
use crate::task::TaskEvent;

/// An event enum whose variants are named after their event types.
pub trait EventFamily: Serialize + DeserializeOwned {
    /// Every event type of the enum with its current schema version.
    const SCHEMAS: &'static [(&'static str, u32)];

    /// The event type of this value (its variant name).
    fn event_type(&self) -> &'static str;

    /// The current schema version of this value's type.
    fn schema_version(&self) -> u32 {
        Self::current_version(self.event_type()).unwrap_or(1)
    }

    /// The event of type `event_type` from its body at the current schema version, read in
    /// place (no copy of the body); `None` if the type is not of this enum.
    fn from_current_body(event_type: &str, body: &Value)
        -> Option<Result<Self, serde_json::Error>>;

    /// [`EventFamily::from_current_body`] from the body's JSON text, parsed straight into the
    /// event (no `serde_json::Value` between); `None` if the type is not of this enum.
    fn from_current_body_text(
        event_type: &str,
        body: &str,
    ) -> Option<Result<Self, serde_json::Error>>;

    /// The current schema version of `event_type`, if it belongs to this enum.
    fn current_version(event_type: &str) -> Option<u32> {
        Self::SCHEMAS
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, version)| *version)
    }
}

macro_rules! event_family {
    ($family:ident { $($variant:ident => $version:literal),+ $(,)? }) => {
        impl EventFamily for $family {
            const SCHEMAS: &'static [(&'static str, u32)] =
                &[$((stringify!($variant), $version)),+];

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant)),+
                }
            }

            fn from_current_body(
                event_type: &str,
                body: &Value,
            ) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $(stringify!($variant) => {
                        Some(serde::Deserialize::deserialize(body).map(Self::$variant))
                    })+
                    _ => None,
                }
            }

            fn from_current_body_text(
                event_type: &str,
                body: &str,
            ) -> Option<Result<Self, serde_json::Error>> {
                match event_type {
                    $(stringify!($variant) => {
                        Some(serde_json::from_str(body).map(Self::$variant))
                    })+
                    _ => None,
                }
            }
        }

        impl DomainEvent for $family {
            fn event_type(&self) -> String {
                EventFamily::event_type(self).to_owned()
            }

            fn event_version(&self) -> String {
                EventFamily::schema_version(self).to_string()
            }
        }
    };
}

event_family!(LifeEventEvent {
    BirthRecorded => 2,
    DeathRecorded => 2,
    LifeEventCorrected => 2,
    LifeEventVoided => 1,
});

event_family!(TaskEvent {
    TaskCreated => 1,
    TaskClaimed => 1,
    TaskCompleted => 1,
    TaskRejected => 1,
    TaskCancelled => 1,
    TaskAmended => 1,
    TaskOverdue => 1,
});

event_family!(SystemEvent {
    PersonalIdAssigned => 1,
    EligibilityDecided => 1,
    PolicyFailed => 1,
    PersonalDataRead => 1,
});

/// Every event type Lifeline stores, with its current schema version.
pub fn all_schemas() -> impl Iterator<Item = (&'static str, u32)> {
    LifeEventEvent::SCHEMAS
        .iter()
        .chain(TaskEvent::SCHEMAS)
        .chain(SystemEvent::SCHEMAS)
        .copied()
}

/// The current schema version of any stored event type.
pub fn current_version(event_type: &str) -> Option<u32> {
    all_schemas()
        .find(|(name, _)| *name == event_type)
        .map(|(_, version)| version)
}

/// Why a stored event could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type:?}")]
    UnknownEventType { event_type: String },
    #[error("{event_type} schema version {version} is not supported (current is {current})")]
    UnsupportedVersion {
        event_type: String,
        version: u32,
        current: u32,
    },
    #[error("cannot upcast {event_type} from schema version {from}: {message}")]
    Upcast {
        event_type: String,
        from: u32,
        message: String,
    },
    #[error("invalid {event_type} payload: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The stored form of an event: (event type, current schema version, payload body).
pub fn encode<E: EventFamily>(event: &E) -> (String, u32, Value) {
    let event_type = event.event_type();
    let payload = match serde_json::to_value(event) {
        Ok(Value::Object(mut tagged)) => tagged.remove(event_type).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (event_type.to_owned(), event.schema_version(), payload)
}

/// Reads a stored event of any schema version back into `E`, upcasting old versions first.
/// The payload may be the bare body or the cqrs-es tagged form `{"<event_type>": body}`.
pub fn decode<E: EventFamily>(
    event_type: &str,
    schema_version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    if E::current_version(event_type).is_none() {
        return Err(DecodeError::UnknownEventType {
            event_type: event_type.to_owned(),
        });
    }
    // Accept the cqrs-es tagged form too, so rows written either way read back.
    let body = upcast(
        event_type,
        schema_version,
        from_cqrs_payload(event_type, payload),
    )?;
    serde_json::from_value(to_cqrs_payload(event_type, body)).map_err(|source| {
        DecodeError::Payload {
            event_type: event_type.to_owned(),
            source,
        }
    })
}

/// [`decode`] of a stored event. A body stored at the current version is parsed straight from
/// the payload's text (or read in place from its `Value`, if one was parsed already), without
/// building or copying a `Value`.
pub fn decode_recorded<E: EventFamily>(event: &RecordedEvent) -> Result<E, DecodeError> {
    if event.payload.parsed().is_none() {
        return decode_recorded_text(event, event.payload.text());
    }
    let event_type = event.event_type.as_str();
    if E::current_version(event_type) == Some(event.schema_version) {
        let payload: &Value = &event.payload;
        let body = match payload {
            Value::Object(tagged) if tagged.len() == 1 => tagged.get(event_type).unwrap_or(payload),
            other => other,
        };
        if let Some(decoded) = E::from_current_body(event_type, body) {
            return decoded.map_err(|source| DecodeError::Payload {
                event_type: event_type.to_owned(),
                source,
            });
        }
    }
    decode(
        &event.event_type,
        event.schema_version,
        event.payload.to_value(),
    )
}

/// [`decode_recorded`] of a stored event whose payload is given as its stored JSON text
/// (`payload`; `event.payload` itself is not read). A body stored at the current version is
/// parsed straight into the event; any other form (an older version, the cqrs-es tagged form)
/// goes through [`decode`] with its upcasters, so both read the same events.
pub fn decode_recorded_text<E: EventFamily>(
    event: &RecordedEvent,
    payload: &str,
) -> Result<E, DecodeError> {
    let event_type = event.event_type.as_str();
    if E::current_version(event_type) == Some(event.schema_version) {
        if let Some(Ok(decoded)) = E::from_current_body_text(event_type, payload) {
            return Ok(decoded);
        }
    }
    let value: Value = serde_json::from_str(payload).map_err(|source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    })?;
    decode(event_type, event.schema_version, value)
}

/// An event ready to append, with its stored form.
pub fn to_new_event<E: EventFamily>(
    event: &E,
    event_id: Uuid,
    metadata: EventMetadata,
) -> NewEvent {
    let (event_type, schema_version, payload) = encode(event);
    NewEvent {
        event_id,
        event_type,
        schema_version,
        payload,
        metadata,
    }
}

/// Brings a payload body of `event_type` from `schema_version` to the current version.
pub fn upcast(event_type: &str, schema_version: u32, payload: Value) -> Result<Value, DecodeError> {
    let current = current_version(event_type).ok_or_else(|| DecodeError::UnknownEventType {
        event_type: event_type.to_owned(),
    })?;
    if schema_version == 0 || schema_version > current {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version: schema_version,
            current,
        });
    }
    let mut payload = payload;
    for from in schema_version..current {
        let step = match (event_type, from) {
            ("BirthRecorded", 1) => birth_recorded_v1_to_v2,
            ("DeathRecorded", 1) => death_recorded_v1_to_v2,
            ("LifeEventCorrected", 1) => life_event_corrected_v1_to_v2,
            _ => {
                return Err(DecodeError::Upcast {
                    event_type: event_type.to_owned(),
                    from,
                    message: "no upcaster for this version".to_owned(),
                })
            }
        };
        payload = step(payload).map_err(|message| DecodeError::Upcast {
            event_type: event_type.to_owned(),
            from,
            message,
        })?;
    }
    Ok(payload)
}

/// BirthRecorded v1 -> v2: `child.name` became `child.full_name`; `procedures` was added (v1
/// births applied for the whole group).
fn birth_recorded_v1_to_v2(payload: Value) -> Result<Value, String> {
    let mut body = into_object(payload)?;
    let child = body
        .get_mut("child")
        .and_then(Value::as_object_mut)
        .ok_or("child is missing")?;
    if let Some(name) = child.remove("name") {
        child.entry("full_name").or_insert(name);
    }
    body.entry("procedures").or_insert_with(|| {
        Value::from(
            crate::procedure::ProcedureGroup::Birth
                .procedures()
                .iter()
                .map(|procedure| procedure.as_str())
                .collect::<Vec<_>>(),
        )
    });
    Ok(Value::Object(body))
}

/// DeathRecorded v1 -> v2: `death.date` (a date) became `death.at` (date and time with offset);
/// the time of a v1 death is unknown: midnight Vietnam time, `time_known: false`.
fn death_recorded_v1_to_v2(payload: Value) -> Result<Value, String> {
    let mut body = into_object(payload)?;
    let death = body
        .get_mut("death")
        .and_then(Value::as_object_mut)
        .ok_or("death is missing")?;
    let date = death
        .remove("date")
        .and_then(|date| date.as_str().map(str::to_owned))
        .ok_or("death.date is missing")?;
    chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .map_err(|_| format!("death.date {date:?} is not a date"))?;
    death.insert(
        "at".to_owned(),
        Value::from(format!("{date}T00:00:00+07:00")),
    );
    death.insert("time_known".to_owned(), Value::Bool(false));
    Ok(Value::Object(body))
}

/// LifeEventCorrected v1 -> v2: the declaration it carries is brought to the current shape as
/// the record's own would be. Version 1 corrections carry either shape: those stored while
/// births and deaths were at version 1 have `child.name` and no `procedures`, or `death.date`;
/// later ones already the current shape, which this leaves as it is. (Until 2026-12-07 the
/// embedded declaration was never upcast: an old-shaped one did not decode, and its record
/// could no longer be loaded.)
fn life_event_corrected_v1_to_v2(payload: Value) -> Result<Value, String> {
    let mut body = into_object(payload)?;
    let declaration = body.remove("declaration").ok_or("declaration is missing")?;
    let kind = declaration
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("declaration.kind is missing")?
        .to_owned();
    let declaration = match kind.as_str() {
        "birth" => birth_recorded_v1_to_v2(declaration)?,
        "death"
            if declaration
                .get("death")
                .is_some_and(|death| death.get("date").is_some() && death.get("at").is_none()) =>
        {
            death_recorded_v1_to_v2(declaration)?
        }
        _ => declaration,
    };
    body.insert("declaration".to_owned(), declaration);
    Ok(Value::Object(body))
}

fn into_object(payload: Value) -> Result<Map<String, Value>, String> {
    match payload {
        Value::Object(body) => Ok(body),
        _ => Err("the payload is not an object".to_owned()),
    }
}

/// The cqrs-es form of a stored body: `{"<event_type>": body}`.
pub fn to_cqrs_payload(event_type: &str, body: Value) -> Value {
    let mut tagged = Map::new();
    tagged.insert(event_type.to_owned(), body);
    Value::Object(tagged)
}

/// The stored body of a cqrs-es payload; a body that is not tagged is answered as it is.
pub fn from_cqrs_payload(event_type: &str, payload: Value) -> Value {
    match payload {
        Value::Object(mut tagged) if tagged.len() == 1 && tagged.contains_key(event_type) => {
            tagged.remove(event_type).unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The cqrs-es upcaster for every Lifeline event type: brings a stored event (tagged or bare
/// body, any version) to the current version in the tagged form cqrs-es deserialises. An event
/// it cannot upcast is left as it is, so cqrs-es reports the payload error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Upcaster;

impl EventUpcaster for Upcaster {
    fn can_upcast(&self, event_type: &str, _event_version: &str) -> bool {
        current_version(event_type).is_some()
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        let Some(current) = current_version(&event.event_type) else {
            return event;
        };
        let version = event
            .event_version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .unwrap_or(1);
        let body = from_cqrs_payload(&event.event_type, event.payload.clone());
        match upcast(&event.event_type, version, body) {
            Ok(body) => SerializedEvent {
                payload: to_cqrs_payload(&event.event_type, body),
                event_version: current.to_string(),
                ..event
            },
            Err(_) => event,
        }
    }
}

/// The upcasters to give `PersistedEventStore::with_upcasters`.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(Upcaster)]
}
