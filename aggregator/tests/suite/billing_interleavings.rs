//! Billing runs (SPEC section 6) interleaved with late samples, repeated and
//! backward run instants and two replicas, against a real SQLite file.
//!
//! The oracle is the rule book itself rather than hand-worked figures: after a
//! run, what has been issued for a billed (account, day) must add up to the
//! day's amount computed afresh by `shared::overage::daily_overage` from every
//! sample stored so far, through exactly one `daily` line (seq 1) and
//! adjustments numbered on from it without gaps. Defaults throughout: zone
//! Asia/Shanghai (UTC+8), 0.25 USD per core-day, cap 500, cores rounded up.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::store::{Durability, Incoming, Outcome, Store};
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;
use shared::bill::{idempotency_key, BillLine, LineKind};
use shared::overage::{daily_overage, Licence};
use shared::sample::AgeLimits;
use tempfile::TempDir;

/// An instant given as Shanghai wall-clock time, `2026-11-24T02:00:00`.
fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap_or_else(|e| panic!("{wall}: {e}"))
        .with_timezone(&Utc)
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn plus_days(day: NaiveDate, n: u64) -> NaiveDate {
    day.checked_add_days(Days::new(n)).unwrap()
}

/// The instant a day's bill falls due: 02:00 local on the next day.
fn due(day: NaiveDate) -> DateTime<Utc> {
    local(&format!("{}T02:00:00", plus_days(day, 1)))
}

/// A sample as an agent pushes it (cluster `prod`), with the instant it was received.
#[derive(Debug, Clone)]
struct Sample {
    account: String,
    node: String,
    cores: u32,
    at: DateTime<Utc>,
    received_at: DateTime<Utc>,
}

/// A sample received a minute after it was taken.
fn sample(account: &str, node: &str, cores: u32, at: DateTime<Utc>) -> Sample {
    Sample {
        account: account.to_string(),
        node: node.to_string(),
        cores,
        at,
        received_at: at + TimeDelta::minutes(1),
    }
}

impl Sample {
    fn received(mut self, at: DateTime<Utc>) -> Sample {
        self.received_at = at;
        self
    }
}

/// A whole local day of hourly samples, seven minutes into each hour, received on time.
fn all_day(account: &str, node: &str, cores: u32, day: NaiveDate) -> Vec<Sample> {
    (0..24)
        .map(|h| sample(account, node, cores, local(&format!("{day}T{h:02}:07:00"))))
        .collect()
}

fn ingest(store: &mut Store, samples: &[Sample]) -> Vec<Outcome> {
    let batch: Vec<Incoming<'_>> = samples
        .iter()
        .map(|s| Incoming {
            account: &s.account,
            cluster: "prod",
            node: &s.node,
            cores: Some(s.cores),
            at: Some(s.at),
            seq: None,
            agent_version: Some("test"),
            received_at: s.received_at,
        })
        .collect();
    store
        .ingest()
        .insert(&batch, &AgeLimits::default())
        .expect("ingest commits")
}

/// An aggregator's database in a temporary directory, with the default billing
/// configuration, and every sample it accepted (the model the checks use).
struct Meter {
    dir: TempDir,
    store: Store,
    config: BillingConfig,
    stored: Vec<Sample>,
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
            stored: Vec::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("core-meter.sqlite")
    }

    /// Another connection to the same file, as another replica would hold.
    fn another_connection(&self) -> Store {
        support::open_store(&self.path(), Durability::Durable).expect("open another store")
    }

    fn account(&mut self, id: &str) {
        self.store
            .accounts()
            .create_account(id, local("2026-10-01T00:00:00"))
            .expect("create account");
    }

    /// Stores samples that must all be accepted.
    fn push(&mut self, samples: &[Sample]) {
        let outcomes = ingest(&mut self.store, samples);
        assert!(
            outcomes.iter().all(|o| *o == Outcome::Accepted),
            "{outcomes:?} for {samples:?}"
        );
        self.stored.extend_from_slice(samples);
    }

    fn bill(&mut self, now: DateTime<Utc>) -> Vec<BillLine> {
        run_billing(&mut self.store, now, &self.config).expect("billing run")
    }

    fn lines(&mut self) -> Vec<BillLine> {
        self.store
            .reads()
            .bill_lines(None, None)
            .expect("read bill lines")
    }

    /// The sum issued for one day of one account.
    fn issued(&mut self, account: &str, day: &str) -> Decimal {
        self.store
            .reads()
            .bill_lines(Some(account), Some(date(day)))
            .unwrap()
            .iter()
            .map(|l| l.amount)
            .sum()
    }

    fn check(&mut self, now: DateTime<Utc>) -> Result<(), String> {
        check_books(&mut self.store, now, &self.config, &self.stored)
    }
}

