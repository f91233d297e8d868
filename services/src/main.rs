//! The `lifeline` binary: parses the command line and runs one command.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeline::config::{redact_url, Config};
use lifeline::{demo, telemetry};
use lifeline_store::EventStore;

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
    /// Record sample births and deaths on the embedded store and print the log.
    Demo {
        /// Database for the demo (default: a fresh SQLite file under ./lifeline-data).
        #[arg(long)]
        database_url: Option<String>,
    },
}

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
    match cli.command {
        Command::Migrate => {
            let store = connect(&config.database_url).await?;
            store.migrate().await.context("applying migrations")?;
            tracing::info!(database = %redact_url(&config.database_url), "migrations applied");
            Ok(())
        }
        Command::Demo { database_url } => {
            let url = match database_url {
                Some(url) => url,
                None => {
                    let file = format!(
                        "{}/demo-{}.sqlite",
                        lifeline::config::DEFAULT_DATA_DIR,
                        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
                    );
                    format!("sqlite:{file}")
                }
            };
            let store = connect(&url).await?;
            store.migrate().await.context("applying migrations")?;
            let today = chrono::Utc::now()
                .with_timezone(&chrono::FixedOffset::east_opt(7 * 3600).context("vietnam offset")?)
                .date_naive();
            let mut out = std::io::stdout().lock();
            writeln!(out, "Lifeline demo on {}", redact_url(&url))?;
            demo::run(&store, today, &mut out).await
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<EventStore> {
    EventStore::connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}
