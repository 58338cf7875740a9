//! Benchmark: the console's pages through the release `aggregator serve`
//! on SQLite (issue 22).
//!
//! Run with `cargo bench -p e2e --bench console_pages` (`-- --days N
//! --nodes N --accounts N` for other sizes). Two stores are built first,
//! in-process, through the replay path (`replay_into`: the store's own
//! ingest and billing run, the fleet generator's samples):
//!
//! 1. **One account with 1,000 nodes and 365 billed days** (target: every
//!    page under 200 ms): a year of hourly samples (8.76 million), a
//!    billing run after each day. Each page is fetched 15 times after one
//!    warm-up, with the admin token as a bearer; the median and the
//!    slowest are printed.
//! 2. **10,000 accounts** (target: the accounts page under 300 ms): one
//!    node each for three days, billed; the first page, sorted by
//!    name, and a page sorted by month to date with a filter.
//!
//! The bench exits non-zero when a target is missed at the default sizes.

// Timings are measurements, never money: floating point is right here.
#![allow(clippy::float_arithmetic)]

use std::path::Path;
use std::time::Instant;

use aggregator::commands::replay::{config_from, parse_case, replay_into};
use aggregator::store::{Durability, Store};
use chrono::{DateTime, Days, Utc};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const PAGE_TARGET_MS: f64 = 200.0;
const ACCOUNTS_TARGET_MS: f64 = 300.0;
const ROUNDS: usize = 15;
/// Days generated and replayed at once: a month of 1,000 nodes is about
/// 720,000 samples, 80 MB of case text.
const CHUNK_DAYS: u32 = 30;

/// The release service on a store, and a client that does not follow redirects.
struct Service {
    /// Runs until dropped.
    _served: e2e::procs::Service,
    base: String,
    client: reqwest::Client,
}

impl Service {
    fn start(database: &Path) -> Service {
        let options = e2e::procs::ServiceOptions {
            program: Some(e2e::procs::release_binary("aggregator")),
            env: vec![("RUST_LOG".into(), "warn".into())],
            ..Default::default()
        };
        let served = e2e::procs::Service::start_with(database, ADMIN, &options);
        Service {
            base: format!("http://{}", served.addr),
            _served: served,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// Fetches `path` `ROUNDS` times after one warm-up: (median, slowest) in
    /// ms, and the page's size.
    async fn time(&self, path: &str) -> (f64, f64, usize) {
        let mut times = Vec::with_capacity(ROUNDS);
        let mut size = 0;
        for round in 0..=ROUNDS {
            let started = Instant::now();
            let answer = self
                .client
                .get(format!("{}{path}", self.base))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body = answer.bytes().await.unwrap();
            let took = started.elapsed().as_secs_f64() * 1000.0;
            assert!(
                status.is_success(),
                "{path}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            size = body.len();
            if round > 0 {
                times.push(took);
            }
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], times[times.len() - 1], size)
    }
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Replays `fleet` into the store at `path`, `CHUNK_DAYS` at a time: the
/// accounts and their licences with the first chunk, samples and runs
/// with each.
fn build(path: &Path, fleet: &e2e::fleet::Fleet) -> usize {
    let mut store = Store::open(path, Durability::Scratch).expect("open the store");
    let mut done = 0u32;
    let mut bills = 0;
    while done < fleet.days {
        let chunk = e2e::fleet::Fleet {
            days: CHUNK_DAYS.min(fleet.days - done),
            first_day: fleet.first_day + Days::new(u64::from(done)),
            seed: fleet.seed + u64::from(done),
            ..fleet.clone()
        };
        let text = e2e::fleet::generate(&chunk);
        let mut case = parse_case(text.as_bytes()).expect("a generated case");
        if done > 0 {
            case.accounts.clear();
        }
        let config = config_from(&case.settings).expect("the case's settings");
        let mut runs: Vec<DateTime<Utc>> = case.runs.iter().map(|r| r.parse().unwrap()).collect();
        runs.sort();
        let output = replay_into(&case, &config, &runs, &mut store).expect("replay a chunk");
        bills += output.bills.len();
        done += chunk.days;
    }
    bills
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let days = arg("--days", 365);
    let nodes = arg("--nodes", 1_000);
    let accounts = arg("--accounts", 10_000);
    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let dir = tempfile::tempdir().unwrap();
    let mut missed = Vec::new();

    // 1. One account, `nodes` nodes, `days` billed days ending yesterday.
    let one = dir.path().join("one-account.sqlite");
    let fleet = e2e::fleet::Fleet {
        nodes,
        days,
        accounts: 1,
        first_day: today - Days::new(u64::from(days)),
        ..Default::default()
    };
    let started = Instant::now();
    let bills = build(&one, &fleet);
    println!(
        "built: 1 account, {nodes} nodes, {days} days ({} samples), {bills} bill lines, in {:.0} s",
        u64::from(nodes) * 24 * u64::from(days),
        started.elapsed().as_secs_f64()
    );
    let service = Service::start(&one);
    let id = "acct-0";
    let past_month = (today - Days::new(40)).format("%Y-%m").to_string();
    let yesterday = (today - Days::new(1)).to_string();
    println!("load average before: {}", load());
    println!("| page | median | slowest | bytes |");
    println!("|---|---|---|---|");
    for page in [
        format!("/console/accounts/{id}"),
        format!("/console/accounts/{id}/usage"),
        format!("/console/accounts/{id}/usage?month={past_month}"),
        format!("/console/accounts/{id}/purchase"),
        format!("/console/accounts/{id}/images"),
        format!("/console/accounts/{id}/log-storage"),
        format!("/console/accounts/{id}/bills"),
        format!("/console/accounts/{id}/notices"),
        format!("/console/accounts/{id}/statements/{past_month}?format=html"),
        format!("/console/accounts/{id}/statements/{past_month}"),
        format!("/console/accounts/{id}/reports/{yesterday}"),
        "/console/accounts".to_string(),
    ] {
        let (median, slowest, size) = service.time(&page).await;
        println!("| `{page}` | {median:.1} ms | {slowest:.1} ms | {size} |");
        if median > PAGE_TARGET_MS {
            missed.push(format!(
                "{page}: median {median:.1} ms over {PAGE_TARGET_MS} ms"
            ));
        }
    }
    println!("load average after: {}", load());
    drop(service);

    // 2. `accounts` accounts, one node each, three billed days.
    let many = dir.path().join("many-accounts.sqlite");
    let fleet = e2e::fleet::Fleet {
        nodes: accounts,
        days: 3,
        accounts,
        first_day: today - Days::new(3),
        ..Default::default()
    };
    let started = Instant::now();
    let bills = build(&many, &fleet);
    println!(
        "built: {accounts} accounts, one node each, 3 days, {bills} bill lines, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let service = Service::start(&many);
    println!("| page | median | slowest | bytes |");
    println!("|---|---|---|---|");
    for page in [
        "/console/accounts",
        "/console/accounts?sort=month&page=3",
        "/console/accounts?q=acct-99&flag=licence_short",
    ] {
        let (median, slowest, size) = service.time(page).await;
        println!("| `{page}` | {median:.1} ms | {slowest:.1} ms | {size} |");
        if median > ACCOUNTS_TARGET_MS {
            missed.push(format!(
                "{page}: median {median:.1} ms over {ACCOUNTS_TARGET_MS} ms"
            ));
        }
    }
    println!("load average after: {}", load());
    if !missed.is_empty() {
        eprintln!("missed: {missed:#?}");
        std::process::exit(1);
    }
}
