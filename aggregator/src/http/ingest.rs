//! `POST /v1/samples`: an agent's batch, authenticated by its cluster token; answered once the accepted samples are committed.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::Json;
use shared::sample::Rejection;
use shared::wire::{
    agent_reads, decode_batch, BatchError, IngestResponse, SampleResult, SampleStatus,
};

use super::{authz, blocking, edges, ApiError, Role};
use crate::ingest::{OwnedSample, SubmitError};
use crate::metrics::SampleLabels;
use crate::security::tokens::{bearer, hash_token, looks_like_cluster_token};
use crate::state::AppState;
use crate::store::{ClusterIdentity, Outcome};
use std::sync::Arc;

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the body is over 1 MiB; send fewer samples per request",
    )
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        match e {
            BatchError::TooLarge { .. } => too_large(),
            BatchError::TooManySamples { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_samples",
                e.to_string(),
            )
            .field("samples"),
            BatchError::Malformed(_) => ApiError::bad_request("samples", e.to_string()),
        }
    }
}

/// The cluster a token belongs to: found lately (`ClusterTokens`), or
/// looked up. The look-up is one indexed read of a few microseconds, so
/// when the reading connection is free it is done here, on the runtime's
/// thread: under a herd, handing every request's look-up to the blocking
/// pool cost more than the look-up itself (a thread wake-up each, and
/// hundreds of pool threads queueing on the one connection's lock: inline,
/// the service's CPU per pushed sample fell by a sixth). When the
/// connection is busy (a long admin read), the look-up waits in the
/// blocking pool as before.
async fn identify(state: &Arc<AppState>, token: &str) -> Result<Option<ClusterIdentity>, ApiError> {
    let hash = hash_token(token);
    let now = state.clock.now();
    let generation = match state.cluster_tokens.get(&hash, now) {
        Ok(identity) => return Ok(Some(identity)),
        Err(generation) => generation,
    };
    let found = match state
        .tokens
        .try_inline(|s| s.ingest().cluster_for_token(token))
    {
        Some(found) => found?,
        None => {
            let token = token.to_string();
            blocking(&state.tokens, move |s| s.ingest().cluster_for_token(&token)).await?
        }
    };
    if let Some(identity) = &found {
        state
            .cluster_tokens
            .put(hash, identity.clone(), now, generation);
    }
    Ok(found)
}

/// The cluster of an agent's bearer token, or the refusal: 401 for a
/// missing or unknown token, 403 for a token of another role. A string that
/// cannot be a cluster token costs no database look-up.
pub(super) async fn agent_of(
    state: &Arc<AppState>,
    token: Option<&str>,
) -> Result<ClusterIdentity, ApiError> {
    let identity = match token {
        Some(token) if looks_like_cluster_token(token) => identify(state, token).await?,
        _ => None,
    };
    match identity {
        Some(identity) => Ok(identity),
        None => {
            // Only a refused request pays for telling a missing or unknown
            // token (401) from the admin or a reader token (403).
            tracing::debug!("refused: not a live cluster token");
            Err(authz::refusal(state, Role::Cluster, token).await)
        }
    }
}

/// The body is read only after the token is known: an unknown client never
/// makes the service buffer its body. A declared length over 1 MiB was
/// refused before this (`edges::front`). The token never
/// reaches a log.
pub async fn push_samples(
    Extract(state): Extract<Arc<AppState>>,
    request: Request,
) -> Result<Json<IngestResponse>, ApiError> {
    let token = bearer(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let identity = agent_of(&state, token).await?;
    // The agent is known: only now does its body's type matter (a cheap look
    // at one header).
    edges::json_body(request.headers(), request.body())?;
    // The router's body limit (1 MiB) applies: a longer body is not read past it.
    let body = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })?;
    let decoded = decode_batch(&body)?;
    tracing::debug!(account = %identity.account, cluster = %identity.cluster, samples = decoded.len(), bytes = body.len(), "ingest batch");

    // A seq that is present but not a whole number is refused while decoding;
    // everything else is the store's validation (SPEC section 3).
    let mut outcomes: Vec<Option<Outcome>> = vec![None; decoded.len()];
    let mut owned = Vec::with_capacity(decoded.len());
    // Which samples came from an agent that reads the reasons added in 0.2.0.
    let mut reads_new: Vec<bool> = vec![false; decoded.len()];
    for (i, s) in decoded.into_iter().enumerate() {
        match s {
            Ok(s) => owned.push(OwnedSample {
                node: s.node,
                cores: s.cores,
                at: s.at,
                seq: s.seq,
                agent_version: {
                    reads_new[i] =
                        agent_reads(s.agent_version.as_deref(), Rejection::ServiceStopped);
                    s.agent_version
                },
            }),
            Err(reason) => outcomes[i] = Some(Outcome::Rejected(reason)),
        }
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
                // An older agent would fail to read a reason added after it.
                reason: reason.filter(|r| reads_new[index] || agent_reads(Some("0.1.0"), *r)),
            }
        })
        .collect();
    Ok(Json(IngestResponse { results }))
}
