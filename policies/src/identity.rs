//! The identity allocator: assigns a child's 12-digit personal ID number when birth
//! registration completes. In production this is the national population database behind a
//! connector; [`StoreAllocator`] is Lifeline's own, whose uniqueness the store enforces.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use lifeline_model::codec::{decode_recorded, to_new_event, DecodeError};
use lifeline_model::envelope::{EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
use lifeline_model::system_events::{PersonalIdAssigned, SystemEvent};
use lifeline_model::values::{province_name, FullName, OfficeCode, PersonalId, Sex};
use lifeline_store::{AppendError, StoreError, StoreTransaction};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use uuid::Uuid;

use crate::engine::deterministic_id;

/// The stream kind holding the one `PersonalIdAssigned` of each number: `pin-<pin>`.
pub const PIN_STREAM_KIND: &str = "pin";

/// How many numbers [`StoreAllocator`] draws before it gives up on collisions.
pub const MAX_DRAWS: u32 = 32;

/// Who needs a number, and what was recorded about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRequest {
    pub life_event_id: Uuid,
    /// The birth-registration task whose completion asks for the number.
    pub task_id: Option<Uuid>,
    /// The registering office: its province gives digits 1-3.
    pub office: OfficeCode,
    pub full_name: FullName,
    pub date_of_birth: NaiveDate,
    pub sex: Sex,
    /// The event that asks (the completion): causation of the assignment.
    pub cause: Uuid,
    pub correlation_id: Uuid,
    pub at: DateTime<Utc>,
}

