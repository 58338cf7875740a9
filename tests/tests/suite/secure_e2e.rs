//! The real binaries with every hop secured, end to end: the aggregator on
//! HTTPS with mutual TLS for agents, an agent pushing with a CA file, a
//! client certificate and a token file (rotated while it runs), a billing
//! run whose lines reach a webhook that verifies every signature, a
//! customer's reader token, and callers with the wrong credentials. Then
//! the logs (at debug level) and the metrics of both programs are searched
//! for every secret the run used: none may appear.

use testkit::pki;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregator::config::Secret;
use aggregator::security::signature::{self};
use e2e::procs::binary;
use pki::{write_file, Ca};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A secret as the service makes them: a prefix, `_` and 64 random hex digits.
fn random_secret(prefix: &str) -> String {
    aggregator::security::tokens::new_token(prefix)
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Each request a webhook receiver took, and whether its signature held.
#[derive(Default)]
struct Received {
    verified: usize,
    refused: Vec<String>,
    seen: HashSet<String>,
    bodies: Vec<Value>,
}

/// A webhook receiver on 127.0.0.1 (plain HTTP is allowed to loopback)
/// that verifies every request's signature, as a billing backend would.
async fn receiver(secret: Secret) -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (secret, r) = (secret.clone(), r.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body = &buf[head_end..head_end + length];
                let header = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case(signature::HEADER)
                        .then(|| value.trim().to_string())
                });
                let checked = signature::verify(
                    &secret,
                    header.as_deref(),
                    body,
                    chrono::Utc::now(),
                    signature::DEFAULT_TOLERANCE,
                );
                let status = {
                    let mut r = r.lock().unwrap();
                    match checked {
                        Ok(()) if !r.seen.insert(header.clone().unwrap_or_default()) => {
                            r.refused.push("replayed".into());
                            "409 Conflict"
                        }
                        Ok(()) => {
                            r.verified += 1;
                            r.bodies.push(serde_json::from_slice(body).unwrap());
                            "200 OK"
                        }
                        Err(e) => {
                            r.refused.push(e.to_string());
                            "401 Unauthorized"
                        }
                    }
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, received)
}

