//! Benchmark: one billing run over a day of a large fleet, next to a bare `GROUP BY` over the same samples.
//!
//! Run with `cargo bench -p e2e --bench billing_run` (100,000 nodes x 24
//! hourly samples = 2.4 million samples over 1,000 accounts), `-- --nodes N`
//! for another fleet, or `-- --scale` for one table row each at 1,000, 10,000
//! and 100,000 nodes. The database is loaded through the store's own schema
//! (`Store::ingest` in chunks of 10,000, as `replay` does, on a scratch
//! database: loading is timed apart and is not the figure under test). Then,
//! each in a fresh child process of this binary so that its peak resident
//! memory (`VmHWM`) is its own and not the loading's:
//!
//! - the floor: `SELECT account_ref, hour, SUM(cores) ... GROUP BY` over the
//!   samples table, on a plain connection with the store's page cache size;
//! - the figure under test: `run_billing` once, at the day's 02:00 due time
//!   in the billing zone, on the store opened as the service opens it
//!   (`Durability::Durable`: WAL, `synchronous = FULL`).
//!
//! Targets (issue 8, item 2): billing at most 10 s and at most 3x the bare
//! query at 100,000 nodes; peak memory bounded, not growing with the number of
//! samples. Then the database's size on disk per stored sample after a WAL
//! checkpoint and after `VACUUM` (item 4). The bench exits non-zero when the
//! default fleet misses a time target.
//!
//! With `-- --database postgres` (issue 10) the fleet is loaded into a
//! database on a throwaway PostgreSQL server the bench starts (PostgreSQL's
//! durable defaults: `fsync` and `synchronous_commit` on; `--pg-no-fsync` for
//! the test helpers' `fsync = off`; the load vacuums `sample_days` after
//! each hour and runs `VACUUM (ANALYZE)` before the children, which is what
//! autovacuum does between the hourly pushes of a day in service), the
//! floor is the same `GROUP BY` through
//! the `postgres` client, and the size is `pg_database_size` (catalogs
//! included) after a `CHECKPOINT` and after `VACUUM FULL`. With
//! `--replicas N` (PostgreSQL only) the billing child opens N stores, as N
//! replicas would, and calls `run_billing` at the same 02:00 from all N at
//! once on N threads: the figure is the wall time until the last returns
//! (each run's own time is printed too), and the peak memory is the child's,
//! for all N. Each run is unguarded, as the store's correctness does not rest
//! on the billing lead: this is the worst case, every replica doing the whole
//! run. With `--lead` each first takes the billing lead
//! (`Store::try_lead_billing`) as the service's 02:00 job does, and a replica
//! without it returns at once. With `--pg-statements` the server loads
//! `pg_stat_statements` and the bench prints the statements that took its
//! time during the billing child (the run and the lifecycle steps after it).
//! On any database the bench then checks in the bill lines that
//! every account's day was billed exactly once (one daily line, no
//! adjustment) and exits non-zero if not.

// Timings and ratios are measurements, never money: floating point is right here.
#![allow(clippy::float_arithmetic)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use aggregator::billing::run_billing;
use aggregator::config::BillingConfig;
use aggregator::config::Database;
use aggregator::store::{Durability, Incoming, Store};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use shared::overage::Licence;
use shared::sample::AgeLimits;

use e2e::postgres::TempPostgres;

