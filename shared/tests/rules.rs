//! The billing rules of SPEC sections 3 to 7 from the outside: properties over generated fleets, and worked examples whose figures were computed by hand.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::sample::Index;
use rust_decimal::Decimal;
use shared::bill::{next_line, Issued, LineKind};
use shared::money::{cents, div_round_half_up};
use shared::overage::{
    cap_at_day_end, daily_overage, price_day, CapChange, CoreRounding, DayFigures, Licence,
    NodeSample, Rules,
};
use shared::zone::BillingZone;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

// ---------------------------------------------------------------------------
// Helpers shared by the examples and the properties.
// ---------------------------------------------------------------------------

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a YYYY-MM-DD date")
}

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("an RFC 3339 instant")
        .with_timezone(&Utc)
}

fn sample(node: u64, at: &str, cores: u32) -> NodeSample {
    NodeSample {
        node,
        at_ms: instant(at).timestamp_millis(),
        cores,
    }
}

fn licence(cores: u32, start: &str, end: &str) -> Licence {
    Licence {
        cores,
        start: instant(start),
        end: instant(end),
    }
}

fn cap(cores: u32, from: &str) -> CapChange {
    CapChange {
        cores,
        from: instant(from),
    }
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("a decimal")
}

fn rules(rounding: CoreRounding) -> Rules {
    Rules {
        rounding,
        ..Rules::default()
    }
}

fn zone(name: &str) -> BillingZone {
    name.parse().expect("a known zone")
}

/// The day most examples bill: an ordinary 24-hour day in Shanghai (UTC+8).
const DAY: &str = "2026-11-24";

fn shanghai_days(
    first: &str,
    last: &str,
    samples: &[NodeSample],
    licences: &[Licence],
    caps: &[CapChange],
    rules: &Rules,
) -> Vec<DayFigures> {
    daily_overage(
        &zone("Asia/Shanghai"),
        date(first),
        date(last),
        samples,
        licences,
        caps,
        rules,
    )
}

/// The figures of [`DAY`] in Shanghai with default caps and no licences.
fn one_day(samples: &[NodeSample], rules: &Rules) -> DayFigures {
    let days = shanghai_days(DAY, DAY, samples, &[], &[], rules);
    assert_eq!(days.len(), 1);
    days[0].clone()
}

/// One sample of `node` at ten past every hour of a Shanghai day.
fn every_hour(node: u64, day: &str, cores: u32) -> Vec<NodeSample> {
    (0..24)
        .map(|h| sample(node, &format!("{day}T{h:02}:10:00+08:00"), cores))
        .collect()
}

/// Checks the figures a bill shows, written as they are printed.
#[track_caller]
fn assert_billed(f: &DayFigures, excess: u64, average: &str, billable: &str, amount: &str) {
    assert_eq!(
        f.excess_core_hours, excess,
        "excess core-hours of {}",
        f.day
    );
    assert_eq!(
        f.average_excess_cores.to_string(),
        average,
        "average of {}",
        f.day
    );
    assert_eq!(
        f.billable_cores.to_string(),
        billable,
        "billable of {}",
        f.day
    );
    assert_eq!(f.amount.to_string(), amount, "amount of {}", f.day);
}

// ---------------------------------------------------------------------------
// Worked examples (SPEC sections 5 and 6). Every expected figure below was
// worked out by hand from the SPEC; the arithmetic is in the comments.
// ---------------------------------------------------------------------------

#[test]
fn a_node_resized_within_the_hour_counts_at_its_larger_size() {
    // Bucket 10:00 holds 8 and 16 cores: it counts 16. S = 16, 16 / 24 = 0.666...
    let f = one_day(
        &[
            sample(1, "2026-11-24T10:05:00+08:00", 8),
            sample(1, "2026-11-24T10:40:00+08:00", 16),
        ],
        &Rules::default(),
    );
    assert_eq!(f.hours, 24);
    assert_eq!(f.cap_cores, 500);
    assert!(f.sampled);
    assert_billed(&f, 16, "0.67", "1.00", "0.25");
}

#[test]
fn a_sample_delivered_twice_counts_once() {
    let once = [sample(1, "2026-11-24T10:05:00+08:00", 16)];
    let twice = [once[0], once[0]];
    assert_billed(
        &one_day(&once, &Rules::default()),
        16,
        "0.67",
        "1.00",
        "0.25",
    );
    assert_billed(
        &one_day(&twice, &Rules::default()),
        16,
        "0.67",
        "1.00",
        "0.25",
    );
}

#[test]
fn a_gap_of_three_hours_is_bridged_with_the_smaller_neighbour() {
    // Buckets 10 and 14 are sampled; 11, 12 and 13 get min(40, 100) = 40.
    // S = 40 + 3 x 40 + 100 = 260; 260 / 24 = 10.833...; ceil 11 x 0.25 = 2.75.
    let rising = [
        sample(1, "2026-11-24T10:05:00+08:00", 40),
        sample(1, "2026-11-24T14:05:00+08:00", 100),
    ];
    assert_billed(
        &one_day(&rising, &Rules::default()),
        260,
        "10.83",
        "11.00",
        "2.75",
    );
    // The smaller neighbour may just as well be the later one.
    let falling = [
        sample(1, "2026-11-24T10:05:00+08:00", 100),
        sample(1, "2026-11-24T14:05:00+08:00", 40),
    ];
    assert_billed(
        &one_day(&falling, &Rules::default()),
        260,
        "10.83",
        "11.00",
        "2.75",
    );
}

