//! Stored payloads of every schema version of every event type, read back through the decoder.
//!
//! A fixture is never edited once committed: a new schema version adds a new file.

use std::path::PathBuf;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use lifeline_model::codec::{self, all_schemas, decode, encode, DecodeError, EventFamily};
use lifeline_model::declaration::Declaration;
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::{TaskEvent, TaskOutcome};
use lifeline_model::values::Sex;
use serde_json::{json, Value};

fn fixture(event_type: &str, version: u32) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{event_type}.v{version}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    serde_json::from_str(&text).unwrap()
}

fn read<E: EventFamily>(event_type: &str, version: u32) -> E {
    decode(event_type, version, fixture(event_type, version))
        .unwrap_or_else(|error| panic!("{event_type} v{version}: {error}"))
}

fn life_event(event_type: &str, version: u32) -> LifeEventEvent {
    read(event_type, version)
}

fn task(event_type: &str, version: u32) -> TaskEvent {
    read(event_type, version)
}

fn system(event_type: &str, version: u32) -> SystemEvent {
    read(event_type, version)
}

#[test]
fn every_version_of_every_event_type_has_a_fixture_that_decodes_and_reencodes() {
    for (event_type, current) in all_schemas() {
        for version in 1..=current {
            let payload = fixture(event_type, version);
            let (encoded_type, encoded_version, encoded) =
                if LifeEventEvent::current_version(event_type).is_some() {
                    encode(&decode::<LifeEventEvent>(event_type, version, payload).unwrap())
                } else if TaskEvent::current_version(event_type).is_some() {
                    encode(&decode::<TaskEvent>(event_type, version, payload).unwrap())
                } else {
                    encode(&decode::<SystemEvent>(event_type, version, payload).unwrap())
                };
            assert_eq!(
                (encoded_type.as_str(), encoded_version),
                (event_type, current)
            );
            if version == current {
                assert_eq!(
                    encoded,
                    fixture(event_type, version),
                    "{event_type} v{version} round trip"
                );
            }
        }
    }
}

#[test]
fn birth_recorded_v1_is_upcast_with_full_name_and_the_whole_group() {
    let LifeEventEvent::BirthRecorded(birth) = life_event("BirthRecorded", 1) else {
        panic!("not a BirthRecorded");
    };
    assert_eq!(birth.declaration.child.full_name.as_str(), "Phạm Gia Bảo");
    assert_eq!(birth.declaration.child.sex, Sex::Male);
    assert_eq!(birth.declaration.procedures, ProcedureId::ALL[..3]);
    assert_eq!(birth.reference.as_str(), "LL-7Q4M2XK9TB");
    assert!(birth.late);
}

/// A version 1 correction stored while births and deaths were at version 1 carries their old
/// declaration shape (`child.name`, no `procedures`; `death.date`): upcast as the record's own.
/// One stored later carries the current shape and is read as it is.
#[test]
fn life_event_corrected_v1_declarations_of_either_shape_are_read() {
    let mut old_birth = fixture("LifeEventCorrected", 1);
    let declaration = old_birth["declaration"].as_object_mut().unwrap();
    declaration.remove("procedures");
    let child = declaration["child"].as_object_mut().unwrap();
    let name = child.remove("full_name").unwrap();
    child.insert("name".to_owned(), name);
    let LifeEventEvent::LifeEventCorrected(corrected) =
        decode("LifeEventCorrected", 1, old_birth).unwrap()
    else {
        panic!("not a LifeEventCorrected");
    };
    let Declaration::Birth(birth) = &corrected.declaration else {
        panic!("not a birth");
    };
    assert_eq!(birth.child.full_name.as_str(), "Nguyễn Minh Anh");
    assert_eq!(birth.procedures, ProcedureId::ALL[..3]);

    let current: LifeEventEvent =
        decode("LifeEventCorrected", 1, fixture("LifeEventCorrected", 1)).unwrap();
    let LifeEventEvent::LifeEventCorrected(current) = current else {
        panic!("not a LifeEventCorrected");
    };
    assert_eq!(current.declaration, corrected.declaration);

    let death_v1 = fixture("DeathRecorded", 1);
    let mut declaration = death_v1.clone();
    for key in ["life_event_id", "reference", "recorded_on", "late"] {
        declaration.as_object_mut().unwrap().remove(key);
    }
    declaration["kind"] = json!("death");
    let old_death = json!({
        "life_event_id": death_v1["life_event_id"],
        "reason": "sai ngày",
        "recorded_on": "2026-11-21",
        "changed_fields": ["death.date"],
        "declaration": declaration,
    });
    let LifeEventEvent::LifeEventCorrected(corrected) =
        decode("LifeEventCorrected", 1, old_death).unwrap()
    else {
        panic!("not a LifeEventCorrected");
    };
    let Declaration::Death(death) = &corrected.declaration else {
        panic!("not a death");
    };
    assert!(!death.death.time_known);
}

