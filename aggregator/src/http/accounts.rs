//! The admin API of an account's life (SPEC section 8, LIFECYCLE.md):
//! accounts with their main account, contacts, trials, licence orders,
//! balance credits, notices, and the account view with its state.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::domain::NameKind;
use shared::lifecycle::ContactRole;

use super::admin::{body, read, ApiPath};
use super::audit::{audited, By};
use super::input;
use super::page::{Listing, Page, Paged};
use super::{blocking, ApiError};
use crate::state::AppState;
use crate::store::{NewContact, NewOrder, StoreError};
use std::sync::Arc;

/// How far ahead `next_change` looks (a year and a month covers a yearly term).
const NEXT_CHANGE_HORIZON_DAYS: u64 = 400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: String,
    /// The main account this one is a sub-account of.
    parent: Option<String>,
}

pub async fn create_account(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let NewAccount { id, parent } = body(&raw)?;
    input::new_name("id", NameKind::AccountId, &id)?;
    if let Some(p) = &parent {
        input::existing_name(&state, "parent", NameKind::AccountId, p)?;
    }
    let now = state.clock.now();
    let (created, main) = (id.clone(), parent.clone());
    audited(&state, by, Some(id.clone()), move |s| match main {
        Some(parent) => s.accounts().create_sub_account(&created, &parent, now),
        None => s.accounts().create_account(&created, now),
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "parent": parent })),
    )
        .into_response())
}

/// The account: its state and the next change due, its licences, orders,
/// balance, contacts, trial, cap history and clusters.
pub async fn get_account(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(account_view(&state, id).await?))
}

/// The account as `GET /v1/admin/accounts/{id}` answers it (the console's
/// overview and purchase pages show it too).
pub(super) async fn account_view(state: &Arc<AppState>, id: String) -> Result<Value, ApiError> {
    let now = state.clock.now();
    let zone = state.config.billing.zone;
    let default_cap = state.config.billing.rules.default_cap_cores;
    let view = blocking(&state.reader, move |s| {
        let account = s
            .accounts().account(&id)?
            .ok_or_else(|| StoreError::UnknownAccount(id.clone()))?;
        let licences = s.accounts().licences(&account)?;
        let caps = s.accounts().caps(&account)?;
        let clusters = s.accounts().clusters(&id)?;
        let (life, current, since) = s.billing().life(&id)?;
        let next_change = life
            .next_change(&zone, now, NEXT_CHANGE_HORIZON_DAYS)
            .map(|(state, at)| json!({"state": state, "at": at}));
        let storage = s.log_storage().view(&id, &zone, now)?;
        let images = s.images().authorizations(&id, now)?;
        Ok(json!({
            "id": account.id,
            "parent": s.accounts().parent_of(&id)?,
            "state": current,
            "state_since": since,
            "next_change": next_change,
            "state_history": s.accounts().state_history(&id)?,
            // Each product's state and next change: the account's own life
            // is its licensed cores' (pro).
            "products": {
                "pro": {"state": current, "state_since": since, "next_change": next_change},
                "log_storage": {
                    "state": storage.state,
                    "state_since": storage.state_since,
                    "next_change": storage.next_change,
                    "quota_gb": storage.quota_gb,
                    "used_bytes": storage.usage.as_ref().map(|u| u.used_bytes),
                },
                "image_scan": {"available": images.available},
            },
            "trial": life.trial,
            "balance": s.accounts().balance(&id)?.0,
            "orders": s.accounts().orders(&id)?,
            "deletions": s.billing().deletions(&id)?,
            "contacts": s.accounts().contacts(&id)?,
            "cap_cores": shared::overage::cap_at_day_end(&caps, now + chrono::TimeDelta::milliseconds(1), default_cap),
            "cap_history": caps.iter().map(|c| json!({"cores": c.cores, "from": c.from})).collect::<Vec<_>>(),
            "licenses": licences
                .iter()
                .map(|l| json!({"cores": l.cores, "start": l.start, "counts_until": l.end}))
                .collect::<Vec<_>>(),
            "clusters": clusters,
            "image_authorizations": images,
        }))
    })
    .await?;
    Ok(view)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactBody {
    name: String,
    role: String,
    email: Option<String>,
    sms: Option<String>,
}

pub async fn add_contact(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let c: ContactBody = body(&raw)?;
    input::text("name", &c.name, input::TEXT_MAX_CHARS)?;
    let role: ContactRole = c
        .role
        .parse()
        .map_err(|e: String| ApiError::unprocessable("role", e))?;
    let contact = NewContact {
        name: c.name,
        role,
        email: c.email,
        sms: c.sms,
    };
    let now = state.clock.now();
    let added = audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().add_contact(&id, &contact, now)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

pub async fn start_trial(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    if !raw.trim_ascii().is_empty() {
        let EmptyObject {} = body(&raw)?;
    }
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let account = id.clone();
    let trial = audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().start_trial(&account, &zone, now)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"account": id, "start": trial.start, "ends_at": trial.end, "state": "trial"})),
    )
        .into_response())
}

