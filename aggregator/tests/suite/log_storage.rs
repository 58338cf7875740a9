//! Log storage (SPEC 10.4) over real HTTP with the manual clock: a whole
//! life from the order to recovery, with the agent's reference client
//! (`agent::log_retention`) measuring and purging a real directory of day
//! folders; and a second account's deletion.

use std::collections::BTreeSet;
use std::path::Path;

use agent::identity::Token;
use agent::log_retention::{run, Options};
use agent::tls::ClientTls;
use chrono::{Days, NaiveDate};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{local, TestApp};

const ACME: &str = "acme";
const BETA: &str = "beta";
const GIB: u64 = 1 << 30;
/// The log service writes this much a day.
const DAY_BYTES: u64 = 2 * GIB;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn days(from: &str, to: &str) -> Vec<NaiveDate> {
    d(from)
        .iter_days()
        .take_while(|day| *day <= d(to))
        .collect()
}

/// The log service's day folder of `day`: one sparse file of `bytes`
/// (its size is what is measured, not the blocks it takes).
fn write_day(dir: &Path, day: NaiveDate, bytes: u64) {
    let folder = dir.join(day.to_string());
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::File::create(folder.join("security.log"))
        .unwrap()
        .set_len(bytes)
        .unwrap();
}

fn folders(dir: &Path) -> BTreeSet<NaiveDate> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

struct Life {
    app: TestApp,
    dir: tempfile::TempDir,
    token: String,
}

