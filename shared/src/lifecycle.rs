//! The life of an account (SPEC section 8, LIFECYCLE.md): licence terms,
//! trials, the states and when they change, and which notices a 02:00 run
//! sends. Pure: the store records what these functions decide.
//!
//! Every change happens at a run: the billing run at 02:00 local time of a
//! day (03:00 on a spring-forward day), `run_of(day)`. So the state at any
//! instant is that of the last run before it, except that a purchase or a
//! trial changes it at once.

use std::str::FromStr;

use chrono::{DateTime, Days, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::money::cents;
use crate::overage::LICENCE_GRACE_DAYS;
use crate::zone::{prev_day, BillingZone};

/// A trial's free days.
pub const TRIAL_DAYS: u64 = 7;
/// The runs before a licence's end day that warn of it, and that show `expiring`.
pub const EXPIRY_WARNING_DAYS: u64 = 7;
/// Days from the stop during which an order recovers the account.
pub const RECOVERY_DAYS: u64 = 5;
/// Days from an ended trial's stop to its deletion.
pub const TRIAL_RECOVERY_DAYS: u64 = 1;
/// `trial_ending` goes out at the run this many days before the trial ends.
pub const TRIAL_ENDING_NOTICE_DAYS: u64 = 3;
/// An auto-renewal buys this many months.
pub const RENEWAL_MONTHS: u32 = 1;
/// The most months one order may buy (10 years).
pub const MAX_TERM_MONTHS: u32 = 120;

/// The default prepaid price: 6.75 USD per core per month.
pub fn default_price_per_core_month() -> Decimal {
    Decimal::new(675, 2)
}

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never had a trial or a licence: every core is elastic.
    Unlicensed,
    Trial,
    Active,
    /// A run in the 7 days before the covering licences end.
    Expiring,
    /// The licence ended; it still counts for the grace days.
    Grace,
    /// Samples are refused and nothing is billed.
    Stopped,
    /// The account's samples are gone; its bills remain.
    Deleted,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Unlicensed,
        State::Trial,
        State::Active,
        State::Expiring,
        State::Grace,
        State::Stopped,
        State::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Unlicensed => "unlicensed",
            State::Trial => "trial",
            State::Active => "active",
            State::Expiring => "expiring",
            State::Grace => "grace",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        }
    }

    /// Samples are refused and no overage is billed.
    pub fn is_stopped(self) -> bool {
        matches!(self, State::Stopped | State::Deleted)
    }
}

impl FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a state"))
    }
}

/// A contact's role on an account; it decides which notices reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactRole {
    Creator,
    GlobalResourceCollaborator,
    FinanceCollaborator,
    Collaborator,
}

impl ContactRole {
    pub const ALL: [ContactRole; 4] = [
        ContactRole::Creator,
        ContactRole::GlobalResourceCollaborator,
        ContactRole::FinanceCollaborator,
        ContactRole::Collaborator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContactRole::Creator => "creator",
            ContactRole::GlobalResourceCollaborator => "global_resource_collaborator",
            ContactRole::FinanceCollaborator => "finance_collaborator",
            ContactRole::Collaborator => "collaborator",
        }
    }
}

impl FromStr for ContactRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ContactRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("{} is not one of creator, global_resource_collaborator, finance_collaborator, collaborator", crate::domain::quote(s))
            })
    }
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    ExpiryWarning,
    ArrearsWarning,
    LicenceShort,
    TrialEnding,
    TrialEnded,
    RenewalSucceeded,
    RenewalFailed,
    ServiceStopped,
    DeletionScheduled,
    DataDeleted,
    /// What is available of the image-scan authorizations fell to a tenth
    /// of what was purchased (SPEC 10.3).
    ImageAuthorizationsLow,
    /// Images seen since the last run have no authorization (SPEC 10.3).
    ImagesUnauthorized,
    /// The logs held first reached 80% of the quota (SPEC 10.4).
    LogStorageHigh,
    /// Log days were decided for purging (SPEC 10.4).
    LogStoragePurged,
}

/// What the service sells (SPEC 10.1); each notice is about one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    /// Licensed cores.
    Pro,
    ImageScan,
    LogStorage,
}

