//! Auditor routes, read-only: the whole log in commit order (paged by an opaque cursor), one
//! stream's history, a person's timeline, a replay of the person registry and life-event status
//! as of a moment, and an NDJSON export. Every route reads personal data, so every request
//! names its purpose in `X-Purpose` (400 without it), and every answered read is recorded in the
//! access log (`super::access`) before it is served.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use lifeline_model::envelope::{LogCursor, RecordedEvent, StreamId};
use lifeline_model::system_events::ReadResource;
use lifeline_model::validation::{FieldError, ValidationErrors};
use lifeline_model::values::PersonalId;
use lifeline_store::EventStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::{
    self, personal_id_of_stream, personal_ids_in, reads_of_person, record_read, AccessEntry,
    PersonRefs, Read, ACCESS_EVENT_TYPE,
};
use super::error::{ApiError, ErrorBody};
use super::extract::RequestContext;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};
use crate::replay::{replay_until, ReplayError, ReplayView};

/// The header naming why an auditor reads personal data.
pub const PURPOSE_HEADER: &str = "x-purpose";
/// The longest purpose accepted.
pub const MAX_PURPOSE_CHARS: usize = 500;
/// The longest page of `GET /v1/audit/events`.
pub const MAX_EVENTS_PAGE: usize = 1_000;
/// Events read per batch by the export and the timeline scan.
const READ_BATCH: usize = 1_000;
/// How long an export waits for the log to be readable up to its own access-log entry (a
/// transaction older than the entry still running) before it stops with an error.
const EXPORT_END_WAIT: Duration = Duration::from_secs(10);
const EXPORT_END_POLL: Duration = Duration::from_millis(20);

/// One event of the log, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub global_position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Actor, role, office, correlation and causation ids, recorded_at, idempotency key.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

impl From<&RecordedEvent> for AuditEvent {
    fn from(event: &RecordedEvent) -> Self {
        Self {
            global_position: event.global_position.0,
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version.0,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            recorded_at: event.metadata.recorded_at,
            payload: event.payload.to_value(),
            metadata: serde_json::to_value(&event.metadata).unwrap_or(Value::Null),
        }
    }
}

/// `GET /v1/audit/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The `next_cursor` of the previous page; absent for the start of the log.
    pub cursor: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<String>,
}

/// One page of the log in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<AuditEvent>,
    /// Where the next page starts (after the last event of this one; the request's cursor when
    /// this page is empty). Fewer events than `limit` means "caught up for now".
    pub next_cursor: Option<String>,
}

/// One stream's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamHistory {
    pub stream_id: String,
    pub version: i64,
    pub events: Vec<AuditEvent>,
}

/// `GET /v1/audit/persons/{pin}/timeline`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// `true`: scan the whole log instead of following the person registry's links.
    pub scan: Option<bool>,
}

/// Every event naming a person, in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    pub personal_id: String,
    /// `registry` (the person's streams, life events and their tasks, from the person
    /// registry) or `scan` (the whole log).
    pub source: String,
    pub events: Vec<AuditEvent>,
    /// Who read this person's data (the reads naming the number, or a life event or task of
    /// the person, and the pages of the log, exports and replays that held one of the person's
    /// events), in commit order; found by scanning the log: O(log).
    pub accesses: Vec<AccessEntry>,
}

/// `GET /v1/audit/replay`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// RFC 3339; only events recorded before it are replayed.
    pub as_of: Option<String>,
}

/// The person registry and life-event status as of a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayBody {
    pub as_of: DateTime<Utc>,
    #[serde(flatten)]
    pub view: ReplayView,
}

/// `GET /v1/audit/export`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Start after this cursor (a `next_cursor` of `/v1/audit/events`); absent: the start.
    pub cursor: Option<String>,
    /// RFC 3339: stop at the first event recorded at or after it.
    pub until: Option<String>,
}

/// The log in commit order, one page at a time.
#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit",
    params(EventsQuery, ("X-Purpose" = String, Header, description = "why the log is read")),
    responses(
        (status = 200, description = "one page in commit order", body = EventsPage),
        (status = 400, description = "no X-Purpose, or a query string that does not parse", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 422, description = "bad cursor or limit, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`), each named", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let purpose = audit_access(&principal, Action::ReadLog, &headers, "events")?;
    let Query(query) = query.map_err(malformed_query)?;
    let mut errors = ValidationErrors::default();
    let after = query
        .cursor
        .as_deref()
        .and_then(|raw| errors.take(decode_cursor(raw)));
    let limit = page_limit(query.limit.as_deref(), MAX_EVENTS_PAGE, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(&errors));
    }
    let events = state
        .store
        .read_all(after.unwrap_or(LogCursor::START), limit)
        .await?;
    let next_cursor = match events.last() {
        Some(last) => Some(encode_cursor(last.cursor())),
        None => after.map(encode_cursor),
    };
    let resource = ReadResource::LogPage {
        after,
        last: events.last().map(RecordedEvent::cursor),
        events: events.len() as u64,
    };
    record_read(
        &state,
        &principal,
        context.correlation_id,
        Read::new(resource, purpose),
    )
    .await?;
    Ok(Json(EventsPage {
        events: events.iter().map(AuditEvent::from).collect(),
        next_cursor,
    }))
}

