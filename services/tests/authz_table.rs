//! The authorisation table, end to end: every route of the API (each (method, path) of the
//! OpenAPI document, and nothing else) called by every kind of caller, with the status the rule
//! says. Registrars of the record's office and of another, officers of the task's agency and of
//! another, an auditor, an operator, no token and an expired token. One birth and its tasks
//! (made by the real policies and projections) give the paths real ids.

mod http_common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use http_common::*;
use lifeline::auth::Scope;
use lifeline_model::envelope::Role;
use lifeline_model::procedure::AgencyId;
use lifeline_policies::projections::projection_subscribers;
use lifeline_policies::projections::rebuild::catch_up;
use lifeline_policies::reference::ReferenceData;
use lifeline_policies::runtime::embedded::PolicySubscriber;
use lifeline_policies::PolicyHandler;
use lifeline_store::projections;
use serde_json::{json, Value};
use uuid::Uuid;

/// The callers, in the order of each row's expected statuses.
const CALLERS: [&str; 8] = [
    "registrar (own office)",
    "registrar (other office)",
    "agency (own)",
    "agency (other)",
    "auditor",
    "operator",
    "no token",
    "expired token",
];

/// One row: method, path template, body, expected status for each of [`CALLERS`].
type Row = (&'static str, &'static str, Option<Value>, [u16; 8]);

