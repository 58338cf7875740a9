//! What a monthly statement is made of, read in one transaction so that its
//! parts agree: the month's daily bill lines, the adjustments issued in it,
//! the orders of every product placed in it, the ledger's entries and the
//! balance at each end; and the key that signs statements.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use shared::bill::BillLine;

use super::bills::{line_row, LINE_COLUMNS};
use super::db::OptionalExtension;
use super::orders::{day, decimal, BalanceEntry};
use super::{from_ms, Statements, StoreError};

/// An order of any product, as a statement lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderEntry {
    /// `pro`, `image_scan` or `log_storage`.
    pub product: &'static str,
    pub id: i64,
    /// `purchase`, `renewal` or (log storage) `expansion`.
    pub kind: String,
    /// Cores, authorizations or GB.
    pub quantity: u64,
    /// `cores`, `authorizations` or `gb`.
    pub unit: &'static str,
    /// The term's first day and the first day it no longer covers (none for a
    /// pack of authorizations, which has no term).
    pub start_day: Option<NaiveDate>,
    pub end_day: Option<NaiveDate>,
    pub price: Decimal,
    /// `invoice` or `balance`.
    pub paid_from: String,
    pub ordered_at: DateTime<Utc>,
}

/// Unused image-scan authorizations given back to the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundEntry {
    pub id: i64,
    pub quantity: u64,
    pub amount: Decimal,
    pub at: DateTime<Utc>,
}

/// The stored facts of one account's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthFacts {
    /// The daily line of each day of the month that has one.
    pub daily: Vec<BillLine>,
    /// Adjustments issued inside the month, whatever day they correct.
    pub adjustments: Vec<BillLine>,
    pub orders: Vec<OrderEntry>,
    /// The ledger's entries inside the month, oldest first, each with the
    /// refund it records if it is one.
    pub ledger: Vec<(BalanceEntry, Option<i64>)>,
    pub refunds: Vec<RefundEntry>,
    /// The balance before the month's first entry and after its last.
    pub opening_balance: Decimal,
    pub closing_balance: Decimal,
}

