//! Issue 7, scenarios 1 and 2: fifty real agents push to one real aggregator, first calmly, then through twenty `kill -9`s of the aggregator and kills of random agents; every sample taken is stored exactly once and bills as a clean run would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, Utc};
use e2e::procs::{binary, request, AgentOptions, AgentProc, Service, ServiceOptions};
use serde_json::{json, Value};
use shared::zone::BillingZone;

const ADMIN: &str = "admin-campaign";
const ACCOUNT: &str = "acme";
const CLUSTER: &str = "prod";
const AGENTS: usize = 50;
const AGGREGATOR_KILLS: usize = 20;
/// How long the fleet runs without a crash before scenario 1's check.
const CALM: Duration = Duration::from_secs(15);
/// How often every node's core count changes.
const RESIZE_EVERY: Duration = Duration::from_secs(4);
/// Kills land this far into a second at most: the agents sample on whole
/// seconds and push right after, so this is when pushes are in flight.
const BURST_MS: u64 = 400;

/// What one sample said: its cores and instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    cores: u32,
    at: DateTime<Utc>,
}

/// A node's samples by seq.
type Readings = BTreeMap<u64, Reading>;

/// A small deterministic generator (splitmix64): the kill schedule comes from
/// a seed the test prints, so a failing schedule can be tried again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One node: its agent, its fake sysfs and what kills revealed about it.
struct Node {
    index: usize,
    options: AgentOptions,
    agent: AgentProc,
    /// `devices/system/cpu/online` under the agent's `--sys-root`.
    online: PathBuf,
    /// Samples found in the spool right after a `kill -9` that the log never
    /// mentioned: the kill landed between the spool's fsync (the sample is
    /// taken) and the "sample taken" line.
    unlogged: Readings,
    kills: usize,
}

impl Node {
    fn start(dir: &Path, index: usize, aggregator: &str, token: &str) -> Node {
        let name = format!("node-{index:02}");
        let sys_root = dir.join(&name).join("sys");
        let cpu = sys_root.join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        let online = cpu.join("online");
        write_online(&online, cores_of(index, 0));
        let mut options = AgentOptions::new(dir, &name, aggregator, token);
        options.extra = vec![
            "--sys-root".into(),
            sys_root.display().to_string(),
            // Fifty agents stopping together on a loaded machine: give the
            // last push time enough that a spool left behind means a fault.
            "--shutdown-grace-secs".into(),
            "20".into(),
        ];
        let agent = AgentProc::start(&options);
        Node {
            index,
            options,
            agent,
            online,
            unlogged: Readings::new(),
            kills: 0,
        }
    }

    /// The samples its log says it took.
    fn logged(&self) -> Readings {
        self.agent
            .taken()
            .into_iter()
            .map(|t| {
                let at = instant(&t.at);
                (t.seq, Reading { cores: t.cores, at })
            })
            .collect()
    }

    /// Everything it took: its log, and the samples kills kept out of it.
    fn records(&self) -> Readings {
        let mut all = self.logged();
        for (seq, r) in &self.unlogged {
            let previous = all.insert(*seq, *r);
            assert!(
                previous.is_none() || previous == Some(*r),
                "{}: seq {seq} is {previous:?} in the log and {r:?} in the spool",
                self.options.node
            );
        }
        all
    }

    /// `kill -9`, note what the spool holds that the log does not, start again on the same spool.
    fn crash_and_restart(&mut self) {
        self.agent.kill_hard();
        self.kills += 1;
        let logged = self.logged();
        let last_logged = logged.keys().next_back().copied().unwrap_or(0);
        let mut found = 0;
        for (seq, reading) in spool_samples(&self.options.spool, &self.options.node) {
            match logged.get(&seq) {
                Some(r) => assert_eq!(
                    *r, reading,
                    "{}: seq {seq} differs between log and spool",
                    self.options.node
                ),
                None => {
                    // Only the sample being taken at the kill can miss its
                    // line, and it is the newest one.
                    assert!(
                        seq > last_logged,
                        "{}: spool holds seq {seq} without a log line, below the logged {last_logged}",
                        self.options.node
                    );
                    self.unlogged.insert(seq, reading);
                    found += 1;
                }
            }
        }
        assert!(
            found <= 1,
            "{}: {found} spooled samples without a log line after one kill",
            self.options.node
        );
        self.agent = AgentProc::start(&self.options);
    }
}

