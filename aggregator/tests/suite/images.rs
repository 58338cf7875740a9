//! The image-scan add-on (SPEC 10.1 to 10.3) through the HTTP API: packs,
//! node lists and the inventory, authorizations refused whole, receipts,
//! refunds, automatic authorization with a daily limit, pauses, racing
//! batches.

use chrono::TimeDelta;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{local, TestApp};

const ACME: &str = "acme";

/// A distinct image ID for each `n`.
fn image(n: u32) -> String {
    format!("sha256:{:064x}", u64::from(n) * 0x9e37_79b9 + 1)
}

fn images(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(image).collect()
}

/// A node's list as its agent sends it.
fn list(node: &str, at: &str, ids: &[String]) -> Value {
    json!({
        "node": node,
        "at": at,
        "images": ids.iter().map(|id| json!({
            "id": id,
            "repo_tags": [format!("registry.example/app:{}", &id[7..15])],
            "repo_digests": [],
            "size_bytes": 1000,
        })).collect::<Vec<_>>(),
    })
}

async fn push(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, v) = app
        .call(Method::POST, "/v1/images", Some(token), Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn buy(app: &TestApp, quantity: u32) -> Value {
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/orders"),
            Some(json!({"product": "image_scan", "quantity": quantity})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn authorize(app: &TestApp, ids: &[String]) -> (u16, Value) {
    app.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/image-authorizations"),
        Some(json!({ "image_ids": ids })),
    )
    .await
}

/// Sends every batch at once, the apps taking turns; the answers.
async fn race<'a>(
    apps: &[&TestApp],
    batches: impl Iterator<Item = &'a [String]>,
) -> Vec<(u16, Value)> {
    let mut racing = tokio::task::JoinSet::new();
    for (i, batch) in batches.enumerate() {
        let app = apps[i % apps.len()];
        let (client, body) = (app.client.clone(), json!({ "image_ids": batch }));
        let url = app.url(&format!("/v1/admin/accounts/{ACME}/image-authorizations"));
        racing.spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(crate::support::ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
    }
    racing.join_all().await
}

async fn stock(app: &TestApp) -> Value {
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn the_worked_example_buys_twenty_authorizes_updates_refuses_whole_and_passes_after_five_more(
) {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    let pack = buy(&app, 20).await;
    assert_eq!(pack["price"], "5.00");
    assert_eq!(pack["quantity"], 20);

    // Ten images on a node, then ten updated versions of them (new IDs).
    let first = images(0..10);
    let updated = images(10..20);
    let v = push(
        &app,
        &token,
        list("node-1", "2026-12-01T10:00:00+08:00", &first),
    )
    .await;
    assert_eq!(v["status"], "stored");
    assert_eq!(v["new_images"], 10);

    let (s, v) = authorize(&app, &first).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authorized"].as_array().unwrap().len(), 10);
    assert_eq!(v["available"], 10);

    // The same ten again: nothing consumed.
    let (s, v) = authorize(&app, &first).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authorized"], json!([]));
    assert_eq!(v["already_authorized"].as_array().unwrap().len(), 10);
    assert_eq!(v["available"], 10);

    // The updates arrive an hour later: each is a new ID and needs its own.
    app.clock.advance(TimeDelta::hours(1));
    push(
        &app,
        &token,
        list("node-1", "2026-12-01T11:00:00+08:00", &updated),
    )
    .await;
    let (s, v) = authorize(&app, &updated).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["available"], 0);

    // One more is refused whole, saying what it needs and what is there.
    let extra = images(20..21);
    app.clock.advance(TimeDelta::hours(1));
    push(
        &app,
        &token,
        list(
            "node-1",
            "2026-12-01T12:00:00+08:00",
            &[updated.clone(), extra.clone()].concat(),
        ),
    )
    .await;
    let (s, v) = authorize(&app, &[first[0].clone(), extra[0].clone()]).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_authorizations");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("needs 1") && message.contains("0 are available"),
        "{message}"
    );

    // Nothing unused to refund.
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/refund"),
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("0 purchased authorizations are unused"));

    // Five more bought: the refused one now passes.
    buy(&app, 5).await;
    let (s, v) = authorize(&app, &extra).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authorized"], json!(extra));
    assert_eq!(v["available"], 4);

    let summary = stock(&app).await;
    assert_eq!(summary["purchased"], 25);
    assert_eq!(summary["consumed"], 21);
    assert_eq!(summary["refunded"], 0);
    assert_eq!(summary["available"], 4);
    let (_, account) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{ACME}"), None)
        .await;
    assert_eq!(account["image_authorizations"]["available"], 4, "{account}");

    // Twenty-one receipts, each naming its pack, the oldest pack first.
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/receipts"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let receipts = v["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 21);
    assert!(receipts.iter().all(|r| r["how"] == "manual"));
    assert!(receipts[..20].iter().all(|r| r["pack"] == pack["id"]));
    assert_ne!(receipts[20]["pack"], pack["id"]);

    // The inventory: 21 images, the first ten gone from the node but still
    // authorized, the last held by node-1.
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/images"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let all = v["images"].as_array().unwrap();
    assert_eq!(all.len(), 21);
    assert!(all.iter().all(|i| i["authorized"] == true));
    assert_eq!(all[0]["nodes"], json!([]));
    assert_eq!(all[0]["last_seen"], "2026-12-01T02:00:00Z");
    assert_eq!(
        all[20]["nodes"],
        json!([{"cluster": "prod", "node": "node-1"}])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refund_returns_unused_authorizations_to_the_balance_at_the_price_paid() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    buy(&app, 10).await;
    push(
        &app,
        &token,
        list("n", "2026-12-01T10:00:00+08:00", &images(0..3)),
    )
    .await;
    authorize(&app, &images(0..3)).await;
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/refund"),
            Some(json!({"quantity": 7})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["amount"], "1.75");
    assert_eq!(v["balance_after"], "1.75");
    assert_eq!(v["available"], 0);
    assert_eq!(stock(&app).await["refunded"], 7);
    app.stop().await;
}

