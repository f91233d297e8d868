//! `lifeline-bench`: Lifeline's performance workloads, each figure one `RESULT bench=lifeline
//! case=... ops=... events_per_s=... p50_ms=... p99_ms=...` line, the format of
//! `../shared/peers`, so both can be compared in one run (`bench/run.sh`).
//!
//! # Layout
//! - `common`: fresh uuid-named databases, the `RESULT` line, the realistic birth.
//! - `w1`: store appends (new birth stream, one event), group commit on and off.
//! - `w2`: `POST /v1/births` through the in-process axum app on a real socket.
//! - `w3`: end to end at fixed arrival rates (relay, NATS, workers, projections, an agency).
//! - `w4`: rebuild every projection from a large realistic log.
//! - `w5`: peak memory of the real `lifeline serve` under a W3-like load.

mod common;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;

const USAGE: &str = "usage: lifeline-bench w1 [levels..] | w2 [levels..] | w3 [--seconds S] [--relay-poll-ms MS] [rates..] | w4 [events] | w5 [rate] [seconds] | payload";

fn numbers(args: &[String]) -> Vec<u64> {
    args.iter().filter_map(|arg| arg.parse().ok()).collect()
}

fn levels(args: &[String], default: &[usize]) -> Vec<usize> {
    let given: Vec<usize> = numbers(args).into_iter().map(|n| n as usize).collect();
    if given.is_empty() {
        default.to_vec()
    } else {
        given
    }
}

/// The same allocator as the `lifeline` binary, so the in-process benchmarks measure what
/// `lifeline serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs only when asked (`RUST_LOG=warn`, say): to stderr, apart from the RESULT lines.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        anyhow::bail!("{USAGE}");
    };
    let rest = &args[1..];
    match command.as_str() {
        "payload" => {
            let (_, event) = common::birth_recorded(0)?;
            eprintln!("{}", serde_json::to_string_pretty(&event.payload)?);
            eprintln!(
                "BirthRecorded payload bytes={}",
                common::payload_bytes(&event)
            );
        }
        "w1" => w1::run(&levels(rest, &[1, 8, 32])).await?,
        "w2" => w2::run(&levels(rest, &[1, 8, 32, 64])).await?,
        "w3" => {
            let mut seconds = 20;
            let mut relay_poll = None;
            let mut rates = Vec::new();
            let mut iter = rest.iter();
            while let Some(arg) = iter.next() {
                if arg == "--seconds" {
                    seconds = iter.next().and_then(|s| s.parse().ok()).unwrap_or(seconds);
                } else if arg == "--relay-poll-ms" {
                    relay_poll = iter
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .map(std::time::Duration::from_millis);
                } else if let Ok(rate) = arg.parse() {
                    rates.push(rate);
                }
            }
            if rates.is_empty() {
                rates = vec![100, 500, 1000];
            }
            w3::run(&rates, seconds, relay_poll).await?;
        }
        "w4" => {
            let events = numbers(rest).first().copied().unwrap_or(1_000_000);
            w4::run(usize::try_from(events)?).await?;
        }
        "w5" => {
            let given = numbers(rest);
            let rate = given.first().copied().unwrap_or(500);
            let seconds = given.get(1).copied().unwrap_or(20);
            w5::run(u32::try_from(rate)?, seconds).await?;
        }
        _ => anyhow::bail!("{USAGE}"),
    }
    Ok(())
}