/// Samples per `Store::ingest` call while loading, as `replay` uses.
const LOAD_CHUNK: usize = 10_000;
/// Cores a node may have; node `i` picks one by a hash of `i`.
const CORE_SIZES: [u32; 8] = [2, 4, 8, 16, 32, 48, 64, 96];
/// Billing target at the default fleet, in seconds.
const TARGET_SECS: f64 = 10.0;
/// Billing target at the default fleet, as a multiple of the bare query.
const TARGET_RATIO: f64 = 3.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.replace('_', "").parse::<u32>().expect("a whole number"))
    };
    let accounts = value("--accounts").unwrap_or(1_000);
    let postgres = match args
        .iter()
        .position(|a| a == "--database")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => panic!("--database sqlite|postgres, not {other}"),
    };
    let replicas = value("--replicas").unwrap_or(1);
    assert!(
        replicas >= 1 && (replicas == 1 || postgres),
        "--replicas N needs N >= 1, and N > 1 needs --database postgres"
    );
    let on = On {
        postgres,
        durable: !args.iter().any(|a| a == "--pg-no-fsync"),
        statements: args.iter().any(|a| a == "--pg-statements"),
        replicas,
        lead: args.iter().any(|a| a == "--lead"),
    };
    let fleets: Vec<u32> = if args.iter().any(|a| a == "--scale") {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![value("--nodes").unwrap_or(100_000)]
    };

    print_machine(accounts, &on);
    let mut rows = Vec::new();
    for &nodes in &fleets {
        rows.push(measure(nodes, accounts, &on));
    }
    println!();
    println!("| database | nodes | samples | load s | bare query s | billing s | billing / bare | bare peak RSS MiB | billing peak RSS MiB | DB MiB (checkpointed) | B/sample | DB MiB (vacuumed) | B/sample vacuumed | billed once | loadavg after |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.2}x | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            on.label(),
            r.nodes,
            r.samples,
            r.load_secs,
            r.bare.secs,
            r.bill.secs,
            r.bill.secs / r.bare.secs,
            mib(r.bare.hwm_kib * 1024),
            mib(r.bill.hwm_kib * 1024),
            mib(r.checkpointed_bytes),
            r.checkpointed_bytes as f64 / r.samples as f64,
            mib(r.vacuumed_bytes),
            r.vacuumed_bytes as f64 / r.samples as f64,
            if r.billed_once() { "yes" } else { "NO" },
            r.loadavg,
        );
    }
    if let Some(r) = rows.iter().find(|r| !r.billed_once()) {
        eprintln!(
            "billing_run: FAILED at {} nodes: {} bill lines for {} (account, day) pairs, {} adjustments; every account's day must be billed exactly once",
            r.nodes, r.bill.db_lines, r.bill.db_account_days, r.bill.db_adjustments
        );
        std::process::exit(1);
    }
    println!();
    println!("targets (100,000 nodes): billing <= {TARGET_SECS} s and <= {TARGET_RATIO}x the bare query; peak RSS roughly flat with the fleet");
    if let Some(r) = rows
        .iter()
        .find(|r| r.nodes == 100_000 && r.accounts == 1_000)
    {
        let ratio = r.bill.secs / r.bare.secs;
        let met = r.bill.secs <= TARGET_SECS && ratio <= TARGET_RATIO;
        println!(
            "billing_run: 100,000 nodes billed in {:.3} s, {ratio:.2}x the bare query: {}",
            r.bill.secs,
            if met { "targets met" } else { "TARGET MISSED" }
        );
        if !met {
            std::process::exit(1);
        }
    }
}

/// Where the bench runs: the database, and the billing runs at once.
struct On {
    postgres: bool,
    /// PostgreSQL's durable defaults (fsync on), or the test helpers' fsync=off.
    durable: bool,
    replicas: u32,
    /// Each run first takes the billing lead, as the service's 02:00 job does.
    lead: bool,
    /// Load `pg_stat_statements` and print where the server's time went.
    statements: bool,
}

impl On {
    fn label(&self) -> String {
        if self.postgres {
            format!(
                "PostgreSQL{}, {} replica(s){}",
                if self.durable { "" } else { " (fsync=off)" },
                self.replicas,
                if self.lead {
                    " with the billing lead"
                } else {
                    ""
                }
            )
        } else {
            "SQLite".to_string()
        }
    }
}

/// One fleet's figures.
struct Row {
    nodes: u32,
    accounts: u32,
    samples: u64,
    load_secs: f64,
    bare: ChildReport,
    bill: ChildReport,
    checkpointed_bytes: u64,
    vacuumed_bytes: u64,
    loadavg: String,
}

impl Row {
    /// Every account's day billed exactly once: one daily line each, no adjustment.
    fn billed_once(&self) -> bool {
        self.bill.db_lines == u64::from(self.accounts)
            && self.bill.db_account_days == u64::from(self.accounts)
            && self.bill.db_adjustments == 0
    }
}

