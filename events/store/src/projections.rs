//! The projection tables (agency inbox, person registry, life-event status): their rows, the
//! reads services make, and the loads and saves the projection subscribers make inside their
//! subscription transaction. All projection SQL of Lifeline is here, except the read-only
//! counts `/metrics` takes (`crate::stats`: tasks by state, overdue tasks).
//!
//! The folding (what an event does to a row) is not here: it lives with the subscribers in
//! `lifeline_policies::projections`, as pure functions from (row, event) to row. This module
//! only stores and finds rows. Every table here is rebuildable from the log
//! ([`clear_projections`] then a replay).
//!
//! Times are stored with microsecond precision (PostgreSQL `timestamptz`; on SQLite fixed-width
//! UTC text, so that text order is time order).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use lifeline_model::declaration::Residence;
use lifeline_model::life_event::Reference;
use lifeline_model::procedure::{AgencyId, ProcedureGroup, ProcedureId};
use lifeline_model::task::{Application, TaskOutcome, TaskStatus};
use lifeline_model::values::{OfficeCode, PersonalId, Sex};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Sqlite};
use uuid::Uuid;

use crate::error::{StoreError, SubscriberError};
use crate::store::{EventStore, StoreTransaction, TransactionConnection};

/// Why a projection read or write failed: always a fault, never a domain answer.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("projection row {table}/{key} is malformed: column {column}: {reason}")]
    Malformed {
        table: &'static str,
        key: String,
        column: &'static str,
        reason: String,
    },
}

impl From<sqlx::Error> for ProjectionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

impl From<ProjectionError> for SubscriberError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Store(error) => Self::Store(error),
            other => Self::failed(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// One task in an agency's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub task_id: Uuid,
    pub procedure: ProcedureId,
    pub agency: AgencyId,
    pub office: OfficeCode,
    pub life_event_id: Uuid,
    /// Open, claimed, completed, rejected or cancelled (never `New`).
    pub status: TaskStatus,
    pub claimed_by: Option<String>,
    pub due_at: DateTime<Utc>,
    pub overdue: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub application: Application,
    pub outcome: Option<TaskOutcome>,
    /// Why the task was rejected or cancelled.
    pub reason: Option<String>,
}

/// Where a task sits in inbox order: by due time, then task id. Paging resumes after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    pub due_at: DateTime<Utc>,
    pub task_id: Uuid,
}

impl TaskRow {
    pub fn key(&self) -> TaskKey {
        TaskKey {
            due_at: self.due_at,
            task_id: self.task_id,
        }
    }
}

/// Which of an agency's tasks an inbox shows; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    pub status: Option<TaskStatus>,
    pub procedure: Option<ProcedureId>,
    /// Only tasks due strictly before this time.
    pub due_before: Option<DateTime<Utc>>,
    pub office: Option<OfficeCode>,
}

/// One page of an inbox: up to `limit` tasks after `after` in [`TaskKey`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: Option<TaskKey>,
    pub limit: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            after: None,
            limit: 50,
        }
    }
}

/// Whether a person is alive, as far as Lifeline's events know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VitalStatus {
    Alive,
    Deceased,
}

/// The part a person plays in a life event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonRole {
    Child,
    Mother,
    Father,
    Declarant,
    Deceased,
}

/// A life event that names a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonLifeEvent {
    pub life_event_id: Uuid,
    pub kind: ProcedureGroup,
    pub role: PersonRole,
    pub voided: bool,
}

/// A child's (or anyone's) health-insurance card, learned from a completed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insurance {
    pub card_number: String,
    pub valid_until: NaiveDate,
}

/// A fact learned from a completed task (a card issued, a residence entry, a payment decided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonFact {
    /// The outcome kind (`insurance_card_issued`, `payment_decided`...).
    pub kind: String,
    pub procedure: ProcedureId,
    pub task_id: Uuid,
    /// The outcome as the agency gave it.
    pub details: Value,
    pub at: DateTime<Utc>,
}

/// A person in the registry, by personal ID number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRow {
    pub personal_id: PersonalId,
    pub full_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub sex: Option<Sex>,
    pub vital_status: VitalStatus,
    pub date_of_death: Option<NaiveDate>,
    /// The death record that made the person deceased.
    pub death_life_event_id: Option<Uuid>,
    /// The registered residence, as last declared or registered.
    pub residence: Option<Residence>,
    pub insurance: Option<Insurance>,
    pub facts: Vec<PersonFact>,
    pub life_events: Vec<PersonLifeEvent>,
    pub updated_at: DateTime<Utc>,
}

/// Where one procedure of a life event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcedureState {
    /// Chosen, no task yet.
    Pending,
    Open,
    Claimed,
    Completed,
    /// Its last task was a reversal, completed: the agency revoked what the procedure produced.
    Reversed,
    Rejected,
    Cancelled,
    NotEligible,
    NotChosen,
}

impl ProcedureState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Open => "open",
            Self::Claimed => "claimed",
            Self::Completed => "completed",
            Self::Reversed => "reversed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::NotEligible => "not-eligible",
            Self::NotChosen => "not-chosen",
        }
    }
}

/// One procedure of a life event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcedureStatusRow {
    pub procedure: ProcedureId,
    pub state: ProcedureState,
    /// The latest task of this procedure.
    pub task_id: Option<Uuid>,
    pub opened_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    /// The eligibility reason, or why the task was rejected or cancelled.
    pub detail: Option<String>,
}

/// A life event and every procedure of its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeEventStatusRow {
    pub life_event_id: Uuid,
    pub kind: ProcedureGroup,
    pub reference: Reference,
    pub office: OfficeCode,
    pub recorded_on: NaiveDate,
    pub late: bool,
    pub voided: bool,
    pub corrections: u32,
    pub updated_at: DateTime<Utc>,
    /// In group order.
    pub procedures: Vec<ProcedureStatusRow>,
}

impl LifeEventStatusRow {
    pub fn procedure(&self, procedure: ProcedureId) -> Option<&ProcedureStatusRow> {
        self.procedures
            .iter()
            .find(|row| row.procedure == procedure)
    }

    pub fn procedure_mut(&mut self, procedure: ProcedureId) -> Option<&mut ProcedureStatusRow> {
        self.procedures
            .iter_mut()
            .find(|row| row.procedure == procedure)
    }
}

/// Every projection table, children before parents (the order they are cleared in).
pub const PROJECTION_TABLES: [&str; 4] = [
    "projection_tasks",
    "projection_persons",
    "projection_life_event_procedures",
    "projection_life_events",
];

/// Runs one read in a short transaction of its own, then rolls it back. (`EventStore::begin`
/// takes SQLite's writer lock: reads are short.)
macro_rules! read {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut tx = $store.begin().await?;
        let result = {
            let $conn = tx.connection()?;
            $body.await
        };
        tx.rollback().await?;
        result
    }};
}

