//! The projections: subscribers of the global log that decode each event, fold it into the rows
//! of the store's projection tables (`lifeline_store::projections`), and save the rows in the
//! subscription's transaction, checkpoint included.
//!
//! Each fold is a pure function from (row, event) to row; the subscribers only load, fold and
//! save. So a rebuild ([`rebuild_projections`]) or a replay "as of" a time
//! ([`rebuild_projections_until`]) runs the very same code as the live projections.
//!
//! # Layout
//! - [`inbox`]: [`InboxProjection`], one row per task (the agencies' inboxes).
//! - [`persons`]: [`PersonProjection`], the person registry by personal ID number.
//! - [`life_events`]: [`LifeEventStatusProjection`], each life event and its procedures.
//! - [`rebuild`]: [`catch_up`], [`rebuild_projections`], [`rebuild_projections_until`].

pub mod inbox;
pub mod life_events;
pub mod persons;
pub mod rebuild;

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use lifeline_model::codec::{self, DecodeError, EventFamily};
use lifeline_model::envelope::RecordedEvent;
use lifeline_model::life_event::LifeEventEvent;
use lifeline_model::system_events::SystemEvent;
use lifeline_model::task::TaskEvent;
use lifeline_store::Subscriber;

pub use inbox::InboxProjection;
pub use life_events::LifeEventStatusProjection;
pub use persons::PersonProjection;
pub use rebuild::{
    catch_up, rebuild_projections, rebuild_projections_until, ProjectionsError, RebuildReport,
};

/// Every projection subscriber, in the order a rebuild replays them.
pub fn projection_subscribers() -> Vec<Box<dyn Subscriber>> {
    projections()
        .into_iter()
        .map(|projection| projection as Box<dyn Subscriber>)
        .collect()
}

/// A projection whose next batch can be handed over already decoded: the rebuild decodes each
/// batch once, straight from the payloads' text, for all three.
pub(crate) trait Projection: Subscriber {
    /// The events of the next batch (the next [`Subscriber::prepare_batch`]) decoded, by event
    /// id; events of a type no projection knows are absent.
    fn preset_decoded(&mut self, decoded: SharedDecoded);
}

/// [`projection_subscribers`] as [`Projection`]s, same order.
pub(crate) fn projections() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(InboxProjection::new()),
        Box::new(PersonProjection::new()),
        Box::new(LifeEventStatusProjection::new()),
    ]
}

/// One batch's events decoded once and shared by the projections, by event id.
pub(crate) type SharedDecoded = Arc<DecodedMap>;

/// Decoded events by event id. Hashed with foldhash (seeded at random per process) rather than
/// the standard SipHash: a rebuild looks up every event of a batch several times, and SipHash
/// was about 2% of a rebuild's samples.
pub(crate) type DecodedMap = HashMap<uuid::Uuid, Arc<DecodedEvent>, foldhash::fast::RandomState>;

/// [`decode_event`] of an event whose payload is given as its stored JSON text.
pub fn decode_event_text(
    event: &RecordedEvent,
    payload: &str,
) -> Result<Option<DecodedEvent>, DecodeError> {
    decode_routed(event, Some(payload))
}

/// The checkpoint names of [`projection_subscribers`].
pub const PROJECTION_NAMES: [&str; 3] = [
    inbox::INBOX_PROJECTION,
    persons::PERSON_PROJECTION,
    life_events::LIFE_EVENT_STATUS_PROJECTION,
];

/// A stored event read back as one of Lifeline's event enums.
// Not boxed: one value lives per event handled, and plain variants keep matching simple (as the
// model's `Declaration` does).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DecodedEvent {
    LifeEvent(LifeEventEvent),
    Task(TaskEvent),
    System(SystemEvent),
}

/// Decodes `event` by its type; `None` for a type no projection knows (skipped, not an error).
pub fn decode_event(event: &RecordedEvent) -> Result<Option<DecodedEvent>, DecodeError> {
    decode_routed(event, None)
}

