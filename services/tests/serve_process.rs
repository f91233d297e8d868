//! `lifeline serve` as a process: a part that fails stops it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A part of `serve` that fails (here the sealer: its key directory is a file) stops the process
/// with an error naming it and a non-zero exit, instead of leaving it serving without that part
/// until SIGTERM. (Until 2026-12-07 the failure was logged only at shutdown, and the exit
/// status was 0.)
#[test]
fn serve_stops_with_an_error_when_a_part_fails() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_directory = dir.path().join("keys");
    std::fs::write(&not_a_directory, "not a directory").unwrap();
    let log_path = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("serve")
        .current_dir(dir.path())
        .env(
            "LIFELINE_DATABASE_URL",
            format!("sqlite:{}", dir.path().join("lifeline.sqlite").display()),
        )
        .env_remove("LIFELINE_NATS_URL")
        .env_remove("LIFELINE_REFERENCE_DIR")
        .env_remove("LIFELINE_TOKEN_SECRET_FILE")
        .env("LIFELINE_TOKEN_SECRET", "0123456789abcdef0123456789abcdef")
        .env("LIFELINE_HTTP_ADDR", "127.0.0.1:0")
        .env("LIFELINE_KEY_DIR", &not_a_directory)
        .env("LIFELINE_LOG_JSON", "false")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start the lifeline binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve still running 60 s after its sealer failed:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!status.success(), "exit {status:?}:\n{log}");
    assert!(log.contains("node key"), "{log}");
}
