//! What the audit log costs an admin write, and what a backup of a large
//! SQLite store takes (issue 24).
//!
//! ```sh
//! cargo bench -p e2e --bench audit_backup -- [--binary B] [--peer P] [--rounds 5] [--writes 500] [--samples 10000000]
//! ```
//!
//! Writes: each round starts the service of this build and of `--peer` (the
//! build before the audit log, if given) in turn on a fresh SQLite store
//! holding an account of a year's size (24 orders, 10 contacts, 5 tokens, 3
//! clusters, a credit), then times `--writes` admin writes one after the
//! other, alternating a cap set (a row added) and an order's auto-renewal
//! (a column changed), each on a connection of its own. Backup: a store of
//! `--samples` samples (10,000 nodes, one an hour; written behind the
//! service with SQLite, as the service files them) copied by `aggregator
//! backup`, then restored by `aggregator restore`, each timed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::procs::{release_binary, request, Service, ServiceOptions};

#[derive(Parser)]
struct Args {
    /// The aggregator measured [default: target/release/aggregator, built now].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The build before, measured beside it.
    #[arg(long)]
    peer: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Samples in the store backed up (0: no backup measured).
    #[arg(long, default_value_t = 10_000_000)]
    samples: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(|| release_binary("aggregator"));
    println!(
        "audit_backup: machine {} CPUs; binary {}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        binary.display(),
        args.peer
            .as_ref()
            .map(|p| format!(", peer {}", p.display()))
            .unwrap_or_default()
    );
    let mut builds = vec![("this build", binary.clone())];
    if let Some(peer) = &args.peer {
        builds.push(("peer", peer.clone()));
    }
    let mut all: Vec<(&str, Vec<Duration>)> =
        builds.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for round in 1..=args.rounds {
        for (i, (name, program)) in builds.iter().enumerate() {
            let took = admin_writes(program, args.writes);
            let (median, p99) = (percentile(&took, 50), percentile(&took, 99));
            println!(
                "round {round}, {name}: {} writes, median {median:?}, p99 {p99:?}",
                took.len()
            );
            all[i].1.extend(took);
        }
    }
    for (name, took) in &all {
        println!(
            "writes, {name}, all rounds: {} writes, median {:?}, p90 {:?}, p99 {:?}",
            took.len(),
            percentile(took, 50),
            percentile(took, 90),
            percentile(took, 99)
        );
    }
    if args.samples > 0 {
        backup(&binary, args.samples);
    }
}

fn percentile(took: &[Duration], p: usize) -> Duration {
    let mut sorted = took.to_vec();
    sorted.sort();
    sorted[(sorted.len() - 1) * p / 100]
}

