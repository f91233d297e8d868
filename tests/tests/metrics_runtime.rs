//! The runtime's figures on `/metrics` (`lifeline::runtime_metrics`), read from a real server
//! on port 0: relay lag, per-policy lag (JetStream consumers, or the embedded runtime's
//! checkpoints) and failures, projection lag, tasks by state and overdue, on PostgreSQL with
//! JetStream and on SQLite without; and a sampler whose database or NATS goes away keeps its
//! last figures and counts the failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Timelike, Utc};
use futures::StreamExt;
use lifeline::auth::TokenVerifier;
use lifeline::http::{AppState, Application};
use lifeline::runtime_metrics::RuntimeMetrics;
use lifeline_model::codec;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, NewEvent, RecordedEvent, StreamId,
};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::{PolicyFailed, SystemEvent};
use lifeline_model::task::{Application as TaskApplication, TaskStatus};
use lifeline_model::values::OfficeCode;
use lifeline_policies::runtime::failures::{
    policy_failed_event_id, PolicyRetrySucceeded, FAILURES_STREAM, RETRY_SUCCEEDED_TYPE,
};
use lifeline_policies::runtime::stats::LagProbe;
use lifeline_policies::runtime::{
    BusConfig, ConsumerOptions, Relay, RelayOptions, RuntimeSettings,
};
use lifeline_store::projections::{save_task, TaskRow};
use lifeline_store::EventStore;
use lifeline_tests::nats::{
    append_sources, connect, delete_stream, shared_nats, unique_bus, PrivateNats, ALPHA, BETA,
    SOURCE_TYPE,
};
use lifeline_tests::{eventually, new_event, new_stream, postgres_store, sqlite_store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use uuid::Uuid;

const SECRET: &[u8] = b"metrics-test-secret-metrics-test-secret!";
/// A policy the sampler is told about that has neither a consumer nor a checkpoint.
const GAMMA: &str = "effect-gamma";
const INBOX: &str = "projection-inbox";
const PERSONS: &str = "projection-persons";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_relay_and_policy_lag_failures_and_tasks_on_postgres_and_jetstream() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let settings = settings(&bus);

    // Five events relayed: four in the failures stream (alpha gave up twice and one was
    // retried; beta gave up once), one source event.
    record_failures(&store).await;
    append_sources(&store, 1).await;
    relay_everything(&store, &jetstream, &settings, 5).await;

    // alpha's consumer has taken two notices and acknowledged them; beta's has taken one and
    // not acknowledged it yet; gamma has no consumer (it would start from the stream's first).
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    let alpha = pull_consumer(&stream, &settings.consumer, ALPHA).await;
    for message in take(&alpha, 2).await {
        message.double_ack().await.unwrap();
    }
    let beta = pull_consumer(&stream, &settings.consumer, BETA).await;
    let held = take(&beta, 1).await;

    // Three events not relayed, the oldest recorded 42 s before the sample; the inbox
    // projection has folded the first five.
    let recorded = Utc::now().with_nanosecond(0).unwrap() - chrono::Duration::seconds(60);
    for offset in [0, 5, 9] {
        append_recorded_at(&store, recorded + chrono::Duration::seconds(offset)).await;
    }
    store
        .save_checkpoint(INBOX, cursor_of(&store, 5).await)
        .await
        .unwrap();
    let now = recorded + chrono::Duration::seconds(42);
    seed_tasks(&store, now).await;

    let sampler = RuntimeMetrics::new(
        store.store().clone(),
        LagProbe::jetstream(jetstream.clone(), settings.clone()),
        [ALPHA, BETA, GAMMA],
        [INBOX, PERSONS],
    );
    let server = Server::start(store.store(), &sampler).await;
    sampler.sample_at(now).await;
    let page = server.metrics().await;

    let expected = [
        ("lifeline_relay_lag_events", "3"),
        ("lifeline_relay_lag_seconds", "42"),
        (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "3"),
        (r#"lifeline_policy_lag_events{policy="effect-beta"}"#, "5"),
        (r#"lifeline_policy_lag_events{policy="effect-gamma"}"#, "5"),
        (
            r#"lifeline_policy_failures_total{policy="effect-alpha"}"#,
            "2",
        ),
        (
            r#"lifeline_policy_failures_total{policy="effect-beta"}"#,
            "1",
        ),
        (
            r#"lifeline_policy_failures_total{policy="effect-gamma"}"#,
            "0",
        ),
        (
            r#"lifeline_policy_failures_open{policy="effect-alpha"}"#,
            "1",
        ),
        (
            r#"lifeline_policy_failures_open{policy="effect-beta"}"#,
            "1",
        ),
        (
            r#"lifeline_policy_failures_open{policy="effect-gamma"}"#,
            "0",
        ),
        (
            r#"lifeline_projection_lag_events{projection="projection-inbox"}"#,
            "3",
        ),
        (
            r#"lifeline_projection_lag_events{projection="projection-persons"}"#,
            "8",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="relay"}"#,
            "0",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="policies"}"#,
            "0",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="tasks"}"#,
            "0",
        ),
        // Nothing here appends to an existing stream after reading it.
        (
            r#"lifeline_store_known_hash_appends_total{outcome="written"}"#,
            "0",
        ),
        (
            r#"lifeline_store_known_hash_appends_total{outcome="refused"}"#,
            "0",
        ),
    ];
    assert_series(&page, &expected);
    assert_series(&page, &expected_tasks());
    assert_eq!(
        series_of(&page, "lifeline_tasks{"),
        expected_tasks()
            .iter()
            .filter(|(series, _)| series.starts_with("lifeline_tasks{"))
            .map(|(series, value)| (series.to_string(), value.to_string()))
            .collect::<BTreeMap<_, _>>(),
        "no other task series: {page}"
    );
    for part in ["relay", "policies", "failures", "projections", "tasks"] {
        let age = value(
            &page,
            &format!(r#"lifeline_metrics_sample_age_seconds{{part="{part}"}}"#),
        )
        .unwrap_or_else(|| panic!("the age of part {part}: {page}"));
        assert!(
            age.parse::<f64>().unwrap() < 60.0,
            "{part} is fresh: {page}"
        );
    }
    for family in [
        "lifeline_relay_lag_events gauge",
        "lifeline_policy_lag_events gauge",
        "lifeline_policy_failures_total counter",
        "lifeline_tasks gauge",
        "lifeline_tasks_overdue gauge",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family}\n")),
            "{family}: {page}"
        );
    }

    // Caught up: the relay publishes the rest, beta acknowledges what it holds and takes the
    // rest too; the figures follow at the next sample.
    relay_everything(&store, &jetstream, &settings, 8).await;
    for message in held {
        message.double_ack().await.unwrap();
    }
    for message in take(&beta, 7).await {
        message.double_ack().await.unwrap();
    }
    sampler.sample_at(now).await;
    let page = server.metrics().await;
    assert_series(
        &page,
        &[
            ("lifeline_relay_lag_events", "0"),
            ("lifeline_relay_lag_seconds", "0"),
            (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "6"),
            (r#"lifeline_policy_lag_events{policy="effect-beta"}"#, "0"),
            (r#"lifeline_policy_lag_events{policy="effect-gamma"}"#, "8"),
        ],
    );

    server.stop().await;
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_embedded_policy_lag_and_tasks_on_sqlite_without_a_relay() {
    let store = sqlite_store().await;
    let failures = record_failures(&store).await;
    append_sources(&store, 2).await;
    // alpha has handled the four failure events, beta nothing yet, gamma never ran.
    store
        .save_checkpoint("policy:effect-alpha", failures.last().unwrap().cursor())
        .await
        .unwrap();
    store
        .save_checkpoint("policy:effect-beta", LogCursor::START)
        .await
        .unwrap();
    let now = Utc::now();
    seed_tasks(&store, now).await;

    let sampler = RuntimeMetrics::new(
        store.store().clone(),
        LagProbe::Embedded,
        [ALPHA, BETA, GAMMA],
        [INBOX],
    );
    let server = Server::start(store.store(), &sampler).await;
    sampler.sample_at(now).await;
    let page = server.metrics().await;

    assert_series(
        &page,
        &[
            (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "2"),
            (r#"lifeline_policy_lag_events{policy="effect-beta"}"#, "6"),
            (r#"lifeline_policy_lag_events{policy="effect-gamma"}"#, "6"),
            (
                r#"lifeline_policy_failures_total{policy="effect-alpha"}"#,
                "2",
            ),
            (
                r#"lifeline_policy_failures_open{policy="effect-alpha"}"#,
                "1",
            ),
            (
                r#"lifeline_policy_failures_open{policy="effect-beta"}"#,
                "1",
            ),
            (
                r#"lifeline_projection_lag_events{projection="projection-inbox"}"#,
                "6",
            ),
        ],
    );
    assert_series(&page, &expected_tasks());
    assert!(
        !page.contains("lifeline_relay_lag") && !page.contains(r#"part="relay""#),
        "no relay without NATS: {page}"
    );

    // The sampler keeps what it read of the failures stream and reads what was appended
    // since: a new failure, and a retry marker for a failure it read before, both count.
    let beta_failure = failures
        .iter()
        .find(|event| event.payload.text().contains(BETA))
        .map(|event| event.metadata.causation_id.unwrap())
        .unwrap();
    append_failures(
        &store,
        &[
            policy_failed(ALPHA, Uuid::new_v4()),
            retry_marker(BETA, beta_failure),
        ],
    )
    .await;
    sampler.sample_at(now).await;
    let page = server.metrics().await;
    assert_series(
        &page,
        &[
            (
                r#"lifeline_policy_failures_total{policy="effect-alpha"}"#,
                "3",
            ),
            (
                r#"lifeline_policy_failures_open{policy="effect-alpha"}"#,
                "2",
            ),
            (
                r#"lifeline_policy_failures_open{policy="effect-beta"}"#,
                "0",
            ),
        ],
    );
    server.stop().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sampler_whose_nats_or_database_goes_away_keeps_the_last_figures_and_counts_failures() {
    let store = postgres_store().await;
    let mut nats = PrivateNats::start().await;
    let jetstream = connect(&nats.url()).await;
    let bus = unique_bus();
    let settings = settings(&bus);
    append_sources(&store, 2).await;
    relay_everything(&store, &jetstream, &settings, 2).await;
    append_sources(&store, 1).await;
    let now = Utc::now();
    seed_tasks(&store, now).await;

    let sampler = RuntimeMetrics::new(
        store.store().clone(),
        LagProbe::jetstream(jetstream.clone(), settings.clone()),
        [ALPHA],
        [INBOX],
    );
    let server = Server::start(store.store(), &sampler).await;
    sampler.sample_at(now).await;
    let before = server.metrics().await;
    assert_series(
        &before,
        &[
            ("lifeline_relay_lag_events", "1"),
            (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "2"),
            (
                r#"lifeline_metrics_sample_failures_total{part="policies"}"#,
                "0",
            ),
        ],
    );

    // NATS goes away: the policies' figures stay as they were, their failure is counted, and
    // the parts read from the database carry on.
    nats.stop();
    append_sources(&store, 1).await;
    sampler.sample_at(now).await;
    let page = server.metrics().await;
    assert_series(
        &page,
        &[
            ("lifeline_relay_lag_events", "2"),
            (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "2"),
            (
                r#"lifeline_metrics_sample_failures_total{part="policies"}"#,
                "1",
            ),
            (
                r#"lifeline_metrics_sample_failures_total{part="relay"}"#,
                "0",
            ),
            (
                r#"lifeline_metrics_sample_failures_total{part="tasks"}"#,
                "0",
            ),
        ],
    );

    // The database goes away too (its pool closed): every part fails, the last figures stay.
    store.close().await;
    sampler.sample_at(now).await;
    let page = server.metrics().await;
    let mut expected = vec![
        ("lifeline_relay_lag_events", "2"),
        (r#"lifeline_policy_lag_events{policy="effect-alpha"}"#, "2"),
        (
            r#"lifeline_projection_lag_events{projection="projection-inbox"}"#,
            "4",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="relay"}"#,
            "1",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="policies"}"#,
            "2",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="failures"}"#,
            "1",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="projections"}"#,
            "1",
        ),
        (
            r#"lifeline_metrics_sample_failures_total{part="tasks"}"#,
            "1",
        ),
    ];
    expected.extend(expected_tasks());
    assert_series(&page, &expected);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The tasks every test seeds, relative to the sample's `now`, and what `/metrics` shows of them.

async fn seed_tasks(store: &EventStore, now: DateTime<Utc>) {
    let hours = chrono::Duration::hours;
    let rows = [
        // Civil registry, birth registration: two overdue (one open, one claimed), one open due
        // exactly now (not overdue: past its due time only after it), one open due tomorrow, one
        // completed long after its due time (closed: not overdue).
        task(
            ProcedureId::BirthRegistration,
            TaskStatus::Open,
            now - hours(1),
        ),
        task(
            ProcedureId::BirthRegistration,
            TaskStatus::Claimed,
            now - hours(30),
        ),
        task(ProcedureId::BirthRegistration, TaskStatus::Open, now),
        task(
            ProcedureId::BirthRegistration,
            TaskStatus::Open,
            now + hours(24),
        ),
        task(
            ProcedureId::BirthRegistration,
            TaskStatus::Completed,
            now - hours(72),
        ),
        // Police, residence registration: nothing overdue.
        task(
            ProcedureId::ResidenceRegistration,
            TaskStatus::Open,
            now + hours(48),
        ),
        task(
            ProcedureId::ResidenceRegistration,
            TaskStatus::Rejected,
            now - hours(24),
        ),
        task(
            ProcedureId::ResidenceRegistration,
            TaskStatus::Cancelled,
            now - hours(2),
        ),
    ];
    let mut tx = store.begin().await.unwrap();
    for row in &rows {
        save_task(&mut tx, row).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn expected_tasks() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            r#"lifeline_tasks{agency="civil-registry",procedure="birth-registration",state="claimed"}"#,
            "1",
        ),
        (
            r#"lifeline_tasks{agency="civil-registry",procedure="birth-registration",state="completed"}"#,
            "1",
        ),
        (
            r#"lifeline_tasks{agency="civil-registry",procedure="birth-registration",state="open"}"#,
            "3",
        ),
        (
            r#"lifeline_tasks{agency="police",procedure="residence-registration",state="cancelled"}"#,
            "1",
        ),
        (
            r#"lifeline_tasks{agency="police",procedure="residence-registration",state="open"}"#,
            "1",
        ),
        (
            r#"lifeline_tasks{agency="police",procedure="residence-registration",state="rejected"}"#,
            "1",
        ),
        (
            r#"lifeline_tasks_overdue{agency="civil-registry",procedure="birth-registration"}"#,
            "2",
        ),
        (
            r#"lifeline_tasks_overdue{agency="police",procedure="residence-registration"}"#,
            "0",
        ),
    ]
}

fn task(procedure: ProcedureId, status: TaskStatus, due_at: DateTime<Utc>) -> TaskRow {
    let created_at = due_at - chrono::Duration::days(7);
    TaskRow {
        task_id: Uuid::new_v4(),
        procedure,
        agency: procedure.agency(),
        office: OfficeCode::parse("79-26734").unwrap(),
        life_event_id: Uuid::new_v4(),
        status,
        claimed_by: (status == TaskStatus::Claimed).then(|| "officer-1".to_owned()),
        due_at,
        overdue: false,
        created_at,
        updated_at: created_at,
        application: TaskApplication(BTreeMap::new()),
        outcome: None,
        reason: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Failures, relaying and consumers.

/// Records alpha giving up on two events (one of them retried successfully since) and beta on
/// one, in the failures stream as the runtimes do; answers the four events.
/// A `PolicyFailed` of `policy` on `event_id`.
fn policy_failed(policy: &str, event_id: Uuid) -> NewEvent {
    let now = Utc::now();
    let event = SystemEvent::PolicyFailed(PolicyFailed {
        policy: policy.to_owned(),
        event_id,
        error: "refused".to_owned(),
        deliveries: 5,
        failed_at: now,
    });
    let metadata = EventMetadata::system(format!("policy:{policy}"), event_id, Some(event_id), now);
    codec::to_new_event(
        &event,
        policy_failed_event_id(policy, event_id, 0),
        metadata,
    )
}

/// The marker of a successful retry of `policy` on `event_id`.
fn retry_marker(policy: &str, event_id: Uuid) -> NewEvent {
    let now = Utc::now();
    let retried = PolicyRetrySucceeded {
        policy: policy.to_owned(),
        event_id,
        failure_event_id: policy_failed_event_id(policy, event_id, 0),
        retried_at: now,
    };
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: RETRY_SUCCEEDED_TYPE.to_owned(),
        schema_version: 1,
        payload: serde_json::to_value(&retried).unwrap(),
        metadata: EventMetadata::system("operator:test", event_id, None, now),
    }
}

/// Appends `events` to the failures stream; answers the whole stream.
async fn append_failures(store: &EventStore, events: &[NewEvent]) -> Vec<RecordedEvent> {
    let stream = StreamId::parse(FAILURES_STREAM).unwrap();
    store
        .append(&stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
    store.read_stream(&stream).await.unwrap()
}

/// Alpha failed twice, one of them retried since; beta failed once.
async fn record_failures(store: &EventStore) -> Vec<RecordedEvent> {
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    append_failures(
        store,
        &[
            policy_failed(ALPHA, first),
            policy_failed(ALPHA, second),
            policy_failed(BETA, third),
            retry_marker(ALPHA, first),
        ],
    )
    .await
}

fn settings(bus: &BusConfig) -> RuntimeSettings {
    RuntimeSettings {
        bus: bus.clone(),
        relay: RelayOptions {
            ack_timeout: Duration::from_secs(5),
            ..RelayOptions::default()
        },
        consumer: ConsumerOptions::default(),
        ..RuntimeSettings::default()
    }
}

/// Appends one source event recorded at `recorded_at`.
async fn append_recorded_at(store: &EventStore, recorded_at: DateTime<Utc>) {
    let mut event = new_event(SOURCE_TYPE, serde_json::json!({ "late": true }));
    event.metadata.recorded_at = recorded_at;
    store
        .append(&new_stream("source"), ExpectedVersion::NoStream, &[event])
        .await
        .unwrap();
}

/// The commit-order cursor of the `n`-th event of the log (1-based).
async fn cursor_of(store: &EventStore, n: usize) -> LogCursor {
    store.read_all(LogCursor::START, n).await.unwrap()[n - 1].cursor()
}

/// Relays until the relay's checkpoint stands at the `events`-th event of the log (the
/// gap-free reader may hold events back while other tests' transactions run).
async fn relay_everything(
    store: &EventStore,
    jetstream: &jetstream::Context,
    settings: &RuntimeSettings,
    events: usize,
) {
    let relay = Relay::new(
        store.clone(),
        jetstream.clone(),
        settings.bus.clone(),
        settings.relay.clone(),
    );
    settings.bus.ensure_stream(jetstream).await.unwrap();
    eventually(Duration::from_secs(30), "the relay to catch up", || {
        let relay = relay.clone();
        let checkpoint = settings.relay.checkpoint.clone();
        async move {
            let from = store.load_checkpoint(&checkpoint).await.unwrap();
            relay.relay_batch(from).await.unwrap();
            let at = store.load_checkpoint(&checkpoint).await.unwrap();
            let log = store.read_all(LogCursor::START, events + 1).await.unwrap();
            log.len() >= events && at == log[events - 1].cursor()
        }
    })
    .await;
}

async fn pull_consumer(
    stream: &jetstream::stream::Stream,
    options: &ConsumerOptions,
    policy: &str,
) -> consumer::PullConsumer {
    stream
        .get_or_create_consumer(
            &options.durable_name(policy),
            options.consumer_config(policy, None),
        )
        .await
        .unwrap()
}

/// Exactly `count` messages from `consumer`.
async fn take(consumer: &consumer::PullConsumer, count: usize) -> Vec<jetstream::Message> {
    let mut taken = Vec::new();
    while taken.len() < count {
        let mut batch = consumer
            .batch()
            .max_messages(count - taken.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            taken.push(message.unwrap());
        }
    }
    taken
}

// ---------------------------------------------------------------------------------------------
// A real server on port 0 with the sampler's collector, and reading its page.

struct Server {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(store: &EventStore, sampler: &RuntimeMetrics) -> Self {
        let state = AppState::new(store.clone(), TokenVerifier::hs256(SECRET).unwrap());
        sampler.register(&state.metrics);
        let application = Application::build("127.0.0.1:0".parse().unwrap(), state)
            .await
            .unwrap();
        let address = application.address();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            address,
            stop,
            task,
        }
    }

    /// `GET /metrics`: the page, after checking the status line.
    async fn metrics(&self) -> String {
        let mut connection = tokio::net::TcpStream::connect(self.address).await.unwrap();
        connection
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        connection.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "a plain body: {head}"
        );
        body.to_owned()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// The value of the sample line of `series` (name and labels exactly), if any.
fn value(page: &str, series: &str) -> Option<String> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

/// Every sample line whose series starts with `prefix`, as series -> value.
fn series_of(page: &str, prefix: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.to_owned()))
        .collect()
}

fn assert_series(page: &str, expected: &[(&str, &str)]) {
    for (series, wanted) in expected {
        assert_eq!(
            value(page, series).as_deref(),
            Some(*wanted),
            "{series} on the page:\n{page}"
        );
    }
}
