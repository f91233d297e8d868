//! The cqrs-es repository: a tiny aggregate runs on `CqrsFramework` over the store.

use std::collections::HashMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, SerializedEvent,
};
use cqrs_es::{
    Aggregate, AggregateError, CqrsFramework, DomainEvent, EventEnvelope, EventStore as _,
};
use lifeline_model::envelope::{Role, StreamVersion};
use lifeline_store::{EventStore, LifelineRepository};
use lifeline_tests::{backend_tests, new_stream};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

backend_tests!(
    commands_run_through_the_cqrs_framework,
    concurrent_modification_is_an_aggregate_conflict,
    a_checked_append_is_stored_only_if_its_check_agrees,
);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    created: bool,
    total: i64,
}

#[derive(Debug)]
enum CounterCommand {
    Create,
    Add(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    CounterCreated,
    CounterAdded { amount: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CounterError(&'static str);

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CounterCreated => "CounterCreated",
            Self::CounterAdded { .. } => "CounterAdded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CounterCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        match command {
            CounterCommand::Create if self.created => Err(CounterError("already created")),
            CounterCommand::Create => {
                sink.write(CounterEvent::CounterCreated, self).await;
                Ok(())
            }
            CounterCommand::Add(_) if !self.created => Err(CounterError("not created")),
            CounterCommand::Add(amount) => {
                sink.write(CounterEvent::CounterAdded { amount }, self)
                    .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::CounterCreated => self.created = true,
            CounterEvent::CounterAdded { amount } => self.total += amount,
        }
    }
}

type Framework = CqrsFramework<Counter, PersistedEventStore<LifelineRepository, Counter>>;

fn framework(store: &EventStore) -> Framework {
    let events = PersistedEventStore::new_event_store(LifelineRepository::new(store.clone()));
    CqrsFramework::new(events, vec![], ())
}

async fn commands_run_through_the_cqrs_framework(store: EventStore) {
    let cqrs = framework(&store);
    let stream = new_stream("counter");
    let id = stream.as_str();
    let correlation_id = Uuid::new_v4();
    let metadata = HashMap::from([
        ("actor".to_owned(), "registrar-7".to_owned()),
        ("role".to_owned(), "registrar".to_owned()),
        ("office".to_owned(), "hanoi-01".to_owned()),
        ("correlation_id".to_owned(), correlation_id.to_string()),
    ]);
    cqrs.execute_with_metadata(id, CounterCommand::Create, metadata.clone())
        .await
        .unwrap();
    let refused = cqrs.execute(id, CounterCommand::Create).await.unwrap_err();
    assert!(matches!(refused, AggregateError::UserError(_)));
    cqrs.execute(id, CounterCommand::Add(2)).await.unwrap();

    // A command retried with the same command id stores its events once.
    let command_id = Uuid::new_v4().to_string();
    let retried = HashMap::from([("command_id".to_owned(), command_id)]);
    for _ in 0..2 {
        cqrs.execute_with_metadata(id, CounterCommand::Add(5), retried.clone())
            .await
            .unwrap();
    }

    let events = store.read_stream(&stream).await.unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(types, ["CounterCreated", "CounterAdded", "CounterAdded"]);
    // The log holds the bare body; cqrs-es's tagged form exists only on the way in and out.
    assert_eq!(events[2].payload, serde_json::json!({ "amount": 5 }));
    assert_eq!(events[0].schema_version, 1);
    assert_eq!(events[0].metadata.actor, "registrar-7");
    assert_eq!(events[0].metadata.role, Role::Registrar);
    assert_eq!(events[0].metadata.office.as_deref(), Some("hanoi-01"));
    assert_eq!(events[0].metadata.correlation_id, correlation_id);
    assert_eq!(events[1].metadata.role, Role::System);

    let loaded =
        cqrs_es::persist::PersistedEventStore::<LifelineRepository, Counter>::new_event_store(
            LifelineRepository::new(store.clone()),
        )
        .load_aggregate(id)
        .await
        .unwrap();
    assert_eq!(loaded.aggregate.total, 7);
    assert_eq!(loaded.current_sequence, 3);

    let repository = LifelineRepository::new(store.clone());
    let serialized = repository.get_events::<Counter>(id).await.unwrap();
    assert_eq!(serialized.len(), 3);
    assert_eq!(serialized[2].sequence, 3);
    assert_eq!(serialized[2].event_version, "1");
    assert_eq!(serialized[0].metadata["actor"], "registrar-7");
    let tail = repository.get_last_events::<Counter>(id, 2).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Some(StreamVersion(3))
    );
}

async fn concurrent_modification_is_an_aggregate_conflict(store: EventStore) {
    let cqrs = framework(&store);
    let stream = new_stream("counter");
    let id = stream.as_str();
    cqrs.execute(id, CounterCommand::Create).await.unwrap();

    // Two writers load the same version; the second to commit loses.
    let events = PersistedEventStore::<LifelineRepository, Counter>::new_event_store(
        LifelineRepository::new(store.clone()),
    );
    let first = events.load_aggregate(id).await.unwrap();
    let second = events.load_aggregate(id).await.unwrap();
    events
        .commit(
            vec![CounterEvent::CounterAdded { amount: 1 }],
            first,
            HashMap::new(),
        )
        .await
        .unwrap();
    let lost = events
        .commit(
            vec![CounterEvent::CounterAdded { amount: 10 }],
            second,
            HashMap::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(lost, AggregateError::AggregateConflict),
        "{lost:?}"
    );

    // The repository says the same.
    let repository = LifelineRepository::new(store.clone());
    let stale = repository.get_events::<Counter>(id).await.unwrap();
    let error = repository
        .persist::<Counter>(&stale[1..], None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PersistenceError::OptimisticLockError),
        "{error:?}"
    );
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 2);
}

