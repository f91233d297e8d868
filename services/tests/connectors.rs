//! Connectors against wiremock agency systems: the signed application (signature checked here
//! independently), retries on 5xx and timeouts, a permanent 4xx marked for manual handling, a
//! synchronous result, the signed callback (401 and no change when the signature is bad), and
//! a failed delivery listed and sent again at an operator's request.

mod http_common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use http_common::*;
use lifeline::connector::{
    checkpoint_name, list_failed_deliveries, request_redelivery, AgencyConnector, ConnectorSecret,
    ConnectorsConfig, DeliveryWorker, RedeliveryFilter,
};
use lifeline::registry::Actor;
use lifeline_model::codec::to_new_event;
use lifeline_model::declaration::{parse_birth, Declaration};
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, Role, StreamId};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{
    Application, FollowUp, FollowUpKind, TaskCommand, TaskCreated, TaskEvent, TaskStatus,
};
use lifeline_model::values::OfficeCode;
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A callback body and its signature headers.
type SignedCase<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>);

const CONNECTOR_SECRET: &[u8] = b"police-connector-secret-0123456789abcdef";

/// The actor a policy acts as.
fn policy_actor() -> Actor {
    Actor {
        id: "policy:test".to_owned(),
        role: Role::System,
        office: None,
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    }
}

/// Creates a task of `procedure` for the example birth, as a policy would.
async fn create_task(app: &TestApp, procedure: ProcedureId) -> Uuid {
    let input = serde_json::from_value(birth_body()).unwrap();
    let declaration = Declaration::Birth(parse_birth(&input, now().date_naive()).unwrap());
    let application = Application::for_procedure(procedure, &declaration.flatten());
    let task_id = Uuid::now_v7();
    let actor = policy_actor();
    app.state
        .tasks
        .execute(
            &actor,
            task_id,
            TaskCommand::Create {
                task_id,
                procedure,
                life_event_id: Uuid::now_v7(),
                office: OfficeCode::parse(HCM_OFFICE).unwrap(),
                application,
                due_at: now() + chrono::Duration::days(5),
                source_event_id: Uuid::now_v7(),
                at: now(),
            },
        )
        .await
        .unwrap();
    task_id
}

fn connector(server: &MockServer) -> AgencyConnector {
    let mut connector = AgencyConnector::new(
        format!("{}/applications", server.uri()),
        ConnectorSecret::new(CONNECTOR_SECRET).unwrap(),
    );
    connector.timeout = Duration::from_millis(300);
    connector.max_attempts = 3;
    connector.backoff_base = Duration::from_millis(10);
    connector.backoff_max = Duration::from_millis(50);
    connector
}

fn worker(app: &TestApp, server: &MockServer) -> DeliveryWorker {
    DeliveryWorker::new(
        app.store.clone(),
        Arc::clone(&app.state.tasks),
        AgencyId::Police,
        connector(server),
    )
    .unwrap()
}

/// The recorded outcome events of a task's deliveries, in log order: (event type, payload).
/// Accepted ones are in `delivery-<task_id>`, failed ones in `connectorfailures-log`.
async fn outcomes(app: &TestApp, task_id: Uuid) -> Vec<(String, Value)> {
    let stream = StreamId::for_kind("delivery", task_id).unwrap();
    let mut events = app.store.read_stream(&stream).await.unwrap();
    events.extend(
        app.store
            .read_stream(&StreamId::parse("connectorfailures-log").unwrap())
            .await
            .unwrap()
            .into_iter()
            .filter(|event| {
                event.event_type == "ConnectorDeliveryFailed"
                    && event.payload.to_value()["task_id"] == json!(task_id)
            }),
    );
    events.sort_by_key(|event| event.global_position);
    events
        .into_iter()
        .map(|event| (event.event_type, event.payload.to_value()))
        .collect()
}

/// The bodies the agency system received, in order.
async fn sent_bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|request| serde_json::from_slice(&request.body).unwrap())
        .collect()
}

/// Checks the signature the way an agency system would, with its own HMAC code.
fn assert_signed(request: &Request) {
    let timestamp = request.headers["x-lifeline-timestamp"].to_str().unwrap();
    let signature = request.headers["x-lifeline-signature"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(CONNECTOR_SECRET).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected);
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 60);
}

