//! What the lifecycle's admin API records: contacts, sub-accounts, the
//! balance's ledger, the trial and licence orders with their renewals. The
//! rules are `shared::lifecycle`; states and the run's step are `states.rs`.

use std::str::FromStr;

use super::db::{Conn, OptionalExtension};
use super::pages::{one_more, Listed};
use super::Accounts;
use chrono::{DateTime, Days, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use shared::lifecycle::{
    counts_until, order_price, run_of, term_end_day, ContactRole, State, Trial, MAX_TERM_MONTHS,
};
use shared::money::cents;
use shared::zone::BillingZone;

use super::accounts::mark_for_recompute;
use super::states::{recorded_state, settle_after, StateChange};
use super::{from_ms, StoreError};

/// The most cores one order may buy.
pub const MAX_ORDER_CORES: u32 = 1_000_000;
/// How far back an order may start (a purchase recorded a little late).
pub const ORDER_BACKDATE_DAYS: u64 = 14;
/// How far ahead an order may start.
pub const ORDER_AHEAD_DAYS: u64 = 366;
/// The largest single credit (a typo guard, not a business limit).
pub const MAX_CREDIT: i64 = 100_000_000;

/// A stop: from when, and until when the account came back (`None` while it has not).
pub type Stop = (DateTime<Utc>, Option<DateTime<Utc>>);

/// A contact to add to an account.
#[derive(Debug, Clone)]
pub struct NewContact {
    pub name: String,
    pub role: ContactRole,
    pub email: Option<String>,
    pub sms: Option<String>,
}

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub email: Option<String>,
    pub sms: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A licence order to place.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub cores: u32,
    pub months: u32,
    /// The first day; today in the billing zone when not given.
    pub start: Option<NaiveDate>,
    pub auto_renew: bool,
    /// Paid from the prepaid balance (refused when it does not cover the
    /// price) rather than invoiced by the billing backend.
    pub pay_from_balance: bool,
}

/// An order as stored, with its licence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub id: i64,
    /// `purchase` or `renewal`.
    pub kind: String,
    pub licence: i64,
    pub cores: u32,
    pub months: u32,
    pub start_day: NaiveDate,
    /// The first day it no longer covers.
    pub end_day: NaiveDate,
    /// The end of its grace: billing counts it until then.
    pub counts_until: DateTime<Utc>,
    pub price: Decimal,
    /// `invoice` or `balance`.
    pub paid_from: String,
    pub auto_renew: bool,
    /// The licence that renewed it, if one did.
    pub renewed_by: Option<i64>,
    pub ordered_at: DateTime<Utc>,
}

/// One entry of the balance's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceEntry {
    pub kind: String,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<String>,
    pub order: Option<i64>,
    pub at: DateTime<Utc>,
}

pub(super) fn decimal(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored decimal {s:?}: {e}")))
}

pub(super) fn day(s: &str) -> Result<NaiveDate, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("stored day {s:?}: {e}")))
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        message: message.into(),
    }
}

/// An email address as a relay takes it: one `@`, both sides non-empty,
/// no spaces or control characters, at most 254 characters.
pub(super) fn valid_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// A phone number in E.164: `+` and 8 to 15 digits.
pub(super) fn valid_sms(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The days of a term of `months` from `start` (today when not given):
/// refused naming `months` or `start` when out of bounds.
pub(super) fn term_days(
    zone: &BillingZone,
    start: Option<NaiveDate>,
    months: u32,
    now: DateTime<Utc>,
) -> Result<(NaiveDate, NaiveDate), StoreError> {
    if !(1..=MAX_TERM_MONTHS).contains(&months) {
        return Err(invalid(
            "months",
            format!("a term of {months} months is not from 1 to {MAX_TERM_MONTHS} months"),
        ));
    }
    let today = zone.day_of(now);
    let start = start.unwrap_or(today);
    let earliest = today
        .checked_sub_days(Days::new(ORDER_BACKDATE_DAYS))
        .expect("date in range");
    let latest = today
        .checked_add_days(Days::new(ORDER_AHEAD_DAYS))
        .expect("date in range");
    if start < earliest || start > latest {
        return Err(invalid("start", format!("start {start} must be from {earliest} to {latest} ({ORDER_BACKDATE_DAYS} days back to {ORDER_AHEAD_DAYS} ahead)")));
    }
    let end = term_end_day(start, months)
        .ok_or_else(|| invalid("months", "the term ends out of range"))?;
    Ok((start, end))
}

/// How an order of `price` is paid: from the balance (refused when it does
/// not cover the price) or invoiced by the billing backend.
pub(super) fn payment(
    conn: &Conn,
    account_ref: i64,
    price: Decimal,
    from_balance: bool,
) -> Result<&'static str, StoreError> {
    if !from_balance {
        return Ok("invoice");
    }
    let balance = balance_of(conn, account_ref)?;
    if balance < price {
        return Err(StoreError::Conflict {
            code: "insufficient_balance",
            field: "pay_from_balance",
            message: format!(
                "the balance {balance} does not cover the price {price} ({} short)",
                price - balance
            ),
        });
    }
    Ok("balance")
}

