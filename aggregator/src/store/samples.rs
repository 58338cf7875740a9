//! Taking samples in (validate, deduplicate, commit) and reading them back for billing and audit.

use rustc_hash::FxHashMap;

use super::db::{Conn, Dialect, OptionalExtension, Value};
use super::{Billing, Ingest, Reads};
use chrono::{DateTime, Utc};
use shared::overage::NodeSample;
use shared::sample::{validate, AgeLimits, Rejection, Unchecked};

use super::pages::{one_more, Listed, SampleKey};
use super::{Account, Store, StoreError};

/// A sample as it reached the aggregator, with the identity its token gave it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub account: &'a str,
    pub cluster: &'a str,
    pub node: &'a str,
    /// The cores, if they parsed as a whole number in range (`shared::sample::parse_cores`).
    pub cores: Option<u32>,
    /// The instant, if it parsed (`shared::sample::parse_instant`).
    pub at: Option<DateTime<Utc>>,
    /// The agent's sequence number for this node; a resend of a stored
    /// (node, seq) is a duplicate when its cores and `at` are the stored
    /// ones, else rejected as a conflicting resend.
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

/// A sample that passed every check, on its way into the store.
struct Checked<'a> {
    /// Where its outcome is in the batch's.
    index: usize,
    account_ref: i64,
    cluster: &'a str,
    node: &'a str,
    at_ms: i64,
    cores: u32,
    received_at_ms: i64,
    seq: Option<i64>,
    agent_version: Option<&'a str>,
}

/// A refused sample of a known account, recorded for the report's
/// completeness section.
struct Refused {
    account_ref: i64,
    at_ms: i64,
    reason: Rejection,
    received_at_ms: i64,
}

/// A node as ingest names it: (account, cluster, node name).
type NodeKey<'a> = (i64, &'a str, &'a str);

/// The batch sorted into what is stored and what is refused; the outcomes
/// of the stored ones say `Accepted` until their insert tells a resend.
struct Sorted<'a> {
    outcomes: Vec<Outcome>,
    checked: Vec<Checked<'a>>,
    refused: Vec<Refused>,
}

/// SPEC section 3's checks and the account's stopped periods, in order; a
/// refused sample never stops the rest.
fn check_batch<'a>(
    tx: &Conn,
    batch: &[Incoming<'a>],
    limits: &AgeLimits,
    refs: &FxHashMap<&str, Option<i64>>,
    stopped: &FxHashMap<i64, Vec<(i64, i64)>>,
) -> Result<Sorted<'a>, StoreError> {
    let mut sorted = Sorted {
        outcomes: Vec::with_capacity(batch.len()),
        checked: Vec::with_capacity(batch.len()),
        refused: Vec::new(),
    };
    for s in batch {
        let account_ref = refs[s.account];
        let unchecked = Unchecked {
            account_known: account_ref.is_some(),
            cluster: s.cluster,
            node: s.node,
            cores: s.cores,
            at: s.at,
        };
        let validated = match (validate(&unchecked, s.received_at, limits), account_ref) {
            // A node stored before node names had a domain is still
            // metered under its old name: the rest of the checks apply.
            (Err(Rejection::InvalidNode), Some(r)) if node_stored(tx, r, s.cluster, s.node)? => {
                let renamed = Unchecked {
                    node: "stored-node",
                    ..unchecked
                };
                validate(&renamed, s.received_at, limits)
            }
            (validated, _) => validated,
        };
        let checked = validated.and_then(|c| {
            let at = c.at.timestamp_millis();
            let in_stop = account_ref
                .and_then(|r| stopped.get(&r))
                .is_some_and(|p| p.iter().any(|&(from, to)| from <= at && at < to));
            if in_stop {
                Err(Rejection::ServiceStopped)
            } else {
                Ok(c)
            }
        });
        match (checked, account_ref) {
            (Ok(c), Some(account_ref)) => {
                sorted.checked.push(Checked {
                    index: sorted.outcomes.len(),
                    account_ref,
                    cluster: s.cluster,
                    node: s.node,
                    at_ms: c.at.timestamp_millis(),
                    cores: c.cores,
                    received_at_ms: s.received_at.timestamp_millis(),
                    seq: s.seq,
                    agent_version: s.agent_version,
                });
                sorted.outcomes.push(Outcome::Accepted);
            }
            (Ok(_), None) => unreachable!("a sample of an unknown account fails validation"),
            (Err(reason), account_ref) => {
                if let Some(account_ref) = account_ref {
                    sorted.refused.push(Refused {
                        account_ref,
                        at_ms: s.at.unwrap_or(s.received_at).timestamp_millis(),
                        reason,
                        received_at_ms: s.received_at.timestamp_millis(),
                    });
                }
                sorted.outcomes.push(Outcome::Rejected(reason));
            }
        }
    }
    Ok(sorted)
}

impl Store {
    /// The batch checked and stored in one transaction: SQLite's one
    /// writer a statement at a time, PostgreSQL's replicas side by side
    /// with a handful of set-based statements (`store_set_based`).
    fn ingest_in_transaction(
        &mut self,
        batch: &[Incoming<'_>],
        limits: &AgeLimits,
        refs: &FxHashMap<&str, Option<i64>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let keeps_last_seen = self.keeps_last_seen;
        let Store { conn, node_ids, .. } = self;
        let tx = conn.ingest_transaction()?;
        // The periods while each account's service was stopped (SPEC
        // section 8), read under the lock: whoever records a stop or a
        // deletion holds it alone, so none lands while this commits.
        let mut known: Vec<i64> = refs.values().flatten().copied().collect();
        known.sort_unstable();
        let stopped = Store::stopped_periods_of_many(&tx, &known)?;
        let mut sorted = check_batch(&tx, batch, limits, refs, &stopped)?;
        // The nodes this transaction found or made, cached once it commits.
        let mut found: FxHashMap<NodeKey<'_>, i64> = FxHashMap::default();
        let cached = |key: &NodeKey<'_>| {
            node_ids
                .get(&key.0)
                .and_then(|c| c.get(key.1))
                .and_then(|n| n.get(key.2))
                .copied()
        };
        let latest = match tx.dialect() {
            Dialect::Sqlite => store_one_by_one(&tx, &mut sorted, &cached, &mut found)?,
            Dialect::Postgres => {
                store_set_based(&tx, &mut sorted, &cached, &mut found, keeps_last_seen)?
            }
        };
        // The earliest `at` accepted per account: billing recomputes from there.
        let mut earliest: Vec<(i64, i64)> = Vec::new();
        for c in &sorted.checked {
            earliest.push((c.account_ref, c.at_ms));
        }
        earliest.sort_unstable();
        earliest.dedup_by_key(|(account_ref, _)| *account_ref);
        super::accounts::mark_many_for_recompute(&tx, &earliest)?;
        if keeps_last_seen {
            keep_last_seen(&tx, latest)?;
        }
        tx.commit()?;
        for ((account_ref, cluster, node), id) in found {
            node_ids
                .entry(account_ref)
                .or_default()
                .entry(cluster.to_string())
                .or_default()
                .insert(node.to_string(), id);
        }
        Ok(sorted.outcomes)
    }
}

