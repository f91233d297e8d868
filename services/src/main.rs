//! The `lifeline` binary: parses the command line and runs one command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use lifeline::auth::{development_secret, issue_token, secret_from_env, Scope};
use lifeline::config::{redact_url, Config, DEFAULT_DATA_DIR};
use lifeline::connector::{list_failed_deliveries, request_redelivery, RedeliveryFilter};
use lifeline::serve::{load_connectors, load_reference, policy_engine, serve, ServeRole};
use lifeline::tasks::TaskDesk;
use lifeline::{demo, keys, telemetry};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::AgencyId;
use lifeline_model::values::OfficeCode;
use lifeline_policies::projections::rebuild::rebuild_projections;
use lifeline_policies::runtime::failures::{list_failed, retry_failed, RetryFilter};
use lifeline_store::EventStore;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "lifeline",
    version,
    about = "Record a life event once; every linked procedure follows"
)]
struct Cli {
    /// Configuration file (default: ./lifeline.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the store's migrations to the configured database.
    Migrate,
    /// Record sample births and deaths on the embedded store, let simulated agencies work every
    /// linked procedure, and print each step and the final state.
    Demo {
        /// Database for the demo, new and empty (default: a fresh SQLite file under
        /// ./lifeline-data).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Serve: the HTTP API and/or the runtime roles.
    Serve {
        /// Roles of this process (repeat or comma-separate): api, relay, worker, all.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
        role: Vec<ServeRole>,
    },
    /// Issue a development token for a role; the token is alone on the last line.
    Token {
        #[arg(long, value_parser = ["registrar", "agency", "auditor", "operator"])]
        role: String,
        /// The registrar's office, e.g. 79-26734.
        #[arg(long)]
        office: Option<String>,
        /// The agency officer's agency, e.g. police.
        #[arg(long)]
        agency: Option<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 12)]
        hours: u64,
    },
    /// Policy runs that gave up (PolicyFailed) and their retry.
    Policies {
        #[command(subcommand)]
        command: PoliciesCommand,
    },
    /// Connector deliveries given up on (ConnectorDeliveryFailed) and their retry.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// The projections (agency inbox, person registry, life-event status).
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The person registry and life-event status as of a moment, rebuilt from the log (JSON).
    Replay {
        /// RFC 3339 time, e.g. 2026-11-20T12:00:00+07:00.
        #[arg(long)]
        as_of: DateTime<chrono::FixedOffset>,
    },
    /// The whole log as NDJSON, in commit order.
    Export,
    /// Check the whole log: every event's hash and stream chain, every seal, every office
    /// signature. Prints the report (JSON); exits 1 naming the first bad position.
    Verify {
        /// Keyring of public keys (default: <key dir>/keyring.json).
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// Seals kept outside the database, compared with the log's (repeatable): the
        /// sealer's anchor file (one JSON seal per line), or a saved `lifeline seal-head` or
        /// `GET /v1/audit/seals/head`. Catches seals deleted and made again over rewritten
        /// events, which the log alone cannot show.
        #[arg(long = "anchor", value_name = "FILE")]
        anchors: Vec<PathBuf>,
    },
    /// Seal the events committed since the last seal (signed with the node key).
    Seal,
    /// Print the newest seal (one JSON line), to keep outside the database as an anchor for
    /// `lifeline verify --anchor`.
    SealHead,
    /// Check an inclusion proof (from GET /v1/audit/proof/{event_id}) offline.
    VerifyProof {
        file: PathBuf,
        /// Keyring of public keys (default: <key dir>/keyring.json).
        #[arg(long)]
        keyring: Option<PathBuf>,
    },
    /// The node's signing keys: public keys only, never secrets.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a new node key (rotation); the old public keys stay in the keyring.
    Generate,
    /// Print the keyring (key ids, public keys, owners), creating the node key if missing.
    Show,
}