fn measure(nodes: u32, accounts: u32, on: &On) -> Row {
    let accounts = accounts.min(nodes);
    println!();
    println!("== {nodes} nodes x 24 hourly samples over {accounts} accounts, day {DAY} in Asia/Shanghai ==");
    let dir = tempfile::Builder::new()
        .prefix("billing-run-")
        .tempdir_in(
            std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from),
        )
        .expect("temporary directory");
    // The server lives until the row is measured.
    let postgres = on.postgres.then(|| {
        let extra = if on.statements {
            TempPostgres::STATEMENTS
        } else {
            ""
        };
        TempPostgres::start_with_options(on.durable, extra).expect("a throwaway PostgreSQL")
    });
    let db = match &postgres {
        Some(pg) => {
            println!("{}", pg.settings());
            Database::Postgres(pg.create_database("billing"))
        }
        None => Database::Sqlite(dir.path().join("core-meter.sqlite")),
    };

    let started = Instant::now();
    // On PostgreSQL each hour's pushes rewrite the day's rows; the bench
    // vacuums `sample_days` after each hour, which is what autovacuum does
    // between the hourly pushes in service (its partitions vacuum at 2% of
    // rows dead), so the day's table is as compact as the service's.
    let mut vacuum = postgres.as_ref().map(|pg| pg.client("billing"));
    let samples = load(&db, nodes, accounts, || {
        if let Some(client) = vacuum.as_mut() {
            client
                .batch_execute("VACUUM sample_days")
                .expect("VACUUM sample_days");
        }
    });
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "load: {samples} samples in {load_secs:.1} s ({:.0} samples/s), through Store::ingest in chunks of {LOAD_CHUNK} on a scratch database{}",
        samples as f64 / load_secs,
        if postgres.is_some() { ", a VACUUM of sample_days after each hour" } else { "" }
    );

    // The hourly vacuums leave the last hour's dead row versions and no
    // statistics; autovacuum (2% of a partition's rows dead) clears them
    // and analyzes long before 02:00. The bench does the same, timed apart.
    if let Some(pg) = &postgres {
        let started = Instant::now();
        pg.client("billing")
            .batch_execute("VACUUM (ANALYZE)")
            .expect("VACUUM (ANALYZE)");
        println!(
            "maintenance: VACUUM (ANALYZE) in {:.1} s, as autovacuum does before 02:00",
            started.elapsed().as_secs_f64()
        );
    }

    // The floor first, so both read a database the page cache already holds.
    let bare = spawn_child("bare", &db, 1);
    println!(
        "bare query: {:.3} s, {} groups, sum {} core-samples; peak RSS {:.1} MiB (child process)",
        bare.secs,
        bare.count,
        bare.check,
        mib(bare.hwm_kib * 1024)
    );
    let counted = postgres.as_ref().filter(|_| on.statements);
    if let Some(pg) = counted {
        pg.count_statements("billing");
    }
    let bill = spawn_child(if on.lead { "bill-lead" } else { "bill" }, &db, on.replicas);
    if let Some(pg) = counted {
        // The billing run's and the lifecycle steps' after it, together.
        print!("{}", pg.statements("billing"));
    }
    if on.replicas > 1 {
        println!(
            "{} billing runs at once, one store each{}: wall time {:.3} s until the last returned; each run {} s; bill lines issued by each {}",
            on.replicas,
            if on.lead {
                ", each through try_lead_billing first (a run without the lead returns at once)"
            } else {
                ", none taking the billing lead (every replica does the whole run)"
            }, bill.secs, bill.per_run_secs, bill.per_run_lines
        );
    }
    println!(
        "billing run: {:.3} s, {} bill lines, {} with an amount, total {} USD; peak RSS {:.1} MiB, {:.1} MiB before the run (child process)",
        bill.secs,
        bill.count,
        bill.nonzero,
        bill.check,
        mib(bill.hwm_kib * 1024),
        mib(bill.rss_before_kib * 1024)
    );
    println!(
        "billing / bare query: {:.2}x (target <= {TARGET_RATIO}x)",
        bill.secs / bare.secs
    );
    println!(
        "bill lines in the database: {} for {} (account, day) pairs of {accounts} accounts, {} adjustment(s): {}",
        bill.db_lines,
        bill.db_account_days,
        bill.db_adjustments,
        if bill.db_lines == u64::from(accounts)
            && bill.db_account_days == u64::from(accounts)
            && bill.db_adjustments == 0
        {
            "every account's day billed exactly once"
        } else {
            "NOT billed exactly once"
        }
    );
    println!(
        "lifecycle step after it: {:.3} s for {accounts} accounts stepped through one run; {:.3} s the first time, each through the 30 runs since it was created",
        bill.lifecycle_secs, bill.catch_up_secs
    );

    let (checkpointed_bytes, vacuumed_bytes) = match &db {
        Database::Sqlite(path) => sizes(path),
        Database::Postgres(url) => pg_sizes(url),
    };
    drop(postgres);
    println!(
        "on disk: {:.1} MiB after a {} = {:.1} bytes per sample; {:.1} MiB after {} = {:.1} bytes per sample",
        mib(checkpointed_bytes),
        if on.postgres {
            "CHECKPOINT (pg_database_size, catalogs included)"
        } else {
            "WAL checkpoint"
        },
        checkpointed_bytes as f64 / samples as f64,
        mib(vacuumed_bytes),
        if on.postgres { "VACUUM FULL" } else { "VACUUM" },
        vacuumed_bytes as f64 / samples as f64
    );
    let loadavg = loadavg();
    println!("load average now: {loadavg}");
    Row {
        nodes,
        accounts,
        samples,
        load_secs,
        bare,
        bill,
        checkpointed_bytes,
        vacuumed_bytes,
        loadavg,
    }
}