// ---------------------------------------------------------------------------------------------
// Reads for services (each in a short transaction of its own).

/// An agency's inbox: its tasks matching `filter`, in [`TaskKey`] order, one page.
pub async fn inbox(
    store: &EventStore,
    agency: AgencyId,
    filter: &InboxFilter,
    page: Page,
) -> Result<Vec<TaskRow>, ProjectionError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM projection_tasks WHERE agency = $1");
    let mut params = vec![Param::Text(agency.as_str().to_owned())];
    let mut next = |sql: &mut String, condition: &str, param: Param| {
        params.push(param);
        let n = params.len();
        sql.push_str(&condition.replace('#', &format!("${n}")));
    };
    if let Some(status) = filter.status {
        next(
            &mut sql,
            " AND status = #",
            Param::Text(status_str(status).to_owned()),
        );
    }
    if let Some(procedure) = filter.procedure {
        next(
            &mut sql,
            " AND procedure = #",
            Param::Text(procedure.as_str().to_owned()),
        );
    }
    if let Some(due_before) = filter.due_before {
        next(&mut sql, " AND due_at < #", Param::Time(Some(due_before)));
    }
    if let Some(office) = &filter.office {
        next(
            &mut sql,
            " AND office = #",
            Param::Text(office.as_str().to_owned()),
        );
    }
    if let Some(after) = page.after {
        next(
            &mut sql,
            " AND (due_at > #",
            Param::Time(Some(after.due_at)),
        );
        next(&mut sql, " OR (due_at = #", Param::Time(Some(after.due_at)));
        next(
            &mut sql,
            " AND task_id > #))",
            Param::Uuid(Some(after.task_id)),
        );
    }
    next(
        &mut sql,
        " ORDER BY due_at, task_id LIMIT #",
        Param::Int(i64::from(page.limit)),
    );
    read!(store, |conn| fetch(conn, sql, params, decode_task))
}

/// One task, if the inbox knows it.
pub async fn task(store: &EventStore, task_id: Uuid) -> Result<Option<TaskRow>, ProjectionError> {
    read!(store, |conn| load_task_on(conn, task_id))
}

/// Every task of a life event, oldest first.
pub async fn tasks_of_life_event(
    store: &EventStore,
    life_event_id: Uuid,
) -> Result<Vec<TaskRow>, ProjectionError> {
    read!(store, |conn| tasks_of_life_event_on(conn, life_event_id))
}

/// Every task of a life event as `tx` sees it (for the policies engine, inside its transaction).
/// The inbox projection may lag the log: callers that must not miss a task created moments ago
/// read the task streams instead.
pub async fn tasks_of_life_event_in_tx(
    tx: &mut StoreTransaction<'_>,
    life_event_id: Uuid,
) -> Result<Vec<TaskRow>, ProjectionError> {
    tasks_of_life_event_on(tx.connection()?, life_event_id).await
}

/// Open or claimed tasks due before `at` and not yet marked overdue, earliest first, at most
/// `limit` (what the overdue watcher looks for).
pub async fn open_tasks_due_before(
    store: &EventStore,
    at: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<TaskRow>, ProjectionError> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM projection_tasks \
         WHERE status IN ('open', 'claimed') AND NOT overdue AND due_at < $1 \
         ORDER BY due_at, task_id LIMIT $2"
    );
    let params = vec![Param::Time(Some(at)), Param::Int(i64::from(limit))];
    read!(store, |conn| fetch(conn, sql, params, decode_task))
}

/// A person of the registry.
pub async fn person(
    store: &EventStore,
    personal_id: &PersonalId,
) -> Result<Option<PersonRow>, ProjectionError> {
    let personal_id = personal_id.clone();
    read!(store, |conn| load_person_on(conn, personal_id))
}

/// The status of a life event and its procedures.
pub async fn life_event_status(
    store: &EventStore,
    life_event_id: Uuid,
) -> Result<Option<LifeEventStatusRow>, ProjectionError> {
    read!(store, |conn| load_life_event_on(conn, life_event_id))
}

/// The status of every life event a citizen's reference names: normally one, none if unknown.
/// A reference is 50 bits of the life event's id, not a key: two records can share one (see
/// migration 14), and the caller must not answer for either then.
pub async fn life_event_status_by_reference(
    store: &EventStore,
    reference: &Reference,
) -> Result<Vec<LifeEventStatusRow>, ProjectionError> {
    let sql = "SELECT life_event_id FROM projection_life_events WHERE reference = $1 \
               ORDER BY life_event_id LIMIT 2"
        .to_owned();
    let params = vec![Param::Text(reference.as_str().to_owned())];
    let mut tx = store.begin().await?;
    let found = fetch(tx.connection()?, sql, params, |row| {
        row.uuid("life_event_id")
    })
    .await?;
    let mut statuses = Vec::with_capacity(found.len());
    for life_event_id in found {
        statuses.extend(load_life_event_on(tx.connection()?, life_event_id).await?);
    }
    tx.rollback().await?;
    Ok(statuses)
}

// ---------------------------------------------------------------------------------------------
// Loads and saves for the projection subscribers, inside their transaction.

/// The most keys one `IN (...)` lookup carries.
const LOOKUP_KEYS: usize = 500;

/// `<sql> IN ($1, .., $n)` for every chunk of `keys`: the rows of all chunks.
async fn fetch_in<T>(
    tx: &mut StoreTransaction<'_>,
    sql: &str,
    keys: Vec<Param>,
    decode: impl Fn(&dyn Columns) -> Result<T, ProjectionError> + Copy,
) -> Result<Vec<T>, ProjectionError> {
    let mut found = Vec::new();
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let chunk: Vec<Param> = keys.by_ref().take(LOOKUP_KEYS).collect();
        let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let statement = format!("{sql} IN ({})", placeholders.join(", "));
        found.extend(fetch(tx.connection()?, statement, chunk, decode).await?);
    }
    Ok(found)
}

/// The stored rows of these tasks (those that exist), in one lookup per few hundred ids.
pub async fn load_tasks(
    tx: &mut StoreTransaction<'_>,
    task_ids: &[Uuid],
) -> Result<Vec<TaskRow>, ProjectionError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM projection_tasks WHERE task_id");
    let keys = task_ids.iter().map(|id| Param::Uuid(Some(*id))).collect();
    fetch_in(tx, &sql, keys, decode_task).await
}

