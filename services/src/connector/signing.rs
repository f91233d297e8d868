//! The signature of connector messages, both ways: `X-Lifeline-Timestamp: <unix seconds>` and
//! `X-Lifeline-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">`, keyed with the
//! agency's secret. Verification compares in constant time and refuses stale timestamps.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the signing time, in seconds since the epoch.
pub const TIMESTAMP_HEADER: &str = "x-lifeline-timestamp";
/// The header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-lifeline-signature";
/// How far a callback's timestamp may be from now, either way.
pub const MAX_SKEW_SECONDS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac_over(secret, timestamp, body).finalize().into_bytes();
    format!("sha256={}", hex::encode(digest))
}

fn mac_over(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp header is missing or not a number")]
    BadTimestamp,
    #[error("the timestamp is more than five minutes away from now")]
    Stale,
    #[error("the signature header is missing or malformed")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks `signature` (`sha256=<hex>`) over `timestamp` and `body` with `secret`, refusing
/// timestamps more than [`MAX_SKEW_SECONDS`] from `now`. The comparison is constant-time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp
        .map(str::trim)
        .and_then(|raw| raw.parse().ok())
        .ok_or(SignatureError::BadTimestamp)?;
    // `abs_diff`: the header is the caller's, unauthenticated yet, and any i64 (a subtraction
    // overflowed on `i64::MIN`, a panic in debug builds, and wrapped past the check in release).
    if now.timestamp().abs_diff(timestamp) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let given = signature
        .map(str::trim)
        .and_then(|raw| raw.strip_prefix("sha256="))
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .ok_or(SignatureError::Malformed)?;
    mac_over(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_at_the_ends_of_the_range_are_stale_not_a_panic() {
        let now = Utc::now();
        for ts in [i64::MIN, i64::MIN + now.timestamp(), i64::MAX, -1] {
            let text = ts.to_string();
            let signature = sign(b"secret", ts, b"x");
            assert_eq!(
                verify(b"secret", Some(&text), Some(&signature), b"x", now),
                Err(SignatureError::Stale),
                "{ts}"
            );
        }
    }

    #[test]
    fn signatures_verify_and_refuse_tampering_and_staleness() {
        let now = Utc::now();
        let ts = now.timestamp();
        let signature = sign(b"secret", ts, b"{\"a\":1}");
        assert!(signature.starts_with("sha256="));
        assert_eq!(signature.len(), 7 + 64);
        let ts_text = ts.to_string();
        assert_eq!(
            verify(
                b"secret",
                Some(&ts_text),
                Some(&signature),
                b"{\"a\":1}",
                now
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                b"secret",
                Some(&ts_text),
                Some(&signature),
                b"{\"a\":2}",
                now
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"other",
                Some(&ts_text),
                Some(&signature),
                b"{\"a\":1}",
                now
            ),
            Err(SignatureError::Mismatch)
        );
        let old = (ts - 301).to_string();
        let old_signature = sign(b"secret", ts - 301, b"x");
        assert_eq!(
            verify(b"secret", Some(&old), Some(&old_signature), b"x", now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"secret", None, Some(&signature), b"x", now),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(b"secret", Some(&ts_text), Some("md5=00"), b"x", now),
            Err(SignatureError::Malformed)
        );
    }
}
