//! What the console reads across accounts in a few grouped queries, so a
//! page costs the same with ten accounts or ten thousand: each account's
//! row of the accounts page, the service's backlog; and for one account,
//! the billed days' total cores and when each node was last seen, from the
//! summaries the billing run and ingest keep (migration 12) rather than
//! from the samples.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::bills::parse_day;
use super::{Account, Reads, StoreError};

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
    /// Nodes last seen inside the silence window asked for.
    pub silent_nodes: u64,
}

/// A day's total cores as the billing run last figured them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreDay {
    pub day: NaiveDate,
    /// The day's hours (23 or 25 when the clocks change).
    pub hours: u32,
    /// The sum over the day's hours of the account's total cores.
    pub core_hours: u64,
    /// The largest total of an hour.
    pub peak_cores: u64,
}

/// A node and the instant of its latest sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub cluster: String,
    pub node: String,
    pub last_seen_ms: i64,
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
    /// so far, authorizations, and its nodes last seen in `[silent_from_ms,
    /// silent_to_ms)`.
    pub fn account_facts(
        &self,
        now_ms: i64,
        (yesterday, month_first): (NaiveDate, NaiveDate),
        (silent_from_ms, silent_to_ms): (i64, i64),
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
                    silent_nodes: 0,
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
        {
            // One pass over the nodes: their rows are few beside the samples.
            let mut stmt = conn.prepare_cached(
                "SELECT account_ref, count(*) FROM nodes
                  WHERE last_seen_ms >= ?1 AND last_seen_ms < ?2 GROUP BY account_ref",
            )?;
            let mut r = stmt.query((silent_from_ms, silent_to_ms))?;
            while let Some(row) = r.next()? {
                if let Some(&i) = at.get(&row.get::<_, i64>(0)?) {
                    rows[i].silent_nodes = row.get::<_, i64>(1)? as u64;
                }
            }
        }
        Ok(rows)
    }

    /// The account's days from `first` to `last` that a billing run has
    /// figured, in order.
    pub fn core_days(
        &self,
        account: &Account,
        (first, last): (NaiveDate, NaiveDate),
    ) -> Result<Vec<CoreDay>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT day, hours, core_hours, peak_cores FROM usage_days
              WHERE account_ref = ?1 AND day >= ?2 AND day <= ?3 ORDER BY day",
        )?;
        let mut rows = stmt.query((account.reference, first.to_string(), last.to_string()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let day: String = r.get(0)?;
            out.push(CoreDay {
                day: parse_day(&day)?,
                hours: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                core_hours: r.get::<_, i64>(2)? as u64,
                peak_cores: r.get::<_, i64>(3)? as u64,
            });
        }
        Ok(out)
    }

    /// What each of the account's days from `first` to `last` was billed,
    /// adjustments included; days without a line are absent.
    pub fn billed_days(
        &self,
        account: &Account,
        (first, last): (NaiveDate, NaiveDate),
    ) -> Result<BTreeMap<NaiveDate, Decimal>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT day, amount FROM bill_lines
              WHERE account_ref = ?1 AND day >= ?2 AND day <= ?3",
        )?;
        let mut rows = stmt.query((account.reference, first.to_string(), last.to_string()))?;
        let mut out: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let day: String = r.get(0)?;
            *out.entry(parse_day(&day)?).or_insert(Decimal::new(0, 2)) +=
                decimal(&r.get::<_, String>(1)?)?;
        }
        Ok(out)
    }

    /// The account's nodes last seen at or after `since_ms`, the most
    /// recently seen first, at most `limit`.
    pub fn nodes_seen(
        &self,
        account: &Account,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<NodeSeen>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT cluster, name, last_seen_ms FROM nodes
              WHERE account_ref = ?1 AND last_seen_ms >= ?2
              ORDER BY last_seen_ms DESC, cluster, name LIMIT ?3",
        )?;
        let mut rows = stmt.query((account.reference, since_ms, limit as i64))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(NodeSeen {
                cluster: r.get(0)?,
                node: r.get(1)?,
                last_seen_ms: r.get(2)?,
            });
        }
        Ok(out)
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
}
