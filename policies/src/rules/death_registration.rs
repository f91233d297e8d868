//! `death-registration`: a recorded death becomes the death-registration task at the civil
//! registry, prefilled with exactly the fields that procedure declares.

use lifeline_model::declaration::Declaration;
use lifeline_model::life_event::DeathRecorded;
use lifeline_model::procedure::ProcedureId;

use super::{new_task, Command, RuleError, DEATH_REGISTRATION};
use crate::facts::{declaration_facts, Context};

/// On `DeathRecorded`: one death-registration task, routed to the registering office's area.
pub fn react(event: &DeathRecorded, context: &Context<'_>) -> Result<Vec<Command>, RuleError> {
    let declaration = &event.declaration;
    let procedure = ProcedureId::DeathRegistration;
    let office = context.reference.routing.office_for(
        procedure,
        declaration.office.province(),
        declaration.office.commune(),
        &declaration.office,
    )?;
    let facts = declaration_facts(&Declaration::Death(declaration.clone()), event.late);
    Ok(vec![Command::CreateTask(new_task(
        DEATH_REGISTRATION,
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
    fn a_death_becomes_one_prefilled_death_registration_task() {
        let reference = reference();
        let commands = react(&death_recorded(false), &context(&reference)).unwrap();
        let [Command::CreateTask(task)] = commands.as_slice() else {
            panic!("expected one task, got {commands:?}");
        };
        assert_eq!(task.procedure, ProcedureId::DeathRegistration);
        assert_eq!(task.office.as_str(), "01-00004");
        assert_eq!(
            task.application.get("death.cause"),
            Some(&serde_json::json!("tuổi cao"))
        );
        assert!(task.application.get("declarant.email").is_none());
        assert!(task
            .application
            .0
            .keys()
            .all(|field| ProcedureId::DeathRegistration.receives(field)));
    }

    /// The declarant's residence, when given, is on the form the civil registry works.
    #[test]
    fn the_declarants_residence_is_on_the_death_registration_task() {
        let reference = reference();
        let mut recorded = death_recorded(false);
        let mut body = death_body();
        body["declarant"]["residence"] =
            serde_json::json!({ "province": "01", "commune": "00004", "address": "5 Hàng Bông" });
        recorded.declaration = lifeline_model::declaration::parse_death(
            &serde_json::from_value(body).unwrap(),
            lifeline_model::values::vietnam_day_end(date("2026-11-21")),
        )
        .unwrap();
        let commands = react(&recorded, &context(&reference)).unwrap();
        let [Command::CreateTask(task)] = commands.as_slice() else {
            panic!("expected one task, got {commands:?}");
        };
        assert_eq!(
            task.application.get("declarant.residence.address"),
            Some(&serde_json::json!("5 Hàng Bông"))
        );
    }

    #[test]
    fn a_late_death_is_flagged_on_the_task() {
        let reference = reference();
        let commands = react(&death_recorded(true), &context(&reference)).unwrap();
        let [Command::CreateTask(task)] = commands.as_slice() else {
            panic!()
        };
        assert_eq!(task.application.get("late"), Some(&serde_json::json!(true)));
    }
}