/// The billed day (local, Asia/Shanghai, the default billing zone).
const DAY: &str = "2026-11-24";

fn day_start() -> DateTime<Utc> {
    // Local midnight in Asia/Shanghai (UTC+8, no daylight saving time).
    let day: NaiveDate = DAY.parse().unwrap();
    day.and_hms_opt(0, 0, 0).unwrap().and_utc() - TimeDelta::hours(8)
}

/// The billing run's instant: the day's 02:00 due time.
fn run_at() -> DateTime<Utc> {
    day_start() + TimeDelta::hours(26)
}

/// A small, fixed hash so the fleet is the same on every run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn node_cores(node: u32) -> u32 {
    CORE_SIZES[(mix(u64::from(node)) % CORE_SIZES.len() as u64) as usize]
}

/// Builds the fleet's database: accounts with licences and caps chosen so
/// that a quarter have no overage, a quarter some under the cap, a quarter
/// overage under a raised cap, and a quarter capped at the default; then 24
/// samples per node, pushed hour by hour as a fleet would. Every 50th node
/// misses an hour (gap bridging fills it) and samples twice in another
/// hour at a larger size (the larger counts); every 7th node grows at noon.
/// Returns the number of samples stored.
fn load(db: &Database, nodes: u32, accounts: u32, mut after_hour: impl FnMut()) -> u64 {
    let mut store = Store::connect(db, Durability::Scratch).expect("open store");
    let start = day_start();
    let created = start - TimeDelta::days(30);
    let ids: Vec<String> = (0..accounts).map(|a| format!("acct-{a:05}")).collect();
    // Node i belongs to account i % accounts; an account's cores at the start of the day:
    let mut cores_of = vec![0u64; accounts as usize];
    for node in 0..nodes {
        cores_of[(node % accounts) as usize] += u64::from(node_cores(node));
    }
    for (a, id) in ids.iter().enumerate() {
        store
            .accounts()
            .create_account(id, created)
            .expect("create account");
        let total = cores_of[a];
        let licensed = match a % 4 {
            0 => Some(total * 2),
            1 => Some(total * 9 / 10),
            2 => Some(total / 2),
            _ => None,
        };
        if let Some(cores) = licensed {
            let licence = Licence::new(
                u32::try_from(cores.max(1)).expect("licence cores fit"),
                created,
                start + TimeDelta::days(30),
            )
            .expect("licence");
            store
                .accounts()
                .add_licence(id, &licence, created)
                .expect("licence");
        }
        if a % 4 == 2 {
            let cap = u32::try_from((total / 2).max(500)).expect("cap fits");
            store
                .accounts()
                .set_cap(id, cap, created, created)
                .expect("cap");
        }
    }

    let limits = AgeLimits::default();
    let clusters = ["prod", "staging"];
    let names: Vec<String> = (0..nodes).map(|n| format!("node-{n:06}")).collect();
    let mut chunk: Vec<Incoming<'_>> = Vec::with_capacity(LOAD_CHUNK);
    let mut stored = 0u64;
    let mut flush = |store: &mut Store, chunk: &mut Vec<Incoming<'_>>| {
        let outcomes = store.ingest().insert(chunk, &limits).expect("ingest");
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, aggregator::store::Outcome::Accepted))
            .count();
        assert_eq!(accepted, chunk.len(), "every generated sample is accepted");
        stored += accepted as u64;
        chunk.clear();
    };
    for hour in 0..24u32 {
        for node in 0..nodes {
            let h = mix(u64::from(node) << 8);
            let gappy = node % 50 == 0;
            let gap = (h % 20) as u32 + 1; // the hour it misses
            let twice = (gap + 2) % 24;
            if gappy && hour == gap {
                continue;
            }
            let mut cores = node_cores(node);
            if node % 7 == 0 && hour >= 12 {
                cores *= 2;
            }
            let offset_secs = i64::from(node % 600); // spread over the first ten minutes
            let at = start + TimeDelta::hours(i64::from(hour)) + TimeDelta::seconds(offset_secs);
            let account = &ids[(node % accounts) as usize];
            let cluster = clusters[(node / accounts) as usize % 2];
            let push = |cores: u32, at: DateTime<Utc>| Incoming {
                account,
                cluster,
                node: &names[node as usize],
                cores: Some(cores),
                at: Some(at),
                seq: None,
                agent_version: Some("0.1.0"),
                received_at: at + TimeDelta::seconds(1),
            };
            chunk.push(push(cores, at));
            if gappy && hour == twice {
                chunk.push(push(cores * 2, at + TimeDelta::minutes(30)));
            }
            if chunk.len() >= LOAD_CHUNK {
                flush(&mut store, &mut chunk);
            }
        }
        if !chunk.is_empty() {
            flush(&mut store, &mut chunk);
        }
        after_hour();
    }
    stored
}

