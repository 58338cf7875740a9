//! Samples: what an agent reports, the checks a sample must pass, and why one is rejected.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{check_name, NameKind};

/// The fewest cores a node can have.
pub const CORES_MIN: u32 = 1;
/// The most cores one node can have.
pub const CORES_MAX: u32 = 10_000;

/// Why a sample was not taken. The order of the variants is the order in
/// which the checks apply: a sample gets the first reason that fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    UnknownAccount,
    InvalidCores,
    MissingIdentity,
    /// The node name is outside its domain (`domain::check_name`: ASCII
    /// letters, digits, `-`, `_`, `.`, at most 253 characters).
    InvalidNode,
    /// `at` is missing or not an RFC 3339 instant with an offset.
    InvalidAt,
    InFuture,
    TooOld,
    /// `seq` is present but not a whole number from 0 to 2^63 - 1 (checked when the batch is decoded, `wire::decode_batch`).
    InvalidSeq,
    /// The sample's hour falls while the account's service is stopped
    /// (SPEC section 8): checked last, by the aggregator's store.
    ServiceStopped,
    /// The (node, seq) is stored already with other cores or another `at`
    /// (to the millisecond): not a resend of what was stored, so neither a
    /// duplicate nor a second sample. The stored one stays; an agent or
    /// spool that hands a seq out twice is the usual cause. Checked by the
    /// store, after the sample passed every other check.
    ConflictingResend,
    /// A reason this build does not know (a newer aggregator's): the sample
    /// was still refused, and is dropped like any other rejection.
    #[serde(other)]
    Other,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownAccount => "unknown_account",
            Rejection::InvalidCores => "invalid_cores",
            Rejection::MissingIdentity => "missing_identity",
            Rejection::InvalidNode => "invalid_node",
            Rejection::InvalidAt => "invalid_at",
            Rejection::InFuture => "in_future",
            Rejection::TooOld => "too_old",
            Rejection::InvalidSeq => "invalid_seq",
            Rejection::ServiceStopped => "service_stopped",
            Rejection::ConflictingResend => "conflicting_resend",
            Rejection::Other => "other",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far from its receipt a sample's `at` may lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeLimits {
    /// The newest `at` accepted, past the moment of receipt (default 5 minutes).
    pub max_future: TimeDelta,
    /// The oldest `at` accepted, before the moment of receipt (default 14 days).
    pub max_age: TimeDelta,
}

impl Default for AgeLimits {
    fn default() -> Self {
        AgeLimits {
            max_future: TimeDelta::minutes(5),
            max_age: TimeDelta::hours(336),
        }
    }
}

/// A sample as it arrived, before any check: every field may be missing or wrong.
#[derive(Debug, Clone, Copy)]
pub struct Unchecked<'a> {
    /// Whether the account the sample belongs to exists.
    pub account_known: bool,
    pub cluster: &'a str,
    pub node: &'a str,
    /// The cores, if [`parse_cores`] found a whole number from 1 to 10,000.
    pub cores: Option<u32>,
    /// The instant, if [`parse_instant`] could read one.
    pub at: Option<DateTime<Utc>>,
}

/// A sample that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub cores: u32,
    pub at: DateTime<Utc>,
}

/// Checks a sample received at `received_at`, in the order of SPEC section 3.
pub fn validate(
    s: &Unchecked<'_>,
    received_at: DateTime<Utc>,
    limits: &AgeLimits,
) -> Result<Checked, Rejection> {
    if !s.account_known {
        return Err(Rejection::UnknownAccount);
    }
    let cores = s.cores.ok_or(Rejection::InvalidCores)?;
    if s.cluster.trim().is_empty() || s.node.trim().is_empty() {
        return Err(Rejection::MissingIdentity);
    }
    if check_name(NameKind::NodeName, s.node).is_err() {
        return Err(Rejection::InvalidNode);
    }
    let at = s.at.ok_or(Rejection::InvalidAt)?;
    // Limits past the representable range simply never bind.
    if received_at
        .checked_add_signed(limits.max_future)
        .is_some_and(|newest| at > newest)
    {
        return Err(Rejection::InFuture);
    }
    if received_at
        .checked_sub_signed(limits.max_age)
        .is_some_and(|oldest| at < oldest)
    {
        return Err(Rejection::TooOld);
    }
    Ok(Checked { cores, at })
}

