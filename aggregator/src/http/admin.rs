//! The admin API: accounts, clusters and their tokens, licences, the cap, the audit trail, billing runs, bills, the outbox.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State as Extract};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::bill::BillLine;
use shared::domain::NameKind;
use shared::overage::{Licence, LICENCE_GRACE_DAYS};

use super::audit::{audited, By};
use super::input::{self, clip_quoted, required_day};
use super::page::{Listing, Page};
use super::{blocking, ApiError};
use crate::billing::job::{run_billing_now, run_lifecycle_now};
use crate::state::AppState;
use crate::store::{LineKey, SampleKey};
use std::sync::Arc;

/// A path parameter, refused in the API's error format (an ID that is not
/// UTF-8, say) rather than axum's plain text.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request("path", clip_quoted(&e.body_text())))
    }
}

/// A query string, refused in the API's error format.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request("query", clip_quoted(&e.body_text())))
    }
}

/// The body, or the API's own error when it cannot be read (over 1 MiB is 413).
pub(super) fn read(raw: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    raw.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::edges::too_large()
        } else {
            ApiError::bad_request("", format!("cannot read the body: {e}"))
        }
    })
}

/// A JSON body, with a 400 naming the problem when it is not what the route takes.
pub(super) fn body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        ApiError::bad_request(
            if field == "." { "" } else { &field },
            clip_quoted(&e.inner().to_string()),
        )
    })?;
    // One JSON value and nothing after it but white space: `{..}{..}` is
    // not the first object.
    de.end().map_err(|e| {
        ApiError::bad_request("", format!("the body has more after its JSON value: {e}"))
    })?;
    Ok(value)
}

/// A new cluster; `token` is one the operator generated (`cmc_` and 64
/// lowercase hex), else the service generates one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCluster {
    name: String,
    token: Option<String>,
}

pub async fn create_cluster(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let NewCluster { name, token } = body(&raw)?;
    input::new_name("name", NameKind::ClusterName, &name)?;
    let now = state.clock.now();
    let cluster = name.clone();
    let token = audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().create_cluster(&id, &cluster, token, now)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "token": token })),
    )
        .into_response())
}

/// A rotation's optional body: the token the operator generated, else the
/// service generates one.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotation {
    token: Option<String>,
}