/// What a child process measured.
#[derive(Debug, Default)]
struct ChildReport {
    secs: f64,
    /// Groups of the bare query, or bill lines.
    count: u64,
    /// Bill lines with a non-zero amount.
    nonzero: u64,
    /// Sum of the bare query's sums, or the total billed, as a check.
    check: String,
    rss_before_kib: u64,
    hwm_kib: u64,
    /// The lifecycle step that follows billing in every run (issue 9), seconds.
    lifecycle_secs: f64,
    /// The same step for accounts never stepped: each through its first 30 runs.
    catch_up_secs: f64,
    /// With replicas: each run's own seconds and lines issued, comma-separated.
    per_run_secs: String,
    per_run_lines: String,
    /// Bill lines in the database after the run(s), their (account, day) pairs, and adjustments among them.
    db_lines: u64,
    db_account_days: u64,
    db_adjustments: u64,
}

fn spawn_child(what: &str, db: &Database, replicas: u32) -> ChildReport {
    let out = Command::new(std::env::current_exe().expect("own executable"))
        .arg("--child")
        .arg(what)
        .arg(db.to_string())
        .arg(replicas.to_string())
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "child {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("child prints UTF-8");
    let mut r = ChildReport::default();
    for field in text.split_whitespace() {
        let (k, v) = field.split_once('=').expect("key=value");
        match k {
            "secs" => r.secs = v.parse().unwrap(),
            "count" => r.count = v.parse().unwrap(),
            "nonzero" => r.nonzero = v.parse().unwrap(),
            "check" => r.check = v.to_string(),
            "rss_before_kib" => r.rss_before_kib = v.parse().unwrap(),
            "hwm_kib" => r.hwm_kib = v.parse().unwrap(),
            "lifecycle_secs" => r.lifecycle_secs = v.parse().unwrap(),
            "catch_up_secs" => r.catch_up_secs = v.parse().unwrap(),
            "per_run_secs" => r.per_run_secs = v.to_string(),
            "per_run_lines" => r.per_run_lines = v.to_string(),
            "db_lines" => r.db_lines = v.parse().unwrap(),
            "db_account_days" => r.db_account_days = v.parse().unwrap(),
            "db_adjustments" => r.db_adjustments = v.parse().unwrap(),
            _ => panic!("unknown child field {k}"),
        }
    }
    r
}

