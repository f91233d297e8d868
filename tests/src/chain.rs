//! The birth and death chains with the real policies: declarations, the registrar and the
//! agencies (through the `lifeline` services), reading tasks, numbers and decisions back from
//! the log, the runtime roles of one test, and the `lifeline` binary for process tests.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use lifeline::registry::{Actor, Registry};
use lifeline::tasks::TaskDesk;
use lifeline_model::codec::{decode_recorded, to_new_event};
use lifeline_model::declaration::{flatten, BirthDeclarationInput, DeathDeclarationInput};
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, RecordedEvent, Role as EnvelopeRole, StreamId,
};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::{EligibilityDecided, PersonalIdAssigned, SystemEvent};
use lifeline_model::task::{TaskCommand, TaskCreated, TaskEvent, TaskOutcome};
use lifeline_policies::engine::{task_stream, PolicyEngine};
use lifeline_policies::identity::{assignment_event_id, StoreAllocator};
use lifeline_policies::projections::projection_subscribers;
use lifeline_policies::reference::ReferenceData;
use lifeline_policies::runtime::{
    run_roles, BusConfig, ConsumerOptions, RelayOptions, Role, RuntimeSettings,
};
use lifeline_policies::PolicyHandler;
use lifeline_store::EventStore;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::nats::{test_consumer_options, test_embedded_options};

/// The day every test records on: fixed, so that validation and `late` never depend on the
/// machine's clock.
pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).expect("a valid date")
}

/// A fixed instant for what the test itself stamps (completions).
pub fn fixed_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0)
        .single()
        .expect("a valid instant")
}