#[test]
fn a_gap_of_four_hours_is_not_bridged() {
    // Buckets 10 and 15 are sampled, 11 to 14 stay empty: S = 40 + 100 = 140;
    // 140 / 24 = 5.833...; ceil 6 x 0.25 = 1.50.
    let samples = [
        sample(1, "2026-11-24T10:05:00+08:00", 40),
        sample(1, "2026-11-24T15:05:00+08:00", 100),
    ];
    assert_billed(
        &one_day(&samples, &Rules::default()),
        140,
        "5.83",
        "6.00",
        "1.50",
    );
    // With gap_bridge_hours = 4 the same gap is bridged: 40 + 4 x 40 + 100 = 300.
    let four = Rules {
        gap_bridge_hours: 4,
        ..Rules::default()
    };
    assert_billed(&one_day(&samples, &four), 300, "12.50", "13.00", "3.25");
}

#[test]
fn bridging_reaches_across_midnight() {
    // Buckets 22:00 on the 24th and 02:00 on the 25th are sampled; 23:00, 00:00
    // and 01:00 (three buckets, across midnight) get min(60, 80) = 60.
    // 24th: 60 + 60 = 120; 25th: 60 + 60 + 80 = 200.
    let samples = [
        sample(1, "2026-11-24T22:30:00+08:00", 60),
        sample(1, "2026-11-25T02:30:00+08:00", 80),
    ];
    let r = Rules::default();
    let both = shanghai_days("2026-11-24", "2026-11-25", &samples, &[], &[], &r);
    assert_eq!(both[0].excess_core_hours, 120);
    assert_eq!(both[1].excess_core_hours, 200);
    // Each day computed on its own sees the neighbour beyond its midnight.
    let day24 = shanghai_days("2026-11-24", "2026-11-24", &samples, &[], &[], &r);
    let day25 = shanghai_days("2026-11-25", "2026-11-25", &samples, &[], &[], &r);
    assert_billed(&day24[0], 120, "5.00", "5.00", "1.25");
    assert_billed(&day25[0], 200, "8.33", "9.00", "2.25");
}

#[test]
fn a_licence_counts_in_every_hour_it_overlaps_even_in_part() {
    // 100 cores in every bucket. 30 licensed cores over 10:30-12:15 touch
    // buckets 10, 11 and 12; 20 over exactly 14:00-15:00 touch bucket 14 only.
    // S = 2400 - 3 x 30 - 20 = 2290; 2290 / 24 = 95.4166...; ceil 96 x 0.25 = 24.00.
    let licences = [
        licence(30, "2026-11-24T10:30:00+08:00", "2026-11-24T12:15:00+08:00"),
        licence(20, "2026-11-24T14:00:00+08:00", "2026-11-24T15:00:00+08:00"),
    ];
    let days = shanghai_days(
        DAY,
        DAY,
        &every_hour(1, DAY, 100),
        &licences,
        &[],
        &Rules::default(),
    );
    assert_billed(&days[0], 2290, "95.42", "96.00", "24.00");
}

#[test]
fn a_licence_with_an_empty_period_counts_in_no_hour() {
    // A licence that ends where it starts covers nothing, also inside an hour:
    // 100 cores all day, S = 2400 whether the instant is on the hour or not.
    for at in ["2026-11-24T10:30:00+08:00", "2026-11-24T10:00:00+08:00"] {
        let days = shanghai_days(
            DAY,
            DAY,
            &every_hour(1, DAY, 100),
            &[licence(30, at, at)],
            &[],
            &Rules::default(),
        );
        assert_billed(&days[0], 2400, "100.00", "100.00", "25.00");
    }
}

#[test]
fn licensed_cores_above_the_fleet_leave_no_negative_excess() {
    // 150 licensed cores over 00:00-12:00 against 100 cores: those 12 buckets
    // add 0 (not -50 each); the other 12 add 100. S = 1200.
    let licences = [licence(
        150,
        "2026-11-24T00:00:00+08:00",
        "2026-11-24T12:00:00+08:00",
    )];
    let days = shanghai_days(
        DAY,
        DAY,
        &every_hour(1, DAY, 100),
        &licences,
        &[],
        &Rules::default(),
    );
    assert_billed(&days[0], 1200, "50.00", "50.00", "12.50");
}

