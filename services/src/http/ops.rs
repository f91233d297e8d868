//! Operations routes, without a token: `/healthz` (the process answers), `/readyz` (the store
//! and every required dependency answer; NATS is reported, not required), `/metrics`
//! (Prometheus text).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use lifeline_model::envelope::LogCursor;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;

/// How long one readiness check may take.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// `ok` or `ready`.
    pub status: String,
    /// Each dependency checked -> `ok` (an informational one may read `down ...`).
    pub checks: BTreeMap<String, String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "up", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".to_owned(),
        checks: BTreeMap::new(),
    })
}

/// The store (and any other required dependency) answer. NATS, when configured, is reported
/// in `checks` but never fails readiness: writes need only the store.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = HealthBody),
        (status = 503, description = "a dependency does not answer; `fields` names it", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthBody>, ApiError> {
    let mut checks = BTreeMap::new();
    let mut failed = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "a dependency does not answer",
    );
    let mut any_failed = false;
    let store = state.store.clone();
    match tokio::time::timeout(READINESS_TIMEOUT, store.read_all(LogCursor::START, 1)).await {
        Ok(Ok(_)) => {
            checks.insert("store".to_owned(), "ok".to_owned());
        }
        Ok(Err(error)) => {
            any_failed = true;
            failed = failed
                .with_field("store", "unreachable", "the store does not answer")
                .with_detail(error.to_string());
        }
        Err(_) => {
            any_failed = true;
            failed = failed.with_field("store", "timeout", "the store does not answer in time");
        }
    }
    for (name, probe) in state.readiness.iter() {
        match tokio::time::timeout(READINESS_TIMEOUT, probe()).await {
            Ok(Ok(())) => {
                checks.insert(name.clone(), "ok".to_owned());
            }
            Ok(Err(reason)) => {
                any_failed = true;
                failed = failed
                    .with_field(
                        name.clone(),
                        "unreachable",
                        format!("{name} does not answer"),
                    )
                    .with_detail(reason);
            }
            Err(_) => {
                any_failed = true;
                failed = failed.with_field(
                    name.clone(),
                    "timeout",
                    format!("{name} does not answer in time"),
                );
            }
        }
    }
    if any_failed {
        return Err(failed);
    }
    for (name, probe) in state.informational.iter() {
        let state = match tokio::time::timeout(READINESS_TIMEOUT, probe()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(reason)) => {
                tracing::debug!(dependency = %name, reason, "an informational dependency is down");
                "down (not required: work waits for it)".to_owned()
            }
            Err(_) => "down: no answer in time (not required: work waits for it)".to_owned(),
        };
        checks.insert(name.clone(), state);
    }
    Ok(Json(HealthBody {
        status: "ready".to_owned(),
        checks,
    }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
