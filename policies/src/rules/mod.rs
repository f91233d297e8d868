//! The pure rules, one module per policy: `react(&event, &facts, &context) -> Vec<Command>`.
//! No I/O: what a rule needs is looked up first ([`crate::facts`]) and the commands it answers
//! are appended by the engine ([`crate::engine`]).

pub mod birth_followups;
pub mod birth_registration;
pub mod corrections;
pub mod death_followups;
pub mod death_registration;

use std::collections::BTreeMap;

use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::EligibilityDecided;
use lifeline_model::task::{Application, FollowUp, TaskCreated, TaskEvent};
use lifeline_model::values::OfficeCode;
use serde_json::Value;
use uuid::Uuid;

use crate::engine::task_id;
use crate::facts::Context;
use crate::reference::ReferenceError;

/// The stable policy names (one durable consumer each).
pub const BIRTH_REGISTRATION: &str = "birth-registration";
pub const BIRTH_FOLLOWUPS: &str = "birth-followups";
pub const DEATH_REGISTRATION: &str = "death-registration";
pub const DEATH_FOLLOWUPS: &str = "death-followups";
pub const CORRECTIONS: &str = "corrections";

/// What a rule decides; the engine turns each into one append with deterministic ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a task: stream `task-<id>`, "stream must not exist".
    CreateTask(TaskCreated),
    /// Record an eligibility decision: stream `eligibility-<key>`, "stream must not exist"
    /// (`key` is the id the procedure's task has, or would have had).
    DecideEligibility {
        key: Uuid,
        decision: EligibilityDecided,
    },
    /// Append to an existing task (amendment, cancellation) at the version it was read at.
    UpdateTask {
        task_id: Uuid,
        expected_version: i64,
        event_id: Uuid,
        event: TaskEvent,
    },
}

/// Why a rule refused: missing configuration or a record it cannot act on.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    Domain(#[from] lifeline_model::error::DomainError),
}

/// The task `policy` creates for `procedure`, prefilled with the fields of `facts` its agency
/// receives, routed to `office`, due after the procedure's working days from the source event.
pub(crate) fn new_task(
    policy: &str,
    procedure: ProcedureId,
    life_event_id: Uuid,
    office: OfficeCode,
    facts: &BTreeMap<String, Value>,
    context: &Context<'_>,
    follow_up: Option<FollowUp>,
) -> TaskCreated {
    let reference = context.reference;
    TaskCreated {
        task_id: task_id(policy, context.source.event_id, procedure),
        procedure,
        agency: procedure.agency(),
        life_event_id,
        office,
        application: Application::for_procedure(procedure, facts),
        due_at: reference.calendar.due_at(
            context.source.recorded_at,
            reference.parameters.service_days(procedure),
        ),
        source_event_id: context.source.event_id,
        created_at: context.now,
        follow_up,
    }
}

#[cfg(test)]
pub(crate) mod test_support;
