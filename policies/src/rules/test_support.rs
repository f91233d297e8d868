//! Shared test data for the rules: the DESIGN.md declarations, facts and a context.

use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::declaration::{parse_birth, parse_death, Declaration};
use lifeline_model::envelope::StreamVersion;
use lifeline_model::life_event::{BirthRecorded, DeathRecorded, Reference};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::task::{Task, TaskCompleted, TaskEvent, TaskOutcome};
use lifeline_model::values::{vietnam_day_end, PersonalId};
use serde_json::json;
use uuid::Uuid;

use crate::facts::{declaration_facts, Context, LifeEventFacts, PersonFacts, Source, TaskFacts};
use crate::reference::ReferenceData;

pub(crate) fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

pub(crate) fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) fn reference() -> ReferenceData {
    ReferenceData::embedded().unwrap()
}

pub(crate) fn source_id() -> Uuid {
    Uuid::from_u128(0x5eed)
}

pub(crate) fn life_event_id() -> Uuid {
    Uuid::from_u128(0x11fe)
}

pub(crate) fn context(reference: &ReferenceData) -> Context<'_> {
    Context {
        source: Source {
            event_id: source_id(),
            recorded_at: utc("2026-11-20T09:00:00+07:00"),
            correlation_id: Uuid::from_u128(0xc0),
        },
        now: utc("2026-11-20T09:00:01+07:00"),
        reference,
    }
}

pub(crate) fn birth_body() -> serde_json::Value {
    json!({
      "office": "79-26734",
      "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": "2026-11-20",
                 "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                 "ethnicity": "Kinh", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
      "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": "2026-11-20" },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                     "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    })
}

pub(crate) fn death_body() -> serde_json::Value {
    json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                    "sex": "male" },
      "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                 "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": "2026-11-18" } },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                     "email": "dung@example.vn" },
      "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
    })
}

pub(crate) fn birth_recorded(late: bool) -> BirthRecorded {
    BirthRecorded {
        life_event_id: life_event_id(),
        reference: Reference::for_life_event(life_event_id()),
        recorded_on: date("2026-11-20"),
        late,
        declaration: parse_birth(
            &serde_json::from_value(birth_body()).unwrap(),
            date("2026-11-21"),
        )
        .unwrap(),
    }
}

pub(crate) fn death_recorded(late: bool) -> DeathRecorded {
    DeathRecorded {
        life_event_id: life_event_id(),
        reference: Reference::for_life_event(life_event_id()),
        recorded_on: date("2026-11-20"),
        late,
        declaration: parse_death(
            &serde_json::from_value(death_body()).unwrap(),
            vietnam_day_end(date("2026-11-21")),
        )
        .unwrap(),
    }
}

pub(crate) fn birth_facts() -> LifeEventFacts {
    LifeEventFacts {
        life_event_id: life_event_id(),
        record_event_id: Uuid::from_u128(1),
        declaration: Declaration::Birth(birth_recorded(false).declaration),
        late: false,
        voided: false,
        amendment_event_ids: vec![],
    }
}

pub(crate) fn death_facts() -> LifeEventFacts {
    LifeEventFacts {
        life_event_id: life_event_id(),
        record_event_id: Uuid::from_u128(1),
        declaration: Declaration::Death(death_recorded(false).declaration),
        late: false,
        voided: false,
        amendment_event_ids: vec![],
    }
}

pub(crate) fn child_pin() -> PersonalId {
    PersonalId::parse("079326000042").unwrap()
}

pub(crate) fn pensioner() -> PersonFacts {
    let reference = reference();
    PersonFacts::lookup(
        &reference,
        Some(&PersonalId::parse("001052000111").unwrap()),
        Some("01"),
        date("2026-11-18"),
    )
}

pub(crate) fn birth_registered() -> TaskOutcome {
    TaskOutcome::BirthRegistered {
        certificate_number: "KS-2026-001".into(),
    }
}

pub(crate) fn death_registered() -> TaskOutcome {
    TaskOutcome::DeathRegistered {
        extract_number: "TK-2026-77".into(),
    }
}

pub(crate) fn birth_completed() -> TaskCompleted {
    TaskCompleted {
        task_id: Uuid::from_u128(9),
        procedure: Some(ProcedureId::BirthRegistration),
        by: "officer".into(),
        outcome: birth_registered(),
        at: utc("2026-11-20T10:00:00+07:00"),
    }
}

pub(crate) fn death_completed() -> TaskCompleted {
    TaskCompleted {
        task_id: Uuid::from_u128(9),
        procedure: Some(ProcedureId::DeathRegistration),
        by: "officer".into(),
        outcome: death_registered(),
        at: utc("2026-11-20T10:00:00+07:00"),
    }
}

/// An open task of `procedure` for the birth or death of the test data.
pub(crate) fn open_task(procedure: ProcedureId) -> TaskFacts {
    let reference = reference();
    let life = match procedure.group() {
        lifeline_model::procedure::ProcedureGroup::Birth => birth_facts(),
        lifeline_model::procedure::ProcedureGroup::Death => death_facts(),
    };
    let mut facts = declaration_facts(&life.declaration, false);
    facts.insert("child.personal_id".into(), json!("079326000042"));
    let mut context = context(&reference);
    context.source.event_id = Uuid::from_u128(u128::from(procedure as u8) + 100);
    let created = super::new_task(
        "test",
        procedure,
        life_event_id(),
        life.declaration.office().clone(),
        &facts,
        &context,
        None,
    );
    TaskFacts::from_events(
        &[(Uuid::from_u128(2), TaskEvent::TaskCreated(created))],
        StreamVersion(1),
    )
    .unwrap()
}

/// A task of `procedure` completed with `outcome`.
pub(crate) fn completed_task(procedure: ProcedureId, outcome: TaskOutcome) -> TaskFacts {
    let open = open_task(procedure);
    let events = open
        .state
        .decide(lifeline_model::task::TaskCommand::Complete {
            by: "officer".into(),
            outcome,
            at: utc("2026-11-20T10:00:00+07:00"),
        })
        .unwrap();
    let mut all = vec![(
        Uuid::from_u128(2),
        TaskEvent::TaskCreated(open.created.clone()),
    )];
    all.extend(
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (Uuid::from_u128(3 + i as u128), e)),
    );
    let _: &Task = &open.state;
    TaskFacts::from_events(&all, StreamVersion(all.len() as i64)).unwrap()
}
