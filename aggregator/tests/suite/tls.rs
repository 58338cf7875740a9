//! HTTPS end to end: real certificates from a throwaway CA, real TLS over
//! real sockets, the service's own rustls. Pushes over TLS and mutual TLS,
//! a client certificate from the wrong CA, plain HTTP sent to the TLS port,
//! and a certificate rotated while the service runs.

use crate::support;
use testkit::pki;

use std::path::Path;
use std::sync::Arc;

use aggregator::app::{Application, Timing};
use aggregator::config::Config;
use aggregator::config::TlsFiles;
use chrono::{DateTime, Utc};
use pki::{write_file, Ca, Issued};
use serde_json::{json, Value};
use shared::clock::ManualClock;
use support::{TestApp, ADMIN};

fn now() -> DateTime<Utc> {
    support::local("2026-03-10T12:00:00")
}

/// The service (`support::TestApp`, on HTTPS as its settings say), with
/// the calls these tests make through clients of their own.
struct Served {
    app: TestApp,
}

impl Served {
    async fn start(config: Config) -> Served {
        Served {
            app: TestApp::spawn_with(config, now()).await,
        }
    }

    fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    async fn stop(self) {
        self.app.stop().await;
    }

    /// Creates an account with a cluster over HTTPS; returns the cluster token.
    async fn cluster(&self, client: &reqwest::Client, account: &str) -> String {
        let r = client
            .post(self.url("/v1/admin/accounts"))
            .bearer_auth(ADMIN)
            .json(&json!({"id": account}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = client
            .post(self.url(&format!("/v1/admin/accounts/{account}/clusters")))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "prod"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Pushes one sample; the answer's status and body, or the transport error.
    async fn push(
        &self,
        client: &reqwest::Client,
        token: &str,
        seq: u64,
    ) -> Result<(u16, Value), reqwest::Error> {
        let at = now() - chrono::TimeDelta::minutes(5);
        let body = json!({"samples": [{"node": "n1", "cores": 8, "at": at, "seq": seq, "agent_version": "test"}]});
        let r = client
            .post(self.url("/v1/samples"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// The service's settings with HTTPS from `cert` and `key` in `dir`.
fn https_config(dir: &Path, server: &Issued, client_ca: Option<&Ca>) -> Config {
    let (cert, key) = server.write(dir, "tls");
    let client_ca = client_ca.map(|ca| {
        let path = dir.join("client-ca.pem");
        write_file(&path, &ca.pem(), 0o644);
        path
    });
    let mut config = support::config(dir.join("core-meter.sqlite"), None);
    config.tls = Some(TlsFiles {
        cert,
        key,
        client_ca,
    });
    config
}

/// A client that trusts only `ca`, as an agent given --ca-file does.
fn client_trusting(ca: &Ca, identity: Option<&Issued>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .https_only(true)
        .tls_info(true);
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The certificate the server presented for this answer's connection.
async fn presented(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS answer names its certificate")
        .to_vec()
}

#[tokio::test]
async fn an_agent_pushes_over_https_to_a_certificate_its_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let service = Served::start(https_config(dir.path(), &ca.server("aggregator"), None)).await;
    let client = client_trusting(&ca, None);
    let token = service.cluster(&client, "acme").await;

    let (status, body) = service.push(&client, &token, 1).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "accepted");

    // A client that trusts other roots refuses the certificate: nothing is sent.
    let stranger = client_trusting(&Ca::new("another CA"), None);
    let refused = service.push(&stranger, &token, 2).await.unwrap_err();
    let chain = format!("{:?}", refused);
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    // Plain HTTP to the TLS port gets no answer, and is counted.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", service.app.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let failures = service
        .metric(&client, "core_meter_tls_handshake_failures_total")
        .await;
    assert!(failures >= 2.0, "{failures} handshake failures counted");
    service.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_only_agents_holding_a_certificate_it_signed_may_push() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let service = Served::start(https_config(
        dir.path(),
        &ca.server("aggregator"),
        Some(&ca),
    ))
    .await;
    let anonymous = client_trusting(&ca, None);
    let token = service.cluster(&anonymous, "acme").await;

    // Probes, Prometheus and operators connect without a client certificate...
    let r = anonymous.get(service.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // ...but a push without one is refused, saying what is missing.
    let (status, body) = service.push(&anonymous, &token, 1).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "client_certificate_required");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--client-cert"));

    let agent = client_trusting(&ca, Some(&ca.client("node-agent")));
    let (status, body) = service.push(&agent, &token, 1).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "accepted");

    // A client certificate another CA signed never gets past the handshake.
    let impostor = client_trusting(&ca, Some(&Ca::new("rogue CA").client("node-agent")));
    assert!(service.push(&impostor, &token, 2).await.is_err());

    assert_eq!(
        service
            .metric(&anonymous, "core_meter_client_certificate_refusals_total")
            .await,
        1.0
    );
    assert!(
        service
            .metric(&anonymous, "core_meter_tls_handshake_failures_total")
            .await
            >= 1.0
    );
    service.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_and_open_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let first = ca.server("aggregator-1");
    let service = Served::start(https_config(dir.path(), &first, None)).await;
    let url = service.url("/healthz");
    let open = client_trusting(&ca, None);
    assert_eq!(presented(&open, &url).await, first.der);

    // cert-manager renews: both files are replaced while the service runs.
    let second = ca.server("aggregator-2");
    second.write(dir.path(), "tls");
    // The watcher looks again when the clock moves: once it has, the new
    // certificate is served.
    service.app.settled().await;
    assert_eq!(
        presented(&client_trusting(&ca, None), &url).await,
        second.der
    );
    // The connection opened before the change was not dropped: it still
    // speaks with the certificate it agreed on.
    assert_eq!(presented(&open, &url).await, first.der);

    // A broken change is refused (and counted); the last good one stays.
    let fresh = client_trusting(&ca, None);
    let failed = "core_meter_tls_reloads_total{result=\"failed\"}";
    let failed_before = service.metric(&fresh, failed).await;
    write_file(&dir.path().join("tls.crt"), "not a certificate\n", 0o644);
    service.app.settled().await;
    service.app.settled().await;
    assert_eq!(
        service.metric(&fresh, failed).await,
        failed_before + 1.0,
        "the broken change was seen, and counted once however often it is looked at"
    );
    assert_eq!(
        presented(&client_trusting(&ca, None), &url).await,
        second.der
    );
    assert_eq!(
        service
            .metric(&fresh, "core_meter_tls_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
    service.stop().await;
}

#[tokio::test]
async fn a_service_whose_key_anyone_may_read_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let config = https_config(dir.path(), &ca.server("aggregator"), None);
    let key = config.tls.as_ref().unwrap().key.clone();
    write_file(&key, &std::fs::read_to_string(&key).unwrap(), 0o644);
    let e = Application::build(config, Arc::new(ManualClock::new(now())), Timing::default())
        .await
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(e.contains("tls_key") && e.contains("chmod o-r"), "{e}");
}
