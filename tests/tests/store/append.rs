//! Appends: expected versions, conflicts under concurrency, idempotency by event id, reads.

use std::sync::Arc;
use std::time::Duration;

use lifeline_model::envelope::{ExpectedVersion, LogCursor, NewEvent, StreamId, StreamVersion};
use lifeline_store::{AppendError, EventStore, TransactionConnection};
use lifeline_tests::{backend_tests, new_event, new_stream};
use serde_json::json;
use tokio::sync::Barrier;

backend_tests!(
    concurrent_appends_at_one_version_let_exactly_one_win,
    reappending_stored_event_ids_returns_the_original_positions,
    concurrent_appends_of_one_event_id_store_it_once,
    expected_versions_are_checked,
    streams_and_the_global_log_read_in_order,
    a_read_with_some_payloads_leaves_out_only_the_others,
    event_rows_cannot_be_updated_or_deleted,
    a_storm_of_mixed_appends_is_answered_as_one_at_a_time,
    appends_of_a_transaction_grouped_are_answered_one_by_one,
    a_refused_new_stream_leaves_the_transaction_usable,
    a_held_stream_takes_no_append_until_its_holder_ends,
    new_tasks_inbox_rows_go_with_the_group_that_creates_their_streams,
    a_whole_group_is_stored_whole_or_not_at_all,
);

async fn concurrent_appends_at_one_version_let_exactly_one_win(store: EventStore) {
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(StreamVersion(1)),
    ] {
        let stream = new_stream("race");
        if expected != ExpectedVersion::NoStream {
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    &[new_event("Opened", json!({}))],
                )
                .await
                .unwrap();
        }
        let barrier = Arc::new(Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|writer| {
                let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let event = new_event("Raced", json!({ "writer": writer }));
                    store.append(&stream, expected, &[event]).await
                })
            })
            .collect();
        let mut wins = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(outcome) => {
                    assert!(!outcome.already_stored);
                    wins += 1;
                }
                Err(AppendError::Conflict {
                    stream: conflicted,
                    expected: seen_expected,
                    actual,
                }) => {
                    assert_eq!(conflicted, stream);
                    assert_eq!(seen_expected, expected);
                    assert!(actual.is_some(), "the stream exists once one append won");
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 31), "expected {expected:?}");
        let events = store.read_stream(&stream).await.unwrap();
        let versions: Vec<i64> = events.iter().map(|event| event.stream_version.0).collect();
        let expected_versions: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
        assert_eq!(
            versions, expected_versions,
            "no gap in the stream's versions"
        );
        assert_eq!(
            store.stream_version(&stream).await.unwrap(),
            Some(StreamVersion(i64::try_from(events.len()).unwrap()))
        );
    }
}

async fn reappending_stored_event_ids_returns_the_original_positions(store: EventStore) {
    let stream = new_stream("idem");
    let single = [new_event("One", json!({ "n": 1 }))];
    let first = store
        .append(&stream, ExpectedVersion::NoStream, &single)
        .await
        .unwrap();
    assert!(!first.already_stored);
    assert_eq!(first.first_position, first.last_position);
    // The same event id again, even with an expected version that no longer holds: a no-op.
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let again = store.append(&stream, expected, &single).await.unwrap();
        assert!(again.already_stored);
        assert_eq!(again.first_position, first.first_position);
        assert_eq!(again.stream_version, StreamVersion(1));
    }

    let batch = [
        new_event("Two", json!({ "n": 2 })),
        new_event("Three", json!({ "n": 3 })),
        new_event("Four", json!({ "n": 4 })),
    ];
    let stored = store
        .append(&stream, ExpectedVersion::Exact(StreamVersion(1)), &batch)
        .await
        .unwrap();
    assert_eq!(stored.stream_version, StreamVersion(4));
    let again = store
        .append(&stream, ExpectedVersion::Exact(StreamVersion(1)), &batch)
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(
        (
            again.first_position,
            again.last_position,
            again.stream_version
        ),
        (
            stored.first_position,
            stored.last_position,
            stored.stream_version
        )
    );
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 4);

    // Part of a batch stored, or stored elsewhere: not a no-op.
    let partial = [batch[0].clone(), new_event("Five", json!({}))];
    let error = store
        .append(&stream, ExpectedVersion::Any, &partial)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AppendError::EventIdMismatch {
                stored_count: 1,
                batch_len: 2,
                ..
            }
        ),
        "{error}"
    );
    let elsewhere = store
        .append(&new_stream("other"), ExpectedVersion::Any, &single)
        .await
        .unwrap_err();
    assert!(
        matches!(elsewhere, AppendError::EventIdMismatch { .. }),
        "{elsewhere}"
    );
    let reordered = [batch[1].clone(), batch[0].clone()];
    let error = store
        .append(&stream, ExpectedVersion::Any, &reordered)
        .await
        .unwrap_err();
    assert!(
        matches!(error, AppendError::EventIdMismatch { .. }),
        "{error}"
    );

    assert!(matches!(
        store.append(&stream, ExpectedVersion::Any, &[]).await,
        Err(AppendError::EmptyBatch)
    ));
    let twice = [single[0].clone(), single[0].clone()];
    assert!(matches!(
        store.append(&new_stream("dup"), ExpectedVersion::Any, &twice).await,
        Err(AppendError::DuplicateEventInBatch(id)) if id == single[0].event_id
    ));
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 4);
}

async fn concurrent_appends_of_one_event_id_store_it_once(store: EventStore) {
    for round in 0..20 {
        let expected = if round % 2 == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Any
        };
        let stream = new_stream("twin");
        let event = new_event("Twin", json!({ "round": round }));
        let batch = [event.clone(), new_event("TwinTail", json!({}))];
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (store, stream, barrier, batch) = (
                    store.clone(),
                    stream.clone(),
                    barrier.clone(),
                    batch.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append(&stream, expected, &batch).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        outcomes.sort_by_key(|outcome| outcome.already_stored);
        assert!(
            !outcomes[0].already_stored,
            "round {round}: one append stores"
        );
        assert!(
            outcomes[1].already_stored,
            "round {round}: the other finds it"
        );
        assert_eq!(outcomes[0].first_position, outcomes[1].first_position);
        assert_eq!(outcomes[0].last_position, outcomes[1].last_position);
        assert_eq!(store.read_stream(&stream).await.unwrap().len(), 2);
        let stored = store.event_by_id(event.event_id).await.unwrap().unwrap();
        assert_eq!(stored.global_position, outcomes[0].first_position);
    }
}

