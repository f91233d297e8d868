//! The person registry projection: what Lifeline's own events say about each person, by personal
//! ID number: name, birth, sex, alive or deceased, registered residence, insurance and other facts
//! learned from completed tasks, and the life events naming the person.
//!
//! Sources: `BirthRecorded` (the parents and the declarant), `PersonalIdAssigned` (the child),
//! `DeathRecorded` (the deceased and the declarant), `TaskCompleted` (cards, residence entries,
//! payments), corrections (the declaration is applied again; a deceased replaced by a correction
//! is alive again) and voids (the record's links are marked voided; a death voided is undone).
//! What an event needs beyond itself (the task a completion belongs to, the declaration a void
//! undoes) is what the log held just before the event: remembered from the events handled
//! before it, else read from the log in the subscription's transaction.
//! Known gap: voiding a birth does not yet mark the child's link (the child's number is not in
//! the birth's stream).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lifeline_model::codec;
use lifeline_model::declaration::{BirthDeclaration, DeathDeclaration, Declaration, Residence};
use lifeline_model::envelope::{LogCursor, RecordedEvent, StreamId};
use lifeline_model::life_event::{LifeEvent, LifeEventEvent};
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::{Application, TaskCreated, TaskEvent, TaskOutcome};
use lifeline_model::values::PersonalId;
use lifeline_store::projections::{
    self, Insurance, PersonFact, PersonLifeEvent, PersonRole, PersonRow, VitalStatus,
};
use lifeline_store::{StoreTransaction, Subscriber, SubscriberError};
use uuid::Uuid;

use super::{DecodedBatch, DecodedEvent, HeldRows, Projection, SharedDecoded};
use crate::identity::{assignment_event_id, decode_assignment};

/// The checkpoint name of the person registry projection.
pub const PERSON_PROJECTION: &str = "projection-persons";

/// Keeps `projection_persons` up to date.
///
/// Within a batch it folds a person's changes into one row held in memory and saves each
/// changed row once, at the end of the batch (in the batch's transaction).
#[derive(Debug, Default)]
pub struct PersonProjection {
    rows: HeldPersons,
    log: LogMemory,
    decoded: DecodedBatch,
}

/// What the projection remembers of the log itself (never of its own rows, so a rolled-back
/// batch leaves nothing wrong here): each life event's state and each task's `TaskCreated`, with
/// the cursor they stand at. An event after that cursor finds what it needs here instead of
/// reading the stream back; anything else (a restart, an event handled again after a rollback,
/// memory forgotten) reads the stream as before. Each kind is kept in two generations of at
/// most [`LOG_MEMORY_ENTRIES`] entries ([`Generations`]), which bounds the memory and keeps
/// the most recent entries when the older ones are forgotten.
#[derive(Debug, Default)]
struct LogMemory {
    life_events: Generations<(LogCursor, LifeEvent)>,
    tasks: Generations<(LogCursor, SharedCreated)>,
}

/// A task's `TaskCreated` as decoded for the batch that held it, shared rather than copied: the
/// copy of its application was about 7% of a rebuild's client time. (The shared value is the
/// whole decoded event, 848 bytes against `TaskCreated`'s 176, its application on the heap
/// either way: at most 5.4 MB more for the 8,000 remembered.)
#[derive(Debug, Clone)]
struct SharedCreated(Arc<DecodedEvent>);

impl SharedCreated {
    /// The `TaskCreated` (always there: only those are remembered).
    fn created(&self) -> Option<&TaskCreated> {
        match &*self.0 {
            DecodedEvent::Task(TaskEvent::TaskCreated(created)) => Some(created),
            _ => None,
        }
    }
}

/// Entries [`LogMemory`] keeps of each kind per generation (so at most twice this many). A
/// declaration or a task's application takes one to a few KiB. With a single generation of
/// 4,000 that was cleared wholesale when full, W3 at 500 births/s (1,500 tasks/s) forgot a
/// task's creation before its completion arrived about a third of the time, and read its
/// stream back instead.
const LOG_MEMORY_ENTRIES: usize = 4_000;

