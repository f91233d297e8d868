//! The policy engine on a real SQLite store: a tiny driver applies every policy that wants an
//! event to each new event of the log, in commit order, while a simulated agency completes
//! tasks through the task aggregate. Birth and death chains, exactly-once effects under
//! redelivery, personal ID collisions, corrections and voids.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use cqrs_es::Aggregate;
use lifeline_model::codec::{decode_recorded, to_new_event};
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclarationInput, DeathDeclarationInput, Declaration,
};
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, RecordedEvent, Role, StreamId, StreamVersion,
};
use lifeline_model::life_event::{LifeEvent, LifeEventCommand, LifeEventEvent};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::{EligibilityDecided, PersonalIdAssigned, SystemEvent};
use lifeline_model::task::{TaskCommand, TaskCreated, TaskEvent, TaskOutcome, TaskStatus};
use lifeline_model::values::{vietnam_day_end, FullName};
use lifeline_policies::engine::{task_id, task_stream};
use lifeline_policies::facts::{declaration_facts, TaskFacts};
use lifeline_policies::identity::{StoreAllocator, PIN_STREAM_KIND};
use lifeline_policies::reference::ReferenceData;
use lifeline_policies::rules::{
    BIRTH_FOLLOWUPS, BIRTH_REGISTRATION, CORRECTIONS, DEATH_FOLLOWUPS, DEATH_REGISTRATION,
};
use lifeline_policies::{PolicyEngine, PolicyHandler};
use lifeline_store::EventStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    store: EventStore,
    _directory: tempfile::TempDir,
    cursor: LogCursor,
    /// How many times the driver applies each policy to each event (2: every delivery twice).
    deliveries: usize,
}

impl Harness {
    async fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", directory.path().join("lifeline.db").display());
        let store = EventStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store,
            _directory: directory,
            cursor: LogCursor::START,
            deliveries: 1,
        }
    }

    /// Applies every policy of `engine` that wants it to each event after the cursor, each in a
    /// transaction of its own, until the log has nothing new.
    async fn drain(&mut self, engine: &PolicyEngine) {
        loop {
            let batch = self.store.read_all(self.cursor, 100).await.unwrap();
            if batch.is_empty() {
                return;
            }
            for event in batch {
                for policy in engine.policy_names() {
                    if !engine.wants(policy, &event.event_type) {
                        continue;
                    }
                    for _ in 0..self.deliveries {
                        let mut tx = self.store.begin().await.unwrap();
                        engine
                            .apply(policy, &mut tx, &event)
                            .await
                            .unwrap_or_else(|error| panic!("{policy} on {event:?}: {error}"));
                        tx.commit().await.unwrap();
                    }
                }
                self.cursor = event.cursor();
            }
        }
    }

    /// Every event of the log, in commit order.
    async fn log(&self) -> Vec<RecordedEvent> {
        let mut events = Vec::new();
        let mut cursor = LogCursor::START;
        loop {
            let batch = self.store.read_all(cursor, 500).await.unwrap();
            let Some(last) = batch.last() else {
                return events;
            };
            cursor = last.cursor();
            events.extend(batch);
        }
    }

    /// Records a life event as a registrar would: the aggregate decides, the codec encodes.
    async fn record(&self, kind: &str, command: LifeEventCommand) -> (Uuid, RecordedEvent) {
        let life_event_id = match &command {
            LifeEventCommand::RecordBirth { life_event_id, .. }
            | LifeEventCommand::RecordDeath { life_event_id, .. } => *life_event_id,
            _ => unreachable!(),
        };
        let stream = StreamId::for_kind(kind, life_event_id).unwrap();
        let events = LifeEvent::default().decide(command).unwrap();
        let recorded = self
            .append_life_event(&stream, ExpectedVersion::NoStream, events)
            .await;
        (life_event_id, recorded)
    }

    /// Corrects or voids a recorded life event.
    async fn amend(&self, stream: &StreamId, command: LifeEventCommand) -> RecordedEvent {
        let stored = self.store.read_stream(stream).await.unwrap();
        let mut state = LifeEvent::default();
        for event in &stored {
            state.apply(decode_recorded::<LifeEventEvent>(event).unwrap());
        }
        let events = state.decide(command).unwrap();
        let version = stored.last().unwrap().stream_version;
        self.append_life_event(stream, ExpectedVersion::Exact(version), events)
            .await
    }

    async fn append_life_event(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<LifeEventEvent>,
    ) -> RecordedEvent {
        let metadata = EventMetadata {
            actor: "registrar-79-26734".into(),
            role: Role::Registrar,
            office: Some("79-26734".into()),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            recorded_at: Utc::now(),
            idempotency_key: None,
            office_signature: None,
        };
        let new: Vec<_> = events
            .iter()
            .map(|event| to_new_event(event, Uuid::new_v4(), metadata.clone()))
            .collect();
        self.store.append(stream, expected, &new).await.unwrap();
        self.store.read_stream(stream).await.unwrap().pop().unwrap()
    }

    async fn task(&self, task_id: Uuid) -> Option<TaskFacts> {
        let events = self
            .store
            .read_stream(&task_stream(task_id).unwrap())
            .await
            .unwrap();
        let version = events.last()?.stream_version;
        let decoded: Vec<_> = events
            .iter()
            .map(|event| (event.event_id, decode_recorded::<TaskEvent>(event).unwrap()))
            .collect();
        TaskFacts::from_events(&decoded, version)
    }

    /// The agency completes the task through the task aggregate.
    async fn complete(&self, task_id: Uuid, outcome: TaskOutcome) -> Uuid {
        let task = self.task(task_id).await.expect("the task exists");
        let events = task
            .state
            .decide(TaskCommand::Complete {
                by: "officer-1".into(),
                outcome,
                at: Utc::now(),
            })
            .unwrap();
        let metadata = EventMetadata {
            actor: "officer-1".into(),
            role: Role::Agency,
            office: Some(task.created.office.to_string()),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            recorded_at: Utc::now(),
            idempotency_key: None,
            office_signature: None,
        };
        let new: Vec<_> = events
            .iter()
            .map(|event| to_new_event(event, Uuid::new_v4(), metadata.clone()))
            .collect();
        self.store
            .append(
                &task_stream(task_id).unwrap(),
                ExpectedVersion::Exact(task.version),
                &new,
            )
            .await
            .unwrap();
        new.last().unwrap().event_id
    }

    /// Every `TaskCreated` of the log.
    async fn created_tasks(&self) -> Vec<TaskCreated> {
        self.log()
            .await
            .iter()
            .filter_map(|event| match decode_recorded::<TaskEvent>(event) {
                Ok(TaskEvent::TaskCreated(created)) => Some(created),
                _ => None,
            })
            .collect()
    }

    async fn pins(&self) -> Vec<PersonalIdAssigned> {
        self.log()
            .await
            .iter()
            .filter(|event| event.stream_id.kind() == PIN_STREAM_KIND)
            .map(
                |event| match decode_recorded::<SystemEvent>(event).unwrap() {
                    SystemEvent::PersonalIdAssigned(assigned) => assigned,
                    other => panic!("{other:?} in a pin stream"),
                },
            )
            .collect()
    }

    async fn decisions(&self) -> Vec<(StreamId, EligibilityDecided)> {
        self.log()
            .await
            .iter()
            .filter_map(|event| match decode_recorded::<SystemEvent>(event) {
                Ok(SystemEvent::EligibilityDecided(decided)) => {
                    Some((event.stream_id.clone(), decided))
                }
                _ => None,
            })
            .collect()
    }
}

