//! `agent log-retention`, the real binary against a small log-storage endpoint over real HTTP: what it reports, what it deletes, and what it never touches.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::json;
use shared::logs::{DayBytes, UsageReport, USAGE_PATH};

const TOKEN: &str = "cml_logs-token-for-tests-5b1e0c";

#[derive(Default)]
struct Received {
    reports: Vec<UsageReport>,
    authorizations: Vec<String>,
}

type Shared = (Arc<Mutex<Received>>, StatusCode, serde_json::Value);

/// Answers every usage report with the status and body the test chose, and
/// keeps what it received.
struct LogService {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    _thread: std::thread::JoinHandle<()>,
}

async fn usage(
    State((received, status, answer)): State<Shared>,
    headers: HeaderMap,
    Json(report): Json<UsageReport>,
) -> axum::response::Response {
    let mut r = received.lock().unwrap();
    r.reports.push(report);
    r.authorizations.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    (status, Json(answer)).into_response()
}

impl LogService {
    fn start(status: StatusCode, answer: serde_json::Value) -> LogService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the log service");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let state: Shared = (received.clone(), status, answer);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new()
                    .route(USAGE_PATH, put(usage))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        LogService {
            addr,
            received,
            _thread: thread,
        }
    }

    /// An active storage that answers `purge`.
    fn purging(purge: &[&str]) -> LogService {
        LogService::start(StatusCode::OK, answer("active", true, purge))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn reports(&self) -> Vec<UsageReport> {
        self.received.lock().unwrap().reports.clone()
    }

    fn authorizations(&self) -> Vec<String> {
        self.received.lock().unwrap().authorizations.clone()
    }
}

fn answer(state: &str, accept_writes: bool, purge: &[&str]) -> serde_json::Value {
    json!({
        "quota_bytes": 1000,
        "used_bytes": 1200,
        "state": state,
        "accept_writes": accept_writes,
        "purge": purge,
        "over_quota": false,
    })
}

fn write(path: &Path, bytes: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'x'; bytes]).unwrap();
}

/// `agent log-retention --dir DIR` against `server`, the token in the
/// environment unless `extra` gives another way.
fn log_retention(dir: &Path, server: &LogService, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["log-retention", "--aggregator", &server.url()])
        .arg("--dir")
        .arg(dir)
        .args(["--push-timeout-secs", "10"])
        .args(extra)
        .env("CORE_METER_LOG_TOKEN", TOKEN)
        .env_remove("CORE_METER_LOG_TOKEN_FILE")
        .env_remove("CORE_METER_AGGREGATOR")
        .env_remove("CORE_METER_LOG_DIR")
        .env_remove("CORE_METER_LOG_DRY_RUN")
        .env_remove("CORE_METER_LOG_JSON")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run agent log-retention")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one JSON object a successful pass prints.
fn summary(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "agent failed:\n{}", stderr(out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(&text).unwrap()
}

fn day_bytes(day: &str, bytes: u64) -> DayBytes {
    DayBytes {
        day: day.parse().unwrap(),
        bytes,
    }
}

#[test]
fn the_report_names_each_day_folder_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("2026-01-01/app.log"), 100);
    write(&dir.path().join("2026-01-01/archive/app.log.1"), 23);
    std::fs::create_dir(dir.path().join("2026-01-02")).unwrap();
    write(&dir.path().join("2026-01-03/app.log"), 7);
    write(&dir.path().join("notes/readme"), 500);
    write(&dir.path().join("2026-01-04"), 500);
    let server = LogService::purging(&[]);

    let out = log_retention(dir.path(), &server, &[], &[]);
    let s = summary(&out);
    let reports = server.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].days,
        vec![
            day_bytes("2026-01-01", 123),
            day_bytes("2026-01-02", 0),
            day_bytes("2026-01-03", 7),
        ]
    );
    assert_eq!(server.authorizations(), vec![format!("Bearer {TOKEN}")]);
    assert_eq!(
        s,
        json!({
            "quota_bytes": 1000, "used_bytes": 1200, "state": "active",
            "accept_writes": true, "over_quota": false, "purged": [], "dry_run": false,
        })
    );
    let log = stderr(&out);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("left alone"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {log}");
    assert!(warnings[0].contains("skipped=2"), "{log}");
}

