//! The registrar's API on PostgreSQL, where requests and policies run at the same time: a
//! correction that contradicts the child's personal ID number is refused even when the number
//! was assigned while the correction was on its way (the services' HTTP tests run on SQLite,
//! one writer, where that cannot interleave).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use lifeline::auth::{issue_token_for, Scope, TokenVerifier};
use lifeline::http::{app, AppState};
use lifeline_model::codec::to_new_event;
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, Role, StreamId};
use lifeline_model::system_events::{PersonalIdAssigned, SystemEvent};
use lifeline_model::values::{FullName, OfficeCode, PersonalId, Sex};
use lifeline_policies::identity::{assignment_event_id, PIN_STREAM_KIND};
use lifeline_tests::chain::birth_input;
use lifeline_tests::{eventually, postgres_store};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const OFFICE: &str = "79-26734";

fn registrar() -> String {
    issue_token_for(
        SECRET,
        "registrar-79",
        Role::Registrar,
        Scope::Office(OfficeCode::parse(OFFICE).unwrap()),
        Duration::from_secs(600),
    )
    .unwrap()
}

async fn call(state: &AppState, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", registrar()))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The birth of `DESIGN.md` (a girl born on 2026-11-20, office 79-26734), as `POST /v1/births`
/// takes it.
fn birth() -> Value {
    serde_json::to_value(birth_input(0)).unwrap()
}

/// The example girl's number, as `birth-followups`' allocator stores it: `pin-<number>`, under
/// the record's assignment id.
fn assignment(life_event_id: Uuid) -> (StreamId, lifeline_model::envelope::NewEvent) {
    let pin = PersonalId::parse("079326000042").unwrap();
    let now = chrono::Utc::now();
    let assigned = PersonalIdAssigned::new(
        pin.clone(),
        life_event_id,
        None,
        FullName::parse_field(
            birth_input(0).child.unwrap().full_name.as_deref().unwrap(),
            "child.full_name",
        )
        .unwrap(),
        chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
        Sex::Female,
        now,
    )
    .unwrap();
    (
        StreamId::for_kind(PIN_STREAM_KIND, pin.as_str()).unwrap(),
        to_new_event(
            &SystemEvent::PersonalIdAssigned(assigned),
            assignment_event_id(life_event_id),
            EventMetadata::system("policy:identity", Uuid::new_v4(), None, now),
        ),
    )
}

/// How many of this database's sessions wait for a lock.
async fn waiting_for_a_lock(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correction_is_checked_against_a_number_assigned_while_it_waited_for_the_record() {
    let test_store = postgres_store().await;
    let store = test_store.store().clone();
    let state = AppState::new(store.clone(), TokenVerifier::hs256(SECRET).unwrap())
        .with_offices([OFFICE.to_owned()]);
    let (status, body) = call(&state, Method::POST, "/v1/births", birth()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let life_event_id: Uuid = body["life_event_id"].as_str().unwrap().parse().unwrap();
    let record = StreamId::for_kind("birth", life_event_id).unwrap();
    let corrections = format!("/v1/life-events/{life_event_id}/corrections");

    // birth-followups, assigning the number: it holds the record (read `FOR SHARE`) from
    // its read until its commit.
    let mut policy = store.begin().await.unwrap();
    let read = policy.read_streams_held(&[&record]).await.unwrap();
    assert_eq!(read[&record].len(), 1);

    // Meanwhile the registrar corrects the child's sex, which the number encodes. When the
    // correction was sent no number was stored.
    let correcting = tokio::spawn({
        let state = state.clone();
        let corrections = corrections.clone();
        async move {
            call(
                &state,
                Method::POST,
                &corrections,
                json!({ "reason": "nhầm giới tính", "changes": { "child": { "sex": "male" } } }),
            )
            .await
        }
    });
    let pool = store.postgres_pool().unwrap().clone();
    eventually(
        Duration::from_secs(10),
        "the correction to wait for the policy's hold on the record",
        || {
            let pool = pool.clone();
            async move { waiting_for_a_lock(&pool).await > 0 }
        },
    )
    .await;

    // The policy stores the number (a girl born in 2026) and commits.
    let (pin_stream, assigned) = assignment(life_event_id);
    policy
        .append(&pin_stream, ExpectedVersion::NoStream, &[assigned])
        .await
        .unwrap();
    policy.commit().await.unwrap();

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), correcting)
        .await
        .expect("the correction answers once the policy committed")
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["field_codes"]["changes.child.sex"], "personal_id_assigned",
        "{body}"
    );
    assert_eq!(
        store.read_stream(&record).await.unwrap().len(),
        1,
        "the refused correction stored nothing"
    );

    // A correction the number allows (another day of the same year) is taken, on the same path.
    let (status, body) = call(
        &state,
        Method::POST,
        &corrections,
        json!({ "reason": "nhầm ngày", "changes": { "child": { "date_of_birth": "2026-11-19" } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(store.read_stream(&record).await.unwrap().len(), 2);
    test_store.close().await;
}
