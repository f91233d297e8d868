//! Domain refusals: the answers an aggregate gives when a command cannot be applied.
//!
//! A refusal is an answer (HTTP 4xx), never a fault; each has a stable [`DomainError::code`].

use chrono::{DateTime, Utc};

use crate::procedure::{ProcedureGroup, ProcedureId};
use crate::task::TaskStatus;
use crate::validation::ValidationErrors;

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("the life event is already recorded")]
    AlreadyRecorded,
    #[error("no life event is recorded here")]
    NotRecorded,
    #[error("the life event is voided")]
    Voided,
    #[error("a {recorded:?} record cannot be corrected with a {given:?} declaration")]
    WrongKind {
        recorded: ProcedureGroup,
        given: ProcedureGroup,
    },
    #[error("the correction changes nothing")]
    NothingChanged,
    #[error("the task already exists")]
    TaskAlreadyCreated,
    #[error("no task exists here")]
    TaskNotCreated,
    #[error("the task is {status:?} and can no longer change")]
    TaskClosed { status: TaskStatus },
    #[error("the task is claimed by {claimed_by}")]
    ClaimedByOther { claimed_by: String },
    #[error("outcome {outcome} does not complete a {procedure} task")]
    OutcomeNotForProcedure {
        procedure: ProcedureId,
        outcome: &'static str,
    },
    #[error(
        "a reversal task is completed with a revoked outcome (the revocation's decision_number), \
         not {outcome}"
    )]
    OutcomeNotForReversal { outcome: &'static str },
    #[error("the {procedure} agency does not receive field {field}")]
    FieldNotReceived {
        procedure: ProcedureId,
        field: String,
    },
    #[error("the task is not due before {due_at}")]
    NotYetDue { due_at: DateTime<Utc> },
}

impl DomainError {
    /// A stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::AlreadyRecorded => "already_recorded",
            Self::NotRecorded => "not_recorded",
            Self::Voided => "voided",
            Self::WrongKind { .. } => "wrong_kind",
            Self::NothingChanged => "nothing_changed",
            Self::TaskAlreadyCreated => "task_already_created",
            Self::TaskNotCreated => "task_not_created",
            Self::TaskClosed { .. } => "task_closed",
            Self::ClaimedByOther { .. } => "claimed_by_other",
            Self::OutcomeNotForProcedure { .. } => "outcome_not_for_procedure",
            Self::OutcomeNotForReversal { .. } => "outcome_not_for_reversal",
            Self::FieldNotReceived { .. } => "field_not_received",
            Self::NotYetDue { .. } => "not_yet_due",
        }
    }
}
