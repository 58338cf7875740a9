//! A generator of large replay cases: a simulated fleet of nodes sampling every hour, for benchmarks and soak tests.

use std::fmt::Write;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;

/// The shape of a simulated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub nodes: u32,
    pub days: u32,
    pub accounts: u32,
    pub first_day: NaiveDate,
    pub timezone: Tz,
    pub seed: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            nodes: 10_000,
            days: 3,
            accounts: 1,
            first_day: NaiveDate::from_ymd_opt(2026, 11, 20).expect("valid date"),
            timezone: chrono_tz::Asia::Shanghai,
            seed: 1,
        }
    }
}

/// A small deterministic generator (SplitMix64): the same seed gives the same fleet.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every node samples once an hour at its own minute; one in twenty doubles
/// its cores for a stretch of the day, one in fifty misses an hour now and
/// then. Each account licenses about half its cores. Billing runs at 02:00
/// after each day.
pub fn generate(f: &Fleet) -> String {
    let mut rng = SplitMix(f.seed);
    let local_midnight =
        |d: NaiveDate| -> DateTime<Utc> { shared::zone::BillingZone::new(f.timezone).day_start(d) };
    let start = local_midnight(f.first_day);
    let end = local_midnight(
        f.first_day
            .checked_add_days(Days::new(u64::from(f.days)))
            .expect("date in range"),
    );
    let mut out = String::with_capacity(f.nodes as usize * f.days as usize * 24 * 120 + 4096);
    let _ = write!(
        out,
        r#"{{"name":"fleet-{}n-{}d","settings":{{"timezone":"{}"}},"accounts":["#,
        f.nodes,
        f.days,
        f.timezone.name()
    );
    let mut node_cores = Vec::with_capacity(f.nodes as usize);
    for _ in 0..f.nodes {
        node_cores.push([2u32, 4, 8, 16, 32, 64][rng.below(6) as usize]);
    }
    for a in 0..f.accounts {
        let total: u32 = node_cores
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % f.accounts == a)
            .map(|(_, c)| c)
            .sum();
        let _ = write!(
            out,
            r#"{}{{"id":"acct-{a}","licenses":[{{"cores":{},"start":"{}","end":"{}"}}],"caps":[{{"cores":{},"from":"{}"}}]}}"#,
            if a == 0 { "" } else { "," },
            (total / 2).max(1),
            rfc(start - TimeDelta::days(30)),
            rfc(end + TimeDelta::days(30)),
            (total / 4).max(500),
            rfc(start - TimeDelta::days(30)),
        );
    }
    out.push_str(r#"],"samples":["#);
    let mut first = true;
    for (n, &cores) in node_cores.iter().enumerate() {
        let account = n as u32 % f.accounts;
        let minute = rng.below(60);
        let bursty = rng.below(20) == 0;
        let flaky = rng.below(50) == 0;
        let mut at = start + TimeDelta::minutes(minute as i64);
        while at < end {
            let skip = flaky && rng.below(6) == 0;
            if !skip {
                let c = if bursty && rng.below(3) == 0 {
                    cores * 2
                } else {
                    cores
                };
                let _ = write!(
                    out,
                    r#"{}{{"account":"acct-{account}","cluster":"c{}","node":"node-{n}","cores":{c},"at":"{}"}}"#,
                    if first { "" } else { "," },
                    n % 7,
                    rfc(at)
                );
                first = false;
            }
            at += TimeDelta::hours(1);
        }
    }
    out.push_str(r#"],"runs":["#);
    for d in 1..=f.days {
        let day = f
            .first_day
            .checked_add_days(Days::new(u64::from(d)))
            .expect("date in range");
        let run = local_midnight(day) + TimeDelta::hours(2);
        let _ = write!(out, r#"{}"{}""#, if d == 1 { "" } else { "," }, rfc(run));
    }
    out.push_str("]}\n");
    out
}

fn rfc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
