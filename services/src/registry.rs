//! The registrar's commands: record a birth or a death, correct or void a record, run on the
//! life-event aggregate through cqrs-es over Lifeline's event store.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventStore, PersistenceError, SerializedEvent,
};
use cqrs_es::{
    Aggregate, AggregateContext, AggregateError, CqrsFramework, EventEnvelope, EventStore as _,
};
use lifeline_model::codec;
use lifeline_model::declaration::{
    parse_death, parse_new_birth, BirthDeclarationInput, DeathDeclarationInput, Declaration,
};
use lifeline_model::envelope::{GlobalPosition, RecordedEvent, Role, StreamId, StreamVersion};
use lifeline_model::error::DomainError;
use lifeline_model::life_event::{LifeEvent, LifeEventCommand, LifeEventEvent, Reference};
use lifeline_model::validation::ValidationErrors;
use lifeline_model::values::vietnam_date;
use lifeline_store::cqrs::OfficeSigner;
use lifeline_store::{EventStore, LifelineRepository, StoreError};
use uuid::Uuid;

use crate::keys::{key_dir, FileOfficeKeys};

type LifeEventFramework =
    CqrsFramework<LifeEvent, PersistedEventStore<LifelineRepository, LifeEvent>>;

/// Who asks, for which office, and under which request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub role: Role,
    pub office: Option<String>,
    pub correlation_id: Uuid,
    /// The client's `Idempotency-Key`, if any: it also fixes the command id, so a retried
    /// request appends nothing new.
    pub idempotency_key: Option<String>,
}

/// What a registrar gets back for a recorded life event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub life_event_id: Uuid,
    pub stream_id: StreamId,
    pub reference: Reference,
    pub position: GlobalPosition,
    /// A retried request (same idempotency key, same declaration): nothing new was appended.
    pub replayed: bool,
}

/// Why a registrar's command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The declaration has bad fields; every one is named.
    #[error("invalid declaration: {0}")]
    Invalid(ValidationErrors),
    /// The record's state refuses the command (already voided, nothing changed...).
    #[error(transparent)]
    Refused(DomainError),
    /// Another change to the same record was committed first.
    #[error("the record was changed concurrently")]
    Conflict,
    #[error("no life event {0}")]
    NotFound(Uuid),
    /// The `Idempotency-Key` was used before with a different declaration.
    #[error("the idempotency key was used for a different declaration")]
    IdempotencyKeyReused,
    /// The store failed: retry later.
    #[error("store failure: {0}")]
    Fault(String),
}

impl From<AggregateError<DomainError>> for RegistryError {
    fn from(error: AggregateError<DomainError>) -> Self {
        match error {
            AggregateError::UserError(DomainError::Invalid(errors)) => Self::Invalid(errors),
            AggregateError::UserError(refusal) => Self::Refused(refusal),
            AggregateError::AggregateConflict => Self::Conflict,
            other => Self::Fault(other.to_string()),
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        Self::Fault(error.to_string())
    }
}

/// A life event record as its stream tells it.
#[derive(Debug, Clone)]
pub struct LoadedLifeEvent {
    pub stream_id: StreamId,
    pub state: LifeEvent,
    /// The stream version the state was rebuilt at.
    pub version: StreamVersion,
    /// The stored events, in order.
    pub events: Vec<RecordedEvent>,
}

impl LoadedLifeEvent {
    /// The index of the first event stored under the client's `Idempotency-Key` `key`, if any:
    /// a correction or void with a key derives its event id from the record's stream and the
    /// key, so a second request with the same key is a retry of that event's request (answered
    /// as it was, nothing stored) or a reuse of the key for another request (refused).
    pub fn keyed(&self, key: &str) -> Option<usize> {
        self.events
            .iter()
            .position(|event| event.metadata.idempotency_key.as_deref() == Some(key))
    }

    /// The record as it stood before its event at `index` (its state after `events[..index]`).
    pub fn state_before(&self, index: usize) -> Result<LifeEvent, RegistryError> {
        let mut state = LifeEvent::default();
        for event in self.events.iter().take(index) {
            let decoded: LifeEventEvent = codec::decode_recorded(event)
                .map_err(|error| RegistryError::Fault(error.to_string()))?;
            state.apply(decoded);
        }
        Ok(state)
    }

