//! Retention (issue 8 item 4) against a real SQLite file: pruning removes exactly the rows before the cutoff, in bounded transactions; bills never change; reports, exports and replays inside the horizon are unchanged and outside it are refused by name.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use aggregator::app::{Application, Timing};
use aggregator::billing::run_billing;
use aggregator::commands::replay::{parse_case, replay};
use aggregator::config::BillingConfig;
use aggregator::reports::daily_report;
use aggregator::reports::export::export_case;
use aggregator::store::{Durability, Horizon, Incoming, Outcome, Store, StoreError};
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::bill::{BillLine, LineKind};
use shared::clock::ManualClock;
use shared::sample::{AgeLimits, Rejection};
use support::{eventually_async, local, TestApp, ADMIN};

/// The shortest retention the defaults allow (14 days of late samples, 4 h of reach).
const RETENTION_DAYS: u32 = 16;

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn plus_days(day: NaiveDate, n: u64) -> NaiveDate {
    day.checked_add_days(Days::new(n)).unwrap()
}

/// One stored sample's inputs.
#[derive(Debug, Clone)]
struct S {
    node: String,
    cores: Option<u32>,
    at: DateTime<Utc>,
    received_at: DateTime<Utc>,
}

fn s(node: &str, cores: u32, at: DateTime<Utc>) -> S {
    S {
        node: node.to_string(),
        cores: Some(cores),
        at,
        received_at: at + TimeDelta::minutes(1),
    }
}

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    support::open_store(&dir.path().join(name), Durability::Durable).unwrap()
}

fn ingest(store: &mut Store, samples: &[S]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for chunk in samples.chunks(1000) {
        let batch: Vec<Incoming<'_>> = chunk
            .iter()
            .map(|x| Incoming {
                account: "acme",
                cluster: "prod",
                node: &x.node,
                cores: x.cores,
                at: Some(x.at),
                seq: None,
                agent_version: Some("test"),
                received_at: x.received_at,
            })
            .collect();
        outcomes.extend(
            store
                .ingest()
                .insert(&batch, &AgeLimits::default())
                .unwrap(),
        );
    }
    outcomes
}

/// Hourly samples of one node, seven minutes into each local hour of `days` days from `first`.
fn hourly(node: &str, cores: u32, first: &str, days: u64) -> Vec<S> {
    let start = local(&format!("{first}T00:07:00"));
    (0..days * 24)
        .map(|h| s(node, cores, start + TimeDelta::hours(h as i64)))
        .collect()
}

fn every_sample(store: &mut Store) -> Vec<DateTime<Utc>> {
    let far = |y| DateTime::parse_from_rfc3339(y).unwrap().with_timezone(&Utc);
    store
        .reads()
        .audit_samples(
            "acme",
            far("2000-01-01T00:00:00Z"),
            far("2100-01-01T00:00:00Z"),
        )
        .unwrap()
        .into_iter()
        .map(|a| a.at)
        .collect()
}

