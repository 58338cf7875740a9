//! Retention: raw samples and rejections older than the horizon are pruned, per account along the clustered key, in bounded transactions; bill lines never are.
//!
//! What was pruned is recorded (`pruned_before_ms`) before the first row goes,
//! so a report or an export of a day whose inputs are gone says so instead
//! of showing an empty day. The record only moves forward: raising
//! `retention_days` later cannot bring pruned days back.

use super::db::{Conn, Dialect, OptionalExtension};
use super::samples::{day_of_ms, DAY_MS};
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
    /// Whether the (last) batch deleted as many rows as it could: more
    /// may be left. On PostgreSQL a row holds a node's samples of a day.
    pub full: bool,
}

impl Pruned {
    pub fn rows(&self) -> u64 {
        self.samples + self.rejections
    }

    pub fn add(&mut self, other: Pruned) {
        self.samples += other.samples;
        self.rejections += other.rejections;
        self.transactions += other.transactions;
        self.full = other.full;
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
        let (samples, rows) = delete_samples_before(&tx, target.account_ref, before_ms, limit)?;
        let rejections = if rows < limit {
            tx.prepare_cached(
                "DELETE FROM rejections WHERE rowid IN (
                     SELECT rowid FROM rejections WHERE account_ref = ?1 AND at_ms < ?2 ORDER BY at_ms LIMIT ?3)",
            )?
            .execute((target.account_ref, before_ms, (limit - rows) as i64))?
        } else {
            0
        };
        tx.commit()?;
        Ok(Pruned {
            samples,
            rejections: rejections as u64,
            transactions: u64::from(rows + rejections > 0),
            full: rows + rejections >= limit,
        })
    }

    /// PostgreSQL: drops each month of `sample_days` whose days are all
    /// before every target's instant, at once instead of row by row, and
    /// counts its samples as pruned. Nothing on SQLite.
    pub fn drop_past_months(&mut self, targets: &[PruneTarget]) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let Some(before) = targets.iter().map(|t| t.before).min() else {
            return Ok(pruned);
        };
        if self.0.conn.dialect() == Dialect::Sqlite {
            return Ok(pruned);
        }
        let past_day = day_of_ms(before.timestamp_millis());
        let tx = self.0.conn.transaction()?;
        let mut months: Vec<(String, i64)> = Vec::new();
        {
            let mut rows = tx.query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'sample_days'::regclass ORDER BY 1",
                (),
            )?;
            while let Some(r) = rows.next()? {
                let name: String = r.get(0)?;
                if let Some(end) = month_end_day(&name) {
                    months.push((name, end));
                }
            }
        }
        for (name, end) in months {
            if end > past_day {
                continue;
            }
            let samples: i64 = tx.query_row(
                &format!("SELECT coalesce(sum(cardinality(ids)), 0)::BIGINT FROM \"{name}\""),
                (),
                |r| r.get(0),
            )?;
            tx.execute_batch(&format!("DROP TABLE \"{name}\""))?;
            tracing::info!(partition = %name, samples, "retention dropped a month of samples");
            pruned.samples += samples as u64;
            pruned.transactions = 1;
        }
        tx.commit()?;
        Ok(pruned)
    }

    /// PostgreSQL: makes the partitions of `sample_days` of the month of
    /// `now` and of the month after, so that ingest rarely has to.
    pub fn make_months_ahead(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.0.conn.dialect() == Dialect::Postgres {
            let today = day_of_ms(now.timestamp_millis());
            self.0.make_months([today, today + 31].into_iter())?;
        }
        Ok(())
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
        let targets = self.plan_pruning(horizon, zone, reach_hours)?;
        let mut total = self.drop_past_months(&targets)?;
        for target in targets {
            loop {
                let batch = self.prune_batch(&target, limit)?;
                total.add(batch);
                if !batch.full {
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

/// Deletes up to `limit` rows of the account's samples with `at` before
/// `before_ms`, oldest first; returns the samples deleted and the rows
/// written, which reach `limit` when more may be left. On PostgreSQL a row
/// is a node's day (`sample_days`): the days before `before_ms`'s go whole,
/// then the rows of its day lose the samples before it.
pub(super) fn delete_samples_before(
    tx: &Conn,
    account_ref: i64,
    before_ms: i64,
    limit: usize,
) -> Result<(u64, usize), StoreError> {
    if tx.dialect() == Dialect::Sqlite {
        let deleted = tx
            .prepare_cached(
                "DELETE FROM samples WHERE (account_ref, at_ms, node_id, id) IN (
                     SELECT account_ref, at_ms, node_id, id FROM samples
                      WHERE account_ref = ?1 AND at_ms < ?2 ORDER BY at_ms LIMIT ?3)",
            )?
            .execute((account_ref, before_ms, limit as i64))?;
        return Ok((deleted as u64, deleted));
    }
    let day = day_of_ms(before_ms);
    let (rows, samples): (i64, i64) = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM sample_days WHERE (account_ref, day, node_id) IN (
                     SELECT account_ref, day, node_id FROM sample_days
                      WHERE account_ref = ?1 AND day < ?2 ORDER BY day LIMIT ?3)
                 RETURNING cardinality(ids) AS n)
             SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM gone",
        )?
        .query_row((account_ref, day, limit as i64), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let rows = rows as usize;
    if rows >= limit {
        return Ok((samples as u64, rows));
    }
    let from_offset = before_ms - day * DAY_MS;
    let (cut_rows, cut): (i64, i64) = tx
        .prepare_cached(
            "WITH old AS (
                 SELECT node_id, offsets, (SELECT count(*) FROM unnest(offsets) AS a WHERE a < ?3) AS n
                   FROM sample_days CROSS JOIN LATERAL sample_days_ints(at_offsets, 4) AS offsets
                  WHERE account_ref = ?1 AND day = ?2
                    AND EXISTS (SELECT 1 FROM unnest(offsets) AS a WHERE a < ?3)
                  ORDER BY node_id LIMIT ?4 FOR UPDATE OF sample_days),
             cut AS (
                 UPDATE sample_days AS d SET
                     ids = sample_days_from(d.ids, old.offsets, ?3),
                     cores = sample_days_bytes(sample_days_from(sample_days_ints(d.cores, 2), old.offsets, ?3), 2),
                     received_at_ms = sample_days_from(d.received_at_ms, old.offsets, ?3),
                     seqs = sample_days_from(d.seqs, old.offsets, ?3),
                     agent_versions = sample_days_from(d.agent_versions, old.offsets, ?3),
                     at_offsets = sample_days_bytes(sample_days_from(old.offsets, old.offsets, ?3), 4)
                   FROM old
                  WHERE d.account_ref = ?1 AND d.day = ?2 AND d.node_id = old.node_id)
             SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM old",
        )?
        .query_row(
            (account_ref, day, from_offset, (limit - rows) as i64),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    if cut_rows > 0 {
        tx.prepare_cached(
            "DELETE FROM sample_days WHERE account_ref = ?1 AND day = ?2 AND cardinality(ids) = 0",
        )?
        .execute((account_ref, day))?;
    }
    Ok(((samples + cut) as u64, rows + cut_rows as usize))
}

/// The first day after the month a partition of `sample_days` holds, from
/// its name (`sample_days_YYYYMM`); `None` for a name of another shape.
fn month_end_day(name: &str) -> Option<i64> {
    let month = name.strip_prefix("sample_days_")?;
    if month.len() != 6 || !month.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month) = (month[..4].parse().ok()?, month[4..].parse().ok()?);
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = first.checked_add_months(chrono::Months::new(1))?;
    Some((next - NaiveDate::default()).num_days())
}
