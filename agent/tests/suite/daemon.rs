//! The real agent process against a real HTTP aggregator: crashes, outages, restarts, a read-only or full spool, SIGTERM.

use crate::support;
use testkit::ports::HeldPort;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shared::sample::Rejection;

use support::{eventually, spool_listing, Agent, AgentOptions, FakeAggregator, Mode};

fn options<'a>(aggregator: String, spool: &'a Path, node: &'a str) -> AgentOptions<'a> {
    AgentOptions {
        aggregator,
        spool,
        node,
        interval_secs: 1,
        extra: Vec::new(),
        env: Vec::new(),
    }
}

/// Every seq from 1 to the highest, each exactly once.
fn assert_complete(seqs: &[u64]) {
    let max = *seqs.iter().max().expect("some samples arrived");
    let expected: Vec<u64> = (1..=max).collect();
    assert_eq!(
        seqs,
        expected.as_slice(),
        "a sample is missing or stored twice"
    );
}

#[test]
fn a_kill_between_spooling_and_the_acknowledgement_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // The aggregator stores the first batch but never answers: the agent is
    // killed while it waits, with the sample still in its spool.
    let server = FakeAggregator::start(Mode::StoreThenHang);
    let agent = Agent::start(&options(server.url(), &spool, "node-a"));
    eventually(
        Duration::from_secs(10),
        "the first batch reached the aggregator",
        || server.requests() >= 1,
    );
    agent.kill_hard();
    assert!(
        !spool_listing(&spool).is_empty(),
        "the unacknowledged sample is still spooled"
    );

    // Kill it a few more times at arbitrary moments, while the aggregator works.
    server.set_mode(Mode::Normal);
    for pause_ms in [150, 900, 1300, 400] {
        let agent = Agent::start(&options(server.url(), &spool, "node-a"));
        std::thread::sleep(Duration::from_millis(pause_ms));
        agent.kill_hard();
    }

    let agent = Agent::start(&options(server.url(), &spool, "node-a"));
    eventually(Duration::from_secs(15), "the spool drained", || {
        spool_listing(&spool).is_empty() && server.stored_seqs().len() >= 6
    });
    drop(agent);
    assert_complete(&server.stored_seqs());
    assert!(
        server.duplicates() >= 1,
        "the sample stored before the kill was resent and answered duplicate"
    );
}

#[test]
fn samples_taken_while_the_aggregator_is_down_all_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Held, so refused, until the fake aggregator takes it.
    let port = HeldPort::new();
    let addr = port.addr();
    // Nothing listens yet: connections are refused for several intervals.
    let agent = Agent::start(&options(format!("http://{addr}"), &spool, "node-b"));
    eventually(Duration::from_secs(15), "five samples are pending", || {
        spool_listing(&spool).len() >= 5
    });
    assert!(
        agent
            .metric("core_meter_agent_push_errors_total", "connect")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        agent
            .metric("core_meter_agent_samples_pending", "")
            .unwrap_or(0.0)
            >= 5.0
    );

    let server = FakeAggregator::start_on(port, Mode::Normal);
    eventually(Duration::from_secs(15), "the backlog arrived", || {
        spool_listing(&spool).is_empty() && server.stored_seqs().len() >= 6
    });
    let arrival = server.arrival();
    assert!(
        arrival.windows(2).all(|w| w[0] < w[1]),
        "out of order: {arrival:?}"
    );
    assert_complete(&server.stored_seqs());
    assert!(
        agent
            .metric("core_meter_agent_last_push_success_timestamp_seconds", "")
            .unwrap_or(0.0)
            > 1.7e9
    );
}

