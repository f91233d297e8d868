//! The policy engine: implements [`crate::PolicyHandler`] by decoding each event, looking up the
//! facts its rule needs inside the runtime's transaction, running the pure rule, and appending
//! the result with deterministic ids so that a redelivery changes nothing.
//!
//! What each policy appends (every event with role `System`, actor `policy:<name>`, the source
//! event's correlation id, the source event as causation):
//! - `birth-registration` (on `BirthRecorded`), `death-registration` (on `DeathRecorded`): one
//!   `TaskCreated` to `task-<task_id(policy, source, procedure)>`, prefilled from the record as
//!   it stands (with its corrections; none for a voided record).
//! - `birth-followups` (on `TaskCompleted` of an original birth registration with a
//!   certificate): the child's `PersonalIdAssigned` (through the [`IdentityAllocator`], to
//!   `pin-<pin>`), then a `TaskCreated` per chosen follow-up procedure.
//! - `death-followups` (on `TaskCompleted` of an original death registration): an
//!   `EligibilityDecided` per chosen follow-up procedure to `eligibility-<task id it would
//!   have>`, and a `TaskCreated` for each eligible one.
//! - `corrections` (on `LifeEventCorrected`, `LifeEventVoided`): `TaskAmended` or
//!   `TaskCancelled` to open tasks at the version read, re-issue or reversal tasks for completed
//!   ones; once a record's follow-ups were made, they follow the corrected choice and area
//!   (a birth's: a newly chosen one's task, a dropped one's withdrawn), and a death's are
//!   decided again: a changed `EligibilityDecided` to `eligibility-<task id of this
//!   correction>`, one never decided to `death-followups`' own stream (see
//!   [`rules::corrections::FollowUps`]).
//!
//! The registrations and the follow-ups read the record they prefill from held
//! ([`StoreTransaction::read_streams_held`]): a correction or a void of it commits before that
//! read or after their tasks, so `corrections`, which reads the tasks when it runs, never misses
//! a task prefilled from the record before it. In a deferred transaction (the NATS consumers',
//! [`PolicyHandler::defers_begin`]) the hold is taken by the first write instead, which fails
//! if the record moved since the read (the batch then runs again, held from its read): a
//! correction commits before the hold, and is read on the second run, or after the tasks.
//!
//! A new stream is appended with "stream must not exist" and the event id
//! [`task_created_event_id`] or [`eligibility_event_id`]; an update with the version read and the
//! rule's event id. An event id already stored means the work was done: nothing is appended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use lifeline_model::codec::{decode_recorded, to_new_event, EventFamily};
use lifeline_model::declaration::{DeathDeclaration, Declaration};
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StreamId, StreamVersion,
};
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::{EligibilityDecided, PersonalIdAssigned, SystemEvent};
use lifeline_model::task::{TaskCompleted, TaskEvent, TaskOutcome};
use lifeline_store::projections::{self, TaskRow};
use lifeline_store::{AppendError, StoreError, StoreTransaction};
use uuid::Uuid;

use crate::facts::{Context, LifeEventFacts, PersonFacts, Source, TaskFacts};
use crate::handler::{apply_each, pick_noticed, read_noticed, Noticed, PolicyError, PolicyHandler};
use crate::identity::{
    assignment_event_id, decode_assignment, DraftedAssignment, IdentityAllocator, IdentityError,
    PinRequest, StoreAllocator,
};
use crate::projections::inbox::created_row;
use crate::reference::{ReferenceData, ReferenceError};
use crate::rules::corrections::{BirthChoice, FollowUps, Redecision};
use crate::rules::{
    self, Command, BIRTH_FOLLOWUPS, BIRTH_REGISTRATION, CORRECTIONS, DEATH_FOLLOWUPS,
    DEATH_REGISTRATION,
};
use crate::runtime::Notices;

/// The namespace of every id Lifeline derives (UUIDv5) for exactly-once effects.
pub const LIFELINE_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6c69_6e65_8000_0000_0000_0001);

/// Every policy the engine runs, in chain order.
pub const POLICY_NAMES: [&str; 5] = [
    BIRTH_REGISTRATION,
    BIRTH_FOLLOWUPS,
    DEATH_REGISTRATION,
    DEATH_FOLLOWUPS,
    CORRECTIONS,
];

/// The stream kind of tasks: `task-<task id>`.
pub const TASK_STREAM_KIND: &str = "task";

/// The stream kind of eligibility decisions: `eligibility-<key>`.
pub const ELIGIBILITY_STREAM_KIND: &str = "eligibility";

/// A UUIDv5 of `name` in Lifeline's namespace.
pub fn deterministic_id(name: &str) -> Uuid {
    Uuid::new_v5(&LIFELINE_NAMESPACE, name.as_bytes())
}

/// The id of the task policy `policy` creates for `procedure` because of event `source`:
/// UUIDv5 of `"<policy>/<source>/<procedure>"`.
pub fn task_id(
    policy: &str,
    source: Uuid,
    procedure: lifeline_model::procedure::ProcedureId,
) -> Uuid {
    deterministic_id(&format!("{policy}/{source}/{procedure}"))
}

/// The event id of a task's `TaskCreated`: UUIDv5 of `"task-created/<task id>"`.
pub fn task_created_event_id(task_id: Uuid) -> Uuid {
    deterministic_id(&format!("task-created/{task_id}"))
}

/// The event id of the eligibility decision under `key`: UUIDv5 of `"eligibility/<key>"`.
pub fn eligibility_event_id(key: Uuid) -> Uuid {
    deterministic_id(&format!("eligibility/{key}"))
}

/// The stream of a task.
pub fn task_stream(task_id: Uuid) -> Result<StreamId, lifeline_model::envelope::InvalidStreamId> {
    StreamId::for_kind(TASK_STREAM_KIND, task_id)
}

/// The stream of a life event: `birth-<id>` or `death-<id>`.
pub fn life_event_stream(
    group: ProcedureGroup,
    life_event_id: Uuid,
) -> Result<StreamId, lifeline_model::envelope::InvalidStreamId> {
    let kind = match group {
        ProcedureGroup::Birth => "birth",
        ProcedureGroup::Death => "death",
    };
    StreamId::for_kind(kind, life_event_id)
}

/// The [`PolicyHandler`] running Lifeline's rules.
pub struct PolicyEngine {
    reference: ReferenceData,
    allocator: Arc<dyn IdentityAllocator>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").finish_non_exhaustive()
    }
}

impl PolicyEngine {
    pub fn new(reference: ReferenceData, allocator: Arc<dyn IdentityAllocator>) -> Self {
        Self {
            reference,
            allocator,
        }
    }

