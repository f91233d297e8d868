//! The agency officers' commands on the task aggregate (claim, complete, reject), run through
//! cqrs-es over Lifeline's event store; and the task as its stream tells it.

use std::cell::RefCell;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventEnvelope};
use lifeline_model::codec;
use lifeline_model::envelope::{StreamId, StreamVersion};
use lifeline_model::error::DomainError;
use lifeline_model::task::{Task, TaskCommand, TaskEvent};
use lifeline_store::{EventStore, LifelineRepository};
use uuid::Uuid;

use crate::auth::role_name;
use crate::registry::{Actor, RegistryError};

type TaskFramework = CqrsFramework<Task, PreloadedTaskStore>;

/// A task's state handed to cqrs-es instead of a load ([`TaskDesk::execute_on`]), and after the
/// commit the state the command left.
#[derive(Debug)]
struct Preloaded {
    aggregate_id: String,
    task: Task,
    version: usize,
    /// Set by the commit: the task with the committed events applied, and its version.
    after: Option<(Task, usize)>,
}

tokio::task_local! {
    /// The task of the command running in this tokio task, if its caller loaded it already.
    static PRELOADED: RefCell<Option<Preloaded>>;
}

/// cqrs-es' event store over Lifeline's log ([`LifelineRepository`]), which takes the task a
/// caller has just loaded (in [`PRELOADED`]) instead of reading its stream again. The commit is
/// the same either way: it appends at the version the state was read at, so a task changed
/// meanwhile fails the append's version check (`AggregateConflict`), as with a load.
struct PreloadedTaskStore {
    inner: PersistedEventStore<LifelineRepository, Task>,
}

impl cqrs_es::EventStore<Task> for PreloadedTaskStore {
    type AC = EventStoreAggregateContext<Task>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<Task>>, AggregateError<DomainError>> {
        self.inner.load_events(aggregate_id).await
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<DomainError>> {
        let preloaded = PRELOADED
            .try_with(|cell| {
                let cell = cell.borrow();
                cell.as_ref()
                    .filter(|preloaded| preloaded.aggregate_id == aggregate_id)
                    .map(|preloaded| (preloaded.task.clone(), preloaded.version))
            })
            .ok()
            .flatten();
        match preloaded {
            Some((task, version)) => Ok(EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: task,
                current_sequence: version,
                current_snapshot: None,
            }),
            None => self.inner.load_aggregate(aggregate_id).await,
        }
    }

    async fn commit(
        &self,
        events: Vec<<Task as Aggregate>::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<Task>>, AggregateError<DomainError>> {
        let preloaded = PRELOADED
            .try_with(|cell| {
                cell.borrow()
                    .as_ref()
                    .is_some_and(|preloaded| preloaded.aggregate_id == context.aggregate_id)
            })
            .unwrap_or(false);
        // cqrs-es' `EventSink` applied the events to the context's aggregate as the command
        // wrote them: it is the task as the commit leaves it.
        let after = preloaded.then(|| (context.aggregate.clone(), context.current_sequence));
        let committed = self.inner.commit(events, context, metadata).await?;
        if let Some((task, version)) = after {
            let after = (task, version + committed.len());
            let _ = PRELOADED.try_with(|cell| {
                if let Some(preloaded) = cell.borrow_mut().as_mut() {
                    preloaded.after = Some(after);
                }
            });
        }
        Ok(committed)
    }
}

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
        let event_store = PreloadedTaskStore {
            inner: PersistedEventStore::new_event_store(LifelineRepository::new(store.clone()))
                .with_upcasters(codec::upcasters()),
        };
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
        self.load_stream(Self::stream_id(task_id)?).await
    }

    /// The task of stream `stream_id` rebuilt from it; `None` if it was never created.
    async fn load_stream(&self, stream_id: StreamId) -> Result<Option<LoadedTask>, RegistryError> {
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

    /// Runs `command` on task `task_id` for `actor` (cqrs-es reads the task's stream first).
    pub async fn execute(
        &self,
        actor: &Actor,
        task_id: Uuid,
        command: TaskCommand,
    ) -> Result<(), RegistryError> {
        let stream_id = Self::stream_id(task_id)?;
        self.run(actor, &stream_id, command).await
    }

    /// Runs `command` for `actor` on the task as `loaded` shows it (just read by the caller,
    /// who decided on it: no second read of its stream), and returns the task as the command
    /// left it. If the task changed since it was read, the append's version check refuses the
    /// commit, and the command runs again on the task as it now stands, as [`Self::execute`]
    /// would have run it.
    pub async fn execute_on(
        &self,
        actor: &Actor,
        loaded: &LoadedTask,
        command: TaskCommand,
    ) -> Result<LoadedTask, RegistryError> {
        let cell = RefCell::new(Some(Preloaded {
            aggregate_id: loaded.stream_id.as_str().to_owned(),
            task: loaded.state.clone(),
            version: usize::try_from(loaded.version.0).unwrap_or_default(),
            after: None,
        }));
        let (result, cell) = PRELOADED
            .scope(cell, async {
                let result = self.run(actor, &loaded.stream_id, command.clone()).await;
                let after = PRELOADED.with(|cell| cell.borrow_mut().take());
                (result, after)
            })
            .await;
        match result {
            Ok(()) => {
                let Some((state, version)) = cell.and_then(|preloaded| preloaded.after) else {
                    return Err(RegistryError::Fault(
                        "the task's commit left no state".to_owned(),
                    ));
                };
                Ok(LoadedTask {
                    stream_id: loaded.stream_id.clone(),
                    state,
                    version: StreamVersion(i64::try_from(version).unwrap_or(i64::MAX)),
                    created_at: loaded.created_at,
                })
            }
            Err(RegistryError::Conflict) => {
                self.run(actor, &loaded.stream_id, command).await?;
                self.load_stream(loaded.stream_id.clone())
                    .await?
                    .ok_or_else(|| RegistryError::Fault("the task vanished".to_owned()))
            }
            Err(error) => Err(error),
        }
    }

    async fn run(
        &self,
        actor: &Actor,
        stream_id: &StreamId,
        command: TaskCommand,
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
