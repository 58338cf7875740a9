//! Every list route answers a page at a time: `limit` and `cursor` in, `X-Total-Count`, `next_cursor` and `X-Next-Cursor` out; a walk gets every item once, in order, also while rows are stored between its pages.

use crate::support;

use std::collections::HashSet;

use aggregator::config::NoticeChannels;
use aggregator::store::Durability;
use chrono::NaiveDate;
use reqwest::Method;
use serde_json::{json, Value};
use shared::lifecycle::NoticeKind;
use support::{local, TestApp, ADMIN};

/// One answer of a list route.
struct Answer {
    status: u16,
    total: Option<u64>,
    next_header: Option<String>,
    body: Value,
    text: String,
}

impl Answer {
    fn next_cursor(&self) -> Option<String> {
        self.body["next_cursor"].as_str().map(String::from)
    }

    fn refused_field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }
}

async fn get(app: &TestApp, token: &str, path: &str) -> Answer {
    let resp = app.send(Method::GET, path, Some(token), None).await;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let total = header("x-total-count").map(|t| t.parse().unwrap());
    let next_header = header("x-next-cursor");
    let text = resp.text().await.unwrap();
    Answer {
        status,
        total,
        next_header,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// `path` with more query parameters.
fn with(path: &str, query: &str) -> String {
    let joint = if path.contains('?') { '&' } else { '?' };
    format!("{path}{joint}{query}")
}

/// The items of `field` in the one page answered without `limit`, which
/// must be the whole list.
async fn whole(app: &TestApp, token: &str, path: &str, field: &str) -> Vec<Value> {
    let a = get(app, token, path).await;
    assert_eq!(a.status, 200, "{path}: {}", a.text);
    let items = a.body[field].as_array().unwrap().clone();
    assert_eq!(a.total, Some(items.len() as u64), "{path}");
    assert!(
        a.body["next_cursor"].is_null() && a.next_header.is_none(),
        "{path}"
    );
    items
}

/// Reads `path` page by page, `limit` items of `field` at a time, calling
/// `between` after each page but the last; checks every page's size, total
/// and cursor (body and header agree; none on the last page).
async fn walk<F, Fut>(
    app: &TestApp,
    token: &str,
    path: &str,
    field: &str,
    limit: usize,
    mut between: F,
) -> Vec<Value>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = format!("limit={limit}");
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let a = get(app, token, &with(path, &query)).await;
        assert_eq!(a.status, 200, "{path} page {pages}: {}", a.text);
        let page = a.body[field].as_array().unwrap();
        assert!(page.len() <= limit, "{path}: a page over its limit");
        assert!(a.total.is_some(), "{path}: no X-Total-Count");
        assert_eq!(a.next_header, a.next_cursor(), "{path}: header and body");
        items.extend(page.iter().cloned());
        pages += 1;
        assert!(pages < 1000, "{path}: the walk does not end");
        match a.next_cursor() {
            Some(next) => {
                assert_eq!(
                    page.len(),
                    limit,
                    "{path}: a short page that is not the last"
                );
                between(pages).await;
                cursor = Some(next);
            }
            None => return items,
        }
    }
}

async fn walk_all(app: &TestApp, token: &str, path: &str, field: &str, limit: usize) -> Vec<Value> {
    walk(app, token, path, field, limit, |_| async {}).await
}

