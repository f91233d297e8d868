//! Connectors to agencies that run their own system: the configuration, the signature scheme
//! shared by outbound deliveries and inbound callbacks, and the outbound delivery worker.
//!
//! An agency configured here receives each of its tasks (created, amended, cancelled) as a
//! signed JSON POST, with only the procedure's application fields; it answers synchronously
//! (2xx, optionally with a result) or later through `POST /v1/connectors/{agency}/callback`.
//! Each delivery's outcome is an event appended through the store: `ConnectorDelivered` in
//! the stream `delivery-<task_id>`, `ConnectorDeliveryFailed` in `connectorfailures-log`, where
//! operators list failures and request them sent again ([`failures`]).
//!
//! # Layout
//! - [`config`]: [`ConnectorsConfig`] (agency -> url, secret, timeout, attempts) and secrets.
//! - [`signing`]: `X-Lifeline-Timestamp` / `X-Lifeline-Signature` (HMAC-SHA256).
//! - [`delivery`]: [`DeliveryWorker`], the log reader that delivers and records outcomes.
//! - [`events`]: the delivery outcome events and the application message sent.
//! - [`failures`]: listing failed deliveries and requesting them sent again.

pub mod config;
pub mod delivery;
pub mod events;
pub mod failures;
pub mod signing;

pub use config::{AgencyConnector, ConnectorConfigError, ConnectorSecret, ConnectorsConfig};
pub use delivery::{checkpoint_name, lease_name, DeliveryError, DeliveryWorker};
pub use events::{
    ConnectorDelivered, ConnectorDeliveryFailed, ConnectorRedeliveryRequested, DeliveryMessage,
};
pub use failures::{
    list_failed_deliveries, request_redelivery, FailedDelivery, FailuresError, RedeliveryFilter,
    RedeliveryReport,
};
