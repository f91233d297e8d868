//! The runtimes against real PostgreSQL and real NATS JetStream: relay and policy consumers end
//! to end, duplicate deliveries, a NATS outage, a poison event, embedded vs NATS mode, and a
//! worker process killed with SIGKILL.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use lifeline_model::envelope::{ExpectedVersion, NewEvent, StreamId};
use lifeline_policies::runtime::{
    list_failed, retry_failed, run_embedded_policies, run_policy_consumers, BusConfig,
    ConsumerOptions, EventNotice, Relay, RelayOptions, RetryFilter,
};
use lifeline_policies::PolicyHandler;
use lifeline_store::EventStore;
use lifeline_tests::nats::{
    append_one, append_sources, connect, delete_stream, effects, expected_effects, postgres_url_of,
    shared_nats, shared_nats_url, test_consumer_options, test_embedded_options, unique_bus,
    EffectHandler, PrivateNats, ALPHA, BETA, POISON_TYPE, SOURCE_TYPE,
};
use lifeline_tests::{eventually, new_event, new_stream, postgres_store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

/// A relay and the policy consumers of one test, stopped by [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(
        store: &EventStore,
        jetstream: &jetstream::Context,
        bus: &BusConfig,
        handler: Arc<dyn PolicyHandler>,
        options: ConsumerOptions,
        with_relay: bool,
    ) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        if with_relay {
            let relay = Relay::new(
                store.clone(),
                jetstream.clone(),
                bus.clone(),
                test_relay_options(),
            );
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move { relay.run(shutdown).await }));
        }
        tasks.push(tokio::spawn(run_policy_consumers(
            store.clone(),
            jetstream.clone(),
            bus.clone(),
            options,
            handler,
            shutdown,
        )));
        Self { stop, tasks }
    }

    /// Signals shutdown and waits (with a deadline) for every task to stop.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("runtime stops within 10s of shutdown")
                .unwrap();
        }
    }
}

fn test_relay_options() -> RelayOptions {
    RelayOptions {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        ack_timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    }
}

async fn wait_for_effects(store: &EventStore, expected: &HashMap<(String, Uuid), usize>) {
    eventually(DEADLINE, "every expected effect", || async {
        let found = effects(store).await;
        expected.keys().all(|key| found.contains_key(key))
    })
    .await;
}

fn assert_exactly(
    found: &HashMap<(String, Uuid), usize>,
    expected: &HashMap<(String, Uuid), usize>,
) {
    let doubled: Vec<_> = found.iter().filter(|(_, count)| **count != 1).collect();
    assert!(doubled.is_empty(), "effects not exactly once: {doubled:?}");
    assert_eq!(found.len(), expected.len(), "unexpected or missing effects");
    for key in expected.keys() {
        assert_eq!(found.get(key), Some(&1), "effect {key:?}");
    }
}

/// Waits until `policy`'s durable consumer has nothing pending and nothing unacknowledged.
async fn wait_consumer_drained(
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    options: &ConsumerOptions,
    policy: &str,
) {
    let durable = options.durable_name(policy);
    eventually(DEADLINE, &format!("consumer {durable} drained"), || async {
        let Ok(stream) = jetstream.get_stream(&bus.stream_name).await else {
            return false;
        };
        let Ok(info) = stream.consumer_info(&durable).await else {
            return false;
        };
        info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_and_consumers_apply_every_event_exactly_once() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let handler = Arc::new(EffectHandler::new(0));
    let sources = append_sources(&store, 200).await;
    let expected = expected_effects(&sources, &[]);

    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler,
        test_consumer_options(3),
        true,
    );
    wait_for_effects(&store, &expected).await;
    // One notice per event of the log: the sources and the effects the policies appended.
    eventually(DEADLINE, "a notice of every event", || async {
        let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
        stream.get_info().await.unwrap().state.messages >= 200 + 400
    })
    .await;
    running.stop().await;

    assert_exactly(&effects(&store).await, &expected);
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    assert_eq!(stream.get_info().await.unwrap().state.messages, 200 + 400);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_deliveries_and_a_replayed_consumer_double_nothing() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = test_consumer_options(3);
    let handler = Arc::new(EffectHandler::new(0));
    let sources = append_sources(&store, 50).await;
    let expected = expected_effects(&sources, &[]);

    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        options.clone(),
        true,
    );
    wait_for_effects(&store, &expected).await;
    running.stop().await;
    let applied_first = handler.applied();

    // The same notice again, past deduplication (another Nats-Msg-Id).
    let event = store.event_by_id(sources[0]).await.unwrap().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
    let payload = serde_json::to_vec(&EventNotice::of(&event.header())).unwrap();
    let ack = jetstream
        .publish_with_headers(bus.subject_for(&event.header()), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
    // And both consumers replay the whole stream: deleted, recreated with DeliverPolicy::All.
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    for policy in [ALPHA, BETA] {
        stream
            .delete_consumer(&options.durable_name(policy))
            .await
            .unwrap();
    }
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        options.clone(),
        false,
    );
    for policy in [ALPHA, BETA] {
        wait_consumer_drained(&jetstream, &bus, &options, policy).await;
    }
    running.stop().await;

    assert!(
        handler.applied() >= applied_first + 2 * 50 + 2,
        "the replay ran the handler again ({} then {})",
        applied_first,
        handler.applied()
    );
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_outage_while_appending_loses_nothing() {
    let store = postgres_store().await;
    let mut nats = PrivateNats::start().await;
    let jetstream = connect(&nats.url()).await;
    let bus = unique_bus();
    let handler = Arc::new(EffectHandler::new(0));
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler,
        test_consumer_options(3),
        true,
    );

    let appender = {
        let store = store.store().clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for index in 0..500 {
                ids.push(append_one(&store, SOURCE_TYPE, index).await);
                // Spread the appends over the outage below.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            ids
        })
    };
    eventually(DEADLINE, "some effects before the outage", || async {
        effects(&store).await.len() >= 50
    })
    .await;
    nats.stop();
    // The outage itself: NATS is away for 5 seconds while appends go on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.restart().await;
    let sources = appender.await.unwrap();
    let expected = expected_effects(&sources, &[]);
    wait_for_effects(&store, &expected).await;
    running.stop().await;

    assert_exactly(&effects(&store).await, &expected);
    let relay_checkpoint = store.load_checkpoint("relay").await.unwrap();
    let last = store
        .event_by_id(*sources.last().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        relay_checkpoint >= last.cursor(),
        "the relay resumed by itself"
    );
    store.close().await;
}

