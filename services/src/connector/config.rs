//! Which agencies are external systems and how to reach them: agency id -> URL, HMAC secret
//! (from an environment variable or a file, never from the configuration text itself and never
//! printed), timeout, attempts and back-off.
//!
//! ```toml
//! [connectors.police]
//! url = "https://police.example.vn/lifeline/applications"
//! secret_env = "LIFELINE_CONNECTOR_POLICE_SECRET"   # default: LIFELINE_CONNECTOR_<AGENCY>_SECRET
//! # secret_file = "/run/secrets/police-connector"   # instead of secret_env
//! timeout_ms = 10000                                  # default 10 s
//! max_attempts = 5                                    # default 5
//! backoff_base_ms = 500                               # default 0.5 s, doubled per attempt
//! backoff_max_ms = 60000                              # default 60 s
//! # allow_plain_http = true                           # see below
//! ```
//!
//! The URL is `https://`. Plain `http://` is taken only to a loopback host (a test's mock, a
//! sidecar on the same machine) or with `allow_plain_http = true`: the agency system's answer
//! to a delivery is applied as its decision (a completion, a rejection) without a signature of
//! its own, so over plain HTTP anyone on the path could decide the agency's tasks. (Until
//! 2026-12-07 any `http://` URL was taken.)

use std::collections::BTreeMap;
use std::time::Duration;

use lifeline_model::procedure::AgencyId;
use serde::Deserialize;

/// The shortest connector secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// A connector's HMAC secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectorSecret(Vec<u8>);

impl ConnectorSecret {
    /// A secret of at least [`MIN_SECRET_BYTES`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, ConnectorConfigError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(ConnectorConfigError::ShortSecret);
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ConnectorSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorSecret(..)")
    }
}

/// One agency's external system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyConnector {
    /// Where applications are POSTed.
    pub url: String,
    pub secret: ConnectorSecret,
    /// Per attempt, connection included.
    pub timeout: Duration,
    /// Attempts per delivery (the first included) before it is recorded as failed.
    pub max_attempts: u32,
    /// The wait before the second attempt; doubled for each further one, plus up to 50%
    /// jitter, capped at `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl AgencyConnector {
    /// A connector with the default timeout (10 s), attempts (5) and back-off (0.5 s .. 60 s).
    pub fn new(url: impl Into<String>, secret: ConnectorSecret) -> Self {
        Self {
            url: url.into(),
            secret,
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2_u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Every connector agency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorsConfig {
    pub agencies: BTreeMap<AgencyId, AgencyConnector>,
}

/// Why the connector configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorConfigError {
    #[error("the connector configuration is not valid TOML: {0}")]
    Toml(String),
    #[error("unknown agency {0:?} in [connectors]")]
    UnknownAgency(String),
    #[error("connector {agency}: {problem}")]
    Invalid { agency: String, problem: String },
    #[error("a connector secret must be at least 32 bytes")]
    ShortSecret,
}

/// `[connectors.<agency>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorEntry {
    pub url: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Takes a plain `http://` URL to a host that is not this machine (see the module).
    #[serde(default)]
    pub allow_plain_http: bool,
}

#[derive(Debug, Deserialize)]
struct ConnectorsFile {
    #[serde(default)]
    connectors: BTreeMap<String, ConnectorEntry>,
}

impl ConnectorsConfig {
    /// Reads the `[connectors.*]` tables of a TOML document (other tables are ignored),
    /// resolving each secret from its environment variable or file.
    pub fn from_toml(text: &str) -> Result<Self, ConnectorConfigError> {
        let file: ConnectorsFile =
            toml::from_str(text).map_err(|error| ConnectorConfigError::Toml(error.to_string()))?;
        Self::from_entries(file.connectors)
    }

