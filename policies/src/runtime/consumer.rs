//! The JetStream policy consumers: one durable pull consumer per policy name (`policy-<name>`),
//! explicit acks, each message's event read from the store and applied in a transaction, then
//! acked (not confirmed: a lost ack is a redelivery the handler absorbs); failures nak'd with
//! an exponential delay, and after the configured attempts `PolicyFailed` is recorded and the
//! message terminated.
//!
//! Within a process a consumer handles up to `lanes` messages at once, one lane per hash of the
//! event's stream id, so the events of one stream keep their order. Messages that queue up in a
//! lane are handled together, in one transaction (falling back to one by one if it fails).
//!
//! Any number of processes may run the same consumer: JetStream hands each message to one of
//! them, and the handler's deterministic ids make a redelivery harmless.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use lifeline_store::{EventStore, StoreError};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::bus::{BusConfig, EventNotice};
use super::failures::record_failure;
use super::{sleep_or_shutdown, RetryPolicy, RuntimeError};
use crate::handler::{Noticed, PolicyHandler};

/// How the policy consumers fetch, wait and retry.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Attempts and back-off between them (Nak delays).
    pub retry: RetryPolicy,
    /// How long JetStream waits for an ack before redelivering (a crashed worker's messages
    /// come back after this).
    pub ack_wait: Duration,
    /// Messages per pull request.
    pub fetch_batch: usize,
    /// Messages handled at once per consumer: each message goes to the lane of its event's
    /// stream, so the events of one stream are handled one after another, in order, and
    /// different streams in parallel.
    pub lanes: usize,
    /// The most messages a lane handles in one transaction, and the most it holds waiting
    /// (what queued up while its last transaction ran is its next batch).
    pub lane_batch: usize,
    /// How long one pull request waits for messages; also bounds how long shutdown waits.
    pub fetch_expires: Duration,
    /// Most unacknowledged messages per consumer across all its processes.
    pub max_ack_pending: i64,
    /// The durable name is `<durable_prefix><policy>`.
    pub durable_prefix: String,
    /// Back-off bounds after a NATS or store failure.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How many deliveries of one event the store's absence may fail (in one process) before
    /// such failures count as attempts: an event that always fails with an error classified
    /// as the store's absence (a fault that only looks like it) then ends as `PolicyFailed`
    /// once the store answers, instead of being retried for ever. With the default retry
    /// delays, about half an hour of outage per event.
    pub max_unavailable_deliveries: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            ack_wait: Duration::from_secs(30),
            fetch_batch: 100,
            lanes: 4,
            lane_batch: 64,
            fetch_expires: Duration::from_secs(1),
            max_ack_pending: 1000,
            durable_prefix: "policy-".to_owned(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_unavailable_deliveries: 100,
        }
    }
}

impl ConsumerOptions {
    /// The durable consumer name of `policy`.
    pub fn durable_name(&self, policy: &str) -> String {
        format!("{}{policy}", self.durable_prefix)
    }

