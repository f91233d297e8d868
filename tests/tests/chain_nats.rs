//! The real policies (`PolicyEngine`) over real PostgreSQL and real NATS JetStream: the birth
//! and death chains end to end through the relay and the policy consumers, duplicate deliveries
//! and a replayed consumer, the `lifeline serve --role worker` process killed with SIGKILL, a
//! NATS outage, a poison event, and embedded vs NATS mode giving the same tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_trait::async_trait;
use lifeline::registry::{Change, Registry};
use lifeline_model::declaration::Declaration;
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, NewEvent, RecordedEvent};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::task::{TaskCreated, TaskOutcome};
use lifeline_policies::engine::{task_id, POLICY_NAMES};
use lifeline_policies::rules::corrections::update_event_id;
use lifeline_policies::rules::{
    BIRTH_FOLLOWUPS, BIRTH_REGISTRATION, CORRECTIONS, DEATH_FOLLOWUPS, DEATH_REGISTRATION,
};
use lifeline_policies::runtime::{
    list_failed, retry_failed, BusConfig, ConsumerOptions, EventNotice, RetryFilter, Role,
};
use lifeline_policies::{PolicyError, PolicyHandler};
use lifeline_store::{EventStore, StoreTransaction};
use lifeline_tests::chain::{
    assert_tasks_exactly_once, assigned_pins, claim_and_complete, complete_deterministically,
    count_events, created_tasks, eligibility_decisions, expected_application, lifeline_binary, log,
    real_engine, record_birth, record_death, registrar, test_settings, today,
    wait_consumer_drained, wait_for_count, wait_for_event, wait_for_pin, wait_for_task, Roles,
};
use lifeline_tests::nats::{
    connect, delete_stream, postgres_url_of, shared_nats, shared_nats_url, unique_bus, PrivateNats,
};
use lifeline_tests::postgres_store;
use serde_json::{json, Value};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(40);
const BIRTH_FOLLOWUP_PROCEDURES: [ProcedureId; 2] = [
    ProcedureId::ResidenceRegistration,
    ProcedureId::ChildHealthInsurance,
];

fn relay_and_worker() -> [Role; 2] {
    [Role::Relay, Role::Worker]
}