#[test]
fn birth_recorded_v2() {
    let LifeEventEvent::BirthRecorded(birth) = life_event("BirthRecorded", 2) else {
        panic!("not a BirthRecorded");
    };
    assert_eq!(birth.declaration.child.full_name.as_str(), "Nguyễn Minh An");
    assert_eq!(birth.declaration.office.as_str(), "79-26734");
    let mother = birth.declaration.mother.unwrap();
    assert_eq!(mother.personal_id.unwrap().as_str(), "079190001234");
    assert_eq!(birth.declaration.residence.address, "12 Lê Lợi");
    assert_eq!(
        birth.life_event_id.to_string(),
        "0193a3c2-7d41-7c1e-9f3a-2b6d8e4f1a01"
    );
    assert!(!birth.late);
}

#[test]
fn death_recorded_v1_is_upcast_to_midnight_with_time_unknown() {
    let LifeEventEvent::DeathRecorded(death) = life_event("DeathRecorded", 1) else {
        panic!("not a DeathRecorded");
    };
    assert_eq!(
        death.declaration.death.at.to_rfc3339(),
        "2025-06-30T00:00:00+07:00"
    );
    assert!(!death.declaration.death.time_known);
    assert_eq!(
        death.declaration.procedures,
        [
            ProcedureId::DeathRegistration,
            ProcedureId::ResidenceDeregistration,
            ProcedureId::FuneralSupport
        ]
    );
    assert_eq!(
        death.declaration.deceased.full_name.as_str(),
        "Lê Văn Cường"
    );
}

#[test]
fn death_recorded_v2() {
    let LifeEventEvent::DeathRecorded(death) = life_event("DeathRecorded", 2) else {
        panic!("not a DeathRecorded");
    };
    assert_eq!(
        death.declaration.death.at.to_rfc3339(),
        "2026-11-18T06:30:00+07:00"
    );
    assert!(death.declaration.death.time_known);
    assert_eq!(
        death.declaration.procedures,
        [ProcedureId::DeathRegistration, ProcedureId::BurialAllowance]
    );
    assert_eq!(
        death.declaration.declarant.email.unwrap().as_str(),
        "dung@example.vn"
    );
}

#[test]
fn corrections_and_voids() {
    let LifeEventEvent::LifeEventCorrected(corrected) = life_event("LifeEventCorrected", 1) else {
        panic!("not a LifeEventCorrected");
    };
    assert_eq!(corrected.changed_fields, ["child.full_name"]);
    let Declaration::Birth(birth) = corrected.declaration else {
        panic!("not a birth correction");
    };
    assert_eq!(birth.child.full_name.as_str(), "Nguyễn Minh Anh");
    let LifeEventEvent::LifeEventVoided(voided) = life_event("LifeEventVoided", 1) else {
        panic!("not a LifeEventVoided");
    };
    assert_eq!(voided.reason, "recorded in error");
}

#[test]
fn task_events() {
    let TaskEvent::TaskCreated(created) = task("TaskCreated", 1) else {
        panic!("not a TaskCreated");
    };
    assert_eq!(created.procedure, ProcedureId::ChildHealthInsurance);
    assert_eq!(created.agency.as_str(), "social-security");
    assert_eq!(
        created.application.get("child.personal_id"),
        Some(&json!("079326000001"))
    );
    assert!(created.application.get("mother.personal_id").is_none());
    created.application.check(created.procedure).unwrap();
    assert_eq!(created.due_at.to_rfc3339(), "2026-11-24T10:00:00+00:00");

    let TaskEvent::TaskClaimed(claimed) = task("TaskClaimed", 1) else {
        panic!()
    };
    assert_eq!(claimed.by, "bhxh-officer-7");
    let TaskEvent::TaskCompleted(completed) = task("TaskCompleted", 1) else {
        panic!()
    };
    assert_eq!(
        completed.outcome,
        TaskOutcome::InsuranceCardIssued {
            card_number: "TE1797926000001".into(),
            valid_until: chrono::NaiveDate::from_ymd_opt(2032, 11, 19).unwrap(),
        }
    );
    let TaskEvent::TaskRejected(rejected) = task("TaskRejected", 1) else {
        panic!()
    };
    assert_eq!(rejected.reason, "residence address incomplete");
    let TaskEvent::TaskCancelled(cancelled) = task("TaskCancelled", 1) else {
        panic!()
    };
    assert_eq!(cancelled.reason, "life event voided");
    assert!(cancelled.cause.is_some());
    let TaskEvent::TaskAmended(amended) = task("TaskAmended", 1) else {
        panic!()
    };
    assert_eq!(amended.changed_fields, ["child.full_name"]);
    assert_eq!(
        amended.application.get("child.full_name"),
        Some(&json!("Nguyễn Minh Anh"))
    );
    let TaskEvent::TaskOverdue(overdue) = task("TaskOverdue", 1) else {
        panic!()
    };
    assert!(overdue.at > overdue.due_at);
}

