//! The life of an account over real HTTP with the manual clock (LIFECYCLE.md): trial, purchase, renewal, expiry, grace, stop, recovery and deletion, with every state, notice and bill on the way.

use crate::support;

use std::ops::Range;

use chrono::{DateTime, Days, NaiveDate, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

// The account's four contacts, one per role: Ada (creator) has both channels,
// Gus (global resources) email only, Fay (finance) SMS only, Cole (collaborator) email only.
const ADA_EMAIL: &str = "ada@acme.example";
const ADA_SMS: &str = "+8613800000001";
const GUS_EMAIL: &str = "gus@acme.example";
const FAY_SMS: &str = "+8613800000003";
const COLE_EMAIL: &str = "cole@acme.example";

/// The two nodes of the account's cluster, 8 cores each, sampled every hour:
/// 16 cores against a 10-core licence is 6 cores short in every hour.
const NODES: [&str; 2] = ["n1", "n2"];
const NODE_CORES: u32 = 8;

/// Hours of a day whose samples are accepted: every hour, none, or a part.
const ALL_DAY: Range<u32> = 0..24;
const NONE: Range<u32> = 0..0;

/// The whole life of one account, run by run, from its trial to the deletion of its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_lives_from_trial_through_renewal_grace_stop_and_recovery_to_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("core-meter.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    add_contacts(&app, "acme").await;
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "acme-dev", "parent": "acme"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut walk = Walk::new(app, token);

    // ---- 2026-11-02: a new main account is unlicensed; its trial starts at midday.
    let account = walk.account().await;
    assert_eq!(account["state"], "unlicensed");
    assert_eq!(account["next_change"], Value::Null, "{account}");
    let (s, trial) = walk
        .app
        .admin(Method::POST, "/v1/admin/accounts/acme/trial", None)
        .await;
    assert_eq!(s, 201, "{trial}");
    assert_eq!(trial["state"], "trial");
    // Free from the first instant of its day until the run of its 8th day (11-09).
    assert_eq!(instant(&trial["start"]), local("2026-11-02T00:00:00"));
    assert_eq!(instant(&trial["ends_at"]), local("2026-11-09T02:00:00"));
    let account = walk.account().await;
    assert_eq!(account["state"], "trial");
    assert_eq!(
        instant(&account["state_since"]),
        local("2026-11-02T12:00:00")
    );
    assert_next_change(&account, Some(("stopped", "2026-11-09")), "trial start");

    // The sub-account shares its main account's one trial.
    let (s, v) = walk
        .app
        .admin(Method::POST, "/v1/admin/accounts/acme-dev/trial", None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("trial_used")));
    let message = v["error"]["message"].as_str().unwrap();
    for named in ["\"acme-dev\"", "main account \"acme\"", "2026-11-02"] {
        assert!(message.contains(named), "{message:?} names {named}");
    }
    walk.push(d("2026-11-02"), ALL_DAY).await;

    // ---- 11-03 ..= 11-06: the trial's runs. Each bills the day before at 0.00
    // (trial hours are free); trial_ending goes out 3 days before the trial ends (11-09).
    for day in days("2026-11-03", "2026-11-06") {
        let mut notices = vec![];
        if day == d("2026-11-06") {
            notices.push(("trial_ending", day));
        }
        walk.day(
            day,
            Expect {
                state: "trial",
                next: Some(("stopped", "2026-11-09")),
                notices,
                bill: Some((0, "0.00")),
            },
            ALL_DAY,
        )
        .await;
    }

    // ---- 11-07: still trial at the run; a purchase at midday makes it active at once.
    walk.step(
        d("2026-11-07"),
        Expect {
            state: "trial",
            next: Some(("stopped", "2026-11-09")),
            notices: vec![],
            bill: Some((0, "0.00")),
        },
    )
    .await;
    walk.app.clock.set(local("2026-11-07T12:00:00"));
    let (s, order) = walk
        .app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 10, "months": 1, "auto_renew": true})),
        )
        .await;
    assert_eq!(s, 201, "{order}");
    // A month from 11-07 ends on 12-07; 10 cores x 1 month x 6.75 = 67.50.
    assert_eq!(order["state"], "active");
    assert_eq!(order["start_day"], "2026-11-07");
    assert_eq!(order["end_day"], "2026-12-07");
    assert_eq!(order["price"], "67.50");
    assert_eq!(order["auto_renew"], true);
    let first_order = order["id"].as_i64().unwrap();
    let account = walk.account().await;
    assert_eq!(account["state"], "active");
    assert_eq!(
        instant(&account["state_since"]),
        local("2026-11-07T12:00:00")
    );
    // Expiring from the run 7 days before the end day 12-07.
    assert_next_change(&account, Some(("expiring", "2026-11-30")), "purchase");
    walk.push(d("2026-11-07"), ALL_DAY).await;

    // ---- 11-08, 11-09: active; the days billed (11-07, 11-08) are trial days, free
    // although 16 cores ran on a 10-core licence. The trial's end at the run of
    // 11-09 changes nothing: a licence covers it, so no trial_ended.
    for day in days("2026-11-08", "2026-11-09") {
        walk.day(
            day,
            Expect {
                state: "active",
                next: Some(("expiring", "2026-11-30")),
                notices: vec![],
                bill: Some((0, "0.00")),
            },
            ALL_DAY,
        )
        .await;
    }

    // ---- 11-10: 11-09 is billed: its hours 00 and 01 were still the trial's
    // (it ended at 02:00), the 22 hours after are 16 - 10 = 6 cores short:
    // S = 22 x 6 = 132, A = 5.5, ceil 6 cores x 0.25 = 1.50, and licence_short.
    walk.day(
        d("2026-11-10"),
        Expect {
            state: "active",
            next: Some(("expiring", "2026-11-30")),
            notices: vec![("licence_short", d("2026-11-09"))],
            bill: Some((132, "1.50")),
        },
        ALL_DAY,
    )
    .await;
    let short = walk.notice("licence_short", d("2026-11-09")).await;
    assert_eq!(short["details"]["peak_shortfall_cores"], 6);
    assert_eq!(
        instant(&short["details"]["peak_hour"]),
        local("2026-11-09T02:00:00")
    );
    // Enough for one renewal: 10 cores x 6.75 = 67.50.
    walk.app.clock.set(local("2026-11-10T12:00:00"));
    let (s, v) = walk
        .app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/credits",
            Some(json!({"amount": "67.50", "reference": "pay-1"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["balance"].as_str(), v["credited"].as_bool()),
        (Some("67.50"), Some(true))
    );

    // ---- 11-11 ..= 11-29: active; every day 24 hours x 6 cores short: S = 144,
    // A = 6, 6 x 0.25 = 1.50, with licence_short for it.
    for day in days("2026-11-11", "2026-11-29") {
        walk.day(
            day,
            licensed("active", ("expiring", "2026-11-30"), day),
            ALL_DAY,
        )
        .await;
    }

    // ---- 11-30 ..= 12-06: the 7 runs before the end day 12-07: expiring, with
    // an expiry warning each (7 days left down to 1).
    for day in days("2026-11-30", "2026-12-06") {
        let mut expect = licensed("expiring", ("grace", "2026-12-07"), day);
        expect.notices.push(("expiry_warning", day));
        walk.day(day, expect, ALL_DAY).await;
        let warning = walk.notice("expiry_warning", day).await;
        let licence = &warning["details"]["licences"][0];
        assert_eq!(licence["days_left"], (d("2026-12-07") - day).num_days());
        assert_eq!(licence["end_day"], "2026-12-07");
        assert_eq!(licence["auto_renew"], true);
    }

    // ---- 12-07: the end day. The balance (67.50) covers 10 x 6.75 = 67.50: it
    // renews for a month (12-07 .. 2027-01-07) and the balance goes to 0.00.
    let mut expect = licensed("active", ("expiring", "2026-12-31"), d("2026-12-07"));
    expect.notices.push(("renewal_succeeded", d("2026-12-07")));
    walk.day(d("2026-12-07"), expect, ALL_DAY).await;
    let renewed = walk.notice("renewal_succeeded", d("2026-12-07")).await;
    let renewal = &renewed["details"]["renewals"][0];
    assert_eq!(renewal["start_day"], "2026-12-07");
    assert_eq!(renewal["end_day"], "2027-01-07");
    assert_eq!(renewal["price"], "67.50");
    assert_eq!(renewal["balance_after"], "0.00");
    let (_, balance) = walk
        .app
        .admin(Method::GET, "/v1/admin/accounts/acme/balance", None)
        .await;
    assert_eq!(balance["balance"], "0.00");
    let ledger: Vec<(&str, &str, &str)> = balance["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["amount"].as_str().unwrap(),
                e["balance_after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ledger,
        vec![("credit", "67.50", "67.50"), ("debit", "67.50", "0.00")]
    );
    let orders = walk.account().await["orders"].clone();
    let orders = orders.as_array().unwrap();
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(orders[0]["id"], first_order);
    assert_eq!(orders[0]["renewed_by"], orders[1]["licence"]);
    assert_eq!(
        (
            orders[1]["kind"].as_str(),
            orders[1]["cores"].as_u64(),
            orders[1]["months"].as_u64()
        ),
        (Some("renewal"), Some(10), Some(1))
    );
    assert_eq!(
        (
            orders[1]["start_day"].as_str(),
            orders[1]["end_day"].as_str(),
            orders[1]["price"].as_str(),
            orders[1]["paid_from"].as_str(),
        ),
        (
            Some("2026-12-07"),
            Some("2027-01-07"),
            Some("67.50"),
            Some("balance")
        )
    );

    // ---- 12-08 ..= 12-30: the renewal alone, 6 cores short again. The
    // renewed licence's grace ends where its renewal starts (12-07 00:00):
    // its cores are not counted twice.
    for day in days("2026-12-08", "2026-12-30") {
        walk.day(
            day,
            licensed("active", ("expiring", "2026-12-31"), day),
            ALL_DAY,
        )
        .await;
    }
    // ---- 12-31 ..= 2027-01-06: the renewal's 7 expiring runs.
    for day in days("2026-12-31", "2027-01-06") {
        let mut expect = licensed("expiring", ("grace", "2027-01-07"), day);
        expect.notices.push(("expiry_warning", day));
        walk.day(day, expect, ALL_DAY).await;
        let warning = walk.notice("expiry_warning", day).await;
        let licence = &warning["details"]["licences"][0];
        assert_eq!(licence["days_left"], (d("2027-01-07") - day).num_days());
        assert_eq!(licence["end_day"], "2027-01-07");
    }

    // ---- 2027-01-07: the balance (0.00) does not cover 67.50: no renewal,
    // renewal_failed states the shortfall; grace, with an arrears warning.
    let mut expect = licensed("grace", ("stopped", "2027-01-12"), d("2027-01-07"));
    expect.notices.push(("renewal_failed", d("2027-01-07")));
    expect.notices.push(("arrears_warning", d("2027-01-07")));
    walk.day(d("2027-01-07"), expect, ALL_DAY).await;
    let failed = walk.notice("renewal_failed", d("2027-01-07")).await;
    let refused = &failed["details"]["licences"][0];
    assert_eq!(
        (
            refused["price"].as_str(),
            refused["balance"].as_str(),
            refused["shortfall"].as_str()
        ),
        (Some("67.50"), Some("0.00"), Some("67.50")),
        "{failed}"
    );
    assert_eq!(
        walk.account().await["orders"].as_array().unwrap().len(),
        2,
        "nothing was renewed"
    );

    // ---- 01-08 ..= 01-11: grace: the licence still counts (until 01-12 00:00),
    // so the days are billed above it as before; an arrears warning every run.
    for day in days("2027-01-08", "2027-01-11") {
        let mut expect = licensed("grace", ("stopped", "2027-01-12"), day);
        expect.notices.push(("arrears_warning", day));
        walk.day(day, expect, ALL_DAY).await;
        let arrears = walk.notice("arrears_warning", day).await;
        assert_eq!(
            arrears["details"]["days_since_end"],
            (day - d("2027-01-07")).num_days()
        );
    }

    // ---- 01-12: end day + 5: stopped at 02:00; deletion due at the run of 01-17.
    // Only the day's samples before 02:00 (hours 00 and 01) are taken.
    let mut expect = licensed("stopped", ("deleted", "2027-01-17"), d("2027-01-12"));
    expect.notices.extend([
        ("arrears_warning", d("2027-01-12")),
        ("service_stopped", d("2027-01-12")),
        ("deletion_scheduled", d("2027-01-12")),
    ]);
    walk.day(d("2027-01-12"), expect, 0..2).await;
    let scheduled = walk.notice("deletion_scheduled", d("2027-01-12")).await;
    assert_eq!(
        instant(&scheduled["details"]["deletion_at"]),
        local("2027-01-17T02:00:00")
    );

    // ---- 01-13: 01-12 is billed for its hours 00 and 01 only (the hours from
    // the stop are not billed). The licence's counting ended at 01-12 00:00
    // (end day + 5 days, SPEC section 5), so both hours are 16 cores short:
    // S = 32, A = 32 / 24 = 1.33, ceil 2 x 0.25 = 0.50.
    walk.day(
        d("2027-01-13"),
        Expect {
            state: "stopped",
            next: Some(("deleted", "2027-01-17")),
            notices: vec![
                ("arrears_warning", d("2027-01-13")),
                ("licence_short", d("2027-01-12")),
            ],
            bill: Some((32, "0.50")),
        },
        NONE,
    )
    .await;
    let short = walk.notice("licence_short", d("2027-01-12")).await;
    assert_eq!(short["details"]["peak_shortfall_cores"], 16);

    // ---- 01-14: still stopped at the run; 01-13 had no sample taken, so no line.
    walk.step(
        d("2027-01-14"),
        Expect {
            state: "stopped",
            next: Some(("deleted", "2027-01-17")),
            notices: vec![("arrears_warning", d("2027-01-14"))],
            bill: None,
        },
    )
    .await;
    // Recovery within 5 days of the stop: an order at midday makes it active at once.
    walk.app.clock.set(local("2027-01-14T12:00:00"));
    let (s, order) = walk
        .app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 10, "months": 1})),
        )
        .await;
    assert_eq!(s, 201, "{order}");
    assert_eq!(order["state"], "active");
    assert_eq!(
        (
            order["start_day"].as_str(),
            order["end_day"].as_str(),
            order["price"].as_str()
        ),
        (Some("2027-01-14"), Some("2027-02-14"), Some("67.50"))
    );
    let recovery_order = order["id"].as_i64().unwrap();
    let account = walk.account().await;
    assert_eq!(account["state"], "active");
    assert_eq!(
        instant(&account["state_since"]),
        local("2027-01-14T12:00:00")
    );
    assert_next_change(&account, Some(("expiring", "2027-02-07")), "recovery");
    let last = account["state_history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["cause"],
        format!("recovered by order {recovery_order}"),
        "{last}"
    );
    // The data is intact: the first day's 48 samples, the stop day's 4, every line so far.
    assert_eq!(walk.audit(d("2026-11-02")).await, (200, Some(48)));
    assert_eq!(walk.audit(d("2027-01-12")).await, (200, Some(4)));
    assert_eq!(walk.report(d("2026-11-20")).await.0, 200);
    assert_eq!(walk.all_bills().await, walk.lines);
    // Hours 00 ..= 11 were stopped: refused; from 12:00 samples are taken again.
    walk.push(d("2027-01-14"), 12..24).await;

    // ---- 01-15: 01-14 is billed for its 12 hours after the recovery only:
    // S = 12 x 6 = 72, A = 3, 3 x 0.25 = 0.75.
    walk.day(
        d("2027-01-15"),
        Expect {
            state: "active",
            next: Some(("expiring", "2027-02-07")),
            notices: vec![("licence_short", d("2027-01-14"))],
            bill: Some((72, "0.75")),
        },
        ALL_DAY,
    )
    .await;
    let short = walk.notice("licence_short", d("2027-01-14")).await;
    assert_eq!(
        instant(&short["details"]["peak_hour"]),
        local("2027-01-14T12:00:00")
    );

    // ---- 01-16 ..= 02-06: active under the recovery order (ends 02-14, no auto-renew).
    for day in days("2027-01-16", "2027-02-06") {
        walk.day(
            day,
            licensed("active", ("expiring", "2027-02-07"), day),
            ALL_DAY,
        )
        .await;
    }
    // ---- 02-07 ..= 02-13: the second expiry's 7 warnings.
    for day in days("2027-02-07", "2027-02-13") {
        let mut expect = licensed("expiring", ("grace", "2027-02-14"), day);
        expect.notices.push(("expiry_warning", day));
        walk.day(day, expect, ALL_DAY).await;
        let warning = walk.notice("expiry_warning", day).await;
        let licence = &warning["details"]["licences"][0];
        assert_eq!(licence["days_left"], (d("2027-02-14") - day).num_days());
        assert_eq!(licence["auto_renew"], false);
    }
    // ---- 02-14 ..= 02-18: grace; without auto-renew there is no renewal notice.
    for day in days("2027-02-14", "2027-02-18") {
        let mut expect = licensed("grace", ("stopped", "2027-02-19"), day);
        expect.notices.push(("arrears_warning", day));
        walk.day(day, expect, ALL_DAY).await;
    }
    // ---- 02-19: stopped again; deletion due at the run of 02-24.
    let mut expect = licensed("stopped", ("deleted", "2027-02-24"), d("2027-02-19"));
    expect.notices.extend([
        ("arrears_warning", d("2027-02-19")),
        ("service_stopped", d("2027-02-19")),
        ("deletion_scheduled", d("2027-02-19")),
    ]);
    walk.day(d("2027-02-19"), expect, 0..2).await;
    // ---- 02-20: the stop day's two hours before 02:00, 16 cores short: 0.50.
    walk.day(
        d("2027-02-20"),
        Expect {
            state: "stopped",
            next: Some(("deleted", "2027-02-24")),
            notices: vec![
                ("arrears_warning", d("2027-02-20")),
                ("licence_short", d("2027-02-19")),
            ],
            bill: Some((32, "0.50")),
        },
        NONE,
    )
    .await;
    // ---- 02-21 ..= 02-23: stopped, nothing taken, nothing billed; arrears daily.
    for day in days("2027-02-21", "2027-02-23") {
        walk.day(
            day,
            Expect {
                state: "stopped",
                next: Some(("deleted", "2027-02-24")),
                notices: vec![("arrears_warning", day)],
                bill: None,
            },
            NONE,
        )
        .await;
    }
    // Before the deletion the samples are still there.
    assert_eq!(walk.audit(d("2026-11-02")).await, (200, Some(48)));

    // ---- 02-24: stop day + 5 without a purchase: the data is deleted.
    walk.day(
        d("2027-02-24"),
        Expect {
            state: "deleted",
            next: None,
            notices: vec![("data_deleted", d("2027-02-24"))],
            bill: None,
        },
        NONE,
    )
    .await;
    walk.day(
        d("2027-02-25"),
        Expect {
            state: "deleted",
            next: None,
            notices: vec![],
            bill: None,
        },
        NONE,
    )
    .await;

    // Every bill line is kept: 11-02 ..= 01-12 (72 days) and 01-14 ..= 02-19
    // (37 days), one daily line each, no adjustment.
    let bills = walk.all_bills().await;
    assert_eq!(bills.len(), 109);
    assert_eq!(bills, walk.lines);
    // Every notice, and no other.
    let mut notices = walk.issued(None).await;
    notices.sort();
    let mut expected = walk.notices.clone();
    expected.sort();
    assert_eq!(notices, expected);
    // The samples and reports of days before the deletion are gone: refused by name.
    for day in [d("2026-11-02"), d("2027-01-14"), d("2027-02-19")] {
        let (s, v) = walk
            .app
            .admin(
                Method::GET,
                &format!("/v1/admin/accounts/acme/samples?day={day}"),
                None,
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (410, Some("data_deleted")),
            "audit trail of {day}: {v}"
        );
        let (s, v) = walk.report(day).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (410, Some("data_deleted")),
            "report of {day}: {v}"
        );
    }

    // The deletion took every sample and rejection before its run. Samples:
    // 71 whole days (11-02 ..= 01-11) and 35 (01-15 ..= 02-18) of 48, the two
    // stop days' 4 and the recovery day's 24: 106 x 48 + 4 + 4 + 24 = 5120.
    // Rejections: the stop days' 44 each, the recovery day's 24 and 5 whole
    // stopped days of 48 (01-13, 02-20 ..= 02-23): 88 + 24 + 240 = 352.
    let account = walk.account().await;
    let deletions = account["deletions"].as_array().unwrap();
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert_eq!(
        (
            deletions[0]["samples"].as_u64(),
            deletions[0]["rejections"].as_u64()
        ),
        (Some(5120), Some(352)),
        "{deletions:?}"
    );
    assert_eq!(
        instant(&deletions[0]["samples_before"]),
        local("2027-02-24T02:00:00")
    );

    // The state history holds every state with its instant.
    let history: Vec<(String, DateTime<Utc>)> = account["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["state"].as_str().unwrap().to_string(), instant(&h["at"])))
        .collect();
    let expected: Vec<(String, DateTime<Utc>)> = [
        ("trial", local("2026-11-02T12:00:00")),
        ("active", local("2026-11-07T12:00:00")),
        ("expiring", local("2026-11-30T02:00:00")),
        ("active", local("2026-12-07T02:00:00")),
        ("expiring", local("2026-12-31T02:00:00")),
        ("grace", local("2027-01-07T02:00:00")),
        ("stopped", local("2027-01-12T02:00:00")),
        ("active", local("2027-01-14T12:00:00")),
        ("expiring", local("2027-02-07T02:00:00")),
        ("grace", local("2027-02-14T02:00:00")),
        ("stopped", local("2027-02-19T02:00:00")),
        ("deleted", local("2027-02-24T02:00:00")),
    ]
    .into_iter()
    .map(|(s, at)| (s.to_string(), at))
    .collect();
    assert_eq!(history, expected);

    // The sub-account was never licensed and was told nothing.
    let dev = walk.account_of("acme-dev").await;
    assert_eq!(dev["state"], "unlicensed");
    assert_eq!(dev["parent"], "acme");
    let (_, v) = walk
        .app
        .admin(Method::GET, "/v1/admin/accounts/acme-dev/notices", None)
        .await;
    assert_eq!(v["notices"], json!([]));

    // The metrics count what the runs did: one renewal, the states reached.
    let metrics = walk
        .app
        .client
        .get(walk.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "core_meter_licence_renewals_total 1",
        // Stopped twice and deleted once, each at a run (the recoveries were orders).
        "core_meter_account_state_changes_total{state=\"stopped\"} 2",
        "core_meter_account_state_changes_total{state=\"deleted\"} 1",
        "core_meter_notices_issued_total{kind=\"data_deleted\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    walk.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_trial_in_the_same_main_account_family_is_refused_naming_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    for (id, parent) in [
        ("acme", None),
        ("acme-dev", Some("acme")),
        ("acme-qa", Some("acme")),
        ("rival", None),
    ] {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts",
                Some(json!({"id": id, "parent": parent})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // A sub-account takes the family's one trial.
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/accounts/acme-dev/trial", None)
        .await;
    assert_eq!(s, 201, "{v}");

    app.clock.set(local("2026-11-04T09:00:00"));
    for (account, names) in [
        (
            "acme",
            vec!["main account \"acme\"", "\"acme-dev\"", "2026-11-02"],
        ),
        (
            "acme-qa",
            vec![
                "\"acme-qa\"",
                "main account \"acme\"",
                "\"acme-dev\"",
                "2026-11-02",
            ],
        ),
        ("acme-dev", vec!["\"acme-dev\"", "2026-11-02"]),
    ] {
        let (s, v) = app
            .admin(
                Method::POST,
                &format!("/v1/admin/accounts/{account}/trial"),
                None,
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
            (409, Some("trial_used"), Some("account")),
            "{account}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("trial"), "{message:?}");
        for named in names {
            assert!(message.contains(named), "{message:?} names {named}");
        }
    }
    // The refusals changed nothing: the family's one trial is still acme-dev's.
    for (account, holds_trial) in [("acme", false), ("acme-qa", false), ("acme-dev", true)] {
        let (_, v) = app
            .admin(Method::GET, &format!("/v1/admin/accounts/{account}"), None)
            .await;
        assert_eq!(v["trial"] != Value::Null, holds_trial, "{account}: {v}");
    }
    // Another main account has its own.
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/accounts/rival/trial", None)
        .await;
    assert_eq!((s, v["state"].as_str()), (201, Some("trial")), "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_with_the_same_reference_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    app.account_with_cluster("acme", "prod").await;
    let credit = |amount: &str, reference: &str| {
        app.admin(
            Method::POST,
            "/v1/admin/accounts/acme/credits",
            Some(json!({"amount": amount, "reference": reference})),
        )
    };

    let (s, v) = credit("67.50", "pay-1").await;
    assert_eq!((s, v), (201, json!({"balance": "67.50", "credited": true})));
    // The billing backend sends the same payment again: taken once.
    let (s, v) = credit("67.50", "pay-1").await;
    assert_eq!(
        (s, v),
        (200, json!({"balance": "67.50", "credited": false}))
    );
    // The same reference with another amount is a conflict, not a second credit.
    let (s, v) = credit("10.00", "pay-1").await;
    assert_eq!(
        (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (409, Some("reference_in_use"), Some("reference")),
        "{v}"
    );
    let (s, v) = credit("10.00", "pay-2").await;
    assert_eq!((s, v), (201, json!({"balance": "77.50", "credited": true})));

    let (_, v) = app
        .admin(Method::GET, "/v1/admin/accounts/acme/balance", None)
        .await;
    assert_eq!(v["balance"], "77.50");
    let references: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reference"].as_str().unwrap())
        .collect();
    assert_eq!(references, vec!["pay-1", "pay-2"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_both_months_and_years_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    app.account_with_cluster("acme", "prod").await;

    for body in [
        json!({"cores": 10, "months": 1, "years": 1}),
        json!({"cores": 10}),
    ] {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/orders",
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
            (422, Some("invalid_value"), Some("months")),
            "{body}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("months") && message.contains("years"),
            "{message:?}"
        );
    }
    let account = app
        .admin(Method::GET, "/v1/admin/accounts/acme", None)
        .await
        .1;
    assert_eq!(account["orders"], json!([]), "nothing was ordered");
    assert_eq!(account["state"], "unlicensed");
    // A year alone is twelve months: 10 x 12 x 6.75 = 810.00, to 2027-11-02.
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 10, "years": 1})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["months"].as_u64(),
            v["end_day"].as_str(),
            v["price"].as_str()
        ),
        (Some(12), Some("2027-11-02"), Some("810.00"))
    );
    app.stop().await;
}

/// A trial that ends without a purchase: stopped at the run of its 8th day,
/// deleted a day later; its free lines stay; an order after that starts a new life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_older_than_0_2_is_refused_a_stopped_sample_without_a_reason_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/accounts/acme/trial", None)
        .await;
    assert_eq!(s, 201, "{v}");
    // The trial ends, without a purchase, at the run of 11-09.
    app.clock.set(local("2026-11-09T02:00:00"));
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    assert_eq!(s, 200, "{v}");
    app.clock.set(local("2026-11-09T10:00:00"));
    let sample = |version: &str| json!({"node": "node-a", "cores": 8, "at": local("2026-11-09T09:05:00"), "agent_version": version});
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"samples": [sample("0.1.0"), sample("0.2.0")]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Agent 0.1.0 cannot decode `service_stopped` and would resend for ever:
    // it gets the rejection without a reason, which it drops.
    assert_eq!(v["results"][0], json!({"index": 0, "status": "rejected"}));
    assert_eq!(
        v["results"][1],
        json!({"index": 1, "status": "rejected", "reason": "service_stopped"})
    );
    // The metrics count the real reason for both.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            == "core_meter_ingest_samples_total{result=\"rejected\",reason=\"service_stopped\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_trial_stops_the_service_and_its_data_is_deleted_a_day_later() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    add_contacts(&app, "acme").await;
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/accounts/acme/trial", None)
        .await;
    assert_eq!(s, 201, "{v}");
    let mut walk = Walk::new(app, token);
    walk.push(d("2026-11-02"), ALL_DAY).await;

    for day in days("2026-11-03", "2026-11-08") {
        let mut notices = vec![];
        if day == d("2026-11-06") {
            notices.push(("trial_ending", day));
        }
        walk.day(
            day,
            Expect {
                state: "trial",
                next: Some(("stopped", "2026-11-09")),
                notices,
                bill: Some((0, "0.00")),
            },
            ALL_DAY,
        )
        .await;
    }
    // The run of the 8th day ends the trial and stops the service; deletion a day later.
    walk.day(
        d("2026-11-09"),
        Expect {
            state: "stopped",
            next: Some(("deleted", "2026-11-10")),
            notices: vec![
                ("trial_ended", d("2026-11-09")),
                ("service_stopped", d("2026-11-09")),
                ("deletion_scheduled", d("2026-11-09")),
            ],
            bill: Some((0, "0.00")),
        },
        0..2,
    )
    .await;
    // 11-09 is billed at 0.00: hours 00 and 01 were the trial's, the rest stopped.
    walk.day(
        d("2026-11-10"),
        Expect {
            state: "deleted",
            next: None,
            notices: vec![("data_deleted", d("2026-11-10"))],
            bill: Some((0, "0.00")),
        },
        NONE,
    )
    .await;
    // Eight free lines, 11-02 ..= 11-09, are kept.
    let bills = walk.all_bills().await;
    assert_eq!(bills.len(), 8);
    assert_eq!(bills, walk.lines);
    let (s, v) = walk.audit(d("2026-11-05")).await;
    assert_eq!(s, 410, "the audit trail of a deleted day: {v:?}");

    // An order after the deletion starts a new life.
    walk.app.clock.set(local("2026-11-11T12:00:00"));
    let (s, order) = walk
        .app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 10, "months": 1})),
        )
        .await;
    assert_eq!(
        (s, order["state"].as_str()),
        (201, Some("active")),
        "{order}"
    );
    walk.push(d("2026-11-11"), 12..24).await;
    walk.app.stop().await;
}

