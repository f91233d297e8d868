//! The linked procedures of a life event, the agencies that run them, what each agency receives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One procedure of DOMAIN.md, by its kebab-case id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcedureId {
    BirthRegistration,
    ResidenceRegistration,
    ChildHealthInsurance,
    DeathRegistration,
    ResidenceDeregistration,
    BurialAllowance,
    FuneralSupport,
}

/// The agencies of DOMAIN.md, by their kebab-case id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgencyId {
    CivilRegistry,
    PopulationRegistry,
    Police,
    SocialSecurity,
    SocialProtection,
}

/// The two bundles of Decree 63/2024: the procedures that follow a birth, and those after a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcedureGroup {
    Birth,
    Death,
}

impl ProcedureGroup {
    /// Every procedure of the group, first step first.
    pub fn procedures(self) -> &'static [ProcedureId] {
        use ProcedureId as P;
        match self {
            Self::Birth => &[
                P::BirthRegistration,
                P::ResidenceRegistration,
                P::ChildHealthInsurance,
            ],
            Self::Death => &[
                P::DeathRegistration,
                P::ResidenceDeregistration,
                P::BurialAllowance,
                P::FuneralSupport,
            ],
        }
    }

    /// The procedure always applied for: birth or death registration.
    pub fn first_step(self) -> ProcedureId {
        match self {
            Self::Birth => ProcedureId::BirthRegistration,
            Self::Death => ProcedureId::DeathRegistration,
        }
    }
}

impl ProcedureId {
    pub const ALL: [ProcedureId; 7] = [
        Self::BirthRegistration,
        Self::ResidenceRegistration,
        Self::ChildHealthInsurance,
        Self::DeathRegistration,
        Self::ResidenceDeregistration,
        Self::BurialAllowance,
        Self::FuneralSupport,
    ];

    /// The kebab-case id, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BirthRegistration => "birth-registration",
            Self::ResidenceRegistration => "residence-registration",
            Self::ChildHealthInsurance => "child-health-insurance",
            Self::DeathRegistration => "death-registration",
            Self::ResidenceDeregistration => "residence-deregistration",
            Self::BurialAllowance => "burial-allowance",
            Self::FuneralSupport => "funeral-support",
        }
    }

    /// The agency that runs this procedure.
    pub fn agency(self) -> AgencyId {
        match self {
            Self::BirthRegistration | Self::DeathRegistration => AgencyId::CivilRegistry,
            Self::ResidenceRegistration | Self::ResidenceDeregistration => AgencyId::Police,
            Self::ChildHealthInsurance | Self::BurialAllowance => AgencyId::SocialSecurity,
            Self::FuneralSupport => AgencyId::SocialProtection,
        }
    }

    pub fn group(self) -> ProcedureGroup {
        match self {
            Self::BirthRegistration | Self::ResidenceRegistration | Self::ChildHealthInsurance => {
                ProcedureGroup::Birth
            }
            _ => ProcedureGroup::Death,
        }
    }

    /// The default service time limit in working days (DOMAIN.md). Time limits change by decree:
    /// configuration may override this default; "same working day" counts as 1.
    pub fn default_service_days(self) -> u32 {
        match self {
            Self::BirthRegistration | Self::DeathRegistration => 1,
            Self::ResidenceRegistration | Self::ChildHealthInsurance => 2,
            Self::ResidenceDeregistration | Self::FuneralSupport => 3,
            Self::BurialAllowance => 10,
        }
    }

    /// The application fields this procedure's agency receives (data minimisation): dotted paths
    /// into the flattened declaration (see `declaration::flatten`), plus the facts added on the way
    /// (`child.personal_id`, `birth_certificate_number`, `death_extract_number`, `eligibility.*`).
    /// Nothing else leaves the log for this agency.
    pub fn application_fields(self) -> &'static [&'static str] {
        match self {
            Self::BirthRegistration => &[
                "office",
                "child.full_name",
                "child.sex",
                "child.date_of_birth",
                "child.place_of_birth",
                "child.hometown",
                "child.ethnicity",
                "child.nationality",
                "mother.full_name",
                "mother.personal_id",
                "mother.date_of_birth",
                "mother.ethnicity",
                "mother.nationality",
                "father.full_name",
                "father.personal_id",
                "father.date_of_birth",
                "father.ethnicity",
                "father.nationality",
                "residence.province",
                "residence.commune",
                "residence.address",
                "birth_notice.number",
                "birth_notice.issuer",
                "birth_notice.date",
                "declarant.full_name",
                "declarant.personal_id",
                "declarant.relationship",
                "declarant.residence.province",
                "declarant.residence.commune",
                "declarant.residence.address",
                "late",
            ],
            Self::ResidenceRegistration => &[
                "child.personal_id",
                "child.full_name",
                "child.sex",
                "child.date_of_birth",
                "mother.full_name",
                "mother.personal_id",
                "father.full_name",
                "father.personal_id",
                "residence.province",
                "residence.commune",
                "residence.address",
                "birth_certificate_number",
            ],
            Self::ChildHealthInsurance => &[
                "child.personal_id",
                "child.full_name",
                "child.sex",
                "child.date_of_birth",
                "residence.province",
                "residence.commune",
                "residence.address",
                "birth_certificate_number",
            ],
            Self::DeathRegistration => &[
                "office",
                "deceased.full_name",
                "deceased.personal_id",
                "deceased.date_of_birth",
                "deceased.sex",
                "deceased.ethnicity",
                "deceased.nationality",
                "deceased.residence.province",
                "deceased.residence.commune",
                "deceased.residence.address",
                "death.at",
                "death.time_known",
                "death.place",
                "death.cause",
                "death.notice.number",
                "death.notice.issuer",
                "death.notice.date",
                "declarant.full_name",
                "declarant.personal_id",
                "declarant.relationship",
                "declarant.residence.province",
                "declarant.residence.commune",
                "declarant.residence.address",
                "late",
            ],
            Self::ResidenceDeregistration => &[
                "deceased.full_name",
                "deceased.personal_id",
                "deceased.date_of_birth",
                "deceased.residence.province",
                "deceased.residence.commune",
                "deceased.residence.address",
                "death.at",
                "death_extract_number",
            ],
            Self::BurialAllowance | Self::FuneralSupport => &[
                "deceased.full_name",
                "deceased.personal_id",
                "deceased.date_of_birth",
                "death.at",
                "death_extract_number",
                "declarant.full_name",
                "declarant.personal_id",
                "declarant.relationship",
                "declarant.phone",
                "declarant.email",
                "eligibility.reason",
                "eligibility.rule_version",
                "eligibility.amount_vnd",
            ],
        }
    }

    /// Whether the agency of this procedure may receive `field`.
    pub fn receives(self, field: &str) -> bool {
        self.application_fields().contains(&field)
    }
}

