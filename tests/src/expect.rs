//! Compares replay output with a conformance case's expected result by value: bills as a multiset, decimals as numbers, instants as moments.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

/// The fields every bill must carry and match on.
const FIELDS: [&str; 10] = [
    "account",
    "day",
    "kind",
    "hours",
    "excess_core_hours",
    "average_excess_cores",
    "cap_cores",
    "billable_cores",
    "amount",
    "issued_at",
];

/// A bill's fields reduced to comparable values.
fn normalise(bill: &Value) -> Result<Vec<String>, String> {
    FIELDS
        .iter()
        .map(|f| {
            let v = bill
                .get(*f)
                .ok_or_else(|| format!("bill lacks {f}: {bill}"))?;
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            Ok(match *f {
                "average_excess_cores" | "billable_cores" | "amount" => Decimal::from_str(&text)
                    .map_err(|e| format!("{f} {text:?}: {e}"))?
                    .normalize()
                    .to_string(),
                "issued_at" => DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| format!("{f} {text:?}: {e}"))?
                    .with_timezone(&Utc)
                    .to_rfc3339(),
                _ => text,
            })
        })
        .collect()
}

/// The differences between the expected and the actual output; empty when they agree.
pub fn differences(expected: &Value, actual: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let bills = |v: &Value| -> Result<Vec<Vec<String>>, String> {
        let mut out = v["bills"]
            .as_array()
            .ok_or("no bills array")?
            .iter()
            .map(normalise)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    };
    match (bills(expected), bills(actual)) {
        (Ok(mut want), Ok(got)) => {
            let mut extra = Vec::new();
            for b in got {
                match want.iter().position(|w| *w == b) {
                    Some(i) => {
                        want.remove(i);
                    }
                    None => extra.push(b),
                }
            }
            problems.extend(want.iter().map(|b| format!("missing bill {b:?}")));
            problems.extend(extra.iter().map(|b| format!("unexpected bill {b:?}")));
        }
        (Err(e), _) => problems.push(format!("expected output: {e}")),
        (_, Err(e)) => problems.push(format!("actual output: {e}")),
    }
    let rejected = |v: &Value| -> Vec<(u64, String)> {
        let mut r: Vec<_> = v["rejected"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["index"].as_u64().unwrap_or(u64::MAX),
                            r["reason"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    let (want, got) = (rejected(expected), rejected(actual));
    if want != got {
        problems.push(format!(
            "rejected samples differ: expected {want:?}, got {got:?}"
        ));
    }
    problems
}
