//! Benchmark: a fleet of a million nodes pushing once an hour for two
//! simulated days, against aggregator replicas on one PostgreSQL database,
//! billed by the service's own 02:00 job (issue 23).
//!
//! Run with `cargo bench -p e2e --bench million_fleet` (1,000,000 nodes,
//! 1,000 accounts, 48 hours, 3 replicas on a throwaway PostgreSQL with its
//! durable defaults; `--pg-commit-delay 10000` sets the `commit_delay` the
//! figures of 2026-12-05 were measured with, before the replicas gathered
//! their own groups). `--nodes`, `--accounts`, `--hours`, `--replicas` and
//! `--database sqlite` (one replica) size it down or move it.
//!
//! Time is compressed: the replicas run under libfaketime (Debian's
//! `faketime`), their wall clock read from a file this bench rewrites, so
//! each simulated hour lasts only as long as its herd takes to push. For
//! every hour the bench moves the replicas' clock to 10 minutes past it
//! (the agents spread their pushes over those minutes), waits until every
//! replica's `Date` header shows it, and then pushes every node's sample of
//! the hour (its `at` at the node's own second of those 10 minutes, seq =
//! hour + 1) as fast as the replicas accept them, over keep-alive
//! connections, node i to replica i mod N; 429, 503 and a failed connection
//! are retried, at the next replica, as an agent behind a load balancer
//! would. An hour's herd must drain within the 10 minutes real agents
//! spread it over, or the backlog would grow: each hour's drain time is
//! printed, and a slower hour fails the run. The 02:00 job runs by itself at the
//! simulated 02:00 while the next herds are pushed; after the last hour the
//! clock moves to 02:10 after the last whole day and the bench waits for its
//! bills.
//!
//! Each account has one cluster, a licence for half of its nodes' cores and
//! a cap above the rest (every tenth account: the least cap, 500 cores,
//! below its excess), so that its daily line is 24 hours of (cores -
//! licensed) excess, billed whole or up to the cap at 0.25 USD a core. At
//! the end every replica is killed (`kill -9`), PostgreSQL is crashed and
//! restarted, and the bench reads back every stored sample: each
//! acknowledged one must be there once, with the `at` and cores pushed, and
//! nothing else. Through the API each account must have one daily line per
//! whole day with those figures and no adjustment. A lost, doubled, altered
//! or unacknowledged sample, a slow hour, or a missing or wrong bill fails
//! the run (exit 1). The crash comes after the pushes: a crash during them
//! is `ingest_herd`'s check and the campaign's (TESTING.md).

// Rates, shares and milliseconds are measurements, not money.
#![allow(clippy::float_arithmetic)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use clap::Parser;
use e2e::postgres::TempPostgres;
use e2e::procs::{cpu_secs_of, loadavg, Service, ServiceOptions};
use rust_decimal::Decimal;
use shared::zone::BillingZone;

/// The billing zone the replicas run in (the product's default).
const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
/// Real agents spread an hour's pushes over its first 10 minutes.
const SPREAD: TimeDelta = TimeDelta::minutes(10);
/// How long a push is retried before it counts as failed.
const PUSH_PATIENCE: Duration = Duration::from_secs(600);
/// How long the bench waits for the 02:00 job's bills.
const BILLS_PATIENCE: Duration = Duration::from_secs(1_800);
/// Where Debian's `faketime` puts its preload library, by architecture.
const FAKETIME_LIBS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