impl Product {
    pub const ALL: [Product; 3] = [Product::Pro, Product::ImageScan, Product::LogStorage];

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Pro => "pro",
            Product::ImageScan => "image_scan",
            Product::LogStorage => "log_storage",
        }
    }
}

impl FromStr for Product {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Product::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "product {} is not one of pro, image_scan, log_storage",
                    crate::domain::quote(s)
                )
            })
    }
}

const OWNERS: &[ContactRole] = &[
    ContactRole::Creator,
    ContactRole::GlobalResourceCollaborator,
    ContactRole::FinanceCollaborator,
];
const EVERYONE: &[ContactRole] = &ContactRole::ALL;
const PAYERS: &[ContactRole] = &[ContactRole::Creator, ContactRole::FinanceCollaborator];

impl NoticeKind {
    pub const ALL: [NoticeKind; 14] = [
        NoticeKind::ExpiryWarning,
        NoticeKind::ArrearsWarning,
        NoticeKind::LicenceShort,
        NoticeKind::TrialEnding,
        NoticeKind::TrialEnded,
        NoticeKind::RenewalSucceeded,
        NoticeKind::RenewalFailed,
        NoticeKind::ServiceStopped,
        NoticeKind::DeletionScheduled,
        NoticeKind::DataDeleted,
        NoticeKind::ImageAuthorizationsLow,
        NoticeKind::ImagesUnauthorized,
        NoticeKind::LogStorageHigh,
        NoticeKind::LogStoragePurged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::ExpiryWarning => "expiry_warning",
            NoticeKind::ArrearsWarning => "arrears_warning",
            NoticeKind::LicenceShort => "licence_short",
            NoticeKind::TrialEnding => "trial_ending",
            NoticeKind::TrialEnded => "trial_ended",
            NoticeKind::RenewalSucceeded => "renewal_succeeded",
            NoticeKind::RenewalFailed => "renewal_failed",
            NoticeKind::ServiceStopped => "service_stopped",
            NoticeKind::DeletionScheduled => "deletion_scheduled",
            NoticeKind::DataDeleted => "data_deleted",
            NoticeKind::ImageAuthorizationsLow => "image_authorizations_low",
            NoticeKind::ImagesUnauthorized => "images_unauthorized",
            NoticeKind::LogStorageHigh => "log_storage_high",
            NoticeKind::LogStoragePurged => "log_storage_purged",
        }
    }

    /// The roles a notice of this kind goes to (SPEC section 8, LIFECYCLE.md).
    pub fn roles(self) -> &'static [ContactRole] {
        match self {
            NoticeKind::ExpiryWarning
            | NoticeKind::LicenceShort
            | NoticeKind::TrialEnding
            | NoticeKind::TrialEnded
            | NoticeKind::ImageAuthorizationsLow
            | NoticeKind::ImagesUnauthorized
            | NoticeKind::LogStorageHigh
            | NoticeKind::LogStoragePurged => OWNERS,
            NoticeKind::RenewalSucceeded | NoticeKind::RenewalFailed => PAYERS,
            NoticeKind::ArrearsWarning
            | NoticeKind::ServiceStopped
            | NoticeKind::DeletionScheduled
            | NoticeKind::DataDeleted => EVERYONE,
        }
    }

    /// A one-line subject for a person reading it.
    pub fn subject(self) -> &'static str {
        match self {
            NoticeKind::ExpiryWarning => "Your core-meter licence ends soon",
            NoticeKind::ArrearsWarning => "Your core-meter licence has ended",
            NoticeKind::LicenceShort => "Your nodes held more cores than you licensed",
            NoticeKind::TrialEnding => "Your core-meter trial ends soon",
            NoticeKind::TrialEnded => "Your core-meter trial has ended",
            NoticeKind::RenewalSucceeded => "Your core-meter licence was renewed",
            NoticeKind::RenewalFailed => "Your core-meter licence could not be renewed",
            NoticeKind::ServiceStopped => "Your core-meter service is stopped",
            NoticeKind::DeletionScheduled => "Your core-meter data will be deleted",
            NoticeKind::DataDeleted => "Your core-meter data was deleted",
            NoticeKind::ImageAuthorizationsLow => "Your image-scan authorizations are running low",
            NoticeKind::ImagesUnauthorized => "New images have no scan authorization",
            NoticeKind::LogStorageHigh => "Your log storage is 80% full",
            NoticeKind::LogStoragePurged => "Your oldest logs are being removed",
        }
    }

    /// The subject of a notice of this kind about `product`: the life's
    /// notices of log storage say so.
    pub fn subject_for(self, product: Product) -> &'static str {
        if product != Product::LogStorage {
            return self.subject();
        }
        match self {
            NoticeKind::ExpiryWarning => "Your core-meter log storage ends soon",
            NoticeKind::ArrearsWarning => "Your core-meter log storage has ended",
            NoticeKind::RenewalSucceeded => "Your core-meter log storage was renewed",
            NoticeKind::RenewalFailed => "Your core-meter log storage could not be renewed",
            NoticeKind::ServiceStopped => "Your core-meter log storage is stopped",
            NoticeKind::DeletionScheduled => "Your stored logs will be deleted",
            NoticeKind::DataDeleted => "Your stored logs were deleted",
            other => other.subject(),
        }
    }
}