/// A trial takes no fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyObject {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    /// `pro` (the default: licensed cores), `image_scan` or `log_storage`.
    product: Option<String>,
    cores: Option<u64>,
    /// Authorizations, for `image_scan`.
    quantity: Option<u64>,
    /// GB, for `log_storage`.
    gb: Option<u64>,
    months: Option<u32>,
    years: Option<u32>,
    start: Option<String>,
    #[serde(default)]
    auto_renew: bool,
    #[serde(default)]
    pay_from_balance: bool,
}

/// `POST /v1/admin/accounts/{id}/orders`: an operator's order, invoiced or
/// paid from the balance.
pub async fn place_order(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    order(&state, by, id, body(&raw)?).await
}

/// `POST /v1/accounts/{id}/orders`: the customer's own order, which the
/// balance pays; an invoiced order is an operator's to place.
pub async fn customer_order(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let o: OrderBody = body(&raw)?;
    if !o.pay_from_balance {
        return Err(ApiError::unprocessable(
            "pay_from_balance",
            "a customer's order is paid from the balance: pay_from_balance must be true (an operator places invoiced orders)",
        ));
    }
    order(&state, by, id, o).await
}

async fn order(
    state: &Arc<AppState>,
    by: By,
    id: String,
    o: OrderBody,
) -> Result<Response, ApiError> {
    match o.product.as_deref().unwrap_or("pro") {
        "pro" => {}
        "image_scan" => return image_scan_order(state, by, id, o).await,
        "log_storage" => return log_storage_order(state, by, id, o).await,
        other => {
            return Err(ApiError::unprocessable(
                "product",
                format!(
                    "product {} is not one an order can name: pro, image_scan or log_storage",
                    shared::domain::quote(other)
                ),
            ))
        }
    }
    for (field, given) in [("quantity", o.quantity.is_some()), ("gb", o.gb.is_some())] {
        if given {
            return Err(ApiError::unprocessable(
                field,
                format!("a pro order names cores, not {field}"),
            ));
        }
    }
    let cores = o
        .cores
        .ok_or_else(|| ApiError::unprocessable("cores", "a pro order names its cores"))?;
    let cores = input::cores("cores", cores)?;
    let months = term(o.months, o.years, None)?;
    let start = o
        .start
        .as_deref()
        .map(|d| input::day("start", d))
        .transpose()?;
    let order = NewOrder {
        cores,
        months,
        start,
        auto_renew: o.auto_renew,
        pay_from_balance: o.pay_from_balance,
    };
    let (now, zone, price) = (
        state.clock.now(),
        state.config.billing.zone,
        state.config.licence_price_per_core_month,
    );
    let (placed, now_state) = audited(state, by, Some(id.clone()), move |s| {
        let placed = s.accounts().place_order(&id, &order, &zone, price, now)?;
        Ok((placed, s.billing().life(&id)?.1))
    })
    .await?;
    let mut view = serde_json::to_value(&placed).map_err(ApiError::internal)?;
    view["state"] = json!(now_state);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A pack of image-scan authorizations (SPEC 10.1): `quantity` (1 to
/// 100,000) at the configured price each, invoiced or from the balance.
async fn image_scan_order(
    state: &Arc<AppState>,
    by: By,
    id: String,
    o: OrderBody,
) -> Result<Response, ApiError> {
    for (field, given) in [
        ("cores", o.cores.is_some()),
        ("gb", o.gb.is_some()),
        ("months", o.months.is_some()),
        ("years", o.years.is_some()),
        ("start", o.start.is_some()),
        ("auto_renew", o.auto_renew),
    ] {
        if given {
            return Err(ApiError::unprocessable(
                field,
                format!("an image_scan order has no {field}: it names a quantity, used up and never expiring"),
            ));
        }
    }
    let quantity = o.quantity.ok_or_else(|| {
        ApiError::unprocessable("quantity", "an image_scan order names a quantity")
    })?;
    let max = shared::images::MAX_PACK_QUANTITY;
    let quantity = u32::try_from(quantity)
        .ok()
        .filter(|q| (1..=max).contains(q))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "quantity",
                format!("quantity {quantity} must be from 1 to {max}"),
            )
        })?;
    let (now, zone, each) = (
        state.clock.now(),
        state.config.billing.zone,
        state.config.image_scan_price,
    );
    let pay = o.pay_from_balance;
    let pack = audited(state, by, Some(id.clone()), move |s| {
        s.images().buy_pack(&id, quantity, pay, each, &zone, now)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!(pack))).into_response())
}