#[tokio::test]
async fn a_connector_agency_receives_the_signed_application_only() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/applications"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    // A task of another agency is not delivered.
    create_task(&app, ProcedureId::ChildHealthInsurance).await;

    let worker = worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(
        worker.run_once().await.unwrap(),
        0,
        "nothing is delivered twice"
    );

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.headers["content-type"], "application/json");
    assert_signed(request);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["kind"], "created");
    assert_eq!(body["task_id"], task_id.to_string());
    assert_eq!(body["procedure"], "residence-registration");
    assert_eq!(body["office"], HCM_OFFICE);
    assert!(body["due_at"].is_string());
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "application",
            "delivery_id",
            "due_at",
            "kind",
            "office",
            "procedure",
            "task_id"
        ]
    );
    let application = body["application"].as_object().unwrap();
    assert!(!application.is_empty());
    for field in application.keys() {
        assert!(
            ProcedureId::ResidenceRegistration.receives(field),
            "{field} must not leave the log"
        );
    }

    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "ConnectorDelivered");
    assert_eq!(recorded[0].1["attempts"], 1);
    assert_eq!(recorded[0].1["status"], 202);
    assert_eq!(recorded[0].1["answer"], "none");
    let checkpoint = app
        .store
        .load_checkpoint(&checkpoint_name(AgencyId::Police))
        .await
        .unwrap();
    assert!(checkpoint > lifeline_model::envelope::LogCursor::START);
}

#[tokio::test]
async fn two_server_errors_then_success_is_delivered_on_the_third_attempt() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 1);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    // Every attempt is signed afresh and carries the same delivery.
    for request in &requests {
        assert_signed(request);
        assert_eq!(request.body, requests[0].body);
    }
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "ConnectorDelivered");
    assert_eq!(recorded[0].1["attempts"], 3);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 1);
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded[0].0, "ConnectorDelivered");
    assert_eq!(recorded[0].1["attempts"], 2);

    // Every attempt timing out: recorded as failed after max_attempts, for manual handling.
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 1);
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded[0].0, "ConnectorDeliveryFailed");
    assert_eq!(recorded[0].1["attempts"], 3);
    assert_eq!(recorded[0].1["reason"], "timeout");
    assert_eq!(recorded[0].1["permanent"], false);
    assert_eq!(recorded[0].1["manual_handling"], true);
}