/// A map that forgets its older half: inserts go to the current generation; when it is full,
/// it becomes the previous one (the one before is dropped). Lookups see both.
#[derive(Debug)]
struct Generations<V> {
    current: HashMap<Uuid, V>,
    previous: HashMap<Uuid, V>,
}

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }
}

impl<V> Generations<V> {
    fn get(&self, key: &Uuid) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    fn insert(&mut self, key: Uuid, value: V) {
        if self.current.len() >= LOG_MEMORY_ENTRIES && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&key);
        self.current.insert(key, value);
    }
}

impl LogMemory {
    /// The life event as its stream stood before `event`.
    async fn life_event_before(
        &self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
        life_event_id: Uuid,
    ) -> Result<LifeEvent, SubscriberError> {
        match self.life_events.get(&life_event_id) {
            Some((cursor, state)) if *cursor < event.cursor() => Ok(state.clone()),
            _ => life_event_before(tx, event, life_event_id).await,
        }
    }

    /// Remembers the life event's state after `event`, an event of its stream, if what is
    /// remembered stands before it.
    fn life_event_after(&mut self, event: &RecordedEvent, life_event_id: Uuid, state: LifeEvent) {
        if let Some((cursor, _)) = self.life_events.get(&life_event_id) {
            if *cursor >= event.cursor() {
                return;
            }
        }
        self.life_events
            .insert(life_event_id, (event.cursor(), state));
    }

    /// The `TaskCreated` of a task, if it comes before `event`.
    async fn task_created(
        &self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
        task_id: Uuid,
    ) -> Result<Option<SharedCreated>, SubscriberError> {
        match self.tasks.get(&task_id) {
            Some((cursor, created)) if *cursor < event.cursor() => Ok(Some(created.clone())),
            _ => Ok(task_created(tx, event, task_id).await?.map(|created| {
                SharedCreated(Arc::new(DecodedEvent::Task(TaskEvent::TaskCreated(
                    created,
                ))))
            })),
        }
    }

    /// Remembers `decoded`, the `TaskCreated` of `event`.
    fn task_created_at(&mut self, event: &RecordedEvent, decoded: Arc<DecodedEvent>) {
        let shared = SharedCreated(decoded);
        if let Some(task_id) = shared.created().map(|created| created.task_id) {
            self.tasks.insert(task_id, (event.cursor(), shared));
        }
    }
}

impl PersonProjection {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The person rows a batch has changed, by personal ID number.
type HeldPersons = HeldRows<String, PersonRow>;

impl HeldPersons {
    /// The person's row as this batch has it: held, else stored.
    async fn load(
        &self,
        tx: &mut StoreTransaction<'_>,
        personal_id: &PersonalId,
    ) -> Result<Option<PersonRow>, SubscriberError> {
        let key = personal_id.as_str().to_owned();
        if let Some(row) = self.get(&key) {
            return Ok(Some(row.clone()));
        }
        if let Some(known) = self.known(&key) {
            return Ok(known.cloned());
        }
        Ok(projections::load_person(tx, personal_id).await?)
    }

    fn save(&mut self, row: PersonRow) {
        self.put(row.personal_id.as_str().to_owned(), row);
    }
}

/// What is known of a person from one life event's declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPerson {
    pub personal_id: PersonalId,
    pub full_name: String,
    pub date_of_birth: Option<chrono::NaiveDate>,
    pub residence: Option<Residence>,
    pub role: PersonRole,
}

/// Everyone a declaration names with a personal ID number.
pub fn named_persons(declaration: &Declaration) -> Vec<NamedPerson> {
    match declaration {
        Declaration::Birth(birth) => named_in_birth(birth),
        Declaration::Death(death) => named_in_death(death),
    }
}

fn named_in_birth(birth: &BirthDeclaration) -> Vec<NamedPerson> {
    let mut named = Vec::new();
    for (parent, role) in [
        (&birth.mother, PersonRole::Mother),
        (&birth.father, PersonRole::Father),
    ] {
        if let Some(parent) = parent {
            if let Some(personal_id) = &parent.personal_id {
                named.push(NamedPerson {
                    personal_id: personal_id.clone(),
                    full_name: parent.full_name.as_str().to_owned(),
                    date_of_birth: parent.date_of_birth,
                    residence: parent.residence.clone(),
                    role,
                });
            }
        }
    }
    named.push(declarant(&birth.declarant));
    named
}

