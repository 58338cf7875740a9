//! Backups of a SQLite store and their restore: a consistent copy of a
//! running store made with SQLite's online backup (never a file copy,
//! which could take pages of two transactions), and a restore that checks
//! the copy (SQLite's integrity check, the schema version, the audit log's
//! chain) before it puts it where a service may start on it.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit::Verified;
use super::db::{Conn, OptionalExtension};
use super::{from_ms, Durability, Store, StoreError};

/// What a backup holds, as the commands print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copied {
    /// The copy's size on disk.
    pub bytes: u64,
    pub schema_version: usize,
    /// The last bill line issued before the copy was made: account, day,
    /// seq and when it was issued.
    pub last_line: Option<(String, String, i64, DateTime<Utc>)>,
    pub samples: u64,
    /// The audit log's length and last hash: keep them to tell later that
    /// no entry was cut off its end.
    pub audit: Verified,
}

/// Why a restore did not happen; nothing was written in its place.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{target} is not empty ({what}); a restore only fills a new store")]
    TargetNotEmpty { target: String, what: String },
    #[error("the backup {from} fails SQLite's integrity check: {problems}")]
    Corrupt { from: String, problems: String },
    #[error("the backup {from} is of schema {found}, newer than this build's {known}")]
    TooNew {
        from: String,
        found: usize,
        known: usize,
    },
    #[error("the backup {from}'s audit log is broken: {broken}")]
    AuditBroken { from: String, broken: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<super::db::DbError> for Refused {
    fn from(e: super::db::DbError) -> Refused {
        Refused::Store(StoreError::Database(e))
    }
}

impl Store {
    /// Copies this SQLite store, as of one instant, into `to` (which must
    /// not exist: a backup never overwrites), and says what the copy holds.
    pub fn backup_to(&mut self, to: &Path) -> Result<Copied, StoreError> {
        if to.exists() {
            return Err(StoreError::Backup(format!(
                "{} exists; a backup is written to a new file",
                to.display()
            )));
        }
        let partial = to.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let made = self.conn.backup_into(&partial).map_err(StoreError::from);
        let described = made.and_then(|()| {
            let mut copy = Store::over(Conn::open_sqlite(&partial, Durability::Durable)?);
            copy.describe(&partial)
        });
        match described {
            Ok(copied) => {
                std::fs::rename(&partial, to).map_err(|e| {
                    StoreError::Backup(format!("move the backup to {}: {e}", to.display()))
                })?;
                sync_directory_of(to);
                Ok(copied)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    /// The copy's size, version, last line, samples and audit log.
    fn describe(&mut self, file: &Path) -> Result<Copied, StoreError> {
        let last_line = self
            .conn
            .query_row(
                "SELECT a.id, l.day, l.seq, l.issued_at_ms FROM bill_lines l
                   JOIN accounts a ON a.ref = l.account_ref
                  ORDER BY l.issued_at_ms DESC, l.day DESC, l.seq DESC LIMIT 1",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, from_ms(r.get(3)?))),
            )
            .optional()?;
        let samples: i64 = self
            .conn
            .query_row("SELECT count(*) FROM samples", (), |r| r.get(0))?;
        let audit = self.audit().verify()?.map_err(|broken| {
            StoreError::Backup(format!("the copy's audit log is broken: {broken}"))
        })?;
        // Checkpointed into the file itself: the copy is one file.
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(Copied {
            bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
            schema_version: self.schema_version()?,
            last_line,
            samples: u64::try_from(samples).unwrap_or(0),
            audit,
        })
    }

    /// Restores the backup `from` into `to`, a SQLite file that does not
    /// exist or holds no account, line or sample. The backup is checked
    /// first: SQLite's integrity check, a schema this build knows (an
    /// older one is migrated when the service starts on it), an audit log
    /// whose chain holds. Only then is it copied to `to`, whole or not at all.
    pub fn restore(from: &Path, to: &Path) -> Result<Copied, Refused> {
        let target = to.display().to_string();
        if to.exists() && std::fs::metadata(to).map(|m| m.len()).unwrap_or(0) > 0 {
            let existing = Store::over(Conn::open_sqlite(to, Durability::Durable)?);
            for table in ["accounts", "bill_lines", "samples"] {
                let n: Option<i64> = existing
                    .conn
                    .query_row(&format!("SELECT count(*) FROM {table}"), (), |r| r.get(0))
                    .optional()
                    .unwrap_or(None);
                if n.unwrap_or(0) > 0 {
                    return Err(Refused::TargetNotEmpty {
                        target,
                        what: format!("{} rows in {table}", n.unwrap_or(0)),
                    });
                }
            }
        }
        let source = from.display().to_string();
        let backup = Store::over(Conn::open_sqlite(from, Durability::Durable)?);
        let problems = backup.conn.integrity_check()?;
        if problems != ["ok"] {
            return Err(Refused::Corrupt {
                from: source,
                problems: problems.join("; "),
            });
        }
        let found = backup.schema_version()?;
        let known = super::SCHEMA_VERSION;
        if found > known {
            return Err(Refused::TooNew {
                from: source,
                found,
                known,
            });
        }
        // The chain is checked on the copy about to be installed, migrated
        // to this build's schema as the service would.
        let partial = to.with_extension("restoring");
        let _ = std::fs::remove_file(&partial);
        backup.conn.backup_into(&partial)?;
        drop(backup);
        let checked = (|| {
            let mut copy = Store::open(&partial, Durability::Durable)?;
            match copy.audit().verify()? {
                Ok(_) => Ok(copy.describe(&partial)?),
                Err(broken) => Err(Refused::AuditBroken {
                    from: source.clone(),
                    broken: broken.to_string(),
                }),
            }
        })();
        match checked {
            Ok(copied) => {
                for stale in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{stale}", to.display()));
                }
                std::fs::rename(&partial, to).map_err(|e| {
                    StoreError::Backup(format!("move the restored store to {target}: {e}"))
                })?;
                sync_directory_of(to);
                Ok(copied)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}

/// The directory's entry for a file just renamed into it, made durable.
fn sync_directory_of(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}
