//! The service with its database on a small tmpfs that fills up: pushes and admin writes are answered 503 naming the full disk, nothing is acknowledged that was not stored, readiness fails, and all goes on once space returns, without a restart.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

/// A tmpfs mounted for one test, unmounted when dropped (also on panic).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` where mounting is not permitted (not root), unless
    /// `CORE_METER_REQUIRE_ROOT=1`, where that is a failure.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                testkit::skip("ROOT", &format!("a tmpfs cannot be mounted here: {why}"));
                None
            }
        }
    }

    /// Writes ballast until the file system refuses more.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let ballast = self.path.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn samples(node: &str, seqs: std::ops::Range<u64>) -> Value {
    let at = local("2026-03-10T09:30:00");
    let list: Vec<Value> = seqs
        .map(|seq| json!({"node": node, "cores": 16, "at": at, "seq": seq}))
        .collect();
    json!({ "samples": list })
}

/// (status, Retry-After, body)
async fn push(app: &TestApp, token: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = app
        .client
        .post(app.url("/v1/samples"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

async fn get_text(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_503_stores_nothing_and_the_service_goes_on_once_there_is_room() {
    if support::skipped_on_postgres("the SQLite file on a small tmpfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("mnt"), "4m") else {
        return;
    };
    let app = TestApp::spawn(
        disk.path.join("core-meter.sqlite"),
        None,
        local("2026-03-10T10:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    let (s, _, v) = push(&app, &token, &samples("n1", 1..11)).await;
    assert_eq!(s, 200, "{v}");

    let ballast = disk.fill();
    let refused = samples("n1", 11..511);
    for _ in 0..3 {
        let (s, retry, v) = push(&app, &token, &refused).await;
        assert_eq!(s, 503, "a full disk is not an internal error: {v}");
        assert_eq!(retry.as_deref(), Some("60"));
        assert_eq!(v["error"]["code"], "disk_full", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("disk is full"), "{message}");
        assert!(v.get("results").is_none(), "nothing is acknowledged: {v}");
    }
    let (s, text) = get_text(&app, "/readyz").await;
    assert_eq!(s, 503, "not ready while the database cannot write: {text}");
    assert!(text.contains("disk is full"), "{text}");
    assert_eq!(
        get_text(&app, "/healthz").await.0,
        200,
        "alive all the same"
    );
    // Reads need no room: the audit trail answers, and shows only what was acknowledged.
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-03-10",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["samples"].as_array().unwrap().len(), 10);
    // An admin write is refused the same way.
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!((s, &v["error"]["code"]), (503, &json!("disk_full")), "{v}");

    std::fs::remove_file(ballast).unwrap();
    let (s, text) = get_text(&app, "/readyz").await;
    assert_eq!(s, 200, "ready again once there is room: {text}");
    let (s, _, v) = push(&app, &token, &refused).await;
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == "accepted"),
        "none of the refused samples had been stored"
    );
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-03-10",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let mut seqs: Vec<u64> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..511).collect::<Vec<u64>>(), "each sample once");
    let (s, _) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(s, 201);
    app.stop().await;
}
