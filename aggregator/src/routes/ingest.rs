//! `POST /v1/samples`: an agent's batch, authenticated by its cluster token; answered once the accepted samples are committed.

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use shared::sample::{parse_cores, parse_instant, Rejection};
use shared::wire::{IngestResponse, SampleResult, SampleStatus, MAX_BATCH_SAMPLES};

use super::{blocking, ApiError, State};
use crate::auth::bearer;
use crate::ingest_writer::{OwnedSample, SubmitError};
use crate::service_metrics::SampleLabels;
use crate::store::Outcome;

/// The longest `agent_version` kept.
const AGENT_VERSION_MAX: usize = 64;

#[derive(Deserialize)]
struct Body {
    samples: Vec<Value>,
}

pub async fn push_samples(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<IngestResponse>, ApiError> {
    let token = bearer(headers.get("authorization").and_then(|v| v.to_str().ok()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a cluster token is required (Authorization: Bearer …)",
            )
        })?
        .to_string();
    let identity = blocking(&state.reader, move |s| s.cluster_for_token(&token))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked cluster token",
            )
        })?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is over 1 MiB; send fewer samples per request",
            )
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })?;
    let Body { samples } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("samples", format!("expected {{\"samples\": [...]}}: {e}"))
    })?;
    if samples.len() > MAX_BATCH_SAMPLES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_samples",
            format!(
                "{} samples in one request; at most {MAX_BATCH_SAMPLES}",
                samples.len()
            ),
        )
        .field("samples"));
    }

    // A seq that is present but not a whole number is this endpoint's own
    // check; everything else is the store's validation (SPEC section 3).
    let mut outcomes: Vec<Option<Outcome>> = vec![None; samples.len()];
    let mut owned = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let seq = match s.get("seq") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|n| i64::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    outcomes[i] = Some(Outcome::Rejected(Rejection::InvalidSeq));
                    continue;
                }
            },
        };
        owned.push(OwnedSample {
            node: s
                .get("node")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            cores: s.get("cores").and_then(parse_cores),
            at: s.get("at").and_then(Value::as_str).and_then(parse_instant),
            seq,
            agent_version: s
                .get("agent_version")
                .and_then(Value::as_str)
                .map(|v| v.chars().take(AGENT_VERSION_MAX).collect()),
        });
    }
    let received_at = state.clock.now();
    let stored = if owned.is_empty() {
        Vec::new()
    } else {
        state
            .queue
            .submit(
                identity.account.clone(),
                identity.cluster.clone(),
                received_at,
                owned,
            )
            .await
            .map_err(|e| match e {
                SubmitError::Busy => {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string())
                }
                SubmitError::Stopped => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string())
                }
                SubmitError::Store(_) => ApiError::internal(e),
            })?
    };
    let mut stored = stored.into_iter();
    let results = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, early)| {
            let outcome = early
                .or_else(|| stored.next())
                .expect("one outcome per sample");
            let (status, reason) = match outcome {
                Outcome::Accepted => (SampleStatus::Accepted, None),
                Outcome::Duplicate => (SampleStatus::Duplicate, None),
                Outcome::Rejected(r) => (SampleStatus::Rejected, Some(r)),
            };
            state
                .metrics
                .ingest_samples
                .get_or_create(&SampleLabels {
                    result: format!("{status:?}").to_lowercase(),
                    reason: reason.map_or(String::new(), |r| r.as_str().to_string()),
                })
                .inc();
            SampleResult {
                index,
                status,
                reason,
            }
        })
        .collect();
    Ok(Json(IngestResponse { results }))
}