    /// The embedded reference data (`policies/data/`) and Lifeline's own store allocator.
    pub fn embedded() -> Result<Self, ReferenceError> {
        Ok(Self::new(
            ReferenceData::embedded()?,
            Arc::new(StoreAllocator::new()),
        ))
    }

    pub fn reference(&self) -> &ReferenceData {
        &self.reference
    }
}

#[async_trait]
impl PolicyHandler for PolicyEngine {
    fn policy_names(&self) -> Vec<&'static str> {
        POLICY_NAMES.to_vec()
    }

    fn wants(&self, policy: &str, event_type: &str) -> bool {
        matches!(
            (policy, event_type),
            (BIRTH_REGISTRATION, "BirthRecorded")
                | (DEATH_REGISTRATION, "DeathRecorded")
                | (BIRTH_FOLLOWUPS | DEATH_FOLLOWUPS, "TaskCompleted")
                | (CORRECTIONS, "LifeEventCorrected" | "LifeEventVoided")
        )
    }

    /// The registrations take their one event type; the follow-ups the completions of the
    /// registration they follow (the other's completions, and the second steps', never reach
    /// them); `corrections` the events of records (its two types and the records' first
    /// events: one notice a record instead of every notice of the stream).
    fn defers_begin(&self, policy: &str) -> bool {
        // The registrations and the follow-ups read every record and task first and write once
        // at the end (`apply_read`); `corrections` reads between its writes.
        matches!(
            policy,
            BIRTH_REGISTRATION | DEATH_REGISTRATION | BIRTH_FOLLOWUPS | DEATH_FOLLOWUPS
        )
    }

    fn notices(&self, policy: &str) -> Notices {
        match policy {
            BIRTH_REGISTRATION => Notices::OfType("BirthRecorded"),
            DEATH_REGISTRATION => Notices::OfType("DeathRecorded"),
            BIRTH_FOLLOWUPS => completions_of(ProcedureId::BirthRegistration),
            DEATH_FOLLOWUPS => completions_of(ProcedureId::DeathRegistration),
            CORRECTIONS => Notices::OfRecords,
            _ => Notices::All,
        }
    }

    /// Every policy but `corrections` runs a batch in three steps: every event's reads (the
    /// follow-ups' read ahead for the whole batch: `ReadAhead`), then
    /// the writes a decision needs (every child's personal ID number, drawn together:
    /// `IdentityAllocator::assign_many`), then every event's appends with the new tasks' inbox
    /// rows in one grouped append (`StoreTransaction::append_many_with_new_tasks`). A batch
    /// with children to number first tries the last two steps as one statement, the numbers
    /// drafted (`IdentityAllocator::draft_many`, `append_drafted`). The batch's events do not
    /// read what the batch writes (a completion's task and record were written before it), so
    /// the transaction takes its first write, which holds back every gap-free reader of the
    /// log, only after the last read. In a deferred transaction (the NATS consumers':
    /// [`PolicyHandler::defers_begin`]) the held reads are plain, and the one write holds the
    /// records read (failing if one moved), usually as a statement of its own. `corrections`
    /// reads the tasks that earlier corrections of the batch may have changed, and applies one
    /// event after another.
    async fn apply_batch(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), (Option<usize>, PolicyError)> {
        self.apply_read(policy, tx, events, HashMap::new()).await
    }

    /// The registrations read the stream of each record they are told of anyway (held until
    /// the batch commits; in a deferred transaction, from its first write), and the follow-ups the stream of each completed task: they read
    /// those streams first and take the noticed events from them, one statement fewer per
    /// batch than reading the events by id first. (The follow-ups receive only their
    /// registration's completions, `PolicyHandler::notices`; while they received every
    /// completion, reading each one's task to skip most of them cost more than it saved.)
    /// `corrections`, and notices whose stream is not a stream id, read the events by id.
    async fn apply_notices(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        notices: &[Noticed<'_>],
    ) -> Result<(), (Option<usize>, PolicyError)> {
        let held = matches!(policy, BIRTH_REGISTRATION | DEATH_REGISTRATION);
        let tasks = matches!(policy, BIRTH_FOLLOWUPS | DEATH_FOLLOWUPS);
        // Each notice's stream, if this policy reads them first and every one is a stream id.
        let streams = (held || tasks)
            .then(|| {
                notices
                    .iter()
                    .map(|notice| StreamId::parse(notice.stream_id).ok())
                    .collect::<Option<Vec<StreamId>>>()
            })
            .flatten();
        let Some(streams) = streams else {
            let events = read_noticed(tx, notices).await?;
            return self.apply_batch(policy, tx, &events).await;
        };
        let unique = unread(&streams, &HashMap::new());
        let read = if held {
            tx.read_streams_held(&unique).await
        } else {
            tx.read_streams(&unique).await
        }
        .map_err(|error| (None, PolicyError::Store(error)))?;
        let events = pick_noticed(notices, |index, notice| {
            read.get(streams.get(index)?)?
                .iter()
                .find(|event| event.event_id == notice.event_id)
        })?;
        self.apply_read(policy, tx, &events, read).await
    }

    #[tracing::instrument(skip_all, fields(policy, event_id = %event.event_id, stream = %event.stream_id))]
    async fn apply(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), PolicyError> {
        let run = Run {
            policy,
            event,
            context: Context {
                source: Source::of(event),
                now: Utc::now(),
                reference: &self.reference,
            },
        };
        if !POLICY_NAMES.contains(&policy) {
            return Err(run.refused(format!("unknown policy {policy:?}")));
        }
        if !self.wants(policy, &event.event_type) {
            return Ok(());
        }
        let commands = if policy == CORRECTIONS {
            run.corrections(tx).await?
        } else {
            let read = run.read(tx, &mut ReadAhead::default()).await?;
            let number = match &read {
                Read::Birth(birth) => Some(self.allocator.assign(tx, &birth.request).await),
                Read::Decided(_) => None,
            };
            run.decide(read, number)?
        };
        // The event's commands are appended together: one statement when they all create
        // streams (`StoreTransaction::append_many_with_new_tasks`, through `append_planned`),
        // each still answered on its own.
        let planned = commands
            .into_iter()
            .map(|command| run.prepare(command).map(|prepared| (None, prepared)))
            .collect::<Result<Vec<_>, _>>()?;
        let appended = append_planned(tx, planned, false)
            .await
            .map_err(|(_, error)| error)?;
        tracing::debug!(appended, "policy applied");
        Ok(())
    }
}

