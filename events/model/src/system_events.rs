//! Events Lifeline records by itself: personal ID numbers assigned, eligibility decided, policies
//! that gave up.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::procedure::ProcedureId;
use crate::values::{FullName, PersonalId, PersonalIdError, Sex};

/// Events recorded by Lifeline's own processes rather than by a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemEvent {
    PersonalIdAssigned(PersonalIdAssigned),
    EligibilityDecided(EligibilityDecided),
    PolicyFailed(PolicyFailed),
}

/// The identity allocator (population registry) assigned a child's personal ID number when
/// birth registration completed. Stream `person-<pin>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalIdAssigned {
    pub personal_id: PersonalId,
    pub life_event_id: Uuid,
    /// The birth-registration task whose completion led to the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    pub full_name: FullName,
    pub date_of_birth: NaiveDate,
    pub sex: Sex,
    pub assigned_at: DateTime<Utc>,
}

impl PersonalIdAssigned {
    /// Builds the event, refusing a number whose digits 4-6 disagree with the holder.
    pub fn new(
        personal_id: PersonalId,
        life_event_id: Uuid,
        task_id: Option<Uuid>,
        full_name: FullName,
        date_of_birth: NaiveDate,
        sex: Sex,
        assigned_at: DateTime<Utc>,
    ) -> Result<Self, PersonalIdError> {
        personal_id.check_holder(Some(date_of_birth), Some(sex))?;
        Ok(Self {
            personal_id,
            life_event_id,
            task_id,
            full_name,
            date_of_birth,
            sex,
            assigned_at,
        })
    }
}

/// A procedure was found eligible or not, by a versioned rule with the parameters it used, so an
/// auditor can recompute it. Amounts in integer VND.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EligibilityDecided {
    pub life_event_id: Uuid,
    pub procedure: ProcedureId,
    pub eligible: bool,
    pub reason: String,
    pub rule_version: String,
    /// The date-effective parameters the rule used (base salary, assistance standard, ...).
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_vnd: Option<i64>,
    pub decided_at: DateTime<Utc>,
}

/// A policy gave up on an event after the configured number of deliveries; replayable once fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFailed {
    pub policy: String,
    pub event_id: Uuid,
    pub error: String,
    pub deliveries: u32,
    pub failed_at: DateTime<Utc>,
}
