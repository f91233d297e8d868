//! `lifeline demo`: records realistic births and deaths on the embedded store and prints the log.

use std::io::Write;

use chrono::{Duration, NaiveDate};
use lifeline_model::declaration::{BirthDeclarationInput, DeathDeclarationInput};
use lifeline_model::envelope::{LogCursor, RecordedEvent, Role};
use lifeline_store::EventStore;
use serde_json::json;
use uuid::Uuid;

use crate::registry::{Actor, Recorded, Registry};

/// Records the sample births and deaths (dates relative to `today`) and returns what was recorded.
pub async fn record_samples(
    registry: &Registry,
    today: NaiveDate,
) -> anyhow::Result<Vec<Recorded>> {
    let mut recorded = Vec::new();
    for (office, input) in sample_births(today)? {
        let actor = registrar(office);
        recorded.push(registry.record_birth(&actor, &input, today).await?);
    }
    for (office, input) in sample_deaths(today)? {
        let actor = registrar(office);
        recorded.push(registry.record_death(&actor, &input, today).await?);
    }
    Ok(recorded)
}

/// Runs the demo on `store` and writes what happened to `out`.
pub async fn run(store: &EventStore, today: NaiveDate, out: &mut impl Write) -> anyhow::Result<()> {
    let registry = Registry::new(store.clone());
    let recorded = record_samples(&registry, today).await?;
    writeln!(out, "Recorded {} life events on {today}:", recorded.len())?;
    for record in &recorded {
        writeln!(
            out,
            "  {}  reference {}  position {}",
            record.stream_id,
            record.reference,
            record.global_position()
        )?;
    }
    writeln!(out)?;
    writeln!(out, "The log, in commit order:")?;
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_all(cursor, 500).await?;
        let Some(last) = page.last() else { break };
        cursor = last.cursor();
        for event in &page {
            writeln!(out, "  {}", describe(event))?;
        }
    }
    Ok(())
}

impl Recorded {
    fn global_position(&self) -> i64 {
        self.position.0
    }
}

/// One line per event: position, stream, version, type, and a short summary without personal data.
pub fn describe(event: &RecordedEvent) -> String {
    format!(
        "#{:<5} {:<45} v{:<2} {} (schema {}, by {} {})",
        event.global_position.0,
        event.stream_id,
        event.stream_version.0,
        event.event_type,
        event.schema_version,
        role_label(event.metadata.role),
        event
            .metadata
            .office
            .as_deref()
            .unwrap_or(&event.metadata.actor),
    )
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Registrar => "registrar",
        Role::Agency => "agency",
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

fn registrar(office: &str) -> Actor {
    Actor {
        id: format!("registrar@{office}"),
        role: Role::Registrar,
        office: Some(office.to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    }
}

/// Three births: both parents, no father, and a late declaration (after 60 days).
pub fn sample_births(
    today: NaiveDate,
) -> anyhow::Result<Vec<(&'static str, BirthDeclarationInput)>> {
    let day = |days: i64| (today - Duration::days(days)).to_string();
    let births = vec![
        (
            "79-26734",
            json!({
                "office": "79-26734",
                "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": day(2),
                           "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
                "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": day(2) },
                "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                               "phone": "+84901234567" },
                "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
            }),
        ),
        (
            "01-00004",
            json!({
                "office": "01-00004",
                "child": { "full_name": "Phạm Gia Huy", "sex": "male", "date_of_birth": day(10),
                           "place_of_birth": "Bệnh viện Phụ sản Hà Nội", "hometown": "Hà Nội",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Phạm Thu Hà", "personal_id": "001195004567", "date_of_birth": "1995-01-20",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": null,
                "residence": { "province": "01", "commune": "00004", "address": "5 Hàng Bông" },
                "birth_notice": { "number": "PSHN-2026-0042", "issuer": "Bệnh viện Phụ sản Hà Nội", "date": day(10) },
                "declarant": { "full_name": "Phạm Thu Hà", "personal_id": "001195004567", "relationship": "mother",
                               "email": "thuha@example.vn" },
                "procedures": ["birth-registration", "child-health-insurance"]
            }),
        ),
        (
            "48-20194",
            json!({
                "office": "48-20194",
                "child": { "full_name": "Lê Hoàng Nam", "sex": "male", "date_of_birth": day(75),
                           "place_of_birth": "Trạm y tế phường Hải Châu I", "hometown": "Đà Nẵng",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Võ Thị Mai", "personal_id": "048192007788", "date_of_birth": "1992-09-30",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": { "full_name": "Lê Quang Vinh", "personal_id": "048090003344", "date_of_birth": "1990-12-01",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "residence": { "province": "48", "commune": "20194", "address": "27 Trần Phú" },
                "declarant": { "full_name": "Lê Quang Vinh", "personal_id": "048090003344", "relationship": "father",
                               "phone": "0905123456" }
            }),
        ),
    ];
    births
        .into_iter()
        .map(|(office, body)| Ok((office, serde_json::from_value(body)?)))
        .collect()
}

/// Two deaths: one applying for all four procedures, one for three.
pub fn sample_deaths(
    today: NaiveDate,
) -> anyhow::Result<Vec<(&'static str, DeathDeclarationInput)>> {
    let day = |days: i64| (today - Duration::days(days)).to_string();
    let deaths = vec![
        (
            "01-00004",
            json!({
                "office": "01-00004",
                "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                              "sex": "male", "ethnicity": "Kinh", "nationality": "VN",
                              "residence": { "province": "01", "commune": "00004", "address": "5 Hàng Bông" } },
                "death": { "at": format!("{}T06:30:00+07:00", day(4)), "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                           "cause": "tuổi cao",
                           "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": day(4) } },
                "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                               "email": "dung@example.vn" },
                "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
            }),
        ),
        (
            "79-26734",
            json!({
                "office": "79-26734",
                "deceased": { "full_name": "Đỗ Thị Hạnh", "personal_id": "079145000987", "date_of_birth": "1945-06-01",
                              "sex": "female", "ethnicity": "Kinh", "nationality": "VN",
                              "residence": { "province": "79", "commune": "26734", "address": "40 Nguyễn Huệ" } },
                "death": { "at": format!("{}T22:10:00+07:00", day(1)), "place": "Bệnh viện Chợ Rẫy",
                           "cause": "suy tim",
                           "notice": { "number": "CR-2026-7710", "issuer": "Bệnh viện Chợ Rẫy", "date": day(1) } },
                "declarant": { "full_name": "Đỗ Văn Toàn", "personal_id": "079075001122", "relationship": "son",
                               "phone": "+84903334455" },
                "procedures": ["death-registration", "residence-deregistration", "burial-allowance"]
            }),
        ),
    ];
    deaths
        .into_iter()
        .map(|(office, body)| Ok((office, serde_json::from_value(body)?)))
        .collect()
}
