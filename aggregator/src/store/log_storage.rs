//! The log-storage add-on (SPEC 10.4): its orders, each a term; its own
//! life beside the account's (which stays the life of its licensed cores),
//! stepped by the same 02:00 run with the same rules; the usage the log
//! service reports, the purges decided from it, and the view of it all.
//! The rules are `shared::logs` and `shared::lifecycle`.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use shared::lifecycle::{run_of, Life, NoticeKind, Product, State, TermLicence};
use shared::logs::{self as rules, Terms as LogStorageTerms, UsageAnswer, UsageReport, GB};
use shared::zone::BillingZone;

use super::db::{Conn, DbError, Dialect, OptionalExtension, Row};
use super::notices::issue_notice;
use super::orders::{balance_of, day, decimal, invalid, payment, post_entry};
use super::states::{state_after_run, trial_of, StateChange};
use super::{from_ms, LogStorage, StoreError};
use crate::config::NoticeChannels;

const PRODUCT: Product = Product::LogStorage;
/// The most bytes one log day may report: 256 TiB, so that 10,000 of them
/// still add up inside a stored integer.
pub const MAX_DAY_BYTES: u64 = 1 << 48;
/// How far ahead of the service's clock a report's `at` may be.
const REPORT_AHEAD_SECS: i64 = 300;
/// The days of usage history a view shows.
const HISTORY_DAYS: u32 = 400;

/// A log-storage order to place.
#[derive(Debug, Clone)]
pub struct NewLogOrder {
    pub gb: u32,
    pub months: u32,
    /// The first day; today in the billing zone when not given.
    pub start: Option<NaiveDate>,
    pub auto_renew: bool,
    pub pay_from_balance: bool,
}

/// A log-storage order as stored: a purchase, a renewal or an expansion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogOrder {
    pub id: i64,
    pub product: &'static str,
    pub kind: String,
    pub gb: u32,
    pub months: u32,
    pub start_day: NaiveDate,
    /// The first day it no longer covers.
    pub end_day: NaiveDate,
    /// Until when it counts: the end of its grace, or where its renewal starts.
    pub counts_until: DateTime<Utc>,
    pub price: Decimal,
    pub paid_from: String,
    pub auto_renew: bool,
    pub renewed_by: Option<i64>,
    /// An expansion's order it adds to.
    pub expands: Option<i64>,
    pub ordered_at: DateTime<Utc>,
}

/// A purge decided from a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purge {
    pub id: i64,
    pub decided_at: DateTime<Utc>,
    /// The report it was decided from.
    pub report_at: DateTime<Utc>,
    pub days: Vec<NaiveDate>,
    pub bytes: u64,
    /// `over_quota` or `deleted`.
    pub reason: String,
}

/// The last usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub days: u64,
    pub used_bytes: u64,
    pub quota_bytes: u64,
}

/// One day's last usage against its quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageDay {
    pub day: NaiveDate,
    pub used_bytes: u64,
    pub quota_bytes: u64,
}

/// Everything about an account's log storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogStorageView {
    pub product: &'static str,
    pub state: State,
    pub state_since: Option<DateTime<Utc>>,
    pub next_change: Option<Value>,
    pub quota_gb: u64,
    pub quota_bytes: u64,
    pub accept_writes: bool,
    pub usage: Option<Usage>,
    pub orders: Vec<LogOrder>,
    pub purges: Vec<Purge>,
    /// Usage against quota by day, oldest first.
    pub history: Vec<UsageDay>,
    pub state_history: Vec<StateChange>,
}

/// What a usage report did beside its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub answer: UsageAnswer,
    /// Older than the last report taken: answered, not recorded.
    pub stale: bool,
    pub purged_days: u64,
    pub purged_bytes: u64,
}

/// A day's part of the daily report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogStorageDay {
    pub state: Option<State>,
    pub quota_bytes: u64,
    pub used_bytes: Option<u64>,
    pub purges: u64,
    pub purged_bytes: u64,
}

const ORDER_COLUMNS: &str = "id, kind, gb, months, start_day, end_day, counts_until_ms, price, paid_from, auto_renew, renewed_by, expands, ordered_at_ms";

