//! Operator routes for policy runs that gave up (`PolicyFailed`): list them, and retry them with
//! the process's policy engine (`lifeline_policies::runtime::failures`). Policy names, event ids,
//! error texts and counts: no personal data.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use lifeline_model::validation::{FieldError, ValidationErrors};
use lifeline_policies::runtime::failures::{
    list_failed, retry_failed, FailedPolicyRun, RetryFilter,
};
use lifeline_policies::runtime::RuntimeError;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};

/// A policy run that gave up and has not been retried successfully since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedRun {
    pub policy: String,
    /// The event the policy gave up on.
    pub event_id: Uuid,
    pub error: String,
    pub deliveries: u32,
    pub failed_at: DateTime<Utc>,
    /// The `PolicyFailed` event.
    pub failure_event_id: Uuid,
}

impl From<FailedPolicyRun> for FailedRun {
    fn from(run: FailedPolicyRun) -> Self {
        Self {
            policy: run.policy,
            event_id: run.event_id,
            error: run.error,
            deliveries: run.deliveries,
            failed_at: run.failed_at,
            failure_event_id: run.failure_event_id,
        }
    }
}

/// `GET /v1/operations/policies/failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedRuns {
    /// Oldest first.
    pub failed: Vec<FailedRun>,
}

/// `POST /v1/operations/policies/retry`: which runs to retry (absent: all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    pub policy: Option<String>,
    pub event_id: Option<Uuid>,
}

/// A run retried without success, with this attempt's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StillFailing {
    pub run: FailedRun,
    pub error: String,
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetryAnswer {
    /// Re-run successfully: no longer listed.
    pub succeeded: Vec<FailedRun>,
    /// Still failing: still listed.
    pub failed: Vec<StillFailing>,
}

/// Policy runs that gave up, oldest first.
#[utoipa::path(
    get, path = "/v1/operations/policies/failed", tag = "operations",
    responses(
        (status = 200, description = "the runs that gave up and were not retried successfully", body = FailedRuns),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an operator or auditor", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn failed(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<FailedRuns>, ApiError> {
    authorize(&principal, Action::ReadPolicyFailures, Target::Nothing)?;
    let runs = list_failed(&state.store)
        .await
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    Ok(Json(FailedRuns {
        failed: runs.into_iter().map(FailedRun::from).collect(),
    }))
}

/// Re-run the policy runs that gave up (all, or those of one policy and/or one event).
#[utoipa::path(
    post, path = "/v1/operations/policies/retry", tag = "operations",
    request_body = RetryBody,
    responses(
        (status = 200, description = "what succeeded and what still fails", body = RetryAnswer),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an operator", body = ErrorBody),
        (status = 422, description = "an unknown field, or `policy` names no policy (`unknown_policy`)", body = ErrorBody),
        (status = 503, description = "store unavailable, or no policy engine in this process", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<RetryBody>,
) -> Result<Json<RetryAnswer>, ApiError> {
    authorize(&principal, Action::RetryPolicies, Target::Nothing)?;
    let Some(engine) = state.policies.as_ref().map(Arc::clone) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policies_unavailable",
            "this process has no policy engine; retry on one that runs `lifeline serve`",
        ));
    };
    let filter = RetryFilter {
        policy: body.policy,
        event_id: body.event_id,
    };
    tracing::info!(subject = %principal.subject, policy = ?filter.policy, event_id = ?filter.event_id, "operator retries failed policy runs");
    let report = retry_failed(&state.store, engine.as_ref(), &filter)
        .await
        .map_err(|error| match error {
            // A policy name the engine does not know is a mistake, not "nothing to retry".
            RuntimeError::UnknownPolicy { known, .. } => {
                ApiError::validation(&ValidationErrors(vec![FieldError::new(
                    "policy",
                    "unknown_policy",
                    format!("must be one of {}", known.join(", ")),
                )]))
            }
            other => ApiError::unavailable(other.to_string()),
        })?;
    Ok(Json(RetryAnswer {
        succeeded: report.succeeded.into_iter().map(FailedRun::from).collect(),
        failed: report
            .failed
            .into_iter()
            .map(|(run, error)| StillFailing {
                run: run.into(),
                error,
            })
            .collect(),
    }))
}
