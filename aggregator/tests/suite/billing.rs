//! Billing runs (SPEC section 6) against a real SQLite file: due times, catch-up, idempotency, adjustments and overlapping runs.
//!
//! Every expected figure is worked out by hand from SPEC section 5 with the
//! defaults: zone Asia/Shanghai (UTC+8), 0.25 USD per core-day, cap 500,
//! billable cores rounded up. Instants are written in local (Shanghai) time.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Barrier;

use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::store::{Durability, Incoming, Outcome, Store, StoreError};
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::bill::{BillLine, LineKind};
use shared::overage::{CapChange, Licence, RuleError};
use shared::sample::{AgeLimits, Rejection};
use tempfile::TempDir;

/// An instant given as Shanghai wall-clock time, `2026-11-24T02:00:00`.
fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap_or_else(|e| panic!("{wall}: {e}"))
        .with_timezone(&Utc)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The instant a day's bill falls due: 02:00 local on the next day.
fn due(day: &str) -> DateTime<Utc> {
    let next = date(day).checked_add_days(Days::new(1)).unwrap();
    local(&format!("{next}T02:00:00"))
}

/// A sample as an agent pushes it, with the identity its token gave it.
#[derive(Debug, Clone)]
struct Sample {
    account: String,
    cluster: String,
    node: String,
    cores: Option<u32>,
    at: Option<DateTime<Utc>>,
    seq: Option<i64>,
    received_at: DateTime<Utc>,
}

/// A sample of cluster `prod` received a minute after it was taken.
fn sample(account: &str, node: &str, cores: u32, at: DateTime<Utc>) -> Sample {
    Sample {
        account: account.to_string(),
        cluster: "prod".to_string(),
        node: node.to_string(),
        cores: Some(cores),
        at: Some(at),
        seq: None,
        received_at: at + TimeDelta::minutes(1),
    }
}

impl Sample {
    fn received(mut self, at: DateTime<Utc>) -> Sample {
        self.received_at = at;
        self
    }

    fn seq(mut self, seq: i64) -> Sample {
        self.seq = Some(seq);
        self
    }
}

/// One sample per local hour `hours` of `day`, seven minutes into the hour, received on time.
fn hourly(
    account: &str,
    node: &str,
    cores: u32,
    day: &str,
    hours: std::ops::Range<u32>,
) -> Vec<Sample> {
    hours
        .map(|h| sample(account, node, cores, local(&format!("{day}T{h:02}:07:00"))))
        .collect()
}

/// A whole local day of hourly samples.
fn all_day(account: &str, node: &str, cores: u32, day: &str) -> Vec<Sample> {
    hourly(account, node, cores, day, 0..24)
}

fn ingest(store: &mut Store, samples: &[Sample]) -> Vec<Outcome> {
    let batch: Vec<Incoming<'_>> = samples
        .iter()
        .map(|s| Incoming {
            account: &s.account,
            cluster: &s.cluster,
            node: &s.node,
            cores: s.cores,
            at: s.at,
            seq: s.seq,
            agent_version: Some("test"),
            received_at: s.received_at,
        })
        .collect();
    store
        .ingest()
        .insert(&batch, &AgeLimits::default())
        .expect("ingest commits")
}

/// An aggregator's database in a temporary directory, with the default billing configuration.
struct Meter {
    dir: TempDir,
    store: Store,
    config: BillingConfig,
}

impl Meter {
    fn new() -> Meter {
        let dir = tempfile::tempdir().unwrap();
        let store = support::open_store(&dir.path().join("core-meter.sqlite"), Durability::Durable)
            .expect("open store");
        Meter {
            dir,
            store,
            config: BillingConfig::default(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("core-meter.sqlite")
    }

    /// A second connection to the same file, as another replica would hold.
    fn another_connection(&self) -> Store {
        support::open_store(&self.path(), Durability::Durable).expect("open second store")
    }

    /// Closes the database and opens the same file again, as a restart does.
    fn restart(self) -> Meter {
        let Meter { dir, store, config } = self;
        drop(store);
        let store = support::open_store(&dir.path().join("core-meter.sqlite"), Durability::Durable)
            .expect("reopen store");
        Meter { dir, store, config }
    }

    fn account(&mut self, id: &str) {
        self.store
            .accounts()
            .create_account(id, local("2026-11-01T00:00:00"))
            .expect("create account");
    }

    fn push(&mut self, samples: &[Sample]) -> Vec<Outcome> {
        ingest(&mut self.store, samples)
    }

    fn bill(&mut self, now: DateTime<Utc>) -> Vec<BillLine> {
        run_billing(&mut self.store, now, &self.config).expect("billing run")
    }

    fn lines(&mut self, account: Option<&str>, day: Option<&str>) -> Vec<BillLine> {
        self.store
            .reads()
            .bill_lines(account, day.map(date))
            .expect("read bill lines")
    }

    /// How many samples of an account are stored with `at` in `[from, to)`.
    fn stored_samples(&mut self, account: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
        let account = self
            .store
            .accounts()
            .account(account)
            .unwrap()
            .expect("account");
        self.store
            .billing()
            .samples_between(&account, from, to)
            .unwrap()
            .len()
    }
}

/// A bill line reduced to what most assertions care about: account, day, seq, kind, amount.
fn brief(lines: &[BillLine]) -> Vec<(String, String, u32, LineKind, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l.account.clone(),
                l.day.to_string(),
                l.seq,
                l.kind,
                l.amount.to_string(),
            )
        })
        .collect()
}

