//! Given events / when command / then events or refusal, for the life event and task aggregates.

mod common;

use std::collections::BTreeMap;

use common::{birth, birth_body, birth_from, date, death, life_event_id, task_id, time, today};
use cqrs_es::test::TestFramework;
use lifeline_model::declaration::Declaration;
use lifeline_model::error::DomainError;
use lifeline_model::life_event::{
    BirthRecorded, DeathRecorded, LifeEvent, LifeEventCommand, LifeEventCorrected, LifeEventEvent,
    LifeEventVoided, Reference,
};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{
    Application, FollowUp, FollowUpKind, Task, TaskAmended, TaskCancelled, TaskClaimed,
    TaskCommand, TaskCompleted, TaskCreated, TaskEvent, TaskOutcome, TaskOverdue, TaskRejected,
    TaskStatus,
};
use lifeline_model::validation::ValidationErrors;
use lifeline_model::values::OfficeCode;
use serde_json::json;
use uuid::Uuid;

type LifeEventTest = TestFramework<LifeEvent>;
type TaskTest = TestFramework<Task>;

// ---------------------------------------------------------------------------------------------
// Life events.

fn birth_recorded() -> LifeEventEvent {
    LifeEventEvent::BirthRecorded(BirthRecorded {
        life_event_id: life_event_id(),
        reference: Reference::for_life_event(life_event_id()),
        recorded_on: today(),
        late: false,
        declaration: birth(),
    })
}

fn voided() -> LifeEventEvent {
    LifeEventEvent::LifeEventVoided(LifeEventVoided {
        life_event_id: life_event_id(),
        reason: "recorded in error".into(),
        recorded_on: today(),
    })
}

fn record_birth_on(recorded_on: chrono::NaiveDate) -> LifeEventCommand {
    LifeEventCommand::RecordBirth {
        life_event_id: life_event_id(),
        declaration: birth(),
        recorded_on,
    }
}

fn corrected_birth() -> Declaration {
    let mut body = birth_body();
    body["child"]["full_name"] = json!("Nguyễn Minh Anh");
    Declaration::Birth(birth_from(body))
}

#[test]
fn record_birth() {
    LifeEventTest::with(())
        .given_no_previous_events()
        .when(record_birth_on(today()))
        .then_expect_events(vec![birth_recorded()]);
}

#[test]
fn a_birth_declared_after_60_days_is_late_not_refused() {
    let events = LifeEventTest::with(())
        .given_no_previous_events()
        .when(record_birth_on(date("2027-01-20")))
        .inspect_result()
        .unwrap();
    let LifeEventEvent::BirthRecorded(recorded) = &events[0] else {
        panic!("expected BirthRecorded, got {events:?}");
    };
    assert!(recorded.late);
}

#[test]
fn record_death_keeps_the_chosen_procedures_and_flags_late() {
    let events = LifeEventTest::with(())
        .given_no_previous_events()
        .when(LifeEventCommand::RecordDeath {
            life_event_id: life_event_id(),
            declaration: death(),
            recorded_on: date("2026-12-04"),
        })
        .inspect_result()
        .unwrap();
    assert_eq!(
        events,
        vec![LifeEventEvent::DeathRecorded(DeathRecorded {
            life_event_id: life_event_id(),
            reference: Reference::for_life_event(life_event_id()),
            recorded_on: date("2026-12-04"),
            late: true,
            declaration: death(),
        })]
    );
}

#[test]
fn record_twice_is_refused() {
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(record_birth_on(today()))
        .then_expect_error(DomainError::AlreadyRecorded);
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::RecordDeath {
            life_event_id: life_event_id(),
            declaration: death(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::AlreadyRecorded);
}

#[test]
fn correct() {
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::Correct {
            declaration: corrected_birth(),
            reason: " typo in the child's name ".into(),
            recorded_on: today(),
        })
        .then_expect_events(vec![LifeEventEvent::LifeEventCorrected(
            LifeEventCorrected {
                life_event_id: life_event_id(),
                reason: "typo in the child's name".into(),
                recorded_on: today(),
                changed_fields: vec!["child.full_name".into()],
                declaration: corrected_birth(),
            },
        )]);
}

