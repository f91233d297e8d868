//! The registrar's commands: record a birth or a death, correct or void a record, run on the
//! life-event aggregate through cqrs-es over Lifeline's event store.

use std::collections::HashMap;

use chrono::NaiveDate;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, CqrsFramework};
use lifeline_model::codec;
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclarationInput, DeathDeclarationInput, Declaration,
};
use lifeline_model::envelope::{GlobalPosition, Role, StreamId};
use lifeline_model::error::DomainError;
use lifeline_model::life_event::{LifeEvent, LifeEventCommand, Reference};
use lifeline_model::validation::ValidationErrors;
use lifeline_store::{EventStore, LifelineRepository, StoreError};
use uuid::Uuid;

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

/// The registrar's side of Lifeline.
pub struct Registry {
    store: EventStore,
    life_events: LifeEventFramework,
}

impl Registry {
    pub fn new(store: EventStore) -> Self {
        let event_store =
            PersistedEventStore::new_event_store(LifelineRepository::new(store.clone()))
                .with_upcasters(codec::upcasters());
        Self {
            store,
            life_events: CqrsFramework::new(event_store, vec![], ()),
        }
    }

    /// Validates and records a birth.
    pub async fn record_birth(
        &self,
        actor: &Actor,
        input: &BirthDeclarationInput,
        today: NaiveDate,
    ) -> Result<Recorded, RegistryError> {
        let declaration = parse_birth(input, today).map_err(RegistryError::Invalid)?;
        let life_event_id = self.life_event_id(actor, "birth");
        let stream_id = stream_for("birth", life_event_id)?;
        let command = LifeEventCommand::RecordBirth {
            life_event_id,
            declaration,
            recorded_on: today,
        };
        self.execute(actor, &stream_id, command).await?;
        self.recorded(life_event_id, stream_id).await
    }

    /// Validates and records a death with the procedures the declarant chose.
    pub async fn record_death(
        &self,
        actor: &Actor,
        input: &DeathDeclarationInput,
        today: NaiveDate,
    ) -> Result<Recorded, RegistryError> {
        let declaration = parse_death(input, today).map_err(RegistryError::Invalid)?;
        let life_event_id = self.life_event_id(actor, "death");
        let stream_id = stream_for("death", life_event_id)?;
        let command = LifeEventCommand::RecordDeath {
            life_event_id,
            declaration,
            recorded_on: today,
        };
        self.execute(actor, &stream_id, command).await?;
        self.recorded(life_event_id, stream_id).await
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
        self.execute(actor, stream_id, command).await
    }

    /// Voids a record made in error, giving the reason.
    pub async fn void(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        reason: String,
        today: NaiveDate,
    ) -> Result<(), RegistryError> {
        let command = LifeEventCommand::Void {
            reason,
            recorded_on: today,
        };
        self.execute(actor, stream_id, command).await
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

    async fn execute(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        command: LifeEventCommand,
    ) -> Result<(), RegistryError> {
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
        match self
            .life_events
            .execute_with_metadata(stream_id.as_str(), command, metadata)
            .await
        {
            // A retried request (same idempotency key) finds its record already made.
            Err(AggregateError::UserError(DomainError::AlreadyRecorded))
                if actor.idempotency_key.is_some() =>
            {
                Ok(())
            }
            other => other.map_err(RegistryError::from),
        }
    }

    async fn recorded(
        &self,
        life_event_id: Uuid,
        stream_id: StreamId,
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
        })
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