fn daily(account: &str, day: &str, amount: &str) -> (String, String, u32, LineKind, String) {
    (
        account.to_string(),
        day.to_string(),
        1,
        LineKind::Daily,
        amount.to_string(),
    )
}

fn adjustment(
    account: &str,
    day: &str,
    seq: u32,
    amount: &str,
) -> (String, String, u32, LineKind, String) {
    (
        account.to_string(),
        day.to_string(),
        seq,
        LineKind::Adjustment,
        amount.to_string(),
    )
}

/// Checks every figure of a line that SPEC section 7 reports.
#[allow(clippy::too_many_arguments)]
fn assert_figures(
    line: &BillLine,
    hours: u32,
    excess_core_hours: u64,
    average_excess_cores: &str,
    cap_cores: u32,
    billable_cores: &str,
    amount: &str,
) {
    assert_eq!(line.hours, hours, "hours of {line:?}");
    assert_eq!(line.excess_core_hours, excess_core_hours, "S of {line:?}");
    assert_eq!(
        line.average_excess_cores.to_string(),
        average_excess_cores,
        "average of {line:?}"
    );
    assert_eq!(line.cap_cores, cap_cores, "cap of {line:?}");
    assert_eq!(
        line.billable_cores.to_string(),
        billable_cores,
        "billable cores of {line:?}"
    );
    assert_eq!(line.amount.to_string(), amount, "amount of {line:?}");
    assert_eq!(line.currency, "USD");
}

/// acme holds a 100-core licence for November and runs 300 cores all day on 2026-11-24:
/// 200 cores over in each of 24 hours, S = 4800, average 200, 200 x 0.25 = 50.00.
fn acme_with_a_day_of_overage() -> Meter {
    let mut m = Meter::new();
    m.account("acme");
    let licence = Licence::new(
        100,
        local("2026-11-01T00:00:00"),
        local("2026-12-01T00:00:00"),
    )
    .unwrap();
    m.store
        .accounts()
        .add_licence("acme", &licence, local("2026-11-01T00:00:00"))
        .unwrap();
    let mut samples = all_day("acme", "node-0", 200, "2026-11-24");
    samples.extend(all_day("acme", "node-1", 100, "2026-11-24"));
    assert!(m.push(&samples).iter().all(|o| *o == Outcome::Accepted));
    m
}

#[test]
fn a_day_is_billed_once_at_0200_the_next_day() {
    let mut m = acme_with_a_day_of_overage();

    assert_eq!(m.bill(local("2026-11-24T23:00:00")), vec![]);
    assert_eq!(m.bill(local("2026-11-25T01:59:59")), vec![]);
    assert!(m.lines(None, None).is_empty());

    let issued = m.bill(local("2026-11-25T02:00:00"));
    assert_eq!(brief(&issued), vec![daily("acme", "2026-11-24", "50.00")]);
    let line = &issued[0];
    assert_figures(line, 24, 4800, "200.00", 500, "200.00", "50.00");
    assert_eq!(line.issued_at, utc("2026-11-24T18:00:00Z"));
    assert_eq!(line.idempotency_key, "acme/2026-11-24/1");
    assert_eq!(m.lines(None, None), issued);

    // Later runs, that night and the next, leave the billed day alone.
    assert_eq!(m.bill(local("2026-11-25T14:00:00")), vec![]);
    assert_eq!(m.bill(local("2026-11-26T02:00:00")), vec![]);
    assert_eq!(m.lines(None, None), issued);
}

#[test]
fn a_second_run_at_the_same_instant_issues_nothing() {
    let mut m = acme_with_a_day_of_overage();
    let run = local("2026-11-25T02:00:00");

    let first = m.bill(run);
    assert_eq!(brief(&first), vec![daily("acme", "2026-11-24", "50.00")]);
    assert_eq!(m.bill(run), vec![]);
    assert_eq!(m.bill(run), vec![]);
    assert_eq!(m.lines(Some("acme"), Some("2026-11-24")), first);
}

#[test]
fn a_run_after_an_outage_bills_every_missed_day_once() {
    let mut m = Meter::new();
    m.account("acme");
    // 24 cores all day, no licence: S = 576, average 24, 24 x 0.25 = 6.00 a day.
    m.push(&all_day("acme", "node-0", 24, "2026-11-20"));
    assert_eq!(
        brief(&m.bill(due("2026-11-20"))),
        vec![daily("acme", "2026-11-20", "6.00")]
    );

    // The aggregator is down from 2026-11-21 until 10:00 on the 25th. The
    // agent spools its hourly samples and delivers them all when it comes back.
    let back = local("2026-11-25T10:00:00");
    let mut spooled = Vec::new();
    for day in ["2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"] {
        spooled.extend(all_day("acme", "node-0", 24, day));
    }
    spooled.extend(hourly("acme", "node-0", 24, "2026-11-25", 0..10));
    let spooled: Vec<_> = spooled.into_iter().map(|s| s.received(back)).collect();
    assert!(m.push(&spooled).iter().all(|o| *o == Outcome::Accepted));

    // The start-up run bills the four days that fell due while it was down, and
    // not the 25th, which is not due yet.
    let catch_up = m.bill(back);
    assert_eq!(
        brief(&catch_up),
        vec![
            daily("acme", "2026-11-21", "6.00"),
            daily("acme", "2026-11-22", "6.00"),
            daily("acme", "2026-11-23", "6.00"),
            daily("acme", "2026-11-24", "6.00"),
        ]
    );
    assert!(catch_up.iter().all(|l| l.issued_at == back));
    assert_eq!(m.bill(back), vec![]);

    // The 25th: ten hours of 24 cores, S = 240, average 10, 2.50.
    let next = m.bill(due("2026-11-25"));
    assert_eq!(brief(&next), vec![daily("acme", "2026-11-25", "2.50")]);
    assert_figures(&next[0], 24, 240, "10.00", 500, "10.00", "2.50");

    // Every day has exactly one line.
    let all = m.lines(Some("acme"), None);
    assert_eq!(all.len(), 6);
    let days: HashSet<_> = all.iter().map(|l| l.day).collect();
    assert_eq!(days.len(), 6);
}