fn rejections(store: &mut Store) -> u64 {
    let far = |y| DateTime::parse_from_rfc3339(y).unwrap().with_timezone(&Utc);
    store
        .reads()
        .rejections(
            "acme",
            far("2000-01-01T00:00:00Z"),
            far("2100-01-01T00:00:00Z"),
        )
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

fn horizon_at(config: &BillingConfig, now: DateTime<Utc>) -> Horizon {
    Horizon::at(
        &config.zone,
        now,
        RETENTION_DAYS,
        config.rules.reach_hours(),
    )
}

/// The service's order: a billing run consumes the recompute marks, then retention prunes.
fn bill_then_prune(store: &mut Store, config: &BillingConfig, now: DateTime<Utc>) -> u64 {
    run_billing(store, now, config).unwrap();
    prune(store, config, now, 10_000)
}

fn prune(store: &mut Store, config: &BillingConfig, now: DateTime<Utc>, batch: usize) -> u64 {
    let horizon = horizon_at(config, now);
    store
        .billing()
        .prune(&horizon, &config.zone, config.rules.reach_hours(), batch)
        .unwrap()
        .rows()
}

/// Forty days of one 300-core node from 2026-01-01, in a fresh database.
fn forty_days_of_one_node(dir: &tempfile::TempDir) -> Store {
    let mut store = open(dir, "db.sqlite");
    store
        .accounts()
        .create_account("acme", local("2025-12-01T00:00:00"))
        .unwrap();
    ingest(&mut store, &hourly("n1", 300, "2026-01-01", 40));
    store
}

/// A 100-core licence from 2026-01-05, recorded on 2026-02-10 at 03:00.
fn backdate_a_licence(store: &mut Store) {
    let licence = shared::overage::Licence::new(
        100,
        local("2026-01-05T00:00:00"),
        local("2026-03-01T00:00:00"),
    )
    .unwrap();
    store
        .accounts()
        .add_licence("acme", &licence, local("2026-02-10T03:00:00"))
        .unwrap();
}

#[test]
fn the_horizon_is_a_day_boundary_and_the_cutoff_keeps_what_that_day_reads() {
    let config = BillingConfig::default();
    let h = horizon_at(&config, local("2026-02-10T02:00:05"));
    assert_eq!(h.first_kept_day, date("2026-01-25"));
    // Gap bridging reaches 4 hours back, plus the bucket holding the margin's start.
    assert_eq!(h.prune_before, local("2026-01-24T19:00:00"));
}

#[test]
fn pruning_deletes_exactly_the_samples_and_rejections_before_the_cutoff_and_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "db.sqlite");
    let config = BillingConfig::default();
    store
        .accounts()
        .create_account("acme", local("2025-12-01T00:00:00"))
        .unwrap();
    let mut samples = hourly("n1", 8, "2026-01-01", 41);
    samples.extend(hourly("n2", 4, "2026-01-20", 10));
    // A refused sample (cores 0) every six hours: the report's rejection counts.
    let refused: Vec<S> = hourly("n3", 1, "2026-01-01", 41)
        .into_iter()
        .step_by(6)
        .map(|mut x| {
            x.cores = None;
            x
        })
        .collect();
    ingest(&mut store, &samples);
    let outcomes = ingest(&mut store, &refused);
    assert!(outcomes
        .iter()
        .all(|o| *o == Outcome::Rejected(Rejection::InvalidCores)));
    let now = local("2026-02-10T02:00:05");
    let cutoff = horizon_at(&config, now).prune_before;
    let kept: Vec<DateTime<Utc>> = {
        let mut k: Vec<_> = samples
            .iter()
            .map(|x| x.at)
            .filter(|at| *at >= cutoff)
            .collect();
        k.sort();
        k
    };
    let kept_rejections = refused.iter().filter(|x| x.at >= cutoff).count() as u64;
    assert!(kept.len() < samples.len() && !kept.is_empty());

    let pruned = bill_then_prune(&mut store, &config, now);

    let mut left = every_sample(&mut store);
    left.sort();
    assert_eq!(left.len(), kept.len());
    assert!(left == kept, "every sample from the cutoff on, none before");
    assert_eq!(rejections(&mut store), kept_rejections);
    assert_eq!(
        pruned,
        (samples.len() - kept.len()) as u64 + refused.len() as u64 - kept_rejections
    );
    // A second pruning at the same instant finds nothing.
    assert_eq!(prune(&mut store, &config, now, 10_000), 0);
}