/// A day's amount computed afresh from every sample stored for the account
/// with `at` within a day of the day (far more than bridging reaches), and its
/// licences and caps.
fn fresh_amount(
    store: &mut Store,
    account: &str,
    day: NaiveDate,
    config: &BillingConfig,
) -> Result<Decimal, String> {
    let zone = &config.zone;
    let accounts = store.accounts().all().map_err(|e| e.to_string())?;
    let account = accounts
        .iter()
        .find(|a| a.id == account)
        .ok_or_else(|| format!("no account {account:?}"))?;
    let samples = store
        .billing()
        .samples_between(
            account,
            zone.day_start(day) - TimeDelta::days(1),
            zone.day_end(day) + TimeDelta::days(1),
        )
        .map_err(|e| e.to_string())?;
    let licences = store
        .accounts()
        .licences(account)
        .map_err(|e| e.to_string())?;
    let caps = store.accounts().caps(account).map_err(|e| e.to_string())?;
    let figures = daily_overage(zone, day, day, &samples, &licences, &caps, &config.rules);
    match figures.as_slice() {
        [f] if f.day == day => Ok(f.amount),
        other => Err(format!("daily_overage for {day} gave {other:?}")),
    }
}

/// A bill line reduced to what a failure message needs.
fn brief(lines: &[&BillLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {:?} {} at {}",
                l.idempotency_key, l.kind, l.amount, l.issued_at
            )
        })
        .collect()
}

/// What the stored bill lines must look like after a run at `now` (SPEC section 6):
///
/// - no line for a day not due at `now`, and none issued after `now`;
/// - every idempotency key once, and equal to `account/day/seq`;
/// - per billed (account, day): seqs 1..=n without gaps, seq 1 the only
///   `daily` line, and the amounts adding up to the day computed afresh from
///   every stored sample;
/// - every due day with a sample received at or before `now` in `stored` billed.
fn check_books(
    store: &mut Store,
    now: DateTime<Utc>,
    config: &BillingConfig,
    stored: &[Sample],
) -> Result<(), String> {
    let zone = &config.zone;
    let last_due = zone.last_due_day(now);
    let lines = store
        .reads()
        .bill_lines(None, None)
        .map_err(|e| e.to_string())?;
    let mut keys = HashSet::new();
    let mut by_day: BTreeMap<(String, NaiveDate), Vec<&BillLine>> = BTreeMap::new();
    for l in &lines {
        if l.day > last_due {
            return Err(format!(
                "{} issued by {now}, but the day is not due before {}",
                l.idempotency_key,
                zone.due_at(l.day)
            ));
        }
        if l.issued_at > now {
            return Err(format!(
                "{} issued at {}, after the run at {now}",
                l.idempotency_key, l.issued_at
            ));
        }
        if l.idempotency_key != idempotency_key(&l.account, l.day, l.seq) {
            return Err(format!("{l:?} has the wrong idempotency key"));
        }
        if !keys.insert(l.idempotency_key.clone()) {
            return Err(format!("{} issued twice", l.idempotency_key));
        }
        by_day
            .entry((l.account.clone(), l.day))
            .or_default()
            .push(l);
    }
    for ((account, day), day_lines) in &by_day {
        let mut seqs: Vec<u32> = day_lines.iter().map(|l| l.seq).collect();
        seqs.sort_unstable();
        let n = u32::try_from(seqs.len()).unwrap();
        if seqs != (1..=n).collect::<Vec<_>>() {
            return Err(format!(
                "{account} {day}: seqs {seqs:?}: {:?}",
                brief(day_lines)
            ));
        }
        if let Some(l) = day_lines
            .iter()
            .find(|l| (l.seq == 1) != (l.kind == LineKind::Daily))
        {
            return Err(format!(
                "{account} {day}: {} is {:?}: {:?}",
                l.idempotency_key,
                l.kind,
                brief(day_lines)
            ));
        }
        let sum: Decimal = day_lines.iter().map(|l| l.amount).sum();
        let fresh = fresh_amount(store, account, *day, config)?;
        if sum != fresh {
            return Err(format!(
                "{account} {day}: {sum} issued by the run at {now}, but the stored samples make it {fresh}: {:?}",
                brief(day_lines)
            ));
        }
    }
    for s in stored {
        let day = zone.day_of(s.at);
        if day <= last_due
            && s.received_at <= now
            && !by_day.contains_key(&(s.account.clone(), day))
        {
            return Err(format!(
                "{} {day} is due at {now} and has a sample received at {}, but no line",
                s.account, s.received_at
            ));
        }
    }
    Ok(())
}

