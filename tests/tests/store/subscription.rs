//! Subscriptions: every event once, in stream order, under load; slow transactions are not
//! skipped; a restarted subscriber resumes from its checkpoint without loss or duplicate effect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lifeline_model::envelope::{
    ExpectedVersion, LogCursor, RecordedEvent, StreamId, StreamVersion,
};
use lifeline_store::{
    run_subscription, run_subscription_group, run_subscription_with, BackendKind, CheckpointMove,
    EventStore, StoreTransaction, Subscriber, SubscriberError, SubscriptionError,
    SubscriptionOptions, TransactionConnection, WakeUps,
};
use lifeline_tests::{backend_tests, eventually, new_event, new_stream};
use serde_json::json;
use tokio::sync::watch;

backend_tests!(
    subscriber_sees_every_event_once_while_writers_append,
    slow_transaction_is_delivered_not_skipped,
    restarted_subscriber_resumes_from_its_checkpoint,
    group_members_start_at_their_own_checkpoints_and_fail_together,
    subscriber_batches_prefer_index_scans,
    two_runners_of_one_subscriber_apply_each_event_once,
    checkpoints_advance_together_or_not_at_all,
    the_first_event_recorded_since_a_time_is_found_in_commit_order,
);

/// `first_recorded_since` answers the first event in commit order recorded at or after a time
/// (what the relay republishes from when its stream was lost), also when a later commit was
/// recorded earlier.
async fn the_first_event_recorded_since_a_time_is_found_in_commit_order(store: EventStore) {
    use chrono::{Duration as Span, SubsecRound, Utc};
    // Whole seconds: PostgreSQL keeps microseconds.
    let base = Utc::now().trunc_subsecs(0) - Span::days(40);
    assert_eq!(store.first_recorded_since(base).await.unwrap(), None);
    // Recorded at base + 0, 10, 20 and 30 days, then one at base + 5 days committed last.
    for days in [0, 10, 20, 30, 5] {
        let mut event = new_event("Probe", json!({ "days": days }));
        event.metadata.recorded_at = base + Span::days(days);
        store
            .append(&new_stream("probe"), ExpectedVersion::NoStream, &[event])
            .await
            .unwrap();
    }
    // The gap-free reader answers events up to the oldest transaction still running (other
    // tests' too, on PostgreSQL): wait until it answers all five.
    eventually(Duration::from_secs(30), "the five events readable", || {
        let store = store.clone();
        async move { store.read_all(LogCursor::START, 100).await.unwrap().len() == 5 }
    })
    .await;
    let cursors: Vec<LogCursor> = store
        .read_all(LogCursor::START, 100)
        .await
        .unwrap()
        .iter()
        .map(RecordedEvent::cursor)
        .collect();
    let since = |at| {
        let store = store.clone();
        async move { store.first_recorded_since(at).await.unwrap() }
    };
    assert_eq!(since(base - Span::days(1)).await, Some(cursors[0]));
    assert_eq!(since(base).await, Some(cursors[0]), "at the time itself");
    assert_eq!(since(base + Span::microseconds(1)).await, Some(cursors[1]));
    assert_eq!(
        since(base + Span::days(5)).await,
        Some(cursors[1]),
        "the first in commit order, not the one recorded nearest"
    );
    assert_eq!(since(base + Span::days(20)).await, Some(cursors[2]));
    assert_eq!(since(base + Span::days(30)).await, Some(cursors[3]));
    assert_eq!(since(base + Span::days(31)).await, None);
}

