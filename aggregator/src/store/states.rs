//! An account's state and its history, and the step each 02:00 run takes
//! (`step_account`): renewals, state changes, notices, and the purge of a
//! deleted account's data. The rules are `shared::lifecycle`; orders and
//! the ledger are `orders.rs`.

use std::str::FromStr;

use super::db::{Conn, DbError, Dialect, OptionalExtension, Row, Value};
use super::Billing;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::json;
use shared::lifecycle::{
    order_price, run_of, Life, NoticeKind, State, TermLicence, Trial, RENEWAL_MONTHS,
};
use shared::overage::Period;
use shared::zone::BillingZone;

use super::accounts::mark_for_recompute;
use super::notices::issue_notice;
use super::orders::{balance_of, day, insert_order, link_renewal, post_entry, Stop};
use super::{from_ms, Store, StoreError};
use crate::config::NoticeChannels;

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChange {
    pub state: State,
    /// When it took effect (a run's instant, or the request's).
    pub at: DateTime<Utc>,
    /// When the service recorded it: later than `at` after an outage.
    pub recorded_at: DateTime<Utc>,
    pub cause: String,
}

/// What one account's step at one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    pub account: String,
    pub day: Option<NaiveDate>,
    pub state: Option<State>,
    pub notices: Vec<String>,
    pub renewed: Vec<i64>,
    /// Why the account's step failed; its steps were undone and are tried
    /// again at the next run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The columns of `licences` that [`term_licence`] reads, in its order.
pub(super) const TERM_LICENCE_COLUMNS: &str =
    "id, cores, start_ms, end_ms, ends_ms, auto_renew, renewed_by, created_at_ms";

/// A licence as the lifecycle sees it, from [`TERM_LICENCE_COLUMNS`]
/// starting at column `at`.
pub(super) fn term_licence(r: &Row<'_>, at: usize) -> Result<TermLicence, DbError> {
    let grace_ms = shared::overage::LICENCE_GRACE_DAYS * 86_400_000;
    let start: i64 = r.get(at + 2)?;
    let counts: i64 = r.get(at + 3)?;
    let ends: Option<i64> = r.get(at + 4)?;
    Ok(TermLicence {
        id: r.get(at)?,
        cores: r.get(at + 1)?,
        start: from_ms(start),
        // A licence given as a counting period ends the grace before its counting end.
        end: from_ms(ends.unwrap_or(counts - grace_ms).max(start)),
        counts_until: from_ms(counts),
        auto_renew: r.get::<_, i64>(at + 5)? != 0,
        renewed: r.get::<_, Option<i64>>(at + 6)?.is_some(),
        recorded_at: from_ms(r.get(at + 7)?),
    })
}

/// The account's licences as the lifecycle sees them.
pub(super) fn term_licences(conn: &Conn, account_ref: i64) -> Result<Vec<TermLicence>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TERM_LICENCE_COLUMNS} FROM licences WHERE account_ref = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([account_ref], |r| term_licence(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn trial_of(conn: &Conn, account_ref: i64) -> Result<Option<Trial>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT start_ms, end_ms FROM trials WHERE account_ref = ?1")?
        .query_row([account_ref], |r| {
            Ok(Trial {
                start: from_ms(r.get(0)?),
                end: from_ms(r.get(1)?),
            })
        })
        .optional()?)
}

/// The trial of each account of `accounts` that had one. On PostgreSQL one
/// statement for all of them.
pub(super) fn trials_of_many(
    conn: &Conn,
    accounts: &[i64],
) -> Result<Vec<(i64, Trial)>, StoreError> {
    match conn.dialect() {
        Dialect::Sqlite => {
            let mut out = Vec::new();
            for &account_ref in accounts {
                if let Some(trial) = trial_of(conn, account_ref)? {
                    out.push((account_ref, trial));
                }
            }
            Ok(out)
        }
        Dialect::Postgres => {
            let refs: Vec<Option<i64>> = accounts.iter().copied().map(Some).collect();
            let rows = conn
                .prepare_cached(
                    "SELECT account_ref, start_ms, end_ms FROM trials WHERE account_ref = ANY(?1::BIGINT[])",
                )?
                .query_map([Value::Ints(&refs)], |r| {
                    Ok((
                        r.get(0)?,
                        Trial {
                            start: from_ms(r.get(1)?),
                            end: from_ms(r.get(2)?),
                        },
                    ))
                })?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
    }
}

pub(super) fn life_of(conn: &Conn, account_ref: i64) -> Result<Life, StoreError> {
    let from: Option<i64> = conn
        .prepare_cached("SELECT lifecycle_from_ms FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    Ok(Life {
        licences: term_licences(conn, account_ref)?,
        trial: trial_of(conn, account_ref)?,
        not_before: from.filter(|ms| *ms >= 0).map(from_ms),
    })
}