    /// Resolves entries keyed by agency id.
    pub fn from_entries(
        entries: BTreeMap<String, ConnectorEntry>,
    ) -> Result<Self, ConnectorConfigError> {
        let mut agencies = BTreeMap::new();
        for (name, entry) in entries {
            let agency: AgencyId = name
                .parse()
                .map_err(|_| ConnectorConfigError::UnknownAgency(name.clone()))?;
            let invalid = |problem: &str| ConnectorConfigError::Invalid {
                agency: name.clone(),
                problem: problem.to_owned(),
            };
            let url = reqwest::Url::parse(&entry.url)
                .map_err(|error| invalid(&format!("url is not a URL: {error}")))?;
            match url.scheme() {
                "https" => {}
                "http" if entry.allow_plain_http || is_loopback(&url) => {}
                "http" => {
                    return Err(invalid(
                        "url must be https: the agency system's answers are applied as its \
                         decisions, and over plain http anyone on the way could forge them \
                         (plain http is taken to a loopback host, or with allow_plain_http = true)",
                    ))
                }
                _ => return Err(invalid("url must be https")),
            }
            let secret = match (&entry.secret_env, &entry.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give secret_env or secret_file, not both"))
                }
                (_, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|_| invalid("cannot read secret_file"))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
                (variable, None) => {
                    let variable = variable
                        .clone()
                        .unwrap_or_else(|| default_secret_env(agency));
                    std::env::var(&variable)
                        .map_err(|_| {
                            invalid(&format!("environment variable {variable} is not set"))
                        })?
                        .into_bytes()
                }
            };
            let secret = ConnectorSecret::new(secret)
                .map_err(|_| invalid("the secret must be at least 32 bytes"))?;
            let mut connector = AgencyConnector::new(entry.url, secret);
            if let Some(ms) = entry.timeout_ms {
                connector.timeout = Duration::from_millis(ms.max(1));
            }
            if let Some(attempts) = entry.max_attempts {
                if attempts == 0 {
                    return Err(invalid("max_attempts must be at least 1"));
                }
                connector.max_attempts = attempts;
            }
            if let Some(ms) = entry.backoff_base_ms {
                connector.backoff_base = Duration::from_millis(ms);
            }
            if let Some(ms) = entry.backoff_max_ms {
                connector.backoff_max = Duration::from_millis(ms);
            }
            agencies.insert(agency, connector);
        }
        Ok(Self { agencies })
    }

    pub fn get(&self, agency: AgencyId) -> Option<&AgencyConnector> {
        self.agencies.get(&agency)
    }
}

/// Whether `url` names this machine: `localhost` or a loopback address.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// `LIFELINE_CONNECTOR_<AGENCY>_SECRET`, e.g. `LIFELINE_CONNECTOR_SOCIAL_SECURITY_SECRET`.
pub fn default_secret_env(agency: AgencyId) -> String {
    format!(
        "LIFELINE_CONNECTOR_{}_SECRET",
        agency.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_resolve_secrets_and_defaults_and_hide_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let text = format!(
            "[http]\naddr = \"x\"\n[connectors.police]\nurl = \"https://police.example\"\nsecret_file = {:?}\nmax_attempts = 3\n",
            path.display().to_string()
        );
        let config = ConnectorsConfig::from_toml(&text).unwrap();
        let police = config.get(AgencyId::Police).unwrap();
        assert_eq!(police.max_attempts, 3);
        assert_eq!(police.timeout, Duration::from_secs(10));
        assert_eq!(police.secret.expose(), b"0123456789abcdef0123456789abcdef");
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
        assert_eq!(police.backoff(1), Duration::from_millis(500));
        assert_eq!(police.backoff(3), Duration::from_secs(2));
        assert_eq!(police.backoff(40), Duration::from_secs(60));
        assert!(ConnectorsConfig::from_toml("[connectors.nobody]\nurl = \"https://x\"\n").is_err());
    }

    /// A connector's URL is https, or plain http to this machine or when allowed by name.
    #[test]
    fn plain_http_is_taken_only_to_this_machine_or_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let config = |url: &str, allow: bool| {
            ConnectorsConfig::from_toml(&format!(
                "[connectors.police]\nurl = {url:?}\nsecret_file = {:?}\nallow_plain_http = {allow}\n",
                path.display().to_string()
            ))
        };
        for url in [
            "https://police.example.vn/applications",
            "http://127.0.0.1:8081/applications",
            "http://localhost/applications",
            "http://[::1]:9000/",
        ] {
            assert!(config(url, false).is_ok(), "{url}");
        }
        for url in [
            "http://police.example.vn/applications",
            "http://10.0.0.5/applications",
            "ftp://police.example.vn/",
            "police.example.vn",
        ] {
            let error = config(url, false).unwrap_err().to_string();
            assert!(error.contains("url"), "{url}: {error}");
        }
        assert!(config("http://police.example.vn/applications", true).is_ok());
        assert_eq!(
            default_secret_env(AgencyId::SocialSecurity),
            "LIFELINE_CONNECTOR_SOCIAL_SECURITY_SECRET"
        );
    }
}
