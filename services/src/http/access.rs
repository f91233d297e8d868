//! The access log: every read of personal data through the API (a life event, a task, a
//! person's timeline, a stream, a page of the log, a replay, an export, the access log itself) is
//! recorded as a `PersonalDataRead` event: who (subject, role, scope), what (the resource and
//! the personal ID numbers it disclosed), when, and the purpose the caller gave in `X-Purpose`
//! (required of auditors, optional for everyone else).
//!
//! The handler appends the event after the read succeeded and before it answers, each read in a
//! stream of its own (`access-<uuid v7>`, "stream must not exist"), so reads never contend with
//! each other or with writes to the records they read. If the append fails the read answers 503:
//! a read that cannot be logged is not served. The purpose text and the numbers are never
//! written to tracing, only to the log.
//!
//! `GET /v1/audit/access-log` scans the log in commit order and keeps `PersonalDataRead` events:
//! O(events scanned), at most [`MAX_SCAN`] per request; a page may hold fewer entries than asked
//! and still not be the end (`caught_up` says when it is). Scans read the payloads of access
//! events only (`EventStore::read_all_with_payloads_of`).
//!
//! A person's reads ([`PersonRefs::matches`]: `?person=` and the timeline's accesses) are those
//! naming the number, the person's life events, tasks or streams, and the bulk reads that held
//! one of the person's events (an event of the streams the person registry links to them): a
//! page of the log by its range, an export by its range (it ends at its own entry), a replay by
//! its moment. Until 2026-12-07 the bulk reads, which name nobody, were in nobody's history.
//!
//! Where that is wider than what was shown: an export with `until` and a replay stop at the
//! first event in commit order recorded at or after their moment, and are matched by each
//! event's own time, so an event of the person recorded just before the moment but committed
//! after that first one (the milliseconds of transactions in flight) counts as shown; a replay
//! also counts the events committed between its read and its entry; an export that failed
//! midway counts for its whole range; an export recorded before exports ended at their entry
//! counts up to the end of the log. Where it is narrower: a person the person registry does not
//! know (yet) has no bulk reads (the timeline finds their events by scanning, these reads do
//! not); an event naming the person outside their linked streams; a bulk read that held only
//! access-log entries naming the person; reads naming more than [`MAX_RECORDED_PINS`] numbers,
//! past the first ones.

use std::collections::BTreeSet;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use lifeline_model::codec::{decode_recorded, to_new_event};
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, RecordedEvent, Role, StreamId,
};
use lifeline_model::procedure::ProcedureGroup;
use lifeline_model::system_events::{PersonalDataRead, ReadResource, SystemEvent};
use lifeline_model::validation::{FieldError, ValidationErrors};
use lifeline_model::values::PersonalId;
use lifeline_store::{projections, EventStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::audit::{
    decode_cursor, encode_cursor, malformed_query, page_limit, MAX_PURPOSE_CHARS, PURPOSE_HEADER,
};
use super::error::{ApiError, ErrorBody};
use super::extract::RequestContext;
use super::AppState;
use crate::auth::{authorize, Action, Principal, Target};

/// The event type of an access-log entry.
pub const ACCESS_EVENT_TYPE: &str = "PersonalDataRead";
/// The stream kind of access-log entries (`access-<uuid v7>`).
pub const ACCESS_STREAM_KIND: &str = "access";
/// The most events one request to `GET /v1/audit/access-log` (or a timeline's access scan
/// batch) reads.
pub const MAX_SCAN: usize = 10_000;
/// The longest access-log page.
pub const MAX_ACCESS_PAGE: usize = 500;
/// The most personal ID numbers one read records (a stream or timeline naming more is recorded
/// with the first ones; the resource still names what was read).
pub const MAX_RECORDED_PINS: usize = 100;
const SCAN_BATCH: usize = 1_000;

/// The purpose the caller gave in `X-Purpose`: required of auditors (400 without it), optional
/// for everyone else; 1 to 500 characters either way, in any language: UTF-8 as sent, or
/// RFC 8187's `UTF-8''` followed by the percent-encoded text (for clients, such as browsers,
/// that send ASCII headers only). See [`purpose_text`].
pub fn purpose(principal: &Principal, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_purpose",
            "X-Purpose must be 1 to 500 characters saying why",
        )
        .with_field("X-Purpose", "invalid", "1 to 500 characters saying why")
    };
    let Some(value) = headers.get(PURPOSE_HEADER) else {
        if principal.role == Role::Auditor {
            return Err(ApiError::bad_request(
                "purpose_required",
                "auditors must name the purpose of the read in X-Purpose",
            )
            .with_field("X-Purpose", "required", "1 to 500 characters saying why"));
        }
        return Ok(None);
    };
    let text = purpose_text(value.as_bytes()).ok_or_else(invalid)?;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_PURPOSE_CHARS {
        return Err(if principal.role == Role::Auditor && text.is_empty() {
            ApiError::bad_request(
                "purpose_required",
                "auditors must name the purpose of the read in X-Purpose",
            )
            .with_field("X-Purpose", "required", "1 to 500 characters saying why")
        } else {
            invalid()
        });
    }
    Ok(Some(text.to_owned()))
}

