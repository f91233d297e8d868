//! The inbound side of connectors: `POST /v1/connectors/{agency}/callback`, where an agency's
//! own system reports a task completed (with its outcome) or rejected (with a reason). The
//! request is authenticated by its HMAC signature (the agency's connector secret, the scheme
//! of `connector::signing`), not by a bearer token; the command then runs through the task
//! aggregate as officer `connector:<agency>`, checked against the authorisation table.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::AgencyId;
use lifeline_model::task::TaskCommand;
use lifeline_model::validation::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::agency::{outcome_of, status_name, OutcomeBody};
use super::error::{ApiError, ErrorBody};
use super::extract::parse_json;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Scope, Target};
use crate::connector::signing::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::registry::Actor;
use crate::tasks::TaskDesk;

/// `POST /v1/connectors/{agency}/callback`, signed with `X-Lifeline-Timestamp` and
/// `X-Lifeline-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackBody {
    pub task_id: Option<Uuid>,
    /// `completed` (with `outcome`) or `rejected` (with `reason`).
    pub result: Option<String>,
    pub outcome: Option<OutcomeBody>,
    pub reason: Option<String>,
}

/// An agency system's result for a task: the callback's, or the synchronous answer to a
/// delivery (extra fields ignored there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AgencyResult {
    pub result: Option<String>,
    pub outcome: Option<OutcomeBody>,
    pub reason: Option<String>,
}

/// Where the task stands after the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallbackAnswer {
    pub task_id: Uuid,
    pub status: String,
}

/// An agency system reports the result of a task.
#[utoipa::path(
    post, path = "/v1/connectors/{agency}/callback", tag = "agency",
    params(
        ("agency" = String, Path, description = "agency id, e.g. police"),
        ("X-Lifeline-Timestamp" = String, Header, description = "seconds since the epoch; within 5 minutes of now"),
        ("X-Lifeline-Signature" = String, Header, description = "sha256=<hex HMAC-SHA256 over \"<timestamp>.<body>\">"),
    ),
    request_body = CallbackBody,
    responses(
        (status = 200, description = "applied", body = CallbackAnswer),
        (status = 401, description = "missing, stale or wrong signature; nothing changed", body = ErrorBody),
        (status = 404, description = "no such connector agency, or no such task of it", body = ErrorBody),
        (status = 409, description = "the task is closed or changed concurrently", body = ErrorBody),
        (status = 422, description = "invalid result or outcome, fields named", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    )
)]
#[instrument(skip_all, fields(agency = %agency))]
pub async fn callback(
    State(state): State<AppState>,
    Path(agency): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackAnswer>, ApiError> {
    let agency_id: AgencyId = agency
        .parse()
        .map_err(|_| ApiError::not_found("connector"))?;
    let connector = state
        .connectors
        .get(agency_id)
        .ok_or_else(|| ApiError::not_found("connector"))?;
    let body = body.map_err(|rejection| {
        ApiError::for_status(rejection.status()).with_detail(rejection.body_text())
    })?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    signing::verify(
        connector.secret.expose(),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        state.now(),
    )
    .map_err(|error| {
        ApiError::unauthorized("invalid_signature", "the request signature is not valid")
            .with_detail(error.to_string())
    })?;
    let callback: CallbackBody = parse_json(&body)?;
    let Some(task_id) = callback.task_id else {
        return Err(ApiError::validation(&ValidationErrors(vec![
            FieldError::required("task_id"),
        ])));
    };
    let result = AgencyResult {
        result: callback.result,
        outcome: callback.outcome,
        reason: callback.reason,
    };
    let status = apply_agency_result(&state.tasks, agency_id, task_id, result, state.now()).await?;
    Ok(Json(CallbackAnswer { task_id, status }))
}

/// The officer an agency system acts as, through its connector: `connector:<agency>`.
pub(crate) fn connector_officer(agency: AgencyId) -> String {
    format!("connector:{agency}")
}

/// Completes or rejects `task_id` of `agency` as officer `connector:<agency>`; answers the
/// task's status afterwards. A task of another agency is "not found".
pub(crate) async fn apply_agency_result(
    tasks: &TaskDesk,
    agency: AgencyId,
    task_id: Uuid,
    result: AgencyResult,
    at: DateTime<Utc>,
) -> Result<String, ApiError> {
    let subject = connector_officer(agency);
    let principal = Principal {
        subject: subject.clone(),
        role: Role::Agency,
        scope: Scope::Agency(agency),
    };
    let loaded = tasks
        .load(task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))?;
    let procedure = loaded
        .state
        .procedure
        .filter(|procedure| procedure.agency() == agency)
        .ok_or_else(|| ApiError::not_found("task"))?;
    authorize(
        &principal,
        Action::WorkTask,
        Target::Agency(procedure.agency()),
    )?;
    let command = match result.result.as_deref() {
        Some("completed") => TaskCommand::Complete {
            by: subject.clone(),
            outcome: outcome_of(result.outcome, procedure, at.date_naive())?,
            at,
        },
        Some("rejected") => match result.reason {
            Some(reason) if !reason.trim().is_empty() => TaskCommand::Reject {
                by: subject.clone(),
                reason,
                at,
            },
            _ => {
                return Err(ApiError::validation(&ValidationErrors(vec![
                    FieldError::required("reason"),
                ])))
            }
        },
        Some(_) => {
            return Err(ApiError::validation(&ValidationErrors(vec![
                FieldError::new("result", "unknown_result", "must be completed or rejected"),
            ])))
        }
        None => {
            return Err(ApiError::validation(&ValidationErrors(vec![
                FieldError::required("result"),
            ])))
        }
    };
    let actor = Actor {
        id: subject,
        role: Role::Agency,
        office: Some(agency.as_str().to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    };
    let after = tasks.execute_on(&actor, &loaded, command).await?;
    Ok(status_name(after.state.status).to_owned())
}
