//! An account's own tokens, each bound to it and kept only as a SHA-256
//! hash; issued, listed and revoked: reader tokens (a customer's read-only
//! tokens) and `logs` tokens (the log service's, for its usage reports).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::db::OptionalExtension;
use super::pages::{one_more, Listed};
use super::{from_ms, StoreError};
use super::{Accounts, Tokens};
use crate::security::tokens::{
    hash_token, new_token, CUSTOMER_TOKEN_PREFIX, LOGS_TOKEN_PREFIX, READER_TOKEN_PREFIX,
};

/// What an account's token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountTokenRole {
    /// Read the account's reports, bills, notices and add-ons.
    Reader,
    /// Report the log service's usage (SPEC 10.4).
    Logs,
    /// What a reader reads, and the account's own actions: the cap,
    /// auto-renewal, image authorizations, orders paid from the balance.
    Customer,
}

impl AccountTokenRole {
    fn as_str(self) -> &'static str {
        match self {
            AccountTokenRole::Reader => "reader",
            AccountTokenRole::Logs => "logs",
            AccountTokenRole::Customer => "customer",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            AccountTokenRole::Reader => READER_TOKEN_PREFIX,
            AccountTokenRole::Logs => LOGS_TOKEN_PREFIX,
            AccountTokenRole::Customer => CUSTOMER_TOKEN_PREFIX,
        }
    }

    fn issued_as(self) -> super::issued::TokenKind {
        match self {
            AccountTokenRole::Reader => super::issued::TokenKind::Reader,
            AccountTokenRole::Logs => super::issued::TokenKind::Logs,
            AccountTokenRole::Customer => super::issued::TokenKind::Customer,
        }
    }
}

/// The most live (unrevoked) reader tokens one account may hold: enough for
/// every person and dashboard of a customer, few enough that a script gone
/// wrong cannot fill the table.
pub const MAX_READER_TOKENS: i64 = 100;

/// The longest label of a reader token, in characters.
pub const READER_NAME_MAX_CHARS: usize = 128;

/// Who a reader token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderIdentity {
    pub account: String,
    pub token_id: i64,
}

/// A reader token as issued: the only time its secret is seen.
#[derive(Clone, Serialize)]
pub struct IssuedReaderToken {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub created_at: DateTime<Utc>,
}

/// The secret never reaches a log, a panic message or an assertion's output.
impl std::fmt::Debug for IssuedReaderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedReaderToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A reader token as listed: never its secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderToken {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A label: 1 to `READER_NAME_MAX_CHARS` characters, none of them a control character.
fn check_name(name: &str) -> Result<(), StoreError> {
    let chars = name.chars().count();
    if !(1..=READER_NAME_MAX_CHARS).contains(&chars) || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid {
            field: "name",
            message: format!(
                "name must be 1 to {READER_NAME_MAX_CHARS} printable characters, got {chars} characters{}",
                if name.chars().any(char::is_control) { " with control characters" } else { "" }
            ),
        });
    }
    Ok(())
}

