//! NATS for the integration tests: the shared JetStream server with a unique stream per test, a
//! private `nats-server` a test can stop and restart, and test policy handlers that do not
//! depend on the real rules.
//!
//! `LIFELINE_TEST_NATS_URL` names the shared server (default `nats://127.0.0.1:4222`); an
//! unreachable server fails the test and says how to start it.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use chrono::Utc;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, NewEvent, RecordedEvent, StreamId,
};
use lifeline_policies::runtime::{BusConfig, ConsumerOptions, EmbeddedOptions, RetryPolicy};
use lifeline_policies::{PolicyError, PolicyHandler};
use lifeline_store::{EventStore, StoreTransaction, SubscriptionOptions};
use uuid::Uuid;

/// The environment variable naming the shared NATS server.
pub const NATS_URL_VAR: &str = "LIFELINE_TEST_NATS_URL";
/// The server used when [`NATS_URL_VAR`] is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The shared server's url.
pub fn shared_nats_url() -> String {
    std::env::var(NATS_URL_VAR).unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned())
}

/// A JetStream context on `url`. Panics, saying how to start NATS, if it cannot be reached.
pub async fn connect(url: &str) -> jetstream::Context {
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        lifeline_policies::runtime::connect_nats(url),
    )
    .await;
    match connected {
        Ok(Ok(jetstream)) => jetstream,
        Ok(Err(error)) => panic!(
            "cannot reach NATS at {url}: start it with `deploy/services.sh up` \
             (or set {NATS_URL_VAR}): {error}"
        ),
        Err(_) => panic!(
            "timed out connecting to NATS at {url}: start it with `deploy/services.sh up` \
             (or set {NATS_URL_VAR})"
        ),
    }
}

/// A JetStream context on the shared server.
pub async fn shared_nats() -> jetstream::Context {
    connect(&shared_nats_url()).await
}

/// A bus of its own for one test: a unique stream name and subject prefix.
pub fn unique_bus() -> BusConfig {
    let id = Uuid::new_v4().simple().to_string();
    BusConfig {
        stream_name: format!("TEST_{}", id.to_uppercase()),
        subject_prefix: format!("test.{id}"),
        replicas: 1,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(3600),
    }
}

/// Deletes a test's stream (and with it its consumers).
pub async fn delete_stream(jetstream: &jetstream::Context, bus: &BusConfig) {
    if let Err(error) = jetstream.delete_stream(&bus.stream_name).await {
        tracing::warn!(stream = %bus.stream_name, %error, "could not delete the test stream");
    }
}

/// Consumer options for tests: `max_attempts` attempts with short delays, short pulls, a short
/// ack wait (so a killed worker's messages come back quickly).
pub fn test_consumer_options(max_attempts: u32) -> ConsumerOptions {
    ConsumerOptions {
        retry: test_retry(max_attempts),
        ack_wait: Duration::from_secs(2),
        fetch_batch: 50,
        fetch_expires: Duration::from_millis(300),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..ConsumerOptions::default()
    }
}

/// Embedded options with the same retries as [`test_consumer_options`].
pub fn test_embedded_options(max_attempts: u32) -> EmbeddedOptions {
    EmbeddedOptions {
        retry: test_retry(max_attempts),
        subscription: SubscriptionOptions {
            batch_size: 50,
            poll_interval: Duration::from_millis(50),
        },
    }
}

fn test_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

/// The url of a test's PostgreSQL database, for a child process (trust authentication: no
/// password). `None` for SQLite.
pub fn postgres_url_of(store: &EventStore) -> Option<String> {
    let options = store.postgres_pool()?.connect_options();
    Some(format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    ))
}