async fn expected_versions_are_checked(store: EventStore) {
    let missing = new_stream("missing");
    assert_eq!(store.stream_version(&missing).await.unwrap(), None);
    let error = store
        .append(
            &missing,
            ExpectedVersion::Exact(StreamVersion(3)),
            &[new_event("X", json!({}))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, AppendError::Conflict { actual: None, .. }),
        "{error}"
    );

    let stream = new_stream("versions");
    store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(0)),
            &[new_event("Created", json!({}))],
        )
        .await
        .unwrap();
    let error = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[new_event("X", json!({}))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            AppendError::Conflict {
                actual: Some(StreamVersion(1)),
                expected: ExpectedVersion::NoStream,
                ..
            }
        ),
        "{error}"
    );
    let error = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(5)),
            &[new_event("X", json!({}))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AppendError::Conflict {
                actual: Some(StreamVersion(1)),
                ..
            }
        ),
        "{error}"
    );
    let outcome = store
        .append(
            &stream,
            ExpectedVersion::Exact(StreamVersion(1)),
            &[new_event("Y", json!({})), new_event("Z", json!({}))],
        )
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(3));
    let outcome = store
        .append(&stream, ExpectedVersion::Any, &[new_event("W", json!({}))])
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(4));
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Some(StreamVersion(4))
    );
}

async fn streams_and_the_global_log_read_in_order(store: EventStore) {
    let streams = [new_stream("a"), new_stream("b"), new_stream("c")];
    let mut appended = Vec::new();
    for round in 0..5 {
        for stream in &streams {
            // The header's topic is a top-level `procedure` string, and nothing else.
            let payload = match round {
                0 => json!({ "round": round, "procedure": "birth-registration" }),
                1 => json!({ "round": round, "procedure": 7 }),
                2 => json!({ "round": round, "procedure": null }),
                3 => json!({ "round": round, "nested": { "procedure": "death-registration" } }),
                _ => json!({ "round": round }),
            };
            let event = new_event("Step", payload);
            appended.push(event.event_id);
            store
                .append(stream, ExpectedVersion::Any, &[event])
                .await
                .unwrap();
        }
    }
    for stream in &streams {
        let events = store.read_stream(stream).await.unwrap();
        let rounds: Vec<i64> = events
            .iter()
            .map(|event| event.payload["round"].as_i64().unwrap())
            .collect();
        assert_eq!(rounds, vec![0, 1, 2, 3, 4]);
        assert!(events.iter().all(|event| event.stream_id == *stream));
        let versions: Vec<i64> = events.iter().map(|event| event.stream_version.0).collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5]);
        let tail = store
            .read_stream_after(stream, StreamVersion(3))
            .await
            .unwrap();
        assert_eq!(tail.len(), 2);
    }

    // On PostgreSQL the global reader can be held back for a while by transactions still
    // running (also other tests'): an empty page means "nothing more for now".
    let mut cursor = LogCursor::START;
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read.len() < appended.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not become readable"
        );
        let page = store.read_all(cursor, 4).await.unwrap();
        let Some(last) = page.last() else {
            tokio::task::yield_now().await;
            continue;
        };
        assert!(page.len() <= 4);
        for event in &page {
            assert!(event.cursor() > cursor, "cursors strictly increase");
            cursor = event.cursor();
            read.push(event.event_id);
        }
        assert_eq!(cursor, last.cursor());
    }
    assert_eq!(
        read, appended,
        "the global log in commit order, each event once"
    );
    assert!(store.read_all(cursor, 10).await.unwrap().is_empty());

    // The headers alone (the relay's read): the same events, pages and cursors, field for field.
    let full = store
        .read_all(LogCursor::START, appended.len())
        .await
        .unwrap();
    let headers = store
        .read_all_headers(LogCursor::START, appended.len())
        .await
        .unwrap();
    let expected: Vec<_> = full.iter().map(|event| event.header()).collect();
    assert_eq!(headers, expected);
    let topics: Vec<Option<&str>> = headers
        .iter()
        .map(|header| header.topic.as_deref())
        .collect();
    let mut expected_topics = vec![Some("birth-registration"); 3];
    expected_topics.extend([None; 12]);
    assert_eq!(topics, expected_topics);
    assert_eq!(
        headers
            .iter()
            .map(|header| header.event_id)
            .collect::<Vec<_>>(),
        appended
    );
    let second_page = store
        .read_all_headers(headers[1].cursor(), 2)
        .await
        .unwrap();
    assert_eq!(second_page, expected[2..4].to_vec());
    assert!(store.read_all_headers(cursor, 10).await.unwrap().is_empty());

    let first = store.event_by_id(appended[0]).await.unwrap().unwrap();
    assert_eq!(first.stream_id, streams[0]);
    assert_eq!(first.metadata.actor, "test");
    assert!(store
        .event_by_id(uuid::Uuid::new_v4())
        .await
        .unwrap()
        .is_none());

    assert_eq!(
        store.load_checkpoint("reader").await.unwrap(),
        LogCursor::START
    );
    store
        .save_checkpoint("reader", first.cursor())
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("reader").await.unwrap(),
        first.cursor()
    );
}

/// `read_all_with_payloads_of` (the inbox projection's read): the same events, pages and
/// cursors as `read_all`, with the payloads of the types asked for and null for the others.
/// `read_all_payload_text` (the rebuild's read): the same events, each payload as its text.
async fn a_read_with_some_payloads_leaves_out_only_the_others(store: EventStore) {
    let stream = new_stream("mixed");
    let mut appended = Vec::new();
    for (round, event_type) in ["Wanted", "Other", "AlsoWanted", "Other", "Wanted"]
        .into_iter()
        .enumerate()
    {
        let event = new_event(event_type, json!({ "round": round, "name": "Nguyễn" }));
        appended.push(event.event_id);
        store
            .append(&stream, ExpectedVersion::Any, &[event])
            .await
            .unwrap();
    }
    // Readable once the gap-free horizon (which other tests' transactions hold back) passed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let full = loop {
        let full = store.read_all(LogCursor::START, 10).await.unwrap();
        if full.len() == appended.len() {
            break full;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not become readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let some = store
        .read_all_with_payloads_of(LogCursor::START, 10, &["Wanted", "AlsoWanted", "Absent"])
        .await
        .unwrap();
    assert_eq!(some.len(), full.len());
    for (some, full) in some.iter().zip(&full) {
        assert_eq!(some.header(), full.header());
        assert_eq!(some.metadata, full.metadata);
        assert_eq!(some.schema_version, full.schema_version);
        if full.event_type == "Other" {
            assert_eq!(some.payload, serde_json::Value::Null);
        } else {
            assert_eq!(some.payload, full.payload);
            assert_eq!(some.payload["name"], "Nguyễn");
        }
    }
    // Pages and cursors as `read_all`'s.
    let page = store
        .read_all_with_payloads_of(full[1].cursor(), 2, &["Other"])
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|event| event.event_id).collect::<Vec<_>>(),
        appended[2..4].to_vec()
    );
    assert_eq!(page[0].payload, serde_json::Value::Null);
    assert_eq!(page[1].payload, full[3].payload);
    // No type asked for: every payload left out, no event.
    let none = store
        .read_all_with_payloads_of(LogCursor::START, 10, &[])
        .await
        .unwrap();
    assert_eq!(none.len(), appended.len());
    assert!(none
        .iter()
        .all(|event| event.payload == serde_json::Value::Null));
    let texts = store
        .read_all_payload_text(LogCursor::START, 10)
        .await
        .unwrap();
    assert_eq!(texts.len(), full.len());
    for (text, full) in texts.iter().zip(&full) {
        assert_eq!(text.event.header(), full.header());
        assert_eq!(text.event.metadata, full.metadata);
        assert_eq!(text.event.payload, serde_json::Value::Null);
        let parsed: serde_json::Value = serde_json::from_str(&text.payload).unwrap();
        assert_eq!(parsed, full.payload);
    }
    let page = store
        .read_all_payload_text(full[1].cursor(), 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|text| text.event.event_id)
            .collect::<Vec<_>>(),
        appended[2..4].to_vec()
    );
}