#[test]
fn late_samples_issue_an_adjustment_with_the_difference() {
    let mut m = Meter::new();
    m.account("acme");
    // 100 cores all day: S = 2400, average 100, 25.00.
    m.push(&all_day("acme", "node-0", 100, "2026-11-24"));
    assert_eq!(
        brief(&m.bill(due("2026-11-24"))),
        vec![daily("acme", "2026-11-24", "25.00")]
    );

    // A second node's first twelve hours arrive a day and a half late:
    // S = 2400 + 12 x 50 = 3000, average 125, 31.25; 6.25 more than issued.
    let late: Vec<_> = hourly("acme", "node-1", 50, "2026-11-24", 0..12)
        .into_iter()
        .map(|s| s.received(local("2026-11-26T09:00:00")))
        .collect();
    m.push(&late);
    let run = due("2026-11-26");
    let issued = m.bill(run);
    assert_eq!(
        brief(&issued),
        vec![adjustment("acme", "2026-11-24", 2, "6.25")]
    );
    let line = &issued[0];
    // The other figures describe the day as now recomputed.
    assert_figures(line, 24, 3000, "125.00", 500, "125.00", "6.25");
    assert_eq!(line.idempotency_key, "acme/2026-11-24/2");
    assert_eq!(line.issued_at, run);
    assert_eq!(m.bill(run), vec![]);

    // One more late sample: S = 3010, average 125.42, rounded up to 126 cores,
    // 31.50; the difference is taken against the sum issued so far (31.25).
    m.push(&[sample("acme", "node-2", 10, local("2026-11-24T12:07:00"))
        .received(local("2026-11-27T08:00:00"))]);
    let issued = m.bill(due("2026-11-27"));
    assert_eq!(
        brief(&issued),
        vec![adjustment("acme", "2026-11-24", 3, "0.25")]
    );
    assert_figures(&issued[0], 24, 3010, "125.42", 500, "126.00", "0.25");
    assert_eq!(issued[0].idempotency_key, "acme/2026-11-24/3");

    let day = m.lines(Some("acme"), Some("2026-11-24"));
    let total: rust_decimal::Decimal = day.iter().map(|l| l.amount).sum();
    assert_eq!(total.to_string(), "31.50");
}

#[test]
fn an_unchanged_day_gets_no_adjustment() {
    let mut m = Meter::new();
    m.account("acme");
    // 10 cores for 23 hours: S = 230, average 9.58, rounded up to 10 cores, 2.50.
    m.push(&hourly("acme", "node-0", 10, "2026-11-24", 0..23));
    let first = m.bill(due("2026-11-24"));
    assert_eq!(brief(&first), vec![daily("acme", "2026-11-24", "2.50")]);
    assert_figures(&first[0], 24, 230, "9.58", 500, "10.00", "2.50");

    // The missing hour arrives late: S = 240, average 10, still 10 cores and
    // 2.50. A smaller value in an hour already counted changes nothing either.
    m.push(&[
        sample("acme", "node-0", 10, local("2026-11-24T23:07:00"))
            .received(local("2026-11-25T20:00:00")),
        sample("acme", "node-0", 4, local("2026-11-24T05:30:00"))
            .received(local("2026-11-25T20:00:00")),
    ]);
    assert_eq!(m.bill(due("2026-11-25")), vec![]);
    assert_eq!(m.lines(None, None), first);
}

#[test]
fn a_licence_added_after_billing_credits_the_days_it_covers() {
    let mut m = Meter::new();
    m.account("acme");
    for day in ["2026-11-22", "2026-11-23", "2026-11-24"] {
        m.push(&all_day("acme", "node-0", 100, day));
    }
    // No licence: 100 cores over all day, 25.00 a day.
    assert_eq!(
        brief(&m.bill(due("2026-11-24"))),
        vec![
            daily("acme", "2026-11-22", "25.00"),
            daily("acme", "2026-11-23", "25.00"),
            daily("acme", "2026-11-24", "25.00"),
        ]
    );

    // A 40-core licence for the 23rd and 24th is recorded afterwards. Those
    // days are now 60 cores over: S = 1440, average 60, 15.00; each differs
    // from the 25.00 issued, so each gets an adjustment of -10.00. The 22nd
    // (the licence starts at its end, midnight) is unchanged.
    let licence = Licence::new(
        40,
        local("2026-11-23T00:00:00"),
        local("2026-11-25T00:00:00"),
    )
    .unwrap();
    m.store
        .accounts()
        .add_licence("acme", &licence, local("2026-11-26T12:00:00"))
        .unwrap();
    let issued = m.bill(due("2026-11-26"));
    assert_eq!(
        brief(&issued),
        vec![
            adjustment("acme", "2026-11-23", 2, "-10.00"),
            adjustment("acme", "2026-11-24", 2, "-10.00"),
        ]
    );
    for line in &issued {
        assert_figures(line, 24, 1440, "60.00", 500, "60.00", "-10.00");
    }
    assert_eq!(m.bill(due("2026-11-26")), vec![]);

    let per_day: BTreeMap<String, String> = m
        .lines(Some("acme"), None)
        .iter()
        .fold(BTreeMap::new(), |mut sums, l| {
            *sums.entry(l.day.to_string()).or_default() += l.amount;
            sums
        })
        .into_iter()
        .map(|(d, sum): (String, rust_decimal::Decimal)| (d, sum.to_string()))
        .collect();
    assert_eq!(
        per_day,
        BTreeMap::from([
            ("2026-11-22".to_string(), "25.00".to_string()),
            ("2026-11-23".to_string(), "15.00".to_string()),
            ("2026-11-24".to_string(), "15.00".to_string()),
        ])
    );
}

