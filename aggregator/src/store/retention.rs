//! Retention: raw samples and rejections older than the horizon are pruned, per account along the clustered key, in bounded transactions; bill lines never are.
//!
//! What was pruned is recorded (`pruned_before_ms`) before the first row goes,
//! so a report or an export of a day whose inputs are gone says so instead
//! of showing an empty day. The record only moves forward: raising
//! `retention_days` later cannot bring pruned days back.

use super::db::OptionalExtension;
use super::Billing;
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::zone::{next_day, BillingZone};

use super::{from_ms, StoreError};

/// The most rows one pruning transaction deletes, so that it holds SQLite's
/// write lock only briefly and ingest commits go on between batches.
pub const PRUNE_BATCH_ROWS: usize = 10_000;

/// The extra hour before a day's bridging margin that `export` reads: the
/// bucket holding the margin's first instant may start up to an hour earlier.
const BUCKET_SLACK_HOURS: i64 = 1;

/// Where retention cuts: the first whole day kept, and the instant before
/// which rows are deleted (that day's start less everything its figures,
/// report and export read before it: the bridging reach and a bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub first_kept_day: NaiveDate,
    pub prune_before: DateTime<Utc>,
}

impl Horizon {
    /// The horizon at `now`: the day `retention_days` before today in the
    /// billing zone is the first kept whole.
    pub fn at(
        zone: &BillingZone,
        now: DateTime<Utc>,
        retention_days: u32,
        reach_hours: u32,
    ) -> Horizon {
        let first_kept_day = zone
            .day_of(now)
            .checked_sub_days(Days::new(u64::from(retention_days)))
            .expect("retention_days is bounded by the config");
        Horizon {
            first_kept_day,
            prune_before: reads_from(zone, first_kept_day, reach_hours),
        }
    }
}

/// The earliest instant whose samples the figures, report or export of `day` read.
pub fn reads_from(zone: &BillingZone, day: NaiveDate, reach_hours: u32) -> DateTime<Utc> {
    zone.day_start(day) - TimeDelta::hours(i64::from(reach_hours) + BUCKET_SLACK_HOURS)
}

/// What one pruning removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub samples: u64,
    pub rejections: u64,
    /// Write transactions that deleted rows, each at most the batch size.
    pub transactions: u64,
}

impl Pruned {
    pub fn rows(&self) -> u64 {
        self.samples + self.rejections
    }

    pub fn add(&mut self, other: Pruned) {
        self.samples += other.samples;
        self.rejections += other.rejections;
        self.transactions += other.transactions;
    }
}

/// One account's share of a pruning: its rows before `before` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneTarget {
    account_ref: i64,
    pub before: DateTime<Utc>,
}

/// The first day whose figures read nothing before `pruned_before`; a few steps at most.
fn first_whole_day(
    zone: &BillingZone,
    pruned_before: DateTime<Utc>,
    reach_hours: u32,
) -> NaiveDate {
    let mut day = zone.day_of(pruned_before);
    while reads_from(zone, day, reach_hours) < pruned_before {
        day = next_day(day);
    }
    day
}