#[test]
fn correct_with_nothing_changed_or_no_reason_or_other_kind_is_refused() {
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::Correct {
            declaration: Declaration::Birth(birth()),
            reason: "same".into(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::NothingChanged);
    let refusal = LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::Correct {
            declaration: corrected_birth(),
            reason: "  ".into(),
            recorded_on: today(),
        })
        .inspect_result()
        .unwrap_err();
    assert!(matches!(refusal, DomainError::Invalid(ref errors) if errors.fields() == ["reason"]));
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::Correct {
            declaration: Declaration::Death(death()),
            reason: "wrong form".into(),
            recorded_on: today(),
        })
        .then_expect_error_message("a Birth record cannot be corrected with a Death declaration");
}

#[test]
fn correct_or_void_before_recording_is_refused() {
    LifeEventTest::with(())
        .given_no_previous_events()
        .when(LifeEventCommand::Void {
            reason: "error".into(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::NotRecorded);
    LifeEventTest::with(())
        .given_no_previous_events()
        .when(LifeEventCommand::Correct {
            declaration: corrected_birth(),
            reason: "error".into(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::NotRecorded);
}

#[test]
fn void() {
    LifeEventTest::with(())
        .given(vec![birth_recorded()])
        .when(LifeEventCommand::Void {
            reason: "recorded in error".into(),
            recorded_on: today(),
        })
        .then_expect_events(vec![voided()]);
}

#[test]
fn correct_after_void_is_refused() {
    LifeEventTest::with(())
        .given(vec![birth_recorded(), voided()])
        .when(LifeEventCommand::Correct {
            declaration: corrected_birth(),
            reason: "typo".into(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::Voided);
}

#[test]
fn void_twice_is_refused() {
    LifeEventTest::with(())
        .given(vec![birth_recorded(), voided()])
        .when(LifeEventCommand::Void {
            reason: "again".into(),
            recorded_on: today(),
        })
        .then_expect_error(DomainError::Voided);
}

#[test]
fn references_are_deterministic_and_parse_back() {
    let reference = Reference::for_life_event(life_event_id());
    assert_eq!(reference, Reference::for_life_event(life_event_id()));
    assert_eq!(reference.as_str().len(), 13);
    assert!(reference.as_str().starts_with("LL-"));
    assert_ne!(reference, Reference::for_life_event(Uuid::nil()));
    let typed = reference.as_str().to_lowercase().replace('0', "o");
    assert_eq!(Reference::parse(&typed).unwrap(), reference);
    assert!(Reference::parse("LL-123").is_err());
    assert!(Reference::parse("LL-UUUUUUUUUU").is_err());
}

// ---------------------------------------------------------------------------------------------
// Tasks.

fn office() -> OfficeCode {
    OfficeCode::parse("79-26734").unwrap()
}

fn application(procedure: ProcedureId) -> Application {
    let mut facts: BTreeMap<_, _> = Declaration::Birth(birth()).flatten();
    facts.insert("child.personal_id".into(), json!("079326000001"));
    Application::for_procedure(procedure, &facts)
}

fn created(procedure: ProcedureId) -> TaskEvent {
    TaskEvent::TaskCreated(TaskCreated {
        task_id: task_id(),
        procedure,
        agency: procedure.agency(),
        life_event_id: life_event_id(),
        office: office(),
        application: application(procedure),
        due_at: time("2026-11-24T17:00:00+07:00"),
        source_event_id: Uuid::nil(),
        created_at: time("2026-11-21T09:00:00+07:00"),
        follow_up: None,
    })
}

fn claimed(by: &str) -> TaskEvent {
    TaskEvent::TaskClaimed(TaskClaimed {
        task_id: task_id(),
        by: by.into(),
        at: time("2026-11-21T10:00:00+07:00"),
    })
}

fn at() -> chrono::DateTime<chrono::Utc> {
    time("2026-11-21T10:00:00+07:00")
}

fn insurance_card(valid_until: &str) -> TaskOutcome {
    TaskOutcome::InsuranceCardIssued {
        card_number: "TE1797926000001".into(),
        valid_until: date(valid_until),
    }
}

#[test]
fn task_create_keeps_only_the_fields_the_agency_receives() {
    let procedure = ProcedureId::ChildHealthInsurance;
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::Create {
            task_id: task_id(),
            procedure,
            life_event_id: life_event_id(),
            office: office(),
            application: application(procedure),
            due_at: time("2026-11-24T17:00:00+07:00"),
            source_event_id: Uuid::nil(),
            at: time("2026-11-21T09:00:00+07:00"),
        })
        .then_expect_events(vec![created(procedure)]);
    let application = application(procedure);
    assert!(application.get("mother.personal_id").is_none());
    assert_eq!(
        application.get("child.personal_id"),
        Some(&json!("079326000001"))
    );
    assert_eq!(
        match created(procedure) {
            TaskEvent::TaskCreated(created) => created.agency,
            _ => unreachable!(),
        },
        AgencyId::SocialSecurity
    );
}

#[test]
fn task_create_with_a_field_the_agency_must_not_see_is_refused() {
    let mut application = application(ProcedureId::ChildHealthInsurance);
    application
        .0
        .insert("mother.personal_id".into(), json!("079190001234"));
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::Create {
            task_id: task_id(),
            procedure: ProcedureId::ChildHealthInsurance,
            life_event_id: life_event_id(),
            office: office(),
            application,
            due_at: at(),
            source_event_id: Uuid::nil(),
            at: at(),
        })
        .then_expect_error(DomainError::FieldNotReceived {
            procedure: ProcedureId::ChildHealthInsurance,
            field: "mother.personal_id".into(),
        });
}

#[test]
fn task_create_twice_is_refused() {
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::Create {
            task_id: task_id(),
            procedure: ProcedureId::BirthRegistration,
            life_event_id: life_event_id(),
            office: office(),
            application: Application::default(),
            due_at: at(),
            source_event_id: Uuid::nil(),
            at: at(),
        })
        .then_expect_error(DomainError::TaskAlreadyCreated);
}

#[test]
fn task_commands_before_creation_are_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::Claim {
            by: "officer-1".into(),
            at: at(),
        })
        .then_expect_error(DomainError::TaskNotCreated);
}

#[test]
fn claim() {
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::Claim {
            by: "officer-1".into(),
            at: at(),
        })
        .then_expect_events(vec![claimed("officer-1")]);
}

