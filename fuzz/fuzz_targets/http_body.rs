//! Fuzzes the HTTP JSON body path: `http::extract::parse_json` (serde_path_to_error) into the
//! registrar's request types, then the mapping to the model inputs and their parsing.
#![no_main]

use axum::response::IntoResponse;
use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use lifeline::http::extract::parse_json;
use lifeline::http::registrar::{BirthBody, CorrectionBody, DeathBody, VoidBody};
use lifeline_model::values::vietnam_day_end;
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclarationInput, DeathDeclarationInput,
};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 21).expect("a valid date")
}

fuzz_target!(|bytes: &[u8]| {
    match parse_json::<BirthBody>(bytes) {
        Ok(body) => {
            if let Ok(birth) = parse_birth(&BirthDeclarationInput::from(body), today()) {
                // An empty correction re-reads the stored declaration as a body: it must pass.
                let json = serde_json::to_vec(&birth).expect("a birth serialises");
                let body: BirthBody = parse_json(&json).expect("a stored birth is a valid body");
                let again = parse_birth(&BirthDeclarationInput::from(body), today())
                    .expect("a stored birth parses again");
                assert_eq!(again, birth);
            }
        }
        Err(error) => drop(error.into_response()),
    }
    match parse_json::<DeathBody>(bytes) {
        Ok(body) => {
            if let Ok(death) = parse_death(&DeathDeclarationInput::from(body), vietnam_day_end(today())) {
                let mut json = serde_json::to_value(&death).expect("a death serialises");
                if let Some(facts) = json.get_mut("death").and_then(|v| v.as_object_mut()) {
                    facts.remove("time_known");
                }
                let json = serde_json::to_vec(&json).expect("json");
                let body: DeathBody = parse_json(&json).expect("a stored death is a valid body");
                let again = parse_death(&DeathDeclarationInput::from(body), vietnam_day_end(today()))
                    .expect("a stored death parses again");
                assert_eq!(again, death);
            }
        }
        Err(error) => drop(error.into_response()),
    }
    if let Err(error) = parse_json::<CorrectionBody>(bytes) {
        drop(error.into_response());
    }
    if let Err(error) = parse_json::<VoidBody>(bytes) {
        drop(error.into_response());
    }
});