#[derive(Debug, Subcommand)]
enum PoliciesCommand {
    /// List the policy runs that gave up and were not retried successfully since.
    Failed,
    /// Re-run failed policy runs (all, or those of one policy or one event).
    Retry {
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        event_id: Option<Uuid>,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// List the connector deliveries given up on and not requested again since.
    Failed,
    /// Request failed deliveries sent again (all, or those of one agency or one task); the
    /// agency's delivery worker (`serve --role worker`) sends them.
    Retry {
        #[arg(long)]
        agency: Option<AgencyId>,
        #[arg(long)]
        task_id: Option<Uuid>,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Clear the projection tables and replay them from the log. Run it with the workers stopped.
    Rebuild,
}

/// mimalloc (2.x) instead of glibc malloc: allocation (`malloc`, `free`, `malloc_consolidate`)
/// was 14-17% of the process's CPU under load (perf of W2 and W3). See ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    telemetry::init(config.log_json);
    // Not locked for the whole run: `serve` writes its address line from its own code.
    let mut out = std::io::stdout();
    match cli.command {
        Command::Migrate => {
            let store = connect(&config.database_url).await?;
            store.migrate().await.context("applying migrations")?;
            tracing::info!(database = %redact_url(&config.database_url), "migrations applied");
            Ok(())
        }
        Command::Demo { database_url } => {
            let url = database_url.unwrap_or_else(|| {
                format!(
                    "sqlite:{DEFAULT_DATA_DIR}/demo-{}.sqlite",
                    Utc::now().format("%Y%m%dT%H%M%S%.3f")
                )
            });
            let store = connect(&url).await?;
            // The demo's simulated agencies work every open task of the database: only on one
            // of its own (until 2026-12-07 `--database-url` ran it on any, real tasks
            // included, with made-up certificates and payment decisions).
            let pending = store
                .pending_migrations()
                .await
                .context("reading the database's schema version")?;
            if !pending.is_empty() && pending.len() < store.migrations_total() {
                anyhow::bail!(
                    "the demo needs a new, empty database: {} is an older version's",
                    redact_url(&url)
                );
            }
            store.migrate().await.context("applying migrations")?;
            if !store
                .read_all_headers(lifeline_model::envelope::LogCursor::START, 1)
                .await
                .context("reading the log")?
                .is_empty()
            {
                anyhow::bail!(
                    "the demo needs a new, empty database (its simulated agencies work every \
                     open task): {} already holds events",
                    redact_url(&url)
                );
            }
            writeln!(out, "Lifeline demo on {}", redact_url(&url))?;
            demo::run(&store, &mut out).await
        }
        Command::Serve { role } => serve(&config, &role, cli.config.as_deref()).await,
        Command::Token {
            role,
            office,
            agency,
            hours,
        } => {
            let (role, scope) = token_scope(&role, office.as_deref(), agency.as_deref())?;
            let secret = match secret_from_env().context("reading the token secret")? {
                Some(secret) => secret,
                None => development_secret(Path::new(DEFAULT_DATA_DIR))
                    .context("reading the development token secret")?,
            };
            let token = issue_token(
                &secret,
                role,
                scope,
                Duration::from_secs(hours.saturating_mul(3600)),
            )
            .context("issuing the token")?;
            writeln!(out, "{token}")?;
            Ok(())
        }
        Command::Policies { command } => {
            let store = connect_current(&config.database_url).await?;
            match command {
                PoliciesCommand::Failed => {
                    let failed = list_failed(&store)
                        .await
                        .context("listing failed policy runs")?;
                    writeln!(out, "{} failed policy run(s)", failed.len())?;
                    for run in failed {
                        writeln!(
                            out,
                            "{}  policy {}  event {}  after {} deliveries: {}",
                            run.failed_at.to_rfc3339(),
                            run.policy,
                            run.event_id,
                            run.deliveries,
                            run.error
                        )?;
                    }
                    Ok(())
                }
                PoliciesCommand::Retry { policy, event_id } => {
                    let engine = policy_engine(load_reference()?);
                    let report = retry_failed(&store, &engine, &RetryFilter { policy, event_id })
                        .await
                        .context("retrying failed policy runs")?;
                    for run in &report.succeeded {
                        writeln!(out, "retried: policy {} event {}", run.policy, run.event_id)?;
                    }
                    for (run, error) in &report.failed {
                        writeln!(
                            out,
                            "still failing: policy {} event {}: {error}",
                            run.policy, run.event_id
                        )?;
                    }
                    writeln!(
                        out,
                        "{} succeeded, {} still failing",
                        report.succeeded.len(),
                        report.failed.len()
                    )?;
                    if report.failed.is_empty() {
                        Ok(())
                    } else {
                        anyhow::bail!("{} policy run(s) still fail", report.failed.len())
                    }
                }
            }
        }
        Command::Deliveries { command } => {
            let store = connect_current(&config.database_url).await?;
            match command {
                DeliveriesCommand::Failed => {
                    let failed = list_failed_deliveries(&store)
                        .await
                        .context("listing failed deliveries")?;
                    writeln!(out, "{} failed deliveries", failed.len())?;
                    for delivery in failed {
                        writeln!(
                            out,
                            "{}  {}  task {}  {:?} after {} attempt(s): {}{}{}",
                            delivery.failed_at.to_rfc3339(),
                            delivery.agency,
                            delivery.task_id,
                            delivery.kind,
                            delivery.attempts,
                            delivery.reason,
                            delivery
                                .last_status
                                .map(|status| format!(" (HTTP {status})"))
                                .unwrap_or_default(),
                            if delivery.permanent {
                                ", refused by the agency system"
                            } else {
                                ""
                            },
                        )?;
                    }
                    Ok(())
                }
                DeliveriesCommand::Retry { agency, task_id } => {
                    let connectors = load_connectors(cli.config.as_deref())?;
                    let configured: Vec<AgencyId> = connectors.agencies.keys().copied().collect();
                    if let Some(agency) = agency.filter(|agency| !configured.contains(agency)) {
                        anyhow::bail!(
                            "no connector is configured for {agency} (--config): its tasks are \
                             worked in the inbox"
                        );
                    }
                    let tasks = TaskDesk::new(store.clone());
                    let operator = format!(
                        "cli:{}",
                        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
                    );
                    let report = request_redelivery(
                        &store,
                        &tasks,
                        &RedeliveryFilter {
                            agency,
                            task_id,
                            configured,
                        },
                        &operator,
                    )
                    .await
                    .context("requesting failed deliveries sent again")?;
                    for delivery in &report.requested {
                        writeln!(
                            out,
                            "requested: {} task {} ({:?})",
                            delivery.agency, delivery.task_id, delivery.kind
                        )?;
                    }
                    for (delivery, reason) in &report.settled {
                        writeln!(
                            out,
                            "settled: {} task {} ({:?}): {reason}",
                            delivery.agency, delivery.task_id, delivery.kind
                        )?;
                    }
                    for (delivery, reason) in &report.skipped {
                        writeln!(
                            out,
                            "left listed: {} task {} ({:?}): {reason}",
                            delivery.agency, delivery.task_id, delivery.kind
                        )?;
                    }
                    writeln!(
                        out,
                        "{} requested (the delivery workers send them), {} settled, {} left listed",
                        report.requested.len(),
                        report.settled.len(),
                        report.skipped.len()
                    )?;
                    Ok(())
                }
            }
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild,
        } => {
            let store = connect_current(&config.database_url).await?;
            let report = rebuild_projections(&store)
                .await
                .context("rebuilding the projections")?;
            for (projection, events) in &report.events_per_projection {
                writeln!(out, "{projection}: {events} events replayed")?;
            }
            Ok(())
        }
        Command::Replay { as_of } => {
            let store = connect_current(&config.database_url).await?;
            let view = lifeline::replay::replay_until(&store, Some(as_of.with_timezone(&Utc)))
                .await
                .context("replaying the log")?;
            serde_json::to_writer_pretty(&mut out, &view)?;
            writeln!(out)?;
            Ok(())
        }
        Command::Verify { keyring, anchors } => {
            let keyring = load_keyring_or_default(keyring.as_deref())?;
            let mut anchored = Vec::new();
            for path in &anchors {
                let read = keys::read_anchors(path)?;
                if read.is_empty() {
                    anyhow::bail!("{} holds no seal to compare", path.display());
                }
                for anchor in read {
                    lifeline_store::check_anchor(&anchor, &keyring)
                        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
                    anchored.push(anchor);
                }
            }
            let store = connect_current(&config.database_url).await?;
            let report = lifeline_store::verify_anchored(&store, &keyring, &anchored)
                .await
                .context("verifying the log")?;
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
            match report.first_bad {
                None => Ok(()),
                Some(bad) => anyhow::bail!(
                    "the log is not intact from position {}: {}",
                    bad.global_position,
                    bad.reason
                ),
            }
        }
        Command::Seal => {
            let node_key = keys::node_key(&keys::key_dir()).context("loading the node key")?;
            let store = connect_current(&config.database_url).await?;
            let seals = lifeline_store::seal_all(&store, &node_key)
                .await
                .context("sealing the log")?;
            for seal in &seals {
                writeln!(
                    out,
                    "seal {}: {} events up to position {}, root {}",
                    seal.seq, seal.event_count, seal.to.global_position, seal.merkle_root
                )?;
            }
            writeln!(out, "{} new seal(s)", seals.len())?;
            if let (Some(last), Some(path)) = (seals.last(), keys::seal_anchor_file()) {
                keys::append_anchor(&path, last)
                    .with_context(|| format!("anchoring seal {}", last.seq))?;
                writeln!(out, "seal {} anchored in {}", last.seq, path.display())?;
            }
            Ok(())
        }
        Command::SealHead => {
            let store = connect_current(&config.database_url).await?;
            let seal = lifeline_store::integrity::last_seal(&store)
                .await
                .context("reading the newest seal")?
                .ok_or_else(|| anyhow::anyhow!("the log has no seal yet (`lifeline seal`)"))?;
            serde_json::to_writer(&mut out, &seal)?;
            writeln!(out)?;
            Ok(())
        }
        Command::VerifyProof { file, keyring } => {
            let keyring = load_keyring_or_default(keyring.as_deref())?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let proof: lifeline_model::integrity::InclusionProof =
                serde_json::from_str(&text).context("parsing the proof")?;
            proof.verify(&keyring).map_err(|error| {
                anyhow::anyhow!(
                    "the proof of event {} does not hold: {error}",
                    proof.event.event_id
                )
            })?;
            // What the proof authenticates: the event (its hash covers stream, version, id,
            // type and content) and its place among the seal's leaves (in commit order). The
            // proof's `global_position` is not covered by any of them, so it is not printed as
            // proven (until 2026-12-07 it was, and an edited one still "verified").
            writeln!(
                out,
                "event {} ({} version {}) is leaf {} of {} in seal {} (signed by key {})",
                proof.event.event_id,
                proof.event.stream_id,
                proof.event.stream_version,
                proof.leaf_index + 1,
                proof.seal.event_count,
                proof.seal.seq,
                proof.seal.key_id
            )?;
            Ok(())
        }
        Command::Keys { command } => {
            let dir = keys::key_dir();
            match command {
                KeysCommand::Generate => {
                    let key = keys::rotate_node_key(&dir).context("generating a node key")?;
                    writeln!(
                        out,
                        "new node key {} public {}",
                        key.key_id(),
                        key.public_key_hex()
                    )?;
                }
                KeysCommand::Show => {
                    keys::node_key(&dir).context("loading the node key")?;
                }
            }
            let keyring = keys::load_keyring(&keys::keyring_file(&dir))?;
            serde_json::to_writer_pretty(&mut out, &keyring)?;
            writeln!(out)?;
            Ok(())
        }
        Command::Export => {
            let store = connect_current(&config.database_url).await?;
            lifeline::replay::export_log(&store, &mut out).await?;
            Ok(())
        }
    }
}

fn token_scope(
    role: &str,
    office: Option<&str>,
    agency: Option<&str>,
) -> anyhow::Result<(Role, Scope)> {
    match (role, office, agency) {
        ("registrar", Some(office), None) => Ok((
            Role::Registrar,
            Scope::Office(
                OfficeCode::parse(office).map_err(|error| anyhow::anyhow!("--office: {error}"))?,
            ),
        )),
        ("registrar", _, _) => anyhow::bail!("a registrar token needs --office (and no --agency)"),
        ("agency", None, Some(agency)) => Ok((
            Role::Agency,
            Scope::Agency(
                agency
                    .parse::<AgencyId>()
                    .map_err(|error| anyhow::anyhow!("--agency: {error}"))?,
            ),
        )),
        ("agency", _, _) => anyhow::bail!("an agency token needs --agency (and no --office)"),
        ("auditor", None, None) => Ok((Role::Auditor, Scope::Unscoped)),
        ("operator", None, None) => Ok((Role::Operator, Scope::Unscoped)),
        (other, _, _) => anyhow::bail!("a {other} token takes neither --office nor --agency"),
    }
}

fn load_keyring_or_default(
    path: Option<&Path>,
) -> anyhow::Result<lifeline_model::integrity::Keyring> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| keys::keyring_file(&keys::key_dir()));
    keys::load_keyring(&path)
}