#[test]
fn claim_again_by_the_holder_is_a_no_op() {
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Claim {
            by: "officer-1".into(),
            at: at(),
        })
        .then_expect_events(vec![]);
}

#[test]
fn claim_by_other_is_refused() {
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Claim {
            by: "officer-2".into(),
            at: at(),
        })
        .then_expect_error(DomainError::ClaimedByOther {
            claimed_by: "officer-1".into(),
        });
}

#[test]
fn complete() {
    let outcome = TaskOutcome::BirthRegistered {
        certificate_number: "123/2026/KS".into(),
    };
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::BirthRegistered {
                certificate_number: " 123/2026/KS ".into(),
            },
            at: at(),
        })
        .then_expect_events(vec![TaskEvent::TaskCompleted(TaskCompleted {
            task_id: task_id(),
            procedure: Some(ProcedureId::BirthRegistration),
            by: "officer-1".into(),
            outcome,
            at: at(),
        })]);
}

#[test]
fn complete_unclaimed_claims_first() {
    let outcome = TaskOutcome::BirthRegistered {
        certificate_number: "123/2026/KS".into(),
    };
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::Complete {
            by: "connector:civil-registry".into(),
            outcome: outcome.clone(),
            at: at(),
        })
        .then_expect_events(vec![
            claimed("connector:civil-registry"),
            TaskEvent::TaskCompleted(TaskCompleted {
                task_id: task_id(),
                procedure: Some(ProcedureId::BirthRegistration),
                by: "connector:civil-registry".into(),
                outcome,
                at: at(),
            }),
        ]);
}

#[test]
fn complete_claimed_by_other_is_refused() {
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Complete {
            by: "officer-2".into(),
            outcome: TaskOutcome::BirthRegistered {
                certificate_number: "1".into(),
            },
            at: at(),
        })
        .then_expect_error(DomainError::ClaimedByOther {
            claimed_by: "officer-1".into(),
        });
}

#[test]
fn complete_with_an_outcome_of_another_procedure_is_refused() {
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::DeathRegistered {
                extract_number: "9".into(),
            },
            at: at(),
        })
        .then_expect_error(DomainError::OutcomeNotForProcedure {
            procedure: ProcedureId::BirthRegistration,
            outcome: "death_registered",
        });
}

