//! `export` then `replay` reproduces every line issued for the exported day, on the conformance cases and on a randomized fleet.

use crate::support;

use std::path::Path;

use aggregator::commands::replay::{config_from, parse_case, replay, replay_into};
use aggregator::reports::export::export_case;
use aggregator::store::Durability;
use chrono::{DateTime, TimeDelta, Utc};
use shared::bill::BillLine;

/// Replays `case_text` into a kept store, then for every (account, day) that
/// got lines, exports the day and replays the export: its lines for that day
/// must equal the original ones, field for field.
fn round_trip(case_text: &str) -> usize {
    let case = parse_case(case_text.as_bytes()).unwrap();
    let config = config_from(&case.settings).unwrap();
    let mut runs: Vec<DateTime<Utc>> = case.runs.iter().map(|r| r.parse().unwrap()).collect();
    runs.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        support::open_store(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
    let original = replay_into(&case, &config, &runs, &mut store).unwrap();
    let mut days: Vec<(String, chrono::NaiveDate)> = original
        .bills
        .iter()
        .map(|b| (b.account.clone(), b.day))
        .collect();
    days.sort();
    days.dedup();
    for (account, day) in &days {
        let exported = export_case(&mut store, &config, account, *day).unwrap();
        let text = serde_json::to_string(&exported).unwrap();
        let again = replay(&parse_case(text.as_bytes()).unwrap()).unwrap();
        let pick = |lines: &[BillLine]| -> Vec<BillLine> {
            lines
                .iter()
                .filter(|l| &l.account == account && l.day == *day)
                .cloned()
                .collect()
        };
        assert_eq!(pick(&again.bills), pick(&original.bills), "{account} {day}");
        assert!(
            again.rejected.is_empty(),
            "stored samples replay without rejections: {:?}",
            again.rejected
        );
    }
    days.len()
}

#[test]
fn a_service_with_another_default_cap_exports_a_case_that_replays() {
    let text = r#"{"name": "cap", "accounts": [{"id": "acme"}],
        "samples": [{"account": "acme", "cluster": "c", "node": "n1", "cores": 900,
                     "at": "2026-11-24T10:00:00+08:00"}],
        "runs": ["2026-11-25T02:00:00+08:00"]}"#;
    let case = parse_case(text.as_bytes()).unwrap();
    let mut config = config_from(&case.settings).unwrap();
    config.rules.default_cap_cores = 1000;
    let runs = vec!["2026-11-25T02:00:00+08:00".parse().unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        support::open_store(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
    let original = replay_into(&case, &config, &runs, &mut store).unwrap();
    let day = "2026-11-24".parse().unwrap();
    let exported = export_case(&mut store, &config, "acme", day).unwrap();
    let text = serde_json::to_string(&exported).unwrap();
    let again = replay(&parse_case(text.as_bytes()).unwrap())
        .expect("the export of a service whose default cap is 1,000 replays");
    assert_eq!(again.bills, original.bills);
}

#[test]
fn every_billed_day_of_every_conformance_case_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let mut days = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") || name.ends_with(".expected.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(case) = parse_case(text.as_bytes()) else {
            continue;
        };
        if config_from(&case.settings).is_err() || replay(&case).is_err() {
            continue; // the error cases
        }
        days += round_trip(&text);
    }
    assert!(days >= 25, "only {days} billed days");
}

#[test]
fn a_randomized_fleet_with_late_samples_and_adjustments_round_trips() {
    let mut rng = fastrand::Rng::with_seed(7);
    let start: DateTime<Utc> = "2026-11-20T16:00:00Z".parse().unwrap(); // 2026-11-21 00:00 in Shanghai
    let mut samples = Vec::new();
    for node in 0..40 {
        let cores = [2, 4, 8, 16, 32][rng.usize(0..5)];
        let minute = rng.i64(0..60);
        for hour in 0..96 {
            if rng.u8(0..10) == 0 {
                continue; // a gap, bridged or not
            }
            let at = start + TimeDelta::hours(hour) + TimeDelta::minutes(minute);
            // One in eight arrives a day and a half late, after its day was billed.
            let late = if rng.u8(0..8) == 0 {
                TimeDelta::hours(36)
            } else {
                TimeDelta::seconds(rng.i64(0..30))
            };
            let c = if hour % 24 > 12 && node % 3 == 0 {
                cores * 2
            } else {
                cores
            };
            samples.push(format!(
                r#"{{"account":"acct-{}","cluster":"c{}","node":"n{node}","cores":{c},"at":"{}","received":"{}"}}"#,
                node % 2,
                node % 3,
                at.to_rfc3339(),
                (at + late).to_rfc3339()
            ));
        }
    }
    let runs: Vec<String> = (1..=6)
        .map(|d| {
            format!(
                "\"{}\"",
                (start + TimeDelta::hours(24 * d + 2)).to_rfc3339()
            )
        })
        .collect();
    let case = format!(
        r#"{{"settings":{{"billable_core_rounding":"half_up"}},
            "accounts":[{{"id":"acct-0","licenses":[{{"cores":60,"start":"2026-11-01T00:00:00Z","end":"2026-11-23T05:00:00Z"}}]}},
                        {{"id":"acct-1","caps":[{{"cores":600,"from":"2026-11-22T10:00:00Z"}}]}}],
            "samples":[{}],"runs":[{}]}}"#,
        samples.join(","),
        runs.join(",")
    );
    let days = round_trip(&case);
    assert_eq!(days, 8, "4 days of 2 accounts");
    let out = replay(&parse_case(case.as_bytes()).unwrap()).unwrap();
    assert!(
        out.bills
            .iter()
            .any(|b| b.kind == shared::bill::LineKind::Adjustment),
        "late samples made adjustments"
    );
}