/// The text of an `X-Purpose` value: its bytes as UTF-8 (HTTP carries them as sent), or, after
/// a case-insensitive `UTF-8''`, the percent-decoded UTF-8 (RFC 8187's ext-value). `None` when
/// it is not UTF-8 either way or holds a control character.
pub fn purpose_text(bytes: &[u8]) -> Option<String> {
    const EXT_VALUE: &[u8] = b"utf-8''";
    let text = match bytes.get(..EXT_VALUE.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(EXT_VALUE) => {
            percent_encoding::percent_decode(&bytes[EXT_VALUE.len()..])
                .decode_utf8()
                .ok()?
                .into_owned()
        }
        _ => std::str::from_utf8(bytes).ok()?.to_owned(),
    };
    (!text.chars().any(char::is_control)).then_some(text)
}

/// One read about to be recorded.
#[derive(Debug, Clone)]
pub struct Read {
    pub resource: ReadResource,
    pub personal_ids: Vec<PersonalId>,
    pub purpose: Option<String>,
}

impl Read {
    pub fn new(resource: ReadResource, purpose: Option<String>) -> Self {
        Self {
            resource,
            personal_ids: Vec::new(),
            purpose,
        }
    }

    /// Records these numbers (deduplicated, at most [`MAX_RECORDED_PINS`]).
    #[must_use]
    pub fn naming(mut self, personal_ids: impl IntoIterator<Item = PersonalId>) -> Self {
        let mut all: BTreeSet<PersonalId> = self.personal_ids.drain(..).collect();
        all.extend(personal_ids);
        self.personal_ids = all.into_iter().take(MAX_RECORDED_PINS).collect();
        self
    }
}

/// Appends the `PersonalDataRead` of `read` by `principal` and answers its event id; 503 when it
/// cannot (the caller then does not serve the read).
pub async fn record_read(
    state: &AppState,
    principal: &Principal,
    correlation_id: Uuid,
    read: Read,
) -> Result<Uuid, ApiError> {
    let read_at = state.now();
    let scope = principal.scope.to_string();
    let event = SystemEvent::PersonalDataRead(PersonalDataRead {
        subject: principal.subject.clone(),
        role: principal.role,
        scope: scope.clone(),
        resource: read.resource,
        personal_ids: read.personal_ids,
        purpose: read.purpose,
        read_at,
    });
    let event_id = Uuid::now_v7();
    let mut metadata =
        EventMetadata::system(principal.subject.clone(), correlation_id, None, read_at);
    metadata.role = principal.role;
    metadata.office = match principal.scope {
        crate::auth::Scope::Unscoped => None,
        _ => Some(
            scope
                .split_once(':')
                .map_or(scope.clone(), |(_, code)| code.to_owned()),
        ),
    };
    let stream = StreamId::for_kind(ACCESS_STREAM_KIND, event_id)
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    let new_event = to_new_event(&event, event_id, metadata);
    match state
        .store
        .append(&stream, ExpectedVersion::NoStream, &[new_event])
        .await
    {
        Ok(_) => {
            state.metrics.events_appended(ACCESS_EVENT_TYPE, 1);
            Ok(event_id)
        }
        Err(error) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "access_log_unavailable",
            "the read cannot be recorded in the access log, so it is not served; retry later",
        )
        .with_detail(error.to_string())),
    }
}

/// The personal ID number a stream is named after: `person-<pin>` (a person's registry
/// stream) or `pin-<pin>` (the assignment of a number).
pub fn personal_id_of_stream(stream_id: &str) -> Option<PersonalId> {
    stream_id
        .strip_prefix("person-")
        .or_else(|| stream_id.strip_prefix("pin-"))
        .and_then(|pin| PersonalId::parse(pin).ok())
}

