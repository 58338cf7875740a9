//! Accounts, their licences and their cap history.

use super::db::{Dialect, OptionalExtension, Value};
use super::{Accounts, Billing};
use chrono::{DateTime, Utc};
use shared::domain::{check_name, NameKind};
use shared::overage::{check_cap, CapChange, Licence};

use super::db::Conn;
use super::{from_ms, StoreError};

/// An account as billing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub(super) reference: i64,
    pub id: String,
    /// Days from here on may have changed since the last billing run.
    pub recompute_from: Option<DateTime<Utc>>,
    /// The change counter that went with `recompute_from` when it was read.
    pub(super) marks: i64,
    /// Samples before this were deleted with the account's data (SPEC
    /// section 8): days before its day are never billed again.
    pub data_deleted_before: Option<DateTime<Utc>>,
}

/// Account ids appear in URLs, CSV and idempotency keys (`account/day/seq`):
/// their domain is `shared::domain::check_name`'s.
pub(super) fn check_account_id(id: &str) -> Result<(), StoreError> {
    check_name(NameKind::AccountId, id).map_err(|e| StoreError::InvalidAccountId(e.to_string()))
}

fn account_row(r: &super::db::Row<'_>) -> Result<Account, super::db::DbError> {
    Ok(Account {
        reference: r.get(0)?,
        id: r.get(1)?,
        recompute_from: r.get::<_, Option<i64>>(2)?.map(from_ms),
        marks: r.get(3)?,
        data_deleted_before: r.get::<_, Option<i64>>(4)?.map(from_ms),
    })
}

