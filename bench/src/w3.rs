//! W3: end to end at fixed arrival rates (open loop). Births are posted on schedule to the
//! in-process API; the relay (store -> JetStream), the policy workers (the real
//! `PolicyEngine`) and the projection subscribers run in-process under `run_roles` on a
//! JetStream stream of the run's own; the load starts once that stream and every policy's
//! durable consumer exist. A monitor follows the log (gap-free reader, woken like
//! the pipeline's readers) and, every 3 ms while a birth answered awaits one, the inbox rows of
//! the births' life events (looked for by life event, not by the tasks it has read in the log:
//! a row may exist before its `TaskCreated` is readable by a gap-free reader), and a simulated
//! agency completes each birth-registration task as soon as its inbox row exists (through
//! `TaskDesk`).
//!
//! Latencies: `http` from each request's scheduled time to its 201; `first_log` / `first_inbox`
//! from the 201 to the birth-registration `TaskCreated` being readable in the log / its inbox row
//! existing; `second_log` / `second_inbox` from the completion's commit (the agency's own time
//! excluded) to both second-step tasks (residence registration, child health insurance) being in
//! the log / in the inbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use lifeline::registry::Actor;
use lifeline::tasks::TaskDesk;
use lifeline_model::codec::decode_recorded;
use lifeline_model::envelope::{LogCursor, Role};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::task::{TaskCommand, TaskEvent, TaskOutcome};
use lifeline_policies::projections::projection_subscribers;
use lifeline_policies::runtime::{connect_nats, run_roles, Role as RuntimeRole, RuntimeSettings};
use lifeline_policies::PolicyHandler;
use lifeline_store::{EventStore, WakeUps};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::common::{nats_url, Figure, FreshDatabase};
use crate::w2::{bodies, client, post_birth, verifier, Api, SERVE_POOL};

/// How often the monitor reads while it awaits inbox rows (they wake nobody).
const MONITOR_POLL: Duration = Duration::from_millis(3);
/// How long the monitor waits for a wake-up, when it awaits no inbox row, before reading anyway.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Completions the simulated agency runs at once, each on a connection of its own (with fewer
/// connections, or sharing the monitor's, it completed ~150-250 tasks/s here and the second
/// steps of a 500/s run were not all seen within `DRAIN`).
const AGENCY_OFFICERS: usize = 16;

/// The stores of the monitor and of the simulated agency: their own pools (their reads and
/// writes must not queue on the application's pool). The agency's store groups its commits, as
/// the task desk of `lifeline serve` (the agency API) does: an officer's claim or completion
/// shares a transaction with the others committing at that moment. (Until 2026-12-06 each was
/// its own commit, 1,000 a second at 500 births/s: three interleaved pairs put that at about
/// 30 ms of first-task p99.)
pub(crate) struct Observers {
    monitor: EventStore,
    desk: EventStore,
}

impl Observers {
    pub(crate) async fn open(database: &FreshDatabase) -> anyhow::Result<Self> {
        Ok(Self {
            // Sequential scans off on the monitor's connections: its inbox look-up (below) is
            // then prepared once, by the index on `life_event_id`, whatever the table's size.
            monitor: EventStore::connect_postgres(
                database.options().options([("enable_seqscan", "off")]),
                6,
            )
            .await?,
            desk: database
                .store(AGENCY_OFFICERS as u32)
                .await?
                .with_group_commit(),
        })
    }

    pub(crate) async fn close(&self) {
        self.monitor.close().await;
        self.desk.close().await;
    }
}
/// How long, after the last arrival, the chains may take to finish while none advances: the
/// wait goes on as long as chains keep reaching their second step (the simulated agency may
/// still be working through a backlog), up to [`DRAIN_MAX`].
const DRAIN: Duration = Duration::from_secs(30);
/// The longest wait after the last arrival, however the chains advance.
const DRAIN_MAX: Duration = Duration::from_secs(180);
/// Requests in flight beyond this are counted as dropped (the open loop must not exhaust memory).
const MAX_IN_FLIGHT: usize = 4_096;

/// `relay_poll`: the relay's idle poll interval (`None`: `RelayOptions::default()`, what
/// `lifeline serve` runs); another value is an experiment, reported under its own case names.
pub(crate) async fn run(
    rates: &[u32],
    seconds: u64,
    relay_poll: Option<Duration>,
) -> anyhow::Result<()> {
    let database = FreshDatabase::create().await?;
    let result = run_on(&database, rates, seconds, relay_poll).await;
    database.drop_now().await?;
    result
}

