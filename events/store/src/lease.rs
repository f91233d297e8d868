//! [`Lease`]: one process at a time in a named role (a connector's deliveries), held for as long
//! as the holder lives.
//!
//! PostgreSQL: a session advisory lock (`pg_try_advisory_lock` on the name's 64-bit hash) on a
//! connection of the lease's own, outside the pool. The server releases it when that
//! connection ends (the process exits or crashes; a holder that vanished from the network is
//! found by the session's TCP keepalives, set to about 25 s), and another process's next try
//! takes it. [`Lease::confirm`] asks on that connection, so a holder whose connection
//! broke learns it before it acts again.
//!
//! SQLite: an exclusive OS lock on a file beside the database (`<database>.lease-<name>`),
//! released by the OS when the process ends; an in-memory database is one process's alone,
//! so its lease is always granted.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

use crate::error::StoreError;
use crate::store::EventStore;

/// A held lease; dropping it releases it.
#[derive(Debug)]
pub struct Lease {
    name: String,
    holder: Holder,
}

#[derive(Debug)]
enum Holder {
    Postgres(Box<PgConnection>),
    SqliteFile(#[allow(dead_code)] File),
    SqliteMemory,
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the lease is still held: on PostgreSQL, that its connection still answers
    /// (the lock lives as long as that session). An error means the lease may be another
    /// process's now: stop acting on it and try again for a new one.
    pub async fn confirm(&mut self) -> Result<(), StoreError> {
        match &mut self.holder {
            Holder::Postgres(connection) => {
                let held: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                     AND pid = pg_backend_pid() AND granted \
                     AND ((classid::bigint << 32) | objid::bigint) = \
                         (hashtextextended($1, 0) & x'FFFFFFFFFFFFFFFF'::bigint))",
                )
                .bind(&self.name)
                .fetch_one(&mut **connection)
                .await?;
                if held {
                    Ok(())
                } else {
                    Err(StoreError::Lease(format!(
                        "the lease {} is no longer held",
                        self.name
                    )))
                }
            }
            Holder::SqliteFile(_) | Holder::SqliteMemory => Ok(()),
        }
    }

    /// Releases the lease now (dropping it does too, when its connection or file closes).
    pub async fn release(self) {
        if let Holder::Postgres(connection) = self.holder {
            let _ = connection.close().await;
        }
    }
}

/// A process standing by for a lease: tries it again and again on one connection of its own
/// (PostgreSQL), kept between tries, so that a standby worker does not open a database session
/// per try (until 2026-12-07 it did, every poll interval, for every agency). The connection
/// becomes the lease's when a try succeeds; a failed try drops it, and the next opens another.
#[derive(Debug)]
pub struct LeaseCandidate {
    name: String,
    connection: Option<Box<PgConnection>>,
}

impl LeaseCandidate {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lease if no other process (or holder in this one) has it; `None` if one has.
    pub async fn try_take(&mut self, store: &EventStore) -> Result<Option<Lease>, StoreError> {
        let Some(pool) = store.postgres_pool() else {
            return store.try_lease_without_postgres(&self.name);
        };
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let mut connection = pool.connect_options().connect().await?;
                // An idle session whose client vanished (power, network) would keep the lock
                // until the OS's TCP keepalive noticed, about 2 hours by default: the server
                // probes this one after 10 s idle, every 5 s, and ends it after 3 unanswered
                // probes.
                sqlx::query(
                    "SELECT set_config('tcp_keepalives_idle', '10', false), \
                            set_config('tcp_keepalives_interval', '5', false), \
                            set_config('tcp_keepalives_count', '3', false)",
                )
                .execute(&mut connection)
                .await?;
                Box::new(connection)
            }
        };
        let granted: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&self.name)
                .fetch_one(&mut *connection)
                .await?;
        if !granted {
            self.connection = Some(connection);
            return Ok(None);
        }
        Ok(Some(Lease {
            name: self.name.clone(),
            holder: Holder::Postgres(connection),
        }))
    }

    /// Closes the standby connection, if any (dropping the candidate does too).
    pub async fn close(mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close().await;
        }
    }
}

impl EventStore {
    /// A [`LeaseCandidate`] for the lease `name`; nothing is opened until its first try.
    pub fn lease_candidate(&self, name: &str) -> LeaseCandidate {
        LeaseCandidate {
            name: name.to_owned(),
            connection: None,
        }
    }

    /// Takes the lease `name` if no other process (or holder in this one) has it; `None` if one
    /// has. See [`Lease`]; to try again and again, a [`LeaseCandidate`].
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let mut candidate = self.lease_candidate(name);
        let taken = candidate.try_take(self).await;
        candidate.close().await;
        taken
    }

    fn try_lease_without_postgres(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let Some(pool) = self.sqlite_pool() else {
            return Ok(None);
        };
        if crate::store::sqlite_in_memory(&pool.connect_options()) {
            return Ok(Some(Lease {
                name: name.to_owned(),
                holder: Holder::SqliteMemory,
            }));
        }
        let path = lease_file(pool.connect_options().get_filename(), name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| StoreError::Lease(format!("{}: {error}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lease {
                name: name.to_owned(),
                holder: Holder::SqliteFile(file),
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => {
                Err(StoreError::Lease(format!("{}: {error}", path.display())))
            }
        }
    }
}

/// `<database>.lease-<name>`, the name's characters other than letters, digits, `-` and `_`
/// replaced by `_`.
fn lease_file(database: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut file = database.as_os_str().to_owned();
    file.push(format!(".lease-{safe}"));
    PathBuf::from(file)
}