/// The personal ID numbers among the strings of `value` (a declaration, an application, a
/// payload).
pub fn personal_ids_in(value: &Value) -> BTreeSet<PersonalId> {
    fn walk(value: &Value, found: &mut BTreeSet<PersonalId>) {
        match value {
            Value::String(text) if text.len() == 12 => {
                if let Ok(pin) = PersonalId::parse(text) {
                    found.insert(pin);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            Value::Object(fields) => fields.values().for_each(|field| walk(field, found)),
            _ => {}
        }
    }
    let mut found = BTreeSet::new();
    walk(value, &mut found);
    found
}

// ---------------------------------------------------------------------------------------------
// Reading the access log.

/// One read of personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessEntry {
    /// The `PersonalDataRead` event.
    pub event_id: Uuid,
    pub global_position: i64,
    pub subject: String,
    /// `registrar`, `agency`, `auditor` or `operator`.
    pub role: String,
    /// `office:<code>`, `agency:<id>` or `all`.
    pub scope: String,
    /// What was read: `{"kind": "life_event" | "task" | "person_timeline" | "stream" |
    /// "log_page" | "export" | "replay" | "access_log", ...ids}`.
    #[schema(value_type = Object)]
    pub resource: Value,
    /// The personal ID numbers the read disclosed (targeted reads).
    pub personal_ids: Vec<String>,
    pub purpose: Option<String>,
    pub read_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}

impl AccessEntry {
    fn of(event: &RecordedEvent, read: &PersonalDataRead) -> Self {
        Self {
            event_id: event.event_id,
            global_position: event.global_position.0,
            subject: read.subject.clone(),
            role: crate::auth::role_name(read.role).to_owned(),
            scope: read.scope.clone(),
            resource: serde_json::to_value(&read.resource).unwrap_or(Value::Null),
            personal_ids: read.personal_ids.iter().map(ToString::to_string).collect(),
            purpose: read.purpose.clone(),
            read_at: read.read_at,
            correlation_id: event.metadata.correlation_id,
        }
    }
}

/// `GET /v1/audit/access-log`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccessLogQuery {
    /// The `next_cursor` of the previous page; absent for the start of the log.
    pub cursor: Option<String>,
    /// 1 to 500; default 100.
    pub limit: Option<String>,
    /// Only reads about this personal ID number (naming it, or a life event or task of the
    /// person as the person registry links them, or a page of the log, an export or a replay
    /// that held one of their events).
    pub person: Option<String>,
}

/// One page of the access log, in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessLogPage {
    pub entries: Vec<AccessEntry>,
    /// Where the next page starts (after the last event scanned).
    pub next_cursor: Option<String>,
    /// Events of the log scanned for this page.
    pub scanned: u64,
    /// The scan reached the end of the log; otherwise more entries may follow even if this page
    /// holds fewer than `limit`.
    pub caught_up: bool,
}

/// What identifies a person's reads: the number, the life events and tasks the person registry
/// links to it, and where their events stand in the log.
#[derive(Debug, Clone)]
pub struct PersonRefs {
    pub personal_id: PersonalId,
    pub life_event_ids: BTreeSet<Uuid>,
    pub task_ids: BTreeSet<Uuid>,
    /// The person's streams (`person-<pin>`, the life events, their tasks).
    pub streams: BTreeSet<StreamId>,
    /// The events of those streams, in commit order (each with when it was recorded): what a
    /// page of the log, an export or a replay showed of the person, when it covered one of them.
    pub events: Vec<(LogCursor, DateTime<Utc>)>,
}

impl PersonRefs {
    /// Looks the person up in the person registry (no links when it does not know them).
    pub async fn load(store: &EventStore, personal_id: &PersonalId) -> Result<Self, ApiError> {
        let mut refs = Self {
            personal_id: personal_id.clone(),
            life_event_ids: BTreeSet::new(),
            task_ids: BTreeSet::new(),
            streams: BTreeSet::new(),
            events: Vec::new(),
        };
        let Some(person) = projections::person(store, personal_id).await? else {
            return Ok(refs);
        };
        if let Ok(stream) = StreamId::for_kind("person", personal_id) {
            refs.streams.insert(stream);
        }
        for link in &person.life_events {
            let kind = match link.kind {
                ProcedureGroup::Birth => "birth",
                ProcedureGroup::Death => "death",
            };
            refs.life_event_ids.insert(link.life_event_id);
            if let Ok(stream) = StreamId::for_kind(kind, link.life_event_id) {
                refs.streams.insert(stream);
            }
            for task in projections::tasks_of_life_event(store, link.life_event_id).await? {
                refs.task_ids.insert(task.task_id);
                if let Ok(stream) = StreamId::for_kind("task", task.task_id) {
                    refs.streams.insert(stream);
                }
            }
        }
        let streams: Vec<&StreamId> = refs.streams.iter().collect();
        refs.events = store
            .read_streams(&streams)
            .await?
            .values()
            .flatten()
            .map(|event| (event.cursor(), event.metadata.recorded_at))
            .collect();
        refs.events.sort_unstable();
        Ok(refs)
    }