/// Why no number could be assigned.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("office {office} is in a province without a personal ID province code")]
    UnknownProvince { office: String },
    #[error("cannot build a personal ID number: {0}")]
    Invalid(#[from] lifeline_model::values::PersonalIdError),
    #[error("the earlier assignment for life event {life_event_id} cannot be read: {source}")]
    Decode {
        life_event_id: Uuid,
        #[source]
        source: DecodeError,
    },
    #[error("no free personal ID number after {0} draws")]
    Exhausted(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Append(AppendError),
}

/// Assigns personal ID numbers. Assigning twice for the same life event answers the first
/// assignment; a number is never given to two people.
#[async_trait]
pub trait IdentityAllocator: Send + Sync {
    async fn assign(
        &self,
        tx: &mut StoreTransaction<'_>,
        request: &PinRequest,
    ) -> Result<PersonalIdAssigned, IdentityError>;

    /// [`IdentityAllocator::assign`] for each of `requests`, answered in order, each on its
    /// own (one request's error does not fail the others). The outer error, a store failure,
    /// fails them all (the transaction cannot go on). By default one after another; [`StoreAllocator`] draws for
    /// every request at once and stores them in one statement.
    async fn assign_many(
        &self,
        tx: &mut StoreTransaction<'_>,
        requests: &[PinRequest],
    ) -> Result<Vec<Result<PersonalIdAssigned, IdentityError>>, StoreError> {
        let mut answered = Vec::with_capacity(requests.len());
        for request in requests {
            answered.push(self.assign(tx, request).await);
        }
        Ok(answered)
    }

    /// A first draw for each of `requests`, in order, not stored: each assignment with the
    /// append that would store it (`ExpectedVersion::NoStream` on its stream), or why none
    /// could be drawn. For a caller that stores them together with what it decides from them,
    /// all or nothing (`StoreTransaction::append_whole_with_new_tasks`). If that is refused (a
    /// number taken, an earlier assignment: a redelivery), or a draft failed, the caller
    /// passes the drafts to [`IdentityAllocator::assign_many_drafted`], which stores them as
    /// its first draws. `None` (the default: an allocator that is another system) when this
    /// allocator does not draft.
    fn draft_many(&self, requests: &[PinRequest]) -> Option<Drafts> {
        let _ = requests;
        None
    }

    /// [`IdentityAllocator::assign_many`] whose first draws are `drafts` (this allocator's
    /// [`IdentityAllocator::draft_many`] for the same `requests`, not stored): an allocator
    /// that drafts starts from them instead of drawing again (a failed draft answers its
    /// request's error, as a failed first draw does). By default they are forgotten.
    async fn assign_many_drafted(
        &self,
        tx: &mut StoreTransaction<'_>,
        requests: &[PinRequest],
        drafts: Drafts,
    ) -> Result<Vec<Result<PersonalIdAssigned, IdentityError>>, StoreError> {
        let _ = drafts;
        self.assign_many(tx, requests).await
    }
}

/// Each request's first draw, not stored, in the requests' order
/// ([`IdentityAllocator::draft_many`]).
pub type Drafts = Vec<Result<DraftedAssignment, IdentityError>>;

/// A drawn assignment not yet stored, with the append that stores it
/// ([`IdentityAllocator::draft_many`]).
pub struct DraftedAssignment {
    pub assigned: PersonalIdAssigned,
    pub stream: StreamId,
    pub event: NewEvent,
}

/// The event id of the one assignment of a life event: a redelivery finds it.
pub fn assignment_event_id(life_event_id: Uuid) -> Uuid {
    deterministic_id(&format!("identity/{life_event_id}"))
}

/// The assignment of life event `life_event_id` from its stored event (the one under
/// [`assignment_event_id`]).
pub fn decode_assignment(
    life_event_id: Uuid,
    recorded: &RecordedEvent,
) -> Result<PersonalIdAssigned, IdentityError> {
    match decode_recorded::<SystemEvent>(recorded) {
        Ok(SystemEvent::PersonalIdAssigned(assigned)) => Ok(assigned),
        Ok(_) => Err(IdentityError::Decode {
            life_event_id,
            source: DecodeError::UnknownEventType {
                event_type: recorded.event_type.clone(),
            },
        }),
        Err(source) => Err(IdentityError::Decode {
            life_event_id,
            source,
        }),
    }
}

/// The 3-digit personal ID province code of an office (`79-26734` -> `079`).
pub fn pin_province_code(office: &OfficeCode) -> Option<String> {
    let code = format!("0{}", office.province());
    province_name(&code).map(|_| code)
}

/// Digit 4 of the number: century of birth and sex (1900s 0/1, 2000s 2/3, ... 2300s 8/9).
pub fn century_sex_digit(date_of_birth: NaiveDate, sex: Sex) -> Option<u32> {
    let year = date_of_birth.year();
    if !(1900..2400).contains(&year) {
        return None;
    }
    let century = u32::try_from(year / 100 - 19).ok()?;
    Some(century * 2 + u32::from(sex == Sex::Female))
}

/// The number for `request` with the six random digits `random` (0..1_000_000).
pub fn compose_pin(request: &PinRequest, random: u32) -> Result<PersonalId, IdentityError> {
    let province =
        pin_province_code(&request.office).ok_or_else(|| IdentityError::UnknownProvince {
            office: request.office.to_string(),
        })?;
    let digit = century_sex_digit(request.date_of_birth, request.sex).ok_or(
        lifeline_model::values::PersonalIdError::CenturyOutOfRange(request.date_of_birth.year()),
    )?;
    let year = request.date_of_birth.year() % 100;
    let pin = PersonalId::parse_for_holder(
        &format!("{province}{digit}{year:02}{:06}", random % 1_000_000),
        Some(request.date_of_birth),
        Some(request.sex),
    )?;
    Ok(pin)
}

/// Lifeline's own allocator: draws the random digits, and lets the store refuse a number in
/// use (`pin-<pin>` appended with "stream must not exist"; a conflict draws again).
pub struct StoreAllocator {
    draws: Draws,
}

/// Where the random digits come from.
enum Draws {
    /// One generator for every request, in the order the requests come.
    Generator(Mutex<Box<dyn RngCore + Send>>),
    /// A function of a seed, the request's holder and the attempt ([`StoreAllocator::keyed`]).
    Keyed(u64),
}

impl std::fmt::Debug for StoreAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAllocator").finish_non_exhaustive()
    }
}

impl Default for StoreAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreAllocator {
    /// Draws from an operating-system-seeded generator.
    pub fn new() -> Self {
        Self::with_rng(StdRng::from_entropy())
    }

    /// Draws from `rng` (tests inject a seeded one).
    pub fn with_rng(rng: impl RngCore + Send + 'static) -> Self {
        Self {
            draws: Draws::Generator(Mutex::new(Box::new(rng))),
        }
    }

    /// Draws digits that depend only on `seed`, the holder (office, name, date of birth, sex)
    /// and how many draws this request already made: the same child gets the same number
    /// whatever order the requests come in, and a redelivered or retried request (which draws
    /// before it finds its earlier number) moves nobody else's. For tests comparing runs; the
    /// digits are predictable, so never for a real registry.
    pub fn keyed(seed: u64) -> Self {
        Self {
            draws: Draws::Keyed(seed),
        }
    }

