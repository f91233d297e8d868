//! Tamper evidence on a real PostgreSQL database (and SQLite for the untouched and payload
//! cases): the log is written through the store, sealed, then altered in SQL behind Lifeline's
//! back with the append-only triggers disabled. `verify` must pass on the untouched log and name
//! the first bad position after each kind of tampering; an inclusion proof must stop verifying
//! once its event is altered.

use chrono::Utc;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, NewEvent, OfficeSignature, Role, StreamId,
    StreamVersion,
};
use lifeline_model::integrity::Seal;
use lifeline_model::integrity::{
    canonical_json, event_hash, office_owner, sign_office_event, EventHashInput, Hash32, KeyPair,
    Keyring, NODE_OWNER,
};
use lifeline_store::{
    check_anchor, inclusion_proof, seal_new_events, verify, verify_anchored, EventStore,
    ProofLookup,
};
use lifeline_tests::{new_event, new_stream, postgres_store, sqlite_store};
use serde_json::json;
use uuid::Uuid;

const OFFICE: &str = "79-26734";

struct Fixture {
    node: KeyPair,
    office: KeyPair,
    keyring: Keyring,
    /// Global positions in commit order, with the stream and version each event went to.
    events: Vec<(i64, StreamId, i64, Uuid)>,
}

fn birth(stream: &StreamId, office: &KeyPair) -> NewEvent {
    signed_birth(
        stream,
        office,
        json!({ "child": { "name": "Nguyễn An", "sex": "female" }, "weight_grams": 3100 }),
    )
}

/// A `BirthRecorded` with `payload`, signed with `office`'s key as [`OFFICE`].
fn signed_birth(stream: &StreamId, office: &KeyPair, payload: serde_json::Value) -> NewEvent {
    let event_id = Uuid::now_v7();
    let (key_id, signature) =
        sign_office_event(office, stream.as_str(), event_id, "BirthRecorded", &payload);
    NewEvent {
        event_id,
        event_type: "BirthRecorded".to_owned(),
        schema_version: 1,
        payload,
        metadata: EventMetadata {
            actor: "registrar-1".to_owned(),
            role: Role::Registrar,
            office: Some(OFFICE.to_owned()),
            office_signature: Some(OfficeSignature { key_id, signature }),
            ..EventMetadata::system("registrar-1", Uuid::new_v4(), None, Utc::now())
        },
    }
}

