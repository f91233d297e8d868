//! `death-followups`: when death registration completes, each chosen procedure among residence
//! deregistration, burial allowance and funeral support gets an eligibility decision (rule
//! version and parameters recorded, amounts in integer VND) and, only if eligible, a task.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::declaration::Declaration;
use lifeline_model::procedure::ProcedureId;
use lifeline_model::system_events::EligibilityDecided;
use lifeline_model::task::{TaskCompleted, TaskOutcome};
use lifeline_model::values::OfficeCode;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{new_task, Command, RuleError, DEATH_FOLLOWUPS};
use crate::engine::task_id;
use crate::facts::{Context, LifeEventFacts, PersonFacts, TaskFacts};
use crate::reference::{InsuranceStatus, Parameters, ReferenceData};

/// The rule version of the residence-deregistration eligibility rule.
pub const RESIDENCE_RULE_VERSION: &str = "residence-deregistration/registered-residence-v1";

/// An eligibility decision before it becomes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub eligible: bool,
    pub reason: String,
    pub rule_version: String,
    pub parameters: Value,
    pub amount_vnd: Option<i64>,
}

/// Recomputes the amount of a recorded decision from the parameters it recorded
/// (`multiplier` x `base_vnd`): what an auditor checks. `None` for decisions without amount.
pub fn recompute(decided: &EligibilityDecided) -> Option<i64> {
    if !decided.eligible {
        return None;
    }
    let multiplier = decided.parameters.get("multiplier")?.as_i64()?;
    let base = decided.parameters.get("base_vnd")?.as_i64()?;
    multiplier.checked_mul(base)
}

/// Decides one procedure for the deceased who died on `date_of_death`.
pub fn decide(
    procedure: ProcedureId,
    person: &PersonFacts,
    date_of_death: NaiveDate,
    parameters: &Parameters,
) -> Result<Option<Decision>, RuleError> {
    Ok(Some(match procedure {
        ProcedureId::ResidenceDeregistration => match &person.residence {
            Some(residence) => Decision {
                eligible: true,
                reason: format!(
                    "registered permanent residence in commune {} of province {}",
                    residence.commune, residence.province
                ),
                rule_version: RESIDENCE_RULE_VERSION.to_owned(),
                parameters: json!({ "register": "residences" }),
                amount_vnd: None,
            },
            None => Decision {
                eligible: false,
                reason: "no registered permanent residence found".to_owned(),
                rule_version: RESIDENCE_RULE_VERSION.to_owned(),
                parameters: json!({ "register": "residences" }),
                amount_vnd: None,
            },
        },
        ProcedureId::BurialAllowance => {
            let rule = parameters.burial_allowance(date_of_death)?;
            let base = parameters.base_salary(date_of_death)?;
            let (eligible, reason, months) = match &person.insured {
                Some(record) => match record.status {
                    InsuranceStatus::Pensioner => {
                        (true, "pensioner".to_owned(), record.contribution_months)
                    }
                    InsuranceStatus::MonthlyBenefit => (
                        true,
                        "receiving a monthly social insurance benefit".to_owned(),
                        record.contribution_months,
                    ),
                    InsuranceStatus::Compulsory
                        if record.contribution_months >= rule.min_contribution_months =>
                    {
                        (
                            true,
                            format!(
                                "compulsory social insurance, {} months of contributions",
                                record.contribution_months
                            ),
                            record.contribution_months,
                        )
                    }
                    InsuranceStatus::Compulsory => (
                        false,
                        format!(
                            "compulsory social insurance for {} months, at least {} needed",
                            record.contribution_months, rule.min_contribution_months
                        ),
                        record.contribution_months,
                    ),
                },
                None => (
                    false,
                    "not found in the social insurance register".to_owned(),
                    0,
                ),
            };
            Decision {
                eligible,
                reason,
                rule_version: rule.rule_version.clone(),
                parameters: json!({
                    "date_of_death": date_of_death,
                    "multiplier": rule.multiplier,
                    "base": "base_salary",
                    "base_vnd": base.amount_vnd,
                    "base_rule_version": base.rule_version,
                    "base_effective_from": base.effective_from,
                    "min_contribution_months": rule.min_contribution_months,
                    "contribution_months": months,
                }),
                amount_vnd: eligible.then(|| rule.multiplier.saturating_mul(base.amount_vnd)),
            }
        }
        ProcedureId::FuneralSupport => {
            let rule = parameters.funeral_support(date_of_death)?;
            let base = parameters.assistance_standard(date_of_death)?;
            let multiplier = if person.disaster.is_some() {
                rule.disaster_multiplier
            } else {
                rule.multiplier
            };
            let (eligible, reason) = match (&person.disaster, &person.social_protection) {
                (Some(disaster), _) => (
                    true,
                    format!("died in a declared disaster: {}", disaster.name),
                ),
                (None, Some(category)) => {
                    (true, format!("social-protection beneficiary ({category})"))
                }
                (None, None) => (false, "not a social-protection beneficiary".to_owned()),
            };
            Decision {
                eligible,
                reason,
                rule_version: rule.rule_version.clone(),
                parameters: json!({
                    "date_of_death": date_of_death,
                    "multiplier": multiplier,
                    "disaster": person.disaster.as_ref().map(|disaster| disaster.name.clone()),
                    "base": "assistance_standard",
                    "base_vnd": base.amount_vnd,
                    "base_rule_version": base.rule_version,
                    "base_effective_from": base.effective_from,
                }),
                amount_vnd: eligible.then(|| multiplier.saturating_mul(base.amount_vnd)),
            }
        }
        _ => return Ok(None),
    }))
}

