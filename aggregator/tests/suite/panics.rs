//! No request can take the service down: a panic in a handler, or while a
//! store connection is held, answers 500 in the API's format and the next
//! request (above all an agent's push) works. The panics are made on purpose
//! through the service's fault hooks.

use crate::support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp};

const DAY: &str = "2026-11-24";

/// An account with a cluster and a reader token; returns (cluster token, reader token).
async fn acme(app: &TestApp) -> (String, String) {
    let cluster = app.account_with_cluster("acme", "prod").await;
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/reader-tokens",
            Some(json!({"name": "finance"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (cluster, v["token"].as_str().unwrap().to_string())
}

/// Pushes one sample of `node` at seq `seq`; returns the status and its result.
async fn push(app: &TestApp, token: &str, node: &str, seq: u64) -> (u16, Value) {
    let sample = json!({"node": node, "cores": 8, "at": local(&format!("{DAY}T11:00:00")),
                        "seq": seq, "agent_version": "0.2.0"});
    app.call(
        Method::POST,
        "/v1/samples",
        Some(token),
        Some(json!({"samples": [sample]})),
    )
    .await
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.send(Method::GET, path, None, None)
        .await
        .status()
        .as_u16()
}

/// Ingest accepts a new sample, and the probes are green.
async fn assert_the_service_goes_on(app: &TestApp, token: &str, seq: u64) {
    let (s, v) = push(app, token, "node-1", seq).await;
    assert_eq!(s, 200, "ingest after the panic: {v}");
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    assert_eq!(status_of(app, "/readyz").await, 200, "readiness");
    assert_eq!(status_of(app, "/healthz").await, 200, "liveness");
}

fn assert_internal_error(status: u16, body: &Value) {
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    assert_eq!(
        body["error"]["message"], "internal error; see the service log",
        "{body}"
    );
}

async fn panics_caught(app: &TestApp, place: &str) -> u64 {
    let text = app
        .send(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    let series = format!("core_meter_panics_caught_total{{place=\"{place}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn a_report_that_panics_holding_the_reader_answers_500_and_ingest_still_answers_200() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let (cluster, reader) = acme(&app).await;
    let report = format!("/v1/accounts/acme/reports/daily?day={DAY}");

    app.faults.panic_in_next_use_of("reader");
    let (s, v) = app.call(Method::GET, &report, Some(&reader), None).await;
    assert_internal_error(s, &v);

    assert_the_service_goes_on(&app, &cluster, 1).await;
    let (s, v) = app.call(Method::GET, &report, Some(&reader), None).await;
    assert_eq!(s, 200, "the same report on the same connection: {v}");
    assert_eq!(panics_caught(&app, "reader").await, 1);
}

#[tokio::test]
async fn a_handler_that_panics_answers_500_in_the_api_format_and_the_next_request_works() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let (cluster, _) = acme(&app).await;

    app.faults.panic_in_next_request();
    let response = app
        .send(
            Method::GET,
            "/v1/admin/accounts/acme",
            Some(support::ADMIN),
            None,
        )
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the panic's 500 is JSON"
    );
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_internal_error(status, &body);

    assert_the_service_goes_on(&app, &cluster, 1).await;
    assert_eq!(panics_caught(&app, "request").await, 1);
}

#[tokio::test]
async fn a_panic_holding_the_token_connection_fails_one_push_and_the_next_is_stored() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let (cluster, _) = acme(&app).await;

    app.faults.panic_in_next_use_of("tokens");
    let (s, v) = push(&app, &cluster, "node-1", 1).await;
    assert_internal_error(s, &v);
    // The agent resends what was not acknowledged: it is stored once.
    assert_the_service_goes_on(&app, &cluster, 1).await;
    assert_eq!(panics_caught(&app, "tokens").await, 1);
}

#[tokio::test]
async fn a_panic_holding_the_writer_during_ingest_stores_nothing_of_that_push_and_the_resend_is_accepted(
) {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let (cluster, _) = acme(&app).await;

    // The billing job shares the writer and may take the panic first (and
    // go on: that is contained too); each push that gets past the hook is
    // stored, and the one that meets it stores nothing.
    let mut stored = 0;
    let mut failed = None;
    for seq in 1..=20 {
        app.faults.panic_in_next_use_of("writer");
        let (s, v) = push(&app, &cluster, "node-1", seq).await;
        if s == 500 {
            assert_internal_error(s, &v);
            failed = Some(seq);
            break;
        }
        assert_eq!(v["results"][0]["status"], "accepted", "{v}");
        stored += 1;
    }
    let failed = failed.expect("a push met the panic within 20 tries");
    // The agent resends what was not acknowledged: it is stored once.
    assert_the_service_goes_on(&app, &cluster, failed).await;
    let (s, v) = app
        .admin(
            Method::GET,
            &format!("/v1/admin/accounts/acme/samples?day={DAY}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["samples"].as_array().unwrap().len(), stored + 1, "{v}");
    assert!(panics_caught(&app, "writer").await >= 1);
}

#[tokio::test]
async fn a_day_far_outside_the_calendar_is_a_422_on_every_route_and_takes_nothing_down() {
    let (_dir, app) = TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await;
    let (cluster, reader) = acme(&app).await;
    let mut seq = 0;
    for day in [
        "%2B262142-12-31",
        "-262143-01-01",
        "9999-12-31",
        "1999-12-31",
    ] {
        for (path, token) in [
            (
                format!("/v1/accounts/acme/reports/daily?day={day}"),
                &reader,
            ),
            (format!("/v1/accounts/acme/export?day={day}"), &reader),
            (format!("/v1/accounts/acme/bills?day={day}"), &reader),
            (
                format!("/v1/reports/daily?account=acme&day={day}"),
                &support::ADMIN.to_string(),
            ),
            (
                format!("/v1/admin/accounts/acme/samples?day={day}"),
                &support::ADMIN.to_string(),
            ),
        ] {
            let (s, v) = app.call(Method::GET, &path, Some(token), None).await;
            assert_eq!(s, 422, "{path}: {v}");
            assert_eq!(v["error"]["field"], "day", "{path}: {v}");
            seq += 1;
            assert_the_service_goes_on(&app, &cluster, seq).await;
        }
    }
}
