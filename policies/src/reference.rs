//! Reference configuration the rules read: date-effective parameters (TOML), routing of
//! procedures to offices, the holiday calendar and working days, and the reference registers
//! used for eligibility (CSV). Defaults are embedded from `policies/data/`; a directory of the
//! same file names overrides them file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc, Weekday,
};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::values::{OfficeCode, PersonalId};
use serde::{Deserialize, Serialize};

/// The file names of the reference configuration, as embedded and as looked for in a directory.
pub const PARAMETERS_FILE: &str = "parameters.toml";
pub const ROUTING_FILE: &str = "routing.csv";
pub const HOLIDAYS_FILE: &str = "holidays.csv";
pub const INSURED_FILE: &str = "insured.csv";
pub const SOCIAL_PROTECTION_FILE: &str = "social_protection.csv";
pub const RESIDENCES_FILE: &str = "residences.csv";
pub const DISASTERS_FILE: &str = "disasters.csv";

const EMBEDDED: [(&str, &str); 7] = [
    (PARAMETERS_FILE, include_str!("../data/parameters.toml")),
    (ROUTING_FILE, include_str!("../data/routing.csv")),
    (HOLIDAYS_FILE, include_str!("../data/holidays.csv")),
    (INSURED_FILE, include_str!("../data/insured.csv")),
    (
        SOCIAL_PROTECTION_FILE,
        include_str!("../data/social_protection.csv"),
    ),
    (RESIDENCES_FILE, include_str!("../data/residences.csv")),
    (DISASTERS_FILE, include_str!("../data/disasters.csv")),
];

/// Vietnam local time (+07:00, no daylight saving): the zone of working days and office hours.
pub fn vietnam_offset() -> FixedOffset {
    lifeline_model::values::vietnam_offset()
}

/// The hour (local) at which an office day ends: a task due on a day is due at this time.
pub const OFFICE_CLOSES_AT_HOUR: u32 = 17;

/// Why reference configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parameters { file: String, message: String },
    #[error("{file} line {line}: {message}")]
    Csv {
        file: String,
        line: usize,
        message: String,
    },
    #[error("no {name} parameter in force on {date}")]
    NoParameter { name: &'static str, date: NaiveDate },
    #[error("no {agency} office for province {province} commune {commune}")]
    NoOffice {
        agency: AgencyId,
        province: String,
        commune: String,
    },
}

/// Everything the rules look up that does not come from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceData {
    pub parameters: Parameters,
    pub routing: Routing,
    pub calendar: Calendar,
    pub registers: Registers,
}

impl ReferenceData {
    /// The defaults shipped in `policies/data/`.
    pub fn embedded() -> Result<Self, ReferenceError> {
        Self::from_files(|name| {
            Ok(EMBEDDED
                .iter()
                .find(|(file, _)| *file == name)
                .map(|(_, text)| (*text).to_owned()))
        })
    }

    /// The defaults, each file replaced by the one of the same name in `directory` if present.
    pub fn load(directory: &Path) -> Result<Self, ReferenceError> {
        Self::from_files(|name| {
            let path = directory.join(name);
            if path.exists() {
                std::fs::read_to_string(&path)
                    .map(Some)
                    .map_err(|source| ReferenceError::Read {
                        path: path.display().to_string(),
                        source,
                    })
            } else {
                Ok(EMBEDDED
                    .iter()
                    .find(|(file, _)| *file == name)
                    .map(|(_, text)| (*text).to_owned()))
            }
        })
    }