impl PolicyEngine {
    /// [`PolicyHandler::apply_batch`], with the streams `read` already holds (by
    /// [`PolicyHandler::apply_notices`]: a registration's records, read held; a follow-up's
    /// completed tasks) taken from it instead of read again.
    async fn apply_read(
        &self,
        policy: &str,
        tx: &mut StoreTransaction<'_>,
        events: &[RecordedEvent],
        read: HashMap<StreamId, Vec<RecordedEvent>>,
    ) -> Result<(), (Option<usize>, PolicyError)> {
        if !POLICY_NAMES.contains(&policy) || policy == CORRECTIONS {
            return apply_each(self, policy, tx, events).await;
        }
        let now = Utc::now();
        let mut runs = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if !self.wants(policy, &event.event_type) {
                continue;
            }
            let run = Run {
                policy,
                event,
                context: Context {
                    source: Source::of(event),
                    now,
                    reference: &self.reference,
                },
            };
            runs.push((index, run));
        }
        let mut ahead = match policy {
            BIRTH_FOLLOWUPS | DEATH_FOLLOWUPS => ReadAhead::follow_ups(tx, &runs, read).await,
            BIRTH_REGISTRATION | DEATH_REGISTRATION => ReadAhead::records(tx, &runs, read).await,
            _ => Ok(ReadAhead::default()),
        }
        .map_err(|error| (None, PolicyError::Store(error)))?;
        let mut read_runs = Vec::with_capacity(runs.len());
        for (index, run) in runs {
            let read = run
                .read(tx, &mut ahead)
                .await
                .map_err(|error| (Some(index), error))?;
            read_runs.push((index, run, read));
        }
        let runs = read_runs;
        // Every child's number in one draw (one statement when no number is taken).
        let requests: Vec<PinRequest> = runs
            .iter()
            .filter_map(|(_, _, read)| match read {
                Read::Birth(birth) => Some(birth.request.clone()),
                Read::Decided(_) => None,
            })
            .collect();
        // Usually the numbers drawn first are free: stored with what they decide, in one
        // statement. Otherwise (a number taken, an earlier assignment: a redelivery) nothing
        // of that was written, and the numbers are drawn and stored on their own, as below.
        let drafts = if requests.is_empty() {
            None
        } else {
            self.allocator.draft_many(&requests)
        };
        let whole: Option<Vec<&DraftedAssignment>> = drafts
            .as_ref()
            .and_then(|drafts| drafts.iter().map(|draft| draft.as_ref().ok()).collect());
        if let Some(whole) = whole {
            if append_drafted(tx, &runs, &whole).await? {
                return Ok(());
            }
        }
        let mut assigned = match drafts {
            _ if requests.is_empty() => Ok(Vec::new()),
            // The drafts are the first draws: a number taken is drawn again, an earlier
            // assignment answered, a failed draft's error answered for its event.
            Some(drafts) => {
                self.allocator
                    .assign_many_drafted(tx, &requests, drafts)
                    .await
            }
            None => self.allocator.assign_many(tx, &requests).await,
        }
        .map_err(|error| (None, PolicyError::Store(error)))?
        .into_iter();
        // (index of the event, stream, expected version, event) of every append, in order.
        let mut planned = Vec::new();
        for (index, run, read) in runs {
            let failed = |error| (Some(index), error);
            let number = match read {
                Read::Birth(_) => Some(assigned.next().ok_or_else(|| {
                    failed(run.refused("the allocator answered fewer requests than asked"))
                })?),
                Read::Decided(_) => None,
            };
            for command in run.decide(read, number).map_err(failed)? {
                planned.push((Some(index), run.prepare(command).map_err(failed)?));
            }
        }
        // The batch's last write: in a deferred transaction, its own transaction if it can be.
        append_planned(tx, planned, true).await?;
        Ok(())
    }
}