/// Log storage (SPEC 10.1): `gb` (at least 10, in steps of 10) for
/// `months` or `years`, with auto-renewal, invoiced or from the balance.
async fn log_storage_order(
    state: &Arc<AppState>,
    by: By,
    id: String,
    o: OrderBody,
) -> Result<Response, ApiError> {
    for (field, given) in [
        ("cores", o.cores.is_some()),
        ("quantity", o.quantity.is_some()),
    ] {
        if given {
            return Err(ApiError::unprocessable(
                field,
                format!("a log_storage order names gb, not {field}"),
            ));
        }
    }
    let gb =
        o.gb.ok_or_else(|| ApiError::unprocessable("gb", "a log_storage order names its gb"))?;
    let gb = shared::logs::check_order_gb(gb).map_err(|m| ApiError::unprocessable("gb", m))?;
    let months = term(o.months, o.years, None)?;
    let start = o
        .start
        .as_deref()
        .map(|d| input::day("start", d))
        .transpose()?;
    let order = crate::store::NewLogOrder {
        gb,
        months,
        start,
        auto_renew: o.auto_renew,
        pay_from_balance: o.pay_from_balance,
    };
    let (now, zone) = (state.clock.now(), state.config.billing.zone);
    let (placed, view) = audited(state, by, Some(id.clone()), move |s| {
        let placed = s.log_storage().place_order(&id, &order, &zone, now)?;
        Ok((placed, s.log_storage().view(&id, &zone, now)?))
    })
    .await?;
    let mut answer = serde_json::to_value(&placed).map_err(ApiError::internal)?;
    answer["state"] = json!(view.state);
    answer["quota_gb"] = json!(view.quota_gb);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    months: Option<u32>,
    years: Option<u32>,
    #[serde(default)]
    pay_from_balance: bool,
}

