//! The HTTP API (axum): registrar, agency, citizen-status and operations routes, the layers
//! every request passes (request id, tracing, metrics, body limit, timeout, one error format),
//! and [`Application`], the server bound to a port with graceful shutdown.
//!
//! # Layout
//! - [`error`]: `ApiError`, the one error body.
//! - [`extract`]: `ApiJson` (bodies), `Principal` (bearer tokens), `RequestContext` (ids).
//! - [`registrar`]: births, deaths, life events, corrections, voids.
//! - [`agency`]: inboxes and the task commands.
//! - [`citizen`]: status by reference.
//! - [`connectors`]: the signed callback of agency systems.
//! - [`audit`]: the auditors' read-only routes (log, streams, timelines, replay, export).
//! - [`access`]: the access log: every read of personal data recorded as `PersonalDataRead`,
//!   and `GET /v1/audit/access-log`.
//! - [`policies`]: operators list and retry policy runs that gave up.
//! - [`ops`]: health, readiness, metrics.
//! - [`metrics`]: the hand-rolled Prometheus registry.
//! - [`openapi`]: the OpenAPI document generated from the route and payload types.

pub mod access;
pub mod agency;
pub mod audit;
pub mod citizen;
pub mod connectors;
pub mod deliveries;
pub mod error;
pub mod extract;
pub mod integrity;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod policies;
pub mod registrar;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::procedure::ProcedureId;
use lifeline_policies::PolicyHandler;
use lifeline_store::EventStore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::TokenVerifier;
use crate::connector::ConnectorsConfig;
use crate::registry::Registry;
use crate::tasks::TaskDesk;
use error::ApiError;
use metrics::Metrics;

/// A readiness check of a dependency (e.g. NATS): `Ok` when reachable, else why not.
pub type ReadinessProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The clock handlers read "now" from (tests pin it).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Limits of the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// The largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// How long a request may take (408 beyond).
    pub request_timeout: Duration,
    /// Requests handled at once (health, readiness and metrics aside); more wait for a turn.
    pub max_in_flight: usize,
    /// How long a request waits for a turn before it is answered 503 `overloaded` with
    /// `Retry-After`: under overload the server sheds load instead of queueing without bound.
    pub queue_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    pub registry: Arc<Registry>,
    pub tasks: Arc<TaskDesk>,
    pub verifier: Arc<TokenVerifier>,
    pub metrics: Arc<Metrics>,
    /// The registry offices known from reference data; `None`: any well-formed office code of a
    /// known province is accepted (the model's own check).
    pub offices: Option<Arc<BTreeSet<String>>>,
    /// The first date of death the rules can decide each follow-up procedure for
    /// (`Parameters::decidable_from`); a death before it may not choose it. Empty: no check.
    pub decidable_from: Arc<BTreeMap<ProcedureId, NaiveDate>>,
    /// Checks `/readyz` requires besides the store's, by name.
    pub readiness: Arc<Vec<(String, ReadinessProbe)>>,
    /// Dependencies `/readyz` reports on without failing for them (NATS for the API: a
    /// registrar's write needs only the store; the relay catches up once NATS is back).
    pub informational: Arc<Vec<(String, ReadinessProbe)>>,
    pub clock: Clock,
    pub settings: HttpSettings,
    /// The agencies that are external systems (their callback secrets); empty: none.
    pub connectors: Arc<ConnectorsConfig>,
    /// The policy engine `POST /v1/operations/policies/retry` re-runs failed policies with;
    /// `None` (tests, a process without it): that route answers 503.
    pub policies: Option<Arc<dyn PolicyHandler>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state over `store`, verifying tokens with `verifier`; the wall clock, no office
    /// list, no extra readiness checks, default limits.
    pub fn new(store: EventStore, verifier: TokenVerifier) -> Self {
        Self {
            registry: Arc::new(Registry::new(store.clone())),
            tasks: Arc::new(TaskDesk::new(store.clone())),
            store,
            verifier: Arc::new(verifier),
            metrics: Arc::new(Metrics::new()),
            offices: None,
            decidable_from: Arc::new(BTreeMap::new()),
            readiness: Arc::new(Vec::new()),
            informational: Arc::new(Vec::new()),
            clock: Arc::new(Utc::now),
            settings: HttpSettings::default(),
            connectors: Arc::new(ConnectorsConfig::default()),
            policies: None,
        }
    }

    /// The policy engine operators retry failed policy runs with.
    #[must_use]
    pub fn with_policy_handler(mut self, handler: Arc<dyn PolicyHandler>) -> Self {
        self.policies = Some(handler);
        self
    }

    /// The agencies that are external systems: their callbacks are accepted.
    #[must_use]
    pub fn with_connectors(mut self, connectors: Arc<ConnectorsConfig>) -> Self {
        self.connectors = connectors;
        self
    }

    /// Only these office codes are known (from routing/reference data).
    #[must_use]
    pub fn with_offices(mut self, offices: impl IntoIterator<Item = String>) -> Self {
        self.offices = Some(Arc::new(offices.into_iter().collect()));
        self
    }

    /// The follow-up procedures a death may choose only from a date on (the rules' parameters
    /// begin then): `Parameters::decidable_from` of each.
    #[must_use]
    pub fn with_decidable_from(
        mut self,
        decidable_from: impl IntoIterator<Item = (ProcedureId, NaiveDate)>,
    ) -> Self {
        self.decidable_from = Arc::new(decidable_from.into_iter().collect());
        self
    }

    /// Adds a readiness check (e.g. `"nats"`).
    #[must_use]
    pub fn with_readiness_probe(mut self, name: &str, probe: ReadinessProbe) -> Self {
        let mut probes: Vec<(String, ReadinessProbe)> = self.readiness.iter().cloned().collect();
        probes.push((name.to_owned(), probe));
        self.readiness = Arc::new(probes);
        self
    }

    /// Adds a dependency `/readyz` reports on (`down: ...` in its checks) without failing.
    #[must_use]
    pub fn with_informational_probe(mut self, name: &str, probe: ReadinessProbe) -> Self {
        let mut probes: Vec<(String, ReadinessProbe)> =
            self.informational.iter().cloned().collect();
        probes.push((name.to_owned(), probe));
        self.informational = Arc::new(probes);
        self
    }

    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Shares a metrics registry (the runtime registers its collectors on the same one).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    #[must_use]
    pub fn with_settings(mut self, settings: HttpSettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Today in Vietnam (+07:00), the date declarations are checked against.
    pub fn today(&self) -> NaiveDate {
        lifeline_model::values::vietnam_date(self.now())
    }
}

