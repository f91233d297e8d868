//! Lifeline's policies: pure rules that turn one recorded event and the facts looked up for it
//! into the events of every linked procedure, and the runtimes that feed them.
//!
//! # Layout
//! - [`handler`]: [`PolicyHandler`], the seam between rules and runtimes, and [`PolicyError`].

pub mod handler;

pub use handler::{PolicyError, PolicyHandler};