/// Decodes `event` into the family its type belongs to, from `payload` (its stored text) if
/// given, else from `event.payload`; `None` for a type no projection knows.
fn decode_routed(
    event: &RecordedEvent,
    payload: Option<&str>,
) -> Result<Option<DecodedEvent>, DecodeError> {
    fn family<E: EventFamily>(
        event: &RecordedEvent,
        payload: Option<&str>,
    ) -> Result<E, DecodeError> {
        match payload {
            Some(text) => codec::decode_recorded_text(event, text),
            None => codec::decode_recorded(event),
        }
    }
    let event_type = event.event_type.as_str();
    if LifeEventEvent::current_version(event_type).is_some() {
        return family(event, payload).map(|event| Some(DecodedEvent::LifeEvent(event)));
    }
    if TaskEvent::current_version(event_type).is_some() {
        return family(event, payload).map(|event| Some(DecodedEvent::Task(event)));
    }
    if SystemEvent::current_version(event_type).is_some() {
        return family(event, payload).map(|event| Some(DecodedEvent::System(event)));
    }
    Ok(None)
}

/// A batch's events decoded once, in `Subscriber::prepare_batch`, for its look-ups ahead and
/// then for `Subscriber::handle`.
#[derive(Debug, Default)]
pub(crate) struct DecodedBatch {
    /// The events this projection decoded itself.
    events: DecodedMap,
    /// The events decoded for every projection ([`Projection::preset_decoded`]), looked up in
    /// place rather than copied into `events`.
    shared: Option<SharedDecoded>,
    /// The next batch, decoded by someone else ([`Projection::preset_decoded`]).
    preset: Option<SharedDecoded>,
}

impl DecodedBatch {
    /// Decodes every event of `events` that a projection knows, keeping them by event id.
    pub(crate) fn fill(&mut self, events: &[RecordedEvent]) -> Result<(), DecodeError> {
        self.fill_where(events, |_| true)
    }

    /// [`DecodedBatch::fill`] for the events whose type `wanted` accepts only. With a preset,
    /// the events it holds are taken from it (it may hold others too, which a projection then
    /// sees in [`DecodedBatch::get`]: each matches on the decoded events it handles).
    pub(crate) fn fill_where(
        &mut self,
        events: &[RecordedEvent],
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), DecodeError> {
        self.events.clear();
        self.shared = self.preset.take();
        for event in events.iter().filter(|event| wanted(&event.event_type)) {
            if self
                .shared
                .as_ref()
                .is_some_and(|shared| shared.contains_key(&event.event_id))
            {
                continue;
            }
            if let Some(decoded) = decode_event(event)? {
                self.events.insert(event.event_id, Arc::new(decoded));
            }
        }
        Ok(())
    }

    /// Takes `decoded` as the next batch's events ([`Projection::preset_decoded`]): the next
    /// [`DecodedBatch::fill_where`] looks them up instead of decoding.
    pub(crate) fn preset(&mut self, decoded: SharedDecoded) {
        self.preset = Some(decoded);
    }

    pub(crate) fn get(&self, event_id: &uuid::Uuid) -> Option<&DecodedEvent> {
        self.events
            .get(event_id)
            .or_else(|| self.shared.as_ref()?.get(event_id))
            .map(|decoded| &**decoded)
    }

    /// `event` decoded: taken from the batch if it was decoded there, else decoded now. Shared
    /// with the other projections when the batch was decoded for all of them.
    pub(crate) fn take(
        &mut self,
        event: &RecordedEvent,
    ) -> Result<Option<Arc<DecodedEvent>>, DecodeError> {
        if let Some(decoded) = self.events.remove(&event.event_id) {
            return Ok(Some(decoded));
        }
        if let Some(decoded) = self
            .shared
            .as_ref()
            .and_then(|shared| shared.get(&event.event_id))
        {
            return Ok(Some(Arc::clone(decoded)));
        }
        Ok(decode_event(event)?.map(Arc::new))
    }

