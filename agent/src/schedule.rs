//! When to sample: once at start, then once per interval at a per-node offset that is stable across restarts.

use chrono::{DateTime, TimeDelta, Utc};

/// The node's offset into each interval, in seconds: a hash of its name,
/// spread over the first `spread_secs` of the interval (clamped to the
/// interval). FNV-1a is fixed by its definition, so the offset is the same on
/// every start and every build.
pub fn offset_secs(node: &str, spread_secs: u64, interval_secs: u64) -> u64 {
    let window = spread_secs.min(interval_secs).max(1);
    fnv1a(node.as_bytes()) % window
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The first sampling instant after `now`: the next instant that lies
/// `offset_secs` into an interval counted from the Unix epoch (for an hour:
/// that many seconds past the hour, UTC).
pub fn next_tick(now: DateTime<Utc>, interval_secs: u64, offset_secs: u64) -> DateTime<Utc> {
    let interval = i64::try_from(interval_secs.max(1)).expect("interval fits");
    let offset = i64::try_from(offset_secs).expect("offset fits") % interval;
    let t = now.timestamp();
    let mut next = (t - offset).div_euclid(interval) * interval + offset;
    while next <= t {
        next += interval;
    }
    DateTime::from_timestamp(next, 0).expect("in range")
}

/// How long to wait from `now` until `at` (zero if it has passed).
pub fn wait(now: DateTime<Utc>, at: DateTime<Utc>) -> std::time::Duration {
    (at - now)
        .max(TimeDelta::zero())
        .to_std()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_nodes_offset_is_the_same_every_time() {
        let first = offset_secs("ip-10-0-3-17.ec2.internal", 600, 3600);
        for _ in 0..3 {
            assert_eq!(offset_secs("ip-10-0-3-17.ec2.internal", 600, 3600), first);
        }
        assert!(first < 600);
        // Pinned: a change of hash would move every node's minute.
        assert_eq!(offset_secs("node-1", 600, 3600), fnv1a(b"node-1") % 600);
    }

    #[test]
    fn a_thousand_nodes_spread_over_the_window() {
        // Ten one-minute slots of the default 10-minute window: each gets 100
        // nodes on average; none is empty or more than half again as full.
        let mut slots = [0u32; 10];
        for i in 0..1000 {
            let o = offset_secs(&format!("node-{i}"), 600, 3600);
            assert!(o < 600);
            slots[(o / 60) as usize] += 1;
        }
        assert!(slots.iter().all(|&n| (50..=150).contains(&n)), "{slots:?}");
        let distinct: std::collections::HashSet<u64> = (0..1000)
            .map(|i| offset_secs(&format!("node-{i}"), 600, 3600))
            .collect();
        // 1,000 uniform draws from 600 seconds give 487 distinct values on average.
        assert!(
            distinct.len() >= 450,
            "only {} distinct offsets",
            distinct.len()
        );
    }

    #[test]
    fn the_window_never_exceeds_the_interval() {
        for i in 0..100 {
            assert!(offset_secs(&format!("n{i}"), 600, 2) < 2);
        }
    }

    #[test]
    fn the_next_tick_is_the_offset_past_the_next_hour() {
        assert_eq!(
            next_tick(utc("2026-11-24T10:00:00Z"), 3600, 125),
            utc("2026-11-24T10:02:05Z")
        );
        assert_eq!(
            next_tick(utc("2026-11-24T10:02:05Z"), 3600, 125),
            utc("2026-11-24T11:02:05Z")
        );
        assert_eq!(
            next_tick(utc("2026-11-24T10:59:59Z"), 3600, 125),
            utc("2026-11-24T11:02:05Z")
        );
        assert_eq!(
            next_tick(utc("2026-11-24T10:00:00Z"), 3600, 0),
            utc("2026-11-24T11:00:00Z")
        );
    }
}
