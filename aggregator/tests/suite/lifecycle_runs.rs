//! The lifecycle step against a real SQLite file, run by run: catch-up after
//! an outage, refusing samples in stopped hours, not billing them, trial
//! hours free, deletion in batches, and an exported trial day replaying to
//! the service's bill.
//!
//! Figures are worked out by hand from SPEC sections 5 and 8 and LIFECYCLE.md
//! with the defaults: zone Asia/Shanghai (UTC+8), 0.25 USD per core-day,
//! 6.75 USD per core-month, cap 500, billable cores rounded up.

use crate::support;

use aggregator::billing::lifecycle::run_lifecycle;
use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::config::NoticeChannels;
use aggregator::store::{Durability, Incoming, NewContact, NewOrder, Outcome, Store, StoreError};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::bill::LineKind;
use shared::lifecycle::{ContactRole, State};
use shared::sample::{AgeLimits, Rejection};
use tempfile::TempDir;

fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap_or_else(|e| panic!("{wall}: {e}"))
        .with_timezone(&Utc)
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The instant of the 02:00 run of a day.
fn run(day: &str) -> DateTime<Utc> {
    local(&format!("{day}T02:00:00"))
}

struct Meter {
    dir: TempDir,
    store: Store,
    config: BillingConfig,
}

impl Meter {
    fn new() -> Meter {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            support::open_store(&dir.path().join("core-meter.sqlite"), Durability::Durable)
                .expect("open store");
        store.set_notice_channels(NoticeChannels {
            webhook: true,
            email: false,
        });
        Meter {
            dir,
            store,
            config: BillingConfig::default(),
        }
    }

    /// An account with a creator who has an email address, created at `at`.
    fn account(&mut self, id: &str, at: DateTime<Utc>) {
        self.store.accounts().create_account(id, at).unwrap();
        let creator = NewContact {
            name: "Creator".into(),
            role: ContactRole::Creator,
            email: Some(format!("creator@{id}.example")),
            sms: None,
        };
        self.store.accounts().add_contact(id, &creator, at).unwrap();
    }

    fn order(&mut self, id: &str, cores: u32, start: &str, at: DateTime<Utc>) {
        let order = NewOrder {
            cores,
            months: 1,
            start: Some(date(start)),
            auto_renew: false,
            pay_from_balance: false,
        };
        self.store
            .accounts()
            .place_order(id, &order, &self.config.zone, price(), at)
            .unwrap();
    }

    /// The 02:00 run: billing, then the lifecycle.
    fn run(&mut self, at: DateTime<Utc>) -> Vec<shared::bill::BillLine> {
        let lines = run_billing(&mut self.store, at, &self.config).unwrap();
        run_lifecycle(&mut self.store, at, &self.config.zone, price()).unwrap();
        while self.store.billing().purge_deleted_data(7, at).unwrap() > 0 {}
        lines
    }

    /// The 02:00 run of every day from `first` to `last`, in order.
    fn run_days(&mut self, first: &str, last: &str) {
        let mut day = date(first);
        while day <= date(last) {
            self.run(run(&day.to_string()));
            day = day.succ_opt().unwrap();
        }
    }

    fn state(&mut self, id: &str) -> State {
        self.store.billing().life(id).unwrap().1
    }

    /// (kind, day) of every notice, oldest first.
    fn notices(&mut self, id: &str) -> Vec<(String, NaiveDate)> {
        let mut n: Vec<(String, NaiveDate)> = self
            .store
            .accounts()
            .notices(id, 1000)
            .unwrap()
            .into_iter()
            .map(|n| (n.kind, n.day))
            .collect();
        n.reverse();
        n
    }

    fn push(&mut self, id: &str, cores: u32, at: DateTime<Utc>) -> Outcome {
        let incoming = Incoming {
            account: id,
            cluster: "prod",
            node: "node-1",
            cores: Some(cores),
            at: Some(at),
            seq: None,
            agent_version: Some("test"),
            received_at: at + TimeDelta::minutes(1),
        };
        self.store
            .ingest()
            .insert(&[incoming], &AgeLimits::default())
            .unwrap()[0]
    }

    /// One sample at :07 of every hour of `day`.
    fn push_day(&mut self, id: &str, cores: u32, day: &str) -> Vec<Outcome> {
        (0..24)
            .map(|h| self.push(id, cores, local(&format!("{day}T{h:02}:07:00"))))
            .collect()
    }
}

