//! Ingest on several connections at once, as PostgreSQL's replicas run it:
//! their write transactions no longer wait for each other, so what keeps a
//! sample stored once is the store's unique keys and the order rows are
//! locked in. On SQLite the same tests run through its one writer.
//!
//! The oracles: every (node, seq) pushed is stored once whoever pushed it,
//! each push's outcome agrees with what is stored, and a billing run that
//! ran while samples were arriving issues, by its next run, what a single
//! run over the same samples issues.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};

use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::store::{Durability, Incoming, Outcome, Store};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::sample::{AgeLimits, Rejection};
use tempfile::TempDir;

/// A sample pushed by node `node` of account `acme`, cluster `prod`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Push {
    node: usize,
    seq: i64,
    cores: u32,
    at: DateTime<Utc>,
}

fn start() -> DateTime<Utc> {
    // 2026-11-20 00:05 in Shanghai, the billing zone.
    DateTime::parse_from_rfc3339("2026-11-20T00:05:00+08:00")
        .unwrap()
        .with_timezone(&Utc)
}

/// A store in a temporary directory with account `acme`, and the path to
/// open it again.
fn store_with_account() -> (TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core-meter.sqlite");
    let mut store = support::open_store(&path, Durability::Durable).unwrap();
    store
        .accounts()
        .create_account("acme", start() - TimeDelta::days(30))
        .unwrap();
    (dir, path, store)
}

fn names(nodes: usize) -> Vec<String> {
    (0..nodes).map(|n| format!("node-{n:03}")).collect()
}

fn ingest(
    store: &mut Store,
    names: &[String],
    pushes: &[Push],
    now: DateTime<Utc>,
) -> Vec<Outcome> {
    let batch: Vec<Incoming<'_>> = pushes
        .iter()
        .map(|p| Incoming {
            account: "acme",
            cluster: "prod",
            node: &names[p.node],
            cores: Some(p.cores),
            at: Some(p.at),
            seq: Some(p.seq),
            agent_version: Some("0.9.0"),
            received_at: now,
        })
        .collect();
    store
        .ingest()
        .insert(&batch, &AgeLimits::default())
        .expect("ingest commits")
}

/// A fixed shuffle (a linear congruential generator), so a failure replays.
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

#[test]
fn three_connections_pushing_the_same_samples_at_once_store_each_once() {
    let (_dir, path, mut first) = store_with_account();
    let nodes = 120;
    let names = names(nodes);
    let hours = 10;
    // Every node's hours, seq 1..=10. Connection 2 also pushes a resend of
    // every fifth sample with other cores: a conflicting resend whichever
    // arrives first, and the stored sample is the one accepted.
    let honest: Vec<Push> = (0..nodes)
        .flat_map(|node| {
            (0..hours).map(move |h| Push {
                node,
                seq: h + 1,
                cores: 4 + (node % 3) as u32,
                at: start() + TimeDelta::hours(h),
            })
        })
        .collect();
    let now = start() + TimeDelta::hours(hours + 1);
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..3u64)
        .map(|worker| {
            let mut pushes = shuffled(&honest, worker + 1);
            if worker == 2 {
                for p in pushes.iter_mut().step_by(5) {
                    p.cores += 1;
                }
            }
            let path = path.clone();
            let names = names.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut store = support::open_store(&path, Durability::Durable).unwrap();
                barrier.wait();
                let mut told = Vec::new();
                for chunk in pushes.chunks(37) {
                    let outcomes = ingest(&mut store, &names, chunk, now);
                    told.extend(chunk.iter().copied().zip(outcomes));
                }
                told
            })
        })
        .collect();
    let told: Vec<(Push, Outcome)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a worker panicked"))
        .collect();

    let stored: HashMap<(String, i64), (u32, DateTime<Utc>)> = first
        .reads()
        .audit_samples("acme", start() - TimeDelta::days(1), now)
        .unwrap()
        .into_iter()
        .map(|a| ((a.node, a.seq.expect("pushed with a seq")), (a.cores, a.at)))
        .collect();
    assert_eq!(stored.len(), honest.len(), "each (node, seq) stored once");
    let mut accepted: BTreeMap<(usize, i64), usize> = BTreeMap::new();
    let mut conflicting = 0;
    for (push, outcome) in &told {
        let (cores, at) = stored[&(names[push.node].clone(), push.seq)];
        let same = (cores, at) == (push.cores, push.at);
        match outcome {
            Outcome::Accepted => {
                assert!(same, "{push:?} accepted but {cores} cores at {at} stored");
                *accepted.entry((push.node, push.seq)).or_default() += 1;
            }
            Outcome::Duplicate => assert!(same, "{push:?} a duplicate of a different sample"),
            Outcome::Rejected(Rejection::ConflictingResend) => {
                assert!(
                    !same,
                    "{push:?} refused as conflicting but it is the stored one"
                );
                conflicting += 1;
            }
            other => panic!("{push:?}: {other:?}"),
        }
    }
    assert_eq!(
        accepted.len(),
        honest.len(),
        "every sample accepted by someone"
    );
    assert!(accepted.values().all(|&n| n == 1), "and by one push only");
    assert!(conflicting > 0, "the altered resends were told apart");
    let recorded: u64 = first
        .reads()
        .rejections("acme", start() - TimeDelta::days(1), now)
        .unwrap()
        .into_iter()
        .map(|(reason, n)| {
            assert_eq!(reason, "conflicting_resend");
            n
        })
        .sum();
    assert_eq!(
        recorded, conflicting,
        "each conflicting resend recorded once"
    );
}

