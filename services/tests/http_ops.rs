//! Operations and cross-cutting behaviour over HTTP: health, readiness, metrics, request ids,
//! citizen status without personal data, the committed OpenAPI document, and a real server on
//! port 0 that shuts down gracefully.

mod http_common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use chrono::NaiveDate;
use http_common::*;
use lifeline::http::openapi::openapi_pretty_json;
use lifeline::http::{Application, ReadinessProbe};
use lifeline_model::life_event::Reference;
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::values::OfficeCode;
use lifeline_store::projections::{self, LifeEventStatusRow, ProcedureState, ProcedureStatusRow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let app = TestApp::new().await;
    let (status, body, headers) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.get("x-request-id").is_some());
    let (status, body, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["store"], "ok");

    record_birth(&app).await;
    let _ = app
        .call(
            Method::GET,
            "/v1/life-events/not-an-id",
            Some(&registrar(HCM_OFFICE)),
            None,
        )
        .await;
    let (status, _, headers) = app.call_raw(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"lifeline_http_requests_total{route="/v1/births",method="POST",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"lifeline_http_requests_total{route="/v1/life-events/{id}",method="GET",status="404"} 1"#),
        "route templates, not raw paths: {text}"
    );
    assert!(text.contains("lifeline_http_request_duration_seconds_bucket{route=\"/v1/births\""));
    assert!(
        text.contains(r#"lifeline_events_appended_total{event_type="BirthRecorded"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_names_a_dependency_that_does_not_answer() {
    let mut app = TestApp::new().await;
    let probe: ReadinessProbe =
        Arc::new(|| Box::pin(async { Err("connection refused".to_owned()) }));
    app.state = app.state.clone().with_readiness_probe("nats", probe);
    let (status, body, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "not_ready");
    assert!(body["error"]["fields"]["nats"].is_string());
    assert!(
        !body.to_string().contains("connection refused"),
        "internals are not sent"
    );
}

/// NATS down does not take the API out of service (writes need only the store): `/readyz`
/// reports it and stays 200.
#[tokio::test]
async fn an_informational_dependency_down_is_reported_without_failing_readiness() {
    let mut app = TestApp::new().await;
    let probe: ReadinessProbe =
        Arc::new(|| Box::pin(async { Err("nats is disconnected".to_owned()) }));
    app.state = app.state.clone().with_informational_probe("nats", probe);
    let (status, body, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["store"], "ok");
    assert!(
        body["checks"]["nats"].as_str().unwrap().starts_with("down"),
        "{body}"
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_unknown_routes_answer_in_the_error_format() {
    let app = TestApp::new().await;
    let (_, _, headers) = app
        .call_raw(
            Method::GET,
            "/healthz",
            None,
            None,
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (status, body, headers) = app.call(Method::GET, "/v2/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(headers.get("x-request-id").is_some());
    let (status, body, _) = app.call(Method::DELETE, "/v1/births", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn citizen_status_has_no_personal_data() {
    let app = TestApp::new().await;
    let id: Uuid = record_birth(&app).await.parse().unwrap();
    let reference = Reference::for_life_event(id);
    let row = LifeEventStatusRow {
        life_event_id: id,
        kind: ProcedureGroup::Birth,
        reference: reference.clone(),
        office: OfficeCode::parse(HCM_OFFICE).unwrap(),
        recorded_on: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
        late: false,
        voided: false,
        corrections: 0,
        updated_at: now(),
        procedures: ProcedureGroup::Birth
            .procedures()
            .iter()
            .map(|procedure| ProcedureStatusRow {
                procedure: *procedure,
                state: if *procedure == ProcedureId::BirthRegistration {
                    ProcedureState::Open
                } else {
                    ProcedureState::Pending
                },
                task_id: None,
                opened_at: Some(now()),
                closed_at: None,
                due_at: None,
                overdue: false,
                detail: None,
            })
            .collect(),
    };
    let mut tx = app.store.begin().await.unwrap();
    projections::save_life_event_status(&mut tx, &row)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let path = format!("/v1/status/{reference}");
    let (status, body, _) = app.call(Method::GET, &path, Some(&operator()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["procedures"][0]["procedure"], "birth-registration");
    assert_eq!(body["procedures"][0]["state"], "open");
    let text = body.to_string();
    for personal in [
        "079190001234",
        "079088004321",
        "Nguyễn",
        "Trần",
        "Lê Lợi",
        "+84901234567",
    ] {
        assert!(
            !text.contains(personal),
            "{personal} in citizen status: {text}"
        );
    }
    let (status, _, _) = app.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = app
        .call(
            Method::GET,
            "/v1/status/LL-0000000000",
            Some(&operator()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn openapi_committed_copy_matches_the_code() {
    let generated = openapi_pretty_json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var("LIFELINE_UPDATE_OPENAPI").is_ok_and(|value| value == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "services/openapi.json differs from the document the code generates; regenerate it with \
         `LIFELINE_UPDATE_OPENAPI=1 cargo test -p lifeline --test http_ops openapi` and commit it"
    );
    let app = TestApp::new().await;
    let (status, served, _) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let generated: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(served, generated);
    for path in [
        "/v1/births",
        "/v1/deaths",
        "/v1/tasks/{id}/complete",
        "/v1/status/{reference}",
    ] {
        assert!(served["paths"][path].is_object(), "{path} not documented");
    }
}

#[tokio::test]
async fn a_real_server_on_port_zero_answers_and_stops_gracefully() {
    let app = TestApp::new().await;
    let server = Application::build("127.0.0.1:0".parse().unwrap(), app.state.clone())
        .await
        .unwrap();
    let port = server.port();
    assert_ne!(port, 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-request-id"),
        "{response}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}

/// Past `max_in_flight` requests wait for a turn, and past `queue_timeout` they are shed with
/// 503 `overloaded` and `Retry-After`; health and metrics still answer; once the turn is free
/// the next request is served again.
#[tokio::test]
async fn an_overloaded_server_sheds_requests_but_still_answers_health() {
    let app = TestApp::new().await;
    let settings = lifeline::http::HttpSettings {
        max_in_flight: 1,
        queue_timeout: std::time::Duration::from_millis(100),
        ..lifeline::http::HttpSettings::default()
    };
    let state = app.state.clone().with_settings(settings);
    let server = Application::build("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let port = server.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let token = registrar(HCM_OFFICE);
    // The only turn: a birth whose body never finishes arriving holds it.
    let mut holder = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/births HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"office\":"
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             connection: close\r\n\r\n"
        )
    };
    let exchange = |request: String| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let shed = exchange(get(&format!("/v1/life-events/{}", Uuid::now_v7()))).await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(
        shed.to_ascii_lowercase().contains("retry-after: 1"),
        "{shed}"
    );
    assert!(shed.contains("\"overloaded\""), "{shed}");
    let health = exchange(get("/healthz")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    drop(holder);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let served = exchange(get(&format!("/v1/life-events/{}", Uuid::now_v7()))).await;
    assert!(served.starts_with("HTTP/1.1 404"), "{served}");

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}

/// A retry of failed policy runs naming a policy the engine does not know is refused, naming
/// `policy` (until 2026-12-07 it answered that nothing was retried).
#[tokio::test]
async fn a_retry_naming_an_unknown_policy_is_refused() {
    let mut app = TestApp::new().await;
    let engine: Arc<dyn lifeline_policies::PolicyHandler> =
        Arc::new(lifeline::serve::policy_engine(
            lifeline_policies::reference::ReferenceData::embedded().unwrap(),
        ));
    app.state = app.state.clone().with_policy_handler(engine);
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/policies/retry",
            Some(&operator()),
            Some(serde_json::json!({ "policy": "birth-folowups" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["field_codes"]["policy"], "unknown_policy",
        "{body}"
    );
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/policies/retry",
            Some(&operator()),
            Some(serde_json::json!({ "policy": "birth-followups" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
