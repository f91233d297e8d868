//! Tamper evidence, pure: the canonical hash of an event and its per-stream chain, the
//! RFC 6962 Merkle tree over event hashes in commit order, signed seals (checkpoints) of the
//! global log, inclusion proofs, office signatures, and the keyring that verifies them.
//!
//! No I/O here: the store computes and checks these values over its rows; `lifeline` loads keys
//! from files.
//!
//! Encodings (version 1, never changed in place: a change is a new domain tag):
//! - Canonical JSON: a `serde_json::Value` serialised compactly. serde_json's map is a
//!   `BTreeMap` (no crate in the workspace enables `preserve_order`), so keys come out sorted.
//!   PostgreSQL's `jsonb` reorders keys and drops whitespace but keeps strings and integers,
//!   so an integer-only payload reads back to the same canonical text. (Floats such as `1e20`
//!   can come back as other text: payloads carry integers only.)
//! - Fields are length-prefixed (u64 big-endian) after a domain tag, so no two field lists share
//!   an encoding.
//! - Event hash: SHA-256 over `lifeline/event/v1`, stream id, stream version (i64 BE), event id
//!   (16 bytes), event type, schema version (u32 BE), canonical payload, canonical metadata,
//!   and the hash of the stream's previous event (32 zero bytes for version 1).
//! - Merkle tree (RFC 6962 section 2.1): leaf = SHA-256(0x00 || event hash), node =
//!   SHA-256(0x01 || left || right), split at the largest power of two below the size.
//! - Seal hash: SHA-256 over `lifeline/seal/v1`, seq, from and to cursors, event count, Merkle
//!   root, previous seal hash (zeros for seal 1) and key id; the node key signs the 32 bytes.
//! - Office signature: Ed25519 over SHA-256 of `lifeline/office/v1`, stream id, event id, event
//!   type and canonical payload; it travels in the event's metadata, which the event hash covers.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::LogCursor;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The "previous hash" of a stream's first event and of the first seal.
    pub const ZERO: Hash32 = Hash32([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, IntegrityError> {
        let bytes = hex::decode(text).map_err(|_| IntegrityError::Encoding("hash hex"))?;
        Self::from_slice(&bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, IntegrityError> {
        <[u8; 32]>::try_from(bytes)
            .map(Hash32)
            .map_err(|_| IntegrityError::Encoding("hash length"))
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hash32::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a value could not be decoded, a signature not made or checked, a proof not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("malformed {0}")]
    Encoding(&'static str),
    #[error("unknown key {0}")]
    UnknownKey(String),
    #[error("key {key_id} belongs to {owner}, not {expected}")]
    WrongOwner {
        key_id: String,
        owner: String,
        expected: String,
    },
    #[error("bad signature by key {0}")]
    BadSignature(String),
    #[error("{0}")]
    Mismatch(String),
}

/// The event types an office signs: the life events.
pub const OFFICE_SIGNED_EVENT_TYPES: [&str; 4] = [
    "BirthRecorded",
    "DeathRecorded",
    "LifeEventCorrected",
    "LifeEventVoided",
];

/// Whether events of this type must carry their office's signature.
pub fn is_office_signed(event_type: &str) -> bool {
    OFFICE_SIGNED_EVENT_TYPES.contains(&event_type)
}

/// The canonical text of a JSON value: compact, keys sorted.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // A BTreeMap-backed Value always serialises; the fallback is never taken.
    serde_json::to_string(value).unwrap_or_default()
}

/// A SHA-256 over a domain tag and length-prefixed fields.
struct FieldHasher(Sha256);

impl FieldHasher {
    fn new(domain: &str) -> Self {
        let mut hasher = FieldHasher(Sha256::new());
        hasher.bytes(domain.as_bytes());
        hasher
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    fn i64(&mut self, value: i64) -> &mut Self {
        self.bytes(&value.to_be_bytes())
    }

    fn finish(self) -> Hash32 {
        Hash32(self.0.finalize().into())
    }
}

/// The fields of an event its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct EventHashInput<'a> {
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub payload: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
}

/// The hash of an event chained to the hash of its stream's previous event.
pub fn event_hash(input: &EventHashInput<'_>, prev_hash: &Hash32) -> Hash32 {
    event_hash_of_json(
        input,
        &canonical_json(input.payload),
        &canonical_json(input.metadata),
        prev_hash,
    )
}

/// [`event_hash`] for a writer that has already made `canonical_json(input.payload)` and
/// `canonical_json(input.metadata)` (to send those very texts to the database): the same hash,
/// without encoding them again.
pub fn event_hash_of_json(
    input: &EventHashInput<'_>,
    payload_json: &str,
    metadata_json: &str,
    prev_hash: &Hash32,
) -> Hash32 {
    debug_assert_eq!(payload_json, canonical_json(input.payload));
    debug_assert_eq!(metadata_json, canonical_json(input.metadata));
    let mut hasher = FieldHasher::new("lifeline/event/v1");
    hasher
        .bytes(input.stream_id.as_bytes())
        .i64(input.stream_version)
        .bytes(input.event_id.as_bytes())
        .bytes(input.event_type.as_bytes())
        .bytes(&input.schema_version.to_be_bytes())
        .bytes(payload_json.as_bytes())
        .bytes(metadata_json.as_bytes())
        .bytes(&prev_hash.0);
    hasher.finish()
}

/// RFC 6962 leaf hash of an event hash.
pub fn merkle_leaf(event_hash: &Hash32) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(event_hash.0);
    Hash32(hasher.finalize().into())
}

/// RFC 6962 interior node.
pub fn merkle_node(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left.0);
    hasher.update(right.0);
    Hash32(hasher.finalize().into())
}

/// The largest power of two strictly below `n` (n >= 2).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The Merkle tree hash of the event hashes, in order (SHA-256 of nothing for none).
pub fn merkle_root(event_hashes: &[Hash32]) -> Hash32 {
    let leaves: Vec<Hash32> = event_hashes.iter().map(merkle_leaf).collect();
    root_of_leaves(&leaves)
}

fn root_of_leaves(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => Hash32(Sha256::digest([]).into()),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            merkle_node(&root_of_leaves(&leaves[..k]), &root_of_leaves(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 6962 PATH(m, D[n])), from the leaf up.
pub fn audit_path(event_hashes: &[Hash32], index: usize) -> Vec<Hash32> {
    let leaves: Vec<Hash32> = event_hashes.iter().map(merkle_leaf).collect();
    let mut path = Vec::new();
    path_of(&leaves, index, &mut path);
    path
}

fn path_of(leaves: &[Hash32], index: usize, path: &mut Vec<Hash32>) {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return;
    }
    let k = split_point(n);
    if index < k {
        path_of(&leaves[..k], index, path);
        path.push(root_of_leaves(&leaves[k..]));
    } else {
        path_of(&leaves[k..], index - k, path);
        path.push(root_of_leaves(&leaves[..k]));
    }
}

/// The root that `leaf` at `index` of a tree of `size` leaves and `path` imply (RFC 9162
/// section 2.1.3.2); `None` if the path does not fit the index and size.
pub fn root_from_path(leaf: &Hash32, index: u64, size: u64, path: &[Hash32]) -> Option<Hash32> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = merkle_node(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = merkle_node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// A key id: the first 8 bytes of SHA-256 of the public key, in hex.
pub fn key_id(public_key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public_key.as_bytes())[..8])
}

/// A signing key with its id: the node's (seals) or an office's (life events).
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    key_id: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        Self::from_secret(SigningKey::generate(&mut rand_core::OsRng).to_bytes())
    }

    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let key_id = key_id(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// The 32 secret bytes, for writing the key file only.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Signs 32 bytes; the signature in hex.
    pub fn sign(&self, message: &Hash32) -> String {
        hex::encode(self.signing.sign(&message.0).to_bytes())
    }
}