/// The deletion is recorded in the state history with how many rows went (LIFECYCLE.md, Deletion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deletion_is_recorded_in_the_state_history_and_counts_the_rows_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-02T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    let (s, v) = app
        .admin(Method::POST, "/v1/admin/accounts/acme/trial", None)
        .await;
    assert_eq!(s, 201, "{v}");
    let mut walk = Walk::new(app, token);
    // 7 whole days of 2 nodes (11-02 ..= 11-08) and the two hours of 11-09
    // before the stop: 7 x 48 + 4 = 340 samples; 44 refused that day.
    walk.push(d("2026-11-02"), ALL_DAY).await;
    for day in days("2026-11-03", "2026-11-08") {
        walk.run_at(day).await;
        walk.push(day, ALL_DAY).await;
    }
    walk.run_at(d("2026-11-09")).await;
    walk.push(d("2026-11-09"), 0..2).await;
    walk.run_at(d("2026-11-10")).await;

    let account = walk.account().await;
    assert_eq!(account["state"], "deleted");
    let deleted = account["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["state"] == "deleted")
        .cloned()
        .unwrap();
    // Deleted at the run of the day after the trial's stop (11-09 + 1).
    assert_eq!(instant(&deleted["at"]), local("2026-11-10T02:00:00"));
    let deletions = account["deletions"].as_array().unwrap();
    assert_eq!(deletions.len(), 1, "{account}");
    assert_eq!(
        (&deletions[0]["samples"], &deletions[0]["rejections"]),
        (&serde_json::json!(340), &serde_json::json!(44)),
        "the deletion counts the 340 samples and 44 rejections it removed: {deletions:?}"
    );
    assert!(deletions[0]["finished_at"].is_string(), "{deletions:?}");
    walk.app.stop().await;
}

