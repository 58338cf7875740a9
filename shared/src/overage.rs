//! The daily overage of SPEC section 5: node-hours, gap bridging, licences, the cap, rounding.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{cents, div_round_half_up};
use crate::zone::{BillingZone, Timeline};

/// Days a licence keeps counting after its end (SPEC section 8).
pub const LICENCE_GRACE_DAYS: i64 = 5;

/// The smallest elastic cap an account may have, in cores.
pub const CAP_MIN_CORES: u32 = 500;

/// How the capped daily average becomes the billed whole cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreRounding {
    /// Round any fraction up to a whole core (the default: cores are sold whole).
    #[default]
    Ceil,
    /// Round half up to a whole core.
    HalfUp,
    /// Bill the exact average.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("billable_core_rounding {0:?} is not one of ceil, half_up, none")]
pub struct UnknownRounding(pub String);

impl FromStr for CoreRounding {
    type Err = UnknownRounding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ceil" => Ok(CoreRounding::Ceil),
            "half_up" => Ok(CoreRounding::HalfUp),
            "none" => Ok(CoreRounding::None),
            other => Err(UnknownRounding(other.to_string())),
        }
    }
}

/// A configuration that breaks a rule of SPEC section 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("cap {cores} is below the minimum of {min} cores", min = CAP_MIN_CORES)]
    CapBelowMinimum { cores: u32 },
    #[error("price_per_core_day {0} must not be negative")]
    NegativePrice(Decimal),
    #[error("licence cores {0} must be from 1 to 1,000,000")]
    LicenceCores(u32),
    #[error("elastic cap {cores} cores is over the largest of 1,000,000")]
    CapAboveMaximum { cores: u32 },
    #[error("licence ends ({end}) before it starts ({start})")]
    LicencePeriod {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("gap_bridge_hours {0} is more than the 24 allowed")]
    GapBridgeTooLong(u32),
}

/// The settings that turn samples into a bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub price_per_core_day: Decimal,
    pub rounding: CoreRounding,
    /// Missing hours between two samples of a node that are filled in (default 3).
    pub gap_bridge_hours: u32,
    /// The cap of an account that never set one.
    pub default_cap_cores: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            price_per_core_day: Decimal::new(25, 2),
            rounding: CoreRounding::Ceil,
            gap_bridge_hours: 3,
            default_cap_cores: CAP_MIN_CORES,
        }
    }
}

impl Rules {
    /// Checks the rules against SPEC section 2.
    pub fn check(&self) -> Result<(), RuleError> {
        check_cap(self.default_cap_cores)?;
        if self.price_per_core_day.is_sign_negative() && !self.price_per_core_day.is_zero() {
            return Err(RuleError::NegativePrice(self.price_per_core_day));
        }
        if self.gap_bridge_hours > 24 {
            return Err(RuleError::GapBridgeTooLong(self.gap_bridge_hours));
        }
        Ok(())
    }

    /// How many buckets beyond a day's own can change its figures (through bridging).
    pub fn reach_hours(&self) -> u32 {
        self.gap_bridge_hours + 1
    }
}

/// An elastic cap must be at least [`CAP_MIN_CORES`].
pub fn check_cap(cores: u32) -> Result<u32, RuleError> {
    if cores < CAP_MIN_CORES {
        Err(RuleError::CapBelowMinimum { cores })
    } else if u64::from(cores) > crate::domain::TOTAL_CORES_MAX {
        Err(RuleError::CapAboveMaximum { cores })
    } else {
        Ok(cores)
    }
}

/// One node's core count at one instant. `node` is any number unique to the
/// node within the account (the store's node id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSample {
    pub node: u64,
    pub at_ms: i64,
    pub cores: u32,
}

/// Licensed cores counting over `[start, end)` (grace included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Licence {
    pub cores: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Licence {
    pub fn new(cores: u32, start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Licence, RuleError> {
        if crate::domain::check_total_cores(u64::from(cores)).is_err() {
            return Err(RuleError::LicenceCores(cores));
        }
        if end < start {
            return Err(RuleError::LicencePeriod { start, end });
        }
        Ok(Licence { cores, start, end })
    }
}

/// An elastic cap in force from an instant until the next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapChange {
    pub cores: u32,
    pub from: DateTime<Utc>,
}

/// The cap in force at the end of a day: the last change before `day_end`,
/// in the order given when two share an instant.
pub fn cap_at_day_end(caps: &[CapChange], day_end: DateTime<Utc>, default_cores: u32) -> u32 {
    caps.iter()
        .enumerate()
        .filter(|(_, c)| c.from < day_end)
        .max_by_key(|(i, c)| (c.from, *i))
        .map_or(default_cores, |(_, c)| c.cores)
}

