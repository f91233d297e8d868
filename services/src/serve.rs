//! `lifeline serve`: assembles the roles of one process (HTTP API, relay, policy workers,
//! projections, overdue watcher, connectors) from the configuration and runs them until SIGTERM
//! or ctrl-c.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use lifeline_model::procedure::ProcedureId;
use lifeline_policies::engine::PolicyEngine;
use lifeline_policies::handler::PolicyHandler;
use lifeline_policies::identity::StoreAllocator;
use lifeline_policies::projections::{projection_subscribers, PROJECTION_NAMES};
use lifeline_policies::reference::ReferenceData;
use lifeline_policies::runtime::bus::{connect_nats_in_background, nats_connected};
use lifeline_policies::runtime::roles::{run_roles, Role as RuntimeRole, RuntimeSettings};
use lifeline_policies::runtime::stats::LagProbe;
use lifeline_policies::watcher::{run_overdue_watcher, SystemClock};
use lifeline_store::{BackendKind, EventStore};
use tokio::sync::watch;

use crate::auth::TokenVerifier;
use crate::config::{redact_url, Config};
use crate::connector::{ConnectorsConfig, DeliveryWorker};
use crate::http::metrics::Exposition;
use crate::http::{AppState, Application};
use crate::runtime_metrics::{RuntimeMetrics, SAMPLE_INTERVAL as METRICS_SAMPLE_INTERVAL};

/// What one `lifeline serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// The HTTP API only.
    Api,
    /// The relay from the store to JetStream only (needs NATS).
    Relay,
    /// Policy consumers, projections, the overdue watcher and the connectors.
    Worker,
    /// Everything: with NATS configured, api + relay + worker; without, api + the embedded
    /// runtime (policies fed by the store's own subscription).
    All,
}

/// How often the overdue watcher looks for tasks past their due time.
const OVERDUE_INTERVAL: Duration = Duration::from_secs(60);

/// PostgreSQL connections `lifeline serve` opens at most (`LIFELINE_DB_POOL`).
pub const DEFAULT_POOL: u32 = 32;