/// PostgreSQL's months of samples (`sample_days_YYYYMM`), by name.
fn months_filed(dir: &tempfile::TempDir) -> Vec<String> {
    let aggregator::config::Database::Postgres(url) =
        support::database(&dir.path().join("db.sqlite"))
    else {
        return Vec::new();
    };
    support::off_runtime(|| {
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap()
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'sample_days'::regclass ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

/// A sample a year ahead of the rest gets its month made on the way in;
/// pruning drops the months wholly before the cutoff, cuts the cutoff's
/// own day at the instant, and keeps the year ahead: on SQLite, row by
/// row, exactly the same samples are left.
#[test]
fn a_month_ahead_is_made_on_the_way_in_and_pruning_drops_the_months_before_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = forty_days_of_one_node(&dir);
    let config = BillingConfig::default();
    let ahead = local("2027-03-15T09:30:00");
    assert_eq!(
        ingest(&mut store, &[s("n2", 16, ahead)]),
        vec![Outcome::Accepted]
    );
    if support::postgres_server().is_some() {
        // 2026-01-01 local starts on 2025-12-31 at 16:00 UTC.
        assert_eq!(
            months_filed(&dir),
            [
                "sample_days_202512",
                "sample_days_202601",
                "sample_days_202602",
                "sample_days_202703"
            ]
        );
    }
    let now = local("2026-02-10T02:00:05");
    let cutoff = horizon_at(&config, now).prune_before;
    let mut kept: Vec<DateTime<Utc>> = hourly("n1", 300, "2026-01-01", 40)
        .into_iter()
        .map(|x| x.at)
        .filter(|at| *at >= cutoff)
        .chain([ahead])
        .collect();
    kept.sort();
    let pruned = bill_then_prune(&mut store, &config, now);
    assert_eq!(pruned, 40 * 24 + 1 - kept.len() as u64);
    let mut left = every_sample(&mut store);
    left.sort();
    assert!(left == kept, "every sample from the cutoff on, none before");
    if support::postgres_server().is_some() {
        assert_eq!(
            months_filed(&dir),
            [
                "sample_days_202601",
                "sample_days_202602",
                "sample_days_202703"
            ]
        );
    }
    assert_eq!(prune(&mut store, &config, now, 10_000), 0);
}

#[test]
fn pruning_25000_rows_with_batches_of_10000_takes_three_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "db.sqlite");
    let config = BillingConfig::default();
    store
        .accounts()
        .create_account("acme", local("2025-01-01T00:00:00"))
        .unwrap();
    // 25 nodes x 1,000 hours, all long before the cutoff.
    let samples: Vec<S> = (0..25)
        .flat_map(|n| {
            hourly(&format!("n{n}"), 2, "2025-01-01", 42)
                .into_iter()
                .take(1000)
        })
        .collect();
    assert_eq!(samples.len(), 25_000);
    ingest(&mut store, &samples);
    let now = local("2026-01-01T02:00:05");
    run_billing(&mut store, now, &config).unwrap();
    let horizon = horizon_at(&config, now);
    let pruned = store
        .billing()
        .prune(&horizon, &config.zone, config.rules.reach_hours(), 10_000)
        .unwrap();
    if support::postgres_server().is_some() {
        // PostgreSQL drops the two months past whole, in one transaction.
        assert_eq!((pruned.samples, pruned.transactions), (25_000, 1));
    } else {
        assert_eq!((pruned.samples, pruned.transactions), (25_000, 3));
    }
    assert!(every_sample(&mut store).is_empty());
}

#[test]
fn each_pruning_transaction_deletes_at_most_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "db.sqlite");
    let config = BillingConfig::default();
    store
        .accounts()
        .create_account("acme", local("2025-01-01T00:00:00"))
        .unwrap();
    ingest(&mut store, &hourly("n1", 2, "2025-01-01", 10));
    run_billing(&mut store, local("2026-01-01T02:00:05"), &config).unwrap();
    let horizon = horizon_at(&config, local("2026-01-01T02:00:05"));
    let reach = config.rules.reach_hours();
    let targets = store
        .billing()
        .plan_pruning(&horizon, &config.zone, reach)
        .unwrap();
    assert_eq!(targets.len(), 1);
    // PostgreSQL deletes a node's day, a row, at a time: the first UTC day
    // holds 8 of the samples (from 16:07 UTC), the last 16, the others 24.
    let (batch, expected) = if support::postgres_server().is_some() {
        (4, vec![80, 96, 64])
    } else {
        (100, vec![100, 100, 40])
    };
    let mut sizes = Vec::new();
    loop {
        let pruned = store.billing().prune_batch(&targets[0], batch).unwrap();
        sizes.push(pruned.samples);
        if !pruned.full {
            break;
        }
    }
    assert_eq!(sizes, expected);
    assert!(every_sample(&mut store).is_empty());
}

/// Feeds two databases the same samples day by day and bills both at every
/// 02:00; one is pruned after each run with the shortest retention allowed.
/// Late samples (13 days late) and nodes bridged across midnight are in it.
#[test]
fn pruning_after_every_run_never_changes_a_bill() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let mut pruned_db = open(&dir, "pruned.sqlite");
    let mut control = open(&dir, "control.sqlite");
    let first = date("2026-01-01");
    for store in [&mut pruned_db, &mut control] {
        store
            .accounts()
            .create_account("acme", local("2025-12-01T00:00:00"))
            .unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(8);
    let mut late_total = 0;
    let mut pruned_rows = 0;
    for d in 0..70u64 {
        let day = plus_days(first, d);
        let mut today: Vec<S> = Vec::new();
        for h in 0..24 {
            let at = local(&format!("{day}T{h:02}:07:00"));
            today.push(s("big", 300, at));
            // A node that skips 23:00 and 00:00: bridged across every midnight.
            if h != 23 && h != 0 {
                today.push(s("bridged", 40 + (d % 3) as u32, at));
            }
        }
        // Now and then a sample 13 days late, which adjusts a billed day.
        if d >= 14 && rng.u8(0..3) == 0 {
            let at = local(&format!("{}T10:30:00", plus_days(first, d - 13)));
            today.push(S {
                received_at: local(&format!("{day}T12:00:00")),
                ..s("late", 64, at)
            });
            late_total += 1;
        }
        for store in [&mut pruned_db, &mut control] {
            let outcomes = ingest(store, &today);
            assert!(outcomes.iter().all(|o| *o == Outcome::Accepted), "{day}");
        }
        let run_at = config.zone.due_at(day) + TimeDelta::seconds(5);
        let a = run_billing(&mut pruned_db, run_at, &config).unwrap();
        let b = run_billing(&mut control, run_at, &config).unwrap();
        assert_eq!(a, b, "the run at {run_at}");
        pruned_rows += prune(&mut pruned_db, &config, run_at, 10_000);
    }
    assert!(late_total > 5 && pruned_rows > 1000);
    let lines = |s: &mut Store| s.reads().bill_lines(Some("acme"), None).unwrap();
    assert_eq!(lines(&mut pruned_db), lines(&mut control));
    assert!(lines(&mut control)
        .iter()
        .any(|l| l.kind == LineKind::Adjustment));
    // Much later, with every day long billed and most samples gone: nothing new.
    let later = local("2026-06-01T02:00:05");
    assert_eq!(run_billing(&mut pruned_db, later, &config).unwrap(), vec![]);
    prune(&mut pruned_db, &config, later, 10_000);
    let much_later = local("2026-09-01T02:00:05");
    assert_eq!(
        run_billing(&mut pruned_db, much_later, &config).unwrap(),
        vec![]
    );
    assert_eq!(lines(&mut pruned_db), lines(&mut control));
}

