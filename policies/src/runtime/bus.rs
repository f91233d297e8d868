//! The JetStream side of the log: the stream the relay publishes to, its subjects, and the thin
//! message ([`EventNotice`]) that names a stored event without carrying any of its data.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use lifeline_model::envelope::EventHeader;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::RuntimeError;

/// Where events travel on NATS. Defaults: stream `LIFELINE_EVENTS`, subjects
/// `lifeline.events.<class>.<event type>` (the class: `record` for the events of a life event
/// record, whose streams are `birth-<id>` and `death-<id>`; otherwise the stream kind: `task`,
/// `pin`, `eligibility`..., followed by `-<topic>` for an event that names a procedure, such as
/// `task-birth-registration`), file storage, one replica, a 2-minute duplicate window, 30 days of
/// retention.
///
/// Durability: JetStream acknowledges a publish before it is fsynced, and nats-server 2.9 has
/// no `sync_interval` (2.10 added it); its file store writes each message to the OS at once and
/// fsyncs periodically. A killed server loses nothing the OS holds; a power loss of a single
/// server can lose the last acknowledged notices. The PostgreSQL log stays the source of truth:
/// the relay, whenever it reconnects, compares the stream's last notice with its checkpoint and
/// republishes what is missing ([`super::Relay::reconcile`]; Nats-Msg-Id deduplicates what is
/// still there). In production: `replicas: 3` on the three-node cluster, where an ack means a
/// majority holds the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// The JetStream stream name (no `.`, `*`, `>` or whitespace).
    pub stream_name: String,
    /// The subject prefix; the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    /// Replicas of the stream: 1 on one server, 3 on the production cluster.
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a republished message.
    pub duplicate_window: Duration,
    /// How long messages are kept (consumers created later start from what is left).
    pub max_age: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            stream_name: "LIFELINE_EVENTS".to_owned(),
            subject_prefix: "lifeline.events".to_owned(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(30 * 24 * 60 * 60),
        }
    }
}

impl BusConfig {
    /// The subject an event is published on: `<prefix>.<class>.<event type>`, each token
    /// reduced to `[A-Za-z0-9_-]` so that no stored value can form a wildcard or a new token.
    /// The class is [`RECORD_CLASS`] for a record's stream (`birth-`, `death-`): a consumer of
    /// every record event (corrections and voids of both kinds) takes one filter subject, all
    /// nats-server 2.9 allows. (Before 2026-12-06 the class was the stream kind for every stream:
    /// notices still in the stream from then are on `<prefix>.birth.*` and `<prefix>.death.*`.)
    /// Another stream's event that names a procedure ([`EventHeader::topic`]: a task's creation
    /// and completion) has the class `<kind>-<topic>`, so that a follow-up policy takes the
    /// completions of the one registration it follows ([`Notices::OfTopic`]); a record's class
    /// stays `record` whatever its payload. (Before 2026-12-06 completions were on
    /// `<prefix>.task.TaskCompleted`.)
    pub fn subject_for(&self, event: &EventHeader) -> String {
        let class = match (event.stream_id.kind(), &event.topic) {
            ("birth" | "death", _) => RECORD_CLASS.to_owned(),
            (kind, Some(topic)) => topic_class(kind, topic),
            (kind, None) => kind.to_owned(),
        };
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            subject_token(&class),
            subject_token(&event.event_type)
        )
    }

    /// The subjects of every event of type `event_type`, whatever its stream:
    /// `<prefix>.*.<event type>`.
    pub fn subjects_of_type(&self, event_type: &str) -> String {
        format!("{}.*.{}", self.subject_prefix, subject_token(event_type))
    }

    /// The one filter subject of a consumer of `notices`, or `None` for every subject.
    pub fn filter_subject(&self, notices: Notices) -> Option<String> {
        match notices {
            Notices::All => None,
            Notices::OfType(event_type) => Some(self.subjects_of_type(event_type)),
            Notices::OfRecords => Some(format!("{}.{RECORD_CLASS}.>", self.subject_prefix)),
            Notices::OfTopic {
                kind,
                topic,
                event_type,
            } => Some(format!(
                "{}.{}.{}",
                self.subject_prefix,
                subject_token(&topic_class(kind, topic)),
                subject_token(event_type)
            )),
        }
    }

    /// Every subject of the stream.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// The stream's configuration (file storage, limits retention).
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![self.stream_subjects()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: self.replicas.max(1),
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            description: Some("Lifeline: thin notices of committed events".to_owned()),
            ..Default::default()
        }
    }

    /// Creates the stream if it is missing; if it exists, brings only the settings Lifeline
    /// owns (subjects, storage, retention, replicas, duplicate window, age) to this
    /// configuration, keeping the others an operator may have set (`max_bytes`, `discard`,
    /// placement...). (Until 2026-12-07 every relay start reset those to the defaults.)
    pub async fn ensure_stream(&self, jetstream: &jetstream::Context) -> Result<(), RuntimeError> {
        let wanted = self.stream_config();
        let existing = match jetstream.get_stream(&self.stream_name).await {
            Ok(stream) => stream.cached_info().config.clone(),
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref source)
                        if source.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                jetstream
                    .create_stream(wanted)
                    .await
                    .map_err(|error| RuntimeError::nats("create the event stream", error))?;
                return Ok(());
            }
            Err(error) => return Err(RuntimeError::nats("read the event stream", error)),
        };
        let mut config = existing.clone();
        config.subjects = wanted.subjects;
        config.storage = wanted.storage;
        config.retention = wanted.retention;
        config.num_replicas = wanted.num_replicas;
        config.duplicate_window = wanted.duplicate_window;
        config.max_age = wanted.max_age;
        config.description = wanted.description;
        if config != existing {
            jetstream
                .update_stream(&config)
                .await
                .map_err(|error| RuntimeError::nats("update the event stream", error))?;
        }
        Ok(())
    }
}

