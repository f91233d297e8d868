//! The policy engine on PostgreSQL: a birth and a death through the whole chain, each
//! delivery handed to two concurrent transactions (two consumers racing on a redelivery), then
//! the whole log replayed once more: every effect exists exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use cqrs_es::Aggregate;
use lifeline_model::codec::{decode_recorded, to_new_event};
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclarationInput, DeathDeclarationInput,
};
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, RecordedEvent, Role, StreamId,
};
use lifeline_model::life_event::{LifeEvent, LifeEventCommand, LifeEventEvent};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::{TaskCommand, TaskEvent, TaskOutcome};
use lifeline_model::values::{vietnam_day_end, FullName, OfficeCode, Sex};
use lifeline_policies::engine::{task_id, task_stream};
use lifeline_policies::facts::TaskFacts;
use lifeline_policies::handler::Noticed;
use lifeline_policies::identity::{IdentityAllocator, PinRequest, StoreAllocator};
use lifeline_policies::reference::ReferenceData;
use lifeline_policies::rules::{BIRTH_FOLLOWUPS, BIRTH_REGISTRATION, DEATH_REGISTRATION};
use lifeline_policies::{PolicyEngine, PolicyError, PolicyHandler};
use lifeline_store::{EventStore, StoreTransaction, TransactionConnection};
use lifeline_tests::chain::inbox_row_version;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

/// Applies every wanted policy to each event after `cursor`, each delivery twice at once.
async fn drain_racing(store: &EventStore, engine: &PolicyEngine, cursor: &mut LogCursor) {
    loop {
        let batch = store.read_all(*cursor, 100).await.unwrap();
        if batch.is_empty() {
            if committed_after(store, *cursor).await == 0 {
                return;
            }
            // Committed but held back behind a transaction still running somewhere on the
            // server (the gap-free read's horizon is server-wide: another test's, say).
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        }
        for event in batch {
            for policy in engine.policy_names() {
                if !engine.wants(policy, &event.event_type) {
                    continue;
                }
                let deliver = || async {
                    let mut tx = store.begin().await.unwrap();
                    engine.apply(policy, &mut tx, &event).await?;
                    tx.commit().await.unwrap();
                    Ok::<_, lifeline_policies::PolicyError>(())
                };
                let (first, second) = futures::join!(deliver(), deliver());
                first.unwrap_or_else(|error| panic!("{policy}: {error}"));
                second.unwrap_or_else(|error| panic!("{policy} (racing): {error}"));
            }
            *cursor = event.cursor();
        }
    }
}

/// The events committed after `cursor`, readable by the gap-free read or not yet.
async fn committed_after(store: &EventStore, cursor: LogCursor) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1, $2)",
    )
    .bind(cursor.transaction_id)
    .bind(cursor.global_position)
    .fetch_one(store.postgres_pool().unwrap())
    .await
    .unwrap()
}

/// Every committed event, in commit order (waiting for any the gap-free read still holds
/// back).
async fn log(store: &EventStore) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    let mut cursor = LogCursor::START;
    loop {
        let batch = store.read_all(cursor, 500).await.unwrap();
        let Some(last) = batch.last() else {
            if committed_after(store, cursor).await == 0 {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        cursor = last.cursor();
        events.extend(batch);
    }
}

fn metadata(role: Role) -> EventMetadata {
    EventMetadata {
        actor: "officer-1".into(),
        role,
        office: None,
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        recorded_at: Utc::now(),
        idempotency_key: None,
        office_signature: None,
    }
}

async fn record(store: &EventStore, kind: &str, command: LifeEventCommand) -> RecordedEvent {
    let events = LifeEvent::default().decide(command).unwrap();
    let stream = StreamId::for_kind(kind, events[0].life_event_id()).unwrap();
    let new = to_new_event(&events[0], Uuid::new_v4(), metadata(Role::Registrar));
    store
        .append(&stream, ExpectedVersion::NoStream, &[new])
        .await
        .unwrap();
    store.read_stream(&stream).await.unwrap().pop().unwrap()
}

async fn complete(store: &EventStore, task_id: Uuid, outcome: TaskOutcome) {
    let stream = task_stream(task_id).unwrap();
    let events = store.read_stream(&stream).await.unwrap();
    let decoded: Vec<_> = events
        .iter()
        .map(|event| (event.event_id, decode_recorded::<TaskEvent>(event).unwrap()))
        .collect();
    let task = TaskFacts::from_events(&decoded, events.last().unwrap().stream_version).unwrap();
    let mut state = task.state.clone();
    let new: Vec<_> = state
        .decide(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome,
            at: Utc::now(),
        })
        .unwrap()
        .into_iter()
        .map(|event| {
            let new = to_new_event(&event, Uuid::new_v4(), metadata(Role::Agency));
            state.apply(event);
            new
        })
        .collect();
    store
        .append(&stream, ExpectedVersion::Exact(task.version), &new)
        .await
        .unwrap();
}