/// Runs in the child process: one measurement, printed as `key=value` fields.
fn child(args: &[String]) {
    let what = args[0].as_str();
    let db = Database::parse(&args[1]);
    let replicas: usize = args[2].parse().expect("replicas");
    match (what, &db) {
        ("bare", Database::Sqlite(path)) => {
            let conn = rusqlite::Connection::open(path).expect("open database");
            // The store's page cache size, so neither side has more memory to work with.
            conn.pragma_update(None, "cache_size", -16_384).unwrap();
            let rss_before_kib = proc_status_kib("VmRSS");
            let started = Instant::now();
            let mut stmt = conn
                .prepare(
                    "SELECT account_ref, at_ms / 3600000 AS bucket, SUM(cores) FROM samples
                      GROUP BY account_ref, bucket",
                )
                .unwrap();
            let mut rows = stmt.query([]).unwrap();
            let (mut count, mut sum) = (0u64, 0i64);
            while let Some(r) = rows.next().unwrap() {
                count += 1;
                sum += r.get::<_, i64>(2).unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "secs={secs} count={count} nonzero=0 check={sum} rss_before_kib={rss_before_kib} hwm_kib={}",
                proc_status_kib("VmHWM")
            );
        }
        ("bare", Database::Postgres(url)) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
            let rss_before_kib = proc_status_kib("VmRSS");
            let started = Instant::now();
            // Streamed as the SQLite side steps through its rows, not collected.
            let mut rows = client
                .query_raw(
                    "SELECT account_ref, at_ms / 3600000 AS bucket, SUM(cores)::BIGINT FROM samples
                      GROUP BY account_ref, bucket",
                    std::iter::empty::<i64>(),
                )
                .expect("the bare query");
            let (mut count, mut sum) = (0u64, 0i64);
            while let Some(r) =
                postgres::fallible_iterator::FallibleIterator::next(&mut rows).expect("a row")
            {
                count += 1;
                sum += r.get::<_, i64>(2);
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "secs={secs} count={count} nonzero=0 check={sum} rss_before_kib={rss_before_kib} hwm_kib={}",
                proc_status_kib("VmHWM")
            );
        }
        ("bill" | "bill-lead", _) => {
            let lead = what == "bill-lead";
            // Opened as the service opens it (SQLite: WAL, full syncs), one store per replica.
            let stores: Vec<Store> = (0..replicas)
                .map(|_| Store::connect(&db, Durability::Durable).expect("open store"))
                .collect();
            let config = BillingConfig::default();
            let rss_before_kib = proc_status_kib("VmRSS");
            // All runs start together; the figure is the time until the last returns.
            let go = std::sync::Arc::new(std::sync::Barrier::new(replicas + 1));
            let runs: Vec<_> = stores
                .into_iter()
                .map(|mut store| {
                    let (go, config) = (go.clone(), config.clone());
                    std::thread::spawn(move || {
                        go.wait();
                        let started = Instant::now();
                        if lead
                            && !store
                                .billing()
                                .try_lead_billing()
                                .expect("try the billing lead")
                        {
                            return (store, Vec::new(), None);
                        }
                        let lines =
                            run_billing(&mut store, run_at(), &config).expect("billing run");
                        if lead {
                            store
                                .billing()
                                .end_billing_lead()
                                .expect("end the billing lead");
                        }
                        (store, lines, Some(started.elapsed().as_secs_f64()))
                    })
                })
                .collect();
            go.wait();
            let started = Instant::now();
            let runs: Vec<_> = runs
                .into_iter()
                .map(|run| run.join().expect("a billing thread"))
                .collect();
            let secs = started.elapsed().as_secs_f64();
            let per_run_secs: Vec<String> = runs
                .iter()
                .map(|r| {
                    r.2.map_or_else(|| "no-lead".to_string(), |s| format!("{s:.3}"))
                })
                .collect();
            let per_run_lines: Vec<String> = runs.iter().map(|r| r.1.len().to_string()).collect();
            let lines: Vec<&shared::bill::BillLine> = runs.iter().flat_map(|r| &r.1).collect();
            let count = lines.len();
            let total: rust_decimal::Decimal = lines.iter().map(|l| l.amount).sum();
            let nonzero = lines.iter().filter(|l| !l.amount.is_zero()).count();
            assert!(
                lines.iter().all(|l| l.day.to_string() == DAY),
                "only the day is billed"
            );
            let (per_run_secs, per_run_lines) = (per_run_secs.join(","), per_run_lines.join(","));
            let hwm_kib = proc_status_kib("VmHWM");
            let mut store = runs.into_iter().next().expect("one run").0;
            // The lifecycle step the service runs right after billing: every
            // account stepped through the run (first run after creation here,
            // so each account is stepped through the 30 runs since it was created).
            let started = Instant::now();
            aggregator::billing::lifecycle::run_lifecycle(
                &mut store,
                run_at(),
                &config.zone,
                shared::lifecycle::default_price_per_core_month(),
            )
            .expect("lifecycle step");
            let catch_up_secs = started.elapsed().as_secs_f64();
            // And the next day's run: one step per account, the steady state.
            let started = Instant::now();
            aggregator::billing::lifecycle::run_lifecycle(
                &mut store,
                run_at() + TimeDelta::days(1),
                &config.zone,
                shared::lifecycle::default_price_per_core_month(),
            )
            .expect("lifecycle step");
            let lifecycle_secs = started.elapsed().as_secs_f64();
            drop(store);
            let (db_lines, db_account_days, db_adjustments) = bill_lines_in(&db);
            println!(
                "secs={secs} count={count} nonzero={nonzero} check={total} rss_before_kib={rss_before_kib} hwm_kib={hwm_kib} lifecycle_secs={lifecycle_secs} catch_up_secs={catch_up_secs} per_run_secs={per_run_secs} per_run_lines={per_run_lines} db_lines={db_lines} db_account_days={db_account_days} db_adjustments={db_adjustments}"
            );
        }
        (other, _) => panic!("unknown child {other}"),
    }
}

