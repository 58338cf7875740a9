//! Taking samples in (validate, deduplicate, commit) and reading them back for billing and audit.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction};
use serde_json::Value;
use shared::overage::NodeSample;
use shared::sample::{validate, AgeLimits, Rejection, Unchecked};

use super::{Account, Store, StoreError};

/// A sample as it reached the aggregator, with the identity its token gave it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub account: &'a str,
    pub cluster: &'a str,
    pub node: &'a str,
    pub cores: Option<&'a Value>,
    pub at: Option<&'a str>,
    /// The agent's sequence number for this node; a resend of a stored (node, seq) is a duplicate.
    pub seq: Option<i64>,
    pub agent_version: Option<&'a str>,
    pub received_at: DateTime<Utc>,
}

/// What became of one incoming sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected(Rejection),
}

impl Store {
    /// Validates and stores a batch in one transaction; returns one outcome per
    /// sample, in order, once the accepted ones are committed. A rejected
    /// sample never stops the rest of the batch.
    pub fn ingest(
        &mut self,
        batch: &[Incoming<'_>],
        limits: &AgeLimits,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Resolve accounts first, outside the write transaction.
        let mut refs: HashMap<&str, Option<i64>> = HashMap::new();
        for s in batch {
            if !refs.contains_key(s.account) {
                refs.insert(s.account, self.account_ref(s.account)?);
            }
        }
        let mut new_nodes = Vec::new();
        let result = self.ingest_in_transaction(batch, limits, &refs, &mut new_nodes);
        if result.is_err() {
            // The transaction rolled back: forget the node ids it created.
            for key in new_nodes {
                self.node_ids.remove(&key);
            }
        }
        result
    }

    fn ingest_in_transaction(
        &mut self,
        batch: &[Incoming<'_>],
        limits: &AgeLimits,
        refs: &HashMap<&str, Option<i64>>,
        new_nodes: &mut Vec<(i64, String, String)>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO samples (account_ref, node_id, seq, cores, at_ms, received_at_ms, agent_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT DO NOTHING",
            )?;
            for s in batch {
                let account_ref = refs[s.account];
                let unchecked = Unchecked {
                    account_known: account_ref.is_some(),
                    cluster: s.cluster,
                    node: s.node,
                    cores: s.cores,
                    at: s.at,
                };
                let checked = match validate(&unchecked, s.received_at, limits) {
                    Ok(c) => c,
                    Err(reason) => {
                        outcomes.push(Outcome::Rejected(reason));
                        continue;
                    }
                };
                let account_ref = account_ref.expect("validated");
                let key = (account_ref, s.cluster.to_string(), s.node.to_string());
                let node_id = match self.node_ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = node_id(&tx, &key)?;
                        self.node_ids.insert(key.clone(), id);
                        new_nodes.push(key);
                        id
                    }
                };
                let inserted = insert.execute((
                    account_ref,
                    node_id,
                    s.seq,
                    checked.cores,
                    checked.at.timestamp_millis(),
                    s.received_at.timestamp_millis(),
                    s.agent_version,
                ))?;
                outcomes.push(if inserted == 1 {
                    Outcome::Accepted
                } else {
                    Outcome::Duplicate
                });
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// The samples billing needs: the account's, with `at` in `[from_ms, to_ms)`,
    /// received at or before `received_by`.
    pub fn billing_samples(
        &self,
        account: &Account,
        from_ms: i64,
        to_ms: i64,
        received_by: DateTime<Utc>,
    ) -> Result<Vec<NodeSample>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT node_id, at_ms, cores FROM samples
              WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3 AND received_at_ms <= ?4",
        )?;
        let rows = stmt.query_map(
            (
                account.reference,
                from_ms,
                to_ms,
                received_by.timestamp_millis(),
            ),
            |r| {
                Ok(NodeSample {
                    node: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get(1)?,
                    cores: r.get(2)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The highest sample id stored so far (0 when there is none).
    pub fn max_sample_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM samples", [], |r| r.get(0))?)
    }

    /// For each account with samples stored after id `after` up to id `upto`,
    /// the earliest `at` among them, in Unix milliseconds.
    pub fn fresh_samples_earliest_at(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT account_ref, min(at_ms) FROM samples WHERE id > ?1 AND id <= ?2 GROUP BY account_ref",
        )?;
        let rows = stmt.query_map((after, upto), |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn node_id(tx: &Transaction<'_>, key: &(i64, String, String)) -> Result<i64, StoreError> {
    let (account_ref, cluster, name) = key;
    let found: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM nodes WHERE account_ref = ?1 AND cluster = ?2 AND name = ?3",
        )?
        .query_row((account_ref, cluster, name), |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO nodes (account_ref, cluster, name) VALUES (?1, ?2, ?3)")?
        .execute((account_ref, cluster, name))?;
    Ok(tx.last_insert_rowid())
}
