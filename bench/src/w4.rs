//! W4: rebuild every projection (`rebuild_projections`) from a log of N events.
//!
//! The log is realistic because it is real: `lifeline::demo::run` first plays the whole chain
//! (sample births and deaths, every policy, simulated agencies completing every task) on a
//! template database; its log is then copied until N events are stored, each copy with its own
//! uuids (streams, event ids, task and life-event ids), references and personal ID numbers, in
//! the template's commit order, consecutive events of one stream in one multi-event append, many
//! copies per transaction (each append in its own savepoint), a few writers at once.
//! Generation and rebuild are reported apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lifeline_model::envelope::{
    EventMetadata, ExpectedVersion, LogCursor, NewEvent, RecordedEvent, StreamId,
};
use lifeline_policies::projections::rebuild::rebuild_projections;
use lifeline_store::EventStore;
use serde_json::Value;
use sqlx::Executor;
use uuid::Uuid;

use crate::common::{Figure, FreshDatabase};

/// Copies of the template per transaction.
const COPIES_PER_TRANSACTION: usize = 25;
const WRITERS: usize = 4;
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

pub(crate) async fn run(target_events: usize) -> anyhow::Result<()> {
    // For profiling the rebuild alone: `W4_KEEP_DATABASE=1` keeps the generated log (its
    // database's name is printed), `W4_DATABASE=<name>` rebuilds that log again without
    // generating one.
    if let Ok(name) = std::env::var("W4_DATABASE") {
        let database = FreshDatabase::existing(name)?;
        let store = EventStore::connect_postgres(database.options(), 6).await?;
        let written: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(store.postgres_pool().context("PostgreSQL")?)
            .await?;
        return rebuild_and_report(&store, usize::try_from(written)?, target_events).await;
    }
    let template = template().await?;
    let database = FreshDatabase::create().await?;
    let result = run_on(&database, &template, target_events).await;
    if std::env::var_os("W4_KEEP_DATABASE").is_some() {
        eprintln!("w4: kept the log in database {}", database.name);
    } else {
        database.drop_now().await?;
    }
    result
}

/// The log of one demo run (every event, commit order).
async fn template() -> anyhow::Result<Vec<RecordedEvent>> {
    let database = FreshDatabase::create().await?;
    let result = async {
        let store = database.store(4).await?;
        let mut sink = Vec::new();
        lifeline::demo::run(&store, &mut sink).await?;
        let events = read_everything(&store).await?;
        store.close().await;
        Ok::<_, anyhow::Error>(events)
    }
    .await;
    database.drop_now().await?;
    result
}

async fn read_everything(store: &EventStore) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut events = Vec::new();
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_all(cursor, 5_000).await?;
        let Some(last) = page.last() else {
            return Ok(events);
        };
        cursor = last.cursor();
        events.extend(page);
    }
}

