//! Agency routes: the inbox of one agency, a task with only its procedure's application
//! fields, and the task commands (claim, complete with an outcome, reject with a reason) on the
//! task aggregate through cqrs-es.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::system_events::ReadResource;
use lifeline_model::task::{TaskCommand, TaskOutcome, TaskStatus};
use lifeline_model::validation::{FieldError, ValidationErrors};
use lifeline_store::projections::{self, InboxFilter, Page, TaskKey, TaskRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::{self, personal_ids_in, record_read, Read};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, RequestContext};
use super::registrar::actor;
use super::AppState;
use crate::auth::{authorize, authorize_role, Action, Principal, Target};
use crate::tasks::LoadedTask;

/// The longest inbox page.
pub const MAX_PAGE: u32 = 200;

/// Filters and paging of `GET /v1/agencies/{agency}/tasks`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// open, claimed, completed, rejected or cancelled.
    pub status: Option<String>,
    /// A procedure id, e.g. `residence-registration`.
    pub procedure: Option<String>,
    /// Only tasks due strictly before this RFC 3339 time.
    pub due_before: Option<String>,
    /// The `next_cursor` of the previous page; absent for the first.
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<String>,
}

/// One task in an inbox (no application fields: read the task for those).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskSummary {
    pub task_id: Uuid,
    pub procedure: String,
    pub office: String,
    pub life_event_id: Uuid,
    pub status: String,
    pub claimed_by: Option<String>,
    pub due_at: DateTime<Utc>,
    pub overdue: bool,
    pub created_at: DateTime<Utc>,
}

/// One page of an inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InboxPage {
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A task as its agency sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskBody {
    pub task_id: Uuid,
    pub procedure: String,
    pub agency: String,
    pub office: Option<String>,
    pub life_event_id: Option<Uuid>,
    pub status: String,
    pub claimed_by: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub created_at: Option<DateTime<Utc>>,
    /// Only the fields this procedure's agency receives (dotted paths).
    #[schema(value_type = Object)]
    pub application: BTreeMap<String, Value>,
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<Value>,
    /// Set when the task repeats (`reissue`: the record was corrected) or undoes (`reversal`:
    /// the record was voided, or the procedure no longer applies) a completed task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<FollowUpBody>,
    /// The stream version of the task.
    pub version: i64,
}

/// What a follow-up task asks of the agency, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FollowUpBody {
    /// `reissue` or `reversal`.
    pub kind: String,
    /// The completed task this one follows up.
    pub follows: Uuid,
    /// The registrar's reason.
    pub reason: String,
}

impl FollowUpBody {
    pub fn of(follow_up: &lifeline_model::task::FollowUp) -> Self {
        Self {
            kind: match follow_up.kind {
                lifeline_model::task::FollowUpKind::Reissue => "reissue",
                lifeline_model::task::FollowUpKind::Reversal => "reversal",
            }
            .to_owned(),
            follows: follow_up.follows,
            reason: follow_up.reason.clone(),
        }
    }
}

/// `POST /v1/tasks/{id}/complete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub outcome: Option<OutcomeBody>,
}

/// What the agency produced. `kind` picks the fields: `birth_registered`
/// (`certificate_number`), `residence_registered` (`entry_number`), `insurance_card_issued`
/// (`card_number`, `valid_until`), `death_registered` (`extract_number`), `residence_closed`
/// (`entry_number`), `payment_decided` (`decision_number`, `amount_vnd` in integer VND);
/// a reversal task (`follow_up.kind` = `reversal`) only `revoked` (`decision_number` of the
/// revocation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    pub kind: Option<String>,
    pub certificate_number: Option<String>,
    pub entry_number: Option<String>,
    pub card_number: Option<String>,
    /// ISO date.
    pub valid_until: Option<String>,
    pub extract_number: Option<String>,
    pub decision_number: Option<String>,
    pub amount_vnd: Option<i64>,
}

/// `POST /v1/tasks/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub reason: Option<String>,
}