#[test]
fn a_day_within_the_licence_gets_a_line_of_zero() {
    let mut m = Meter::new();
    m.account("acme");
    let licence = Licence::new(
        500,
        local("2026-11-01T00:00:00"),
        local("2026-12-01T00:00:00"),
    )
    .unwrap();
    m.store
        .accounts()
        .add_licence("acme", &licence, local("2026-11-01T00:00:00"))
        .unwrap();
    m.push(&all_day("acme", "node-0", 100, "2026-11-24"));

    let issued = m.bill(due("2026-11-24"));
    assert_eq!(brief(&issued), vec![daily("acme", "2026-11-24", "0.00")]);
    assert_figures(&issued[0], 24, 0, "0.00", 500, "0.00", "0.00");
}

/// Five accounts; day `r` of the test has account `k` at `10 + k + r` cores all
/// day (that many cores over, `(10 + k + r) x 0.25`), and from day 1 on, a
/// late node adds 24 core-hours (one core, 0.25) to the day before.
#[test]
fn overlapping_runs_from_two_connections_bill_each_day_exactly_once() {
    const ACCOUNTS: u32 = 5;
    const ROUNDS: u32 = 20;
    let mut m = Meter::new();
    let accounts: Vec<String> = (0..ACCOUNTS).map(|k| format!("tenant-{k}")).collect();
    for a in &accounts {
        m.account(a);
    }
    let mut other = m.another_connection();
    let config = m.config.clone();
    let first_day = date("2026-11-01");
    let day = |r: u32| {
        first_day
            .checked_add_days(Days::new(u64::from(r)))
            .unwrap()
            .to_string()
    };

    let mut from_runs: Vec<BillLine> = Vec::new();
    for r in 0..ROUNDS {
        let today = day(r);
        let run = due(&today);
        let mut samples = Vec::new();
        for (k, a) in (0..).zip(&accounts) {
            samples.extend(all_day(a, "node-0", 10 + k + r, &today));
            if r > 0 {
                samples.push(
                    sample(a, "late", 24, local(&format!("{}T12:07:00", day(r - 1))))
                        .received(run - TimeDelta::minutes(1)),
                );
            }
        }
        assert!(m.push(&samples).iter().all(|o| *o == Outcome::Accepted));

        // Both replicas run billing for the same instant at the same moment.
        let start = Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                start.wait();
                run_billing(&mut m.store, run, &config).expect("run on connection one")
            });
            let two = s.spawn(|| {
                start.wait();
                run_billing(&mut other, run, &config).expect("run on connection two")
            });
            (one.join().unwrap(), two.join().unwrap())
        });
        let mut round: Vec<_> = a.into_iter().chain(b).collect();
        round.sort_by(|x, y| (&x.account, x.day, x.seq).cmp(&(&y.account, y.day, y.seq)));

        let mut expected = Vec::new();
        for (k, a) in (0..).zip(&accounts) {
            if r > 0 {
                expected.push(adjustment(a, &day(r - 1), 2, "0.25"));
            }
            let cores = rust_decimal::Decimal::from(10 + k + r);
            let amount = (cores * rust_decimal::Decimal::new(25, 2)).round_dp(2);
            expected.push(daily(a, &today, &format!("{amount:.2}")));
        }
        assert_eq!(brief(&round), expected, "round {r}");
        from_runs.extend(round);
    }

    // The database agrees with what the runs returned: one daily line per
    // account and day, one adjustment for every day a late node reached, and
    // no idempotency key twice.
    let stored = m.lines(None, None);
    assert_eq!(stored.len(), from_runs.len());
    let keys: HashSet<_> = stored.iter().map(|l| l.idempotency_key.clone()).collect();
    assert_eq!(
        keys.len(),
        stored.len(),
        "an idempotency key was issued twice"
    );
    for a in &accounts {
        for r in 0..ROUNDS {
            let lines = m.lines(Some(a), Some(&day(r)));
            let dailies = lines.iter().filter(|l| l.kind == LineKind::Daily).count();
            let adjustments = lines
                .iter()
                .filter(|l| l.kind == LineKind::Adjustment)
                .count();
            assert_eq!(dailies, 1, "{a} {}", day(r));
            assert_eq!(
                adjustments,
                usize::from(r + 1 < ROUNDS),
                "{a} {}: {lines:?}",
                day(r)
            );
        }
    }
}

