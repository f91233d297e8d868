//! `bench_verify --events N [--database-url URL]`: fills a fresh PostgreSQL database with N
//! events through the store API (multi-event appends, 10 per stream, 8 writers), seals them,
//! then times `verify` over the whole log. The database is dropped afterwards; nothing is
//! committed anywhere. Figures go to BENCHMARKS.md.

use std::time::Instant;

use lifeline_model::envelope::ExpectedVersion;
use lifeline_model::integrity::{KeyPair, Keyring, NODE_OWNER};
use lifeline_store::{seal_all, verify};
use lifeline_tests::{new_event, new_stream, postgres_store};
use serde_json::json;

const EVENTS_PER_STREAM: usize = 10;
const WRITERS: usize = 8;

#[tokio::main]
async fn main() {
    let mut events: usize = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => {
                events = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--events N")
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    let store = postgres_store().await;
    let started = Instant::now();
    let streams = events.div_ceil(EVENTS_PER_STREAM);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.store().clone();
            tokio::spawn(async move {
                for index in (writer..streams).step_by(WRITERS) {
                    let stream = new_stream("bench");
                    let batch: Vec<_> = (0..EVENTS_PER_STREAM)
                        .map(|n| {
                            new_event(
                                "BenchNoted",
                                json!({"stream": index, "n": n, "text": "Nguyễn Văn An", "amount": 120000}),
                            )
                        })
                        .collect();
                    store
                        .append(&stream, ExpectedVersion::NoStream, &batch)
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let filled = started.elapsed();
    let node = KeyPair::generate();
    let mut keyring = Keyring::default();
    keyring.add(&node, NODE_OWNER, None);
    let started = Instant::now();
    let seals = seal_all(&store, &node).await.expect("seal");
    let sealed = started.elapsed();
    let started = Instant::now();
    let report = verify(&store, &keyring).await.expect("verify");
    let verified = started.elapsed();
    assert_eq!(report.first_bad, None, "{report:?}");
    let total = report.events_checked;
    let mut out = std::io::stderr();
    use std::io::Write;
    let _ = writeln!(
        out,
        "appended {total} events in {:.1} s ({:.0} events/s); sealed in {} seals in {:.1} s; \
         verify: {total} events, {} seals in {:.2} s = {:.0} events/s",
        filled.as_secs_f64(),
        total as f64 / filled.as_secs_f64(),
        seals.len(),
        sealed.as_secs_f64(),
        report.seals_checked,
        verified.as_secs_f64(),
        total as f64 / verified.as_secs_f64(),
    );
    store.close().await;
}
