//! Issuing bill lines (exactly once per key) and reading them back.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use shared::bill::{idempotency_key, BillLine, LineKind};
use shared::overage::{DayFigures, NodeSample};

use super::bill_sets::Window;
use super::db::Conn;
use super::pages::{one_more, LineKey, Listed};
use super::{from_ms, Account, Store, StoreError};
use super::{Billing, Reads};

impl Store {
    fn rollback_if_open(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.rollback() {
                tracing::error!(error = %e, "rolling back a billing batch failed");
            }
        }
    }
}

/// [`Store::bill_days`] on a connection inside a write transaction.
fn bill_days_in(
    conn: &Conn,
    account: &Account,
    window_ms: (i64, i64),
    compute: impl FnOnce(&[NodeSample]) -> Vec<DayFigures>,
    currency: &str,
    issued_at: DateTime<Utc>,
    channels: crate::config::NoticeChannels,
) -> Result<Vec<BillLine>, StoreError> {
    let mut compute = Some(compute);
    super::bill_sets::bill_windows_in(
        conn,
        &[Window { account, window_ms }],
        |_, samples| compute.take().map_or_else(Vec::new, |f| f(samples)),
        currency,
        issued_at,
        channels,
    )
}

/// The columns a bill line is read from, in the order [`line_row`] expects.
pub(super) const LINE_COLUMNS: &str =
    "a.id, b.day, b.seq, b.kind, b.hours, b.excess_core_hours, b.average_excess_cores,
     b.cap_cores, b.billable_cores, b.amount, b.currency, b.issued_at_ms";

/// A bill line from [`LINE_COLUMNS`] starting at column `at`.
pub(super) fn line_row(r: &super::db::Row<'_>, at: usize) -> Result<BillLine, StoreError> {
    let account: String = r.get(at)?;
    let day = parse_day(&r.get::<_, String>(at + 1)?)?;
    let seq: u32 = r.get(at + 2)?;
    let kind = LineKind::from_str(&r.get::<_, String>(at + 3)?).map_err(corrupt)?;
    Ok(BillLine {
        idempotency_key: idempotency_key(&account, day, seq),
        account,
        day,
        seq,
        kind,
        hours: r.get(at + 4)?,
        excess_core_hours: r.get::<_, i64>(at + 5)? as u64,
        average_excess_cores: parse_decimal(&r.get::<_, String>(at + 6)?)?,
        cap_cores: r.get(at + 7)?,
        billable_cores: parse_decimal(&r.get::<_, String>(at + 8)?)?,
        amount: parse_decimal(&r.get::<_, String>(at + 9)?)?,
        currency: r.get(at + 10)?,
        issued_at: from_ms(r.get(at + 11)?),
    })
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(msg)
}

pub(super) fn parse_day(s: &str) -> Result<NaiveDate, StoreError> {
    s.parse()
        .map_err(|e| corrupt(format!("stored day {s:?}: {e}")))
}

pub(super) fn parse_decimal(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| corrupt(format!("stored decimal {s:?}: {e}")))
}