impl FromStr for NoticeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoticeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a notice kind"))
    }
}

/// The instant of the 02:00 run of `day` (the run that bills the day before).
pub fn run_of(zone: &BillingZone, day: NaiveDate) -> DateTime<Utc> {
    zone.due_at(prev_day(day))
}

/// The day of the last run at or before `at`.
pub fn run_day_at(zone: &BillingZone, at: DateTime<Utc>) -> NaiveDate {
    zone.last_due_day(at).succ_opt().expect("date in range")
}

/// The first run at or after `at`, as its day.
pub fn first_run_at_or_after(zone: &BillingZone, at: DateTime<Utc>) -> NaiveDate {
    let day = run_day_at(zone, at);
    if run_of(zone, day) == at {
        day
    } else {
        day.succ_opt().expect("date in range")
    }
}

fn plus_days(day: NaiveDate, days: u64) -> NaiveDate {
    day.checked_add_days(Days::new(days))
        .expect("date in range")
}

fn minus_days(day: NaiveDate, days: u64) -> NaiveDate {
    day.checked_sub_days(Days::new(days))
        .expect("date in range")
}

/// The end day of a term of `months` from `start`: the same day of the month
/// (the month's last day when it has no such day). `None` when out of range.
pub fn term_end_day(start: NaiveDate, months: u32) -> Option<NaiveDate> {
    start.checked_add_months(Months::new(months))
}

/// What an order of `cores` for `months` costs, half up to the cent.
pub fn order_price(cores: u32, months: u32, price_per_core_month: Decimal) -> Decimal {
    cents(Decimal::from(cores) * Decimal::from(months) * price_per_core_month)
}

/// A licence as the lifecycle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermLicence {
    pub id: i64,
    pub cores: u32,
    pub start: DateTime<Utc>,
    /// Its end, without grace.
    pub end: DateTime<Utc>,
    /// Its end with the grace days: the period billing counts it.
    pub counts_until: DateTime<Utc>,
    pub auto_renew: bool,
    /// Whether a renewal already followed it.
    pub renewed: bool,
    /// When the service learnt of it: a licence recorded after its end
    /// (a backfilled one) lapses when it was recorded, never earlier.
    pub recorded_at: DateTime<Utc>,
}

impl TermLicence {
    /// The run that ends it for the lifecycle: the first at or after its end
    /// (billing counts it to its end plus grace regardless).
    fn ends_at_run(&self, zone: &BillingZone) -> DateTime<Utc> {
        run_of(zone, first_run_at_or_after(zone, self.end))
    }

    fn covers(&self, zone: &BillingZone, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.ends_at_run(zone)
    }
}

/// A licence's counting end for a term ending on `end_day`: the grace days after it.
pub fn counts_until(zone: &BillingZone, end_day: NaiveDate) -> DateTime<Utc> {
    zone.day_start(plus_days(end_day, LICENCE_GRACE_DAYS as u64))
}