/// A reversal task of `procedure` (the record was voided after the procedure completed).
fn reversal_created(procedure: ProcedureId) -> TaskEvent {
    let TaskEvent::TaskCreated(mut created) = created(procedure) else {
        unreachable!()
    };
    created.follow_up = Some(FollowUp {
        kind: FollowUpKind::Reversal,
        follows: Uuid::from_u128(7),
        reason: "the record was voided".into(),
    });
    TaskEvent::TaskCreated(created)
}

#[test]
fn a_reversal_is_completed_by_a_revocation_and_nothing_else() {
    // The procedure's own outcome would say it was done again.
    TaskTest::with(())
        .given(vec![reversal_created(ProcedureId::ResidenceRegistration)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::ResidenceRegistered {
                entry_number: "CT-1".into(),
            },
            at: at(),
        })
        .then_expect_error(DomainError::OutcomeNotForReversal {
            outcome: "residence_registered",
        });
    TaskTest::with(())
        .given(vec![reversal_created(ProcedureId::ResidenceRegistration)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::Revoked {
                decision_number: " TH-2026-1 ".into(),
            },
            at: at(),
        })
        .then_expect_events(vec![
            claimed_at("officer-1", at()),
            TaskEvent::TaskCompleted(TaskCompleted {
                task_id: task_id(),
                procedure: Some(ProcedureId::ResidenceRegistration),
                by: "officer-1".into(),
                outcome: TaskOutcome::Revoked {
                    decision_number: "TH-2026-1".into(),
                },
                at: at(),
            }),
        ]);
    let refusal = TaskTest::with(())
        .given(vec![reversal_created(ProcedureId::BurialAllowance)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::Revoked {
                decision_number: "  ".into(),
            },
            at: at(),
        })
        .inspect_result()
        .unwrap_err();
    let DomainError::Invalid(ValidationErrors(errors)) = refusal else {
        panic!("expected invalid input, got {refusal:?}");
    };
    assert_eq!(errors[0].field, "outcome.decision_number");
    // An ordinary task is not completed by a revocation.
    TaskTest::with(())
        .given(vec![created(ProcedureId::ResidenceRegistration)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::Revoked {
                decision_number: "TH-2026-1".into(),
            },
            at: at(),
        })
        .then_expect_error(DomainError::OutcomeNotForProcedure {
            procedure: ProcedureId::ResidenceRegistration,
            outcome: "revoked",
        });
}

fn claimed_at(by: &str, at: chrono::DateTime<chrono::Utc>) -> TaskEvent {
    TaskEvent::TaskClaimed(TaskClaimed {
        task_id: task_id(),
        by: by.into(),
        at,
    })
}

fn completion_refusal(procedure: ProcedureId, outcome: TaskOutcome) -> Vec<String> {
    let refusal = TaskTest::with(())
        .given(vec![created(procedure)])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome,
            at: at(),
        })
        .inspect_result()
        .unwrap_err();
    match refusal {
        DomainError::Invalid(ValidationErrors(errors)) => {
            errors.into_iter().map(|error| error.field).collect()
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn completion_outcomes_are_validated_per_procedure() {
    assert_eq!(
        completion_refusal(
            ProcedureId::BirthRegistration,
            TaskOutcome::BirthRegistered {
                certificate_number: " ".into()
            }
        ),
        ["outcome.certificate_number"]
    );
    assert_eq!(
        completion_refusal(
            ProcedureId::BurialAllowance,
            TaskOutcome::PaymentDecided {
                decision_number: "QD-1".into(),
                amount_vnd: 0
            }
        ),
        ["outcome.amount_vnd"]
    );
    assert_eq!(
        completion_refusal(
            ProcedureId::ChildHealthInsurance,
            insurance_card("2026-11-20")
        ),
        ["outcome.valid_until"]
    );
    // The child was born 2026-11-20: the card is valid until the 72nd month at most.
    assert_eq!(
        completion_refusal(
            ProcedureId::ChildHealthInsurance,
            insurance_card("2032-11-21")
        ),
        ["outcome.valid_until"]
    );
    let events = TaskTest::with(())
        .given(vec![created(ProcedureId::ChildHealthInsurance)])
        .when(TaskCommand::Complete {
            by: "bhxh-1".into(),
            outcome: insurance_card("2032-11-20"),
            at: at(),
        })
        .inspect_result()
        .unwrap();
    assert_eq!(events.len(), 2);
}

/// The completion's day is Vietnam's: at 03:00 on 22 November there (still the 21st in UTC)
/// a card valid until the 22nd is not valid after its completion day.
#[test]
fn a_completion_is_dated_in_vietnam() {
    let refusal = TaskTest::with(())
        .given(vec![created(ProcedureId::ChildHealthInsurance)])
        .when(TaskCommand::Complete {
            by: "bhxh-1".into(),
            outcome: insurance_card("2026-11-22"),
            at: time("2026-11-22T03:00:00+07:00"),
        })
        .inspect_result()
        .unwrap_err();
    let DomainError::Invalid(ValidationErrors(errors)) = refusal else {
        panic!("expected invalid input, got {refusal:?}");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "outcome.valid_until");
    assert_eq!(errors[0].code, "not_after_completion");
    assert!(errors[0].message.contains("2026-11-22"), "{errors:?}");
}

#[test]
fn complete_twice_is_refused() {
    // As stored before completions named their procedure: it still ends the task.
    let completed = TaskEvent::TaskCompleted(TaskCompleted {
        task_id: task_id(),
        procedure: None,
        by: "officer-1".into(),
        outcome: TaskOutcome::BirthRegistered {
            certificate_number: "1".into(),
        },
        at: at(),
    });
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
            completed,
        ])
        .when(TaskCommand::Complete {
            by: "officer-1".into(),
            outcome: TaskOutcome::BirthRegistered {
                certificate_number: "2".into(),
            },
            at: at(),
        })
        .then_expect_error(DomainError::TaskClosed {
            status: TaskStatus::Completed,
        });
}

