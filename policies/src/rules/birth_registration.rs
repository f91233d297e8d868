//! `birth-registration`: a recorded birth becomes the birth-registration task at the civil
//! registry, prefilled with exactly the fields that procedure declares.

use lifeline_model::declaration::Declaration;
use lifeline_model::life_event::BirthRecorded;
use lifeline_model::procedure::ProcedureId;

use super::{new_task, Command, RuleError, BIRTH_REGISTRATION};
use crate::facts::{declaration_facts, Context};

/// On `BirthRecorded`: one birth-registration task, routed to the registering office's area.
pub fn react(event: &BirthRecorded, context: &Context<'_>) -> Result<Vec<Command>, RuleError> {
    let declaration = &event.declaration;
    let procedure = ProcedureId::BirthRegistration;
    let office = context.reference.routing.office_for(
        procedure,
        declaration.office.province(),
        declaration.office.commune(),
        &declaration.office,
    )?;
    let facts = declaration_facts(&Declaration::Birth(declaration.clone()), event.late);
    Ok(vec![Command::CreateTask(new_task(
        BIRTH_REGISTRATION,
        procedure,
        event.life_event_id,
        office,
        &facts,
        context,
        None,
    ))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::*;

    #[test]
    fn a_birth_becomes_one_prefilled_birth_registration_task() {
        let reference = reference();
        let commands = react(&birth_recorded(false), &context(&reference)).unwrap();
        let [Command::CreateTask(task)] = commands.as_slice() else {
            panic!("expected one task, got {commands:?}");
        };
        assert_eq!(task.procedure, ProcedureId::BirthRegistration);
        assert_eq!(task.office.as_str(), "79-26734");
        assert_eq!(
            task.task_id,
            crate::engine::task_id("birth-registration", source_id(), task.procedure)
        );
        assert_eq!(
            task.application.get("child.full_name"),
            Some(&serde_json::json!("Nguyễn Minh An"))
        );
        assert_eq!(
            task.application.get("late"),
            Some(&serde_json::json!(false))
        );
        // Data minimisation: nothing beyond the procedure's fields (no phone, no procedures).
        assert!(task
            .application
            .0
            .keys()
            .all(|field| ProcedureId::BirthRegistration.receives(field)));
        assert!(task.application.get("declarant.phone").is_none());
        assert!(task.application.get("procedures").is_none());
        // Recorded Friday 2026-11-20 09:00 +07:00: due the same working day, 17:00.
        assert_eq!(task.due_at, utc("2026-11-20T10:00:00Z"));
    }

    #[test]
    fn a_late_birth_is_flagged_on_the_task() {
        let reference = reference();
        let commands = react(&birth_recorded(true), &context(&reference)).unwrap();
        let [Command::CreateTask(task)] = commands.as_slice() else {
            panic!()
        };
        assert_eq!(task.application.get("late"), Some(&serde_json::json!(true)));
    }
}
