//! The log-storage add-on over HTTP (SPEC 10.4, 10.5): the log service's
//! usage reports (role logs), the storage's view (admin and reader), its
//! expansions and auto-renewal (admin), and the `logs` tokens.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::logs::{DayBytes, UsageReport, MAX_REPORT_BYTES, MAX_REPORT_DAYS};

use super::admin::{body, read, ApiPath};
use super::audit::{audited, By};
use super::{authz, blocking, edges, input, ApiError};
use crate::metrics::ResultLabels;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    at: String,
    days: Vec<DayBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DayBody {
    day: String,
    bytes: u64,
}

/// `PUT /v1/log-storage/usage`: the bytes the log service holds per log
/// day; answers the quota, the state, whether writes are accepted and the
/// days to purge. The token is known before the body is read.
pub async fn report_usage(
    Extract(state): Extract<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let identity = authz::logs_of(&state, authz::request_token(&request)).await?;
    edges::json_body(request.headers(), request.body())?;
    let raw = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            edges::too_large_for(MAX_REPORT_BYTES)
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })?;
    let report: ReportBody = body(&raw)?;
    if report.days.len() > MAX_REPORT_DAYS {
        return Err(ApiError::unprocessable(
            "days",
            format!(
                "a report names at most {MAX_REPORT_DAYS} days, this one {}",
                report.days.len()
            ),
        ));
    }
    let at = input::instant("at", &report.at)?;
    let days = report
        .days
        .iter()
        .map(|d| {
            Ok(DayBytes {
                day: input::day("days", &d.day)?,
                bytes: d.bytes,
            })
        })
        .collect::<Result<Vec<DayBytes>, ApiError>>()?;
    let report = UsageReport { at, days };
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let account = identity.account;
    let reported = blocking(&state.store, move |s| {
        s.log_storage().report_usage(&account, &report, &zone, now)
    })
    .await?;
    let m = &state.metrics;
    m.log_storage_reports
        .get_or_create(&ResultLabels {
            result: if reported.stale { "stale" } else { "stored" }.into(),
        })
        .inc();
    if reported.purged_days > 0 {
        m.log_storage_purges.inc();
        m.log_storage_purged_days.inc_by(reported.purged_days);
        m.log_storage_purged_bytes.inc_by(reported.purged_bytes);
    }
    let mut answer = serde_json::to_value(&reported.answer).map_err(ApiError::internal)?;
    answer["stale"] = json!(reported.stale);
    Ok(Json(answer).into_response())
}

/// `GET /v1/admin/accounts/{id}/log-storage` and the reader's
/// `GET /v1/accounts/{id}/log-storage`: quota, usage, state, orders, purges.
pub async fn view(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let account = id.clone();
    let view = blocking(&state.reader, move |s| {
        s.log_storage().view(&account, &zone, now)
    })
    .await?;
    let mut answer = serde_json::to_value(&view).map_err(ApiError::internal)?;
    answer["account"] = json!(id);
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpansionBody {
    gb: u64,
    #[serde(default)]
    pay_from_balance: bool,
}

/// `POST /v1/admin/accounts/{id}/log-storage/expansions {"gb",
/// "pay_from_balance"}`: more GB from today to the end of the current term,
/// priced pro rata by the days left.
pub async fn expand(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let b: ExpansionBody = body(&raw)?;
    let gb = shared::logs::check_order_gb(b.gb).map_err(|m| ApiError::unprocessable("gb", m))?;
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let (placed, view) = audited(&state, by, Some(id.clone()), move |s| {
        let placed = s
            .log_storage()
            .expand(&id, u64::from(gb), b.pay_from_balance, &zone, now)?;
        Ok((placed, s.log_storage().view(&id, &zone, now)?))
    })
    .await?;
    let mut answer = serde_json::to_value(&placed).map_err(ApiError::internal)?;
    answer["quota_gb"] = json!(view.quota_gb);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoRenewBody {
    auto_renew: bool,
}

/// `PUT /v1/admin/accounts/{id}/log-storage/orders/{order}/auto-renew {"auto_renew"}`.
pub async fn set_auto_renew(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath((id, order)): ApiPath<(String, i64)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let b: AutoRenewBody = body(&raw)?;
    let updated = audited(&state, by, Some(id.clone()), move |s| {
        s.log_storage().set_auto_renew(&id, order, b.auto_renew)
    })
    .await?;
    Ok(Json(json!(updated)))
}
