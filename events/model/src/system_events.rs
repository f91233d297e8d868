//! Events Lifeline records by itself: personal ID numbers assigned, eligibility decided, policies
//! that gave up, and every read of personal data (the access log).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::{LogCursor, Role};
use crate::procedure::ProcedureId;
use crate::values::{FullName, PersonalId, PersonalIdError, Sex};

/// Events recorded by Lifeline's own processes rather than by a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemEvent {
    PersonalIdAssigned(PersonalIdAssigned),
    EligibilityDecided(EligibilityDecided),
    PolicyFailed(PolicyFailed),
    PersonalDataRead(PersonalDataRead),
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

/// Someone read personal data through the API: who (subject, role, scope), what (the
/// resource), when, and the purpose they gave. Appended by the handler after the read succeeded,
/// one stream per read (`access-<uuid v7>`, "stream must not exist"), so reads never contend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalDataRead {
    /// The token's subject.
    pub subject: String,
    pub role: Role,
    /// The token's scope: `office:<code>`, `agency:<id>` or `all`.
    pub scope: String,
    pub resource: ReadResource,
    /// The personal ID numbers the read disclosed (targeted reads only; a bulk read such as a log
    /// page or an export is recorded by its range instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personal_ids: Vec<PersonalId>,
    /// Why, as the caller said in `X-Purpose` (auditors must; others may).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub read_at: DateTime<Utc>,
}

/// What a [`PersonalDataRead`] read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadResource {
    /// `GET /v1/life-events/{id}`.
    LifeEvent { life_event_id: Uuid },
    /// `GET /v1/tasks/{id}`.
    Task {
        task_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        life_event_id: Option<Uuid>,
    },
    /// `GET /v1/audit/persons/{pin}/timeline`.
    PersonTimeline { personal_id: PersonalId },
    /// `GET /v1/audit/streams/{stream_id}`.
    Stream { stream_id: String },
    /// `GET /v1/audit/events`: the page after `after` up to `last` (both absent: an empty page
    /// at the start).
    LogPage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<LogCursor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<LogCursor>,
        events: u64,
    },
    /// `GET /v1/audit/export`: the log after `after`, up to `until` (absent: the end).
    Export {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<LogCursor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
        /// The export ended at this read's own entry in the log (every export since
        /// 2026-12-07); one recorded before streamed on until it caught up, so where it ended
        /// is not known (false, the default, for those).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ends_at_entry: bool,
    },
    /// `GET /v1/audit/replay`.
    Replay { as_of: DateTime<Utc> },
    /// `GET /v1/audit/access-log` (it names who was looked at).
    AccessLog {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        personal_id: Option<PersonalId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<LogCursor>,
    },
}

impl ReadResource {
    /// The life event this read was about, if one.
    pub fn life_event_id(&self) -> Option<Uuid> {
        match self {
            Self::LifeEvent { life_event_id } => Some(*life_event_id),
            Self::Task { life_event_id, .. } => *life_event_id,
            _ => None,
        }
    }

    /// The task this read was about, if one.
    pub fn task_id(&self) -> Option<Uuid> {
        match self {
            Self::Task { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }
}
