//! Campaign scenario 5 (issue 7), hostile input: 10,000 malformed or unauthorized requests, oversized and slow clients, cross-account attempts and a connection flood leave the real service healthy, its data unchanged, and no token in its debug logs.
//!
//! The service runs as the real binary with `RUST_LOG=debug`, first with
//! text logs and then, restarted on the same database, with JSON logs; under
//! an open-files limit of 256, so that its connection cap (the limit less 64)
//! is reached here; with a request timeout of 3 s, which is also its header
//! read timeout; and in a billing zone where it is about noon, so no 02:00
//! run falls inside the campaign.
//!
//! Every ingest body a valid token sends is first decoded and validated in
//! this process by the functions the route uses (`shared::wire::decode_batch`,
//! `shared::sample::validate`): the service must answer exactly what they
//! say, and a body with a sample they would accept is never sent, so the
//! accounts under attack keep what they had. Requests with a bad token carry
//! good samples: were one let through, the audit trail would show it.

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Timelike, Utc};
use e2e::procs::{request, Service, ServiceOptions};
use serde_json::{json, Value};
use shared::sample::{validate, AgeLimits};
use shared::wire::{decode_batch, BatchError, MAX_BATCH_BYTES, MAX_BATCH_SAMPLES};
use shared::zone::BillingZone;

/// The hostile requests, half with text logs and half with JSON logs.
const HOSTILE_REQUESTS: usize = 10_000;
/// Mutated bodies checked in this process only, beyond those sent.
const OFFLINE_FUZZ_CASES: usize = 20_000;
/// Clients sending the hostile requests at once.
const CLIENTS: usize = 4;
/// The service's request timeout, and so its header read timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How late past a timeout a connection may still be cut.
const TIMEOUT_SLACK: Duration = Duration::from_millis(2_500);
/// The open-files limit the service runs under, and the cap that follows.
const OPEN_FILES: usize = 256;
const CONNECTION_CAP: usize = OPEN_FILES - 64;
/// A good push while under attack answers within this.
const GOOD_PUSH_WITHIN: Duration = Duration::from_secs(2);
/// The whole campaign.
const BUDGET: Duration = Duration::from_secs(170);

// ---- Raw HTTP: the requests are bytes, so they can be anything.

#[derive(Debug)]
struct Answer {
    /// 0 when the connection closed without an answer.
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    fn error_field(&self) -> Option<String> {
        self.json()["error"]["field"].as_str().map(str::to_string)
    }

    fn brief(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
        )
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    Ok(s)
}