pub(super) fn balance_of(conn: &Conn, account_ref: i64) -> Result<Decimal, StoreError> {
    let s: String = conn
        .prepare_cached("SELECT balance FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    decimal(&s)
}

pub(super) fn post_entry(
    conn: &Conn,
    account_ref: i64,
    kind: &str,
    amount: Decimal,
    reference: Option<&str>,
    order: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Decimal, StoreError> {
    let before = balance_of(conn, account_ref)?;
    let after = cents(if kind == "credit" {
        before + amount
    } else {
        before - amount
    });
    conn.prepare_cached(
        "INSERT INTO balance_entries (account_ref, kind, amount, balance_after, reference, order_id, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute((
        account_ref,
        kind,
        cents(amount).to_string(),
        after.to_string(),
        reference,
        order,
        now.timestamp_millis(),
    ))?;
    conn.prepare_cached("UPDATE accounts SET balance = ?2 WHERE ref = ?1")?
        .execute((account_ref, after.to_string()))?;
    Ok(after)
}

/// Inserts a licence for the days `start..end` and its order.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_order(
    conn: &Conn,
    zone: &BillingZone,
    account_ref: i64,
    kind: &str,
    cores: u32,
    months: u32,
    (start, end): (NaiveDate, NaiveDate),
    price: Decimal,
    paid_from: &str,
    auto_renew: bool,
    now: DateTime<Utc>,
) -> Result<(i64, i64), StoreError> {
    let starts = zone.day_start(start);
    let licence: i64 = conn.query_row(
        "INSERT INTO licences (account_ref, cores, start_ms, end_ms, created_at_ms, ends_ms, auto_renew)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        (
        account_ref,
        cores,
        starts.timestamp_millis(),
        counts_until(zone, end).timestamp_millis(),
        now.timestamp_millis(),
        zone.day_start(end).timestamp_millis(),
        i64::from(auto_renew),
        ),
        |r| r.get(0),
    )?;
    let order: i64 = conn.query_row(
        "INSERT INTO orders (account_ref, kind, licence_id, cores, months, start_day, end_day, price, paid_from, ordered_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        (
        account_ref,
        kind,
        licence,
        cores,
        months,
        start.to_string(),
        end.to_string(),
        price.to_string(),
        paid_from,
        now.timestamp_millis(),
        ),
        |r| r.get(0),
    )?;
    mark_for_recompute(conn, account_ref, starts)?;
    Ok((licence, order))
}

/// Links `licence` to its `renewal`, and ends its counting where the renewal
/// starts: its grace is for a lapse, and the renewal's cores replace its
/// own rather than adding to them. Days from its end are recomputed.
pub(super) fn link_renewal(
    conn: &Conn,
    account_ref: i64,
    licence: i64,
    renewal: i64,
) -> Result<(), StoreError> {
    let ends: i64 = conn.query_row(
        "UPDATE licences SET renewed_by = ?2, end_ms = greatest(start_ms, ends_ms) WHERE id = ?1 RETURNING end_ms",
        (licence, renewal),
        |r| r.get(0),
    )?;
    mark_for_recompute(conn, account_ref, from_ms(ends))
}

