//! The HTTP API: the router, shared state, and `ApiError`, which turns every failure into `{"error": {"code", "message", "field"}}`.

mod accounts;
mod admin;
mod audit;
mod authz;
pub mod automatic_errors;
mod console;
mod edges;
mod images;
mod ingest;
pub mod input;
mod log_storage;
mod ops;
mod page;
mod readers;
mod statements;
pub mod transport;

pub use admin::bills_csv;
pub use authz::{classify, decide, Caller, Role};
pub use edges::MAX_HEAD_BYTES;
pub use ops::openapi_document;
pub use page::{Page, MAX_LIMIT};

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use shared::overage::RuleError;
use shared::wire::{ErrorBody, ErrorDetail};

use crate::ingest::SubmitError;
use crate::state::AppState;
use crate::store::{Connection, Store, StoreError, Unwritable};

/// Every route: (method, path, the role that may call it, what it does). The
/// router, its authorization and the OpenAPI document are all built from this
/// table, and docs/api.md's "Who may call what" is checked against it.
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
        "An account: its state, the next change due, the state history, trial, orders, balance, contacts, licences, cap history, clusters and image-scan authorizations",
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
        "Order a product: licensed cores (pro, the default) or log storage (log_storage, gb) for a term of months or years, optionally auto-renewing and paid from the balance, which recovers a stopped one; or image-scan authorizations (image_scan, quantity)",
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
        "/v1/admin/audit",
        Role::Admin,
        "The audit log: every change, by whom (a token's role and id, or system), from where, through what, and its before and after values; oldest first, a page at a time (account=, actor=, since=, until=, limit=, cursor=)",
    ),
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
        "/v1/accounts/{id}/audit",
        Role::Customer,
        "The account's own entries of the audit log, oldest first, a page at a time (actor=, since=, until=, limit=, cursor=); an operator's address and token are not shown",
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
    (
        "post",
        "/v1/images",
        Role::Cluster,
        "Push a node's images now (at most 5,000 and 4 MiB): the node's newest list replaces its older one; an older list arriving late is answered stale",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/images",
        Role::Admin,
        "Add images held in a registry (source registry) to the account's inventory",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/images",
        Role::Admin,
        "The account's image inventory (status=authorized or unauthorized filters), a page at a time (limit=, cursor=)",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/image-authorizations",
        Role::Admin,
        "Authorize a batch of image IDs: one authorization each for those not yet authorized; refused whole (409 insufficient_authorizations) when it needs more than is available",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/image-authorizations",
        Role::Admin,
        "Image-scan authorizations: purchased, consumed, refunded, the trial's allowance, available, automatic authorization and the packs",
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/image-authorizations/auto",
        Role::Admin,
        "Automatic authorization of images first seen, with max_daily (0: no limit)",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/image-authorizations/receipts",
        Role::Admin,
        "Every consumption and every automatic attempt refused, oldest first, a page at a time (limit=, cursor=)",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/image-authorizations/refund",
        Role::Admin,
        "Refund unused purchased authorizations to the balance at the price paid",
    ),
    (
        "get",
        "/v1/admin/products",
        Role::Admin,
        "The products (pro, image_scan, log_storage) and their pauses",
    ),
    (
        "put",
        "/v1/admin/products/{product}/pause",
        Role::Admin,
        "Pause new purchases of a product from paused_from to paused_until (both included); what was bought stays usable",
    ),
    (
        "delete",
        "/v1/admin/products/{product}/pause",
        Role::Admin,
        "Lift a product's pause",
    ),
    (
        "get",
        "/v1/accounts/{id}/images",
        Role::Reader,
        "The account's image inventory (status= filters), a page at a time (limit=, cursor=)",
    ),
    (
        "get",
        "/v1/accounts/{id}/image-authorizations",
        Role::Reader,
        "The account's image-scan authorizations: purchased, consumed, refunded, available, the packs",
    ),
    (
        "get",
        "/v1/accounts/{id}/image-authorizations/receipts",
        Role::Reader,
        "The account's authorization receipts, oldest first, a page at a time (limit=, cursor=)",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/customer-tokens",
        Role::Admin,
        "Issue a customer token (cmu_ and 64 hex) labelled with name: it reads as a reader token does and acts on the account's own cap, auto-renewal, image authorizations and orders paid from the balance; answers it once. At most 100 live ones",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/customer-tokens",
        Role::Admin,
        "The account's customer tokens (id, name, created_at, revoked_at), never the tokens; a page at a time (limit=, cursor=)",
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/customer-tokens/{token_id}",
        Role::Admin,
        "Revoke a customer token; it stops at once",
    ),
    (
        "get",
        "/v1/accounts/{id}/balance",
        Role::Reader,
        "The account's prepaid balance and its ledger, oldest entry first (limit=, cursor=)",
    ),
    (
        "put",
        "/v1/accounts/{id}/cap",
        Role::Customer,
        "Set the account's elastic cap from now: cores per day, at least 500",
    ),
    (
        "post",
        "/v1/accounts/{id}/orders",
        Role::Customer,
        "Order for the account as the admin route does, paid from the balance (pay_from_balance must be true)",
    ),
    (
        "put",
        "/v1/accounts/{id}/orders/{order}/auto-renew",
        Role::Customer,
        "Turn an order's auto-renewal on or off",
    ),
    (
        "post",
        "/v1/accounts/{id}/image-authorizations",
        Role::Customer,
        "Authorize a batch of the account's images (image_ids), each taking one authorization; all or none",
    ),
    (
        "put",
        "/v1/accounts/{id}/image-authorizations/auto",
        Role::Customer,
        "Turn automatic authorization of new images on or off, with a daily limit",
    ),
    (
        "put",
        "/v1/accounts/{id}/log-storage/orders/{order}/auto-renew",
        Role::Customer,
        "Turn a log-storage order's auto-renewal on or off",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/log-tokens",
        Role::Admin,
        "Issue a logs token (cml_ and 64 hex) for the account's log service, labelled with name; answers it once. At most 100 live ones",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/log-tokens",
        Role::Admin,
        "The account's logs tokens (id, name, created_at, revoked_at), never the tokens; a page at a time (limit=, cursor=)",
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/log-tokens/{token_id}",
        Role::Admin,
        "Revoke a logs token; it stops at once",
    ),
    (
        "put",
        "/v1/log-storage/usage",
        Role::Logs,
        "Report the bytes held per log day; answers the quota, the bytes used, the state, whether writes are accepted and the days to purge, oldest first",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/log-storage",
        Role::Admin,
        "Log storage: the state and its next change, the quota, the last usage, the orders, the purges and usage against quota by day",
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/log-storage/expansions",
        Role::Admin,
        "Add gb to the current log-storage term from today to its end, priced pro rata by the days left",
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/log-storage/orders/{order}/auto-renew",
        Role::Admin,
        "Turn a log-storage order's auto-renewal on or off",
    ),
    (
        "get",
        "/v1/accounts/{id}/log-storage",
        Role::Reader,
        "The account's log storage: state, quota, usage, orders, purges",
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/statements/{month}",
        Role::Admin,
        "The monthly statement (format=json|csv|html): daily lines, adjustments issued, orders and renewals, credits, refunds, the balance at each end; the JSON signed with Ed25519",
    ),
    (
        "get",
        "/v1/accounts/{id}/statements/{month}",
        Role::Reader,
        "The account's monthly statement (format=json|csv|html); the JSON signed",
    ),
    (
        "get",
        "/v1/statement-key",
        Role::None,
        "The public key that signs statements (algorithm, key_id, public_key): what aggregator verify-statement --key takes",
    ),
    ("get", "/", Role::None, "The console (a redirect to /console)"),
    (
        "get",
        "/console",
        Role::None,
        "The console: an operator's accounts, a customer's own account, or the login form",
    ),
    (
        "get",
        "/console/login",
        Role::None,
        "The console's login form: a token opens a session",
    ),
    (
        "post",
        "/console/login",
        Role::None,
        "Log in (a form: token, csrf, next): a session cookie, HttpOnly and SameSite=Strict",
    ),
    (
        "post",
        "/console/logout",
        Role::None,
        "Log out (a form: csrf): the session ends",
    ),
    (
        "get",
        "/console/lang",
        Role::None,
        "Switch the console's language (to=en|zh-CN), then back to next",
    ),
    (
        "get",
        "/console/accounts",
        Role::Admin,
        "The console's accounts page: every account's state, licensed cores, yesterday, month to date and flags; sortable, filterable, paged; the service's panel",
    ),
    (
        "get",
        "/console/accounts/{id}",
        Role::Reader,
        "The console's overview of an account: the licence shortfall, each product's state and next change, today so far",
    ),
    (
        "get",
        "/console/accounts/{id}/usage",
        Role::Reader,
        "The console's usage page: a month of daily total cores against licensed cores and the cap, the billed amounts, today's nodes",
    ),
    (
        "get",
        "/console/accounts/{id}/purchase",
        Role::Reader,
        "The console's purchase page: the cap, orders, auto-renewal, the balance and its ledger (forms for a customer or an operator)",
    ),
    (
        "post",
        "/console/accounts/{id}/cap",
        Role::Customer,
        "Set the cap from the console (a form: cores, csrf)",
    ),
    (
        "post",
        "/console/accounts/{id}/orders",
        Role::Customer,
        "Order from the console, paid from the balance (a form: product, quantity, months, csrf)",
    ),
    (
        "post",
        "/console/accounts/{id}/auto-renew",
        Role::Customer,
        "Turn an order's auto-renewal on or off from the console (a form: product, order, auto_renew, csrf)",
    ),
    (
        "get",
        "/console/accounts/{id}/images",
        Role::Reader,
        "The console's images page: the inventory by status, a batch to authorize, automatic authorization",
    ),
    (
        "post",
        "/console/accounts/{id}/images/authorize",
        Role::Customer,
        "Authorize chosen images from the console (a form: image repeated, confirm, csrf): a confirmation first",
    ),
    (
        "post",
        "/console/accounts/{id}/images/auto",
        Role::Customer,
        "Automatic authorization from the console (a form: auto_authorize, max_daily, csrf)",
    ),
    (
        "get",
        "/console/accounts/{id}/log-storage",
        Role::Reader,
        "The console's log storage page: the quota against the bytes used by day, the purges",
    ),
    (
        "get",
        "/console/accounts/{id}/bills",
        Role::Reader,
        "The console's bills page: bill lines and each month's statement",
    ),
    (
        "get",
        "/console/accounts/{id}/statements/{month}",
        Role::Reader,
        "A monthly statement in the console (format=json|csv|html)",
    ),
    (
        "get",
        "/console/accounts/{id}/reports/{day}",
        Role::Reader,
        "A day's report page in the console",
    ),
    (
        "get",
        "/console/accounts/{id}/notices",
        Role::Reader,
        "The console's notices page: what was sent to whom and when",
    ),
    (
        "get",
        "/console/accounts/{id}/changes",
        Role::Customer,
        "The console's changes page: the account's newest entries of the audit log",
    ),
    ("get", "/healthz", Role::None, "Liveness"),
    ("get", "/readyz", Role::None, "Readiness: the database answers and can write"),
    ("get", "/metrics", Role::None, "Prometheus metrics"),
    ("get", "/v1/openapi.json", Role::None, "This API description"),
];