fn order_row(r: &super::db::Row<'_>) -> Result<LogOrder, StoreError> {
    let (start, end, price): (String, String, String) = (r.get(4)?, r.get(5)?, r.get(7)?);
    Ok(LogOrder {
        id: r.get(0)?,
        product: PRODUCT.as_str(),
        kind: r.get(1)?,
        gb: r.get(2)?,
        months: r.get(3)?,
        start_day: day(&start)?,
        end_day: day(&end)?,
        counts_until: from_ms(r.get(6)?),
        price: decimal(&price)?,
        paid_from: r.get(8)?,
        auto_renew: r.get::<_, i64>(9)? != 0,
        renewed_by: r.get(10)?,
        expands: r.get(11)?,
        ordered_at: from_ms(r.get(12)?),
    })
}

fn orders_of(conn: &Conn, account_ref: i64) -> Result<Vec<LogOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM log_storage_orders WHERE account_ref = ?1 ORDER BY id"
    ))?;
    let mut rows = stmt.query([account_ref])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(order_row(&r)?);
    }
    Ok(out)
}

/// The storage's terms as the lifecycle sees them: an order's GB are its
/// "cores"; an expansion never renews by itself (its GB go into its
/// order's renewal).
/// The columns of `log_storage_orders` that [`term`] reads, in its order.
pub(super) const TERM_COLUMNS: &str =
    "id, gb, start_ms, ends_ms, counts_until_ms, auto_renew, renewed_by, ordered_at_ms, expands";

/// An order as the storage's life sees it, from [`TERM_COLUMNS`] starting
/// at column `at`.
pub(super) fn term(r: &Row<'_>, at: usize) -> Result<TermLicence, DbError> {
    Ok(TermLicence {
        id: r.get(at)?,
        cores: r.get(at + 1)?,
        start: from_ms(r.get(at + 2)?),
        end: from_ms(r.get(at + 3)?),
        counts_until: from_ms(r.get(at + 4)?),
        auto_renew: r.get::<_, i64>(at + 5)? != 0 && r.get::<_, Option<i64>>(at + 8)?.is_none(),
        renewed: r.get::<_, Option<i64>>(at + 6)?.is_some(),
        recorded_at: from_ms(r.get(at + 7)?),
    })
}

fn terms(conn: &Conn, account_ref: i64) -> Result<Vec<TermLicence>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TERM_COLUMNS} FROM log_storage_orders WHERE account_ref = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([account_ref], |r| term(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The storage's life: its terms, the account's trial (whose allowance it
/// is), from when the account's lifecycle began.
fn life_of(conn: &Conn, account_ref: i64) -> Result<Life, StoreError> {
    let from: Option<i64> = conn
        .prepare_cached("SELECT lifecycle_from_ms FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    Ok(Life {
        licences: terms(conn, account_ref)?,
        trial: trial_of(conn, account_ref)?,
        not_before: from.filter(|ms| *ms >= 0).map(from_ms),
    })
}

/// The product's recorded state: `unlicensed` before its life began.
pub(super) fn recorded_product_state(
    conn: &Conn,
    account_ref: i64,
    product: Product,
) -> Result<(State, Option<DateTime<Utc>>), StoreError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT state, state_since_ms FROM product_lives WHERE account_ref = ?1 AND product = ?2",
        )?
        .query_row((account_ref, product.as_str()), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        None => Ok((State::Unlicensed, None)),
        Some((s, since)) => Ok((
            State::from_str(&s).map_err(StoreError::Corrupt)?,
            Some(from_ms(since)),
        )),
    }
}