/// `writes` admin writes to an account of a year's size, each timed.
fn admin_writes(program: &Path, writes: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("writes.sqlite");
    let service = Service::start_with(
        &db,
        "bench-admin-token-0123456789",
        &ServiceOptions {
            program: Some(program.to_path_buf()),
            ..ServiceOptions::default()
        },
    );
    service.account_with_cluster("acme", "prod");
    let ok = |(s, v): (u16, serde_json::Value)| {
        assert!((200..300).contains(&s), "{s} {v}");
        v
    };
    for c in ["staging", "dev"] {
        ok(service.admin(
            "POST",
            "/v1/admin/accounts/acme/clusters",
            Some(&format!(r#"{{"name":"{c}"}}"#)),
        ));
    }
    ok(service.admin(
        "POST",
        "/v1/admin/accounts/acme/credits",
        Some(r#"{"amount":"100000.00","reference":"bench"}"#),
    ));
    let mut orders = Vec::new();
    for _ in 0..24 {
        let v = ok(service.admin(
            "POST",
            "/v1/admin/accounts/acme/orders",
            Some(r#"{"cores":10,"months":1,"pay_from_balance":true}"#),
        ));
        orders.push(v["id"].as_i64().unwrap());
    }
    for n in 0..10 {
        ok(service.admin(
            "POST",
            "/v1/admin/accounts/acme/contacts",
            Some(&format!(
                r#"{{"name":"c{n}","role":"collaborator","email":"c{n}@example.com"}}"#
            )),
        ));
    }
    for n in 0..5 {
        ok(service.admin(
            "POST",
            "/v1/admin/accounts/acme/reader-tokens",
            Some(&format!(r#"{{"name":"r{n}"}}"#)),
        ));
    }
    let mut took = Vec::with_capacity(writes);
    for i in 0..writes {
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/admin/accounts/acme/cap".to_string(),
                format!(r#"{{"cores":{}}}"#, 500 + i),
            )
        } else {
            (
                format!(
                    "/v1/admin/accounts/acme/orders/{}/auto-renew",
                    orders[i % orders.len()]
                ),
                format!(r#"{{"auto_renew":{}}}"#, i % 4 == 1),
            )
        };
        let started = Instant::now();
        let (s, v) = request(
            service.addr,
            "PUT",
            &path,
            Some(&service.admin),
            Some(&body),
        )
        .expect("the service answers");
        took.push(started.elapsed());
        assert_eq!(s, 200, "{path}: {v}");
    }
    took
}

/// A store of `samples` samples, backed up and restored with the binary.
fn backup(binary: &Path, samples: u64) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sqlite");
    {
        let service = Service::start_with(
            &live,
            "bench-admin-token-0123456789",
            &ServiceOptions {
                program: Some(binary.to_path_buf()),
                ..ServiceOptions::default()
            },
        );
        service.account_with_cluster("acme", "prod");
        service.kill_hard();
    }
    let made = Instant::now();
    let nodes: u64 = 10_000.min(samples.max(1));
    let mut conn = rusqlite::Connection::open(&live).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let tx = conn.transaction().unwrap();
    let account: i64 = tx
        .query_row("SELECT ref FROM accounts WHERE id = 'acme'", [], |r| {
            r.get(0)
        })
        .unwrap();
    {
        let mut node = tx
            .prepare("INSERT INTO nodes (id, account_ref, cluster, name, last_seen_ms) VALUES (?1, ?2, 'prod', ?3, 0)")
            .unwrap();
        for n in 1..=nodes {
            node.execute(rusqlite::params![n as i64, account, format!("node-{n:05}")])
                .unwrap();
        }
        let start_ms: i64 = 1_764_547_200_000; // 2025-12-01T00:00:00Z
        let mut sample = tx
            .prepare(
                "INSERT INTO samples (account_ref, at_ms, node_id, id, cores, received_at_ms, seq, agent_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '0.2.0')",
            )
            .unwrap();
        for i in 0..samples {
            let (hour, n) = ((i / nodes) as i64, (i % nodes) as i64 + 1);
            let at = start_ms + hour * 3_600_000 + n * 61;
            sample
                .execute(rusqlite::params![
                    account,
                    at,
                    n,
                    i as i64 + 1,
                    8 + n % 57,
                    at + 900,
                    hour + 1
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(conn);
    let size = std::fs::metadata(&live).unwrap().len();
    let tenths = size * 10 / samples.max(1);
    println!(
        "store: {samples} samples of {nodes} nodes written in {:.1} s; {size} bytes ({}.{} B a sample)",
        made.elapsed().as_secs_f64(),
        tenths / 10,
        tenths % 10
    );
    let copy = dir.path().join("backup.sqlite");
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = Command::new(binary).args(args).output().unwrap();
        let took = started.elapsed();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {said}");
        (took, said)
    };
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (took, said) = run(&["backup", "--to", &path(&copy), "--database", &path(&live)]);
    println!("backup: {:.1} s; {}", took.as_secs_f64(), said.trim());
    let copied = std::fs::metadata(&copy).unwrap().len();
    println!(
        "backup file: {copied} bytes ({}% of the store)",
        copied * 100 / size.max(1)
    );
    let restored = dir.path().join("restored.sqlite");
    let (took, said) = run(&[
        "restore",
        "--from",
        &path(&copy),
        "--database",
        &path(&restored),
    ]);
    println!("restore: {:.1} s; {}", took.as_secs_f64(), said.trim());
}
