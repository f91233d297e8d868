//! Properties of hostile input: random JSON into the declaration parsers and the codec never
//! panics and either succeeds or names the refused fields; personal ID numbers round-trip and
//! any change to digits 4-6 is caught against a known holder.

mod common;

use chrono::{Datelike, NaiveDate};
use common::{birth_body, death_body, today};
use lifeline_model::codec::{self, all_schemas, DecodeError};
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclarationInput, DeathDeclarationInput,
};
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::TaskEvent;
use lifeline_model::validation::ValidationErrors;
use lifeline_model::values::{
    vietnam_day_end, PersonalId, PersonalIdError, Sex, PROVINCE_CODES_CSV,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the inputs and the stored payloads use, so random objects often hit real fields.
const KEYS: &[&str] = &[
    "office",
    "child",
    "mother",
    "father",
    "residence",
    "birth_notice",
    "declarant",
    "procedures",
    "full_name",
    "name",
    "sex",
    "date_of_birth",
    "place_of_birth",
    "hometown",
    "ethnicity",
    "nationality",
    "personal_id",
    "province",
    "commune",
    "address",
    "number",
    "issuer",
    "date",
    "relationship",
    "phone",
    "email",
    "deceased",
    "death",
    "at",
    "place",
    "cause",
    "notice",
    "life_event_id",
    "reference",
    "declaration",
    "task_id",
    "procedure",
    "agency",
    "application",
    "outcome",
    "reason",
    "kind",
    "time_known",
    "changed_fields",
];

/// Text that is valid somewhere, almost valid, or hostile (non-ASCII, controls, huge numbers).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("079190001234".to_owned()),
        Just("٠٧٩١٩٠٠٠١٢٣٤".to_owned()),
        Just("0791900012ể".to_owned()),
        Just("79-26734".to_owned()),
        Just("7ể-26734".to_owned()),
        Just("2026-11-20".to_owned()),
        Just("+262143-01-01".to_owned()),
        Just("-262143-12-31".to_owned()),
        Just("2026-11-18T06:30:00+07:00".to_owned()),
        Just("9999-12-31T23:59:59-23:59".to_owned()),
        Just("0000-01-01T00:00:00+23:59".to_owned()),
        Just("female".to_owned()),
        Just("birth-registration".to_owned()),
        Just("Nguye\u{302}\u{303}n Minh An".to_owned()),
        "[0-9]{0,14}",
        "[0-9-]{0,12}",
        "\\PC{0,24}",
        any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(
            |number| serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
        ),
        text().prop_map(Value::String),
    ]
}

/// Random JSON, objects keyed mostly by real field names.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    leaf().prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid body with one path replaced by random JSON (or removed): near-misses of real input.
fn mutated(body: Value) -> impl Strategy<Value = Value> {
    let paths = leaf_paths(&body);
    (proptest::sample::select(paths), json()).prop_map(move |(path, value)| {
        let mut body = body.clone();
        if let Some(slot) = pointer_mut(&mut body, &path) {
            *slot = value;
        }
        body
    })
}