/// The whole API as a router, for [`Application`] and for tests (`oneshot`).
pub fn app(state: AppState) -> Router {
    let settings = state.settings;
    let turns = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight.max(1)));
    let api = Router::new()
        .route("/v1/births", post(registrar::record_birth))
        .route("/v1/deaths", post(registrar::record_death))
        .route("/v1/life-events/{id}", get(registrar::get_life_event))
        .route(
            "/v1/life-events/{id}/corrections",
            post(registrar::correct_life_event),
        )
        .route(
            "/v1/life-events/{id}/void",
            post(registrar::void_life_event),
        )
        .route("/v1/agencies/{agency}/tasks", get(agency::list_tasks))
        .route("/v1/tasks/{id}", get(agency::get_task))
        .route("/v1/tasks/{id}/claim", post(agency::claim_task))
        .route("/v1/tasks/{id}/complete", post(agency::complete_task))
        .route("/v1/tasks/{id}/reject", post(agency::reject_task))
        .route(
            "/v1/connectors/{agency}/callback",
            post(connectors::callback),
        )
        .route("/v1/audit/events", get(audit::events))
        .route("/v1/audit/streams/{stream_id}", get(audit::stream))
        .route(
            "/v1/audit/persons/{pin}/timeline",
            get(audit::person_timeline),
        )
        .route("/v1/audit/replay", get(audit::replay))
        .route("/v1/audit/export", get(audit::export))
        .route(
            "/v1/audit/verify",
            get(integrity::verify)
                .post(integrity::verify_anchored)
                .layer(DefaultBodyLimit::max(integrity::VERIFY_BODY_LIMIT)),
        )
        .route("/v1/audit/seals/head", get(integrity::seal_head))
        .route("/v1/audit/proof/{event_id}", get(integrity::proof))
        .route("/v1/audit/access-log", get(access::access_log))
        .route("/v1/operations/policies/failed", get(policies::failed))
        .route("/v1/operations/policies/retry", post(policies::retry))
        .route("/v1/operations/deliveries/failed", get(deliveries::failed))
        .route("/v1/operations/deliveries/retry", post(deliveries::retry))
        .route("/v1/status/{reference}", get(citizen::status))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found);
    api.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(make_span))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(middleware::from_fn_with_state(
                state.clone(),
                record_metrics,
            ))
            .layer(middleware::from_fn(uniform_errors))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                limit_in_flight(Arc::clone(&turns), settings.queue_timeout, request, next)
            }))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                settings.request_timeout,
            ))
            .layer(DefaultBodyLimit::max(settings.body_limit)),
    )
    .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::for_status(StatusCode::NOT_FOUND)
}

fn make_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!(
        "http",
        method = %request.method(),
        route,
        request_id,
        subject = tracing::field::Empty,
    )
}

/// Counts every answer by route template (never the raw path: ids would explode the labels).
async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.metrics.observe_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Lets at most `max_in_flight` requests run at once; the rest wait up to `queue_timeout` for
/// a turn, then get 503 `overloaded` with `Retry-After: 1`. Health, readiness and metrics never
/// wait: an operator must see an overloaded server.
async fn limit_in_flight(
    turns: Arc<tokio::sync::Semaphore>,
    queue_timeout: Duration,
    request: Request,
    next: Next,
) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let turn = match turns.try_acquire() {
        Ok(turn) => turn,
        Err(_) => match tokio::time::timeout(queue_timeout, turns.acquire()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) | Err(_) => {
                let mut response = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is handling as many requests as it can; retry shortly",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        },
    };
    let response = next.run(request).await;
    drop(turn);
    response
}

/// Error responses made outside the handlers (a layer's 408 or 413, axum's 405...) get the
/// API's error body too.
async fn uniform_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value == HeaderValue::from_static("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let mut replaced = ApiError::for_status(status).into_response();
        for (name, value) in response.headers() {
            if name == header::ALLOW {
                replaced.headers_mut().insert(name, value.clone());
            }
        }
        return replaced;
    }
    response
}

/// The API server: a bound listener and the router.
#[derive(Debug)]
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    address: SocketAddr,
}

impl Application {
    /// Binds `address` (port 0: any free port, for tests).
    pub async fn build(address: SocketAddr, state: AppState) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            router: app(state),
            address,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.address, "http api listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Completes on ctrl-c or SIGTERM: the usual `shutdown` for [`Application::run_until_stopped`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
