//! Health, readiness, metrics, the OpenAPI document, and the request observer.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{blocking, ApiError, State, ROUTES};
use crate::service_metrics::RouteLabels;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers.
pub async fn readyz(Extract(state): Extract<State>) -> Result<&'static str, ApiError> {
    blocking(&state.reader, |s| s.schema_version())
        .await
        .map(|_| "ready\n")
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database does not answer",
            )
        })
}

pub async fn metrics(Extract(state): Extract<State>) -> Response {
    if let Ok(status) = blocking(&state.reader, |s| s.outbox_status()).await {
        state
            .metrics
            .outbox_pending
            .set(i64::try_from(status.pending).unwrap_or(i64::MAX));
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The API description (OpenAPI 3.1), built from the route table the router is built from.
pub async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for (method, path, auth, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "responses": {"default": {"description": "JSON; errors are {\"error\": {\"code\", \"message\", \"field\"}}"}},
        });
        if *auth != "none" {
            op["security"] = json!([{ (if *auth == "admin" { "admin" } else { "cluster" }): [] }]);
        }
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "core-meter aggregator", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"securitySchemes": {
            "admin": {"type": "http", "scheme": "bearer", "description": "the admin token"},
            "cluster": {"type": "http", "scheme": "bearer", "description": "a cluster token"},
        }},
    })
}

/// Counts every request and its latency by route and status.
pub async fn observe(Extract(state): Extract<State>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RouteLabels {
        route,
        status: response.status().as_u16().to_string(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
