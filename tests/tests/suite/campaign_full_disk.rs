//! Campaign, issue 7 scenario 4, "Full disk": the agent's spool, then the aggregator's database, on a small tmpfs that fills up, with the real binaries. Both keep running and say so (metrics, readiness, logs, a 503 naming the cause), nothing is acknowledged that was not stored, and both go on once space returns. Two more tests reproduce agent bugs the campaign found, now fixed, and keep them fixed.
//!
//! Mounting needs root: without it the tests say why and pass, unless
//! `CORE_METER_REQUIRE_ROOT=1` (CI runs them as root and sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use e2e::procs::{request, AgentOptions, AgentProc, Service, ServiceOptions};

const ADMIN: &str = "admin-campaign-full-disk";

/// Generous: others run heavy tests on this machine at the same time.
const PATIENCE: Duration = Duration::from_secs(30);

use testkit::eventually;

/// A tmpfs mounted for this test; unmounted when dropped, also on a panic.
/// Declared before the processes that use it, so they are gone first.
struct Tmpfs {
    path: PathBuf,
    filler: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
            filler: None,
        })
    }

    fn ballast(&self) -> PathBuf {
        self.path.join("ballast")
    }

    /// Fills the file system to the last page, then keeps it full the way
    /// another busy writer would: whatever is freed (an agent removing an
    /// acknowledged sample) is taken again within milliseconds.
    fn fill(&mut self) {
        assert!(self.filler.is_none());
        let ballast = self.ballast();
        top_up(&ballast);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                top_up(&ballast);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        self.filler = Some((stop, handle));
    }

    /// Space returns: the filler stops and the ballast goes.
    fn free(&mut self) {
        if let Some((stop, handle)) = self.filler.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(self.ballast());
    }
}

