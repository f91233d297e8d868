//! A task: one procedure at one agency for one life event, as an aggregate.
//!
//! Stream `task-<uuid>`. Created (prefilled) by a policy, claimed and completed or rejected by
//! the agency, cancelled or amended when the record changes, marked overdue by the watcher.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::DomainError;
use crate::procedure::{AgencyId, ProcedureId};
use crate::validation::{FieldError, ValidationErrors};
use crate::values::{parse_text, vietnam_date, OfficeCode, MAX_TEXT_CHARS};

/// Everything that happens to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    TaskCreated(TaskCreated),
    TaskClaimed(TaskClaimed),
    TaskCompleted(TaskCompleted),
    TaskRejected(TaskRejected),
    TaskCancelled(TaskCancelled),
    TaskAmended(TaskAmended),
    TaskOverdue(TaskOverdue),
}

/// A policy created a task, prefilled with only the fields its agency receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    pub task_id: Uuid,
    pub procedure: ProcedureId,
    pub agency: AgencyId,
    pub life_event_id: Uuid,
    /// The agency office the task is routed to.
    pub office: OfficeCode,
    pub application: Application,
    pub due_at: DateTime<Utc>,
    /// The event that caused the task (the idempotency source of its id).
    pub source_event_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// Set when the task follows up an earlier, completed task of the same procedure after the
    /// record was corrected (re-issue) or voided (reversal). Absent on ordinary tasks and on
    /// events stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<FollowUp>,
}

/// Why a task repeats or undoes a completed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUp {
    pub kind: FollowUpKind,
    /// The completed task this one follows up.
    pub follows: Uuid,
    /// The registrar's reason for the correction or the void.
    pub reason: String,
}

