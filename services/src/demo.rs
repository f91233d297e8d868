//! `lifeline demo`: records realistic births and deaths on the embedded store, runs every linked
//! procedure with simulated agencies, and prints each step and the final state.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc};
use lifeline_model::declaration::{BirthDeclarationInput, DeathDeclarationInput};
use lifeline_model::envelope::{LogCursor, RecordedEvent, Role};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::task::{TaskCommand, TaskOutcome, TaskStatus};
use lifeline_model::values::vietnam_date;
use lifeline_policies::handler::PolicyHandler;
use lifeline_policies::projections::projection_subscribers;
use lifeline_policies::projections::rebuild::catch_up;
use lifeline_policies::reference::{vietnam_offset, ReferenceData};
use lifeline_policies::runtime::embedded::PolicySubscriber;
use lifeline_store::projections::{inbox, life_event_status, InboxFilter, Page, TaskRow};
use lifeline_store::EventStore;
use serde_json::json;
use uuid::Uuid;

use crate::registry::{Actor, Recorded, Registry};
use crate::tasks::TaskDesk;

/// Records the sample births and deaths (dates relative to today in Vietnam at `now`) and
/// returns what was recorded.
pub async fn record_samples(
    registry: &Registry,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Recorded>> {
    let today = vietnam_date(now);
    let mut recorded = Vec::new();
    for (office, input) in sample_births(today)? {
        let actor = registrar(office);
        recorded.push(registry.record_birth(&actor, &input, today).await?);
    }
    for (office, input) in sample_deaths(today)? {
        let actor = registrar(office);
        recorded.push(registry.record_death(&actor, &input, now).await?);
    }
    Ok(recorded)
}

/// Runs the demo on `store` and writes what happened to `out`: the samples are recorded, the
/// policies and projections run off the store's subscription (the embedded runtime, no NATS),
/// simulated agencies claim and complete every task they receive, until nothing moves.
pub async fn run(store: &EventStore, out: &mut impl Write) -> anyhow::Result<()> {
    let now = Utc::now();
    let today = vietnam_date(now);
    let registry = Registry::new(store.clone());
    let desk = TaskDesk::new(store.clone());
    let engine: Arc<dyn PolicyHandler> = Arc::new(crate::serve::policy_engine(
        ReferenceData::embedded().context("loading the embedded reference data")?,
    ));
    let mut policies: Vec<PolicySubscriber> = engine
        .policy_names()
        .into_iter()
        .map(|name| PolicySubscriber::new(Arc::clone(&engine), name))
        .collect();
    let mut projections = projection_subscribers();

    let recorded = record_samples(&registry, now).await?;
    writeln!(
        out,
        "1. Registrars record {} life events on {today}:",
        recorded.len()
    )?;
    for record in &recorded {
        writeln!(
            out,
            "   {}  reference {}",
            record.stream_id, record.reference
        )?;
    }

    let mut cursor = LogCursor::START;
    let mut round = 1;
    loop {
        // Policies and projections catch up with the log (each policy, then each projection).
        for policy in &mut policies {
            catch_up(store, policy, None)
                .await
                .context("running a policy")?;
        }
        for projection in &mut projections {
            catch_up(store, projection.as_mut(), None)
                .await
                .context("running a projection")?;
        }
        round += 1;
        writeln!(out)?;
        writeln!(out, "{round}. What the log gained:")?;
        cursor = print_log_since(store, cursor, out).await?;

        // Each agency works its open tasks.
        let mut completed = 0;
        for agency in AgencyId::ALL {
            let open = inbox(
                store,
                agency,
                &InboxFilter {
                    status: Some(TaskStatus::Open),
                    ..InboxFilter::default()
                },
                Page {
                    after: None,
                    limit: 500,
                },
            )
            .await
            .context("reading an inbox")?;
            for task in open {
                let officer = Actor {
                    id: format!("officer@{}", task.office),
                    role: Role::Agency,
                    office: Some(task.office.to_string()),
                    correlation_id: Uuid::now_v7(),
                    idempotency_key: None,
                };
                let outcome = simulated_outcome(&task, completed)?;
                let at = Utc::now();
                desk.execute(
                    &officer,
                    task.task_id,
                    TaskCommand::Claim {
                        by: officer.id.clone(),
                        at,
                    },
                )
                .await?;
                desk.execute(
                    &officer,
                    task.task_id,
                    TaskCommand::Complete {
                        by: officer.id.clone(),
                        outcome: outcome.clone(),
                        at,
                    },
                )
                .await?;
                writeln!(
                    out,
                    "   {agency} office {} completes {}: {}",
                    task.office,
                    task.procedure,
                    describe_outcome(&outcome)
                )?;
                completed += 1;
            }
        }
        if completed == 0 {
            break;
        }
    }

    writeln!(out)?;
    writeln!(out, "Final state of every linked procedure:")?;
    for record in &recorded {
        let Some(status) = life_event_status(store, record.life_event_id)
            .await
            .context("reading a life event's status")?
        else {
            continue;
        };
        writeln!(
            out,
            "   {} {} ({:?}{}):",
            record.reference,
            record.stream_id,
            status.kind,
            if status.late { ", declared late" } else { "" }
        )?;
        for procedure in &status.procedures {
            writeln!(
                out,
                "      {:<26} {:<13} {}",
                procedure.procedure.as_str(),
                procedure.state.as_str(),
                procedure.detail.as_deref().unwrap_or("")
            )?;
        }
    }
    let total = store
        .read_all(LogCursor::START, usize::MAX >> 1)
        .await?
        .len();
    writeln!(out)?;
    writeln!(out, "{total} events in the log; replay or audit them with `lifeline export` / `lifeline replay`.")?;
    Ok(())
}

/// Prints every event after `cursor` and answers the new cursor.
async fn print_log_since(
    store: &EventStore,
    mut cursor: LogCursor,
    out: &mut impl Write,
) -> anyhow::Result<LogCursor> {
    loop {
        let page = store.read_all(cursor, 500).await?;
        let Some(last) = page.last() else {
            return Ok(cursor);
        };
        cursor = last.cursor();
        for event in &page {
            writeln!(out, "   {}", describe(event))?;
        }
    }
}

/// What a simulated agency answers for a task: numbers in each agency's style, the card valid
/// until the child's 72nd month, the payment the eligibility decision computed.
fn simulated_outcome(task: &TaskRow, serial: usize) -> anyhow::Result<TaskOutcome> {
    let year = Utc::now().with_timezone(&vietnam_offset()).year();
    let number = |prefix: &str| {
        format!(
            "{prefix}-{}-{year}-{:06}",
            task.office.province(),
            serial + 1
        )
    };
    Ok(match task.procedure {
        ProcedureId::BirthRegistration => TaskOutcome::BirthRegistered {
            certificate_number: number("KS"),
        },
        ProcedureId::ResidenceRegistration => TaskOutcome::ResidenceRegistered {
            entry_number: number("CT"),
        },
        ProcedureId::ChildHealthInsurance => {
            let born = task
                .application
                .date("child.date_of_birth")
                .context("the insurance task has the child's date of birth")?;
            let valid_until = born
                .checked_add_months(Months::new(72))
                .and_then(|date| date.pred_opt())
                .context("the card's validity")?;
            TaskOutcome::InsuranceCardIssued {
                card_number: number("TE1"),
                valid_until,
            }
        }
        ProcedureId::DeathRegistration => TaskOutcome::DeathRegistered {
            extract_number: number("KT"),
        },
        ProcedureId::ResidenceDeregistration => TaskOutcome::ResidenceClosed {
            entry_number: number("XT"),
        },
        ProcedureId::BurialAllowance | ProcedureId::FuneralSupport => {
            let amount_vnd = task
                .application
                .get("eligibility.amount_vnd")
                .and_then(serde_json::Value::as_i64)
                .context("the payment task carries the decided amount")?;
            TaskOutcome::PaymentDecided {
                decision_number: number("QD"),
                amount_vnd,
            }
        }
    })
}

fn describe_outcome(outcome: &TaskOutcome) -> String {
    match outcome {
        TaskOutcome::BirthRegistered { certificate_number } => {
            format!("birth certificate {certificate_number}")
        }
        TaskOutcome::ResidenceRegistered { entry_number } => {
            format!("residence entry {entry_number}")
        }
        TaskOutcome::InsuranceCardIssued {
            card_number,
            valid_until,
        } => format!("health-insurance card {card_number}, valid until {valid_until}"),
        TaskOutcome::DeathRegistered { extract_number } => {
            format!("death extract {extract_number}")
        }
        TaskOutcome::ResidenceClosed { entry_number } => {
            format!("residence closed, entry {entry_number}")
        }
        TaskOutcome::PaymentDecided {
            decision_number,
            amount_vnd,
        } => format!(
            "decision {decision_number}: {} VND",
            group_thousands(*amount_vnd)
        ),
        TaskOutcome::Revoked { decision_number } => {
            format!("revoked by decision {decision_number}")
        }
    }
}

fn group_thousands(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if amount < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// One line per event: position, stream, version, type, and a short summary without personal data.
pub fn describe(event: &RecordedEvent) -> String {
    format!(
        "#{:<5} {:<45} v{:<2} {} (schema {}, by {} {})",
        event.global_position.0,
        event.stream_id,
        event.stream_version.0,
        event.event_type,
        event.schema_version,
        role_label(event.metadata.role),
        event
            .metadata
            .office
            .as_deref()
            .unwrap_or(&event.metadata.actor),
    )
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Registrar => "registrar",
        Role::Agency => "agency",
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

fn registrar(office: &str) -> Actor {
    Actor {
        id: format!("registrar@{office}"),
        role: Role::Registrar,
        office: Some(office.to_owned()),
        correlation_id: Uuid::now_v7(),
        idempotency_key: None,
    }
}

/// Three births: both parents, no father, and a late declaration (after 60 days).
pub fn sample_births(
    today: NaiveDate,
) -> anyhow::Result<Vec<(&'static str, BirthDeclarationInput)>> {
    let day = |days: i64| (today - Duration::days(days)).to_string();
    let births = vec![
        (
            "79-26734",
            json!({
                "office": "79-26734",
                "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": day(2),
                           "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": "TP. Hồ Chí Minh",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "date_of_birth": "1990-04-02",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": "079088004321", "date_of_birth": "1988-07-09",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
                "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": day(2) },
                "declarant": { "full_name": "Trần Thị Bích", "personal_id": "079190001234", "relationship": "mother",
                               "phone": "+84901234567" },
                "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
            }),
        ),
        (
            "01-00004",
            json!({
                "office": "01-00004",
                "child": { "full_name": "Phạm Gia Huy", "sex": "male", "date_of_birth": day(10),
                           "place_of_birth": "Bệnh viện Phụ sản Hà Nội", "hometown": "Hà Nội",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Phạm Thu Hà", "personal_id": "001195004567", "date_of_birth": "1995-01-20",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": null,
                "residence": { "province": "01", "commune": "00004", "address": "5 Hàng Bông" },
                "birth_notice": { "number": "PSHN-2026-0042", "issuer": "Bệnh viện Phụ sản Hà Nội", "date": day(10) },
                "declarant": { "full_name": "Phạm Thu Hà", "personal_id": "001195004567", "relationship": "mother",
                               "email": "thuha@example.vn" },
                "procedures": ["birth-registration", "child-health-insurance"]
            }),
        ),
        (
            "48-20194",
            json!({
                "office": "48-20194",
                "child": { "full_name": "Lê Hoàng Nam", "sex": "male", "date_of_birth": day(75),
                           "place_of_birth": "Trạm y tế phường Hải Châu I", "hometown": "Đà Nẵng",
                           "ethnicity": "Kinh", "nationality": "VN" },
                "mother": { "full_name": "Võ Thị Mai", "personal_id": "048192007788", "date_of_birth": "1992-09-30",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "father": { "full_name": "Lê Quang Vinh", "personal_id": "048090003344", "date_of_birth": "1990-12-01",
                            "ethnicity": "Kinh", "nationality": "VN" },
                "residence": { "province": "48", "commune": "20194", "address": "27 Trần Phú" },
                "declarant": { "full_name": "Lê Quang Vinh", "personal_id": "048090003344", "relationship": "father",
                               "phone": "0905123456" }
            }),
        ),
    ];
    births
        .into_iter()
        .map(|(office, body)| Ok((office, serde_json::from_value(body)?)))
        .collect()
}

/// Two deaths: one applying for all four procedures, one for three.
pub fn sample_deaths(
    today: NaiveDate,
) -> anyhow::Result<Vec<(&'static str, DeathDeclarationInput)>> {
    let day = |days: i64| (today - Duration::days(days)).to_string();
    let deaths = vec![
        (
            "01-00004",
            json!({
                "office": "01-00004",
                "deceased": { "full_name": "Lê Văn Cường", "personal_id": "001052000111", "date_of_birth": "1952-03-15",
                              "sex": "male", "ethnicity": "Kinh", "nationality": "VN",
                              "residence": { "province": "01", "commune": "00004", "address": "5 Hàng Bông" } },
                "death": { "at": format!("{}T06:30:00+07:00", day(4)), "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                           "cause": "tuổi cao",
                           "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": day(4) } },
                "declarant": { "full_name": "Lê Văn Dũng", "personal_id": "001080000222", "relationship": "son",
                               "email": "dung@example.vn" },
                "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
            }),
        ),
        (
            "79-26734",
            json!({
                "office": "79-26734",
                "deceased": { "full_name": "Đỗ Thị Hạnh", "personal_id": "079145000987", "date_of_birth": "1945-06-01",
                              "sex": "female", "ethnicity": "Kinh", "nationality": "VN",
                              "residence": { "province": "79", "commune": "26734", "address": "40 Nguyễn Huệ" } },
                "death": { "at": format!("{}T22:10:00+07:00", day(1)), "place": "Bệnh viện Chợ Rẫy",
                           "cause": "suy tim",
                           "notice": { "number": "CR-2026-7710", "issuer": "Bệnh viện Chợ Rẫy", "date": day(1) } },
                "declarant": { "full_name": "Đỗ Văn Toàn", "personal_id": "079075001122", "relationship": "son",
                               "phone": "+84903334455" },
                "procedures": ["death-registration", "residence-deregistration", "burial-allowance"]
            }),
        ),
    ];
    deaths
        .into_iter()
        .map(|(office, body)| Ok((office, serde_json::from_value(body)?)))
        .collect()
}
