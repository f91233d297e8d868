//! The language of Lifeline: life events, procedures, tasks, the envelope they are stored in,
//! and the validated values they are made of.
//!
//! Pure: no async runtime, no SQL, no NATS, no HTTP. Deciding on a command reads state and
//! returns events or a refusal; applying an event changes state.
//!
//! # Layout
//! - [`envelope`]: stream ids, positions, expected versions, metadata, new and recorded events.

pub mod envelope;
