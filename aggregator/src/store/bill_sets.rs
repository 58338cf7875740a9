//! Billing a set of accounts at once: what the run reads and writes for a
//! batch of accounts, in one statement per table on PostgreSQL, where a
//! statement per account and table made the run wait on round trips. On
//! SQLite, in the process, the same steps go account by account.
//!
//! Everything happens inside the caller's write transaction
//! (`Billing::in_write_batch`), so the lines read and the lines written
//! are those of one moment, as they were account by account.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use shared::bill::{next_line, BillLine, Issued, LineKind};
use shared::overage::{CapChange, DayFigures, Licence, NodeSample, Period};

use super::accounts::{caps_of, licences_of};
use super::bills::{parse_day, parse_decimal};
use super::db::{texts, Conn, Dialect, Value};
use super::notices::{issue_notices, NewNotice};
use super::{from_ms, Account, Billing, Store, StoreError};
use crate::config::NoticeChannels;

/// What billing needs of an account besides its samples.
#[derive(Debug, Default)]
pub struct Terms {
    pub licences: Vec<Licence>,
    pub caps: Vec<CapChange>,
    /// Hours never billed: the account's stops and its trial.
    pub unbilled: Vec<Period>,
}

/// An account's samples to bill: those with `at` in `window_ms`.
pub struct Window<'a> {
    pub account: &'a Account,
    pub window_ms: (i64, i64),
}