fn price() -> Decimal {
    shared::lifecycle::default_price_per_core_month()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[test]
fn a_run_caught_up_after_an_outage_records_each_change_at_its_own_run_and_warns_only_for_the_last_day(
) {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    // 10 cores from 1 November: the end day is 1 December.
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-11-20");
    assert_eq!(m.state("acme"), State::Active);
    // Down from 20 November to the morning of 8 December: one run catches up.
    m.run(run("2026-12-08"));
    let history: Vec<(State, DateTime<Utc>, DateTime<Utc>)> = m
        .store
        .accounts()
        .state_history("acme")
        .unwrap()
        .into_iter()
        .map(|c| (c.state, c.at, c.recorded_at))
        .collect();
    assert_eq!(
        history,
        vec![
            (
                State::Active,
                local("2026-11-01T10:00:00"),
                local("2026-11-01T10:00:00")
            ),
            // Expiring from the run 7 days before the end day, grace from the
            // end day, stopped from the run of end day + 5; all recorded at 8 December.
            (State::Expiring, run("2026-11-24"), run("2026-12-08")),
            (State::Grace, run("2026-12-01"), run("2026-12-08")),
            (State::Stopped, run("2026-12-06"), run("2026-12-08")),
        ]
    );
    // The days gone by get no daily warnings; the stop's notices go out, and
    // the arrears warning of the last day.
    assert_eq!(
        m.notices("acme"),
        vec![
            ("service_stopped".into(), date("2026-12-06")),
            ("deletion_scheduled".into(), date("2026-12-06")),
            ("arrears_warning".into(), date("2026-12-08")),
        ]
    );
    // A second run at the same instant issues nothing.
    m.run(run("2026-12-08"));
    assert_eq!(m.notices("acme").len(), 3);
}

#[test]
fn samples_in_stopped_hours_are_refused_and_those_before_the_stop_are_kept_and_billed() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-12-06");
    assert_eq!(m.state("acme"), State::Stopped);
    // Stopped from 02:00 on 6 December: the hours before are taken.
    let outcomes = m.push_day("acme", 16, "2026-12-06");
    assert!(outcomes[..2].iter().all(|o| *o == Outcome::Accepted));
    assert!(outcomes[2..]
        .iter()
        .all(|o| *o == Outcome::Rejected(Rejection::ServiceStopped)));
    let lines = m.run(run("2026-12-07"));
    // 6 December: no licence left (its grace ended at 00:00), 16 cores in
    // each of the 2 hours before the stop, none billed after it:
    // S = 32, H = 24, A = 1.33 -> 2 cores -> 0.50.
    let day6 = lines
        .iter()
        .find(|l| l.day == date("2026-12-06"))
        .expect("6 December is billed");
    assert_eq!(
        (day6.excess_core_hours, day6.amount),
        (32, dec("0.50")),
        "{day6:?}"
    );
}

#[test]
fn a_stop_recorded_after_its_day_was_billed_is_taken_back_by_an_adjustment() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-12-05");
    assert_eq!(m.state("acme"), State::Grace);
    // The service is down from before the stop; the agents' spools deliver
    // 6 December after it is back, before the catch-up run records the stop.
    m.push_day("acme", 16, "2026-12-06");
    let first = run_billing(&mut m.store, run("2026-12-07"), &m.config).unwrap();
    // Billed before the stop was known: 16 x 24 = 384 -> 16 cores -> 4.00.
    assert_eq!(first[0].amount, dec("4.00"));
    run_lifecycle(&mut m.store, run("2026-12-07"), &m.config.zone, price()).unwrap();
    // The next run takes the stopped hours back: 32 core-hours -> 0.50, so -3.50.
    let lines = m.run(run("2026-12-08"));
    let adjustment = lines
        .iter()
        .find(|l| l.day == date("2026-12-06"))
        .expect("an adjustment of 6 December");
    assert_eq!(
        (adjustment.kind, adjustment.amount),
        (LineKind::Adjustment, dec("-3.50"))
    );
}

