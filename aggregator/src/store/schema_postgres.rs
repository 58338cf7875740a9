//! The schema's version on PostgreSQL, which keeps it in a table
//! (`core_meter_schema`) where SQLite has `user_version`. The migrations are
//! one text for both (`migrations.rs`); the tables and columns are SQLite's,
//! so the store's SQL is one text: integers are BIGINT (every stored integer
//! is an `i64`), bytes BYTEA, SQLite's row ids an identity column
//! (`rejections` names its own `rowid`).

use super::db::{Conn, DbError};

/// The version the database is at (0 for an empty one).
pub fn applied(conn: &Conn) -> Result<usize, DbError> {
    let exists: bool = conn.query_row(
        "SELECT to_regclass('core_meter_schema') IS NOT NULL",
        (),
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT CAST(coalesce(max(version), 0) AS BIGINT) FROM core_meter_schema",
        (),
        |r| r.get(0),
    )
}

/// Records that the database is at `version`, inside the caller's
/// transaction (the table is made by the first migration's caller).
pub fn record(conn: &Conn, version: usize) -> Result<(), DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS core_meter_schema (
            version        BIGINT PRIMARY KEY,
            applied_at     TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    conn.execute(
        "INSERT INTO core_meter_schema (version) VALUES (?1)",
        [version],
    )?;
    Ok(())
}