fn engine_with_seed(seed: u64) -> PolicyEngine {
    PolicyEngine::new(
        ReferenceData::embedded().unwrap(),
        Arc::new(StoreAllocator::with_rng(StdRng::seed_from_u64(seed))),
    )
}

/// The day the records are made on: fixed (as in the chain tests), so the example's dates
/// never turn late or old as the calendar moves on.
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).expect("a valid date")
}

fn birth_body() -> Value {
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

/// A death whose deceased (`001052000111`) is a pensioner with a registered residence and no
/// social-protection record (see `policies/data/*.csv`).
fn death_body(procedures: &[&str]) -> Value {
    json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                    "sex": "male" },
      "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                 "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": "2026-11-18" } },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                     "email": "dung@example.vn" },
      "procedures": procedures
    })
}

fn record_birth(body: Value) -> LifeEventCommand {
    let input: BirthDeclarationInput = serde_json::from_value(body).unwrap();
    LifeEventCommand::RecordBirth {
        life_event_id: Uuid::new_v4(),
        declaration: parse_birth(&input, today()).unwrap(),
        recorded_on: today(),
    }
}

fn record_death(body: Value) -> LifeEventCommand {
    let input: DeathDeclarationInput = serde_json::from_value(body).unwrap();
    LifeEventCommand::RecordDeath {
        life_event_id: Uuid::new_v4(),
        declaration: parse_death(&input, vietnam_day_end(today())).unwrap(),
        recorded_on: today(),
    }
}

fn certificate(number: &str) -> TaskOutcome {
    TaskOutcome::BirthRegistered {
        certificate_number: number.into(),
    }
}

/// A birth recorded and registered: (life event id, BirthRecorded, TaskCompleted event id).
async fn registered_birth(
    harness: &mut Harness,
    engine: &PolicyEngine,
    body: Value,
    certificate_number: &str,
) -> (Uuid, RecordedEvent, Uuid) {
    let (life_event_id, recorded) = harness.record("birth", record_birth(body)).await;
    harness.drain(engine).await;
    let registration = task_id(
        BIRTH_REGISTRATION,
        recorded.event_id,
        ProcedureId::BirthRegistration,
    );
    let completed = harness
        .complete(registration, certificate(certificate_number))
        .await;
    harness.drain(engine).await;
    (life_event_id, recorded, completed)
}