/// THE table. `{life_event}`, `{task}`, `{agency}`, `{pin}`, `{reference}` are filled from the
/// set-up; bodies are chosen so that an allowed caller gets a deterministic answer (a refused
/// body where a write would change what later rows see).
#[rustfmt::skip]
fn table() -> Vec<Row> {
    vec![
        // Registrars record and correct only for their office.
        ("POST", "/v1/births", Some(birth_body()), [201, 403, 403, 403, 403, 403, 401, 401]),
        ("POST", "/v1/deaths", Some(death_in_hcm()), [201, 403, 403, 403, 403, 403, 401, 401]),
        ("GET", "/v1/life-events/{life_event}", None, [200, 403, 403, 403, 200, 403, 401, 401]),
        // An empty patch: allowed callers get 422 "nothing to change", the record stays as is.
        ("POST", "/v1/life-events/{life_event}/corrections", Some(json!({"reason": "check", "changes": {}})), [422, 403, 403, 403, 403, 403, 401, 401]),
        ("POST", "/v1/life-events/{life_event}/void", Some(json!({})), [422, 403, 403, 403, 403, 403, 401, 401]),
        // Agencies read and act only on their own tasks.
        ("GET", "/v1/agencies/{agency}/tasks", None, [403, 403, 200, 403, 200, 403, 401, 401]),
        ("GET", "/v1/tasks/{task}", None, [403, 403, 200, 403, 200, 403, 401, 401]),
        ("POST", "/v1/tasks/{task}/claim", None, [403, 403, 200, 403, 403, 403, 401, 401]),
        ("POST", "/v1/tasks/{task}/complete", Some(json!({})), [403, 403, 422, 403, 403, 403, 401, 401]),
        ("POST", "/v1/tasks/{task}/reject", Some(json!({})), [403, 403, 422, 403, 403, 403, 401, 401]),
        // Signed by the agency system (HMAC), not a token: no connector configured here.
        ("POST", "/v1/connectors/{agency}/callback", Some(json!({})), [404, 404, 404, 404, 404, 404, 404, 404]),
        // Auditors read everything and write nothing.
        ("GET", "/v1/audit/events", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/streams/birth-{life_event}", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/persons/{pin}/timeline", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/replay?as_of=2030-01-01T00:00:00Z", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/export", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/access-log", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("GET", "/v1/audit/verify", None, [403, 403, 403, 403, 200, 403, 401, 401]),
        ("POST", "/v1/audit/verify", Some(json!({"anchors": []})), [403, 403, 403, 403, 200, 403, 401, 401]),
        // Nothing is sealed here: the auditor gets 404 `no_seal`.
        ("GET", "/v1/audit/seals/head", None, [403, 403, 403, 403, 404, 403, 401, 401]),
        // An event no seal covers (none is sealed here): the auditor gets 404, nobody else gets in.
        ("GET", "/v1/audit/proof/00000000-0000-0000-0000-000000000000", None, [403, 403, 403, 403, 404, 403, 401, 401]),
        // An id that is no event id is no such event (as for records and tasks), after the checks.
        ("GET", "/v1/audit/proof/not-an-id", None, [403, 403, 403, 403, 404, 403, 401, 401]),
        // The citizen status: any authenticated caller with the reference; nothing personal.
        ("GET", "/v1/status/{reference}", None, [200, 200, 200, 200, 200, 200, 401, 401]),
        // Operators: failed policy runs and their retry; no personal data.
        ("GET", "/v1/operations/policies/failed", None, [403, 403, 403, 403, 200, 200, 401, 401]),
        ("POST", "/v1/operations/policies/retry", Some(json!({})), [403, 403, 403, 403, 403, 200, 401, 401]),
        // Operators: connector deliveries given up on and their retry; no personal data.
        ("GET", "/v1/operations/deliveries/failed", None, [403, 403, 403, 403, 200, 200, 401, 401]),
        ("POST", "/v1/operations/deliveries/retry", Some(json!({})), [403, 403, 403, 403, 403, 200, 401, 401]),
        // No token needed (and a bad one is ignored).
        ("GET", "/healthz", None, [200; 8]),
        ("GET", "/readyz", None, [200; 8]),
        ("GET", "/metrics", None, [200; 8]),
        ("GET", "/openapi.json", None, [200; 8]),
    ]
}

fn death_in_hcm() -> Value {
    let mut body = death_body();
    body["office"] = json!(HCM_OFFICE);
    body
}

struct World {
    app: TestApp,
    life_event: String,
    task: Uuid,
    agency: AgencyId,
    other_agency: AgencyId,
    reference: String,
}

/// One birth recorded by the HCM office, then the policies and projections run until the
/// log is quiet: the birth-registration task exists and is in its agency's inbox.
async fn world() -> World {
    let mut app = TestApp::new().await;
    let engine: Arc<dyn PolicyHandler> = Arc::new(lifeline::serve::policy_engine(
        ReferenceData::embedded().unwrap(),
    ));
    app.state = app.state.clone().with_policy_handler(Arc::clone(&engine));
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/births",
            Some(&registrar(HCM_OFFICE)),
            Some(birth_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let life_event = body["life_event_id"].as_str().unwrap().to_owned();
    let reference = body["reference"].as_str().unwrap().to_owned();
    let mut policies: Vec<PolicySubscriber> = engine
        .policy_names()
        .into_iter()
        .map(|name| PolicySubscriber::new(Arc::clone(&engine), name))
        .collect();
    let mut views = projection_subscribers();
    for _ in 0..3 {
        for policy in &mut policies {
            catch_up(&app.store, policy, None).await.unwrap();
        }
        for view in &mut views {
            catch_up(&app.store, view.as_mut(), None).await.unwrap();
        }
    }
    let tasks = projections::tasks_of_life_event(&app.store, Uuid::parse_str(&life_event).unwrap())
        .await
        .unwrap();
    let task = tasks.first().expect("the birth's first task");
    let other_agency = AgencyId::ALL
        .into_iter()
        .find(|agency| *agency != task.agency)
        .unwrap();
    World {
        task: task.task_id,
        agency: task.agency,
        other_agency,
        app,
        life_event,
        reference,
    }
}

fn tokens(world: &World) -> [Option<String>; 8] {
    [
        Some(registrar(HCM_OFFICE)),
        Some(registrar(HANOI_OFFICE)),
        Some(officer("officer-own", world.agency)),
        Some(officer("officer-other", world.other_agency)),
        Some(auditor()),
        Some(token("operator-1", Role::Operator, Scope::Unscoped)),
        None,
        Some(expired_registrar(HCM_OFFICE)),
    ]
}

fn fill(template: &str, world: &World) -> String {
    template
        .replace("{life_event}", &world.life_event)
        .replace("{task}", &world.task.to_string())
        .replace("{agency}", world.agency.as_str())
        .replace("{pin}", "079190001234")
        .replace("{reference}", &world.reference)
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_table_says() {
    let world = world().await;
    let tokens = tokens(&world);
    let mut wrong = Vec::new();
    for (method, template, body, expected) in table() {
        let uri = fill(template, &world);
        for ((caller, token), want) in CALLERS.iter().zip(&tokens).zip(expected) {
            let bytes = body.as_ref().map(|body| serde_json::to_vec(body).unwrap());
            let (status, answer, _) = world
                .app
                .call_raw(
                    method.parse::<Method>().unwrap(),
                    &uri,
                    token.as_deref(),
                    bytes,
                    &[("x-purpose", "authorisation table test")],
                )
                .await;
            if status.as_u16() != want {
                wrong.push(format!(
                    "{method} {template} as {caller}: {status}, expected {want}: {answer}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A route the OpenAPI document has and the table does not (or the reverse) fails here: adding
/// a route means deciding who may call it.
#[test]
fn the_table_lists_exactly_the_routes_of_the_openapi_document() {
    let document: Value =
        serde_json::from_str(&lifeline::http::openapi::openapi_pretty_json()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let listed: BTreeSet<(String, String)> = table()
        .into_iter()
        .filter(|(_, path, _, _)| *path != "/openapi.json")
        .map(|(method, path, _, _)| {
            let path = path.split('?').next().unwrap_or_default();
            let path = path
                .replace("{life_event}", "{id}")
                .replace("{task}", "{id}")
                .replace("birth-{id}", "{stream_id}")
                .replace("00000000-0000-0000-0000-000000000000", "{event_id}")
                .replace("not-an-id", "{event_id}");
            (method.to_owned(), path)
        })
        .collect();
    let missing: Vec<_> = documented.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&documented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes without a row in the table: {missing:?}; rows without a route: {extra:?}"
    );
}
