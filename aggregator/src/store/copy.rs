//! Copying one store into another (`aggregator migrate-store`): every table,
//! row for row, in one transaction of the target, then a comparison of the
//! two that must find them equal (every bill line, each table's rows, each
//! account's samples). SQLite to PostgreSQL is the move to replicas; any
//! direction works, as the tables are the same on both.

use std::collections::BTreeMap;

use shared::bill::BillLine;

use super::db::{Conn, DbError, Dialect, Owned, ToParam, Value};
use super::{Store, StoreError};

/// A table: its name, its columns in copy order, and the column that orders
/// it (parents before children where a table points at itself).
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    order_by: &'static str,
    /// Its identity column on PostgreSQL, whose sequence must move past the copied ids.
    identity: Option<&'static str>,
}

/// Every table, parents before the tables that point at them.
const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            "ref",
            "id",
            "created_at_ms",
            "recompute_from_ms",
            "marks",
            "parent_ref",
            "state",
            "state_since_ms",
            "stepped_through",
            "balance",
            "data_deleted_before_ms",
            "lifecycle_from_ms",
        ],
        order_by: "ref",
        identity: Some("ref"),
    },
    // renewed_by points at a later licence: it is set once all are in.
    Table {
        name: "licences",
        columns: &[
            "id",
            "account_ref",
            "cores",
            "start_ms",
            "end_ms",
            "created_at_ms",
            "ends_ms",
            "auto_renew",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "caps",
        columns: &["id", "account_ref", "cores", "from_ms", "set_at_ms"],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "nodes",
        columns: &["id", "account_ref", "cluster", "name", "last_seen_ms"],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "samples",
        columns: &[
            "account_ref",
            "at_ms",
            "node_id",
            "id",
            "cores",
            "received_at_ms",
            "seq",
            "agent_version",
        ],
        order_by: "account_ref, at_ms, node_id, id",
        identity: None,
    },
    Table {
        name: "recompute_marks",
        columns: &["account_ref", "from_ms"],
        order_by: "account_ref, from_ms",
        identity: None,
    },
    Table {
        name: "sample_ids",
        columns: &["id", "next"],
        order_by: "id",
        identity: None,
    },
    Table {
        name: "bill_lines",
        columns: &[
            "account_ref",
            "day",
            "seq",
            "kind",
            "hours",
            "excess_core_hours",
            "average_excess_cores",
            "cap_cores",
            "billable_cores",
            "amount",
            "currency",
            "issued_at_ms",
        ],
        order_by: "account_ref, day, seq",
        identity: None,
    },
    Table {
        name: "billing_state",
        columns: &["id", "last_run_ms"],
        order_by: "id",
        identity: None,
    },
    Table {
        name: "clusters",
        columns: &[
            "account_ref",
            "name",
            "token_hash",
            "created_at_ms",
            "rotated_at_ms",
        ],
        order_by: "account_ref, name",
        identity: None,
    },
    Table {
        name: "admin_token",
        columns: &["id", "token_hash", "created_at_ms"],
        order_by: "id",
        identity: None,
    },
    Table {
        name: "outbox",
        columns: &[
            "account_ref",
            "day",
            "seq",
            "delivered_at_ms",
            "attempts",
            "next_attempt_ms",
            "last_error",
        ],
        order_by: "account_ref, day, seq",
        identity: None,
    },
    // SQLite's implicit row id, PostgreSQL's column of that name.
    Table {
        name: "rejections",
        columns: &["rowid", "account_ref", "at_ms", "reason", "received_at_ms"],
        order_by: "rowid",
        identity: Some("rowid"),
    },
    Table {
        name: "retention",
        columns: &["id", "pruned_before_ms", "recompute_floor_ms"],
        order_by: "id",
        identity: None,
    },
    Table {
        name: "orders",
        columns: &[
            "id",
            "account_ref",
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
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "balance_entries",
        columns: &[
            "id",
            "account_ref",
            "kind",
            "amount",
            "balance_after",
            "reference",
            "order_id",
            "at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "trials",
        columns: &[
            "main_ref",
            "account_ref",
            "start_ms",
            "end_ms",
            "started_at_ms",
        ],
        order_by: "main_ref",
        identity: None,
    },
    Table {
        name: "account_states",
        columns: &[
            "id",
            "account_ref",
            "state",
            "at_ms",
            "recorded_at_ms",
            "cause",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "deletions",
        columns: &[
            "id",
            "account_ref",
            "before_ms",
            "decided_at_ms",
            "samples",
            "rejections",
            "finished_at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "contacts",
        columns: &[
            "id",
            "account_ref",
            "name",
            "role",
            "email",
            "sms",
            "created_at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "notices",
        columns: &[
            "id",
            "account_ref",
            "kind",
            "day",
            "issued_at_ms",
            "recipients",
            "details",
            "product",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "notice_deliveries",
        columns: &[
            "notice_id",
            "channel",
            "address",
            "attempts",
            "next_attempt_ms",
            "delivered_at_ms",
            "last_error",
        ],
        order_by: "notice_id, channel, address",
        identity: None,
    },
    Table {
        name: "reader_tokens",
        columns: &[
            "id",
            "account_ref",
            "name",
            "token_hash",
            "created_at_ms",
            "revoked_at_ms",
            "role",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "issued_tokens",
        columns: &["token_hash", "kind", "issued_at_ms"],
        order_by: "token_hash",
        identity: None,
    },
    Table {
        name: "names_outside_domain",
        columns: &["kind", "name"],
        order_by: "kind, name",
        identity: None,
    },
    Table {
        name: "product_pauses",
        columns: &["product", "paused_from", "paused_until", "set_at_ms"],
        order_by: "product",
        identity: None,
    },
    Table {
        name: "image_scan_packs",
        columns: &[
            "id",
            "account_ref",
            "quantity",
            "unit_price",
            "price",
            "paid_from",
            "consumed",
            "refunded",
            "ordered_at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "images",
        columns: &[
            "id",
            "account_ref",
            "image_id",
            "first_seen_ms",
            "last_seen_ms",
            "on_nodes",
            "in_registry",
            "repo_tags",
            "repo_digests",
            "size_bytes",
            "authorized_at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "node_images",
        columns: &["node_id", "image_ref"],
        order_by: "node_id, image_ref",
        identity: None,
    },
    Table {
        name: "node_image_lists",
        columns: &["node_id", "at_ms", "received_at_ms"],
        order_by: "node_id",
        identity: None,
    },
    Table {
        name: "image_receipts",
        columns: &[
            "id",
            "account_ref",
            "image_ref",
            "at_ms",
            "how",
            "automatic",
            "pack_id",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "image_scan_refunds",
        columns: &["id", "account_ref", "quantity", "amount", "at_ms"],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "image_settings",
        columns: &["account_ref", "auto_authorize", "max_daily", "low_notified"],
        order_by: "account_ref",
        identity: None,
    },
    Table {
        name: "log_storage_orders",
        columns: &[
            "id",
            "account_ref",
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
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "product_lives",
        columns: &["account_ref", "product", "state", "state_since_ms"],
        order_by: "account_ref, product",
        identity: None,
    },
    Table {
        name: "product_states",
        columns: &[
            "id",
            "account_ref",
            "product",
            "state",
            "at_ms",
            "recorded_at_ms",
            "cause",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "log_usage",
        columns: &[
            "account_ref",
            "at_ms",
            "received_at_ms",
            "days",
            "used_bytes",
            "quota_bytes",
            "high",
        ],
        order_by: "account_ref",
        identity: None,
    },
    Table {
        name: "log_usage_days",
        columns: &["account_ref", "day", "used_bytes", "quota_bytes"],
        order_by: "account_ref, day",
        identity: None,
    },
    Table {
        name: "usage_days",
        columns: &["account_ref", "day", "hours", "core_hours", "peak_cores"],
        order_by: "account_ref, day",
        identity: None,
    },
    Table {
        name: "log_purges",
        columns: &[
            "id",
            "account_ref",
            "decided_at_ms",
            "report_at_ms",
            "days",
            "bytes",
            "reason",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    Table {
        name: "statement_keys",
        columns: &["slot", "seed", "created_at_ms"],
        order_by: "slot",
        identity: None,
    },
    Table {
        name: "console_sessions",
        columns: &[
            "id",
            "session_hash",
            "csrf",
            "role",
            "reader_token",
            "admin_hash",
            "created_at_ms",
            "expires_at_ms",
            "ended_at_ms",
        ],
        order_by: "id",
        identity: Some("id"),
    },
    // The audit log's chain is copied as it is: seq, hashes and all.
    Table {
        name: "audit_log",
        columns: &[
            "seq",
            "at_ms",
            "actor_role",
            "actor_id",
            "source",
            "action",
            "account",
            "change",
            "prev_hash",
            "hash",
        ],
        order_by: "seq",
        identity: None,
    },
];

/// Rows written by one multi-row INSERT (below both databases' parameter limits).
const ROWS_PER_INSERT: usize = 256;

/// What a copy moved and what the comparison found equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows per table, in copy order.
    pub rows: Vec<(&'static str, u64)>,
    /// Bill lines found identical in both stores.
    pub bill_lines: usize,
    /// Accounts whose samples (count, sum of cores, first and last instant) agree.
    pub accounts: usize,
}

/// How the two stores differ, when they do.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target already holds data ({0}); migrate-store only fills an empty store")]
    TargetNotEmpty(String),
    #[error("the source is at schema version {source_version} and the target at {target_version}; start this version of the aggregator on the source once to bring it up to date")]
    SchemaMismatch {
        source_version: usize,
        target_version: usize,
    },
    #[error("after the copy the stores differ: {0}")]
    Differs(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbError> for CopyError {
    fn from(e: DbError) -> CopyError {
        CopyError::Store(StoreError::Database(e))
    }
}

impl Store {
    /// Copies every row of this store into `target`, which must be empty
    /// (freshly migrated), in one transaction of the target; then compares
    /// the two. This store is only read.
    pub fn copy_into(&mut self, target: &mut Store) -> Result<CopyReport, CopyError> {
        let (source_version, target_version) = (self.schema_version()?, target.schema_version()?);
        if source_version != target_version {
            return Err(CopyError::SchemaMismatch {
                source_version,
                target_version,
            });
        }
        for table in ["accounts", "bill_lines", "samples", "admin_token"] {
            let n = count(&target.conn, table)?;
            if n > 0 {
                return Err(CopyError::TargetNotEmpty(format!("{n} rows in {table}")));
            }
        }
        let tx = target.conn.transaction()?;
        let mut rows = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            if table.name == "samples" && tx.dialect() == Dialect::Postgres {
                // Filed by node and day: the target is empty, as checked.
                rows.push((table.name, copy_samples_into_days(&self.conn, &tx)?));
                continue;
            }
            // The target's migration wrote the single-row tables' first rows.
            tx.execute(&format!("DELETE FROM {}", table.name), ())?;
            rows.push((table.name, copy_table(&self.conn, &tx, table)?));
        }
        // A licence renewed by a later one, now that both are in.
        let renewals: Vec<(i64, i64)> = self
            .conn
            .query_map(
                "SELECT id, renewed_by FROM licences WHERE renewed_by IS NOT NULL ORDER BY id",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        for (id, by) in renewals {
            tx.execute(
                "UPDATE licences SET renewed_by = ?2 WHERE id = ?1",
                (id, by),
            )?;
        }
        // The next sample id follows the copied ones (a PostgreSQL source
        // does not keep `sample_ids`' row: its ids come from a sequence).
        match tx.dialect() {
            Dialect::Sqlite => tx.execute(
                "UPDATE sample_ids SET next = greatest(next, (SELECT coalesce(max(id), 0) + 1 FROM samples))",
                (),
            )?,
            Dialect::Postgres => tx.query_row(
                "SELECT setval('sample_id_seq',
                        greatest((SELECT next FROM sample_ids WHERE id = 1),
                                 (SELECT coalesce(max(id), 0) + 1 FROM samples)), false)",
                (),
                |_| Ok(0),
            )?,
        };
        if tx.dialect() == Dialect::Postgres {
            for table in TABLES {
                if let Some(column) = table.identity {
                    // The next id the target hands out follows the copied ones.
                    tx.query_row(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{0}', '{1}'),
                                    (SELECT coalesce(max({1}), 0) + 1 FROM {0}), false)",
                            table.name, column
                        ),
                        (),
                        |_| Ok(()),
                    )?;
                }
            }
        }
        tx.commit()?;
        target.forget_cached_ids();
        let (bill_lines, accounts) = compare(self, target)?;
        Ok(CopyReport {
            rows,
            bill_lines,
            accounts,
        })
    }

    fn forget_cached_ids(&mut self) {
        self.account_refs.clear();
        self.node_ids.clear();
    }
}

fn count(conn: &Conn, table: &str) -> Result<u64, DbError> {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), (), |r| r.get(0))
}

/// Streams `table` from `source` into `target`, many rows to a statement.
fn copy_table(source: &Conn, target: &Conn, table: &Table) -> Result<u64, DbError> {
    let columns = table.columns.join(", ");
    let select = format!(
        "SELECT {columns} FROM {} ORDER BY {}",
        table.name, table.order_by
    );
    let width = table.columns.len();
    let mut pending: Vec<Owned> = Vec::with_capacity(ROWS_PER_INSERT * width);
    let mut copied = 0u64;
    let flush = |pending: &mut Vec<Owned>| -> Result<(), DbError> {
        if pending.is_empty() {
            return Ok(());
        }
        let rows = pending.len() / width;
        let one = format!("({})", vec!["?"; width].join(", "));
        let sql = format!(
            "INSERT INTO {} ({columns}) VALUES {}",
            table.name,
            vec![one; rows].join(", ")
        );
        let values: Vec<_> = pending.iter().map(ToParam::to_param).collect();
        target.execute(&sql, values)?;
        pending.clear();
        Ok(())
    };
    source.for_each(&select, (), |r| {
        for i in 0..width {
            pending.push(r.get(i)?);
        }
        copied += 1;
        if pending.len() == ROWS_PER_INSERT * width {
            flush(&mut pending)?;
        }
        Ok(())
    })?;
    flush(&mut pending)?;
    Ok(copied)
}

/// Samples a PostgreSQL target files into its node's rows of the day at a time.
const SAMPLES_PER_APPEND: usize = 10_000;

/// Streams the samples of `source` into a PostgreSQL `target`'s rows of a
/// node and day (`sample_days`), with their ids, making the months'
/// partitions as they come; then each node's highest seq.
fn copy_samples_into_days(source: &Conn, target: &Conn) -> Result<u64, DbError> {
    let mut columns: [Vec<Option<i64>>; 7] = Default::default();
    let mut versions: Vec<Option<String>> = Vec::new();
    let mut months: std::collections::BTreeSet<(i32, u32)> = Default::default();
    let mut copied = 0u64;
    let flush = |columns: &mut [Vec<Option<i64>>; 7], versions: &mut Vec<Option<String>>| {
        if versions.is_empty() {
            return Ok(());
        }
        let texts: Vec<Option<&str>> = versions.iter().map(|v| v.as_deref()).collect();
        let [accounts, ats, nodes, ids, cores, received, seqs] = &*columns;
        target.execute(
            &format!(
                "INSERT INTO sample_days AS d (account_ref, day, node_id, at_offsets, ids, cores, received_at_ms, seqs, agent_versions)
             SELECT a, day, n, string_agg(int4send((t - day::BIGINT * 86400000)::INT), ''::BYTEA ORDER BY id), array_agg(id ORDER BY id),
                    string_agg(int2send(c::SMALLINT), ''::BYTEA ORDER BY id), array_agg(r ORDER BY id), array_agg(s ORDER BY id),
                    array_agg(v ORDER BY id)
               FROM (SELECT u.*, floor(t / 86400000.0)::INT AS day
                       FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[], ?4::BIGINT[], ?5::BIGINT[], ?6::BIGINT[], ?7::BIGINT[], ?8::TEXT[])
                            AS u(a, t, n, id, c, r, s, v)) AS x
              GROUP BY a, day, n
             {}",
                super::samples::APPEND_TO_DAY
            ),
            [
                Value::Ints(accounts),
                Value::Ints(ats),
                Value::Ints(nodes),
                Value::Ints(ids),
                Value::Ints(cores),
                Value::Ints(received),
                Value::Ints(seqs),
                Value::Texts(&texts),
            ],
        )?;
        columns.iter_mut().for_each(Vec::clear);
        versions.clear();
        Ok::<(), DbError>(())
    };
    source.for_each(
        "SELECT account_ref, at_ms, node_id, id, cores, received_at_ms, seq, agent_version
           FROM samples ORDER BY id",
        (),
        |r| {
            for (i, column) in columns.iter_mut().enumerate() {
                column.push(r.get(i)?);
            }
            versions.push(r.get(7)?);
            let at = columns[1].last().copied().flatten().unwrap_or_default();
            if let Some(date) = chrono::DateTime::from_timestamp_millis(at).map(|t| t.date_naive())
            {
                if months.insert((
                    chrono::Datelike::year(&date),
                    chrono::Datelike::month(&date),
                )) {
                    target.query_row(
                        "SELECT sample_days_partition(floor(?1::BIGINT / 86400000.0)::INT)::TEXT",
                        [at],
                        |_| Ok(()),
                    )?;
                }
            }
            copied += 1;
            if versions.len() == SAMPLES_PER_APPEND {
                flush(&mut columns, &mut versions)?;
            }
            Ok(())
        },
    )?;
    flush(&mut columns, &mut versions)?;
    target.execute(
        "UPDATE nodes SET seq_hi = hi.seq
           FROM (SELECT node_id, max(q) AS seq FROM sample_days CROSS JOIN LATERAL unnest(seqs) AS q GROUP BY node_id) AS hi
          WHERE hi.node_id = nodes.id",
        (),
    )?;
    Ok(copied)
}

/// Each account's samples in brief: count, sum of cores, first and last `at`.
type SampleDigest = (i64, i64, Option<i64>, Option<i64>);

fn sample_digests(conn: &Conn) -> Result<BTreeMap<String, SampleDigest>, DbError> {
    conn.query_map(
        "SELECT a.id, count(s.at_ms), CAST(coalesce(sum(s.cores), 0) AS BIGINT), min(s.at_ms), max(s.at_ms)
           FROM accounts a LEFT JOIN samples s ON s.account_ref = a.ref
          GROUP BY a.id ORDER BY a.id",
        (),
        |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))),
    )?
    .collect()
}

/// The comparison that must find both stores equal: every bill line, the
/// rows of every table, and each account's samples.
fn compare(source: &mut Store, target: &mut Store) -> Result<(usize, usize), CopyError> {
    // Sorted here: the databases may collate account ids differently.
    let sorted = |mut lines: Vec<BillLine>| {
        lines.sort_by(|a, b| {
            (a.issued_at, &a.account, a.day, a.seq).cmp(&(b.issued_at, &b.account, b.day, b.seq))
        });
        lines
    };
    let (from, to) = (
        sorted(source.reads().bill_lines(None, None)?),
        sorted(target.reads().bill_lines(None, None)?),
    );
    if from != to {
        let first = from
            .iter()
            .zip(&to)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("first difference: {a:?} against {b:?}"))
            .unwrap_or_else(|| format!("{} lines against {}", from.len(), to.len()));
        return Err(CopyError::Differs(format!("the bill lines: {first}")));
    }
    for table in TABLES {
        let (a, b) = (
            count(&source.conn, table.name)?,
            count(&target.conn, table.name)?,
        );
        if a != b {
            return Err(CopyError::Differs(format!(
                "{}: {a} rows in the source, {b} in the target",
                table.name
            )));
        }
    }
    let (a, b) = (sample_digests(&source.conn)?, sample_digests(&target.conn)?);
    if a != b {
        let account = a
            .iter()
            .find(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        return Err(CopyError::Differs(format!(
            "the samples of account {account:?}"
        )));
    }
    Ok((from.len(), a.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;

    #[test]
    fn the_copy_names_every_table_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
        let mut tables: Vec<String> = store
            .conn
            .query_map(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
                (),
                |r| r.get(0),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.retain(|t| !t.starts_with("sqlite_"));
        let mut copied: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        copied.sort_unstable();
        assert_eq!(tables, copied);
    }
}