/// Runs `roles` until a shutdown signal, then stops every part gracefully: in-flight HTTP
/// requests finish, consumers ack or nak what they hold, subscriptions commit their batch.
pub async fn serve(
    config: &Config,
    roles: &[ServeRole],
    config_file: Option<&Path>,
) -> anyhow::Result<()> {
    // The PostgreSQL pool serves the API, the group committer's parallel groups, the relay,
    // the projections and every lane of every policy consumer (which wait for a connection
    // when all are taken).
    let pool_size = match std::env::var("LIFELINE_DB_POOL") {
        Ok(value) => value
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|size| *size >= 2)
            .with_context(|| {
                format!("LIFELINE_DB_POOL must be a whole number of at least 2, not {value:?}")
            })?,
        Err(_) => DEFAULT_POOL,
    };
    // Checked before anything starts: a bad value is a configuration error, named.
    let runtime_settings = runtime_settings_from_env()?;
    let store = EventStore::connect_with_pool(&config.database_url, pool_size)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&config.database_url)))?;
    store.migrate().await.context("applying migrations")?;
    // Group commit (concurrent appends share one statement and one commit) is on by default on
    // PostgreSQL (BENCHMARKS.md: W1); `LIFELINE_GROUP_COMMIT=0` turns it off, `=1` turns it on
    // for SQLite too.
    let group_commit = match std::env::var("LIFELINE_GROUP_COMMIT") {
        Ok(value) => matches!(value.trim(), "1" | "true" | "yes" | "on"),
        Err(_) => store.backend() == BackendKind::Postgres,
    };
    let store = if group_commit {
        store.with_group_commit()
    } else {
        store
    };

    let wants = |role: ServeRole| roles.contains(&role) || roles.contains(&ServeRole::All);
    let nats = match &config.nats_url {
        Some(url) => {
            let jetstream = connect_nats_in_background(url)
                .await
                .with_context(|| format!("connecting to NATS at {}", redact_url(url)))?;
            // Usually up in a moment: wait a little so that the first figures and binds find
            // it, but never for long (a process started while NATS is down comes up).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while nats_connected(&jetstream).is_err() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Err(state) = nats_connected(&jetstream) {
                tracing::warn!(url = %redact_url(url), state,
                    "NATS is not reachable yet; connecting in the background");
            }
            Some(jetstream)
        }
        None => None,
    };
    let mut runtime_roles = Vec::new();
    if wants(ServeRole::Relay) && (nats.is_some() || roles.contains(&ServeRole::Relay)) {
        runtime_roles.push(RuntimeRole::Relay);
    }
    let runs_workers = wants(ServeRole::Worker);
    if runs_workers {
        runtime_roles.push(if nats.is_some() {
            RuntimeRole::Worker
        } else {
            RuntimeRole::Embedded
        });
    }
    if roles.contains(&ServeRole::Relay) && nats.is_none() {
        anyhow::bail!("the relay role needs NATS: set LIFELINE_NATS_URL");
    }
    if roles.contains(&ServeRole::Worker) && nats.is_none() {
        tracing::warn!("no NATS configured: the worker runs the embedded runtime off the store");
    }

    let reference = load_reference()?;
    let decidable_from = decidable_from(&reference);
    let handler: Arc<dyn PolicyHandler> = Arc::new(policy_engine(reference));

    let connectors = Arc::new(load_connectors(config_file)?);
    let (shutdown_sender, shutdown) = watch::channel(false);
    let mut parts = tokio::task::JoinSet::new();

    let mut api_state = None;
    if wants(ServeRole::Api) || runs_workers {
        let secret = crate::auth::secret_from_env()
            .context("reading the token secret")?
            .map_or_else(
                || crate::auth::development_secret(Path::new(crate::config::DEFAULT_DATA_DIR)),
                Ok,
            )
            .context("creating the development token secret")?;
        let verifier = TokenVerifier::hs256(&secret).context("token secret")?;
        let mut state = AppState::new(store.clone(), verifier)
            .with_connectors(Arc::clone(&connectors))
            .with_policy_handler(Arc::clone(&handler))
            .with_decidable_from(decidable_from);
        // NATS down must not take the API out of service: a registrar's write needs only the
        // store, and the relay catches up once NATS is back. `/readyz` reports it, and
        // `lifeline_nats_connected` shows it. (Until 2026-12-07 it failed readiness, so a NATS
        // outage left the API Service without endpoints.)
        if let Some(jetstream) = &nats {
            let probe_connection = jetstream.clone();
            state = state.with_informational_probe(
                "nats",
                Arc::new(move || {
                    let ready = nats_connected(&probe_connection);
                    Box::pin(async move { ready })
                }),
            );
            let gauge_connection = jetstream.clone();
            state
                .metrics
                .register_collector(Arc::new(move |page: &mut Exposition| {
                    page.family(
                        "lifeline_nats_connected",
                        "1 while this process's NATS connection is up, else 0.",
                        "gauge",
                    );
                    let up = nats_connected(&gauge_connection).is_ok();
                    page.sample("lifeline_nats_connected", &[], if up { 1.0 } else { 0.0 });
                }));
        }
        api_state = Some(state);
    }

    if wants(ServeRole::Api) {
        if let Some(state) = api_state.clone() {
            // `/metrics` also shows the runtime's figures, read in the background: the relay's
            // and each policy's lag (JetStream with NATS, the store's checkpoints without),
            // failures by policy, projections' lag, tasks by state and overdue.
            let probe = match &nats {
                Some(jetstream) => LagProbe::jetstream(jetstream.clone(), runtime_settings.clone()),
                None => LagProbe::Embedded,
            };
            let sampler = RuntimeMetrics::new(
                store.clone(),
                probe,
                handler.policy_names(),
                PROJECTION_NAMES,
            );
            sampler.register(&state.metrics);
            let stop = shutdown.clone();
            parts.spawn(async move {
                sampler.run(METRICS_SAMPLE_INTERVAL, stop).await;
                Ok(())
            });
            let application = Application::build(config.http_addr, state)
                .await
                .with_context(|| format!("binding {}", config.http_addr))?;
            tracing::info!(address = %application.address(), "http api listening");
            // The one machine-readable line on stdout: scripts and tests started on port 0
            // read the bound address from it.
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening on http://{}", application.address())
                .and_then(|()| stdout.flush())
                .context("announcing the http address on stdout")?;
            let mut stop = shutdown.clone();
            parts.spawn(async move {
                application
                    .run_until_stopped(async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    })
                    .await
                    .context("http api")
            });
        }
    }

    if !runtime_roles.is_empty() {
        let store = store.clone();
        let handler = Arc::clone(&handler);
        let jetstream = nats.clone();
        let subscribers = if runs_workers {
            projection_subscribers()
        } else {
            Vec::new()
        };
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            run_roles(
                store,
                jetstream,
                &runtime_roles,
                handler,
                subscribers,
                runtime_settings,
                shutdown,
            )
            .await
            .context("runtime roles")
        });
    }

    if runs_workers {
        let store_for_watcher = store.clone();
        let shutdown_for_watcher = shutdown.clone();
        parts.spawn(async move {
            run_overdue_watcher(
                store_for_watcher,
                OVERDUE_INTERVAL,
                Arc::new(SystemClock),
                shutdown_for_watcher,
            )
            .await
            .context("overdue watcher")
        });
        parts.spawn(crate::keys::run_sealer(
            store.clone(),
            crate::keys::seal_anchor_file(),
            shutdown.clone(),
        ));
        if let Some(state) = &api_state {
            for (agency, connector) in &connectors.agencies {
                let worker = DeliveryWorker::new(
                    store.clone(),
                    Arc::clone(&state.tasks),
                    *agency,
                    connector.clone(),
                )
                .with_context(|| format!("connector {agency}"))?;
                let mut stop = shutdown.clone();
                parts.spawn(async move {
                    worker
                        .run(async move {
                            let _ = stop.wait_for(|stopped| *stopped).await;
                        })
                        .await;
                    Ok(())
                });
            }
        }
    }

    tracing::info!(roles = ?roles, nats = nats.is_some(), "lifeline serving");
    // Every part runs until the shutdown: one that ends before it (the sealer without its key,
    // the HTTP server failing) stops the whole process, with an error and a non-zero exit,
    // so that its supervisor sees it and restarts it. (Until 2026-12-07 such a part's error
    // was read, and logged, only after SIGTERM, and `serve` exited 0: a worker went on
    // without sealing, ready by its probes.)
    let failed = tokio::select! {
        () = crate::http::shutdown_signal() => {
            tracing::info!("shutting down");
            None
        }
        Some(joined) = parts.join_next() => {
            let reason = match joined {
                Ok(Ok(())) => "a part stopped before the shutdown".to_owned(),
                Ok(Err(error)) => format!("{error:#}"),
                Err(error) => format!("a part panicked: {error}"),
            };
            tracing::error!(error = %reason, "a part of serve stopped; shutting down");
            Some(reason)
        }
    };
    let _ = shutdown_sender.send(true);
    while let Some(joined) = parts.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(error = format!("{error:#}"), "a part stopped with an error")
            }
            Err(error) => tracing::error!(%error, "a part panicked"),
        }
    }
    store.close().await;
    match failed {
        Some(reason) => Err(anyhow::anyhow!("serve stopped: {reason}")),
        None => Ok(()),
    }
}

