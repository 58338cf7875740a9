//! The lifecycle takes the runs in which nothing happens to an account a
//! batch of accounts at a time (`Billing::step_quiet_runs`), and every
//! other run one account at a time. These tests hold it to stepping each
//! account alone: two stores given the same accounts and the same actions,
//! day after day, one run by `run_lifecycle` and the other stepped account
//! by account and run by run, report the same changes at every run and end
//! with the same states, notices, orders, balances and log storage (all but
//! the ids of the rows the runs insert, which take another order).

use crate::support::{self, Dice};

use aggregator::billing::lifecycle::run_lifecycle;
use aggregator::config::{BillingConfig, NoticeChannels};
use aggregator::store::{
    Durability, NewContact, NewImage, NewLogOrder, NewOrder, StepOutcome, Store,
};
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use shared::lifecycle::{run_day_at, run_of, ContactRole};
use shared::zone::{next_day, prev_day, BillingZone};
use tempfile::TempDir;

/// Runs are skipped over these days (counted from the first): an outage
/// the next run catches up.
const OUTAGE: std::ops::Range<u64> = 41..46;

fn price() -> Decimal {
    shared::lifecycle::default_price_per_core_month()
}

/// What is done to an account on a day, between two runs.
#[derive(Debug, Clone)]
enum Action {
    Create,
    SubAccountOf(String),
    Contact,
    Credit(u32),
    Order {
        cores: u32,
        months: u32,
        auto_renew: bool,
        from_balance: bool,
    },
    Trial,
    LogOrder {
        gb: u32,
        auto_renew: bool,
        from_balance: bool,
    },
    Images(u32),
}

/// Every account's actions, by day: one of eight kinds of account, each
/// with its own chosen figures.
fn plan(seed: u64, accounts: usize, days: u64) -> Vec<(u64, String, Action)> {
    let mut dice = Dice(seed);
    let mut plan = Vec::new();
    for i in 0..accounts {
        // Ids out of creation order, so that the order of the outcomes is tried too.
        let id = format!("acct-{:03}", (i * 37) % accounts);
        let kind = i % 8;
        // Main accounts are born in the first 30 days, sub-accounts after.
        let born = dice.below(30) + if kind == 6 && i >= 8 { 30 } else { 0 };
        if kind == 6 && i >= 8 {
            let parent = format!("acct-{:03}", ((i - 6) * 37) % accounts);
            plan.push((born, id.clone(), Action::SubAccountOf(parent)));
        } else {
            plan.push((born, id.clone(), Action::Create));
            plan.push((born, id.clone(), Action::Contact));
        }
        let later = |dice: &mut Dice| born + 1 + dice.below(days - born - 1);
        let order = |dice: &mut Dice, auto_renew: bool, from_balance: bool| Action::Order {
            cores: 1 + dice.below(40) as u32,
            months: 1 + dice.below(2) as u32,
            auto_renew,
            from_balance,
        };
        match kind {
            // Never licensed.
            0 => {}
            // A term that lapses: grace, stop, deletion.
            1 => plan.push((born + 1, id.clone(), order(&mut dice, false, false))),
            // Renewed from a balance that covers it, then one that runs out.
            2 => {
                plan.push((
                    born + 1,
                    id.clone(),
                    Action::Credit(300 + dice.below(600) as u32),
                ));
                plan.push((born + 1, id.clone(), order(&mut dice, true, true)));
            }
            // Renewal refused for want of a balance; a credit comes later.
            3 => {
                plan.push((born + 1, id.clone(), order(&mut dice, true, false)));
                plan.push((later(&mut dice), id.clone(), Action::Credit(500)));
            }
            // A trial, sometimes followed by an order.
            4 => {
                plan.push((born + 1, id.clone(), Action::Trial));
                if dice.below(2) == 0 {
                    plan.push((later(&mut dice), id.clone(), order(&mut dice, false, false)));
                }
            }
            // Log storage beside the cores.
            5 => {
                plan.push((born + 1, id.clone(), Action::Credit(2_000)));
                plan.push((born + 1, id.clone(), order(&mut dice, true, true)));
                let auto_renew = dice.below(2) == 0;
                plan.push((
                    born + 2,
                    id.clone(),
                    Action::LogOrder {
                        gb: 10 * (1 + dice.below(20) as u32),
                        auto_renew,
                        from_balance: true,
                    },
                ));
            }
            // A sub-account (or the first of its kind, a main one) with a trial.
            6 => plan.push((born + 2, id.clone(), Action::Trial)),
            // Images arriving now and then, unauthorized.
            _ => {
                plan.push((born + 1, id.clone(), order(&mut dice, false, false)));
                for _ in 0..3 {
                    let n = 1 + dice.below(3) as u32;
                    plan.push((later(&mut dice), id.clone(), Action::Images(n)));
                }
            }
        }
        // Now and then a log storage order on its own, invoiced.
        if dice.below(5) == 0 && kind != 6 {
            plan.push((
                later(&mut dice),
                id.clone(),
                Action::LogOrder {
                    gb: 10 * (1 + dice.below(5) as u32),
                    auto_renew: false,
                    from_balance: false,
                },
            ));
        }
    }
    // By day; within a day, creations first (a sub-account's parent
    // exists before it), then the rest in plan order.
    plan.sort_by_key(|(day, _, action)| {
        (
            *day,
            !matches!(action, Action::Create | Action::Contact),
            !matches!(action, Action::Create),
        )
    });
    plan
}

