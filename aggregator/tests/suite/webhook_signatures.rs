//! Signed webhooks over real sockets: the service bills on a manual clock and posts to a receiver that verifies every `Core-Meter-Signature` with `signature::verify`; the test then replays and tampers with what it captured.

use crate::support;

use std::time::Duration;

use aggregator::config::Secret;
use aggregator::security::signature::{self};
use chrono::TimeDelta;
use shared::clock::Clock;
use support::{eventually_async, local, Received, TestApp, Webhook};

/// Three accounts with a day of samples each, billed at 02:00; returns the
/// service once every line was taken.
async fn billed(webhook: &Webhook, dir: &std::path::Path) -> TestApp {
    let app = billing(webhook, dir).await;
    eventually_async(Duration::from_secs(20), "three lines taken", || async {
        // Retries are due on the service's clock: let it run.
        app.clock.advance(TimeDelta::milliseconds(500));
        webhook.taken().len() >= 3
    })
    .await;
    app
}

/// Three accounts with a day of samples each, and the clock just past 02:00.
async fn billing(webhook: &Webhook, dir: &std::path::Path) -> TestApp {
    let app = TestApp::spawn_for(
        dir.join("core-meter.sqlite"),
        webhook,
        local("2026-11-24T23:30:00"),
    )
    .await;
    for (account, cores) in [("acme", 30), ("globex", 12), ("initech", 4)] {
        let token = app.account_with_cluster(account, "prod").await;
        let pushed = app.push_day(&token, "n1", cores, "2026-11-24", 1).await;
        assert!(pushed.iter().all(|s| s == "accepted"), "{pushed:?}");
    }
    app.clock.set(local("2026-11-25T02:00:01"));
    app
}

fn t_of(request: &Received) -> i64 {
    let header = request.signature.as_deref().expect("signed");
    let t = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .expect("a timestamp");
    t.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_of_a_billing_run_carries_a_valid_signature_and_a_retry_is_signed_anew() {
    let dir = tempfile::tempdir().unwrap();
    // The first request fails: its line is sent again, later on the clock.
    let webhook = Webhook::start(1).await;
    let app = billing(&webhook, dir.path()).await;
    // The clock stands still until the first pass is over; then the retry
    // comes due on it, 5 s later.
    eventually_async(Duration::from_secs(20), "the first pass", || async {
        webhook.received().len() >= 3
    })
    .await;
    app.clock.advance(TimeDelta::seconds(5));
    eventually_async(Duration::from_secs(20), "three lines taken", || async {
        webhook.taken().len() >= 3
    })
    .await;
    app.settled().await;

    let received = webhook.received();
    assert_eq!(received.len(), 4, "three lines and one retry");
    assert_eq!(webhook.verified(), 4, "every request verified");
    assert_eq!(webhook.rejections(), Vec::<String>::new());
    let mut taken = webhook.taken();
    taken.sort();
    assert_eq!(
        taken,
        [
            "acme/2026-11-24/1",
            "globex/2026-11-24/1",
            "initech/2026-11-24/1"
        ]
    );
    // The failed line's two attempts: same key and body, a later timestamp,
    // so another signature.
    let failed = &received[0];
    let retry = received[1..]
        .iter()
        .find(|r| r.key == failed.key)
        .expect("the failed line is sent again");
    assert_eq!(retry.body, failed.body);
    assert!(
        t_of(retry) >= t_of(failed) + 5,
        "{:?} then {:?}",
        failed.signature,
        retry.signature
    );
    assert_ne!(retry.signature, failed.signature);
    // Each is signed at the service clock's time of its sending.
    let billed_at = local("2026-11-25T02:00:01").timestamp();
    let now = app.clock.now().timestamp();
    assert!(received
        .iter()
        .all(|r| (billed_at..=now).contains(&t_of(r))));
    eprintln!(
        "billing run: {} requests, {} verified, {} taken",
        received.len(),
        webhook.verified(),
        webhook.taken().len()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_delivery_is_refused_within_the_window_as_seen_and_after_it_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(0).await;
    let app = billed(&webhook, dir.path()).await;
    let captured = webhook.received()[0].clone();

    // Within the window the signature is valid, but it was taken before.
    assert_eq!(webhook.resend(&captured).await, 409);
    let refused = webhook.rejections();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("replayed"), "{refused:?}");

    // After the window (300 s) the timestamp alone refuses it.
    app.clock.set(
        chrono::DateTime::from_timestamp(t_of(&captured), 0).unwrap() + TimeDelta::seconds(301),
    );
    assert_eq!(webhook.resend(&captured).await, 401);
    let refused = webhook.rejections();
    assert!(
        refused[1].contains("more than the 300 s allowed"),
        "{refused:?}"
    );
    assert_eq!(webhook.taken().len(), 3, "no replay was taken");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_body_a_wrong_secret_or_no_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(0).await;
    let app = billed(&webhook, dir.path()).await;
    let captured = webhook.received()[0].clone();
    let text = String::from_utf8(captured.body.clone()).unwrap();
    let amount = text
        .split("\"amount\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();

    let tampered = Received {
        body: text
            .replace(&format!("\"amount\":\"{amount}\""), "\"amount\":\"0.01\"")
            .into_bytes(),
        ..captured.clone()
    };
    assert_ne!(tampered.body, captured.body);
    assert_eq!(webhook.resend(&tampered).await, 401);

    let wrong = Secret::new("not-the-webhook-secret-but-32-bytes-long");
    let forged = Received {
        signature: Some(signature::sign(&wrong, app.clock.now(), &captured.body)),
        ..captured.clone()
    };
    assert_eq!(webhook.resend(&forged).await, 401);

    let unsigned = Received {
        signature: None,
        ..captured
    };
    assert_eq!(webhook.resend(&unsigned).await, 401);

    let refused = webhook.rejections();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[0].contains("does not match"), "{refused:?}");
    assert!(refused[1].contains("does not match"), "{refused:?}");
    assert!(
        refused[2].contains("no Core-Meter-Signature header"),
        "{refused:?}"
    );
    assert_eq!(webhook.taken().len(), 3, "nothing forged was taken");
    app.stop().await;
}