pub async fn rotate_token(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath((id, name)): ApiPath<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    // The route took no body before, so an empty one still asks for a generated token.
    let Rotation { token } = if raw.trim_ascii().is_empty() {
        Rotation::default()
    } else {
        body(&raw)?
    };
    let now = state.clock.now();
    let cluster = name.clone();
    // Forgotten on the thread that committed it, even if this request is
    // dropped while it runs.
    let service = state.clone();
    let token = blocking(&state.store, move |s| {
        let rotated = s.audited(&by.0, Some(&id), now, |s| {
            s.accounts().rotate_cluster_token(&id, &cluster, token, now)
        });
        // After the commit: a look-up between the two would find the old
        // token still stored and keep it for a second.
        service.cluster_tokens.forget_all();
        rotated
    })
    .await?;
    Ok(Json(json!({ "name": name, "token": token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLicence {
    cores: u64,
    start: String,
    end: String,
}

pub async fn add_licence(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let l: NewLicence = body(&raw)?;
    let cores = input::cores("cores", l.cores)?;
    let (start, end) = (
        input::instant("start", &l.start)?,
        input::instant("end", &l.end)?,
    );
    if end < start {
        return Err(ApiError::unprocessable(
            "end",
            format!("the licence ends ({end}) before it starts ({start})"),
        ));
    }
    // A licence keeps counting for the grace days after its end (SPEC
    // sections 5 and 8); the store keeps the period it counts.
    let counts_until = end + chrono::TimeDelta::days(LICENCE_GRACE_DAYS);
    // The period it counts is what is stored and exported: within the domain too.
    shared::domain::check_instant(counts_until).map_err(|_| {
        ApiError::unprocessable(
            "end",
            format!(
                "end must leave room for the {LICENCE_GRACE_DAYS} days of grace before {}",
                shared::domain::instant_limit().format("%Y-%m-%dT%H:%M:%SZ")
            ),
        )
    })?;
    let licence =
        Licence::new(cores, start, counts_until).map_err(crate::store::StoreError::from)?;
    let now = state.clock.now();
    let zone = state.config.billing.zone;
    audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().add_licence(&id, &licence, now)?;
        // A licence that covers now makes a stopped account active at once.
        s.billing().settle_state(&id, &zone, now, "licence added")
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cores": cores, "start": start, "end": end, "counts_until": counts_until})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCap {
    cores: u64,
}

pub async fn set_cap(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let NewCap { cores } = body(&raw)?;
    let cores = input::cores("cores", cores)?;
    let now = state.clock.now();
    audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().set_cap(&id, cores, now, now)
    })
    .await?;
    Ok(Json(json!({ "cores": cores, "from": now })))
}

#[derive(Deserialize)]
pub struct DayQuery {
    pub(super) day: Option<String>,
}

pub async fn audit_samples(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DayQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    let d = required_day(q.day.as_deref())?;
    let filter = format!("{id}\n{d}");
    let listing = Listing {
        list: "samples",
        filter: &filter,
    };
    let after: Option<SampleKey> = page.after(listing)?;
    let zone = state.config.billing.zone;
    let window = (zone.day_start(d), zone.day_end(d));
    let (account, limit) = (id.clone(), page.limit);
    let samples = blocking(&state.reader, move |s| {
        s.accounts().require_not_deleted(&account, &zone, d)?;
        s.reads()
            .audit_page(&account, window, after.as_ref(), limit)
    })
    .await?;
    let paged = listing.paged(samples.total, samples.next.as_ref());
    Ok(paged.respond(Json(json!({
        "account": id,
        "day": d,
        "samples": samples.items,
        "next_cursor": paged.next_cursor,
    }))))
}

/// The 02:00 run, now: billing, then the lifecycle step (LIFECYCLE.md).
/// The run is batches of accounts, each its own transaction; its entry,
/// written before it starts, says who started it and when. The lines it
/// issues are their own trail, and the lifecycle's changes have the
/// `system` entries the step writes.
pub async fn billing_run(
    Extract(state): Extract<Arc<AppState>>,
    By(by): By,
) -> Result<Json<Value>, ApiError> {
    // Recorded first: a run that fails partway still shows who started it.
    let now = state.clock.now();
    let stated = json!({"billing_run": {"before": null, "after": {"requested_at_ms": now.timestamp_millis()}}});
    blocking(&state.store, move |s| {
        s.audited_as_stated(&by, None, now, |_| Ok(((), stated)))
    })
    .await?;
    let issued = run_billing_now(&state).await?;
    let lifecycle = run_lifecycle_now(&state).await?;
    Ok(Json(json!({ "issued": issued, "lifecycle": lifecycle })))
}

#[derive(Deserialize)]
pub struct BillsQuery {
    account: Option<String>,
    day: Option<String>,
    format: Option<String>,
}

pub async fn bills(
    Extract(state): Extract<Arc<AppState>>,
    ApiQuery(q): ApiQuery<BillsQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    let account = q.account;
    if let Some(a) = &account {
        input::existing_name(&state, "account", NameKind::AccountId, a)?;
    }
    bills_response(&state, account, q.day, q.format, page).await
}

/// A page of the bill lines of one account (all accounts with `None`), of
/// one day if given, as JSON or CSV: `GET /v1/admin/bills` and `GET
/// /v1/accounts/{id}/bills`.
pub(super) async fn bills_response(
    state: &Arc<AppState>,
    account: Option<String>,
    day_param: Option<String>,
    format: Option<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let d = day_param
        .as_deref()
        .map(|d| input::day("day", d))
        .transpose()?;
    let format = format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv") {
        return Err(ApiError::bad_request(
            "format",
            format!("{} is not json or csv", shared::domain::quote(&format)),
        ));
    }
    let filter = format!(
        "{}\n{}",
        account.as_deref().unwrap_or_default(),
        d.map(|d| d.to_string()).unwrap_or_default()
    );
    let listing = Listing {
        list: "bills",
        filter: &filter,
    };
    let after: Option<LineKey> = page.after(listing)?;
    let limit = page.limit;
    let lines = blocking(&state.reader, move |s| {
        s.reads()
            .bill_page(account.as_deref(), d, after.as_ref(), limit)
    })
    .await?;
    let paged = listing.paged(lines.total, lines.next.as_ref());
    Ok(if format == "csv" {
        paged.respond((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            bills_csv(&lines.items),
        ))
    } else {
        paged.respond(Json(
            json!({ "bills": lines.items, "next_cursor": paged.next_cursor }),
        ))
    })
}

/// Bill lines as CSV, one row per line, money as exact decimals; no cell
/// a spreadsheet would run as a formula (`csv_out`).
pub fn bills_csv(lines: &[BillLine]) -> String {
    crate::reports::csv::write_csv(
        &[
            "account",
            "day",
            "seq",
            "kind",
            "hours",
            "excess_core_hours",
            "average_excess_cores",
            "cap_cores",
            "billable_cores",
            "amount",
            "currency",
            "issued_at",
            "idempotency_key",
        ],
        lines.iter().map(|l| {
            [
                l.account.clone(),
                l.day.to_string(),
                l.seq.to_string(),
                l.kind.as_str().to_string(),
                l.hours.to_string(),
                l.excess_core_hours.to_string(),
                l.average_excess_cores.to_string(),
                l.cap_cores.to_string(),
                l.billable_cores.to_string(),
                l.amount.to_string(),
                l.currency.clone(),
                l.issued_at
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                l.idempotency_key.clone(),
            ]
        }),
    )
}

#[derive(Deserialize)]
pub struct OutboxQuery {
    pending: Option<bool>,
}

pub async fn outbox(
    Extract(state): Extract<Arc<AppState>>,
    ApiQuery(q): ApiQuery<OutboxQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    let pending_only = q.pending.unwrap_or(false);
    let filter = pending_only.to_string();
    let listing = Listing {
        list: "outbox",
        filter: &filter,
    };
    let after: Option<LineKey> = page.after(listing)?;
    let limit = page.limit;
    let (entries, status, notices) = blocking(&state.reader, move |s| {
        Ok((
            s.delivery()
                .outbox_page(pending_only, after.as_ref(), limit)?,
            s.delivery().outbox_status()?,
            s.delivery().notice_outbox_status()?,
        ))
    })
    .await?;
    let paged = listing.paged(entries.total, entries.next.as_ref());
    Ok(paged.respond(Json(json!({
        "status": status,
        "lines": entries.items,
        "notices": notices,
        "next_cursor": paged.next_cursor,
    }))))
}

#[derive(Deserialize)]
pub struct ReportQuery {
    day: Option<String>,
    account: Option<String>,
    format: Option<String>,
}

/// `GET /v1/reports/daily?day=&account=&format=json|csv|html`: the report of
/// one account's day, provisional while the day is not yet due.
pub async fn daily_report(
    Extract(state): Extract<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    let d = required_day(q.day.as_deref())?;
    let account = q
        .account
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::unprocessable("account", "account= is required"))?;
    input::existing_name(&state, "account", NameKind::AccountId, &account)?;
    report_response(&state, account, d, q.format).await
}

/// The daily report of `account`'s day as JSON, CSV or HTML: `GET
/// /v1/reports/daily` and `GET /v1/accounts/{id}/reports/daily`.
pub(super) async fn report_response(
    state: &Arc<AppState>,
    account: String,
    d: NaiveDate,
    format: Option<String>,
) -> Result<Response, ApiError> {
    let format = format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(ApiError::bad_request(
            "format",
            format!(
                "{} is not json, csv or html",
                shared::domain::quote(&format)
            ),
        ));
    }
    let (config, now) = (state.config.billing.clone(), state.clock.now());
    let report = blocking(&state.reader, move |s| {
        crate::reports::daily_report(s, &config, &account, d, now)
    })
    .await?;
    Ok(match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::reports::render_csv(&report),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::reports::html::render_html(&report),
        )
            .into_response(),
        _ => Json(report).into_response(),
    })
}
