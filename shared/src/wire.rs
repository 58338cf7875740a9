//! The JSON of `POST /v1/samples` (SPEC section 9), written by the agent and read by the aggregator.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::sample::Rejection;

/// The most samples one request may carry.
pub const MAX_BATCH_SAMPLES: usize = 1_000;
/// The largest request body accepted, in bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The path agents push to.
pub const SAMPLES_PATH: &str = "/v1/samples";

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

/// The answer to `POST /v1/samples`, sent after the accepted samples are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub results: Vec<SampleResult>,
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
