//! A life event (a birth or a death) as an aggregate: its events, commands and decisions.
//!
//! Stream `birth-<uuid>` or `death-<uuid>`; the aggregate is the same for both kinds.

use chrono::NaiveDate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::declaration::{
    changed_fields, is_late_birth, is_late_death, BirthDeclaration, DeathDeclaration, Declaration,
};
use crate::error::DomainError;
use crate::procedure::ProcedureGroup;
use crate::validation::ValidationErrors;
use crate::values::{parse_text, MAX_TEXT_CHARS};

/// Everything that happens to a life event record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifeEventEvent {
    BirthRecorded(BirthRecorded),
    DeathRecorded(DeathRecorded),
    LifeEventCorrected(LifeEventCorrected),
    LifeEventVoided(LifeEventVoided),
}

/// A registrar recorded a birth. Schema version 2 (v1 had `child.name` and no `procedures`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirthRecorded {
    pub life_event_id: Uuid,
    pub reference: Reference,
    pub recorded_on: NaiveDate,
    /// Declared more than 60 days after the birth.
    pub late: bool,
    #[serde(flatten)]
    pub declaration: BirthDeclaration,
}

/// A registrar recorded a death, with the procedures the declarant chose. Schema version 2
/// (v1 had `death.date` without a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeathRecorded {
    pub life_event_id: Uuid,
    pub reference: Reference,
    pub recorded_on: NaiveDate,
    /// Declared more than 15 days after the death.
    pub late: bool,
    #[serde(flatten)]
    pub declaration: DeathDeclaration,
}

/// A registrar replaced the declaration of a record, giving a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeEventCorrected {
    pub life_event_id: Uuid,
    pub reason: String,
    pub recorded_on: NaiveDate,
    /// Dotted paths (as in task applications) whose values changed.
    pub changed_fields: Vec<String>,
    /// The whole declaration after the correction.
    pub declaration: Declaration,
}

/// A registrar voided a record entered in error. Nothing more can happen to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeEventVoided {
    pub life_event_id: Uuid,
    pub reason: String,
    pub recorded_on: NaiveDate,
}

impl LifeEventEvent {
    pub fn life_event_id(&self) -> Uuid {
        match self {
            Self::BirthRecorded(event) => event.life_event_id,
            Self::DeathRecorded(event) => event.life_event_id,
            Self::LifeEventCorrected(event) => event.life_event_id,
            Self::LifeEventVoided(event) => event.life_event_id,
        }
    }
}

/// What a registrar asks of a life event record. Dates come from the caller (the clock is I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifeEventCommand {
    RecordBirth {
        life_event_id: Uuid,
        declaration: BirthDeclaration,
        recorded_on: NaiveDate,
    },
    RecordDeath {
        life_event_id: Uuid,
        declaration: DeathDeclaration,
        recorded_on: NaiveDate,
    },
    Correct {
        declaration: Declaration,
        reason: String,
        recorded_on: NaiveDate,
    },
    Void {
        reason: String,
        recorded_on: NaiveDate,
    },
}

/// The state of a life event record, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeEvent {
    pub life_event_id: Option<Uuid>,
    pub reference: Option<Reference>,
    pub recorded_on: Option<NaiveDate>,
    pub late: bool,
    /// The current declaration (after corrections).
    pub declaration: Option<Declaration>,
    pub corrections: u32,
    pub voided: bool,
}

impl LifeEvent {
    /// Decides on a command: the events to record, or a refusal. Pure.
    pub fn decide(&self, command: LifeEventCommand) -> Result<Vec<LifeEventEvent>, DomainError> {
        match command {
            LifeEventCommand::RecordBirth {
                life_event_id,
                declaration,
                recorded_on,
            } => {
                self.refuse_if_recorded()?;
                Ok(vec![LifeEventEvent::BirthRecorded(BirthRecorded {
                    life_event_id,
                    reference: Reference::for_life_event(life_event_id),
                    recorded_on,
                    late: is_late_birth(declaration.child.date_of_birth, recorded_on),
                    declaration,
                })])
            }
            LifeEventCommand::RecordDeath {
                life_event_id,
                declaration,
                recorded_on,
            } => {
                self.refuse_if_recorded()?;
                Ok(vec![LifeEventEvent::DeathRecorded(DeathRecorded {
                    life_event_id,
                    reference: Reference::for_life_event(life_event_id),
                    recorded_on,
                    late: is_late_death(declaration.death.date(), recorded_on),
                    declaration,
                })])
            }
            LifeEventCommand::Correct {
                declaration,
                reason,
                recorded_on,
            } => {
                let (life_event_id, current) = self.open_record()?;
                if current.group() != declaration.group() {
                    return Err(DomainError::WrongKind {
                        recorded: current.group(),
                        given: declaration.group(),
                    });
                }
                let reason = parse_reason(&reason)?;
                let changed_fields = changed_fields(current, &declaration);
                if changed_fields.is_empty() {
                    return Err(DomainError::NothingChanged);
                }
                Ok(vec![LifeEventEvent::LifeEventCorrected(
                    LifeEventCorrected {
                        life_event_id,
                        reason,
                        recorded_on,
                        changed_fields,
                        declaration,
                    },
                )])
            }
            LifeEventCommand::Void {
                reason,
                recorded_on,
            } => {
                let (life_event_id, _) = self.open_record()?;
                let reason = parse_reason(&reason)?;
                Ok(vec![LifeEventEvent::LifeEventVoided(LifeEventVoided {
                    life_event_id,
                    reason,
                    recorded_on,
                })])
            }
        }
    }