/// What a follow-up task asks of the agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUpKind {
    /// The record was corrected: issue the document or decision again with the new data.
    Reissue,
    /// The record was voided: revoke what the completed task produced.
    Reversal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaimed {
    pub task_id: Uuid,
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub task_id: Uuid,
    /// The completed task's procedure (its `TaskCreated`'s). The relay publishes the notice
    /// under it (`BusConfig::subject_for`), so that each follow-up policy receives only the
    /// completions of the registration it follows. Absent on events stored before 2026-12-06.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedure: Option<ProcedureId>,
    pub by: String,
    pub outcome: TaskOutcome,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRejected {
    pub task_id: Uuid,
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelled {
    pub task_id: Uuid,
    pub reason: String,
    /// The event that caused the cancellation (e.g. `LifeEventVoided`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAmended {
    pub task_id: Uuid,
    /// The whole application after the amendment.
    pub application: Application,
    pub changed_fields: Vec<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOverdue {
    pub task_id: Uuid,
    pub due_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// What an agency produced when it completed its procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskOutcome {
    BirthRegistered {
        certificate_number: String,
    },
    ResidenceRegistered {
        entry_number: String,
    },
    InsuranceCardIssued {
        card_number: String,
        valid_until: NaiveDate,
    },
    DeathRegistered {
        extract_number: String,
    },
    ResidenceClosed {
        entry_number: String,
    },
    /// A burial allowance or funeral support decision; money in integer VND.
    PaymentDecided {
        decision_number: String,
        amount_vnd: i64,
    },
    /// What completes a reversal task (a record voided, or corrected so that the procedure no
    /// longer applies, after the procedure completed): the agency revoked what the task it
    /// follows produced, by the decision `decision_number`. Completes no procedure itself.
    /// (Until 2026-12-07 a reversal could only be completed with the procedure's own outcome,
    /// which the person registry then applied again, as if the procedure had been done.)
    Revoked {
        decision_number: String,
    },
}

/// The longest document number accepted in an outcome.
pub const MAX_NUMBER_CHARS: usize = 64;

impl TaskOutcome {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BirthRegistered { .. } => "birth_registered",
            Self::ResidenceRegistered { .. } => "residence_registered",
            Self::InsuranceCardIssued { .. } => "insurance_card_issued",
            Self::DeathRegistered { .. } => "death_registered",
            Self::ResidenceClosed { .. } => "residence_closed",
            Self::PaymentDecided { .. } => "payment_decided",
            Self::Revoked { .. } => "revoked",
        }
    }

    /// Whether this outcome completes `procedure`.
    pub fn fits(&self, procedure: ProcedureId) -> bool {
        use ProcedureId as P;
        matches!(
            (self, procedure),
            (Self::BirthRegistered { .. }, P::BirthRegistration)
                | (Self::ResidenceRegistered { .. }, P::ResidenceRegistration)
                | (Self::InsuranceCardIssued { .. }, P::ChildHealthInsurance)
                | (Self::DeathRegistered { .. }, P::DeathRegistration)
                | (Self::ResidenceClosed { .. }, P::ResidenceDeregistration)
                | (
                    Self::PaymentDecided { .. },
                    P::BurialAllowance | P::FuneralSupport
                )
        )
    }

    /// Checks the outcome of a reversal task: only `revoked`, its decision number trimmed.
    pub fn validate_revocation(self) -> Result<Self, DomainError> {
        let Self::Revoked { decision_number } = self else {
            return Err(DomainError::OutcomeNotForReversal {
                outcome: self.kind(),
            });
        };
        let mut errors = ValidationErrors::default();
        match errors.take(parse_text(
            &decision_number,
            "outcome.decision_number",
            MAX_NUMBER_CHARS,
        )) {
            Some(decision_number) if errors.is_empty() => Ok(Self::Revoked { decision_number }),
            _ => Err(errors.into()),
        }
    }

    /// Checks the outcome for `procedure` completed on `on`, answering it normalised (trimmed).
    /// Field errors are named `outcome.<field>`. A child's card is valid at most until its 72nd
    /// month when the application carries `child.date_of_birth`.
    pub fn validate(
        self,
        procedure: ProcedureId,
        on: NaiveDate,
        application: &Application,
    ) -> Result<Self, DomainError> {
        if !self.fits(procedure) {
            return Err(DomainError::OutcomeNotForProcedure {
                procedure,
                outcome: self.kind(),
            });
        }
        let mut errors = ValidationErrors::default();
        let number = |errors: &mut ValidationErrors, raw: &str, name: &str| {
            errors.take(parse_text(
                raw,
                &format!("outcome.{name}"),
                MAX_NUMBER_CHARS,
            ))
        };
        let outcome = match self {
            Self::BirthRegistered { certificate_number } => {
                number(&mut errors, &certificate_number, "certificate_number")
                    .map(|certificate_number| Self::BirthRegistered { certificate_number })
            }
            Self::ResidenceRegistered { entry_number } => {
                number(&mut errors, &entry_number, "entry_number")
                    .map(|entry_number| Self::ResidenceRegistered { entry_number })
            }
            Self::DeathRegistered { extract_number } => {
                number(&mut errors, &extract_number, "extract_number")
                    .map(|extract_number| Self::DeathRegistered { extract_number })
            }
            Self::ResidenceClosed { entry_number } => {
                number(&mut errors, &entry_number, "entry_number")
                    .map(|entry_number| Self::ResidenceClosed { entry_number })
            }
            Self::InsuranceCardIssued {
                card_number,
                valid_until,
            } => {
                let card_number = number(&mut errors, &card_number, "card_number");
                let latest = application.date("child.date_of_birth").and_then(|born| {
                    born.checked_add_months(Months::new(
                        crate::declaration::CHILD_HEALTH_INSURANCE_MONTHS,
                    ))
                });
                if valid_until <= on {
                    errors.push(FieldError::new(
                        "outcome.valid_until",
                        "not_after_completion",
                        format!("must be after the completion date ({on})"),
                    ));
                } else if let Some(latest) = latest.filter(|latest| valid_until > *latest) {
                    errors.push(FieldError::new(
                        "outcome.valid_until",
                        "after_72nd_month",
                        format!("must not be after the child's 72nd month ({latest})"),
                    ));
                }
                card_number.map(|card_number| Self::InsuranceCardIssued {
                    card_number,
                    valid_until,
                })
            }
            Self::PaymentDecided {
                decision_number,
                amount_vnd,
            } => {
                let decision_number = number(&mut errors, &decision_number, "decision_number");
                // The amount Lifeline decided from the rules (`eligibility.amount_vnd`, when the
                // application carries it): the burial allowance is exactly that (10 x the base
                // salary), funeral support at least that (a province may add to it). Until
                // 2026-12-07 any positive amount was taken.
                let decided = application
                    .0
                    .get("eligibility.amount_vnd")
                    .and_then(Value::as_i64);
                if amount_vnd <= 0 {
                    errors.push(FieldError::new(
                        "outcome.amount_vnd",
                        "not_positive",
                        "must be a positive amount in VND",
                    ));
                } else if let Some(decided) = decided {
                    if procedure == ProcedureId::BurialAllowance && amount_vnd != decided {
                        errors.push(FieldError::new(
                            "outcome.amount_vnd",
                            "not_decided_amount",
                            format!("must be the decided amount, {decided} VND"),
                        ));
                    } else if procedure == ProcedureId::FuneralSupport && amount_vnd < decided {
                        errors.push(FieldError::new(
                            "outcome.amount_vnd",
                            "below_decided_amount",
                            format!("must not be below the decided amount, {decided} VND"),
                        ));
                    }
                }
                decision_number.map(|decision_number| Self::PaymentDecided {
                    decision_number,
                    amount_vnd,
                })
            }
            // Completes no procedure: refused by `fits` above (a reversal's is checked by
            // `validate_revocation`).
            Self::Revoked { decision_number } => {
                number(&mut errors, &decision_number, "decision_number")
                    .map(|decision_number| Self::Revoked { decision_number })
            }
        };
        match outcome {
            Some(outcome) if errors.is_empty() => Ok(outcome),
            _ => Err(errors.into()),
        }
    }
}

/// The prefilled application a task carries: dotted field paths (`child.full_name`) to values,
/// holding only fields its procedure's agency receives ([`ProcedureId::application_fields`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Application(pub BTreeMap<String, Value>);

impl Application {
    /// Keeps of `facts` (e.g. a flattened declaration plus facts added since) only what
    /// `procedure`'s agency receives.
    pub fn for_procedure(procedure: ProcedureId, facts: &BTreeMap<String, Value>) -> Self {
        Self(
            facts
                .iter()
                .filter(|(field, _)| procedure.receives(field))
                .map(|(field, value)| (field.clone(), value.clone()))
                .collect(),
        )
    }

    /// Refuses a field the agency of `procedure` does not receive.
    pub fn check(&self, procedure: ProcedureId) -> Result<(), DomainError> {
        match self.0.keys().find(|field| !procedure.receives(field)) {
            Some(field) => Err(DomainError::FieldNotReceived {
                procedure,
                field: field.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// A field holding an ISO date.
    pub fn date(&self, field: &str) -> Option<NaiveDate> {
        self.get(field)
            .and_then(Value::as_str)
            .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
    }

    /// The fields whose values differ from `other`, sorted.
    pub fn changed_fields(&self, other: &Application) -> Vec<String> {
        let mut changed: Vec<String> = self
            .0
            .keys()
            .chain(other.0.keys())
            .filter(|field| self.0.get(*field) != other.0.get(*field))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }
}

/// What is asked of a task. Times come from the caller (the clock is I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskCommand {
    Create {
        task_id: Uuid,
        procedure: ProcedureId,
        life_event_id: Uuid,
        office: OfficeCode,
        application: Application,
        due_at: DateTime<Utc>,
        source_event_id: Uuid,
        at: DateTime<Utc>,
    },
    Claim {
        by: String,
        at: DateTime<Utc>,
    },
    /// Completing an unclaimed task claims it first (connectors complete without a claim).
    Complete {
        by: String,
        outcome: TaskOutcome,
        at: DateTime<Utc>,
    },
    Reject {
        by: String,
        reason: String,
        at: DateTime<Utc>,
    },
    Cancel {
        reason: String,
        cause: Option<Uuid>,
        at: DateTime<Utc>,
    },
    Amend {
        application: Application,
        reason: String,
        cause: Option<Uuid>,
        at: DateTime<Utc>,
    },
    MarkOverdue {
        at: DateTime<Utc>,
    },
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Not created yet (the default state of the aggregate).
    #[default]
    New,
    Open,
    Claimed,
    Completed,
    Rejected,
    Cancelled,
}

impl TaskStatus {
    /// Completed, rejected or cancelled: nothing more changes.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Completed | Self::Rejected | Self::Cancelled)
    }
}

/// The state of a task, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: Option<Uuid>,
    pub procedure: Option<ProcedureId>,
    pub life_event_id: Option<Uuid>,
    pub office: Option<OfficeCode>,
    pub application: Application,
    pub due_at: Option<DateTime<Utc>>,
    pub status: TaskStatus,
    pub claimed_by: Option<String>,
    pub outcome: Option<TaskOutcome>,
    pub overdue: bool,
    /// What a re-issue or a reversal follows up (from its `TaskCreated`); `None` for a first
    /// task.
    #[serde(default)]
    pub follow_up: Option<FollowUp>,
}

impl Task {
    /// Decides on a command: the events to record, or a refusal. Pure.
    pub fn decide(&self, command: TaskCommand) -> Result<Vec<TaskEvent>, DomainError> {
        if let TaskCommand::Create {
            task_id,
            procedure,
            life_event_id,
            office,
            application,
            due_at,
            source_event_id,
            at,
        } = command
        {
            if self.status != TaskStatus::New {
                return Err(DomainError::TaskAlreadyCreated);
            }
            application.check(procedure)?;
            return Ok(vec![TaskEvent::TaskCreated(TaskCreated {
                task_id,
                procedure,
                agency: procedure.agency(),
                life_event_id,
                office,
                application,
                due_at,
                source_event_id,
                created_at: at,
                follow_up: None,
            })]);
        }
        let (task_id, procedure) = self.open_task()?;
        match command {
            TaskCommand::Create { .. } => Err(DomainError::TaskAlreadyCreated),
            TaskCommand::Claim { by, at } => {
                let by = parse_actor(&by)?;
                match &self.claimed_by {
                    Some(claimed_by) if *claimed_by == by => Ok(vec![]),
                    Some(claimed_by) => Err(DomainError::ClaimedByOther {
                        claimed_by: claimed_by.clone(),
                    }),
                    None => Ok(vec![TaskEvent::TaskClaimed(TaskClaimed {
                        task_id,
                        by,
                        at,
                    })]),
                }
            }
            TaskCommand::Complete { by, outcome, at } => {
                let by = parse_actor(&by)?;
                let mut events = self.claim_for(task_id, &by, at)?;
                // The completion's day in Vietnam, not in UTC (a day behind until 07:00 there).
                // A reversal is completed by the revocation, any other task by what its
                // procedure produces.
                let reversal = self
                    .follow_up
                    .as_ref()
                    .is_some_and(|follow_up| follow_up.kind == FollowUpKind::Reversal);
                let outcome = if reversal {
                    outcome.validate_revocation()?
                } else {
                    outcome.validate(procedure, vietnam_date(at), &self.application)?
                };
                events.push(TaskEvent::TaskCompleted(TaskCompleted {
                    task_id,
                    procedure: Some(procedure),
                    by,
                    outcome,
                    at,
                }));
                Ok(events)
            }
            TaskCommand::Reject { by, reason, at } => {
                let by = parse_actor(&by)?;
                let mut events = self.claim_for(task_id, &by, at)?;
                let reason = parse_reason(&reason)?;
                events.push(TaskEvent::TaskRejected(TaskRejected {
                    task_id,
                    by,
                    reason,
                    at,
                }));
                Ok(events)
            }
            TaskCommand::Cancel { reason, cause, at } => {
                let reason = parse_reason(&reason)?;
                Ok(vec![TaskEvent::TaskCancelled(TaskCancelled {
                    task_id,
                    reason,
                    cause,
                    at,
                })])
            }
            TaskCommand::Amend {
                application,
                reason,
                cause,
                at,
            } => {
                application.check(procedure)?;
                let reason = parse_reason(&reason)?;
                let changed_fields = self.application.changed_fields(&application);
                if changed_fields.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskAmended(TaskAmended {
                    task_id,
                    application,
                    changed_fields,
                    reason,
                    cause,
                    at,
                })])
            }
            TaskCommand::MarkOverdue { at } => {
                let due_at = self.due_at.unwrap_or(at);
                if self.overdue {
                    return Ok(vec![]);
                }
                if at <= due_at {
                    return Err(DomainError::NotYetDue { due_at });
                }
                Ok(vec![TaskEvent::TaskOverdue(TaskOverdue {
                    task_id,
                    due_at,
                    at,
                })])
            }
        }
    }

    fn open_task(&self) -> Result<(Uuid, ProcedureId), DomainError> {
        match (self.task_id, self.procedure) {
            (Some(_), Some(_)) if self.status.is_closed() => Err(DomainError::TaskClosed {
                status: self.status,
            }),
            (Some(task_id), Some(procedure)) => Ok((task_id, procedure)),
            _ => Err(DomainError::TaskNotCreated),
        }
    }

    /// The claim an actor needs before closing the task: none if it holds it, an implicit one if
    /// nobody does, a refusal if someone else does.
    fn claim_for(
        &self,
        task_id: Uuid,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, DomainError> {
        match &self.claimed_by {
            Some(claimed_by) if claimed_by == by => Ok(vec![]),
            Some(claimed_by) => Err(DomainError::ClaimedByOther {
                claimed_by: claimed_by.clone(),
            }),
            None => Ok(vec![TaskEvent::TaskClaimed(TaskClaimed {
                task_id,
                by: by.to_owned(),
                at,
            })]),
        }
    }
}

fn parse_actor(raw: &str) -> Result<String, DomainError> {
    parse_text(raw, "by", 200).map_err(|error| ValidationErrors::from(error).into())
}

fn parse_reason(raw: &str) -> Result<String, DomainError> {
    parse_text(raw, "reason", MAX_TEXT_CHARS).map_err(|error| ValidationErrors::from(error).into())
}

impl Aggregate for Task {
    const TYPE: &'static str = "task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TaskEvent::TaskCreated(event) => {
                self.task_id = Some(event.task_id);
                self.procedure = Some(event.procedure);
                self.life_event_id = Some(event.life_event_id);
                self.office = Some(event.office);
                self.application = event.application;
                self.due_at = Some(event.due_at);
                self.follow_up = event.follow_up;
                self.status = TaskStatus::Open;
            }
            TaskEvent::TaskClaimed(event) => {
                self.claimed_by = Some(event.by);
                self.status = TaskStatus::Claimed;
            }
            TaskEvent::TaskCompleted(event) => {
                self.outcome = Some(event.outcome);
                self.status = TaskStatus::Completed;
            }
            TaskEvent::TaskRejected(_) => self.status = TaskStatus::Rejected,
            TaskEvent::TaskCancelled(_) => self.status = TaskStatus::Cancelled,
            TaskEvent::TaskAmended(event) => self.application = event.application,
            TaskEvent::TaskOverdue(_) => self.overdue = true,
        }
    }
}
