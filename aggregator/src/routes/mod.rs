//! The HTTP API: the router, shared state, and `ApiError`, which turns every failure into `{"error": {"code", "message", "field"}}`.

mod admin;
mod authz;
mod edges;
mod ingest;
pub mod input;
mod lifecycle;
mod ops;
mod page;
mod readers;

pub use admin::{bills_csv, run_billing_now as admin_run_billing, run_lifecycle_now};
pub use authz::{classify, decide, Caller, Role};
pub use edges::MAX_HEAD_BYTES;
pub use ops::openapi_document;
pub use page::{Page, MAX_LIMIT};

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use shared::clock::Clock;
use shared::overage::RuleError;
use shared::wire::{ErrorBody, ErrorDetail};

use crate::config::Config;
use crate::ingest_writer::{IngestQueue, SubmitError};
use crate::service_metrics::ServiceMetrics;
use crate::store::{Connection, Store, StoreError, Unwritable};

/// What every handler can reach.
pub struct AppState {
    /// The connection that writes (admin changes, billing); ingest writes through `queue`.
    pub store: Arc<Connection>,
    /// A second connection for reads (audit, bills, reports, exports), so reads never wait on a commit.
    pub reader: Arc<Connection>,
    /// A third for token look-ups and readiness alone: a long report on the
    /// reader never holds up an agent's push or a probe.
    pub tokens: Arc<Connection>,
    pub queue: IngestQueue,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<ServiceMetrics>,
    pub registry: Arc<Registry>,
    /// The admin token's hash, replaced when its file changes.
    pub admin_token: crate::auth::AdminToken,
    /// Wakes the outbox worker when lines were issued.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    pub faults: Arc<Faults>,
    /// Names stored before their domain was written, still reachable.
    pub legacy_names: input::LegacyNames,
}

impl AppState {
    /// The store connections, for liveness and the panic metrics.
    pub fn connections(&self) -> [&Arc<Connection>; 3] {
        [&self.store, &self.reader, &self.tokens]
    }
}

/// The fault hook behind the tests of panic containment: a handler panics
/// on purpose. Nothing in the service sets it (`startup::FaultHooks` does,
/// for tests).
#[derive(Debug, Default)]
pub struct Faults {
    pub panic_in_next_request: std::sync::atomic::AtomicBool,
}

pub type State = Arc<AppState>;

/// Every route: (method, path, the role that may call it, what it does). The
/// router, its authorization and the OpenAPI document are all built from this
/// table, and the README's "Who may call what" is checked against it.
pub const ROUTES: &[(&str, &str, Role, &str)] = &[
    (
        "post",
        "/v1/samples",
        Role::Cluster,
        "Push a batch of samples (at most 1,000 and 1 MiB)",
    ),
    (
        "post",
        "/v1/admin/accounts",
        Role::Admin,
        "Create an account; with parent, a sub-account of that main account",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}",
        Role::Admin,
        "An account: its state, the next change due, the state history, trial, orders, balance, contacts, licences, cap history and clusters",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/contacts",
        Role::Admin,
        "Add a contact: name, role (creator, global_resource_collaborator, finance_collaborator, collaborator), email and/or sms",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/trial",
        Role::Admin,
        "Start the 7-day free trial; once per main account and its sub-accounts",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/orders",
        Role::Admin,
        "Order licensed cores for a term of months or years, optionally auto-renewing and paid from the balance; recovers a stopped account",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/orders/{order}/renew",
        Role::Admin,
        "Renew an order's licence from its end day (a month unless months or years is given), once; recovers a stopped account",
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/orders/{order}/auto-renew",
        Role::Admin,
        "Turn an order's auto-renewal on or off",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/credits",
        Role::Admin,
        "Credit the prepaid balance (amount as a decimal string, reference taken once)",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/balance",
        Role::Admin,
        "The prepaid balance and its ledger, a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/notices",
        Role::Admin,
        "Notices issued to the account's contacts, newest first, with their delivery, a page at a time (limit=, cursor=)",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/clusters",
        Role::Admin,
        "Create a cluster with a generated token, or the one given (cmc_ and 64 lowercase hex); answers it once",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/clusters/{name}/rotate-token",
        Role::Admin,
        "Replace a cluster's token with a generated one, or the one given; the old one stops at once",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/licenses",
        Role::Admin,
        "Add a licence",
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/cap",
        Role::Admin,
        "Set the elastic cap (at least 500 cores)",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/samples",
        Role::Admin,
        "The audit trail: the stored samples of a day in order of at, a page at a time (limit=, cursor=)",
    ),
    ("post", "/v1/admin/billing-runs", Role::Admin, "Run billing now"),
    (
        "get",
        "/v1/admin/bills",
        Role::Admin,
        "Issued bill lines as JSON or CSV, a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/admin/outbox",
        Role::Admin,
        "Bill lines and their delivery to the billing backend, newest first, a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/reports/daily",
        Role::Admin,
        "The daily overage report of one account's day (day= and account= are required) as JSON, CSV or HTML",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/reader-tokens",
        Role::Admin,
        "Issue a reader token (cmr_ and 64 hex) for the account, labelled with name; answers it once. At most 100 live ones",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/reader-tokens",
        Role::Admin,
        "The account's reader tokens (id, name, created_at, revoked_at), never the tokens; a page at a time (limit=, cursor=)",
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/reader-tokens/{token_id}",
        Role::Admin,
        "Revoke a reader token; it stops at once (revoking it again answers it unchanged)",
    ),
    (
        "get",
        "/v1/accounts/{id}/reports/daily",
        Role::Reader,
        "The account's daily overage report (day= required) as JSON, CSV or HTML",
    ),
    (
        "get",
        "/v1/accounts/{id}/bills",
        Role::Reader,
        "The account's issued bill lines, of one day if day= is given, as JSON or CSV, a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/accounts/{id}/notices",
        Role::Reader,
        "Notices issued to the account's contacts, newest first, with their delivery, a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/accounts/{id}/export",
        Role::Reader,
        "The inputs of the account's bill of a day (day= required) as a replay case",
    ),
    ("get", "/healthz", Role::None, "Liveness"),
    ("get", "/readyz", Role::None, "Readiness: the database answers and can write"),
    ("get", "/metrics", Role::None, "Prometheus metrics"),
    ("get", "/v1/openapi.json", Role::None, "This API description"),
];

