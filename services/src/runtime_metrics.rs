//! The runtime's figures on `/metrics`: the relay's lag, each policy's lag and failures, each
//! projection's lag, and the agency tasks by state and overdue.
//!
//! Scrapes are synchronous ([`crate::http::metrics::Collector`]) and must not wait for the
//! database or NATS, so a sampler ([`RuntimeMetrics::run`]) reads the figures in the background
//! (once at start, then every [`SAMPLE_INTERVAL`]) into a snapshot that the collector renders.
//! Each part (relay, policies, failures, projections, tasks) is read on its own, with a time
//! limit: when one fails (PostgreSQL or NATS away) the sampler logs a warning, keeps that
//! part's last figures and counts the failure; `lifeline_metrics_sample_age_seconds{part}`
//! shows how old the figures are, so stale ones can be told apart. The two failures streams
//! (policies', connectors') are append-only: the sampler keeps what it read of them and reads
//! only what was appended since ([`StreamTail`]; until the thirty-second session every sample
//! read both whole).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeline_model::envelope::{RecordedEvent, StreamId, StreamVersion};
use lifeline_model::procedure::AgencyId;
use lifeline_policies::runtime::failures::failures_stream as policy_failures_stream;
use lifeline_policies::runtime::stats::{LagProbe, PolicyLag};
use lifeline_policies::runtime::{failure_counts_of, FailureCounts};
use lifeline_store::stats::{self as store_stats, TaskCount};
use lifeline_store::{EventStore, StoreError};
use tokio::sync::watch;

use crate::connector::events::failures_stream as delivery_failures_stream;
use crate::connector::failures::open_failure_counts_of;
use crate::http::metrics::{Exposition, Metrics};

/// How often the sampler reads the figures.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one part of a sample may take before it counts as failed.
const PART_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a sample, as named in the `part` label.
const RELAY: &str = "relay";
const POLICIES: &str = "policies";
const FAILURES: &str = "failures";
const DELIVERIES: &str = "deliveries";
const PROJECTIONS: &str = "projections";
const TASKS: &str = "tasks";

/// The sampler and its last figures. Cheap to clone: clones share the snapshot.
#[derive(Clone)]
pub struct RuntimeMetrics {
    store: EventStore,
    probe: LagProbe,
    policies: Arc<[String]>,
    projections: Arc<[String]>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// The policies' failures stream, as read so far.
    policy_failures: Arc<tokio::sync::Mutex<StreamTail>>,
    /// The connectors' failures stream, as read so far.
    delivery_failures: Arc<tokio::sync::Mutex<StreamTail>>,
}

/// An append-only stream's events as read so far: each read asks only for what was appended
/// after the last event it holds.
#[derive(Default)]
struct StreamTail {
    events: Vec<RecordedEvent>,
}

impl StreamTail {
    /// Every event of `stream`, reading only those appended since the last read. Nothing is
    /// kept of a read that fails (or is dropped by the part's time limit).
    async fn read(
        &mut self,
        store: &EventStore,
        stream: &StreamId,
    ) -> Result<&[RecordedEvent], StoreError> {
        let after = self
            .events
            .last()
            .map_or(StreamVersion(0), |event| event.stream_version);
        let appended = store.read_stream_after(stream, after).await?;
        self.events.extend(appended);
        Ok(&self.events)
    }
}

impl std::fmt::Debug for RuntimeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeMetrics")
            .field("probe", &self.probe)
            .field("policies", &self.policies)
            .field("projections", &self.projections)
            .finish_non_exhaustive()
    }
}

/// The relay's figures.
#[derive(Debug, Clone, Copy)]
struct RelayFigures {
    events: u64,
    seconds: f64,
}

/// The last figures of every part.
#[derive(Default)]
struct Snapshot {
    relay: Part<RelayFigures>,
    policies: Part<Vec<PolicyLag>>,
    failures: Part<BTreeMap<String, FailureCounts>>,
    /// Open delivery failures by agency.
    deliveries: Part<BTreeMap<String, u64>>,
    projections: Part<Vec<(String, u64)>>,
    tasks: Part<Vec<TaskCount>>,
}

/// One part's last good figures (and when they were read) and its failures.
struct Part<T> {
    last: Option<(T, Instant)>,
    failures: u64,
    failing: bool,
}

impl<T> Default for Part<T> {
    fn default() -> Self {
        Self {
            last: None,
            failures: 0,
            failing: false,
        }
    }
}

impl<T> Part<T> {
    /// Keeps `result` if it is figures; else counts and logs the failure (a warning when the
    /// part was fine before, then quietly until it recovers) and keeps the last figures.
    fn record(&mut self, part: &'static str, result: Result<T, String>, at: Instant) {
        match result {
            Ok(figures) => {
                if self.failing {
                    tracing::info!(part, "metrics sample recovered");
                }
                self.last = Some((figures, at));
                self.failing = false;
            }
            Err(error) => {
                self.failures += 1;
                if self.failing {
                    tracing::debug!(part, %error, "metrics sample still failing");
                } else {
                    tracing::warn!(part, %error, "metrics sample failed; keeping the last figures");
                }
                self.failing = true;
            }
        }
    }

