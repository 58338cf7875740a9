//! Benchmark: what listing the node's images costs the agent (issue 20).
//!
//! Run with `cargo bench -p e2e --bench agent_images` (`-- --images N
//! --secs N` for another size). Needs root and Debian's containerd; without
//! them it says so and exits 0.
//!
//! Debian's containerd runs with its own root, state and socket in a
//! temporary directory and holds N images (default 200) imported from OCI
//! archives built here. The release agent samples every second for S
//! seconds (default 30) against the release aggregator on a temporary
//! SQLite file, first with `--images off`, then with `--images on`: each
//! sample is one list of the N images, so a run of S seconds does about S
//! lists where a node does one an hour. Its figures, from `/proc` just
//! before it is stopped: peak resident memory (`VmHWM`) and CPU time (user
//! and system). The difference between the runs, divided by the lists, is
//! what one list costs.
//!
//! The bench exits non-zero when the inventory does not hold exactly the N
//! images, or the agent's peak memory with images on reaches the
//! DaemonSet's 32 MiB limit.

// Timings and ratios are measurements, never money: floating point is right here.
#![allow(clippy::float_arithmetic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::containerd::{available, oci_archive, Containerd};
use e2e::procs::{AgentOptions, AgentProc, Service, ServiceOptions};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
/// The DaemonSet's memory limit (deploy/base/agent/daemonset.yaml).
const MEMORY_LIMIT_KB: u64 = 32 * 1024;

struct Figures {
    peak_kb: u64,
    cpu_ms: u64,
    samples: usize,
}

/// The clock ticks per second `/proc/PID/stat` counts CPU time in.
fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Peak resident memory (kB) and CPU time (ms) of a running process.
fn footprint(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let cpu_ms = (fields[0] + fields[1]) * 1000 / clock_ticks();
    (peak_kb, cpu_ms)
}

/// One run of the release agent for `secs` seconds with `--images mode`.
fn run_agent(
    dir: &Path,
    service: &Service,
    token: &str,
    containerd: &Containerd,
    mode: &str,
    secs: u64,
) -> Figures {
    let node = format!("node-{mode}");
    let mut options = AgentOptions::new(dir, &node, &format!("http://{}", service.addr), token);
    options.program = Some(e2e::procs::release_binary("agent"));
    options.extra = vec![
        "--images".into(),
        mode.into(),
        "--cri-socket".into(),
        containerd.socket().display().to_string(),
    ];
    let mut agent = AgentProc::start(&options);
    std::thread::sleep(Duration::from_secs(secs));
    let (peak_kb, cpu_ms) = footprint(agent.child.id());
    agent.terminate(Duration::from_secs(10));
    Figures {
        peak_kb,
        cpu_ms,
        samples: agent.taken().len(),
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}"))
        })
}

fn main() {
    if !available() {
        println!("agent_images: skipped, it needs root and Debian's containerd (apt-get install containerd)");
        return;
    }
    let images = arg("--images", 200);
    let secs = arg("--secs", 30);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "agent_images: {images} images, {secs} s per run; load average {}",
        load.trim()
    );

    let dir = tempfile::Builder::new()
        .prefix("cm-agent-images-")
        .tempdir_in("/tmp")
        .unwrap();
    let containerd = Containerd::start(dir.path());
    let archives = dir.path().join("archives");
    for n in 0..images {
        let (archive, _) = oci_archive(&archives, &format!("example.test/app-{n}:1"), 1);
        containerd.import(&archive);
    }
    let service = Service::start_with(
        &dir.path().join("core-meter.sqlite"),
        ADMIN,
        &ServiceOptions {
            program: Some(e2e::procs::release_binary("aggregator")),
            ..ServiceOptions::default()
        },
    );
    let token = service.account_with_cluster("acme", "prod");

    let off = run_agent(dir.path(), &service, &token, &containerd, "off", secs);
    let on = run_agent(dir.path(), &service, &token, &containerd, "on", secs);

    let (status, inventory) = service.admin("GET", "/v1/admin/accounts/acme/images", None);
    assert_eq!(status, 200, "{inventory}");
    let held = inventory["images"].as_array().map_or(0, Vec::len);
    let (_, metrics) = e2e::procs::request(service.addr, "GET", "/metrics", None, None)
        .expect("the service's /metrics");
    let lists = metrics
        .lines()
        .find(|l| l.starts_with("core_meter_image_lists_total{result=\"stored\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("no")
        .to_string();

    println!(
        "images off: {} samples, peak resident {} kB, CPU {} ms",
        off.samples, off.peak_kb, off.cpu_ms
    );
    println!(
        "images on:  {} samples, peak resident {} kB, CPU {} ms; the inventory holds {held} images; {lists} lists stored",
        on.samples, on.peak_kb, on.cpu_ms
    );
    let per_list = (on.cpu_ms as f64 - off.cpu_ms as f64) / on.samples.max(1) as f64;
    println!(
        "images on costs {:+} kB of peak memory and {per_list:.2} ms of CPU per list of {images} images",
        on.peak_kb as i64 - off.peak_kb as i64
    );
    let mut missed = Vec::new();
    if held != usize::try_from(images).unwrap() {
        missed.push(format!("the inventory holds {held} images, not {images}"));
    }
    if on.peak_kb >= MEMORY_LIMIT_KB {
        missed.push(format!(
            "peak memory {} kB reaches the DaemonSet's limit of {MEMORY_LIMIT_KB} kB",
            on.peak_kb
        ));
    }
    if !missed.is_empty() {
        eprintln!("agent_images: {}", missed.join("; "));
        std::process::exit(1);
    }
}
