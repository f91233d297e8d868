//! `corrections`: a corrected record amends each open task whose application changed and
//! re-issues each completed one; its follow-ups follow the corrected choice of procedures and
//! the office the corrected facts route them to, and a death's are decided again ([`FollowUps`]);
//! a voided record cancels open tasks and reverses completed ones.

use std::collections::BTreeMap;

use serde_json::Value;

use lifeline_model::declaration::Declaration;
use lifeline_model::life_event::{LifeEventCorrected, LifeEventVoided};
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::EligibilityDecided;
use lifeline_model::task::{Application, FollowUp, FollowUpKind, TaskCommand, TaskStatus};
use lifeline_model::values::{OfficeCode, PersonalId, MAX_TEXT_CHARS};

use super::death_followups::{self, FollowUpDecision};
use super::{
    birth_followups, new_task, Command, RuleError, BIRTH_FOLLOWUPS, CORRECTIONS, DEATH_FOLLOWUPS,
};
use crate::engine::{deterministic_id, task_id};
use crate::facts::{declaration_facts, is_added_fact, Context, LifeEventFacts, Source, TaskFacts};

/// The deterministic event id of what `cause` appends to `task_id`.
pub fn update_event_id(cause: uuid::Uuid, task_id: uuid::Uuid) -> uuid::Uuid {
    deterministic_id(&format!("{CORRECTIONS}/{cause}/{task_id}"))
}

/// The last task of each procedure (tasks in creation order), leaving out a reversal the agency
/// rejected or that was cancelled: the task it would have reversed still stands. (Until
/// 2026-12-07 such a reversal was the procedure's latest, "nothing standing": a correction
/// that chose the procedure again, or made the deceased eligible again, made a new first
/// task beside the completed one, a second card or a second payment.)
fn latest_per_procedure(tasks: &[TaskFacts]) -> BTreeMap<ProcedureId, &TaskFacts> {
    tasks
        .iter()
        .filter(|task| {
            let reversal = task
                .created
                .follow_up
                .as_ref()
                .is_some_and(|follow_up| follow_up.kind == FollowUpKind::Reversal);
            !(reversal
                && matches!(
                    task.state.status,
                    TaskStatus::Rejected | TaskStatus::Cancelled
                ))
        })
        .map(|task| (task.created.procedure, task))
        .collect()
}

/// What `task`'s application is for a record whose declaration gives `declared`
/// ([`declaration_facts`]): those facts, with what the policies added to the task (the child's
/// number, the certificate's...), reduced to the task's procedure.
pub fn application_for(task: &TaskFacts, declared: &BTreeMap<String, Value>) -> Application {
    let mut facts = declared.clone();
    for (field, value) in &task.state.application.0 {
        if is_added_fact(field) {
            facts.insert(field.clone(), value.clone());
        }
    }
    Application::for_procedure(task.created.procedure, &facts)
}

/// What a correction does to the follow-ups of a record (a birth's residence registration and
/// child health insurance; a death's residence deregistration, burial allowance and funeral
/// support), which were chosen by the declarant and, for a death, decided on the record's facts.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUps {
    /// Not made yet (the registration not completed, or its follow-up policy not run yet):
    /// whoever makes them later reads the record as corrected. Their tasks, if any, are amended
    /// like any other.
    NotDecided,
    /// A death's, made: decided again on the record as corrected.
    Redecide(Redecision),
    /// A birth's, made: the procedures chosen now get a task, the others none.
    Rechoose(BirthChoice),
    /// The record changed again after this correction: the later change takes care of them.
    LeftToLater,
}

/// What following a birth record's choice of follow-ups needs, once `birth-followups` has run
/// (the child has a number).
#[derive(Debug, Clone, PartialEq)]
pub struct BirthChoice {
    pub child_personal_id: PersonalId,
    pub certificate_number: String,
    /// The birth registration's completion `birth-followups` reacted to: a procedure's first
    /// task gets its ids, as `birth-followups` would make it.
    pub completion: Source,
}

/// The follow-up procedures of `group`.
fn follow_up_procedures(group: ProcedureGroup) -> &'static [ProcedureId] {
    match group {
        ProcedureGroup::Birth => &birth_followups::PROCEDURES,
        ProcedureGroup::Death => &death_followups::PROCEDURES,
    }
}

/// The task that stands for a procedure whose latest task is `latest`: none once that is a
/// reversal (an earlier correction withdrew a completed one), which is neither amended nor
/// withdrawn again.
fn standing(latest: Option<&TaskFacts>) -> Option<&TaskFacts> {
    latest.filter(|task| {
        task.created
            .follow_up
            .as_ref()
            .is_none_or(|follow_up| follow_up.kind != FollowUpKind::Reversal)
    })
}

/// What re-deciding a death record's follow-ups needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Redecision {
    /// Each chosen follow-up procedure as `death-followups` decides it for the record as
    /// corrected ([`death_followups::decide_chosen`]).
    pub now: Vec<FollowUpDecision>,
    /// The latest decision recorded for each follow-up procedure.
    pub decided: BTreeMap<ProcedureId, EligibilityDecided>,
    /// The death registration's completion that `death-followups` reacts to: a procedure never
    /// decided (newly chosen, or `death-followups` not run yet) is decided under its ids, as
    /// `death-followups` would decide it, so that the two never both create its task.
    pub completion: Source,
}

