//! The audit log through the service: every route that changes something
//! writes one entry naming its caller, route, address and change; reads
//! write none; a change refused writes none; the chain holds.

use aggregator::http::ROUTES;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{aggregator_command, console_login, local, no_redirects, TestApp, ADMIN};

const ACME: &str = "acme";

/// The routes whose calls are data from agents and log services, with their
/// own trails (samples, image lists, usage reports): no entry.
const UNAUDITED: [(&str, &str); 3] = [
    ("post", "/v1/samples"),
    ("post", "/v1/images"),
    ("put", "/v1/log-storage/usage"),
];

fn image(n: u32) -> String {
    format!("sha256:{:064x}", u64::from(n) * 0x9e37_79b9 + 1)
}

async fn log(app: &TestApp, query: &str) -> Vec<Value> {
    let (s, v) = app
        .admin(Method::GET, &format!("/v1/admin/audit{query}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

async fn created(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = app.call(Method::POST, path, Some(token), Some(body)).await;
    assert!(s == 201 || s == 200, "{path}: {s} {v}");
    v
}

/// What the walk holds on to: the tokens and ids its calls need.
struct Shop {
    cluster: String,
    customer: String,
    customer_id: i64,
    logs: String,
    orders: Vec<i64>,
    log_order: i64,
    reader_id: i64,
    reader: String,
    spare_customer_id: i64,
    log_token_id: i64,
}

async fn shop(app: &TestApp) -> Shop {
    let cluster = app.account_with_cluster(ACME, "prod").await;
    let admin = |path: &str| format!("/v1/admin/accounts/{ACME}/{path}");
    let customer = created(
        app,
        ADMIN,
        &admin("customer-tokens"),
        json!({"name": "console"}),
    )
    .await;
    let spare = created(
        app,
        ADMIN,
        &admin("customer-tokens"),
        json!({"name": "spare"}),
    )
    .await;
    let reader = created(app, ADMIN, &admin("reader-tokens"), json!({"name": "dash"})).await;
    let logs = created(app, ADMIN, &admin("log-tokens"), json!({"name": "logs"})).await;
    let spare_logs = created(app, ADMIN, &admin("log-tokens"), json!({"name": "old"})).await;
    created(
        app,
        ADMIN,
        &admin("credits"),
        json!({"amount": "5000.00", "reference": "pay-1"}),
    )
    .await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let o = created(
            app,
            ADMIN,
            &admin("orders"),
            json!({"cores": 10, "months": 1}),
        )
        .await;
        orders.push(o["id"].as_i64().unwrap());
    }
    created(
        app,
        ADMIN,
        &admin("orders"),
        json!({"product": "image_scan", "quantity": 50}),
    )
    .await;
    let log_order = created(
        app,
        ADMIN,
        &admin("orders"),
        json!({"product": "log_storage", "gb": 10, "months": 1}),
    )
    .await;
    // Images in the inventory to authorize, through the routes and the console.
    let images: Vec<Value> = (0..4)
        .map(|n| json!({"id": image(n), "repo_tags": [format!("r.example/a:{n}")], "source": "registry"}))
        .collect();
    created(app, ADMIN, &admin("images"), json!({ "images": images })).await;
    Shop {
        cluster,
        customer: customer["token"].as_str().unwrap().into(),
        customer_id: customer["id"].as_i64().unwrap(),
        logs: logs["token"].as_str().unwrap().into(),
        orders,
        log_order: log_order["id"].as_i64().unwrap(),
        reader_id: reader["id"].as_i64().unwrap(),
        reader: reader["token"].as_str().unwrap().into(),
        spare_customer_id: spare["id"].as_i64().unwrap(),
        log_token_id: spare_logs["id"].as_i64().unwrap(),
    }
}

/// A call: its path, token, and body (JSON, or a form for the console).
enum Body {
    None,
    Json(Value),
    Form(Vec<(&'static str, String)>),
}

/// The call that makes a change through `method path`, and the role and
/// account its entry names. A new route that changes something needs its
/// call here: the walk fails on a route it has none for.
fn call_for(
    method: &str,
    path: &str,
    shop: &Shop,
) -> (
    String,
    Option<String>,
    Body,
    &'static str,
    Option<&'static str>,
) {
    let admin = Some(ADMIN.to_string());
    let customer = Some(shop.customer.clone());
    let a = |rest: &str| format!("/v1/admin/accounts/{ACME}{rest}");
    let c = |rest: &str| format!("/v1/accounts/{ACME}{rest}");
    let console = |rest: &str| format!("/console/accounts/{ACME}{rest}");
    let (order, other) = (shop.orders[0], shop.orders[1]);
    match (method, path) {
        ("post", "/v1/samples") => (
            path.into(),
            Some(shop.cluster.clone()),
            Body::Json(json!({"samples": [{"node": "n1", "cores": 8, "at": local("2026-12-01T09:05:00"), "seq": 1}]})),
            "cluster",
            None,
        ),
        ("post", "/v1/images") => (
            path.into(),
            Some(shop.cluster.clone()),
            Body::Json(json!({"node": "n1", "at": local("2026-12-01T09:05:00"), "images": [{"id": image(9)}]})),
            "cluster",
            None,
        ),
        ("put", "/v1/log-storage/usage") => (
            path.into(),
            Some(shop.logs.clone()),
            Body::Json(json!({"at": local("2026-12-01T09:05:00"), "days": [{"day": "2026-11-30", "bytes": 1000}]})),
            "logs",
            None,
        ),
        ("post", "/v1/admin/accounts") => (
            path.into(),
            admin,
            Body::Json(json!({"id": "beta"})),
            "admin",
            Some("beta"),
        ),
        ("post", "/v1/admin/accounts/{id}/contacts") => (
            a("/contacts"),
            admin,
            Body::Json(json!({"name": "Ann", "role": "finance_collaborator", "email": "ann@example.com"})),
            "admin",
            Some(ACME),
        ),
        // Acme bought licences; the account the walk made has not.
        ("post", "/v1/admin/accounts/{id}/trial") => (
            "/v1/admin/accounts/beta/trial".into(),
            admin,
            Body::None,
            "admin",
            Some("beta"),
        ),
        ("post", "/v1/admin/accounts/{id}/orders") => (
            a("/orders"),
            admin,
            Body::Json(json!({"cores": 5, "months": 1})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/orders/{order}/renew") => (
            a(&format!("/orders/{order}/renew")),
            admin,
            Body::None,
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/admin/accounts/{id}/orders/{order}/auto-renew") => (
            a(&format!("/orders/{order}/auto-renew")),
            admin,
            Body::Json(json!({"auto_renew": true})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/credits") => (
            a("/credits"),
            admin,
            Body::Json(json!({"amount": "10.00", "reference": "pay-2"})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/clusters") => (
            a("/clusters"),
            admin,
            Body::Json(json!({"name": "staging"})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/clusters/{name}/rotate-token") => (
            a("/clusters/staging/rotate-token"),
            admin,
            Body::None,
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/licenses") => (
            a("/licenses"),
            admin,
            Body::Json(json!({"cores": 8, "start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"})),
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/admin/accounts/{id}/cap") => (
            a("/cap"),
            admin,
            Body::Json(json!({"cores": 600})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/billing-runs") => (path.into(), admin, Body::None, "admin", None),
        ("post", "/v1/admin/accounts/{id}/reader-tokens") => (
            a("/reader-tokens"),
            admin,
            Body::Json(json!({"name": "wall screen"})),
            "admin",
            Some(ACME),
        ),
        ("delete", "/v1/admin/accounts/{id}/reader-tokens/{token_id}") => (
            a(&format!("/reader-tokens/{}", shop.reader_id)),
            admin,
            Body::None,
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/images") => (
            a("/images"),
            admin,
            Body::Json(json!({"images": [{"id": image(20), "source": "registry"}]})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/image-authorizations") => (
            a("/image-authorizations"),
            admin,
            Body::Json(json!({"image_ids": [image(0)]})),
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/admin/accounts/{id}/image-authorizations/auto") => (
            a("/image-authorizations/auto"),
            admin,
            Body::Json(json!({"auto_authorize": true, "max_daily": 5})),
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/image-authorizations/refund") => (
            a("/image-authorizations/refund"),
            admin,
            Body::Json(json!({"quantity": 2})),
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/admin/products/{product}/pause") => (
            "/v1/admin/products/image_scan/pause".into(),
            admin,
            Body::Json(json!({"paused_from": "2027-02-01", "paused_until": "2027-02-02"})),
            "admin",
            None,
        ),
        ("delete", "/v1/admin/products/{product}/pause") => (
            "/v1/admin/products/image_scan/pause".into(),
            admin,
            Body::None,
            "admin",
            None,
        ),
        ("post", "/v1/admin/accounts/{id}/customer-tokens") => (
            a("/customer-tokens"),
            admin,
            Body::Json(json!({"name": "second console"})),
            "admin",
            Some(ACME),
        ),
        ("delete", "/v1/admin/accounts/{id}/customer-tokens/{token_id}") => (
            a(&format!("/customer-tokens/{}", shop.spare_customer_id)),
            admin,
            Body::None,
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/accounts/{id}/cap") => (
            c("/cap"),
            customer,
            Body::Json(json!({"cores": 650})),
            "customer",
            Some(ACME),
        ),
        ("post", "/v1/accounts/{id}/orders") => (
            c("/orders"),
            customer,
            Body::Json(json!({"cores": 2, "months": 1, "pay_from_balance": true})),
            "customer",
            Some(ACME),
        ),
        ("put", "/v1/accounts/{id}/orders/{order}/auto-renew") => (
            c(&format!("/orders/{other}/auto-renew")),
            customer,
            Body::Json(json!({"auto_renew": true})),
            "customer",
            Some(ACME),
        ),
        ("post", "/v1/accounts/{id}/image-authorizations") => (
            c("/image-authorizations"),
            customer,
            Body::Json(json!({"image_ids": [image(1)]})),
            "customer",
            Some(ACME),
        ),
        ("put", "/v1/accounts/{id}/image-authorizations/auto") => (
            c("/image-authorizations/auto"),
            customer,
            Body::Json(json!({"auto_authorize": false})),
            "customer",
            Some(ACME),
        ),
        ("put", "/v1/accounts/{id}/log-storage/orders/{order}/auto-renew") => (
            c(&format!("/log-storage/orders/{}/auto-renew", shop.log_order)),
            customer,
            Body::Json(json!({"auto_renew": true})),
            "customer",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/log-tokens") => (
            a("/log-tokens"),
            admin,
            Body::Json(json!({"name": "second log service"})),
            "admin",
            Some(ACME),
        ),
        ("delete", "/v1/admin/accounts/{id}/log-tokens/{token_id}") => (
            a(&format!("/log-tokens/{}", shop.log_token_id)),
            admin,
            Body::None,
            "admin",
            Some(ACME),
        ),
        ("post", "/v1/admin/accounts/{id}/log-storage/expansions") => (
            a("/log-storage/expansions"),
            admin,
            Body::Json(json!({"gb": 10})),
            "admin",
            Some(ACME),
        ),
        ("put", "/v1/admin/accounts/{id}/log-storage/orders/{order}/auto-renew") => (
            a(&format!("/log-storage/orders/{}/auto-renew", shop.log_order)),
            admin,
            Body::Json(json!({"auto_renew": false})),
            "admin",
            Some(ACME),
        ),
        // The console's forms, with the customer's token (a bearer token's
        // forms need no CSRF token); login and logout are walked apart.
        ("post", "/console/accounts/{id}/cap") => (
            console("/cap"),
            customer,
            Body::Form(vec![("cores", "700".into())]),
            "customer",
            Some(ACME),
        ),
        ("post", "/console/accounts/{id}/orders") => (
            console("/orders"),
            customer,
            Body::Form(vec![
                ("product", "pro".into()),
                ("quantity", "1".into()),
                ("months", "1".into()),
            ]),
            "customer",
            Some(ACME),
        ),
        ("post", "/console/accounts/{id}/auto-renew") => (
            console("/auto-renew"),
            customer,
            Body::Form(vec![("order", other.to_string()), ("auto_renew", "false".into())]),
            "customer",
            Some(ACME),
        ),
        ("post", "/console/accounts/{id}/images/authorize") => (
            console("/images/authorize"),
            customer,
            Body::Form(vec![("image", image(2)), ("confirm", "yes".into())]),
            "customer",
            Some(ACME),
        ),
        ("post", "/console/accounts/{id}/images/auto") => (
            console("/images/auto"),
            customer,
            Body::Form(vec![("auto_authorize", "true".into()), ("max_daily", "3".into())]),
            "customer",
            Some(ACME),
        ),
        _ => panic!("{method} {path}: no call in the audit walk; a route that changes something must say what its entry holds"),
    }
}

/// A console session opened with `token`: its cookie and its forms' CSRF token.
async fn console_session(app: &TestApp, token: &str) -> (String, String) {
    let client = no_redirects();
    let (_, cookie) = console_login(app, &client, token).await;
    let page = client
        .get(app.url(&format!("/console/accounts/{ACME}/purchase")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .expect("a form with its CSRF token")
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn every_route_that_changes_something_writes_one_entry_and_reads_write_none() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let shop = shop(&app).await;
    let client = no_redirects();
    let mut walked = 0;
    for (method, path, _, _) in ROUTES {
        if *method == "get" || path.starts_with("/console/log") {
            continue;
        }
        let before = log(&app, "").await.len();
        let (url, token, body, role, account) = call_for(method, path, &shop);
        let mut request = client.request(
            method.to_uppercase().parse::<Method>().unwrap(),
            app.url(&url),
        );
        if let Some(t) = &token {
            request = request.bearer_auth(t);
        }
        request = match body {
            Body::None => request,
            Body::Json(v) => request.json(&v),
            Body::Form(fields) => request.form(&fields),
        };
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let location = answer
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        let text = answer.text().await.unwrap();
        assert!(
            (200..300).contains(&status)
                || (status == 303 && !location.as_deref().unwrap_or("").contains("login")),
            "{method} {path}: {status} {text}"
        );
        let after = log(&app, "").await;
        let new = &after[before..];
        if UNAUDITED.contains(&(*method, *path)) {
            assert!(new.is_empty(), "{method} {path} wrote {new:?}");
            continue;
        }
        assert_eq!(new.len(), 1, "{method} {path}: {new:?}");
        let entry = &new[0];
        assert_eq!(
            entry["action"],
            format!("{} {path}", method.to_uppercase()),
            "{entry}"
        );
        assert_eq!(entry["actor"]["role"], role, "{method} {path}: {entry}");
        // The admin token by the first 12 hex digits of its SHA-256.
        let expected_id = match role {
            "customer" => shop.customer_id.to_string(),
            _ => aggregator::security::tokens::hash_token(ADMIN)[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        assert_eq!(entry["actor"]["id"], expected_id.as_str(), "{entry}");
        if role == "admin" {
            let id = entry["actor"]["id"].as_str().unwrap();
            assert!(
                id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{entry}"
            );
            assert!(!ADMIN.contains(id), "the admin token is not in the log");
        }
        assert_eq!(entry["source"], "127.0.0.1", "{entry}");
        assert_eq!(
            entry["account"].as_str(),
            account,
            "{method} {path}: {entry}"
        );
        assert!(
            !entry["change"].as_object().unwrap().is_empty(),
            "{method} {path} recorded no change: {entry}"
        );
        walked += 1;
    }
    assert!(walked >= 35, "{walked} routes walked");

    // Login and logout: a session opened and ended, by its token.
    let before = log(&app, "").await.len();
    let (cookie, csrf) = console_session(&app, &shop.customer).await;
    let answer = client
        .post(app.url("/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let after = log(&app, "").await;
    let actions: Vec<&str> = after[before..]
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["POST /console/login", "POST /console/logout"]);
    for e in &after[before..] {
        assert_eq!(
            e["actor"],
            json!({"role": "customer", "id": shop.customer_id.to_string()})
        );
        assert_eq!(e["account"], ACME);
    }

    // Every read: no entry, whatever it answers.
    let before = log(&app, "").await.len();
    for (method, path, _, _) in ROUTES.iter().filter(|r| r.0 == "get") {
        let concrete = path
            .replace("{id}", ACME)
            .replace("{month}", "2026-12")
            .replace("{token_id}", "1")
            .replace("{order}", &shop.orders[0].to_string())
            .replace("{name}", "prod")
            .replace("{product}", "image_scan");
        let answer = client
            .get(app.url(&format!("{concrete}?day=2026-12-01")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().as_u16() < 500,
            "{method} {path}: {}",
            answer.status()
        );
    }
    assert_eq!(log(&app, "").await.len(), before, "reads wrote entries");
    let (s, page) = app
        .admin(Method::GET, "/v1/admin/audit?limit=1", None)
        .await;
    assert_eq!(s, 200, "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_refused_change_writes_no_entry_and_the_log_is_filtered_by_account_actor_and_time() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let shop = shop(&app).await;
    let before = log(&app, "").await.len();
    // Below the minimum cap, an unknown order, another account's route.
    let (s, _) = app
        .admin(
            Method::PUT,
            &format!("/v1/admin/accounts/{ACME}/cap"),
            Some(json!({"cores": 1})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = app
        .admin(
            Method::PUT,
            &format!("/v1/admin/accounts/{ACME}/orders/999999/auto-renew"),
            Some(json!({"auto_renew": true})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/accounts/beta/cap",
            Some(&shop.customer),
            Some(json!({"cores": 600})),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        log(&app, "").await.len(),
        before,
        "refused changes wrote entries"
    );

    let (s, _) = app
        .call(
            Method::PUT,
            &format!("/v1/accounts/{ACME}/cap"),
            Some(&shop.customer),
            Some(json!({"cores": 600})),
        )
        .await;
    assert_eq!(s, 200);
    let by_customer = log(&app, &format!("?actor=customer:{}", shop.customer_id)).await;
    assert_eq!(by_customer.len(), 1);
    let change = by_customer[0]["change"].as_object().unwrap();
    let (key, cap) = change.iter().next().unwrap();
    let key = key.clone();
    assert!(key.starts_with("caps/"), "{key}");
    assert_eq!(cap["before"], Value::Null);
    assert_eq!(cap["after"]["cores"], 600);

    // The customer reads its account's entries, and no other's.
    let (s, own) = app
        .call(
            Method::GET,
            &format!("/v1/accounts/{ACME}/audit"),
            Some(&shop.customer),
            None,
        )
        .await;
    assert_eq!(s, 200, "{own}");
    let own = own["entries"].as_array().unwrap();
    assert!(own.iter().all(|e| e["account"] == ACME), "{own:?}");
    // An operator's address and token are the operators' own.
    let by_admin: Vec<&Value> = own
        .iter()
        .filter(|e| e["actor"]["role"] == "admin")
        .collect();
    assert!(!by_admin.is_empty());
    assert!(
        by_admin
            .iter()
            .all(|e| e["source"] == "" && e["actor"]["id"] == ""),
        "{by_admin:?}"
    );
    // A reader token reads the account, not its log.
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/v1/accounts/{ACME}/audit"),
            Some(&shop.reader),
            None,
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        own.len(),
        log(&app, &format!("?account={ACME}")).await.len()
    );
    let (s, _) = app
        .call(
            Method::GET,
            "/v1/accounts/beta/audit",
            Some(&shop.customer),
            None,
        )
        .await;
    assert_eq!(s, 403);

    // The console's page of the account's changes shows the same entries.
    let (s, html) = app
        .call(
            Method::GET,
            &format!("/console/accounts/{ACME}/changes"),
            Some(&shop.customer),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let html = html.as_str().unwrap();
    assert!(html.contains("PUT /v1/accounts/{id}/cap"), "{html}");
    assert!(
        html.contains(&format!("customer {}", shop.customer_id)),
        "{html}"
    );
    assert!(html.contains(key.as_str()), "{html}");

    // A window of time, and its edges refused when out of order.
    app.clock.advance(chrono::TimeDelta::hours(1));
    let (s, _) = app
        .admin(
            Method::PUT,
            &format!("/v1/admin/accounts/{ACME}/cap"),
            Some(json!({"cores": 800})),
        )
        .await;
    assert_eq!(s, 200);
    let later = log(&app, "?since=2026-12-01T02:30:00Z").await;
    assert_eq!(later.len(), 1, "{later:?}");
    let (s, e) = app
        .admin(
            Method::GET,
            "/v1/admin/audit?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (422, Some("until")),
        "{e}"
    );
    let (s, e) = app
        .admin(Method::GET, "/v1/admin/audit?actor=root", None)
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (422, Some("actor")),
        "{e}"
    );
    app.stop().await;
}

fn audit_command(database: &std::path::Path, action: &str) -> (bool, String) {
    let database = match crate::support::database(database) {
        aggregator::config::Database::Sqlite(path) => path.display().to_string(),
        aggregator::config::Database::Postgres(url) => url,
    };
    aggregator_command(&["audit", action, "--database", &database])
}

#[tokio::test]
async fn audit_verify_finds_an_entry_altered_or_removed_behind_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let app = TestApp::spawn(path.clone(), None, local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    for cores in [600, 700, 800] {
        let (s, _) = app
            .admin(
                Method::PUT,
                &format!("/v1/admin/accounts/{ACME}/cap"),
                Some(json!({"cores": cores})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let entries = log(&app, "").await;
    assert_eq!(entries.len(), 5, "{entries:?}");
    app.stop().await;

    let (ok, said) = audit_command(&path, "verify");
    assert!(ok, "{said}");
    assert!(said.contains("5 entries"), "{said}");
    assert!(
        said.contains(entries[4]["hash"].as_str().unwrap()),
        "{said}"
    );
    let (ok, exported) = audit_command(&path, "export");
    assert!(ok, "{exported}");
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines, entries,
        "the export is the log as the route shows it"
    );

    // The cap of entry 4 made to look like 500.
    crate::support::execute_behind_the_store(
        &path,
        "UPDATE audit_log SET change = replace(change, '700', '500') WHERE seq = 4",
    );
    let (ok, said) = audit_command(&path, "verify");
    assert!(!ok, "{said}");
    assert!(said.contains("entry 4 was altered"), "{said}");
    crate::support::execute_behind_the_store(
        &path,
        "UPDATE audit_log SET change = replace(change, '500', '700') WHERE seq = 4",
    );
    assert!(audit_command(&path, "verify").0);

    crate::support::execute_behind_the_store(&path, "DELETE FROM audit_log WHERE seq = 3");
    let (ok, said) = audit_command(&path, "verify");
    assert!(!ok, "{said}");
    assert!(said.contains("entry 3 is missing"), "{said}");
}

#[tokio::test]
async fn the_lifecycle_step_records_its_renewals_as_the_systems_changes() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    let a = |rest: &str| format!("/v1/admin/accounts/{ACME}{rest}");
    created(
        &app,
        ADMIN,
        &a("/credits"),
        json!({"amount": "1000.00", "reference": "p"}),
    )
    .await;
    let order = created(
        &app,
        ADMIN,
        &a("/orders"),
        json!({"cores": 10, "months": 1, "auto_renew": true, "pay_from_balance": true}),
    )
    .await;
    app.clock.set(local("2027-01-02T10:00:00"));
    let (s, run) = app
        .admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    assert_eq!(s, 200, "{run}");
    let system = log(&app, "?actor=system").await;
    assert!(!system.is_empty(), "{run}");
    for e in &system {
        assert_eq!(e["actor"]["id"], "lifecycle", "{e}");
        assert_eq!(e["source"], "", "{e}");
        assert_eq!(e["account"], ACME, "{e}");
        assert!(
            e["action"]
                .as_str()
                .unwrap()
                .starts_with("lifecycle step of "),
            "{e}"
        );
    }
    let renewal = system
        .iter()
        .find(|e| {
            e["change"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with("orders/") && !k.ends_with(&format!("/{}", order["id"])))
        })
        .unwrap_or_else(|| panic!("no renewal among {system:?}"));
    let balance = renewal["change"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("balance_entries/"))
        .expect("the renewal's debit");
    assert_eq!(balance.1["before"], Value::Null);
    // The admin's run is one entry of its own, after the steps it made.
    let runs = log(&app, "?actor=admin").await;
    assert_eq!(
        runs.last().unwrap()["action"],
        "POST /v1/admin/billing-runs"
    );
    app.stop().await;
}