async fn run_on(
    database: &FreshDatabase,
    rates: &[u32],
    seconds: u64,
    relay_poll: Option<Duration>,
) -> anyhow::Result<()> {
    let store = database.store(SERVE_POOL).await?.with_group_commit();
    let jetstream = connect_nats(&nats_url())
        .await
        .context("connecting to NATS (start it with deploy/services.sh)")?;
    let run_id = Uuid::new_v4().simple().to_string();
    let mut settings = RuntimeSettings::default();
    settings.bus.stream_name = format!("BENCH_{run_id}");
    settings.bus.subject_prefix = format!("bench.{run_id}");
    // W3_ACK_WAIT_MS=N: the policy consumers' ack wait (default 30 s), for experiments only
    // (a short one makes the server redeliver messages still being handled).
    if let Some(ms) = std::env::var("W3_ACK_WAIT_MS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        settings.consumer.ack_wait = Duration::from_millis(ms);
    }
    // W3_LANES=N: the policy consumers' lanes (default 4), for experiments only.
    if let Some(lanes) = std::env::var("W3_LANES")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        settings.consumer.lanes = lanes;
    }
    let variant = match relay_poll {
        Some(poll) => {
            settings.relay.poll_interval = poll;
            format!("_relaypoll{}ms", poll.as_millis())
        }
        None => String::new(),
    };
    let handler: Arc<dyn PolicyHandler> = Arc::new(lifeline::serve::policy_engine(
        lifeline::serve::load_reference()?,
    ));
    let policies = handler.policy_names();
    let (stop_roles, roles_shutdown) = watch::channel(false);
    let roles = tokio::spawn(run_roles(
        store.clone(),
        Some(jetstream.clone()),
        &[RuntimeRole::Relay, RuntimeRole::Worker],
        handler,
        projection_subscribers(),
        settings.clone(),
        roles_shutdown,
    ));
    let api = Api::start(lifeline::http::AppState::new(store.clone(), verifier()?)).await?;
    let observers = Observers::open(database).await?;
    // The load starts once the pipeline is up (its stream and every policy's durable consumer
    // made), as a `lifeline serve` in service is: the first births do not wait for them.
    pipeline_ready(&jetstream, &settings, &policies).await?;
    let mut offset = 0;
    for &rate in rates {
        let figures = drive_chains(
            &observers,
            &api.base,
            &api.registrar_token,
            rate,
            Duration::from_secs(seconds),
            offset,
            &format!("w3{variant}_r{rate}"),
        )
        .await?;
        offset += rate as usize * seconds as usize;
        for figure in figures {
            figure.print();
        }
    }
    api.stop().await?;
    let _ = stop_roles.send(true);
    let _ = roles.await;
    let _ = jetstream.delete_stream(&settings.bus.stream_name).await;
    observers.close().await;
    store.close().await;
    Ok(())
}

