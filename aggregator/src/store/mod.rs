//! The aggregator's storage: one SQLite file in WAL mode (the embedded
//! default) or one PostgreSQL database shared by several replicas, migrated
//! on open. A write is durable when the call returns.

mod accounts;
pub mod audit;
mod backup;
mod bill_sets;
mod bills;
mod clusters;
mod connection;
mod console;
mod copy;
pub mod db;
mod images;
mod issued;
mod log_storage;
mod migrations;
mod names;
pub use names::LegacyNames;
mod notice_outbox;
mod notices;
mod orders;
mod outbox;
mod pages;
mod quiet_steps;
mod readers;
mod retention;
mod samples;
mod schema_postgres;
mod sessions;
mod statements;
mod states;

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;

use crate::config::{Database, NoticeChannels};

use db::{Conn, DbError, Dialect, OptionalExtension};

pub use accounts::Account;
pub use backup::{Copied, Refused};
pub use bill_sets::{Terms, Window};
pub use clusters::ClusterIdentity;
pub use connection::{panic_message, Connection};
pub use console::{AccountFacts, Backlog, CoreDay, NodeSeen};
pub use copy::{CopyError, CopyReport};
pub use images::{
    Authorizations, Authorized, Holder, ImagesDay, InventoryImage, ListOutcome, NewImage, Pack,
    Pause, Receipt, Refund, PRODUCTS,
};
pub use issued::TokenKind;
pub use log_storage::{
    LogOrder, LogStorageDay, LogStorageView, NewLogOrder, Purge, Reported, Usage, UsageDay,
};
pub use migrations::NAMES_REPORTED_AT;
pub use notice_outbox::{DueNotice, NoticeChannel, NOTICE_ERROR_MAX_CHARS};
pub use notices::{Notice, NoticeDelivery, Recipient};
pub use orders::{BalanceEntry, Contact, NewContact, NewOrder, Order, MAX_ORDER_CORES};
pub use outbox::{Delivery, OutboxStatus};
pub use pages::{LineKey, Listed, SampleKey};
pub use readers::{
    AccountTokenRole, IssuedReaderToken, ReaderIdentity, ReaderToken, MAX_READER_TOKENS,
    READER_NAME_MAX_CHARS,
};
pub use retention::{reads_from, Horizon, PruneTarget, Pruned, PRUNE_BATCH_ROWS};
pub use samples::{AuditSample, Incoming, Outcome};
pub use sessions::{Opened, Session, SessionOwner, SessionRole, SESSION_HOURS};
pub use statements::{MonthFacts, OrderEntry, RefundEntry};
pub use states::{StateChange, StepOutcome};

/// The schema version this build migrates databases to.
pub const SCHEMA_VERSION: usize = migrations::VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0:?} already exists")]
    AccountExists(String),
    #[error("account {0:?} does not exist")]
    UnknownAccount(String),
    #[error("cluster {1:?} of account {0:?} already exists")]
    ClusterExists(String, String),
    #[error("cluster {1:?} of account {0:?} does not exist")]
    UnknownCluster(String, String),
    #[error("account {0:?} has no reader token {1}")]
    UnknownReaderToken(String, i64),
    #[error("account {0:?} has no order {1}")]
    UnknownOrder(String, i64),
    /// A cluster name outside its domain (`shared::domain::check_name`).
    #[error("{0}")]
    InvalidName(String),
    /// A supplied cluster token not in the generated form; the reason never quotes it.
    #[error("token must be cmc_ followed by 64 lowercase hex characters; {0}")]
    InvalidToken(String),
    /// A token whose hash was issued before: held now, rotated away or
    /// revoked, by this cluster or any other. Which cluster or account is
    /// not said: the caller may not know that one's token.
    #[error("token is already in use or was issued before; a token is issued only once, so supply a new one or let the service generate one")]
    TokenInUse,
    /// An account id outside its domain (`shared::domain::check_name`).
    #[error("{0}")]
    InvalidAccountId(String),
    #[error(transparent)]
    Rule(#[from] shared::overage::RuleError),
    #[error("database {path} was written by a newer core-meter (schema version {found}, this build knows {known})")]
    TooNew {
        path: String,
        found: usize,
        known: usize,
    },
    /// Retention pruned samples that a day's figures read; its bill lines remain.
    #[error("the raw samples of {day} were pruned by retention (samples before {pruned_before} are no longer kept; the first whole day kept is {first_kept_day}); its bill lines remain")]
    SamplesPruned {
        day: chrono::NaiveDate,
        first_kept_day: chrono::NaiveDate,
        pruned_before: DateTime<Utc>,
    },
    /// A value the request gave that the lifecycle refuses (422 naming the field).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A backup or restore that cannot be made (a file in the way, a
    /// copy that does not check).
    #[error("{0}")]
    Backup(String),
    /// A request that contradicts what is recorded (409 with its own code).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// The account's data was deleted when its service ended; its bill lines remain.
    #[error("the samples of account {account:?} before {before} were deleted with its data when its service ended (SPEC section 8); its bill lines remain")]
    DataDeleted {
        account: String,
        before: DateTime<Utc>,
    },
    /// A panic while this request held a connection; its transaction was
    /// rolled back and the connection goes on serving.
    #[error("a panic while holding the {connection} connection: {message}")]
    Panicked {
        connection: &'static str,
        message: String,
    },
    /// Something stored that this build cannot read back.
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] DbError),
}