#[tokio::test]
async fn racing_redeliveries_on_postgres_have_the_effect_of_one_delivery() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let mut cursor = LogCursor::START;
    // The fixed day of the chain tests: the example dates never turn late or old.
    let today = lifeline_tests::chain::today();

    let birth: BirthDeclarationInput = serde_json::from_value(json!({
      "office": "79-26734",
      "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": "2026-11-20",
                 "place_of_birth": "Bệnh viện Từ Dũ", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234",
                     "relationship": "mother", "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    }))
    .unwrap();
    let birth = record(
        store,
        "birth",
        LifeEventCommand::RecordBirth {
            life_event_id: Uuid::new_v4(),
            declaration: parse_birth(&birth, today).unwrap(),
            recorded_on: today,
        },
    )
    .await;
    let death: DeathDeclarationInput = serde_json::from_value(json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111",
                    "date_of_birth": "1952-03-15", "sex": "male" },
      "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội" },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222",
                     "relationship": "son" },
      "procedures": ["death-registration", "burial-allowance", "funeral-support"]
    }))
    .unwrap();
    let death = record(
        store,
        "death",
        LifeEventCommand::RecordDeath {
            life_event_id: Uuid::new_v4(),
            declaration: parse_death(&death, vietnam_day_end(today)).unwrap(),
            recorded_on: today,
        },
    )
    .await;
    drain_racing(store, &engine, &mut cursor).await;

    complete(
        store,
        task_id(
            BIRTH_REGISTRATION,
            birth.event_id,
            ProcedureId::BirthRegistration,
        ),
        TaskOutcome::BirthRegistered {
            certificate_number: "KS-2026-001".into(),
        },
    )
    .await;
    complete(
        store,
        task_id(
            DEATH_REGISTRATION,
            death.event_id,
            ProcedureId::DeathRegistration,
        ),
        TaskOutcome::DeathRegistered {
            extract_number: "TK-2026-77".into(),
        },
    )
    .await;
    drain_racing(store, &engine, &mut cursor).await;

    let events = log(store).await;
    let mut procedures = Vec::new();
    let mut pins = 0;
    let mut decisions = Vec::new();
    for event in &events {
        if let Ok(TaskEvent::TaskCreated(created)) = decode_recorded::<TaskEvent>(event) {
            procedures.push(created.procedure);
        }
        match decode_recorded::<SystemEvent>(event) {
            Ok(SystemEvent::PersonalIdAssigned(_)) => pins += 1,
            Ok(SystemEvent::EligibilityDecided(decided)) => {
                decisions.push((decided.procedure, decided.eligible))
            }
            _ => {}
        }
    }
    procedures.sort_by_key(|procedure| procedure.as_str());
    let mut expected = vec![
        ProcedureId::BirthRegistration,
        ProcedureId::ResidenceRegistration,
        ProcedureId::ChildHealthInsurance,
        ProcedureId::DeathRegistration,
        ProcedureId::BurialAllowance,
    ];
    expected.sort_by_key(|procedure| procedure.as_str());
    assert_eq!(procedures, expected);
    assert_eq!(pins, 1);
    assert_eq!(
        decisions,
        [
            (ProcedureId::BurialAllowance, true),
            (ProcedureId::FuneralSupport, false)
        ]
    );

    // Replay the whole log once more: nothing new.
    let before: BTreeSet<Uuid> = events.iter().map(|event| event.event_id).collect();
    let mut cursor = LogCursor::START;
    drain_racing(store, &engine, &mut cursor).await;
    let after: BTreeSet<Uuid> = log(store)
        .await
        .iter()
        .map(|event| event.event_id)
        .collect();
    assert_eq!(after, before);
}