/// Every event of one stream, in version order.
#[utoipa::path(
    get, path = "/v1/audit/streams/{stream_id}", tag = "audit",
    params(("stream_id" = String, Path, description = "e.g. birth-<uuid>, task-<uuid>, person-<pin>"),
           ("X-Purpose" = String, Header, description = "why the stream is read")),
    responses(
        (status = 200, description = "the stream's history", body = StreamHistory),
        (status = 400, description = "no X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 404, description = "no such stream", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(stream_id): Path<String>,
) -> Result<Json<StreamHistory>, ApiError> {
    let purpose = audit_access(&principal, Action::ReadLog, &headers, "stream")?;
    let stream_id = StreamId::parse(stream_id).map_err(|_| ApiError::not_found("stream"))?;
    let events = state.store.read_stream(&stream_id).await?;
    let Some(last) = events.last() else {
        return Err(ApiError::not_found("stream"));
    };
    let read = Read::new(
        ReadResource::Stream {
            stream_id: stream_id.to_string(),
        },
        purpose,
    )
    .naming(
        events
            .iter()
            .flat_map(|event| personal_ids_in(&event.payload))
            .chain(personal_id_of_stream(stream_id.as_str())),
    );
    record_read(&state, &principal, context.correlation_id, read).await?;
    Ok(Json(StreamHistory {
        stream_id: stream_id.to_string(),
        version: last.stream_version.0,
        events: events.iter().map(AuditEvent::from).collect(),
    }))
}

/// Every event naming a personal ID number, across all streams, in commit order.
///
/// By default it follows the person registry: the `person-<pin>` stream, the streams of every
/// life event the registry links to the person, and the streams of those life events' tasks
/// (O(events of those streams)). A person the registry does not know, or `?scan=true`, scans
/// the whole log (O(log): seconds to minutes at national scale; use sparingly).
#[utoipa::path(
    get, path = "/v1/audit/persons/{pin}/timeline", tag = "audit",
    params(("pin" = String, Path, description = "the 12-digit personal ID number"), TimelineQuery,
           ("X-Purpose" = String, Header, description = "why the person's history is read")),
    responses(
        (status = 200, description = "the events naming the person", body = Timeline),
        (status = 400, description = "no X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 422, description = "not a personal ID number, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`)", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn person_timeline(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    Path(pin): Path<String>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Timeline>, ApiError> {
    let purpose = audit_access(&principal, Action::ReadLog, &headers, "person_timeline")?;
    let Query(query) = query.map_err(malformed_query)?;
    let personal_id = PersonalId::parse(&pin).map_err(|error| {
        ApiError::validation(&ValidationErrors(vec![FieldError::new(
            "pin",
            error.code(),
            "is not a personal ID number",
        )]))
    })?;
    let pin = personal_id.to_string();
    let refs = PersonRefs::load(&state.store, &personal_id).await?;
    let known = !refs.streams.is_empty();
    let (source, mut events) = if known && !query.scan.unwrap_or(false) {
        let mut events = Vec::new();
        for stream in &refs.streams {
            events.extend(
                state
                    .store
                    .read_stream(stream)
                    .await?
                    .into_iter()
                    .filter(|event| names(event, &pin)),
            );
        }
        ("registry", events)
    } else {
        ("scan", scan_naming(&state.store, &pin).await?)
    };
    events.sort_by_key(RecordedEvent::cursor);
    let accesses = reads_of_person(&state.store, &refs).await?;
    let timeline = Timeline {
        personal_id: pin,
        source: source.to_owned(),
        events: events.iter().map(AuditEvent::from).collect(),
        accesses,
    };
    // The read names the numbers the answer shows (up to `MAX_RECORDED_PINS`, as every read),
    // not only the person's: a birth record on
    // the child's timeline names the parents and the declarant, whose own access history must
    // show it (until 2026-12-07 only the subject was named).
    let shown = serde_json::to_value(&timeline)
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    let read = Read::new(
        ReadResource::PersonTimeline {
            personal_id: personal_id.clone(),
        },
        purpose,
    )
    .naming(personal_ids_in(&shown).into_iter().chain([personal_id]));
    record_read(&state, &principal, context.correlation_id, read).await?;
    Ok(Json(timeline))
}

/// The person registry and life-event status as of a moment, folded from the log.
#[utoipa::path(
    get, path = "/v1/audit/replay", tag = "audit",
    params(ReplayQuery, ("X-Purpose" = String, Header, description = "why the past is replayed")),
    responses(
        (status = 200, description = "the views as of `as_of`", body = ReplayBody),
        (status = 400, description = "no X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 422, description = "as_of missing or not RFC 3339, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`)", body = ErrorBody),
        (status = 503, description = "store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, QueryRejection>,
) -> Result<Json<ReplayBody>, ApiError> {
    let purpose = audit_access(&principal, Action::ReplayViews, &headers, "replay")?;
    let Query(query) = query.map_err(malformed_query)?;
    let as_of = match query.as_deref_as_of() {
        None => {
            return Err(ApiError::validation(&ValidationErrors(vec![
                FieldError::required("as_of"),
            ])))
        }
        Some(raw) => parse_time(raw, "as_of")?,
    };
    let view = replay_until(&state.store, Some(as_of))
        .await
        .map_err(|error| match error {
            ReplayError::Store(error) => ApiError::from(error),
            other => ApiError::unavailable(other.to_string()),
        })?;
    record_read(
        &state,
        &principal,
        context.correlation_id,
        Read::new(ReadResource::Replay { as_of }, purpose),
    )
    .await?;
    Ok(Json(ReplayBody { as_of, view }))
}

impl ReplayQuery {
    fn as_deref_as_of(&self) -> Option<&str> {
        self.as_of
            .as_deref()
            .map(str::trim)
            .filter(|raw| !raw.is_empty())
    }
}

/// The log (or a range of it) as NDJSON, one [`AuditEvent`] per line, streamed, up to the
/// export's own `PersonalDataRead` (not included): every event committed before that entry. If
/// the log stays unreadable up to it for 10 s (on PostgreSQL, a transaction begun before it
/// still running), the body stops with an error rather than end short.
#[utoipa::path(
    get, path = "/v1/audit/export", tag = "audit",
    params(ExportQuery, ("X-Purpose" = String, Header, description = "why the log is exported")),
    responses(
        (status = 200, description = "application/x-ndjson, one event per line in commit order, up to the export's own access-log entry, stored before the first line (every event committed before it); if the log cannot be read up to that entry within 10 s (a transaction begun before it still running) the body stops with an error", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "no X-Purpose", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 422, description = "bad cursor or until, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let purpose = audit_access(&principal, Action::ExportLog, &headers, "export")?;
    let Query(query) = query.map_err(malformed_query)?;
    let after = match query.cursor.as_deref() {
        Some(raw) => decode_cursor(raw)
            .map_err(|error| ApiError::validation(&ValidationErrors(vec![error])))?,
        None => LogCursor::START,
    };
    let until = query
        .until
        .as_deref()
        .map(|raw| parse_time(raw, "until"))
        .transpose()?;
    // The export streams: it is recorded (by its range) before the first byte is sent, and it
    // ends where that record stands in the log, so that what it held is known from the access
    // log alone (a person's access history lists it when it held one of their events).
    let resource = ReadResource::Export {
        after: query.cursor.is_some().then_some(after),
        until,
        ends_at_entry: true,
    };
    let read_id = record_read(
        &state,
        &principal,
        context.correlation_id,
        Read::new(resource, purpose),
    )
    .await?;
    let end = state
        .store
        .event_by_id(read_id)
        .await?
        .ok_or_else(|| ApiError::unavailable("the export's access-log entry cannot be read"))?
        .cursor();
    let store = state.store.clone();
    let lines = futures::stream::try_unfold(
        (store, after, false),
        move |(store, cursor, done)| async move {
            if done {
                return Ok(None);
            }
            let mut waited = Duration::ZERO;
            let batch = loop {
                let batch = store.read_all(cursor, READ_BATCH).await.map_err(|error| {
                    tracing::error!(%error, "export stopped: the store failed");
                    std::io::Error::other("the store failed")
                })?;
                if !batch.is_empty() || cursor >= end {
                    break batch;
                }
                // The export's own entry is stored but not readable yet (a transaction begun
                // before it still runs, and may commit events that come before it): wait.
                if waited >= EXPORT_END_WAIT {
                    tracing::error!(?end, "export stopped: its end stayed unreadable");
                    return Err(std::io::Error::other(
                        "the end of the export stayed unreadable",
                    ));
                }
                tokio::time::sleep(EXPORT_END_POLL).await;
                waited += EXPORT_END_POLL;
            };
            let Some(last) = batch.last() else {
                return Ok(None);
            };
            let next = last.cursor();
            let mut chunk = Vec::new();
            let mut reached_until = false;
            for event in &batch {
                if event.cursor() >= end
                    || until.is_some_and(|until| event.metadata.recorded_at >= until)
                {
                    reached_until = true;
                    break;
                }
                serde_json::to_writer(&mut chunk, &AuditEvent::from(event))
                    .map_err(std::io::Error::other)?;
                chunk.push(b'\n');
            }
            Ok::<_, std::io::Error>(Some((Bytes::from(chunk), (store, next, reached_until))))
        },
    );
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// The table's word on `action`, then the purpose: auditors must say why they read.
fn audit_access(
    principal: &Principal,
    action: Action,
    headers: &HeaderMap,
    what: &'static str,
) -> Result<Option<String>, ApiError> {
    authorize(principal, action, Target::Nothing)?;
    let purpose = access::purpose(principal, headers)?;
    // The purpose text may itself name people: only its presence is logged.
    tracing::info!(subject = %principal.subject, read = what, "auditor read with a stated purpose");
    Ok(purpose)
}

/// A page's `limit` query parameter: 100 when absent, else 1 to `max`; a bad one is a field
/// error in `errors` (and the default stands in for it).
pub(crate) fn page_limit(raw: Option<&str>, max: usize, errors: &mut ValidationErrors) -> usize {
    match raw {
        None => 100,
        Some(raw) => errors
            .take(
                raw.parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=max).contains(limit))
                    .ok_or_else(|| {
                        FieldError::new("limit", "out_of_range", format!("must be 1 to {max}"))
                    }),
            )
            .unwrap_or(100),
    }
}

/// A query string the route's parameters do not take. A parameter it does not know
/// (`?stauts=open`) or one given twice is a 422 naming it (`unknown_field`,
/// `duplicate_field`): until 2026-12-07 an unknown one was ignored (a typo silently widened an
/// inbox or a log page) and a repeated one was a 400 naming nothing. Anything else (a
/// parameter that is not UTF-8, say) is a 400 `malformed_query`.
pub(crate) fn malformed_query(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let message = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    // serde's message, after the parameter's name: "stauts: unknown field `stauts`, ...".
    let named = |prefix: &str| {
        message
            .find(prefix)
            .and_then(|at| message[at + prefix.len()..].split_once('`'))
            .map(|(name, _)| name.to_owned())
    };
    if let Some(name) = named("unknown field `") {
        return ApiError::unprocessable("invalid_field", "a query parameter is not expected")
            .with_field(
                name.clone(),
                "unknown_field",
                format!("{name} is not a parameter of this route"),
            );
    }
    if let Some(name) = named("duplicate field `") {
        return ApiError::unprocessable("invalid_field", "a query parameter is given twice")
            .with_field(name, "duplicate_field", "must be given at most once");
    }
    ApiError::bad_request("malformed_query", "the query string is not valid").with_detail(text)
}

fn parse_time(raw: &str, field: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::validation(&ValidationErrors(vec![FieldError::new(
                field,
                "invalid_datetime",
                "must be a time like 2026-11-18T17:00:00+07:00",
            )]))
        })
}

