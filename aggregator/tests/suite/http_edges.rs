//! The edges of HTTP: every error the service sends, its own or hyper's, is the API's JSON error; a body is one JSON value, declared JSON, and at most 1 MiB.

use crate::support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{local, TestApp, ADMIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer as it came off the wire.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// Asserts the answer is `status` with the API's JSON error of `code`,
    /// a message and the right length; the error.
    fn is_error(&self, status: u16, code: &str) -> Value {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{}\n\n{body}", self.head);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.head
        );
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {body:?}"));
        assert_eq!(v["error"]["code"], code, "{body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        v["error"].clone()
    }
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    let body = raw[end + 4..end + 4 + length].to_vec();
                    return Answer { status, head, body };
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => panic!(
                    "closed before a whole answer: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20 s")
}

/// Sends `request` as it is on a connection of its own; the answer.
async fn raw(app: &TestApp, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // The service may answer before it read everything (and stop reading).
    let _ = stream.write_all(request).await;
    read_answer(&mut stream).await
}

/// An admin request with the given Content-Type header lines and body.
fn admin_request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: edges\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\n"
    );
    if let Some(t) = content_type {
        r.push_str(&format!("Content-Type: {t}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

async fn app() -> (tempfile::TempDir, TestApp) {
    TestApp::in_temp_dir(local("2026-11-24T12:00:00")).await
}

async fn account_exists(app: &TestApp, id: &str) -> bool {
    let (status, _) = app
        .admin(Method::GET, &format!("/v1/admin/accounts/{id}"), None)
        .await;
    status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_after_the_json_value_is_a_400_and_creates_nothing() {
    let (_dir, app) = app().await;
    for body in [&br#"{"id":"a"}{"id":"b"}"#[..], br#"{"id":"a"} xyz"#] {
        let a = raw(
            &app,
            &admin_request("POST", "/v1/admin/accounts", Some("application/json"), body),
        )
        .await;
        let error = a.is_error(400, "invalid_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("after its JSON value"),
            "{error}"
        );
    }
    assert!(!account_exists(&app, "a").await, "account a was created");
    assert!(!account_exists(&app, "b").await, "account b was created");
    // White space after the value is no data.
    let a = raw(
        &app,
        &admin_request(
            "POST",
            "/v1/admin/accounts",
            Some("application/json"),
            b"{\"id\":\"c\"} \r\n",
        ),
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_data_after_it_is_a_400_and_stores_nothing() {
    let (_dir, app) = app().await;
    let token = app.account_with_cluster("acme", "prod").await;
    let sample = json!({"samples": [{"node": "n1", "cores": 8, "at": local("2026-11-24T11:00:00"), "seq": 1, "agent_version": "t"}]});
    let body = format!("{sample}{sample}");
    let a = raw(
        &app,
        format!(
            "POST /v1/samples HTTP/1.1\r\nHost: edges\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    a.is_error(400, "invalid_request");
    let (_, audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(audit["samples"], json!([]), "{audit}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_declared_json_is_a_415_on_admin_routes() {
    let (_dir, app) = app().await;
    let body = br#"{"id":"a"}"#;
    for content_type in [Some("text/plain"), None, Some("application/jsonx")] {
        let a = raw(
            &app,
            &admin_request("POST", "/v1/admin/accounts", content_type, body),
        )
        .await;
        let error = a.is_error(415, "unsupported_media_type");
        assert_eq!(error["field"], "Content-Type", "{error}");
    }
    assert!(!account_exists(&app, "a").await);
    // The media type in any case, with parameters.
    let a = raw(
        &app,
        &admin_request(
            "POST",
            "/v1/admin/accounts",
            Some("Application/JSON; charset=utf-8"),
            body,
        ),
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_body_may_be_empty_without_a_content_type() {
    let (_dir, app) = app().await;
    app.account_with_cluster("acme", "prod").await;
    let rotate = "/v1/admin/accounts/acme/clusters/prod/rotate-token";
    let a = raw(&app, &admin_request("POST", rotate, None, b"")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = raw(
        &app,
        &admin_request("POST", "/v1/admin/billing-runs", None, b""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = raw(
        &app,
        &admin_request("POST", rotate, Some("text/plain"), b"{}"),
    )
    .await;
    a.is_error(415, "unsupported_media_type");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_is_not_declared_json_is_a_415_once_its_agent_is_known() {
    let (_dir, app) = app().await;
    let token = app.account_with_cluster("acme", "prod").await;
    let body = json!({"samples": [{"node": "n1", "cores": 8, "at": local("2026-11-24T11:00:00"), "seq": 1, "agent_version": "t"}]}).to_string();
    let push = |auth: &str, content_type: &str| {
        format!(
            "POST /v1/samples HTTP/1.1\r\nHost: edges\r\nConnection: close\r\n{auth}{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let auth = format!("Authorization: Bearer {token}\r\n");
    for content_type in ["Content-Type: text/plain\r\n", ""] {
        raw(&app, &push(&auth, content_type))
            .await
            .is_error(415, "unsupported_media_type");
        // An unknown client is refused for its token, its body unread.
        raw(&app, &push("", content_type))
            .await
            .is_error(401, "unauthorized");
    }
    let (_, audit) = app
        .admin(
            Method::GET,
            "/v1/admin/accounts/acme/samples?day=2026-11-24",
            None,
        )
        .await;
    assert_eq!(audit["samples"], json!([]), "{audit}");
    let a = raw(&app, &push(&auth, "Content-Type: application/json\r\n")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_does_not_take_is_a_405_with_allow() {
    let (_dir, app) = app().await;
    let a = raw(
        &app,
        &admin_request("DELETE", "/v1/admin/accounts", None, b""),
    )
    .await;
    a.is_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("POST"), "{}", a.head);
    let a = raw(
        &app,
        b"PUT /healthz HTTP/1.1\r\nHost: edges\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    a.is_error(405, "method_not_allowed");
    assert!(
        a.header("allow").is_some_and(|v| v.contains("GET")),
        "{}",
        a.head
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_1_mib_is_a_413_on_a_route_that_does_not_read_it() {
    let (_dir, app) = app().await;
    let huge = 2 << 20;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: edges\r\nContent-Length: {huge}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Part of the body is on its way; the answer does not wait for the rest.
    let _ = stream.write_all(&[b' '; 4096]).await;
    read_answer(&mut stream).await.is_error(413, "too_large");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_1_mib_on_an_admin_route_is_a_413_before_the_body_is_read() {
    let (_dir, app) = app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/admin/accounts HTTP/1.1\r\nHost: edges\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"id\":",
        100 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Answered at once: well before the request timeout (30 s).
    let a = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
        .await
        .expect("answered before the body ends");
    a.is_error(413, "too_large");
    // The body is not read: the connection carries no other request.
    assert_eq!(a.header("connection"), Some("close"), "{}", a.head);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_a_503_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path().join("db.sqlite"), None);
    config.request_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config, local("2026-11-24T12:00:00")).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = admin_request(
        "POST",
        "/v1/admin/accounts",
        Some("application/json"),
        &[b' '; 100],
    );
    // The head and a few bytes of the body, then nothing.
    stream.write_all(&head[..head.len() - 90]).await.unwrap();
    let a = read_answer(&mut stream).await;
    a.is_error(503, "request_timeout");
    assert_eq!(a.header("retry-after"), Some("1"), "{}", a.head);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_is_hypers_400_with_the_json_error() {
    let (_dir, app) = app().await;
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: edges\r\nBad Header: x\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: edges\r\nX: a\x00b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edges\r\nno colon here\r\n\r\n",
        b"GET /he lthz x HTTP/1.1\r\nHost: edges\r\n\r\n",
        b"\x01\x02 / HTTP/1.1\r\n\r\n",
    ] {
        raw(&app, request).await.is_error(400, "malformed_request");
    }
    // After answers of the service on the same connection too.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: edges\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut stream).await;
    assert_eq!(first.status, 200, "{}", first.head);
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: edges\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = stream.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut stream)
        .await
        .is_error(400, "malformed_request");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_is_a_431_with_the_json_error() {
    let (_dir, app) = app().await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: edges\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    raw(&app, request.as_bytes())
        .await
        .is_error(431, "head_too_large");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_100_headers_is_hypers_431_with_the_json_error() {
    let (_dir, app) = app().await;
    let headers: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: edges\r\n{headers}\r\n");
    raw(&app, request.as_bytes())
        .await
        .is_error(431, "head_too_large");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kib_uri_is_answered_in_the_json_error_format() {
    let (_dir, app) = app().await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: edges\r\nConnection: close\r\n\r\n",
        "p".repeat(20 * 1024)
    );
    raw(&app, request.as_bytes())
        .await
        .is_error(404, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_over_hypers_limit_is_its_414_or_431_with_the_json_error() {
    // hyper's URI limit (65,534 bytes) is above the head's 64 KiB: whether
    // hyper sees the URI whole (414) or stops reading first (431) depends
    // on how the bytes arrive.
    let (_dir, app) = app().await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: edges\r\n\r\n",
        "p".repeat(66 * 1024)
    );
    let a = raw(&app, request.as_bytes()).await;
    match a.status {
        414 => a.is_error(414, "uri_too_long"),
        _ => a.is_error(431, "head_too_large"),
    };
    app.stop().await;
}
