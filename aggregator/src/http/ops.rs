//! Health, readiness, metrics, the OpenAPI document, and the request observer.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::SecondsFormat;
use serde_json::{json, Map, Value};
use shared::domain::{self, NameKind};

use super::{blocking, inputs, ApiError, Body, Domain, Input, Role, ROUTES};
use crate::config::Database;
use crate::metrics::{PlaceLabels, RouteLabels};
use crate::state::AppState;
use std::sync::Arc;

/// Alive unless something only a restart mends has happened: the ingest
/// writer thread is gone, or a store connection a panic left unusable could
/// not be opened again. A full disk or an unreachable database is not such a
/// thing (readiness says those), so the kubelet does not restart for them.
pub async fn healthz(Extract(state): Extract<Arc<AppState>>) -> Result<&'static str, ApiError> {
    let dead = |what: String| {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_alive",
            format!("{what}; restart the service"),
        ))
    };
    if !state.queue.writer_running() {
        return dead("the ingest writer has stopped".into());
    }
    if let Some(c) = state.connections().into_iter().find(|c| c.is_broken()) {
        return dead(format!(
            "the {} store connection is broken (a panic left it unusable and it could not be opened again)",
            c.name()
        ));
    }
    Ok("ok\n")
}

/// Room a write probe asks of the database's file system: more than a commit
/// of a large batch takes, so that readiness does not come back while the
/// next push would still fail.
const PROBE_BYTES: usize = 256 * 1024;

/// Ready when the database answers and can write. A service whose disk is full
/// cannot do its job, taking samples, so it says so: its pod shows not ready
/// and an alert on unready pods fires, while `/healthz` stays up so that the
/// kubelet does not restart it (a restart frees no space). Agents treat the
/// missing endpoint like the 503 they would get and keep their samples.
/// Readiness must come back without traffic (an unready pod gets none), so
/// while the writer reports the disk failing, each call probes the file
/// system by writing and syncing `PROBE_BYTES` next to the database.
pub async fn readyz(Extract(state): Extract<Arc<AppState>>) -> Result<&'static str, ApiError> {
    blocking(&state.tokens, |s| s.schema_version())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database does not answer",
            )
        })?;
    let Some(failure) = state.queue.write_failure() else {
        return Ok("ready\n");
    };
    let Database::Sqlite(database) = state.config.database.clone() else {
        // PostgreSQL's room is the server's: its own error says what is wrong.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the database cannot write: {}", failure.describe()),
        )
        .retry_after(super::DISK_RETRY_AFTER_SECS));
    };
    let probe = tokio::task::spawn_blocking(move || probe_room(&database))
        .await
        .map_err(ApiError::internal)?;
    match probe {
        Ok(()) => Ok("ready\n"),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "the database cannot write: {}; a {} KiB probe next to it failed: {e}",
                failure.describe(),
                PROBE_BYTES / 1024
            ),
        )
        .retry_after(super::DISK_RETRY_AFTER_SECS)),
    }
}