    fn figures(&self) -> Option<&T> {
        self.last.as_ref().map(|(figures, _)| figures)
    }

    fn read_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|(_, at)| *at)
    }
}

impl RuntimeMetrics {
    /// A sampler of `store` with the policies' and relay's lags read as `probe` says, for the
    /// policies `policies` and the projection subscribers `projections`. Nothing is read until
    /// [`RuntimeMetrics::sample`] or [`RuntimeMetrics::run`].
    pub fn new(
        store: EventStore,
        probe: LagProbe,
        policies: impl IntoIterator<Item = impl Into<String>>,
        projections: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            store,
            probe,
            policies: policies.into_iter().map(Into::into).collect(),
            projections: projections.into_iter().map(Into::into).collect(),
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            policy_failures: Arc::default(),
            delivery_failures: Arc::default(),
        }
    }

    /// Adds the runtime's families to `metrics`' page, rendered from the last sample.
    pub fn register(&self, metrics: &Metrics) {
        let this = self.clone();
        metrics.register_collector(Arc::new(move |page| this.render(page)));
    }

    /// Samples once now, then every `interval`, until `shutdown` turns true (or its sender is
    /// dropped). Never fails: a failed part is logged and its last figures kept.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => break,
                () = self.sample() => {}
            }
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Reads every part now.
    pub async fn sample(&self) {
        self.sample_at(Utc::now()).await;
    }

    /// Reads every part, with `now` as the time the relay's lag in seconds and the overdue
    /// tasks are measured against (tests pin it).
    pub async fn sample_at(&self, now: DateTime<Utc>) {
        let store = &self.store;
        let relay = async {
            let lag = self
                .probe
                .relay_lag(store)
                .await
                .map_err(|error| error.to_string())?;
            Ok(lag.map(|lag| RelayFigures {
                events: lag.events,
                seconds: lag.seconds_behind(now),
            }))
        };
        let policies = async {
            self.probe
                .policy_lags(store, &self.policies)
                .await
                .map_err(|error| error.to_string())
        };
        let failures = async {
            let mut tail = self.policy_failures.lock().await;
            let events = tail
                .read(store, &policy_failures_stream())
                .await
                .map_err(|error| error.to_string())?;
            Ok(failure_counts_of(events))
        };
        let deliveries = async {
            let mut tail = self.delivery_failures.lock().await;
            let events = tail
                .read(store, &delivery_failures_stream())
                .await
                .map_err(|error| error.to_string())?;
            Ok(open_failure_counts_of(events))
        };
        let projections = async {
            let mut lags = Vec::with_capacity(self.projections.len());
            for projection in self.projections.iter() {
                let lag = store_stats::subscriber_lag(store, projection)
                    .await
                    .map_err(|error| error.to_string())?;
                lags.push((projection.clone(), lag.events));
            }
            Ok(lags)
        };
        let tasks = async {
            store_stats::task_counts(store, now)
                .await
                .map_err(|error| error.to_string())
        };
        let (relay, policies, failures, deliveries, projections, tasks) = tokio::join!(
            limited(relay),
            limited(policies),
            limited(failures),
            limited(deliveries),
            limited(projections),
            limited(tasks),
        );
        let at = Instant::now();
        let mut snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        match relay {
            Ok(None) => {}
            Ok(Some(figures)) => snapshot.relay.record(RELAY, Ok(figures), at),
            Err(error) => snapshot.relay.record(RELAY, Err(error), at),
        }
        snapshot.policies.record(POLICIES, policies, at);
        snapshot.failures.record(FAILURES, failures, at);
        snapshot.deliveries.record(DELIVERIES, deliveries, at);
        snapshot.projections.record(PROJECTIONS, projections, at);
        snapshot.tasks.record(TASKS, tasks, at);
    }

    /// Writes the families of the last sample.
    fn render(&self, page: &mut Exposition) {
        let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if self.probe.has_relay() {
            page.family(
                "lifeline_relay_lag_events",
                "Committed events the relay has not yet published to JetStream.",
                "gauge",
            );
            page.family(
                "lifeline_relay_lag_seconds",
                "Seconds since the first event the relay has not yet published was recorded \
                 (0 when caught up).",
                "gauge",
            );
            if let Some(relay) = snapshot.relay.figures() {
                page.sample("lifeline_relay_lag_events", &[], relay.events as f64);
                page.sample("lifeline_relay_lag_seconds", &[], relay.seconds);
            }
        }

        page.family(
            "lifeline_policy_lag_events",
            "Events (embedded) or notices (JetStream: pending plus unacknowledged) a policy \
             still has to process, by policy.",
            "gauge",
        );
        for lag in snapshot.policies.figures().into_iter().flatten() {
            page.sample(
                "lifeline_policy_lag_events",
                &[("policy", &lag.policy)],
                lag.pending as f64,
            );
        }

        if let Some(deliveries) = snapshot.deliveries.figures() {
            page.family(
                "lifeline_connector_delivery_failures_open",
                "Connector deliveries given up on and not requested again (lifeline deliveries \
                 retry), by agency.",
                "gauge",
            );
            for agency in AgencyId::ALL {
                page.sample(
                    "lifeline_connector_delivery_failures_open",
                    &[("agency", agency.as_str())],
                    deliveries.get(agency.as_str()).copied().unwrap_or(0) as f64,
                );
            }
        }
        if let Some(failures) = snapshot.failures.figures() {
            let policies: BTreeSet<&str> = self
                .policies
                .iter()
                .map(String::as_str)
                .chain(failures.keys().map(String::as_str))
                .collect();
            let counts = |policy: &str| failures.get(policy).copied().unwrap_or_default();
            page.family(
                "lifeline_policy_failures_total",
                "PolicyFailed events recorded (runs given up after every attempt), by policy.",
                "counter",
            );
            for policy in &policies {
                page.sample(
                    "lifeline_policy_failures_total",
                    &[("policy", policy)],
                    counts(policy).recorded as f64,
                );
            }
            page.family(
                "lifeline_policy_failures_open",
                "Failed policy runs not yet retried successfully (lifeline policies retry), by \
                 policy.",
                "gauge",
            );
            for policy in &policies {
                page.sample(
                    "lifeline_policy_failures_open",
                    &[("policy", policy)],
                    counts(policy).open as f64,
                );
            }
        }

        page.family(
            "lifeline_projection_lag_events",
            "Events a projection (inbox, person registry, life-event status) has not yet \
             folded, by projection.",
            "gauge",
        );
        for (projection, events) in snapshot.projections.figures().into_iter().flatten() {
            page.sample(
                "lifeline_projection_lag_events",
                &[("projection", projection)],
                *events as f64,
            );
        }

        if let Some(tasks) = snapshot.tasks.figures() {
            page.family(
                "lifeline_tasks",
                "Agency tasks in the inbox, by agency, procedure and state.",
                "gauge",
            );
            let mut overdue: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for count in tasks {
                page.sample(
                    "lifeline_tasks",
                    &[
                        ("agency", &count.agency),
                        ("procedure", &count.procedure),
                        ("state", &count.state),
                    ],
                    count.tasks as f64,
                );
                *overdue
                    .entry((&count.agency, &count.procedure))
                    .or_default() += count.overdue;
            }
            page.family(
                "lifeline_tasks_overdue",
                "Open or claimed agency tasks past their due time, by agency and procedure.",
                "gauge",
            );
            for ((agency, procedure), count) in overdue {
                page.sample(
                    "lifeline_tasks_overdue",
                    &[("agency", agency), ("procedure", procedure)],
                    count as f64,
                );
            }
        }

        let parts: [(&str, bool, Option<Instant>, u64); 6] = [
            (
                RELAY,
                self.probe.has_relay(),
                snapshot.relay.read_at(),
                snapshot.relay.failures,
            ),
            (
                POLICIES,
                true,
                snapshot.policies.read_at(),
                snapshot.policies.failures,
            ),
            (
                FAILURES,
                true,
                snapshot.failures.read_at(),
                snapshot.failures.failures,
            ),
            (
                DELIVERIES,
                true,
                snapshot.deliveries.read_at(),
                snapshot.deliveries.failures,
            ),
            (
                PROJECTIONS,
                true,
                snapshot.projections.read_at(),
                snapshot.projections.failures,
            ),
            (
                TASKS,
                true,
                snapshot.tasks.read_at(),
                snapshot.tasks.failures,
            ),
        ];
        page.family(
            "lifeline_metrics_sample_age_seconds",
            "Seconds since the figures of a part (relay, policies, failures, deliveries, \
             projections, tasks) were last read successfully; absent until they first are.",
            "gauge",
        );
        for (part, applies, read_at, _) in &parts {
            if let (true, Some(at)) = (applies, read_at) {
                page.sample(
                    "lifeline_metrics_sample_age_seconds",
                    &[("part", part)],
                    at.elapsed().as_secs_f64(),
                );
            }
        }
        page.family(
            "lifeline_metrics_sample_failures_total",
            "Failed reads of a part's figures (database or NATS unavailable or too slow); its \
             last figures are kept.",
            "counter",
        );
        for (part, applies, _, failures) in &parts {
            if *applies {
                page.sample(
                    "lifeline_metrics_sample_failures_total",
                    &[("part", part)],
                    *failures as f64,
                );
            }
        }
        // Counted in this process, not sampled: always current.
        let known = self.store.known_hash_appends();
        page.family(
            "lifeline_store_known_hash_appends_total",
            "Appends to existing streams written by the last hash this process had read, without \
             locking the stream (outcome=written), or refused because the stream had moved \
             meanwhile, then decided the careful way (outcome=refused). PostgreSQL only.",
            "counter",
        );
        page.sample(
            "lifeline_store_known_hash_appends_total",
            &[("outcome", "written")],
            known.written as f64,
        );
        page.sample(
            "lifeline_store_known_hash_appends_total",
            &[("outcome", "refused")],
            known.refused as f64,
        );
    }
}

/// Runs one part of a sample with [`PART_TIMEOUT`].
async fn limited<T>(part: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(PART_TIMEOUT, part)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PART_TIMEOUT:?}")))
}