async fn event_rows_cannot_be_updated_or_deleted(store: EventStore) {
    let stream = new_stream("immutable");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[new_event("Fixed", json!({}))],
        )
        .await
        .unwrap();
    for sql in [
        "UPDATE events SET event_type = 'Changed'",
        "DELETE FROM events",
    ] {
        let mut tx = store.begin().await.unwrap();
        let result = match tx.connection().unwrap() {
            TransactionConnection::Postgres(connection) => {
                sqlx::query(sql).execute(connection).await.map(|_| ())
            }
            TransactionConnection::Sqlite(connection) => {
                sqlx::query(sql).execute(connection).await.map(|_| ())
            }
        };
        let error = result.expect_err("the log is append-only");
        assert!(error.to_string().contains("append-only"), "{error}");
        tx.rollback().await.unwrap();
    }
    let events = store.read_stream(&stream).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "Fixed");
}

/// What one append of the storm expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Stored,
    AlreadyStored,
    Conflict,
    /// One of two racers for the same new stream: exactly one wins.
    Race,
}

/// 66 concurrent appends of every kind at once (on PostgreSQL with group commit they share
/// groups, so this drives the one-statement fast path and its careful fallbacks): new streams,
/// moves of existing ones, conflicts, idempotent re-sends, `Any` appends to one stream, and two
/// racers for one new stream. Each gets the answer it would get alone, the versions have no
/// gap, and the hash chain verifies.
async fn a_storm_of_mixed_appends_is_answered_as_one_at_a_time(store: EventStore) {
    let existing: Vec<_> = (0..8).map(|_| new_stream("storm-existing")).collect();
    for stream in &existing {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                &[new_event("Opened", json!({}))],
            )
            .await
            .unwrap();
    }
    let resent_stream = new_stream("storm-resent");
    let resent = vec![
        new_event("Opened", json!({ "n": 1 })),
        new_event("Moved", json!({ "n": 2 })),
    ];
    let original = store
        .append(&resent_stream, ExpectedVersion::NoStream, &resent)
        .await
        .unwrap();
    let shared = new_stream("storm-any");
    let contested = new_stream("storm-contested");

    let mut plan = Vec::new();
    for index in 0..24 {
        let events: Vec<_> = (0..=index % 2)
            .map(|n| new_event("Opened", json!({ "index": index, "n": n })))
            .collect();
        plan.push((
            new_stream("storm-new"),
            ExpectedVersion::NoStream,
            events,
            Expect::Stored,
        ));
    }
    for stream in &existing {
        let event = new_event("Moved", json!({}));
        plan.push((
            stream.clone(),
            ExpectedVersion::Exact(StreamVersion(1)),
            vec![event],
            Expect::Stored,
        ));
        let event = new_event("Moved", json!({ "stale": true }));
        plan.push((
            stream.clone(),
            ExpectedVersion::Exact(StreamVersion(7)),
            vec![event],
            Expect::Conflict,
        ));
    }
    for _ in 0..4 {
        plan.push((
            resent_stream.clone(),
            ExpectedVersion::NoStream,
            resent.clone(),
            Expect::AlreadyStored,
        ));
    }
    for index in 0..4 {
        let event = new_event("Touched", json!({ "index": index }));
        plan.push((
            shared.clone(),
            ExpectedVersion::Any,
            vec![event],
            Expect::Stored,
        ));
    }
    for index in 0..2 {
        let event = new_event("Opened", json!({ "racer": index }));
        plan.push((
            contested.clone(),
            ExpectedVersion::NoStream,
            vec![event],
            Expect::Race,
        ));
    }

    let barrier = Arc::new(Barrier::new(plan.len()));
    let tasks: Vec<_> = plan
        .iter()
        .cloned()
        .map(|(stream, expected, events, _)| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.append(&stream, expected, &events).await
            })
        })
        .collect();
    let mut race_wins = 0;
    let mut stored_events = 0;
    for ((stream, expected, events, expect), task) in plan.iter().zip(tasks) {
        let result = task.await.unwrap();
        match (expect, result) {
            (Expect::Stored, Ok(outcome)) | (Expect::Race, Ok(outcome))
                if !outcome.already_stored =>
            {
                let count = i64::try_from(events.len()).unwrap();
                assert!(
                    outcome.last_position.0 - outcome.first_position.0 >= count - 1,
                    "{stream}: positions {outcome:?} for {count} events"
                );
                if let ExpectedVersion::Exact(StreamVersion(version)) = expected {
                    assert_eq!(outcome.stream_version, StreamVersion(version + count));
                }
                if *expected == ExpectedVersion::NoStream {
                    assert_eq!(outcome.stream_version, StreamVersion(count));
                }
                if *expect == Expect::Race {
                    race_wins += 1;
                }
                stored_events += events.len();
            }
            (Expect::AlreadyStored, Ok(outcome)) => assert_eq!(
                outcome,
                lifeline_store::AppendOutcome {
                    already_stored: true,
                    ..original
                }
            ),
            (Expect::Conflict, Err(AppendError::Conflict { actual, .. })) => {
                assert!(
                    matches!(actual, Some(StreamVersion(1 | 2))),
                    "actual {actual:?}"
                );
            }
            (Expect::Race, Err(AppendError::Conflict { actual, .. })) => {
                assert_eq!(actual, Some(StreamVersion(1)));
            }
            (expect, result) => {
                panic!("{stream} {expected:?}: expected {expect:?}, got {result:?}")
            }
        }
    }
    assert_eq!(
        race_wins, 1,
        "exactly one racer creates the contested stream"
    );

    for (stream, expected_len) in existing.iter().map(|stream| (stream, 2)).chain([
        (&shared, 4),
        (&resent_stream, 2),
        (&contested, 1),
    ]) {
        let events = store.read_stream(stream).await.unwrap();
        let versions: Vec<i64> = events.iter().map(|event| event.stream_version.0).collect();
        assert_eq!(
            versions,
            (1..=expected_len).collect::<Vec<i64>>(),
            "{stream}"
        );
        assert_eq!(
            store.stream_version(stream).await.unwrap(),
            Some(StreamVersion(expected_len))
        );
    }
    // 8 openings + the re-sent batch before the storm, then what the storm stored.
    let total = 8 + 2 + stored_events;
    let report = lifeline_store::verify(&store, &lifeline_model::integrity::Keyring::default())
        .await
        .unwrap();
    assert_eq!(
        report.first_bad, None,
        "the hash chain verifies after the storm"
    );
    assert_eq!(report.events_checked, u64::try_from(total).unwrap());
}

