//! The store suite, run against PostgreSQL and SQLite: appends, reads, subscriptions and the
//! cqrs-es repository.

mod append;
mod cqrs;
mod subscription;