#[test]
fn reject() {
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Reject {
            by: "officer-1".into(),
            reason: "birth notice missing".into(),
            at: at(),
        })
        .then_expect_events(vec![TaskEvent::TaskRejected(TaskRejected {
            task_id: task_id(),
            by: "officer-1".into(),
            reason: "birth notice missing".into(),
            at: at(),
        })]);
}

#[test]
fn reject_without_reason_is_refused() {
    let refusal = TaskTest::with(())
        .given(vec![
            created(ProcedureId::BirthRegistration),
            claimed("officer-1"),
        ])
        .when(TaskCommand::Reject {
            by: "officer-1".into(),
            reason: "".into(),
            at: at(),
        })
        .inspect_result()
        .unwrap_err();
    assert_eq!(refusal.code(), "invalid_input");
}

fn cancelled() -> TaskEvent {
    TaskEvent::TaskCancelled(TaskCancelled {
        task_id: task_id(),
        reason: "life event voided".into(),
        cause: Some(Uuid::nil()),
        at: at(),
    })
}

#[test]
fn cancel() {
    TaskTest::with(())
        .given(vec![created(ProcedureId::ResidenceRegistration)])
        .when(TaskCommand::Cancel {
            reason: "life event voided".into(),
            cause: Some(Uuid::nil()),
            at: at(),
        })
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn a_cancelled_task_can_no_longer_be_claimed() {
    TaskTest::with(())
        .given(vec![
            created(ProcedureId::ResidenceRegistration),
            cancelled(),
        ])
        .when(TaskCommand::Claim {
            by: "police-1".into(),
            at: at(),
        })
        .then_expect_error(DomainError::TaskClosed {
            status: TaskStatus::Cancelled,
        });
}

#[test]
fn amend() {
    let procedure = ProcedureId::ResidenceRegistration;
    let mut amended = application(procedure);
    amended
        .0
        .insert("child.full_name".into(), json!("Nguyễn Minh Anh"));
    TaskTest::with(())
        .given(vec![created(procedure)])
        .when(TaskCommand::Amend {
            application: amended.clone(),
            reason: "life event corrected".into(),
            cause: None,
            at: at(),
        })
        .then_expect_events(vec![TaskEvent::TaskAmended(TaskAmended {
            task_id: task_id(),
            application: amended,
            changed_fields: vec!["child.full_name".into()],
            reason: "life event corrected".into(),
            cause: None,
            at: at(),
        })]);
    TaskTest::with(())
        .given(vec![created(procedure)])
        .when(TaskCommand::Amend {
            application: application(procedure),
            reason: "same".into(),
            cause: None,
            at: at(),
        })
        .then_expect_events(vec![]);
}

#[test]
fn overdue() {
    let overdue = TaskEvent::TaskOverdue(TaskOverdue {
        task_id: task_id(),
        due_at: time("2026-11-24T17:00:00+07:00"),
        at: time("2026-11-25T08:00:00+07:00"),
    });
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::MarkOverdue {
            at: time("2026-11-25T08:00:00+07:00"),
        })
        .then_expect_events(vec![overdue.clone()]);
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration), overdue])
        .when(TaskCommand::MarkOverdue {
            at: time("2026-11-26T08:00:00+07:00"),
        })
        .then_expect_events(vec![]);
    TaskTest::with(())
        .given(vec![created(ProcedureId::BirthRegistration)])
        .when(TaskCommand::MarkOverdue {
            at: time("2026-11-24T16:00:00+07:00"),
        })
        .then_expect_error(DomainError::NotYetDue {
            due_at: time("2026-11-24T17:00:00+07:00"),
        });
}