#[test]
fn the_cap_in_force_at_the_day_end_applies_to_the_whole_day() {
    // 1000 cores all day: S = 24000. The cap was 800, then 900 from 01:00, then
    // 600 from one second before midnight: 600 applies to all 24 hours.
    // B = min(24000, 600 x 24) = 14400; A = 600; 600 x 0.25 = 150.00.
    let caps = [
        cap(800, "2026-11-01T00:00:00+08:00"),
        cap(900, "2026-11-24T01:00:00+08:00"),
        cap(600, "2026-11-24T23:59:59+08:00"),
    ];
    let days = shanghai_days(
        DAY,
        DAY,
        &every_hour(1, DAY, 1000),
        &[],
        &caps,
        &Rules::default(),
    );
    assert_eq!(days[0].cap_cores, 600);
    assert_billed(&days[0], 24000, "1000.00", "600.00", "150.00");
    assert_eq!(
        cap_at_day_end(&caps, instant("2026-11-25T00:00:00+08:00"), 500),
        600
    );
}

#[test]
fn an_account_without_a_cap_is_capped_at_500() {
    // S = 24000; B = min(24000, 500 x 24) = 12000; 500 x 0.25 = 125.00.
    let f = one_day(&every_hour(1, DAY, 1000), &Rules::default());
    assert_eq!(f.cap_cores, 500);
    assert_billed(&f, 24000, "1000.00", "500.00", "125.00");
}

#[test]
fn a_cap_set_exactly_at_midnight_applies_to_the_next_day() {
    // 700 from 00:00 on the 25th is not "before the next local midnight" of
    // the 24th, so the 24th keeps 600 and the 25th gets 700.
    let caps = [
        cap(600, "2026-11-01T00:00:00+08:00"),
        cap(700, "2026-11-25T00:00:00+08:00"),
    ];
    let mut samples = every_hour(1, "2026-11-24", 1000);
    samples.extend(every_hour(1, "2026-11-25", 1000));
    let days = shanghai_days(
        "2026-11-24",
        "2026-11-25",
        &samples,
        &[],
        &caps,
        &Rules::default(),
    );
    assert_eq!((days[0].cap_cores, days[1].cap_cores), (600, 700));
    assert_billed(&days[0], 24000, "1000.00", "600.00", "150.00");
    assert_billed(&days[1], 24000, "1000.00", "700.00", "175.00");
}

#[test]
fn of_two_caps_set_at_the_same_instant_the_later_given_applies() {
    let caps = [
        cap(700, "2026-11-24T12:00:00+08:00"),
        cap(800, "2026-11-24T12:00:00+08:00"),
    ];
    assert_eq!(
        cap_at_day_end(&caps, instant("2026-11-25T00:00:00+08:00"), 500),
        800
    );
}

#[test]
fn the_same_node_name_in_two_clusters_is_two_nodes() {
    // prod/node-0 and staging/node-0 have different node ids. In one bucket
    // they add up (30 + 30), where one node would count its larger sample once.
    let two = [
        sample(1, "2026-11-24T10:05:00+08:00", 30),
        sample(2, "2026-11-24T10:10:00+08:00", 30),
    ];
    let one = [
        sample(1, "2026-11-24T10:05:00+08:00", 30),
        sample(1, "2026-11-24T10:10:00+08:00", 30),
    ];
    assert_eq!(one_day(&two, &Rules::default()).excess_core_hours, 60);
    assert_eq!(one_day(&one, &Rules::default()).excess_core_hours, 30);
    // Nor does one cluster's node bridge the other's gap: 30 + 50 = 80, where
    // a single node would have bucket 11 bridged to 30 + 30 + 50 = 110.
    let two = [
        sample(1, "2026-11-24T10:05:00+08:00", 30),
        sample(2, "2026-11-24T12:05:00+08:00", 50),
    ];
    let one = [
        sample(1, "2026-11-24T10:05:00+08:00", 30),
        sample(1, "2026-11-24T12:05:00+08:00", 50),
    ];
    assert_eq!(one_day(&two, &Rules::default()).excess_core_hours, 80);
    assert_eq!(one_day(&one, &Rules::default()).excess_core_hours, 110);
}

#[test]
fn half_up_rounding_of_money_rounds_0_125_to_0_13() {
    assert_eq!(cents(dec("0.125")).to_string(), "0.13");
    assert_eq!(cents(dec("0.135")).to_string(), "0.14");
    assert_eq!(cents(dec("0.124999")).to_string(), "0.12");
    assert_eq!(cents(dec("5")).to_string(), "5.00");
    assert_eq!(div_round_half_up(dec("3"), 24, 2).to_string(), "0.13");
    // A day with S = 12 billed exactly: 12 x 0.25 / 24 = 0.125, half up 0.13.
    let f = one_day(
        &[sample(1, "2026-11-24T10:05:00+08:00", 12)],
        &rules(CoreRounding::None),
    );
    assert_billed(&f, 12, "0.50", "0.50", "0.13");
}

#[test]
fn ceil_rounds_20_17_cores_to_21() {
    // S = 484 in a 24-hour day: 484 / 24 = 20.1666...
    let f = one_day(
        &[sample(1, "2026-11-24T10:05:00+08:00", 484)],
        &rules(CoreRounding::Ceil),
    );
    assert_billed(&f, 484, "20.17", "21.00", "5.25");
    // The other settings on the same day: half up gives 20 cores (5.00), none
    // the exact average (484 x 0.25 / 24 = 5.041666... -> 5.04).
    let f = one_day(
        &[sample(1, "2026-11-24T10:05:00+08:00", 484)],
        &rules(CoreRounding::HalfUp),
    );
    assert_billed(&f, 484, "20.17", "20.00", "5.00");
    let (average, billable, amount) = price_day(484, 24, 500, &rules(CoreRounding::None));
    assert_eq!(
        (
            average.to_string(),
            billable.to_string(),
            amount.to_string()
        ),
        ("20.17".into(), "20.17".into(), "5.04".into())
    );
}