/// The stored rows of these persons (those that exist), in one lookup per few hundred numbers.
pub async fn load_persons(
    tx: &mut StoreTransaction<'_>,
    personal_ids: &[PersonalId],
) -> Result<Vec<PersonRow>, ProjectionError> {
    let sql = format!("SELECT {PERSON_COLUMNS} FROM projection_persons WHERE personal_id");
    let keys = personal_ids
        .iter()
        .map(|id| Param::Text(id.as_str().to_owned()))
        .collect();
    fetch_in(tx, &sql, keys, decode_person).await
}

/// For each of these tasks that a procedure row names: (task id, life event id).
pub async fn life_events_of_tasks(
    tx: &mut StoreTransaction<'_>,
    task_ids: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, ProjectionError> {
    let sql = "SELECT task_id, life_event_id FROM projection_life_event_procedures WHERE task_id";
    let keys = task_ids.iter().map(|id| Param::Uuid(Some(*id))).collect();
    fetch_in(tx, sql, keys, |row| {
        Ok((row.uuid("task_id")?, row.uuid("life_event_id")?))
    })
    .await
}

/// The stored status rows of these life events (those that exist), procedures included.
pub async fn load_life_event_statuses(
    tx: &mut StoreTransaction<'_>,
    life_event_ids: &[Uuid],
) -> Result<Vec<LifeEventStatusRow>, ProjectionError> {
    let sql = "SELECT life_event_id, kind, reference, office, recorded_on, late, voided, \
               corrections, updated_at FROM projection_life_events WHERE life_event_id";
    let keys: Vec<Param> = life_event_ids
        .iter()
        .map(|id| Param::Uuid(Some(*id)))
        .collect();
    let mut statuses = fetch_in(tx, sql, keys, decode_life_event).await?;
    if statuses.is_empty() {
        return Ok(statuses);
    }
    let sql = "SELECT life_event_id, procedure, state, task_id, opened_at, closed_at, due_at, \
               overdue, detail FROM projection_life_event_procedures WHERE life_event_id";
    let keys = statuses
        .iter()
        .map(|status| Param::Uuid(Some(status.life_event_id)))
        .collect();
    let procedures = fetch_in(tx, sql, keys, |row| {
        Ok((row.uuid("life_event_id")?, decode_procedure(row)?))
    })
    .await?;
    let mut by_life_event: HashMap<Uuid, Vec<ProcedureStatusRow>> = HashMap::new();
    for (life_event_id, procedure) in procedures {
        by_life_event
            .entry(life_event_id)
            .or_default()
            .push(procedure);
    }
    for status in &mut statuses {
        let mut procedures = by_life_event
            .remove(&status.life_event_id)
            .unwrap_or_default();
        procedures.sort_by_key(|row| procedure_order(row.procedure));
        status.procedures = procedures;
    }
    Ok(statuses)
}

pub async fn load_task(
    tx: &mut StoreTransaction<'_>,
    task_id: Uuid,
) -> Result<Option<TaskRow>, ProjectionError> {
    load_task_on(tx.connection()?, task_id).await
}

/// Inserts or replaces the row of `row.task_id`.
pub async fn save_task(
    tx: &mut StoreTransaction<'_>,
    row: &TaskRow,
) -> Result<(), ProjectionError> {
    save_tasks(tx, std::slice::from_ref(row)).await
}

/// Inserts or replaces the rows of `rows` (task ids all different), a few hundred per statement.
/// A stored row equal to its replacement in every column is left as it is (no new row version,
/// none of its bytes written again): the row of a task created since the last batch and not
/// changed since, which the policy wrote with the creation ([`insert_new_tasks`]).
pub async fn save_tasks(
    tx: &mut StoreTransaction<'_>,
    rows: &[TaskRow],
) -> Result<(), ProjectionError> {
    write_tasks(
        tx,
        rows,
        "ON CONFLICT (task_id) DO UPDATE SET procedure = excluded.procedure, \
         agency = excluded.agency, office = excluded.office, \
         life_event_id = excluded.life_event_id, status = excluded.status, \
         claimed_by = excluded.claimed_by, due_at = excluded.due_at, \
         overdue = excluded.overdue, created_at = excluded.created_at, \
         updated_at = excluded.updated_at, application = excluded.application, \
         outcome = excluded.outcome, reason = excluded.reason \
         WHERE projection_tasks.procedure IS DISTINCT FROM excluded.procedure \
         OR projection_tasks.agency IS DISTINCT FROM excluded.agency \
         OR projection_tasks.office IS DISTINCT FROM excluded.office \
         OR projection_tasks.life_event_id IS DISTINCT FROM excluded.life_event_id \
         OR projection_tasks.status IS DISTINCT FROM excluded.status \
         OR projection_tasks.claimed_by IS DISTINCT FROM excluded.claimed_by \
         OR projection_tasks.due_at IS DISTINCT FROM excluded.due_at \
         OR projection_tasks.overdue IS DISTINCT FROM excluded.overdue \
         OR projection_tasks.created_at IS DISTINCT FROM excluded.created_at \
         OR projection_tasks.updated_at IS DISTINCT FROM excluded.updated_at \
         OR CAST(projection_tasks.application AS TEXT) \
            IS DISTINCT FROM CAST(excluded.application AS TEXT) \
         OR CAST(projection_tasks.outcome AS TEXT) IS DISTINCT FROM CAST(excluded.outcome AS TEXT) \
         OR projection_tasks.reason IS DISTINCT FROM excluded.reason",
    )
    .await
}

/// Inserts the rows of `rows` (task ids all different) whose task has no row yet and leaves
/// every existing row as it is (`ON CONFLICT DO NOTHING`): a new task's row, written in the
/// transaction that appends its `TaskCreated`, never overwrites what the inbox projection has
/// folded since.
pub async fn insert_new_tasks(
    tx: &mut StoreTransaction<'_>,
    rows: &[&TaskRow],
) -> Result<(), ProjectionError> {
    write_tasks(tx, rows.iter().copied(), INSERT_NEW_TASKS).await
}

/// What [`insert_new_tasks`] makes of an existing row: nothing.
const INSERT_NEW_TASKS: &str = "ON CONFLICT (task_id) DO NOTHING";

/// Inserts `rows` into `projection_tasks`, `on_conflict` deciding what an existing row becomes.
async fn write_tasks<'r>(
    tx: &mut StoreTransaction<'_>,
    rows: impl IntoIterator<Item = &'r TaskRow>,
    on_conflict: &str,
) -> Result<(), ProjectionError> {
    let rows = rows
        .into_iter()
        .map(task_params)
        .collect::<Result<Vec<_>, _>>()?;
    upsert(
        tx,
        &format!("INSERT INTO projection_tasks ({TASK_COLUMNS})"),
        on_conflict,
        rows,
    )
    .await
}