/// The runtime settings: the defaults, with the JetStream stream name and subject prefix taken
/// from `LIFELINE_NATS_STREAM` and `LIFELINE_NATS_SUBJECT_PREFIX` when set (several
/// deployments, or tests, sharing one NATS server each need a stream of their own), and the
/// stream's replicas from `LIFELINE_NATS_REPLICAS` (1 to 5, default 1; 3 on the three-node
/// cluster of `deploy/nats/cluster`, where an acknowledged notice is then on a majority). The
/// relay creates the stream with them, or updates an existing one to them. The policy
/// consumers' ack wait from `LIFELINE_NATS_ACK_WAIT_SECS` (1 to 3,600, default 30): how long a
/// message a worker took and never answered (the worker was killed) waits before JetStream
/// hands it to another; a worker brings its durables to its own value when it binds them.
fn runtime_settings_from_env() -> anyhow::Result<RuntimeSettings> {
    let mut settings = RuntimeSettings::default();
    let set = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    if let Some(stream_name) = set("LIFELINE_NATS_STREAM") {
        settings.bus.stream_name = stream_name;
    }
    if let Some(subject_prefix) = set("LIFELINE_NATS_SUBJECT_PREFIX") {
        settings.bus.subject_prefix = subject_prefix;
    }
    if let Some(replicas) = set("LIFELINE_NATS_REPLICAS") {
        settings.bus.replicas = parse_replicas(&replicas)?;
    }
    if let Some(seconds) = set("LIFELINE_NATS_ACK_WAIT_SECS") {
        settings.consumer.ack_wait = parse_ack_wait(&seconds)?;
    }
    Ok(settings)
}