/// A registration policy handed a whole batch (`apply_batch`, one grouped append), the same
/// batch delivered twice at once and then once more: one task per record. Then a batch of a
/// record handled before and a new one (the grouped append refused, the handled one answered
/// as stored): the new one's task. Every task has the inbox row written with its creation, and
/// the redeliveries leave a row as it was.
#[tokio::test]
async fn racing_batches_of_records_have_the_effect_of_one_delivery() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let records = record_births(store, 4).await;
    let deliver = |events| deliver_registrations(store, &engine, events);
    let batch = &records[..3];
    let (first, second) = futures::join!(deliver(batch), deliver(batch));
    first.unwrap();
    second.unwrap();
    deliver(batch).await.unwrap();
    let first_task = registration_task(&records[0]);
    let first_row = inbox_row_version(store, first_task).await;
    assert!(
        first_row.is_some(),
        "the first task's inbox row, with its creation"
    );
    deliver(&[records[0].clone(), records[3].clone()])
        .await
        .unwrap();

    assert_one_task_per_record(store, &records).await;
    assert_eq!(inbox_row_version(store, first_task).await, first_row);
    test_store.close().await;
}

/// Batches that mix a record handled before with new ones, each delivered three times at once
/// in different orders. Each transaction's grouped append is refused (one task stream exists);
/// appended one at a time, in its batch's order, the new task streams' keys could be taken
/// against another transaction's grouped statement (stream-id order) both ways: a deadlock,
/// PostgreSQL failing one delivery. `StoreTransaction::append_many` answers the handled one
/// as stored and groups the rest again: every delivery succeeds, one task per record.
#[tokio::test]
async fn racing_redeliveries_among_creations_do_not_deadlock() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let mut all = Vec::new();
    for round in 0..8 {
        let records = record_births(store, 5).await;
        deliver_registrations(store, &engine, &records[..1])
            .await
            .unwrap();
        let forward = records.clone();
        let mut backward = records.clone();
        backward.reverse();
        let mut rotated = records.clone();
        rotated.rotate_left(2);
        let (first, second, third) = futures::join!(
            deliver_registrations(store, &engine, &forward),
            deliver_registrations(store, &engine, &backward),
            deliver_registrations(store, &engine, &rotated)
        );
        for (delivery, result) in [("forward", first), ("backward", second), ("rotated", third)] {
            if let Err(error) = result {
                panic!("round {round}, the {delivery} delivery failed: {error}");
            }
        }
        all.extend(records);
    }
    assert_one_task_per_record(store, &all).await;
    test_store.close().await;
}

/// Records `count` births at one office, each in its own stream; answers them in order.
async fn record_births(store: &EventStore, count: usize) -> Vec<RecordedEvent> {
    // The fixed day of the chain tests: the example dates never turn late or old.
    let today = lifeline_tests::chain::today();
    let names = [
        "Nguyễn Minh An",
        "Phạm Thu Hà",
        "Lê Quốc Bảo",
        "Võ Thanh Tâm",
        "Đặng Gia Huy",
    ];
    let mut births = Vec::with_capacity(count);
    for index in 0..count {
        let input: BirthDeclarationInput = serde_json::from_value(json!({
          "office": "79-26734",
          "child": { "full_name": names[index % names.len()], "sex": "female",
                     "date_of_birth": "2026-11-20",
                     "place_of_birth": "Bệnh viện Từ Dũ", "nationality": "VN" },
          "mother": { "full_name": "Trần Thị Bích",
                      "personal_id": format!("07919000123{}", index % 10) },
          "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
          "declarant": { "full_name": "Trần Thị Bích",
                         "personal_id": format!("07919000123{}", index % 10),
                         "relationship": "mother", "phone": "+84901234567" },
          "procedures": ["birth-registration"]
        }))
        .unwrap();
        births.push(
            record(
                store,
                "birth",
                LifeEventCommand::RecordBirth {
                    life_event_id: Uuid::new_v4(),
                    declaration: parse_birth(&input, today).unwrap(),
                    recorded_on: today,
                },
            )
            .await,
        );
    }
    births
}

