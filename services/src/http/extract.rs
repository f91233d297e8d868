//! Extractors that answer in the API's error format: the JSON body ([`ApiJson`], naming the
//! field serde stopped at), the caller ([`Principal`] from the bearer token), the request's
//! context ([`RequestContext`]: request and correlation ids, idempotency key).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// A JSON body: 415 unless `application/json`, 413 over the body limit, 400 when it is not
/// JSON, 422 naming the field when a value has the wrong type or a field is unknown.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
                    } else {
                        ApiError::bad_request(
                            "unreadable_body",
                            "the request body could not be read",
                        )
                        .with_detail(rejection.body_text())
                    }
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the offending field the way serde found it. The body is one
/// JSON value: anything but whitespace after it is malformed (until 2026-12-07 it was ignored:
/// `{...}{...}` recorded the first document and dropped the second). A repeated key is named
/// where it is (`duplicate_field`), not at the object holding it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |field: String, inner: &serde_json::Error| {
        let position = format!("line {} column {}", inner.line(), inner.column());
        ApiError::bad_request("malformed_json", "the body is not valid JSON").with_field(
            if field.is_empty() {
                "$".to_owned()
            } else {
                field
            },
            "malformed_json",
            format!("not valid JSON at {position}"),
        )
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let field = if path == "." { String::new() } else { path };
        match inner.classify() {
            serde_json::error::Category::Data => {
                // serde's message names types and fields, never values.
                let message = data_message(&inner.to_string());
                let duplicate = message
                    .strip_prefix("duplicate field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                let (field, code) = match duplicate {
                    Some(name) if field.is_empty() => (name, "duplicate_field"),
                    Some(name) => (format!("{field}.{name}"), "duplicate_field"),
                    None if message.starts_with("unknown field") => (field, "unknown_field"),
                    None => (field, "invalid_type"),
                };
                let field = if field.is_empty() {
                    "$".to_owned()
                } else {
                    field
                };
                ApiError::unprocessable(
                    "invalid_field",
                    "a field has the wrong type or is not expected",
                )
                .with_field(field, code, message)
            }
            _ => malformed(field, &inner),
        }
    })?;
    deserializer
        .end()
        .map_err(|inner| malformed(String::new(), &inner))?;
    Ok(value)
}

/// serde_json's message without its " at line L column C" suffix.
fn data_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing_token",
                "an Authorization: Bearer token is required",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_token",
                    "the Authorization header is not a bearer token",
                )
            })?;
        let principal = state.verifier.verify(token)?;
        tracing::Span::current().record("subject", principal.subject.as_str());
        Ok(principal)
    }
}

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// The ids a request carries: its request id (`x-request-id`, set by the request-id layer),
/// its correlation id (`x-correlation-id` if it is a UUID, else the request id if that is one,
/// else new), and the client's `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: Uuid,
    pub idempotency_key: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header_text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
        };
        let request_id = header_text("x-request-id").unwrap_or_default().to_owned();
        let correlation_id = header_text("x-correlation-id")
            .and_then(|value| Uuid::parse_str(value).ok())
            .or_else(|| Uuid::parse_str(&request_id).ok())
            .unwrap_or_else(Uuid::now_v7);
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let key = value
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|key| {
                        !key.is_empty()
                            && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS
                            && key.bytes().all(|b| b.is_ascii_graphic())
                    })
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_idempotency_key",
                            "Idempotency-Key must be 1 to 200 visible ASCII characters",
                        )
                        .with_field(
                            "Idempotency-Key",
                            "invalid",
                            "1 to 200 visible ASCII characters",
                        )
                    })?;
                Some(key.to_owned())
            }
        };
        Ok(Self {
            request_id,
            correlation_id,
            idempotency_key,
        })
    }
}
