//! Shared test data: the DESIGN.md example declarations, parsed, and fixed ids and times.

#![allow(dead_code, unreachable_pub)]

use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclaration, BirthDeclarationInput, DeathDeclaration,
    DeathDeclarationInput,
};
use lifeline_model::values::vietnam_day_end;
use serde_json::{json, Value};
use uuid::Uuid;

pub fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

pub fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn today() -> NaiveDate {
    date("2026-11-21")
}

pub fn life_event_id() -> Uuid {
    Uuid::parse_str("0193a3c2-7d41-7c1e-9f3a-2b6d8e4f1a01").unwrap()
}

pub fn task_id() -> Uuid {
    Uuid::parse_str("5f0c8e2a-91b3-5d7e-a4c6-0e1f2a3b4c5d").unwrap()
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

pub fn birth_from(body: Value) -> BirthDeclaration {
    let input: BirthDeclarationInput = serde_json::from_value(body).unwrap();
    parse_birth(&input, today()).unwrap()
}

pub fn death_from(body: Value) -> DeathDeclaration {
    let input: DeathDeclarationInput = serde_json::from_value(body).unwrap();
    parse_death(&input, vietnam_day_end(today())).unwrap()
}

pub fn birth() -> BirthDeclaration {
    birth_from(birth_body())
}

pub fn death() -> DeathDeclaration {
    death_from(death_body())
}
