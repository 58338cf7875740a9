//! A resent (node, seq): a duplicate when its cores and `at` are the stored
//! sample's, else `rejected` as `conflicting_resend` with the stored sample
//! unchanged; over real HTTP, and in the store for any order of resends.

use crate::support;

use std::sync::atomic::{AtomicU32, Ordering};

use aggregator::store::{Durability, Incoming, Outcome};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use shared::sample::{AgeLimits, Rejection};
use support::{local, open_store, TestApp};

async fn spawn() -> (tempfile::TempDir, TestApp, String) {
    let (dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let token = app.account_with_cluster("acme", "prod").await;
    (dir, app, token)
}

/// A sample of node-1 as an agent of `version` sends it.
fn sample(seq: u64, cores: u32, at: &str, version: &str) -> Value {
    json!({"node": "node-1", "cores": cores, "at": at, "seq": seq, "agent_version": version})
}

/// Pushes `samples`; each result as (status, reason).
async fn push(app: &TestApp, token: &str, samples: Vec<Value>) -> Vec<(String, Option<String>)> {
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(token),
            Some(json!({ "samples": samples })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_string(),
                r["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn accepted() -> (String, Option<String>) {
    ("accepted".into(), None)
}

fn duplicate() -> (String, Option<String>) {
    ("duplicate".into(), None)
}

fn conflicting() -> (String, Option<String>) {
    ("rejected".into(), Some("conflicting_resend".into()))
}

/// The stored samples of 2026-11-24 as (seq, cores, at).
async fn stored(app: &TestApp) -> Vec<(u64, u64, String)> {
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["seq"].as_u64().unwrap(),
                s["cores"].as_u64().unwrap(),
                s["at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const AT: &str = "2026-11-24T11:05:00+08:00";
const AT_STORED: &str = "2026-11-24T03:05:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_resend_is_a_duplicate() {
    let (_dir, app, token) = spawn().await;
    assert_eq!(
        push(&app, &token, vec![sample(1, 8, AT, "0.2.0")]).await,
        [accepted()]
    );
    // The same instant written another way is the same instant.
    let resend = vec![
        sample(1, 8, AT, "0.2.0"),
        sample(1, 8, "2026-11-24T03:05:00.000Z", "0.2.0"),
    ];
    assert_eq!(push(&app, &token, resend).await, [duplicate(), duplicate()]);
    assert_eq!(stored(&app).await, [(1, 8, AT_STORED.to_string())]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_other_cores_is_a_conflicting_resend_and_the_stored_sample_stays() {
    let (_dir, app, token) = spawn().await;
    push(&app, &token, vec![sample(1, 8, AT, "0.2.0")]).await;
    assert_eq!(
        push(&app, &token, vec![sample(1, 16, AT, "0.2.0")]).await,
        [conflicting()]
    );
    assert_eq!(stored(&app).await, [(1, 8, AT_STORED.to_string())]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_at_another_instant_is_a_conflicting_resend() {
    let (_dir, app, token) = spawn().await;
    push(&app, &token, vec![sample(1, 8, AT, "0.2.0")]).await;
    // One millisecond apart, and one hour apart.
    let resend = vec![
        sample(1, 8, "2026-11-24T11:05:00.001+08:00", "0.2.0"),
        sample(1, 8, "2026-11-24T10:05:00+08:00", "0.2.0"),
    ];
    assert_eq!(
        push(&app, &token, resend).await,
        [conflicting(), conflicting()]
    );
    assert_eq!(stored(&app).await, [(1, 8, AT_STORED.to_string())]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_one_request_the_first_of_a_node_and_seq_is_stored_and_the_rest_compared_with_it() {
    let (_dir, app, token) = spawn().await;
    let batch = vec![
        sample(1, 8, AT, "0.2.0"),
        sample(1, 8, AT, "0.2.0"),
        sample(1, 12, AT, "0.2.0"),
        sample(2, 8, AT, "0.2.0"),
    ];
    assert_eq!(
        push(&app, &token, batch).await,
        [accepted(), duplicate(), conflicting(), accepted()]
    );
    assert_eq!(
        stored(&app).await,
        [(1, 8, AT_STORED.to_string()), (2, 8, AT_STORED.to_string())]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_and_the_report_count_conflicting_resends() {
    let (_dir, app, token) = spawn().await;
    push(&app, &token, vec![sample(1, 8, AT, "0.2.0")]).await;
    push(
        &app,
        &token,
        vec![sample(1, 9, AT, "0.2.0"), sample(1, 10, AT, "0.2.0")],
    )
    .await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            == "core_meter_ingest_samples_total{result=\"rejected\",reason=\"conflicting_resend\"} 2"),
        "{metrics}"
    );
    // Recorded like other rejections of a known account: the report's
    // completeness section counts them by reason.
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/reports/daily?account=acme&day=2026-11-24&format=json",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v.to_string().contains("conflicting_resend"),
        "the report names the reason: {v}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_before_0_2_gets_a_conflicting_resend_rejected_without_the_reason() {
    let (_dir, app, token) = spawn().await;
    push(&app, &token, vec![sample(1, 8, AT, "0.1.0")]).await;
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"samples": [sample(1, 9, AT, "0.1.0"), sample(1, 9, AT, "0.2.0")]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Agent 0.1.0 cannot decode `conflicting_resend` and would resend for
    // ever: it gets the rejection without a reason, which it drops.
    assert_eq!(v["results"][0], json!({"index": 0, "status": "rejected"}));
    assert_eq!(
        v["results"][1],
        json!({"index": 1, "status": "rejected", "reason": "conflicting_resend"})
    );
    app.stop().await;
}

/// One push of the property below: seq, cores, `at` in milliseconds past a
/// base (02:00 UTC: three hours before it is another UTC day, which
/// PostgreSQL files in another row).
type Push = (i64, u32, i64);

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// However resends are ordered and split into batches, the first sample
    /// stored under a (node, seq) stays, a true resend is a duplicate and any
    /// other is a conflicting resend.
    #[test]
    fn the_first_sample_of_a_node_and_seq_stands_whatever_follows(
        batches in prop::collection::vec(
            prop::collection::vec((0i64..6, prop::sample::select(vec![8u32, 9]), prop::sample::select(vec![0i64, 1, 3_600_000, -10_800_000])), 1..8),
            1..5,
        )
    ) {
        static NODE: AtomicU32 = AtomicU32::new(0);
        thread_local! {
            static STORE: std::cell::RefCell<Option<(tempfile::TempDir, aggregator::store::Store)>> =
                const { std::cell::RefCell::new(None) };
        }
        let node = format!("node-{}", NODE.fetch_add(1, Ordering::Relaxed));
        let base = local("2026-11-24T10:00:00");
        let received_at = local("2026-11-24T12:00:00");
        STORE.with(|cell| -> Result<(), TestCaseError> {
            let mut cell = cell.borrow_mut();
            let (_, store) = cell.get_or_insert_with(|| {
                let dir = tempfile::tempdir().unwrap();
                let mut store = open_store(&dir.path().join("db.sqlite"), Durability::Scratch).unwrap();
                store.accounts().create_account("acme", base).unwrap();
                (dir, store)
            });
            let mut first: std::collections::BTreeMap<i64, (u32, i64)> = Default::default();
            for batch in &batches {
                let incoming: Vec<Incoming<'_>> = batch
                    .iter()
                    .map(|&(seq, cores, ms): &Push| Incoming {
                        account: "acme",
                        cluster: "prod",
                        node: &node,
                        cores: Some(cores),
                        at: Some(base + TimeDelta::milliseconds(ms)),
                        seq: Some(seq),
                        agent_version: Some("0.2.0"),
                        received_at,
                    })
                    .collect();
                let outcomes = store.ingest().insert(&incoming, &AgeLimits::default()).unwrap();
                for (&(seq, cores, ms), outcome) in batch.iter().zip(&outcomes) {
                    let expected = match first.get(&seq) {
                        None => {
                            first.insert(seq, (cores, ms));
                            Outcome::Accepted
                        }
                        Some(&was) if was == (cores, ms) => Outcome::Duplicate,
                        Some(_) => Outcome::Rejected(Rejection::ConflictingResend),
                    };
                    prop_assert_eq!(*outcome, expected, "seq {} cores {} at +{} ms", seq, cores, ms);
                }
            }
            let stored: std::collections::BTreeMap<i64, (u32, i64)> = store
                .reads().audit_samples("acme", base - TimeDelta::days(1), base + TimeDelta::days(1))
                .unwrap()
                .into_iter()
                .filter(|s| s.node == node)
                .map(|s| (s.seq.unwrap(), (s.cores, at_ms(s.at) - at_ms(base))))
                .collect();
            prop_assert_eq!(stored, first);
            Ok(())
        })?;
    }
}

fn at_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}
