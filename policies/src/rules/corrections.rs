//! `corrections`: a corrected record amends each open task whose application changed and
//! re-issues each completed one; a voided record cancels open tasks and reverses completed ones.

use std::collections::BTreeMap;

use serde_json::Value;

use lifeline_model::life_event::{LifeEventCorrected, LifeEventVoided};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::task::{Application, FollowUp, FollowUpKind, TaskCommand, TaskStatus};

use super::{new_task, Command, RuleError, CORRECTIONS};
use crate::engine::deterministic_id;
use crate::facts::{declaration_facts, is_added_fact, Context, LifeEventFacts, TaskFacts};

/// The deterministic event id of what `cause` appends to `task_id`.
pub fn update_event_id(cause: uuid::Uuid, task_id: uuid::Uuid) -> uuid::Uuid {
    deterministic_id(&format!("{CORRECTIONS}/{cause}/{task_id}"))
}

/// The last task of each procedure (tasks in creation order).
fn latest_per_procedure(tasks: &[TaskFacts]) -> BTreeMap<ProcedureId, &TaskFacts> {
    tasks
        .iter()
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

/// On `LifeEventCorrected`.
pub fn react_corrected(
    event: &LifeEventCorrected,
    life_event: &LifeEventFacts,
    tasks: &[TaskFacts],
    context: &Context<'_>,
) -> Result<Vec<Command>, RuleError> {
    let declared = declaration_facts(&event.declaration, life_event.late);
    let mut commands = Vec::new();
    for (procedure, task) in latest_per_procedure(tasks) {
        let application = application_for(task, &declared);
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
                    continue;
                }
                commands.push(Command::CreateTask(new_task(
                    CORRECTIONS,
                    procedure,
                    life_event.life_event_id,
                    task.created.office.clone(),
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
    }
    Ok(commands)
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
    use crate::rules::test_support::*;
    use lifeline_model::declaration::Declaration;
    use lifeline_model::procedure::ProcedureId as P;
    use lifeline_model::values::FullName;
    use serde_json::json;

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
}