/// Writes, syncs and removes a probe file beside the database.
fn probe_room(database: &Path) -> std::io::Result<()> {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push("-readyz-probe");
    let path = database.with_file_name(name);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

pub async fn metrics(Extract(state): Extract<Arc<AppState>>) -> Response {
    // Connections count the panics they caught; the metric catches up here.
    for c in state.connections() {
        let counter = state.metrics.panics.get_or_create(&PlaceLabels {
            place: c.name().to_string(),
        });
        counter.inc_by(c.panics().saturating_sub(counter.get()));
    }
    if let Ok(status) = blocking(&state.reader, |s| s.delivery().outbox_status()).await {
        state
            .metrics
            .outbox_pending
            .set(i64::try_from(status.pending).unwrap_or(i64::MAX));
    }
    if let Ok(status) = blocking(&state.reader, |s| s.delivery().notice_outbox_status()).await {
        state
            .metrics
            .notice_outbox_pending
            .set(i64::try_from(status.pending).unwrap_or(i64::MAX));
    }
    if let Ok((quota, used)) = blocking(&state.reader, |s| s.log_storage().totals()).await {
        let m = &state.metrics;
        m.log_storage_quota_bytes
            .set(i64::try_from(quota).unwrap_or(i64::MAX));
        m.log_storage_used_bytes
            .set(i64::try_from(used).unwrap_or(i64::MAX));
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
    for (method, path, role, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        // Which tokens may call it: the admin token may call reader routes too.
        let security = match role {
            Role::None => json!([]),
            Role::Admin => json!([{"admin": []}]),
            Role::Reader => json!([{"reader": []}, {"customer": []}, {"admin": []}]),
            Role::Cluster => json!([{"cluster": []}]),
            Role::Logs => json!([{"logs": []}]),
            Role::Customer => json!([{"customer": []}, {"admin": []}]),
        };
        let declared = inputs(method, path);
        let parameters: Vec<Value> = declared
            .path
            .iter()
            .map(|p| parameter(p, "path"))
            .chain(declared.query.iter().map(|p| parameter(p, "query")))
            .collect();
        entry[*method] = json!({
            "summary": summary,
            "parameters": parameters,
            "x-core-meter-role": role.as_str(),
            "security": security,
            "responses": {
                "default": {"description": "JSON; errors are {\"error\": {\"code\", \"message\", \"field\"}}"},
                "401": {"description": "no token, or one that is unknown or revoked (WWW-Authenticate: Bearer)"},
                "403": {"description": "a valid token whose role may not call this route"},
            },
        });
        if let Body::Object {
            fields,
            closed,
            may_be_empty,
        } = declared.body
        {
            entry[*method]["requestBody"] = json!({
                "required": !may_be_empty,
                "content": {"application/json": {"schema": object_schema(fields, closed)}},
            });
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "core-meter aggregator", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"securitySchemes": {
            "admin": {"type": "http", "scheme": "bearer", "description": "the admin token (role admin)"},
            "reader": {"type": "http", "scheme": "bearer", "description": "a reader token (cmr_…), read-only and bound to the account in the path (role reader)"},
            "cluster": {"type": "http", "scheme": "bearer", "description": "a cluster token (cmc_…), an agent's (role cluster)"},
            "logs": {"type": "http", "scheme": "bearer", "description": "a logs token (cml_…), a log service's, bound to one account (role logs)"},
            "customer": {"type": "http", "scheme": "bearer", "description": "a customer token (cmu_…), bound to the account in the path: reads as a reader and acts on the account's own cap, auto-renewal, image authorizations and orders paid from the balance (role customer)"},
        }},
    })
}

/// A path or query parameter as OpenAPI describes one.
fn parameter(input: &Input, location: &str) -> Value {
    json!({
        "name": input.name,
        "in": location,
        // A path parameter is always required (OpenAPI 3.1, section 4.8.12.1).
        "required": input.required || location == "path",
        "description": input.doc,
        "schema": schema(&input.domain),
    })
}

/// A JSON object with these fields; `closed` when an unknown field is refused.
fn object_schema(fields: &[Input], closed: bool) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| {
            let mut s = schema(&f.domain);
            s["description"] = json!(f.doc);
            (f.name.to_string(), s)
        })
        .collect();
    let mut object = json!({"type": "object", "properties": properties});
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    if !required.is_empty() {
        object["required"] = json!(required);
    }
    if closed {
        object["additionalProperties"] = json!(false);
    }
    object
}

/// The JSON Schema (2020-12, as OpenAPI 3.1 uses) of an input's domain.
fn schema(domain: &Domain) -> Value {
    match *domain {
        Domain::Text {
            min_chars,
            max_chars,
        } => {
            let mut s = json!({"type": "string"});
            if min_chars > 0 {
                s["minLength"] = json!(min_chars);
            }
            if let Some(max) = max_chars {
                s["maxLength"] = json!(max);
            }
            s
        }
        // `shared::domain`'s rules: names, days, instants, money.
        Domain::Name => name_schema(NameKind::AccountId),
        Domain::NodeName => name_schema(NameKind::NodeName),
        Domain::Day => json!({
            "type": "string",
            "format": "date",
            "formatMinimum": domain::FIRST_DAY.to_string(),
            "formatMaximum": domain::LAST_DAY.to_string(),
        }),
        Domain::Month => json!({
            "type": "string",
            "pattern": "^(20[0-9]{2}|21[0-9]{2})-(0[1-9]|1[0-2])$",
        }),
        Domain::Instant => json!({
            "type": "string",
            "format": "date-time",
            "formatMinimum": domain::first_instant().to_rfc3339_opts(SecondsFormat::Secs, true),
            "formatExclusiveMaximum": domain::instant_limit().to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
        Domain::Decimal => json!({
            "type": "string",
            "format": "decimal",
            "pattern": "^[0-9]{1,15}(\\.[0-9]{1,6})?$",
        }),
        Domain::Token(prefix) => json!({
            "type": "string",
            "pattern": format!("^{prefix}_[0-9a-f]{{64}}$"),
        }),
        Domain::Email => json!({"type": "string", "format": "email", "maxLength": 254}),
        Domain::Phone => json!({"type": "string", "pattern": "^\\+[0-9]{8,15}$"}),
        Domain::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Domain::Boolean => json!({"type": "boolean"}),
        Domain::OneOf(values) => json!({"type": "string", "enum": values}),
        Domain::ImageId => json!({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}),
        Domain::ImageIds { max_items } => json!({
            "type": "array",
            "minItems": 1,
            "maxItems": max_items,
            "items": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
        }),
        Domain::TextList {
            max_items,
            max_chars,
        } => json!({
            "type": "array",
            "maxItems": max_items,
            "items": {"type": "string", "maxLength": max_chars},
        }),
        Domain::Objects { fields, max_items } => json!({
            "type": "array",
            "maxItems": max_items,
            "items": object_schema(fields, false),
        }),
    }
}

/// A name's schema: `shared::domain::check_name`'s alphabet and length.
fn name_schema(kind: NameKind) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": kind.max_chars(),
        "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]*$",
    })
}

/// Counts every request and its latency by route and status.
pub async fn observe(
    Extract(state): Extract<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
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