impl Billing<'_> {
    /// The terms of each of `accounts`, in their order.
    pub fn terms_of(&self, accounts: &[&Account]) -> Result<Vec<Terms>, StoreError> {
        let conn = &self.0.conn;
        let refs: Vec<i64> = accounts.iter().map(|a| a.reference).collect();
        let position: HashMap<i64, usize> = refs.iter().enumerate().map(|(i, r)| (*r, i)).collect();
        let mut terms: Vec<Terms> = accounts.iter().map(|_| Terms::default()).collect();
        match conn.dialect() {
            Dialect::Sqlite => {
                for (t, &account_ref) in terms.iter_mut().zip(&refs) {
                    t.licences = licences_of(conn, account_ref)?;
                    t.caps = caps_of(conn, account_ref)?;
                }
            }
            Dialect::Postgres => {
                let array: Vec<Option<i64>> = refs.iter().copied().map(Some).collect();
                let mut rows = conn
                    .prepare_cached(
                        "SELECT account_ref, cores, start_ms, end_ms FROM licences
                          WHERE account_ref = ANY(?1::BIGINT[]) ORDER BY account_ref, id",
                    )?
                    .query([Value::Ints(&array)])?;
                while let Some(r) = rows.next()? {
                    terms[position[&r.get::<_, i64>(0)?]]
                        .licences
                        .push(Licence {
                            cores: r.get(1)?,
                            start: from_ms(r.get(2)?),
                            end: from_ms(r.get(3)?),
                        });
                }
                let mut rows = conn
                    .prepare_cached(
                        "SELECT account_ref, cores, from_ms FROM caps
                          WHERE account_ref = ANY(?1::BIGINT[]) ORDER BY account_ref, id",
                    )?
                    .query([Value::Ints(&array)])?;
                while let Some(r) = rows.next()? {
                    terms[position[&r.get::<_, i64>(0)?]].caps.push(CapChange {
                        cores: r.get(1)?,
                        from: from_ms(r.get(2)?),
                    });
                }
            }
        }
        for (account_ref, stops) in Store::stops_of_many(conn, &refs)? {
            terms[position[&account_ref]]
                .unbilled
                .extend(stops.into_iter().map(|(a, b)| {
                    let end = if b == i64::MAX {
                        DateTime::<Utc>::MAX_UTC
                    } else {
                        from_ms(b)
                    };
                    (from_ms(a), end)
                }));
        }
        for (account_ref, trial) in super::states::trials_of_many(conn, &refs)? {
            terms[position[&account_ref]]
                .unbilled
                .push((trial.start, trial.end));
        }
        Ok(terms)
    }

    /// For each (account, instant): where the account's samples at or
    /// after it begin, to the UTC day, as [`Billing::first_sample_day_from`]
    /// gives it.
    pub fn first_sample_days_from(
        &self,
        after: &[(&Account, DateTime<Utc>)],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
        match self.0.conn.dialect() {
            Dialect::Sqlite => after
                .iter()
                .map(|(account, from)| self.first_sample_day_from(account, *from))
                .collect(),
            Dialect::Postgres => {
                let after: Vec<(i64, i64)> = after
                    .iter()
                    .map(|(account, from)| (account.reference, from.timestamp_millis()))
                    .collect();
                Ok(
                    super::samples::first_sample_days_from(&self.0.conn, &after)?
                        .into_iter()
                        .map(|ms| ms.map(from_ms))
                        .collect(),
                )
            }
        }
    }

    /// Moves each account's recompute mark up to `to`, as
    /// [`Billing::advance_recompute`] does one account.
    pub fn advance_recompute_of(
        &mut self,
        accounts: &[&Account],
        to: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self.0.conn.dialect() {
            Dialect::Sqlite => {
                for account in accounts {
                    self.advance_recompute(account, to)?;
                }
            }
            Dialect::Postgres => {
                let refs: Vec<Option<i64>> = accounts.iter().map(|a| Some(a.reference)).collect();
                let marks: Vec<Option<i64>> = accounts.iter().map(|a| Some(a.marks)).collect();
                self.0.conn.prepare_cached(
                    "UPDATE accounts AS a SET recompute_from_ms = greatest(a.recompute_from_ms, ?3)
                       FROM unnest(?1::BIGINT[], ?2::BIGINT[]) AS m(ref, marks)
                      WHERE a.ref = m.ref AND a.marks = m.marks",
                )?
                .execute((Value::Ints(&refs), Value::Ints(&marks), to.timestamp_millis()))?;
            }
        }
        Ok(())
    }

    /// Bills several accounts' windows inside the caller's write batch
    /// ([`Billing::in_write_batch`]), or in a transaction of its own; see
    /// [`bill_windows_in`].
    pub fn bill_windows(
        &mut self,
        windows: &[Window<'_>],
        compute: impl FnMut(usize, &[NodeSample]) -> Vec<DayFigures>,
        currency: &str,
        issued_at: DateTime<Utc>,
    ) -> Result<Vec<BillLine>, StoreError> {
        let channels = self.0.notice_channels;
        if !self.0.conn.is_autocommit() {
            return bill_windows_in(
                &self.0.conn,
                windows,
                compute,
                currency,
                issued_at,
                channels,
            );
        }
        let tx = self.0.conn.transaction()?;
        let lines = bill_windows_in(&tx, windows, compute, currency, issued_at, channels)?;
        tx.commit()?;
        Ok(lines)
    }
}

