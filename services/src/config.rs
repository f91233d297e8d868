//! Typed configuration: defaults, then `lifeline.toml`, then `LIFELINE_*` environment variables.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::Deserialize;

/// Everything a `lifeline` process needs to know before it starts.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// `postgres://...` or `sqlite:...`; default: a SQLite file under `./lifeline-data`.
    pub database_url: String,
    /// Absent: the embedded bus (the store's own subscription feeds the policies).
    pub nats_url: Option<String>,
    pub http_addr: SocketAddr,
    /// Log lines as JSON (production) instead of human-readable text.
    pub log_json: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may carry a password: never print it.
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("http_addr", &self.http_addr)
            .field("log_json", &self.log_json)
            .finish()
    }
}

/// The file layer: every field optional, unknown keys refused so typos are caught.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    database_url: Option<String>,
    nats_url: Option<String>,
    http_addr: Option<String>,
    log_json: Option<bool>,
    /// The `[connectors.<agency>]` tables, read by `connector::ConnectorsConfig`; accepted here
    /// so that one file holds both.
    #[serde(default, rename = "connectors")]
    _connectors: Option<toml::Table>,
}

pub const DEFAULT_DATA_DIR: &str = "lifeline-data";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

impl Config {
    /// Loads the layers. `file` is `lifeline.toml` in the working directory unless given; a
    /// missing default file is fine, a missing named file is an error.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    fn load_from(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut config = Self::defaults();
        let (path, required) = match file {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from("lifeline.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let layer: FileLayer = toml::from_str(&text)
                    .with_context(|| format!("parsing configuration file {}", path.display()))?;
                config.apply(layer)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("reading configuration file {}", path.display()))
            }
        }
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let layer = FileLayer {
            database_url: lookup("LIFELINE_DATABASE_URL")
                .or_else(|| lookup("LIFELINE_DATABASE__URL")),
            nats_url: lookup("LIFELINE_NATS_URL"),
            http_addr: lookup("LIFELINE_HTTP_ADDR"),
            log_json: match lookup("LIFELINE_LOG_JSON") {
                Some(value) => Some(parse_bool("LIFELINE_LOG_JSON", &value)?),
                None => None,
            },
            _connectors: None,
        };
        config.apply(layer)?;
        Ok(config)
    }

    fn defaults() -> Self {
        Self {
            database_url: format!("sqlite:{DEFAULT_DATA_DIR}/lifeline.sqlite"),
            nats_url: None,
            http_addr: DEFAULT_HTTP_ADDR
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            log_json: false,
        }
    }

    fn apply(&mut self, layer: FileLayer) -> anyhow::Result<()> {
        if let Some(url) = layer.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                anyhow::bail!("database_url must start with postgres:// or sqlite:");
            }
            self.database_url = url;
        }
        if let Some(url) = layer.nats_url {
            // An empty value switches back to the embedded bus.
            self.nats_url = if url.trim().is_empty() {
                None
            } else {
                Some(url)
            };
        }
        if let Some(addr) = layer.http_addr {
            self.http_addr = addr.parse().with_context(|| {
                format!("http_addr {addr:?} is not an address like 127.0.0.1:8080")
            })?;
        }
        if let Some(json) = layer.log_json {
            self.log_json = json;
        }
        Ok(())
    }
}

fn parse_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => anyhow::bail!("{name} must be true or false, not {other:?}"),
    }
}

/// A URL fit for a log line: its secrets replaced by `***`. The password of its user
/// (`user:***@`); the whole user part of a NATS URL (`nats://***@host`: a NATS URL's user
/// part alone is a token); and every query parameter whose name holds `password`
/// (PostgreSQL's `?password=` and `sslpassword=`). A list of URLs (comma-separated, as NATS
/// takes them) is redacted one by one. A password with characters a URL must escape (`,`, `/`,
/// `?`, `#`, `@`) left unescaped is hidden too: the user part ends at the last `@` followed by
/// a host, and a list is split only before another `scheme://`. (Until 2026-12-07 only
/// `user:password@` was hidden: a NATS token and a PostgreSQL `?password=` were printed.)
pub fn redact_url(url: &str) -> String {
    split_url_list(url)
        .into_iter()
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// `url` split at each comma that another `scheme://` follows (a comma anywhere else belongs to
/// the URL: a password or a query value may hold one).
fn split_url_list(url: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        rest.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
    };
    let mut parts = Vec::new();
    let mut from = 0;
    for (at, _) in url.match_indices(',') {
        if at >= from && starts_url(&url[at + 1..]) {
            parts.push(&url[from..at]);
            from = at + 1;
        }
    }
    parts.push(&url[from..]);
    parts
}