    /// Whether one of the person's events lies after `after` and up to `through` (both in
    /// commit order), recorded before `recorded_before` if given.
    fn has_event(
        &self,
        after: LogCursor,
        through: impl Fn(LogCursor) -> bool,
        recorded_before: Option<DateTime<Utc>>,
    ) -> bool {
        let first = self.events.partition_point(|(cursor, _)| *cursor <= after);
        self.events[first..]
            .iter()
            .take_while(|(cursor, _)| through(*cursor))
            .any(|(_, recorded_at)| recorded_before.is_none_or(|before| *recorded_at < before))
    }

    /// Whether `read`, stored at `position`, was about this person: it names the person, or the
    /// person's life events, tasks or streams, or it was a page of the log, an export or a
    /// replay that held one of the person's events. An export ends where its own read is
    /// stored ([`super::audit::export`]); a replay shows the records of the events recorded
    /// before its moment.
    pub fn matches(&self, position: LogCursor, read: &PersonalDataRead) -> bool {
        let disclosed_in_bulk = match &read.resource {
            ReadResource::LogPage {
                after,
                last: Some(last),
                ..
            } => self.has_event(after.unwrap_or(LogCursor::START), |c| c <= *last, None),
            ReadResource::Export {
                after,
                until,
                ends_at_entry,
            } => self.has_event(
                after.unwrap_or(LogCursor::START),
                // One recorded before exports ended at their entry: its end is not known.
                |c| !*ends_at_entry || c < position,
                *until,
            ),
            ReadResource::Replay { as_of } => {
                self.has_event(LogCursor::START, |c| c < position, Some(*as_of))
            }
            _ => false,
        };
        disclosed_in_bulk
            || read.personal_ids.contains(&self.personal_id)
            || matches!(&read.resource, ReadResource::PersonTimeline { personal_id } if *personal_id == self.personal_id)
            || matches!(&read.resource, ReadResource::AccessLog { personal_id: Some(personal_id), .. } if *personal_id == self.personal_id)
            || read
                .resource
                .life_event_id()
                .is_some_and(|id| self.life_event_ids.contains(&id))
            || read
                .resource
                .task_id()
                .is_some_and(|id| self.task_ids.contains(&id))
            || matches!(&read.resource, ReadResource::Stream { stream_id } if self.streams.iter().any(|stream| stream.as_str() == stream_id))
    }
}

/// The access events among `events` that `keep` accepts.
fn reads_in<'a>(
    events: &'a [RecordedEvent],
    keep: &'a impl Fn(LogCursor, &PersonalDataRead) -> bool,
) -> impl Iterator<Item = AccessEntry> + 'a {
    events
        .iter()
        .filter(|event| event.event_type == ACCESS_EVENT_TYPE)
        .filter_map(move |event| match decode_recorded::<SystemEvent>(event) {
            Ok(SystemEvent::PersonalDataRead(read)) if keep(event.cursor(), &read) => {
                Some(AccessEntry::of(event, &read))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(event_id = %event.event_id, %error, "unreadable access-log entry");
                None
            }
        })
}

/// Every read about `refs`' person in the whole log, in commit order: O(log), though only the
/// access events' payloads are rendered and parsed (the others, the records' declarations and
/// the tasks' applications, are most of the log's bytes).
pub async fn reads_of_person(
    store: &EventStore,
    refs: &PersonRefs,
) -> Result<Vec<AccessEntry>, ApiError> {
    let keep = |position: LogCursor, read: &PersonalDataRead| refs.matches(position, read);
    let mut cursor = LogCursor::START;
    let mut found = Vec::new();
    loop {
        let batch = store
            .read_all_with_payloads_of(cursor, MAX_SCAN, &[ACCESS_EVENT_TYPE])
            .await?;
        let Some(last) = batch.last() else {
            return Ok(found);
        };
        cursor = last.cursor();
        found.extend(reads_in(&batch, &keep));
    }
}

