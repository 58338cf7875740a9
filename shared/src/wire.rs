//! The JSON of `POST /v1/samples` (SPEC section 9), written by the agent and read by the aggregator.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sample::{parse_cores, parse_instant, Rejection, Unchecked};

/// The most samples one request may carry.
pub const MAX_BATCH_SAMPLES: usize = 1_000;
/// The largest request body accepted, in bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The most a node's image list (or a batch of registry images) may weigh
/// (SPEC 10.2: 5,000 images).
pub const MAX_IMAGE_LIST_BYTES: usize = 4 << 20;
/// The path agents push to.
pub const SAMPLES_PATH: &str = "/v1/samples";
/// Where an agent sends its node's images (SPEC 10.5).
pub const IMAGES_PATH: &str = "/v1/images";
/// The longest `agent_version` kept, in characters; a longer one is cut.
pub const AGENT_VERSION_MAX_CHARS: usize = 64;

/// One node's core count at one instant, as an agent sends it. The account
/// and cluster are not here: the aggregator takes them from the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSample {
    pub node: String,
    pub cores: u32,
    pub at: DateTime<Utc>,
    /// The node's sample counter: it only grows, across restarts, so the
    /// aggregator can tell a resend (same seq) from a lost sample (a gap).
    pub seq: u64,
    pub agent_version: String,
}

/// The body of `POST /v1/samples`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleBatch {
    pub samples: Vec<AgentSample>,
}

/// What became of one sample of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleStatus {
    /// Stored now.
    Accepted,
    /// Stored before: the same node and seq.
    Duplicate,
    /// Not stored, for `reason`.
    Rejected,
}

impl SampleStatus {
    /// Whether the sample is stored at the aggregator.
    pub fn is_stored(self) -> bool {
        matches!(self, SampleStatus::Accepted | SampleStatus::Duplicate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The sample's position in the batch.
    pub index: usize,
    pub status: SampleStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Rejection>,
}

/// Whether an agent of `agent_version` can read `reason` in an answer.
/// Agents before 0.2.0 fail to decode an answer carrying a reason they do
/// not know (and then resend the batch for ever), so the aggregator leaves
/// such a reason out for them: the sample is still `rejected`, which every
/// agent drops. A version that does not parse is taken as old.
pub fn agent_reads(agent_version: Option<&str>, reason: Rejection) -> bool {
    let since = match reason {
        Rejection::ServiceStopped
        | Rejection::InvalidNode
        | Rejection::ConflictingResend
        | Rejection::Other => (0, 2),
        _ => return true,
    };
    let Some(v) = agent_version else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= since,
        _ => false,
    }
}

/// The answer to `POST /v1/samples`, sent after the accepted samples are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub results: Vec<SampleResult>,
}

/// One sample of a pushed batch as the aggregator read it, before the checks
/// of SPEC section 3: a field that is missing or of the wrong kind is `None`
/// (or an empty node), so [`crate::sample::validate`] names the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSample {
    pub node: String,
    /// The cores, if [`parse_cores`] found a whole number from 1 to 10,000.
    pub cores: Option<u32>,
    /// The instant, if it is a string [`parse_instant`] could read.
    pub at: Option<DateTime<Utc>>,
    /// `None` when the sample has no `seq` (or `null`).
    pub seq: Option<i64>,
    /// At most [`AGENT_VERSION_MAX_CHARS`] characters.
    pub agent_version: Option<String>,
}

impl DecodedSample {
    /// The sample as [`crate::sample::validate`] takes it, with the account and
    /// cluster the token gave it.
    pub fn unchecked<'a>(&'a self, account_known: bool, cluster: &'a str) -> Unchecked<'a> {
        Unchecked {
            account_known,
            cluster,
            node: &self.node,
            cores: self.cores,
            at: self.at,
        }
    }
}

