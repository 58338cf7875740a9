//! Backups of a running SQLite store and their restore, through the
//! binary's `backup` and `restore` commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aggregator::store::Durability;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{self, aggregator_command as command, local, TestApp};

const AGENTS: usize = 8;

/// Each node's samples acknowledged: seq, and when the answer came.
type Acknowledged = BTreeMap<String, Vec<(i64, std::time::Instant)>>;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every (node, seq) stored for `account` in the store at `file`.
fn stored(file: &Path, account: &str) -> BTreeSet<(String, i64)> {
    let mut store = support::open_store(file, Durability::Durable).unwrap();
    store
        .reads()
        .audit_samples(
            account,
            local("2026-11-01T00:00:00"),
            local("2026-12-31T00:00:00"),
        )
        .unwrap()
        .into_iter()
        .map(|s| (s.node, s.seq.unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_agents_push_and_billing_runs_restores_whole_and_the_service_starts_on_it(
) {
    if support::skipped_on_postgres("backups of a SQLite store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sqlite");
    let app = Arc::new(TestApp::spawn(live.clone(), None, local("2026-12-02T10:00:00")).await);
    let token = app.account_with_cluster("acme", "prod").await;
    // Yesterday's hours, billed by the run below while the agents push
    // today's; forty accounts more, so the run lasts.
    for n in 0..AGENTS {
        app.push_day(&token, &format!("node-{n}"), 4, "2026-12-01", 1)
            .await;
    }
    for a in 0..40 {
        let other = app
            .account_with_cluster(&format!("shop-{a:02}"), "prod")
            .await;
        app.push_day(&other, "node-0", 4, "2026-12-01", 1).await;
    }
    for cores in [600, 700] {
        let (s, _) = app
            .admin(
                Method::PUT,
                "/v1/admin/accounts/acme/cap",
                Some(json!({"cores": cores})),
            )
            .await;
        assert_eq!(s, 200);
    }

    // Eight agents, each pushing its node's samples one at a time and
    // noting the ones acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Acknowledged>> = Arc::default();
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let (app, token, stop, acknowledged) = (
            app.clone(),
            token.clone(),
            stop.clone(),
            acknowledged.clone(),
        );
        agents.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            let mut seq = 100;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let at = local("2026-12-02T00:00:00") + chrono::TimeDelta::seconds(seq);
                let body = json!({"samples": [{"node": node, "cores": 4, "at": at, "seq": seq}]});
                let (s, v) = app
                    .call(Method::POST, "/v1/samples", Some(&token), Some(body))
                    .await;
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["results"][0]["status"], "accepted", "{v}");
                acknowledged
                    .lock()
                    .unwrap()
                    .entry(node.clone())
                    .or_default()
                    .push((seq, std::time::Instant::now()));
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let running = {
        let app = app.clone();
        tokio::spawn(async move {
            let answer = app
                .admin(Method::POST, "/v1/admin/billing-runs", None)
                .await;
            (answer, std::time::Instant::now())
        })
    };

    let copy = dir.path().join("backup.sqlite");
    let began = std::time::Instant::now();
    let (ok, said) = {
        let (live, copy) = (live.clone(), copy.clone());
        tokio::task::spawn_blocking(move || {
            command(&["backup", "--to", path(&copy), "--database", path(&live)])
        })
        .await
        .unwrap()
    };
    assert!(ok, "{said}");
    assert!(
        said.contains("bytes") && said.contains("audit log"),
        "{said}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        a.await.unwrap();
    }
    let ((s, run), run_ended) = running.await.unwrap();
    assert_eq!(s, 200, "{run}");
    eprintln!(
        "backup: the billing run ended {:?} after the backup began",
        run_ended.saturating_duration_since(began)
    );
    let bills_now = app.bills().await;
    Arc::try_unwrap(app)
        .ok()
        .expect("the agents are done")
        .stop()
        .await;

    // Over a store that holds data: refused, and the store is unchanged.
    let (ok, said) = command(&["restore", "--from", path(&copy), "--database", path(&live)]);
    assert!(!ok && said.contains("is not empty"), "{said}");
    let before_restore = stored(&live, "acme");

    let restored = dir.path().join("restored.sqlite");
    let (ok, said) = command(&[
        "restore",
        "--from",
        path(&copy),
        "--database",
        path(&restored),
    ]);
    assert!(ok, "{said}");
    assert!(said.contains("the service may start on it"), "{said}");
    assert_eq!(stored(&live, "acme"), before_restore);

    // Every sample acknowledged before the backup began is in it; none
    // the copy holds was unacknowledged.
    let in_copy = stored(&restored, "acme");
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut before_backup = 0;
    for (node, acks) in &acknowledged {
        for (seq, when) in acks {
            if *when < began {
                before_backup += 1;
                assert!(
                    in_copy.contains(&(node.clone(), *seq)),
                    "{node} seq {seq} missing"
                );
            }
        }
    }
    let during: usize = acknowledged.values().map(Vec::len).sum();
    eprintln!(
        "backup: {before_backup} of {during} pushes acknowledged before it began, {} samples in the copy, {} lines then",
        in_copy.len(),
        bills_now.len()
    );
    assert!(before_backup > 0, "the agents pushed before the backup");
    assert!(
        during > before_backup,
        "the agents pushed while it was made"
    );
    assert!(
        in_copy.len() <= during + AGENTS * 24,
        "{} stored",
        in_copy.len()
    );

    // The service starts on the restored store: its bills are the run's
    // (it finished before the copy or was rolled back in it: the lines in
    // the copy are a prefix of the live ones), its audit chain holds.
    let (ok, said) = command(&["audit", "verify", "--database", path(&restored)]);
    assert!(ok, "{said}");
    let app = TestApp::spawn(restored.clone(), None, local("2026-12-02T10:00:00")).await;
    let (s, ready) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200, "{ready}");
    let bills_restored = app.bills().await;
    assert!(bills_restored.len() <= bills_now.len());
    assert_eq!(bills_restored[..], bills_now[..bills_restored.len()]);
    let (s, log) = app
        .admin(Method::GET, "/v1/admin/audit?account=acme", None)
        .await;
    assert_eq!(s, 200);
    let caps: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "PUT /v1/admin/accounts/{id}/cap")
        .collect();
    assert_eq!(caps.len(), 2, "{log}");
    app.stop().await;
}