    /// The event at `index`, decoded.
    pub fn decoded(&self, index: usize) -> Result<Option<LifeEventEvent>, RegistryError> {
        self.events
            .get(index)
            .map(|event| {
                codec::decode_recorded(event)
                    .map_err(|error| RegistryError::Fault(error.to_string()))
            })
            .transpose()
    }
}

/// A registrar's change of a record (a correction or a void): the reason, the day it is
/// recorded on, and the version the registrar read, if given.
#[derive(Debug, Clone)]
pub struct Change {
    pub reason: String,
    pub on: NaiveDate,
    pub expected: Option<StreamVersion>,
}

/// Whether a correction or a void stored its event, or found it stored before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Appended now.
    New,
    /// Its event id was in the log already (the same `Idempotency-Key` on this record):
    /// nothing was appended.
    Before,
}

impl Stored {
    fn of(outcome: Option<&lifeline_store::AppendOutcome>) -> Self {
        match outcome {
            Some(outcome) if outcome.already_stored => Self::Before,
            _ => Self::New,
        }
    }
}

/// [`RegistryError::Conflict`] unless the record is at `expected` (if given).
fn check_expected(expected: Option<StreamVersion>, current: usize) -> Result<(), RegistryError> {
    match expected {
        Some(expected) if i64::try_from(current).ok() != Some(expected.0) => {
            Err(RegistryError::Conflict)
        }
        _ => Ok(()),
    }
}

/// What a record command did.
enum Executed {
    /// Appended the record's first event at this position.
    Appended(GlobalPosition),
    /// Went through cqrs-es (or found its events stored already): the position is read back;
    /// `true` if a retried request found its record already made.
    Replayed(bool),
}

fn persistence_error(error: PersistenceError) -> RegistryError {
    RegistryError::from(AggregateError::<DomainError>::from(error))
}