/// Answers, for each event it handles, `enable_seqscan` as its batch's transaction sees it
/// (PostgreSQL; nothing on SQLite).
struct PlanProbe {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl Subscriber for PlanProbe {
    fn name(&self) -> &str {
        "plan-probe"
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        _event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        if let TransactionConnection::Postgres(connection) = tx.connection().unwrap() {
            let setting: String = sqlx::query_scalar("SELECT current_setting('enable_seqscan')")
                .fetch_one(connection)
                .await?;
            self.seen.lock().unwrap().push(setting);
        }
        Ok(())
    }
}

/// A subscriber's batch runs in a transaction that prefers index scans (its look-ups go by
/// key: a sequential scan of a growing projection table per batch is what this prevents), and
/// only that transaction: the setting does not leak into the pool's next user.
async fn subscriber_batches_prefer_index_scans(store: EventStore) {
    let stream = new_stream("probe");
    append_steps(&store, &stream, 0, 3).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut probe = PlanProbe {
        seen: Arc::clone(&seen),
    };
    let (shutdown, stop) = watch::channel(false);
    let subscription = {
        let store = store.clone();
        tokio::spawn(async move { run_subscription(&store, &mut probe, stop).await })
    };
    let end = last_cursor(&store, 3).await;
    await_checkpoint(
        &store,
        "plan-probe",
        end,
        Duration::from_secs(30),
        "the probe's 3 events",
    )
    .await;
    shutdown.send(true).unwrap();
    subscription.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    match store.backend() {
        BackendKind::Postgres => {
            assert_eq!(seen, vec!["off"; 3]);
            let pool = store.postgres_pool().unwrap();
            let after: String = sqlx::query_scalar("SELECT current_setting('enable_seqscan')")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(after, "on", "SET LOCAL ends with the batch's transaction");
        }
        BackendKind::Sqlite => assert!(seen.is_empty()),
    }
}

/// Records every event it handles as a row of `seen` (the effect, in the subscription's
/// transaction: a duplicate would break the primary key), and checks each stream's versions
/// arrive in order.
struct Recorder {
    name: String,
    last_versions: HashMap<String, i64>,
    handled: Arc<AtomicUsize>,
    fail_at: Option<usize>,
    /// The table its effects go to (`seen` unless told otherwise).
    table: &'static str,
}

impl Recorder {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last_versions: HashMap::new(),
            handled: Arc::new(AtomicUsize::new(0)),
            fail_at: None,
            table: "seen",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RecorderError(String);

#[async_trait]
impl Subscriber for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        let handled = self.handled.load(Ordering::SeqCst);
        if self.fail_at == Some(handled) {
            return Err(SubscriberError::failed(RecorderError(
                "told to fail".to_owned(),
            )));
        }
        let last = self
            .last_versions
            .entry(event.stream_id.to_string())
            .or_insert(0);
        if event.stream_version.0 != *last + 1 {
            return Err(SubscriberError::failed(RecorderError(format!(
                "{} version {} after {}",
                event.stream_id, event.stream_version.0, last
            ))));
        }
        *last = event.stream_version.0;
        let sql = format!(
            "INSERT INTO {} (event_id, stream_id, stream_version) VALUES ($1, $2, $3)",
            self.table
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let event_id = event.event_id.to_string();
        let stream_id = event.stream_id.to_string();
        match tx.connection().unwrap() {
            TransactionConnection::Postgres(connection) => {
                sqlx::query(sql)
                    .bind(event_id)
                    .bind(stream_id)
                    .bind(event.stream_version.0)
                    .execute(connection)
                    .await?;
            }
            TransactionConnection::Sqlite(connection) => {
                sqlx::query(sql)
                    .bind(event_id)
                    .bind(stream_id)
                    .bind(event.stream_version.0)
                    .execute(connection)
                    .await?;
            }
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn create_seen_table(store: &EventStore) {
    create_table(store, "seen").await;
}

async fn create_table(store: &EventStore, table: &str) {
    execute(
        store,
        format!(
            "CREATE TABLE {table} (event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, \
             stream_version BIGINT NOT NULL)"
        ),
    )
    .await;
}

/// Runs one statement of the test's own in a transaction of its own, on either backend.
async fn execute(store: &EventStore, sql: String) {
    let sql = sqlx::AssertSqlSafe(sql);
    let mut tx = store.begin().await.unwrap();
    match tx.connection().unwrap() {
        TransactionConnection::Postgres(connection) => {
            sqlx::query(sql).execute(connection).await.unwrap();
        }
        TransactionConnection::Sqlite(connection) => {
            sqlx::query(sql).execute(connection).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
}

async fn seen_rows(store: &EventStore) -> i64 {
    rows_in(store, "seen").await
}

async fn rows_in(store: &EventStore, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    let mut tx = store.begin().await.unwrap();
    let count = match tx.connection().unwrap() {
        TransactionConnection::Postgres(connection) => {
            sqlx::query_scalar(sql).fetch_one(connection).await.unwrap()
        }
        TransactionConnection::Sqlite(connection) => {
            sqlx::query_scalar(sql).fetch_one(connection).await.unwrap()
        }
    };
    tx.rollback().await.unwrap();
    count
}

/// Appends `count` `Step` events numbered from `from` to `stream`, one append each.
async fn append_steps(store: &EventStore, stream: &StreamId, from: usize, count: usize) {
    for n in from..from + count {
        store
            .append(
                stream,
                ExpectedVersion::Any,
                &[new_event("Step", json!({ "n": n }))],
            )
            .await
            .unwrap();
    }
}

/// The cursor of the last event once `total` events are readable: on PostgreSQL the global
/// reader may be held back for a while by transactions still running (also other tests').
/// Waits (at most `within`) until `subscriber`'s checkpoint is at `end`.
async fn await_checkpoint(
    store: &EventStore,
    subscriber: &str,
    end: LogCursor,
    within: Duration,
    what: &str,
) {
    eventually(within, what, || {
        let store = store.clone();
        async move { store.load_checkpoint(subscriber).await.unwrap() == end }
    })
    .await;
}

/// Waits for every writer, then (at most 120 s) until `subscriber`'s checkpoint is at the last
/// of the `total` events they appended.
async fn await_writers_then_checkpoint(
    store: &EventStore,
    writers: Vec<tokio::task::JoinHandle<()>>,
    total: usize,
    subscriber: &str,
    what: &str,
) {
    for writer in writers {
        writer.await.unwrap();
    }
    let end = last_cursor(store, total).await;
    await_checkpoint(store, subscriber, end, Duration::from_secs(120), what).await;
}

async fn last_cursor(store: &EventStore, total: usize) -> LogCursor {
    let end = std::sync::Mutex::new(LogCursor::START);
    eventually(Duration::from_secs(30), "all events readable", || {
        let store = store.clone();
        let end = &end;
        async move {
            let mut cursor = LogCursor::START;
            let mut count = 0;
            loop {
                let page = store.read_all(cursor, 1000).await.unwrap();
                let Some(last) = page.last() else { break };
                cursor = last.cursor();
                count += page.len();
            }
            *end.lock().unwrap() = cursor;
            count == total
        }
    })
    .await;
    end.into_inner().unwrap()
}

/// A running subscription: its shutdown switch and the task that hands the subscriber back.
type Running = (
    watch::Sender<bool>,
    tokio::task::JoinHandle<(Recorder, Result<(), SubscriptionError>)>,
);

fn spawn_subscription(
    store: &EventStore,
    mut subscriber: Recorder,
    options: SubscriptionOptions,
) -> Running {
    let (shutdown, stop) = watch::channel(false);
    let store = store.clone();
    let task = tokio::spawn(async move {
        let result = run_subscription_with(&store, &mut subscriber, stop, options).await;
        (subscriber, result)
    });
    (shutdown, task)
}

/// Counts, per event, how many times its effect was applied: an upsert that adds one, so a
/// doubled effect shows as a count of 2 instead of failing on the key.
struct Tally;

#[async_trait]
impl Subscriber for Tally {
    fn name(&self) -> &str {
        "tally"
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        let sql = "INSERT INTO tally (event_id, times) VALUES ($1, 1) \
                   ON CONFLICT (event_id) DO UPDATE SET times = tally.times + 1";
        let event_id = event.event_id.to_string();
        match tx.connection().unwrap() {
            TransactionConnection::Postgres(connection) => {
                sqlx::query(sql).bind(event_id).execute(connection).await?;
            }
            TransactionConnection::Sqlite(connection) => {
                sqlx::query(sql).bind(event_id).execute(connection).await?;
            }
        }
        Ok(())
    }
}

/// Two runners of one subscriber, in small batches while writers append: each often reads
/// from a checkpoint the other is about to move. Every event's effect is applied once: the
/// runner whose checkpoint moved rolls its batch back.
async fn two_runners_of_one_subscriber_apply_each_event_once(store: EventStore) {
    const WRITERS: usize = 4;
    const EVENTS_PER_WRITER: usize = 300;
    execute(
        &store,
        "CREATE TABLE tally (event_id TEXT PRIMARY KEY, times BIGINT NOT NULL)".to_owned(),
    )
    .await;
    let options = SubscriptionOptions {
        batch_size: 7,
        ..SubscriptionOptions::default()
    };
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (shutdown, stop) = watch::channel(false);
            let store = store.clone();
            let task = tokio::spawn(async move {
                run_subscription_with(&store, &mut Tally, stop, options).await
            });
            (shutdown, task)
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = new_stream(&format!("tally{writer}"));
                append_steps(&store, &stream, 0, EVENTS_PER_WRITER).await;
            })
        })
        .collect();
    let total = WRITERS * EVENTS_PER_WRITER;
    await_writers_then_checkpoint(&store, writers, total, "tally", "the runners to catch up").await;
    for (shutdown, task) in runners {
        shutdown.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        rows_in(&store, "tally").await,
        i64::try_from(total).unwrap()
    );
    assert_eq!(
        rows_in(&store, "tally WHERE times <> 1").await,
        0,
        "an event's effect was applied more than once"
    );
}

async fn subscriber_sees_every_event_once_while_writers_append(store: EventStore) {
    const WRITERS: usize = 8;
    const EVENTS_PER_WRITER: usize = 2_000;
    const STREAMS_PER_WRITER: usize = 10;
    create_seen_table(&store).await;
    let recorder = Recorder::new("load");
    let handled = recorder.handled.clone();
    let (shutdown, subscription) =
        spawn_subscription(&store, recorder, SubscriptionOptions::default());

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let streams: Vec<_> = (0..STREAMS_PER_WRITER)
                    .map(|_| new_stream(&format!("load{writer}")))
                    .collect();
                let mut versions = [0_i64; STREAMS_PER_WRITER];
                for n in 0..EVENTS_PER_WRITER {
                    let slot = n % STREAMS_PER_WRITER;
                    let expected = ExpectedVersion::Exact(StreamVersion(versions[slot]));
                    let event = new_event("Loaded", json!({ "writer": writer, "n": n }));
                    let outcome = store
                        .append(&streams[slot], expected, &[event])
                        .await
                        .unwrap();
                    versions[slot] = outcome.stream_version.0;
                }
            })
        })
        .collect();
    let total = WRITERS * EVENTS_PER_WRITER;
    await_writers_then_checkpoint(&store, writers, total, "load", "the subscriber to catch up")
        .await;
    shutdown.send(true).unwrap();
    let (_, result) = subscription.await.unwrap();
    result.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), total);
    assert_eq!(seen_rows(&store).await, i64::try_from(total).unwrap());
}

