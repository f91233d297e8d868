//! The life-event status projection: each life event (kind, reference, office, late, voided,
//! corrections) and where each procedure of its group stands.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lifeline_model::declaration::Declaration;
use lifeline_model::envelope::RecordedEvent;
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::{TaskEvent, TaskOutcome};
use lifeline_store::projections::{self, LifeEventStatusRow, ProcedureState, ProcedureStatusRow};
use lifeline_store::{StoreTransaction, Subscriber, SubscriberError};
use uuid::Uuid;

use super::{task_id_of, DecodedBatch, DecodedEvent, HeldRows, Projection, SharedDecoded};

/// The checkpoint name of the life-event status projection.
pub const LIFE_EVENT_STATUS_PROJECTION: &str = "projection-life-events";

/// Keeps `projection_life_events` and `projection_life_event_procedures` up to date.
///
/// Within a batch it folds a life event's events into one row held in memory and saves each
/// changed row once, at the end of the batch (in the batch's transaction).
#[derive(Debug, Default)]
pub struct LifeEventStatusProjection {
    /// The rows of the life events this batch changed, as folded so far.
    held: HeldRows<Uuid, LifeEventStatusRow>,
    /// For tasks looked up ahead of the batch: the life event whose stored procedure row
    /// names the task (`None`: none does).
    known_tasks: HashMap<Uuid, Option<Uuid>>,
    /// For every task a held row's procedure names: that life event (kept with the held rows,
    /// so a task event finds its row without scanning every held row).
    held_tasks: HashMap<Uuid, Uuid>,
    decoded: DecodedBatch,
}

impl LifeEventStatusProjection {
    pub fn new() -> Self {
        Self::default()
    }

    /// The life event whose procedure row names `task_id` now: the held rows first (they are
    /// newer than the table), then the table for life events this batch has not touched.
    async fn life_event_of_task(
        &self,
        tx: &mut StoreTransaction<'_>,
        task_id: Uuid,
    ) -> Result<Option<Uuid>, SubscriberError> {
        if let Some(life_event_id) = self.held_tasks.get(&task_id) {
            return Ok(Some(*life_event_id));
        }
        let stored = match self.known_tasks.get(&task_id) {
            Some(known) => *known,
            None => projections::life_event_of_task(tx, task_id).await?,
        };
        // A held row no longer naming the task (a newer task replaced it) is the truth.
        Ok(stored.filter(|life_event_id| !self.held.contains(life_event_id)))
    }

    /// Holds `row` as changed, noting the tasks its procedures name.
    fn hold(&mut self, life_event_id: Uuid, row: LifeEventStatusRow) {
        for task_id in tasks_named(&row) {
            self.held_tasks.insert(task_id, life_event_id);
        }
        self.held.put(life_event_id, row);
    }

    /// Forgets the tasks a held row (before a fold) named.
    fn forget_tasks_of(&mut self, row: Option<&LifeEventStatusRow>) {
        let Some(row) = row else {
            return;
        };
        for task_id in tasks_named(row) {
            if self.held_tasks.get(&task_id) == Some(&row.life_event_id) {
                self.held_tasks.remove(&task_id);
            }
        }
    }
}

/// The tasks a status row's procedures name.
fn tasks_named(row: &LifeEventStatusRow) -> impl Iterator<Item = Uuid> + '_ {
    row.procedures
        .iter()
        .filter_map(|procedure| procedure.task_id)
}

#[async_trait]
impl Subscriber for LifeEventStatusProjection {
    fn name(&self) -> &str {
        LIFE_EVENT_STATUS_PROJECTION
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        let Some(decoded) = self.decoded.take(event).map_err(SubscriberError::failed)? else {
            return Ok(());
        };
        let decoded = &*decoded;
        let life_event_id = match decoded {
            DecodedEvent::LifeEvent(life_event) => Some(life_event.life_event_id()),
            DecodedEvent::Task(TaskEvent::TaskCreated(created)) => Some(created.life_event_id),
            DecodedEvent::Task(task_event) => {
                self.life_event_of_task(tx, task_id_of(task_event)).await?
            }
            DecodedEvent::System(SystemEvent::EligibilityDecided(decided)) => {
                Some(decided.life_event_id)
            }
            DecodedEvent::System(_) => None,
        };
        let Some(life_event_id) = life_event_id else {
            return Ok(());
        };
        let held = self.held.take(&life_event_id);
        let was_held = held.is_some();
        let row = match held {
            Some(row) => Some(row),
            // A record's first event makes its row afresh: nothing to load.
            None if is_recorded(decoded) => None,
            None => match self.held.known(&life_event_id) {
                Some(known) => known.cloned(),
                None => projections::load_life_event_status(tx, life_event_id).await?,
            },
        };
        let recorded_at = event.metadata.recorded_at;
        match apply_to_life_event_status(row.clone(), decoded, recorded_at) {
            Some(new_row) => {
                if was_held {
                    self.forget_tasks_of(row.as_ref());
                }
                self.hold(life_event_id, new_row);
            }
            None => {
                // Nothing changed: keep what was held (it is still to be saved).
                if let (Some(row), true) = (row, was_held) {
                    self.held.put(life_event_id, row);
                }
            }
        }
        Ok(())
    }