/// The subject class of the events of life event records (streams `birth-<id>`, `death-<id>`).
pub const RECORD_CLASS: &str = "record";

/// The subject class of an event of a `kind` stream that names `topic`.
fn topic_class(kind: &str, topic: &str) -> String {
    format!("{kind}-{topic}")
}

/// Which notices a policy's consumer receives ([`crate::PolicyHandler::notices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notices {
    /// Every notice of the stream; `wants` sorts them.
    All,
    /// The notices of one event type, whatever the stream.
    OfType(&'static str),
    /// The notices of life event records' events (recorded, corrected, voided), of both kinds.
    OfRecords,
    /// The notices of one event type of `kind` streams that name `topic` (a procedure): the
    /// completions of one procedure's tasks. An event of the type stored before it named its
    /// procedure (before 2026-12-06) is not among them.
    OfTopic {
        kind: &'static str,
        topic: &'static str,
        event_type: &'static str,
    },
}

fn subject_token(value: &str) -> String {
    let token: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// The thin message on the bus: which event was committed, where. No personal data: a consumer
/// reads the event itself from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventNotice {
    pub event_id: Uuid,
    pub stream_id: String,
    pub event_type: String,
    pub position: i64,
    pub transaction_id: i64,
}

impl EventNotice {
    pub fn of(event: &EventHeader) -> Self {
        Self {
            event_id: event.event_id,
            stream_id: event.stream_id.as_str().to_owned(),
            event_type: event.event_type.clone(),
            position: event.global_position.0,
            transaction_id: event.transaction_id,
        }
    }
}

/// Connects to NATS and returns its JetStream context. The client reconnects by itself, for
/// ever, when the server goes away; publishes and fetches fail meanwhile and are retried by the
/// runtimes. It waits for the first connection (a server not there fails it): for tests and
/// tools; `serve` connects in the background ([`connect_nats_in_background`]).
pub async fn connect_nats(url: &str) -> Result<jetstream::Context, RuntimeError> {
    let client = connect_options()
        .connect(url)
        .await
        .map_err(|error| RuntimeError::nats("connect", error))?;
    Ok(jetstream::new(client))
}

/// [`connect_nats`] that does not wait for the server: the client connects (and reconnects)
/// in the background, and calls made meanwhile fail and are retried by their loops. For
/// `serve`: a process started while NATS is down comes up (its API serves, its relay and
/// consumers wait) instead of exiting and being restarted with growing back-off. A malformed
/// url still fails here.
pub async fn connect_nats_in_background(url: &str) -> Result<jetstream::Context, RuntimeError> {
    let client = connect_options()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|error| RuntimeError::nats("connect", error))?;
    Ok(jetstream::new(client))
}

/// Reconnecting for ever, its state changes logged.
fn connect_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name("lifeline")
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                // A server that cannot be reached (a wrong host, or down) says so here.
                async_nats::Event::ClientError(error) => {
                    tracing::warn!(%error, "nats client error");
                }
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
}