/// `LIFELINE_NATS_ACK_WAIT_SECS`: whole seconds, 1 to 3,600.
fn parse_ack_wait(raw: &str) -> anyhow::Result<std::time::Duration> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|seconds| (1..=3600).contains(seconds))
        .map(std::time::Duration::from_secs)
        .with_context(|| {
            format!(
                "LIFELINE_NATS_ACK_WAIT_SECS must be a whole number of seconds from 1 to 3600, \
                 not {raw:?}"
            )
        })
}

/// `LIFELINE_NATS_REPLICAS`: a JetStream stream has 1 to 5 replicas.
fn parse_replicas(raw: &str) -> anyhow::Result<usize> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|replicas| (1..=5).contains(replicas))
        .with_context(|| {
            format!("LIFELINE_NATS_REPLICAS must be a whole number from 1 to 5, not {raw:?}")
        })
}

/// The `[connectors.*]` tables of the configuration file, if any.
/// The `[connectors.<agency>]` of the configuration file (`lifeline.toml` if none is given;
/// none configured if it does not exist).
pub fn load_connectors(config_file: Option<&Path>) -> anyhow::Result<ConnectorsConfig> {
    let path = config_file.map_or_else(
        || Path::new("lifeline.toml").to_path_buf(),
        Path::to_path_buf,
    );
    match std::fs::read_to_string(&path) {
        Ok(text) => ConnectorsConfig::from_toml(&text)
            .with_context(|| format!("connectors in {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(ConnectorsConfig::default())
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// The reference data (parameters, routing, calendar, registers): the embedded defaults, or the
/// files of `LIFELINE_REFERENCE_DIR` where it has them.
pub fn load_reference() -> anyhow::Result<ReferenceData> {
    match std::env::var_os("LIFELINE_REFERENCE_DIR") {
        Some(dir) => ReferenceData::load(Path::new(&dir))
            .context("loading reference data from LIFELINE_REFERENCE_DIR"),
        None => ReferenceData::embedded().context("loading the embedded reference data"),
    }
}

/// For each follow-up procedure that needs date-effective parameters, the first date of death
/// the reference data lets the rules decide it for ([`AppState::with_decidable_from`]).
pub fn decidable_from(reference: &ReferenceData) -> Vec<(ProcedureId, NaiveDate)> {
    ProcedureId::ALL
        .into_iter()
        .filter_map(|procedure| {
            reference
                .parameters
                .decidable_from(procedure)
                .map(|from| (procedure, from))
        })
        .collect()
}

/// The policy engine with Lifeline's own identity allocator (PINs made unique by the store).
pub fn policy_engine(reference: ReferenceData) -> PolicyEngine {
    PolicyEngine::new(reference, Arc::new(StoreAllocator::new()))
}

#[cfg(test)]
mod tests {
    use super::{parse_ack_wait, parse_replicas};

    #[test]
    fn nats_replicas_are_one_to_five_and_a_bad_value_is_named() {
        assert_eq!(parse_replicas("3").unwrap(), 3);
        assert_eq!(parse_replicas(" 1 ").unwrap(), 1);
        assert_eq!(parse_replicas("5").unwrap(), 5);
        for bad in ["0", "6", "-1", "three", "3.0"] {
            let error = parse_replicas(bad).unwrap_err().to_string();
            assert!(error.contains("LIFELINE_NATS_REPLICAS"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_ack_wait_is_whole_seconds_from_one_to_an_hour_and_a_bad_value_is_named() {
        assert_eq!(parse_ack_wait("2").unwrap().as_secs(), 2);
        assert_eq!(parse_ack_wait(" 3600 ").unwrap().as_secs(), 3600);
        for bad in ["0", "3601", "-1", "2.5", "two", "2s"] {
            let error = parse_ack_wait(bad).unwrap_err().to_string();
            assert!(
                error.contains("LIFELINE_NATS_ACK_WAIT_SECS"),
                "{bad}: {error}"
            );
        }
    }
}