/// `StoreTransaction::append_many` answers each append as `append` would have, one after
/// another, whether the group is written in one statement or some of it goes alone; and
/// `events_by_ids` and `read_streams` read back what the transaction stored.
async fn appends_of_a_transaction_grouped_are_answered_one_by_one(store: EventStore) {
    let existing = new_stream("grouped-existing");
    let earlier = new_event("Created", json!({"n": 0}));
    let stored = store
        .append(
            &existing,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&earlier),
        )
        .await
        .unwrap();

    // All new: one group.
    let (a, b) = (new_stream("grouped-a"), new_stream("grouped-b"));
    let (event_a, event_b) = (
        new_event("A", json!({"n": 1})),
        new_event("B", json!({"n": 2})),
    );
    let mut tx = store.begin().await.unwrap();
    let results = tx
        .append_many(&[creates(&a, &event_a), creates(&b, &event_b)])
        .await
        .unwrap();
    let outcomes: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(outcomes[0].stream_version, StreamVersion(1));
    assert_eq!(outcomes[1].stream_version, StreamVersion(1));
    assert!(outcomes[0].last_position < outcomes[1].first_position);
    assert!(!outcomes[0].already_stored && !outcomes[1].already_stored);
    let mut read = tx
        .events_by_ids(&[event_b.event_id, event_a.event_id, uuid::Uuid::now_v7()])
        .await
        .unwrap();
    read.sort_by_key(|event| event.global_position);
    assert_eq!(
        read.iter().map(|event| event.event_id).collect::<Vec<_>>(),
        vec![event_a.event_id, event_b.event_id]
    );
    tx.commit().await.unwrap();

    // Mixed: a new stream, a stream that exists where none is expected (a conflict), a
    // re-send of a stored event (answered as already stored), an exact version that fits.
    let c = new_stream("grouped-c");
    let event_c = new_event("C", json!({"n": 3}));
    let clash = new_event("Clash", json!({}));
    let next = new_event("Next", json!({"n": 4}));
    let mut tx = store.begin().await.unwrap();
    let results = tx
        .append_many(&[
            creates(&c, &event_c),
            creates(&a, &clash),
            creates(&existing, &earlier),
            (
                &b,
                ExpectedVersion::Exact(StreamVersion(1)),
                std::slice::from_ref(&next),
            ),
        ])
        .await
        .unwrap();
    // `read_streams` answers every stream asked for, as the transaction sees it, in version
    // order; a stream without events is answered empty.
    let nowhere = new_stream("grouped-nowhere");
    let read = tx.read_streams(&[&b, &c, &nowhere, &a]).await.unwrap();
    let ids = |stream: &StreamId| -> Vec<uuid::Uuid> {
        read[stream].iter().map(|event| event.event_id).collect()
    };
    assert_eq!(read.len(), 4);
    assert_eq!(ids(&b), vec![event_b.event_id, next.event_id]);
    assert_eq!(ids(&c), vec![event_c.event_id]);
    assert_eq!(ids(&a), vec![event_a.event_id]);
    assert!(ids(&nowhere).is_empty());
    assert_eq!(read[&b][1].stream_version, StreamVersion(2));
    tx.commit().await.unwrap();
    let mut results = results.into_iter();
    let outcome_c = results.next().unwrap().unwrap();
    assert_eq!(outcome_c.stream_version, StreamVersion(1));
    assert!(!outcome_c.already_stored);
    let error = results.next().unwrap().unwrap_err();
    assert!(
        matches!(
            &error,
            AppendError::Conflict {
                actual: Some(StreamVersion(1)),
                expected: ExpectedVersion::NoStream,
                ..
            }
        ),
        "{error}"
    );
    let again = results.next().unwrap().unwrap();
    assert!(again.already_stored);
    assert_eq!(again.first_position, stored.first_position);
    let outcome_next = results.next().unwrap().unwrap();
    assert_eq!(outcome_next.stream_version, StreamVersion(2));

    // What was stored, and only that.
    let in_a = store.read_stream(&a).await.unwrap();
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_a[0].event_id, event_a.event_id);
    let in_b = store.read_stream(&b).await.unwrap();
    assert_eq!(
        in_b.iter().map(|event| event.event_id).collect::<Vec<_>>(),
        vec![event_b.event_id, next.event_id]
    );
    assert_eq!(store.read_stream(&c).await.unwrap().len(), 1);
    assert_eq!(store.read_stream(&existing).await.unwrap().len(), 1);

    // Out of stream-id order: written in the order given, whether the group goes in one
    // statement (all new), every append goes alone (a clash refuses the group), or the group
    // is refused for a re-send among its appends (answered as stored, the rest grouped again)
    // or for an id stored in another stream (the rest grouped again, that one refused).
    for variant in ["grouped", "clash", "re-send", "elsewhere"] {
        let w = new_stream("grouped-w");
        let (x, y, z) = (
            new_stream("grouped-x"),
            new_stream("grouped-y"),
            new_stream("grouped-z"),
        );
        let (event_x, event_y, event_z) = (
            new_event("X", json!({"n": 5})),
            new_event("Y", json!({"n": 6})),
            new_event("Z", json!({"n": 7})),
        );
        let mut appends = vec![
            creates(&z, &event_z),
            creates(&x, &event_x),
            creates(&y, &event_y),
        ];
        match variant {
            "clash" => appends.insert(1, creates(&a, &clash)),
            "re-send" => appends.insert(1, creates(&existing, &earlier)),
            "elsewhere" => appends.insert(1, creates(&w, &earlier)),
            _ => {}
        }
        let mut tx = store.begin().await.unwrap();
        let results = tx.append_many(&appends).await.unwrap();
        tx.commit().await.unwrap();
        let mut results = results.into_iter();
        let at_z = results.next().unwrap().unwrap();
        match variant {
            "clash" => assert!(results.next().unwrap().is_err(), "the clash is refused"),
            "re-send" => {
                let again = results.next().unwrap().unwrap();
                assert!(again.already_stored);
                assert_eq!(again.first_position, stored.first_position);
            }
            "elsewhere" => {
                let error = results.next().unwrap().unwrap_err();
                assert!(
                    matches!(error, AppendError::EventIdMismatch { .. }),
                    "{error}"
                );
                assert!(store.read_stream(&w).await.unwrap().is_empty());
            }
            _ => {}
        }
        let at_x = results.next().unwrap().unwrap();
        let at_y = results.next().unwrap().unwrap();
        assert!(
            !at_x.already_stored && !at_y.already_stored && !at_z.already_stored,
            "{variant}"
        );
        assert!(
            at_z.first_position < at_x.first_position && at_x.first_position < at_y.first_position,
            "the order given ({variant}): z {:?}, x {:?}, y {:?}",
            at_z.first_position,
            at_x.first_position,
            at_y.first_position
        );
        for (stream, event) in [(&x, &event_x), (&y, &event_y), (&z, &event_z)] {
            let read = store.read_stream(stream).await.unwrap();
            assert_eq!(
                read.iter().map(|event| event.event_id).collect::<Vec<_>>(),
                vec![event.event_id]
            );
        }
    }
    assert_eq!(store.read_stream(&existing).await.unwrap().len(), 1);
    // The hash chain holds across the grouped appends.
    let report = lifeline_store::verify(&store, &lifeline_model::integrity::Keyring::default())
        .await
        .unwrap();
    assert_eq!(report.first_bad, None, "the hash chain verifies");
    assert_eq!(report.events_checked, 17);
}

