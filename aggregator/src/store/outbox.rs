//! The bill outbox: every issued line waits here until the billing backend acknowledged it.

use super::db::OptionalExtension;
use super::Deliveries;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::bill::BillLine;

use super::bills::{line_row, LINE_COLUMNS};
use super::pages::{one_more, LineKey, Listed};
use super::{from_ms, Store, StoreError};

/// A line to deliver, and how often delivery failed so far.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub line: BillLine,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
}

/// How the outbox stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStatus {
    pub pending: u64,
    /// Pending lines whose last attempt failed.
    pub failing: u64,
    pub delivered: u64,
}

const SELECT: &str = "SELECT o.attempts, o.last_error, o.delivered_at_ms, o.next_attempt_ms,";
const FROM: &str = "FROM outbox o
     JOIN bill_lines b ON b.account_ref = o.account_ref AND b.day = o.day AND b.seq = o.seq
     JOIN accounts a ON a.ref = o.account_ref";

fn delivery_row(r: &super::db::Row<'_>) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        attempts: r.get(0)?,
        last_error: r.get(1)?,
        delivered_at: r.get::<_, Option<i64>>(2)?.map(from_ms),
        next_attempt_at: from_ms(r.get(3)?),
        line: line_row(r, 4)?,
    })
}

/// How the delivery queue in `table` (`outbox`, `notice_deliveries`) stands.
pub(super) fn queue_status(store: &Store, table: &str) -> Result<OutboxStatus, StoreError> {
    Ok(store.conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE delivered_at_ms IS NULL),
                    count(*) FILTER (WHERE delivered_at_ms IS NULL AND attempts > 0),
                    count(*) FILTER (WHERE delivered_at_ms IS NOT NULL)
               FROM {table}"
        ),
        (),
        |r| {
            Ok(OutboxStatus {
                pending: r.get::<_, i64>(0)? as u64,
                failing: r.get::<_, i64>(1)? as u64,
                delivered: r.get::<_, i64>(2)? as u64,
            })
        },
    )?)
}

/// PostgreSQL's row locks for a claim: replicas claiming at once skip each
/// other's rows instead of waiting for them. SQLite has one writer.
pub(super) fn skip_locked(dialect: super::db::Dialect, table: &str) -> String {
    match dialect {
        super::db::Dialect::Sqlite => String::new(),
        super::db::Dialect::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
    }
}