#[tokio::test]
async fn a_permanent_refusal_marks_the_task_for_manual_handling() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_string("bad application"))
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let worker = worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "4xx is not retried"
    );
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "ConnectorDeliveryFailed");
    assert_eq!(recorded[0].1["permanent"], true);
    assert_eq!(recorded[0].1["manual_handling"], true);
    assert_eq!(recorded[0].1["last_status"], 422);
    assert_eq!(recorded[0].1["reason"], "refused");
    // The task itself stays open for a person; the next pass does not deliver again.
    let task = app.state.tasks.load(task_id).await.unwrap().unwrap();
    assert_eq!(task.state.status, TaskStatus::Open);
    assert_eq!(worker.run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_synchronous_result_completes_the_task_and_a_cancellation_is_delivered() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "result": "completed",
            "outcome": { "kind": "residence_registered", "entry_number": "CT-2026-0001" }
        })))
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 1);
    let task = app.state.tasks.load(task_id).await.unwrap().unwrap();
    assert_eq!(task.state.status, TaskStatus::Completed);
    assert_eq!(task.state.claimed_by.as_deref(), Some("connector:police"));
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(recorded[0].1["answer"], "completed");

    // A cancelled task is delivered as `cancelled`, without application fields.
    let other = create_task(&app, ProcedureId::ResidenceDeregistration).await;
    let worker = worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(outcomes(&app, other).await[0].1["answer"], "refused");
    let actor = policy_actor();
    app.state
        .tasks
        .execute(
            &actor,
            other,
            TaskCommand::Cancel {
                reason: "the record was voided".to_owned(),
                cause: None,
                at: now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let requests = server.received_requests().await.unwrap();
    let last: Value = serde_json::from_slice(&requests.last().unwrap().body).unwrap();
    assert_eq!(last["kind"], "cancelled");
    assert_eq!(last["task_id"], other.to_string());
    assert_eq!(last["application"], json!({}));
}

/// A task closed before the worker reached its creation (here: cancelled, the record voided)
/// is not sent to the agency system, nor is its cancellation; an open one is.
#[tokio::test]
async fn a_task_closed_before_its_delivery_is_not_sent() {
    let app = TestApp::new().await;
    let server = accepting_server().await;
    let closed = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let open = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let actor = policy_actor();
    app.state
        .tasks
        .execute(
            &actor,
            closed,
            TaskCommand::Cancel {
                reason: "the record was voided".to_owned(),
                cause: None,
                at: now(),
            },
        )
        .await
        .unwrap();
    // The open task's creation only: neither the closed task's creation nor its cancellation.
    worker(&app, &server).run_once().await.unwrap();
    let sent = sent_bodies(&server).await;
    let sent: Vec<(&str, &str)> = sent
        .iter()
        .map(|body| {
            (
                body["kind"].as_str().unwrap(),
                body["task_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sent, [("created", open.to_string().as_str())]);
}

/// An agency system down for longer than the attempts last: the failure is listed for the
/// operator, nothing is sent again until the operator asks, two operators asking at once
/// request it once, and the worker then sends the same message (same `delivery_id`) once.
#[tokio::test]
async fn a_failed_delivery_is_listed_and_sent_again_once_on_request() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .with_priority(2)
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let other = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let worker = worker(&app, &server);
    // Three attempts at the first task fail; the second task's creation goes through.
    assert_eq!(worker.run_once().await.unwrap(), 2);
    let failed = list_failed_deliveries(&app.store).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].task_id, task_id);
    assert_eq!(failed[0].agency, "police");
    assert_eq!((failed[0].attempts, failed[0].last_status), (3, Some(503)));
    assert_eq!(failed[0].reason, "server_error");
    assert!(!failed[0].permanent);
    assert_eq!(outcomes(&app, other).await[0].0, "ConnectorDelivered");

    // Nothing is sent again by itself.
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(sent_bodies(&server).await.len(), 4);

    // Two operators at once: one request between them.
    let filter = RedeliveryFilter {
        agency: Some(AgencyId::Police),
        task_id: None,
        configured: vec![AgencyId::Police],
    };
    let (first, second) = tokio::join!(
        request_redelivery(&app.store, &app.state.tasks, &filter, "op-1"),
        request_redelivery(&app.store, &app.state.tasks, &filter, "op-2"),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.requested.len() + second.requested.len(), 1);
    assert!(first.skipped.is_empty() && second.skipped.is_empty());
    assert!(list_failed_deliveries(&app.store).await.unwrap().is_empty());

    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(worker.run_once().await.unwrap(), 0, "sent once");
    let sent = sent_bodies(&server).await;
    assert_eq!(sent.len(), 5);
    assert_eq!(sent[4], sent[0], "the same message, the same delivery_id");
    let recorded = outcomes(&app, task_id).await;
    assert_eq!(
        recorded
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect::<Vec<_>>(),
        ["ConnectorDeliveryFailed", "ConnectorDelivered"]
    );
    assert_eq!(
        recorded[1].1["source_event_id"],
        recorded[0].1["source_event_id"]
    );
    assert!(recorded[1].1["redelivery_of"].is_string());
    // A worker started afresh (checkpoint lost) sends nothing again either.
    app.store
        .save_checkpoint(&checkpoint_name(AgencyId::Police), Default::default())
        .await
        .unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(sent_bodies(&server).await.len(), 5);
    // Nothing left to request.
    let again = request_redelivery(&app.store, &app.state.tasks, &filter, "op-1")
        .await
        .unwrap();
    assert!(again.requested.is_empty() && again.settled.is_empty() && again.skipped.is_empty());
}

/// Amends `task_id` to `application` as the corrections policy would.
async fn amend(app: &TestApp, task_id: Uuid, application: Application) {
    app.state
        .tasks
        .execute(
            &policy_actor(),
            task_id,
            TaskCommand::Amend {
                application,
                reason: "corrected".to_owned(),
                cause: None,
                at: now(),
            },
        )
        .await
        .unwrap();
}

/// An amendment that failed, then a later one delivered: sending the first again would take
/// the agency system back to older facts, so a retry settles it (no longer listed, nothing
/// sent). And a request the worker reaches after the task was handled in the inbox is not sent
/// but recorded as skipped.
#[tokio::test]
async fn a_superseded_or_overtaken_redelivery_is_not_sent_and_is_accounted_for() {
    let app = TestApp::new().await;
    let server = MockServer::start().await;
    // The creation goes through, the first amendment's three attempts fail, the rest pass.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .with_priority(3)
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let worker = worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let application = app
        .state
        .tasks
        .load(task_id)
        .await
        .unwrap()
        .unwrap()
        .state
        .application;
    let mut first = application.clone();
    first
        .0
        .insert("residence.address".to_owned(), json!("14 Lê Lợi"));
    amend(&app, task_id, first).await;
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let mut second = application;
    second
        .0
        .insert("residence.address".to_owned(), json!("16 Lê Lợi"));
    amend(&app, task_id, second).await;
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let failed = list_failed_deliveries(&app.store).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].kind,
        lifeline::connector::events::DeliveryKind::Amended
    );

    let filter = RedeliveryFilter {
        configured: vec![AgencyId::Police],
        ..RedeliveryFilter::default()
    };
    let report = request_redelivery(&app.store, &app.state.tasks, &filter, "op-1")
        .await
        .unwrap();
    assert!(report.requested.is_empty());
    assert_eq!(report.settled.len(), 1);
    assert!(
        report.settled[0].1.contains("superseded"),
        "{:?}",
        report.settled
    );
    assert!(list_failed_deliveries(&app.store).await.unwrap().is_empty());
    assert_eq!(worker.run_once().await.unwrap(), 0);
    let sent = sent_bodies(&server).await;
    assert_eq!(
        sent.len(),
        5,
        "creation, three failed attempts, the second amendment"
    );
    assert_eq!(sent[4]["application"]["residence.address"], "16 Lê Lợi");

    // Another task: its creation fails; the operator asks for it again, but an officer claims
    // the task in the inbox before the worker reaches the request.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&server)
        .await;
    let other = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let worker = self::worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let report = request_redelivery(&app.store, &app.state.tasks, &filter, "op-1")
        .await
        .unwrap();
    assert_eq!(report.requested.len(), 1);
    app.state
        .tasks
        .execute(
            &policy_actor(),
            other,
            TaskCommand::Claim {
                by: "officer-1".to_owned(),
                at: now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(sent_bodies(&server).await.len(), 1, "not sent again");
    let stream = StreamId::for_kind("delivery", other).unwrap();
    let recorded = app.store.read_stream(&stream).await.unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].event_type, "ConnectorRedeliverySkipped");
    assert!(recorded[0].payload.to_value()["reason"]
        .as_str()
        .unwrap()
        .contains("claimed"));
    // Reached again (a restart): recorded once.
    app.store
        .save_checkpoint(&checkpoint_name(AgencyId::Police), Default::default())
        .await
        .unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(app.store.read_stream(&stream).await.unwrap().len(), 1);
}

