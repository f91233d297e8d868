//! The node's and offices' Ed25519 keys on disk, and the keyring of public keys that verifies
//! seals and office signatures.
//!
//! Layout of the key directory (`LIFELINE_KEY_DIR`, default `./lifeline-data/keys`):
//! - `node.key`: the node's secret (hex, mode 0600), unless `LIFELINE_NODE_KEY_FILE` names
//!   another file; generated on first use.
//! - `office-<code>.key`: an office's secret, generated on first use (development).
//! - `keyring.json`: every public key ever used here, with its id and owner (`node`,
//!   `office:<code>`). Rotation (`lifeline keys generate`) writes a new `node.key`; the old
//!   public key stays in the keyring, so seals it signed still verify. Secrets are never printed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use lifeline_model::integrity::{office_owner, KeyPair, Keyring, NODE_OWNER};

use crate::config::DEFAULT_DATA_DIR;

/// The variable naming the key directory.
pub const KEY_DIR_VAR: &str = "LIFELINE_KEY_DIR";
/// The variable naming the node's secret key file.
pub const NODE_KEY_FILE_VAR: &str = "LIFELINE_NODE_KEY_FILE";

/// The variable naming the sealer's anchor file; empty: no anchor file.
pub const SEAL_ANCHOR_FILE_VAR: &str = "LIFELINE_SEAL_ANCHOR_FILE";

/// The key directory: `LIFELINE_KEY_DIR` or `./lifeline-data/keys`.
pub fn key_dir() -> PathBuf {
    std::env::var_os(KEY_DIR_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(DEFAULT_DATA_DIR).join("keys"))
}

fn node_key_file(dir: &Path) -> PathBuf {
    std::env::var_os(NODE_KEY_FILE_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("node.key"))
}

/// The keyring file of a key directory.
pub fn keyring_file(dir: &Path) -> PathBuf {
    dir.join("keyring.json")
}

/// Reads a keyring file; an absent file is an empty keyring.
pub fn load_keyring(path: &Path) -> anyhow::Result<Keyring> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("reading the keyring {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Keyring::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the keyring file whole (a temporary file renamed over it), so a reader never sees
/// a half-written keyring.
fn save_keyring(path: &Path, keyring: &Keyring) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(keyring)?;
    let temporary = temporary_path(path);
    fs::write(&temporary, text + "\n")
        .with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// A file name beside `path` no other writer uses.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    path.with_file_name(name)
}

/// Holds the key directory's lock file (`.lock`, an exclusive `flock`) while keys are
/// generated and the keyring updated: processes and threads sharing the directory take turns.
fn lock_key_dir(dir: &Path) -> anyhow::Result<fs::File> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn read_secret(path: &Path) -> anyhow::Result<Option<KeyPair>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .with_context(|| format!("{} is not a 32-byte hex secret key", path.display()))?;
    Ok(Some(KeyPair::from_secret(bytes)))
}

fn write_secret(path: &Path, key: &KeyPair) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // Written aside, then renamed over: a reader sees the old key or the new one, whole.
    let temporary = temporary_path(path);
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    writeln!(file, "{}", hex::encode(key.secret_bytes()))
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// Loads the key at `path`, generating it (and recording its public half in the keyring) on
/// first use.
fn load_or_generate(dir: &Path, path: &Path, owner: &str) -> anyhow::Result<KeyPair> {
    // Unlocked when dropped.
    let _lock = lock_key_dir(dir)?;
    let key = match read_secret(path)? {
        Some(key) => key,
        None => {
            let key = KeyPair::generate();
            write_secret(path, &key)?;
            tracing::info!(key_id = key.key_id(), owner, "generated a signing key");
            key
        }
    };
    let keyring_path = keyring_file(dir);
    let mut keyring = load_keyring(&keyring_path)?;
    if !keyring
        .keys
        .iter()
        .any(|entry| entry.key_id == key.key_id())
    {
        keyring.add(&key, owner, Some(Utc::now().to_rfc3339()));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        save_keyring(&keyring_path, &keyring)?;
    }
    Ok(key)
}

