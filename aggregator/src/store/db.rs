//! One connection to either database: SQLite (the embedded default) or
//! PostgreSQL (several replicas). The store's SQL is written once, in the
//! dialect both understand (`ON CONFLICT`, `RETURNING`, `greatest`/`least`,
//! `CAST(... AS BIGINT)`), with `?N` placeholders that become `$N` for
//! PostgreSQL. Values cross as [`Value`] and come back through
//! [`FromColumn`], so the store never names a driver type.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use postgres::types::{IsNull, ToSql as PgToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// PostgreSQL's advisory lock key that every write transaction takes
/// ("corewrit"): exclusively, except ingest's, which share it.
pub const WRITE_LOCK: i64 = 0x636f_7265_7772_6974;

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("query returned no rows")]
    NoRows,
    #[error("the connection to PostgreSQL was lost inside a transaction; it was not committed")]
    LostInTransaction,
    #[error("column {column}: {message}")]
    Conversion { column: usize, message: String },
    /// The TLS settings of a `postgres://` URL cannot be used.
    #[error("database: {0}")]
    Tls(String),
    /// What only one database does, asked of the other.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// PostgreSQL's own message and detail, not the driver's "db error".
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            // The driver's own text is terse ("error performing TLS
            // handshake"); its causes say why.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

impl From<rusqlite::Error> for super::StoreError {
    fn from(e: rusqlite::Error) -> super::StoreError {
        super::StoreError::Database(DbError::Sqlite(e))
    }
}

impl DbError {
    /// The disk trouble behind this error, if that is what it is: SQLite's
    /// full disk and I/O errors, PostgreSQL's disk_full (53100) and
    /// io_error (58030), or a server that does not answer.
    pub fn unwritable(&self) -> Option<super::Unwritable> {
        use super::Unwritable;
        if let DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) = self {
            return match e.code {
                rusqlite::ErrorCode::DiskFull => Some(Unwritable::DiskFull),
                rusqlite::ErrorCode::SystemIoFailure => Some(Unwritable::DiskError),
                _ => None,
            };
        }
        if self.is_unreachable() {
            return Some(Unwritable::Unreachable);
        }
        match self.sql_state() {
            Some("53100") => Some(Unwritable::DiskFull),
            Some("58030") => Some(Unwritable::DiskError),
            _ => None,
        }
    }

    /// A unique key or primary key refused the write.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// The database could not be reached: PostgreSQL's connection refused,
    /// lost or shut down (SQLSTATE class 08, 57P01 to 57P03).
    pub fn is_unreachable(&self) -> bool {
        match self {
            DbError::LostInTransaction => true,
            DbError::Postgres(e) => {
                e.is_closed()
                    || match e.code() {
                        Some(code) => {
                            let code = code.code();
                            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
                        }
                        // No server error: the socket failed (refused, reset).
                        None => e.as_db_error().is_none(),
                    }
            }
            _ => false,
        }
    }

    /// PostgreSQL gave up the transaction to let another go on (a deadlock
    /// or a serialization failure): run again, it may well succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.sql_state(), Some("40P01" | "40001"))
    }

    /// PostgreSQL's SQLSTATE, if this is its error.
    pub fn sql_state(&self) -> Option<&str> {
        match self {
            DbError::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Turns "no row" into `None`, as `rusqlite::OptionalExtension` does.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, DbError>;
}

impl<T> OptionalExtension<T> for Result<T, DbError> {
    fn optional(self) -> Result<Option<T>, DbError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A parameter as both drivers take it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    /// A PostgreSQL array (`bigint[]`), for statements over a set of rows
    /// (`unnest`); SQLite has no arrays and refuses it.
    Ints(&'a [Option<i64>]),
    /// A PostgreSQL array (`text[]`), as [`Value::Ints`].
    Texts(&'a [Option<&'a str>]),
}

/// `strings` as a [`Value::Texts`] array takes them.
pub fn texts(strings: &[String]) -> Vec<Option<&str>> {
    strings.iter().map(|s| Some(s.as_str())).collect()
}

/// What can be bound to a placeholder.
pub trait ToParam {
    fn to_param(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl ToParam for $t {
            fn to_param(&self) -> Value<'_> {
                Value::Int(i64::try_from(*self).expect("stored integers fit in 64 bits"))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, u64, usize);

impl ToParam for bool {
    fn to_param(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}
impl ToParam for str {
    fn to_param(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToParam for String {
    fn to_param(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl ToParam for [u8] {
    fn to_param(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl ToParam for Vec<u8> {
    fn to_param(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<const N: usize> ToParam for [u8; N] {
    fn to_param(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl<T: ToParam + ?Sized> ToParam for &T {
    fn to_param(&self) -> Value<'_> {
        (**self).to_param()
    }
}
impl<T: ToParam> ToParam for Option<T> {
    fn to_param(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_param(),
            None => Value::Null,
        }
    }
}
impl ToParam for Value<'_> {
    fn to_param(&self) -> Value<'_> {
        *self
    }
}

/// A statement's parameters: `()`, an array, a tuple or `params![...]`.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for () {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}
impl<T: ToParam, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToParam::to_param).collect()
    }
}
impl Params for &[&dyn ToParam] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_param()).collect()
    }
}
impl Params for Vec<Value<'_>> {
    fn values(&self) -> Vec<Value<'_>> {
        self.clone()
    }
}

macro_rules! tuple_params {
    ($($n:tt $t:ident),+) => {
        impl<$($t: ToParam),+> Params for ($($t,)+) {
            fn values(&self) -> Vec<Value<'_>> {
                vec![$(self.$n.to_param()),+]
            }
        }
    };
}
tuple_params!(0 A);
tuple_params!(0 A, 1 B);
tuple_params!(0 A, 1 B, 2 C);
tuple_params!(0 A, 1 B, 2 C, 3 D);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J, 10 K);
tuple_params!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J, 10 K, 11 L);