#[test]
fn an_account_marked_for_recompute_keeps_what_the_next_run_reads() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let mut store = forty_days_of_one_node(&dir);
    run_billing(&mut store, local("2026-02-10T02:00:05"), &config).unwrap();
    // A licence set back to 2026-01-05 after the run marks the account: the
    // next run recomputes from there, so nothing it reads may go.
    backdate_a_licence(&mut store);
    let before = every_sample(&mut store).len();
    prune(&mut store, &config, local("2026-02-10T03:00:05"), 10_000);
    let kept_from = config.zone.day_start(date("2026-01-04")) - TimeDelta::hours(5);
    let left = every_sample(&mut store);
    assert!(left.iter().all(|at| *at >= kept_from));
    assert!(left.len() < before && left.iter().any(|at| *at < kept_from + TimeDelta::hours(1)));
    let issued = run_billing(&mut store, local("2026-02-11T02:00:05"), &config).unwrap();
    let adjusted: Vec<NaiveDate> = issued
        .iter()
        .filter(|l| l.kind == LineKind::Adjustment)
        .map(|l| l.day)
        .collect();
    assert_eq!(adjusted.first(), Some(&date("2026-01-05")), "{adjusted:?}");
    assert!(
        issued
            .iter()
            .all(|l| l.amount.is_sign_negative() || l.kind == LineKind::Daily),
        "the licence lowers each adjusted day: {issued:?}"
    );
}

