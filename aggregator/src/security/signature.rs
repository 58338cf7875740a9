//! Webhook signatures: every request to a webhook carries `Core-Meter-Signature: t=<unix seconds>,v1=<hex>`, an HMAC-SHA256 of `"{t}.{body}"` under the webhook's secret; `verify` is what a receiver (and our tests) runs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};

use super::{hex, unhex};
use crate::config::Secret;
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "Core-Meter-Signature";

/// How far a signature's timestamp may be from the receiver's clock by
/// default: long enough for a slow delivery and some clock skew, short
/// enough that a captured request soon stops working.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &Secret, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `at`: `t=<unix seconds>,v1=<lowercase hex>`.
pub fn sign(secret: &Secret, at: DateTime<Utc>, body: &[u8]) -> String {
    let t = at.timestamp();
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex(&tag))
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no {HEADER} header")]
    Missing,
    #[error("the {HEADER} header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature's timestamp {timestamp} is {off_secs} s from now ({now}), more than the {tolerance_secs} s allowed")]
    Stale {
        timestamp: i64,
        now: i64,
        off_secs: u64,
        tolerance_secs: u64,
    },
    #[error("the signature does not match the body (a changed body or another secret)")]
    Mismatch,
}

/// Checks `header` (the `Core-Meter-Signature` value, `None` if absent)
/// against `body` as received, byte for byte: the HMAC in constant time
/// (any of several `v1=` matches, so a sender may sign with two secrets
/// while they are rotated), then the timestamp within `tolerance` of `now`
/// either way. Keys other than `t` and `v1` are ignored for later versions.
pub fn verify(
    secret: &Secret,
    header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::Missing)?;
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(VerifyError::Malformed("each part must be key=value"))?;
        match key {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| VerifyError::Malformed("t is not whole seconds"))?;
                if timestamp.replace(t).is_some() {
                    return Err(VerifyError::Malformed("t is given twice"));
                }
            }
            "v1" => tags
                .push(unhex(value, 32).ok_or(VerifyError::Malformed("v1 is not 64 hex digits"))?),
            _ => {}
        }
    }
    let t = timestamp.ok_or(VerifyError::Malformed("no t="))?;
    if tags.is_empty() {
        return Err(VerifyError::Malformed("no v1="));
    }
    let mac = mac(secret, t, body);
    if !tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
        return Err(VerifyError::Mismatch);
    }
    let off_secs = now.timestamp().abs_diff(t);
    if off_secs > tolerance.as_secs() {
        return Err(VerifyError::Stale {
            timestamp: t,
            now: now.timestamp(),
            off_secs,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    const SECRET: &[u8] = b"core-meter-test-secret-32-bytes-long!";
    const BODY: &[u8] = br#"{"amount":"12.50","key":"acme/2026-01-01/1"}"#;

    #[test]
    fn the_mac_is_hmac_sha256_as_rfc_4231_gives_it() {
        // RFC 4231 test case 2, through the same HMAC the signature uses.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signature_is_the_hmac_of_the_timestamp_a_dot_and_the_body() {
        // Computed independently, once, with Python's standard library:
        // hmac.new(SECRET, b"1767225600." + BODY, hashlib.sha256).hexdigest()
        assert_eq!(
            sign(&Secret::new(SECRET), at(1_767_225_600), BODY),
            "t=1767225600,v1=8d679d88ccb232fd023388ec8842713e8ca22d417939fc884baaea7ef77845e6"
        );
    }

    #[test]
    fn a_signature_verifies_within_the_tolerance_either_way_and_not_beyond() {
        let secret = Secret::new(SECRET);
        let header = sign(&secret, at(1_000_000), BODY);
        for now in [1_000_000, 1_000_300, 999_700] {
            assert_eq!(
                verify(&secret, Some(&header), BODY, at(now), DEFAULT_TOLERANCE),
                Ok(())
            );
        }
        for now in [1_000_301, 999_699] {
            assert!(matches!(
                verify(&secret, Some(&header), BODY, at(now), DEFAULT_TOLERANCE),
                Err(VerifyError::Stale { off_secs: 301, .. })
            ));
        }
    }

    #[test]
    fn a_changed_body_another_secret_or_a_changed_timestamp_do_not_verify() {
        let secret = Secret::new(SECRET);
        let now = at(1_767_225_600);
        let header = sign(&secret, now, BODY);
        let tampered = br#"{"amount":"92.50","key":"acme/2026-01-01/1"}"#;
        let check = |secret: &Secret, header: &str, body: &[u8]| {
            verify(secret, Some(header), body, now, DEFAULT_TOLERANCE)
        };
        assert_eq!(
            check(&secret, &header, tampered),
            Err(VerifyError::Mismatch)
        );
        let other = Secret::new(b"another-secret-of-at-least-32-bytes!!");
        assert_eq!(check(&other, &header, BODY), Err(VerifyError::Mismatch));
        let moved = header.replace("t=1767225600", "t=1767225601");
        assert_eq!(check(&secret, &moved, BODY), Err(VerifyError::Mismatch));
        // Rotation: a second v1 under the new secret verifies with either.
        let other_header = sign(&other, now, BODY);
        let (_, second) = other_header.split_once(',').unwrap();
        let both = format!("{header},{second}");
        assert_eq!(check(&secret, &both, BODY), Ok(()));
        assert_eq!(check(&other, &both, BODY), Ok(()));
    }

    #[test]
    fn a_missing_or_malformed_header_says_what_is_wrong() {
        let secret = Secret::new(SECRET);
        let now = at(1_767_225_600);
        let v1 = "v1=8d679d88ccb232fd023388ec8842713e8ca22d417939fc884baaea7ef77845e6";
        assert_eq!(
            verify(&secret, None, BODY, now, DEFAULT_TOLERANCE),
            Err(VerifyError::Missing)
        );
        for (header, says) in [
            ("", "key=value"),
            (v1, "no t="),
            ("t=1767225600", "no v1="),
            (&format!("t=soon,{v1}") as &str, "whole seconds"),
            ("t=1767225600,v1=8d67", "64 hex digits"),
            (&format!("t=1,t=2,{v1}"), "twice"),
        ] {
            let err = verify(&secret, Some(header), BODY, now, DEFAULT_TOLERANCE).unwrap_err();
            assert!(
                matches!(err, VerifyError::Malformed(_)),
                "{header:?}: {err}"
            );
            assert!(err.to_string().contains(says), "{header:?}: {err}");
        }
        assert_eq!(
            verify(
                &secret,
                Some(&format!(" t=1767225600 , {v1} ,x=later")),
                BODY,
                now,
                DEFAULT_TOLERANCE
            ),
            Ok(()),
            "spaces and unknown keys are allowed"
        );
    }

    #[test]
    fn a_secret_never_shows_itself_in_debug_output() {
        let shown = format!("{:?}", Secret::new(SECRET));
        assert_eq!(shown, "Secret(redacted)");
    }
}
