//! Who calls and what they may do: bearer tokens (signed JWTs) checked by a [`TokenVerifier`],
//! the [`Principal`] they name, and the one authorisation table ([`AUTHORISATION`]) that every
//! handler consults through [`authorize`].
//!
//! Tokens are HS256 for now (a shared secret from `LIFELINE_TOKEN_SECRET` or a file); moving to
//! asymmetric keys only changes how a [`TokenVerifier`] is built.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lifeline_model::envelope::Role;
use lifeline_model::procedure::AgencyId;
use lifeline_model::values::OfficeCode;
use serde::{Deserialize, Serialize};

/// The claims of a Lifeline token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user (or system) the token was issued to.
    pub sub: String,
    /// `registrar`, `agency`, `auditor` or `operator`.
    pub role: Role,
    /// The registrar's office (`79-26734`); registrars only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office: Option<String>,
    /// The agency officer's agency (`police`); agency officers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    /// Expiry, seconds since the epoch: every token expires.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

/// Where a principal may act: the registrar's office, the agency, or everywhere its role allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Office(OfficeCode),
    Agency(AgencyId),
    /// Auditors and operators.
    Unscoped,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Office(office) => write!(f, "office:{office}"),
            Self::Agency(agency) => write!(f, "agency:{agency}"),
            Self::Unscoped => f.write_str("all"),
        }
    }
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    pub scope: Scope,
}

/// Why a token was refused (HTTP 401), or could not be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token's role or scope is not valid: {0}")]
    BadClaims(&'static str),
    #[error("cannot sign the token")]
    Signing,
}

/// Checks bearer tokens. HS256 with a shared secret today; a later version adds asymmetric keys
/// behind the same [`TokenVerifier::verify`].
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

/// The shortest secret accepted for HS256 tokens.
pub const MIN_SECRET_BYTES: usize = 32;

impl TokenVerifier {
    /// A verifier of HS256 tokens signed with `secret` (at least [`MIN_SECRET_BYTES`] bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::BadClaims("the secret is shorter than 32 bytes"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            key: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Verifies signature and expiry, then turns the claims into a [`Principal`].
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            },
        )?;
        principal_of(data.claims)
    }
}

/// The subjects Lifeline acts as itself: agency systems through their connector
/// (`connector:<agency>`), the policies (`policy:<name>`), the overdue watcher
/// (`watcher:overdue`) and operators' retries (`operator:<who>`). No token may name one: the
/// connector worker counts a task claimed by `connector:<agency>` as one the agency system had,
/// and the audit trail tells these actors apart from people by the name.
const RESERVED_SUBJECTS: [&str; 4] = ["connector:", "policy:", "watcher:", "operator:"];

fn principal_of(claims: Claims) -> Result<Principal, TokenError> {
    if claims.sub.trim().is_empty()
        || claims.sub.len() > 200
        || RESERVED_SUBJECTS
            .iter()
            .any(|prefix| claims.sub.trim().starts_with(prefix))
    {
        return Err(TokenError::BadClaims("sub"));
    }
    let scope = match (claims.role, claims.office, claims.agency) {
        (Role::Registrar, Some(office), None) => {
            Scope::Office(OfficeCode::parse(&office).map_err(|_| TokenError::BadClaims("office"))?)
        }
        (Role::Agency, None, Some(agency)) => Scope::Agency(
            agency
                .parse::<AgencyId>()
                .map_err(|_| TokenError::BadClaims("agency"))?,
        ),
        (Role::Auditor | Role::Operator, None, None) => Scope::Unscoped,
        (Role::System, _, _) => return Err(TokenError::BadClaims("role")),
        _ => {
            return Err(TokenError::BadClaims(
                "a registrar names an office, an agency officer an agency, nobody else either",
            ))
        }
    };
    Ok(Principal {
        subject: claims.sub,
        role: claims.role,
        scope,
    })
}

/// Issues a development token for `role` in `scope`, valid for `ttl`; the subject is
/// `dev-<role>` (see [`issue_token_for`] to name it).
pub fn issue_token(
    secret: &[u8],
    role: Role,
    scope: Scope,
    ttl: Duration,
) -> Result<String, TokenError> {
    let subject = format!("dev-{}", role_name(role));
    issue_token_for(secret, &subject, role, scope, ttl)
}