/// An agency's inbox.
#[utoipa::path(
    get, path = "/v1/agencies/{agency}/tasks", tag = "agency",
    params(("agency" = String, Path, description = "agency id, e.g. police"), InboxQuery),
    responses(
        (status = 200, description = "one page, in due order", body = InboxPage),
        (status = 400, description = "a query string that does not parse", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another agency's inbox", body = ErrorBody),
        (status = 404, description = "no such agency", body = ErrorBody),
        (status = 422, description = "bad filters, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`), each named", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(agency = %agency))]
pub async fn list_tasks(
    State(state): State<AppState>,
    principal: Principal,
    Path(agency): Path<String>,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<InboxPage>, ApiError> {
    authorize_role(&principal, Action::ListTasks)?;
    let agency_id: AgencyId = agency.parse().map_err(|_| ApiError::not_found("agency"))?;
    authorize(&principal, Action::ListTasks, Target::Agency(agency_id))?;
    let Query(query) = query.map_err(super::audit::malformed_query)?;
    let (filter, page) = parse_inbox_query(&query)?;
    let rows = projections::inbox(&state.store, agency_id, &filter, page).await?;
    let next_cursor = if rows.len() == page.limit as usize {
        rows.last().map(|row| encode_cursor(&row.key()))
    } else {
        None
    };
    Ok(Json(InboxPage {
        tasks: rows.iter().map(summary).collect(),
        next_cursor,
    }))
}

/// A task, with only its procedure's application fields.
#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "agency",
    params(("id" = Uuid, Path, description = "the task id"),
           ("X-Purpose" = Option<String>, Header, description = "why the task is read (auditors must say); recorded in the access log")),
    responses(
        (status = 200, description = "the task; the read is recorded in the access log", body = TaskBody),
        (status = 400, description = "an auditor without X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another agency's task", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(task_id = %id))]
pub async fn get_task(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    authorize_role(&principal, Action::ReadTask)?;
    let purpose = access::purpose(&principal, &headers)?;
    let (task_id, loaded, procedure) = load_task(&state, &id).await?;
    authorize(
        &principal,
        Action::ReadTask,
        Target::Agency(procedure.agency()),
    )?;
    let body = task_body(&loaded, procedure)?;
    serve_task(&state, &principal, &context, purpose, task_id, body).await
}

/// Answers `body` once its read (the task and the personal ID numbers of its application) is
/// in the access log.
async fn serve_task(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    purpose: Option<String>,
    task_id: Uuid,
    body: TaskBody,
) -> Result<Json<TaskBody>, ApiError> {
    let resource = ReadResource::Task {
        task_id,
        life_event_id: body.life_event_id,
    };
    let read =
        Read::new(resource, purpose).naming(body.application.values().flat_map(personal_ids_in));
    record_read(state, principal, context.correlation_id, read).await?;
    Ok(Json(body))
}

/// Claim a task: one officer at a time.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/claim", tag = "agency",
    params(("id" = Uuid, Path, description = "the task id"),
           ("X-Purpose" = Option<String>, Header, description = "why the answer's personal data is read; recorded in the access log")),
    responses(
        (status = 200, description = "claimed (or already claimed by the caller)", body = TaskBody),
        (status = 400, description = "an invalid X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another agency's task", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "claimed by another officer, closed, or changed concurrently", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(task_id = %id))]
pub async fn claim_task(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    let command = TaskCommand::Claim {
        by: principal.subject.clone(),
        at: state.now(),
    };
    run_task_command(&state, &principal, &context, &headers, &id, |_| Ok(command)).await
}

/// Complete a task with its outcome (checked for the procedure).
#[utoipa::path(
    post, path = "/v1/tasks/{id}/complete", tag = "agency",
    params(("id" = Uuid, Path, description = "the task id"),
           ("X-Purpose" = Option<String>, Header, description = "why the answer's personal data is read; recorded in the access log")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "completed", body = TaskBody),
        (status = 400, description = "an invalid X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another agency's task", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "claimed by another officer, closed, or changed concurrently", body = ErrorBody),
        (status = 422, description = "invalid outcome, fields named", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(task_id = %id))]
pub async fn complete_task(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> Result<Json<TaskBody>, ApiError> {
    let at = state.now();
    let by = principal.subject.clone();
    run_task_command(
        &state,
        &principal,
        &context,
        &headers,
        &id,
        move |procedure| {
            let outcome = outcome_of(body.outcome, procedure, at.date_naive())?;
            Ok(TaskCommand::Complete { by, outcome, at })
        },
    )
    .await
}

/// Reject a task, with the reason.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/reject", tag = "agency",
    params(("id" = Uuid, Path, description = "the task id"),
           ("X-Purpose" = Option<String>, Header, description = "why the answer's personal data is read; recorded in the access log")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "rejected", body = TaskBody),
        (status = 400, description = "an invalid X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another agency's task", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "claimed by another officer, closed, or changed concurrently", body = ErrorBody),
        (status = 422, description = "no reason", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(task_id = %id))]
pub async fn reject_task(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<TaskBody>, ApiError> {
    let at = state.now();
    let by = principal.subject.clone();
    run_task_command(
        &state,
        &principal,
        &context,
        &headers,
        &id,
        move |_| match body.reason {
            Some(reason) if !reason.trim().is_empty() => Ok(TaskCommand::Reject { by, reason, at }),
            _ => Err(ApiError::validation(&ValidationErrors(vec![
                FieldError::required("reason"),
            ]))),
        },
    )
    .await
}

/// Runs a claim, a completion or a rejection and answers the task after it. The answer carries
/// the application (personal data), so its read goes to the access log before it is served, as
/// `GET /v1/tasks/{id}`'s does; a refused command serves nothing and logs nothing. If the read
/// cannot be recorded the answer is 503 and nothing is served, though the command stands (a
/// claim again by its holder, or a look at the task, shows it). Until 2026-12-07 these answers
/// were not logged, and a claim by its own holder (which appends nothing) re-read the
/// application without a trace.
async fn run_task_command(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    headers: &HeaderMap,
    id: &str,
    command: impl FnOnce(ProcedureId) -> Result<TaskCommand, ApiError>,
) -> Result<Json<TaskBody>, ApiError> {
    authorize_role(principal, Action::WorkTask)?;
    let purpose = access::purpose(principal, headers)?;
    let (task_id, loaded, procedure) = load_task(state, id).await?;
    authorize(
        principal,
        Action::WorkTask,
        Target::Agency(procedure.agency()),
    )?;
    let command = command(procedure)?;
    let actor = actor(principal, context);
    let after = state.tasks.execute_on(&actor, &loaded, command).await?;
    if after.version > loaded.version {
        count_appended(
            state,
            &after.stream_id,
            loaded.version,
            actor.correlation_id,
        )
        .await;
    }
    let body = task_body(&after, procedure)?;
    serve_task(state, principal, context, purpose, task_id, body).await
}

/// Counts in `lifeline_events_appended_total` the events this request's command appended to
/// the task's stream after `version`, each by its own type: those carrying the request's
/// correlation id (a completion of an unclaimed task appends a claim and a completion; a
/// command run again after a conflict finds others' events in between, not its own). (Until
/// 2026-12-07 the versions gained were all counted as the command's type.) A stream that
/// cannot be read now is not counted, and says so.
async fn count_appended(
    state: &AppState,
    stream: &lifeline_model::envelope::StreamId,
    version: lifeline_model::envelope::StreamVersion,
    correlation_id: Uuid,
) {
    match state.store.read_stream(stream).await {
        Ok(events) => {
            for event in events.iter().filter(|event| {
                event.stream_version > version && event.metadata.correlation_id == correlation_id
            }) {
                state.metrics.events_appended(&event.event_type, 1);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the task's events to count them in the metrics");
        }
    }
}

async fn load_task(
    state: &AppState,
    id: &str,
) -> Result<(Uuid, LoadedTask, ProcedureId), ApiError> {
    let task_id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("task"))?;
    let loaded = state
        .tasks
        .load(task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))?;
    let procedure = loaded
        .state
        .procedure
        .ok_or_else(|| ApiError::not_found("task"))?;
    Ok((task_id, loaded, procedure))
}

fn task_body(loaded: &LoadedTask, procedure: ProcedureId) -> Result<TaskBody, ApiError> {
    let task = &loaded.state;
    let outcome = task
        .outcome
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    Ok(TaskBody {
        task_id: task.task_id.unwrap_or_default(),
        procedure: procedure.as_str().to_owned(),
        agency: procedure.agency().as_str().to_owned(),
        office: task.office.as_ref().map(ToString::to_string),
        life_event_id: task.life_event_id,
        status: status_name(task.status).to_owned(),
        claimed_by: task.claimed_by.clone(),
        due_at: task.due_at,
        overdue: task.overdue,
        created_at: loaded.created_at,
        // Data minimisation, kept even if a stored application ever held more.
        application: task
            .application
            .0
            .iter()
            .filter(|(field, _)| procedure.receives(field))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect(),
        outcome,
        follow_up: task.follow_up.as_ref().map(FollowUpBody::of),
        version: loaded.version.0,
    })
}

fn summary(row: &TaskRow) -> TaskSummary {
    TaskSummary {
        task_id: row.task_id,
        procedure: row.procedure.as_str().to_owned(),
        office: row.office.to_string(),
        life_event_id: row.life_event_id,
        status: status_name(row.status).to_owned(),
        claimed_by: row.claimed_by.clone(),
        due_at: row.due_at,
        overdue: row.overdue,
        created_at: row.created_at,
    }
}

pub(crate) fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::New => "new",
        TaskStatus::Open => "open",
        TaskStatus::Claimed => "claimed",
        TaskStatus::Completed => "completed",
        TaskStatus::Rejected => "rejected",
        TaskStatus::Cancelled => "cancelled",
    }
}