    fn draw(&self, request: &PinRequest, attempt: u32) -> u32 {
        match &self.draws {
            Draws::Generator(rng) => match rng.lock() {
                Ok(mut rng) => rng.gen_range(0..1_000_000),
                Err(poisoned) => poisoned.into_inner().gen_range(0..1_000_000),
            },
            Draws::Keyed(seed) => {
                use std::hash::{Hash, Hasher};
                // SipHash with fixed keys: the same digits for the same inputs in one build.
                let mut hasher = std::hash::DefaultHasher::new();
                (
                    seed,
                    request.office.as_str(),
                    request.full_name.as_str(),
                    request.date_of_birth,
                    request.sex,
                    attempt,
                )
                    .hash(&mut hasher);
                (hasher.finish() % 1_000_000) as u32
            }
        }
    }

    async fn earlier(
        tx: &mut StoreTransaction<'_>,
        life_event_id: Uuid,
    ) -> Result<Option<PersonalIdAssigned>, IdentityError> {
        let Some(recorded) = tx.event_by_id(assignment_event_id(life_event_id)).await? else {
            return Ok(None);
        };
        decode_assignment(life_event_id, &recorded).map(Some)
    }
}

impl StoreAllocator {
    /// The assignment of `request`'s draw number `attempt`, and the append that stores it.
    fn drawn(
        &self,
        request: &PinRequest,
        attempt: u32,
    ) -> Result<(PersonalIdAssigned, StreamId, NewEvent), IdentityError> {
        let pin = compose_pin(request, self.draw(request, attempt))?;
        let assigned = PersonalIdAssigned::new(
            pin.clone(),
            request.life_event_id,
            request.task_id,
            request.full_name.clone(),
            request.date_of_birth,
            request.sex,
            request.at,
        )?;
        let stream = StreamId::for_kind(PIN_STREAM_KIND, pin.as_str()).map_err(|error| {
            IdentityError::Append(AppendError::Store(StoreError::Corrupt {
                global_position: 0,
                reason: error.to_string(),
            }))
        })?;
        let metadata = EventMetadata {
            office: Some(request.office.to_string()),
            ..EventMetadata::system(
                "policy:identity",
                request.correlation_id,
                Some(request.cause),
                request.at,
            )
        };
        let event = to_new_event(
            &SystemEvent::PersonalIdAssigned(assigned.clone()),
            assignment_event_id(request.life_event_id),
            metadata,
        );
        Ok((assigned, stream, event))
    }

    /// What the append of a drawn assignment answered: `Ok(Some(..))` assigned, `Ok(None)`
    /// draw again (the number is someone else's).
    async fn settle(
        tx: &mut StoreTransaction<'_>,
        request: &PinRequest,
        assigned: PersonalIdAssigned,
        appended: Result<lifeline_store::AppendOutcome, AppendError>,
    ) -> Result<Option<PersonalIdAssigned>, IdentityError> {
        match appended {
            Ok(_) => Ok(Some(assigned)),
            // The number is someone else's: draw again.
            Err(AppendError::Conflict { .. }) => Ok(None),
            // A concurrent assignment for this life event won: answer it.
            Err(AppendError::EventIdMismatch { .. }) => {
                match Self::earlier(tx, request.life_event_id).await? {
                    Some(assigned) => Ok(Some(assigned)),
                    None => Err(IdentityError::Exhausted(MAX_DRAWS)),
                }
            }
            Err(error) => Err(IdentityError::Append(error)),
        }
    }
}

#[async_trait]
impl IdentityAllocator for StoreAllocator {
    async fn assign(
        &self,
        tx: &mut StoreTransaction<'_>,
        request: &PinRequest,
    ) -> Result<PersonalIdAssigned, IdentityError> {
        self.assign_many(tx, std::slice::from_ref(request))
            .await
            .map_err(IdentityError::Store)?
            .pop()
            .unwrap_or(Err(IdentityError::Exhausted(0)))
    }

    /// Each request's first draw (the draw [`IdentityAllocator::assign_many`] starts with).
    fn draft_many(&self, requests: &[PinRequest]) -> Option<Drafts> {
        Some(
            requests
                .iter()
                .map(|request| {
                    self.drawn(request, 0)
                        .map(|(assigned, stream, event)| DraftedAssignment {
                            assigned,
                            stream,
                            event,
                        })
                })
                .collect(),
        )
    }

    /// Each draw round appends every request still without a number in one
    /// [`StoreTransaction::append_many`] (one statement when no number is taken). No look-up
    /// first: the assignment's event id is the life event's, so an earlier assignment (a
    /// redelivery) makes its append fail with an id mismatch (the id is stored on another
    /// number's stream), and only then is it read. A first assignment, the usual case, costs no
    /// read.
    async fn assign_many(
        &self,
        tx: &mut StoreTransaction<'_>,
        requests: &[PinRequest],
    ) -> Result<Vec<Result<PersonalIdAssigned, IdentityError>>, StoreError> {
        self.assign_rounds(tx, requests, None).await
    }

