//! The hash of every token the service ever issued, so that no token is issued twice.
//!
//! A token rotated away or revoked stays known: given again to another
//! account's cluster, an agent still holding it would bill into that
//! account. Every issue records its hash in the transaction that installs
//! the token, and a hash recorded before is refused (`StoreError::TokenInUse`).

use chrono::{DateTime, Utc};

use super::db::{Conn, OptionalExtension};
use super::Tokens;
use super::{from_ms, StoreError};
use crate::security::tokens::hash_token;

/// What a token was issued as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Cluster,
    Reader,
    Admin,
    /// A log service's token (SPEC 10.4).
    Logs,
    /// A customer's token: reads and acts on its own account.
    Customer,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Cluster => "cluster",
            TokenKind::Reader => "reader",
            TokenKind::Admin => "admin",
            TokenKind::Logs => "logs",
            TokenKind::Customer => "customer",
        }
    }

    fn parse(s: &str) -> Result<TokenKind, StoreError> {
        match s {
            "cluster" => Ok(TokenKind::Cluster),
            "reader" => Ok(TokenKind::Reader),
            "admin" => Ok(TokenKind::Admin),
            "logs" => Ok(TokenKind::Logs),
            "customer" => Ok(TokenKind::Customer),
            other => Err(StoreError::Corrupt(format!(
                "issued token of unknown kind {other:?}"
            ))),
        }
    }
}

/// Records the issue of the token whose hash is `hash`, inside the caller's
/// transaction (the one that installs the token); a hash issued before, in
/// any kind, is [`StoreError::TokenInUse`] and records nothing.
pub(super) fn record_issue(
    tx: &Conn,
    hash: &[u8],
    kind: TokenKind,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO issued_tokens (token_hash, kind, issued_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (token_hash) DO NOTHING",
        )?
        .execute((hash.to_vec(), kind.as_str(), now.timestamp_millis()))?;
    if inserted == 0 {
        return Err(StoreError::TokenInUse);
    }
    Ok(())
}

impl Tokens<'_> {
    /// Whether `token` was ever issued (held now, rotated away or revoked),
    /// as what and when; only its hash is looked at.
    pub fn token_issued(
        &self,
        token: &str,
    ) -> Result<Option<(TokenKind, DateTime<Utc>)>, StoreError> {
        let found: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT kind, issued_at_ms FROM issued_tokens WHERE token_hash = ?1",
                [hash_token(token).to_vec()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        found
            .map(|(kind, at)| Ok((TokenKind::parse(&kind)?, from_ms(at))))
            .transpose()
    }
}
