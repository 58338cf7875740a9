//! The lifecycle's quiet runs, a batch of accounts at a time.
//!
//! On most runs nothing happens to most accounts: no renewal is due, the
//! state the rules give is the one recorded, no notice is due, for the
//! account and for its log storage. Such a step only records that the
//! account was stepped through the run. `step_quiet_runs` reads what the
//! rules need of a batch of accounts in one statement per table, decides
//! with the same rules `step_account` uses which of their runs are quiet,
//! and records those in one statement. The first run that is not quiet,
//! and every run after it, is left to `step_account`, one account at a
//! time, exactly as before.

use std::str::FromStr;

use chrono::NaiveDate;
use rustc_hash::FxHashMap;
use shared::lifecycle::{run_day_at, run_of, Life, Product, State, TermLicence, Trial};
use shared::zone::{next_day, prev_day, BillingZone};

use super::accounts::Account;
use super::db::{Dialect, Value};
use super::log_storage::{term, TERM_COLUMNS};
use super::orders::day;
use super::states::{state_after_run, term_licence, TERM_LICENCE_COLUMNS};
use super::{from_ms, Billing, StoreError};

/// What the rules need of one account to tell whether a run does anything.
#[derive(Default)]
struct Facts {
    stepped_through: Option<String>,
    created_at_ms: i64,
    lifecycle_from_ms: Option<i64>,
    state: String,
    licences: Vec<TermLicence>,
    trial: Option<Trial>,
    storage: Vec<TermLicence>,
    storage_state: Option<String>,
    /// Images first seen since the run before the last without an
    /// authorization (SPEC 10.3), for the last run's daily notice.
    unauthorized: u64,
}

impl Facts {
    /// The runs `first..=last` this account's step would take, from the
    /// last it was stepped through (see `Billing::stepped_through`).
    fn first_run(&self, zone: &BillingZone, last: NaiveDate) -> Result<NaiveDate, StoreError> {
        let through = match (&self.stepped_through, self.lifecycle_from_ms) {
            (Some(s), _) => day(s)?,
            (None, Some(-1)) => prev_day(last),
            (None, _) => run_day_at(zone, from_ms(self.created_at_ms)),
        };
        Ok(next_day(through))
    }

    /// Whether the run of `day` changes nothing for the account: no renewal,
    /// no state change, no notice, for the account and its log storage.
    /// `life` and `storage` are the account's and its storage's as of that run.
    fn quiet_at(
        &self,
        zone: &BillingZone,
        life: &Life,
        storage: &Life,
        day: NaiveDate,
        daily: bool,
    ) -> Result<bool, StoreError> {
        let at = run_of(zone, day);
        let before = State::from_str(&self.state).map_err(StoreError::Corrupt)?;
        let after = state_after_run(life, zone, at, before);
        let account_quiet = life.renewals_due(zone, day).is_empty()
            && after == before
            && life
                .notices_at_run(zone, day, before, after, daily)
                .is_empty()
            && !(daily && self.unauthorized > 0);
        if !account_quiet {
            return Ok(false);
        }
        let storage_before = match &self.storage_state {
            Some(s) => State::from_str(s).map_err(StoreError::Corrupt)?,
            None => State::Unlicensed,
        };
        if storage.licences.is_empty()
            && storage.trial.is_none()
            && storage_before == State::Unlicensed
        {
            return Ok(true);
        }
        let storage_after = state_after_run(storage, zone, at, storage_before);
        Ok(storage.renewals_due(zone, day).is_empty()
            && storage_after == storage_before
            && storage
                .notices_at_run(zone, day, storage_before, storage_after, daily)
                .is_empty())
    }
}