/// One public key of the keyring and who holds it: `node` or `office:<code>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringEntry {
    pub key_id: String,
    /// The Ed25519 public key in hex.
    pub public_key: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The public keys that verify seals and office signatures, old ones included: a rotated key
/// keeps its entry so the seals and events it signed still verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub keys: Vec<KeyringEntry>,
}

/// The owner name of a node key.
pub const NODE_OWNER: &str = "node";

/// The owner name of an office's key.
pub fn office_owner(office: &str) -> String {
    format!("office:{office}")
}

impl Keyring {
    /// Adds the public half of `key` for `owner`, unless it is there already.
    pub fn add(&mut self, key: &KeyPair, owner: &str, created_at: Option<String>) {
        if self.keys.iter().any(|entry| entry.key_id == key.key_id()) {
            return;
        }
        self.keys.push(KeyringEntry {
            key_id: key.key_id().to_owned(),
            public_key: key.public_key_hex(),
            owner: owner.to_owned(),
            created_at,
        });
    }

    fn lookup(&self, key_id: &str) -> Result<(&KeyringEntry, VerifyingKey), IntegrityError> {
        let entry = self
            .keys
            .iter()
            .find(|entry| entry.key_id == key_id)
            .ok_or_else(|| IntegrityError::UnknownKey(key_id.to_owned()))?;
        let bytes = hex::decode(&entry.public_key)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or(IntegrityError::Encoding("public key"))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|_| IntegrityError::Encoding("public key"))?;
        if self::key_id(&key) != entry.key_id {
            return Err(IntegrityError::Mismatch(format!(
                "keyring entry {} does not match its public key",
                entry.key_id
            )));
        }
        Ok((entry, key))
    }

    /// Checks `signature` (hex) of `message` by key `key_id`, held by `owner`.
    pub fn verify(
        &self,
        owner: &str,
        key_id: &str,
        message: &Hash32,
        signature: &str,
    ) -> Result<(), IntegrityError> {
        let (entry, key) = self.lookup(key_id)?;
        if entry.owner != owner {
            return Err(IntegrityError::WrongOwner {
                key_id: key_id.to_owned(),
                owner: entry.owner.clone(),
                expected: owner.to_owned(),
            });
        }
        let bytes = hex::decode(signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or_else(|| IntegrityError::BadSignature(key_id.to_owned()))?;
        key.verify(&message.0, &Signature::from_bytes(&bytes))
            .map_err(|_| IntegrityError::BadSignature(key_id.to_owned()))
    }
}