fn parse_inbox_query(query: &InboxQuery) -> Result<(InboxFilter, Page), ApiError> {
    let mut errors = ValidationErrors::default();
    let status = query.status.as_deref().and_then(|raw| {
        let status = match raw {
            "open" => Some(TaskStatus::Open),
            "claimed" => Some(TaskStatus::Claimed),
            "completed" => Some(TaskStatus::Completed),
            "rejected" => Some(TaskStatus::Rejected),
            "cancelled" => Some(TaskStatus::Cancelled),
            _ => None,
        };
        if status.is_none() {
            errors.push(FieldError::new(
                "status",
                "unknown_status",
                "must be open, claimed, completed, rejected or cancelled",
            ));
        }
        status
    });
    let procedure =
        query.procedure.as_deref().and_then(|raw| {
            errors.take(raw.parse::<ProcedureId>().map_err(|error| {
                FieldError::new("procedure", "unknown_procedure", error.to_string())
            }))
        });
    let due_before = query.due_before.as_deref().and_then(|raw| {
        errors.take(
            DateTime::parse_from_rfc3339(raw)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    FieldError::new(
                        "due_before",
                        "invalid_datetime",
                        "must be a time like 2026-11-18T17:00:00+07:00",
                    )
                }),
        )
    });
    let after = query
        .cursor
        .as_deref()
        .and_then(|raw| errors.take(decode_cursor(raw)));
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(raw) => errors
            .take(
                raw.parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| FieldError::new("limit", "out_of_range", "must be 1 to 200")),
            )
            .unwrap_or(50),
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(&errors));
    }
    Ok((
        InboxFilter {
            status,
            procedure,
            due_before,
            office: None,
        },
        Page { after, limit },
    ))
}