    /// The consumer's configuration. `max_deliver` is unlimited (-1): JetStream never drops a
    /// message; the worker ends one only after recording `PolicyFailed` (the last attempt), so
    /// a database outage, which is retried without counting attempts, loses nothing. (Until
    /// 2026-12-07 it was the attempts plus one, and every delivery failed by an outage of
    /// PostgreSQL counted: after about 30 s, JetStream dropped the messages without a trace.)
    /// The consumer takes `filter_subject` (see [`PolicyHandler::notices`]), or every subject
    /// of the stream if `None` (then `wants` decides).
    ///
    /// A durable that already exists keeps its filter: one created unfiltered by an earlier
    /// version keeps receiving every event, which `wants` still sorts. Its other settings are
    /// brought to these when it is bound ([`Worker::bind`]).
    pub fn consumer_config(
        &self,
        policy: &str,
        filter_subject: Option<String>,
    ) -> consumer::pull::Config {
        let durable = self.durable_name(policy);
        consumer::pull::Config {
            durable_name: Some(durable),
            filter_subject: filter_subject.unwrap_or_default(),
            description: Some(format!("Lifeline policy {policy}")),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

/// Runs one consumer per policy of `handler` until `shutdown`; returns when all have stopped.
pub async fn run_policy_consumers(
    store: EventStore,
    jetstream: jetstream::Context,
    bus: BusConfig,
    options: ConsumerOptions,
    handler: Arc<dyn PolicyHandler>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for policy in handler.policy_names() {
        tasks.spawn(run_policy_consumer(
            store.clone(),
            jetstream.clone(),
            bus.clone(),
            options.clone(),
            Arc::clone(&handler),
            policy.to_owned(),
            shutdown.clone(),
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "a policy consumer task ended abnormally");
        }
    }
}

/// Runs the durable consumer of `policy` until `shutdown`: creates it if missing (and the
/// stream too), pulls batches, handles each message. NATS and store failures are logged and
/// retried with backoff; never returns an error.
pub async fn run_policy_consumer(
    store: EventStore,
    jetstream: jetstream::Context,
    bus: BusConfig,
    options: ConsumerOptions,
    handler: Arc<dyn PolicyHandler>,
    policy: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let ack_wait_ms = millis(options.ack_wait);
    let worker = Arc::new(Worker {
        store,
        handler,
        options,
        policy,
        unavailable: Default::default(),
        held: Default::default(),
        released: tokio::sync::Notify::new(),
        ack_wait_ms: std::sync::atomic::AtomicU64::new(ack_wait_ms),
    });
    tracing::info!(policy = %worker.policy, "policy consumer starting");
    let lanes = Lanes::start(&worker, jetstream.client(), &shutdown);
    let mut backoff = worker.options.min_backoff;
    let mut pull: Option<consumer::PullConsumer> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Nothing is asked of a server not connected (a request would wait for its time-out
        // and stay queued in the client until the connection comes).
        if super::bus::nats_connected(&jetstream).is_err() {
            if sleep_or_shutdown(backoff, &mut shutdown).await {
                break;
            }
            backoff = (backoff * 2).min(worker.options.max_backoff);
            continue;
        }
        let consumer = match &pull {
            Some(consumer) => consumer.clone(),
            None => match worker.bind(&jetstream, &bus).await {
                Ok(consumer) => {
                    let ack_wait = consumer.cached_info().config.ack_wait;
                    worker
                        .ack_wait_ms
                        .store(millis(ack_wait), std::sync::atomic::Ordering::Relaxed);
                    pull = Some(consumer.clone());
                    consumer
                }
                Err(error) => {
                    tracing::warn!(policy = %worker.policy, %error, ?backoff, "cannot bind the consumer; retrying");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(worker.options.max_backoff);
                    continue;
                }
            },
        };
        // Outside tokio's cooperative budget, like the relay's publish loop: every message
        // received, dispatched or acked spends budget, and at a few hundred messages a second
        // the loop ran out of it every ~60 messages and waited at the back of a busy run queue
        // (tens of ms each time) with messages ready. It still yields whenever nothing is ready
        // or a lane is full, and every `PULL_YIELD_EVERY` messages; what it does per message is
        // a parse and a channel send.
        match tokio::task::unconstrained(worker.pull(&jetstream, &consumer, &lanes, &mut shutdown))
            .await
        {
            Ok(()) => backoff = worker.options.min_backoff,
            Err(error) => {
                tracing::warn!(policy = %worker.policy, %error, ?backoff, "pull failed; retrying");
                // The consumer (or its stream) may have been deleted: bind again.
                pull = None;
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(worker.options.max_backoff);
            }
        }
    }
    // Every message already handed to a lane is finished (handled, or nak'd after shutdown).
    lanes.finish().await;
    // Their acks are sent without waiting for the server (`Worker::finish`): written out before
    // the consumer reports that it stopped, so a clean shutdown leaves nothing to redeliver
    // (waiting at most `FLUSH_AT_STOP`: with the server gone, they would come back anyway).
    match tokio::time::timeout(FLUSH_AT_STOP, jetstream.client().flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(policy = %worker.policy, %error, "cannot flush the last acknowledgements; those messages may be redelivered");
        }
        Err(_) => {
            tracing::warn!(policy = %worker.policy, "the last acknowledgements were not flushed in time; those messages may be redelivered");
        }
    }
    tracing::info!(policy = %worker.policy, "policy consumer stopped");
}

/// The longest a worker keeps telling JetStream that a message it holds is in progress
/// ([`Worker::keep_alive`]): a batch is given up or done well within it (a store failure is
/// nak'd), so a message held longer is stuck and is left to be redelivered.
const KEEP_ALIVE_AT_MOST: Duration = Duration::from_secs(600);

/// How long a stopping consumer waits for its last acknowledgements to be written out.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);

/// The longest an acknowledgement, a nak or a `+WPI` waits for room in the client's queue of
/// messages to send (full only while the server is away and it is not connected): such a
/// message is then not sent, and the message it answers comes back after `ack_wait`, where the
/// handler finds its work done. Without the bound a lane, and the shutdown waiting for it,
/// hung until the server came back.
const SEND_AT_MOST: Duration = Duration::from_secs(2);

/// Messages a pull loop handles between two yields of its own (it is exempt from tokio's
/// cooperative budget, which forced one about every 60): a few ms of work at most.
const PULL_YIELD_EVERY: usize = 1024;

/// How long after a pull request's own expiry this process still counts it as outstanding when
/// the server has not ended it (its messages and its end-of-request status travel one
/// connection, in order).
const PULL_GRACE: Duration = Duration::from_millis(250);

/// `duration` in whole milliseconds (saturating).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The subject of a pull request for `consumer`. The contexts come from `jetstream::new`
/// ([`super::bus::connect_nats`] and the tests), whose API prefix is `$JS.API`.
fn next_subject(consumer: &consumer::PullConsumer) -> String {
    let info = consumer.cached_info();
    format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        info.stream_name, info.name
    )
}

/// The pull requests one consumer has outstanding at the server, oldest first, and when to
/// send the next one.
///
/// The consumer keeps one subscription and sends its pull requests with that subscription as
/// their reply subject, so the server's messages arrive in one ordered flow whichever request
/// they answer. A new request goes out when the requests outstanding ask for half a batch or
/// less, and also a quarter of the expiry before the newest one expires: a request is always
/// waiting at the server, even when the server ends one without its end-of-request status
/// (nats-server 2.9 sometimes does). That was W3's stall: one request at a time, and after a
/// request the server had ended silently, nothing was delivered until this process gave it up
/// (async-nats's batch: 5 s; later this consumer: 250 ms past the expiry).
#[derive(Debug)]
struct PullBook {
    batch: usize,
    expires: Duration,
    /// Each outstanding request: when it expires, and how many messages it still asks for.
    /// A message is counted against the oldest (the sum is what matters; which request the
    /// server answered is not known).
    outstanding: std::collections::VecDeque<(tokio::time::Instant, usize)>,
}

/// At most this many requests outstanding: the top-up rules need two or three.
const MAX_OUTSTANDING: usize = 4;

impl PullBook {
    fn new(batch: usize, expires: Duration) -> Self {
        Self {
            batch: batch.max(1),
            expires,
            outstanding: std::collections::VecDeque::new(),
        }
    }

    /// The pull request's payload: `batch` messages, expiring after `expires`.
    fn request(&self) -> Vec<u8> {
        let expires = u64::try_from(self.expires.as_nanos()).unwrap_or(u64::MAX);
        format!("{{\"batch\":{},\"expires\":{expires}}}", self.batch).into_bytes()
    }

    /// How many messages the outstanding requests still ask for.
    fn asked(&self) -> usize {
        self.outstanding.iter().map(|(_, asked)| asked).sum()
    }

    /// Whether a new request should go out at `now` (see the type's documentation).
    fn wants_request(&self, now: tokio::time::Instant) -> bool {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            return false;
        }
        match self.outstanding.back() {
            None => true,
            Some((expires_at, _)) => {
                self.asked() <= self.batch / 2 || *expires_at <= now + self.expires / 4
            }
        }
    }