fn leaf_paths(value: &Value) -> Vec<Vec<String>> {
    fn walk(prefix: &mut Vec<String>, value: &Value, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        if let Value::Object(map) = value {
            for (key, inner) in map {
                prefix.push(key.clone());
                walk(prefix, inner, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), value, &mut out);
    out
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(value, |value, key| value.as_object_mut()?.get_mut(key))
}

/// Every refusal names at least one field, each by a non-empty path with a code.
fn names_fields(errors: &ValidationErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    for error in &errors.0 {
        prop_assert!(!error.field.is_empty(), "{error:?}");
        prop_assert!(!error.code.is_empty(), "{error:?}");
    }
    Ok(())
}

fn check_birth(value: Value) -> Result<(), TestCaseError> {
    if let Ok(input) = serde_json::from_value::<BirthDeclarationInput>(value) {
        if let Err(errors) = parse_birth(&input, today()) {
            names_fields(&errors)?;
        }
    }
    Ok(())
}

fn check_death(value: Value) -> Result<(), TestCaseError> {
    if let Ok(input) = serde_json::from_value::<DeathDeclarationInput>(value) {
        if let Err(errors) = parse_death(&input, vietnam_day_end(today())) {
            names_fields(&errors)?;
        }
    }
    Ok(())
}

fn check_decode(event_type: &str, version: u32, payload: Value) -> Result<(), TestCaseError> {
    fn named(
        result: Result<impl Sized, DecodeError>,
        event_type: &str,
    ) -> Result<(), TestCaseError> {
        if let Err(error) = result {
            let text = error.to_string();
            prop_assert!(text.contains(event_type), "{text}");
        }
        Ok(())
    }
    named(
        codec::decode::<LifeEventEvent>(event_type, version, payload.clone()),
        event_type,
    )?;
    named(
        codec::decode::<TaskEvent>(event_type, version, payload.clone()),
        event_type,
    )?;
    named(
        codec::decode::<SystemEvent>(event_type, version, payload.clone()),
        event_type,
    )?;
    named(codec::upcast(event_type, version, payload), event_type)
}

fn fixture(event_type: &str, version: u32) -> Option<Value> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{event_type}.v{version}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn stored_events() -> Vec<(&'static str, u32, Value)> {
    all_schemas()
        .flat_map(|(event_type, current)| (1..=current).map(move |version| (event_type, version)))
        .filter_map(|(event_type, version)| {
            fixture(event_type, version).map(|payload| (event_type, version, payload))
        })
        .collect()
}

fn provinces() -> Vec<&'static str> {
    PROVINCE_CODES_CSV
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .map(|(code, _)| code.trim())
        .collect()
}

fn date_of_birth() -> impl Strategy<Value = NaiveDate> {
    (1900..2400i32, 1..=12u32, 1..=28u32)
        .prop_map(|(year, month, day)| NaiveDate::from_ymd_opt(year, month, day).unwrap())
}

fn sex() -> impl Strategy<Value = Sex> {
    prop_oneof![Just(Sex::Male), Just(Sex::Female)]
}

/// The personal ID number the rules give a holder born on `date_of_birth` of `sex`.
fn pin_for(province: &str, date_of_birth: NaiveDate, sex: Sex, serial: u32) -> String {
    let year = date_of_birth.year();
    let digit = (year / 100 - 19) * 2 + i32::from(sex == Sex::Female);
    format!("{province}{digit}{:02}{serial:06}", year % 100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_json_into_the_birth_parser_never_panics(value in json()) {
        check_birth(value)?;
    }

    #[test]
    fn random_json_into_the_death_parser_never_panics(value in json()) {
        check_death(value)?;
    }

    #[test]
    fn near_miss_births_succeed_or_name_fields(value in mutated(birth_body())) {
        check_birth(value)?;
    }

    #[test]
    fn near_miss_deaths_succeed_or_name_fields(value in mutated(death_body())) {
        check_death(value)?;
    }

    #[test]
    fn random_payloads_decode_or_name_the_event_type(
        schema in proptest::sample::select(all_schemas().collect::<Vec<_>>()),
        version in prop_oneof![0..4u32, any::<u32>()],
        payload in json(),
    ) {
        check_decode(schema.0, version, payload)?;
    }

    #[test]
    fn near_miss_stored_events_decode_or_name_the_event_type(
        (event_type, version, payload) in proptest::sample::select(stored_events())
            .prop_flat_map(|(event_type, version, payload)| {
                mutated(payload).prop_map(move |payload| (event_type, version, payload))
            }),
    ) {
        check_decode(event_type, version, payload)?;
    }

    #[test]
    fn a_generated_pin_parses_for_its_holder(
        province in proptest::sample::select(provinces()),
        date_of_birth in date_of_birth(),
        sex in sex(),
        serial in 0..1_000_000u32,
    ) {
        let raw = pin_for(province, date_of_birth, sex, serial);
        let id = PersonalId::parse_for_holder(&raw, Some(date_of_birth), Some(sex));
        prop_assert!(id.is_ok(), "{raw} for {date_of_birth} {sex:?}: {id:?}");
        let id = id.unwrap();
        prop_assert_eq!(id.as_str(), raw.as_str());
        prop_assert_eq!(id.sex(), sex);
        prop_assert_eq!(id.province_code(), province);
    }

    #[test]
    fn a_changed_digit_4_to_6_is_refused_for_the_holder(
        province in proptest::sample::select(provinces()),
        date_of_birth in date_of_birth(),
        sex in sex(),
        serial in 0..1_000_000u32,
        position in 3..6usize,
        shift in 1..10u8,
    ) {
        let raw = pin_for(province, date_of_birth, sex, serial);
        let mut bytes = raw.clone().into_bytes();
        bytes[position] = b'0' + (bytes[position] - b'0' + shift) % 10;
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert_ne!(&changed, &raw);
        let refused = PersonalId::parse_for_holder(&changed, Some(date_of_birth), Some(sex));
        prop_assert!(
            matches!(
                refused,
                Err(PersonalIdError::CenturySexMismatch { .. } | PersonalIdError::YearMismatch { .. })
            ),
            "{changed} (from {raw}) for {date_of_birth} {sex:?}: {refused:?}"
        );
    }

    #[test]
    fn any_text_parses_or_is_refused_without_panicking(raw in any::<String>(), days in any::<i32>(), female in any::<Option<bool>>()) {
        let date_of_birth = NaiveDate::from_num_days_from_ce_opt(days);
        let sex = female.map(|female| if female { Sex::Female } else { Sex::Male });
        if let Ok(id) = PersonalId::parse_for_holder(&raw, date_of_birth, sex) {
            prop_assert_eq!(id.as_str().len(), 12);
        }
    }
}