/// The extract number, if `completed` completes an original death-registration task.
pub fn extract_number<'a>(completed: &'a TaskCompleted, task: &TaskFacts) -> Option<&'a str> {
    match &completed.outcome {
        TaskOutcome::DeathRegistered { extract_number }
            if task.created.procedure == ProcedureId::DeathRegistration
                && task.created.follow_up.is_none() =>
        {
            Some(extract_number)
        }
        _ => None,
    }
}

/// The follow-up procedures of a death, in group order: what `death-followups` decides.
pub const PROCEDURES: [ProcedureId; 3] = [
    ProcedureId::ResidenceDeregistration,
    ProcedureId::BurialAllowance,
    ProcedureId::FuneralSupport,
];

impl Decision {
    /// The decision as the event that records it.
    pub fn event(
        &self,
        life_event_id: Uuid,
        procedure: ProcedureId,
        decided_at: DateTime<Utc>,
    ) -> EligibilityDecided {
        EligibilityDecided {
            life_event_id,
            procedure,
            eligible: self.eligible,
            reason: self.reason.clone(),
            rule_version: self.rule_version.clone(),
            parameters: self.parameters.clone(),
            amount_vnd: self.amount_vnd,
            decided_at,
        }
    }

    /// Whether `decided` recorded this same decision (the time it was made aside).
    pub fn same_as(&self, decided: &EligibilityDecided) -> bool {
        self.eligible == decided.eligible
            && self.reason == decided.reason
            && self.rule_version == decided.rule_version
            && self.parameters == decided.parameters
            && self.amount_vnd == decided.amount_vnd
    }
}

/// One chosen follow-up procedure of a death record, decided: the decision and, if eligible,
/// the office its task goes to and the facts the task is prefilled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUpDecision {
    pub procedure: ProcedureId,
    pub decision: Decision,
    pub task: Option<(OfficeCode, BTreeMap<String, Value>)>,
}

/// Decides every follow-up procedure the record's declarant chose, for the deceased as the
/// registers know `person`, with the death extract `extract`: what `death-followups` does when
/// the registration completes, and what `corrections` does again when the record changes.
/// Nothing for a birth record.
pub fn decide_chosen(
    extract: &str,
    life_event: &LifeEventFacts,
    person: &PersonFacts,
    reference: &ReferenceData,
) -> Result<Vec<FollowUpDecision>, RuleError> {
    let Declaration::Death(declaration) = &life_event.declaration else {
        return Ok(vec![]);
    };
    let date_of_death = declaration.death.date();
    let area = declaration
        .deceased
        .residence
        .as_ref()
        .map(|residence| (residence.province.clone(), residence.commune.clone()))
        .or_else(|| {
            person
                .residence
                .as_ref()
                .map(|residence| (residence.province.clone(), residence.commune.clone()))
        })
        .unwrap_or_else(|| {
            (
                declaration.office.province().to_owned(),
                declaration.office.commune().to_owned(),
            )
        });
    let mut decided = Vec::new();
    for procedure in PROCEDURES {
        if !declaration.procedures.contains(&procedure) {
            continue;
        }
        let Some(decision) = decide(procedure, person, date_of_death, &reference.parameters)?
        else {
            continue;
        };
        if !decision.eligible {
            decided.push(FollowUpDecision {
                procedure,
                decision,
                task: None,
            });
            continue;
        }
        let mut facts = life_event.application_facts();
        // A declaration without the deceased's residence: the register's, which the task was
        // routed by, so that the agency knows which entry to close.
        if let (None, Some(residence)) = (&declaration.deceased.residence, &person.residence) {
            for (field, value) in [
                ("province", &residence.province),
                ("commune", &residence.commune),
                ("address", &residence.address),
            ] {
                facts.insert(format!("deceased.residence.{field}"), json!(value));
            }
        }
        facts.insert("death_extract_number".to_owned(), json!(extract));
        facts.insert("eligibility.reason".to_owned(), json!(decision.reason));
        facts.insert(
            "eligibility.rule_version".to_owned(),
            json!(decision.rule_version),
        );
        if let Some(amount) = decision.amount_vnd {
            facts.insert("eligibility.amount_vnd".to_owned(), json!(amount));
        }
        let office =
            reference
                .routing
                .office_for(procedure, &area.0, &area.1, &declaration.office)?;
        decided.push(FollowUpDecision {
            procedure,
            decision,
            task: Some((office, facts)),
        });
    }
    Ok(decided)
}

