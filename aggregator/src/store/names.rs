//! Names stored before their domain was written (`shared::domain::check_name`).
//! Migration 8 finds every account id, cluster name and node name outside it,
//! records them and says so in the log; they stay as they are (bills name
//! them, idempotency keys carry them) and stay reachable by their old names,
//! while every new name must be in the domain.

use std::collections::HashSet;

use shared::domain::{check_name, NameKind};

use super::db::Conn;
use super::Reads;
use super::StoreError;

/// The name of a kind in the table.
fn kind_str(kind: NameKind) -> &'static str {
    match kind {
        NameKind::AccountId => "account",
        NameKind::ClusterName => "cluster",
        NameKind::NodeName => "node",
    }
}

fn kind_of(text: &str) -> Option<NameKind> {
    match text {
        "account" => Some(NameKind::AccountId),
        "cluster" => Some(NameKind::ClusterName),
        "node" => Some(NameKind::NodeName),
        _ => None,
    }
}

/// Finds and records the stored names outside their domain, inside the
/// migration's transaction; logs how many of each kind, with a few of them.
pub(super) fn report_names_outside_domain(tx: &Conn) -> Result<usize, StoreError> {
    let sources = [
        (NameKind::AccountId, "SELECT id FROM accounts"),
        (NameKind::ClusterName, "SELECT DISTINCT name FROM clusters"),
        (NameKind::NodeName, "SELECT DISTINCT name FROM nodes"),
    ];
    let mut found = 0;
    for (kind, sql) in sources {
        let names: Vec<String> = tx
            .query_map(sql, (), |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let outside: Vec<&String> = names
            .iter()
            .filter(|n| check_name(kind, n).is_err())
            .collect();
        for name in &outside {
            tx.execute(
                "INSERT INTO names_outside_domain (kind, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                (kind_str(kind), name.as_str()),
            )?;
        }
        if !outside.is_empty() {
            let examples: Vec<String> = outside
                .iter()
                .take(5)
                .map(|n| shared::domain::quote(n))
                .collect();
            tracing::warn!(
                kind = kind.as_str(),
                count = outside.len(),
                examples = %examples.join(", "),
                "stored names outside the domain written since (ASCII letters, digits, '-', '_', '.'): they are kept and stay reachable, new ones must be in the domain; see the table names_outside_domain"
            );
        }
        found += outside.len();
    }
    Ok(found)
}

/// Names stored before their domain was written that lie outside it
/// (reported by migration 8); they stay reachable by their old names.
#[derive(Debug, Default)]
pub struct LegacyNames(HashSet<(NameKind, String)>);

impl LegacyNames {
    pub fn new(names: impl IntoIterator<Item = (NameKind, String)>) -> LegacyNames {
        LegacyNames(names.into_iter().collect())
    }

    pub fn contains(&self, kind: NameKind, name: &str) -> bool {
        !self.0.is_empty() && self.0.contains(&(kind, name.to_string()))
    }
}

impl Reads<'_> {
    /// The names migration 8 found outside their domain.
    pub fn names_outside_domain(&self) -> Result<Vec<(NameKind, String)>, StoreError> {
        let rows: Vec<(String, String)> = self
            .conn
            .query_map(
                "SELECT kind, name FROM names_outside_domain ORDER BY kind, name",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(kind, name)| {
                kind_of(&kind).map(|k| (k, name)).ok_or_else(|| {
                    StoreError::Corrupt(format!("names_outside_domain kind {kind:?}"))
                })
            })
            .collect()
    }
}