/// A whole number of cores from 1 to 10,000. A JSON number written with a
/// fraction of zero (`8.0`) is the whole number it names.
pub fn parse_cores(v: &Value) -> Option<u32> {
    let n = v.as_number()?;
    let whole = if let Some(u) = n.as_u64() {
        u
    } else if let Some(f) = n.as_f64() {
        if f.fract() != 0.0 || !(0.0..=f64::from(CORES_MAX)).contains(&f) {
            return None;
        }
        // A whole float within range converts exactly.
        f as u64
    } else {
        return None;
    };
    u32::try_from(whole)
        .ok()
        .filter(|c| (CORES_MIN..=CORES_MAX).contains(c))
}

/// An RFC 3339 instant with an explicit offset or `Z`.
pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn received() -> DateTime<Utc> {
        parse_instant("2026-11-24T12:00:00Z").unwrap()
    }

    fn check(
        account_known: bool,
        cluster: &str,
        node: &str,
        cores: Value,
        at: &str,
    ) -> Result<Checked, Rejection> {
        let s = Unchecked {
            account_known,
            cluster,
            node,
            cores: parse_cores(&cores),
            at: parse_instant(at),
        };
        validate(&s, received(), &AgeLimits::default())
    }

    #[test]
    fn a_good_sample_passes_with_its_cores_and_instant() {
        let ok = check(true, "prod", "n1", json!(64), "2026-11-24T19:30:00+08:00").unwrap();
        assert_eq!(ok.cores, 64);
        assert_eq!(ok.at, parse_instant("2026-11-24T11:30:00Z").unwrap());
    }

    #[test]
    fn cores_must_be_a_whole_number_from_1_to_10000() {
        for bad in [
            json!(0),
            json!(10_001),
            json!(8.5),
            json!(-4),
            json!("8"),
            json!(null),
            json!(1e20),
        ] {
            assert_eq!(
                check(true, "c", "n", bad.clone(), "2026-11-24T12:00:00Z"),
                Err(Rejection::InvalidCores),
                "{bad}"
            );
        }
        for good in [json!(1), json!(10_000), json!(8.0)] {
            assert!(
                check(true, "c", "n", good.clone(), "2026-11-24T12:00:00Z").is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn the_first_failing_check_names_the_reason() {
        let at = "2026-11-24T12:00:00Z";
        assert_eq!(
            check(false, "", "", json!(0), at),
            Err(Rejection::UnknownAccount)
        );
        assert_eq!(
            check(true, "", "", json!(0), at),
            Err(Rejection::InvalidCores)
        );
        assert_eq!(
            check(true, "c", " ", json!(1), at),
            Err(Rejection::MissingIdentity)
        );
        assert_eq!(
            check(true, "", "n", json!(1), at),
            Err(Rejection::MissingIdentity)
        );
        assert_eq!(
            check(true, "c", "n", json!(1), "yesterday"),
            Err(Rejection::InvalidAt)
        );
        assert_eq!(
            check(true, "c", "n", json!(1), "2026-11-24T12:00:00"),
            Err(Rejection::InvalidAt)
        );
    }

    #[test]
    fn a_node_name_outside_its_domain_is_refused_after_a_missing_one() {
        let at = "2026-11-24T12:00:00Z";
        let huge = "n".repeat(900_000);
        for bad in [
            "node 1",
            "node\u{7}",
            "\u{200B}",
            "nоde", // Cyrillic о
            ".",
            "-node",
            huge.as_str(),
        ] {
            assert_eq!(
                check(true, "c", bad, json!(1), at),
                Err(Rejection::InvalidNode),
                "{bad:?}"
            );
        }
        assert_eq!(
            check(true, "c", "ip-10-0-0-1.ec2.internal", json!(1), at).map(|c| c.cores),
            Ok(1)
        );
        assert_eq!(
            check(true, "c", "bad node", json!(1), "yesterday"),
            Err(Rejection::InvalidNode),
            "the node is checked before the instant"
        );
    }

    #[test]
    fn at_may_lead_receipt_by_five_minutes_and_trail_it_by_fourteen_days() {
        assert!(check(true, "c", "n", json!(1), "2026-11-24T12:05:00Z").is_ok());
        assert_eq!(
            check(true, "c", "n", json!(1), "2026-11-24T12:05:01Z"),
            Err(Rejection::InFuture)
        );
        assert!(check(true, "c", "n", json!(1), "2026-11-10T12:00:00Z").is_ok());
        assert_eq!(
            check(true, "c", "n", json!(1), "2026-11-10T11:59:59Z"),
            Err(Rejection::TooOld)
        );
    }
}
