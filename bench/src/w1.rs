//! W1: record a birth through the store API: a new stream `birth-<uuid>`, one `BirthRecorded`
//! (built by the model's parser, aggregate and codec), expected version "no stream", durable
//! commit (`synchronous_commit=on`), closed loop at each concurrency level; group commit on (what
//! `lifeline serve` runs) and off (for the record).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_model::envelope::{ExpectedVersion, NewEvent, StreamId};

use crate::common::{birth_recorded, checkpoint, payload_bytes, Figure, FreshDatabase};

/// Appends timed per level; `W1_OPS` overrides it (a longer run for a profile).
const OPS: usize = 5_000;
const WARM_UP: usize = 200;

fn ops() -> usize {
    std::env::var("W1_OPS")
        .ok()
        .and_then(|ops| ops.parse().ok())
        .unwrap_or(OPS)
}

pub(crate) async fn run(levels: &[usize]) -> anyhow::Result<()> {
    let database = FreshDatabase::create().await?;
    let result = run_on(&database, levels).await;
    database.drop_now().await?;
    result
}

async fn run_on(database: &FreshDatabase, levels: &[usize]) -> anyhow::Result<()> {
    for grouped in [true, false] {
        for &concurrency in levels {
            // Ungrouped appends need a connection each; the committer needs one at a time.
            let pool = u32::try_from(concurrency.max(2) + 2)?;
            let mut store = database.store(pool).await?;
            if grouped {
                store = store.with_group_commit();
            }
            let ops = ops();
            let events = Arc::new(prepare(WARM_UP + ops)?);
            let bytes = payload_bytes(&events[0].1);
            let _ = drive(&store, Arc::clone(&events), 0, WARM_UP, concurrency).await?;
            checkpoint(&store).await?;
            // On stderr, for a profiler waiting for the timed phase (BENCHMARKS.md, Reproduce).
            eprintln!(
                "w1: timing {} appends, group commit {grouped}, concurrency {concurrency}",
                ops
            );
            let started = Instant::now();
            let latencies = drive(&store, events, WARM_UP, WARM_UP + ops, concurrency).await?;
            let wall = started.elapsed();
            let case = format!(
                "w1_store_append_{}_c{concurrency}",
                if grouped { "group" } else { "nogroup" }
            );
            Figure::new(case, ops, wall)
                .latencies(latencies)
                .extra(format!("payload_bytes={bytes} pool={pool}"))
                .print();
            store.close().await;
        }
    }
    Ok(())
}

fn prepare(count: usize) -> anyhow::Result<Vec<(StreamId, NewEvent)>> {
    (0..count)
        .map(|index| {
            let (life_event_id, event) = birth_recorded(index)?;
            Ok((StreamId::for_kind("birth", life_event_id)?, event))
        })
        .collect()
}

/// Appends events `from..to` with `concurrency` closed-loop callers; answers each latency.
async fn drive(
    store: &lifeline_store::EventStore,
    events: Arc<Vec<(StreamId, NewEvent)>>,
    from: usize,
    to: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let store = store.clone();
        let events = Arc::clone(&events);
        let next = Arc::clone(&next);
        callers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= to {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let (stream, event) = &events[index];
                let started = Instant::now();
                store
                    .append(
                        stream,
                        ExpectedVersion::NoStream,
                        std::slice::from_ref(event),
                    )
                    .await?;
                latencies.push(started.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(to - from);
    while let Some(joined) = callers.join_next().await {
        all.extend(joined??);
    }
    Ok(all)
}