#[test]
fn the_hour_offset_is_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::Normal);
    let mut hourly = options(server.url(), &spool, "ip-10-0-3-17.ec2.internal");
    hourly.interval_secs = 3600;
    let offsets: Vec<f64> = (0..2)
        .map(|_| {
            let agent = Agent::start(&hourly);
            let offset = agent
                .metric("core_meter_agent_schedule_offset_seconds", "")
                .unwrap();
            agent.kill_hard();
            offset
        })
        .collect();
    assert_eq!(offsets[0], offsets[1]);
    assert!(
        (0.0..600.0).contains(&offsets[0]),
        "within the first 10 minutes: {}",
        offsets[0]
    );
}

fn online_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    agent::sampler::parse_cpu_list(&text).unwrap()
}

#[test]
fn pinned_to_one_cpu_the_agent_still_reports_every_core_of_the_node() {
    let out = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_agent"), "once", "--print"])
        .env("NODE_NAME", "node-d")
        .output()
        .expect("taskset (util-linux) runs the agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sample: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sample["cores"], online_cpus());
    assert_eq!(sample["node"], "node-d");
    assert!(sample["at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_sys_root_presents_a_96_core_node() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = dir.path().join("devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    std::fs::write(cpu.join("online"), "0-95\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["once", "--print", "--sys-root"])
        .arg(dir.path())
        .output()
        .unwrap();
    let sample: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sample["cores"], 96);
}

/// A spool directory the agent cannot write: a read-only or full tmpfs where
/// mounting is allowed (root), else a path whose parent is a plain file.
struct BadSpool {
    path: std::path::PathBuf,
    mount: Option<std::path::PathBuf>,
}

impl BadSpool {
    fn mount(dir: &Path, options: &str, fill: bool) -> Option<BadSpool> {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let path = mnt.join("spool");
        std::fs::create_dir_all(path.join("pending")).unwrap();
        if fill {
            // Fill the filesystem: the next sample cannot be written.
            let _ = std::fs::write(mnt.join("ballast"), vec![0u8; 128 * 1024]);
        }
        if !options.is_empty() {
            let remount = Command::new("mount")
                .args(["-o", options])
                .arg(&mnt)
                .status()
                .unwrap();
            assert!(remount.success());
        }
        Some(BadSpool {
            path,
            mount: Some(mnt),
        })
    }

    fn file_in_the_way(dir: &Path) -> BadSpool {
        std::fs::write(dir.join("not-a-dir"), b"").unwrap();
        BadSpool {
            path: dir.join("not-a-dir/spool"),
            mount: None,
        }
    }
}

impl Drop for BadSpool {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

fn an_unwritable_spool_is_reported_and_the_agent_keeps_running(
    bad: &BadSpool,
    node: &str,
) -> (Agent, FakeAggregator) {
    let server = FakeAggregator::start(Mode::Normal);
    let mut agent = Agent::start(&options(server.url(), &bad.path, node));
    eventually(Duration::from_secs(15), "write errors are counted", || {
        agent
            .metric("core_meter_agent_spool_write_errors_total", "")
            .unwrap_or(0.0)
            >= 3.0
    });
    assert!(
        agent.is_running(),
        "the agent must not exit; log:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.readyz(), Some(503));
    // The samples it could not spool are still delivered from memory.
    eventually(
        Duration::from_secs(10),
        "samples kept in memory arrive",
        || server.stored_seqs().len() >= 3,
    );
    assert!(
        agent.log_text().contains("spool"),
        "the log says what is wrong"
    );
    (agent, server)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_read_only_spool_is_reported_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let bad = BadSpool::mount(dir.path(), "remount,ro", false).unwrap_or_else(|| {
        eprintln!("mount not permitted here: using a spool path under a plain file instead");
        BadSpool::file_in_the_way(dir.path())
    });
    let started = unix_now();
    let (agent, server) =
        an_unwritable_spool_is_reported_and_the_agent_keeps_running(&bad, "node-ro");
    // No seq can be kept on disk, so each comes from the clock: a restarted
    // agent, which cannot know them, still never hands one out again.
    let seqs = server.stored_seqs();
    assert!(
        seqs.iter().all(|&s| s >= started),
        "seqs from the clock, not from the stale seq file: {seqs:?}"
    );
    if bad.mount.is_some() {
        let log = agent.log_text();
        assert!(
            log.contains("cannot write the seq to the spool")
                && log.contains("Read-only file system"),
            "the log says the seq could not be kept:\n{log}"
        );
    }
}

#[test]
fn a_full_spool_is_reported_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let bad = BadSpool::mount(dir.path(), "", true).unwrap_or_else(|| {
        eprintln!("mount not permitted here: using a spool path under a plain file instead");
        BadSpool::file_in_the_way(dir.path())
    });
    an_unwritable_spool_is_reported_and_the_agent_keeps_running(&bad, "node-full");
}

#[test]
fn an_aggregator_error_is_logged_with_the_code_it_answered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::DiskFull);
    let agent = Agent::start(&options(server.url(), &spool, "node-e"));
    eventually(Duration::from_secs(10), "a push was refused", || {
        server.requests() >= 1 && agent.log_text().contains("push failed")
    });
    let log = agent.log_text();
    assert!(
        log.contains("the aggregator failed (503): disk_full: the aggregator's disk is full; nothing of this request was stored"),
        "the node's log says why the aggregator failed:\n{log}"
    );
    assert!(!spool_listing(&spool).is_empty(), "the samples are kept");
    server.set_mode(Mode::Normal);
    eventually(Duration::from_secs(10), "the kept samples arrive", || {
        server.stored_seqs().contains(&1)
    });
}

#[test]
fn sigterm_pushes_what_is_pending_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = HeldPort::new();
    let addr = port.addr();
    let mut opts = options(format!("http://{addr}"), &spool, "node-t");
    opts.extra = vec!["--shutdown-grace-secs".into(), "5".into()];
    let agent = Agent::start(&opts);
    eventually(Duration::from_secs(10), "three samples are pending", || {
        spool_listing(&spool).len() >= 3
    });
    let server = FakeAggregator::start_on(port, Mode::Unavailable);
    // The aggregator now answers but refuses; let it accept only from now on.
    server.set_mode(Mode::Normal);
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        spool_listing(&spool).is_empty(),
        "the last push took the pending samples"
    );
    assert_complete(&server.stored_seqs());
}

