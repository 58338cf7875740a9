//! Test helpers: a small aggregator that speaks `POST /v1/samples` (SPEC section 9) over HTTP or HTTPS, and the real agent binary run, killed and restarted.

#![allow(dead_code)]
// Metric values are floats in the Prometheus text format; summing them is test arithmetic.
#![allow(clippy::float_arithmetic)]

pub mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::ports::HeldPort;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use shared::wire::{IngestResponse, SampleBatch, SampleResult, SampleStatus};

pub const TOKEN: &str = "cluster-token-for-tests";

/// How the fake aggregator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stores and answers.
    Normal,
    /// Stores, then never answers (the agent dies or times out waiting).
    StoreThenHang,
    /// Answers 503 without storing.
    Unavailable,
    /// Answers 503 with the aggregator's body for a full disk, without storing.
    DiskFull,
    /// Answers every sample `rejected` with this reason, without storing.
    RejectAll(shared::sample::Rejection),
}

#[derive(Default)]
pub struct Received {
    /// Stored samples by (node, seq), with the cores.
    pub stored: BTreeMap<(String, u64), u32>,
    /// Seqs in the order they were first stored.
    pub arrival: Vec<u64>,
    pub duplicates: u64,
    pub requests: u64,
    pub unauthorized: u64,
    /// Every bearer token presented, in order, each once.
    pub tokens_seen: Vec<String>,
}

pub struct FakeAggregator {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    mode: Arc<Mutex<Mode>>,
    token: Arc<Mutex<String>>,
    tls: bool,
    handshake_failures: Arc<AtomicU64>,
    _thread: std::thread::JoinHandle<()>,
}

type Shared = (Arc<Mutex<Received>>, Arc<Mutex<Mode>>, Arc<Mutex<String>>);

async fn ingest(
    State((received, mode, token)): State<Shared>,
    headers: HeaderMap,
    Json(batch): Json<SampleBatch>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(presented) = auth.strip_prefix("Bearer ") {
        let mut r = received.lock().unwrap();
        if !r.tokens_seen.iter().any(|t| t == presented) {
            r.tokens_seen.push(presented.to_string());
        }
    }
    let expected = format!("Bearer {}", token.lock().unwrap());
    if auth != expected {
        received.lock().unwrap().unauthorized += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mode = *mode.lock().unwrap();
    if mode == Mode::Unavailable {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if mode == Mode::DiskFull {
        received.lock().unwrap().requests += 1;
        let body = serde_json::json!({"error": {
            "code": "disk_full",
            "message": "the aggregator's disk is full; nothing of this request was stored",
            "field": null,
        }});
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "60")],
            Json(body),
        )
            .into_response();
    }
    if let Mode::RejectAll(reason) = mode {
        received.lock().unwrap().requests += 1;
        let results = (0..batch.samples.len())
            .map(|index| SampleResult {
                index,
                status: SampleStatus::Rejected,
                reason: Some(reason),
            })
            .collect();
        return Json(IngestResponse { results }).into_response();
    }
    let results = {
        let mut r = received.lock().unwrap();
        r.requests += 1;
        batch
            .samples
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let key = (s.node.clone(), s.seq);
                let status = match r.stored.entry(key) {
                    std::collections::btree_map::Entry::Occupied(_) => SampleStatus::Duplicate,
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(s.cores);
                        SampleStatus::Accepted
                    }
                };
                match status {
                    SampleStatus::Accepted => r.arrival.push(s.seq),
                    _ => r.duplicates += 1,
                }
                SampleResult {
                    index,
                    status,
                    reason: None,
                }
            })
            .collect()
    };
    if mode == Mode::StoreThenHang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Json(IngestResponse { results }).into_response()
}