#[test]
fn half_up_rounds_a_half_core_up() {
    // S = 12 in 24 hours: exactly 0.5 cores, half up 1 core. S = 11: 0.458... -> 0.
    let r = rules(CoreRounding::HalfUp);
    assert_eq!(price_day(12, 24, 500, &r).1.to_string(), "1.00");
    assert_eq!(price_day(11, 24, 500, &r).1.to_string(), "0.00");
    assert_eq!(price_day(11, 24, 500, &r).2.to_string(), "0.00");
}

#[test]
fn none_bills_the_exact_average_to_the_cent() {
    // S = 9: A = 0.375, shown as 0.38. The amount is B x price / H =
    // 9 x 0.25 / 24 = 0.09375 -> 0.09, not the shown 0.38 x 0.25 = 0.095 -> 0.10.
    let f = one_day(
        &[sample(1, "2026-11-24T10:05:00+08:00", 9)],
        &rules(CoreRounding::None),
    );
    assert_billed(&f, 9, "0.38", "0.38", "0.09");
    // The cap still applies: 1000 cores all day bill 500.00 cores, 125.00.
    let f = one_day(&every_hour(1, DAY, 1000), &rules(CoreRounding::None));
    assert_billed(&f, 24000, "1000.00", "500.00", "125.00");
}

fn figures(excess: u64, average: &str, billable: &str, amount: &str) -> DayFigures {
    DayFigures {
        day: date(DAY),
        hours: 24,
        excess_core_hours: excess,
        average_excess_cores: dec(average),
        cap_cores: 500,
        billable_cores: dec(billable),
        amount: dec(amount),
        sampled: true,
        peak_shortfall_cores: 0,
        peak_shortfall_at_ms: None,
        total_core_hours: 0,
        peak_total_cores: 0,
    }
}

#[test]
fn next_line_issues_daily_then_adjustment_then_nothing() {
    let run1 = instant("2026-11-24T18:00:00Z");
    let mut issued = Issued::default();

    let billed = figures(484, "20.17", "21.00", "5.25");
    let daily = next_line("acme", &billed, &issued, "USD", run1).expect("a daily line");
    assert_eq!(daily.kind, LineKind::Daily);
    assert_eq!(daily.seq, 1);
    assert_eq!(daily.amount, dec("5.25"));
    assert_eq!(daily.idempotency_key, "acme/2026-11-24/1");
    assert_eq!(daily.currency, "USD");
    assert_eq!(daily.issued_at, run1);
    issued.add(daily.seq, daily.amount);

    // A second run with nothing new issues nothing.
    assert_eq!(next_line("acme", &billed, &issued, "USD", run1), None);

    // Late samples raise the day to 6.00: one adjustment of the difference.
    let run2 = instant("2026-11-25T18:00:00Z");
    let later = figures(576, "24.00", "24.00", "6.00");
    let adj = next_line("acme", &later, &issued, "USD", run2).expect("an adjustment");
    assert_eq!(adj.kind, LineKind::Adjustment);
    assert_eq!(adj.seq, 2);
    assert_eq!(adj.amount, dec("0.75"));
    assert_eq!(adj.idempotency_key, "acme/2026-11-24/2");
    assert_eq!(adj.issued_at, run2);
    issued.add(adj.seq, adj.amount);

    assert_eq!(next_line("acme", &later, &issued, "USD", run2), None);
}

#[test]
fn a_day_within_the_licence_is_billed_at_zero() {
    let nothing = figures(0, "0.00", "0.00", "0.00");
    let line = next_line(
        "acme",
        &nothing,
        &Issued::default(),
        "USD",
        instant("2026-11-24T18:00:00Z"),
    )
    .expect("a daily line even at zero");
    assert_eq!(line.kind, LineKind::Daily);
    assert_eq!(line.amount.to_string(), "0.00");
}