/// Eight events in five appends over three streams, each append sealed on its own (so a seal
/// names one append's events), then one more append left unsealed.
async fn fill(store: &EventStore) -> Fixture {
    let node = KeyPair::generate();
    let office = KeyPair::generate();
    let mut keyring = Keyring::default();
    keyring.add(&node, NODE_OWNER, None);
    keyring.add(&office, &office_owner(OFFICE), None);
    let tasks = new_stream("task");
    let births = new_stream("birth");
    let people = new_stream("person");
    let batches: Vec<(StreamId, Vec<NewEvent>)> = vec![
        (
            tasks.clone(),
            vec![new_event(
                "TaskCreated",
                json!({"n": 1, "due": "2026-01-01"}),
            )],
        ),
        (births.clone(), vec![birth(&births, &office)]),
        (
            tasks.clone(),
            vec![
                new_event("TaskClaimed", json!({"n": 2})),
                new_event(
                    "TaskCompleted",
                    json!({"n": 3, "outcome": {"b": 1, "a": [1, -2]}}),
                ),
            ],
        ),
        (
            people.clone(),
            vec![new_event(
                "PersonalIdAssigned",
                json!({"pin": "079190001234"}),
            )],
        ),
        (
            tasks.clone(),
            vec![
                new_event("TaskAmended", json!({"n": 4})),
                new_event("TaskAmended", json!({"n": 5})),
            ],
        ),
    ];
    let mut events = Vec::new();
    for (stream, batch) in &batches {
        let outcome = store
            .append(stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
        let first_version = outcome.stream_version.0 - batch.len() as i64 + 1;
        for (offset, event) in batch.iter().enumerate() {
            events.push((
                outcome.first_position.0 + offset as i64,
                stream.clone(),
                first_version + offset as i64,
                event.event_id,
            ));
        }
        seal_when_visible(store, &node).await;
    }
    let unsealed = new_event("TaskAmended", json!({"n": 6}));
    let outcome = store
        .append(
            &tasks,
            ExpectedVersion::Any,
            std::slice::from_ref(&unsealed),
        )
        .await
        .unwrap();
    events.push((
        outcome.first_position.0,
        tasks.clone(),
        outcome.stream_version.0,
        unsealed.event_id,
    ));
    Fixture {
        node,
        office,
        keyring,
        events,
    }
}

/// Seals the last append once it is visible to gap-free readers (on PostgreSQL only below the
/// oldest running transaction of the whole server, which other tests' transactions hold back).
async fn seal_when_visible(store: &EventStore, node: &KeyPair) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if seal_new_events(store, node).await.unwrap().is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the append never became visible to the sealer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs SQL as the database owner with every trigger off: tampering behind the store's back.
async fn tamper(store: &EventStore, sql: &str) {
    let sql = sql.to_owned();
    if let Some(pool) = store.postgres_pool() {
        let script = format!(
            "ALTER TABLE events DISABLE TRIGGER ALL; ALTER TABLE log_seals DISABLE TRIGGER ALL; \
             {sql}; \
             ALTER TABLE events ENABLE TRIGGER ALL; ALTER TABLE log_seals ENABLE TRIGGER ALL;"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(pool)
            .await
            .unwrap();
    } else {
        let pool = store.sqlite_pool().unwrap();
        let script = format!(
            "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete; \
             DROP TRIGGER log_seals_no_update; DROP TRIGGER log_seals_no_delete; {sql};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn first_bad(store: &EventStore, keyring: &Keyring) -> (i64, String) {
    let report = verify(store, keyring).await.unwrap();
    let Some(bad) = report.first_bad.clone() else {
        panic!("verify passed a tampered log: {report:?}");
    };
    (bad.global_position, bad.reason)
}

async fn proof_verifies(store: &EventStore, keyring: &Keyring, event_id: Uuid) -> bool {
    match inclusion_proof(store, event_id).await.unwrap() {
        ProofLookup::Proof(proof) => {
            // Offline: the proof goes through JSON, as `lifeline verify-proof` reads it.
            let text = serde_json::to_string(&proof).unwrap();
            let proof: lifeline_model::integrity::InclusionProof =
                serde_json::from_str(&text).unwrap();
            proof.verify(keyring).is_ok()
        }
        other => panic!("no proof for {event_id}: {other:?}"),
    }
}

async fn untouched_log_verifies(store: &EventStore) {
    let fixture = fill(store).await;
    let report = verify(store, &fixture.keyring).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!(report.events_checked, 8);
    assert_eq!(report.seals_checked, 5);
    assert_eq!(report.unsealed_events, 1);
    for (_, _, _, event_id) in &fixture.events[..7] {
        assert!(proof_verifies(store, &fixture.keyring, *event_id).await);
    }
    let unsealed = fixture.events[7].3;
    assert_eq!(
        inclusion_proof(store, unsealed).await.unwrap(),
        ProofLookup::NotSealed
    );
    // Without the office's key the birth's signature cannot be checked: that is a finding too.
    let mut node_only = Keyring::default();
    node_only.add(&fixture.node, NODE_OWNER, None);
    let (position, reason) = first_bad(store, &node_only).await;
    assert_eq!(position, fixture.events[1].0, "{reason}");
    assert!(reason.contains("unknown key"), "{reason}");
}

async fn an_altered_payload_is_named(store: &EventStore) {
    let fixture = fill(store).await;
    let (position, _, _, event_id) = fixture.events[2].clone();
    assert!(proof_verifies(store, &fixture.keyring, event_id).await);
    let payload = if store.postgres_pool().is_some() {
        "'{\"n\": 99}'::jsonb"
    } else {
        "'{\"n\": 99}'"
    };
    tamper(
        store,
        &format!("UPDATE events SET payload = {payload} WHERE global_position = {position}"),
    )
    .await;
    let (bad, reason) = first_bad(store, &fixture.keyring).await;
    assert_eq!(bad, position, "{reason}");
    assert!(reason.contains("hash does not match"), "{reason}");
    assert!(!proof_verifies(store, &fixture.keyring, event_id).await);
}

/// A row that cannot be decoded (a payload number valid JSON but out of any float's range) is a
/// finding at its position, not an error of the whole verification.
async fn an_undecodable_row_is_named(store: &EventStore) {
    let fixture = fill(store).await;
    let (position, _, _, _) = fixture.events[3].clone();
    tamper(
        store,
        &format!(
            "UPDATE events SET payload = '{{\"n\": 1e400}}' WHERE global_position = {position}"
        ),
    )
    .await;
    let report = verify(store, &fixture.keyring).await.unwrap();
    let bad = report.first_bad.clone().expect("a finding");
    assert_eq!(bad.global_position, position, "{report:?}");
    assert!(bad.reason.contains("cannot be decoded"), "{report:?}");
    assert_eq!(report.events_checked, 8, "{report:?}");
}

/// A payload given a key twice behind the store's back (its first value what SQL readers such
/// as SQLite's `json_extract` take, its last the original) is a finding, although serde, which
/// keeps the last, decodes it as the original and its hash matches. (Until 2026-12-07 `verify`
/// passed it.)
async fn a_payload_with_a_key_given_twice_is_named(store: &EventStore) {
    let fixture = fill(store).await;
    let (position, _, _, event_id) = fixture.events[2].clone();
    let event = store.event_by_id(event_id).await.unwrap().unwrap();
    let key = event
        .payload
        .as_object()
        .and_then(|object| object.keys().next().cloned())
        .expect("a payload with a key");
    let twice = if store.postgres_pool().is_some() {
        format!("('{{\"{key}\": \"forged\", ' || substr(payload::text, 2))::json")
    } else {
        format!("'{{\"{key}\": \"forged\", ' || substr(payload, 2)")
    };
    tamper(
        store,
        &format!("UPDATE events SET payload = {twice} WHERE global_position = {position}"),
    )
    .await;
    let report = verify(store, &fixture.keyring).await.unwrap();
    let bad = report.first_bad.clone().expect("a finding");
    assert_eq!(bad.global_position, position, "{report:?}");
    assert!(bad.reason.contains("given twice"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_payload_with_a_key_given_twice_is_named() {
    let store = postgres_store().await;
    a_payload_with_a_key_given_twice_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_payload_with_a_key_given_twice_is_named() {
    let store = sqlite_store().await;
    a_payload_with_a_key_given_twice_is_named(&store).await;
}

/// A record of one office signed by another office's key, under that other office's name in
/// its metadata: the signature holds, but it does not vouch for this record. (Until 2026-12-07
/// `verify` passed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_signed_by_another_office_is_named() {
    let store = sqlite_store().await;
    let fixture = fill(&store).await;
    let births = new_stream("birth");
    let forged = signed_birth(
        &births,
        &fixture.office,
        json!({ "office": "01-00004", "child": { "name": "Lê An" } }),
    );
    let outcome = store
        .append(&births, ExpectedVersion::NoStream, &[forged])
        .await
        .unwrap();
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, outcome.first_position.0, "{reason}");
    assert!(
        reason.contains("of office 01-00004 signed as office"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_undecodable_row_is_named() {
    let store = postgres_store().await;
    an_undecodable_row_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_undecodable_row_is_named() {
    let store = sqlite_store().await;
    an_undecodable_row_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_untouched_log_verifies_and_every_proof_holds() {
    let store = postgres_store().await;
    untouched_log_verifies(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_untouched_log_verifies_and_every_proof_holds() {
    let store = sqlite_store().await;
    untouched_log_verifies(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_altered_payload_is_named_and_its_proof_fails() {
    let store = postgres_store().await;
    an_altered_payload_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_altered_payload_is_named_and_its_proof_fails() {
    let store = sqlite_store().await;
    an_altered_payload_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rehashed_payload_breaks_the_chain_and_the_seal() {
    // A forger who knows the algorithm recomputes the altered event's hash: the seal over it
    // no longer matches, and its proof fails.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let (position, stream, version, _) = fixture.events[2].clone();
    let prev: Vec<u8> = sqlx::query_scalar(
        "SELECT event_hash FROM events WHERE stream_id = $1 AND stream_version = $2",
    )
    .bind(stream.as_str())
    .bind(version - 1)
    .fetch_one(store.postgres_pool().unwrap())
    .await
    .unwrap();
    let forged = hash_with_payload(
        &store,
        &fixture.events[2],
        &json!({"n": 99}),
        &Hash32::from_slice(&prev).unwrap(),
    )
    .await;
    let event_id = fixture.events[2].3;
    tamper(
        &store,
        &format!(
            "UPDATE events SET payload = '{{\"n\": 99}}'::jsonb, event_hash = '\\x{}' \
             WHERE global_position = {position}",
            forged.to_hex()
        ),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, position, "{reason}");
    assert!(reason.contains("Merkle root"), "{reason}");
    assert!(!proof_verifies(&store, &fixture.keyring, event_id).await);
}

/// The hash a forger computes for the fixture's event `event` (position, stream, version, id)
/// with `payload` instead of its own, chained to `prev`: its stored metadata and type kept.
async fn hash_with_payload(
    store: &EventStore,
    event: &(i64, StreamId, i64, Uuid),
    payload: &serde_json::Value,
    prev: &Hash32,
) -> Hash32 {
    let (position, stream, version, event_id) = event;
    let (metadata, event_type): (serde_json::Value, String) =
        sqlx::query_as("SELECT metadata, event_type FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_one(store.postgres_pool().unwrap())
            .await
            .unwrap();
    event_hash(
        &EventHashInput {
            stream_id: stream.as_str(),
            stream_version: *version,
            event_id: *event_id,
            event_type: &event_type,
            schema_version: 1,
            payload,
            metadata: &metadata,
        },
        prev,
    )
}

/// The seal that covers `event_id`, as an auditor would have kept it (from its proof).
async fn seal_of(store: &EventStore, event_id: Uuid) -> Seal {
    match inclusion_proof(store, event_id).await.unwrap() {
        ProofLookup::Proof(proof) => proof.seal,
        other => panic!("no proof for {event_id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seals_made_again_over_a_rewritten_event_are_caught_by_their_anchors() {
    // The attack the log alone cannot show: someone able to write the tables rewrites a sealed
    // event with its hash recomputed (and its stream's head), deletes the seals from the one
    // covering it, and has the node key seal again. Seals kept outside the database (anchors)
    // catch it; the plain check cannot.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let anchors: Vec<Seal> = [0, 1, 2, 4, 5]
        .iter()
        .map(|&index| seal_of(&store, fixture.events[index].3))
        .collect::<futures::future::JoinAll<_>>()
        .await;
    assert_eq!(
        anchors.iter().map(|seal| seal.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    for anchor in &anchors {
        check_anchor(anchor, &fixture.keyring).unwrap();
    }
    let intact = verify_anchored(&store, &fixture.keyring, &anchors)
        .await
        .unwrap();
    assert_eq!(intact.first_bad, None, "{intact:?}");
    assert_eq!(intact.anchors_checked, 5);

    // The person event (alone in its stream, covered by seal 4) rewritten and rehashed.
    let (position, stream, _, _) = fixture.events[4].clone();
    let payload = json!({"pin": "079190009999"});
    let forged = hash_with_payload(&store, &fixture.events[4], &payload, &Hash32::ZERO).await;
    tamper(
        &store,
        &format!(
            "UPDATE events SET payload = '{payload}'::jsonb, event_hash = '\\x{hash}' \
             WHERE global_position = {position}; \
             UPDATE streams SET last_hash = '\\x{hash}' WHERE stream_id = '{stream}'; \
             DELETE FROM log_seals WHERE seq >= 4",
            hash = forged.to_hex(),
            stream = stream.as_str()
        ),
    )
    .await;
    seal_when_visible(&store, &fixture.node).await;
    let report = verify(&store, &fixture.keyring).await.unwrap();
    assert_eq!(
        report.first_bad, None,
        "the log alone shows nothing: {report:?}"
    );

    // Seals 1 to 3 are still the anchored ones; seal 4 was made again; seal 5 is gone (the new
    // seal 4 covers its events too).
    let anchored = |seqs: &[i64]| -> Vec<Seal> {
        anchors
            .iter()
            .filter(|seal| seqs.contains(&seal.seq))
            .cloned()
            .collect()
    };
    let report = verify_anchored(&store, &fixture.keyring, &anchored(&[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    for (seqs, expected) in [
        (&[4][..], "is not the one anchored"),
        (&[5][..], "is no longer in the log"),
        (&[3, 4, 5][..], "is not the one anchored"),
    ] {
        let report = verify_anchored(&store, &fixture.keyring, &anchored(seqs))
            .await
            .unwrap();
        let bad = report.first_bad.expect("an anchor was not kept");
        assert!(bad.reason.contains(expected), "{seqs:?}: {}", bad.reason);
        let first = anchored(seqs)
            .into_iter()
            .find(|seal| seal.seq >= 4)
            .unwrap();
        assert_eq!(bad.global_position, first.from.global_position + 1);
        assert_eq!(report.anchors_checked, seqs.len() as u64);
    }
    // Seal 4's range starts at the rewritten event.
    assert_eq!(anchors[3].from.global_position + 1, position);

    // An anchor is the auditor's evidence: one whose fields or signature do not hold is refused.
    let mut edited = anchors[3].clone();
    edited.event_count += 1;
    assert!(check_anchor(&edited, &fixture.keyring).is_err());
    let mut other_node = Keyring::default();
    other_node.add(&KeyPair::generate(), NODE_OWNER, None);
    assert!(check_anchor(&anchors[3], &other_node).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_deleted_event_is_named() {
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    // The first of the two events of the third append (task stream, version 2).
    let (position, _, _, _) = fixture.events[2].clone();
    tamper(
        &store,
        &format!("DELETE FROM events WHERE global_position = {position}"),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    // Named at the deleted event's stream successor, which jumps a version (the seal of that
    // append, now one event short, names the same place).
    assert_eq!(bad, fixture.events[3].0, "{reason}");
    assert!(reason.contains("version 3 where 2 was due"), "{reason}");

    // The last event of a stream, unsealed: only the stream's head knows it existed.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let (last, _, _, _) = fixture.events[7].clone();
    tamper(
        &store,
        &format!("DELETE FROM events WHERE global_position = {last}"),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, fixture.events[6].0, "{reason}");
    assert!(reason.contains("appended to version 6"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_swapped_positions_are_named() {
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    // The birth (second append) and the person event (fourth append) trade places in commit
    // order: each event and each stream chain is intact, only the seals see it.
    let (birth, _, _, _) = fixture.events[1].clone();
    let (person, _, _, _) = fixture.events[4].clone();
    tamper(
        &store,
        &format!(
            "CREATE TEMP TABLE swap AS SELECT global_position, transaction_id FROM events \
               WHERE global_position IN ({birth}, {person}); \
             UPDATE events SET global_position = -global_position \
               WHERE global_position IN ({birth}, {person}); \
             UPDATE events SET global_position = CASE WHEN global_position = -{birth} THEN {person} ELSE {birth} END, \
               transaction_id = (SELECT transaction_id FROM swap WHERE swap.global_position = \
                 CASE WHEN events.global_position = -{birth} THEN {person} ELSE {birth} END) \
               WHERE global_position IN (-{birth}, -{person})"
        ),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, birth, "{reason}");
    assert!(reason.contains("seal 2"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_forged_event_is_named() {
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    // A forged birth in a stream of its own, correctly hashed, signed by a key the keyring
    // does not hold, inserted behind the store's back (so no seal covers it yet).
    let forger = KeyPair::generate();
    let stream = new_stream("birth");
    let event_id = Uuid::now_v7();
    let payload = json!({"child": {"name": "Forged"}});
    let (key_id, signature) = sign_office_event(
        &forger,
        stream.as_str(),
        event_id,
        "BirthRecorded",
        &payload,
    );
    let mut metadata = serde_json::to_value(EventMetadata {
        office: Some(OFFICE.to_owned()),
        office_signature: Some(OfficeSignature { key_id, signature }),
        ..EventMetadata::system("registrar-1", Uuid::new_v4(), None, Utc::now())
    })
    .unwrap();
    metadata["role"] = json!("registrar");
    let hash = event_hash(
        &EventHashInput {
            stream_id: stream.as_str(),
            stream_version: 1,
            event_id,
            event_type: "BirthRecorded",
            schema_version: 1,
            payload: &payload,
            metadata: &metadata,
        },
        &Hash32::ZERO,
    );
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at, event_hash) \
         VALUES ($1, 1, $2, 'BirthRecorded', 1, $3, $4, now(), $5) RETURNING global_position",
    )
    .bind(stream.as_str())
    .bind(event_id)
    .bind(&payload)
    .bind(&metadata)
    .bind(hash.0.to_vec())
    .fetch_one(store.postgres_pool().unwrap())
    .await
    .unwrap();
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, position, "{reason}");

    // A forged event slipped into a sealed range (an old transaction id: commit order lands it
    // inside the fifth seal's range), chained correctly to its stream and the stream's head
    // moved along: only the seal over that range sees it.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let person = fixture.events[4].clone();
    let pool = store.postgres_pool().unwrap();
    let transaction_id: i64 =
        sqlx::query_scalar("SELECT transaction_id FROM events WHERE global_position = $1")
            .bind(person.0)
            .fetch_one(pool)
            .await
            .unwrap();
    let forged = new_event("PersonNoted", json!({"n": 1}));
    let metadata = serde_json::to_value(&forged.metadata).unwrap();
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT event_hash FROM events WHERE global_position = $1")
            .bind(person.0)
            .fetch_one(pool)
            .await
            .unwrap();
    let hash = event_hash(
        &EventHashInput {
            stream_id: person.1.as_str(),
            stream_version: 2,
            event_id: forged.event_id,
            event_type: "PersonNoted",
            schema_version: 1,
            payload: &forged.payload,
            metadata: &metadata,
        },
        &Hash32::from_slice(&prev).unwrap(),
    );
    tamper(
        &store,
        &format!(
            "INSERT INTO events (global_position, transaction_id, stream_id, stream_version, event_id, \
             event_type, schema_version, payload, metadata, recorded_at, event_hash) \
             VALUES ({p}, {transaction_id}, '{s}', 2, '{e}', 'PersonNoted', 1, '{payload}'::jsonb, \
             '{m}'::jsonb, now(), '\\x{h}'); \
             UPDATE streams SET version = 2, last_hash = '\\x{h}' WHERE stream_id = '{s}'",
            p = person.0 * 1000,
            s = person.1,
            e = forged.event_id,
            payload = forged.payload,
            m = metadata,
            h = hash.to_hex(),
        ),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, person.0 * 1000, "{reason}");
    assert!(reason.contains("seal 5"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_altered_signatures_are_named() {
    // A seal re-signed by another key.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let forger = KeyPair::generate();
    let seal_hash: Vec<u8> = sqlx::query_scalar("SELECT seal_hash FROM log_seals WHERE seq = 3")
        .fetch_one(store.postgres_pool().unwrap())
        .await
        .unwrap();
    let forged = forger.sign(&Hash32::from_slice(&seal_hash).unwrap());
    tamper(
        &store,
        &format!("UPDATE log_seals SET signature = '{forged}' WHERE seq = 3"),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, fixture.events[2].0, "{reason}");
    assert!(reason.contains("seal 3: bad signature"), "{reason}");
    let event_in_seal_3 = fixture.events[2].3;
    assert!(!proof_verifies(&store, &fixture.keyring, event_in_seal_3).await);

    // The office's signature in a birth's metadata replaced by a forger's.
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let (position, stream, _, event_id) = fixture.events[1].clone();
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM events WHERE global_position = $1")
            .bind(position)
            .fetch_one(store.postgres_pool().unwrap())
            .await
            .unwrap();
    let (key_id, signature) = sign_office_event(
        &forger,
        stream.as_str(),
        event_id,
        "BirthRecorded",
        &payload,
    );
    tamper(
        &store,
        &format!(
            "UPDATE events SET metadata = jsonb_set(metadata::jsonb, '{{office_signature}}', \
             '{{\"key_id\": \"{key_id}\", \"signature\": \"{signature}\"}}'::jsonb) \
             WHERE global_position = {position}"
        ),
    )
    .await;
    let (bad, reason) = first_bad(&store, &fixture.keyring).await;
    assert_eq!(bad, position, "{reason}");
    let _ = &fixture.office;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_the_canonical_text_it_hashed() {
    let store = postgres_store().await;
    let stream = new_stream("canon");
    let payload = json!({
        "z": 1, "a": {"y": [3, 2, {"k": "v", "b": null}], "x": true},
        "big": i64::MAX, "small": i64::MIN, "unsigned": u64::MAX,
        "text": "Nguyễn Thị Ánh \"quoted\" \\ tab\t newline\n emoji 🎉 \u{1}",
        "empty": {}, "list": [],
    });
    let event = new_event("Canon", payload.clone());
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&event),
        )
        .await
        .unwrap();
    let stored = store.read_stream(&stream).await.unwrap();
    assert_eq!(canonical_json(&stored[0].payload), canonical_json(&payload));
    let text: String = sqlx::query_scalar("SELECT payload::text FROM events WHERE event_id = $1")
        .bind(event.event_id)
        .fetch_one(store.postgres_pool().unwrap())
        .await
        .unwrap();
    // `json` keeps the text as written: the very canonical text the event's hash covers.
    assert_eq!(text, canonical_json(&payload));
    let report = verify(&store, &Keyring::default()).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
}

/// Events stored before migration 10 were `jsonb`: the migration leaves them with `jsonb`'s
/// rendering of their documents (spaces after `:` and `,`, not the canonical text hashed). Such a
/// log still reads, verifies and proves: `verify` canonicalises what it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_from_before_the_json_columns_still_verify() {
    let store = postgres_store().await;
    let fixture = fill(&store).await;
    let pool = store.postgres_pool().unwrap();
    // What the log looked like under migrations 1-9, then migration 10's own conversion.
    sqlx::raw_sql(
        "ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb, \
                            ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb; \
         ALTER TABLE events ALTER COLUMN payload TYPE json USING payload::json, \
                            ALTER COLUMN metadata TYPE json USING metadata::json;",
    )
    .execute(pool)
    .await
    .unwrap();
    let rendered: String =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE event_id = $1")
            .bind(fixture.events[0].3)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(rendered.contains("\": "), "{rendered}");
    let report = verify(&store, &fixture.keyring).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!(report.events_checked, 8);
    for (_, _, _, event_id) in &fixture.events[..7] {
        assert!(proof_verifies(&store, &fixture.keyring, *event_id).await);
    }
    let read = store.read_all(LogCursor::START, 100).await.unwrap();
    assert_eq!(read.len(), 8);
    assert_eq!(read[0].payload, json!({"n": 1, "due": "2026-01-01"}));
}

/// A new task stream with one event, and the store's pool.
async fn created_task_stream(store: &EventStore) -> (StreamId, sqlx::PgPool) {
    let stream = new_stream("task");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[new_event("TaskCreated", json!({"n": 1}))],
        )
        .await
        .unwrap();
    (stream, store.postgres_pool().unwrap().clone())
}

/// Appends the event after `version` to `stream` through `appender` while another transaction
/// holds a key-share lock on the stream's row: it must not wait for that lock.
async fn append_past_a_key_share_holder(
    pool: &sqlx::PgPool,
    appender: &EventStore,
    stream: &StreamId,
    version: i64,
) {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM streams WHERE stream_id = $1 FOR KEY SHARE")
        .bind(stream.as_str())
        .execute(&mut *holder)
        .await
        .unwrap();
    let event = new_event("TaskClaimed", json!({ "n": version + 1 }));
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        appender.append(
            stream,
            ExpectedVersion::Exact(StreamVersion(version)),
            std::slice::from_ref(&event),
        ),
    )
    .await
    .expect("the append does not wait for the stream's row lock")
    .unwrap();
    assert_eq!(outcome.stream_version.0, version + 1);
    holder.rollback().await.unwrap();
}

/// Another writer (a transaction, which does not use what this process read) moves `stream`
/// from `version` on by one event.
async fn moved_by_another_writer(store: &EventStore, stream: &StreamId, version: i64) {
    let mut tx = store.begin().await.unwrap();
    tx.append(
        stream,
        ExpectedVersion::Exact(StreamVersion(version)),
        &[new_event("TaskClaimed", json!({ "n": version + 1 }))],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// An append to `stream` expecting `version`, which another writer moved on by one: a conflict
/// at `version + 1`. Returns the refused event.
async fn refused_as_stale(store: &EventStore, stream: &StreamId, version: i64) -> NewEvent {
    let late = new_event("TaskClaimed", json!({"n": "late"}));
    let error = store
        .append(
            stream,
            ExpectedVersion::Exact(StreamVersion(version)),
            std::slice::from_ref(&late),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, lifeline_store::AppendError::Conflict { actual: Some(actual), .. } if actual.0 == version + 1),
        "{error:?}"
    );
    late
}

/// An append that expects the version this process last read of its stream chains from the
/// hash it read and does not lock the stream (migration 11): it goes through while another
/// transaction holds a key-share lock on the stream's row, which the lock of the older path
/// (`SELECT .. FOR UPDATE`) would wait for. Through group commit too. The chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_append_after_a_read_chains_from_the_hash_read_without_a_lock() {
    let store = postgres_store().await;
    let grouped = EventStore::clone(&store).with_group_commit();
    let (stream, pool) = created_task_stream(&store).await;
    for (version, appender) in [(1, &*store), (2, &grouped), (3, &*store)] {
        let read = appender.read_stream(&stream).await.unwrap();
        assert_eq!(read.len(), version);
        append_past_a_key_share_holder(&pool, appender, &stream, version as i64).await;
    }
    let (version, last_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT version, last_hash FROM streams WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    let last_event_hash: Vec<u8> = sqlx::query_scalar(
        "SELECT event_hash FROM events WHERE stream_id = $1 AND stream_version = 4",
    )
    .bind(stream.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, &last_hash), (4, &last_event_hash));
    assert_eq!(
        store.known_hash_appends(),
        lifeline_store::KnownHashAppends {
            written: 3,
            refused: 0
        }
    );
    let report = verify(&store, &Keyring::default()).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!(report.events_checked, 4);
}

/// After an append by a known hash, the stream is known at the version and hash that append
/// left: the next append (an agency's completion after its claim, with no read between) goes
/// without a lock too, through group commit as well; a stream this process never read is not
/// learnt from its appends; and an advanced hash is refused like a read one once the stream
/// moved elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_after_one_read_chain_from_each_other_without_a_lock() {
    let store = postgres_store().await;
    let grouped = EventStore::clone(&store).with_group_commit();
    let (stream, pool) = created_task_stream(&store).await;
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 1);
    for (version, appender) in [(1, &*store), (2, &grouped), (3, &*store)] {
        append_past_a_key_share_holder(&pool, appender, &stream, version as i64).await;
    }
    assert_eq!(
        store.known_hash_appends(),
        lifeline_store::KnownHashAppends {
            written: 3,
            refused: 0
        }
    );

    // Never read here: its appends lock it, and teach nothing.
    let (unread, _) = created_task_stream(&store).await;
    for version in [1, 2] {
        store
            .append(
                &unread,
                ExpectedVersion::Exact(StreamVersion(version)),
                &[new_event("TaskClaimed", json!({ "n": version + 1 }))],
            )
            .await
            .unwrap();
    }
    assert_eq!(store.known_hash_appends().written, 3);

    // Another writer moves the stream to 5: the hash known at 4 is refused, nothing is stored.
    moved_by_another_writer(&store, &stream, 4).await;
    refused_as_stale(&store, &stream, 4).await;
    assert_eq!(
        store.known_hash_appends(),
        lifeline_store::KnownHashAppends {
            written: 3,
            refused: 1
        }
    );
    let report = verify(&store, &Keyring::default()).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 5);
}

/// The hash read is only trusted while the stream is still where it was read: after another
/// writer moved it, an append expecting the old version is a conflict and stores nothing; and
/// the writing statement refuses a last hash that is not the stream's, at the right version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_append_from_a_stale_read_is_a_conflict_and_a_wrong_hash_is_refused() {
    let store = postgres_store().await;
    let (stream, pool) = created_task_stream(&store).await;
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 1);
    // Another writer (a transaction does not use what this process read) moves it to 2.
    moved_by_another_writer(&store, &stream, 1).await;
    let late = refused_as_stale(&store, &stream, 1).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = $1")
        .bind(late.event_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(
        store.known_hash_appends(),
        lifeline_store::KnownHashAppends {
            written: 0,
            refused: 1
        }
    );

    // The statement itself, at the stream's true version 2 but with another last hash.
    let wrong = Hash32([7; 32]);
    let event_id = Uuid::now_v7();
    let refused = sqlx::query(
        "SELECT * FROM lifeline_append_known_streams(
             '{}'::text[], '{}'::bigint[], '{}'::bytea[],
             ARRAY[$1], ARRAY[3::bigint], ARRAY[$2::uuid], ARRAY['TaskClaimed'], ARRAY[1],
             ARRAY['{}'::json], ARRAY['{}'::json], ARRAY[now()], ARRAY[$3::bytea],
             ARRAY[$1], ARRAY[2::bigint], ARRAY[3::bigint], ARRAY[$3::bytea], ARRAY[$4::bytea])",
    )
    .bind(stream.as_str())
    .bind(event_id)
    .bind(vec![9_u8; 32])
    .bind(wrong.0.to_vec())
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|error| error.code())
            .as_deref(),
        Some("LLG01"),
        "{refused:?}"
    );
    let (version, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT version FROM streams WHERE stream_id = $1), \
                (SELECT count(*) FROM events WHERE stream_id = $1)",
    )
    .bind(stream.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, events), (2, 2));
    let report = verify(&store, &Keyring::default()).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
}

/// Eight writers race on one stream, each reading it and appending at the version it read, with
/// and without group commit: every append either lands at the next version or is a conflict,
/// none is lost or stored twice, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_appends_after_reads_keep_one_chain() {
    let store = postgres_store().await;
    let grouped = EventStore::clone(&store).with_group_commit();
    let (stream, pool) = created_task_stream(&store).await;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8_u32 {
        let appender = if writer % 2 == 0 {
            EventStore::clone(&store)
        } else {
            grouped.clone()
        };
        let stream = stream.clone();
        writers.spawn(async move {
            let (mut stored, mut conflicts) = (Vec::new(), 0_u32);
            for round in 0..25_u32 {
                let read = appender.read_stream(&stream).await.unwrap();
                let version = read.last().unwrap().stream_version;
                let event = new_event("TaskNoted", json!({ "writer": writer, "round": round }));
                match appender
                    .append(
                        &stream,
                        ExpectedVersion::Exact(version),
                        std::slice::from_ref(&event),
                    )
                    .await
                {
                    Ok(outcome) => {
                        assert_eq!(outcome.stream_version.0, version.0 + 1);
                        stored.push(event.event_id);
                    }
                    Err(lifeline_store::AppendError::Conflict { .. }) => conflicts += 1,
                    Err(error) => panic!("writer {writer}: {error:?}"),
                }
            }
            (stored, conflicts)
        });
    }
    let mut stored = Vec::new();
    let mut conflicts = 0;
    while let Some(joined) = writers.join_next().await {
        let (ids, lost) = joined.unwrap();
        stored.extend(ids);
        conflicts += lost;
    }
    assert_eq!(stored.len() + conflicts as usize, 200);
    let events = store.read_stream(&stream).await.unwrap();
    assert_eq!(
        events.len(),
        stored.len() + 1,
        "one event per answered append"
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.stream_version.0, index as i64 + 1);
    }
    let mut ids: Vec<Uuid> = events[1..].iter().map(|event| event.event_id).collect();
    ids.sort();
    stored.sort();
    assert_eq!(ids, stored, "exactly the answered appends are stored");
    let last_hash: Vec<u8> =
        sqlx::query_scalar("SELECT last_hash FROM streams WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    let last_event_hash: Vec<u8> = sqlx::query_scalar(
        "SELECT event_hash FROM events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(stream.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last_hash, last_event_hash);
    let report = verify(&store, &Keyring::default()).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    let known = store.known_hash_appends();
    assert!(known.written > 0, "{known:?}");
}

/// `lifeline export` (`replay::export_log`) writes every event committed when it began, those
/// committed behind a transaction still open included (it waits for that transaction rather
/// than end at the first empty page), and none of a transaction begun after it. (Until 2026-12-07 it ended there, and exited 0, short of
/// the log.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_includes_the_events_committed_behind_an_open_transaction() {
    let test_store = postgres_store().await;
    let store = test_store.store().clone();
    let first = new_stream("export");
    store
        .append(
            &first,
            ExpectedVersion::NoStream,
            &[new_event("First", json!({}))],
        )
        .await
        .unwrap();
    let held = new_stream("export");
    let mut open = store.begin().await.unwrap();
    open.append(
        &held,
        ExpectedVersion::NoStream,
        &[new_event("Held", json!({}))],
    )
    .await
    .unwrap();
    let behind = new_stream("export");
    store
        .append(
            &behind,
            ExpectedVersion::NoStream,
            &[new_event("Behind", json!({}))],
        )
        .await
        .unwrap();

    let exporting = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let written = lifeline::replay::export_log(&store, &mut out).await;
            written.map(|written| (written, String::from_utf8(out).unwrap()))
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !exporting.is_finished(),
        "the export ended short of the log"
    );
    // Committed after the export began, by a transaction begun after it: not in it.
    let after = new_stream("export");
    store
        .append(
            &after,
            ExpectedVersion::NoStream,
            &[new_event("After", json!({}))],
        )
        .await
        .unwrap();
    open.commit().await.unwrap();
    let (written, text) = exporting.await.unwrap().unwrap();
    assert!(
        !text.contains(after.as_str()),
        "an event begun after the export:\n{text}"
    );
    for stream in [&first, &held, &behind] {
        assert!(
            text.contains(stream.as_str()),
            "{stream} not exported:\n{text}"
        );
    }
    assert_eq!(written, text.lines().count() as u64);
    test_store.close().await;
}