/// Reads until the server closes (a reset after the answer counts as a close).
fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(raw)
            }
            Err(e) => return Err(format!("no answer: {e} (read {} bytes)", raw.len())),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(raw: &[u8]) -> Answer {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return Answer {
            status: 0,
            head: String::from_utf8_lossy(raw).into_owned(),
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = &raw[end + 4..];
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else if let Some(length) = length {
        // Garbage can hold a second request, and so get a second answer.
        rest[..length.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Answer { status, head, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(rest, b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        let data = &rest[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        rest = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
    }
    out
}

/// Sends `request` and reads the answer. `half_close` tells the server no
/// more is coming, for requests that are not whole.
fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Result<Answer, String> {
    let mut s = connect(addr)?;
    // The server may answer and close before it read everything.
    let _ = s.write_all(request);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    Ok(parse(&read_to_close(&mut s)?))
}

/// A request with `Connection: close`, the given header lines and a body
/// (declared JSON when there is one, as the service requires).
fn build(method: &str, path: &str, headers: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: campaign\r\nConnection: close\r\n").into_bytes();
    for h in headers {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        r.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Authorization: Bearer {token}").into_bytes()
}

// ---- Deterministic randomness, so a failing run can be repeated.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

// ---- Bodies.

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A batch the service would accept: `n` hourly samples of `node` ending an hour ago.
fn good_batch(node: &str, first_seq: u64, n: u64, now: DateTime<Utc>) -> String {
    let samples: Vec<Value> = (0..n)
        .map(|i| {
            json!({"node": node, "cores": 16 + i % 4, "at": rfc3339(now - TimeDelta::hours((n - i) as i64)),
                   "seq": first_seq + i, "agent_version": "campaign"})
        })
        .collect();
    json!({ "samples": samples }).to_string()
}

/// One field of a hostile sample: usually a bad value, sometimes a good one.
fn hostile_field(rng: &mut Rng, field: &str) -> Option<Vec<u8>> {
    if rng.percent(8) {
        return None;
    }
    let choices: &[&[u8]] = match field {
        "node" => &[
            b"\"n1\"",
            b"\"n1\"",
            b"\"\"",
            b"\" \"",
            b"5",
            b"null",
            b"\"\\u0000\"",
            b"\"../../etc/passwd\"",
            b"\"\\ud800\"",
            b"\"\xff\xfe\"",
            b"\"n1\r\n\"",
            b"[\"n1\"]",
            b"\"\\u202eevil\"",
            b"\"'; DROP TABLE samples; --\"",
        ],
        "cores" => &[
            b"8",
            b"8",
            b"0",
            b"-1",
            b"1e400",
            b"18446744073709551616",
            b"\"8\"",
            b"8.5",
            b"null",
            b"[]",
            b"{}",
            b"10001",
            b"1e308",
            b"-0",
            b"99999999999999999999999999999",
        ],
        "at" => &[
            b"\"1999-01-01T00:00:00Z\"",
            b"\"1999-01-01T00:00:00Z\"",
            b"\"yesterday\"",
            b"0",
            b"null",
            b"\"2999-01-01T00:00:00Z\"",
            b"\"1999-01-01T00:00:00\"",
            b"\"\"",
            b"\"9999-12-31T23:59:59-23:59\"",
            b"\"0000-01-01T00:00:00+23:59\"",
            b"{\"$date\":0}",
        ],
        "seq" => &[
            b"1",
            b"7",
            b"-1",
            b"1.5",
            b"\"1\"",
            b"18446744073709551616",
            b"9223372036854775808",
            b"null",
            b"1e3",
        ],
        _ => &[b"\"campaign\"", b"5", b"[]"],
    };
    Some(rng.pick(choices).to_vec())
}

/// A body that should never store a sample: bad fields, a bad shape, bad bytes.
fn hostile_body(rng: &mut Rng) -> Vec<u8> {
    let samples: Vec<Vec<u8>> = (0..1 + rng.below(4))
        .map(|_| {
            let mut fields: Vec<Vec<u8>> = Vec::new();
            for name in ["node", "cores", "at", "seq", "agent_version"] {
                if let Some(v) = hostile_field(rng, name) {
                    let mut f = format!("\"{name}\":").into_bytes();
                    f.extend(v);
                    fields.push(f);
                }
            }
            if rng.percent(20) {
                fields.push(
                    rng.pick(&[
                        &b"\"account\":\"rival\""[..],
                        b"\"cluster\":\"other\"",
                        b"\"x\":{\"y\":[1,2]}",
                    ])
                    .to_vec(),
                );
            }
            let mut s = b"{".to_vec();
            s.extend(fields.join(&b","[..]));
            s.push(b'}');
            if rng.percent(3) {
                s = rng.pick(&[&b"3"[..], b"\"n1\"", b"null", b"[]"]).to_vec();
            }
            s
        })
        .collect();
    let list = samples.join(&b","[..]);
    let mut body: Vec<u8> = match rng.below(20) {
        0 => Vec::new(),
        1 => rng
            .pick(&[
                &b"[]"[..],
                b"\"samples\"",
                b"5",
                b"null",
                b"{}",
                b"{\"samples\":null}",
                b"{\"samples\":{}}",
                b"{\"samples\":\"x\"}",
                b"{\"samples\":[],\"samples\":[]}",
                b"\xef\xbb\xbf{\"samples\":[]}",
                b"{\"samples\":[]} trailing",
            ])
            .to_vec(),
        2 => {
            let mut b = b"{\"samples\":".to_vec();
            b.extend(std::iter::repeat_n(b'[', 200 + rng.below(2_000)));
            b
        }
        3 => {
            let n = MAX_BATCH_SAMPLES + 1 + rng.below(50);
            format!("{{\"samples\":[{}]}}", vec!["{\"cores\":8}"; n].join(",")).into_bytes()
        }
        4 => [
            &b"{\"account\":\"rival\",\"cluster\":\"prod\",\"samples\":["[..],
            &list,
            b"]}",
        ]
        .concat(),
        _ => [&b"{\"samples\":["[..], &list, b"]}"].concat(),
    };
    // Then, often, the bytes themselves.
    for _ in 0..rng.below(3) {
        let len = body.len().max(1);
        match rng.below(4) {
            0 if !body.is_empty() => {
                let i = rng.below(len);
                body[i] ^= (rng.next() as u8) | 1;
            }
            1 => {
                let i = rng.below(body.len() + 1);
                let inserts: [&[u8]; 8] = [
                    b"\xff",
                    b"\xc0\x80",
                    b"\"",
                    b"\\",
                    b"{",
                    b"]",
                    b",",
                    b"\x00",
                ];
                let bytes = *rng.pick(&inserts);
                body.splice(i..i, bytes.iter().copied());
            }
            2 => body.truncate(rng.below(len)),
            _ => {}
        }
    }
    body
}

/// What the route must answer for `body` sent with a `prod` cluster token at
/// about `now`, worked out by the functions the route uses; `None` when a
/// sample of it would be stored.
#[derive(Debug, Clone)]
enum Expected {
    Refused {
        status: u16,
        code: &'static str,
        field: Option<&'static str>,
    },
    /// Every sample rejected, with these reasons.
    Rejected(Vec<&'static str>),
}

fn expected_answer(body: &[u8], now: DateTime<Utc>) -> Option<Expected> {
    match decode_batch(body) {
        Err(e) => {
            let (status, code) = match e {
                BatchError::TooLarge { .. } => (413, "too_large"),
                BatchError::TooManySamples { .. } => (413, "too_many_samples"),
                BatchError::Malformed(_) => (400, "invalid_request"),
            };
            Some(Expected::Refused {
                status,
                code,
                field: e.field(),
            })
        }
        Ok(samples) => {
            let mut reasons = Vec::new();
            for s in samples {
                let (reason, version) = match s {
                    Err(r) => (r, None),
                    Ok(d) => match validate(&d.unchecked(true, "prod"), now, &AgeLimits::default())
                    {
                        Err(r) => (r, d.agent_version),
                        Ok(_) => return None,
                    },
                };
                // A reason an agent of that version cannot read is left out.
                reasons.push(if shared::wire::agent_reads(version.as_deref(), reason) {
                    reason.as_str()
                } else {
                    "-"
                });
            }
            Some(Expected::Rejected(reasons))
        }
    }
}

// ---- The hostile requests.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// A valid cluster token and a body that stores nothing.
    MalformedIngest,
    /// Good samples with a missing, wrong, revoked or mangled token.
    UnauthorizedIngest,
    /// A valid cluster token on the admin API or the report.
    ClusterTokenOnAdmin,
    /// A wrong token on the admin API.
    BadTokenOnAdmin,
    /// The admin token with bad bodies, odd IDs and paths.
    MalformedAdmin,
    /// Bytes that are barely HTTP.
    Garbage,
}

impl Kind {
    fn unauthorized(self) -> bool {
        matches!(
            self,
            Kind::UnauthorizedIngest | Kind::ClusterTokenOnAdmin | Kind::BadTokenOnAdmin
        )
    }
}

#[derive(Debug, Clone)]
enum Check {
    Ingest(Expected),
    /// One of these statuses; with an error body, this code.
    Status(&'static [u16], Option<&'static str>),
    /// No answer, or any 4xx (501 for an unknown transfer coding), never a 5xx.
    Garbage,
}

struct Case {
    kind: Kind,
    request: Vec<u8>,
    half_close: bool,
    check: Check,
}

/// Tokens the campaign holds.
struct Tokens {
    admin: String,
    acme: String,
    /// acme's `dev` cluster after its rotation, and the token it had before.
    acme_dev: String,
    acme_dev_revoked: String,
    rival: String,
    canary: String,
}

impl Tokens {
    fn all(&self) -> [&str; 6] {
        [
            &self.admin,
            &self.acme,
            &self.acme_dev,
            &self.acme_dev_revoked,
            &self.rival,
            &self.canary,
        ]
    }
}

/// Every admin route, with bodies that would change something if let through.
fn admin_routes(day: NaiveDate) -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("GET", "/v1/admin/accounts/acme".into(), ""),
        ("GET", "/v1/admin/accounts/rival".into(), ""),
        ("POST", "/v1/admin/accounts".into(), r#"{"id":"evil"}"#),
        (
            "POST",
            "/v1/admin/accounts/acme/clusters".into(),
            r#"{"name":"evil"}"#,
        ),
        (
            "POST",
            "/v1/admin/accounts/rival/clusters/prod/rotate-token".into(),
            "",
        ),
        (
            "POST",
            "/v1/admin/accounts/acme/licenses".into(),
            r#"{"cores":100000,"start":"2020-01-01T00:00:00Z","end":"2099-01-01T00:00:00Z"}"#,
        ),
        (
            "PUT",
            "/v1/admin/accounts/rival/cap".into(),
            r#"{"cores":100000}"#,
        ),
        (
            "GET",
            format!("/v1/admin/accounts/rival/samples?day={day}"),
            "",
        ),
        (
            "GET",
            format!("/v1/admin/accounts/acme/samples?day={day}"),
            "",
        ),
        ("POST", "/v1/admin/billing-runs".into(), ""),
        ("GET", "/v1/admin/bills".into(), ""),
        ("GET", "/v1/admin/bills?account=rival&format=csv".into(), ""),
        ("GET", "/v1/admin/outbox".into(), ""),
        (
            "GET",
            format!("/v1/reports/daily?day={day}&account=rival&format=html"),
            "",
        ),
        (
            "GET",
            format!("/v1/reports/daily?day={day}&account=acme"),
            "",
        ),
    ]
}

/// Paths that look like a way out of an account, and IDs no account has.
fn odd_paths(day: NaiveDate) -> Vec<String> {
    let long = "a".repeat(5_000);
    vec![
        "/v1/admin/accounts/..%2F..%2Fetc%2Fpasswd".into(),
        "/v1/admin/accounts/..%2Frival".into(),
        "/v1/admin/accounts/acme%2F..%2Frival/samples?day=2026-11-24".into(),
        "/v1/admin/accounts/../rival".into(),
        "/v1/admin/accounts/./acme".into(),
        "/v1/admin/accounts/%00".into(),
        "/v1/admin/accounts/%FF%FE".into(),
        "/v1/admin/accounts/%ZZ".into(),
        "/v1/admin/accounts/acme%00".into(),
        "/v1/admin/accounts/%E2%80%AEemca".into(),
        format!("/v1/admin/accounts/{long}"),
        "/v1/admin/accounts/acme/samples?day=../../etc/passwd".into(),
        "/v1/admin/accounts/acme/samples?day=2026-11-24%00".into(),
        "/v1/admin/accounts/acme/samples".into(),
        "/v1/admin/accounts/acme/samples?day=99999-01-01".into(),
        "/v1/admin/bills?account=acme'%20OR%201=1--".into(),
        "/v1/admin/bills?day=yesterday".into(),
        "/v1/admin/bills?format=xml".into(),
        "/v1/admin/outbox?pending=maybe".into(),
        format!("/v1/reports/daily?day={day}&account=..%2Frival"),
        format!("/v1/reports/daily?day={day}&account=nobody&format=html"),
        format!("/v1/reports/daily?day={day}&account=acme&format=pdf"),
        "/v1/reports/daily?day=2026-02-30&account=acme".into(),
        "/v1/reports/daily".into(),
        "/v1/admin/accounts/acme/clusters/..%2Fprod/rotate-token".into(),
        "/v1/admin//accounts/acme".into(),
        "/V1/ADMIN/ACCOUNTS/ACME".into(),
        "/v1/admin/accounts/acme?id=rival".into(),
    ]
}

/// The admin token with bodies every route must refuse, each with the statuses it may get.
fn bad_admin_bodies() -> Vec<(&'static str, &'static str, Vec<u8>, &'static [u16])> {
    const BAD: &[u16] = &[400, 422];
    const EXISTS: &[u16] = &[409];
    let accounts = "/v1/admin/accounts";
    let clusters = "/v1/admin/accounts/acme/clusters";
    let cap = "/v1/admin/accounts/acme/cap";
    let licences = "/v1/admin/accounts/acme/licenses";
    vec![
        ("POST", accounts, b"".to_vec(), BAD),
        ("POST", accounts, b"{".to_vec(), BAD),
        ("POST", accounts, br#"{"id":1}"#.to_vec(), BAD),
        ("POST", accounts, br#"{"id":""}"#.to_vec(), BAD),
        ("POST", accounts, br#"{"id":"a/b"}"#.to_vec(), BAD),
        ("POST", accounts, br#"{"id":"x\u0001"}"#.to_vec(), BAD),
        (
            "POST",
            accounts,
            br#"{"id":"evil","extra":1}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            accounts,
            format!(r#"{{"id":"{}"}}"#, "e".repeat(200)).into_bytes(),
            BAD,
        ),
        ("POST", accounts, b"{\"id\":\"\xff\"}".to_vec(), BAD),
        ("POST", accounts, br#"[{"id":"evil"}]"#.to_vec(), BAD),
        ("POST", accounts, br#"{"id":"acme"}"#.to_vec(), EXISTS),
        ("POST", clusters, br#"{"name":"a/b"}"#.to_vec(), BAD),
        ("POST", clusters, br#"{"name":""}"#.to_vec(), BAD),
        (
            "POST",
            clusters,
            br#"{"name":"x","token":"short"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            clusters,
            br#"{"name":"x","token":"cmc_ZZ"}"#.to_vec(),
            BAD,
        ),
        ("POST", clusters, br#"{"name":"prod"}"#.to_vec(), EXISTS),
        (
            "POST",
            clusters,
            br#"{"name":"x","account":"rival"}"#.to_vec(),
            BAD,
        ),
        ("PUT", cap, br#"{"cores":499}"#.to_vec(), BAD),
        ("PUT", cap, br#"{"cores":-1}"#.to_vec(), BAD),
        ("PUT", cap, br#"{"cores":1e400}"#.to_vec(), BAD),
        ("PUT", cap, br#"{"cores":"600"}"#.to_vec(), BAD),
        ("PUT", cap, br#"{"cores":4294967296}"#.to_vec(), BAD),
        ("PUT", cap, br#"{"cores":600.5}"#.to_vec(), BAD),
        ("PUT", cap, br#"{}"#.to_vec(), BAD),
        (
            "PUT",
            cap,
            br#"{"cores":600,"account":"rival"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            licences,
            br#"{"cores":10,"start":"soon","end":"2099-01-01T00:00:00Z"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            licences,
            br#"{"cores":10,"start":"2026-01-02T00:00:00Z","end":"2026-01-01T00:00:00Z"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            licences,
            br#"{"cores":-5,"start":"2026-01-01T00:00:00Z","end":"2026-02-01T00:00:00Z"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            licences,
            br#"{"cores":10,"start":"2026-01-01T00:00:00Z"}"#.to_vec(),
            BAD,
        ),
        (
            "POST",
            licences,
            br#"{"cores":10,"start":"2026-01-01T00:00:00","end":"2026-02-01T00:00:00Z"}"#.to_vec(),
            BAD,
        ),
    ]
}

/// Bytes at the edge of HTTP, without a token.
fn garbage(rng: &mut Rng) -> (Vec<u8>, bool) {
    let many_headers: String = (0..300).map(|i| format!("X-{i}: y\r\n")).collect();
    let fixed: Vec<Vec<u8>> = vec![
        format!("GET /readyz HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").into_bytes(),
        format!("GET /readyz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(100_000)).into_bytes(),
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(70_000)).into_bytes(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n123456".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /v1/samples HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"BREW /readyz HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"GET /%ZZ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n".to_vec(),
        b"GET /readyz\r\n\r\n".to_vec(),
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".to_vec(),
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n".to_vec(),
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"POST /v1/samples HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\xfd\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
    ];
    if rng.percent(60) {
        (rng.pick(&fixed).clone(), true)
    } else {
        let n = 1 + rng.below(300);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if rng.percent(50) {
            bytes.splice(0..0, b"POST /v1/samples HTTP/1.1\r\n".iter().copied());
        }
        (bytes, true)
    }
}

/// Wrong tokens, each as its whole `Authorization` header lines (none for no header).
fn bad_auth(rng: &mut Rng, t: &Tokens) -> Vec<Vec<u8>> {
    let acme = &t.acme;
    let mut flipped = acme.clone().into_bytes();
    let i = 4 + rng.below(64);
    flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let choices: Vec<Vec<Vec<u8>>> = vec![
        vec![],
        vec![b"Authorization: Bearer ".to_vec()],
        vec![b"Authorization: Bearer".to_vec()],
        vec![format!("Authorization: Basic {acme}").into_bytes()],
        vec![format!("Authorization: {acme}").into_bytes()],
        vec![bearer("cmc_wrong")],
        vec![bearer(&flipped)],
        vec![bearer(&acme.to_uppercase())],
        vec![bearer(&acme[..acme.len() - 1])],
        vec![bearer(&format!("{acme}0"))],
        vec![bearer(&acme.replacen("cmc_", "cma_", 1))],
        vec![bearer(&t.acme_dev_revoked)],
        vec![bearer(&t.admin)],
        vec![bearer(&"x".repeat(8_000))],
        vec![bearer(&format!("cmc_{}", "0".repeat(64)))],
        vec![[&b"Authorization: Bearer cmc_"[..], &[0xff, 0xfe, 0x80]].concat()],
        vec![format!("Authorization: Bearer {flipped}, Bearer {acme}").into_bytes()],
        vec![bearer(&flipped), bearer(acme)],
        vec![format!("X-Authorization: Bearer {acme}").into_bytes()],
        vec![format!("Cookie: token={acme}").into_bytes()],
    ];
    rng.pick(&choices).clone()
}

/// `n` hostile requests of every kind.
fn hostile_cases(
    rng: &mut Rng,
    n: usize,
    t: &Tokens,
    day: NaiveDate,
    fuzz_cases: &AtomicU64,
) -> Vec<Case> {
    const FORBIDDEN: &[u16] = &[403];
    // A known path with another method is 405 before any token is looked at.
    const NOT_ROUTED_OR_FORBIDDEN: &[u16] = &[403, 404, 405];
    const UNAUTHORIZED: &[u16] = &[401];
    const READ_ONLY: &[u16] = &[200, 400, 404, 405, 422];
    let routes = admin_routes(day);
    let paths = odd_paths(day);
    let bodies = bad_admin_bodies();
    let cluster_tokens = [&t.acme, &t.acme_dev, &t.rival, &t.canary];
    (0..n)
        .map(|i| {
            let kind = match i % 20 {
                0..=7 => Kind::MalformedIngest,
                8..=11 => Kind::UnauthorizedIngest,
                12..=13 => Kind::ClusterTokenOnAdmin,
                14 => Kind::BadTokenOnAdmin,
                15..=17 => Kind::MalformedAdmin,
                _ => Kind::Garbage,
            };
            let now = Utc::now();
            match kind {
                Kind::MalformedIngest => loop {
                    let body = hostile_body(rng);
                    fuzz_cases.fetch_add(1, Ordering::Relaxed);
                    // A body with a sample that would be stored is not sent.
                    let Some(expected) = expected_answer(&body, now) else {
                        continue;
                    };
                    let token = if rng.percent(50) { &t.acme } else { &t.rival };
                    break Case {
                        kind,
                        request: build("POST", "/v1/samples", &[bearer(token)], &body),
                        half_close: false,
                        check: Check::Ingest(expected),
                    };
                },
                Kind::UnauthorizedIngest => {
                    let body = good_batch(&format!("intruder-{i}"), 1, 3, now);
                    let auth = bad_auth(rng, t);
                    // The admin token is valid but not an agent's: 403 (issue 11's roles).
                    let check = if auth == [bearer(&t.admin)] {
                        Check::Status(FORBIDDEN, Some("forbidden"))
                    } else {
                        Check::Status(UNAUTHORIZED, Some("unauthorized"))
                    };
                    Case {
                        kind,
                        request: build("POST", "/v1/samples", &auth, body.as_bytes()),
                        half_close: false,
                        check,
                    }
                }
                Kind::ClusterTokenOnAdmin => {
                    let token = rng.pick(&cluster_tokens);
                    if rng.percent(80) {
                        let (method, path, body) = rng.pick(&routes);
                        Case {
                            kind,
                            request: build(method, path, &[bearer(token)], body.as_bytes()),
                            half_close: false,
                            check: Check::Status(FORBIDDEN, Some("forbidden")),
                        }
                    } else {
                        let path = rng.pick(&paths);
                        Case {
                            kind,
                            request: build("GET", path, &[bearer(token)], b""),
                            half_close: false,
                            check: Check::Status(NOT_ROUTED_OR_FORBIDDEN, None),
                        }
                    }
                }
                Kind::BadTokenOnAdmin => {
                    let (method, path, body) = rng.pick(&routes);
                    let auth = bad_auth(rng, t)
                        .into_iter()
                        .filter(|h| !h.ends_with(t.admin.as_bytes()))
                        .collect::<Vec<_>>();
                    Case {
                        kind,
                        request: build(method, path, &auth, body.as_bytes()),
                        half_close: false,
                        check: Check::Status(UNAUTHORIZED, Some("unauthorized")),
                    }
                }
                Kind::MalformedAdmin => {
                    if rng.percent(50) {
                        let path = rng.pick(&paths);
                        Case {
                            kind,
                            request: build("GET", path, &[bearer(&t.admin)], b""),
                            half_close: false,
                            check: Check::Status(READ_ONLY, None),
                        }
                    } else {
                        let (method, path, body, allowed) = rng.pick(&bodies);
                        Case {
                            kind,
                            request: build(method, path, &[bearer(&t.admin)], body),
                            half_close: false,
                            check: Check::Status(allowed, None),
                        }
                    }
                }
                Kind::Garbage => {
                    let (request, half_close) = garbage(rng);
                    Case {
                        kind,
                        request,
                        half_close,
                        check: Check::Garbage,
                    }
                }
            }
        })
        .collect()
}

/// Whether the answer is what the case allows; why not, if not.
fn judge(case: &Case, a: &Answer) -> Result<(), String> {
    // Refusing an unknown transfer coding or HTTP version is no server error.
    let refusal = matches!(case.check, Check::Garbage) && matches!(a.status, 501 | 505);
    if a.status >= 500 && !refusal {
        return Err(format!("a server error: {}", a.brief()));
    }
    match &case.check {
        Check::Ingest(Expected::Refused {
            status,
            code,
            field,
        }) => {
            if (
                a.status,
                a.error_code().as_deref(),
                a.error_field().as_deref(),
            ) != (*status, Some(*code), *field)
            {
                return Err(format!(
                    "expected {status} {code} {field:?}, got {}",
                    a.brief()
                ));
            }
        }
        Check::Ingest(Expected::Rejected(reasons)) => {
            let v = a.json();
            let got: Option<Vec<(&str, &str)>> = v["results"].as_array().map(|r| {
                r.iter()
                    .map(|x| {
                        (
                            x["status"].as_str().unwrap_or("?"),
                            x["reason"].as_str().unwrap_or("-"),
                        )
                    })
                    .collect()
            });
            let want: Vec<(&str, &str)> = reasons.iter().map(|r| ("rejected", *r)).collect();
            if a.status != 200 || got.as_ref() != Some(&want) {
                return Err(format!("expected 200 {want:?}, got {}", a.brief()));
            }
        }
        Check::Status(allowed, code) => {
            if !allowed.contains(&a.status) {
                return Err(format!("expected one of {allowed:?}, got {}", a.brief()));
            }
            // Every refusal is the API's error, the router's 405 too.
            if a.status >= 400 {
                let error = a.json();
                if error["error"]["code"].as_str().is_none_or(str::is_empty)
                    || error["error"]["message"].as_str().is_none_or(str::is_empty)
                {
                    return Err(format!("an error without code and message: {}", a.brief()));
                }
            }
            if let Some(code) = code {
                if a.error_code().as_deref() != Some(*code) {
                    return Err(format!("expected code {code}, got {}", a.brief()));
                }
            }
        }
        Check::Garbage => {
            let ok = a.status == 0 || (400..500).contains(&a.status) || matches!(a.status, 501 | 505)
                // HTTP/1.0 and bare-LF requests for /readyz are still requests.
                || (a.status == 200 && a.body.starts_with(b"ready"));
            if !ok {
                return Err(format!("garbage got {}", a.brief()));
            }
            // hyper's own 400, 414 and 431 carry the API's error as well.
            if (400..500).contains(&a.status) && a.error_code().is_none_or(|c| c.is_empty()) {
                return Err(format!(
                    "garbage got an error without a code: {}",
                    a.brief()
                ));
            }
        }
    }
    Ok(())
}

// ---- The service's state, health and logs.

/// What acme and rival hold: the account views, the audit trail of every
/// day they have samples on, and their bills.
fn snapshot(s: &Service, days: &BTreeSet<NaiveDate>) -> Value {
    let mut out = serde_json::Map::new();
    for account in ["acme", "rival"] {
        let (status, view) = s.admin("GET", &format!("/v1/admin/accounts/{account}"), None);
        assert_eq!(status, 200, "{view}");
        let audit: Vec<Value> = days
            .iter()
            .map(|d| json!({ "day": d, "samples": s.stored(account, &d.to_string()) }))
            .collect();
        let (status, bills) = s.admin("GET", &format!("/v1/admin/bills?account={account}"), None);
        assert_eq!(status, 200, "{bills}");
        out.insert(
            account.to_string(),
            json!({ "account": view, "audit": audit, "bills": bills }),
        );
    }
    Value::Object(out)
}

/// Good pushes from the canary account and readiness, checked all along.
#[derive(Default)]
struct Health {
    checks: u64,
    slowest_push: Duration,
    failures: Vec<String>,
}

fn canary_push(addr: SocketAddr, token: &str, seq: &AtomicU64) -> Result<Duration, String> {
    let seq = seq.fetch_add(1, Ordering::Relaxed);
    let body = json!({"samples": [{"node": "canary-1", "cores": 4, "at": rfc3339(Utc::now() - TimeDelta::minutes(10)),
                                   "seq": seq, "agent_version": "campaign"}]})
    .to_string();
    let started = Instant::now();
    let (status, answer) = request(addr, "POST", "/v1/samples", Some(token), Some(&body))
        .ok_or("the good push got no answer")?;
    let took = started.elapsed();
    let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
    if status != 200 || v["results"][0]["status"] != "accepted" {
        return Err(format!("a good push got {status} {answer}"));
    }
    if took > GOOD_PUSH_WITHIN {
        return Err(format!("a good push took {took:?}"));
    }
    Ok(took)
}

fn watch_health(
    addr: SocketAddr,
    token: &str,
    seq: &AtomicU64,
    stop: &AtomicBool,
    health: &Mutex<Health>,
) {
    while !stop.load(Ordering::Relaxed) {
        let ready = request(addr, "GET", "/readyz", None, None).map(|r| r.0);
        let pushed = canary_push(addr, token, seq);
        let mut h = health.lock().unwrap();
        h.checks += 1;
        if ready != Some(200) {
            h.failures.push(format!("/readyz answered {ready:?}"));
        }
        match pushed {
            Ok(took) => h.slowest_push = h.slowest_push.max(took),
            Err(e) => h.failures.push(e),
        }
        drop(h);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the cases on `CLIENTS` connections at once while the health watch
/// runs; returns the failures.
fn run_cases(
    addr: SocketAddr,
    cases: &[Case],
    t: &Tokens,
    seq: &AtomicU64,
    health: &Mutex<Health>,
) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| watch_health(addr, &t.canary, seq, &stop, health));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let verdict = exchange(addr, &case.request, case.half_close)
                        .and_then(|a| judge(case, &a));
                    if let Err(e) = verdict {
                        let shown =
                            String::from_utf8_lossy(&case.request[..case.request.len().min(300)])
                                .into_owned();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?} #{i}: {e}\n  request: {shown:?}", case.kind));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    failures.into_inner().unwrap()
}

/// The process's open descriptors.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The zone where it is about noon now, so no 02:00 billing run falls in the campaign.
fn zone_at_noon() -> String {
    let hour = Utc::now().hour() as i32;
    let mut offset = (12 - hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    // Etc/GMT-5 is five hours ahead of UTC.
    match offset {
        0 => "Etc/GMT".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

fn start(db: &Path, admin: &str, zone: &str, log: &Path, json_logs: bool) -> Service {
    let env = vec![
        ("RUST_LOG".to_string(), "debug".to_string()),
        (
            "CORE_METER_REQUEST_TIMEOUT_SECS".to_string(),
            REQUEST_TIMEOUT.as_secs().to_string(),
        ),
        ("CORE_METER_TIMEZONE".to_string(), zone.to_string()),
        ("CORE_METER_LOG_JSON".to_string(), json_logs.to_string()),
    ];
    let wrapper = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\""),
    ];
    Service::start_with(
        db,
        admin,
        &ServiceOptions {
            env,
            log: Some(log.to_path_buf()),
            wrapper,
            ..ServiceOptions::default()
        },
    )
}

// ---- Oversized bodies.

/// Sends the head and `first` bytes of a body that is not finished, and
/// waits for an answer: the service must answer before the body ends.
fn answer_before_the_body_ends(addr: SocketAddr, head: &[u8], first: &[u8]) -> (Answer, Duration) {
    let mut s = connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(head).unwrap();
    // The service may stop reading (and close) before all of it is written.
    let _ = s.write_all(first);
    let raw = read_to_close(&mut s).unwrap_or_default();
    (parse(&raw), started.elapsed())
}

fn oversized(addr: SocketAddr, t: &Tokens) -> usize {
    let mut checks = 0;
    let auth = format!("Authorization: Bearer {}\r\n", t.acme);
    let declared = |len: u64, with_auth: bool, extra: &str| {
        format!(
            "POST /v1/samples HTTP/1.1\r\nHost: a\r\n{}{extra}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            if with_auth { auth.as_str() } else { "" }
        )
        .into_bytes()
    };
    let too_large = |a: &Answer, took: Duration, what: &str| {
        assert_eq!(
            (a.status, a.error_code().as_deref()),
            (413, Some("too_large")),
            "{what}: {}",
            a.brief()
        );
        assert!(
            took < Duration::from_secs(2),
            "{what}: answered after {took:?}"
        );
    };

    // A declared 100 MiB with a few bytes sent, with and without a token,
    // and asking to continue: answered at once, nothing more read.
    for (with_auth, extra) in [(true, ""), (false, ""), (true, "Expect: 100-continue\r\n")] {
        let (a, took) = answer_before_the_body_ends(
            addr,
            &declared(100 << 20, with_auth, extra),
            b"{\"samples\": [",
        );
        too_large(&a, took, "100 MiB declared");
        assert!(
            !a.head.contains("100 Continue"),
            "no 100 Continue for a body refused: {}",
            a.head
        );
        checks += 1;
    }
    // One byte over the limit, declared.
    let (a, took) =
        answer_before_the_body_ends(addr, &declared(MAX_BATCH_BYTES as u64 + 1, true, ""), b"{");
    too_large(&a, took, "1 MiB + 1 declared");
    checks += 1;

    // Chunked: 1 MiB + 1 sent, then the client stalls without the last chunk.
    let chunked =
        format!("POST /v1/samples HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    let mut chunks = Vec::new();
    for _ in 0..16 {
        chunks.extend_from_slice(b"10000\r\n");
        chunks.extend(std::iter::repeat_n(b' ', 0x10000));
        chunks.extend_from_slice(b"\r\n");
    }
    chunks.extend_from_slice(b"1\r\n \r\n");
    let (a, took) = answer_before_the_body_ends(addr, &chunked, &chunks);
    too_large(&a, took, "chunked 1 MiB + 1, then a stall");
    checks += 1;

    // Chunked, exactly 1 MiB of a valid batch: answered, not refused.
    let mut exact = b"{\"samples\":[".to_vec();
    exact.extend(std::iter::repeat_n(b' ', MAX_BATCH_BYTES - exact.len() - 2));
    exact.extend_from_slice(b"]}");
    let mut body = Vec::new();
    for piece in exact.chunks(100_000) {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut request = format!("POST /v1/samples HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    request.extend(body);
    let a = exchange(addr, &request, false).unwrap();
    assert_eq!(
        (a.status, a.json()["results"].as_array().map(Vec::len)),
        (200, Some(0)),
        "exactly 1 MiB: {}",
        a.brief()
    );
    checks += 1;

    // 1,001 small samples: refused whole, naming `samples`.
    let many = format!(
        "{{\"samples\":[{}]}}",
        vec!["{\"cores\":8}"; MAX_BATCH_SAMPLES + 1].join(",")
    );
    let a = exchange(
        addr,
        &build("POST", "/v1/samples", &[bearer(&t.acme)], many.as_bytes()),
        false,
    )
    .unwrap();
    assert_eq!(
        (
            a.status,
            a.error_code().as_deref(),
            a.error_field().as_deref()
        ),
        (413, Some("too_many_samples"), Some("samples")),
        "{}",
        a.brief()
    );
    checks += 1;

    // The admin API has the same limit.
    let (a, took) = answer_before_the_body_ends(
        addr,
        format!("POST /v1/admin/accounts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", t.admin).as_bytes(),
        &chunks,
    );
    assert_eq!(a.status, 413, "admin, chunked 1 MiB + 1: {}", a.brief());
    assert!(took < Duration::from_secs(2));
    checks += 1;
    checks
}

// ---- Slow clients.

/// How long until the server closes a connection that sends `drip` one byte
/// a second after `head`; and what it answered, if anything.
fn cut_off_after(addr: SocketAddr, head: &[u8], drip: &[u8]) -> (Duration, Answer) {
    let mut s = connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1_000)))
        .unwrap();
    let started = Instant::now();
    s.write_all(head).unwrap();
    let mut raw = Vec::new();
    let mut sent = 0;
    let limit = REQUEST_TIMEOUT * 4;
    while started.elapsed() < limit {
        if sent < drip.len() && s.write_all(&drip[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return (started.elapsed(), parse(&raw)),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (started.elapsed(), parse(&raw)),
        }
    }
    panic!("a slow client was still connected after {limit:?}");
}

fn slow_clients(addr: SocketAddr, t: &Tokens, seq: &AtomicU64) -> usize {
    let bound = REQUEST_TIMEOUT + TIMEOUT_SLACK;
    let head = format!(
        "POST /v1/samples HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        t.acme
    );
    let crowd = 40;
    std::thread::scope(|scope| {
        // Headers a byte a second: cut off at the header read timeout, unanswered.
        let headers = scope.spawn(|| cut_off_after(addr, b"", head.as_bytes()));
        // A body a byte a second: 503 at the request timeout.
        let body = scope.spawn(|| cut_off_after(addr, head.as_bytes(), &[b' '; 100]));
        // A connection that sends nothing.
        let idle = scope.spawn(|| cut_off_after(addr, b"", b""));
        // A kept-alive connection that goes quiet after one request.
        let kept = scope.spawn(|| {
            let mut s = connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 512];
            let n = s.read(&mut answer).unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
            let started = Instant::now();
            let _ = s.read(&mut answer);
            started.elapsed()
        });
        // A crowd dripping headers while good pushes go on.
        let drippers: Vec<_> = (0..crowd)
            .map(|_| scope.spawn(|| cut_off_after(addr, b"", head.as_bytes()).0))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..5 {
            canary_push(addr, &t.canary, seq).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }

        let (slow_head, answer) = headers.join().unwrap();
        assert!(
            slow_head <= bound,
            "slow headers cut off after {slow_head:?}"
        );
        assert_eq!(
            answer.status,
            0,
            "slow headers get no answer: {}",
            answer.brief()
        );
        let (slow_body, answer) = body.join().unwrap();
        assert!(
            slow_body <= bound,
            "a slow body cut off after {slow_body:?}"
        );
        assert_eq!(answer.status, 503, "a slow body: {}", answer.brief());
        let (quiet, _) = idle.join().unwrap();
        assert!(quiet <= bound, "an idle connection closed after {quiet:?}");
        let kept_alive = kept.join().unwrap();
        assert!(
            kept_alive <= bound,
            "a quiet kept-alive connection closed after {kept_alive:?}"
        );
        let mut slowest_dripper = Duration::ZERO;
        for d in drippers {
            let took = d.join().unwrap();
            assert!(took <= bound, "a dripping client cut off after {took:?}");
            slowest_dripper = slowest_dripper.max(took);
        }
        eprintln!(
            "campaign: hostile: cut off (bound {bound:?}): headers at 1 B/s after {slow_head:.1?}, a body at 1 B/s (503) after {slow_body:.1?}, \
             a silent connection after {quiet:.1?}, a quiet kept-alive one after {kept_alive:.1?}, {crowd} drippers after at most {slowest_dripper:.1?}"
        );
    });
    4 + crowd
}

/// More idle connections than the cap: the service never runs out of
/// descriptors, and answers again once the idle ones time out.
fn flood_past_the_cap(s: &Service) -> usize {
    let pid = s.child.id();
    let before = open_descriptors(pid);
    let flood = CONNECTION_CAP + 40;
    let idle: Vec<TcpStream> = (0..flood).map(|_| connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(700));
    let during = open_descriptors(pid);
    assert!(
        during < OPEN_FILES - 16,
        "{during} descriptors open with {flood} idle connections (limit {OPEN_FILES})"
    );
    let started = Instant::now();
    let ready = request(s.addr, "GET", "/readyz", None, None).map(|r| r.0);
    let took = started.elapsed();
    assert_eq!(ready, Some(200), "/readyz behind the flood");
    assert!(
        took <= REQUEST_TIMEOUT + TIMEOUT_SLACK,
        "/readyz waited {took:?} behind the flood"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    eprintln!(
        "campaign: hostile: {flood} idle connections past a cap of {CONNECTION_CAP}: {before} descriptors before, {during} during; /readyz answered in {took:?}"
    );
    flood
}

// ---- Accounts.

/// A cluster token decides the account; nothing in the body does, and a
/// node and seq another account has are not this account's duplicate.
fn cross_account(s: &Service, t: &Tokens, now: DateTime<Utc>, zone: &BillingZone) -> usize {
    let day = zone.day_of(now);
    let mut checks = 0;
    // canary pushes rival's own node and seqs, claiming to be rival.
    let mut batch: Value = serde_json::from_str(&good_batch("n1", 1, 5, now)).unwrap();
    batch["account"] = json!("rival");
    batch["cluster"] = json!("prod");
    for sample in batch["samples"].as_array_mut().unwrap() {
        sample["account"] = json!("rival");
        sample["cluster"] = json!("prod");
    }
    let body = batch.to_string();
    for expected in ["accepted", "duplicate"] {
        let (status, answer) =
            request(s.addr, "POST", "/v1/samples", Some(&t.canary), Some(&body)).unwrap();
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(status, 200, "{answer}");
        assert!(
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == expected),
            "canary's push of rival's node and seqs: {answer}"
        );
        checks += 1;
    }
    let canary_days: BTreeSet<NaiveDate> = (1..=5)
        .map(|h| zone.day_of(now - TimeDelta::hours(h)))
        .collect();
    let stored: usize = canary_days
        .iter()
        .map(|d| {
            s.stored("canary", &d.to_string())
                .iter()
                .filter(|x| x["node"] == "n1")
                .count()
        })
        .sum();
    assert_eq!(stored, 5, "the samples are canary's");
    // A cluster token reads nothing: not another account's, not its own.
    for path in [
        format!("/v1/admin/accounts/rival/samples?day={day}"),
        format!("/v1/admin/accounts/canary/samples?day={day}"),
        format!("/v1/reports/daily?day={day}&account=rival"),
        "/v1/admin/bills?account=rival".to_string(),
        "/v1/admin/accounts/rival".to_string(),
    ] {
        let a = exchange(
            s.addr,
            &build("GET", &path, &[bearer(&t.canary)], b""),
            false,
        )
        .unwrap();
        assert_eq!(
            (a.status, a.error_code().as_deref()),
            (403, Some("forbidden")),
            "{path}: {}",
            a.brief()
        );
        checks += 1;
    }
    // The revoked token is refused; the rotated one works, for acme's dev cluster only.
    let a = exchange(
        s.addr,
        &build(
            "POST",
            "/v1/samples",
            &[bearer(&t.acme_dev_revoked)],
            good_batch("dev-1", 1, 1, now).as_bytes(),
        ),
        false,
    )
    .unwrap();
    assert_eq!(a.status, 401, "{}", a.brief());
    checks += 1;
    checks
}

// ---- Logs.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every trace of a secret a log could hold: the token, its random part, a
/// prefix of that, and its SHA-256 in hex.
fn traces(token: &str) -> Vec<String> {
    let random = token.split_once('_').map_or(token, |(_, r)| r);
    let hash = hex(&aggregator::security::tokens::hash_token(token));
    vec![
        token.to_string(),
        random.to_string(),
        random[..16.min(random.len())].to_string(),
        hash.clone(),
        hash.to_uppercase(),
        hash[..16].to_string(),
    ]
}

fn tokens_in(log: &str, t: &Tokens) -> Vec<String> {
    t.all()
        .iter()
        .flat_map(|token| traces(token))
        .filter(|trace| log.contains(trace.as_str()))
        .collect()
}

fn panics_in(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("internal error"))
        .count()
}

#[test]
fn hostile_input_leaves_the_service_healthy_its_data_unchanged_and_no_token_in_its_logs() {
    let campaign = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let (text_log, json_log) = (dir.path().join("text.log"), dir.path().join("json.log"));
    let zone = zone_at_noon();
    let billing_zone = BillingZone::from_str(&zone).unwrap();
    let seed = std::env::var("CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64);
    eprintln!("campaign: hostile: seed {seed} (CAMPAIGN_SEED repeats it), zone {zone}");
    let mut rng = Rng(seed);
    let admin = aggregator::security::tokens::new_token("cma");

    // ---- Text logs: the accounts, their data, then the attack.
    let s = start(&db, &admin, &zone, &text_log, false);
    let acme = s.account_with_cluster("acme", "prod");
    let (status, v) = s.admin(
        "POST",
        "/v1/admin/accounts/acme/clusters",
        Some(r#"{"name":"dev"}"#),
    );
    assert_eq!(status, 201);
    let acme_dev_revoked = v["token"].as_str().unwrap().to_string();
    let (status, v) = s.admin(
        "POST",
        "/v1/admin/accounts/acme/clusters/dev/rotate-token",
        None,
    );
    assert_eq!(status, 200);
    let acme_dev = v["token"].as_str().unwrap().to_string();
    let rival = s.account_with_cluster("rival", "prod");
    let canary = s.account_with_cluster("canary", "prod");
    let t = Tokens {
        admin: admin.clone(),
        acme,
        acme_dev,
        acme_dev_revoked,
        rival,
        canary,
    };
    let (status, _) = s.admin(
        "PUT",
        "/v1/admin/accounts/acme/cap",
        Some(r#"{"cores":600}"#),
    );
    assert_eq!(status, 200);

    // 60 hours of samples for two of acme's nodes and one of rival's (the
    // same node name as acme's), then a billing run: lines for the past days.
    let now = Utc::now();
    let hours = 60;
    for (token, node) in [(&t.acme, "n1"), (&t.acme, "n2"), (&t.rival, "n1")] {
        let (status, answer) = request(
            s.addr,
            "POST",
            "/v1/samples",
            Some(token),
            Some(&good_batch(node, 1, hours, now)),
        )
        .unwrap();
        assert_eq!(status, 200, "{answer}");
        assert!(!answer.contains("rejected"), "{answer}");
    }
    let (status, _) = s.admin("POST", "/v1/admin/billing-runs", None);
    assert_eq!(status, 200);
    let days: BTreeSet<NaiveDate> = (0..=hours as i64 + 1)
        .map(|h| billing_zone.day_of(now - TimeDelta::hours(h)))
        .collect();
    let today = billing_zone.day_of(now);
    let before = snapshot(&s, &days);
    for account in ["acme", "rival"] {
        assert!(
            !before[account]["bills"]["bills"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{account} has bills to protect"
        );
    }

    let fuzz_cases = AtomicU64::new(0);
    let canary_seq = AtomicU64::new(1_000);
    let health = Mutex::new(Health::default());
    let mut failures = Vec::new();
    let mut counts: HashMap<Kind, usize> = HashMap::new();
    let (mut ingest_refused, mut ingest_answered, mut ingest_samples) = (0, 0, 0);
    let half = HOSTILE_REQUESTS / 2;
    let cases = hostile_cases(&mut rng, half, &t, today, &fuzz_cases);
    for c in &cases {
        *counts.entry(c.kind).or_default() += 1;
        match &c.check {
            Check::Ingest(Expected::Refused { .. }) => ingest_refused += 1,
            Check::Ingest(Expected::Rejected(r)) => {
                ingest_answered += 1;
                ingest_samples += r.len();
            }
            _ => {}
        }
    }
    let started = Instant::now();
    failures.extend(run_cases(s.addr, &cases, &t, &canary_seq, &health));
    eprintln!(
        "campaign: hostile: {half} hostile requests (text logs) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut oversized_checks = oversized(s.addr, &t);
    let slow = slow_clients(s.addr, &t, &canary_seq);
    let flood = flood_past_the_cap(&s);
    assert!(
        s.log_text()
            .contains(&format!("max_connections={CONNECTION_CAP}")),
        "the cap follows the open-files limit"
    );
    assert!(s.log_text().contains("connection cap reached"));
    assert_eq!(
        request(s.addr, "GET", "/readyz", None, None).map(|r| r.0),
        Some(200)
    );
    let middle = snapshot(&s, &days);
    drop(s);

    // ---- JSON logs, same database: the rest of the attack.
    let s = start(&db, &admin, &zone, &json_log, true);
    assert_eq!(snapshot(&s, &days), middle, "a restart changes nothing");
    let cases = hostile_cases(&mut rng, HOSTILE_REQUESTS - half, &t, today, &fuzz_cases);
    for c in &cases {
        *counts.entry(c.kind).or_default() += 1;
        match &c.check {
            Check::Ingest(Expected::Refused { .. }) => ingest_refused += 1,
            Check::Ingest(Expected::Rejected(r)) => {
                ingest_answered += 1;
                ingest_samples += r.len();
            }
            _ => {}
        }
    }
    let started = Instant::now();
    failures.extend(run_cases(s.addr, &cases, &t, &canary_seq, &health));
    eprintln!(
        "campaign: hostile: {} hostile requests (JSON logs) in {:.1} s",
        HOSTILE_REQUESTS - half,
        started.elapsed().as_secs_f64()
    );
    oversized_checks += oversized(s.addr, &t);
    let cross = cross_account(&s, &t, now, &billing_zone);

    // Bodies checked in this process only, by the route's own functions.
    let offline = Instant::now();
    for _ in 0..OFFLINE_FUZZ_CASES {
        let body = hostile_body(&mut rng);
        fuzz_cases.fetch_add(1, Ordering::Relaxed);
        let _ = expected_answer(&body, Utc::now());
    }
    eprintln!(
        "campaign: hostile: {OFFLINE_FUZZ_CASES} more bodies decoded and validated in this process in {:.1} s",
        offline.elapsed().as_secs_f64()
    );

    // ---- Still healthy, still quick, nothing changed.
    assert_eq!(
        request(s.addr, "GET", "/readyz", None, None).map(|r| r.0),
        Some(200)
    );
    for _ in 0..5 {
        canary_push(s.addr, &t.canary, &canary_seq).unwrap();
    }
    let after = snapshot(&s, &days);
    let data_changed = after != before;
    let text = std::fs::read_to_string(&text_log).unwrap();
    let json_text = std::fs::read_to_string(&json_log).unwrap();
    drop(s);

    let health = health.into_inner().unwrap();
    let shown: Vec<&String> = failures.iter().take(10).collect();
    assert!(
        failures.is_empty(),
        "{} of {HOSTILE_REQUESTS} hostile requests were answered wrongly; the first:\n{shown:#?}",
        failures.len()
    );
    assert!(
        health.failures.is_empty(),
        "health checks failed: {:?}",
        health.failures
    );
    assert!(health.checks >= 10, "{} health checks", health.checks);
    assert_eq!(after, before, "the data of acme and rival changed");

    // Debug logs, in both formats, with no token and no hash.
    assert!(text.contains(" DEBUG "), "text logs at debug level");
    assert!(
        json_text.contains("\"level\":\"DEBUG\""),
        "JSON logs at debug level"
    );
    assert!(json_text
        .lines()
        .all(|l| l.trim().is_empty() || serde_json::from_str::<Value>(l).is_ok()));
    let leaked: Vec<String> = [&text, &json_text]
        .iter()
        .flat_map(|log| tokens_in(log, &t))
        .collect();
    assert!(
        leaked.is_empty(),
        "secrets in the logs: {} traces",
        leaked.len()
    );
    let panics = panics_in(&text) + panics_in(&json_text);
    assert_eq!(panics, 0, "the service panicked");

    let unauthorized: usize = counts
        .iter()
        .filter(|(k, _)| k.unauthorized())
        .map(|(_, n)| n)
        .sum::<usize>()
        + cross;
    let bad_requests: usize = counts
        .iter()
        .filter(|(k, _)| !k.unauthorized())
        .map(|(_, n)| n)
        .sum();
    let took = campaign.elapsed();
    eprintln!(
        "campaign: hostile: malformed ingest bodies: {ingest_refused} refused whole as decode_batch said, \
         {ingest_answered} answered sample by sample ({ingest_samples} samples, each with the reason validate gave)"
    );
    eprintln!(
        "campaign: hostile: health checks {} (slowest good push {:?}), {:?} by kind, {:.1} s",
        health.checks,
        health.slowest_push,
        counts,
        took.as_secs_f64()
    );
    eprintln!(
        "campaign: hostile: bad_requests={bad_requests} unauthorized={unauthorized} oversized={oversized_checks} slow_clients={} fuzz_cases={} panics={panics} data_changed={data_changed} tokens_in_logs={}",
        slow + flood,
        fuzz_cases.load(Ordering::Relaxed),
        leaked.len()
    );
    assert!(took < BUDGET, "the campaign took {took:?}");
}