/// A node's cores in resize round `round`: different per node, growing over
/// time so that a node's last samples of an hour hold its maximum and a lost
/// one would move the bill.
fn cores_of(index: usize, round: u32) -> u32 {
    1 + (index % 8) as u32 + round
}

/// Rewrites the fake sysfs list atomically, so an agent never reads half a file.
fn write_online(path: &Path, cores: u32) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("0-{}\n", cores - 1)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("instant {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// The samples waiting in a spool's `pending/`, by seq.
fn spool_samples(spool: &Path, node: &str) -> Readings {
    let Ok(entries) = std::fs::read_dir(spool.join("pending")) else {
        return Readings::new();
    };
    let mut out = Readings::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue; // a temporary file: its sample was never taken
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("spool file {}: {e}", path.display()));
        assert_eq!(v["node"], node, "{}", path.display());
        out.insert(
            v["seq"].as_u64().unwrap(),
            Reading {
                cores: u32::try_from(v["cores"].as_u64().unwrap()).unwrap(),
                at: instant(v["at"].as_str().unwrap()),
            },
        );
    }
    out
}

/// The instant `ms` milliseconds into the wall-clock second `secs` from now.
fn into_second(secs: u64, ms: u64) -> Instant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let target = Duration::from_secs(now.as_secs() + secs) + Duration::from_millis(ms);
    Instant::now() + (target - now)
}

/// (accepted, duplicate) answered by this life of the service, from its `/metrics`.
fn ingest_counts(addr: SocketAddr) -> Option<(u64, u64)> {
    let (status, text) = request(addr, "GET", "/metrics", None, None)?;
    if status != 200 {
        return None;
    }
    let mut counts = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("core_meter_ingest_samples_total{") else {
            continue;
        };
        let value: u64 = rest.split_whitespace().last()?.parse().ok()?;
        if rest.contains(r#"result="accepted""#) {
            counts.0 += value;
        } else if rest.contains(r#"result="duplicate""#) {
            counts.1 += value;
        }
    }
    Some(counts)
}

/// Every stored sample of the account, per node: (seq, reading) in the order stored, duplicates kept.
fn stored(service: &Service, days: &BTreeSet<NaiveDate>) -> BTreeMap<String, Vec<(u64, Reading)>> {
    let mut out: BTreeMap<String, Vec<(u64, Reading)>> = BTreeMap::new();
    for day in days {
        for s in service.stored(ACCOUNT, &day.to_string()) {
            assert_eq!(s["cluster"], CLUSTER);
            out.entry(s["node"].as_str().unwrap().to_string())
                .or_default()
                .push((
                    s["seq"].as_u64().expect("agents always send a seq"),
                    Reading {
                        cores: u32::try_from(s["cores"].as_u64().unwrap()).unwrap(),
                        at: instant(s["at"].as_str().unwrap()),
                    },
                ));
        }
    }
    out
}

/// The billing days the test can have touched: from its start to now.
fn days_since(zone: &BillingZone, start: DateTime<Utc>) -> BTreeSet<NaiveDate> {
    let mut days = BTreeSet::new();
    let mut day = zone.day_of(start);
    while day <= zone.day_of(Utc::now()) {
        days.insert(day);
        day = day.succ_opt().unwrap();
    }
    days
}

/// Duplicated (node, seq) rows among stored samples.
fn duplicated(stored: &BTreeMap<String, Vec<(u64, Reading)>>) -> usize {
    stored
        .values()
        .map(|rows| {
            let distinct: BTreeSet<u64> = rows.iter().map(|(seq, _)| *seq).collect();
            rows.len() - distinct.len()
        })
        .sum()
}

fn aggregator(args: &[&str]) -> Value {
    let out = std::process::Command::new(binary("aggregator"))
        .args(args)
        .output()
        .expect("run the aggregator");
    assert!(
        out.status.success(),
        "aggregator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the aggregator prints JSON")
}

/// `aggregator replay` of `case`: its bill lines by day.
fn replay(dir: &Path, name: &str, case: &Value) -> BTreeMap<String, Vec<Value>> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(case).unwrap()).unwrap();
    let out = aggregator(&["replay", path.to_str().unwrap()]);
    assert_eq!(out["rejected"], json!([]), "{name}: rejected samples");
    let mut by_day: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in out["bills"].as_array().unwrap() {
        by_day
            .entry(line["day"].as_str().unwrap().to_string())
            .or_default()
            .push(line.clone());
    }
    by_day
}

