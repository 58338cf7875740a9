//! What the console reads across accounts in a few grouped queries, so a
//! page costs the same with ten accounts or ten thousand: each account's
//! row of the accounts page, the service's backlog, and an account's hourly
//! total cores for its usage chart.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::{Reads, StoreError};

/// One account as the accounts page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    pub id: String,
    pub state: String,
    /// Cores of the licences that count now.
    pub licensed_cores: u64,
    /// The latest end of its licences, if it has any.
    pub licensed_until_ms: Option<i64>,
    /// Yesterday's daily line: billable cores and excess core-hours.
    pub yesterday: Option<(Decimal, u64)>,
    /// Every line of yesterday, adjustments included.
    pub yesterday_amount: Option<Decimal>,
    /// The lines of the month's days so far.
    pub month_to_date: Decimal,
    /// Image-scan authorizations bought, and those still available.
    pub authorizations: (u64, u64),
}

/// What waits for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub outbox_pending: u64,
    pub notices_pending: u64,
}

fn decimal(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored decimal {s:?}: {e}")))
}

impl Reads<'_> {
    /// Every account's row: state, licensed cores now, yesterday, the month
    /// so far, authorizations.
    pub fn account_facts(
        &self,
        now_ms: i64,
        yesterday: NaiveDate,
        month_first: NaiveDate,
    ) -> Result<Vec<AccountFacts>, StoreError> {
        let conn = &self.0.conn;
        let mut rows: Vec<AccountFacts> = Vec::new();
        let mut at: HashMap<i64, usize> = HashMap::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT ref, id, state FROM accounts ORDER BY id")?;
            let mut r = stmt.query(())?;
            while let Some(row) = r.next()? {
                at.insert(row.get(0)?, rows.len());
                rows.push(AccountFacts {
                    id: row.get(1)?,
                    state: row.get(2)?,
                    licensed_cores: 0,
                    licensed_until_ms: None,
                    yesterday: None,
                    yesterday_amount: None,
                    month_to_date: Decimal::new(0, 2),
                    authorizations: (0, 0),
                });
            }
        }
        {
            let mut stmt = conn.prepare_cached(
                "SELECT account_ref,
                        CAST(coalesce(sum(CASE WHEN start_ms <= ?1 AND end_ms > ?1 THEN cores ELSE 0 END), 0) AS BIGINT),
                        max(end_ms)
                   FROM licences GROUP BY account_ref",
            )?;
            let mut r = stmt.query([now_ms])?;
            while let Some(row) = r.next()? {
                if let Some(&i) = at.get(&row.get::<_, i64>(0)?) {
                    rows[i].licensed_cores = row.get::<_, i64>(1)? as u64;
                    rows[i].licensed_until_ms = row.get(2)?;
                }
            }
        }
        {
            let mut stmt = conn.prepare_cached(
                "SELECT account_ref, day, seq, amount, billable_cores, excess_core_hours
                   FROM bill_lines WHERE day >= ?1 AND day <= ?2",
            )?;
            let first = month_first.min(yesterday).to_string();
            let mut r = stmt.query((first, yesterday.to_string()))?;
            let (yesterday, month_first) = (yesterday.to_string(), month_first.to_string());
            while let Some(row) = r.next()? {
                let Some(&i) = at.get(&row.get::<_, i64>(0)?) else {
                    continue;
                };
                let day: String = row.get(1)?;
                let amount = decimal(&row.get::<_, String>(3)?)?;
                if day >= month_first {
                    rows[i].month_to_date += amount;
                }
                if day == yesterday {
                    *rows[i].yesterday_amount.get_or_insert(Decimal::new(0, 2)) += amount;
                    if row.get::<_, i64>(2)? == 1 {
                        rows[i].yesterday = Some((
                            decimal(&row.get::<_, String>(4)?)?,
                            row.get::<_, i64>(5)? as u64,
                        ));
                    }
                }
            }
        }
        {
            let mut stmt = conn.prepare_cached(
                "SELECT account_ref, CAST(coalesce(sum(quantity), 0) AS BIGINT),
                        CAST(coalesce(sum(quantity - consumed - refunded), 0) AS BIGINT)
                   FROM image_scan_packs GROUP BY account_ref",
            )?;
            let mut r = stmt.query(())?;
            while let Some(row) = r.next()? {
                if let Some(&i) = at.get(&row.get::<_, i64>(0)?) {
                    rows[i].authorizations =
                        (row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64);
                }
            }
        }
        Ok(rows)
    }

    /// Bill lines and notices waiting for delivery (each count read from
    /// its queue's partial index of what is pending).
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        let count = |sql: &str| -> Result<u64, StoreError> {
            Ok(self.0.conn.query_row(sql, (), |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(Backlog {
            outbox_pending: count("SELECT count(*) FROM outbox WHERE delivered_at_ms IS NULL")?,
            notices_pending: count(
                "SELECT count(*) FROM notice_deliveries WHERE delivered_at_ms IS NULL",
            )?,
        })
    }

    /// An account's total cores per hour from `from_ms` to `to_ms`: each
    /// node's largest sample of the hour, summed; (hour start, total). The
    /// samples are read once in the order they are kept (by instant), so
    /// hours come one after another and nothing is sorted.
    pub fn hourly_totals(
        &mut self,
        account: &str,
        (from_ms, to_ms): (i64, i64),
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        const HOUR_MS: i64 = 3_600_000;
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT at_ms, node_id, cores FROM samples
              WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3 ORDER BY at_ms",
        )?;
        let mut rows = stmt.query((account_ref, from_ms, to_ms))?;
        let mut out = Vec::new();
        let mut hour = i64::MIN;
        let mut per_node: rustc_hash::FxHashMap<i64, u64> = Default::default();
        while let Some(row) = rows.next()? {
            let h = row.get::<_, i64>(0)?.div_euclid(HOUR_MS);
            if h != hour {
                if !per_node.is_empty() {
                    out.push((hour * HOUR_MS, per_node.values().sum()));
                    per_node.clear();
                }
                hour = h;
            }
            let cores = row.get::<_, i64>(2)? as u64;
            let held = per_node.entry(row.get(1)?).or_insert(0);
            *held = (*held).max(cores);
        }
        if !per_node.is_empty() {
            out.push((hour * HOUR_MS, per_node.values().sum()));
        }
        Ok(out)
    }
}
