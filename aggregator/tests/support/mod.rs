//! `spawn_app`: the real service on 127.0.0.1:0 with a temp SQLite file and a manual clock, driven over HTTP; and a test webhook.
//!
//! The same tests run on PostgreSQL when `CORE_METER_TEST_POSTGRES` names a
//! server (`postgres://user@host:port`, as `.ci/run` starts): each test
//! database path then stands for a fresh PostgreSQL database of its own.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregator::config::{Config, WebhookConfig};
use aggregator::startup::{Application, Timing};
use aggregator::store::{Database, Durability, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use shared::clock::ManualClock;

pub const ADMIN: &str = "admin-token-for-tests";

pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub database: Database,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
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
pub fn database(path: &Path) -> Database {
    static CREATED: Mutex<Option<HashMap<PathBuf, Database>>> = Mutex::new(None);
    let Some(server) = postgres_server() else {
        return Database::Sqlite(path.to_path_buf());
    };
    let mut created = CREATED.lock().unwrap();
    let created = created.get_or_insert_with(HashMap::new);
    if let Some(db) = created.get(path) {
        return db.clone();
    }
    let name = format!(
        "t{}_{}_{}",
        std::process::id(),
        created.len(),
        fastrand::u32(..)
    );
    off_runtime(|| {
        let mut admin = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
            .expect("connect to the test PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
    });
    let db = Database::Postgres(format!("{server}/{name}"));
    created.insert(path.to_path_buf(), db.clone());
    db
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
    let mut c = Config::load(&Default::default(), &|_| None).unwrap();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.database = self::database(&database);
    c.admin_token = Some(ADMIN.to_string());
    c.webhook = webhook.map(|url| WebhookConfig {
        url,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
    });
    c
}

impl TestApp {
    pub async fn spawn(database: PathBuf, webhook: Option<String>, now: DateTime<Utc>) -> TestApp {
        TestApp::spawn_with(config(database, webhook), now).await
    }

    /// The service with a configuration of the test's own (built on [`config`]).
    pub async fn spawn_with(config: Config, now: DateTime<Utc>) -> TestApp {
        let database = config.database.clone();
        let clock = Arc::new(ManualClock::new(now));
        let timing = Timing {
            billing_poll: Duration::from_millis(50),
            outbox_poll: Duration::from_millis(50),
            ..Timing::default()
        };
        let app = Application::build(config, clock.clone(), timing)
            .await
            .unwrap();
        let addr = app.local_addr();
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
            stop: Some(stop),
            task: Some(task),
        }
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
        format!("http://{}{path}", self.addr)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
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

/// Each call: the idempotency key, the line, and whether it was taken.
type Calls = Arc<Mutex<Vec<(String, Value, bool)>>>;

/// A billing backend that fails its first `failures` calls, then records each line it takes.
pub struct Webhook {
    pub url: String,
    pub calls: Calls,
}

impl Webhook {
    pub async fn start(failures: usize) -> Webhook {
        use axum::routing::post;
        let calls: Calls = Arc::default();
        let state = (calls.clone(), failures);
        let app = axum::Router::new()
            .route(
                "/bills",
                post(
                    |axum::extract::State((calls, failures)): axum::extract::State<(
                        Calls,
                        usize,
                    )>,
                     headers: axum::http::HeaderMap,
                     axum::Json(line): axum::Json<Value>| async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let mut calls = calls.lock().unwrap();
                        let ok = calls.len() >= failures;
                        calls.push((key, line, ok));
                        if ok {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        }
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Webhook {
            url: format!("http://{addr}/bills"),
            calls,
        }
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

    pub fn attempts(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

/// Waits until `check` holds.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {within:?} waiting until {what}");
}