    fn from_files(
        read: impl Fn(&str) -> Result<Option<String>, ReferenceError>,
    ) -> Result<Self, ReferenceError> {
        let text =
            |name: &str| -> Result<String, ReferenceError> { Ok(read(name)?.unwrap_or_default()) };
        Ok(Self {
            parameters: Parameters::parse(&text(PARAMETERS_FILE)?)?,
            routing: Routing::parse(&text(ROUTING_FILE)?)?,
            calendar: Calendar::parse(&text(HOLIDAYS_FILE)?)?,
            registers: Registers::parse(
                &text(INSURED_FILE)?,
                &text(SOCIAL_PROTECTION_FILE)?,
                &text(RESIDENCES_FILE)?,
                &text(DISASTERS_FILE)?,
            )?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters.

/// A money amount in force from a date (base salary, assistance standard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountEntry {
    pub rule_version: String,
    pub effective_from: NaiveDate,
    pub amount_vnd: i64,
    #[serde(default)]
    pub source: String,
}

/// The burial allowance rule in force from a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurialAllowanceRule {
    pub rule_version: String,
    pub effective_from: NaiveDate,
    pub multiplier: i64,
    pub min_contribution_months: u32,
    #[serde(default)]
    pub source: String,
}

/// The funeral support rule in force from a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuneralSupportRule {
    pub rule_version: String,
    pub effective_from: NaiveDate,
    pub multiplier: i64,
    pub disaster_multiplier: i64,
    #[serde(default)]
    pub source: String,
}

/// The date-effective parameters (`parameters.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Parameters {
    #[serde(default)]
    pub base_salary: Vec<AmountEntry>,
    #[serde(default)]
    pub assistance_standard: Vec<AmountEntry>,
    #[serde(default)]
    pub burial_allowance: Vec<BurialAllowanceRule>,
    #[serde(default)]
    pub funeral_support: Vec<FuneralSupportRule>,
    /// Service time limits in working days by procedure id, overriding DOMAIN.md's defaults.
    #[serde(default)]
    pub service_days: BTreeMap<ProcedureId, u32>,
}

trait Effective {
    fn effective_from(&self) -> NaiveDate;
}

macro_rules! effective {
    ($($type:ty),+) => {$(
        impl Effective for $type {
            fn effective_from(&self) -> NaiveDate {
                self.effective_from
            }
        }
    )+};
}
effective!(AmountEntry, BurialAllowanceRule, FuneralSupportRule);

/// The entry in force on `date`: the latest `effective_from` not after it.
fn in_force<'a, T: Effective>(
    entries: &'a [T],
    name: &'static str,
    date: NaiveDate,
) -> Result<&'a T, ReferenceError> {
    entries
        .iter()
        .filter(|entry| entry.effective_from() <= date)
        .max_by_key(|entry| entry.effective_from())
        .ok_or(ReferenceError::NoParameter { name, date })
}

impl Parameters {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        toml::from_str(text).map_err(|error| ReferenceError::Parameters {
            file: PARAMETERS_FILE.to_owned(),
            message: error.to_string(),
        })
    }

    pub fn base_salary(&self, date: NaiveDate) -> Result<&AmountEntry, ReferenceError> {
        in_force(&self.base_salary, "base_salary", date)
    }

    pub fn assistance_standard(&self, date: NaiveDate) -> Result<&AmountEntry, ReferenceError> {
        in_force(&self.assistance_standard, "assistance_standard", date)
    }

    pub fn burial_allowance(
        &self,
        date: NaiveDate,
    ) -> Result<&BurialAllowanceRule, ReferenceError> {
        in_force(&self.burial_allowance, "burial_allowance", date)
    }

    pub fn funeral_support(&self, date: NaiveDate) -> Result<&FuneralSupportRule, ReferenceError> {
        in_force(&self.funeral_support, "funeral_support", date)
    }

    /// The first date of death the rules can decide `procedure` for: from then on every
    /// parameter it needs has an entry in force (`None`: it needs none; [`NaiveDate::MAX`]: a
    /// list it needs is empty). A death before it would fail `death-followups` as a whole, so
    /// the registrar's API refuses to choose the procedure for it.
    pub fn decidable_from(&self, procedure: ProcedureId) -> Option<NaiveDate> {
        fn first<T: Effective>(entries: &[T]) -> NaiveDate {
            entries
                .iter()
                .map(Effective::effective_from)
                .min()
                .unwrap_or(NaiveDate::MAX)
        }
        match procedure {
            ProcedureId::BurialAllowance => {
                Some(first(&self.burial_allowance).max(first(&self.base_salary)))
            }
            ProcedureId::FuneralSupport => {
                Some(first(&self.funeral_support).max(first(&self.assistance_standard)))
            }
            _ => None,
        }
    }

    /// The service time limit of `procedure` in working days.
    pub fn service_days(&self, procedure: ProcedureId) -> u32 {
        self.service_days
            .get(&procedure)
            .copied()
            .unwrap_or_else(|| procedure.default_service_days())
    }
}

