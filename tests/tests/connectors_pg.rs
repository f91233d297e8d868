//! Connector deliveries with several worker processes on one PostgreSQL log: only the holder of
//! the agency's lease delivers, every task goes to the agency system once, and when the holder
//! stops another worker takes over. The agency system is a wiremock server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lifeline::connector::{lease_name, AgencyConnector, ConnectorSecret, DeliveryWorker};
use lifeline::registry::Actor;
use lifeline::tasks::TaskDesk;
use lifeline_model::declaration::{parse_birth, Declaration};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{Application, TaskCommand};
use lifeline_model::values::OfficeCode;
use lifeline_store::EventStore;
use lifeline_tests::chain::{birth_input, fixed_instant, today};
use lifeline_tests::{eventually, postgres_store};
use tokio::sync::watch;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &[u8] = b"police-connector-secret-0123456789abcdef";

async fn create_task(desk: &TaskDesk) -> Uuid {
    let declaration = Declaration::Birth(parse_birth(&birth_input(0), today()).unwrap());
    let procedure = ProcedureId::ResidenceRegistration;
    let task_id = Uuid::now_v7();
    let actor = Actor {
        id: "policy:test".to_owned(),
        role: Role::System,
        office: None,
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    desk.execute(
        &actor,
        task_id,
        TaskCommand::Create {
            task_id,
            procedure,
            life_event_id: Uuid::now_v7(),
            office: OfficeCode::parse("79-26734").unwrap(),
            application: Application::for_procedure(procedure, &declaration.flatten()),
            due_at: fixed_instant() + chrono::Duration::days(5),
            source_event_id: Uuid::now_v7(),
            at: fixed_instant(),
        },
    )
    .await
    .unwrap();
    task_id
}

/// A worker process's connector for the police, polling every 50 ms, running until its
/// sender says stop.
fn start_worker(
    store: EventStore,
    server: &MockServer,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut connector = AgencyConnector::new(
        format!("{}/applications", server.uri()),
        ConnectorSecret::new(SECRET).unwrap(),
    );
    connector.timeout = Duration::from_secs(2);
    let worker = DeliveryWorker::new(
        store.clone(),
        Arc::new(TaskDesk::new(store)),
        AgencyId::Police,
        connector,
    )
    .unwrap()
    .with_poll_interval(Duration::from_millis(50));
    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }));
    (stop, handle)
}

/// The task ids the agency system received, with how many times each.
async fn received(server: &MockServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in server.received_requests().await.unwrap_or_default() {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        *counts
            .entry(body["task_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// Waits until the agency system received every one of `tasks`, then checks, after time for a
/// duplicate to come (the workers poll every 50 ms), that it received each once.
async fn each_delivered_once(server: &MockServer, tasks: &[String]) {
    eventually(Duration::from_secs(20), "every task delivered", || async {
        received(server).await.len() == tasks.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = received(server).await;
    for task in tasks {
        assert_eq!(
            counts.get(task),
            Some(&1),
            "task {task} delivered {counts:?}"
        );
    }
}

#[tokio::test]
async fn two_worker_processes_deliver_each_task_once_and_the_second_takes_over() {
    let store = postgres_store().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/applications"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    let desk = TaskDesk::new(store.store().clone());
    // Two "processes": each worker on a store (pool) of its own. The first delivers a task
    // before the second starts, so it holds the lease.
    let mut tasks = vec![create_task(&desk).await.to_string()];
    let (stop_first, first) = start_worker(store.store().clone(), &server);
    eventually(Duration::from_secs(20), "the first delivery", || async {
        received(&server).await.len() == 1
    })
    .await;
    let second_store = EventStore::connect_postgres(
        store
            .store()
            .postgres_pool()
            .unwrap()
            .connect_options()
            .as_ref()
            .clone(),
        4,
    )
    .await
    .unwrap();
    let (stop_second, second) = start_worker(second_store.clone(), &server);

    for _ in 0..5 {
        tasks.push(create_task(&desk).await.to_string());
    }
    each_delivered_once(&server, &tasks).await;

    // The lease is one worker's: a third try fails while both run.
    assert!(store
        .try_lease(&lease_name(AgencyId::Police))
        .await
        .unwrap()
        .is_none());

    // The holder stops: the second takes over and delivers what comes next, once.
    stop_first.send(true).unwrap();
    first.await.unwrap();
    for _ in 0..3 {
        tasks.push(create_task(&desk).await.to_string());
    }
    each_delivered_once(&server, &tasks).await;
    stop_second.send(true).unwrap();
    second.await.unwrap();
    second_store.close().await;

    // Nobody holds it now: it can be taken, and released by dropping it.
    let lease = store
        .try_lease(&lease_name(AgencyId::Police))
        .await
        .unwrap();
    assert!(lease.is_some());
    let mut lease = lease.unwrap();
    lease.confirm().await.unwrap();
    assert!(store
        .try_lease(&lease_name(AgencyId::Police))
        .await
        .unwrap()
        .is_none());
    drop(lease);
    eventually(
        Duration::from_secs(5),
        "the dropped lease released",
        || async {
            store
                .try_lease(&lease_name(AgencyId::Police))
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
}

#[tokio::test]
async fn a_sqlite_lease_is_one_holders_until_dropped() {
    let store = lifeline_tests::sqlite_store().await;
    let lease = store.try_lease("connector:police").await.unwrap().unwrap();
    assert!(store.try_lease("connector:police").await.unwrap().is_none());
    assert!(store.try_lease("connector:other").await.unwrap().is_some());
    drop(lease);
    assert!(store.try_lease("connector:police").await.unwrap().is_some());
}

/// The backends of this test's database whose last statement was a lease try.
async fn lease_trying_backends(store: &EventStore) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE 'SELECT pg_try_advisory_lock%' ORDER BY pid",
    )
    .fetch_all(store.postgres_pool().unwrap())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_standby_tries_the_lease_on_one_connection_and_takes_it_when_released() {
    let store = postgres_store().await;
    let store = store.store();
    let mut held = store.try_lease("connector:police").await.unwrap().unwrap();
    // Its session's last statement is the confirmation, not the try.
    held.confirm().await.unwrap();
    let mut candidate = store.lease_candidate("connector:police");
    assert!(candidate.try_take(store).await.unwrap().is_none());
    let standing = lease_trying_backends(store).await;
    assert_eq!(standing.len(), 1, "the standby's connection stays open");
    for _ in 0..5 {
        assert!(candidate.try_take(store).await.unwrap().is_none());
    }
    // Until 2026-12-07 each try opened a session and closed it.
    assert_eq!(
        lease_trying_backends(store).await,
        standing,
        "the same session"
    );
    held.release().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut lease = loop {
        if let Some(lease) = candidate.try_take(store).await.unwrap() {
            break lease;
        }
        assert!(std::time::Instant::now() < deadline, "the lease never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    lease.confirm().await.unwrap();
    assert!(store.try_lease("connector:police").await.unwrap().is_none());
    candidate.close().await;
}