impl Accounts<'_> {
    /// Issues a reader token for `account` and returns it; only its hash is
    /// kept.
    pub fn issue_reader_token(
        &mut self,
        account: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedReaderToken, StoreError> {
        self.issue_account_token(account, AccountTokenRole::Reader, name, now)
    }

    /// Issues a token of `role` for `account` and returns it; only its hash
    /// is kept. Refused past `MAX_READER_TOKENS` live tokens of the role: the
    /// count and the insert share the write lock, so two issues at once
    /// cannot both pass it.
    pub fn issue_account_token(
        &mut self,
        account: &str,
        role: AccountTokenRole,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedReaderToken, StoreError> {
        check_name(name)?;
        let account_ref = self.require_account(account)?;
        let token = new_token(role.prefix());
        let tx = self.0.conn.transaction()?;
        let live: i64 = tx.query_row(
            "SELECT count(*) FROM reader_tokens WHERE account_ref = ?1 AND role = ?2 AND revoked_at_ms IS NULL",
            (account_ref, role.as_str()),
            |r| r.get(0),
        )?;
        if live >= MAX_READER_TOKENS {
            let role = role.as_str();
            return Err(StoreError::Conflict {
                code: match role {
                    "reader" => "too_many_reader_tokens",
                    "customer" => "too_many_customer_tokens",
                    _ => "too_many_logs_tokens",
                },
                field: "name",
                message: format!(
                    "account {account:?} already has {live} live {role} tokens, the most it may hold ({MAX_READER_TOKENS}); revoke one first"
                ),
            });
        }
        let hash = hash_token(&token).to_vec();
        let id: i64 = tx.query_row(
            "INSERT INTO reader_tokens (account_ref, name, token_hash, created_at_ms, role) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            (account_ref, name, hash.clone(), now.timestamp_millis(), role.as_str()),
            |r| r.get(0),
        )?;
        super::issued::record_issue(&tx, &hash, role.issued_as(), now)?;
        tx.commit()?;
        Ok(IssuedReaderToken {
            id,
            name: name.to_string(),
            token,
            created_at: from_ms(now.timestamp_millis()),
        })
    }

    /// Every reader token of `account`, oldest first, revoked ones included.
    pub fn reader_tokens(&mut self, account: &str) -> Result<Vec<ReaderToken>, StoreError> {
        let account_ref = self.require_account(account)?;
        let rows = self.0.conn.query_map(
            "SELECT id, name, created_at_ms, revoked_at_ms FROM reader_tokens WHERE account_ref = ?1 AND role = 'reader' ORDER BY id",
            [account_ref],
            |r| {
                Ok(ReaderToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: from_ms(r.get(2)?),
                    revoked_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of the tokens of `role` of `account`, oldest first (by id):
    /// up to `limit` after the token `after`.
    pub fn account_token_page(
        &mut self,
        account: &str,
        role: AccountTokenRole,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Listed<ReaderToken, i64>, StoreError> {
        let account_ref = self.require_account(account)?;
        let total: i64 = self.0.conn.query_row(
            "SELECT count(*) FROM reader_tokens WHERE account_ref = ?1 AND role = ?2",
            (account_ref, role.as_str()),
            |r| r.get(0),
        )?;
        let rows = self.0.conn.query_map(
            "SELECT id, name, created_at_ms, revoked_at_ms FROM reader_tokens
              WHERE account_ref = ?1 AND role = ?4 AND id > ?2 ORDER BY id LIMIT ?3",
            (
                account_ref,
                after.unwrap_or(i64::MIN),
                one_more(limit),
                role.as_str(),
            ),
            |r| {
                let token = ReaderToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: from_ms(r.get(2)?),
                    revoked_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                };
                Ok((token.id, token))
            },
        )?;
        let rows = rows.collect::<Result<_, _>>()?;
        Ok(Listed::from_rows(rows, limit, total as u64))
    }

    /// Revokes a reader token of `account`; it stops at once. Revoking a
    /// revoked token changes nothing and answers it as it is (the first
    /// revocation's instant); a token the account does not have is
    /// [`StoreError::UnknownReaderToken`].
    pub fn revoke_reader_token(
        &mut self,
        account: &str,
        token_id: i64,
        now: DateTime<Utc>,
    ) -> Result<ReaderToken, StoreError> {
        self.revoke_account_token(account, AccountTokenRole::Reader, token_id, now)
    }

    /// Revokes a token of `role` of `account`, as [`Self::revoke_reader_token`].
    pub fn revoke_account_token(
        &mut self,
        account: &str,
        role: AccountTokenRole,
        token_id: i64,
        now: DateTime<Utc>,
    ) -> Result<ReaderToken, StoreError> {
        let account_ref = self.require_account(account)?;
        self.0
            .conn
            .query_row(
                "UPDATE reader_tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?3)
                  WHERE account_ref = ?1 AND id = ?2 AND role = ?4
                  RETURNING id, name, created_at_ms, revoked_at_ms",
                (account_ref, token_id, now.timestamp_millis(), role.as_str()),
                |r| {
                    Ok(ReaderToken {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: from_ms(r.get(2)?),
                        revoked_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownReaderToken(account.to_string(), token_id))
    }
}

impl Tokens<'_> {
    /// The account a live reader token belongs to. The look-up is by the
    /// token's hash, so nothing about the token itself is compared.
    pub fn reader_for_token(&self, token: &str) -> Result<Option<ReaderIdentity>, StoreError> {
        self.account_for_token(token, AccountTokenRole::Reader)
    }

    /// The account a live token of `role` belongs to, as [`Self::reader_for_token`].
    pub fn account_for_token(
        &self,
        token: &str,
        role: AccountTokenRole,
    ) -> Result<Option<ReaderIdentity>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT a.id, r.id FROM reader_tokens r JOIN accounts a ON a.ref = r.account_ref
                  WHERE r.token_hash = ?1 AND r.role = ?2 AND r.revoked_at_ms IS NULL",
            )?
            .query_row((hash_token(token).to_vec(), role.as_str()), |r| {
                Ok(ReaderIdentity {
                    account: r.get(0)?,
                    token_id: r.get(1)?,
                })
            })
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use crate::store::Store;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
        let now = Utc::now();
        s.accounts().create_account("acme", now).unwrap();
        (dir, s)
    }

    #[test]
    fn an_issued_token_finds_its_account_until_revoked_and_its_debug_hides_it() {
        let (_dir, mut s) = store();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let issued = s
            .accounts()
            .issue_reader_token("acme", "finance", now)
            .unwrap();
        assert!(crate::security::tokens::looks_like_reader_token(
            &issued.token
        ));
        assert!(!format!("{issued:?}").contains(&issued.token[4..]));
        let found = s.tokens().reader_for_token(&issued.token).unwrap().unwrap();
        assert_eq!(
            (found.account.as_str(), found.token_id),
            ("acme", issued.id)
        );
        let later = now + chrono::TimeDelta::minutes(1);
        let revoked = s
            .accounts()
            .revoke_reader_token("acme", issued.id, later)
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(later));
        assert_eq!(s.tokens().reader_for_token(&issued.token).unwrap(), None);
        // A second revocation keeps the first instant.
        let again = s
            .accounts()
            .revoke_reader_token("acme", issued.id, later + chrono::TimeDelta::minutes(1))
            .unwrap();
        assert_eq!(again, revoked);
        assert!(matches!(
            s.accounts()
                .revoke_reader_token("acme", issued.id + 1, later),
            Err(StoreError::UnknownReaderToken(..))
        ));
    }

    #[test]
    fn names_are_bounded_and_printable_and_live_tokens_are_limited() {
        let (_dir, mut s) = store();
        let now = Utc::now();
        for bad in ["", "a\nb", "\u{7}", &"x".repeat(READER_NAME_MAX_CHARS + 1)] {
            assert!(
                matches!(
                    s.accounts().issue_reader_token("acme", bad, now),
                    Err(StoreError::Invalid { field: "name", .. })
                ),
                "{bad:?}"
            );
        }
        let first = s.accounts().issue_reader_token("acme", "t0", now).unwrap();
        for i in 1..MAX_READER_TOKENS {
            s.accounts()
                .issue_reader_token("acme", &format!("t{i}"), now)
                .unwrap();
        }
        let err = s
            .accounts()
            .issue_reader_token("acme", "one more", now)
            .unwrap_err();
        assert!(err.to_string().contains("(100)"), "{err}");
        s.accounts()
            .revoke_reader_token("acme", first.id, now)
            .unwrap();
        s.accounts()
            .issue_reader_token("acme", "one more", now)
            .unwrap();
        assert_eq!(
            s.accounts().reader_tokens("acme").unwrap().len(),
            MAX_READER_TOKENS as usize + 1
        );
    }
}
