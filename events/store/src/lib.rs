//! The Lifeline event store on sqlx: PostgreSQL (production) and SQLite (embedded default),
//! migrations, the gap-free global reader, subscriptions, and the cqrs-es repository.
//!
//! The log is append-only: an append names an expected stream version and answers a typed
//! conflict when the stream is elsewhere; re-sending stored event ids is a no-op that answers
//! the original positions. Readers of the whole log go in commit order by
//! `(transaction_id, global_position)` and never see an event appear behind their cursor.
//!
//! # Layout
//! - [`store`]: [`EventStore`] (connect, migrate, append, reads, checkpoints) and
//!   [`StoreTransaction`] (appends, reads and checkpoints committed together).
//! - `group_commit`: concurrent appends gathered into one transaction (opt-in).
//! - `append`: the append algorithm, once for both backends, run inside a caller's transaction
//!   (the careful path).
//! - `batch`: the PostgreSQL fast path: a group of appends (or a lone one) in one statement.
//! - `postgres`, `sqlite`: each backend's SQL, one function per primitive.
//! - [`subscription`]: [`Subscriber`] and [`run_subscription`], catch-up that turns live;
//!   [`run_subscription_group`], several subscribers sharing each read and transaction.
//! - [`cqrs`]: [`LifelineRepository`], the cqrs-es `PersistedEventRepository`.
//! - [`projections`]: the projection tables (agency inbox, person registry, life-event status):
//!   their rows, the service reads, the subscribers' loads and saves; all projection SQL.
//! - [`stats`]: read-only figures for `/metrics`: readers' lag behind the log, tasks by state.
//! - [`integrity`]: the sealer, `verify` and inclusion proofs over the stored hash chain and
//!   seals (the crypto itself is `lifeline_model::integrity`).
//! - [`error`]: [`StoreError`] (faults) apart from [`AppendError`] (answers to an append).
//! - `migrations/postgres`, `migrations/sqlite`: the schema, embedded at compile time.

mod append;
mod batch;
pub mod cqrs;
pub mod error;
mod group_commit;
pub mod integrity;
mod lease;
mod postgres;
pub mod projections;
mod sqlite;
pub mod stats;
pub mod store;
pub mod subscription;

pub use append::AppendOutcome;
pub use cqrs::LifelineRepository;
pub use error::{AppendError, StoreError, SubscriberError, SubscriptionError};
pub use integrity::{
    check_anchor, inclusion_proof, seal_all, seal_new_events, verify, verify_anchored, BadPosition,
    ProofLookup, VerifyReport,
};
pub use lease::{Lease, LeaseCandidate};
pub use store::{
    BackendKind, CheckpointMove, EventStore, KnownHashAppends, StoreTransaction,
    TransactionConnection,
};
pub use subscription::{
    run_subscription, run_subscription_group, run_subscription_with, Subscriber,
    SubscriptionOptions, WakeUps,
};