/// Inside a transaction, appends that create streams run without a savepoint on PostgreSQL:
/// one the log refuses (its stream exists; its event id is stored) writes nothing and leaves
/// the transaction usable, and the appends after it commit with it.
async fn a_refused_new_stream_leaves_the_transaction_usable(store: EventStore) {
    let existing = new_stream("refused-existing");
    let first = new_event("First", json!({"n": 1}));
    store
        .append(
            &existing,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&first),
        )
        .await
        .unwrap();
    let elsewhere = new_stream("refused-elsewhere");
    let (clash, fresh) = (new_event("Clash", json!({})), new_stream("refused-fresh"));
    let fresh_event = new_event("Fresh", json!({"n": 2}));
    let mut tx = store.begin().await.unwrap();
    // The stream exists: a conflict, nothing written.
    let error = tx
        .append(
            &existing,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&clash),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AppendError::Conflict {
                actual: Some(StreamVersion(1)),
                ..
            }
        ),
        "{error}"
    );
    // A new stream whose event id is stored already (on another stream): refused too.
    let error = tx
        .append(
            &elsewhere,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&first),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, AppendError::EventIdMismatch { .. }),
        "{error}"
    );
    // The transaction goes on.
    let outcome = tx
        .append(
            &fresh,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&fresh_event),
        )
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(1));
    tx.commit().await.unwrap();
    assert_eq!(store.read_stream(&existing).await.unwrap().len(), 1);
    assert!(store.read_stream(&elsewhere).await.unwrap().is_empty());
    // Not even its stream row was left: it can still be created.
    store
        .append(
            &elsewhere,
            ExpectedVersion::NoStream,
            &[new_event("Later", json!({}))],
        )
        .await
        .unwrap();
    let read = store.read_stream(&fresh).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event_id, fresh_event.event_id);
}

