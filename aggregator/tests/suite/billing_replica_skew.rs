//! A replica whose clock runs a second behind must not make another replica's
//! billed day forget a late sample: the run at the earlier instant does not
//! bill that day, so it must leave the day's recompute mark in place.

use crate::support;

use std::time::{Duration, Instant};

use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::store::{Durability, Incoming, Store};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::sample::AgeLimits;

fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap()
        .with_timezone(&Utc)
}

fn push(
    store: &mut Store,
    account: &str,
    node: &str,
    cores: u32,
    ats: &[DateTime<Utc>],
    received: DateTime<Utc>,
) {
    let batch: Vec<Incoming<'_>> = ats
        .iter()
        .map(|&at| Incoming {
            account,
            cluster: "prod",
            node,
            cores: Some(cores),
            at: Some(at),
            seq: None,
            agent_version: None,
            received_at: received,
        })
        .collect();
    store
        .ingest()
        .insert(&batch, &AgeLimits::default())
        .unwrap();
}

fn sum(store: &mut Store, account: &str, day: &str) -> Decimal {
    store
        .reads()
        .bill_lines(Some(account), Some(day.parse().unwrap()))
        .unwrap()
        .iter()
        .map(|l| l.amount)
        .sum()
}

#[test]
fn a_stale_replica_run_loses_a_late_sample() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core-meter.sqlite");
    let mut main = support::open_store(&path, Durability::Durable).unwrap();
    let config = BillingConfig::default();
    // "a-000" is billed first; 200 more accounts keep replica A busy afterwards.
    let accounts: Vec<String> = (0..=200).map(|k| format!("a-{k:03}")).collect();
    let day: Vec<DateTime<Utc>> = (0..24)
        .map(|h| local(&format!("2026-11-24T{h:02}:07:00")))
        .collect();
    for a in &accounts {
        main.accounts()
            .create_account(a, local("2026-11-01T00:00:00"))
            .unwrap();
        // 24 cores all day: 6.00.
        push(
            &mut main,
            a,
            "node-0",
            24,
            &day,
            local("2026-11-24T23:30:00"),
        );
    }
    // A run the night before: nothing is due yet, every mark is cleared, last run = 2026-11-24T02:00.
    assert!(
        run_billing(&mut main, local("2026-11-24T02:00:00"), &config)
            .unwrap()
            .is_empty()
    );

    let r_a = local("2026-11-25T02:00:00"); // replica A's clock
    let r_b = r_a - TimeDelta::seconds(1); // replica B's clock, a second behind
    let mut replica_a = support::open_store(&path, Durability::Durable).unwrap();
    let mut replica_b = support::open_store(&path, Durability::Durable).unwrap();
    std::thread::scope(|s| {
        let a = s.spawn(|| run_billing(&mut replica_a, r_a, &config).unwrap());
        // Wait until A has billed a-000's 24th (it goes on with the other accounts).
        let t0 = Instant::now();
        while main
            .reads()
            .bill_lines(Some("a-000"), None)
            .unwrap()
            .is_empty()
        {
            assert!(t0.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_micros(200));
        }
        // A late hour of another node on the 24th is stored (24 core-hours: the day becomes 6.25) ...
        push(
            &mut main,
            "a-000",
            "late",
            24,
            &[local("2026-11-24T12:07:00")],
            local("2026-11-25T01:59:00"),
        );
        // ... and replica B starts its run while A is still busy.
        let b = run_billing(&mut replica_b, r_b, &config).unwrap();
        let a = a.join().unwrap();
        eprintln!("A issued {} lines, B issued {:?}", a.len(), b);
    });
    assert_eq!(main.billing().last_billing_run().unwrap(), Some(r_a));
    let account = main.accounts().account("a-000").unwrap().unwrap();
    eprintln!(
        "a-000 recompute_from after both runs: {:?}",
        account.recompute_from
    );

    // Any later run: the 24th should now add up to 6.25.
    for at in [
        "2026-11-25T02:00:00",
        "2026-11-26T02:00:00",
        "2026-12-01T02:00:00",
    ] {
        run_billing(&mut main, local(at), &config).unwrap();
    }
    assert_eq!(
        sum(&mut main, "a-000", "2026-11-24").to_string(),
        "6.25",
        "{:?}",
        main.reads().bill_lines(Some("a-000"), None).unwrap()
    );
}
