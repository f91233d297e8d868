//! The access log over HTTP: reads of personal data are recorded (who, role, scope, what, when,
//! why) and shown to auditors in `GET /v1/audit/access-log` and in the person's timeline; routes
//! without personal data record nothing.

mod http_common;

use axum::http::{Method, StatusCode};
use http_common::*;
use lifeline_model::envelope::LogCursor;
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_store::projections;
use serde_json::Value;

const PURPOSE: &str = "complaint 2026-118: who saw the record";
const MOTHER: &str = "079190001234";

async fn auditor_get(app: &TestApp, uri: &str) -> (StatusCode, Value) {
    auditor_get_for(app, uri, PURPOSE).await
}

/// An auditor's GET of `uri` with `purpose` as `X-Purpose` (its bytes as given).
async fn auditor_get_for(app: &TestApp, uri: &str, purpose: &str) -> (StatusCode, Value) {
    let (status, body, _) = app
        .call_raw(
            Method::GET,
            uri,
            Some(&auditor()),
            None,
            &[("x-purpose", purpose)],
        )
        .await;
    (status, body)
}

/// The payloads of every `PersonalDataRead` in the log.
async fn reads(app: &TestApp) -> Vec<Value> {
    app.store
        .read_all(LogCursor::START, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.event_type == "PersonalDataRead")
        .map(|event| {
            assert!(event.stream_id.as_str().starts_with("access-"));
            event.payload.to_value()
        })
        .collect()
}

