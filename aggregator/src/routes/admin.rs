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

use super::input::{self, clip_quoted, required_day};
use super::page::{Listing, Page};
use super::{blocking, ApiError, State};
use crate::billing::run_billing;
use crate::service_metrics::KindLabels;
use crate::store::{LineKey, SampleKey};

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
    Extract(state): Extract<State>,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let NewCluster { name, token } = body(&raw)?;
    input::new_name("name", NameKind::ClusterName, &name)?;
    let now = state.clock.now();
    let cluster = name.clone();
    let token = blocking(&state.store, move |s| {
        s.create_cluster(&id, &cluster, token, now)
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
    Extract(state): Extract<State>,
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
    let token = blocking(&state.store, move |s| {
        s.rotate_cluster_token(&id, &cluster, token, now)
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
    Extract(state): Extract<State>,
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
    blocking(&state.store, move |s| {
        s.add_licence(&id, &licence, now)?;
        // A licence that covers now makes a stopped account active at once.
        s.settle_state(&id, &zone, now, "licence added")
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
    Extract(state): Extract<State>,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let NewCap { cores } = body(&raw)?;
    let cores = input::cores("cores", cores)?;
    let now = state.clock.now();
    blocking(&state.store, move |s| s.set_cap(&id, cores, now, now)).await?;
    Ok(Json(json!({ "cores": cores, "from": now })))
}

#[derive(Deserialize)]
pub struct DayQuery {
    pub(super) day: Option<String>,
}

pub async fn audit_samples(
    Extract(state): Extract<State>,
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
        s.require_not_deleted(&account, &zone, d)?;
        s.audit_page(&account, window, after.as_ref(), limit)
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
pub async fn billing_run(Extract(state): Extract<State>) -> Result<Json<Value>, ApiError> {
    let issued = run_billing_now(&state).await?;
    let lifecycle = run_lifecycle_now(&state).await?;
    Ok(Json(json!({ "issued": issued, "lifecycle": lifecycle })))
}

/// Steps every account through the runs up to the clock's now, then removes
/// the data of accounts that reached `deleted`, a bounded batch per
/// transaction.
pub async fn run_lifecycle_now(state: &State) -> Result<Vec<crate::store::StepOutcome>, ApiError> {
    let (now, zone, price) = (
        state.clock.now(),
        state.config.billing.zone,
        state.config.licence_price_per_core_month,
    );
    let changed = blocking(&state.store, move |s| {
        crate::lifecycle::run_lifecycle(s, now, &zone, price)
    })
    .await?;
    for step in &changed {
        let m = &state.metrics;
        if let Some(error) = &step.error {
            m.lifecycle_step_failures.inc();
            tracing::error!(account = %step.account, %error, "lifecycle step failed for this account; it is tried again at the next run");
            continue;
        }
        if let Some(st) = step.state {
            m.account_state_changes
                .get_or_create(&crate::service_metrics::StateLabels {
                    state: st.as_str().to_string(),
                })
                .inc();
        }
        for kind in &step.notices {
            m.notices_issued
                .get_or_create(&KindLabels { kind: kind.clone() })
                .inc();
        }
        m.licence_renewals.inc_by(step.renewed.len() as u64);
        tracing::info!(account = %step.account, day = ?step.day, state = ?step.state, notices = ?step.notices, renewed = ?step.renewed, "lifecycle step");
    }
    loop {
        let removed = blocking(&state.store, move |s| {
            s.purge_deleted_data(crate::lifecycle::PURGE_BATCH_ROWS, now)
        })
        .await?;
        if removed == 0 {
            break;
        }
    }
    Ok(changed)
}

/// Runs billing at the clock's now, counts it, and wakes the outbox.
pub async fn run_billing_now(state: &State) -> Result<Vec<BillLine>, ApiError> {
    let now = state.clock.now();
    let config = state.config.billing.clone();
    let issued = blocking(&state.store, move |s| run_billing(s, now, &config)).await?;
    state.metrics.billing_runs.inc();
    state.metrics.last_billing_run.set(now.timestamp() as f64);
    for line in &issued {
        state
            .metrics
            .billing_lines
            .get_or_create(&KindLabels {
                kind: line.kind.as_str().to_string(),
            })
            .inc();
    }
    if !issued.is_empty() {
        state.outbox_wake.notify_one();
    }
    Ok(issued)
}

#[derive(Deserialize)]
pub struct BillsQuery {
    account: Option<String>,
    day: Option<String>,
    format: Option<String>,
}

pub async fn bills(
    Extract(state): Extract<State>,
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
    state: &State,
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
        s.bill_page(account.as_deref(), d, after.as_ref(), limit)
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
    crate::csv_out::write_csv(
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
    Extract(state): Extract<State>,
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
            s.outbox_page(pending_only, after.as_ref(), limit)?,
            s.outbox_status()?,
            s.notice_outbox_status()?,
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
    Extract(state): Extract<State>,
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
    state: &State,
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
        crate::report::daily_report(s, &config, &account, d, now)
    })
    .await?;
    Ok(match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::report::render_csv(&report),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::report_html::render_html(&report),
        )
            .into_response(),
        _ => Json(report).into_response(),
    })
}
