//! Benchmark: a top-of-hour herd of single-sample pushes through the release `aggregator serve`, next to a bare rusqlite loop writing the same rows.
//!
//! Run with `cargo bench -p e2e --bench ingest_herd` (one run at the default
//! size) or `cargo bench -p e2e --bench ingest_herd -- --scaling` (1,000,
//! 10,000 and 100,000 nodes, one table row each). It builds the release
//! aggregator as `replay_fleet` does, starts `aggregator serve` on a fresh
//! SQLite file in a temporary directory with the default settings (WAL,
//! `synchronous = FULL`), creates an account and a cluster through the admin
//! API, and pushes `--samples` batches of one sample each from `--nodes`
//! distinct nodes with `--concurrency` requests in flight over keep-alive
//! connections. Each node sends `samples / nodes` samples, one per hour with
//! its own seq 1, 2, …, the last at the current hour: every hour is one herd
//! of the whole fleet, so the node count changes how many nodes the store
//! knows and how many it creates, not the number of rows.
//!
//! After the push it reads the mean group-commit size from `/metrics`, kills
//! the service (`kill -9`: an acknowledged sample must already be on disk),
//! and checks in the database file that every acknowledged sample is stored.
//! Then the ceiling: a bare rusqlite loop writes the same rows (a node row
//! for each new node, a sample row for each sample, with the store's own
//! INSERT statements) into a database the aggregator's `Store` created, so
//! schema, indexes and pragmas are the service's, committing one transaction
//! per group of the service's mean group-commit size.
//!
//! With `-- --database postgres` (issue 10) the same herd goes to `aggregator
//! serve --database postgres://…` on a throwaway PostgreSQL server the bench
//! starts (PostgreSQL's durable defaults: `fsync` and `synchronous_commit`
//! on, as SQLite's `synchronous = FULL`; `--pg-no-fsync` for the test
//! helpers' `fsync = off`), and `--replicas N` starts N aggregators on the one
//! database and sends push i to replica i mod N. The check then kills every
//! replica with `kill -9`, crashes PostgreSQL (`pg_ctl stop -m immediate`),
//! restarts it and looks up every acknowledged sample in what it recovered.
//! The server's CPU is reported beside the service's, since it shares the two
//! cores too. The bare-rusqlite ceiling is SQLite's and is skipped there.
//!
//! With `-- --tls` (issue 11) the service serves HTTPS with a throwaway CA's
//! certificate (rustls, as in production) and the herd pushes over it, each
//! of the `--concurrency` connections paying one handshake: the row is
//! labelled `HTTPS`, to set beside the same run without it. With
//! `--fresh-connections` every push opens its own connection, as an agent
//! pushing once an hour does: with `--tls`, a full handshake per sample.
//!
//! Only a missing acknowledged sample fails the run (exit 1); a missed
//! performance target is reported as MISS with its gap.

// Rates, shares and milliseconds are measurements, not money.
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::Parser;
use e2e::procs::{cpu_secs_of, loadavg, request};

use e2e::postgres::TempPostgres;

/// Accepted samples per second through HTTP at least.
const TARGET_SAMPLES_PER_SEC: f64 = 20_000.0;
/// The HTTP rate as a share of the bare-SQLite ceiling at least.
const TARGET_CEILING_SHARE: f64 = 0.25;
/// The 99th percentile of request latency at most.
const TARGET_P99: Duration = Duration::from_millis(100);
/// Attempts per push before it counts as an error (429 and 503 are retried, as an agent would).
const ATTEMPTS: u32 = 20;
/// The node counts of `--scaling`.
const SCALING_NODES: [u64; 3] = [1_000, 10_000, 100_000];
/// The oldest `at` the service accepts is 14 days back; rounds stay well inside.
const MAX_ROUNDS: u64 = 300;