/// Why the database cannot store anything just now. The failed transaction
/// was rolled back, and the same write may well succeed later: this is the
/// operator's to fix (free space, replace a disk), not a bug, so the API
/// answers it 503 with its cause rather than an opaque 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// `SQLITE_FULL`: the database's file system (or its quota) has no room.
    DiskFull,
    /// `SQLITE_IOERR`: the disk failed a read, write or sync.
    DiskError,
    /// PostgreSQL could not be reached (refused, lost, shutting down); the
    /// next statement connects again.
    Unreachable,
}

impl Unwritable {
    /// What is wrong, for an operator reading a response or a log.
    pub fn cause(self) -> &'static str {
        match self {
            Unwritable::DiskFull => "the database's disk is full",
            Unwritable::DiskError => "the database's disk failed to read or write (I/O error)",
            Unwritable::Unreachable => "the database does not answer (connection refused or lost)",
        }
    }
}

impl StoreError {
    /// The disk trouble behind this error, if that is what it is.
    pub fn unwritable(&self) -> Option<Unwritable> {
        match self {
            StoreError::Database(e) => e.unwritable(),
            _ => None,
        }
    }
}

/// How hard a commit works to survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk when it returns (`synchronous = FULL`): the service.
    Durable,
    /// Commits are not synced: throw-away databases such as `replay`'s.
    Scratch,
}

pub struct Store {
    conn: Conn,
    /// Account id to its row reference; only hits are cached.
    account_refs: HashMap<String, i64>,
    /// Node ids by account, cluster and node name; nested so that a lookup
    /// borrows the names instead of allocating a key.
    node_ids: FxHashMap<i64, FxHashMap<String, FxHashMap<String, i64>>>,
    /// The delivery rows notices issued through this connection get.
    notice_channels: NoticeChannels,
    /// The image-scan authorizations a trial may use without buying.
    trial_image_authorizations: u64,
    /// Log storage's price and a trial's allowance.
    log_storage: shared::logs::Terms,
    /// Whether ingest keeps each node's last seen (`nodes.last_seen_ms`):
    /// always, but in `replay`'s scratch store, which only prints bills.
    keeps_last_seen: bool,
    /// PostgreSQL: the months whose partition of `sample_days` this
    /// connection has seen made, by the day number of their first day.
    months: rustc_hash::FxHashSet<i64>,
}

/// The store as one job sees it: each handle carries only the methods its
/// callers need (`store.ingest()`, `store.billing()`, …), so a caller sees
/// its own part of the store and no other.
macro_rules! handles {
    ($($(#[$doc:meta])* $getter:ident => $handle:ident;)*) => {
        $(
            $(#[$doc])*
            pub struct $handle<'a>(&'a mut Store);

            impl std::ops::Deref for $handle<'_> {
                type Target = Store;
                fn deref(&self) -> &Store {
                    self.0
                }
            }

            impl std::ops::DerefMut for $handle<'_> {
                fn deref_mut(&mut self) -> &mut Store {
                    self.0
                }
            }
        )*

        impl Store {
            $(
                $(#[$doc])*
                pub fn $getter(&mut self) -> $handle<'_> {
                    $handle(self)
                }
            )*
        }
    };
}