/// The domain of one input: the JSON type a body field takes (or the text a
/// path or query parameter must read as) and the values the handler accepts.
/// The OpenAPI document states each as a JSON Schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A string of `min_chars` to `max_chars` characters (unbounded when `None`).
    Text {
        min_chars: u32,
        max_chars: Option<u32>,
    },
    /// An account ID or cluster name (`shared::domain::check_name`): 1 to
    /// 64 ASCII letters, digits, `-`, `_`, `.`, not starting with `.` or `-`.
    Name,
    /// A node's name: the same alphabet, 1 to 253 characters.
    NodeName,
    /// A calendar day, `YYYY-MM-DD`, from 2000-01-01 to 2199-12-31.
    Day,
    /// A month, `YYYY-MM`, from 2000-01 to 2199-12.
    Month,
    /// An RFC 3339 instant with an offset or `Z`, in the same days.
    Instant,
    /// Money as a string of a plain decimal, such as `"100.00"`
    /// (`shared::domain::parse_money`): never a JSON number.
    Decimal,
    /// A token of the generated form: the prefix, `_` and 64 lowercase hex digits.
    Token(&'static str),
    /// An email address: one `@`, a dot in the domain, at most 254 characters.
    Email,
    /// A phone number in E.164 form: `+` and 8 to 15 digits.
    Phone,
    /// A whole number from `min` to `max`.
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An image ID: `sha256:` and 64 lowercase hex digits.
    ImageId,
    /// An array of at most `max_items` image IDs.
    ImageIds {
        max_items: u32,
    },
    /// An array of at most `max_items` strings of at most `max_chars` characters.
    TextList {
        max_items: u32,
        max_chars: u32,
    },
    /// An array of at most `max_items` objects with these fields; unknown fields are ignored.
    Objects {
        fields: &'static [Input],
        max_items: u32,
    },
}

/// One named input of a route: a path or query parameter, or a body field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub name: &'static str,
    pub domain: Domain,
    pub required: bool,
    pub doc: &'static str,
}

impl Input {
    const fn required(name: &'static str, domain: Domain, doc: &'static str) -> Input {
        Input {
            name,
            domain,
            required: true,
            doc,
        }
    }

    const fn optional(name: &'static str, domain: Domain, doc: &'static str) -> Input {
        Input {
            name,
            domain,
            required: false,
            doc,
        }
    }
}

