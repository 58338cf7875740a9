//! Benchmark: the release agent next to Prometheus' node_exporter, in one run: steady resident memory and CPU time per cycle.
//!
//! Run with `cargo bench -p e2e --bench agent_peer` (as any user; node_exporter
//! comes from Debian: `apt-get install -y prometheus-node-exporter`, and need not
//! run as a service: the bench starts `/usr/bin/prometheus-node-exporter` itself
//! on loopback). It builds the release `agent` and `aggregator`, starts a release
//! `aggregator serve` on a temporary database and the release `agent run
//! --interval-secs 1 --spread-secs 0` pushing to it, so one cycle is one sample
//! (spool file written and fsynced) and one push. Next to it run node_exporter
//! with its default collectors and node_exporter with only the cpu collector
//! (`--collector.disable-defaults --collector.cpu`), each scraped over HTTP by
//! this bench once a second, so one cycle is one scrape. All three run at once,
//! under the same load. After a warm-up the bench samples `VmRSS` from
//! `/proc/PID/status` every second for a fixed window and takes utime+stime
//! from `/proc/PID/stat` at the window's edges. The target: the agent's median
//! resident memory at most half of node_exporter's (default collectors).
//!
//! Settings: `AGENT_PEER_WINDOW_SECS` (default 60), `AGENT_PEER_WARMUP_SECS`
//! (default 10), `NODE_EXPORTER` (default `/usr/bin/prometheus-node-exporter`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::procs::request;
use testkit::ports::HeldPort;

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const INSTALL: &str = "node_exporter is not installed: as root, run `apt-get install -y prometheus-node-exporter` \
(and stop its service, `systemctl disable --now prometheus-node-exporter`, so only the bench's own copy runs), \
or point NODE_EXPORTER at its binary";

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process killed when dropped, so a failed assertion leaves nothing running.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited: {status}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of the whole process (every thread, live or exited), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may hold spaces; the fields after it start past the last ')'.
    let rest = &text[text.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

fn wait_http(addr: SocketAddr, path: &str, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(addr, "GET", path, None, None).map(|r| r.0) != Some(200) {
        proc.assert_alive();
        assert!(
            Instant::now() < deadline,
            "{} did not answer {path}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A counter of the agent's `/metrics` (`core_meter_agent_samples_taken_total`).
fn agent_counter(addr: SocketAddr, name: &str) -> u64 {
    let (status, body) = request(addr, "GET", "/metrics", None, None).expect("agent /metrics");
    assert_eq!(status, 200, "agent /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn first_line(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// A file's size in MB with one decimal.
fn file_mb(path: &Path) -> String {
    let tenths = std::fs::metadata(path).map_or(0, |m| m.len() / 100_000);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Microseconds as milliseconds with two decimals (integer arithmetic: the workspace denies float arithmetic).
fn ms(us: u64) -> String {
    format!("{}.{:02}", us / 1000, us % 1000 / 10)
}

/// x / y with two decimals, rounded half up.
fn ratio(x: u64, y: u64) -> String {
    if y == 0 {
        return "n/a".into();
    }
    let hundredths = (x * 100 + y / 2) / y;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Scrapes `addr` once a second on a fixed schedule until `stop`; counts the scrapes that answered 200.
fn scraper(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if let Some((200, body)) = request(addr, "GET", "/metrics", None, None) {
                assert!(
                    body.contains("node_cpu_seconds_total"),
                    "a node_exporter scrape without CPU metrics"
                );
                count.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            let next = start + Duration::from_secs(n.into());
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
}

/// What one process did over the window.
struct Figures {
    rss_median_kb: u64,
    rss_max_kb: u64,
    hwm_kb: u64,
    anon_median_kb: u64,
    file_median_kb: u64,
    cycles: u64,
    cpu_us: u64,
}

impl Figures {
    fn cpu_us_per_cycle(&self) -> u64 {
        self.cpu_us / self.cycles.max(1)
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let window_secs = env_secs("AGENT_PEER_WINDOW_SECS", 60).max(5);
    let warmup_secs = env_secs("AGENT_PEER_WARMUP_SECS", 10);
    let node_exporter = std::env::var_os("NODE_EXPORTER").map_or_else(
        || PathBuf::from("/usr/bin/prometheus-node-exporter"),
        PathBuf::from,
    );
    if !node_exporter.exists() {
        eprintln!(
            "agent_peer: {} not found. {INSTALL}",
            node_exporter.display()
        );
        std::process::exit(2);
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "agent",
            "-p",
            "aggregator",
        ])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release -p agent -p aggregator failed"
    );
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let agent_bin = target.join("release/agent");
    let aggregator_bin = target.join("release/aggregator");

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut service_command = Command::new(&aggregator_bin);
    let service_addr = HeldPort::new().hand_to(&mut service_command);
    let mut service = Proc {
        name: "aggregator serve",
        child: service_command
            .args(["serve", "--listen", &service_addr.to_string(), "--database"])
            .arg(dir.path().join("core-meter.sqlite"))
            .env("CORE_METER_ADMIN_TOKEN", ADMIN)
            .env_remove("CORE_METER_WEBHOOK_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aggregator serve"),
    };
    // The bench's copy of the handed port goes with the command.
    drop(service_command);
    wait_http(service_addr, "/readyz", &mut service);
    let admin = |path: &str, body: &str| {
        let (s, b) =
            request(service_addr, "POST", path, Some(ADMIN), Some(body)).expect("admin API");
        assert_eq!(s, 201, "{path}: {b}");
        b
    };
    admin("/v1/admin/accounts", r#"{"id":"bench"}"#);
    let cluster: serde_json::Value = serde_json::from_str(&admin(
        "/v1/admin/accounts/bench/clusters",
        r#"{"name":"bench"}"#,
    ))
    .expect("cluster JSON");
    let token = cluster["token"]
        .as_str()
        .expect("cluster token")
        .to_string();

    // The agent and node_exporter bind their own addresses: each port is
    // let go just before the program that binds it starts.
    let agent_addr = HeldPort::new().release();
    let mut agent = Proc {
        name: "agent run",
        child: Command::new(&agent_bin)
            .args([
                "run",
                "--interval-secs",
                "1",
                "--spread-secs",
                "0",
                "--listen",
            ])
            .arg(agent_addr.to_string())
            .arg("--aggregator")
            .arg(format!("http://{service_addr}"))
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .env("NODE_NAME", "bench-node")
            .env("CORE_METER_TOKEN", &token)
            .env_remove("CORE_METER_TOKEN_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent run"),
    };
    wait_http(agent_addr, "/healthz", &mut agent);

    let start_exporter = |name: &'static str, extra: &[&str]| {
        let addr = HeldPort::new().release();
        let mut p = Proc {
            name,
            child: Command::new(&node_exporter)
                .arg(format!("--web.listen-address={addr}"))
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node_exporter"),
        };
        wait_http(addr, "/", &mut p);
        (p, addr)
    };
    let (mut full, full_addr) = start_exporter("node_exporter (default collectors)", &[]);
    let (mut minimal, minimal_addr) = start_exporter(
        "node_exporter (cpu collector only)",
        &["--collector.disable-defaults", "--collector.cpu"],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let full_scrapes = Arc::new(AtomicU64::new(0));
    let minimal_scrapes = Arc::new(AtomicU64::new(0));
    let scrapers = [
        scraper(full_addr, stop.clone(), full_scrapes.clone()),
        scraper(minimal_addr, stop.clone(), minimal_scrapes.clone()),
    ];

    let load_before = loadavg();
    println!("agent_peer: warm-up {warmup_secs} s, then a {window_secs} s window");
    std::thread::sleep(Duration::from_secs(warmup_secs));

    let pids = [agent.pid(), full.pid(), minimal.pid()];
    let ticks0 = pids.map(cpu_ticks);
    let taken0 = agent_counter(agent_addr, "core_meter_agent_samples_taken_total");
    let pushed0 = agent_counter(agent_addr, "core_meter_agent_samples_pushed_total");
    let scrapes0 = [
        full_scrapes.load(Ordering::Relaxed),
        minimal_scrapes.load(Ordering::Relaxed),
    ];
    let started = Instant::now();
    let mut rss: [Vec<u64>; 3] = Default::default();
    let mut anon: [Vec<u64>; 3] = Default::default();
    let mut file: [Vec<u64>; 3] = Default::default();
    for second in 1..=window_secs {
        for (i, &pid) in pids.iter().enumerate() {
            rss[i].push(status_kb(pid, "VmRSS"));
            anon[i].push(status_kb(pid, "RssAnon"));
            file[i].push(status_kb(pid, "RssFile"));
        }
        let next = started + Duration::from_secs(second);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let ticks1 = pids.map(cpu_ticks);
    let elapsed = started.elapsed().as_secs_f64();
    let taken = agent_counter(agent_addr, "core_meter_agent_samples_taken_total") - taken0;
    let pushed = agent_counter(agent_addr, "core_meter_agent_samples_pushed_total") - pushed0;
    let scrapes = [
        full_scrapes.load(Ordering::Relaxed) - scrapes0[0],
        minimal_scrapes.load(Ordering::Relaxed) - scrapes0[1],
    ];
    let hwm = pids.map(|pid| status_kb(pid, "VmHWM"));
    let load_after = loadavg();
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.join().expect("scraper thread");
    }
    agent.assert_alive();
    full.assert_alive();
    minimal.assert_alive();
    service.assert_alive();

    let tck = clock_ticks_per_sec();
    let cycles = [taken, scrapes[0], scrapes[1]];
    let figures: Vec<Figures> = (0..3)
        .map(|i| Figures {
            rss_median_kb: median(rss[i].clone()),
            rss_max_kb: rss[i].iter().copied().max().unwrap_or(0),
            hwm_kb: hwm[i],
            anon_median_kb: median(anon[i].clone()),
            file_median_kb: median(file[i].clone()),
            cycles: cycles[i],
            cpu_us: (ticks1[i] - ticks0[i]) * 1_000_000 / tck,
        })
        .collect();

    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ne_version = first_line(&node_exporter, "--version");
    println!();
    println!(
        "machine: {} online CPUs ({}), {cpu_model}, Linux {}",
        e2e::procs::online_cpus(),
        std::thread::available_parallelism().map_or(0, usize::from),
        kernel.trim()
    );
    println!(
        "date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "agent: {} ({}, release binary {} MB on disk)",
        first_line(&agent_bin, "--version"),
        first_line(Path::new("rustc"), "-V"),
        file_mb(&agent_bin)
    );
    println!(
        "peer: {ne_version} ({}, {} MB on disk)",
        node_exporter.display(),
        file_mb(&node_exporter)
    );
    println!("loadavg (1/5/15 min): {load_before} at the window's start, {load_after} at its end");
    println!(
        "window: {elapsed:.1} s after {warmup_secs} s of warm-up; CPU time is counted in clock ticks of {} ms, \
so the agent's CPU per cycle is exact to +/- {} ms (one tick over its cycles)",
        ms(1_000_000 / tck),
        ms(1_000_000 / tck / taken.max(1))
    );
    println!(
        "agent cycles: {taken} samples taken, {pushed} acknowledged by the aggregator (one sample + one push each)"
    );
    println!(
        "node_exporter cycles: {} / {} scrapes answered 200 (one HTTP scrape each)",
        scrapes[0], scrapes[1]
    );
    println!();
    let (a, f, m) = (&figures[0], &figures[1], &figures[2]);
    println!(
        "| {:<38} | {:>9} | {:>13} | {:>13} | {:>13} | {:>13} |",
        "", "agent", "node_exporter", "agent/n_e", "n_e cpu only", "agent/n_e cpu"
    );
    println!(
        "|{:-<40}|{:->11}|{:->15}|{:->15}|{:->15}|{:->15}|",
        "", "", "", "", "", ""
    );
    let kb_row = |label: &str, get: &dyn Fn(&Figures) -> u64| {
        let (x, y, z) = (get(a), get(f), get(m));
        println!(
            "| {label:<38} | {x:>9} | {y:>13} | {:>13} | {z:>13} | {:>13} |",
            ratio(x, y),
            ratio(x, z)
        );
    };
    kb_row("VmRSS median, kB", &|g| g.rss_median_kb);
    kb_row("VmRSS max, kB", &|g| g.rss_max_kb);
    kb_row("VmHWM (peak since start), kB", &|g| g.hwm_kb);
    kb_row("RssAnon median (heap, stacks), kB", &|g| g.anon_median_kb);
    kb_row("RssFile median (mapped binary), kB", &|g| g.file_median_kb);
    kb_row("cycles in the window", &|g| g.cycles);
    let ms_row = |label: &str, get: &dyn Fn(&Figures) -> u64| {
        let (x, y, z) = (get(a), get(f), get(m));
        println!(
            "| {label:<38} | {:>9} | {:>13} | {:>13} | {:>13} | {:>13} |",
            ms(x),
            ms(y),
            ratio(x, y),
            ms(z),
            ratio(x, z)
        );
    };
    ms_row("CPU (utime+stime) in the window, ms", &|g| g.cpu_us);
    ms_row("CPU per cycle, ms", &Figures::cpu_us_per_cycle);
    println!();
    println!(
        "What differs: an agent cycle is one sample (sysinfo + sysfs read, a spool file written and fsynced, \
the seq file) and one HTTP POST (reqwest, rustls built in) to the aggregator, driven by its own timer, \
plus two reads of its /metrics by the bench at the window's edges; \
a node_exporter cycle is one scrape answered over HTTP, and with its default collectors it reads \
dozens of /proc and /sys sources and renders about {} kB of text; with --collector.disable-defaults \
--collector.cpu it reads /proc/stat and a few /sys files per CPU and renders a few kB. node_exporter is Go \
(garbage-collected heap, runtime threads); the agent is Rust on a tokio current-thread runtime. \
RSS counts the pages of each binary it touched (RssFile) as well as its own memory (RssAnon).",
        request(full_addr, "GET", "/metrics", None, None).map_or(0, |r| r.1.len() / 1000)
    );

    let target_met = a.rss_median_kb * 2 <= f.rss_median_kb;
    println!(
        "agent_peer: agent median VmRSS {} kB is {} of node_exporter's {} kB (target <= 0.50): {}",
        a.rss_median_kb,
        ratio(a.rss_median_kb, f.rss_median_kb),
        f.rss_median_kb,
        if target_met { "met" } else { "MISSED" }
    );
    drop((agent, full, minimal, service));
    if !target_met {
        std::process::exit(1);
    }
}
