//! The projections (agency inbox, person registry, life-event status) and the overdue watcher,
//! on PostgreSQL and SQLite: realistic birth and death chains appended with the model's types,
//! the live projections run until caught up, rows checked; a rebuild equals the live result; a
//! restarted projection doubles nothing; two concurrent watchers mark a late task exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use lifeline_model::codec::{self, EventFamily};
use lifeline_model::declaration::{
    parse_birth, parse_death, BirthDeclaration, BirthDeclarationInput, DeathDeclaration,
    DeathDeclarationInput, Declaration,
};
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, LogCursor, StreamId};
use lifeline_model::life_event::{
    BirthRecorded, DeathRecorded, LifeEventCorrected, LifeEventEvent, LifeEventVoided, Reference,
};
use lifeline_model::procedure::{AgencyId, ProcedureId};
use lifeline_model::system_events::{EligibilityDecided, PersonalIdAssigned, SystemEvent};
use lifeline_model::task::{
    Application, TaskClaimed, TaskCompleted, TaskCreated, TaskEvent, TaskOutcome, TaskStatus,
};
use lifeline_model::values::{vietnam_day_end, FullName, PersonalId, Sex};
use lifeline_policies::projections::{
    rebuild_projections, rebuild_projections_until, PROJECTION_NAMES,
};
use lifeline_policies::watcher::check_overdue_once;
use lifeline_store::projections::{
    self, InboxFilter, LifeEventStatusRow, Page, PersonRole, PersonRow, ProcedureState, TaskRow,
    VitalStatus,
};
use lifeline_store::{run_subscription, EventStore};
use lifeline_tests::backend_tests;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

backend_tests!(
    projections_follow_a_birth_and_a_death,
    rebuild_equals_live_and_as_of_replays_a_prefix,
    restarted_projections_double_nothing,
    a_batch_rolled_back_and_handled_again_ends_as_a_rebuild,
    many_rows_are_saved_in_chunks,
    watcher_marks_a_late_task_exactly_once,
    a_failing_subscriber_leaves_the_group_and_the_others_keep_up,
    a_replaced_task_leaves_its_procedure_to_the_new_one,
    a_rebuild_stops_at_an_undecodable_event_and_names_it,
    unchanged_procedure_rows_are_not_written_again,
    a_voided_birth_marks_its_childs_link_voided,
    the_auditors_replay_folds_persons_and_life_events_as_the_projections_do,
    the_real_policies_correcting_a_death_and_a_birth_leave_the_replay_equal_to_the_projections,
    a_new_tasks_inbox_row_commits_with_its_creation_and_never_overwrites_the_projection,
    two_records_sharing_a_reference_are_both_stored_and_the_reference_is_ambiguous,
    a_completed_reversal_undoes_its_procedure,
);

const MOTHER: &str = "079190001234";
const FATHER: &str = "079088004321";
const CHILD: &str = "079326000123";
const DECEASED: &str = "001052000111";
const DECLARANT_SON: &str = "001080000222";
const WRONGLY_DECEASED: &str = "001052000999";

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
}

fn birth_declaration(hometown: &str) -> BirthDeclaration {
    birth_declaration_with_father(hometown, FATHER)
}

fn birth_declaration_with_father(hometown: &str, father: &str) -> BirthDeclaration {
    let input: BirthDeclarationInput = serde_json::from_value(json!({
        "office": "79-26734",
        "child": { "full_name": "Nguyễn Minh An", "sex": "female", "date_of_birth": "2026-11-20",
                   "place_of_birth": "Bệnh viện Từ Dũ, TP. Hồ Chí Minh", "hometown": hometown,
                   "ethnicity": "Kinh", "nationality": "VN" },
        "mother": { "full_name": "Trần Thị Bích", "personal_id": MOTHER, "date_of_birth": "1990-04-02",
                    "ethnicity": "Kinh", "nationality": "VN" },
        "father": { "full_name": "Nguyễn Văn Hùng", "personal_id": father, "date_of_birth": "1988-07-09",
                    "ethnicity": "Kinh", "nationality": "VN" },
        "residence": { "province": "79", "commune": "26734", "address": "12 Lê Lợi" },
        "birth_notice": { "number": "TD-2026-118822", "issuer": "Bệnh viện Từ Dũ", "date": "2026-11-20" },
        "declarant": { "full_name": "Trần Thị Bích", "personal_id": MOTHER, "relationship": "mother",
                       "phone": "+84901234567" },
        "procedures": ["birth-registration", "residence-registration", "child-health-insurance"]
    }))
    .unwrap();
    parse_birth(&input, today()).unwrap()
}

fn death_declaration(deceased_pin: &str) -> DeathDeclaration {
    let input: DeathDeclarationInput = serde_json::from_value(json!({
        "office": "01-00004",
        "deceased": { "full_name": "Lê Văn Cường", "personal_id": deceased_pin, "date_of_birth": "1952-03-15",
                      "sex": "male",
                      "residence": { "province": "01", "commune": "00004", "address": "5 Hàng Bông" } },
        "death": { "at": "2026-11-18T06:30:00+07:00", "place": "Nhà riêng, 5 Hàng Bông, Hà Nội",
                   "cause": "tuổi cao", "notice": { "number": "BV-2026-5531", "issuer": "Trạm y tế phường", "date": "2026-11-18" } },
        "declarant": { "full_name": "Lê Văn Dũng", "personal_id": DECLARANT_SON, "relationship": "son",
                       "email": "dung@example.vn" },
        "procedures": ["death-registration", "residence-deregistration", "burial-allowance", "funeral-support"]
    }))
    .unwrap();
    parse_death(&input, vietnam_day_end(today())).unwrap()
}

fn pin(raw: &str) -> PersonalId {
    PersonalId::parse(raw).unwrap()
}

/// Appends one event of any family to `stream`, recorded at `recorded_at`.
async fn append<E: EventFamily>(
    store: &EventStore,
    stream: &StreamId,
    event: &E,
    recorded_at: DateTime<Utc>,
) -> i64 {
    let event_id = Uuid::now_v7();
    let metadata = EventMetadata::system("test", Uuid::new_v4(), None, recorded_at);
    let new_event = codec::to_new_event(event, event_id, metadata);
    store
        .append(stream, ExpectedVersion::Any, &[new_event])
        .await
        .unwrap()
        .last_position
        .0
}

/// The child's number (`CHILD`) assigned to the birth `birth_id` at `assigned_at`, stored as the
/// allocator stores it: `pin-<number>`, under the record's assignment id.
async fn assign_child_number(
    store: &EventStore,
    birth_id: Uuid,
    registration_task: Option<Uuid>,
    assigned_at: DateTime<Utc>,
) {
    let assigned = SystemEvent::PersonalIdAssigned(
        PersonalIdAssigned::new(
            pin(CHILD),
            birth_id,
            registration_task,
            FullName::parse_field("Nguyễn Minh An", "x").unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            Sex::Female,
            assigned_at,
        )
        .unwrap(),
    );
    store
        .append(
            &stream(lifeline_policies::identity::PIN_STREAM_KIND, CHILD),
            ExpectedVersion::NoStream,
            &[codec::to_new_event(
                &assigned,
                lifeline_policies::identity::assignment_event_id(birth_id),
                EventMetadata::system("test", Uuid::new_v4(), None, assigned_at),
            )],
        )
        .await
        .unwrap();
}

fn stream(kind: &str, id: impl std::fmt::Display) -> StreamId {
    StreamId::for_kind(kind, id).unwrap()
}

async fn append_task(store: &EventStore, event: TaskEvent, recorded_at: DateTime<Utc>) -> i64 {
    let task_id = lifeline_policies::projections::task_id_of(&event);
    append(store, &stream("task", task_id), &event, recorded_at).await
}

fn task_created(
    task_id: Uuid,
    procedure: ProcedureId,
    life_event_id: Uuid,
    declaration: &Declaration,
    extra: &[(&str, serde_json::Value)],
    created_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
) -> TaskEvent {
    let mut facts = declaration.flatten();
    for (field, value) in extra {
        facts.insert((*field).to_owned(), value.clone());
    }
    TaskEvent::TaskCreated(TaskCreated {
        task_id,
        procedure,
        agency: procedure.agency(),
        life_event_id,
        office: declaration.office().clone(),
        application: Application::for_procedure(procedure, &facts),
        due_at,
        source_event_id: Uuid::new_v4(),
        created_at,
        follow_up: None,
    })
}