impl Accounts<'_> {
    pub fn add_contact(
        &mut self,
        account: &str,
        contact: &NewContact,
        now: DateTime<Utc>,
    ) -> Result<Contact, StoreError> {
        let name = contact.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(invalid(
                "name",
                format!(
                    "name must be 1 to 200 characters without control characters, got {}",
                    shared::domain::quote(&contact.name)
                ),
            ));
        }
        if contact.email.is_none() && contact.sms.is_none() {
            return Err(invalid(
                "email",
                "a contact needs an email address, an SMS number or both",
            ));
        }
        if let Some(e) = contact.email.as_deref().filter(|e| !valid_email(e)) {
            return Err(invalid(
                "email",
                format!(
                    "{} is not an email address such as ops@example.com",
                    shared::domain::quote(e)
                ),
            ));
        }
        if let Some(s) = contact.sms.as_deref().filter(|s| !valid_sms(s)) {
            return Err(invalid(
                "sms",
                format!(
                    "{} is not a phone number in E.164 form such as +8613800138000",
                    shared::domain::quote(s)
                ),
            ));
        }
        let account_ref = self.require_account(account)?;
        let id = self.0.conn.query_row(
            "INSERT INTO contacts (account_ref, name, role, email, sms, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            (account_ref, name, contact.role.as_str(), &contact.email, &contact.sms, now.timestamp_millis()),
            |r| r.get(0),
        )?;
        Ok(Contact {
            id,
            name: name.to_string(),
            role: contact.role.as_str().to_string(),
            email: contact.email.clone(),
            sms: contact.sms.clone(),
            created_at: now,
        })
    }

    pub fn contacts(&mut self, account: &str) -> Result<Vec<Contact>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT id, name, role, email, sms, created_at_ms FROM contacts WHERE account_ref = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([account_ref], |r| {
            Ok(Contact {
                id: r.get(0)?,
                name: r.get(1)?,
                role: r.get(2)?,
                email: r.get(3)?,
                sms: r.get(4)?,
                created_at: from_ms(r.get(5)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates a sub-account of the main account `parent`, which must exist
    /// and must not itself be a sub-account.
    pub fn create_sub_account(
        &mut self,
        id: &str,
        parent: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some(parent_ref) = self.account_ref(parent)? else {
            return Err(invalid(
                "parent",
                format!("parent account {parent:?} does not exist"),
            ));
        };
        let grand: Option<String> = self.0.conn.query_row(
            "SELECT p.id FROM accounts a JOIN accounts p ON p.ref = a.parent_ref WHERE a.ref = ?1",
            [parent_ref],
            |r| r.get(0),
        ).optional()?;
        if let Some(grand) = grand {
            return Err(invalid(
                "parent",
                format!("{parent:?} is itself a sub-account of {grand:?}; the parent must be a main account"),
            ));
        }
        self.create_account(id, now)?;
        self.0.conn.execute(
            "UPDATE accounts SET parent_ref = ?2 WHERE id = ?1",
            (id, parent_ref),
        )?;
        Ok(())
    }

    /// The account's parent, if it is a sub-account.
    pub fn parent_of(&mut self, account: &str) -> Result<Option<String>, StoreError> {
        let account_ref = self.require_account(account)?;
        Ok(self.0.conn.query_row(
            "SELECT p.id FROM accounts a LEFT JOIN accounts p ON p.ref = a.parent_ref WHERE a.ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?)
    }

    /// Credits the prepaid balance; a `reference` already taken is not taken
    /// again. Returns the balance and whether this call credited it.
    pub fn credit_balance(
        &mut self,
        account: &str,
        amount: Decimal,
        reference: &str,
        now: DateTime<Utc>,
    ) -> Result<(Decimal, bool), StoreError> {
        if amount <= Decimal::ZERO || amount.scale() > 2 && amount != cents(amount) {
            return Err(invalid(
                "amount",
                format!("amount {amount} must be positive with at most two decimal places"),
            ));
        }
        if amount > Decimal::from(MAX_CREDIT) {
            return Err(invalid(
                "amount",
                format!("amount {amount} is over the largest credit of {MAX_CREDIT}"),
            ));
        }
        // The edge's rule for free text, here too. References were trimmed
        // before they were kept, and a credit is taken once per reference:
        // one with blanks around it is refused rather than taken as another.
        shared::domain::check_text(reference, 200).map_err(|e| {
            invalid(
                "reference",
                format!("reference (the billing backend's id of the payment) {e}"),
            )
        })?;
        if reference.trim() != reference {
            return Err(invalid(
                "reference",
                "reference must not start or end with a blank",
            ));
        }
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT amount FROM balance_entries WHERE account_ref = ?1 AND reference = ?2",
                (account_ref, reference),
                |r| r.get(0),
            )
            .optional()?;
        if let Some(taken) = taken {
            if decimal(&taken)? != cents(amount) {
                return Err(StoreError::Conflict {
                    code: "reference_in_use",
                    field: "reference",
                    message: format!(
                        "reference {reference:?} was already credited with {taken}, not {amount}"
                    ),
                });
            }
            let balance = balance_of(&tx, account_ref)?;
            return Ok((balance, false));
        }
        let after = post_entry(
            &tx,
            account_ref,
            "credit",
            amount,
            Some(reference),
            None,
            now,
        )?;
        tx.commit()?;
        Ok((after, true))
    }

    /// The balance and its whole ledger, oldest entry first.
    pub fn balance(&mut self, account: &str) -> Result<(Decimal, Vec<BalanceEntry>), StoreError> {
        let (balance, ledger) = self.balance_page(account, None, u32::MAX - 1)?;
        Ok((balance, ledger.items))
    }

    /// The balance and a page of its ledger, oldest entry first (by id): up
    /// to `limit` entries after the entry `after`.
    pub fn balance_page(
        &mut self,
        account: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<(Decimal, Listed<BalanceEntry, i64>), StoreError> {
        let account_ref = self.require_account(account)?;
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM balance_entries WHERE account_ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT kind, amount, balance_after, reference, order_id, at_ms, id FROM balance_entries
              WHERE account_ref = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let mut rows = stmt.query((account_ref, after.unwrap_or(i64::MIN), one_more(limit)))?;
        let mut entries = Vec::new();
        while let Some(r) = rows.next()? {
            let entry = BalanceEntry {
                kind: r.get(0)?,
                amount: decimal(&r.get::<_, String>(1)?)?,
                balance_after: decimal(&r.get::<_, String>(2)?)?,
                reference: r.get(3)?,
                order: r.get(4)?,
                at: from_ms(r.get(5)?),
            };
            entries.push((r.get::<_, i64>(6)?, entry));
        }
        drop(rows);
        drop(stmt);
        let ledger = Listed::from_rows(entries, limit, total as u64);
        Ok((balance_of(&self.0.conn, account_ref)?, ledger))
    }

    /// Starts the account's trial now: once per main account, and not for an
    /// account that already holds a licence.
    pub fn start_trial(
        &mut self,
        account: &str,
        zone: &BillingZone,
        now: DateTime<Utc>,
    ) -> Result<Trial, StoreError> {
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        let (main_ref, main_id): (i64, String) = tx.query_row(
            "SELECT coalesce(p.ref, a.ref), coalesce(p.id, a.id) FROM accounts a LEFT JOIN accounts p ON p.ref = a.parent_ref WHERE a.ref = ?1",
            [account_ref],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let used: Option<(String, i64)> = tx
            .query_row(
                "SELECT a.id, t.started_at_ms FROM trials t JOIN accounts a ON a.ref = t.account_ref WHERE t.main_ref = ?1",
                [main_ref],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((by, at)) = used {
            let family = if main_id == account {
                format!("main account {main_id:?}")
            } else {
                format!("account {account:?}'s main account {main_id:?} and its sub-accounts")
            };
            return Err(StoreError::Conflict {
                code: "trial_used",
                field: "account",
                message: format!(
                    "{family} already had their one trial: account {by:?} started it on {}; buy a licence instead",
                    zone.day_of(from_ms(at))
                ),
            });
        }
        let licensed: i64 = tx.query_row(
            "SELECT count(*) FROM licences WHERE account_ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        if licensed > 0 {
            return Err(StoreError::Conflict {
                code: "already_licensed",
                field: "account",
                message: format!("account {account:?} already bought a licence; a trial is for accounts that have not"),
            });
        }
        let trial = Trial::starting(zone, now);
        tx.execute(
            "INSERT INTO trials (main_ref, account_ref, start_ms, end_ms, started_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            (main_ref, account_ref, trial.start.timestamp_millis(), trial.end.timestamp_millis(), now.timestamp_millis()),
        )?;
        // The trial's hours are free, including any already billed... none are:
        // a trial starts today, and today is not billed before tomorrow's run.
        mark_for_recompute(&tx, account_ref, trial.start)?;
        let before = recorded_state(&tx, account_ref)?;
        settle_after(&tx, zone, account_ref, before, now, "trial started")?;
        super::log_storage::settle_log_storage(&tx, zone, account_ref, now, "trial started")?;
        tx.commit()?;
        Ok(trial)
    }

    /// Places a licence order; when the account is stopped, this recovers it.
    pub fn place_order(
        &mut self,
        account: &str,
        order: &NewOrder,
        zone: &BillingZone,
        price_per_core_month: Decimal,
        now: DateTime<Utc>,
    ) -> Result<Order, StoreError> {
        if !(1..=MAX_ORDER_CORES).contains(&order.cores) {
            return Err(invalid(
                "cores",
                format!("cores {} must be from 1 to {MAX_ORDER_CORES}", order.cores),
            ));
        }
        let (start, end) = term_days(zone, order.start, order.months, now)?;
        let today = zone.day_of(now);
        let price = order_price(order.cores, order.months, price_per_core_month);
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        super::images::check_not_paused(&tx, "pro", today)?;
        let paid_from = payment(&tx, account_ref, price, order.pay_from_balance)?;
        let before = recorded_state(&tx, account_ref)?;
        let (licence, id) = insert_order(
            &tx,
            zone,
            account_ref,
            "purchase",
            order.cores,
            order.months,
            (start, end),
            price,
            paid_from,
            order.auto_renew,
            now,
        )?;
        if order.pay_from_balance {
            post_entry(&tx, account_ref, "debit", price, None, Some(id), now)?;
        }
        settle_after(&tx, zone, account_ref, before, now, &format!("order {id}"))?;
        tx.commit()?;
        Ok(Order {
            id,
            kind: "purchase".into(),
            licence,
            cores: order.cores,
            months: order.months,
            start_day: start,
            end_day: end,
            counts_until: counts_until(zone, end),
            price,
            paid_from: paid_from.into(),
            auto_renew: order.auto_renew,
            renewed_by: None,
            ordered_at: now,
        })
    }

    /// Renews an order's licence by hand for `months` from its end day (the
    /// term goes on where it stopped), at most once per licence: before its
    /// end, in grace, or while stopped, which recovers the account. Not after
    /// a deletion: a new order starts a new life then.
    #[allow(clippy::too_many_arguments)]
    pub fn renew_order(
        &mut self,
        account: &str,
        order: i64,
        months: u32,
        pay_from_balance: bool,
        zone: &BillingZone,
        price_per_core_month: Decimal,
        now: DateTime<Utc>,
    ) -> Result<Order, StoreError> {
        if !(1..=MAX_TERM_MONTHS).contains(&months) {
            return Err(invalid(
                "months",
                format!("a term of {months} months is not from 1 to {MAX_TERM_MONTHS} months"),
            ));
        }
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        let found: Option<(i64, u32, Option<i64>, i64, i64)> = tx
            .query_row(
                "SELECT l.id, l.cores, l.renewed_by, l.ends_ms, l.auto_renew FROM orders o JOIN licences l ON l.id = o.licence_id
                  WHERE o.id = ?2 AND o.account_ref = ?1",
                (account_ref, order),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((licence, cores, renewed_by, ends_ms, auto_renew)) = found else {
            return Err(StoreError::UnknownOrder(account.to_string(), order));
        };
        if let Some(by) = renewed_by {
            return Err(StoreError::Conflict {
                code: "already_renewed",
                field: "order",
                message: format!(
                    "order {order}'s licence was already renewed (by licence {by}); renew that one"
                ),
            });
        }
        // Renewable until its recovery window closes: the run that would
        // delete the account after this licence's lapse (end day + 10).
        let counts: i64 = tx.query_row(
            "SELECT end_ms FROM licences WHERE id = ?1",
            [licence],
            |r| r.get(0),
        )?;
        let stop = shared::lifecycle::first_run_at_or_after(zone, from_ms(counts));
        let deadline = run_of(
            zone,
            stop.checked_add_days(Days::new(shared::lifecycle::RECOVERY_DAYS))
                .expect("date in range"),
        );
        if now >= deadline {
            return Err(StoreError::Conflict {
                code: "renewal_too_late",
                field: "order",
                message: format!(
                    "order {order}'s licence ended on {} and could be renewed until {deadline}; place a new order instead",
                    zone.day_of(from_ms(ends_ms))
                ),
            });
        }
        let before = recorded_state(&tx, account_ref)?;
        if before == State::Deleted {
            return Err(StoreError::Conflict {
                code: "account_deleted",
                field: "order",
                message: format!("account {account:?} was deleted; place a new order"),
            });
        }
        let start = zone.day_of(from_ms(ends_ms));
        let end = term_end_day(start, months)
            .ok_or_else(|| invalid("months", "the term ends out of range"))?;
        let price = order_price(cores, months, price_per_core_month);
        let paid_from = payment(&tx, account_ref, price, pay_from_balance)?;
        let (new_licence, id) = insert_order(
            &tx,
            zone,
            account_ref,
            "renewal",
            cores,
            months,
            (start, end),
            price,
            paid_from,
            auto_renew != 0,
            now,
        )?;
        link_renewal(&tx, account_ref, licence, new_licence)?;
        if pay_from_balance {
            post_entry(&tx, account_ref, "debit", price, None, Some(id), now)?;
        }
        settle_after(
            &tx,
            zone,
            account_ref,
            before,
            now,
            &format!("renewal order {id}"),
        )?;
        tx.commit()?;
        Ok(Order {
            id,
            kind: "renewal".into(),
            licence: new_licence,
            cores,
            months,
            start_day: start,
            end_day: end,
            counts_until: counts_until(zone, end),
            price,
            paid_from: paid_from.into(),
            auto_renew: auto_renew != 0,
            renewed_by: None,
            ordered_at: now,
        })
    }

    /// Turns auto-renewal of an order's licence on or off.
    pub fn set_auto_renew(
        &mut self,
        account: &str,
        order: i64,
        on: bool,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let changed = self.0.conn.execute(
            "UPDATE licences SET auto_renew = ?3 WHERE id = (SELECT licence_id FROM orders WHERE id = ?2 AND account_ref = ?1)",
            (account_ref, order, i64::from(on)),
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownOrder(account.to_string(), order));
        }
        Ok(())
    }

    pub fn orders(&mut self, account: &str) -> Result<Vec<Order>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT o.id, o.kind, o.licence_id, o.cores, o.months, o.start_day, o.end_day, o.price, o.paid_from,
                    l.auto_renew, l.renewed_by, o.ordered_at_ms, l.end_ms
               FROM orders o JOIN licences l ON l.id = o.licence_id WHERE o.account_ref = ?1 ORDER BY o.id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let end_day = day(&r.get::<_, String>(6)?)?;
            out.push(Order {
                id: r.get(0)?,
                kind: r.get(1)?,
                licence: r.get(2)?,
                cores: r.get(3)?,
                months: r.get(4)?,
                start_day: day(&r.get::<_, String>(5)?)?,
                end_day,
                // Where billing counts it to: a renewal ends its grace.
                counts_until: from_ms(r.get(12)?),
                price: decimal(&r.get::<_, String>(7)?)?,
                paid_from: r.get(8)?,
                auto_renew: r.get::<_, i64>(9)? != 0,
                renewed_by: r.get(10)?,
                ordered_at: from_ms(r.get(11)?),
            });
        }
        Ok(out)
    }

    pub fn state_history(&mut self, account: &str) -> Result<Vec<StateChange>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT state, at_ms, recorded_at_ms, cause FROM account_states WHERE account_ref = ?1 ORDER BY id",
        )?;
        let mut rows = stmt.query([account_ref])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(StateChange {
                state: State::from_str(&r.get::<_, String>(0)?).map_err(StoreError::Corrupt)?,
                at: from_ms(r.get(1)?),
                recorded_at: from_ms(r.get(2)?),
                cause: r.get(3)?,
            });
        }
        Ok(out)
    }

    /// Fails with [`StoreError::DataDeleted`] when `day` ended before the
    /// account's data was deleted: its report, audit trail or export would
    /// show it empty.
    pub fn require_not_deleted(
        &mut self,
        account: &str,
        zone: &BillingZone,
        day: NaiveDate,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let before: Option<i64> = self.0.conn.query_row(
            "SELECT data_deleted_before_ms FROM accounts WHERE ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        match before.map(from_ms) {
            Some(before) if zone.day_end(day) <= before => Err(StoreError::DataDeleted {
                account: account.to_string(),
                before,
            }),
            _ => Ok(()),
        }
    }
}
