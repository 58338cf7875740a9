//! Monthly statements over real HTTP on the manual clock: each bill line in
//! exactly one month's statement, the balance carried from one month to the
//! next, orders, credits and refunds; the JSON signed, checked offline by
//! the real `aggregator verify-statement`, and refused once altered.

use std::process::Command;

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::{local, TestApp};

const ACME: &str = "acme";

fn money(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("money is a string: {v}"))
        .parse()
        .unwrap()
}

fn sum(items: &Value, field: &str) -> Decimal {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| money(&i[field]))
        .sum()
}

async fn ok(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = app.admin(method, path, body).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

async fn run_at(app: &TestApp, wall: &str) {
    app.clock.set(local(wall));
    ok(app, Method::POST, "/v1/admin/billing-runs", None).await;
}

/// The statement of `month` as served to the admin (the signed document).
async fn statement(app: &TestApp, month: &str) -> Value {
    ok(
        app,
        Method::GET,
        &format!("/v1/admin/accounts/{ACME}/statements/{month}"),
        None,
    )
    .await
}

/// October and November of an account: lines in both months, a late sample
/// in November correcting October 31, orders, a refund and credits.
async fn two_months() -> (tempfile::TempDir, TestApp) {
    let (dir, app) = TestApp::in_temp_dir(local("2026-10-30T09:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/credits"),
        Some(json!({"amount": "1000.00", "reference": "wire-1"})),
    )
    .await;
    // Each day pushed as it ends, billed at the next 02:00.
    app.clock.set(local("2026-11-01T00:30:00"));
    app.push_day(&token, "n1", 200, "2026-10-31", 1).await;
    run_at(&app, "2026-11-01T02:00:00").await;
    app.clock.set(local("2026-11-02T00:30:00"));
    app.push_day(&token, "n1", 200, "2026-11-01", 100).await;
    run_at(&app, "2026-11-02T02:00:00").await;
    app.clock.set(local("2026-11-04T10:00:00"));
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/orders"),
        Some(json!({"cores": 100, "months": 1})),
    )
    .await;
    app.clock.set(local("2026-11-04T10:05:00"));
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/orders"),
        Some(json!({"product": "image_scan", "quantity": 20, "pay_from_balance": true})),
    )
    .await;
    // A second node's October 31, pushed late: an adjustment issued in November.
    app.push_day(&token, "n2", 100, "2026-10-31", 1).await;
    run_at(&app, "2026-11-06T02:00:00").await;
    app.clock.set(local("2026-11-07T10:00:00"));
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/image-authorizations/refund"),
        Some(json!({"quantity": 5})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/credits"),
        Some(json!({"amount": "50.00", "reference": "wire-2"})),
    )
    .await;
    app.clock.set(local("2026-12-01T00:30:00"));
    app.push_day(&token, "n1", 200, "2026-11-30", 500).await;
    run_at(&app, "2026-12-01T02:00:00").await;
    app.clock.set(local("2026-12-02T09:00:00"));
    (dir, app)
}

