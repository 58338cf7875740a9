//! Every worked example in `tests/conformance/` replays to its expected result.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .collect();
    cases.sort();
    cases
}

fn expected_for(case: &Path) -> Value {
    let path = case.with_extension("expected.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

#[test]
fn every_conformance_case_replays_to_its_expected_result() {
    let cases = cases();
    assert!(
        cases.len() >= 22,
        "expected the conformance cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let expected = expected_for(case);
        let outcome = aggregator::commands::replay::replay_file(case);
        match (expected.get("error"), outcome) {
            // The message must name the same problem the expected file does.
            (Some(want), Err(e)) => {
                let want = want.as_str().unwrap_or("").to_lowercase();
                let got = format!("{e:#}").to_lowercase();
                if !got.contains(&want) {
                    failures.push(format!(
                        "{name}: expected an error naming {want:?}, got {got:?}"
                    ));
                }
            }
            (Some(want), Ok(_)) => {
                failures.push(format!("{name}: expected an error ({want}), got bills"))
            }
            (None, Err(e)) => failures.push(format!("{name}: {e:#}")),
            (None, Ok(output)) => {
                let actual = serde_json::to_value(&output).expect("output serialises");
                for problem in e2e::expect::differences(&expected, &actual) {
                    failures.push(format!("{name}: {problem}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_comparison_notices_a_wrong_amount_and_a_missing_rejection() {
    // The walk above is only as good as its comparison: it must see a difference.
    let expected: Value = serde_json::json!({
        "bills": [{"account": "a", "day": "2026-11-24", "kind": "daily", "hours": 24,
                   "excess_core_hours": 24, "average_excess_cores": "1.00", "cap_cores": 500,
                   "billable_cores": "1.00", "amount": "0.25", "issued_at": "2026-11-24T18:00:00Z"}],
        "rejected": [{"index": 3, "reason": "too_old"}]
    });
    let mut wrong = expected.clone();
    wrong["bills"][0]["amount"] = "0.26".into();
    wrong["rejected"] = serde_json::json!([]);
    assert_eq!(
        e2e::expect::differences(&expected, &expected),
        Vec::<String>::new()
    );
    let mut same_value = expected.clone();
    same_value["bills"][0]["amount"] = "0.250".into();
    same_value["bills"][0]["issued_at"] = "2026-11-25T02:00:00+08:00".into();
    assert_eq!(
        e2e::expect::differences(&expected, &same_value),
        Vec::<String>::new()
    );
    assert_eq!(
        e2e::expect::differences(&expected, &wrong).len(),
        3,
        "missing, unexpected, rejected"
    );
}
