//! Every input has a domain, checked at the edge: each finding of issue 18
//! about ids, names, money, instants, cores and free text, over HTTP; and
//! names stored before the domain existed stay reachable.

use crate::support;

use aggregator::store::Durability;
use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

const NOW: &str = "2026-11-24T12:00:00";

fn assert_refused(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_value", "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

/// The values of the review that a name must refuse.
fn hostile_names() -> Vec<String> {
    vec![
        "ac me".into(),
        "acme\u{3000}".into(),
        "ac\u{200B}me".into(),
        "\u{202E}emca".into(),
        "\u{0430}cme".into(), // Cyrillic а
        ".".into(),
        "..".into(),
        "=2+3".into(),
        "a?b#c".into(),
        "-acme".into(),
        "a".repeat(65),
    ]
}

#[tokio::test]
async fn an_account_id_outside_its_alphabet_is_refused_and_the_message_states_the_rule_checked() {
    let (dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    for id in hostile_names() {
        let (s, v) = app
            .admin(Method::POST, "/v1/admin/accounts", Some(json!({"id": id})))
            .await;
        assert_refused(s, &v, "id");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("ASCII letters, digits, '-', '_' and '.'"),
            "{message}"
        );
    }
    let path = dir.path().join("db.sqlite");
    let accounts = support::off_runtime(|| {
        support::open_store(&path, Durability::Durable)
            .unwrap()
            .accounts()
            .all()
            .unwrap()
    });
    assert!(accounts.is_empty(), "nothing was created");
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "Acme-2_eu.prod"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn a_cluster_name_outside_its_alphabet_is_refused_in_the_body_and_in_the_path() {
    let (_dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    app.account_with_cluster("acme", "prod").await;
    for name in hostile_names() {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/clusters",
                Some(json!({"name": name})),
            )
            .await;
        assert_refused(s, &v, "name");
    }
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/clusters/a%3Fb%23c/rotate-token",
            None,
        )
        .await;
    assert_refused(s, &v, "name");
    let (s, v) = app
        .admin(Method::GET, "/v1/admin/accounts/%3D2%2B3", None)
        .await;
    assert_refused(s, &v, "id");
}

#[tokio::test]
async fn a_huge_bad_value_is_quoted_in_at_most_64_characters() {
    let (_dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    let huge = "é".repeat(500_000);
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": huge})),
        )
        .await;
    assert_refused(s, &v, "id");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.chars().count() < 300,
        "{} characters",
        message.len()
    );
    assert!(message.contains(&"é".repeat(64)) && !message.contains(&"é".repeat(65)));
    // A wrong type is serde's message: its quoted value is cut too.
    let (s, v) = app
        .admin(
            Method::PUT,
            "/v1/admin/accounts/x/cap",
            Some(json!({"cores": "x".repeat(1_000_000)})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() < 500, "{v}");
}

#[tokio::test]
async fn money_is_credited_only_as_a_plain_decimal_and_a_reference_only_as_printable_text() {
    let (_dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    app.account_with_cluster("acme", "prod").await;
    let credit = |amount: &str, reference: &str| json!({"amount": amount, "reference": reference});
    for (i, amount) in ["1e3", "1_000", "+5", ".5", "5.", "-5", " 5", "5,00", "0x10"]
        .iter()
        .enumerate()
    {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/credits",
                Some(credit(amount, &format!("pay-{i}"))),
            )
            .await;
        assert_refused(s, &v, "amount");
    }
    for reference in [
        "pay\n1",
        "pay\u{0}1",
        "  ",
        " pay-1",
        "pay\u{202E}1",
        &"r".repeat(201),
    ] {
        let (s, v) = app
            .admin(
                Method::POST,
                "/v1/admin/accounts/acme/credits",
                Some(credit("5", reference)),
            )
            .await;
        assert_refused(s, &v, "reference");
    }
    let (s, v) = app
        .admin(Method::GET, "/v1/admin/accounts/acme/balance", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["balance"], "0.00", "nothing was credited: {v}");
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/credits",
            Some(credit("123.45", "wire 2026-11 no. 7")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn licences_caps_and_orders_take_cores_up_to_a_million_and_instants_within_the_calendar() {
    let (_dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    app.account_with_cluster("acme", "prod").await;
    let licence = |cores: Value, end: &str| json!({"cores": cores, "start": "2026-11-01T00:00:00+08:00", "end": end});
    for (body, field) in [
        (licence(json!(100), "9999-12-31T00:00:00Z"), "end"),
        (licence(json!(100), "+10000-01-01T00:00:00Z"), "end"),
        (licence(json!(100), "2199-12-28T00:00:00Z"), "end"),
        (
            licence(json!(4_294_967_295_u64), "2026-12-01T00:00:00Z"),
            "cores",
        ),
        (licence(json!(1_000_001), "2026-12-01T00:00:00Z"), "cores"),
        (licence(json!(0), "2026-12-01T00:00:00Z"), "cores"),
    ] {
        let (s, v) = app
            .admin(Method::POST, "/v1/admin/accounts/acme/licenses", Some(body))
            .await;
        assert_refused(s, &v, field);
    }
    for cores in [json!(4_294_967_295_u64), json!(1_000_001)] {
        let (s, v) = app
            .admin(
                Method::PUT,
                "/v1/admin/accounts/acme/cap",
                Some(json!({"cores": cores})),
            )
            .await;
        assert_refused(s, &v, "cores");
    }
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 1_000_001, "months": 1})),
        )
        .await;
    assert_refused(s, &v, "cores");
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/orders",
            Some(json!({"cores": 10, "months": 1, "start": "+262142-12-31"})),
        )
        .await;
    assert_refused(s, &v, "start");
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/licenses",
            Some(licence(json!(1_000_000), "2199-12-26T00:00:00Z")),
        )
        .await;
    assert_eq!(s, 201, "the edges are inside: {v}");
}