    async fn assign_many_drafted(
        &self,
        tx: &mut StoreTransaction<'_>,
        requests: &[PinRequest],
        drafts: Drafts,
    ) -> Result<Vec<Result<PersonalIdAssigned, IdentityError>>, StoreError> {
        self.assign_rounds(tx, requests, Some(drafts)).await
    }
}

impl StoreAllocator {
    /// [`IdentityAllocator::assign_many`], its first round's draws `drafts` if given (one per
    /// request, in order).
    async fn assign_rounds(
        &self,
        tx: &mut StoreTransaction<'_>,
        requests: &[PinRequest],
        drafts: Option<Drafts>,
    ) -> Result<Vec<Result<PersonalIdAssigned, IdentityError>>, StoreError> {
        let mut answered: Vec<Option<Result<PersonalIdAssigned, IdentityError>>> =
            requests.iter().map(|_| None).collect();
        let mut drafts = drafts.filter(|drafts| drafts.len() == requests.len());
        for attempt in 0..MAX_DRAWS {
            // (index of the request, its drawn assignment, stream, event)
            let mut drawn = Vec::new();
            if let Some(drafts) = drafts.take() {
                for (index, draft) in drafts.into_iter().enumerate() {
                    match draft {
                        Ok(draft) => drawn.push((index, draft.assigned, draft.stream, draft.event)),
                        Err(error) => answered[index] = Some(Err(error)),
                    }
                }
            } else {
                for (index, request) in requests.iter().enumerate() {
                    if answered[index].is_some() {
                        continue;
                    }
                    match self.drawn(request, attempt) {
                        Ok((assigned, stream, event)) => {
                            drawn.push((index, assigned, stream, event))
                        }
                        Err(error) => answered[index] = Some(Err(error)),
                    }
                }
            }
            if drawn.is_empty() {
                break;
            }
            let appends: Vec<_> = drawn
                .iter()
                .map(|(_, _, stream, event)| {
                    (
                        stream,
                        ExpectedVersion::NoStream,
                        std::slice::from_ref(event),
                    )
                })
                .collect();
            let results = tx.append_many(&appends).await?;
            for ((index, assigned, _, _), appended) in drawn.into_iter().zip(results) {
                match Self::settle(tx, &requests[index], assigned, appended).await {
                    Ok(Some(assigned)) => answered[index] = Some(Ok(assigned)),
                    Ok(None) => {}
                    Err(error) => answered[index] = Some(Err(error)),
                }
            }
        }
        Ok(answered
            .into_iter()
            .map(|answer| answer.unwrap_or(Err(IdentityError::Exhausted(MAX_DRAWS))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sex: Sex, born: &str, office: &str) -> PinRequest {
        PinRequest {
            life_event_id: Uuid::nil(),
            task_id: None,
            office: OfficeCode::parse(office).unwrap(),
            full_name: FullName::parse_field("Nguyễn Minh An", "child.full_name").unwrap(),
            date_of_birth: NaiveDate::parse_from_str(born, "%Y-%m-%d").unwrap(),
            sex,
            cause: Uuid::nil(),
            correlation_id: Uuid::nil(),
            at: Utc::now(),
        }
    }

    #[test]
    fn numbers_follow_decree_137() {
        let pin = compose_pin(&request(Sex::Female, "2026-11-20", "79-26734"), 42).unwrap();
        assert_eq!(pin.as_str(), "079326000042");
        let pin = compose_pin(&request(Sex::Male, "2026-01-02", "01-00004"), 987_654).unwrap();
        assert_eq!(pin.as_str(), "001226987654");
        let pin = compose_pin(&request(Sex::Male, "1999-12-31", "48-20194"), 1).unwrap();
        assert_eq!(pin.as_str(), "048099000001");
        assert_eq!(
            century_sex_digit(NaiveDate::from_ymd_opt(2101, 1, 1).unwrap(), Sex::Female),
            Some(5)
        );
        assert_eq!(
            century_sex_digit(NaiveDate::from_ymd_opt(1899, 1, 1).unwrap(), Sex::Male),
            None
        );
    }

    #[test]
    fn the_same_life_event_always_has_the_same_assignment_id() {
        let id = Uuid::from_u128(7);
        assert_eq!(assignment_event_id(id), assignment_event_id(id));
        assert_ne!(
            assignment_event_id(id),
            assignment_event_id(Uuid::from_u128(8))
        );
    }
}
