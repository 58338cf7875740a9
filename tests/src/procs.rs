//! The real binaries as end-to-end tests use them: built from the code as it is, started on free ports, spoken to over plain HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::ports::HeldPort;

/// The path of a workspace binary, built from the code as it is now.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    // Built once per test process, whatever is there: `cargo test -p e2e`
    // does not rebuild the other packages' binaries, and a test must never
    // run an older build of the code it tests. Up to date, it takes a
    // fraction of a second.
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    target.join("debug").join(name)
}

/// The path of a workspace binary built with `--release`, built now (the
/// benches measure what ships).
pub fn release_binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", name])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release --bin {name} failed"
    );
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("release").join(name)
}

/// `aggregator serve` on a free port with its own database.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: String,
    /// Where its stderr (the log) goes, when asked for.
    pub log: Option<PathBuf>,
}

/// How to start `aggregator serve`, beyond its database and admin token.
#[derive(Default, Clone)]
pub struct ServiceOptions {
    /// The address to listen on: a restart after `kill -9` takes the old
    /// one again, so agents find it, and a service in another network
    /// namespace binds its own. If `None`, a port the test held is handed
    /// to the service (`Service::start_on`, or a new one).
    pub listen: Option<SocketAddr>,
    /// Extra environment (`CORE_METER_*` settings).
    pub env: Vec<(String, String)>,
    /// Append stderr to this file instead of discarding it.
    pub log: Option<PathBuf>,
    /// A command and arguments to run the binary under (`ip netns exec …`).
    pub wrapper: Vec<String>,
    /// The aggregator binary; the debug build of the code as it is if `None`.
    pub program: Option<PathBuf>,
}

impl Service {
    pub fn start(database: &Path, admin: &str) -> Service {
        Service::start_with(database, admin, &ServiceOptions::default())
    }

    pub fn start_with(database: &Path, admin: &str, o: &ServiceOptions) -> Service {
        Service::launch(database, admin, o, None)
    }

    /// Starts on `port`, which the test held until now (agents may
    /// already be trying it in vain).
    pub fn start_on(port: HeldPort, database: &Path, admin: &str, o: &ServiceOptions) -> Service {
        Service::launch(database, admin, o, Some(port))
    }