/// The birth of `DESIGN.md`, the child's name numbered by `index`.
pub fn birth_input(index: usize) -> BirthDeclarationInput {
    serde_json::from_value(json!({
      "office": "79-26734",
      "child": { "full_name": format!("Nguyễn Minh An {}", letters(index)), "sex": "female",
                 "date_of_birth": "2026-11-20",
                 "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                 "ethnicity": "Kinh", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
      "birth_notice": { "number": format!("TD-2026-{index:06}"), "issuer": "Bệnh viện Từ Dũ", "date": "2026-11-20" },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                     "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    }))
    .expect("a birth declaration")
}

/// The death of `DESIGN.md` with the declarant's choice of `procedures`. The deceased
/// (`001052000111`) is a pensioner with a registered residence and no social-protection record
/// (`policies/data/*.csv`): residence deregistration and burial allowance are eligible, funeral
/// support is not.
pub fn death_input(procedures: &[&str]) -> DeathDeclarationInput {
    serde_json::from_value(json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                    "sex": "male" },
      "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                 "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": "2026-11-18" } },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                     "email": "dung@example.vn", "phone": "+84912345678" },
      "procedures": procedures
    }))
    .expect("a death declaration")
}

/// Names may hold letters only: 0 -> "A", 25 -> "Z", 26 -> "AA"...
fn letters(mut index: usize) -> String {
    let mut name = Vec::new();
    loop {
        name.push(char::from(b'A' + (index % 26) as u8));
        index /= 26;
        if index == 0 {
            break;
        }
        index -= 1;
    }
    name.iter().rev().collect()
}

/// A registrar of `office`; with `idempotency_key` the record's id and event ids are fixed.
pub fn registrar(office: &str, idempotency_key: Option<String>) -> Actor {
    let correlation = idempotency_key.as_deref().map_or_else(Uuid::new_v4, |key| {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
    });
    Actor {
        id: format!("registrar-{office}"),
        role: EnvelopeRole::Registrar,
        office: Some(office.to_owned()),
        correlation_id: correlation,
        idempotency_key,
    }
}

/// An officer of the agency office a task is routed to.
pub fn officer(office: &str) -> Actor {
    Actor {
        id: "officer-1".to_owned(),
        role: EnvelopeRole::Agency,
        office: Some(office.to_owned()),
        correlation_id: Uuid::new_v4(),
        idempotency_key: None,
    }
}

/// Records a birth through the registrar's service; answers the stored `BirthRecorded`.
pub async fn record_birth(
    store: &EventStore,
    registry: &Registry,
    index: usize,
    idempotency_key: Option<String>,
) -> RecordedEvent {
    let recorded = registry
        .record_birth(
            &registrar("79-26734", idempotency_key),
            &birth_input(index),
            today(),
        )
        .await
        .expect("record a birth");
    first_event(store, &recorded.stream_id).await
}

/// Records a death through the registrar's service; answers the stored `DeathRecorded`.
pub async fn record_death(
    store: &EventStore,
    registry: &Registry,
    procedures: &[&str],
    idempotency_key: Option<String>,
) -> RecordedEvent {
    let recorded = registry
        .record_death(
            &registrar("01-00004", idempotency_key),
            &death_input(procedures),
            lifeline_model::values::vietnam_day_end(today()),
        )
        .await
        .expect("record a death");
    first_event(store, &recorded.stream_id).await
}

async fn first_event(store: &EventStore, stream: &StreamId) -> RecordedEvent {
    store
        .read_stream(stream)
        .await
        .expect("read the life event")
        .into_iter()
        .next()
        .expect("the recorded life event")
}

/// The `TaskCreated` of task `task_id`, if it exists yet.
pub async fn task_created(store: &EventStore, task_id: Uuid) -> Option<TaskCreated> {
    let events = store
        .read_stream(&task_stream(task_id).expect("a task stream"))
        .await
        .expect("read the task stream");
    let first = events.first()?;
    match decode_recorded::<TaskEvent>(first).expect("decode the task's first event") {
        TaskEvent::TaskCreated(created) => Some(created),
        other => panic!("task {task_id} starts with {other:?}"),
    }
}

/// The version (`xmin`) of task `task_id`'s inbox row on PostgreSQL, `None` without a row.
pub async fn inbox_row_version(store: &EventStore, task_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT xmin::text FROM projection_tasks WHERE task_id = $1")
        .bind(task_id)
        .fetch_optional(
            store
                .postgres_pool()
                .expect("row versions are PostgreSQL's"),
        )
        .await
        .expect("read the inbox row's version")
}

/// Waits (at most `timeout`) for task `task_id` to be created.
pub async fn wait_for_task(store: &EventStore, task_id: Uuid, timeout: Duration) -> TaskCreated {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(created) = task_created(store, task_id).await {
            return created;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for task {task_id}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (at most `timeout`) for event `event_id` to be stored.
pub async fn wait_for_event(
    store: &EventStore,
    event_id: Uuid,
    what: &str,
    timeout: Duration,
) -> RecordedEvent {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(event) = store.event_by_id(event_id).await.expect("read an event") {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The personal ID number assigned to the child of `life_event_id`, waiting for it.
pub async fn wait_for_pin(
    store: &EventStore,
    life_event_id: Uuid,
    timeout: Duration,
) -> PersonalIdAssigned {
    let event = wait_for_event(
        store,
        assignment_event_id(life_event_id),
        "the personal ID number",
        timeout,
    )
    .await;
    match decode_recorded::<SystemEvent>(&event).expect("decode the assignment") {
        SystemEvent::PersonalIdAssigned(assigned) => assigned,
        other => panic!("{other:?} under the assignment's id"),
    }
}

/// The agency claims and completes task `task_id` through the task service; answers the id of
/// its `TaskCompleted` (the source of the follow-ups).
pub async fn claim_and_complete(store: &EventStore, task_id: Uuid, outcome: TaskOutcome) -> Uuid {
    let desk = TaskDesk::new(store.clone());
    let task = desk
        .load(task_id)
        .await
        .expect("load the task")
        .expect("the task exists");
    let actor = officer(
        task.state
            .office
            .as_ref()
            .map_or("-", |office| office.as_str()),
    );
    desk.execute(
        &actor,
        task_id,
        TaskCommand::Claim {
            by: actor.id.clone(),
            at: Utc::now(),
        },
    )
    .await
    .expect("claim the task");
    desk.execute(
        &actor,
        task_id,
        TaskCommand::Complete {
            by: actor.id.clone(),
            outcome,
            at: Utc::now(),
        },
    )
    .await
    .expect("complete the task");
    completed_event_id(store, task_id).await
}

/// Completes task `task_id` as its agency would, but with event ids and times fixed by the task
/// id: the same inputs give the same log, whichever runtime fed the policies.
pub async fn complete_deterministically(
    store: &EventStore,
    task_id: Uuid,
    outcome: TaskOutcome,
) -> Uuid {
    let desk = TaskDesk::new(store.clone());
    let task = desk
        .load(task_id)
        .await
        .expect("load the task")
        .expect("the task exists");
    let office = task
        .state
        .office
        .as_ref()
        .map(|office| office.as_str().to_owned());
    let events = task
        .state
        .decide(TaskCommand::Complete {
            by: "officer-1".to_owned(),
            outcome,
            at: fixed_instant(),
        })
        .expect("the task can be completed");
    let metadata = EventMetadata {
        actor: "officer-1".to_owned(),
        role: EnvelopeRole::Agency,
        office,
        correlation_id: Uuid::new_v5(&task_id, b"correlation"),
        causation_id: None,
        recorded_at: fixed_instant(),
        idempotency_key: None,
        office_signature: None,
    };
    let new: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            to_new_event(
                event,
                Uuid::new_v5(&task_id, format!("completion/{index}").as_bytes()),
                metadata.clone(),
            )
        })
        .collect();
    store
        .append(&task.stream_id, ExpectedVersion::Exact(task.version), &new)
        .await
        .expect("append the completion");
    completed_event_id(store, task_id).await
}

async fn completed_event_id(store: &EventStore, task_id: Uuid) -> Uuid {
    store
        .read_stream(&task_stream(task_id).expect("a task stream"))
        .await
        .expect("read the task stream")
        .iter()
        .rev()
        .find(|event| event.event_type == "TaskCompleted")
        .map(|event| event.event_id)
        .expect("the task was completed")
}

/// The application a procedure's agency must receive, computed from the stored life event's
/// payload (flattened to dotted paths) plus the facts added on the way, restricted to the
/// procedure's `application_fields`.
pub fn expected_application(
    recorded: &RecordedEvent,
    procedure: ProcedureId,
    added: &[(&str, Value)],
) -> BTreeMap<String, Value> {
    let mut facts = flatten(&recorded.payload);
    for (field, value) in added {
        facts.insert((*field).to_owned(), value.clone());
    }
    facts
        .into_iter()
        .filter(|(field, _)| procedure.application_fields().contains(&field.as_str()))
        .collect()
}

/// Every event of the log, in commit order.
///
/// On PostgreSQL it reads until it holds at least every event committed when it started: the
/// gap-free reader holds events back while any older transaction of the server runs, other
/// tests' (in other databases) included, so one pass could miss events a count already sees.
pub async fn log(store: &EventStore) -> Vec<RecordedEvent> {
    let committed = match store.postgres_pool() {
        Some(pool) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await
            .expect("count the log"),
        None => 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_all(cursor, 1000).await.expect("read the log");
        let Some(last) = page.last() else {
            if i64::try_from(events.len()).unwrap_or(i64::MAX) >= committed {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the log reader still holds back events: {} of {committed}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        cursor = last.cursor();
        events.extend(page);
    }
}

/// Every `TaskCreated` of the log with its stream.
pub fn created_tasks(log: &[RecordedEvent]) -> Vec<(StreamId, TaskCreated)> {
    log.iter()
        .filter(|event| event.event_type == "TaskCreated")
        .map(|event| match decode_recorded::<TaskEvent>(event) {
            Ok(TaskEvent::TaskCreated(created)) => (event.stream_id.clone(), created),
            other => panic!("a TaskCreated that does not decode: {other:?}"),
        })
        .collect()
}

/// Every `PersonalIdAssigned` of the log.
pub fn assigned_pins(log: &[RecordedEvent]) -> Vec<PersonalIdAssigned> {
    log.iter()
        .filter(|event| event.event_type == "PersonalIdAssigned")
        .map(|event| match decode_recorded::<SystemEvent>(event) {
            Ok(SystemEvent::PersonalIdAssigned(assigned)) => assigned,
            other => panic!("a PersonalIdAssigned that does not decode: {other:?}"),
        })
        .collect()
}

/// Every `EligibilityDecided` of the log with its stream.
pub fn eligibility_decisions(log: &[RecordedEvent]) -> Vec<(StreamId, EligibilityDecided)> {
    log.iter()
        .filter(|event| event.event_type == "EligibilityDecided")
        .map(|event| match decode_recorded::<SystemEvent>(event) {
            Ok(SystemEvent::EligibilityDecided(decided)) => (event.stream_id.clone(), decided),
            other => panic!("an EligibilityDecided that does not decode: {other:?}"),
        })
        .collect()
}

/// How many events of `event_type` the log holds: a cheap count to poll on (PostgreSQL).
pub async fn count_events(store: &EventStore, event_type: &str) -> i64 {
    let pool = store.postgres_pool().expect("a PostgreSQL store");
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// Polls [`count_events`] until it reaches `expected` (failing past it or after `timeout`).
pub async fn wait_for_count(
    store: &EventStore,
    event_type: &str,
    expected: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let count = count_events(store, event_type).await;
        assert!(
            count <= expected,
            "{count} {event_type}, expected {expected}"
        );
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} with {count} of {expected} {event_type}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts every task of the log is created exactly once in a stream of its own (no stream with
/// two `TaskCreated`, no task id twice); answers the task streams.
pub fn assert_tasks_exactly_once(tasks: &[(StreamId, TaskCreated)]) -> HashSet<StreamId> {
    let streams: HashSet<StreamId> = tasks.iter().map(|(stream, _)| stream.clone()).collect();
    let ids: HashSet<Uuid> = tasks.iter().map(|(_, created)| created.task_id).collect();
    assert_eq!(streams.len(), tasks.len(), "a task stream created twice");
    assert_eq!(ids.len(), tasks.len(), "a task id created twice");
    for (stream, created) in tasks {
        assert_eq!(
            *stream,
            task_stream(created.task_id).expect("a task stream"),
            "task {} in the wrong stream",
            created.task_id
        );
    }
    streams
}

/// The real policy engine: embedded reference data and Lifeline's own allocator (random
/// numbers), or one whose numbers follow from the seed and the child
/// (`StoreAllocator::keyed`: the same numbers for the same births, whatever the order in which
/// they are assigned and however often a request is redelivered).
pub fn real_engine(seed: Option<u64>) -> Arc<PolicyEngine> {
    let reference = ReferenceData::embedded().expect("the embedded reference data");
    let allocator = match seed {
        Some(seed) => StoreAllocator::keyed(seed),
        None => StoreAllocator::new(),
    };
    Arc::new(PolicyEngine::new(reference, Arc::new(allocator)))
}

/// Relay and consumer options for tests: short polls, short acks, quick retries.
pub fn test_settings(bus: &BusConfig, max_attempts: u32) -> RuntimeSettings {
    RuntimeSettings {
        bus: bus.clone(),
        relay: RelayOptions {
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
            ack_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..RelayOptions::default()
        },
        consumer: test_consumer_options(max_attempts),
        embedded: test_embedded_options(max_attempts),
    }
}

/// The runtime roles of one test (`run_roles` with the projections), stopped by
/// [`Roles::stop`].
pub struct Roles {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Roles {
    pub fn start(
        store: &EventStore,
        jetstream: Option<&jetstream::Context>,
        roles: &[Role],
        handler: Arc<dyn PolicyHandler>,
        settings: RuntimeSettings,
    ) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let store = store.clone();
        let jetstream = jetstream.cloned();
        let roles = roles.to_vec();
        let task = tokio::spawn(async move {
            run_roles(
                store,
                jetstream,
                &roles,
                handler,
                projection_subscribers(),
                settings,
                shutdown,
            )
            .await
            .expect("the runtime roles start");
        });
        Self { stop, task }
    }

    /// Signals shutdown and waits (at most 15 s) for every role to stop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the roles stop within 15s of shutdown")
            .expect("the roles ran without panicking");
    }
}

/// Waits until `policy`'s durable consumer has been handed every message of the stream and has
/// nothing unacknowledged.
pub async fn wait_consumer_drained(
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    options: &ConsumerOptions,
    policy: &str,
    timeout: Duration,
) {
    let durable = options.durable_name(policy);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(stream) = jetstream.get_stream(&bus.stream_name).await {
            let last = stream.get_info().await.map(|info| info.state.last_sequence);
            if let (Ok(last), Ok(info)) = (last, stream.consumer_info(&durable).await) {
                if info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.delivered.stream_sequence >= last
                    && last > 0
                {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for consumer {durable} to drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `lifeline` binary, built once per test process (`cargo build -p lifeline --bin
/// lifeline`, debug profile) and found under the workspace's target directory: the tests crate
/// cannot use `CARGO_BIN_EXE_lifeline`, which Cargo sets only for the `lifeline` package's own
/// tests. `LIFELINE_TEST_BIN` names a binary to use instead (the build waits for Cargo's lock
/// on the target directory while other builds hold it).
pub fn lifeline_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("LIFELINE_TEST_BIN") {
            return PathBuf::from(binary);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests crate sits in the workspace");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "lifeline", "--bin", "lifeline"])
            .current_dir(workspace)
            .status()
            .expect("run cargo build for the lifeline binary");
        assert!(status.success(), "cargo build -p lifeline failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        let binary = target
            .join("debug")
            .join(format!("lifeline{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.exists(),
            "no lifeline binary at {}",
            binary.display()
        );
        binary
    })
}