fn encode_cursor(key: &TaskKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", key.due_at.to_rfc3339(), key.task_id))
}

fn decode_cursor(raw: &str) -> Result<TaskKey, FieldError> {
    let invalid = || {
        FieldError::new(
            "cursor",
            "invalid_cursor",
            "is not a cursor this API returned",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (due_at, task_id) = text.split_once('|').ok_or_else(invalid)?;
    Ok(TaskKey {
        due_at: DateTime::parse_from_rfc3339(due_at)
            .map_err(|_| invalid())?
            .with_timezone(&Utc),
        task_id: Uuid::parse_str(task_id).map_err(|_| invalid())?,
    })
}

/// The HTTP outcome as the model's, naming `outcome.<field>` for what is missing; the
/// procedure-specific checks are `TaskOutcome::validate`'s, run by the aggregate.
pub(crate) fn outcome_of(
    body: Option<OutcomeBody>,
    procedure: ProcedureId,
    _on: NaiveDate,
) -> Result<TaskOutcome, ApiError> {
    let Some(body) = body else {
        return Err(ApiError::validation(&ValidationErrors(vec![
            FieldError::required("outcome"),
        ])));
    };
    let mut errors = ValidationErrors::default();
    // A field of another kind of outcome (an amount on a birth registration, say) is refused,
    // named, rather than dropped: it is most likely a mistake the officer should see.
    let present = [
        ("certificate_number", body.certificate_number.is_some()),
        ("entry_number", body.entry_number.is_some()),
        ("card_number", body.card_number.is_some()),
        ("valid_until", body.valid_until.is_some()),
        ("extract_number", body.extract_number.is_some()),
        ("decision_number", body.decision_number.is_some()),
        ("amount_vnd", body.amount_vnd.is_some()),
    ];
    if let Some(kind) = body.kind.as_deref() {
        if let Some(fields) = outcome_fields(kind) {
            for (name, _) in present
                .iter()
                .filter(|(name, is)| *is && !fields.contains(name))
            {
                errors.push(FieldError::new(
                    format!("outcome.{name}"),
                    "not_for_outcome",
                    format!(
                        "is not a field of a {kind} outcome (its fields: {})",
                        fields.join(", ")
                    ),
                ));
            }
        }
    }
    let mut text = |value: Option<String>, name: &str| -> String {
        match value {
            Some(value) => value,
            None => {
                errors.push(FieldError::required(format!("outcome.{name}")));
                String::new()
            }
        }
    };
    let outcome = match body.kind.as_deref() {
        Some("birth_registered") => Some(TaskOutcome::BirthRegistered {
            certificate_number: text(body.certificate_number, "certificate_number"),
        }),
        Some("residence_registered") => Some(TaskOutcome::ResidenceRegistered {
            entry_number: text(body.entry_number, "entry_number"),
        }),
        Some("death_registered") => Some(TaskOutcome::DeathRegistered {
            extract_number: text(body.extract_number, "extract_number"),
        }),
        Some("residence_closed") => Some(TaskOutcome::ResidenceClosed {
            entry_number: text(body.entry_number, "entry_number"),
        }),
        Some("revoked") => Some(TaskOutcome::Revoked {
            decision_number: text(body.decision_number, "decision_number"),
        }),
        Some("insurance_card_issued") => {
            let card_number = text(body.card_number, "card_number");
            let valid_until = match body.valid_until.as_deref() {
                None => {
                    errors.push(FieldError::required("outcome.valid_until"));
                    None
                }
                Some(raw) => errors.take(
                    NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").map_err(|_| {
                        FieldError::new(
                            "outcome.valid_until",
                            "invalid_date",
                            "must be a date like 2030-12-31",
                        )
                    }),
                ),
            };
            valid_until.map(|valid_until| TaskOutcome::InsuranceCardIssued {
                card_number,
                valid_until,
            })
        }
        Some("payment_decided") => {
            let decision_number = text(body.decision_number, "decision_number");
            match body.amount_vnd {
                Some(amount_vnd) => Some(TaskOutcome::PaymentDecided {
                    decision_number,
                    amount_vnd,
                }),
                None => {
                    errors.push(FieldError::required("outcome.amount_vnd"));
                    None
                }
            }
        }
        Some(_) => {
            errors.push(FieldError::new(
                "outcome.kind",
                "unknown_outcome",
                format!(
                    "is not an outcome; {} expects {} (a reversal task of it: revoked)",
                    procedure,
                    expected_kind(procedure)
                ),
            ));
            None
        }
        None => {
            errors.push(FieldError::required("outcome.kind"));
            None
        }
    };
    match outcome {
        Some(outcome) if errors.is_empty() => Ok(outcome),
        _ => Err(ApiError::validation(&errors)),
    }
}

/// The fields (besides `kind`) of the outcome `kind`, if it is one.
fn outcome_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "birth_registered" => &["certificate_number"],
        "residence_registered" | "residence_closed" => &["entry_number"],
        "death_registered" => &["extract_number"],
        "insurance_card_issued" => &["card_number", "valid_until"],
        "payment_decided" => &["decision_number", "amount_vnd"],
        "revoked" => &["decision_number"],
        _ => return None,
    })
}

fn expected_kind(procedure: ProcedureId) -> &'static str {
    match procedure {
        ProcedureId::BirthRegistration => "birth_registered",
        ProcedureId::ResidenceRegistration => "residence_registered",
        ProcedureId::ChildHealthInsurance => "insurance_card_issued",
        ProcedureId::DeathRegistration => "death_registered",
        ProcedureId::ResidenceDeregistration => "residence_closed",
        ProcedureId::BurialAllowance | ProcedureId::FuneralSupport => "payment_decided",
    }
}