    /// A request was sent at `now`.
    fn sent(&mut self, now: tokio::time::Instant) {
        self.outstanding.push_back((now + self.expires, self.batch));
    }

    /// A message arrived.
    fn delivered(&mut self) {
        if let Some((_, asked)) = self.outstanding.front_mut() {
            *asked = asked.saturating_sub(1);
            if *asked == 0 {
                self.outstanding.pop_front();
            }
        }
    }

    /// The server ended a request (its 408 at the expiry, or a 409): the oldest, if it is due.
    /// A status for a request this process already gave up on finds a younger request at the
    /// front, not yet near its expiry, and is ignored.
    fn ended(&mut self, now: tokio::time::Instant) {
        if let Some((expires_at, _)) = self.outstanding.front() {
            if *expires_at <= now + PULL_GRACE {
                self.outstanding.pop_front();
            }
        }
    }

    /// Gives up the requests the server should have ended by `now`; returns how many.
    fn expire(&mut self, now: tokio::time::Instant) -> usize {
        let before = self.outstanding.len();
        while let Some((expires_at, _)) = self.outstanding.front() {
            if *expires_at + PULL_GRACE > now {
                break;
            }
            self.outstanding.pop_front();
        }
        before - self.outstanding.len()
    }

    /// When the oldest outstanding request is given up on, if any.
    fn next_give_up(&self) -> Option<tokio::time::Instant> {
        self.outstanding
            .front()
            .map(|(expires_at, _)| *expires_at + PULL_GRACE)
    }

    /// When the book next changes without a message: a request to give up, or to send.
    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let give_up = self
            .outstanding
            .front()
            .map(|(expires_at, _)| *expires_at + PULL_GRACE);
        let renew = self
            .outstanding
            .back()
            .filter(|_| self.outstanding.len() < MAX_OUTSTANDING)
            .map(|(expires_at, _)| {
                expires_at
                    .checked_sub(self.expires / 4)
                    .unwrap_or(*expires_at)
            });
        match (give_up, renew) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The lanes of one consumer: a task each, handling its messages in arrival order.
/// A message and its payload parsed as an [`EventNotice`] (once, to route it).
type Parsed = (jetstream::Message, Result<EventNotice, serde_json::Error>);

struct Lanes {
    senders: Vec<mpsc::UnboundedSender<Parsed>>,
    tasks: tokio::task::JoinSet<()>,
    /// Tells JetStream that the held messages are in progress ([`Worker::keep_alive`]).
    keep_alive: tokio::task::JoinHandle<()>,
    /// How many messages the worker holds before it asks for more: each lane's batch being
    /// handled and as many waiting behind it.
    capacity: usize,
}

impl Lanes {
    fn start(
        worker: &Arc<Worker>,
        client: async_nats::Client,
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        let count = worker.options.lanes.max(1);
        let lane_batch = worker.options.lane_batch.max(1);
        let mut senders = Vec::with_capacity(count);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            // What a lane holds is not yet acked and counts against `max_ack_pending`: the
            // pull asks for more only while the worker holds fewer than `capacity` messages
            // (`Worker::pull`), so the queues stay bounded; every message is held (kept
            // alive, `Worker::keep_alive`) from the moment it is taken from the subscription.
            // (Until the thirty-first session the queues were bounded and the pull waited
            // while one was full: the messages that went on arriving meanwhile sat in the
            // client's buffer, not kept alive.)
            let (sender, mut receiver) = mpsc::unbounded_channel::<Parsed>();
            let (worker, shutdown) = (Arc::clone(worker), shutdown.clone());
            tasks.spawn(async move {
                while let Some(first) = receiver.recv().await {
                    // What queued up behind the first message is handled with it.
                    let mut batch = vec![first];
                    while batch.len() < lane_batch {
                        match receiver.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let replies: Vec<async_nats::Subject> = batch
                        .iter()
                        .filter_map(|(message, _)| message.reply.clone())
                        .collect();
                    if *shutdown.borrow() {
                        // Another process takes them (see `Worker::nak_at_stop`).
                        for (message, _) in &batch {
                            worker.nak_at_stop(message).await;
                        }
                    } else {
                        let handled = futures::FutureExt::catch_unwind(
                            std::panic::AssertUnwindSafe(worker.handle_messages(batch)),
                        )
                        .await;
                        if handled.is_err() {
                            // Its messages are no longer kept alive: they come back after
                            // `ack_wait` (not at once: a panic that repeats would spin).
                            tracing::error!(policy = %worker.policy, count = replies.len(),
                                "a policy lane's batch panicked; its messages will be redelivered");
                        }
                    }
                    worker.release(&replies);
                }
            });
            senders.push(sender);
        }
        let keep_alive = tokio::spawn(Arc::clone(worker).keep_alive(client));
        Self {
            senders,
            tasks,
            keep_alive,
            capacity: count * lane_batch * 2,
        }
    }

    /// Hands `message`, its payload parsed into `notice`, to the lane of its event's stream
    /// (lane 0 if the notice does not parse: the handler terminates it there). False if the
    /// lane has stopped.
    fn dispatch(
        &self,
        message: jetstream::Message,
        notice: Result<EventNotice, serde_json::Error>,
    ) -> bool {
        let lane = match &notice {
            Ok(notice) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&notice.stream_id, &mut hasher);
                let lanes = u64::try_from(self.senders.len()).unwrap_or(1);
                usize::try_from(std::hash::Hasher::finish(&hasher) % lanes).unwrap_or(0)
            }
            Err(_) => 0,
        };
        let Some(sender) = self.senders.get(lane) else {
            return false;
        };
        if sender.send((message, notice)).is_err() {
            tracing::error!("a policy lane has stopped; the message comes back after ack_wait");
            return false;
        }
        true
    }

    async fn finish(self) {
        let Self {
            senders,
            mut tasks,
            keep_alive,
            capacity: _,
        } = self;
        drop(senders);
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "a policy lane ended abnormally");
            }
        }
        keep_alive.abort();
    }
}