/// Asserts a task's application is exactly `expected`, naming each differing field.
fn assert_application(task: &TaskCreated, expected: &BTreeMap<String, Value>) {
    let found = &task.application.0;
    for (field, value) in expected {
        assert_eq!(
            found.get(field),
            Some(value),
            "{}: field {field}",
            task.procedure
        );
    }
    let extra: Vec<_> = found
        .keys()
        .filter(|field| !expected.contains_key(*field))
        .collect();
    assert!(
        extra.is_empty(),
        "{}: fields not expected: {extra:?}",
        task.procedure
    );
    assert!(
        found.keys().all(|field| task
            .procedure
            .application_fields()
            .contains(&field.as_str())),
        "{}: a field outside the procedure's application_fields",
        task.procedure
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn birth_and_death_chains_run_end_to_end_over_nats() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let roles = Roles::start(
        &store,
        Some(&jetstream),
        &relay_and_worker(),
        real_engine(None),
        test_settings(&bus, 3),
    );
    let registry = Registry::new(store.store().clone());

    // Birth: BirthRecorded -> the birth-registration task, prefilled from the record.
    let birth = record_birth(&store, &registry, 0, None).await;
    let registration_id = task_id(
        BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let registration = wait_for_task(&store, registration_id, DEADLINE).await;
    assert_eq!(registration.procedure, ProcedureId::BirthRegistration);
    assert_eq!(registration.office.as_str(), "79-26734");
    assert_application(
        &registration,
        &expected_application(&birth, ProcedureId::BirthRegistration, &[]),
    );

    // The civil registry claims and completes it with a certificate number.
    let completed = claim_and_complete(
        &store,
        registration_id,
        TaskOutcome::BirthRegistered {
            certificate_number: "KS-2026-001".into(),
        },
    )
    .await;
    let life_event_id = registration.life_event_id;
    let pin = wait_for_pin(&store, life_event_id, DEADLINE).await;
    let pin_value = json!(pin.personal_id.as_str());
    for procedure in BIRTH_FOLLOWUP_PROCEDURES {
        let task = wait_for_task(
            &store,
            task_id(BIRTH_FOLLOWUPS, completed, procedure),
            DEADLINE,
        )
        .await;
        assert_eq!(task.procedure, procedure);
        assert_eq!(task.life_event_id, life_event_id);
        assert_eq!(task.source_event_id, completed);
        // Field by field against the stored BirthRecorded, the number and the certificate:
        // exactly the procedure's application fields.
        let expected = expected_application(
            &birth,
            procedure,
            &[
                ("child.personal_id", pin_value.clone()),
                ("birth_certificate_number", json!("KS-2026-001")),
            ],
        );
        assert_application(&task, &expected);
        assert_eq!(task.application.get("child.personal_id"), Some(&pin_value));
        assert_eq!(
            task.application.get("child.full_name"),
            Some(&json!("Nguyễn Minh An A"))
        );
        if procedure == ProcedureId::ChildHealthInsurance {
            // Data minimisation: the record has the declarant's phone; the insurer gets none.
            assert_eq!(birth.payload["declarant"]["phone"], json!("+84901234567"));
            assert!(task.application.get("declarant.phone").is_none());
            assert!(task
                .application
                .0
                .keys()
                .all(|field| !field.starts_with("declarant.")));
        }
    }

    // Death: 3 of 4 procedures chosen (no burial allowance); funeral support is not eligible.
    let death = record_death(
        &store,
        &registry,
        &[
            "death-registration",
            "residence-deregistration",
            "funeral-support",
        ],
        None,
    )
    .await;
    let death_registration_id = task_id(
        DEATH_REGISTRATION,
        death.event_id,
        ProcedureId::DeathRegistration,
    );
    let death_registration = wait_for_task(&store, death_registration_id, DEADLINE).await;
    assert_application(
        &death_registration,
        &expected_application(&death, ProcedureId::DeathRegistration, &[]),
    );
    let death_completed = claim_and_complete(
        &store,
        death_registration_id,
        TaskOutcome::DeathRegistered {
            extract_number: "TK-2026-77".into(),
        },
    )
    .await;
    // The decisions and the tasks of one run are appended in one transaction: once the
    // decision of the last chosen procedure is stored, the run is complete.
    let funeral_key = task_id(
        DEATH_FOLLOWUPS,
        death_completed,
        ProcedureId::FuneralSupport,
    );
    wait_for_event(
        &store,
        lifeline_policies::engine::eligibility_event_id(funeral_key),
        "the funeral-support decision",
        DEADLINE,
    )
    .await;
    let residence = wait_for_task(
        &store,
        task_id(
            DEATH_FOLLOWUPS,
            death_completed,
            ProcedureId::ResidenceDeregistration,
        ),
        DEADLINE,
    )
    .await;
    // The declaration names no residence of the deceased: the police receive the registered
    // one the task was routed by (policies/data/residences.csv), so they know what to close.
    let expected = expected_application(
        &death,
        ProcedureId::ResidenceDeregistration,
        &[
            ("death_extract_number", json!("TK-2026-77")),
            ("deceased.residence.province", json!("01")),
            ("deceased.residence.commune", json!("00004")),
            ("deceased.residence.address", json!("5 Hàng Bông")),
        ],
    );
    assert_application(&residence, &expected);
    // Data minimisation: the police get no cause of death.
    assert_eq!(death.payload["death"]["cause"], json!("tuổi cao"));
    assert!(residence.application.get("death.cause").is_none());

    // A correction and a void reach `corrections` through its filtered consumer (the records'
    // subject class): the death's date moved (the residence task amended, funeral support
    // decided again), the birth voided (its open follow-ups cancelled, its registration
    // reversed).
    let death_record = registry
        .load(death_registration.life_event_id)
        .await
        .unwrap()
        .unwrap();
    let Some(Declaration::Death(mut corrected)) = death_record.state.declaration.clone() else {
        panic!("a death record")
    };
    corrected.death.at = chrono::DateTime::parse_from_rfc3339("2026-11-17T23:30:00+07:00").unwrap();
    registry
        .correct(
            &registrar("01-00004", None),
            &death_record.stream_id,
            Declaration::Death(corrected),
            "sai ngày mất".into(),
            today(),
        )
        .await
        .unwrap();
    let correction = last_event(&store, &death_record.stream_id).await;
    wait_for_event(
        &store,
        update_event_id(correction.event_id, residence.task_id),
        "the residence task amended",
        DEADLINE,
    )
    .await;
    wait_for_event(
        &store,
        lifeline_policies::engine::eligibility_event_id(task_id(
            CORRECTIONS,
            correction.event_id,
            ProcedureId::FuneralSupport,
        )),
        "funeral support decided again",
        DEADLINE,
    )
    .await;
    registry
        .void(
            &registrar("79-26734", None),
            &birth.stream_id,
            Change {
                reason: "nhập nhầm".into(),
                on: today(),
                expected: None,
            },
        )
        .await
        .unwrap();
    let void = last_event(&store, &birth.stream_id).await;
    for procedure in BIRTH_FOLLOWUP_PROCEDURES {
        wait_for_event(
            &store,
            update_event_id(
                void.event_id,
                task_id(BIRTH_FOLLOWUPS, completed, procedure),
            ),
            "a birth follow-up cancelled",
            DEADLINE,
        )
        .await;
    }
    wait_for_task(
        &store,
        task_id(CORRECTIONS, void.event_id, ProcedureId::BirthRegistration),
        DEADLINE,
    )
    .await;
    roles.stop().await;

    let events = log(&store).await;
    let decisions = eligibility_decisions(&events);
    let decided: BTreeMap<ProcedureId, bool> = decisions
        .iter()
        .map(|(_, decided)| (decided.procedure, decided.eligible))
        .collect();
    assert_eq!(
        decided,
        BTreeMap::from([
            (ProcedureId::ResidenceDeregistration, true),
            (ProcedureId::FuneralSupport, false),
        ]),
        "a decision per chosen follow-up (funeral support twice), none for the unchosen burial allowance"
    );
    assert_eq!(decisions.len(), 3);
    for (_, decided) in &decisions {
        assert!(!decided.rule_version.is_empty());
        assert!(decided.parameters.is_object(), "{decided:?}");
    }
    let tasks = created_tasks(&events);
    assert_tasks_exactly_once(&tasks);
    let procedures: BTreeSet<ProcedureId> =
        tasks.iter().map(|(_, created)| created.procedure).collect();
    assert_eq!(
        procedures,
        BTreeSet::from([
            ProcedureId::BirthRegistration,
            ProcedureId::ResidenceRegistration,
            ProcedureId::ChildHealthInsurance,
            ProcedureId::DeathRegistration,
            ProcedureId::ResidenceDeregistration,
        ])
    );
    // And the death registration's re-issue, the birth registration's reversal.
    assert_eq!(tasks.len(), 7);
    assert_eq!(assigned_pins(&events).len(), 1);
    assert!(list_failed(&store).await.unwrap().is_empty());
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// The last event of `stream`.
async fn last_event(
    store: &EventStore,
    stream: &lifeline_model::envelope::StreamId,
) -> RecordedEvent {
    store.read_stream(stream).await.unwrap().pop().unwrap()
}

/// The real engine, counting the runs of each policy on each event.
struct Counting {
    engine: Arc<dyn PolicyHandler>,
    runs: Mutex<HashMap<(String, Uuid), usize>>,
}

impl Counting {
    fn runs(&self, policy: &str, event_id: Uuid) -> usize {
        let runs = self.runs.lock().unwrap();
        runs.get(&(policy.to_owned(), event_id))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl PolicyHandler for Counting {
    fn policy_names(&self) -> Vec<&'static str> {
        self.engine.policy_names()
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.engine.wants(policy, event_type)
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), PolicyError> {
        self.engine.apply(policy, tx, event).await?;
        *self
            .runs
            .lock()
            .unwrap()
            .entry((policy.to_owned(), event.event_id))
            .or_default() += 1;
        Ok(())
    }
}

async fn wait_for_runs(handler: &Counting, policy: &str, event_id: Uuid, runs: usize) {
    let deadline = Instant::now() + DEADLINE;
    while handler.runs(policy, event_id) < runs {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {runs} runs of {policy} on {event_id}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes the notice of `event` again with a fresh `Nats-Msg-Id`, past deduplication.
async fn publish_again(
    jetstream: &async_nats::jetstream::Context,
    bus: &BusConfig,
    event: &RecordedEvent,
) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
    let payload = serde_json::to_vec(&EventNotice::of(&event.header())).unwrap();
    let ack = jetstream
        .publish_with_headers(bus.subject_for(&event.header()), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate, "the second notice was not deduplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_notices_and_a_replayed_consumer_add_no_task_and_no_number() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let settings = test_settings(&bus, 3);
    let options: ConsumerOptions = settings.consumer.clone();
    let handler = Arc::new(Counting {
        engine: real_engine(None),
        runs: Mutex::new(HashMap::new()),
    });
    let roles = Roles::start(
        &store,
        Some(&jetstream),
        &relay_and_worker(),
        handler.clone(),
        settings,
    );
    let registry = Registry::new(store.store().clone());
    let birth = record_birth(&store, &registry, 1, None).await;
    let registration_id = task_id(
        BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    wait_for_task(&store, registration_id, DEADLINE).await;
    let completed_id = claim_and_complete(
        &store,
        registration_id,
        TaskOutcome::BirthRegistered {
            certificate_number: "KS-2026-002".into(),
        },
    )
    .await;
    for procedure in BIRTH_FOLLOWUP_PROCEDURES {
        wait_for_task(
            &store,
            task_id(BIRTH_FOLLOWUPS, completed_id, procedure),
            DEADLINE,
        )
        .await;
    }
    let completed = store.event_by_id(completed_id).await.unwrap().unwrap();
    wait_for_runs(&handler, BIRTH_FOLLOWUPS, completed_id, 1).await;

    // The same thin messages again, each with another Nats-Msg-Id.
    publish_again(&jetstream, &bus, &birth).await;
    publish_again(&jetstream, &bus, &completed).await;
    wait_for_runs(&handler, BIRTH_REGISTRATION, birth.event_id, 2).await;
    wait_for_runs(&handler, BIRTH_FOLLOWUPS, completed_id, 2).await;

    // Every durable consumer deleted under the running workers: they recreate it
    // (DeliverPolicy::All) and replay the whole stream.
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    for policy in POLICY_NAMES {
        stream
            .delete_consumer(&options.durable_name(policy))
            .await
            .unwrap();
    }
    wait_for_runs(&handler, BIRTH_REGISTRATION, birth.event_id, 4).await;
    wait_for_runs(&handler, BIRTH_FOLLOWUPS, completed_id, 4).await;
    for policy in POLICY_NAMES {
        wait_consumer_drained(&jetstream, &bus, &options, policy, DEADLINE).await;
    }
    roles.stop().await;

    let events = log(&store).await;
    let tasks = created_tasks(&events);
    assert_tasks_exactly_once(&tasks);
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    assert_eq!(assigned_pins(&events).len(), 1, "one personal ID number");
    assert_eq!(count_events(&store, "PersonalIdAssigned").await, 1);
    let task_streams: HashSet<_> = events
        .iter()
        .filter(|event| event.stream_id.kind() == "task")
        .map(|event| event.stream_id.clone())
        .collect();
    assert_eq!(task_streams.len(), 3);
    assert!(list_failed(&store).await.unwrap().is_empty());
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Records `count` births through the registrar's service, pausing `pause` between them;
/// answers the ids of their `BirthRecorded`.
fn record_births(
    store: &EventStore,
    count: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<Uuid>> {
    let store = store.clone();
    tokio::spawn(async move {
        let registry = Registry::new(store.clone());
        let mut ids = Vec::with_capacity(count);
        for index in 0..count {
            ids.push(record_birth(&store, &registry, index, None).await.event_id);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        ids
    })
}

/// Asserts the log holds exactly one birth-registration task per birth of `births`, and no
/// other task.
async fn assert_one_registration_per_birth(store: &EventStore, births: &[Uuid]) {
    // The gap-free reader shows only what every transaction on the server has let go of
    // (other tests' open transactions hold it back a moment): wait until it shows them all.
    let deadline = Instant::now() + DEADLINE;
    let mut events = log(store).await;
    while created_tasks(&events).len() < births.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        events = log(store).await;
    }
    let tasks = created_tasks(&events);
    let streams = assert_tasks_exactly_once(&tasks);
    assert_eq!(streams.len(), births.len(), "one task stream per birth");
    let expected: HashSet<Uuid> = births
        .iter()
        .map(|birth| task_id(BIRTH_REGISTRATION, *birth, ProcedureId::BirthRegistration))
        .collect();
    let found: HashSet<Uuid> = tasks.iter().map(|(_, created)| created.task_id).collect();
    assert_eq!(found, expected);
}

/// `lifeline serve --role worker` on the test's database and stream, in a temporary working
/// directory (no `lifeline.toml`, no data directory of the repository).
fn spawn_worker(
    database_url: &str,
    nats_url: &str,
    bus: &BusConfig,
    directory: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.join("worker.log"))
        .unwrap();
    Command::new(lifeline_binary())
        .args(["serve", "--role", "worker"])
        .current_dir(directory)
        .env("LIFELINE_DATABASE_URL", database_url)
        .env("LIFELINE_NATS_URL", nats_url)
        .env("LIFELINE_NATS_STREAM", &bus.stream_name)
        .env("LIFELINE_NATS_SUBJECT_PREFIX", &bus.subject_prefix)
        .env("LIFELINE_NATS_ACK_WAIT_SECS", "2")
        .env(
            "LIFELINE_TOKEN_SECRET",
            "chain-nats-test-secret-of-at-least-32-bytes",
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lifeline serve --role worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_process_killed_mid_run_and_restarted_creates_every_task_once() {
    let binary = tokio::task::spawn_blocking(lifeline_binary).await.unwrap();
    assert!(binary.exists());
    let store = postgres_store().await;
    let database_url = postgres_url_of(&store).expect("a PostgreSQL store");
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let directory = tempfile::tempdir().unwrap();
    // The operator's consumers: the binary's defaults but a 2 s ack wait, so that what the
    // killed worker held comes back quickly. The workers run with the same ack wait
    // (`LIFELINE_NATS_ACK_WAIT_SECS`, `spawn_worker`): a worker brings the durables it binds to
    // its own, and with the default 30 s (until the thirty-second session, whatever the
    // durables said) what the killed worker held came back only after 30 s.
    bus.ensure_stream(&jetstream).await.unwrap();
    let worker_options = ConsumerOptions {
        ack_wait: Duration::from_secs(2),
        ..ConsumerOptions::default()
    };
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    for policy in POLICY_NAMES {
        stream
            .create_consumer(worker_options.consumer_config(policy, None))
            .await
            .unwrap();
    }
    let relay = Roles::start(
        &store,
        Some(&jetstream),
        &[Role::Relay],
        real_engine(None),
        test_settings(&bus, 3),
    );
    let births = record_births(&store, 500, Duration::ZERO);

    let mut worker = spawn_worker(&database_url, &shared_nats_url(), &bus, directory.path());
    wait_for_tasks_at_least(&store, 60).await;
    worker.kill().expect("SIGKILL the worker");
    worker.wait().unwrap();
    let at_kill = count_events(&store, "TaskCreated").await;
    assert!(at_kill < 500, "killed mid-run ({at_kill} of 500 tasks)");

    let mut worker = spawn_worker(&database_url, &shared_nats_url(), &bus, directory.path());
    let births = births.await.unwrap();
    wait_for_count(&store, "TaskCreated", 500, DEADLINE).await;
    wait_consumer_drained(
        &jetstream,
        &bus,
        &worker_options,
        BIRTH_REGISTRATION,
        DEADLINE,
    )
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    relay.stop().await;

    assert_one_registration_per_birth(&store, &births).await;
    assert!(list_failed(&store).await.unwrap().is_empty());
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

async fn wait_for_tasks_at_least(store: &EventStore, count: i64) {
    let deadline = Instant::now() + DEADLINE;
    while count_events(store, "TaskCreated").await < count {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {count} tasks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_outage_during_500_births_loses_and_doubles_nothing() {
    let store = postgres_store().await;
    let mut nats = PrivateNats::start().await;
    let jetstream = connect(&nats.url()).await;
    let bus = unique_bus();
    let roles = Roles::start(
        &store,
        Some(&jetstream),
        &relay_and_worker(),
        real_engine(None),
        test_settings(&bus, 3),
    );
    // Spread over the outage below (10 s of births; the outage starts once the chain runs,
    // which under a loaded machine may take a few seconds).
    let births = record_births(&store, 500, Duration::from_millis(20));
    wait_for_tasks_at_least(&store, 20).await;
    nats.stop();
    // The outage itself: NATS is away for 5 seconds while births are recorded.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = count_events(&store, "BirthRecorded").await;
    assert!(
        during < 500,
        "births still being recorded at the restart ({during})"
    );
    nats.restart().await;
    let births = births.await.unwrap();
    wait_for_count(&store, "TaskCreated", 500, DEADLINE).await;

    // The relay resumed by itself: its checkpoint reaches the last birth and the last task.
    let last = log(&store).await.last().unwrap().cursor();
    let deadline = Instant::now() + DEADLINE;
    while store.load_checkpoint("relay").await.unwrap() < last {
        assert!(Instant::now() < deadline, "the relay did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    roles.stop().await;
    assert_one_registration_per_birth(&store, &births).await;
    assert!(list_failed(&store).await.unwrap().is_empty());
    store.close().await;
}

/// The real engine, but `birth-registration` fails on one event until [`FailUntilFixed::fix`].
struct FailUntilFixed {
    engine: Arc<dyn PolicyHandler>,
    failing_event: Mutex<Option<Uuid>>,
    fixed: AtomicBool,
    failures: AtomicUsize,
}

#[async_trait]
impl PolicyHandler for FailUntilFixed {
    fn policy_names(&self) -> Vec<&'static str> {
        self.engine.policy_names()
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.engine.wants(policy, event_type)
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), PolicyError> {
        let failing = *self.failing_event.lock().unwrap() == Some(event.event_id);
        if policy == BIRTH_REGISTRATION && failing && !self.fixed.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(PolicyError::Refused {
                policy: policy.to_owned(),
                event_id: event.event_id,
                message: "the registry office is not configured yet".to_owned(),
            });
        }
        self.engine.apply(policy, tx, event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_birth_is_recorded_as_failed_and_retried_after_the_fix() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let settings = test_settings(&bus, 3);
    let options = settings.consumer.clone();
    let handler = Arc::new(FailUntilFixed {
        engine: real_engine(None),
        failing_event: Mutex::new(None),
        fixed: AtomicBool::new(false),
        failures: AtomicUsize::new(0),
    });
    let registry = Registry::new(store.store().clone());
    let mut births = Vec::new();
    for index in 0..10 {
        births.push(record_birth(&store, &registry, index, None).await.event_id);
    }
    // A BirthRecorded the engine cannot decode (no declaration): it can never succeed.
    let undecodable_stream = lifeline_tests::new_stream("birth");
    let undecodable = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "BirthRecorded".to_owned(),
        schema_version: 2,
        payload: json!({ "life_event_id": Uuid::new_v4(), "garbled": true }),
        metadata: EventMetadata::system("test", Uuid::new_v4(), None, chrono::Utc::now()),
    };
    store
        .append(
            &undecodable_stream,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&undecodable),
        )
        .await
        .unwrap();
    // A good birth the policy refuses until the fix.
    let fixable = record_birth(&store, &registry, 10, None).await.event_id;
    *handler.failing_event.lock().unwrap() = Some(fixable);
    for index in 11..21 {
        births.push(record_birth(&store, &registry, index, None).await.event_id);
    }

    let roles = Roles::start(
        &store,
        Some(&jetstream),
        &relay_and_worker(),
        handler.clone(),
        settings,
    );
    // Everything else flows on.
    wait_for_count(&store, "TaskCreated", 20, DEADLINE).await;
    let deadline = Instant::now() + DEADLINE;
    while list_failed(&store).await.unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for PolicyFailed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_consumer_drained(&jetstream, &bus, &options, BIRTH_REGISTRATION, DEADLINE).await;
    roles.stop().await;

    let failed = list_failed(&store).await.unwrap();
    let runs: BTreeSet<(String, Uuid, u32)> = failed
        .iter()
        .map(|run| (run.policy.clone(), run.event_id, run.deliveries))
        .collect();
    assert_eq!(
        runs,
        BTreeSet::from([
            (BIRTH_REGISTRATION.to_owned(), undecodable.event_id, 3),
            (BIRTH_REGISTRATION.to_owned(), fixable, 3),
        ])
    );
    assert_eq!(handler.failures.load(Ordering::SeqCst), 3, "3 deliveries");
    assert_eq!(count_events(&store, "PolicyFailed").await, 2);
    assert_eq!(count_events(&store, "TaskCreated").await, 20);

    // The fix; the operator's retry: the good birth gets its task, the garbled one stays listed.
    handler.fixed.store(true, Ordering::SeqCst);
    let report = retry_failed(&store, handler.as_ref(), &RetryFilter::default())
        .await
        .unwrap();
    let succeeded: Vec<Uuid> = report.succeeded.iter().map(|run| run.event_id).collect();
    assert_eq!(succeeded, [fixable]);
    let still: Vec<Uuid> = report.failed.iter().map(|(run, _)| run.event_id).collect();
    assert_eq!(still, [undecodable.event_id]);
    let listed: Vec<Uuid> = list_failed(&store)
        .await
        .unwrap()
        .iter()
        .map(|run| run.event_id)
        .collect();
    assert_eq!(listed, [undecodable.event_id]);
    births.push(fixable);
    assert_one_registration_per_birth(&store, &births).await;
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// The births and deaths of the comparison: fixed idempotency keys fix every record's id and
/// event ids; completions use fixed ids; numbers come from one seed, drawn in the same order.
async fn run_fixed_inputs(store: &EventStore) -> BTreeSet<(String, ProcedureId, String)> {
    let registry = Registry::new(store.clone());
    let mut births = Vec::new();
    for index in 0..3 {
        births.push(record_birth(store, &registry, index, Some(format!("birth-{index}"))).await);
    }
    let deaths = [
        record_death(
            store,
            &registry,
            &[
                "death-registration",
                "residence-deregistration",
                "burial-allowance",
                "funeral-support",
            ],
            Some("death-0".to_owned()),
        )
        .await,
        record_death(
            store,
            &registry,
            &["death-registration", "funeral-support"],
            Some("death-1".to_owned()),
        )
        .await,
    ];
    for (index, birth) in births.iter().enumerate() {
        let registration = task_id(
            BIRTH_REGISTRATION,
            birth.event_id,
            ProcedureId::BirthRegistration,
        );
        wait_for_task(store, registration, DEADLINE).await;
        let completed = complete_deterministically(
            store,
            registration,
            TaskOutcome::BirthRegistered {
                certificate_number: format!("KS-2026-1{index:02}"),
            },
        )
        .await;
        // One birth at a time: the seeded numbers are drawn in the same order in both modes.
        for procedure in BIRTH_FOLLOWUP_PROCEDURES {
            wait_for_task(
                store,
                task_id(BIRTH_FOLLOWUPS, completed, procedure),
                DEADLINE,
            )
            .await;
        }
    }
    for (index, death) in deaths.iter().enumerate() {
        let registration = task_id(
            DEATH_REGISTRATION,
            death.event_id,
            ProcedureId::DeathRegistration,
        );
        wait_for_task(store, registration, DEADLINE).await;
        complete_deterministically(
            store,
            registration,
            TaskOutcome::DeathRegistered {
                extract_number: format!("TK-2026-2{index:02}"),
            },
        )
        .await;
    }
    // 3 per birth; death 0: registration, residence deregistration, burial allowance (funeral
    // support is not eligible); death 1: the registration only.
    wait_for_count(store, "TaskCreated", 3 * 3 + 3 + 1, DEADLINE).await;
    wait_for_count(store, "EligibilityDecided", 3 + 1, DEADLINE).await;
    created_tasks(&log(store).await)
        .into_iter()
        .map(|(stream, created)| {
            (
                stream.to_string(),
                created.procedure,
                serde_json::to_string(&created.application).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_and_nats_modes_create_the_same_tasks() {
    let nats_store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let roles = Roles::start(
        &nats_store,
        Some(&jetstream),
        &relay_and_worker(),
        real_engine(Some(42)),
        test_settings(&bus, 3),
    );
    let over_nats = run_fixed_inputs(&nats_store).await;
    roles.stop().await;

    let embedded_store = postgres_store().await;
    let roles = Roles::start(
        &embedded_store,
        None,
        &[Role::Embedded],
        real_engine(Some(42)),
        test_settings(&bus, 3),
    );
    let embedded = run_fixed_inputs(&embedded_store).await;
    roles.stop().await;

    assert_eq!(over_nats.len(), 13);
    assert_eq!(over_nats, embedded);
    let pins = |events: &[RecordedEvent]| -> BTreeSet<String> {
        assigned_pins(events)
            .iter()
            .map(|assigned| assigned.personal_id.as_str().to_owned())
            .collect()
    };
    assert_eq!(
        pins(&log(&nats_store).await),
        pins(&log(&embedded_store).await)
    );
    delete_stream(&jetstream, &bus).await;
    nats_store.close().await;
    embedded_store.close().await;
}