/// A NATS outage longer than the client's queue of messages to send can absorb does not hang
/// the runtime's shutdown. (Until 2026-12-07 a policy consumer's pull loop went on sending pull
/// requests while the client was disconnected; once they filled the client's queue, its next
/// send waited for the server, and so did the shutdown. The queue holds 2,048 messages in
/// `serve`: about five minutes of outage; 8 here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runtime_stops_promptly_during_a_long_nats_outage() {
    let store = postgres_store().await;
    let mut nats = PrivateNats::start().await;
    let client = async_nats::ConnectOptions::new()
        .client_capacity(8)
        .max_reconnects(None)
        .connect(nats.url())
        .await
        .unwrap();
    let jetstream = jetstream::new(client);
    let bus = unique_bus();
    let options = ConsumerOptions {
        fetch_expires: Duration::from_millis(100),
        ..test_consumer_options(3)
    };
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        Arc::new(EffectHandler::new(0)),
        options,
        true,
    );
    let sources = append_sources(&store, 20).await;
    wait_for_effects(&store, &expected_effects(&sources, &[])).await;

    nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await;
    store.close().await;
}

/// The messages a stopping consumer hands back are delivered once more, not in a burst: they
/// are nak'd with a delay that outlasts the consumer's own pull requests. (Until 2026-12-07
/// they were nak'd for redelivery at once, straight back to those requests, nak'd again, and
/// so on until the requests ended: hundreds of deliveries, each counted against its event's
/// attempts.) Every event is still applied once, by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_handed_back_at_shutdown_are_redelivered_once_not_in_a_burst() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = test_consumer_options(3);
    let handler = Arc::new(EffectHandler::new(0).with_delay(Duration::from_millis(50)));
    let sources = append_sources(&store, 300).await;
    let running = Running::start(&store, &jetstream, &bus, handler, options.clone(), true);
    eventually(DEADLINE, "some effects", || async {
        effects(&store).await.len() >= 20
    })
    .await;
    running.stop().await;
    // Past the consumers' last pull requests (300 ms) and a redelivery at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    for policy in [ALPHA, BETA] {
        let info = stream
            .consumer_info(options.durable_name(policy))
            .await
            .unwrap();
        let deliveries = info.delivered.consumer_sequence;
        let first_deliveries = info.delivered.stream_sequence;
        assert!(
            deliveries <= first_deliveries + 10,
            "{policy}: {deliveries} deliveries of {first_deliveries} notices"
        );
    }

    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        Arc::new(EffectHandler::new(0)),
        options,
        false,
    );
    let expected = expected_effects(&sources, &[]);
    wait_for_effects(&store, &expected).await;
    running.stop().await;
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// `count` source events, a poison event, `count` more: the sources and the poison's id.
async fn sources_around_a_poison(store: &EventStore, count: usize) -> (Vec<Uuid>, Uuid) {
    let mut sources = append_sources(store, count).await;
    let poison = append_one(store, POISON_TYPE, count).await;
    sources.extend(append_sources(store, count).await);
    (sources, poison)
}

/// Runs the relay and `handler`'s consumers until every effect of `expected` is stored, a
/// `PolicyFailed` is recorded and both consumers are drained, then stops them; answers the
/// failed runs.
async fn run_until_the_poison_failed(
    store: &EventStore,
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    handler: Arc<dyn PolicyHandler>,
    options: &ConsumerOptions,
    expected: &HashMap<(String, Uuid), usize>,
) -> Vec<lifeline_policies::runtime::FailedPolicyRun> {
    let running = Running::start(store, jetstream, bus, handler, options.clone(), true);
    wait_for_effects(store, expected).await;
    eventually(DEADLINE, "PolicyFailed of the poison event", || async {
        !list_failed(store).await.unwrap().is_empty()
    })
    .await;
    for policy in [ALPHA, BETA] {
        wait_consumer_drained(jetstream, bus, options, policy).await;
    }
    running.stop().await;
    list_failed(store).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_recorded_once_and_retried_after_the_fix() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = test_consumer_options(3);
    let handler = Arc::new(EffectHandler::new(u32::MAX));
    let (sources, poison) = sources_around_a_poison(&store, 20).await;
    let flowing = expected_effects(&sources, &[]);
    let failed = run_until_the_poison_failed(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        &options,
        &flowing,
    )
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].policy.as_str(), failed[0].event_id),
        (ALPHA, poison)
    );
    assert_eq!(failed[0].deliveries, 3);
    let recorded = store
        .read_stream(&StreamId::parse("policyfailures-log").unwrap())
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1, "PolicyFailed recorded exactly once");
    assert_exactly(&effects(&store).await, &flowing);

    handler.fix();
    let report = retry_failed(&store, handler.as_ref(), &RetryFilter::default())
        .await
        .unwrap();
    assert_eq!(report.succeeded.len(), 1);
    assert!(report.failed.is_empty());
    assert!(list_failed(&store).await.unwrap().is_empty());
    // The reader is gap-free: a commit becomes readable once older transactions (of any test on
    // this server) have ended.
    let all = expected_effects(&sources, &[poison]);
    wait_for_effects(&store, &all).await;
    assert_exactly(&effects(&store).await, &all);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// The same inputs (same event ids and streams) for two stores.