/// The birth-registration task of a birth record.
fn registration_task(record: &RecordedEvent) -> Uuid {
    task_id(
        BIRTH_REGISTRATION,
        record.event_id,
        ProcedureId::BirthRegistration,
    )
}

/// The log holds exactly one `TaskCreated` per record, its birth-registration task, and each
/// task has its inbox row (written with its creation: no projection ran).
async fn assert_one_task_per_record(store: &EventStore, records: &[RecordedEvent]) {
    let events = log(store).await;
    let created: Vec<Uuid> = events
        .iter()
        .filter(|event| event.event_type == "TaskCreated")
        .map(|event| match decode_recorded::<TaskEvent>(event).unwrap() {
            TaskEvent::TaskCreated(task) => task.task_id,
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: BTreeSet<Uuid> = records.iter().map(registration_task).collect();
    assert_eq!(
        created.len(),
        records.len(),
        "one task per birth: {created:?}"
    );
    assert_eq!(created.into_iter().collect::<BTreeSet<_>>(), expected);
    for task in &expected {
        assert!(
            inbox_row_version(store, *task).await.is_some(),
            "task {task} has no inbox row"
        );
    }
}

/// `events` handed to the birth registrations as one batch, in a transaction of its own.
async fn deliver_registrations(
    store: &EventStore,
    engine: &PolicyEngine,
    events: &[RecordedEvent],
) -> Result<(), PolicyError> {
    let mut tx = store.begin().await.unwrap();
    engine
        .apply_batch(BIRTH_REGISTRATION, &mut tx, events)
        .await
        .map_err(|(_, error)| error)?;
    tx.commit().await.unwrap();
    Ok(())
}

/// Birth follow-ups handed a whole batch of completions (`apply_batch`: every event's reads,
/// then the numbers, then one grouped append), one completion twice in the batch, the same
/// batch delivered twice at once and then once more: one number and one task per procedure per
/// child.
/// Three births at one office recorded, their registration tasks created by `engine` and
/// completed with a certificate: answers the births and the completions, in commit order.
async fn completed_births(
    store: &EventStore,
    engine: &PolicyEngine,
) -> (Vec<RecordedEvent>, Vec<RecordedEvent>) {
    let today = lifeline_tests::chain::today();
    let mut births = Vec::new();
    for (index, name) in ["Nguyễn Minh An", "Phạm Thu Hà", "Lê Quốc Bảo"]
        .iter()
        .enumerate()
    {
        let input: BirthDeclarationInput = serde_json::from_value(json!({
          "office": "79-26734",
          "child": { "full_name": name, "sex": "female", "date_of_birth": "2026-11-20",
                     "place_of_birth": "Bệnh viện Từ Dũ", "nationality": "VN" },
          "mother": { "full_name": "Trần Thị Bích", "personal_id": format!("07919000123{index}") },
          "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
          "declarant": { "full_name": "Trần Thị Bích", "personal_id": format!("07919000123{index}"),
                         "relationship": "mother", "phone": "+84901234567" },
          "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
        }))
        .unwrap();
        births.push(
            record(
                store,
                "birth",
                LifeEventCommand::RecordBirth {
                    life_event_id: Uuid::new_v4(),
                    declaration: parse_birth(&input, today).unwrap(),
                    recorded_on: today,
                },
            )
            .await,
        );
    }
    // As a bus consumer hands them over: notices (id and stream), the records read held.
    let mut tx = store.begin().await.unwrap();
    engine
        .apply_notices(BIRTH_REGISTRATION, &mut tx, &noticed(&births))
        .await
        .map_err(|(_, error)| error)
        .unwrap();
    tx.commit().await.unwrap();
    for (index, birth) in births.iter().enumerate() {
        complete(
            store,
            task_id(
                BIRTH_REGISTRATION,
                birth.event_id,
                ProcedureId::BirthRegistration,
            ),
            TaskOutcome::BirthRegistered {
                certificate_number: format!("KS-2026-00{index}"),
            },
        )
        .await;
    }
    let batch: Vec<RecordedEvent> = log(store)
        .await
        .into_iter()
        .filter(|event| event.event_type == "TaskCompleted")
        .collect();
    assert_eq!(batch.len(), 3);
    (births, batch)
}

/// The notices of `events`, as the bus carries them.
fn noticed(events: &[RecordedEvent]) -> Vec<Noticed<'_>> {
    events
        .iter()
        .map(|event| Noticed {
            event_id: event.event_id,
            stream_id: event.stream_id.as_str(),
        })
        .collect()
}

/// Notices handed to `apply_notices` (what the NATS consumers do; `completed_births` hands the
/// registration its records so, taken from the record streams it reads held): a notice whose
/// stream does not hold its event (a registration), or whose event is not stored at all (a
/// follow-up, which reads by id), fails with its index and writes nothing; the follow-ups'
/// batch, one notice twice, has the effect of `apply_batch`; a registration's notice whose
/// stream is not a stream id is read by its event id.
#[tokio::test]
async fn notices_name_a_missing_event_and_have_the_effect_of_a_batch() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let (births, completions) = completed_births(store, &engine).await;
    let before = log(store).await.len();

    // A record noticed in another record's stream, behind a good notice.
    let mut elsewhere = noticed(&births[..2]);
    elsewhere[1].stream_id = births[2].stream_id.as_str();
    // A completion that was never stored, behind a good notice.
    let mut unknown = noticed(&completions[..2]);
    unknown[1].event_id = Uuid::new_v4();
    for (policy, notices) in [
        (BIRTH_REGISTRATION, &elsewhere),
        (BIRTH_FOLLOWUPS, &unknown),
    ] {
        let mut tx = store.begin().await.unwrap();
        let (index, error) = engine
            .apply_notices(policy, &mut tx, notices)
            .await
            .expect_err("the second notice's event is not where it says");
        assert_eq!(index, Some(1), "{policy}: {error}");
        let missing = notices[1].event_id;
        assert!(
            matches!(error, PolicyError::Missing { event_id } if event_id == missing),
            "{policy}: {error:?}"
        );
        assert!(error.to_string().contains(&missing.to_string()), "{error}");
        tx.rollback().await.unwrap();
    }
    assert_eq!(log(store).await.len(), before, "nothing written");

    let mut batch = noticed(&completions);
    batch.push(batch[0]);
    let mut tx = store.begin().await.unwrap();
    engine
        .apply_notices(BIRTH_FOLLOWUPS, &mut tx, &batch)
        .await
        .map_err(|(_, error)| error)
        .unwrap();
    tx.commit().await.unwrap();
    let mut numbered = BTreeSet::new();
    let mut created = Vec::new();
    for event in log(store).await {
        if let Ok(SystemEvent::PersonalIdAssigned(assigned)) = decode_recorded(&event) {
            numbered.insert(assigned.life_event_id);
        }
        if let Ok(TaskEvent::TaskCreated(task)) = decode_recorded(&event) {
            if task.procedure != ProcedureId::BirthRegistration {
                created.push((task.life_event_id, task.procedure));
            }
        }
    }
    assert_eq!(numbered.len(), 3, "one number per child");
    assert_eq!(created.len(), 6, "two follow-ups per child: {created:?}");

    // Read by id when the stream is not a stream id: handled again, nothing more written.
    let after = log(store).await.len();
    let odd = [Noticed {
        event_id: births[2].event_id,
        stream_id: "not a stream id",
    }];
    let mut tx = store.begin().await.unwrap();
    engine
        .apply_notices(BIRTH_REGISTRATION, &mut tx, &odd)
        .await
        .map_err(|(_, error)| error)
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(log(store).await.len(), after);
    test_store.close().await;
}