/// What an office signs for a life event.
pub fn office_message(
    stream_id: &str,
    event_id: Uuid,
    event_type: &str,
    payload: &serde_json::Value,
) -> Hash32 {
    let mut hasher = FieldHasher::new("lifeline/office/v1");
    hasher
        .bytes(stream_id.as_bytes())
        .bytes(event_id.as_bytes())
        .bytes(event_type.as_bytes())
        .bytes(canonical_json(payload).as_bytes());
    hasher.finish()
}

/// A signed checkpoint of the global log: the events after `from` up to and including `to`, in
/// commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub seq: i64,
    /// Exclusive.
    pub from: LogCursor,
    /// Inclusive: the cursor of the range's last event.
    pub to: LogCursor,
    pub event_count: i64,
    pub merkle_root: Hash32,
    pub prev_seal_hash: Hash32,
    pub seal_hash: Hash32,
    pub key_id: String,
    /// Ed25519 over `seal_hash`, hex.
    pub signature: String,
}

/// The hash a seal's signature covers.
#[allow(clippy::too_many_arguments)]
pub fn seal_hash(
    seq: i64,
    from: LogCursor,
    to: LogCursor,
    event_count: i64,
    merkle_root: &Hash32,
    prev_seal_hash: &Hash32,
    key_id: &str,
) -> Hash32 {
    let mut hasher = FieldHasher::new("lifeline/seal/v1");
    hasher
        .i64(seq)
        .i64(from.transaction_id)
        .i64(from.global_position)
        .i64(to.transaction_id)
        .i64(to.global_position)
        .i64(event_count)
        .bytes(&merkle_root.0)
        .bytes(&prev_seal_hash.0)
        .bytes(key_id.as_bytes());
    hasher.finish()
}