#[test]
fn a_sample_resent_with_the_same_seq_is_a_duplicate_or_a_conflicting_resend_and_changes_nothing() {
    let mut m = Meter::new();
    m.account("acme");
    let sent: Vec<_> = all_day("acme", "node-0", 100, "2026-11-24")
        .into_iter()
        .zip(1..)
        .map(|(s, seq)| s.seq(seq))
        .collect();
    assert_eq!(m.push(&sent), vec![Outcome::Accepted; 24]);

    // The agent resends seq 7 after a lost acknowledgement (a duplicate); a
    // broken resend carries other figures and is refused as a conflicting
    // resend. Either way the stored (node, seq) wins.
    let resend = sent[6].clone();
    let mut garbled = sent[6].clone();
    garbled.cores = Some(900);
    // The same seq on another node is another sample.
    let other_node = sample("acme", "node-1", 24, local("2026-11-24T06:07:00")).seq(7);
    assert_eq!(
        m.push(&[resend, garbled, other_node]),
        vec![
            Outcome::Duplicate,
            Outcome::Rejected(Rejection::ConflictingResend),
            Outcome::Accepted
        ]
    );
    assert_eq!(
        m.stored_samples(
            "acme",
            local("2026-11-24T00:00:00"),
            local("2026-11-25T00:00:00")
        ),
        25
    );

    // S = 2400 + 24 = 2424, average 101, 25.25; the 900-core resend is not counted.
    let issued = m.bill(due("2026-11-24"));
    assert_eq!(brief(&issued), vec![daily("acme", "2026-11-24", "25.25")]);
    assert_figures(&issued[0], 24, 2424, "101.00", 500, "101.00", "25.25");

    // The whole day sent again after billing is all duplicates, and no adjustment follows.
    let again: Vec<_> = sent
        .iter()
        .cloned()
        .map(|s| s.received(local("2026-11-25T09:00:00")))
        .collect();
    assert_eq!(m.push(&again), vec![Outcome::Duplicate; 24]);
    assert_eq!(m.bill(due("2026-11-25")), vec![]);
    assert_eq!(m.lines(None, None), issued);
}

#[test]
fn rejected_samples_are_not_stored_and_do_not_stop_the_batch() {
    let mut m = Meter::new();
    m.account("acme");
    let received = local("2026-11-24T12:00:30");
    let at = local("2026-11-24T11:07:00");
    let on = |s: Sample| s.received(received);

    let mut unknown_and_bad_cores = sample("nobody", "node-9", 1, at);
    unknown_and_bad_cores.cores = None;
    let mut bad_cores_and_no_node = sample("acme", "", 9_000, at);
    bad_cores_and_no_node.cores = None;
    let mut no_cluster = sample("acme", "node-9", 9_000, at);
    no_cluster.cluster = " ".to_string();
    let mut no_instant = sample("acme", "node-9", 9_000, at);
    no_instant.at = None;

    let batch = vec![
        on(sample("acme", "node-0", 100, at)),
        on(unknown_and_bad_cores),
        on(bad_cores_and_no_node),
        on(no_cluster),
        on(no_instant),
        on(sample(
            "acme",
            "node-9",
            9_000,
            received + TimeDelta::seconds(301),
        )),
        on(sample(
            "acme",
            "node-9",
            9_000,
            received - TimeDelta::hours(336) - TimeDelta::seconds(1),
        )),
        on(sample("acme", "node-1", 50, local("2026-11-24T11:08:00"))),
        // Exactly at the limits is still accepted.
        on(sample(
            "acme",
            "node-2",
            10,
            received + TimeDelta::minutes(5),
        )),
        on(sample(
            "acme",
            "node-3",
            10,
            received - TimeDelta::hours(336),
        )),
    ];
    assert_eq!(
        m.push(&batch),
        vec![
            Outcome::Accepted,
            Outcome::Rejected(Rejection::UnknownAccount),
            Outcome::Rejected(Rejection::InvalidCores),
            Outcome::Rejected(Rejection::MissingIdentity),
            Outcome::Rejected(Rejection::InvalidAt),
            Outcome::Rejected(Rejection::InFuture),
            Outcome::Rejected(Rejection::TooOld),
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Accepted,
        ]
    );
    assert_eq!(
        m.stored_samples(
            "acme",
            local("2026-11-01T00:00:00"),
            local("2026-12-01T00:00:00")
        ),
        4
    );

    // Only the accepted samples are billed. The 24th: 100 + 50 in the 11:00
    // hour and 10 in the 12:00 hour, S = 160, average 6.67, 7 cores, 1.75. The
    // 10th (the 14-day-old sample, at 12:00:30): S = 10, average 0.42, 1 core, 0.25.
    let issued = m.bill(due("2026-11-24"));
    assert_eq!(
        brief(&issued),
        vec![
            daily("acme", "2026-11-10", "0.25"),
            daily("acme", "2026-11-24", "1.75"),
        ]
    );
    assert_figures(&issued[0], 24, 10, "0.42", 500, "1.00", "0.25");
    assert_figures(&issued[1], 24, 160, "6.67", 500, "7.00", "1.75");
    assert!(m.lines(Some("nobody"), None).is_empty());
}