impl FakeAggregator {
    /// Starts on a free port.
    pub fn start(mode: Mode) -> FakeAggregator {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind the fake aggregator"),
            mode,
        )
    }

    /// Starts on `port`, which the test held (the agent tried it in vain).
    pub fn start_on(port: HeldPort, mode: Mode) -> FakeAggregator {
        Self::serve(port.listener(), mode)
    }

    /// Starts on a free port of 127.0.0.1, serving HTTPS with `config`.
    pub fn start_tls(mode: Mode, config: Arc<rustls::ServerConfig>) -> FakeAggregator {
        Self::serve_with(
            TcpListener::bind("127.0.0.1:0").expect("bind the fake aggregator"),
            mode,
            Some(config),
        )
    }

    fn serve(listener: TcpListener, mode: Mode) -> FakeAggregator {
        Self::serve_with(listener, mode, None)
    }

    fn serve_with(
        listener: TcpListener,
        mode: Mode,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> FakeAggregator {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let mode = Arc::new(Mutex::new(mode));
        let token = Arc::new(Mutex::new(TOKEN.to_string()));
        let handshake_failures = Arc::new(AtomicU64::new(0));
        let state: Shared = (received.clone(), mode.clone(), token.clone());
        let is_tls = tls.is_some();
        let failures = handshake_failures.clone();
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new()
                    .route("/v1/samples", post(ingest))
                    .with_state(state);
                match tls {
                    Some(config) => tls::serve_tls(listener, app, config, failures).await,
                    None => axum::serve(listener, app).await.unwrap(),
                }
            });
        });
        FakeAggregator {
            addr,
            received,
            mode,
            token,
            tls: is_tls,
            handshake_failures,
            _thread: thread,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The token the aggregator accepts from now on.
    pub fn set_token(&self, token: &str) {
        *self.token.lock().unwrap() = token.to_string();
    }

    pub fn tokens_seen(&self) -> Vec<String> {
        self.received.lock().unwrap().tokens_seen.clone()
    }

    /// TLS handshakes the server refused (a missing or unknown client certificate).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn stored_seqs(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .stored
            .keys()
            .map(|(_, s)| *s)
            .collect()
    }

    pub fn arrival(&self) -> Vec<u64> {
        self.received.lock().unwrap().arrival.clone()
    }

    pub fn duplicates(&self) -> u64 {
        self.received.lock().unwrap().duplicates
    }

    pub fn requests(&self) -> u64 {
        self.received.lock().unwrap().requests
    }

    pub fn unauthorized(&self) -> u64 {
        self.received.lock().unwrap().unauthorized
    }
}

/// The real agent binary.
pub struct Agent {
    pub child: Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

pub struct AgentOptions<'a> {
    pub aggregator: String,
    pub spool: &'a Path,
    pub node: &'a str,
    pub interval_secs: u64,
    pub extra: Vec<String>,
    /// Set in the agent's environment, e.g. `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

impl Agent {
    pub fn start(o: &AgentOptions<'_>) -> Agent {
        // Not beside the spool: a test may make that read-only.
        let log = tempfile::Builder::new()
            .prefix("core-meter-agent-test-")
            .suffix(".log")
            .tempfile()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(["run", "--aggregator", &o.aggregator])
            .arg("--spool")
            .arg(o.spool)
            .args(["--interval-secs", &o.interval_secs.to_string()])
            // Port 0: the agent says in its log which port it got.
            .args(["--listen", "127.0.0.1:0"])
            .args(["--max-backoff-secs", "1", "--push-timeout-secs", "30"])
            // No runtime's images unless a test asks for them.
            .args(
                (!o.extra.iter().any(|a| a == "--images"))
                    .then_some(["--images", "off"])
                    .into_iter()
                    .flatten(),
            )
            .args(&o.extra)
            .env("NODE_NAME", o.node)
            .env("CORE_METER_TOKEN", TOKEN)
            .env_remove("CORE_METER_TOKEN_FILE")
            .env_remove("CORE_METER_LOG_JSON")
            .env("NO_COLOR", "1")
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the agent");
        let mut agent = Agent {
            child,
            metrics: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        agent.metrics = agent.wait_for_metrics();
        agent
    }

    fn wait_for_metrics(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = self.log_text();
            let addr = log
                .split("listen=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let Some(addr) = addr {
                if http_get(addr, "/healthz").is_some() {
                    return addr;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the agent did not serve /healthz; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A metric's value from /metrics (summed over its labels when `label` is empty).
    pub fn metric(&self, name: &str, label: &str) -> Option<f64> {
        let body = http_get(self.metrics, "/metrics")?.1;
        let mut found = None;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ')?;
            let metric = key.split('{').next().unwrap_or(key);
            if metric == name && key.contains(label) {
                let v: f64 = value.parse().ok()?;
                found = Some(found.unwrap_or(0.0) + v);
            }
        }
        found
    }

    pub fn readyz(&self) -> Option<u16> {
        http_get(self.metrics, "/readyz").map(|(s, _)| s)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the log of a failed test for a look; forget the others.
        if std::thread::panicking() {
            eprintln!("agent log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs `agent run` with `args` (and a token in its environment) and
/// expects it to refuse to start: it must exit with a failure within 10 s.
/// Returns what it wrote to stderr.
pub fn start_refused(args: &[String]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("run")
        .args(["--listen", "127.0.0.1:0", "--spool"])
        .arg(std::env::temp_dir().join("core-meter-agent-refused-spool"))
        .args(args)
        .env("NODE_NAME", "node-refused")
        .env("CORE_METER_TOKEN", TOKEN)
        .env_remove("CORE_METER_TOKEN_FILE")
        .env_remove("CORE_METER_AGGREGATOR")
        .env_remove("CORE_METER_LOG_JSON")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent started with {args:?}; log:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the agent exited zero: {stderr}");
    stderr
}

/// A minimal HTTP/1.0 GET over a real socket: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub use testkit::eventually;

/// The pending samples `agent spool` lists.
pub fn spool_listing(spool: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("spool")
        .arg("--spool")
        .arg(spool)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
