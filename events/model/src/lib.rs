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
//! - [`error`]: `DomainError`, the refusals of commands.
//! - [`life_event`]: the life event aggregate (`BirthRecorded`, `DeathRecorded`, corrections,
//!   voids) and the citizen's `Reference`.
//! - [`task`]: the task aggregate (created, claimed, completed, rejected, cancelled, amended,
//!   overdue), outcomes per procedure, prefilled applications.
//! - [`system_events`]: `PersonalIdAssigned`, `EligibilityDecided`, `PolicyFailed`.
//! - [`integrity`]: event hashes and chains, the Merkle tree, signed seals, inclusion proofs,
//!   office signatures and the keyring (pure crypto, no I/O).
//! - [`codec`]: event type and schema version of every event, encode, decode with upcasters.

pub mod codec;
pub mod declaration;
pub mod envelope;
pub mod error;
pub mod integrity;
pub mod life_event;
pub mod procedure;
pub mod system_events;
pub mod task;
pub mod validation;
pub mod values;