#[derive(Parser, Debug)]
#[command(about = "A million nodes for two simulated days, billed by the 02:00 job")]
struct Args {
    /// Nodes, each pushing one sample an hour.
    #[arg(long, default_value_t = 1_000_000)]
    nodes: u64,
    /// Accounts; node i belongs to account i mod accounts.
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,
    /// Simulated hours, from local midnight; every whole day is billed.
    #[arg(long, default_value_t = 48)]
    hours: u64,
    /// Aggregator replicas on the one database (1 with SQLite).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// The service's database.
    #[arg(long, default_value = "postgres", value_parser = ["sqlite", "postgres"])]
    database: String,
    /// PostgreSQL's `commit_delay` in microseconds (with `commit_siblings`
    /// = 1); 0 leaves it off.
    #[arg(long, default_value_t = 0)]
    pg_commit_delay: u32,
    /// Pushes in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Use this aggregator binary instead of building target/release/aggregator.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if args.nodes == 0
        || args.accounts == 0
        || args.accounts > args.nodes
        || args.hours < 24
        || args.replicas == 0
        || (args.database == "sqlite" && args.replicas != 1)
    {
        eprintln!("million_fleet: needs 1 <= accounts <= nodes, hours >= 24 (one whole day), and one replica on SQLite");
        std::process::exit(2);
    }
    let Some(faketime) = FAKETIME_LIBS.iter().find(|p| Path::new(p).exists()) else {
        eprintln!("million_fleet: libfaketime is not installed (Debian package faketime)");
        std::process::exit(2);
    };
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(|| e2e::procs::release_binary("aggregator"));
    let failures = run(&args, &binary, faketime);
    println!("load average after: {}", loadavg());
    if failures.is_empty() {
        println!("million_fleet: every acknowledged sample is stored once and every whole day is billed right");
    } else {
        for f in &failures {
            eprintln!("million_fleet: FAILED: {f}");
        }
        std::process::exit(1);
    }
}

/// The replicas' wall clock: a libfaketime timestamp file holding their
/// offset from the real clock, replaced whole (rename) so a reader never
/// sees half of it.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    fn env(&self, library: &str) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", library.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            // Re-read at most once a second, so a move shows within one.
            ("FAKETIME_CACHE_DURATION", "1".to_string()),
            // Timers and the runtime's sleeps stay on real time.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// From now on the replicas' clock reads `at` (and runs on from there).
    fn set(&self, at: DateTime<Utc>) {
        let offset = (at - Utc::now()).num_milliseconds();
        let spec = format!("{:+}.{:03}s\n", offset / 1000, (offset % 1000).abs());
        let spec = if offset < 0 && offset > -1000 {
            format!("-0.{:03}s\n", offset.abs())
        } else {
            spec
        };
        let next = self.file.with_extension("next");
        std::fs::write(&next, spec).expect("write the clock file");
        std::fs::rename(&next, &self.file).expect("replace the clock file");
    }
}

/// What one hour's herd measured.
struct Hour {
    secs: f64,
    acknowledged: Vec<u32>,
    p99: Duration,
    busy: u64,
    failed: u64,
}

