//! End to end on the real binary: `lifeline serve --role all` on a fresh PostgreSQL database
//! and a JetStream stream of its own, with social security an external system (wiremock).
//! A birth and a death (three of the four procedures chosen) are worked through the HTTP API
//! and the signed connector until every chosen procedure is completed; `/metrics` then shows the
//! runtime's figures settled (no relay, policy or projection lag; completed tasks counted);
//! SIGTERM stops the server with exit code 0.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use lifeline::auth::{issue_token, Scope};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::AgencyId;
use lifeline_model::values::OfficeCode;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN_SECRET: &str = "e2e-token-secret-e2e-token-secret-0123456789";
const CONNECTOR_SECRET: &str = "e2e-social-security-secret-0123456789abcdef";
const POSTGRES_URL_VAR: &str = "LIFELINE_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const NATS_URL_VAR: &str = "LIFELINE_TEST_NATS_URL";
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// How long any one asynchronous step may take.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_birth_and_a_death_flow_through_the_real_server_to_every_chosen_procedure() {
    let started = Instant::now();
    let database = FreshDatabase::create().await;
    let nats_url = std::env::var(NATS_URL_VAR).unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned());
    let jetstream = match tokio::time::timeout(
        Duration::from_secs(5),
        lifeline_policies::runtime::connect_nats(&nats_url),
    )
    .await
    {
        Ok(Ok(jetstream)) => jetstream,
        _ => panic!(
            "cannot reach NATS at {nats_url}: start it with `bash deploy/services.sh up` \
             (or set {NATS_URL_VAR})"
        ),
    };
    let id = Uuid::new_v4().simple().to_string();
    let stream = format!("E2E_{}", id.to_uppercase());
    let agency_system = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/applications"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&agency_system)
        .await;

    let mut server = Server::start(&database.url, &nats_url, &stream, &id, &agency_system).await;
    eprintln!("server up after {:?}", started.elapsed());

    birth_chain(&server, &agency_system).await;
    eprintln!("birth chain done after {:?}", started.elapsed());
    death_chain(&server, &agency_system).await;
    eprintln!("death chain done after {:?}", started.elapsed());
    anchored_verification(&server, &database.url).await;
    eprintln!("anchors verified after {:?}", started.elapsed());

    // Every delivery was signed with the agency's secret and carried only its fields.
    let requests = agency_system.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "one application per connector task");
    for request in &requests {
        assert_signed(request);
    }

    // `/metrics` shows the runtime's figures once the sampler (every 5 s) has caught up: the
    // relay and every policy have nothing left, and the completed tasks are counted.
    let page = match eventually("settled runtime figures on /metrics", || {
        server.settled_metrics()
    })
    .await
    {
        Ok(page) => page,
        Err(error) => panic!("{error}:\n{}\n{}", server.metrics().await, server.log()),
    };
    for series in [
        r#"lifeline_tasks{agency="civil-registry",procedure="birth-registration",state="completed"} 1"#,
        r#"lifeline_tasks{agency="civil-registry",procedure="death-registration",state="completed"} 1"#,
        r#"lifeline_policy_failures_total{policy="birth-registration"} 0"#,
        r#"lifeline_metrics_sample_failures_total{part="policies"} 0"#,
    ] {
        assert!(page.lines().any(|line| line == series), "{series}:\n{page}");
    }

    let stopped = Instant::now();
    let status = server.terminate().await;
    assert!(
        status.success(),
        "SIGTERM must stop the server gracefully with exit code 0, got {status}\n{}",
        server.log()
    );
    eprintln!(
        "stopped in {:?}; whole test {:?}",
        stopped.elapsed(),
        started.elapsed()
    );
    if let Err(error) = jetstream.delete_stream(&stream).await {
        eprintln!("could not delete the test stream {stream}: {error}");
    }
}

