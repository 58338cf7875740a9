//! The audit log: every change an admin, a customer or the service's own
//! runs made, as one entry each: the instant, the actor (a token's role and
//! id, never the token), the source address, the route or command, the
//! account, and the change as the before and after values of what it
//! touched. Entries are appended and never updated or pruned; each carries
//! the hash of the one before, so `verify` finds one altered or removed.
//!
//! The change is found, not described: [`Store::audited`] reads the
//! account's rows of every table a change may touch ([`AUDITED`]) before
//! and after running it, in the one transaction that also appends the
//! entry, and the entry holds what differs. A change that fails is rolled
//! back with its entry; none is written for it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use super::db::{Conn, OptionalExtension, Owned, Value};
use super::pages::Listed;
use super::{from_ms, Audit, Store, StoreError};

/// Who made a change, as the log names them: a token's role and id (the
/// admin token by a fingerprint of its hash), or `system` for the service's
/// own runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub role: String,
    pub id: String,
}

impl Actor {
    /// The 02:00 run and the lifecycle step.
    pub fn system(what: &str) -> Actor {
        Actor {
            role: "system".into(),
            id: what.into(),
        }
    }
}

/// Who made a change, from where, through what: what every entry records
/// beside the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBy {
    pub actor: Actor,
    /// The client's address; empty for the service's own runs.
    pub source: String,
    /// The route (`PUT /v1/admin/accounts/{id}/cap`) or the command.
    pub action: String,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub source: String,
    pub action: String,
    pub account: Option<String>,
    /// `{"table/key/column": {"before": …, "after": …}}`; a row added or
    /// removed is `{"table/key": {"before": null, "after": {…}}}` (a name
    /// may hold a dot, never a slash).
    pub change: Json,
    pub prev_hash: String,
    pub hash: String,
}

/// What a page of the log is filtered by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub account: Option<String>,
    /// A role (`admin`), or a role and id (`customer:7`).
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// The log as `verify` found it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub entries: u64,
    /// The last entry's seq and hash (0 and the zero hash when empty): an
    /// operator who keeps them can tell the log's end was not cut off.
    pub last_seq: i64,
    pub last_hash: String,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("entry {expected} is missing: the log goes from entry {before} to entry {found}")]
    Missing {
        before: i64,
        expected: i64,
        found: i64,
    },
    #[error("entry {seq} was altered: its hash does not match what it holds")]
    Altered { seq: i64 },
    #[error("entry {seq} does not follow entry {before}: its prev_hash is not that entry's hash (an entry was removed or replaced)")]
    Unlinked { seq: i64, before: i64 },
}

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How a table's rows belong to an account.
#[derive(Clone, Copy)]
enum Scope {
    /// `accounts` itself, by its `ref`.
    Account,
    /// A column holding the account's ref.
    Ref(&'static str),
    /// Rows of no account (product pauses, console sessions): read whole.
    Global,
}

/// A table a change may touch, the columns the log shows (never a token's
/// hash or a session's secrets) and its key.
struct Audited {
    table: &'static str,
    scope: Scope,
    key: &'static [&'static str],
    columns: &'static [&'static str],
    /// Rows are only ever added: read only those after the last key seen
    /// before the change (a ledger of thousands is not read twice).
    appended: bool,
}

const fn t(
    table: &'static str,
    scope: Scope,
    key: &'static [&'static str],
    columns: &'static [&'static str],
    appended: bool,
) -> Audited {
    Audited {
        table,
        scope,
        key,
        columns,
        appended,
    }
}

