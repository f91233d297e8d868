//! Read-only figures for the operators' `/metrics`: how far a reader of the log (the relay, a
//! policy or projection subscriber) is behind the log's head, and the agency tasks counted by
//! state. Each is one or two short statements on an index, outside any transaction (no writer
//! lock on SQLite), cheap enough to run every few seconds.
//!
//! - Lag after a cursor: the committed events after it in commit order
//!   (the log's key, `events_pkey`), and when the first of them was recorded.
//! - Tasks: `projection_tasks` grouped by agency, procedure and status, with the open or claimed
//!   ones past their due time (the covering index `projection_tasks_counts`).

use chrono::{DateTime, SecondsFormat, Utc};
use lifeline_model::envelope::LogCursor;
use sqlx::{PgPool, Row, SqlitePool};

use crate::error::StoreError;
use crate::store::EventStore;

/// How far a reader is behind the head of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogLag {
    /// Committed events after the reader's cursor.
    pub events: u64,
    /// When the first of them (in commit order) was recorded; `None` when caught up.
    pub oldest_recorded_at: Option<DateTime<Utc>>,
}

impl LogLag {
    /// Seconds from the first unread event's recording to `now`, to the millisecond; 0 when
    /// caught up (or when the clocks disagree and that event seems to lie in the future).
    pub fn seconds_behind(&self, now: DateTime<Utc>) -> f64 {
        self.oldest_recorded_at.map_or(0.0, |oldest| {
            let behind = now.signed_duration_since(oldest);
            let micros = behind.num_microseconds().unwrap_or(i64::MAX).max(0);
            (micros as f64 / 1000.0).round() / 1000.0
        })
    }
}

/// The tasks of one (agency, procedure, status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCount {
    pub agency: String,
    pub procedure: String,
    /// `open`, `claimed`, `completed`, `rejected` or `cancelled`.
    pub state: String,
    pub tasks: u64,
    /// Of these, the open or claimed ones whose due time is before the `now` asked about.
    pub overdue: u64,
}

enum Pool<'a> {
    Postgres(&'a PgPool),
    Sqlite(&'a SqlitePool),
}

fn pool(store: &EventStore) -> Pool<'_> {
    match (store.postgres_pool(), store.sqlite_pool()) {
        (Some(pool), _) => Pool::Postgres(pool),
        (None, Some(pool)) => Pool::Sqlite(pool),
        (None, None) => unreachable!("an event store runs on PostgreSQL or on SQLite"),
    }
}

const LAG_SQL: &str = "SELECT \
     (SELECT count(*) FROM events \
      WHERE (transaction_id, global_position) > ($1, $2)) AS events, \
     (SELECT recorded_at FROM events \
      WHERE (transaction_id, global_position) > ($1, $2) \
      ORDER BY transaction_id, global_position LIMIT 1) AS oldest";

/// The committed events after `after`, in commit order (one statement: one snapshot).
///
/// On PostgreSQL this counts every committed event, also those the gap-free reader does not
/// hand out yet because an older transaction is still running: they are behind all the same.
pub async fn lag_after(store: &EventStore, after: LogCursor) -> Result<LogLag, StoreError> {
    let (events, oldest_recorded_at) = match pool(store) {
        Pool::Postgres(pool) => {
            let row = sqlx::query(LAG_SQL)
                .bind(after.transaction_id)
                .bind(after.global_position)
                .fetch_one(pool)
                .await?;
            let events: i64 = row.try_get("events")?;
            let oldest: Option<DateTime<Utc>> = row.try_get("oldest")?;
            (events, oldest)
        }
        Pool::Sqlite(pool) => {
            let row = sqlx::query(LAG_SQL)
                .bind(after.transaction_id)
                .bind(after.global_position)
                .fetch_one(pool)
                .await?;
            let events: i64 = row.try_get("events")?;
            let oldest: Option<String> = row.try_get("oldest")?;
            let oldest = oldest
                .map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|time| time.with_timezone(&Utc))
                        .map_err(|error| StoreError::Corrupt {
                            global_position: after.global_position,
                            reason: format!("recorded_at {text:?} after the cursor: {error}"),
                        })
                })
                .transpose()?;
            (events, oldest)
        }
    };
    Ok(LogLag {
        events: u64::try_from(events).unwrap_or(0),
        oldest_recorded_at,
    })
}

/// How far `subscriber` (a checkpoint name: `relay`, `policy:<name>`, a projection) is behind:
/// the whole log if it never saved a checkpoint.
pub async fn subscriber_lag(store: &EventStore, subscriber: &str) -> Result<LogLag, StoreError> {
    let cursor = store.load_checkpoint(subscriber).await?;
    lag_after(store, cursor).await
}

const TASK_COUNTS_SQL: &str = "SELECT agency, procedure, status, count(*) AS tasks, \
     sum(CASE WHEN status IN ('open', 'claimed') AND due_at < $1 THEN 1 ELSE 0 END) AS overdue \
     FROM projection_tasks GROUP BY agency, procedure, status \
     ORDER BY agency, procedure, status";

/// The inbox's tasks counted by (agency, procedure, status), with how many of each are open or
/// claimed and due before `now`. Only combinations that have tasks are listed.
pub async fn task_counts(
    store: &EventStore,
    now: DateTime<Utc>,
) -> Result<Vec<TaskCount>, StoreError> {
    let rows: Vec<(String, String, String, i64, i64)> = match pool(store) {
        Pool::Postgres(pool) => sqlx::query(TASK_COUNTS_SQL)
            .bind(now)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("agency")?,
                    row.try_get("procedure")?,
                    row.try_get("status")?,
                    row.try_get("tasks")?,
                    row.try_get("overdue")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?,
        // The projection tables store times as fixed-width UTC text (see `projections`): text
        // order is time order.
        Pool::Sqlite(pool) => sqlx::query(TASK_COUNTS_SQL)
            .bind(now.to_rfc3339_opts(SecondsFormat::Micros, true))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("agency")?,
                    row.try_get("procedure")?,
                    row.try_get("status")?,
                    row.try_get("tasks")?,
                    row.try_get("overdue")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?,
    };
    Ok(rows
        .into_iter()
        .map(|(agency, procedure, state, tasks, overdue)| TaskCount {
            agency,
            procedure,
            state,
            tasks: u64::try_from(tasks).unwrap_or(0),
            overdue: u64::try_from(overdue).unwrap_or(0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn seconds_behind_is_zero_when_caught_up_or_in_the_future() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(LogLag::default().seconds_behind(now), 0.0);
        let behind = LogLag {
            events: 3,
            oldest_recorded_at: Some(now - chrono::Duration::microseconds(42_499_700)),
        };
        assert_eq!(behind.seconds_behind(now), 42.5);
        let ahead = LogLag {
            events: 1,
            oldest_recorded_at: Some(now + chrono::Duration::seconds(5)),
        };
        assert_eq!(ahead.seconds_behind(now), 0.0);
    }
}
