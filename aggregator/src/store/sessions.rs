//! The console's sessions: opened by a token at the login form, kept as the
//! SHA-256 of the cookie that carries them, each with its own CSRF token,
//! ended by logout, by their expiry, or by the end of the token that opened
//! them (a reader or customer token revoked, the admin token replaced).

use chrono::{DateTime, TimeDelta, Utc};

use super::db::OptionalExtension;
use super::{from_ms, Sessions, StoreError};
use crate::security::tokens::{hash_token, new_token};

/// The prefix of a session's cookie value.
pub const SESSION_PREFIX: &str = "cms";

/// How long a session lasts from its login.
pub const SESSION_HOURS: i64 = 12;

/// The most live sessions one token may hold: the oldest ends when a login
/// would pass it.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 20;

/// What a session may do: the role of the token that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    Admin,
    Reader,
    Customer,
}

impl SessionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionRole::Admin => "admin",
            SessionRole::Reader => "reader",
            SessionRole::Customer => "customer",
        }
    }

    fn parse(s: &str) -> Result<SessionRole, StoreError> {
        match s {
            "admin" => Ok(SessionRole::Admin),
            "reader" => Ok(SessionRole::Reader),
            "customer" => Ok(SessionRole::Customer),
            other => Err(StoreError::Corrupt(format!("session of role {other:?}"))),
        }
    }
}

/// Who opens a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOwner {
    /// The admin token, by its hash.
    Admin([u8; 32]),
    /// A reader or customer token, by its id.
    Token { role: SessionRole, token_id: i64 },
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: i64,
    pub role: SessionRole,
    /// The account of a reader or customer session.
    pub account: Option<String>,
    /// The admin token's hash an admin session was opened with.
    pub admin_hash: Option<Vec<u8>>,
    /// The reader or customer token a session was opened with, by its id.
    pub reader_token: Option<i64>,
    /// What every form of the session must carry back.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// A session just opened: the cookie's value (shown once) and the session.
#[derive(Debug, Clone)]
pub struct Opened {
    pub cookie: String,
    pub session: Session,
}

impl Sessions<'_> {
    /// Opens a session for `owner`, ending its oldest live one past
    /// [`MAX_SESSIONS_PER_TOKEN`] and forgetting sessions long expired.
    pub fn open(&mut self, owner: &SessionOwner, now: DateTime<Utc>) -> Result<Opened, StoreError> {
        let cookie = new_token(SESSION_PREFIX);
        let csrf = new_token("csrf");
        let now_ms = now.timestamp_millis();
        let expires = now + TimeDelta::hours(SESSION_HOURS);
        let (role, token_id, admin_hash) = match owner {
            SessionOwner::Admin(hash) => (SessionRole::Admin, None, Some(hash.to_vec())),
            SessionOwner::Token { role, token_id } => (*role, Some(*token_id), None),
        };
        let tx = self.0.conn.transaction()?;
        // Sessions a week past their end are of no use to anyone.
        tx.execute(
            "DELETE FROM console_sessions WHERE expires_at_ms < ?1",
            [now_ms - TimeDelta::days(7).num_milliseconds()],
        )?;
        let live = |tx: &super::db::Conn| -> Result<i64, StoreError> {
            Ok(tx.query_row(
                "SELECT count(*) FROM console_sessions
                  WHERE ((CAST(?1 AS BIGINT) IS NULL AND reader_token IS NULL) OR reader_token = ?1)
                    AND ended_at_ms IS NULL AND expires_at_ms > ?2",
                (token_id, now_ms),
                |r| r.get(0),
            )?)
        };
        if live(&tx)? >= MAX_SESSIONS_PER_TOKEN {
            tx.execute(
                "UPDATE console_sessions SET ended_at_ms = ?2 WHERE id = (
                    SELECT id FROM console_sessions
                     WHERE ((CAST(?1 AS BIGINT) IS NULL AND reader_token IS NULL) OR reader_token = ?1)
                       AND ended_at_ms IS NULL AND expires_at_ms > ?2
                     ORDER BY id LIMIT 1)",
                (token_id, now_ms),
            )?;
        }
        let id: i64 = tx.query_row(
            "INSERT INTO console_sessions (session_hash, csrf, role, reader_token, admin_hash, created_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            (
                hash_token(&cookie).to_vec(),
                csrf.clone(),
                role.as_str(),
                token_id,
                admin_hash.clone(),
                now_ms,
                expires.timestamp_millis(),
            ),
            |r| r.get(0),
        )?;
        tx.commit()?;
        let account = match token_id {
            Some(t) => Some(self.0.conn.query_row(
                "SELECT a.id FROM reader_tokens r JOIN accounts a ON a.ref = r.account_ref WHERE r.id = ?1",
                [t],
                |r| r.get(0),
            )?),
            None => None,
        };
        Ok(Opened {
            cookie,
            session: Session {
                id,
                role,
                account,
                admin_hash,
                reader_token: token_id,
                csrf,
                expires_at: from_ms(expires.timestamp_millis()),
            },
        })
    }

    /// The live session a cookie carries: not ended, not expired, and its
    /// reader or customer token not revoked. Looked up by the cookie's hash.
    pub fn find(&self, cookie: &str, now: DateTime<Utc>) -> Result<Option<Session>, StoreError> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT s.id, s.role, a.id, s.admin_hash, s.csrf, s.expires_at_ms, s.reader_token
                   FROM console_sessions s
                   LEFT JOIN reader_tokens r ON r.id = s.reader_token
                   LEFT JOIN accounts a ON a.ref = r.account_ref
                  WHERE s.session_hash = ?1 AND s.ended_at_ms IS NULL AND s.expires_at_ms > ?2
                    AND (s.reader_token IS NULL OR r.revoked_at_ms IS NULL)",
            )?
            .query_row((hash_token(cookie).to_vec(), now.timestamp_millis()), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })
            .optional()?;
        found
            .map(
                |(id, role, account, admin_hash, csrf, expires, reader_token)| {
                    Ok(Session {
                        id,
                        role: SessionRole::parse(&role)?,
                        account,
                        admin_hash,
                        reader_token,
                        csrf,
                        expires_at: from_ms(expires),
                    })
                },
            )
            .transpose()
    }

    /// Ends a session (logout); ending an ended one changes nothing.
    pub fn end(&mut self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.0.conn.execute(
            "UPDATE console_sessions SET ended_at_ms = ?2 WHERE id = ?1 AND ended_at_ms IS NULL",
            (id, now.timestamp_millis()),
        )?;
        Ok(())
    }
}