/// `params![a, b, ...]`: parameters of mixed types.
#[macro_export]
macro_rules! params {
    () => { () };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::db::ToParam),+] as &[&dyn $crate::store::db::ToParam]
    };
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Ints(_) | Value::Texts(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "arrays are bound on PostgreSQL only".into(),
                ))
            }
        }))
    }
}

impl PgToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
            // Checked: an element written as the wrong width would be garbage.
            Value::Ints(a) => a.to_sql_checked(ty, out),
            Value::Texts(a) => a.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// One column's value as read.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What a column can be read as.
pub trait FromColumn: Sized {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String>;
}

macro_rules! int_column {
    ($($t:ty),*) => {$(
        impl FromColumn for $t {
            fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
                match cell {
                    Cell::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} does not fit in {}", stringify!($t))),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_column!(i64, i32, u32, u16, u8, u64, usize);

impl FromColumn for bool {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Int(i) => Ok(i != 0),
            other => Err(format!("expected a boolean, found {other:?}")),
        }
    }
}
impl FromColumn for String {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Text(s) => Ok(s.to_string()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromColumn for Vec<u8> {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Blob(b) => Ok(b.to_vec()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromColumn for Owned {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        Ok(match cell {
            Cell::Null => Owned::Null,
            Cell::Int(i) => Owned::Int(i),
            Cell::Real(f) => Owned::Real(f),
            Cell::Text(t) => Owned::Text(t.to_string()),
            Cell::Blob(b) => Owned::Blob(b.to_vec()),
        })
    }
}

impl ToParam for Owned {
    /// A real is never stored (money is text); it is bound as its text.
    fn to_param(&self) -> Value<'_> {
        match self {
            Owned::Null | Owned::Real(_) => Value::Null,
            Owned::Int(i) => Value::Int(*i),
            Owned::Text(t) => Value::Text(t),
            Owned::Blob(b) => Value::Blob(b),
        }
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Null => Ok(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// A column position, as rusqlite's `get` takes it.
pub trait ColumnIndex {
    fn index(&self) -> usize;
}
impl ColumnIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One result row of either driver.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
    Owned(&'a [Owned]),
}

/// A SQLite value copied out of its statement.
#[derive(Debug, Clone)]
pub enum Owned {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

enum RowData {
    Sqlite(Vec<Owned>),
    Postgres(postgres::Row),
}

/// Rows read in full, walked as rusqlite's `Rows` are.
pub struct Rows {
    rows: std::vec::IntoIter<RowData>,
    current: Option<RowData>,
}

impl Rows {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>, DbError> {
        self.current = self.rows.next();
        Ok(self.current.as_ref().map(|d| match d {
            RowData::Sqlite(values) => Row::Owned(values),
            RowData::Postgres(r) => Row::Postgres(r),
        }))
    }
}

impl Row<'_> {
    pub fn get<I: ColumnIndex, T: FromColumn>(&self, idx: I) -> Result<T, DbError> {
        let column = idx.index();
        let cell = self.cell(column)?;
        T::from_cell(cell).map_err(|message| DbError::Conversion { column, message })
    }

    fn cell(&self, column: usize) -> Result<Cell<'_>, DbError> {
        match self {
            Row::Sqlite(r) => Ok(match r.get_ref(column)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(i) => Cell::Int(i),
                ValueRef::Real(f) => Cell::Real(f),
                ValueRef::Text(t) => {
                    Cell::Text(std::str::from_utf8(t).map_err(|e| DbError::Conversion {
                        column,
                        message: e.to_string(),
                    })?)
                }
                ValueRef::Blob(b) => Cell::Blob(b),
            }),
            Row::Owned(values) => Ok(
                match values.get(column).ok_or_else(|| DbError::Conversion {
                    column,
                    message: "no such column".into(),
                })? {
                    Owned::Null => Cell::Null,
                    Owned::Int(i) => Cell::Int(*i),
                    Owned::Real(f) => Cell::Real(*f),
                    Owned::Text(t) => Cell::Text(t),
                    Owned::Blob(b) => Cell::Blob(b),
                },
            ),
            Row::Postgres(r) => {
                let ty = r
                    .columns()
                    .get(column)
                    .ok_or_else(|| DbError::Conversion {
                        column,
                        message: "no such column".into(),
                    })?
                    .type_()
                    .clone();
                let cell = match ty {
                    Type::INT8 => r.try_get::<_, Option<i64>>(column)?.map(Cell::Int),
                    Type::INT4 => r
                        .try_get::<_, Option<i32>>(column)?
                        .map(|i| Cell::Int(i.into())),
                    Type::INT2 => r
                        .try_get::<_, Option<i16>>(column)?
                        .map(|i| Cell::Int(i.into())),
                    Type::BOOL => r
                        .try_get::<_, Option<bool>>(column)?
                        .map(|b| Cell::Int(b.into())),
                    Type::FLOAT8 => r.try_get::<_, Option<f64>>(column)?.map(Cell::Real),
                    Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                        r.try_get::<_, Option<&str>>(column)?.map(Cell::Text)
                    }
                    Type::BYTEA => r.try_get::<_, Option<&[u8]>>(column)?.map(Cell::Blob),
                    other => {
                        return Err(DbError::Conversion {
                            column,
                            message: format!("columns of type {other} are not read by the store"),
                        })
                    }
                };
                Ok(cell.unwrap_or(Cell::Null))
            }
        }
    }
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConn {
    url: String,
    /// Always `Some` but while dropped (see `Drop`).
    client: RefCell<Option<postgres::Client>>,
    in_transaction: std::cell::Cell<bool>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
}

impl Drop for PgConn {
    /// The client closes its connection by blocking on its own runtime,
    /// which panics on a thread that drives async tasks: close it on a
    /// thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            let closing = std::thread::spawn(move || drop(client));
            let _ = closing.join();
        }
    }
}

/// Set on every PostgreSQL session: a replica that stops in the middle of a
/// transaction (stuck, or cut off) must not hold the write lock for long,
/// and a write waits a bounded time for it.
const SESSION_SETTINGS: &str =
    "SET idle_in_transaction_session_timeout = '60s'; SET lock_timeout = '60s'";

fn connect_postgres(url: &str) -> Result<postgres::Client, DbError> {
    let (url, tls) = postgres_tls(url)?;
    let mut client = postgres::Client::connect(&url, tls)?;
    client.batch_execute(SESSION_SETTINGS)?;
    Ok(client)
}

/// The URL as the driver reads it (without `sslrootcert`, which it does not
/// know, and with `application_name=core-meter` unless the URL names one),
/// and the `sslrootcert` file, if any.
pub fn driver_url(url: &str) -> (String, Option<String>) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut root_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root_file = Some(path.to_string()),
            _ => kept.push(pair),
        }
    }
    if !kept.iter().any(|p| p.starts_with("application_name=")) {
        kept.push("application_name=core-meter");
    }
    (format!("{base}?{}", kept.join("&")), root_file)
}