/// Records the scenario's birth (three procedures chosen) at 01:00 on the 21st: its id and
/// declaration.
async fn record_birth(store: &EventStore) -> (Uuid, Declaration) {
    let birth_id = Uuid::now_v7();
    let birth = birth_declaration("TP. Hồ Chí Minh");
    let birth_decl = Declaration::Birth(birth.clone());
    append(
        store,
        &stream("birth", birth_id),
        &LifeEventEvent::BirthRecorded(BirthRecorded {
            life_event_id: birth_id,
            reference: Reference::for_life_event(birth_id),
            recorded_on: today(),
            late: false,
            declaration: birth,
        }),
        at(21, 1),
    )
    .await;
    (birth_id, birth_decl)
}

/// What the scenario recorded: ids to look rows up by.
struct Scenario {
    birth_id: Uuid,
    death_id: Uuid,
    voided_death_id: Uuid,
    registration_task: Uuid,
    residence_task: Uuid,
    insurance_task: Uuid,
    death_task: Uuid,
    /// The global position of the scenario's last event.
    last_position: i64,
}

/// A birth with its three procedures (registration completed, the child's number assigned, a
/// card issued, residence open), corrected once; a death (registration open and late, funeral
/// support found not eligible); a second death recorded in error and voided.
async fn record_scenario(store: &EventStore) -> Scenario {
    let (birth_id, birth_decl) = record_birth(store).await;
    let registration_task = Uuid::now_v7();
    append_task(
        store,
        task_created(
            registration_task,
            ProcedureId::BirthRegistration,
            birth_id,
            &birth_decl,
            &[],
            at(21, 2),
            at(22, 10),
        ),
        at(21, 2),
    )
    .await;
    append_task(
        store,
        TaskEvent::TaskClaimed(TaskClaimed {
            task_id: registration_task,
            by: "officer-1".into(),
            at: at(21, 3),
        }),
        at(21, 3),
    )
    .await;
    append_task(
        store,
        TaskEvent::TaskCompleted(TaskCompleted {
            task_id: registration_task,
            procedure: Some(ProcedureId::BirthRegistration),
            by: "officer-1".into(),
            outcome: TaskOutcome::BirthRegistered {
                certificate_number: "KS-2026-0001".into(),
            },
            at: at(21, 4),
        }),
        at(21, 4),
    )
    .await;
    assign_child_number(store, birth_id, Some(registration_task), at(21, 4)).await;
    let child_facts = [
        ("child.personal_id", json!(CHILD)),
        ("birth_certificate_number", json!("KS-2026-0001")),
    ];
    let residence_task = Uuid::now_v7();
    let insurance_task = Uuid::now_v7();
    append_task(
        store,
        task_created(
            residence_task,
            ProcedureId::ResidenceRegistration,
            birth_id,
            &birth_decl,
            &child_facts,
            at(21, 5),
            at(23, 10),
        ),
        at(21, 5),
    )
    .await;
    append_task(
        store,
        task_created(
            insurance_task,
            ProcedureId::ChildHealthInsurance,
            birth_id,
            &birth_decl,
            &child_facts,
            at(21, 5),
            at(23, 10),
        ),
        at(21, 5),
    )
    .await;
    append_task(
        store,
        TaskEvent::TaskCompleted(TaskCompleted {
            task_id: insurance_task,
            procedure: Some(ProcedureId::ChildHealthInsurance),
            by: "bhxh-1".into(),
            outcome: TaskOutcome::InsuranceCardIssued {
                card_number: "TE1797926000123".into(),
                valid_until: NaiveDate::from_ymd_opt(2032, 11, 19).unwrap(),
            },
            at: at(21, 6),
        }),
        at(21, 6),
    )
    .await;
    let mut corrected = birth_declaration("Đồng Nai");
    corrected.child.full_name = FullName::parse_field("Nguyễn Minh Anh", "x").unwrap();
    append(
        store,
        &stream("birth", birth_id),
        &LifeEventEvent::LifeEventCorrected(LifeEventCorrected {
            life_event_id: birth_id,
            reason: "hometown and name misread".into(),
            recorded_on: today(),
            changed_fields: vec!["child.full_name".into(), "child.hometown".into()],
            declaration: Declaration::Birth(corrected),
        }),
        at(21, 7),
    )
    .await;

    let death_id = Uuid::now_v7();
    let death = death_declaration(DECEASED);
    let death_decl = Declaration::Death(death.clone());
    append(
        store,
        &stream("death", death_id),
        &LifeEventEvent::DeathRecorded(DeathRecorded {
            life_event_id: death_id,
            reference: Reference::for_life_event(death_id),
            recorded_on: today(),
            late: false,
            declaration: death,
        }),
        at(21, 8),
    )
    .await;
    append(
        store,
        &stream("eligibility", death_id),
        &SystemEvent::EligibilityDecided(EligibilityDecided {
            life_event_id: death_id,
            procedure: ProcedureId::FuneralSupport,
            eligible: false,
            reason: "not a social-protection beneficiary".into(),
            rule_version: "funeral-support/2025-1".into(),
            parameters: json!({ "assistance_standard_vnd": 500_000 }),
            amount_vnd: None,
            decided_at: at(21, 8),
        }),
        at(21, 8),
    )
    .await;
    let death_task = Uuid::now_v7();
    // Due yesterday: the watcher's candidate.
    append_task(
        store,
        task_created(
            death_task,
            ProcedureId::DeathRegistration,
            death_id,
            &death_decl,
            &[],
            at(21, 9),
            at(20, 10),
        ),
        at(21, 9),
    )
    .await;

    let voided_death_id = Uuid::now_v7();
    let wrong = death_declaration(WRONGLY_DECEASED);
    append(
        store,
        &stream("death", voided_death_id),
        &LifeEventEvent::DeathRecorded(DeathRecorded {
            life_event_id: voided_death_id,
            reference: Reference::for_life_event(voided_death_id),
            recorded_on: today(),
            late: false,
            declaration: wrong,
        }),
        at(21, 10),
    )
    .await;
    let last_position = append(
        store,
        &stream("death", voided_death_id),
        &LifeEventEvent::LifeEventVoided(LifeEventVoided {
            life_event_id: voided_death_id,
            reason: "recorded for the wrong person".into(),
            recorded_on: today(),
        }),
        at(21, 11),
    )
    .await;
    Scenario {
        birth_id,
        death_id,
        voided_death_id,
        registration_task,
        residence_task,
        insurance_task,
        death_task,
        last_position,
    }
}

/// The cursor of the last event readable now.
async fn log_head(store: &EventStore) -> LogCursor {
    let mut cursor = LogCursor::START;
    loop {
        let batch = store.read_all(cursor, 1000).await.unwrap();
        match batch.last() {
            Some(last) => cursor = last.cursor(),
            None => return cursor,
        }
    }
}

/// The live projections, each in its own `run_subscription`, until `stop`.
struct Running {
    shutdown: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

fn start_projections(store: &EventStore) -> Running {
    let (shutdown, receiver) = watch::channel(false);
    let handles = lifeline_policies::projections::projection_subscribers()
        .into_iter()
        .map(|mut subscriber| {
            let store = store.clone();
            let receiver = receiver.clone();
            tokio::spawn(async move {
                run_subscription(&store, subscriber.as_mut(), receiver)
                    .await
                    .unwrap();
            })
        })
        .collect();
    Running { shutdown, handles }
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        for handle in self.handles {
            handle.await.unwrap();
        }
    }
}