#[tokio::test]
async fn an_auditors_timeline_read_is_in_the_access_log_and_in_the_next_timeline() {
    let app = TestApp::new().await;
    record_birth(&app).await;
    let (status, first) = auditor_get(&app, &format!("/v1/audit/persons/{MOTHER}/timeline")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["accesses"].as_array().unwrap().len(), 0, "{first}");

    let (status, page) = auditor_get(&app, &format!("/v1/audit/access-log?person={MOTHER}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{page}");
    let entry = &entries[0];
    assert_eq!(entry["subject"], "auditor-1");
    assert_eq!(entry["role"], "auditor");
    assert_eq!(entry["scope"], "all");
    assert_eq!(entry["purpose"], PURPOSE);
    assert_eq!(entry["resource"]["kind"], "person_timeline");
    assert_eq!(entry["resource"]["personal_id"], MOTHER);
    assert_eq!(entry["read_at"], "2026-11-21T03:00:00Z");
    assert_eq!(page["caught_up"], true);
    // The mother's timeline showed the birth record, which names the father: his access
    // history shows that read too.
    let (status, fathers) = auditor_get(&app, "/v1/audit/access-log?person=079088004321").await;
    assert_eq!(status, StatusCode::OK, "{fathers}");
    assert!(
        fathers["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["resource"]["kind"] == "person_timeline"),
        "{fathers}"
    );

    // The next timeline shows the first read and the access-log read naming the person.
    let (status, second) = auditor_get(&app, &format!("/v1/audit/persons/{MOTHER}/timeline")).await;
    assert_eq!(status, StatusCode::OK);
    let kinds = resource_kinds(&second["accesses"]);
    // The mother's access-log page, and the father's, which showed the mother's number in the
    // timeline read's entry: each read names the numbers it showed.
    assert_eq!(
        kinds,
        ["person_timeline", "access_log", "access_log"],
        "{second}"
    );
    // Access records are listed as accesses, not as the person's events.
    assert!(second["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|event| event["event_type"] != "PersonalDataRead"));

    // Auditors must say why.
    let (status, body, _) = app
        .call(Method::GET, "/v1/audit/access-log", Some(&auditor()), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = app
        .call(
            Method::GET,
            "/v1/audit/access-log",
            Some(&registrar(HCM_OFFICE)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_registrars_read_of_a_life_event_is_logged_with_the_office_and_the_numbers() {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    let (status, _, _) = app
        .call(
            Method::GET,
            &format!("/v1/life-events/{birth}"),
            Some(&registrar(HCM_OFFICE)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reads = reads(&app).await;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["role"], "registrar");
    assert_eq!(reads[0]["scope"], "office:79-26734");
    assert_eq!(reads[0]["resource"]["life_event_id"], birth.as_str());
    assert!(reads[0].get("purpose").is_none(), "optional for registrars");
    let pins: Vec<&str> = reads[0]["personal_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pin| pin.as_str().unwrap())
        .collect();
    assert!(
        pins.contains(&MOTHER) && pins.contains(&"079088004321"),
        "{pins:?}"
    );
    // A refused read records nothing.
    let (status, _, _) = app
        .call(
            Method::GET,
            &format!("/v1/life-events/{birth}"),
            Some(&registrar(HANOI_OFFICE)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(reads_len(&app).await, 1);
}

async fn reads_len(app: &TestApp) -> usize {
    reads(app).await.len()
}

#[tokio::test]
async fn agency_reads_of_a_task_are_logged_with_the_agency_scope() {
    let app = TestApp::new().await;
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let (status, body, _) = app
        .call_raw(
            Method::GET,
            &format!("/v1/tasks/{task}"),
            Some(&officer("police-alice", AgencyId::Police)),
            None,
            &[("x-purpose", "registering the residence")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reads = reads(&app).await;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["subject"], "police-alice");
    assert_eq!(reads[0]["role"], "agency");
    assert_eq!(reads[0]["scope"], "agency:police");
    assert_eq!(reads[0]["resource"]["kind"], "task");
    assert_eq!(reads[0]["resource"]["task_id"], task.to_string());
    assert_eq!(reads[0]["purpose"], "registering the residence");

    let (status, page) = auditor_get(&app, "/v1/audit/access-log?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["entries"][0]["scope"], "agency:police");
}

#[tokio::test]
async fn a_claims_and_a_completions_answers_are_logged_reads_a_claim_again_too() {
    let app = TestApp::new().await;
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let alice = officer("police-alice", AgencyId::Police);
    for (suffix, body) in [
        ("/claim", None),
        ("/claim", None),
        (
            "/complete",
            Some(
                serde_json::json!({ "outcome": { "kind": "residence_registered",
                                                    "entry_number": "CT-2026-1" } }),
            ),
        ),
    ] {
        let (status, answer, _) = app
            .call_raw(
                Method::POST,
                &format!("/v1/tasks/{task}{suffix}"),
                Some(&alice),
                body.map(|body| serde_json::to_vec(&body).unwrap()),
                &[("x-purpose", "registering the residence")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{suffix}: {answer}");
        assert!(answer["application"].is_object(), "{answer}");
    }
    let reads = reads(&app).await;
    assert_eq!(reads.len(), 3, "{reads:?}");
    for read in &reads {
        assert_eq!(read["subject"], "police-alice");
        assert_eq!(read["resource"]["kind"], "task");
        assert_eq!(read["resource"]["task_id"], task.to_string());
        assert_eq!(read["purpose"], "registering the residence");
        assert!(
            !read["personal_ids"].as_array().unwrap().is_empty(),
            "{read}"
        );
    }
    // A command refused (the task is closed) serves nothing and logs nothing.
    let (status, _, _) = app
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/claim"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reads_len(&app).await, 3);
}

#[tokio::test]
async fn a_corrections_answer_is_a_logged_read_of_the_record() {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    let (status, answer, _) = app
        .call_raw(
            Method::POST,
            &format!("/v1/life-events/{birth}/corrections"),
            Some(&registrar(HCM_OFFICE)),
            Some(
                serde_json::to_vec(&serde_json::json!({
                    "reason": "typo in the place of birth",
                    "changes": { "child": { "place_of_birth": "Bệnh viện Hùng Vương" } }
                }))
                .unwrap(),
            ),
            &[("x-purpose", "correcting the record")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reads = reads(&app).await;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["resource"]["kind"], "life_event");
    assert_eq!(reads[0]["resource"]["life_event_id"], birth);
    assert_eq!(reads[0]["purpose"], "correcting the record");
    let named = reads[0]["personal_ids"].as_array().unwrap();
    assert!(named.iter().any(|pin| pin == MOTHER), "{named:?}");
}

/// A correction or a void stored while its answer cannot be logged (the access log refuses
/// every read): 503 `stored_answer_unavailable`, not the read's own 503, so the client knows the
/// change holds; the same request again with its key, once reads are logged, is answered with
/// the record and stores nothing. (Until 2026-12-07 the answer was `access_log_unavailable`,
/// the same as for a change not stored.)
#[tokio::test]
async fn a_change_stored_whose_answer_cannot_be_logged_says_it_is_stored() {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    let stream = lifeline_model::envelope::StreamId::parse(format!("birth-{birth}")).unwrap();
    let pool = app.store.sqlite_pool().unwrap().clone();
    let refuse_reads = || async {
        sqlx::query(
            "CREATE TRIGGER no_reads BEFORE INSERT ON events \
             WHEN NEW.stream_id LIKE 'access-%' \
             BEGIN SELECT RAISE(ABORT, 'the access log is away'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
    };
    let take_reads = || async {
        sqlx::query("DROP TRIGGER no_reads")
            .execute(&pool)
            .await
            .unwrap();
    };
    let send = |path: &'static str, body: Value, key: &'static str| {
        let app = &app;
        let uri = format!("/v1/life-events/{birth}/{path}");
        async move {
            app.call_raw(
                Method::POST,
                &uri,
                Some(&registrar(HCM_OFFICE)),
                Some(serde_json::to_vec(&body).unwrap()),
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let correction = serde_json::json!({
        "reason": "typo in the place of birth",
        "changes": { "child": { "place_of_birth": "Bệnh viện Hùng Vương" } }
    });
    let void = serde_json::json!({ "reason": "recorded twice" });

    for (path, body, key, event_type, version) in [
        ("corrections", correction, "fix-1", "LifeEventCorrected", 2),
        ("void", void, "void-1", "LifeEventVoided", 3),
    ] {
        refuse_reads().await;
        let (status, answer, _) = send(path, body.clone(), key).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "stored_answer_unavailable",
            "{answer}"
        );
        let events = app.store.read_stream(&stream).await.unwrap();
        assert_eq!(events.len(), version, "{path}: stored");
        assert_eq!(events[version - 1].event_type, event_type);
        assert_eq!(
            reads(&app).await.len(),
            version - 2,
            "nothing served, nothing logged"
        );

        take_reads().await;
        let (status, answer, _) = send(path, body, key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        assert_eq!(
            app.store.read_stream(&stream).await.unwrap().len(),
            version,
            "{path}: the retry stored nothing"
        );
        // The served answer is logged.
        assert_eq!(reads(&app).await.len(), version - 1);
    }

    // Without a key the answer says to read the record: sending it again would change nothing.
    let birth = record_birth(&app).await;
    refuse_reads().await;
    let (status, answer, _) = app
        .call(
            Method::POST,
            &format!("/v1/life-events/{birth}/corrections"),
            Some(&registrar(HCM_OFFICE)),
            Some(serde_json::json!({
                "reason": "typo in the place of birth",
                "changes": { "child": { "place_of_birth": "Bệnh viện Hùng Vương" } }
            })),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "stored_answer_unavailable");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("GET /v1/life-events/"), "{message}");
    assert!(!message.contains("Idempotency-Key"), "{message}");
    take_reads().await;
}

#[tokio::test]
async fn health_metrics_inbox_and_citizen_status_record_nothing() {
    let app = TestApp::new().await;
    let (_, recorded, _) = app
        .call(
            Method::POST,
            "/v1/births",
            Some(&registrar(HCM_OFFICE)),
            Some(birth_body()),
        )
        .await;
    let reference = recorded["reference"].as_str().unwrap();
    let before = app.log_len().await;
    for uri in [
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        "/metrics".to_owned(),
        "/openapi.json".to_owned(),
        format!("/v1/status/{reference}"),
        "/v1/agencies/police/tasks".to_owned(),
    ] {
        let token = if uri.contains("agencies") {
            officer("police-alice", AgencyId::Police)
        } else {
            operator()
        };
        let (status, body, _) = app.call(Method::GET, &uri, Some(&token), None).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "{uri}: {status} {body}"
        );
    }
    assert_eq!(app.log_len().await, before);
    assert_eq!(reads_len(&app).await, 0);
}

/// A task of `procedure` for the example birth, as a policy would make it, in the inbox.
async fn create_task(app: &TestApp, procedure: ProcedureId) -> uuid::Uuid {
    use chrono::Duration;
    use lifeline::registry::Actor;
    use lifeline_model::declaration::{parse_birth, Declaration};
    use lifeline_model::envelope::Role;
    use lifeline_model::task::{Application, TaskCommand, TaskStatus};
    use lifeline_model::values::OfficeCode;
    use uuid::Uuid;

    let input = serde_json::from_value(birth_body()).unwrap();
    let declaration = Declaration::Birth(parse_birth(&input, now().date_naive()).unwrap());
    let application = Application::for_procedure(procedure, &declaration.flatten());
    let task_id = Uuid::now_v7();
    let life_event_id = Uuid::now_v7();
    let actor = Actor {
        id: "policy:test".to_owned(),
        role: Role::System,
        office: None,
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    let office = OfficeCode::parse(HCM_OFFICE).unwrap();
    let due_at = now() + Duration::days(2);
    app.state
        .tasks
        .execute(
            &actor,
            task_id,
            TaskCommand::Create {
                task_id,
                procedure,
                life_event_id,
                office: office.clone(),
                application: application.clone(),
                due_at,
                source_event_id: Uuid::now_v7(),
                at: now(),
            },
        )
        .await
        .unwrap();
    let row = projections::TaskRow {
        task_id,
        procedure,
        agency: procedure.agency(),
        office,
        life_event_id,
        status: TaskStatus::Open,
        claimed_by: None,
        due_at,
        overdue: false,
        created_at: now(),
        updated_at: now(),
        application,
        outcome: None,
        reason: None,
    };
    let mut tx = app.store.begin().await.unwrap();
    projections::save_task(&mut tx, &row).await.unwrap();
    tx.commit().await.unwrap();
    task_id
}

#[tokio::test]
async fn a_purpose_in_vietnamese_is_recorded_as_written() {
    let app = TestApp::new().await;
    record_birth(&app).await;
    let timeline = format!("/v1/audit/persons/{MOTHER}/timeline");
    let raw = "Thanh tra theo quyết định số 12/QĐ-TTr";
    // Raw UTF-8, and RFC 8187's form (what a browser, limited to ASCII headers, can send).
    for sent in [raw, "UTF-8''Ki%E1%BB%83m%20tra%20h%E1%BB%93%20s%C6%A1"] {
        let (status, body) = auditor_get_for(&app, &timeline, sent).await;
        assert_eq!(status, StatusCode::OK, "{sent}: {body}");
    }
    let purposes: Vec<Value> = reads(&app)
        .await
        .into_iter()
        .map(|read| read["purpose"].clone())
        .collect();
    assert_eq!(purposes, [raw, "Kiểm tra hồ sơ"]);

    // Percent-encoded bytes that are not UTF-8: refused, and nothing recorded.
    let (status, body) = auditor_get_for(&app, &timeline, "UTF-8''%FF%FE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_purpose");
    assert_eq!(reads(&app).await.len(), 2);
}

/// The example birth with other parents (the mother also declaring): its life event id.
async fn record_other_birth(app: &TestApp, mother: &str, father: &str) -> String {
    let mut body = birth_body();
    body["mother"]["personal_id"] = mother.into();
    body["father"]["personal_id"] = father.into();
    body["declarant"]["personal_id"] = mother.into();
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/births",
            Some(&registrar(HCM_OFFICE)),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["life_event_id"].as_str().unwrap().to_owned()
}

/// The kinds of the reads in `person`'s access history, in commit order.
async fn access_kinds(app: &TestApp, person: &str) -> Vec<String> {
    let (status, page) = auditor_get(app, &format!("/v1/audit/access-log?person={person}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["caught_up"], true, "{page}");
    resource_kinds(&page["entries"])
}

/// The kinds of the resources read by `entries` (access-log entries), in order.
fn resource_kinds(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["resource"]["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_exports_and_replays_that_held_a_persons_records_are_in_their_access_history() {
    const OTHER_MOTHER: &str = "079190005678";
    let app = TestApp::new().await;
    // The log: the first birth's record (MOTHER's), then the other's.
    record_birth(&app).await;
    record_other_birth(&app, OTHER_MOTHER, "079088008765").await;
    lifeline_policies::projections::rebuild::rebuild_projections(&app.store)
        .await
        .unwrap();
    let records = app.store.read_all(LogCursor::START, 10).await.unwrap();
    assert_eq!(records.len(), 2);
    let (first_at, second_at) = (
        records[0].metadata.recorded_at,
        records[1].metadata.recorded_at,
    );
    assert!(first_at < second_at);
    let at = |time: chrono::DateTime<chrono::Utc>| time.to_rfc3339().replace('+', "%2B");

    // Bulk reads name nobody: each is listed for the people whose records it held, and only
    // for them.
    let (status, first) = auditor_get(&app, "/v1/audit/events?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let past_first = first["next_cursor"].as_str().unwrap().to_owned();
    let (status, second) = auditor_get(
        &app,
        &format!("/v1/audit/events?limit=1&cursor={past_first}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["events"].as_array().unwrap().len(), 1, "{second}");
    // Each stops at the first event recorded at or after its moment.
    for uri in [
        format!("/v1/audit/export?cursor={past_first}"),
        format!("/v1/audit/export?until={}", at(first_at)),
        format!("/v1/audit/export?until={}", at(second_at)),
        "/v1/audit/export".to_owned(),
        format!("/v1/audit/replay?as_of={}", at(first_at)),
        format!("/v1/audit/replay?as_of={}", at(second_at)),
        format!(
            "/v1/audit/replay?as_of={}",
            at(second_at + chrono::Duration::seconds(1))
        ),
    ] {
        let (status, body, _) = app
            .call_raw(
                Method::GET,
                &uri,
                Some(&auditor()),
                None,
                &[("x-purpose", PURPOSE)],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    // MOTHER's record: the first page, the export until the second record and the whole one,
    // the replays as of the second record and after it.
    assert_eq!(
        access_kinds(&app, MOTHER).await,
        ["log_page", "export", "export", "replay", "replay"]
    );
    // The other mother's: the second page, the export after the first record, the whole
    // export, the replay after the second record; not the reads that stopped before it.
    assert_eq!(
        access_kinds(&app, OTHER_MOTHER).await,
        ["log_page", "export", "export", "replay"]
    );

    // The timeline's accesses list them as well (and the access-log read that named MOTHER).
    let (status, timeline) =
        auditor_get(&app, &format!("/v1/audit/persons/{MOTHER}/timeline")).await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    let kinds = resource_kinds(&timeline["accesses"]);
    assert_eq!(
        kinds,
        [
            "log_page",
            "export",
            "export",
            "replay",
            "replay",
            "access_log"
        ],
        "{timeline}"
    );
}

#[tokio::test]
async fn an_export_ends_at_its_own_access_log_entry() {
    let app = TestApp::new().await;
    record_birth(&app).await;
    let (status, body, _) = app
        .call_raw(
            Method::GET,
            "/v1/audit/export",
            Some(&auditor()),
            None,
            &[("x-purpose", PURPOSE)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // One line, the birth: the export's own entry, stored before it streamed, is not in it
    // (two lines would not parse as one JSON value).
    assert_eq!(body["event_type"], "BirthRecorded", "{body}");
    let reads = reads(&app).await;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["resource"]["kind"], "export");
}

/// An inclusion proof shows its event's payload: its read names the numbers in it, so the
/// child's number assignment (in `pin-<number>`, a stream the person registry does not link
/// to the child) is in the child's access history. (Until 2026-12-07 a proof's read named
/// nobody.)
#[tokio::test]
async fn an_inclusion_proof_is_in_the_access_history_of_the_persons_it_shows() {
    let app = TestApp::new().await;
    let life_event_id: uuid::Uuid = record_birth(&app).await.parse().unwrap();
    let child = assign_child_number(&app, life_event_id).await;
    let key = lifeline_model::integrity::KeyPair::generate();
    lifeline_store::seal_all(&app.store, &key).await.unwrap();
    let assignment = lifeline_policies::identity::assignment_event_id(life_event_id);
    let (status, proof) = auditor_get(&app, &format!("/v1/audit/proof/{assignment}")).await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    assert_eq!(access_kinds(&app, child.as_str()).await, ["stream"]);
}
