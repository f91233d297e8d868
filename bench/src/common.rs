//! What every workload shares: a fresh uuid-named PostgreSQL database per run (dropped after),
//! the one `RESULT` line per figure (same format as `../shared/peers`), and the realistic
//! `BirthRecorded` built through the model's own parser, aggregate and codec.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use lifeline_model::codec;
use lifeline_model::declaration::{parse_birth, BirthDeclarationInput};
use lifeline_model::envelope::{EventMetadata, NewEvent, Role};
use lifeline_model::life_event::{LifeEvent, LifeEventCommand};
use lifeline_store::EventStore;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use uuid::Uuid;

/// The server the bench creates its databases on (`LIFELINE_BENCH_POSTGRES_URL`).
pub(crate) fn admin_url() -> String {
    std::env::var("LIFELINE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub(crate) fn nats_url() -> String {
    std::env::var("LIFELINE_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A uuid-named database, created empty; [`FreshDatabase::drop_now`] removes it.
pub(crate) struct FreshDatabase {
    pub(crate) name: String,
    admin: PgConnectOptions,
}

impl FreshDatabase {
    pub(crate) async fn create() -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(&admin_url())?;
        let name = format!("lifeline_bench_{}", Uuid::new_v4().simple());
        let mut connection = admin
            .connect()
            .await
            .context("connecting to PostgreSQL (start it with deploy/services.sh)")?;
        connection
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        Ok(Self { name, admin })
    }

    /// A database that already exists (named by the caller), not created here.
    pub(crate) fn existing(name: String) -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(&admin_url())?;
        Ok(Self { name, admin })
    }

    pub(crate) fn options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    pub(crate) fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.admin.get_username(),
            self.admin.get_host(),
            self.admin.get_port(),
            self.name
        )
    }

    /// A migrated store with a pool of `pool` connections.
    pub(crate) async fn store(&self, pool: u32) -> anyhow::Result<EventStore> {
        let store = EventStore::connect_postgres(self.options(), pool).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub(crate) async fn drop_now(self) -> anyhow::Result<()> {
        let mut connection = self.admin.connect().await?;
        connection
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}

/// Runs `CHECKPOINT` so that every level starts with the same amount of dirty pages.
pub(crate) async fn checkpoint(store: &EventStore) -> anyhow::Result<()> {
    if let Some(pool) = store.postgres_pool() {
        pool.execute("CHECKPOINT").await?;
    }
    Ok(())
}

/// One measured figure, printed as one `RESULT` line.
pub(crate) struct Figure {
    pub(crate) case: String,
    pub(crate) ops: usize,
    pub(crate) wall: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) extra: String,
}

/// Nearest-rank percentile in milliseconds (as the peers compute it).
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

impl Figure {
    pub(crate) fn new(case: impl Into<String>, ops: usize, wall: Duration) -> Self {
        Self {
            case: case.into(),
            ops,
            wall,
            latencies: Vec::new(),
            extra: String::new(),
        }
    }

    pub(crate) fn latencies(mut self, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        self.latencies = latencies;
        self
    }

    pub(crate) fn extra(mut self, extra: impl Into<String>) -> Self {
        let extra = extra.into();
        if !self.extra.is_empty() {
            self.extra.push(' ');
        }
        self.extra.push_str(&extra);
        self
    }

    #[allow(clippy::print_stdout)]
    pub(crate) fn print(&self) {
        let events_per_s = self.ops as f64 / self.wall.as_secs_f64();
        let (p50, p99, max) = if self.latencies.is_empty() {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.3}", percentile_ms(&self.latencies, 0.50)),
                format!("{:.3}", percentile_ms(&self.latencies, 0.99)),
                format!("{:.3}", percentile_ms(&self.latencies, 1.0)),
            )
        };
        println!(
            "RESULT bench=lifeline case={} ops={} wall_s={:.3} events_per_s={:.1} p50_ms={} p99_ms={} max_ms={}{}{}",
            self.case,
            self.ops,
            self.wall.as_secs_f64(),
            events_per_s,
            p50,
            p99,
            max,
            if self.extra.is_empty() { "" } else { " " },
            self.extra
        );
    }
}

/// The day the bench records on (the declarations' dates are relative to it).
pub(crate) fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Names hold letters only: 0 -> "A", 25 -> "Z", 26 -> "AA"...
fn letters(mut index: usize) -> String {
    let mut name = Vec::new();
    loop {
        name.push(char::from(b'A' + (index % 26) as u8));
        index /= 26;
        if index == 0 {
            break;
        }
        index -= 1;
    }
    name.iter().rev().collect()
}

/// The birth of `DESIGN.md` (every field the birth procedures need), numbered by `index`: the
/// `POST /v1/births` body. Each birth has parents of its own (the serial digits of their
/// personal ID numbers follow `index`), as in a registry's real day; the same two parents on
/// every birth would grow two person rows without end.
pub(crate) fn birth_body(index: usize) -> Value {
    let born = today() - chrono::Days::new(2);
    let mother_id = format!("079190{:06}", index % 1_000_000);
    let father_id = format!("079088{:06}", index % 1_000_000);
    json!({
      "office": "79-26734",
      "child": { "full_name": format!("Nguyễn Minh An {}", letters(index)), "sex": "female",
                 "date_of_birth": born.to_string(),
                 "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                 "ethnicity": "Kinh", "nationality": "VN" },
      "mother": { "full_name": "Trần Thị Bích", "personal_id": mother_id, "date_of_birth": "1990-04-02",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": father_id, "date_of_birth": "1988-07-09",
                  "ethnicity": "Kinh", "nationality": "VN" },
      "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi, Phường Bến Nghé" },
      "birth_notice": { "number": format!("TD-2026-{index:06}"), "issuer": "Bệnh viện Từ Dũ", "date": born.to_string() },
      "declarant": { "full_name": "Trần Thị Bích", "personal_id": mother_id, "relationship": "mother",
                     "phone": "+84901234567" },
      "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    })
}

/// A `BirthRecorded` as the registrar's service stores it: the body parsed and validated by the
/// model, decided by the life-event aggregate, encoded by the codec, with a registrar's
/// metadata. The stream is `birth-<life_event_id>`.
pub(crate) fn birth_recorded(index: usize) -> anyhow::Result<(Uuid, NewEvent)> {
    let input: BirthDeclarationInput = serde_json::from_value(birth_body(index))?;
    let declaration = parse_birth(&input, today())
        .map_err(|errors| anyhow::anyhow!("invalid bench declaration: {errors:?}"))?;
    let life_event_id = Uuid::now_v7();
    let events = LifeEvent::default()
        .decide(LifeEventCommand::RecordBirth {
            life_event_id,
            declaration,
            recorded_on: today(),
        })
        .map_err(|error| anyhow::anyhow!("the aggregate refused the bench birth: {error}"))?;
    let event = events.first().context("the aggregate decided no event")?;
    let metadata = EventMetadata {
        actor: "registrar-79-26734".to_owned(),
        role: Role::Registrar,
        office: Some("79-26734".to_owned()),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        recorded_at: Utc::now(),
        idempotency_key: None,
        office_signature: None,
    };
    Ok((
        life_event_id,
        codec::to_new_event(event, Uuid::now_v7(), metadata),
    ))
}

/// Bytes of the event's payload as JSON.
pub(crate) fn payload_bytes(event: &NewEvent) -> usize {
    serde_json::to_vec(&event.payload).map_or(0, |bytes| bytes.len())
}