async fn run_on(
    database: &FreshDatabase,
    template: &[RecordedEvent],
    target_events: usize,
) -> anyhow::Result<()> {
    let copies = target_events.div_ceil(template.len());
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for event in template {
        *kinds.entry(event.event_type.as_str()).or_default() += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    eprintln!(
        "w4: template of {} events ({kinds:?}), {copies} copies",
        template.len()
    );
    let store = database.store(u32::try_from(WRITERS + 2)?).await?;
    let template = Arc::new(template.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        let template = Arc::clone(&template);
        let next = Arc::clone(&next);
        writers.spawn(async move {
            let mut written = 0_usize;
            loop {
                let first = next.fetch_add(COPIES_PER_TRANSACTION, Ordering::Relaxed);
                if first >= copies {
                    return Ok::<_, anyhow::Error>(written);
                }
                let last = (first + COPIES_PER_TRANSACTION).min(copies);
                let mut tx = store.begin().await?;
                for copy in first..last {
                    for (stream, events) in copy_of(&template, copy)? {
                        written += events.len();
                        tx.append(&stream, ExpectedVersion::Any, &events)
                            .await
                            .map_err(|error| anyhow::anyhow!("append {stream}: {error}"))?;
                    }
                }
                tx.commit().await?;
            }
        });
    }
    let mut written = 0;
    while let Some(joined) = writers.join_next().await {
        written += joined??;
    }
    let generation = started.elapsed();
    Figure::new(format!("w4_generate_{}", label(target_events)), written, generation)
        .extra(format!(
            "template_events={} copies={copies} writers={WRITERS} copies_per_tx={COPIES_PER_TRANSACTION}",
            template.len()
        ))
        .print();

    rebuild_and_report(&store, written, target_events).await?;
    store.close().await;
    Ok(())
}

/// Times `rebuild_projections` on the log of `store` (`written` events) and prints its figure.
async fn rebuild_and_report(
    store: &EventStore,
    written: usize,
    target_events: usize,
) -> anyhow::Result<()> {
    let pool = store.postgres_pool().context("PostgreSQL")?;
    pool.execute("VACUUM ANALYZE").await?;
    pool.execute("CHECKPOINT").await?;
    let table_bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')")
        .fetch_one(pool)
        .await?;
    let before = statement_counts(pool).await?;
    let started = Instant::now();
    let report = rebuild_projections(store).await?;
    let rebuild = started.elapsed();
    // The statistics collector flushes at most once a second per backend.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let after = statement_counts(pool).await?;
    let statements: Vec<String> = after
        .iter()
        .zip(&before)
        .map(|((name, a), (_, b))| format!("{name}:{}", a - b))
        .collect();
    let total: i64 = after
        .iter()
        .zip(&before)
        .map(|((_, a), (_, b))| a - b)
        .sum();
    let per_projection: Vec<String> = report
        .events_per_projection
        .iter()
        .map(|(name, handled)| format!("{name}:{handled}"))
        .collect();
    Figure::new(
        format!("w4_rebuild_projections_{}", label(target_events)),
        written,
        rebuild,
    )
    .extra(format!(
        "projections={} events_table_mb={} projection_row_ops={} row_ops_per_event={:.2}",
        per_projection.join(","),
        table_bytes / 1_000_000,
        statements.join(","),
        total as f64 / written as f64
    ))
    .print();
    Ok(())
}

fn label(events: usize) -> String {
    if events.is_multiple_of(1_000_000) {
        format!("{}m", events / 1_000_000)
    } else if events.is_multiple_of(1_000) {
        format!("{}k", events / 1_000)
    } else {
        events.to_string()
    }
}

/// Copy number `copy` of the template: its appends in commit order (consecutive events of one
/// stream together).
fn copy_of(
    template: &[RecordedEvent],
    copy: usize,
) -> anyhow::Result<Vec<(StreamId, Vec<NewEvent>)>> {
    let mut renamer = Renamer::new(copy);
    let mut appends: Vec<(StreamId, Vec<NewEvent>)> = Vec::new();
    for event in template {
        let stream = StreamId::parse(renamer.string(event.stream_id.as_str()))
            .context("a renamed stream id")?;
        let metadata: EventMetadata =
            serde_json::from_value(renamer.value(&serde_json::to_value(&event.metadata)?))?;
        let new = NewEvent {
            event_id: renamer.uuid(event.event_id),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            payload: renamer.value(&event.payload),
            metadata,
        };
        match appends.last_mut() {
            Some((last, events)) if *last == stream => events.push(new),
            _ => appends.push((stream, vec![new])),
        }
    }
    Ok(appends)
}

/// Gives every uuid, reference (`LL-` + 10) and personal ID number (12 digits) of the template
/// a value of this copy's own, the same one wherever it occurs.
struct Renamer {
    copy: Uuid,
    copy_index: usize,
    pins: HashMap<String, String>,
}

impl Renamer {
    fn new(copy_index: usize) -> Self {
        Self {
            copy: Uuid::from_u128(0x6c69_6665_6c69_6e65_0000_0000_0000_0000 + copy_index as u128),
            copy_index,
            pins: HashMap::new(),
        }
    }

    fn uuid(&self, original: Uuid) -> Uuid {
        Uuid::new_v5(&self.copy, original.as_bytes())
    }

    fn value(&mut self, value: &Value) -> Value {
        match value {
            Value::String(text) => Value::String(self.string(text)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|item| self.value(item)).collect())
            }
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, item)| (self.string(key), self.value(item)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn string(&mut self, text: &str) -> String {
        if text.len() == 12 && text.bytes().all(|byte| byte.is_ascii_digit()) {
            return self.pin(text);
        }
        if text.len() == 13 && text.starts_with("LL-") {
            return self.reference(text);
        }
        if let Some((kind, rest)) = text.split_once('-') {
            if rest.len() == 12 && rest.bytes().all(|byte| byte.is_ascii_digit()) {
                return format!("{kind}-{}", self.pin(rest));
            }
        }
        self.uuids_in(text)
    }

    /// The province, sex-century and birth-year digits kept; a serial of this copy's own.
    fn pin(&mut self, original: &str) -> String {
        let known = self.pins.len();
        let copy_index = self.copy_index;
        self.pins
            .entry(original.to_owned())
            .or_insert_with(|| {
                let serial = (copy_index * 16 + known) % 1_000_000;
                format!("{}{serial:06}", &original[..6])
            })
            .clone()
    }

    fn reference(&self, original: &str) -> String {
        let seed = Uuid::new_v5(&self.copy, original.as_bytes()).as_u128();
        let code: String = (0..10)
            .map(|place| char::from(CROCKFORD[((seed >> (place * 5)) & 31) as usize]))
            .collect();
        format!("LL-{code}")
    }

    fn uuids_in(&self, text: &str) -> String {
        if text.len() < 36 {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while rest.len() >= 36 {
            match rest.get(..36).and_then(|head| Uuid::try_parse(head).ok()) {
                Some(found) if rest.as_bytes()[8] == b'-' => {
                    out.push_str(&self.uuid(found).hyphenated().to_string());
                    rest = &rest[36..];
                }
                _ => {
                    let mut chars = rest.chars();
                    if let Some(first) = chars.next() {
                        out.push(first);
                    }
                    rest = chars.as_str();
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Index scans (row loads) and inserted/updated/deleted rows of each projection table: the
/// rebuild's row operations, to tell per-event round trips from bulk work.
async fn statement_counts(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, coalesce(idx_scan, 0) + coalesce(seq_scan, 0), \
         n_tup_ins + n_tup_upd + n_tup_del \
         FROM pg_stat_user_tables WHERE relname LIKE 'projection_%' ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .flat_map(|(name, scans, writes)| {
            [
                (format!("{name}.scans"), scans),
                (format!("{name}.writes"), writes),
            ]
        })
        .collect())
}