#[test]
fn an_adjustment_carries_the_difference_and_the_recomputed_figures() {
    let r = Rules::default();
    let mut samples = vec![
        sample(1, "2026-11-24T10:05:00+08:00", 100),
        sample(1, "2026-11-24T14:05:00+08:00", 100),
    ];
    let mut issued = Issued::default();

    // Billed: buckets 10 to 14 at 100 (11-13 bridged): S = 500, 20.83, 21 cores, 5.25.
    let f = one_day(&samples, &r);
    assert_billed(&f, 500, "20.83", "21.00", "5.25");
    let daily = next_line("acme", &f, &issued, "USD", instant("2026-11-24T18:00:00Z")).unwrap();
    issued.add(daily.seq, daily.amount);

    // A late 10-core sample at 12:05 splits the gap: 100 + 10 + 10 + 10 + 100 = 230;
    // 230 / 24 = 9.583...; 10 cores, 2.50. The adjustment is 2.50 - 5.25 = -2.75.
    samples.push(sample(1, "2026-11-24T12:05:00+08:00", 10));
    let f = one_day(&samples, &r);
    let adj = next_line("acme", &f, &issued, "USD", instant("2026-11-25T18:00:00Z")).unwrap();
    assert_eq!(adj.kind, LineKind::Adjustment);
    assert_eq!(adj.seq, 2);
    assert_eq!(adj.amount.to_string(), "-2.75");
    assert_eq!(adj.hours, 24);
    assert_eq!(adj.excess_core_hours, 230);
    assert_eq!(adj.average_excess_cores.to_string(), "9.58");
    assert_eq!(adj.billable_cores.to_string(), "10.00");
    assert_eq!(adj.cap_cores, 500);
    issued.add(adj.seq, adj.amount);

    // Another node's late 200 cores at 10:20: S = 430, 17.92, 18 cores, 4.50.
    // Issued so far 5.25 - 2.75 = 2.50, so the next adjustment is +2.00.
    samples.push(sample(2, "2026-11-24T10:20:00+08:00", 200));
    let f = one_day(&samples, &r);
    let adj = next_line("acme", &f, &issued, "USD", instant("2026-11-26T18:00:00Z")).unwrap();
    assert_eq!((adj.kind, adj.seq), (LineKind::Adjustment, 3));
    assert_eq!(adj.amount.to_string(), "2.00");
    assert_eq!(adj.excess_core_hours, 430);
    assert_eq!(adj.average_excess_cores.to_string(), "17.92");
    assert_eq!(adj.billable_cores.to_string(), "18.00");
    assert_eq!(adj.idempotency_key, "acme/2026-11-24/3");
}

#[test]
fn a_day_without_samples_is_not_sampled() {
    // One sample at 23:30 on the 24th. The 25th and 26th have none of their
    // own, though the 25th's figures read the 24th's last hours for bridging.
    let samples = [sample(1, "2026-11-24T23:30:00+08:00", 50)];
    let days = shanghai_days(
        "2026-11-24",
        "2026-11-26",
        &samples,
        &[],
        &[],
        &Rules::default(),
    );
    assert_eq!(
        days.iter().map(|d| (d.day, d.sampled)).collect::<Vec<_>>(),
        vec![
            (date("2026-11-24"), true),
            (date("2026-11-25"), false),
            (date("2026-11-26"), false),
        ]
    );
    assert_billed(&days[0], 50, "2.08", "3.00", "0.75");
    assert_billed(&days[1], 0, "0.00", "0.00", "0.00");
    let alone = shanghai_days(
        "2026-11-25",
        "2026-11-25",
        &samples,
        &[],
        &[],
        &Rules::default(),
    );
    assert!(!alone[0].sampled);
}

/// Why property (e) below is stated only for samples at least as large as the
/// node's largest: SPEC 5.2 bridges a gap with the *smaller* neighbour, so a
/// new, smaller sample inside a bridged gap lowers the bridged hours.
#[test]
fn a_smaller_sample_in_a_bridged_gap_lowers_the_bridged_hours() {
    // Before: 100 at 10:05 and 14:05, 11-13 bridged at 100: S = 500.
    // After a 10 at 12:05: 11 is bridged with min(100, 10), 13 with min(10, 100):
    // S = 100 + 10 + 10 + 10 + 100 = 230.
    let mut samples = vec![
        sample(1, "2026-11-24T10:05:00+08:00", 100),
        sample(1, "2026-11-24T14:05:00+08:00", 100),
    ];
    assert_eq!(one_day(&samples, &Rules::default()).excess_core_hours, 500);
    samples.push(sample(1, "2026-11-24T12:05:00+08:00", 10));
    assert_eq!(one_day(&samples, &Rules::default()).excess_core_hours, 230);
}

#[test]
fn a_spring_forward_day_has_23_hours_and_an_autumn_day_25() {
    // New York: 2026-03-08 runs 05:00Z to 04:00Z next day (23 h); 2026-11-01
    // runs 04:00Z to 05:00Z next day (25 h, 01:00-02:00 twice). One 100-core
    // sample at ten past every UTC hour lands in every bucket once.
    let ny = zone("America/New_York");
    for (day, from, hours) in [
        ("2026-03-08", "2026-03-08T05:10:00Z", 23_u32),
        ("2026-11-01", "2026-11-01T04:10:00Z", 25),
    ] {
        let start = instant(from).timestamp_millis();
        let samples: Vec<NodeSample> = (0..i64::from(hours))
            .map(|h| NodeSample {
                node: 1,
                at_ms: start + h * HOUR_MS,
                cores: 100,
            })
            .collect();
        let f = &daily_overage(
            &ny,
            date(day),
            date(day),
            &samples,
            &[],
            &[],
            &Rules::default(),
        )[0];
        assert_eq!(f.hours, hours, "{day}");
        // S = 100 x H, so the average is 100.00 whatever H is; 100 x 0.25 = 25.00.
        assert_billed(f, 100 * u64::from(hours), "100.00", "100.00", "25.00");
    }
}