async fn slow_transaction_is_delivered_not_skipped(store: EventStore) {
    create_seen_table(&store).await;
    let recorder = Recorder::new("slow");
    let (shutdown, subscription) = spawn_subscription(
        &store,
        recorder,
        SubscriptionOptions {
            batch_size: 5,
            ..SubscriptionOptions::default()
        },
    );

    let slow_stream = new_stream("slow");
    let slow_event = new_event("Slow", json!({}));
    let mut slow_tx = store.begin().await.unwrap();
    let slow = slow_tx
        .append(
            &slow_stream,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&slow_event),
        )
        .await
        .unwrap();

    let quick: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &new_stream("quick"),
                        ExpectedVersion::NoStream,
                        &[new_event("Quick", json!({ "n": n }))],
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    if store.backend() == BackendKind::Postgres {
        // Others keep committing, at later positions, while the slow transaction is open...
        for task in quick {
            let outcome = task.await.unwrap();
            assert!(outcome.first_position > slow.first_position);
        }
        // ...and a reader of the global log does not run past the slow transaction.
        let visible = store.read_all(LogCursor::START, 100).await.unwrap();
        assert!(visible
            .iter()
            .all(|event| event.global_position < slow.first_position));
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow_tx.commit().await.unwrap();
    } else {
        // SQLite has one writer: the others wait for the slow transaction.
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow_tx.commit().await.unwrap();
        for task in quick {
            task.await.unwrap();
        }
    }

    eventually(
        Duration::from_secs(30),
        "all 21 events to be handled",
        || {
            let store = store.clone();
            async move { seen_rows(&store).await == 21 }
        },
    )
    .await;
    shutdown.send(true).unwrap();
    let (recorder, result) = subscription.await.unwrap();
    result.unwrap();
    assert_eq!(recorder.handled.load(Ordering::SeqCst), 21);
    assert!(recorder.last_versions.contains_key(slow_stream.as_str()));
}