impl Seal {
    /// Builds and signs the seal after `previous` over `event_hashes` (in commit order).
    pub fn sign(
        previous: Option<&Seal>,
        to: LogCursor,
        event_hashes: &[Hash32],
        node_key: &KeyPair,
    ) -> Seal {
        let seq = previous.map_or(1, |seal| seal.seq + 1);
        let from = previous.map_or(LogCursor::START, |seal| seal.to);
        let prev_seal_hash = previous.map_or(Hash32::ZERO, |seal| seal.seal_hash);
        let event_count = i64::try_from(event_hashes.len()).unwrap_or(i64::MAX);
        let merkle_root = merkle_root(event_hashes);
        let seal_hash = seal_hash(
            seq,
            from,
            to,
            event_count,
            &merkle_root,
            &prev_seal_hash,
            node_key.key_id(),
        );
        Seal {
            seq,
            from,
            to,
            event_count,
            merkle_root,
            prev_seal_hash,
            seal_hash,
            key_id: node_key.key_id().to_owned(),
            signature: node_key.sign(&seal_hash),
        }
    }

    /// Checks the seal's own hash and its signature (not its range: that needs the log).
    pub fn check_signature(&self, keyring: &Keyring) -> Result<(), IntegrityError> {
        let recomputed = seal_hash(
            self.seq,
            self.from,
            self.to,
            self.event_count,
            &self.merkle_root,
            &self.prev_seal_hash,
            &self.key_id,
        );
        if recomputed != self.seal_hash {
            return Err(IntegrityError::Mismatch(format!(
                "seal {} hash does not match its fields",
                self.seq
            )));
        }
        keyring.verify(NODE_OWNER, &self.key_id, &self.seal_hash, &self.signature)
    }
}

/// An event as an inclusion proof carries it: every field its hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenEvent {
    pub global_position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub prev_hash: Hash32,
}

impl ProvenEvent {
    pub fn hash(&self) -> Hash32 {
        event_hash(
            &EventHashInput {
                stream_id: &self.stream_id,
                stream_version: self.stream_version,
                event_id: self.event_id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                payload: &self.payload,
                metadata: &self.metadata,
            },
            &self.prev_hash,
        )
    }
}

/// That an event is in a sealed range of the log: checkable offline with the keyring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub event: ProvenEvent,
    /// The event's place among the seal's `event_count` leaves.
    pub leaf_index: u64,
    /// Sibling hashes from the leaf up.
    pub audit_path: Vec<Hash32>,
    pub seal: Seal,
}

impl InclusionProof {
    /// Recomputes the event hash, walks the audit path to the root, checks it is the seal's,
    /// then checks the seal's hash and signature.
    pub fn verify(&self, keyring: &Keyring) -> Result<(), IntegrityError> {
        let size = u64::try_from(self.seal.event_count)
            .map_err(|_| IntegrityError::Encoding("event count"))?;
        let leaf = merkle_leaf(&self.event.hash());
        let root = root_from_path(&leaf, self.leaf_index, size, &self.audit_path)
            .ok_or_else(|| IntegrityError::Mismatch("the audit path does not fit".to_owned()))?;
        if root != self.seal.merkle_root {
            return Err(IntegrityError::Mismatch(format!(
                "the event does not hash to seal {}'s Merkle root",
                self.seal.seq
            )));
        }
        self.seal.check_signature(keyring)
    }
}

/// The office's signature of a life event, as its metadata carries it.
pub fn sign_office_event(
    key: &KeyPair,
    stream_id: &str,
    event_id: Uuid,
    event_type: &str,
    payload: &serde_json::Value,
) -> (String, String) {
    let message = office_message(stream_id, event_id, event_type, payload);
    (key.key_id().to_owned(), key.sign(&message))
}

