//! The audit log over HTTP: who a change is by ([`By`], from the caller
//! the gate found, the route and the client's address), the one way a
//! handler makes a change ([`audited`]), and the log's pages for the admin
//! (`GET /v1/admin/audit`) and for an account's own tokens
//! (`GET /v1/accounts/{id}/audit`).

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, State as Extract};
use axum::http::request::Parts;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use shared::domain::NameKind;

use super::admin::{ApiPath, ApiQuery};
use super::authz::{header_token, Caller};
use super::console::ConsoleCaller;
use super::page::{Listing, Page};
use super::{blocking, input, ApiError};
use crate::security::tls::Transport;
use crate::state::AppState;
use crate::store::audit::{Actor, ChangeBy, Entry, Filter};
use crate::store::{Store, StoreError};

/// The admin token as the log names it: the first 12 hex digits of its
/// SHA-256, which tell one admin token from the next without being it.
pub fn admin_actor(token_hash: &[u8]) -> Actor {
    Actor {
        role: "admin".into(),
        id: token_hash
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// A reader's, customer's, logs or cluster token as the log names it.
pub fn token_actor(role: &str, id: impl ToString) -> Actor {
    Actor {
        role: role.into(),
        id: id.to_string(),
    }
}

/// The actor of an API caller (`token`: the bearer token it came with).
fn actor_of(caller: &Caller, token: Option<&str>) -> Option<Actor> {
    Some(match caller {
        Caller::Admin => admin_actor(&crate::security::tokens::hash_token(token?)),
        Caller::Customer(r) => token_actor("customer", r.token_id),
        Caller::Reader(r) => token_actor("reader", r.token_id),
        Caller::Logs(r) => token_actor("logs", r.token_id),
        Caller::Cluster(c) => token_actor("cluster", format!("{}/{}", c.account, c.cluster)),
        Caller::Anonymous | Caller::Unknown => return None,
    })
}

/// Who a request's change is by: the caller its gate let through (an API
/// token, or a console session or token), its route, its client's address.
pub struct By(pub ChangeBy);

impl<S: Send + Sync> FromRequestParts<S> for By {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<By, ApiError> {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
        let actor = match (
            parts.extensions.get::<ConsoleCaller>(),
            parts.extensions.get::<Caller>(),
        ) {
            (Some(console), _) => Some(console.actor.clone()),
            (None, Some(caller)) => actor_of(caller, header_token(&parts.headers)),
            (None, None) => None,
        };
        let actor = actor.ok_or_else(|| {
            ApiError::internal(format!("{route}: a change with no caller to record"))
        })?;
        Ok(By(ChangeBy {
            actor,
            source: source_of(parts),
            action: format!("{} {route}", parts.method),
        }))
    }
}

/// The client's address, for a change whose caller the handler finds
/// itself (a console login).
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Source, ApiError> {
        Ok(Source(source_of(parts)))
    }
}

/// The client's address, as its connection gave it (a proxy's own, behind
/// one): no header a client writes is taken for it.
pub fn source_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<Transport>()
        .and_then(|t| t.peer)
        .map(|p| p.ip().to_string())
        .unwrap_or_default()
}

/// Makes a change on the writing connection, recorded in the audit log in
/// the same transaction: what it altered of `account` (of no account with
/// `None`), by `by`. A change that fails writes no entry.
pub async fn audited<T: Send + 'static>(
    state: &Arc<AppState>,
    by: By,
    account: Option<String>,
    change: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let now = state.clock.now();
    blocking(&state.store, move |s| {
        s.audited(&by.0, account.as_deref(), now, change)
    })
    .await
}

#[derive(Deserialize)]
pub struct AuditQuery {
    account: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// The roles an entry's actor may have.
const ACTOR_ROLES: [&str; 6] = ["admin", "customer", "reader", "logs", "cluster", "system"];

fn filter_of(q: AuditQuery, account: Option<String>) -> Result<Filter, ApiError> {
    if let Some(actor) = &q.actor {
        let role = actor.split_once(':').map_or(actor.as_str(), |(r, _)| r);
        input::one_of("actor", role, &ACTOR_ROLES)?;
        input::text("actor", actor, 128)?;
    }
    let since = q
        .since
        .as_deref()
        .map(|s| input::instant("since", s))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|s| input::instant("until", s))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until) {
        if until < since {
            return Err(ApiError::unprocessable(
                "until",
                format!("until ({until}) is before since ({since})"),
            ));
        }
    }
    Ok(Filter {
        account: account.or(q.account),
        actor: q.actor,
        since,
        until,
    })
}

/// `GET /v1/admin/audit`: the log, oldest first, filtered.
pub async fn admin_log(
    Extract(state): Extract<Arc<AppState>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    if let Some(a) = &q.account {
        input::existing_name(&state, "account", NameKind::AccountId, a)?;
    }
    let filter = filter_of(q, None)?;
    log_page(&state, filter, page, false).await
}

/// `GET /v1/accounts/{id}/audit`: the account's own entries; to the
/// customer, without an operator's address and token ([`for_customer`]).
pub async fn account_log(
    Extract(state): Extract<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AuditQuery>,
    page: Page,
) -> Result<Response, ApiError> {
    if q.account.as_ref().is_some_and(|a| *a != id) {
        return Err(ApiError::unprocessable(
            "account",
            "this route shows the entries of the account in its path",
        ));
    }
    let filter = filter_of(q, Some(id))?;
    log_page(&state, filter, page, caller != Caller::Admin).await
}

/// An entry as a customer sees it: an operator's address and the
/// fingerprint of the admin token are the operators' own.
pub fn for_customer(mut entry: Entry) -> Entry {
    if entry.actor.role == "admin" {
        entry.actor.id = String::new();
        entry.source = String::new();
    }
    entry
}

async fn log_page(
    state: &Arc<AppState>,
    filter: Filter,
    page: Page,
    customer: bool,
) -> Result<Response, ApiError> {
    let named = format!(
        "{}|{}|{:?}|{:?}",
        filter.account.as_deref().unwrap_or(""),
        filter.actor.as_deref().unwrap_or(""),
        filter.since,
        filter.until
    );
    let listing = Listing {
        list: "audit",
        filter: &named,
    };
    let after: Option<i64> = page.after(listing)?;
    let limit = page.limit;
    let mut entries = blocking(&state.reader, move |s| {
        s.audit().page(&filter, after, limit)
    })
    .await?;
    if customer {
        entries.items = entries.items.into_iter().map(for_customer).collect();
    }
    let paged = listing.paged(entries.total, entries.next.as_ref());
    Ok(paged.respond(Json(json!({
        "entries": entries.items,
        "next_cursor": paged.next_cursor,
    }))))
}