/// Every event a policy appended is the system's, correlated with and caused by its source.
fn assert_policy_metadata(log: &[RecordedEvent]) {
    let by_id: BTreeMap<Uuid, &RecordedEvent> =
        log.iter().map(|event| (event.event_id, event)).collect();
    for event in log
        .iter()
        .filter(|event| event.metadata.role == Role::System)
    {
        assert!(event.metadata.actor.starts_with("policy:"), "{event:?}");
        let cause = by_id[&event.metadata.causation_id.expect("a causation id")];
        assert_eq!(event.metadata.correlation_id, cause.metadata.correlation_id);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_birth_goes_through_the_whole_chain_prefilled_from_the_declaration() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(1);
    let (life_event_id, recorded) = harness.record("birth", record_birth(birth_body())).await;
    harness.drain(&engine).await;

    // BirthRecorded -> one birth-registration task at the registering office.
    let tasks = harness.created_tasks().await;
    assert_eq!(tasks.len(), 1);
    let registration = &tasks[0];
    assert_eq!(registration.procedure, ProcedureId::BirthRegistration);
    assert_eq!(
        registration.task_id,
        task_id(
            BIRTH_REGISTRATION,
            recorded.event_id,
            ProcedureId::BirthRegistration
        )
    );
    assert_eq!(registration.office.as_str(), "79-26734");
    assert!(harness.pins().await.is_empty());

    // The civil registry completes it with a certificate number.
    let completed = harness
        .complete(registration.task_id, certificate("KS-2026-001"))
        .await;
    harness.drain(&engine).await;

    // -> the child's personal ID number, then the two chosen follow-up tasks.
    let pins = harness.pins().await;
    assert_eq!(pins.len(), 1);
    let pin = pins[0].personal_id.as_str().to_owned();
    assert!(pin.starts_with("079326"), "{pin}");
    assert_eq!(pins[0].life_event_id, life_event_id);
    assert_eq!(pins[0].task_id, Some(registration.task_id));

    let LifeEventEvent::BirthRecorded(birth) = decode_recorded(&recorded).unwrap() else {
        panic!()
    };
    let declared = declaration_facts(&Declaration::Birth(birth.declaration.clone()), birth.late);
    let tasks = harness.created_tasks().await;
    assert_eq!(tasks.len(), 3);
    for (task, procedure) in tasks[1..].iter().zip([
        ProcedureId::ResidenceRegistration,
        ProcedureId::ChildHealthInsurance,
    ]) {
        assert_eq!(task.procedure, procedure);
        assert_eq!(task.task_id, task_id(BIRTH_FOLLOWUPS, completed, procedure));
        assert_eq!(task.life_event_id, life_event_id);
        assert_eq!(task.source_event_id, completed);
        // Field by field: every field the procedure receives, equal to the declaration...
        let mut expected: BTreeMap<String, Value> = declared
            .iter()
            .filter(|(field, _)| procedure.receives(field))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect();
        // ...plus the number and the certificate, and nothing else.
        expected.insert("child.personal_id".into(), json!(pin));
        expected.insert("birth_certificate_number".into(), json!("KS-2026-001"));
        expected.retain(|field, _| procedure.receives(field));
        assert_eq!(task.application.0, expected, "{procedure}");
        assert_eq!(
            task.application.get("child.full_name"),
            Some(&json!("Nguyễn Minh An"))
        );
    }
    // Data minimisation: the insurance agency gets no declarant phone and no parent.
    let insurance = &tasks[2];
    assert!(insurance.application.get("declarant.phone").is_none());
    assert!(insurance
        .application
        .0
        .keys()
        .all(|field| !field.starts_with("mother.") && !field.starts_with("declarant.")));
    assert_eq!(insurance.office.as_str(), "79-00000");
    assert_eq!(
        tasks[1].application.get("mother.personal_id"),
        Some(&json!("079190001234"))
    );

    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn only_the_chosen_birth_followups_are_created() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(2);
    let mut body = birth_body();
    body["procedures"] = json!(["birth-registration", "child-health-insurance"]);
    registered_birth(&mut harness, &engine, body, "KS-2026-002").await;
    let procedures: Vec<_> = harness
        .created_tasks()
        .await
        .iter()
        .map(|task| task.procedure)
        .collect();
    assert_eq!(
        procedures,
        [
            ProcedureId::BirthRegistration,
            ProcedureId::ChildHealthInsurance
        ]
    );
    // The child still gets its number.
    assert_eq!(harness.pins().await.len(), 1);
}

#[tokio::test]
async fn a_death_gets_eligibility_decisions_and_only_eligible_tasks() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(3);
    // 3 of 4: no residence deregistration asked for.
    let (life_event_id, recorded) = harness
        .record(
            "death",
            record_death(death_body(&[
                "death-registration",
                "burial-allowance",
                "funeral-support",
            ])),
        )
        .await;
    harness.drain(&engine).await;
    let registration = task_id(
        DEATH_REGISTRATION,
        recorded.event_id,
        ProcedureId::DeathRegistration,
    );
    assert_eq!(
        harness
            .task(registration)
            .await
            .unwrap()
            .created
            .office
            .as_str(),
        "01-00004"
    );
    let completed = harness
        .complete(
            registration,
            TaskOutcome::DeathRegistered {
                extract_number: "TK-2026-77".into(),
            },
        )
        .await;
    harness.drain(&engine).await;

    let decisions = harness.decisions().await;
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    let (burial_stream, burial) = &decisions[0];
    let (funeral_stream, funeral) = &decisions[1];
    let burial_key = task_id(DEATH_FOLLOWUPS, completed, ProcedureId::BurialAllowance);
    assert_eq!(burial_stream.as_str(), format!("eligibility-{burial_key}"));
    assert_eq!(burial.procedure, ProcedureId::BurialAllowance);
    assert!(burial.eligible);
    assert_eq!(burial.reason, "pensioner");
    assert_eq!(burial.life_event_id, life_event_id);
    // 10 x the base salary in force on 2026-11-18 (2,340,000 VND).
    assert_eq!(burial.amount_vnd, Some(23_400_000));
    assert_eq!(
        lifeline_policies::rules::death_followups::recompute(burial),
        burial.amount_vnd
    );
    assert_eq!(
        funeral_stream.as_str(),
        format!(
            "eligibility-{}",
            task_id(DEATH_FOLLOWUPS, completed, ProcedureId::FuneralSupport)
        )
    );
    assert!(!funeral.eligible);
    assert_eq!(funeral.amount_vnd, None);

    let tasks = harness.created_tasks().await;
    let procedures: Vec<_> = tasks.iter().map(|task| task.procedure).collect();
    assert_eq!(
        procedures,
        [ProcedureId::DeathRegistration, ProcedureId::BurialAllowance]
    );
    let burial_task = &tasks[1];
    assert_eq!(burial_task.task_id, burial_key);
    assert_eq!(burial_task.office.as_str(), "01-00000");
    assert_eq!(
        burial_task.application.get("eligibility.amount_vnd"),
        Some(&json!(23_400_000))
    );
    assert_eq!(
        burial_task.application.get("death_extract_number"),
        Some(&json!("TK-2026-77"))
    );
    assert!(harness.pins().await.is_empty());
    assert_policy_metadata(&harness.log().await);
}

/// What the log holds, independent of order: (stream, version, event id, event type).
async fn snapshot(harness: &Harness) -> BTreeSet<(String, i64, Uuid, String)> {
    harness
        .log()
        .await
        .into_iter()
        .map(|event| {
            (
                event.stream_id.to_string(),
                event.stream_version.0,
                event.event_id,
                event.event_type,
            )
        })
        .collect()
}