fn task_params(row: &TaskRow) -> Result<Vec<Param>, ProjectionError> {
    Ok(vec![
        Param::Uuid(Some(row.task_id)),
        Param::Text(row.procedure.as_str().to_owned()),
        Param::Text(row.agency.as_str().to_owned()),
        Param::Text(row.office.as_str().to_owned()),
        Param::Uuid(Some(row.life_event_id)),
        Param::Text(status_str(row.status).to_owned()),
        Param::OptText(row.claimed_by.clone()),
        Param::Time(Some(row.due_at)),
        Param::Bool(row.overdue),
        Param::Time(Some(row.created_at)),
        Param::Time(Some(row.updated_at)),
        Param::Json(Some(to_json(&row.application)?)),
        Param::Json(row.outcome.as_ref().map(to_json).transpose()?),
        Param::OptText(row.reason.clone()),
    ])
}

/// The most rows one multi-row upsert carries (SQLite allows 32,766 parameters, PostgreSQL
/// 65,535; the widest row here has 16 columns).
const UPSERT_ROWS: usize = 500;

/// `head VALUES (..), (..) tail` for every chunk of `rows` (each the same number of
/// parameters): one statement per [`UPSERT_ROWS`] rows instead of one per row. The rows of one
/// call must not share a key (`ON CONFLICT DO UPDATE` refuses to touch a row twice).
async fn upsert(
    tx: &mut StoreTransaction<'_>,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Param>>,
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.begin_writes().await?;
    if let TransactionConnection::Postgres(conn) = tx.connection()? {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Param>> = rows.by_ref().take(UNNEST_ROWS).collect();
            upsert_postgres(conn, head, tail, chunk).await?;
        }
        return Ok(());
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Param>> = rows.by_ref().take(UPSERT_ROWS).collect();
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * 64);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut number = 0_usize;
        for (index, row) in chunk.iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for column in 0..row.len() {
                if column > 0 {
                    sql.push_str(", ");
                }
                number += 1;
                sql.push('$');
                sql.push_str(&number.to_string());
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        execute(tx.connection()?, sql, chunk.into_iter().flatten().collect()).await?;
    }
    Ok(())
}

/// The most rows one PostgreSQL upsert carries (its arrays' length).
const UNNEST_ROWS: usize = 5_000;

/// [`upsert`] on PostgreSQL: `head SELECT .. FROM unnest($1::type[], ..) tail`, each column one
/// array parameter. The statement's text depends only on the table, not on the number of rows,
/// so it is parsed and prepared once per connection, and planning it is planning one function
/// scan (a multi-row `VALUES` of 500 rows by 14 columns was 7,000 parameters and expressions to
/// parse, plan and evaluate, a statement text per row count).
async fn upsert_postgres(
    conn: &mut sqlx::PgConnection,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Param>>,
) -> Result<(), ProjectionError> {
    let Some(columns) = columns_of(rows)? else {
        return Ok(());
    };
    let sql = format!("{head} {} {tail}", select_unnest(&columns, 1, "", "TRUE"));
    let query = columns
        .into_iter()
        .fold(sqlx::query(AssertSqlSafe(sql)), Column::bind);
    query.execute(conn).await?;
    Ok(())
}

/// `rows` (each the same number of parameters) as one array per column; `None` for no rows.
fn columns_of(rows: Vec<Vec<Param>>) -> Result<Option<Vec<Column>>, ProjectionError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut columns: Vec<Column> = first
        .iter()
        .map(|param| Column::for_param(param, rows.len()))
        .collect();
    for row in rows {
        for (column, param) in columns.iter_mut().zip(row) {
            column.push(param)?;
        }
    }
    Ok(Some(columns))
}

/// `SELECT c1, .. FROM {from}unnest($first::type[], ..) AS u(c1, ..) WHERE {condition}`: the
/// rows of `columns`, their arrays numbered from `first` (`from`: other `FROM` items, each
/// followed by a comma, or empty).
fn select_unnest(columns: &[Column], first: usize, from: &str, condition: &str) -> String {
    let names: Vec<String> = (1..=columns.len()).map(|n| format!("c{n}")).collect();
    let selected: Vec<String> = columns
        .iter()
        .zip(&names)
        .map(|(column, name)| format!("{name}{}", column.cast()))
        .collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| format!("${}::{}[]", index + first, column.array_type()))
        .collect();
    format!(
        "SELECT {} FROM {from}unnest({}) AS u({}) WHERE {condition}",
        selected.join(", "),
        arrays.join(", "),
        names.join(", ")
    )
}

/// New tasks' inbox rows, one array per column, for a statement that inserts them as
/// [`insert_new_tasks`] does along with other work: the grouped append of a policy's new
/// streams (`StoreTransaction::append_many_with_new_tasks`,
/// `StoreTransaction::append_whole_with_new_tasks`), so that they cost no statement of their
/// own.
pub(crate) struct NewTaskRows {
    columns: Vec<Column>,
}

impl NewTaskRows {
    /// `None` for no rows.
    pub(crate) fn new(rows: &[&TaskRow]) -> Result<Option<Self>, ProjectionError> {
        let rows = rows
            .iter()
            .map(|row| task_params(row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(columns_of(rows)?.map(|columns| Self { columns }))
    }

    /// [`insert_new_tasks`]'s statement, its arrays numbered from `first`, each row joined to
    /// `from` (other `FROM` items, each followed by a comma) and inserted where `condition`
    /// holds.
    pub(crate) fn insert_sql(&self, first: usize, from: &str, condition: &str) -> String {
        format!(
            "INSERT INTO projection_tasks ({TASK_COLUMNS}) {} {INSERT_NEW_TASKS}",
            select_unnest(&self.columns, first, from, condition)
        )
    }

    /// Binds the arrays, in the order [`NewTaskRows::insert_sql`] numbers them.
    pub(crate) fn bind(
        self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Query<'_, Postgres, PgArguments> {
        self.columns.into_iter().fold(query, Column::bind)
    }
}

/// One column of [`upsert_postgres`]'s rows, as the array bound for it.
enum Column {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<String>>),
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Time(Vec<Option<DateTime<Utc>>>),
    Date(Vec<Option<NaiveDate>>),
    /// JSON texts, sent as `text[]` and cast to `json` per row (checked, stored as they are).
    Json(Vec<Option<String>>),
}

impl Column {
    fn for_param(param: &Param, rows: usize) -> Self {
        match param {
            Param::Uuid(_) => Self::Uuid(Vec::with_capacity(rows)),
            Param::Text(_) | Param::OptText(_) => Self::Text(Vec::with_capacity(rows)),
            Param::Bool(_) => Self::Bool(Vec::with_capacity(rows)),
            Param::Int(_) => Self::Int(Vec::with_capacity(rows)),
            Param::Time(_) => Self::Time(Vec::with_capacity(rows)),
            Param::Date(_) => Self::Date(Vec::with_capacity(rows)),
            Param::Json(_) => Self::Json(Vec::with_capacity(rows)),
        }
    }

