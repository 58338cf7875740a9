//! Three `aggregator serve` processes on one PostgreSQL database through a
//! billing day: every replica ingests, every replica's 02:00 job wakes, the
//! one that leads the run is killed (`kill -9`) while it bills, and another
//! finishes the day. Exactly one line per account and day must be issued,
//! and each must reach the billing backend.
//!
//! The replicas' wall clocks are moved by libfaketime so that 02:00 in the
//! billing zone comes 45 seconds after they start; their timers (monotonic)
//! are left alone. Runs when the suite runs on PostgreSQL
//! (`CORE_METER_TEST_POSTGRES`), which `.ci/run` does.

use crate::support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aggregator::config::Database;
use aggregator::store::Durability;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::zone::BillingZone;

/// Accounts in the fleet: enough that billing them takes the leader a while.
const ACCOUNTS: usize = 600;
const REPLICAS: usize = 3;
const ADMIN: &str = "admin-replicas";
/// Where Debian's `faketime` package puts its preload library, by architecture.
const FAKETIME_LIBS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

fn cannot_run(why: &str) {
    testkit::skip("POSTGRES", &format!("replicas: {why}"));
}

struct Replica {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, n: usize, url: &str, webhook: &str, clock_offset: i64) -> Replica {
        let lib = FAKETIME_LIBS
            .iter()
            .find(|p| Path::new(p).exists())
            .expect("libfaketime");
        let mut command = Command::new(env!("CARGO_BIN_EXE_aggregator"));
        let addr = testkit::ports::HeldPort::new()
            .hand_to(&mut command)
            .to_string();
        let config = dir.join(format!("replica-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndatabase = \"{url}\"\nadmin_token = \"{ADMIN}\"\n\
                 [webhook]\nurl = \"{webhook}\"\ntimeout_secs = 2\nmax_backoff_secs = 1\n\
                 secret = \"{}\"\n",
                support::WEBHOOK_SECRET
            ),
        )
        .unwrap();
        let log = dir.join(format!("replica-{n}.log"));
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env("LD_PRELOAD", lib)
            .env("FAKETIME", format!("{clock_offset:+}s"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        drop(command);
        Replica { child, addr, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn leads_runs(&self) -> usize {
        self.log_text()
            .matches("this replica leads the billing run")
            .count()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The wall clock moved as libfaketime moves the replicas'.
struct Moved(TimeDelta);

impl shared::clock::Clock for Moved {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn three_replicas_bill_each_account_and_day_once_though_the_leader_is_killed_mid_run() {
    if support::postgres_server().is_none() {
        // The SQLite pass of the suite; `.ci/run`'s PostgreSQL pass runs it.
        eprintln!(
            "replicas: skipped: the suite runs on SQLite (CORE_METER_TEST_POSTGRES is not set)"
        );
        return;
    }
    if !FAKETIME_LIBS.iter().any(|p| Path::new(p).exists()) {
        return cannot_run("libfaketime is not installed (Debian package faketime)");
    }
    let dir = tempfile::tempdir().unwrap();
    let Database::Postgres(url) = support::database(&dir.path().join("replicas")) else {
        unreachable!("the suite runs on PostgreSQL")
    };
    let zone = BillingZone::default();

    // The replicas' clocks start 45 s before the next 02:00; the day billed
    // at that 02:00 is `day`.
    let now = Utc::now();
    let day: NaiveDate = zone.first_day_not_due(now);
    let due: DateTime<Utc> = zone.due_at(day);
    let fake_start = due - TimeDelta::seconds(45);
    let offset = (fake_start - now).num_seconds();

    // The accounts and their clusters, straight into the database.
    let tokens: Vec<String> = support::off_runtime(|| {
        let mut store = aggregator::store::Store::connect(
            &Database::Postgres(url.clone()),
            Durability::Durable,
        )
        .unwrap();
        (0..ACCOUNTS)
            .map(|i| {
                let account = format!("tenant-{i:04}");
                store
                    .accounts()
                    .create_account(&account, fake_start)
                    .unwrap();
                store
                    .accounts()
                    .create_cluster(&account, "prod", None, fake_start)
                    .unwrap()
            })
            .collect()
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let webhook = rt.block_on(support::Webhook::start(0));
    // The backend checks signatures' time on the replicas' (moved) clock.
    webhook.keep_time_with(std::sync::Arc::new(Moved(TimeDelta::seconds(offset))));
    let mut replicas: Vec<Option<Replica>> = (0..REPLICAS)
        .map(|n| Some(Replica::start(dir.path(), n, &url, &webhook.url, offset)))
        .collect();
    let client = reqwest::Client::new();
    rt.block_on(async {
        for r in replicas.iter().flatten() {
            let ready = format!("http://{}/readyz", r.addr);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(resp) = client.get(&ready).send().await {
                    if resp.status().is_success() {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "replica at {} never ready",
                    r.addr
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Every account's day, 24 hourly samples of 600 to 604 cores (over the
    // default cap of 500, so each day bills), pushed round-robin to the replicas.
    let addrs: Vec<String> = replicas.iter().flatten().map(|r| r.addr.clone()).collect();
    let pushed = rt.block_on(async {
        let started = Instant::now();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(12));
        let mut tasks = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let samples: Vec<Value> = (0..24)
                .map(|h| {
                    let at = zone.day_start(day) + TimeDelta::hours(h) + TimeDelta::minutes(7);
                    json!({"node": "node-1", "cores": 600 + i % 5, "at": at.to_rfc3339(),
                           "seq": h + 1, "agent_version": "0.2.0"})
                })
                .collect();
            let url = format!("http://{}/v1/samples", addrs[i % addrs.len()]);
            let (client, token, gate) = (client.clone(), token.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"samples": samples}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        started
    });
    let mut db = support::off_runtime(|| postgres::Client::connect(&url, postgres::NoTls).unwrap());
    let stored = support::off_runtime(|| count(&mut db, "SELECT count(*) FROM samples"));
    assert_eq!(stored, i64::try_from(ACCOUNTS * 24).unwrap());
    let leads_before: Vec<usize> = replicas.iter().flatten().map(Replica::leads_runs).collect();
    assert!(
        Utc::now() + TimeDelta::seconds(offset) < due,
        "the samples took {:?} and were not all in before 02:00; lower ACCOUNTS",
        pushed.elapsed()
    );

    // 02:00: one replica takes the lead; kill it once it has issued lines.
    let day_sql = format!("SELECT count(*) FROM bill_lines WHERE day = '{day}'");
    let leader = {
        let mut found = None;
        testkit::eventually(
            Duration::from_secs(90),
            "a replica leads the 02:00 run",
            || {
                found = replicas
                    .iter()
                    .flatten()
                    .enumerate()
                    .find(|(n, r)| r.leads_runs() > leads_before[*n])
                    .map(|(n, _)| n);
                found.is_some()
            },
        );
        found.unwrap()
    };
    let issued_at_kill = support::off_runtime(|| {
        let mut issued = 0;
        testkit::eventually(Duration::from_secs(60), "the leader issues a line", || {
            issued = count(&mut db, &day_sql);
            issued > 0
        });
        let mut r = replicas[leader].take().unwrap();
        r.child.kill().unwrap();
        r.child.wait().unwrap();
        count(&mut db, &day_sql)
    });
    assert!(
        issued_at_kill < i64::try_from(ACCOUNTS).unwrap(),
        "the leader billed all {ACCOUNTS} accounts before it was killed; raise ACCOUNTS"
    );

    // Another replica finds the run unfinished at its next poll (30 s at
    // most), leads it, and the outbox drains (the dead replica's claims
    // after their 32 s lease).
    support::off_runtime(|| {
        testkit::eventually(
            Duration::from_secs(120),
            "the day billed for every account",
            || count(&mut db, &day_sql) == i64::try_from(ACCOUNTS).unwrap(),
        );
        testkit::eventually(Duration::from_secs(120), "every line delivered", || {
            count(
                &mut db,
                "SELECT count(*) FROM outbox WHERE delivered_at_ms IS NULL",
            ) == 0
        });
    });
    let survivors_led: usize = replicas
        .iter()
        .enumerate()
        .filter_map(|(n, r)| r.as_ref().map(|r| r.leads_runs() - leads_before[n]))
        .sum();
    assert!(
        survivors_led >= 1,
        "a surviving replica led the rest of the run"
    );

    // One line per account and day, each the daily line, each at the webhook.
    let per_account: Vec<(String, i64, i64)> = support::off_runtime(|| {
        db.query(
            "SELECT a.id, count(*), max(b.seq) FROM bill_lines b JOIN accounts a ON a.ref = b.account_ref
              WHERE b.day = $1 GROUP BY a.id ORDER BY a.id",
            &[&day.to_string()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    });
    assert_eq!(per_account.len(), ACCOUNTS);
    assert!(
        per_account.iter().all(|(_, n, seq)| *n == 1 && *seq == 1),
        "an account has more than its daily line: {:?}",
        per_account.iter().find(|(_, n, _)| *n != 1)
    );
    let calls = webhook.calls.lock().unwrap().clone();
    let refused = webhook.rejections();
    assert!(
        refused.iter().all(|r| r.starts_with("replayed")),
        "every request carried a valid signature: {refused:?}"
    );
    let mut received: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (key, line, _) in &calls {
        if line["day"] == json!(day.to_string()) {
            received.entry(key.clone()).or_default().push(line.clone());
        }
    }
    assert_eq!(
        received.len(),
        ACCOUNTS,
        "every account's line reached the webhook"
    );
    let posts: usize = received.values().map(Vec::len).sum();
    // A line is posted twice only if the killed replica died between the
    // backend's 2xx and recording it: then with the same key and body, which
    // the backend takes once.
    for (key, lines) in &received {
        assert!(lines.windows(2).all(|w| w[0] == w[1]), "{key}: {lines:?}");
    }
    assert!(posts - ACCOUNTS <= 1, "{posts} posts for {ACCOUNTS} lines");
    eprintln!(
        "replicas: {ACCOUNTS} accounts; replica {leader} killed after {issued_at_kill} lines; \
         {ACCOUNTS} lines issued once each; {posts} posts for {} keys",
        received.len()
    );
}
