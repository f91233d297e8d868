//! Operator routes for connector deliveries given up on (`ConnectorDeliveryFailed`): list them,
//! and request them sent again (`crate::connector::failures`). Task ids, event ids, agencies,
//! HTTP statuses and counts: no personal data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use lifeline_model::procedure::AgencyId;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};
use crate::connector::events::DeliveryKind;
use crate::connector::failures::{
    list_failed_deliveries, request_redelivery, FailedDelivery, FailuresError, RedeliveryFilter,
};

/// A delivery given up on and not requested again since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedDeliveryBody {
    pub task_id: Uuid,
    pub agency: String,
    /// The task event whose delivery failed.
    pub source_event_id: Uuid,
    /// `created`, `amended` or `cancelled`.
    pub kind: String,
    pub attempts: u32,
    /// The last HTTP status, if the agency system answered at all.
    pub last_status: Option<u16>,
    /// `refused` (4xx), `server_error`, `timeout` or `connection`.
    pub reason: String,
    /// The agency system refused the application itself: sending it again helps only once
    /// something changed on its side.
    pub permanent: bool,
    pub failed_at: DateTime<Utc>,
    /// The `ConnectorDeliveryFailed` event.
    pub failure_event_id: Uuid,
}

impl From<FailedDelivery> for FailedDeliveryBody {
    fn from(failed: FailedDelivery) -> Self {
        Self {
            task_id: failed.task_id,
            agency: failed.agency,
            source_event_id: failed.source_event_id,
            kind: match failed.kind {
                DeliveryKind::Created => "created",
                DeliveryKind::Amended => "amended",
                DeliveryKind::Cancelled => "cancelled",
            }
            .to_owned(),
            attempts: failed.attempts,
            last_status: failed.last_status,
            reason: failed.reason,
            permanent: failed.permanent,
            failed_at: failed.failed_at,
            failure_event_id: failed.failure_event_id,
        }
    }
}

/// `GET /v1/operations/deliveries/failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedDeliveries {
    /// Oldest first.
    pub failed: Vec<FailedDeliveryBody>,
}

/// `POST /v1/operations/deliveries/retry`: which failed deliveries to send again (absent: all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliveryBody {
    /// An agency id, e.g. `police`.
    pub agency: Option<String>,
    pub task_id: Option<Uuid>,
}

/// A failed delivery not requested again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedDelivery {
    pub delivery: FailedDeliveryBody,
    pub reason: String,
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RedeliveryAnswer {
    /// Requested: the agency's delivery worker sends each again; no longer listed as failed.
    pub requested: Vec<FailedDeliveryBody>,
    /// Settled without sending (a creation whose task is no longer open, a change a later one
    /// superseded); no longer listed.
    pub settled: Vec<SkippedDelivery>,
    /// Left as they are (no connector configured for their agency); still listed.
    pub skipped: Vec<SkippedDelivery>,
}

/// 503 when the store is away or busy; 500 for a task or request that cannot be read or
/// written (a fault to look into, not to retry).
fn failure(error: FailuresError) -> ApiError {
    match error {
        FailuresError::Store(_) | FailuresError::Busy => ApiError::unavailable(error.to_string()),
        FailuresError::Task { .. } | FailuresError::Append(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the failed deliveries cannot be handled",
        )
        .with_detail(error.to_string()),
    }
}

fn skipped(list: Vec<(FailedDelivery, String)>) -> Vec<SkippedDelivery> {
    list.into_iter()
        .map(|(failed, reason)| SkippedDelivery {
            delivery: failed.into(),
            reason,
        })
        .collect()
}

/// Connector deliveries given up on, oldest first.
#[utoipa::path(
    get, path = "/v1/operations/deliveries/failed", tag = "operations",
    responses(
        (status = 200, description = "the deliveries given up on and not requested again", body = FailedDeliveries),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an operator or auditor", body = ErrorBody),
        (status = 500, description = "the failures cannot be read", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn failed(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<FailedDeliveries>, ApiError> {
    authorize(&principal, Action::ReadDeliveryFailures, Target::Nothing)?;
    let failed = list_failed_deliveries(&state.store)
        .await
        .map_err(failure)?;
    Ok(Json(FailedDeliveries {
        failed: failed.into_iter().map(FailedDeliveryBody::from).collect(),
    }))
}

/// Request failed deliveries sent again (all, or those of one agency and/or one task). The
/// agency's delivery worker sends each when it reaches the request; the request is recorded
/// once however many operators ask at the same time. A failure no longer worth sending (its
/// task handled in the inbox, a later change superseding it) is settled instead.
#[utoipa::path(
    post, path = "/v1/operations/deliveries/retry", tag = "operations",
    request_body = RedeliveryBody,
    responses(
        (status = 200, description = "what was requested, settled and left", body = RedeliveryAnswer),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an operator", body = ErrorBody),
        (status = 422, description = "an unknown field, an unknown agency or one without a connector", body = ErrorBody),
        (status = 500, description = "a failed delivery's task cannot be read", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<RedeliveryBody>,
) -> Result<Json<RedeliveryAnswer>, ApiError> {
    authorize(&principal, Action::RetryDeliveries, Target::Nothing)?;
    let configured: Vec<AgencyId> = state.connectors.agencies.keys().copied().collect();
    let agency = match body.agency.as_deref() {
        None => None,
        Some(agency) => {
            let invalid = |code: &str, message: String| {
                ApiError::unprocessable("validation_failed", "some fields are not valid")
                    .with_field("agency", code, message)
            };
            let parsed = agency
                .parse::<AgencyId>()
                .map_err(|_| invalid("unknown_agency", format!("no agency {agency:?}")))?;
            if !configured.contains(&parsed) {
                return Err(invalid(
                    "no_connector",
                    format!(
                        "no connector is configured for {parsed}: its tasks are worked in the inbox"
                    ),
                ));
            }
            Some(parsed)
        }
    };
    let filter = RedeliveryFilter {
        agency,
        task_id: body.task_id,
        configured,
    };
    tracing::info!(subject = %principal.subject, agency = ?filter.agency, task_id = ?filter.task_id,
        "operator requests failed deliveries sent again");
    let report = request_redelivery(&state.store, &state.tasks, &filter, &principal.subject)
        .await
        .map_err(failure)?;
    Ok(Json(RedeliveryAnswer {
        requested: report
            .requested
            .into_iter()
            .map(FailedDeliveryBody::from)
            .collect(),
        settled: skipped(report.settled),
        skipped: skipped(report.skipped),
    }))
}