/// The JSON body a route reads, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The handler reads no body.
    None,
    /// A JSON object with these fields. `closed`: an unknown field is refused
    /// (`deny_unknown_fields`). `may_be_empty`: an empty body stands for `{}`.
    Object {
        fields: &'static [Input],
        closed: bool,
        may_be_empty: bool,
    },
}

/// Everything a route reads from its request besides the token: what its
/// handler's extractors and serde structs take. The OpenAPI document is built
/// from this and `ROUTES`; the route fuzzer sends hostile values to each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub path: &'static [Input],
    pub query: &'static [Input],
    pub body: Body,
}

const ACCOUNT_ID: Input = Input::required("id", Domain::Name, "the account");
const MONTH: Input = Input::required(
    "month",
    Domain::Month,
    "the month, YYYY-MM, in the billing zone",
);

const CLUSTER_NAME: Input = Input::required("name", Domain::Name, "the cluster");
const ORDER_ID: Input = Input::required(
    "order",
    Domain::Integer {
        min: 1,
        max: i64::MAX,
    },
    "the order's id",
);
const TOKEN_ID: Input = Input::required(
    "token_id",
    Domain::Integer {
        min: 1,
        max: i64::MAX,
    },
    "the reader token's id",
);
const TERM_MONTHS: Domain = Domain::Integer {
    min: 1,
    max: shared::lifecycle::MAX_TERM_MONTHS as i64,
};
const TERM_YEARS: Domain = Domain::Integer {
    min: 1,
    max: shared::lifecycle::MAX_TERM_MONTHS as i64 / 12,
};
const DAY: Input = Input::optional("day", Domain::Day, "the day");
const REQUIRED_DAY: Input = Input::required("day", Domain::Day, "the day");
const LIMIT: Input = Input::optional(
    "limit",
    Domain::Integer {
        min: 1,
        max: 10_000,
    },
    "the most items one page holds",
);
const CURSOR: Input = Input::optional(
    "cursor",
    Domain::Text {
        min_chars: 1,
        max_chars: None,
    },
    "where the next page starts: the previous page's next_cursor",
);
const FORMAT_JSON_CSV: Input = Input::optional(
    "format",
    Domain::OneOf(&["json", "csv"]),
    "the answer's format (json unless given)",
);
const FORMAT_JSON_CSV_HTML: Input = Input::optional(
    "format",
    Domain::OneOf(&["json", "csv", "html"]),
    "the answer's format (json unless given)",
);
const PAGE: &[Input] = &[LIMIT, CURSOR];
const AUDIT_ACTOR: Input = Input::optional(
    "actor",
    Domain::Text {
        min_chars: 1,
        max_chars: Some(128),
    },
    "entries by one role (admin, customer, reader, logs, cluster, system) or one token (role:id)",
);
const AUDIT_SINCE: Input = Input::optional("since", Domain::Instant, "entries at or after");
const AUDIT_UNTIL: Input = Input::optional("until", Domain::Instant, "entries before");

/// The fields of one sample of `POST /v1/samples` (SPEC section 9).
const SAMPLE_FIELDS: &[Input] = &[
    Input::required(
        "node",
        Domain::NodeName,
        "the node's name, unique in its cluster",
    ),
    Input::required(
        "cores",
        Domain::Integer {
            min: shared::sample::CORES_MIN as i64,
            max: shared::sample::CORES_MAX as i64,
        },
        "the node's logical CPUs",
    ),
    Input::required("at", Domain::Instant, "when the sample was taken"),
    Input::required(
        "seq",
        Domain::Integer {
            min: 0,
            max: i64::MAX,
        },
        "the node's sample counter; a resend has the same seq",
    ),
    Input::optional(
        "agent_version",
        Domain::Text {
            min_chars: 0,
            max_chars: Some(shared::wire::AGENT_VERSION_MAX_CHARS as u32),
        },
        "the agent's version (a longer one is cut)",
    ),
];

/// The fields of one image of a node's list (SPEC 10.5).
const LOG_DAY_FIELDS: &[Input] = &[
    Input::required("day", Domain::Day, "the log day"),
    Input::required(
        "bytes",
        Domain::Integer {
            min: 0,
            max: 1 << 48,
        },
        "the bytes held for it",
    ),
];
const NODE_IMAGE_FIELDS: &[Input] = &[
    Input::required(
        "id",
        Domain::ImageId,
        "the image ID (the digest of its config)",
    ),
    Input::optional("repo_tags", IMAGE_NAMES, "its tags"),
    Input::optional("repo_digests", IMAGE_NAMES, "its repository digests"),
    Input::optional(
        "size_bytes",
        Domain::Integer {
            min: 0,
            max: i64::MAX,
        },
        "its size",
    ),
];

/// A registry image: a node's image with `source` `registry`.
const REGISTRY_IMAGE_FIELDS: &[Input] = &[
    NODE_IMAGE_FIELDS[0],
    NODE_IMAGE_FIELDS[1],
    NODE_IMAGE_FIELDS[2],
    NODE_IMAGE_FIELDS[3],
    Input::required(
        "source",
        Domain::OneOf(&["registry"]),
        "where the image is held",
    ),
];

const IMAGE_NAMES: Domain = Domain::TextList {
    max_items: images::MAX_IMAGE_NAMES as u32,
    max_chars: images::MAX_IMAGE_NAME_CHARS as u32,
};

/// The inventory's query: a status filter and the page.
const IMAGES_QUERY: &[Input] = &[
    Input::optional(
        "status",
        Domain::OneOf(&["all", "authorized", "unauthorized"]),
        "only the images (not) authorized",
    ),
    LIMIT,
    CURSOR,
];

/// The path of a product's routes.
const PRODUCT: &[Input] = &[Input::required(
    "product",
    Domain::OneOf(&["pro", "image_scan", "log_storage"]),
    "the product",
)];

/// A closed JSON object body that must be given.
const fn object(fields: &'static [Input]) -> Body {
    Body::Object {
        fields,
        closed: true,
        may_be_empty: false,
    }
}

/// A closed JSON object body that may be left out (an empty body is `{}`).
const fn optional_object(fields: &'static [Input]) -> Body {
    Body::Object {
        fields,
        closed: true,
        may_be_empty: true,
    }
}

/// A route's inputs. (A table of const items, not a `match`: only in a const
/// initializer do the slices built by const calls live for the program.)
const fn of(path: &'static [Input], query: &'static [Input], body: Body) -> Inputs {
    Inputs { path, query, body }
}

const NOTHING: Inputs = of(&[], &[], Body::None);
/// The path of a route under `/accounts/{id}`.
const ACCOUNT: &[Input] = &[ACCOUNT_ID];
/// Where the console's login or language switch returns.
const NEXT: Input = Input::optional(
    "next",
    Domain::Text {
        min_chars: 0,
        max_chars: Some(512),
    },
    "a /console path to return to",
);
/// What a console page reports as just done, and how many or which.
const CONSOLE_DONE_WHAT: Input = Input::optional(
    "done",
    Domain::OneOf(&["cap", "order", "auto-renew", "authorized", "auto"]),
    "what was just done",
);
const CONSOLE_DONE_N: Input = Input::optional(
    "n",
    Domain::Integer {
        min: 0,
        max: i64::MAX,
    },
    "how many, or which",
);
const CONSOLE_DONE: &[Input] = &[CONSOLE_DONE_WHAT, CONSOLE_DONE_N];

