//! Properties of the lifecycle rules (LIFECYCLE.md) over random licence
//! orders and trials: states change only at runs, the announced next change
//! is the one that comes, a lapsed licence is stopped and deleted on
//! schedule, and each licence end is warned of on exactly seven runs.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use proptest::prelude::*;
use shared::lifecycle::{
    counts_until, run_of, term_end_day, Life, NoticeKind, State, TermLicence, Trial,
};
use shared::zone::BillingZone;
use shared::Tz;

fn day0() -> NaiveDate {
    "2026-01-01".parse().unwrap()
}

fn plus(day: NaiveDate, n: u64) -> NaiveDate {
    day.checked_add_days(Days::new(n)).unwrap()
}

/// Orders as the API places them: a start day and whole months.
fn orders() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..120, 1u32..4), 0..4)
}

fn zones() -> impl Strategy<Value = BillingZone> {
    prop::sample::select(vec![
        BillingZone::new(Tz::Asia__Shanghai),
        BillingZone::new(Tz::America__New_York),
        BillingZone::new(Tz::Asia__Kolkata),
    ])
}

fn life(zone: &BillingZone, orders: &[(u64, u32)], trial: Option<u64>) -> Life {
    Life {
        licences: orders
            .iter()
            .enumerate()
            .map(|(i, &(start, months))| {
                let start = plus(day0(), start);
                let end = term_end_day(start, months).unwrap();
                TermLicence {
                    id: i as i64,
                    cores: 10,
                    start: zone.day_start(start),
                    end: zone.day_start(end),
                    counts_until: counts_until(zone, end),
                    auto_renew: false,
                    renewed: false,
                    recorded_at: zone.day_start(start),
                }
            })
            .collect(),
        trial: trial
            .map(|d| Trial::starting(zone, zone.day_start(plus(day0(), d)) + TimeDelta::hours(15))),
        not_before: None,
    }
}

fn runs(zone: &BillingZone) -> impl Iterator<Item = (NaiveDate, DateTime<Utc>)> + '_ {
    (0..240).map(move |i| {
        let d = plus(day0(), i);
        (d, run_of(zone, d))
    })
}

proptest! {
    // Each case walks 240 runs; 64 cases keep the file under ten seconds.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_state_changes_only_at_runs_and_where_a_licence_or_trial_begins(
        zone in zones(), orders in orders(), trial in prop::option::of(0u64..100), minutes in 1i64..1400
    ) {
        let life = life(&zone, &orders, trial);
        let beginnings: Vec<DateTime<Utc>> = life
            .licences
            .iter()
            .map(|l| l.start)
            .chain(life.trial.map(|t| t.start))
            .collect();
        for (_, at) in runs(&zone) {
            let between = at + TimeDelta::minutes(minutes);
            let next = run_of(&zone, plus(zone.day_of(at), 1));
            let begins_between = beginnings.iter().any(|b| at < *b && *b <= between);
            if between < next && !begins_between {
                prop_assert_eq!(life.state_at(&zone, between), life.state_at(&zone, at), "at {}", between);
            }
        }
    }

    #[test]
    fn the_next_change_announced_is_the_first_run_whose_state_differs(
        zone in zones(), orders in orders(), trial in prop::option::of(0u64..100)
    ) {
        let life = life(&zone, &orders, trial);
        for (_, at) in runs(&zone).step_by(5) {
            let now = life.state_at(&zone, at);
            let stepped = runs(&zone)
                .map(|(_, r)| r)
                .filter(|r| *r > at)
                .map(|r| (life.state_at(&zone, r), r))
                .find(|(s, _)| *s != now);
            let horizon = life.next_change(&zone, at, 400);
            match stepped {
                Some(found) => prop_assert_eq!(horizon, Some(found)),
                // Past the runs walked here: the announced change is later still.
                None => prop_assert!(horizon.is_none_or(|(_, r)| r > runs(&zone).last().unwrap().1)),
            }
        }
    }

    #[test]
    fn a_lapsed_licence_is_stopped_at_the_run_of_end_day_plus_five_and_deleted_five_days_later(
        zone in zones(), start in 0u64..60, months in 1u32..4
    ) {
        let life = life(&zone, &[(start, months)], None);
        let end = term_end_day(plus(day0(), start), months).unwrap();
        let state = |d: NaiveDate| life.state_at(&zone, run_of(&zone, d));
        prop_assert_eq!(state(plus(end, 4)), State::Grace);
        prop_assert_eq!(state(plus(end, 5)), State::Stopped);
        prop_assert_eq!(state(plus(end, 9)), State::Stopped);
        prop_assert_eq!(state(plus(end, 10)), State::Deleted);
    }

    #[test]
    fn each_licence_end_is_warned_of_on_exactly_the_seven_runs_before_it(
        zone in zones(), start in 0u64..60, months in 1u32..4
    ) {
        let life = life(&zone, &[(start, months)], None);
        let end = term_end_day(plus(day0(), start), months).unwrap();
        let warned: Vec<i64> = runs(&zone)
            .filter(|(d, at)| {
                let s = life.state_at(&zone, *at);
                life.notices_at_run(&zone, *d, s, s, true)
                    .iter()
                    .any(|(k, _)| *k == NoticeKind::ExpiryWarning)
            })
            .map(|(d, _)| (end - d).num_days())
            .collect();
        prop_assert_eq!(warned, vec![7, 6, 5, 4, 3, 2, 1]);
    }
}

#[test]
fn an_account_that_never_bought_or_tried_stays_unlicensed() {
    let zone = BillingZone::default();
    let life = life(&zone, &[], None);
    assert!(runs(&zone).all(|(_, at)| life.state_at(&zone, at) == State::Unlicensed));
    assert_eq!(life.next_change(&zone, run_of(&zone, day0()), 400), None);
}
