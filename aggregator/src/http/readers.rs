//! Reader tokens: issued, listed and revoked through the admin API; and the customer-facing routes they open (an account's report, bills, notices, export), which reuse the admin routes' code with the account taken from the path.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{bills_response, body, read, report_response, ApiPath, ApiQuery, DayQuery};
use super::audit::{audited, By};
use super::input::{self, required_day};
use super::page::{Listing, Page};
use super::{blocking, ApiError};
use crate::state::AppState;
use crate::store::AccountTokenRole;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReaderToken {
    name: String,
}

/// Which of an account's tokens a token route serves, by its path:
/// `reader-tokens`, `log-tokens` or `customer-tokens`.
fn role_of(path: &MatchedPath) -> AccountTokenRole {
    match path.as_str().split('/').nth(5) {
        Some("log-tokens") => AccountTokenRole::Logs,
        Some("customer-tokens") => AccountTokenRole::Customer,
        _ => AccountTokenRole::Reader,
    }
}

/// `POST /v1/admin/accounts/{id}/reader-tokens {"name"}` (and `log-tokens`,
/// `customer-tokens`): the token is in this answer and nowhere else, ever.
pub async fn issue(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    path: MatchedPath,
    ApiPath(id): ApiPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    issue_token(&state, by, id, raw, role_of(&path)).await
}

async fn issue_token(
    state: &Arc<AppState>,
    by: By,
    id: String,
    raw: Result<Bytes, BytesRejection>,
    role: AccountTokenRole,
) -> Result<Response, ApiError> {
    let raw = read(raw)?;
    let NewReaderToken { name } = body(&raw)?;
    input::text("name", &name, crate::store::READER_NAME_MAX_CHARS)?;
    let now = state.clock.now();
    let issued = audited(state, by, Some(id.clone()), move |s| {
        s.accounts().issue_account_token(&id, role, &name, now)
    })
    .await?;
    tracing::info!(token_id = issued.id, ?role, "account token issued");
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// `GET /v1/accounts/{id}/notices`: a page of the account's notices as the
/// admin route lists them, less each delivery's `last_error`: the
/// operators' detail of their own systems (the relay's or webhook's
/// answer) is not the customer's.
pub async fn customer_notices(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let (mut listed, paged) = super::accounts::notices_page(&state, id, page).await?;
    for notice in listed["notices"].as_array_mut().into_iter().flatten() {
        for delivery in notice["deliveries"].as_array_mut().into_iter().flatten() {
            if let Some(d) = delivery.as_object_mut() {
                d.remove("last_error");
            }
        }
    }
    Ok(paged.respond(Json(listed)))
}

/// `GET /v1/admin/accounts/{id}/reader-tokens` (and `log-tokens`,
/// `customer-tokens`): a page of the tokens, oldest first, without their
/// secret or hash.
pub async fn list(
    Extract(state): Extract<Arc<AppState>>,
    path: MatchedPath,
    ApiPath(id): ApiPath<String>,
    page: Page,
) -> Result<Response, ApiError> {
    list_tokens(&state, id, page, role_of(&path)).await
}

async fn list_tokens(
    state: &Arc<AppState>,
    id: String,
    page: Page,
    role: AccountTokenRole,
) -> Result<Response, ApiError> {
    let (list, key) = match role {
        AccountTokenRole::Reader => ("reader-tokens", "reader_tokens"),
        AccountTokenRole::Logs => ("log-tokens", "log_tokens"),
        AccountTokenRole::Customer => ("customer-tokens", "customer_tokens"),
    };
    let listing = Listing { list, filter: &id };
    let after: Option<i64> = page.after(listing)?;
    let (account, limit) = (id.clone(), page.limit);
    let tokens = blocking(&state.reader, move |s| {
        s.accounts()
            .account_token_page(&account, role, after, limit)
    })
    .await?;
    let paged = listing.paged(tokens.total, tokens.next.as_ref());
    Ok(paged.respond(Json(json!({
        "account": id,
        key: tokens.items,
        "next_cursor": paged.next_cursor,
    }))))
}

/// `DELETE /v1/admin/accounts/{id}/reader-tokens/{token_id}` (and
/// `log-tokens`, `customer-tokens`): the token stops at once. Revoking a
/// revoked token answers it unchanged; an unknown one is 404.
pub async fn revoke(
    Extract(state): Extract<Arc<AppState>>,
    by: By,
    path: MatchedPath,
    ApiPath((id, token_id)): ApiPath<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    revoke_token(&state, by, id, token_id, role_of(&path)).await
}

async fn revoke_token(
    state: &Arc<AppState>,
    by: By,
    id: String,
    token_id: i64,
    role: AccountTokenRole,
) -> Result<Json<Value>, ApiError> {
    let now = state.clock.now();
    let revoked = audited(state, by, Some(id.clone()), move |s| {
        s.accounts().revoke_account_token(&id, role, token_id, now)
    })
    .await?;
    tracing::info!(token_id, ?role, "account token revoked");
    Ok(Json(json!(revoked)))
}

#[derive(Deserialize)]
pub struct AccountQuery {
    day: Option<String>,
    format: Option<String>,
}

/// `GET /v1/accounts/{id}/reports/daily?day=&format=json|csv|html`.
pub async fn daily_report(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AccountQuery>,
) -> Result<Response, ApiError> {
    let d = required_day(q.day.as_deref())?;
    report_response(&state, id, d, q.format).await
}

/// `GET /v1/accounts/{id}/bills?day=&format=json|csv&limit=&cursor=`.
pub async fn bills(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AccountQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    bills_response(&state, Some(id), q.day, q.format, page).await
}

/// `GET /v1/accounts/{id}/export?day=`: the replay case `aggregator export` prints.
pub async fn export(
    Extract(state): Extract<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DayQuery>,
) -> Result<Json<Value>, ApiError> {
    let d = required_day(q.day.as_deref())?;
    let config = state.config.billing.clone();
    let case = blocking(&state.reader, move |s| {
        crate::reports::export::export_case(s, &config, &id, d)
    })
    .await?;
    Ok(Json(case))
}