struct Worker {
    store: EventStore,
    handler: Arc<dyn PolicyHandler>,
    options: ConsumerOptions,
    policy: String,
    /// The deliveries of each event that failed only because the store was away, in this
    /// process: JetStream's delivery count includes them, the policy's attempts do not.
    unavailable: std::sync::Mutex<HashMap<Uuid, u32>>,
    /// The messages this worker holds (handed to a lane, waiting there or being handled), by
    /// reply subject, with when each was handed over ([`Worker::keep_alive`]).
    held: std::sync::Mutex<BTreeMap<async_nats::Subject, tokio::time::Instant>>,
    /// Wakes a pull loop waiting for the lanes to hold fewer messages.
    released: tokio::sync::Notify,
    /// The bound consumer's `ack_wait` in milliseconds (the durable's, which may not be
    /// `options.ack_wait` if the server would not change it): the keep-alive's period.
    ack_wait_ms: std::sync::atomic::AtomicU64,
}

/// What became of one message.
enum Outcome {
    Done,
    Retry { attempt: u32, error: String },
    GaveUp,
}

/// A failed attempt at a lane's batch: the event it came from (if one), what it said, and
/// whether the store was merely unavailable ([`crate::PolicyError::is_transient`]): then the policy
/// did not get to decide, and it counts as no attempt.
#[derive(Debug, Clone)]
struct Failure {
    index: Option<usize>,
    message: String,
    transient: bool,
}

/// How a batch's run in one transaction ended when it did not commit.
enum Applied {
    Failed(Failure),
    /// A deferred transaction's write found a record moved since it was read: nothing written.
    HeldStreamMoved,
}

impl Failure {
    fn of_store(error: &lifeline_store::StoreError) -> Self {
        Self {
            index: None,
            message: error.to_string(),
            transient: error.is_transient(),
        }
    }
}

impl Worker {
    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<async_nats::Subject, tokio::time::Instant>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `message` as held until [`Worker::release`].
    fn hold(&self, message: &jetstream::Message) {
        if let Some(reply) = &message.reply {
            self.held()
                .insert(reply.clone(), tokio::time::Instant::now());
        }
    }

    /// The messages of `replies` are settled (acked, nak'd or terminated), or left to be
    /// redelivered.
    fn release(&self, replies: &[async_nats::Subject]) {
        {
            let mut held = self.held();
            for reply in replies {
                held.remove(reply);
            }
        }
        self.released.notify_one();
    }

    /// Every third of `ack_wait`, tells JetStream that each message held longer than that is
    /// still in progress (`+WPI`, which restarts its ack wait), until aborted. A message waits
    /// in its lane behind the batch being handled, and a batch can take long (a slow or
    /// saturated database: a connection may take up to sqlx's 30 s acquire time-out, the
    /// default `ack_wait`): without it such messages were redelivered while still held, handled
    /// twice, and the redelivery counted against the event's attempts. A message is settled
    /// (and released) as soon as it is acked or nak'd, and each is checked again just before
    /// its `+WPI`, so that a retry's delay is not replaced by a late one.
    async fn keep_alive(self: Arc<Self>, client: async_nats::Client) {
        loop {
            let ack_wait =
                Duration::from_millis(self.ack_wait_ms.load(std::sync::atomic::Ordering::Relaxed));
            let period = (ack_wait / 3).max(Duration::from_millis(10));
            tokio::time::sleep(period).await;
            let Some(since) = tokio::time::Instant::now().checked_sub(period) else {
                continue;
            };
            let due: Vec<async_nats::Subject> = {
                let mut held = self.held();
                // A message held this long is stuck (its lane ended abnormally): no longer
                // kept, it comes back after `ack_wait`.
                let stuck = since.checked_sub(KEEP_ALIVE_AT_MOST);
                let before = held.len();
                held.retain(|_, held_since| stuck.is_none_or(|stuck| *held_since > stuck));
                if held.len() < before {
                    tracing::warn!(policy = %self.policy, count = before - held.len(), "messages held past the keep-alive limit are left to be redelivered");
                }
                held.iter()
                    .filter(|(_, held_since)| **held_since <= since)
                    .map(|(reply, _)| reply.clone())
                    .collect()
            };
            for reply in due {
                if !self.held().contains_key(&reply) {
                    continue;
                }
                // Not queued while the server is away: they would fill the client's queue.
                if client.connection_state() != async_nats::connection::State::Connected {
                    break;
                }
                let sent =
                    send_at_most(client.publish(reply, bytes::Bytes::from_static(b"+WPI"))).await;
                if let Err(error) = sent {
                    tracing::debug!(policy = %self.policy, %error, "cannot tell JetStream a message is in progress");
                }
            }
        }
    }