/// Waits (at most 30 s) for the run's JetStream stream and every policy's durable consumer.
async fn pipeline_ready(
    jetstream: &async_nats::jetstream::Context,
    settings: &RuntimeSettings,
    policies: &[&str],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = 0;
        if let Ok(stream) = jetstream.get_stream(&settings.bus.stream_name).await {
            for policy in policies {
                if stream
                    .consumer_info(settings.consumer.durable_name(policy))
                    .await
                    .is_ok()
                {
                    ready += 1;
                }
            }
        }
        if ready == policies.len() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline was not up after 30 s ({ready} of {} consumers)",
            policies.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the monitor learnt about one birth.
#[derive(Default, Clone)]
struct Chain {
    created: Option<Instant>,
    /// When the `BirthRecorded` became readable in the log (for `W3_TRACE`).
    birth_log: Option<Instant>,
    first_task: Option<Uuid>,
    first_log: Option<Instant>,
    first_inbox: Option<Instant>,
    completed: Option<Instant>,
    /// When the completion's `TaskCompleted` became readable in the log (for `W3_TRACE`).
    completed_log: Option<Instant>,
    second_log: Vec<Instant>,
    second_inbox: Vec<Instant>,
    /// The second-step tasks whose inbox rows were seen.
    second_tasks: Vec<Uuid>,
}

impl Chain {
    /// Whether the monitor still awaits an inbox row of this chain: answered, and its first
    /// task not yet in the inbox, or its first task completed and one of its two second steps
    /// not yet in the inbox. (A chain waiting for the simulated agency has no row to look for:
    /// at 500/s over a thousand did, and the monitor asked for each of them every few ms.)
    fn awaits_rows(&self) -> bool {
        self.created.is_some()
            && (self.first_inbox.is_none()
                || (self.completed.is_some() && self.second_inbox.len() < 2))
    }
}

struct Shared {
    chains: HashMap<Uuid, Chain>,
    /// First-step task id -> life event.
    first_tasks: HashMap<Uuid, Uuid>,
    /// The monitor's inbox look-ups, and the life events they asked for in all (`W3_TRACE`).
    inbox_polls: u64,
    inbox_polled_ids: u64,
}

/// Posts births at `rate`/s for `duration` to `api_base` (open loop), follows every chain on
/// `observers` (same database), completes each birth-registration task, and answers the figures.
pub(crate) async fn drive_chains(
    observers: &Observers,
    api_base: &str,
    token: &str,
    rate: u32,
    duration: Duration,
    offset: usize,
    label: &str,
) -> anyhow::Result<Vec<Figure>> {
    let total = rate as usize * duration.as_secs() as usize;
    let prepared = bodies(offset, total)?;
    let shared = Arc::new(Mutex::new(Shared {
        chains: HashMap::new(),
        first_tasks: HashMap::new(),
        inbox_polls: 0,
        inbox_polled_ids: 0,
    }));
    let (stop_monitor, monitor_stop) = watch::channel(false);
    let (to_agency, agency_inbox) = mpsc::unbounded_channel();
    let start_cursor = log_end(&observers.monitor).await?;
    let monitor = tokio::spawn(monitor(
        observers.monitor.clone(),
        start_cursor,
        Arc::clone(&shared),
        to_agency,
        monitor_stop,
    ));
    let agency = tokio::spawn(agency(
        observers.desk.clone(),
        Arc::clone(&shared),
        agency_inbox,
    ));

    let client = client()?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = tokio::task::JoinSet::new();
    let started = Instant::now();
    let started_at = Utc::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut dropped = 0_usize;
    for (index, body) in prepared.into_iter().enumerate() {
        let scheduled = started + interval.mul_f64(index as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let client = client.clone();
        let base = api_base.to_owned();
        let token = token.to_owned();
        let shared = Arc::clone(&shared);
        requests.spawn(async move {
            let answer = post_birth(&client, &base, &token, body).await;
            let answered = Instant::now();
            drop(permit);
            let answer = answer?;
            let life_event_id: Uuid = answer
                .get("life_event_id")
                .and_then(|id| id.as_str())
                .context("201 without life_event_id")?
                .parse()?;
            let mut shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            shared.chains.entry(life_event_id).or_default().created = Some(answered);
            Ok::<_, anyhow::Error>(answered - scheduled)
        });
    }
    let sending = started.elapsed();
    let mut http = Vec::with_capacity(total);
    let mut failed = 0_usize;
    while let Some(joined) = requests.join_next().await {
        match joined? {
            Ok(latency) => http.push(latency),
            Err(error) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("{label}: request failed: {error:#}");
                }
            }
        }
    }
    let answered = started.elapsed();

    // Wait (bounded) for every chain to reach its second step in the inbox: until none has
    // for `DRAIN`, and `DRAIN_MAX` at most. At 1,000/s on a 2-core machine the simulated
    // agency can be more than 30 s behind when the load stops; with a fixed 30 s the chains it
    // had not completed yet were left out of the second step's figures.
    let drain_started = Instant::now();
    let mut deadline = drain_started + DRAIN;
    let mut finished_before = 0_usize;
    loop {
        let (finished, waiting) = {
            let shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let created = shared
                .chains
                .values()
                .filter(|chain| chain.created.is_some());
            let finished = created
                .clone()
                .filter(|chain| chain.second_inbox.len() >= 2)
                .count();
            (finished, created.count() - finished)
        };
        let now = Instant::now();
        if waiting == 0 || now >= deadline {
            break;
        }
        if finished > finished_before {
            finished_before = finished;
            deadline = (now + DRAIN).min(drain_started + DRAIN_MAX);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = Instant::now();
    let _ = stop_monitor.send(true);
    monitor.await??;
    agency.abort();

    let shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut first_log = Vec::new();
    let mut first_inbox = Vec::new();
    let mut second_log = Vec::new();
    let mut second_inbox = Vec::new();
    let since = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(from), Some(to)) => Some(to.saturating_duration_since(from)),
        _ => None,
    };
    for chain in shared
        .chains
        .values()
        .filter(|chain| chain.created.is_some())
    {
        first_log.extend(since(chain.created, chain.first_log));
        first_inbox.extend(since(chain.created, chain.first_inbox));
        if chain.second_log.len() >= 2 {
            second_log.extend(since(
                chain.completed,
                chain.second_log.iter().max().copied(),
            ));
        }
        if chain.second_inbox.len() >= 2 {
            second_inbox.extend(since(
                chain.completed,
                chain.second_inbox.iter().max().copied(),
            ));
        }
    }
    if std::env::var_os("W3_TRACE").is_some() {
        // Steps slower than this are listed one by one (`W3_TRACE_SLOW_MS`, default 1,000).
        let slow = Duration::from_millis(
            std::env::var("W3_TRACE_SLOW_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1_000),
        );
        // Where the slow second steps spent their time (seconds since the first request).
        let at = |instant: Option<Instant>| {
            instant.map_or(-1.0, |instant| (instant - started).as_secs_f64())
        };
        // The first step's stages: 201 -> birth readable -> task readable -> inbox row.
        let chains: Vec<&Chain> = shared.chains.values().collect();
        let count = |reached: fn(&Chain) -> bool| chains.iter().filter(|c| reached(c)).count();
        eprintln!(
            "{label} chains: created {} first in log {} first in inbox {} completed {} \
             completion in log {} second steps in log {} in inbox {}; drained {:.1} s after the last answer",
            count(|c| c.created.is_some()),
            count(|c| c.first_log.is_some()),
            count(|c| c.first_inbox.is_some()),
            count(|c| c.completed.is_some()),
            count(|c| c.completed_log.is_some()),
            count(|c| c.second_log.len() >= 2),
            count(|c| c.second_inbox.len() >= 2),
            (drained - started).as_secs_f64() - answered.as_secs_f64(),
        );
        eprintln!(
            "{label} first step: 201->birth in log {}; birth->task in log {}; task log->inbox {}",
            stage(&chains, |chain| chain.created.zip(chain.birth_log)),
            stage(&chains, |chain| chain.birth_log.zip(chain.first_log)),
            stage(&chains, |chain| chain.first_log.zip(chain.first_inbox)),
        );
        eprintln!(
            "{label} monitor: {} inbox look-ups, {:.1} life events each on average",
            shared.inbox_polls,
            shared.inbox_polled_ids as f64 / shared.inbox_polls.max(1) as f64
        );
        let known = observers.desk.known_hash_appends();
        eprintln!(
            "{label} agency: {} appends by a known hash, {} of them refused (since the desk's store opened)",
            known.written, known.refused
        );
        eprintln!("{label} started at {started_at:?} (times below: seconds after it)");
        for chain in shared.chains.values() {
            if since(chain.created, chain.first_log).is_some_and(|latency| latency > slow) {
                eprintln!(
                    "{label} slow first step: 201 {:.3} birth in-log {:.3} task in-log {:.3}",
                    at(chain.created),
                    at(chain.birth_log),
                    at(chain.first_log)
                );
            }
        }
        for chain in shared.chains.values() {
            let second = chain.second_log.iter().max().copied();
            if since(chain.completed, second).is_some_and(|latency| latency > slow) {
                eprintln!(
                    "{label} slow second step: completed {:.3} in-log {:.3} second-tasks {:.3}",
                    at(chain.completed),
                    at(chain.completed_log),
                    at(second)
                );
            }
        }
    }
    let births = http.len();
    let achieved = births as f64 / sending.as_secs_f64();
    let note = format!(
        "rate={rate} achieved_rate={achieved:.1} sent_s={:.2} answered_s={:.2} dropped={dropped} failed={failed}",
        sending.as_secs_f64(),
        answered.as_secs_f64()
    );
    let figure = |name: &str, latencies: Vec<Duration>| {
        let complete = latencies.len();
        Figure::new(format!("{label}_{name}"), complete, sending)
            .latencies(latencies)
            .extra(format!("{note} of={births}"))
    };
    Ok(vec![
        figure("http_201", http),
        figure("first_task_log", first_log),
        figure("first_task_inbox", first_inbox),
        figure("second_step_log", second_log),
        figure("second_step_inbox", second_inbox),
    ])
}

/// The quantiles, in ms, of the spans `span` answers (for `W3_TRACE`).
fn stage(chains: &[&Chain], span: impl Fn(&Chain) -> Option<(Instant, Instant)>) -> String {
    let mut all: Vec<f64> = chains
        .iter()
        .filter_map(|chain| span(chain))
        .map(|(from, to)| to.saturating_duration_since(from).as_secs_f64() * 1e3)
        .collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((all.len().max(1) - 1) as f64 * q) as usize;
        all.get(index).copied().unwrap_or(-1.0)
    };
    format!(
        "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} (n {})",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        all.len()
    )
}