/// Why a whole batch is refused; a single bad sample never refuses the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the body is {bytes} bytes, over 1 MiB; send fewer samples per request")]
    TooLarge { bytes: usize },
    #[error("{count} samples in one request; at most {MAX_BATCH_SAMPLES}")]
    TooManySamples { count: usize },
    #[error("expected {{\"samples\": [...]}}: {0}")]
    Malformed(String),
}

impl BatchError {
    /// The field of the body the error is about, if one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            BatchError::TooLarge { .. } => None,
            BatchError::TooManySamples { .. } | BatchError::Malformed(_) => Some("samples"),
        }
    }
}

/// Reads the body of `POST /v1/samples`: each sample is decoded on its own, so
/// a bad one is a rejection (`invalid_seq` here; the rest when validated) and
/// never stops the batch. Only a body that is too large, not `{"samples":
/// [...]}`, or holds more than [`MAX_BATCH_SAMPLES`] samples is refused whole.
/// Unknown fields are ignored (the wire format grows by adding). At most
/// [`MAX_BATCH_SAMPLES`] samples are ever held in memory: the rest of an
/// oversized array is only counted.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Result<DecodedSample, Rejection>>, BatchError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge { bytes: body.len() });
    }
    let Body { samples } =
        serde_json::from_slice(body).map_err(|e| BatchError::Malformed(e.to_string()))?;
    if samples.count > MAX_BATCH_SAMPLES {
        return Err(BatchError::TooManySamples {
            count: samples.count,
        });
    }
    Ok(samples.kept.iter().map(decode_sample).collect())
}

fn decode_sample(s: &Value) -> Result<DecodedSample, Rejection> {
    let seq = match s.get("seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or(Rejection::InvalidSeq)?,
        ),
    };
    Ok(DecodedSample {
        node: s
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        cores: s.get("cores").and_then(parse_cores),
        at: s.get("at").and_then(Value::as_str).and_then(parse_instant),
        seq,
        // Free text from the agent: kept only when printable (no control or
        // invisible characters), cut to 64 characters.
        agent_version: s
            .get("agent_version")
            .and_then(Value::as_str)
            .filter(|v| v.chars().all(crate::domain::is_printable))
            .map(|v| v.chars().take(AGENT_VERSION_MAX_CHARS).collect()),
    })
}

#[derive(Deserialize)]
struct Body {
    samples: BoundedSamples,
}

/// The samples array: the first [`MAX_BATCH_SAMPLES`] kept, the rest counted.
struct BoundedSamples {
    kept: Vec<Value>,
    count: usize,
}

impl<'de> Deserialize<'de> for BoundedSamples {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = BoundedSamples;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of samples")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedSamples, A::Error> {
                let mut kept = Vec::new();
                while kept.len() < MAX_BATCH_SAMPLES {
                    match seq.next_element::<Value>()? {
                        Some(v) => kept.push(v),
                        None => {
                            let count = kept.len();
                            return Ok(BoundedSamples { kept, count });
                        }
                    }
                }
                let mut count = kept.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(BoundedSamples { kept, count })
            }
        }
        d.deserialize_seq(Elements)
    }
}