    fn push(&mut self, param: Param) -> Result<(), ProjectionError> {
        match (self, param) {
            (Self::Uuid(values), Param::Uuid(value)) => values.push(value),
            (Self::Text(values), Param::Text(value)) => values.push(Some(value)),
            (Self::Text(values), Param::OptText(value)) => values.push(value),
            (Self::Bool(values), Param::Bool(value)) => values.push(value),
            (Self::Int(values), Param::Int(value)) => values.push(value),
            (Self::Time(values), Param::Time(value)) => values.push(value),
            (Self::Date(values), Param::Date(value)) => values.push(value),
            (Self::Json(values), Param::Json(value)) => values.push(value),
            (column, param) => {
                return Err(ProjectionError::Malformed {
                    table: "-",
                    key: "-".to_owned(),
                    column: "-",
                    reason: format!(
                        "rows of one upsert disagree on a column's type ({} and {param:?})",
                        column.array_type()
                    ),
                })
            }
        }
        Ok(())
    }

    fn array_type(&self) -> &'static str {
        match self {
            Self::Uuid(_) => "uuid",
            Self::Text(_) | Self::Json(_) => "text",
            Self::Bool(_) => "boolean",
            Self::Int(_) => "bigint",
            Self::Time(_) => "timestamptz",
            Self::Date(_) => "date",
        }
    }

    fn cast(&self) -> &'static str {
        match self {
            Self::Json(_) => "::json",
            _ => "",
        }
    }

    fn bind(
        query: Query<'_, Postgres, PgArguments>,
        column: Self,
    ) -> Query<'_, Postgres, PgArguments> {
        match column {
            Self::Uuid(values) => query.bind(values),
            Self::Text(values) | Self::Json(values) => query.bind(values),
            Self::Bool(values) => query.bind(values),
            Self::Int(values) => query.bind(values),
            Self::Time(values) => query.bind(values),
            Self::Date(values) => query.bind(values),
        }
    }
}

pub async fn load_person(
    tx: &mut StoreTransaction<'_>,
    personal_id: &PersonalId,
) -> Result<Option<PersonRow>, ProjectionError> {
    load_person_on(tx.connection()?, personal_id.clone()).await
}

/// Inserts or replaces the row of `row.personal_id`.
pub async fn save_person(
    tx: &mut StoreTransaction<'_>,
    row: &PersonRow,
) -> Result<(), ProjectionError> {
    save_persons(tx, std::slice::from_ref(row)).await
}

/// Inserts or replaces the rows of `rows` (personal ID numbers all different), a few hundred per
/// statement.
pub async fn save_persons(
    tx: &mut StoreTransaction<'_>,
    rows: &[PersonRow],
) -> Result<(), ProjectionError> {
    let rows = rows
        .iter()
        .map(person_params)
        .collect::<Result<Vec<_>, _>>()?;
    upsert(
        tx,
        &format!("INSERT INTO projection_persons ({PERSON_COLUMNS})"),
        "ON CONFLICT (personal_id) DO UPDATE SET full_name = excluded.full_name, \
         date_of_birth = excluded.date_of_birth, sex = excluded.sex, \
         vital_status = excluded.vital_status, date_of_death = excluded.date_of_death, \
         death_life_event_id = excluded.death_life_event_id, \
         residence_province = excluded.residence_province, \
         residence_commune = excluded.residence_commune, \
         residence_address = excluded.residence_address, insured = excluded.insured, \
         insurance_card_number = excluded.insurance_card_number, \
         insurance_valid_until = excluded.insurance_valid_until, facts = excluded.facts, \
         life_events = excluded.life_events, updated_at = excluded.updated_at",
        rows,
    )
    .await
}

fn person_params(row: &PersonRow) -> Result<Vec<Param>, ProjectionError> {
    let residence = row.residence.as_ref();
    Ok(vec![
        Param::Text(row.personal_id.as_str().to_owned()),
        Param::Text(row.full_name.clone()),
        Param::Date(row.date_of_birth),
        Param::OptText(row.sex.map(|sex| enum_str(&sex)).transpose()?),
        Param::Text(enum_str(&row.vital_status)?),
        Param::Date(row.date_of_death),
        Param::Uuid(row.death_life_event_id),
        Param::OptText(residence.map(|r| r.province.clone())),
        Param::OptText(residence.map(|r| r.commune.clone())),
        Param::OptText(residence.map(|r| r.address.clone())),
        Param::Bool(row.insurance.is_some()),
        Param::OptText(row.insurance.as_ref().map(|i| i.card_number.clone())),
        Param::Date(row.insurance.as_ref().map(|i| i.valid_until)),
        Param::Json(Some(to_json(&row.facts)?)),
        Param::Json(Some(to_json(&row.life_events)?)),
        Param::Time(Some(row.updated_at)),
    ])
}

pub async fn load_life_event_status(
    tx: &mut StoreTransaction<'_>,
    life_event_id: Uuid,
) -> Result<Option<LifeEventStatusRow>, ProjectionError> {
    load_life_event_on(tx.connection()?, life_event_id).await
}

/// The life event whose procedure row names `task_id`, if any.
pub async fn life_event_of_task(
    tx: &mut StoreTransaction<'_>,
    task_id: Uuid,
) -> Result<Option<Uuid>, ProjectionError> {
    let sql =
        "SELECT life_event_id FROM projection_life_event_procedures WHERE task_id = $1".to_owned();
    let found = fetch(
        tx.connection()?,
        sql,
        vec![Param::Uuid(Some(task_id))],
        |row| row.uuid("life_event_id"),
    )
    .await?;
    Ok(found.first().copied())
}

/// Inserts or replaces the life event row and each of its procedure rows.
pub async fn save_life_event_status(
    tx: &mut StoreTransaction<'_>,
    row: &LifeEventStatusRow,
) -> Result<(), ProjectionError> {
    save_life_event_statuses(tx, std::slice::from_ref(row)).await
}

/// Inserts or replaces the rows of `rows` (life event ids all different) and each of their
/// procedure rows: two statements per few hundred rows.
pub async fn save_life_event_statuses(
    tx: &mut StoreTransaction<'_>,
    rows: &[LifeEventStatusRow],
) -> Result<(), ProjectionError> {
    let changes: Vec<(&LifeEventStatusRow, Option<&LifeEventStatusRow>)> =
        rows.iter().map(|row| (row, None)).collect();
    save_life_event_status_changes(tx, &changes).await
}

