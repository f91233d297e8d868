//! `birth-followups`: when birth registration completes with a certificate, and the child has
//! its personal ID number, the residence-registration and child-health-insurance tasks the
//! declarant chose are created, prefilled with the child's number and the certificate.

use std::collections::BTreeMap;

use lifeline_model::declaration::{BirthDeclaration, Declaration};
use lifeline_model::procedure::ProcedureId;
use lifeline_model::task::{TaskCompleted, TaskOutcome};
use lifeline_model::values::{OfficeCode, PersonalId};
use serde_json::{json, Value};

use super::{new_task, Command, RuleError, BIRTH_FOLLOWUPS};
use crate::facts::{Context, LifeEventFacts, TaskFacts};
use crate::reference::ReferenceData;

/// The certificate number, if `completed` completes an original birth-registration task (not
/// a re-issue): only then do the follow-ups (and a personal ID number) apply.
pub fn certificate_number<'a>(completed: &'a TaskCompleted, task: &TaskFacts) -> Option<&'a str> {
    match &completed.outcome {
        TaskOutcome::BirthRegistered { certificate_number }
            if task.created.procedure == ProcedureId::BirthRegistration
                && task.created.follow_up.is_none() =>
        {
            Some(certificate_number)
        }
        _ => None,
    }
}

/// The follow-up procedures of a birth, in group order: what `birth-followups` creates.
pub const PROCEDURES: [ProcedureId; 2] = [
    ProcedureId::ResidenceRegistration,
    ProcedureId::ChildHealthInsurance,
];

/// What a follow-up task of `life_event` is prefilled from: its declaration's facts, the
/// child's number and the certificate's.
pub fn prefill(
    life_event: &LifeEventFacts,
    child_personal_id: &PersonalId,
    certificate: &str,
) -> BTreeMap<String, Value> {
    let mut facts = life_event.application_facts();
    facts.insert(
        "child.personal_id".to_owned(),
        json!(child_personal_id.as_str()),
    );
    facts.insert("birth_certificate_number".to_owned(), json!(certificate));
    facts
}

/// The office a follow-up task of `declaration` goes to: the one for the child's residence.
pub fn office(
    procedure: ProcedureId,
    declaration: &BirthDeclaration,
    reference: &ReferenceData,
) -> Result<OfficeCode, RuleError> {
    let residence = &declaration.residence;
    Ok(reference.routing.office_for(
        procedure,
        &residence.province,
        &residence.commune,
        &declaration.office,
    )?)
}

/// On `TaskCompleted` of a birth registration: the chosen follow-up tasks.
pub fn react(
    completed: &TaskCompleted,
    task: &TaskFacts,
    life_event: &LifeEventFacts,
    child_personal_id: &PersonalId,
    context: &Context<'_>,
) -> Result<Vec<Command>, RuleError> {
    let Some(certificate) = certificate_number(completed, task) else {
        return Ok(vec![]);
    };
    let Declaration::Birth(declaration) = &life_event.declaration else {
        return Ok(vec![]);
    };
    if life_event.voided {
        return Ok(vec![]);
    }
    let facts = prefill(life_event, child_personal_id, certificate);
    let mut commands = Vec::new();
    for procedure in PROCEDURES {
        if !declaration.procedures.contains(&procedure) {
            continue;
        }
        let office = office(procedure, declaration, context.reference)?;
        commands.push(Command::CreateTask(new_task(
            BIRTH_FOLLOWUPS,
            procedure,
            life_event.life_event_id,
            office,
            &facts,
            context,
            None,
        )));
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::*;
    use lifeline_model::procedure::ProcedureId as P;

    fn run(procedures: &[P], voided: bool) -> Vec<Command> {
        let reference = reference();
        let mut life = birth_facts();
        if let Declaration::Birth(birth) = &mut life.declaration {
            birth.procedures = procedures.to_vec();
        }
        life.voided = voided;
        let task = completed_task(P::BirthRegistration, birth_registered());
        react(
            &birth_completed(),
            &task,
            &life,
            &child_pin(),
            &context(&reference),
        )
        .unwrap()
    }

    fn created(commands: &[Command]) -> Vec<&lifeline_model::task::TaskCreated> {
        commands
            .iter()
            .filter_map(|command| match command {
                Command::CreateTask(task) => Some(task),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn both_followups_when_both_were_chosen() {
        let commands = run(
            &[
                P::BirthRegistration,
                P::ResidenceRegistration,
                P::ChildHealthInsurance,
            ],
            false,
        );
        let tasks = created(&commands);
        assert_eq!(
            tasks.iter().map(|t| t.procedure).collect::<Vec<_>>(),
            [P::ResidenceRegistration, P::ChildHealthInsurance]
        );
        let residence = tasks[0];
        assert_eq!(residence.office.as_str(), "79-26734");
        assert_eq!(
            residence.application.get("child.personal_id"),
            Some(&json!("079326000042"))
        );
        assert_eq!(
            residence.application.get("birth_certificate_number"),
            Some(&json!("KS-2026-001"))
        );
        assert_eq!(
            residence.application.get("mother.personal_id"),
            Some(&json!("079190001234"))
        );
        let insurance = tasks[1];
        assert_eq!(insurance.office.as_str(), "79-00000");
        assert_eq!(
            insurance.agency,
            lifeline_model::procedure::AgencyId::SocialSecurity
        );
        // Field by field: the insurance agency gets no parent, no declarant, no phone.
        assert_eq!(
            insurance.application.0.keys().cloned().collect::<Vec<_>>(),
            [
                "birth_certificate_number",
                "child.date_of_birth",
                "child.full_name",
                "child.personal_id",
                "child.sex",
                "residence.address",
                "residence.commune",
                "residence.province",
            ]
        );
        for task in tasks {
            assert!(task
                .application
                .0
                .keys()
                .all(|field| task.procedure.receives(field)));
            assert!(task.application.get("declarant.phone").is_none());
        }
    }

    #[test]
    fn only_the_chosen_followups() {
        let tasks = run(&[P::BirthRegistration, P::ChildHealthInsurance], false);
        assert_eq!(
            created(&tasks)
                .iter()
                .map(|t| t.procedure)
                .collect::<Vec<_>>(),
            [P::ChildHealthInsurance]
        );
        assert!(run(&[P::BirthRegistration], false).is_empty());
    }

    #[test]
    fn nothing_for_a_voided_record_or_a_reissue() {
        assert!(run(&[P::BirthRegistration, P::ResidenceRegistration], true).is_empty());
        let reference = reference();
        let mut task = completed_task(P::BirthRegistration, birth_registered());
        task.created.follow_up = Some(lifeline_model::task::FollowUp {
            kind: lifeline_model::task::FollowUpKind::Reissue,
            follows: uuid::Uuid::nil(),
            reason: "sai tên".into(),
        });
        assert!(react(
            &birth_completed(),
            &task,
            &birth_facts(),
            &child_pin(),
            &context(&reference)
        )
        .unwrap()
        .is_empty());
    }
}