impl Billing<'_> {
    /// Steps `accounts` (ascending by reference, inside the caller's write
    /// batch) through each run up to `last` that changes nothing for them,
    /// one after another from the first they were not stepped through;
    /// returns the positions of the accounts left with a run that does
    /// something, and that run, which `step_account` takes. An account
    /// whose facts cannot be read is left to `step_account` too (with no
    /// run named), which reports it.
    pub fn step_quiet_runs(
        &mut self,
        accounts: &[&Account],
        last: NaiveDate,
        zone: &BillingZone,
    ) -> Result<Vec<(usize, Option<NaiveDate>)>, StoreError> {
        let (Some(lo), Some(hi)) = (accounts.first(), accounts.last()) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = (lo.reference, hi.reference);
        let mut facts = self.facts_between(lo, hi, accounts, last, zone)?;
        let mut loud = Vec::new();
        // (account, last quiet run, lifecycle start) of each account with a quiet run.
        let mut quiet: Vec<(i64, String, Option<i64>)> = Vec::new();
        for (position, account) in accounts.iter().enumerate() {
            let Some(f) = facts.remove(&account.reference) else {
                loud.push((position, None));
                continue;
            };
            match quiet_through(&f, zone, last) {
                Ok((through, lifecycle_from, next)) => {
                    if let Some(through) = through {
                        quiet.push((account.reference, through.to_string(), lifecycle_from));
                    }
                    if next <= last {
                        loud.push((position, Some(next)));
                    }
                }
                Err(_) => loud.push((position, None)),
            }
        }
        self.record_stepped_through(&quiet)?;
        Ok(loud)
    }

    /// Reads the facts of the accounts with references in `lo..=hi`.
    fn facts_between(
        &self,
        lo: i64,
        hi: i64,
        accounts: &[&Account],
        last: NaiveDate,
        zone: &BillingZone,
    ) -> Result<FxHashMap<i64, Facts>, StoreError> {
        let conn = &self.0.conn;
        let mut facts: FxHashMap<i64, Facts> = FxHashMap::default();
        let mut rows = conn
            .prepare_cached(
                "SELECT ref, stepped_through, created_at_ms, lifecycle_from_ms, state FROM accounts
                  WHERE ref BETWEEN ?1 AND ?2",
            )?
            .query((lo, hi))?;
        while let Some(r) = rows.next()? {
            facts.insert(
                r.get(0)?,
                Facts {
                    stepped_through: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    lifecycle_from_ms: r.get(3)?,
                    state: r.get(4)?,
                    ..Facts::default()
                },
            );
        }
        let mut rows = conn
            .prepare_cached(&format!(
                "SELECT account_ref, {TERM_LICENCE_COLUMNS} FROM licences
                  WHERE account_ref BETWEEN ?1 AND ?2 ORDER BY account_ref, id"
            ))?
            .query((lo, hi))?;
        while let Some(r) = rows.next()? {
            if let Some(f) = facts.get_mut(&r.get(0)?) {
                f.licences.push(term_licence(&r, 1)?);
            }
        }
        let mut rows = conn
            .prepare_cached(&format!(
                "SELECT account_ref, {TERM_COLUMNS} FROM log_storage_orders
                  WHERE account_ref BETWEEN ?1 AND ?2 ORDER BY account_ref, id"
            ))?
            .query((lo, hi))?;
        while let Some(r) = rows.next()? {
            if let Some(f) = facts.get_mut(&r.get(0)?) {
                f.storage.push(term(&r, 1)?);
            }
        }
        let mut rows = conn
            .prepare_cached(
                "SELECT account_ref, start_ms, end_ms FROM trials WHERE account_ref BETWEEN ?1 AND ?2",
            )?
            .query((lo, hi))?;
        while let Some(r) = rows.next()? {
            if let Some(f) = facts.get_mut(&r.get(0)?) {
                f.trial = Some(Trial {
                    start: from_ms(r.get(1)?),
                    end: from_ms(r.get(2)?),
                });
            }
        }
        let mut rows = conn
            .prepare_cached(
                "SELECT account_ref, state FROM product_lives
                  WHERE account_ref BETWEEN ?1 AND ?2 AND product = ?3",
            )?
            .query((lo, hi, Product::LogStorage.as_str()))?;
        while let Some(r) = rows.next()? {
            if let Some(f) = facts.get_mut(&r.get(0)?) {
                f.storage_state = Some(r.get(1)?);
            }
        }
        // The images of the last run's daily notice: an index probe per
        // account (a range of accounts would read all their images).
        let (since, until) = (
            run_of(zone, prev_day(last)).timestamp_millis(),
            run_of(zone, last).timestamp_millis(),
        );
        const UNAUTHORIZED: &str = "SELECT count(*) FROM images WHERE account_ref = ?1
             AND first_seen_ms >= ?2 AND first_seen_ms < ?3 AND authorized_at_ms IS NULL";
        match conn.dialect() {
            Dialect::Sqlite => {
                let mut stmt = conn.prepare_cached(UNAUTHORIZED)?;
                for a in accounts {
                    let n: i64 = stmt.query_row((a.reference, since, until), |r| r.get(0))?;
                    if let Some(f) = facts.get_mut(&a.reference) {
                        f.unauthorized = u64::try_from(n).unwrap_or(0);
                    }
                }
            }
            Dialect::Postgres => {
                let refs: Vec<Option<i64>> = accounts.iter().map(|a| Some(a.reference)).collect();
                let mut rows = conn
                    .prepare_cached(
                        "SELECT a, (SELECT count(*) FROM images WHERE account_ref = a
                                      AND first_seen_ms >= ?2 AND first_seen_ms < ?3
                                      AND authorized_at_ms IS NULL)
                           FROM unnest(?1::BIGINT[]) AS a",
                    )?
                    .query((Value::Ints(&refs), since, until))?;
                while let Some(r) = rows.next()? {
                    let n: i64 = r.get(1)?;
                    if let Some(f) = facts.get_mut(&r.get(0)?) {
                        f.unauthorized = u64::try_from(n).unwrap_or(0);
                    }
                }
            }
        }
        Ok(facts)
    }

    /// Records each account's last quiet run and, for an account older than
    /// the lifecycle, the run its lifecycle began at.
    fn record_stepped_through(
        &self,
        quiet: &[(i64, String, Option<i64>)],
    ) -> Result<(), StoreError> {
        let conn = &self.0.conn;
        match conn.dialect() {
            Dialect::Sqlite => {
                let mut stmt = conn.prepare_cached(
                    "UPDATE accounts SET stepped_through = ?2, lifecycle_from_ms = ?3 WHERE ref = ?1",
                )?;
                for (account_ref, through, from_ms) in quiet {
                    stmt.execute((account_ref, through.as_str(), from_ms))?;
                }
            }
            Dialect::Postgres => {
                if quiet.is_empty() {
                    return Ok(());
                }
                let refs: Vec<Option<i64>> = quiet.iter().map(|q| Some(q.0)).collect();
                let days: Vec<Option<&str>> = quiet.iter().map(|q| Some(q.1.as_str())).collect();
                let froms: Vec<Option<i64>> = quiet.iter().map(|q| q.2).collect();
                conn.prepare_cached(
                    "UPDATE accounts AS a SET stepped_through = q.day, lifecycle_from_ms = q.from_ms
                       FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::BIGINT[]) AS q(ref, day, from_ms)
                      WHERE a.ref = q.ref",
                )?
                .execute((Value::Ints(&refs), Value::Texts(&days), Value::Ints(&froms)))?;
            }
        }
        Ok(())
    }
}