#[test]
fn the_days_the_answer_names_are_deleted_oldest_first_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (i, day) in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
        .iter()
        .enumerate()
    {
        write(&dir.path().join(day).join("app.log"), 10 * (i + 1));
    }
    let server = LogService::purging(&["2026-01-03", "2026-01-01"]);

    let out = log_retention(dir.path(), &server, &[], &[]);
    let s = summary(&out);
    assert_eq!(
        s["purged"],
        json!([{"day": "2026-01-01", "bytes": 10}, {"day": "2026-01-03", "bytes": 30}])
    );
    assert!(!dir.path().join("2026-01-01").exists());
    assert!(dir.path().join("2026-01-02/app.log").exists());
    assert!(!dir.path().join("2026-01-03").exists());
    assert!(dir.path().join("2026-01-04/app.log").exists());
    let log = stderr(&out);
    let at = |day: &str| {
        log.find(&format!("day folder purged day={day}"))
            .unwrap_or_else(|| panic!("{day} purged: {log}"))
    };
    assert!(at("2026-01-01") < at("2026-01-03"), "oldest first: {log}");
}

#[test]
fn a_dry_run_deletes_nothing_and_prints_what_it_would() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("2026-01-01/app.log"), 10);
    write(&dir.path().join("2026-01-02/app.log"), 20);
    let server = LogService::purging(&["2026-01-01"]);

    let out = log_retention(dir.path(), &server, &["--dry-run"], &[]);
    let s = summary(&out);
    assert_eq!(s["dry_run"], json!(true));
    assert_eq!(s["purged"], json!([{"day": "2026-01-01", "bytes": 10}]));
    assert!(dir.path().join("2026-01-01/app.log").exists());
    assert!(dir.path().join("2026-01-02/app.log").exists());
    let log = stderr(&out);
    let would = format!(
        "would delete {} (10 bytes)",
        dir.path().join("2026-01-01").display()
    );
    assert!(log.contains(&would), "{log}");
    assert!(!log.contains("2026-01-02 ("), "{log}");
}

#[test]
fn a_symlink_inside_the_directory_pointing_outside_it_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious.log");
    write(&precious, 4096);
    write(&dir.path().join("2026-01-01/app.log"), 5);
    std::os::unix::fs::symlink(&precious, dir.path().join("2026-01-01/linked.log")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("2026-01-01/linked-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("2026-01-02")).unwrap();
    // A deleted storage purges every day it is told of, and more.
    let server = LogService::start(
        StatusCode::OK,
        answer("deleted", false, &["2026-01-01", "2026-01-02"]),
    );

    let out = log_retention(dir.path(), &server, &[], &[]);
    let s = summary(&out);
    assert_eq!(
        server.reports()[0].days,
        vec![day_bytes("2026-01-01", 5)],
        "the symlinks count nothing and the symlink named like a day is no day"
    );
    assert_eq!(s["purged"], json!([{"day": "2026-01-01", "bytes": 5}]));
    assert!(!dir.path().join("2026-01-01").exists());
    assert_eq!(std::fs::metadata(&precious).unwrap().len(), 4096);
    assert!(dir
        .path()
        .join("2026-01-02")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    assert!(
        stderr(&out).contains("the log service must stop writing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_error_answer_exits_non_zero_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("2026-01-01/app.log"), 10);
    let server = LogService::start(
        StatusCode::UNAUTHORIZED,
        json!({"error": {
            "code": "unauthorized",
            "message": "the token is not a logs token of an account",
            "field": "authorization",
        }}),
    );

    let out = log_retention(dir.path(), &server, &[], &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let log = stderr(&out);
    assert!(
        log.contains("(401): unauthorized: the token is not a logs token of an account (field authorization)"),
        "{log}"
    );
    assert!(dir.path().join("2026-01-01/app.log").exists());
}

#[test]
fn the_token_never_appears_in_the_output() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("2026-01-01/app.log"), 10);
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let accepted = LogService::purging(&["2026-01-01"]);
    let refused = LogService::start(
        StatusCode::UNAUTHORIZED,
        json!({"error": {"code": "unauthorized", "message": "no", "field": null}}),
    );
    let trace = [("RUST_LOG", "trace")];

    let from_file = ["--token-file", token_file.to_str().unwrap(), "--dry-run"];
    let runs = [
        log_retention(dir.path(), &accepted, &["--dry-run"], &trace),
        log_retention(dir.path(), &accepted, &from_file, &trace),
        log_retention(dir.path(), &refused, &[], &trace),
    ];
    for out in &runs {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
        assert!(!text.contains(TOKEN), "the token was printed:\n{text}");
        assert!(
            !text.contains("5b1e0c"),
            "part of the token was printed:\n{text}"
        );
    }
    assert_eq!(
        accepted.authorizations(),
        vec![format!("Bearer {TOKEN}"); 2],
        "the file's token, trimmed, is the one sent"
    );
}
