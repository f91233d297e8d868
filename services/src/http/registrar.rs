//! Registrar routes: record births and deaths (idempotent with `Idempotency-Key`), read a life
//! event with the state of its procedures, correct it (a JSON merge patch over the current
//! declaration) or void it. The payload types here are the HTTP contract; they map onto the
//! model's declaration inputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use lifeline_model::declaration::{
    parse_birth, parse_death, parse_new_birth, BirthDeclaration, BirthDeclarationInput, ChildInput,
    DeathDeclaration, DeathDeclarationInput, DeathInput, DeceasedInput, DeclarantInput,
    Declaration, NoticeInput, ParentInput, ResidenceInput,
};
use lifeline_model::envelope::{RecordedEvent, StreamVersion};
use lifeline_model::error::DomainError;
use lifeline_model::life_event::{LifeEvent, LifeEventCommand, LifeEventEvent};
use lifeline_model::procedure::{ProcedureGroup, ProcedureId};
use lifeline_model::system_events::{PersonalIdAssigned, ReadResource};
use lifeline_model::validation::{FieldError, ValidationErrors};
use lifeline_model::values::{vietnam_date, vietnam_day_end, OfficeCode};
use lifeline_policies::identity::{assignment_event_id, decode_assignment};
use lifeline_store::projections::{self, ProcedureState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::{self, personal_ids_in, record_read, Read};
use super::error::{ApiError, ErrorBody};
use super::extract::{parse_json, ApiJson, RequestContext};
use super::AppState;
use crate::auth::{authorize, authorize_role, Action, Principal, Scope, Target};
use crate::registry::{Actor, Change, LoadedLifeEvent, Recorded, RegistryError, Stored};

// ---------------------------------------------------------------------------------------------
// Payloads.

/// The body of `POST /v1/births`. Every field is optional here: the checks name each missing
/// or bad one. Unknown fields are refused (a typo must not drop data silently).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BirthBody {
    /// The registry office, `PP-CCCCC` (e.g. `79-26734`): must be the token's office.
    pub office: Option<String>,
    pub child: Option<ChildBody>,
    pub mother: Option<ParentBody>,
    /// May be null (father unknown).
    pub father: Option<ParentBody>,
    pub residence: Option<ResidenceBody>,
    pub birth_notice: Option<NoticeBody>,
    pub declarant: Option<DeclarantBody>,
    /// Defaults to the whole birth group (without `child-health-insurance` for a child 6 or
    /// older, for whom naming it is refused: `not_eligible`); `birth-registration` is always
    /// included.
    pub procedures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildBody {
    pub full_name: Option<String>,
    /// `male` or `female`.
    pub sex: Option<String>,
    /// ISO date, not in the future.
    pub date_of_birth: Option<String>,
    pub place_of_birth: Option<String>,
    pub hometown: Option<String>,
    pub ethnicity: Option<String>,
    pub nationality: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParentBody {
    pub full_name: Option<String>,
    /// 12-digit personal ID number.
    pub personal_id: Option<String>,
    pub date_of_birth: Option<String>,
    pub ethnicity: Option<String>,
    pub nationality: Option<String>,
    pub residence: Option<ResidenceBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResidenceBody {
    /// 2-digit province code.
    pub province: Option<String>,
    /// 5-digit commune code.
    pub commune: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoticeBody {
    pub number: Option<String>,
    pub issuer: Option<String>,
    pub date: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclarantBody {
    pub full_name: Option<String>,
    pub personal_id: Option<String>,
    pub relationship: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    /// Where the declarant lives (optional).
    pub residence: Option<ResidenceBody>,
}

/// The body of `POST /v1/deaths`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeathBody {
    pub office: Option<String>,
    pub deceased: Option<DeceasedBody>,
    pub death: Option<DeathFactsBody>,
    pub declarant: Option<DeclarantBody>,
    /// The procedures the declarant chose; `death-registration` is always included.
    pub procedures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeceasedBody {
    pub full_name: Option<String>,
    pub personal_id: Option<String>,
    pub date_of_birth: Option<String>,
    pub sex: Option<String>,
    pub ethnicity: Option<String>,
    pub nationality: Option<String>,
    /// The last registered residence.
    pub residence: Option<ResidenceBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeathFactsBody {
    /// RFC 3339 with offset, e.g. `2026-11-18T06:30:00+07:00`.
    pub at: Option<String>,
    pub place: Option<String>,
    pub cause: Option<String>,
    pub notice: Option<NoticeBody>,
}

/// What `POST /v1/births` and `POST /v1/deaths` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordedBody {
    pub life_event_id: Uuid,
    /// The reference the citizen quotes (`LL-` + 10 characters).
    pub reference: String,
    /// The event's position in the global log.
    pub position: i64,
}

/// `POST /v1/life-events/{id}/corrections`: a JSON merge patch (RFC 7386) over the current
/// declaration (same shape as the recording body; `null` removes an optional field), with the
/// reason. `expected_version` (from `GET`) refuses the correction with 409 if the record has
/// changed since.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionBody {
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub changes: Option<Value>,
    pub expected_version: Option<i64>,
}

/// `POST /v1/life-events/{id}/void`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    pub reason: Option<String>,
    pub expected_version: Option<i64>,
}

/// A life event and every procedure of its group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LifeEventBody {
    pub life_event_id: Uuid,
    /// `birth` or `death`.
    pub kind: String,
    pub reference: String,
    pub office: String,
    pub recorded_on: NaiveDate,
    pub late: bool,
    pub voided: bool,
    pub corrections: u32,
    /// The stream version: pass it as `expected_version` to correct or void.
    pub version: i64,
    /// The current declaration (after corrections).
    #[schema(value_type = Object)]
    pub declaration: Value,
    pub procedures: Vec<ProcedureBody>,
    pub history: Vec<HistoryEntry>,
}

/// Where one procedure of a life event stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProcedureBody {
    pub procedure: String,
    pub agency: String,
    /// pending, open, claimed, completed, reversed (a reversal completed), rejected, cancelled,
    /// not-eligible, not-chosen.
    pub state: String,
    pub task_id: Option<Uuid>,
    pub opened_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub detail: Option<String>,
}

/// One stored event of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub version: i64,
    pub position: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
}