/// The bill lines stored for the day: how many, how many distinct (account, day), how many adjustments.
fn bill_lines_in(db: &Database) -> (u64, u64, u64) {
    let sql = format!(
        "SELECT COUNT(*), COUNT(DISTINCT account_ref), COALESCE(SUM(CASE WHEN kind = 'adjustment' THEN 1 ELSE 0 END), 0)
           FROM bill_lines WHERE day = '{DAY}'"
    );
    let (lines, pairs, adjustments): (i64, i64, i64) = match db {
        Database::Sqlite(path) => rusqlite::Connection::open(path)
            .expect("open database")
            .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("count the bill lines"),
        Database::Postgres(url) => {
            let row = postgres::Client::connect(url, postgres::NoTls)
                .expect("connect")
                .query_one(&sql, &[])
                .expect("count the bill lines");
            (row.get(0), row.get(1), row.get(2))
        }
    };
    let n = |v: i64| u64::try_from(v).expect("a count");
    (n(lines), n(pairs), n(adjustments))
}

/// The PostgreSQL database's size after a `CHECKPOINT`, and after `VACUUM FULL`.
fn pg_sizes(url: &str) -> (u64, u64) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let mut size_after = |statements: &[&str]| {
        // One statement at a time: VACUUM refuses a transaction block, which a batch is.
        for sql in statements {
            client.batch_execute(sql).expect(sql);
        }
        let bytes: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .expect("pg_database_size")
            .get(0);
        u64::try_from(bytes).expect("a size")
    };
    let checkpointed = size_after(&["CHECKPOINT"]);
    (checkpointed, size_after(&["VACUUM FULL", "CHECKPOINT"]))
}

/// The database's bytes on disk (file and WAL) after a checkpoint, and after `VACUUM`.
fn sizes(db: &Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(db).expect("open database");
    let on_disk = || {
        let wal = db.with_extension("sqlite-wal");
        std::fs::metadata(db).unwrap().len() + std::fs::metadata(&wal).map_or(0, |m| m.len())
    };
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let checkpointed = on_disk();
    conn.execute_batch("VACUUM").unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    (checkpointed, on_disk())
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_machine(accounts: u32, on: &On) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("billing_run: one billing run over a day of N nodes x 24 hourly samples, next to a bare GROUP BY");
    println!(
        "machine: {nproc} CPUs ({cpu}), load average {}, {date}",
        loadavg()
    );
    println!(
        "settings: {accounts} accounts (node i in account i % {accounts}), 2 clusters each, cores per node from {CORE_SIZES:?}; \
         billing zone Asia/Shanghai, price 0.25 USD/core/day, ceil rounding, gap bridging 3 h; run at {} (the day's 02:00 due time); \
         release build, SQLite page cache 16 MiB, database in {}",
        run_at(),
        std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())
    );
    println!(
        "database: {}{}",
        on.label(),
        if on.postgres {
            format!(
                " on a throwaway server the bench starts ({}), its data in a temporary directory; the billing child opens {} store(s) and runs run_billing from each at once, on its own thread",
                if on.durable {
                    "PostgreSQL's durable defaults: fsync=on, synchronous_commit=on"
                } else {
                    "fsync=off, synchronous_commit=off: the test helpers' settings, not durable"
                },
                on.replicas
            )
        } else {
            ", WAL, synchronous=FULL".to_string()
        }
    );
}