/// The node's key (seals), generated on first use.
pub fn node_key(dir: &Path) -> anyhow::Result<KeyPair> {
    load_or_generate(dir, &node_key_file(dir), NODE_OWNER)
}

/// An office's key (life-event signatures), generated on first use.
pub fn office_key(dir: &Path, office: &str) -> anyhow::Result<KeyPair> {
    // The code names a file: only office-code characters, never a path.
    if office.is_empty()
        || !office
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        anyhow::bail!("{office:?} is not an office code");
    }
    let file = dir.join(format!("office-{office}.key"));
    load_or_generate(dir, &file, &office_owner(office))
}

/// Office keys from a key directory, generated on first use, kept in memory once read.
#[derive(Debug)]
pub struct FileOfficeKeys {
    dir: PathBuf,
    loaded: std::sync::Mutex<std::collections::HashMap<String, KeyPair>>,
}

impl FileOfficeKeys {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            loaded: std::sync::Mutex::default(),
        }
    }
}

impl lifeline_store::cqrs::OfficeSigner for FileOfficeKeys {
    fn office_key(&self, office: &str) -> Result<KeyPair, String> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(key) = loaded.get(office) {
            return Ok(key.clone());
        }
        let key = office_key(&self.dir, office).map_err(|error| format!("{error:#}"))?;
        loaded.insert(office.to_owned(), key.clone());
        Ok(key)
    }
}

/// Rotates the node key: a new secret in the node key file, its public key added to the
/// keyring next to the old ones.
pub fn rotate_node_key(dir: &Path) -> anyhow::Result<KeyPair> {
    let _lock = lock_key_dir(dir)?;
    let key = KeyPair::generate();
    write_secret(&node_key_file(dir), &key)?;
    let keyring_path = keyring_file(dir);
    let mut keyring = load_keyring(&keyring_path)?;
    keyring.add(&key, NODE_OWNER, Some(Utc::now().to_rfc3339()));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    save_keyring(&keyring_path, &keyring)?;
    Ok(key)
}

/// How often `lifeline serve` (worker, all) seals the newly visible events.
pub const SEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The sealer's anchor file: `LIFELINE_SEAL_ANCHOR_FILE` (empty: none), else
/// `seal-anchors.jsonl` in the key directory.
pub fn seal_anchor_file() -> Option<PathBuf> {
    match std::env::var_os(SEAL_ANCHOR_FILE_VAR) {
        Some(value) if value.is_empty() => None,
        Some(value) => Some(PathBuf::from(value)),
        None => Some(key_dir().join("seal-anchors.jsonl")),
    }
}

/// How often at most the sealer writes the newest seal to its anchor file: the seals made in
/// the last minute are the ones a rewrite could remake unseen by the file.
pub const ANCHOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads anchors (seals kept outside the database) from `path`: one JSON seal per line (the
/// sealer's anchor file; blank lines skipped), or one JSON seal, or a JSON array of seals (as
/// `GET /v1/audit/seals/head` answers, saved by an auditor). An unreadable line is named,
/// except an unended last one (a write cut short by a crash or a full disk), which is left
/// out with a warning.
pub fn read_anchors(path: &Path) -> anyhow::Result<Vec<lifeline_model::integrity::Seal>> {
    use lifeline_model::integrity::Seal;
    use std::io::Read;
    let mut text = String::new();
    let mut file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // Not while a sealer appends (or cuts a line short off).
    lock_file(&file, true, path)?;
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<Seal>>(&text)
            .with_context(|| format!("{}: not a JSON array of seals", path.display()));
    }
    if let Ok(seal) = serde_json::from_str::<Seal>(&text) {
        return Ok(vec![seal]);
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut seals = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Seal>(line) {
            Ok(seal) => seals.push(seal),
            Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(file = %path.display(), line = index + 1,
                    "the anchor file's last line was cut short; left out");
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("{} line {}: not a JSON seal", path.display(), index + 1)
                })
            }
        }
    }
    Ok(seals)
}