/// A record's new events as cqrs-es's `commit` serialises them: wrapped with their sequence
/// numbers after `current_sequence` and the command's metadata.
fn serialize(
    aggregate_id: &str,
    current_sequence: usize,
    events: Vec<LifeEventEvent>,
    metadata: &HashMap<String, String>,
) -> Result<Vec<SerializedEvent>, RegistryError> {
    events
        .into_iter()
        .zip(current_sequence + 1..)
        .map(|(payload, sequence)| {
            SerializedEvent::try_from(&EventEnvelope::<LifeEvent> {
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(persistence_error)
}

/// The registrar's side of Lifeline.
pub struct Registry {
    store: EventStore,
    /// The repository under both cqrs-es stores, for new records appended directly.
    repository: LifelineRepository,
    life_events: LifeEventFramework,
    /// The same cqrs-es store the framework runs on, for commands whose content depends on the
    /// state they are decided on (corrections): load, decide and commit against one version.
    event_store: PersistedEventStore<LifelineRepository, LifeEvent>,
}

impl Registry {
    /// The registry on `store`, signing life events with office keys from the key directory
    /// (`LIFELINE_KEY_DIR`, generated per office on first use: development).
    pub fn new(store: EventStore) -> Self {
        let signer: Arc<dyn OfficeSigner> = Arc::new(FileOfficeKeys::new(key_dir()));
        let repository = LifelineRepository::new(store.clone()).with_office_signer(signer);
        let event_store = PersistedEventStore::new_event_store(repository.clone())
            .with_upcasters(codec::upcasters());
        let direct = PersistedEventStore::new_event_store(repository.clone())
            .with_upcasters(codec::upcasters());
        Self {
            store,
            repository,
            life_events: CqrsFramework::new(event_store, vec![], ()),
            event_store: direct,
        }
    }

    /// Validates and records a birth.
    pub async fn record_birth(
        &self,
        actor: &Actor,
        input: &BirthDeclarationInput,
        today: NaiveDate,
    ) -> Result<Recorded, RegistryError> {
        let declaration = parse_new_birth(input, today).map_err(RegistryError::Invalid)?;
        let life_event_id = self.life_event_id(actor, "birth");
        let stream_id = stream_for("birth", life_event_id)?;
        let command = LifeEventCommand::RecordBirth {
            life_event_id,
            declaration: declaration.clone(),
            recorded_on: today,
        };
        self.record_new(
            actor,
            life_event_id,
            stream_id,
            command,
            Declaration::Birth(declaration),
        )
        .await
    }

    /// Validates and records a death with the procedures the declarant chose, at the instant
    /// `now` (the time of death must not be after it; the record is dated today in Vietnam).
    pub async fn record_death(
        &self,
        actor: &Actor,
        input: &DeathDeclarationInput,
        now: DateTime<Utc>,
    ) -> Result<Recorded, RegistryError> {
        let today = vietnam_date(now);
        let declaration = parse_death(input, now).map_err(RegistryError::Invalid)?;
        let life_event_id = self.life_event_id(actor, "death");
        let stream_id = stream_for("death", life_event_id)?;
        let command = LifeEventCommand::RecordDeath {
            life_event_id,
            declaration: declaration.clone(),
            recorded_on: today,
        };
        self.record_new(
            actor,
            life_event_id,
            stream_id,
            command,
            Declaration::Death(declaration),
        )
        .await
    }

    /// Records a new life event with `command` (which carries `declaration`): the answer of
    /// its append, or for a retried request (same idempotency key) the record first made, which
    /// must carry the same declaration.
    async fn record_new(
        &self,
        actor: &Actor,
        life_event_id: Uuid,
        stream_id: StreamId,
        command: LifeEventCommand,
        declaration: Declaration,
    ) -> Result<Recorded, RegistryError> {
        let recorded = match self.execute_new(actor, &stream_id, command).await? {
            Executed::Appended(position) => Recorded {
                life_event_id,
                reference: Reference::for_life_event(life_event_id),
                position,
                stream_id,
                replayed: false,
            },
            Executed::Replayed(replayed) => {
                self.recorded(life_event_id, stream_id, replayed).await?
            }
        };
        if actor.idempotency_key.is_some() {
            self.same_declaration(&recorded, &declaration).await?;
        }
        Ok(recorded)
    }

    /// Replaces a record's declaration with a corrected one, giving the reason.
    pub async fn correct(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        declaration: Declaration,
        reason: String,
        today: NaiveDate,
    ) -> Result<(), RegistryError> {
        let command = LifeEventCommand::Correct {
            declaration,
            reason,
            recorded_on: today,
        };
        self.execute(actor, stream_id, command).await.map(|_| ())
    }

    /// Corrects a record with a declaration built from its current state by `build` (e.g. a
    /// patch merged over the current declaration). Loading, deciding and committing happen
    /// against one stream version, so a concurrent change is [`RegistryError::Conflict`], never
    /// a lost update.
    ///
    /// With a `guard` (an event id and a check), the check has the last word on the corrected
    /// declaration and that event as stored once the correction holds the record's stream
    /// (`LifelineRepository::append_serialized_checked`): an event a policy stored while it
    /// held the record is seen, however late it committed.
    ///
    /// `build` and the check may refuse with their own error `E`: the answer is then
    /// `Ok(Err(e))` and nothing is stored.
    ///
    /// With `expected`, a record at another version is [`RegistryError::Conflict`] (checked
    /// against the version the correction is decided and committed on). The answer is
    /// [`Stored::New`], or [`Stored::Before`] when the correction's event id was stored already
    /// (the actor's `Idempotency-Key` was used on this record before: see
    /// [`LoadedLifeEvent::keyed`]).
    pub async fn correct_with<F, C, E>(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        change: Change,
        build: F,
        guard: Option<(Uuid, C)>,
    ) -> Result<Result<Stored, E>, RegistryError>
    where
        F: FnOnce(&LifeEvent) -> Result<Declaration, E>,
        C: FnOnce(&Declaration, Option<&RecordedEvent>) -> Result<(), E>,
    {
        let mut context = self.load_at(stream_id, change.expected).await?;
        let Change {
            reason, on: today, ..
        } = change;
        let declaration = match build(context.aggregate()) {
            Ok(declaration) => declaration,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let command = LifeEventCommand::Correct {
            declaration: declaration.clone(),
            reason,
            recorded_on: today,
        };
        // What cqrs-es's `commit` does (wrap, serialise, persist), so that the append can be
        // checked in its transaction.
        let serialized = self.decide(&mut context, command, actor, stream_id).await?;
        let Some((guard, check)) = guard else {
            let outcome = self
                .repository
                .append_serialized(&serialized)
                .await
                .map_err(persistence_error)?;
            return Ok(Ok(Stored::of(outcome.as_ref())));
        };
        Ok(self
            .repository
            .append_serialized_checked(&serialized, guard, |stored| check(&declaration, stored))
            .await
            .map_err(persistence_error)?
            .map(|outcome| Stored::of(outcome.as_ref())))
    }

    /// The record of `life_event_id` (a birth or a death), rebuilt from its stream.
    pub async fn load(
        &self,
        life_event_id: Uuid,
    ) -> Result<Option<LoadedLifeEvent>, RegistryError> {
        for kind in ["birth", "death"] {
            let stream_id = stream_for(kind, life_event_id)?;
            let events = self.store.read_stream(&stream_id).await?;
            let Some(last) = events.last() else { continue };
            let version = last.stream_version;
            let mut state = LifeEvent::default();
            for event in &events {
                let decoded: LifeEventEvent = codec::decode_recorded(event)
                    .map_err(|error| RegistryError::Fault(error.to_string()))?;
                state.apply(decoded);
            }
            return Ok(Some(LoadedLifeEvent {
                stream_id,
                state,
                version,
                events,
            }));
        }
        Ok(None)
    }

    /// Voids a record made in error, giving the reason.
    ///
    /// With `expected`, a record at another version is [`RegistryError::Conflict`]; the answer
    /// is [`Stored::Before`] when the void's event id was stored already (as for
    /// [`Registry::correct_with`]).
    pub async fn void(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        change: Change,
    ) -> Result<Stored, RegistryError> {
        let mut context = self.load_at(stream_id, change.expected).await?;
        let command = LifeEventCommand::Void {
            reason: change.reason,
            recorded_on: change.on,
        };
        let serialized = self.decide(&mut context, command, actor, stream_id).await?;
        let outcome = self
            .repository
            .append_serialized(&serialized)
            .await
            .map_err(persistence_error)?;
        Ok(Stored::of(outcome.as_ref()))
    }

    /// The record of `stream_id` as cqrs-es loads it; [`RegistryError::Conflict`] unless it is
    /// at `expected` (if given).
    async fn load_at(
        &self,
        stream_id: &StreamId,
        expected: Option<StreamVersion>,
    ) -> Result<EventStoreAggregateContext<LifeEvent>, RegistryError> {
        let context = self
            .event_store
            .load_aggregate(stream_id.as_str())
            .await
            .map_err(RegistryError::from)?;
        check_expected(expected, context.current_sequence)?;
        Ok(context)
    }

    /// Decides `command` on the record `context` loaded and serialises its events as cqrs-es's
    /// `commit` would (at the loaded version, with the actor's metadata), not yet stored.
    async fn decide(
        &self,
        context: &mut EventStoreAggregateContext<LifeEvent>,
        command: LifeEventCommand,
        actor: &Actor,
        stream_id: &StreamId,
    ) -> Result<Vec<SerializedEvent>, RegistryError> {
        let sink: EventSink<LifeEvent> = EventSink::default();
        context
            .aggregate()
            .handle(command, &(), &sink)
            .await
            .map_err(|error| RegistryError::from(AggregateError::UserError(error)))?;
        serialize(
            &context.aggregate_id,
            context.current_sequence,
            sink.collect().await,
            &self.metadata(actor, stream_id),
        )
    }

    /// The id of a new record: derived from the idempotency key when there is one, so that a
    /// retried request lands on the same record.
    fn life_event_id(&self, actor: &Actor, kind: &str) -> Uuid {
        match &actor.idempotency_key {
            Some(key) => Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!(
                    "lifeline/{kind}/{}/{}/{key}",
                    actor.office.as_deref().unwrap_or("-"),
                    actor.id
                )
                .as_bytes(),
            ),
            None => Uuid::now_v7(),
        }
    }

    fn metadata(&self, actor: &Actor, stream_id: &StreamId) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            ("actor".to_owned(), actor.id.clone()),
            ("role".to_owned(), role_name(actor.role).to_owned()),
            (
                "correlation_id".to_owned(),
                actor.correlation_id.to_string(),
            ),
        ]);
        if let Some(office) = &actor.office {
            metadata.insert("office".to_owned(), office.clone());
        }
        if let Some(key) = &actor.idempotency_key {
            metadata.insert("idempotency_key".to_owned(), key.clone());
            let command_id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("lifeline/command/{stream_id}/{key}").as_bytes(),
            );
            metadata.insert("command_id".to_owned(), command_id.to_string());
        }
        metadata
    }

    /// Runs the command that opens a new record. Without an idempotency key the record's id is
    /// a fresh UUIDv7, so its stream cannot exist: the command is decided on an empty record
    /// without loading it (the append still insists the stream is new). With a key the id is
    /// derived from it and the record may exist: the full cqrs-es path loads it first.
    async fn execute_new(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        command: LifeEventCommand,
    ) -> Result<Executed, RegistryError> {
        if actor.idempotency_key.is_some() {
            return self
                .execute(actor, stream_id, command)
                .await
                .map(Executed::Replayed);
        }
        let mut context = EventStoreAggregateContext {
            aggregate_id: stream_id.as_str().to_owned(),
            aggregate: LifeEvent::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        let sink: EventSink<LifeEvent> = EventSink::default();
        context
            .aggregate
            .handle(command, &(), &sink)
            .await
            .map_err(|error| RegistryError::from(AggregateError::UserError(error)))?;
        // What cqrs-es's `commit` does for a new aggregate (wrap, serialise, persist), keeping
        // the append's answer: the record's position, without reading the stream back.
        let serialized = serialize(
            &context.aggregate_id,
            0,
            sink.collect().await,
            &self.metadata(actor, stream_id),
        )?;
        match self
            .repository
            .append_serialized(&serialized)
            .await
            .map_err(persistence_error)?
        {
            Some(outcome) if !outcome.already_stored => {
                Ok(Executed::Appended(outcome.first_position))
            }
            _ => Ok(Executed::Replayed(false)),
        }
    }

    async fn execute(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        command: LifeEventCommand,
    ) -> Result<bool, RegistryError> {
        let metadata = self.metadata(actor, stream_id);
        match self
            .life_events
            .execute_with_metadata(stream_id.as_str(), command, metadata)
            .await
        {
            Ok(()) => Ok(false),
            // A retried request (same idempotency key) finds its record already made.
            Err(AggregateError::UserError(DomainError::AlreadyRecorded))
                if actor.idempotency_key.is_some() =>
            {
                Ok(true)
            }
            Err(error) => Err(RegistryError::from(error)),
        }
    }

    async fn recorded(
        &self,
        life_event_id: Uuid,
        stream_id: StreamId,
        replayed: bool,
    ) -> Result<Recorded, RegistryError> {
        let events = self.store.read_stream(&stream_id).await?;
        let first = events
            .first()
            .ok_or(RegistryError::NotFound(life_event_id))?;
        Ok(Recorded {
            life_event_id,
            reference: Reference::for_life_event(life_event_id),
            position: first.global_position,
            stream_id,
            replayed,
        })
    }
}

impl Registry {
    /// A retried request (same idempotency key) must carry the declaration first recorded under
    /// the key: the stored first event is compared with the one just parsed. Comparing the
    /// validated declarations (not raw bytes) treats re-encoded but equal bodies as the same.
    async fn same_declaration(
        &self,
        recorded: &Recorded,
        declaration: &Declaration,
    ) -> Result<(), RegistryError> {
        let events = self.store.read_stream(&recorded.stream_id).await?;
        let first = events
            .first()
            .ok_or(RegistryError::NotFound(recorded.life_event_id))?;
        let stored: LifeEventEvent = codec::decode_recorded(first)
            .map_err(|error| RegistryError::Fault(error.to_string()))?;
        let same = match (stored, declaration) {
            (LifeEventEvent::BirthRecorded(stored), Declaration::Birth(given)) => {
                stored.declaration == *given
            }
            (LifeEventEvent::DeathRecorded(stored), Declaration::Death(given)) => {
                stored.declaration == *given
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(RegistryError::IdempotencyKeyReused)
        }
    }
}

fn stream_for(kind: &str, life_event_id: Uuid) -> Result<StreamId, RegistryError> {
    StreamId::for_kind(kind, life_event_id).map_err(|error| RegistryError::Fault(error.to_string()))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Registrar => "registrar",
        Role::Agency => "agency",
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}
