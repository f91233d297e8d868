//! Lifeline's policies: pure rules that turn one recorded event and the facts looked up for it
//! into the events of every linked procedure, and the runtimes that feed them.
//!
//! # Layout
//! - [`handler`]: [`PolicyHandler`], the seam between rules and runtimes, and [`PolicyError`].
//! - [`runtime`]: what feeds the handler: the relay (store -> JetStream), the JetStream policy
//!   consumers, the embedded store subscriptions, failed-run tools, and the process roles.

pub mod handler;
pub mod runtime;

pub use handler::{PolicyError, PolicyHandler};
