//! Campaign, issue 7 scenarios 6 and 7: an agent whose clock runs 3 hours ahead is refused loudly while the aggregator keeps its own time, and a spool written by agent 0.1.0 is delivered by the current agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use e2e::procs::{binary, request, AgentOptions, AgentProc, Service, ServiceOptions};
use serde_json::Value;
use shared::zone::BillingZone;

const ADMIN: &str = "admin-campaign-clocks";
/// Where Debian's `faketime` package puts its preload library, by architecture.
const FAKETIME_LIBS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];
/// The aggregator's largest `billing.max_sample_age_hours` (366 days).
const MAX_SAMPLE_AGE_HOURS: i64 = 24 * 366;

/// A test that cannot run here: say why, and fail where it must run (CI).
fn cannot_run(test: &str, why: &str) {
    testkit::skip(
        "ROOT",
        &format!("{test}: {why}; install the Debian package faketime to run it"),
    );
}

/// The environment that moves a process's wall clock by `offset` (libfaketime
/// syntax, e.g. `+3h`, `-400d`), checked on the agent binary itself: its
/// `once --print` must report an instant `expected` away from ours. The
/// monotonic clock is left alone, as on a node whose NTP is wrong.
fn faketime_env(offset: &str, expected: TimeDelta) -> Result<Vec<(String, String)>, String> {
    let lib = FAKETIME_LIBS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("libfaketime is not installed")?;
    let env = vec![
        ("LD_PRELOAD".to_string(), lib.to_string()),
        ("FAKETIME".to_string(), offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ];
    let before = Utc::now();
    let out = Command::new(binary("agent"))
        .args(["once", "--print"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("run agent once: {e}"))?;
    let printed: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("agent once --print under libfaketime printed no sample ({e})"))?;
    let at: DateTime<Utc> = printed["at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("agent once --print has no at")?;
    let moved = at - before;
    if (moved - expected).abs() > TimeDelta::minutes(5) {
        return Err(format!(
            "libfaketime {lib} with FAKETIME={offset} moved the agent's clock by {moved}, not {expected}"
        ));
    }
    Ok(env)
}

fn instant(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an instant: {v}"))
}

/// A token as `new-tokens` makes them, so clusters can be created after the agents start.
fn token(fill: char) -> String {
    format!("cmc_{}", fill.to_string().repeat(64))
}

/// Creates a cluster with an operator-supplied token.
fn cluster(service: &Service, account: &str, name: &str, token: &str) {
    let (s, v) = service.admin(
        "POST",
        &format!("/v1/admin/accounts/{account}/clusters"),
        Some(&format!(r#"{{"name":"{name}","token":"{token}"}}"#)),
    );
    assert_eq!(s, 201, "{v}");
}

/// Every sample stored for `account` on these days (of the aggregator's zone), by id.
fn stored_on(
    service: &Service,
    account: &str,
    days: impl IntoIterator<Item = NaiveDate>,
) -> Vec<Value> {
    let mut by_id = BTreeMap::new();
    for day in days {
        for s in service.stored(account, &day.to_string()) {
            by_id.insert(s["id"].as_i64().unwrap(), s);
        }
    }
    by_id.into_values().collect()
}

/// One value of a `key=value` field of a text log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(&format!(" {key}=")).nth(1)?;
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

/// The agent's rejection reports: (count, first_seq, last_seq) per line.
fn rejection_reports(log: &str, level: &str, reason: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter(|l| l.contains(&format!(" {level} ")) && field(l, "reason") == Some(reason))
        .map(|l| {
            let n = |k| field(l, k).and_then(|v| v.parse().ok()).unwrap();
            (n("count"), n("first_seq"), n("last_seq"))
        })
        .collect()
}

/// The sum of a Prometheus metric's series whose labels contain `label`.
fn metric(addr: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = request(addr, "GET", "/metrics", None, None).expect("metrics answer");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| key.split('{').next() == Some(name) && key.contains(label))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// The agent's metrics address, from its start-up line.
fn agent_metrics_addr(agent: &AgentProc) -> Option<SocketAddr> {
    let log = agent.log_text();
    let line = log.lines().find(|l| l.contains("serving /healthz"))?;
    field(line, "listen")?.parse().ok()
}

/// A fixed-offset zone in which it is now 23:xx: the day of the samples falls
/// due at 02:00, less than 3 hours away, so an agent 3 hours ahead already
/// believes it due while the aggregator does not.
fn zone_where_it_is_eleven_pm(now: DateTime<Utc>) -> (String, BillingZone) {
    let hour = i64::from(chrono::Timelike::hour(&now));
    let mut offset = (23 - hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    // The tz database's Etc zones count the other way round.
    let name = match offset {
        0 => "Etc/UTC".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    let zone = name.parse().expect("an Etc zone");
    (name, zone)
}

#[test]
fn an_agent_three_hours_ahead_is_refused_loudly_and_the_aggregator_keeps_its_own_time() {
    const TEST: &str = "clocks";
    let ahead = match faketime_env("+3h", TimeDelta::hours(3)) {
        Ok(env) => env,
        Err(why) => return cannot_run(TEST, &why),
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // The aggregator keeps milliseconds, truncated.
    let t0 = Utc::now().trunc_subsecs(3);
    let (zone_name, zone) = zone_where_it_is_eleven_pm(t0);
    let today = zone.day_of(t0);
    let yesterday = today.pred_opt().unwrap();
    let (on_time_token, ahead_token) = (token('a'), token('b'));

    // The skewed agent starts first, while nothing listens at the
    // aggregator's address, so that its first delivered batch holds several
    // samples: one report for all of them, not one line each.
    let port = testkit::ports::HeldPort::new();
    let url = format!("http://{}", port.addr());
    let mut skewed_options = AgentOptions::new(dir.path(), "node-ahead", &url, &ahead_token);
    skewed_options.env = ahead;
    let mut skewed = AgentProc::start(&skewed_options);
    testkit::eventually(
        Duration::from_secs(20),
        "3 samples on the skewed node",
        || skewed.taken().len() >= 3,
    );

    let service = Service::start_on(
        port,
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions {
            env: vec![("CORE_METER_TIMEZONE".into(), zone_name.clone())],
            log: Some(dir.path().join("aggregator.log")),
            ..ServiceOptions::default()
        },
    );
    let (s, v) = service.admin("POST", "/v1/admin/accounts", Some(r#"{"id":"acme"}"#));
    assert_eq!(s, 201, "{v}");
    cluster(&service, "acme", "on-time", &on_time_token);
    cluster(&service, "acme", "ahead", &ahead_token);
    let mut normal = AgentProc::start(&AgentOptions::new(
        dir.path(),
        "node-on-time",
        &url,
        &on_time_token,
    ));

    // A sample of yesterday (by the aggregator's zone), pushed now: the bill
    // must include that day, which is due by the aggregator's clock.
    let yesterday_at = (t0 - TimeDelta::hours(24)).to_rfc3339();
    let body = format!(
        r#"{{"samples":[{{"node":"node-late","cores":4,"at":"{yesterday_at}","seq":1,"agent_version":"e2e"}}]}}"#
    );
    let (s, answer) = request(
        service.addr,
        "POST",
        "/v1/samples",
        Some(&on_time_token),
        Some(&body),
    )
    .expect("the service answers");
    assert_eq!(s, 200, "{answer}");
    assert!(answer.contains("accepted"), "{answer}");

    let days = [yesterday, today, today.succ_opt().unwrap()];
    let refused = |log: &str| -> u64 {
        rejection_reports(log, "ERROR", "in_future")
            .iter()
            .map(|r| r.0)
            .sum()
    };
    testkit::eventually(
        Duration::from_secs(30),
        "3 samples stored from the on-time node, 6 refused from the skewed one",
        || {
            let on_time = stored_on(&service, "acme", days)
                .iter()
                .filter(|s| s["node"] == "node-on-time")
                .count();
            on_time >= 3 && refused(&skewed.log_text()) >= 6
        },
    );
    let agent_metrics = agent_metrics_addr(&skewed).expect("the skewed agent's metrics address");
    let rejected_metric = metric(
        agent_metrics,
        "core_meter_agent_samples_rejected_total",
        r#"reason="in_future""#,
    );
    let dropped_metric = metric(
        agent_metrics,
        "core_meter_agent_samples_dropped_total",
        r#"cause="rejected""#,
    );
    assert!(
        rejected_metric >= 6.0 && dropped_metric >= rejected_metric,
        "the agent counts its refused samples: rejected {{reason=in_future}} {rejected_metric}, dropped {{cause=rejected}} {dropped_metric}"
    );

    // The aggregator bills by its own clock: yesterday is due, today is not,
    // although by the skewed node's clock today is due already.
    let before_run = Utc::now();
    let (s, run) = service.admin("POST", "/v1/admin/billing-runs", None);
    let after_run = Utc::now();
    assert_eq!(s, 200, "{run}");
    assert!(
        zone.due_at(today) > after_run && zone.due_at(today) <= before_run + TimeDelta::hours(3),
        "the premise: {today} in {zone_name} is due at {} by the node 3 hours ahead, not by the aggregator",
        zone.due_at(today)
    );
    let issued = run["issued"].as_array().unwrap();
    let billed: Vec<(NaiveDate, String)> = issued
        .iter()
        .map(|l| {
            (
                l["day"].as_str().unwrap().parse().unwrap(),
                l["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        billed.contains(&(yesterday, "daily".to_string())),
        "yesterday ({yesterday}) is due by the aggregator's clock and billed: {run}"
    );
    let last_due = zone.last_due_day(after_run);
    assert!(
        billed
            .iter()
            .all(|(day, _)| *day <= last_due && *day != today),
        "only days due by the aggregator's clock (up to {last_due}) are billed: {run}"
    );
    let run_at = metric(
        service.addr,
        "core_meter_last_billing_run_timestamp_seconds",
        "",
    );
    assert!(
        (before_run.timestamp() as f64 - 1.0..=after_run.timestamp() as f64 + 1.0)
            .contains(&run_at),
        "the run is stamped with the aggregator's time: {run_at}"
    );

    assert!(normal.terminate(Duration::from_secs(15)).is_some());
    assert!(skewed.terminate(Duration::from_secs(15)).is_some());
    let t1 = Utc::now();

    // Every sample of the skewed node was refused as in the future, reported
    // per batch as an ERROR that names the clock, and none was stored.
    let skewed_log = skewed.log_text();
    let skewed_taken: Vec<u64> = skewed.taken().iter().map(|t| t.seq).collect();
    let reports = rejection_reports(&skewed_log, "ERROR", "in_future");
    let rejected_in_future: u64 = reports.iter().map(|r| r.0).sum();
    assert_eq!(
        rejected_in_future,
        skewed_taken.len() as u64,
        "every sample of the skewed node is refused as in_future: {reports:?}, taken {skewed_taken:?}"
    );
    for seq in &skewed_taken {
        assert!(
            reports
                .iter()
                .any(|(_, first, last)| first <= seq && seq <= last),
            "seq {seq} is in a reported range: {reports:?}"
        );
    }
    assert!(
        reports.iter().any(|r| r.0 >= 3),
        "the backlog is one report, not one line per sample: {reports:?}"
    );
    assert!(
        reports.len() < skewed_taken.len(),
        "fewer reports ({}) than samples ({})",
        reports.len(),
        skewed_taken.len()
    );
    let clock_line = skewed_log
        .lines()
        .find(|l| l.contains(" ERROR ") && field(l, "reason") == Some("in_future"))
        .unwrap();
    assert!(
        clock_line.contains("as in the future")
            && clock_line.contains("this node's clock is ahead of the aggregator's")
            && clock_line.contains("fix NTP on node node-ahead"),
        "the ERROR says plainly what is wrong: {clock_line}"
    );
    assert!(
        !skewed_log.contains("rejected a sample"),
        "no line per sample"
    );
    assert_eq!(skewed.pending(), 0, "refused samples leave the spool");

    let mut all_days: Vec<NaiveDate> = days.to_vec();
    for t in skewed.taken() {
        all_days.push(zone.day_of(t.at.parse().unwrap()));
    }
    all_days.sort();
    all_days.dedup();
    let stored = stored_on(&service, "acme", all_days);
    let from_skewed = stored.iter().filter(|s| s["node"] == "node-ahead").count();
    assert_eq!(from_skewed, 0, "nothing of the skewed node is stored");
    let service_refused = metric(
        service.addr,
        "core_meter_ingest_samples_total",
        r#"reason="in_future""#,
    );
    // At least: a push that timed out at the agent after the aggregator
    // answered is sent, and counted, again.
    assert!(
        service_refused >= rejected_in_future as f64,
        "the aggregator counts the refusals: {service_refused}"
    );

    // The on-time node's samples are stored, stamped with the aggregator's
    // own time, and none lies in the future.
    let normal_stored: Vec<&Value> = stored
        .iter()
        .filter(|s| s["node"] == "node-on-time")
        .collect();
    let normal_taken = normal.taken();
    assert!(normal_stored.len() >= 3);
    assert_eq!(
        normal_stored.len(),
        normal_taken.len(),
        "every sample the on-time node took is stored"
    );
    for s in stored.iter() {
        let (at, received_at) = (instant(&s["at"]), instant(&s["received_at"]));
        assert!(
            t0 <= received_at && received_at <= t1,
            "received_at is the aggregator's time, within the test ({t0} to {t1}): {s}"
        );
        assert!(
            at <= received_at && at <= t1,
            "a stored sample is not in the future: {s}"
        );
    }
    let late = stored.iter().find(|s| s["node"] == "node-late").unwrap();
    assert_eq!(zone.day_of(instant(&late["at"])), yesterday);

    eprintln!(
        "campaign: clocks: skewed_samples={} rejected_in_future={rejected_in_future} stored_from_skewed={from_skewed} normal_stored={} (zone {zone_name}, {} reports, {:.1} s)",
        skewed_taken.len(),
        normal_stored.len(),
        reports.len(),
        started.elapsed().as_secs_f64()
    );
}

/// One sample file of a spool fixture.
#[derive(Debug)]
struct Spooled {
    node: String,
    seq: u64,
    cores: u64,
    at: DateTime<Utc>,
    agent_version: String,
}

fn read_fixture(dir: &Path) -> (Vec<Spooled>, u64) {
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(dir.join("pending")).unwrap() {
        let path = entry.unwrap().path();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!("{seq:020}.json"),
            "the fixture's file names are its seqs"
        );
        samples.push(Spooled {
            node: v["node"].as_str().unwrap().to_string(),
            seq,
            cores: v["cores"].as_u64().unwrap(),
            at: instant(&v["at"]),
            agent_version: v["agent_version"].as_str().unwrap().to_string(),
        });
    }
    samples.sort_by_key(|s| s.seq);
    let seq = std::fs::read_to_string(dir.join("seq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (samples, seq)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Starts a real aggregator and the current agent on a copy of the spool
/// fixture in `fixture`, and checks every fixture sample arrives once, as it
/// was written, and the agent goes on from the fixture's seq.
fn the_current_agent_delivers(fixture: &Path) {
    const TEST: &str = "upgrade";
    let started = Instant::now();
    let (samples, fixture_seq) = read_fixture(fixture);
    assert!(!samples.is_empty(), "the fixture holds samples");
    let node = samples[0].node.clone();
    assert!(samples.iter().all(|s| s.node == node));

    // The aggregator takes samples up to its largest maximum age. A fixture
    // older than that is not rewritten: the aggregator and the agent run
    // with their clocks moved back by whole days, to a world in which the
    // samples are one to two days old.
    let oldest = samples.iter().map(|s| s.at).min().unwrap();
    let age = Utc::now() - oldest;
    let mut clock_env = Vec::new();
    if age > TimeDelta::hours(MAX_SAMPLE_AGE_HOURS - 1) {
        let back_days = age.num_days() - 1;
        match faketime_env(&format!("-{back_days}d"), -TimeDelta::days(back_days)) {
            Ok(env) => clock_env = env,
            Err(why) => {
                return cannot_run(
                    TEST,
                    &format!(
                        "the fixture is {} days old, past the aggregator's 366, and moving the clocks back needs libfaketime: {why}",
                        age.num_days()
                    ),
                )
            }
        }
        eprintln!("{TEST}: the fixture is {} days old; the aggregator and the agent run {back_days} days back", age.num_days());
    }

    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions {
            env: [(
                "CORE_METER_MAX_SAMPLE_AGE_HOURS".to_string(),
                MAX_SAMPLE_AGE_HOURS.to_string(),
            )]
            .into_iter()
            .chain(clock_env.iter().cloned())
            .collect(),
            log: Some(dir.path().join("aggregator.log")),
            ..ServiceOptions::default()
        },
    );
    let token = service.account_with_cluster("acme", "prod");
    let mut options = AgentOptions::new(
        dir.path(),
        &node,
        &format!("http://{}", service.addr),
        &token,
    );
    copy_dir(fixture, &options.spool);
    let _ = std::fs::remove_file(options.spool.join("README.md"));
    options.env = clock_env;
    let mut agent = AgentProc::start(&options);

    let zone = BillingZone::default();
    let mut days: Vec<NaiveDate> = samples.iter().map(|s| zone.day_of(s.at)).collect();
    let wanted = |stored: &[Value]| {
        let seqs: Vec<u64> = stored.iter().filter_map(|s| s["seq"].as_u64()).collect();
        samples.iter().all(|f| seqs.contains(&f.seq)) && seqs.contains(&(fixture_seq + 1))
    };
    let mut stored = Vec::new();
    testkit::eventually(
        Duration::from_secs(30),
        "the fixture's samples and a new one stored",
        || {
            // The agent's "now" (the test's, or the moved clock's) holds its new samples.
            let mut all = days.clone();
            all.extend(
                agent
                    .taken()
                    .iter()
                    .map(|t| zone.day_of(t.at.parse().unwrap())),
            );
            all.sort();
            all.dedup();
            stored = stored_on(&service, "acme", all);
            wanted(&stored)
        },
    );
    assert!(agent.terminate(Duration::from_secs(15)).is_some());
    days.extend(
        agent
            .taken()
            .iter()
            .map(|t| zone.day_of(t.at.parse().unwrap())),
    );
    days.sort();
    days.dedup();
    stored = stored_on(&service, "acme", days);

    let mut delivered = 0;
    for f in &samples {
        let rows: Vec<&Value> = stored
            .iter()
            .filter(|s| s["node"] == node.as_str() && s["seq"].as_u64() == Some(f.seq))
            .collect();
        assert_eq!(rows.len(), 1, "fixture seq {} stored exactly once", f.seq);
        let row = rows[0];
        assert_eq!(row["cores"].as_u64(), Some(f.cores), "{row}");
        assert_eq!(instant(&row["at"]), f.at, "{row}");
        assert_eq!(
            row["agent_version"].as_str(),
            Some(f.agent_version.as_str())
        );
        delivered += 1;
    }
    let taken = agent.taken();
    let next_seq = taken.first().expect("the new agent took samples").seq;
    assert_eq!(
        next_seq,
        fixture_seq + 1,
        "the new agent continues after the fixture's seq"
    );
    let new_rows: Vec<&Value> = stored
        .iter()
        .filter(|s| s["seq"].as_u64().is_some_and(|q| q > fixture_seq))
        .collect();
    assert_eq!(
        new_rows.len(),
        taken.len(),
        "the new samples are stored too"
    );
    assert_eq!(stored.len(), samples.len() + taken.len(), "nothing else");
    assert_eq!(agent.pending(), 0, "the spool is empty");
    assert!(
        !options.spool.join("corrupt").exists(),
        "no fixture file was set aside as corrupt"
    );
    eprintln!(
        "campaign: upgrade: fixture_samples={} delivered={delivered} next_seq={next_seq} ({:.1} s)",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_spool_written_by_agent_0_1_0_is_delivered_by_the_current_agent() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/spool-0.1.0");
    the_current_agent_delivers(&fixture);
}