impl Life {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.app.admin(method, path, body).await;
        assert!((200..300).contains(&s), "{path}: {s} {v}");
        v
    }

    /// The run of `day` at 02:00.
    async fn run(&self, day: NaiveDate) {
        self.app.clock.set(local(&format!("{day}T02:00:00")));
        self.admin(Method::POST, "/v1/admin/billing-runs", None)
            .await;
    }

    /// The reference client's pass at `wall` local time.
    async fn retention(&self, wall: &str) -> agent::log_retention::Summary {
        self.app.clock.set(local(wall));
        let options = Options {
            dir: self.dir.path().to_path_buf(),
            aggregator: self.app.url(""),
            tls: ClientTls::default(),
            token: Token::new(&self.token),
            dry_run: false,
            timeout: std::time::Duration::from_secs(10),
        };
        run(&options, self.app.clock.as_ref()).await.unwrap()
    }

    /// Writes `day`'s logs at 23:00 and runs the client.
    async fn log_day(&self, day: NaiveDate) -> agent::log_retention::Summary {
        write_day(self.dir.path(), day, DAY_BYTES);
        self.retention(&format!("{day}T23:00:00")).await
    }

    async fn storage(&self, account: &str) -> Value {
        self.admin(
            Method::GET,
            &format!("/v1/admin/accounts/{account}/log-storage"),
            None,
        )
        .await
    }

    /// Every log-storage notice of `account`: (kind, day).
    async fn notices(&self, account: &str) -> Vec<(String, String)> {
        let v = self
            .admin(
                Method::GET,
                &format!("/v1/admin/accounts/{account}/notices?limit=1000"),
                None,
            )
            .await;
        let mut out: Vec<(String, String)> = v["notices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["product"] == "log_storage")
            .map(|n| {
                (
                    n["kind"].as_str().unwrap().to_string(),
                    n["day"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn notices(kind: &str, days: &[NaiveDate]) -> Vec<(String, String)> {
    days.iter()
        .map(|day| (kind.to_string(), day.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_storage_lives_from_its_order_through_purges_expansion_renewal_stop_and_recovery() {
    let (_db, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/contacts"),
            Some(json!({"name": "Ada", "role": "creator", "email": "ada@acme.example"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, issued) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/log-tokens"),
            Some(json!({"name": "log service"})),
        )
        .await;
    assert_eq!(s, 201, "{issued}");
    let life = Life {
        app,
        dir: tempfile::tempdir().unwrap(),
        token: issued["token"].as_str().unwrap().to_string(),
    };

    // A balance for one renewal of 30 GB (the 20 ordered and the 10 of the
    // expansion to come): 30 × 0.25 = 7.50.
    life.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{ACME}/credits"),
        Some(json!({"amount": "7.50", "reference": "top-up 1"})),
    )
    .await;
    // Before any order: nowhere to write.
    let before = life.retention("2026-12-01T10:30:00").await;
    assert_eq!(
        (
            before.quota_bytes,
            before.accept_writes,
            before.state.as_str()
        ),
        (0, false, "unlicensed")
    );

    // 20 GB for a month from 12-01, auto-renewing: 20 × 0.25 = 5.00, invoiced.
    let order = life
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/orders"),
            Some(json!({"product": "log_storage", "gb": 20, "months": 1, "auto_renew": true})),
        )
        .await;
    assert_eq!(
        (
            &order["price"],
            &order["end_day"],
            &order["state"],
            &order["quota_gb"]
        ),
        (
            &json!("5.00"),
            &json!("2027-01-01"),
            &json!("active"),
            &json!(20)
        )
    );
    for (bad, field) in [
        (
            json!({"product": "log_storage", "gb": 15, "months": 1}),
            "gb",
        ),
        (
            json!({"product": "log_storage", "gb": 0, "months": 1}),
            "gb",
        ),
        (json!({"product": "log_storage", "months": 1}), "gb"),
        (
            json!({"product": "log_storage", "gb": 10, "cores": 4, "months": 1}),
            "cores",
        ),
    ] {
        let (s, v) = life
            .app
            .admin(
                Method::POST,
                &format!("/v1/admin/accounts/{ACME}/orders"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (422, Some(field)),
            "{bad}: {v}"
        );
    }

    // 12-01 ..= 12-07: 2 GB a day, up to 14 GB of 20: under 80%.
    for day in days("2026-12-01", "2026-12-07") {
        if day > d("2026-12-01") {
            life.run(day).await;
        }
        let s = life.log_day(day).await;
        assert!(s.accept_writes && s.purged.is_empty(), "{day}: {s:?}");
    }
    assert!(life.notices(ACME).await.is_empty());
    // 12-08: 16 GB, 80%: log_storage_high, once.
    life.run(d("2026-12-08")).await;
    let s = life.log_day(d("2026-12-08")).await;
    assert_eq!((s.used_bytes, s.quota_bytes), (16 * GIB, 20 * GIB));
    for day in days("2026-12-09", "2026-12-10") {
        life.run(day).await;
        life.log_day(day).await;
    }
    assert_eq!(
        life.notices(ACME).await,
        notices("log_storage_high", &[d("2026-12-08")])
    );
    // 12-11 ..= 12-15: 22 GB of 20 each evening: the oldest day goes, and
    // its folder is really deleted.
    for (i, day) in days("2026-12-11", "2026-12-15").into_iter().enumerate() {
        life.run(day).await;
        let s = life.log_day(day).await;
        let oldest = d("2026-12-01") + Days::new(i as u64);
        assert_eq!(
            s.purged
                .iter()
                .map(|p| (p.day, p.bytes))
                .collect::<Vec<_>>(),
            vec![(oldest, DAY_BYTES)],
            "{day}"
        );
        assert!(!s.over_quota && s.accept_writes);
        let held = folders(life.dir.path());
        assert!(!held.contains(&oldest), "{day}: {held:?}");
        assert_eq!(held.len(), 10, "{day}: {held:?}");
    }
    let storage = life.storage(ACME).await;
    assert_eq!(storage["purges"].as_array().unwrap().len(), 5, "{storage}");
    assert_eq!(storage["purges"][0]["days"], json!(["2026-12-05"]));
    assert_eq!(storage["purges"][0]["reason"], "over_quota");

    // 12-16 at noon: 10 GB more until the term's end, 16 of its 31 days
    // left: 10 × 0.25 × 16 / 31 = 1.2903… → 1.29.
    life.run(d("2026-12-16")).await;
    life.app.clock.set(local("2026-12-16T12:00:00"));
    let expansion = life
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/log-storage/expansions"),
            Some(json!({"gb": 10})),
        )
        .await;
    assert_eq!(
        (
            &expansion["price"],
            &expansion["start_day"],
            &expansion["end_day"],
            &expansion["quota_gb"]
        ),
        (
            &json!("1.29"),
            &json!("2026-12-16"),
            &json!("2027-01-01"),
            &json!(30)
        )
    );
    // 22 GB of 30 is under 80% again; 12-17's 24 GB crosses it a second time.
    let s = life.log_day(d("2026-12-16")).await;
    assert!(s.purged.is_empty(), "{s:?}");
    life.run(d("2026-12-17")).await;
    life.log_day(d("2026-12-17")).await;

    // The runs to the term's end: warnings in its last 7 days, then the
    // renewal of 30 GB from the balance.
    for day in days("2026-12-18", "2027-01-01") {
        life.run(day).await;
    }
    let storage = life.storage(ACME).await;
    assert_eq!(storage["state"], "active", "{storage}");
    let renewal = storage["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "renewal")
        .unwrap_or_else(|| panic!("no renewal: {storage}"));
    assert_eq!(
        (&renewal["gb"], &renewal["price"], &renewal["end_day"]),
        (&json!(30), &json!("7.50"), &json!("2027-02-01"))
    );
    assert_eq!(storage["quota_gb"], 30);
    let balance = life
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{ACME}/balance"),
            None,
        )
        .await;
    assert_eq!(balance["balance"], "0.00", "{balance}");

    // The next end without a balance: warnings, a failed renewal, grace
    // (writes still taken), the stop at the run of end day + 5 (writes
    // refused, nothing purged), arrears warnings.
    for day in days("2027-01-02", "2027-02-06") {
        life.run(day).await;
        if day == d("2027-02-03") {
            let s = life.retention("2027-02-03T09:00:00").await;
            assert_eq!((s.state.as_str(), s.accept_writes), ("grace", true));
        }
    }
    let before = folders(life.dir.path());
    let s = life.retention("2027-02-06T09:00:00").await;
    assert_eq!(
        (s.state.as_str(), s.accept_writes, s.purged.len()),
        ("stopped", false, 0),
        "{s:?}"
    );
    assert_eq!(folders(life.dir.path()), before, "a stop purges nothing");
    let storage = life.storage(ACME).await;
    assert_eq!(storage["next_change"]["state"], "deleted", "{storage}");

    // Recovery by an order within the 5 days.
    life.run(d("2027-02-07")).await;
    life.app.clock.set(local("2027-02-07T12:00:00"));
    let order = life
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/orders"),
            Some(json!({"product": "log_storage", "gb": 30, "months": 1})),
        )
        .await;
    assert_eq!(order["state"], "active", "{order}");
    let s = life.retention("2027-02-07T13:00:00").await;
    assert_eq!((s.state.as_str(), s.accept_writes), ("active", true));
    let storage = life.storage(ACME).await;
    let history: Vec<&str> = storage["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["active", "expiring", "active", "expiring", "grace", "stopped", "active"]
    );
    assert!(storage["state_history"][6]["cause"]
        .as_str()
        .unwrap()
        .starts_with("recovered by"));

    let mut expected = notices("log_storage_high", &[d("2026-12-08"), d("2026-12-17")]);
    expected.extend(notices(
        "log_storage_purged",
        &days("2026-12-11", "2026-12-15"),
    ));
    expected.extend(notices("expiry_warning", &days("2026-12-25", "2026-12-31")));
    expected.extend(notices("renewal_succeeded", &[d("2027-01-01")]));
    expected.extend(notices("expiry_warning", &days("2027-01-25", "2027-01-31")));
    expected.extend(notices("renewal_failed", &[d("2027-02-01")]));
    expected.extend(notices(
        "arrears_warning",
        &days("2027-02-01", "2027-02-07"),
    ));
    expected.extend(notices("service_stopped", &[d("2027-02-06")]));
    expected.extend(notices("deletion_scheduled", &[d("2027-02-06")]));
    expected.sort();
    assert_eq!(life.notices(ACME).await, expected);

    // The account's own life, its licensed cores', never moved.
    let account = life
        .admin(Method::GET, &format!("/v1/admin/accounts/{ACME}"), None)
        .await;
    assert_eq!(account["state"], "unlicensed", "{account}");
    assert_eq!(account["products"]["log_storage"]["state"], "active");
    life.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_never_renewed_is_stopped_then_deleted_and_every_day_is_purged() {
    let (_db, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(BETA, "prod").await;
    let (s, issued) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{BETA}/log-tokens"),
            Some(json!({"name": "log service"})),
        )
        .await;
    assert_eq!(s, 201, "{issued}");
    let life = Life {
        app,
        dir: tempfile::tempdir().unwrap(),
        token: issued["token"].as_str().unwrap().to_string(),
    };
    life.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{BETA}/orders"),
        Some(json!({"product": "log_storage", "gb": 10, "months": 1})),
    )
    .await;
    for day in days("2026-12-01", "2026-12-03") {
        write_day(life.dir.path(), day, GIB);
    }
    let mut states = Vec::new();
    for day in days("2026-12-02", "2027-01-11") {
        life.run(day).await;
        let state = life.storage(BETA).await["state"].clone();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    assert_eq!(
        states,
        [
            json!("active"),
            json!("expiring"),
            json!("grace"),
            json!("stopped"),
            json!("deleted")
        ]
    );
    let s = life.retention("2027-01-11T09:00:00").await;
    assert_eq!(
        (s.state.as_str(), s.accept_writes, s.purged.len()),
        ("deleted", false, 3),
        "{s:?}"
    );
    assert!(folders(life.dir.path()).is_empty());
    let storage = life.storage(BETA).await;
    assert_eq!(storage["purges"][0]["reason"], "deleted", "{storage}");
    let notices = life.notices(BETA).await;
    for kind in [
        "service_stopped",
        "deletion_scheduled",
        "data_deleted",
        "log_storage_purged",
    ] {
        assert!(
            notices.iter().any(|(k, _)| k == kind),
            "{kind} in {notices:?}"
        );
    }
    life.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_years_of_daily_folders_are_answered_in_under_100_ms() {
    let (_db, app) = TestApp::in_temp_dir(local("2026-12-01T10:00:00")).await;
    app.account_with_cluster(ACME, "prod").await;
    let (_, issued) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/log-tokens"),
            Some(json!({"name": "log service"})),
        )
        .await;
    let token = issued["token"].as_str().unwrap().to_string();
    let (s, v) = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{ACME}/orders"),
            Some(json!({"product": "log_storage", "gb": 1000, "months": 1})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // 3,650 days of 1 GiB against 1,000 GB: the oldest 2,650 go.
    let first = d("2016-12-04");
    let report = |at: &str| {
        json!({
            "at": at,
            "days": (0..3650u64)
                .map(|i| json!({"day": (first + Days::new(i)).to_string(), "bytes": GIB}))
                .collect::<Vec<_>>(),
        })
    };
    let mut took = Vec::new();
    for i in 0..5 {
        // The body is written and the answer read outside the timing: the
        // figure is the service's, from the request's first byte to the
        // answer's last.
        let body = serde_json::to_vec(&report(&format!("2026-12-01T02:0{i}:00Z"))).unwrap();
        let started = std::time::Instant::now();
        let r = app
            .client
            .put(app.url("/v1/log-storage/usage"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer = r.bytes().await.unwrap();
        took.push(started.elapsed());
        let v: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["purge"].as_array().unwrap().len(), 2650);
        assert_eq!(v["purge"][0], first.to_string());
    }
    took.sort();
    let median = took[2];
    eprintln!("a 3,650-day usage report: median {median:?} of {took:?}");
    assert!(
        median < std::time::Duration::from_millis(100),
        "median {median:?} of {took:?}"
    );
    app.stop().await;
}
