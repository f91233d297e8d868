//! W5: peak resident memory of the real `lifeline serve` (every role, with NATS) as a child
//! process, during a W3-like load (births at a fixed rate, the chain followed, birth
//! registrations completed by a simulated agency). `/proc/<pid>/status` is sampled every 50 ms:
//! `VmHWM` (the kernel's peak) and the largest `VmRSS` seen.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use uuid::Uuid;

use crate::common::{nats_url, Figure, FreshDatabase};
use crate::w2::registrar_token;
use crate::w3::{drive_chains, Observers};

pub(crate) async fn run(rate: u32, seconds: u64) -> anyhow::Result<()> {
    let database = FreshDatabase::create().await?;
    let result = run_on(&database, rate, seconds).await;
    database.drop_now().await?;
    result
}

/// `LIFELINE_BIN`, else `lifeline` next to this executable (both built by `cargo build --release`).
fn lifeline_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LIFELINE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("lifeline"))
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn run_on(database: &FreshDatabase, rate: u32, seconds: u64) -> anyhow::Result<()> {
    let binary = lifeline_binary()?;
    let run_id = Uuid::new_v4().simple().to_string();
    let stream_name = format!("BENCH_SERVE_{run_id}");
    let workdir = std::env::temp_dir().join(format!("lifeline-bench-{run_id}"));
    std::fs::create_dir_all(&workdir)?;
    let secret = String::from_utf8(crate::w2::SECRET.to_vec())?;
    let mut child = Command::new(&binary)
        .arg("serve")
        .current_dir(&workdir)
        .env("LIFELINE_DATABASE_URL", database.url())
        .env("LIFELINE_NATS_URL", nats_url())
        .env("LIFELINE_HTTP_ADDR", "127.0.0.1:0")
        .env("LIFELINE_TOKEN_SECRET", &secret)
        .env("LIFELINE_NATS_STREAM", &stream_name)
        .env(
            "LIFELINE_NATS_SUBJECT_PREFIX",
            format!("benchserve.{run_id}"),
        )
        // W5_SERVE_LOG=<file>: the child's log (stderr) goes to that file, filtered by
        // W5_SERVE_RUST_LOG (default `warn`); without it the log is dropped.
        .env(
            "RUST_LOG",
            std::env::var("W5_SERVE_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("W5_SERVE_LOG") {
            Some(path) => Stdio::from(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating W5_SERVE_LOG {}", path.to_string_lossy()))?,
            ),
            None => Stdio::null(),
        })
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (cargo build --release -p lifeline)",
                binary.display()
            )
        })?;
    let pid = child.id().context("the child's pid")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(address) = line.strip_prefix("listening on ") {
                return Ok::<_, anyhow::Error>(address.trim().to_owned());
            }
        }
        anyhow::bail!("lifeline serve ended before listening")
    })
    .await
    .context("waiting for lifeline serve to listen")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let idle_rss = status_kib(pid, "VmRSS:").unwrap_or(0);

    let max_rss = Arc::new(AtomicU64::new(idle_rss));
    let sampling = {
        let max_rss = Arc::clone(&max_rss);
        tokio::spawn(async move {
            loop {
                match status_kib(pid, "VmRSS:") {
                    Some(rss) => {
                        max_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                    None => return,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let observers = Observers::open(database).await?;
    let figures = drive_chains(
        &observers,
        &base,
        &registrar_token()?,
        rate,
        Duration::from_secs(seconds),
        0,
        &format!("w5_serve_r{rate}"),
    )
    .await;
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    sampling.abort();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let _ = child.kill().await;
    observers.close().await;
    if let Ok(jetstream) = lifeline_policies::runtime::connect_nats(&nats_url()).await {
        let _ = jetstream.delete_stream(&stream_name).await;
    }
    let _ = std::fs::remove_dir_all(&workdir);
    let figures = figures?;
    let max_rss = max_rss.load(Ordering::Relaxed);
    for figure in &figures {
        figure.print();
    }
    let births = figures.first().map_or(0, |figure| figure.ops);
    Figure::new("w5_serve_peak_rss", births, Duration::from_secs(seconds))
        .extra(format!(
            "vmhwm_mib={:.1} vmrss_max_mib={:.1} vmrss_idle_mib={:.1} rate={rate}",
            hwm as f64 / 1024.0,
            max_rss as f64 / 1024.0,
            idle_rss as f64 / 1024.0
        ))
        .print();
    Ok(())
}
