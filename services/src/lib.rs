//! The `lifeline` binary's library: configuration, telemetry, the registrar's commands and the
//! demo; `main.rs` only parses the command line and calls in here.
//!
//! # Layout
//! - [`config`]: defaults, then `lifeline.toml`, then `LIFELINE_*` environment variables.
//! - [`telemetry`]: tracing set-up.
//! - [`registry`]: the registrar's commands on the life-event aggregate (cqrs-es).
//! - [`demo`]: `lifeline demo` on the embedded store.
//! - [`auth`]: bearer tokens (`TokenVerifier`, `issue_token`) and the one authorisation table.
//! - [`tasks`]: the agency officers' commands on the task aggregate (cqrs-es).
//! - [`connector`]: agencies as external systems: configuration, signatures, and the outbound
//!   delivery worker (the inbound callback is `http::connectors`).
//! - [`keys`]: the node's and offices' Ed25519 keys on disk and the keyring of public keys.
//! - [`serve`]: `lifeline serve`: the roles of one process assembled from the configuration.
//! - [`runtime_metrics`]: the sampler of the runtime's figures (relay and policy lag, failures,
//!   tasks by state) that `/metrics` renders.
//! - [`replay`]: the person registry and life-event status folded in memory as of a moment.
//! - [`http`]: the axum API (`app`, `Application`), its error format, metrics and OpenAPI.

pub mod auth;
pub mod config;
pub mod connector;
pub mod demo;
pub mod http;
pub mod keys;
pub mod registry;
pub mod replay;
pub mod runtime_metrics;
pub mod serve;
pub mod tasks;
pub mod telemetry;