// ---------------------------------------------------------------------------------------------
// Routing.

/// One office of an agency and the area it is responsible for (`routing.csv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub agency: AgencyId,
    pub province: String,
    /// `None` for the province-level office (`*` in the file).
    pub commune: Option<String>,
    pub office: OfficeCode,
    pub office_name: String,
}

/// Which office of an agency serves an area: the commune's own office, else the province's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    routes: BTreeMap<(AgencyId, String, Option<String>), Route>,
}

impl Routing {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let mut routes = BTreeMap::new();
        for (line, fields) in csv_rows(ROUTING_FILE, text, 5)? {
            let error = |message: String| ReferenceError::Csv {
                file: ROUTING_FILE.to_owned(),
                line,
                message,
            };
            let agency: AgencyId = fields[0]
                .parse()
                .map_err(|e: lifeline_model::procedure::UnknownAgency| error(e.to_string()))?;
            let province = fields[1].to_owned();
            let commune = (fields[2] != "*").then(|| fields[2].to_owned());
            let office = OfficeCode::parse(fields[3]).map_err(|e| error(e.to_string()))?;
            let route = Route {
                agency,
                province: province.clone(),
                commune: commune.clone(),
                office,
                office_name: fields[4].to_owned(),
            };
            if routes.insert((agency, province, commune), route).is_some() {
                return Err(error(
                    "a second office for the same agency and area".to_owned(),
                ));
            }
        }
        Ok(Self { routes })
    }

    /// The office of `agency` responsible for the commune `commune` of province `province`:
    /// the commune's office if the table names one, else the province-level office.
    pub fn route(
        &self,
        agency: AgencyId,
        province: &str,
        commune: &str,
    ) -> Result<&Route, ReferenceError> {
        self.routes
            .get(&(agency, province.to_owned(), Some(commune.to_owned())))
            .or_else(|| self.routes.get(&(agency, province.to_owned(), None)))
            .ok_or_else(|| ReferenceError::NoOffice {
                agency,
                province: province.to_owned(),
                commune: commune.to_owned(),
            })
    }

    /// The office for `procedure` in the area of `area` (a residence's or the registering
    /// office's). The civil registry's procedures stay with the registering office itself
    /// unless the table routes them elsewhere.
    pub fn office_for(
        &self,
        procedure: ProcedureId,
        province: &str,
        commune: &str,
        registering_office: &OfficeCode,
    ) -> Result<OfficeCode, ReferenceError> {
        let agency = procedure.agency();
        match self.route(agency, province, commune) {
            Ok(route) => Ok(route.office.clone()),
            Err(_) if agency == AgencyId::CivilRegistry => Ok(registering_office.clone()),
            Err(error) => Err(error),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar.

/// Public holidays and compensatory working days (`holidays.csv`: `date,kind,name`, kind
/// `holiday` or `workday`); Saturdays and Sundays are off unless listed as `workday`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Calendar {
    holidays: BTreeMap<NaiveDate, String>,
    working_weekend_days: BTreeSet<NaiveDate>,
}

impl Calendar {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let mut calendar = Self::default();
        for (line, fields) in csv_rows(HOLIDAYS_FILE, text, 3)? {
            let error = |message: String| ReferenceError::Csv {
                file: HOLIDAYS_FILE.to_owned(),
                line,
                message,
            };
            let date = parse_iso_date(fields[0]).map_err(error)?;
            match fields[1] {
                "holiday" => {
                    calendar.holidays.insert(date, fields[2].to_owned());
                }
                "workday" => {
                    calendar.working_weekend_days.insert(date);
                }
                other => {
                    return Err(error(format!(
                        "unknown kind {other:?}: expected holiday or workday"
                    )))
                }
            }
        }
        Ok(calendar)
    }

    /// The holiday's name, if `date` is a listed public holiday.
    pub fn holiday(&self, date: NaiveDate) -> Option<&str> {
        self.holidays.get(&date).map(String::as_str)
    }

    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        if self.working_weekend_days.contains(&date) {
            return true;
        }
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains_key(&date)
    }

    /// The date `n` working days after `start` (`start` itself not counted; `n = 0` is `start`).
    pub fn add_working_days(&self, start: NaiveDate, n: u32) -> NaiveDate {
        let mut date = start;
        let mut left = n;
        while left > 0 {
            date = date.succ_opt().unwrap_or(date);
            if self.is_working_day(date) {
                left -= 1;
            }
        }
        date
    }

    /// When a procedure of `working_days` working days started at `from` is due: the end of
    /// office hours (17:00 Vietnam time) of the last of those days, in UTC. "Same working day"
    /// (1) is the day it starts when that is a working day and the office is still open, else
    /// the next working day. A limit of several working days counts from the working day after
    /// the one it starts on (the Civil Code, art. 147: the day of the event is not counted):
    /// 2 working days from Monday 10:00 end on Wednesday. (Until 2026-12-07 the start day
    /// counted for those too, and tasks were due, and flagged overdue, a day early.)
    pub fn due_at(&self, from: DateTime<Utc>, working_days: u32) -> DateTime<Utc> {
        let offset = vietnam_offset();
        let local = from.with_timezone(&offset);
        let start = local.date_naive();
        let counts_today = self.is_working_day(start)
            && local.time()
                < NaiveTime::from_hms_opt(OFFICE_CLOSES_AT_HOUR, 0, 0).unwrap_or_default();
        let days = working_days.max(1);
        let due_date = if days == 1 && counts_today {
            start
        } else {
            self.add_working_days(start, days)
        };
        let closes = due_date
            .and_hms_opt(OFFICE_CLOSES_AT_HOUR, 0, 0)
            .unwrap_or_default();
        offset
            .from_local_datetime(&closes)
            .single()
            .map(|local| local.with_timezone(&Utc))
            .unwrap_or_else(|| from + Duration::days(i64::from(days)))
    }
}

