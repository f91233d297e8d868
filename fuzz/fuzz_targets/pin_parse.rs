//! Fuzzes `PersonalId::parse_for_holder` with arbitrary text, dates of birth and sexes.
#![no_main]

use arbitrary::Arbitrary;
use chrono::{Datelike, NaiveDate};
use libfuzzer_sys::fuzz_target;
use lifeline_model::values::{PersonalId, Sex};

#[derive(Debug, Arbitrary)]
struct Input {
    raw: String,
    /// Days from the Common Era, so every representable date can come up.
    date_of_birth: Option<i32>,
    sex: Option<bool>,
}

fuzz_target!(|input: Input| {
    let date_of_birth = input
        .date_of_birth
        .and_then(NaiveDate::from_num_days_from_ce_opt);
    let sex = input
        .sex
        .map(|female| if female { Sex::Female } else { Sex::Male });
    let Ok(id) = PersonalId::parse_for_holder(&input.raw, date_of_birth, sex) else {
        return;
    };
    // What was accepted is well-formed, reads back the same and agrees with its holder.
    assert_eq!(id.as_str().len(), 12);
    assert!(id.as_str().bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(PersonalId::parse(id.as_str()).as_ref(), Ok(&id));
    let _ = (id.province_code(), id.century_sex_digit(), id.sex());
    if let Some(sex) = sex {
        assert_eq!(id.sex(), sex);
    }
    if let Some(date_of_birth) = date_of_birth {
        assert_eq!(
            &id.as_str()[4..6],
            format!("{:02}", date_of_birth.year() % 100)
        );
    }
    let json = serde_json::to_string(&id).expect("a personal id serialises");
    let back: PersonalId = serde_json::from_str(&json).expect("a personal id deserialises");
    assert_eq!(back, id);
});