/// The total issued per day: daily lines and adjustments.
fn issued(store: &mut Store) -> BTreeMap<String, Decimal> {
    let mut total = BTreeMap::new();
    for line in store.reads().bill_lines(None, None).unwrap() {
        *total.entry(line.day.to_string()).or_insert(Decimal::ZERO) += line.amount;
    }
    total
}

#[test]
fn billing_runs_beside_ingest_and_the_next_run_issues_what_one_run_over_all_samples_does() {
    let (_dir, path, mut biller) = store_with_account();
    let config = BillingConfig::default();
    // 600 nodes of 8 cores for a whole day: 4,800 cores, over the licence of
    // none and the cap of 500, so every late sample changes the amount.
    let nodes = 600;
    let names = names(nodes);
    let day: Vec<Push> = (0..nodes)
        .flat_map(|node| {
            (0..24).map(move |h| Push {
                node,
                seq: h + 1,
                cores: 8,
                at: start() + TimeDelta::hours(h),
            })
        })
        .collect();
    let due = start() + TimeDelta::hours(26);
    let pushes = shuffled(&day, 7);
    let barrier = Arc::new(Barrier::new(2));
    let pusher = {
        let (path, names, barrier) = (path.clone(), names.clone(), barrier.clone());
        std::thread::spawn(move || {
            let mut store = support::open_store(&path, Durability::Durable).unwrap();
            barrier.wait();
            for chunk in pushes.chunks(200) {
                let outcomes = ingest(&mut store, &names, chunk, due);
                assert!(outcomes.iter().all(|o| *o == Outcome::Accepted));
            }
        })
    };
    barrier.wait();
    let mut runs = 0;
    while !pusher.is_finished() {
        run_billing(&mut biller, due + TimeDelta::minutes(runs), &config).unwrap();
        runs += 1;
    }
    pusher.join().expect("the pusher panicked");
    run_billing(&mut biller, due + TimeDelta::minutes(runs + 1), &config).unwrap();
    assert!(runs >= 1, "billing ran while samples arrived");

    let (_other_dir, _, mut once) = store_with_account();
    for chunk in day.chunks(1000) {
        ingest(&mut once, &names, chunk, due);
    }
    run_billing(&mut once, due, &config).unwrap();
    let expected = issued(&mut once);
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert_eq!(issued(&mut biller), expected);
}