async fn restarted_subscriber_resumes_from_its_checkpoint(store: EventStore) {
    create_seen_table(&store).await;
    let stream = new_stream("resume");
    let append_batch = |from: usize| append_steps(&store, &stream, from, 50);
    let options = SubscriptionOptions {
        batch_size: 10,
        ..SubscriptionOptions::default()
    };
    append_batch(0).await;

    // A first run that fails on its 26th event (after 25 handled): batches before it stay,
    // its batch rolls back.
    let mut failing = Recorder::new("resume");
    failing.fail_at = Some(25);
    let (shutdown, task) = spawn_subscription(&store, failing, options);
    let (_, result) = task.await.unwrap();
    drop(shutdown);
    let error = result.unwrap_err();
    assert!(
        matches!(error, SubscriptionError::Handler { .. }),
        "{error}"
    );
    // Batches end where the global reader stopped (on PostgreSQL, other transactions can hold
    // it back), so count what the checkpoint covers rather than assume batch boundaries.
    let committed = store.load_checkpoint("resume").await.unwrap();
    let covered = store
        .read_all(LogCursor::START, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|event| event.cursor() <= committed)
        .count();
    let rows = seen_rows(&store).await;
    assert_eq!(rows, i64::try_from(covered).unwrap());
    // At most the 25 events before the failing one: a batch may end right before it (the
    // global reader stops where other transactions hold it back).
    assert!(rows <= 25, "the failing batch was rolled back");

    // A second run takes it to the end of the first 50, then stops.
    let mut second = Recorder::new("resume");
    second.last_versions.insert(stream.to_string(), rows);
    let (shutdown, task) = spawn_subscription(&store, second, options);
    let end = last_cursor(&store, 50).await;
    await_checkpoint(
        &store,
        "resume",
        end,
        Duration::from_secs(30),
        "the first 50 events",
    )
    .await;
    shutdown.send(true).unwrap();
    let (second, result) = task.await.unwrap();
    result.unwrap();
    assert_eq!(second.handled.load(Ordering::SeqCst), 50 - covered);

    // 50 more while it is stopped; a third run resumes and handles only those.
    append_batch(50).await;
    let mut third = Recorder::new("resume");
    third.last_versions = second.last_versions;
    let (shutdown, stop) = watch::channel(false);
    let subscription = {
        let store = store.clone();
        tokio::spawn(async move {
            let result = run_subscription(&store, &mut third, stop).await;
            (third, result)
        })
    };
    let end = last_cursor(&store, 100).await;
    await_checkpoint(
        &store,
        "resume",
        end,
        Duration::from_secs(30),
        "the next 50 events",
    )
    .await;
    shutdown.send(true).unwrap();
    let (third, result) = subscription.await.unwrap();
    result.unwrap();
    assert_eq!(third.handled.load(Ordering::SeqCst), 50);
    assert_eq!(seen_rows(&store).await, 100);
}