impl Deliveries<'_> {
    /// Claims up to `limit` lines due at `now` for this replica to post,
    /// oldest first: their next attempt moves to `lease_until`, so no other
    /// replica takes them while this one posts (the lease outlasts the
    /// webhook's timeout). A replica that dies holding a claim leaves the
    /// lines to be taken again when the lease ends; a posted line is marked
    /// delivered, a failed one gets its retry instant.
    pub fn claim_deliveries(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claim = format!(
            "UPDATE outbox SET next_attempt_ms = ?3
              WHERE (account_ref, day, seq) IN (
                    SELECT o.account_ref, o.day, o.seq {FROM}
                     WHERE o.delivered_at_ms IS NULL AND o.next_attempt_ms <= ?1
                     ORDER BY b.issued_at_ms, a.id, b.day, b.seq LIMIT ?2{})
              RETURNING account_ref, day, seq",
            skip_locked(self.0.conn.dialect(), "o")
        );
        let claimed: Vec<(i64, String, i64)> = self
            .conn
            .query_map(
                &claim,
                (
                    now.timestamp_millis(),
                    limit as i64,
                    lease_until.timestamp_millis(),
                ),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(claimed.len());
        for key in claimed {
            let mut rows = self.0.conn.query(
                &format!(
                    "{SELECT} {LINE_COLUMNS} {FROM}
                      WHERE o.account_ref = ?1 AND o.day = ?2 AND o.seq = ?3"
                ),
                key,
            )?;
            while let Some(r) = rows.next()? {
                out.push(delivery_row(&r)?);
            }
        }
        out.sort_by(|x, y| {
            (x.line.issued_at, &x.line.account, x.line.day, x.line.seq).cmp(&(
                y.line.issued_at,
                &y.line.account,
                y.line.day,
                y.line.seq,
            ))
        });
        Ok(out)
    }

    /// Undelivered lines whose next attempt is due at `now`, oldest first.
    pub fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "{SELECT} {LINE_COLUMNS} {FROM}
              WHERE o.delivered_at_ms IS NULL AND o.next_attempt_ms <= ?1
              ORDER BY b.issued_at_ms, a.id, b.day, b.seq LIMIT ?2"
        ))?;
        let mut rows = stmt.query((now.timestamp_millis(), limit as i64))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(delivery_row(&r)?);
        }
        Ok(out)
    }

    /// The outbox, newest first, optionally only the undelivered lines.
    pub fn outbox(
        &self,
        undelivered_only: bool,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "{SELECT} {LINE_COLUMNS} {FROM}
              WHERE (?1 = 0 OR o.delivered_at_ms IS NULL)
              ORDER BY b.issued_at_ms DESC, a.id, b.day, b.seq LIMIT ?2"
        ))?;
        let mut rows = stmt.query((i64::from(undelivered_only), limit as i64))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(delivery_row(&r)?);
        }
        Ok(out)
    }

    /// A page of the outbox, newest first (then in the lines' key order),
    /// optionally only the undelivered lines: up to `limit` after `after`.
    pub fn outbox_page(
        &self,
        undelivered_only: bool,
        after: Option<&LineKey>,
        limit: u32,
    ) -> Result<Listed<Delivery, LineKey>, StoreError> {
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM outbox o WHERE (?1 = 0 OR o.delivered_at_ms IS NULL)",
            [i64::from(undelivered_only)],
            |r| r.get(0),
        )?;
        // Newest first: the first page starts after a line issued at the end of time.
        let last = LineKey {
            issued_at_ms: i64::MAX,
            ..LineKey::first()
        };
        let after = after.unwrap_or(&last);
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "{SELECT} {LINE_COLUMNS} {FROM}
              WHERE (?1 = 0 OR o.delivered_at_ms IS NULL)
                AND (b.issued_at_ms < ?2 OR (b.issued_at_ms = ?2 AND (a.id, b.day, b.seq) > (?3, ?4, ?5)))
              ORDER BY b.issued_at_ms DESC, a.id, b.day, b.seq LIMIT ?6"
        ))?;
        let mut rows = stmt.query((
            i64::from(undelivered_only),
            after.issued_at_ms,
            after.account.as_str(),
            after.day.to_string(),
            after.seq,
            one_more(limit),
        ))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let delivery = delivery_row(&r)?;
            out.push((LineKey::of(&delivery.line), delivery));
        }
        Ok(Listed::from_rows(out, limit, total as u64))
    }

    /// Hands claimed lines back undelivered, due at `now`.
    pub fn release_deliveries(
        &mut self,
        deliveries: &[Delivery],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for d in deliveries {
            let account_ref = self.require_account(&d.line.account)?;
            self.0.conn.execute(
                "UPDATE outbox SET next_attempt_ms = ?4
                  WHERE account_ref = ?1 AND day = ?2 AND seq = ?3 AND delivered_at_ms IS NULL",
                (
                    account_ref,
                    d.line.day.to_string(),
                    d.line.seq,
                    now.timestamp_millis(),
                ),
            )?;
        }
        Ok(())
    }

    /// When the next undelivered line is due, if there is one.
    pub fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT min(next_attempt_ms) FROM outbox WHERE delivered_at_ms IS NULL",
                (),
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(ms.map(from_ms))
    }

    /// Records that the backend took a line.
    pub fn mark_delivered(
        &mut self,
        line: &BillLine,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(&line.account)?;
        self.0.conn.execute(
            "UPDATE outbox SET delivered_at_ms = ?4, attempts = attempts + 1, last_error = NULL
              WHERE account_ref = ?1 AND day = ?2 AND seq = ?3",
            (
                account_ref,
                line.day.to_string(),
                line.seq,
                now.timestamp_millis(),
            ),
        )?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub fn mark_failed(
        &mut self,
        line: &BillLine,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(&line.account)?;
        let error: String = error.chars().take(1000).collect();
        self.0.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?4, next_attempt_ms = ?5
              WHERE account_ref = ?1 AND day = ?2 AND seq = ?3 AND delivered_at_ms IS NULL",
            (
                account_ref,
                line.day.to_string(),
                line.seq,
                error,
                retry_at.timestamp_millis(),
            ),
        )?;
        Ok(())
    }

    pub fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        queue_status(self, "outbox")
    }
}