/// The handler of each route in `ROUTES`; a row without one panics when the
/// router is built, which every test of the service does.
fn handler(method: &str, path: &str) -> MethodRouter<State> {
    match (method, path) {
        ("post", "/v1/samples") => post(ingest::push_samples),
        ("post", "/v1/admin/accounts") => post(lifecycle::create_account),
        ("get", "/v1/admin/accounts/{id}") => get(lifecycle::get_account),
        ("post", "/v1/admin/accounts/{id}/contacts") => post(lifecycle::add_contact),
        ("post", "/v1/admin/accounts/{id}/trial") => post(lifecycle::start_trial),
        ("post", "/v1/admin/accounts/{id}/orders") => post(lifecycle::place_order),
        ("post", "/v1/admin/accounts/{id}/orders/{order}/renew") => post(lifecycle::renew_order),
        ("put", "/v1/admin/accounts/{id}/orders/{order}/auto-renew") => {
            put(lifecycle::set_auto_renew)
        }
        ("post", "/v1/admin/accounts/{id}/credits") => post(lifecycle::credit),
        ("get", "/v1/admin/accounts/{id}/balance") => get(lifecycle::balance),
        ("get", "/v1/admin/accounts/{id}/notices") => get(lifecycle::notices),
        ("post", "/v1/admin/accounts/{id}/clusters") => post(admin::create_cluster),
        ("post", "/v1/admin/accounts/{id}/clusters/{name}/rotate-token") => {
            post(admin::rotate_token)
        }
        ("post", "/v1/admin/accounts/{id}/licenses") => post(admin::add_licence),
        ("put", "/v1/admin/accounts/{id}/cap") => put(admin::set_cap),
        ("get", "/v1/admin/accounts/{id}/samples") => get(admin::audit_samples),
        ("post", "/v1/admin/billing-runs") => post(admin::billing_run),
        ("get", "/v1/admin/bills") => get(admin::bills),
        ("get", "/v1/admin/outbox") => get(admin::outbox),
        ("get", "/v1/reports/daily") => get(admin::daily_report),
        ("post", "/v1/admin/accounts/{id}/reader-tokens") => post(readers::issue),
        ("get", "/v1/admin/accounts/{id}/reader-tokens") => get(readers::list),
        ("delete", "/v1/admin/accounts/{id}/reader-tokens/{token_id}") => delete(readers::revoke),
        ("get", "/v1/accounts/{id}/reports/daily") => get(readers::daily_report),
        ("get", "/v1/accounts/{id}/bills") => get(readers::bills),
        // The admin route's own handler: it takes the account from the path.
        ("get", "/v1/accounts/{id}/notices") => get(readers::customer_notices),
        ("get", "/v1/accounts/{id}/export") => get(readers::export),
        ("get", "/healthz") => get(ops::healthz),
        ("get", "/readyz") => get(ops::readyz),
        ("get", "/metrics") => get(ops::metrics),
        ("get", "/v1/openapi.json") => get(ops::openapi),
        _ => panic!("{method} {path} is in ROUTES without a handler"),
    }
}