/// Runs `group` as a subscription group until every member's checkpoint is at the log's end
/// (`total` events), then stops it; the run must end without an error.
async fn run_group_until(
    store: &EventStore,
    mut group: Vec<Box<dyn Subscriber>>,
    options: SubscriptionOptions,
    total: usize,
) {
    let names: Vec<String> = group
        .iter()
        .map(|member| member.name().to_owned())
        .collect();
    let (shutdown, stop) = watch::channel(false);
    let running = {
        let store = store.clone();
        tokio::spawn(async move {
            let result = run_subscription_group(&store, &mut group, stop, options).await;
            (group, result)
        })
    };
    let end = last_cursor(store, total).await;
    eventually(
        Duration::from_secs(30),
        &format!("every member at {total}"),
        || {
            let (store, names) = (store.clone(), names.clone());
            async move {
                for name in &names {
                    if store.load_checkpoint(name).await.unwrap() != end {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    shutdown.send(true).unwrap();
    let (_group, result) = running.await.unwrap();
    result.unwrap();
}

/// A group of subscribers whose checkpoints differ: one read per batch, each member handles only
/// what follows its own checkpoint, every event once; a member's failure rolls the batch back
/// for all and the error names it.
async fn group_members_start_at_their_own_checkpoints_and_fail_together(store: EventStore) {
    create_table(&store, "seen").await;
    create_table(&store, "seen_b").await;
    let stream = new_stream("group");
    let append = |from: usize, count: usize| append_steps(&store, &stream, from, count);
    let options = SubscriptionOptions {
        batch_size: 7,
        ..SubscriptionOptions::default()
    };
    // "ahead" handles the first 30 alone.
    append(0, 30).await;
    let (shutdown, task) = spawn_subscription(&store, Recorder::new("ahead"), options);
    let end = last_cursor(&store, 30).await;
    await_checkpoint(&store, "ahead", end, Duration::from_secs(30), "ahead at 30").await;
    shutdown.send(true).unwrap();
    let (ahead, result) = task.await.unwrap();
    result.unwrap();

    // Then, with 30 more, the two run as a group: "behind" starts from the beginning.
    append(30, 30).await;
    let mut ahead_again = Recorder::new("ahead");
    ahead_again.last_versions = ahead.last_versions;
    let mut behind = Recorder::new("behind");
    behind.table = "seen_b";
    let (ahead_handled, behind_handled) = (ahead_again.handled.clone(), behind.handled.clone());
    let group: Vec<Box<dyn Subscriber>> = vec![Box::new(ahead_again), Box::new(behind)];
    run_group_until(&store, group, options, 60).await;
    assert_eq!(ahead_handled.load(Ordering::SeqCst), 30);
    assert_eq!(behind_handled.load(Ordering::SeqCst), 60);
    assert_eq!(rows_in(&store, "seen").await, 60);
    assert_eq!(rows_in(&store, "seen_b").await, 60);

    // A member that fails stops the group; its batch is rolled back for both members.
    append(60, 10).await;
    let end = last_cursor(&store, 70).await;
    let mut ahead = Recorder::new("ahead");
    let mut behind = Recorder::new("behind");
    behind.table = "seen_b";
    behind.fail_at = Some(3);
    // Versions continue from 60 (the stream's events so far).
    ahead.last_versions.insert(stream.to_string(), 60);
    behind.last_versions.insert(stream.to_string(), 60);
    let mut group: Vec<Box<dyn Subscriber>> = vec![Box::new(ahead), Box::new(behind)];
    let (_shutdown, stop) = watch::channel(false);
    let error = run_subscription_group(&store, &mut group, stop, options)
        .await
        .unwrap_err();
    match &error {
        SubscriptionError::Handler { subscriber, .. } => assert_eq!(subscriber, "behind"),
        other => panic!("expected the member's failure, got {other}"),
    }
    let ahead_at = store.load_checkpoint("ahead").await.unwrap();
    assert_eq!(ahead_at, store.load_checkpoint("behind").await.unwrap());
    assert!(ahead_at < end, "the failing batch moved a checkpoint");
    assert_eq!(
        rows_in(&store, "seen").await,
        rows_in(&store, "seen_b").await
    );
    assert!(rows_in(&store, "seen_b").await <= 63);
}

/// The `LISTEN` connections open on the test database.
async fn listeners(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The readers of one store share one `LISTEN` connection, another process's append wakes
/// every one of them, and the connection closes once no reader waits any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_share_one_listener_and_hear_other_processes() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store().clone();
    let pool = store.postgres_pool().unwrap().clone();
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(WakeUps::new(&store).await);
    }
    eventually(Duration::from_secs(10), "one LISTEN connection", || async {
        listeners(&pool).await == 1
    })
    .await;
    let (_stop, mut shutdown) = watch::channel(false);
    let poll = Duration::from_secs(60);
    // Once connected, the listener wakes every reader once (notifications may have been missed
    // before it listened), a moment after its `LISTEN` shows in `pg_stat_activity`. The readers
    // mark that wake-up seen below; a pause lets it come first, so that it is not taken for one
    // without an append (under load it came after the mark, once in CI).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for reader in &mut readers {
        reader.mark_seen();
        // Nothing was appended: no wake-up.
        let waited =
            tokio::time::timeout(Duration::from_millis(300), reader.wait(&mut shutdown, poll));
        assert!(waited.await.is_err(), "a reader woke without an append");
        reader.mark_seen();
    }

    // Another process: a store of its own on the same database.
    let other = EventStore::connect_postgres((*pool.connect_options()).clone(), 2)
        .await
        .unwrap();
    other
        .append(
            &new_stream("elsewhere"),
            ExpectedVersion::NoStream,
            &[new_event("Happened", json!({}))],
        )
        .await
        .unwrap();
    for reader in &mut readers {
        let waited = tokio::time::timeout(Duration::from_secs(5), reader.wait(&mut shutdown, poll));
        assert_eq!(
            waited.await,
            Ok(false),
            "every reader is woken by the other process's append"
        );
    }
    other.close().await;

    drop(readers);
    eventually(Duration::from_secs(10), "the listener to close", || async {
        listeners(&pool).await == 0
    })
    .await;
    test_store.close().await;
}

/// Folds every event in `handle` and writes its rows in `end_batch`, as the projections do; in
/// `prepare_batch` and every `handle` it notes whether the transaction already holds a
/// transaction id (PostgreSQL's `txid_current_if_assigned()`).
struct DeferredWriter {
    name: String,
    table: &'static str,
    held: Vec<(String, String, i64)>,
    /// Each fold step: true if the transaction already had a transaction id.
    folded_with_xid: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl DeferredWriter {
    async fn note_xid(&self, tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        let TransactionConnection::Postgres(connection) = tx.connection().unwrap() else {
            unreachable!("a PostgreSQL test");
        };
        let assigned: Option<i64> =
            sqlx::query_scalar("SELECT txid_current_if_assigned()::text::bigint")
                .fetch_one(connection)
                .await?;
        self.folded_with_xid
            .lock()
            .unwrap()
            .push(assigned.is_some());
        Ok(())
    }
}

#[async_trait]
impl Subscriber for DeferredWriter {
    fn name(&self) -> &str {
        &self.name
    }

    fn begin_batch(&mut self) {
        self.held.clear();
    }

    async fn prepare_batch(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        _events: &[RecordedEvent],
    ) -> Result<(), SubscriberError> {
        self.note_xid(tx).await
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        self.note_xid(tx).await?;
        self.held.push((
            event.event_id.to_string(),
            event.stream_id.to_string(),
            event.stream_version.0,
        ));
        Ok(())
    }

    async fn end_batch(&mut self, tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        let TransactionConnection::Postgres(connection) = tx.connection().unwrap() else {
            unreachable!("a PostgreSQL test");
        };
        let sql = format!(
            "INSERT INTO {} (event_id, stream_id, stream_version) VALUES ($1, $2, $3)",
            self.table
        );
        for (event_id, stream_id, version) in self.held.drain(..) {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(event_id)
                .bind(stream_id)
                .bind(version)
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

/// In a group every member folds before any member writes: no member's look-ups run in a
/// transaction that already holds a transaction id (which would hold back every gap-free reader
/// of the log until the commit). With the members run one after the other, the second one's
/// look-ups ran after the first one's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_members_fold_before_any_member_writes() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store().clone();
    create_table(&store, "seen").await;
    create_table(&store, "seen_b").await;
    let stream = new_stream("group-phases");
    append_steps(&store, &stream, 0, 40).await;
    let folded_with_xid = Arc::new(std::sync::Mutex::new(Vec::new()));
    let member = |name: &str, table| DeferredWriter {
        name: name.to_owned(),
        table,
        held: Vec::new(),
        folded_with_xid: Arc::clone(&folded_with_xid),
    };
    let group: Vec<Box<dyn Subscriber>> = vec![
        Box::new(member("first", "seen")),
        Box::new(member("second", "seen_b")),
    ];
    let options = SubscriptionOptions {
        batch_size: 9,
        ..SubscriptionOptions::default()
    };
    run_group_until(&store, group, options, 40).await;
    assert_eq!(rows_in(&store, "seen").await, 40);
    assert_eq!(rows_in(&store, "seen_b").await, 40);
    let folded = folded_with_xid.lock().unwrap().clone();
    // Each member: one look-up per batch (5 batches of at most 9) and one per event.
    assert!(
        folded.len() >= 2 * (40 + 5),
        "{} fold steps noted",
        folded.len()
    );
    assert!(
        folded.iter().all(|with_xid| !with_xid),
        "{} of {} fold steps ran holding a transaction id",
        folded.iter().filter(|with_xid| **with_xid).count(),
        folded.len()
    );
}

/// A group's checkpoints move and commit in one call (one message on PostgreSQL), stored ones
/// and new ones alike; when another runner moved one of them, the call says so and rolls back:
/// no checkpoint moves, and the transaction's own writes are gone too.
async fn checkpoints_advance_together_or_not_at_all(store: EventStore) {
    create_table(&store, "advanced").await;
    let cursor = |n: i64| LogCursor {
        transaction_id: n,
        global_position: n,
    };
    let names = [
        new_stream("ckpt-a").to_string(),
        new_stream("ckpt-b").to_string(),
    ];
    let moves = |from: LogCursor, to: LogCursor| -> Vec<CheckpointMove<'_>> {
        names
            .iter()
            .map(|name| CheckpointMove {
                subscriber: name,
                from,
                to,
            })
            .collect()
    };
    let at = |expected: [LogCursor; 2]| {
        let store = store.clone();
        let names = names.clone();
        async move {
            for (name, expected) in names.iter().zip(expected) {
                assert_eq!(
                    store.load_checkpoint(name).await.unwrap(),
                    expected,
                    "{name}"
                );
            }
        }
    };
    // Not stored yet: created, with the transaction's own write.
    assert!(write_and_advance(&store, 1, &moves(LogCursor::START, cursor(5))).await);
    at([cursor(5), cursor(5)]).await;
    assert_eq!(rows_in(&store, "advanced").await, 1);
    // Stored: moved together, committed.
    assert!(write_and_advance(&store, 2, &moves(cursor(5), cursor(9))).await);
    at([cursor(9), cursor(9)]).await;
    assert_eq!(rows_in(&store, "advanced").await, 2);
    // Another runner moved the second: refused, rolled back (the first did not move, the row
    // is not there).
    let mut other = store.begin().await.unwrap();
    other.save_checkpoint(&names[1], cursor(12)).await.unwrap();
    other.commit().await.unwrap();
    assert!(!write_and_advance(&store, 3, &moves(cursor(9), cursor(15))).await);
    at([cursor(9), cursor(12)]).await;
    assert_eq!(rows_in(&store, "advanced").await, 2);
    // Nothing to move: committed.
    assert!(write_and_advance(&store, 4, &[]).await);
    assert_eq!(rows_in(&store, "advanced").await, 3);
}

/// Inserts row `row` into table `advanced` and commits with `moves`: what `commit_advancing`
/// answered.
async fn write_and_advance(store: &EventStore, row: i64, moves: &[CheckpointMove<'_>]) -> bool {
    let mut tx = store.begin_keyed().await.unwrap();
    insert_row(&mut tx, "advanced", row).await;
    tx.commit_advancing(moves).await.unwrap()
}

/// Inserts row `n` into `table` (made by `create_table`) in `tx`, on either backend.
async fn insert_row(tx: &mut StoreTransaction<'_>, table: &str, n: i64) {
    let sql = sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (event_id, stream_id, stream_version) VALUES ($1, 'test', $2)"
    ));
    match tx.connection().unwrap() {
        TransactionConnection::Postgres(connection) => {
            sqlx::query(sql)
                .bind(n.to_string())
                .bind(n)
                .execute(connection)
                .await
                .unwrap();
        }
        TransactionConnection::Sqlite(connection) => {
            sqlx::query(sql)
                .bind(n.to_string())
                .bind(n)
                .execute(connection)
                .await
                .unwrap();
        }
    }
}

/// One value of `sql` (a query of the test's own) read on a connection of `store`, outside any
/// transaction of the test's.
async fn scalar_on<T>(store: &EventStore, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut tx = store.begin().await.unwrap();
    let TransactionConnection::Postgres(connection) = tx.connection().unwrap() else {
        unreachable!("a PostgreSQL test");
    };
    let value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(connection)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    value
}

/// On PostgreSQL the checkpoints of a batch go in one message with its `COMMIT`
/// (`lifeline_advance_checkpoints`), and its connection goes back to the pool outside any
/// transaction, whether the message committed or was refused. Checked on a store of one
/// connection that counts its PL/pgSQL calls (`track_functions`).
#[tokio::test]
async fn checkpoints_go_with_the_commit_and_leave_the_connection_idle() {
    let test_store = lifeline_tests::postgres_store().await;
    let database: String = scalar_on(test_store.store(), "SELECT current_database()::text").await;
    let url = std::env::var(lifeline_tests::POSTGRES_URL_VAR)
        .unwrap_or_else(|_| lifeline_tests::DEFAULT_POSTGRES_URL.to_owned());
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)
        .unwrap()
        .database(&database)
        .options([("track_functions", "pl")]);
    let store = EventStore::connect_postgres(options, 1).await.unwrap();
    let pid: i32 = scalar_on(&store, "SELECT pg_backend_pid()").await;
    let cursor = |n: i64| LogCursor {
        transaction_id: n,
        global_position: n,
    };
    let name = "projection-probe";
    let one = |from, to| {
        [CheckpointMove {
            subscriber: name,
            from,
            to,
        }]
    };
    let calls = || async {
        // The counts this connection reported (it reports them when idle, or when asked to).
        let _: bool = scalar_on(&store, "SELECT pg_stat_force_next_flush() IS NULL").await;
        scalar_on::<i64>(
            test_store.store(),
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions \
             WHERE funcname = 'lifeline_advance_checkpoints'",
        )
        .await
    };
    let idle = || async {
        scalar_on::<String>(
            test_store.store(),
            &format!("SELECT coalesce(state, '-') FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await
    };
    // A first batch (no checkpoint stored yet) goes statement by statement.
    let tx = store.begin_keyed().await.unwrap();
    assert!(tx
        .commit_advancing(&one(LogCursor::START, cursor(5)))
        .await
        .unwrap());
    assert_eq!(idle().await, "idle");
    // A stored checkpoint goes with the commit: the function ran, and nothing is left open.
    let tx = store.begin_keyed().await.unwrap();
    assert!(tx
        .commit_advancing(&one(cursor(5), cursor(9)))
        .await
        .unwrap());
    assert_eq!(idle().await, "idle");
    eventually(
        Duration::from_secs(10),
        "the function's call counted",
        || async { calls().await >= 1 },
    )
    .await;
    assert_eq!(store.load_checkpoint(name).await.unwrap(), cursor(9));
    // Refused (the checkpoint is not at 5 any more): rolled back, the connection idle.
    let tx = store.begin_keyed().await.unwrap();
    assert!(!tx
        .commit_advancing(&one(cursor(5), cursor(12)))
        .await
        .unwrap());
    assert_eq!(idle().await, "idle");
    assert_eq!(store.load_checkpoint(name).await.unwrap(), cursor(9));
    assert_eq!(
        scalar_on::<i32>(&store, "SELECT pg_backend_pid()").await,
        pid
    );
}
