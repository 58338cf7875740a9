//! `spawn_app`: the real service on 127.0.0.1:0 with a temp SQLite file and a manual clock, driven over HTTP; and a test webhook that verifies every signature.
//!
//! The same tests run on PostgreSQL when `CORE_METER_TEST_POSTGRES` names a
//! server (`postgres://user@host:port`, as `.ci/run` starts): each test
//! database path then stands for a fresh PostgreSQL database of its own.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregator::app::{Application, FaultHooks, Timing};
use aggregator::config::Database;
use aggregator::config::Secret;
use aggregator::config::{Config, WebhookConfig};
use aggregator::security::signature::{self};
use aggregator::store::{Durability, Store, StoreError};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::clock::{Clock, ManualClock};

pub const ADMIN: &str = "admin-token-for-tests";

/// The signing secret of every test webhook (at least 32 bytes).
pub const WEBHOOK_SECRET: &str = "core-meter-test-webhook-secret-0123456789";

pub fn webhook_secret() -> Secret {
    Secret::new(WEBHOOK_SECRET)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub database: Database,
    /// Makes the service panic on purpose (tests of panic containment).
    pub faults: FaultHooks,
    /// The passes its background loops have begun (`settled`).
    passes: Arc<aggregator::background::Passes>,
    /// `https` when the configuration has TLS files, else `http`.
    scheme: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A small deterministic generator, so that a failure replays.
pub struct Dice(pub u64);

impl Dice {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

pub fn local(wall: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{wall}+08:00"))
        .unwrap()
        .with_timezone(&Utc)
}

/// The PostgreSQL server the suites run against, if any.
pub fn postgres_server() -> Option<String> {
    std::env::var("CORE_METER_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The database a test's file path stands for: the file itself, or (on
/// PostgreSQL) a database of its own, created the first time the path is
/// seen and the same one every time after (a restarted service finds its data).
///
/// A database is dropped once its test is done with it, so that the
/// PostgreSQL pass holds a few test databases at a time, not every one it
/// ever made (each is some 8 MB; the pass makes thousands): a database whose
/// path's directory (the test's `TempDir`) is gone is dropped at the next
/// call, and the first call of a test binary drops what binaries that have
/// exited left behind.
pub fn database(path: &Path) -> Database {
    static CREATED: Mutex<Option<HashMap<PathBuf, TestDatabase>>> = Mutex::new(None);
    let Some(server) = postgres_server() else {
        return Database::Sqlite(path.to_path_buf());
    };
    let mut created = CREATED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = created.is_none();
    let created = created.get_or_insert_with(HashMap::new);
    if let Some(db) = created.get(path) {
        return db.database.clone();
    }
    let done: Vec<PathBuf> = created
        .iter()
        .filter(|(_, db)| db.dir.as_ref().is_some_and(|dir| !dir.exists()))
        .map(|(path, _)| path.clone())
        .collect();
    let finished: Vec<String> = done
        .iter()
        .filter_map(|path| created.remove(path))
        .map(|db| db.name)
        .collect();
    let name = format!(
        "t{}_{}_{}",
        std::process::id(),
        fastrand::u32(..),
        fastrand::u32(..)
    );
    off_runtime(|| {
        let mut admin = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
            .expect("connect to the test PostgreSQL server");
        let mut drop = finished;
        if first {
            drop.extend(left_by_exited_binaries(&mut admin));
        }
        for old in drop {
            // FORCE ends what a stopped service may still hold open.
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"));
        }
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
    });
    let db = Database::Postgres(format!("{server}/{name}"));
    // Only a path inside a directory that exists now can tell, by that
    // directory's going, that its test is done.
    let dir = path
        .parent()
        .filter(|dir| dir.is_dir())
        .map(Path::to_path_buf);
    created.insert(
        path.to_path_buf(),
        TestDatabase {
            database: db.clone(),
            name,
            dir,
        },
    );
    db
}

struct TestDatabase {
    database: Database,
    name: String,
    /// The directory whose removal says the test is done with the database.
    dir: Option<PathBuf>,
}

/// The test databases (`t<pid>_…`) whose process has exited.
fn left_by_exited_binaries(admin: &mut postgres::Client) -> Vec<String> {
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 't%'",
            &[],
        )
        .expect("list the test databases");
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .filter(|name| {
            let pid = name[1..]
                .split('_')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            pid.is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
        })
        .collect()
}

/// The store a test's file path stands for (see [`database`]).
pub fn open_store(path: &Path, durability: Durability) -> Result<Store, StoreError> {
    let database = database(path);
    off_runtime(|| Store::connect(&database, durability))
}

/// True (and says so) when the suite runs on PostgreSQL: for the few tests
/// of what only SQLite has (its write lock, its file on a small disk).
pub fn skipped_on_postgres(what: &str) -> bool {
    let skip = postgres_server().is_some();
    if skip {
        eprintln!("skipped on PostgreSQL: {what}");
    }
    skip
}

/// Undoes what migrations 14 and 15 made on PostgreSQL: its samples filed
/// a row per node and day (15: offsets and cores packed as bytes) go back
/// into a table of a row each, with its keys.
pub fn undo_migrations_14_to_15() -> &'static str {
    if postgres_server().is_some() {
        "CREATE TABLE samples_of_13 AS
             SELECT account_ref, at_ms, node_id, id, cores, received_at_ms, seq, agent_version FROM samples;
         DROP VIEW samples; DROP TABLE sample_days;
         DROP FUNCTION sample_days_partition(INT); DROP FUNCTION sample_days_from(ANYARRAY, INT[], BIGINT);
         DROP FUNCTION sample_days_ints(BYTEA, INT); DROP FUNCTION sample_days_bytes(INT[], INT);
         ALTER TABLE samples_of_13 RENAME TO samples;
         ALTER TABLE samples ADD PRIMARY KEY (account_ref, at_ms, node_id, id);
         CREATE UNIQUE INDEX samples_by_node_seq ON samples(node_id, seq) WHERE seq IS NOT NULL;
         ALTER TABLE nodes DROP COLUMN seq_hi;"
    } else {
        ""
    }
}

/// Undoes what migrations 13 to 15 made: ingest's recompute marks,
/// PostgreSQL's sequence of sample ids and its samples by node and day.
pub fn undo_migrations_13_to_15() -> String {
    let thirteen = if postgres_server().is_some() {
        "DROP TABLE recompute_marks; DROP SEQUENCE sample_id_seq;"
    } else {
        "DROP TABLE recompute_marks;"
    };
    format!("{} {thirteen}", undo_migrations_14_to_15())
}

/// Undoes what migrations 9 (the image-scan add-on) to 15 (PostgreSQL's
/// samples by node and day) made, children first: with the version set
/// back, a test takes a database back to how version 8 left it.
pub fn undo_migrations_9_to_15() -> String {
    let notices = if postgres_server().is_some() {
        "ALTER TABLE notices DROP COLUMN product; ALTER TABLE notices ADD UNIQUE (account_ref, kind, day);
         ALTER TABLE issued_tokens DROP CONSTRAINT issued_tokens_kind_check;
         ALTER TABLE issued_tokens ADD CHECK (kind IN ('cluster', 'reader', 'admin'));"
    } else {
        // SQLite's migration 10 rebuilds these two from whatever is there.
        ""
    };
    format!(
        "{} DROP TABLE usage_days; ALTER TABLE nodes DROP COLUMN last_seen_ms;
         DROP TABLE console_sessions; DROP TABLE statement_keys; DROP TABLE log_purges; DROP TABLE log_usage_days; DROP TABLE log_usage;
         DROP TABLE product_states; DROP TABLE product_lives; DROP TABLE log_storage_orders;
         ALTER TABLE reader_tokens DROP COLUMN role; {notices}
         DROP TABLE image_settings; DROP TABLE image_scan_refunds;
         DROP TABLE image_receipts; DROP TABLE node_image_lists; DROP TABLE node_images;
         DROP TABLE images; DROP TABLE image_scan_packs; DROP TABLE product_pauses;",
        undo_migrations_13_to_15()
    )
}

/// Runs one statement on the database a test path stands for, behind the
/// store's back (a test that plants what the store would never write).
pub fn execute_behind_the_store(path: &Path, sql: &str) {
    match database(path) {
        Database::Sqlite(file) => {
            rusqlite::Connection::open(file)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
        Database::Postgres(url) => off_runtime(|| {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap();
        }),
    }
}

/// Runs `work` on a thread of its own: PostgreSQL's blocking client must not
/// run on a thread that drives async tasks (as a `#[tokio::test]`'s does).
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(work).join().unwrap())
}

pub fn config(database: PathBuf, webhook: Option<String>) -> Config {
    let mut c = aggregator::app::load_config(&Default::default(), &|_| None).unwrap();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.database = self::database(&database);
    c.admin_token = Some(ADMIN.into());
    c.webhook = webhook.map(|url| WebhookConfig {
        url,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
        secret: webhook_secret(),
    });
    c
}

impl TestApp {
    /// The service on a fresh database in a temporary directory of its own
    /// (kept as long as the directory is), without a webhook.
    pub async fn in_temp_dir(now: DateTime<Utc>) -> (tempfile::TempDir, TestApp) {
        let dir = tempfile::tempdir().unwrap();
        let app = TestApp::spawn(dir.path().join("db.sqlite"), None, now).await;
        (dir, app)
    }

    pub async fn spawn(database: PathBuf, webhook: Option<String>, now: DateTime<Utc>) -> TestApp {
        TestApp::spawn_with(config(database, webhook), now).await
    }

    /// The service delivering bill lines to `webhook`, which checks the
    /// signatures' time on the service's clock from the first request on.
    pub async fn spawn_for(database: PathBuf, webhook: &Webhook, now: DateTime<Utc>) -> TestApp {
        let clock = Arc::new(ManualClock::new(now));
        webhook.keep_time_with(clock.clone());
        TestApp::spawn_on(config(database, Some(webhook.url.clone())), clock).await
    }

    /// The service with a configuration of the test's own (built on [`config`]).
    pub async fn spawn_with(config: Config, now: DateTime<Utc>) -> TestApp {
        TestApp::spawn_on(config, Arc::new(ManualClock::new(now))).await
    }

    /// The service on a manual clock the test already holds.
    pub async fn spawn_on(config: Config, clock: Arc<ManualClock>) -> TestApp {
        let database = config.database.clone();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // Long naps: a test moves the clock (or waits until `settled`),
        // which wakes every loop, rather than waiting for a poll.
        let timing = Timing {
            billing_poll: Duration::from_secs(5),
            outbox_poll: Duration::from_secs(5),
            file_poll: Duration::from_secs(5),
        };
        let app = Application::build(config, clock.clone(), timing)
            .await
            .unwrap();
        let addr = app.local_addr();
        let faults = app.fault_hooks();
        let passes = app.passes();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestApp {
            addr,
            clock,
            client: reqwest::Client::new(),
            database,
            faults,
            passes,
            scheme,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until every background loop (billing job, delivery workers,
    /// file watchers) has made a whole pass that began after this call,
    /// moving the clock by nothing, which wakes them, instead of letting
    /// them sleep out their polls. Whatever they would do about the state of
    /// now is then done: a check that nothing more happens (no second
    /// delivery, no token taken) asserts after this, not after a sleep.
    pub async fn settled(&self) {
        // Every loop the service runs is there from its start, at 0.
        let before = self.passes.counts();
        eventually_async(
            Duration::from_secs(30),
            "every background loop made a whole pass",
            || async {
                self.clock.advance(TimeDelta::zero());
                let now = self.passes.counts();
                before
                    .iter()
                    .all(|(name, n)| now.get(name).is_some_and(|m| *m >= n + 2))
            },
        )
        .await;
    }

    /// Stops gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    /// One request with the test's client: the bearer token and JSON body if given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// Sends `request` byte for byte on a connection of its own, adding only
    /// `Host`, `Content-Length` and `Connection: close`, and reads the answer
    /// while the body is still being written (a service may answer 401 or 413
    /// before it reads a body). For what no client library sends: a path with
    /// `..` in it, a body that is not what its Content-Type says. Plain HTTP.
    pub async fn send_raw(
        &self,
        request: &RawRequest,
        within: Duration,
    ) -> Result<RawResponse, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        assert_eq!(self.scheme, "http", "send_raw speaks plain HTTP");
        let mut bytes = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method,
            request.target,
            self.addr,
            request.body.len()
        )
        .into_bytes();
        for (name, value) in &request.headers {
            bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&request.body);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut read, mut write) = stream.into_split();
            // The write half is kept open until the answer is read: hyper
            // drops a connection whose client half-closes before it answers.
            let writer = tokio::spawn(async move {
                let _ = write.write_all(&bytes).await;
                write
            });
            let mut answer = Vec::new();
            let read_result = read.read_to_end(&mut answer).await;
            writer.abort();
            let _ = writer.await;
            match read_result {
                Err(e) if answer.is_empty() => Err(format!("no answer: {e}")),
                _ => RawResponse::parse(&answer),
            }
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let resp = self.send(method, path, token, body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates an account with one cluster; returns the cluster token.
    pub async fn account_with_cluster(&self, account: &str, cluster: &str) -> String {
        let (s, _) = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/accounts",
                Some(json!({"id": account})),
            )
            .await;
        assert!(s == 201 || s == 409, "create account: {s}");
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/admin/accounts/{account}/clusters"),
                Some(json!({"name": cluster})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Pushes one sample per hour of a Shanghai day for `node`; returns the per-sample statuses.
    pub async fn push_day(
        &self,
        token: &str,
        node: &str,
        cores: u32,
        day: &str,
        first_seq: u64,
    ) -> Vec<String> {
        let samples: Vec<Value> = (0..24)
            .map(|h| json!({"node": node, "cores": cores, "at": local(&format!("{day}T{h:02}:05:00")), "seq": first_seq + h, "agent_version": "test"}))
            .collect();
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/samples",
                Some(token),
                Some(json!({"samples": samples})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn bills(&self) -> Vec<Value> {
        let (s, v) = self
            .admin(reqwest::Method::GET, "/v1/admin/bills", None)
            .await;
        assert_eq!(s, 200);
        v["bills"].as_array().unwrap().clone()
    }
}

/// A request as [`TestApp::send_raw`] writes it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// The path and query exactly as sent (already percent-encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An answer as [`TestApp::send_raw`] read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case, as sent otherwise.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn parse(answer: &[u8]) -> Result<RawResponse, String> {
        let lossy = || String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no complete answer: {:?}", lossy()))?;
        let head = String::from_utf8_lossy(&answer[..end]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line: {:?}", lossy()))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: answer[end + 4..].to_vec(),
        };
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            response.body = dechunk(&response.body)?;
        } else if let Some(n) = response.header("content-length") {
            let n: usize = n.parse().map_err(|_| format!("Content-Length {n:?}"))?;
            if response.body.len() < n {
                return Err(format!(
                    "the answer ends after {} of its {n} bytes",
                    response.body.len()
                ));
            }
            response.body.truncate(n);
        }
        Ok(response)
    }
}

/// A chunked body's content.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size = std::str::from_utf8(&rest[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("a chunk size that is not hex")?;
        rest = &rest[line + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("the answer ends inside a chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Each call: the idempotency key, the line, and whether it was taken.
type Calls = Arc<Mutex<Vec<(String, Value, bool)>>>;

/// A request as it arrived: its signature header, idempotency key and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub signature: Option<String>,
    pub key: String,
    pub body: Vec<u8>,
}

/// What the receiver keeps between requests.
#[derive(Default)]
struct Receiver {
    failures: usize,
    calls: Calls,
    clock: Mutex<Option<Arc<dyn Clock>>>,
    received: Mutex<Vec<Received>>,
    /// Requests whose signature verified.
    verified: Mutex<usize>,
    /// Why each refused request was refused.
    rejections: Mutex<Vec<String>>,
    /// The (timestamp, signature) pairs of the requests taken: one seen
    /// again is a replay, refused though its signature is valid.
    seen: Mutex<HashSet<(String, String)>>,
}

/// A billing backend (or notification service) as its operator should
/// write one: it verifies every request's `Core-Meter-Signature` with
/// [`signature::verify`] on its clock (the service's, see
/// [`Webhook::keep_time_with`]) and refuses a replay of a request it took
/// (409); a bad or stale signature is answered 401. Of the requests that
/// pass, it fails the first `failures` (503), then records each it takes.
pub struct Webhook {
    pub url: String,
    pub calls: Calls,
    receiver: Arc<Receiver>,
}

impl Webhook {
    pub async fn start(failures: usize) -> Webhook {
        use axum::routing::post;
        let receiver = Arc::new(Receiver {
            failures,
            ..Receiver::default()
        });
        let app = axum::Router::new()
            .route(
                "/bills",
                post(
                    |axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move { r.take(&headers, &body) },
                ),
            )
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Webhook {
            url: format!("http://{addr}/bills"),
            calls: receiver.calls.clone(),
            receiver,
        }
    }

    /// Checks signatures' timestamps against `clock` from now on (until
    /// then every request is refused: the test forgot to say).
    pub fn keep_time_with(&self, clock: Arc<dyn Clock>) {
        *self.receiver.clock.lock().unwrap() = Some(clock);
    }

    /// The idempotency keys the backend took (answered 2xx).
    pub fn taken(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.2)
            .map(|c| c.0.clone())
            .collect()
    }

    /// Requests that passed the signature check (taken or failed on purpose).
    pub fn attempts(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// How many requests carried a valid, fresh signature.
    pub fn verified(&self) -> usize {
        *self.receiver.verified.lock().unwrap()
    }

    /// Why each refused request was refused.
    pub fn rejections(&self) -> Vec<String> {
        self.receiver.rejections.lock().unwrap().clone()
    }

    /// Every request as it arrived, refused ones included.
    pub fn received(&self) -> Vec<Received> {
        self.receiver.received.lock().unwrap().clone()
    }

    /// Sends `request` to the receiver again, headers and body unchanged,
    /// as an attacker who captured it would; the status it gets.
    pub async fn resend(&self, request: &Received) -> u16 {
        let mut r = reqwest::Client::new()
            .post(&self.url)
            .header("Idempotency-Key", &request.key)
            .header("Content-Type", "application/json")
            .body(request.body.clone());
        if let Some(s) = &request.signature {
            r = r.header(signature::HEADER, s);
        }
        r.send().await.unwrap().status().as_u16()
    }
}

impl Receiver {
    fn take(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let request = Received {
            signature: header(signature::HEADER),
            key: header("idempotency-key").unwrap_or_default(),
            body: body.to_vec(),
        };
        self.received.lock().unwrap().push(request.clone());
        let refuse = |why: String, status: StatusCode| {
            self.rejections.lock().unwrap().push(why);
            status
        };
        let Some(now) = self.clock.lock().unwrap().as_ref().map(|c| c.now()) else {
            return refuse(
                "the receiver has no clock (keep_time_with)".into(),
                StatusCode::UNAUTHORIZED,
            );
        };
        let checked = signature::verify(
            &webhook_secret(),
            request.signature.as_deref(),
            body,
            now,
            signature::DEFAULT_TOLERANCE,
        );
        if let Err(e) = checked {
            return refuse(e.to_string(), StatusCode::UNAUTHORIZED);
        }
        *self.verified.lock().unwrap() += 1;
        let pair = seen_pair(request.signature.as_deref().unwrap_or_default());
        if self.seen.lock().unwrap().contains(&pair) {
            return refuse(
                format!("replayed: signature {pair:?} was taken before"),
                StatusCode::CONFLICT,
            );
        }
        let Ok(line) = serde_json::from_slice::<Value>(body) else {
            return refuse("the body is not JSON".into(), StatusCode::BAD_REQUEST);
        };
        let mut calls = self.calls.lock().unwrap();
        let ok = calls.len() >= self.failures;
        calls.push((request.key, line, ok));
        if ok {
            self.seen.lock().unwrap().insert(pair);
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The (t, v1) of a signature header that verified.
fn seen_pair(header: &str) -> (String, String) {
    let part = |key: &str| {
        header
            .split(',')
            .filter_map(|p| p.trim().split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (part("t"), part("v1"))
}

pub use testkit::eventually_async;

/// The console's HTTP without a browser.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token`; the session cookie's `Set-Cookie` and its value.
pub async fn console_login(
    app: &TestApp,
    client: &reqwest::Client,
    token: &str,
) -> (String, String) {
    let form = client.get(app.url("/console/login")).send().await.unwrap();
    let login_cookie = form.headers()["set-cookie"].to_str().unwrap().to_string();
    let csrf = login_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let answer = client
        .post(app.url("/console/login"))
        .header("cookie", format!("cm_login={csrf}"))
        .form(&[
            ("token", token),
            ("csrf", csrf.as_str()),
            ("next", "/console"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let set = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("cm_session="))
        .expect("a session cookie");
    let value = set.split(';').next().unwrap().to_string();
    (set, value)
}

/// Runs the aggregator binary with `args` (without the environment's
/// database): whether it succeeded, and what it printed, standard output
/// then standard error.
pub fn aggregator_command(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(args)
        .env_remove("CORE_METER_DATABASE")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
