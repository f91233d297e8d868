//! Citizen status by reference: procedure names, states and dates, nothing personal. The
//! reference is the citizen's capability; the citizen portal calls with an operator token
//! (any authenticated role may read it, see `auth::AUTHORISATION`).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::life_event::Reference;
use lifeline_store::projections;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::registrar::group_name;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};

/// Where a citizen's life event stands: no names, no ID numbers, no addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    pub reference: String,
    /// `birth` or `death`.
    pub kind: String,
    pub recorded_on: NaiveDate,
    pub voided: bool,
    pub procedures: Vec<ProcedureStatus>,
}

/// One procedure: its name, state and dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProcedureStatus {
    pub procedure: String,
    pub agency: String,
    pub state: String,
    pub opened_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
}

/// The status of the life event a reference names.
#[utoipa::path(
    get, path = "/v1/status/{reference}", tag = "citizen",
    params(("reference" = String, Path, description = "the citizen's reference, e.g. LL-0123456789")),
    responses(
        (status = 200, description = "procedure names, states and dates", body = StatusBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such reference (or not yet visible)", body = ErrorBody),
        (status = 409, description = "`ambiguous_reference`: two records share this reference (it is 50 bits of the record's id)", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    Path(reference): Path<String>,
) -> Result<Json<StatusBody>, ApiError> {
    authorize(&principal, Action::ReadCitizenStatus, Target::Nothing)?;
    let reference = Reference::parse(&reference).map_err(|_| ApiError::not_found("reference"))?;
    let mut rows = projections::life_event_status_by_reference(&state.store, &reference).await?;
    if rows.len() > 1 {
        // Two records whose ids fold to one reference: neither family's status is shown.
        return Err(ApiError::conflict(
            "ambiguous_reference",
            "this reference names more than one record; ask the registry office that recorded it",
        ));
    }
    let row = rows.pop().ok_or_else(|| ApiError::not_found("reference"))?;
    Ok(Json(StatusBody {
        reference: row.reference.to_string(),
        kind: group_name(row.kind).to_owned(),
        recorded_on: row.recorded_on,
        voided: row.voided,
        procedures: row
            .procedures
            .iter()
            .map(|procedure| ProcedureStatus {
                procedure: procedure.procedure.as_str().to_owned(),
                agency: procedure.procedure.agency().as_str().to_owned(),
                state: procedure.state.as_str().to_owned(),
                opened_at: procedure.opened_at,
                closed_at: procedure.closed_at,
                due_at: procedure.due_at,
                overdue: procedure.overdue,
            })
            .collect(),
    }))
}
