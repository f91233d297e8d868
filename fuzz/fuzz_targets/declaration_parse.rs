//! Fuzzes the declaration parsers: arbitrary bytes -> JSON -> `BirthDeclarationInput` /
//! `DeathDeclarationInput` -> `parse_birth` / `parse_death` with a fixed today.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use lifeline_model::values::vietnam_day_end;
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclaration, BirthDeclarationInput, DeathDeclaration,
    DeathDeclarationInput, Declaration,
};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 21).expect("a valid date")
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(input) = serde_json::from_slice::<BirthDeclarationInput>(bytes) {
        match parse_birth(&input, today()) {
            Ok(birth) => {
                // A validated declaration is stored as JSON and read back as it was.
                let json = serde_json::to_vec(&birth).expect("a birth serialises");
                let back: BirthDeclaration =
                    serde_json::from_slice(&json).expect("a stored birth reads back");
                assert_eq!(back, birth);
                let _ = Declaration::Birth(birth).flatten();
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "a refusal names at least one field");
                assert!(errors.0.iter().all(|error| !error.field.is_empty()));
            }
        }
    }
    if let Ok(input) = serde_json::from_slice::<DeathDeclarationInput>(bytes) {
        match parse_death(&input, vietnam_day_end(today())) {
            Ok(death) => {
                let json = serde_json::to_vec(&death).expect("a death serialises");
                let back: DeathDeclaration =
                    serde_json::from_slice(&json).expect("a stored death reads back");
                assert_eq!(back, death);
                let _ = Declaration::Death(death).flatten();
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "a refusal names at least one field");
                assert!(errors.0.iter().all(|error| !error.field.is_empty()));
            }
        }
    }
});