// ---------------------------------------------------------------------------------------------
// Registers.

/// How the deceased was covered by social insurance (`insured.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InsuranceStatus {
    /// Contributing to compulsory social insurance.
    Compulsory,
    /// Receiving a pension.
    Pensioner,
    /// Receiving a monthly social insurance benefit (occupational accident or disease, ...).
    MonthlyBenefit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsuredRecord {
    pub status: InsuranceStatus,
    pub contribution_months: u32,
}

/// A registered permanent residence (`residences.csv`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidenceRecord {
    pub province: String,
    pub commune: String,
    pub address: String,
}

/// A declared disaster: deaths in the province between the dates count as disaster deaths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disaster {
    pub province: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub name: String,
}

/// The reference registers by personal ID number, loaded into memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registers {
    pub insured: BTreeMap<PersonalId, InsuredRecord>,
    /// Social-protection beneficiaries and their category.
    pub social_protection: BTreeMap<PersonalId, String>,
    pub residences: BTreeMap<PersonalId, ResidenceRecord>,
    pub disasters: Vec<Disaster>,
}

impl Registers {
    pub fn parse(
        insured: &str,
        social_protection: &str,
        residences: &str,
        disasters: &str,
    ) -> Result<Self, ReferenceError> {
        let mut registers = Self::default();
        for (line, fields) in csv_rows(INSURED_FILE, insured, 3)? {
            let error = |message: String| ReferenceError::Csv {
                file: INSURED_FILE.to_owned(),
                line,
                message,
            };
            let personal_id = PersonalId::parse(fields[0]).map_err(|e| error(e.to_string()))?;
            let status = match fields[1] {
                "compulsory" => InsuranceStatus::Compulsory,
                "pensioner" => InsuranceStatus::Pensioner,
                "monthly-benefit" => InsuranceStatus::MonthlyBenefit,
                other => return Err(error(format!("unknown status {other:?}"))),
            };
            let contribution_months = fields[2]
                .parse()
                .map_err(|_| error(format!("invalid contribution_months {:?}", fields[2])))?;
            registers.insured.insert(
                personal_id,
                InsuredRecord {
                    status,
                    contribution_months,
                },
            );
        }
        for (line, fields) in csv_rows(SOCIAL_PROTECTION_FILE, social_protection, 2)? {
            let personal_id = PersonalId::parse(fields[0]).map_err(|e| ReferenceError::Csv {
                file: SOCIAL_PROTECTION_FILE.to_owned(),
                line,
                message: e.to_string(),
            })?;
            registers
                .social_protection
                .insert(personal_id, fields[1].to_owned());
        }
        for (line, fields) in csv_rows(RESIDENCES_FILE, residences, 4)? {
            let personal_id = PersonalId::parse(fields[0]).map_err(|e| ReferenceError::Csv {
                file: RESIDENCES_FILE.to_owned(),
                line,
                message: e.to_string(),
            })?;
            registers.residences.insert(
                personal_id,
                ResidenceRecord {
                    province: fields[1].to_owned(),
                    commune: fields[2].to_owned(),
                    address: fields[3].to_owned(),
                },
            );
        }
        for (line, fields) in csv_rows(DISASTERS_FILE, disasters, 4)? {
            let error = |message: String| ReferenceError::Csv {
                file: DISASTERS_FILE.to_owned(),
                line,
                message,
            };
            registers.disasters.push(Disaster {
                province: fields[0].to_owned(),
                from: parse_iso_date(fields[1]).map_err(error)?,
                to: parse_iso_date(fields[2]).map_err(error)?,
                name: fields[3].to_owned(),
            });
        }
        Ok(registers)
    }

