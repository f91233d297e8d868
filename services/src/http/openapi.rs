//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` and the payload types'
//! `ToSchema`; served at `/openapi.json` and committed as `services/openapi.json` (a test fails
//! when the two differ).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    access, agency, audit, citizen, connectors, deliveries, error, integrity, ops, policies,
    registrar,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeline API",
        description = "Record a life event once; every linked procedure follows. Errors are \
            `{ \"error\": { \"code\", \"message\", \"fields\", \"field_codes\" } }`.",
        version = "1"
    ),
    paths(
        registrar::record_birth,
        registrar::record_death,
        registrar::get_life_event,
        registrar::correct_life_event,
        registrar::void_life_event,
        agency::list_tasks,
        agency::get_task,
        agency::claim_task,
        agency::complete_task,
        agency::reject_task,
        connectors::callback,
        audit::events,
        audit::stream,
        audit::person_timeline,
        audit::replay,
        audit::export,
        access::access_log,
        integrity::verify,
        integrity::verify_anchored,
        integrity::seal_head,
        integrity::proof,
        citizen::status,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        policies::failed,
        policies::retry,
        deliveries::failed,
        deliveries::retry,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "registrar", description = "record, read, correct and void life events"),
        (name = "agency", description = "inboxes and task commands"),
        (name = "audit", description = "read-only history, replay and export; X-Purpose required"),
        (name = "citizen", description = "status by reference, through the portal"),
        (name = "operations", description = "health, readiness, metrics; failed policy runs and connector deliveries, and their retry"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as pretty JSON with a trailing newline (the committed form).
pub fn openapi_pretty_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