/// The router, built from `ROUTES`: each route with its handler behind the
/// gate of its role. Admin and reader routes are authorized before the
/// handler runs; the cluster route authenticates its agent itself, in one
/// look-up (the ingest fast path); `none` routes are open.
pub fn router(state: State) -> Router {
    let mut routes = Router::new();
    for (method, path, role, _) in ROUTES {
        let mut route = handler(method, path);
        if path.contains('{') {
            route = route.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                input::check_path,
            ));
        }
        // A body is JSON, checked after the gate (an unknown caller learns
        // nothing); ingest checks it itself once its agent is known.
        if matches!(*method, "post" | "put") && *role != Role::Cluster {
            route = route.route_layer(axum::middleware::from_fn(edges::json_bodies_only));
        }
        if matches!(role, Role::Admin | Role::Reader) {
            route = route.route_layer(axum::middleware::from_fn_with_state(
                authz::Gate {
                    state: state.clone(),
                    role: *role,
                },
                authz::authorize,
            ));
        }
        routes = routes.route(path, route);
    }
    let metrics = state.metrics.clone();
    routes
        .method_not_allowed_fallback(edges::method_not_allowed)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.faults.clone(),
            ops::fault_hook,
        ))
        // A panicking handler answers 500 in the API's format; the service,
        // its connections and the next request are unharmed.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            move |payload: Box<dyn std::any::Any + Send>| {
                let message = crate::store::panic_message(payload.as_ref());
                metrics
                    .panics
                    .get_or_create(&crate::service_metrics::PlaceLabels {
                        place: "request".into(),
                    })
                    .inc();
                tracing::error!(panic = %message, "a request handler panicked; answered 500 and the service goes on");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the service log",
                )
                .into_response()
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edges::time_limit,
        ))
        .layer(axum::middleware::from_fn(edges::refuse_declared_too_large))
        .layer(axum::middleware::from_fn(edges::refuse_head_too_large))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::observe,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            shared::wire::MAX_BATCH_BYTES,
        ))
        .with_state(state)
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for a 503.
    pub retry_after_secs: Option<u64>,
}

/// When a client should retry a write the disk refused: long enough for an
/// operator or an autoscaler to free space, short next to an agent's hour.
pub const DISK_RETRY_AFTER_SECS: u64 = 60;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The database cannot write for now (full or failing disk): 503 naming
    /// the cause, with `Retry-After`. The transaction was rolled back, so
    /// nothing of the request was stored or acknowledged.
    pub fn unwritable(cause: Unwritable, error: impl std::fmt::Display) -> ApiError {
        tracing::warn!(%error, cause = cause.cause(), "request refused: the database cannot write");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            cause.code(),
            format!(
                "{}; nothing of this request was stored; retry later ({error})",
                cause.cause()
            ),
        )
        .retry_after(DISK_RETRY_AFTER_SECS)
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).field(field)
    }

    pub fn unprocessable(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message).field(field)
    }

    /// An unexpected failure: logged in full, answered without detail. A
    /// store or ingest error that is the disk's doing is not unexpected: it
    /// is answered as `unwritable` (503), whichever handler passes it here.
    pub fn internal(error: impl std::fmt::Display + 'static) -> ApiError {
        let any: &dyn std::any::Any = &error;
        let cause = if let Some(SubmitError::Store(f)) = any.downcast_ref::<SubmitError>() {
            f.unwritable
        } else if let Some(e) = any.downcast_ref::<StoreError>() {
            e.unwritable()
        } else {
            None
        };
        if let Some(cause) = cause {
            return ApiError::unwritable(cause, error);
        }
        tracing::error!(%error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the service log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        // Every 401 is a missing, unknown or revoked token (RFC 9110 section 11.6.1).
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use StoreError as E;
        if let Some(cause) = e.unwritable() {
            return ApiError::unwritable(cause, e);
        }
        match e {
            E::AccountExists(_) | E::ClusterExists(..) => {
                ApiError::new(StatusCode::CONFLICT, "exists", e.to_string())
            }
            E::UnknownAccount(_) | E::UnknownCluster(..) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            E::UnknownOrder(..) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()).field("order")
            }
            E::UnknownReaderToken(..) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()).field("token_id")
            }
            E::InvalidAccountId(_) => ApiError::unprocessable("id", e.to_string()),
            E::InvalidName(_) => ApiError::unprocessable("name", e.to_string()),
            E::InvalidToken(_) => ApiError::unprocessable("token", e.to_string()),
            E::TokenInUse => {
                ApiError::new(StatusCode::CONFLICT, "token_in_use", e.to_string()).field("token")
            }
            E::Rule(RuleError::CapBelowMinimum { .. } | RuleError::CapAboveMaximum { .. }) => {
                ApiError::unprocessable("cores", e.to_string())
            }
            E::Rule(RuleError::LicenceCores(_)) => ApiError::unprocessable("cores", e.to_string()),
            E::Rule(RuleError::LicencePeriod { .. }) => {
                ApiError::unprocessable("end", e.to_string())
            }
            E::Rule(_) => ApiError::unprocessable("", e.to_string()),
            E::SamplesPruned { .. } => {
                ApiError::new(StatusCode::GONE, "samples_pruned", e.to_string()).field("day")
            }
            E::Invalid { field, .. } => ApiError::unprocessable(field, e.to_string()),
            E::Conflict { code, field, .. } => {
                ApiError::new(StatusCode::CONFLICT, code, e.to_string()).field(field)
            }
            E::DataDeleted { .. } => {
                ApiError::new(StatusCode::GONE, "data_deleted", e.to_string()).field("day")
            }
            E::TooNew { .. } | E::Corrupt(_) | E::Database(_) | E::Panicked { .. } => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::Busy => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string())
            }
            SubmitError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string())
            }
            SubmitError::Store(ref f) => match f.unwritable {
                Some(cause) => ApiError::unwritable(cause, e),
                None => ApiError::internal(e),
            },
        }
    }
}

