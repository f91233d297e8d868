//! The relay: reads the store's gap-free global log from its checkpoint and publishes a thin
//! [`EventNotice`] per event to JetStream; the checkpoint moves only after JetStream
//! acknowledged every message of the batch.
//!
//! When caught up it sleeps until an append wakes it (`lifeline_store::WakeUps`), or the poll
//! interval passes.
//!
//! A crash anywhere republishes at most the last batch: JetStream drops it within the
//! duplicate window (`Nats-Msg-Id` = event id), and consumers are idempotent past it. When NATS
//! is away, publishes fail (the client reconnects by itself) and the relay backs off and resumes
//! from its checkpoint, after checking that the stream still holds what it published
//! ([`Relay::reconcile`]: a server that lost notices, or a stream made again, is republished).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use lifeline_model::envelope::{EventHeader, LogCursor};
use lifeline_store::{EventStore, WakeUps};
use tokio::sync::watch;

use super::bus::{BusConfig, EventNotice};
use super::{sleep_or_shutdown, RuntimeError};

/// The largest batch the relay publishes before awaiting the acknowledgements.
const MAX_BATCH: usize = 1000;

/// How the relay reads, waits and backs off.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The relay's checkpoint name in the store.
    pub checkpoint: String,
    /// Events published (pipelined) per batch, at most 1000; the checkpoint moves once per
    /// batch.
    pub batch_size: usize,
    /// How long to wait, when caught up, before reading again if no append wakes the relay
    /// first (this process's appends, and on PostgreSQL every process's `NOTIFY`).
    pub poll_interval: Duration,
    /// How long to wait for each publish acknowledgement.
    pub ack_timeout: Duration,
    /// First and longest back-off after a failure.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often a caught-up relay looks at the stream's state (a stream made again by someone
    /// else, or a server that lost notices while nothing was published). A new connection to
    /// the server has it looked at at once, whatever this is.
    pub stream_check_interval: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            checkpoint: "relay".to_owned(),
            batch_size: 500,
            poll_interval: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stream_check_interval: Duration::from_secs(5),
        }
    }
}

/// What the relay knows of the stream it publishes to: when it was made, the sequence of the
/// last notice it acknowledged, and the sequence before which a loss was seen (acks that went
/// back: a server that came back without its last notices).
#[derive(Debug, Default)]
struct StreamWatch {
    created: Option<String>,
    last_acked: u64,
    lost_after: Option<u64>,
}

/// Publishes the store's log to JetStream.
#[derive(Debug, Clone)]
pub struct Relay {
    store: EventStore,
    jetstream: jetstream::Context,
    bus: BusConfig,
    options: RelayOptions,
    watch: std::sync::Arc<std::sync::Mutex<StreamWatch>>,
}

