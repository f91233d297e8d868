//! The language of Lifeline: life events, procedures, tasks, the envelope they are stored in,
//! and the validated values they are made of.
//!
//! Pure: no async runtime, no SQL, no NATS, no HTTP. Deciding on a command reads state and
//! returns events or a refusal; applying an event changes state.
//!
//! # Layout
//! - [`envelope`]: stream ids, positions, expected versions, metadata, new and recorded events.
//! - [`validation`]: `FieldError` (named by JSON path) and `ValidationErrors`.
//! - [`values`]: personal ID numbers, names, sex, dates, office codes, phones, emails.
//! - [`procedure`]: the seven procedures, the five agencies, what each agency receives.
//! - [`declaration`]: birth and death declarations, as sent and as validated.

pub mod declaration;
pub mod envelope;
pub mod procedure;
pub mod validation;
pub mod values;
