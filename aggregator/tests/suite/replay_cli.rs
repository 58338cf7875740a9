//! The `aggregator replay` command as scripts see it: JSON on stdout, or one line on stderr and a non-zero exit.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/conformance")
        .join(name)
}

fn replay(case: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .arg("replay")
        .arg(case)
        .output()
        .expect("run aggregator")
}

fn replay_text(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.json");
    std::fs::write(&path, text).unwrap();
    replay(&path)
}

#[test]
fn replay_prints_the_bills_of_a_case_as_json() {
    let out = replay(&conformance("constant-overage.json"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let bills = v["bills"].as_array().expect("bills");
    assert_eq!(bills.len(), 1);
    assert_eq!(bills[0]["amount"], "50.00");
    assert_eq!(bills[0]["idempotency_key"], "acme/2026-11-24/1");
    assert_eq!(v["rejected"], serde_json::json!([]));
}

#[test]
fn a_cap_below_500_exits_non_zero_with_one_line_naming_it() {
    let out = replay(&conformance("cap-below-minimum.json"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cap below 500 for account acme"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn configuration_errors_name_the_field_and_the_reason() {
    let cases = [
        (
            r#"{"settings": {"timezone": "Mars/Olympus"}}"#,
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            r#"{"settings": {"billable_core_rounding": "floor"}}"#,
            "billable_core_rounding",
        ),
        (
            r#"{"settings": {"price_per_core_day": "-1"}}"#,
            "price_per_core_day",
        ),
        (
            r#"{"accounts": [{"id": "a", "licenses": [{"cores": "x", "start": "", "end": ""}]}]}"#,
            "accounts[0].licenses[0].cores",
        ),
        (
            r#"{"accounts": [{"id": "a"}, {"id": "a"}]}"#,
            "appears twice",
        ),
        (r#"{"runs": ["tomorrow"]}"#, "runs[0]"),
        (
            r#"{"samples": [{"account": "a", "received": "soon"}]}"#,
            "samples[0].received",
        ),
        ("{not json", "malformed case"),
    ];
    for (case, needle) in cases {
        let out = replay_text(case);
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert!(!out.status.success(), "{case} should fail");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{case}: {stderr:?} lacks {needle:?}"
        );
    }
}

#[test]
fn a_sample_with_an_unreadable_at_is_rejected_and_the_rest_is_billed() {
    let out = replay_text(
        r#"{
      "accounts": [{"id": "a"}],
      "samples": [
        {"account": "a", "cluster": "c", "node": "n", "cores": 4, "at": "2026-11-24T10:00:00+08:00"},
        {"account": "a", "cluster": "c", "node": "m", "cores": 4, "at": 12345, "received": "2026-11-24T10:00:00+08:00"},
        {"account": "a", "cluster": "c", "node": "m", "cores": 4}
      ],
      "runs": ["2026-11-25T02:00:00+08:00"]
    }"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["rejected"],
        serde_json::json!([{"index": 1, "reason": "invalid_at"}, {"index": 2, "reason": "invalid_at"}])
    );
    assert_eq!(v["bills"][0]["excess_core_hours"], 4);
}

/// A database holding a replayed conformance case, as `serve` would have left it.
fn database_from_case(name: &str, dir: &Path) -> PathBuf {
    use aggregator::commands::replay::{config_from, parse_case, replay_into};
    let text = std::fs::read_to_string(conformance(name)).unwrap();
    let case = parse_case(text.as_bytes()).unwrap();
    let config = config_from(&case.settings).unwrap();
    let runs: Vec<chrono::DateTime<chrono::Utc>> =
        case.runs.iter().map(|r| r.parse().unwrap()).collect();
    let path = dir.join("core-meter.sqlite");
    let mut store = support::open_store(&path, aggregator::store::Durability::Durable).unwrap();
    replay_into(&case, &config, &runs, &mut store).unwrap();
    path
}

#[test]
fn report_prints_a_table_csv_or_json_and_export_prints_a_case_that_replays_to_the_bill() {
    let dir = tempfile::tempdir().unwrap();
    let db = match support::database(&database_from_case("autoscale-burst.json", dir.path())) {
        aggregator::config::Database::Sqlite(path) => path.display().to_string(),
        aggregator::config::Database::Postgres(url) => url,
    };
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
            .args(args)
            .arg("--database")
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&["report", "--day", "2026-11-24"]);
    assert!(
        table.contains("account acme") && table.contains("amount 5.25 USD"),
        "{table}"
    );
    let csv = run(&["report", "--day", "2026-11-24", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 25);
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "report",
        "--day",
        "2026-11-24",
        "--account",
        "acme",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(json[0]["figures"]["billable_cores"], "21.00");

    let pages = dir.path().join("pages");
    let written = run(&[
        "report",
        "--day",
        "2026-11-24",
        "--format",
        "html",
        "--out",
        pages.to_str().unwrap(),
    ]);
    let page = std::fs::read_to_string(written.trim()).unwrap();
    assert!(page.contains("<svg id=\"chart\"") && page.contains("5.25 USD"));

    let case = run(&["export", "--day", "2026-11-24", "--account", "acme"]);
    let path = dir.path().join("exported.json");
    std::fs::write(&path, case).unwrap();
    let out = replay(&path);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let day: Vec<&serde_json::Value> = v["bills"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["day"] == "2026-11-24")
        .collect();
    assert_eq!(day.len(), 1);
    assert_eq!(day[0]["amount"], "5.25");
    assert_eq!(day[0]["issued_at"], "2026-11-24T18:00:00Z");
}

#[test]
fn the_demo_bills_a_simulated_day_and_writes_the_report_page() {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the demo takes under a minute"
    );
    assert!(text.contains("Daily overage: account acme"), "{text}");
    assert!(
        text.contains("notice licence_short for ") && text.contains("to ops@acme.example"),
        "the bill's licence_short notice is shown: {text}"
    );
    assert!(text.contains("account acme is active"), "{text}");
    assert!(
        text.contains("daily") && text.contains("key acme/"),
        "a bill line was issued: {text}"
    );
    let page = text
        .lines()
        .find_map(|l| l.strip_prefix("The report as a page: "))
        .expect("the demo says where the page is");
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<svg id=\"chart\""));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("24/24 h"),
        "the progress bar reached the end"
    );
    let _ = std::fs::remove_dir_all(Path::new(page).parent().unwrap());
}
