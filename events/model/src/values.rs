//! Validated values built by parsing: personal ID numbers, names, sex, dates, office codes, contacts.
//!
//! Each parser takes the raw text and the field's JSON path, and answers a value or a
//! [`FieldError`] naming that path. Once built, a value is known to be well-formed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::validation::FieldError;

/// Vietnam's offset from UTC: +07:00 all year (no daylight saving time). The domain's dates (a
/// registration's day, a completion's day, time limits) are calendar dates in Vietnam.
pub fn vietnam_offset() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).unwrap_or(Utc.fix())
}

/// The calendar date in Vietnam at the instant `at`.
pub fn vietnam_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&vietnam_offset()).date_naive()
}

/// The last second of `date` in Vietnam (23:59:59 +07:00), as an instant: checking a declaration
/// at it checks it as of that whole day (a retried correction, tests with a fixed today).
pub fn vietnam_day_end(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(23, 59, 59)
        .and_then(|time| time.and_local_timezone(vietnam_offset()).single())
        .map_or_else(
            || date.and_time(chrono::NaiveTime::MIN).and_utc(),
            |at| at.to_utc(),
        )
}

/// The province codes of personal ID numbers (Circular 07/2016/TT-BCA), embedded at build time.
pub const PROVINCE_CODES_CSV: &str = include_str!("../data/pin-province-codes.csv");

/// The province name of a 3-digit personal ID province code (`079` is Hồ Chí Minh).
pub fn province_name(code: &str) -> Option<&'static str> {
    static PROVINCES: OnceLock<BTreeMap<&'static str, &'static str>> = OnceLock::new();
    PROVINCES
        .get_or_init(|| {
            PROVINCE_CODES_CSV
                .lines()
                .skip(1)
                .filter_map(|line| line.trim_end_matches('\r').split_once(','))
                .map(|(code, name)| (code.trim(), name.trim()))
                .collect()
        })
        .get(code)
        .copied()
}

/// A 12-digit personal ID number (Decree 137/2015 art. 13; Law on Identity 2023 art. 12).
///
/// Digits 1-3: province code; digit 4: century of birth and sex; digits 5-6: year of birth;
/// digits 7-12: random. Parsing checks the structure; [`PersonalId::parse_for_holder`] also checks
/// digits 4-6 against the holder's date of birth and sex when they are known.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonalId(String);

/// Why a personal ID number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersonalIdError {
    #[error("must have 12 digits, found {0} characters")]
    Length(usize),
    #[error("must contain digits only")]
    NonDigit,
    #[error("unknown province code {0}")]
    UnknownProvince(String),
    #[error("digit 4 ({digit}) does not agree with the holder's century of birth and sex (expected {expected})")]
    CenturySexMismatch { digit: char, expected: char },
    #[error("digits 5-6 ({digits}) do not agree with the holder's year of birth {year}")]
    YearMismatch { digits: String, year: i32 },
    #[error("the holder's year of birth {0} is outside 1900-2399")]
    CenturyOutOfRange(i32),
}

impl PersonalIdError {
    /// A stable code for [`FieldError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::Length(_) => "length",
            Self::NonDigit => "non_digit",
            Self::UnknownProvince(_) => "unknown_province",
            Self::CenturySexMismatch { .. } => "century_sex_mismatch",
            Self::YearMismatch { .. } => "year_mismatch",
            Self::CenturyOutOfRange(_) => "century_out_of_range",
        }
    }

    pub fn at(&self, field: &str) -> FieldError {
        FieldError::new(field, self.code(), self.to_string())
    }
}

