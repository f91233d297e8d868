//! Replay "as of" a moment: the person registry and the life-event status folded in memory from
//! the log's events recorded before that moment (stopping at the first later event in commit
//! order, so the result is a prefix of the log, as a projection rebuild up to that time sees it).
//!
//! The fold is pure and small: [`Replay::apply`] takes one recorded event; [`Replay::view`]
//! answers the result. It writes nothing, so auditors can replay while the live projections
//! run. It follows the projections' vocabulary (`lifeline_store::projections`), but is its own
//! code: it covers identity, vital status and links (persons) and where each procedure stands
//! (life events), not the facts learned from outcomes (cards, residences).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::codec::{self, DecodeError, EventFamily};
use lifeline_model::declaration::Declaration;
use lifeline_model::envelope::{LogCursor, RecordedEvent};
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::TaskEvent;
use lifeline_policies::projections::life_events::completed_state;
use lifeline_store::projections::{PersonRole, ProcedureState, VitalStatus};
use lifeline_store::{EventStore, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A person as of the replayed moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayPerson {
    pub personal_id: String,
    pub full_name: String,
    pub date_of_birth: Option<NaiveDate>,
    /// `alive` or `deceased`.
    pub vital_status: String,
    pub date_of_death: Option<NaiveDate>,
    pub life_events: Vec<ReplayPersonLink>,
}

/// A life event naming the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayPersonLink {
    pub life_event_id: Uuid,
    /// `birth` or `death`.
    pub kind: String,
    /// `child`, `mother`, `father`, `declarant` or `deceased`.
    pub role: String,
    pub voided: bool,
}

/// A life event and its procedures as of the replayed moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayLifeEvent {
    pub life_event_id: Uuid,
    pub kind: String,
    pub reference: String,
    pub office: String,
    pub recorded_on: NaiveDate,
    pub late: bool,
    pub voided: bool,
    pub corrections: u32,
    pub procedures: Vec<ReplayProcedure>,
}

/// One procedure of a life event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayProcedure {
    pub procedure: String,
    /// pending, open, claimed, completed, reversed (a reversal completed), rejected, cancelled,
    /// not-eligible, not-chosen.
    pub state: String,
    pub task_id: Option<Uuid>,
}

/// What a replay produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayView {
    /// How many events of the log were folded.
    pub events_replayed: u64,
    /// By personal ID number.
    pub persons: Vec<ReplayPerson>,
    /// By life event id.
    pub life_events: Vec<ReplayLifeEvent>,
}

#[derive(Debug, Clone)]
struct Person {
    full_name: String,
    date_of_birth: Option<NaiveDate>,
    vital_status: VitalStatus,
    date_of_death: Option<NaiveDate>,
    death_life_event_id: Option<Uuid>,
    links: Vec<(Uuid, ProcedureGroup, PersonRole, bool)>,
}

#[derive(Debug, Clone)]
struct LifeEventRow {
    kind: ProcedureGroup,
    reference: String,
    office: String,
    recorded_on: NaiveDate,
    late: bool,
    voided: bool,
    corrections: u32,
    procedures: Vec<(ProcedureId, ProcedureState, Option<Uuid>)>,
}

/// The in-memory fold.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    persons: BTreeMap<String, Person>,
    life_events: BTreeMap<Uuid, LifeEventRow>,
    /// task id -> (life event, procedure).
    tasks: HashMap<Uuid, (Uuid, ProcedureId)>,
    events: u64,
}