/// The sealer keeps the newest seal outside the database, in its anchor file (by default in
/// the key directory); an auditor fetches the head over HTTP. The log verifies against both,
/// over HTTP and with `lifeline verify --anchor`; an anchor with a forged field is refused.
async fn anchored_verification(server: &Server, database_url: &str) {
    let dir = server._dir.path();
    let file = dir.join("lifeline-data/keys/seal-anchors.jsonl");
    let kept: Vec<Value> = match eventually("a seal in the sealer's anchor file", || async {
        let text = std::fs::read_to_string(&file).ok()?;
        let seals: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (!seals.is_empty()).then_some(seals)
    })
    .await
    {
        Ok(seals) => seals,
        Err(error) => panic!("{error}:\n{}", server.log()),
    };
    let auditor = token(Role::Auditor, Scope::Unscoped);
    let (status, head) = server
        .call(Method::GET, "/v1/audit/seals/head", &auditor, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{head}");
    assert!(head["seq"].as_i64().unwrap() >= kept[0]["seq"].as_i64().unwrap());
    let mut anchors = kept.clone();
    anchors.push(head.clone());
    let (status, report) = server
        .call(
            Method::POST,
            "/v1/audit/verify",
            &auditor,
            Some(json!({ "anchors": anchors })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["first_bad"], Value::Null, "{report}");
    assert_eq!(report["anchors_checked"], json!(anchors.len()), "{report}");

    let mut forged = head.clone();
    forged["event_count"] = json!(forged["event_count"].as_i64().unwrap() + 1);
    let (status, refused) = server
        .call(
            Method::POST,
            "/v1/audit/verify",
            &auditor,
            Some(json!({ "anchors": [head, forged] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["field_codes"]["anchors[1]"], "invalid_anchor",
        "{refused}"
    );

    // At most 1,000 anchors a request (the newest alone vouches for every seal before it).
    let too_many: Vec<Value> = std::iter::repeat_n(head.clone(), 1_001).collect();
    let (status, refused) = server
        .call(
            Method::POST,
            "/v1/audit/verify",
            &auditor,
            Some(json!({ "anchors": too_many })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["field_codes"]["anchors"], "too_many",
        "{refused}"
    );

    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(["verify", "--anchor"])
        .arg(&file)
        .current_dir(dir)
        .env("LIFELINE_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["first_bad"], Value::Null, "{report}");
    assert!(report["anchors_checked"].as_u64().unwrap() >= 1, "{report}");
}

/// The real binary started while NATS is down: it comes up (until 2026-12-07 it exited), its
/// API is ready and records a birth (NATS is reported down in `/readyz`, not required); once
/// NATS starts, the relay and the consumers catch up and the birth's registration task reaches
/// the inbox.
#[tokio::test]
async fn the_server_starts_and_records_while_nats_is_down_and_catches_up_when_it_comes() {
    let database = FreshDatabase::create().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let id = Uuid::new_v4().simple().to_string();
    let stream = format!("E2E_{}", id.to_uppercase());
    let agency_system = MockServer::start().await;
    let mut server = Server::start(&database.url, &nats_url, &stream, &id, &agency_system).await;

    let (status, ready) = server.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(status, StatusCode::OK, "{ready}\n{}", server.log());
    assert!(
        ready["checks"]["nats"]
            .as_str()
            .unwrap()
            .starts_with("down"),
        "{ready}"
    );
    let registrar = token(
        Role::Registrar,
        Scope::Office(OfficeCode::parse("79-26734").unwrap()),
    );
    let (status, recorded) = server
        .call(Method::POST, "/v1/births", &registrar, Some(birth_body()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let life_event_id = recorded["life_event_id"].as_str().unwrap().to_owned();

    let store = tempfile::tempdir().unwrap();
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (deploy/services.sh installs it)");
    server
        .task_in_inbox(
            &officer(AgencyId::CivilRegistry),
            "civil-registry",
            "birth-registration",
            &life_event_id,
        )
        .await;
    let (_, ready) = server.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(ready["checks"]["nats"], "ok", "{ready}");
    let status = server.terminate().await;
    let _ = nats.kill();
    let _ = nats.wait();
    assert!(status.success(), "{status}\n{}", server.log());
}

/// The DESIGN.md birth: registration at the civil registry (through its inbox), then residence
/// registration (police, inbox) and the child's card (social security, connector), prefilled
/// with the personal ID number and the certificate number.
async fn birth_chain(server: &Server, agency_system: &MockServer) {
    let registrar = token(
        Role::Registrar,
        Scope::Office(OfficeCode::parse("79-26734").unwrap()),
    );
    let civil_registry = officer(AgencyId::CivilRegistry);
    let police = officer(AgencyId::Police);
    let social_security = officer(AgencyId::SocialSecurity);

    let (status, recorded) = server
        .call(Method::POST, "/v1/births", &registrar, Some(birth_body()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let life_event_id = recorded["life_event_id"].as_str().unwrap().to_owned();

    let registration = server
        .task_in_inbox(
            &civil_registry,
            "civil-registry",
            "birth-registration",
            &life_event_id,
        )
        .await;
    let certificate_number = "KS-79-2026-000118";
    server
        .claim_and_complete(
            &civil_registry,
            &registration,
            json!({ "kind": "birth_registered", "certificate_number": certificate_number }),
        )
        .await;

    // Residence registration, in the police inbox, prefilled.
    let residence = server
        .task_in_inbox(&police, "police", "residence-registration", &life_event_id)
        .await;
    let (status, task) = server
        .call(
            Method::GET,
            &format!("/v1/tasks/{residence}"),
            &police,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let application = &task["application"];
    let pin = application["child.personal_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the residence task carries the child's PIN: {task}"))
        .to_owned();
    assert_eq!(pin.len(), 12, "{pin}");
    assert!(
        pin.starts_with("079"),
        "a PIN of the province of birth: {pin}"
    );
    assert_eq!(application["birth_certificate_number"], certificate_number);
    assert_eq!(application["child.full_name"], "Nguyễn Minh An");
    assert_eq!(application["residence.address"], "12 Lê Lợi");
    assert_eq!(application["mother.personal_id"], "079190001234");

    // The child's card: delivered to the agency's system, signed, prefilled with the same PIN.
    let delivered = delivered_application(agency_system, "child-health-insurance").await;
    assert_eq!(delivered["kind"], "created");
    // Social security has no commune offices in the routing table: the province's office.
    assert_eq!(delivered["office"], "79-00000");
    let card_application = &delivered["application"];
    assert_eq!(card_application["child.personal_id"], pin.as_str());
    assert_eq!(
        card_application["birth_certificate_number"],
        certificate_number
    );
    assert_eq!(
        card_application["child.date_of_birth"],
        days_ago(BIRTH_DAYS_AGO).as_str()
    );
    assert!(
        card_application.get("mother.personal_id").is_none(),
        "social security does not receive the mother's PIN: {card_application}"
    );
    let card_task = delivered["task_id"].as_str().unwrap().to_owned();
    let (status, task) = server
        .call(
            Method::GET,
            &format!("/v1/tasks/{card_task}"),
            &social_security,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["life_event_id"], life_event_id.as_str());
    assert_eq!(task["procedure"], "child-health-insurance");

    // The agency's system answers later, through the signed callback.
    let answer = server
        .callback(
            "social-security",
            json!({
                "task_id": card_task, "result": "completed",
                "outcome": { "kind": "insurance_card_issued", "card_number": "TE1-79-2026-000118",
                             "valid_until": "2032-11-19" }
            }),
        )
        .await;
    assert_eq!(answer["status"], "completed", "{answer}");

    server
        .claim_and_complete(
            &police,
            &residence,
            json!({ "kind": "residence_registered", "entry_number": "CT-79-2026-000118" }),
        )
        .await;

    let procedures = server
        .procedures_settled(&registrar, &life_event_id, |_| "completed")
        .await;
    assert_eq!(procedures.len(), 3, "{procedures:?}");
}

/// A death declared with three of the four procedures (no funeral support): the deceased of
/// the DESIGN.md example is a pensioner with a registered residence in Hà Nội, so death
/// registration, residence deregistration and the burial allowance are all eligible.
async fn death_chain(server: &Server, agency_system: &MockServer) {
    let registrar = token(
        Role::Registrar,
        Scope::Office(OfficeCode::parse("01-00004").unwrap()),
    );
    let civil_registry = officer(AgencyId::CivilRegistry);
    let police = officer(AgencyId::Police);

    let mut body = death_body();
    body["procedures"] = json!([
        "death-registration",
        "residence-deregistration",
        "burial-allowance"
    ]);
    let (status, recorded) = server
        .call(Method::POST, "/v1/deaths", &registrar, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let life_event_id = recorded["life_event_id"].as_str().unwrap().to_owned();

    let registration = server
        .task_in_inbox(
            &civil_registry,
            "civil-registry",
            "death-registration",
            &life_event_id,
        )
        .await;
    let extract_number = "KT-01-2026-005531";
    server
        .claim_and_complete(
            &civil_registry,
            &registration,
            json!({ "kind": "death_registered", "extract_number": extract_number }),
        )
        .await;

    let deregistration = server
        .task_in_inbox(
            &police,
            "police",
            "residence-deregistration",
            &life_event_id,
        )
        .await;
    let (status, task) = server
        .call(
            Method::GET,
            &format!("/v1/tasks/{deregistration}"),
            &police,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["application"]["deceased.personal_id"], "001052000111");
    assert_eq!(task["application"]["death_extract_number"], extract_number);
    assert_eq!(
        task["application"]["deceased.residence.address"],
        "5 Hàng Bông"
    );

    let delivered = delivered_application(agency_system, "burial-allowance").await;
    let allowance = &delivered["application"];
    assert_eq!(allowance["deceased.personal_id"], "001052000111");
    assert_eq!(allowance["death_extract_number"], extract_number);
    let amount_vnd = allowance["eligibility.amount_vnd"]
        .as_i64()
        .unwrap_or_else(|| panic!("the allowance carries the decided amount: {allowance}"));
    assert!(amount_vnd > 0);
    let answer = server
        .callback(
            "social-security",
            json!({
                "task_id": delivered["task_id"], "result": "completed",
                "outcome": { "kind": "payment_decided", "decision_number": "QD-01-2026-000077",
                             "amount_vnd": amount_vnd }
            }),
        )
        .await;
    assert_eq!(answer["status"], "completed", "{answer}");

    server
        .claim_and_complete(
            &police,
            &deregistration,
            json!({ "kind": "residence_closed", "entry_number": "XT-01-2026-000031" }),
        )
        .await;

    let procedures = server
        .procedures_settled(&registrar, &life_event_id, |procedure| {
            if procedure == "funeral-support" {
                "not-chosen"
            } else {
                "completed"
            }
        })
        .await;
    let completed = procedures
        .iter()
        .filter(|(_, state)| state == "completed")
        .count();
    assert_eq!(completed, 3, "{procedures:?}");
}

/// The first application the agency system received for `procedure` (polled).
async fn delivered_application(agency_system: &MockServer, procedure: &str) -> Value {
    eventually(&format!("a {procedure} application delivered"), || async {
        let requests = agency_system.received_requests().await.unwrap_or_default();
        requests.iter().find_map(|request| {
            let body: Value = serde_json::from_slice(&request.body).ok()?;
            (body["procedure"] == procedure).then(|| {
                assert_signed(request);
                body
            })
        })
    })
    .await
    .unwrap_or_else(|what| panic!("{what}"))
}

/// Checks the signature as the agency's system would, with its own HMAC code.
fn assert_signed(request: &Request) {
    let timestamp = request.headers["x-lifeline-timestamp"].to_str().unwrap();
    let signature = request.headers["x-lifeline-signature"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(CONNECTOR_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected, "the application is signed");
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 120, "a fresh timestamp: {age} s");
}

/// `lifeline serve --role all` as a child process; killed if the test fails before SIGTERM.
struct Server {
    child: Child,
    base_url: String,
    http: reqwest::Client,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(
        database_url: &str,
        nats_url: &str,
        stream: &str,
        id: &str,
        agency_system: &MockServer,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lifeline.toml");
        std::fs::write(
            &config,
            format!(
                "[connectors.social-security]\nurl = \"{}/applications\"\n\
                 secret_env = \"E2E_SOCIAL_SECURITY_SECRET\"\ntimeout_ms = 2000\n\
                 backoff_base_ms = 100\nbackoff_max_ms = 1000\n",
                agency_system.uri()
            ),
        )
        .unwrap();
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_lifeline"));
        command
            .arg("--config")
            .arg(&config)
            .args(["serve", "--role", "all"])
            .current_dir(dir.path())
            .env_remove("LIFELINE_REFERENCE_DIR")
            .env_remove("LIFELINE_TOKEN_SECRET_FILE")
            .env("LIFELINE_DATABASE_URL", database_url)
            .env("LIFELINE_NATS_URL", nats_url)
            .env("LIFELINE_NATS_STREAM", stream)
            .env("LIFELINE_NATS_SUBJECT_PREFIX", format!("e2e.{id}"))
            .env("LIFELINE_HTTP_ADDR", "127.0.0.1:0")
            .env("LIFELINE_TOKEN_SECRET", TOKEN_SECRET)
            .env("LIFELINE_LOG_JSON", "false")
            .env("E2E_SOCIAL_SECURITY_SECRET", CONNECTOR_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the lifeline binary");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(STEP_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await;
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let base_url = match announced {
            Ok(Some(url)) => url,
            Ok(None) => panic!(
                "the server exited before listening ({:?}):\n{}",
                child.try_wait(),
                read_log()
            ),
            Err(_) => panic!(
                "no 'listening on' line within {STEP_DEADLINE:?}:\n{}",
                read_log()
            ),
        };
        // Keep draining stdout so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            base_url,
            http: reqwest::Client::new(),
            log_path,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// One request with a bearer token; answers the status and the JSON body (Null if none).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.unwrap_or_else(|error| {
            panic!("{path}: {error}\n{}", self.log());
        });
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The task of `procedure` for `life_event_id` once it is in `agency`'s inbox.
    async fn task_in_inbox(
        &self,
        token: &str,
        agency: &str,
        procedure: &str,
        life_event_id: &str,
    ) -> String {
        let path = format!("/v1/agencies/{agency}/tasks?procedure={procedure}&status=open");
        let found = eventually(
            &format!("a {procedure} task in the {agency} inbox"),
            || async {
                let (status, page) = self.call(Method::GET, &path, token, None).await;
                assert_eq!(status, StatusCode::OK, "{page}");
                page["tasks"].as_array()?.iter().find_map(|task| {
                    (task["life_event_id"] == life_event_id)
                        .then(|| task["task_id"].as_str().unwrap().to_owned())
                })
            },
        )
        .await;
        found.unwrap_or_else(|what| panic!("{what}\n{}", self.log()))
    }

    async fn claim_and_complete(&self, token: &str, task_id: &str, outcome: Value) {
        let (status, task) = self
            .call(
                Method::POST,
                &format!("/v1/tasks/{task_id}/claim"),
                token,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "claim: {task}");
        assert_eq!(task["status"], "claimed");
        let (status, task) = self
            .call(
                Method::POST,
                &format!("/v1/tasks/{task_id}/complete"),
                token,
                Some(json!({ "outcome": outcome })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "complete: {task}");
        assert_eq!(task["status"], "completed");
    }

    /// `POST /v1/connectors/{agency}/callback`, signed as the agency's system signs it.
    async fn callback(&self, agency: &str, body: Value) -> Value {
        let body = serde_json::to_vec(&body).unwrap();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(CONNECTOR_SECRET.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let response = self
            .http
            .post(format!("{}/v1/connectors/{agency}/callback", self.base_url))
            .header("content-type", "application/json")
            .header("x-lifeline-timestamp", timestamp)
            .header("x-lifeline-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "callback: {answer}");
        answer
    }

    /// Polls `GET /v1/life-events/{id}` until every procedure is in the state `expected` names
    /// for it; answers (procedure, state) pairs.
    async fn procedures_settled(
        &self,
        token: &str,
        life_event_id: &str,
        expected: impl Fn(&str) -> &'static str,
    ) -> Vec<(String, String)> {
        let path = format!("/v1/life-events/{life_event_id}");
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let (status, body) = self.call(Method::GET, &path, token, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let procedures: Vec<(String, String)> = body["procedures"]
                .as_array()
                .map(|procedures| {
                    procedures
                        .iter()
                        .map(|procedure| {
                            let text =
                                |key: &str| procedure[key].as_str().unwrap_or_default().to_owned();
                            (text("procedure"), text("state"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let settled = !procedures.is_empty()
                && procedures
                    .iter()
                    .all(|(procedure, state)| state == expected(procedure));
            if settled {
                return procedures;
            }
            assert!(
                Instant::now() < deadline,
                "procedures not settled within {STEP_DEADLINE:?}; last answer: {body:#}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /metrics` (no token): the page, or an empty one if it cannot be read.
    async fn metrics(&self) -> String {
        match self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The `/metrics` page once the runtime's figures have settled: the relay, every policy and
    /// every projection with nothing left to process, and tasks counted.
    async fn settled_metrics(&self) -> Option<String> {
        let page = self.metrics().await;
        let all_zero = |prefix: &str| {
            let values: Vec<&str> = page
                .lines()
                .filter(|line| line.starts_with(prefix))
                .filter_map(|line| line.rsplit_once(' ').map(|(_, value)| value))
                .collect();
            !values.is_empty() && values.iter().all(|value| *value == "0")
        };
        let settled = all_zero("lifeline_relay_lag_events ")
            && all_zero("lifeline_policy_lag_events{")
            && all_zero("lifeline_projection_lag_events{")
            && page.contains("lifeline_tasks{");
        settled.then_some(page)
    }

    /// SIGTERM, then the exit status within a deadline.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the server is still running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the server did not stop within 15 s of SIGTERM\n{}",
                self.log()
            ),
        }
    }
}

/// Polls `probe` every 100 ms until it answers `Some`, or gives up after [`STEP_DEADLINE`]
/// with `Err(what)`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(found) = probe().await {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(format!("no {what} within {STEP_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token(role: Role, scope: Scope) -> String {
    issue_token(
        TOKEN_SECRET.as_bytes(),
        role,
        scope,
        Duration::from_secs(600),
    )
    .unwrap()
}

fn officer(agency: AgencyId) -> String {
    token(Role::Agency, Scope::Agency(agency))
}

/// A uuid-named PostgreSQL database of its own, dropped (forcibly) when the test ends.
struct FreshDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create() -> Self {
        let admin_url =
            std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let admin = PgConnectOptions::from_str(&admin_url)
            .unwrap_or_else(|error| panic!("{POSTGRES_URL_VAR} is not a PostgreSQL url: {error}"));
        let mut connection = admin.connect().await.unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {}:{}: start it with `bash deploy/services.sh up` \
                 (or set {POSTGRES_URL_VAR}): {error}",
                admin.get_host(),
                admin.get_port()
            )
        });
        let name = format!("lifeline_e2e_{}", Uuid::new_v4().simple());
        connection
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
                format!("{server}/{name}")
            }
            _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
        };
        Self { admin, name, url }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await: drop the database from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut connection = admin.connect().await?;
                connection.execute(sqlx::AssertSqlSafe(sql)).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// The example birth and death happened this many days before the test runs (in Vietnam): the
/// real server checks the dates against its own clock, so fixed dates would turn the records
/// late (or the birth too old for its notice) as the calendar moves on.
const BIRTH_DAYS_AGO: i64 = 2;
const DEATH_DAYS_AGO: i64 = 3;

/// The date `days` days before today in Vietnam (UTC+7), as `YYYY-MM-DD`.
fn days_ago(days: i64) -> String {
    let vietnam = chrono::FixedOffset::east_opt(7 * 3600).expect("UTC+7 is a valid offset");
    (chrono::Utc::now().with_timezone(&vietnam).date_naive() - chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

fn birth_body() -> Value {
    let born = days_ago(BIRTH_DAYS_AGO);
    json!({
      "office": "79-26734",
      "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": born,
                 "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                 "ethnicity": "Kinh", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
      "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": born },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                     "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    })
}

fn death_body() -> Value {
    let died = days_ago(DEATH_DAYS_AGO);
    json!({
      "office": "01-00004",
      "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                    "sex": "male" },
      "death": { "at": format!("{died}T06:30:00+07:00"), "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                 "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": died } },
      "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                     "email": "dung@example.vn" },
      "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
    })
}
