//! Roles over real HTTP: every route of the OpenAPI document called by every kind of caller answers as its declared role says; reader tokens are shown once, read only their own account, stop when revoked and are stored only as hashes.

use crate::support;

use std::collections::BTreeSet;

use aggregator::config::Database;
use aggregator::http::{Role, ROUTES};
use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp, ADMIN};

const A: &str = "acme";
const B: &str = "rival";

async fn spawn() -> (tempfile::TempDir, TestApp) {
    TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await
}

/// A call's status, its `WWW-Authenticate` header and its body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, String) {
    let resp = app.send(method, path, token, body).await;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, challenge, resp.text().await.unwrap())
}

/// A console call without following redirects: its status, its
/// `Location` (where it sends the browser) and its body.
async fn send_console(
    client: &reqwest::Client,
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut r = client.request(method, app.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, resp.text().await.unwrap())
}

async fn issue(app: &TestApp, account: &str, name: &str) -> (u16, Value) {
    app.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{account}/reader-tokens"),
        Some(json!({ "name": name })),
    )
    .await
}

async fn issued_token(app: &TestApp, account: &str, name: &str) -> (i64, String) {
    let (s, v) = issue(app, account, name).await;
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    )
}

async fn revoke(app: &TestApp, account: &str, id: i64) -> (u16, Value) {
    app.admin(
        Method::DELETE,
        &format!("/v1/admin/accounts/{account}/reader-tokens/{id}"),
        None,
    )
    .await
}

/// What a caller is, as the role table speaks of callers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Nobody,
    Unknown,
    Admin,
    /// A live reader token of account A.
    ReaderOfA,
    Cluster,
    /// A live logs token of account A.
    LogsOfA,
    /// A live customer token of account A.
    CustomerOfA,
}

/// The answer the role table promises.
#[derive(Debug, PartialEq)]
enum Answer {
    Allowed,
    Unauthorized,
    Forbidden,
}

fn expected(role: Role, caller: Kind, account_in_path: Option<&str>) -> Answer {
    use Answer::*;
    match (role, caller) {
        (Role::None, _) => Allowed,
        (_, Kind::Nobody | Kind::Unknown) => Unauthorized,
        (Role::Admin, Kind::Admin) => Allowed,
        (Role::Admin, _) => Forbidden,
        (Role::Reader, Kind::Admin) => Allowed,
        (Role::Reader, Kind::ReaderOfA | Kind::CustomerOfA) if account_in_path == Some(A) => {
            Allowed
        }
        (Role::Reader, _) => Forbidden,
        (Role::Cluster, Kind::Cluster) => Allowed,
        (Role::Cluster, _) => Forbidden,
        (Role::Logs, Kind::LogsOfA) => Allowed,
        (Role::Logs, _) => Forbidden,
        (Role::Customer, Kind::Admin) => Allowed,
        (Role::Customer, Kind::CustomerOfA) if account_in_path == Some(A) => Allowed,
        (Role::Customer, _) => Forbidden,
    }
}