fn fixed_inputs() -> Vec<(StreamId, NewEvent)> {
    let mut inputs = Vec::new();
    for index in 0..60 {
        let event_type = if index == 30 {
            POISON_TYPE
        } else {
            SOURCE_TYPE
        };
        inputs.push((
            new_stream("source"),
            new_event(event_type, serde_json::json!({ "index": index })),
        ));
    }
    inputs.push((
        new_stream("other"),
        new_event("TestIgnored", serde_json::json!({})),
    ));
    inputs
}

async fn append_inputs(store: &EventStore, inputs: &[(StreamId, NewEvent)]) {
    for (stream, event) in inputs {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                std::slice::from_ref(event),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_and_nats_modes_produce_the_same_effects() {
    let inputs = fixed_inputs();
    let sources: Vec<Uuid> = inputs
        .iter()
        .filter(|(_, event)| event.event_type == SOURCE_TYPE)
        .map(|(_, event)| event.event_id)
        .collect();
    let poison = inputs
        .iter()
        .find(|(_, event)| event.event_type == POISON_TYPE)
        .map(|(_, event)| event.event_id)
        .unwrap();
    let expected = expected_effects(&sources, &[poison]);

    // NATS mode: the poison event fails twice, then succeeds on the third of three attempts.
    let nats_store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    append_inputs(&nats_store, &inputs).await;
    let running = Running::start(
        &nats_store,
        &jetstream,
        &bus,
        Arc::new(EffectHandler::new(2)),
        test_consumer_options(3),
        true,
    );
    wait_for_effects(&nats_store, &expected).await;
    running.stop().await;

    // Embedded mode: the same.
    let embedded_store = postgres_store().await;
    append_inputs(&embedded_store, &inputs).await;
    let (stop, shutdown) = watch::channel(false);
    let embedded = tokio::spawn(run_embedded_policies(
        embedded_store.store().clone(),
        Arc::new(EffectHandler::new(2)),
        test_embedded_options(3),
        shutdown,
    ));
    wait_for_effects(&embedded_store, &expected).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), embedded)
        .await
        .unwrap()
        .unwrap();

    let nats_effects = effects(&nats_store).await;
    let embedded_effects = effects(&embedded_store).await;
    assert_exactly(&nats_effects, &expected);
    assert_eq!(nats_effects, embedded_effects);
    // Same effect events, same ids, in both logs.
    for key in expected.keys() {
        let (stream, id) = EffectHandler::effect_of(&key.0, key.1);
        for store in [&nats_store, &embedded_store] {
            let events = store.read_stream(&stream).await.unwrap();
            assert_eq!(
                events
                    .iter()
                    .map(|event| event.event_id)
                    .collect::<Vec<_>>(),
                vec![id]
            );
        }
    }
    assert!(list_failed(&nats_store).await.unwrap().is_empty());
    assert!(list_failed(&embedded_store).await.unwrap().is_empty());
    delete_stream(&jetstream, &bus).await;
    nats_store.close().await;
    embedded_store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_mode_records_a_poison_event_and_moves_on() {
    let store = postgres_store().await;
    let mut sources = append_sources(&store, 10).await;
    let poison = append_one(&store, POISON_TYPE, 10).await;
    sources.extend(append_sources(&store, 10).await);
    let (stop, shutdown) = watch::channel(false);
    let handler = Arc::new(EffectHandler::new(u32::MAX));
    let embedded = tokio::spawn(run_embedded_policies(
        store.store().clone(),
        handler.clone(),
        test_embedded_options(3),
        shutdown,
    ));
    wait_for_effects(&store, &expected_effects(&sources, &[])).await;
    eventually(DEADLINE, "PolicyFailed in embedded mode", || async {
        !list_failed(&store).await.unwrap().is_empty()
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), embedded)
        .await
        .unwrap()
        .unwrap();

    let failed = list_failed(&store).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (
            failed[0].policy.as_str(),
            failed[0].event_id,
            failed[0].deliveries
        ),
        (ALPHA, poison, 3)
    );
    handler.fix();
    let filter = RetryFilter {
        policy: Some(ALPHA.to_owned()),
        event_id: Some(poison),
    };
    let report = retry_failed(&store, handler.as_ref(), &filter)
        .await
        .unwrap();
    assert_eq!(report.succeeded.len(), 1);
    assert!(list_failed(&store).await.unwrap().is_empty());
    // The reader is gap-free: a commit becomes readable once older transactions (of any test on
    // this server) have ended.
    let all = expected_effects(&sources, &[poison]);
    wait_for_effects(&store, &all).await;
    assert_exactly(&effects(&store).await, &all);
    store.close().await;
}