/// The body of every HTTP error: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::parse_instant;

    #[test]
    fn an_agent_before_0_2_is_not_sent_a_reason_it_cannot_read() {
        let stopped = Rejection::ServiceStopped;
        assert!(!agent_reads(Some("0.1.0"), stopped));
        assert!(!agent_reads(None, stopped));
        assert!(!agent_reads(Some("demo-0.2.0"), stopped));
        assert!(agent_reads(Some("0.2.0"), stopped));
        assert!(agent_reads(Some("1.0.3"), stopped));
        assert!(agent_reads(Some("0.1.0"), Rejection::TooOld));
        let conflicting = Rejection::ConflictingResend;
        assert!(!agent_reads(Some("0.1.0"), conflicting));
        assert!(!agent_reads(None, conflicting));
        assert!(agent_reads(Some("0.2.0"), conflicting));
        assert_eq!(
            serde_json::to_value(conflicting).unwrap(),
            conflicting.as_str()
        );
    }

    #[test]
    fn a_batch_is_the_json_of_spec_section_9() {
        let batch = SampleBatch {
            samples: vec![AgentSample {
                node: "node-1".into(),
                cores: 64,
                at: "2026-11-24T10:03:00Z".parse().unwrap(),
                seq: 7,
                agent_version: "0.1.0".into(),
            }],
        };
        let json = serde_json::to_value(&batch).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"samples": [{"node": "node-1", "cores": 64, "at": "2026-11-24T10:03:00Z",
                                            "seq": 7, "agent_version": "0.1.0"}]})
        );
    }

    #[test]
    fn a_batch_decodes_sample_by_sample_and_only_its_shape_refuses_it_whole() {
        let decoded = decode_batch(
            br#"{"samples": [{"node": "n1", "cores": 8.0, "at": "2026-11-24T10:03:00+08:00", "seq": 7,
                              "agent_version": "0.1.0", "extra": true},
                             {"node": 5, "cores": "8"}, {"seq": -1}, {"seq": 9223372036854775808}, 3],
                "unknown": {}}"#,
        )
        .unwrap();
        assert_eq!(decoded.len(), 5);
        let first = decoded[0].as_ref().unwrap();
        assert_eq!((first.cores, first.seq), (Some(8), Some(7)));
        assert_eq!(first.at, parse_instant("2026-11-24T02:03:00Z"));
        let second = decoded[1].as_ref().unwrap();
        assert_eq!(
            (second.node.as_str(), second.cores, second.seq),
            ("", None, None)
        );
        assert_eq!(decoded[2], Err(Rejection::InvalidSeq));
        assert_eq!(decoded[3], Err(Rejection::InvalidSeq));
        assert!(
            decoded[4].is_ok(),
            "a sample that is no object is rejected when validated"
        );

        for (body, field) in [
            (&b"{}"[..], Some("samples")),
            (b"{\"samples\": {}}", Some("samples")),
            (b"[]", Some("samples")),
            (b"{\"samples\": [", Some("samples")),
            (b"\xff", Some("samples")),
        ] {
            let e = decode_batch(body).unwrap_err();
            assert!(matches!(e, BatchError::Malformed(_)), "{e}");
            assert_eq!(e.field(), field);
        }
        let many = format!("{{\"samples\": [{}0]}}", "0,".repeat(MAX_BATCH_SAMPLES));
        assert_eq!(
            decode_batch(many.as_bytes()),
            Err(BatchError::TooManySamples {
                count: MAX_BATCH_SAMPLES + 1
            })
        );
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert!(matches!(
            decode_batch(&huge),
            Err(BatchError::TooLarge { .. })
        ));
        let long = format!(
            "{{\"samples\": [{{\"agent_version\": \"{}\"}}]}}",
            "é".repeat(100)
        );
        let version = decode_batch(long.as_bytes()).unwrap()[0]
            .clone()
            .unwrap()
            .agent_version;
        assert_eq!(version.unwrap().chars().count(), AGENT_VERSION_MAX_CHARS);
        for unprintable in ["0.3.0\n", "0.3\u{0}", "\u{202E}0.3.0"] {
            let body = serde_json::json!({"samples": [{"agent_version": unprintable}]});
            let decoded = decode_batch(body.to_string().as_bytes()).unwrap();
            assert_eq!(
                decoded[0].as_ref().unwrap().agent_version,
                None,
                "{unprintable:?} is not kept"
            );
        }
    }

    #[test]
    fn a_response_carries_a_reason_only_for_rejections() {
        let r: IngestResponse = serde_json::from_str(
            r#"{"results": [{"index": 0, "status": "accepted"},
                            {"index": 1, "status": "rejected", "reason": "too_old"}]}"#,
        )
        .unwrap();
        assert_eq!(r.results[1].reason, Some(Rejection::TooOld));
        assert!(r.results[0].status.is_stored());
        assert!(!r.results[1].status.is_stored());
        let back = serde_json::to_string(&r.results[0]).unwrap();
        assert_eq!(back, r#"{"index":0,"status":"accepted"}"#);
    }
}
