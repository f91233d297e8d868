//! A worker process for the runtime fault tests: runs the JetStream policy consumers with the
//! test [`EffectHandler`] until killed (or SIGTERM / ctrl-c). To be replaced by
//! `lifeline serve --role worker` once the binary has it.
//!
//! Environment: `LIFELINE_DATABASE_URL`, `LIFELINE_NATS_URL`, `TEST_STREAM`,
//! `TEST_SUBJECT_PREFIX`, `TEST_MAX_ATTEMPTS` (default 3), `TEST_APPLY_DELAY_MS` (default 0),
//! `TEST_LANE_BATCH` (default: the consumers' own).

use std::sync::Arc;
use std::time::Duration;

use lifeline_policies::runtime::{connect_nats, run_policy_consumers, BusConfig};
use lifeline_store::EventStore;
use lifeline_tests::nats::{test_consumer_options, EffectHandler};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn var(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|error| format!("{name}: {error}").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let store = EventStore::connect(&var("LIFELINE_DATABASE_URL")?).await?;
    let jetstream = connect_nats(&var("LIFELINE_NATS_URL")?).await?;
    let bus = BusConfig {
        stream_name: var("TEST_STREAM")?,
        subject_prefix: var("TEST_SUBJECT_PREFIX")?,
        ..BusConfig::default()
    };
    let max_attempts = var("TEST_MAX_ATTEMPTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let delay = var("TEST_APPLY_DELAY_MS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let handler = Arc::new(EffectHandler::new(0).with_delay(Duration::from_millis(delay)));
    let mut options = test_consumer_options(max_attempts);
    if let Some(lane_batch) = var("TEST_LANE_BATCH")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        options.lane_batch = lane_batch;
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    run_policy_consumers(store, jetstream, bus, options, handler, shutdown).await;
    Ok(())
}