#[test]
fn trial_hours_are_free_and_an_exported_trial_day_replays_to_the_same_bill() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-02T15:00:00"));
    m.store
        .accounts()
        .start_trial("acme", &m.config.zone, local("2026-11-02T15:00:00"))
        .unwrap();
    m.push_day("acme", 16, "2026-11-03");
    let lines = m.run(run("2026-11-04"));
    assert_eq!(
        (lines[0].excess_core_hours, lines[0].amount),
        (0, dec("0.00"))
    );
    let case = aggregator::reports::export::export_case(
        &mut m.store,
        &m.config,
        "acme",
        date("2026-11-03"),
    )
    .unwrap();
    assert!(case["accounts"][0]["trial"].is_object(), "{case}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.json");
    std::fs::write(&path, serde_json::to_vec(&case).unwrap()).unwrap();
    let out = aggregator::commands::replay::replay_file(&path).unwrap();
    assert_eq!(out.bills[0].amount, dec("0.00"));
    assert_eq!(out.bills[0].excess_core_hours, 0);
}

#[test]
fn deletion_removes_the_samples_in_batches_keeps_the_bills_and_refuses_the_days_it_emptied() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.push_day("acme", 16, "2026-11-10");
    m.run_days("2026-11-02", "2026-12-11");
    assert_eq!(m.state("acme"), State::Deleted);
    // 24 samples, removed 7 at a time.
    let acct = m.store.accounts().account("acme").unwrap().unwrap();
    assert!(m
        .store
        .billing()
        .samples_between(&acct, local("2026-11-01T00:00:00"), run("2026-12-11"))
        .unwrap()
        .is_empty());
    assert_eq!(
        m.store
            .reads()
            .bill_lines(Some("acme"), None)
            .unwrap()
            .len(),
        1
    );
    let refused = aggregator::reports::daily_report(
        &mut m.store,
        &m.config,
        "acme",
        date("2026-11-10"),
        run("2026-12-11"),
    );
    assert!(
        matches!(refused, Err(StoreError::DataDeleted { .. })),
        "{refused:?}"
    );
    // After deletion, samples are refused until a new order.
    assert_eq!(
        m.push("acme", 16, local("2026-12-11T09:00:00")),
        Outcome::Rejected(Rejection::ServiceStopped)
    );
    m.order("acme", 10, "2026-12-11", local("2026-12-11T10:00:00"));
    assert_eq!(m.state("acme"), State::Active);
    assert_eq!(
        m.push("acme", 16, local("2026-12-11T10:30:00")),
        Outcome::Accepted
    );
}

#[test]
fn a_renewal_by_hand_while_stopped_continues_the_term_from_its_end_day_and_recovers_the_account() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-12-07");
    assert_eq!(m.state("acme"), State::Stopped);
    let zone = m.config.zone;
    let renewal = m
        .store
        .accounts()
        .renew_order(
            "acme",
            1,
            1,
            false,
            &zone,
            price(),
            local("2026-12-07T09:00:00"),
        )
        .unwrap();
    // From the end day, 1 December, for a month: 10 x 6.75 = 67.50.
    assert_eq!(
        (renewal.start_day, renewal.end_day, renewal.price),
        (date("2026-12-01"), date("2027-01-01"), dec("67.50"))
    );
    assert_eq!(m.state("acme"), State::Active);
    // Samples are taken again from the recovery on; the stopped hours stay refused.
    assert_eq!(
        m.push("acme", 16, local("2026-12-07T10:00:00")),
        Outcome::Accepted
    );
    assert_eq!(
        m.push("acme", 16, local("2026-12-07T08:00:00")),
        Outcome::Rejected(Rejection::ServiceStopped)
    );
    let again = m.store.accounts().renew_order(
        "acme",
        1,
        1,
        false,
        &zone,
        price(),
        local("2026-12-07T09:30:00"),
    );
    assert!(
        matches!(
            again,
            Err(StoreError::Conflict {
                code: "already_renewed",
                ..
            })
        ),
        "{again:?}"
    );
}

#[test]
fn a_sub_account_without_contacts_sends_its_notices_to_its_main_accounts_contacts() {
    let mut m = Meter::new();
    let at = local("2026-11-02T15:00:00");
    m.account("acme", at);
    m.store
        .accounts()
        .create_sub_account("acme-dev", "acme", at)
        .unwrap();
    m.store
        .accounts()
        .start_trial("acme-dev", &m.config.zone, at)
        .unwrap();
    // The trial ends at the run of 9 November; trial_ending goes out 3 days before.
    m.run_days("2026-11-03", "2026-11-06");
    let notices = m.store.accounts().notices("acme-dev", 10).unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (notices[0].kind.as_str(), notices[0].day),
        ("trial_ending", date("2026-11-06"))
    );
    let to: Vec<&str> = notices[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(to, vec!["creator@acme.example"]);
}

