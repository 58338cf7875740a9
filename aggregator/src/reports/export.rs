//! `aggregator export`: one account's day as a replay case (SPEC section 7), so anyone can re-run the bill offline with `aggregator replay`.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::overage::{CoreRounding, CAP_MIN_CORES};

use crate::config::BillingConfig;
use crate::store::{Store, StoreError};

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The inputs of `account`'s bill for `day`: the settings, the account's
/// licences (as the periods they count) and cap history, every stored sample
/// the day's figures read (the day plus the hours gap bridging reaches on
/// both sides, each with its `received_at`), and the instants of the runs
/// that issued the day's lines. A day whose samples retention pruned is
/// [`StoreError::SamplesPruned`].
pub fn export_case(
    store: &mut Store,
    config: &BillingConfig,
    account: &str,
    day: NaiveDate,
) -> Result<Value, StoreError> {
    let acct = store
        .accounts()
        .account(account)?
        .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))?;
    // A case without the pruned (or deleted) samples would replay to a different bill.
    store
        .billing()
        .require_kept(&config.zone, day, config.rules.reach_hours())?;
    store
        .accounts()
        .require_not_deleted(account, &config.zone, day)?;
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()) + 1);
    let from = config.zone.day_start(day) - reach;
    let to = config.zone.day_end(day) + reach;
    let samples: Vec<Value> = store
        .reads()
        .audit_samples(account, from, to)?
        .into_iter()
        .map(|s| {
            json!({"account": account, "cluster": s.cluster, "node": s.node, "cores": s.cores,
                   "at": rfc(s.at), "received": rfc(s.received_at)})
        })
        .collect();
    let licences: Vec<Value> = store
        .accounts()
        .licences(&acct)?
        .into_iter()
        .map(|l| json!({"cores": l.cores, "start": rfc(l.start), "end": rfc(l.end)}))
        .collect();
    let mut caps: Vec<Value> = Vec::new();
    if config.rules.default_cap_cores != CAP_MIN_CORES {
        // A case's default cap is SPEC's; a service configured otherwise says so as a cap from the start.
        caps.push(json!({"cores": config.rules.default_cap_cores, "from": rfc(shared::domain::first_instant())}));
    }
    caps.extend(
        store
            .accounts()
            .caps(&acct)?
            .into_iter()
            .map(|c| json!({"cores": c.cores, "from": rfc(c.from)})),
    );
    let mut runs: Vec<DateTime<Utc>> = store
        .reads()
        .bill_lines(Some(account), Some(day))?
        .iter()
        .map(|l| l.issued_at)
        .collect();
    runs.dedup();
    let rounding = match config.rules.rounding {
        CoreRounding::Ceil => "ceil",
        CoreRounding::HalfUp => "half_up",
        CoreRounding::None => "none",
    };
    let mut case_account = json!({"id": account, "licenses": licences, "caps": caps});
    if let Some(t) = store.billing().trial(account)? {
        case_account["trial"] = json!({"start": rfc(t.start), "end": rfc(t.end)});
    }
    let stops = store.billing().stopped_periods(account)?;
    if !stops.is_empty() {
        case_account["stopped"] = stops
            .into_iter()
            .map(|(from, to)| match to {
                Some(to) => json!({"from": rfc(from), "to": rfc(to)}),
                None => json!({"from": rfc(from)}),
            })
            .collect();
    }
    Ok(json!({
        "name": format!("{account}-{day}"),
        "description": format!("The inputs of the bill of account {account} for {day}, exported by core-meter."),
        "settings": {
            "timezone": config.zone.name(),
            "price_per_core_day": config.rules.price_per_core_day.to_string(),
            "billable_core_rounding": rounding,
            "gap_bridge_hours": config.rules.gap_bridge_hours,
            "max_sample_age_hours": config.limits.max_age.num_hours(),
            "max_future_minutes": config.limits.max_future.num_minutes(),
            "currency": config.currency,
        },
        "accounts": [case_account],
        "samples": samples,
        "runs": runs.into_iter().map(rfc).collect::<Vec<_>>(),
    }))
}