impl From<ResidenceBody> for ResidenceInput {
    fn from(body: ResidenceBody) -> Self {
        Self {
            province: body.province,
            commune: body.commune,
            address: body.address,
        }
    }
}

impl From<NoticeBody> for NoticeInput {
    fn from(body: NoticeBody) -> Self {
        Self {
            number: body.number,
            issuer: body.issuer,
            date: body.date,
        }
    }
}

impl From<DeclarantBody> for DeclarantInput {
    fn from(body: DeclarantBody) -> Self {
        Self {
            full_name: body.full_name,
            personal_id: body.personal_id,
            relationship: body.relationship,
            phone: body.phone,
            email: body.email,
            residence: body.residence.map(Into::into),
        }
    }
}

impl From<ParentBody> for ParentInput {
    fn from(body: ParentBody) -> Self {
        Self {
            full_name: body.full_name,
            personal_id: body.personal_id,
            date_of_birth: body.date_of_birth,
            ethnicity: body.ethnicity,
            nationality: body.nationality,
            residence: body.residence.map(Into::into),
        }
    }
}

impl From<BirthBody> for BirthDeclarationInput {
    fn from(body: BirthBody) -> Self {
        Self {
            office: body.office,
            child: body.child.map(|child| ChildInput {
                full_name: child.full_name,
                sex: child.sex,
                date_of_birth: child.date_of_birth,
                place_of_birth: child.place_of_birth,
                hometown: child.hometown,
                ethnicity: child.ethnicity,
                nationality: child.nationality,
            }),
            mother: body.mother.map(Into::into),
            father: body.father.map(Into::into),
            residence: body.residence.map(Into::into),
            birth_notice: body.birth_notice.map(Into::into),
            declarant: body.declarant.map(Into::into),
            procedures: body.procedures,
        }
    }
}