fn named_in_death(death: &DeathDeclaration) -> Vec<NamedPerson> {
    let mut named = Vec::new();
    if let Some(personal_id) = &death.deceased.personal_id {
        named.push(NamedPerson {
            personal_id: personal_id.clone(),
            full_name: death.deceased.full_name.as_str().to_owned(),
            date_of_birth: death.deceased.date_of_birth,
            residence: death.deceased.residence.clone(),
            role: PersonRole::Deceased,
        });
    }
    named.push(declarant(&death.declarant));
    named
}

fn declarant(declarant: &lifeline_model::declaration::Declarant) -> NamedPerson {
    NamedPerson {
        personal_id: declarant.personal_id.clone(),
        full_name: declarant.full_name.as_str().to_owned(),
        date_of_birth: None,
        residence: None,
        role: PersonRole::Declarant,
    }
}

/// A new registry row for someone first seen now.
pub fn new_person(personal_id: &PersonalId, full_name: &str, at: DateTime<Utc>) -> PersonRow {
    PersonRow {
        personal_id: personal_id.clone(),
        full_name: full_name.to_owned(),
        date_of_birth: None,
        sex: Some(personal_id.sex()),
        vital_status: VitalStatus::Alive,
        date_of_death: None,
        death_life_event_id: None,
        residence: None,
        insurance: None,
        facts: Vec::new(),
        life_events: Vec::new(),
        updated_at: at,
    }
}

/// Applies what a declaration says of `named` to their row. Pure. The declarant's own data
/// (name only) does not overwrite what a record about the person said.
pub fn apply_named(
    row: Option<PersonRow>,
    named: &NamedPerson,
    life_event_id: Uuid,
    kind: ProcedureGroup,
    death_date: Option<chrono::NaiveDate>,
    at: DateTime<Utc>,
) -> PersonRow {
    let mut row = row.unwrap_or_else(|| new_person(&named.personal_id, &named.full_name, at));
    if named.role != PersonRole::Declarant {
        row.full_name = named.full_name.clone();
        if named.date_of_birth.is_some() {
            row.date_of_birth = named.date_of_birth;
        }
        if named.residence.is_some() {
            row.residence = named.residence.clone();
        }
    }
    if named.role == PersonRole::Deceased {
        row.vital_status = VitalStatus::Deceased;
        row.date_of_death = death_date;
        row.death_life_event_id = Some(life_event_id);
    }
    link(&mut row, life_event_id, kind, named.role);
    row.updated_at = at;
    row
}

fn link(row: &mut PersonRow, life_event_id: Uuid, kind: ProcedureGroup, role: PersonRole) {
    let linked = row
        .life_events
        .iter()
        .any(|link| link.life_event_id == life_event_id && link.role == role);
    if !linked {
        row.life_events.push(PersonLifeEvent {
            life_event_id,
            kind,
            role,
            voided: false,
        });
    }
}

/// Undoes what a record said of a person it no longer names (after a correction) or no longer
/// counts (after a void): a death it recorded, and, for a void, marks the link voided. Pure.
pub fn apply_unnamed(
    mut row: PersonRow,
    life_event_id: Uuid,
    voided: bool,
    at: DateTime<Utc>,
) -> PersonRow {
    if row.death_life_event_id == Some(life_event_id) {
        row.vital_status = VitalStatus::Alive;
        row.date_of_death = None;
        row.death_life_event_id = None;
    }
    if voided {
        for link in &mut row.life_events {
            if link.life_event_id == life_event_id {
                link.voided = true;
            }
        }
    } else {
        row.life_events
            .retain(|link| link.life_event_id != life_event_id);
    }
    row.updated_at = at;
    row
}