// ---- Helpers.

/// What one run must leave behind.
struct Expect {
    state: &'static str,
    /// The next change if nothing is bought and nothing renews: the state and the day of its run.
    next: Option<(&'static str, &'static str)>,
    /// The notices this run issued: kind and the day each is about.
    notices: Vec<(&'static str, NaiveDate)>,
    /// The day before's daily line: excess core-hours and amount; `None` when it had no sample to bill.
    bill: Option<(u64, &'static str)>,
}

/// A run while a 10-core licence counts under 16 cores: the day before is
/// 24 x 6 = 144 core-hours short, A = 6, 6 x 0.25 = 1.50, with its licence_short notice.
fn licensed(state: &'static str, next: (&'static str, &'static str), day: NaiveDate) -> Expect {
    Expect {
        state,
        next: Some(next),
        notices: vec![("licence_short", prev(day))],
        bill: Some((144, "1.50")),
    }
}

/// A notice as checked: kind, the day it is about, its addresses sorted.
type Issued = (String, String, Vec<String>);

/// A bill line as checked: day, kind, excess core-hours, amount.
type Line = (String, String, u64, String);

/// The account "acme" walked run by run, with what it must have issued so far.
struct Walk {
    app: TestApp,
    token: String,
    next_seq: u64,
    /// Every notice expected so far.
    notices: Vec<Issued>,
    /// Every bill line expected so far, in day order.
    lines: Vec<Line>,
}

impl Walk {
    fn new(app: TestApp, token: String) -> Walk {
        Walk {
            app,
            token,
            next_seq: 1,
            notices: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// The run of `day`, checked, then the day's samples pushed.
    async fn day(&mut self, day: NaiveDate, expect: Expect, accepted: Range<u32>) {
        self.step(day, expect).await;
        self.push(day, accepted).await;
    }

    /// The run of `day` and every check of what it left behind.
    async fn step(&mut self, day: NaiveDate, expect: Expect) {
        let at = self.run_at(day).await;
        let account = self.account().await;
        assert_eq!(account["state"], expect.state, "state at the run of {day}");
        assert_next_change(&account, expect.next, &format!("the run of {day}"));

        let mut expected: Vec<Issued> = expect
            .notices
            .iter()
            .map(|(kind, about)| issued(kind, *about))
            .collect();
        expected.sort();
        let mut got = self.issued(Some(at)).await;
        got.sort();
        assert_eq!(got, expected, "notices of the run of {day}");
        self.notices.extend(expected);

        let billed = prev(day);
        let expected: Vec<Line> = expect
            .bill
            .iter()
            .map(|(excess, amount)| {
                (
                    billed.to_string(),
                    "daily".to_string(),
                    *excess,
                    amount.to_string(),
                )
            })
            .collect();
        let (s, v) = self
            .app
            .admin(
                Method::GET,
                &format!("/v1/admin/bills?account=acme&day={billed}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(lines(&v), expected, "the bill of {billed}");
        self.lines.extend(expected);
    }

    /// Sets the clock to 02:00:00 of `day` and runs billing and the lifecycle
    /// step (the service's own job may have run it first: both are idempotent).
    async fn run_at(&self, day: NaiveDate) -> DateTime<Utc> {
        let at = local(&format!("{day}T02:00:00"));
        self.app.clock.set(at);
        let (s, v) = self
            .app
            .admin(Method::POST, "/v1/admin/billing-runs", None)
            .await;
        assert_eq!(s, 200, "the run of {day}: {v}");
        at
    }

    /// Both nodes' 24 hourly samples of `day`, pushed at 23:30 that day; the
    /// hours in `accepted` must be taken and the others refused as `service_stopped`.
    async fn push(&mut self, day: NaiveDate, accepted: Range<u32>) {
        self.app.clock.set(local(&format!("{day}T23:30:00")));
        let mut samples = Vec::new();
        for node in NODES {
            for hour in 0..24 {
                samples.push(json!({
                    "node": node,
                    "cores": NODE_CORES,
                    "at": local(&format!("{day}T{hour:02}:05:00")),
                    "seq": self.next_seq,
                    // A current agent, which reads `service_stopped`.
                    "agent_version": "0.2.0",
                }));
                self.next_seq += 1;
            }
        }
        let (s, v) = self
            .app
            .call(
                Method::POST,
                "/v1/samples",
                Some(&self.token),
                Some(json!({ "samples": samples })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let results = v["results"].as_array().unwrap();
        for (i, r) in results.iter().enumerate() {
            let hour = (i % 24) as u32;
            let want = if accepted.contains(&hour) {
                (Some("accepted"), None)
            } else {
                (Some("rejected"), Some("service_stopped"))
            };
            assert_eq!(
                (r["status"].as_str(), r["reason"].as_str()),
                want,
                "sample of {day} {hour:02}:05"
            );
        }
    }

    async fn account(&self) -> Value {
        self.account_of("acme").await
    }

    async fn account_of(&self, id: &str) -> Value {
        let (s, v) = self
            .app
            .admin(Method::GET, &format!("/v1/admin/accounts/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The notices issued at `at` (every notice when `None`), as checked.
    async fn issued(&self, at: Option<DateTime<Utc>>) -> Vec<Issued> {
        self.notices_json()
            .await
            .iter()
            .filter(|n| at.is_none_or(|at| instant(&n["issued_at"]) == at))
            .map(|n| {
                let mut to: Vec<String> = n["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["address"].as_str().unwrap().to_string())
                    .collect();
                to.sort();
                (
                    n["kind"].as_str().unwrap().to_string(),
                    n["day"].as_str().unwrap().to_string(),
                    to,
                )
            })
            .collect()
    }

    /// The one notice of `kind` about `day`.
    async fn notice(&self, kind: &str, day: NaiveDate) -> Value {
        let found: Vec<Value> = self
            .notices_json()
            .await
            .into_iter()
            .filter(|n| n["kind"] == kind && n["day"] == day.to_string())
            .collect();
        assert_eq!(found.len(), 1, "one {kind} about {day}: {found:?}");
        found.into_iter().next().unwrap()
    }

    async fn notices_json(&self) -> Vec<Value> {
        let (s, v) = self
            .app
            .admin(Method::GET, "/v1/admin/accounts/acme/notices", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["notices"].as_array().unwrap().clone()
    }

    /// Every bill line of the account, as checked.
    async fn all_bills(&self) -> Vec<Line> {
        let (s, v) = self
            .app
            .admin(Method::GET, "/v1/admin/bills?account=acme", None)
            .await;
        assert_eq!(s, 200, "{v}");
        lines(&v)
    }

    /// The audit trail of `day`: the status and, when answered, how many samples it holds.
    async fn audit(&self, day: NaiveDate) -> (u16, Option<usize>) {
        let (s, v) = self
            .app
            .admin(
                Method::GET,
                &format!("/v1/admin/accounts/acme/samples?day={day}"),
                None,
            )
            .await;
        (s, v["samples"].as_array().map(Vec::len))
    }

    async fn report(&self, day: NaiveDate) -> (u16, Value) {
        self.app
            .admin(
                Method::GET,
                &format!("/v1/reports/daily?day={day}&account=acme"),
                None,
            )
            .await
    }
}

/// The expected notice of `kind` about `day`, to the addresses of the roles
/// LIFECYCLE.md's table sends it to.
fn issued(kind: &str, day: NaiveDate) -> Issued {
    // Creator, global-resource and finance collaborators.
    let owners = vec![ADA_EMAIL, ADA_SMS, GUS_EMAIL, FAY_SMS];
    let to = match kind {
        "expiry_warning" | "licence_short" | "trial_ending" | "trial_ended" => owners,
        // Creator and finance collaborators.
        "renewal_succeeded" | "renewal_failed" => vec![ADA_EMAIL, ADA_SMS, FAY_SMS],
        // Everyone.
        "arrears_warning" | "service_stopped" | "deletion_scheduled" | "data_deleted" => {
            vec![ADA_EMAIL, ADA_SMS, GUS_EMAIL, FAY_SMS, COLE_EMAIL]
        }
        other => panic!("no recipients known for {other}"),
    };
    let mut to: Vec<String> = to.into_iter().map(String::from).collect();
    to.sort();
    (kind.to_string(), day.to_string(), to)
}

fn lines(bills: &Value) -> Vec<Line> {
    bills["bills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["day"].as_str().unwrap().to_string(),
                b["kind"].as_str().unwrap().to_string(),
                b["excess_core_hours"].as_u64().unwrap(),
                b["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One contact per role; Ada has both channels, Fay only SMS.
async fn add_contacts(app: &TestApp, account: &str) {
    for contact in [
        json!({"name": "Ada", "role": "creator", "email": ADA_EMAIL, "sms": ADA_SMS}),
        json!({"name": "Gus", "role": "global_resource_collaborator", "email": GUS_EMAIL}),
        json!({"name": "Fay", "role": "finance_collaborator", "sms": FAY_SMS}),
        json!({"name": "Cole", "role": "collaborator", "email": COLE_EMAIL}),
    ] {
        let (s, v) = app
            .admin(
                Method::POST,
                &format!("/v1/admin/accounts/{account}/contacts"),
                Some(contact),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
}

fn assert_next_change(account: &Value, next: Option<(&str, &str)>, when: &str) {
    let got = &account["next_change"];
    match next {
        None => assert_eq!(got, &Value::Null, "no next change after {when}"),
        Some((state, day)) => {
            assert_eq!(got["state"], state, "next change after {when}: {got}");
            assert_eq!(
                instant(&got["at"]),
                local(&format!("{day}T02:00:00")),
                "next change after {when}: {got}"
            );
        }
    }
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        v.as_str()
            .unwrap_or_else(|| panic!("{v} is not an instant")),
    )
    .unwrap()
    .with_timezone(&Utc)
}

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn prev(day: NaiveDate) -> NaiveDate {
    day.pred_opt().unwrap()
}

/// `first ..= last`, day by day.
fn days(first: &str, last: &str) -> Vec<NaiveDate> {
    let (first, last) = (d(first), d(last));
    (0..)
        .map(|i| first.checked_add_days(Days::new(i)).unwrap())
        .take_while(|day| *day <= last)
        .collect()
}