/// How an anchor file of `length` bytes ends, from its first and last (at most
/// [`MAX_ANCHOR_LINE`]) bytes, `head` and `tail`.
#[derive(Debug, PartialEq, Eq)]
enum AnchorFileEnd {
    /// With a line end: append.
    Ended,
    /// With a whole seal missing only its line end (written by hand): end it, then append.
    SealUnended,
    /// With a write cut short by a crash or a full disk (never a whole anchor): keep the first
    /// `.0` bytes, then append.
    CutShort(u64),
}

/// [`AnchorFileEnd`] of a file of one JSON seal per line (the sealer's own), or why it is not
/// one (a saved seal or array, pretty or compact, or anything else): then it is not touched.
fn anchor_file_end(head: &[u8], tail: &[u8], length: u64) -> Result<AnchorFileEnd, String> {
    let is_seal =
        |bytes: &[u8]| serde_json::from_slice::<lifeline_model::integrity::Seal>(bytes).is_ok();
    let blank = |bytes: &[u8]| bytes.iter().all(u8::is_ascii_whitespace);
    let not_lines = "not an anchor file of one JSON seal per line (a saved seal or array?)";
    // The first line that is not blank, if it has its end, must be a seal.
    let mut offset = 0;
    for line in head.split(|byte| *byte == b'\n') {
        let ended = offset + line.len() < head.len();
        if !ended {
            if head.len() as u64 == length {
                break; // the last line: looked at below
            }
            return Err(format!(
                "a line longer than {MAX_ANCHOR_LINE} bytes: {not_lines}"
            ));
        }
        if !blank(line) {
            if !is_seal(line) {
                return Err(not_lines.to_owned());
            }
            break;
        }
        offset += line.len() + 1;
    }
    if tail.last() == Some(&b'\n') {
        return Ok(AnchorFileEnd::Ended);
    }
    let tail_start = length - tail.len() as u64;
    let line_start = match tail.iter().rposition(|byte| *byte == b'\n') {
        Some(end) => end + 1,
        None if tail_start == 0 => 0,
        None => {
            return Err(format!(
                "ends in a line longer than {MAX_ANCHOR_LINE} bytes: {not_lines}"
            ))
        }
    };
    let last = &tail[line_start..];
    if is_seal(last) {
        return Ok(AnchorFileEnd::SealUnended);
    }
    // A complete JSON document is no write cut short; a seal's line starts with `{`.
    if serde_json::from_slice::<serde_json::Value>(last).is_ok()
        || !String::from_utf8_lossy(last).trim_start().starts_with('{')
    {
        return Err(not_lines.to_owned());
    }
    Ok(AnchorFileEnd::CutShort(tail_start + line_start as u64))
}

/// Locks `file` (`shared` for a reader), waiting for the lock. A file system without locks is
/// used without, with a warning: one writer at a time is then up to the operator.
fn lock_file(file: &fs::File, shared: bool, path: &Path) -> anyhow::Result<()> {
    let locked = if shared {
        file.lock_shared()
    } else {
        file.lock()
    };
    match locked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(file = %path.display(), %error, "the file system does not lock files; used without a lock");
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("locking {}", path.display())),
    }
}