fn redact_one_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user part ends at the last `@` that a host (and port) follows, up to the path, the
    // query or the end: a password holding an unescaped `/`, `?`, `#` or `@` is hidden whole.
    let host_end = |after: &str| after.find(['/', '?', '#']).unwrap_or(after.len());
    let is_host = |host: &str| {
        !host.is_empty()
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
            })
    };
    let user_end = rest.match_indices('@').map(|(at, _)| at).rfind(|at| {
        let after = &rest[at + 1..];
        is_host(&after[..host_end(after)])
    });
    let (authority, tail) = match user_end {
        Some(at) => {
            let after = &rest[at + 1..];
            let host = &after[..host_end(after)];
            let credentials = &rest[..at];
            let shown = match credentials.split_once(':') {
                Some((user, _password)) => format!("{user}:***@{host}"),
                None if scheme.eq_ignore_ascii_case("nats")
                    || scheme.eq_ignore_ascii_case("tls")
                    || scheme.eq_ignore_ascii_case("ws")
                    || scheme.eq_ignore_ascii_case("wss") =>
                {
                    format!("***@{host}")
                }
                None => format!("{credentials}@{host}"),
            };
            (shown, &after[host.len()..])
        }
        None => {
            let end = host_end(rest);
            (rest[..end].to_owned(), &rest[end..])
        }
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            match fragment {
                Some(fragment) => format!("{path}?{query}#{fragment}"),
                None => format!("{path}?{query}"),
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_their_secrets() {
        for (url, printed) in [
            (
                "postgres://lifeline:s3cret@db:5432/lifeline",
                "postgres://lifeline:***@db:5432/lifeline",
            ),
            (
                "postgres://lifeline@db/lifeline?password=s3cret&sslmode=require",
                "postgres://lifeline@db/lifeline?password=***&sslmode=require",
            ),
            (
                "postgresql://db/lifeline?user=a&sslpassword=k3y",
                "postgresql://db/lifeline?user=a&sslpassword=***",
            ),
            ("nats://t0ken@nats:4222", "nats://***@nats:4222"),
            ("nats://user:pw@nats:4222", "nats://user:***@nats:4222"),
            (
                "nats://t0ken@a:4222,nats://u:pw@b:4222,nats://c:4222",
                "nats://***@a:4222,nats://u:***@b:4222,nats://c:4222",
            ),
            (
                "postgres://a:p@ss@db/x?application_name=me",
                "postgres://a:***@db/x?application_name=me",
            ),
            // Characters a password should have escaped, left unescaped: hidden all the same.
            ("postgres://u:pa,ss@db/x", "postgres://u:***@db/x"),
            ("postgres://u:pa?ss@db/x", "postgres://u:***@db/x"),
            ("postgres://u:pa#ss@db:5432/x", "postgres://u:***@db:5432/x"),
            (
                "postgres://db/x?sslpassword=a,b&sslmode=require",
                "postgres://db/x?sslpassword=***&sslmode=require",
            ),
            ("postgres://u:pa/ss@db/x", "postgres://u:***@db/x"),
            ("postgres://db/lifeline", "postgres://db/lifeline"),
            (
                "sqlite:lifeline-data/lifeline.sqlite",
                "sqlite:lifeline-data/lifeline.sqlite",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ] {
            assert_eq!(redact_url(url), printed, "{url}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_store_and_no_nats() {
        let config = Config::load_from(Some(Path::new("/nonexistent/lifeline.toml")), &[]);
        assert!(config.is_err(), "a named file that is missing is an error");
        let dir = std::env::temp_dir().join(format!("lifeline-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty.toml");
        std::fs::write(&file, "").unwrap();
        let config = Config::load_from(Some(&file), &[]).unwrap();
        assert_eq!(config.database_url, "sqlite:lifeline-data/lifeline.sqlite");
        assert_eq!(config.nats_url, None);
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("lifeline-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lifeline.toml");
        std::fs::write(
            &file,
            "database_url = \"sqlite:/tmp/a.sqlite\"\nhttp_addr = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        let config = Config::load_from(
            Some(&file),
            &env(&[
                ("LIFELINE_DATABASE_URL", "postgres://u:secret@db/lifeline"),
                ("LIFELINE_NATS_URL", "nats://127.0.0.1:4222"),
            ]),
        )
        .unwrap();
        assert_eq!(config.database_url, "postgres://u:secret@db/lifeline");
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(config.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert!(
            !format!("{config:?}").contains("secret"),
            "the password is never printed"
        );
    }

    #[test]
    fn one_file_holds_the_settings_and_the_connectors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lifeline.toml");
        std::fs::write(
            &file,
            "http_addr = \"127.0.0.1:0\"\n[connectors.police]\nurl = \"https://police.example\"\n",
        )
        .unwrap();
        let config = Config::load_from(Some(&file), &[]).unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:0");
        std::fs::write(&file, "[conectors.police]\nurl = \"x\"\n").unwrap();
        assert!(
            Config::load_from(Some(&file), &[]).is_err(),
            "a misspelt table is still refused"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let error =
            Config::load_from(None, &env(&[("LIFELINE_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(error.to_string().contains("database_url"), "{error}");
        let error = Config::load_from(None, &env(&[("LIFELINE_LOG_JSON", "maybe")])).unwrap_err();
        assert!(error.to_string().contains("LIFELINE_LOG_JSON"), "{error}");
    }
}