/// Each node's latest accepted `at`, by node id, ascending: its row says
/// when it was last seen.
type LatestSeen = Vec<(i64, i64)>;

fn latest_seen(mut pairs: Vec<(i64, i64)>) -> LatestSeen {
    // Latest first within a node, so that dedup keeps it.
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    pairs.dedup_by_key(|(node, _)| *node);
    pairs
}

/// Moves each node's last seen forward, never back.
fn keep_last_seen(tx: &Conn, latest: LatestSeen) -> Result<(), StoreError> {
    match tx.dialect() {
        Dialect::Sqlite => {
            let mut seen = tx.prepare_cached(
                "UPDATE nodes SET last_seen_ms = ?2
                  WHERE id = ?1 AND (last_seen_ms IS NULL OR last_seen_ms < ?2)",
            )?;
            for (node, at_ms) in latest {
                seen.execute((node, at_ms))?;
            }
        }
        Dialect::Postgres if !latest.is_empty() => {
            let (nodes, ats): (Vec<_>, Vec<_>) =
                latest.into_iter().map(|(n, a)| (Some(n), Some(a))).unzip();
            tx.prepare_cached(
                "UPDATE nodes SET last_seen_ms = u.at
                   FROM unnest(?1::BIGINT[], ?2::BIGINT[]) AS u(id, at)
                  WHERE nodes.id = u.id AND (nodes.last_seen_ms IS NULL OR nodes.last_seen_ms < u.at)",
            )?
            .execute([Value::Ints(&nodes), Value::Ints(&ats)])?;
        }
        Dialect::Postgres => {}
    }
    Ok(())
}