/// A day's overage, as billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayFigures {
    pub day: NaiveDate,
    pub hours: u32,
    /// S: the sum over the day's buckets of cores above the licence.
    pub excess_core_hours: u64,
    /// S / H, half up to two places.
    pub average_excess_cores: Decimal,
    pub cap_cores: u32,
    /// The capped average as billed (two places).
    pub billable_cores: Decimal,
    pub amount: Decimal,
    /// Whether any sample falls in the day's own buckets (a day without one is not billed).
    pub sampled: bool,
    /// The largest T(b) - L(b) of the day's billed hours (0 when the
    /// licence always covered the total), and the start of the first hour
    /// that reached it: what a `licence_short` notice reports.
    pub peak_shortfall_cores: u64,
    pub peak_shortfall_at_ms: Option<i64>,
    /// The sum over the day's buckets of T(b), the account's total cores
    /// (bridged hours included): what a usage chart averages over `hours`.
    pub total_core_hours: u64,
    /// The largest T(b) of the day.
    pub peak_total_cores: u64,
}

/// Steps 7 to 9: from excess core-hours, hours and cap to the billed figures.
pub fn price_day(
    excess_core_hours: u64,
    hours: u32,
    cap_cores: u32,
    rules: &Rules,
) -> (Decimal, Decimal, Decimal) {
    assert!(hours > 0, "a day has hours");
    let h = u64::from(hours);
    let billable_core_hours = excess_core_hours.min(u64::from(cap_cores) * h);
    let average = div_round_half_up(Decimal::from(excess_core_hours), h, 2);
    let (billable, amount) = match rules.rounding {
        CoreRounding::Ceil => {
            let cores = Decimal::from(billable_core_hours.div_ceil(h));
            (cores, cents(cores * rules.price_per_core_day))
        }
        CoreRounding::HalfUp => {
            let cores = div_round_half_up(Decimal::from(billable_core_hours), h, 0);
            (cores, cents(cores * rules.price_per_core_day))
        }
        CoreRounding::None => (
            div_round_half_up(Decimal::from(billable_core_hours), h, 2),
            div_round_half_up(
                Decimal::from(billable_core_hours) * rules.price_per_core_day,
                h,
                2,
            ),
        ),
    };
    let mut billable = billable;
    billable.rescale(2);
    assert!(
        billable <= Decimal::from(cap_cores),
        "billable cores never exceed the cap"
    );
    assert!(
        !amount.is_sign_negative() || amount.is_zero(),
        "a day's amount is never negative"
    );
    (average, billable, amount)
}

/// One node's cores in one bucket of a timeline: the largest it sampled
/// there, or, in a short gap, the smaller of its neighbours (`bridged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHour {
    pub node: u64,
    pub bucket: usize,
    pub cores: u32,
    pub bridged: bool,
}

/// Steps 1 and 2 of SPEC section 5: every node's hours, sampled and bridged,
/// ordered by node and bucket. Samples outside the timeline are ignored.
pub fn node_hours(
    timeline: &Timeline,
    samples: &[NodeSample],
    gap_bridge_hours: u32,
) -> Vec<NodeHour> {
    // Sorting by (node, bucket) puts every node's hours together and in order.
    let mut hours: Vec<(u64, usize, u32)> = samples
        .iter()
        .filter_map(|s| timeline.bucket_of(s.at_ms).map(|b| (s.node, b, s.cores)))
        .collect();
    hours.sort_unstable();
    let mut sampled: Vec<(u64, usize, u32)> = Vec::with_capacity(hours.len());
    for (node, b, cores) in hours {
        match sampled.last_mut() {
            Some(last) if last.0 == node && last.1 == b => last.2 = last.2.max(cores),
            _ => sampled.push((node, b, cores)),
        }
    }
    let gap_max = gap_bridge_hours as usize;
    let mut out = Vec::with_capacity(sampled.len());
    for (i, &(node, bucket, cores)) in sampled.iter().enumerate() {
        out.push(NodeHour {
            node,
            bucket,
            cores,
            bridged: false,
        });
        if let Some(&(next_node, nb, next_cores)) = sampled.get(i + 1) {
            if next_node == node && (1..=gap_max).contains(&(nb - bucket - 1)) {
                let fill = cores.min(next_cores);
                out.extend((bucket + 1..nb).map(|b| NodeHour {
                    node,
                    bucket: b,
                    cores: fill,
                    bridged: true,
                }));
            }
        }
    }
    out
}