/// [`save_life_event_statuses`] for rows whose stored version (`before`) is known, when it is:
/// a procedure row equal to the stored one of the same procedure is not written again. A
/// life event's procedure rows change one or two at a time, and writing all of them whenever
/// one changed rewrote about three rows for each that did (W3 at 500 births/s: 81,000 procedure
/// rows written in 15 s for some 26,000 procedures).
pub async fn save_life_event_status_changes(
    tx: &mut StoreTransaction<'_>,
    changes: &[(&LifeEventStatusRow, Option<&LifeEventStatusRow>)],
) -> Result<(), ProjectionError> {
    let mut events = Vec::with_capacity(changes.len());
    let mut procedures = Vec::new();
    for &(row, before) in changes {
        events.push(vec![
            Param::Uuid(Some(row.life_event_id)),
            Param::Text(enum_str(&row.kind)?),
            Param::Text(row.reference.as_str().to_owned()),
            Param::Text(row.office.as_str().to_owned()),
            Param::Date(Some(row.recorded_on)),
            Param::Bool(row.late),
            Param::Bool(row.voided),
            Param::Int(i64::from(row.corrections)),
            Param::Time(Some(row.updated_at)),
        ]);
        for procedure in &row.procedures {
            let stored = before.and_then(|before| before.procedure(procedure.procedure));
            if stored == Some(procedure) {
                continue;
            }
            procedures.push(vec![
                Param::Uuid(Some(row.life_event_id)),
                Param::Text(procedure.procedure.as_str().to_owned()),
                Param::Text(procedure.state.as_str().to_owned()),
                Param::Uuid(procedure.task_id),
                Param::Time(procedure.opened_at),
                Param::Time(procedure.closed_at),
                Param::Time(procedure.due_at),
                Param::Bool(procedure.overdue),
                Param::OptText(procedure.detail.clone()),
            ]);
        }
    }
    upsert(
        tx,
        "INSERT INTO projection_life_events (life_event_id, kind, reference, office, \
         recorded_on, late, voided, corrections, updated_at)",
        "ON CONFLICT (life_event_id) DO UPDATE SET kind = excluded.kind, \
         reference = excluded.reference, office = excluded.office, \
         recorded_on = excluded.recorded_on, late = excluded.late, \
         voided = excluded.voided, corrections = excluded.corrections, \
         updated_at = excluded.updated_at",
        events,
    )
    .await?;
    upsert(
        tx,
        "INSERT INTO projection_life_event_procedures (life_event_id, procedure, \
         state, task_id, opened_at, closed_at, due_at, overdue, detail)",
        "ON CONFLICT (life_event_id, procedure) DO UPDATE SET \
         state = excluded.state, task_id = excluded.task_id, \
         opened_at = excluded.opened_at, closed_at = excluded.closed_at, \
         due_at = excluded.due_at, overdue = excluded.overdue, \
         detail = excluded.detail",
        procedures,
    )
    .await
}

/// Empties every projection table and forgets the checkpoints of `subscribers`, inside `tx`.
/// Run it only while those subscribers are stopped: a running one would keep its old cursor.
pub async fn clear_projections(
    tx: &mut StoreTransaction<'_>,
    subscribers: &[&str],
) -> Result<(), ProjectionError> {
    tx.begin_writes().await?;
    match tx.connection()? {
        // TRUNCATE, not DELETE: a DELETE of every row leaves each one behind as a dead tuple (and
        // its index entries) until a vacuum, so that every rebuild would double the tables on
        // disk where autovacuum is off or behind, and the DELETE itself wrote every row to the
        // WAL. Readers of these tables wait for the clearing transaction's commit (its lock).
        TransactionConnection::Postgres(_) => {
            let sql = format!("TRUNCATE {}", PROJECTION_TABLES.join(", "));
            execute(tx.connection()?, sql, Vec::new()).await?;
        }
        TransactionConnection::Sqlite(_) => {
            for table in PROJECTION_TABLES {
                execute(tx.connection()?, format!("DELETE FROM {table}"), Vec::new()).await?;
            }
        }
    }
    for subscriber in subscribers {
        execute(
            tx.connection()?,
            "DELETE FROM checkpoints WHERE subscriber = $1".to_owned(),
            vec![Param::Text((*subscriber).to_owned())],
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Row codecs.

const TASK_COLUMNS: &str = "task_id, procedure, agency, office, life_event_id, status, \
     claimed_by, due_at, overdue, created_at, updated_at, application, outcome, reason";

const PERSON_COLUMNS: &str = "personal_id, full_name, date_of_birth, sex, vital_status, \
     date_of_death, death_life_event_id, residence_province, residence_commune, \
     residence_address, insured, insurance_card_number, insurance_valid_until, facts, \
     life_events, updated_at";

async fn load_task_on(
    conn: TransactionConnection<'_>,
    task_id: Uuid,
) -> Result<Option<TaskRow>, ProjectionError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM projection_tasks WHERE task_id = $1");
    let rows = fetch(conn, sql, vec![Param::Uuid(Some(task_id))], decode_task).await?;
    Ok(rows.into_iter().next())
}

async fn tasks_of_life_event_on(
    conn: TransactionConnection<'_>,
    life_event_id: Uuid,
) -> Result<Vec<TaskRow>, ProjectionError> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM projection_tasks WHERE life_event_id = $1 \
         ORDER BY created_at, task_id"
    );
    fetch(
        conn,
        sql,
        vec![Param::Uuid(Some(life_event_id))],
        decode_task,
    )
    .await
}

fn decode_task(row: &dyn Columns) -> Result<TaskRow, ProjectionError> {
    Ok(TaskRow {
        task_id: row.uuid("task_id")?,
        procedure: row.parsed("procedure")?,
        agency: row.parsed("agency")?,
        office: row.parsed("office")?,
        life_event_id: row.uuid("life_event_id")?,
        status: row.parsed("status")?,
        claimed_by: row.opt_text("claimed_by")?,
        due_at: required(row, "due_at", row.time("due_at")?)?,
        overdue: row.boolean("overdue")?,
        created_at: required(row, "created_at", row.time("created_at")?)?,
        updated_at: required(row, "updated_at", row.time("updated_at")?)?,
        application: row.json("application")?,
        outcome: row.opt_json("outcome")?,
        reason: row.opt_text("reason")?,
    })
}

async fn load_person_on(
    conn: TransactionConnection<'_>,
    personal_id: PersonalId,
) -> Result<Option<PersonRow>, ProjectionError> {
    let sql = format!("SELECT {PERSON_COLUMNS} FROM projection_persons WHERE personal_id = $1");
    let params = vec![Param::Text(personal_id.as_str().to_owned())];
    let rows = fetch(conn, sql, params, decode_person).await?;
    Ok(rows.into_iter().next())
}

