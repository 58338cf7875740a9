//! Hours and days in the billing time zone: hour buckets, local days of 23, 24 or 25 hours, and the 02:00 due time.

use chrono::{
    DateTime, Days, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// The hour at which a day's bill falls due, on the day after it.
pub const BILLING_HOUR: u32 = 2;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?} (expected an IANA name such as Asia/Shanghai)")]
pub struct UnknownZone(pub String);

/// An IANA time zone in which hours and days are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingZone(Tz);

impl Default for BillingZone {
    fn default() -> Self {
        BillingZone(chrono_tz::Asia::Shanghai)
    }
}

impl std::str::FromStr for BillingZone {
    type Err = UnknownZone;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        name.parse::<Tz>()
            .map(BillingZone)
            .map_err(|_| UnknownZone(name.to_string()))
    }
}

impl BillingZone {
    pub fn new(tz: Tz) -> Self {
        BillingZone(tz)
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    pub fn tz(&self) -> Tz {
        self.0
    }

    fn offset_secs(&self, at: DateTime<Utc>) -> i32 {
        self.0
            .offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The local wall-clock time of an instant.
    pub fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.0).naive_local()
    }

    /// The first instant whose local time is at or after `local`: the instant
    /// itself when it exists once, the earlier one when the clocks go back, and
    /// the end of the gap when the clocks skip it.
    pub fn first_instant_at_or_after(&self, local: NaiveDateTime) -> DateTime<Utc> {
        if let Some(t) = self.0.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
        // `local` falls in a gap. The gap ends at the instant that the offset in
        // force just before it maps to `local`; find that offset by stepping back
        // to a wall time that exists. Gaps last at most a day, so this is bounded.
        let mut probe = local;
        for _ in 0..(4 * 48) {
            probe -= TimeDelta::minutes(15);
            if let Some(t) = self.0.from_local_datetime(&probe).latest() {
                let offset = TimeDelta::seconds(i64::from(t.offset().fix().local_minus_utc()));
                return (local - offset).and_utc();
            }
        }
        panic!(
            "time zone {} has a gap of over 48 hours at {local}",
            self.name()
        );
    }

    /// The local day an instant belongs to.
    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        self.local(at).date()
    }

    /// The first instant of a local day (local midnight, or the first instant after it).
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        self.first_instant_at_or_after(day.and_time(NaiveTime::MIN))
    }

    /// The first instant after a local day: the start of the next one.
    pub fn day_end(&self, day: NaiveDate) -> DateTime<Utc> {
        self.day_start(next_day(day))
    }

    /// When the bill for `day` falls due: the first instant at or after 02:00
    /// local time on the next day (03:00 on a spring-forward day without 02:00).
    pub fn due_at(&self, day: NaiveDate) -> DateTime<Utc> {
        let two = NaiveTime::from_hms_opt(BILLING_HOUR, 0, 0).expect("02:00 is a valid time");
        self.first_instant_at_or_after(next_day(day).and_time(two))
    }

    /// The latest day whose bill is due at `now`.
    pub fn last_due_day(&self, now: DateTime<Utc>) -> NaiveDate {
        let yesterday = prev_day(self.day_of(now));
        if self.due_at(yesterday) <= now {
            yesterday
        } else {
            prev_day(yesterday)
        }
    }

    /// The first day whose bill is not yet due at `at`.
    pub fn first_day_not_due(&self, at: DateTime<Utc>) -> NaiveDate {
        next_day(self.last_due_day(at))
    }

    /// The start of the hour bucket that holds `at`: the instant the local
    /// wall-clock hour of `at` began, or the clock change inside that hour when
    /// there was one (the repeated hour of a fall-back day is its own bucket).
    pub fn bucket_start(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let offset = self.offset_secs(at);
        let local = self.local(at);
        let into_hour = TimeDelta::seconds(i64::from(local.minute() * 60 + local.second()))
            + TimeDelta::nanoseconds(i64::from(local.nanosecond()));
        let candidate = at - into_hour;
        if self.offset_secs(candidate) == offset {
            return candidate;
        }
        // The offset changed within this wall-clock hour: the bucket starts at
        // the change. Bisect for it to the second.
        let (mut before, mut after) = (candidate.timestamp(), at.timestamp());
        while after - before > 1 {
            let mid = before + (after - before) / 2;
            let probe = DateTime::from_timestamp(mid, 0).expect("in range");
            if self.offset_secs(probe) == offset {
                after = mid;
            } else {
                before = mid;
            }
        }
        DateTime::from_timestamp(after, 0).expect("in range")
    }

    /// The bucket starts that cover `[from, to)`, in order; the first one holds `from`.
    pub fn buckets(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut bucket = self.bucket_start(from);
        while bucket < to {
            out.push(bucket);
            let next = self.bucket_start(bucket + TimeDelta::hours(1));
            assert!(next > bucket, "hour buckets must advance");
            bucket = next;
        }
        out
    }

    /// How many hour buckets a local day holds: 24, or 23 and 25 on clock-change days.
    pub fn hours_in_day(&self, day: NaiveDate) -> usize {
        self.buckets(self.day_start(day), self.day_end(day)).len()
    }
}