const LOG_GB: Domain = Domain::Integer {
    min: shared::logs::STEP_GB as i64,
    max: shared::logs::MAX_ORDER_GB as i64,
};
const TOKEN_NAME: &[Input] = &[Input::required(
    "name",
    Domain::Text {
        min_chars: 1,
        max_chars: Some(crate::store::READER_NAME_MAX_CHARS as u32),
    },
    "what the token is for, without control characters",
)];

/// The inputs of every route in `ROUTES`, keyed the same way, read off each
/// handler's extractors and serde structs. The OpenAPI document is built from
/// this table; a unit test checks it against `ROUTES` and the paths' `{x}`.
pub const INPUTS: &[(&str, &str, Inputs)] = &[
    (
        "post",
        "/v1/samples",
        of(
            &[],
            &[],
            Body::Object {
                fields: &[Input::required(
                    "samples",
                    Domain::Objects {
                        fields: SAMPLE_FIELDS,
                        max_items: shared::wire::MAX_BATCH_SAMPLES as u32,
                    },
                    "the batch; each sample is taken or refused on its own",
                )],
                // The wire format grows by adding fields.
                closed: false,
                may_be_empty: false,
            },
        ),
    ),
    (
        "post",
        "/v1/admin/accounts",
        of(
            &[],
            &[],
            object(&[
                Input::required("id", Domain::Name, "the new account's ID"),
                Input::optional(
                    "parent",
                    Domain::Name,
                    "the main account this one is a sub-account of",
                ),
            ]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}",
        of(ACCOUNT, &[], Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/contacts",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required(
                    "name",
                    Domain::Text {
                        min_chars: 1,
                        max_chars: Some(200),
                    },
                    "the contact's name, without control characters",
                ),
                Input::required(
                    "role",
                    Domain::OneOf(&[
                        "creator",
                        "global_resource_collaborator",
                        "finance_collaborator",
                        "collaborator",
                    ]),
                    "which notices the contact gets",
                ),
                Input::optional("email", Domain::Email, "an email address (email or sms)"),
                Input::optional("sms", Domain::Phone, "an SMS number (email or sms)"),
            ]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/trial",
        of(ACCOUNT, &[], optional_object(&[])),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/orders",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::optional(
                    "product",
                    Domain::OneOf(&["pro", "image_scan", "log_storage"]),
                    "what is ordered: pro (licensed cores, the default), image_scan (authorizations) or log_storage (GB)",
                ),
                Input::optional(
                    "cores",
                    Domain::Integer {
                        min: 1,
                        max: crate::store::MAX_ORDER_CORES as i64,
                    },
                    "licensed cores (pro)",
                ),
                Input::optional(
                    "quantity",
                    Domain::Integer {
                        min: 1,
                        max: shared::images::MAX_PACK_QUANTITY as i64,
                    },
                    "authorizations (image_scan)",
                ),
                Input::optional(
                    "gb",
                    LOG_GB,
                    "GB of log storage (log_storage): at least 10, a multiple of 10",
                ),
                Input::optional("months", TERM_MONTHS, "the term in months (or years)"),
                Input::optional("years", TERM_YEARS, "the term in years (or months)"),
                Input::optional("start", Domain::Day, "the first day (today unless given)"),
                Input::optional("auto_renew", Domain::Boolean, "renew at the end"),
                Input::optional(
                    "pay_from_balance",
                    Domain::Boolean,
                    "pay from the prepaid balance",
                ),
            ]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/orders/{order}/renew",
        of(
            &[ACCOUNT_ID, ORDER_ID],
            &[],
            optional_object(&[
                Input::optional(
                    "months",
                    TERM_MONTHS,
                    "the term in months (a month unless given)",
                ),
                Input::optional("years", TERM_YEARS, "the term in years"),
                Input::optional(
                    "pay_from_balance",
                    Domain::Boolean,
                    "pay from the prepaid balance",
                ),
            ]),
        ),
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/orders/{order}/auto-renew",
        of(
            &[ACCOUNT_ID, ORDER_ID],
            &[],
            object(&[Input::required(
                "auto_renew",
                Domain::Boolean,
                "renew at the end",
            )]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/credits",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required(
                    "amount",
                    Domain::Decimal,
                    "more than 0, at most 100,000,000, in cents at most",
                ),
                Input::required(
                    "reference",
                    Domain::Text {
                        min_chars: 1,
                        max_chars: Some(200),
                    },
                    "the payment's id at the billing backend; a credit is taken once per reference",
                ),
            ]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/balance",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/notices",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/clusters",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required("name", Domain::Name, "the cluster's name"),
                Input::optional(
                    "token",
                    Domain::Token(crate::security::tokens::CLUSTER_TOKEN_PREFIX),
                    "the cluster's token, else one is generated",
                ),
            ]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/clusters/{name}/rotate-token",
        of(
            &[ACCOUNT_ID, CLUSTER_NAME],
            &[],
            optional_object(&[Input::optional(
                "token",
                Domain::Token(crate::security::tokens::CLUSTER_TOKEN_PREFIX),
                "the new token, else one is generated",
            )]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/licenses",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required(
                    "cores",
                    Domain::Integer {
                        min: 1,
                        max: u32::MAX as i64,
                    },
                    "licensed cores",
                ),
                Input::required("start", Domain::Instant, "when the licence starts"),
                Input::required("end", Domain::Instant, "when it ends (not before start)"),
            ]),
        ),
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/cap",
        of(
            ACCOUNT,
            &[],
            object(&[Input::required(
                "cores",
                Domain::Integer {
                    min: shared::overage::CAP_MIN_CORES as i64,
                    max: u32::MAX as i64,
                },
                "the elastic cap",
            )]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/samples",
        of(ACCOUNT, &[REQUIRED_DAY, LIMIT, CURSOR], Body::None),
    ),
    ("post", "/v1/admin/billing-runs", NOTHING),
    (
        "get",
        "/v1/admin/audit",
        of(
            &[],
            &[
                Input::optional("account", Domain::Name, "one account's entries"),
                AUDIT_ACTOR,
                AUDIT_SINCE,
                AUDIT_UNTIL,
                LIMIT,
                CURSOR,
            ],
            Body::None,
        ),
    ),
    (
        "get",
        "/v1/accounts/{id}/audit",
        of(
            ACCOUNT,
            &[AUDIT_ACTOR, AUDIT_SINCE, AUDIT_UNTIL, LIMIT, CURSOR],
            Body::None,
        ),
    ),
    (
        "get",
        "/v1/admin/bills",
        of(
            &[],
            &[
                Input::optional(
                    "account",
                    Domain::Name,
                    "one account's lines (all unless given)",
                ),
                DAY,
                FORMAT_JSON_CSV,
                LIMIT,
                CURSOR,
            ],
            Body::None,
        ),
    ),
    (
        "get",
        "/v1/admin/outbox",
        of(
            &[],
            &[
                Input::optional("pending", Domain::Boolean, "only lines not yet delivered"),
                LIMIT,
                CURSOR,
            ],
            Body::None,
        ),
    ),
    (
        "get",
        "/v1/reports/daily",
        of(
            &[],
            &[
                REQUIRED_DAY,
                Input::required("account", Domain::Name, "the account"),
                FORMAT_JSON_CSV_HTML,
            ],
            Body::None,
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/reader-tokens",
        of(
            ACCOUNT,
            &[],
            object(&[Input::required(
                "name",
                Domain::Text {
                    min_chars: 1,
                    max_chars: Some(crate::store::READER_NAME_MAX_CHARS as u32),
                },
                "what the token is for, without control characters",
            )]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/reader-tokens",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/reader-tokens/{token_id}",
        of(&[ACCOUNT_ID, TOKEN_ID], &[], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/reports/daily",
        of(ACCOUNT, &[REQUIRED_DAY, FORMAT_JSON_CSV_HTML], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/bills",
        of(ACCOUNT, &[DAY, FORMAT_JSON_CSV, LIMIT, CURSOR], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/notices",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/export",
        of(ACCOUNT, &[REQUIRED_DAY], Body::None),
    ),
    (
        "post",
        "/v1/images",
        of(
            &[],
            &[],
            object(&[
                Input::required("node", Domain::NodeName, "the node's name, unique in its cluster"),
                Input::required("at", Domain::Instant, "when the list was taken"),
                Input::required(
                    "images",
                    Domain::Objects {
                        fields: NODE_IMAGE_FIELDS,
                        max_items: shared::images::MAX_IMAGES_PER_NODE as u32,
                    },
                    "every image the node holds now",
                ),
            ]),
        ),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/images",
        of(
            ACCOUNT,
            &[],
            object(&[Input::required(
                "images",
                Domain::Objects {
                    fields: REGISTRY_IMAGE_FIELDS,
                    max_items: shared::images::MAX_IMAGES_PER_NODE as u32,
                },
                "images held in a registry",
            )]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/images",
        of(ACCOUNT, IMAGES_QUERY, Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/image-authorizations",
        of(
            ACCOUNT,
            &[],
            object(&[Input::required(
                "image_ids",
                Domain::ImageIds {
                    max_items: shared::images::MAX_BATCH_IDS as u32,
                },
                "the image IDs to authorize (1 to 10,000)",
            )]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/image-authorizations",
        of(ACCOUNT, &[], Body::None),
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/image-authorizations/auto",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required("auto_authorize", Domain::Boolean, "authorize images first seen"),
                Input::optional(
                    "max_daily",
                    Domain::Integer {
                        min: 0,
                        max: shared::images::MAX_PACK_QUANTITY as i64,
                    },
                    "the most automatic authorizations a day (0: no limit)",
                ),
            ]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/image-authorizations/receipts",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/image-authorizations/refund",
        of(
            ACCOUNT,
            &[],
            object(&[Input::required(
                "quantity",
                Domain::Integer {
                    min: 1,
                    max: u32::MAX as i64,
                },
                "how many unused authorizations to refund",
            )]),
        ),
    ),
    ("get", "/v1/admin/products", NOTHING),
    (
        "put",
        "/v1/admin/products/{product}/pause",
        of(
            PRODUCT,
            &[],
            object(&[
                Input::required("paused_from", Domain::Day, "the first day paused"),
                Input::required("paused_until", Domain::Day, "the last day paused"),
            ]),
        ),
    ),
    (
        "delete",
        "/v1/admin/products/{product}/pause",
        of(PRODUCT, &[], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/images",
        of(ACCOUNT, IMAGES_QUERY, Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/image-authorizations",
        of(ACCOUNT, &[], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/image-authorizations/receipts",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/customer-tokens",
        of(ACCOUNT, &[], object(TOKEN_NAME)),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/customer-tokens",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/customer-tokens/{token_id}",
        of(&[ACCOUNT_ID, TOKEN_ID], &[], Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/log-tokens",
        of(ACCOUNT, &[], object(TOKEN_NAME)),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/log-tokens",
        of(ACCOUNT, PAGE, Body::None),
    ),
    (
        "delete",
        "/v1/admin/accounts/{id}/log-tokens/{token_id}",
        of(&[ACCOUNT_ID, TOKEN_ID], &[], Body::None),
    ),
    (
        "put",
        "/v1/log-storage/usage",
        of(
            &[],
            &[],
            object(&[
                Input::required("at", Domain::Instant, "when the bytes were measured"),
                Input::required(
                    "days",
                    Domain::Objects {
                        fields: LOG_DAY_FIELDS,
                        max_items: shared::logs::MAX_REPORT_DAYS as u32,
                    },
                    "each log day the service holds, each named once",
                ),
            ]),
        ),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/log-storage",
        of(ACCOUNT, &[], Body::None),
    ),
    (
        "post",
        "/v1/admin/accounts/{id}/log-storage/expansions",
        of(
            ACCOUNT,
            &[],
            object(&[
                Input::required("gb", LOG_GB, "GB more: at least 10, a multiple of 10"),
                Input::optional(
                    "pay_from_balance",
                    Domain::Boolean,
                    "pay from the prepaid balance",
                ),
            ]),
        ),
    ),
    (
        "put",
        "/v1/admin/accounts/{id}/log-storage/orders/{order}/auto-renew",
        of(
            &[ACCOUNT_ID, ORDER_ID],
            &[],
            object(&[Input::required(
                "auto_renew",
                Domain::Boolean,
                "renew at the end",
            )]),
        ),
    ),
    (
        "get",
        "/v1/accounts/{id}/log-storage",
        of(ACCOUNT, &[], Body::None),
    ),
    (
        "get",
        "/v1/admin/accounts/{id}/statements/{month}",
        of(&[ACCOUNT_ID, MONTH], &[FORMAT_JSON_CSV_HTML], Body::None),
    ),
    (
        "get",
        "/v1/accounts/{id}/statements/{month}",
        of(&[ACCOUNT_ID, MONTH], &[FORMAT_JSON_CSV_HTML], Body::None),
    ),
    ("get", "/v1/statement-key", NOTHING),
    ("get", "/", NOTHING),
    ("get", "/console", NOTHING),
    ("get", "/console/login", of(&[], &[NEXT], Body::None)),
    ("post", "/console/login", NOTHING),
    ("post", "/console/logout", NOTHING),
    (
        "get",
        "/console/lang",
        of(
            &[],
            &[
                Input::optional("to", Domain::OneOf(&["en", "zh-CN"]), "the language"),
                NEXT,
            ],
            Body::None,
        ),
    ),
    (
        "get",
        "/console/accounts",
        of(
            &[],
            &[
                Input::optional(
                    "q",
                    Domain::Text {
                        min_chars: 0,
                        max_chars: Some(64),
                    },
                    "accounts whose id contains this",
                ),
                Input::optional(
                    "flag",
                    Domain::OneOf(&crate::console::pages::FLAGS),
                    "accounts with this flag",
                ),
                Input::optional(
                    "sort",
                    Domain::OneOf(console::SORTS),
                    "the column to sort by",
                ),
                Input::optional(
                    "page",
                    Domain::Integer { min: 1, max: console::MAX_PAGE as i64 },
                    "the page, from 1",
                ),
            ],
            Body::None,
        ),
    ),
    ("get", "/console/accounts/{id}", of(ACCOUNT, &[], Body::None)),
    (
        "get",
        "/console/accounts/{id}/usage",
        of(
            ACCOUNT,
            &[Input::optional("month", Domain::Month, "the month (this month unless given)")],
            Body::None,
        ),
    ),
    ("get", "/console/accounts/{id}/purchase", of(ACCOUNT, CONSOLE_DONE, Body::None)),
    ("post", "/console/accounts/{id}/cap", of(ACCOUNT, &[], Body::None)),
    ("post", "/console/accounts/{id}/orders", of(ACCOUNT, &[], Body::None)),
    ("post", "/console/accounts/{id}/auto-renew", of(ACCOUNT, &[], Body::None)),
    (
        "get",
        "/console/accounts/{id}/images",
        of(
            ACCOUNT,
            &[
                Input::optional(
                    "status",
                    Domain::OneOf(&["all", "unauthorized", "authorized"]),
                    "which images",
                ),
                Input::optional(
                    "after",
                    Domain::Integer { min: 0, max: i64::MAX },
                    "the page after this image",
                ),
                CONSOLE_DONE_WHAT,
                CONSOLE_DONE_N,
            ],
            Body::None,
        ),
    ),
    ("post", "/console/accounts/{id}/images/authorize", of(ACCOUNT, &[], Body::None)),
    ("post", "/console/accounts/{id}/images/auto", of(ACCOUNT, &[], Body::None)),
    ("get", "/console/accounts/{id}/log-storage", of(ACCOUNT, &[], Body::None)),
    ("get", "/console/accounts/{id}/bills", of(ACCOUNT, &[], Body::None)),
    (
        "get",
        "/console/accounts/{id}/statements/{month}",
        of(&[ACCOUNT_ID, MONTH], &[FORMAT_JSON_CSV_HTML], Body::None),
    ),
    (
        "get",
        "/console/accounts/{id}/reports/{day}",
        of(&[ACCOUNT_ID, Input::required("day", Domain::Day, "the day")], &[], Body::None),
    ),
    ("get", "/console/accounts/{id}/notices", of(ACCOUNT, &[], Body::None)),
    ("get", "/console/accounts/{id}/changes", of(ACCOUNT, &[], Body::None)),
    ("get", "/healthz", NOTHING),
    ("get", "/readyz", NOTHING),
    ("get", "/metrics", NOTHING),
    ("get", "/v1/openapi.json", NOTHING),
];

/// The inputs of one route of `ROUTES`. A customer's or reader's route
/// `/v1/accounts/…` without a row of its own takes what its admin twin
/// `/v1/admin/accounts/…` takes (their handler is the same).
pub fn inputs(method: &str, path: &str) -> Inputs {
    let row = |path: &str| {
        INPUTS
            .iter()
            .find(|(m, p, _)| *m == method && *p == path)
            .map(|row| row.2)
    };
    row(path)
        .or_else(|| {
            path.strip_prefix("/v1/accounts/")
                .and_then(|rest| row(&format!("/v1/admin/accounts/{rest}")))
        })
        .unwrap_or_else(|| panic!("{method} {path} is in ROUTES without its inputs"))
}

/// The handler of each route in `ROUTES`; a row without one panics when the
/// router is built, which every test of the service does.
fn handler(method: &str, path: &str) -> MethodRouter<Arc<AppState>> {
    match (method, path) {
        ("post", "/v1/samples") => post(ingest::push_samples),
        ("post", "/v1/admin/accounts") => post(accounts::create_account),
        ("get", "/v1/admin/accounts/{id}") => get(accounts::get_account),
        ("post", "/v1/admin/accounts/{id}/contacts") => post(accounts::add_contact),
        ("post", "/v1/admin/accounts/{id}/trial") => post(accounts::start_trial),
        ("post", "/v1/admin/accounts/{id}/orders") => post(accounts::place_order),
        ("post", "/v1/admin/accounts/{id}/orders/{order}/renew") => post(accounts::renew_order),
        ("put", "/v1/admin/accounts/{id}/orders/{order}/auto-renew") => {
            put(accounts::set_auto_renew)
        }
        ("post", "/v1/admin/accounts/{id}/credits") => post(accounts::credit),
        ("get", "/v1/admin/accounts/{id}/balance") => get(accounts::balance),
        ("get", "/v1/admin/accounts/{id}/notices") => get(accounts::notices),
        ("post", "/v1/admin/accounts/{id}/clusters") => post(admin::create_cluster),
        ("post", "/v1/admin/accounts/{id}/clusters/{name}/rotate-token") => {
            post(admin::rotate_token)
        }
        ("post", "/v1/admin/accounts/{id}/licenses") => post(admin::add_licence),
        ("put", "/v1/admin/accounts/{id}/cap") => put(admin::set_cap),
        ("get", "/v1/admin/accounts/{id}/samples") => get(admin::audit_samples),
        ("post", "/v1/admin/billing-runs") => post(admin::billing_run),
        ("get", "/v1/admin/bills") => get(admin::bills),
        ("get", "/v1/admin/audit") => get(audit::admin_log),
        ("get", "/v1/accounts/{id}/audit") => get(audit::account_log),
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
        ("post", "/v1/images") => post(images::push_images),
        ("post", "/v1/admin/accounts/{id}/images") => post(images::add_registry_images),
        ("get", "/v1/admin/accounts/{id}/images") => get(images::inventory),
        ("post", "/v1/admin/accounts/{id}/image-authorizations") => post(images::authorize),
        ("get", "/v1/admin/accounts/{id}/image-authorizations") => get(images::authorizations),
        ("put", "/v1/admin/accounts/{id}/image-authorizations/auto") => put(images::set_auto),
        ("get", "/v1/admin/accounts/{id}/image-authorizations/receipts") => get(images::receipts),
        ("post", "/v1/admin/accounts/{id}/image-authorizations/refund") => post(images::refund),
        ("get", "/v1/admin/products") => get(images::products),
        ("put", "/v1/admin/products/{product}/pause") => put(images::pause_product),
        ("delete", "/v1/admin/products/{product}/pause") => delete(images::resume_product),
        // The admin routes' own handlers: they take the account from the path.
        ("get", "/v1/accounts/{id}/images") => get(images::inventory),
        ("get", "/v1/accounts/{id}/image-authorizations") => get(images::authorizations),
        ("get", "/v1/accounts/{id}/image-authorizations/receipts") => get(images::receipts),
        ("post", "/v1/admin/accounts/{id}/customer-tokens") => post(readers::issue),
        ("get", "/v1/admin/accounts/{id}/customer-tokens") => get(readers::list),
        ("delete", "/v1/admin/accounts/{id}/customer-tokens/{token_id}") => delete(readers::revoke),
        // The customer's own actions: the admin routes' handlers, the account
        // from the path; an order must be paid from the balance.
        ("get", "/v1/accounts/{id}/balance") => get(accounts::balance),
        ("put", "/v1/accounts/{id}/cap") => put(admin::set_cap),
        ("post", "/v1/accounts/{id}/orders") => post(accounts::customer_order),
        ("put", "/v1/accounts/{id}/orders/{order}/auto-renew") => put(accounts::set_auto_renew),
        ("post", "/v1/accounts/{id}/image-authorizations") => post(images::authorize),
        ("put", "/v1/accounts/{id}/image-authorizations/auto") => put(images::set_auto),
        ("put", "/v1/accounts/{id}/log-storage/orders/{order}/auto-renew") => {
            put(log_storage::set_auto_renew)
        }
        ("post", "/v1/admin/accounts/{id}/log-tokens") => post(readers::issue),
        ("get", "/v1/admin/accounts/{id}/log-tokens") => get(readers::list),
        ("delete", "/v1/admin/accounts/{id}/log-tokens/{token_id}") => delete(readers::revoke),
        ("put", "/v1/log-storage/usage") => put(log_storage::report_usage),
        ("get", "/v1/admin/accounts/{id}/log-storage") => get(log_storage::view),
        ("post", "/v1/admin/accounts/{id}/log-storage/expansions") => post(log_storage::expand),
        ("put", "/v1/admin/accounts/{id}/log-storage/orders/{order}/auto-renew") => {
            put(log_storage::set_auto_renew)
        }
        // The admin route's own handler: it takes the account from the path.
        ("get", "/v1/accounts/{id}/log-storage") => get(log_storage::view),
        ("get", "/v1/admin/accounts/{id}/statements/{month}") => get(statements::monthly),
        // The admin route's own handler: it takes the account from the path.
        ("get", "/v1/accounts/{id}/statements/{month}") => get(statements::monthly),
        ("get", "/v1/statement-key") => get(statements::public_key),
        ("get", "/") => get(console::root),
        ("get", "/console") => get(console::home),
        ("get", "/console/login") => get(console::login_form),
        ("post", "/console/login") => post(console::login),
        ("post", "/console/logout") => post(console::logout),
        ("get", "/console/lang") => get(console::switch_language),
        ("get", "/console/accounts") => get(console::accounts),
        ("get", "/console/accounts/{id}") => get(console::overview),
        ("get", "/console/accounts/{id}/usage") => get(console::usage),
        ("get", "/console/accounts/{id}/purchase") => get(console::purchase),
        ("post", "/console/accounts/{id}/cap") => post(console::set_cap),
        ("post", "/console/accounts/{id}/orders") => post(console::place_order),
        ("post", "/console/accounts/{id}/auto-renew") => post(console::set_auto_renew),
        ("get", "/console/accounts/{id}/images") => get(console::images),
        ("post", "/console/accounts/{id}/images/authorize") => post(console::authorize_images),
        ("post", "/console/accounts/{id}/images/auto") => post(console::set_auto),
        ("get", "/console/accounts/{id}/log-storage") => get(console::log_storage),
        ("get", "/console/accounts/{id}/bills") => get(console::bills),
        ("get", "/console/accounts/{id}/statements/{month}") => get(console::statement),
        ("get", "/console/accounts/{id}/reports/{day}") => get(console::report),
        ("get", "/console/accounts/{id}/notices") => get(console::notices),
        ("get", "/console/accounts/{id}/changes") => get(console::changes),
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
pub fn router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new();
    for (method, path, role, _) in ROUTES {
        let mut route = handler(method, path);
        let limit = edges::body_limit(path);
        if limit != shared::wire::MAX_BATCH_BYTES {
            route = route.layer(axum::extract::DefaultBodyLimit::max(limit));
        }
        if path.contains('{') {
            route = route.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                input::check_path,
            ));
        }
        let console = *path == "/" || path.starts_with("/console");
        // A body is JSON, checked after the gate (an unknown caller learns
        // nothing); ingest checks it itself once its agent is known. The
        // console's are forms.
        if matches!(*method, "post" | "put")
            && !matches!(role, Role::Cluster | Role::Logs)
            && !console
        {
            route = route.route_layer(axum::middleware::from_fn(edges::json_bodies_only));
        }
        if console {
            route = route.layer(axum::middleware::map_response(console::harden));
        }
        if console && matches!(role, Role::Admin | Role::Reader | Role::Customer) {
            route = route.route_layer(axum::middleware::from_fn_with_state(
                console::ConsoleGate {
                    state: state.clone(),
                    role: *role,
                },
                console::gate,
            ));
        } else if matches!(role, Role::Admin | Role::Reader | Role::Customer) {
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
            state.clone(),
            edges::front,
        ))
        // A panicking handler answers 500 in the API's format; the service,
        // its connections and the next request are unharmed.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            move |payload: Box<dyn std::any::Any + Send>| {
                let message = crate::store::panic_message(payload.as_ref());
                metrics
                    .panics
                    .get_or_create(&crate::metrics::PlaceLabels {
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
            unwritable_code(cause),
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
                ApiError::new(StatusCode::GONE, "samples_pruned", with_route(&e, BILLS))
                    .field("day")
            }
            E::Invalid { field, .. } => ApiError::unprocessable(field, e.to_string()),
            E::Conflict { code, field, .. } => {
                let message = match code {
                    "trial_used" | "account_deleted" => with_route(&e, ORDERS),
                    _ => e.to_string(),
                };
                ApiError::new(StatusCode::CONFLICT, code, message).field(field)
            }
            E::DataDeleted { .. } => {
                ApiError::new(StatusCode::GONE, "data_deleted", with_route(&e, BILLS)).field("day")
            }
            E::TooNew { .. }
            | E::Corrupt(_)
            | E::Database(_)
            | E::Panicked { .. }
            | E::Backup(_) => ApiError::internal(e),
        }
    }
}

/// Where a caller turns next, named after a store error's message.
const BILLS: &str = "GET /v1/admin/bills";
const ORDERS: &str = "POST /v1/admin/accounts/{id}/orders";

fn with_route(e: &StoreError, route: &str) -> String {
    format!("{e} ({route})")
}

/// The error code the API answers a database that cannot store with.
fn unwritable_code(cause: Unwritable) -> &'static str {
    match cause {
        Unwritable::DiskFull => "disk_full",
        Unwritable::DiskError => "disk_error",
        Unwritable::Unreachable => "database_unreachable",
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

/// Runs `f` on a store connection off the async threads
/// (`Connection::blocking`), its failure as the API answers it.
pub async fn blocking<T: Send + 'static>(
    connection: &Arc<Connection>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    connection.blocking(f).await.map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::CommitFailure;

    #[test]
    fn every_route_has_a_handler_and_reader_routes_name_their_account() {
        let mut seen = std::collections::HashSet::new();
        for (method, path, role, _) in ROUTES {
            assert!(seen.insert((method, path)), "{method} {path} twice");
            drop(handler(method, path));
            inputs(method, path);
            if matches!(role, Role::Reader | Role::Customer) {
                assert!(
                    path.contains("{id}"),
                    "{path}: a {role:?} route needs {{id}}"
                );
            }
        }
        // A customer's or reader's route without a row takes its admin twin's.
        let twins = ROUTES
            .iter()
            .filter(|r| !INPUTS.iter().any(|i| i.0 == r.0 && i.1 == r.1))
            .inspect(|r| {
                assert!(
                    r.1.starts_with("/v1/accounts/"),
                    "{} {} has no inputs",
                    r.0,
                    r.1
                )
            })
            .count();
        assert_eq!(
            INPUTS.len() + twins,
            ROUTES.len(),
            "one row of INPUTS per route"
        );
        for (method, path, _) in INPUTS {
            assert!(
                ROUTES.iter().any(|r| r.0 == *method && r.1 == *path),
                "{method} {path} has inputs but is not in ROUTES"
            );
        }
    }

    /// The `{x}` parameters of a route's path, in order.
    fn braces(path: &str) -> Vec<&str> {
        path.split('{')
            .skip(1)
            .map(|rest| rest.split_once('}').expect("a closing brace").0)
            .collect()
    }

    #[test]
    fn every_route_declares_each_parameter_of_its_path_and_names_each_input_once() {
        for (method, path, _, _) in ROUTES {
            let declared = inputs(method, path);
            let names: Vec<&str> = declared.path.iter().map(|p| p.name).collect();
            assert_eq!(names, braces(path), "{method} {path}: path parameters");
            let mut query = std::collections::HashSet::new();
            for q in declared.query {
                assert!(
                    query.insert(q.name),
                    "{method} {path}: query {} twice",
                    q.name
                );
            }
            if let Body::Object { fields, .. } = declared.body {
                let mut seen = std::collections::HashSet::new();
                for f in fields {
                    assert!(
                        seen.insert(f.name),
                        "{method} {path}: field {} twice",
                        f.name
                    );
                }
            }
        }
    }

    #[test]
    fn the_openapi_document_is_openapi_3_1_and_describes_every_input() {
        use serde_json::Value;
        let text = serde_json::to_string(&openapi_document()).unwrap();
        let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let at = format!("{method} {path}");
                assert!(
                    ["get", "post", "put", "delete"].contains(&method.as_str()),
                    "{at}"
                );
                assert!(
                    op["summary"].is_string() && op["responses"].is_object(),
                    "{at}"
                );
                let mut in_path = Vec::new();
                for p in op["parameters"].as_array().expect("parameters") {
                    let name = p["name"].as_str().expect("a parameter's name");
                    assert!(p["required"].is_boolean(), "{at} {name}");
                    assert!(p["schema"]["type"].is_string(), "{at} {name}: no type");
                    match p["in"].as_str() {
                        Some("path") => {
                            assert_eq!(p["required"], true, "{at} {name}");
                            in_path.push(name);
                        }
                        Some("query") => {}
                        other => panic!("{at} {name}: in {other:?}"),
                    }
                }
                assert_eq!(in_path, braces(path), "{at}: its path parameters");
                let Some(body) = op.get("requestBody") else {
                    continue;
                };
                assert!(body["required"].is_boolean(), "{at}");
                let schema = &body["content"]["application/json"]["schema"];
                assert_eq!(schema["type"], "object", "{at}");
                let properties = schema["properties"].as_object().expect("properties");
                for (name, field) in properties {
                    assert!(field["type"].is_string(), "{at} {name}: no type");
                }
                for name in schema["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap();
                    assert!(
                        properties.contains_key(name),
                        "{at}: {name} required, not listed"
                    );
                }
            }
        }
        assert_eq!(operations, ROUTES.len(), "one operation per route");

        let param = |method: &str, path: &str, name: &str| -> Value {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
                .clone()
        };
        let report = param("get", "/v1/accounts/{id}/reports/daily", "format");
        assert_eq!(
            report["schema"]["enum"],
            serde_json::json!(["json", "csv", "html"])
        );
        assert_eq!(param("get", "/v1/reports/daily", "day")["required"], true);
        assert_eq!(
            param("get", "/v1/reports/daily", "day")["schema"]["format"],
            "date"
        );
        for path in [
            "/v1/admin/accounts/{id}/samples",
            "/v1/admin/bills",
            "/v1/accounts/{id}/bills",
            "/v1/admin/outbox",
            "/v1/admin/accounts/{id}/notices",
            "/v1/accounts/{id}/notices",
            "/v1/admin/accounts/{id}/reader-tokens",
            "/v1/admin/accounts/{id}/balance",
        ] {
            let limit = param("get", path, "limit");
            assert_eq!(limit["required"], false, "{path}");
            assert_eq!(
                (
                    &limit["schema"]["type"],
                    &limit["schema"]["minimum"],
                    &limit["schema"]["maximum"]
                ),
                (
                    &Value::from("integer"),
                    &Value::from(1),
                    &Value::from(10_000)
                ),
                "{path}"
            );
            assert_eq!(
                param("get", path, "cursor")["schema"]["type"],
                "string",
                "{path}"
            );
        }
        let samples = &doc["paths"]["/v1/samples"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        let sample = &samples["properties"]["samples"]["items"];
        assert_eq!(
            sample["required"],
            serde_json::json!(["node", "cores", "at", "seq"])
        );
        assert!(
            samples.get("additionalProperties").is_none(),
            "the wire format grows"
        );
        let cap = &doc["paths"]["/v1/admin/accounts/{id}/cap"]["put"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(
            cap["additionalProperties"], false,
            "NewCap denies unknown fields"
        );
        assert_eq!(cap["properties"]["cores"]["minimum"], 500);
    }

    #[test]
    fn the_api_pages_who_may_call_what_table_is_the_route_table() {
        let page = include_str!("../../../docs/api.md");
        let section = page
            .split("## Who may call what")
            .nth(1)
            .expect("docs/api.md has a Who may call what section");
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
        assert_eq!(documented, table, "docs/api.md's table against ROUTES");
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
