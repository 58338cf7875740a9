//! Who may call what: every route declares a `Role` in `ROUTES`; `authorize` classifies the bearer token (admin, reader, customer, cluster, logs, or none of the service's) and answers 401 or 403 before the handler runs.

use std::collections::HashMap;

use axum::extract::{Path, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;

use super::{blocking, ApiError};
use crate::security::tokens::{
    bearer, looks_like_cluster_token, looks_like_customer_token, looks_like_logs_token,
    looks_like_reader_token,
};
use crate::state::AppState;
use crate::store::{AccountTokenRole, ClusterIdentity, ReaderIdentity};
use std::sync::Arc;

/// Who may call a route: the least power that does the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Anyone: health, readiness, metrics, the API description.
    None,
    /// The operators' admin token: everything the admin API does.
    Admin,
    /// A customer's read-only token bound to the account in the path
    /// (`{id}`); the admin token may call these routes too.
    Reader,
    /// An agent's cluster token: `POST /v1/samples`, for its own cluster.
    /// The handler authenticates it itself (one look-up, the ingest fast
    /// path) and refuses other callers through [`refusal`].
    Cluster,
    /// A log service's `logs` token: `PUT /v1/log-storage/usage`, for its
    /// own account. The handler authenticates it itself ([`logs_of`]).
    Logs,
    /// A customer's token bound to the account in the path: its own
    /// actions (the cap, auto-renewal, image authorizations, orders paid
    /// from the balance). It may call reader routes too; the admin token
    /// may call these.
    Customer,
}

impl Role {
    /// The name in `ROUTES`, the OpenAPI document and docs/api.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Admin => "admin",
            Role::Reader => "reader",
            Role::Cluster => "cluster",
            Role::Logs => "logs",
            Role::Customer => "customer",
        }
    }

    /// What a caller must present, for the messages of 401 and 403.
    fn needs(self) -> &'static str {
        match self {
            Role::None => "no token",
            Role::Admin => "the admin role (the admin token)",
            Role::Reader => {
                "the reader role (a reader or customer token of this account, or the admin token)"
            }
            Role::Cluster => "the cluster role (an agent's cluster token)",
            Role::Logs => "the logs role (a log service's logs token)",
            Role::Customer => {
                "the customer role (a customer token of this account, or the admin token)"
            }
        }
    }
}

/// Who presented the request, by its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No bearer token.
    Anonymous,
    /// A token that is none of the service's, or a revoked one.
    Unknown,
    Admin,
    Reader(ReaderIdentity),
    Cluster(ClusterIdentity),
    Logs(ReaderIdentity),
    Customer(ReaderIdentity),
}

impl Caller {
    fn kind(&self) -> &'static str {
        match self {
            Caller::Anonymous => "no token",
            Caller::Unknown => "an unknown token",
            Caller::Admin => "the admin token",
            Caller::Reader(_) => "a reader token",
            Caller::Cluster(_) => "a cluster token",
            Caller::Logs(_) => "a logs token",
            Caller::Customer(_) => "a customer token",
        }
    }
}

/// Classifies a bearer token. The admin token is compared by its hash in
/// constant time; a reader or cluster token is looked up by its hash on the
/// reading connection, and only a string of that form is looked up, so
/// garbage costs no query.
pub async fn classify(state: &Arc<AppState>, token: Option<&str>) -> Result<Caller, ApiError> {
    let Some(token) = token else {
        return Ok(Caller::Anonymous);
    };
    if state.admin_token.matches(token) {
        return Ok(Caller::Admin);
    }
    let owned = token.to_string();
    if looks_like_reader_token(token) {
        let found = blocking(&state.tokens, move |s| s.tokens().reader_for_token(&owned)).await?;
        return Ok(found.map_or(Caller::Unknown, Caller::Reader));
    }
    for (looks_like, role, caller) in [
        (
            looks_like_logs_token as fn(&str) -> bool,
            AccountTokenRole::Logs,
            Caller::Logs as fn(ReaderIdentity) -> Caller,
        ),
        (
            looks_like_customer_token,
            AccountTokenRole::Customer,
            Caller::Customer,
        ),
    ] {
        if looks_like(token) {
            let found = blocking(&state.tokens, move |s| {
                s.tokens().account_for_token(&owned, role)
            })
            .await?;
            return Ok(found.map_or(Caller::Unknown, caller));
        }
    }
    if looks_like_cluster_token(token) {
        let found = blocking(&state.tokens, move |s| s.ingest().cluster_for_token(&owned)).await?;
        return Ok(found.map_or(Caller::Unknown, Caller::Cluster));
    }
    Ok(Caller::Unknown)
}

/// Whether `caller` may call a route of `role` whose `{id}` is `account`:
/// 401 for no token or an unknown one, 403 (naming the role needed, never
/// the token) for a valid token of the wrong role or another account.
pub fn decide(role: Role, caller: &Caller, account: Option<&str>) -> Result<(), ApiError> {
    let allowed = match (role, caller) {
        (Role::None, _) => true,
        (_, Caller::Anonymous) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("this route needs {}: Authorization: Bearer …", role.needs()),
            ))
        }
        (_, Caller::Unknown) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "unknown or revoked token; this route needs {}",
                    role.needs()
                ),
            ))
        }
        (Role::Admin, c) => *c == Caller::Admin,
        (Role::Reader | Role::Customer, Caller::Admin) => true,
        (Role::Reader, Caller::Reader(r) | Caller::Customer(r))
        | (Role::Customer, Caller::Customer(r)) => {
            if Some(r.account.as_str()) != account {
                return Err(forbidden(format!(
                    "this route needs {}; {} is for another account",
                    role.needs(),
                    caller.kind().replacen("a ", "this ", 1)
                )));
            }
            true
        }
        (Role::Reader | Role::Customer, _) => false,
        (Role::Cluster, c) => matches!(c, Caller::Cluster(_)),
        (Role::Logs, c) => matches!(c, Caller::Logs(_)),
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden(format!(
            "this route needs {}; {} cannot call it",
            role.needs(),
            caller.kind()
        )))
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// What a refused caller of a `role` route is told: classifies the token and
/// answers 401 or 403. For handlers that authenticate their own callers
/// (ingest) and found no caller they take.
pub async fn refusal(state: &Arc<AppState>, role: Role, token: Option<&str>) -> ApiError {
    match classify(state, token).await {
        Ok(caller) => decide(role, &caller, None)
            .err()
            .unwrap_or_else(|| refused_unknown(role)),
        Err(e) => e,
    }
}