    fn begin_batch(&mut self) {
        self.held.clear();
        self.held_tasks.clear();
        self.known_tasks.clear();
        self.decoded.clear();
    }

    /// Looks up at once which stored life events the batch's task events belong to, and the
    /// stored rows of every life event the batch continues.
    async fn prepare_batch(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), SubscriberError> {
        self.decoded.fill(events).map_err(SubscriberError::failed)?;
        let mut recorded = HashSet::new();
        let mut created = HashSet::new();
        let mut life_events = Vec::new();
        let mut seen = HashSet::new();
        let mut tasks = Vec::new();
        for event in events {
            let Some(decoded) = self.decoded.get(&event.event_id) else {
                continue;
            };
            let life_event_id = match decoded {
                DecodedEvent::LifeEvent(life_event) if is_recorded(decoded) => {
                    recorded.insert(life_event.life_event_id());
                    None
                }
                DecodedEvent::LifeEvent(life_event) => Some(life_event.life_event_id()),
                DecodedEvent::Task(TaskEvent::TaskCreated(task)) => {
                    created.insert(task.task_id);
                    Some(task.life_event_id)
                }
                DecodedEvent::Task(task_event) => {
                    let task_id = task_id_of(task_event);
                    if !created.contains(&task_id) && !self.known_tasks.contains_key(&task_id) {
                        self.known_tasks.insert(task_id, None);
                        tasks.push(task_id);
                    }
                    None
                }
                DecodedEvent::System(SystemEvent::EligibilityDecided(decided)) => {
                    Some(decided.life_event_id)
                }
                DecodedEvent::System(_) => None,
            };
            if let Some(id) = life_event_id {
                if !recorded.contains(&id) && seen.insert(id) {
                    life_events.push(id);
                }
            }
        }
        for (task_id, life_event_id) in projections::life_events_of_tasks(tx, &tasks).await? {
            self.known_tasks.insert(task_id, Some(life_event_id));
            if !recorded.contains(&life_event_id) && seen.insert(life_event_id) {
                life_events.push(life_event_id);
            }
        }
        let stored = projections::load_life_event_statuses(tx, &life_events).await?;
        self.held
            .know_all(life_events, stored, |row| row.life_event_id);
        Ok(())
    }

    async fn end_batch(&mut self, tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        self.held_tasks.clear();
        // Against what the table held at the batch's start (looked up ahead), only the
        // procedure rows that changed are written.
        let rows = self.held.drain_with_known();
        let changes: Vec<_> = rows
            .iter()
            .map(|(row, known)| (row, known.as_ref()))
            .collect();
        projections::save_life_event_status_changes(tx, &changes).await?;
        Ok(())
    }
}

impl Projection for LifeEventStatusProjection {
    fn preset_decoded(&mut self, decoded: SharedDecoded) {
        self.decoded.preset(decoded);
    }
}

/// Whether `event` is a record's first event (`BirthRecorded`, `DeathRecorded`), which makes
/// the status row afresh whatever was stored.
fn is_recorded(event: &DecodedEvent) -> bool {
    matches!(
        event,
        DecodedEvent::LifeEvent(
            LifeEventEvent::BirthRecorded(_) | LifeEventEvent::DeathRecorded(_)
        )
    )
}

