//! sample_storage: what a sample costs on disk once a fleet has pushed for
//! days, SQLite and PostgreSQL side by side in one run.
//!
//! N nodes push one sample an hour each (with a seq and a version, as agents
//! do) for D days, through `Store::ingest` in batches of 10,000, hour by
//! hour. PostgreSQL appends each sample to its node's row of the day, so
//! each hour rewrites the day's rows: after each hour the bench runs a plain
//! `VACUUM` of `sample_days`, which is what autovacuum does on this table
//! (its partitions vacuum once 2% of their rows are dead, and an hour's
//! pushes rewrite every row of the day). The database's size is taken after
//! each day (SQLite: file and WAL after a checkpoint; PostgreSQL:
//! `pg_database_size` after a `CHECKPOINT`). The figure that matters for a
//! year of retention is the growth per sample once the first day is in.
//!
//! ```text
//! cargo bench -p e2e --bench sample_storage -- [--nodes 10000] [--days 7] [--database sqlite|postgres]
//! ```

// Bench figures, not money: floats are fine here.
#![allow(clippy::float_arithmetic)]

use std::time::Instant;

use aggregator::config::Database;
use aggregator::store::{Durability, Incoming, Store};
use chrono::{DateTime, TimeDelta, Utc};
use e2e::postgres::TempPostgres;
use shared::sample::AgeLimits;

/// Samples per ingest batch.
const BATCH: usize = 10_000;

/// Nodes per account.
const NODES_PER_ACCOUNT: u32 = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: u32| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| {
                v.replace('_', "").parse().expect("a whole number")
            })
    };
    let (nodes, days) = (value("--nodes", 10_000), value("--days", 7));
    assert!(nodes >= 1 && days >= 2, "--nodes N >= 1 and --days D >= 2");
    println!(
        "sample_storage: {nodes} nodes x 24 hourly samples x {days} days, {NODES_PER_ACCOUNT} nodes an account; {}",
        e2e_machine()
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let pg = TempPostgres::start_durable().expect("a throwaway PostgreSQL");
    println!("{}", pg.settings());
    let stores = [
        (
            "SQLite",
            Database::Sqlite(dir.path().join("core-meter.sqlite")),
        ),
        (
            "PostgreSQL",
            Database::Postgres(pg.create_database("storage")),
        ),
    ];
    // `--database sqlite|postgres` measures one; both by default.
    let only = args
        .iter()
        .position(|a| a == "--database")
        .and_then(|i| args.get(i + 1))
        .map(|d| match d.as_str() {
            "sqlite" => "SQLite",
            "postgres" => "PostgreSQL",
            other => panic!("--database sqlite|postgres, not {other}"),
        });
    let mut rows = Vec::new();
    for (name, db) in stores
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
    {
        let sizes = load(db, nodes, days);
        rows.push((name, sizes));
    }
    let per_day = f64::from(nodes) * 24.0;
    println!();
    println!("| database | after day 1, B/sample | growth per sample, days 2 to {days} | size after {days} days, MiB | B/sample over {days} days | load, samples/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (sizes, secs)) in &rows {
        let first = sizes[0] as f64;
        let last = *sizes.last().expect("a day") as f64;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            first / per_day,
            (last - first) / (per_day * f64::from(days - 1)),
            last / (1024.0 * 1024.0),
            last / (per_day * f64::from(days)),
            per_day * f64::from(days) / secs,
        );
    }
}

/// Loads the days hour by hour; returns the size after each day and the
/// seconds spent ingesting.
fn load(db: &Database, nodes: u32, days: u32) -> (Vec<u64>, f64) {
    let mut store = Store::connect(db, Durability::Durable).expect("open store");
    let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().expect("an instant");
    let accounts: Vec<String> = (0..nodes.div_ceil(NODES_PER_ACCOUNT))
        .map(|a| format!("acct-{a:05}"))
        .collect();
    for id in &accounts {
        store
            .accounts()
            .create_account(id, start - TimeDelta::days(30))
            .expect("create account");
    }
    let names: Vec<String> = (0..nodes).map(|n| format!("node-{n:06}")).collect();
    let limits = AgeLimits::default();
    let mut sizes = Vec::new();
    let mut secs = 0.0;
    for day in 0..days {
        for hour in 0..24 {
            let hour_start = start + TimeDelta::hours(i64::from(day * 24 + hour));
            let pushes: Vec<Incoming<'_>> = (0..nodes)
                .map(|n| {
                    let at = hour_start + TimeDelta::seconds(i64::from(n % 600));
                    Incoming {
                        account: &accounts[(n / NODES_PER_ACCOUNT) as usize],
                        cluster: "prod",
                        node: &names[n as usize],
                        cores: Some(8 << (n % 4)),
                        at: Some(at),
                        seq: Some(i64::from(day * 24 + hour)),
                        agent_version: Some("0.4.0"),
                        received_at: at + TimeDelta::seconds(1),
                    }
                })
                .collect();
            let started = Instant::now();
            for batch in pushes.chunks(BATCH) {
                store.ingest().insert(batch, &limits).expect("ingest");
            }
            secs += started.elapsed().as_secs_f64();
            if let Database::Postgres(url) = db {
                client(url)
                    .batch_execute("VACUUM sample_days")
                    .expect("VACUUM");
            }
        }
        let size = size_of(db);
        println!(
            "  {}: day {}: {:.1} MiB",
            label(db),
            day + 1,
            size as f64 / (1024.0 * 1024.0)
        );
        sizes.push(size);
    }
    (sizes, secs)
}

fn label(db: &Database) -> &'static str {
    match db {
        Database::Sqlite(_) => "SQLite",
        Database::Postgres(_) => "PostgreSQL",
    }
}

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}

/// The database's bytes on disk: SQLite's file and WAL after a
/// checkpoint, PostgreSQL's `pg_database_size` after a `CHECKPOINT`.
fn size_of(db: &Database) -> u64 {
    match db {
        Database::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).expect("open database");
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .expect("checkpoint");
            let wal = path.with_extension("sqlite-wal");
            std::fs::metadata(path).expect("the file").len()
                + std::fs::metadata(&wal).map_or(0, |m| m.len())
        }
        Database::Postgres(url) => {
            let mut client = client(url);
            client.batch_execute("CHECKPOINT").expect("CHECKPOINT");
            let bytes: i64 = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .expect("pg_database_size")
                .get(0);
            u64::try_from(bytes).expect("a size")
        }
    }
}

fn e2e_machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ"))
}