handles! {
    /// What agents' pushes need: storing samples, knowing a cluster token.
    ingest => Ingest;
    /// The billing run, the lifecycle's step and retention.
    billing => Billing;
    /// Accounts, licences, caps, clusters, contacts, orders, the ledger,
    /// notices and reader tokens: what the admin API changes and shows.
    accounts => Accounts;
    /// The admin token, reader tokens by hash, and every token ever issued.
    tokens => Tokens;
    /// The two delivery queues: bill lines and notices.
    delivery => Deliveries;
    /// What reports, exports and the audit read: bill lines, samples,
    /// rejections, names outside their domain.
    reads => Reads;
    /// The image-scan add-on: packs, the inventory, authorizations,
    /// receipts, refunds, product pauses.
    images => Images;
    /// The log-storage add-on: orders, its life, usage reports and purges.
    log_storage => LogStorage;
    /// Monthly statements: a month's lines, orders and ledger; the key
    /// that signs them.
    statements => Statements;
    /// The console's sessions.
    sessions => Sessions;
    /// The audit log: entries appended, read, verified.
    audit => Audit;
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path, durability: Durability) -> Result<Store, StoreError> {
        let conn = Conn::open_sqlite(path, durability)?;
        let mut store = Store::over(conn);
        store.migrate(&path.display().to_string())?;
        Ok(store)
    }

    /// A store in memory, gone when dropped: `replay`'s, whose bills are
    /// all it keeps. No file to write pages to at each commit.
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::open(Path::new(":memory:"), Durability::Scratch)
    }

    /// Opens the store at `database`: a SQLite file as [`Store::open`], or a
    /// PostgreSQL database (which must exist), migrated on connecting.
    /// PostgreSQL's durability is the server's; `durability` is SQLite's.
    pub fn connect(database: &Database, durability: Durability) -> Result<Store, StoreError> {
        match database {
            Database::Sqlite(path) => Store::open(path, durability),
            Database::Postgres(url) => {
                let mut store = Store::over(Conn::postgres(url)?);
                store.migrate(&database.to_string())?;
                Ok(store)
            }
        }
    }

    fn over(conn: Conn) -> Store {
        Store {
            conn,
            account_refs: HashMap::new(),
            node_ids: FxHashMap::default(),
            notice_channels: NoticeChannels::default(),
            trial_image_authorizations: u64::from(shared::images::TRIAL_AUTHORIZATIONS),
            log_storage: shared::logs::Terms::default(),
            keeps_last_seen: true,
            months: rustc_hash::FxHashSet::default(),
        }
    }

    /// Which database this store is on.
    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    fn migrate(&mut self, path: &str) -> Result<(), StoreError> {
        let dialect = self.conn.dialect();
        // A write transaction: replicas starting together migrate one at a time.
        let tx = self.conn.transaction()?;
        let applied = match dialect {
            Dialect::Sqlite => tx.query_row("PRAGMA user_version", (), |r| r.get(0))?,
            Dialect::Postgres => schema_postgres::applied(&tx)?,
        };
        let known = migrations::VERSION;
        if applied > known {
            return Err(StoreError::TooNew {
                path: path.to_string(),
                found: applied,
                known,
            });
        }
        for (version, sql) in migrations::pending(dialect, applied) {
            tx.execute_batch(&sql)?;
            if dialect == Dialect::Postgres {
                schema_postgres::record(&tx, version)?;
            }
        }
        if dialect == Dialect::Sqlite {
            tx.execute_batch(&format!("PRAGMA user_version = {known}"))?;
        }
        if applied < migrations::NAMES_REPORTED_AT {
            names::report_names_outside_domain(&tx)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Which delivery rows notices issued from now on get (the service's
    /// configured channels; none by default, as in `replay`).
    pub fn set_notice_channels(&mut self, channels: NoticeChannels) {
        self.notice_channels = channels;
    }

    /// The image-scan authorizations a trial may use without buying (the
    /// setting `billing.trial_image_authorizations`; 100 unless set).
    pub fn set_trial_image_authorizations(&mut self, n: u64) {
        self.trial_image_authorizations = n;
    }

    /// Log storage's price per GB and month and a trial's GB (the settings
    /// `billing.log_storage_price` and `billing.trial_log_storage_gb`).
    pub fn set_log_storage_terms(&mut self, terms: shared::logs::Terms) {
        self.log_storage = terms;
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        Ok(match self.conn.dialect() {
            Dialect::Sqlite => self
                .conn
                .query_row("PRAGMA user_version", (), |r| r.get(0))?,
            Dialect::Postgres => schema_postgres::applied(&self.conn)?,
        })
    }

    /// Caps the database at its current size, as a full disk would (`None`
    /// lifts the cap): the next write that needs a new page fails with
    /// `SQLITE_FULL`. Only for tests that cannot mount a small file system.
    #[cfg(test)]
    pub(crate) fn cap_size_for_tests(&self, capped: bool) {
        let pages: i64 = if capped { 1 } else { 1_073_741_823 };
        // A cap below the current size is raised to it by SQLite.
        self.conn
            .as_sqlite()
            .expect("a SQLite store")
            .query_row(&format!("PRAGMA max_page_count = {pages}"), (), |_| Ok(()))
            .unwrap();
    }

    /// Puts the connection back in order after a panic while it was held:
    /// the open transaction (if any) rolled back, the caches forgotten (they
    /// may name rows the rollback removed).
    pub(crate) fn after_panic(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.rollback() {
                tracing::error!(error = %e, "rolling back after a panic failed");
            }
        }
        self.account_refs.clear();
        self.node_ids.clear();
    }

    fn account_ref(&mut self, id: &str) -> Result<Option<i64>, StoreError> {
        if let Some(r) = self.account_refs.get(id) {
            return Ok(Some(*r));
        }
        let found: Option<i64> = self
            .conn
            .query_row("SELECT ref FROM accounts WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        if let Some(r) = found {
            self.account_refs.insert(id.to_string(), r);
        }
        Ok(found)
    }

    fn require_account(&mut self, id: &str) -> Result<i64, StoreError> {
        self.account_ref(id)?
            .ok_or_else(|| StoreError::UnknownAccount(id.to_string()))
    }
}

/// PostgreSQL's advisory lock key of the 02:00 job's lead ("corebill").
const BILLING_LEAD: i64 = 0x636f_7265_6269_6c6c;

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("stored instants are in range")
}