#[tokio::test]
async fn an_older_list_arriving_late_is_ignored_and_a_retag_is_no_new_image() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    let ids = images(0..2);
    push(&app, &token, list("n", "2026-12-01T10:00:00+08:00", &ids)).await;
    let late = push(
        &app,
        &token,
        list("n", "2026-12-01T09:00:00+08:00", &images(5..6)),
    )
    .await;
    assert_eq!(late["status"], "stale");
    app.clock.advance(TimeDelta::hours(1));
    let mut retagged = list("n", "2026-12-01T11:00:00+08:00", &ids);
    retagged["images"][0]["repo_tags"] = json!(["registry.example/app:v2"]);
    let v = push(&app, &token, retagged).await;
    assert_eq!(v["new_images"], 0);
    let (_, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/images"),
            None,
        )
        .await;
    let all = v["images"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{v}");
    assert_eq!(all[0]["repo_tags"], json!(["registry.example/app:v2"]));
    app.stop().await;
}

#[tokio::test]
async fn automatic_authorization_stops_at_the_daily_limit_and_goes_on_the_next_day() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    buy(&app, 10).await;
    let (s, v) = app
        .admin(
            Method::PUT,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/auto"),
            Some(json!({"auto_authorize": true, "max_daily": 3})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let v = push(
        &app,
        &token,
        list("n", "2026-12-01T10:00:00+08:00", &images(0..5)),
    )
    .await;
    assert_eq!(
        (v["auto_authorized"].as_u64(), v["auto_refused"].as_u64()),
        (Some(3), Some(2))
    );

    // The next day in the billing zone: three more.
    app.clock.advance(TimeDelta::days(1));
    let v = push(
        &app,
        &token,
        list("n", "2026-12-02T10:00:00+08:00", &images(0..9)),
    )
    .await;
    assert_eq!(
        (v["auto_authorized"].as_u64(), v["auto_refused"].as_u64()),
        (Some(3), Some(1))
    );

    let (_, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/receipts"),
            None,
        )
        .await;
    let hows: Vec<&str> = v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["how"].as_str().unwrap())
        .collect();
    assert_eq!(
        hows,
        [
            "auto",
            "auto",
            "auto",
            "reach_limit",
            "reach_limit",
            "auto",
            "auto",
            "auto",
            "reach_limit"
        ]
    );
    // The two left over from the first day are not retried on their own:
    // they stay in the inventory, unauthorized, for a batch.
    let (_, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/images?status=unauthorized"),
            None,
        )
        .await;
    assert_eq!(v["images"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(stock(&app).await["available"], 4);
    app.stop().await;
}

#[tokio::test]
async fn a_paused_product_refuses_new_purchases_inside_its_window_only() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    let (s, v) = app
        .admin(
            Method::PUT,
            "/v1/admin/products/image_scan/pause",
            Some(json!({"paused_from": "2026-12-01", "paused_until": "2026-12-02"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/orders"),
            Some(json!({"product": "image_scan", "quantity": 5})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "product_paused");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2026-12-01 to 2026-12-02"));
    app.clock.advance(TimeDelta::days(2));
    buy(&app, 5).await;
    app.stop().await;
}

#[tokio::test]
async fn racing_batches_never_consume_more_than_was_bought() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    buy(&app, 10).await;
    let all = images(0..40);
    push(&app, &token, list("n", "2026-12-01T10:00:00+08:00", &all)).await;
    // Eight batches of five distinct images race for ten authorizations.
    let answers = race(&[&app], all.chunks(5)).await;
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 2, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(s, v)| *s == 200 || v["error"]["code"] == "insufficient_authorizations"));
    let summary = stock(&app).await;
    assert_eq!(
        (summary["consumed"].as_u64(), summary["available"].as_u64()),
        (Some(10), Some(0))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stopped_account_authorizes_nothing_and_its_lists_are_refused() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    // A trial of seven days, then a day of recovery: stopped by then.
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/trial"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    push(
        &app,
        &token,
        list("n", "2026-12-01T10:00:00+08:00", &images(0..2)),
    )
    .await;
    // The trial's own allowance authorizes without buying.
    let (s, v) = authorize(&app, &images(0..1)).await;
    assert_eq!(s, 200, "{v}");
    app.clock.advance(TimeDelta::days(8));
    app.settled().await;
    let (_, account) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{ACME}"), None)
        .await;
    assert!(
        matches!(account["state"].as_str(), Some("stopped" | "deleted")),
        "{account}"
    );
    let (s, v) = authorize(&app, &images(1..2)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "service_stopped");
    let v = push(
        &app,
        &token,
        list("n", "2026-12-09T10:00:00+08:00", &images(0..2)),
    )
    .await;
    assert_eq!(
        (v["status"].as_str(), v["reason"].as_str()),
        (Some("rejected"), Some("service_stopped"))
    );
    // The receipt of the trial's authorization says so.
    let (_, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/receipts"),
            None,
        )
        .await;
    assert_eq!(v["receipts"][0]["how"], "trial");
    app.stop().await;
}

#[tokio::test]
async fn two_services_on_one_database_racing_never_consume_more_than_was_bought() {
    // Two replicas of the service on one database (PostgreSQL in the
    // suite's second pass, a SQLite file otherwise), each sent half the
    // batches at once.
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::config(dir.path().join("core-meter.sqlite"), None);
    const BATCH: usize = 4;
    let one = TestApp::spawn_with(config.clone(), local("2026-12-01T10:00:00")).await;
    let two = TestApp::spawn_with(config, local("2026-12-01T10:00:00")).await;
    let token = one.account_with_cluster(ACME, "prod").await;
    buy(&one, 12).await;
    let all = images(0..60);
    push(&one, &token, list("n", "2026-12-01T10:00:00+08:00", &all)).await;
    let answers = race(&[&one, &two], all.chunks(BATCH)).await;
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 12 / BATCH, "twelve bought: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, v)| *s == 200 || v["error"]["code"] == "insufficient_authorizations"),
        "every other batch refused whole, none failed: {answers:?}"
    );
    for app in [&one, &two] {
        let summary = stock(app).await;
        assert_eq!(
            (summary["consumed"].as_u64(), summary["available"].as_u64()),
            (Some(12), Some(0)),
            "{summary}"
        );
    }
    let (_, v) = two
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/image-authorizations/receipts"),
            None,
        )
        .await;
    assert_eq!(v["receipts"].as_array().unwrap().len(), 12);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn the_daily_report_counts_the_days_images() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    buy(&app, 2).await;
    push(
        &app,
        &token,
        list("n", "2026-12-01T10:00:00+08:00", &images(0..3)),
    )
    .await;
    authorize(&app, &images(0..2)).await;
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/reports/daily?day=2026-12-01&account={ACME}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["images"],
        json!({"seen": 3, "new": 3, "authorized": 2, "unauthorized": 1, "consumed": 2, "refused": 0})
    );
    // The day before saw none of them.
    let (_, v) = app
        .admin(
            Method::GET,
            &format!("/v1/reports/daily?day=2026-11-30&account={ACME}"),
            None,
        )
        .await;
    assert_eq!(v["images"]["seen"], 0, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn a_trials_allowance_is_the_setting_and_what_it_consumed_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path().join("core-meter.sqlite"), None);
    config.trial_image_authorizations = 2;
    let app = TestApp::spawn_with(config, local("2026-12-01T10:00:00")).await;
    let token = app.account_with_cluster(ACME, "prod").await;
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/trial"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    push(
        &app,
        &token,
        list("n", "2026-12-01T10:00:00+08:00", &images(0..3)),
    )
    .await;
    let (s, v) = authorize(&app, &images(0..3)).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs 3 authorizations and 2 are available"),
        "{v}"
    );
    let (s, _) = authorize(&app, &images(0..2)).await;
    assert_eq!(s, 200);
    // Bought on top: the trial's two stay its own, the pack untouched.
    buy(&app, 5).await;
    let summary = stock(&app).await;
    assert_eq!(
        (
            summary["trial_allowance"].as_u64(),
            summary["trial_consumed"].as_u64(),
            summary["purchased"].as_u64(),
            summary["available"].as_u64()
        ),
        (Some(2), Some(2), Some(5), Some(5)),
        "{summary}"
    );
    app.stop().await;
}