/// Runs billing at `now` and checks what a run must do: every line it returns
/// carries `now` and is stored, the lines stored before are untouched, the
/// books are consistent (`check_books`), and a second run at `now` issues nothing.
fn run_and_check(m: &mut Meter, now: DateTime<Utc>) -> Result<Vec<BillLine>, String> {
    let before = m.lines();
    let issued = m.bill(now);
    let after = m.lines();
    if let Some(l) = issued.iter().find(|l| l.issued_at != now) {
        return Err(format!(
            "the run at {now} issued {} at {}",
            l.idempotency_key, l.issued_at
        ));
    }
    let mut expected: Vec<&BillLine> = before.iter().chain(&issued).collect();
    let mut found: Vec<&BillLine> = after.iter().collect();
    let order = |x: &&BillLine, y: &&BillLine| x.idempotency_key.cmp(&y.idempotency_key);
    expected.sort_by(order);
    found.sort_by(order);
    if expected != found {
        return Err(format!(
            "the run at {now} returned {:?}, but the stored lines went from {:?} to {:?}",
            brief(&issued.iter().collect::<Vec<_>>()),
            brief(&before.iter().collect::<Vec<_>>()),
            brief(&found)
        ));
    }
    m.check(now)?;
    let again = m.bill(now);
    if !again.is_empty() {
        return Err(format!(
            "a second run at {now} issued {:?}",
            brief(&again.iter().collect::<Vec<_>>())
        ));
    }
    Ok(issued)
}

// --- 1. Random interleavings of ingests and runs -----------------------------

/// The first of the four days the samples fall in.
const FIRST_DAY: &str = "2026-11-20";
const DAYS: i64 = 4;

#[derive(Debug, Clone)]
struct RawSample {
    account: usize,
    node: usize,
    /// Minutes from the first day's local midnight.
    minute: i64,
    cores: u32,
    /// How long after the later of its `at` and the previous receipt it was received.
    delay_minutes: i64,
}