/// Every table an admin's or a customer's change may touch. Ingest's own
/// tables (samples, nodes, rejections, the image and usage reports) and the
/// billing run's (bill lines, the outbox, usage days) are not here: they
/// have their own trails.
const AUDITED: &[Audited] = &[
    t(
        "accounts",
        Scope::Account,
        &["ref"],
        &[
            "id",
            "created_at_ms",
            "parent_ref",
            "state",
            "state_since_ms",
            "balance",
            "data_deleted_before_ms",
            "lifecycle_from_ms",
        ],
        false,
    ),
    t(
        "licences",
        Scope::Ref("account_ref"),
        &["id"],
        &[
            "cores",
            "start_ms",
            "end_ms",
            "created_at_ms",
            "ends_ms",
            "auto_renew",
            "renewed_by",
        ],
        false,
    ),
    t(
        "caps",
        Scope::Ref("account_ref"),
        &["id"],
        &["cores", "from_ms", "set_at_ms"],
        true,
    ),
    t(
        "clusters",
        Scope::Ref("account_ref"),
        &["name"],
        &["created_at_ms", "rotated_at_ms"],
        false,
    ),
    t(
        "orders",
        Scope::Ref("account_ref"),
        &["id"],
        &[
            "kind",
            "licence_id",
            "cores",
            "months",
            "start_day",
            "end_day",
            "price",
            "paid_from",
            "ordered_at_ms",
        ],
        true,
    ),
    t(
        "balance_entries",
        Scope::Ref("account_ref"),
        &["id"],
        &[
            "kind",
            "amount",
            "balance_after",
            "reference",
            "order_id",
            "at_ms",
        ],
        true,
    ),
    t(
        "trials",
        Scope::Ref("account_ref"),
        &["account_ref"],
        &["main_ref", "start_ms", "end_ms", "started_at_ms"],
        false,
    ),
    t(
        "account_states",
        Scope::Ref("account_ref"),
        &["id"],
        &["state", "at_ms", "recorded_at_ms", "cause"],
        true,
    ),
    t(
        "deletions",
        Scope::Ref("account_ref"),
        &["id"],
        &["before_ms", "decided_at_ms", "finished_at_ms"],
        false,
    ),
    t(
        "contacts",
        Scope::Ref("account_ref"),
        &["id"],
        &["name", "role", "email", "sms", "created_at_ms"],
        false,
    ),
    t(
        "notices",
        Scope::Ref("account_ref"),
        &["id"],
        &["kind", "day", "issued_at_ms", "recipients", "product"],
        true,
    ),
    t(
        "reader_tokens",
        Scope::Ref("account_ref"),
        &["id"],
        &["name", "role", "created_at_ms", "revoked_at_ms"],
        false,
    ),
    t(
        "image_scan_packs",
        Scope::Ref("account_ref"),
        &["id"],
        &[
            "quantity",
            "unit_price",
            "price",
            "paid_from",
            "consumed",
            "refunded",
            "ordered_at_ms",
        ],
        false,
    ),
    t(
        "images",
        Scope::Ref("account_ref"),
        &["id"],
        &["image_id", "in_registry", "repo_tags", "repo_digests"],
        true,
    ),
    t(
        "image_receipts",
        Scope::Ref("account_ref"),
        &["id"],
        &["image_ref", "at_ms", "how", "automatic", "pack_id"],
        true,
    ),
    t(
        "image_scan_refunds",
        Scope::Ref("account_ref"),
        &["id"],
        &["quantity", "amount", "at_ms"],
        true,
    ),
    t(
        "image_settings",
        Scope::Ref("account_ref"),
        &["account_ref"],
        &["auto_authorize", "max_daily"],
        false,
    ),
    t(
        "log_storage_orders",
        Scope::Ref("account_ref"),
        &["id"],
        &[
            "kind",
            "gb",
            "months",
            "start_day",
            "end_day",
            "start_ms",
            "ends_ms",
            "counts_until_ms",
            "price",
            "paid_from",
            "auto_renew",
            "renewed_by",
            "expands",
            "ordered_at_ms",
        ],
        false,
    ),
    t(
        "product_lives",
        Scope::Ref("account_ref"),
        &["product"],
        &["state", "state_since_ms"],
        false,
    ),
    t(
        "product_states",
        Scope::Ref("account_ref"),
        &["id"],
        &["product", "state", "at_ms", "recorded_at_ms", "cause"],
        true,
    ),
    t(
        "product_pauses",
        Scope::Global,
        &["product"],
        &["paused_from", "paused_until", "set_at_ms"],
        false,
    ),
];