/// Bills each of `windows` on a connection inside a write transaction:
/// reads its samples, lets `compute` (given the window's position) turn
/// them into day figures, records each sampled day's usage, and issues for
/// each day the line `next_line` calls for against the lines stored.
/// Returns the lines issued, window by window.
pub(super) fn bill_windows_in(
    conn: &Conn,
    windows: &[Window<'_>],
    mut compute: impl FnMut(usize, &[NodeSample]) -> Vec<DayFigures>,
    currency: &str,
    issued_at: DateTime<Utc>,
    channels: NoticeChannels,
) -> Result<Vec<BillLine>, StoreError> {
    let figures: Vec<Vec<DayFigures>> = samples_of(conn, windows)?
        .into_iter()
        .enumerate()
        .map(|(i, samples)| {
            compute(i, &samples)
                .into_iter()
                .filter(|f| f.sampled)
                .collect()
        })
        .collect();
    let spans: Vec<Option<(NaiveDate, NaiveDate)>> = figures
        .iter()
        .map(|f| f.first().zip(f.last()).map(|(a, b)| (a.day, b.day)))
        .collect();
    let issued = issued_of(conn, windows, &spans)?;
    let mut usage = Vec::new();
    let mut lines: Vec<(i64, BillLine)> = Vec::new();
    let mut short = Vec::new();
    for (i, days) in figures.iter().enumerate() {
        let account = windows[i].account;
        for f in days {
            usage.push((account.reference, f));
            let before = issued[i].get(&f.day).copied().unwrap_or_default();
            if let Some(line) = next_line(&account.id, f, &before, currency, issued_at) {
                if line.kind == LineKind::Daily && f.peak_shortfall_cores > 0 {
                    short.push((account.reference, f, lines.len()));
                }
                lines.push((account.reference, line));
            }
        }
    }
    write_usage(conn, &usage)?;
    write_lines(conn, &lines, issued_at)?;
    // SPEC section 8: at most once a day, with the day's first bill.
    let notices: Vec<NewNotice<'_>> = short
        .into_iter()
        .map(|(account_ref, f, at)| {
            let line = &lines[at].1;
            NewNotice {
                account_ref,
                product: "pro",
                kind: shared::lifecycle::NoticeKind::LicenceShort,
                day: f.day,
                details: serde_json::json!({
                    "peak_shortfall_cores": f.peak_shortfall_cores,
                    "peak_hour": f.peak_shortfall_at_ms.map(from_ms),
                    "excess_core_hours": f.excess_core_hours,
                    "amount": line.amount,
                    "currency": line.currency,
                }),
            }
        })
        .collect();
    issue_notices(conn, &notices, issued_at, channels)?;
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}

/// Each window's samples, in the windows' order.
fn samples_of(conn: &Conn, windows: &[Window<'_>]) -> Result<Vec<Vec<NodeSample>>, StoreError> {
    match conn.dialect() {
        Dialect::Sqlite => windows
            .iter()
            .map(|w| super::samples::samples_in(conn, w.account.reference, w.window_ms))
            .collect(),
        Dialect::Postgres => {
            let mut out: Vec<Vec<NodeSample>> = windows.iter().map(|_| Vec::new()).collect();
            let of: Vec<(i64, (i64, i64))> = windows
                .iter()
                .map(|w| (w.account.reference, w.window_ms))
                .collect();
            // Streamed: a set's samples are many, and held once, as samples.
            super::samples::samples_of_windows(conn, &of, |i, sample| out[i].push(sample))?;
            Ok(out)
        }
    }
}

/// The lines issued so far for the days `spans` gives each window.
fn issued_of(
    conn: &Conn,
    windows: &[Window<'_>],
    spans: &[Option<(NaiveDate, NaiveDate)>],
) -> Result<Vec<HashMap<NaiveDate, Issued>>, StoreError> {
    let mut issued: Vec<HashMap<NaiveDate, Issued>> =
        windows.iter().map(|_| HashMap::new()).collect();
    let mut add = |i: usize, day: &str, seq: u32, amount: &str| -> Result<(), StoreError> {
        issued[i]
            .entry(parse_day(day)?)
            .or_default()
            .add(seq, parse_decimal(amount)?);
        Ok(())
    };
    match conn.dialect() {
        Dialect::Sqlite => {
            let mut stmt = conn.prepare_cached(
                "SELECT day, seq, amount FROM bill_lines WHERE account_ref = ?1 AND day >= ?2 AND day <= ?3",
            )?;
            for (i, (w, span)) in windows.iter().zip(spans).enumerate() {
                let Some((first, last)) = span else { continue };
                let mut rows =
                    stmt.query((w.account.reference, first.to_string(), last.to_string()))?;
                while let Some(r) = rows.next()? {
                    add(
                        i,
                        &r.get::<_, String>(0)?,
                        r.get(1)?,
                        &r.get::<_, String>(2)?,
                    )?;
                }
            }
        }
        Dialect::Postgres => {
            let wanted: Vec<usize> = (0..windows.len()).filter(|i| spans[*i].is_some()).collect();
            if wanted.is_empty() {
                return Ok(issued);
            }
            let refs: Vec<Option<i64>> = wanted
                .iter()
                .map(|&i| Some(windows[i].account.reference))
                .collect();
            let days: Vec<(String, String)> = wanted
                .iter()
                .map(|&i| {
                    let (a, b) = spans[i].expect("wanted");
                    (a.to_string(), b.to_string())
                })
                .collect();
            let first: Vec<Option<&str>> = days.iter().map(|d| Some(d.0.as_str())).collect();
            let last: Vec<Option<&str>> = days.iter().map(|d| Some(d.1.as_str())).collect();
            let mut rows = conn
                .prepare_cached(
                    "SELECT w.i, b.day, b.seq, b.amount
                       FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::TEXT[]) WITH ORDINALITY AS w(ref, first, last, i)
                      CROSS JOIN LATERAL (SELECT day, seq, amount FROM bill_lines
                                           WHERE account_ref = w.ref AND day >= w.first AND day <= w.last) AS b",
                )?
                .query((Value::Ints(&refs), Value::Texts(&first), Value::Texts(&last)))?;
            while let Some(r) = rows.next()? {
                let i: i64 = r.get(0)?;
                add(
                    wanted[i as usize - 1],
                    &r.get::<_, String>(1)?,
                    r.get(2)?,
                    &r.get::<_, String>(3)?,
                )?;
            }
        }
    }
    Ok(issued)
}

/// Records the chart's figures of every day looked at, billed or not.
fn write_usage(conn: &Conn, usage: &[(i64, &DayFigures)]) -> Result<(), StoreError> {
    const UPSERT: &str = "ON CONFLICT (account_ref, day) DO UPDATE
                SET hours = excluded.hours, core_hours = excluded.core_hours,
                    peak_cores = excluded.peak_cores";
    match conn.dialect() {
        Dialect::Sqlite => {
            let mut stmt = conn.prepare_cached(&format!(
                "INSERT INTO usage_days (account_ref, day, hours, core_hours, peak_cores)
                 VALUES (?1, ?2, ?3, ?4, ?5) {UPSERT}"
            ))?;
            for (account_ref, f) in usage {
                stmt.execute(crate::params![
                    account_ref,
                    f.day.to_string(),
                    i64::from(f.hours),
                    f.total_core_hours as i64,
                    f.peak_total_cores as i64,
                ])?;
            }
        }
        Dialect::Postgres => {
            if usage.is_empty() {
                return Ok(());
            }
            let refs: Vec<Option<i64>> = usage.iter().map(|u| Some(u.0)).collect();
            let days: Vec<String> = usage.iter().map(|u| u.1.day.to_string()).collect();
            let days: Vec<Option<&str>> = days.iter().map(|d| Some(d.as_str())).collect();
            let hours: Vec<Option<i64>> =
                usage.iter().map(|u| Some(i64::from(u.1.hours))).collect();
            let core_hours: Vec<Option<i64>> = usage
                .iter()
                .map(|u| Some(u.1.total_core_hours as i64))
                .collect();
            let peaks: Vec<Option<i64>> = usage
                .iter()
                .map(|u| Some(u.1.peak_total_cores as i64))
                .collect();
            conn.prepare_cached(&format!(
                "INSERT INTO usage_days (account_ref, day, hours, core_hours, peak_cores)
                 SELECT * FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::BIGINT[], ?4::BIGINT[], ?5::BIGINT[])
                 {UPSERT}"
            ))?
            .execute((
                Value::Ints(&refs),
                Value::Texts(&days),
                Value::Ints(&hours),
                Value::Ints(&core_hours),
                Value::Ints(&peaks),
            ))?;
        }
    }
    Ok(())
}

/// Writes the lines and queues each for delivery.
fn write_lines(
    conn: &Conn,
    lines: &[(i64, BillLine)],
    issued_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    const COLUMNS: &str =
        "account_ref, day, seq, kind, hours, excess_core_hours, average_excess_cores,
                           cap_cores, billable_cores, amount, currency, issued_at_ms";
    let next_attempt = issued_at.timestamp_millis();
    match conn.dialect() {
        Dialect::Sqlite => {
            let mut insert = conn.prepare_cached(&format!(
                "INSERT INTO bill_lines ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?;
            let mut queue = conn.prepare_cached(
                "INSERT INTO outbox (account_ref, day, seq, next_attempt_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (account_ref, line) in lines {
                insert.execute(crate::params![
                    account_ref,
                    line.day.to_string(),
                    line.seq,
                    line.kind.as_str(),
                    line.hours,
                    line.excess_core_hours as i64,
                    line.average_excess_cores.to_string(),
                    line.cap_cores,
                    line.billable_cores.to_string(),
                    line.amount.to_string(),
                    line.currency,
                    line.issued_at.timestamp_millis(),
                ])?;
                queue.execute((account_ref, line.day.to_string(), line.seq, next_attempt))?;
            }
        }
        Dialect::Postgres => {
            if lines.is_empty() {
                return Ok(());
            }
            let ints = |f: &dyn Fn(&(i64, BillLine)) -> i64| -> Vec<Option<i64>> {
                lines.iter().map(|l| Some(f(l))).collect()
            };
            let strings = |f: &dyn Fn(&BillLine) -> String| -> Vec<String> {
                lines.iter().map(|(_, l)| f(l)).collect()
            };
            let refs = ints(&|l| l.0);
            let seqs = ints(&|l| i64::from(l.1.seq));
            let hours = ints(&|l| i64::from(l.1.hours));
            let excess = ints(&|l| l.1.excess_core_hours as i64);
            let caps = ints(&|l| i64::from(l.1.cap_cores));
            let at = ints(&|l| l.1.issued_at.timestamp_millis());
            let days = strings(&|l| l.day.to_string());
            let kinds = strings(&|l| l.kind.as_str().to_string());
            let averages = strings(&|l| l.average_excess_cores.to_string());
            let billable = strings(&|l| l.billable_cores.to_string());
            let amounts = strings(&|l| l.amount.to_string());
            let currencies = strings(&|l| l.currency.clone());
            let (days, kinds, averages, billable, amounts, currencies) = (
                texts(&days),
                texts(&kinds),
                texts(&averages),
                texts(&billable),
                texts(&amounts),
                texts(&currencies),
            );
            conn.prepare_cached(&format!(
                "INSERT INTO bill_lines ({COLUMNS})
                 SELECT * FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::BIGINT[], ?4::TEXT[], ?5::BIGINT[],
                                      ?6::BIGINT[], ?7::TEXT[], ?8::BIGINT[], ?9::TEXT[], ?10::TEXT[],
                                      ?11::TEXT[], ?12::BIGINT[])"
            ))?
            .execute(crate::params![
                Value::Ints(&refs),
                Value::Texts(&days),
                Value::Ints(&seqs),
                Value::Texts(&kinds),
                Value::Ints(&hours),
                Value::Ints(&excess),
                Value::Texts(&averages),
                Value::Ints(&caps),
                Value::Texts(&billable),
                Value::Texts(&amounts),
                Value::Texts(&currencies),
                Value::Ints(&at),
            ])?;
            conn.prepare_cached(
                "INSERT INTO outbox (account_ref, day, seq, next_attempt_ms)
                 SELECT r, d, s, ?4 FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::BIGINT[]) AS l(r, d, s)",
            )?
            .execute((
                Value::Ints(&refs),
                Value::Texts(&days),
                Value::Ints(&seqs),
                next_attempt,
            ))?;
        }
    }
    Ok(())
}