#[test]
fn a_licence_backfilled_after_its_end_lapses_when_it_was_recorded_with_its_whole_grace() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-11-20");
    m.push_day("acme", 16, "2026-11-20");
    // A licence of last June, recorded on 21 November.
    let june = shared::overage::Licence::new(
        10,
        local("2026-06-01T00:00:00"),
        local("2026-07-06T00:00:00"),
    )
    .unwrap();
    m.store
        .accounts()
        .add_licence("acme", &june, local("2026-11-21T10:00:00"))
        .unwrap();
    let mut states = Vec::new();
    for day in 21..=30 {
        m.run(run(&format!("2026-11-{day:02}")));
        states.push(m.state("acme"));
    }
    // Grace from the first run after it was recorded, for 5 days from then
    // (21 November 10:00 + 5 days: the stop is the run of 27 November).
    use State::*;
    assert_eq!(
        states,
        vec![Unlicensed, Grace, Grace, Grace, Grace, Grace, Stopped, Stopped, Stopped, Stopped]
    );
    // The data is still there.
    let acct = m.store.accounts().account("acme").unwrap().unwrap();
    assert_eq!(
        m.store
            .billing()
            .samples_between(
                &acct,
                local("2026-11-20T00:00:00"),
                local("2026-11-21T00:00:00")
            )
            .unwrap()
            .len(),
        24
    );
}

#[test]
fn an_order_between_the_runs_instant_and_the_accounts_step_does_not_swallow_the_stop() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-12-05");
    // 6 December 02:05: billing has run, the lifecycle not yet; an order for next month comes in.
    run_billing(&mut m.store, run("2026-12-06"), &m.config).unwrap();
    m.order("acme", 10, "2027-01-01", local("2026-12-06T02:05:00"));
    assert_eq!(
        m.state("acme"),
        State::Grace,
        "the order does not stop the account itself"
    );
    run_lifecycle(
        &mut m.store,
        local("2026-12-06T02:10:00"),
        &m.config.zone,
        price(),
    )
    .unwrap();
    assert_eq!(m.state("acme"), State::Stopped);
    let kinds: Vec<String> = m.notices("acme").into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"service_stopped".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"deletion_scheduled".to_string()),
        "{kinds:?}"
    );
}

#[test]
fn a_late_sample_from_before_a_deletion_is_refused() {
    let mut m = Meter::new();
    m.account("acme", local("2026-11-01T10:00:00"));
    m.order("acme", 10, "2026-11-01", local("2026-11-01T10:00:00"));
    m.run_days("2026-11-02", "2026-12-11");
    assert_eq!(m.state("acme"), State::Deleted);
    // Taken on 5 December, in grace; received after the deletion.
    let incoming = Incoming {
        account: "acme",
        cluster: "prod",
        node: "node-1",
        cores: Some(16),
        at: Some(local("2026-12-05T12:00:00")),
        seq: None,
        agent_version: Some("test"),
        received_at: local("2026-12-11T09:00:00"),
    };
    assert_eq!(
        m.store
            .ingest()
            .insert(&[incoming], &AgeLimits::default())
            .unwrap(),
        vec![Outcome::Rejected(Rejection::ServiceStopped)]
    );
}

#[test]
fn an_order_whose_recovery_window_closed_cannot_be_renewed_by_hand() {
    let mut m = Meter::new();
    m.account("acme", local("2026-01-05T10:00:00"));
    m.order("acme", 10, "2026-01-05", local("2026-01-05T10:00:00"));
    m.order("acme", 10, "2026-02-05", local("2026-01-20T10:00:00"));
    let zone = m.config.zone;
    // Order 1 ended on 5 February; its window closed at the run of 15 February.
    let late = m.store.accounts().renew_order(
        "acme",
        1,
        1,
        false,
        &zone,
        price(),
        local("2026-11-26T10:00:00"),
    );
    assert!(
        matches!(
            late,
            Err(StoreError::Conflict {
                code: "renewal_too_late",
                ..
            })
        ),
        "{late:?}"
    );
    let missing = m.store.accounts().renew_order(
        "acme",
        9,
        1,
        false,
        &zone,
        price(),
        local("2026-11-26T10:00:00"),
    );
    assert!(
        matches!(missing, Err(StoreError::UnknownOrder(..))),
        "{missing:?}"
    );
}