/// Applies a completed task's outcome to the person it concerns; `follows`, the task a
/// reversal undoes. Pure.
pub fn apply_outcome(
    mut row: PersonRow,
    procedure: ProcedureId,
    task_id: Uuid,
    follows: Option<Uuid>,
    application: &Application,
    outcome: &TaskOutcome,
    at: DateTime<Utc>,
) -> PersonRow {
    let residence_at = |prefix: &str| {
        let field = |name: &str| {
            application
                .get(&format!("{prefix}.{name}"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        match (field("province"), field("commune"), field("address")) {
            (Some(province), Some(commune), Some(address)) => Some(Residence {
                province,
                commune,
                address,
            }),
            _ => None,
        }
    };
    match outcome {
        // A reversal undoes what its procedure did to the person: the residence it registered
        // goes (if it is still the registered one), the one it closed comes back (if none was
        // registered since), the card it issued goes (if it is still the person's: a card
        // issued after it stays). Its application is the reversed task's.
        TaskOutcome::Revoked { .. } => match procedure {
            ProcedureId::ResidenceRegistration => {
                if row.residence.is_some() && row.residence == residence_at("residence") {
                    row.residence = None;
                }
            }
            ProcedureId::ResidenceDeregistration => {
                if row.residence.is_none() {
                    row.residence = residence_at("deceased.residence");
                }
            }
            ProcedureId::ChildHealthInsurance => {
                let issued = row
                    .facts
                    .iter()
                    .rev()
                    .find(|fact| Some(fact.task_id) == follows)
                    .and_then(|fact| fact.details.get("card_number"))
                    .and_then(serde_json::Value::as_str);
                if issued.is_some()
                    && row.insurance.as_ref().map(|card| card.card_number.as_str()) == issued
                {
                    row.insurance = None;
                }
            }
            ProcedureId::BirthRegistration
            | ProcedureId::DeathRegistration
            | ProcedureId::BurialAllowance
            | ProcedureId::FuneralSupport => {}
        },
        TaskOutcome::InsuranceCardIssued {
            card_number,
            valid_until,
        } => {
            row.insurance = Some(Insurance {
                card_number: card_number.clone(),
                valid_until: *valid_until,
            });
        }
        TaskOutcome::ResidenceRegistered { .. } => {
            if let Some(residence) = residence_at("residence") {
                row.residence = Some(residence);
            }
        }
        TaskOutcome::ResidenceClosed { .. } => row.residence = None,
        TaskOutcome::BirthRegistered { .. }
        | TaskOutcome::DeathRegistered { .. }
        | TaskOutcome::PaymentDecided { .. } => {}
    }
    row.facts.push(PersonFact {
        kind: outcome.kind().to_owned(),
        procedure,
        task_id,
        details: serde_json::to_value(outcome).unwrap_or(serde_json::Value::Null),
        at,
    });
    row.updated_at = at;
    row
}

/// The application field naming the person a procedure's outcome is about.
fn subject_field(procedure: ProcedureId) -> Option<(&'static str, &'static str)> {
    match procedure {
        ProcedureId::ResidenceRegistration | ProcedureId::ChildHealthInsurance => {
            Some(("child.personal_id", "child.full_name"))
        }
        ProcedureId::DeathRegistration
        | ProcedureId::ResidenceDeregistration
        | ProcedureId::BurialAllowance
        | ProcedureId::FuneralSupport => Some(("deceased.personal_id", "deceased.full_name")),
        ProcedureId::BirthRegistration => None,
    }
}

#[async_trait]
impl Subscriber for PersonProjection {
    fn name(&self) -> &str {
        PERSON_PROJECTION
    }

    async fn handle(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), SubscriberError> {
        let Some(decoded) = self.decoded.take(event).map_err(SubscriberError::failed)? else {
            return Ok(());
        };
        match &*decoded {
            DecodedEvent::Task(TaskEvent::TaskCreated(_)) => {
                self.log.task_created_at(event, decoded);
                return Ok(());
            }
            DecodedEvent::LifeEvent(_)
            | DecodedEvent::System(SystemEvent::PersonalIdAssigned(_))
            | DecodedEvent::Task(TaskEvent::TaskCompleted(_)) => {}
            DecodedEvent::Task(_) | DecodedEvent::System(_) => return Ok(()),
        }
        let at = event.metadata.recorded_at;
        let rows = &mut self.rows;
        let log = &mut self.log;
        // Owned: moved out when this projection alone decoded it, else copied.
        match Arc::unwrap_or_clone(decoded) {
            DecodedEvent::LifeEvent(LifeEventEvent::BirthRecorded(birth)) => {
                let declaration = Declaration::Birth(birth.declaration);
                apply_recorded(tx, rows, log, event, birth.life_event_id, declaration).await?;
            }
            DecodedEvent::LifeEvent(LifeEventEvent::DeathRecorded(death)) => {
                let declaration = Declaration::Death(death.declaration);
                apply_recorded(tx, rows, log, event, death.life_event_id, declaration).await?;
            }
            DecodedEvent::LifeEvent(LifeEventEvent::LifeEventCorrected(corrected)) => {
                let before = log
                    .life_event_before(tx, event, corrected.life_event_id)
                    .await?;
                let mut after = before.clone();
                let now_named: Vec<PersonalId> = named_persons(&corrected.declaration)
                    .into_iter()
                    .map(|named| named.personal_id)
                    .collect();
                if let Some(before) = before.declaration {
                    for named in named_persons(&before) {
                        if !now_named.contains(&named.personal_id) {
                            undo(
                                tx,
                                rows,
                                &named.personal_id,
                                corrected.life_event_id,
                                false,
                                at,
                            )
                            .await?;
                        }
                    }
                }
                apply_declaration(
                    tx,
                    rows,
                    &corrected.declaration,
                    corrected.life_event_id,
                    at,
                )
                .await?;
                if let Declaration::Birth(birth) = &corrected.declaration {
                    child_follows(tx, rows, event, corrected.life_event_id, birth, at).await?;
                }
                let life_event_id = corrected.life_event_id;
                fold_life_event(&mut after, LifeEventEvent::LifeEventCorrected(corrected));
                log.life_event_after(event, life_event_id, after);
            }
            DecodedEvent::LifeEvent(LifeEventEvent::LifeEventVoided(voided)) => {
                let before = log
                    .life_event_before(tx, event, voided.life_event_id)
                    .await?;
                let mut after = before.clone();
                if let Some(before) = before.declaration {
                    for named in named_persons(&before) {
                        undo(tx, rows, &named.personal_id, voided.life_event_id, true, at).await?;
                    }
                    // The child of a voided birth: its link marked voided too.
                    if matches!(before, Declaration::Birth(_)) {
                        if let Some(child) = assigned_child(tx, event, voided.life_event_id).await?
                        {
                            undo(tx, rows, &child, voided.life_event_id, true, at).await?;
                        }
                    }
                }
                let life_event_id = voided.life_event_id;
                fold_life_event(&mut after, LifeEventEvent::LifeEventVoided(voided));
                log.life_event_after(event, life_event_id, after);
            }
            DecodedEvent::System(SystemEvent::PersonalIdAssigned(assigned)) => {
                let birth = log
                    .life_event_before(tx, event, assigned.life_event_id)
                    .await?;
                let residence = match birth.declaration {
                    Some(Declaration::Birth(birth)) => Some(birth.residence),
                    _ => None,
                };
                let row = rows.load(tx, &assigned.personal_id).await?;
                let mut row = row.unwrap_or_else(|| {
                    new_person(&assigned.personal_id, assigned.full_name.as_str(), at)
                });
                row.full_name = assigned.full_name.as_str().to_owned();
                row.date_of_birth = Some(assigned.date_of_birth);
                row.sex = Some(assigned.sex);
                if residence.is_some() && row.residence.is_none() {
                    row.residence = residence;
                }
                link(
                    &mut row,
                    assigned.life_event_id,
                    ProcedureGroup::Birth,
                    PersonRole::Child,
                );
                row.updated_at = at;
                rows.save(row);
            }
            DecodedEvent::Task(TaskEvent::TaskCompleted(completed)) => {
                let Some(shared) = log.task_created(tx, event, completed.task_id).await? else {
                    return Ok(());
                };
                let Some(created) = shared.created() else {
                    return Ok(());
                };
                let Some((_, name_field)) = subject_field(created.procedure) else {
                    return Ok(());
                };
                let Some(personal_id) = task_subject(created) else {
                    return Ok(());
                };
                let row = match rows.load(tx, &personal_id).await? {
                    Some(row) => row,
                    None => {
                        let name = created
                            .application
                            .get(name_field)
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default();
                        new_person(&personal_id, name, at)
                    }
                };
                let row = apply_outcome(
                    row,
                    created.procedure,
                    completed.task_id,
                    created
                        .follow_up
                        .as_ref()
                        .map(|follow_up| follow_up.follows),
                    &created.application,
                    &completed.outcome,
                    at,
                );
                rows.save(row);
            }
            DecodedEvent::Task(_) | DecodedEvent::System(_) => {}
        }
        Ok(())
    }

    fn begin_batch(&mut self) {
        self.rows.clear();
        self.decoded.clear();
    }

    /// Looks up at once the stored rows of the persons the batch names: in declarations, in
    /// number assignments, and as the subject of completed tasks whose creation is known (in
    /// the batch or remembered). Others (a void's persons) are loaded when handled.
    async fn prepare_batch(
        &mut self,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), SubscriberError> {
        self.decoded.fill(events).map_err(SubscriberError::failed)?;
        let mut created: HashMap<Uuid, &TaskCreated> = HashMap::new();
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        let mut want = |personal_id: PersonalId| {
            if seen.insert(personal_id.as_str().to_owned()) {
                wanted.push(personal_id);
            }
        };
        for event in events {
            match self.decoded.get(&event.event_id) {
                Some(DecodedEvent::LifeEvent(life_event)) => {
                    let named = match life_event {
                        LifeEventEvent::BirthRecorded(birth) => named_in_birth(&birth.declaration),
                        LifeEventEvent::DeathRecorded(death) => named_in_death(&death.declaration),
                        LifeEventEvent::LifeEventCorrected(corrected) => {
                            named_persons(&corrected.declaration)
                        }
                        LifeEventEvent::LifeEventVoided(_) => Vec::new(),
                    };
                    for named in named {
                        want(named.personal_id);
                    }
                }
                Some(DecodedEvent::System(SystemEvent::PersonalIdAssigned(assigned))) => {
                    want(assigned.personal_id.clone());
                }
                Some(DecodedEvent::Task(TaskEvent::TaskCreated(task))) => {
                    created.insert(task.task_id, task);
                }
                Some(DecodedEvent::Task(TaskEvent::TaskCompleted(completed))) => {
                    let task = created.get(&completed.task_id).copied().or_else(|| {
                        self.log
                            .tasks
                            .get(&completed.task_id)
                            .and_then(|(_, shared)| shared.created())
                    });
                    if let Some(personal_id) = task.and_then(task_subject) {
                        want(personal_id);
                    }
                }
                _ => {}
            }
        }
        let stored = projections::load_persons(tx, &wanted).await?;
        self.rows.know_all(
            wanted
                .iter()
                .map(|personal_id| personal_id.as_str().to_owned()),
            stored,
            |row| row.personal_id.as_str().to_owned(),
        );
        Ok(())
    }

    async fn end_batch(&mut self, tx: &mut StoreTransaction<'_>) -> Result<(), SubscriberError> {
        projections::save_persons(tx, &self.rows.drain()).await?;
        Ok(())
    }
}

impl Projection for PersonProjection {
    fn preset_decoded(&mut self, decoded: SharedDecoded) {
        self.decoded.preset(decoded);
    }
}

async fn apply_declaration(
    tx: &mut StoreTransaction<'_>,
    held: &mut HeldPersons,
    declaration: &Declaration,
    life_event_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), SubscriberError> {
    let death_date = match declaration {
        Declaration::Death(death) => Some(death.death.date()),
        Declaration::Birth(_) => None,
    };
    // One person may be named twice (the mother who declares): fold both into one row.
    let mut rows: BTreeMap<String, PersonRow> = BTreeMap::new();
    for named in named_persons(declaration) {
        let key = named.personal_id.as_str().to_owned();
        let row = match rows.remove(&key) {
            Some(row) => Some(row),
            None => held.load(tx, &named.personal_id).await?,
        };
        let row = apply_named(
            row,
            &named,
            life_event_id,
            declaration.group(),
            death_date,
            at,
        );
        rows.insert(key, row);
    }
    for row in rows.into_values() {
        held.save(row);
    }
    Ok(())
}

/// The child's number of the birth record `life_event_id`, if its `PersonalIdAssigned` (under
/// the record's deterministic assignment id) comes before `event` in the log. The declaration
/// never names the child by number, so this is how a record's changes reach the child's row.
async fn assigned_child(
    tx: &mut StoreTransaction<'_>,
    event: &RecordedEvent,
    life_event_id: Uuid,
) -> Result<Option<PersonalId>, SubscriberError> {
    let Some(recorded) = tx.event_by_id(assignment_event_id(life_event_id)).await? else {
        return Ok(None);
    };
    if recorded.cursor() >= event.cursor() {
        return Ok(None);
    }
    let assigned = decode_assignment(life_event_id, &recorded).map_err(SubscriberError::failed)?;
    Ok(Some(assigned.personal_id))
}

/// The child of a corrected birth record, once it has its number: its row takes the corrected
/// name and date of birth.
async fn child_follows(
    tx: &mut StoreTransaction<'_>,
    rows: &mut HeldPersons,
    event: &RecordedEvent,
    life_event_id: Uuid,
    birth: &BirthDeclaration,
    at: DateTime<Utc>,
) -> Result<(), SubscriberError> {
    let Some(child) = assigned_child(tx, event, life_event_id).await? else {
        return Ok(());
    };
    if let Some(mut row) = rows.load(tx, &child).await? {
        row.full_name = birth.child.full_name.as_str().to_owned();
        row.date_of_birth = Some(birth.child.date_of_birth);
        row.updated_at = at;
        rows.save(row);
    }
    Ok(())
}

async fn undo(
    tx: &mut StoreTransaction<'_>,
    held: &mut HeldPersons,
    personal_id: &PersonalId,
    life_event_id: Uuid,
    voided: bool,
    at: DateTime<Utc>,
) -> Result<(), SubscriberError> {
    if let Some(row) = held.load(tx, personal_id).await? {
        held.save(apply_unnamed(row, life_event_id, voided, at));
    }
    Ok(())
}

/// A record's first event (`BirthRecorded`, `DeathRecorded`): its declaration applied, and
/// remembered as the life event's state (what `fold_life_event` makes of it).
async fn apply_recorded(
    tx: &mut StoreTransaction<'_>,
    rows: &mut HeldPersons,
    log: &mut LogMemory,
    event: &RecordedEvent,
    life_event_id: Uuid,
    declaration: Declaration,
) -> Result<(), SubscriberError> {
    let at = event.metadata.recorded_at;
    apply_declaration(tx, rows, &declaration, life_event_id, at).await?;
    if event.stream_version.0 == 1 {
        let state = LifeEvent {
            life_event_id: Some(life_event_id),
            declaration: Some(declaration),
            ..LifeEvent::default()
        };
        log.life_event_after(event, life_event_id, state);
    }
    Ok(())
}

/// The person a task's procedure is about (the number in its application), if any.
fn task_subject(created: &TaskCreated) -> Option<PersonalId> {
    let (id_field, _) = subject_field(created.procedure)?;
    created
        .application
        .get(id_field)
        .and_then(serde_json::Value::as_str)
        .and_then(|raw| PersonalId::parse(raw).ok())
}

/// The life event as its stream stood before `event` (in commit order).
async fn life_event_before(
    tx: &mut StoreTransaction<'_>,
    event: &RecordedEvent,
    life_event_id: Uuid,
) -> Result<LifeEvent, SubscriberError> {
    let mut state = LifeEvent::default();
    for kind in ["birth", "death"] {
        let stream = StreamId::for_kind(kind, life_event_id).map_err(SubscriberError::failed)?;
        for stored in tx.read_stream(&stream).await? {
            if stored.cursor() >= event.cursor() {
                break;
            }
            let life_event: LifeEventEvent =
                codec::decode_recorded(&stored).map_err(SubscriberError::failed)?;
            fold_life_event(&mut state, life_event);
        }
    }
    Ok(state)
}

/// The life event's state after `event` (the declaration is what the projection needs).
fn fold_life_event(state: &mut LifeEvent, event: LifeEventEvent) {
    match event {
        LifeEventEvent::BirthRecorded(birth) => {
            state.life_event_id = Some(birth.life_event_id);
            state.declaration = Some(Declaration::Birth(birth.declaration));
        }
        LifeEventEvent::DeathRecorded(death) => {
            state.life_event_id = Some(death.life_event_id);
            state.declaration = Some(Declaration::Death(death.declaration));
        }
        LifeEventEvent::LifeEventCorrected(corrected) => {
            state.declaration = Some(corrected.declaration);
            state.corrections += 1;
        }
        LifeEventEvent::LifeEventVoided(_) => state.voided = true,
    }
}

/// The `TaskCreated` of a task, read from its stream.
async fn task_created(
    tx: &mut StoreTransaction<'_>,
    event: &RecordedEvent,
    task_id: Uuid,
) -> Result<Option<TaskCreated>, SubscriberError> {
    let stream = StreamId::for_kind("task", task_id).map_err(SubscriberError::failed)?;
    for stored in tx.read_stream(&stream).await? {
        if stored.cursor() >= event.cursor() {
            break;
        }
        if let TaskEvent::TaskCreated(created) =
            codec::decode_recorded(&stored).map_err(SubscriberError::failed)?
        {
            return Ok(Some(created));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> Uuid {
        Uuid::from_u128(n as u128 + 1)
    }

    #[test]
    fn generations_keep_the_recent_entries_and_bound_the_rest() {
        let mut memory = Generations::default();
        for n in 0..=LOG_MEMORY_ENTRIES {
            memory.insert(key(n), n);
        }
        // The rotation moved the first generation aside: still found.
        assert_eq!(memory.get(&key(0)), Some(&0));
        for n in LOG_MEMORY_ENTRIES + 1..=2 * LOG_MEMORY_ENTRIES {
            memory.insert(key(n), n);
        }
        // The second rotation dropped it; the last LOG_MEMORY_ENTRIES are all there.
        assert_eq!(memory.get(&key(0)), None);
        for n in LOG_MEMORY_ENTRIES + 1..=2 * LOG_MEMORY_ENTRIES {
            assert_eq!(memory.get(&key(n)), Some(&n), "entry {n}");
        }
        assert!(memory.current.len() + memory.previous.len() <= 2 * LOG_MEMORY_ENTRIES);
        // A key updated after moving aside is found with its new value, once.
        memory.insert(key(LOG_MEMORY_ENTRIES + 1), 7);
        assert_eq!(memory.get(&key(LOG_MEMORY_ENTRIES + 1)), Some(&7));
        assert!(!memory.previous.contains_key(&key(LOG_MEMORY_ENTRIES + 1)));
    }

    #[test]
    fn a_completed_reversal_takes_back_only_the_card_its_task_issued() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let child = PersonalId::parse("079326000123").unwrap();
        let card = |number: &str| TaskOutcome::InsuranceCardIssued {
            card_number: number.to_owned(),
            valid_until: chrono::NaiveDate::from_ymd_opt(2032, 11, 19).unwrap(),
        };
        let revoked = TaskOutcome::Revoked {
            decision_number: "TH-1".to_owned(),
        };
        let insurance = ProcedureId::ChildHealthInsurance;
        let none = Application::default();
        let first = key(1);
        let row = apply_outcome(
            new_person(&child, "An", at),
            insurance,
            first,
            None,
            &none,
            &card("TE1-A"),
            at,
        );
        // Reissued meanwhile (a correction made the child eligible again): card B stays.
        let reissued = apply_outcome(
            row.clone(),
            insurance,
            key(2),
            None,
            &none,
            &card("TE1-B"),
            at,
        );
        let kept = apply_outcome(
            reissued,
            insurance,
            key(3),
            Some(first),
            &none,
            &revoked,
            at,
        );
        assert_eq!(kept.insurance.unwrap().card_number, "TE1-B");
        // Card A still the person's: it goes.
        let taken = apply_outcome(row, insurance, key(3), Some(first), &none, &revoked, at);
        assert_eq!(taken.insurance, None);
        assert_eq!(taken.facts.last().unwrap().kind, "revoked");
    }
}
