//! A store connection that threads take turns on. A panic while one holds it
//! (a bug in a handler or a job) is caught where the connection is held: its
//! open transaction is rolled back, its caches are dropped, its health is
//! checked (and the connection opened again when the check fails), and the
//! caller gets [`StoreError::Panicked`]. The next caller finds a working
//! connection: nothing is ever poisoned.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use super::db::Dialect;
use super::{Store, StoreError};

/// Opens the connection again, as it was first opened.
type Reopen = Box<dyn Fn() -> Result<Store, StoreError> + Send + Sync>;

pub struct Connection {
    store: Mutex<Store>,
    /// What the connection is for, in logs and errors: "writer", "reader", "tokens".
    name: &'static str,
    dialect: Dialect,
    reopen: Reopen,
    panics: AtomicU64,
    /// Set when a panic left the connection unusable and opening it again failed.
    broken: AtomicBool,
    /// The fault hook: the next use panics while it holds the connection.
    panic_on_next_use: AtomicBool,
}

impl Connection {
    pub fn new(
        store: Store,
        name: &'static str,
        reopen: impl Fn() -> Result<Store, StoreError> + Send + Sync + 'static,
    ) -> Connection {
        Connection {
            dialect: store.dialect(),
            store: Mutex::new(store),
            name,
            reopen: Box::new(reopen),
            panics: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            panic_on_next_use: AtomicBool::new(false),
        }
    }

    /// A connection that cannot be opened again (tests, one-shot tools): a
    /// panic that leaves it unusable marks it broken.
    pub fn single(store: Store, name: &'static str) -> Connection {
        Connection::new(store, name, move || {
            Err(StoreError::Corrupt(format!(
                "the {name} connection cannot be opened again"
            )))
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Which database the connection is on (it never changes).
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Runs `work` on the connection, waiting for it if another holds it.
    pub fn with<T>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        self.run(&mut store, work)
    }

    /// Runs `work` on the connection on a thread of tokio's blocking pool,
    /// off the async threads. A panic inside it is caught (`with`): the
    /// caller gets `StoreError::Panicked`, the connection goes on serving.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.clone();
        tokio::task::spawn_blocking(move || connection.with(work))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Panicked {
                    connection: self.name,
                    message: e.to_string(),
                })
            })
    }

    /// Runs `work` here, on the caller's (async) thread, when the database
    /// answers in microseconds (SQLite, from its page cache) and the
    /// connection is free now; `None` otherwise (PostgreSQL's client blocks
    /// on the network; use `blocking`).
    pub fn try_inline<T>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        match self.dialect {
            Dialect::Sqlite => self.try_with(work),
            Dialect::Postgres => None,
        }
    }

    /// Runs `work` only if the connection is free now; `None` when another holds it.
    pub fn try_with<T>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let mut store = match self.store.try_lock() {
            Ok(store) => store,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.run(&mut store, work))
    }

    fn run<T>(
        &self,
        store: &mut Store,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if self.panic_on_next_use.swap(false, Ordering::SeqCst) {
                panic!("fault hook: a panic in the {} connection", self.name);
            }
            work(store)
        }));
        match outcome {
            Ok(result) => result,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(connection = self.name, panic = %message, "a panic while holding a store connection; its transaction was rolled back and the service goes on");
                self.recover(store);
                Err(StoreError::Panicked {
                    connection: self.name,
                    message,
                })
            }
        }
    }

    /// After a panic: roll back, forget the caches, check the connection,
    /// and open it again if the check fails.
    fn recover(&self, store: &mut Store) {
        store.after_panic();
        match store.schema_version() {
            Ok(_) => {}
            // A full disk or a lost server is not the panic's doing: the
            // connection itself is fine, and readiness reports the rest.
            Err(e) if e.unwritable().is_some() => {}
            Err(e) => match (self.reopen)() {
                Ok(fresh) => {
                    tracing::warn!(connection = self.name, error = %e, "the connection failed its check after a panic; opened it again");
                    *store = fresh;
                }
                Err(reopen) => {
                    tracing::error!(connection = self.name, error = %e, %reopen, "the connection failed its check after a panic and cannot be opened again; liveness fails so the service is restarted");
                    self.broken.store(true, Ordering::SeqCst);
                }
            },
        }
    }

    /// Panics caught on this connection since it was opened.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Whether a panic left this connection unusable beyond repair; only a
    /// restart helps then, so liveness says so.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// The fault hook behind the tests of panic containment: the next use
    /// of this connection panics while it holds it. Nothing in the service
    /// calls it.
    pub fn panic_on_next_use(&self) {
        self.panic_on_next_use.store(true, Ordering::SeqCst);
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use chrono::Utc;

    fn connection(dir: &std::path::Path) -> Connection {
        let path = dir.join("db.sqlite");
        let store = Store::open(&path, Durability::Durable).unwrap();
        Connection::new(store, "test", move || {
            Store::open(&path, Durability::Durable)
        })
    }

    #[test]
    fn a_panic_inside_a_transaction_is_rolled_back_and_the_next_use_works() {
        let dir = tempfile::tempdir().unwrap();
        let c = connection(dir.path());
        let err = c
            .with(|s| -> Result<(), StoreError> {
                s.conn.begin()?;
                s.accounts().create_account("half-done", Utc::now())?;
                panic!("a bug in the middle of a write");
            })
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Panicked { connection: "test", message } if message == "a bug in the middle of a write"),
            "{err}"
        );
        assert_eq!(c.panics(), 1);
        assert!(!c.is_broken());
        let accounts = c.with(|s| s.accounts().all()).unwrap();
        assert!(accounts.is_empty(), "the half-done write was rolled back");
        c.with(|s| s.accounts().create_account("next", Utc::now()))
            .unwrap();
    }

    #[test]
    fn a_connection_a_panic_left_unusable_that_cannot_be_opened_again_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = Store::open(&path, Durability::Scratch).unwrap();
        let reopened = path.clone();
        let c = Connection::new(store, "test", move || {
            Store::open(&reopened, Durability::Scratch)
        });
        // A bug that panics after wrecking what the connection stands on.
        let wrecked = path.clone();
        let err = c
            .with(move |_| -> Result<(), StoreError> {
                std::fs::write(&wrecked, vec![0x55u8; 8192]).unwrap();
                panic!("a bug that also wrecked the file")
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Panicked { .. }), "{err}");
        assert!(
            c.is_broken(),
            "the check failed and so did opening it again"
        );
    }

    #[test]
    fn a_connection_that_fails_its_check_after_a_panic_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let elsewhere = dir.path().join("fresh.sqlite");
        let store = Store::open(&path, Durability::Scratch).unwrap();
        let c = Connection::new(store, "test", move || {
            Store::open(&elsewhere, Durability::Scratch)
        });
        let wrecked = path.clone();
        c.with(move |_| -> Result<(), StoreError> {
            std::fs::write(&wrecked, vec![0x55u8; 8192]).unwrap();
            panic!("a bug that also wrecked the file")
        })
        .unwrap_err();
        assert!(!c.is_broken());
        c.with(|s| s.accounts().create_account("after", Utc::now()))
            .unwrap();
    }

    #[test]
    fn the_fault_hook_panics_once_while_the_connection_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let c = connection(dir.path());
        c.panic_on_next_use();
        assert!(matches!(
            c.with(|s| s.schema_version()),
            Err(StoreError::Panicked { .. })
        ));
        assert!(c.with(|s| s.schema_version()).is_ok());
        assert!(c.try_with(|s| s.schema_version()).unwrap().is_ok());
    }
}