#[tokio::test]
async fn a_backup_that_does_not_check_is_not_restored() {
    if support::skipped_on_postgres("backups of a SQLite store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sqlite");
    let app = TestApp::spawn(live.clone(), None, local("2026-12-02T10:00:00")).await;
    app.account_with_cluster("acme", "prod").await;
    app.stop().await;
    let copy = dir.path().join("backup.sqlite");
    let (ok, said) = command(&["backup", "--to", path(&copy), "--database", path(&live)]);
    assert!(ok, "{said}");
    // A backup is never written over a file.
    let (ok, said) = command(&["backup", "--to", path(&copy), "--database", path(&live)]);
    assert!(!ok && said.contains("exists"), "{said}");

    // An entry of its audit log altered: refused, nothing put in place.
    support::execute_behind_the_store(
        &copy,
        "UPDATE audit_log SET source = '10.6.6.6' WHERE seq = 1",
    );
    let target = dir.path().join("target.sqlite");
    let (ok, said) = command(&[
        "restore",
        "--from",
        path(&copy),
        "--database",
        path(&target),
    ]);
    assert!(!ok && said.contains("entry 1 was altered"), "{said}");
    assert!(!target.exists());

    // Not a database at all.
    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    let (ok, said) = command(&[
        "restore",
        "--from",
        path(&garbage),
        "--database",
        path(&target),
    ]);
    assert!(!ok, "{said}");
    assert!(!target.exists());
}

#[tokio::test]
async fn backups_into_a_directory_keep_the_newest_and_leave_other_files() {
    if support::skipped_on_postgres("backups of a SQLite store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sqlite");
    let app = TestApp::spawn(live.clone(), None, local("2026-12-02T10:00:00")).await;
    app.account_with_cluster("acme", "prod").await;
    app.stop().await;
    let shelf = dir.path().join("backups");
    std::fs::create_dir(&shelf).unwrap();
    // Backups of earlier days, and a file of someone else's.
    for day in ["20261128", "20261129", "20261130"] {
        std::fs::write(
            shelf.join(format!("core-meter-{day}T033000Z.sqlite")),
            b"old",
        )
        .unwrap();
    }
    std::fs::write(shelf.join("notes.txt"), b"mine").unwrap();
    let (ok, said) = command(&[
        "backup",
        "--into",
        path(&shelf),
        "--keep",
        "2",
        "--database",
        path(&live),
    ]);
    assert!(ok, "{said}");
    let mut left: Vec<String> = std::fs::read_dir(&shelf)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], "core-meter-20261130T033000Z.sqlite");
    assert!(
        left[1].starts_with("core-meter-2") && left[1] != left[0],
        "{left:?}"
    );
    assert_eq!(left[2], "notes.txt");
    assert!(
        said.contains("deleted") && said.contains("20261128"),
        "{said}"
    );
    let (ok, said) = command(&["backup", "--into", path(&shelf), "--database", path(&live)]);
    assert!(!ok && said.contains("--keep"), "{said}");
}