#[tokio::test]
async fn each_bill_line_is_in_exactly_one_months_statement_and_the_balance_carries_over() {
    let (_dir, app) = two_months().await;
    let october = statement(&app, "2026-10").await["statement"].clone();
    let november = statement(&app, "2026-11").await["statement"].clone();
    for s in [&october, &november] {
        assert_eq!(s["format"], "core-meter-statement/1");
        assert_eq!(s["account"], ACME);
        assert_eq!(s["provisional"], false, "{s}");
        assert_eq!(money(&s["totals"]["daily"]), sum(&s["days"], "amount"));
        assert_eq!(
            money(&s["totals"]["adjustments"]),
            sum(&s["adjustments"], "amount")
        );
        assert_eq!(
            money(&s["totals"]["usage"]),
            money(&s["totals"]["daily"]) + money(&s["totals"]["adjustments"])
        );
        // The ledger's own arithmetic: each end and what happened between.
        assert_eq!(
            money(&s["opening_balance"])
                + money(&s["totals"]["credits"])
                + money(&s["totals"]["refunds"])
                - money(&s["totals"]["debits"]),
            money(&s["closing_balance"]),
            "{s}"
        );
    }
    // Every line the service issued, in exactly one of the two statements:
    // daily lines by their day's month, adjustments by the month issued.
    let bills = app.bills().await;
    assert!(bills.len() >= 4, "{bills:?}");
    let key = |day: &Value, seq: &Value| format!("{}/{}", day.as_str().unwrap(), seq);
    let mut stated: Vec<String> = Vec::new();
    for s in [&october, &november] {
        for d in s["days"].as_array().unwrap() {
            stated.push(key(&d["day"], &json!(1)));
        }
        for a in s["adjustments"].as_array().unwrap() {
            stated.push(key(&a["day"], &a["seq"]));
        }
    }
    let mut billed: Vec<String> = bills.iter().map(|b| key(&b["day"], &b["seq"])).collect();
    stated.sort();
    billed.sort();
    assert_eq!(stated, billed);
    let days = |s: &Value| -> Vec<String> {
        s["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["day"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(days(&october), ["2026-10-31"]);
    assert_eq!(days(&november), ["2026-11-01", "2026-11-30"]);
    assert!(october["adjustments"].as_array().unwrap().is_empty());
    let adjustment = &november["adjustments"][0];
    assert_eq!(adjustment["day"], "2026-10-31", "{november}");
    assert!(money(&adjustment["amount"]) > Decimal::ZERO, "{adjustment}");
    let amounts_of = |day: &str| -> Decimal {
        bills
            .iter()
            .filter(|b| b["day"] == day)
            .map(|b| money(&b["amount"]))
            .sum()
    };
    assert_eq!(
        money(&october["totals"]["daily"]) + money(&adjustment["amount"]),
        amounts_of("2026-10-31")
    );

    // October: the first credit only; November opens where October closed.
    assert_eq!(money(&october["opening_balance"]), Decimal::new(0, 2));
    assert_eq!(money(&october["closing_balance"]), Decimal::new(100_000, 2));
    assert_eq!(november["opening_balance"], october["closing_balance"]);
    let balance = ok(
        &app,
        Method::GET,
        &format!("/v1/admin/accounts/{ACME}/balance"),
        None,
    )
    .await;
    assert_eq!(november["closing_balance"], balance["balance"], "{balance}");
    let kinds: Vec<&str> = november["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["debit", "refund", "credit"]);
    assert_eq!(money(&november["totals"]["credits"]), Decimal::new(5000, 2));
    assert_eq!(
        money(&november["totals"]["refunds"]),
        sum(&november["refunds"], "amount")
    );
    assert_eq!(november["refunds"][0]["quantity"], 5);

    // The orders of the month, each product, as paid.
    let orders: Vec<(String, String, u64)> = november["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["product"].as_str().unwrap().to_string(),
                o["paid_from"].as_str().unwrap().to_string(),
                o["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        orders,
        [
            ("pro".to_string(), "invoice".to_string(), 100),
            ("image_scan".to_string(), "balance".to_string(), 20)
        ]
    );
    assert_eq!(
        money(&november["totals"]["orders_from_balance"]),
        money(&november["totals"]["debits"])
    );
    assert!(october["orders"].as_array().unwrap().is_empty());

    // December has begun: provisional, nothing billed in it yet.
    let december = statement(&app, "2026-12").await["statement"].clone();
    assert_eq!(december["provisional"], true);
    assert_eq!(december["opening_balance"], november["closing_balance"]);
    app.stop().await;
}

#[tokio::test]
async fn a_month_out_of_its_domain_or_not_begun_is_refused_naming_month() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-15T09:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    for (month, status) in [
        ("2026-13", 422),
        ("2026-1", 422),
        ("26-11", 422),
        ("1999-12", 422),
        ("2026-12", 422),
    ] {
        let (s, v) = app
            .admin(
                Method::GET,
                &format!("/v1/admin/accounts/{ACME}/statements/{month}"),
                None,
            )
            .await;
        assert_eq!(s, status, "{month}: {v}");
        assert_eq!(v["error"]["field"], "month", "{month}: {v}");
    }
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/statements/2026-11?format=pdf"),
            None,
        )
        .await;
    assert_eq!((s, &v["error"]["field"]), (400, &json!("format")), "{v}");
    let (s, _) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/nobody/statements/2026-11",
            None,
        )
        .await;
    assert_eq!(s, 404);
    app.stop().await;
}

fn verify(file: &std::path::Path, key: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .arg("verify-statement")
        .arg(file)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_customer_proves_the_statement_offline_and_one_character_changed_is_refused() {
    let (dir, app) = two_months().await;
    // The customer: a reader token of the account, and the published key.
    let reader = ok(
        &app,
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/reader-tokens"),
        Some(json!({"name": "finance"})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let served = app
        .send(
            Method::GET,
            &format!("/v1/accounts/{ACME}/statements/2026-11"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(served.status(), 200);
    let document = served.bytes().await.unwrap();
    let key = app.send(Method::GET, "/v1/statement-key", None, None).await;
    assert_eq!(key.status(), 200, "the key needs no token");
    let key = key.text().await.unwrap();
    let again = app.send(Method::GET, "/v1/statement-key", None, None).await;
    assert_eq!(again.text().await.unwrap(), key, "one key, kept");

    let file = dir.path().join("statement-2026-11.json");
    let key_file = dir.path().join("statement-key.json");
    std::fs::write(&file, &document).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let out = verify(&file, &key_file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("unaltered") && stdout.contains("2026-11"),
        "{stdout}"
    );

    // The closing balance, one digit changed.
    let text = String::from_utf8(document.to_vec()).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    let closing = value["statement"]["closing_balance"].as_str().unwrap();
    let at = text
        .find(&format!("\"closing_balance\":\"{closing}\""))
        .unwrap()
        + "\"closing_balance\":\"".len();
    let digit = text.as_bytes()[at];
    let changed = if digit == b'9' {
        '8'
    } else {
        (digit + 1) as char
    };
    let altered = format!("{}{changed}{}", &text[..at], &text[at + 1..]);
    assert_eq!(altered.len(), text.len());
    std::fs::write(&file, &altered).unwrap();
    let out = verify(&file, &key_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("altered"), "{stderr}");

    // Another service's key does not vouch for it either.
    std::fs::write(&file, &document).unwrap();
    let mut other: Value = serde_json::from_str(&key).unwrap();
    other["public_key"] = json!("00".repeat(32));
    std::fs::write(&key_file, other.to_string()).unwrap();
    let out = verify(&file, &key_file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key_id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The reader sees its own account's statements only.
    app.account_with_cluster("beta", "prod").await;
    let (s, _) = app
        .call(
            Method::GET,
            "/v1/accounts/beta/statements/2026-11",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(s, 403);
    app.stop().await;
}

#[tokio::test]
async fn the_csv_and_the_printable_page_carry_the_same_figures() {
    let (_dir, app) = two_months().await;
    let json = statement(&app, "2026-11").await["statement"].clone();
    let csv = app
        .send(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/statements/2026-11?format=csv"),
            Some(crate::support::ADMIN),
            None,
        )
        .await;
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    let cell = |section: &str, item: &str| -> Decimal {
        rows.iter()
            .find(|r| &r[0] == section && &r[2] == item)
            .unwrap_or_else(|| panic!("{section} {item} in {csv}"))[4]
            .parse()
            .unwrap()
    };
    assert_eq!(
        cell("summary", "opening_balance"),
        money(&json["opening_balance"])
    );
    assert_eq!(
        cell("summary", "closing_balance"),
        money(&json["closing_balance"])
    );
    assert_eq!(cell("total", "usage"), money(&json["totals"]["usage"]));
    assert_eq!(
        rows.iter().filter(|r| &r[0] == "day").count(),
        json["days"].as_array().unwrap().len()
    );

    let page = app
        .send(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/statements/2026-11?format=html"),
            Some(crate::support::ADMIN),
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("@media print"));
    for figure in [
        &json["closing_balance"],
        &json["totals"]["usage"],
        &json["days"][0]["amount"],
    ] {
        assert!(
            page.contains(figure.as_str().unwrap()),
            "{figure} in the page"
        );
    }
    assert!(
        !page.contains("<script"),
        "no script in a page for printing"
    );
    app.stop().await;
}
