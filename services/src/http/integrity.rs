//! The auditors' tamper-evidence routes: `GET /v1/audit/verify` (the whole log checked, the
//! first bad position named), `GET /v1/audit/seals/head` (the newest seal, to keep outside the
//! database) and `POST /v1/audit/verify` (the check, also against seals kept that way), and
//! `GET /v1/audit/proof/{event_id}` (an inclusion proof to check offline with
//! `lifeline verify-proof`). The keyring is read from the key directory on each
//! request, so a rotated key is picked up without a restart.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use lifeline_model::integrity::{InclusionProof, Seal};
use lifeline_model::system_events::ReadResource;
use lifeline_store::{ProofLookup, VerifyReport};
use tracing::instrument;
use uuid::Uuid;

use super::access::{self, record_read, Read};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, RequestContext};
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
    verified(&state, &keyring, &[]).await
}

/// The body of `POST /v1/audit/verify`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Seals kept outside the database (answers of `GET /v1/audit/seals/head` saved earlier,
    /// or lines of the sealer's anchor file), each compared with the log's seal of its number.
    #[schema(value_type = Vec<Object>)]
    pub anchors: Vec<Seal>,
}

/// The most anchors one request may carry: the newest anchor alone vouches for every seal
/// before it (the seals chain by hash); older ones tell from where the log changed.
pub const MAX_ANCHORS: usize = 1_000;

/// The body limit of `POST /v1/audit/verify`: [`MAX_ANCHORS`] seals of about 600 bytes.
pub const VERIFY_BODY_LIMIT: usize = 1024 * 1024;

/// `POST /v1/audit/verify`: the check of `GET /v1/audit/verify`, also comparing the given
/// anchors with the log's seals: a seal gone or made again (the only trace of seals deleted and
/// re-signed over rewritten events) is the report's `first_bad`. An anchor whose own hash or
/// signature does not hold is refused (422 naming it), not reported against the log.
#[utoipa::path(
    post, path = "/v1/audit/verify", tag = "audit",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "the verification report, `anchors_checked` counting the anchors compared; `first_bad` names the start of an anchored seal the log no longer holds as anchored"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 413, description = "a body over 1 MiB", body = ErrorBody),
        (status = 422, description = "an anchor that is no seal, or whose hash or signature does not hold with the keyring (`anchors[i]`), or more than 1,000 anchors", body = ErrorBody),
        (status = 503, description = "store or keyring unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn verify_anchored(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyReport>, ApiError> {
    authorize(&principal, Action::ReadLog, Target::Nothing)?;
    if body.anchors.len() > MAX_ANCHORS {
        return Err(
            ApiError::unprocessable("validation_failed", "too many anchors").with_field(
                "anchors",
                "too_many",
                format!("at most {MAX_ANCHORS}"),
            ),
        );
    }
    let keyring = keyring()?;
    for (index, anchor) in body.anchors.iter().enumerate() {
        lifeline_store::check_anchor(anchor, &keyring).map_err(|problem| {
            ApiError::unprocessable("validation_failed", "an anchor does not hold").with_field(
                format!("anchors[{index}]"),
                "invalid_anchor",
                problem,
            )
        })?;
    }
    verified(&state, &keyring, &body.anchors).await
}

/// The log checked against `anchors`; a finding is logged as an error, its reason masked.
async fn verified(
    state: &AppState,
    keyring: &lifeline_model::integrity::Keyring,
    anchors: &[Seal],
) -> Result<Json<VerifyReport>, ApiError> {
    let mut report = lifeline_store::verify_anchored(&state.store, keyring, anchors).await?;
    if let Some(bad) = &mut report.first_bad {
        // A reason can name a stream `person-<personal ID number>`: the number goes neither to
        // the logs nor to this answer, which is not a logged read (the position locates it).
        bad.reason = mask_personal_ids(&bad.reason);
        tracing::error!(global_position = bad.global_position, reason = %bad.reason, "the log failed verification");
    }
    Ok(Json(report))
}

/// `GET /v1/audit/seals/head`: the newest seal (signed by the node key), for an auditor to keep
/// outside the database and give back to `POST /v1/audit/verify` (or `lifeline verify
/// --anchor`) later. 404 `no_seal` while nothing is sealed.
#[utoipa::path(
    get, path = "/v1/audit/seals/head", tag = "audit",
    responses(
        (status = 200, description = "the newest seal: its number, range, Merkle root, link to the seal before, hash, key id and signature"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 404, description = "`no_seal`: nothing sealed yet", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn seal_head(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Seal>, ApiError> {
    authorize(&principal, Action::ReadLog, Target::Nothing)?;
    lifeline_store::integrity::last_seal(&state.store)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "no_seal",
                "nothing is sealed yet; retry after the next seal",
            )
        })
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
            // The proof shows the event's payload: the read names every number in it, as a
            // read of the stream does (until 2026-12-07 it named none, and was in no
            // person's access history unless the registry linked the person to the stream).
            let named: Vec<_> = access::personal_ids_in(&proof.event.payload)
                .into_iter()
                .chain(access::personal_id_of_stream(&proof.event.stream_id))
                .collect();
            let stream_id = proof.event.stream_id.clone();
            record_read(
                &state,
                &principal,
                context.correlation_id,
                Read::new(ReadResource::Stream { stream_id }, purpose).naming(named),
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