#[tokio::test]
async fn racing_batches_of_completions_have_the_effect_of_one_delivery() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let (births, mut batch) = completed_births(store, &engine).await;
    batch.push(batch[0].clone());
    let deliver = || async {
        let mut tx = store.begin().await.unwrap();
        engine
            .apply_batch(BIRTH_FOLLOWUPS, &mut tx, &batch)
            .await
            .map_err(|(_, error)| error)?;
        tx.commit().await.unwrap();
        Ok::<_, lifeline_policies::PolicyError>(())
    };
    let (first, second) = futures::join!(deliver(), deliver());
    first.unwrap();
    second.unwrap();
    deliver().await.unwrap();

    let mut numbered = Vec::new();
    let mut created = Vec::new();
    for event in log(store).await {
        if let Ok(SystemEvent::PersonalIdAssigned(assigned)) = decode_recorded(&event) {
            numbered.push(assigned.life_event_id);
        }
        if let Ok(TaskEvent::TaskCreated(task)) = decode_recorded(&event) {
            if task.procedure != ProcedureId::BirthRegistration {
                created.push((task.life_event_id, task.procedure));
            }
        }
    }
    let children: BTreeSet<Uuid> = births
        .iter()
        .map(|birth| {
            decode_recorded::<lifeline_model::life_event::LifeEventEvent>(birth)
                .unwrap()
                .life_event_id()
        })
        .collect();
    numbered.sort();
    assert_eq!(
        numbered,
        children.iter().copied().collect::<Vec<_>>(),
        "one number per child"
    );
    created.sort_by_key(|(life_event_id, procedure)| (*life_event_id, procedure.as_str()));
    let expected: Vec<_> = children
        .iter()
        .flat_map(|child| {
            [
                (*child, ProcedureId::ChildHealthInsurance),
                (*child, ProcedureId::ResidenceRegistration),
            ]
        })
        .collect();
    assert_eq!(created, expected, "one task per procedure per child");
    test_store.close().await;
}