#[tokio::test]
async fn a_node_name_outside_its_domain_is_rejected_and_never_stored() {
    let (_dir, app) = TestApp::in_temp_dir(local(NOW)).await;
    let token = app.account_with_cluster("acme", "prod").await;
    let at = local("2026-11-24T11:00:00");
    let nodes = [
        "n".repeat(900_000 / 2),
        "node\u{7}".to_string(),
        "\u{200B}".to_string(),
        "node one".to_string(),
        "node-1".to_string(),
    ];
    let samples: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"node": n, "cores": 4, "at": at, "seq": i, "agent_version": "0.3.0"}))
        .collect();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"samples": samples})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let reasons: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["reason"]
                .as_str()
                .unwrap_or(r["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_node",
            "invalid_node",
            "invalid_node",
            "invalid_node",
            "accepted"
        ]
    );
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stored: Vec<&str> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["node-1"]);
}

#[tokio::test]
async fn names_stored_before_the_domain_are_reported_by_the_migration_and_stay_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    // A database of the version before: an account, a cluster and a node whose
    // names the domain now refuses, written as the old rules allowed.
    support::off_runtime(|| drop(support::open_store(&path, Durability::Durable).unwrap()));
    let reported_at = aggregator::store::NAMES_REPORTED_AT;
    // Made the day before (an account of 1970 would be stepped through every
    // day since by the lifecycle's first run).
    let created = local("2026-11-23T09:00:00").timestamp_millis();
    let (back_a_version, hash) = if support::postgres_server().is_some() {
        (
            format!("DROP TABLE audit_log; DELETE FROM core_meter_schema WHERE version >= {reported_at};"),
            "'\\x00'::bytea",
        )
    } else {
        (
            format!(
                "DROP TABLE audit_log; PRAGMA user_version = {};",
                reported_at - 1
            ),
            "X'00'",
        )
    };
    support::execute_behind_the_store(
        &path,
        &format!(
            "{}
             DROP TABLE names_outside_domain;
             INSERT INTO accounts (id, created_at_ms) VALUES ('old acme', {created});
             INSERT INTO clusters (account_ref, name, token_hash, created_at_ms)
               SELECT ref, 'east/1', {hash}, {created} FROM accounts WHERE id = 'old acme';
             INSERT INTO nodes (account_ref, cluster, name)
               SELECT ref, 'east/1', 'node 7' FROM accounts WHERE id = 'old acme';
             {back_a_version}",
            support::undo_migrations_9_to_15()
        ),
    );
    let app = TestApp::spawn(path.clone(), None, local(NOW)).await;
    let mut reported: Vec<String> = support::off_runtime(|| {
        support::open_store(&path, Durability::Durable)
            .unwrap()
            .reads()
            .names_outside_domain()
            .unwrap()
    })
    .into_iter()
    .map(|(kind, name)| format!("{kind}: {name}"))
    .collect();
    reported.sort();
    assert_eq!(
        reported,
        [
            "account id: old acme",
            "cluster name: east/1",
            "node name: node 7"
        ]
    );
    let (s, v) = app
        .admin(Method::GET, "/v1/admin/accounts/old%20acme", None)
        .await;
    assert_eq!(s, 200, "an old name stays reachable: {v}");
    assert_eq!(v["clusters"], json!(["east/1"]));
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/old%20acme/clusters/east%2F1/rotate-token",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The old node is still metered under its old name; a new one is not taken.
    let token = v["token"].as_str().unwrap().to_string();
    let at = local("2026-11-24T11:00:00");
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"samples": [
                {"node": "node 7", "cores": 8, "at": at, "seq": 1, "agent_version": "0.3.0"},
                {"node": "node 8", "cores": 8, "at": at, "seq": 1, "agent_version": "0.3.0"},
            ]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    assert_eq!(v["results"][1]["reason"], "invalid_node", "{v}");
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "new acme"})),
        )
        .await;
    assert_refused(s, &v, "id");
    app.stop().await;
}