/// A trial: free from the first instant of the day it started until the run
/// of its eighth day, which ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Trial {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Trial {
    pub fn starting(zone: &BillingZone, at: DateTime<Utc>) -> Trial {
        let first = zone.day_of(at);
        Trial {
            start: zone.day_start(first),
            end: run_of(zone, plus_days(first, TRIAL_DAYS)),
        }
    }
}

/// What the rules know of an account's purchases.
#[derive(Debug, Clone, Default)]
pub struct Life {
    pub licences: Vec<TermLicence>,
    pub trial: Option<Trial>,
    /// When the lifecycle began for this account (its upgrade to a version
    /// with one): a licence that ended before then lapses at this instant,
    /// with the whole grace, stop and recovery after it.
    pub not_before: Option<DateTime<Utc>>,
}

/// Why an account without a covering licence is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lapse {
    /// The last licence's grace ends at `grace_end`; the stop is the first run at or after it.
    Licence {
        end: DateTime<Utc>,
        grace_end: DateTime<Utc>,
    },
    Trial {
        end: DateTime<Utc>,
    },
}

impl Life {
    /// The end of the coverage that holds `at`: following every licence that
    /// starts before the coverage so far ends.
    pub fn coverage_end(&self, zone: &BillingZone, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut end = self
            .licences
            .iter()
            .filter(|l| l.covers(zone, at))
            .map(|l| l.end)
            .max()?;
        loop {
            let further = self
                .licences
                .iter()
                .filter(|l| l.start <= end && l.end > end)
                .map(|l| l.end)
                .max();
            match further {
                Some(e) => end = e,
                None => return Some(end),
            }
        }
    }

    /// The latest lapse at or before `at` (a licence or trial that ended).
    fn lapse(&self, zone: &BillingZone, at: DateTime<Utc>) -> Option<Lapse> {
        let licence = self
            .licences
            .iter()
            .filter(|l| l.ends_at_run(zone) <= at)
            .map(|l| {
                // A lapse is never before the lifecycle knew of it: not before
                // the licence was recorded, nor before the account's lifecycle
                // began. Its grace is then 5 local days from there.
                let floor = self
                    .not_before
                    .map_or(l.recorded_at, |n| n.max(l.recorded_at));
                if l.end < floor {
                    let five_days = zone.local(floor) + chrono::TimeDelta::days(LICENCE_GRACE_DAYS);
                    (
                        floor,
                        l.counts_until
                            .max(zone.first_instant_at_or_after(five_days)),
                    )
                } else {
                    (l.end, l.counts_until)
                }
            })
            // A backfilled licence has not lapsed before it was recorded.
            .filter(|&(end, _)| end <= at)
            .max_by_key(|&(end, grace_end)| (grace_end, end))
            .map(|(end, grace_end)| Lapse::Licence { end, grace_end });
        let trial = self
            .trial
            .filter(|t| t.end <= at)
            .map(|t| Lapse::Trial { end: t.end });
        match (licence, trial) {
            (Some(Lapse::Licence { end, grace_end }), Some(Lapse::Trial { end: trial_end }))
                if trial_end > end =>
            {
                let _ = grace_end;
                trial
            }
            (Some(l), _) => Some(l),
            (None, t) => t,
        }
    }

    /// The day of the run that stops the account after `lapse`, and the day of the run that deletes its data.
    fn stop_and_deletion(zone: &BillingZone, lapse: Lapse) -> (NaiveDate, NaiveDate) {
        match lapse {
            Lapse::Licence { grace_end, .. } => {
                let stop = first_run_at_or_after(zone, grace_end);
                (stop, plus_days(stop, RECOVERY_DAYS))
            }
            Lapse::Trial { end } => {
                let stop = first_run_at_or_after(zone, end);
                (stop, plus_days(stop, TRIAL_RECOVERY_DAYS))
            }
        }
    }