#[test]
fn system_events() {
    let SystemEvent::PersonalIdAssigned(assigned) = system("PersonalIdAssigned", 1) else {
        panic!()
    };
    assert_eq!(assigned.personal_id.as_str(), "079326000001");
    assert_eq!(assigned.sex, Sex::Female);
    let SystemEvent::EligibilityDecided(decided) = system("EligibilityDecided", 1) else {
        panic!()
    };
    assert_eq!(decided.procedure, ProcedureId::BurialAllowance);
    assert_eq!(decided.amount_vnd, Some(23_400_000));
    assert_eq!(decided.parameters["base_salary_vnd"], json!(2_340_000));
    assert_eq!(decided.rule_version, "burial-allowance/2024-07-01");
    let SystemEvent::PolicyFailed(failed) = system("PolicyFailed", 1) else {
        panic!()
    };
    assert_eq!(
        (failed.policy.as_str(), failed.deliveries),
        ("create-linked-tasks", 5)
    );
    let SystemEvent::PersonalDataRead(read) = system("PersonalDataRead", 1) else {
        panic!()
    };
    assert_eq!(read.role, lifeline_model::envelope::Role::Agency);
    assert_eq!(read.scope, "agency:police");
    assert!(read.resource.task_id().is_some() && read.resource.life_event_id().is_some());
    assert_eq!(read.personal_ids.len(), 2);
}

#[test]
fn decoding_accepts_the_cqrs_es_tagged_form_of_any_version() {
    for version in [1, 2] {
        let tagged = codec::to_cqrs_payload("BirthRecorded", fixture("BirthRecorded", version));
        let event: LifeEventEvent = decode("BirthRecorded", version, tagged).unwrap();
        assert_eq!(EventFamily::event_type(&event), "BirthRecorded");
    }
}