impl fmt::Display for ProcedureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A procedure id that is none of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown procedure {0:?}")]
pub struct UnknownProcedure(pub String);

impl FromStr for ProcedureId {
    type Err = UnknownProcedure;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|procedure| procedure.as_str() == value)
            .ok_or_else(|| UnknownProcedure(value.to_owned()))
    }
}

impl AgencyId {
    pub const ALL: [AgencyId; 5] = [
        Self::CivilRegistry,
        Self::PopulationRegistry,
        Self::Police,
        Self::SocialSecurity,
        Self::SocialProtection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CivilRegistry => "civil-registry",
            Self::PopulationRegistry => "population-registry",
            Self::Police => "police",
            Self::SocialSecurity => "social-security",
            Self::SocialProtection => "social-protection",
        }
    }

    /// The procedures this agency runs (none for the population registry: it assigns ID numbers).
    pub fn procedures(self) -> Vec<ProcedureId> {
        ProcedureId::ALL
            .into_iter()
            .filter(|procedure| procedure.agency() == self)
            .collect()
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agency id that is none of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown agency {0:?}")]
pub struct UnknownAgency(pub String);

impl FromStr for AgencyId {
    type Err = UnknownAgency;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|agency| agency.as_str() == value)
            .ok_or_else(|| UnknownAgency(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_and_from_str() {
        for procedure in ProcedureId::ALL {
            let json = serde_json::to_value(procedure).unwrap();
            assert_eq!(json, procedure.as_str());
            assert_eq!(
                procedure.as_str().parse::<ProcedureId>().unwrap(),
                procedure
            );
            assert!(procedure.group().procedures().contains(&procedure));
        }
        for agency in AgencyId::ALL {
            assert_eq!(serde_json::to_value(agency).unwrap(), agency.as_str());
            assert_eq!(agency.as_str().parse::<AgencyId>().unwrap(), agency);
        }
        assert!("birth".parse::<ProcedureId>().is_err());
    }

    #[test]
    fn agencies_follow_domain_md() {
        assert_eq!(
            AgencyId::SocialSecurity.procedures(),
            [
                ProcedureId::ChildHealthInsurance,
                ProcedureId::BurialAllowance
            ]
        );
        assert!(AgencyId::PopulationRegistry.procedures().is_empty());
        assert_eq!(
            ProcedureId::FuneralSupport.agency(),
            AgencyId::SocialProtection
        );
        assert_eq!(
            ProcedureGroup::Death.first_step(),
            ProcedureId::DeathRegistration
        );
        assert!(!ProcedureId::ChildHealthInsurance.receives("mother.personal_id"));
        assert!(ProcedureId::ChildHealthInsurance.receives("child.personal_id"));
    }
}
