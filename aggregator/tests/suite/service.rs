//! The service over real HTTP: a temp SQLite file, a manual clock, tokens, ingest, 02:00 billing, delivery.

use crate::support;

use std::time::Duration;

use chrono::TimeDelta;
use reqwest::Method;
use serde_json::json;
use support::{eventually_async, local, TestApp, Webhook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_day_reaches_the_webhook_exactly_once_despite_failures_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let webhook = Webhook::start(3).await;
    let app = TestApp::spawn_for(db.clone(), &webhook, local("2026-11-24T23:30:00")).await;
    let acme = app.account_with_cluster("acme", "prod").await;
    let other = app.account_with_cluster("other", "prod").await;
    // 24 hours of 30 cores for acme (no licence): S = 720, 30 cores, 7.50; 4 cores for other: 1.00.
    assert!(app
        .push_day(&acme, "n1", 30, "2026-11-24", 1)
        .await
        .iter()
        .all(|s| s == "accepted"));
    assert!(app
        .push_day(&other, "n1", 4, "2026-11-24", 1)
        .await
        .iter()
        .all(|s| s == "accepted"));
    assert!(app.bills().await.is_empty(), "nothing is due before 02:00");

    // The clock passes 02:00: the job bills both accounts.
    app.clock.set(local("2026-11-25T02:00:01"));
    eventually_async(Duration::from_secs(10), "two daily lines", || async {
        app.bills().await.len() == 2
    })
    .await;
    let bills = app.bills().await;
    let acme_line = bills.iter().find(|b| b["account"] == "acme").unwrap();
    assert_eq!(acme_line["amount"], "7.50");
    assert_eq!(acme_line["kind"], "daily");
    // The webhook fails its first three calls: wait for at least one failure, then restart.
    eventually_async(Duration::from_secs(10), "a failed delivery", || async {
        webhook.attempts() >= 1
    })
    .await;
    app.stop().await;

    let app = TestApp::spawn_for(db, &webhook, local("2026-11-25T02:10:00")).await;
    // Retries are scheduled on the service's clock: let it run.
    eventually_async(Duration::from_secs(20), "both lines delivered", || async {
        app.clock.advance(TimeDelta::seconds(1));
        webhook.taken().len() >= 2
    })
    .await;
    app.settled().await;
    let mut taken = webhook.taken();
    taken.sort();
    assert_eq!(
        taken,
        vec!["acme/2026-11-24/1", "other/2026-11-24/1"],
        "each line taken exactly once"
    );
    assert!(
        webhook.attempts() >= 5,
        "three failures, then two successes"
    );
    let (_, outbox) = app.admin(Method::GET, "/v1/admin/outbox", None).await;
    assert_eq!(outbox["status"]["pending"], 0);
    assert_eq!(outbox["status"]["delivered"], 2);
    assert_eq!(
        app.bills().await.len(),
        2,
        "the restart billed nothing twice"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_missed_0200s_bills_every_missed_day() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let app = TestApp::spawn(db.clone(), None, local("2026-11-22T00:00:00")).await;
    let token = app.account_with_cluster("acme", "prod").await;
    app.clock.set(local("2026-11-24T23:59:00"));
    for (i, day) in ["2026-11-22", "2026-11-23", "2026-11-24"]
        .iter()
        .enumerate()
    {
        app.push_day(&token, "n1", 8, day, 1 + 24 * i as u64).await;
    }
    app.stop().await;
    // Down over three 02:00s; the start-up run catches up.
    let app = TestApp::spawn(db, None, local("2026-11-25T09:30:00")).await;
    eventually_async(Duration::from_secs(10), "three daily lines", || async {
        app.bills().await.len() == 3
    })
    .await;
    let days: Vec<String> = app
        .bills()
        .await
        .iter()
        .map(|b| b["day"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(days, vec!["2026-11-22", "2026-11-23", "2026-11-24"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_do_what() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T12:00:00"),
    )
    .await;
    let acme = app.account_with_cluster("acme", "prod").await;
    let rival = app.account_with_cluster("rival", "prod").await;
    let sample = json!({"samples": [{"node": "n1", "cores": 8, "at": local("2026-11-24T11:05:00"), "seq": 1, "agent_version": "t"}]});

    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some("cmc_wrong"),
            Some(sample.clone()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = app
        .call(Method::POST, "/v1/samples", None, Some(sample.clone()))
        .await;
    assert_eq!(s, 401);

    // A cluster token cannot use the admin API: a valid token without the
    // right is 403; a token that is none of the service's is 401.
    let (s, v) = app
        .call(Method::GET, "/v1/admin/accounts/acme", Some(&acme), None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = app
        .call(Method::POST, "/v1/admin/billing-runs", Some(&acme), None)
        .await;
    assert_eq!(s, 403);
    let (s, v) = app
        .call(
            Method::GET,
            "/v1/admin/accounts/acme",
            Some("cmc_wrong"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // The body cannot name another account: rival's token writes rival's samples only.
    let mut claims_acme = sample.clone();
    claims_acme["account"] = json!("acme");
    claims_acme["samples"][0]["account"] = json!("acme");
    let (s, _) = app
        .call(Method::POST, "/v1/samples", Some(&rival), Some(claims_acme))
        .await;
    assert_eq!(s, 200);
    let (_, acme_audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    let (_, rival_audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/rival/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(acme_audit["samples"].as_array().unwrap().len(), 0);
    assert_eq!(rival_audit["samples"].as_array().unwrap().len(), 1);

    // A rotated token: the old one stops working at once, the new one works.
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/clusters/prod/rotate-token",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let rotated = v["token"].as_str().unwrap().to_string();
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&acme),
            Some(sample.clone()),
        )
        .await;
    assert_eq!(s, 401);
    let (s, v) = app
        .call(Method::POST, "/v1/samples", Some(&rotated), Some(sample))
        .await;
    assert_eq!(
        (s, v["results"][0]["status"].as_str()),
        (200, Some("accepted"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;

    let (s, v) = app
        .admin(
            Method::PUT,
            "/v1/admin/accounts/acme/cap",
            Some(json!({"cores": 499})),
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("cores")));
    assert!(v["error"]["message"].as_str().unwrap().contains("500"));
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("exists")));
    let (s, _) = app
        .admin(Method::GET, "/v1/admin/accounts/nobody", None)
        .await;
    assert_eq!(s, 404);
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/licenses",
            Some(json!({"cores": 10, "start": "soon", "end": "2026-12-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("start")));

    // 1,001 samples: 413, and nothing of it is stored.
    let many: Vec<_> = (0..1001)
        .map(|i| json!({"node": "n", "cores": 1, "at": local("2026-11-24T11:00:00"), "seq": i, "agent_version": "t"}))
        .collect();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"samples": many})),
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (413, Some("samples")));
    // Over 1 MiB: 413 from the declared length, before the body is read.
    // Sent by hand: a client that writes the body may find the connection
    // closed under it once the answer is given (a broken pipe, not an answer).
    let address = app.addr.to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/samples HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"samples\": [",
        2 << 20
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut socket, &mut answer),
    )
    .await
    .expect("an answer before the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/samples",
            Some(&token),
            Some(json!({"nope": 1})),
        )
        .await;
    assert_eq!(s, 400);
    let (_, audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(audit["samples"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_every_route_answers() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T12:00:00"),
    )
    .await;
    let (s, doc) = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    for (method, path, _, _) in aggregator::http::ROUTES {
        assert!(
            doc["paths"][*path][*method].is_object(),
            "{method} {path} missing from the document"
        );
        // The router knows the route: never 404 "no such route" or 405.
        let concrete = path.replace("{id}", "acme").replace("{name}", "prod");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = app.admin(m, &concrete, None).await;
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !(status == 404 && body["error"]["message"] == "no such route"),
            "{method} {path} is not routed"
        );
    }
    let (s, _) = app.call(Method::GET, "/v1/nothing", None, None).await;
    assert_eq!(s, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_share_commits_and_all_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T12:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    let mut pushes = Vec::new();
    for n in 0..64 {
        let (client, url, token) = (app.client.clone(), app.url("/v1/samples"), token.clone());
        pushes.push(tokio::spawn(async move {
            let body = json!({"samples": [{"node": format!("n{n}"), "cores": 4, "at": local("2026-11-24T11:59:00"), "seq": 1, "agent_version": "t"}]});
            client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    for p in pushes {
        assert_eq!(p.await.unwrap(), 200);
    }
    let (_, audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(audit["samples"].as_array().unwrap().len(), 64);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let commits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("core_meter_ingest_commits_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        commits < 64.0,
        "64 requests took {commits} commits: none were shared"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_licence_keeps_counting_through_its_five_day_grace() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T23:00:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    // Ends on the 20th; counts until the 25th.
    let (s, v) = app
        .admin(
            Method::POST,
            "/v1/admin/accounts/acme/licenses",
            Some(json!({"cores": 20, "start": "2026-11-01T00:00:00+08:00", "end": "2026-11-20T00:00:00+08:00"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["counts_until"], "2026-11-24T16:00:00Z");
    app.push_day(&token, "n1", 30, "2026-11-24", 1).await;
    app.clock.set(local("2026-11-25T02:00:00"));
    // The 02:00 job wakes when the clock moves; a run asked for now bills
    // whatever it has not, so the day's line stands either way.
    app.admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    let bills = app.bills().await;
    // 30 cores against 20 licensed all day: 10 excess cores, 2.50 (7.50 without the grace).
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["amount"], "2.50", "{bills:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_report_is_served_as_json_and_csv_and_is_provisional_until_due() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path().join("db.sqlite"),
        None,
        local("2026-11-24T23:30:00"),
    )
    .await;
    let token = app.account_with_cluster("acme", "prod").await;
    app.push_day(&token, "n1", 12, "2026-11-24", 1).await;
    let (s, today) = app
        .admin(
            Method::GET,
            "/v1/reports/daily?day=2026-11-24&account=acme",
            None,
        )
        .await;
    assert_eq!(s, 200, "{today}");
    assert_eq!(today["provisional"], true);
    assert_eq!(
        today["figures"]["amount"], "3.00",
        "12 cores all day, no licence"
    );
    app.clock.set(local("2026-11-25T02:00:00"));
    app.admin(Method::POST, "/v1/admin/billing-runs", None)
        .await;
    let (_, billed) = app
        .admin(
            Method::GET,
            "/v1/reports/daily?day=2026-11-24&account=acme",
            None,
        )
        .await;
    assert_eq!(billed["provisional"], false);
    assert_eq!(billed["lines"][0]["idempotency_key"], "acme/2026-11-24/1");
    let csv = app
        .client
        .get(app.url("/v1/reports/daily?day=2026-11-24&account=acme&format=csv"))
        .bearer_auth(support::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 25);
    let page = app
        .client
        .get(app.url("/v1/reports/daily?day=2026-11-24&account=acme&format=html"))
        .bearer_auth(support::ADMIN)
        .send()
        .await
        .unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(page.contains("<svg id=\"chart\"") && page.contains("3.00 USD"));
    let (s, v) = app
        .admin(
            Method::GET,
            "/v1/reports/daily?day=2026-11-24&account=acme&format=pdf",
            None,
        )
        .await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("format")));
    app.stop().await;
}

#[test]
fn serve_takes_a_handed_socket_and_refuses_a_handover_it_cannot_use() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let start = |fds: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aggregator"));
        command
            .args(["serve", "--database"])
            .arg(dir.path().join("core-meter.sqlite"))
            .env("CORE_METER_ADMIN_TOKEN", support::ADMIN)
            .env("LISTEN_FDS", fds)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    // Descriptor 3 is not open: nothing was handed over after all.
    let out = start("1").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        log.contains("LISTEN_FDS: descriptor 3 is not a TCP socket"),
        "{log}"
    );
    let out = start("2").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("LISTEN_FDS: 2 sockets handed over"), "{log}");

    // A held port handed over is served, at its own address.
    let mut command = start("1");
    let addr = testkit::ports::HeldPort::new().hand_to(&mut command);
    let mut child = command.stderr(Stdio::null()).spawn().unwrap();
    drop(command);
    testkit::eventually(
        std::time::Duration::from_secs(20),
        "the service answers on the handed port",
        || {
            use std::io::{Read, Write};
            let mut answer = String::new();
            std::net::TcpStream::connect(addr)
                .and_then(|mut s| {
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    s.read_to_string(&mut answer)
                })
                .is_ok_and(|_| answer.starts_with("HTTP/1.1 200"))
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