impl Billing<'_> {
    /// Records the horizon (before any row is deleted) and returns, per
    /// account, the instant its rows are pruned before: the horizon's, or
    /// earlier when the account is marked for a recompute that still reads
    /// older samples (a run that has not yet consumed a late sample's mark
    /// must find what the mark points at).
    pub fn plan_pruning(
        &mut self,
        horizon: &Horizon,
        zone: &BillingZone,
        reach_hours: u32,
    ) -> Result<Vec<PruneTarget>, StoreError> {
        let tx = self.0.conn.transaction()?;
        // Marks ingest left count from before the floor moves.
        super::accounts::fold_marks(&tx)?;
        // A change recorded from now on (a backdated licence or cap) may mark
        // no day before the first one whose samples are all kept: the days
        // before it keep their bills as issued.
        let floor = zone.day_start(first_whole_day(zone, horizon.prune_before, reach_hours))
            + TimeDelta::hours(i64::from(reach_hours));
        tx.execute(
            "INSERT INTO retention (id, pruned_before_ms, recompute_floor_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET pruned_before_ms = greatest(retention.pruned_before_ms, excluded.pruned_before_ms),
                                            recompute_floor_ms = greatest(retention.recompute_floor_ms, excluded.recompute_floor_ms)",
            [horizon.prune_before.timestamp_millis(), floor.timestamp_millis()],
        )?;
        let reach = TimeDelta::hours(i64::from(reach_hours));
        let mut targets = Vec::new();
        {
            let mut accounts = tx.prepare_cached("SELECT ref, recompute_from_ms FROM accounts")?;
            let rows = accounts.query_map((), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
            })?;
            for row in rows {
                let (account_ref, mark) = row?;
                // Billing recomputes from the day of (mark - reach); keep what that day reads.
                let before = mark
                    .map(|m| reads_from(zone, zone.day_of(from_ms(m) - reach), reach_hours))
                    .map_or(horizon.prune_before, |b| b.min(horizon.prune_before));
                if before < horizon.prune_before {
                    tracing::info!(
                        account_ref,
                        kept_from = %before,
                        "retention keeps older samples of an account marked for recompute"
                    );
                }
                targets.push(PruneTarget {
                    account_ref,
                    before,
                });
            }
        }
        tx.commit()?;
        Ok(targets)
    }

    /// Deletes at most `limit` of the target account's oldest samples (then
    /// rejections) before its instant, in one transaction, walking the
    /// samples' clustered key `(account_ref, at_ms, …)`: no index on `at_ms`
    /// alone is needed, and none is kept up to date on every ingest. Fewer
    /// than `limit` rows deleted means the account is done.
    pub fn prune_batch(
        &mut self,
        target: &PruneTarget,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        assert!(limit > 0, "a pruning batch deletes at least one row");
        let before_ms = target.before.timestamp_millis();
        let tx = self.0.conn.transaction()?;
        let samples = tx
            .prepare_cached(
                "DELETE FROM samples WHERE (account_ref, at_ms, node_id, id) IN (
                     SELECT account_ref, at_ms, node_id, id FROM samples
                      WHERE account_ref = ?1 AND at_ms < ?2 ORDER BY at_ms LIMIT ?3)",
            )?
            .execute((target.account_ref, before_ms, limit as i64))?;
        let rejections = if samples < limit {
            tx.prepare_cached(
                "DELETE FROM rejections WHERE rowid IN (
                     SELECT rowid FROM rejections WHERE account_ref = ?1 AND at_ms < ?2 ORDER BY at_ms LIMIT ?3)",
            )?
            .execute((target.account_ref, before_ms, (limit - samples) as i64))?
        } else {
            0
        };
        tx.commit()?;
        Ok(Pruned {
            samples: samples as u64,
            rejections: rejections as u64,
            transactions: u64::from(samples + rejections > 0),
        })
    }

    /// Prunes everything before `horizon` in batches of `limit` rows, holding
    /// this connection throughout (the service's job releases it between
    /// batches instead; see `billing_job`).
    pub fn prune(
        &mut self,
        horizon: &Horizon,
        zone: &BillingZone,
        reach_hours: u32,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        for target in self.plan_pruning(horizon, zone, reach_hours)? {
            loop {
                let batch = self.prune_batch(&target, limit)?;
                total.add(batch);
                if batch.rows() < limit as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// The instant before which samples may have been pruned, if any pruning ran.
    pub fn pruned_before(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT pruned_before_ms FROM retention WHERE id = 1",
                (),
                |r| r.get(0),
            )
            .optional()?;
        Ok(ms.map(from_ms))
    }

    /// Fails with [`StoreError::SamplesPruned`] when some of the samples the
    /// figures of `day` read were pruned: a report or export of it would be
    /// built on missing data.
    pub fn require_kept(
        &self,
        zone: &BillingZone,
        day: NaiveDate,
        reach_hours: u32,
    ) -> Result<(), StoreError> {
        let Some(pruned_before) = self.pruned_before()? else {
            return Ok(());
        };
        if reads_from(zone, day, reach_hours) >= pruned_before {
            return Ok(());
        }
        Err(StoreError::SamplesPruned {
            day,
            first_kept_day: first_whole_day(zone, pruned_before, reach_hours),
            pruned_before,
        })
    }
}