impl Billing<'_> {
    /// Bills some days of an account in one transaction that holds SQLite's
    /// write lock from start to end: reads the account's samples with `at` in
    /// `window_ms`, lets `compute` turn them into day figures, and issues for
    /// each day the line `next_line` calls for against what is stored. Two
    /// runs that overlap therefore see each other's lines and the same
    /// samples: neither bills a day twice nor undoes the other's adjustment.
    pub fn bill_days(
        &mut self,
        account: &Account,
        window_ms: (i64, i64),
        compute: impl FnOnce(&[NodeSample]) -> Vec<DayFigures>,
        currency: &str,
        issued_at: DateTime<Utc>,
    ) -> Result<Vec<BillLine>, StoreError> {
        if !self.0.conn.is_autocommit() {
            // Inside `in_write_batch`: its transaction holds the write lock already.
            return bill_days_in(
                &self.0.conn,
                account,
                window_ms,
                compute,
                currency,
                issued_at,
                self.0.notice_channels,
            );
        }
        let tx = self.0.conn.transaction()?;
        let lines = bill_days_in(
            &tx,
            account,
            window_ms,
            compute,
            currency,
            issued_at,
            self.0.notice_channels,
        )?;
        tx.commit()?;
        Ok(lines)
    }

    /// Runs `work` in one `IMMEDIATE` transaction, committed if it returns
    /// `Ok` and rolled back otherwise (or if it panics). Every
    /// [`Store::bill_days`] inside joins it: a billing run bills many
    /// accounts per commit, since each commit of the durable store waits for
    /// a sync of the disk, and that wait, not the arithmetic, would dominate a
    /// run of a thousand small accounts.
    pub fn in_write_batch<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.0.conn.begin()?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        match outcome {
            Ok(Ok(value)) => match self.0.conn.commit() {
                Ok(()) => Ok(value),
                Err(e) => {
                    self.rollback_if_open();
                    Err(e.into())
                }
            },
            Ok(Err(e)) => {
                self.rollback_if_open();
                Err(e)
            }
            Err(panic) => {
                // A caller that survives the panic (a poisoned lock taken
                // over) must not find the connection inside a transaction.
                self.rollback_if_open();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Runs `work` in a savepoint of the open transaction (inside
    /// [`Store::in_write_batch`]): if it fails, its writes are undone and
    /// the rest of the transaction's are kept.
    pub fn in_savepoint<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.0.conn.execute_batch("SAVEPOINT one_account")?;
        match work(self) {
            Ok(value) => {
                self.0.conn.execute_batch("RELEASE one_account")?;
                Ok(value)
            }
            Err(e) => {
                self.0
                    .conn
                    .execute_batch("ROLLBACK TO one_account; RELEASE one_account")?;
                Err(e)
            }
        }
    }
}

impl Reads<'_> {
    /// Issued lines, optionally of one account and one day, in the order they were issued.
    pub fn bill_lines(
        &self,
        account: Option<&str>,
        day: Option<NaiveDate>,
    ) -> Result<Vec<BillLine>, StoreError> {
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {LINE_COLUMNS}
               FROM bill_lines b JOIN accounts a ON a.ref = b.account_ref
              WHERE (CAST(?1 AS TEXT) IS NULL OR a.id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR b.day = ?2)
              ORDER BY b.issued_at_ms, a.id, b.day, b.seq"
        ))?;
        let mut rows = stmt.query((account, day.map(|d| d.to_string())))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(line_row(&r, 0)?);
        }
        Ok(out)
    }

    /// A page of the issued lines (optionally of one account and one day)
    /// in the order they were issued: up to `limit` after `after`.
    pub fn bill_page(
        &self,
        account: Option<&str>,
        day: Option<NaiveDate>,
        after: Option<&LineKey>,
        limit: u32,
    ) -> Result<Listed<BillLine, LineKey>, StoreError> {
        let day = day.map(|d| d.to_string());
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM bill_lines b JOIN accounts a ON a.ref = b.account_ref
              WHERE (CAST(?1 AS TEXT) IS NULL OR a.id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR b.day = ?2)",
            (account, day.as_deref()),
            |r| r.get(0),
        )?;
        let first = LineKey::first();
        let after = after.unwrap_or(&first);
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {LINE_COLUMNS}
               FROM bill_lines b JOIN accounts a ON a.ref = b.account_ref
              WHERE (CAST(?1 AS TEXT) IS NULL OR a.id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR b.day = ?2)
                AND (b.issued_at_ms, a.id, b.day, b.seq) > (?3, ?4, ?5, ?6)
              ORDER BY b.issued_at_ms, a.id, b.day, b.seq LIMIT ?7"
        ))?;
        let mut rows = stmt.query((
            account,
            day.as_deref(),
            after.issued_at_ms,
            after.account.as_str(),
            after.day.to_string(),
            after.seq,
            one_more(limit),
        ))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let line = line_row(&r, 0)?;
            out.push((LineKey::of(&line), line));
        }
        Ok(Listed::from_rows(out, limit, total as u64))
    }
}