fn role_named(name: &str) -> Role {
    match name {
        "none" => Role::None,
        "admin" => Role::Admin,
        "reader" => Role::Reader,
        "cluster" => Role::Cluster,
        "logs" => Role::Logs,
        "customer" => Role::Customer,
        other => panic!("unknown role {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_its_declared_role_says() {
    let (_dir, app) = spawn().await;
    let cluster = app.account_with_cluster(A, "prod").await;
    app.account_with_cluster(B, "prod").await;
    let (_, reader) = issued_token(&app, A, "dashboard").await;
    let (revoked_id, revoked) = issued_token(&app, A, "old laptop").await;
    assert_eq!(revoke(&app, A, revoked_id).await.0, 200);
    let (s, logs) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{A}/log-tokens"),
            Some(json!({"name": "log service"})),
        )
        .await;
    assert_eq!(s, 201, "{logs}");
    let logs = logs["token"].as_str().unwrap().to_string();
    let (s, customer) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{A}/customer-tokens"),
            Some(json!({"name": "the customer's console"})),
        )
        .await;
    assert_eq!(s, 201, "{customer}");
    let customer = customer["token"].as_str().unwrap().to_string();
    assert!(customer.starts_with("cmu_"), "{customer}");
    let unknown_customer = format!("cmu_{}", "0".repeat(64));
    let unknown_reader = format!("cmr_{}", "0".repeat(64));
    let unknown_cluster = format!("cmc_{}", "0".repeat(64));
    let unknown_logs = format!("cml_{}", "0".repeat(64));
    let callers: Vec<(&str, Option<&str>, Kind)> = vec![
        ("no token", None, Kind::Nobody),
        ("a garbage token", Some("garbage"), Kind::Unknown),
        (
            "an unknown reader token",
            Some(&unknown_reader),
            Kind::Unknown,
        ),
        (
            "an unknown cluster token",
            Some(&unknown_cluster),
            Kind::Unknown,
        ),
        ("a revoked reader token", Some(&revoked), Kind::Unknown),
        ("an unknown logs token", Some(&unknown_logs), Kind::Unknown),
        ("the admin token", Some(ADMIN), Kind::Admin),
        ("a reader token of A", Some(&reader), Kind::ReaderOfA),
        ("a cluster token of A", Some(&cluster), Kind::Cluster),
        ("a logs token of A", Some(&logs), Kind::LogsOfA),
        (
            "an unknown customer token",
            Some(&unknown_customer),
            Kind::Unknown,
        ),
        ("a customer token of A", Some(&customer), Kind::CustomerOfA),
    ];

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (s, doc) = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let mut walked = BTreeSet::new();
    let mut calls = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let declared = op["x-core-meter-role"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no role"));
            let role = role_named(declared);
            let table = ROUTES
                .iter()
                .find(|r| r.0 == method && r.1 == path)
                .unwrap_or_else(|| panic!("{method} {path} is not in ROUTES"));
            assert_eq!(table.2, role, "{method} {path}: the document and ROUTES");
            assert!(
                role == Role::None || !op["security"].as_array().unwrap().is_empty(),
                "{method} {path} shows no security"
            );
            walked.insert((method.clone(), path.clone()));
            // Accounts A and B where the path has one; parameters that name
            // nothing, so no call changes what another caller holds.
            let accounts: &[Option<&str>] = if path.contains("{id}") {
                &[Some(A), Some(B)]
            } else {
                &[None]
            };
            for account in accounts {
                let concrete = path
                    .replace("{id}", account.unwrap_or(""))
                    .replace("{name}", "no-such-cluster")
                    .replace("{order}", "999999")
                    .replace("{token_id}", "999999");
                let concrete = concrete
                    .replace("{month}", "2026-11")
                    .replace("{day}", "2026-11-23");
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                // A console page sends a caller it does not know to the login
                // form (303) and answers the wrong role with a page saying so.
                let console = path == "/" || path.starts_with("/console");
                for (who, token, kind) in &callers {
                    let (status, challenge, body) = if console {
                        send_console(&no_redirects, &app, m.clone(), &concrete, *token).await
                    } else {
                        send(&app, m.clone(), &concrete, *token, None).await
                    };
                    calls += 1;
                    let want = expected(role, *kind, *account);
                    // A public console form answers its own refusals (a bad
                    // token, an expired form): none is about a role.
                    let got = match status {
                        _ if console && role == Role::None => Answer::Allowed,
                        303 if console
                            && role != Role::None
                            && challenge
                                .as_deref()
                                .is_some_and(|l| l.starts_with("/console/login")) =>
                        {
                            Answer::Unauthorized
                        }
                        401 => Answer::Unauthorized,
                        403 => Answer::Forbidden,
                        _ => Answer::Allowed,
                    };
                    assert_eq!(
                        got, want,
                        "{method} {concrete} ({declared}) with {who}: {status} {body}"
                    );
                    if let Some(t) = token {
                        assert!(
                            !body.contains(&t[t.len() / 2..]),
                            "echoes the token: {body}"
                        );
                    }
                    match got {
                        Answer::Forbidden if console => {
                            assert!(
                                body.contains(&format!("the {declared} role")),
                                "{method} {concrete} with {who}: {body}"
                            );
                        }
                        Answer::Unauthorized if console => {}
                        Answer::Unauthorized => {
                            assert_eq!(challenge.as_deref(), Some("Bearer"), "{method} {concrete}");
                            let v: Value = serde_json::from_str(&body).unwrap();
                            assert_eq!(v["error"]["code"], "unauthorized", "{body}");
                        }
                        Answer::Forbidden => {
                            let v: Value = serde_json::from_str(&body).unwrap();
                            assert_eq!(v["error"]["code"], "forbidden", "{body}");
                            let message = v["error"]["message"].as_str().unwrap();
                            assert!(
                                message.contains(&format!("the {declared} role")),
                                "{method} {concrete} with {who}: {message}"
                            );
                        }
                        Answer::Allowed => {}
                    }
                }
            }
        }
    }
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(walked, table, "the routes walked are the route table");
    let with_id = ROUTES.iter().filter(|r| r.1.contains("{id}")).count();
    assert_eq!(
        calls,
        (ROUTES.len() + with_id) * callers.len(),
        "{} routes, {with_id} of them twice, by {} callers",
        ROUTES.len(),
        callers.len()
    );
    eprintln!(
        "walked {} routes ({with_id} with an account, for A and B) with {} callers: {calls} calls",
        ROUTES.len(),
        callers.len()
    );
    app.stop().await;
}

