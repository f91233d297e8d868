//! Registrar routes over HTTP: a table of bad requests (each with its status, code and named
//! field, and no event appended), idempotent recording, reading, correcting and voiding.

mod http_common;

use axum::http::{Method, StatusCode};
use http_common::*;
use lifeline::registry::{Actor, Change, RegistryError, Stored};
use lifeline_model::declaration::Declaration;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, Role, StreamId, StreamVersion,
};
use lifeline_model::values::FullName;
use serde_json::{json, Value};
use uuid::Uuid;

/// One bad request of the table.
struct Case {
    name: &'static str,
    path: &'static str,
    token: Option<String>,
    body: Vec<u8>,
    content_type: &'static str,
    status: StatusCode,
    code: &'static str,
    /// (field, field code) that must be named; field code "" = any.
    fields: Vec<(&'static str, &'static str)>,
}

fn birth_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = birth_body();
    change(&mut body);
    serde_json::to_vec(&body).unwrap()
}

fn death_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = death_body();
    change(&mut body);
    serde_json::to_vec(&body).unwrap()
}

fn case(
    name: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    fields: Vec<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        path: "/v1/births",
        token: Some(registrar(HCM_OFFICE)),
        body,
        content_type: "application/json",
        status,
        code,
        fields,
    }
}