fn decode_person(row: &dyn Columns) -> Result<PersonRow, ProjectionError> {
    let residence = match (
        row.opt_text("residence_province")?,
        row.opt_text("residence_commune")?,
        row.opt_text("residence_address")?,
    ) {
        (Some(province), Some(commune), Some(address)) => Some(Residence {
            province,
            commune,
            address,
        }),
        _ => None,
    };
    let insurance = match (
        row.opt_text("insurance_card_number")?,
        row.date("insurance_valid_until")?,
    ) {
        (Some(card_number), Some(valid_until)) => Some(Insurance {
            card_number,
            valid_until,
        }),
        _ => None,
    };
    Ok(PersonRow {
        personal_id: row.parsed("personal_id")?,
        full_name: row.text("full_name")?,
        date_of_birth: row.date("date_of_birth")?,
        sex: row
            .opt_text("sex")?
            .map(|sex| parse_str(row, "sex", &sex))
            .transpose()?,
        vital_status: row.parsed("vital_status")?,
        date_of_death: row.date("date_of_death")?,
        death_life_event_id: row.opt_uuid("death_life_event_id")?,
        residence,
        insurance,
        facts: row.json("facts")?,
        life_events: row.json("life_events")?,
        updated_at: required(row, "updated_at", row.time("updated_at")?)?,
    })
}

async fn load_life_event_on(
    mut conn: TransactionConnection<'_>,
    life_event_id: Uuid,
) -> Result<Option<LifeEventStatusRow>, ProjectionError> {
    let sql = "SELECT life_event_id, kind, reference, office, recorded_on, late, voided, \
               corrections, updated_at FROM projection_life_events WHERE life_event_id = $1"
        .to_owned();
    let params = vec![Param::Uuid(Some(life_event_id))];
    let rows = fetch(reborrow(&mut conn), sql, params, decode_life_event).await?;
    let Some(mut status) = rows.into_iter().next() else {
        return Ok(None);
    };
    let sql = "SELECT procedure, state, task_id, opened_at, closed_at, due_at, overdue, detail \
               FROM projection_life_event_procedures WHERE life_event_id = $1"
        .to_owned();
    let mut procedures = fetch(
        conn,
        sql,
        vec![Param::Uuid(Some(life_event_id))],
        decode_procedure,
    )
    .await?;
    procedures.sort_by_key(|row| procedure_order(row.procedure));
    status.procedures = procedures;
    Ok(Some(status))
}

/// Procedure rows in the order of `ProcedureId::ALL`.
fn procedure_order(procedure: ProcedureId) -> Option<usize> {
    ProcedureId::ALL
        .iter()
        .position(|candidate| *candidate == procedure)
}

fn decode_life_event(row: &dyn Columns) -> Result<LifeEventStatusRow, ProjectionError> {
    Ok(LifeEventStatusRow {
        life_event_id: row.uuid("life_event_id")?,
        kind: row.parsed("kind")?,
        reference: row.parsed("reference")?,
        office: row.parsed("office")?,
        recorded_on: required(row, "recorded_on", row.date("recorded_on")?)?,
        late: row.boolean("late")?,
        voided: row.boolean("voided")?,
        corrections: u32::try_from(row.int("corrections")?).unwrap_or(u32::MAX),
        updated_at: required(row, "updated_at", row.time("updated_at")?)?,
        procedures: Vec::new(),
    })
}

fn decode_procedure(row: &dyn Columns) -> Result<ProcedureStatusRow, ProjectionError> {
    Ok(ProcedureStatusRow {
        procedure: row.parsed("procedure")?,
        state: row.parsed("state")?,
        task_id: row.opt_uuid("task_id")?,
        opened_at: row.time("opened_at")?,
        closed_at: row.time("closed_at")?,
        due_at: row.time("due_at")?,
        overdue: row.boolean("overdue")?,
        detail: row.opt_text("detail")?,
    })
}

fn reborrow<'a>(conn: &'a mut TransactionConnection<'_>) -> TransactionConnection<'a> {
    match conn {
        TransactionConnection::Postgres(conn) => TransactionConnection::Postgres(conn),
        TransactionConnection::Sqlite(conn) => TransactionConnection::Sqlite(conn),
    }
}

fn status_str(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::New => "new",
        TaskStatus::Open => "open",
        TaskStatus::Claimed => "claimed",
        TaskStatus::Completed => "completed",
        TaskStatus::Rejected => "rejected",
        TaskStatus::Cancelled => "cancelled",
    }
}

/// The serde string form of a unit enum (`"deceased"`, `"birth"`).
fn enum_str<T: Serialize>(value: &T) -> Result<String, ProjectionError> {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => Ok(text),
        _ => Err(ProjectionError::Malformed {
            table: "-",
            key: "-".to_owned(),
            column: "-",
            reason: "value does not serialise to a string".to_owned(),
        }),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, ProjectionError> {
    serde_json::to_string(value).map_err(|error| ProjectionError::Malformed {
        table: "-",
        key: "-".to_owned(),
        column: "-",
        reason: error.to_string(),
    })
}

fn parse_str<T: DeserializeOwned>(
    row: &dyn Columns,
    column: &'static str,
    text: &str,
) -> Result<T, ProjectionError> {
    serde_json::from_value(Value::String(text.to_owned()))
        .map_err(|error| row.malformed(column, error.to_string()))
}

fn required<T>(
    row: &dyn Columns,
    column: &'static str,
    value: Option<T>,
) -> Result<T, ProjectionError> {
    value.ok_or_else(|| row.malformed(column, "is null".to_owned()))
}

// ---------------------------------------------------------------------------------------------
// One statement, two backends: parameters bound in each backend's form, columns read back.

/// A statement parameter; each backend binds it in its own form (SQLite: uuids, times and JSON
/// as text).
#[derive(Debug, Clone)]
enum Param {
    Uuid(Option<Uuid>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
    Int(i64),
    Time(Option<DateTime<Utc>>),
    Date(Option<NaiveDate>),
    /// JSON text (serialised once, straight from the row's field).
    Json(Option<String>),
}

fn bind_postgres<'q>(
    query: Query<'q, Postgres, PgArguments>,
    param: Param,
) -> Query<'q, Postgres, PgArguments> {
    match param {
        Param::Uuid(value) => query.bind(value),
        Param::Text(value) => query.bind(value),
        Param::OptText(value) => query.bind(value),
        Param::Bool(value) => query.bind(value),
        Param::Int(value) => query.bind(value),
        Param::Time(value) => query.bind(value),
        Param::Date(value) => query.bind(value),
        // Only the SQLite statements take JSON as a plain parameter; on PostgreSQL it travels
        // in `upsert_postgres`'s `text[]` arrays, cast to `json` there.
        Param::Json(value) => query.bind(value),
    }
}