#[derive(Debug, Clone)]
enum Op {
    Ingest(Vec<RawSample>),
    /// A run `advance_minutes` after the previous one (or the start), moved
    /// on to the next 02:00 local when `at_0200`.
    Run {
        advance_minutes: i64,
        at_0200: bool,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    accounts: usize,
    nodes: usize,
    /// Per account, maybe a licence: cores, start in hours from the day
    /// before the first day, length in hours.
    licences: Vec<Option<(u32, i64, i64)>>,
    ops: Vec<Op>,
}

fn raw_sample() -> impl Strategy<Value = RawSample> {
    (
        0..2usize,
        0..4usize,
        0..DAYS * 1440,
        1..=64u32,
        prop_oneof![Just(0i64), 0..10i64, 0..36 * 60i64],
    )
        .prop_map(|(account, node, minute, cores, delay_minutes)| RawSample {
            account,
            node,
            minute,
            cores,
            delay_minutes,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(raw_sample(), 1..12).prop_map(Op::Ingest),
        2 => (0..30 * 60i64, any::<bool>())
            .prop_map(|(advance_minutes, at_0200)| Op::Run { advance_minutes, at_0200 }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1..=2usize,
        1..=4usize,
        prop::collection::vec(prop::option::of((1..=100u32, 0..120i64, 1..72i64)), 2),
        prop::collection::vec(op(), 1..24),
    )
        .prop_map(|(accounts, nodes, licences, ops)| Scenario {
            accounts,
            nodes,
            licences,
            ops,
        })
}

/// The first 02:00 local at or after `t`.
fn next_0200(config: &BillingConfig, t: DateTime<Utc>) -> DateTime<Utc> {
    let zone = &config.zone;
    let today = zone.day_of(t);
    let yesterday = today.pred_opt().unwrap();
    let at = zone.due_at(yesterday);
    if at >= t {
        at
    } else {
        zone.due_at(today)
    }
}

/// Plays a scenario: ingests and runs in order, checking after every run.
fn play(s: &Scenario) -> Result<(), String> {
    let mut m = Meter::new();
    let accounts: Vec<String> = (0..s.accounts).map(|k| format!("acct-{k}")).collect();
    let nodes: Vec<String> = (0..s.nodes).map(|k| format!("node-{k}")).collect();
    let start = local(&format!("{FIRST_DAY}T00:00:00"));
    for (k, a) in accounts.iter().enumerate() {
        m.account(a);
        if let Some((cores, from_hour, hours)) = s.licences[k] {
            let from = start - TimeDelta::days(1) + TimeDelta::hours(from_hour);
            let licence = Licence::new(cores, from, from + TimeDelta::hours(hours)).unwrap();
            m.store
                .accounts()
                .add_licence(a, &licence, start - TimeDelta::days(2))
                .unwrap();
        }
    }
    // Receipt stamps never go back, stay within 14 days of `at`, and are
    // independent of the run instants: a stored sample may be stamped after
    // the next run.
    let latest_receipt = start + TimeDelta::days(12);
    let mut received = start;
    let mut clock = start;
    for op in &s.ops {
        match op {
            Op::Ingest(raw) => {
                let batch: Vec<Sample> = raw
                    .iter()
                    .map(|r| {
                        let at = start + TimeDelta::minutes(r.minute);
                        let mut when = received.max(at) + TimeDelta::minutes(r.delay_minutes);
                        if when > latest_receipt {
                            when = received.max(at);
                        }
                        received = when;
                        sample(
                            &accounts[r.account % s.accounts],
                            &nodes[r.node % s.nodes],
                            r.cores,
                            at,
                        )
                        .received(when)
                    })
                    .collect();
                m.push(&batch);
            }
            Op::Run {
                advance_minutes,
                at_0200,
            } => {
                clock += TimeDelta::minutes(*advance_minutes);
                if *at_0200 {
                    clock = next_0200(&m.config, clock);
                }
                run_and_check(&mut m, clock)?;
            }
        }
    }
    // A last run once every day is due.
    let last_day = plus_days(date(FIRST_DAY), DAYS as u64 - 1);
    run_and_check(&mut m, clock.max(due(last_day)))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // A failure is reported with its shrunk scenario; no file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_billed_day_adds_up_to_a_fresh_computation_whatever_the_interleaving(s in scenario()) {
        play(&s).map_err(TestCaseError::fail)?;
    }
}

// --- 2. A sample stamped after the run instant --------------------------------

#[test]
fn a_sample_stamped_after_the_run_instant_is_still_billed() {
    let mut m = Meter::new();
    m.account("acme");
    let d24 = date("2026-11-24");
    let d25 = date("2026-11-25");
    // 24 cores all day on the 24th: S = 576, average 24, 6.00.
    m.push(&all_day("acme", "node-0", 24, d24));
    let run = due(d24);

    // Stored before the run, but stamped a second after it: another node's
    // hour on the 24th (24 core-hours more: 6.25), and the first sample of the
    // 25th, which is not due yet.
    m.push(&[
        sample("acme", "late", 24, local("2026-11-24T12:07:00"))
            .received(run + TimeDelta::seconds(1)),
        sample("acme", "node-0", 48, local("2026-11-25T01:07:00"))
            .received(run + TimeDelta::seconds(1)),
    ]);
    run_and_check(&mut m, run).unwrap();

    // Stored before the next run and stamped after it: the rest of the 25th
    // (48 cores all day: 12.00) and another late hour of the 24th (6.50).
    let next = due(d25);
    let mut rest: Vec<Sample> = all_day("acme", "node-0", 48, d25)
        .into_iter()
        .skip(2)
        .map(|s| s.received(next + TimeDelta::milliseconds(1)))
        .collect();
    rest.push(
        sample("acme", "late", 24, local("2026-11-24T13:07:00"))
            .received(next + TimeDelta::milliseconds(1)),
    );
    m.push(&rest);
    run_and_check(&mut m, next).unwrap();

    // Whether those runs counted them or not, a later run must have.
    let later = due(date("2026-11-26"));
    run_and_check(&mut m, later).unwrap();
    // The 25th's 01:00 bucket has its sample; the 00:00 bucket is empty and
    // bridged from 23:00 on the 24th with the smaller neighbour, 24: S = 23 x 48
    // + 24 = 1128, average 47, 11.75.
    assert_eq!(m.issued("acme", "2026-11-24").to_string(), "6.50");
    assert_eq!(m.issued("acme", "2026-11-25").to_string(), "11.75");
}

// --- 3. A run asked for an instant before the last run -----------------------

#[test]
fn a_run_asked_for_an_earlier_instant_runs_at_the_last_runs_instant() {
    let mut m = Meter::new();
    m.account("acme");
    let d24 = date("2026-11-24");
    let d25 = date("2026-11-25");
    m.push(&all_day("acme", "node-0", 24, d24));
    m.push(&all_day("acme", "node-0", 24, d25));
    let r2 = due(d25) + TimeDelta::hours(3);
    let r1 = due(d24) + TimeDelta::hours(1);
    let first = run_and_check(&mut m, r2).unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let before = m.lines();

    // Late samples stored after the run at r2 (one stamped before r1): an hour
    // of another node on the 24th, and the 26th, which is not due at r2.
    m.push(&[
        sample("acme", "late", 24, local("2026-11-24T12:07:00"))
            .received(r1 - TimeDelta::minutes(1)),
        sample("acme", "node-0", 24, local("2026-11-26T04:07:00"))
            .received(r2 - TimeDelta::minutes(30)),
    ]);

    // Asked for r1 < r2, the run runs at r2: what it issues carries r2, it
    // issues nothing for the 26th, and it keeps every line issued before.
    let second = m.bill(r1);
    assert!(
        second.iter().all(|l| l.issued_at == r2),
        "the run asked for {r1} after the run at {r2} issued {second:?}"
    );
    assert_eq!(m.store.billing().last_billing_run().unwrap(), Some(r2));
    let after = m.lines();
    assert!(
        before.iter().all(|l| after.contains(l)),
        "before: {before:?}\nafter: {after:?}"
    );
    // Nothing is undone: checked against r2, the instant the run ran at.
    m.check(r2).unwrap();
    assert_eq!(m.issued("acme", "2026-11-24").to_string(), "6.25");
    assert!(m
        .store
        .reads()
        .bill_lines(None, Some(date("2026-11-26")))
        .unwrap()
        .is_empty());

    // Asked again for r1, and then at r2 itself: nothing new.
    assert_eq!(m.bill(r1), vec![]);
    assert_eq!(m.bill(r2), vec![]);
    m.check(r2).unwrap();
}

// --- 4. Two replicas billing while samples arrive ------------------------------

/// A small deterministic generator (xorshift64), so the test needs no extra dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the two replicas share: the run instants, a barrier to start each
/// round together, and whether the feeder is done.
struct Replicas<'a> {
    runs: &'a [DateTime<Utc>],
    config: &'a BillingConfig,
    start: Barrier,
    fed: AtomicBool,
    stop: AtomicBool,
}

impl Replicas<'_> {
    /// One replica: round after round, meets the other replica and runs
    /// billing twice at the round's instant (the next instant each round, then
    /// the last one again), until every instant had its round and the feeder
    /// is done; returns every line it issued.
    fn bill(&self, store: &mut Store) -> Vec<BillLine> {
        let mut issued = Vec::new();
        for round in 0.. {
            // Both replicas stop after the same round: the leader decides
            // between the two barriers, and both read it after the second.
            if self.start.wait().is_leader() {
                let done = self.fed.load(Ordering::SeqCst) && round >= self.runs.len();
                self.stop.store(done, Ordering::SeqCst);
            }
            self.start.wait();
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let run = self.runs[round.min(self.runs.len() - 1)];
            for _ in 0..2 {
                let lines = run_billing(store, run, self.config).expect("billing run");
                assert!(
                    lines.iter().all(|l| l.issued_at == run),
                    "run at {run}: {lines:?}"
                );
                issued.extend(lines);
            }
        }
        issued
    }
}