/// Three accounts, each with three billed days (nine daily lines, all
/// pending in the outbox), acme's audit trail of 2026-11-24 of 72 samples,
/// acme's ledger of five credits, five reader tokens and five notices.
async fn fixture() -> (tempfile::TempDir, TestApp) {
    let (dir, app) = TestApp::in_temp_dir(local("2026-11-24T23:59:00")).await;
    for account in ["acme", "beta", "gamma"] {
        let token = app.account_with_cluster(account, "prod").await;
        for (i, day) in ["2026-11-22", "2026-11-23", "2026-11-24"]
            .iter()
            .enumerate()
        {
            app.push_day(&token, "n1", 8, day, 1 + 24 * i as u64).await;
        }
        if account == "acme" {
            app.push_day(&token, "n2", 4, "2026-11-24", 1).await;
            app.push_day(&token, "n3", 2, "2026-11-24", 1).await;
        }
    }
    app.clock.set(local("2026-11-25T02:00:01"));
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    assert_eq!(s, 200, "{v}");
    for i in 1..=5 {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/credits",
                Some(json!({"amount": format!("{i}.00"), "reference": format!("pay-{i}")})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/reader-tokens",
                Some(json!({"name": format!("dashboard {i}")})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    issue_notices(&dir, 1..=5);
    (dir, app)
}

/// Issues acme a notice about each of the days `days` of November 2026,
/// through a store of its own on the service's database.
fn issue_notices(dir: &tempfile::TempDir, days: std::ops::RangeInclusive<u32>) {
    let path = dir.path().join("db.sqlite");
    support::off_runtime(move || {
        let mut store = support::open_store(&path, Durability::Durable).unwrap();
        for d in days {
            let day = NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
            let channels = NoticeChannels {
                webhook: false,
                email: false,
            };
            let details = json!({"test": d});
            store
                .accounts()
                .issue_notice(
                    "acme",
                    NoticeKind::ExpiryWarning,
                    day,
                    &details,
                    local("2026-11-25T03:00:00"),
                    channels,
                )
                .unwrap();
        }
    });
}

/// Every list route as the admin calls it, the field of its items, and the
/// page size a walk takes.
const LISTS: &[(&str, &str, usize)] = &[
    (
        "/v1/admin/accounts/acme/samples?day=2026-11-24",
        "samples",
        10,
    ),
    ("/v1/admin/bills", "bills", 2),
    ("/v1/admin/bills?account=acme", "bills", 2),
    ("/v1/admin/bills?day=2026-11-23&format=json", "bills", 1),
    ("/v1/accounts/acme/bills", "bills", 2),
    ("/v1/admin/outbox", "lines", 4),
    ("/v1/admin/outbox?pending=true", "lines", 4),
    ("/v1/admin/accounts/acme/notices", "notices", 2),
    ("/v1/accounts/acme/notices", "notices", 2),
    ("/v1/admin/accounts/acme/reader-tokens", "reader_tokens", 2),
    ("/v1/admin/accounts/acme/balance", "entries", 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_every_list_route_page_by_page_gets_every_item_once_in_order() {
    let (_dir, app) = fixture().await;
    for (path, field, limit) in LISTS {
        let all = whole(&app, ADMIN, path, field).await;
        assert!(
            all.len() > *limit,
            "{path}: the fixture has too few items to page"
        );
        let walked = walk_all(&app, ADMIN, path, field, *limit).await;
        assert_eq!(walked, all, "{path}: the walk against the whole list");
    }
    // The lists are the fixture's, in their documented order.
    let all = whole(&app, ADMIN, "/v1/admin/bills", "bills").await;
    let keys: Vec<&str> = all
        .iter()
        .map(|b| b["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 9);
    assert_eq!(
        &keys[..4],
        [
            "acme/2026-11-22/1",
            "acme/2026-11-23/1",
            "acme/2026-11-24/1",
            "beta/2026-11-22/1"
        ]
    );
    let samples = whole(&app, ADMIN, LISTS[0].0, "samples").await;
    assert_eq!(samples.len(), 72);
    let notices = whole(&app, ADMIN, "/v1/admin/accounts/acme/notices", "notices").await;
    let ids: Vec<i64> = notices.iter().map(|n| n["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bill_csv_is_paged_through_its_headers() {
    let (_dir, app) = fixture().await;
    let whole_csv = get(&app, ADMIN, "/v1/admin/bills?format=csv").await;
    assert_eq!((whole_csv.total, &whole_csv.next_header), (Some(9), &None));
    let mut rows: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let a = get(
            &app,
            ADMIN,
            &format!("/v1/admin/bills?format=csv&limit=4{cursor}"),
        )
        .await;
        assert_eq!((a.status, a.total), (200, Some(9)), "{}", a.text);
        let mut lines = a.text.lines();
        assert!(lines.next().unwrap().starts_with("account,day,seq"));
        rows.extend(lines.map(String::from));
        match a.next_header {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let whole_rows: Vec<String> = whole_csv.text.lines().skip(1).map(String::from).collect();
    assert_eq!(rows, whole_rows);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stored_between_pages_make_no_page_skip_or_repeat_a_row() {
    let (dir, app) = fixture().await;
    let acme = app.account_with_cluster("acme", "dev").await;

    // The audit trail: samples stored before and after the walk's position.
    let path = "/v1/admin/accounts/acme/samples?day=2026-11-24";
    let before = whole(&app, ADMIN, path, "samples").await;
    let walked = walk(&app, ADMIN, path, "samples", 10, |page| {
        let (app, acme) = (&app, &acme);
        async move {
            app.push_day(acme, &format!("late-{page}"), 1, "2026-11-24", 1)
                .await;
        }
    })
    .await;
    let ids: Vec<i64> = walked.iter().map(|s| s["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "a sample repeated"
    );
    let seen: HashSet<i64> = ids.iter().copied().collect();
    assert!(
        before
            .iter()
            .all(|s| seen.contains(&s["id"].as_i64().unwrap())),
        "a sample skipped"
    );
    let order: Vec<(String, i64)> = walked
        .iter()
        .map(|s| {
            (
                s["at"].as_str().unwrap().to_string(),
                s["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(
        walked.len() > before.len(),
        "samples stored after the position are read"
    );

    // Bills: a later run's lines (a new day, an adjustment) come at the end.
    let before = whole(&app, ADMIN, "/v1/admin/bills", "bills").await;
    let mut runs = 0;
    let walked = walk(&app, ADMIN, "/v1/admin/bills", "bills", 2, |_| {
        runs += 1;
        let (app, acme, run) = (&app, &acme, runs);
        async move {
            if run == 1 {
                app.clock.set(local("2026-11-26T02:00:01"));
                app.push_day(acme, "n9", 64, "2026-11-23", 1).await;
                let (s, v) = app
                    .admin(Method::POST, "/v1/admin/billing-runs", None)
                    .await;
                assert_eq!(s, 200, "{v}");
            }
        }
    })
    .await;
    let keys: Vec<&str> = walked
        .iter()
        .map(|b| b["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        keys.len(),
        "a line repeated: {keys:?}"
    );
    assert_eq!(
        walked[..before.len()],
        before[..],
        "the lines issued before the walk, in order"
    );
    assert!(
        keys.contains(&"acme/2026-11-23/2"),
        "the adjustment issued during the walk: {keys:?}"
    );

    // Notices, newest first: one issued during the walk is newer than them all.
    let path = "/v1/admin/accounts/acme/notices";
    let before = whole(&app, ADMIN, path, "notices").await;
    let walked = walk(&app, ADMIN, path, "notices", 2, |page| {
        let day = 10 + page as u32;
        issue_notices(&dir, day..=day);
        async {}
    })
    .await;
    assert_eq!(walked, before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_out_of_bounds_or_a_cursor_the_service_did_not_make_is_a_400_naming_the_field() {
    let (_dir, app) = fixture().await;
    let long = "7".repeat(10_000);
    let samples_cursor = get(
        &app,
        ADMIN,
        "/v1/admin/accounts/acme/samples?day=2026-11-24&limit=1",
    )
    .await
    .next_cursor()
    .unwrap();
    for (path, _, _) in LISTS {
        for limit in ["0", "10001", "-1", "abc", "1e3", "", "2.5", &long] {
            let a = get(&app, ADMIN, &with(path, &format!("limit={limit}"))).await;
            assert_eq!(
                (a.status, a.refused_field()),
                (400, Some("limit")),
                "{path} limit={limit:.20}: {:.300}",
                a.text
            );
            let message = a.body["error"]["message"].as_str().unwrap();
            assert!(message.len() < 200, "{path}: {message}");
        }
        let bad_cursors = [
            "",
            "nonsense",
            "00",
            &long,
            // A real cursor of another list (or, for the audit trail itself, cut short).
            &samples_cursor[..samples_cursor.len() - 2],
        ];
        for cursor in bad_cursors {
            let a = get(&app, ADMIN, &with(path, &format!("cursor={cursor}"))).await;
            assert_eq!(
                (a.status, a.refused_field()),
                (400, Some("cursor")),
                "{path} cursor={cursor:.20}: {:.300}",
                a.text
            );
            let message = a.body["error"]["message"].as_str().unwrap();
            assert!(message.len() < 250, "{path}: {message}");
        }
        if !path.contains("/samples") {
            let a = get(
                &app,
                ADMIN,
                &with(path, &format!("cursor={samples_cursor}")),
            )
            .await;
            assert_eq!(
                (a.status, a.refused_field()),
                (400, Some("cursor")),
                "{path}: another list's cursor"
            );
        }
    }
    // A cursor of one day's audit trail is not one of another day's.
    let a = get(
        &app,
        ADMIN,
        &format!("/v1/admin/accounts/acme/samples?day=2026-11-23&cursor={samples_cursor}"),
    )
    .await;
    assert_eq!((a.status, a.refused_field()), (400, Some("cursor")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_page_answers_a_whole_day_of_2500_samples_in_one_call() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T23:30:00")).await;
    let token = app.account_with_cluster("acme", "prod").await;
    let samples: Vec<Value> = (0..2_500)
        .map(|i| {
            let (node, hour) = (i / 24, i % 24);
            json!({"node": format!("node-{node:03}"), "cores": 8, "seq": hour,
                   "at": local(&format!("2026-11-24T{hour:02}:05:00")), "agent_version": "test"})
        })
        .collect();
    for batch in samples.chunks(1_000) {
        let (s, v) = app
            .call(
                Method::POST,
                "/v1/samples",
                Some(&token),
                Some(json!({ "samples": batch })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let a = get(
        &app,
        ADMIN,
        "/v1/admin/accounts/acme/samples?day=2026-11-24",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["samples"].as_array().unwrap().len(), 2_500);
    assert_eq!(a.total, Some(2_500));
    assert!(a.body["next_cursor"].is_null() && a.next_header.is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_token_pages_its_own_accounts_bills_and_notices() {
    let (_dir, app) = fixture().await;
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/reader-tokens",
            Some(json!({"name": "finance"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let reader = v["token"].as_str().unwrap().to_string();
    for (path, field, limit) in [
        ("/v1/accounts/acme/bills", "bills", 2),
        ("/v1/accounts/acme/bills?day=2026-11-24", "bills", 1),
        ("/v1/accounts/acme/notices", "notices", 2),
    ] {
        let all = whole(&app, &reader, path, field).await;
        assert_eq!(
            walk_all(&app, &reader, path, field, limit).await,
            all,
            "{path}"
        );
    }
    let bills = walk_all(&app, &reader, "/v1/accounts/acme/bills", "bills", 2).await;
    assert_eq!(bills.len(), 3);
    assert!(bills.iter().all(|b| b["account"] == "acme"));
    let notices = walk_all(&app, &reader, "/v1/accounts/acme/notices", "notices", 2).await;
    let issued_by_the_test = notices.iter().filter(|n| n["details"]["test"].is_number());
    assert_eq!(issued_by_the_test.count(), 5);
    // The customer's notices never carry the operators' delivery errors.
    assert!(notices.iter().all(|n| n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.get("last_error").is_none())));
    // Another account's list stays closed, whatever the cursor.
    let a = get(&app, &reader, "/v1/accounts/beta/bills?limit=1").await;
    assert_eq!(a.status, 403);
    app.stop().await;
}