/// What one event does to a life event's status row. Pure. `None`: nothing to save (the event
/// concerns a life event this projection has not seen recorded).
pub fn apply_to_life_event_status(
    row: Option<LifeEventStatusRow>,
    event: &DecodedEvent,
    recorded_at: DateTime<Utc>,
) -> Option<LifeEventStatusRow> {
    match event {
        DecodedEvent::LifeEvent(LifeEventEvent::BirthRecorded(birth)) => Some(recorded_row(
            birth.life_event_id,
            ProcedureGroup::Birth,
            birth.reference.clone(),
            &Declaration::Birth(birth.declaration.clone()),
            birth.recorded_on,
            birth.late,
            recorded_at,
        )),
        DecodedEvent::LifeEvent(LifeEventEvent::DeathRecorded(death)) => Some(recorded_row(
            death.life_event_id,
            ProcedureGroup::Death,
            death.reference.clone(),
            &Declaration::Death(death.declaration.clone()),
            death.recorded_on,
            death.late,
            recorded_at,
        )),
        DecodedEvent::LifeEvent(LifeEventEvent::LifeEventCorrected(corrected)) => {
            let mut row = row?;
            row.corrections += 1;
            row.late = corrected.declaration.is_late(row.recorded_on);
            row.office = corrected.declaration.office().clone();
            let chosen = corrected.declaration.procedures();
            for procedure in &mut row.procedures {
                // Only procedures without a task follow a change of the declarant's choice.
                match procedure.state {
                    ProcedureState::Pending | ProcedureState::NotChosen => {
                        procedure.state = if chosen.contains(&procedure.procedure) {
                            ProcedureState::Pending
                        } else {
                            ProcedureState::NotChosen
                        };
                    }
                    _ => {}
                }
            }
            row.updated_at = recorded_at;
            Some(row)
        }
        DecodedEvent::LifeEvent(LifeEventEvent::LifeEventVoided(_)) => {
            let mut row = row?;
            row.voided = true;
            row.updated_at = recorded_at;
            Some(row)
        }
        DecodedEvent::System(SystemEvent::EligibilityDecided(decided)) => {
            let mut row = row?;
            let procedure = row.procedure_mut(decided.procedure)?;
            if procedure.state == ProcedureState::Pending && !decided.eligible {
                procedure.state = ProcedureState::NotEligible;
            }
            procedure.detail = Some(decided.reason.clone());
            row.updated_at = recorded_at;
            Some(row)
        }
        DecodedEvent::System(_) => row,
        DecodedEvent::Task(task_event) => {
            let mut row = row?;
            apply_task_event(&mut row, task_event)?;
            row.updated_at = recorded_at;
            Some(row)
        }
    }
}

fn recorded_row(
    life_event_id: Uuid,
    kind: ProcedureGroup,
    reference: lifeline_model::life_event::Reference,
    declaration: &Declaration,
    recorded_on: chrono::NaiveDate,
    late: bool,
    recorded_at: DateTime<Utc>,
) -> LifeEventStatusRow {
    let chosen = declaration.procedures();
    LifeEventStatusRow {
        life_event_id,
        kind,
        reference,
        office: declaration.office().clone(),
        recorded_on,
        late,
        voided: false,
        corrections: 0,
        updated_at: recorded_at,
        procedures: kind
            .procedures()
            .iter()
            .map(|procedure| ProcedureStatusRow {
                procedure: *procedure,
                state: if chosen.contains(procedure) {
                    ProcedureState::Pending
                } else {
                    ProcedureState::NotChosen
                },
                task_id: None,
                opened_at: None,
                closed_at: None,
                due_at: None,
                overdue: false,
                detail: None,
            })
            .collect(),
    }
}

/// Applies a task event to the procedure row it belongs to; `None` if no procedure row names
/// the task (an older task of the procedure, superseded by a follow-up: left as it was).
fn apply_task_event(row: &mut LifeEventStatusRow, event: &TaskEvent) -> Option<()> {
    if let TaskEvent::TaskCreated(created) = event {
        let procedure = procedure_row(row, created.procedure)?;
        procedure.state = ProcedureState::Open;
        procedure.task_id = Some(created.task_id);
        procedure.opened_at = Some(created.created_at);
        procedure.closed_at = None;
        procedure.due_at = Some(created.due_at);
        procedure.overdue = false;
        procedure.detail = None;
        return Some(());
    }
    let task_id = task_id_of(event);
    let procedure = row
        .procedures
        .iter_mut()
        .find(|procedure| procedure.task_id == Some(task_id))?;
    match event {
        TaskEvent::TaskCreated(_) | TaskEvent::TaskAmended(_) => {}
        TaskEvent::TaskClaimed(_) => procedure.state = ProcedureState::Claimed,
        TaskEvent::TaskCompleted(completed) => {
            procedure.state = completed_state(&completed.outcome);
            procedure.closed_at = Some(completed.at);
        }
        TaskEvent::TaskRejected(rejected) => {
            procedure.state = ProcedureState::Rejected;
            procedure.closed_at = Some(rejected.at);
            procedure.detail = Some(rejected.reason.clone());
        }
        TaskEvent::TaskCancelled(cancelled) => {
            procedure.state = ProcedureState::Cancelled;
            procedure.closed_at = Some(cancelled.at);
            procedure.detail = Some(cancelled.reason.clone());
        }
        TaskEvent::TaskOverdue(_) => procedure.overdue = true,
    }
    Some(())
}

/// The state a completion leaves its procedure in: `reversed` when it completed a reversal
/// (the `revoked` outcome), `completed` otherwise.
pub fn completed_state(outcome: &TaskOutcome) -> ProcedureState {
    match outcome {
        TaskOutcome::Revoked { .. } => ProcedureState::Reversed,
        _ => ProcedureState::Completed,
    }
}

fn procedure_row(
    row: &mut LifeEventStatusRow,
    procedure: ProcedureId,
) -> Option<&mut ProcedureStatusRow> {
    row.procedure_mut(procedure)
}
