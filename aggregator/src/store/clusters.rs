//! Clusters and the tokens their agents authenticate with; the admin token.

use super::db::{DbError, OptionalExtension};
use super::{Accounts, Ingest, Tokens};
use chrono::{DateTime, Utc};
use shared::domain::{check_name, NameKind};

use super::issued::{record_issue, TokenKind};
use super::StoreError;
use crate::security::tokens::{check_token_form, hash_token, new_token};

/// What a cluster token starts with (`cmc_`), generated or supplied.
const CLUSTER_TOKEN_PREFIX: &str = "cmc";

/// Who a cluster token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub account: String,
    pub cluster: String,
}

/// The token a cluster gets: the one supplied, if it has the generated form,
/// else a new one.
fn token_or_new(supplied: Option<String>) -> Result<String, StoreError> {
    match supplied {
        Some(token) => {
            check_token_form(CLUSTER_TOKEN_PREFIX, &token).map_err(StoreError::InvalidToken)?;
            Ok(token)
        }
        None => Ok(new_token(CLUSTER_TOKEN_PREFIX)),
    }
}

/// A write refused by the unique index on `clusters.token_hash` is a token
/// some cluster already has; anything else is a database error. (Such a
/// token was recorded as issued, so `issued::record_issue` refuses it first;
/// the index is the last word.)
fn token_in_use(e: DbError) -> StoreError {
    // SQLite names the column (clusters.token_hash), PostgreSQL the
    // constraint (clusters_token_hash_key).
    if e.is_unique_violation() && e.to_string().contains("token_hash") {
        StoreError::TokenInUse
    } else {
        StoreError::Database(e)
    }
}

impl Accounts<'_> {
    /// Creates a cluster with the supplied token, or a generated one, and
    /// returns it; only the token's hash is kept. A token issued before (held,
    /// rotated away or revoked, by any cluster or account) is refused, and
    /// nothing is written: the cluster and the record of its token's issue
    /// commit together.
    pub fn create_cluster(
        &mut self,
        account: &str,
        name: &str,
        token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        // Cluster names appear in URLs, reports and CSV cells.
        check_name(NameKind::ClusterName, name)
            .map_err(|e| StoreError::InvalidName(e.to_string()))?;
        let token = token_or_new(token)?;
        let account_ref = self.require_account(account)?;
        let hash = hash_token(&token).to_vec();
        let tx = self.0.conn.transaction()?;
        let inserted = tx
            .execute(
                "INSERT INTO clusters (account_ref, name, token_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account_ref, name) DO NOTHING",
                (account_ref, name, hash.clone(), now.timestamp_millis()),
            )
            .map_err(token_in_use)?;
        if inserted == 0 {
            return Err(StoreError::ClusterExists(
                account.to_string(),
                name.to_string(),
            ));
        }
        record_issue(&tx, &hash, TokenKind::Cluster, now)?;
        tx.commit()?;
        Ok(token)
    }

    /// Replaces a cluster's token with the supplied one, or a generated one,
    /// and returns it; the old one stops working at once. A token issued
    /// before, this cluster's own current or earlier ones included, is
    /// refused and nothing changes.
    pub fn rotate_cluster_token(
        &mut self,
        account: &str,
        name: &str,
        token: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let token = token_or_new(token)?;
        let account_ref = self.require_account(account)?;
        let hash = hash_token(&token).to_vec();
        let tx = self.0.conn.transaction()?;
        let updated = tx
            .execute(
                "UPDATE clusters SET token_hash = ?3, rotated_at_ms = ?4 WHERE account_ref = ?1 AND name = ?2",
                (account_ref, name, hash.clone(), now.timestamp_millis()),
            )
            .map_err(token_in_use)?;
        if updated == 0 {
            return Err(StoreError::UnknownCluster(
                account.to_string(),
                name.to_string(),
            ));
        }
        // The cluster's own token passes the unique index (the row changes
        // to what it was) but was recorded when issued, so it is refused here.
        record_issue(&tx, &hash, TokenKind::Cluster, now)?;
        tx.commit()?;
        Ok(token)
    }

    /// The names of an account's clusters.
    pub fn clusters(&mut self, account: &str) -> Result<Vec<String>, StoreError> {
        let account_ref = self.require_account(account)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM clusters WHERE account_ref = ?1 ORDER BY name")?;
        let rows = stmt.query_map([account_ref], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Ingest<'_> {
    /// The account and cluster a token belongs to. The look-up is by the
    /// token's hash, so nothing about the token itself is compared.
    pub fn cluster_for_token(&self, token: &str) -> Result<Option<ClusterIdentity>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT a.id, c.name FROM clusters c JOIN accounts a ON a.ref = c.account_ref WHERE c.token_hash = ?1",
            )?
            .query_row([hash_token(token).to_vec()], |r| {
                Ok(ClusterIdentity {
                    account: r.get(0)?,
                    cluster: r.get(1)?,
                })
            })
            .optional()?)
    }
}

impl Tokens<'_> {
    /// The stored hash of the generated admin token, if one was generated.
    pub fn admin_token_hash(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT token_hash FROM admin_token WHERE id = 1", (), |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Generates the admin token if none exists yet; returns it only then.
    pub fn generate_admin_token(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let token = new_token("cma");
        let hash = hash_token(&token).to_vec();
        let tx = self.0.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO admin_token (id, token_hash, created_at_ms) VALUES (1, ?1, ?2) ON CONFLICT (id) DO NOTHING",
            (hash.clone(), now.timestamp_millis()),
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        record_issue(&tx, &hash, TokenKind::Admin, now)?;
        tx.commit()?;
        Ok(Some(token))
    }
}