    async fn bind(
        &self,
        jetstream: &jetstream::Context,
        bus: &BusConfig,
    ) -> Result<consumer::PullConsumer, RuntimeError> {
        // The relay owns the stream's configuration; a consumer only creates it if missing.
        let stream = jetstream
            .get_or_create_stream(bus.stream_config())
            .await
            .map_err(|error| RuntimeError::nats("get the event stream", error))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.options.durable_name(&self.policy),
                self.options.consumer_config(
                    &self.policy,
                    bus.filter_subject(self.handler.notices(&self.policy)),
                ),
            )
            .await
            .map_err(|error| RuntimeError::nats("create the policy consumer", error))?;
        // A durable created by an earlier version (or with other options) is bound with its
        // settings: bring `max_deliver`, `ack_wait` and `max_ack_pending` to this process's,
        // keeping its filter. An old `max_deliver` would let JetStream drop messages.
        let existing = &consumer.cached_info().config;
        if existing.max_deliver != -1
            || existing.ack_wait != self.options.ack_wait
            || existing.max_ack_pending != self.options.max_ack_pending
        {
            let filter =
                (!existing.filter_subject.is_empty()).then(|| existing.filter_subject.clone());
            tracing::info!(policy = %self.policy, max_deliver = existing.max_deliver,
                "updating the policy consumer's settings");
            match stream
                .create_consumer(self.options.consumer_config(&self.policy, filter))
                .await
            {
                Ok(updated) => return Ok(updated),
                // A setting the server will not change (a durable made by hand, say): bound as
                // it is, loudly; its `max_deliver` may let JetStream drop messages.
                Err(error)
                    if matches!(
                        error.kind(),
                        async_nats::jetstream::stream::ConsumerErrorKind::JetStream(_)
                    ) =>
                {
                    tracing::error!(policy = %self.policy, %error, max_deliver = existing.max_deliver,
                        "cannot update the policy consumer's settings; bound as it is");
                }
                // Not an answer (a time-out after a reconnect): bind again later.
                Err(error) => {
                    return Err(RuntimeError::nats("update the policy consumer", error));
                }
            }
        }
        Ok(consumer)
    }

    /// Pulls until `shutdown` (then returns `Ok`) or a NATS failure: keeps pull requests
    /// outstanding on one subscription ([`PullBook`]) and hands every message to its lane.
    /// After shutdown, no request is sent, and messages still arriving for the outstanding
    /// ones are handed back ([`Worker::nak_at_stop`]: with a delay past those requests) so
    /// another process takes them. Returns an error, for the outer loop to wait and bind again,
    /// as soon as a request is due while the client is not connected.
    async fn pull(
        &self,
        jetstream: &jetstream::Context,
        consumer: &consumer::PullConsumer,
        lanes: &Lanes,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        let client = jetstream.client();
        let subject = next_subject(consumer);
        let inbox = client.new_inbox();
        let mut subscription = client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| RuntimeError::nats("subscribe to the pull inbox", error))?;
        let mut book = PullBook::new(self.options.fetch_batch, self.options.fetch_expires);
        let request = bytes::Bytes::from(book.request());
        let mut stopping = *shutdown.borrow();
        let mut delivered_since_yield = 0_usize;
        loop {
            let now = tokio::time::Instant::now();
            let given_up = book.expire(now);
            if given_up > 0 {
                tracing::debug!(policy = %self.policy, given_up, "pull requests past their expiry without the server's end-of-request status");
            }
            // The lanes hold at most `capacity` messages (waiting or being handled) before
            // more are asked for; what outstanding requests still bring is held too.
            let full = self.held().len() >= lanes.capacity;
            if stopping {
                if book.outstanding.is_empty() {
                    return Ok(());
                }
            } else if !full && book.wants_request(now) {
                // Nothing is asked of a server not connected: the request would wait in the
                // client's queue, and such requests, one every few hundred ms per consumer,
                // filled it within minutes (then every send of the process, acks included,
                // waited for the server, and so did its shutdown). Back to the outer loop,
                // which waits for the connection, and binds again.
                super::bus::nats_connected(jetstream)
                    .map_err(|state| RuntimeError::nats("send a pull request", state))?;
                client
                    .publish_with_reply(subject.clone(), inbox.clone(), request.clone())
                    .await
                    .map_err(|error| RuntimeError::nats("send a pull request", error))?;
                book.sent(now);
                continue;
            }
            // While no request may go out (the lanes full, or stopping), a renewal already due
            // is no reason to wake: the loop would spin until the request is given up on.
            let wake = if full || stopping {
                book.next_give_up()
            } else {
                book.next_wake()
            }
            .unwrap_or(now + self.options.fetch_expires);
            let message = tokio::select! {
                message = subscription.next() => message,
                () = tokio::time::sleep_until(wake) => continue,
                () = self.released.notified(), if full => continue,
                changed = shutdown.changed(), if !stopping => {
                    stopping = changed.is_err() || *shutdown.borrow();
                    continue;
                }
            };
            let Some(message) = message else {
                return Err(RuntimeError::nats(
                    "receive a message",
                    "the pull subscription ended",
                ));
            };
            match message.status {
                None | Some(async_nats::StatusCode::OK) => {}
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => continue,
                Some(async_nats::StatusCode::TIMEOUT) => {
                    book.ended(tokio::time::Instant::now());
                    continue;
                }
                Some(async_nats::StatusCode::REQUEST_TERMINATED)
                    if !message.description.as_deref().is_some_and(|description| {
                        description.contains("Consumer Deleted")
                            || description.starts_with("Exceeded MaxRequest")
                    }) =>
                {
                    book.ended(tokio::time::Instant::now());
                    continue;
                }
                Some(status) => {
                    return Err(RuntimeError::nats(
                        "pull messages",
                        format!(
                            "status {status}: {}",
                            message.description.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
            book.delivered();
            // The loop runs outside tokio's budget (`run_policy_consumer`): in a long catch-up the
            // server may keep the subscription full, so it lets the other tasks of its worker
            // thread run every so often all the same.
            delivered_since_yield += 1;
            if delivered_since_yield >= PULL_YIELD_EVERY {
                delivered_since_yield = 0;
                tokio::task::yield_now().await;
            }
            let message = jetstream::Message {
                message,
                context: jetstream.clone(),
            };
            if stopping {
                self.nak_at_stop(&message).await;
                continue;
            }
            let notice = serde_json::from_slice::<EventNotice>(&message.payload);
            if let Ok(notice) = &notice {
                if !self.handler.wants(&self.policy, &notice.event_type) {
                    // Nothing to do: acknowledged without waiting for the server's
                    // confirmation (an unfiltered consumer gets many of these). A lost ack
                    // only brings the message back after `ack_wait`, to be acknowledged again.
                    if let Err(error) = send_at_most(message.ack()).await {
                        tracing::debug!(policy = %self.policy, %error, "cannot ack an unwanted message");
                    }
                    continue;
                }
            }
            let reply = message.reply.clone();
            self.hold(&message);
            if !lanes.dispatch(message, notice) {
                self.release(reply.as_slice());
            }
        }
    }

    /// Handles the messages a lane took at once, in order. Wanted events go through one
    /// transaction together (one commit instead of one each), then are acked, redeliveries as
    /// well as first deliveries. If that transaction fails, nothing of it stays: the event that
    /// failed counts that as the attempt of its delivery (nak'd with its retry delay, or given
    /// up after the last, as alone), and the others are handled on their own. A batch holding
    /// an unreadable message is handled one by one from the start.
    ///
    /// Until 2026-12-06 only first deliveries went together: once messages were redelivered
    /// (a backlog past `ack_wait`), every batch holding one ran one transaction per message,
    /// a few hundred a second on two cores, so the backlog could not shrink and kept being
    /// redelivered. W3 with an ack wait of 80 ms (`W3_ACK_WAIT_MS`) fell into that state.
    async fn handle_messages(&self, batch: Vec<Parsed>) {
        let together = batch.len() > 1
            && batch.iter().all(|(message, notice)| {
                message.info().is_ok()
                    && matches!(notice, Ok(notice) if self.handler.wants(&self.policy, &notice.event_type))
            });
        if together {
            let notices: Vec<Noticed<'_>> = batch
                .iter()
                .filter_map(|(_, notice)| {
                    notice.as_ref().ok().map(|notice| Noticed {
                        event_id: notice.event_id,
                        stream_id: &notice.stream_id,
                    })
                })
                .collect();
            match self.apply_all(&notices).await {
                Err(failure) if failure.transient && failure.index.is_none() => {
                    // The store is away (the transaction could not begin or commit): no attempt
                    // was made. Every message comes back later. (A transient failure of one
                    // event goes below: only that event counts it.)
                    for (message, notice) in &batch {
                        let delivered = message
                            .info()
                            .map_or(1, |info| u32::try_from(info.delivered).unwrap_or(u32::MAX));
                        if let Ok(notice) = notice {
                            let outcome = self
                                .after_attempt(notice, delivered, Err(failure.clone()))
                                .await;
                            self.conclude(message, notice, outcome).await;
                        }
                    }
                    return;
                }
                Ok(()) => {
                    self.forget_unavailable(batch.iter().filter_map(|(_, notice)| {
                        notice.as_ref().ok().map(|notice| notice.event_id)
                    }));
                    futures::future::join_all(
                        batch
                            .iter()
                            .map(|(message, _)| self.finish(message, AckKind::Ack)),
                    )
                    .await;
                    return;
                }
                Err(failure) => {
                    let failed = failure.index;
                    tracing::debug!(policy = %self.policy, count = batch.len(), error = %failure.message, "a lane's batch failed; handling its messages one by one");
                    for (index, (message, notice)) in batch.into_iter().enumerate() {
                        match notice {
                            // The failing event's attempt for this delivery was the batch's.
                            Ok(notice) if Some(index) == failed => {
                                let delivered = message.info().map_or(1, |info| {
                                    u32::try_from(info.delivered).unwrap_or(u32::MAX)
                                });
                                let outcome = self
                                    .after_attempt(&notice, delivered, Err(failure.clone()))
                                    .await;
                                self.conclude(&message, &notice, outcome).await;
                            }
                            notice => self.handle_message(&message, notice).await,
                        }
                    }
                    return;
                }
            }
        }
        for (message, notice) in batch {
            self.handle_message(&message, notice).await;
        }
    }

    /// Handles `message`, whose payload the lanes have already parsed into `notice`.
    async fn handle_message(
        &self,
        message: &jetstream::Message,
        notice: Result<EventNotice, serde_json::Error>,
    ) {
        let delivered = match message.info() {
            Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Err(error) => {
                tracing::error!(policy = %self.policy, %error, "message without JetStream metadata; terminated");
                self.finish(message, AckKind::Term).await;
                return;
            }
        };
        let notice = match notice {
            Ok(notice) => notice,
            Err(error) => {
                tracing::error!(policy = %self.policy, subject = %message.subject, %error, "malformed event notice; terminated");
                self.finish(message, AckKind::Term).await;
                return;
            }
        };
        if !self.handler.wants(&self.policy, &notice.event_type) {
            self.finish(message, AckKind::Ack).await;
            return;
        }
        let outcome = self.run_policy(&notice, delivered).await;
        self.conclude(message, &notice, outcome).await;
    }

    /// Acks, terminates or naks (with the retry delay) `message` after its policy run.
    async fn conclude(&self, message: &jetstream::Message, notice: &EventNotice, outcome: Outcome) {
        match outcome {
            Outcome::Done => self.finish(message, AckKind::Ack).await,
            Outcome::GaveUp => self.finish(message, AckKind::Term).await,
            Outcome::Retry { attempt, error } => {
                let delay = self.options.retry.delay_after(attempt);
                tracing::warn!(policy = %self.policy, event_id = %notice.event_id, attempt, ?delay, %error, "policy failed; will retry");
                self.release(message.reply.as_slice());
                if let Err(error) = send_at_most(message.ack_with(AckKind::Nak(Some(delay)))).await
                {
                    tracing::warn!(policy = %self.policy, %error, "cannot nak; the message comes back after ack_wait");
                }
            }
        }
    }

    /// Applies the policy; on the last attempt records `PolicyFailed` instead of retrying.
    async fn run_policy(&self, notice: &EventNotice, delivered: u32) -> Outcome {
        let result = self.apply(notice).await;
        self.after_attempt(notice, delivered, result).await
    }

    /// What comes of an attempt: done, a retry, or (after the last attempt) `PolicyFailed`.
    /// A transient failure (the store away) is retried, with the delay of the attempts made so
    /// far (at most the last's), however long it lasts: it is never given up on.
    async fn after_attempt(
        &self,
        notice: &EventNotice,
        delivered: u32,
        result: Result<(), Failure>,
    ) -> Outcome {
        let attempts = self.options.retry.attempts();
        // Past the cap, a failure that looks like the store's absence counts as an attempt
        // only if the store answers now: during a real outage nothing is counted (or given up).
        let past_cap = matches!(&result, Err(failure) if failure.transient)
            && self.unavailable_count(notice.event_id) >= self.options.max_unavailable_deliveries;
        if past_cap && !self.store_answers().await {
            return Outcome::Retry {
                attempt: delivered.min(attempts),
                error: "store unavailable".to_owned(),
            };
        }
        // Decided under the lock, released before any await.
        let decided = {
            let mut unavailable = self
                .unavailable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                Ok(()) => {
                    unavailable.remove(&notice.event_id);
                    Err(Outcome::Done)
                }
                Err(failure) if failure.transient && !past_cap => {
                    *unavailable.entry(notice.event_id).or_insert(0) += 1;
                    Err(Outcome::Retry {
                        attempt: delivered.min(attempts),
                        error: format!("store unavailable: {}", failure.message),
                    })
                }
                Err(failure) => {
                    // The attempts: the deliveries but those the store's absence failed here
                    // (at most `max_unavailable_deliveries` of them).
                    let attempted = delivered
                        .saturating_sub(unavailable.get(&notice.event_id).copied().unwrap_or(0))
                        .max(1);
                    if attempted < attempts {
                        Err(Outcome::Retry {
                            attempt: attempted,
                            error: failure.message,
                        })
                    } else {
                        unavailable.remove(&notice.event_id);
                        Ok(failure.message)
                    }
                }
            }
        };
        let error = match decided {
            Ok(error) => error,
            Err(outcome) => return outcome,
        };
        match self.give_up(notice.event_id, &error, delivered).await {
            Ok(()) => Outcome::GaveUp,
            Err(record_error) => Outcome::Retry {
                attempt: delivered,
                error: format!("{error}; and recording PolicyFailed failed: {record_error}"),
            },
        }
    }

    fn unavailable_count(&self, event_id: Uuid) -> u32 {
        self.unavailable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&event_id)
            .copied()
            .unwrap_or(0)
    }

    fn forget_unavailable(&self, event_ids: impl Iterator<Item = Uuid>) {
        let mut unavailable = self
            .unavailable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for event_id in event_ids {
            unavailable.remove(&event_id);
        }
    }

    /// Whether the store answers a one-row read within a second.
    async fn store_answers(&self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                self.store
                    .read_all_headers(lifeline_model::envelope::LogCursor::START, 1),
            )
            .await,
            Ok(Ok(_))
        )
    }

    async fn apply(&self, notice: &EventNotice) -> Result<(), Failure> {
        self.apply_all(&[Noticed {
            event_id: notice.event_id,
            stream_id: &notice.stream_id,
        }])
        .await
    }

    /// Applies the policy to each noticed event, in order, in one transaction (the handler
    /// reads the events: [`PolicyHandler::apply_notices`]). On failure, nothing stays; the
    /// error comes with the index of the event it came from, if one did.
    ///
    /// A policy whose handler defers its transaction's begin ([`PolicyHandler::defers_begin`])
    /// runs in a deferred transaction (`EventStore::begin_deferred`): its reads take no
    /// transaction id, and its write (usually one statement, its own transaction) holds the
    /// records it read. A record that moved in between fails that write, nothing written, and
    /// the batch runs again at once in a plain transaction that holds its records as it reads
    /// them.
    async fn apply_all(&self, notices: &[Noticed<'_>]) -> Result<(), Failure> {
        if self.handler.defers_begin(&self.policy) {
            match self.apply_all_in(notices, true).await {
                Err(Applied::HeldStreamMoved) => {
                    tracing::debug!(policy = %self.policy, count = notices.len(), "a record moved after its read: the batch runs again, held");
                }
                Err(Applied::Failed(failure)) => return Err(failure),
                Ok(()) => return Ok(()),
            }
        }
        self.apply_all_in(notices, false)
            .await
            .map_err(|applied| match applied {
                Applied::Failed(failure) => failure,
                Applied::HeldStreamMoved => Failure::of_store(&StoreError::HeldStreamMoved),
            })
    }

    /// [`Self::apply_all`] in a transaction begun at once, or (`deferred`) at its first write.
    async fn apply_all_in(&self, notices: &[Noticed<'_>], deferred: bool) -> Result<(), Applied> {
        let begun = if deferred {
            self.store.begin_deferred().await
        } else {
            self.store.begin().await
        };
        let mut tx = begun.map_err(|error| Applied::Failed(Failure::of_store(&error)))?;
        // A handler that panics fails like one that errs (its transaction rolled back): the
        // batch is handled one by one, and an event that panics on its own counts attempts
        // and ends as `PolicyFailed`. (A panic caught only by the lane left the whole batch
        // to come back together, and panic again, for ever.)
        let applied = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            self.handler.apply_notices(&self.policy, &mut tx, notices),
        ))
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the policy handler panicked".to_owned());
            tracing::error!(policy = %self.policy, count = notices.len(), %message, "a policy handler panicked");
            Err((
                None,
                crate::PolicyError::Refused {
                    policy: self.policy.clone(),
                    event_id: notices.first().map_or(Uuid::nil(), |notice| notice.event_id),
                    message: format!("the policy handler panicked: {message}"),
                },
            ))
        });
        applied.map_err(|(index, error)| {
            if deferred && error.is_held_stream_moved() {
                return Applied::HeldStreamMoved;
            }
            Applied::Failed(Failure {
                index,
                message: error.to_string(),
                transient: error.is_transient(),
            })
        })?;
        tx.commit()
            .await
            .map_err(|error| Applied::Failed(Failure::of_store(&error)))
    }

    async fn give_up(
        &self,
        event_id: Uuid,
        error: &str,
        delivered: u32,
    ) -> Result<(), RuntimeError> {
        let event = self.store.event_by_id(event_id).await?;
        let mut tx = self.store.begin().await?;
        record_failure(
            &mut tx,
            &self.policy,
            event_id,
            event.as_ref(),
            error,
            delivered,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Acks or terminates `message`. An ack is sent without waiting for the server's
    /// confirmation (`double_ack` is a request and reply per message: measured at 500 births/s,
    /// plain acks took 12% off nats-server's CPU and about 11 ms off W3's first-task p99): the
    /// policy's effects are committed before it is sent, and a lost ack only brings the message
    /// back after `ack_wait`, where the handler finds its events stored and acks again (nothing
    /// is done twice). A termination waits for the confirmation: it ends the message for good.
    async fn finish(&self, message: &jetstream::Message, kind: AckKind) {
        self.release(message.reply.as_slice());
        let result = match kind {
            AckKind::Ack => send_at_most(message.ack()).await,
            other => send_at_most(message.double_ack_with(other)).await,
        };
        if let Err(error) = result {
            tracing::warn!(policy = %self.policy, %error, "acknowledgement not confirmed; the message may be redelivered");
        }
    }

    /// Hands `message` back at shutdown, for another process (or this one, restarted) to take
    /// after a delay: the pull requests this process has outstanding at the server (it sends
    /// no more once stopping) have expired by then. (Until 2026-12-07 it was nak'd for
    /// immediate redelivery: it went straight back to those requests, was nak'd again, and so
    /// on until they ended, a burst of deliveries that each counted against the event's
    /// attempts.)
    async fn nak_at_stop(&self, message: &jetstream::Message) {
        // Not connected: it comes back after `ack_wait` anyway, and waiting for room in the
        // client's queue would cost every held message its 2 s.
        if super::bus::nats_connected(&message.context).is_err() {
            return;
        }
        let delay = self.options.fetch_expires + PULL_GRACE;
        if let Err(error) = send_at_most(message.ack_with(AckKind::Nak(Some(delay)))).await {
            tracing::debug!(policy = %self.policy, %error, "cannot nak a message at shutdown; it comes back after ack_wait");
        }
    }
}

/// `send`, given up after [`SEND_AT_MOST`] (see there).
async fn send_at_most<E>(
    send: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String>
where
    E: std::fmt::Display,
{
    match tokio::time::timeout(SEND_AT_MOST, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "not sent within {SEND_AT_MOST:?} (the server away, the client's queue full)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_request_goes_out_at_once_and_another_before_it_expires() {
        let mut book = PullBook::new(100, SECOND);
        let start = Instant::now();
        assert!(book.wants_request(start));
        book.sent(start);
        assert!(!book.wants_request(start));
        // Idle: the next request goes out a quarter of the expiry before the first expires,
        // so one is still waiting at the server when the first ends.
        let renew = book.next_wake().unwrap();
        assert_eq!(renew, start + SECOND - SECOND / 4);
        assert!(!book.wants_request(renew - Duration::from_millis(1)));
        assert!(book.wants_request(renew));
        book.sent(renew);
        assert_eq!(book.outstanding.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_server_never_ends_is_given_up_after_the_grace() {
        let mut book = PullBook::new(100, SECOND);
        let start = Instant::now();
        book.sent(start);
        book.sent(start + SECOND - SECOND / 4);
        assert_eq!(book.expire(start + SECOND), 0);
        assert_eq!(book.next_wake(), Some(start + SECOND + PULL_GRACE));
        assert_eq!(book.expire(start + SECOND + PULL_GRACE), 1);
        // The younger request is still counted, and the next one goes out before it expires.
        assert_eq!(book.outstanding.len(), 1);
        assert!(!book.wants_request(start + SECOND + PULL_GRACE));
        assert!(book.wants_request(start + 2 * SECOND - SECOND / 2));
    }

    /// While no request may go out (lanes full, stopping), the loop wakes for the oldest
    /// request's give-up, not for a renewal already due (which woke it at once, again and again).
    #[tokio::test(start_paused = true)]
    async fn with_no_request_to_send_the_next_wake_is_the_give_up() {
        let mut book = PullBook::new(100, SECOND);
        let start = Instant::now();
        book.sent(start);
        let renewal_due = start + SECOND - SECOND / 4;
        assert_eq!(book.next_wake(), Some(renewal_due));
        assert_eq!(book.next_give_up(), Some(start + SECOND + PULL_GRACE));
        assert!(book.next_give_up().unwrap() > renewal_due);
        assert_eq!(PullBook::new(100, SECOND).next_give_up(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_count_against_the_requests_and_half_a_batch_asks_for_more() {
        let mut book = PullBook::new(10, SECOND);
        let start = Instant::now();
        book.sent(start);
        for _ in 0..4 {
            book.delivered();
        }
        assert_eq!(book.asked(), 6);
        assert!(!book.wants_request(start));
        book.delivered();
        assert_eq!(book.asked(), 5);
        assert!(book.wants_request(start));
        book.sent(start);
        for _ in 0..5 {
            book.delivered();
        }
        // The first request is complete; the second asks for all of its batch.
        assert_eq!(book.outstanding.len(), 1);
        assert_eq!(book.asked(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_of_request_status_ends_only_a_request_that_is_due() {
        let mut book = PullBook::new(100, SECOND);
        let start = Instant::now();
        book.sent(start);
        book.sent(start + SECOND - SECOND / 4);
        // The first request's 408, a little after its expiry.
        book.ended(start + SECOND + Duration::from_millis(5));
        assert_eq!(book.outstanding.len(), 1);
        // A late status for a request already given up does not end the younger one.
        book.ended(start + SECOND + Duration::from_millis(10));
        assert_eq!(book.outstanding.len(), 1);
        assert_eq!(book.outstanding[0].0, start + 2 * SECOND - SECOND / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_stay_bounded_when_nothing_arrives() {
        let mut book = PullBook::new(100, SECOND);
        let mut now = Instant::now();
        for _ in 0..50 {
            book.expire(now);
            while book.wants_request(now) {
                book.sent(now);
            }
            assert!(book.outstanding.len() <= 2, "{book:?}");
            assert!(book
                .outstanding
                .iter()
                .any(|(expires_at, _)| *expires_at > now));
            now = book.next_wake().unwrap();
        }
    }

    #[test]
    fn the_request_asks_for_the_batch_and_the_expiry_in_nanoseconds() {
        let book = PullBook::new(100, SECOND);
        let request: serde_json::Value = serde_json::from_slice(&book.request()).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"batch": 100, "expires": 1_000_000_000u64})
        );
    }
}