/// The last of the account's runs up to `last` that are quiet one after
/// another from its first run not yet stepped through (`None` when its
/// first is not), the lifecycle start to record with it, and the run after
/// them (after `last` when they took the account through it).
fn quiet_through(
    facts: &Facts,
    zone: &BillingZone,
    last: NaiveDate,
) -> Result<(Option<NaiveDate>, Option<i64>, NaiveDate), StoreError> {
    let mut lifecycle_from = facts.lifecycle_from_ms;
    let mut life = Life {
        licences: facts.licences.clone(),
        trial: facts.trial,
        not_before: lifecycle_from.filter(|ms| *ms >= 0).map(from_ms),
    };
    let mut storage = Life {
        licences: facts.storage.clone(),
        ..life.clone()
    };
    let mut through = None;
    let mut day = facts.first_run(zone, last)?;
    while day <= last {
        // An account older than the lifecycle starts it at its first run.
        if lifecycle_from == Some(-1) {
            let at = run_of(zone, day);
            lifecycle_from = Some(at.timestamp_millis());
            life.not_before = Some(at);
            storage.not_before = Some(at);
        }
        if !facts.quiet_at(zone, &life, &storage, day, day == last)? {
            break;
        }
        through = Some(day);
        day = next_day(day);
    }
    Ok((through, lifecycle_from, day))
}