pub(super) fn recorded_state(conn: &Conn, account_ref: i64) -> Result<State, StoreError> {
    let s: String = conn
        .prepare_cached("SELECT state FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    State::from_str(&s).map_err(StoreError::Corrupt)
}

/// The state a run at `at` records after `before`: the one the rules give,
/// except that a deletion always follows a recorded stop and its notices.
pub(super) fn state_after_run(
    life: &Life,
    zone: &BillingZone,
    at: DateTime<Utc>,
    before: State,
) -> State {
    match life.state_at(zone, at) {
        State::Deleted if !before.is_stopped() => State::Stopped,
        state => state,
    }
}

/// Records `state` from `at` when it differs from the account's current one;
/// a stop or a recovery marks the account for recompute from `at`.
pub(super) fn record_state(
    conn: &Conn,
    account_ref: i64,
    state: State,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    cause: &str,
) -> Result<bool, StoreError> {
    let before = recorded_state(conn, account_ref)?;
    if before == state {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO account_states (account_ref, state, at_ms, recorded_at_ms, cause) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute((account_ref, state.as_str(), at.timestamp_millis(), now.timestamp_millis(), cause))?;
    conn.prepare_cached("UPDATE accounts SET state = ?2, state_since_ms = ?3 WHERE ref = ?1")?
        .execute((account_ref, state.as_str(), at.timestamp_millis()))?;
    if before.is_stopped() != state.is_stopped() {
        mark_for_recompute(conn, account_ref, at)?;
    }
    Ok(true)
}

/// Records the state an admin action (an order, a renewal, a trial, a
/// licence) leads to, when it is one such an action can start: `active`,
/// `expiring` or `trial`. Every other change (grace, stop, deletion) is the
/// 02:00 step's, with its notices and its deletion, even when the action
/// comes between a run's instant and the account's step.
pub(super) fn record_admin_state(
    conn: &Conn,
    account_ref: i64,
    state: State,
    now: DateTime<Utc>,
    cause: &str,
) -> Result<bool, StoreError> {
    if matches!(state, State::Active | State::Expiring | State::Trial) {
        record_state(conn, account_ref, state, now, now, cause)
    } else {
        Ok(false)
    }
}

/// After an admin action (`what`: "order 7", "trial started"): records the
/// state the facts now give, if an admin action may (`record_admin_state`),
/// naming a return from a stop as a recovery.
pub(super) fn settle_after(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    before: State,
    now: DateTime<Utc>,
    what: &str,
) -> Result<(), StoreError> {
    let state = life_of(conn, account_ref)?.state_at(zone, now);
    let cause = if before.is_stopped() && !state.is_stopped() {
        format!("recovered by {what}")
    } else {
        what.to_string()
    };
    record_admin_state(conn, account_ref, state, now, &cause)?;
    Ok(())
}

/// An account's stopped periods, built from its states in order.
#[derive(Default)]
struct Periods {
    periods: Vec<(i64, i64)>,
    open: Option<i64>,
}

impl Periods {
    fn then(&mut self, state: &str, at: i64) {
        let stopped = matches!(state, "stopped" | "deleted");
        match (self.open, stopped) {
            (None, true) => self.open = Some(at),
            (Some(from), false) => {
                self.periods.push((from, at));
                self.open = None;
            }
            _ => {}
        }
    }

    fn end(mut self) -> Vec<(i64, i64)> {
        if let Some(from) = self.open {
            self.periods.push((from, i64::MAX));
        }
        self.periods
    }
}

impl Store {
    /// The periods whose samples are refused and whose hours are not billed:
    /// from each recorded stop until the account next came back.
    pub(super) fn stopped_periods_of(
        conn: &Conn,
        account_ref: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt = conn.prepare_cached(
            "SELECT state, at_ms FROM account_states WHERE account_ref = ?1 ORDER BY at_ms, id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        let mut periods = Periods::default();
        while let Some(r) = rows.next()? {
            periods.then(&r.get::<_, String>(0)?, r.get(1)?);
        }
        Ok(periods.end())
    }

    /// What ingest refuses of each account (`accounts`, ascending): its
    /// stopped periods and, when its data was deleted, everything before the
    /// deletion (a late sample must not come back after "your data was
    /// deleted"). Accounts with nothing refused are left out. On PostgreSQL
    /// one statement for all of them.
    pub(super) fn stopped_periods_of_many(
        conn: &Conn,
        accounts: &[i64],
    ) -> Result<FxHashMap<i64, Vec<(i64, i64)>>, StoreError> {
        Store::periods_of_many(conn, accounts, true)
    }

    /// The stopped periods of each account of `accounts`, as
    /// [`Store::stopped_periods_of`] gives them; accounts without are left
    /// out. On PostgreSQL one statement for all of them.
    pub(super) fn stops_of_many(
        conn: &Conn,
        accounts: &[i64],
    ) -> Result<FxHashMap<i64, Vec<(i64, i64)>>, StoreError> {
        Store::periods_of_many(conn, accounts, false)
    }

    fn periods_of_many(
        conn: &Conn,
        accounts: &[i64],
        with_deletions: bool,
    ) -> Result<FxHashMap<i64, Vec<(i64, i64)>>, StoreError> {
        let mut refused: FxHashMap<i64, Vec<(i64, i64)>> = FxHashMap::default();
        let mut deleted: Vec<(i64, i64)> = Vec::new();
        match conn.dialect() {
            Dialect::Sqlite => {
                for &account_ref in accounts {
                    let periods = Store::stopped_periods_of(conn, account_ref)?;
                    if !periods.is_empty() {
                        refused.insert(account_ref, periods);
                    }
                    if !with_deletions {
                        continue;
                    }
                    if let Some(before) = Store::data_deleted_before_of(conn, account_ref)? {
                        deleted.push((account_ref, before));
                    }
                }
            }
            Dialect::Postgres => {
                let refs: Vec<Option<i64>> = accounts.iter().copied().map(Some).collect();
                const STOPS: &str = "SELECT a.ref, a.data_deleted_before_ms, s.state, s.at_ms, s.id
                       FROM accounts a JOIN account_states s ON s.account_ref = a.ref
                      WHERE a.ref = ANY(?1::BIGINT[])";
                let sql = if with_deletions {
                    format!(
                        "{STOPS}
                          UNION ALL
                         SELECT a.ref, a.data_deleted_before_ms, NULL, NULL, NULL
                           FROM accounts a
                          WHERE a.ref = ANY(?1::BIGINT[]) AND a.data_deleted_before_ms IS NOT NULL
                          ORDER BY 1, 4 NULLS LAST, 5"
                    )
                } else {
                    format!("{STOPS} ORDER BY 1, 4, 5")
                };
                let mut rows = conn.prepare_cached(&sql)?.query([Value::Ints(&refs)])?;
                let mut current: Option<(i64, Periods)> = None;
                while let Some(r) = rows.next()? {
                    let account_ref: i64 = r.get(0)?;
                    let (state, at): (Option<String>, Option<i64>) = (r.get(2)?, r.get(3)?);
                    let Some((state, at)) = state.zip(at) else {
                        // The row saying the account's data was deleted.
                        deleted.push((account_ref, r.get(1)?));
                        continue;
                    };
                    if current.as_ref().is_some_and(|(a, _)| *a != account_ref) {
                        let (a, periods) = current.take().expect("just checked");
                        refused.insert(a, periods.end());
                    }
                    current
                        .get_or_insert_with(|| (account_ref, Periods::default()))
                        .1
                        .then(&state, at);
                }
                if let Some((a, periods)) = current {
                    refused.insert(a, periods.end());
                }
                refused.retain(|_, periods| !periods.is_empty());
            }
        }
        for (account_ref, before) in deleted {
            refused
                .entry(account_ref)
                .or_default()
                .push((i64::MIN, before));
        }
        Ok(refused)
    }

    /// The instant before which the account's data was deleted, if it was.
    pub(super) fn data_deleted_before_of(
        conn: &Conn,
        account_ref: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT data_deleted_before_ms FROM accounts WHERE ref = ?1")?
            .query_row([account_ref], |r| r.get(0))?)
    }
}

/// One account's step through one run; see [`Store::step_account`].
pub(super) struct Step<'a> {
    account_ref: i64,
    account: &'a str,
    day_of_run: NaiveDate,
    daily: bool,
    zone: &'a BillingZone,
    price_per_core_month: Decimal,
    channels: NoticeChannels,
    log_storage: shared::logs::Terms,
    now: DateTime<Utc>,
}

impl Step<'_> {
    fn take(&self, tx: &Conn) -> Result<StepOutcome, StoreError> {
        let Step {
            account_ref,
            account,
            day_of_run,
            daily,
            zone,
            price_per_core_month,
            channels,
            log_storage,
            now,
        } = *self;
        let at = run_of(zone, day_of_run);
        let mut outcome = StepOutcome {
            account: account.to_string(),
            ..StepOutcome::default()
        };
        let stepped: Option<String> = tx.query_row(
            "SELECT stepped_through FROM accounts WHERE ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        if stepped
            .as_deref()
            .map(day)
            .transpose()?
            .is_some_and(|d| d >= day_of_run)
        {
            return Ok(outcome);
        }
        // An account older than the lifecycle starts it at its first run.
        tx.execute(
            "UPDATE accounts SET lifecycle_from_ms = ?2 WHERE ref = ?1 AND lifecycle_from_ms = -1",
            (account_ref, at.timestamp_millis()),
        )?;
        outcome.day = Some(day_of_run);
        // 1. Renewals, paid from the balance.
        let life = life_of(tx, account_ref)?;
        let (mut renewed, mut refused) = (Vec::new(), Vec::new());
        for l in life.renewals_due(zone, day_of_run) {
            let price = order_price(l.cores, RENEWAL_MONTHS, price_per_core_month);
            let balance = balance_of(tx, account_ref)?;
            let (start, end) = Life::renewal_of(zone, &l);
            if balance >= price {
                let (licence, order) = insert_order(
                    tx,
                    zone,
                    account_ref,
                    "renewal",
                    l.cores,
                    RENEWAL_MONTHS,
                    (start, end),
                    price,
                    "balance",
                    true,
                    now,
                )?;
                link_renewal(tx, account_ref, l.id, licence)?;
                let after = post_entry(tx, account_ref, "debit", price, None, Some(order), now)?;
                outcome.renewed.push(licence);
                renewed.push(json!({
                    "licence": l.id, "renewal": licence, "order": order, "cores": l.cores,
                    "start_day": start, "end_day": end, "price": price, "balance_after": after,
                }));
            } else {
                refused.push(json!({
                    "licence": l.id, "cores": l.cores, "end_day": zone.day_of(l.end), "price": price,
                    "balance": balance, "shortfall": price - balance,
                    "reason": format!("the balance {balance} does not cover the renewal's price {price}"),
                }));
            }
        }
        // 2. The state.
        let life = life_of(tx, account_ref)?;
        let before = recorded_state(tx, account_ref)?;
        let after = state_after_run(&life, zone, at, before);
        if record_state(
            tx,
            account_ref,
            after,
            at,
            now,
            &format!("run of {day_of_run}"),
        )? {
            outcome.state = Some(after);
        }
        if after == State::Deleted && before != State::Deleted {
            tx.execute(
                "INSERT INTO deletions (account_ref, before_ms, decided_at_ms) VALUES (?1, ?2, ?3)",
                (account_ref, at.timestamp_millis(), now.timestamp_millis()),
            )?;
            tx.execute(
                "UPDATE accounts SET data_deleted_before_ms = ?2 WHERE ref = ?1",
                (account_ref, at.timestamp_millis()),
            )?;
        }
        // 3. The notices.
        let mut notices = Vec::new();
        if !renewed.is_empty() {
            notices.push((NoticeKind::RenewalSucceeded, json!({ "renewals": renewed })));
        }
        if !refused.is_empty() {
            notices.push((NoticeKind::RenewalFailed, json!({ "licences": refused })));
        }
        notices.extend(life.notices_at_run(zone, day_of_run, before, after, daily));
        // Images first seen since the last run without an authorization
        // (SPEC 10.3): how many, at most once a day.
        let since = shared::lifecycle::run_of(zone, day_of_run - chrono::Days::new(1));
        let unauthorized = super::images::unauthorized_between(tx, account_ref, since, at)?;
        if daily && unauthorized > 0 {
            notices.push((
                NoticeKind::ImagesUnauthorized,
                json!({ "product": "image_scan", "unauthorized": unauthorized, "since": since }),
            ));
        }
        for (kind, details) in notices {
            if issue_notice(
                tx,
                account_ref,
                "pro",
                kind,
                day_of_run,
                &details,
                now,
                channels,
            )?
            .is_some()
            {
                outcome.notices.push(kind.as_str().to_string());
            }
        }
        // The log storage's own life, through the same run.
        outcome.notices.extend(super::log_storage::step(
            tx,
            zone,
            account_ref,
            day_of_run,
            daily,
            log_storage,
            channels,
            now,
        )?);
        tx.execute(
            "UPDATE accounts SET stepped_through = ?2 WHERE ref = ?1",
            (account_ref, day_of_run.to_string()),
        )?;
        Ok(outcome)
    }
}

impl Billing<'_> {
    /// The deletions of the account's data: when decided, how many rows went, when finished.
    pub fn deletions(&mut self, account: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT before_ms, decided_at_ms, samples, rejections, finished_at_ms FROM deletions WHERE account_ref = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([account_ref], |r| {
            Ok(json!({
                "samples_before": from_ms(r.get(0)?),
                "decided_at": from_ms(r.get(1)?),
                "samples": r.get::<_, i64>(2)?,
                "rejections": r.get::<_, i64>(3)?,
                "finished_at": r.get::<_, Option<i64>>(4)?.map(from_ms),
            }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the state the account's facts give now, when an admin action
    /// can start it (see `record_admin_state`): after a licence is added
    /// through `POST .../licenses`, which knows no zone.
    pub fn settle_state(
        &mut self,
        account: &str,
        zone: &BillingZone,
        now: DateTime<Utc>,
        cause: &str,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        let before = recorded_state(&tx, account_ref)?;
        settle_after(&tx, zone, account_ref, before, now, cause)?;
        tx.commit()?;
        Ok(())
    }

    /// What the rules know of the account, its recorded state and since when.
    pub fn life(
        &mut self,
        account: &str,
    ) -> Result<(Life, State, Option<DateTime<Utc>>), StoreError> {
        let account_ref = self.require_account(account)?;
        let since: Option<i64> = self.0.conn.query_row(
            "SELECT state_since_ms FROM accounts WHERE ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        Ok((
            life_of(&self.0.conn, account_ref)?,
            recorded_state(&self.0.conn, account_ref)?,
            since.map(from_ms),
        ))
    }

    /// Steps one account through the run of `day_of_run` (LIFECYCLE.md):
    /// renewals, then the state, then the notices, all in one transaction
    /// (the caller's, inside [`Store::in_write_batch`]); a run it was already
    /// stepped through is skipped. `daily` is false for runs caught up after
    /// an outage but the last: warnings repeated each day are only sent for
    /// the latest.
    pub fn step_account(
        &mut self,
        account: &str,
        day_of_run: NaiveDate,
        daily: bool,
        zone: &BillingZone,
        price_per_core_month: Decimal,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome, StoreError> {
        let account_ref = self.require_account(account)?;
        let step = Step {
            account_ref,
            account,
            day_of_run,
            daily,
            zone,
            price_per_core_month,
            channels: self.0.notice_channels,
            log_storage: self.0.log_storage,
            now,
        };
        if !self.0.conn.is_autocommit() {
            return step.take(&self.0.conn);
        }
        let tx = self.0.conn.transaction()?;
        let outcome = step.take(&tx)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// The last run day the account was stepped through: the run day before
    /// it was created when none yet, and `None` for an account older than
    /// the lifecycle that was never stepped (it starts at the current run).
    pub fn stepped_through(
        &mut self,
        account: &str,
        zone: &BillingZone,
    ) -> Result<Option<NaiveDate>, StoreError> {
        let account_ref = self.require_account(account)?;
        let (stepped, created, from): (Option<String>, i64, Option<i64>) = self.0.conn.query_row(
            "SELECT stepped_through, created_at_ms, lifecycle_from_ms FROM accounts WHERE ref = ?1",
            [account_ref],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        match (stepped, from) {
            (Some(s), _) => day(&s).map(Some),
            (None, Some(-1)) => Ok(None),
            (None, _) => Ok(Some(shared::lifecycle::run_day_at(zone, from_ms(created)))),
        }
    }

    /// Deletes a batch of at most `limit` rows of an account whose data is
    /// being deleted; returns the rows deleted (0 when none is left to do).
    pub fn purge_deleted_data(
        &mut self,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let tx = self.0.conn.transaction()?;
        let job: Option<(i64, i64, i64)> = tx
            .query_row(
                "SELECT id, account_ref, before_ms FROM deletions WHERE finished_at_ms IS NULL ORDER BY id LIMIT 1",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, account_ref, before)) = job else {
            return Ok(0);
        };
        let (samples, rows) =
            super::retention::delete_samples_before(&tx, account_ref, before, limit)?;
        let rejections = tx.execute(
            "DELETE FROM rejections WHERE rowid IN
               (SELECT rowid FROM rejections WHERE account_ref = ?1 AND at_ms < ?2 LIMIT ?3)",
            (account_ref, before, limit as i64),
        )?;
        tx.execute(
            "UPDATE deletions SET samples = samples + ?2, rejections = rejections + ?3 WHERE id = ?1",
            (id, samples as i64, rejections as i64),
        )?;
        if rows < limit && rejections < limit {
            tx.execute(
                "UPDATE deletions SET finished_at_ms = ?2 WHERE id = ?1",
                (id, now.timestamp_millis()),
            )?;
            // No sample of before is left to have seen a node then.
            tx.execute(
                "UPDATE nodes SET last_seen_ms = NULL WHERE account_ref = ?1 AND last_seen_ms < ?2",
                (account_ref, before),
            )?;
        }
        tx.commit()?;
        Ok((samples as usize + rejections).max(1) as u64)
    }

    /// The periods of the account's stops as instants, open-ended stops
    /// ending at `None`: what an exported case carries.
    pub fn stopped_periods(&mut self, account: &str) -> Result<Vec<Stop>, StoreError> {
        let account_ref = self.require_account(account)?;
        Ok(Store::stopped_periods_of(&self.0.conn, account_ref)?
            .into_iter()
            .map(|(a, b)| (from_ms(a), (b != i64::MAX).then(|| from_ms(b))))
            .collect())
    }

    /// The account's trial, if it had one.
    pub fn trial(&mut self, account: &str) -> Result<Option<Trial>, StoreError> {
        let account_ref = self.require_account(account)?;
        trial_of(&self.0.conn, account_ref)
    }

    /// Records a trial and stops as a replayed case gives them (an exported
    /// day of an account that had them), so that replay bills it as the
    /// service did: trial hours free, stopped hours unbilled and their
    /// samples refused.
    pub fn replay_life(
        &mut self,
        account: &str,
        trial: Option<Trial>,
        stops: &[Stop],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        if let Some(t) = trial {
            tx.execute(
                "INSERT INTO trials (main_ref, account_ref, start_ms, end_ms, started_at_ms) VALUES (?1, ?1, ?2, ?3, ?4)",
                (account_ref, t.start.timestamp_millis(), t.end.timestamp_millis(), now.timestamp_millis()),
            )?;
            mark_for_recompute(&tx, account_ref, t.start)?;
        }
        for &(from, to) in stops {
            record_state(&tx, account_ref, State::Stopped, from, now, "replayed stop")?;
            if let Some(to) = to {
                record_state(
                    &tx,
                    account_ref,
                    State::Active,
                    to,
                    now,
                    "replayed recovery",
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The hours of the account that are never billed: its trial and its stops.
    pub fn unbilled_periods(&self, account: &super::Account) -> Result<Vec<Period>, StoreError> {
        let mut out: Vec<Period> = Store::stopped_periods_of(&self.0.conn, account.reference)?
            .into_iter()
            .map(|(a, b)| {
                (
                    from_ms(a),
                    if b == i64::MAX {
                        DateTime::<Utc>::MAX_UTC
                    } else {
                        from_ms(b)
                    },
                )
            })
            .collect();
        if let Some(t) = trial_of(&self.0.conn, account.reference)? {
            out.push((t.start, t.end));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, NewContact, Store};
    use shared::lifecycle::default_price_per_core_month;
    use shared::lifecycle::ContactRole;

    fn local(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("{s}+08:00"))
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A database as the build before the lifecycle left it: schema 4, an
    /// account whose only licence ended in January, and a sample.
    fn version_4_database(path: &std::path::Path) {
        let conn = rusqlite::Connection::open(path).unwrap();
        for sql in &super::super::migrations::sqlite_up_to(4) {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        let jan = local("2026-01-01T00:00:00").timestamp_millis();
        conn.execute(
            "INSERT INTO accounts (ref, id, created_at_ms) VALUES (1, 'old', ?1)",
            [jan],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO licences (account_ref, cores, start_ms, end_ms, created_at_ms) VALUES (1, 10, ?1, ?2, ?1)",
            (jan, local("2026-02-06T00:00:00").timestamp_millis()),
        )
        .unwrap();
    }

    #[test]
    fn an_account_older_than_the_lifecycle_whose_first_run_is_quiet_starts_its_lifecycle_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-meter.sqlite");
        version_4_database(&path);
        // Its licence runs past the first runs, so those change nothing.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE licences SET end_ms = ?1",
                [local("2027-03-01T00:00:00").timestamp_millis()],
            )
            .unwrap();
        let mut store = Store::open(&path, Durability::Durable).unwrap();
        // Recorded active since, as an admin action would have left it.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE accounts SET state = 'active'", [])
            .unwrap();
        let zone = BillingZone::default();
        let price = default_price_per_core_month();
        for at in ["2026-11-26T02:00:00", "2026-11-29T02:00:00"] {
            let changed =
                crate::billing::lifecycle::run_lifecycle(&mut store, local(at), &zone, price)
                    .unwrap();
            assert_eq!(changed, Vec::new(), "the run at {at} is quiet");
        }
        let (life, state, _) = store.billing().life("old").unwrap();
        assert_eq!(state, State::Active);
        assert_eq!(life.not_before, Some(local("2026-11-26T02:00:00")));
        assert_eq!(
            store.billing().stepped_through("old", &zone).unwrap(),
            Some("2026-11-29".parse().unwrap())
        );
    }

    #[test]
    fn an_upgrade_gives_an_account_whose_licence_ended_long_ago_its_whole_grace_before_any_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-meter.sqlite");
        version_4_database(&path);
        let mut store = Store::open(&path, Durability::Durable).unwrap();
        let zone = BillingZone::default();
        let price = default_price_per_core_month();
        let step = |store: &mut Store, at: &str| {
            crate::billing::lifecycle::run_lifecycle(store, local(at), &zone, price).unwrap();
            store.billing().life("old").unwrap().1
        };
        // The first run after the upgrade: grace from here, not deletion.
        assert_eq!(step(&mut store, "2026-11-26T02:00:00"), State::Grace);
        assert_eq!(step(&mut store, "2026-11-30T02:00:00"), State::Grace);
        assert_eq!(step(&mut store, "2026-12-01T02:00:00"), State::Stopped);
        assert_eq!(step(&mut store, "2026-12-06T02:00:00"), State::Deleted);
        let history: Vec<(State, DateTime<Utc>)> = store
            .accounts()
            .state_history("old")
            .unwrap()
            .into_iter()
            .map(|c| (c.state, c.at))
            .collect();
        assert_eq!(
            history,
            vec![
                (State::Grace, local("2026-11-26T02:00:00")),
                (State::Stopped, local("2026-12-01T02:00:00")),
                (State::Deleted, local("2026-12-06T02:00:00")),
            ]
        );
    }

    #[test]
    fn a_contact_without_a_valid_address_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db"), Durability::Scratch).unwrap();
        let now = local("2026-11-26T10:00:00");
        store.accounts().create_account("acme", now).unwrap();
        let contact = |email: Option<&str>, sms: Option<&str>| NewContact {
            name: "Ops".into(),
            role: ContactRole::Creator,
            email: email.map(str::to_string),
            sms: sms.map(str::to_string),
        };
        for (c, field) in [
            (contact(None, None), "email"),
            (contact(Some("not an address"), None), "email"),
            (contact(Some("ops@example"), None), "email"),
            (contact(None, Some("13800138000")), "sms"),
            (contact(None, Some("+12")), "sms"),
        ] {
            match store.accounts().add_contact("acme", &c, now) {
                Err(StoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{c:?}"),
                other => panic!("{c:?} was not refused: {other:?}"),
            }
        }
        store
            .accounts()
            .add_contact(
                "acme",
                &contact(Some("ops@example.com"), Some("+8613800138000")),
                now,
            )
            .unwrap();
        assert_eq!(store.accounts().contacts("acme").unwrap().len(), 1);
    }
}