/// The account of a log service's `logs` token, or the refusal: 401 for a
/// missing or unknown token, 403 for a token of another role.
pub async fn logs_of(
    state: &Arc<AppState>,
    token: Option<&str>,
) -> Result<ReaderIdentity, ApiError> {
    match classify(state, token).await? {
        Caller::Logs(identity) => Ok(identity),
        caller => Err(decide(Role::Logs, &caller, None)
            .err()
            .unwrap_or_else(|| refused_unknown(Role::Logs))),
    }
}

fn refused_unknown(role: Role) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "unknown or revoked token; this route needs {}",
            role.needs()
        ),
    )
}

/// The token of a request's `Authorization: Bearer` header.
pub fn request_token(request: &Request) -> Option<&str> {
    header_token(request.headers())
}

/// The token of an `Authorization: Bearer` header among `headers`.
pub fn header_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The state of one route's gate: the service and the role the route needs.
#[derive(Clone)]
pub struct Gate {
    pub state: Arc<AppState>,
    pub role: Role,
}

/// The middleware in front of every admin and reader route.
pub async fn authorize(Extract(gate): Extract<Gate>, mut request: Request, next: Next) -> Response {
    let caller = match classify(&gate.state, request_token(&request)).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    // Only a reader's or a customer's answer depends on the account in the path.
    let account = match (&caller, gate.role) {
        (Caller::Reader(_) | Caller::Customer(_), Role::Reader | Role::Customer) => request
            .extract_parts::<Path<HashMap<String, String>>>()
            .await
            .ok()
            .and_then(|Path(mut params)| params.remove("id")),
        _ => None,
    };
    match decide(gate.role, &caller, account.as_deref()) {
        Ok(()) => {
            // A change's handler records who made it (`audit::By`).
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            tracing::debug!(role = gate.role.as_str(), caller = caller.kind(), status = %e.status, "request refused");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(account: &str) -> Caller {
        Caller::Reader(ReaderIdentity {
            account: account.into(),
            token_id: 1,
        })
    }

    fn customer(account: &str) -> Caller {
        Caller::Customer(ReaderIdentity {
            account: account.into(),
            token_id: 2,
        })
    }

    fn cluster() -> Caller {
        Caller::Cluster(ClusterIdentity {
            account: "a".into(),
            cluster: "prod".into(),
        })
    }

    fn status(role: Role, caller: &Caller, account: Option<&str>) -> u16 {
        decide(role, caller, account).map_or_else(|e| e.status.as_u16(), |()| 200)
    }

    #[test]
    fn each_role_takes_only_its_callers() {
        let a = Some("a");
        let table = [
            (Role::None, [200, 200, 200, 200, 200, 200, 200, 200, 200]),
            (Role::Admin, [401, 401, 200, 403, 403, 403, 403, 403, 403]),
            (Role::Reader, [401, 401, 200, 200, 403, 403, 403, 200, 403]),
            (Role::Cluster, [401, 401, 403, 403, 403, 200, 403, 403, 403]),
            (Role::Logs, [401, 401, 403, 403, 403, 403, 200, 403, 403]),
            (
                Role::Customer,
                [401, 401, 200, 403, 403, 403, 403, 200, 403],
            ),
        ];
        let callers = [
            Caller::Anonymous,
            Caller::Unknown,
            Caller::Admin,
            reader("a"),
            reader("b"),
            cluster(),
            Caller::Logs(ReaderIdentity {
                account: "a".into(),
                token_id: 1,
            }),
            customer("a"),
            customer("b"),
        ];
        for (role, expected) in table {
            let got: Vec<u16> = callers.iter().map(|c| status(role, c, a)).collect();
            assert_eq!(got, expected, "{role:?}");
        }
        // A reader route without an account in the path takes no reader.
        assert_eq!(status(Role::Reader, &reader("a"), None), 403);
    }

    #[test]
    fn a_refusal_names_the_role_needed() {
        let e = decide(Role::Admin, &reader("a"), Some("a")).unwrap_err();
        assert!(e.message.contains("the admin role"), "{}", e.message);
        let e = decide(Role::Reader, &reader("b"), Some("a")).unwrap_err();
        assert!(e.message.contains("the reader role"), "{}", e.message);
        assert!(e.message.contains("another account"), "{}", e.message);
        let e = decide(Role::Customer, &reader("a"), Some("a")).unwrap_err();
        assert!(e.message.contains("the customer role"), "{}", e.message);
        let e = decide(Role::Customer, &customer("b"), Some("a")).unwrap_err();
        assert!(
            e.message
                .contains("this customer token is for another account"),
            "{}",
            e.message
        );
        let e = decide(Role::Cluster, &Caller::Admin, None).unwrap_err();
        assert!(e.message.contains("the cluster role"), "{}", e.message);
    }
}