/// The URL the driver reads and the TLS it speaks. TLS is rustls, and the
/// server's certificate is always verified, against the PEM bundle of
/// `sslrootcert=FILE` (libpq's name; taken out of the URL here, as the driver
/// does not know it) or else the system's roots. `sslmode` is the driver's:
/// `require` (TLS or nothing), `prefer` (the default: TLS when the server
/// offers it) or `disable`. Sessions are named `core-meter`
/// (`application_name`) unless the URL names them.
pub fn postgres_tls(
    url: &str,
) -> Result<(String, tokio_postgres_rustls::MakeRustlsConnect), DbError> {
    let (url, root_file) = driver_url(url);
    let mut roots = rustls::RootCertStore::empty();
    match &root_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .map_err(|e| DbError::Tls(format!("sslrootcert: cannot read {path}: {e}")))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| DbError::Tls(format!("sslrootcert: {path} is not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("sslrootcert: {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(DbError::Tls(format!(
                    "sslrootcert: {path} holds no certificate"
                )));
            }
        }
        None => {
            // Certificates the system store cannot parse are skipped, as
            // every client does; none at all only matters if TLS is used.
            let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DbError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((url, tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

impl PgConn {
    /// The client, connected again if its connection was lost (the server
    /// restarted, a failover, an idle transaction cut off): the statement
    /// that found it lost failed; the next one reconnects.
    fn client(&self) -> Result<std::cell::RefMut<'_, postgres::Client>, DbError> {
        let mut slot = self.client.borrow_mut();
        if slot.as_ref().is_some_and(postgres::Client::is_closed) {
            if self.in_transaction.get() {
                // Never go on in autocommit what was meant as one transaction:
                // it fails, and its rollback ends it.
                return Err(DbError::LostInTransaction);
            }
            let fresh = connect_postgres(&self.url)?;
            tracing::warn!("the connection to PostgreSQL was lost; connected again");
            // Drop the dead client off this thread (its drop may block).
            if let Some(dead) = slot.replace(fresh) {
                let _ = std::thread::spawn(move || drop(dead)).join();
            }
            self.statements.borrow_mut().clear();
            self.in_transaction.set(false);
        }
        Ok(std::cell::RefMut::map(slot, |c| {
            c.as_mut().expect("the client is only taken when dropped")
        }))
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, DbError> {
        // Connected (again) first: a reconnection empties the cache.
        let mut client = self.client()?;
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let prepared = client.prepare(&numbered(sql)).inspect_err(|e| {
            // A statement PostgreSQL refuses is a bug of ours: say which.
            tracing::error!(error = %pg_message(e), statement = sql, "PostgreSQL refused a statement");
        })?;
        let mut cache = self.statements.borrow_mut();
        // Statements built from a varying text (a batch's row count) must not grow it forever.
        if cache.len() >= 512 {
            cache.clear();
        }
        cache.insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }
}

/// `?N` and bare `?` placeholders as PostgreSQL's `$N`; quoted text is left alone.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    let mut next = 1;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
            out.push(c);
        } else if c == '?' && !quoted {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            if digits.is_empty() {
                out.push_str(&format!("${next}"));
                next += 1;
            } else {
                out.push('$');
                out.push_str(&digits);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The values as the PostgreSQL driver takes them.
fn pg_params<'v>(values: &'v [Value<'_>]) -> Vec<&'v (dyn PgToSql + Sync)> {
    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

/// A connection to either database.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conn({:?})", self.dialect())
    }
}

impl Conn {
    /// Opens (creating if needed) the SQLite file at `path`: WAL and full
    /// syncs for the service's, an in-memory journal and no syncs for a
    /// scratch database (thrown away).
    pub fn open_sqlite(
        path: &std::path::Path,
        durability: super::Durability,
    ) -> Result<Conn, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (journal, sync) = match durability {
            super::Durability::Durable => ("WAL", "FULL"),
            super::Durability::Scratch => ("MEMORY", "OFF"),
        };
        conn.pragma_update(None, "journal_mode", journal)?;
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 16 MiB of page cache keeps the sample indexes' hot pages in memory.
        conn.pragma_update(None, "cache_size", -16_384)?;
        Conn::sqlite(conn)
    }

    /// Copies this SQLite database as of one instant into `to`, a new file,
    /// with SQLite's online backup: the pages are read in one read
    /// transaction, which in WAL mode blocks no writer, so the copy holds
    /// every transaction committed before it began and none after.
    pub fn backup_into(&self, to: &std::path::Path) -> Result<(), DbError> {
        let Conn::Sqlite(source) = self else {
            return Err(DbError::Unsupported(
                "a PostgreSQL database is backed up with its own tools (pg_basebackup and WAL archiving)",
            ));
        };
        let mut target = rusqlite::Connection::open(to)?;
        let backup = rusqlite::backup::Backup::new(source, &mut target)?;
        // All pages in one step (-1): one snapshot, not pages of several.
        // Busy only while another connection holds an exclusive lock (a
        // checkpoint's moment); tried again for up to a minute.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => {
                    return Err(DbError::Unsupported(
                        "the database stayed locked for a minute; the backup was not made",
                    ))
                }
            }
        }
        drop(backup);
        target.close().map_err(|(_, e)| e)?;
        Ok(())
    }

    /// SQLite's own check of every page and index: `ok`, or what is wrong.
    pub fn integrity_check(&self) -> Result<Vec<String>, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare("PRAGMA integrity_check")?;
                let rows = stmt.query_map((), |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Conn::Postgres(_) => Err(DbError::Unsupported(
                "an integrity check of a PostgreSQL database is the server's (amcheck)",
            )),
        }
    }

    /// A SQLite connection, with `greatest` and `least` as PostgreSQL has them.
    pub fn sqlite(conn: rusqlite::Connection) -> Result<Conn, DbError> {
        use rusqlite::functions::FunctionFlags;
        let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
        for (name, pick_greater) in [("greatest", true), ("least", false)] {
            conn.create_scalar_function(name, -1, flags, move |ctx| {
                // NULLs are ignored, as in PostgreSQL; all NULL gives NULL.
                let mut best: Option<i64> = None;
                for i in 0..ctx.len() {
                    if let Some(v) = ctx.get::<Option<i64>>(i)? {
                        best = Some(match best {
                            Some(b) if (v > b) == pick_greater => v,
                            Some(b) => b,
                            None => v,
                        });
                    }
                }
                Ok(best)
            })?;
        }
        // Room for the multi-row inserts of every size next to the rest.
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Conn::Sqlite(conn))
    }

    pub fn postgres(url: &str) -> Result<Conn, DbError> {
        let client = connect_postgres(url)?;
        Ok(Conn::Postgres(Box::new(PgConn {
            url: url.to_string(),
            client: RefCell::new(Some(client)),
            in_transaction: std::cell::Cell::new(false),
            statements: RefCell::new(HashMap::new()),
        })))
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize, DbError> {
        let values = params.values();
        match self {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter()))?),
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                let n = pg.client()?.execute(&stmt, &refs)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Every row, each through `f`, in order.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<std::vec::IntoIter<Result<T, DbError>>, DbError> {
        let values = params.values();
        let mut out = Vec::new();
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r)));
                }
            }
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                for r in pg.client()?.query(&stmt, &refs)? {
                    out.push(f(&Row::Postgres(&r)));
                }
            }
        }
        Ok(out.into_iter())
    }

    /// Every row, read in full.
    pub fn query(&self, sql: &str, params: impl Params) -> Result<Rows, DbError> {
        let values = params.values();
        let data = match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(columns);
                    for i in 0..columns {
                        row.push(match r.get_ref(i)? {
                            ValueRef::Null => Owned::Null,
                            ValueRef::Integer(v) => Owned::Int(v),
                            ValueRef::Real(v) => Owned::Real(v),
                            ValueRef::Text(t) => {
                                Owned::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            ValueRef::Blob(b) => Owned::Blob(b.to_vec()),
                        });
                    }
                    out.push(RowData::Sqlite(row));
                }
                out
            }
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                pg.client()?
                    .query(&stmt, &refs)?
                    .into_iter()
                    .map(RowData::Postgres)
                    .collect()
            }
        };
        Ok(Rows {
            rows: data.into_iter(),
            current: None,
        })
    }

    /// Whether no transaction is open on this connection.
    pub fn is_autocommit(&self) -> bool {
        match self {
            Conn::Sqlite(c) => c.is_autocommit(),
            Conn::Postgres(pg) => !pg.in_transaction.get(),
        }
    }

    /// Opens a write transaction by hand; [`Conn::commit`] or
    /// [`Conn::rollback`] ends it. Prefer [`Conn::transaction`].
    ///
    /// It takes the database's one write lock at once: SQLite's own
    /// (`BEGIN IMMEDIATE`), or on PostgreSQL the transaction-scoped advisory
    /// lock [`WRITE_LOCK`], which every replica's write transactions share.
    /// So write transactions run one at a time on either database, and what
    /// the store relies on (a day's lines read and written by one writer, a
    /// balance read and debited, an account stepped once per run) holds
    /// across replicas. Statements outside a transaction, reads and single
    /// atomic updates, do not wait for it.
    pub fn begin(&self) -> Result<(), DbError> {
        match self.dialect() {
            Dialect::Sqlite => self.execute_batch("BEGIN IMMEDIATE")?,
            Dialect::Postgres => {
                self.execute_batch("BEGIN")?;
                self.set_in_transaction(true);
                if let Err(e) = self.query_row(
                    "SELECT pg_advisory_xact_lock(?1)::TEXT",
                    [WRITE_LOCK],
                    |_| Ok(()),
                ) {
                    let _ = self.rollback();
                    return Err(e);
                }
            }
        }
        self.set_in_transaction(true);
        Ok(())
    }

    /// Opens the write transaction of ingest. On SQLite it is
    /// [`Conn::begin`]'s: one writer. On PostgreSQL it shares
    /// [`WRITE_LOCK`] with the other replicas' ingest, so they write side
    /// by side, and waits for any other write transaction to end (a billing
    /// batch, an account's step), which waits for it: a billing batch still
    /// counts every sample committed when it takes the lock. Ingest
    /// transactions keep to each other by their unique keys and by taking
    /// row locks in one order.
    pub fn begin_ingest(&self) -> Result<(), DbError> {
        match self.dialect() {
            Dialect::Sqlite => self.begin(),
            Dialect::Postgres => {
                // One round trip: the lock is a constant. Plans are made
                // for this transaction's values: a plan kept for a statement
                // over arrays (`unnest`) was made when the tables were
                // small, and would scan a grown table whole.
                // Marked open only once sent: a lost connection is
                // connected again for it, as for `BEGIN` alone.
                if let Err(e) = self.execute_batch(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock_shared({WRITE_LOCK});
                     SET LOCAL plan_cache_mode = force_custom_plan"
                )) {
                    let _ = self.rollback();
                    return Err(e);
                }
                self.set_in_transaction(true);
                Ok(())
            }
        }
    }

    pub fn commit(&self) -> Result<(), DbError> {
        self.execute_batch("COMMIT")?;
        self.set_in_transaction(false);
        Ok(())
    }

    pub fn rollback(&self) -> Result<(), DbError> {
        let rolled = self.execute_batch("ROLLBACK");
        self.set_in_transaction(false);
        rolled
    }

    fn set_in_transaction(&self, open: bool) {
        if let Conn::Postgres(pg) = self {
            pg.in_transaction.set(open);
        }
    }

    /// Every row through `f` as it is read, without holding them all.
    pub fn for_each(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let values = params.values();
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(r) = rows.next()? {
                    f(&Row::Sqlite(r))?;
                }
            }
            Conn::Postgres(pg) => {
                use postgres::fallible_iterator::FallibleIterator;
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                let mut client = pg.client()?;
                let mut rows = client.query_raw(&stmt, refs)?;
                while let Some(r) = rows.next()? {
                    f(&Row::Postgres(&r))?;
                }
            }
        }
        Ok(())
    }

    /// The first row through `f`; [`DbError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let values = params.values();
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)),
                    None => Err(DbError::NoRows),
                }
            }
            Conn::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                match pg.client()?.query_opt(&stmt, &refs)? {
                    Some(r) => f(&Row::Postgres(&r)),
                    None => Err(DbError::NoRows),
                }
            }
        }
    }

    /// A statement to run (cached by its text), as `rusqlite`'s `prepare_cached`.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>, DbError> {
        Ok(Stmt {
            conn: self,
            sql: sql.to_string(),
        })
    }

    /// Several statements without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => Ok(pg.client()?.batch_execute(sql)?),
        }
    }

    /// A transaction that is rolled back unless committed. SQLite's takes
    /// the write lock at once, so that a read-then-write never has to retry.
    ///
    /// Inside a transaction already (an audited change runs a store method
    /// inside its own, `audit.rs`), it is a savepoint of that one: its
    /// commit releases the savepoint, its drop undoes what it did, and the
    /// outer transaction commits or rolls back the whole.
    pub fn transaction(&mut self) -> Result<Tx<'_>, DbError> {
        if !self.is_autocommit() {
            return self.nested();
        }
        self.begin()?;
        Ok(Tx {
            conn: self,
            done: false,
            savepoint: None,
        })
    }

    /// A savepoint of the transaction open on this connection, as a [`Tx`].
    fn nested(&mut self) -> Result<Tx<'_>, DbError> {
        let name = savepoint_name();
        self.execute_batch(&format!("SAVEPOINT {name}"))?;
        Ok(Tx {
            conn: self,
            done: false,
            savepoint: Some(name),
        })
    }

    /// [`Conn::begin_ingest`]'s transaction, rolled back unless committed.
    pub fn ingest_transaction(&mut self) -> Result<Tx<'_>, DbError> {
        self.begin_ingest()?;
        Ok(Tx {
            conn: self,
            done: false,
            savepoint: None,
        })
    }

    /// A read-only transaction over one snapshot, which takes no write lock:
    /// several reads that must agree (a statement's parts) see the database
    /// as of its first read on SQLite (a deferred transaction in WAL mode),
    /// as of its start on PostgreSQL (repeatable read). Dropped, it ends.
    /// Inside a write transaction it is a savepoint of it, which sees what
    /// that transaction sees.
    pub fn snapshot(&mut self) -> Result<Tx<'_>, DbError> {
        if !self.is_autocommit() {
            return self.nested();
        }
        match self.dialect() {
            Dialect::Sqlite => self.execute_batch("BEGIN DEFERRED")?,
            Dialect::Postgres => {
                self.execute_batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?
            }
        }
        self.set_in_transaction(true);
        Ok(Tx {
            conn: self,
            done: false,
            savepoint: None,
        })
    }

    /// Tries PostgreSQL's session advisory lock `key` without waiting; true
    /// when this connection holds it. Always true on SQLite (one process).
    pub fn try_session_lock(&self, key: i64) -> Result<bool, DbError> {
        match self.dialect() {
            Dialect::Sqlite => Ok(true),
            Dialect::Postgres => {
                self.query_row("SELECT pg_try_advisory_lock(?1)", [key], |r| r.get(0))
            }
        }
    }

    pub fn session_unlock(&self, key: i64) -> Result<(), DbError> {
        if self.dialect() == Dialect::Postgres {
            self.query_row("SELECT pg_advisory_unlock(?1)", [key], |_| Ok(()))?;
        }
        Ok(())
    }
}