/// Keys by owner, for signers holding several office keys.
pub type KeysByOwner = BTreeMap<String, KeyPair>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hashes(n: usize) -> Vec<Hash32> {
        (0..n)
            .map(|i| Hash32(Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": [3, {"y": 1, "x": 2}], "m": "é"}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"m":"é","z":[3,{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn rfc6962_roots_of_small_trees() {
        let h = hashes(3);
        let (a, b, c) = (merkle_leaf(&h[0]), merkle_leaf(&h[1]), merkle_leaf(&h[2]));
        assert_eq!(merkle_root(&h[..1]), a);
        assert_eq!(merkle_root(&h[..2]), merkle_node(&a, &b));
        assert_eq!(merkle_root(&h), merkle_node(&merkle_node(&a, &b), &c));
    }

    #[test]
    fn every_audit_path_leads_to_the_root_and_only_for_its_leaf() {
        for n in 1..=33 {
            let h = hashes(n);
            let root = merkle_root(&h);
            for i in 0..n {
                let path = audit_path(&h, i);
                let leaf = merkle_leaf(&h[i]);
                assert_eq!(
                    root_from_path(&leaf, i as u64, n as u64, &path),
                    Some(root),
                    "n={n} i={i}"
                );
                if n > 1 {
                    let other = merkle_leaf(&h[(i + 1) % n]);
                    assert_ne!(
                        root_from_path(&other, i as u64, n as u64, &path),
                        Some(root)
                    );
                }
            }
        }
    }

    #[test]
    fn event_hashes_chain_and_cover_every_field() {
        let payload = json!({"child": {"name": "An"}});
        let metadata = json!({"actor": "u1"});
        let input = EventHashInput {
            stream_id: "birth-1",
            stream_version: 1,
            event_id: Uuid::nil(),
            event_type: "BirthRecorded",
            schema_version: 1,
            payload: &payload,
            metadata: &metadata,
        };
        let first = event_hash(&input, &Hash32::ZERO);
        assert_ne!(first, event_hash(&input, &first));
        let other_payload = json!({"child": {"name": "Binh"}});
        let changed = EventHashInput {
            payload: &other_payload,
            ..input
        };
        assert_ne!(first, event_hash(&changed, &Hash32::ZERO));
        let changed = EventHashInput {
            stream_version: 2,
            ..input
        };
        assert_ne!(first, event_hash(&changed, &Hash32::ZERO));
    }

    #[test]
    fn seals_and_proofs_verify_with_the_keyring_only() {
        let node = KeyPair::generate();
        let mut keyring = Keyring::default();
        keyring.add(&node, NODE_OWNER, None);
        let event = ProvenEvent {
            global_position: 2,
            stream_id: "birth-1".to_owned(),
            stream_version: 1,
            event_id: Uuid::nil(),
            event_type: "BirthRecorded".to_owned(),
            schema_version: 1,
            payload: json!({"n": 1}),
            metadata: json!({}),
            prev_hash: Hash32::ZERO,
        };
        let mut leaves = hashes(5);
        leaves[2] = event.hash();
        let to = LogCursor {
            transaction_id: 9,
            global_position: 5,
        };
        let seal = Seal::sign(None, to, &leaves, &node);
        seal.check_signature(&keyring).unwrap();
        let proof = InclusionProof {
            event: event.clone(),
            leaf_index: 2,
            audit_path: audit_path(&leaves, 2),
            seal: seal.clone(),
        };
        proof.verify(&keyring).unwrap();

        let mut tampered = proof.clone();
        tampered.event.payload = json!({"n": 2});
        assert!(tampered.verify(&keyring).is_err());
        let mut forged_seal = proof.clone();
        forged_seal.seal.signature = KeyPair::generate().sign(&seal.seal_hash);
        assert!(matches!(
            forged_seal.verify(&keyring),
            Err(IntegrityError::BadSignature(_))
        ));
        assert!(matches!(
            proof.verify(&Keyring::default()),
            Err(IntegrityError::UnknownKey(_))
        ));
        let next = Seal::sign(Some(&seal), to, &leaves[..1], &node);
        assert_eq!(next.prev_seal_hash, seal.seal_hash);
        assert_eq!(next.from, seal.to);
    }

    #[test]
    fn office_signatures_check_the_owner() {
        let office = KeyPair::generate();
        let mut keyring = Keyring::default();
        keyring.add(&office, &office_owner("79-26734"), None);
        let payload = json!({"a": 1});
        let (key_id, signature) =
            sign_office_event(&office, "birth-1", Uuid::nil(), "BirthRecorded", &payload);
        let message = office_message("birth-1", Uuid::nil(), "BirthRecorded", &payload);
        keyring
            .verify(&office_owner("79-26734"), &key_id, &message, &signature)
            .unwrap();
        assert!(matches!(
            keyring.verify(&office_owner("01-00001"), &key_id, &message, &signature),
            Err(IntegrityError::WrongOwner { .. })
        ));
    }
}
