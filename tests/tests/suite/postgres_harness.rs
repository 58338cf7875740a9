//! The throwaway PostgreSQL server the store's PostgreSQL tests will run on
//! (issue 10): it starts from nothing, takes connections, enforces what
//! billing exactly once will lean on, and is gone when dropped.
//!
//! Skipped, with a notice, on a machine without PostgreSQL, unless
//! `CORE_METER_REQUIRE_POSTGRES=1` (as in `.ci/run`).

use e2e::postgres::{binaries, TempPostgres};

#[test]
fn a_throwaway_postgres_starts_takes_connections_and_is_gone_when_dropped() {
    if binaries().is_none() {
        testkit::skip(
            "POSTGRES",
            "no PostgreSQL on this machine (apt-get install postgresql)",
        );
        return;
    }
    let pg = TempPostgres::start().expect("a throwaway PostgreSQL starts");
    let port = pg.port;
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1").unwrap(), "2");
    // A unique key refuses a second row: what a second replica's bill line
    // for the same (account, day, seq) will meet.
    pg.psql(
        "postgres",
        "CREATE TABLE lines (account TEXT, day DATE, seq INT, PRIMARY KEY (account, day, seq));
         INSERT INTO lines VALUES ('acme', '2026-11-24', 1)",
    )
    .unwrap();
    let twice = pg.psql(
        "postgres",
        "INSERT INTO lines VALUES ('acme', '2026-11-24', 1)",
    );
    assert!(
        twice
            .as_ref()
            .is_err_and(|e| e.to_string().contains("duplicate key")),
        "{twice:?}"
    );
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server stopped with its handle"
    );
}