impl PersonalId {
    /// Checks length, digits and the province code.
    pub fn parse(raw: &str) -> Result<Self, PersonalIdError> {
        let value = raw.trim();
        let length = value.chars().count();
        if length != 12 {
            return Err(PersonalIdError::Length(length));
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PersonalIdError::NonDigit);
        }
        let province = &value[..3];
        if province_name(province).is_none() {
            return Err(PersonalIdError::UnknownProvince(province.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    /// [`PersonalId::parse`], then digits 4-6 against the holder's date of birth and sex when known.
    pub fn parse_for_holder(
        raw: &str,
        date_of_birth: Option<NaiveDate>,
        sex: Option<Sex>,
    ) -> Result<Self, PersonalIdError> {
        let id = Self::parse(raw)?;
        id.check_holder(date_of_birth, sex)?;
        Ok(id)
    }

    /// Parses and names `field` in the error.
    pub fn parse_field(
        raw: &str,
        field: &str,
        date_of_birth: Option<NaiveDate>,
        sex: Option<Sex>,
    ) -> Result<Self, FieldError> {
        Self::parse_for_holder(raw, date_of_birth, sex).map_err(|error| error.at(field))
    }

    /// Checks digit 4 (century and sex) and digits 5-6 (year) against what is known of the holder.
    pub fn check_holder(
        &self,
        date_of_birth: Option<NaiveDate>,
        sex: Option<Sex>,
    ) -> Result<(), PersonalIdError> {
        let digit = self.century_sex_digit();
        let digit_value = u32::from(digit as u8 - b'0');
        if let Some(date_of_birth) = date_of_birth {
            let year = date_of_birth.year();
            if !(1900..2400).contains(&year) {
                return Err(PersonalIdError::CenturyOutOfRange(year));
            }
            // 1900s: 0/1, 2000s: 2/3, ... 2300s: 8/9; the low bit is the sex.
            let century_base = u32::try_from((year / 100 - 19) * 2).unwrap_or(0);
            if digit_value & !1 != century_base {
                let expected = century_base + u32::from(sex == Some(Sex::Female));
                return Err(PersonalIdError::CenturySexMismatch {
                    digit,
                    expected: char::from_digit(expected, 10).unwrap_or('?'),
                });
            }
            let digits = &self.0[4..6];
            if digits != format!("{:02}", year % 100) {
                return Err(PersonalIdError::YearMismatch {
                    digits: digits.to_owned(),
                    year,
                });
            }
        }
        if let Some(sex) = sex {
            let female = digit_value % 2 == 1;
            if female != (sex == Sex::Female) {
                let expected = (digit_value & !1) + u32::from(sex == Sex::Female);
                return Err(PersonalIdError::CenturySexMismatch {
                    digit,
                    expected: char::from_digit(expected, 10).unwrap_or('?'),
                });
            }
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits 1-3: the province of the place of birth registration.
    pub fn province_code(&self) -> &str {
        &self.0[..3]
    }

    /// Digit 4: century of birth and sex.
    pub fn century_sex_digit(&self) -> char {
        char::from(self.0.as_bytes()[3])
    }

    /// The sex digit 4 encodes.
    pub fn sex(&self) -> Sex {
        if (self.0.as_bytes()[3] - b'0') % 2 == 1 {
            Sex::Female
        } else {
            Sex::Male
        }
    }
}

impl fmt::Display for PersonalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PersonalId {
    type Error = PersonalIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PersonalId> for String {
    fn from(value: PersonalId) -> Self {
        value.0
    }
}

/// Sex as recorded on civil-status documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    pub fn parse_field(raw: &str, field: &str) -> Result<Self, FieldError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "male" => Ok(Self::Male),
            "female" => Ok(Self::Female),
            _ => Err(FieldError::new(
                field,
                "invalid_sex",
                "must be \"male\" or \"female\"",
            )),
        }
    }
}

/// Whether `c` may not appear in text a person entered: a control character, a line or
/// paragraph separator, or an invisible formatting character (Unicode's format category: the
/// bidirectional embeddings, overrides, isolates and marks, zero-width spaces and joiners, the
/// byte-order mark, the soft hyphen, tags), which would make a name or an address read
/// otherwise on an officer's screen than it is stored, or be empty to the eye (a name of one
/// zero-width space). Vietnamese text needs none of them. (Until 2026-12-07 only the controls,
/// and from that day the bidirectional embeddings and overrides, were refused.)
pub fn is_forbidden_in_text(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

/// Free text as entered: NFC-normalised, trimmed, non-empty, at most `max_chars` characters,
/// no control characters nor invisible formatting characters ([`is_forbidden_in_text`]; until
/// 2026-12-07 those were taken). Vietnamese diacritics are kept exactly.
pub fn parse_text(raw: &str, field: &str, max_chars: usize) -> Result<String, FieldError> {
    let normalised: String = raw.nfc().collect();
    let trimmed = normalised.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, "empty", "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(FieldError::new(
            field,
            "too_long",
            format!("must have at most {max_chars} characters"),
        ));
    }
    if trimmed.chars().any(is_forbidden_in_text) {
        return Err(FieldError::new(
            field,
            "control_character",
            "must not contain control or invisible formatting characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// The longest free text accepted (places, addresses, causes, reasons).
pub const MAX_TEXT_CHARS: usize = 500;

/// A person's full name, NFC-normalised and trimmed, 1 to [`FullName::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FullName(String);

impl FullName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse_field(raw: &str, field: &str) -> Result<Self, FieldError> {
        parse_text(raw, field, Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FullName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An office code: 2-digit province, `-`, 5-digit commune, e.g. `79-26734`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OfficeCode(String);

/// An office code that is not `PP-CCCCC` with a known province.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid office code {0:?}: expected a 2-digit known province, '-', a 5-digit commune")]
pub struct InvalidOfficeCode(pub String);

impl OfficeCode {
    pub fn parse(raw: &str) -> Result<Self, InvalidOfficeCode> {
        let value = raw.trim();
        let well_formed = value.split_once('-').is_some_and(|(province, commune)| {
            is_province_2(province)
                && commune.len() == 5
                && commune.bytes().all(|b| b.is_ascii_digit())
        });
        if well_formed {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidOfficeCode(raw.to_owned()))
        }
    }

    pub fn parse_field(raw: &str, field: &str) -> Result<Self, FieldError> {
        Self::parse(raw)
            .map_err(|error| FieldError::new(field, "invalid_office", error.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 2-digit province part (`79`).
    pub fn province(&self) -> &str {
        &self.0[..2]
    }

    /// The 5-digit commune part (`26734`).
    pub fn commune(&self) -> &str {
        &self.0[3..]
    }
}

impl fmt::Display for OfficeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for OfficeCode {
    type Error = InvalidOfficeCode;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OfficeCode> for String {
    fn from(value: OfficeCode) -> Self {
        value.0
    }
}

/// Whether `code` is a 2-digit province code whose 3-digit form (`0` + code) is known.
pub fn is_province_2(code: &str) -> bool {
    code.len() == 2
        && code.bytes().all(|b| b.is_ascii_digit())
        && province_name(&format!("0{code}")).is_some()
}

/// Parses a 2-digit province code (`79`), naming `field` on failure.
pub fn parse_province_2(raw: &str, field: &str) -> Result<String, FieldError> {
    let value = raw.trim();
    if is_province_2(value) {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "unknown_province",
            format!("unknown province code {value:?}"),
        ))
    }
}

/// Parses a 5-digit commune code (`26734`), naming `field` on failure.
pub fn parse_commune(raw: &str, field: &str) -> Result<String, FieldError> {
    let value = raw.trim();
    if value.len() == 5 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "invalid_commune",
            "must be a 5-digit commune code",
        ))
    }
}

/// A phone number, lightly checked: an optional `+`, then 8 to 15 digits (spaces, dots and
/// dashes are removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phone(String);

impl Phone {
    pub fn parse_field(raw: &str, field: &str) -> Result<Self, FieldError> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .collect();
        let digits = compact.strip_prefix('+').unwrap_or(&compact);
        if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(compact))
        } else {
            Err(FieldError::new(
                field,
                "invalid_phone",
                "must be a phone number of 8 to 15 digits, optionally starting with '+'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, lightly checked: one `@`, a non-empty local part, a dotted domain, no spaces,
/// no control nor invisible formatting characters (`control_character`; until 2026-12-07 an
/// email was the one text field that took them, and handed them on to the agencies).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse_field(raw: &str, field: &str) -> Result<Self, FieldError> {
        let value = raw.trim();
        if value.chars().any(is_forbidden_in_text) {
            return Err(FieldError::new(
                field,
                "control_character",
                "must not contain control or invisible formatting characters",
            ));
        }
        let well_formed = value.len() <= 254
            && !value.chars().any(char::is_whitespace)
            && value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            });
        if well_formed {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "invalid_email",
                "must be an email address",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses an ISO date (`2026-11-20`), naming `field` on failure.
pub fn parse_date(raw: &str, field: &str) -> Result<NaiveDate, FieldError> {
    NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
        .map_err(|_| FieldError::new(field, "invalid_date", "must be a date like 2026-11-20"))
}

/// The earliest date a declaration may carry: personal ID numbers encode births from 1900 on
/// (the century digit of Decree 137), so a person born earlier could not be given or matched
/// with a number, and no birth, death or notice of a living registry is older.
pub const EARLIEST_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(date) => date,
    None => panic!("1900-01-01 is a date"),
};

/// Refuses a date before [`EARLIEST_DATE`].
pub fn not_before_1900(date: NaiveDate, field: &str) -> Result<(), FieldError> {
    if date < EARLIEST_DATE {
        Err(FieldError::new(
            field,
            "out_of_range",
            format!("must not be before {EARLIEST_DATE}"),
        ))
    } else {
        Ok(())
    }
}

/// Refuses a date after `today` (a birth, a death, a notice cannot be in the future).
pub fn not_in_future(date: NaiveDate, today: NaiveDate, field: &str) -> Result<(), FieldError> {
    if date > today {
        Err(FieldError::new(
            field,
            "in_future",
            format!("must not be after today ({today})"),
        ))
    } else {
        Ok(())
    }
}

/// Refuses a death (or any later event) dated before the date of birth.
pub fn not_before_birth(
    date: NaiveDate,
    date_of_birth: NaiveDate,
    field: &str,
) -> Result<(), FieldError> {
    if date < date_of_birth {
        Err(FieldError::new(
            field,
            "before_birth",
            format!("must not be before the date of birth ({date_of_birth})"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn personal_ids_table() {
        use PersonalIdError as E;
        let female_1990 = (Some(date("1990-04-02")), Some(Sex::Female));
        let male_1988 = (Some(date("1988-07-09")), Some(Sex::Male));
        let girl_2026 = (Some(date("2026-11-20")), Some(Sex::Female));
        let unknown = (None, None);
        type Holder = (Option<NaiveDate>, Option<Sex>);
        let cases: Vec<(&str, Holder, Result<(), PersonalIdError>)> = vec![
            ("079190001234", female_1990, Ok(())),
            ("079088004321", male_1988, Ok(())),
            ("001326123456", girl_2026, Ok(())),
            (" 079190001234 ", female_1990, Ok(())),
            ("001080000222", unknown, Ok(())),
            ("07919000123", unknown, Err(E::Length(11))),
            ("0791900012345", unknown, Err(E::Length(13))),
            ("", unknown, Err(E::Length(0))),
            ("07919000123a", unknown, Err(E::NonDigit)),
            ("079-90001234", unknown, Err(E::NonDigit)),
            ("٠٧٩١٩٠٠٠١٢٣٤", unknown, Err(E::NonDigit)),
            (
                "003190001234",
                unknown,
                Err(E::UnknownProvince("003".into())),
            ),
            (
                "999190001234",
                unknown,
                Err(E::UnknownProvince("999".into())),
            ),
            (
                "079090001234",
                female_1990,
                Err(E::CenturySexMismatch {
                    digit: '0',
                    expected: '1',
                }),
            ),
            (
                "079290001234",
                female_1990,
                Err(E::CenturySexMismatch {
                    digit: '2',
                    expected: '1',
                }),
            ),
            (
                "079190001234",
                (None, Some(Sex::Male)),
                Err(E::CenturySexMismatch {
                    digit: '1',
                    expected: '0',
                }),
            ),
            (
                "079191001234",
                female_1990,
                Err(E::YearMismatch {
                    digits: "91".into(),
                    year: 1990,
                }),
            ),
            (
                "079189001234",
                (Some(date("1990-04-02")), None),
                Err(E::YearMismatch {
                    digits: "89".into(),
                    year: 1990,
                }),
            ),
        ];
        for (raw, (date_of_birth, sex), expected) in cases {
            let got = PersonalId::parse_for_holder(raw, date_of_birth, sex).map(|_| ());
            assert_eq!(got, expected, "{raw:?}");
        }
    }

    #[test]
    fn personal_id_errors_name_their_field() {
        let error = PersonalId::parse_field("12", "mother.personal_id", None, None).unwrap_err();
        assert_eq!(error.field, "mother.personal_id");
        assert_eq!(error.code, "length");
    }

    #[test]
    fn every_province_of_the_list_is_known() {
        assert_eq!(PROVINCE_CODES_CSV.lines().skip(1).count(), 63);
        assert_eq!(province_name("079"), Some("Hồ Chí Minh"));
        assert_eq!(province_name("001"), Some("Hà Nội"));
        assert!(province_name("000").is_none());
    }

    #[test]
    fn embedded_province_list_equals_the_shared_reference() {
        let shared = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/reference/pin-province-codes.csv"
        );
        if let Ok(reference) = std::fs::read_to_string(shared) {
            assert_eq!(
                PROVINCE_CODES_CSV, reference,
                "data/pin-province-codes.csv is stale"
            );
        }
    }

    #[test]
    fn text_is_nfc_normalised_and_trimmed() {
        let decomposed = "  Nguye\u{302}\u{303}n  ";
        let parsed = FullName::parse_field(decomposed, "child.full_name").unwrap();
        assert_eq!(parsed.as_str(), "Nguyễn");
        assert_eq!(parsed.as_str().chars().count(), 6);
        assert_eq!(
            FullName::parse_field("   ", "child.full_name")
                .unwrap_err()
                .code,
            "empty"
        );
        assert_eq!(
            FullName::parse_field(&"a".repeat(101), "x")
                .unwrap_err()
                .code,
            "too_long"
        );
        for forbidden in [
            "a\u{0}b",
            "a\u{1b}b",
            "a\u{202e}b",
            "a\u{2067}b",
            "a\u{200b}b",
            "a\u{200f}b",
            "a\u{feff}b",
            "a\u{2028}b",
            "a\u{061c}b",
        ] {
            assert_eq!(
                parse_text(forbidden, "x", 10).unwrap_err().code,
                "control_character",
                "{forbidden:?}"
            );
            assert_eq!(
                Email::parse_field(&format!("{forbidden}@x.vn"), "email")
                    .unwrap_err()
                    .code,
                "control_character",
                "{forbidden:?}"
            );
        }
        assert!(parse_text("Nguyễn Thị Ánh", "x", 20).is_ok());
        // A name of one zero-width space is no name.
        assert_eq!(
            FullName::parse_field("\u{200b}", "x").unwrap_err().code,
            "control_character"
        );
    }

    #[test]
    fn office_codes_phones_emails_dates() {
        let office = OfficeCode::parse("79-26734").unwrap();
        assert_eq!((office.province(), office.commune()), ("79", "26734"));
        for bad in [
            "79-2673",
            "7926734",
            "03-26734",
            "79-2673x",
            "",
            "79-26734-1",
        ] {
            assert!(OfficeCode::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Phone::parse_field("+84 901 234 567", "p").unwrap().as_str(),
            "+84901234567"
        );
        assert!(Phone::parse_field("12ab", "p").is_err());
        assert!(Email::parse_field("dung@example.vn", "e").is_ok());
        for bad in ["dung", "@example.vn", "a@b", "a b@c.vn", "a@b@c.vn"] {
            assert!(Email::parse_field(bad, "e").is_err(), "{bad:?}");
        }
        assert!(parse_date("2026-02-30", "d").is_err());
        let old = parse_date("1500-06-01", "d").unwrap();
        assert_eq!(not_before_1900(old, "d").unwrap_err().code, "out_of_range");
        assert!(not_before_1900(EARLIEST_DATE, "d").is_ok());
        let today = date("2026-11-21");
        assert!(not_in_future(date("2026-11-22"), today, "d").is_err());
        assert!(not_in_future(today, today, "d").is_ok());
        assert!(not_before_birth(date("2000-01-01"), date("2000-01-02"), "d").is_err());
    }
}
