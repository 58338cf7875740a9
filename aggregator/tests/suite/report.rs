//! The daily report agrees with the bill and explains it: hours, bridging, shares, completeness, every format.

use crate::support;

use std::path::Path;

use aggregator::commands::replay::{config_from, parse_case, replay_into};
use aggregator::reports::{daily_report, render_csv, render_table};
use aggregator::store::{Durability, Store};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

fn stored(case_name: &str) -> (tempfile::TempDir, Store, aggregator::config::BillingConfig) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/conformance")
        .join(case_name);
    let text = std::fs::read_to_string(path).unwrap();
    let case = parse_case(text.as_bytes()).unwrap();
    let config = config_from(&case.settings).unwrap();
    let mut runs: Vec<DateTime<Utc>> = case.runs.iter().map(|r| r.parse().unwrap()).collect();
    runs.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        support::open_store(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
    replay_into(&case, &config, &runs, &mut store).unwrap();
    (dir, store, config)
}

fn now() -> DateTime<Utc> {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

#[test]
fn the_report_shows_the_bills_figures_and_the_hours_add_up_to_them() {
    let (_dir, mut store, config) = stored("late-samples-adjustment.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    assert!(!r.provisional);
    // Two lines: the daily 7.50 and the adjustment 1.75 for the late node.
    assert_eq!(r.lines.len(), 2);
    assert_eq!(r.billed_amount, Decimal::new(925, 2));
    assert_eq!(
        r.figures.amount, r.billed_amount,
        "what was billed is what the day now costs"
    );
    assert_eq!(r.figures.excess_core_hours, 880);
    let from_hours: u64 = r.hours.iter().map(|h| h.excess_cores).sum();
    assert_eq!(from_hours, r.figures.excess_core_hours);
    assert_eq!(r.hours.len(), 24);
    assert_eq!(r.licence_short_hours, 24);
    assert!(r
        .lines
        .iter()
        .all(|l| l.idempotency_key.starts_with("acme/2026-11-24/")));
}

#[test]
fn bridged_hours_node_shares_and_gaps_are_shown() {
    let (_dir, mut store, config) = stored("gap-bridging.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    let bridged: usize = r.hours.iter().map(|h| h.bridged.len()).sum();
    let bridged_by_nodes: u32 = r.nodes.iter().map(|n| n.hours_bridged).sum();
    assert!(bridged > 0, "the case bridges gaps");
    assert_eq!(bridged as u32, bridged_by_nodes);
    assert!(
        r.nodes.iter().any(|n| n.gap_hours > 0),
        "the long gap shows"
    );
    // The shares add up to the day's excess (to the cent of a core-hour per node).
    let shares: Decimal = r.clusters.iter().map(|c| c.excess_core_hours).sum();
    let excess = Decimal::from(r.figures.excess_core_hours);
    assert!(
        (shares - excess).abs() <= Decimal::new(1, 2) * Decimal::from(r.nodes.len() as u64),
        "{shares} vs {excess}"
    );
}

#[test]
fn clusters_get_their_share_and_a_day_within_the_licence_shows_a_surplus() {
    let (_dir, mut store, config) = stored("duplicates-resize-and-clusters.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    assert!(r.clusters.len() >= 2, "{:?}", r.clusters);
    let (_dir, mut store, config) = stored("within-license.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    // 160 cores against 200 licensed all day: 40 cores to spare.
    assert_eq!(r.surplus_cores, Some(40));
    assert_eq!(r.licence_short_hours, 0);
}

#[test]
fn a_day_not_yet_due_is_provisional() {
    let (_dir, mut store, config) = stored("constant-overage.json");
    let before_0200: DateTime<Utc> = "2026-11-24T17:00:00Z".parse().unwrap();
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        before_0200,
    )
    .unwrap();
    assert!(r.provisional);
    assert!(render_table(&r).contains("PROVISIONAL"));
}

#[test]
fn every_format_carries_the_figures() {
    let (_dir, mut store, config) = stored("autoscale-burst.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    let table = render_table(&r);
    assert!(table.contains("amount 5.25 USD"), "{table}");
    assert!(table.contains("acme/2026-11-24/1"));
    let csv = render_csv(&r);
    assert_eq!(csv.lines().count(), 25, "a header and 24 hours");
    assert!(csv.starts_with("account,day,hour_start,total_cores"));
    assert!(csv.contains("2026-11-24T00:00:00+08:00"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["figures"]["amount"], "5.25");
    assert_eq!(json["hours"].as_array().unwrap().len(), 24);
}

/// Headless Chromium, or None where it is not installed (CI installs it and
/// sets CORE_METER_REQUIRE_CHROMIUM=1, which turns its absence into a failure).
fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        testkit::skip(
            "CHROMIUM",
            "chromium is not installed for the rendered-page test",
        );
    }
    found
}

#[test]
fn the_html_page_renders_in_chromium_with_its_chart_and_figures() {
    let Some(browser) = chromium() else { return };
    let (_dir, mut store, config) = stored("gap-bridging.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    let html = aggregator::reports::html::render_html(&r);
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "self-contained"
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let page = out.join("report-acme-2026-11-24.html");
    std::fs::write(&page, &html).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let dom = std::process::Command::new(browser)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<svg id=\"chart\""),
        "the chart is in the rendered page"
    );
    assert!(
        dom.contains("class=\"total\"")
            && dom.contains("class=\"lic\"")
            && dom.contains("class=\"cap\"")
    );
    assert!(
        dom.contains("class=\"bridged\""),
        "bridged hours are marked"
    );
    assert!(
        dom.contains(&format!("{} {}", r.figures.amount, r.figures.currency)),
        "the amount is shown"
    );
    assert_eq!(
        dom.matches("<tr>").count(),
        1 + 1 + 1 + r.lines.len() + 1 + r.hours.len() + 1 + r.clusters.len() + 1 + r.nodes.len()
            // the images part and the log storage part: a head and one row each
            + 2
            + 2
    );
    assert!(dom.contains("id=\"images\""), "the images part is shown");
    assert!(
        dom.contains("id=\"log-storage\""),
        "the log storage part is shown"
    );
    let shot = out.join("report-acme-2026-11-24.png");
    let _ = std::fs::remove_file(&shot);
    let status = std::process::Command::new(browser)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,1400")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(status.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot, {} bytes",
        png.len()
    );
    eprintln!("screenshot saved at {}", shot.display());
}

#[test]
fn samples_the_service_refused_are_counted_by_reason() {
    let (_dir, mut store, config) = stored("bad-samples.json");
    let r = daily_report(
        &mut store,
        &config,
        "acme",
        "2026-11-24".parse().unwrap(),
        now(),
    )
    .unwrap();
    // bad-samples: 3 invalid_cores, 1 in_future, 1 missing_identity on the 24th; the too_old one
    // claims November 1st, and the unknown account's is nobody's.
    let got: Vec<(String, u64)> = r.rejected.clone().into_iter().collect();
    assert_eq!(
        got,
        vec![
            ("in_future".to_string(), 1),
            ("invalid_cores".to_string(), 3),
            ("missing_identity".to_string(), 1)
        ]
    );
    assert!(render_table(&r)
        .contains("rejected samples: in_future 1, invalid_cores 3, missing_identity 1"));
}

/// The cells of a CSV's rows after its header (none of them quoted here).
fn csv_cells(text: &str) -> Vec<Vec<String>> {
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    rows.records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_csv_cell_starts_a_formula_though_an_account_cluster_or_node_name_does() {
    use reqwest::Method;
    use serde_json::json;
    use support::{local, TestApp, ADMIN};

    // Names the domain now refuses, as a database from before it holds them:
    // made under good names, renamed behind the store, and listed as
    // migration 8 lists such names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let app = TestApp::spawn(path.clone(), None, local("2026-11-24T23:30:00")).await;
    let token = app.account_with_cluster("acme", "ops").await;
    // Hour 4 is missing: bridged, so the node's name is in the report's CSV.
    let samples: Vec<_> = (0..24)
        .filter(|h| *h != 4)
        .map(|h| {
            json!({"node": "n1", "cores": 40, "seq": h, "agent_version": "test",
                        "at": local(&format!("2026-11-24T{h:02}:05:00"))})
        })
        .collect();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({ "samples": samples })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    app.stop().await;
    support::execute_behind_the_store(
        &path,
        "UPDATE accounts SET id = '=2+3' WHERE id = 'acme';
         UPDATE clusters SET name = '@ops' WHERE name = 'ops';
         UPDATE nodes SET cluster = '@ops', name = '+n1' WHERE name = 'n1';
         INSERT INTO names_outside_domain (kind, name)
           VALUES ('account', '=2+3'), ('cluster', '@ops'), ('node', '+n1');",
    );
    let app = TestApp::spawn(path.clone(), None, local("2026-11-24T23:30:00")).await;
    app.clock.set(local("2026-11-25T02:00:01"));
    app.admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    // A licence recorded after the bill: the next run issues a negative adjustment.
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/=2+3/licenses",
            Some(json!({"cores": 10, "start": "2026-11-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    app.clock.set(local("2026-11-25T03:00:00"));
    app.admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;

    let csv = |path: String| {
        let app = &app;
        async move {
            let a = app.send(Method::GET, &path, Some(ADMIN), None).await;
            assert_eq!(a.status(), 200, "{path}");
            csv_cells(&a.text().await.unwrap())
        }
    };
    for path in [
        "/v1/admin/bills?account=%3D2%2B3&format=csv".to_string(),
        "/v1/admin/bills?format=csv".to_string(),
    ] {
        let lines = csv(path).await;
        assert_eq!(lines.len(), 2, "the daily line and the adjustment");
        for line in &lines {
            assert_eq!(line[0], "'=2+3");
            assert_eq!(line[12], format!("'=2+3/2026-11-24/{}", line[2]));
        }
        let amount = &lines[1][9];
        assert!(
            amount.starts_with('-') && amount.parse::<Decimal>().is_ok(),
            "the adjustment stays a number: {amount}"
        );
    }
    let report = csv("/v1/reports/daily?day=2026-11-24&account=%3D2%2B3&format=csv".into()).await;
    assert_eq!(report.len(), 24);
    assert!(report.iter().all(|row| row[0] == "'=2+3"));
    assert_eq!(report[4][6], "'@ops/+n1", "the bridged hour names the node");
    // The same rows `aggregator report --format csv` prints.
    let config = aggregator::config::BillingConfig::default();
    let path = dir.path().join("db.sqlite");
    let printed = support::off_runtime(move || {
        let mut store = support::open_store(&path, Durability::Durable).unwrap();
        let r = daily_report(
            &mut store,
            &config,
            "=2+3",
            "2026-11-24".parse().unwrap(),
            now(),
        )
        .unwrap();
        render_csv(&r)
    });
    assert_eq!(csv_cells(&printed), report);
    app.stop().await;
}