/// A process whose stderr is its log file; stopped with SIGTERM on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_over_tls_leaks_no_secret_into_any_log_or_metric() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The cluster's CA: the aggregator's certificate and the agent's.
    let ca = Ca::new("cluster CA");
    let server = ca.server("core-meter-aggregator");
    let (tls_cert, tls_key) = server.write(d, "aggregator");
    let agent_identity = ca.client("node-1 agent");
    let (agent_cert, agent_key) = agent_identity.write(d, "agent");
    let ca_file = d.join("ca.pem");
    write_file(&ca_file, &ca.pem(), 0o644);

    // Every secret of the run, each from a file only its owner may read.
    let admin = random_secret("cma");
    let admin_file = d.join("admin-token");
    private_file(&admin_file, &admin);
    let bill_secret = random_secret("whsec");
    let bill_secret_file = d.join("bill-lines-secret");
    private_file(&bill_secret_file, &bill_secret);
    let notice_secret = random_secret("whsec");
    let notice_secret_file = d.join("notices-secret");
    private_file(&notice_secret_file, &notice_secret);
    let (bill_url, bills) = receiver(Secret::new(&bill_secret)).await;
    let (notice_url, notices) = receiver(Secret::new(&notice_secret)).await;

    let mut service_command = Command::new(binary("aggregator"));
    let addr = testkit::ports::HeldPort::new().hand_to(&mut service_command);
    let base = format!("https://{addr}");
    service_command
        .args(["serve", "--listen", &addr.to_string(), "--database"])
        .arg(d.join("core-meter.sqlite"))
        .arg("--tls-cert")
        .arg(&tls_cert)
        .arg("--tls-key")
        .arg(&tls_key)
        .arg("--client-ca")
        .arg(&ca_file)
        .env_remove("CORE_METER_ADMIN_TOKEN")
        .env("CORE_METER_ADMIN_TOKEN_FILE", &admin_file)
        .env("CORE_METER_WEBHOOK_URL", &bill_url)
        .env("CORE_METER_WEBHOOK_SECRET_FILE", &bill_secret_file)
        .env("CORE_METER_NOTICES_WEBHOOK_URL", &notice_url)
        .env(
            "CORE_METER_NOTICES_WEBHOOK_SECRET_FILE",
            &notice_secret_file,
        );
    let mut service = Proc::start(service_command, d.join("aggregator.log"));

    let roots = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .https_only(true)
    };
    let client = roots().build().unwrap();
    let pem = format!("{}{}", agent_identity.cert_pem, agent_identity.key_pem);
    let agent_client = roots()
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    testkit::eventually_async(Duration::from_secs(30), "the service to be ready", || {
        let c = client.clone();
        let url = format!("{base}/readyz");
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    // An account with a contact, a cluster and a customer's reader token.
    use reqwest::Method as M;
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts",
        &admin,
        Some(json!({"id": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts/acme/contacts",
        &admin,
        Some(json!({"name": "Li", "role": "finance_collaborator", "email": "li@acme.example"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts/acme/clusters",
        &admin,
        Some(json!({"name": "prod"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let first_cluster_token = v["token"].as_str().unwrap().to_string();
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts/acme/reader-tokens",
        &admin,
        Some(json!({"name": "finance dashboard"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let reader = v["token"].as_str().unwrap().to_string();
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts/acme/reader-tokens",
        &admin,
        Some(json!({"name": "to be revoked"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let revoked = v["token"].as_str().unwrap().to_string();
    let (s, _) = call(
        M::DELETE,
        &format!("/v1/admin/accounts/acme/reader-tokens/{}", v["id"]),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200);

    // The agent: CA file, client certificate, token file.
    let token_file = d.join("cluster-token");
    private_file(&token_file, &first_cluster_token);
    let mut agent_command = Command::new(binary("agent"));
    agent_command
        .args(["run", "--aggregator", &base, "--spool"])
        .arg(d.join("spool"))
        .args(["--interval-secs", "1", "--spread-secs", "0"])
        .args(["--listen", "127.0.0.1:0", "--max-backoff-secs", "1"])
        .arg("--ca-file")
        .arg(&ca_file)
        .arg("--client-cert")
        .arg(&agent_cert)
        .arg("--client-key")
        .arg(&agent_key)
        .env_remove("CORE_METER_TOKEN")
        .env("CORE_METER_TOKEN_FILE", &token_file)
        .env("NODE_NAME", "node-1");
    let mut agent = Proc::start(agent_command, d.join("agent.log"));
    let day = shared::zone::BillingZone::default()
        .day_of(chrono::Utc::now())
        .to_string();
    let stored = |path: String| {
        let c = client.clone();
        let admin = admin.clone();
        async move {
            let v: Value = c
                .get(path)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["samples"].as_array().map_or(0, Vec::len)
        }
    };
    let audit = format!("{base}/v1/admin/accounts/acme/samples?day={day}");
    testkit::eventually_async(Duration::from_secs(60), "the agent's first samples", || {
        let f = stored(audit.clone());
        async move { f.await >= 2 }
    })
    .await;

    // The cluster's token is rotated; the agent's file is replaced as a
    // Secret update replaces it, and the agent goes on with the new one.
    let (s, v) = call(
        M::POST,
        "/v1/admin/accounts/acme/clusters/prod/rotate-token",
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let second_cluster_token = v["token"].as_str().unwrap().to_string();
    let aside = d.join("cluster-token.new");
    private_file(&aside, &second_cluster_token);
    std::fs::rename(&aside, &token_file).unwrap();
    let before = stored(audit.clone()).await;
    testkit::eventually_async(
        Duration::from_secs(60),
        "samples pushed with the rotated token",
        || {
            let f = stored(audit.clone());
            async move { f.await >= before + 2 }
        },
    )
    .await;

    // The hours of the day before yesterday (due whatever the hour now),
    // pushed over mutual TLS, so a billing run issues a line (and, with no
    // licence, a licence_short notice) to deliver.
    let yesterday = shared::zone::BillingZone::default()
        .day_of(chrono::Utc::now())
        .pred_opt()
        .and_then(|d| d.pred_opt())
        .unwrap();
    let zone = shared::zone::BillingZone::default();
    let start = zone.day_start(yesterday);
    let samples: Vec<Value> = (0..24)
        .map(|h| {
            json!({"node": "node-2", "cores": 16, "at": start + chrono::TimeDelta::minutes(60 * h + 5),
                   "seq": h + 1, "agent_version": "e2e"})
        })
        .collect();
    let r = agent_client
        .post(format!("{base}/v1/samples"))
        .bearer_auth(&second_cluster_token)
        .json(&json!({"samples": samples}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = call(M::POST, "/v1/admin/billing-runs", &admin, None).await;
    assert_eq!(s, 200, "{v}");
    testkit::eventually_async(
        Duration::from_secs(60),
        "the bill line at the webhook",
        || {
            let b = bills.clone();
            async move { b.lock().unwrap().verified >= 1 }
        },
    )
    .await;
    testkit::eventually_async(Duration::from_secs(60), "the notice at the webhook", || {
        let n = notices.clone();
        async move { n.lock().unwrap().verified >= 1 }
    })
    .await;

    // The customer reads its own account, and nothing else.
    let y = yesterday.to_string();
    for path in [
        format!("/v1/accounts/acme/reports/daily?day={y}"),
        format!("/v1/accounts/acme/bills?day={y}"),
        "/v1/accounts/acme/notices".to_string(),
        format!("/v1/accounts/acme/export?day={y}"),
    ] {
        let (s, v) = call(M::GET, &path, &reader, None).await;
        assert_eq!(s, 200, "{path}: {v}");
    }
    // The wrong credentials, each once: none may be echoed or logged.
    let (s, _) = call(M::GET, "/v1/admin/bills", &reader, None).await;
    assert_eq!(s, 403);
    let (s, _) = call(M::GET, "/v1/accounts/acme/notices", &revoked, None).await;
    assert_eq!(s, 401);
    let (s, _) = call(M::GET, "/v1/admin/bills", &first_cluster_token, None).await;
    assert_eq!(s, 401, "the old cluster token stopped at the rotation");
    let (s, _) = call(M::GET, "/v1/admin/bills", &second_cluster_token, None).await;
    assert_eq!(s, 403);
    let wrong_admin = random_secret("cma");
    let (s, _) = call(M::GET, "/v1/admin/bills", &wrong_admin, None).await;
    assert_eq!(s, 401);

    let service_metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let agent_listen = agent
        .log_text()
        .lines()
        .find_map(|l| {
            let rest = l.split(" listen=").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .expect("the agent logs where it listens");
    let agent_metrics = reqwest::get(format!("http://{agent_listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    agent.terminate();
    service.terminate();

    {
        let b = bills.lock().unwrap();
        let n = notices.lock().unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert!(n.refused.is_empty(), "{:?}", n.refused);
        assert_eq!(b.bodies[0]["account"], "acme", "{:?}", b.bodies);
    }

    let service_log = service.log_text();
    let agent_log = agent.log_text();
    // The logs are the real thing, at debug level: not empty, not vacuous.
    assert!(service_log.contains("aggregator serving"), "{service_log}");
    assert!(service_log.lines().count() > 20, "{service_log}");
    assert!(
        agent_log.contains("DEBUG") || agent_log.lines().count() > 10,
        "{agent_log}"
    );
    // A slice of each private key's PEM body stands for the key.
    let key_slice = |pem: &str| -> String {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .chars()
            .skip(8)
            .take(32)
            .collect()
    };
    let secrets = [
        ("the admin token", admin.clone()),
        ("a wrong admin token", wrong_admin),
        ("the first cluster token", first_cluster_token),
        ("the rotated cluster token", second_cluster_token),
        ("the reader token", reader),
        ("the revoked reader token", revoked),
        ("the bill webhook's secret", bill_secret),
        ("the notice webhook's secret", notice_secret),
        ("the aggregator's TLS key", key_slice(&server.key_pem)),
        ("the agent's client key", key_slice(&agent_identity.key_pem)),
    ];
    let places = [
        ("the aggregator's log", &service_log),
        ("the agent's log", &agent_log),
        ("the aggregator's metrics", &service_metrics),
        ("the agent's metrics", &agent_metrics),
    ];
    // The search finds what is there: the node's name is in the agent's log.
    assert!(places.iter().any(|(_, text)| text.contains("node-1")));
    for (what, secret) in &secrets {
        // The hex part alone: a prefix-stripped or reformatted leak counts too.
        let needle = secret.rsplit('_').next().unwrap();
        assert!(needle.len() >= 32, "{what}");
        for (place, text) in &places {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                panic!("{what} appears in {place}: {line}");
            }
        }
    }
    eprintln!(
        "searched {} log lines and {} metric lines for {} secrets: none found",
        service_log.lines().count() + agent_log.lines().count(),
        service_metrics.lines().count() + agent_metrics.lines().count(),
        secrets.len()
    );
}
