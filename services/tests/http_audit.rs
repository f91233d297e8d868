//! Auditor routes over HTTP: paging the whole log by cursor (every event once, in commit
//! order), a stream's history, a person's timeline, the NDJSON export, replay as of a moment
//! (equal to a rebuild from the log up to it), X-Purpose, and 403 for everyone else.

mod http_common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use http_common::*;
use lifeline::replay::replay_until;
use lifeline_model::envelope::{ExpectedVersion, LogCursor, NewEvent, Role};
use lifeline_model::procedure::{AgencyId, ProcedureGroup};
use lifeline_model::values::PersonalId;
use lifeline_store::projections::{self, PersonLifeEvent, PersonRole, PersonRow, VitalStatus};
use serde_json::{json, Value};
use tower::ServiceExt;

const PURPOSE: (&str, &str) = ("x-purpose", "case 2026-118: review of a complaint");
const MOTHER: &str = "079190001234";

async fn get(app: &TestApp, uri: &str) -> (StatusCode, Value) {
    let (status, body, _) = app
        .call_raw(Method::GET, uri, Some(&auditor()), None, &[PURPOSE])
        .await;
    (status, body)
}

/// A birth, a correction and a death: a small log with two streams per life event.
async fn populated() -> (TestApp, String) {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    let change = json!({ "reason": "typo in the name", "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("/v1/life-events/{birth}/corrections"),
            Some(&registrar(HCM_OFFICE)),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/deaths",
            Some(&registrar(HANOI_OFFICE)),
            Some(death_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (app, birth)
}

#[tokio::test]
async fn paging_the_log_returns_every_event_once_in_commit_order() {
    let (app, _) = populated().await;
    let all = app.store.read_all(LogCursor::START, 10_000).await.unwrap();
    assert!(all.len() >= 3);

    // Every page read is itself recorded (PersonalDataRead) after it is served, so paging never
    // finds the log empty: it catches up with what was there, then sees its own reads.
    let mut seen = Vec::new();
    let mut reads = 0;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    while seen.len() < all.len() {
        let uri = match &cursor {
            Some(cursor) => format!("/v1/audit/events?limit=1&cursor={cursor}"),
            None => "/v1/audit/events?limit=1".to_owned(),
        };
        let (status, page) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().unwrap();
        pages += 1;
        assert_eq!(events.len(), 1, "{page}");
        for event in events {
            // The auditor's own page reads; the registrar's read of its correction's answer is
            // part of the log as populated.
            if event["event_type"] == "PersonalDataRead"
                && event["payload"]["subject"] == "auditor-1"
            {
                assert_eq!(event["payload"]["resource"]["kind"], "log_page");
                reads += 1;
            } else {
                seen.push(event["event_id"].as_str().unwrap().to_owned());
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        assert!(cursor.is_some());
        assert!(pages < 1_000);
    }
    assert_eq!(
        reads, 0,
        "the pages before the first read's record hold the original log"
    );
    let expected: Vec<String> = all.iter().map(|event| event.event_id.to_string()).collect();
    assert_eq!(seen, expected);

    let (status, page) = get(&app, "/v1/audit/events").await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        all.len() + pages,
        "the log, then one read record per page"
    );
    assert!(events[all.len()..]
        .iter()
        .all(|event| event["event_type"] == "PersonalDataRead"));
    assert_eq!(
        page["events"][0]["global_position"],
        all[0].global_position.0
    );
    assert!(page["events"][0]["payload"].is_object());
    assert!(page["events"][0]["metadata"]["actor"].is_string());

    for bad in [
        "cursor=%21%21",
        "cursor=bm9wZQ",
        "limit=0",
        "limit=1001",
        "limit=x",
    ] {
        let (status, body) = get(&app, &format!("/v1/audit/events?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_streams_history_in_version_order() {
    let (app, birth) = populated().await;
    let (status, body) = get(&app, &format!("/v1/audit/streams/birth-{birth}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stream_id"], format!("birth-{birth}"));
    assert_eq!(body["version"], 2);
    let types: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["BirthRecorded", "LifeEventCorrected"]);
    assert_eq!(body["events"][1]["stream_version"], 2);
    for missing in ["birth-00000000-0000-0000-0000-000000000000", "NOT A STREAM"] {
        let (status, _) = get(
            &app,
            &format!("/v1/audit/streams/{}", missing.replace(' ', "%20")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_persons_timeline_by_scan_and_through_the_registry() {
    let (app, birth) = populated().await;
    let (status, scanned) = get(&app, &format!("/v1/audit/persons/{MOTHER}/timeline")).await;
    assert_eq!(status, StatusCode::OK, "{scanned}");
    assert_eq!(scanned["source"], "scan");
    let types: Vec<&str> = scanned["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect();
    // The birth and its correction name the mother; the death does not.
    assert_eq!(types, ["BirthRecorded", "LifeEventCorrected"]);

    // With the person in the registry, the timeline follows its links and finds the same.
    let life_event_id = birth.parse().unwrap();
    let row = PersonRow {
        personal_id: PersonalId::parse(MOTHER).unwrap(),
        full_name: "Trần Thị Bích".to_owned(),
        date_of_birth: None,
        sex: None,
        vital_status: VitalStatus::Alive,
        date_of_death: None,
        death_life_event_id: None,
        residence: None,
        insurance: None,
        facts: vec![],
        life_events: vec![PersonLifeEvent {
            life_event_id,
            kind: ProcedureGroup::Birth,
            role: PersonRole::Mother,
            voided: false,
        }],
        updated_at: Utc::now(),
    };
    let mut tx = app.store.begin().await.unwrap();
    projections::save_person(&mut tx, &row).await.unwrap();
    tx.commit().await.unwrap();
    let (status, indexed) = get(&app, &format!("/v1/audit/persons/{MOTHER}/timeline")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(indexed["source"], "registry");
    assert_eq!(indexed["events"], scanned["events"]);
    let (_, forced) = get(
        &app,
        &format!("/v1/audit/persons/{MOTHER}/timeline?scan=true"),
    )
    .await;
    assert_eq!(forced["source"], "scan");

    let (status, body) = get(&app, "/v1/audit/persons/12345/timeline").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["fields"]["pin"].is_string());
}

async fn export_lines(app: &TestApp, query: &str) -> Vec<Value> {
    let request = Request::builder()
        .uri(format!("/v1/audit/export{query}"))
        .header("authorization", format!("Bearer {}", auditor()))
        .header(PURPOSE.0, PURPOSE.1)
        .body(Body::empty())
        .unwrap();
    let response = app.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    // Without the access-log records (each export and page read adds one; `log_len` does
    // not count them either).
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["event_type"] != "PersonalDataRead")
        .collect()
}

#[tokio::test]
async fn the_export_has_one_line_per_event() {
    let (app, _) = populated().await;
    let log_len = app.log_len().await;
    let lines = export_lines(&app, "").await;
    assert_eq!(lines.len(), log_len);
    let positions: Vec<i64> = lines
        .iter()
        .map(|line| line["global_position"].as_i64().unwrap())
        .collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted);
    // A range: after the first page's cursor.
    let (_, page) = get(&app, "/v1/audit/events?limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = export_lines(&app, &format!("?cursor={cursor}")).await;
    assert_eq!(rest.len(), lines.len() - 1);
    let none = export_lines(&app, "?until=2000-01-01T00:00:00Z").await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn replay_before_a_correction_differs_from_now_and_equals_a_rebuild_up_to_then() {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    let before_correction = Utc::now();
    let change = json!({ "reason": "typo in the name", "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("/v1/life-events/{birth}/corrections"),
            Some(&registrar(HCM_OFFICE)),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/deaths",
            Some(&registrar(HANOI_OFFICE)),
            Some(death_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let as_of = before_correction.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (status, then) = get(
        &app,
        &format!("/v1/audit/replay?as_of={}", as_of.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{then}");
    let later = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, now_view) = get(&app, &format!("/v1/audit/replay?as_of={later}")).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(then["life_events"].as_array().unwrap().len(), 1);
    assert_eq!(then["life_events"][0]["corrections"], 0);
    assert_eq!(now_view["life_events"].as_array().unwrap().len(), 2);
    let birth_now = now_view["life_events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["life_event_id"] == birth.as_str())
        .unwrap();
    assert_eq!(birth_now["corrections"], 1);
    assert_ne!(
        then["persons"], now_view["persons"],
        "the death adds persons"
    );
    let mother = then["persons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|person| person["personal_id"] == MOTHER)
        .unwrap();
    assert_eq!(mother["life_events"][0]["role"], "mother");

    // A rebuild from the log up to that moment: copy the prefix into a fresh store and fold all.
    let all = app.store.read_all(LogCursor::START, 10_000).await.unwrap();
    let prefix: Vec<_> = all
        .iter()
        .take_while(|event| event.metadata.recorded_at < before_correction)
        .collect();
    assert!(!prefix.is_empty() && prefix.len() < all.len());
    let copy = TestApp::new().await;
    for event in &prefix {
        copy.store
            .append(
                &event.stream_id,
                ExpectedVersion::Any,
                &[NewEvent {
                    event_id: event.event_id,
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    payload: event.payload.to_value(),
                    metadata: event.metadata.clone(),
                }],
            )
            .await
            .unwrap();
    }
    let rebuilt = replay_until(&copy.store, None).await.unwrap();
    let rebuilt = serde_json::to_value(&rebuilt).unwrap();
    assert_eq!(then["persons"], rebuilt["persons"]);
    assert_eq!(then["life_events"], rebuilt["life_events"]);
    assert_eq!(then["events_replayed"], prefix.len());

    for bad in ["", "?as_of=yesterday"] {
        let (status, body) = get(&app, &format!("/v1/audit/replay{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["error"]["fields"]["as_of"].is_string());
    }
}

#[tokio::test]
async fn only_auditors_with_a_purpose_read_the_log() {
    let (app, birth) = populated().await;
    let routes = [
        "/v1/audit/events".to_owned(),
        format!("/v1/audit/streams/birth-{birth}"),
        format!("/v1/audit/persons/{MOTHER}/timeline"),
        "/v1/audit/replay?as_of=2030-01-01T00:00:00Z".to_owned(),
        "/v1/audit/export".to_owned(),
    ];
    let others = [
        registrar(HCM_OFFICE),
        officer("police-alice", AgencyId::Police),
        operator(),
    ];
    for route in &routes {
        for token in &others {
            let (status, body, _) = app
                .call_raw(Method::GET, route, Some(token), None, &[PURPOSE])
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{route}: {body}");
            assert_eq!(body["error"]["code"], "forbidden_role");
        }
        let (status, _, _) = app
            .call_raw(Method::GET, route, None, None, &[PURPOSE])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}");
        let (status, body, _) = app
            .call_raw(Method::GET, route, Some(&auditor()), None, &[])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{route}: {body}");
        assert_eq!(body["error"]["code"], "purpose_required");
        assert!(body["error"]["fields"]["X-Purpose"].is_string());
        let (status, _, _) = app
            .call_raw(Method::GET, route, Some(&auditor()), None, &[PURPOSE])
            .await;
        assert_eq!(status, StatusCode::OK, "{route}");
    }
    // Auditors write nothing.
    let (status, _, _) = app
        .call(
            Method::POST,
            "/v1/births",
            Some(&auditor()),
            Some(birth_body()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let _ = BTreeSet::<String>::new();
    let _ = Role::Auditor;
}

#[tokio::test]
async fn a_correction_of_a_birth_keeps_the_child_linked_and_renames_it_in_the_replay() {
    let app = TestApp::new().await;
    let birth = record_birth(&app).await;
    // The child's number, as birth-followups assigns it once the registration completes.
    let child = assign_child_number(&app, birth.parse().unwrap()).await;
    let change = json!({ "reason": "name misread", "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("/v1/life-events/{birth}/corrections"),
            Some(&registrar(HCM_OFFICE)),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let later = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, view) = get(&app, &format!("/v1/audit/replay?as_of={later}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let person = view["persons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|person| person["personal_id"] == child.as_str())
        .unwrap_or_else(|| panic!("the child in {view}"));
    let links = person["life_events"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{person}");
    assert_eq!(links[0]["role"], "child");
    assert_eq!(links[0]["life_event_id"], birth.as_str());
    assert_eq!(person["full_name"], "Nguyễn Minh Anh", "{person}");
}