/// Step 4: the licensed cores of each bucket; a licence counts in every
/// bucket it overlaps at all, and an empty period overlaps nothing.
pub fn licensed_per_bucket(timeline: &Timeline, licences: &[Licence]) -> Vec<u64> {
    let mut licensed = vec![0u64; timeline.len()];
    for l in licences.iter().filter(|l| l.end > l.start) {
        let (start, end) = (l.start.timestamp_millis(), l.end.timestamp_millis());
        for (b, lic) in licensed.iter_mut().enumerate() {
            let (bs, be) = timeline.bucket_bounds_ms(b);
            if start < be && end > bs {
                *lic += u64::from(l.cores);
            }
        }
    }
    licensed
}

/// The daily overage of every day in `first..=last` for one account (see [`overage_on`]).
pub fn daily_overage(
    zone: &BillingZone,
    first: NaiveDate,
    last: NaiveDate,
    samples: &[NodeSample],
    licences: &[Licence],
    caps: &[CapChange],
    rules: &Rules,
) -> Vec<DayFigures> {
    let timeline = Timeline::new(zone, first, last, rules.reach_hours());
    overage_on(zone, &timeline, samples, licences, caps, rules)
}

/// The daily overage of every day of `timeline` for one account, from its
/// samples (those outside the timeline's span are ignored), licences and caps.
/// Build the timeline with a margin of `rules.reach_hours()` and pass every
/// sample in its span, or bridging at the edges is lost.
pub fn overage_on(
    zone: &BillingZone,
    timeline: &Timeline,
    samples: &[NodeSample],
    licences: &[Licence],
    caps: &[CapChange],
    rules: &Rules,
) -> Vec<DayFigures> {
    overage_with(zone, timeline, samples, licences, caps, &[], rules)
}

/// A stretch of time `[start, end)`.
pub type Period = (DateTime<Utc>, DateTime<Utc>);

/// The buckets that overlap any of `periods` (`[start, end)` instants) at all.
pub fn buckets_overlapping(
    timeline: &Timeline,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Vec<bool> {
    let mut hit = vec![false; timeline.len()];
    for &(start, end) in periods.iter().filter(|(s, e)| e > s) {
        let (start, end) = (start.timestamp_millis(), end.timestamp_millis());
        for (b, h) in hit.iter_mut().enumerate() {
            let (bs, be) = timeline.bucket_bounds_ms(b);
            if start < be && end > bs {
                *h = true;
            }
        }
    }
    hit
}

/// [`overage_on`] for an account some of whose hours are not billed (SPEC
/// section 8: a trial's, and those while the service is stopped): a bucket
/// that overlaps an `unbilled` period at all has no excess.
pub fn overage_with(
    zone: &BillingZone,
    timeline: &Timeline,
    samples: &[NodeSample],
    licences: &[Licence],
    caps: &[CapChange],
    unbilled: &[Period],
    rules: &Rules,
) -> Vec<DayFigures> {
    let n = timeline.len();
    let free = buckets_overlapping(timeline, unbilled);
    // 1 to 3: node-hours, bridged, added into the account's total per bucket.
    let mut total = vec![0u64; n];
    let mut sampled = vec![false; n];
    for h in node_hours(timeline, samples, rules.gap_bridge_hours) {
        total[h.bucket] += u64::from(h.cores);
        sampled[h.bucket] |= !h.bridged;
    }
    // 4. Licensed cores.
    let licensed = licensed_per_bucket(timeline, licences);

    // 5 to 9, day by day.
    timeline
        .days()
        // A day a zone skipped altogether (Pacific/Apia, 2011-12-30) has no hours to bill.
        .filter(|(_, range)| !range.is_empty())
        .map(|(day, range)| {
            let hours = u32::try_from(range.len()).expect("a day has few hours");
            let short = |b: usize| {
                if free[b] {
                    0
                } else {
                    total[b].saturating_sub(licensed[b])
                }
            };
            let excess: u64 = range.clone().map(short).sum();
            let peak = range
                .clone()
                .map(|b| (short(b), std::cmp::Reverse(b)))
                .max()
                .filter(|(cores, _)| *cores > 0);
            let cap_cores = cap_at_day_end(caps, zone.day_end(day), rules.default_cap_cores);
            let (average, billable, amount) = price_day(excess, hours, cap_cores, rules);
            let total_core_hours = range.clone().map(|b| total[b]).sum();
            let peak_total_cores = range.clone().map(|b| total[b]).max().unwrap_or(0);
            DayFigures {
                day,
                hours,
                excess_core_hours: excess,
                average_excess_cores: average,
                cap_cores,
                billable_cores: billable,
                amount,
                sampled: range.into_iter().any(|b| sampled[b]),
                peak_shortfall_cores: peak.map_or(0, |(cores, _)| cores),
                peak_shortfall_at_ms: peak.map(|(_, b)| timeline.bucket_bounds_ms(b.0).0),
                total_core_hours,
                peak_total_cores,
            }
        })
        .collect()
}
