//! The HTTP tests' harness: a fresh SQLite store per test, the app with a pinned clock and a
//! known office list, tokens, and one `call` helper over tower's `oneshot`.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt;
use lifeline::auth::{issue_token_for, Scope, TokenVerifier};
use lifeline::http::{app, AppState};
use lifeline_model::envelope::{LogCursor, Role};
use lifeline_model::procedure::AgencyId;
use lifeline_model::values::{OfficeCode, PersonalId};
use lifeline_store::EventStore;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
pub const HCM_OFFICE: &str = "79-26734";
pub const HANOI_OFFICE: &str = "01-00004";

pub struct TestApp {
    pub state: AppState,
    pub store: EventStore,
    _dir: tempfile::TempDir,
}

/// 2026-11-21 10:00 in Vietnam: the day after the example birth.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 3, 0, 0).unwrap()
}

impl TestApp {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("lifeline.sqlite").display());
        let store = EventStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let state = AppState::new(store.clone(), TokenVerifier::hs256(SECRET).unwrap())
            .with_clock(Arc::new(now))
            .with_offices([HCM_OFFICE.to_owned(), HANOI_OFFICE.to_owned()])
            .with_decidable_from(lifeline::serve::decidable_from(
                &lifeline_policies::reference::ReferenceData::embedded().unwrap(),
            ));
        Self {
            state,
            store,
            _dir: dir,
        }
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Sends one request; answers the status, the JSON body (Null if none or not JSON) and
    /// the headers.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, HeaderMap) {
        let bytes = body.map(|body| serde_json::to_vec(&body).unwrap());
        self.call_raw(method, uri, token, bytes, &[]).await
    }

    pub async fn call_raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, HeaderMap) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let has_content_type = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_content_type {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            // As sent on the wire: UTF-8 bytes pass (HTTP allows them; `&str` headers would not).
            let value = HeaderValue::from_bytes(value.as_bytes()).expect("a header value");
            request = request.header(*name, value);
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json, headers)
    }

    /// The text of `GET /metrics` (Prometheus text, no token).
    pub async fn metrics_text(&self) -> String {
        let response = self
            .router()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The number of events in the log besides the access log's (`access-<uuid>` streams: an
    /// answer carrying personal data adds one, whatever the request did).
    pub async fn log_len(&self) -> usize {
        self.store
            .read_all(LogCursor::START, 100_000)
            .await
            .unwrap()
            .iter()
            .filter(|event| !event.stream_id.as_str().starts_with("access-"))
            .count()
    }
}

pub fn token(subject: &str, role: Role, scope: Scope) -> String {
    issue_token_for(SECRET, subject, role, scope, Duration::from_secs(600)).unwrap()
}

pub fn registrar(office: &str) -> String {
    token(
        &format!("registrar-{office}"),
        Role::Registrar,
        Scope::Office(OfficeCode::parse(office).unwrap()),
    )
}

pub fn officer(subject: &str, agency: AgencyId) -> String {
    token(subject, Role::Agency, Scope::Agency(agency))
}

pub fn auditor() -> String {
    token("auditor-1", Role::Auditor, Scope::Unscoped)
}

pub fn operator() -> String {
    token("citizen-portal", Role::Operator, Scope::Unscoped)
}

/// A token whose expiry is an hour ago, correctly signed.
pub fn expired_registrar(office: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = lifeline::auth::Claims {
        sub: "registrar-late".to_owned(),
        role: Role::Registrar,
        office: Some(office.to_owned()),
        agency: None,
        exp: now - 3600,
        iat: now - 7200,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub fn birth_body() -> Value {
    json!({
      "office": "79-26734",
      "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": "2026-11-20",
                 "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                 "ethnicity": "Kinh", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
      "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": "2026-11-20" },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                     "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    })
}

pub fn death_body() -> Value {
    json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                    "sex": "male" },
      "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                 "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": "2026-11-18" } },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                     "email": "dung@example.vn" },
      "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
    })
}

/// Records the example birth; answers its life event id.
pub async fn record_birth(app: &TestApp) -> String {
    let (status, body, _) = app
        .call(
            Method::POST,
            "/v1/births",
            Some(&registrar(HCM_OFFICE)),
            Some(birth_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["life_event_id"].as_str().unwrap().to_owned()
}

/// The child's number `079326000042` (a girl born in 2026, registered in province 79) assigned
/// to the birth `life_event_id`, stored as `birth-followups`' allocator stores it: `pin-<number>`,
/// under the record's assignment id. The HTTP tests run no policies.
pub async fn assign_child_number(app: &TestApp, life_event_id: uuid::Uuid) -> PersonalId {
    use lifeline_model::codec::to_new_event;
    use lifeline_model::envelope::{EventMetadata, ExpectedVersion, StreamId};
    use lifeline_model::system_events::{PersonalIdAssigned, SystemEvent};
    use lifeline_model::values::{FullName, Sex};
    use lifeline_policies::identity::{assignment_event_id, PIN_STREAM_KIND};

    let pin = PersonalId::parse("079326000042").unwrap();
    let assigned = PersonalIdAssigned::new(
        pin.clone(),
        life_event_id,
        None,
        FullName::parse_field("Nguyễn Minh An", "child.full_name").unwrap(),
        chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
        Sex::Female,
        now(),
    )
    .unwrap();
    app.store
        .append(
            &StreamId::for_kind(PIN_STREAM_KIND, pin.as_str()).unwrap(),
            ExpectedVersion::NoStream,
            &[to_new_event(
                &SystemEvent::PersonalIdAssigned(assigned),
                assignment_event_id(life_event_id),
                EventMetadata::system("policy:identity", uuid::Uuid::new_v4(), None, now()),
            )],
        )
        .await
        .unwrap();
    pin
}