/// Runs `f` on a store connection off the async threads. A panic inside it
/// is caught by the connection (`Connection::with`): the caller gets a 500,
/// the connection goes on serving.
pub async fn blocking<T: Send + 'static>(
    connection: &Arc<Connection>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let connection = connection.clone();
    tokio::task::spawn_blocking(move || connection.with(f))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest_writer::CommitFailure;

    #[test]
    fn every_route_has_a_handler_and_reader_routes_name_their_account() {
        let mut seen = std::collections::HashSet::new();
        for (method, path, role, _) in ROUTES {
            assert!(seen.insert((method, path)), "{method} {path} twice");
            drop(handler(method, path));
            if *role == Role::Reader {
                assert!(path.contains("{id}"), "{path}: a reader route needs {{id}}");
            }
        }
    }

    #[test]
    fn the_readmes_who_may_call_what_table_is_the_route_table() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Who may call what")
            .nth(1)
            .expect("README has a Who may call what section");
        let section = section.split("\n#").next().unwrap();
        let documented: std::collections::BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| l.replace("` | ", " ").trim_end_matches(" |").to_string())
            .collect();
        let table: std::collections::BTreeSet<String> = ROUTES
            .iter()
            .map(|(m, p, r, _)| format!("{} {p} {}", m.to_uppercase(), r.as_str()))
            .collect();
        assert_eq!(documented, table, "README's table against ROUTES");
    }

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    fn answered(e: ApiError) -> (u16, Option<String>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn a_full_disk_is_a_503_that_names_the_cause_and_says_when_to_retry() {
        let (status, retry, body) = answered(ApiError::from(sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert_eq!(status, 503);
        assert_eq!(retry.as_deref(), Some("60"));
        assert_eq!(body["error"]["code"], "disk_full");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("disk is full"), "{message}");
        assert!(
            message.contains("nothing of this request was stored"),
            "{message}"
        );
    }

    #[test]
    fn a_disk_io_error_is_a_503_too() {
        let (status, retry, body) =
            answered(ApiError::from(sqlite(rusqlite::ffi::SQLITE_IOERR_FSYNC)));
        assert_eq!((status, retry.as_deref()), (503, Some("60")));
        assert_eq!(body["error"]["code"], "disk_error");
    }

    #[test]
    fn an_ingest_commit_the_disk_refused_is_a_503_also_when_passed_as_an_internal_error() {
        let refused = || {
            SubmitError::Store(CommitFailure {
                unwritable: Some(Unwritable::DiskFull),
                message: "database: database or disk is full".into(),
            })
        };
        // `routes::ingest` hands a store failure to `ApiError::internal`.
        for e in [ApiError::internal(refused()), ApiError::from(refused())] {
            let (status, retry, body) = answered(e);
            assert_eq!((status, retry.as_deref()), (503, Some("60")));
            assert_eq!(body["error"]["code"], "disk_full");
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database or disk is full"));
        }
    }

    #[test]
    fn other_store_failures_stay_an_opaque_500() {
        let other = SubmitError::Store(CommitFailure {
            unwritable: None,
            message: "database: constraint failed".into(),
        });
        for e in [
            ApiError::internal(other),
            ApiError::from(sqlite(rusqlite::ffi::SQLITE_CORRUPT)),
        ] {
            let (status, retry, body) = answered(e);
            assert_eq!((status, retry), (500, None));
            assert_eq!(body["error"]["code"], "internal");
            assert_eq!(
                body["error"]["message"],
                "internal error; see the service log"
            );
        }
    }
}