#[test]
fn buckets_in_kolkata_start_at_half_past_utc() {
    let kolkata = zone("Asia/Kolkata");
    let day = date("2026-11-24");
    let s = |at: &str, cores| NodeSample {
        node: 1,
        at_ms: instant(at).timestamp_millis(),
        cores,
    };
    let r = Rules::default();
    // 10:29:59Z and 10:30:00Z are different local hours (15:59:59 and 16:00 IST).
    let apart = [s("2026-11-24T10:29:59Z", 10), s("2026-11-24T10:30:00Z", 20)];
    assert_eq!(
        daily_overage(&kolkata, day, day, &apart, &[], &[], &r)[0].excess_core_hours,
        30
    );
    // 10:30:00Z and 11:29:59Z are the same local hour: its larger sample counts.
    let together = [s("2026-11-24T10:30:00Z", 10), s("2026-11-24T11:29:59Z", 20)];
    assert_eq!(
        daily_overage(&kolkata, day, day, &together, &[], &[], &r)[0].excess_core_hours,
        20
    );
}

// ---------------------------------------------------------------------------
// Properties over generated fleets: one account, 2 or 3 days, up to three
// nodes, random licences, caps, rounding and bridging.
// ---------------------------------------------------------------------------

const ZONES: [&str; 4] = ["Asia/Shanghai", "America/New_York", "Asia/Kolkata", "UTC"];

/// First days to generate from; they include New York's 23- and 25-hour days.
const FIRST_DAYS: [&str; 6] = [
    "2026-03-07",
    "2026-03-08",
    "2026-10-31",
    "2026-11-01",
    "2026-06-20",
    "2026-11-23",
];

#[derive(Debug, Clone)]
struct Fleet {
    tz: Tz,
    first: NaiveDate,
    last: NaiveDate,
    /// Samples fall in `[from_ms, from_ms + span_ms)`: the days and 6 hours either side.
    from_ms: i64,
    span_ms: i64,
    samples: Vec<NodeSample>,
    licences: Vec<Licence>,
    caps: Vec<CapChange>,
    rules: Rules,
    price_cents: u64,
}

impl Fleet {
    fn figures(&self, samples: &[NodeSample]) -> Vec<DayFigures> {
        daily_overage(
            &BillingZone::new(self.tz),
            self.first,
            self.last,
            samples,
            &self.licences,
            &self.caps,
            &self.rules,
        )
    }

    fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.first.iter_days().take_while(|d| *d <= self.last)
    }
}

/// Local midnight at the start of `day`, straight from chrono-tz (midnight
/// exists once on every day in the zones generated here).
fn midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    tz.from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .expect("midnight happens exactly once in the zones tested")
        .with_timezone(&Utc)
}

fn day_after(day: NaiveDate) -> NaiveDate {
    day.checked_add_days(Days::new(1)).expect("date in range")
}

fn utc_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("in range")
}

fn fleet() -> impl Strategy<Value = Fleet> {
    (0..ZONES.len(), 0..FIRST_DAYS.len(), 2_u64..=3).prop_flat_map(|(z, d, days)| {
        let tz: Tz = ZONES[z].parse().expect("a zone");
        let first = date(FIRST_DAYS[d]);
        let last = first
            .checked_add_days(Days::new(days - 1))
            .expect("date in range");
        let from_ms = midnight(tz, first).timestamp_millis() - 6 * HOUR_MS;
        let to_ms = midnight(tz, day_after(last)).timestamp_millis() + 6 * HOUR_MS;
        let span_ms = to_ms - from_ms;
        let samples = proptest::collection::vec((0_u64..3, 0..span_ms, 1_u32..=400), 0..80);
        let licences =
            proptest::collection::vec((1_u32..=600, -DAY_MS..span_ms, 1..2 * DAY_MS), 0..=3);
        let caps = proptest::collection::vec((500_u32..=1200, -2 * DAY_MS..span_ms), 0..=3);
        let rounding = prop_oneof![
            Just(CoreRounding::Ceil),
            Just(CoreRounding::HalfUp),
            Just(CoreRounding::None),
        ];
        (
            Just((tz, first, last, from_ms, span_ms)),
            samples,
            licences,
            caps,
            rounding,
            0_u32..=4,
            prop_oneof![Just(25_u64), 0_u64..=1000],
        )
            .prop_map(
                |((tz, first, last, from_ms, span_ms), s, l, c, rounding, gap, price_cents)| {
                    Fleet {
                        tz,
                        first,
                        last,
                        from_ms,
                        span_ms,
                        samples: s
                            .into_iter()
                            .map(|(node, at, cores)| NodeSample {
                                node,
                                at_ms: from_ms + at,
                                cores,
                            })
                            .collect(),
                        licences: l
                            .into_iter()
                            .map(|(cores, start, len)| Licence {
                                cores,
                                start: utc_ms(from_ms + start),
                                end: utc_ms(from_ms + start + len),
                            })
                            .collect(),
                        caps: c
                            .into_iter()
                            .map(|(cores, from)| CapChange {
                                cores,
                                from: utc_ms(from_ms + from),
                            })
                            .collect(),
                        rules: Rules {
                            price_per_core_day: Decimal::new(price_cents as i64, 2),
                            rounding,
                            gap_bridge_hours: gap,
                            ..Rules::default()
                        },
                        price_cents,
                    }
                },
            )
    })
}