/// Who read which personal data, when and why, in commit order.
#[utoipa::path(
    get, path = "/v1/audit/access-log", tag = "audit",
    params(AccessLogQuery, ("X-Purpose" = String, Header, description = "why the access log is read")),
    responses(
        (status = 200, description = "one page of reads in commit order; scans at most 10000 events of the log per request", body = AccessLogPage),
        (status = 400, description = "no X-Purpose, or a query string that does not parse", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an auditor", body = ErrorBody),
        (status = 422, description = "bad cursor, limit or person, or a query parameter unknown or given twice (`unknown_field`, `duplicate_field`), each named", body = ErrorBody),
        (status = 503, description = "store unavailable, or the read cannot be recorded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[instrument(skip_all)]
pub async fn access_log(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    query: Result<Query<AccessLogQuery>, QueryRejection>,
) -> Result<Json<AccessLogPage>, ApiError> {
    authorize(&principal, Action::ReadAccessLog, Target::Nothing)?;
    let purpose = purpose(&principal, &headers)?;
    let Query(query) = query.map_err(malformed_query)?;
    let mut errors = ValidationErrors::default();
    let after = query
        .cursor
        .as_deref()
        .and_then(|raw| errors.take(decode_cursor(raw)));
    let limit = page_limit(query.limit.as_deref(), MAX_ACCESS_PAGE, &mut errors);
    let person = query.person.as_deref().and_then(|raw| {
        errors.take(PersonalId::parse(raw.trim()).map_err(|error| {
            FieldError::new("person", error.code(), "is not a personal ID number")
        }))
    });
    if !errors.is_empty() {
        return Err(ApiError::validation(&errors));
    }
    let refs = match &person {
        Some(personal_id) => Some(PersonRefs::load(&state.store, personal_id).await?),
        None => None,
    };
    let keep = |position: LogCursor, read: &PersonalDataRead| {
        refs.as_ref()
            .is_none_or(|refs| refs.matches(position, read))
    };
    let mut cursor = after.unwrap_or(LogCursor::START);
    let mut entries = Vec::new();
    let mut scanned = 0_usize;
    let mut caught_up = false;
    loop {
        if entries.len() >= limit || scanned >= MAX_SCAN {
            break;
        }
        let want = SCAN_BATCH.min(MAX_SCAN - scanned);
        let batch = state
            .store
            .read_all_with_payloads_of(cursor, want, &[ACCESS_EVENT_TYPE])
            .await?;
        let mut filled = false;
        // Stop at the entry that fills the page, so the next page starts right after it.
        for event in &batch {
            scanned += 1;
            cursor = event.cursor();
            entries.extend(reads_in(std::slice::from_ref(event), &keep));
            if entries.len() >= limit {
                filled = true;
                break;
            }
        }
        if !filled && batch.len() < want {
            caught_up = true;
            break;
        }
    }
    let next_cursor = if scanned == 0 {
        after.map(encode_cursor)
    } else {
        Some(encode_cursor(cursor))
    };
    let page = AccessLogPage {
        entries,
        next_cursor,
        scanned: scanned as u64,
        caught_up,
    };
    // The page shows who was read (each entry's numbers): the read names them too (up to
    // `MAX_RECORDED_PINS`, as every read), so that
    // each person's access history shows who looked at their accesses (until 2026-12-07 only
    // the `person` asked for was named).
    let shown = serde_json::to_value(&page.entries)
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    let read = Read::new(
        ReadResource::AccessLog {
            personal_id: person.clone(),
            after,
        },
        purpose,
    )
    .naming(person.into_iter().chain(personal_ids_in(&shown)));
    record_read(&state, &principal, context.correlation_id, read).await?;
    Ok(Json(page))
}

#[cfg(test)]
mod tests {
    use super::purpose_text;

    #[test]
    fn purposes_are_read_as_utf8_or_rfc_8187() {
        let vietnamese = "Thanh tra theo quyết định số 12/QĐ-TTr";
        assert_eq!(
            purpose_text(vietnamese.as_bytes()).as_deref(),
            Some(vietnamese)
        );
        assert_eq!(
            purpose_text(b"UTF-8''Ki%E1%BB%83m%20tra%20h%E1%BB%93%20s%C6%A1").as_deref(),
            Some("Kiểm tra hồ sơ")
        );
        assert_eq!(
            purpose_text(b"utf-8''plain").as_deref(),
            Some("plain"),
            "the prefix is case-insensitive"
        );
        assert_eq!(
            purpose_text(b"complaint 118").as_deref(),
            Some("complaint 118")
        );
        // Not UTF-8, raw or decoded; control characters.
        assert_eq!(purpose_text(b"\xff\xfe"), None);
        assert_eq!(purpose_text(b"UTF-8''%FF"), None);
        assert_eq!(purpose_text(b"UTF-8''line%0Abreak"), None);
    }
}