    /// The state at instant `at` (see LIFECYCLE.md). Every boundary is a
    /// run, so the state at a run holds until the next one, unless an order
    /// or a trial changes the facts.
    pub fn state_at(&self, zone: &BillingZone, at: DateTime<Utc>) -> State {
        if let Some(end) = self.coverage_end(zone, at) {
            let expiring_from = run_of(zone, minus_days(zone.day_of(end), EXPIRY_WARNING_DAYS));
            return if at >= expiring_from {
                State::Expiring
            } else {
                State::Active
            };
        }
        if let Some(trial) = self.trial {
            if trial.start <= at && at < trial.end {
                return State::Trial;
            }
        }
        let Some(lapse) = self.lapse(zone, at) else {
            return State::Unlicensed;
        };
        let (stop, deletion) = Life::stop_and_deletion(zone, lapse);
        if at < run_of(zone, stop) {
            match lapse {
                Lapse::Licence { .. } => State::Grace,
                // A trial's stop is the run that ends it; nothing lies between.
                Lapse::Trial { .. } => State::Stopped,
            }
        } else if at < run_of(zone, deletion) {
            State::Stopped
        } else {
            State::Deleted
        }
    }

    /// The next run after `after` at which the state changes if nothing is
    /// bought and nothing renews, with that state; looked for up to `horizon_days`.
    pub fn next_change(
        &self,
        zone: &BillingZone,
        after: DateTime<Utc>,
        horizon_days: u64,
    ) -> Option<(State, DateTime<Utc>)> {
        let now = self.state_at(zone, after);
        let mut day = run_day_at(zone, after);
        for _ in 0..horizon_days {
            day = day.succ_opt()?;
            let at = run_of(zone, day);
            let state = self.state_at(zone, at);
            if state != now {
                return Some((state, at));
            }
        }
        None
    }

    /// Licences with auto-renew on whose end the run of `day` is the first run at or after.
    pub fn renewals_due(&self, zone: &BillingZone, day: NaiveDate) -> Vec<TermLicence> {
        self.licences
            .iter()
            .filter(|l| l.auto_renew && !l.renewed && first_run_at_or_after(zone, l.end) == day)
            .copied()
            .collect()
    }

    /// The renewal of `licence`: the same cores for a month from its end day.
    pub fn renewal_of(zone: &BillingZone, licence: &TermLicence) -> (NaiveDate, NaiveDate) {
        let start = zone.day_of(licence.end);
        let end = term_end_day(start, RENEWAL_MONTHS).expect("date in range");
        (start, end)
    }