struct Meter {
    _dir: TempDir,
    store: Store,
    zone: BillingZone,
    /// Account ids in the order they were created.
    created: Vec<String>,
    images: u32,
}

impl Meter {
    fn new() -> Meter {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            support::open_store(&dir.path().join("core-meter.sqlite"), Durability::Scratch)
                .expect("open store");
        store.set_notice_channels(NoticeChannels {
            webhook: true,
            email: true,
        });
        Meter {
            _dir: dir,
            store,
            zone: BillingConfig::default().zone,
            created: Vec::new(),
            images: 0,
        }
    }

    /// Does `action` and says how it went, so that both stores can be held
    /// to the same answers.
    fn act(&mut self, id: &str, action: &Action, now: DateTime<Utc>) -> String {
        let zone = self.zone;
        let outcome = match action {
            Action::Create => self.store.accounts().create_account(id, now).map(|_| {
                self.created.push(id.to_string());
                json!(null)
            }),
            Action::SubAccountOf(parent) => self
                .store
                .accounts()
                .create_sub_account(id, parent, now)
                .map(|_| {
                    self.created.push(id.to_string());
                    json!(null)
                }),
            Action::Contact => {
                let contact = NewContact {
                    name: "Owner".into(),
                    role: ContactRole::Creator,
                    email: Some(format!("owner@{id}.example")),
                    sms: None,
                };
                self.store
                    .accounts()
                    .add_contact(id, &contact, now)
                    .map(|c| json!(c))
            }
            Action::Credit(amount) => self
                .store
                .accounts()
                .credit_balance(id, Decimal::from(*amount), &format!("credit-{now}"), now)
                .map(|c| json!(c)),
            Action::Order {
                cores,
                months,
                auto_renew,
                from_balance,
            } => {
                let order = NewOrder {
                    cores: *cores,
                    months: *months,
                    start: None,
                    auto_renew: *auto_renew,
                    pay_from_balance: *from_balance,
                };
                self.store
                    .accounts()
                    .place_order(id, &order, &zone, price(), now)
                    .map(|o| json!(o))
            }
            Action::Trial => self
                .store
                .accounts()
                .start_trial(id, &zone, now)
                .map(|t| json!(format!("{t:?}"))),
            Action::LogOrder {
                gb,
                auto_renew,
                from_balance,
            } => {
                let order = NewLogOrder {
                    gb: *gb,
                    months: 1,
                    start: None,
                    auto_renew: *auto_renew,
                    pay_from_balance: *from_balance,
                };
                self.store
                    .log_storage()
                    .place_order(id, &order, &zone, now)
                    .map(|o| json!(o))
            }
            Action::Images(n) => {
                let images: Vec<NewImage> = (0..*n)
                    .map(|_| {
                        self.images += 1;
                        NewImage {
                            id: format!("sha256:{:064x}", self.images),
                            repo_tags: vec![format!("registry.example/app:{}", self.images)],
                            repo_digests: Vec::new(),
                            size_bytes: Some(1_000),
                        }
                    })
                    .collect();
                self.store
                    .images()
                    .add_registry_images(id, &images, &zone, now)
                    .map(|o| json!(format!("{o:?}")))
            }
        };
        match outcome {
            Ok(v) => v.to_string(),
            Err(e) => format!("refused: {e}"),
        }
    }

    /// The lifecycle as the service runs it.
    fn run_in_batches(&mut self, now: DateTime<Utc>) -> Vec<StepOutcome> {
        run_lifecycle(&mut self.store, now, &self.zone, price()).expect("lifecycle")
    }

