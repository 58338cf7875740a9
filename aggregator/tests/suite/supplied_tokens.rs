//! Cluster tokens the operator generated and supplies, at registration and at rotation, over real HTTP.

use crate::support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

/// A well-formed cluster token, different for each `seed`.
fn supplied(seed: u8) -> String {
    format!("cmc_{}", format!("{seed:02x}").repeat(32))
}

async fn spawn() -> (tempfile::TempDir, TestApp) {
    TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await
}

async fn create_account(app: &TestApp, id: &str) {
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "id": id })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

async fn register(app: &TestApp, account: &str, body: Value) -> (u16, Value) {
    app.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{account}/clusters"),
        Some(body),
    )
    .await
}

async fn rotate(app: &TestApp, account: &str, cluster: &str, body: Option<Value>) -> (u16, Value) {
    app.admin(
        Method::POST,
        &format!("/v1/admin/accounts/{account}/clusters/{cluster}/rotate-token"),
        body,
    )
    .await
}

async fn clusters(app: &TestApp, account: &str) -> Value {
    let (s, v) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{account}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["clusters"].clone()
}

/// Pushes one sample with `token`; the HTTP status.
async fn push(app: &TestApp, token: &str, seq: u64) -> u16 {
    let sample = json!({"samples": [{"node": "n1", "cores": 8, "at": local("2026-11-24T11:05:00"), "seq": seq, "agent_version": "t"}]});
    let (s, v) = app
        .call(Method::POST, "/v1/samples", Some(token), Some(sample))
        .await;
    if s == 200 {
        assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    }
    s
}

/// The number of samples stored for an account on 2026-11-24.
async fn stored(app: &TestApp, account: &str) -> usize {
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/{account}/samples?day=2026-11-24"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["samples"].as_array().unwrap().len()
}