/// The bill-relevant figures of a line, compared by value.
fn figures(line: &Value) -> Value {
    json!({
        "kind": line["kind"], "hours": line["hours"],
        "excess_core_hours": line["excess_core_hours"],
        "average_excess_cores": line["average_excess_cores"],
        "cap_cores": line["cap_cores"], "billable_cores": line["billable_cores"],
        "amount": line["amount"], "currency": line["currency"], "issued_at": line["issued_at"],
    })
}

#[test]
fn fifty_agents_lose_nothing_and_store_nothing_twice_through_twenty_aggregator_crashes_and_agent_kills_and_bill_as_a_clean_run(
) {
    let began = Instant::now();
    let test_start = Utc::now();
    let zone = BillingZone::default();
    let seed = std::env::var("CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("campaign: crashes: seed={seed} (set CAMPAIGN_SEED to repeat the schedule)");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let mut options = ServiceOptions {
        log: Some(dir.path().join("aggregator.log")),
        ..ServiceOptions::default()
    };
    let mut service = Some(Service::start_with(&db, ADMIN, &options));
    let addr = service.as_ref().unwrap().addr;
    // Every restart takes the same address again: the agents know no other.
    options.listen = Some(addr);
    let token = service
        .as_ref()
        .unwrap()
        .account_with_cluster(ACCOUNT, CLUSTER);
    let url = format!("http://{addr}");
    let mut nodes: Vec<Node> = (0..AGENTS)
        .map(|i| Node::start(dir.path(), i, &url, &token))
        .collect();

    let mut round = 0u32;
    let mut next_resize = Instant::now() + RESIZE_EVERY;
    let resize = |nodes: &[Node], round: &mut u32, next_resize: &mut Instant| {
        if Instant::now() >= *next_resize {
            *round += 1;
            for n in nodes {
                write_online(&n.online, cores_of(n.index, *round));
            }
            *next_resize += RESIZE_EVERY;
        }
    };

    // Scenario 1: the fleet without crashes. Every sample taken by the
    // check's start must arrive, and no (node, seq) may be stored twice.
    let calm_end = Instant::now() + CALM;
    while Instant::now() < calm_end {
        resize(&nodes, &mut round, &mut next_resize);
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken: BTreeMap<String, Readings> = nodes
        .iter()
        .map(|n| (n.options.node.clone(), n.logged()))
        .collect();
    let taken_count: usize = taken.values().map(BTreeMap::len).sum();
    let deadline = Instant::now() + Duration::from_secs(45);
    let (rows, missing) = loop {
        let rows = stored(service.as_ref().unwrap(), &days_since(&zone, test_start));
        let missing: usize = taken
            .iter()
            .map(|(node, readings)| {
                let have: BTreeSet<u64> = rows
                    .get(node)
                    .map(|r| r.iter().map(|(s, _)| *s).collect())
                    .unwrap_or_default();
                readings.keys().filter(|s| !have.contains(s)).count()
            })
            .sum();
        if missing == 0 || Instant::now() > deadline {
            break (rows, missing);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    // Read after the audit: every stored sample was logged before it was pushed.
    let logged_now: BTreeMap<String, Readings> = nodes
        .iter()
        .map(|n| (n.options.node.clone(), n.logged()))
        .collect();
    let fleet_duplicates = ingest_counts(addr).map_or(0, |c| c.1);
    let stored_count: usize = rows.values().map(Vec::len).sum();
    let mut mismatched = Vec::new();
    for (node, node_rows) in &rows {
        for (seq, reading) in node_rows {
            if logged_now.get(node).and_then(|l| l.get(seq)) != Some(reading) {
                mismatched.push((node.clone(), *seq, *reading));
            }
        }
    }
    eprintln!(
        "campaign: fleet: agents={AGENTS} taken={taken_count} stored={stored_count} duplicates_absorbed={fleet_duplicates} lost={missing} stored_twice={} seconds={}",
        duplicated(&rows),
        began.elapsed().as_secs()
    );
    assert_eq!(
        missing, 0,
        "{missing} of {taken_count} samples taken in the calm phase were not stored within 45 s"
    );
    assert_eq!(duplicated(&rows), 0, "a (node, seq) stored twice");
    assert!(
        mismatched.is_empty(),
        "stored samples that no agent logged as taken (or with other cores or instant): {:?}",
        &mismatched[..mismatched.len().min(5)]
    );

    // Scenario 2: kill -9 the aggregator twenty times and random agents
    // often, each at a random moment inside a push burst.
    let mut aggregator_kills = 0;
    let mut agent_kills = 0;
    // Per life: the last (accepted, duplicate) read before its kill. Counters
    // die with the process, so pushes answered between that read and the kill
    // are not counted: the duplicate figure is a lower bound.
    // None where `/metrics` did not answer.
    let mut lives: Vec<Option<(u64, u64)>> = Vec::new();
    let mut next_service_kill = into_second(rng.between(2, 4), rng.between(0, BURST_MS));
    let mut next_agent_kill = into_second(1, rng.between(0, BURST_MS));
    let crash_deadline = Instant::now() + Duration::from_secs(120);
    while aggregator_kills < AGGREGATOR_KILLS {
        assert!(
            Instant::now() < crash_deadline,
            "only {aggregator_kills} aggregator kills in 120 s"
        );
        resize(&nodes, &mut round, &mut next_resize);
        if Instant::now() >= next_agent_kill {
            let i = rng.between(0, AGENTS as u64 - 1) as usize;
            nodes[i].crash_and_restart();
            agent_kills += 1;
            next_agent_kill = into_second(rng.between(1, 2), rng.between(0, BURST_MS));
        }
        if Instant::now() >= next_service_kill {
            lives.push(ingest_counts(addr));
            service.take().unwrap().kill_hard();
            aggregator_kills += 1;
            // Down for a moment: agents see refused connections and back off.
            std::thread::sleep(Duration::from_millis(rng.between(0, 500)));
            service = Some(Service::start_with(&db, ADMIN, &options));
            next_service_kill = into_second(rng.between(2, 4), rng.between(0, BURST_MS));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let crash_seconds = began.elapsed().as_secs();

    // Stop killing, let the agents catch up, then stop them with SIGTERM:
    // each must push what it holds and leave its spool empty.
    let drain_end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain_end {
        resize(&nodes, &mut round, &mut next_resize);
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in &mut nodes {
        n.agent.terminate(Duration::ZERO);
    }
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    for n in &mut nodes {
        let status = loop {
            if let Some(status) = n.agent.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < stop_deadline,
                "{} did not stop within 30 s of SIGTERM",
                n.options.node
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{} exited with {status}", n.options.node);
        let left = spool_samples(&n.options.spool, &n.options.node);
        assert!(
            left.is_empty(),
            "{} left {} samples in its spool after SIGTERM: {:?}",
            n.options.node,
            left.len(),
            left.keys().collect::<Vec<_>>()
        );
        let log = n.agent.log_text();
        for bad in [
            "in memory only",
            "corrupt spool file",
            "rejected a sample",
            "spool full",
        ] {
            assert!(!log.contains(bad), "{}'s log says {bad:?}", n.options.node);
        }
    }

    // Everything taken, stored exactly once, with the same cores and instant.
    let last = service.as_ref().unwrap();
    lives.push(ingest_counts(addr));
    let days = days_since(&zone, test_start);
    let rows = stored(last, &days);
    let mut taken_total = 0;
    let mut stored_total = 0;
    let mut lost = Vec::new();
    let mut unknown = Vec::new();
    let mut gaps = Vec::new();
    let mut records: BTreeMap<String, Readings> = BTreeMap::new();
    for n in &nodes {
        let node = &n.options.node;
        let mine = n.records();
        let empty = Vec::new();
        let theirs = rows.get(node).unwrap_or(&empty);
        let theirs_by_seq: Readings = theirs.iter().copied().collect();
        taken_total += mine.len();
        stored_total += theirs.len();
        let max = theirs_by_seq.keys().next_back().copied().unwrap_or(0);
        if !theirs_by_seq.keys().copied().eq(1..=max) {
            gaps.push(node.clone());
        }
        for (seq, r) in &mine {
            if theirs_by_seq.get(seq) != Some(r) {
                lost.push((node.clone(), *seq, *r, theirs_by_seq.get(seq).copied()));
            }
        }
        for (seq, r) in &theirs_by_seq {
            if !mine.contains_key(seq) {
                unknown.push((node.clone(), *seq, *r));
            }
        }
        records.insert(node.clone(), mine);
    }
    let unlogged: usize = nodes.iter().map(|n| n.unlogged.len()).sum();
    let stored_twice = duplicated(&rows);
    let duplicates_absorbed: u64 = lives.iter().flatten().map(|l| l.1).sum();
    let quiet_lives = lives[..AGGREGATOR_KILLS]
        .iter()
        .flatten()
        .filter(|l| l.0 + l.1 == 0)
        .count();
    let lives_unread = lives.iter().filter(|l| l.is_none()).count();

    // The bill of the stored data against the bill of a clean run on what the
    // agents themselves recorded. Their logs miss exactly the samples whose
    // kill -9 landed between the spool's fsync and the "sample taken" line;
    // such a sample is still in the spool right after the kill (it is pushed
    // only after the line), so `crash_and_restart` reads it from there, checks
    // it is the newest one and at most one per kill, and it joins the records
    // here. No record is guessed from the stored side. One run at the 02:00
    // after the last day bills every day in both.
    let last_day = *days.iter().next_back().unwrap();
    let run = zone.due_at(last_day).to_rfc3339();
    let settings = json!({"timezone": "Asia/Shanghai", "price_per_core_day": "0.25",
        "billable_core_rounding": "ceil", "gap_bridge_hours": 3, "max_sample_age_hours": 336});
    let samples: Vec<Value> = records
        .iter()
        .flat_map(|(node, readings)| {
            readings.values().map(move |r| {
                json!({"account": ACCOUNT, "cluster": CLUSTER, "node": node,
                       "cores": r.cores, "at": r.at.to_rfc3339()})
            })
        })
        .collect();
    let clean_case = json!({"name": "campaign-clean", "settings": settings,
        "accounts": [{"id": ACCOUNT, "licenses": [], "caps": []}],
        "samples": samples, "runs": [run]});
    let clean = replay(dir.path(), "clean", &clean_case);
    drop(service.take());
    let mut bills_equal = true;
    let mut bill_report = Vec::new();
    for day in &days {
        let day = day.to_string();
        let mut case = aggregator(&[
            "export",
            "--day",
            &day,
            "--account",
            ACCOUNT,
            "--database",
            db.to_str().unwrap(),
        ]);
        // Nothing is due yet in real time: bill the day at the same run as the clean case.
        case["runs"] = json!([run]);
        let crashed = replay(dir.path(), &format!("crashed-{day}"), &case);
        let ours: Vec<Value> = clean.get(&day).into_iter().flatten().map(figures).collect();
        let theirs: Vec<Value> = crashed
            .get(&day)
            .into_iter()
            .flatten()
            .map(figures)
            .collect();
        bill_report.push(format!(
            "{day}: {}",
            ours.iter()
                .map(|l| format!(
                    "{} line: {} billable cores, {} excess core-hours, {} USD",
                    l["kind"].as_str().unwrap_or("?"),
                    l["billable_cores"].as_str().unwrap_or("?"),
                    l["excess_core_hours"],
                    l["amount"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if ours != theirs {
            bills_equal = false;
            eprintln!("bill of {day}: clean run {ours:?}, stored data {theirs:?}");
        }
    }

    eprintln!("campaign: crashes: bills {}", bill_report.join("; "));
    eprintln!(
        "campaign: crashes: agents={AGENTS} taken={taken_total} stored={stored_total} duplicates_absorbed={duplicates_absorbed} aggregator_kills={aggregator_kills} agent_kills={agent_kills} unlogged={unlogged} lost={} stored_twice={stored_twice} unknown={} lives_without_pushes={quiet_lives} lives_unread={lives_unread} bills_equal={bills_equal} crash_phase_ends_at_s={crash_seconds} seconds={}",
        lost.len(),
        unknown.len(),
        began.elapsed().as_secs()
    );
    assert!(
        lost.is_empty(),
        "{} samples taken but not stored as taken (node, seq, taken, stored): {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(stored_twice, 0, "(node, seq) pairs stored twice");
    assert!(
        unknown.is_empty(),
        "stored samples no agent recorded: {:?}",
        &unknown[..unknown.len().min(10)]
    );
    assert!(gaps.is_empty(), "stored seqs are not 1..=max for {gaps:?}");
    assert!(
        unlogged <= agent_kills,
        "{unlogged} unlogged samples from {agent_kills} agent kills"
    );
    assert_eq!(
        quiet_lives, 0,
        "a life of the service was killed before it acknowledged anything"
    );
    assert!(
        clean.values().flatten().count() >= 1,
        "the clean run billed nothing: {clean:?}"
    );
    assert!(bills_equal, "the bills differ (see above)");
}