    /// The declared disaster in `province` on `date`, if any.
    pub fn disaster(&self, province: &str, date: NaiveDate) -> Option<&Disaster> {
        self.disasters.iter().find(|disaster| {
            disaster.province == province && disaster.from <= date && date <= disaster.to
        })
    }
}

// ---------------------------------------------------------------------------------------------
// CSV: a header line, then rows of exactly `columns` comma-separated fields (the last may hold
// commas); blank lines skipped. Answers (1-based line number, fields).

fn csv_rows<'t>(
    file: &str,
    text: &'t str,
    columns: usize,
) -> Result<Vec<(usize, Vec<&'t str>)>, ReferenceError> {
    text.lines()
        .enumerate()
        .skip(1)
        .map(|(index, line)| (index + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(line, row)| {
            let fields: Vec<&str> = row.splitn(columns, ',').map(str::trim).collect();
            if fields.len() == columns && fields.iter().all(|field| !field.is_empty()) {
                Ok((line, fields))
            } else {
                Err(ReferenceError::Csv {
                    file: file.to_owned(),
                    line,
                    message: format!("expected {columns} non-empty comma-separated fields"),
                })
            }
        })
        .collect()
}

fn parse_iso_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| format!("invalid date {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn reference() -> ReferenceData {
        ReferenceData::embedded().unwrap()
    }

    #[test]
    fn embedded_defaults_load() {
        let reference = reference();
        assert_eq!(reference.parameters.base_salary.len(), 7);
        assert!(reference.registers.insured.len() >= 3);
        assert!(reference.calendar.holiday(date("2026-02-17")).is_some());
    }

    #[test]
    fn the_parameter_in_force_on_a_date_applies() {
        let parameters = reference().parameters;
        assert_eq!(
            parameters
                .base_salary(date("2024-06-30"))
                .unwrap()
                .amount_vnd,
            1_800_000
        );
        assert_eq!(
            parameters
                .base_salary(date("2024-07-01"))
                .unwrap()
                .amount_vnd,
            2_340_000
        );
        assert_eq!(
            parameters
                .base_salary(date("2026-11-18"))
                .unwrap()
                .amount_vnd,
            2_340_000
        );
        // A death registered late is decided with the salary of its own month, back to the
        // burial allowance rule's start (2016-01-01) and before.
        for (day, amount) in [
            ("2023-06-30", 1_490_000),
            ("2019-07-01", 1_490_000),
            ("2019-06-30", 1_390_000),
            ("2016-04-30", 1_150_000),
            ("2016-05-01", 1_210_000),
            ("2013-07-01", 1_150_000),
        ] {
            assert_eq!(
                parameters.base_salary(date(day)).unwrap().amount_vnd,
                amount,
                "{day}"
            );
        }
        assert_eq!(
            parameters.decidable_from(ProcedureId::BurialAllowance),
            Some(date("2016-01-01"))
        );
        assert_eq!(
            parameters.decidable_from(ProcedureId::FuneralSupport),
            Some(date("2021-07-01"))
        );
        assert_eq!(
            parameters.decidable_from(ProcedureId::ResidenceDeregistration),
            None
        );
        assert_eq!(
            Parameters::default().decidable_from(ProcedureId::BurialAllowance),
            Some(NaiveDate::MAX)
        );
        assert!(matches!(
            parameters.base_salary(date("2013-06-30")),
            Err(ReferenceError::NoParameter {
                name: "base_salary",
                ..
            })
        ));
        assert_eq!(
            parameters
                .assistance_standard(date("2026-01-01"))
                .unwrap()
                .amount_vnd,
            360_000
        );
        assert_eq!(parameters.service_days(ProcedureId::FuneralSupport), 3);
        assert_eq!(
            parameters.service_days(ProcedureId::ResidenceRegistration),
            2
        );
    }

    #[test]
    fn routing_prefers_the_commune_office_and_falls_back_to_the_province() {
        let routing = reference().routing;
        let commune = routing.route(AgencyId::Police, "79", "26734").unwrap();
        assert_eq!(commune.office.as_str(), "79-26734");
        let province = routing.route(AgencyId::Police, "79", "99999").unwrap();
        assert_eq!(province.office.as_str(), "79-00000");
        assert!(province.commune.is_none());
        assert_eq!(
            routing
                .route(AgencyId::SocialSecurity, "01", "00004")
                .unwrap()
                .office
                .as_str(),
            "01-00000"
        );
        assert!(matches!(
            routing.route(AgencyId::PopulationRegistry, "79", "26734"),
            Err(ReferenceError::NoOffice { .. })
        ));
        let registering = OfficeCode::parse("48-20194").unwrap();
        assert_eq!(
            routing
                .office_for(ProcedureId::BirthRegistration, "48", "20194", &registering)
                .unwrap(),
            registering
        );
    }

    #[test]
    fn a_routing_override_adds_a_commune_office() {
        let routing = Routing::parse(
            "agency,province,commune,office_code,office_name\n\
             police,48,*,48-00000,Công an Đà Nẵng\n\
             police,48,20194,48-20194,Công an phường Hải Châu, Đà Nẵng\n",
        )
        .unwrap();
        assert_eq!(
            routing
                .route(AgencyId::Police, "48", "20194")
                .unwrap()
                .office_name,
            "Công an phường Hải Châu, Đà Nẵng"
        );
        assert_eq!(
            routing
                .route(AgencyId::Police, "48", "20200")
                .unwrap()
                .office
                .as_str(),
            "48-00000"
        );
        assert!(Routing::parse("h\npolice,48,*,bad,x\n").is_err());
        assert!(Routing::parse("h\nnobody,48,*,48-00000,x\n").is_err());
    }

    #[test]
    fn working_days_skip_weekends_and_tet() {
        let calendar = reference().calendar;
        // Friday 2026-02-13 + 1 working day: the weekend and Tết (16-20 Feb) are off.
        assert_eq!(
            calendar.add_working_days(date("2026-02-13"), 1),
            date("2026-02-23")
        );
        assert_eq!(
            calendar.add_working_days(date("2026-02-13"), 0),
            date("2026-02-13")
        );
        // Thursday 2026-11-19 + 2: Friday, then Monday.
        assert_eq!(
            calendar.add_working_days(date("2026-11-19"), 2),
            date("2026-11-23")
        );
        // Tết 2025: Friday 24 Jan + 1 -> Monday 3 Feb.
        assert_eq!(
            calendar.add_working_days(date("2025-01-24"), 1),
            date("2025-02-03")
        );
        // A compensatory working Saturday counts.
        assert!(calendar.is_working_day(date("2025-04-26")));
        assert!(!calendar.is_working_day(date("2025-05-02")));
        assert!(!calendar.is_working_day(date("2027-09-03")));
    }

    #[test]
    fn due_times_are_end_of_office_day_in_vietnam_time() {
        let calendar = reference().calendar;
        // Recorded Friday 09:00 local: same working day -> Friday 17:00 +07:00 = 10:00 UTC.
        assert_eq!(
            calendar.due_at(utc("2026-11-20T09:00:00+07:00"), 1),
            utc("2026-11-20T10:00:00Z")
        );
        // After office hours: the next working day (Monday) is day 1.
        assert_eq!(
            calendar.due_at(utc("2026-11-20T18:30:00+07:00"), 1),
            utc("2026-11-23T10:00:00Z")
        );
        // 23:30 UTC Thursday is already Friday in Vietnam; 2 working days from then are
        // Monday and Tuesday.
        assert_eq!(
            calendar.due_at(utc("2026-11-19T23:30:00Z"), 2),
            utc("2026-11-24T10:00:00Z")
        );
        // Several working days count from the next one, whatever the hour: 2 from Monday
        // 10:00 end on Wednesday, 10 on the second Monday after.
        assert_eq!(
            calendar.due_at(utc("2026-11-23T10:00:00+07:00"), 2),
            utc("2026-11-25T10:00:00Z")
        );
        assert_eq!(
            calendar.due_at(utc("2026-11-23T10:00:00+07:00"), 10),
            utc("2026-12-07T10:00:00Z")
        );
        // Recorded on the Saturday before Tết 2026, 2 working days: 23 and 24 Feb.
        assert_eq!(
            calendar.due_at(utc("2026-02-14T09:00:00+07:00"), 2),
            utc("2026-02-24T10:00:00Z")
        );
    }

    #[test]
    fn registers_answer_by_personal_id_and_disasters_by_province_and_date() {
        let registers = reference().registers;
        let pensioner = PersonalId::parse("001052000111").unwrap();
        assert_eq!(
            registers.insured[&pensioner].status,
            InsuranceStatus::Pensioner
        );
        assert_eq!(registers.residences[&pensioner].commune, "00004");
        assert!(registers.disaster("22", date("2024-09-07")).is_some());
        assert!(registers.disaster("22", date("2024-09-20")).is_none());
        assert!(Registers::parse("h\n123,pensioner,0\n", "h\n", "h\n", "h\n").is_err());
    }

    #[test]
    fn a_directory_overrides_files_one_by_one() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join(PARAMETERS_FILE),
            include_str!("../data/parameters.toml").to_owned()
                + "\n[[base_salary]]\nrule_version = \"base-salary/test-2026\"\neffective_from = \"2026-07-01\"\namount_vnd = 2530000\n",
        )
        .unwrap();
        let reference = ReferenceData::load(directory.path()).unwrap();
        assert_eq!(
            reference
                .parameters
                .base_salary(date("2026-07-01"))
                .unwrap()
                .amount_vnd,
            2_530_000
        );
        assert_eq!(
            reference.routing,
            ReferenceData::embedded().unwrap().routing
        );
    }
}