    /// The same runs, each account stepped alone through each run since
    /// its last, in the order the accounts were created.
    fn run_one_by_one(&mut self, now: DateTime<Utc>) -> Vec<StepOutcome> {
        let last = run_day_at(&self.zone, now);
        let mut changed = Vec::new();
        for id in &self.created {
            let through = self
                .store
                .billing()
                .stepped_through(id, &self.zone)
                .expect("stepped through");
            let mut day = next_day(through.unwrap_or(prev_day(last)));
            while day <= last {
                let step = self
                    .store
                    .billing()
                    .step_account(id, day, day == last, &self.zone, price(), now)
                    .expect("step");
                if step.state.is_some() || !step.notices.is_empty() || !step.renewed.is_empty() {
                    changed.push(step);
                }
                day = next_day(day);
            }
        }
        changed.sort_by(|a, b| a.account.cmp(&b.account));
        changed
    }

    /// Everything the lifecycle writes, account by account.
    fn everything(&mut self, now: DateTime<Utc>) -> Value {
        let zone = self.zone;
        let mut all = serde_json::Map::new();
        for id in self.created.clone() {
            let s = &mut self.store;
            all.insert(
                id.clone(),
                json!({
                    "state": s.billing().life(&id).expect("life").1,
                    "states": s.accounts().state_history(&id).expect("history"),
                    "stepped_through": s.billing().stepped_through(&id, &zone).expect("stepped"),
                    "notices": s.accounts().notices(&id, 1_000).expect("notices"),
                    "orders": s.accounts().orders(&id).expect("orders"),
                    "balance": s.accounts().balance(&id).expect("balance"),
                    "log_storage": s.log_storage().view(&id, &zone, now).expect("log storage"),
                    "deletions": s.billing().deletions(&id).expect("deletions"),
                }),
            );
        }
        Value::Object(all)
    }
}

/// `value` without the rows' ids: the batched lifecycle steps accounts'
/// runs that do something in another order than stepping each account
/// alone, so the rows they insert take their ids in another order.
fn without_row_ids(value: Value) -> Value {
    const IDS: [&str; 8] = [
        "id",
        "licence",
        "renewal",
        "order",
        "renewed",
        "renewed_by",
        "renews",
        "expands",
    ];
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, v)| !(IDS.contains(&k.as_str()) && (v.is_number() || v.is_array())))
                .map(|(k, v)| (k, without_row_ids(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_row_ids).collect()),
        other => other,
    }
}

/// Plays `plan` on two stores for `days` days of runs and holds the
/// batched lifecycle to the one-by-one steps at every run.
fn batched_and_one_by_one_agree(seed: u64, accounts: usize, days: u64) {
    let plan = plan(seed, accounts, days);
    let (mut batched, mut alone) = (Meter::new(), Meter::new());
    let first: NaiveDate = "2026-01-05".parse().unwrap();
    let mut actions = plan.iter().peekable();
    let mut changes = 0;
    for d in 0..days {
        let day = first + Days::new(d);
        // The day's actions, at 10:00 local time.
        let at = run_of(&batched.zone, day) + TimeDelta::hours(8);
        while let Some((_, id, action)) = actions.next_if(|(when, _, _)| *when == d) {
            let (a, b) = (batched.act(id, action, at), alone.act(id, action, at));
            assert_eq!(
                a, b,
                "{action:?} on {id} on {day} went the same way on both stores"
            );
        }
        if OUTAGE.contains(&d) {
            continue;
        }
        let run = run_of(&batched.zone, next_day(day));
        let (a, b) = (batched.run_in_batches(run), alone.run_one_by_one(run));
        let (a, b) = (without_row_ids(json!(a)), without_row_ids(json!(b)));
        assert_eq!(
            a,
            b,
            "the run of {} (seed {seed}) changed the same things",
            next_day(day)
        );
        changes += a.as_array().map_or(0, Vec::len);
        if d % 10 == 9 || d + 1 == days {
            assert_eq!(
                without_row_ids(batched.everything(run)),
                without_row_ids(alone.everything(run)),
                "after the run of {} (seed {seed}) both stores hold the same",
                next_day(day)
            );
        }
    }
    // The runs did something: renewals, states and notices were compared,
    // not only quiet days.
    assert!(changes >= accounts, "only {changes} changes in {days} runs");
}

#[test]
fn batched_quiet_runs_change_what_stepping_each_account_alone_changes() {
    batched_and_one_by_one_agree(7, 48, 110);
}

#[test]
fn batched_quiet_runs_agree_with_stepping_alone_for_other_accounts_and_figures() {
    for seed in [11, 2026] {
        batched_and_one_by_one_agree(seed, 24, 80);
    }
}