fn bind_sqlite<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    param: Param,
) -> Query<'q, Sqlite, SqliteArguments> {
    match param {
        Param::Uuid(value) => query.bind(value.map(|id| id.hyphenated().to_string())),
        Param::Text(value) => query.bind(value),
        Param::OptText(value) => query.bind(value),
        Param::Bool(value) => query.bind(value),
        Param::Int(value) => query.bind(value),
        Param::Time(value) => query.bind(value.map(sqlite_time)),
        Param::Date(value) => query.bind(value.map(|date| date.format("%Y-%m-%d").to_string())),
        Param::Json(value) => query.bind(value),
    }
}

/// A time as SQLite projection tables store it: UTC, six fraction digits, `Z`.
fn sqlite_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn execute(
    conn: TransactionConnection<'_>,
    sql: String,
    params: Vec<Param>,
) -> Result<(), ProjectionError> {
    match conn {
        TransactionConnection::Postgres(conn) => {
            let query = params
                .into_iter()
                .fold(sqlx::query(AssertSqlSafe(sql)), bind_postgres);
            query.execute(&mut *conn).await?;
        }
        TransactionConnection::Sqlite(conn) => {
            let query = params
                .into_iter()
                .fold(sqlx::query(AssertSqlSafe(sql)), bind_sqlite);
            query.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

async fn fetch<T>(
    conn: TransactionConnection<'_>,
    sql: String,
    params: Vec<Param>,
    decode: impl Fn(&dyn Columns) -> Result<T, ProjectionError>,
) -> Result<Vec<T>, ProjectionError> {
    match conn {
        TransactionConnection::Postgres(conn) => {
            let query = params
                .into_iter()
                .fold(sqlx::query(AssertSqlSafe(sql)), bind_postgres);
            let rows = query.fetch_all(&mut *conn).await?;
            rows.iter().map(|row| decode(row)).collect()
        }
        TransactionConnection::Sqlite(conn) => {
            let query = params
                .into_iter()
                .fold(sqlx::query(AssertSqlSafe(sql)), bind_sqlite);
            let rows = query.fetch_all(&mut *conn).await?;
            rows.iter().map(|row| decode(row)).collect()
        }
    }
}

/// A result row of either backend, read column by column in the Rust types of the rows above.
trait Columns {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, ProjectionError>;
    fn opt_uuid(&self, column: &'static str) -> Result<Option<Uuid>, ProjectionError>;
    fn boolean(&self, column: &'static str) -> Result<bool, ProjectionError>;
    fn int(&self, column: &'static str) -> Result<i64, ProjectionError>;
    fn time(&self, column: &'static str) -> Result<Option<DateTime<Utc>>, ProjectionError>;
    fn date(&self, column: &'static str) -> Result<Option<NaiveDate>, ProjectionError>;
    fn opt_json_value(&self, column: &'static str) -> Result<Option<Value>, ProjectionError>;
    /// The row's key, for error messages.
    fn describe(&self) -> String;

    fn malformed(&self, column: &'static str, reason: String) -> ProjectionError {
        ProjectionError::Malformed {
            table: "projection",
            key: self.describe(),
            column,
            reason,
        }
    }

    fn text(&self, column: &'static str) -> Result<String, ProjectionError> {
        self.opt_text(column)?
            .ok_or_else(|| self.malformed(column, "is null".to_owned()))
    }

    fn uuid(&self, column: &'static str) -> Result<Uuid, ProjectionError> {
        self.opt_uuid(column)?
            .ok_or_else(|| self.malformed(column, "is null".to_owned()))
    }
}

/// Helpers over [`Columns`] that need generics (kept off the object-safe trait).
trait ColumnsExt {
    fn parsed<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, ProjectionError>;
    fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, ProjectionError>;
    fn opt_json<T: DeserializeOwned>(
        &self,
        column: &'static str,
    ) -> Result<Option<T>, ProjectionError>;
}

impl ColumnsExt for dyn Columns + '_ {
    fn parsed<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, ProjectionError> {
        let text = self.text(column)?;
        parse_str(self, column, &text)
    }

    fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, ProjectionError> {
        self.opt_json(column)?
            .ok_or_else(|| self.malformed(column, "is null".to_owned()))
    }

    fn opt_json<T: DeserializeOwned>(
        &self,
        column: &'static str,
    ) -> Result<Option<T>, ProjectionError> {
        self.opt_json_value(column)?
            .map(|value| {
                serde_json::from_value(value)
                    .map_err(|error| self.malformed(column, error.to_string()))
            })
            .transpose()
    }
}

impl Columns for PgRow {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn opt_uuid(&self, column: &'static str) -> Result<Option<Uuid>, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn boolean(&self, column: &'static str) -> Result<bool, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &'static str) -> Result<i64, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn time(&self, column: &'static str) -> Result<Option<DateTime<Utc>>, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn date(&self, column: &'static str) -> Result<Option<NaiveDate>, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn opt_json_value(&self, column: &'static str) -> Result<Option<Value>, ProjectionError> {
        let value: Option<sqlx::types::Json<Value>> = self.try_get(column)?;
        Ok(value.map(|json| json.0))
    }

    fn describe(&self) -> String {
        describe_first_column(self.try_get::<Uuid, _>(0).map(|id| id.to_string()), || {
            self.try_get::<String, _>(0)
        })
    }
}

impl Columns for SqliteRow {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn opt_uuid(&self, column: &'static str) -> Result<Option<Uuid>, ProjectionError> {
        self.opt_text(column)?
            .map(|text| {
                Uuid::parse_str(&text).map_err(|error| self.malformed(column, error.to_string()))
            })
            .transpose()
    }

    fn boolean(&self, column: &'static str) -> Result<bool, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &'static str) -> Result<i64, ProjectionError> {
        Ok(self.try_get(column)?)
    }

    fn time(&self, column: &'static str) -> Result<Option<DateTime<Utc>>, ProjectionError> {
        self.opt_text(column)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|error| self.malformed(column, error.to_string()))
            })
            .transpose()
    }

    fn date(&self, column: &'static str) -> Result<Option<NaiveDate>, ProjectionError> {
        self.opt_text(column)?
            .map(|text| {
                NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                    .map_err(|error| self.malformed(column, error.to_string()))
            })
            .transpose()
    }

    fn opt_json_value(&self, column: &'static str) -> Result<Option<Value>, ProjectionError> {
        self.opt_text(column)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|error| self.malformed(column, error.to_string()))
            })
            .transpose()
    }

    fn describe(&self) -> String {
        self.try_get::<String, _>(0)
            .unwrap_or_else(|_| "?".to_owned())
    }
}

fn describe_first_column(
    as_uuid: Result<String, sqlx::Error>,
    as_text: impl FnOnce() -> Result<String, sqlx::Error>,
) -> String {
    as_uuid
        .or_else(|_| as_text())
        .unwrap_or_else(|_| "?".to_owned())
}