async fn connect(url: &str) -> anyhow::Result<EventStore> {
    EventStore::connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}

/// The store at `url`, which must be at this version's schema: these commands (verify, export,
/// replay, the operators' lists and retries, seal, rebuild) run against a live database, whose
/// schema only `lifeline migrate` (or `serve`) changes, with the processes of an older version
/// stopped where a migration says so (deploy/README.md). Until 2026-12-07 they migrated it
/// themselves: an auditor's `verify` with a newer binary changed a production schema (and one
/// with a role that may not create tables could not verify at all).
async fn connect_current(url: &str) -> anyhow::Result<EventStore> {
    let store = connect(url).await?;
    let pending = store
        .pending_migrations()
        .await
        .context("reading the database's schema version")?;
    let unknown = store
        .unknown_migrations()
        .await
        .context("reading the database's schema version")?;
    if let Some(version) = unknown.last() {
        store.close().await;
        anyhow::bail!(
            "{} was migrated by a newer version of lifeline (migration {version} is unknown to \
             this one): run that version's binary",
            redact_url(url)
        );
    }
    if let Some((version, description)) = pending.first() {
        store.close().await;
        anyhow::bail!(
            "{} is not at this version's schema: {} migration(s) not applied, from {version} \
             ({description}); run `lifeline migrate` first",
            redact_url(url),
            pending.len()
        );
    }
    Ok(store)
}