/// Issues a token for `subject`.
pub fn issue_token_for(
    secret: &[u8],
    subject: &str,
    role: Role,
    scope: Scope,
    ttl: Duration,
) -> Result<String, TokenError> {
    let now = jsonwebtoken::get_current_timestamp();
    let (office, agency) = match scope {
        Scope::Office(office) => (Some(office.as_str().to_owned()), None),
        Scope::Agency(agency) => (None, Some(agency.as_str().to_owned())),
        Scope::Unscoped => (None, None),
    };
    let claims = Claims {
        sub: subject.to_owned(),
        role,
        office,
        agency,
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
    };
    // Refuse to issue what the verifier would refuse.
    principal_of(claims.clone())?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| TokenError::Signing)
}

/// Reads the token secret: `LIFELINE_TOKEN_SECRET`, else the file named by
/// `LIFELINE_TOKEN_SECRET_FILE`. `None` when neither is set.
pub fn secret_from_env() -> std::io::Result<Option<Vec<u8>>> {
    if let Ok(secret) = std::env::var("LIFELINE_TOKEN_SECRET") {
        if !secret.is_empty() {
            return Ok(Some(secret.into_bytes()));
        }
    }
    match std::env::var("LIFELINE_TOKEN_SECRET_FILE") {
        Ok(path) if !path.is_empty() => {
            let text = std::fs::read_to_string(path)?;
            Ok(Some(text.trim().as_bytes().to_vec()))
        }
        _ => Ok(None),
    }
}