/// On `LifeEventCorrected`: open tasks whose application changed are amended, completed ones
/// re-issued; a death record's follow-ups are decided again ([`FollowUps`]).
pub fn react_corrected(
    event: &LifeEventCorrected,
    life_event: &LifeEventFacts,
    tasks: &[TaskFacts],
    follow_ups: &FollowUps,
    context: &Context<'_>,
) -> Result<Vec<Command>, RuleError> {
    let declared = declaration_facts(&event.declaration, life_event.late);
    let mut commands = Vec::new();
    let latest = latest_per_procedure(tasks);
    let follow_up = follow_up_procedures(life_event.declaration.group());
    for (&procedure, task) in &latest {
        if !matches!(follow_ups, FollowUps::NotDecided) && follow_up.contains(&procedure) {
            continue;
        }
        let application = application_for(task, &declared);
        follow_application(
            event,
            procedure,
            task,
            application,
            &task.created.office,
            context,
            &mut commands,
        )?;
    }
    for &procedure in follow_up {
        let latest = latest.get(&procedure).copied();
        match follow_ups {
            FollowUps::Redecide(redecision) => redecide(
                event,
                life_event,
                procedure,
                latest,
                redecision,
                context,
                &mut commands,
            )?,
            FollowUps::Rechoose(choice) => rechoose(
                event,
                life_event,
                procedure,
                latest,
                choice,
                context,
                &mut commands,
            )?,
            FollowUps::NotDecided | FollowUps::LeftToLater => {}
        }
    }
    Ok(commands)
}

/// `task`, the latest of `procedure`, brought to `application`: amended while open, re-issued
/// (at `office`) once completed if the application changed.
fn follow_application(
    event: &LifeEventCorrected,
    procedure: ProcedureId,
    task: &TaskFacts,
    application: Application,
    office: &OfficeCode,
    context: &Context<'_>,
    commands: &mut Vec<Command>,
) -> Result<(), RuleError> {
    match task.state.status {
        TaskStatus::Open | TaskStatus::Claimed => {
            let events = task.state.decide(TaskCommand::Amend {
                application,
                reason: event.reason.clone(),
                cause: Some(context.source.event_id),
                at: context.now,
            })?;
            for task_event in events {
                commands.push(Command::UpdateTask {
                    task_id: task.task_id(),
                    expected_version: task.version.0,
                    event_id: update_event_id(context.source.event_id, task.task_id()),
                    event: task_event,
                });
            }
        }
        TaskStatus::Completed => {
            if task
                .state
                .application
                .changed_fields(&application)
                .is_empty()
            {
                return Ok(());
            }
            commands.push(Command::CreateTask(new_task(
                CORRECTIONS,
                procedure,
                task.created.life_event_id,
                office.clone(),
                &application.0,
                context,
                Some(FollowUp {
                    kind: FollowUpKind::Reissue,
                    follows: task.task_id(),
                    reason: event.reason.clone(),
                }),
            )));
        }
        _ => {}
    }
    Ok(())
}

/// `task`, the standing task of a follow-up procedure, brought to `application` at `office`,
/// where the corrected facts route it (a corrected residence can move it to another area's
/// office): an open task there is amended; an open task elsewhere is cancelled and made again
/// at `office`; a completed one is re-issued at `office` if its application changed.
fn follow_routed(
    event: &LifeEventCorrected,
    procedure: ProcedureId,
    task: &TaskFacts,
    application: Application,
    office: &OfficeCode,
    context: &Context<'_>,
    commands: &mut Vec<Command>,
) -> Result<(), RuleError> {
    let open = matches!(task.state.status, TaskStatus::Open | TaskStatus::Claimed);
    if task.created.office == *office || !open {
        return follow_application(
            event,
            procedure,
            task,
            application,
            office,
            context,
            commands,
        );
    }
    withdraw(
        event,
        task,
        &format!("moved to office {office}"),
        context,
        commands,
    )?;
    // A re-issue moved stays a re-issue of the task it follows (until 2026-12-07 the new
    // office got a plain first application: a second card or payment beside the first).
    commands.push(Command::CreateTask(new_task(
        CORRECTIONS,
        procedure,
        task.created.life_event_id,
        office.clone(),
        &application.0,
        context,
        task.created.follow_up.clone(),
    )));
    Ok(())
}

/// `task`, the latest of its procedure, withdrawn: cancelled while open (`why` added to the
/// correction's reason), reversed once completed.
fn withdraw(
    event: &LifeEventCorrected,
    task: &TaskFacts,
    why: &str,
    context: &Context<'_>,
    commands: &mut Vec<Command>,
) -> Result<(), RuleError> {
    match task.state.status {
        TaskStatus::Open | TaskStatus::Claimed => {
            for task_event in task.state.decide(TaskCommand::Cancel {
                reason: with_why(&event.reason, why),
                cause: Some(context.source.event_id),
                at: context.now,
            })? {
                commands.push(Command::UpdateTask {
                    task_id: task.task_id(),
                    expected_version: task.version.0,
                    event_id: update_event_id(context.source.event_id, task.task_id()),
                    event: task_event,
                });
            }
        }
        TaskStatus::Completed => commands.push(Command::CreateTask(new_task(
            CORRECTIONS,
            task.created.procedure,
            task.created.life_event_id,
            task.created.office.clone(),
            &task.state.application.0,
            context,
            Some(FollowUp {
                kind: FollowUpKind::Reversal,
                follows: task.task_id(),
                reason: with_why(&event.reason, why),
            }),
        ))),
        _ => {}
    }
    Ok(())
}