fn spawn_worker(database_url: &str, nats_url: &str, bus: &BusConfig) -> Child {
    Command::new(env!("CARGO_BIN_EXE_test_worker"))
        .env("LIFELINE_DATABASE_URL", database_url)
        .env("LIFELINE_NATS_URL", nats_url)
        .env("TEST_STREAM", &bus.stream_name)
        .env("TEST_SUBJECT_PREFIX", &bus.subject_prefix)
        .env("TEST_MAX_ATTEMPTS", "3")
        .env("TEST_APPLY_DELAY_MS", "5")
        // Small lane batches, so that effects commit a few at a time: with the default (64),
        // each lane's first batch of 5 ms applies committed at about the same moment (some
        // 500 of the 600 effects at once), and the rest could be done before the kill landed
        // ("killed mid-run (600 of 600)" in a loaded CI run). Effects at the kill, three runs
        // each: 158, 292, 433 of 600 with 64; 155, 184, 191 with 8.
        .env("TEST_LANE_BATCH", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the test worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_run_and_restarted_applies_every_event_exactly_once() {
    let store = postgres_store().await;
    let database_url = postgres_url_of(&store).expect("a PostgreSQL store");
    let nats_url = shared_nats_url();
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let sources = append_sources(&store, 300).await;
    let expected = expected_effects(&sources, &[]);
    let (stop_relay, shutdown) = watch::channel(false);
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        test_relay_options(),
    );
    let relay = tokio::spawn(async move { relay.run(shutdown).await });

    let mut worker = spawn_worker(&database_url, &nats_url, &bus);
    eventually(DEADLINE, "part of the effects before the kill", || async {
        effects(&store).await.len() >= expected.len() / 4
    })
    .await;
    worker.kill().expect("SIGKILL the worker");
    worker.wait().unwrap();
    let at_kill = effects(&store).await.len();
    assert!(
        at_kill < expected.len(),
        "killed mid-run ({at_kill} of {})",
        expected.len()
    );

    let mut worker = spawn_worker(&database_url, &nats_url, &bus);
    wait_for_effects(&store, &expected).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    stop_relay.send(true).unwrap();
    relay.await.unwrap();

    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_the_same_consumers_apply_every_event_exactly_once() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let sources = append_sources(&store, 200).await;
    let expected = expected_effects(&sources, &[]);
    let first_handler = Arc::new(EffectHandler::new(0));
    let second_handler = Arc::new(EffectHandler::new(0));

    let first = Running::start(
        &store,
        &jetstream,
        &bus,
        first_handler.clone(),
        test_consumer_options(3),
        true,
    );
    let second = Running::start(
        &store,
        &jetstream,
        &bus,
        second_handler.clone(),
        test_consumer_options(3),
        false,
    );
    wait_for_effects(&store, &expected).await;
    first.stop().await;
    second.stop().await;

    assert_exactly(&effects(&store).await, &expected);
    assert!(
        first_handler.applied() > 0 && second_handler.applied() > 0,
        "both workers took part ({} and {})",
        first_handler.applied(),
        second_handler.applied()
    );
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_aborted_mid_run_resumes_without_duplicate_notices() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    // Enough notices, in small batches, that the relay is still publishing when it is aborted.
    let sources = append_sources(&store, 2000).await;
    let relay_options = RelayOptions {
        batch_size: 20,
        ..test_relay_options()
    };
    let messages = || async {
        let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
        stream.get_info().await.unwrap().state.messages
    };

    let (_stop, shutdown) = watch::channel(false);
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        relay_options.clone(),
    );
    let first = tokio::spawn(async move { relay.run(shutdown).await });
    eventually(DEADLINE, "part of the notices", || async {
        jetstream.get_stream(&bus.stream_name).await.is_ok() && messages().await >= 100
    })
    .await;
    // A crash at whatever await point the relay is at: between publishes, acks or checkpoint.
    first.abort();
    let _ = first.await;
    let published_at_crash = messages().await;
    assert!(published_at_crash < 2000, "aborted mid-run");

    let (stop, shutdown) = watch::channel(false);
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        relay_options,
    );
    let second = tokio::spawn(async move { relay.run(shutdown).await });
    let last = store
        .event_by_id(*sources.last().unwrap())
        .await
        .unwrap()
        .unwrap();
    eventually(
        DEADLINE,
        "the relay's checkpoint at the last event",
        || async { store.load_checkpoint("relay").await.unwrap() >= last.cursor() },
    )
    .await;
    stop.send(true).unwrap();
    second.await.unwrap();
    assert_eq!(
        messages().await,
        2000,
        "one notice per event, republished ones dropped"
    );
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Fails each event's first attempt, then applies it as [`EffectHandler`] does (for [`ALPHA`]
/// only), slowly, and keeps the batches of events it had seen before: redeliveries.
struct FailsFirstAttempt {
    inner: EffectHandler,
    seen: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    redelivered_batches: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl PolicyHandler for FailsFirstAttempt {
    fn policy_names(&self) -> Vec<&'static str> {
        vec![ALPHA]
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.inner.wants(policy, event_type)
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_policies::PolicyError> {
        self.inner.apply(policy, tx, event).await
    }

    async fn apply_notices(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        notices: &[lifeline_policies::handler::Noticed<'_>],
    ) -> Result<(), (Option<usize>, lifeline_policies::PolicyError)> {
        let first = {
            let mut seen = self.seen.lock().unwrap();
            notices
                .iter()
                .position(|notice| seen.insert(notice.event_id))
        };
        if let Some(index) = first {
            return Err((
                Some(index),
                lifeline_policies::PolicyError::Refused {
                    policy: policy.to_owned(),
                    event_id: notices[index].event_id,
                    message: "first attempt".to_owned(),
                },
            ));
        }
        self.redelivered_batches.lock().unwrap().push(notices.len());
        // Slow enough that the other redeliveries queue in the lane meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events = lifeline_policies::handler::read_noticed(tx, notices).await?;
        self.apply_batch(policy, tx, &events).await
    }
}

/// Runs `handler` (its [`ALPHA`] policy, with `options`) behind a relay until each of `sources`
/// has its one effect and the consumer is drained, then stops it; answers the effects expected.
async fn run_until_each_applied(
    store: &EventStore,
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    handler: Arc<dyn PolicyHandler>,
    options: &ConsumerOptions,
    sources: &[Uuid],
) -> HashMap<(String, Uuid), usize> {
    let running = Running::start(store, jetstream, bus, handler, options.clone(), true);
    let expected: HashMap<(String, Uuid), usize> = sources
        .iter()
        .map(|source| ((ALPHA.to_owned(), *source), 1))
        .collect();
    wait_for_effects(store, &expected).await;
    wait_consumer_drained(jetstream, bus, options, ALPHA).await;
    running.stop().await;
    expected
}

/// Redelivered messages that queue in a lane are handled in one transaction, as first
/// deliveries are: a backlog past `ack_wait` (every message redelivered) must not fall back to
/// a transaction per message, which could not keep up with the arrivals (W3 with a short ack
/// wait fell into that state). Each event still counts its own attempts, and its effect is
/// written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_messages_are_handled_together_and_once() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = ConsumerOptions {
        lanes: 1,
        ..test_consumer_options(3)
    };
    let handler = Arc::new(FailsFirstAttempt {
        inner: EffectHandler::new(0),
        seen: Default::default(),
        redelivered_batches: Default::default(),
    });
    let sources = append_sources(&store, 20).await;
    let expected = run_until_each_applied(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        &options,
        &sources,
    )
    .await;