impl Billing<'_> {
    /// The instant of the latest billing run, if there was one.
    pub fn last_billing_run(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let last: Option<i64> = self.0.conn.query_row(
            "SELECT last_run_ms FROM billing_state WHERE id = 1",
            (),
            |r| r.get(0),
        )?;
        Ok(last.map(from_ms))
    }

    /// Takes the lead of the 02:00 job if no other replica holds it (always
    /// on SQLite, which has one service); held until [`Store::end_billing_lead`]
    /// or until this connection closes.
    pub fn try_lead_billing(&self) -> Result<bool, StoreError> {
        Ok(self.0.conn.try_session_lock(BILLING_LEAD)?)
    }

    pub fn end_billing_lead(&self) -> Result<(), StoreError> {
        Ok(self.0.conn.session_unlock(BILLING_LEAD)?)
    }

    /// Records a finished run; the instant only moves forward, so overlapping runs agree.
    pub fn finish_billing_run(&mut self, run_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.0.conn.execute(
            "UPDATE billing_state SET last_run_ms = greatest(last_run_ms, ?1) WHERE id = 1",
            [run_at.timestamp_millis()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_applies_the_migrations_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-meter.sqlite");
        let store = Store::open(&path, Durability::Durable).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::VERSION);
        drop(store);
        let store = Store::open(&path, Durability::Durable).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::VERSION);
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", (), |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-meter.sqlite");
        drop(Store::open(&path, Durability::Durable).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path, Durability::Durable).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_full_or_failing_disk_is_told_apart_from_other_errors() {
        let failure = |code| {
            StoreError::Database(DbError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            )))
        };
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_FULL).unwritable(),
            Some(Unwritable::DiskFull)
        );
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_IOERR_WRITE).unwritable(),
            Some(Unwritable::DiskError)
        );
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_IOERR_FSYNC).unwritable(),
            Some(Unwritable::DiskError)
        );
        assert_eq!(failure(rusqlite::ffi::SQLITE_CONSTRAINT).unwritable(), None);
        assert_eq!(failure(rusqlite::ffi::SQLITE_BUSY).unwritable(), None);
        assert_eq!(StoreError::TokenInUse.unwritable(), None);
    }

    #[test]
    fn a_capped_database_fails_a_write_as_a_full_disk_and_takes_it_once_the_cap_is_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite"), Durability::Durable).unwrap();
        store.cap_size_for_tests(true);
        let write = |s: &Store| -> Result<(), StoreError> {
            s.conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS ballast (b BLOB); INSERT INTO ballast VALUES (zeroblob(100000));",
            )?;
            Ok(())
        };
        let err = write(&store).unwrap_err();
        assert_eq!(err.unwritable(), Some(Unwritable::DiskFull), "{err}");
        store.cap_size_for_tests(false);
        write(&store).unwrap();
    }
}