impl Relay {
    pub fn new(
        store: EventStore,
        jetstream: jetstream::Context,
        bus: BusConfig,
        options: RelayOptions,
    ) -> Self {
        Self {
            store,
            jetstream,
            bus,
            options,
            watch: Default::default(),
        }
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, StreamWatch> {
        self.watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the stream was made again (by a consumer, an operator) or holds fewer notices
    /// than the relay had acknowledged, since the relay last made sure of it.
    async fn stream_changed(&self) -> bool {
        let Ok(stream) = self.jetstream.get_stream(&self.bus.stream_name).await else {
            return false; // a failing publish will tell
        };
        let info = stream.cached_info();
        let watch = self.watch();
        watch.created.as_deref() != Some(format!("{:?}", info.created).as_str())
            || info.state.last_sequence < watch.last_acked
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): makes sure the stream
    /// exists, then relays batch after batch; on any failure logs it, backs off (doubling up to
    /// `max_backoff`) and resumes from the stored checkpoint. Never returns an error.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.options.min_backoff;
        let mut stream_ready = false;
        let mut cursor: Option<LogCursor> = None;
        let mut wake_ups = WakeUps::new(&self.store).await;
        // The connections made so far: a new one (the server came back, maybe without the
        // last notices it had acknowledged) has the stream checked again, even if no publish
        // failed meanwhile (a caught-up relay publishes nothing).
        let statistics = self.jetstream.client().statistics();
        let mut connects = statistics.connects.load(Ordering::Relaxed);
        let mut checked = tokio::time::Instant::now();
        tracing::info!(checkpoint = %self.options.checkpoint, stream = %self.bus.stream_name, "relay starting");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now_connects = statistics.connects.load(Ordering::Relaxed);
            if now_connects != connects {
                connects = now_connects;
                stream_ready = false;
            }
            // Nothing is asked of a server not connected (each request would wait for its
            // time-out and stay queued in the client): the relay waits for the connection.
            if super::bus::nats_connected(&self.jetstream).is_err() {
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(self.options.max_backoff);
                continue;
            }
            if stream_ready && checked.elapsed() >= self.options.stream_check_interval {
                checked = tokio::time::Instant::now();
                if self.stream_changed().await {
                    stream_ready = false;
                }
            }
            wake_ups.mark_seen();
            let step = async {
                if !stream_ready {
                    self.bus.ensure_stream(&self.jetstream).await?;
                    if self.reconcile().await? {
                        cursor = None;
                    }
                    stream_ready = true;
                }
                let from = match cursor {
                    Some(cursor) => cursor,
                    None => self.store.load_checkpoint(&self.options.checkpoint).await?,
                };
                let published = self.publish_batch(from).await?;
                Ok::<_, RuntimeError>((from, published))
            }
            .await;
            match step {
                Ok((from, None)) => {
                    cursor = Some(from);
                    backoff = self.options.min_backoff;
                    if wake_ups
                        .wait(&mut shutdown, self.options.poll_interval)
                        .await
                    {
                        break;
                    }
                }
                Ok((_, Some((next, full)))) => {
                    cursor = Some(next);
                    backoff = self.options.min_backoff;
                    // A batch smaller than asked for was all there was: wait for the next
                    // append instead of reading again at once to find nothing.
                    if !full
                        && wake_ups
                            .wait(&mut shutdown, self.options.poll_interval)
                            .await
                    {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "relay failed; retrying from its checkpoint");
                    cursor = None;
                    if matches!(error, RuntimeError::Nats { .. }) {
                        // The stream may be gone (deleted, or a server that lost its store).
                        stream_ready = false;
                    }
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
        tracing::info!(checkpoint = %self.options.checkpoint, "relay stopped");
    }

    /// Brings the checkpoint back to what the stream holds, if it holds less than the
    /// checkpoint says was published: a server that lost its store, or the last notices it
    /// acknowledged before writing them to disk (JetStream 2.9 acknowledges before the fsync),
    /// or a stream deleted and made again empty. The relay then goes back to the stream's last
    /// notice and republishes what is missing; JetStream drops duplicates within its window,
    /// and the consumers find work past it done. A stream that holds no notice at all is
    /// republished from the first event recorded within twice its age limit ([`Self::window_start`]),
    /// not from the start of the log. Answers whether it moved the checkpoint. Run whenever the
    /// relay (re)makes sure of the stream: at start and after every NATS failure. (Until
    /// 2026-12-07 such notices were lost for good: the checkpoint had moved past them.)
    pub async fn reconcile(&self) -> Result<bool, RuntimeError> {
        let stream = self
            .jetstream
            .get_stream(&self.bus.stream_name)
            .await
            .map_err(|error| RuntimeError::nats("read the event stream's state", error))?;
        let info = stream.cached_info();
        let last_sequence = info.state.last_sequence;
        let created = format!("{:?}", info.created);
        // After acks that went back, the notice before the first of them: what the server kept.
        let lost_after = self.watch().lost_after;
        let checkpoint = self.store.load_checkpoint(&self.options.checkpoint).await?;
        let moved = if checkpoint == LogCursor::START {
            false
        } else {
            let probe =
                lost_after.map_or(last_sequence, |lost_after| lost_after.min(last_sequence));
            let held = if probe == 0 {
                self.window_start(info.config.max_age).await?
            } else {
                self.held_up_to(&stream, probe).await?
            };
            match held {
                Some(held) if held < checkpoint => {
                    tracing::error!(?checkpoint, stream_holds_up_to = ?held, stream = %self.bus.stream_name,
                        "the event stream holds less than the relay published (a NATS server lost \
                         notices, or the stream was made again): republishing the rest");
                    self.store
                        .save_checkpoint(&self.options.checkpoint, held)
                        .await?;
                    true
                }
                _ => false,
            }
        };
        // Only once everything was read (and saved): a failure above leaves the marks for the
        // next try.
        let mut watch = self.watch();
        watch.created = Some(created);
        watch.last_acked = last_sequence;
        watch.lost_after = None;
        Ok(moved)
    }

    /// Where to republish from into a stream that holds no notice (made again, or a server that
    /// lost its store): just before the first event recorded within twice the stream's age
    /// limit `max_age` (the start of the log without a limit). A healthy stream holds the
    /// notices published within `max_age`; the second `max_age` covers a relay that published
    /// up to `max_age` late. Not republished: an older event whose notice a consumer had not
    /// taken when the stream was lost, which only a relay more than `max_age` behind can have
    /// published recently (with the default of 30 days, an outage of its own). (Until 2026-12-07
    /// every event of the log was republished: on a long log, hours of notices every consumer
    /// found done, with the new events' notices behind them.) `None` when no event was recorded
    /// within that time: nothing to republish.
    async fn window_start(&self, max_age: Duration) -> Result<Option<LogCursor>, RuntimeError> {
        if max_age.is_zero() {
            return Ok(Some(LogCursor::START));
        }
        let window =
            chrono::Duration::from_std(max_age.saturating_mul(2)).unwrap_or(chrono::Duration::MAX);
        let since = chrono::Utc::now()
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let Some(first) = self.store.first_recorded_since(since).await? else {
            tracing::warn!(stream = %self.bus.stream_name, %since,
                "the event stream holds no notice and no event was recorded since: nothing to republish");
            return Ok(None);
        };
        tracing::warn!(stream = %self.bus.stream_name, %since,
            "the event stream holds no notice: republishing the events recorded since, not the older ones");
        // Just before it: `(transaction_id, global_position - 1)` sorts after every event of an
        // earlier transaction and before every later event of its own.
        Ok(Some(LogCursor {
            transaction_id: first.transaction_id,
            global_position: first.global_position - 1,
        }))
    }

    /// The cursor of the event whose notice is at `sequence` (the start of the log for 0);
    /// `None` if that notice is gone (aged out, deleted) or names no event of this store.
    async fn held_up_to(
        &self,
        stream: &jetstream::stream::Stream,
        sequence: u64,
    ) -> Result<Option<LogCursor>, RuntimeError> {
        if sequence == 0 {
            return Ok(Some(LogCursor::START));
        }
        match stream.get_raw_message(sequence).await {
            Ok(message) => {
                let event_id = message
                    .headers
                    .get("Nats-Msg-Id")
                    .and_then(|id| uuid::Uuid::parse_str(id.as_str()).ok());
                let cursor = match event_id {
                    Some(event_id) => self
                        .store
                        .event_by_id(event_id)
                        .await?
                        .map(|event| event.cursor()),
                    None => None,
                };
                if cursor.is_none() {
                    tracing::warn!(sequence, stream = %self.bus.stream_name,
                        "the stream's notice names no event of this store; not compared");
                }
                Ok(cursor)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                tracing::debug!(%error, sequence, "the stream's notice is gone");
                Ok(None)
            }
            Err(error) => Err(RuntimeError::nats("read the stream's last notice", error)),
        }
    }

    /// Publishes one batch after `from` and, once every message is acknowledged, saves the
    /// checkpoint. Answers the new cursor, or `None` if there was nothing to publish.
    pub async fn relay_batch(&self, from: LogCursor) -> Result<Option<LogCursor>, RuntimeError> {
        Ok(self.publish_batch(from).await?.map(|(next, _)| next))
    }

    /// [`Relay::relay_batch`], also answering whether the batch was full (more may be there).
    async fn publish_batch(
        &self,
        from: LogCursor,
    ) -> Result<Option<(LogCursor, bool)>, RuntimeError> {
        // Every publish of a batch holds one of the JetStream context's in-flight permits
        // (5000 by default) until its ack is awaited: a batch must stay well below that.
        let batch_size = self.options.batch_size.clamp(1, MAX_BATCH);
        // The notices carry no payload: the relay reads none.
        let batch = self.store.read_all_headers(from, batch_size).await?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let next = last.cursor();
        let full = batch.len() >= batch_size;
        // Both loops run outside tokio's cooperative budget: each publish and each ready ack
        // spends budget, and a task out of budget is sent to the back of the run queue. On a
        // busy process (the API, the lanes and the projections on two cores) every such yield
        // cost the relay 20-70 ms, about 7 of them per 500-event batch: the relay fell
        // behind the log at 500 births/s and never caught up (bench/HISTORY.md, W5). The loops
        // are bounded by the batch (at most 1000 steps of microseconds each), and still wait
        // whenever the client's queue is full or an ack has not come: they yield then.
        let duplicates = tokio::task::unconstrained(async {
            let mut acks = Vec::with_capacity(batch.len());
            for event in &batch {
                acks.push((event, self.publish(event).await?));
            }
            let mut duplicates = 0_usize;
            for (event, ack) in acks {
                let ack = tokio::time::timeout(self.options.ack_timeout, ack)
                    .await
                    .map_err(|elapsed| {
                        RuntimeError::nats("get a publish acknowledgement", elapsed)
                    })?
                    .map_err(|error| RuntimeError::nats("publish an event notice", error))?;
                if ack.duplicate {
                    duplicates += 1;
                    tracing::debug!(event_id = %event.event_id, "notice was already on the stream");
                    continue;
                }
                // A new notice at a sequence not after the last one acknowledged: the server
                // came back without its last notices. Not saved: the stream is checked again
                // from the notice before this one ([`Relay::reconcile`]).
                let mut watch = self.watch();
                if ack.sequence <= watch.last_acked {
                    let lost_after = ack.sequence.saturating_sub(1);
                    watch.lost_after = Some(
                        watch
                            .lost_after
                            .map_or(lost_after, |seen| seen.min(lost_after)),
                    );
                    return Err(RuntimeError::nats(
                        "publish an event notice",
                        format!(
                            "the stream's sequence went back from {} to {}: notices were lost",
                            watch.last_acked, ack.sequence
                        ),
                    ));
                }
                watch.last_acked = ack.sequence;
            }
            Ok::<_, RuntimeError>(duplicates)
        })
        .await?;
        self.store
            .save_checkpoint(&self.options.checkpoint, next)
            .await?;
        tracing::debug!(
            published = batch.len(),
            duplicates,
            ?next,
            "relayed a batch"
        );
        Ok(Some((next, full)))
    }

    async fn publish(&self, event: &EventHeader) -> Result<PublishAckFuture, RuntimeError> {
        let payload = serde_json::to_vec(&EventNotice::of(event)).map_err(RuntimeError::Encode)?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
        self.jetstream
            .publish_with_headers(self.bus.subject_for(event), headers, Bytes::from(payload))
            .await
            .map_err(|error| RuntimeError::nats("publish an event notice", error))
    }
}