#[test]
fn bills_survive_reopening_the_database() {
    let mut m = Meter::new();
    m.account("acme");
    m.push(&all_day("acme", "node-0", 100, "2026-11-24"));
    let run = due("2026-11-24");
    let issued = m.bill(run);
    assert_eq!(brief(&issued), vec![daily("acme", "2026-11-24", "25.00")]);

    let mut m = m.restart();

    assert_eq!(m.lines(None, None), issued);
    assert_eq!(m.store.billing().last_billing_run().unwrap(), Some(run));
    assert_eq!(
        m.stored_samples(
            "acme",
            local("2026-11-24T00:00:00"),
            local("2026-11-25T00:00:00")
        ),
        24
    );
    // The reopened service neither bills the day again nor forgets it: a run
    // at the same instant is idle, and a late node is priced against the
    // samples stored before the restart (S = 2400 + 600 = 3000, 31.25).
    assert_eq!(m.bill(run), vec![]);
    let late: Vec<_> = hourly("acme", "node-1", 50, "2026-11-24", 0..12)
        .into_iter()
        .map(|s| s.received(local("2026-11-25T09:00:00")))
        .collect();
    m.push(&late);
    let mut m = m.restart();
    assert_eq!(
        brief(&m.bill(due("2026-11-25"))),
        vec![adjustment("acme", "2026-11-24", 2, "6.25")]
    );
}

#[test]
fn a_day_without_samples_gets_no_line() {
    let mut m = Meter::new();
    m.account("acme");
    m.account("idle");
    m.push(&all_day("acme", "node-0", 100, "2026-11-24"));

    // Four days are due; only the one with samples is billed, and the account
    // without any samples gets nothing, not even a zero line.
    let issued = m.bill(due("2026-11-27"));
    assert_eq!(brief(&issued), vec![daily("acme", "2026-11-24", "25.00")]);
    assert!(m.lines(Some("idle"), None).is_empty());
    for day in ["2026-11-23", "2026-11-25", "2026-11-26", "2026-11-27"] {
        assert!(m.lines(None, Some(day)).is_empty(), "{day}");
    }
}

#[test]
fn a_cap_below_500_is_refused_and_the_history_is_unchanged() {
    let mut m = Meter::new();
    m.account("acme");
    let from = local("2026-11-01T00:00:00");
    m.store.accounts().set_cap("acme", 600, from, from).unwrap();

    for cores in [499, 0] {
        let err = m
            .store
            .accounts()
            .set_cap("acme", cores, local("2026-11-20T00:00:00"), from)
            .expect_err("a cap under 500 is refused");
        assert!(
            matches!(err, StoreError::Rule(RuleError::CapBelowMinimum { cores: c }) if c == cores),
            "{err}"
        );
        assert!(
            err.to_string().contains("below the minimum of 500"),
            "{err}"
        );
    }
    let account = m.store.accounts().account("acme").unwrap().unwrap();
    assert_eq!(
        m.store.accounts().caps(&account).unwrap(),
        vec![CapChange { cores: 600, from }]
    );

    // The cap of 600 still applies: 1000 cores all day, S = 24000, average
    // 1000, capped at 600 cores, 150.00.
    m.push(&all_day("acme", "node-0", 1000, "2026-11-24"));
    let issued = m.bill(due("2026-11-24"));
    assert_figures(&issued[0], 24, 24000, "1000.00", 600, "600.00", "150.00");

    // 500 itself is allowed.
    m.store
        .accounts()
        .set_cap("acme", 500, local("2026-11-26T00:00:00"), from)
        .unwrap();
}

#[test]
fn a_late_sample_after_midnight_adjusts_the_day_before_through_bridging() {
    let mut m = Meter::new();
    m.account("acme");
    // 100 cores from 00:00 to 21:59 on the 24th, then silence: S = 2200,
    // average 91.67, 92 cores, 23.00.
    m.push(&hourly("acme", "node-0", 100, "2026-11-24", 0..22));
    assert_eq!(
        brief(&m.bill(due("2026-11-24"))),
        vec![daily("acme", "2026-11-24", "23.00")]
    );

    // The node's 00:07 sample of the 25th arrives late. The 22:00 and 23:00
    // hours of the 24th now lie in a 2-hour gap and are bridged with 100 cores:
    // S = 2400, 25.00, an adjustment of 2.00. The 25th itself has one hour of
    // 100 cores: S = 100, average 4.17, 5 cores, 1.25.
    m.push(
        &[sample("acme", "node-0", 100, local("2026-11-25T00:07:00"))
            .received(local("2026-11-25T09:00:00"))],
    );
    assert_eq!(
        brief(&m.bill(due("2026-11-25"))),
        vec![
            adjustment("acme", "2026-11-24", 2, "2.00"),
            daily("acme", "2026-11-25", "1.25"),
        ]
    );
}