/// A `nats-server` of one test, with JetStream, on a free port and a temporary store
/// directory; [`PrivateNats::stop`] and [`PrivateNats::restart`] keep both. Killed on drop.
pub struct PrivateNats {
    port: u16,
    directory: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts the server and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("find a free port");
        let directory = tempfile::tempdir().expect("create the nats store directory");
        let mut server = Self {
            port,
            directory,
            child: None,
        };
        server.launch().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_directory(&self) -> PathBuf {
        self.directory.path().to_owned()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    async fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.directory.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start nats-server (is it on PATH? `deploy/services.sh up` installs \
                     it): {error}"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not start within 10s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The event types the test handler knows.
pub const SOURCE_TYPE: &str = "TestSourceRecorded";
pub const POISON_TYPE: &str = "TestPoisonRecorded";
pub const EFFECT_TYPE: &str = "TestEffectRecorded";

/// The test handler's policies: `effect-alpha` reacts to sources and poison, `effect-beta` to
/// sources only.
pub const ALPHA: &str = "effect-alpha";
pub const BETA: &str = "effect-beta";

const EFFECT_NAMESPACE: Uuid = Uuid::from_u128(0x7465_7374_2d65_6666_6563_742d_6964_7321);

/// A test [`PolicyHandler`]: appends one effect event per (policy, source event) with a
/// deterministic id to a new stream `effect-<uuid>` ("stream must not exist"), and fails on
/// poison events while its failure budget lasts.
#[derive(Debug)]
pub struct EffectHandler {
    poison_failures_left: AtomicU32,
    applied: AtomicUsize,
    delay: Duration,
}

impl EffectHandler {
    /// A handler that fails on poison `poison_failures` times (`u32::MAX`: until fixed).
    pub fn new(poison_failures: u32) -> Self {
        Self {
            poison_failures_left: AtomicU32::new(poison_failures),
            applied: AtomicUsize::new(0),
            delay: Duration::ZERO,
        }
    }

    /// Makes every apply take at least `delay` (to kill a worker mid-run).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Stops failing on poison.
    pub fn fix(&self) {
        self.poison_failures_left.store(0, Ordering::SeqCst);
    }

    /// How many times apply ran to success.
    pub fn applied(&self) -> usize {
        self.applied.load(Ordering::SeqCst)
    }

    /// The effect stream and event id of `policy` on `source`.
    pub fn effect_of(policy: &str, source: Uuid) -> (StreamId, Uuid) {
        let id = Uuid::new_v5(&EFFECT_NAMESPACE, format!("{policy}/{source}").as_bytes());
        let stream = StreamId::for_kind("effect", id).expect("a valid stream id");
        (stream, id)
    }
}

#[async_trait]
impl PolicyHandler for EffectHandler {
    fn policy_names(&self) -> Vec<&'static str> {
        vec![ALPHA, BETA]
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        match policy {
            ALPHA => event_type == SOURCE_TYPE || event_type == POISON_TYPE,
            BETA => event_type == SOURCE_TYPE,
            _ => false,
        }
    }

    async fn apply(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), PolicyError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if event.event_type == POISON_TYPE {
            let failing = self
                .poison_failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    (left > 0).then(|| if left == u32::MAX { left } else { left - 1 })
                })
                .is_ok();
            if failing {
                return Err(PolicyError::Refused {
                    policy: policy.to_owned(),
                    event_id: event.event_id,
                    message: "poison".to_owned(),
                });
            }
        }
        let (stream, effect_id) = Self::effect_of(policy, event.event_id);
        let effect = NewEvent {
            event_id: effect_id,
            event_type: EFFECT_TYPE.to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "policy": policy, "source": event.event_id }),
            metadata: EventMetadata::system(
                format!("policy:{policy}"),
                event.metadata.correlation_id,
                Some(event.event_id),
                Utc::now(),
            ),
        };
        tx.append(&stream, ExpectedVersion::NoStream, &[effect])
            .await?;
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Every effect event in the log, counted per (policy, source event id).
pub async fn effects(store: &EventStore) -> HashMap<(String, Uuid), usize> {
    let mut counts = HashMap::new();
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_all(cursor, 1000).await.expect("read the log");
        let Some(last) = page.last() else {
            return counts;
        };
        cursor = last.cursor();
        for event in page.iter().filter(|event| event.event_type == EFFECT_TYPE) {
            let policy = event.payload["policy"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let source = event.payload["source"]
                .as_str()
                .and_then(|source| source.parse().ok())
                .expect("an effect names its source");
            *counts.entry((policy, source)).or_insert(0) += 1;
        }
    }
}

/// Appends `count` source events, each to a stream of its own; answers their ids.
pub async fn append_sources(store: &EventStore, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    for index in 0..count {
        ids.push(append_one(store, SOURCE_TYPE, index).await);
    }
    ids
}

/// Appends one event of `event_type` to a new `source-<uuid>` stream; answers its id.
pub async fn append_one(store: &EventStore, event_type: &str, index: usize) -> Uuid {
    let event = crate::new_event(event_type, serde_json::json!({ "index": index }));
    let id = event.event_id;
    store
        .append(
            &crate::new_stream("source"),
            ExpectedVersion::NoStream,
            &[event],
        )
        .await
        .expect("append a source event");
    id
}

/// The effects every source of `ids` should have: one per policy that wants it.
pub fn expected_effects(sources: &[Uuid], poison: &[Uuid]) -> HashMap<(String, Uuid), usize> {
    let mut expected = HashMap::new();
    for source in sources {
        expected.insert((ALPHA.to_owned(), *source), 1);
        expected.insert((BETA.to_owned(), *source), 1);
    }
    for poison in poison {
        expected.insert((ALPHA.to_owned(), *poison), 1);
    }
    expected
}