/// The term of `months` or `years` (exactly one), or `default` when neither is given.
fn term(months: Option<u32>, years: Option<u32>, default: Option<u32>) -> Result<u32, ApiError> {
    match (months, years, default) {
        (Some(m), None, _) => Ok(m),
        (None, Some(y), _) => y
            .checked_mul(12)
            .ok_or_else(|| ApiError::unprocessable("years", format!("{y} years is out of range"))),
        (None, None, Some(d)) => Ok(d),
        _ => Err(ApiError::unprocessable(
            "months",
            "give the term as exactly one of months or years",
        )),
    }
}

/// Renews an order's licence by hand from its end day (a month unless given).
pub async fn renew_order(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath((id, order)): ApiPath<(String, i64)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let r: RenewBody = if raw.trim_ascii().is_empty() {
        RenewBody::default()
    } else {
        body(&raw)?
    };
    let months = term(r.months, r.years, Some(shared::lifecycle::RENEWAL_MONTHS))?;
    let (now, zone, price) = (
        state.clock.now(),
        state.config.billing.zone,
        state.config.licence_price_per_core_month,
    );
    let (placed, now_state) = audited(&state, by, Some(id.clone()), move |s| {
        let placed =
            s.accounts()
                .renew_order(&id, order, months, r.pay_from_balance, &zone, price, now)?;
        Ok((placed, s.billing().life(&id)?.1))
    })
    .await?;
    let mut view = serde_json::to_value(&placed).map_err(ApiError::internal)?;
    view["state"] = json!(now_state);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoRenewBody {
    auto_renew: bool,
}

pub async fn set_auto_renew(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath((id, order)): ApiPath<(String, i64)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = read(raw)?;
    let AutoRenewBody { auto_renew } = body(&raw)?;
    audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().set_auto_renew(&id, order, auto_renew)
    })
    .await?;
    Ok(Json(json!({"order": order, "auto_renew": auto_renew})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    /// A decimal string such as "100.00": money never goes through a float.
    amount: String,
    /// The billing backend's id of the payment; a credit is taken once per reference.
    reference: String,
}

pub async fn credit(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let c: CreditBody = body(&raw)?;
    let amount = input::money("amount", &c.amount)?;
    input::text("reference", &c.reference, input::TEXT_MAX_CHARS)?;
    let now = state.clock.now();
    let (balance, credited) = audited(&state, by, Some(id.clone()), move |s| {
        s.accounts().credit_balance(&id, amount, &c.reference, now)
    })
    .await?;
    let status = if credited {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"balance": balance, "credited": credited})),
    )
        .into_response())
}

/// The balance and a page of its ledger, oldest entry first.
pub async fn balance(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let listing = Listing {
        list: "ledger",
        filter: &id,
    };
    let after: Option<i64> = page.after(listing)?;
    let (account, limit) = (id.clone(), page.limit);
    let (balance, entries) = blocking(&state.reader, move |s| {
        s.accounts().balance_page(&account, after, limit)
    })
    .await?;
    let paged = listing.paged(entries.total, entries.next.as_ref());
    Ok(paged.respond(Json(json!({
        "account": id,
        "balance": balance,
        "entries": entries.items,
        "next_cursor": paged.next_cursor,
    }))))
}

pub async fn notices(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let (listed, paged) = notices_page(&state, id, page).await?;
    Ok(paged.respond(Json(listed)))
}

/// A page of the account's notices, newest first, with their deliveries:
/// the admin's and the account's own `GET .../notices`.
pub(super) async fn notices_page(
    state: &Arc<AppState>,
    id: String,
    page: Page,
) -> Result<(Value, Paged), ApiError> {
    let listing = Listing {
        list: "notices",
        filter: &id,
    };
    let after: Option<i64> = page.after(listing)?;
    let (account, limit) = (id.clone(), page.limit);
    let notices = blocking(&state.reader, move |s| {
        s.accounts().notice_page(&account, after, limit)
    })
    .await?;
    let paged = listing.paged(notices.total, notices.next.as_ref());
    let listed = json!({
        "account": id,
        "notices": notices.items,
        "next_cursor": paged.next_cursor,
    });
    Ok((listed, paged))
}
