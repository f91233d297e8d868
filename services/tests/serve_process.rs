//! The `lifeline` binary as a process: a part of `serve` that fails stops it; the commands that
//! run against a live database never change its schema.

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

/// The commands that run against a live database (verify, export, the operators' lists, ...)
/// refuse one that is not at this version's schema and say to run `lifeline migrate`; they
/// never migrate it themselves (until 2026-12-07 they did). After `migrate` they run.
#[tokio::test]
async fn commands_on_a_database_refuse_an_old_schema_and_never_migrate_it() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("lifeline.sqlite");
    let lifeline = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(args)
            .current_dir(dir.path())
            .env(
                "LIFELINE_DATABASE_URL",
                format!("sqlite:{}", database.display()),
            )
            .env("LIFELINE_KEY_DIR", dir.path().join("keys"))
            .env_remove("LIFELINE_NATS_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run the lifeline binary")
    };
    let commands: [&[&str]; 5] = [
        &["policies", "failed"],
        &["deliveries", "failed"],
        &["export"],
        &["seal"],
        &["replay", "--as-of", "2026-12-01T00:00:00Z"],
    ];
    for args in commands {
        let output = lifeline(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded: {stderr}");
        assert!(stderr.contains("lifeline migrate"), "{args:?}: {stderr}");
    }
    let store = lifeline_store::EventStore::connect(&format!("sqlite:{}", database.display()))
        .await
        .unwrap();
    let fresh = lifeline_store::EventStore::connect("sqlite::memory:")
        .await
        .unwrap();
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        fresh.pending_migrations().await.unwrap(),
        "a command migrated the database"
    );
    store.close().await;
    fresh.close().await;

    let migrated = lifeline(&["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    for args in commands {
        let output = lifeline(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Migrated by a newer version (a migration this one does not know): refused as well.
    let store = lifeline_store::EventStore::connect(&format!("sqlite:{}", database.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29990101000001, 'from the future', true, x'00', 0)",
    )
    .execute(store.sqlite_pool().unwrap())
    .await
    .unwrap();
    store.close().await;
    for args in commands {
        let output = lifeline(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded: {stderr}");
        assert!(stderr.contains("newer version"), "{args:?}: {stderr}");
    }
}

/// The demo runs only on a new, empty database: its simulated agencies work every open task.
/// A second run on the first one's database is refused, and leaves the log as it was.
#[tokio::test]
async fn the_demo_refuses_a_database_that_holds_events() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("demo.sqlite").display());
    let demo = || {
        Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["demo", "--database-url", &url])
            .current_dir(dir.path())
            .env("LIFELINE_KEY_DIR", dir.path().join("keys"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run the lifeline binary")
    };
    let first = demo();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let events = || async {
        let store = lifeline_store::EventStore::connect(&url).await.unwrap();
        let count = store
            .read_all(lifeline_model::envelope::LogCursor::START, 1_000_000)
            .await
            .unwrap()
            .len();
        store.close().await;
        count
    };
    let before = events().await;
    assert!(before > 0);
    let second = demo();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("already holds events"), "{stderr}");
    assert_eq!(events().await, before, "the refused demo recorded events");
}