#[test]
fn reports_and_exports_inside_the_horizon_are_unchanged_and_outside_it_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let mut store = open(&dir, "db.sqlite");
    store
        .accounts()
        .create_account("acme", local("2025-12-01T00:00:00"))
        .unwrap();
    let mut samples = hourly("big", 700, "2026-01-01", 40);
    // A node bridged across the midnight that starts the first kept day.
    samples.extend(
        hourly("edge", 50, "2026-01-24", 2).into_iter().filter(|x| {
            x.at != local("2026-01-24T23:07:00") && x.at != local("2026-01-25T00:07:00")
        }),
    );
    ingest(&mut store, &samples);
    let now = local("2026-02-10T02:00:05");
    run_billing(&mut store, now, &config).unwrap();
    let first_kept = horizon_at(&config, now).first_kept_day;
    assert_eq!(first_kept, date("2026-01-25"));
    let inside = [first_kept, plus_days(first_kept, 1), date("2026-02-08")];
    let snapshot = |store: &mut Store| {
        inside
            .iter()
            .map(|d| {
                let r = daily_report(store, &config, "acme", *d, now).unwrap();
                let e = export_case(store, &config, "acme", *d).unwrap();
                (serde_json::to_value(&r).unwrap(), e)
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot(&mut store);
    // The first kept day really is bridged across its midnight.
    assert_eq!(before[0].0["hours"][0]["bridged"][0], "prod/edge");

    prune(&mut store, &config, now, 10_000);

    assert_eq!(snapshot(&mut store), before);
    // The export of a kept day still replays to the lines issued for it.
    for (i, day) in inside.iter().enumerate() {
        let text = serde_json::to_string(&before[i].1).unwrap();
        let again = replay(&parse_case(text.as_bytes()).unwrap()).unwrap();
        let of_day = |lines: &[BillLine]| -> Vec<BillLine> {
            lines.iter().filter(|l| l.day == *day).cloned().collect()
        };
        assert_eq!(
            of_day(&again.bills),
            of_day(&store.reads().bill_lines(Some("acme"), Some(*day)).unwrap())
        );
    }
    // Outside: refused, naming the day and the first day kept; the lines remain.
    let outside = first_kept.pred_opt().unwrap();
    for day in [outside, date("2026-01-02")] {
        let report = daily_report(&mut store, &config, "acme", day, now).unwrap_err();
        let export = export_case(&mut store, &config, "acme", day).unwrap_err();
        for err in [report, export] {
            assert!(
                matches!(err, StoreError::SamplesPruned { day: d, first_kept_day, .. }
                    if d == day && first_kept_day == first_kept),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&day.to_string()) && message.contains("2026-01-25"),
                "{message}"
            );
        }
        assert_eq!(
            store
                .reads()
                .bill_lines(Some("acme"), Some(day))
                .unwrap()
                .len(),
            1
        );
    }
}

#[test]
fn a_late_sample_for_a_pruned_day_is_refused_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let mut store = open(&dir, "db.sqlite");
    store
        .accounts()
        .create_account("acme", local("2025-12-01T00:00:00"))
        .unwrap();
    let now = local("2026-02-10T02:00:05");
    let horizon = horizon_at(&config, now);
    let late = S {
        received_at: now,
        ..s("n1", 8, horizon.prune_before - TimeDelta::minutes(1))
    };
    assert_eq!(
        ingest(&mut store, &[late]),
        vec![Outcome::Rejected(Rejection::TooOld)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_prunes_at_start_up_counts_it_and_answers_410_for_a_pruned_day() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let app = TestApp::spawn(db.clone(), None, local("2026-01-01T00:00:00")).await;
    let token = app.account_with_cluster("acme", "prod").await;
    for (i, day) in ["2026-01-01", "2026-01-02", "2026-01-03"]
        .iter()
        .enumerate()
    {
        app.clock.set(local(&format!("{day}T23:59:00")));
        app.push_day(&token, "n1", 8, day, 1 + 24 * i as u64).await;
    }
    app.stop().await;

    // Back a month later with the shortest retention: billed, then pruned.
    let mut config = support::config(db, None);
    config.retention_days = RETENTION_DAYS;
    let clock = Arc::new(ManualClock::new(local("2026-02-01T09:00:00")));
    let timing = Timing {
        billing_poll: Duration::from_secs(5),
        outbox_poll: Duration::from_secs(5),
        ..Timing::default()
    };
    let app = Application::build(config, clock, timing).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(ADMIN)
            .send()
    };
    eventually_async(Duration::from_secs(10), "72 samples pruned", || async {
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        text.contains("core_meter_retention_pruned_rows_total{table=\"samples\"} 72")
    })
    .await;
    let response = get("/v1/reports/daily?day=2026-01-02&account=acme")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 410);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "samples_pruned");
    assert_eq!(body["error"]["field"], "day");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2026-01-02") && message.contains("2026-01-16"),
        "{message}"
    );
    // The bills stay.
    let bills: serde_json::Value = get("/v1/admin/bills?account=acme")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bills["bills"].as_array().unwrap().len(), 3);
    let _ = stop.send(());
    task.await.unwrap();
}

#[test]
fn a_licence_set_back_after_pruning_never_recomputes_a_partly_pruned_day() {
    let dir = tempfile::tempdir().unwrap();
    let config = BillingConfig::default();
    let mut store = forty_days_of_one_node(&dir);
    let pruned_at = local("2026-02-10T02:00:05");
    bill_then_prune(&mut store, &config, pruned_at);
    let first_kept = horizon_at(&config, pruned_at).first_kept_day;
    // Pruning came first: a licence reaching back before the horizon can no
    // longer be applied to days whose samples are gone.
    backdate_a_licence(&mut store);
    let issued = run_billing(&mut store, local("2026-02-11T02:00:05"), &config).unwrap();
    let adjusted: Vec<NaiveDate> = issued
        .iter()
        .filter(|l| l.kind == LineKind::Adjustment)
        .map(|l| l.day)
        .collect();
    assert_eq!(
        adjusted.first(),
        Some(&first_kept),
        "adjustments start on the first kept day: {adjusted:?}"
    );
    assert!(
        issued.iter().all(|l| l.day >= first_kept),
        "no line for a day before {first_kept}: {issued:?}"
    );
}