/// A prepared statement's text on its connection.
pub struct Stmt<'c> {
    conn: &'c Conn,
    sql: String,
}

impl Stmt<'_> {
    pub fn execute(&mut self, params: impl Params) -> Result<usize, DbError> {
        self.conn.execute(&self.sql, params)
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.conn.query_row(&self.sql, params, f)
    }

    pub fn query(&mut self, params: impl Params) -> Result<Rows, DbError> {
        self.conn.query(&self.sql, params)
    }

    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<std::vec::IntoIter<Result<T, DbError>>, DbError> {
        self.conn.query_map(&self.sql, params, f)
    }
}

/// A savepoint's name no other on the connection has.
fn savepoint_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("sp{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An open transaction; dropping it uncommitted rolls it back. Opened
/// inside another, it is a savepoint of that one.
pub struct Tx<'c> {
    conn: &'c mut Conn,
    done: bool,
    savepoint: Option<String>,
}

impl Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), DbError> {
        match &self.savepoint {
            Some(name) => self
                .conn
                .execute_batch(&format!("RELEASE SAVEPOINT {name}"))?,
            None => self.conn.commit()?,
        }
        self.done = true;
        Ok(())
    }

    /// A savepoint inside this transaction; dropping it unreleased undoes
    /// what was done since, and the transaction goes on.
    pub fn savepoint(&self) -> Result<Savepoint<'_>, DbError> {
        let name = savepoint_name();
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        Ok(Savepoint {
            conn: self.conn,
            name,
            done: false,
        })
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            match &self.savepoint {
                Some(name) => {
                    let _ = self.conn.execute_batch(&format!(
                        "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
                    ));
                }
                None => {
                    let _ = self.conn.rollback();
                }
            }
        }
    }
}