#[tokio::test]
async fn every_policy_applied_twice_to_every_event_has_the_effect_of_once() {
    let mut harness = Harness::new().await;
    harness.deliveries = 2;
    let engine = engine_with_seed(4);
    let (_, birth, _) = registered_birth(&mut harness, &engine, birth_body(), "KS-2026-004").await;
    let (_, death) = harness
        .record(
            "death",
            record_death(death_body(&[
                "death-registration",
                "residence-deregistration",
                "burial-allowance",
                "funeral-support",
            ])),
        )
        .await;
    harness.drain(&engine).await;
    harness
        .complete(
            task_id(
                DEATH_REGISTRATION,
                death.event_id,
                ProcedureId::DeathRegistration,
            ),
            TaskOutcome::DeathRegistered {
                extract_number: "TK-2026-78".into(),
            },
        )
        .await;
    harness.drain(&engine).await;
    // A correction and a void too.
    let mut corrected = match decode_recorded::<LifeEventEvent>(&birth).unwrap() {
        LifeEventEvent::BirthRecorded(birth) => birth.declaration,
        _ => unreachable!(),
    };
    corrected.child.full_name =
        FullName::parse_field("Nguyễn Minh Anh", "child.full_name").unwrap();
    harness
        .amend(
            &birth.stream_id,
            LifeEventCommand::Correct {
                declaration: Declaration::Birth(corrected),
                reason: "sai chính tả".into(),
                recorded_on: today(),
            },
        )
        .await;
    harness.drain(&engine).await;
    harness
        .amend(
            &death.stream_id,
            LifeEventCommand::Void {
                reason: "nhập nhầm".into(),
                recorded_on: today(),
            },
        )
        .await;
    harness.drain(&engine).await;

    // One task per (policy, source, procedure), one number, one decision per procedure.
    let tasks = harness.created_tasks().await;
    // birth: registration, residence, insurance, re-issue of the registration;
    // death: registration, residence deregistration, burial allowance, then the void reverses
    // the completed registration.
    assert_eq!(tasks.len(), 8, "{tasks:#?}");
    let ids: BTreeSet<_> = tasks.iter().map(|task| task.task_id).collect();
    assert_eq!(ids.len(), tasks.len());
    assert_eq!(harness.pins().await.len(), 1);
    assert_eq!(harness.decisions().await.len(), 3);

    // Redeliver everything once more, to the end of the log: nothing changes.
    let before = snapshot(&harness).await;
    harness.cursor = LogCursor::START;
    harness.drain(&engine).await;
    assert_eq!(snapshot(&harness).await, before);
    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn a_personal_id_number_in_use_is_drawn_again() {
    let mut harness = Harness::new().await;
    // Two allocators with the same seed draw the same numbers in the same order.
    let first = engine_with_seed(7);
    let second = engine_with_seed(7);
    let mut draws = StdRng::seed_from_u64(7);
    let expected: Vec<String> = (0..2)
        .map(|_| format!("079326{:06}", draws.gen_range(0..1_000_000_u32)))
        .collect();

    let (one, _, _) = registered_birth(&mut harness, &first, birth_body(), "KS-2026-007").await;
    let (two, _, _) = registered_birth(&mut harness, &second, birth_body(), "KS-2026-008").await;
    let pins = harness.pins().await;
    let by_life_event: BTreeMap<Uuid, String> = pins
        .iter()
        .map(|pin| (pin.life_event_id, pin.personal_id.as_str().to_owned()))
        .collect();
    assert_eq!(by_life_event.len(), 2);
    assert_eq!(by_life_event[&one], expected[0]);
    // The second allocator's first draw was taken: it drew again.
    assert_eq!(by_life_event[&two], expected[1]);
    // The second child's tasks carry its own number.
    let tasks = harness.created_tasks().await;
    let residence_two = tasks
        .iter()
        .find(|task| {
            task.life_event_id == two && task.procedure == ProcedureId::ResidenceRegistration
        })
        .unwrap();
    assert_eq!(
        residence_two.application.get("child.personal_id"),
        Some(&json!(expected[1]))
    );
}

#[tokio::test]
async fn a_correction_amends_open_tasks_and_a_void_cancels_them() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(8);
    let (_, birth, completed) =
        registered_birth(&mut harness, &engine, birth_body(), "KS-2026-009").await;
    let residence = task_id(
        BIRTH_FOLLOWUPS,
        completed,
        ProcedureId::ResidenceRegistration,
    );
    let insurance = task_id(
        BIRTH_FOLLOWUPS,
        completed,
        ProcedureId::ChildHealthInsurance,
    );
    let registration = task_id(
        BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let pin = harness.pins().await[0].personal_id.as_str().to_owned();

    let mut declaration = match decode_recorded::<LifeEventEvent>(&birth).unwrap() {
        LifeEventEvent::BirthRecorded(birth) => birth.declaration,
        _ => unreachable!(),
    };
    declaration.child.full_name =
        FullName::parse_field("Nguyễn Minh Anh", "child.full_name").unwrap();
    let correction = harness
        .amend(
            &birth.stream_id,
            LifeEventCommand::Correct {
                declaration: Declaration::Birth(declaration),
                reason: "sai chính tả".into(),
                recorded_on: today(),
            },
        )
        .await;
    harness.drain(&engine).await;

    // Both open follow-ups are amended: the new name, the child's number kept.
    for task_id in [residence, insurance] {
        let task = harness.task(task_id).await.unwrap();
        assert_eq!(task.state.status, TaskStatus::Open);
        assert_eq!(task.version, StreamVersion(2));
        assert_eq!(
            task.state.application.get("child.full_name"),
            Some(&json!("Nguyễn Minh Anh"))
        );
        assert_eq!(
            task.state.application.get("child.personal_id"),
            Some(&json!(pin))
        );
    }
    let amended = harness
        .store
        .read_stream(&task_stream(residence).unwrap())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(amended.event_type, "TaskAmended");
    assert_eq!(amended.metadata.actor, format!("policy:{CORRECTIONS}"));
    assert_eq!(amended.metadata.causation_id, Some(correction.event_id));
    let TaskEvent::TaskAmended(amendment) = decode_recorded(&amended).unwrap() else {
        panic!()
    };
    assert_eq!(amendment.changed_fields, ["child.full_name"]);
    // The completed registration gets a re-issue task with the new name.
    let reissue = task_id(
        CORRECTIONS,
        correction.event_id,
        ProcedureId::BirthRegistration,
    );
    let reissue_task = harness.task(reissue).await.expect("a re-issue task");
    let follow_up = reissue_task.created.follow_up.clone().unwrap();
    assert_eq!(follow_up.follows, registration);
    assert_eq!(
        reissue_task.state.application.get("child.full_name"),
        Some(&json!("Nguyễn Minh Anh"))
    );
    // The registration itself is untouched.
    assert_eq!(
        harness.task(registration).await.unwrap().state.status,
        TaskStatus::Completed
    );

    // Void: every open task is cancelled, the completed registration reversed.
    let void = harness
        .amend(
            &birth.stream_id,
            LifeEventCommand::Void {
                reason: "nhập nhầm".into(),
                recorded_on: today(),
            },
        )
        .await;
    harness.drain(&engine).await;
    for task_id in [residence, insurance, reissue] {
        let task = harness.task(task_id).await.unwrap();
        assert_eq!(task.state.status, TaskStatus::Cancelled, "{task:?}");
    }
    let reversal = harness
        .task(task_id(
            CORRECTIONS,
            void.event_id,
            ProcedureId::BirthRegistration,
        ))
        .await
        .expect("a reversal task");
    assert_eq!(
        reversal.created.follow_up.unwrap().kind,
        lifeline_model::task::FollowUpKind::Reversal
    );
    assert_eq!(reversal.state.status, TaskStatus::Open);
    assert_policy_metadata(&harness.log().await);
}

/// Applies `policy` to `event` in a transaction of its own, as its consumer would.
async fn apply_one(harness: &Harness, engine: &PolicyEngine, policy: &str, event: &RecordedEvent) {
    let mut tx = harness.store.begin().await.unwrap();
    engine
        .apply(policy, &mut tx, event)
        .await
        .unwrap_or_else(|error| panic!("{policy} on {}: {error}", event.event_type));
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_registration_made_after_corrections_ran_carries_the_correction_and_none_follows_a_void()
{
    // Each policy has its own consumer: after an outage, `corrections` may handle a correction
    // or a void before `birth-registration` has handled the birth (it then finds no task to
    // amend or cancel). The registration must be prefilled from the record as it stands.
    let harness = Harness::new().await;
    let engine = engine_with_seed(9);
    let (_, corrected_birth) = harness.record("birth", record_birth(birth_body())).await;
    let mut declaration = match decode_recorded::<LifeEventEvent>(&corrected_birth).unwrap() {
        LifeEventEvent::BirthRecorded(birth) => birth.declaration,
        _ => unreachable!(),
    };
    declaration.child.full_name =
        FullName::parse_field("Nguyễn Minh Anh", "child.full_name").unwrap();
    let correction = harness
        .amend(
            &corrected_birth.stream_id,
            LifeEventCommand::Correct {
                declaration: Declaration::Birth(declaration),
                reason: "sai chính tả".into(),
                recorded_on: today(),
            },
        )
        .await;
    let (_, voided_birth) = harness.record("birth", record_birth(birth_body())).await;
    let void = harness
        .amend(
            &voided_birth.stream_id,
            LifeEventCommand::Void {
                reason: "nhập nhầm".into(),
                recorded_on: today(),
            },
        )
        .await;

    // `corrections` first: no task exists yet, so it appends nothing.
    apply_one(&harness, &engine, CORRECTIONS, &correction).await;
    apply_one(&harness, &engine, CORRECTIONS, &void).await;
    assert!(harness.created_tasks().await.is_empty());
    // Then the registrations.
    apply_one(&harness, &engine, BIRTH_REGISTRATION, &corrected_birth).await;
    apply_one(&harness, &engine, BIRTH_REGISTRATION, &voided_birth).await;

    let tasks = harness.created_tasks().await;
    assert_eq!(
        tasks.len(),
        1,
        "one task, none for the voided record: {tasks:?}"
    );
    let registration = task_id(
        BIRTH_REGISTRATION,
        corrected_birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let task = harness
        .task(registration)
        .await
        .expect("the registration task");
    assert_eq!(
        task.state.application.get("child.full_name"),
        Some(&json!("Nguyễn Minh Anh"))
    );
    assert_eq!(task.version, StreamVersion(1));

    // Handled again in the usual order, nothing changes: the task already carries the
    // correction, and the voided record still has no task.
    let mut harness = harness;
    harness.deliveries = 2;
    harness.drain(&engine).await;
    assert_eq!(harness.created_tasks().await.len(), 1);
    assert_eq!(
        harness.task(registration).await.unwrap().version,
        StreamVersion(1)
    );
    assert_policy_metadata(&harness.log().await);
}

/// Two corrections of the child's name of `birth` ("Nguyễn Minh Anh", then "Nguyễn Minh Ánh").
async fn two_name_corrections(harness: &Harness, birth: &RecordedEvent) -> Vec<RecordedEvent> {
    let declaration = match decode_recorded::<LifeEventEvent>(birth).unwrap() {
        LifeEventEvent::BirthRecorded(birth) => birth.declaration,
        _ => unreachable!(),
    };
    let mut corrections = Vec::new();
    for name in ["Nguyễn Minh Anh", "Nguyễn Minh Ánh"] {
        let mut corrected = declaration.clone();
        corrected.child.full_name = FullName::parse_field(name, "child.full_name").unwrap();
        corrections.push(
            harness
                .amend(
                    &birth.stream_id,
                    LifeEventCommand::Correct {
                        declaration: Declaration::Birth(corrected),
                        reason: "sai chính tả".into(),
                        recorded_on: today(),
                    },
                )
                .await,
        );
    }
    corrections
}

#[tokio::test]
async fn an_earlier_correction_handled_late_does_not_take_a_task_back() {
    // Two corrections, the registration made after both (so prefilled from the second), and
    // only then `corrections` on the first: the task keeps the second's name.
    let harness = Harness::new().await;
    let engine = engine_with_seed(10);
    let (_, birth) = harness.record("birth", record_birth(birth_body())).await;
    let corrections = two_name_corrections(&harness, &birth).await;
    apply_one(&harness, &engine, BIRTH_REGISTRATION, &birth).await;
    for correction in &corrections {
        apply_one(&harness, &engine, CORRECTIONS, correction).await;
    }
    let registration = task_id(
        BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let task = harness.task(registration).await.unwrap();
    assert_eq!(
        task.state.application.get("child.full_name"),
        Some(&json!("Nguyễn Minh Ánh"))
    );
    assert_eq!(task.version, StreamVersion(1), "amended back and forth");
}

#[tokio::test]
async fn corrections_of_a_completed_registration_handled_out_of_order_reissue_it_once() {
    // Two corrections of a registered birth, `corrections` handling the second first (a
    // retried batch, two worker processes): the second re-issues the registration with its
    // name; the first, handled late, finds that re-issue already at the record as it stands and
    // leaves the procedure alone. (Until 2026-12-07 it re-issued the completed task a second
    // time, with its own, older name.)
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(11);
    let (_, birth, _) = registered_birth(&mut harness, &engine, birth_body(), "KS-1").await;
    let corrections = two_name_corrections(&harness, &birth).await;
    apply_one(&harness, &engine, CORRECTIONS, &corrections[1]).await;
    apply_one(&harness, &engine, CORRECTIONS, &corrections[0]).await;
    let reissues: Vec<TaskCreated> = harness
        .created_tasks()
        .await
        .into_iter()
        .filter(|task| task.procedure == ProcedureId::BirthRegistration && task.follow_up.is_some())
        .collect();
    assert_eq!(reissues.len(), 1, "{reissues:?}");
    assert_eq!(
        reissues[0].application.get("child.full_name"),
        Some(&json!("Nguyễn Minh Ánh"))
    );
    let reissue = harness.task(reissues[0].task_id).await.unwrap();
    assert_eq!(reissue.version, StreamVersion(1), "not amended back");
}

#[tokio::test]
async fn an_event_it_cannot_read_is_refused_and_others_are_ignored() {
    let harness = Harness::new().await;
    let engine = engine_with_seed(9);
    let stream = StreamId::for_kind("birth", Uuid::new_v4()).unwrap();
    let broken = lifeline_model::envelope::NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "BirthRecorded".into(),
        schema_version: 2,
        payload: json!({ "life_event_id": "not a uuid" }),
        metadata: EventMetadata::system("test", Uuid::new_v4(), None, Utc::now()),
    };
    harness
        .store
        .append(&stream, ExpectedVersion::NoStream, &[broken])
        .await
        .unwrap();
    let event = harness
        .store
        .read_stream(&stream)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let mut tx = harness.store.begin().await.unwrap();
    let error = engine
        .apply(BIRTH_REGISTRATION, &mut tx, &event)
        .await
        .unwrap_err();
    assert!(
        matches!(error, lifeline_policies::PolicyError::Refused { .. }),
        "{error}"
    );
    // A policy handed an event it does not want appends nothing.
    engine.apply(CORRECTIONS, &mut tx, &event).await.unwrap();
    assert!(engine
        .apply("no-such-policy", &mut tx, &event)
        .await
        .is_err());
    tx.rollback().await.unwrap();
    assert_eq!(harness.log().await.len(), 1);
    assert_eq!(
        engine.policy_names(),
        [
            BIRTH_REGISTRATION,
            BIRTH_FOLLOWUPS,
            DEATH_REGISTRATION,
            DEATH_FOLLOWUPS,
            CORRECTIONS
        ]
    );
    assert!(engine.wants(BIRTH_FOLLOWUPS, "TaskCompleted"));
    assert!(engine.wants(DEATH_FOLLOWUPS, "TaskCompleted"));
    assert!(engine.wants(CORRECTIONS, "LifeEventVoided"));
    assert!(!engine.wants(BIRTH_REGISTRATION, "DeathRecorded"));
    assert!(!engine.wants(CORRECTIONS, "TaskCompleted"));
}

/// A death of the pensioner with every procedure chosen, registered (extract `TK-2026-88`) and
/// its follow-ups decided: (the record, the completion's event id).
async fn registered_death(harness: &mut Harness, engine: &PolicyEngine) -> (RecordedEvent, Uuid) {
    let (_, recorded) = harness
        .record(
            "death",
            record_death(death_body(&[
                "death-registration",
                "residence-deregistration",
                "burial-allowance",
                "funeral-support",
            ])),
        )
        .await;
    harness.drain(engine).await;
    let completed = harness
        .complete(
            task_id(
                DEATH_REGISTRATION,
                recorded.event_id,
                ProcedureId::DeathRegistration,
            ),
            TaskOutcome::DeathRegistered {
                extract_number: "TK-2026-88".into(),
            },
        )
        .await;
    (recorded, completed)
}

/// `recorded`'s death declaration, changed by `change`, as a registrar's correction.
async fn correct_death(
    harness: &Harness,
    recorded: &RecordedEvent,
    change: impl FnOnce(&mut lifeline_model::declaration::DeathDeclaration),
) -> RecordedEvent {
    let mut declaration = match decode_recorded::<LifeEventEvent>(recorded).unwrap() {
        LifeEventEvent::DeathRecorded(death) => death.declaration,
        other => panic!("{other:?}"),
    };
    change(&mut declaration);
    harness
        .amend(
            &recorded.stream_id,
            LifeEventCommand::Correct {
                declaration: Declaration::Death(declaration),
                reason: "sai ngày mất".into(),
                recorded_on: today(),
            },
        )
        .await
}

/// `recorded`'s birth declaration, changed by `change`, as a registrar's correction for `reason`.
async fn correct_birth(
    harness: &Harness,
    recorded: &RecordedEvent,
    reason: &str,
    change: impl FnOnce(&mut lifeline_model::declaration::BirthDeclaration),
) -> RecordedEvent {
    let mut declaration = match decode_recorded::<LifeEventEvent>(recorded).unwrap() {
        LifeEventEvent::BirthRecorded(birth) => birth.declaration,
        other => panic!("{other:?}"),
    };
    change(&mut declaration);
    harness
        .amend(
            &recorded.stream_id,
            LifeEventCommand::Correct {
                declaration: Declaration::Birth(declaration),
                reason: reason.into(),
                recorded_on: today(),
            },
        )
        .await
}

fn died_on_2024_06_30(death: &mut lifeline_model::declaration::DeathDeclaration) {
    death.death.at = chrono::DateTime::parse_from_rfc3339("2024-06-30T06:30:00+07:00").unwrap();
}

#[tokio::test]
async fn a_corrected_date_of_death_decides_the_burial_allowance_again_once() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(11);
    let (recorded, completed) = registered_death(&mut harness, &engine).await;
    harness.drain(&engine).await;
    let burial = task_id(DEATH_FOLLOWUPS, completed, ProcedureId::BurialAllowance);
    assert_eq!(
        harness
            .task(burial)
            .await
            .unwrap()
            .state
            .application
            .get("eligibility.amount_vnd"),
        Some(&json!(23_400_000))
    );

    // The death was on 2024-06-30, before the base salary rose: every delivery twice.
    harness.deliveries = 2;
    let correction = correct_death(&harness, &recorded, died_on_2024_06_30).await;
    harness.drain(&engine).await;

    let decisions = harness.decisions().await;
    let key = task_id(
        CORRECTIONS,
        correction.event_id,
        ProcedureId::BurialAllowance,
    );
    let redecided: Vec<_> = decisions
        .iter()
        .filter(|(stream, _)| stream.as_str() == format!("eligibility-{key}"))
        .collect();
    assert_eq!(redecided.len(), 1, "{decisions:?}");
    let decided = &redecided[0].1;
    assert_eq!(decided.amount_vnd, Some(18_000_000));
    assert_eq!(decided.parameters["date_of_death"], json!("2024-06-30"));
    assert_eq!(
        lifeline_policies::rules::death_followups::recompute(decided),
        Some(18_000_000)
    );
    // 3 decisions first, then the burial allowance and funeral support again (its date moved).
    assert_eq!(decisions.len(), 5, "{decisions:?}");
    let task = harness.task(burial).await.unwrap();
    assert_eq!(task.state.status, TaskStatus::Open);
    assert_eq!(task.version, StreamVersion(2), "amended once");
    assert_eq!(
        task.state.application.get("eligibility.amount_vnd"),
        Some(&json!(18_000_000))
    );
    // The residence task keeps the register's address the declaration never had.
    let residence = harness
        .task(task_id(
            DEATH_FOLLOWUPS,
            completed,
            ProcedureId::ResidenceDeregistration,
        ))
        .await
        .unwrap();
    assert_eq!(residence.version, StreamVersion(2));
    assert_eq!(
        residence
            .state
            .application
            .get("deceased.residence.address"),
        Some(&json!("5 Hàng Bông"))
    );
    // Tasks: registration, residence, burial, and the registration's re-issue.
    assert_eq!(harness.created_tasks().await.len(), 4);
    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn a_correction_handled_before_death_followups_decides_each_procedure_once() {
    // `corrections` runs on a correction before `death-followups` has run on the completion
    // that came before it (separate consumers, one behind): it decides the follow-ups under
    // `death-followups`' own ids, and `death-followups` then adds nothing.
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(12);
    let (recorded, completed) = registered_death(&mut harness, &engine).await;
    let correction = correct_death(&harness, &recorded, died_on_2024_06_30).await;
    apply_one(&harness, &engine, CORRECTIONS, &correction).await;
    let decided_first = harness.decisions().await;
    assert_eq!(decided_first.len(), 3, "{decided_first:?}");
    let completion = harness
        .log()
        .await
        .into_iter()
        .find(|event| event.event_id == completed)
        .unwrap();
    apply_one(&harness, &engine, DEATH_FOLLOWUPS, &completion).await;
    harness.deliveries = 2;
    harness.drain(&engine).await;

    let decisions = harness.decisions().await;
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    for (stream, decided) in &decisions {
        assert_eq!(
            stream.as_str(),
            format!(
                "eligibility-{}",
                task_id(DEATH_FOLLOWUPS, completed, decided.procedure)
            )
        );
    }
    let burial = harness
        .task(task_id(
            DEATH_FOLLOWUPS,
            completed,
            ProcedureId::BurialAllowance,
        ))
        .await
        .unwrap();
    assert_eq!(burial.version, StreamVersion(1));
    assert_eq!(
        burial.state.application.get("eligibility.amount_vnd"),
        Some(&json!(18_000_000))
    );
    assert_eq!(burial.created.source_event_id, completed);
    let procedures: Vec<_> = harness
        .created_tasks()
        .await
        .iter()
        .map(|task| task.procedure)
        .collect();
    assert_eq!(
        procedures,
        [
            ProcedureId::DeathRegistration,
            ProcedureId::DeathRegistration,
            ProcedureId::ResidenceDeregistration,
            ProcedureId::BurialAllowance,
        ],
        "the registration, its re-issue, each eligible follow-up once"
    );
}

#[tokio::test]
async fn a_procedure_chosen_by_a_correction_after_the_registration_gets_its_decision_and_task() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(13);
    let (_, recorded) = harness
        .record(
            "death",
            record_death(death_body(&[
                "death-registration",
                "residence-deregistration",
            ])),
        )
        .await;
    harness.drain(&engine).await;
    let completed = harness
        .complete(
            task_id(
                DEATH_REGISTRATION,
                recorded.event_id,
                ProcedureId::DeathRegistration,
            ),
            TaskOutcome::DeathRegistered {
                extract_number: "TK-2026-89".into(),
            },
        )
        .await;
    harness.drain(&engine).await;
    assert_eq!(harness.decisions().await.len(), 1);

    // The declarant had asked for the burial allowance too, and no longer for the residence.
    correct_death(&harness, &recorded, |death| {
        death.procedures = vec![ProcedureId::DeathRegistration, ProcedureId::BurialAllowance];
    })
    .await;
    harness.drain(&engine).await;
    let decisions = harness.decisions().await;
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert_eq!(decisions[1].1.procedure, ProcedureId::BurialAllowance);
    assert_eq!(decisions[1].1.amount_vnd, Some(23_400_000));
    let burial = harness
        .task(task_id(
            DEATH_FOLLOWUPS,
            completed,
            ProcedureId::BurialAllowance,
        ))
        .await
        .expect("the burial allowance's task");
    assert_eq!(burial.state.status, TaskStatus::Open);
    let residence = harness
        .task(task_id(
            DEATH_FOLLOWUPS,
            completed,
            ProcedureId::ResidenceDeregistration,
        ))
        .await
        .unwrap();
    assert_eq!(residence.state.status, TaskStatus::Cancelled);
    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn a_procedure_made_eligible_by_a_correction_keeps_one_task_when_the_completion_comes_again()
{
    // Funeral support was not eligible (the pensioner is no social-protection beneficiary);
    // the registrar corrects the deceased's number to one who is: its task is made. Then every
    // event is delivered again from the start (a replayed consumer): death-followups, seeing
    // the completion again with the corrected record, must not make a second task.
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(14);
    let (recorded, completed) = registered_death(&mut harness, &engine).await;
    harness.drain(&engine).await;
    let funeral = task_id(DEATH_FOLLOWUPS, completed, ProcedureId::FuneralSupport);
    assert!(harness.task(funeral).await.is_none());
    correct_death(&harness, &recorded, |death| {
        death.deceased.personal_id =
            Some(lifeline_model::values::PersonalId::parse("001140000333").unwrap());
        death.deceased.sex = lifeline_model::values::Sex::Female;
        death.deceased.date_of_birth = NaiveDate::from_ymd_opt(1940, 5, 1);
    })
    .await;
    harness.drain(&engine).await;
    let funeral_tasks = |tasks: Vec<TaskCreated>| {
        tasks
            .into_iter()
            .filter(|task| task.procedure == ProcedureId::FuneralSupport)
            .collect::<Vec<_>>()
    };
    let made = funeral_tasks(harness.created_tasks().await);
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(
        made[0].application.get("eligibility.amount_vnd"),
        Some(&json!(7_200_000))
    );
    let before = snapshot(&harness).await;

    harness.cursor = LogCursor::START;
    harness.drain(&engine).await;
    let after = funeral_tasks(harness.created_tasks().await);
    assert_eq!(after.len(), 1, "the replay adds no second task: {after:?}");
    assert_eq!(snapshot(&harness).await, before, "the replay adds nothing");
    // The procedure's first task, with the id death-followups gives it.
    assert_eq!(made[0].task_id, funeral);
    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn a_birth_follow_up_chosen_by_a_correction_gets_its_task_and_one_dropped_is_cancelled() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(15);
    let mut body = birth_body();
    body["procedures"] = json!(["birth-registration", "residence-registration"]);
    let (_, birth, completed) = registered_birth(&mut harness, &engine, body, "KS-2026-015").await;
    let residence = task_id(
        BIRTH_FOLLOWUPS,
        completed,
        ProcedureId::ResidenceRegistration,
    );
    assert!(harness.task(residence).await.is_some());
    let pin = harness.pins().await[0].personal_id.as_str().to_owned();

    // The declarant had asked for the child's health-insurance card, not the residence entry.
    correct_birth(
        &harness,
        &birth,
        "chọn nhầm thủ tục",
        |declaration| {
            declaration.procedures = vec![
                ProcedureId::BirthRegistration,
                ProcedureId::ChildHealthInsurance,
            ];
        },
    )
    .await;
    harness.drain(&engine).await;

    let insurance = harness
        .task(task_id(
            BIRTH_FOLLOWUPS,
            completed,
            ProcedureId::ChildHealthInsurance,
        ))
        .await
        .expect("the insurance task, with the id birth-followups gives it");
    assert_eq!(insurance.state.status, TaskStatus::Open);
    assert_eq!(insurance.created.source_event_id, completed);
    assert_eq!(
        insurance.state.application.get("child.personal_id"),
        Some(&json!(pin))
    );
    assert_eq!(
        insurance.state.application.get("birth_certificate_number"),
        Some(&json!("KS-2026-015"))
    );
    let residence = harness.task(residence).await.unwrap();
    assert_eq!(residence.state.status, TaskStatus::Cancelled);

    // Every event delivered again from the start adds nothing.
    let before = snapshot(&harness).await;
    harness.cursor = LogCursor::START;
    harness.drain(&engine).await;
    assert_eq!(snapshot(&harness).await, before);
    assert_eq!(harness.pins().await.len(), 1);
    assert_policy_metadata(&harness.log().await);
}

#[tokio::test]
async fn a_corrected_residence_moves_the_open_follow_ups_to_the_new_areas_offices() {
    let mut harness = Harness::new().await;
    let engine = engine_with_seed(16);
    let (_, birth, completed) =
        registered_birth(&mut harness, &engine, birth_body(), "KS-2026-016").await;
    let residence = task_id(
        BIRTH_FOLLOWUPS,
        completed,
        ProcedureId::ResidenceRegistration,
    );
    let insurance = task_id(
        BIRTH_FOLLOWUPS,
        completed,
        ProcedureId::ChildHealthInsurance,
    );
    assert_eq!(
        harness
            .task(residence)
            .await
            .unwrap()
            .created
            .office
            .as_str(),
        "79-26734"
    );
    assert_eq!(
        harness
            .task(insurance)
            .await
            .unwrap()
            .created
            .office
            .as_str(),
        "79-00000"
    );

    // The family lives in Hà Nội, not in Hồ Chí Minh City.
    let correction = correct_birth(&harness, &birth, "sai nơi cư trú", |declaration| {
        declaration.residence.province = "01".into();
        declaration.residence.commune = "00004".into();
        declaration.residence.address = "9 Hàng Bông".into();
    })
    .await;
    harness.drain(&engine).await;

    for (old, procedure, office) in [
        (residence, ProcedureId::ResidenceRegistration, "01-00004"),
        (insurance, ProcedureId::ChildHealthInsurance, "01-00000"),
    ] {
        let old = harness.task(old).await.unwrap();
        assert_eq!(old.state.status, TaskStatus::Cancelled, "{procedure:?}");
        let moved = harness
            .task(task_id(CORRECTIONS, correction.event_id, procedure))
            .await
            .expect("the task made again at the new office");
        assert_eq!(moved.created.office.as_str(), office);
        assert_eq!(moved.state.status, TaskStatus::Open);
        assert_eq!(
            moved.state.application.get("birth_certificate_number"),
            Some(&json!("KS-2026-016"))
        );
        if procedure == ProcedureId::ResidenceRegistration {
            assert_eq!(
                moved.state.application.get("residence.address"),
                Some(&json!("9 Hàng Bông"))
            );
        }
    }
    let before = snapshot(&harness).await;
    harness.cursor = LogCursor::START;
    harness.drain(&engine).await;
    assert_eq!(snapshot(&harness).await, before);
    assert_policy_metadata(&harness.log().await);
}