/// A Hanoi registrar's death at `at` (without a notice date), refused with `field_code` on
/// `death.at`.
fn death_at_case(name: &'static str, at: &'static str, field_code: &'static str) -> Case {
    Case {
        path: "/v1/deaths",
        token: Some(registrar(HANOI_OFFICE)),
        ..case(
            name,
            death_with(|body| {
                body["death"]["at"] = json!(at);
                body["death"]["notice"]["date"] = Value::Null;
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            vec![("death.at", field_code)],
        )
    }
}

fn pin_case(name: &'static str, pin: &'static str, field_code: &'static str) -> Case {
    case(
        name,
        birth_with(|body| body["mother"]["personal_id"] = json!(pin)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        vec![("mother.personal_id", field_code)],
    )
}

#[tokio::test]
async fn bad_requests_are_refused_with_named_fields_and_append_nothing() {
    let app = TestApp::new().await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases = vec![
        case(
            "malformed json",
            b"{\"office\": \"79-26734\", ".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            vec![],
        ),
        case(
            "data after the body",
            [birth_with(|_| {}), b" {}".to_vec()].concat(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            vec![("$", "malformed_json")],
        ),
        case(
            "a key given twice",
            {
                let body = String::from_utf8(birth_with(|_| {})).unwrap();
                body.replacen('{', "{\"office\":\"79-26734\",", 1)
                    .into_bytes()
            },
            unprocessable,
            "invalid_field",
            vec![("office", "duplicate_field")],
        ),
        case(
            "a nested key given twice",
            {
                let body = String::from_utf8(birth_with(|_| {})).unwrap();
                body.replacen("\"child\":{", "\"child\":{\"sex\":\"male\",", 1)
                    .into_bytes()
            },
            unprocessable,
            "invalid_field",
            vec![("child.sex", "duplicate_field")],
        ),
        case(
            "a bidirectional override in an email",
            birth_with(|body| body["declarant"]["email"] = json!("an\u{202e}nv.@x.vn")),
            unprocessable,
            "validation_failed",
            vec![("declarant.email", "control_character")],
        ),
        case(
            "a declarant's residence in no province",
            birth_with(|body| {
                body["declarant"]["residence"] =
                    json!({ "province": "99", "commune": "26734", "address": "12 Lê Lợi" });
            }),
            unprocessable,
            "validation_failed",
            vec![("declarant.residence.province", "")],
        ),
        case(
            "wrong type",
            birth_with(|body| body["child"]["full_name"] = json!(5)),
            unprocessable,
            "invalid_field",
            vec![("child.full_name", "invalid_type")],
        ),
        case(
            "unknown field",
            birth_with(|body| body["child"]["nickname"] = json!("An")),
            unprocessable,
            "invalid_field",
            vec![("child.nickname", "unknown_field")],
        ),
        case(
            "missing fields",
            b"{}".to_vec(),
            unprocessable,
            "validation_failed",
            vec![
                ("office", "required"),
                ("child", "required"),
                ("residence", "required"),
                ("declarant", "required"),
            ],
        ),
        case(
            "a health-insurance card for a child of 6 or more",
            birth_with(|body| {
                body["child"]["date_of_birth"] = json!("2019-03-01");
                body["birth_notice"]["date"] = json!("2019-03-01");
            }),
            unprocessable,
            "validation_failed",
            vec![("procedures[2]", "not_eligible")],
        ),
        case(
            "unknown procedure",
            birth_with(|body| body["procedures"] = json!(["birth-registration", "passport"])),
            unprocessable,
            "validation_failed",
            vec![("procedures[1]", "unknown_procedure")],
        ),
        pin_case("pin too short", "07919000123", "length"),
        pin_case("pin not digits", "07919000123x", "non_digit"),
        pin_case("pin unknown province", "999190001234", "unknown_province"),
        pin_case(
            "pin century and sex",
            "079090001234",
            "century_sex_mismatch",
        ),
        pin_case("pin year of birth", "079191001234", "year_mismatch"),
        case(
            "date of birth before 1900 (no number encodes it)",
            birth_with(|body| body["mother"]["date_of_birth"] = json!("1850-01-01")),
            unprocessable,
            "validation_failed",
            vec![("mother.date_of_birth", "out_of_range")],
        ),
        case(
            "birth in the future",
            birth_with(|body| {
                body["child"]["date_of_birth"] = json!("2026-11-22");
                body["birth_notice"]["date"] = Value::Null;
            }),
            unprocessable,
            "validation_failed",
            vec![("child.date_of_birth", "in_future")],
        ),
        death_at_case(
            "death before birth",
            "1950-01-01T00:00:00+07:00",
            "before_birth",
        ),
        death_at_case(
            "death later today (the clock says 10:00 in Vietnam)",
            "2026-11-21T10:00:01+07:00",
            "in_future",
        ),
        case(
            "oversized body",
            birth_with(|body| body["child"]["place_of_birth"] = json!("x".repeat(70 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            vec![],
        ),
        Case {
            content_type: "text/plain",
            ..case(
                "not json",
                birth_with(|_| {}),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                vec![],
            )
        },
        Case {
            token: Some(registrar("79-99999")),
            ..case(
                "unknown office",
                birth_with(|body| body["office"] = json!("79-99999")),
                unprocessable,
                "validation_failed",
                vec![("office", "unknown_office")],
            )
        },
        case(
            "malformed office",
            birth_with(|body| body["office"] = json!("7926734")),
            unprocessable,
            "validation_failed",
            vec![("office", "invalid_office")],
        ),
        Case {
            token: Some(registrar(HANOI_OFFICE)),
            ..case(
                "another office's registrar",
                birth_with(|_| {}),
                StatusCode::FORBIDDEN,
                "forbidden_scope",
                vec![],
            )
        },
        Case {
            token: None,
            ..case(
                "no token",
                birth_with(|_| {}),
                StatusCode::UNAUTHORIZED,
                "missing_token",
                vec![],
            )
        },
        Case {
            token: Some(expired_registrar(HCM_OFFICE)),
            ..case(
                "expired token",
                birth_with(|_| {}),
                StatusCode::UNAUTHORIZED,
                "token_expired",
                vec![],
            )
        },
        Case {
            token: Some("not.a.token".to_owned()),
            ..case(
                "garbage token",
                birth_with(|_| {}),
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                vec![],
            )
        },
        Case {
            token: Some(officer(
                "officer-1",
                lifeline_model::procedure::AgencyId::Police,
            )),
            ..case(
                "wrong role",
                birth_with(|_| {}),
                StatusCode::FORBIDDEN,
                "forbidden_role",
                vec![],
            )
        },
        Case {
            token: Some(auditor()),
            ..case(
                "auditors write nothing",
                birth_with(|_| {}),
                StatusCode::FORBIDDEN,
                "forbidden_role",
                vec![],
            )
        },
    ];
    let before = app.log_len().await;
    let mut failures = Vec::new();
    for case in cases {
        let (status, body, headers) = app
            .call_raw(
                Method::POST,
                case.path,
                case.token.as_deref(),
                Some(case.body),
                &[("content-type", case.content_type)],
            )
            .await;
        let error = &body["error"];
        let mut problems = Vec::new();
        if status != case.status {
            problems.push(format!("status {status}, expected {}", case.status));
        }
        if error["code"] != case.code {
            problems.push(format!("code {}, expected {}", error["code"], case.code));
        }
        if !error["message"].is_string() || !error["fields"].is_object() {
            problems.push("not the error format".to_owned());
        }
        for (field, field_code) in &case.fields {
            if !error["fields"][field].is_string() {
                problems.push(format!("field {field} not named"));
            } else if !field_code.is_empty() && error["field_codes"][field] != *field_code {
                problems.push(format!(
                    "field {field} has code {}, expected {field_code}",
                    error["field_codes"][field]
                ));
            }
        }
        if headers.get("x-request-id").is_none() {
            problems.push("no x-request-id".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} in {body}", case.name, problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        app.log_len().await,
        before,
        "a bad request appended an event"
    );
}

#[tokio::test]
async fn the_design_examples_are_recorded() {
    let app = TestApp::new().await;
    let (status, body, headers) = app
        .call(
            Method::POST,
            "/v1/deaths",
            Some(&registrar(HANOI_OFFICE)),
            Some(death_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["reference"].as_str().unwrap().starts_with("LL-"));
    assert!(body["position"].as_i64().unwrap() >= 1);
    let id = body["life_event_id"].as_str().unwrap();
    assert_eq!(
        headers.get("location").unwrap(),
        &format!("/v1/life-events/{id}")
    );
    let birth = record_birth(&app).await;
    assert_ne!(birth, id);
    assert_eq!(app.log_len().await, 2);
}

/// A late registration of a child 6 or older, procedures left to their default, is recorded
/// without the health-insurance card (for a child under 6): `not-chosen`, and no task waits
/// for it.
#[tokio::test]
async fn a_child_of_six_or_more_is_recorded_without_a_health_insurance_card() {
    let app = TestApp::new().await;
    let mut body = birth_body();
    body["child"]["date_of_birth"] = json!("2019-03-01");
    body["birth_notice"]["date"] = json!("2019-03-01");
    body.as_object_mut().unwrap().remove("procedures");
    let token = registrar(HCM_OFFICE);
    let (status, recorded, _) = app
        .call(Method::POST, "/v1/births", Some(&token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let path = format!(
        "/v1/life-events/{}",
        recorded["life_event_id"].as_str().unwrap()
    );
    let (status, record, _) = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let states: Vec<(String, String)> = record["procedures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|procedure| {
            (
                procedure["procedure"].as_str().unwrap().to_owned(),
                procedure["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let state_of = |id: &str| {
        states
            .iter()
            .find(|(procedure, _)| procedure == id)
            .map(|(_, state)| state.as_str())
    };
    assert_eq!(
        state_of("child-health-insurance"),
        Some("not-chosen"),
        "{states:?}"
    );
    assert_ne!(
        state_of("residence-registration"),
        Some("not-chosen"),
        "{states:?}"
    );
    assert_eq!(
        record["declaration"]["procedures"],
        json!(["birth-registration", "residence-registration"])
    );
}

/// The declarant's residence (the forms' requester's residence) is taken and kept with the
/// record. (Until 2026-12-07 it was refused as an unknown field.)
#[tokio::test]
async fn a_declarants_residence_is_recorded() {
    let app = TestApp::new().await;
    let residence = json!({ "province": "79", "commune": "26737", "address": "45 Hai Bà Trưng" });
    let mut body = death_body();
    body["declarant"]["residence"] = residence.clone();
    let token = registrar(HANOI_OFFICE);
    let (status, recorded, _) = app
        .call(Method::POST, "/v1/deaths", Some(&token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let path = format!(
        "/v1/life-events/{}",
        recorded["life_event_id"].as_str().unwrap()
    );
    let (status, record, _) = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(
        record["declaration"]["declarant"]["residence"], residence,
        "{record}"
    );
}

#[tokio::test]
async fn an_idempotency_key_answers_the_same_and_refuses_another_body() {
    let app = TestApp::new().await;
    let token = registrar(HCM_OFFICE);
    let send = |body: Value, key: &'static str| {
        let app = &app;
        let token = token.clone();
        async move {
            app.call_raw(
                Method::POST,
                "/v1/births",
                Some(&token),
                Some(serde_json::to_vec(&body).unwrap()),
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let (first_status, first, _) = send(birth_body(), "key-1").await;
    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    let (again_status, again, _) = send(birth_body(), "key-1").await;
    assert_eq!(again_status, StatusCode::CREATED, "{again}");
    assert_eq!(first, again, "the same key and body answer the same");
    assert_eq!(app.log_len().await, 1, "a retried request appends nothing");

    let mut other = birth_body();
    other["child"]["full_name"] = json!("Nguyễn Minh Anh");
    let (status, body, _) = send(other, "key-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.log_len().await, 1);

    let (status, body, _) = send(birth_body(), "key-2").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(body["life_event_id"], first["life_event_id"]);
    assert_eq!(app.log_len().await, 2);
}

/// A correction or a void carries an `Idempotency-Key` like a recording: the same request
/// again is answered as the first time (not "nothing changed" or "already voided", and not a
/// 409 for the version it moved on from), and the key used before on the record for anything
/// else (the recording, another correction) is refused. Before, the command's event id came
/// from the record and the key alone, so a reused key was answered 200 with nothing stored,
/// and a retry was decided anew (422 or 409).
#[tokio::test]
async fn corrections_and_voids_with_an_idempotency_key_are_retried_safely() {
    let app = TestApp::new().await;
    let token = registrar(HCM_OFFICE);
    let (status, recorded, _) = app
        .call_raw(
            Method::POST,
            "/v1/births",
            Some(&token),
            Some(serde_json::to_vec(&birth_body()).unwrap()),
            &[("idempotency-key", "record-1")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let path = format!(
        "/v1/life-events/{}",
        recorded["life_event_id"].as_str().unwrap()
    );
    let corrections = format!("{path}/corrections");
    let send = |uri: &str, body: Value, key: &'static str| {
        let (app, token, uri) = (&app, token.clone(), uri.to_owned());
        async move {
            app.call_raw(
                Method::POST,
                &uri,
                Some(&token),
                Some(serde_json::to_vec(&body).unwrap()),
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let name = json!({ "reason": "typo in the name", "expected_version": 1,
                       "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });

    // The recording's key on a correction: refused, nothing stored.
    let (status, body, _) = send(&corrections, name.clone(), "record-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.log_len().await, 1);

    let (status, first, _) = send(&corrections, name.clone(), "fix-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["version"], 2);
    assert_eq!(
        first["declaration"]["child"]["full_name"],
        "Nguyễn Minh Anh"
    );
    let (status, again, _) = send(&corrections, name.clone(), "fix-1").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a retry is answered as the first time: {again}"
    );
    assert_eq!(again, first);
    assert_eq!(
        app.log_len().await,
        2,
        "a retried correction stores nothing"
    );

    // The same key for another correction: refused, nothing stored.
    let hometown =
        json!({ "reason": "hometown", "changes": { "child": { "hometown": "Bình Dương" } } });
    let (status, body, _) = send(&corrections, hometown.clone(), "fix-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let mut other_reason = name.clone();
    other_reason["reason"] = json!("another reason");
    let (status, body, _) = send(&corrections, other_reason, "fix-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.log_len().await, 2);
    let (status, body, _) = send(&corrections, hometown, "fix-2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 3);

    let void = format!("{path}/void");
    let reason = json!({ "reason": "recorded in error", "expected_version": 3 });
    let (status, body, _) = send(&void, reason.clone(), "fix-2").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let (status, voided, _) = send(&void, reason.clone(), "void-1").await;
    assert_eq!(status, StatusCode::OK, "{voided}");
    assert_eq!(voided["voided"], true);
    let (status, again, _) = send(&void, reason, "void-1").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a retried void is answered as the first time: {again}"
    );
    assert_eq!(again, voided);
    let (status, body, _) = send(&void, json!({ "reason": "another" }), "void-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.log_len().await, 4);
}

/// Retries sent while the first attempt is still under way (same key, same body, at once):
/// whichever attempt a request races, every one is answered 200 and one change is stored.
/// A request that read the record before another attempt committed, and reached the
/// registry after, was refused as a conflict or as changing nothing before `overtaken`.
#[tokio::test]
async fn concurrent_retries_of_one_correction_or_void_all_succeed_once() {
    let app = TestApp::new().await;
    let id = record_birth(&app).await;
    let token = registrar(HCM_OFFICE);
    let path = format!("/v1/life-events/{id}");
    let send = |uri: String, body: Value, key: &'static str| {
        let (app, token) = (&app, token.clone());
        async move {
            let (status, body, _) = app
                .call_raw(
                    Method::POST,
                    &uri,
                    Some(&token),
                    Some(serde_json::to_vec(&body).unwrap()),
                    &[("idempotency-key", key)],
                )
                .await;
            (status, body)
        }
    };
    let name = json!({ "reason": "typo in the name", "expected_version": 1,
                       "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });
    let answers = futures::future::join_all(
        (0..8).map(|_| send(format!("{path}/corrections"), name.clone(), "fix-1")),
    )
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["corrections"], 1, "{body}");
    }
    assert_eq!(app.log_len().await, 2);
    let void = json!({ "reason": "recorded in error", "expected_version": 2 });
    let answers = futures::future::join_all(
        (0..8).map(|_| send(format!("{path}/void"), void.clone(), "void-1")),
    )
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["voided"], true, "{body}");
    }
    assert_eq!(app.log_len().await, 3);
}

/// The version a registrar read (`expected_version`) is checked against the version the
/// change is decided and committed on, not only against the handler's earlier read: a change
/// committed in between is a conflict, and nothing is stored.
#[tokio::test]
async fn a_change_against_a_version_moved_since_is_a_conflict() {
    let app = TestApp::new().await;
    let id = record_birth(&app).await;
    let registry = &app.state.registry;
    let loaded = registry.load(id.parse().unwrap()).await.unwrap().unwrap();
    let actor = Actor {
        id: "registrar-79-26734".to_owned(),
        role: Role::Registrar,
        office: Some(HCM_OFFICE.to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    let change = |reason: &str, expected: i64| Change {
        reason: reason.to_owned(),
        on: now().date_naive(),
        expected: Some(StreamVersion(expected)),
    };
    let declaration = loaded.state.declaration.clone().unwrap();
    let renamed = |mut declaration: Declaration, name: &str| {
        if let Declaration::Birth(birth) = &mut declaration {
            birth.child.full_name = FullName::parse_field(name, "name").unwrap();
        }
        declaration
    };
    let unguarded = None::<(
        Uuid,
        fn(&Declaration, Option<&RecordedEvent>) -> Result<(), ()>,
    )>;
    // Read at version 1; another registrar's correction commits first (version 2).
    registry
        .correct_with(
            &actor,
            &loaded.stream_id,
            change("first", 1),
            |_| Ok(renamed(declaration.clone(), "Nguyễn Minh Anh")),
            unguarded,
        )
        .await
        .unwrap()
        .unwrap();
    let late = registry
        .correct_with(
            &actor,
            &loaded.stream_id,
            change("second", 1),
            |_| Ok(renamed(declaration.clone(), "Nguyễn Minh Châu")),
            unguarded,
        )
        .await;
    assert!(matches!(late, Err(RegistryError::Conflict)), "{late:?}");
    let late = registry
        .void(&actor, &loaded.stream_id, change("void", 1))
        .await;
    assert!(matches!(late, Err(RegistryError::Conflict)), "{late:?}");
    assert_eq!(
        app.log_len().await,
        2,
        "only the first correction is stored"
    );
    let stored = registry
        .void(&actor, &loaded.stream_id, change("void", 2))
        .await
        .unwrap();
    assert_eq!(stored, Stored::New);
    assert_eq!(app.log_len().await, 3);
}

/// A death recorded before times of death were kept (schema v1: its date only, upcast to
/// midnight with `time_known: false`) keeps that flag through a correction that does not give
/// a time; before, every correction set it (and listed `death.time_known` as changed).
#[tokio::test]
async fn correcting_a_death_recorded_with_its_date_only_keeps_the_time_unknown() {
    let app = TestApp::new().await;
    let payload: Value = serde_json::from_str(include_str!(
        "../../events/model/tests/fixtures/DeathRecorded.v1.json"
    ))
    .unwrap();
    let life_event_id: Uuid = payload["life_event_id"].as_str().unwrap().parse().unwrap();
    let stream = StreamId::for_kind("death", life_event_id).unwrap();
    let mut metadata = EventMetadata::system("registrar-01-00004", Uuid::now_v7(), None, now());
    metadata.role = Role::Registrar;
    metadata.office = Some(HANOI_OFFICE.to_owned());
    app.store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "DeathRecorded".to_owned(),
                schema_version: 1,
                payload,
                metadata,
            }],
        )
        .await
        .unwrap();
    let path = format!("/v1/life-events/{life_event_id}");
    let token = registrar(HANOI_OFFICE);
    let change = json!({ "reason": "cause", "changes": { "death": { "cause": "bệnh tim" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("{path}/corrections"),
            Some(&token),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["declaration"]["death"]["cause"], "bệnh tim");
    assert_eq!(body["declaration"]["death"]["time_known"], false, "{body}");
    let corrected = app.store.read_stream(&stream).await.unwrap().pop().unwrap();
    assert_eq!(corrected.event_type, "LifeEventCorrected");
    assert_eq!(corrected.payload["changed_fields"], json!(["death.cause"]));

    // A time of death given by a correction is known from then on.
    let change =
        json!({ "reason": "time", "changes": { "death": { "at": "2025-06-30T05:10:00+07:00" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &format!("{path}/corrections"),
            Some(&token),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["declaration"]["death"]["time_known"], true, "{body}");
}

#[tokio::test]
async fn a_life_event_is_read_corrected_and_voided() {
    let app = TestApp::new().await;
    let id = record_birth(&app).await;
    let token = registrar(HCM_OFFICE);
    let path = format!("/v1/life-events/{id}");

    let (status, record, _) = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["kind"], "birth");
    assert_eq!(record["version"], 1);
    assert_eq!(record["procedures"].as_array().unwrap().len(), 3);
    assert_eq!(record["procedures"][0]["procedure"], "birth-registration");
    assert_eq!(record["procedures"][0]["state"], "pending");
    assert_eq!(record["history"][0]["event_type"], "BirthRecorded");

    for (token, status) in [
        (registrar(HANOI_OFFICE), StatusCode::FORBIDDEN),
        (operator(), StatusCode::FORBIDDEN),
        (auditor(), StatusCode::OK),
    ] {
        let (got, body, _) = app
            .call_raw(
                Method::GET,
                &path,
                Some(&token),
                None,
                &[("x-purpose", "quality review")],
            )
            .await;
        assert_eq!(got, status, "{body}");
    }
    let (status, _, _) = app
        .call(
            Method::GET,
            "/v1/life-events/7a1e3c9e-0000-4000-8000-000000000000",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let corrections = format!("{path}/corrections");
    let change = json!({ "reason": "typo in the name", "changes": { "child": { "full_name": "Nguyễn Minh Anh" } } });
    let (status, body, _) = app
        .call(
            Method::POST,
            &corrections,
            Some(&token),
            Some(change.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["corrections"], 1);
    assert_eq!(body["declaration"]["child"]["full_name"], "Nguyễn Minh Anh");
    assert_eq!(body["version"], 2);

    let before = app.log_len().await;
    let (status, body, _) = app
        .call(Method::POST, &corrections, Some(&token), Some(change))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "nothing_changed");

    let stale = json!({ "reason": "again", "expected_version": 1,
                        "changes": { "child": { "hometown": "Bình Dương" } } });
    let (status, body, _) = app
        .call(Method::POST, &corrections, Some(&token), Some(stale))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "concurrent_change");

    let invalid = json!({ "reason": "date", "changes": { "child": { "date_of_birth": "2027-01-01", "sex": 3 } } });
    let (status, body, _) = app
        .call(Method::POST, &corrections, Some(&token), Some(invalid))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["fields"]["changes.child.sex"].is_string(),
        "{body}"
    );

    let invalid =
        json!({ "reason": "date", "changes": { "child": { "date_of_birth": "2027-01-01" } } });
    let (status, body, _) = app
        .call(Method::POST, &corrections, Some(&token), Some(invalid))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["field_codes"]["changes.child.date_of_birth"], "in_future",
        "{body}"
    );

    let moved = json!({ "reason": "office", "changes": { "office": "01-00004" } });
    let (status, body, _) = app
        .call(Method::POST, &corrections, Some(&token), Some(moved))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body, _) = app
        .call(
            Method::POST,
            &corrections,
            Some(&token),
            Some(json!({ "changes": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["fields"]["reason"].is_string());
    assert_eq!(
        app.log_len().await,
        before,
        "refused corrections append nothing"
    );

    let void = format!("{path}/void");
    let (status, body, _) = app
        .call(
            Method::POST,
            &void,
            Some(&registrar(HANOI_OFFICE)),
            Some(json!({ "reason": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body, _) = app
        .call(
            Method::POST,
            &void,
            Some(&token),
            Some(json!({ "reason": "entered twice" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["voided"], true);
    let (status, body, _) = app
        .call(
            Method::POST,
            &void,
            Some(&token),
            Some(json!({ "reason": "entered twice" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "voided");
    assert_eq!(app.log_len().await, before + 1);
}

#[tokio::test]
async fn a_correction_that_contradicts_the_childs_assigned_number_is_refused() {
    let app = TestApp::new().await;
    let id = record_birth(&app).await;
    let token = registrar(HCM_OFFICE);
    let corrections = format!("/v1/life-events/{id}/corrections");
    // The registration completed and birth-followups assigned the child's number: a girl born
    // in 2026, registered in province 79.
    assign_child_number(&app, id.parse().unwrap()).await;

    let before = app.log_len().await;
    for (changes, field) in [
        (json!({ "child": { "sex": "male" } }), "changes.child.sex"),
        (
            json!({ "child": { "date_of_birth": "2025-12-30" } }),
            "changes.child.date_of_birth",
        ),
    ] {
        let (status, body, _) = app
            .call(
                Method::POST,
                &corrections,
                Some(&token),
                Some(json!({ "reason": "nhầm", "changes": changes })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let fields = body["error"]["fields"].as_object().unwrap();
        assert_eq!(fields.len(), 1, "{body}");
        assert!(
            fields[field].as_str().unwrap().contains("079326000042"),
            "{body}"
        );
        assert_eq!(body["error"]["field_codes"][field], "personal_id_assigned");
    }
    assert_eq!(
        app.log_len().await,
        before,
        "refused corrections append nothing"
    );

    // Another day of birth in the same year keeps the number true: accepted.
    let (status, body, _) = app
        .call(
            Method::POST,
            &corrections,
            Some(&token),
            Some(json!({ "reason": "nhầm ngày", "changes": { "child": { "date_of_birth": "2026-11-19" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A follow-up whose rules have no parameters for the date of death (funeral support before
/// the assistance standard of 2021-07-01, the burial allowance before 2016-01-01) is refused
/// when recorded or corrected, naming `procedures`, with nothing stored: `death-followups`
/// would fail on the record as a whole, residence deregistration included.
#[tokio::test]
async fn a_follow_up_the_rules_cannot_decide_for_its_date_of_death_is_refused() {
    let app = TestApp::new().await;
    let token = registrar(HANOI_OFFICE);
    let mut body = death_body();
    body["death"]["at"] = json!("2020-05-01T06:30:00+07:00");
    body["death"]["notice"]["date"] = json!("2020-05-01");
    let before = app.log_len().await;
    let (status, answer, _) = app
        .call(Method::POST, "/v1/deaths", Some(&token), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let problem = answer["error"]["fields"]["procedures"].as_str().unwrap();
    assert!(
        problem.contains("funeral-support") && problem.contains("2021-07-01"),
        "{answer}"
    );
    assert!(!problem.contains("burial-allowance"), "{answer}");
    assert_eq!(app.log_len().await, before, "nothing stored");

    // Without it, the death is recorded (late), its burial allowance decided on 2020's salary.
    body["procedures"] = json!([
        "death-registration",
        "residence-deregistration",
        "burial-allowance"
    ]);
    let (status, recorded, _) = app
        .call(Method::POST, "/v1/deaths", Some(&token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");

    // A correction moving the death before the burial allowance's rules: refused.
    let path = format!(
        "/v1/life-events/{}/corrections",
        recorded["life_event_id"].as_str().unwrap()
    );
    let before = app.log_len().await;
    let (status, answer, _) = app
        .call(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({ "reason": "năm mất ghi sai",
                          "changes": { "death": { "at": "2015-06-01T06:30:00+07:00",
                                                  "notice": { "date": "2015-06-01" } } } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let problem = answer["error"]["fields"]["changes.procedures"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(problem.contains("burial-allowance"), "{answer}");
    assert_eq!(app.log_len().await, before, "nothing stored");
}