/// Whether the NATS connection behind `jetstream` is up: the readiness probe of a process that
/// needs the bus.
pub fn nats_connected(jetstream: &jetstream::Context) -> Result<(), String> {
    match jetstream.client().connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("nats is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(stream: &str, event_type: &str) -> EventHeader {
        EventHeader {
            event_id: Uuid::nil(),
            stream_id: lifeline_model::envelope::StreamId::parse(stream).unwrap(),
            stream_version: lifeline_model::envelope::StreamVersion(1),
            global_position: lifeline_model::envelope::GlobalPosition(1),
            transaction_id: 1,
            event_type: event_type.to_owned(),
            topic: None,
        }
    }

    #[test]
    fn a_records_events_share_a_class_and_every_filter_matches_its_subjects() {
        let bus = BusConfig::default();
        let corrected = bus.subject_for(&header("birth-1", "LifeEventCorrected"));
        assert_eq!(corrected, "lifeline.events.record.LifeEventCorrected");
        assert_eq!(
            bus.subject_for(&header("death-1", "LifeEventVoided")),
            "lifeline.events.record.LifeEventVoided"
        );
        assert_eq!(
            bus.subject_for(&header("task-1", "TaskCompleted")),
            "lifeline.events.task.TaskCompleted"
        );
        assert_eq!(bus.filter_subject(Notices::All), None);
        assert_eq!(
            bus.filter_subject(Notices::OfRecords).as_deref(),
            Some("lifeline.events.record.>")
        );
        assert_eq!(
            bus.filter_subject(Notices::OfType("BirthRecorded"))
                .as_deref(),
            Some("lifeline.events.*.BirthRecorded")
        );
    }

    #[test]
    fn a_completion_is_published_under_its_procedure_and_its_policy_filter_takes_only_those() {
        let bus = BusConfig::default();
        let completed = |topic: Option<&str>| {
            bus.subject_for(&EventHeader {
                topic: topic.map(str::to_owned),
                ..header("task-1", "TaskCompleted")
            })
        };
        let births = bus
            .filter_subject(Notices::OfTopic {
                kind: "task",
                topic: "birth-registration",
                event_type: "TaskCompleted",
            })
            .unwrap();
        assert_eq!(
            births,
            "lifeline.events.task-birth-registration.TaskCompleted"
        );
        assert_eq!(completed(Some("birth-registration")), births);
        assert_eq!(
            completed(Some("death-registration")),
            "lifeline.events.task-death-registration.TaskCompleted"
        );
        assert_eq!(completed(None), "lifeline.events.task.TaskCompleted");
        // A consumer made before, filtered on the type alone, still takes every completion.
        let any = bus
            .filter_subject(Notices::OfType("TaskCompleted"))
            .unwrap();
        assert!(matches_filter(&any, &completed(Some("birth-registration"))));
        assert!(matches_filter(&any, &completed(None)));
        assert!(!matches_filter(
            &births,
            &completed(Some("death-registration"))
        ));
        assert!(!matches_filter(&births, &completed(None)));
        // A record's class stays `record`, whatever its payload names.
        let corrected = EventHeader {
            topic: Some("birth-registration".to_owned()),
            ..header("birth-1", "LifeEventCorrected")
        };
        assert_eq!(
            bus.subject_for(&corrected),
            "lifeline.events.record.LifeEventCorrected"
        );
        // A topic cannot add tokens or wildcards.
        assert_eq!(
            completed(Some("a.b>")),
            "lifeline.events.task-a_b_.TaskCompleted"
        );
    }

    /// NATS subject matching: `*` one token, `>` one or more trailing tokens.
    fn matches_filter(filter: &str, subject: &str) -> bool {
        let filter: Vec<&str> = filter.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        for (index, token) in filter.iter().enumerate() {
            match *token {
                ">" => return subject.len() > index,
                "*" if index < subject.len() => {}
                token if subject.get(index) == Some(&token) => {}
                _ => return false,
            }
        }
        filter.len() == subject.len()
    }

    #[test]
    fn subject_tokens_cannot_form_wildcards_or_new_tokens() {
        assert_eq!(subject_token("BirthRecorded"), "BirthRecorded");
        assert_eq!(subject_token("a.b*>c d"), "a_b__c_d");
        assert_eq!(subject_token(""), "_");
    }
}
