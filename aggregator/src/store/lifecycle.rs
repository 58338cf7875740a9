//! The life of an account in the store: contacts, trials, licence orders,
//! the balance, the state and its history, and the step each 02:00 run takes
//! (`step_account`). The rules are `shared::lifecycle`; this records them.

use std::str::FromStr;

use super::db::{Conn, OptionalExtension};
use super::pages::{one_more, Listed};
use chrono::{DateTime, Days, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use shared::lifecycle::{
    counts_until, order_price, run_of, term_end_day, ContactRole, Life, NoticeKind, State,
    TermLicence, Trial, MAX_TERM_MONTHS, RENEWAL_MONTHS,
};
use shared::money::cents;
use shared::overage::Period;
use shared::zone::BillingZone;

use super::accounts::mark_for_recompute;
use super::notices::issue_notice;
use super::{from_ms, Store, StoreError};
use crate::config::NoticeChannels;

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

fn decimal(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored decimal {s:?}: {e}")))
}

fn day(s: &str) -> Result<NaiveDate, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("stored day {s:?}: {e}")))
}

fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        message: message.into(),
    }
}

/// An email address as a relay takes it: one `@`, both sides non-empty,
/// no spaces or control characters, at most 254 characters.
fn valid_email(s: &str) -> bool {
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
fn valid_sms(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The account's licences as the lifecycle sees them.
fn term_licences(conn: &Conn, account_ref: i64) -> Result<Vec<TermLicence>, StoreError> {
    let grace_ms = shared::overage::LICENCE_GRACE_DAYS * 86_400_000;
    let mut stmt = conn.prepare_cached(
        "SELECT id, cores, start_ms, end_ms, ends_ms, auto_renew, renewed_by, created_at_ms FROM licences
          WHERE account_ref = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([account_ref], |r| {
        let counts: i64 = r.get(3)?;
        let ends: Option<i64> = r.get(4)?;
        Ok(TermLicence {
            id: r.get(0)?,
            cores: r.get(1)?,
            start: from_ms(r.get(2)?),
            // A licence given as a counting period ends the grace before its counting end.
            end: from_ms(ends.unwrap_or(counts - grace_ms).max(r.get(2)?)),
            counts_until: from_ms(counts),
            auto_renew: r.get::<_, i64>(5)? != 0,
            renewed: r.get::<_, Option<i64>>(6)?.is_some(),
            recorded_at: from_ms(r.get(7)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn trial_of(conn: &Conn, account_ref: i64) -> Result<Option<Trial>, StoreError> {
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

fn life_of(conn: &Conn, account_ref: i64) -> Result<Life, StoreError> {
    let from: Option<i64> = conn
        .prepare_cached("SELECT lifecycle_from_ms FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    Ok(Life {
        licences: term_licences(conn, account_ref)?,
        trial: trial_of(conn, account_ref)?,
        not_before: from.filter(|ms| *ms >= 0).map(from_ms),
    })
}

fn recorded_state(conn: &Conn, account_ref: i64) -> Result<State, StoreError> {
    let s: String = conn
        .prepare_cached("SELECT state FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    State::from_str(&s).map_err(StoreError::Corrupt)
}

/// Records `state` from `at` when it differs from the account's current one;
/// a stop or a recovery marks the account for recompute from `at`.
fn record_state(
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
fn record_admin_state(
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
fn settle_after(
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

/// How an order of `price` is paid: from the balance (refused when it does
/// not cover the price) or invoiced by the billing backend.
fn payment(
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

fn balance_of(conn: &Conn, account_ref: i64) -> Result<Decimal, StoreError> {
    let s: String = conn
        .prepare_cached("SELECT balance FROM accounts WHERE ref = ?1")?
        .query_row([account_ref], |r| r.get(0))?;
    decimal(&s)
}

fn post_entry(
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
fn insert_order(
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
fn link_renewal(
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

impl Store {
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
        let id = self.conn.query_row(
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
        let mut stmt = self.conn.prepare_cached(
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
        let grand: Option<String> = self.conn.query_row(
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
        self.conn.execute(
            "UPDATE accounts SET parent_ref = ?2 WHERE id = ?1",
            (id, parent_ref),
        )?;
        Ok(())
    }

    /// The account's parent, if it is a sub-account.
    pub fn parent_of(&mut self, account: &str) -> Result<Option<String>, StoreError> {
        let account_ref = self.require_account(account)?;
        Ok(self.conn.query_row(
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
        let tx = self.conn.transaction()?;
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
        let total: i64 = self.conn.query_row(
            "SELECT count(*) FROM balance_entries WHERE account_ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare_cached(
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
        Ok((balance_of(&self.conn, account_ref)?, ledger))
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
        let tx = self.conn.transaction()?;
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
        if !(1..=MAX_TERM_MONTHS).contains(&order.months) {
            return Err(invalid(
                "months",
                format!(
                    "a term of {} months is not from 1 to {MAX_TERM_MONTHS} months",
                    order.months
                ),
            ));
        }
        let today = zone.day_of(now);
        let start = order.start.unwrap_or(today);
        let earliest = today
            .checked_sub_days(Days::new(ORDER_BACKDATE_DAYS))
            .expect("date in range");
        let latest = today
            .checked_add_days(Days::new(ORDER_AHEAD_DAYS))
            .expect("date in range");
        if start < earliest || start > latest {
            return Err(invalid("start", format!("start {start} must be from {earliest} to {latest} ({ORDER_BACKDATE_DAYS} days back to {ORDER_AHEAD_DAYS} ahead)")));
        }
        let end = term_end_day(start, order.months)
            .ok_or_else(|| invalid("months", "the term ends out of range"))?;
        let price = order_price(order.cores, order.months, price_per_core_month);
        let account_ref = self.require_account(account)?;
        let tx = self.conn.transaction()?;
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
        let tx = self.conn.transaction()?;
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

    /// The deletions of the account's data: when decided, how many rows went, when finished.
    pub fn deletions(&mut self, account: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.conn.prepare_cached(
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
        let tx = self.conn.transaction()?;
        let before = recorded_state(&tx, account_ref)?;
        settle_after(&tx, zone, account_ref, before, now, cause)?;
        tx.commit()?;
        Ok(())
    }

    /// Turns auto-renewal of an order's licence on or off.
    pub fn set_auto_renew(
        &mut self,
        account: &str,
        order: i64,
        on: bool,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let changed = self.conn.execute(
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
        let mut stmt = self.conn.prepare_cached(
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

    /// What the rules know of the account, its recorded state and since when.
    pub fn life(
        &mut self,
        account: &str,
    ) -> Result<(Life, State, Option<DateTime<Utc>>), StoreError> {
        let account_ref = self.require_account(account)?;
        let since: Option<i64> = self.conn.query_row(
            "SELECT state_since_ms FROM accounts WHERE ref = ?1",
            [account_ref],
            |r| r.get(0),
        )?;
        Ok((
            life_of(&self.conn, account_ref)?,
            recorded_state(&self.conn, account_ref)?,
            since.map(from_ms),
        ))
    }

    pub fn state_history(&mut self, account: &str) -> Result<Vec<StateChange>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.conn.prepare_cached(
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
            channels: self.notice_channels,
            now,
        };
        if !self.conn.is_autocommit() {
            return step.take(&self.conn);
        }
        let tx = self.conn.transaction()?;
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
        let (stepped, created, from): (Option<String>, i64, Option<i64>) = self.conn.query_row(
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
        let tx = self.conn.transaction()?;
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
        let samples = tx.execute(
            "DELETE FROM samples WHERE (account_ref, at_ms, node_id, id) IN
               (SELECT account_ref, at_ms, node_id, id FROM samples WHERE account_ref = ?1 AND at_ms < ?2 LIMIT ?3)",
            (account_ref, before, limit as i64),
        )?;
        let rejections = tx.execute(
            "DELETE FROM rejections WHERE rowid IN
               (SELECT rowid FROM rejections WHERE account_ref = ?1 AND at_ms < ?2 LIMIT ?3)",
            (account_ref, before, limit as i64),
        )?;
        tx.execute(
            "UPDATE deletions SET samples = samples + ?2, rejections = rejections + ?3 WHERE id = ?1",
            (id, samples as i64, rejections as i64),
        )?;
        if samples < limit && rejections < limit {
            tx.execute(
                "UPDATE deletions SET finished_at_ms = ?2 WHERE id = ?1",
                (id, now.timestamp_millis()),
            )?;
        }
        tx.commit()?;
        Ok((samples + rejections).max(1) as u64)
    }

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
        let mut periods = Vec::new();
        let mut open: Option<i64> = None;
        while let Some(r) = rows.next()? {
            let state: String = r.get(0)?;
            let at: i64 = r.get(1)?;
            let stopped = matches!(state.as_str(), "stopped" | "deleted");
            match (open, stopped) {
                (None, true) => open = Some(at),
                (Some(from), false) => {
                    periods.push((from, at));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(from) = open {
            periods.push((from, i64::MAX));
        }
        Ok(periods)
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
        let before: Option<i64> = self.conn.query_row(
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

    /// The periods of the account's stops as instants, open-ended stops
    /// ending at `None`: what an exported case carries.
    pub fn stopped_periods(&mut self, account: &str) -> Result<Vec<Stop>, StoreError> {
        let account_ref = self.require_account(account)?;
        Ok(Store::stopped_periods_of(&self.conn, account_ref)?
            .into_iter()
            .map(|(a, b)| (from_ms(a), (b != i64::MAX).then(|| from_ms(b))))
            .collect())
    }

    /// The account's trial, if it had one.
    pub fn trial(&mut self, account: &str) -> Result<Option<Trial>, StoreError> {
        let account_ref = self.require_account(account)?;
        trial_of(&self.conn, account_ref)
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
        let tx = self.conn.transaction()?;
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

    /// The instant before which the account's data was deleted, if it was.
    pub(super) fn data_deleted_before_of(
        conn: &Conn,
        account_ref: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT data_deleted_before_ms FROM accounts WHERE ref = ?1")?
            .query_row([account_ref], |r| r.get(0))?)
    }

    /// The hours of the account that are never billed: its trial and its stops.
    pub fn unbilled_periods(&self, account: &super::Account) -> Result<Vec<Period>, StoreError> {
        let mut out: Vec<Period> = Store::stopped_periods_of(&self.conn, account.reference)?
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
        if let Some(t) = trial_of(&self.conn, account.reference)? {
            out.push((t.start, t.end));
        }
        Ok(out)
    }
}

/// One account's step through one run; see [`Store::step_account`].
struct Step<'a> {
    account_ref: i64,
    account: &'a str,
    day_of_run: NaiveDate,
    daily: bool,
    zone: &'a BillingZone,
    price_per_core_month: Decimal,
    channels: NoticeChannels,
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
        let after = match life.state_at(zone, at) {
            // A deletion always follows a recorded stop and its notices.
            State::Deleted if !before.is_stopped() => State::Stopped,
            state => state,
        };
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
        for (kind, details) in notices {
            if issue_notice(tx, account_ref, kind, day_of_run, &details, now, channels)?.is_some() {
                outcome.notices.push(kind.as_str().to_string());
            }
        }
        tx.execute(
            "UPDATE accounts SET stepped_through = ?2 WHERE ref = ?1",
            (account_ref, day_of_run.to_string()),
        )?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store};
    use shared::lifecycle::default_price_per_core_month;

    fn local(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("{s}+08:00"))
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A database as the build before the lifecycle left it: schema 4, an
    /// account whose only licence ended in January, and a sample.
    fn version_4_database(path: &std::path::Path) {
        let conn = rusqlite::Connection::open(path).unwrap();
        for sql in &super::super::schema::MIGRATIONS[..4] {
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
    fn an_upgrade_gives_an_account_whose_licence_ended_long_ago_its_whole_grace_before_any_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-meter.sqlite");
        version_4_database(&path);
        let mut store = Store::open(&path, Durability::Durable).unwrap();
        let zone = BillingZone::default();
        let price = default_price_per_core_month();
        let step = |store: &mut Store, at: &str| {
            crate::billing::lifecycle::run_lifecycle(store, local(at), &zone, price).unwrap();
            store.life("old").unwrap().1
        };
        // The first run after the upgrade: grace from here, not deletion.
        assert_eq!(step(&mut store, "2026-11-26T02:00:00"), State::Grace);
        assert_eq!(step(&mut store, "2026-11-30T02:00:00"), State::Grace);
        assert_eq!(step(&mut store, "2026-12-01T02:00:00"), State::Stopped);
        assert_eq!(step(&mut store, "2026-12-06T02:00:00"), State::Deleted);
        let history: Vec<(State, DateTime<Utc>)> = store
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
        store.create_account("acme", now).unwrap();
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
            match store.add_contact("acme", &c, now) {
                Err(StoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{c:?}"),
                other => panic!("{c:?} was not refused: {other:?}"),
            }
        }
        store
            .add_contact(
                "acme",
                &contact(Some("ops@example.com"), Some("+8613800138000")),
                now,
            )
            .unwrap();
        assert_eq!(store.contacts("acme").unwrap().len(), 1);
    }
}