#[derive(Parser, Debug, Clone)]
#[command(about = "Ingest under a top-of-hour herd, next to the bare-SQLite ceiling")]
struct Args {
    /// Samples pushed, one per request.
    #[arg(long, default_value_t = 100_000)]
    samples: u64,
    /// Distinct nodes; each sends samples/nodes samples, one per hour.
    #[arg(long, default_value_t = 100_000)]
    nodes: u64,
    /// Requests in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Threads of the load generator's runtime (it shares the machine with the service).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Run 1,000, 10,000 and 100,000 nodes with the same samples, one table row each.
    #[arg(long)]
    scaling: bool,
    /// The service's database: a SQLite file, or a throwaway PostgreSQL server's database.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    database: String,
    /// Aggregator replicas on the one PostgreSQL database; push i goes to replica i mod N.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Each replica's `worker_threads`; by default the machine's CPUs shared
    /// among the replicas (at least 1), as docs/replicas.md says to run
    /// replicas that share a host.
    #[arg(long)]
    worker_threads: Option<usize>,
    /// PostgreSQL with the test helpers' fsync=off, synchronous_commit=off instead of its durable defaults.
    #[arg(long)]
    pg_no_fsync: bool,
    /// On PostgreSQL, load `pg_stat_statements` and print the statements
    /// that took the server's time during the push: where its CPU goes.
    #[arg(long)]
    pg_statements: bool,
    /// PostgreSQL's own group commit: the server's `commit_delay` in
    /// microseconds, with `commit_siblings = 1`, so that a commit made while
    /// another transaction is open waits that long for others to share its
    /// WAL flush. One replica commits alone and never waits; with several,
    /// each replica's commit takes longer, so more requests queue for its
    /// next group and it commits less often.
    #[arg(long)]
    pg_commit_delay: Option<u32>,
    /// The service speaks HTTPS (a throwaway CA's certificate, rustls) and
    /// the herd pushes over it: what TLS costs ingest.
    #[arg(long)]
    tls: bool,
    /// A new connection for every push, as agents pushing once an hour make
    /// (with --tls: a full handshake per sample), instead of keep-alive.
    #[arg(long)]
    fresh_connections: bool,
    /// Use this aggregator binary instead of building target/release/aggregator.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one size measured.
struct Measured {
    /// "SQLite", or "PostgreSQL, N replica(s)".
    label: String,
    nodes: u64,
    samples: u64,
    accepted: u64,
    http_secs: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    busy: u64,
    errors: u64,
    missing: u64,
    commits: f64,
    /// CPU seconds (user + system) the service used, start-up included.
    service_cpu_secs: f64,
    /// CPU seconds the load generator (this process) used while pushing.
    client_cpu_secs: f64,
    /// CPU seconds the PostgreSQL server used while the herd was pushed.
    db_cpu_secs: Option<f64>,
    mean_group: f64,
    /// The bare-rusqlite ceiling (samples/s) and its group; SQLite only.
    ceiling: Option<(f64, usize)>,
}

impl Measured {
    fn http_per_sec(&self) -> f64 {
        self.accepted as f64 / self.http_secs
    }