pub fn next_day(day: NaiveDate) -> NaiveDate {
    day.checked_add_days(Days::new(1)).expect("date in range")
}

pub fn prev_day(day: NaiveDate) -> NaiveDate {
    day.checked_sub_days(Days::new(1)).expect("date in range")
}

/// The hour buckets of a stretch of days, with room on both sides for gap
/// bridging, so the overage of those days can be computed by bucket index.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Bucket starts in Unix milliseconds, ascending; the last entry is the end of the last bucket.
    bounds_ms: Vec<i64>,
    first_day: NaiveDate,
    /// For each day from `first_day`, the index of its first bucket; one more entry marks the end.
    day_starts: Vec<usize>,
}

impl Timeline {
    /// The buckets of `first_day..=last_day` plus `margin_hours` buckets on each side.
    pub fn new(
        zone: &BillingZone,
        first_day: NaiveDate,
        last_day: NaiveDate,
        margin_hours: u32,
    ) -> Timeline {
        assert!(first_day <= last_day, "a timeline needs at least one day");
        let margin = TimeDelta::hours(i64::from(margin_hours));
        let start = zone.day_start(first_day);
        let end = zone.day_end(last_day);
        let mut bounds: Vec<i64> = zone
            .buckets(start - margin, end + margin)
            .into_iter()
            .map(|b| b.timestamp_millis())
            .collect();
        let last_start = *bounds.last().expect("a day has buckets");
        bounds.push(
            zone.bucket_start(
                DateTime::from_timestamp_millis(last_start + HOUR_MS).expect("in range"),
            )
            .timestamp_millis(),
        );
        let mut day_starts = Vec::new();
        let mut day = first_day;
        loop {
            let at = zone.day_start(day).timestamp_millis();
            day_starts.push(bounds.partition_point(|&b| b < at));
            if day > last_day {
                break;
            }
            day = next_day(day);
        }
        Timeline {
            bounds_ms: bounds,
            first_day,
            day_starts,
        }
    }