    /// The notices the run of `day` sends, given the state before the run and
    /// after it (renewal notices are the store's: they depend on the balance).
    /// `daily` is false for runs caught up after an outage but the last, so
    /// that repeated warnings are not sent for days gone by.
    pub fn notices_at_run(
        &self,
        zone: &BillingZone,
        day: NaiveDate,
        before: State,
        after: State,
        daily: bool,
    ) -> Vec<(NoticeKind, Value)> {
        let at = run_of(zone, day);
        let mut out = Vec::new();
        if daily && matches!(after, State::Active | State::Expiring) {
            let ending: Vec<Value> = self
                .licences
                .iter()
                .filter(|l| !l.renewed)
                .filter_map(|l| {
                    let end_day = zone.day_of(l.end);
                    let first = run_of(zone, minus_days(end_day, EXPIRY_WARNING_DAYS));
                    (first <= at && at < l.end).then(|| {
                        json!({
                            "licence": l.id,
                            "cores": l.cores,
                            "end_day": end_day,
                            "days_left": (end_day - day).num_days(),
                            "auto_renew": l.auto_renew,
                        })
                    })
                })
                .collect();
            if !ending.is_empty() {
                out.push((NoticeKind::ExpiryWarning, json!({ "licences": ending })));
            }
        }
        let lapse = self.lapse(zone, at);
        if daily && matches!(after, State::Grace | State::Stopped) {
            if let Some(Lapse::Licence { end, grace_end }) = lapse {
                let end_day = zone.day_of(end);
                let (stop, deletion) = Life::stop_and_deletion(zone, lapse.expect("a lapse"));
                out.push((
                    NoticeKind::ArrearsWarning,
                    json!({
                        "end_day": end_day,
                        "days_since_end": (day - end_day).num_days(),
                        "grace_ends_at": grace_end,
                        "stops_at": run_of(zone, stop),
                        "deleted_at": run_of(zone, deletion),
                    }),
                ));
            }
        }
        if let (State::Trial, Some(trial)) = (after, self.trial) {
            let ends_on = zone.day_of(trial.end);
            if minus_days(ends_on, TRIAL_ENDING_NOTICE_DAYS) == day {
                out.push((
                    NoticeKind::TrialEnding,
                    json!({ "ends_at": trial.end, "days_left": TRIAL_ENDING_NOTICE_DAYS }),
                ));
            }
        }
        if after == State::Stopped && before != State::Stopped {
            let lapse = lapse.expect("a stopped account has a lapse");
            let (stop, deletion) = Life::stop_and_deletion(zone, lapse);
            if let Lapse::Trial { end } = lapse {
                out.push((NoticeKind::TrialEnded, json!({ "ended_at": end })));
            }
            out.push((
                NoticeKind::ServiceStopped,
                json!({ "stopped_at": run_of(zone, stop), "recover_by": run_of(zone, deletion) }),
            ));
            out.push((
                NoticeKind::DeletionScheduled,
                json!({ "deletion_at": run_of(zone, deletion) }),
            ));
        }
        if after == State::Deleted && before != State::Deleted {
            out.push((NoticeKind::DataDeleted, json!({ "deleted_at": at })));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> BillingZone {
        BillingZone::default()
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn licence(id: i64, start: &str, end: &str, auto_renew: bool) -> TermLicence {
        let z = zone();
        TermLicence {
            id,
            cores: 10,
            start: z.day_start(d(start)),
            end: z.day_start(d(end)),
            counts_until: counts_until(&z, d(end)),
            auto_renew,
            renewed: false,
            recorded_at: z.day_start(d(start)),
        }
    }

    fn at_run(day: &str) -> DateTime<Utc> {
        run_of(&zone(), d(day))
    }

    #[test]
    fn a_month_from_the_31st_ends_on_the_last_day_of_the_next_month() {
        assert_eq!(term_end_day(d("2027-01-31"), 1), Some(d("2027-02-28")));
        assert_eq!(term_end_day(d("2026-11-26"), 12), Some(d("2027-11-26")));
    }

    #[test]
    fn an_order_costs_cores_times_months_times_the_monthly_price() {
        assert_eq!(
            order_price(100, 12, default_price_per_core_month()).to_string(),
            "8100.00"
        );
    }

    #[test]
    fn a_licence_is_active_then_expiring_for_seven_runs_then_grace_for_five_then_stopped_for_five_then_deleted(
    ) {
        let life = Life {
            licences: vec![licence(1, "2026-11-01", "2026-12-01", false)],
            ..Life::default()
        };
        let z = zone();
        let state = |day: &str| life.state_at(&z, at_run(day));
        assert_eq!(state("2026-11-23"), State::Active);
        assert_eq!(state("2026-11-24"), State::Expiring);
        assert_eq!(state("2026-11-30"), State::Expiring);
        assert_eq!(state("2026-12-01"), State::Grace);
        assert_eq!(state("2026-12-05"), State::Grace);
        assert_eq!(state("2026-12-06"), State::Stopped);
        assert_eq!(state("2026-12-10"), State::Stopped);
        assert_eq!(state("2026-12-11"), State::Deleted);
        // Between runs the state is the last run's.
        assert_eq!(
            life.state_at(&z, at_run("2026-12-06") - chrono::TimeDelta::seconds(1)),
            State::Grace
        );
        assert_eq!(
            life.next_change(&z, at_run("2026-11-26"), 400),
            Some((State::Grace, at_run("2026-12-01")))
        );
    }

    #[test]
    fn a_trial_is_free_until_the_run_of_its_eighth_day_then_stopped_then_deleted_a_day_later() {
        let z = zone();
        let started = z.day_start(d("2026-11-26")) + chrono::TimeDelta::hours(15);
        let life = Life {
            trial: Some(Trial::starting(&z, started)),
            ..Life::default()
        };
        assert_eq!(life.state_at(&z, started), State::Trial);
        assert_eq!(life.state_at(&z, at_run("2026-12-02")), State::Trial);
        assert_eq!(life.state_at(&z, at_run("2026-12-03")), State::Stopped);
        assert_eq!(life.state_at(&z, at_run("2026-12-04")), State::Deleted);
        let notices = life.notices_at_run(&z, d("2026-11-30"), State::Trial, State::Trial, true);
        assert_eq!(notices[0].0, NoticeKind::TrialEnding);
    }

    #[test]
    fn coverage_follows_a_renewal_that_starts_on_the_end_day() {
        let mut first = licence(1, "2026-11-01", "2026-12-01", true);
        first.renewed = true;
        let life = Life {
            licences: vec![first, licence(2, "2026-12-01", "2027-01-01", true)],
            ..Life::default()
        };
        let z = zone();
        assert_eq!(life.state_at(&z, at_run("2026-11-26")), State::Active);
        assert_eq!(life.state_at(&z, at_run("2026-12-26")), State::Expiring);
    }

    #[test]
    fn an_auto_renew_licence_is_due_for_renewal_at_the_run_of_its_end_day_only() {
        let life = Life {
            licences: vec![licence(1, "2026-11-01", "2026-12-01", true)],
            ..Life::default()
        };
        let z = zone();
        assert!(life.renewals_due(&z, d("2026-11-30")).is_empty());
        assert_eq!(life.renewals_due(&z, d("2026-12-01")).len(), 1);
        assert!(life.renewals_due(&z, d("2026-12-02")).is_empty());
    }

    #[test]
    fn a_licence_that_ended_before_the_upgrade_gets_its_whole_grace_from_the_upgrade() {
        let z = zone();
        let life = Life {
            licences: vec![licence(1, "2026-01-01", "2026-02-01", false)],
            not_before: Some(at_run("2026-11-26")),
            ..Life::default()
        };
        assert_eq!(life.state_at(&z, at_run("2026-11-26")), State::Grace);
        assert_eq!(life.state_at(&z, at_run("2026-11-30")), State::Grace);
        assert_eq!(life.state_at(&z, at_run("2026-12-01")), State::Stopped);
        assert_eq!(life.state_at(&z, at_run("2026-12-06")), State::Deleted);
    }

    #[test]
    fn the_grace_after_an_upgrade_is_five_local_days_across_a_clock_change() {
        // New York springs forward on 14 March 2027: the 02:00 run of that day is at 03:00.
        let z = BillingZone::new(chrono_tz::America::New_York);
        let life = Life {
            licences: vec![TermLicence {
                id: 1,
                cores: 10,
                start: z.day_start(d("2027-01-01")),
                end: z.day_start(d("2027-02-01")),
                counts_until: counts_until(&z, d("2027-02-01")),
                auto_renew: false,
                renewed: false,
                recorded_at: z.day_start(d("2027-01-01")),
            }],
            not_before: Some(run_of(&z, d("2027-03-10"))),
            ..Life::default()
        };
        assert_eq!(life.state_at(&z, run_of(&z, d("2027-03-14"))), State::Grace);
        assert_eq!(
            life.state_at(&z, run_of(&z, d("2027-03-15"))),
            State::Stopped
        );
    }

    #[test]
    fn expiry_warnings_go_out_on_each_of_the_seven_runs_before_the_end_day() {
        let life = Life {
            licences: vec![licence(1, "2026-11-01", "2026-12-01", false)],
            ..Life::default()
        };
        let z = zone();
        let warned: Vec<i64> = (0..40)
            .map(|i| plus_days(d("2026-11-01"), i))
            .filter(|day| {
                let st = life.state_at(&z, run_of(&z, *day));
                life.notices_at_run(&z, *day, st, st, true)
                    .iter()
                    .any(|(k, _)| *k == NoticeKind::ExpiryWarning)
            })
            .map(|day| (d("2026-12-01") - day).num_days())
            .collect();
        assert_eq!(warned, vec![7, 6, 5, 4, 3, 2, 1]);
    }
}