/// Appends to `path` until the file system refuses.
fn top_up(path: &Path) {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let chunk = [0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.free();
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it open: detach it now, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A mount, or the reason there is none. Without root the campaign cannot
/// run; that fails only where `CORE_METER_REQUIRE_ROOT=1` (CI, as root).
fn mount_or_skip(path: &Path, size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(path, size) {
        Ok(m) => Some(m),
        Err(why) => {
            testkit::skip(
                "ROOT",
                &format!(
                    "campaign: full-disk: a tmpfs cannot be mounted at {}: {why}",
                    path.display()
                ),
            );
            None
        }
    }
}

/// An HTTP answer with its head, for the headers `procs::request` drops.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request with `Connection: close` (the aggregator's JSON answers have a Content-Length).
fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    Reply {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Starts an agent; returns it with its health and metrics address, read
/// from its log (appended to across restarts: this start's line is the last).
fn start_agent(options: &AgentOptions) -> (AgentProc, SocketAddr) {
    let serving = |log: &str| -> Vec<SocketAddr> {
        log.lines()
            .filter(|l| l.contains("serving /healthz"))
            .filter_map(|l| {
                l.split(" listen=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let before = serving(&std::fs::read_to_string(&options.log).unwrap_or_default()).len();
    let agent = AgentProc::start(options);
    let mut addr = None;
    eventually(PATIENCE, "the agent says where it serves /metrics", || {
        let found = serving(&agent.log_text());
        addr = found.get(before).copied();
        addr.is_some()
    });
    (agent, addr.unwrap())
}

/// An unlabelled metric of the agent.
fn metric(agent: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = request(agent, "GET", "/metrics", None, None)?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Samples in the agent's spool: `pending/*.json` (a write cut short by a
/// crash can leave a `.tmp` behind, which `AgentProc::pending` would count).
fn spooled(agent: &AgentProc) -> usize {
    std::fs::read_dir(agent.spool.join("pending")).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count()
    })
}

fn readyz(addr: SocketAddr) -> Option<(u16, String)> {
    request(addr, "GET", "/readyz", None, None)
}

/// Every stored sample of `account` from `since` on: (node, seq) to the `at`s
/// stored under it (more than one would be a second row).
fn stored(
    service: &Service,
    account: &str,
    since: DateTime<Utc>,
) -> BTreeMap<(String, u64), Vec<String>> {
    let zone = shared::zone::BillingZone::default();
    let days: BTreeSet<String> = [since, Utc::now()]
        .iter()
        .map(|t| zone.day_of(*t).to_string())
        .collect();
    let mut out: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for day in days {
        for s in service.stored(account, &day) {
            let key = (
                s["node"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
            );
            out.entry(key)
                .or_default()
                .push(s["at"].as_str().unwrap().to_string());
        }
    }
    out
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .with_timezone(&Utc)
}

/// What the agent logged as taken against what the aggregator stored for its
/// node, each a (seq, instant): a count of each way they can differ.
#[derive(Debug, Default)]
struct Reconciled {
    /// Taken, never stored under its seq (also: a reused seq answered duplicate).
    lost: Vec<(u64, DateTime<Utc>)>,
    /// A (node, seq) stored in more than one row.
    stored_twice: Vec<u64>,
    /// Stored, never logged as taken.
    untaken: Vec<(u64, DateTime<Utc>)>,
    /// One instant stored under more than one seq: one measurement sent twice.
    instant_twice: Vec<DateTime<Utc>>,
    /// A seq the agent handed out for more than one sample.
    seq_reused: Vec<u64>,
}

impl Reconciled {
    fn of(agent: &AgentProc, stored: &BTreeMap<(String, u64), Vec<String>>) -> Reconciled {
        let mut taken: BTreeMap<u64, Vec<DateTime<Utc>>> = BTreeMap::new();
        for t in agent.taken() {
            taken.entry(t.seq).or_default().push(instant(&t.at));
        }
        let mine: BTreeMap<u64, Vec<DateTime<Utc>>> = stored
            .iter()
            .filter(|((node, _), _)| *node == agent.node)
            .map(|((_, seq), ats)| (*seq, ats.iter().map(|a| instant(a)).collect()))
            .collect();
        let mut r = Reconciled::default();
        for (seq, ats) in &taken {
            if ats.len() > 1 {
                r.seq_reused.push(*seq);
            }
            for at in ats {
                if !mine.get(seq).is_some_and(|s| s.contains(at)) {
                    r.lost.push((*seq, *at));
                }
            }
        }
        let mut instants: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
        for (seq, ats) in &mine {
            if ats.len() > 1 {
                r.stored_twice.push(*seq);
            }
            for at in ats {
                *instants.entry(*at).or_default() += 1;
                if !taken.get(seq).is_some_and(|t| t.contains(at)) {
                    r.untaken.push((*seq, *at));
                }
            }
        }
        r.instant_twice = instants
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(at, _)| at)
            .collect();
        r
    }

    fn assert_clean(&self, agent: &AgentProc) {
        let log = agent.log_text();
        assert!(
            self.lost.is_empty() && self.stored_twice.is_empty(),
            "taken but never stored {:?} (seqs handed out twice: {:?}, a reused one is answered duplicate); stored twice {:?}\n{log}",
            self.lost,
            self.seq_reused,
            self.stored_twice
        );
        assert!(
            self.untaken.is_empty() && self.instant_twice.is_empty(),
            "stored though never logged as taken {:?}; instants stored under two seqs {:?} (one measurement kept both as a spool file and in memory?)\n{log}",
            self.untaken,
            self.instant_twice
        );
        assert!(
            self.seq_reused.is_empty(),
            "seqs handed out twice {:?}\n{log}",
            self.seq_reused
        );
        assert!(
            !log.contains("lost at exit"),
            "the agent gave up samples at exit:\n{log}"
        );
    }
}

struct AgentFigures {
    writes_refused: u64,
    recovered: bool,
}

/// (a) The agent's spool fills up, against a real `aggregator serve`.
fn the_agents_spool_fills_up(dir: &Path) -> Option<AgentFigures> {
    let since = Utc::now();
    let home = dir.join("a");
    std::fs::create_dir_all(&home).unwrap();
    let mut disk = mount_or_skip(&home.join("spool-disk"), "256k")?;
    let database = home.join("core-meter.sqlite");
    let service_options = ServiceOptions {
        log: Some(home.join("service.log")),
        ..ServiceOptions::default()
    };
    let service = Service::start_with(&database, ADMIN, &service_options);
    let addr = service.addr;
    let token = service.account_with_cluster("acme", "prod");
    let mut options =
        AgentOptions::new(&home, "node-spool-full", &format!("http://{addr}"), &token);
    options.spool = disk.path.join("spool");
    let (mut agent, http) = start_agent(&options);
    let write_errors = || metric(http, "core_meter_agent_spool_write_errors_total").unwrap_or(-1.0);
    let pending = || metric(http, "core_meter_agent_samples_pending").unwrap_or(-1.0);
    let stored_count = |service: &Service| stored(service, "acme", since).len();

    // The spool works: samples reach the disk and the aggregator.
    eventually(
        PATIENCE,
        "two samples are stored and the agent is ready",
        || stored_count(&service) >= 2 && readyz(http).map(|r| r.0) == Some(200),
    );
    assert_eq!(write_errors(), 0.0);

    // Fill it just after a sample was taken, so that no write is half done.
    let taken = agent.taken().len();
    eventually(PATIENCE, "the next sample is taken", || {
        agent.taken().len() > taken
    });
    disk.fill();
    let stored_when_full = stored_count(&service);
    eventually(PATIENCE, "three spool writes are refused", || {
        write_errors() >= 3.0
    });
    let (status, body) = readyz(http).expect("the agent answers");
    assert_eq!(
        status, 503,
        "not ready while samples live only in memory: {body}"
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
    let log = agent.log_text();
    assert!(
        log.contains("cannot write the sample to the spool")
            && log.contains("No space left on device"),
        "the log says what is wrong:\n{log}"
    );
    // Held in memory, they still reach the aggregator.
    eventually(PATIENCE, "samples held in memory are stored", || {
        stored_count(&service) >= stored_when_full + 3
    });

    // The aggregator goes away while the disk is full: samples pile up in memory only.
    let files = spooled(&agent);
    let in_memory = |a: &AgentProc| a.log_text().matches("(in memory only)").count();
    service.kill_hard();
    let held = in_memory(&agent);
    eventually(PATIENCE, "three more samples are held in memory", || {
        in_memory(&agent) >= held + 3 && pending() >= 3.0
    });
    assert_eq!(spooled(&agent), files, "nothing new reached the full disk");
    let writes_refused = write_errors() as u64;

    // Space returns: new samples go to disk again and the agent is ready.
    disk.free();
    eventually(
        PATIENCE,
        "a new sample is spooled on disk and the agent is ready",
        || spooled(&agent) > files && readyz(http).map(|r| r.0) == Some(200),
    );
    let errors_after = write_errors();
    let files_after = spooled(&agent);
    eventually(PATIENCE, "two more samples are spooled", || {
        spooled(&agent) >= files_after + 2
    });
    assert_eq!(write_errors(), errors_after, "no write is refused any more");
    assert!(
        pending() as usize > spooled(&agent),
        "the samples held in memory are still waiting"
    );

    // The aggregator returns (same address, same database): everything held is delivered.
    let service = Service::start_with(
        &database,
        ADMIN,
        &ServiceOptions {
            listen: Some(addr),
            ..service_options
        },
    );
    eventually(PATIENCE, "the agent has nothing pending", || {
        pending() == 0.0 && spooled(&agent) == 0
    });
    let status = agent
        .terminate(PATIENCE)
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status}");
    Reconciled::of(&agent, &stored(&service, "acme", since)).assert_clean(&agent);
    Some(AgentFigures {
        writes_refused,
        recovered: true,
    })
}

struct AggregatorFigures {
    refused_503: u64,
    acknowledged_while_full: u64,
    stored_after_recovery: u64,
    lost: u64,
}

/// A batch of `node`'s samples with these seqs, taken now.
fn batch(node: &str, seqs: &[u64]) -> String {
    let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let samples: Vec<String> = seqs
        .iter()
        .map(|seq| format!(r#"{{"node":"{node}","cores":16,"at":"{at}","seq":{seq}}}"#))
        .collect();
    format!(r#"{{"samples":[{}]}}"#, samples.join(","))
}

/// The seqs of a push's answer that were acknowledged (accepted or duplicate).
fn acknowledged(reply: &Reply, seqs: &[u64]) -> Vec<u64> {
    if reply.status != 200 {
        return Vec::new();
    }
    reply.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "accepted" || r["status"] == "duplicate")
        .map(|r| seqs[r["index"].as_u64().unwrap() as usize])
        .collect()
}

/// (b) The aggregator's database fills up; a real agent pushes all along.
fn the_aggregators_database_fills_up(dir: &Path) -> Option<AggregatorFigures> {
    let since = Utc::now();
    let home = dir.join("b");
    std::fs::create_dir_all(&home).unwrap();
    let mut disk = mount_or_skip(&home.join("db-disk"), "8m")?;
    let mut service = Service::start_with(
        &disk.path.join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions {
            log: Some(home.join("service.log")),
            ..ServiceOptions::default()
        },
    );
    let (addr, pid) = (service.addr, service.child.id());
    let token = service.account_with_cluster("acme", "prod");
    let (mut agent, agent_http) = start_agent(&AgentOptions::new(
        &home,
        "node-agent",
        &format!("http://{addr}"),
        &token,
    ));
    let node = "node-direct";
    let mut next_seq = 1u64;
    let mut seqs = |n: u64| {
        let s: Vec<u64> = (next_seq..next_seq + n).collect();
        next_seq += n;
        s
    };
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let first = seqs(20);
    let reply = call(
        addr,
        "POST",
        "/v1/samples",
        Some(&token),
        &batch(node, &first),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    acked.extend(acknowledged(&reply, &first));
    assert_eq!(acked.len(), 20);
    eventually(PATIENCE, "the agent's first sample is stored", || {
        stored(&service, "acme", since)
            .keys()
            .any(|(n, _)| n == "node-agent")
    });

    disk.fill();
    let stored_when_full = stored(&service, "acme", since).len();
    let mut refused: Vec<Vec<u64>> = Vec::new();
    let mut acknowledged_while_full = 0u64;
    for _ in 0..10 {
        let these = seqs(20);
        let reply = call(
            addr,
            "POST",
            "/v1/samples",
            Some(&token),
            &batch(node, &these),
        );
        let acks = acknowledged(&reply, &these);
        acknowledged_while_full += acks.len() as u64;
        acked.extend(acks);
        assert_eq!(
            reply.status, 503,
            "a full disk is answered 503, not {}: {}",
            reply.status, reply.body
        );
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "disk_full", "{}", reply.body);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("disk is full")
                && message.contains("nothing of this request was stored"),
            "the body names the cause: {message}"
        );
        assert_eq!(reply.header("retry-after"), Some("60"), "{}", reply.head);
        refused.push(these);
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused_503 = refused.len() as u64;

    // Not ready while the database cannot write, alive all the same.
    let ready = call(addr, "GET", "/readyz", None, "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("disk is full") && ready.body.contains("probe"),
        "readiness says why: {}",
        ready.body
    );
    assert_eq!(
        request(addr, "GET", "/healthz", None, None).map(|r| r.0),
        Some(200)
    );
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service keeps running"
    );
    // Reads need no room: the audit trail answers, with only what was acknowledged.
    let during = stored(&service, "acme", since);
    assert_eq!(
        during.len(),
        stored_when_full,
        "nothing was stored while full"
    );
    // The agent was told 503 too, and keeps its samples.
    eventually(
        PATIENCE,
        "the agent's pushes fail and it holds samples",
        || {
            agent.log_text().contains("the aggregator failed (503)")
                && metric(agent_http, "core_meter_agent_samples_pending").unwrap_or(0.0) >= 2.0
        },
    );
    let (_, metrics) = request(addr, "GET", "/metrics", None, None).unwrap();
    assert!(
        metrics.contains(r#"core_meter_http_requests_total{route="/v1/samples",status="503"}"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"route="/v1/samples",status="500""#),
        "no push was answered 500"
    );
    assert!(service.log_text().contains("the database cannot write"));

    // Space returns: without a restart, readiness comes back and pushes are stored.
    disk.free();
    eventually(PATIENCE, "the service is ready again", || {
        readyz(addr).map(|r| r.0) == Some(200)
    });
    for these in &refused {
        let reply = call(
            addr,
            "POST",
            "/v1/samples",
            Some(&token),
            &batch(node, these),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let statuses: Vec<serde_json::Value> = reply.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].clone())
            .collect();
        assert!(
            statuses.iter().all(|s| s == "accepted"),
            "a refused sample had been stored after all: {statuses:?}"
        );
        acked.extend(these);
    }
    for _ in 0..5 {
        let these = seqs(20);
        let reply = call(
            addr,
            "POST",
            "/v1/samples",
            Some(&token),
            &batch(node, &these),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        acked.extend(acknowledged(&reply, &these));
    }
    eventually(PATIENCE, "the agent has delivered what it held", || {
        metric(agent_http, "core_meter_agent_samples_pending") == Some(0.0)
    });
    let status = agent
        .terminate(PATIENCE)
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "still the same process"
    );
    assert_eq!(service.child.id(), pid);
    assert!(service
        .log_text()
        .contains("the database takes writes again"));

    let after = stored(&service, "acme", since);
    let direct: BTreeSet<u64> = after
        .keys()
        .filter(|(n, _)| n == node)
        .map(|(_, s)| *s)
        .collect();
    let lost: Vec<u64> = acked.difference(&direct).copied().collect();
    assert!(lost.is_empty(), "acknowledged but missing: {lost:?}");
    assert_eq!(direct, acked, "stored but never acknowledged");
    assert!(
        after.values().all(|ats| ats.len() == 1),
        "no sample stored twice"
    );
    Reconciled::of(&agent, &after).assert_clean(&agent);
    Some(AggregatorFigures {
        refused_503,
        acknowledged_while_full,
        stored_after_recovery: (after.len() - stored_when_full) as u64,
        lost: lost.len() as u64,
    })
}

#[test]
fn a_full_disk_under_the_agent_or_the_aggregator_is_reported_refused_and_recovered_from() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = the_agents_spool_fills_up(dir.path()) else {
        return;
    };
    let Some(b) = the_aggregators_database_fills_up(dir.path()) else {
        return;
    };
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    eprintln!(
        "campaign: full-disk: agent_spool_full_writes_refused={} agent_recovered={} aggregator_503s={} acknowledged_while_full={} stored_after_recovery={} lost={}",
        a.writes_refused, a.recovered, b.refused_503, b.acknowledged_while_full, b.stored_after_recovery, b.lost
    );
}

/// An agent bug found by this campaign, fixed: `Spool::append` renamed the
/// sample's file into `pending/` and then failed to write the `seq` file (the
/// sample took the last page). The daemon treated that as a refused write and
/// kept the same measurement in memory under the next seq, so the spool file
/// and the memory copy were both delivered: one instant stored under two
/// seqs, one of them never logged as taken. Now the fixed-width `seq` file
/// is overwritten in place, which needs no new page, so a sample whose file
/// fits is stored with its seq; one whose file the disk refuses gets its seq
/// reserved in the `seq` file and is kept in memory under that seq only.
#[test]
fn a_disk_with_room_for_the_sample_but_not_its_seq_keeps_one_measurement_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount_or_skip(&dir.path().join("spool-disk"), "64k") else {
        return;
    };
    // Nothing answers yet, so the agent removes no file and frees no page.
    // The cluster is created later with this token.
    let token = format!("cmc_{}", "0".repeat(64));
    let port = testkit::ports::HeldPort::new();
    let since = Utc::now();
    let mut options = AgentOptions::new(
        dir.path(),
        "node-last-page",
        &format!("http://{}", port.addr()),
        &token,
    );
    options.spool = disk.path.join("spool");
    let (mut agent, http) = start_agent(&options);
    eventually(PATIENCE, "a sample is spooled", || spooled(&agent) >= 1);
    let taken = agent.taken().len();
    eventually(PATIENCE, "the next sample is taken", || {
        agent.taken().len() > taken
    });
    // Full, then exactly one page free: room for a sample's file, not for the seq file's.
    let ballast = disk.ballast();
    top_up(&ballast);
    let len = std::fs::metadata(&ballast).unwrap().len();
    let pages = len.div_ceil(4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len((pages - 1) * 4096)
        .unwrap();
    eventually(PATIENCE, "a spool write is refused", || {
        metric(http, "core_meter_agent_spool_write_errors_total").unwrap_or(0.0) >= 1.0
    });
    std::fs::remove_file(&ballast).unwrap();
    let service = Service::start_on(
        port,
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions::default(),
    );
    let (s, v) = service.admin("POST", "/v1/admin/accounts", Some(r#"{"id":"acme"}"#));
    assert_eq!(s, 201, "{v}");
    let (s, v) = service.admin(
        "POST",
        "/v1/admin/accounts/acme/clusters",
        Some(&format!(r#"{{"name":"prod","token":"{token}"}}"#)),
    );
    assert_eq!(s, 201, "{v}");
    eventually(PATIENCE, "the agent has nothing pending", || {
        metric(http, "core_meter_agent_samples_pending") == Some(0.0) && spooled(&agent) == 0
    });
    assert!(agent.terminate(PATIENCE).is_some_and(|s| s.success()));
    Reconciled::of(&agent, &stored(&service, "acme", since)).assert_clean(&agent);
}

/// An agent bug found by this campaign, fixed: while the spool was full,
/// `Spool::take_seq` handed out seqs to the samples kept in memory but could
/// not persist them. Delivered and acknowledged, those samples were gone from
/// memory; an agent restarted before the disk took a write again started from
/// the stale `seq` file, handed the same seqs to new samples, and the
/// aggregator answered them `duplicate`: the agent dropped them as delivered.
/// Silent loss. Now every seq is in the `seq` file before it is handed out:
/// the fixed-width file is overwritten in place, which a full disk allows.
#[test]
fn an_agent_restarted_while_its_spool_is_full_hands_out_no_seq_twice() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut disk) = mount_or_skip(&dir.path().join("spool-disk"), "256k") else {
        return;
    };
    let since = Utc::now();
    let service = Service::start(&dir.path().join("core-meter.sqlite"), ADMIN);
    let token = service.account_with_cluster("acme", "prod");
    let mut options = AgentOptions::new(
        dir.path(),
        "node-restarted",
        &format!("http://{}", service.addr),
        &token,
    );
    options.spool = disk.path.join("spool");
    let (mut agent, _) = start_agent(&options);
    eventually(PATIENCE, "a sample is stored", || {
        !stored(&service, "acme", since).is_empty()
    });
    let taken = agent.taken().len();
    eventually(PATIENCE, "the next sample is taken", || {
        agent.taken().len() > taken
    });
    disk.fill();
    let in_memory = |a: &AgentProc| a.log_text().matches("(in memory only)").count();
    eventually(
        PATIENCE,
        "three samples held in memory are delivered",
        || {
            in_memory(&agent) >= 3
                && Reconciled::of(&agent, &stored(&service, "acme", since))
                    .lost
                    .is_empty()
        },
    );
    assert!(agent.terminate(PATIENCE).is_some_and(|s| s.success()));
    // Restarted while the disk is still full.
    let http;
    (agent, http) = start_agent(&options);
    let held = in_memory(&agent);
    eventually(PATIENCE, "three more samples are taken", || {
        in_memory(&agent) >= held + 3
    });
    disk.free();
    eventually(PATIENCE, "the agent has nothing pending", || {
        metric(http, "core_meter_agent_samples_pending") == Some(0.0)
    });
    assert!(agent.terminate(PATIENCE).is_some_and(|s| s.success()));
    Reconciled::of(&agent, &stored(&service, "acme", since)).assert_clean(&agent);
}