    let batches = handler.redelivered_batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), sources.len(), "{batches:?}");
    assert!(
        batches.iter().any(|size| *size > 1),
        "redeliveries handled one transaction each: {batches:?}"
    );
    assert!(list_failed(&store).await.unwrap().is_empty());
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Lanes whose batches take longer than `ack_wait` (a slow database): the messages being
/// handled, and those waiting behind them (in the lane or beyond what it takes at once), are
/// told to JetStream as in progress, so none is redelivered while held and handled again.
/// (Until the thirty-first session nothing was sent: with the default 30 s `ack_wait`, equal
/// to sqlx's acquire time-out, a batch waiting out a saturated pool had every message it held
/// redelivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_held_past_the_ack_wait_are_kept_in_progress_not_redelivered() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    // One lane of two: most messages wait behind the batch being handled, more than the lane
    // takes at once (until this session, those sat in the client's buffer, not kept alive).
    let options = ConsumerOptions {
        lanes: 1,
        lane_batch: 2,
        ack_wait: Duration::from_secs(1),
        ..test_consumer_options(3)
    };
    // Seven events a policy, 600 ms each: the lane holds them about 4 s, and the sixth waits
    // 1.2 s before the lane has room for it.
    let handler = Arc::new(EffectHandler::new(0).with_delay(Duration::from_millis(600)));
    let sources = append_sources(&store, 7).await;
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        options.clone(),
        true,
    );
    let expected = expected_effects(&sources, &[]);
    wait_for_effects(&store, &expected).await;
    for policy in [ALPHA, BETA] {
        wait_consumer_drained(&jetstream, &bus, &options, policy).await;
    }
    running.stop().await;

    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    for policy in [ALPHA, BETA] {
        let info = stream
            .consumer_info(options.durable_name(policy))
            .await
            .unwrap();
        assert_eq!(
            info.delivered.consumer_sequence, info.delivered.stream_sequence,
            "{policy}: deliveries past the stream's messages are redeliveries"
        );
    }
    assert_eq!(
        handler.applied(),
        expected.len(),
        "each event applied once: no redelivered copy handled again"
    );
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Panics on the poison event, and applies every other as [`EffectHandler`] does.
struct PanicsOnPoison(EffectHandler);

#[async_trait::async_trait]
impl PolicyHandler for PanicsOnPoison {
    fn policy_names(&self) -> Vec<&'static str> {
        self.0.policy_names()
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.0.wants(policy, event_type)
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_policies::PolicyError> {
        assert!(
            event.event_type != POISON_TYPE,
            "a handler bug on this event"
        );
        self.0.apply(policy, tx, event).await
    }
}

/// A handler that panics on one event, handled in the same lane batch as others: the others are
/// applied (the batch is handled one by one after the panic), and the poison event counts its
/// attempts and ends as `PolicyFailed`, as an error would. (Until the thirty-first session a
/// panic ended the lane: nothing of its stream hash was handled again by that worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_panics_fails_its_event_only() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = ConsumerOptions {
        lanes: 1,
        ..test_consumer_options(3)
    };
    let handler = Arc::new(PanicsOnPoison(EffectHandler::new(0)));
    let (sources, poison) = sources_around_a_poison(&store, 10).await;
    let expected = expected_effects(&sources, &[]);
    let failed =
        run_until_the_poison_failed(&store, &jetstream, &bus, handler, &options, &expected).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].policy.as_str(), failed[0].event_id),
        (ALPHA, poison)
    );
    assert!(failed[0].error.contains("panicked"), "{failed:?}");
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Fails every attempt with the store away (a pool time-out: PostgreSQL down or failing over)
/// until `outage` attempts have failed, then applies as [`EffectHandler`] does (for [`ALPHA`]).
struct StoreAwayFor {
    inner: EffectHandler,
    outage: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl PolicyHandler for StoreAwayFor {
    fn policy_names(&self) -> Vec<&'static str> {
        vec![ALPHA]
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.inner.wants(policy, event_type)
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_policies::PolicyError> {
        self.away()?;
        self.inner.apply(policy, tx, event).await
    }

    async fn apply_notices(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        notices: &[lifeline_policies::handler::Noticed<'_>],
    ) -> Result<(), (Option<usize>, lifeline_policies::PolicyError)> {
        self.away().map_err(|error| (None, error))?;
        let events = lifeline_policies::handler::read_noticed(tx, notices).await?;
        let mut result = Ok(());
        for (index, event) in events.iter().enumerate() {
            if let Err(error) = self.inner.apply(policy, tx, event).await {
                result = Err((Some(index), error));
                break;
            }
        }
        result
    }
}

impl StoreAwayFor {
    /// The store's answer while the outage lasts: a pool time-out.
    fn away(&self) -> Result<(), lifeline_policies::PolicyError> {
        let away = self
            .outage
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            )
            .is_ok();
        if away {
            return Err(lifeline_policies::PolicyError::Store(
                lifeline_store::StoreError::Database(sqlx::Error::PoolTimedOut),
            ));
        }
        Ok(())
    }
}

/// PostgreSQL away for many more deliveries than a policy's attempts: nothing is given up on
/// (no `PolicyFailed`) and nothing dropped by JetStream; every event is applied once the store
/// is back. A durable created with the old settings (`max_deliver` = attempts + 1, with which
/// JetStream dropped the messages after about 30 s of outage) is brought to the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_longer_than_the_attempts_loses_nothing_and_fails_nothing() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = test_consumer_options(3);
    let handler = Arc::new(StoreAwayFor {
        inner: EffectHandler::new(0),
        outage: std::sync::atomic::AtomicU32::new(25),
    });
    let stream = jetstream
        .get_or_create_stream(bus.stream_config())
        .await
        .unwrap();
    let mut old = options.consumer_config(ALPHA, None);
    old.max_deliver = 4;
    stream.create_consumer(old).await.unwrap();
    let sources = append_sources(&store, 20).await;
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        options.clone(),
        true,
    );
    let expected: HashMap<(String, Uuid), usize> = sources
        .iter()
        .map(|source| ((ALPHA.to_owned(), *source), 1))
        .collect();
    wait_for_effects(&store, &expected).await;
    wait_consumer_drained(&jetstream, &bus, &options, ALPHA).await;
    running.stop().await;

    assert_eq!(
        handler.outage.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the outage outlasted every attempt"
    );
    assert!(list_failed(&store).await.unwrap().is_empty());
    assert_exactly(&effects(&store).await, &expected);
    let info = stream
        .consumer_info(&options.durable_name(ALPHA))
        .await
        .unwrap();
    assert_eq!(info.config.max_deliver, -1);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// The same outage in embedded mode (no NATS): retried until the store is back, no