/// The opaque cursor: base64url of `<transaction_id>.<global_position>`.
pub fn encode_cursor(cursor: LogCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}.{}",
        cursor.transaction_id, cursor.global_position
    ))
}

pub(crate) fn decode_cursor(raw: &str) -> Result<LogCursor, FieldError> {
    let invalid = || {
        FieldError::new(
            "cursor",
            "invalid_cursor",
            "is not a cursor this API returned",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (transaction_id, global_position) = text.split_once('.').ok_or_else(invalid)?;
    Ok(LogCursor {
        transaction_id: transaction_id.parse().map_err(|_| invalid())?,
        global_position: global_position.parse().map_err(|_| invalid())?,
    })
}

/// Whether `event` names `pin`: its stream is `person-<pin>`, or a string of its payload is the
/// number.
fn names(event: &RecordedEvent, pin: &str) -> bool {
    fn holds(value: &Value, pin: &str) -> bool {
        match value {
            Value::String(text) => text == pin,
            Value::Array(items) => items.iter().any(|item| holds(item, pin)),
            Value::Object(fields) => fields.values().any(|field| holds(field, pin)),
            _ => false,
        }
    }
    event.stream_id.as_str().strip_prefix("person-") == Some(pin) || holds(&event.payload, pin)
}

async fn scan_naming(store: &EventStore, pin: &str) -> Result<Vec<RecordedEvent>, ApiError> {
    let mut cursor = LogCursor::START;
    let mut found = Vec::new();
    loop {
        let batch = store.read_all(cursor, READ_BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(found);
        };
        cursor = last.cursor();
        found.extend(
            batch
                .into_iter()
                .filter(|event| event.event_type != ACCESS_EVENT_TYPE && names(event, pin)),
        );
    }
}