/// The account's licences as billing counts them, in the order they were added.
pub(super) fn licences_of(conn: &Conn, account_ref: i64) -> Result<Vec<Licence>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT cores, start_ms, end_ms FROM licences WHERE account_ref = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([account_ref], |r| {
        Ok(Licence {
            cores: r.get(0)?,
            start: from_ms(r.get(1)?),
            end: from_ms(r.get(2)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The account's cap history in the order it was set.
pub(super) fn caps_of(conn: &Conn, account_ref: i64) -> Result<Vec<CapChange>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT cores, from_ms FROM caps WHERE account_ref = ?1 ORDER BY id")?;
    let rows = stmt.query_map([account_ref], |r| {
        Ok(CapChange {
            cores: r.get(0)?,
            from: from_ms(r.get(1)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Notes that the days of `account_ref` may have changed from `from` on, and
/// counts the change so that a run under way does not clear it.
pub(super) fn mark_for_recompute(
    tx: &Conn,
    account_ref: i64,
    from: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE accounts
            SET recompute_from_ms = least(recompute_from_ms, floored.at), marks = marks + 1
           FROM (SELECT greatest(?2, (SELECT recompute_floor_ms FROM retention WHERE id = 1)) AS at) AS floored
          WHERE ref = ?1",
    )?
    .execute((account_ref, from.timestamp_millis()))?;
    Ok(())
}

/// [`mark_for_recompute`] for many accounts at once: `(account_ref, from_ms)`
/// pairs. On PostgreSQL, where replicas ingest side by side, the marks are
/// rows inserted into `recompute_marks` in one statement: an update of each
/// account's row would hold it until commit, and every replica's commit
/// that marks the account would wait for the one before. The billing run
/// and retention fold them into the accounts' marks ([`fold_marks`]) under
/// the write lock, which ingest shares, so none is in flight then.
pub(super) fn mark_many_for_recompute(tx: &Conn, marks: &[(i64, i64)]) -> Result<(), StoreError> {
    match tx.dialect() {
        Dialect::Sqlite => {
            for &(account_ref, from_ms) in marks {
                mark_for_recompute(tx, account_ref, super::from_ms(from_ms))?;
            }
        }
        Dialect::Postgres if !marks.is_empty() => {
            let (refs, froms): (Vec<_>, Vec<_>) =
                marks.iter().map(|&(r, f)| (Some(r), Some(f))).unzip();
            tx.prepare_cached(
                "INSERT INTO recompute_marks (account_ref, from_ms)
                 SELECT * FROM unnest(?1::BIGINT[], ?2::BIGINT[])",
            )?
            .execute([Value::Ints(&refs), Value::Ints(&froms)])?;
        }
        Dialect::Postgres => {}
    }
    Ok(())
}

/// Folds the marks ingest inserted into the accounts' own (the earliest per
/// account, no earlier than retention's floor, counted as a change) and
/// deletes them. Run inside a write transaction, where no ingest is in
/// flight; a mark committed later stays for the next fold.
pub(super) fn fold_marks(tx: &Conn) -> Result<(), StoreError> {
    // Two statements whatever the number of marks: it runs under the lock
    // every replica's ingest waits for.
    let folded = tx.execute(
        "UPDATE accounts
            SET recompute_from_ms = least(recompute_from_ms,
                  greatest(m.at, (SELECT recompute_floor_ms FROM retention WHERE id = 1))),
                marks = marks + 1
           FROM (SELECT account_ref, min(from_ms) AS at FROM recompute_marks GROUP BY account_ref) AS m
          WHERE accounts.ref = m.account_ref",
        (),
    )?;
    if folded > 0 {
        tracing::debug!(accounts = folded, "ingest's recompute marks folded in");
    }
    match tx.dialect() {
        Dialect::Sqlite => tx.execute("DELETE FROM recompute_marks", ())?,
        // A day's herd leaves a mark per account and commit: emptied at
        // once rather than row by row. No ingest holds the table now (it
        // waits on the write lock this transaction holds).
        Dialect::Postgres => tx.execute("TRUNCATE recompute_marks", ())?,
    };
    Ok(())
}

impl Accounts<'_> {
    pub fn create_account(&mut self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        check_account_id(id)?;
        let inserted = self.0.conn.execute(
            "INSERT INTO accounts (id, created_at_ms) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            (id, now.timestamp_millis()),
        )?;
        if inserted == 0 {
            return Err(StoreError::AccountExists(id.to_string()));
        }
        Ok(())
    }

    /// Every account, by id.
    pub fn all(&self) -> Result<Vec<Account>, StoreError> {
        self.all_ordered("id")
    }

    /// Every account in the order they were created: the order whose runs
    /// `Billing::step_quiet_runs` takes a batch of at a time.
    pub fn all_as_created(&self) -> Result<Vec<Account>, StoreError> {
        self.all_ordered("ref")
    }

    fn all_ordered(&self, order: &'static str) -> Result<Vec<Account>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT ref, id, recompute_from_ms, marks, data_deleted_before_ms FROM accounts ORDER BY {order}"
        ))?;
        let rows = stmt.query_map((), account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a licence. Days it overlaps that were already billed are recomputed at the next run.
    pub fn add_licence(
        &mut self,
        account: &str,
        licence: &Licence,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        tx.execute(
            "INSERT INTO licences (account_ref, cores, start_ms, end_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            (
                account_ref,
                licence.cores,
                licence.start.timestamp_millis(),
                licence.end.timestamp_millis(),
                now.timestamp_millis(),
            ),
        )?;
        mark_for_recompute(&tx, account_ref, licence.start)?;
        tx.commit()?;
        Ok(())
    }

    pub fn licences(&self, account: &Account) -> Result<Vec<Licence>, StoreError> {
        licences_of(&self.0.conn, account.reference)
    }

    /// Sets the elastic cap from `from` on; the history is kept. Under the minimum is refused.
    pub fn set_cap(
        &mut self,
        account: &str,
        cores: u32,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        check_cap(cores)?;
        let account_ref = self.require_account(account)?;
        let tx = self.0.conn.transaction()?;
        tx.execute(
            "INSERT INTO caps (account_ref, cores, from_ms, set_at_ms) VALUES (?1, ?2, ?3, ?4)",
            (
                account_ref,
                cores,
                from.timestamp_millis(),
                now.timestamp_millis(),
            ),
        )?;
        mark_for_recompute(&tx, account_ref, from)?;
        tx.commit()?;
        Ok(())
    }

    /// The cap history in the order it was set.
    pub fn caps(&self, account: &Account) -> Result<Vec<CapChange>, StoreError> {
        caps_of(&self.0.conn, account.reference)
    }

    pub fn account(&mut self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT ref, id, recompute_from_ms, marks, data_deleted_before_ms FROM accounts WHERE id = ?1",
                [id],
                account_row,
            )
            .optional()?)
    }
}

impl Billing<'_> {
    /// Folds the recompute marks ingest left as rows into the accounts'
    /// own, so that reading the accounts finds every mark ([`fold_marks`]).
    pub fn fold_recompute_marks(&mut self) -> Result<(), StoreError> {
        let tx = self.0.conn.transaction()?;
        fold_marks(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Moves the account's recompute mark up to `to` once a run has handled
    /// everything before it, unless something marked the account again since
    /// the run read it. The mark never moves back, and never disappears: days
    /// from `to` on were not due for this run, and a replica whose clock runs
    /// ahead may already have billed one of them.
    pub fn advance_recompute(
        &mut self,
        account: &Account,
        to: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.0.conn.execute(
            "UPDATE accounts SET recompute_from_ms = greatest(recompute_from_ms, ?3)
              WHERE ref = ?1 AND marks = ?2",
            (account.reference, account.marks, to.timestamp_millis()),
        )?;
        Ok(())
    }
}