impl Replay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event of the log; events of other families (connector outcomes...) only count.
    pub fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeError> {
        self.events += 1;
        let event_type = event.event_type.as_str();
        if LifeEventEvent::current_version(event_type).is_some() {
            let decoded: LifeEventEvent = codec::decode_recorded(event)?;
            self.apply_life_event(decoded);
        } else if TaskEvent::current_version(event_type).is_some() {
            let decoded: TaskEvent = codec::decode_recorded(event)?;
            self.apply_task(decoded);
        } else if SystemEvent::current_version(event_type).is_some() {
            let decoded: SystemEvent = codec::decode_recorded(event)?;
            self.apply_system(decoded);
        }
        Ok(())
    }

    fn apply_life_event(&mut self, event: LifeEventEvent) {
        match event {
            LifeEventEvent::BirthRecorded(recorded) => {
                let declaration = Declaration::Birth(recorded.declaration);
                self.recorded(
                    recorded.life_event_id,
                    recorded.reference.as_str(),
                    recorded.recorded_on,
                    recorded.late,
                    &declaration,
                );
            }
            LifeEventEvent::DeathRecorded(recorded) => {
                let declaration = Declaration::Death(recorded.declaration);
                self.recorded(
                    recorded.life_event_id,
                    recorded.reference.as_str(),
                    recorded.recorded_on,
                    recorded.late,
                    &declaration,
                );
            }
            LifeEventEvent::LifeEventCorrected(corrected) => {
                let id = corrected.life_event_id;
                if let Some(row) = self.life_events.get_mut(&id) {
                    row.corrections += 1;
                    row.late = corrected.declaration.is_late(row.recorded_on);
                    row.office = corrected.declaration.office().to_string();
                    // Only procedures without a task follow a change of the declarant's choice
                    // (as the status projection).
                    let chosen = corrected.declaration.procedures();
                    for entry in &mut row.procedures {
                        if matches!(entry.1, ProcedureState::Pending | ProcedureState::NotChosen) {
                            entry.1 = if chosen.contains(&entry.0) {
                                ProcedureState::Pending
                            } else {
                                ProcedureState::NotChosen
                            };
                        }
                    }
                }
                // The corrected declaration replaces who the life event names; the child, whom
                // it never names (its number is assigned, not declared), keeps its link.
                for person in self.persons.values_mut() {
                    person.links.retain(|(life_event_id, _, role, _)| {
                        *life_event_id != id || *role == PersonRole::Child
                    });
                    if person.death_life_event_id == Some(id) {
                        person.vital_status = VitalStatus::Alive;
                        person.date_of_death = None;
                        person.death_life_event_id = None;
                    }
                }
                self.name_persons(id, &corrected.declaration);
                // The child, once it has its number, takes the corrected name and date of birth.
                if let Declaration::Birth(birth) = &corrected.declaration {
                    for person in self.persons.values_mut() {
                        if person
                            .links
                            .iter()
                            .any(|link| link.0 == id && link.2 == PersonRole::Child)
                        {
                            person.full_name = birth.child.full_name.to_string();
                            person.date_of_birth = Some(birth.child.date_of_birth);
                        }
                    }
                }
            }
            LifeEventEvent::LifeEventVoided(voided) => {
                let id = voided.life_event_id;
                if let Some(row) = self.life_events.get_mut(&id) {
                    row.voided = true;
                }
                for person in self.persons.values_mut() {
                    for link in person.links.iter_mut().filter(|link| link.0 == id) {
                        link.3 = true;
                    }
                    if person.death_life_event_id == Some(id) {
                        person.vital_status = VitalStatus::Alive;
                        person.date_of_death = None;
                        person.death_life_event_id = None;
                    }
                }
            }
        }
    }

    fn recorded(
        &mut self,
        id: Uuid,
        reference: &str,
        recorded_on: NaiveDate,
        late: bool,
        declaration: &Declaration,
    ) {
        let group = declaration.group();
        let chosen = declaration.procedures();
        self.life_events.insert(
            id,
            LifeEventRow {
                kind: group,
                reference: reference.to_owned(),
                office: declaration.office().to_string(),
                recorded_on,
                late,
                voided: false,
                corrections: 0,
                procedures: group
                    .procedures()
                    .iter()
                    .map(|procedure| {
                        let state = if chosen.contains(procedure) {
                            ProcedureState::Pending
                        } else {
                            ProcedureState::NotChosen
                        };
                        (*procedure, state, None)
                    })
                    .collect(),
            },
        );
        self.name_persons(id, declaration);
    }

    /// Links every person with a personal ID number that `declaration` names.
    fn name_persons(&mut self, id: Uuid, declaration: &Declaration) {
        let group = declaration.group();
        let mut named: Vec<(String, String, Option<NaiveDate>, PersonRole)> = Vec::new();
        match declaration {
            Declaration::Birth(birth) => {
                for (parent, role) in [
                    (&birth.mother, PersonRole::Mother),
                    (&birth.father, PersonRole::Father),
                ] {
                    if let Some(parent) = parent {
                        if let Some(pin) = &parent.personal_id {
                            named.push((
                                pin.to_string(),
                                parent.full_name.to_string(),
                                parent.date_of_birth,
                                role,
                            ));
                        }
                    }
                }
                let declarant = &birth.declarant;
                named.push((
                    declarant.personal_id.to_string(),
                    declarant.full_name.to_string(),
                    None,
                    PersonRole::Declarant,
                ));
            }
            Declaration::Death(death) => {
                if let Some(pin) = &death.deceased.personal_id {
                    named.push((
                        pin.to_string(),
                        death.deceased.full_name.to_string(),
                        death.deceased.date_of_birth,
                        PersonRole::Deceased,
                    ));
                }
                let declarant = &death.declarant;
                named.push((
                    declarant.personal_id.to_string(),
                    declarant.full_name.to_string(),
                    None,
                    PersonRole::Declarant,
                ));
            }
        }
        for (pin, full_name, date_of_birth, role) in named {
            let person = self.person(&pin, &full_name);
            if role != PersonRole::Declarant || person.links.is_empty() {
                person.full_name = full_name;
            }
            if date_of_birth.is_some() {
                person.date_of_birth = date_of_birth;
            }
            if !person
                .links
                .iter()
                .any(|link| link.0 == id && link.2 == role)
            {
                person.links.push((id, group, role, false));
            }
            if role == PersonRole::Deceased {
                if let Declaration::Death(death) = declaration {
                    person.vital_status = VitalStatus::Deceased;
                    person.date_of_death = Some(death.death.date());
                    person.death_life_event_id = Some(id);
                }
            }
        }
    }

    fn person(&mut self, pin: &str, full_name: &str) -> &mut Person {
        self.persons
            .entry(pin.to_owned())
            .or_insert_with(|| Person {
                full_name: full_name.to_owned(),
                date_of_birth: None,
                vital_status: VitalStatus::Alive,
                date_of_death: None,
                death_life_event_id: None,
                links: Vec::new(),
            })
    }

    fn apply_task(&mut self, event: TaskEvent) {
        let (task_id, state) = match &event {
            TaskEvent::TaskCreated(created) => {
                self.tasks
                    .insert(created.task_id, (created.life_event_id, created.procedure));
                (created.task_id, Some(ProcedureState::Open))
            }
            TaskEvent::TaskClaimed(claimed) => (claimed.task_id, Some(ProcedureState::Claimed)),
            TaskEvent::TaskCompleted(done) => (done.task_id, Some(completed_state(&done.outcome))),
            TaskEvent::TaskRejected(rejected) => (rejected.task_id, Some(ProcedureState::Rejected)),
            TaskEvent::TaskCancelled(cancelled) => {
                (cancelled.task_id, Some(ProcedureState::Cancelled))
            }
            TaskEvent::TaskAmended(amended) => (amended.task_id, None),
            TaskEvent::TaskOverdue(overdue) => (overdue.task_id, None),
        };
        let Some(state) = state else { return };
        let Some((life_event_id, procedure)) = self.tasks.get(&task_id).copied() else {
            return;
        };
        if let Some(row) = self.life_events.get_mut(&life_event_id) {
            if let Some(entry) = row.procedures.iter_mut().find(|entry| entry.0 == procedure) {
                // A later task of the procedure (a follow-up) takes over; older ones only
                // speak for themselves.
                if matches!(event, TaskEvent::TaskCreated(_)) || entry.2 == Some(task_id) {
                    entry.1 = state;
                    entry.2 = Some(task_id);
                }
            }
        }
    }

    fn apply_system(&mut self, event: SystemEvent) {
        match event {
            SystemEvent::PersonalIdAssigned(assigned) => {
                let pin = assigned.personal_id.to_string();
                let full_name = assigned.full_name.to_string();
                let id = assigned.life_event_id;
                let person = self.person(&pin, &full_name);
                person.full_name = full_name;
                person.date_of_birth = Some(assigned.date_of_birth);
                if !person
                    .links
                    .iter()
                    .any(|link| link.0 == id && link.2 == PersonRole::Child)
                {
                    person
                        .links
                        .push((id, ProcedureGroup::Birth, PersonRole::Child, false));
                }
            }
            SystemEvent::EligibilityDecided(decided) => {
                if decided.eligible {
                    return;
                }
                if let Some(row) = self.life_events.get_mut(&decided.life_event_id) {
                    if let Some(entry) = row
                        .procedures
                        .iter_mut()
                        .find(|entry| entry.0 == decided.procedure && entry.2.is_none())
                    {
                        entry.1 = ProcedureState::NotEligible;
                    }
                }
            }
            SystemEvent::PolicyFailed(_) | SystemEvent::PersonalDataRead(_) => {}
        }
    }

    /// The result, sorted by personal ID number and life event id.
    pub fn view(&self) -> ReplayView {
        ReplayView {
            events_replayed: self.events,
            persons: self
                .persons
                .iter()
                .map(|(pin, person)| ReplayPerson {
                    personal_id: pin.clone(),
                    full_name: person.full_name.clone(),
                    date_of_birth: person.date_of_birth,
                    vital_status: match person.vital_status {
                        VitalStatus::Alive => "alive",
                        VitalStatus::Deceased => "deceased",
                    }
                    .to_owned(),
                    date_of_death: person.date_of_death,
                    life_events: person
                        .links
                        .iter()
                        .map(|(life_event_id, kind, role, voided)| ReplayPersonLink {
                            life_event_id: *life_event_id,
                            kind: group_name(*kind).to_owned(),
                            role: role_name(*role).to_owned(),
                            voided: *voided,
                        })
                        .collect(),
                })
                .collect(),
            life_events: self
                .life_events
                .iter()
                .map(|(id, row)| ReplayLifeEvent {
                    life_event_id: *id,
                    kind: group_name(row.kind).to_owned(),
                    reference: row.reference.clone(),
                    office: row.office.clone(),
                    recorded_on: row.recorded_on,
                    late: row.late,
                    voided: row.voided,
                    corrections: row.corrections,
                    procedures: row
                        .procedures
                        .iter()
                        .map(|(procedure, state, task_id)| ReplayProcedure {
                            procedure: procedure.as_str().to_owned(),
                            state: state.as_str().to_owned(),
                            task_id: *task_id,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn group_name(group: ProcedureGroup) -> &'static str {
    match group {
        ProcedureGroup::Birth => "birth",
        ProcedureGroup::Death => "death",
    }
}

fn role_name(role: PersonRole) -> &'static str {
    match role {
        PersonRole::Child => "child",
        PersonRole::Mother => "mother",
        PersonRole::Father => "father",
        PersonRole::Declarant => "declarant",
        PersonRole::Deceased => "deceased",
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event {event_id} cannot be decoded: {source}")]
    Decode {
        event_id: Uuid,
        #[source]
        source: DecodeError,
    },
}

/// Events read per batch while replaying.
const REPLAY_BATCH: usize = 1_000;

/// Folds the log's events recorded before `as_of` (all of them when `None`), stopping at the
/// first later one in commit order. Reads the whole prefix: O(events before `as_of`).
pub async fn replay_until(
    store: &EventStore,
    as_of: Option<DateTime<Utc>>,
) -> Result<ReplayView, ReplayError> {
    let mut replay = Replay::new();
    let mut cursor = LogCursor::START;
    loop {
        let batch = store.read_all(cursor, REPLAY_BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(replay.view());
        };
        cursor = last.cursor();
        for event in &batch {
            if as_of.is_some_and(|as_of| event.metadata.recorded_at >= as_of) {
                return Ok(replay.view());
            }
            replay.apply(event).map_err(|source| ReplayError::Decode {
                event_id: event.event_id,
                source,
            })?;
        }
    }
}

/// How long `lifeline export` waits, without progress, for the log to be readable up to where
/// it stood when the export began (a transaction older than its last commits still running).
pub const EXPORT_END_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the whole log, as it stood when called, to `out` as NDJSON (one event per line, in
/// commit order): every event committed by then, and none of a transaction begun later. On
/// PostgreSQL the gap-free reader sees a commit only once every older transaction has ended,
/// so an empty page is the end only once the log is readable up to where it stood at the
/// start; until then the export waits, up to [`EXPORT_END_WAIT`] at a time without progress,
/// then fails rather than end short. (Until 2026-12-07 `lifeline export` stopped at the first
/// empty page: with workers running, events committed behind a transaction still open were
/// left out, and it exited 0.) Returns the number of events written.
pub async fn export_log(
    store: &lifeline_store::EventStore,
    out: &mut impl std::io::Write,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let end = store
        .log_end_now()
        .await
        .context("reading where the log stands")?;
    let mut cursor = lifeline_model::envelope::LogCursor::START;
    let mut written = 0_u64;
    let mut last_progress = std::time::Instant::now();
    let poll = std::time::Duration::from_millis(20);
    loop {
        let page = store
            .read_all(cursor, 1000)
            .await
            .context("reading the log")?;
        if page.is_empty() {
            // Nothing readable after the cursor: the end, if nothing older than `end` is still
            // running (read once more: what became readable since the empty page).
            if store
                .readable_up_to(end)
                .await
                .context("reading the log's horizon")?
            {
                if store
                    .read_all(cursor, 1)
                    .await
                    .context("reading the log")?
                    .is_empty()
                {
                    return Ok(written);
                }
                continue;
            }
            if last_progress.elapsed() >= EXPORT_END_WAIT {
                anyhow::bail!(
                    "the export stopped after {written} events: the log did not become readable \
                     up to where it stood when the export began within {EXPORT_END_WAIT:?} (a \
                     transaction older than its last commits is still running)"
                );
            }
            tokio::time::sleep(poll).await;
            continue;
        }
        last_progress = std::time::Instant::now();
        for event in &page {
            // A transaction given its id after the export began: past the log as it stood.
            if end.is_some_and(|end| event.cursor().transaction_id >= end) {
                return Ok(written);
            }
            serde_json::to_writer(&mut *out, event)?;
            writeln!(out)?;
            written += 1;
            cursor = event.cursor();
        }
    }
}