#[test]
fn a_late_sample_stored_while_a_run_is_under_way_is_billed_by_a_later_run() {
    if support::skipped_on_postgres("a second connection holds SQLite's write lock") {
        return;
    }
    let mut m = Meter::new();
    m.account("acme");
    m.push(&all_day("acme", "node-0", 24, "2026-11-17"));
    m.push(&all_day("acme", "node-0", 24, "2026-11-28"));
    let run = local("2026-11-30T12:00:00");
    assert_eq!(m.bill(run).len(), 2);
    let late = |day: &str| {
        sample("acme", "late", 24, local(&format!("{day}T12:07:00")))
            .received(run - TimeDelta::minutes(1))
    };

    // A late sample for the 28th marks the account for recomputation.
    let mut replica = m.another_connection();
    assert_eq!(
        ingest(&mut replica, &[late("2026-11-28")]),
        vec![Outcome::Accepted]
    );

    // Another writer holds the database while a run starts: the run reads the
    // mark (from the 28th), prices the 28th and waits to write its adjustment.
    let path = m.path();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let config = m.config.clone();
    std::thread::scope(|s| {
        let billing = s.spawn(|| run_billing(&mut m.store, run, &config).expect("run"));
        std::thread::sleep(std::time::Duration::from_millis(400));
        // Meanwhile a late sample for the 17th comes in, and is stored as soon
        // as the holder lets go (the waiting run polls the lock less often).
        let storing = s.spawn(|| ingest(&mut replica, &[late("2026-11-17")]));
        std::thread::sleep(std::time::Duration::from_millis(1));
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(storing.join().unwrap(), vec![Outcome::Accepted]);
        billing.join().unwrap();
    });

    // Each late node adds 24 core-hours, one core, 0.25 to its day. Whatever
    // the interleaving, a run after both samples were stored must bring both
    // days to 6.25.
    m.bill(run);
    for day in ["2026-11-17", "2026-11-28"] {
        let total: rust_decimal::Decimal = m
            .lines(Some("acme"), Some(day))
            .iter()
            .map(|l| l.amount)
            .sum();
        assert_eq!(
            total.to_string(),
            "6.25",
            "{day}: {:?}",
            brief(&m.lines(Some("acme"), Some(day)))
        );
    }
}

/// The usage chart's figures of a day, as the billing run kept them and as
/// figured again from the samples, are the same; a late sample the next run
/// takes in changes them both.
#[test]
fn a_billed_days_total_cores_are_kept_as_the_run_figured_them_and_late_samples_update_them() {
    use aggregator::reports::usage::month_of_cores;
    let mut m = Meter::new();
    m.account("acme");
    // node-1: 96 cores all of the 2nd and 3rd, silent 10:00 to 12:59 on
    // the 3rd (bridged); node-2: 8 cores from 12:00 on the 3rd.
    m.push(&all_day("acme", "node-1", 96, "2026-11-02"));
    m.push(&hourly("acme", "node-1", 96, "2026-11-03", 0..10));
    m.push(&hourly("acme", "node-1", 96, "2026-11-03", 13..24));
    m.push(&hourly("acme", "node-2", 8, "2026-11-03", 12..24));
    let now = due("2026-11-03") + TimeDelta::hours(1);
    m.bill(now);
    let month = date("2026-11-01");
    let kept = month_of_cores(&mut m.store, &m.config, "acme", month, now).unwrap();
    support::execute_behind_the_store(&m.path(), "DELETE FROM usage_days");
    let figured = month_of_cores(&mut m.store, &m.config, "acme", month, now).unwrap();
    assert_eq!(kept, figured);
    let day = |d: &[aggregator::reports::usage::DayOfCores], day: &str| {
        d.iter().find(|x| x.day == date(day)).unwrap().clone()
    };
    let second = day(&kept, "2026-11-02");
    assert_eq!(
        (second.average_cores, second.peak_cores),
        (rust_decimal::Decimal::from(96), 96)
    );
    // The 3rd: 96 in every hour (three of them bridged) and 8 more in 12 of them.
    let third = day(&kept, "2026-11-03");
    assert_eq!(
        (third.average_cores, third.peak_cores),
        (rust_decimal::Decimal::from(100), 104)
    );
    assert!(!third.provisional && third.billed.is_some(), "{third:?}");
    // Days 4 (today) and later: today so far, nothing after.
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept[3].provisional);
    assert_eq!(kept[0].peak_cores, 0);

    // A late node of 200 cores at 05:00 on the 2nd: the next run takes it in.
    m.push(
        &[sample("acme", "node-3", 200, local("2026-11-02T05:07:00"))
            .received(now + TimeDelta::minutes(5))],
    );
    m.bill(now + TimeDelta::hours(1));
    let kept = month_of_cores(&mut m.store, &m.config, "acme", month, now).unwrap();
    let second = day(&kept, "2026-11-02");
    assert_eq!(second.peak_cores, 296);
    support::execute_behind_the_store(&m.path(), "DELETE FROM usage_days");
    let figured = month_of_cores(&mut m.store, &m.config, "acme", month, now).unwrap();
    assert_eq!(kept, figured);
}