    fn launch(database: &Path, admin: &str, o: &ServiceOptions, port: Option<HeldPort>) -> Service {
        let stderr = match &o.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the service's log"),
            ),
            None => Stdio::null(),
        };
        let aggregator = o.program.clone().unwrap_or_else(|| binary("aggregator"));
        let mut command = match o.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(aggregator);
                c
            }
            None => Command::new(aggregator),
        };
        let addr = match (o.listen, port) {
            (Some(addr), None) => addr,
            (None, port) => port.unwrap_or_default().hand_to(&mut command),
            (Some(_), Some(_)) => {
                panic!("a service listens on an address or a held port, not both")
            }
        };
        let child = command
            .args(["serve", "--listen", &addr.to_string(), "--database"])
            .arg(database)
            .env("CORE_METER_ADMIN_TOKEN", admin)
            .env_remove("CORE_METER_WEBHOOK_URL")
            .env_remove("CORE_METER_LOG_JSON")
            .env("NO_COLOR", "1")
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start aggregator serve");
        // The test's copy of a handed port goes with the command.
        drop(command);
        let mut service = Service {
            child,
            addr,
            admin: admin.to_string(),
            log: o.log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(addr, "GET", "/readyz", None, None).map(|r| r.0) != Some(200) {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("aggregator serve exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "aggregator serve did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (s, b) =
            request(self.addr, method, path, Some(&self.admin), body).expect("the service answers");
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Creates an account and a cluster; returns the cluster token.
    pub fn account_with_cluster(&self, account: &str, cluster: &str) -> String {
        let (s, _) = self.admin(
            "POST",
            "/v1/admin/accounts",
            Some(&format!(r#"{{"id":"{account}"}}"#)),
        );
        assert_eq!(s, 201);
        let (s, v) = self.admin(
            "POST",
            &format!("/v1/admin/accounts/{account}/clusters"),
            Some(&format!(r#"{{"name":"{cluster}"}}"#)),
        );
        assert_eq!(s, 201);
        v["token"].as_str().unwrap().to_string()
    }

    /// Every sample stored for `account` on `day` (the audit trail, page
    /// by page: a day may hold more than one page).
    pub fn stored(&self, account: &str, day: &str) -> Vec<serde_json::Value> {
        let mut samples = Vec::new();
        let mut cursor = String::new();
        loop {
            let (s, v) = self.admin(
                "GET",
                &format!("/v1/admin/accounts/{account}/samples?day={day}{cursor}"),
                None,
            );
            assert_eq!(s, 200, "{v}");
            samples.extend(v["samples"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return samples,
            }
        }
    }

    /// The log so far (empty without `ServiceOptions::log`).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`: (status, body), or None if the connection failed.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The machine's online CPUs, as the kernel lists them.
pub fn online_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// One sample as the agent's log says it took it ("sample taken").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Taken {
    pub seq: u64,
    pub cores: u32,
    pub at: String,
}

/// The real `agent run` binary with its own spool and log.
pub struct AgentProc {
    pub child: Child,
    pub node: String,
    pub spool: PathBuf,
    pub log: PathBuf,
}

/// How to start an agent.
#[derive(Clone)]
pub struct AgentOptions {
    pub node: String,
    pub aggregator: String,
    pub token: String,
    pub spool: PathBuf,
    /// Its log; appended to, so restarts keep one history.
    pub log: PathBuf,
    pub interval_secs: u64,
    /// Extra arguments after `run …`.
    pub extra: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// A command and arguments to run the binary under (`ip netns exec …`).
    pub wrapper: Vec<String>,
    /// The agent binary; the debug build of the code as it is if `None`.
    pub program: Option<PathBuf>,
}

impl AgentOptions {
    /// An agent of `node` sampling every second, pushing to `aggregator`,
    /// with its spool and log in `dir/<node>/`.
    pub fn new(dir: &Path, node: &str, aggregator: &str, token: &str) -> AgentOptions {
        let home = dir.join(node);
        std::fs::create_dir_all(&home).unwrap();
        AgentOptions {
            node: node.to_string(),
            aggregator: aggregator.to_string(),
            token: token.to_string(),
            spool: home.join("spool"),
            log: home.join("agent.log"),
            interval_secs: 1,
            extra: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            program: None,
        }
    }
}

impl AgentProc {
    pub fn start(o: &AgentOptions) -> AgentProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&o.log)
            .expect("open the agent's log");
        let agent = o.program.clone().unwrap_or_else(|| binary("agent"));
        let mut command = match o.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let child = command
            .args(["run", "--aggregator", &o.aggregator])
            .arg("--spool")
            .arg(&o.spool)
            .args(["--interval-secs", &o.interval_secs.to_string()])
            .args(["--spread-secs", "0", "--listen", "127.0.0.1:0"])
            .args(["--max-backoff-secs", "1", "--push-timeout-secs", "5"])
            // No runtime's images unless a test asks: a machine's own
            // containerd must not change what the other tests push.
            .args(
                (!o.extra.iter().any(|a| a == "--images"))
                    .then_some(["--images", "off"])
                    .into_iter()
                    .flatten(),
            )
            .args(&o.extra)
            .env("NODE_NAME", &o.node)
            .env("CORE_METER_TOKEN", &o.token)
            .env_remove("CORE_METER_TOKEN_FILE")
            .env_remove("CORE_METER_LOG_JSON")
            .env("NO_COLOR", "1")
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        AgentProc {
            child,
            node: o.node.clone(),
            spool: o.spool.clone(),
            log: o.log.clone(),
        }
    }

    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `within` for it to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every sample the log says was taken, across restarts, by seq.
    pub fn taken(&self) -> Vec<Taken> {
        taken_in(&self.log_text())
    }

    /// How many samples wait in the spool (files under `pending/`).
    pub fn pending(&self) -> usize {
        std::fs::read_dir(self.spool.join("pending")).map_or(0, |d| d.count())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// The "sample taken" lines of an agent's text log.
pub fn taken_in(log: &str) -> Vec<Taken> {
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = line.split(&format!(" {key}=")).nth(1)?;
        Some(
            rest.split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    };
    let mut out: Vec<Taken> = log
        .lines()
        .filter(|l| l.contains("sample taken"))
        .filter_map(|l| {
            Some(Taken {
                seq: field(l, "seq")?.parse().ok()?,
                cores: field(l, "cores")?.parse().ok()?,
                at: field(l, "at")?,
            })
        })
        .collect();
    out.sort();
    out
}

/// utime + stime of a /proc/…/stat file, in seconds (clock ticks of 1/100 s
/// on Linux): the CPU a bench's process has used.
// CPU seconds are a measurement, not money.
#[allow(clippy::float_arithmetic)]
pub fn cpu_secs_of(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's load average, as a bench prints it beside its figures.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
