//! The auditors' tamper-evidence routes: `GET /v1/audit/verify` (the whole log checked, the
//! first bad position named) and `GET /v1/audit/proof/{event_id}` (an inclusion proof to check
//! offline with `lifeline verify-proof`). The keyring is read from the key directory on each
//! request, so a rotated key is picked up without a restart.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use lifeline_model::integrity::InclusionProof;
use lifeline_model::system_events::ReadResource;
use lifeline_store::{ProofLookup, VerifyReport};
use tracing::instrument;
use uuid::Uuid;

use super::access::{self, record_read, Read};
use super::error::{ApiError, ErrorBody};
use super::extract::RequestContext;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};
use crate::keys;

fn keyring() -> Result<lifeline_model::integrity::Keyring, ApiError> {
    keys::load_keyring(&keys::keyring_file(&keys::key_dir()))
        .map_err(|error| ApiError::unavailable(format!("{error:#}")))
}

/// `GET /v1/audit/verify`: 200 with the report, whether or not the log is intact (the report's
/// `first_bad` says).
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "the verification report: events and seals checked, the first bad position in commit order if any"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 503, description = "store or keyring unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<VerifyReport>, ApiError> {
    authorize(&principal, Action::ReadLog, Target::Nothing)?;
    let keyring = keyring()?;
    let mut report = lifeline_store::verify(&state.store, &keyring).await?;
    if let Some(bad) = &mut report.first_bad {
        // A reason can name a stream `person-<personal ID number>`: the number goes neither to
        // the logs nor to this answer, which is not a logged read (the position locates it).
        bad.reason = mask_personal_ids(&bad.reason);
        tracing::error!(global_position = bad.global_position, reason = %bad.reason, "the log failed verification");
    }
    Ok(Json(report))
}

/// `text` with every run of exactly 12 digits (a personal ID number's shape) masked.
fn mask_personal_ids(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, masked: &mut String| {
        if digits.len() == 12 {
            masked.push_str("************");
        } else {
            masked.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut masked);
            masked.push(c);
        }
    }
    flush(&mut digits, &mut masked);
    masked
}

#[cfg(test)]
mod tests {
    use super::mask_personal_ids;

    #[test]
    fn personal_id_numbers_are_masked_and_other_numbers_kept() {
        assert_eq!(
            mask_personal_ids("stream person-079190001234 version 3 after 1234567890123"),
            "stream person-************ version 3 after 1234567890123"
        );
        assert_eq!(mask_personal_ids("079190001234"), "************");
    }
}

/// `GET /v1/audit/proof/{event_id}`: 404 for an unknown event, 409 `not_sealed` for one no
/// seal covers yet. The proof carries the event's payload: like every audit read it needs
/// `X-Purpose` and is recorded in the access log (as a read of the event's stream).
#[utoipa::path(
    get, path = "/v1/audit/proof/{event_id}", tag = "audit",
    params(
        ("event_id" = Uuid, Path, description = "the event to prove"),
        ("X-Purpose" = String, Header, description = "why the proof is read"),
    ),
    responses(
        (status = 200, description = "the inclusion proof: the event, its leaf index, the audit path and the signed seal; check it offline with `lifeline verify-proof`"),
        (status = 400, description = "no X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 404, description = "no such event", body = ErrorBody),
        (status = 409, description = "no seal covers the event yet", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all, fields(event_id = %event_id))]
pub async fn proof(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Result<Json<InclusionProof>, ApiError> {
    authorize(&principal, Action::ReadLog, Target::Nothing)?;
    let purpose = access::purpose(&principal, &headers)?;
    // A path that is no event id names no event: 404, as for records and tasks (axum's own
    // rejection of a `Path<Uuid>` was a 400 that named no field, before the checks above).
    let event_id = Uuid::parse_str(&event_id).map_err(|_| ApiError::not_found("event"))?;
    match lifeline_store::inclusion_proof(&state.store, event_id).await? {
        ProofLookup::Proof(proof) => {
            let stream_id = proof.event.stream_id.clone();
            record_read(
                &state,
                &principal,
                context.correlation_id,
                Read::new(ReadResource::Stream { stream_id }, purpose),
            )
            .await?;
            Ok(Json(*proof))
        }
        ProofLookup::NotSealed => Err(ApiError::conflict(
            "not_sealed",
            "the event is not sealed yet; retry after the next seal",
        )),
        ProofLookup::NoSuchEvent => Err(ApiError::not_found("event")),
    }
}