/// `amount` added to counter `id` as its event number `sequence`, serialised as cqrs-es does.
fn added(id: &str, sequence: usize, amount: i64) -> SerializedEvent {
    SerializedEvent::try_from(&EventEnvelope::<Counter> {
        aggregate_id: id.to_owned(),
        sequence,
        payload: CounterEvent::CounterAdded { amount },
        metadata: HashMap::new(),
    })
    .unwrap()
}

async fn a_checked_append_is_stored_only_if_its_check_agrees(store: EventStore) {
    let cqrs = framework(&store);
    let stream = new_stream("counter");
    let id = stream.as_str();
    cqrs.execute(id, CounterCommand::Create).await.unwrap();
    let created = store.read_stream(&stream).await.unwrap()[0].event_id;
    let repository = LifelineRepository::new(store.clone());

    // The guard is not stored: the check sees nothing and agrees; the append is stored.
    let absent = Uuid::new_v4();
    let mut seen = None;
    let stored = repository
        .append_serialized_checked(&[added(id, 2, 3)], absent, |guard| {
            seen = Some(guard.map(|event| event.event_id));
            Ok::<_, &str>(())
        })
        .await
        .unwrap()
        .unwrap()
        .expect("stored");
    assert_eq!(seen, Some(None));
    assert_eq!(stored.stream_version, StreamVersion(2));

    // The guard is stored: the check sees it and refuses; nothing is stored.
    let refused = repository
        .append_serialized_checked(&[added(id, 3, 4)], created, |guard| match guard {
            Some(event) if event.event_id == created => Err("the guard is stored"),
            _ => Ok(()),
        })
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), "the guard is stored");
    assert_eq!(store.read_stream(&stream).await.unwrap().len(), 2);

    // A stale version is a conflict, whatever the check would say; it is not asked.
    let stale = repository
        .append_serialized_checked(&[added(id, 2, 5)], absent, |_| -> Result<(), &str> {
            panic!("a conflicting append is not checked")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(stale, PersistenceError::OptimisticLockError),
        "{stale:?}"
    );
    let events = store.read_stream(&stream).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].payload, serde_json::json!({ "amount": 3 }));
}