/// Two replicas (two connections to one file) bill at the same instants,
/// round after round, while a third connection stores late samples. Whatever
/// the interleaving, one more run once the samples are in must leave every
/// day adding up to its fresh computation, and no key may be issued twice.
#[test]
fn two_connections_running_at_the_same_instant_while_samples_arrive_agree() {
    const SAMPLE_DAYS: u64 = 6;
    const LATE_BATCHES: u64 = 144;
    let mut m = Meter::new();
    let accounts = ["tenant-0", "tenant-1"];
    for a in accounts {
        m.account(a);
    }
    let first = date("2026-11-20");
    // On time: one node per account all day, every day.
    for d in 0..SAMPLE_DAYS {
        for (k, a) in (0u32..).zip(accounts) {
            let cores = 10 + k + u32::try_from(d).unwrap();
            m.push(&all_day(a, "node-0", cores, plus_days(first, d)));
        }
    }
    // Runs every 12 hours from the first day's due time to the last day's.
    let last_day = plus_days(first, SAMPLE_DAYS - 1);
    let runs: Vec<DateTime<Utc>> = (0..)
        .map(|r| due(first) + TimeDelta::hours(12 * r))
        .take_while(|r| *r <= due(last_day))
        .collect();
    assert_eq!(*runs.last().unwrap(), due(last_day));

    let mut one = m.another_connection();
    let mut two = m.another_connection();
    let mut feeder = m.another_connection();
    let config = m.config.clone();
    let replicas = Replicas {
        runs: &runs,
        config: &config,
        start: Barrier::new(2),
        fed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    };
    let (from_one, from_two, late) = std::thread::scope(|s| {
        let a = s.spawn(|| replicas.bill(&mut one));
        let b = s.spawn(|| replicas.bill(&mut two));
        // Meanwhile late samples of three more nodes arrive, taken in order
        // through the six days (a backlog delivered in order, so that a later
        // sample never re-marks an earlier day one that went astray), each
        // received one to 48 hours after it was taken.
        let c = s.spawn(|| {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut late = Vec::new();
            let slot = SAMPLE_DAYS * 1440 / LATE_BATCHES;
            for i in 0..LATE_BATCHES {
                let batch: Vec<Sample> = (0..=rng.below(3))
                    .map(|_| {
                        let account = accounts[rng.below(2) as usize];
                        let node = format!("late-{}", rng.below(3));
                        let minute = i64::try_from(i * slot + rng.below(slot)).unwrap();
                        let at = local(&format!("{first}T00:00:00")) + TimeDelta::minutes(minute);
                        let cores = u32::try_from(1 + rng.below(64)).unwrap();
                        let delay =
                            TimeDelta::minutes(60 + i64::try_from(rng.below(47 * 60)).unwrap());
                        sample(account, &node, cores, at).received(at + delay)
                    })
                    .collect();
                let outcomes = ingest(&mut feeder, &batch);
                assert!(
                    outcomes.iter().all(|o| *o == Outcome::Accepted),
                    "{outcomes:?}"
                );
                late.extend(batch);
                std::thread::sleep(std::time::Duration::from_millis(rng.below(3)));
            }
            replicas.fed.store(true, Ordering::SeqCst);
            late
        });
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    m.stored.extend(late);

    // One final run once everything is stored, at the last instant.
    let last = *runs.last().unwrap();
    let final_lines = m.bill(last);
    m.check(last).unwrap();

    // What the runs returned is exactly what is stored: no key handed to the
    // billing backend twice, by either replica or by both.
    let returned: Vec<&BillLine> = from_one
        .iter()
        .chain(&from_two)
        .chain(&final_lines)
        .collect();
    let mut keys = HashSet::new();
    for l in &returned {
        assert!(
            keys.insert(l.idempotency_key.clone()),
            "{} returned twice",
            l.idempotency_key
        );
    }
    let stored = m.lines();
    assert_eq!(stored.len(), returned.len());
    assert!(returned.iter().all(|l| stored.contains(l)));
    // Every account and day was billed.
    for a in accounts {
        for d in 0..SAMPLE_DAYS {
            let day = plus_days(first, d).to_string();
            assert!(
                m.store
                    .reads()
                    .bill_lines(Some(a), Some(date(&day)))
                    .unwrap()
                    .iter()
                    .any(|l| l.kind == LineKind::Daily),
                "{a} {day}"
            );
        }
    }
}