/// `PolicyFailed` (until 2026-12-07 each failure counted, and the event was recorded as failed
/// after the attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_policy_waits_out_a_store_outage_without_giving_up() {
    let store = postgres_store().await;
    let handler = Arc::new(StoreAwayFor {
        inner: EffectHandler::new(0),
        outage: std::sync::atomic::AtomicU32::new(10),
    });
    let sources = append_sources(&store, 5).await;
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(run_embedded_policies(
        store.store().clone(),
        handler.clone(),
        test_embedded_options(3),
        shutdown,
    ));
    let expected: HashMap<(String, Uuid), usize> = sources
        .iter()
        .map(|source| ((ALPHA.to_owned(), *source), 1))
        .collect();
    wait_for_effects(&store, &expected).await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(handler.outage.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(list_failed(&store).await.unwrap().is_empty());
    assert_exactly(&effects(&store).await, &expected);
    store.close().await;
}

/// The messages the test's stream holds now (0 if it does not exist).
async fn stream_messages(jetstream: &jetstream::Context, bus: &BusConfig) -> u64 {
    match jetstream.get_stream(&bus.stream_name).await {
        Ok(stream) => stream.cached_info().state.messages,
        Err(_) => 0,
    }
}

/// Notices the stream no longer holds though the relay had published them (the server lost
/// its store, or the notices it acknowledged before its fsync; the stream deleted and made
/// again) are published again, and only those. Until 2026-12-07 the relay's checkpoint was
/// past them: they were lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notices_the_stream_lost_are_published_again() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    append_sources(&store, 20).await;
    let options = RelayOptions {
        batch_size: 10,
        ..test_relay_options()
    };
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    );
    let all_published = || async { stream_messages(&jetstream, &bus).await == 20 };
    let (stop, task) = start_relay(&relay);
    let end = wait_all_relayed(&store, &jetstream, &bus, &options.checkpoint, 20).await;

    // While the relay runs, caught up, the stream is deleted and made again, empty (by an
    // operator, or by a consumer binding): the relay's look at the stream sees it.
    delete_stream(&jetstream, &bus).await;
    assert_eq!(stream_messages(&jetstream, &bus).await, 0, "deleted");
    bus.ensure_stream(&jetstream).await.unwrap();
    eventually(DEADLINE, "20 notices again", all_published).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    // The server lost the last ten it had acknowledged: the stream holds the first ten only.
    // (A relay that saw the acks would notice the sequence going back at its next publish; this
    // is a relay started afresh, as after a restart of its process.)
    delete_stream(&jetstream, &bus).await;
    bus.ensure_stream(&jetstream).await.unwrap();
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    );
    let tenth = relay
        .relay_batch(lifeline_model::envelope::LogCursor::START)
        .await
        .unwrap()
        .unwrap();
    store
        .save_checkpoint(&options.checkpoint, end)
        .await
        .unwrap();
    assert_eq!(stream_messages(&jetstream, &bus).await, 10);
    assert!(
        relay.reconcile().await.unwrap(),
        "the checkpoint moved back"
    );
    assert_eq!(
        store.load_checkpoint(&options.checkpoint).await.unwrap(),
        tenth,
        "to the last notice the stream holds, not further"
    );
    assert!(!relay.reconcile().await.unwrap(), "once");
    let (stop, task) = start_relay(&relay);
    eventually(DEADLINE, "the last ten again", all_published).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        store.load_checkpoint(&options.checkpoint).await.unwrap(),
        end
    );
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// A stream that holds no notice (made again, or a server that lost its store) gets the notices
/// of the events recorded within twice its age limit again, not those of the whole log: older
/// ones would have aged out of a healthy stream. Until 2026-12-07 every event was republished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_stream_gets_back_the_notices_of_its_age_window_only() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    // An age limit of one hour: the window is two.
    let bus = unique_bus();
    assert_eq!(bus.max_age, Duration::from_secs(3600));
    // Ten events recorded three hours ago (as if published then), then ten now.
    for index in 0..10 {
        let mut event = new_event(SOURCE_TYPE, serde_json::json!({ "index": index }));
        event.metadata.recorded_at = chrono::Utc::now() - chrono::Duration::hours(3);
        store
            .append(&new_stream("source"), ExpectedVersion::NoStream, &[event])
            .await
            .unwrap();
    }
    let recent = append_sources(&store, 10).await;
    let options = test_relay_options();
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    );
    let (stop, task) = start_relay(&relay);
    let end = wait_all_relayed(&store, &jetstream, &bus, &options.checkpoint, 20).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    delete_stream(&jetstream, &bus).await;
    bus.ensure_stream(&jetstream).await.unwrap();
    assert!(
        relay.reconcile().await.unwrap(),
        "the checkpoint moved back"
    );
    let events = store
        .read_all(lifeline_model::envelope::LogCursor::START, 100)
        .await
        .unwrap();
    assert_eq!(
        store
            .read_all(
                store.load_checkpoint(&options.checkpoint).await.unwrap(),
                100
            )
            .await
            .unwrap()
            .iter()
            .map(|event| event.event_id)
            .collect::<Vec<_>>(),
        events[10..]
            .iter()
            .map(|event| event.event_id)
            .collect::<Vec<_>>(),
        "to just before the first event recorded within the window"
    );
    let (stop, task) = start_relay(&relay);
    eventually(DEADLINE, "the checkpoint at the head again", || async {
        store.load_checkpoint(&options.checkpoint).await.unwrap() == end
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let stream = jetstream.get_stream(&bus.stream_name).await.unwrap();
    let info = stream.cached_info();
    assert_eq!(info.state.messages, 10, "the recent ten only");
    let mut republished = Vec::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let id = message.headers.get("Nats-Msg-Id").unwrap().as_str();
        republished.push(Uuid::parse_str(id).unwrap());
    }
    assert_eq!(republished, recent);

    // A checkpoint already before the window stays where it is: reconciling never moves it on.
    delete_stream(&jetstream, &bus).await;
    bus.ensure_stream(&jetstream).await.unwrap();
    let old = events[4].cursor();
    store
        .save_checkpoint(&options.checkpoint, old)
        .await
        .unwrap();
    assert!(!relay.reconcile().await.unwrap(), "not moved");
    assert_eq!(
        store.load_checkpoint(&options.checkpoint).await.unwrap(),
        old
    );
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// A caught-up relay whose server comes back with an empty store (restarted after losing its
/// directory) publishes its notices again once reconnected: the client's new connection has the
/// stream looked at at once, not at the next periodic look (an hour away here). Until
/// 2026-12-07 no test covered this path (the periodic look would also have found it, later).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_reconnecting_to_a_server_that_lost_its_store_publishes_again() {
    let store = postgres_store().await;
    let mut nats = PrivateNats::start().await;
    let jetstream = connect(&nats.url()).await;
    let bus = unique_bus();
    append_sources(&store, 20).await;
    let options = RelayOptions {
        stream_check_interval: Duration::from_secs(3600),
        ..test_relay_options()
    };
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    );
    let (stop, running) = start_relay(&relay);
    let head = wait_all_relayed(&store, &jetstream, &bus, &options.checkpoint, 20).await;

    // The server loses its whole store while the relay, caught up, publishes nothing.
    nats.stop();
    let directory = nats.store_directory();
    std::fs::remove_dir_all(&directory).unwrap();
    std::fs::create_dir_all(&directory).unwrap();
    nats.restart().await;
    eventually(DEADLINE, "20 notices again", || async {
        stream_messages(&jetstream, &bus).await == 20
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(
        store.load_checkpoint(&options.checkpoint).await.unwrap(),
        head
    );
    store.close().await;
}

/// The relay makes the stream if it is missing, and otherwise sets only what Lifeline owns:
/// limits an operator set (`max_bytes`, `discard`) stay. Until 2026-12-07 every relay start
/// reset them to the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn making_sure_of_the_stream_keeps_the_limits_an_operator_set() {
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    bus.ensure_stream(&jetstream).await.unwrap();
    let mut config = jetstream
        .get_stream(&bus.stream_name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(config.subjects, vec![bus.stream_subjects()]);
    config.max_bytes = 64 * 1024 * 1024;
    config.discard = jetstream::stream::DiscardPolicy::New;
    config.max_age = Duration::from_secs(7200);
    jetstream.update_stream(&config).await.unwrap();
    bus.ensure_stream(&jetstream).await.unwrap();
    let kept = jetstream
        .get_stream(&bus.stream_name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(kept.max_bytes, 64 * 1024 * 1024);
    assert_eq!(kept.discard, jetstream::stream::DiscardPolicy::New);
    assert_eq!(
        kept.max_age,
        bus.stream_config().max_age,
        "what Lifeline owns is set"
    );
    delete_stream(&jetstream, &bus).await;
}

/// An event that always fails as if the store were away (a fault that only looks like it) is
/// not retried for ever: past `max_unavailable_deliveries` such failures count as attempts,
/// and it ends as `PolicyFailed`, which an operator sees and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_that_only_looks_like_the_store_away_ends_as_policy_failed() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = ConsumerOptions {
        max_unavailable_deliveries: 5,
        ..test_consumer_options(3)
    };
    let handler = Arc::new(StoreAwayFor {
        inner: EffectHandler::new(0),
        outage: std::sync::atomic::AtomicU32::new(u32::MAX),
    });
    let source = append_sources(&store, 1).await[0];
    let running = Running::start(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        options.clone(),
        true,
    );
    eventually(DEADLINE, "PolicyFailed of the event", || async {
        !list_failed(&store).await.unwrap().is_empty()
    })
    .await;
    wait_consumer_drained(&jetstream, &bus, &options, ALPHA).await;
    running.stop().await;
    let failed = list_failed(&store).await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].event_id, source);
    assert!(failed[0].deliveries >= 8, "{failed:?}");
    assert!(failed[0].error.contains("pool timed out"), "{failed:?}");
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// Runs `relay` in a task of its own until its switch is set.
fn start_relay(relay: &Relay) -> (watch::Sender<bool>, JoinHandle<()>) {
    let relay = relay.clone();
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(async move { relay.run(shutdown).await }))
}