    /// Forgets the batch (a preset for the next one stays).
    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.shared = None;
    }
}

/// The task id of any task event.
pub fn task_id_of(event: &TaskEvent) -> uuid::Uuid {
    match event {
        TaskEvent::TaskCreated(event) => event.task_id,
        TaskEvent::TaskClaimed(event) => event.task_id,
        TaskEvent::TaskCompleted(event) => event.task_id,
        TaskEvent::TaskRejected(event) => event.task_id,
        TaskEvent::TaskCancelled(event) => event.task_id,
        TaskEvent::TaskAmended(event) => event.task_id,
        TaskEvent::TaskOverdue(event) => event.task_id,
    }
}

/// The rows a projection holds back within one batch: each loaded or folded in memory, and
/// saved once, in the order first changed, at the end of the batch
/// (`Subscriber::end_batch`). Every held row counts as changed.
#[derive(Debug)]
pub(crate) struct HeldRows<K, R> {
    rows: HashMap<K, R>,
    /// Keys in the order first held; a key stays listed while its row is taken out to fold.
    order: Vec<K>,
    listed: HashSet<K>,
    /// What the table held at the batch's start for keys looked up ahead
    /// (`Subscriber::prepare_batch`); `None`: no row. The table does not change before the
    /// batch's end, so this stands for a load until the key is held.
    known: HashMap<K, Option<R>>,
}

impl<K, R> Default for HeldRows<K, R> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            order: Vec::new(),
            listed: HashSet::new(),
            known: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, R> HeldRows<K, R> {
    pub(crate) fn get(&self, key: &K) -> Option<&R> {
        self.rows.get(key)
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.rows.contains_key(key)
    }

    /// Takes the held row out to fold it; [`HeldRows::put`] puts the result back.
    pub(crate) fn take(&mut self, key: &K) -> Option<R> {
        self.rows.remove(key)
    }

    /// Holds `row` as changed.
    pub(crate) fn put(&mut self, key: K, row: R) {
        if self.listed.insert(key.clone()) {
            self.order.push(key.clone());
        }
        self.rows.insert(key, row);
    }

    /// Notes what a look-up ahead found: `stored` for their keys, no row for the other `keys`.
    pub(crate) fn know_all(
        &mut self,
        keys: impl IntoIterator<Item = K>,
        stored: Vec<R>,
        key_of: impl Fn(&R) -> K,
    ) {
        for key in keys {
            self.known.insert(key, None);
        }
        for row in stored {
            self.known.insert(key_of(&row), Some(row));
        }
    }

    /// What the table held for `key` at the batch's start, if it was looked up ahead.
    pub(crate) fn known(&self, key: &K) -> Option<Option<&R>> {
        self.known.get(key).map(Option::as_ref)
    }

    /// Forgets everything (a new batch; the one before may have rolled back).
    pub(crate) fn clear(&mut self) {
        self.rows.clear();
        self.order.clear();
        self.listed.clear();
        self.known.clear();
    }

    /// The held rows in the order first changed, each with what the table held for its key at
    /// the batch's start if that was looked up ahead (`None`: unknown, or no row), leaving
    /// nothing held.
    pub(crate) fn drain_with_known(&mut self) -> Vec<(R, Option<R>)> {
        let mut known = std::mem::take(&mut self.known);
        let rows: Vec<(R, Option<R>)> = std::mem::take(&mut self.order)
            .iter()
            .filter_map(|key| {
                let row = self.rows.remove(key)?;
                Some((row, known.remove(key).flatten()))
            })
            .collect();
        self.clear();
        rows
    }

    /// The held rows in the order first changed, leaving nothing held.
    pub(crate) fn drain(&mut self) -> Vec<R> {
        self.drain_with_known()
            .into_iter()
            .map(|(row, _)| row)
            .collect()
    }
}