impl From<DeathBody> for DeathDeclarationInput {
    fn from(body: DeathBody) -> Self {
        Self {
            office: body.office,
            deceased: body.deceased.map(|deceased| DeceasedInput {
                full_name: deceased.full_name,
                personal_id: deceased.personal_id,
                date_of_birth: deceased.date_of_birth,
                sex: deceased.sex,
                ethnicity: deceased.ethnicity,
                nationality: deceased.nationality,
                residence: deceased.residence.map(Into::into),
            }),
            death: body.death.map(|death| DeathInput {
                at: death.at,
                place: death.place,
                cause: death.cause,
                notice: death.notice.map(Into::into),
            }),
            declarant: body.declarant.map(Into::into),
            procedures: body.procedures,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// Record a birth.
#[utoipa::path(
    post, path = "/v1/births", tag = "registrar",
    request_body = BirthBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and body: the same answer, no new event")),
    responses(
        (status = 201, description = "recorded", body = RecordedBody),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not this registrar's office", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "invalid fields, each named", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(kind = "birth", life_event_id = tracing::field::Empty))]
pub async fn record_birth(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<BirthBody>,
) -> Result<Response, ApiError> {
    authorize_role(&principal, Action::RecordLifeEvent)?;
    check_office_scope(&principal, body.office.as_deref())?;
    let input = BirthDeclarationInput::from(body);
    let today = state.today();
    let mut errors = parse_new_birth(&input, today).err().unwrap_or_default();
    check_known_office(&state, input.office.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(&errors));
    }
    let actor = actor(&principal, &context);
    let recorded = state.registry.record_birth(&actor, &input, today).await?;
    Ok(recorded_response(&state, recorded, "BirthRecorded"))
}

/// Record a death with the procedures the declarant chose.
#[utoipa::path(
    post, path = "/v1/deaths", tag = "registrar",
    request_body = DeathBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and body: the same answer, no new event")),
    responses(
        (status = 201, description = "recorded", body = RecordedBody),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not this registrar's office", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "invalid fields, each named", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(kind = "death", life_event_id = tracing::field::Empty))]
pub async fn record_death(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<DeathBody>,
) -> Result<Response, ApiError> {
    authorize_role(&principal, Action::RecordLifeEvent)?;
    check_office_scope(&principal, body.office.as_deref())?;
    let input = DeathDeclarationInput::from(body);
    let now = state.now();
    let mut errors = match parse_death(&input, now) {
        Ok(declaration) => {
            let mut errors = ValidationErrors::default();
            check_decidable(&state.decidable_from, &declaration, &mut errors);
            errors
        }
        Err(errors) => errors,
    };
    check_known_office(&state, input.office.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(&errors));
    }
    let actor = actor(&principal, &context);
    let recorded = state.registry.record_death(&actor, &input, now).await?;
    Ok(recorded_response(&state, recorded, "DeathRecorded"))
}

/// A life event: the record and the state of every linked procedure.
#[utoipa::path(
    get, path = "/v1/life-events/{id}", tag = "registrar",
    params(("id" = Uuid, Path, description = "the life event id"),
           ("X-Purpose" = Option<String>, Header, description = "why the record is read (auditors must say); recorded in the access log")),
    responses(
        (status = 200, description = "the record; the read is recorded in the access log", body = LifeEventBody),
        (status = 400, description = "an auditor without X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another office's record", body = ErrorBody),
        (status = 404, description = "no such life event", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(life_event_id = %id))]
pub async fn get_life_event(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LifeEventBody>, ApiError> {
    authorize_role(&principal, Action::ReadLifeEvent)?;
    let purpose = access::purpose(&principal, &headers)?;
    let loaded = load_record(&state, &id).await?;
    let declaration = current_declaration(&loaded.state)?;
    authorize(
        &principal,
        Action::ReadLifeEvent,
        Target::Office(declaration.office()),
    )?;
    let life_event_id = life_event_id(&loaded)?;
    let status = projections::life_event_status(&state.store, life_event_id).await?;
    let body = life_event_body(&loaded, declaration, status)?;
    let read = Read::new(ReadResource::LifeEvent { life_event_id }, purpose)
        .naming(personal_ids_in(&body.declaration));
    record_read(&state, &principal, context.correlation_id, read).await?;
    Ok(Json(body))
}

/// Correct a record: a merge patch over its declaration, with a reason.
#[utoipa::path(
    post, path = "/v1/life-events/{id}/corrections", tag = "registrar",
    params(("id" = Uuid, Path, description = "the life event id"),
           ("X-Purpose" = Option<String>, Header, description = "why the answer's personal data is read; recorded in the access log")),
    request_body = CorrectionBody,
    responses(
        (status = 200, description = "corrected: the record after the correction", body = LifeEventBody),
        (status = 400, description = "an invalid X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another office's record", body = ErrorBody),
        (status = 404, description = "no such life event", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 422, description = "invalid fields (also `personal_id_assigned`: a change of a birth's child sex or year of birth that its assigned personal ID number encodes), nothing changed, voided, or `idempotency_key_reused` (the `Idempotency-Key` was used on this record for another request; the same request again is answered 200 and stores nothing)", body = ErrorBody),
        (status = 503, description = "store unavailable (the change not known to be stored: send it again with its Idempotency-Key, or read the record), or `stored_answer_unavailable`: the change is stored but the record cannot be served now (the store, or the access log, away); read it later", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(life_event_id = %id))]
pub async fn correct_life_event(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CorrectionBody>,
) -> Result<Json<LifeEventBody>, ApiError> {
    authorize_role(&principal, Action::ChangeLifeEvent)?;
    let caller = Caller {
        principal: &principal,
        context: &context,
        purpose: access::purpose(&principal, &headers)?,
    };
    let loaded = load_record(&state, &id).await?;
    let office = current_declaration(&loaded.state)?.office().clone();
    authorize(&principal, Action::ChangeLifeEvent, Target::Office(&office))?;
    let mut errors = ValidationErrors::default();
    let reason = required_reason(&mut errors, body.reason);
    let changes = match body.changes {
        Some(Value::Object(changes)) => Some(Value::Object(changes)),
        Some(_) => {
            errors.push(FieldError::new(
                "changes",
                "not_an_object",
                "must be a JSON object",
            ));
            None
        }
        None => {
            errors.push(FieldError::required("changes"));
            None
        }
    };
    let (Some(reason), Some(changes)) = (reason, changes) else {
        return Err(ApiError::validation(&errors));
    };
    let offices = state.offices.clone();
    let decidable_from = Arc::clone(&state.decidable_from);
    // The same correction again (a retry: same Idempotency-Key, same body) is answered as the
    // first time; the key used before for anything else is refused. Before the version check:
    // the retried request's `expected_version` is the one its first attempt moved on from.
    // It is checked as of the end of the day the correction was recorded on: it passed then.
    let again = |before: &LifeEvent, recorded_on: NaiveDate| {
        let as_of = vietnam_day_end(recorded_on);
        Ok(LifeEventCommand::Correct {
            declaration: corrected_declaration(
                before,
                &changes,
                as_of,
                offices.as_deref(),
                &decidable_from,
            )?,
            reason: reason.clone(),
            recorded_on,
        })
    };
    if let Some(retried) = retried(&state, &caller, &id, &loaded, &again).await {
        return retried;
    }
    check_expected_version(&loaded, body.expected_version)?;
    let now = state.now();
    let today = vietnam_date(now);
    let actor = actor(&principal, &context);
    // A birth's child may have been given a number (birth-followups, once the registration
    // completed): the correction must not contradict it. It is read once the correction holds
    // the record, so that a number assigned meanwhile (its policy holds the record while it
    // assigns) is seen.
    let guard = match current_declaration(&loaded.state)? {
        Declaration::Birth(_) => Some(life_event_id(&loaded)?),
        Declaration::Death(_) => None,
    };
    let stored = state
        .registry
        .correct_with(
            &actor,
            &loaded.stream_id,
            Change {
                reason: reason.clone(),
                on: today,
                expected: body.expected_version.map(StreamVersion),
            },
            |current| {
                let declaration = corrected_declaration(
                    current,
                    &changes,
                    now,
                    offices.as_deref(),
                    &decidable_from,
                )?;
                // A correction cannot move the record to another office.
                authorize(
                    &principal,
                    Action::ChangeLifeEvent,
                    Target::Office(declaration.office()),
                )?;
                Ok::<_, ApiError>(declaration)
            },
            guard.map(|life_event_id| {
                (
                    assignment_event_id(life_event_id),
                    move |declaration: &Declaration, stored: Option<&RecordedEvent>| match (
                        stored,
                        declaration,
                    ) {
                        (Some(stored), Declaration::Birth(birth)) => {
                            check_child_number(&child_number(life_event_id, stored)?, birth)
                        }
                        _ => Ok(()),
                    },
                )
            }),
        )
        .await;
    let decided = match stored {
        Ok(Ok(stored)) => Ok(stored),
        Ok(Err(refusal)) => return Err(refusal),
        Err(error) => Err(error),
    };
    settle(&state, &caller, &id, decided, "LifeEventCorrected", &again).await
}

/// Void a record entered in error, with a reason.
#[utoipa::path(
    post, path = "/v1/life-events/{id}/void", tag = "registrar",
    params(("id" = Uuid, Path, description = "the life event id"),
           ("X-Purpose" = Option<String>, Header, description = "why the answer's personal data is read; recorded in the access log")),
    request_body = VoidBody,
    responses(
        (status = 200, description = "voided: the record after the void", body = LifeEventBody),
        (status = 400, description = "an invalid X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "another office's record", body = ErrorBody),
        (status = 404, description = "no such life event", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 422, description = "no reason, already voided, or `idempotency_key_reused` (the `Idempotency-Key` was used on this record for another request; the same void again is answered 200 and stores nothing)", body = ErrorBody),
        (status = 503, description = "store unavailable (the change not known to be stored: send it again with its Idempotency-Key, or read the record), or `stored_answer_unavailable`: the change is stored but the record cannot be served now (the store, or the access log, away); read it later", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(life_event_id = %id))]
pub async fn void_life_event(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<VoidBody>,
) -> Result<Json<LifeEventBody>, ApiError> {
    authorize_role(&principal, Action::ChangeLifeEvent)?;
    let caller = Caller {
        principal: &principal,
        context: &context,
        purpose: access::purpose(&principal, &headers)?,
    };
    let loaded = load_record(&state, &id).await?;
    let office = current_declaration(&loaded.state)?.office().clone();
    authorize(&principal, Action::ChangeLifeEvent, Target::Office(&office))?;
    let mut errors = ValidationErrors::default();
    let Some(reason) = required_reason(&mut errors, body.reason) else {
        return Err(ApiError::validation(&errors));
    };
    // As for a correction: a retry is answered as the first time, a reused key refused.
    let again = |_: &LifeEvent, recorded_on: NaiveDate| {
        Ok(LifeEventCommand::Void {
            reason: reason.clone(),
            recorded_on,
        })
    };
    if let Some(retried) = retried(&state, &caller, &id, &loaded, &again).await {
        return retried;
    }
    check_expected_version(&loaded, body.expected_version)?;
    let actor = actor(&principal, &context);
    let stored = state
        .registry
        .void(
            &actor,
            &loaded.stream_id,
            Change {
                reason: reason.clone(),
                on: state.today(),
                expected: body.expected_version.map(StreamVersion),
            },
        )
        .await;
    settle(&state, &caller, &id, stored, "LifeEventVoided", &again).await
}

/// Who asked for a correction or a void, and why they read its answer (`X-Purpose`).
struct Caller<'a> {
    principal: &'a Principal,
    context: &'a RequestContext,
    purpose: Option<String>,
}

/// A correction or a void whose `Idempotency-Key` is on the record `loaded` already: its
/// answer ([`replay`]: the record as it stands, or `idempotency_key_reused`); `None` for a
/// request without a key or with a new one.
async fn retried(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    loaded: &LoadedLifeEvent,
    again: &impl Fn(&LifeEvent, NaiveDate) -> Result<LifeEventCommand, ApiError>,
) -> Option<Result<Json<LifeEventBody>, ApiError>> {
    let index = keyed(caller.context, loaded)?;
    Some(match replay(loaded, index, again).await {
        Ok(()) => record_body(state, caller, id).await,
        Err(error) => Err(error),
    })
}

/// What a correction or a void answers once the registry decided it: the record as it stands
/// when the change was stored now (counted as `event_type`), or by a request with the same key
/// that ran at once (a retry, [`replay`]); a refusal otherwise, after [`overtaken`]'s second
/// look.
async fn settle(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    decided: Result<Stored, RegistryError>,
    event_type: &str,
    again: &impl Fn(&LifeEvent, NaiveDate) -> Result<LifeEventCommand, ApiError>,
) -> Result<Json<LifeEventBody>, ApiError> {
    match decided {
        Ok(Stored::New) => state.metrics.events_appended(event_type, 1),
        Ok(Stored::Before) => {
            let loaded = load_record(state, id).await?;
            let index =
                keyed(caller.context, &loaded).ok_or(RegistryError::IdempotencyKeyReused)?;
            replay(&loaded, index, again).await?;
        }
        Err(error) => return overtaken(state, caller, id, error, again).await,
    }
    record_body(state, caller, id).await
}

/// A correction or a void the registry refused as a conflict, as changing nothing, or as
/// coming after a void: with an `Idempotency-Key`, that may be this request's own first
/// attempt, committed after the handler's read and before the registry's (a client's retry
/// while the first attempt was slow). The record is read again: if the key is on it, the
/// request is answered as a retry ([`replay`]); else the refusal stands.
async fn overtaken(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    error: RegistryError,
    again: &impl Fn(&LifeEvent, NaiveDate) -> Result<LifeEventCommand, ApiError>,
) -> Result<Json<LifeEventBody>, ApiError> {
    let maybe_ours = caller.context.idempotency_key.is_some()
        && matches!(
            error,
            RegistryError::Conflict
                | RegistryError::Refused(DomainError::NothingChanged | DomainError::Voided)
        );
    if !maybe_ours {
        return Err(error.into());
    }
    let loaded = load_record(state, id).await?;
    let Some(index) = keyed(caller.context, &loaded) else {
        return Err(error.into());
    };
    replay(&loaded, index, again).await?;
    record_body(state, caller, id).await
}

/// The record `id` as it stands, with its procedures: what a correction or a void answers once
/// the change is stored (now, or by the request's first attempt). It is personal data (the
/// whole declaration, with what others changed since): its read is in the access log before it
/// is served, as `GET /v1/life-events/{id}`'s is. When it cannot be served for now (503: the
/// store or the access log away), the answer is 503 `stored_answer_unavailable`, which tells
/// the client that the change holds: read the record later (`GET /v1/life-events/{id}`), or,
/// with an `Idempotency-Key`, send the request again with it. (Until 2026-12-07 it was the
/// failed read's own 503, the same as a change not stored; a client retrying without a key then
/// got 422 `nothing_changed`.) Any other failure keeps its own answer.
async fn record_body(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<Json<LifeEventBody>, ApiError> {
    served_record(state, caller, id).await.map_err(|error| {
        if error.status != StatusCode::SERVICE_UNAVAILABLE {
            return error;
        }
        tracing::warn!(
            code = error.code,
            "a stored change's answer cannot be served"
        );
        let message = if caller.context.idempotency_key.is_some() {
            "the change is stored, but the record cannot be served now: read it later, or send \
             the request again with the same Idempotency-Key"
        } else {
            "the change is stored, but the record cannot be served now: read it later with \
             GET /v1/life-events/{id} (sending the change again would change nothing)"
        };
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stored_answer_unavailable",
            message,
        )
        .with_detail(format!("{}: {}", error.code, error.message))
    })
}

async fn served_record(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<Json<LifeEventBody>, ApiError> {
    let loaded = load_record(state, id).await?;
    let declaration = current_declaration(&loaded.state)?;
    let life_event_id = life_event_id(&loaded)?;
    let status = projections::life_event_status(&state.store, life_event_id).await?;
    let body = life_event_body(&loaded, declaration, status)?;
    let read = Read::new(
        ReadResource::LifeEvent { life_event_id },
        caller.purpose.clone(),
    )
    .naming(personal_ids_in(&body.declaration));
    record_read(state, caller.principal, caller.context.correlation_id, read).await?;
    Ok(Json(body))
}

/// The index of the record's event stored under this request's `Idempotency-Key`, if it has
/// one and the key was used on this record before ([`LoadedLifeEvent::keyed`]).
fn keyed(context: &RequestContext, loaded: &LoadedLifeEvent) -> Option<usize> {
    context
        .idempotency_key
        .as_deref()
        .and_then(|key| loaded.keyed(key))
}

/// A correction or a void whose `Idempotency-Key` stored `loaded.events[index]` before: the
/// request (`command`, built on the record as it stood before that event and on that event's
/// day) is decided again there. If that gives the stored event, the request is a retry and
/// stands as done (nothing is stored again); anything else (another kind of event, another
/// body, a request that would now be refused) is the key reused for another request: 422
/// `idempotency_key_reused`.
async fn replay(
    loaded: &LoadedLifeEvent,
    index: usize,
    command: &impl Fn(&LifeEvent, NaiveDate) -> Result<LifeEventCommand, ApiError>,
) -> Result<(), ApiError> {
    let reused = || ApiError::from(RegistryError::IdempotencyKeyReused);
    let stored = loaded.decoded(index)?.ok_or_else(reused)?;
    let recorded_on = match &stored {
        LifeEventEvent::LifeEventCorrected(corrected) => corrected.recorded_on,
        LifeEventEvent::LifeEventVoided(voided) => voided.recorded_on,
        LifeEventEvent::BirthRecorded(_) | LifeEventEvent::DeathRecorded(_) => return Err(reused()),
    };
    let mut before = loaded.state_before(index)?;
    let Ok(command) = command(&before, recorded_on) else {
        return Err(reused());
    };
    let sink: EventSink<LifeEvent> = EventSink::default();
    if before.handle(command, &(), &sink).await.is_err() {
        return Err(reused());
    }
    if sink.collect().await == [stored] {
        Ok(())
    } else {
        Err(reused())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

pub(crate) fn actor(principal: &Principal, context: &RequestContext) -> Actor {
    let office = match &principal.scope {
        Scope::Office(office) => Some(office.as_str().to_owned()),
        Scope::Agency(agency) => Some(agency.as_str().to_owned()),
        Scope::Unscoped => None,
    };
    Actor {
        id: principal.subject.clone(),
        role: principal.role,
        office,
        correlation_id: context.correlation_id,
        idempotency_key: context.idempotency_key.clone(),
    }
}

/// 403 when the body names a well-formed office other than the token's; a missing or
/// malformed office is left to validation (422).
fn check_office_scope(principal: &Principal, office: Option<&str>) -> Result<(), ApiError> {
    if let Some(office) = office.and_then(|raw| OfficeCode::parse(raw).ok()) {
        authorize(principal, Action::RecordLifeEvent, Target::Office(&office))?;
    }
    Ok(())
}

/// With an office list configured, a well-formed office missing from it is `unknown_office`.
fn check_known_office(state: &AppState, office: Option<&str>, errors: &mut ValidationErrors) {
    check_known_office_in(state.offices.as_deref(), office, "office", errors);
}

fn check_known_office_in(
    offices: Option<&std::collections::BTreeSet<String>>,
    office: Option<&str>,
    field: &str,
    errors: &mut ValidationErrors,
) {
    let (Some(offices), Some(office)) =
        (offices, office.and_then(|raw| OfficeCode::parse(raw).ok()))
    else {
        return;
    };
    if !offices.contains(office.as_str()) {
        errors.push(FieldError::new(
            field,
            "unknown_office",
            "is not a registry office of the reference data",
        ));
    }
}

/// A follow-up procedure the rules cannot decide for this date of death (their parameters
/// begin later) is refused, naming `procedures`: `death-followups` would fail on the record as
/// a whole, residence deregistration included (until 2026-12-07 it was taken, and did). The
/// registrar leaves it out; the agency decides such a case by hand.
fn check_decidable(
    decidable_from: &BTreeMap<ProcedureId, NaiveDate>,
    death: &DeathDeclaration,
    errors: &mut ValidationErrors,
) {
    let died = death.death.date();
    for procedure in &death.procedures {
        if let Some(from) = decidable_from.get(procedure).filter(|from| died < **from) {
            errors.push(FieldError::new(
                "procedures",
                "not_decidable",
                format!(
                    "{procedure} cannot be decided for a death before {from} (the rules' \
                     parameters begin then): leave it out and have the agency decide it"
                ),
            ));
        }
    }
}

fn recorded_response(state: &AppState, recorded: Recorded, event_type: &str) -> Response {
    tracing::Span::current().record("life_event_id", recorded.life_event_id.to_string());
    if !recorded.replayed {
        state.metrics.events_appended(event_type, 1);
    }
    let location = format!("/v1/life-events/{}", recorded.life_event_id);
    let body = RecordedBody {
        life_event_id: recorded.life_event_id,
        reference: recorded.reference.to_string(),
        position: recorded.position.0,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn load_record(state: &AppState, id: &str) -> Result<LoadedLifeEvent, ApiError> {
    let life_event_id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("life event"))?;
    state
        .registry
        .load(life_event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("life event"))
}

fn current_declaration(state: &LifeEvent) -> Result<&Declaration, ApiError> {
    state
        .declaration
        .as_ref()
        .ok_or_else(|| ApiError::not_found("life event"))
}

fn life_event_id(loaded: &LoadedLifeEvent) -> Result<Uuid, ApiError> {
    loaded
        .state
        .life_event_id
        .ok_or_else(|| ApiError::not_found("life event"))
}

fn check_expected_version(loaded: &LoadedLifeEvent, expected: Option<i64>) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != loaded.version.0 => Err(ApiError::conflict(
            "concurrent_change",
            "the record has changed since the expected version; read it again and retry",
        )),
        _ => Ok(()),
    }
}

fn required_reason(errors: &mut ValidationErrors, reason: Option<String>) -> Option<String> {
    match reason {
        Some(reason) if !reason.trim().is_empty() => Some(reason),
        _ => {
            errors.push(FieldError::required("reason"));
            None
        }
    }
}

/// The declaration after merging `changes` over the current one, checked like a new one at
/// `now`; field errors are named `changes.<path>`.
fn corrected_declaration(
    current: &LifeEvent,
    changes: &Value,
    now: DateTime<Utc>,
    offices: Option<&std::collections::BTreeSet<String>>,
    decidable_from: &BTreeMap<ProcedureId, NaiveDate>,
) -> Result<Declaration, ApiError> {
    let declaration = current
        .declaration
        .as_ref()
        .ok_or_else(|| ApiError::not_found("life event"))?;
    let mut merged = match declaration {
        Declaration::Birth(birth) => serde_json::to_value(birth),
        Declaration::Death(death) => serde_json::to_value(death),
    }
    .map_err(|error| ApiError::unavailable(error.to_string()))?;
    // Stored, not declared: not part of the recording body.
    if let Some(death) = merged.get_mut("death").and_then(Value::as_object_mut) {
        death.remove("time_known");
    }
    merge_patch(&mut merged, changes);
    let bytes =
        serde_json::to_vec(&merged).map_err(|error| ApiError::unavailable(error.to_string()))?;
    let prefixed = |error: ApiError| {
        let mut renamed = ApiError::new(error.status, error.code, error.message.clone());
        for (field, problem) in &error.fields {
            renamed = renamed.with_field(
                format!("changes.{field}"),
                &problem.code,
                problem.message.clone(),
            );
        }
        renamed
    };
    let mut errors;
    let result = match declaration {
        Declaration::Birth(_) => {
            let body: BirthBody = parse_json(&bytes).map_err(prefixed)?;
            let input = BirthDeclarationInput::from(body);
            errors = ValidationErrors::default();
            check_known_office_in(offices, input.office.as_deref(), "office", &mut errors);
            parse_birth(&input, vietnam_date(now)).map(Declaration::Birth)
        }
        Declaration::Death(current) => {
            let body: DeathBody = parse_json(&bytes).map_err(prefixed)?;
            let input = DeathDeclarationInput::from(body);
            errors = ValidationErrors::default();
            check_known_office_in(offices, input.office.as_deref(), "office", &mut errors);
            parse_death(&input, now).map(|mut corrected| {
                // A death recorded with its date only (schema v1, upcast to midnight with
                // `time_known: false`) keeps that unless the correction gives a time of death:
                // the body cannot carry the flag, and a parsed `at` counts as known.
                if !current.death.time_known && corrected.death.at == current.death.at {
                    corrected.death.time_known = false;
                }
                check_decidable(decidable_from, &corrected, &mut errors);
                Declaration::Death(corrected)
            })
        }
    };
    match result {
        Ok(declaration) if errors.is_empty() => Ok(declaration),
        Ok(_) => Err(ApiError::validation_under(&errors, "changes.")),
        Err(mut parse_errors) => {
            parse_errors.0.extend(errors.0);
            Err(ApiError::validation_under(&parse_errors, "changes."))
        }
    }
}

/// The personal ID number assigned to the child of the birth record `life_event_id` (by
/// `birth-followups`, once the registration completed), from its stored `PersonalIdAssigned`.
fn child_number(
    life_event_id: Uuid,
    recorded: &RecordedEvent,
) -> Result<PersonalIdAssigned, ApiError> {
    decode_assignment(life_event_id, recorded).map_err(|_| {
        ApiError::unavailable(format!(
            "the child's number of life event {life_event_id} cannot be read"
        ))
    })
}

/// A child's number encodes the century and sex (digit 4) and the year of birth (digits 5-6)
/// it was assigned for. A correction that changes them needs the number re-established (a
/// new one assigned, the old one cancelled), which Lifeline does not do yet: it is refused,
/// naming the field, instead of leaving the child with a number that contradicts the record.
fn check_child_number(
    assigned: &PersonalIdAssigned,
    birth: &BirthDeclaration,
) -> Result<(), ApiError> {
    let child = &birth.child;
    if assigned
        .personal_id
        .check_holder(Some(child.date_of_birth), Some(child.sex))
        .is_ok()
    {
        return Ok(());
    }
    let field = if child.sex == assigned.sex {
        "changes.child.date_of_birth"
    } else {
        "changes.child.sex"
    };
    let mut errors = ValidationErrors::default();
    errors.push(FieldError::new(
        field,
        "personal_id_assigned",
        format!(
            "the child already has personal ID number {}, which encodes the sex and year of \
             birth it was assigned for; changing them needs a new number, which Lifeline cannot \
             assign to an existing record: void the record and record the birth again",
            assigned.personal_id.as_str()
        ),
    ));
    Err(ApiError::validation(&errors))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn life_event_body(
    loaded: &LoadedLifeEvent,
    declaration: &Declaration,
    status: Option<projections::LifeEventStatusRow>,
) -> Result<LifeEventBody, ApiError> {
    let state = &loaded.state;
    let life_event_id = life_event_id(loaded)?;
    let group = declaration.group();
    let procedures = group
        .procedures()
        .iter()
        .map(|procedure| {
            let row = status
                .as_ref()
                .and_then(|status| status.procedure(*procedure));
            procedure_body(*procedure, declaration, row)
        })
        .collect();
    let declaration_json = match declaration {
        Declaration::Birth(birth) => serde_json::to_value(birth),
        Declaration::Death(death) => serde_json::to_value(death),
    }
    .map_err(|error| ApiError::unavailable(error.to_string()))?;
    Ok(LifeEventBody {
        life_event_id,
        kind: group_name(group).to_owned(),
        reference: state
            .reference
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        office: declaration.office().to_string(),
        recorded_on: state.recorded_on.unwrap_or_default(),
        late: state.late,
        voided: state.voided,
        corrections: state.corrections,
        version: loaded.version.0,
        declaration: declaration_json,
        procedures,
        history: loaded
            .events
            .iter()
            .map(|event| HistoryEntry {
                version: event.stream_version.0,
                position: event.global_position.0,
                event_type: event.event_type.clone(),
                recorded_at: event.metadata.recorded_at,
                actor: event.metadata.actor.clone(),
            })
            .collect(),
    })
}

pub(crate) fn group_name(group: ProcedureGroup) -> &'static str {
    match group {
        ProcedureGroup::Birth => "birth",
        ProcedureGroup::Death => "death",
    }
}

/// A procedure as the status projection has it; before the projection has caught up, chosen
/// procedures are `pending` and the others `not-chosen`.
fn procedure_body(
    procedure: ProcedureId,
    declaration: &Declaration,
    row: Option<&projections::ProcedureStatusRow>,
) -> ProcedureBody {
    match row {
        Some(row) => ProcedureBody {
            procedure: procedure.as_str().to_owned(),
            agency: procedure.agency().as_str().to_owned(),
            state: row.state.as_str().to_owned(),
            task_id: row.task_id,
            opened_at: row.opened_at,
            closed_at: row.closed_at,
            due_at: row.due_at,
            overdue: row.overdue,
            detail: row.detail.clone(),
        },
        None => ProcedureBody {
            procedure: procedure.as_str().to_owned(),
            agency: procedure.agency().as_str().to_owned(),
            state: if declaration.procedures().contains(&procedure) {
                ProcedureState::Pending.as_str().to_owned()
            } else {
                ProcedureState::NotChosen.as_str().to_owned()
            },
            task_id: None,
            opened_at: None,
            closed_at: None,
            due_at: None,
            overdue: false,
            detail: None,
        },
    }
}