/// A batch's runs decided with the children's drafted numbers (`drafts`, one per birth read, in
/// order) and appended whole with them and the new tasks' inbox rows, the assignments first, in
/// one statement (`StoreTransaction::append_whole_with_new_tasks`): true if stored. False when
/// the store refused the whole (nothing of it written: the caller stores the drafts as the
/// first draws with `IdentityAllocator::assign_many_drafted`, drawing again only for a number
/// taken, and decides again: one statement more than the two-step way alone), or when a
/// decision or an append could not be made from a draft (the caller's own run meets that again
/// and answers it for its event).
async fn append_drafted(
    tx: &mut StoreTransaction<'_>,
    runs: &[(usize, Run<'_>, Read)],
    drafts: &[&DraftedAssignment],
) -> Result<bool, (Option<usize>, PolicyError)> {
    let mut drafts = drafts.iter().copied();
    let mut assignments = Vec::new();
    let mut planned: Vec<PlannedAppend> = Vec::new();
    for (index, run, read) in runs {
        let commands = match read {
            Read::Decided(commands) => commands.clone(),
            Read::Birth(birth) => {
                let Some(draft) = drafts.next() else {
                    return Ok(false);
                };
                let Ok(commands) = run.decide_birth(birth, &draft.assigned) else {
                    return Ok(false);
                };
                assignments.push(draft);
                commands
            }
        };
        for command in commands {
            let Ok(prepared) = run.prepare(command) else {
                return Ok(false);
            };
            planned.push((Some(*index), prepared));
        }
    }
    let mut appends = Vec::with_capacity(assignments.len() + planned.len());
    for draft in &assignments {
        appends.push((
            &draft.stream,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&draft.event),
        ));
    }
    for (_, prepared) in &planned {
        appends.push((
            &prepared.stream,
            prepared.expected,
            std::slice::from_ref(&prepared.event),
        ));
    }
    let rows: Vec<&TaskRow> = planned
        .iter()
        .filter_map(|(_, prepared)| prepared.inbox_row.as_ref())
        .collect();
    let stored = tx
        .append_whole_with_new_tasks(&appends, &rows)
        .await
        .map_err(|error| (None, PolicyError::Store(error)))?;
    Ok(stored.is_some())
}

/// The notices of the completions of `procedure`'s tasks (published under the procedure each
/// completion names: [`crate::runtime::BusConfig::subject_for`]).
fn completions_of(procedure: ProcedureId) -> Notices {
    Notices::OfTopic {
        kind: TASK_STREAM_KIND,
        topic: procedure.as_str(),
        event_type: "TaskCompleted",
    }
}

/// One append a policy run asks for: the index of its event in the batch (if any) and the
/// append.
type PlannedAppend = (Option<usize>, Prepared);

/// An append a command asks for.
struct Prepared {
    stream: StreamId,
    expected: ExpectedVersion,
    event: NewEvent,
    /// A new task's inbox row (`inbox::created_row`), written with its `TaskCreated`.
    inbox_row: Option<TaskRow>,
}

/// Appends `planned` in one [`StoreTransaction::append_many_with_new_tasks`]; an append
/// refused because its event is already stored (a redelivery) counts as done. Returns how many
/// were appended; an error comes with its append's event index.
///
/// The new tasks' inbox rows are inserted in the same transaction (inline: an agency sees a
/// task as soon as its creation commits, without waiting for the inbox projection's next
/// batch), only for the creations this run appended, and without overwriting a row that
/// exists (`projections::insert_new_tasks`): on PostgreSQL, when the grouped statement stores
/// every append (the usual case), by that statement; otherwise by a statement of their own
/// after it, for the appends this run made. The inbox projection still folds every task
/// event, the creation included: the row it writes for a creation is the same
/// (`apply_task_event` makes it with `created_row`), so a rebuild, or a task created before
/// the inline write, ends as before.
///
/// `last`: nothing is written after these appends. In a deferred transaction not begun yet
/// (`EventStore::begin_deferred`), appends that all create streams are then first tried whole,
/// with their rows, as the transaction's one write
/// ([`StoreTransaction::append_whole_with_new_tasks`]: its own transaction, holding the
/// records read held); what that does not store (a redelivery, a record moved) goes the way
/// above, in the transaction begun.
async fn append_planned(
    tx: &mut StoreTransaction<'_>,
    planned: Vec<PlannedAppend>,
    last: bool,
) -> Result<usize, (Option<usize>, PolicyError)> {
    if planned.is_empty() {
        return Ok(0);
    }
    let appends: Vec<_> = planned
        .iter()
        .map(|(_, prepared)| {
            (
                &prepared.stream,
                prepared.expected,
                std::slice::from_ref(&prepared.event),
            )
        })
        .collect();
    let rows: Vec<&TaskRow> = planned
        .iter()
        .filter_map(|(_, prepared)| prepared.inbox_row.as_ref())
        .collect();
    if last && tx.is_deferred() {
        let whole = tx
            .append_whole_with_new_tasks(&appends, &rows)
            .await
            .map_err(|error| (None, PolicyError::Store(error)))?;
        if let Some(outcomes) = whole {
            return Ok(outcomes
                .iter()
                .filter(|outcome| !outcome.already_stored)
                .count());
        }
    }
    // Usually the grouped statement stores every append and inserts the rows with them.
    let (results, rows_written) = tx
        .append_many_with_new_tasks(&appends, &rows)
        .await
        .map_err(|error| (None, PolicyError::Store(error)))?;
    let mut appended = 0;
    let mut inbox_rows = Vec::new();
    for ((index, prepared), result) in planned.iter().zip(results) {
        if duplicate_or_error(tx, prepared.event.event_id, result)
            .await
            .map_err(|error| (*index, error))?
        {
            appended += 1;
            inbox_rows.extend(prepared.inbox_row.as_ref());
        }
    }
    if !rows_written && !inbox_rows.is_empty() {
        projections::insert_new_tasks(tx, &inbox_rows)
            .await
            .map_err(|error| (None, PolicyError::Projection(error)))?;
    }
    Ok(appended)
}

/// What a lane batch of follow-up runs will read, read before the runs in one statement per
/// kind: the completed tasks, then their life events' streams (a batch reads nothing it
/// writes). A run takes what it finds here and reads the store for anything else, so a run
/// whose event could not be read ahead for (another kind of event or outcome, an event or
/// task that does not decode) meets its own refusal when it reads.
#[derive(Default)]
struct ReadAhead {
    /// Each completed task, folded, with the global position of its creation (`None`: no such
    /// task).
    tasks: HashMap<Uuid, Option<(i64, TaskFacts)>>,
    life_events: HashMap<StreamId, Vec<RecordedEvent>>,
}

impl ReadAhead {
    /// `read`: task streams already read (the batch's own, [`PolicyHandler::apply_notices`]);
    /// the others are read here.
    async fn follow_ups(
        tx: &mut StoreTransaction<'_>,
        runs: &[(usize, Run<'_>)],
        read: HashMap<StreamId, Vec<RecordedEvent>>,
    ) -> Result<Self, StoreError> {
        let mut ahead = Self::default();
        // (the run, the completed task, its stream)
        let mut completed = Vec::new();
        for (_, run) in runs {
            let Some((procedure, _)) = run.follows() else {
                continue;
            };
            let Ok(Some(completion)) = run.completion(procedure) else {
                continue;
            };
            if let Ok(stream) = task_stream(completion.task_id) {
                completed.push((run, completion.task_id, stream));
            }
        }
        if completed.is_empty() {
            return Ok(ahead);
        }
        let streams = unread(completed.iter().map(|(_, _, stream)| stream), &read);
        let mut tasks = read;
        if !streams.is_empty() {
            tasks.extend(tx.read_streams(&streams).await?);
        }
        let mut records = Vec::new();
        for (run, task_id, stream) in &completed {
            let Some(events) = tasks.remove(stream) else {
                continue; // the same task twice in the batch: read ahead once
            };
            let Ok(task) = run.fold_task(&events) else {
                continue;
            };
            let found = events
                .first()
                .map(|first| first.global_position.0)
                .zip(task);
            if let (Some((_, task)), Some((procedure, group))) = (&found, run.follows()) {
                if task.created.procedure == procedure {
                    if let Ok(stream) = life_event_stream(group, task.created.life_event_id) {
                        if !records.contains(&stream) {
                            records.push(stream);
                        }
                    }
                }
            }
            ahead.tasks.insert(*task_id, found);
        }
        if !records.is_empty() {
            let streams: Vec<&StreamId> = records.iter().collect();
            ahead.life_events = tx.read_streams_held(&streams).await?;
        }
        Ok(ahead)
    }

    /// A lane batch of registration runs: every run's record (the stream of the event it
    /// reacts to), held until the batch commits (in a deferred transaction, from its first
    /// write). `held`: records already read held (the
    /// batch's own, [`PolicyHandler::apply_notices`]); the others are read held here.
    async fn records(
        tx: &mut StoreTransaction<'_>,
        runs: &[(usize, Run<'_>)],
        held: HashMap<StreamId, Vec<RecordedEvent>>,
    ) -> Result<Self, StoreError> {
        let streams = unread(runs.iter().map(|(_, run)| &run.event.stream_id), &held);
        let mut life_events = held;
        if !streams.is_empty() {
            life_events.extend(tx.read_streams_held(&streams).await?);
        }
        Ok(Self {
            life_events,
            ..Self::default()
        })
    }
}

/// Each of `streams` once, in order, but those `read` holds already.
fn unread<'s>(
    streams: impl IntoIterator<Item = &'s StreamId>,
    read: &HashMap<StreamId, Vec<RecordedEvent>>,
) -> Vec<&'s StreamId> {
    let mut unread: Vec<&StreamId> = Vec::new();
    for stream in streams {
        if !read.contains_key(stream) && !unread.contains(&stream) {
            unread.push(stream);
        }
    }
    unread
}

/// What a policy run read, before it writes anything.
enum Read {
    /// The commands, decided from the reads alone.
    Decided(Vec<Command>),
    /// A birth registration's completion: the child needs a personal ID number (a write) before
    /// the follow-ups are decided.
    Birth(Box<BirthRead>),
}

/// What birth follow-ups read of a birth registration's completion.
struct BirthRead {
    completed: TaskCompleted,
    task: TaskFacts,
    life_event: LifeEventFacts,
    request: PinRequest,
}

/// One policy run on one event.
struct Run<'a> {
    policy: &'a str,
    event: &'a RecordedEvent,
    context: Context<'a>,
}

impl Run<'_> {
    fn refused(&self, message: impl Into<String>) -> PolicyError {
        PolicyError::Refused {
            policy: self.policy.to_owned(),
            event_id: self.event.event_id,
            message: message.into(),
        }
    }

    fn decode<E: EventFamily>(&self) -> Result<E, PolicyError> {
        decode_recorded(self.event).map_err(|error| {
            self.refused(format!("cannot decode {}: {error}", self.event.event_type))
        })
    }

    fn rule<T>(&self, result: Result<T, rules::RuleError>) -> Result<T, PolicyError> {
        result.map_err(|error| self.refused(error.to_string()))
    }

    fn metadata(&self) -> EventMetadata {
        EventMetadata::system(
            format!("policy:{}", self.policy),
            self.context.source.correlation_id,
            Some(self.context.source.event_id),
            self.context.now,
        )
    }

    /// The registration task of a recorded birth or death, prefilled from the record as it
    /// stands (read held: see [`StoreTransaction::read_streams_held`]), not as first recorded:
    /// a correction the `corrections` policy handled before this task existed found nothing
    /// to amend, so the task must carry it; a voided record gets no task.
    async fn registration(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
    ) -> Result<Vec<Command>, PolicyError> {
        let recorded = match self.decode::<LifeEventEvent>()? {
            recorded @ LifeEventEvent::BirthRecorded(_) if self.policy == BIRTH_REGISTRATION => {
                recorded
            }
            recorded @ LifeEventEvent::DeathRecorded(_) if self.policy == DEATH_REGISTRATION => {
                recorded
            }
            _ => return Ok(vec![]),
        };
        let stream = &self.event.stream_id;
        let events = match ahead.life_events.remove(stream) {
            Some(events) => events,
            None => tx
                .read_streams_held(&[stream])
                .await?
                .remove(stream)
                .unwrap_or_default(),
        };
        let Some(life_event) = self.fold_life_event(&events, None)? else {
            return Err(self.refused(format!("{stream} has no record")));
        };
        if life_event.record_event_id != self.event.event_id {
            return Err(self.refused(format!(
                "{stream} was recorded by event {}",
                life_event.record_event_id
            )));
        }
        if life_event.voided {
            return Ok(vec![]);
        }
        // The record as it stands: its declaration and its `late` decided again by the
        // corrections already made (until 2026-12-07 a correction handled before the
        // registration left the task with `late` as first recorded).
        let late = life_event.late;
        match (recorded, life_event.declaration) {
            (LifeEventEvent::BirthRecorded(mut birth), Declaration::Birth(current)) => {
                birth.declaration = current;
                birth.late = late;
                self.rule(rules::birth_registration::react(&birth, &self.context))
            }
            (LifeEventEvent::DeathRecorded(mut death), Declaration::Death(current)) => {
                death.declaration = current;
                death.late = late;
                self.rule(rules::death_registration::react(&death, &self.context))
            }
            _ => Err(self.refused(format!(
                "{stream} was corrected into another kind of record"
            ))),
        }
    }

    /// The registration a follow-up policy follows, and its group.
    fn follows(&self) -> Option<(ProcedureId, ProcedureGroup)> {
        match self.policy {
            BIRTH_FOLLOWUPS => Some((ProcedureId::BirthRegistration, ProcedureGroup::Birth)),
            DEATH_FOLLOWUPS => Some((ProcedureId::DeathRegistration, ProcedureGroup::Death)),
            _ => None,
        }
    }

    /// The completion, if the event is a `TaskCompleted` with an outcome of `procedure`.
    fn completion(&self, procedure: ProcedureId) -> Result<Option<TaskCompleted>, PolicyError> {
        let TaskEvent::TaskCompleted(completed) = self.decode::<TaskEvent>()? else {
            return Ok(None);
        };
        // Each registration completes with its own kind of outcome: another kind is not a
        // completion of `procedure`, and its task need not be read (every completion reaches
        // both follow-up policies).
        let outcome_fits = match procedure {
            ProcedureId::BirthRegistration => {
                matches!(completed.outcome, TaskOutcome::BirthRegistered { .. })
            }
            ProcedureId::DeathRegistration => {
                matches!(completed.outcome, TaskOutcome::DeathRegistered { .. })
            }
            _ => true,
        };
        Ok(outcome_fits.then_some(completed))
    }

    /// The completion and its task, if the event is a `TaskCompleted` of a task of `procedure`.
    async fn completed_task(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
        procedure: ProcedureId,
    ) -> Result<Option<(TaskCompleted, TaskFacts)>, PolicyError> {
        let Some(completed) = self.completion(procedure)? else {
            return Ok(None);
        };
        let found = match ahead.tasks.remove(&completed.task_id) {
            Some(found) => found,
            None => self.find_task(tx, completed.task_id).await?,
        };
        let Some((_, task)) = found else {
            return Err(self.refused(format!("task {} has no TaskCreated", completed.task_id)));
        };
        if task.created.procedure != procedure {
            return Ok(None);
        }
        Ok(Some((completed, task)))
    }

    async fn life_event(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
        group: ProcedureGroup,
        life_event_id: Uuid,
    ) -> Result<LifeEventFacts, PolicyError> {
        let stream = self.stream(life_event_stream(group, life_event_id))?;
        let events = match ahead.life_events.remove(&stream) {
            Some(events) => events,
            None => tx
                .read_streams_held(&[&stream])
                .await?
                .remove(&stream)
                .unwrap_or_default(),
        };
        let facts = self.fold_life_event(&events, None)?;
        facts.ok_or_else(|| self.refused(format!("life event {life_event_id} is not recorded")))
    }

    /// Folds a life event's events, up to and including version `until` if given.
    fn fold_life_event(
        &self,
        events: &[RecordedEvent],
        until: Option<StreamVersion>,
    ) -> Result<Option<LifeEventFacts>, PolicyError> {
        let mut decoded = Vec::with_capacity(events.len());
        for recorded in events {
            if until.is_some_and(|until| recorded.stream_version > until) {
                break;
            }
            let event = decode_recorded::<LifeEventEvent>(recorded).map_err(|error| {
                self.refused(format!(
                    "cannot decode {} of {}: {error}",
                    recorded.event_type, recorded.stream_id
                ))
            })?;
            decoded.push((recorded.event_id, event));
        }
        Ok(LifeEventFacts::from_events(&decoded))
    }

    /// The reads of a run of a policy other than `corrections`, and what they decide.
    /// What `ahead` holds is taken from it instead of read.
    async fn read(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
    ) -> Result<Read, PolicyError> {
        match self.policy {
            BIRTH_REGISTRATION | DEATH_REGISTRATION => {
                Ok(Read::Decided(self.registration(tx, ahead).await?))
            }
            BIRTH_FOLLOWUPS => self.birth_followups(tx, ahead).await,
            DEATH_FOLLOWUPS => Ok(Read::Decided(self.death_followups(tx, ahead).await?)),
            other => Err(self.refused(format!("policy {other:?} has no reads step"))),
        }
    }

    /// The commands of what `read` found, with the child's number if `read` asked for one.
    fn decide(
        &self,
        read: Read,
        number: Option<Result<PersonalIdAssigned, IdentityError>>,
    ) -> Result<Vec<Command>, PolicyError> {
        let birth = match read {
            Read::Decided(commands) => return Ok(commands),
            Read::Birth(birth) => birth,
        };
        let assigned = number
            .ok_or_else(|| self.refused("no personal ID number was drawn"))?
            .map_err(|error| match error {
                IdentityError::Store(error) => PolicyError::Store(error),
                IdentityError::Append(error) => PolicyError::Append(error),
                other => self.refused(format!("no personal ID number: {other}")),
            })?;
        self.decide_birth(&birth, &assigned)
    }

    /// The follow-ups of a birth registration's completion, the child having `assigned`.
    fn decide_birth(
        &self,
        birth: &BirthRead,
        assigned: &PersonalIdAssigned,
    ) -> Result<Vec<Command>, PolicyError> {
        self.rule(rules::birth_followups::react(
            &birth.completed,
            &birth.task,
            &birth.life_event,
            &assigned.personal_id,
            &self.context,
        ))
    }

    async fn birth_followups(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
    ) -> Result<Read, PolicyError> {
        let Some((completed, task)) = self
            .completed_task(tx, ahead, ProcedureId::BirthRegistration)
            .await?
        else {
            return Ok(Read::Decided(vec![]));
        };
        if rules::birth_followups::certificate_number(&completed, &task).is_none() {
            return Ok(Read::Decided(vec![]));
        }
        let life_event = self
            .life_event(tx, ahead, ProcedureGroup::Birth, task.created.life_event_id)
            .await?;
        let Declaration::Birth(declaration) = &life_event.declaration else {
            return Err(self.refused("a birth-registration task of a death record"));
        };
        if life_event.voided {
            return Ok(Read::Decided(vec![]));
        }
        let request = PinRequest {
            life_event_id: life_event.life_event_id,
            task_id: Some(task.task_id()),
            office: declaration.office.clone(),
            full_name: declaration.child.full_name.clone(),
            date_of_birth: declaration.child.date_of_birth,
            sex: declaration.child.sex,
            cause: self.event.event_id,
            correlation_id: self.context.source.correlation_id,
            at: self.context.now,
        };
        Ok(Read::Birth(Box::new(BirthRead {
            completed,
            task,
            life_event,
            request,
        })))
    }

    async fn death_followups(
        &self,
        tx: &mut StoreTransaction<'_>,
        ahead: &mut ReadAhead,
    ) -> Result<Vec<Command>, PolicyError> {
        let Some((completed, task)) = self
            .completed_task(tx, ahead, ProcedureId::DeathRegistration)
            .await?
        else {
            return Ok(vec![]);
        };
        if rules::death_followups::extract_number(&completed, &task).is_none() {
            return Ok(vec![]);
        }
        let life_event = self
            .life_event(tx, ahead, ProcedureGroup::Death, task.created.life_event_id)
            .await?;
        let Declaration::Death(declaration) = &life_event.declaration else {
            return Err(self.refused("a death-registration task of a birth record"));
        };
        let person = self.deceased(declaration);
        self.rule(rules::death_followups::react(
            &completed,
            &task,
            &life_event,
            &person,
            &self.context,
        ))
    }

    /// The deceased of `declaration` as the registers know them.
    fn deceased(&self, declaration: &DeathDeclaration) -> PersonFacts {
        let personal_id = declaration.deceased.personal_id.as_ref();
        let registers = &self.context.reference.registers;
        // The disaster is looked up by the province the deceased lived in, else the office's.
        let province = declaration
            .deceased
            .residence
            .as_ref()
            .map(|residence| residence.province.clone())
            .or_else(|| {
                personal_id
                    .and_then(|id| registers.residences.get(id))
                    .map(|residence| residence.province.clone())
            })
            .unwrap_or_else(|| declaration.office.province().to_owned());
        PersonFacts::lookup(
            self.context.reference,
            personal_id,
            Some(&province),
            declaration.death.date(),
        )
    }

    /// What this correction does to a birth record's follow-ups ([`FollowUps`]): made once
    /// `birth-followups` has run on the original registration's completion (the child has a
    /// number, assigned in that run's transaction); followed here unless the record changed
    /// after this correction (`later`).
    async fn birth_follow_ups(
        &self,
        tx: &mut StoreTransaction<'_>,
        life_event: &LifeEventFacts,
        tasks: &[TaskFacts],
        later: bool,
    ) -> Result<FollowUps, PolicyError> {
        let Some((task, completion_id)) = completed_registration(life_event, tasks) else {
            return Ok(FollowUps::NotDecided);
        };
        let Some(TaskOutcome::BirthRegistered { certificate_number }) = &task.state.outcome else {
            return Ok(FollowUps::NotDecided);
        };
        let Some(assignment) = tx
            .event_by_id(assignment_event_id(life_event.life_event_id))
            .await?
        else {
            return Ok(FollowUps::NotDecided);
        };
        if later {
            return Ok(FollowUps::LeftToLater);
        }
        let assigned = decode_assignment(life_event.life_event_id, &assignment)
            .map_err(|error| self.refused(error.to_string()))?;
        Ok(FollowUps::Rechoose(BirthChoice {
            child_personal_id: assigned.personal_id,
            certificate_number: certificate_number.clone(),
            completion: self.completion_source(tx, completion_id).await?,
        }))
    }

    /// The source of the registration's completion `completion_id`, read from the log.
    async fn completion_source(
        &self,
        tx: &mut StoreTransaction<'_>,
        completion_id: Uuid,
    ) -> Result<Source, PolicyError> {
        match tx.event_by_id(completion_id).await? {
            Some(completion) => Ok(Source::of(&completion)),
            None => Err(self.refused(format!(
                "the registration's completion {completion_id} is not in the log"
            ))),
        }
    }

    /// What this correction does to the record's follow-ups ([`FollowUps`]): a birth's, see
    /// [`Run::birth_follow_ups`]; a death's, decided once the original death registration
    /// completed, decided again here unless the record changed after this correction
    /// (`later`). The decisions recorded before are read from the streams the policies decide
    /// them in (`death-followups` under the completion, each earlier correction under itself).
    async fn follow_ups(
        &self,
        tx: &mut StoreTransaction<'_>,
        life_event: &LifeEventFacts,
        tasks: &[TaskFacts],
        later: bool,
    ) -> Result<FollowUps, PolicyError> {
        let Declaration::Death(declaration) = &life_event.declaration else {
            return self.birth_follow_ups(tx, life_event, tasks, later).await;
        };
        let Some((task, completion_id)) = completed_registration(life_event, tasks) else {
            return Ok(FollowUps::NotDecided);
        };
        let Some(TaskOutcome::DeathRegistered { extract_number }) = &task.state.outcome else {
            return Ok(FollowUps::NotDecided);
        };
        if later {
            return Ok(FollowUps::LeftToLater);
        }
        let completion = self.completion_source(tx, completion_id).await?;
        let mut keys = Vec::new();
        for procedure in rules::death_followups::PROCEDURES {
            keys.push(task_id(DEATH_FOLLOWUPS, completion_id, procedure));
            for &amendment in &life_event.amendment_event_ids {
                if amendment != self.event.event_id {
                    keys.push(task_id(CORRECTIONS, amendment, procedure));
                }
            }
        }
        let streams = keys
            .into_iter()
            .map(|key| self.stream(StreamId::for_kind(ELIGIBILITY_STREAM_KIND, key)))
            .collect::<Result<Vec<_>, _>>()?;
        let read = tx.read_streams(&streams.iter().collect::<Vec<_>>()).await?;
        let mut latest: BTreeMap<ProcedureId, (i64, EligibilityDecided)> = BTreeMap::new();
        for recorded in read.values().flatten() {
            let Ok(SystemEvent::EligibilityDecided(decided)) =
                decode_recorded::<SystemEvent>(recorded)
            else {
                return Err(self.refused(format!(
                    "{} of {} is not an eligibility decision",
                    recorded.event_type, recorded.stream_id
                )));
            };
            let position = recorded.global_position.0;
            if latest
                .get(&decided.procedure)
                .is_none_or(|(seen, _)| *seen < position)
            {
                latest.insert(decided.procedure, (position, decided));
            }
        }
        let person = self.deceased(declaration);
        let now = self.rule(rules::death_followups::decide_chosen(
            extract_number,
            life_event,
            &person,
            self.context.reference,
        ))?;
        Ok(FollowUps::Redecide(Redecision {
            now,
            decided: latest
                .into_iter()
                .map(|(procedure, (_, decided))| (procedure, decided))
                .collect(),
            completion,
        }))
    }

    async fn corrections(
        &self,
        tx: &mut StoreTransaction<'_>,
    ) -> Result<Vec<Command>, PolicyError> {
        let source = self.decode::<LifeEventEvent>()?;
        // The record as it stood right after this event: a redelivery after later corrections
        // sees what the first delivery saw.
        let events = tx.read_stream(&self.event.stream_id).await?;
        let Some(life_event) = self.fold_life_event(&events, Some(self.event.stream_version))?
        else {
            return Err(self.refused(format!(
                "life event {} is not recorded",
                source.life_event_id()
            )));
        };
        let mut tasks = self.tasks_of(tx, &life_event).await?;
        // A task already at what the record says now was prefilled (or amended) from a later
        // correction: this one must not take it back. Left to that correction's own run.
        let later = events
            .iter()
            .any(|event| event.stream_version > self.event.stream_version);
        let follow_ups = match source {
            LifeEventEvent::LifeEventCorrected(_) => {
                self.follow_ups(tx, &life_event, &tasks, later).await?
            }
            _ => FollowUps::NotDecided,
        };
        // Nor may it act on a procedure a later correction already brought to the record as it
        // stands: one whose latest task is at the record now, or for which a later correction
        // made a task (a re-issue, a follow-up). Falling back to an older task of it would
        // re-issue that one a second time, with this correction's older facts (until
        // 2026-12-07, when the corrections of a record were handled out of order).
        if later && matches!(source, LifeEventEvent::LifeEventCorrected(_)) {
            if let Some(current) = self.fold_life_event(&events, None)? {
                let declared = current.application_facts();
                let at_current = |task: &TaskFacts| {
                    task.state
                        .application
                        .changed_fields(&rules::corrections::application_for(task, &declared))
                        .is_empty()
                };
                let mut settled: Vec<ProcedureId> = Vec::new();
                let mut latest: HashMap<ProcedureId, &TaskFacts> = HashMap::new();
                for task in &tasks {
                    latest.insert(task.created.procedure, task);
                }
                for (procedure, task) in latest {
                    if at_current(task) {
                        settled.push(procedure);
                    }
                }
                let group = current.declaration.group();
                for amendment in current
                    .amendment_event_ids
                    .iter()
                    .filter(|id| !life_event.amendment_event_ids.contains(id))
                    .filter(|id| **id != self.event.event_id)
                {
                    for &procedure in group.procedures() {
                        let id = task_id(CORRECTIONS, *amendment, procedure);
                        if self.find_task(tx, id).await?.is_some() {
                            settled.push(procedure);
                        }
                    }
                }
                tasks
                    .retain(|task| !settled.contains(&task.created.procedure) && !at_current(task));
            }
        }
        match source {
            LifeEventEvent::LifeEventCorrected(corrected) => {
                self.rule(rules::corrections::react_corrected(
                    &corrected,
                    &life_event,
                    &tasks,
                    &follow_ups,
                    &self.context,
                ))
            }
            LifeEventEvent::LifeEventVoided(voided) => self.rule(rules::corrections::react_voided(
                &voided,
                &life_event,
                &tasks,
                &self.context,
            )),
            _ => Ok(vec![]),
        }
    }

    /// Every task the policies created for the life event because of events before this one,
    /// found by their deterministic ids (the inbox projection may lag), in log order.
    async fn tasks_of(
        &self,
        tx: &mut StoreTransaction<'_>,
        life_event: &LifeEventFacts,
    ) -> Result<Vec<TaskFacts>, PolicyError> {
        let group = life_event.declaration.group();
        let (registration_policy, registration, followups_policy) = match group {
            ProcedureGroup::Birth => (
                BIRTH_REGISTRATION,
                ProcedureId::BirthRegistration,
                BIRTH_FOLLOWUPS,
            ),
            ProcedureGroup::Death => (
                DEATH_REGISTRATION,
                ProcedureId::DeathRegistration,
                DEATH_FOLLOWUPS,
            ),
        };
        let mut found: Vec<(i64, TaskFacts)> = Vec::new();
        let registration_id = task_id(
            registration_policy,
            life_event.record_event_id,
            registration,
        );
        if let Some(task) = self.find_task(tx, registration_id).await? {
            let completed_event_id = task.1.completed_event_id;
            found.push(task);
            if let Some(completed) = completed_event_id {
                for &procedure in group.procedures() {
                    if procedure == registration {
                        continue;
                    }
                    let id = task_id(followups_policy, completed, procedure);
                    if let Some(task) = self.find_task(tx, id).await? {
                        found.push(task);
                    }
                }
            }
        }
        for &amendment in &life_event.amendment_event_ids {
            if amendment == self.event.event_id {
                continue;
            }
            for &procedure in group.procedures() {
                if let Some(task) = self
                    .find_task(tx, task_id(CORRECTIONS, amendment, procedure))
                    .await?
                {
                    found.push(task);
                }
            }
        }
        found.sort_by_key(|(position, _)| *position);
        Ok(found.into_iter().map(|(_, task)| task).collect())
    }

    /// A task and the global position of its creation, if it exists.
    async fn find_task(
        &self,
        tx: &mut StoreTransaction<'_>,
        task_id: Uuid,
    ) -> Result<Option<(i64, TaskFacts)>, PolicyError> {
        let stream = self.stream(task_stream(task_id))?;
        let events = tx.read_stream(&stream).await?;
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let position = first.global_position.0;
        Ok(self.fold_task(&events)?.map(|task| (position, task)))
    }

    fn fold_task(&self, events: &[RecordedEvent]) -> Result<Option<TaskFacts>, PolicyError> {
        let mut decoded = Vec::with_capacity(events.len());
        for recorded in events {
            let event = decode_recorded::<TaskEvent>(recorded).map_err(|error| {
                self.refused(format!(
                    "cannot decode {} of {}: {error}",
                    recorded.event_type, recorded.stream_id
                ))
            })?;
            decoded.push((recorded.event_id, event));
        }
        let version = events
            .last()
            .map_or(StreamVersion(0), |event| event.stream_version);
        Ok(TaskFacts::from_events(&decoded, version))
    }

    fn stream(
        &self,
        stream: Result<StreamId, lifeline_model::envelope::InvalidStreamId>,
    ) -> Result<StreamId, PolicyError> {
        stream.map_err(|error| self.refused(error.to_string()))
    }

    /// The append `command` asks for: its stream, expected version and event.
    fn prepare(&self, command: Command) -> Result<Prepared, PolicyError> {
        let metadata = self.metadata();
        let mut inbox_row = None;
        let (stream, expected, event) = match command {
            Command::CreateTask(task) => {
                task.application
                    .check(task.procedure)
                    .map_err(|error| self.refused(error.to_string()))?;
                let stream = self.stream(task_stream(task.task_id))?;
                let event_id = task_created_event_id(task.task_id);
                inbox_row = Some(created_row(&task));
                let event = to_new_event(&TaskEvent::TaskCreated(task), event_id, metadata);
                (stream, ExpectedVersion::NoStream, event)
            }
            Command::DecideEligibility { key, decision } => {
                let stream = self.stream(StreamId::for_kind(ELIGIBILITY_STREAM_KIND, key))?;
                let event = to_new_event(
                    &SystemEvent::EligibilityDecided(decision),
                    eligibility_event_id(key),
                    metadata,
                );
                (stream, ExpectedVersion::NoStream, event)
            }
            Command::UpdateTask {
                task_id,
                expected_version,
                event_id,
                event,
            } => {
                let stream = self.stream(task_stream(task_id))?;
                let event = to_new_event(&event, event_id, metadata);
                (
                    stream,
                    ExpectedVersion::Exact(StreamVersion(expected_version)),
                    event,
                )
            }
        };
        Ok(Prepared {
            stream,
            expected,
            event,
            inbox_row,
        })
    }
}

/// The record's original registration task (the one its registration policy created) and its
/// completion's event id, if it is among `tasks` and completed.
fn completed_registration<'t>(
    life_event: &LifeEventFacts,
    tasks: &'t [TaskFacts],
) -> Option<(&'t TaskFacts, Uuid)> {
    let (policy, procedure) = match life_event.declaration.group() {
        ProcedureGroup::Birth => (BIRTH_REGISTRATION, ProcedureId::BirthRegistration),
        ProcedureGroup::Death => (DEATH_REGISTRATION, ProcedureId::DeathRegistration),
    };
    let registration = task_id(policy, life_event.record_event_id, procedure);
    let task = tasks.iter().find(|task| task.task_id() == registration)?;
    Some((task, task.completed_event_id?))
}

/// What an append of the event `event_id` came to: true if it appended, false if the event was
/// stored before (a conflict or an id mismatch where the id is stored counts so: a redelivery
/// after the stream moved on). There is no look-up before the append: on a first delivery, the
/// usual case, it would only read nothing, one statement per command.
async fn duplicate_or_error(
    tx: &mut StoreTransaction<'_>,
    event_id: Uuid,
    result: Result<lifeline_store::AppendOutcome, AppendError>,
) -> Result<bool, PolicyError> {
    match result {
        Ok(outcome) => Ok(!outcome.already_stored),
        Err(error @ (AppendError::Conflict { .. } | AppendError::EventIdMismatch { .. })) => {
            if tx.event_by_id(event_id).await?.is_some() {
                Ok(false)
            } else {
                Err(PolicyError::Append(error))
            }
        }
        Err(error) => Err(PolicyError::Append(error)),
    }
}