/// A payment's amount is the one decided from the rules (`eligibility.amount_vnd`): exactly
/// for the burial allowance, at least for funeral support (a province may add to it).
#[test]
fn a_payment_is_checked_against_the_decided_amount() {
    let mut facts = BTreeMap::new();
    facts.insert("eligibility.amount_vnd".to_owned(), json!(23_400_000));
    let on = date("2026-11-21");
    let pay = |amount_vnd| TaskOutcome::PaymentDecided {
        decision_number: "QD-1".into(),
        amount_vnd,
    };
    let codes = |result: Result<TaskOutcome, DomainError>| match result {
        Ok(_) => Vec::new(),
        Err(DomainError::Invalid(ValidationErrors(errors))) => errors
            .into_iter()
            .map(|error| (error.field, error.code))
            .collect(),
        Err(other) => panic!("{other:?}"),
    };
    let burial = Application::for_procedure(ProcedureId::BurialAllowance, &facts);
    assert!(burial.0.contains_key("eligibility.amount_vnd"));
    assert!(codes(pay(23_400_000).validate(ProcedureId::BurialAllowance, on, &burial)).is_empty());
    for amount in [1, 23_399_999, 23_400_001, i64::MAX] {
        assert_eq!(
            codes(pay(amount).validate(ProcedureId::BurialAllowance, on, &burial)),
            [(
                "outcome.amount_vnd".to_owned(),
                "not_decided_amount".to_owned()
            )]
        );
    }
    facts.insert("eligibility.amount_vnd".to_owned(), json!(7_200_000));
    let support = Application::for_procedure(ProcedureId::FuneralSupport, &facts);
    assert!(codes(pay(7_200_000).validate(ProcedureId::FuneralSupport, on, &support)).is_empty());
    assert!(codes(pay(9_000_000).validate(ProcedureId::FuneralSupport, on, &support)).is_empty());
    assert_eq!(
        codes(pay(7_199_999).validate(ProcedureId::FuneralSupport, on, &support)),
        [(
            "outcome.amount_vnd".to_owned(),
            "below_decided_amount".to_owned()
        )]
    );
    // Without a decided amount (an application from before it was carried), any positive one.
    let undecided = Application::default();
    assert!(codes(pay(1).validate(ProcedureId::BurialAllowance, on, &undecided)).is_empty());
}

/// A correction of the date of birth decides `late` again against the record's own day, both
/// ways (until 2026-12-07 the flag stayed as first recorded).
#[test]
fn a_corrected_date_of_birth_decides_late_again() {
    use cqrs_es::Aggregate;
    let corrected = |declaration: Declaration| {
        LifeEventEvent::LifeEventCorrected(LifeEventCorrected {
            life_event_id: life_event_id(),
            reason: "sai ngày sinh".into(),
            recorded_on: today(),
            changed_fields: vec!["child.date_of_birth".into()],
            declaration,
        })
    };
    let mut state = LifeEvent::default();
    state.apply(birth_recorded());
    assert!(!state.late);
    let mut body = birth_body();
    body["child"]["date_of_birth"] = json!("2026-08-01");
    body["birth_notice"] = serde_json::Value::Null;
    let earlier = Declaration::Birth(birth_from(body));
    assert!(earlier.is_late(today()));
    state.apply(corrected(earlier));
    assert!(state.late, "112 days before the record's day");
    state.apply(corrected(Declaration::Birth(birth())));
    assert!(!state.late, "corrected back");
}
