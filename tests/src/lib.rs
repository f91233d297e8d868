//! The shared harness of Lifeline's integration tests: a fresh store per test on each backend,
//! event builders, polling with a deadline, and [`backend_tests!`], which runs one suite
//! against PostgreSQL and SQLite.
//!
//! # Layout
//! - [`postgres_store`]: a fresh uuid-named PostgreSQL database, migrated, dropped afterwards.
//!   `LIFELINE_TEST_POSTGRES_URL` names the server (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`); an unreachable server fails the test.
//! - [`sqlite_store`]: a migrated SQLite file in a temporary directory.
//! - [`new_event`], [`new_stream`], [`eventually`]: small helpers.
//! - [`chain`]: the birth and death chains with the real policies, the runtime roles of a
//!   test, the `lifeline` binary for process tests.
//! - [`nats`]: the shared NATS server and unique streams, a private `nats-server` to stop and
//!   restart, the test policy handler; `src/bin/test_worker.rs`, a worker process to kill.
//! - `tests/store/`: the suite (appends, reads, subscriptions, the cqrs-es repository).

pub mod chain;
pub mod nats;

use std::future::Future;
use std::ops::Deref;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::Utc;
use lifeline_model::envelope::{EventMetadata, NewEvent, StreamId};
use lifeline_store::EventStore;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use uuid::Uuid;

/// The environment variable naming the PostgreSQL server the tests create databases on.
pub const POSTGRES_URL_VAR: &str = "LIFELINE_TEST_POSTGRES_URL";
/// The server used when [`POSTGRES_URL_VAR`] is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A store for one test. Dropping it removes its database (PostgreSQL: `DROP DATABASE ...
/// WITH (FORCE)`; SQLite: the temporary directory), also when the test panicked.
pub struct TestStore {
    store: EventStore,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres {
        admin: Box<PgConnectOptions>,
        database: String,
    },
    Sqlite {
        _directory: tempfile::TempDir,
    },
}

impl TestStore {
    pub fn store(&self) -> &EventStore {
        &self.store
    }
}

impl Deref for TestStore {
    type Target = EventStore;
    fn deref(&self) -> &EventStore {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin, database } = &self.cleanup else {
            return;
        };
        let admin = PgConnectOptions::clone(admin);
        let sql = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        // Drop cannot await: drop the database from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut connection = admin.connect().await?;
                connection.execute(sqlx::AssertSqlSafe(sql)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!(%database, "could not drop the test database");
        }
    }
}

/// A fresh, migrated PostgreSQL database named `lifeline_test_<uuid>` on the server of
/// `LIFELINE_TEST_POSTGRES_URL`. Panics, saying how to start PostgreSQL, if it cannot be reached.
pub async fn postgres_store() -> TestStore {
    let url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let admin = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|error| panic!("{POSTGRES_URL_VAR} is not a PostgreSQL url: {error}"));
    let shown = format!("{}:{}", admin.get_host(), admin.get_port());
    let mut connection = admin.connect().await.unwrap_or_else(|error| {
        panic!(
            "cannot reach PostgreSQL at {shown}: start it with `deploy/services.sh up` \
             (or set {POSTGRES_URL_VAR}): {error}"
        )
    });
    let database = format!("lifeline_test_{}", Uuid::new_v4().simple());
    connection
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await
        .unwrap_or_else(|error| panic!("cannot create database {database} at {shown}: {error}"));
    let cleanup = Cleanup::Postgres {
        admin: Box::new(admin.clone()),
        database: database.clone(),
    };
    let store = EventStore::connect_postgres(admin.database(&database), 16)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {database} at {shown}: {error}"));
    let test_store = TestStore { store, cleanup };
    test_store
        .migrate()
        .await
        .expect("migrate the PostgreSQL test database");
    test_store
}

/// A migrated SQLite store in a fresh temporary directory (in a subdirectory that does not
/// exist yet, so `connect` has to create it).
pub async fn sqlite_store() -> TestStore {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let path = directory.path().join("data").join("lifeline.db");
    let url = format!("sqlite:{}", path.display());
    let store = EventStore::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    store
        .migrate()
        .await
        .expect("migrate the SQLite test database");
    TestStore {
        store,
        cleanup: Cleanup::Sqlite {
            _directory: directory,
        },
    }
}

/// A new stream id `<kind>-<uuid>`.
pub fn new_stream(kind: &str) -> StreamId {
    StreamId::for_kind(kind, Uuid::new_v4()).expect("a valid stream id")
}

/// A new event with a fresh id and test metadata.
pub fn new_event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata::system("test", Uuid::new_v4(), None, Utc::now()),
    }
}

/// Polls `check` until it answers true, failing the test with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::task::yield_now().await;
        // A short pause between polls keeps the poller from starving the work it waits for;
        // the deadline, not this pause, decides the outcome.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs each named `async fn(EventStore)` of the calling module against both backends, as
/// `postgres::<name>` and `sqlite::<name>`, and once more on PostgreSQL with group commit, as
/// `postgres_grouped::<name>`.
#[macro_export]
macro_rules! backend_tests {
    ($($test:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let test_store = $crate::postgres_store().await;
                    super::$test(test_store.store().clone()).await;
                    test_store.close().await;
                }
            )+
        }
        mod postgres_grouped {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let test_store = $crate::postgres_store().await;
                    super::$test(test_store.store().clone().with_group_commit()).await;
                    test_store.close().await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let test_store = $crate::sqlite_store().await;
                    super::$test(test_store.store().clone()).await;
                    test_store.close().await;
                }
            )+
        }
    };
}