/// `read_streams_held`: an append to a held stream waits until the holder ends, so it commits
/// after the holder's own writes; and a hold taken while an append is in flight waits for it and
/// then reads it.
async fn a_held_stream_takes_no_append_until_its_holder_ends(store: EventStore) {
    let held = new_stream("held");
    let elsewhere = new_stream("held-prefilled");
    store
        .append(
            &held,
            ExpectedVersion::NoStream,
            &[new_event("Recorded", json!({"n": 1}))],
        )
        .await
        .unwrap();
    let mut holder = store.begin().await.unwrap();
    let read = holder.read_streams_held(&[&held]).await.unwrap();
    assert_eq!(read[&held].len(), 1);
    let append = tokio::spawn({
        let (store, held) = (store.clone(), held.clone());
        async move {
            store
                .append(
                    &held,
                    ExpectedVersion::Exact(StreamVersion(1)),
                    &[new_event("Corrected", json!({"n": 2}))],
                )
                .await
        }
    });
    // Were the stream not held, the append would be done in milliseconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !append.is_finished(),
        "an append to a held stream went through before its holder ended"
    );
    holder
        .append(
            &elsewhere,
            ExpectedVersion::NoStream,
            &[new_event("Prefilled", json!({"n": 1}))],
        )
        .await
        .unwrap();
    holder.commit().await.unwrap();
    let outcome = append.await.unwrap().unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(2));

    // A hold asked for while an append to the stream is uncommitted: it waits, then reads it.
    let mut writer = store.begin().await.unwrap();
    writer
        .append(
            &held,
            ExpectedVersion::Exact(StreamVersion(2)),
            &[new_event("Voided", json!({"n": 3}))],
        )
        .await
        .unwrap();
    let hold = tokio::spawn({
        let (store, held) = (store.clone(), held.clone());
        async move {
            let mut holder = store.begin().await.unwrap();
            let read = holder.read_streams_held(&[&held]).await.unwrap();
            holder.commit().await.unwrap();
            read
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !hold.is_finished(),
        "a hold went through an uncommitted append"
    );
    writer.commit().await.unwrap();
    let read = hold.await.unwrap();
    let types: Vec<&str> = read[&held]
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(types, ["Recorded", "Corrected", "Voided"]);

    // In commit order, the holder's write came before the append that waited for it. The
    // global reader may be held back a while by transactions still running (other tests' on
    // PostgreSQL): read until all four are there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let order = loop {
        let log = store.read_all(LogCursor::START, 100_000).await.unwrap();
        let order: Vec<String> = log
            .iter()
            .filter(|event| event.stream_id == held || event.stream_id == elsewhere)
            .map(|event| event.event_type.clone())
            .collect();
        if order.len() >= 4 || std::time::Instant::now() > deadline {
            break order;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(order, ["Recorded", "Prefilled", "Corrected", "Voided"]);
}

/// A policy's new tasks' inbox rows go with the grouped append that creates their streams
/// (`append_many_with_new_tasks`): on PostgreSQL inserted by the same statement when it stores
/// every append of the group, and then never over a row that exists; never when the group is
/// refused (a redelivery among the appends: the rest is stored, regrouped, and the caller
/// inserts the rows of what it appended); on SQLite never (the caller inserts them).
async fn new_tasks_inbox_rows_go_with_the_group_that_creates_their_streams(store: EventStore) {
    use lifeline_model::procedure::ProcedureId;
    use lifeline_model::task::TaskStatus;
    use lifeline_store::projections::{self, TaskRow};
    use uuid::Uuid;

    let postgres = store.postgres_pool().is_some();
    let row = |status: TaskStatus| new_task_row(ProcedureId::BirthRegistration, status);
    let stored_row = |task_id: Uuid| {
        let store = store.clone();
        async move { projections::task(&store, task_id).await.unwrap() }
    };

    // Every append new: stored, and on PostgreSQL the rows with them.
    let (a, b) = (new_stream("with-tasks-a"), new_stream("with-tasks-b"));
    let (event_a, event_b) = (new_event("A", json!({})), new_event("B", json!({})));
    let (row_a, row_b) = (row(TaskStatus::Open), row(TaskStatus::Open));
    let mut tx = store.begin().await.unwrap();
    let (results, written) = tx
        .append_many_with_new_tasks(
            &[creates(&a, &event_a), creates(&b, &event_b)],
            &[&row_a, &row_b],
        )
        .await
        .unwrap();
    assert_eq!(written, postgres);
    for result in &results {
        assert!(!result.as_ref().unwrap().already_stored);
    }
    if !written {
        projections::insert_new_tasks(&mut tx, &[&row_a, &row_b])
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(stored_row(row_a.task_id).await.as_ref(), Some(&row_a));
    assert_eq!(stored_row(row_b.task_id).await.as_ref(), Some(&row_b));

    // A redelivery of `a` with a new `c`: the group is refused, so no row goes with it (not
    // `a`'s changed one, not `c`'s); the rest is stored all the same.
    let c = new_stream("with-tasks-c");
    let event_c = new_event("C", json!({}));
    let row_c = row(TaskStatus::Open);
    let changed_a = TaskRow {
        status: TaskStatus::Rejected,
        reason: Some("must not be written".to_owned()),
        ..row_a.clone()
    };
    let mut tx = store.begin().await.unwrap();
    let (results, written) = tx
        .append_many_with_new_tasks(
            &[creates(&a, &event_a), creates(&c, &event_c)],
            &[&changed_a, &row_c],
        )
        .await
        .unwrap();
    assert!(!written, "a refused group's statement wrote its rows");
    assert!(results[0].as_ref().unwrap().already_stored);
    assert!(!results[1].as_ref().unwrap().already_stored);
    tx.commit().await.unwrap();
    assert_eq!(stored_row(row_a.task_id).await.as_ref(), Some(&row_a));
    assert_eq!(stored_row(row_c.task_id).await, None);
    assert_eq!(store.read_stream(&c).await.unwrap().len(), 1);

    // A row that exists (folded by the projection meanwhile) is left as it is.
    let d = new_stream("with-tasks-d");
    let claimed_d = row(TaskStatus::Claimed);
    let mut tx = store.begin().await.unwrap();
    projections::save_task(&mut tx, &claimed_d).await.unwrap();
    tx.commit().await.unwrap();
    let open_d = TaskRow {
        status: TaskStatus::Open,
        claimed_by: None,
        ..claimed_d.clone()
    };
    let mut tx = store.begin().await.unwrap();
    let (_, written) = tx
        .append_many_with_new_tasks(
            &[(&d, ExpectedVersion::NoStream, &[new_event("D", json!({}))])],
            &[&open_d],
        )
        .await
        .unwrap();
    assert_eq!(written, postgres);
    tx.commit().await.unwrap();
    assert_eq!(stored_row(claimed_d.task_id).await, Some(claimed_d));
}

/// `append_whole_with_new_tasks`: on PostgreSQL appends that all create their streams are
/// stored whole, with their inbox rows, in one statement; a group with a stream that exists is
/// refused whole (`None`), nothing of it written, rows included, and the transaction goes on;
/// appends that do not all create streams are not tried. SQLite never tries (`None`).
async fn a_whole_group_is_stored_whole_or_not_at_all(store: EventStore) {
    use lifeline_model::procedure::ProcedureId;
    use lifeline_model::task::TaskStatus;
    use lifeline_store::projections;

    let postgres = store.postgres_pool().is_some();
    let row = || new_task_row(ProcedureId::ResidenceRegistration, TaskStatus::Open);
    let existing = new_stream("whole-existing");
    store
        .append(
            &existing,
            ExpectedVersion::NoStream,
            &[new_event("E", json!({}))],
        )
        .await
        .unwrap();

    // Refused whole: `fresh` is not created, its row not written, and the transaction goes on.
    let fresh = new_stream("whole-fresh");
    let (event_fresh, row_fresh) = (new_event("F", json!({})), row());
    let mut tx = store.begin().await.unwrap();
    let refused = tx
        .append_whole_with_new_tasks(
            &[
                creates(&fresh, &event_fresh),
                (
                    &existing,
                    ExpectedVersion::NoStream,
                    &[new_event("E2", json!({}))],
                ),
            ],
            &[&row_fresh],
        )
        .await
        .unwrap();
    assert!(refused.is_none());
    // Not all creating streams: not tried.
    let not_tried = tx
        .append_whole_with_new_tasks(
            &[(
                &existing,
                ExpectedVersion::Exact(StreamVersion(1)),
                &[new_event("E3", json!({}))],
            )],
            &[],
        )
        .await
        .unwrap();
    assert!(not_tried.is_none());
    let alone = tx
        .append(
            &fresh,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&event_fresh),
        )
        .await
        .unwrap();
    assert!(
        !alone.already_stored,
        "the refused whole left nothing of `fresh`"
    );
    tx.commit().await.unwrap();
    assert_eq!(store.read_stream(&existing).await.unwrap().len(), 1);
    assert_eq!(store.read_stream(&fresh).await.unwrap().len(), 1);
    assert_eq!(
        projections::task(&store, row_fresh.task_id).await.unwrap(),
        None
    );

    // All new: stored whole with the rows (PostgreSQL).
    let (one, two) = (new_stream("whole-one"), new_stream("whole-two"));
    let (row_one, row_two) = (row(), row());
    let mut tx = store.begin().await.unwrap();
    let stored = tx
        .append_whole_with_new_tasks(
            &[
                (
                    &one,
                    ExpectedVersion::NoStream,
                    &[new_event("O", json!({}))],
                ),
                (
                    &two,
                    ExpectedVersion::NoStream,
                    &[new_event("T", json!({})), new_event("T2", json!({}))],
                ),
            ],
            &[&row_one, &row_two],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    if !postgres {
        assert!(stored.is_none());
        return;
    }
    let stored = stored.expect("stored whole");
    assert_eq!(
        stored
            .iter()
            .map(|outcome| outcome.stream_version.0)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(stored[0].last_position < stored[1].first_position);
    assert_eq!(store.read_stream(&two).await.unwrap().len(), 2);
    assert_eq!(
        projections::task(&store, row_one.task_id).await.unwrap(),
        Some(row_one)
    );
    assert_eq!(
        projections::task(&store, row_two.task_id).await.unwrap(),
        Some(row_two)
    );
}

/// A new task's inbox row for `procedure` in `status`, fixed times, no application.
/// A member of a grouped append that creates `stream` with `event`.
fn creates<'a>(
    stream: &'a StreamId,
    event: &'a NewEvent,
) -> (&'a StreamId, ExpectedVersion, &'a [NewEvent]) {
    (
        stream,
        ExpectedVersion::NoStream,
        std::slice::from_ref(event),
    )
}

fn new_task_row(
    procedure: lifeline_model::procedure::ProcedureId,
    status: lifeline_model::task::TaskStatus,
) -> lifeline_store::projections::TaskRow {
    use lifeline_model::task::TaskStatus;
    let at: chrono::DateTime<chrono::Utc> = "2026-12-07T01:00:00Z".parse().unwrap();
    lifeline_store::projections::TaskRow {
        task_id: uuid::Uuid::new_v4(),
        procedure,
        agency: procedure.agency(),
        office: lifeline_model::values::OfficeCode::parse("79-26734").unwrap(),
        life_event_id: uuid::Uuid::new_v4(),
        status,
        claimed_by: (status == TaskStatus::Claimed).then(|| "officer-1".to_owned()),
        due_at: at,
        overdue: false,
        created_at: at,
        updated_at: at,
        application: lifeline_model::task::Application::default(),
        outcome: None,
        reason: None,
    }
}

/// Deferred transactions (`EventStore::begin_deferred`, PostgreSQL only: on SQLite it is a
/// plain `begin`).
mod deferred {
    use super::*;
    use lifeline_store::StoreError;

    async fn recorded(store: &EventStore) -> StreamId {
        let record = new_stream("record");
        store
            .append(
                &record,
                ExpectedVersion::NoStream,
                &[new_event("Recorded", json!({"n": 1}))],
            )
            .await
            .unwrap();
        record
    }

    /// Whether the gap-free reader of the log sees `stream` within `patience` (other tests'
    /// transactions on the same server may hold it back a moment).
    async fn log_shows(store: &EventStore, stream: &StreamId, patience: Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let log = store.read_all(LogCursor::START, 100_000).await.unwrap();
            if log.iter().any(|event| event.stream_id == *stream) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reading held takes no transaction id before the first write: a commit made meanwhile
    /// reaches the gap-free reader of the log while the deferred transaction is still open (a
    /// held read in a plain transaction holds it back until that transaction ends). A record
    /// that moved after the read fails the first write: the whole group is refused, and a
    /// write that begins the transaction answers `HeldStreamMoved`, nothing written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reads_hold_back_no_reader_and_a_moved_record_fails_the_first_write() {
        let test_store = lifeline_tests::postgres_store().await;
        let store = test_store.store().clone();
        let record = recorded(&store).await;

        let mut tx = store.begin_deferred().await.unwrap();
        let read = tx.read_streams_held(&[&record]).await.unwrap();
        assert_eq!(read[&record].len(), 1);
        let meanwhile = new_stream("meanwhile");
        store
            .append(
                &meanwhile,
                ExpectedVersion::NoStream,
                &[new_event("Meanwhile", json!({}))],
            )
            .await
            .unwrap();
        // Well within PostgreSQL's idle-in-transaction time-out (15 s), which would end a
        // holder that held the reader back.
        assert!(
            log_shows(&store, &meanwhile, Duration::from_secs(10)).await,
            "a deferred transaction's held read held back the log's reader"
        );

        // A correction of the record commits between the read and the write.
        store
            .append(
                &record,
                ExpectedVersion::Exact(StreamVersion(1)),
                &[new_event("Corrected", json!({"n": 2}))],
            )
            .await
            .unwrap();
        let task = new_stream("task");
        let created = [new_event("TaskCreated", json!({}))];
        let whole = tx
            .append_whole_with_new_tasks(&[(&task, ExpectedVersion::NoStream, &created)], &[])
            .await
            .unwrap();
        assert!(whole.is_none(), "a group was stored over a moved record");
        assert!(tx.is_deferred(), "a refused group began the transaction");
        let error = tx
            .append(&task, ExpectedVersion::NoStream, &created)
            .await
            .unwrap_err();
        assert!(
            matches!(error, AppendError::Store(StoreError::HeldStreamMoved)),
            "{error:?}"
        );
        // A failed hold is not committed as if nothing happened.
        assert!(matches!(
            tx.commit().await,
            Err(StoreError::TransactionEnded)
        ));
        assert_eq!(store.stream_version(&task).await.unwrap(), None);
        test_store.close().await;
    }

    /// A whole group written before the transaction began is its own transaction: committed
    /// at once (another connection reads it before `commit`), and the transaction has ended:
    /// a later write fails, `commit` only wakes the subscriptions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_whole_group_as_the_first_write_commits_on_its_own_and_ends_the_transaction() {
        let test_store = lifeline_tests::postgres_store().await;
        let store = test_store.store().clone();
        let record = recorded(&store).await;

        let mut tx = store.begin_deferred().await.unwrap();
        tx.read_streams_held(&[&record]).await.unwrap();
        let task = new_stream("task");
        let created = [new_event("TaskCreated", json!({}))];
        let outcomes = tx
            .append_whole_with_new_tasks(&[(&task, ExpectedVersion::NoStream, &created)], &[])
            .await
            .unwrap()
            .expect("the group stored whole");
        assert_eq!(outcomes.len(), 1);
        assert!(!tx.is_deferred());
        assert_eq!(store.read_stream(&task).await.unwrap().len(), 1);
        let later = tx
            .append(
                &new_stream("later"),
                ExpectedVersion::NoStream,
                &[new_event("Later", json!({}))],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(later, AppendError::Store(StoreError::TransactionEnded)),
            "{later:?}"
        );
        tx.commit().await.unwrap();
        assert!(log_shows(&store, &task, Duration::from_secs(20)).await);
        test_store.close().await;
    }

    /// The hold's look-ups go by key even in a new database, whose `streams` table is small and
    /// has no statistics: PL/pgSQL keeps a statement's plan for the session, and a plan made
    /// then (a sequential scan joined to the held ids) stayed as the table grew, one scan of
    /// every stream per lane batch (W3's appends 25 ms slower at the median).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_hold_reads_streams_by_key_in_a_new_database() {
        let test_store = lifeline_tests::postgres_store().await;
        let store = test_store.store().clone();
        let record = recorded(&store).await;
        let pool = store.postgres_pool().unwrap().clone();
        let mut tx = pool.begin().await.unwrap();
        // Generic plans, as a session that has called a function often enough gets them
        // (`lifeline_hold_streams` does not force them itself).
        sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Counted since the connection last reported (migrations, the append above): the
        // difference is this test's.
        let seq_scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'streams'";
        let before: i64 = sqlx::query_scalar(seq_scans)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let empty_text: Vec<String> = Vec::new();
        let empty_ids: Vec<uuid::Uuid> = Vec::new();
        let refused: bool = sqlx::query_scalar(
            "SELECT o_refused FROM lifeline_try_append_new_streams_held( \
             $1, '{}'::bigint[], '{}'::bytea[], $1, '{}'::bigint[], $2, $1, '{}'::int[], \
             '{}'::json[], '{}'::json[], '{}'::timestamptz[], '{}'::bytea[], $3, $4)",
        )
        .bind(&empty_text)
        .bind(&empty_ids)
        .bind(vec![record.as_str()])
        .bind(vec![1_i64])
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert!(!refused);
        let held: bool = sqlx::query_scalar("SELECT lifeline_hold_streams($1, $2)")
            .bind(vec![record.as_str()])
            .bind(vec![1_i64])
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert!(held);
        let after: i64 = sqlx::query_scalar(seq_scans)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            after - before,
            0,
            "the hold scanned the whole streams table"
        );
        tx.rollback().await.unwrap();
        test_store.close().await;
    }

    /// The first write of a deferred transaction that goes the ordinary way begins it and holds
    /// the records it read: no append can lock them until it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_first_write_holds_the_records_read_until_the_transaction_ends() {
        let test_store = lifeline_tests::postgres_store().await;
        let store = test_store.store().clone();
        let record = recorded(&store).await;
        let pool = store.postgres_pool().unwrap().clone();
        let can_lock = || async {
            sqlx::query("SELECT 1 FROM streams WHERE stream_id = $1 FOR UPDATE NOWAIT")
                .bind(record.as_str())
                .fetch_optional(&pool)
                .await
                .map(|_| ())
        };

        let mut tx = store.begin_deferred().await.unwrap();
        tx.read_streams_held(&[&record]).await.unwrap();
        can_lock().await.expect("a plain read holds nothing");
        tx.append(
            &new_stream("prefilled"),
            ExpectedVersion::NoStream,
            &[new_event("Prefilled", json!({}))],
        )
        .await
        .unwrap();
        assert!(!tx.is_deferred());
        let error = can_lock().await.unwrap_err();
        assert_eq!(
            error
                .as_database_error()
                .and_then(|error| error.code())
                .as_deref(),
            Some("55P03"),
            "{error}"
        );
        tx.commit().await.unwrap();
        can_lock()
            .await
            .expect("the hold ends with the transaction");
        test_store.close().await;
    }
}