/// The bytes of `file` from `from` to `to`.
fn read_at(file: &mut fs::File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = vec![0_u8; usize::try_from(to - from).unwrap_or(0)];
    file.seek(SeekFrom::Start(from))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The longest line an anchor file is expected to hold (a seal is about 600 bytes).
const MAX_ANCHOR_LINE: u64 = 64 * 1024;

/// Appends `seal` to the anchor file at `path` (created if missing, with its directory) as one
/// JSON line, under the file's lock (sealers of several processes may share it), and syncs it
/// to disk (and a new file's directory) before answering. A last line left unended (a write
/// cut short by a crash or a full disk) is removed first.
pub fn append_anchor(path: &Path, seal: &lifeline_model::integrity::Seal) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let existed = path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    lock_file(&file, false, path)?;
    let length = file.metadata()?.len();
    let mut line = Vec::new();
    if length > 0 {
        let head = read_at(&mut file, 0, length.min(MAX_ANCHOR_LINE))
            .with_context(|| format!("reading {}", path.display()))?;
        // A file within one read's length is read once.
        let rest;
        let tail: &[u8] = if length <= MAX_ANCHOR_LINE {
            &head
        } else {
            rest = read_at(&mut file, length - MAX_ANCHOR_LINE, length)
                .with_context(|| format!("reading {}", path.display()))?;
            &rest
        };
        match anchor_file_end(&head, tail, length) {
            Ok(AnchorFileEnd::Ended) => {}
            Ok(AnchorFileEnd::SealUnended) => line.push(b'\n'),
            Ok(AnchorFileEnd::CutShort(kept)) => {
                tracing::warn!(file = %path.display(), cut = length - kept,
                    "the anchor file's last line was cut short; removed before appending");
                file.set_len(kept)
                    .with_context(|| format!("truncating {}", path.display()))?;
            }
            Err(problem) => anyhow::bail!("{}: {problem}; not appended to", path.display()),
        }
    }
    line.extend(serde_json::to_vec(seal)?);
    line.push(b'\n');
    file.write_all(&line)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    if !existed {
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// What the sealer has seen of the seal chain's head: a head that goes back (the newest seals
/// deleted) or changes at a number it saw (a seal rewritten) is tampering. Nothing inside the
/// database anchors the head, so a running process that watched it is one check: it then
/// stops sealing (which would sign the rewritten log) and reports it at every round.
///
/// With an anchor file ([`SealWatch::anchored`]) it also keeps the head outside the database:
/// the newest seal, at most once per [`ANCHOR_INTERVAL`], appended to the file, which
/// `lifeline verify --anchor FILE` compares with the log. A seal not yet written (the file
/// could not be written) is written at a later round.
#[derive(Debug, Default)]
pub struct SealWatch {
    head: Option<(i64, lifeline_model::integrity::Hash32)>,
    anchors: Option<AnchorFile>,
}

#[derive(Debug)]
struct AnchorFile {
    path: PathBuf,
    /// The newest seal made and not yet written to the file.
    pending: Option<lifeline_model::integrity::Seal>,
    last_written: Option<std::time::Instant>,
}

impl SealWatch {
    /// One round: checks the head against the one seen, then seals what is newly visible.
    /// A head gone back or changed is an error (nothing sealed); the newest seal made before,
    /// if not yet anchored, is written to the anchor file first: it is the one that shows it.
    pub async fn round(
        &mut self,
        store: &lifeline_store::EventStore,
        node_key: &lifeline_model::integrity::KeyPair,
    ) -> anyhow::Result<Vec<lifeline_model::integrity::Seal>> {
        let now = lifeline_store::integrity::last_seal(store)
            .await?
            .map(|seal| (seal.seq, seal.seal_hash));
        // A head moved on since: the seal seen must still be there, as it was (until
        // 2026-12-07 only a head at the very seal seen was compared, and seals rewritten and
        // sealed past within one round went unseen).
        let seen_now = match (self.head, now) {
            (Some((seq, _)), Some((now_seq, _))) if now_seq > seq => Some(
                lifeline_store::integrity::seal_at(store, seq)
                    .await?
                    .map(|seal| seal.seal_hash),
            ),
            _ => None,
        };
        if let Err(tampered) = self.check_head(now, seen_now) {
            if let Err(error) = self.flush_anchor() {
                tracing::error!(error = %format!("{error:#}"), "cannot anchor the last seal seen");
            }
            return Err(tampered);
        }
        self.head = now.or(self.head);
        let seals = lifeline_store::seal_all(store, node_key).await?;
        if let Some(last) = seals.last() {
            self.head = Some((last.seq, last.seal_hash));
        }
        let due = match &mut self.anchors {
            Some(anchors) => {
                if let Some(last) = seals.last() {
                    anchors.pending = Some(last.clone());
                }
                anchors
                    .last_written
                    .is_none_or(|written| written.elapsed() >= ANCHOR_INTERVAL)
            }
            None => false,
        };
        if due {
            self.flush_anchor()?;
        }
        Ok(seals)
    }

    /// The head as the log has it now (`now`) against the one seen; `seen_now`, when the head
    /// moved on, is the seal seen as the log has it now (`Some(None)`: gone).
    fn check_head(
        &self,
        now: Option<(i64, lifeline_model::integrity::Hash32)>,
        seen_now: Option<Option<lifeline_model::integrity::Hash32>>,
    ) -> anyhow::Result<()> {
        let Some((seq, hash)) = self.head else {
            return Ok(());
        };
        match now {
            None => anyhow::bail!(
                "the seal chain went back: seal {seq} was seen, now the log has no seal \
                 (seals deleted); not sealing"
            ),
            Some((now_seq, _)) if now_seq < seq => anyhow::bail!(
                "the seal chain went back: seal {seq} was seen, now the newest is \
                 {now_seq} (seals deleted); not sealing"
            ),
            Some((now_seq, now_hash)) if now_seq == seq && now_hash != hash => {
                anyhow::bail!("seal {seq} changed since it was seen; not sealing")
            }
            _ => match seen_now {
                Some(None) => anyhow::bail!(
                    "seal {seq} was seen and is gone, with newer seals after it (seals \
                     deleted and made again); not sealing"
                ),
                Some(Some(seen)) if seen != hash => anyhow::bail!(
                    "seal {seq} changed since it was seen, and newer seals follow it (seals \
                     rewritten); not sealing"
                ),
                _ => Ok(()),
            },
        }
    }

    /// Writes the newest seal not yet anchored to the anchor file now, whatever the interval
    /// (at shutdown, and when the head is seen tampered with). Kept for a later try if the
    /// file cannot be written.
    pub fn flush_anchor(&mut self) -> anyhow::Result<()> {
        let Some(anchors) = &mut self.anchors else {
            return Ok(());
        };
        let Some(seal) = &anchors.pending else {
            return Ok(());
        };
        append_anchor(&anchors.path, seal).with_context(|| {
            format!(
                "seal {} was made but could not be anchored; retrying at the next round",
                seal.seq
            )
        })?;
        anchors.pending = None;
        anchors.last_written = Some(std::time::Instant::now());
        Ok(())
    }

    /// A watch that also writes the newest seal to the anchor file at `path`.
    pub fn anchored(path: PathBuf) -> Self {
        Self {
            head: None,
            anchors: Some(AnchorFile {
                path,
                pending: None,
                last_written: None,
            }),
        }
    }
}

/// Seals the log every [`SEAL_INTERVAL`] with the node key until `shutdown` turns true,
/// watching the seal chain's head ([`SealWatch`]) and writing it to `anchor_file`, if given. A failed round is logged and retried at the
/// next tick; several processes may run it (a seal number is stored once).
pub async fn run_sealer(
    store: lifeline_store::EventStore,
    anchor_file: Option<PathBuf>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node_key = node_key(&key_dir()).context("loading the node key")?;
    tracing::info!(key_id = node_key.key_id(), anchor_file = ?anchor_file, "sealer running");
    let mut watch = match anchor_file {
        Some(path) => SealWatch::anchored(path),
        None => SealWatch::default(),
    };
    loop {
        match watch.round(&store, &node_key).await {
            Ok(seals) => {
                if let Some(last) = seals.last() {
                    tracing::info!(
                        seq = last.seq,
                        up_to = last.to.global_position,
                        "log sealed"
                    );
                }
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "sealing failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SEAL_INTERVAL) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => {
                // The newest seal made within the last interval is anchored before stopping.
                if let Err(error) = watch.flush_anchor() {
                    tracing::error!(error = %format!("{error:#}"), "cannot anchor the newest seal at shutdown");
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads (as many test apps or processes sharing a key directory) asking for one
    /// office's key at once: one key is generated, every caller gets it, and the keyring lists
    /// it once, next to every other office's.
    #[test]
    fn concurrent_first_uses_share_one_key_and_one_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let callers: Vec<_> = (0..16)
            .map(|index| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    let own = office_key(&dir, &format!("01-{index:05}")).unwrap();
                    let shared = office_key(&dir, "79-26734").unwrap();
                    (own.key_id().to_owned(), shared.key_id().to_owned())
                })
            })
            .collect();
        let ids: Vec<_> = callers
            .into_iter()
            .map(|caller| caller.join().unwrap())
            .collect();
        let shared = &ids[0].1;
        assert!(ids.iter().all(|(_, id)| id == shared), "{ids:?}");
        let keyring = load_keyring(&keyring_file(dir.path())).unwrap();
        assert_eq!(
            keyring.keys.len(),
            17,
            "16 offices of their own and the shared one"
        );
        for (own, _) in &ids {
            assert!(keyring.keys.iter().any(|entry| &entry.key_id == own));
        }
    }

    #[test]
    fn keys_are_generated_once_kept_secret_and_rotated_into_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), &dir.path().join("node.key"), NODE_OWNER).unwrap();
        let again = load_or_generate(dir.path(), &dir.path().join("node.key"), NODE_OWNER).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("node.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let office = office_key(dir.path(), "79-26734").unwrap();
        let keyring = load_keyring(&keyring_file(dir.path())).unwrap();
        assert_eq!(keyring.keys.len(), 2);
        assert!(keyring
            .keys
            .iter()
            .any(|entry| entry.key_id == office.key_id()));
        let text = fs::read_to_string(keyring_file(dir.path())).unwrap();
        assert!(!text.contains(&hex::encode(first.secret_bytes())));
    }
}