/// Polls (with a deadline) until the event at `last_position` is readable and every
/// projection's checkpoint is at the head of the log. (On PostgreSQL the gap-free reader hides
/// events while any older transaction of the server is still running, other tests' included.)
async fn caught_up(store: &EventStore, last_position: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let head = log_head(store).await;
        let mut all = head.global_position >= last_position;
        for name in PROJECTION_NAMES {
            if store.load_checkpoint(name).await.unwrap() < head {
                all = false;
            }
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up with {head:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every row the scenario's ids reach, for comparing two builds.
async fn snapshot(
    store: &EventStore,
    scenario: &Scenario,
) -> (
    Vec<TaskRow>,
    Vec<Option<PersonRow>>,
    Vec<Option<LifeEventStatusRow>>,
) {
    let mut tasks = Vec::new();
    for agency in AgencyId::ALL {
        tasks.extend(
            projections::inbox(
                store,
                agency,
                &InboxFilter::default(),
                Page {
                    after: None,
                    limit: 100,
                },
            )
            .await
            .unwrap(),
        );
    }
    let mut persons = Vec::new();
    for raw in [
        MOTHER,
        FATHER,
        CHILD,
        DECEASED,
        DECLARANT_SON,
        WRONGLY_DECEASED,
    ] {
        persons.push(projections::person(store, &pin(raw)).await.unwrap());
    }
    let mut statuses = Vec::new();
    for id in [
        scenario.birth_id,
        scenario.death_id,
        scenario.voided_death_id,
    ] {
        statuses.push(projections::life_event_status(store, id).await.unwrap());
    }
    (tasks, persons, statuses)
}

async fn projections_follow_a_birth_and_a_death(store: EventStore) {
    let running = start_projections(&store);
    let scenario = record_scenario(&store).await;
    caught_up(&store, scenario.last_position).await;
    running.stop().await;

    // The inbox.
    let civil = projections::inbox(
        &store,
        AgencyId::CivilRegistry,
        &InboxFilter::default(),
        Page::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        civil.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        [scenario.death_task, scenario.registration_task],
        "ordered by due time"
    );
    let registration = projections::task(&store, scenario.registration_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registration.status, TaskStatus::Completed);
    assert_eq!(registration.claimed_by.as_deref(), Some("officer-1"));
    assert_eq!(registration.created_at, at(21, 2));
    assert_eq!(registration.updated_at, at(21, 4));
    assert_eq!(
        registration.outcome,
        Some(TaskOutcome::BirthRegistered {
            certificate_number: "KS-2026-0001".into()
        })
    );
    assert_eq!(
        registration.application.get("child.full_name"),
        Some(&json!("Nguyễn Minh An"))
    );
    let open_only = InboxFilter {
        status: Some(TaskStatus::Open),
        ..InboxFilter::default()
    };
    let open = projections::inbox(&store, AgencyId::CivilRegistry, &open_only, Page::default())
        .await
        .unwrap();
    assert_eq!(
        open.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        [scenario.death_task]
    );
    let first = projections::inbox(
        &store,
        AgencyId::CivilRegistry,
        &InboxFilter::default(),
        Page {
            after: None,
            limit: 1,
        },
    )
    .await
    .unwrap();
    let second = projections::inbox(
        &store,
        AgencyId::CivilRegistry,
        &InboxFilter::default(),
        Page {
            after: Some(first[0].key()),
            limit: 1,
        },
    )
    .await
    .unwrap();
    let third = projections::inbox(
        &store,
        AgencyId::CivilRegistry,
        &InboxFilter::default(),
        Page {
            after: Some(second[0].key()),
            limit: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (first[0].task_id, second[0].task_id, third.len()),
        (scenario.death_task, scenario.registration_task, 0)
    );
    let social = projections::inbox(
        &store,
        AgencyId::SocialSecurity,
        &InboxFilter {
            procedure: Some(ProcedureId::ChildHealthInsurance),
            due_before: Some(at(24, 0)),
            ..InboxFilter::default()
        },
        Page::default(),
    )
    .await
    .unwrap();
    assert_eq!(social.len(), 1);
    assert_eq!(social[0].status, TaskStatus::Completed);
    let of_birth = projections::tasks_of_life_event(&store, scenario.birth_id)
        .await
        .unwrap();
    assert_eq!(of_birth.len(), 3);
    let mut tx = store.begin().await.unwrap();
    let in_tx = projections::tasks_of_life_event_in_tx(&mut tx, scenario.birth_id)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(in_tx, of_birth);
    let due = projections::open_tasks_due_before(&store, at(22, 0), 10)
        .await
        .unwrap();
    assert_eq!(
        due.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        [scenario.death_task]
    );

    // The person registry.
    let child = projections::person(&store, &pin(CHILD))
        .await
        .unwrap()
        .unwrap();
    // Named as the correction after its number was assigned says.
    assert_eq!(child.full_name, "Nguyễn Minh Anh");
    assert_eq!(child.sex, Some(Sex::Female));
    assert_eq!(child.vital_status, VitalStatus::Alive);
    assert_eq!(
        child.residence.as_ref().map(|r| r.address.as_str()),
        Some("12 Lê Lợi")
    );
    let insurance = child.insurance.clone().expect("the child is insured");
    assert_eq!(insurance.card_number, "TE1797926000123");
    assert_eq!(child.facts.len(), 1);
    assert_eq!(child.life_events.len(), 1);
    assert_eq!(child.life_events[0].role, PersonRole::Child);
    let mother = projections::person(&store, &pin(MOTHER))
        .await
        .unwrap()
        .unwrap();
    let roles: Vec<PersonRole> = mother.life_events.iter().map(|link| link.role).collect();
    assert_eq!(
        roles,
        [PersonRole::Mother, PersonRole::Declarant],
        "linked once each, corrections do not repeat links"
    );
    assert_eq!(mother.date_of_birth, NaiveDate::from_ymd_opt(1990, 4, 2));
    let deceased = projections::person(&store, &pin(DECEASED))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deceased.vital_status, VitalStatus::Deceased);
    assert_eq!(
        deceased.date_of_death,
        NaiveDate::from_ymd_opt(2026, 11, 18)
    );
    assert_eq!(deceased.death_life_event_id, Some(scenario.death_id));
    let wrongly = projections::person(&store, &pin(WRONGLY_DECEASED))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        wrongly.vital_status,
        VitalStatus::Alive,
        "the void undid the death"
    );
    assert!(wrongly.life_events.iter().all(|link| link.voided));

    // The life-event status.
    let birth = projections::life_event_status(&store, scenario.birth_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(birth.corrections, 1);
    assert!(!birth.voided);
    let states: Vec<(ProcedureId, ProcedureState)> = birth
        .procedures
        .iter()
        .map(|p| (p.procedure, p.state))
        .collect();
    assert_eq!(
        states,
        [
            (ProcedureId::BirthRegistration, ProcedureState::Completed),
            (ProcedureId::ResidenceRegistration, ProcedureState::Open),
            (ProcedureId::ChildHealthInsurance, ProcedureState::Completed),
        ]
    );
    let residence = birth.procedure(ProcedureId::ResidenceRegistration).unwrap();
    assert_eq!(
        (residence.task_id, residence.due_at),
        (Some(scenario.residence_task), Some(at(23, 10)))
    );
    assert_eq!(
        birth
            .procedure(ProcedureId::ChildHealthInsurance)
            .unwrap()
            .task_id,
        Some(scenario.insurance_task)
    );
    let mut by_reference = projections::life_event_status_by_reference(
        &store,
        &Reference::for_life_event(scenario.death_id),
    )
    .await
    .unwrap();
    assert_eq!(by_reference.len(), 1);
    let by_reference = by_reference.pop().unwrap();
    let states: Vec<(ProcedureId, ProcedureState)> = by_reference
        .procedures
        .iter()
        .map(|p| (p.procedure, p.state))
        .collect();
    assert_eq!(
        states,
        [
            (ProcedureId::DeathRegistration, ProcedureState::Open),
            (
                ProcedureId::ResidenceDeregistration,
                ProcedureState::Pending
            ),
            (ProcedureId::BurialAllowance, ProcedureState::Pending),
            (ProcedureId::FuneralSupport, ProcedureState::NotEligible),
        ]
    );
    let voided = projections::life_event_status(&store, scenario.voided_death_id)
        .await
        .unwrap()
        .unwrap();
    assert!(voided.voided);
}

async fn rebuild_equals_live_and_as_of_replays_a_prefix(store: EventStore) {
    let running = start_projections(&store);
    let scenario = record_scenario(&store).await;
    caught_up(&store, scenario.last_position).await;
    running.stop().await;
    let live = snapshot(&store, &scenario).await;

    let started = Instant::now();
    let report = rebuild_projections(&store).await.unwrap();
    tracing::info!(elapsed = ?started.elapsed(), ?report, "rebuilt");
    assert_eq!(report.events_per_projection.len(), 3);
    assert_eq!(
        snapshot(&store, &scenario).await,
        live,
        "a rebuild equals the live projections"
    );
    caught_up(&store, scenario.last_position).await;

    // As of the moment before the birth's correction and the deaths: the correction is not
    // counted, no death is known, the insurance card is.
    rebuild_projections_until(&store, at(21, 7)).await.unwrap();
    let birth = projections::life_event_status(&store, scenario.birth_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(birth.corrections, 0);
    assert!(projections::life_event_status(&store, scenario.death_id)
        .await
        .unwrap()
        .is_none());
    assert!(projections::person(&store, &pin(DECEASED))
        .await
        .unwrap()
        .is_none());
    let child = projections::person(&store, &pin(CHILD))
        .await
        .unwrap()
        .unwrap();
    assert!(child.insurance.is_some());
    assert_eq!(
        child.full_name, "Nguyễn Minh An",
        "the name before the correction"
    );

    // The live projections resume from the as-of checkpoints and end where they were.
    let running = start_projections(&store);
    caught_up(&store, scenario.last_position).await;
    running.stop().await;
    assert_eq!(snapshot(&store, &scenario).await, live);
}

async fn restarted_projections_double_nothing(store: EventStore) {
    let running = start_projections(&store);
    let scenario = record_scenario(&store).await;
    caught_up(&store, scenario.last_position).await;
    running.stop().await;
    let before = snapshot(&store, &scenario).await;

    // Restart with nothing new: nothing changes.
    let running = start_projections(&store);
    caught_up(&store, scenario.last_position).await;
    running.stop().await;
    assert_eq!(snapshot(&store, &scenario).await, before);

    // New events while stopped: a restart takes them once.
    let claimed_position = append_task(
        &store,
        TaskEvent::TaskClaimed(TaskClaimed {
            task_id: scenario.residence_task,
            by: "police-7".into(),
            at: at(22, 1),
        }),
        at(22, 1),
    )
    .await;
    let running = start_projections(&store);
    caught_up(&store, claimed_position).await;
    running.stop().await;
    let residence = projections::task(&store, scenario.residence_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (residence.status, residence.claimed_by.as_deref()),
        (TaskStatus::Claimed, Some("police-7"))
    );
    let child = projections::person(&store, &pin(CHILD))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((child.facts.len(), child.life_events.len()), (1, 1));
    let birth = projections::life_event_status(&store, scenario.birth_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(birth.corrections, 1);
    assert_eq!(
        birth
            .procedure(ProcedureId::ResidenceRegistration)
            .unwrap()
            .state,
        ProcedureState::Claimed
    );
}

async fn watcher_marks_a_late_task_exactly_once(store: EventStore) {
    let running = start_projections(&store);
    let scenario = record_scenario(&store).await;
    caught_up(&store, scenario.last_position).await;

    let now = at(21, 12);
    let (first, second) = tokio::join!(
        check_overdue_once(&store, now),
        check_overdue_once(&store, now)
    );
    assert_eq!(
        first.unwrap() + second.unwrap(),
        1,
        "two watchers mark the task once"
    );
    assert_eq!(
        check_overdue_once(&store, now).await.unwrap(),
        0,
        "a task marked by a lagging inbox is not marked again"
    );
    let overdue: Vec<_> = store
        .read_stream(&stream("task", scenario.death_task))
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.event_type == "TaskOverdue")
        .collect();
    assert_eq!(overdue.len(), 1);
    assert_eq!(
        overdue[0].event_id,
        lifeline_policies::watcher::overdue_event_id(scenario.death_task)
    );
    // Tasks due later (residence, due on the 23rd) are not touched.
    assert!(store
        .read_stream(&stream("task", scenario.residence_task))
        .await
        .unwrap()
        .iter()
        .all(|event| event.event_type != "TaskOverdue"));

    caught_up(&store, overdue[0].global_position.0).await;
    running.stop().await;
    let task = projections::task(&store, scenario.death_task)
        .await
        .unwrap()
        .unwrap();
    assert!(task.overdue);
    let death = projections::life_event_status(&store, scenario.death_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        death
            .procedure(ProcedureId::DeathRegistration)
            .unwrap()
            .overdue
    );
    assert!(projections::open_tasks_due_before(&store, now, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(check_overdue_once(&store, now).await.unwrap(), 0);
}

/// A batch whose transaction rolls back (a failure at its end) is handled again by the same
/// subscriber objects: what they remember of the log (the person projection's life events and
/// task creations) must not stand in for "the log before this event" on the second pass, or
/// the correction would undo nothing. The result equals a rebuild by fresh subscribers.
async fn a_batch_rolled_back_and_handled_again_ends_as_a_rebuild(store: EventStore) {
    let mut scenario = record_scenario(&store).await;
    // A second correction names another father: the first father's link is undone only if
    // the correction is handled against the declaration before it.
    scenario.last_position = append(
        &store,
        &stream("birth", scenario.birth_id),
        &LifeEventEvent::LifeEventCorrected(LifeEventCorrected {
            life_event_id: scenario.birth_id,
            reason: "father misnamed".into(),
            recorded_on: today(),
            changed_fields: vec!["father.personal_id".into()],
            declaration: Declaration::Birth(birth_declaration_with_father(
                "Đồng Nai",
                "079088007777",
            )),
        }),
        at(23, 0),
    )
    .await;
    // The gap-free reader hides events while an older transaction (another test's) runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_head(&store).await.global_position < scenario.last_position {
        assert!(
            Instant::now() < deadline,
            "the scenario never became readable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = store.read_all(LogCursor::START, 10_000).await.unwrap();
    assert!(events.last().unwrap().global_position.0 >= scenario.last_position);
    let mut subscribers = lifeline_policies::projections::projection_subscribers();
    for subscriber in &mut subscribers {
        let mut tx = store.begin().await.unwrap();
        subscriber.begin_batch();
        for event in &events {
            subscriber.handle(&mut tx, event).await.unwrap();
        }
        subscriber.end_batch(&mut tx).await.unwrap();
        tx.rollback().await.unwrap();
    }
    for subscriber in &mut subscribers {
        let handled = lifeline_policies::projections::catch_up(&store, subscriber.as_mut(), None)
            .await
            .unwrap();
        assert_eq!(handled, events.len() as u64);
    }
    let replayed = snapshot(&store, &scenario).await;
    rebuild_projections(&store).await.unwrap();
    assert_eq!(replayed, snapshot(&store, &scenario).await);
}

/// More rows than one multi-row statement carries (500) are saved, every one, and saving them
/// again replaces them.
async fn many_rows_are_saved_in_chunks(store: EventStore) {
    let office = lifeline_model::values::OfficeCode::parse("79-26734").unwrap();
    // More than one statement's worth on both backends (SQLite 500 rows, PostgreSQL 5,000).
    let rows: Vec<TaskRow> = (0..5_001)
        .map(|index| TaskRow {
            task_id: Uuid::now_v7(),
            procedure: ProcedureId::BirthRegistration,
            agency: ProcedureId::BirthRegistration.agency(),
            office: office.clone(),
            life_event_id: Uuid::now_v7(),
            status: TaskStatus::Open,
            claimed_by: None,
            due_at: at(25, 0),
            overdue: false,
            created_at: at(20, 0),
            updated_at: at(20, 0),
            application: Application(
                [(
                    "child.full_name".to_owned(),
                    json!(format!("Nguyễn \"{index}\"")),
                )]
                .into_iter()
                .collect(),
            ),
            outcome: (index % 2 == 0).then(|| TaskOutcome::BirthRegistered {
                certificate_number: format!("KS-{index}"),
            }),
            reason: (index % 3 == 0).then(|| format!("row {index}")),
        })
        .collect();
    let mut tx = store.begin().await.unwrap();
    projections::save_tasks(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
    let mut changed = rows.clone();
    for row in &mut changed {
        row.status = TaskStatus::Claimed;
        row.claimed_by = Some("civil-1".to_owned());
    }
    let mut tx = store.begin().await.unwrap();
    projections::save_tasks(&mut tx, &changed).await.unwrap();
    tx.commit().await.unwrap();
    for (index, row) in changed.iter().enumerate() {
        let stored = projections::task(&store, row.task_id).await.unwrap();
        assert_eq!(stored.as_ref(), Some(row), "row {index}");
    }
}

/// A subscriber that fails on every `Poison` event and counts the others.
struct Picky {
    name: &'static str,
    handled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl lifeline_store::Subscriber for Picky {
    fn name(&self) -> &str {
        self.name
    }

    async fn handle(
        &mut self,
        _tx: &mut lifeline_store::StoreTransaction<'_>,
        event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_store::SubscriberError> {
        if self.name == "picky-poisoned" && event.event_type == "Poison" {
            return Err(lifeline_store::SubscriberError::failed(format!(
                "cannot handle {}",
                event.event_id
            )));
        }
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// No policies: the runtime only runs the given subscribers.
struct NoPolicies;

#[async_trait::async_trait]
impl lifeline_policies::PolicyHandler for NoPolicies {
    fn policy_names(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn wants(&self, _policy: &str, _event_type: &str) -> bool {
        false
    }

    async fn apply(
        &self,
        _policy: &str,
        _tx: &mut lifeline_store::StoreTransaction<'_>,
        _event: &lifeline_model::envelope::RecordedEvent,
    ) -> Result<(), lifeline_policies::PolicyError> {
        Ok(())
    }
}

/// The runtime runs its subscribers as one group; one that keeps failing on an event leaves
/// the group and stays behind that event, while the others handle everything.
async fn a_failing_subscriber_leaves_the_group_and_the_others_keep_up(store: EventStore) {
    use lifeline_policies::runtime::{run_roles, Role, RuntimeSettings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let stream = lifeline_tests::new_stream("picky");
    for event_type in ["Fine", "Fine", "Poison", "Fine", "Fine"] {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                &[lifeline_tests::new_event(event_type, json!({}))],
            )
            .await
            .unwrap();
    }
    // The gap-free reader may hold the five back for a while (other tests' transactions on the
    // server): the head is where all five are readable.
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        let events = store.read_all(LogCursor::START, 1000).await.unwrap();
        if let (5, Some(last)) = (events.len(), events.last()) {
            break last.cursor();
        }
        assert!(
            Instant::now() < deadline,
            "the five events never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (healthy_count, poisoned_count) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let subscribers: Vec<Box<dyn lifeline_store::Subscriber>> = vec![
        Box::new(Picky {
            name: "picky-poisoned",
            handled: poisoned_count.clone(),
        }),
        Box::new(Picky {
            name: "picky-healthy",
            handled: healthy_count.clone(),
        }),
    ];
    let mut settings = RuntimeSettings::default();
    settings.embedded.retry.base_delay = Duration::from_millis(20);
    settings.embedded.retry.max_delay = Duration::from_millis(100);
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(run_roles(
        store.clone(),
        None,
        &[Role::Embedded],
        Arc::new(NoPolicies),
        subscribers,
        settings,
        shutdown,
    ));
    lifeline_tests::eventually(
        Duration::from_secs(30),
        "the healthy subscriber at the head",
        || {
            let store = store.clone();
            async move { store.load_checkpoint("picky-healthy").await.unwrap() >= head }
        },
    )
    .await;
    // The poisoned one keeps retrying alone, stuck right before its poison.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    let events = store.read_all(LogCursor::START, 1000).await.unwrap();
    let poison = events
        .iter()
        .find(|event| event.stream_id == stream && event.event_type == "Poison")
        .unwrap();
    let poisoned_at = store.load_checkpoint("picky-poisoned").await.unwrap();
    assert!(poisoned_at < poison.cursor(), "moved past the poison");
    assert_eq!(store.load_checkpoint("picky-healthy").await.unwrap(), head);
    let mine = events
        .iter()
        .filter(|event| event.stream_id == stream)
        .count();
    assert_eq!(mine, 5);
    // The test's database holds only these five. The poisoned member comes first in the group,
    // so the healthy one never handled a batch that was then rolled back: each event once.
    assert_eq!(healthy_count.load(Ordering::SeqCst), mine);
    assert!(poisoned_count.load(Ordering::SeqCst) >= 2);
}

/// A second task of the same procedure replaces the first in the life event's status: events of
/// the first (here its completion) leave the procedure to the new one, whether they arrive in
/// the same batch as the replacement or a later one, live or rebuilt.
async fn a_replaced_task_leaves_its_procedure_to_the_new_one(store: EventStore) {
    let (birth_id, birth_decl) = record_birth(&store).await;
    let procedure = ProcedureId::ResidenceRegistration;
    let created = |task_id, hour| {
        task_created(
            task_id,
            procedure,
            birth_id,
            &birth_decl,
            &[],
            at(21, hour),
            at(28, 0),
        )
    };
    let claimed = |task_id, hour| {
        TaskEvent::TaskClaimed(TaskClaimed {
            task_id,
            by: "officer-1".into(),
            at: at(21, hour),
        })
    };
    let (first, second, third) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    append_task(&store, created(first, 2), at(21, 2)).await;
    append_task(&store, created(second, 3), at(21, 3)).await;
    // In the replacement's batch: the first task's claim.
    let position = append_task(&store, claimed(first, 4), at(21, 4)).await;
    let running = start_projections(&store);
    caught_up(&store, position).await;
    let status = |store: EventStore| async move {
        projections::life_event_status(&store, birth_id)
            .await
            .unwrap()
            .unwrap()
            .procedure(procedure)
            .cloned()
            .unwrap()
    };
    let row = status(store.clone()).await;
    assert_eq!(row.task_id, Some(second));
    assert_eq!(row.state, ProcedureState::Open);
    // In later batches: the second task is claimed, a third replaces it, the second's claim
    // again and the first's completion change nothing.
    append_task(&store, claimed(second, 5), at(21, 5)).await;
    let position = append_task(&store, created(third, 6), at(21, 6)).await;
    caught_up(&store, position).await;
    append_task(&store, claimed(second, 7), at(21, 7)).await;
    let position = append_task(
        &store,
        TaskEvent::TaskCompleted(TaskCompleted {
            task_id: first,
            procedure: Some(ProcedureId::ResidenceRegistration),
            by: "officer-1".into(),
            outcome: TaskOutcome::ResidenceRegistered {
                entry_number: "HK-1".into(),
            },
            at: at(21, 8),
        }),
        at(21, 8),
    )
    .await;
    caught_up(&store, position).await;
    running.stop().await;
    let live = status(store.clone()).await;
    assert_eq!(live.task_id, Some(third));
    assert_eq!(live.state, ProcedureState::Open);
    assert_eq!(live.closed_at, None);
    rebuild_projections(&store).await.unwrap();
    assert_eq!(
        status(store.clone()).await,
        live,
        "a rebuild equals the live row"
    );
}

/// A stored event its type's schema cannot read stops a rebuild with the event named, after
/// the batches before it; nothing past it is claimed handled.
async fn a_rebuild_stops_at_an_undecodable_event_and_names_it(store: EventStore) {
    let scenario = record_scenario(&store).await;
    let bad = lifeline_tests::new_event("TaskClaimed", json!({ "task_id": 1, "by": [] }));
    let bad_id = bad.event_id;
    let position = store
        .append(
            &stream("task", Uuid::now_v7()),
            ExpectedVersion::NoStream,
            &[bad],
        )
        .await
        .unwrap()
        .last_position
        .0;
    assert!(position > scenario.last_position);
    // Readable once the gap-free horizon (other tests' transactions) has passed it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_head(&store).await.global_position < position {
        assert!(Instant::now() < deadline, "the log did not become readable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match rebuild_projections(&store).await {
        Err(lifeline_policies::projections::ProjectionsError::Undecodable {
            event_id,
            global_position,
            ..
        }) => {
            assert_eq!(event_id, bad_id);
            assert_eq!(global_position, position);
        }
        other => panic!("expected the undecodable event named, got {other:?}"),
    }
}

/// `save_life_event_status_changes` writes a procedure row only where it differs from the
/// stored one it is given; without a stored version it writes every row.
async fn unchanged_procedure_rows_are_not_written_again(store: EventStore) {
    use lifeline_model::life_event::Reference;
    use lifeline_model::procedure::ProcedureGroup;
    use lifeline_model::values::OfficeCode;
    use lifeline_store::projections::ProcedureStatusRow;

    let life_event_id = Uuid::now_v7();
    let before = LifeEventStatusRow {
        life_event_id,
        kind: ProcedureGroup::Birth,
        reference: Reference::for_life_event(life_event_id),
        office: OfficeCode::parse("79-26734").unwrap(),
        recorded_on: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
        late: false,
        voided: false,
        corrections: 0,
        updated_at: at(20, 0),
        procedures: ProcedureGroup::Birth
            .procedures()
            .iter()
            .map(|procedure| ProcedureStatusRow {
                procedure: *procedure,
                state: ProcedureState::Pending,
                task_id: None,
                opened_at: None,
                closed_at: None,
                due_at: None,
                overdue: false,
                detail: None,
            })
            .collect(),
    };
    let mut tx = store.begin().await.unwrap();
    projections::save_life_event_status(&mut tx, &before)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Someone else's mark on every stored procedure row, to see which rows get written.
    let mut tx = store.begin().await.unwrap();
    let mark = "UPDATE projection_life_event_procedures SET detail = 'untouched'";
    match tx.connection().unwrap() {
        lifeline_store::TransactionConnection::Postgres(connection) => {
            sqlx::query(mark).execute(connection).await.unwrap();
        }
        lifeline_store::TransactionConnection::Sqlite(connection) => {
            sqlx::query(mark).execute(connection).await.unwrap();
        }
    }
    tx.commit().await.unwrap();

    // Saves one change in a transaction of its own and answers the row as stored then.
    let save_and_read = |after: LifeEventStatusRow, before: Option<LifeEventStatusRow>| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            projections::save_life_event_status_changes(&mut tx, &[(&after, before.as_ref())])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            projections::life_event_status(&store, after.life_event_id)
                .await
                .unwrap()
                .unwrap()
        }
    };

    // The first procedure opens; the others stay as they were.
    let mut after = before.clone();
    after.updated_at = at(21, 0);
    after.procedures[0].state = ProcedureState::Open;
    after.procedures[0].opened_at = Some(at(21, 0));
    let stored = save_and_read(after.clone(), Some(before)).await;
    assert_eq!(
        stored.updated_at,
        at(21, 0),
        "the life event's row is written"
    );
    assert_eq!(stored.procedures[0].state, ProcedureState::Open);
    assert_eq!(
        stored.procedures[0].detail, None,
        "the changed row is written"
    );
    assert!(stored.procedures.len() > 1);
    for procedure in &stored.procedures[1..] {
        assert_eq!(
            procedure.detail.as_deref(),
            Some("untouched"),
            "{:?} was written again",
            procedure.procedure
        );
    }

    // Without the stored version, every row is written.
    let stored = save_and_read(after, None).await;
    assert!(stored.procedures.iter().all(|row| row.detail.is_none()));
}

async fn a_voided_birth_marks_its_childs_link_voided(store: EventStore) {
    let (birth_id, _) = record_birth(&store).await;
    assign_child_number(&store, birth_id, None, at(21, 2)).await;
    let last_position = append(
        &store,
        &stream("birth", birth_id),
        &LifeEventEvent::LifeEventVoided(LifeEventVoided {
            life_event_id: birth_id,
            reason: "recorded in error".into(),
            recorded_on: today(),
        }),
        at(21, 3),
    )
    .await;
    let running = start_projections(&store);
    caught_up(&store, last_position).await;
    running.stop().await;

    // As the replay has it: the child's link to the voided birth kept, and marked voided, like
    // the mother's.
    // (The mother is also the declarant: two links.)
    for (personal_id, links) in [(CHILD, 1), (MOTHER, 2)] {
        let person = projections::person(&store, &pin(personal_id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(person.life_events.len(), links, "{person:?}");
        assert!(
            person.life_events.iter().all(|link| link.voided),
            "{personal_id}: {person:?}"
        );
    }
}

/// A death whose residence deregistration completed, then voided: the reversal task, completed
/// with `revoked`, gives the person back the residence the deregistration closed, and the
/// procedure reads `reversed` (projection and replay alike). Until 2026-12-07 a reversal was
/// completed with `residence_closed`, which closed the residence again.
async fn a_completed_reversal_undoes_its_procedure(store: EventStore) {
    let death_id = Uuid::now_v7();
    let death = death_declaration(DECEASED);
    let death_decl = Declaration::Death(death.clone());
    append(
        &store,
        &stream("death", death_id),
        &LifeEventEvent::DeathRecorded(DeathRecorded {
            life_event_id: death_id,
            reference: Reference::for_life_event(death_id),
            recorded_on: today(),
            late: false,
            declaration: death,
        }),
        at(21, 8),
    )
    .await;
    let deregistration = Uuid::now_v7();
    let created = task_created(
        deregistration,
        ProcedureId::ResidenceDeregistration,
        death_id,
        &death_decl,
        &[],
        at(21, 9),
        at(25, 9),
    );
    let TaskEvent::TaskCreated(mut reversal) = created.clone() else {
        unreachable!()
    };
    append_task(&store, created, at(21, 9)).await;
    let completed = |task_id, outcome, hour| {
        TaskEvent::TaskCompleted(TaskCompleted {
            task_id,
            procedure: Some(ProcedureId::ResidenceDeregistration),
            by: "officer-1".into(),
            outcome,
            at: at(21, hour),
        })
    };
    let closed = TaskOutcome::ResidenceClosed {
        entry_number: "XT-1".into(),
    };
    append_task(&store, completed(deregistration, closed, 10), at(21, 10)).await;
    let last_position = append(
        &store,
        &stream("death", death_id),
        &LifeEventEvent::LifeEventVoided(LifeEventVoided {
            life_event_id: death_id,
            reason: "the person is alive".into(),
            recorded_on: today(),
        }),
        at(21, 11),
    )
    .await;
    let running = start_projections(&store);
    caught_up(&store, last_position).await;
    running.stop().await;
    let person = projections::person(&store, &pin(DECEASED))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.residence, None, "the deregistration closed it");

    reversal.task_id = Uuid::now_v7();
    reversal.created_at = at(21, 12);
    reversal.follow_up = Some(lifeline_model::task::FollowUp {
        kind: lifeline_model::task::FollowUpKind::Reversal,
        follows: deregistration,
        reason: "the person is alive".into(),
    });
    let reversal_id = reversal.task_id;
    append_task(&store, TaskEvent::TaskCreated(reversal), at(21, 12)).await;
    let revoked = TaskOutcome::Revoked {
        decision_number: "TH-2026-1".into(),
    };
    let last_position = append_task(&store, completed(reversal_id, revoked, 13), at(21, 13)).await;
    let running = start_projections(&store);
    caught_up(&store, last_position).await;
    running.stop().await;

    let person = projections::person(&store, &pin(DECEASED))
        .await
        .unwrap()
        .unwrap();
    let residence = person.residence.expect("the residence is back");
    assert_eq!(
        (residence.province.as_str(), residence.commune.as_str()),
        ("01", "00004")
    );
    assert_eq!(residence.address, "5 Hàng Bông");
    assert_eq!(person.facts.last().unwrap().kind, "revoked");
    let status = projections::life_event_status(&store, death_id)
        .await
        .unwrap()
        .unwrap();
    let procedure = status
        .procedure(ProcedureId::ResidenceDeregistration)
        .unwrap();
    assert_eq!(procedure.state, ProcedureState::Reversed);
    assert_eq!(procedure.task_id, Some(reversal_id));
    assert_replay_equals_projections(&store).await;
}

/// What the auditors' replay and the person registry say of someone, in the replay's words.
type PersonView = (
    String,
    Option<NaiveDate>,
    String,
    Option<NaiveDate>,
    BTreeSet<(Uuid, String, String, bool)>,
);

async fn the_auditors_replay_folds_persons_and_life_events_as_the_projections_do(
    store: EventStore,
) {
    // The scenario's birth is corrected after its child's number was assigned (the name too),
    // a death is recorded and another voided; one more birth has a procedure dropped by a
    // correction before any task: the two folds of the same log must agree.
    let scenario = record_scenario(&store).await;
    let (dropped_id, dropped) = record_birth(&store).await;
    let Declaration::Birth(mut fewer) = dropped else {
        unreachable!()
    };
    fewer.procedures = vec![
        ProcedureId::BirthRegistration,
        ProcedureId::ResidenceRegistration,
    ];
    let last_position = append(
        &store,
        &stream("birth", dropped_id),
        &LifeEventEvent::LifeEventCorrected(LifeEventCorrected {
            life_event_id: dropped_id,
            reason: "insurance not asked for".into(),
            recorded_on: today(),
            changed_fields: vec!["procedures".into()],
            declaration: Declaration::Birth(fewer),
        }),
        at(23, 1),
    )
    .await;
    assert!(last_position > scenario.last_position);
    let running = start_projections(&store);
    caught_up(&store, last_position).await;
    running.stop().await;

    let view = assert_replay_equals_projections(&store).await;
    assert!(view.persons.len() >= 5, "{view:?}");
    assert_eq!(view.life_events.len(), 4);
    let child = view
        .persons
        .iter()
        .find(|person| person.personal_id == CHILD)
        .unwrap();
    assert_eq!(child.full_name, "Nguyễn Minh Anh");
}

/// The auditors' replay of the whole log (`lifeline::replay`) against the projections: every
/// person (name, date of birth, vital status, links) and every life event (its procedures'
/// states and tasks) the same. Answers the replay.
async fn assert_replay_equals_projections(store: &EventStore) -> lifeline::replay::ReplayView {
    let view = lifeline::replay::replay_until(store, None).await.unwrap();
    for replayed in &view.persons {
        let from_replay: PersonView = (
            replayed.full_name.clone(),
            replayed.date_of_birth,
            replayed.vital_status.clone(),
            replayed.date_of_death,
            replayed
                .life_events
                .iter()
                .map(|link| {
                    (
                        link.life_event_id,
                        link.kind.clone(),
                        link.role.clone(),
                        link.voided,
                    )
                })
                .collect(),
        );
        let row = projections::person(store, &pin(&replayed.personal_id))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} in the registry", replayed.personal_id));
        let text = |value: serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        let from_registry: PersonView = (
            row.full_name.clone(),
            row.date_of_birth,
            text(json!(row.vital_status)),
            row.date_of_death,
            row.life_events
                .iter()
                .map(|link| {
                    (
                        link.life_event_id,
                        text(json!(link.kind)),
                        text(json!(link.role)),
                        link.voided,
                    )
                })
                .collect(),
        );
        assert_eq!(from_replay, from_registry, "{}", replayed.personal_id);
    }
    // And every life event, with its procedures' states and tasks, as the status projection.
    for replayed in &view.life_events {
        let row = projections::life_event_status(store, replayed.life_event_id)
            .await
            .unwrap()
            .unwrap();
        let procedures: Vec<(String, String, Option<Uuid>)> = row
            .procedures
            .iter()
            .map(|procedure| {
                (
                    procedure.procedure.as_str().to_owned(),
                    procedure.state.as_str().to_owned(),
                    procedure.task_id,
                )
            })
            .collect();
        let replayed_procedures: Vec<(String, String, Option<Uuid>)> = replayed
            .procedures
            .iter()
            .map(|procedure| {
                (
                    procedure.procedure.clone(),
                    procedure.state.clone(),
                    procedure.task_id,
                )
            })
            .collect();
        assert_eq!(
            (
                replayed.reference.as_str(),
                replayed.office.as_str(),
                replayed.late,
                replayed.voided,
                replayed.corrections,
                &replayed_procedures,
            ),
            (
                row.reference.as_str(),
                row.office.as_str(),
                row.late,
                row.voided,
                row.corrections,
                &procedures,
            ),
            "{}",
            replayed.life_event_id
        );
    }
    view
}

async fn the_real_policies_correcting_a_death_and_a_birth_leave_the_replay_equal_to_the_projections(
    store: EventStore,
) {
    use lifeline::registry::Registry;
    use lifeline_policies::engine::{eligibility_event_id, task_id};
    use lifeline_policies::rules::corrections::update_event_id;
    use lifeline_policies::rules::{DEATH_FOLLOWUPS, DEATH_REGISTRATION};
    use lifeline_policies::runtime::{BusConfig, Role};
    use lifeline_tests::chain::{
        claim_and_complete, real_engine, record_death, registrar, test_settings,
        today as chain_today, wait_for_event, wait_for_task, Roles,
    };

    // The policies and projections embedded, as `lifeline serve` runs them without NATS.
    let roles = Roles::start(
        &store,
        None,
        &[Role::Embedded],
        real_engine(Some(21)),
        test_settings(&BusConfig::default(), 3),
    );
    let deadline = Duration::from_secs(20);
    let registry = Registry::new(store.clone());
    let death = record_death(
        &store,
        &registry,
        &[
            "death-registration",
            "residence-deregistration",
            "burial-allowance",
            "funeral-support",
        ],
        None,
    )
    .await;
    let registration = task_id(
        DEATH_REGISTRATION,
        death.event_id,
        ProcedureId::DeathRegistration,
    );
    let created = wait_for_task(&store, registration, deadline).await;
    let completed = claim_and_complete(
        &store,
        registration,
        TaskOutcome::DeathRegistered {
            extract_number: "TK-2026-21".into(),
        },
    )
    .await;
    let funeral = task_id(DEATH_FOLLOWUPS, completed, ProcedureId::FuneralSupport);
    wait_for_event(
        &store,
        eligibility_event_id(funeral),
        "funeral support decided",
        deadline,
    )
    .await;
    let burial = task_id(DEATH_FOLLOWUPS, completed, ProcedureId::BurialAllowance);
    wait_for_task(&store, burial, deadline).await;

    // The registrar had the wrong person: the deceased is a social-protection beneficiary with
    // no social insurance, who died on 2024-06-30.
    let loaded = registry.load(created.life_event_id).await.unwrap().unwrap();
    let Some(Declaration::Death(mut corrected)) = loaded.state.declaration.clone() else {
        panic!("a death record")
    };
    corrected.deceased.personal_id = Some(pin("001140000333"));
    corrected.deceased.sex = Sex::Female;
    corrected.deceased.date_of_birth = NaiveDate::from_ymd_opt(1940, 5, 1);
    corrected.death.at = DateTime::parse_from_rfc3339("2024-06-30T06:30:00+07:00").unwrap();
    registry
        .correct(
            &registrar("01-00004", None),
            &loaded.stream_id,
            Declaration::Death(corrected),
            "nhầm người mất".into(),
            chain_today(),
        )
        .await
        .unwrap();
    let correction = store
        .read_stream(&loaded.stream_id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let cancelled = wait_for_event(
        &store,
        update_event_id(correction.event_id, burial),
        "the burial allowance's task cancelled",
        deadline,
    )
    .await;
    let funeral_created = wait_for_event(
        &store,
        lifeline_policies::engine::task_created_event_id(funeral),
        "the funeral-support task",
        deadline,
    )
    .await;

    // A birth registered, its child numbered and its follow-ups made; then the family's
    // residence corrected to Hà Nội and the health-insurance card no longer asked for: the
    // residence task moves to Hà Nội's police, the insurance task is withdrawn.
    let birth = lifeline_tests::chain::record_birth(&store, &registry, 0, None).await;
    let birth_registration = task_id(
        lifeline_policies::rules::BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let birth_task = wait_for_task(&store, birth_registration, deadline).await;
    let birth_completed = claim_and_complete(
        &store,
        birth_registration,
        TaskOutcome::BirthRegistered {
            certificate_number: "KS-2026-21".into(),
        },
    )
    .await;
    lifeline_tests::chain::wait_for_pin(&store, birth_task.life_event_id, deadline).await;
    let followup = |procedure| {
        task_id(
            lifeline_policies::rules::BIRTH_FOLLOWUPS,
            birth_completed,
            procedure,
        )
    };
    let residence = followup(ProcedureId::ResidenceRegistration);
    let insurance = followup(ProcedureId::ChildHealthInsurance);
    wait_for_task(&store, residence, deadline).await;
    wait_for_task(&store, insurance, deadline).await;
    let record = registry
        .load(birth_task.life_event_id)
        .await
        .unwrap()
        .unwrap();
    let Some(Declaration::Birth(mut moved)) = record.state.declaration.clone() else {
        panic!("a birth record")
    };
    moved.residence.province = "01".into();
    moved.residence.commune = "00004".into();
    moved.residence.address = "9 Hàng Bông".into();
    moved.procedures = vec![
        ProcedureId::BirthRegistration,
        ProcedureId::ResidenceRegistration,
    ];
    registry
        .correct(
            &registrar("79-26734", None),
            &record.stream_id,
            Declaration::Birth(moved),
            "sai nơi cư trú".into(),
            chain_today(),
        )
        .await
        .unwrap();
    let birth_correction = store
        .read_stream(&record.stream_id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let mut awaited = vec![cancelled, funeral_created];
    for (event_id, what) in [
        (
            update_event_id(birth_correction.event_id, residence),
            "the residence task withdrawn from Hồ Chí Minh City",
        ),
        (
            lifeline_policies::engine::task_created_event_id(task_id(
                lifeline_policies::rules::CORRECTIONS,
                birth_correction.event_id,
                ProcedureId::ResidenceRegistration,
            )),
            "the residence task made at Hà Nội's police",
        ),
        (
            update_event_id(birth_correction.event_id, insurance),
            "the insurance task withdrawn",
        ),
    ] {
        awaited.push(wait_for_event(&store, event_id, what, deadline).await);
    }

    // Up to all of them in the gap-free log (a transaction still open below them holds its
    // readers back, and the replay reads the same way).
    let last = awaited
        .iter()
        .map(|event| event.global_position.0)
        .max()
        .unwrap();
    caught_up(&store, last).await;
    roles.stop().await;

    let view = assert_replay_equals_projections(&store).await;
    let status = projections::life_event_status(&store, created.life_event_id)
        .await
        .unwrap()
        .unwrap();
    let state = |procedure| status.procedure(procedure).unwrap().state;
    assert_eq!(
        state(ProcedureId::BurialAllowance),
        ProcedureState::Cancelled
    );
    assert_eq!(state(ProcedureId::FuneralSupport), ProcedureState::Open);
    let deceased = view
        .persons
        .iter()
        .find(|person| person.personal_id == "001140000333")
        .unwrap();
    assert_eq!(deceased.vital_status, "deceased");
    let wrongly = view
        .persons
        .iter()
        .find(|person| person.personal_id == DECEASED)
        .unwrap();
    assert_eq!(wrongly.vital_status, "alive");
    let status = projections::life_event_status(&store, birth_task.life_event_id)
        .await
        .unwrap()
        .unwrap();
    let residence_row = status
        .procedure(ProcedureId::ResidenceRegistration)
        .unwrap();
    assert_eq!(residence_row.state, ProcedureState::Open);
    assert_ne!(residence_row.task_id, Some(residence), "the moved task");
    assert_eq!(
        status
            .procedure(ProcedureId::ChildHealthInsurance)
            .unwrap()
            .state,
        ProcedureState::Cancelled
    );
}

/// A policy writes a new task's inbox row in the transaction that appends its `TaskCreated`:
/// the row is there when the creation commits, before the inbox projection runs, and is the row
/// the projection makes of the creation; a run rolled back leaves none; a redelivery (the
/// creation already stored) writes nothing, so the claim the projection folded meanwhile
/// stays; a rebuild ends with the same row.
async fn a_new_tasks_inbox_row_commits_with_its_creation_and_never_overwrites_the_projection(
    store: EventStore,
) {
    use lifeline::registry::Registry;
    use lifeline::tasks::TaskDesk;
    use lifeline_model::task::TaskCommand;
    use lifeline_policies::engine::task_id;
    use lifeline_policies::projections::inbox::INBOX_PROJECTION;
    use lifeline_policies::projections::InboxProjection;
    use lifeline_policies::rules::BIRTH_REGISTRATION;
    use lifeline_policies::PolicyHandler;
    use lifeline_tests::chain::{
        inbox_row_version, officer, real_engine, record_birth, task_created,
    };

    let engine = real_engine(Some(7));
    let registry = Registry::new(store.clone());
    let birth = record_birth(&store, &registry, 0, None).await;
    let registration = task_id(
        BIRTH_REGISTRATION,
        birth.event_id,
        ProcedureId::BirthRegistration,
    );
    let run_policy = || async {
        let mut tx = store.begin().await.unwrap();
        engine
            .apply(BIRTH_REGISTRATION, &mut tx, &birth)
            .await
            .unwrap();
        tx
    };

    // Rolled back: neither the task nor its row.
    run_policy().await.rollback().await.unwrap();
    assert!(task_created(&store, registration).await.is_none());
    assert_eq!(projections::task(&store, registration).await.unwrap(), None);

    // Committed: the row is there, the inbox projection not having run.
    run_policy().await.commit().await.unwrap();
    let created = task_created(&store, registration)
        .await
        .expect("the registration task");
    let row = projections::task(&store, registration)
        .await
        .unwrap()
        .expect("the new task's inbox row, written with its creation");
    assert_eq!(row.status, TaskStatus::Open);
    assert_eq!(
        (row.task_id, &row.office, &row.application),
        (created.task_id, &created.office, &created.application)
    );
    assert_eq!(
        store.load_checkpoint(INBOX_PROJECTION).await.unwrap(),
        LogCursor::START
    );
    // The projection, folding the creation, comes to the very same row (times as stored), and
    // so leaves the stored one as it is: on PostgreSQL the row keeps the version (`xmin`) the
    // policy's transaction wrote.
    let row_version = || async {
        // SQLite keeps no row versions.
        store.postgres_pool()?;
        inbox_row_version(&store, registration).await
    };
    let mut inbox = InboxProjection::new();
    let written = row_version().await;
    fold_task(&store, &mut inbox, registration).await;
    assert_eq!(
        projections::task(&store, registration).await.unwrap(),
        Some(row)
    );
    assert_eq!(
        row_version().await,
        written,
        "the unchanged row was written again"
    );

    // The agency claims it; the projection folds the claim.
    let desk = TaskDesk::new(store.clone());
    let actor = officer(created.office.as_str());
    desk.execute(
        &actor,
        registration,
        TaskCommand::Claim {
            by: actor.id.clone(),
            at: Utc::now(),
        },
    )
    .await
    .unwrap();
    fold_task(&store, &mut inbox, registration).await;
    let claimed = projections::task(&store, registration)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.status, TaskStatus::Claimed);
    assert_eq!(claimed.claimed_by.as_deref(), Some(actor.id.as_str()));

    // The record delivered again: its creation is stored, so its row is left as it is.
    run_policy().await.commit().await.unwrap();
    assert_eq!(
        projections::task(&store, registration)
            .await
            .unwrap()
            .as_ref(),
        Some(&claimed)
    );

    // A rebuild folds the log into the same row.
    rebuild_projections(&store).await.unwrap();
    assert_eq!(
        projections::task(&store, registration).await.unwrap(),
        Some(claimed)
    );
}

/// Runs `inbox` until its checkpoint is past the last event of task `task_id` (on PostgreSQL
/// the gap-free reader hides events while any older transaction of the server runs, other
/// tests' included).
async fn fold_task(
    store: &EventStore,
    inbox: &mut lifeline_policies::projections::InboxProjection,
    task_id: Uuid,
) {
    use lifeline_policies::projections::catch_up;
    use lifeline_policies::projections::inbox::INBOX_PROJECTION;

    let stream = lifeline_policies::engine::task_stream(task_id).unwrap();
    let last = store.read_stream(&stream).await.unwrap().pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.load_checkpoint(INBOX_PROJECTION).await.unwrap() < last.cursor() {
        assert!(Instant::now() < deadline, "the inbox did not fold the task");
        catch_up(store, inbox, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A reference is 50 bits of the record's id: two records can share one, by chance or on
/// purpose (an Idempotency-Key chosen so). Both are stored (before migration 14 the second
/// upsert failed on a unique key, and the projections stopped at it for good), and a look-up
/// by that reference finds both, so that the caller answers for neither.
async fn two_records_sharing_a_reference_are_both_stored_and_the_reference_is_ambiguous(
    store: EventStore,
) {
    let office = lifeline_model::values::OfficeCode::parse("79-26734").unwrap();
    let first = Uuid::now_v7();
    let shared = Reference::for_life_event(first);
    let row = |life_event_id: Uuid| LifeEventStatusRow {
        life_event_id,
        kind: lifeline_model::procedure::ProcedureGroup::Birth,
        reference: shared.clone(),
        office: office.clone(),
        recorded_on: today(),
        late: false,
        voided: false,
        corrections: 0,
        updated_at: at(20, 0),
        procedures: Vec::new(),
    };
    let second = Uuid::now_v7();
    for life_event_id in [first, second] {
        let mut tx = store.begin().await.unwrap();
        projections::save_life_event_status(&mut tx, &row(life_event_id))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let found = projections::life_event_status_by_reference(&store, &shared)
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = found.iter().map(|status| status.life_event_id).collect();
    ids.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ids, expected);
    let alone = Reference::for_life_event(Uuid::now_v7());
    assert!(projections::life_event_status_by_reference(&store, &alone)
        .await
        .unwrap()
        .is_empty());
}