impl Statements<'_> {
    /// The facts of `account` for the days `first..=last`, whose instants are
    /// `window_ms` (the month's first instant to the next month's, in the
    /// billing zone).
    pub fn month(
        &mut self,
        account: &str,
        (first, last): (NaiveDate, NaiveDate),
        (start_ms, end_ms): (i64, i64),
    ) -> Result<MonthFacts, StoreError> {
        let account_ref = self.require_account(account)?;
        // One read transaction: a billing run or an order landing meanwhile
        // shows in all of the statement or in none of it.
        let tx = self.0.conn.snapshot()?;
        let mut daily = Vec::new();
        let mut adjustments = Vec::new();
        {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {LINE_COLUMNS} FROM bill_lines b JOIN accounts a ON a.ref = b.account_ref
                  WHERE b.account_ref = ?1
                    AND ((b.seq = 1 AND b.day >= ?2 AND b.day <= ?3)
                      OR (b.seq > 1 AND b.issued_at_ms >= ?4 AND b.issued_at_ms < ?5))
                  ORDER BY b.day, b.seq"
            ))?;
            let mut rows = stmt.query((
                account_ref,
                first.to_string(),
                last.to_string(),
                start_ms,
                end_ms,
            ))?;
            while let Some(r) = rows.next()? {
                let line = line_row(&r, 0)?;
                if line.seq == 1 {
                    daily.push(line);
                } else {
                    adjustments.push(line);
                }
            }
        }
        let mut orders = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, kind, cores, start_day, end_day, price, paid_from, ordered_at_ms FROM orders
                  WHERE account_ref = ?1 AND ordered_at_ms >= ?2 AND ordered_at_ms < ?3",
            )?;
            let mut rows = stmt.query((account_ref, start_ms, end_ms))?;
            while let Some(r) = rows.next()? {
                orders.push(OrderEntry {
                    product: "pro",
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    quantity: r.get::<_, i64>(2)? as u64,
                    unit: "cores",
                    start_day: Some(day(&r.get::<_, String>(3)?)?),
                    end_day: Some(day(&r.get::<_, String>(4)?)?),
                    price: decimal(&r.get::<_, String>(5)?)?,
                    paid_from: r.get(6)?,
                    ordered_at: from_ms(r.get(7)?),
                });
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, quantity, price, paid_from, ordered_at_ms FROM image_scan_packs
                  WHERE account_ref = ?1 AND ordered_at_ms >= ?2 AND ordered_at_ms < ?3",
            )?;
            let mut rows = stmt.query((account_ref, start_ms, end_ms))?;
            while let Some(r) = rows.next()? {
                orders.push(OrderEntry {
                    product: "image_scan",
                    id: r.get(0)?,
                    kind: "purchase".into(),
                    quantity: r.get::<_, i64>(1)? as u64,
                    unit: "authorizations",
                    start_day: None,
                    end_day: None,
                    price: decimal(&r.get::<_, String>(2)?)?,
                    paid_from: r.get(3)?,
                    ordered_at: from_ms(r.get(4)?),
                });
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, kind, gb, start_day, end_day, price, paid_from, ordered_at_ms FROM log_storage_orders
                  WHERE account_ref = ?1 AND ordered_at_ms >= ?2 AND ordered_at_ms < ?3",
            )?;
            let mut rows = stmt.query((account_ref, start_ms, end_ms))?;
            while let Some(r) = rows.next()? {
                orders.push(OrderEntry {
                    product: "log_storage",
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    quantity: r.get::<_, i64>(2)? as u64,
                    unit: "gb",
                    start_day: Some(day(&r.get::<_, String>(3)?)?),
                    end_day: Some(day(&r.get::<_, String>(4)?)?),
                    price: decimal(&r.get::<_, String>(5)?)?,
                    paid_from: r.get(6)?,
                    ordered_at: from_ms(r.get(7)?),
                });
            }
        }
        orders
            .sort_by(|a, b| (a.ordered_at, a.product, a.id).cmp(&(b.ordered_at, b.product, b.id)));
        let mut refunds = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, quantity, amount, at_ms FROM image_scan_refunds
                  WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3 ORDER BY id",
            )?;
            let mut rows = stmt.query((account_ref, start_ms, end_ms))?;
            while let Some(r) = rows.next()? {
                refunds.push(RefundEntry {
                    id: r.get(0)?,
                    quantity: r.get::<_, i64>(1)? as u64,
                    amount: decimal(&r.get::<_, String>(2)?)?,
                    at: from_ms(r.get(3)?),
                });
            }
        }
        // A refund's entry names it as the refund code writes it
        // (`image_scan refund {id}`); matched against the refunds table, so a
        // credit an operator happened to give that reference is not one.
        let refund_of = |reference: &Option<String>| {
            refunds
                .iter()
                .find(|f| {
                    reference.as_deref() == Some(format!("image_scan refund {}", f.id).as_str())
                })
                .map(|f| f.id)
        };
        let mut ledger = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, amount, balance_after, reference, order_id, at_ms FROM balance_entries
                  WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3 ORDER BY at_ms, id",
            )?;
            let mut rows = stmt.query((account_ref, start_ms, end_ms))?;
            while let Some(r) = rows.next()? {
                let entry = BalanceEntry {
                    kind: r.get(0)?,
                    amount: decimal(&r.get::<_, String>(1)?)?,
                    balance_after: decimal(&r.get::<_, String>(2)?)?,
                    reference: r.get(3)?,
                    order: r.get(4)?,
                    at: from_ms(r.get(5)?),
                };
                let refund = (entry.kind == "credit")
                    .then(|| refund_of(&entry.reference))
                    .flatten();
                ledger.push((entry, refund));
            }
        }
        let balance_before = |before_ms: i64| -> Result<Decimal, StoreError> {
            let last: Option<String> = tx
                .query_row(
                    "SELECT balance_after FROM balance_entries WHERE account_ref = ?1 AND at_ms < ?2
                      ORDER BY at_ms DESC, id DESC LIMIT 1",
                    (account_ref, before_ms),
                    |r| r.get(0),
                )
                .optional()?;
            last.map_or(Ok(Decimal::new(0, 2)), |b| decimal(&b))
        };
        let opening_balance = balance_before(start_ms)?;
        let closing_balance = balance_before(end_ms)?;
        drop(tx);
        Ok(MonthFacts {
            daily,
            adjustments,
            orders,
            ledger,
            refunds,
            opening_balance,
            closing_balance,
        })
    }

    /// The seed of the key that signs statements: made at the first call
    /// (`new_seed`) and kept; replicas racing to make it all answer the one
    /// that was stored first.
    pub fn signing_seed(
        &mut self,
        new_seed: impl FnOnce() -> Result<[u8; 32], String>,
        now: DateTime<Utc>,
    ) -> Result<[u8; 32], StoreError> {
        let read = |conn: &super::db::Conn| -> Result<Option<String>, StoreError> {
            Ok(conn
                .query_row("SELECT seed FROM statement_keys WHERE slot = 1", (), |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let stored = match read(&self.0.conn)? {
            Some(seed) => seed,
            None => {
                let seed = new_seed().map_err(|e| {
                    StoreError::Corrupt(format!("no randomness for the statement key: {e}"))
                })?;
                let tx = self.0.conn.transaction()?;
                tx.execute(
                    "INSERT INTO statement_keys (slot, seed, created_at_ms) VALUES (1, ?1, ?2)
                     ON CONFLICT (slot) DO NOTHING",
                    (crate::security::hex(&seed), now.timestamp_millis()),
                )?;
                let stored = read(&tx)?.expect("the row was just written or was there");
                tx.commit()?;
                stored
            }
        };
        crate::security::unhex(&stored, 32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                StoreError::Corrupt("the stored statement key is not 64 hex digits".into())
            })
    }
}
