//! Fuzzes `codec::decode` (with its upcasters) for every event family: an event type from the
//! known list (first byte), a schema version (second byte), then arbitrary JSON.
#![no_main]

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::Aggregate;
use libfuzzer_sys::fuzz_target;
use lifeline_model::codec::{self, EventFamily, Upcaster};
use lifeline_model::life_event::{LifeEvent, LifeEventEvent};
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::{Task, TaskEvent};

fn check<E: EventFamily + PartialEq + std::fmt::Debug>(
    event_type: &str,
    version: u32,
    payload: &serde_json::Value,
) -> Option<E> {
    let event: E = codec::decode(event_type, version, payload.clone()).ok()?;
    // What decodes re-encodes at the current version and decodes to the same event.
    let (stored_type, stored_version, body) = codec::encode(&event);
    assert_eq!(stored_type, event_type);
    let again: E = codec::decode(&stored_type, stored_version, body).expect("re-decode");
    assert_eq!(again, event);
    Some(event)
}

fuzz_target!(|bytes: &[u8]| {
    let [type_byte, version_byte, json @ ..] = bytes else {
        return;
    };
    let schemas: Vec<(&str, u32)> = codec::all_schemas().collect();
    let (event_type, _) = schemas[usize::from(*type_byte) % schemas.len()];
    // Mostly small versions (0..=3 hit the interesting edges), sometimes anything.
    let version = if *version_byte < 200 {
        u32::from(*version_byte % 4)
    } else {
        u32::from(*version_byte) << 24
    };
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };

    if let Some(event) = check::<LifeEventEvent>(event_type, version, &payload) {
        LifeEvent::default().apply(event);
    }
    if let Some(event) = check::<TaskEvent>(event_type, version, &payload) {
        Task::default().apply(event);
    }
    let _ = check::<SystemEvent>(event_type, version, &payload);

    // The cqrs-es upcaster path, with a version text as stored.
    let upcaster = Upcaster;
    if upcaster.can_upcast(event_type, &version.to_string()) {
        let event = SerializedEvent {
            aggregate_id: "fuzz".to_owned(),
            sequence: 1,
            aggregate_type: "fuzz".to_owned(),
            event_type: event_type.to_owned(),
            event_version: version.to_string(),
            payload,
            metadata: serde_json::Value::Null,
        };
        let _ = upcaster.upcast(event);
    }
});