/// A transaction that took its id early (its first write, to another stream) and then appends
/// to a stream that a later transaction changed and committed meanwhile is refused, retryably
/// (`serialization_failure`, transient): stored, its event would come before the later
/// transaction's in the log's commit order, `(transaction_id, global_position)`, though after
/// it in the stream, and every reader of the log would see the stream's versions out of order
/// (a task's cancellation before its claim: the inbox then shows it claimed for good). Run
/// again in a new transaction, it goes through, in order. (Until 2026-12-07 it was stored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_append_of_an_older_transaction_cannot_put_a_stream_out_of_order() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store().clone();
    let record = new_stream("order-record");
    let task = new_stream("order-task");
    store
        .append(
            &task,
            ExpectedVersion::NoStream,
            &[new_event("Created", json!({}))],
        )
        .await
        .unwrap();
    let amended = [new_event("Amended", json!({}))];
    let cancelled = [new_event("Cancelled", json!({}))];

    let mut tx = store.begin().await.unwrap();
    tx.append(&record, ExpectedVersion::NoStream, &amended)
        .await
        .unwrap();
    // A later transaction claims the task and commits.
    store
        .append(
            &task,
            ExpectedVersion::Exact(StreamVersion(1)),
            &[new_event("Claimed", json!({}))],
        )
        .await
        .unwrap();
    match tx
        .append(&task, ExpectedVersion::Exact(StreamVersion(2)), &cancelled)
        .await
    {
        Ok(_) => tx.commit().await.unwrap(),
        Err(error) => {
            assert!(
                matches!(&error, AppendError::Store(store_error) if store_error.is_transient()),
                "{error:?}"
            );
            drop(tx);
            let mut again = store.begin().await.unwrap();
            again
                .append(&record, ExpectedVersion::NoStream, &amended)
                .await
                .unwrap();
            again
                .append(&task, ExpectedVersion::Exact(StreamVersion(2)), &cancelled)
                .await
                .unwrap();
            again.commit().await.unwrap();
        }
    }

    // The task's events in the log's order (once the gap-free reader sees all three).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let versions = loop {
        let log = store.read_all(LogCursor::START, 100_000).await.unwrap();
        let versions: Vec<i64> = log
            .iter()
            .filter(|event| event.stream_id == task)
            .map(|event| event.stream_version.0)
            .collect();
        if versions.len() == 3 || std::time::Instant::now() > deadline {
            break versions;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        versions,
        [1, 2, 3],
        "the task's events out of order in the log"
    );
    test_store.close().await;
}

/// A log restored into another cluster (its transaction ids from the old cluster's counter,
/// ahead of the new one's) is refused at `migrate`, which `serve` runs before anything appends:
/// new events would sort before the whole log, behind every reader's checkpoint. (Until
/// 2026-12-07 nothing noticed: every reader skipped the new events.)
#[tokio::test]
async fn a_log_ahead_of_the_servers_transaction_counter_is_refused() {
    let test_store = lifeline_tests::postgres_store().await;
    let store = test_store.store().clone();
    store.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO events (transaction_id, stream_id, stream_version, event_id, event_type, \
         schema_version, payload, metadata, recorded_at, event_hash) \
         VALUES (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000000, $1, 1, $2, \
         'Restored', 1, '{}', '{}', now(), decode(repeat('00', 32), 'hex'))",
    )
    .bind(new_stream("restored").as_str())
    .bind(uuid::Uuid::now_v7())
    .execute(store.postgres_pool().unwrap())
    .await
    .unwrap();
    let error = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            error,
            lifeline_store::StoreError::TransactionCounterBehind { .. }
        ),
        "{error}"
    );
    test_store.close().await;
}