/// Ingest keeps each node's latest sample: a late sample of an earlier hour
/// does not take it back, and a node silent for longer than bridging
/// reaches counts among its account's silent nodes for seven days.
#[test]
fn each_node_is_last_seen_at_its_latest_sample_and_counts_as_silent_until_gone() {
    let mut m = Meter::new();
    m.account("acme");
    m.account("quiet");
    m.push(&hourly("acme", "node-1", 4, "2026-11-03", 0..12));
    m.push(&[sample("acme", "node-1", 4, local("2026-11-03T02:30:00"))]);
    m.push(&hourly("acme", "node-2", 4, "2026-11-03", 0..3));
    m.push(&hourly("quiet", "node-1", 4, "2026-11-01", 0..1));
    let acct = m.store.accounts().account("acme").unwrap().unwrap();
    let seen = m.store.reads().nodes_seen(&acct, 0, 10).unwrap();
    let at: Vec<(&str, DateTime<Utc>)> = seen
        .iter()
        .map(|n| (n.node.as_str(), aggregator::store::from_ms(n.last_seen_ms)))
        .collect();
    assert_eq!(
        at,
        vec![
            ("node-1", local("2026-11-03T11:07:00")),
            ("node-2", local("2026-11-03T02:07:00")),
        ]
    );
    let silent_at = |m: &mut Meter, now: DateTime<Utc>| -> BTreeMap<String, u64> {
        let window = aggregator::reports::usage::silent_window(&m.config, now);
        let day = date("2026-11-03");
        m.store
            .reads()
            .account_facts(now.timestamp_millis(), (day, day), window)
            .unwrap()
            .into_iter()
            .map(|f| (f.id, f.silent_nodes))
            .collect()
    };
    // At noon node-2 has been quiet for 9 h 53 min, node-1 for 53 min;
    // quiet's node for over two days.
    let noon = local("2026-11-03T12:00:00");
    let reach = i64::from(m.config.rules.reach_hours());
    assert!(
        reach < 9,
        "the test's silence is longer than bridging reaches"
    );
    assert_eq!(silent_at(&mut m, noon)["acme"], 1);
    assert_eq!(silent_at(&mut m, noon)["quiet"], 1);
    // Eight days on, both are gone: no account is flagged for them.
    let later = noon + TimeDelta::days(8);
    assert_eq!(silent_at(&mut m, later)["acme"], 0);
    assert_eq!(silent_at(&mut m, later)["quiet"], 0);
}

/// A database made before schema 12 gets each node's last seen from the
/// samples it keeps when it is opened by this build.
/// Migration 14 moves PostgreSQL's samples into a row per node and UTC
/// day: every field of every sample reads back the same, a resend of a
/// stored seq is still told from a new one, and billing is unchanged.
#[test]
fn the_upgrade_to_schemas_14_and_15_keeps_every_sample_as_it_was() {
    let mut m = Meter::new();
    m.account("acme");
    // Two nodes over two local days (three UTC days), with seqs.
    let sent: Vec<Sample> = ["node-1", "node-2"]
        .iter()
        .flat_map(|node| {
            let mut day = all_day("acme", node, 40, "2026-11-03");
            day.extend(all_day("acme", node, 44, "2026-11-04"));
            day
        })
        .zip(1..)
        .map(|(s, seq)| s.seq(seq))
        .collect();
    assert_eq!(m.push(&sent), vec![Outcome::Accepted; 96]);
    let (from, to) = (local("2026-11-01T00:00:00"), local("2026-11-10T00:00:00"));
    let before = m.store.reads().audit_samples("acme", from, to).unwrap();
    let billed_before = m.bill(due("2026-11-04"));
    assert_eq!(billed_before.len(), 2);
    let back_to_13 = if support::postgres_server().is_some() {
        "DROP TABLE audit_log; DELETE FROM core_meter_schema WHERE version >= 14;"
    } else {
        "DROP TABLE audit_log; PRAGMA user_version = 13;"
    };
    support::execute_behind_the_store(
        &m.path(),
        &format!("{} {back_to_13}", support::undo_migrations_14_to_15()),
    );
    let mut m = m.restart();
    assert_eq!(
        m.store.schema_version().unwrap(),
        aggregator::store::SCHEMA_VERSION
    );
    assert_eq!(
        m.store.reads().audit_samples("acme", from, to).unwrap(),
        before
    );
    // A stored seq of either day is a resend; one never sent is new.
    let mut garbled = sent[30].clone();
    garbled.cores = Some(7);
    let new = sample("acme", "node-1", 40, local("2026-11-05T00:07:00")).seq(500);
    assert_eq!(
        m.push(&[sent[3].clone(), garbled, new]),
        vec![
            Outcome::Duplicate,
            Outcome::Rejected(Rejection::ConflictingResend),
            Outcome::Accepted
        ]
    );
    // A run after the upgrade issues nothing more for the days billed.
    assert_eq!(m.bill(due("2026-11-04")), vec![]);
}

#[test]
fn the_upgrade_to_schema_12_finds_each_nodes_latest_sample() {
    let mut m = Meter::new();
    m.account("acme");
    m.push(&hourly("acme", "node-1", 4, "2026-11-03", 0..12));
    m.push(&hourly("acme", "node-2", 4, "2026-11-03", 0..3));
    let back_to_11 = if support::postgres_server().is_some() {
        "DROP TABLE audit_log; DELETE FROM core_meter_schema WHERE version >= 12;"
    } else {
        "DROP TABLE audit_log; PRAGMA user_version = 11;"
    };
    support::execute_behind_the_store(
        &m.path(),
        &format!(
            "{} DROP TABLE usage_days; ALTER TABLE nodes DROP COLUMN last_seen_ms; {back_to_11}",
            support::undo_migrations_13_to_15()
        ),
    );
    let mut m = m.restart();
    assert_eq!(
        m.store.schema_version().unwrap(),
        aggregator::store::SCHEMA_VERSION
    );
    let acct = m.store.accounts().account("acme").unwrap().unwrap();
    let seen: Vec<(String, i64)> = m
        .store
        .reads()
        .nodes_seen(&acct, 0, 10)
        .unwrap()
        .into_iter()
        .map(|n| (n.node, n.last_seen_ms))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "node-1".into(),
                local("2026-11-03T11:07:00").timestamp_millis()
            ),
            (
                "node-2".into(),
                local("2026-11-03T02:07:00").timestamp_millis()
            ),
        ]
    );
}