/// The error's status, field and message, checking the message never quotes `token`.
fn refusal(status: u16, v: &Value, token: &str) -> (u16, String, String) {
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if token.len() >= 8 {
        assert!(!message.contains(&token[4..]), "echoes the token: {v}");
    }
    (
        status,
        v["error"]["field"].as_str().unwrap_or_default().to_string(),
        message,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_token_registers_the_cluster_and_authenticates_its_pushes() {
    let (_dir, app) = spawn().await;
    create_account(&app, "acme").await;
    let token = supplied(0xa1);

    let (s, v) = register(&app, "acme", json!({"name": "prod", "token": token})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v, json!({"name": "prod", "token": token}));
    assert_eq!(clusters(&app, "acme").await, json!(["prod"]));
    assert_eq!(push(&app, &token, 1).await, 200);
    assert_eq!(stored(&app, "acme").await, 1);

    // Without a token the service still generates one.
    let (s, v) = register(&app, "acme", json!({"name": "staging"})).await;
    assert_eq!(s, 201, "{v}");
    let generated = v["token"].as_str().unwrap();
    assert!(generated.starts_with("cmc_") && generated.len() == 68 && generated != token);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_supplied_token_is_refused_naming_the_field_and_creates_no_cluster() {
    let (_dir, app) = spawn().await;
    create_account(&app, "acme").await;
    let good = supplied(0xb2);
    let malformed = [
        String::new(),
        good.replacen("cmc_", "cma_", 1),
        good.replacen("cmc_", "", 1),
        good.to_uppercase(),
        good.replacen("cmc_b2", "cmc_B2", 1),
        good[..good.len() - 1].to_string(),
        format!("{good}0"),
        format!(" {good}"),
        format!("{good}\n"),
        good.replacen("cmc_b2", "cmc_g2", 1),
    ];
    for token in &malformed {
        let (s, v) = register(&app, "acme", json!({"name": "prod", "token": token})).await;
        let (status, field, message) = refusal(s, &v, token);
        assert_eq!((status, field.as_str()), (422, "token"), "{token:?}: {v}");
        assert!(message.contains("64 lowercase hex"), "{v}");
    }
    // A token that is not a string is not a token at all.
    let (s, v) = register(&app, "acme", json!({"name": "prod", "token": 7})).await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("token")));
    assert_eq!(clusters(&app, "acme").await, json!([]));

    // The same name registers afterwards with a well-formed token.
    let (s, v) = register(&app, "acme", json!({"name": "prod", "token": good})).await;
    assert_eq!(s, 201, "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_token_already_in_use_is_refused_and_changes_nothing() {
    let (_dir, app) = spawn().await;
    create_account(&app, "acme").await;
    create_account(&app, "rival").await;
    let acme = supplied(0xc3);
    let rival = supplied(0xd4);
    assert_eq!(
        register(&app, "acme", json!({"name": "prod", "token": acme}))
            .await
            .0,
        201
    );
    assert_eq!(
        register(&app, "rival", json!({"name": "prod", "token": rival}))
            .await
            .0,
        201
    );

    // Registering with another cluster's token: same account or another.
    for (account, name) in [("acme", "staging"), ("rival", "staging")] {
        let (s, v) = register(&app, account, json!({"name": name, "token": acme})).await;
        let (status, field, message) = refusal(s, &v, &acme);
        assert_eq!((status, field.as_str()), (409, "token"), "{v}");
        assert!(message.contains("already in use"), "{v}");
        assert!(
            !message.contains("acme") && !message.contains("prod"),
            "does not say whose: {v}"
        );
    }
    // Rotating to another cluster's token, or to the cluster's own.
    for (account, token) in [("rival", &acme), ("acme", &acme)] {
        let (s, v) = rotate(&app, account, "prod", Some(json!({ "token": token }))).await;
        let (status, field, _) = refusal(s, &v, token);
        assert_eq!((status, field.as_str()), (409, "token"), "{v}");
    }

    // Nothing changed: no new clusters, and each token still speaks for its own account.
    assert_eq!(clusters(&app, "acme").await, json!(["prod"]));
    assert_eq!(clusters(&app, "rival").await, json!(["prod"]));
    assert_eq!(push(&app, &acme, 1).await, 200);
    assert_eq!(push(&app, &rival, 1).await, 200);
    assert_eq!(stored(&app, "acme").await, 1);
    assert_eq!(stored(&app, "rival").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_to_a_supplied_token_stops_the_old_one_and_starts_the_supplied_one() {
    let (_dir, app) = spawn().await;
    let old = app.account_with_cluster("acme", "prod").await;
    let new = supplied(0xe5);

    // A malformed token is refused and the old one keeps working.
    let (s, v) = rotate(&app, "acme", "prod", Some(json!({"token": "cmc_short"}))).await;
    let (status, field, _) = refusal(s, &v, "cmc_short");
    assert_eq!((status, field.as_str()), (422, "token"), "{v}");
    let (s, v) = rotate(&app, "acme", "prod", Some(json!({"tokn": new}))).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("tokn")),
        "{v}"
    );
    assert_eq!(push(&app, &old, 1).await, 200);

    let (s, v) = rotate(&app, "acme", "prod", Some(json!({ "token": new }))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"name": "prod", "token": new}));
    assert_eq!(push(&app, &old, 2).await, 401);
    assert_eq!(push(&app, &new, 2).await, 200);
    assert_eq!(stored(&app, "acme").await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_with_an_empty_body_still_generates_a_token() {
    let (_dir, app) = spawn().await;
    let mut current = app.account_with_cluster("acme", "prod").await;
    // No body at all, an empty JSON object, and a null token all ask for a generated one.
    for (seq, body) in [
        (1, None),
        (2, Some(json!({}))),
        (3, Some(json!({"token": null}))),
    ] {
        let (s, v) = rotate(&app, "acme", "prod", body).await;
        assert_eq!(s, 200, "{v}");
        let generated = v["token"].as_str().unwrap().to_string();
        assert!(
            generated.starts_with("cmc_") && generated.len() == 68,
            "{generated}"
        );
        assert_ne!(generated, current);
        assert_eq!(push(&app, &current, seq).await, 401);
        assert_eq!(push(&app, &generated, seq).await, 200);
        current = generated;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_away_cannot_be_given_to_another_accounts_cluster_nor_back_to_its_own() {
    let (_dir, app) = spawn().await;
    let generated = app.account_with_cluster("acme", "prod").await;
    create_account(&app, "rival").await;
    let supplied_first = supplied(0xf6);
    let (s, v) = rotate(&app, "acme", "prod", Some(json!({"token": supplied_first}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = rotate(&app, "acme", "prod", None).await;
    assert_eq!(s, 200, "{v}");
    let current = v["token"].as_str().unwrap().to_string();

    for old in [&generated, &supplied_first] {
        let attempts = [
            register(&app, "rival", json!({"name": "prod", "token": old})).await,
            register(&app, "acme", json!({"name": "staging", "token": old})).await,
            rotate(&app, "acme", "prod", Some(json!({"token": old}))).await,
        ];
        for (s, v) in attempts {
            let (status, field, message) = refusal(s, &v, old);
            assert_eq!((status, field.as_str()), (409, "token"), "{v}");
            assert_eq!(v["error"]["code"], "token_in_use", "{v}");
            assert!(
                !message.contains("acme") && !message.contains("prod"),
                "does not say whose: {v}"
            );
        }
        // The old token authenticates nothing, for either account.
        assert_eq!(push(&app, old, 1).await, 401);
    }
    assert_eq!(clusters(&app, "acme").await, json!(["prod"]));
    assert_eq!(clusters(&app, "rival").await, json!([]));
    assert_eq!(push(&app, &current, 1).await, 200);
    assert_eq!(stored(&app, "acme").await, 1);
    app.stop().await;
}