/// Who makes a follow-up procedure's new task, and from what source: its first task (no
/// `latest`) as `follow_up_policy` would make it from `completion`, so that a completion
/// delivered again finds it instead of making a second one; a later one (after a withdrawal)
/// as this correction.
fn creator<'a>(
    latest: Option<&TaskFacts>,
    follow_up_policy: &'static str,
    completion: Source,
    context: &Context<'a>,
) -> (&'static str, Context<'a>) {
    match latest {
        None => (
            follow_up_policy,
            Context {
                source: as_of_correction(completion, context),
                ..*context
            },
        ),
        Some(_) => (CORRECTIONS, *context),
    }
}

/// `completion` as the source of a follow-up made by this correction: its ids (those the
/// follow-up policy gives it), but its time limit counted from the correction. (Until
/// 2026-12-07 from the completion: a procedure the correction made eligible weeks after the
/// registration completed was overdue when created.)
fn as_of_correction(completion: Source, context: &Context<'_>) -> Source {
    Source {
        recorded_at: completion.recorded_at.max(context.source.recorded_at),
        ..completion
    }
}

/// `reason: why`, cut to the longest reason a task event takes.
fn with_why(reason: &str, why: &str) -> String {
    format!("{reason}: {why}")
        .chars()
        .take(MAX_TEXT_CHARS)
        .collect()
}

/// One follow-up procedure of a birth record after `event`: chosen now, its standing task
/// follows the corrected facts, or one is made if none stands (the procedure's first with the
/// ids `birth-followups` gives it, so that a completion delivered again finds it); no longer
/// chosen, its standing task is withdrawn.
fn rechoose(
    event: &LifeEventCorrected,
    life_event: &LifeEventFacts,
    procedure: ProcedureId,
    latest: Option<&TaskFacts>,
    choice: &BirthChoice,
    context: &Context<'_>,
    commands: &mut Vec<Command>,
) -> Result<(), RuleError> {
    let Declaration::Birth(declaration) = &life_event.declaration else {
        return Ok(());
    };
    let standing = standing(latest);
    if !declaration.procedures.contains(&procedure) {
        if let Some(task) = standing {
            withdraw(event, task, "no longer applied for", context, commands)?;
        }
        return Ok(());
    }
    let facts = birth_followups::prefill(
        life_event,
        &choice.child_personal_id,
        &choice.certificate_number,
    );
    let office = birth_followups::office(procedure, declaration, context.reference)?;
    match standing {
        Some(task) if task.state.status != TaskStatus::Cancelled => {
            let application = Application::for_procedure(procedure, &facts);
            follow_routed(
                event,
                procedure,
                task,
                application,
                &office,
                context,
                commands,
            )
        }
        _ => {
            let (policy, context) = creator(latest, BIRTH_FOLLOWUPS, choice.completion, context);
            commands.push(Command::CreateTask(new_task(
                policy,
                procedure,
                life_event.life_event_id,
                office,
                &facts,
                &context,
                None,
            )));
            Ok(())
        }
    }
}

/// One follow-up procedure of a death record decided again after `event`:
/// - never decided and now chosen: decided as `death-followups` would (its ids), with its task
///   if eligible;
/// - no longer chosen: its latest task withdrawn;
/// - decided differently (the date of death moved the amount, the deceased's number changed who
///   the registers find...): the new decision recorded under the id a task of this correction
///   has; eligible: the open task amended, the completed one re-issued if its application
///   changed, a new task if none is left; no longer eligible: the task withdrawn;
/// - decided the same: its task follows the corrected facts like any other.
///
/// A procedure whose latest task is a reversal has no task standing: it gets a new one if it
/// is eligible again, and nothing more if it is not.
fn redecide(
    event: &LifeEventCorrected,
    life_event: &LifeEventFacts,
    procedure: ProcedureId,
    latest: Option<&TaskFacts>,
    redecision: &Redecision,
    context: &Context<'_>,
    commands: &mut Vec<Command>,
) -> Result<(), RuleError> {
    let now = redecision
        .now
        .iter()
        .find(|decided| decided.procedure == procedure);
    let Some(before) = redecision.decided.get(&procedure) else {
        if let Some(first) = now {
            let context = Context {
                source: as_of_correction(redecision.completion, context),
                ..*context
            };
            commands.extend(death_followups::commands(
                first,
                life_event.life_event_id,
                &context,
            ));
        }
        return Ok(());
    };
    let standing = standing(latest);
    let Some(now) = now else {
        if let Some(task) = standing {
            withdraw(event, task, "no longer applied for", context, commands)?;
        }
        return Ok(());
    };
    let changed = !now.decision.same_as(before);
    let open_or_done = standing.filter(|task| {
        matches!(
            task.state.status,
            TaskStatus::Open | TaskStatus::Claimed | TaskStatus::Completed
        )
    });
    let creates = now.task.is_some()
        && standing.is_none_or(|task| task.state.status == TaskStatus::Cancelled);
    if changed || creates {
        commands.push(Command::DecideEligibility {
            key: task_id(CORRECTIONS, context.source.event_id, procedure),
            decision: now
                .decision
                .event(life_event.life_event_id, procedure, context.now),
        });
    }
    match (&now.task, open_or_done) {
        (Some((office, facts)), Some(task)) => {
            let application = Application::for_procedure(procedure, facts);
            follow_routed(
                event,
                procedure,
                task,
                application,
                office,
                context,
                commands,
            )?;
        }
        (Some((office, facts)), None) if creates => {
            let (policy, context) =
                creator(latest, DEATH_FOLLOWUPS, redecision.completion, context);
            commands.push(Command::CreateTask(new_task(
                policy,
                procedure,
                life_event.life_event_id,
                office.clone(),
                facts,
                &context,
                None,
            )));
        }
        (None, Some(task)) => withdraw(
            event,
            task,
            &format!("no longer eligible: {}", now.decision.reason),
            context,
            commands,
        )?,
        _ => {}
    }
    Ok(())
}