    /// The kind of record, once recorded.
    pub fn group(&self) -> Option<ProcedureGroup> {
        self.declaration.as_ref().map(Declaration::group)
    }

    fn refuse_if_recorded(&self) -> Result<(), DomainError> {
        if self.life_event_id.is_some() {
            Err(DomainError::AlreadyRecorded)
        } else {
            Ok(())
        }
    }

    fn open_record(&self) -> Result<(Uuid, &Declaration), DomainError> {
        match (self.life_event_id, &self.declaration) {
            (Some(_), Some(_)) if self.voided => Err(DomainError::Voided),
            (Some(id), Some(declaration)) => Ok((id, declaration)),
            _ => Err(DomainError::NotRecorded),
        }
    }
}

fn parse_reason(raw: &str) -> Result<String, DomainError> {
    parse_text(raw, "reason", MAX_TEXT_CHARS).map_err(|error| ValidationErrors::from(error).into())
}

impl Aggregate for LifeEvent {
    const TYPE: &'static str = "life_event";
    type Command = LifeEventCommand;
    type Event = LifeEventEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            LifeEventEvent::BirthRecorded(event) => {
                self.life_event_id = Some(event.life_event_id);
                self.reference = Some(event.reference);
                self.recorded_on = Some(event.recorded_on);
                self.late = event.late;
                self.declaration = Some(Declaration::Birth(event.declaration));
            }
            LifeEventEvent::DeathRecorded(event) => {
                self.life_event_id = Some(event.life_event_id);
                self.reference = Some(event.reference);
                self.recorded_on = Some(event.recorded_on);
                self.late = event.late;
                self.declaration = Some(Declaration::Death(event.declaration));
            }
            LifeEventEvent::LifeEventCorrected(event) => {
                // A corrected date of birth or death decides again whether the record was late
                // (until 2026-12-07 the flag stayed as first recorded).
                if let Some(recorded_on) = self.recorded_on {
                    self.late = event.declaration.is_late(recorded_on);
                }
                self.declaration = Some(event.declaration);
                self.corrections += 1;
            }
            LifeEventEvent::LifeEventVoided(_) => self.voided = true,
        }
    }
}

/// The reference a citizen quotes (`LL-` + 10 Crockford base32 characters), derived
/// deterministically from the life event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference(String);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A reference that is not `LL-` and 10 Crockford base32 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {0:?}: expected LL- and 10 letters or digits")]
pub struct InvalidReference(pub String);

impl Reference {
    /// `LL-` + 50 bits of the id (its two halves folded together, so time-ordered UUIDv7 ids
    /// still give spread references) in Crockford base32.
    pub fn for_life_event(life_event_id: Uuid) -> Self {
        let bits = life_event_id.as_u128();
        // Truncation intended: fold the two 64-bit halves.
        #[allow(clippy::cast_possible_truncation)]
        let folded = (bits >> 64) as u64 ^ bits as u64;
        let mut text = String::from("LL-");
        for index in (0..10).rev() {
            let symbol = (folded >> (index * 5)) & 0x1f;
            text.push(char::from(CROCKFORD[usize::try_from(symbol).unwrap_or(0)]));
        }
        Self(text)
    }

    /// Parses what a citizen types: case-insensitive, `I`/`L` read as 1, `O` as 0, hyphens and
    /// spaces ignored, the `LL` prefix optional.
    pub fn parse(raw: &str) -> Result<Self, InvalidReference> {
        let compact: String = raw
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let body = match compact.strip_prefix("LL") {
            Some(rest) if rest.len() == 10 => rest,
            _ => compact.as_str(),
        };
        let symbols: Option<String> = body
            .chars()
            .map(|c| match c {
                'I' | 'L' => Some('1'),
                'O' => Some('0'),
                c if c.is_ascii() && CROCKFORD.contains(&(c as u8)) => Some(c),
                _ => None,
            })
            .collect();
        match symbols {
            Some(symbols) if symbols.len() == 10 => Ok(Self(format!("LL-{symbols}"))),
            _ => Err(InvalidReference(raw.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Reference {
    type Error = InvalidReference;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Reference> for String {
    fn from(value: Reference) -> Self {
        value.0
    }
}