    fn share(&self) -> Option<f64> {
        self.ceiling
            .map(|(per_sec, _)| self.http_per_sec() / per_sec)
    }
}

fn main() {
    let args = Args::parse();
    if args.replicas == 0 || (args.replicas > 1 && args.database != "postgres") {
        eprintln!("ingest_herd: --replicas N needs N >= 1, and N > 1 needs --database postgres (SQLite has one writer process)");
        std::process::exit(2);
    }
    let binary = args.binary.clone().unwrap_or_else(release_aggregator);
    print_machine(&args, &binary);

    let sizes: Vec<u64> = if args.scaling {
        SCALING_NODES.to_vec()
    } else {
        vec![args.nodes]
    };
    let mut rows = Vec::new();
    for nodes in sizes {
        let m = run(&args, &binary, nodes);
        print_run(&m);
        rows.push(m);
    }
    if rows.len() > 1 {
        print_table(&rows);
    }
    println!("load average after: {}", loadavg());
    let missing: u64 = rows.iter().map(|m| m.missing).sum();
    if missing > 0 {
        eprintln!("ingest_herd: FAILED: {missing} acknowledged sample(s) are not in the database");
        std::process::exit(1);
    }
    println!("ingest_herd: every acknowledged sample is committed; performance misses above (if any) are reported, not fatal");
}

/// Builds the release aggregator as `replay_fleet` does and returns its path.
fn release_aggregator() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "aggregator"])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release -p aggregator failed; run it yourself to see why"
    );
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target.join("release/aggregator");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p aggregator`",
        binary.display()
    );
    binary
}

fn print_machine(args: &Args, binary: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "ingest_herd: a top-of-hour herd through `aggregator serve` next to a bare rusqlite loop"
    );
    println!("date: {}", Utc::now().format("%Y-%m-%d %H:%M:%S UTC"));
    println!("machine: {cpus} CPUs (nproc), {cpu}");
    println!("load average before: {}", loadavg());
    println!("binary: {}", binary.display());
    let database = if args.database == "postgres" {
        format!(
            "PostgreSQL ({}), a throwaway server the bench starts, its data in a temporary directory; {} aggregator replica(s) on its one database, push i to replica i mod {}",
            if args.pg_no_fsync {
                "fsync=off, synchronous_commit=off: the test helpers' settings, not durable"
            } else {
                "its durable defaults: fsync=on, synchronous_commit=on"
            },
            args.replicas,
            args.replicas
        )
    } else {
        "SQLite WAL, synchronous=FULL, a file in a temporary directory".to_string()
    };
    println!(
        "settings: {} samples, one per request; concurrency {} (keep-alive connections); load generator on {} thread(s) of this process; service defaults; database: {database}",
        args.samples, args.concurrency, args.client_threads
    );
    println!(
        "targets: >= {} samples/s through HTTP, >= {:.0}% of the bare-SQLite ceiling, p99 <= {} ms, every acknowledged sample committed",
        TARGET_SAMPLES_PER_SEC,
        TARGET_CEILING_SHARE * 100.0,
        TARGET_P99.as_millis()
    );
}

/// One sample to push: its node index and seq, and the request body.
struct Push {
    node: u64,
    seq: u64,
    body: String,
}

/// The pushes of a run, round by round: round r is hour `last_hour - (rounds - r)` for every node.
fn pushes(samples: u64, nodes: u64, last_hour: DateTime<Utc>) -> Vec<Push> {
    let rounds = samples.div_ceil(nodes);
    let mut out = Vec::with_capacity(samples as usize);
    'rounds: for round in 1..=rounds {
        let at = last_hour - TimeDelta::hours((rounds - round) as i64);
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for node in 0..nodes {
            if out.len() as u64 == samples {
                break 'rounds;
            }
            let body = format!(
                r#"{{"samples":[{{"node":"node-{node:06}","cores":{cores},"at":"{at}","seq":{round},"agent_version":"bench"}}]}}"#,
                cores = 8 + node % 57
            );
            out.push(Push {
                node,
                seq: round,
                body,
            });
        }
    }
    out
}

struct Server {
    child: Child,
    addr: SocketAddr,
    admin: String,
    /// With `--tls`: the CA the service's certificate chains to.
    tls: Option<Arc<Tls>>,
}

/// A throwaway CA and the service's certificate for 127.0.0.1, as PEM files.
struct Tls {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tls {
    fn new() -> Tls {
        // The workspace's one throwaway CA.
        let ca = testkit::pki::Ca::new("ingest_herd test CA");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cert, key) = ca.server("ingest-herd").write(dir.path(), "tls");
        Tls {
            ca_pem: ca.pem(),
            cert,
            key,
            _dir: dir,
        }
    }

    /// A client that trusts only this CA.
    fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("the CA"),
            )
    }

    /// One request over HTTPS, as `request` is over plain HTTP.
    fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let client = self.client().build().ok()?;
            let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
            let mut r = client.request(method, format!("https://{addr}{path}"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let answer = r.send().await.ok()?;
            let status = answer.status().as_u16();
            Some((status, answer.text().await.ok()?))
        })
    }
}

impl Server {
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        match &self.tls {
            Some(tls) => tls.request(self.addr, method, path, token, body),
            None => request(self.addr, method, path, token, body),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    binary: &Path,
    database: &std::ffi::OsStr,
    workers: usize,
    tls: Option<Arc<Tls>>,
) -> Server {
    let admin = format!("bench-admin-{}", std::process::id());
    let mut command = Command::new(binary);
    let addr = testkit::ports::HeldPort::new().hand_to(&mut command);
    command
        .args(["serve", "--listen", &addr.to_string(), "--database"])
        .arg(database);
    if let Some(t) = &tls {
        command
            .arg("--tls-cert")
            .arg(&t.cert)
            .arg("--tls-key")
            .arg(&t.key);
    }
    let child = command
        .env("CORE_METER_ADMIN_TOKEN", &admin)
        .env("CORE_METER_WORKER_THREADS", workers.to_string())
        .env_remove("CORE_METER_WEBHOOK_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start aggregator serve");
    let mut server = Server {
        child,
        addr,
        admin,
        tls,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.request("GET", "/readyz", None, None).map(|r| r.0) != Some(200) {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("aggregator serve exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "aggregator serve did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

impl Server {
    fn admin(&self, path: &str, body: &str) -> serde_json::Value {
        let (status, text) = self
            .request("POST", path, Some(&self.admin), Some(body))
            .expect("the service answers");
        assert_eq!(status, 201, "{path}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    /// CPU seconds (user + system) the service has used so far, from /proc.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// The sum and count of `core_meter_ingest_commit_samples`.
    fn commit_sizes(&self) -> (f64, f64) {
        let (status, text) = self
            .request("GET", "/metrics", None, None)
            .expect("the service answers");
        assert_eq!(status, 200, "{text}");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("/metrics has no {name}"))
        };
        (
            value("core_meter_ingest_commit_samples_sum "),
            value("core_meter_ingest_commit_samples_count "),
        )
    }
}

/// What the load generator saw.
struct Load {
    secs: f64,
    /// (node, seq) of every sample the service answered `accepted`.
    acknowledged: Vec<(u64, u64)>,
    latencies: Vec<Duration>,
    busy: u64,
    errors: u64,
}

/// Pushes every sample, push i to `addrs[i % addrs.len()]` (round-robin over the replicas).
fn push_all(
    addrs: &[SocketAddr],
    token: &str,
    pushes: Vec<Push>,
    args: &Args,
    tls: Option<&Tls>,
) -> Load {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let client = tls
            .map_or_else(reqwest::Client::builder, Tls::client)
            .pool_max_idle_per_host(if args.fresh_connections {
                0
            } else {
                args.concurrency
            })
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let urls: Arc<[String]> = addrs
            .iter()
            .map(|addr| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}/v1/samples")
            })
            .collect();
        let auth: Arc<str> = format!("Bearer {token}").into();
        let work = Arc::new(std::sync::Mutex::new(pushes.into_iter().enumerate()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (client, urls, auth, work) =
                (client.clone(), urls.clone(), auth.clone(), work.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Load {
                    secs: 0.0,
                    acknowledged: Vec::new(),
                    latencies: Vec::new(),
                    busy: 0,
                    errors: 0,
                };
                loop {
                    let Some((i, push)) = work.lock().expect("work lock").next() else {
                        break;
                    };
                    let url = &urls[i % urls.len()];
                    for attempt in 1..=ATTEMPTS {
                        let sent = Instant::now();
                        let answer = client
                            .post(url)
                            .header("authorization", &*auth)
                            .header("content-type", "application/json")
                            .body(push.body.clone())
                            .send()
                            .await;
                        let answer = match answer {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                r.bytes().await.map(|b| (status, b))
                            }
                            Err(e) => Err(e),
                        };
                        let latency = sent.elapsed();
                        match answer {
                            Ok((200, body)) => {
                                seen.latencies.push(latency);
                                let v: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                if v["results"][0]["status"] == "accepted" {
                                    seen.acknowledged.push((push.node, push.seq));
                                } else {
                                    seen.errors += 1;
                                }
                                break;
                            }
                            Ok((429 | 503, _)) if attempt < ATTEMPTS => {
                                seen.busy += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            _ => {
                                seen.errors += 1;
                                break;
                            }
                        }
                    }
                }
                seen
            }));
        }
        let mut load = Load {
            secs: 0.0,
            acknowledged: Vec::new(),
            latencies: Vec::new(),
            busy: 0,
            errors: 0,
        };
        for task in tasks {
            let seen = task.await.expect("a pusher task");
            load.acknowledged.extend(seen.acknowledged);
            load.latencies.extend(seen.latencies);
            load.busy += seen.busy;
            load.errors += seen.errors;
        }
        load.secs = started.elapsed().as_secs_f64();
        load
    })
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

/// How many acknowledged (node, seq) pairs the database file lacks.
fn missing_in(database: &Path, acknowledged: &[(u64, u64)]) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    let mut stmt = conn
        .prepare("SELECT n.name, s.seq FROM samples s JOIN nodes n ON n.id = s.node_id")
        .expect("prepare");
    let stored: std::collections::HashSet<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    missing_of(&stored, acknowledged)
}

/// How many acknowledged (node, seq) pairs the PostgreSQL database lacks.
fn missing_in_postgres(client: &mut postgres::Client, acknowledged: &[(u64, u64)]) -> u64 {
    let stored: std::collections::HashSet<(String, i64)> = client
        .query(
            "SELECT n.name, s.seq FROM samples s JOIN nodes n ON n.id = s.node_id",
            &[],
        )
        .expect("read the samples")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    missing_of(&stored, acknowledged)
}

fn missing_of(
    stored: &std::collections::HashSet<(String, i64)>,
    acknowledged: &[(u64, u64)],
) -> u64 {
    acknowledged
        .iter()
        .filter(|(node, seq)| !stored.contains(&(format!("node-{node:06}"), *seq as i64)))
        .count() as u64
}

fn run(args: &Args, binary: &Path, nodes: u64) -> Measured {
    let nodes = nodes.clamp(args.samples.div_ceil(MAX_ROUNDS), args.samples.max(1));
    let last_hour = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .expect("an hour");
    let work = pushes(args.samples, nodes, last_hour);
    let rows: Vec<(u64, u64, u32, i64)> = work
        .iter()
        .map(|p| {
            let rounds = args.samples.div_ceil(nodes);
            let at = last_hour - TimeDelta::hours((rounds - p.seq) as i64);
            (
                p.node,
                p.seq,
                8 + (p.node % 57) as u32,
                at.timestamp_millis(),
            )
        })
        .collect();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = dir.path().join("herd.sqlite");
    let postgres = (args.database == "postgres").then(|| {
        let mut extra = if args.pg_statements {
            TempPostgres::STATEMENTS.to_string()
        } else {
            String::new()
        };
        if let Some(us) = args.pg_commit_delay {
            extra.push_str(&format!(" -c commit_delay={us} -c commit_siblings=1"));
        }
        TempPostgres::start_with_options(!args.pg_no_fsync, extra.trim())
            .expect("a throwaway PostgreSQL")
    });
    let (database, label) = match &postgres {
        Some(pg) => {
            println!("{}", pg.settings());
            (
                pg.create_database("herd").into(),
                format!("PostgreSQL, {} replica(s)", args.replicas),
            )
        }
        None => (sqlite.clone().into_os_string(), "SQLite".to_string()),
    };
    let label = match (args.tls, args.fresh_connections) {
        (false, false) => label,
        (true, false) => format!("{label}, HTTPS"),
        (false, true) => format!("{label}, a connection per push"),
        (true, true) => format!("{label}, HTTPS, a handshake per push"),
    };
    // The first replica migrates the new database; the others find it migrated.
    let tls = args.tls.then(|| Arc::new(Tls::new()));
    let workers = args.worker_threads.unwrap_or_else(|| {
        (std::thread::available_parallelism().map_or(1, |n| n.get()) / args.replicas.max(1)).max(1)
    });
    println!(
        "replicas: {}, each with {workers} worker thread(s)",
        args.replicas
    );
    let mut servers = vec![start(binary, &database, workers, tls.clone())];
    for _ in 1..args.replicas {
        servers.push(start(binary, &database, workers, tls.clone()));
    }
    servers[0].admin("/v1/admin/accounts", r#"{"id":"herd"}"#);
    let token = servers[0].admin("/v1/admin/accounts/herd/clusters", r#"{"name":"fleet"}"#)
        ["token"]
        .as_str()
        .expect("a cluster token")
        .to_string();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();

    let statements = postgres.as_ref().filter(|_| args.pg_statements);
    if let Some(pg) = statements {
        pg.count_statements("herd");
    }
    let client_before = cpu_secs_of("/proc/self/stat");
    let db_before = postgres.as_ref().map(TempPostgres::cpu_ticks);
    let mut load = push_all(&addrs, &token, work, args, tls.as_deref());
    let client_cpu_secs = cpu_secs_of("/proc/self/stat") - client_before;
    let db_cpu_secs = postgres
        .as_ref()
        .zip(db_before)
        .map(|(pg, before)| (pg.cpu_ticks() - before) as f64 / 100.0);
    if let Some(pg) = statements {
        print!("{}", pg.statements("herd"));
    }
    let service_cpu_secs: f64 = servers.iter().map(Server::cpu_secs).sum();
    let (sum, count) = servers
        .iter()
        .map(Server::commit_sizes)
        .fold((0.0, 0.0), |(s, c), (s1, c1)| (s + s1, c + c1));
    // kill -9: what was acknowledged must already be committed.
    drop(servers);
    let missing = match &postgres {
        Some(pg) => {
            // And PostgreSQL crashed: only what it recovers counts.
            pg.crash_and_restart();
            missing_in_postgres(&mut pg.client("herd"), &load.acknowledged)
        }
        None => missing_in(&sqlite, &load.acknowledged),
    };
    drop(postgres);
    load.latencies.sort();
    let mean_group = if count > 0.0 { sum / count } else { 1.0 };
    let ceiling = (args.database == "sqlite").then(|| {
        let group = (mean_group.round() as usize).max(1);
        (bare_sqlite(dir.path(), &rows, group), group)
    });
    Measured {
        label,
        nodes,
        samples: args.samples,
        accepted: load.acknowledged.len() as u64,
        http_secs: load.secs,
        p50: percentile(&load.latencies, 50),
        p99: percentile(&load.latencies, 99),
        max: load.latencies.last().copied().unwrap_or_default(),
        busy: load.busy,
        errors: load.errors,
        missing,
        commits: count,
        service_cpu_secs,
        client_cpu_secs,
        db_cpu_secs,
        mean_group,
        ceiling,
    }
}

/// Writes the rows with a bare rusqlite loop, one transaction per `group`
/// samples, into a database the aggregator's `Store` created; samples/s.
fn bare_sqlite(dir: &Path, rows: &[(u64, u64, u32, i64)], group: usize) -> f64 {
    use aggregator::store::{Durability, Store};
    let path = dir.join("bare.sqlite");
    {
        let mut store = Store::open(&path, Durability::Durable).expect("open the store");
        store
            .accounts()
            .create_account("herd", Utc::now())
            .expect("create the account");
    }
    let mut conn = rusqlite::Connection::open(&path).expect("open the database");
    // The pragmas of Store::open with Durability::Durable.
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    conn.pragma_update(None, "cache_size", -16_384).unwrap();
    let account_ref: i64 = conn
        .query_row("SELECT ref FROM accounts WHERE id = 'herd'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let received_at_ms = Utc::now().timestamp_millis();
    let mut node_ids: HashMap<u64, i64> = HashMap::new();
    let mut next_id: i64 = 1;
    let started = Instant::now();
    for chunk in rows.chunks(group) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        {
            let mut insert_node = tx
                .prepare_cached(
                    "INSERT INTO nodes (account_ref, cluster, name) VALUES (?1, ?2, ?3)",
                )
                .unwrap();
            // The store's single-row statement for a sample with a seq.
            let mut insert_sample = tx
                .prepare_cached(
                    "INSERT INTO samples (account_ref, at_ms, node_id, id, cores, received_at_ms, seq, agent_version)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .unwrap();
            for &(node, seq, cores, at_ms) in chunk {
                let node_id = match node_ids.get(&node) {
                    Some(id) => *id,
                    None => {
                        insert_node
                            .execute((account_ref, "fleet", format!("node-{node:06}")))
                            .unwrap();
                        let id = tx.last_insert_rowid();
                        node_ids.insert(node, id);
                        id
                    }
                };
                insert_sample
                    .execute((
                        account_ref,
                        at_ms,
                        node_id,
                        next_id,
                        cores,
                        received_at_ms,
                        seq as i64,
                        "bench",
                    ))
                    .unwrap();
                next_id += 1;
            }
        }
        tx.commit().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored as usize,
        rows.len(),
        "the bare loop stores every row"
    );
    rows.len() as f64 / secs
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn print_run(m: &Measured) {
    let rate = m.http_per_sec();
    println!();
    println!(
        "== {}: {} nodes x {} sample(s) each = {} samples ({} hourly herd(s)) ==",
        m.label,
        m.nodes,
        m.samples.div_ceil(m.nodes),
        m.samples,
        m.samples.div_ceil(m.nodes)
    );
    println!(
        "http: {} accepted in {:.2} s = {:.0} samples/s; latency p50 {}, p99 {}, max {}; {} answered 429/503 (retried), {} errors",
        m.accepted, m.http_secs, rate, ms(m.p50), ms(m.p99), ms(m.max), m.busy, m.errors
    );
    println!(
        "cpu: service {:.2} s = {:.0} us per accepted sample; load generator {:.2} s = {:.0} us per request (both share the machine)",
        m.service_cpu_secs,
        m.service_cpu_secs * 1e6 / m.accepted.max(1) as f64,
        m.client_cpu_secs,
        m.client_cpu_secs * 1e6 / m.samples.max(1) as f64
    );
    if let Some(db) = m.db_cpu_secs {
        println!(
            "cpu: PostgreSQL server {:.2} s during the push = {:.0} us per accepted sample (same machine)",
            db,
            db * 1e6 / m.accepted.max(1) as f64
        );
    }
    println!(
        "group commit: {:.0} commits, {:.1} samples per commit on average (all replicas)",
        m.commits, m.mean_group
    );
    match m.ceiling {
        Some((per_sec, group)) => {
            println!(
                "bare rusqlite ceiling: {per_sec:.0} samples/s (one transaction per {group} samples)"
            );
            println!("http / ceiling: {:.1}%", m.share().unwrap_or(0.0) * 100.0);
        }
        None => {
            println!("bare rusqlite ceiling: skipped (it is SQLite's; this run is on PostgreSQL)")
        }
    }
    println!(
        "committed: {} of {} acknowledged samples found in the database after kill -9{} ({} missing)",
        m.accepted - m.missing,
        m.accepted,
        if m.db_cpu_secs.is_some() {
            " of every replica and a crash and restart of PostgreSQL"
        } else {
            ""
        },
        m.missing
    );
    println!(
        "  {} throughput {:.0} samples/s vs >= {:.0} ({:+.0}%)",
        verdict(rate >= TARGET_SAMPLES_PER_SEC),
        rate,
        TARGET_SAMPLES_PER_SEC,
        (rate / TARGET_SAMPLES_PER_SEC - 1.0) * 100.0
    );
    match m.share() {
        Some(share) => println!(
            "  {} share of ceiling {:.1}% vs >= {:.0}% ({:+.1} points)",
            verdict(share >= TARGET_CEILING_SHARE),
            share * 100.0,
            TARGET_CEILING_SHARE * 100.0,
            (share - TARGET_CEILING_SHARE) * 100.0
        ),
        None => println!("  n/a  share of the bare-SQLite ceiling (PostgreSQL run)"),
    }
    println!(
        "  {} p99 {} vs <= {} ms ({:+.1} ms)",
        verdict(m.p99 <= TARGET_P99),
        ms(m.p99),
        TARGET_P99.as_millis(),
        (m.p99.as_secs_f64() - TARGET_P99.as_secs_f64()) * 1000.0
    );
    println!(
        "  {} every acknowledged sample committed ({} missing{})",
        verdict(m.missing == 0),
        m.missing,
        if m.errors > 0 || m.accepted < m.samples {
            format!(", {} not acknowledged", m.samples - m.accepted)
        } else {
            String::new()
        }
    );
}

fn print_table(rows: &[Measured]) {
    println!();
    println!("| database | nodes | samples/node | samples/s (HTTP) | p50 | p99 | max | service CPU us/sample | DB server CPU us/sample | samples/commit | ceiling samples/s | HTTP/ceiling | missing |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in rows {
        let per_sample = |secs: f64| format!("{:.0}", secs * 1e6 / m.accepted.max(1) as f64);
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            m.label,
            m.nodes,
            m.samples.div_ceil(m.nodes),
            m.http_per_sec(),
            ms(m.p50),
            ms(m.p99),
            ms(m.max),
            per_sample(m.service_cpu_secs),
            m.db_cpu_secs.map_or_else(|| "-".to_string(), per_sample),
            m.mean_group,
            m.ceiling
                .map_or_else(|| "skipped".to_string(), |(c, _)| format!("{c:.0}")),
            m.share()
                .map_or_else(|| "-".to_string(), |s| format!("{:.1}%", s * 100.0)),
            m.missing
        );
    }
}
