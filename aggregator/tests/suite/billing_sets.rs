//! The billing run bills accounts a set at a time: their terms, samples and
//! lines read and written together (`Billing::terms_of`, `bill_windows`).
//! This test holds a run over many accounts of every kind, across several
//! sets, to the rules themselves: each account's lines are what
//! `shared::overage` gives over that account's own samples and terms.

use crate::support::{self, Dice};

use aggregator::billing::run_billing;
use aggregator::config::{BillingConfig, NoticeChannels};
use aggregator::store::{Durability, Incoming, NewContact, Outcome};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::bill::BillLine;
use shared::lifecycle::ContactRole;
use shared::overage::{overage_with, CapChange, Licence, NodeSample, Period};
use shared::sample::AgeLimits;
use shared::zone::Timeline;
use std::collections::BTreeMap;

/// An account as the oracle sees it: its samples, licences, caps and unbilled periods.
type Account = (Vec<NodeSample>, Vec<Licence>, Vec<CapChange>, Vec<Period>);

#[test]
fn a_run_over_many_accounts_bills_each_as_the_rules_give_for_its_own_samples_and_terms() {
    const ACCOUNTS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut store = support::open_store(&dir.path().join("core-meter.sqlite"), Durability::Scratch)
        .expect("open store");
    store.set_notice_channels(NoticeChannels {
        webhook: true,
        email: true,
    });
    let config = BillingConfig::default();
    let zone = config.zone;
    let first: NaiveDate = "2026-11-20".parse().unwrap();
    let last: NaiveDate = "2026-11-22".parse().unwrap();
    let created = zone.day_start(first) - TimeDelta::days(20);
    let mut dice = Dice(23);
    // Each account's samples and terms, as the oracle sees them.
    let mut oracle: BTreeMap<String, Account> = BTreeMap::new();
    // Each account and how many addresses its notices go to.
    let mut with_contact: BTreeMap<String, usize> = BTreeMap::new();
    for a in 0..ACCOUNTS {
        let id = format!("acct-{:03}", (a * 7) % ACCOUNTS);
        store.accounts().create_account(&id, created).unwrap();
        with_contact.insert(id.clone(), usize::from(a % 2 == 0));
        if a % 2 == 0 {
            let contact = NewContact {
                name: "Billing".into(),
                role: ContactRole::Creator,
                email: Some(format!("billing@{id}.example")),
                sms: None,
            };
            store
                .accounts()
                .add_contact(&id, &contact, created)
                .unwrap();
        }
        let (mut licences, mut caps, mut unbilled) = (Vec::new(), Vec::new(), Vec::new());
        // Some accounts licensed since long ago (a mark far back), some with
        // a licence from within the days, some without.
        match dice.below(3) {
            0 => {
                let l = Licence::new(
                    1 + dice.below(200) as u32,
                    created,
                    created + TimeDelta::days(60),
                )
                .unwrap();
                store.accounts().add_licence(&id, &l, created).unwrap();
                licences.push(l);
            }
            1 => {
                let start = zone.day_start(first) + TimeDelta::hours(30);
                let l = Licence::new(
                    1 + dice.below(100) as u32,
                    start,
                    start + TimeDelta::days(30),
                )
                .unwrap();
                store.accounts().add_licence(&id, &l, created).unwrap();
                licences.push(l);
            }
            _ => {}
        }
        if dice.below(3) == 0 {
            let cores = 500 + dice.below(100) as u32;
            store
                .accounts()
                .set_cap(&id, cores, created, created)
                .unwrap();
            caps.push(CapChange {
                cores,
                from: created,
            });
        }
        if licences.is_empty() && dice.below(2) == 0 {
            let trial = store
                .accounts()
                .start_trial(&id, &zone, zone.day_start(first) + TimeDelta::hours(5))
                .unwrap();
            unbilled.push((trial.start, trial.end));
        }
        // Some accounts stopped for a few hours: those hours unbilled and
        // their samples refused.
        if dice.below(5) == 0 {
            let from = zone.day_start(last) + TimeDelta::hours(dice.below(12) as i64);
            let to = from + TimeDelta::hours(1 + dice.below(6) as i64);
            store
                .billing()
                .replay_life(&id, None, &[(from, Some(to))], created)
                .unwrap();
            unbilled.push((from, to));
        }
        let mut samples = Vec::new();
        let nodes = 1 + dice.below(4);
        for node in 0..nodes {
            let name = format!("node-{node}");
            let cores = [2, 4, 8, 16, 64][dice.below(5) as usize];
            // Accounts whose samples start on the last two days are billed
            // with their set; those with three days a chunk of days at a time.
            let from = first + chrono::Days::new(dice.below(2));
            let mut at = zone.day_start(from) + TimeDelta::minutes(dice.below(600) as i64);
            let end = zone.day_start(last) + TimeDelta::hours(24 - dice.below(12) as i64);
            while at < end {
                let incoming = Incoming {
                    account: &id,
                    cluster: "prod",
                    node: &name,
                    cores: Some(cores),
                    at: Some(at),
                    seq: None,
                    agent_version: Some("test"),
                    received_at: at + TimeDelta::minutes(1),
                };
                let outcome = store
                    .ingest()
                    .insert(&[incoming], &AgeLimits::default())
                    .unwrap();
                if outcome == vec![Outcome::Accepted] {
                    samples.push(NodeSample {
                        node,
                        at_ms: at.timestamp_millis(),
                        cores,
                    });
                }
                // Hourly, with now and then a gap longer than bridging reaches.
                at += TimeDelta::minutes(if dice.below(12) == 0 { 300 } else { 60 });
            }
        }
        oracle.insert(id, (samples, licences, caps, unbilled));
    }
    let run: DateTime<Utc> = zone.day_start(last) + TimeDelta::days(1) + TimeDelta::hours(2);
    let lines = run_billing(&mut store, run, &config).unwrap();

    let timeline = Timeline::new(&zone, first, last, config.rules.reach_hours());
    let (mut expected, mut short) = (Vec::new(), Vec::new());
    for (id, (samples, licences, caps, unbilled)) in &oracle {
        for f in overage_with(
            &zone,
            &timeline,
            samples,
            licences,
            caps,
            unbilled,
            &config.rules,
        ) {
            if f.sampled {
                expected.push((id.clone(), f.day, f.hours, f.excess_core_hours, f.amount));
                if f.peak_shortfall_cores > 0 {
                    short.push((id.clone(), f.day, f.peak_shortfall_cores));
                }
            }
        }
    }
    let got: Vec<(String, NaiveDate, u32, u64, Decimal)> = lines.iter().map(figures_of).collect();
    assert_eq!(got, expected, "each account billed as the rules give");
    assert!(
        expected.iter().filter(|e| !e.4.is_zero()).count() > ACCOUNTS / 2,
        "many lines with an amount were compared"
    );
    // And what was written is what was returned.
    let stored = store.reads().bill_lines(None, None).unwrap();
    let mut stored: Vec<_> = stored.iter().map(figures_of).collect();
    stored.sort();
    assert_eq!(stored, got);
    // A day short of licensed cores brings one notice with its first line,
    // to the account's contacts.
    let mut notices = Vec::new();
    for (id, contacts) in &with_contact {
        for n in store.accounts().notices(id, 100).unwrap() {
            assert_eq!(n.kind, "licence_short", "{id}: only notices of short days");
            assert_eq!(n.recipients.len(), *contacts, "{id}: {:?}", n.recipients);
            assert_eq!(
                n.deliveries.len(),
                1 + contacts,
                "{id}: the webhook and each email"
            );
            let peak = n.details["peak_shortfall_cores"].as_u64().unwrap();
            notices.push((id.clone(), n.day, peak));
        }
    }
    notices.sort();
    assert!(short.len() > 10, "only {} short days", short.len());
    assert_eq!(notices, short);

    // Late samples of the last day, for a third of the accounts: the next
    // run adjusts those days, so that each day's lines add up to what the
    // rules give over all its samples.
    let late_run = run + TimeDelta::days(1);
    for (a, (id, account)) in oracle.iter_mut().enumerate() {
        if a % 3 != 0 {
            continue;
        }
        let at = zone.day_start(last) + TimeDelta::hours(6) + TimeDelta::minutes(30);
        let incoming = Incoming {
            account: id,
            cluster: "staging",
            node: "late-node",
            cores: Some(96),
            at: Some(at),
            seq: None,
            agent_version: Some("test"),
            received_at: run + TimeDelta::hours(3),
        };
        if store
            .ingest()
            .insert(&[incoming], &AgeLimits::default())
            .unwrap()
            == vec![Outcome::Accepted]
        {
            account.0.push(NodeSample {
                node: 99,
                at_ms: at.timestamp_millis(),
                cores: 96,
            });
        }
    }
    let adjustments = run_billing(&mut store, late_run, &config).unwrap();
    assert!(
        adjustments.iter().filter(|l| l.seq > 1).count() > 10,
        "days were adjusted: {adjustments:?}"
    );
    let mut totals: BTreeMap<(String, NaiveDate), Decimal> = BTreeMap::new();
    for l in store.reads().bill_lines(None, None).unwrap() {
        *totals.entry((l.account.clone(), l.day)).or_default() += l.amount;
    }
    let mut expected_totals = BTreeMap::new();
    for (id, (samples, licences, caps, unbilled)) in &oracle {
        let timeline = Timeline::new(&zone, first, last, config.rules.reach_hours());
        for f in overage_with(
            &zone,
            &timeline,
            samples,
            licences,
            caps,
            unbilled,
            &config.rules,
        ) {
            if f.sampled {
                expected_totals.insert((id.clone(), f.day), f.amount);
            }
        }
    }
    assert_eq!(
        totals, expected_totals,
        "each day's lines add up to the rules' amount"
    );
    // A run with nothing new issues nothing.
    assert_eq!(
        run_billing(&mut store, late_run, &config).unwrap(),
        Vec::new()
    );
}

/// What a line says that the rules decide: account, day, hours, excess, amount.
fn figures_of(l: &BillLine) -> (String, NaiveDate, u32, u64, Decimal) {
    (
        l.account.clone(),
        l.day,
        l.hours,
        l.excess_core_hours,
        l.amount,
    )
}