/// The rows of `reader_tokens` as (name, token_hash), behind the store's back.
fn stored_reader_tokens(database: &Database) -> Vec<(String, Vec<u8>)> {
    let sql = "SELECT name, token_hash FROM reader_tokens ORDER BY id";
    match database {
        Database::Sqlite(file) => {
            let conn = rusqlite::Connection::open(file).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }
        Database::Postgres(url) => support::off_runtime(|| {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_token_is_shown_once_reads_only_its_account_and_stops_when_revoked() {
    let (dir, app) = spawn().await;
    let cluster = app.account_with_cluster(A, "prod").await;
    let rival = app.account_with_cluster(B, "prod").await;
    app.push_day(&cluster, "n1", 8, "2026-11-23", 1).await;
    app.push_day(&rival, "n1", 4, "2026-11-23", 1).await;
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    assert_eq!(s, 200, "{v}");

    // Issued: the token once, in the answer.
    let (s, issued) = issue(&app, A, "finance dashboard").await;
    assert_eq!(s, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    assert!(
        aggregator::security::tokens::looks_like_reader_token(&token),
        "{token}"
    );
    assert_eq!(issued["name"], "finance dashboard");
    assert!(issued["id"].is_i64() && issued["created_at"].is_string());

    // Listed without the token or its hash.
    let (s, listed) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{A}/reader-tokens"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let rows = listed["reader_tokens"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let keys: BTreeSet<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["id", "name", "created_at", "revoked_at"])
    );
    assert!(rows[0]["revoked_at"].is_null());
    assert!(!listed.to_string().contains(&token[4..]));

    // Stored only as its hash.
    let stored = stored_reader_tokens(&app.database);
    assert_eq!(
        stored,
        vec![(
            "finance dashboard".to_string(),
            aggregator::security::tokens::hash_token(&token).to_vec()
        )]
    );
    if let Database::Sqlite(file) = &app.database {
        for f in [file.clone(), file.with_extension("sqlite-wal")] {
            if let Ok(bytes) = std::fs::read(&f) {
                let hex = &token.as_bytes()[4..];
                assert!(
                    !bytes.windows(hex.len()).any(|w| w == hex),
                    "{} holds the token",
                    f.display()
                );
            }
        }
    }

    // The reader sees its own account.
    let day = "day=2026-11-23";
    for (path, kind) in [
        (format!("/v1/accounts/{A}/reports/daily?{day}"), "json"),
        (
            format!("/v1/accounts/{A}/reports/daily?{day}&format=csv"),
            "csv",
        ),
        (
            format!("/v1/accounts/{A}/reports/daily?{day}&format=html"),
            "html",
        ),
        (format!("/v1/accounts/{A}/bills?format=csv"), "csv"),
        (format!("/v1/accounts/{A}/notices"), "json"),
    ] {
        let (s, _, body) = send(&app, Method::GET, &path, Some(&token), None).await;
        assert_eq!(s, 200, "{path}: {body}");
        if kind == "csv" {
            assert!(body.contains(A) && !body.contains(B), "{path}: {body}");
        }
    }
    let (s, bills) = app
        .call(
            Method::GET,
            &format!("/v1/accounts/{A}/bills"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let bills = bills["bills"].as_array().unwrap();
    assert!(!bills.is_empty());
    assert!(bills.iter().all(|l| l["account"] == A), "{bills:?}");
    // The same lines as the admin route, and the report the admin route gives.
    let (_, admin_bills) = app
        .admin(Method::GET, &format!("/v1/admin/bills?account={A}"), None)
        .await;
    assert_eq!(bills, admin_bills["bills"].as_array().unwrap());
    let (_, report) = app
        .call(
            Method::GET,
            &format!("/v1/accounts/{A}/reports/daily?{day}"),
            Some(&token),
            None,
        )
        .await;
    let (_, admin_report) = app
        .admin(
            Method::GET,
            &format!("/v1/reports/daily?{day}&account={A}"),
            None,
        )
        .await;
    assert_eq!(report, admin_report);
    // The export is the replay case `aggregator export` prints.
    let (s, case) = app
        .call(
            Method::GET,
            &format!("/v1/accounts/{A}/export?{day}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{case}");
    assert_eq!(case["name"], format!("{A}-2026-11-23"));
    assert_eq!(case["accounts"][0]["id"], A);
    assert!(case["samples"].as_array().unwrap().len() >= 24);
    assert!(!case["runs"].as_array().unwrap().is_empty());

    // Another account's reports, bills, notices and export are 403, and so is the admin API.
    for path in [
        format!("/v1/accounts/{B}/reports/daily?{day}"),
        format!("/v1/accounts/{B}/bills"),
        format!("/v1/accounts/{B}/notices"),
        format!("/v1/accounts/{B}/export?{day}"),
        format!("/v1/admin/bills?account={A}"),
        format!("/v1/reports/daily?{day}&account={A}"),
        format!("/v1/admin/accounts/{A}/notices"),
    ] {
        let (s, _, body) = send(&app, Method::GET, &path, Some(&token), None).await;
        assert_eq!(s, 403, "{path}: {body}");
    }
    // Nor can it push samples.
    let (s, _, body) = send(
        &app,
        Method::POST,
        "/v1/samples",
        Some(&token),
        Some(json!({"samples": []})),
    )
    .await;
    assert_eq!(s, 403, "{body}");

    // Revoked: it stops at once; revoking again answers it unchanged; an
    // unknown token, or one of another account, is 404.
    let id = issued["id"].as_i64().unwrap();
    let (s, first) = revoke(&app, A, id).await;
    assert_eq!(s, 200, "{first}");
    assert!(first["revoked_at"].is_string(), "{first}");
    let (s, _, _) = send(
        &app,
        Method::GET,
        &format!("/v1/accounts/{A}/notices"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 401);
    app.clock.advance(chrono::TimeDelta::minutes(5));
    let (s, again) = revoke(&app, A, id).await;
    assert_eq!((s, &again), (200, &first));
    let (s, v) = revoke(&app, A, id + 100).await;
    assert_eq!((s, v["error"]["field"].as_str()), (404, Some("token_id")));
    let (s, _) = revoke(&app, B, id).await;
    assert_eq!(s, 404);
    let (_, listed) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{A}/reader-tokens"),
            None,
        )
        .await;
    assert_eq!(
        listed["reader_tokens"][0]["revoked_at"],
        first["revoked_at"]
    );
    drop(dir);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_token_labels_are_checked_and_live_tokens_are_limited_per_account() {
    let (_dir, app) = spawn().await;
    app.account_with_cluster(A, "prod").await;
    for bad in [String::new(), "a\u{7}b".into(), "x".repeat(129)] {
        let (s, v) = issue(&app, A, &bad).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (422, Some("name")),
            "{v}"
        );
    }
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{A}/reader-tokens"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = issue(&app, "nobody", "x").await;
    assert_eq!(s, 404);
    let (first, _) = issued_token(&app, A, "t0").await;
    for i in 1..aggregator::store::MAX_READER_TOKENS {
        issued_token(&app, A, &format!("t{i}")).await;
    }
    let (s, v) = issue(&app, A, "one too many").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("too_many_reader_tokens")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("100"),
        "{v}"
    );
    // A revoked token frees its place.
    assert_eq!(revoke(&app, A, first).await.0, 200);
    let (s, v) = issue(&app, A, "one too many").await;
    assert_eq!(s, 201, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn a_customer_token_acts_on_its_own_account_and_pays_from_the_balance() {
    let (_dir, app) = spawn().await;
    let cluster = app.account_with_cluster(A, "prod").await;
    app.account_with_cluster(B, "prod").await;
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{A}/customer-tokens"),
            Some(json!({"name": "acme's console"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (id, customer) = (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    );
    let call = |method: Method, path: String, body: Option<Value>| {
        let (app, customer) = (&app, customer.clone());
        async move { app.call(method, &path, Some(&customer), body).await }
    };

    // The cap: under 500 is refused naming the field; 500 is taken.
    let (s, v) = call(
        Method::PUT,
        format!("/v1/accounts/{A}/cap"),
        Some(json!({"cores": 499})),
    )
    .await;
    assert_eq!((s, &v["error"]["field"]), (422, &json!("cores")), "{v}");
    let (s, v) = call(
        Method::PUT,
        format!("/v1/accounts/{A}/cap"),
        Some(json!({"cores": 500})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, account) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{A}"), None)
        .await;
    assert_eq!(account["cap_history"][0]["cores"], 500, "{account}");

    // An order the balance does not pay is an operator's; one it pays is taken.
    let pack = json!({"product": "image_scan", "quantity": 10});
    let (s, v) = call(
        Method::POST,
        format!("/v1/accounts/{A}/orders"),
        Some(pack.clone()),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["field"]),
        (422, &json!("pay_from_balance")),
        "{v}"
    );
    app.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{A}/credits"),
        Some(json!({"amount": "10.00", "reference": "wire-1"})),
    )
    .await;
    let mut paid = pack.clone();
    paid["pay_from_balance"] = json!(true);
    let (s, v) = call(Method::POST, format!("/v1/accounts/{A}/orders"), Some(paid)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(Method::GET, format!("/v1/accounts/{A}/balance"), None).await;
    assert_eq!((s, &v["balance"]), (200, &json!("7.50")), "{v}");

    // Images the node pushed, authorized by the customer: three fewer available.
    let images: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("sha256:{i:064x}"), "repo_tags": [], "repo_digests": [], "size_bytes": 1}))
        .collect();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/images",
            Some(&cluster),
            Some(json!({"node": "n1", "at": local("2026-11-24T11:30:00"), "images": images})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<String> = (1..=3).map(|i| format!("sha256:{i:064x}")).collect();
    let (s, v) = call(
        Method::POST,
        format!("/v1/accounts/{A}/image-authorizations"),
        Some(json!({"image_ids": ids})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authorized"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["available"], 7, "{v}");

    // Another account is not its own; a reader token cannot act.
    let (s, _) = call(
        Method::PUT,
        format!("/v1/accounts/{B}/cap"),
        Some(json!({"cores": 500})),
    )
    .await;
    assert_eq!(s, 403);
    let (_, reader) = issued_token(&app, A, "dashboard").await;
    let (s, _) = app
        .call(
            Method::PUT,
            &format!("/v1/accounts/{A}/cap"),
            Some(&reader),
            Some(json!({"cores": 600})),
        )
        .await;
    assert_eq!(s, 403);

    // Revoked, it stops at once.
    let (s, _) = app
        .admin(
            Method::DELETE,
            &format!("/v1/admin/accounts/{A}/customer-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = call(Method::GET, format!("/v1/accounts/{A}/balance"), None).await;
    assert_eq!(s, 401);
    app.stop().await;
}