/// The cursor after the last event now readable: the monitor starts there.
async fn log_end(store: &EventStore) -> anyhow::Result<LogCursor> {
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_all(cursor, 5_000).await?;
        let Some(last) = page.last() else {
            return Ok(cursor);
        };
        cursor = last.cursor();
    }
}

async fn monitor(
    store: EventStore,
    mut cursor: LogCursor,
    shared: Arc<Mutex<Shared>>,
    to_agency: mpsc::UnboundedSender<(Uuid, Uuid)>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = store
        .postgres_pool()
        .context("the bench runs on PostgreSQL")?
        .clone();
    // Woken like the pipeline's own readers (coalesced: not once per append, which under load
    // would be thousands of reads a second taken from the pipeline it measures); inbox rows
    // wake nobody, so while some are awaited it polls every MONITOR_POLL. A latency is seen up
    // to a few milliseconds late, never early.
    let mut wake_ups = WakeUps::new(&store).await;
    let mut awaiting_rows = false;
    // W3_MONITOR_POLL_MS=N: the poll while rows are awaited, for experiments only.
    let poll = std::env::var("W3_MONITOR_POLL_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(MONITOR_POLL, Duration::from_millis);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if awaiting_rows {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        } else if wake_ups.wait(&mut stop, IDLE_POLL).await {
            return Ok(());
        }
        wake_ups.mark_seen();
        loop {
            // Only the task events are decoded: the births' declarations (the largest payloads)
            // are not rendered, sent nor parsed for the monitor (the inbox projection does the same).
            let page = store
                .read_all_with_payloads_of(cursor, 1_000, &["TaskCreated", "TaskCompleted"])
                .await?;
            let now = Instant::now();
            let Some(last) = page.last() else { break };
            cursor = last.cursor();
            let mut shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            for event in page
                .iter()
                .filter(|event| event.event_type == "BirthRecorded")
            {
                let id = event.stream_id.as_str().split_once('-').map(|(_, id)| id);
                if let Some(life_event_id) = id.and_then(|id| id.parse::<Uuid>().ok()) {
                    shared
                        .chains
                        .entry(life_event_id)
                        .or_default()
                        .birth_log
                        .get_or_insert(now);
                }
            }
            for event in page
                .iter()
                .filter(|event| event.event_type == "TaskCompleted")
            {
                if let Ok(TaskEvent::TaskCompleted(completed)) = decode_recorded::<TaskEvent>(event)
                {
                    if let Some(life_event_id) = shared.first_tasks.get(&completed.task_id).copied()
                    {
                        shared
                            .chains
                            .entry(life_event_id)
                            .or_default()
                            .completed_log
                            .get_or_insert(now);
                    }
                }
            }
            for event in page
                .iter()
                .filter(|event| event.event_type == "TaskCreated")
            {
                let Ok(TaskEvent::TaskCreated(created)) = decode_recorded::<TaskEvent>(event)
                else {
                    continue;
                };
                let chain = shared.chains.entry(created.life_event_id).or_default();
                if created.procedure == ProcedureId::BirthRegistration {
                    chain.first_log.get_or_insert(now);
                    chain.first_task = Some(created.task_id);
                    shared
                        .first_tasks
                        .insert(created.task_id, created.life_event_id);
                } else {
                    chain.second_log.push(now);
                }
            }
        }
        // The inbox rows are looked for by life event, not by the tasks read in the log: a row
        // may be there before its `TaskCreated` is readable by a gap-free reader.
        let pending: Vec<Uuid> = {
            let shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            shared
                .chains
                .iter()
                .filter(|(_, chain)| chain.awaits_rows())
                .map(|(life_event_id, _)| *life_event_id)
                .collect()
        };
        awaiting_rows = !pending.is_empty();
        if pending.is_empty() {
            continue;
        }
        // Prepared, with sequential scans off on the monitor's connections (`Observers::open`):
        // its generic plan goes by the index on `life_event_id`. (Until 2026-12-03 it was
        // prepared with them on, and the generic plan made while the table was nearly empty was
        // a sequential scan kept as the table grew; from then until 2026-12-07 it was
        // unprepared, planned with its array at every poll: on a table never analysed, the
        // planner's guess for ~70 keys was a bitmap scan over a third of the table, and the
        // look-up took 2.3 ms of PostgreSQL's time a poll at 500 births/s, the third costliest
        // statement of the run, taken from the pipeline it measures.)
        let found: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT task_id, life_event_id, procedure FROM projection_tasks \
             WHERE life_event_id = ANY($1)",
        )
        .bind(&pending)
        .fetch_all(&pool)
        .await?;
        let now = Instant::now();
        let mut shared = shared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        shared.inbox_polls += 1;
        shared.inbox_polled_ids += pending.len() as u64;
        for (task_id, life_event_id, procedure) in found {
            let chain = shared.chains.entry(life_event_id).or_default();
            if procedure == ProcedureId::BirthRegistration.as_str() {
                if chain.first_inbox.is_none() {
                    chain.first_inbox = Some(now);
                    let _ = to_agency.send((life_event_id, task_id));
                }
            } else if !chain.second_tasks.contains(&task_id) {
                chain.second_tasks.push(task_id);
                chain.second_inbox.push(now);
            }
        }
    }
}