    pub fn len(&self) -> usize {
        self.bounds_ms.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The span `[start, end)` in Unix milliseconds that the timeline covers.
    pub fn span_ms(&self) -> (i64, i64) {
        (self.bounds_ms[0], self.bounds_ms[self.bounds_ms.len() - 1])
    }

    /// The index of the bucket holding `at_ms`, if the timeline covers it.
    pub fn bucket_of(&self, at_ms: i64) -> Option<usize> {
        let (start, end) = self.span_ms();
        if at_ms < start || at_ms >= end {
            return None;
        }
        Some(self.bounds_ms.partition_point(|&b| b <= at_ms) - 1)
    }

    /// Start and end of bucket `i` in Unix milliseconds.
    pub fn bucket_bounds_ms(&self, i: usize) -> (i64, i64) {
        (self.bounds_ms[i], self.bounds_ms[i + 1])
    }

    /// The days covered, each with the range of its bucket indices.
    pub fn days(&self) -> impl Iterator<Item = (NaiveDate, std::ops::Range<usize>)> + '_ {
        self.day_starts.windows(2).enumerate().map(|(i, w)| {
            let day = self
                .first_day
                .checked_add_days(Days::new(i as u64))
                .expect("date in range");
            (day, w[0]..w[1])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> BillingZone {
        name.parse().unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn an_ordinary_day_has_24_hours_and_is_due_at_0200_the_next_day() {
        let z = zone("Asia/Shanghai");
        assert_eq!(z.hours_in_day(date("2026-11-24")), 24);
        assert_eq!(z.due_at(date("2026-11-24")), utc("2026-11-24T18:00:00Z"));
    }

    #[test]
    fn the_spring_forward_day_has_23_hours_and_the_autumn_day_25() {
        let z = zone("America/New_York");
        assert_eq!(z.hours_in_day(date("2026-03-08")), 23);
        assert_eq!(z.hours_in_day(date("2026-11-01")), 25);
        assert_eq!(z.hours_in_day(date("2026-11-02")), 24);
    }

    #[test]
    fn a_bill_due_at_a_skipped_0200_is_due_at_0300() {
        // Europe/Berlin skips 02:00-03:00 on 2026-03-29; the day before is due then.
        let z = zone("Europe/Berlin");
        assert_eq!(z.due_at(date("2026-03-28")), utc("2026-03-29T01:00:00Z"));
        assert_eq!(z.local(z.due_at(date("2026-03-28"))).time().hour(), 3);
    }

    #[test]
    fn a_bill_due_at_a_repeated_0200_is_due_at_its_first_occurrence() {
        // Europe/Berlin falls back from 03:00 to 02:00 on 2026-10-25: 02:00 happens twice.
        let z = zone("Europe/Berlin");
        assert_eq!(z.due_at(date("2026-10-24")), utc("2026-10-25T00:00:00Z"));
        // New York repeats 01:00-02:00 instead, so its 02:00 comes once, in standard time.
        let z = zone("America/New_York");
        assert_eq!(z.due_at(date("2026-10-31")), utc("2026-11-01T07:00:00Z"));
    }

    #[test]
    fn buckets_in_a_half_hour_zone_start_at_half_past_utc() {
        let z = zone("Asia/Kolkata");
        assert_eq!(
            z.bucket_start(utc("2026-11-24T10:29:59Z")),
            utc("2026-11-24T09:30:00Z")
        );
        assert_eq!(
            z.bucket_start(utc("2026-11-24T10:30:00Z")),
            utc("2026-11-24T10:30:00Z")
        );
        assert_eq!(z.hours_in_day(date("2026-11-24")), 24);
    }

    #[test]
    fn the_repeated_hour_of_a_fall_back_day_is_two_buckets() {
        let z = zone("America/New_York");
        // 01:30 EDT and 01:30 EST are the same wall-clock hour, an hour apart.
        assert_eq!(
            z.bucket_start(utc("2026-11-01T05:30:00Z")),
            utc("2026-11-01T05:00:00Z")
        );
        assert_eq!(
            z.bucket_start(utc("2026-11-01T06:30:00Z")),
            utc("2026-11-01T06:00:00Z")
        );
    }

    #[test]
    fn a_thirty_minute_clock_change_starts_a_bucket_at_the_change() {
        // Australia/Lord_Howe moves from +10:30 to +11:00 at 02:00 local.
        let z = zone("Australia/Lord_Howe");
        let change = utc("2026-10-03T15:30:00Z");
        assert_eq!(z.bucket_start(change + TimeDelta::minutes(10)), change);
        assert_eq!(
            z.bucket_start(change - TimeDelta::minutes(1)),
            utc("2026-10-03T14:30:00Z")
        );
    }

    #[test]
    fn the_last_due_day_turns_over_at_0200() {
        let z = zone("Asia/Shanghai");
        assert_eq!(
            z.last_due_day(utc("2026-11-24T17:59:59Z")),
            date("2026-11-23")
        );
        assert_eq!(
            z.last_due_day(utc("2026-11-24T18:00:00Z")),
            date("2026-11-24")
        );
    }

    #[test]
    fn a_timeline_maps_instants_to_buckets_and_days_to_bucket_ranges() {
        let z = zone("America/New_York");
        let t = Timeline::new(&z, date("2026-10-31"), date("2026-11-01"), 4);
        let days: Vec<_> = t.days().map(|(d, r)| (d, r.len())).collect();
        assert_eq!(
            days,
            vec![(date("2026-10-31"), 24), (date("2026-11-01"), 25)]
        );
        assert_eq!(t.len(), 24 + 25 + 8);
        let first = t.days().next().unwrap().1.start;
        let at = z.day_start(date("2026-10-31")).timestamp_millis();
        assert_eq!(t.bucket_of(at), Some(first));
        assert_eq!(t.bucket_of(at - 1), Some(first - 1));
    }

    #[test]
    fn every_day_of_a_year_in_many_zones_has_contiguous_buckets() {
        for name in [
            "UTC",
            "Asia/Shanghai",
            "America/New_York",
            "Europe/London",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
            "America/Santiago",
            "Pacific/Chatham",
        ] {
            let z = zone(name);
            let mut day = date("2026-01-01");
            while day < date("2027-01-01") {
                let buckets = z.buckets(z.day_start(day), z.day_end(day));
                assert!(
                    (23..=25).contains(&buckets.len()),
                    "{name} {day}: {} buckets",
                    buckets.len()
                );
                for b in &buckets {
                    assert_eq!(
                        z.bucket_start(*b),
                        *b,
                        "{name} {day}: bucket {b} is not its own start"
                    );
                }
                day = next_day(day);
            }
        }
    }
}
