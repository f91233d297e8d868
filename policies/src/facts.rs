//! The facts a rule decides on, looked up before it runs: the source event's identity and time,
//! the life event as it stands, its tasks, and what the reference registers know of a person.
//! Built from decoded events, so the rules stay pure and the tests can build them by hand.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::Aggregate;
use lifeline_model::declaration::Declaration;
use lifeline_model::envelope::{RecordedEvent, StreamVersion};
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::task::{Task, TaskCreated, TaskEvent};
use lifeline_model::values::PersonalId;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::reference::{Disaster, InsuredRecord, ReferenceData, ResidenceRecord};

/// The event a rule reacts to: the idempotency source of every id it derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub event_id: Uuid,
    /// When the source event was recorded: due times count from here.
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}

impl Source {
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            recorded_at: event.metadata.recorded_at,
            correlation_id: event.metadata.correlation_id,
        }
    }
}

/// What every rule gets: the source, the time of deciding, and the reference configuration.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub source: Source,
    pub now: DateTime<Utc>,
    pub reference: &'a ReferenceData,
}

/// A life event as it stands: the current declaration (after corrections) and how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifeEventFacts {
    pub life_event_id: Uuid,
    /// The id of the `BirthRecorded` or `DeathRecorded` event.
    pub record_event_id: Uuid,
    pub declaration: Declaration,
    pub late: bool,
    pub voided: bool,
    /// The ids of its `LifeEventCorrected` and `LifeEventVoided` events, in order.
    pub amendment_event_ids: Vec<Uuid>,
}

impl LifeEventFacts {
    /// Folds the life event's events (with their event ids); `None` if it was never recorded.
    pub fn from_events(events: &[(Uuid, LifeEventEvent)]) -> Option<Self> {
        let mut facts: Option<Self> = None;
        let mut recorded_on = None;
        for (event_id, event) in events {
            match (event, facts.as_mut()) {
                (LifeEventEvent::BirthRecorded(birth), None) => {
                    recorded_on = Some(birth.recorded_on);
                    facts = Some(Self {
                        life_event_id: birth.life_event_id,
                        record_event_id: *event_id,
                        declaration: Declaration::Birth(birth.declaration.clone()),
                        late: birth.late,
                        voided: false,
                        amendment_event_ids: Vec::new(),
                    });
                }
                (LifeEventEvent::DeathRecorded(death), None) => {
                    recorded_on = Some(death.recorded_on);
                    facts = Some(Self {
                        life_event_id: death.life_event_id,
                        record_event_id: *event_id,
                        declaration: Declaration::Death(death.declaration.clone()),
                        late: death.late,
                        voided: false,
                        amendment_event_ids: Vec::new(),
                    });
                }
                (LifeEventEvent::LifeEventCorrected(corrected), Some(facts)) => {
                    // A corrected date decides `late` again against the record's day (until
                    // 2026-12-07 the tasks kept the flag as first recorded).
                    if let Some(recorded_on) = recorded_on {
                        facts.late = corrected.declaration.is_late(recorded_on);
                    }
                    facts.declaration = corrected.declaration.clone();
                    facts.amendment_event_ids.push(*event_id);
                }
                (LifeEventEvent::LifeEventVoided(_), Some(facts)) => {
                    facts.voided = true;
                    facts.amendment_event_ids.push(*event_id);
                }
                _ => {}
            }
        }
        facts
    }

    /// The declaration as application facts: dotted paths plus `late`.
    pub fn application_facts(&self) -> BTreeMap<String, Value> {
        declaration_facts(&self.declaration, self.late)
    }
}

/// A declaration flattened to dotted paths, with the `late` flag.
pub fn declaration_facts(declaration: &Declaration, late: bool) -> BTreeMap<String, Value> {
    let mut facts = declaration.flatten();
    facts.insert("late".to_owned(), json!(late));
    facts
}

/// Application fields that do not come from the declaration but were added on the way (the
/// child's number, document numbers, eligibility): a correction keeps them.
pub fn is_added_fact(field: &str) -> bool {
    matches!(
        field,
        "child.personal_id" | "birth_certificate_number" | "death_extract_number"
    ) || field.starts_with("eligibility.")
}

/// One task as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    pub created: TaskCreated,
    pub state: Task,
    /// The stream's version: what an amendment or a cancellation expects.
    pub version: StreamVersion,
    /// The id of its `TaskCompleted` event, once completed: the source of its follow-ups.
    pub completed_event_id: Option<Uuid>,
}

impl TaskFacts {
    /// Folds a task's events (with their event ids); `None` if it has no `TaskCreated`.
    pub fn from_events(events: &[(Uuid, TaskEvent)], version: StreamVersion) -> Option<Self> {
        let mut created = None;
        let mut state = Task::default();
        let mut completed_event_id = None;
        for (event_id, event) in events {
            match event {
                TaskEvent::TaskCreated(event) => created = Some(event.clone()),
                TaskEvent::TaskCompleted(_) => completed_event_id = Some(*event_id),
                _ => {}
            }
            state.apply(event.clone());
        }
        Some(Self {
            created: created?,
            state,
            version,
            completed_event_id,
        })
    }

    pub fn task_id(&self) -> Uuid {
        self.created.task_id
    }
}

/// What the reference registers know of the deceased, for eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonFacts {
    pub personal_id: Option<PersonalId>,
    pub insured: Option<InsuredRecord>,
    /// The social-protection category, if a beneficiary.
    pub social_protection: Option<String>,
    /// The registered permanent residence, if any.
    pub residence: Option<ResidenceRecord>,
    /// The declared disaster the death happened in, if any.
    pub disaster: Option<Disaster>,
}

impl PersonFacts {
    /// Looks the person up in the registers; the disaster by the province and date of death.
    pub fn lookup(
        reference: &ReferenceData,
        personal_id: Option<&PersonalId>,
        province: Option<&str>,
        date_of_death: NaiveDate,
    ) -> Self {
        let registers = &reference.registers;
        Self {
            personal_id: personal_id.cloned(),
            insured: personal_id.and_then(|id| registers.insured.get(id).cloned()),
            social_protection: personal_id
                .and_then(|id| registers.social_protection.get(id).cloned()),
            residence: personal_id.and_then(|id| registers.residences.get(id).cloned()),
            disaster: province
                .and_then(|province| registers.disaster(province, date_of_death).cloned()),
        }
    }
}