#[test]
fn decoding_refuses_unknown_types_and_versions() {
    assert!(matches!(
        decode::<LifeEventEvent>("TaskClaimed", 1, fixture("TaskClaimed", 1)),
        Err(DecodeError::UnknownEventType { .. })
    ));
    assert!(matches!(
        decode::<LifeEventEvent>("BirthRecorded", 3, fixture("BirthRecorded", 2)),
        Err(DecodeError::UnsupportedVersion {
            version: 3,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        decode::<LifeEventEvent>("DeathRecorded", 1, json!({ "death": {} })),
        Err(DecodeError::Upcast { from: 1, .. })
    ));
    assert!(matches!(
        decode::<LifeEventEvent>("LifeEventVoided", 1, json!({ "reason": 1 })),
        Err(DecodeError::Payload { .. })
    ));
}

#[test]
fn cqrs_upcaster_reads_bare_and_tagged_payloads_of_old_versions() {
    let upcaster = codec::Upcaster;
    assert!(upcaster.can_upcast("BirthRecorded", "1"));
    assert!(!upcaster.can_upcast("SomethingElse", "1"));
    for payload in [
        fixture("BirthRecorded", 1),
        codec::to_cqrs_payload("BirthRecorded", fixture("BirthRecorded", 1)),
    ] {
        let stored = SerializedEvent::new(
            "birth-x".into(),
            1,
            "life_event".into(),
            "BirthRecorded".into(),
            "1".into(),
            payload,
            json!({}),
        );
        let upcast = upcaster.upcast(stored);
        assert_eq!(upcast.event_version, "2");
        let event: LifeEventEvent = serde_json::from_value(upcast.payload).unwrap();
        assert!(
            matches!(event, LifeEventEvent::BirthRecorded(ref birth) if birth.declaration.procedures.len() == 3)
        );
    }
}

#[test]
fn domain_event_names_match_the_codec() {
    use cqrs_es::DomainEvent;
    let event = life_event("DeathRecorded", 1);
    assert_eq!(DomainEvent::event_type(&event), "DeathRecorded");
    assert_eq!(event.event_version(), "2");
    let new_event = codec::to_new_event(
        &event,
        uuid::Uuid::nil(),
        lifeline_model::envelope::EventMetadata::system(
            "policy:test",
            uuid::Uuid::nil(),
            None,
            chrono::DateTime::UNIX_EPOCH,
        ),
    );
    assert_eq!(
        (new_event.event_type.as_str(), new_event.schema_version),
        ("DeathRecorded", 2)
    );
    assert_eq!(new_event.payload["death"]["time_known"], json!(false));
}

/// `decode_recorded` reads a current body in place, and `decode_recorded_text` parses it from
/// its stored text; both must answer what `decode` answers, for bare and tagged payloads,
/// current and old versions, and refuse the same bad payloads.
#[test]
fn decoding_a_recorded_event_in_place_equals_decode() {
    use lifeline_model::envelope::{
        EventMetadata, GlobalPosition, Payload, RecordedEvent, StreamId, StreamVersion,
    };
    let recorded = |event_type: &str, version: u32, payload: Value| RecordedEvent {
        global_position: GlobalPosition(1),
        transaction_id: 1,
        stream_id: StreamId::for_kind("birth", uuid::Uuid::nil()).unwrap(),
        stream_version: StreamVersion(1),
        event_id: uuid::Uuid::nil(),
        event_type: event_type.to_owned(),
        schema_version: version,
        payload: payload.into(),
        metadata: EventMetadata::system("test", uuid::Uuid::nil(), None, chrono::Utc::now()),
    };
    for (event_type, version) in [
        ("BirthRecorded", 1),
        ("BirthRecorded", 2),
        ("DeathRecorded", 2),
    ] {
        let body = fixture(event_type, version);
        let expected: LifeEventEvent = decode(event_type, version, body.clone()).unwrap();
        for payload in [body.clone(), codec::to_cqrs_payload(event_type, body)] {
            let event = recorded(event_type, version, payload);
            let decoded: LifeEventEvent = codec::decode_recorded(&event).unwrap();
            assert_eq!(decoded, expected, "{event_type} v{version}");
            let text = event.payload.to_string();
            // As read from the log: the text only, no `Value` parsed yet.
            let read = RecordedEvent {
                payload: Payload::from_text(text.clone()).unwrap(),
                ..event.clone()
            };
            assert!(read.payload.parsed().is_none());
            let from_read: LifeEventEvent = codec::decode_recorded(&read).unwrap();
            assert_eq!(from_read, expected, "{event_type} v{version} as read");
            assert!(read.payload.parsed().is_none(), "decoded without a Value");
            let without_payload = RecordedEvent {
                payload: Payload::null(),
                ..event
            };
            let from_text: LifeEventEvent =
                codec::decode_recorded_text(&without_payload, &text).unwrap();
            assert_eq!(from_text, expected, "{event_type} v{version} from text");
        }
    }
    let bad = recorded("LifeEventVoided", 1, json!({ "reason": 1 }));
    assert!(matches!(
        codec::decode_recorded::<LifeEventEvent>(&bad),
        Err(DecodeError::Payload { .. })
    ));
    for text in [r#"{ "reason": 1 }"#, "{ not json", ""] {
        assert!(
            matches!(
                codec::decode_recorded_text::<LifeEventEvent>(&bad, text),
                Err(DecodeError::Payload { .. })
            ),
            "{text:?}"
        );
    }
    let other_family = recorded("TaskClaimed", 1, fixture("TaskClaimed", 1));
    assert!(matches!(
        codec::decode_recorded::<LifeEventEvent>(&other_family),
        Err(DecodeError::UnknownEventType { .. })
    ));
    assert!(matches!(
        codec::decode_recorded_text::<LifeEventEvent>(
            &other_family,
            &other_family.payload.to_string()
        ),
        Err(DecodeError::UnknownEventType { .. })
    ));
    let task: TaskEvent = codec::decode_recorded(&other_family).unwrap();
    assert_eq!(
        task,
        decode::<TaskEvent>("TaskClaimed", 1, fixture("TaskClaimed", 1)).unwrap()
    );
    let task_from_text: TaskEvent =
        codec::decode_recorded_text(&other_family, &other_family.payload.to_string()).unwrap();
    assert_eq!(task_from_text, task);
}