#[tokio::test]
async fn a_batch_draws_every_child_a_number_and_draws_again_for_a_taken_one() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let (births, batch) = completed_births(store, &engine).await;
    // Two allocators with the same seed draw the same digits in the same order: the first
    // takes the number the batch's first child will draw first.
    let seeded = || StoreAllocator::with_rng(StdRng::seed_from_u64(11));
    let mut draws = StdRng::seed_from_u64(11);
    let expected: Vec<String> = (0..4)
        .map(|_| format!("079326{:06}", draws.gen_range(0..1_000_000_u32)))
        .collect();
    let other = Uuid::new_v4();
    let mut tx = store.begin().await.unwrap();
    let taken = seeded()
        .assign(
            &mut tx,
            &PinRequest {
                life_event_id: other,
                task_id: None,
                office: OfficeCode::parse("79-26734").unwrap(),
                full_name: FullName::parse_field("Võ Thị Mai", "child.full_name").unwrap(),
                date_of_birth: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
                sex: Sex::Female,
                cause: Uuid::new_v4(),
                correlation_id: Uuid::new_v4(),
                at: Utc::now(),
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(taken.personal_id.as_str(), expected[0]);

    let numbering = PolicyEngine::new(ReferenceData::embedded().unwrap(), Arc::new(seeded()));
    let mut tx = store.begin().await.unwrap();
    numbering
        .apply_batch(BIRTH_FOLLOWUPS, &mut tx, &batch)
        .await
        .map_err(|(_, error)| error)
        .unwrap();
    tx.commit().await.unwrap();

    // The child of each completion, in the batch's order.
    let child_of_task: BTreeMap<Uuid, Uuid> = births
        .iter()
        .map(|birth| {
            let child = decode_recorded::<LifeEventEvent>(birth)
                .unwrap()
                .life_event_id();
            let task = task_id(
                BIRTH_REGISTRATION,
                birth.event_id,
                ProcedureId::BirthRegistration,
            );
            (task, child)
        })
        .collect();
    let children: Vec<Uuid> = batch
        .iter()
        .map(|event| match decode_recorded::<TaskEvent>(event).unwrap() {
            TaskEvent::TaskCompleted(completed) => child_of_task[&completed.task_id],
            other => panic!("not a completion: {other:?}"),
        })
        .collect();
    let mut numbers = BTreeMap::new();
    let mut prefilled = BTreeMap::new();
    for event in log(store).await {
        if let Ok(SystemEvent::PersonalIdAssigned(assigned)) = decode_recorded(&event) {
            let earlier = numbers.insert(
                assigned.life_event_id,
                assigned.personal_id.as_str().to_owned(),
            );
            assert_eq!(earlier, None, "one number per child");
        }
        if let Ok(TaskEvent::TaskCreated(task)) = decode_recorded(&event) {
            if task.procedure == ProcedureId::ResidenceRegistration {
                prefilled.insert(
                    task.life_event_id,
                    task.application.get("child.personal_id").cloned(),
                );
            }
        }
    }
    assert_eq!(numbers.len(), 4);
    assert_eq!(numbers[&other], expected[0]);
    // The first child's first draw was taken: it drew again, after the others' first draws.
    assert_eq!(numbers[&children[0]], expected[3]);
    assert_eq!(numbers[&children[1]], expected[1]);
    assert_eq!(numbers[&children[2]], expected[2]);
    for child in &children {
        assert_eq!(
            prefilled[child],
            Some(json!(numbers[child])),
            "the tasks carry the child's own number"
        );
    }
    test_store.close().await;
}

/// How many times this transaction has called the grouped append's function that answers its
/// refusal (`lifeline_try_append_new_streams`), by PostgreSQL's function statistics of the
/// transaction (`SET LOCAL track_functions = 'pl'` first, which takes a superuser: the test
/// server's `postgres` role is one).
async fn grouped_append_calls(tx: &mut StoreTransaction<'_>) -> i64 {
    let TransactionConnection::Postgres(conn) = tx.connection().unwrap() else {
        panic!("a PostgreSQL transaction");
    };
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions \
         WHERE funcname = 'lifeline_try_append_new_streams'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn track_functions(tx: &mut StoreTransaction<'_>) {
    let TransactionConnection::Postgres(conn) = tx.connection().unwrap() else {
        panic!("a PostgreSQL transaction");
    };
    sqlx::query("SET LOCAL track_functions = 'pl'")
        .execute(conn)
        .await
        .unwrap();
}

/// A batch of birth-registration completions whose children's first draws are free is stored
/// in one statement: the numbers, the follow-up tasks and their inbox rows
/// (`StoreTransaction::append_whole_with_new_tasks`), one call of the grouped append's function
/// where the numbers and the tasks took one each. Delivered again, that whole is refused (the
/// assignments are stored) and nothing of it stays: the batch goes append by append, and
/// nothing is doubled.
#[tokio::test]
async fn a_batch_of_completions_is_stored_whole_with_the_childrens_numbers() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store();
    let engine = PolicyEngine::embedded().unwrap();
    let (births, batch) = completed_births(store, &engine).await;
    let deliver = || async {
        let mut tx = store.begin().await.unwrap();
        track_functions(&mut tx).await;
        engine
            .apply_batch(BIRTH_FOLLOWUPS, &mut tx, &batch)
            .await
            .map_err(|(_, error)| error)
            .unwrap();
        let calls = grouped_append_calls(&mut tx).await;
        tx.commit().await.unwrap();
        calls
    };
    assert_eq!(
        deliver().await,
        1,
        "the numbers and the tasks in one statement"
    );
    let after = log(store).await;
    assert!(deliver().await > 1, "a redelivery is refused whole");
    assert_eq!(log(store).await.len(), after.len(), "nothing doubled");

    let mut numbers = BTreeMap::new();
    let mut prefilled = Vec::new();
    for event in &after {
        if let Ok(SystemEvent::PersonalIdAssigned(assigned)) = decode_recorded(event) {
            let earlier = numbers.insert(
                assigned.life_event_id,
                assigned.personal_id.as_str().to_owned(),
            );
            assert_eq!(earlier, None, "one number per child");
        }
        if let Ok(TaskEvent::TaskCreated(task)) = decode_recorded(event) {
            if task.procedure != ProcedureId::BirthRegistration {
                let row = lifeline_store::projections::task(store, task.task_id)
                    .await
                    .unwrap()
                    .expect("the follow-up's inbox row, written with its creation");
                assert_eq!(row.application, task.application);
                prefilled.push((
                    task.life_event_id,
                    task.application.get("child.personal_id").cloned(),
                ));
            }
        }
    }
    assert_eq!(numbers.len(), births.len());
    assert_eq!(
        prefilled.len(),
        2 * births.len(),
        "two follow-ups per child"
    );
    for (child, number) in prefilled {
        assert_eq!(
            number,
            Some(json!(numbers[&child])),
            "the tasks carry the child's own number"
        );
    }
    test_store.close().await;
}

/// A birth recorded late whose correction (its date of birth, no longer late) is in the log
/// before the registration policy runs: the registration task is made from the record as it
/// stands, `late` included. (Until 2026-12-07 it took the corrected declaration but `late` as
/// first recorded.)
#[tokio::test]
async fn a_registration_made_after_a_correction_takes_the_corrected_late() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store().clone();
    let engine = PolicyEngine::embedded().unwrap();
    let today = lifeline_tests::chain::today();
    let declared = |date_of_birth: &str| {
        let input: BirthDeclarationInput = serde_json::from_value(json!({
          "office": "79-26734",
          "child": { "full_name": "Nguyễn Minh An", "sex": "female",
                     "date_of_birth": date_of_birth,
                     "place_of_birth": "Bệnh viện Từ Dũ", "nationality": "VN" },
          "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234" },
          "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
          "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234",
                         "relationship": "mother" },
          "procedures": ["birth-registration"]
        }))
        .unwrap();
        parse_birth(&input, today).unwrap()
    };
    let life_event_id = Uuid::new_v4();
    let recorded = record(
        &store,
        "birth",
        LifeEventCommand::RecordBirth {
            life_event_id,
            declaration: declared("2026-08-01"),
            recorded_on: today,
        },
    )
    .await;
    let stream = recorded.stream_id.clone();
    let mut state = LifeEvent::default();
    for event in LifeEvent::default()
        .decide(LifeEventCommand::RecordBirth {
            life_event_id,
            declaration: declared("2026-08-01"),
            recorded_on: today,
        })
        .unwrap()
    {
        state.apply(event);
    }
    assert!(state.late, "recorded late");
    let corrected: Vec<_> = state
        .decide(LifeEventCommand::Correct {
            declaration: lifeline_model::declaration::Declaration::Birth(declared("2026-11-01")),
            reason: "the date of birth was mistyped".into(),
            recorded_on: today,
        })
        .unwrap()
        .iter()
        .map(|event| to_new_event(event, Uuid::new_v4(), metadata(Role::Registrar)))
        .collect();
    store
        .append(
            &stream,
            ExpectedVersion::Exact(recorded.stream_version),
            &corrected,
        )
        .await
        .unwrap();

    deliver_registrations(&store, &engine, std::slice::from_ref(&recorded))
        .await
        .unwrap();
    let task = store
        .read_stream(&task_stream(registration_task(&recorded)).unwrap())
        .await
        .unwrap();
    let created = match decode_recorded::<TaskEvent>(&task[0]).unwrap() {
        TaskEvent::TaskCreated(created) => created,
        other => panic!("{other:?}"),
    };
    assert_eq!(created.application.get("late"), Some(&json!(false)));
    assert_eq!(
        created.application.get("child.date_of_birth"),
        Some(&json!("2026-11-01"))
    );
    test_store.close().await;
}