/// Records the product's `state` from `at` when it differs from the one
/// recorded.
fn record_product_state(
    conn: &Conn,
    account_ref: i64,
    product: Product,
    state: State,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    cause: &str,
) -> Result<bool, StoreError> {
    if recorded_product_state(conn, account_ref, product)?.0 == state {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO product_states (account_ref, product, state, at_ms, recorded_at_ms, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((account_ref, product.as_str(), state.as_str(), at.timestamp_millis(), now.timestamp_millis(), cause))?;
    conn.prepare_cached(
        "INSERT INTO product_lives (account_ref, product, state, state_since_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account_ref, product) DO UPDATE SET state = excluded.state, state_since_ms = excluded.state_since_ms",
    )?
    .execute((account_ref, product.as_str(), state.as_str(), at.timestamp_millis()))?;
    Ok(true)
}

/// After an admin action (an order, an expansion, a trial): the state the
/// facts now give, when an admin action may start it (`active`, `expiring`,
/// `trial`); grace, stop and deletion are the run's.
pub(super) fn settle_log_storage(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    now: DateTime<Utc>,
    what: &str,
) -> Result<(), StoreError> {
    let before = recorded_product_state(conn, account_ref, PRODUCT)?.0;
    let state = life_of(conn, account_ref)?.state_at(zone, now);
    if matches!(state, State::Active | State::Expiring | State::Trial) {
        let cause = if before.is_stopped() {
            format!("recovered by {what}")
        } else {
            what.to_string()
        };
        record_product_state(conn, account_ref, PRODUCT, state, now, now, &cause)?;
    }
    Ok(())
}

/// The quota at `at`: the GB of the orders that count then (grace
/// included), and the trial's allowance during a trial.
fn quota_bytes(
    conn: &Conn,
    account_ref: i64,
    at: DateTime<Utc>,
    trial_gb: u32,
) -> Result<u64, StoreError> {
    let ms = at.timestamp_millis();
    let gb: i64 = conn
        .prepare_cached(
            "SELECT CAST(coalesce(sum(gb), 0) AS BIGINT) FROM log_storage_orders
              WHERE account_ref = ?1 AND start_ms <= ?2 AND ?2 < counts_until_ms",
        )?
        .query_row((account_ref, ms), |r| r.get(0))?;
    let in_trial = trial_of(conn, account_ref)?.is_some_and(|t| t.start <= at && at < t.end);
    let gb = u64::try_from(gb).unwrap_or(0) + if in_trial { u64::from(trial_gb) } else { 0 };
    Ok(gb.saturating_mul(GB))
}

/// On PostgreSQL, holds the account's row until the transaction ends, so
/// that two replicas' reports or orders for it take turns.
fn lock_account(conn: &Conn, account_ref: i64) -> Result<(), StoreError> {
    if conn.dialect() == Dialect::Postgres {
        conn.query_row(
            "SELECT ref FROM accounts WHERE ref = ?1 FOR UPDATE",
            [account_ref],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_order(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    kind: &str,
    gb: u32,
    months: u32,
    (start, end): (NaiveDate, NaiveDate),
    starts: DateTime<Utc>,
    price: Decimal,
    paid_from: &str,
    auto_renew: bool,
    expands: Option<i64>,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "INSERT INTO log_storage_orders (account_ref, kind, gb, months, start_day, end_day, start_ms, ends_ms, counts_until_ms, price, paid_from, auto_renew, expands, ordered_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) RETURNING id",
        crate::params![
            account_ref,
            kind,
            gb,
            months,
            start.to_string(),
            end.to_string(),
            starts.timestamp_millis(),
            zone.day_start(end).timestamp_millis(),
            shared::lifecycle::counts_until(zone, end).timestamp_millis(),
            price.to_string(),
            paid_from,
            i64::from(auto_renew),
            expands,
            now.timestamp_millis(),
        ],
        |r| r.get(0),
    )?)
}

fn order_by_id(
    conn: &Conn,
    (account, account_ref): (&str, i64),
    id: i64,
) -> Result<LogOrder, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM log_storage_orders WHERE account_ref = ?1 AND id = ?2"
    ))?
    .query_row((account_ref, id), |r| Ok(order_row(r)))
    .optional()?
    .transpose()?
    .ok_or_else(|| StoreError::UnknownOrder(account.to_string(), id))
}