/// The rows of one account (or of no account: `Global` tables only) in
/// every audited table, by `table/key`.
type Facts = BTreeMap<String, Json>;

/// The last key of each appended table before a change: the read after
/// it takes only the rows added since (a ledger of thousands is not read
/// twice).
type Marks = BTreeMap<&'static str, i64>;

fn cell(value: Owned) -> Json {
    match value {
        Owned::Null => Json::Null,
        Owned::Int(i) => json!(i),
        Owned::Real(f) => json!(f),
        Owned::Text(t) => json!(t),
        Owned::Blob(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

/// The `WHERE` that keeps `table`'s rows of `account` (its ref), or `None`
/// when the table has no rows of it.
fn scope_of(table: &Audited, account: Option<i64>) -> Option<String> {
    match (table.scope, account) {
        (Scope::Account, Some(_)) => Some(" WHERE ref = ?1".into()),
        (Scope::Ref(column), Some(_)) => Some(format!(" WHERE {column} = ?1")),
        (Scope::Global, None) => Some(" WHERE 1 = 1".into()),
        _ => None,
    }
}

/// Before a change: the rows of every table that rows are changed in, and
/// the last key of every table rows are only added to.
fn facts_before(conn: &Conn, account: Option<i64>) -> Result<(Facts, Marks), StoreError> {
    let mut marks = Marks::new();
    // The table's last id, whoever's: the rows after it are few, and
    // found by the primary key (the account's rows would be read whole).
    for table in AUDITED.iter().filter(|t| t.appended) {
        if scope_of(table, account).is_some() {
            let last: Option<i64> = conn.query_row(
                &format!("SELECT max({}) FROM {}", table.key[0], table.table),
                (),
                |r| r.get(0),
            )?;
            marks.insert(table.table, last.unwrap_or(i64::MIN));
        }
    }
    Ok((read_facts(conn, account, None)?, marks))
}

/// After a change: the rows of every table that rows are changed in, and
/// those added to the others since `marks`.
fn facts_after(conn: &Conn, account: Option<i64>, marks: &Marks) -> Result<Facts, StoreError> {
    read_facts(conn, account, Some(marks))
}

fn params(account: Option<i64>) -> Vec<Value<'static>> {
    account.map(Value::Int).into_iter().collect()
}

/// Without `marks`, the tables whose rows change; with them, every table,
/// the appended ones from their mark on.
fn read_facts(
    conn: &Conn,
    account: Option<i64>,
    marks: Option<&Marks>,
) -> Result<Facts, StoreError> {
    let mut facts = Facts::new();
    for table in AUDITED {
        let Some(mut sql) = scope_of(table, account) else {
            continue;
        };
        let mut values = params(account);
        if table.appended {
            let Some(mark) = marks.and_then(|m| m.get(table.table)) else {
                continue;
            };
            values.push(Value::Int(*mark));
            // By the primary key from the mark on; `+` keeps SQLite off the
            // account's index (PostgreSQL reads it as the number it is).
            sql = match (table.scope, account) {
                (Scope::Ref(column), Some(_)) => format!(
                    " WHERE {} > ?{} AND +{column} = ?1",
                    table.key[0],
                    values.len()
                ),
                _ => format!("{sql} AND {} > ?{}", table.key[0], values.len()),
            };
        }
        let select = format!(
            "SELECT {}, {} FROM {}{sql} ORDER BY {}",
            table.key.join(", "),
            table.columns.join(", "),
            table.table,
            table.key.join(", ")
        );
        let width = table.key.len() + table.columns.len();
        conn.for_each(&select, values, |r| {
            let mut key = Vec::with_capacity(table.key.len());
            for i in 0..table.key.len() {
                key.push(match cell(r.get(i)?) {
                    Json::String(s) => s,
                    other => other.to_string(),
                });
            }
            let mut row = Map::new();
            for (i, column) in (table.key.len()..width).zip(table.columns) {
                row.insert((*column).to_string(), cell(r.get(i)?));
            }
            facts.insert(
                format!("{}/{}", table.table, key.join("/")),
                Json::Object(row),
            );
            Ok(())
        })?;
    }
    Ok(facts)
}

/// What differs between two reads: a row added or removed whole, a row
/// changed column by column.
fn diff(before: &Facts, after: &Facts) -> Json {
    let mut change = Map::new();
    for (key, was) in before {
        match after.get(key) {
            None => {
                change.insert(key.clone(), json!({"before": was, "after": null}));
            }
            Some(now) if now != was => {
                let (Json::Object(was), Json::Object(now)) = (was, now) else {
                    unreachable!("facts are rows")
                };
                for (column, old) in was {
                    let new = &now[column];
                    if new != old {
                        change.insert(
                            format!("{key}/{column}"),
                            json!({"before": old, "after": new}),
                        );
                    }
                }
            }
            Some(_) => {}
        }
    }
    for (key, now) in after {
        if !before.contains_key(key) {
            change.insert(key.clone(), json!({"before": null, "after": now}));
        }
    }
    Json::Object(change)
}

/// The entry's hash: SHA-256 of its fields, each as its length and its
/// bytes, the hash before it last, in lowercase hex.
fn hash_of(
    seq: i64,
    at_ms: i64,
    (actor, source, action): (&Actor, &str, &str),
    account: Option<&str>,
    change: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    let account = account.map_or_else(|| "-".to_string(), |a| format!("+{a}"));
    let seq = seq.to_string();
    let at = at_ms.to_string();
    for field in [
        seq.as_str(),
        at.as_str(),
        &actor.role,
        &actor.id,
        source,
        action,
        &account,
        change,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends one entry after the last, in the transaction open on `conn`
/// (which holds the write lock: entries are appended one at a time, and
/// `seq`'s key refuses a second entry with the same number).
fn append(
    conn: &Conn,
    by: &ChangeBy,
    account: Option<&str>,
    change: &Json,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let (last, prev_hash): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS.to_string()));
    let seq = last + 1;
    let text = change.to_string();
    let at_ms = now.timestamp_millis();
    let hash = hash_of(
        seq,
        at_ms,
        (&by.actor, &by.source, &by.action),
        account,
        &text,
        &prev_hash,
    );
    conn.execute(
        "INSERT INTO audit_log (seq, at_ms, actor_role, actor_id, source, action, account, change, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        vec![
            Value::Int(seq),
            Value::Int(at_ms),
            Value::Text(&by.actor.role),
            Value::Text(&by.actor.id),
            Value::Text(&by.source),
            Value::Text(&by.action),
            account.map_or(Value::Null, Value::Text),
            Value::Text(&text),
            Value::Text(&prev_hash),
            Value::Text(&hash),
        ],
    )?;
    Ok(seq)
}

const ENTRY_COLUMNS: &str =
    "seq, at_ms, actor_role, actor_id, source, action, account, change, prev_hash, hash";

fn entry_row(r: &super::db::Row<'_>) -> Result<Entry, super::db::DbError> {
    let change: String = r.get(7)?;
    Ok(Entry {
        seq: r.get(0)?,
        at: from_ms(r.get(1)?),
        actor: Actor {
            role: r.get(2)?,
            id: r.get(3)?,
        },
        source: r.get(4)?,
        action: r.get(5)?,
        account: r.get(6)?,
        // Kept as the text that was hashed; a change that is not JSON any
        // more is shown as that text (verify names the entry).
        change: serde_json::from_str(&change).unwrap_or(Json::String(change)),
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

impl Store {
    /// Runs `change` and appends its entry, in one transaction: the entry is
    /// written only if the change is, and holds what `change` altered of
    /// `account`'s rows (or, for `None`, of the rows of no account). Inside
    /// it, the store's own transactions are savepoints of this one.
    pub fn audited<T>(
        &mut self,
        by: &ChangeBy,
        account: Option<&str>,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.in_one_transaction(|s| s.audited_inside(by, account, now, change))
    }

    /// Runs `change`, which says what it changed, and appends that as its
    /// entry in the same transaction: for a change to rows no account owns
    /// (a console session opened or ended).
    pub fn audited_as_stated<T>(
        &mut self,
        by: &ChangeBy,
        account: Option<&str>,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut Store) -> Result<(T, Json), StoreError>,
    ) -> Result<T, StoreError> {
        self.in_one_transaction(|s| {
            let (value, stated) = change(s)?;
            append(&s.conn, by, account, &stated, now)?;
            Ok(value)
        })
    }

    /// `work` in one write transaction, committed if it succeeds. Opened
    /// and ended by hand, as `in_write_batch` does: `work` borrows the
    /// store. A panic inside is rolled back by `Connection`.
    fn in_one_transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Inside another transaction, BEGIN would commit nothing of its own
        // on PostgreSQL (a warning), and COMMIT would end the outer one.
        assert!(
            self.conn.is_autocommit(),
            "an audited change opens its own transaction; inside one, use audited_if_changed"
        );
        self.conn.begin()?;
        let result = work(self);
        let ended = match &result {
            Ok(_) => self.conn.commit(),
            Err(_) => self.conn.rollback(),
        };
        if let (Ok(_), Err(e)) = (&result, ended) {
            let _ = self.conn.rollback();
            return Err(e.into());
        }
        result
    }

    /// Inside the caller's write transaction (a batch of the lifecycle's
    /// step): runs `change` and appends its entry only if it changed
    /// something of `account`, as the service's own runs do.
    pub fn audited_if_changed<T>(
        &mut self,
        by: &ChangeBy,
        account: &str,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        assert!(
            !self.conn.is_autocommit(),
            "audited_if_changed runs inside the caller's transaction"
        );
        let (value, changed) = self.run_and_diff(Some(account), change)?;
        if changed.as_object().is_some_and(|c| !c.is_empty()) {
            append(&self.conn, by, Some(account), &changed, now)?;
        }
        Ok(value)
    }

    fn audited_inside<T>(
        &mut self,
        by: &ChangeBy,
        account: Option<&str>,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (value, changed) = self.run_and_diff(account, change)?;
        append(&self.conn, by, account, &changed, now)?;
        Ok(value)
    }

    /// Runs `change` between two reads of `account`'s rows (of the rows of
    /// no account for `None`); its value and what differs.
    fn run_and_diff<T>(
        &mut self,
        account: Option<&str>,
        change: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<(T, Json), StoreError> {
        let reference = |s: &Store| -> Result<Option<i64>, StoreError> {
            let Some(id) = account else { return Ok(None) };
            Ok(s.conn
                .query_row("SELECT ref FROM accounts WHERE id = ?1", [id], |r| r.get(0))
                .optional()?)
        };
        let was = reference(self)?;
        let (before, marks) = match (account, was) {
            // An account this change creates: nothing of it before.
            (Some(_), None) => (Facts::new(), None),
            (_, was) => {
                let (facts, marks) = facts_before(&self.conn, was)?;
                (facts, Some(marks))
            }
        };
        let value = change(self)?;
        let after = match (account, reference(self)?, &marks) {
            (Some(_), None, _) => Facts::new(),
            (_, is, Some(marks)) if is == was => facts_after(&self.conn, is, marks)?,
            // Created by this change: every row of it is new.
            (_, is, _) => facts_after(&self.conn, is, &created_marks())?,
        };
        Ok((value, diff(&before, &after)))
    }
}

/// Marks before every row: an account made by the change has all its rows new.
fn created_marks() -> Marks {
    AUDITED
        .iter()
        .filter(|t| t.appended)
        .map(|t| (t.table, i64::MIN))
        .collect()
}

impl Audit<'_> {
    /// A page of the log in the order written, after `after` (a seq).
    pub fn page(
        &mut self,
        filter: &Filter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Listed<Entry, i64>, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<Value<'_>> = Vec::new();
        let (role, id) = match filter.actor.as_deref().map(|a| a.split_once(':')) {
            Some(Some((role, id))) => (Some(role), Some(id)),
            Some(None) => (filter.actor.as_deref(), None),
            None => (None, None),
        };
        let since = filter.since.map(|t| t.timestamp_millis());
        let until = filter.until.map(|t| t.timestamp_millis());
        for (clause, value) in [
            ("account = ?", filter.account.as_deref().map(Value::Text)),
            ("actor_role = ?", role.map(Value::Text)),
            ("actor_id = ?", id.map(Value::Text)),
            ("at_ms >= ?", since.map(Value::Int)),
            ("at_ms < ?", until.map(Value::Int)),
        ] {
            if let Some(v) = value {
                values.push(v);
                clauses.push(clause.replace('?', &format!("?{}", values.len())));
            }
        }
        let filtered = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let total: i64 = self.0.conn.query_row(
            &format!("SELECT count(*) FROM audit_log{filtered}"),
            values.clone(),
            |r| r.get(0),
        )?;
        let mut page_values = values;
        page_values.push(Value::Int(after.unwrap_or(0)));
        let key = page_values.len();
        page_values.push(Value::Int(i64::from(limit) + 1));
        let and = if filtered.is_empty() {
            " WHERE"
        } else {
            " AND"
        };
        let rows = self
            .0
            .conn
            .query_map(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log{filtered}{and} seq > ?{key} ORDER BY seq LIMIT ?{}",
                    key + 1
                ),
                page_values,
                entry_row,
            )?
            .map(|e| e.map(|e| (e.seq, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Listed::from_rows(
            rows,
            limit,
            u64::try_from(total).unwrap_or(0),
        ))
    }

    /// The newest `limit` entries of `account`, newest first: the console's page.
    pub fn latest(&mut self, account: &str, limit: u32) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .0
            .conn
            .query_map(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE account = ?1 ORDER BY seq DESC LIMIT ?2"
                ),
                (account, i64::from(limit)),
                entry_row,
            )?
            .collect::<Result<_, _>>()?)
    }

    /// Every entry in order, through `each`, without holding them all.
    pub fn each(
        &mut self,
        mut each: impl FnMut(Entry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        self.0.conn.for_each(
            &format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq"),
            (),
            |r| {
                if failed.is_none() {
                    if let Err(e) = each(entry_row(r)?) {
                        failed = Some(e);
                    }
                }
                Ok(())
            },
        )?;
        failed.map_or(Ok(()), Err)
    }

    /// Walks the whole chain: each entry numbered one past the last, its
    /// hash what it holds, its `prev_hash` the last one's hash.
    pub fn verify(&mut self) -> Result<Result<Verified, Broken>, StoreError> {
        let mut found = Verified {
            entries: 0,
            last_seq: 0,
            last_hash: GENESIS.to_string(),
        };
        let mut broken = None;
        self.0.conn.for_each(
            &format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq"),
            (),
            |r| {
                if broken.is_some() {
                    return Ok(());
                }
                let seq: i64 = r.get(0)?;
                let actor = Actor {
                    role: r.get(2)?,
                    id: r.get(3)?,
                };
                let (source, action): (String, String) = (r.get(4)?, r.get(5)?);
                let account: Option<String> = r.get(6)?;
                let (change, prev_hash, hash): (String, String, String) =
                    (r.get(7)?, r.get(8)?, r.get(9)?);
                let expected = found.last_seq + 1;
                let recomputed = hash_of(
                    seq,
                    r.get(1)?,
                    (&actor, &source, &action),
                    account.as_deref(),
                    &change,
                    &prev_hash,
                );
                broken = if seq != expected {
                    Some(Broken::Missing {
                        before: found.last_seq,
                        expected,
                        found: seq,
                    })
                } else if recomputed != hash {
                    Some(Broken::Altered { seq })
                } else if prev_hash != found.last_hash {
                    Some(Broken::Unlinked {
                        seq,
                        before: found.last_seq,
                    })
                } else {
                    None
                };
                found.entries += 1;
                found.last_seq = seq;
                found.last_hash = hash;
                Ok(())
            },
        )?;
        Ok(broken.map_or(Ok(found), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AccountTokenRole;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 10, minute, 0).unwrap()
    }

    fn admin(action: &str) -> ChangeBy {
        ChangeBy {
            actor: Actor {
                role: "admin".into(),
                id: "sha256:0011aabb".into(),
            },
            source: "10.0.0.7".into(),
            action: action.into(),
        }
    }

    fn store() -> Store {
        Store::in_memory().unwrap()
    }

    fn entries(s: &mut Store) -> Vec<Entry> {
        s.audit()
            .page(&Filter::default(), None, 1000)
            .unwrap()
            .items
    }

    #[test]
    fn a_change_is_one_entry_with_the_before_and_after_of_what_it_touched() {
        let mut s = store();
        s.audited(
            &admin("POST /v1/admin/accounts"),
            Some("acme"),
            at(0),
            |s| s.accounts().create_account("acme", at(0)),
        )
        .unwrap();
        s.audited(
            &admin("PUT /v1/admin/accounts/{id}/cap"),
            Some("acme"),
            at(1),
            |s| s.accounts().set_cap("acme", 600, at(1), at(1)),
        )
        .unwrap();
        s.audited(
            &admin("PUT /v1/admin/accounts/{id}/cap"),
            Some("acme"),
            at(2),
            |s| s.accounts().set_cap("acme", 800, at(2), at(2)),
        )
        .unwrap();
        let log = entries(&mut s);
        assert_eq!(log.len(), 3);
        let created = log[0].change.as_object().unwrap();
        assert_eq!(created["accounts/1"]["before"], Json::Null);
        assert_eq!(created["accounts/1"]["after"]["id"], "acme");
        // The second cap is a row added; the first is not shown again.
        let cap = log[2].change.as_object().unwrap();
        assert_eq!(cap.len(), 1, "{cap:?}");
        let (key, value) = cap.iter().next().unwrap();
        assert!(key.starts_with("caps/"), "{key}");
        assert_eq!(value["before"], Json::Null);
        assert_eq!(value["after"]["cores"], 800);
        assert_eq!(log[2].account.as_deref(), Some("acme"));
        assert_eq!(log[2].actor.role, "admin");
        assert_eq!(log[2].source, "10.0.0.7");
        assert_eq!(log[2].action, "PUT /v1/admin/accounts/{id}/cap");
        assert_eq!(log[2].at, at(2));
        assert_eq!(log[1].prev_hash, log[0].hash);
        assert_eq!(log[0].prev_hash, GENESIS);
    }

    #[test]
    fn a_column_changed_in_place_shows_its_old_and_new_value() {
        let mut s = store();
        s.accounts().create_account("acme", at(0)).unwrap();
        let token = s
            .accounts()
            .issue_account_token("acme", AccountTokenRole::Customer, "ops", at(0))
            .unwrap();
        s.audited(&admin("DELETE …"), Some("acme"), at(3), |s| {
            s.accounts()
                .revoke_account_token("acme", AccountTokenRole::Customer, token.id, at(3))
        })
        .unwrap();
        let change = entries(&mut s).remove(0).change;
        let key = format!("reader_tokens/{}/revoked_at_ms", token.id);
        assert_eq!(change[&key]["before"], Json::Null, "{change}");
        assert_eq!(change[&key]["after"], at(3).timestamp_millis());
        assert!(
            !change.to_string().contains(&token.token),
            "no token in the log"
        );
    }

    #[test]
    fn a_refused_change_writes_no_entry_and_changes_nothing() {
        let mut s = store();
        s.accounts().create_account("acme", at(0)).unwrap();
        let refused = s.audited(&admin("PUT cap"), Some("acme"), at(1), |s| {
            s.accounts().set_cap("acme", 600, at(1), at(1))?;
            Err::<(), _>(StoreError::UnknownAccount("on purpose".into()))
        });
        assert!(refused.is_err());
        assert!(entries(&mut s).is_empty());
        let acme = s.accounts().account("acme").unwrap().unwrap();
        assert!(s.accounts().caps(&acme).unwrap().is_empty(), "rolled back");
    }

    #[test]
    fn verify_finds_an_altered_a_removed_and_a_relinked_entry() {
        let mut s = store();
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            s.audited(
                &admin("POST /v1/admin/accounts"),
                Some(id),
                at(i as u32),
                |s| s.accounts().create_account(id, at(0)),
            )
            .unwrap();
        }
        let whole = s.audit().verify().unwrap().unwrap();
        assert_eq!((whole.entries, whole.last_seq), (4, 4));
        assert_eq!(whole.last_hash, entries(&mut s)[3].hash);

        s.conn
            .execute("UPDATE audit_log SET source = '10.9.9.9' WHERE seq = 2", ())
            .unwrap();
        assert_eq!(s.audit().verify().unwrap(), Err(Broken::Altered { seq: 2 }));
        s.conn
            .execute("UPDATE audit_log SET source = '10.0.0.7' WHERE seq = 2", ())
            .unwrap();
        assert!(s.audit().verify().unwrap().is_ok());

        s.conn
            .execute("DELETE FROM audit_log WHERE seq = 3", ())
            .unwrap();
        let e = s.audit().verify().unwrap().unwrap_err();
        assert_eq!(
            e,
            Broken::Missing {
                before: 2,
                expected: 3,
                found: 4
            }
        );
        assert!(e.to_string().contains("entry 3 is missing"), "{e}");

        // Renumbered to hide the gap, and its own hash made again: the link
        // to the entry before it no longer holds.
        s.conn
            .execute("UPDATE audit_log SET seq = 3 WHERE seq = 4", ())
            .unwrap();
        let (row, prev): (Entry, String) = {
            let e = entries(&mut s).remove(2);
            (e.clone(), e.prev_hash)
        };
        let hash = hash_of(
            3,
            row.at.timestamp_millis(),
            (&row.actor, &row.source, &row.action),
            row.account.as_deref(),
            &row.change.to_string(),
            &prev,
        );
        s.conn
            .execute(
                "UPDATE audit_log SET hash = ?1 WHERE seq = 3",
                [hash.as_str()],
            )
            .unwrap();
        assert_eq!(
            s.audit().verify().unwrap(),
            Err(Broken::Unlinked { seq: 3, before: 2 })
        );
    }

    #[test]
    fn pages_filter_by_account_actor_and_time() {
        let mut s = store();
        let customer = ChangeBy {
            actor: Actor {
                role: "customer".into(),
                id: "7".into(),
            },
            source: "10.0.0.8".into(),
            action: "PUT /v1/accounts/{id}/cap".into(),
        };
        s.audited(&admin("POST /v1/admin/accounts"), Some("a"), at(0), |s| {
            s.accounts().create_account("a", at(0))
        })
        .unwrap();
        s.audited(&admin("POST /v1/admin/accounts"), Some("b"), at(1), |s| {
            s.accounts().create_account("b", at(1))
        })
        .unwrap();
        s.audited(&customer, Some("a"), at(2), |s| {
            s.accounts().set_cap("a", 600, at(2), at(2))
        })
        .unwrap();
        let page = |s: &mut Store, f: Filter| -> Vec<i64> {
            s.audit()
                .page(&f, None, 10)
                .unwrap()
                .items
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        let of = |account: &str| Filter {
            account: Some(account.into()),
            ..Filter::default()
        };
        assert_eq!(page(&mut s, of("a")), [1, 3]);
        let by = |actor: &str| Filter {
            actor: Some(actor.into()),
            ..Filter::default()
        };
        assert_eq!(page(&mut s, by("customer")), [3]);
        assert_eq!(page(&mut s, by("customer:7")), [3]);
        assert_eq!(page(&mut s, by("customer:8")), Vec::<i64>::new());
        assert_eq!(page(&mut s, by("admin")), [1, 2]);
        let window = Filter {
            since: Some(at(1)),
            until: Some(at(2)),
            ..Filter::default()
        };
        assert_eq!(page(&mut s, window), [2]);
        let first = s.audit().page(&Filter::default(), None, 2).unwrap();
        assert_eq!(
            (first.items.len(), first.total, first.next),
            (2, 3, Some(2))
        );
        let rest = s.audit().page(&Filter::default(), first.next, 2).unwrap();
        assert_eq!(rest.items[0].seq, 3);
        assert_eq!(rest.next, None);
    }
}
