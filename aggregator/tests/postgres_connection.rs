//! The service on PostgreSQL when its connections are cut (a server restart,
//! a failover, an administrator's `pg_terminate_backend`): the request in
//! flight is answered 503 `database_unreachable`, never a 500 and never a
//! half-stored batch, and the next one connects again. Runs when the suite
//! runs on PostgreSQL.

mod support;

use aggregator::config::Database;
use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

/// Ends every session of the database but the caller's.
fn cut_connections(url: &str) {
    support::off_runtime(|| {
        let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .unwrap();
    });
}

/// Pushes one sample; the status and the error code, if any.
async fn push(app: &TestApp, token: &str, seq: u64) -> (u16, Value) {
    let sample = json!({"node": "node-1", "cores": 8, "at": local(&format!("2026-11-24T{:02}:05:00", seq % 24)),
                        "seq": seq, "agent_version": "test"});
    app.call(
        Method::POST,
        "/v1/samples",
        Some(token),
        Some(json!({"samples": [sample]})),
    )
    .await
}

#[tokio::test]
async fn cut_connections_are_answered_503_and_the_next_request_reconnects() {
    if support::postgres_server().is_none() {
        eprintln!("postgres_connection: skipped: the suite runs on SQLite");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("core-meter.sqlite"),
        None,
        local("2026-11-25T10:00:00"),
    )
    .await;
    let Database::Postgres(url) = app.database.clone() else {
        unreachable!("on PostgreSQL")
    };
    let token = app.account_with_cluster("acme", "prod").await;
    assert_eq!(push(&app, &token, 1).await.0, 200);

    for round in 0..3u64 {
        cut_connections(&url);
        // The first request after the cut may find a dead connection: 503
        // naming it, and nothing stored; a retry, as an agent makes, is taken.
        let mut answers = Vec::new();
        let seq = 10 + round;
        loop {
            let (status, body) = push(&app, &token, seq).await;
            answers.push((status, body["error"]["code"].clone()));
            if status == 200 {
                assert_eq!(body["results"][0]["status"], "accepted", "{body}");
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "database_unreachable", "{body}");
            assert!(answers.len() < 4, "{answers:?}");
        }
        eprintln!("round {round}: {answers:?}");
        // The admin side (its own connection) reconnects too.
        let mut reads = 0;
        loop {
            reads += 1;
            let (s, v) = app
                .admin(Method::GET, "/v1/admin/accounts/acme", None)
                .await;
            if s == 200 {
                break;
            }
            assert_eq!(
                (s, &v["error"]["code"]),
                (503, &json!("database_unreachable")),
                "{v}"
            );
            assert!(reads < 4);
        }
    }
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let seqs: Vec<u64> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 4, "each sample stored once: {v}");
    app.stop().await;
}