/// A day's figures as SPEC section 5 defines them, in integers.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    day: NaiveDate,
    hours: u32,
    excess_core_hours: u64,
    average_excess_cores: String,
    cap_cores: u32,
    billable_cores: String,
    amount: String,
}

fn hundredths(n: u64) -> String {
    format!("{}.{:02}", n / 100, n % 100)
}

/// `n / d` rounded half up, for non-negative integers.
fn half_up(n: u64, d: u64) -> u64 {
    (2 * n + d) / (2 * d)
}

/// SPEC section 5 the slow, obvious way. Every zone generated changes its
/// clocks by whole hours, so local hours always start at the same minute of
/// the UTC hour (`phase`: :00, or :30 in Kolkata), and bucket k covers
/// `[k h + phase, (k + 1) h + phase)`.
fn expected(f: &Fleet, samples: &[NodeSample]) -> Vec<Expected> {
    let offset_secs =
        f.tz.offset_from_utc_datetime(&midnight(f.tz, f.first).naive_utc())
            .fix()
            .local_minus_utc();
    let phase_ms = i64::from((-offset_secs).rem_euclid(3600)) * 1000;
    let bucket = |ms: i64| (ms - phase_ms).div_euclid(HOUR_MS);

    // 1. Each node's largest sample in each bucket.
    let mut nodes: BTreeMap<u64, BTreeMap<i64, u32>> = BTreeMap::new();
    for s in samples {
        let c = nodes
            .entry(s.node)
            .or_default()
            .entry(bucket(s.at_ms))
            .or_default();
        *c = (*c).max(s.cores);
    }
    let gap_max = i64::from(f.rules.gap_bridge_hours);

    f.days()
        .map(|day| {
            let start = midnight(f.tz, day);
            let end = midnight(f.tz, day_after(day));
            let (b0, b1) = (
                bucket(start.timestamp_millis()),
                bucket(end.timestamp_millis()),
            );
            let hours = u64::try_from(b1 - b0).expect("a day moves forward");
            let mut excess = 0_u64;
            for b in b0..b1 {
                // 2 and 3. Total cores, with short gaps bridged by the smaller neighbour.
                let mut total = 0_u64;
                for hours_of_node in nodes.values() {
                    if let Some(&c) = hours_of_node.get(&b) {
                        total += u64::from(c);
                    } else if let (Some((&p, &pc)), Some((&n, &nc))) = (
                        hours_of_node.range(..b).next_back(),
                        hours_of_node.range(b + 1..).next(),
                    ) {
                        if n - p - 1 <= gap_max {
                            total += u64::from(pc.min(nc));
                        }
                    }
                }
                // 4. Licences whose period overlaps the bucket at all.
                let (bs, be) = (b * HOUR_MS + phase_ms, (b + 1) * HOUR_MS + phase_ms);
                let licensed: u64 = f
                    .licences
                    .iter()
                    .filter(|l| l.start.timestamp_millis() < be && l.end.timestamp_millis() > bs)
                    .map(|l| u64::from(l.cores))
                    .sum();
                // 5. Only cores above the licence count.
                excess += total.saturating_sub(licensed);
            }
            // 6. The last cap set before the next midnight; of two at one instant, the later given.
            let mut cap_cores = f.rules.default_cap_cores;
            let mut cap_from: Option<DateTime<Utc>> = None;
            for c in &f.caps {
                if c.from < end && cap_from.is_none_or(|t| c.from >= t) {
                    cap_cores = c.cores;
                    cap_from = Some(c.from);
                }
            }
            // 7 to 9.
            let billable_core_hours = excess.min(u64::from(cap_cores) * hours);
            let (billable_hundredths, amount_cents) = match f.rules.rounding {
                CoreRounding::Ceil => {
                    let cores = billable_core_hours.div_ceil(hours);
                    (cores * 100, cores * f.price_cents)
                }
                CoreRounding::HalfUp => {
                    let cores = half_up(billable_core_hours, hours);
                    (cores * 100, cores * f.price_cents)
                }
                CoreRounding::None => (
                    half_up(billable_core_hours * 100, hours),
                    half_up(billable_core_hours * f.price_cents, hours),
                ),
            };
            Expected {
                day,
                hours: u32::try_from(hours).expect("few hours"),
                excess_core_hours: excess,
                average_excess_cores: hundredths(half_up(excess * 100, hours)),
                cap_cores,
                billable_cores: hundredths(billable_hundredths),
                amount: hundredths(amount_cents),
            }
        })
        .collect()
}