#[test]
fn an_account_whose_step_fails_is_reported_and_does_not_hold_up_the_others() {
    let mut m = Meter::new();
    let at = local("2026-11-01T10:00:00");
    for id in ["a-broken", "b-fine"] {
        m.account(id, at);
        m.order(id, 10, "2026-11-01", at);
    }
    // A state this build cannot read, written behind the store's back.
    support::execute_behind_the_store(
        &m.dir.path().join("core-meter.sqlite"),
        "UPDATE accounts SET state = 'bogus' WHERE id = 'a-broken'",
    );
    let steps = run_lifecycle(&mut m.store, run("2026-11-24"), &m.config.zone, price()).unwrap();
    let broken = steps
        .iter()
        .find(|s| s.account == "a-broken")
        .expect("the broken account is reported");
    assert!(
        broken.error.as_deref().is_some_and(|e| e.contains("bogus")),
        "{broken:?}"
    );
    // The account after it was stepped through to expiring (its end day is 1 December).
    assert_eq!(m.state("b-fine"), State::Expiring);
    assert_eq!(
        m.store
            .billing()
            .stepped_through("b-fine", &m.config.zone)
            .unwrap(),
        Some(date("2026-11-24"))
    );
}

/// Two replicas (two connections to one store) run every 02:00 of a licence's
/// end, grace, stop and deletion at the same instants, at the same time: each
/// notice is issued once, each state change recorded once, each day billed
/// once, as when one runs alone.
#[test]
fn two_connections_running_the_same_runs_at_once_change_and_notify_once() {
    let mut m = Meter::new();
    let at = local("2026-11-01T10:00:00");
    for id in ["acme", "zeta"] {
        m.account(id, at);
        m.order(id, 10, "2026-11-01", at);
    }
    let path = m.dir.path().join("core-meter.sqlite");
    let open = || {
        let mut s = support::open_store(&path, Durability::Durable).unwrap();
        s.set_notice_channels(NoticeChannels {
            webhook: true,
            email: false,
        });
        s
    };
    let (mut one, mut two) = (open(), open());
    let config = m.config.clone();
    // 1 December is the licences' last day: warnings, grace, stop, deletion.
    let mut day = date("2026-11-20");
    while day <= date("2026-12-16") {
        push_day_on(&mut one, "acme", 16, &day.pred_opt().unwrap().to_string());
        let at = run(&day.to_string());
        std::thread::scope(|s| {
            for store in [&mut one, &mut two] {
                let config = &config;
                s.spawn(move || {
                    run_billing(store, at, config).unwrap();
                    run_lifecycle(store, at, &config.zone, price()).unwrap();
                });
            }
        });
        day = day.succ_opt().unwrap();
    }
    for id in ["acme", "zeta"] {
        let notices = m.notices(id);
        let mut unique = notices.clone();
        unique.dedup();
        assert_eq!(notices, unique, "{id}: a notice issued twice");
        assert!(
            notices.iter().any(|(k, _)| k == "data_deleted"),
            "{id}: {notices:?}"
        );
        let history = m.store.accounts().state_history(id).unwrap();
        let states: Vec<State> = history.iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            vec![
                State::Active,
                State::Expiring,
                State::Grace,
                State::Stopped,
                State::Deleted
            ],
            "{id}: {history:?}"
        );
    }
    let lines = m.store.reads().bill_lines(Some("acme"), None).unwrap();
    let mut days: Vec<(NaiveDate, u32)> = lines.iter().map(|l| (l.day, l.seq)).collect();
    let issued = days.len();
    days.sort();
    days.dedup();
    assert_eq!(days.len(), issued, "a line issued twice: {lines:?}");
}

fn push_day_on(store: &mut Store, id: &str, cores: u32, day: &str) {
    let batch: Vec<Incoming<'_>> = (0..24)
        .map(|h| {
            let at = local(&format!("{day}T{h:02}:07:00"));
            Incoming {
                account: id,
                cluster: "prod",
                node: "node-1",
                cores: Some(cores),
                at: Some(at),
                seq: None,
                agent_version: Some("test"),
                received_at: at + TimeDelta::minutes(1),
            }
        })
        .collect();
    store
        .ingest()
        .insert(&batch, &AgeLimits::default())
        .unwrap();
}