#[test]
fn sigterm_with_the_aggregator_unreachable_exits_zero_within_the_grace_and_keeps_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::StoreThenHang);
    let mut opts = options(server.url(), &spool, "node-u");
    opts.extra = vec!["--shutdown-grace-secs".into(), "2".into()];
    let agent = Agent::start(&opts);
    eventually(Duration::from_secs(10), "a push is under way", || {
        server.requests() >= 1
    });
    let started = std::time::Instant::now();
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert!(!spool_listing(&spool).is_empty());
}

#[test]
fn a_wrong_token_is_not_retried_at_once_and_the_samples_stay() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::Normal);
    let mut opts = options(server.url(), &spool, "node-w");
    opts.extra = vec!["--token".into(), "not-the-token".into()];
    opts.interval_secs = 3600;
    let agent = Agent::start(&opts);
    eventually(Duration::from_secs(10), "the push was refused", || {
        server.unauthorized() >= 1
    });
    // An hour-long interval: a 401 waits for the next sample, it is not
    // hammered. The agent says when it will push next: at that sample, and
    // no retry sooner.
    let offset = agent
        .metric("core_meter_agent_schedule_offset_seconds", "")
        .expect("the schedule's offset");
    let next_sample = agent::schedule::next_tick(chrono::Utc::now(), 3600, offset as u64);
    eventually(Duration::from_secs(10), "the next push is planned", || {
        agent.metric("core_meter_agent_next_push_timestamp_seconds", "")
            == Some(next_sample.timestamp() as f64)
    });
    assert_eq!(
        server.unauthorized(),
        1,
        "a 401 is not retried with backoff"
    );
    assert_eq!(
        agent.metric("core_meter_agent_push_errors_total", "refused"),
        Some(1.0)
    );
    assert_eq!(spool_listing(&spool).len(), 1, "the sample is kept");
    assert!(
        agent.log_text().contains("ERROR"),
        "the refusal is logged as an error"
    );
}

