//! Agency routes over HTTP: one agency's inbox, a task with only its procedure's fields, and
//! claim / complete / reject, with 409 for a second officer and 403 across agencies.

mod http_common;

use axum::http::{Method, StatusCode};
use chrono::Duration;
use http_common::*;
use lifeline::registry::Actor;
use lifeline_model::declaration::{parse_birth, Declaration};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{Application, TaskCommand, TaskStatus};
use lifeline_model::values::OfficeCode;
use lifeline_store::projections::{self, TaskRow};
use serde_json::json;
use uuid::Uuid;

/// Creates a task of `procedure` for the example birth, as a policy would, and puts it in the
/// inbox projection.
async fn create_task(app: &TestApp, procedure: ProcedureId) -> Uuid {
    let input = serde_json::from_value(birth_body()).unwrap();
    let declaration = Declaration::Birth(parse_birth(&input, now().date_naive()).unwrap());
    let application = Application::for_procedure(procedure, &declaration.flatten());
    let task_id = Uuid::now_v7();
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
                life_event_id: Uuid::now_v7(),
                office: office.clone(),
                application: application.clone(),
                due_at,
                source_event_id: Uuid::now_v7(),
                at: now(),
            },
        )
        .await
        .unwrap();
    let row = TaskRow {
        task_id,
        procedure,
        agency: procedure.agency(),
        office,
        life_event_id: Uuid::now_v7(),
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
async fn officers_claim_complete_and_reject_one_at_a_time() {
    let app = TestApp::new().await;
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let path = format!("/v1/tasks/{task}");
    let alice = officer("police-alice", AgencyId::Police);
    let bob = officer("police-bob", AgencyId::Police);
    let insurer = officer("ss-carol", AgencyId::SocialSecurity);

    let (status, body, _) = app.call(Method::GET, &path, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "open");
    let application = body["application"].as_object().unwrap();
    assert!(application.contains_key("mother.personal_id"));
    for field in application.keys() {
        assert!(
            ProcedureId::ResidenceRegistration.receives(field),
            "{field} leaked to the police"
        );
    }
    assert!(!application.contains_key("declarant.phone"));

    for (token, method, suffix) in [
        (insurer.clone(), Method::GET, ""),
        (insurer.clone(), Method::POST, "/claim"),
        (registrar(HCM_OFFICE), Method::POST, "/claim"),
    ] {
        let (status, body, _) = app
            .call(method, &format!("{path}{suffix}"), Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, _, _) = app.call(Method::GET, &path, Some(&auditor()), None).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "auditors say why they read"
    );
    let (status, _, _) = app
        .call_raw(
            Method::GET,
            &path,
            Some(&auditor()),
            None,
            &[("x-purpose", "quality review")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "auditors read tasks");

    let before = app.log_len().await;
    let (status, body, _) = app
        .call(Method::POST, &format!("{path}/claim"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "claimed");
    assert_eq!(body["claimed_by"], "police-alice");
    let (status, _, _) = app
        .call(Method::POST, &format!("{path}/claim"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "claiming again is a no-op");
    assert_eq!(app.log_len().await, before + 1);

    let (status, body, _) = app
        .call(Method::POST, &format!("{path}/claim"), Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "claimed_by_other");
    let outcome = json!({ "outcome": { "kind": "residence_registered", "entry_number": "HK-1" } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("{path}/complete"),
            Some(&bob),
            Some(outcome.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let complete = format!("{path}/complete");
    for (bad, field, code) in [
        (
            json!({ "outcome": { "kind": "birth_registered", "certificate_number": "1" } }),
            "outcome.kind",
            "outcome_not_for_procedure",
        ),
        (
            json!({ "outcome": { "kind": "residence_registered" } }),
            "outcome.entry_number",
            "required",
        ),
        (
            json!({ "outcome": { "kind": "residence_registered", "entry_number": "  " } }),
            "outcome.entry_number",
            "",
        ),
        (
            json!({ "outcome": { "kind": "teleported" } }),
            "outcome.kind",
            "unknown_outcome",
        ),
        // A field of another kind of outcome is named, not dropped.
        (
            json!({ "outcome": { "kind": "residence_registered", "entry_number": "HK-1",
                                 "amount_vnd": 7200000 } }),
            "outcome.amount_vnd",
            "not_for_outcome",
        ),
        (json!({}), "outcome", "required"),
    ] {
        let (status, body, _) = app
            .call(Method::POST, &complete, Some(&alice), Some(bad))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"]["fields"][field].is_string(),
            "{field} not named in {body}"
        );
        if !code.is_empty() {
            assert_eq!(body["error"]["field_codes"][field], code, "{body}");
        }
    }
    assert_eq!(app.log_len().await, before + 1, "refusals append nothing");

    let (status, body, _) = app
        .call(Method::POST, &complete, Some(&alice), Some(outcome))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["outcome"]["entry_number"], "HK-1");
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("{path}/reject"),
            Some(&alice),
            Some(json!({ "reason": "late" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "task_closed");

    let other = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let reject = format!("/v1/tasks/{other}/reject");
    let (status, body, _) = app
        .call(Method::POST, &reject, Some(&bob), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["fields"]["reason"].is_string());
    let (status, body, _) = app
        .call(
            Method::POST,
            &reject,
            Some(&bob),
            Some(json!({ "reason": "not our commune" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "rejected");

    let (status, _, _) = app
        .call(
            Method::GET,
            &format!("/v1/tasks/{}", Uuid::now_v7()),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_inbox_shows_only_its_own_agency() {
    let app = TestApp::new().await;
    let police_task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let _insurance_task = create_task(&app, ProcedureId::ChildHealthInsurance).await;
    let second_police_task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let alice = officer("police-alice", AgencyId::Police);

    let (status, body, _) = app
        .call(Method::GET, "/v1/agencies/police/tasks", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&police_task.to_string().as_str()));
    assert!(
        body["tasks"][0].get("application").is_none(),
        "no personal data in a list"
    );

    let (status, page, _) = app
        .call(
            Method::GET,
            "/v1/agencies/police/tasks?limit=1&status=open",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next, _) = app
        .call(
            Method::GET,
            &format!("/v1/agencies/police/tasks?limit=1&cursor={cursor}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(next["tasks"].as_array().unwrap().len(), 1, "{next}");
    assert_ne!(next["tasks"][0]["task_id"], page["tasks"][0]["task_id"]);
    let seen = [&page["tasks"][0]["task_id"], &next["tasks"][0]["task_id"]];
    assert!(seen.contains(&&json!(second_police_task.to_string())));

    let (status, body, _) = app
        .call(
            Method::GET,
            "/v1/agencies/social-security/tasks",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = app
        .call(
            Method::GET,
            "/v1/agencies/social-security/tasks",
            Some(&auditor()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .call(
            Method::GET,
            "/v1/agencies/ministry-of-magic/tasks",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body, _) = app
        .call(
            Method::GET,
            "/v1/agencies/police/tasks?status=lost&procedure=passport&due_before=soon&limit=0&cursor=zz",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for field in ["status", "procedure", "due_before", "limit", "cursor"] {
        assert!(
            body["error"]["fields"][field].is_string(),
            "{field} not named in {body}"
        );
    }
    // A parameter the route does not take, or one given twice, is named, not ignored.
    for (query, field, code) in [
        ("stauts=open", "stauts", "unknown_field"),
        ("status=open&status=claimed", "status", "duplicate_field"),
        ("limit=10&limit=20", "limit", "duplicate_field"),
    ] {
        let (status, body, _) = app
            .call(
                Method::GET,
                &format!("/v1/agencies/police/tasks?{query}"),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["field_codes"][field], code, "{query}: {body}");
    }
}

fn officer_actor(id: &str) -> Actor {
    Actor {
        id: id.to_owned(),
        role: Role::Agency,
        office: Some("police".to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    }
}

/// A command on a task the caller has just read (`TaskDesk::execute_on`, what the claim /
/// complete / reject routes use) commits against the version it was read at: the task it
/// returns is the stream's, and a change in between is neither lost nor decided past.
#[tokio::test]
async fn a_command_on_a_task_read_before_a_change_runs_on_the_task_as_it_stands() {
    let app = TestApp::new().await;
    let desk = &app.state.tasks;
    let claim = |by: &str| TaskCommand::Claim {
        by: by.to_owned(),
        at: now(),
    };

    // Read, then claimed: the state returned is what a new read of the stream gives.
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let read = desk.load(task).await.unwrap().unwrap();
    let after = desk
        .execute_on(&officer_actor("police-alice"), &read, claim("police-alice"))
        .await
        .unwrap();
    let reread = desk.load(task).await.unwrap().unwrap();
    assert_eq!(after.state, reread.state);
    assert_eq!(after.version, reread.version);
    assert_eq!(after.version.0, read.version.0 + 1);
    assert_eq!(after.state.status, TaskStatus::Claimed);

    // Read, then claimed by someone else: the stale read's claim is refused, not recorded.
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let stale = desk.load(task).await.unwrap().unwrap();
    desk.execute(&officer_actor("police-bob"), task, claim("police-bob"))
        .await
        .unwrap();
    let refused = desk
        .execute_on(
            &officer_actor("police-alice"),
            &stale,
            claim("police-alice"),
        )
        .await;
    assert!(
        matches!(refused, Err(lifeline::registry::RegistryError::Refused(_))),
        "{refused:?}"
    );
    let reread = desk.load(task).await.unwrap().unwrap();
    assert_eq!(reread.version.0, stale.version.0 + 1, "one claim only");
    assert_eq!(reread.state.claimed_by.as_deref(), Some("police-bob"));

    // Read, then marked overdue: the claim runs on the task as it stands and keeps the mark.
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let stale = desk.load(task).await.unwrap().unwrap();
    desk.execute(
        &officer_actor("system"),
        task,
        TaskCommand::MarkOverdue {
            at: now() + Duration::days(3),
        },
    )
    .await
    .unwrap();
    let after = desk
        .execute_on(
            &officer_actor("police-alice"),
            &stale,
            claim("police-alice"),
        )
        .await
        .unwrap();
    let reread = desk.load(task).await.unwrap().unwrap();
    assert_eq!(after.state, reread.state);
    assert_eq!(after.version, reread.version);
    assert_eq!(after.version.0, stale.version.0 + 2);
    assert!(after.state.overdue);
    assert_eq!(after.state.status, TaskStatus::Claimed);
}

/// `lifeline_events_appended_total` counts what a command appended by type: a completion of an
/// unclaimed task appends a claim and a completion. (Until 2026-12-07 it counted two
/// completions.)
#[tokio::test]
async fn the_appended_events_are_counted_by_their_own_types() {
    let app = TestApp::new().await;
    let task = create_task(&app, ProcedureId::ResidenceRegistration).await;
    let alice = officer("police-alice", AgencyId::Police);
    let outcome = json!({ "outcome": { "kind": "residence_registered", "entry_number": "HK-1" } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("/v1/tasks/{task}/complete"),
            Some(&alice),
            Some(outcome),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = app.metrics_text().await;
    for line in [
        r#"lifeline_events_appended_total{event_type="TaskClaimed"} 1"#,
        r#"lifeline_events_appended_total{event_type="TaskCompleted"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}
