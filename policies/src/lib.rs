//! Lifeline's policies: pure rules that turn one recorded event and the facts looked up for it
//! into the events of every linked procedure, and the runtimes that feed them.
//!
//! # Layout
//! - [`handler`]: [`PolicyHandler`], the seam between rules and runtimes, and [`PolicyError`].
//! - [`reference`]: configuration the rules read: date-effective parameters, routing, the
//!   holiday calendar and working days, reference registers (defaults in `policies/data/`).
//! - [`identity`]: [`identity::IdentityAllocator`] and Lifeline's own store-backed allocator of
//!   personal ID numbers.
//! - [`facts`]: what a rule decides on (source, life event, tasks, person), built from events.
//! - [`rules`]: the pure rules, one module per policy, and the [`rules::Command`]s they answer.
//! - [`engine`]: [`engine::PolicyEngine`], the [`PolicyHandler`] running the rules; deterministic ids.
//! - [`runtime`]: what feeds the handler: the relay (store -> JetStream), the JetStream policy
//!   consumers, the embedded store subscriptions, failed-run tools, and the process roles.
//! - [`projections`]: the projection subscribers (agency inbox, person registry, life-event
//!   status) folding events into the store's projection tables; rebuild from the log.
//! - [`watcher`]: the overdue watcher, recording `TaskOverdue` once per late task.

pub mod engine;
pub mod facts;
pub mod handler;
pub mod identity;
pub mod projections;
pub mod reference;
pub mod rules;
pub mod runtime;
pub mod watcher;

pub use engine::PolicyEngine;
pub use handler::{PolicyError, PolicyHandler};
