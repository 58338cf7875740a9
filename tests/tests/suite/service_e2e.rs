//! The real binaries together: `kill -9` of the service during a burst of pushes, and the agent pushing to the service.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::procs::{binary, request, Service};

const ADMIN: &str = "admin-e2e";

fn audit(service: &Service, account: &str, day: &str) -> Vec<serde_json::Value> {
    service.stored(account, day)
}

#[test]
fn a_kill_9_during_a_burst_of_pushes_loses_no_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let service = Service::start(&db, ADMIN);
    let token = service.account_with_cluster("acme", "prod");
    let addr = service.addr;
    let now = chrono::Utc::now();
    let day = shared::zone::BillingZone::default().day_of(now).to_string();
    let acknowledged: Arc<Mutex<BTreeSet<(String, u64)>>> = Arc::default();
    let pushers: Vec<_> = (0..6)
        .map(|p| {
            let (token, acknowledged) = (token.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                for batch in 0..10_000u64 {
                    let node = format!("node-{p}");
                    let samples: Vec<String> = (0..20)
                        .map(|i| {
                            format!(
                                r#"{{"node":"{node}","cores":8,"at":"{}","seq":{},"agent_version":"e2e"}}"#,
                                now.to_rfc3339(),
                                batch * 20 + i
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"samples":[{}]}}"#, samples.join(","));
                    let Some((200, answer)) = request(addr, "POST", "/v1/samples", Some(&token), Some(&body)) else {
                        return; // the service is gone
                    };
                    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
                    let mut acked = acknowledged.lock().unwrap();
                    for r in answer["results"].as_array().unwrap() {
                        let i = r["index"].as_u64().unwrap();
                        assert_ne!(r["status"], "rejected", "{r}");
                        acked.insert((node.clone(), batch * 20 + i));
                    }
                }
            })
        })
        .collect();
    // Let the burst run, then kill the service with no warning.
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < 2_000 && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    service.kill_hard();
    for p in pushers {
        p.join().unwrap();
    }
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() >= 2_000,
        "only {} samples were acknowledged before the kill",
        acked.len()
    );

    let service = Service::start(&db, ADMIN);
    let stored: BTreeSet<(String, u64)> = audit(&service, "acme", &day)
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_string(),
                s["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let lost: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged samples lost, e.g. {lost:?}",
        acked.difference(&stored).count()
    );
}

#[test]
fn the_agent_pushes_to_the_service_and_its_samples_appear_in_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("core-meter.sqlite"), ADMIN);
    let token = service.account_with_cluster("acme", "prod");
    let mut agent = std::process::Command::new(binary("agent"))
        .args([
            "run",
            "--interval-secs",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--aggregator",
        ])
        .arg(format!("http://{}", service.addr))
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .env("NODE_NAME", "worker-1")
        .env("CORE_METER_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the agent");
    let day = shared::zone::BillingZone::default()
        .day_of(chrono::Utc::now())
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples = audit(&service, "acme", &day);
        if samples.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(samples.len() >= 3, "only {} samples arrived", samples.len());
    let cores = e2e::procs::online_cpus();
    for s in &samples {
        assert_eq!(s["node"], "worker-1");
        assert_eq!(s["cluster"], "prod");
        assert_eq!(s["cores"], cores);
        assert_eq!(s["agent_version"], env!("CARGO_PKG_VERSION"));
    }
    let seqs: Vec<u64> = samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs 1, 2, 3, … in order"
    );
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let mut service = Service::start(&db, ADMIN);
    let token = service.account_with_cluster("acme", "prod");
    let addr = service.addr;
    let now = chrono::Utc::now();
    let day = shared::zone::BillingZone::default().day_of(now).to_string();
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = acks.clone();
    let pusher = std::thread::spawn(move || {
        let mut acked = 0u64;
        for seq in 0..100_000u64 {
            let body = format!(
                r#"{{"samples":[{{"node":"n","cores":2,"at":"{}","seq":{seq},"agent_version":"e2e"}}]}}"#,
                now.to_rfc3339()
            );
            match request(addr, "POST", "/v1/samples", Some(&token), Some(&body)) {
                Some((200, _)) => {
                    acked += 1;
                    counted.store(acked, std::sync::atomic::Ordering::Relaxed);
                }
                _ => break,
            }
        }
        acked
    });
    // Pushes are flowing: SIGTERM lands among them.
    testkit::eventually(Duration::from_secs(20), "ten pushes answered", || {
        acks.load(std::sync::atomic::Ordering::Relaxed) >= 10
    });
    let term = std::process::Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = service.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let acked = pusher.join().unwrap();
    assert!(acked > 0);
    let service = Service::start(&db, ADMIN);
    let stored = audit(&service, "acme", &day).len() as u64;
    assert!(stored >= acked, "{acked} acknowledged, {stored} stored");
}
