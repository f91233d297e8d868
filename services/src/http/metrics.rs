//! Prometheus metrics, hand-rolled and small: HTTP request counts and a latency histogram by
//! route template, method and status; events appended through the API; and a hook
//! ([`Metrics::register_collector`]) through which other parts add their own families to the
//! same `/metrics` page.
//!
//! `lifeline serve` (with the API) registers [`crate::runtime_metrics::RuntimeMetrics`], whose
//! background sampler reads the runtime's figures every 5 s (collectors run on every scrape and
//! must not wait for the database or NATS):
//! - `lifeline_relay_lag_events`, `lifeline_relay_lag_seconds` (with NATS only): committed
//!   events not yet published to JetStream, and seconds since the first of them was recorded
//!   (0 when caught up).
//! - `lifeline_policy_lag_events{policy}`: what each policy still has to process (JetStream: its
//!   durable consumer's pending plus unacknowledged notices, the whole stream if the consumer
//!   does not exist yet; embedded: events after its `policy:<name>` checkpoint).
//! - `lifeline_policy_failures_total{policy}` (counter): `PolicyFailed` events recorded;
//!   `lifeline_policy_failures_open{policy}`: of those, not yet retried successfully.
//! - `lifeline_connector_delivery_failures_open{agency}`: connector deliveries given up on and
//!   not requested again (`lifeline deliveries retry`) nor settled; part `deliveries`.
//! - `lifeline_projection_lag_events{projection}`: events after each projection's checkpoint.
//! - `lifeline_tasks{agency,procedure,state}`: tasks in the inbox by state;
//!   `lifeline_tasks_overdue{agency,procedure}`: open or claimed tasks past their due time.
//! - `lifeline_store_known_hash_appends_total{outcome}` (counter): appends to existing streams
//!   written by a last hash read before, without a lock (`written`), or refused because the
//!   stream had moved (`refused`); counted in the process, not sampled.
//! - `lifeline_metrics_sample_age_seconds{part}`: how old each part's figures are;
//!   `lifeline_metrics_sample_failures_total{part}` (counter): its failed reads. A part that
//!   cannot be read keeps its last figures, so a growing age marks them stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A function that appends whole metric families (with `# HELP`/`# TYPE` lines) to the page.
pub type Collector = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// The process's metrics. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// (route, method, status) -> count.
    requests: BTreeMap<(String, String, u16), u64>,
    /// (route, method) -> histogram.
    latency: BTreeMap<(String, String), Histogram>,
    /// event type -> count.
    events_appended: BTreeMap<String, u64>,
}

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner
            .requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let histogram = inner
            .latency
            .entry((route.to_owned(), method.to_owned()))
            .or_default();
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Counts events appended by API commands, by event type.
    pub fn events_appended(&self, event_type: &str, count: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner
            .events_appended
            .entry(event_type.to_owned())
            .or_default() += count;
    }

    /// Adds a collector run on every scrape (the runtime's lags, failures, tasks by state).
    pub fn register_collector(&self, collector: Collector) {
        self.collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(collector);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut page = Exposition::default();
        {
            let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            page.family(
                "lifeline_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                "counter",
            );
            for ((route, method, status), count) in &inner.requests {
                let status = status.to_string();
                page.sample(
                    "lifeline_http_requests_total",
                    &[("route", route), ("method", method), ("status", &status)],
                    *count as f64,
                );
            }
            page.family(
                "lifeline_http_request_duration_seconds",
                "HTTP request latency, by route template and method.",
                "histogram",
            );
            for ((route, method), histogram) in &inner.latency {
                for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                    let le = bound.to_string();
                    page.sample(
                        "lifeline_http_request_duration_seconds_bucket",
                        &[("route", route), ("method", method), ("le", &le)],
                        count as f64,
                    );
                }
                let labels = [("route", route.as_str()), ("method", method.as_str())];
                page.sample(
                    "lifeline_http_request_duration_seconds_bucket",
                    &[labels[0], labels[1], ("le", "+Inf")],
                    histogram.count as f64,
                );
                page.sample(
                    "lifeline_http_request_duration_seconds_sum",
                    &labels,
                    histogram.sum,
                );
                page.sample(
                    "lifeline_http_request_duration_seconds_count",
                    &labels,
                    histogram.count as f64,
                );
            }
            page.family(
                "lifeline_events_appended_total",
                "Events appended by API commands, by event type.",
                "counter",
            );
            for (event_type, count) in &inner.events_appended {
                page.sample(
                    "lifeline_events_appended_total",
                    &[("event_type", event_type)],
                    *count as f64,
                );
            }
        }
        let collectors = self
            .collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for collector in collectors {
            collector(&mut page);
        }
        page.text
    }
}

/// The text page being written: collectors add families and samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (key, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{key}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}