/// A creation that failed, of a task an officer claimed in the inbox meanwhile, is not
/// requested again (the agency system would be asked to do what a person is doing): the retry
/// settles it. A failure of an agency without a connector here is left listed. Through the
/// operator's HTTP routes.
#[tokio::test]
async fn a_failed_creation_of_a_task_handled_meanwhile_is_not_sent_again() {
    let mut app = TestApp::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&server)
        .await;
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 1);
    let (status, body, _) = app
        .call(
            Method::GET,
            "/v1/operations/deliveries/failed",
            Some(&operator()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failed"][0]["task_id"], json!(task_id));
    assert_eq!(body["failed"][0]["kind"], "created");
    assert_eq!(body["failed"][0]["permanent"], true);
    assert_eq!(body["failed"][0]["last_status"], 400);

    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/deliveries/retry",
            Some(&operator()),
            Some(json!({ "agency": "polis" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["fields"]["agency"].is_string(), "{body}");
    // No connector is configured for the police in this process: nothing would send it.
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/deliveries/retry",
            Some(&operator()),
            Some(json!({ "agency": "police" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["fields"]["agency"]
        .as_str()
        .unwrap()
        .contains("no connector"));
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/deliveries/retry",
            Some(&operator()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["skipped"][0]["delivery"]["task_id"], json!(task_id));
    assert_eq!(
        list_failed_deliveries(&app.store).await.unwrap().len(),
        1,
        "left listed"
    );
    with_police_connector(&mut app);

    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("/v1/tasks/{task_id}/claim"),
            Some(&officer("officer-1", AgencyId::Police)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/operations/deliveries/retry",
            Some(&operator()),
            Some(json!({ "task_id": task_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requested"], json!([]));
    assert_eq!(body["settled"][0]["delivery"]["task_id"], json!(task_id));
    assert!(body["settled"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("claimed"));
    let failed = list_failed_deliveries(&app.store).await.unwrap();
    assert!(failed.is_empty(), "settled: no longer listed");
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 0);
    assert_eq!(sent_bodies(&server).await.len(), 1);
}

/// A reversal of `first` (its record voided after it completed), as the corrections policy
/// stores it; answers its task id.
async fn append_reversal(app: &TestApp, first: Uuid) -> Uuid {
    let loaded = app.state.tasks.load(first).await.unwrap().unwrap();
    let reversal = Uuid::now_v7();
    let created = TaskCreated {
        task_id: reversal,
        procedure: ProcedureId::ResidenceRegistration,
        agency: AgencyId::Police,
        life_event_id: loaded.state.life_event_id.unwrap(),
        office: loaded.state.office.clone().unwrap(),
        application: loaded.state.application.clone(),
        due_at: now() + chrono::Duration::days(2),
        source_event_id: Uuid::now_v7(),
        created_at: now(),
        follow_up: Some(FollowUp {
            kind: FollowUpKind::Reversal,
            follows: first,
            reason: "nhập nhầm".to_owned(),
        }),
    };
    app.store
        .append(
            &StreamId::for_kind("task", reversal).unwrap(),
            ExpectedVersion::NoStream,
            &[to_new_event(
                &TaskEvent::TaskCreated(created),
                Uuid::now_v7(),
                EventMetadata::system("policy:corrections", Uuid::now_v7(), None, now()),
            )],
        )
        .await
        .unwrap();
    reversal
}

/// A reversal task (the record voided after the procedure completed), as the corrections
/// policy stores it: its delivery and its task body say what it follows up, so that the agency
/// revokes instead of registering again.
#[tokio::test]
async fn a_reversal_reaches_the_agency_as_a_reversal() {
    let app = TestApp::new().await;
    let server = accepting_server().await;
    let first = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let reversal = append_reversal(&app, first).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 2);
    let bodies = sent_bodies(&server).await;
    let first_sent = &bodies[0];
    assert!(first_sent.get("follow_up").is_none(), "{first_sent}");
    let sent = &bodies[1];
    assert_eq!(sent["task_id"], reversal.to_string());
    assert_eq!(sent["kind"], "created");
    assert_eq!(sent["follow_up"]["kind"], "reversal");
    assert_eq!(sent["follow_up"]["follows"], first.to_string());
    assert_eq!(sent["follow_up"]["reason"], "nhập nhầm");

    let (status, body, _) = app
        .call(
            Method::GET,
            &format!("/v1/tasks/{reversal}"),
            Some(&officer("police-alice", AgencyId::Police)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["follow_up"]["kind"], "reversal");
    assert_eq!(body["follow_up"]["follows"], first.to_string());

    // The officer completes it with the revocation, not with a registration.
    let complete = |outcome: Value| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/v1/tasks/{reversal}/complete"),
                Some(&officer("police-alice", AgencyId::Police)),
                Some(json!({ "outcome": outcome })),
            )
            .await
        }
    };
    let (status, body, _) =
        complete(json!({ "kind": "residence_registered", "entry_number": "CT-9" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "outcome_not_for_reversal", "{body}");
    assert!(
        body["error"]["fields"]["outcome.kind"].is_string(),
        "{body}"
    );
    let (status, body, _) =
        complete(json!({ "kind": "revoked", "decision_number": "TH-2026-7" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task = app.state.tasks.load(reversal).await.unwrap().unwrap();
    assert_eq!(task.state.status, TaskStatus::Completed);
    assert_eq!(
        task.state.outcome,
        Some(lifeline_model::task::TaskOutcome::Revoked {
            decision_number: "TH-2026-7".to_owned()
        })
    );
}

/// A reversal of a task the agency system never received (claimed in the inbox before the
/// worker reached it) is not sent either: the person who did it undoes it.
#[tokio::test]
async fn a_reversal_of_a_task_never_sent_is_not_sent() {
    let app = TestApp::new().await;
    let server = accepting_server().await;
    let first = create_task(&app, ProcedureId::ResidenceRegistration).await;
    app.state
        .tasks
        .execute(
            &policy_actor(),
            first,
            TaskCommand::Claim {
                by: "police-alice".to_owned(),
                at: now(),
            },
        )
        .await
        .unwrap();
    append_reversal(&app, first).await;
    assert_eq!(worker(&app, &server).run_once().await.unwrap(), 0);
    assert!(sent_bodies(&server).await.is_empty());
}

/// The worker stopped after the agency system's synchronous "completed" was applied and before
/// it recorded the delivery (here: the answer applied as the worker applies it, as officer
/// `connector:police`, the worker not run yet). On its next pass the creation is recorded as
/// delivered (`recovered`) rather than skipped as a closed task, and a later reversal of the
/// task reaches the agency system, which had it. (Until the thirty-first session the reversal
/// was not sent and the delivery history stayed empty.)
#[tokio::test]
async fn a_creation_answered_before_the_worker_stopped_is_recorded_and_its_reversal_sent() {
    let app = TestApp::new().await;
    let server = accepting_server().await;
    let first = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let connector_officer = Actor {
        id: "connector:police".to_owned(),
        role: Role::Agency,
        office: Some("police".to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    app.state
        .tasks
        .execute(
            &connector_officer,
            first,
            TaskCommand::Complete {
                by: "connector:police".to_owned(),
                outcome: lifeline_model::task::TaskOutcome::ResidenceRegistered {
                    entry_number: "CT-2026-0001".to_owned(),
                },
                at: now(),
            },
        )
        .await
        .unwrap();
    let reversal = append_reversal(&app, first).await;

    let worker = worker(&app, &server);
    assert_eq!(worker.run_once().await.unwrap(), 1, "the reversal only");
    let bodies = sent_bodies(&server).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["task_id"], reversal.to_string());
    assert_eq!(bodies[0]["follow_up"]["kind"], "reversal");
    let recorded = outcomes(&app, first).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (event_type, delivered) = &recorded[0];
    assert_eq!(event_type, "ConnectorDelivered");
    assert_eq!(delivered["kind"], "created");
    assert_eq!(delivered["answer"], "completed");
    assert_eq!(delivered["recovered"], true);
    assert_eq!(delivered["attempts"], 0);

    // Another pass records nothing more and sends nothing.
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(outcomes(&app, first).await.len(), 1);
    assert_eq!(sent_bodies(&server).await.len(), 1);
}

fn signed_headers(body: &[u8], secret: &[u8]) -> (String, String) {
    let timestamp = now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    (
        timestamp.to_string(),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
    )
}

fn with_police_connector(app: &mut TestApp) {
    let mut config = ConnectorsConfig::default();
    config.agencies.insert(
        AgencyId::Police,
        AgencyConnector::new(
            "https://police.invalid/applications",
            ConnectorSecret::new(CONNECTOR_SECRET).unwrap(),
        ),
    );
    app.state = app.state.clone().with_connectors(Arc::new(config));
}

#[tokio::test]
async fn a_callback_with_a_bad_signature_is_refused_and_changes_nothing() {
    let mut app = TestApp::new().await;
    with_police_connector(&mut app);
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let body = serde_json::to_vec(&json!({
        "task_id": task_id, "result": "completed",
        "outcome": { "kind": "residence_registered", "entry_number": "CT-1" }
    }))
    .unwrap();
    let uri = "/v1/connectors/police/callback";
    let before = app.log_len().await;

    let (timestamp, _) = signed_headers(&body, CONNECTOR_SECRET);
    let (_, wrong) = signed_headers(&body, b"another-secret-another-secret-0123456789");
    let stale = (now().timestamp() - 600).to_string();
    let (_, good_signature) = signed_headers(&body, CONNECTOR_SECRET);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let cases: Vec<SignedCase<'_>> = vec![
        (body.clone(), vec![]),
        (
            body.clone(),
            vec![
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &wrong),
            ],
        ),
        (
            body.clone(),
            vec![
                ("x-lifeline-timestamp", &stale),
                ("x-lifeline-signature", &good_signature),
            ],
        ),
        (
            tampered,
            vec![
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &good_signature),
            ],
        ),
        (
            body.clone(),
            vec![
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", "sha256=zz"),
            ],
        ),
    ];
    for (body, headers) in cases {
        let (status, answer, _) = app
            .call_raw(Method::POST, uri, None, Some(body), &headers)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature");
    }
    assert_eq!(app.log_len().await, before);
    let task = app.state.tasks.load(task_id).await.unwrap().unwrap();
    assert_eq!(task.state.status, TaskStatus::Open);

    // An agency that is not a connector has no callback.
    let (status, _, _) = app
        .call_raw(
            Method::POST,
            "/v1/connectors/social-security/callback",
            None,
            Some(body),
            &[
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &good_signature),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_good_callback_completes_the_task_and_outcomes_are_validated() {
    let mut app = TestApp::new().await;
    with_police_connector(&mut app);
    let task_id = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let uri = "/v1/connectors/police/callback";
    let send = |body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let (timestamp, signature) = signed_headers(&bytes, CONNECTOR_SECRET);
        (bytes, timestamp, signature)
    };

    // An outcome of the wrong shape: 422 naming the field, nothing appended.
    let before = app.log_len().await;
    let (bytes, timestamp, signature) = send(json!({
        "task_id": task_id, "result": "completed", "outcome": { "kind": "residence_registered" }
    }));
    let (status, answer, _) = app
        .call_raw(
            Method::POST,
            uri,
            None,
            Some(bytes),
            &[
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &signature),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]["fields"]["outcome.entry_number"].is_string(),
        "{answer}"
    );
    let (bytes, timestamp, signature) = send(json!({
        "task_id": task_id, "result": "completed",
        "outcome": { "kind": "death_registered", "extract_number": "X" }
    }));
    let (status, answer, _) = app
        .call_raw(
            Method::POST,
            uri,
            None,
            Some(bytes),
            &[
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &signature),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]["fields"]["outcome.kind"].is_string(),
        "{answer}"
    );
    assert_eq!(app.log_len().await, before);

    // A task of another agency is not found through the police connector.
    let foreign = create_task(&app, ProcedureId::ChildHealthInsurance).await;
    let (bytes, timestamp, signature) = send(json!({
        "task_id": foreign, "result": "rejected", "reason": "not ours"
    }));
    let (status, _, _) = app
        .call_raw(
            Method::POST,
            uri,
            None,
            Some(bytes),
            &[
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &signature),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (bytes, timestamp, signature) = send(json!({
        "task_id": task_id, "result": "completed",
        "outcome": { "kind": "residence_registered", "entry_number": "CT-2026-0042" }
    }));
    let (status, answer, _) = app
        .call_raw(
            Method::POST,
            uri,
            None,
            Some(bytes),
            &[
                ("x-lifeline-timestamp", &timestamp),
                ("x-lifeline-signature", &signature),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "completed");
    let task = app.state.tasks.load(task_id).await.unwrap().unwrap();
    assert_eq!(task.state.status, TaskStatus::Completed);
    assert_eq!(task.state.claimed_by.as_deref(), Some("connector:police"));
}

/// An agency system that accepts every delivery (202).
async fn accepting_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    server
}