fn run(args: &Args, binary: &Path, faketime: &str) -> Vec<String> {
    let zone = BillingZone::new(ZONE);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = FakeClock {
        file: dir.path().join("clock"),
    };
    // The first simulated day: tomorrow, local time, so the replicas'
    // clock only ever moves forward from the real one.
    let first_day = zone.day_of(Utc::now()).succ_opt().expect("a next day");
    let start = zone.day_start(first_day);
    let whole_days = args.hours / 24;
    let days: Vec<NaiveDate> = first_day.iter_days().take(whole_days as usize).collect();
    clock.set(start - TimeDelta::minutes(30));

    print_header(args, binary, first_day);
    let postgres = (args.database == "postgres").then(|| {
        let extra = if args.pg_commit_delay > 0 {
            format!(
                "-c commit_delay={} -c commit_siblings=1",
                args.pg_commit_delay
            )
        } else {
            String::new()
        };
        let pg = TempPostgres::start_with_options(true, &extra).expect("a throwaway PostgreSQL");
        println!("{}", pg.settings());
        pg
    });
    let sqlite = dir.path().join("fleet.sqlite");
    let database: PathBuf = match &postgres {
        Some(pg) => PathBuf::from(pg.create_database("fleet")),
        None => sqlite.clone(),
    };
    let admin = format!("fleet-admin-{}", std::process::id());
    let mut env = clock.env(faketime);
    env.push(("CORE_METER_TIMEZONE".into(), ZONE.name().into()));
    env.push(("RUST_LOG".into(), "info".into()));
    // Replicas that share this machine share its CPUs (docs/replicas.md).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (cpus / args.replicas.max(1)).max(1);
    println!(
        "replicas: {}, each with {workers} worker thread(s)",
        args.replicas
    );
    env.push(("CORE_METER_WORKER_THREADS".into(), workers.to_string()));
    let replicas: Vec<Service> = (0..args.replicas)
        .map(|i| {
            Service::start_with(
                &database,
                &admin,
                &ServiceOptions {
                    env: env.clone(),
                    log: Some(dir.path().join(format!("replica-{i}.log"))),
                    program: Some(binary.to_path_buf()),
                    ..ServiceOptions::default()
                },
            )
        })
        .collect();

    // Accounts, clusters, licences and caps, at the simulated start.
    let set_up = Instant::now();
    let accounts = Accounts::new(args.nodes, args.accounts);
    let mut tokens = Vec::with_capacity(args.accounts as usize);
    for a in 0..args.accounts {
        tokens.push(accounts.create(&replicas[0], a, start));
    }
    println!(
        "set-up: {} accounts, each with a cluster, a licence and a cap, in {:.1} s",
        args.accounts,
        set_up.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect();
    let auth: Arc<[String]> = tokens.iter().map(|t| format!("Bearer {t}")).collect();

    let cpu_before = Cpu::now(&replicas, postgres.as_ref());
    let pushing = Instant::now();
    let mut acknowledged = Bits::new(args.nodes * args.hours);
    let mut hours = Vec::new();
    let mut day_one_size = 0;
    for h in 0..args.hours {
        let hour_start = start + TimeDelta::hours(h as i64);
        let at = hour_start + SPREAD;
        clock.set(at);
        runtime.block_on(wait_for_clock(&client, &urls, at));
        let hour = runtime.block_on(herd(&client, &urls, &auth, args, hour_start, h + 1));
        for node in &hour.acknowledged {
            acknowledged.set(u64::from(*node) * args.hours + h);
        }
        println!(
            "hour {h:>2} ({} local): {} of {} acknowledged in {:.1} s, {:.0}/s, p99 {} ms (from the first attempt), {} retries (busy or unreachable), {} failed{}; replicas' peak RSS {} MiB",
            zone.local(hour_start).format("%Y-%m-%d %H:%M"),
            hour.acknowledged.len(),
            args.nodes,
            hour.secs,
            hour.acknowledged.len() as f64 / hour.secs,
            hour.p99.as_millis(),
            hour.busy,
            hour.failed,
            if hour.secs > SPREAD.as_seconds_f64() {
                " (MISS: slower than the 10 minutes it is spread over)"
            } else {
                ""
            },
            replicas.iter().map(|r| peak_rss_mib(r.child.id())).max().unwrap_or(0)
        );
        if h + 1 == 24 {
            day_one_size = database_size(postgres.as_ref(), &sqlite);
        }
        hours.push(Hour {
            acknowledged: Vec::new(),
            ..hour
        });
    }
    let push_secs = pushing.elapsed().as_secs_f64();

    // The last whole day's bill: 02:10 the day after it.
    let last_due = (zone.due_at(*days.last().expect("a whole day")) + SPREAD)
        .max(start + TimeDelta::hours(args.hours as i64) + SPREAD);
    clock.set(last_due);
    runtime.block_on(wait_for_clock(&client, &urls, last_due));
    let billed_by = Instant::now();
    let mut failures = Vec::new();
    let lines = loop {
        let lines = bill_lines(&replicas[0], &days);
        let complete = lines
            .as_ref()
            .is_some_and(|l| l.len() as u64 >= args.accounts * whole_days);
        if complete || billed_by.elapsed() > BILLS_PATIENCE {
            break lines.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    let cpu = Cpu::now(&replicas, postgres.as_ref()).since(&cpu_before);
    let rss: Vec<u64> = replicas
        .iter()
        .map(|r| peak_rss_mib(r.child.id()))
        .collect();
    failures.extend(accounts.check_bills(&lines, &days));
    let mut runs: Vec<(String, usize)> = replicas
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            billing_runs(&r.log_text())
                .into_iter()
                .map(move |run| (run, i))
        })
        .collect();
    runs.sort();

    // kill -9 every replica, crash the database: only what is on disk counts.
    for r in replicas {
        r.kill_hard();
    }
    let stored = match &postgres {
        Some(pg) => {
            pg.crash_and_restart();
            stored_in_postgres(&mut pg.client("fleet"), args, start)
        }
        None => stored_in_sqlite(&sqlite, args, start),
    };
    let size = database_size(postgres.as_ref(), &sqlite);
    let check = compare(&acknowledged, &stored);
    let total: u64 = acknowledged.count();
    let failed: u64 = hours.iter().map(|h| h.failed).sum();
    let busy: u64 = hours.iter().map(|h| h.busy).sum();
    let mut secs: Vec<f64> = hours.iter().map(|h| h.secs).collect();
    secs.sort_by(f64::total_cmp);
    let slowest_p99 = hours.iter().map(|h| h.p99).max().unwrap_or_default();
    let samples_per_hour = args.nodes as f64;
    println!();
    println!("pushed: {total} samples acknowledged of {} in {push_secs:.0} s ({:.0}/s overall), {failed} pushes failed, {busy} retries (busy or unreachable)", args.nodes * args.hours, total as f64 / push_secs);
    println!(
        "an hour's herd drained in: fastest {:.1} s, median {:.1} s, slowest {:.1} s (10 minutes allowed: {}); slowest p99 {} ms",
        secs[0],
        secs[secs.len() / 2],
        secs[secs.len() - 1],
        if secs[secs.len() - 1] <= SPREAD.as_seconds_f64() {
            "met, the backlog does not grow"
        } else {
            "MISS"
        },
        slowest_p99.as_millis()
    );
    println!(
        "first and last hours: {:.0}/s and {:.0}/s",
        samples_per_hour / hours[0].secs,
        samples_per_hour / hours[hours.len() - 1].secs
    );
    println!(
        "CPU from the first push to the last bill: replicas {:.0} s ({:.1} µs a sample), database {} , load generator {:.0} s",
        cpu.replicas,
        cpu.replicas / total as f64 * 1e6,
        cpu.database.map_or("n/a".to_string(), |d| format!(
            "{d:.0} s ({:.1} µs a sample)",
            d / total as f64 * 1e6
        )),
        cpu.generator
    );
    println!(
        "replicas' peak RSS: {} MiB",
        rss.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "database: {} bytes after 24 hours, {} after {} ({:.1} bytes a stored sample, everything included; {:.1} a sample pushed after the first day)",
        day_one_size,
        size,
        args.hours,
        size as f64 / check.stored.max(1) as f64,
        size.saturating_sub(day_one_size) as f64 / (args.nodes * (args.hours - 24)).max(1) as f64
    );
    println!("billing runs (from the replicas' logs):");
    for (run, replica) in &runs {
        println!("  replica {replica}: {run}");
    }
    println!(
        "bills: {} lines for {} accounts x {} whole day(s), waited {:.0} s after the last 02:00",
        lines.len(),
        args.accounts,
        whole_days,
        billed_by.elapsed().as_secs_f64()
    );
    println!(
        "stored after kill -9 (PostgreSQL: and a server crash): {} samples, {} acknowledged missing, {} stored twice, {} stored but never acknowledged, {} with another at or cores",
        check.stored, check.missing, check.doubled, check.unacknowledged, check.altered
    );
    if check.missing > 0 {
        failures.push(format!(
            "{} acknowledged sample(s) are not stored",
            check.missing
        ));
    }
    if check.altered > 0 {
        failures.push(format!(
            "{} sample(s) are stored with another at or other cores than pushed",
            check.altered
        ));
    }
    if check.doubled > 0 {
        failures.push(format!("{} sample(s) are stored twice", check.doubled));
    }
    if failed > 0 {
        failures.push(format!("{failed} push(es) were never acknowledged"));
    }
    // A push either ends acknowledged or counts as failed: only a failed
    // one may have been stored unacknowledged.
    if check.unacknowledged > failed {
        failures.push(format!(
            "{} stored sample(s) were never acknowledged (or are not the fleet's)",
            check.unacknowledged
        ));
    }
    let slow = hours
        .iter()
        .filter(|h| h.secs > SPREAD.as_seconds_f64())
        .count();
    if slow > 0 {
        failures.push(format!(
            "{slow} hour(s) took longer to push than the 10 minutes agents spread them over: the backlog grows"
        ));
    }
    drop(postgres);
    failures
}

fn print_header(args: &Args, binary: &Path, first_day: NaiveDate) {
    println!("million_fleet: {} nodes in {} accounts pushing once an hour for {} simulated hours from {first_day} 00:00 {}", args.nodes, args.accounts, args.hours, ZONE.name());
    println!("date: {}", Utc::now().format("%Y-%m-%d %H:%M:%S UTC"));
    println!(
        "machine: {} CPUs (nproc); load average before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("binary: {}", binary.display());
    println!(
        "settings: {} replica(s) on {}; {} pushes in flight over keep-alive connections, one sample each, node i to replica i mod {}",
        args.replicas,
        if args.database == "postgres" {
            format!(
                "one throwaway PostgreSQL (durable defaults, commit_delay {} µs)",
                args.pg_commit_delay
            )
        } else {
            "a SQLite file (WAL, synchronous=FULL)".to_string()
        },
        args.concurrency,
        args.replicas
    );
}

/// The fleet's accounts: node i is account i mod n's, with 8 + i mod 57
/// cores, every hour.
struct Accounts {
    nodes: u64,
    count: u64,
}

impl Accounts {
    fn new(nodes: u64, count: u64) -> Accounts {
        Accounts { nodes, count }
    }

    fn name(a: u64) -> String {
        format!("fleet-{a:05}")
    }

    fn cores(node: u64) -> u64 {
        8 + node % 57
    }

    /// The account's nodes' cores together: its total in every hour.
    fn total(&self, a: u64) -> u64 {
        (a..self.nodes)
            .step_by(self.count as usize)
            .map(Accounts::cores)
            .sum()
    }

    /// What its licence covers: half of the total.
    fn licensed(&self, a: u64) -> u64 {
        self.total(a) / 2
    }

    /// Its elastic cap: every tenth account's is the least (500 cores), below
    /// its excess, so its bill is the cap's; the others' is above their total.
    fn cap(&self, a: u64) -> u64 {
        if a % 10 == 9 {
            500
        } else {
            self.total(a).max(500)
        }
    }

    /// Creates account `a` with a cluster, a licence counting from the day
    /// before `start` for 30 days, and its cap; returns the cluster's token.
    fn create(&self, service: &Service, a: u64, start: DateTime<Utc>) -> String {
        let name = Accounts::name(a);
        let token = service.account_with_cluster(&name, "fleet");
        let licence = format!(
            r#"{{"cores":{},"start":"{}","end":"{}"}}"#,
            self.licensed(a),
            (start - TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (start + TimeDelta::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let (status, body) = service.admin(
            "POST",
            &format!("/v1/admin/accounts/{name}/licenses"),
            Some(&licence),
        );
        assert_eq!(status, 201, "the licence of {name}: {body}");
        let cap = format!(r#"{{"cores":{}}}"#, self.cap(a));
        let (status, body) =
            service.admin("PUT", &format!("/v1/admin/accounts/{name}/cap"), Some(&cap));
        assert_eq!(status, 200, "the cap of {name}: {body}");
        token
    }

    /// Each account has one daily line a day and no adjustment: 24 hours,
    /// 24 x (total - licensed) excess core-hours, billable cores the excess
    /// or the cap if lower, at 0.25 USD each.
    fn check_bills(&self, lines: &[serde_json::Value], days: &[NaiveDate]) -> Vec<String> {
        let mut wrong = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for line in lines {
            let account = line["account"].as_str().unwrap_or_default().to_string();
            let day = line["day"].as_str().unwrap_or_default().to_string();
            let kind = line["kind"].as_str().unwrap_or_default();
            if kind != "daily" {
                wrong.push(format!("{account} {day}: a {kind} line"));
            }
            *seen.entry((account, day)).or_insert(0u32) += 1;
            let Some(a) = line["account"]
                .as_str()
                .and_then(|n| n.strip_prefix("fleet-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                wrong.push(format!("a line for an account not in the fleet: {line}"));
                continue;
            };
            let excess = self.total(a) - self.licensed(a);
            let billable = excess.min(self.cap(a));
            let decimal = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => Decimal::from_str(s).ok(),
                other => Decimal::from_str(&other.to_string()).ok(),
            };
            let expected = [
                ("hours", Some(Decimal::from(24))),
                ("excess_core_hours", Some(Decimal::from(24 * excess))),
                ("cap_cores", Some(Decimal::from(self.cap(a)))),
                ("billable_cores", Some(Decimal::from(billable))),
                (
                    "amount",
                    Some(Decimal::from(billable) * Decimal::new(25, 2)),
                ),
            ];
            for (field, value) in expected {
                if decimal(&line[field]) != value {
                    wrong.push(format!(
                        "{} {}: {field} {}, expected {} ({excess} cores over the licence, cap {})",
                        line["account"],
                        line["day"],
                        line[field],
                        value.unwrap_or_default(),
                        self.cap(a)
                    ));
                }
            }
        }
        for a in 0..self.count {
            for day in days {
                let n = seen
                    .get(&(Accounts::name(a), day.to_string()))
                    .copied()
                    .unwrap_or(0);
                if n != 1 {
                    wrong.push(format!(
                        "{} {day}: {n} lines, expected one",
                        Accounts::name(a)
                    ));
                }
            }
        }
        wrong.truncate(20);
        wrong
    }
}

/// Every bill line of `days`, page by page; None if the service did not
/// answer (busy billing), to ask again.
fn bill_lines(service: &Service, days: &[NaiveDate]) -> Option<Vec<serde_json::Value>> {
    let mut lines = Vec::new();
    for day in days {
        let mut cursor = String::new();
        loop {
            let (status, text) = e2e::procs::request(
                service.addr,
                "GET",
                &format!("/v1/admin/bills?day={day}&limit=1000{cursor}"),
                Some(&service.admin),
                None,
            )?;
            if status != 200 {
                eprintln!("million_fleet: the bills of {day}: {status} {text}");
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            lines.extend(v["bills"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
    }
    Some(lines)
}

/// Waits until every replica's `Date` header reads `at` or later.
async fn wait_for_clock(client: &reqwest::Client, urls: &[String], at: DateTime<Utc>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls {
        loop {
            let date = client
                .get(format!("{url}/readyz"))
                .send()
                .await
                .ok()
                .and_then(|r| {
                    r.headers()
                        .get("date")
                        .and_then(|d| d.to_str().ok())
                        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                });
            // The header has whole seconds.
            if date.is_some_and(|d| d >= at - TimeDelta::seconds(1)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url}'s clock did not reach {at} (libfaketime's file); it reads {date:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Pushes every node's sample of the hour starting at `hour_start`.
async fn herd(
    client: &reqwest::Client,
    urls: &[String],
    auth: &Arc<[String]>,
    args: &Args,
    hour_start: DateTime<Utc>,
    seq: u64,
) -> Hour {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, next, auth) = (client.clone(), next.clone(), auth.clone());
        let urls: Vec<String> = urls.iter().map(|u| format!("{u}/v1/samples")).collect();
        let (nodes, accounts) = (args.nodes, args.accounts);
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut latencies = Vec::new();
            let (mut busy, mut failed) = (0u64, 0u64);
            loop {
                let node = next.fetch_add(1, Ordering::Relaxed);
                if node >= nodes {
                    break;
                }
                let at = hour_start + into_the_hour(node);
                let body = format!(
                    r#"{{"samples":[{{"node":"node-{node:07}","cores":{},"at":"{}","seq":{seq},"agent_version":"fleet"}}]}}"#,
                    Accounts::cores(node),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let mut attempt = 0usize;
                let token = &auth[(node % accounts) as usize];
                let first = Instant::now();
                loop {
                    // A retry goes to the next replica, as a load balancer
                    // may send it: stored once whichever stores it.
                    let url = &urls[(node as usize + attempt) % urls.len()];
                    attempt += 1;
                    let answer = client
                        .post(url)
                        .header("authorization", token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let answer = match answer {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            r.bytes().await.map(|b| (status, b))
                        }
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok((200, text)) => {
                            latencies.push(first.elapsed());
                            let v: serde_json::Value =
                                serde_json::from_slice(&text).unwrap_or_default();
                            let status = &v["results"][0]["status"];
                            if status == "accepted" || status == "duplicate" {
                                acknowledged.push(node as u32);
                            } else {
                                eprintln!("node {node} hour seq {seq}: {v}");
                                failed += 1;
                            }
                            break;
                        }
                        // Busy, unavailable or unreachable: an agent keeps
                        // the sample and tries again.
                        Ok((429 | 503, _)) | Err(_) if first.elapsed() < PUSH_PATIENCE => {
                            busy += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => {
                            eprintln!(
                                "node {node} seq {seq}: {:?}",
                                other.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                            );
                            failed += 1;
                            break;
                        }
                    }
                }
            }
            (acknowledged, latencies, busy, failed)
        }));
    }
    let mut hour = Hour {
        secs: 0.0,
        acknowledged: Vec::with_capacity(args.nodes as usize),
        p99: Duration::ZERO,
        busy: 0,
        failed: 0,
    };
    let mut latencies = Vec::with_capacity(args.nodes as usize);
    for task in tasks {
        let (a, l, b, f) = task.await.expect("a pusher task");
        hour.acknowledged.extend(a);
        latencies.extend(l);
        hour.busy += b;
        hour.failed += f;
    }
    hour.secs = started.elapsed().as_secs_f64();
    latencies.sort();
    hour.p99 = latencies
        .get((latencies.len().saturating_sub(1) * 99).div_ceil(100))
        .copied()
        .unwrap_or_default();
    hour
}

/// The database's size in bytes: PostgreSQL's `pg_database_size`, or the
/// SQLite file's pages (its WAL's included) as a reader sees them.
fn database_size(postgres: Option<&TempPostgres>, sqlite: &Path) -> u64 {
    match postgres {
        Some(pg) => {
            let size: i64 = pg
                .client("fleet")
                .query_one("SELECT pg_database_size('fleet')", &[])
                .expect("the database's size")
                .get(0);
            size as u64
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                sqlite,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open the database read-only");
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .expect("page_count");
            let page: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page_size");
            (pages * page) as u64
        }
    }
}

/// How far into each hour `node` samples: its own second of the spread,
/// stable hour to hour.
fn into_the_hour(node: u64) -> TimeDelta {
    TimeDelta::seconds((node * 7_919 % 600) as i64)
}

/// One bit per (node, hour).
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }

    /// Sets bit i; false if it was set already.
    fn set(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let was = self.0[word] & bit != 0;
        self.0[word] |= bit;
        !was
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// What the database holds, against what was acknowledged.
struct Stored {
    bits: Bits,
    /// Samples read, doubles included.
    rows: u64,
    doubled: u64,
    /// Rows that are not a fleet node's sample of a simulated hour.
    strange: u64,
    /// Samples stored with another `at` or other cores than pushed.
    altered: u64,
}

impl Stored {
    fn new(args: &Args) -> Stored {
        Stored {
            bits: Bits::new(args.nodes * args.hours),
            rows: 0,
            doubled: 0,
            strange: 0,
            altered: 0,
        }
    }

    /// One stored sample: its node's name, seq, `at` (ms) and cores.
    fn add(&mut self, args: &Args, start: DateTime<Utc>, sample: (&str, i64, i64, i64)) {
        let (name, seq, at_ms, cores) = sample;
        self.rows += 1;
        let node = name
            .strip_prefix("node-")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n < args.nodes);
        let hour = u64::try_from(seq - 1).ok().filter(|h| *h < args.hours);
        match (node, hour) {
            (Some(node), Some(hour)) => {
                if !self.bits.set(node * args.hours + hour) {
                    self.doubled += 1;
                }
                let pushed = start + TimeDelta::hours(hour as i64) + into_the_hour(node);
                if at_ms != pushed.timestamp_millis() || cores != Accounts::cores(node) as i64 {
                    self.altered += 1;
                }
            }
            _ => self.strange += 1,
        }
    }
}

/// Every stored sample, streamed from the day rows (each holds a node's
/// samples of one UTC day: seqs, and offsets into the day and cores packed
/// big-endian, 4 and 2 bytes each, as migration 15 stores them).
fn stored_in_postgres(client: &mut postgres::Client, args: &Args, start: DateTime<Utc>) -> Stored {
    let mut stored = Stored::new(args);
    let mut rows = client
        .query_raw(
            "SELECT n.name, d.day, d.at_offsets, d.cores, d.seqs FROM sample_days d JOIN nodes n ON n.id = d.node_id",
            std::iter::empty::<i32>(),
        )
        .expect("read the samples");
    while let Some(row) =
        postgres::fallible_iterator::FallibleIterator::next(&mut rows).expect("a row of samples")
    {
        let name: String = row.get(0);
        let day: i32 = row.get(1);
        let offsets: Vec<u8> = row.get(2);
        let cores: Vec<u8> = row.get(3);
        let seqs: Vec<i64> = row.get(4);
        if offsets.len() != seqs.len() * 4 || cores.len() != seqs.len() * 2 {
            stored.altered += seqs.len() as u64;
            continue;
        }
        for (i, seq) in seqs.into_iter().enumerate() {
            let offset = i32::from_be_bytes(offsets[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let c = i16::from_be_bytes(cores[i * 2..i * 2 + 2].try_into().expect("2 bytes"));
            let at_ms = i64::from(day) * 86_400_000 + i64::from(offset);
            stored.add(args, start, (&name, seq, at_ms, i64::from(c)));
        }
    }
    stored
}

fn stored_in_sqlite(file: &Path, args: &Args, start: DateTime<Utc>) -> Stored {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    let mut stmt = conn
        .prepare(
            "SELECT n.name, s.seq, s.at_ms, s.cores FROM samples s JOIN nodes n ON n.id = s.node_id",
        )
        .expect("prepare");
    let mut stored = Stored::new(args);
    let mut rows = stmt.query([]).expect("read the samples");
    while let Some(row) = rows.next().expect("a row") {
        let name: String = row.get(0).expect("a name");
        let (seq, at_ms, cores) = (
            row.get(1).expect("a seq"),
            row.get(2).expect("an at"),
            row.get(3).expect("cores"),
        );
        stored.add(args, start, (&name, seq, at_ms, cores));
    }
    stored
}

struct Check {
    stored: u64,
    altered: u64,
    missing: u64,
    doubled: u64,
    unacknowledged: u64,
}

fn compare(acknowledged: &Bits, stored: &Stored) -> Check {
    let (mut missing, mut unacknowledged) = (0, 0);
    for (a, s) in acknowledged.0.iter().zip(&stored.bits.0) {
        missing += u64::from((a & !s).count_ones());
        unacknowledged += u64::from((s & !a).count_ones());
    }
    Check {
        stored: stored.rows,
        altered: stored.altered,
        missing,
        doubled: stored.doubled,
        unacknowledged: unacknowledged + stored.strange,
    }
}

/// CPU seconds used so far.
struct Cpu {
    replicas: f64,
    database: Option<f64>,
    generator: f64,
}

impl Cpu {
    fn now(replicas: &[Service], postgres: Option<&TempPostgres>) -> Cpu {
        Cpu {
            replicas: replicas
                .iter()
                .map(|r| cpu_secs_of(&format!("/proc/{}/stat", r.child.id())))
                .sum(),
            database: postgres.map(|pg| pg.cpu_ticks() as f64 / 100.0),
            generator: cpu_secs_of("/proc/self/stat"),
        }
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            replicas: self.replicas - before.replicas,
            database: self.database.zip(before.database).map(|(a, b)| a - b),
            generator: self.generator - before.generator,
        }
    }
}

/// A process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The billing job's runs in a replica's log: when each led, and what it
/// logged when billing, the lifecycle and retention finished, with the
/// seconds since it began (the log's clock is the replica's).
fn billing_runs(log: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut began: Option<DateTime<Utc>> = None;
    for line in log.lines() {
        let Some((stamp, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(at) = DateTime::parse_from_rfc3339(stamp) else {
            continue;
        };
        let at = at.with_timezone(&Utc);
        if rest.contains("this replica leads the billing run") {
            began = Some(at);
        } else if let Some(b) = began {
            for step in [
                "billing run finished",
                "lifecycle step finished",
                "retention pruned",
            ] {
                if let Some((_, tail)) = rest.split_once(step) {
                    runs.push(format!(
                        "{} {step}{tail}: {:.2} s after it began",
                        b.format("%Y-%m-%d %H:%M:%S UTC"),
                        (at - b).as_seconds_f64()
                    ));
                }
            }
        }
    }
    runs
}