/// Renames the lifecycle's words for licensed cores in a notice's details
/// to the storage's: `licences` are `orders`, `cores` are `gb`.
fn for_storage(details: Value) -> Value {
    match details {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let k = match k.as_str() {
                        "licences" => "orders".to_string(),
                        "licence" => "order".to_string(),
                        "cores" => "gb".to_string(),
                        _ => k,
                    };
                    (k, for_storage(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(for_storage).collect()),
        other => other,
    }
}

/// The storage's step through the run of `day_of_run`, inside the
/// account's step (states.rs): renewals from the balance, then the state,
/// then the notices, which name the product. A storage never ordered
/// follows the account's trial silently: the trial's notices are the
/// account's.
#[allow(clippy::too_many_arguments)]
pub(super) fn step(
    tx: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    day_of_run: NaiveDate,
    daily: bool,
    terms_: LogStorageTerms,
    channels: NoticeChannels,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let at = run_of(zone, day_of_run);
    let life = life_of(tx, account_ref)?;
    let before = recorded_product_state(tx, account_ref, PRODUCT)?.0;
    if life.licences.is_empty() && life.trial.is_none() && before == State::Unlicensed {
        return Ok(Vec::new());
    }
    // 1. Renewals: an order's GB with its expansions', for a month.
    let (mut renewed, mut refused) = (Vec::new(), Vec::new());
    for l in life.renewals_due(zone, day_of_run) {
        let expansions: i64 = tx.query_row(
            "SELECT CAST(coalesce(sum(gb), 0) AS BIGINT) FROM log_storage_orders WHERE expands = ?1",
            [l.id],
            |r| r.get(0),
        )?;
        let gb = l.cores + u32::try_from(expansions).unwrap_or(0);
        let price = rules::order_price(
            gb,
            shared::lifecycle::RENEWAL_MONTHS,
            terms_.price_per_gb_month,
        );
        let balance = balance_of(tx, account_ref)?;
        let (start, end) = Life::renewal_of(zone, &l);
        if balance >= price {
            let id = insert_order(
                tx,
                zone,
                account_ref,
                "renewal",
                gb,
                shared::lifecycle::RENEWAL_MONTHS,
                (start, end),
                zone.day_start(start),
                price,
                "balance",
                true,
                None,
                now,
            )?;
            // The renewed GB replace the old: the old stop counting where
            // the renewal starts.
            tx.execute(
                "UPDATE log_storage_orders SET renewed_by = ?2, counts_until_ms = greatest(start_ms, ends_ms)
                  WHERE id = ?1 OR expands = ?1",
                (l.id, id),
            )?;
            let after = post_entry(
                tx,
                account_ref,
                "debit",
                price,
                Some(&format!("log_storage order {id}")),
                None,
                now,
            )?;
            renewed.push(json!({
                "order": l.id, "renewal": id, "gb": gb, "start_day": start, "end_day": end,
                "price": price, "balance_after": after,
            }));
        } else {
            refused.push(json!({
                "order": l.id, "gb": gb, "end_day": zone.day_of(l.end), "price": price,
                "balance": balance, "shortfall": price - balance,
                "reason": format!("the balance {balance} does not cover the renewal's price {price}"),
            }));
        }
    }
    // 2. The state.
    let life = life_of(tx, account_ref)?;
    let after = state_after_run(&life, zone, at, before);
    record_product_state(
        tx,
        account_ref,
        PRODUCT,
        after,
        at,
        now,
        &format!("run of {day_of_run}"),
    )?;
    // 3. The notices, once the storage was ordered.
    if life.licences.is_empty() {
        return Ok(Vec::new());
    }
    let mut notices = Vec::new();
    if !renewed.is_empty() {
        notices.push((NoticeKind::RenewalSucceeded, json!({ "renewals": renewed })));
    }
    if !refused.is_empty() {
        notices.push((NoticeKind::RenewalFailed, json!({ "orders": refused })));
    }
    notices.extend(
        life.notices_at_run(zone, day_of_run, before, after, daily)
            .into_iter()
            .filter(|(k, _)| !matches!(k, NoticeKind::TrialEnding | NoticeKind::TrialEnded))
            .map(|(k, d)| (k, for_storage(d))),
    );
    let mut issued = Vec::new();
    for (kind, details) in notices {
        let mut details = details;
        details["product"] = json!(PRODUCT.as_str());
        if issue_notice(
            tx,
            account_ref,
            PRODUCT.as_str(),
            kind,
            day_of_run,
            &details,
            now,
            channels,
        )?
        .is_some()
        {
            issued.push(format!("{}:{}", PRODUCT.as_str(), kind.as_str()));
        }
    }
    Ok(issued)
}

/// Checks a report's days: each named once, each within its bounds.
fn check_report(report: &UsageReport, now: DateTime<Utc>) -> Result<(), StoreError> {
    if report.days.len() > rules::MAX_REPORT_DAYS {
        return Err(invalid(
            "days",
            format!(
                "a report names at most {} days, this one {}",
                rules::MAX_REPORT_DAYS,
                report.days.len()
            ),
        ));
    }
    if let Err(e) = shared::domain::check_instant(report.at) {
        return Err(invalid("at", format!("at {} {}", e.got, e.expected)));
    }
    if report.at > now + chrono::TimeDelta::seconds(REPORT_AHEAD_SECS) {
        return Err(invalid(
            "at",
            format!(
                "at {} is ahead of the service's clock ({}) by more than {REPORT_AHEAD_SECS} s",
                report.at.to_rfc3339(),
                now.to_rfc3339()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(report.days.len());
    for (i, d) in report.days.iter().enumerate() {
        if let Err(e) = shared::domain::check_day(d.day) {
            return Err(invalid(
                "days",
                format!("days[{i}].day {} {}", e.got, e.expected),
            ));
        }
        if d.bytes > MAX_DAY_BYTES {
            return Err(invalid(
                "days",
                format!(
                    "days[{i}].bytes {} is more than one day may hold ({MAX_DAY_BYTES})",
                    d.bytes
                ),
            ));
        }
        if !seen.insert(d.day) {
            return Err(invalid(
                "days",
                format!("days[{i}].day {} is named twice", d.day),
            ));
        }
    }
    Ok(())
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl LogStorage<'_> {
    /// Places a log-storage order; when the storage is stopped, this recovers it.
    pub fn place_order(
        &mut self,
        account: &str,
        order: &NewLogOrder,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<LogOrder, StoreError> {
        let gb = rules::check_order_gb(u64::from(order.gb)).map_err(|m| invalid("gb", m))?;
        let (start, end) = super::orders::term_days(zone, order.start, order.months, now)?;
        let price = rules::order_price(gb, order.months, self.log_storage.price_per_gb_month);
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        super::images::check_not_paused(&tx, PRODUCT.as_str(), zone.day_of(now))?;
        let paid_from = payment(&tx, account_ref, price, order.pay_from_balance)?;
        let id = insert_order(
            &tx,
            zone,
            account_ref,
            "purchase",
            gb,
            order.months,
            (start, end),
            zone.day_start(start),
            price,
            paid_from,
            order.auto_renew,
            None,
            now,
        )?;
        if order.pay_from_balance {
            post_entry(
                &tx,
                account_ref,
                "debit",
                price,
                Some(&format!("log_storage order {id}")),
                None,
                now,
            )?;
        }
        settle_log_storage(
            &tx,
            zone,
            account_ref,
            now,
            &format!("log_storage order {id}"),
        )?;
        let placed = order_by_id(&tx, (account, account_ref), id)?;
        tx.commit()?;
        Ok(placed)
    }

    /// Adds `gb` to the current term from today to its end, priced pro
    /// rata by the days left (SPEC 10.1).
    pub fn expand(
        &mut self,
        account: &str,
        gb: u64,
        pay_from_balance: bool,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<LogOrder, StoreError> {
        let gb = rules::check_order_gb(gb).map_err(|m| invalid("gb", m))?;
        let account_ref = self.require_account(account)?;
        let per_gb = self.log_storage.price_per_gb_month;
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        super::images::check_not_paused(&tx, PRODUCT.as_str(), zone.day_of(now))?;
        // The term that holds today: the latest-ending order (not an
        // expansion) that covers now.
        let ms = now.timestamp_millis();
        let term: Option<LogOrder> = tx
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM log_storage_orders
                  WHERE account_ref = ?1 AND expands IS NULL AND start_ms <= ?2 AND ?2 < ends_ms
                  ORDER BY ends_ms DESC, id DESC LIMIT 1"
            ))?
            .query_row((account_ref, ms), |r| Ok(order_row(r)))
            .optional()?
            .transpose()?;
        let Some(term) = term else {
            return Err(StoreError::Conflict {
                code: "no_log_storage_term",
                field: "gb",
                message: format!(
                    "account {account:?} has no log storage term running today to expand; order one instead"
                ),
            });
        };
        let today = zone.day_of(now);
        let days_left = u32::try_from((term.end_day - today).num_days()).unwrap_or(0);
        let days_in_term = u32::try_from((term.end_day - term.start_day).num_days()).unwrap_or(1);
        let price = rules::expansion_price(gb, per_gb, term.months, days_left, days_in_term);
        let paid_from = payment(&tx, account_ref, price, pay_from_balance)?;
        let id = insert_order(
            &tx,
            zone,
            account_ref,
            "expansion",
            gb,
            term.months,
            (today, term.end_day),
            zone.day_start(today),
            price,
            paid_from,
            false,
            Some(term.id),
            now,
        )?;
        if pay_from_balance {
            post_entry(
                &tx,
                account_ref,
                "debit",
                price,
                Some(&format!("log_storage order {id}")),
                None,
                now,
            )?;
        }
        let placed = order_by_id(&tx, (account, account_ref), id)?;
        tx.commit()?;
        Ok(placed)
    }

    /// Turns an order's auto-renewal on or off.
    pub fn set_auto_renew(
        &mut self,
        account: &str,
        order: i64,
        on: bool,
    ) -> Result<LogOrder, StoreError> {
        let account_ref = self.require_account(account)?;
        let found = order_by_id(&self.0.conn, (account, account_ref), order)?;
        if found.expands.is_some() {
            return Err(invalid(
                "order",
                format!(
                    "order {order} is an expansion: it renews with order {}",
                    found.expands.unwrap_or_default()
                ),
            ));
        }
        self.0.conn.execute(
            "UPDATE log_storage_orders SET auto_renew = ?3 WHERE account_ref = ?1 AND id = ?2",
            (account_ref, order, i64::from(on)),
        )?;
        order_by_id(&self.0.conn, (account, account_ref), order)
    }

    /// Takes a usage report of the log service (SPEC 10.4): answers the
    /// quota, the state and the days to purge; records the report, the
    /// purge and the notices unless an newer report was taken already.
    pub fn report_usage(
        &mut self,
        account: &str,
        report: &UsageReport,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<Reported, StoreError> {
        check_report(report, now)?;
        let account_ref = self.require_account(account)?;
        let (terms_, channels) = (self.log_storage, self.notice_channels);
        let tx = self.0.conn.transaction()?;
        lock_account(&tx, account_ref)?;
        let state = recorded_product_state(&tx, account_ref, PRODUCT)?.0;
        let quota = quota_bytes(&tx, account_ref, now, terms_.trial_gb)?;
        let plan = rules::plan(&report.days, quota, state);
        let answer = UsageAnswer {
            quota_bytes: quota,
            used_bytes: plan.used_bytes,
            state,
            accept_writes: plan.accept_writes,
            purge: plan.purge.iter().map(|d| d.day).collect(),
            over_quota: plan.over_quota,
        };
        let last: Option<(i64, i64)> = tx
            .prepare_cached("SELECT at_ms, high FROM log_usage WHERE account_ref = ?1")?
            .query_row([account_ref], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let at = report.at.timestamp_millis();
        if last.is_some_and(|(last_at, _)| at <= last_at) {
            return Ok(Reported {
                answer,
                stale: true,
                purged_days: 0,
                purged_bytes: 0,
            });
        }
        let was_high = last.is_some_and(|(_, high)| high != 0);
        // With no quota (stopped, or never bought) there is no mark to be
        // above or below: what was last said stands.
        let high = if quota == 0 {
            was_high
        } else {
            rules::is_high(plan.used_bytes, quota)
        };
        tx.execute(
            "INSERT INTO log_usage (account_ref, at_ms, received_at_ms, days, used_bytes, quota_bytes, high)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (account_ref) DO UPDATE SET at_ms = excluded.at_ms, received_at_ms = excluded.received_at_ms,
               days = excluded.days, used_bytes = excluded.used_bytes, quota_bytes = excluded.quota_bytes, high = excluded.high",
            (
                account_ref,
                at,
                now.timestamp_millis(),
                report.days.len() as i64,
                i64_of(plan.used_bytes),
                i64_of(quota),
                i64::from(high),
            ),
        )?;
        tx.execute(
            "INSERT INTO log_usage_days (account_ref, day, used_bytes, quota_bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account_ref, day) DO UPDATE SET used_bytes = excluded.used_bytes, quota_bytes = excluded.quota_bytes",
            (
                account_ref,
                zone.day_of(report.at).to_string(),
                i64_of(plan.used_bytes),
                i64_of(quota),
            ),
        )?;
        let today = zone.day_of(now);
        let product = PRODUCT.as_str();
        if high && !was_high {
            let details = json!({
                "product": product, "used_bytes": plan.used_bytes, "quota_bytes": quota,
                "percent": rules::HIGH_PERCENT,
            });
            issue_notice(
                &tx,
                account_ref,
                product,
                NoticeKind::LogStorageHigh,
                today,
                &details,
                now,
                channels,
            )?;
        }
        let purged_bytes = plan.purged_bytes();
        if !plan.purge.is_empty() {
            let reason = if state == State::Deleted {
                "deleted"
            } else {
                "over_quota"
            };
            let days: Vec<NaiveDate> = plan.purge.iter().map(|d| d.day).collect();
            tx.execute(
                "INSERT INTO log_purges (account_ref, decided_at_ms, report_at_ms, days, bytes, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                (
                    account_ref,
                    now.timestamp_millis(),
                    at,
                    serde_json::to_string(&days).expect("days serialize"),
                    i64_of(purged_bytes),
                    reason,
                ),
            )?;
            let details = json!({
                "product": product, "days": days, "bytes": purged_bytes, "reason": reason,
                "quota_bytes": quota, "used_bytes": plan.used_bytes, "over_quota": plan.over_quota,
            });
            issue_notice(
                &tx,
                account_ref,
                product,
                NoticeKind::LogStoragePurged,
                today,
                &details,
                now,
                channels,
            )?;
        }
        tx.commit()?;
        Ok(Reported {
            answer,
            stale: false,
            purged_days: plan.purge.len() as u64,
            purged_bytes,
        })
    }

    /// The account's log storage: state, quota, usage, orders, purges.
    pub fn view(
        &mut self,
        account: &str,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<LogStorageView, StoreError> {
        let account_ref = self.require_account(account)?;
        let trial_gb = self.log_storage.trial_gb;
        let conn = &self.0.conn;
        let (state, since) = recorded_product_state(conn, account_ref, PRODUCT)?;
        let life = life_of(conn, account_ref)?;
        let next_change = life
            .next_change(zone, now, 400)
            .map(|(state, at)| json!({ "state": state, "at": at }));
        let quota = quota_bytes(conn, account_ref, now, trial_gb)?;
        let usage = conn
            .prepare_cached(
                "SELECT at_ms, received_at_ms, days, used_bytes, quota_bytes FROM log_usage WHERE account_ref = ?1",
            )?
            .query_row([account_ref], |r| {
                Ok(Usage {
                    at: from_ms(r.get(0)?),
                    received_at: from_ms(r.get(1)?),
                    days: u64_of(r.get(2)?),
                    used_bytes: u64_of(r.get(3)?),
                    quota_bytes: u64_of(r.get(4)?),
                })
            })
            .optional()?;
        let mut purges = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT id, decided_at_ms, report_at_ms, days, bytes, reason FROM log_purges
                  WHERE account_ref = ?1 ORDER BY id DESC LIMIT 1000",
            )?;
            let mut rows = stmt.query([account_ref])?;
            while let Some(r) = rows.next()? {
                let days: String = r.get(3)?;
                purges.push(Purge {
                    id: r.get(0)?,
                    decided_at: from_ms(r.get(1)?),
                    report_at: from_ms(r.get(2)?),
                    days: serde_json::from_str(&days)
                        .map_err(|e| StoreError::Corrupt(format!("log purge days: {e}")))?,
                    bytes: u64_of(r.get(4)?),
                    reason: r.get(5)?,
                });
            }
        }
        let from = zone.day_of(now) - chrono::Days::new(u64::from(HISTORY_DAYS));
        let mut history = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT day, used_bytes, quota_bytes FROM log_usage_days
                  WHERE account_ref = ?1 AND day >= ?2 ORDER BY day",
            )?;
            let mut rows = stmt.query((account_ref, from.to_string()))?;
            while let Some(r) = rows.next()? {
                let d: String = r.get(0)?;
                history.push(UsageDay {
                    day: day(&d)?,
                    used_bytes: u64_of(r.get(1)?),
                    quota_bytes: u64_of(r.get(2)?),
                });
            }
        }
        let mut state_history = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT state, at_ms, recorded_at_ms, cause FROM product_states
                  WHERE account_ref = ?1 AND product = ?2 ORDER BY id",
            )?;
            let mut rows = stmt.query((account_ref, PRODUCT.as_str()))?;
            while let Some(r) = rows.next()? {
                let s: String = r.get(0)?;
                state_history.push(StateChange {
                    state: State::from_str(&s).map_err(StoreError::Corrupt)?,
                    at: from_ms(r.get(1)?),
                    recorded_at: from_ms(r.get(2)?),
                    cause: r.get(3)?,
                });
            }
        }
        Ok(LogStorageView {
            product: PRODUCT.as_str(),
            state,
            state_since: since,
            next_change,
            quota_gb: quota / GB,
            quota_bytes: quota,
            accept_writes: rules::accepts_writes(state),
            usage,
            orders: orders_of(conn, account_ref)?,
            purges,
            history,
            state_history,
        })
    }

    /// The storage's part of the report of `day` (from `start` to `end`):
    /// the quota at the day's end, the day's last usage, the purges decided
    /// in it.
    pub fn day(
        &mut self,
        account: &str,
        day_: NaiveDate,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<LogStorageDay, StoreError> {
        let account_ref = self.require_account(account)?;
        let trial_gb = self.log_storage.trial_gb;
        let conn = &self.0.conn;
        let used: Option<i64> = conn
            .prepare_cached(
                "SELECT used_bytes FROM log_usage_days WHERE account_ref = ?1 AND day = ?2",
            )?
            .query_row((account_ref, day_.to_string()), |r| r.get(0))
            .optional()?;
        let (purges, bytes): (i64, i64) = conn
            .prepare_cached(
                "SELECT count(*), CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM log_purges
                  WHERE account_ref = ?1 AND decided_at_ms >= ?2 AND decided_at_ms < ?3",
            )?
            .query_row(
                (
                    account_ref,
                    start.timestamp_millis(),
                    end.timestamp_millis(),
                ),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
        let state = recorded_product_state(conn, account_ref, PRODUCT)?.0;
        Ok(LogStorageDay {
            state: (state != State::Unlicensed).then_some(state),
            quota_bytes: quota_bytes(
                conn,
                account_ref,
                end - chrono::TimeDelta::milliseconds(1),
                trial_gb,
            )?,
            used_bytes: used.map(u64_of),
            purges: u64_of(purges),
            purged_bytes: u64_of(bytes),
        })
    }

    /// The quota and the bytes used over every account's last report: what
    /// `/metrics` shows, as totals.
    pub fn totals(&mut self) -> Result<(u64, u64), StoreError> {
        let (quota, used): (i64, i64) = self.0.conn.query_row(
            "SELECT CAST(coalesce(sum(quota_bytes), 0) AS BIGINT), CAST(coalesce(sum(used_bytes), 0) AS BIGINT) FROM log_usage",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((u64_of(quota), u64_of(used)))
    }
}