#[test]
fn an_empty_token_file_is_counted_as_a_token_error_and_the_samples_stay() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "").unwrap();
    // A Secret's file, readable by its owner only (everyone's is refused).
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = FakeAggregator::start(Mode::Normal);
    let mut opts = options(server.url(), &spool, "node-t");
    opts.extra = vec!["--token-file".into(), token_file.display().to_string()];
    let agent = Agent::start(&opts);
    eventually(
        Duration::from_secs(10),
        "the token error is counted",
        || agent.metric("core_meter_agent_push_errors_total", "token") >= Some(1.0),
    );
    assert_eq!(server.requests(), 0, "nothing is sent without a token");
    assert!(!spool_listing(&spool).is_empty(), "the samples are kept");
    // The Secret's file is filled in (a kubelet refresh): the samples go.
    std::fs::write(&token_file, support::TOKEN).unwrap();
    eventually(Duration::from_secs(10), "the kept samples arrive", || {
        server.stored_seqs().contains(&1)
    });
}

#[test]
fn a_rejected_sample_is_dropped_with_its_reason_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::RejectAll(Rejection::TooOld));
    let agent = Agent::start(&options(server.url(), &spool, "node-r"));
    eventually(Duration::from_secs(10), "two samples were rejected", || {
        agent
            .metric("core_meter_agent_samples_dropped_total", "rejected")
            .unwrap_or(0.0)
            >= 2.0
    });
    assert!(
        spool_listing(&spool).len() <= 1,
        "rejected samples leave the spool"
    );
    assert!(agent.log_text().contains("too_old"), "the reason is logged");
}

#[test]
fn a_conflicting_resend_is_dropped_from_the_spool_and_logged_as_a_bug() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::RejectAll(Rejection::ConflictingResend));
    let agent = Agent::start(&options(server.url(), &spool, "node-c"));
    eventually(Duration::from_secs(10), "two samples were rejected", || {
        agent
            .metric(
                "core_meter_agent_samples_rejected_total",
                "conflicting_resend",
            )
            .unwrap_or(0.0)
            >= 2.0
    });
    assert!(
        spool_listing(&spool).len() <= 1,
        "conflicting resends leave the spool"
    );
    let log = agent.log_text();
    assert!(log.contains("conflicting_resend"), "the reason is logged");
    assert!(log.contains("a seq was handed out twice"), "{log}");
}

#[test]
fn a_runtime_that_cannot_be_reached_never_holds_back_a_sample_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = FakeAggregator::start(Mode::Normal);
    let mut opts = options(server.url(), &spool, "node-no-runtime");
    let socket = dir.path().join("no-runtime.sock");
    opts.extra = vec![
        "--images".into(),
        "on".into(),
        "--cri-socket".into(),
        socket.display().to_string(),
    ];
    let agent = Agent::start(&opts);
    eventually(Duration::from_secs(15), "three samples arrive", || {
        server.stored_seqs().len() >= 3
    });
    eventually(
        Duration::from_secs(15),
        "the runtime's fault is counted",
        || {
            agent
                .metric("core_meter_agent_images_errors_total", "connect")
                .is_some_and(|n| n >= 1.0)
        },
    );
    // Ready all the same, and /readyz says what is wrong with the images.
    let (status, body) = support::http_get(agent.metrics, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("images: cannot connect to the container runtime")
            && body.contains("no-runtime.sock"),
        "{body}"
    );
    // Said once in the log while it lasts, not at every sample.
    let log = agent.log_text();
    assert_eq!(
        log.matches("cannot list the node's images").count(),
        1,
        "{log}"
    );
}
