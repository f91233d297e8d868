//! W2: record a birth through `POST /v1/births`: the axum app of `lifeline::http::Application`
//! in-process on a real socket (port 0), the PostgreSQL store with group commit (as `lifeline
//! serve` runs it, pool of 10 like `EventStore::connect`), a bearer token from
//! `lifeline::auth::issue_token`, a reqwest client with keep-alive; closed loop per level.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lifeline::auth::{issue_token, Scope, TokenVerifier};
use lifeline::http::{AppState, Application};
use lifeline_model::envelope::Role;
use lifeline_model::values::OfficeCode;
use lifeline_store::EventStore;
use tokio::sync::watch;

use crate::common::{birth_body, checkpoint, Figure, FreshDatabase};

const OPS: usize = 5_000;
const WARM_UP: usize = 200;
/// The PostgreSQL pool `lifeline serve` opens by default.
pub(crate) const SERVE_POOL: u32 = lifeline::serve::DEFAULT_POOL;

pub(crate) const SECRET: &[u8] = b"lifeline-bench-secret-0123456789abcdef";

/// A running in-process API.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) registrar_token: String,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    pub(crate) async fn start(state: AppState) -> anyhow::Result<Self> {
        let application = Application::build("127.0.0.1:0".parse()?, state).await?;
        let base = format!("http://{}", application.address());
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }));
        Ok(Self {
            base,
            registrar_token: registrar_token()?,
            stop,
            server,
        })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await??;
        Ok(())
    }
}

pub(crate) fn verifier() -> anyhow::Result<TokenVerifier> {
    Ok(TokenVerifier::hs256(SECRET)?)
}

pub(crate) fn registrar_token() -> anyhow::Result<String> {
    Ok(issue_token(
        SECRET,
        Role::Registrar,
        Scope::Office(OfficeCode::parse("79-26734")?),
        Duration::from_secs(3600),
    )?)
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?)
}

/// Pre-serialised bodies, so the client spends no time on JSON while timed.
pub(crate) fn bodies(from: usize, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (from..from + count)
        .map(|index| Ok(serde_json::to_vec(&birth_body(index))?))
        .collect()
}

/// Posts one birth; answers the response body (201 expected).
pub(crate) async fn post_birth(
    client: &reqwest::Client,
    api_base: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let response = client
        .post(format!("{api_base}/v1/births"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if status != reqwest::StatusCode::CREATED {
        anyhow::bail!(
            "POST /v1/births answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).context("the 201 body")
}

pub(crate) async fn run(levels: &[usize]) -> anyhow::Result<()> {
    let database = FreshDatabase::create().await?;
    let result = run_on(&database, levels).await;
    database.drop_now().await?;
    result
}

async fn run_on(database: &FreshDatabase, levels: &[usize]) -> anyhow::Result<()> {
    let store: EventStore = database.store(SERVE_POOL).await?.with_group_commit();
    let api = Api::start(AppState::new(store.clone(), verifier()?)).await?;
    let client = client()?;
    let mut offset = 0;
    for &concurrency in levels {
        let warm = Arc::new(bodies(offset, WARM_UP)?);
        offset += WARM_UP;
        let timed = Arc::new(bodies(offset, OPS)?);
        offset += OPS;
        let _ = drive(&client, &api, warm, concurrency).await?;
        checkpoint(&store).await?;
        let started = Instant::now();
        let latencies = drive(&client, &api, timed, concurrency).await?;
        let wall = started.elapsed();
        Figure::new(format!("w2_http_post_births_c{concurrency}"), OPS, wall)
            .latencies(latencies)
            .extra(format!("pool={SERVE_POOL} group_commit=on"))
            .print();
    }
    api.stop().await?;
    store.close().await;
    Ok(())
}

async fn drive(
    client: &reqwest::Client,
    api: &Api,
    bodies: Arc<Vec<Vec<u8>>>,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let base = api.base.clone();
        let token = api.registrar_token.clone();
        let bodies = Arc::clone(&bodies);
        let next = Arc::clone(&next);
        callers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    return Ok::<_, anyhow::Error>(latencies);
                };
                let started = Instant::now();
                post_birth(&client, &base, &token, body.clone()).await?;
                latencies.push(started.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(bodies.len());
    while let Some(joined) = callers.join_next().await {
        all.extend(joined??);
    }
    Ok(all)
}