/// Waits until the stream holds `count` notices and `checkpoint` stands at the log's head;
/// answers the head.
async fn wait_all_relayed(
    store: &EventStore,
    jetstream: &jetstream::Context,
    bus: &BusConfig,
    checkpoint: &str,
    count: u64,
) -> lifeline_model::envelope::LogCursor {
    eventually(DEADLINE, &format!("{count} notices"), || async {
        stream_messages(jetstream, bus).await == count
    })
    .await;
    let head = log_head_cursor(store).await;
    eventually(DEADLINE, "the checkpoint at the head", || async {
        store.load_checkpoint(checkpoint).await.unwrap() == head
    })
    .await;
    head
}

/// The cursor of the last event of the log.
async fn log_head_cursor(store: &EventStore) -> lifeline_model::envelope::LogCursor {
    let mut cursor = lifeline_model::envelope::LogCursor::START;
    loop {
        let batch = store.read_all(cursor, 1000).await.unwrap();
        match batch.last() {
            Some(last) => cursor = last.cursor(),
            None => return cursor,
        }
    }
}

/// A running relay whose stream comes back with only its first notices (a server restarted
/// without the last ones it had acknowledged) while new events arrive: the first new notice is
/// acknowledged at a sequence not after the last one the relay saw, and the relay publishes the
/// lost ones again, then the new ones, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_relay_republishes_the_notices_a_restarted_server_lost() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    append_sources(&store, 20).await;
    let options = RelayOptions {
        batch_size: 10,
        ..test_relay_options()
    };
    let relay = Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    );
    let (stop, running) = start_relay(&relay);
    let head = wait_all_relayed(&store, &jetstream, &bus, &options.checkpoint, 20).await;

    // The server comes back holding the first ten notices only (made here by a relay of its
    // own, which leaves the shared checkpoint where the running relay had it).
    delete_stream(&jetstream, &bus).await;
    bus.ensure_stream(&jetstream).await.unwrap();
    Relay::new(
        store.store().clone(),
        jetstream.clone(),
        bus.clone(),
        options.clone(),
    )
    .relay_batch(lifeline_model::envelope::LogCursor::START)
    .await
    .unwrap();
    store
        .save_checkpoint(&options.checkpoint, head)
        .await
        .unwrap();
    append_sources(&store, 5).await;
    eventually(DEADLINE, "25 notices", || async {
        stream_messages(&jetstream, &bus).await == 25
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(stream_messages(&jetstream, &bus).await, 25, "each once");
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}

/// A handler that runs its batches in deferred transactions and reads each noticed event's
/// stream held before writing (as the registrations read their records); in its first batch,
/// one of those streams moves (an event appended from outside, as a correction would) between
/// the read and the write.
struct RecordMovesOnce {
    inner: EffectHandler,
    store: EventStore,
    moved: std::sync::atomic::AtomicBool,
    /// Whether each batch run began deferred, in order.
    runs: std::sync::Mutex<Vec<bool>>,
}

#[async_trait::async_trait]
impl PolicyHandler for RecordMovesOnce {
    fn policy_names(&self) -> Vec<&'static str> {
        vec![ALPHA]
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        self.inner.wants(policy, event_type)
    }

    fn defers_begin(&self, _policy: &str) -> bool {
        true
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_policies::PolicyError> {
        self.inner.apply(policy, tx, event).await
    }

    async fn apply_notices(
        &self,
        policy: &str,
        tx: &mut lifeline_store::StoreTransaction<'_>,
        notices: &[lifeline_policies::handler::Noticed<'_>],
    ) -> Result<(), (Option<usize>, lifeline_policies::PolicyError)> {
        self.runs.lock().unwrap().push(tx.is_deferred());
        let streams: Vec<StreamId> = notices
            .iter()
            .map(|notice| StreamId::parse(notice.stream_id).unwrap())
            .collect();
        let held: Vec<&StreamId> = streams.iter().collect();
        tx.read_streams_held(&held)
            .await
            .map_err(|error| (None, lifeline_policies::PolicyError::Store(error)))?;
        if !self.moved.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.store
                .append(
                    &streams[0],
                    ExpectedVersion::Any,
                    &[new_event("Moved", serde_json::json!({}))],
                )
                .await
                .unwrap();
        }
        let events = lifeline_policies::handler::read_noticed(tx, notices).await?;
        lifeline_policies::handler::apply_each(self, policy, tx, &events).await
    }
}

/// A deferred batch whose record moved between its read and its write writes nothing and runs
/// again at once, in a transaction that holds its records as it reads them: every effect once,
/// nothing failed, no attempt lost to a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deferred_batch_whose_record_moved_runs_again_held() {
    let store = postgres_store().await;
    let jetstream = shared_nats().await;
    let bus = unique_bus();
    let options = ConsumerOptions {
        lanes: 1,
        ..test_consumer_options(3)
    };
    let handler = Arc::new(RecordMovesOnce {
        inner: EffectHandler::new(0),
        store: store.clone(),
        moved: Default::default(),
        runs: Default::default(),
    });
    let sources = append_sources(&store, 10).await;
    let expected = run_until_each_applied(
        &store,
        &jetstream,
        &bus,
        handler.clone(),
        &options,
        &sources,
    )
    .await;

    let runs = handler.runs.lock().unwrap().clone();
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(&runs[..2], [true, false], "{runs:?}");
    assert!(
        runs[2..].iter().all(|deferred| *deferred),
        "later batches ran deferred: {runs:?}"
    );
    assert!(list_failed(&store).await.unwrap().is_empty());
    assert_exactly(&effects(&store).await, &expected);
    delete_stream(&jetstream, &bus).await;
    store.close().await;
}