/// The secret of a development set-up with none configured: `<data_dir>/token-secret`, made
/// with 32 random bytes (hex) on first use and readable by its owner only, so that
/// `lifeline token` and `lifeline serve` on one machine agree. Production sets
/// `LIFELINE_TOKEN_SECRET` or `LIFELINE_TOKEN_SECRET_FILE`.
pub fn development_secret(data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("token-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0_u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, secret.as_bytes())?;
            Ok(secret.into_bytes())
        }
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(error) => Err(error),
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Registrar => "registrar",
        Role::Agency => "agency",
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

// ---------------------------------------------------------------------------------------------
// Authorisation.

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/births`, `POST /v1/deaths`.
    RecordLifeEvent,
    /// `GET /v1/life-events/{id}` (personal data).
    ReadLifeEvent,
    /// `POST /v1/life-events/{id}/corrections`, `/void`.
    ChangeLifeEvent,
    /// `GET /v1/agencies/{agency}/tasks`.
    ListTasks,
    /// `GET /v1/tasks/{id}` (the procedure's application fields).
    ReadTask,
    /// `POST /v1/tasks/{id}/claim`, `/complete`, `/reject`.
    WorkTask,
    /// `GET /v1/status/{reference}`: procedure names, states and dates only.
    ReadCitizenStatus,
    /// `GET /v1/audit/events`, `/v1/audit/streams/{id}`, `/v1/audit/persons/{pin}/timeline`:
    /// the log as stored (personal data).
    ReadLog,
    /// `GET /v1/audit/replay`: the person registry and life-event status as of a moment.
    ReplayViews,
    /// `GET /v1/audit/export`: the whole log as NDJSON.
    ExportLog,
    /// `GET /v1/audit/access-log`: who read which personal data, when and why.
    ReadAccessLog,
    /// `GET /v1/operations/policies/failed`: policy runs that gave up (policy name, event id,
    /// error, counts; no personal data).
    ReadPolicyFailures,
    /// `POST /v1/operations/policies/retry`: re-run policy runs that gave up.
    RetryPolicies,
    /// `GET /v1/operations/deliveries/failed`: connector deliveries given up on (task ids,
    /// agencies, statuses; no personal data).
    ReadDeliveryFailures,
    /// `POST /v1/operations/deliveries/retry`: request failed deliveries sent again.
    RetryDeliveries,
}

/// Which resources a permitted role may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    /// Any resource.
    Any,
    /// Only resources of the office in the token.
    OwnOffice,
    /// Only resources of the agency in the token.
    OwnAgency,
}

/// The one authorisation table: role x action -> the scope rule; a pair not listed is refused
/// (403). Every handler decides through it ([`authorize_role`], [`authorize`]), and
/// `services/tests/authz_table.rs` checks every route for every kind of caller against it.
///
/// - Registrars record, read and correct life events of their own office only.
/// - Agency officers list, read and work the tasks of their own agency only; a task shows only
///   its procedure's fields.
/// - Auditors read everything (life events, tasks, the log, replays, exports, the access log,
///   policy failures) and write nothing.
/// - Operators retry and list failed policy runs; they read no personal data. `/healthz`,
///   `/readyz`, `/metrics` and `/openapi.json` need no token at all.
/// - Citizen status: any authenticated role (the citizen portal calls with an operator token);
///   the reference is the citizen's capability, and the answer holds no personal data.
/// - The connector callback is authenticated by the agency system's HMAC signature, not a token.
#[rustfmt::skip]
pub const AUTHORISATION: &[(Role, Action, ScopeRule)] = &[
    (
        Role::Registrar,
        Action::RecordLifeEvent,
        ScopeRule::OwnOffice,
    ),
    (Role::Registrar, Action::ReadLifeEvent, ScopeRule::OwnOffice),
    (
        Role::Registrar,
        Action::ChangeLifeEvent,
        ScopeRule::OwnOffice,
    ),
    (Role::Registrar, Action::ReadCitizenStatus, ScopeRule::Any),
    (Role::Agency, Action::ListTasks, ScopeRule::OwnAgency),
    (Role::Agency, Action::ReadTask, ScopeRule::OwnAgency),
    (Role::Agency, Action::WorkTask, ScopeRule::OwnAgency),
    (Role::Agency, Action::ReadCitizenStatus, ScopeRule::Any),
    (Role::Auditor, Action::ReadLifeEvent, ScopeRule::Any),
    (Role::Auditor, Action::ListTasks, ScopeRule::Any),
    (Role::Auditor, Action::ReadTask, ScopeRule::Any),
    (Role::Auditor, Action::ReadCitizenStatus, ScopeRule::Any),
    (Role::Auditor, Action::ReadLog, ScopeRule::Any),
    (Role::Auditor, Action::ReplayViews, ScopeRule::Any),
    (Role::Auditor, Action::ExportLog, ScopeRule::Any),
    (Role::Auditor, Action::ReadAccessLog, ScopeRule::Any),
    (Role::Auditor, Action::ReadPolicyFailures, ScopeRule::Any),
    (Role::Operator, Action::ReadCitizenStatus, ScopeRule::Any),
    (Role::Operator, Action::ReadPolicyFailures, ScopeRule::Any),
    (Role::Operator, Action::RetryPolicies, ScopeRule::Any),
    (Role::Auditor, Action::ReadDeliveryFailures, ScopeRule::Any),
    (Role::Operator, Action::ReadDeliveryFailures, ScopeRule::Any),
    (Role::Operator, Action::RetryDeliveries, ScopeRule::Any),
];

/// The office or agency a request touches, when known.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Office(&'a OfficeCode),
    Agency(AgencyId),
    /// The action needs only the role's permission (e.g. citizen status).
    Nothing,
}

/// Why a principal may not do something (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("the role may not do this")]
    Role,
    #[error("the resource is outside the token's scope")]
    Scope,
}

/// The scope rule under which `principal`'s role may do `action`; [`Forbidden::Role`] if the
/// table does not list the pair. Handlers call it before they know the target.
pub fn authorize_role(principal: &Principal, action: Action) -> Result<ScopeRule, Forbidden> {
    AUTHORISATION
        .iter()
        .find(|(role, listed, _)| *role == principal.role && *listed == action)
        .map(|(_, _, rule)| *rule)
        .ok_or(Forbidden::Role)
}

/// Whether `principal` may do `action` on `target`, by [`AUTHORISATION`].
pub fn authorize(
    principal: &Principal,
    action: Action,
    target: Target<'_>,
) -> Result<(), Forbidden> {
    let rule = authorize_role(principal, action)?;
    let allowed = match (rule, target, &principal.scope) {
        (ScopeRule::Any, _, _) => true,
        (ScopeRule::OwnOffice, Target::Office(office), Scope::Office(own)) => office == own,
        (ScopeRule::OwnAgency, Target::Agency(agency), Scope::Agency(own)) => agency == *own,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Forbidden::Scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn principal(role: Role, scope: Scope) -> Principal {
        Principal {
            subject: "u".into(),
            role,
            scope,
        }
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let office = OfficeCode::parse("79-26734").unwrap();
        let token = issue_token(
            SECRET,
            Role::Registrar,
            Scope::Office(office.clone()),
            Duration::from_secs(60),
        )
        .unwrap();
        let verifier = TokenVerifier::hs256(SECRET).unwrap();
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.scope, Scope::Office(office));
        assert_eq!(
            TokenVerifier::hs256(b"another secret that is long enough!!")
                .unwrap()
                .verify(&token),
            Err(TokenError::Invalid)
        );
        assert!(issue_token(SECRET, Role::Registrar, Scope::Unscoped, Duration::ZERO).is_err());
        assert!(TokenVerifier::hs256(b"short").is_err());
    }

    /// A token cannot name a subject Lifeline acts as itself (an officer named
    /// `connector:police` would make inbox work look like the agency system's).
    #[test]
    fn reserved_subjects_are_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        for subject in [
            "connector:police",
            " connector:police",
            "policy:corrections",
            "watcher:overdue",
            "operator:policies-retry",
        ] {
            let claims = Claims {
                sub: subject.to_owned(),
                role: Role::Agency,
                office: None,
                agency: Some("police".to_owned()),
                exp: now + 60,
                iat: now,
            };
            assert_eq!(
                principal_of(claims.clone()),
                Err(TokenError::BadClaims("sub")),
                "{subject}"
            );
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(
                TokenVerifier::hs256(SECRET).unwrap().verify(&forged),
                Err(TokenError::BadClaims("sub"))
            );
        }
        assert!(issue_token_for(
            SECRET,
            "connector:police",
            Role::Agency,
            Scope::Agency(AgencyId::Police),
            Duration::from_secs(60)
        )
        .is_err());
    }

    #[test]
    fn the_table_decides() {
        let office = OfficeCode::parse("79-26734").unwrap();
        let other = OfficeCode::parse("01-00004").unwrap();
        let registrar = principal(Role::Registrar, Scope::Office(office.clone()));
        assert!(authorize(&registrar, Action::RecordLifeEvent, Target::Office(&office)).is_ok());
        assert_eq!(
            authorize(&registrar, Action::RecordLifeEvent, Target::Office(&other)),
            Err(Forbidden::Scope)
        );
        assert_eq!(
            authorize(
                &registrar,
                Action::WorkTask,
                Target::Agency(AgencyId::Police)
            ),
            Err(Forbidden::Role)
        );
        let police = principal(Role::Agency, Scope::Agency(AgencyId::Police));
        assert!(authorize(&police, Action::WorkTask, Target::Agency(AgencyId::Police)).is_ok());
        assert_eq!(
            authorize(
                &police,
                Action::WorkTask,
                Target::Agency(AgencyId::SocialSecurity)
            ),
            Err(Forbidden::Scope)
        );
        let auditor = principal(Role::Auditor, Scope::Unscoped);
        assert!(authorize(&auditor, Action::ReadTask, Target::Agency(AgencyId::Police)).is_ok());
        assert_eq!(
            authorize(&auditor, Action::WorkTask, Target::Agency(AgencyId::Police)),
            Err(Forbidden::Role)
        );
        let operator = principal(Role::Operator, Scope::Unscoped);
        assert!(authorize(&operator, Action::ReadCitizenStatus, Target::Nothing).is_ok());
        assert_eq!(
            authorize(&operator, Action::ReadLifeEvent, Target::Office(&office)),
            Err(Forbidden::Role)
        );
    }
}