/// The simulated agency: claims and completes each birth-registration task through `TaskDesk`
/// (a few at a time), and records when each completion committed.
async fn agency(
    store: EventStore,
    shared: Arc<Mutex<Shared>>,
    mut inbox: mpsc::UnboundedReceiver<(Uuid, Uuid)>,
) -> anyhow::Result<()> {
    let desk = Arc::new(TaskDesk::new(store));
    let officers = Arc::new(tokio::sync::Semaphore::new(AGENCY_OFFICERS));
    let mut serial = 0_u64;
    while let Some((life_event_id, task_id)) = inbox.recv().await {
        serial += 1;
        let desk = Arc::clone(&desk);
        let shared = Arc::clone(&shared);
        let permit = Arc::clone(&officers).acquire_owned().await?;
        tokio::spawn(async move {
            let result = complete(&desk, task_id, serial).await;
            let completed = Instant::now();
            drop(permit);
            match result {
                Ok(()) => {
                    if let Ok(mut shared) = shared.lock() {
                        shared.chains.entry(life_event_id).or_default().completed = Some(completed);
                    }
                }
                Err(error) => eprintln!("agency: completing task {task_id}: {error:#}"),
            }
        });
    }
    Ok(())
}

async fn complete(desk: &TaskDesk, task_id: Uuid, serial: u64) -> anyhow::Result<()> {
    let task = desk
        .load(task_id)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?
        .context("the task exists")?;
    let office = task
        .state
        .office
        .as_ref()
        .map(|office| office.as_str().to_owned());
    let officer = Actor {
        id: format!("officer@{}", office.as_deref().unwrap_or("-")),
        role: Role::Agency,
        office,
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    let claimed = desk
        .execute_on(
            &officer,
            &task,
            TaskCommand::Claim {
                by: officer.id.clone(),
                at: Utc::now(),
            },
        )
        .await
        .map_err(|error| anyhow::anyhow!("claim: {error}"))?;
    desk.execute_on(
        &officer,
        &claimed,
        TaskCommand::Complete {
            by: officer.id.clone(),
            outcome: TaskOutcome::BirthRegistered {
                certificate_number: format!("KS-BENCH-{serial:08}"),
            },
            at: Utc::now(),
        },
    )
    .await
    .map_err(|error| anyhow::anyhow!("complete: {error}"))?;
    Ok(())
}
