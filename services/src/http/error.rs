//! `ApiError`: every refusal and fault of the HTTP API as one stable JSON body,
//! `{ "error": { "code", "message", "fields" } }`, logged once, where it becomes a response.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lifeline_model::error::DomainError;
use lifeline_model::validation::{FieldError, ValidationErrors};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Forbidden, TokenError};
use crate::registry::RegistryError;

/// An error answer of the API. `detail` is for the log only, never sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// JSON path -> what is wrong there.
    pub fields: BTreeMap<String, FieldProblem>,
    detail: Option<String>,
}

/// One offending field: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub code: String,
    pub message: String,
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`validation_failed`, `unauthorized`...).
    pub code: String,
    /// A human message, lowercase, no internals.
    pub message: String,
    /// JSON path of each offending field -> message (empty when no field is at fault).
    pub fields: BTreeMap<String, String>,
    /// JSON path of each offending field -> a stable code (`required`, `unknown_province`...).
    pub field_codes: BTreeMap<String, String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: BTreeMap::new(),
            detail: None,
        }
    }

    /// Adds what the log should know (never sent to the client).
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    #[must_use]
    pub fn with_field(
        mut self,
        field: impl Into<String>,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        self.push_field(field.into(), code, message.into());
        self
    }

    fn push_field(&mut self, field: String, code: &str, message: String) {
        match self.fields.get_mut(&field) {
            Some(problem) => {
                problem.message.push_str("; ");
                problem.message.push_str(&message);
            }
            None => {
                self.fields.insert(
                    field,
                    FieldProblem {
                        code: code.to_owned(),
                        message,
                    },
                );
            }
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// A fault of the store (or anything operational): 503, retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the service cannot reach its store; retry later",
        )
        .with_detail(detail)
    }

    /// 422 naming every offending field.
    pub fn validation(errors: &ValidationErrors) -> Self {
        Self::validation_under(errors, "")
    }

    /// 422 naming every offending field, each under `prefix` (`changes.` + field).
    pub fn validation_under(errors: &ValidationErrors, prefix: &str) -> Self {
        let mut error = Self::unprocessable("validation_failed", "some fields are not valid");
        for FieldError {
            field,
            code,
            message,
        } in &errors.0
        {
            error.push_field(format!("{prefix}{field}"), code, message.clone());
        }
        error
    }

    /// The answer for a response of `status` produced outside the handlers (unknown route,
    /// wrong method, timeout, a layer's limit).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "the body must be application/json",
            ),
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "a valid bearer token is required"),
            StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
            status if status.is_server_error() => ("internal", "the service failed; retry later"),
            _ => ("bad_request", "the request is not valid"),
        };
        Self::new(status, code, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                fields: self
                    .fields
                    .iter()
                    .map(|(field, problem)| (field.clone(), problem.message.clone()))
                    .collect(),
                field_codes: self
                    .fields
                    .iter()
                    .map(|(field, problem)| (field.clone(), problem.code.clone()))
                    .collect(),
            },
        }
    }
}

/// A field path as it may be logged. The path of an unknown field ends in the client's own key,
/// and the path to malformed JSON may run through keys of free-form objects (a correction's
/// `changes`): any text, a person's name included, dots too (so no prefix of such a path is
/// safe to keep). Those are logged by their code alone; the answer still names them.
fn loggable_field(field: &str, code: &str) -> String {
    match code {
        "unknown_field" => "<unknown field>".to_owned(),
        "malformed_json" => "$".to_owned(),
        _ => field.to_owned(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged once, here. Field paths and codes only: messages may quote personal data, and
        // so may a refusal's detail (serde quotes the values it refuses) and the keys a client
        // made up (see `loggable_field`).
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(field, problem)| loggable_field(field, &problem.code))
            .collect();
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, detail = ?self.detail, "request failed");
        } else {
            let has_detail = self.detail.is_some();
            tracing::info!(
                status = self.status.as_u16(),
                code = self.code,
                ?fields,
                has_detail,
                "request refused"
            );
        }
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Expired => Self::unauthorized("token_expired", "the token has expired"),
            TokenError::Signing => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the service failed; retry later",
            ),
            other => Self::unauthorized("invalid_token", "the token is not valid")
                .with_detail(other.to_string()),
        }
    }
}

impl From<Forbidden> for ApiError {
    fn from(error: Forbidden) -> Self {
        let code = match error {
            Forbidden::Role => "forbidden_role",
            Forbidden::Scope => "forbidden_scope",
        };
        Self::new(StatusCode::FORBIDDEN, code, error.to_string())
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Invalid(errors) => Self::validation(&errors),
            DomainError::ClaimedByOther { .. } => {
                // Who holds it is not the caller's business beyond "someone else".
                Self::conflict("claimed_by_other", "the task is claimed by another officer")
            }
            DomainError::TaskClosed { .. } => Self::conflict(error.code(), error.to_string()),
            DomainError::AlreadyRecorded | DomainError::TaskAlreadyCreated => {
                Self::conflict(error.code(), error.to_string())
            }
            DomainError::NotRecorded | DomainError::TaskNotCreated => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            DomainError::OutcomeNotForProcedure { .. }
            | DomainError::OutcomeNotForReversal { .. } => Self::unprocessable(
                error.code(),
                error.to_string(),
            )
            .with_field("outcome.kind", error.code(), error.to_string()),
            other => Self::unprocessable(other.code(), other.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Invalid(errors) => Self::validation(&errors),
            RegistryError::Refused(refusal) => refusal.into(),
            RegistryError::Conflict => Self::conflict(
                "concurrent_change",
                "the resource was changed concurrently; read it again and retry",
            ),
            RegistryError::NotFound(_) => Self::not_found("life event"),
            RegistryError::IdempotencyKeyReused => Self::unprocessable(
                "idempotency_key_reused",
                "this idempotency key was used for a different request",
            ),
            RegistryError::Fault(detail) => Self::unavailable(detail),
        }
    }
}

impl From<lifeline_store::StoreError> for ApiError {
    fn from(error: lifeline_store::StoreError) -> Self {
        Self::unavailable(error.to_string())
    }
}

impl From<lifeline_store::projections::ProjectionError> for ApiError {
    fn from(error: lifeline_store::projections::ProjectionError) -> Self {
        Self::unavailable(error.to_string())
    }
}