fn as_expected(figures: &[DayFigures]) -> Vec<Expected> {
    figures
        .iter()
        .map(|f| Expected {
            day: f.day,
            hours: f.hours,
            excess_core_hours: f.excess_core_hours,
            average_excess_cores: f.average_excess_cores.to_string(),
            cap_cores: f.cap_cores,
            billable_cores: f.billable_cores.to_string(),
            amount: f.amount.to_string(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// (a) Samples arrive in any order; the bill does not depend on it.
    #[test]
    fn the_order_of_samples_never_changes_the_figures(
        (f, shuffled) in fleet().prop_flat_map(|f| {
            let samples = f.samples.clone();
            (Just(f), Just(samples).prop_shuffle())
        })
    ) {
        prop_assert_eq!(f.figures(&f.samples), f.figures(&shuffled));
    }

    /// (b) Delivery is at least once: a sample stored twice counts once.
    #[test]
    fn a_duplicate_sample_never_changes_the_figures(f in fleet(), which in any::<Index>()) {
        prop_assume!(!f.samples.is_empty());
        let mut twice = f.samples.clone();
        twice.push(*which.get(&f.samples));
        prop_assert_eq!(f.figures(&f.samples), f.figures(&twice));
    }

    /// (c) The amount is never negative and never above cap x price. Prices
    /// are whole cents here: with a sub-cent price, cap x price itself rounds
    /// half up to the cent (507 x 0.025 = 12.675 bills 12.68), as SPEC 5.9 says.
    #[test]
    fn the_amount_never_exceeds_cap_times_price_and_is_never_negative(f in fleet()) {
        for d in f.figures(&f.samples) {
            prop_assert!(d.amount >= Decimal::ZERO, "{} amount {}", d.day, d.amount);
            let ceiling = Decimal::from(d.cap_cores) * f.rules.price_per_core_day;
            prop_assert!(d.amount <= ceiling, "{} amount {} above {}", d.day, d.amount, ceiling);
        }
    }

    /// (d) No more cores are billed than the cap allows.
    #[test]
    fn billable_cores_never_exceed_the_cap(f in fleet()) {
        for d in f.figures(&f.samples) {
            prop_assert!(
                d.billable_cores <= Decimal::from(d.cap_cores),
                "{} billable {} above cap {}", d.day, d.billable_cores, d.cap_cores
            );
            prop_assert!(d.billable_cores >= Decimal::ZERO);
        }
    }

    /// (e) More cores seen never bill fewer core-hours, as long as the new
    /// sample is at least as large as anything its node has reported; see
    /// `a_smaller_sample_in_a_bridged_gap_lowers_the_bridged_hours` for why
    /// the condition is needed.
    #[test]
    fn a_sample_at_least_as_large_as_its_nodes_largest_never_lowers_excess(
        f in fleet(),
        node in 0_u64..4,
        at in any::<Index>(),
        cores in 1_u32..=400,
    ) {
        let largest = f.samples.iter().filter(|s| s.node == node).map(|s| s.cores).max();
        let extra = NodeSample {
            node,
            at_ms: f.from_ms + at.index(usize::try_from(f.span_ms).expect("span fits")) as i64,
            cores: cores.max(largest.unwrap_or(0)),
        };
        let before = f.figures(&f.samples);
        let mut more = f.samples.clone();
        more.push(extra);
        let after = f.figures(&more);
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(
                a.excess_core_hours >= b.excess_core_hours,
                "{}: {} -> {} after {:?}", b.day, b.excess_core_hours, a.excess_core_hours, extra
            );
        }
    }

    /// (f) The days are the zone's local days, one after another, and together
    /// hold every hour bucket from the first midnight to the last.
    #[test]
    fn the_days_hold_23_to_25_hours_and_together_every_bucket(f in fleet()) {
        let figures = f.figures(&f.samples);
        let days: Vec<NaiveDate> = f.days().collect();
        prop_assert_eq!(figures.iter().map(|d| d.day).collect::<Vec<_>>(), days);
        let span = midnight(f.tz, day_after(f.last)) - midnight(f.tz, f.first);
        let total: i64 = figures.iter().map(|d| i64::from(d.hours)).sum();
        prop_assert_eq!(total, span.num_hours());
        // No node can add more to a bucket than the largest it reported.
        let mut largest: BTreeMap<u64, u32> = BTreeMap::new();
        for s in &f.samples {
            let c = largest.entry(s.node).or_default();
            *c = (*c).max(s.cores);
        }
        let fleet_max: u64 = largest.values().map(|&c| u64::from(c)).sum();
        for d in &figures {
            prop_assert!((23..=25).contains(&d.hours), "{} has {} hours", d.day, d.hours);
            let own = midnight(f.tz, day_after(d.day)) - midnight(f.tz, d.day);
            prop_assert_eq!(i64::from(d.hours), own.num_hours(), "{}", d.day);
            prop_assert!(d.excess_core_hours <= u64::from(d.hours) * fleet_max);
            prop_assert_eq!(
                d.average_excess_cores.to_string(),
                hundredths(half_up(d.excess_core_hours * 100, u64::from(d.hours)))
            );
        }
    }

    /// Everything at once: the figures equal SPEC section 5 worked out in
    /// plain integers, bucket by bucket.
    #[test]
    fn the_figures_follow_spec_section_5_step_by_step(f in fleet()) {
        prop_assert_eq!(as_expected(&f.figures(&f.samples)), expected(&f, &f.samples));
    }
}