#[cfg(test)]
mod seal_watch_tests {
    use super::*;
    use lifeline_model::envelope::{EventMetadata, ExpectedVersion, NewEvent, StreamId};
    use lifeline_store::EventStore;
    use uuid::Uuid;

    async fn append_one(store: &EventStore) {
        let stream = StreamId::for_kind("test", Uuid::now_v7()).unwrap();
        let event = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Noted".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "n": 1 }),
            metadata: EventMetadata::system("test", Uuid::now_v7(), None, Utc::now()),
        };
        store
            .append(&stream, ExpectedVersion::NoStream, &[event])
            .await
            .unwrap();
    }

    /// The newest seal goes to the anchor file at once, then at most once per interval; a seal
    /// the file could not take is kept and written at a later round.
    #[tokio::test]
    async fn the_newest_seal_is_anchored_once_per_interval_and_kept_until_written() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("log.sqlite").display());
        let store = EventStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let key = KeyPair::generate();
        let file = dir.path().join("anchors").join("seal-anchors.jsonl");
        let mut watch = SealWatch::anchored(file.clone());
        let seqs = |path: &Path| -> Vec<i64> {
            read_anchors(path)
                .unwrap()
                .iter()
                .map(|seal| seal.seq)
                .collect()
        };
        let interval_passed = |watch: &mut SealWatch| {
            let anchors = watch.anchors.as_mut().unwrap();
            anchors.last_written = anchors
                .last_written
                .and_then(|written| written.checked_sub(ANCHOR_INTERVAL));
        };

        append_one(&store).await;
        let made = watch.round(&store, &key).await.unwrap();
        assert_eq!(
            read_anchors(&file).unwrap(),
            made,
            "the first seal, as made"
        );
        append_one(&store).await;
        assert_eq!(watch.round(&store, &key).await.unwrap().len(), 1);
        assert_eq!(seqs(&file), [1], "seal 2 waits for the interval");
        interval_passed(&mut watch);
        assert!(watch.round(&store, &key).await.unwrap().is_empty());
        assert_eq!(seqs(&file), [1, 2], "written once the interval passed");

        // A file that cannot be written (its directory is a file): the round fails after
        // sealing, and the seal is written once the file can take it.
        let blocked = dir.path().join("blocker");
        std::fs::write(&blocked, b"").unwrap();
        watch.anchors.as_mut().unwrap().path = blocked.join("seal-anchors.jsonl");
        append_one(&store).await;
        interval_passed(&mut watch);
        let error = watch.round(&store, &key).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("seal 3 was made but could not be anchored"),
            "{error:#}"
        );
        watch.anchors.as_mut().unwrap().path = file.clone();
        assert!(watch.round(&store, &key).await.unwrap().is_empty());
        assert_eq!(seqs(&file), [1, 2, 3]);

        // Seal 4 is made within the interval (not yet anchored), then deleted behind the
        // store's back: the round that sees the head go back anchors seal 4 before refusing.
        append_one(&store).await;
        assert_eq!(watch.round(&store, &key).await.unwrap().len(), 1);
        assert_eq!(seqs(&file), [1, 2, 3]);
        sqlx::raw_sql("DROP TRIGGER log_seals_no_delete; DELETE FROM log_seals WHERE seq = 4;")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        let error = watch.round(&store, &key).await.unwrap_err();
        assert!(format!("{error:#}").contains("went back"), "{error:#}");
        assert_eq!(
            seqs(&file),
            [1, 2, 3, 4],
            "the seal that shows it, anchored"
        );
    }

    /// A write cut short (a crash, a full disk) leaves an unended last line: a reader leaves it
    /// out, and the next append removes it, so the file stays readable line by line.
    #[test]
    fn a_line_cut_short_is_left_out_and_removed_by_the_next_append() {
        use lifeline_model::envelope::LogCursor;
        use lifeline_model::integrity::{Hash32, Seal};
        let key = KeyPair::generate();
        let first = Seal::sign(None, LogCursor::START, &[Hash32::ZERO], &key);
        let second = Seal::sign(Some(&first), LogCursor::START, &[Hash32::ZERO], &key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal-anchors.jsonl");
        let whole = serde_json::to_string(&second).unwrap();
        std::fs::write(
            &path,
            format!(
                "{}\n{}",
                serde_json::to_string(&first).unwrap(),
                &whole[..whole.len() / 2]
            ),
        )
        .unwrap();
        assert_eq!(read_anchors(&path).unwrap(), std::slice::from_ref(&first));
        append_anchor(&path, &second).unwrap();
        assert_eq!(
            read_anchors(&path).unwrap(),
            [first.clone(), second.clone()]
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n{whole}\n", serde_json::to_string(&first).unwrap())
        );
        // A file holding only a cut-short line.
        std::fs::write(&path, &whole[..10]).unwrap();
        assert!(read_anchors(&path).unwrap().is_empty());
        append_anchor(&path, &first).unwrap();
        assert_eq!(read_anchors(&path).unwrap(), std::slice::from_ref(&first));

        // A whole seal without its line end (written by hand) is kept.
        std::fs::write(&path, serde_json::to_string(&first).unwrap()).unwrap();
        append_anchor(&path, &second).unwrap();
        assert_eq!(
            read_anchors(&path).unwrap(),
            [first.clone(), second.clone()]
        );

        // A saved seal or array, pretty or compact, with or without a final line end, or
        // anything else: no anchor file of the sealer's: not appended to, not cut.
        let pretty = serde_json::to_string_pretty(&first).unwrap();
        let both = vec![first.clone(), second.clone()];
        let array = serde_json::to_string(&both).unwrap();
        for saved in [
            pretty.clone(),
            format!("{pretty}\n"),
            array.clone(),
            format!("{array}\n"),
            serde_json::to_string_pretty(&both).unwrap(),
            "{\"not\": \"a seal\"}".to_owned(),
            "some notes".to_owned(),
        ] {
            std::fs::write(&path, &saved).unwrap();
            let error = format!("{:#}", append_anchor(&path, &second).unwrap_err());
            assert!(
                error.contains("not an anchor file of one JSON seal per line"),
                "{saved}: {error}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), saved);
        }
    }

    /// Anchors are read as the sealer writes them (a JSON line each) and as an auditor saves
    /// them (one seal, pretty or not, or an array); a bad line is named.
    #[test]
    fn anchors_are_read_from_lines_a_seal_or_an_array() {
        use lifeline_model::envelope::LogCursor;
        use lifeline_model::integrity::{Hash32, Seal};
        let key = KeyPair::generate();
        let first = Seal::sign(None, LogCursor::START, &[Hash32::ZERO], &key);
        let second = Seal::sign(Some(&first), LogCursor::START, &[Hash32::ZERO], &key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors");
        let both = vec![first.clone(), second.clone()];
        for (text, expected) in [
            (
                format!(
                    "{}\n\n{}\n",
                    serde_json::to_string(&first).unwrap(),
                    serde_json::to_string(&second).unwrap()
                ),
                both.clone(),
            ),
            (
                serde_json::to_string_pretty(&second).unwrap(),
                vec![second.clone()],
            ),
            (serde_json::to_string_pretty(&both).unwrap(), both.clone()),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(read_anchors(&path).unwrap(), expected);
        }
        std::fs::write(
            &path,
            format!("{}\nnot a seal\n", serde_json::to_string(&first).unwrap()),
        )
        .unwrap();
        let error = format!("{:#}", read_anchors(&path).unwrap_err());
        assert!(error.contains("line 2: not a JSON seal"), "{error}");
    }

    /// The seal seen deleted and sealed again, and sealed past, between two rounds (another
    /// sealer, a fresh one, did it): the sealer that saw it finds it changed although the head
    /// moved on. (Until 2026-12-07 only a head at the very seal seen was compared.)
    #[tokio::test]
    async fn a_sealer_finds_the_seal_it_saw_rewritten_behind_newer_seals() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("log.sqlite").display());
        let store = EventStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let key = KeyPair::generate();
        let mut watch = SealWatch::default();
        append_one(&store).await;
        watch.round(&store, &key).await.unwrap();
        append_one(&store).await;
        assert_eq!(watch.round(&store, &key).await.unwrap()[0].seq, 2);

        sqlx::raw_sql("DROP TRIGGER log_seals_no_delete; DELETE FROM log_seals WHERE seq = 2;")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        // Sealed again by another key (a rewrite of the events would change it as well; the
        // same key over the same events makes the same seal, which is no change).
        let other_key = KeyPair::generate();
        let mut other = SealWatch::default();
        assert_eq!(other.round(&store, &other_key).await.unwrap()[0].seq, 2);
        append_one(&store).await;
        assert_eq!(other.round(&store, &other_key).await.unwrap()[0].seq, 3);

        let error = watch.round(&store, &key).await.unwrap_err();
        assert!(format!("{error:#}").contains("seal 2 changed"), "{error:#}");
    }

    /// The newest seal deleted behind the store's back (and a rewrite would follow): the
    /// sealer that saw it refuses to seal again and says why, at every round.
    #[tokio::test]
    async fn a_sealer_that_saw_a_seal_refuses_to_seal_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("log.sqlite").display());
        let store = EventStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let key = KeyPair::generate();
        let mut watch = SealWatch::default();
        append_one(&store).await;
        assert_eq!(watch.round(&store, &key).await.unwrap().len(), 1);
        append_one(&store).await;
        assert_eq!(watch.round(&store, &key).await.unwrap().len(), 1);
        // Nothing new: a round seals nothing and finds the head as it left it.
        assert!(watch.round(&store, &key).await.unwrap().is_empty());

        sqlx::raw_sql("DROP TRIGGER log_seals_no_delete; DELETE FROM log_seals WHERE seq = 2;")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        for _ in 0..2 {
            let error = watch.round(&store, &key).await.unwrap_err();
            assert!(format!("{error:#}").contains("went back"), "{error:#}");
        }
        assert_eq!(
            lifeline_store::integrity::last_seal(&store)
                .await
                .unwrap()
                .unwrap()
                .seq,
            1,
            "nothing sealed over the gap"
        );
        // A sealer that never saw seal 2 cannot tell (the limit ARCHITECTURE.md names).
        assert_eq!(
            SealWatch::default()
                .round(&store, &key)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
