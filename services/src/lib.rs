//! The `lifeline` binary's library: configuration, telemetry, the registrar's commands and the
//! demo; `main.rs` only parses the command line and calls in here.
//!
//! # Layout
//! - [`config`]: defaults, then `lifeline.toml`, then `LIFELINE_*` environment variables.
//! - [`telemetry`]: tracing set-up.
//! - [`registry`]: the registrar's commands on the life-event aggregate (cqrs-es).
//! - [`demo`]: `lifeline demo` on the embedded store.

pub mod config;
pub mod demo;
pub mod registry;
pub mod telemetry;
