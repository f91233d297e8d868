//! The agency officers' commands on the task aggregate (claim, complete, reject), run through
//! cqrs-es over Lifeline's event store; and the task as its stream tells it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use lifeline_model::codec;
use lifeline_model::envelope::{StreamId, StreamVersion};
use lifeline_model::error::DomainError;
use lifeline_model::task::{Task, TaskCommand, TaskEvent};
use lifeline_store::{EventStore, LifelineRepository};
use uuid::Uuid;

use crate::auth::role_name;
use crate::registry::{Actor, RegistryError};

type TaskFramework = CqrsFramework<Task, PersistedEventStore<LifelineRepository, Task>>;

/// A task as its stream tells it.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    pub stream_id: StreamId,
    pub state: Task,
    pub version: StreamVersion,
    pub created_at: Option<DateTime<Utc>>,
}

/// The agencies' side of Lifeline: commands on `task-<uuid>` streams.
pub struct TaskDesk {
    store: EventStore,
    tasks: TaskFramework,
}

impl TaskDesk {
    pub fn new(store: EventStore) -> Self {
        let event_store =
            PersistedEventStore::new_event_store(LifelineRepository::new(store.clone()))
                .with_upcasters(codec::upcasters());
        Self {
            store,
            tasks: CqrsFramework::new(event_store, vec![], ()),
        }
    }

    /// The stream of task `task_id`.
    pub fn stream_id(task_id: Uuid) -> Result<StreamId, RegistryError> {
        StreamId::for_kind("task", task_id).map_err(|error| RegistryError::Fault(error.to_string()))
    }

    /// The task rebuilt from its stream; `None` if it was never created.
    pub async fn load(&self, task_id: Uuid) -> Result<Option<LoadedTask>, RegistryError> {
        let stream_id = Self::stream_id(task_id)?;
        let events = self.store.read_stream(&stream_id).await?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let version = last.stream_version;
        let mut state = Task::default();
        let mut created_at = None;
        for event in &events {
            let decoded: TaskEvent = codec::decode_recorded(event)
                .map_err(|error| RegistryError::Fault(error.to_string()))?;
            if let TaskEvent::TaskCreated(created) = &decoded {
                created_at = Some(created.created_at);
            }
            state.apply(decoded);
        }
        Ok(Some(LoadedTask {
            stream_id,
            state,
            version,
            created_at,
        }))
    }

    /// Runs `command` on task `task_id` for `actor`.
    pub async fn execute(
        &self,
        actor: &Actor,
        task_id: Uuid,
        command: TaskCommand,
    ) -> Result<(), RegistryError> {
        let stream_id = Self::stream_id(task_id)?;
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
        match self
            .tasks
            .execute_with_metadata(stream_id.as_str(), command, metadata)
            .await
        {
            Ok(()) => Ok(()),
            Err(AggregateError::UserError(DomainError::Invalid(errors))) => {
                Err(RegistryError::Invalid(errors))
            }
            Err(error) => Err(RegistryError::from(error)),
        }
    }
}