/// The commands of `decided` as `death-followups` appends them for the completion
/// `context.source`: each decision under the id its procedure's task has (or would have), and
/// that task for each eligible one.
pub fn commands(
    decided: &FollowUpDecision,
    life_event_id: Uuid,
    context: &Context<'_>,
) -> Vec<Command> {
    let procedure = decided.procedure;
    let key = task_id(DEATH_FOLLOWUPS, context.source.event_id, procedure);
    let mut commands = vec![Command::DecideEligibility {
        key,
        decision: decided
            .decision
            .event(life_event_id, procedure, context.now),
    }];
    if let Some((office, facts)) = &decided.task {
        commands.push(Command::CreateTask(new_task(
            DEATH_FOLLOWUPS,
            procedure,
            life_event_id,
            office.clone(),
            facts,
            context,
            None,
        )));
    }
    commands
}

/// On `TaskCompleted` of a death registration: a decision per chosen procedure, a task per
/// eligible one.
pub fn react(
    completed: &TaskCompleted,
    task: &TaskFacts,
    life_event: &LifeEventFacts,
    person: &PersonFacts,
    context: &Context<'_>,
) -> Result<Vec<Command>, RuleError> {
    let Some(extract) = extract_number(completed, task) else {
        return Ok(vec![]);
    };
    if life_event.voided {
        return Ok(vec![]);
    }
    Ok(
        decide_chosen(extract, life_event, person, context.reference)?
            .iter()
            .flat_map(|decided| commands(decided, life_event.life_event_id, context))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{AmountEntry, InsuredRecord};
    use crate::rules::test_support::*;
    use lifeline_model::procedure::ProcedureId as P;

    fn run(person: &PersonFacts, procedures: &[P]) -> Vec<Command> {
        let reference = reference();
        let mut life = death_facts();
        if let Declaration::Death(death) = &mut life.declaration {
            death.procedures = procedures.to_vec();
        }
        let task = completed_task(P::DeathRegistration, death_registered());
        react(
            &death_completed(),
            &task,
            &life,
            person,
            &context(&reference),
        )
        .unwrap()
    }

    fn decisions(commands: &[Command]) -> Vec<&EligibilityDecided> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::DecideEligibility { decision, .. } => Some(decision),
                _ => None,
            })
            .collect()
    }

    fn tasks(commands: &[Command]) -> Vec<&lifeline_model::task::TaskCreated> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::CreateTask(task) => Some(task),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_pensioner_with_a_residence_gets_deregistration_and_burial_allowance() {
        let commands = run(&pensioner(), &P::ALL[3..]);
        let decided = decisions(&commands);
        assert_eq!(decided.len(), 3);
        assert!(decided[0].eligible && decided[1].eligible && !decided[2].eligible);
        assert_eq!(decided[1].amount_vnd, Some(23_400_000));
        assert_eq!(
            decided[1].rule_version,
            "burial-allowance/law-si-2014-art-66"
        );
        assert_eq!(
            decided[1].parameters["base_rule_version"],
            "base-salary/decree-73-2024"
        );
        assert_eq!(decided[2].reason, "not a social-protection beneficiary");
        let created = tasks(&commands);
        assert_eq!(
            created.iter().map(|t| t.procedure).collect::<Vec<_>>(),
            [P::ResidenceDeregistration, P::BurialAllowance]
        );
        // The residence task carries no cause of death and no declarant contact.
        let residence = created[0];
        assert!(residence.application.get("death.cause").is_none());
        assert!(residence.application.get("declarant.email").is_none());
        assert_eq!(
            residence.application.get("death_extract_number"),
            Some(&json!("TK-2026-77"))
        );
        assert_eq!(
            residence.application.get("deceased.residence.address"),
            pensioner()
                .residence
                .map(|residence| json!(residence.address))
                .as_ref(),
            "the register's residence when the declaration has none"
        );
        assert!(residence
            .application
            .0
            .keys()
            .all(|f| P::ResidenceDeregistration.receives(f)));
        let burial = created[1];
        assert_eq!(
            burial.application.get("eligibility.amount_vnd"),
            Some(&json!(23_400_000))
        );
        assert_eq!(
            burial.application.get("declarant.email"),
            Some(&json!("dung@example.vn"))
        );
        assert_eq!(burial.office.as_str(), "01-00000");
        // Decided once per procedure under the id its task has.
        assert_eq!(
            burial.task_id,
            task_id(DEATH_FOLLOWUPS, source_id(), P::BurialAllowance)
        );
    }

    #[test]
    fn only_the_chosen_procedures_are_decided() {
        let commands = run(&pensioner(), &[P::DeathRegistration, P::BurialAllowance]);
        assert_eq!(
            decisions(&commands)
                .iter()
                .map(|d| d.procedure)
                .collect::<Vec<_>>(),
            [P::BurialAllowance]
        );
        assert!(run(&pensioner(), &[P::DeathRegistration]).is_empty());
    }

    #[test]
    fn ineligible_means_a_recorded_decision_and_no_task() {
        let person = PersonFacts {
            insured: Some(InsuredRecord {
                status: InsuranceStatus::Compulsory,
                contribution_months: 8,
            }),
            ..PersonFacts::default()
        };
        let commands = run(&person, &P::ALL[3..]);
        assert!(tasks(&commands).is_empty());
        let decided = decisions(&commands);
        assert!(decided
            .iter()
            .all(|d| !d.eligible && d.amount_vnd.is_none()));
        assert_eq!(
            decided[1].reason,
            "compulsory social insurance for 8 months, at least 12 needed"
        );
    }

    #[test]
    fn funeral_support_is_20_times_the_standard_and_50_in_a_disaster() {
        let beneficiary = PersonFacts {
            social_protection: Some("elderly".into()),
            ..PersonFacts::default()
        };
        let commands = run(&beneficiary, &[P::DeathRegistration, P::FuneralSupport]);
        assert_eq!(decisions(&commands)[0].amount_vnd, Some(7_200_000));
        let parameters = reference().parameters;
        let in_disaster = PersonFacts {
            disaster: reference()
                .registers
                .disaster("22", date("2024-09-07"))
                .cloned(),
            ..PersonFacts::default()
        };
        let decision = decide(
            P::FuneralSupport,
            &in_disaster,
            date("2024-09-07"),
            &parameters,
        )
        .unwrap()
        .unwrap();
        assert!(decision.eligible);
        assert_eq!(decision.amount_vnd, Some(18_000_000));
    }

    #[test]
    fn the_parameter_in_force_on_the_date_of_death_applies() {
        let mut parameters = reference().parameters;
        let before = decide(
            P::BurialAllowance,
            &pensioner(),
            date("2024-06-30"),
            &parameters,
        )
        .unwrap()
        .unwrap();
        assert_eq!(before.amount_vnd, Some(18_000_000));
        // A death registered years late: the base salary of its own month (until 2026-12-07
        // the parameters began in 2023-07, and such a death failed every follow-up).
        let late = decide(
            P::BurialAllowance,
            &pensioner(),
            date("2019-08-01"),
            &parameters,
        )
        .unwrap()
        .unwrap();
        assert_eq!(late.amount_vnd, Some(14_900_000));
        assert_eq!(
            late.parameters["base_rule_version"],
            "base-salary/decree-38-2019"
        );
        // A raise effective after the death changes nothing for it.
        parameters.base_salary.push(AmountEntry {
            rule_version: "base-salary/future".into(),
            effective_from: date("2026-12-01"),
            amount_vnd: 2_530_000,
            source: String::new(),
        });
        let died = date("2026-11-18");
        assert_eq!(
            decide(P::BurialAllowance, &pensioner(), died, &parameters)
                .unwrap()
                .unwrap()
                .amount_vnd,
            Some(23_400_000)
        );
        assert_eq!(
            decide(
                P::BurialAllowance,
                &pensioner(),
                date("2026-12-01"),
                &parameters
            )
            .unwrap()
            .unwrap()
            .amount_vnd,
            Some(25_300_000)
        );
    }

    #[test]
    fn recompute_equals_the_recorded_amount() {
        for person in [
            pensioner(),
            PersonFacts {
                social_protection: Some("x".into()),
                ..PersonFacts::default()
            },
        ] {
            for decided in decisions(&run(&person, &P::ALL[3..])) {
                assert_eq!(recompute(decided), decided.amount_vnd, "{decided:?}");
            }
        }
    }
}