pub struct Savepoint<'c> {
    conn: &'c Conn,
    name: String,
    done: bool,
}

impl Deref for Savepoint<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Savepoint<'_> {
    pub fn commit(mut self) -> Result<(), DbError> {
        self.conn
            .execute_batch(&format!("RELEASE SAVEPOINT {}", self.name))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch(&format!(
                "ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}",
                self.name
            ));
        }
    }
}

/// Whether a `postgres://` URL keeps its traffic off the network or
/// encrypted, read as the driver reads it: `sslmode=require` (its last
/// value), or every host (and `hostaddr`) a loopback address or a Unix
/// socket. A URL the driver cannot read passes here and fails to connect,
/// naming why.
pub fn postgres_is_private(url: &str) -> bool {
    use postgres::config::{Host, SslMode};
    let (driver_url, _) = driver_url(url);
    let Ok(config) = driver_url.parse::<postgres::Config>() else {
        return true;
    };
    if config.get_ssl_mode() == SslMode::Require {
        return true;
    }
    config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => crate::config::is_loopback_host(name),
    }) && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT ?, ? FROM t WHERE a = '?'"),
            "SELECT $1, $2 FROM t WHERE a = '?'"
        );
        assert_eq!(numbered("b = ?12 AND c = ?3"), "b = $12 AND c = $3");
    }

    #[test]
    fn sqlite_has_greatest_and_least_that_skip_nulls() {
        let conn = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
        let got: (i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT greatest(3, NULL, 7), least(?1, 2), greatest(NULL, NULL)",
                [5],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(got, (7, 2, None));
    }
}