/// On `LifeEventVoided`.
pub fn react_voided(
    event: &LifeEventVoided,
    life_event: &LifeEventFacts,
    tasks: &[TaskFacts],
    context: &Context<'_>,
) -> Result<Vec<Command>, RuleError> {
    let mut commands = Vec::new();
    for task in tasks {
        if matches!(task.state.status, TaskStatus::Open | TaskStatus::Claimed) {
            for task_event in task.state.decide(TaskCommand::Cancel {
                reason: event.reason.clone(),
                cause: Some(context.source.event_id),
                at: context.now,
            })? {
                commands.push(Command::UpdateTask {
                    task_id: task.task_id(),
                    expected_version: task.version.0,
                    event_id: update_event_id(context.source.event_id, task.task_id()),
                    event: task_event,
                });
            }
        }
    }
    let mut last_completed: BTreeMap<ProcedureId, &TaskFacts> = BTreeMap::new();
    for task in tasks
        .iter()
        .filter(|task| task.state.status == TaskStatus::Completed)
    {
        last_completed.insert(task.created.procedure, task);
    }
    for (procedure, task) in last_completed {
        // A procedure whose last completed task is a reversal (a correction withdrew it and
        // the agency completed that) has nothing standing to reverse. (Until 2026-12-07 the
        // void asked the agency to reverse it again, following the reversal.)
        let Some(task) = standing(Some(task)) else {
            continue;
        };
        commands.push(Command::CreateTask(new_task(
            CORRECTIONS,
            procedure,
            life_event.life_event_id,
            task.created.office.clone(),
            &task.state.application.0,
            context,
            Some(FollowUp {
                kind: FollowUpKind::Reversal,
                follows: task.task_id(),
                reason: event.reason.clone(),
            }),
        )));
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PersonFacts;
    use crate::rules::death_followups::{decide_chosen, react as decide_followups};
    use crate::rules::test_support::*;
    use chrono::{DateTime, FixedOffset};
    use lifeline_model::declaration::{DeathDeclaration, Declaration};
    use lifeline_model::envelope::StreamVersion;
    use lifeline_model::procedure::ProcedureId as P;
    use lifeline_model::task::{TaskCreated, TaskEvent, TaskOutcome};
    use lifeline_model::values::{Email, FullName, PersonalId};
    use serde_json::json;
    use uuid::Uuid;

    fn corrected(name: &str) -> LifeEventCorrected {
        let mut declaration = birth_facts().declaration;
        if let Declaration::Birth(birth) = &mut declaration {
            birth.child.full_name = FullName::parse_field(name, "child.full_name").unwrap();
        }
        LifeEventCorrected {
            life_event_id: life_event_id(),
            reason: "sai chính tả".into(),
            recorded_on: date("2026-11-21"),
            changed_fields: vec!["child.full_name".into()],
            declaration,
        }
    }

    #[test]
    fn an_open_task_is_amended_and_a_completed_one_reissued() {
        let reference = reference();
        let open = open_task(P::ChildHealthInsurance);
        let done = completed_task(P::BirthRegistration, birth_registered());
        let commands = react_corrected(
            &corrected("Nguyễn Minh Anh"),
            &birth_facts(),
            &[done.clone(), open.clone()],
            &FollowUps::NotDecided,
            &context(&reference),
        )
        .unwrap();
        assert_eq!(commands.len(), 2);
        let Command::CreateTask(reissue) = &commands[0] else {
            panic!("{commands:?}")
        };
        assert_eq!(reissue.procedure, P::BirthRegistration);
        assert_eq!(
            reissue.follow_up.as_ref().unwrap().kind,
            FollowUpKind::Reissue
        );
        assert_eq!(reissue.follow_up.as_ref().unwrap().follows, done.task_id());
        assert_eq!(
            reissue.application.get("child.full_name"),
            Some(&json!("Nguyễn Minh Anh"))
        );
        let Command::UpdateTask {
            event: lifeline_model::task::TaskEvent::TaskAmended(amended),
            expected_version,
            ..
        } = &commands[1]
        else {
            panic!()
        };
        assert_eq!(amended.changed_fields, ["child.full_name"]);
        assert_eq!(*expected_version, open.version.0);
        // The child's number, added after the declaration, is kept.
        assert_eq!(
            amended.application.get("child.personal_id"),
            Some(&json!("079326000042"))
        );
    }

    /// A reversal the agency rejected leaves the completed task standing: a correction that
    /// re-chooses the procedure asks for a re-issue following that task, not a new first task
    /// (a second card).
    #[test]
    fn a_rejected_reversal_leaves_the_completed_task_standing() {
        let reference = reference();
        let card = completed_task(
            P::ChildHealthInsurance,
            TaskOutcome::InsuranceCardIssued {
                card_number: "TE1790000000042".into(),
                valid_until: date("2032-11-19"),
            },
        );
        let mut reversal = open_task(P::ChildHealthInsurance);
        reversal.created.task_id = Uuid::from_u128(0x5e);
        reversal.created.follow_up = Some(FollowUp {
            kind: FollowUpKind::Reversal,
            follows: card.task_id(),
            reason: "bỏ chọn".into(),
        });
        reversal.state.status = TaskStatus::Rejected;
        let choice = BirthChoice {
            child_personal_id: child_pin(),
            certificate_number: "GKS-2026-001".into(),
            completion: crate::facts::Source {
                event_id: Uuid::from_u128(0xc0),
                recorded_at: utc("2026-11-20T03:00:00Z"),
                correlation_id: Uuid::from_u128(0xc1),
            },
        };
        let commands = react_corrected(
            &corrected("Nguyễn Minh Anh"),
            &birth_facts(),
            &[card.clone(), reversal],
            &FollowUps::Rechoose(choice),
            &context(&reference),
        )
        .unwrap();
        let created: Vec<_> = commands
            .iter()
            .filter_map(|command| match command {
                Command::CreateTask(task) if task.procedure == P::ChildHealthInsurance => {
                    Some(task)
                }
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{commands:?}");
        let follow_up = created[0].follow_up.as_ref().expect("a follow-up");
        assert_eq!(follow_up.kind, FollowUpKind::Reissue);
        assert_eq!(follow_up.follows, card.task_id());
    }

    #[test]
    fn a_change_outside_a_procedures_fields_leaves_its_task_alone() {
        let reference = reference();
        let mut event = corrected("Nguyễn Minh An");
        if let Declaration::Birth(birth) = &mut event.declaration {
            birth.declarant.relationship = "mẹ".into();
        }
        let commands = react_corrected(
            &event,
            &birth_facts(),
            &[open_task(P::ChildHealthInsurance)],
            &FollowUps::NotDecided,
            &context(&reference),
        )
        .unwrap();
        assert!(commands.is_empty());
    }

    #[test]
    fn a_void_cancels_open_tasks_and_reverses_completed_ones() {
        let reference = reference();
        let void = LifeEventVoided {
            life_event_id: life_event_id(),
            reason: "nhập nhầm".into(),
            recorded_on: date("2026-11-21"),
        };
        let done = completed_task(P::BirthRegistration, birth_registered());
        let commands = react_voided(
            &void,
            &birth_facts(),
            &[done.clone(), open_task(P::ResidenceRegistration)],
            &context(&reference),
        )
        .unwrap();
        assert_eq!(commands.len(), 2);
        assert!(matches!(
            &commands[0],
            Command::UpdateTask {
                event: lifeline_model::task::TaskEvent::TaskCancelled(_),
                ..
            }
        ));
        let Command::CreateTask(reversal) = &commands[1] else {
            panic!()
        };
        assert_eq!(
            reversal.follow_up.as_ref().unwrap().kind,
            FollowUpKind::Reversal
        );
        assert_eq!(reversal.application, done.state.application);
    }

    #[test]
    fn a_void_does_not_reverse_a_procedure_already_reversed() {
        let reference = reference();
        let void = LifeEventVoided {
            life_event_id: life_event_id(),
            reason: "nhập nhầm".into(),
            recorded_on: date("2026-11-21"),
        };
        let paid = completed_task(
            P::BurialAllowance,
            TaskOutcome::PaymentDecided {
                decision_number: "QĐ-1".into(),
                amount_vnd: 23_400_000,
            },
        );
        let mut reversed = completed_task(
            P::BurialAllowance,
            TaskOutcome::PaymentDecided {
                decision_number: "QĐ-2".into(),
                amount_vnd: 23_400_000,
            },
        );
        reversed.created.task_id = Uuid::from_u128(61);
        reversed.created.follow_up = Some(FollowUp {
            kind: FollowUpKind::Reversal,
            follows: paid.task_id(),
            reason: "sai số định danh".into(),
        });
        let registered = completed_task(P::DeathRegistration, death_registered());
        let commands = react_voided(
            &void,
            &death_facts(),
            &[registered.clone(), paid, reversed],
            &context(&reference),
        )
        .unwrap();
        // Only the death registration, still standing, is reversed.
        assert_eq!(commands.len(), 1, "{commands:?}");
        let Command::CreateTask(reversal) = &commands[0] else {
            panic!("{commands:?}")
        };
        assert_eq!(reversal.procedure, P::DeathRegistration);
        assert_eq!(
            reversal.follow_up.as_ref().unwrap().follows,
            registered.task_id()
        );
    }

    // ---- a death record's follow-ups, decided again

    /// The follow-ups `death-followups` made for the test death of `person` (every procedure
    /// chosen): their decisions and tasks, the tasks open.
    fn decided_followups(person: &PersonFacts) -> (Vec<EligibilityDecided>, Vec<TaskFacts>) {
        let reference = reference();
        let registration = completed_task(P::DeathRegistration, death_registered());
        let commands = decide_followups(
            &death_completed(),
            &registration,
            &death_facts(),
            person,
            &context(&reference),
        )
        .unwrap();
        let mut decisions = Vec::new();
        let mut tasks = vec![registration];
        for command in commands {
            match command {
                Command::DecideEligibility { decision, .. } => decisions.push(decision),
                Command::CreateTask(created) => tasks.push(
                    TaskFacts::from_events(
                        &[(Uuid::from_u128(50), TaskEvent::TaskCreated(created))],
                        StreamVersion(1),
                    )
                    .unwrap(),
                ),
                Command::UpdateTask { .. } => panic!("{command:?}"),
            }
        }
        (decisions, tasks)
    }

    /// The test death corrected by `change`: the correction and the record as corrected.
    fn death_corrected(
        change: impl FnOnce(&mut DeathDeclaration),
    ) -> (LifeEventCorrected, LifeEventFacts) {
        let mut life = death_facts();
        let Declaration::Death(death) = &mut life.declaration else {
            unreachable!()
        };
        change(death);
        let event = LifeEventCorrected {
            life_event_id: life_event_id(),
            reason: "sai ngày mất".into(),
            recorded_on: date("2026-11-21"),
            changed_fields: vec![],
            declaration: life.declaration.clone(),
        };
        (event, life)
    }

    /// The decisions of `before`, and `life` (as corrected) decided again for `person`.
    fn redecision(
        before: &[EligibilityDecided],
        life: &LifeEventFacts,
        person: &PersonFacts,
    ) -> FollowUps {
        FollowUps::Redecide(Redecision {
            now: decide_chosen("TK-2026-77", life, person, &reference()).unwrap(),
            decided: before
                .iter()
                .map(|decided| (decided.procedure, decided.clone()))
                .collect(),
            completion: Source {
                event_id: Uuid::from_u128(77),
                recorded_at: utc("2026-11-20T10:00:00+07:00"),
                correlation_id: Uuid::from_u128(78),
            },
        })
    }

    /// `react_corrected` on the test death's `tasks`, its follow-ups decided `before` and
    /// decided again for `person`.
    fn redecided(
        event: &LifeEventCorrected,
        life: &LifeEventFacts,
        tasks: &[TaskFacts],
        before: &[EligibilityDecided],
        person: &PersonFacts,
    ) -> Vec<Command> {
        let reference = reference();
        react_corrected(
            event,
            life,
            tasks,
            &redecision(before, life, person),
            &context(&reference),
        )
        .unwrap()
    }

    fn cancelled_of(commands: &[Command]) -> Vec<(Uuid, String)> {
        commands
            .iter()
            .filter_map(|command| match command {
                Command::UpdateTask {
                    task_id,
                    event: TaskEvent::TaskCancelled(cancelled),
                    ..
                } => Some((*task_id, cancelled.reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn moved_death(death: &mut DeathDeclaration) {
        death.death.at =
            DateTime::<FixedOffset>::parse_from_rfc3339("2024-06-30T06:30:00+07:00").unwrap();
    }

    fn decisions_of(commands: &[Command]) -> Vec<(Uuid, &EligibilityDecided)> {
        commands
            .iter()
            .filter_map(|command| match command {
                Command::DecideEligibility { key, decision } => Some((*key, decision)),
                _ => None,
            })
            .collect()
    }

    fn created_of(commands: &[Command]) -> Vec<&TaskCreated> {
        commands
            .iter()
            .filter_map(|command| match command {
                Command::CreateTask(created) => Some(created),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_date_of_death_moved_before_a_raise_decides_the_allowance_again_and_amends_its_task() {
        let (before, tasks) = decided_followups(&pensioner());
        assert_eq!(before[1].amount_vnd, Some(23_400_000));
        let (event, life) = death_corrected(moved_death);
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        // The burial allowance decided again at the base salary in force on 2024-06-30 (and
        // funeral support, still not eligible, on its new date).
        let decided = decisions_of(&commands);
        assert_eq!(
            decided
                .iter()
                .map(|(_, d)| (d.procedure, d.eligible))
                .collect::<Vec<_>>(),
            [(P::BurialAllowance, true), (P::FuneralSupport, false)],
        );
        let (key, burial) = decided[0];
        assert_eq!(burial.procedure, P::BurialAllowance);
        assert_eq!(burial.amount_vnd, Some(18_000_000));
        assert_eq!(
            crate::rules::death_followups::recompute(burial),
            Some(18_000_000)
        );
        assert_eq!(key, task_id(CORRECTIONS, source_id(), P::BurialAllowance));
        // Every open task follows the new date; the allowance's also its new amount; the
        // residence task keeps the register's address the declaration never had.
        let amended: BTreeMap<Uuid, &Application> = commands
            .iter()
            .filter_map(|command| match command {
                Command::UpdateTask {
                    task_id,
                    event: TaskEvent::TaskAmended(amended),
                    ..
                } => Some((*task_id, &amended.application)),
                _ => None,
            })
            .collect();
        let burial_task = &tasks[2];
        assert_eq!(
            amended[&burial_task.task_id()].get("eligibility.amount_vnd"),
            Some(&json!(18_000_000))
        );
        let residence_task = &tasks[1];
        assert_eq!(residence_task.created.procedure, P::ResidenceDeregistration);
        let residence = amended[&residence_task.task_id()];
        assert_eq!(
            residence.get("death.at"),
            Some(&json!("2024-06-30T06:30:00+07:00"))
        );
        assert_eq!(
            residence.get("deceased.residence.address"),
            Some(&json!("5 Hàng Bông"))
        );
        // The completed registration is re-issued with the new date, as any completed task.
        let created = created_of(&commands);
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].procedure, P::DeathRegistration);
    }

    #[test]
    fn a_deceased_no_longer_eligible_has_the_open_task_cancelled_and_the_completed_one_reversed() {
        let (before, mut tasks) = decided_followups(&pensioner());
        // The burial allowance was paid; the residence deregistration is still open.
        tasks[2] = completed_task(
            P::BurialAllowance,
            TaskOutcome::PaymentDecided {
                decision_number: "QĐ-1".into(),
                amount_vnd: 23_400_000,
            },
        );
        // The registrar had typed the wrong number: the deceased is in no register.
        let (event, life) = death_corrected(|death| {
            death.deceased.personal_id = Some(PersonalId::parse("001052999999").unwrap());
        });
        let nobody = PersonFacts::default();
        let commands = redecided(&event, &life, &tasks, &before, &nobody);
        let decided = decisions_of(&commands);
        assert_eq!(
            decided
                .iter()
                .map(|(_, d)| (d.procedure, d.eligible))
                .collect::<Vec<_>>(),
            [
                (P::ResidenceDeregistration, false),
                (P::BurialAllowance, false)
            ]
        );
        let cancelled = cancelled_of(&commands);
        assert_eq!(
            cancelled,
            [(
                tasks[1].task_id(),
                "sai ngày mất: no longer eligible: no registered permanent residence found"
                    .to_owned()
            )]
        );
        // The completed registration is re-issued for the new number; the paid allowance is
        // reversed.
        let created = created_of(&commands);
        assert_eq!(
            created
                .iter()
                .map(|task| task.procedure)
                .collect::<Vec<_>>(),
            [P::DeathRegistration, P::BurialAllowance]
        );
        let follow_up = created[1].follow_up.as_ref().unwrap();
        assert_eq!(follow_up.kind, FollowUpKind::Reversal);
        assert_eq!(follow_up.follows, tasks[2].task_id());
    }

    #[test]
    fn a_reversed_allowance_is_not_withdrawn_again_and_gets_a_new_task_once_eligible_again() {
        let reference = reference();
        let (mut before, mut tasks) = decided_followups(&pensioner());
        // An earlier correction found the deceased in no register: the paid allowance was
        // reversed (its reversal task still open) under a decision of not eligible.
        let paid = completed_task(
            P::BurialAllowance,
            TaskOutcome::PaymentDecided {
                decision_number: "QĐ-1".into(),
                amount_vnd: 23_400_000,
            },
        );
        let mut reversal = open_task(P::BurialAllowance);
        reversal.created.task_id = Uuid::from_u128(60);
        reversal.created.follow_up = Some(FollowUp {
            kind: FollowUpKind::Reversal,
            follows: paid.task_id(),
            reason: "sai số định danh".into(),
        });
        tasks[2] = paid;
        tasks.push(reversal.clone());
        let nobody = PersonFacts::default();
        let ineligible = decide_chosen("TK-2026-77", &death_facts(), &nobody, &reference)
            .unwrap()
            .into_iter()
            .find(|decided| decided.procedure == P::BurialAllowance)
            .unwrap();
        before[1] = ineligible.decision.event(
            life_event_id(),
            P::BurialAllowance,
            utc("2026-11-21T10:00:00+07:00"),
        );

        // Still not eligible, on a new date: decided again, the reversal left alone.
        let (event, life) = death_corrected(moved_death);
        let commands = redecided(&event, &life, &tasks, &before, &nobody);
        assert!(
            commands.iter().all(|command| !matches!(
                command,
                Command::UpdateTask { task_id, .. } if *task_id == reversal.task_id()
            )),
            "{commands:?}"
        );
        assert!(created_of(&commands)
            .iter()
            .all(|task| task.procedure != P::BurialAllowance));

        // Eligible again (the number corrected back): a new allowance task at the new amount.
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        let burial: Vec<_> = created_of(&commands)
            .into_iter()
            .filter(|task| task.procedure == P::BurialAllowance)
            .collect();
        assert_eq!(burial.len(), 1, "{commands:?}");
        assert!(burial[0].follow_up.is_none());
        assert_eq!(
            burial[0].application.get("eligibility.amount_vnd"),
            Some(&json!(18_000_000))
        );
    }

    #[test]
    fn a_residence_declared_elsewhere_moves_the_open_follow_ups_to_that_areas_offices() {
        let (before, tasks) = decided_followups(&pensioner());
        assert_eq!(tasks[1].created.office.as_str(), "01-00004");
        let (event, life) = death_corrected(|death| {
            death.deceased.residence = Some(lifeline_model::declaration::Residence {
                province: "79".into(),
                commune: "26734".into(),
                address: "12 Lê Lợi".into(),
            });
        });
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        let cancelled = cancelled_of(&commands);
        // The burial allowance is routed by the same area: Hồ Chí Minh City's social security.
        assert_eq!(
            cancelled,
            [
                (
                    tasks[1].task_id(),
                    "sai ngày mất: moved to office 79-26734".to_owned()
                ),
                (
                    tasks[2].task_id(),
                    "sai ngày mất: moved to office 79-00000".to_owned()
                )
            ]
        );
        let moved: Vec<_> = created_of(&commands)
            .into_iter()
            .filter(|task| task.procedure != P::DeathRegistration)
            .collect();
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0].procedure, P::ResidenceDeregistration);
        assert_eq!(moved[0].office.as_str(), "79-26734");
        assert_eq!(moved[1].office.as_str(), "79-00000");
        assert_eq!(
            moved[0].task_id,
            task_id(CORRECTIONS, source_id(), P::ResidenceDeregistration)
        );
        assert_eq!(
            moved[0].application.get("deceased.residence.address"),
            Some(&json!("12 Lê Lợi"))
        );
    }

    /// An open re-issue moved to another area's office stays a re-issue of the completed task
    /// it follows.
    #[test]
    fn a_moved_reissue_stays_a_reissue_of_its_task() {
        let (before, mut tasks) = decided_followups(&pensioner());
        let mut paid = tasks[2].clone();
        paid.created.task_id = Uuid::from_u128(0xbeef);
        paid.state.status = TaskStatus::Completed;
        tasks[2].created.follow_up = Some(FollowUp {
            kind: FollowUpKind::Reissue,
            follows: paid.task_id(),
            reason: "sai tên".into(),
        });
        tasks.insert(2, paid.clone());
        let (event, life) = death_corrected(|death| {
            death.deceased.residence = Some(lifeline_model::declaration::Residence {
                province: "79".into(),
                commune: "26734".into(),
                address: "12 Lê Lợi".into(),
            });
        });
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        let moved: Vec<_> = created_of(&commands)
            .into_iter()
            .filter(|task| task.procedure == paid.created.procedure)
            .collect();
        assert_eq!(moved.len(), 1, "{commands:?}");
        assert_eq!(moved[0].office.as_str(), "79-00000");
        let follow_up = moved[0].follow_up.as_ref().expect("still a re-issue");
        assert_eq!(follow_up.kind, FollowUpKind::Reissue);
        assert_eq!(follow_up.follows, paid.task_id());
    }

    #[test]
    fn a_procedure_chosen_by_the_correction_is_decided_as_death_followups_would() {
        let reference = reference();
        let (event, life) = death_corrected(|_| {});
        let mut original = death_facts();
        if let Declaration::Death(death) = &mut original.declaration {
            death.procedures = vec![P::DeathRegistration];
        }
        // Nothing was decided (nothing chosen); the correction chooses all three.
        let registration = completed_task(P::DeathRegistration, death_registered());
        let follow_ups = redecision(&[], &life, &pensioner());
        // The correction comes a month after the registration completed.
        let mut context = context(&reference);
        context.source.recorded_at = utc("2026-12-21T09:00:00+07:00");
        context.now = utc("2026-12-21T09:00:01+07:00");
        let commands = react_corrected(
            &event,
            &life,
            std::slice::from_ref(&registration),
            &follow_ups,
            &context,
        )
        .unwrap();
        let FollowUps::Redecide(redecision) = &follow_ups else {
            unreachable!()
        };
        let keys: Vec<_> = decisions_of(&commands)
            .iter()
            .map(|(key, _)| *key)
            .collect();
        let expected: Vec<_> = death_followups::PROCEDURES
            .iter()
            .map(|&procedure| task_id(DEATH_FOLLOWUPS, redecision.completion.event_id, procedure))
            .collect();
        assert_eq!(keys, expected);
        let created = created_of(&commands);
        assert_eq!(
            created
                .iter()
                .map(|task| (task.procedure, task.task_id, task.source_event_id))
                .collect::<Vec<_>>(),
            [
                (P::ResidenceDeregistration, expected[0], Uuid::from_u128(77)),
                (P::BurialAllowance, expected[1], Uuid::from_u128(77)),
            ]
        );
        // Their time limits count from the correction, not from the completion a month before.
        for task in created {
            assert!(
                task.due_at > context.source.recorded_at,
                "{:?} due {}",
                task.procedure,
                task.due_at
            );
        }
    }

    #[test]
    fn a_procedure_no_longer_chosen_has_its_open_task_cancelled() {
        let (before, tasks) = decided_followups(&pensioner());
        let (event, life) = death_corrected(|death| {
            death.procedures = vec![P::DeathRegistration, P::BurialAllowance];
        });
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        assert_eq!(commands.len(), 1, "{commands:?}");
        let Command::UpdateTask {
            task_id,
            event: TaskEvent::TaskCancelled(cancelled),
            ..
        } = &commands[0]
        else {
            panic!("{commands:?}")
        };
        assert_eq!(*task_id, tasks[1].task_id());
        assert_eq!(cancelled.reason, "sai ngày mất: no longer applied for");
    }

    #[test]
    fn the_same_decision_records_nothing_new_and_a_later_correction_is_left_the_follow_ups() {
        let reference = reference();
        let (before, tasks) = decided_followups(&pensioner());
        let (event, life) = death_corrected(|death| {
            death.declarant.email =
                Some(Email::parse_field("dung.le@example.vn", "declarant.email").unwrap());
        });
        let commands = redecided(&event, &life, &tasks, &before, &pensioner());
        // Of the open follow-ups, the declarant's email reaches the burial allowance's agency
        // only: one amendment, and no decision.
        assert!(decisions_of(&commands).is_empty());
        let amended: Vec<_> = commands
            .iter()
            .filter_map(|command| match command {
                Command::UpdateTask { task_id, .. } => Some(*task_id),
                _ => None,
            })
            .collect();
        assert_eq!(amended, [tasks[2].task_id()]);
        let left = react_corrected(
            &event,
            &life,
            &tasks,
            &FollowUps::LeftToLater,
            &context(&reference),
        )
        .unwrap();
        assert!(
            left.iter().all(|command| matches!(
                command,
                Command::CreateTask(created) if created.procedure == P::DeathRegistration
            )),
            "{left:?}"
        );
    }
}