/// SQLite: each new node looked up and inserted, the samples many to a
/// statement, each rejection a row.
fn store_one_by_one<'a>(
    tx: &Conn,
    sorted: &mut Sorted<'a>,
    cached: &impl Fn(&NodeKey<'_>) -> Option<i64>,
    found: &mut FxHashMap<NodeKey<'a>, i64>,
) -> Result<LatestSeen, StoreError> {
    let mut next_id: i64 =
        tx.query_row("SELECT next FROM sample_ids WHERE id = 1", (), |r| r.get(0))?;
    let mut latest = Vec::with_capacity(sorted.checked.len());
    {
        let mut insert_one = tx.prepare_cached(&insert_sql(1))?;
        let mut unsequenced: Vec<Row<'_>> = Vec::with_capacity(ROWS_PER_INSERT);
        // Rows with a seq, and where their outcome is: many to a
        // statement too, the ones it did not insert being resends.
        let mut sequenced: Vec<(Row<'_>, usize)> = Vec::with_capacity(ROWS_PER_INSERT);
        for c in &sorted.checked {
            let key = (c.account_ref, c.cluster, c.node);
            let node_id = match cached(&key).or_else(|| found.get(&key).copied()) {
                Some(id) => id,
                None => {
                    let id = node_id(tx, c.account_ref, c.cluster, c.node)?;
                    found.insert(key, id);
                    id
                }
            };
            latest.push((node_id, c.at_ms));
            let row = Row {
                account_ref: c.account_ref,
                at_ms: c.at_ms,
                node_id,
                id: next_id,
                cores: c.cores,
                received_at_ms: c.received_at_ms,
                seq: c.seq,
                agent_version: c.agent_version,
            };
            next_id += 1;
            if row.seq.is_none() {
                // Without a seq there is nothing to be a duplicate of: such
                // rows go in many to a statement, which is several times faster.
                unsequenced.push(row);
                if unsequenced.len() == ROWS_PER_INSERT {
                    insert_many(tx, &unsequenced)?;
                    unsequenced.clear();
                }
                continue;
            }
            sequenced.push((row, c.index));
            if sequenced.len() == ROWS_PER_INSERT {
                insert_sequenced(tx, &sequenced, &mut sorted.outcomes, &mut sorted.refused)?;
                sequenced.clear();
            }
        }
        if !sequenced.is_empty() {
            insert_sequenced(tx, &sequenced, &mut sorted.outcomes, &mut sorted.refused)?;
        }
        for row in &unsequenced {
            insert_one.execute(row.params())?;
        }
    }
    // A duplicate leaves a gap in the ids; they only need to increase.
    tx.prepare_cached("UPDATE sample_ids SET next = ?1 WHERE id = 1")?
        .execute([next_id])?;
    let mut record = tx.prepare_cached(
        "INSERT INTO rejections (account_ref, at_ms, reason, received_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in &sorted.refused {
        record.execute((r.account_ref, r.at_ms, r.reason.as_str(), r.received_at_ms))?;
    }
    Ok(latest_seen(latest))
}

/// PostgreSQL: a few statements for the whole batch, whatever its size:
/// new nodes inserted (with their last seen and highest seq, so that their
/// rows are written once) and the others read back; the nodes' rows locked
/// and moved on (last seen, highest seq), which tells the samples that
/// cannot be resends; the stored samples of any that may be read; the new
/// samples appended to their node's row of the day (`sample_days`), with
/// ids from `sample_id_seq`; the rejections inserted. Rows that another
/// replica's transaction may also write (nodes, and through them their
/// samples' rows) are locked in key order, so two transactions wait for
/// each other in one direction only.
fn store_set_based<'a>(
    tx: &Conn,
    sorted: &mut Sorted<'a>,
    cached: &impl Fn(&NodeKey<'_>) -> Option<i64>,
    found: &mut FxHashMap<NodeKey<'a>, i64>,
    keeps_last_seen: bool,
) -> Result<LatestSeen, StoreError> {
    // Each node's highest seq in the batch.
    let mut seq_hi: FxHashMap<NodeKey<'a>, i64> = FxHashMap::default();
    for c in &sorted.checked {
        if let Some(seq) = c.seq {
            let hi = seq_hi
                .entry((c.account_ref, c.cluster, c.node))
                .or_insert(seq);
            *hi = (*hi).max(seq);
        }
    }
    // The nodes not cached, each with its latest `at` in the batch.
    let mut unknown: Vec<(NodeKey<'a>, i64)> = sorted
        .checked
        .iter()
        .map(|c| ((c.account_ref, c.cluster, c.node), c.at_ms))
        .filter(|(key, _)| cached(key).is_none())
        .collect();
    unknown.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    unknown.dedup_by_key(|(key, _)| *key);
    // Nodes this transaction inserted: their last seen and highest seq are
    // written already, and none of their samples can be a resend.
    let mut fresh: rustc_hash::FxHashSet<i64> = rustc_hash::FxHashSet::default();
    if !unknown.is_empty() {
        let (accounts, clusters, names) = node_columns(unknown.iter().map(|(key, _)| key));
        let seen: Vec<Option<i64>> = unknown
            .iter()
            .map(|k| keeps_last_seen.then_some(k.1))
            .collect();
        let his: Vec<Option<i64>> = unknown.iter().map(|k| seq_hi.get(&k.0).copied()).collect();
        let inserted = tx
            .prepare_cached(
                "INSERT INTO nodes (account_ref, cluster, name, last_seen_ms, seq_hi)
                 SELECT a, c, m, s, q FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::TEXT[], ?4::BIGINT[], ?5::BIGINT[])
                     AS u(a, c, m, s, q)
                 ON CONFLICT DO NOTHING
                 RETURNING id, account_ref, cluster, name",
            )?
            .query_map(
                [
                    Value::Ints(&accounts),
                    Value::Texts(&clusters),
                    Value::Texts(&names),
                    Value::Ints(&seen),
                    Value::Ints(&his),
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        (
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ),
                    ))
                },
            )?;
        let mut made: FxHashMap<(i64, String, String), i64> = FxHashMap::default();
        for row in inserted {
            let (id, key) = row?;
            made.insert(key, id);
        }
        // Those another transaction had inserted are read back.
        let mut rest: Vec<NodeKey<'a>> = Vec::new();
        for &(key @ (account_ref, cluster, node), _) in &unknown {
            match made.get(&(account_ref, cluster.to_string(), node.to_string())) {
                Some(&id) => {
                    fresh.insert(id);
                    found.insert(key, id);
                }
                None => rest.push(key),
            }
        }
        if !rest.is_empty() {
            let (accounts, clusters, names) = node_columns(rest.iter());
            let rows = tx
                .prepare_cached(
                    "SELECT n.id, u.i FROM unnest(?1::BIGINT[], ?2::TEXT[], ?3::TEXT[]) WITH ORDINALITY AS u(a, c, m, i)
                       JOIN nodes n ON n.account_ref = u.a AND n.cluster = u.c AND n.name = u.m",
                )?
                .query_map(
                    [
                        Value::Ints(&accounts),
                        Value::Texts(&clusters),
                        Value::Texts(&names),
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
            for row in rows {
                let (id, ordinal) = row?;
                found.insert(rest[ordinal as usize - 1], id);
            }
        }
    }
    let node_of = |c: &Checked<'_>| -> Result<i64, StoreError> {
        let key = (c.account_ref, c.cluster, c.node);
        cached(&key)
            .or_else(|| found.get(&key).copied())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "node {:?}/{:?} of account {} was neither inserted nor found",
                    c.cluster, c.node, c.account_ref
                ))
            })
    };
    // What may be stored: every sample without a seq, and the first of
    // each (node, seq); a later one of the same (node, seq) is compared
    // with the first, or with what is stored.
    let mut rows: Vec<(i64, &Checked<'a>)> = Vec::with_capacity(sorted.checked.len());
    let mut echoes: Vec<(i64, &Checked<'a>)> = Vec::new();
    let mut firsts: rustc_hash::FxHashSet<(i64, i64)> = rustc_hash::FxHashSet::default();
    let mut moved: FxHashMap<i64, (Option<i64>, Option<i64>)> = FxHashMap::default();
    for c in &sorted.checked {
        let node = node_of(c)?;
        if !fresh.contains(&node) {
            let (seen, hi) = moved.entry(node).or_default();
            if keeps_last_seen {
                *seen = (*seen).max(Some(c.at_ms));
            }
            *hi = (*hi).max(c.seq);
        }
        match c.seq {
            Some(seq) if !firsts.insert((node, seq)) => echoes.push((node, c)),
            _ => rows.push((node, c)),
        }
    }
    // The nodes' rows locked in id order and moved on; what each said was
    // its highest seq before tells which samples may be resends.
    let before = move_nodes_on(tx, moved)?;
    let maybe_resent: Vec<(i64, &Checked<'a>)> = rows
        .iter()
        .filter(|(node, c)| {
            c.seq
                .zip(before.get(node).copied().flatten())
                .is_some_and(|(seq, hi)| seq <= hi)
        })
        .copied()
        .collect();
    let mut stored = stored_days(tx, &maybe_resent)?;
    let mut new_rows: Vec<(i64, &Checked<'a>)> = Vec::with_capacity(rows.len());
    let mut resends: Vec<(i64, &Checked<'a>)> = Vec::new();
    for (node, c) in rows {
        match c.seq {
            Some(seq) if stored.contains_key(&(node, seq)) => resends.push((node, c)),
            Some(seq) => {
                stored.insert((node, seq), (c.at_ms, i64::from(c.cores)));
                new_rows.push((node, c));
            }
            None => new_rows.push((node, c)),
        }
    }
    append_to_days(tx, &new_rows)?;
    for (node, c) in resends.iter().chain(echoes.iter()) {
        let key = (*node, c.seq.expect("a resend has a seq"));
        let &(at_ms, cores) = stored
            .get(&key)
            .expect("every resend's (node, seq) is stored or being stored");
        sorted.outcomes[c.index] = if (at_ms, cores) == (c.at_ms, i64::from(c.cores)) {
            Outcome::Duplicate
        } else {
            let reason = Rejection::ConflictingResend;
            sorted.refused.push(Refused {
                account_ref: c.account_ref,
                at_ms: c.at_ms,
                reason,
                received_at_ms: c.received_at_ms,
            });
            Outcome::Rejected(reason)
        };
    }
    if !sorted.refused.is_empty() {
        let mut accounts = Vec::with_capacity(sorted.refused.len());
        let mut ats = Vec::with_capacity(sorted.refused.len());
        let mut reasons = Vec::with_capacity(sorted.refused.len());
        let mut received = Vec::with_capacity(sorted.refused.len());
        for r in &sorted.refused {
            accounts.push(Some(r.account_ref));
            ats.push(Some(r.at_ms));
            reasons.push(Some(r.reason.as_str()));
            received.push(Some(r.received_at_ms));
        }
        tx.prepare_cached(
            "INSERT INTO rejections (account_ref, at_ms, reason, received_at_ms)
             SELECT * FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::TEXT[], ?4::BIGINT[])",
        )?
        .execute([
            Value::Ints(&accounts),
            Value::Ints(&ats),
            Value::Texts(&reasons),
            Value::Ints(&received),
        ])?;
    }
    // The nodes' last seen moved on with their highest seq, above.
    Ok(Vec::new())
}

/// Nodes' keys as the arrays of a set-based statement: accounts,
/// clusters, names.
type NodeColumns<'a> = (Vec<Option<i64>>, Vec<Option<&'a str>>, Vec<Option<&'a str>>);

fn node_columns<'k, 'a: 'k>(keys: impl Iterator<Item = &'k NodeKey<'a>>) -> NodeColumns<'a> {
    let mut columns: NodeColumns<'a> = (Vec::new(), Vec::new(), Vec::new());
    for &(account_ref, cluster, name) in keys {
        columns.0.push(Some(account_ref));
        columns.1.push(Some(cluster));
        columns.2.push(Some(name));
    }
    columns
}

/// PostgreSQL files a sample under its UTC day (days since 1970-01-01) in
/// `sample_days`, its `at` as milliseconds into that day.
pub(super) const DAY_MS: i64 = 86_400_000;

/// The UTC day `at_ms` is filed under.
pub(super) fn day_of_ms(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS)
}

/// The start of UTC day `day`, or `from_ms` when that is later (the day is
/// `from_ms`'s own): where [`Billing::first_sample_day_from`] says samples
/// found on `day` begin.
fn day_start_from(day: i64, from_ms: i64) -> i64 {
    (day * DAY_MS).max(from_ms)
}

/// Nodes moving on: by node id, the latest `at` (when ingest keeps it) and
/// the highest seq of the batch.
type MovedOn = FxHashMap<i64, (Option<i64>, Option<i64>)>;

/// Locks the nodes' rows in id order and moves each one's last seen and
/// highest seq on, never back; returns each node's highest seq before.
/// Until this transaction ends, no other stores samples of these nodes.
fn move_nodes_on(tx: &Conn, moved: MovedOn) -> Result<FxHashMap<i64, Option<i64>>, StoreError> {
    let mut moved: Vec<_> = moved
        .into_iter()
        .filter(|(_, (seen, hi))| seen.is_some() || hi.is_some())
        .collect();
    if moved.is_empty() {
        return Ok(FxHashMap::default());
    }
    moved.sort_unstable_by_key(|(id, _)| *id);
    let ids: Vec<Option<i64>> = moved.iter().map(|(id, _)| Some(*id)).collect();
    let seen: Vec<Option<i64>> = moved.iter().map(|(_, (seen, _))| *seen).collect();
    let his: Vec<Option<i64>> = moved.iter().map(|(_, (_, hi))| *hi).collect();
    let rows = tx
        .prepare_cached(
            "WITH old AS (SELECT id, seq_hi FROM nodes WHERE id = ANY(?1::BIGINT[]) ORDER BY id FOR UPDATE)
             UPDATE nodes SET last_seen_ms = greatest(nodes.last_seen_ms, u.seen),
                              seq_hi = greatest(nodes.seq_hi, u.hi)
               FROM old JOIN unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[]) AS u(id, seen, hi) ON u.id = old.id
              WHERE nodes.id = old.id
             RETURNING nodes.id, old.seq_hi",
        )?
        .query_map(
            [Value::Ints(&ids), Value::Ints(&seen), Value::Ints(&his)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored `at_ms` and cores of the samples' (node, seq), where stored:
/// first under the day each one names (a resend's), then under any day of
/// its node (a conflicting resend's).
fn stored_days(tx: &Conn, samples: &[(i64, &Checked<'_>)]) -> Result<StoredBySeq, StoreError> {
    let mut stored = StoredBySeq::default();
    if samples.is_empty() {
        return Ok(stored);
    }
    type Found = ((i64, i64), (i64, i64));
    let found = |r: &super::db::Row<'_>| -> Result<Found, super::db::DbError> {
        let day: i64 = r.get(2)?;
        let offset: i64 = r.get(3)?;
        Ok(((r.get(0)?, r.get(1)?), (day * DAY_MS + offset, r.get(4)?)))
    };
    let accounts: Vec<Option<i64>> = samples.iter().map(|(_, c)| Some(c.account_ref)).collect();
    let days: Vec<Option<i64>> = samples
        .iter()
        .map(|(_, c)| Some(day_of_ms(c.at_ms)))
        .collect();
    let nodes: Vec<Option<i64>> = samples.iter().map(|(node, _)| Some(*node)).collect();
    let seqs: Vec<Option<i64>> = samples.iter().map(|(_, c)| c.seq).collect();
    let rows = tx
        .prepare_cached(
            "SELECT u.n, u.q, d.day, x.a, x.c
               FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[], ?4::BIGINT[]) AS u(acc, day, n, q)
               JOIN sample_days d ON d.account_ref = u.acc AND d.day = u.day AND d.node_id = u.n
                                 AND d.seqs @> ARRAY[u.q]
              CROSS JOIN LATERAL unnest(d.seqs, sample_days_ints(d.at_offsets, 4), sample_days_ints(d.cores, 2)) AS x(q, a, c)
              WHERE x.q = u.q",
        )?
        .query_map(
            [
                Value::Ints(&accounts),
                Value::Ints(&days),
                Value::Ints(&nodes),
                Value::Ints(&seqs),
            ],
            found,
        )?;
    for row in rows {
        let (key, value) = row?;
        stored.entry(key).or_insert(value);
    }
    let (nodes, seqs): (Vec<Option<i64>>, Vec<Option<i64>>) = samples
        .iter()
        .filter_map(|(node, c)| c.seq.map(|seq| (*node, seq)))
        .filter(|key| !stored.contains_key(key))
        .map(|(node, seq)| (Some(node), Some(seq)))
        .unzip();
    if nodes.is_empty() {
        return Ok(stored);
    }
    let rows = tx
        .prepare_cached(
            "SELECT u.n, u.q, d.day, x.a, x.c
               FROM unnest(?1::BIGINT[], ?2::BIGINT[]) AS u(n, q)
               JOIN sample_days d ON d.node_id = u.n AND d.seqs @> ARRAY[u.q]
              CROSS JOIN LATERAL unnest(d.seqs, sample_days_ints(d.at_offsets, 4), sample_days_ints(d.cores, 2)) AS x(q, a, c)
              WHERE x.q = u.q
              ORDER BY d.day",
        )?
        .query_map([Value::Ints(&nodes), Value::Ints(&seqs)], found)?;
    for row in rows {
        let (key, value) = row?;
        stored.entry(key).or_insert(value);
    }
    Ok(stored)
}

/// What an insert into `sample_days` does with a row that is there: the
/// new samples go after its own, every array in step.
pub(super) const APPEND_TO_DAY: &str = "ON CONFLICT (account_ref, day, node_id) DO UPDATE SET
            at_offsets = d.at_offsets || excluded.at_offsets,
            ids = d.ids || excluded.ids,
            cores = d.cores || excluded.cores,
            received_at_ms = d.received_at_ms || excluded.received_at_ms,
            seqs = d.seqs || excluded.seqs,
            agent_versions = d.agent_versions || excluded.agent_versions";

/// Appends the samples to their node's row of their day, making the row
/// where there is none; the rows in key order.
fn append_to_days(tx: &Conn, samples: &[(i64, &Checked<'_>)]) -> Result<(), StoreError> {
    if samples.is_empty() {
        return Ok(());
    }
    let n = samples.len();
    let mut columns: [Vec<Option<i64>>; 7] = std::array::from_fn(|_| Vec::with_capacity(n));
    let mut versions: Vec<Option<&str>> = Vec::with_capacity(n);
    for (node, c) in samples {
        let day = day_of_ms(c.at_ms);
        for (column, value) in columns.iter_mut().zip([
            Some(c.account_ref),
            Some(day),
            Some(*node),
            Some(c.at_ms - day * DAY_MS),
            Some(i64::from(c.cores)),
            Some(c.received_at_ms),
            c.seq,
        ]) {
            column.push(value);
        }
        versions.push(c.agent_version);
    }
    let [accounts, days, nodes, offsets, cores, received, seqs] = &columns;
    tx.prepare_cached(&format!(
        "INSERT INTO sample_days AS d (account_ref, day, node_id, at_offsets, ids, cores, received_at_ms, seqs, agent_versions)
         SELECT a, day::INT, n, string_agg(int4send(t::INT), ''::BYTEA ORDER BY i), array_agg(id ORDER BY i),
                string_agg(int2send(c::SMALLINT), ''::BYTEA ORDER BY i),
                array_agg(r ORDER BY i), array_agg(s ORDER BY i), array_agg(v ORDER BY i)
           FROM (SELECT u.*, nextval('sample_id_seq') AS id
                   FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[], ?4::BIGINT[], ?5::BIGINT[], ?6::BIGINT[], ?7::BIGINT[], ?8::TEXT[])
                        WITH ORDINALITY AS u(a, day, n, t, c, r, s, v, i)) AS x
          GROUP BY a, day, n
          ORDER BY a, day, n
         {APPEND_TO_DAY}"
    ))?
    .execute([
        Value::Ints(accounts),
        Value::Ints(days),
        Value::Ints(nodes),
        Value::Ints(offsets),
        Value::Ints(cores),
        Value::Ints(received),
        Value::Ints(seqs),
        Value::Texts(&versions),
    ])?;
    Ok(())
}

/// The account's samples with `at` in `[from_ms, to_ms)`, whenever received:
/// a billing run counts everything stored when it takes the write lock.
pub(super) fn samples_in(
    conn: &Conn,
    account_ref: i64,
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<NodeSample>, StoreError> {
    if conn.dialect() == Dialect::Postgres {
        let mut out = Vec::new();
        samples_of_windows(conn, &[(account_ref, (from_ms, to_ms))], |_, s| out.push(s))?;
        return Ok(out);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT node_id, at_ms, cores FROM samples WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3",
    )?;
    let rows = stmt.query_map((account_ref, from_ms, to_ms), |r| {
        Ok(NodeSample {
            node: r.get::<_, i64>(0)? as u64,
            at_ms: r.get(1)?,
            cores: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// PostgreSQL: each window's samples (an account's, with `at` in
/// `[from_ms, to_ms)`) through `f` with the window's position, streamed, a
/// row of `sample_days` at a time: one lateral scan of each account's days.
pub(super) fn samples_of_windows(
    conn: &Conn,
    windows: &[(i64, (i64, i64))],
    mut f: impl FnMut(usize, NodeSample),
) -> Result<(), StoreError> {
    let refs: Vec<Option<i64>> = windows.iter().map(|(r, _)| Some(*r)).collect();
    let from: Vec<Option<i64>> = windows.iter().map(|(_, w)| Some(day_of_ms(w.0))).collect();
    let to: Vec<Option<i64>> = windows
        .iter()
        .map(|(_, w)| Some(day_of_ms(w.1.saturating_sub(1))))
        .collect();
    conn.for_each(
        "SELECT w.i, d.node_id, d.day, d.at_offsets, d.cores
           FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[]) WITH ORDINALITY AS w(ref, from_day, to_day, i)
          CROSS JOIN LATERAL (SELECT node_id, day, at_offsets, cores FROM sample_days
                               WHERE account_ref = w.ref AND day >= w.from_day AND day <= w.to_day) AS d",
        (Value::Ints(&refs), Value::Ints(&from), Value::Ints(&to)),
        |r| {
            let i = r.get::<_, i64>(0)? as usize - 1;
            let (from_ms, to_ms) = windows[i].1;
            let node = r.get::<_, i64>(1)? as u64;
            let start = r.get::<_, i64>(2)? * DAY_MS;
            let offsets: Vec<u8> = r.get(3)?;
            let cores: Vec<u8> = r.get(4)?;
            let offsets = offsets
                .chunks_exact(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let cores = cores
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
            for (offset, cores) in offsets.zip(cores) {
                let at_ms = start + i64::from(offset);
                if (from_ms..to_ms).contains(&at_ms) {
                    f(
                        i,
                        NodeSample {
                            node,
                            at_ms,
                            cores: u32::from(cores),
                        },
                    );
                }
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// PostgreSQL: for each (account, instant), [`Billing::first_sample_day_from`]:
/// the least day at or after the instant's own holding a sample at or after
/// it, found on the key's index (a row of the instant's own day is looked
/// into until one has such a sample), never a sample's own instant.
pub(super) fn first_sample_days_from(
    conn: &Conn,
    after: &[(i64, i64)],
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut out = vec![None; after.len()];
    if after.is_empty() {
        return Ok(out);
    }
    let refs: Vec<Option<i64>> = after.iter().map(|a| Some(a.0)).collect();
    let from: Vec<Option<i64>> = after.iter().map(|a| Some(a.1)).collect();
    let days: Vec<Option<i64>> = after.iter().map(|a| Some(day_of_ms(a.1))).collect();
    let mut rows = conn
        .prepare_cached(
            "SELECT w.i,
                    (SELECT min(e.day) FROM sample_days e
                      WHERE e.account_ref = w.ref AND e.day >= w.from_day
                        AND (e.day > w.from_day
                             AND length(e.at_offsets) > 0
                             OR EXISTS (SELECT 1 FROM unnest(sample_days_ints(e.at_offsets, 4)) AS y(a)
                                         WHERE e.day::BIGINT * 86400000 + y.a >= w.from_ms)))
               FROM unnest(?1::BIGINT[], ?2::BIGINT[], ?3::BIGINT[]) WITH ORDINALITY AS w(ref, from_ms, from_day, i)",
        )?
        .query((Value::Ints(&refs), Value::Ints(&from), Value::Ints(&days)))?;
    while let Some(r) = rows.next()? {
        let i: i64 = r.get(0)?;
        let from_ms = after[i as usize - 1].1;
        out[i as usize - 1] = r
            .get::<_, Option<i64>>(1)?
            .map(|day| day_start_from(day, from_ms));
    }
    Ok(out)
}

/// Sample rows written by one multi-row INSERT.
const ROWS_PER_INSERT: usize = 64;

/// One row of the samples table.
struct Row<'a> {
    account_ref: i64,
    at_ms: i64,
    node_id: i64,
    id: i64,
    cores: u32,
    received_at_ms: i64,
    seq: Option<i64>,
    agent_version: Option<&'a str>,
}

impl Row<'_> {
    fn params(&self) -> impl super::db::Params + '_ {
        (
            self.account_ref,
            self.at_ms,
            self.node_id,
            self.id,
            self.cores,
            self.received_at_ms,
            self.seq,
            self.agent_version,
        )
    }
}

fn insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO samples (account_ref, at_ms, node_id, id, cores, received_at_ms, seq, agent_version)
         VALUES {values} ON CONFLICT DO NOTHING"
    )
}

fn insert_many(tx: &Conn, rows: &[Row<'_>]) -> Result<(), StoreError> {
    tx.execute(&insert_sql(rows.len()), values_of(rows.iter()))?;
    Ok(())
}

/// Inserts rows that carry a seq in one statement. A row it does not insert
/// has its node and seq stored already (before, or earlier in the same
/// statement): it is a duplicate when the stored sample has the same cores
/// and `at`, else a conflicting resend, rejected and recorded as such; the
/// stored sample is never changed. Only when some row was not inserted does
/// one more statement read the stored samples of those rows.
fn insert_sequenced(
    tx: &Conn,
    rows: &[(Row<'_>, usize)],
    outcomes: &mut [Outcome],
    refused: &mut Vec<Refused>,
) -> Result<(), StoreError> {
    let sql = format!("{} RETURNING id", insert_sql(rows.len()));
    let inserted: rustc_hash::FxHashSet<i64> = tx
        .query_map(&sql, values_of(rows.iter().map(|(r, _)| r)), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if inserted.len() == rows.len() {
        return Ok(());
    }
    let resent: Vec<&(Row<'_>, usize)> = rows
        .iter()
        .filter(|(row, _)| !inserted.contains(&row.id))
        .collect();
    let stored = stored_by_node_seq(tx, resent.iter().map(|(row, _)| row))?;
    for (row, at) in resent {
        let key = (row.node_id, row.seq.expect("a sequenced row has a seq"));
        let Some(&(at_ms, cores)) = stored.get(&key) else {
            // The insert can only conflict on (node, seq): the other unique
            // key holds the store's own fresh id.
            return Err(StoreError::Corrupt(format!(
                "sample (node {}, seq {}) was neither stored nor found stored",
                key.0, key.1
            )));
        };
        outcomes[*at] = if (at_ms, cores) == (row.at_ms, i64::from(row.cores)) {
            Outcome::Duplicate
        } else {
            let reason = Rejection::ConflictingResend;
            refused.push(Refused {
                account_ref: row.account_ref,
                at_ms: row.at_ms,
                reason,
                received_at_ms: row.received_at_ms,
            });
            Outcome::Rejected(reason)
        };
    }
    Ok(())
}

/// Stored samples' (at_ms, cores) by (node_id, seq).
type StoredBySeq = FxHashMap<(i64, i64), (i64, i64)>;

/// The stored `at_ms` and cores of the rows' (node, seq), in one statement.
fn stored_by_node_seq<'r, 'a: 'r>(
    tx: &Conn,
    rows: impl Iterator<Item = &'r Row<'a>>,
) -> Result<StoredBySeq, StoreError> {
    let mut values = Vec::new();
    let mut terms = Vec::new();
    for row in rows {
        terms.push("(node_id = ? AND seq = ?)");
        values.extend([
            Value::Int(row.node_id),
            row.seq.map_or(Value::Null, Value::Int),
        ]);
    }
    let sql = format!(
        "SELECT node_id, seq, at_ms, cores FROM samples WHERE {}",
        terms.join(" OR ")
    );
    let found = tx
        .query_map(&sql, values, |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
        })?
        .collect::<Result<_, _>>()?;
    Ok(found)
}

/// The rows' columns in `insert_sql`'s order.
fn values_of<'r, 'a: 'r>(rows: impl Iterator<Item = &'r Row<'a>>) -> Vec<Value<'r>> {
    let mut values = Vec::with_capacity(ROWS_PER_INSERT * 8);
    for r in rows {
        values.extend([
            Value::Int(r.account_ref),
            Value::Int(r.at_ms),
            Value::Int(r.node_id),
            Value::Int(r.id),
            Value::Int(i64::from(r.cores)),
            Value::Int(r.received_at_ms),
            r.seq.map_or(Value::Null, Value::Int),
            r.agent_version.map_or(Value::Null, Value::Text),
        ]);
    }
    values
}

/// Whether the node was stored before (its samples were taken once).
fn node_stored(tx: &Conn, account_ref: i64, cluster: &str, name: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT id FROM nodes WHERE account_ref = ?1 AND cluster = ?2 AND name = ?3",
        )?
        .query_row((account_ref, cluster, name), |r| r.get::<_, i64>(0))
        .optional()?
        .is_some())
}

pub(super) fn node_id(
    tx: &Conn,
    account_ref: i64,
    cluster: &str,
    name: &str,
) -> Result<i64, StoreError> {
    let found: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM nodes WHERE account_ref = ?1 AND cluster = ?2 AND name = ?3",
        )?
        .query_row((account_ref, cluster, name), |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    Ok(tx.query_row(
        "INSERT INTO nodes (account_ref, cluster, name) VALUES (?1, ?2, ?3) RETURNING id",
        (account_ref, cluster, name),
        |r| r.get(0),
    )?)
}

/// On PostgreSQL, the days that the view `samples` reads for `at` in
/// `[from_ms, to_ms)`, as a condition on `s.day` with its parameters
/// numbered from `first`: the view files samples by day, and a bound on
/// `at` alone would read every day of the account. Nothing on SQLite.
fn filed_days(
    conn: &Conn,
    first: usize,
    (from_ms, to_ms): (i64, i64),
) -> (String, Vec<Value<'static>>) {
    match conn.dialect() {
        Dialect::Sqlite => (String::new(), Vec::new()),
        Dialect::Postgres => (
            format!(" AND s.day >= ?{first} AND s.day <= ?{}", first + 1),
            vec![
                Value::Int(day_of_ms(from_ms)),
                Value::Int(day_of_ms(to_ms.saturating_sub(1))),
            ],
        ),
    }
}

/// A stored sample as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditSample {
    pub id: i64,
    pub cluster: String,
    pub node: String,
    pub cores: u32,
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub seq: Option<i64>,
    pub agent_version: Option<String>,
}

const AUDIT_COLUMNS: &str =
    "s.id, n.cluster, n.name, s.cores, s.at_ms, s.received_at_ms, s.seq, s.agent_version";

fn audit_row(r: &super::db::Row<'_>) -> Result<AuditSample, super::db::DbError> {
    Ok(AuditSample {
        id: r.get(0)?,
        cluster: r.get(1)?,
        node: r.get(2)?,
        cores: r.get(3)?,
        at: super::from_ms(r.get(4)?),
        received_at: super::from_ms(r.get(5)?),
        seq: r.get(6)?,
        agent_version: r.get(7)?,
    })
}

impl Ingest<'_> {
    /// Whether ingest keeps each node's last seen. A store that is read
    /// only for its bills (`replay`'s) need not: the update is one row per
    /// node and commit, 0.8 µs a sample when replaying 717,702.
    pub fn keep_last_seen(&mut self, keep: bool) {
        self.0.keeps_last_seen = keep;
    }

    /// Validates and stores a batch in one transaction; returns one outcome per
    /// sample, in order, once the accepted ones are committed. A rejected
    /// sample never stops the rest of the batch.
    pub fn insert(
        &mut self,
        batch: &[Incoming<'_>],
        limits: &AgeLimits,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Resolve accounts first, outside the write transaction.
        let mut refs: FxHashMap<&str, Option<i64>> = FxHashMap::default();
        for s in batch {
            if !refs.contains_key(s.account) {
                let account_ref = self.account_ref(s.account)?;
                refs.insert(s.account, account_ref);
            }
        }
        if self.conn.dialect() == Dialect::Postgres {
            let days = batch.iter().filter_map(|s| {
                // Only an `at` that may be accepted gets its month made.
                let at = s.at?;
                let oldest = s.received_at.checked_sub_signed(limits.max_age)?;
                let newest = s.received_at.checked_add_signed(limits.max_future)?;
                (oldest..=newest)
                    .contains(&at)
                    .then(|| day_of_ms(at.timestamp_millis()))
            });
            self.0.make_months(days)?;
        }
        // PostgreSQL may give up one of two transactions that wait for
        // each other; nothing of it was written, so it runs again.
        let mut attempts = 0;
        loop {
            match self.ingest_in_transaction(batch, limits, &refs) {
                Err(StoreError::Database(e)) if e.is_retryable() && attempts < MAX_RETRIES => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempts, "ingest's transaction ran again");
                }
                result => return result,
            }
        }
    }
}

impl Store {
    /// PostgreSQL: makes the partition of `sample_days` of each day's month
    /// that this connection has not seen made, each in a transaction of
    /// its own, before the transaction that writes into it: making one
    /// waits for the transactions writing the table, and must hold nothing
    /// they wait for.
    pub(super) fn make_months(
        &mut self,
        days: impl Iterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let mut firsts: Vec<i64> = days
            .filter_map(|day| {
                let date =
                    chrono::DateTime::from_timestamp(day.checked_mul(86_400)?, 0)?.date_naive();
                let first = chrono::Datelike::with_day(&date, 1)?;
                Some((first - chrono::NaiveDate::default()).num_days())
            })
            .filter(|first| !self.months.contains(first))
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        for first in firsts {
            self.conn.query_row(
                "SELECT sample_days_partition((?1::BIGINT)::INT)::TEXT",
                [first],
                |_| Ok(()),
            )?;
            self.months.insert(first);
        }
        Ok(())
    }
}

/// How many times ingest runs a transaction again that PostgreSQL gave up.
const MAX_RETRIES: u32 = 5;

impl Billing<'_> {
    /// The account's samples with `at` in `[from, to)`.
    pub fn samples_between(
        &self,
        account: &Account,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<NodeSample>, StoreError> {
        samples_in(
            &self.0.conn,
            account.reference,
            (from.timestamp_millis(), to.timestamp_millis()),
        )
    }

    /// Where the account's samples at or after `from` begin, to the UTC
    /// day: the start of the UTC day of the first of them, or `from` itself
    /// when that sample is on `from`'s own day; `None` when there is none.
    /// Billing only needs the day a stretch without samples ends, and on
    /// PostgreSQL the day is found on the key's index, without reading
    /// every sample of it.
    pub fn first_sample_day_from(
        &self,
        account: &Account,
        from: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let from_ms = from.timestamp_millis();
        if self.conn.dialect() == Dialect::Postgres {
            let first = first_sample_days_from(&self.conn, &[(account.reference, from_ms)])?;
            return Ok(first[0].map(super::from_ms));
        }
        let ms: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT min(at_ms) FROM samples WHERE account_ref = ?1 AND at_ms >= ?2",
            )?
            .query_row((account.reference, from_ms), |r| r.get(0))?;
        Ok(ms.map(|at| super::from_ms(day_start_from(day_of_ms(at), from_ms))))
    }
}

impl Reads<'_> {
    /// Every stored sample of an account with `at` in `[from, to)`, in order of `at`.
    pub fn audit_samples(
        &mut self,
        account: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AuditSample>, StoreError> {
        let account_ref = self.require_account(account)?;
        let window = (from.timestamp_millis(), to.timestamp_millis());
        let (days, bounds) = filed_days(&self.0.conn, 4, window);
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS}
               FROM samples s JOIN nodes n ON n.id = s.node_id
              WHERE s.account_ref = ?1 AND s.at_ms >= ?2 AND s.at_ms < ?3{days}
              ORDER BY s.at_ms, s.id"
        ))?;
        let mut params = vec![
            Value::Int(account_ref),
            Value::Int(window.0),
            Value::Int(window.1),
        ];
        params.extend(bounds);
        let rows = stmt.query_map(params, audit_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of the audit trail: up to `limit` samples of the account with
    /// `at` in `[from, to)` after `after`, in order of (`at`, id).
    pub fn audit_page(
        &mut self,
        account: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        after: Option<&SampleKey>,
        limit: u32,
    ) -> Result<Listed<AuditSample, SampleKey>, StoreError> {
        let account_ref = self.require_account(account)?;
        let window = (account_ref, from.timestamp_millis(), to.timestamp_millis());
        let (days, bounds) = filed_days(&self.0.conn, 4, (window.1, window.2));
        let mut params = vec![
            Value::Int(window.0),
            Value::Int(window.1),
            Value::Int(window.2),
        ];
        params.extend(bounds.iter().copied());
        let total: i64 = self.0.conn.query_row(
            &format!(
                "SELECT count(*) FROM samples s WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3{days}"
            ),
            params,
            |r| r.get(0),
        )?;
        let after = after.map_or((i64::MIN, i64::MIN), |k| (k.at_ms, k.id));
        let (days, bounds) = filed_days(&self.0.conn, 7, (window.1, window.2));
        let mut stmt = self.0.conn.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS}
               FROM samples s JOIN nodes n ON n.id = s.node_id
              WHERE s.account_ref = ?1 AND s.at_ms >= ?2 AND s.at_ms < ?3
                AND (s.at_ms, s.id) > (?4, ?5){days}
              ORDER BY s.at_ms, s.id LIMIT ?6"
        ))?;
        let mut params = vec![
            Value::Int(window.0),
            Value::Int(window.1),
            Value::Int(window.2),
            Value::Int(after.0),
            Value::Int(after.1),
            Value::Int(one_more(limit)),
        ];
        params.extend(bounds);
        let rows = stmt.query_map(params, |r| {
            let sample = audit_row(r)?;
            let key = SampleKey {
                at_ms: sample.at.timestamp_millis(),
                id: sample.id,
            };
            Ok((key, sample))
        })?;
        let rows = rows.collect::<Result<_, _>>()?;
        Ok(Listed::from_rows(rows, limit, total as u64))
    }

    /// How many samples of an account claiming an instant in `[from, to)` were rejected, by reason.
    pub fn rejections(
        &mut self,
        account: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self.0.conn.prepare_cached(
            "SELECT reason, count(*) FROM rejections WHERE account_ref = ?1 AND at_ms >= ?2 AND at_ms < ?3
              GROUP BY reason ORDER BY reason",
        )?;
        let rows = stmt.query_map(
            (account_ref, from.timestamp_millis(), to.timestamp_millis()),
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use chrono::TimeDelta;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
        s.accounts().create_account("acme", at(0)).unwrap();
        (dir, s)
    }

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::minutes(minute)
    }

    fn sample(seq: i64, cores: u32, when: DateTime<Utc>) -> Incoming<'static> {
        Incoming {
            account: "acme",
            cluster: "prod",
            node: "node-1",
            cores: Some(cores),
            at: Some(when),
            seq: Some(seq),
            agent_version: Some("0.2.0"),
            received_at: at(30),
        }
    }

    fn ingest(s: &mut Store, batch: &[Incoming<'_>]) -> Vec<Outcome> {
        s.ingest().insert(batch, &AgeLimits::default()).unwrap()
    }

    /// The stored samples as (seq, cores, at).
    fn stored(s: &mut Store) -> Vec<(Option<i64>, u32, DateTime<Utc>)> {
        s.reads()
            .audit_samples("acme", at(-60), at(60))
            .unwrap()
            .into_iter()
            .map(|a| (a.seq, a.cores, a.at))
            .collect()
    }

    const CONFLICTING: Outcome = Outcome::Rejected(Rejection::ConflictingResend);

    #[test]
    fn a_true_resend_is_a_duplicate() {
        let (_dir, mut s) = store();
        assert_eq!(ingest(&mut s, &[sample(1, 8, at(0))]), [Outcome::Accepted]);
        assert_eq!(ingest(&mut s, &[sample(1, 8, at(0))]), [Outcome::Duplicate]);
        assert_eq!(stored(&mut s), [(Some(1), 8, at(0))]);
        assert_eq!(s.reads().rejections("acme", at(-60), at(60)).unwrap(), []);
    }

    #[test]
    fn a_resend_with_other_cores_or_another_instant_is_rejected_and_the_stored_sample_stays() {
        let (_dir, mut s) = store();
        ingest(&mut s, &[sample(1, 8, at(0)), sample(2, 8, at(1))]);
        let outcomes = ingest(
            &mut s,
            &[
                sample(1, 16, at(0)),
                sample(2, 8, at(1) + TimeDelta::milliseconds(1)),
                sample(3, 8, at(2)),
            ],
        );
        assert_eq!(outcomes, [CONFLICTING, CONFLICTING, Outcome::Accepted]);
        assert_eq!(
            stored(&mut s),
            [
                (Some(1), 8, at(0)),
                (Some(2), 8, at(1)),
                (Some(3), 8, at(2))
            ]
        );
        // Recorded like every rejection of a known account.
        assert_eq!(
            s.reads().rejections("acme", at(-60), at(60)).unwrap(),
            [("conflicting_resend".to_string(), 2)]
        );
    }

    #[test]
    fn within_one_batch_the_first_of_a_node_and_seq_is_stored_and_the_next_compared_with_it() {
        let (_dir, mut s) = store();
        let outcomes = ingest(
            &mut s,
            &[
                sample(1, 8, at(0)),
                sample(1, 8, at(0)),
                sample(1, 4, at(0)),
                sample(1, 8, at(5)),
            ],
        );
        assert_eq!(
            outcomes,
            [
                Outcome::Accepted,
                Outcome::Duplicate,
                CONFLICTING,
                CONFLICTING
            ]
        );
        assert_eq!(stored(&mut s), [(Some(1), 8, at(0))]);
    }

    #[test]
    fn resends_are_told_apart_across_many_statements_of_one_batch() {
        let (_dir, mut s) = store();
        let n = (ROWS_PER_INSERT * 3) as i64;
        let first: Vec<_> = (0..n).map(|q| sample(q, 8, at(q % 30))).collect();
        assert!(ingest(&mut s, &first)
            .iter()
            .all(|o| *o == Outcome::Accepted));
        // Every third changed; the rest true resends, with new seqs mixed in.
        let again: Vec<_> = (0..n + 10)
            .map(|q| sample(q, if q % 3 == 0 { 9 } else { 8 }, at(q % 30)))
            .collect();
        let outcomes = ingest(&mut s, &again);
        for (q, o) in outcomes.iter().enumerate() {
            let expected = match q as i64 {
                q if q >= n => Outcome::Accepted,
                q if q % 3 == 0 => CONFLICTING,
                _ => Outcome::Duplicate,
            };
            assert_eq!(*o, expected, "seq {q}");
        }
        let stored = stored(&mut s);
        assert_eq!(stored.len() as i64, n + 10);
        assert!(stored
            .iter()
            .all(|(seq, cores, _)| *cores == 8 || seq.unwrap() >= n));
    }
}
