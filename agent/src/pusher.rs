//! Pushing samples to the aggregator: one HTTP request per batch, errors sorted into those worth retrying and those not, and the backoff between tries.

use std::time::Duration;

use shared::wire::{
    AgentSample, IngestResponse, SampleBatch, SampleResult, IMAGES_PATH, SAMPLES_PATH,
};

use crate::tls::{error_chain, tls_failure, ClientTls, TlsFailure};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect to the aggregator: {0}")]
    Connect(String),
    #[error("the aggregator did not answer in time")]
    Timeout,
    #[error("the aggregator asks to slow down (429){}", colon(.detail))]
    Throttled { detail: String },
    #[error("the aggregator failed ({status}){}", colon(.detail))]
    Server { status: u16, detail: String },
    #[error("the aggregator refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the aggregator's answer is not what SPEC section 9 describes: {0}")]
    Decode(String),
    #[error("{0}")]
    Token(String),
    /// The aggregator's certificate could not be verified, or the TLS
    /// handshake failed: never accepted, always said loudly.
    #[error("{0}")]
    Tls(String),
}

impl PushError {
    /// Connection errors, timeouts, 5xx and 429 are retried with backoff;
    /// another 4xx will not change by itself.
    pub fn retryable(&self) -> bool {
        !matches!(self, PushError::Refused { .. } | PushError::Token(_))
    }

    /// The `kind` label of the push error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            PushError::Connect(_) => "connect",
            PushError::Timeout => "timeout",
            PushError::Throttled { .. } => "throttled",
            PushError::Server { .. } => "server",
            PushError::Refused { .. } => "refused",
            PushError::Decode(_) => "decode",
            PushError::Token(_) => "token",
            PushError::Tls(_) => "tls",
        }
    }
}

#[derive(Clone)]
pub struct Pusher {
    client: reqwest::Client,
    url: String,
    /// What the aggregator's certificate is verified against, for errors.
    roots: String,
}

impl Pusher {
    /// A pusher that verifies an `https://` aggregator against the system's roots.
    pub fn new(aggregator: &str, timeout: Duration) -> anyhow::Result<Pusher> {
        Pusher::with_tls(aggregator, timeout, &ClientTls::default())
    }

    pub fn with_tls(
        aggregator: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> anyhow::Result<Pusher> {
        Ok(Pusher {
            client: http_client(timeout, tls)?,
            url: format!("{}{SAMPLES_PATH}", aggregator.trim_end_matches('/')),
            roots: tls.roots(),
        })
    }

    /// Sends the node's image list; on a 2xx, the aggregator's answer.
    pub async fn push_images(
        &self,
        list: &serde_json::Value,
        token: &str,
    ) -> Result<serde_json::Value, PushError> {
        let url = self.url.replace(SAMPLES_PATH, IMAGES_PATH);
        let response = self
            .client
            .post(&url)
            .bearer_auth(token)
            .json(list)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let status = response.status();
        if !status.is_success() {
            let detail = error_detail(&read_prefix(response, ERROR_BODY_READ).await);
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                PushError::Server {
                    status: status.as_u16(),
                    detail,
                }
            } else {
                PushError::Refused {
                    status: status.as_u16(),
                    body: detail,
                }
            });
        }
        response
            .json()
            .await
            .map_err(|e| PushError::Decode(e.to_string()))
    }

    /// Sends one batch; on success, one result per sample in batch order.
    pub async fn push(
        &self,
        samples: &[AgentSample],
        token: &str,
    ) -> Result<Vec<SampleResult>, PushError> {
        let body = SampleBatch {
            samples: samples.to_vec(),
        };
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let status = response.status();
        if status.as_u16() == 429 {
            let detail = error_detail(&read_prefix(response, ERROR_BODY_READ).await);
            return Err(PushError::Throttled { detail });
        }
        if status.is_server_error() {
            // The node's log should say why (`disk_full`, ...), not just 503.
            let detail = error_detail(&read_prefix(response, ERROR_BODY_READ).await);
            return Err(PushError::Server {
                status: status.as_u16(),
                detail,
            });
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(PushError::Refused {
                status: status.as_u16(),
                body: body.chars().take(500).collect(),
            });
        }
        let answer: IngestResponse = response
            .json()
            .await
            .map_err(|e| PushError::Decode(e.to_string()))?;
        let mut results = answer.results;
        results.sort_by_key(|r| r.index);
        let complete =
            results.len() == samples.len() && results.iter().enumerate().all(|(i, r)| r.index == i);
        if !complete {
            return Err(PushError::Decode(format!(
                "{} results for {} samples",
                results.len(),
                samples.len()
            )));
        }
        Ok(results)
    }
}

/// The agent's one way to build a client for the aggregator: `timeout` per
/// request, TLS as `tls` says, no redirects.
pub(crate) fn http_client(timeout: Duration, tls: &ClientTls) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("core-meter-agent/", env!("CARGO_PKG_VERSION")))
        // The aggregator never redirects; following one could carry the
        // token to another host or down to plain HTTP.
        .redirect(reqwest::redirect::Policy::none());
    tls.apply(builder)?
        .build()
        .map_err(|e| anyhow::anyhow!("build the HTTP client: {e}"))
}

/// A request that got no answer, sorted: a TLS failure (said with `roots`,
/// what the certificate was verified against), a timeout, or no connection.
pub(crate) fn send_error(e: reqwest::Error, roots: &str) -> PushError {
    match tls_failure(&e) {
        Some(TlsFailure::ServerCertificate(why)) => PushError::Tls(format!(
            "the aggregator's certificate could not be verified against {roots}: {why}"
        )),
        Some(TlsFailure::Handshake(why)) => PushError::Tls(format!(
            "the TLS handshake with the aggregator failed: {why}"
        )),
        None if e.is_timeout() => PushError::Timeout,
        None => PushError::Connect(error_chain(&e)),
    }
}

/// How much of an error answer is read, and how much of it is kept for the log.
const ERROR_BODY_READ: usize = 4096;
const ERROR_DETAIL_CHARS: usize = 300;

/// The first `limit` bytes of the body (fewer if reading it fails): a
/// misbehaving proxy's endless page is not read to its end.
pub(crate) async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(limit);
    body
}

/// What an error answer says, for one log line: `code: message` from the
/// aggregator's `{"error": {"code", "message"}}`, otherwise the text itself;
/// on one line, at most `ERROR_DETAIL_CHARS` characters.
pub(crate) fn error_detail(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let text = match error.and_then(|e| e["code"].as_str()) {
        Some(code) => match error.and_then(|e| e["message"].as_str()) {
            Some(message) => format!("{code}: {message}"),
            None => code.to_string(),
        },
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let mut one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_DETAIL_CHARS + 1)
        .collect();
    if one_line.chars().count() > ERROR_DETAIL_CHARS {
        one_line = one_line.chars().take(ERROR_DETAIL_CHARS).collect();
        one_line.push_str("...");
    }
    one_line
}

pub(crate) fn colon(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Pusher {
    fn classify(&self, e: reqwest::Error) -> PushError {
        send_error(e, &self.roots)
    }
}

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(cap, base * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next try, and one more failure counted.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for n in 0..12 {
            let ceiling = Duration::from_secs(1u64 << n).min(Duration::from_secs(60));
            assert!(b.next_wait() <= ceiling);
        }
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }

    #[test]
    fn only_other_4xx_are_not_retried() {
        assert!(PushError::Timeout.retryable());
        assert!(PushError::Throttled {
            detail: String::new()
        }
        .retryable());
        assert!(PushError::Server {
            status: 503,
            detail: String::new()
        }
        .retryable());
        assert!(PushError::Connect("refused".into()).retryable());
        assert!(!PushError::Refused {
            status: 401,
            body: String::new()
        }
        .retryable());
    }

    #[test]
    fn a_server_error_names_the_aggregators_code_and_message() {
        let body = br#"{"error":{"code":"disk_full","message":"the disk is full; nothing of this request was stored","field":null}}"#;
        let e = PushError::Server {
            status: 503,
            detail: error_detail(body),
        };
        assert_eq!(
            e.to_string(),
            "the aggregator failed (503): disk_full: the disk is full; nothing of this request was stored"
        );
    }

    #[test]
    fn an_error_body_that_is_not_the_aggregators_is_kept_short_and_on_one_line() {
        assert_eq!(error_detail(b""), "");
        assert_eq!(
            error_detail(b"<html>\nBad gateway\n</html>"),
            "<html> Bad gateway </html>"
        );
        let long = error_detail("x".repeat(5000).as_bytes());
        assert_eq!(long.chars().count(), ERROR_DETAIL_CHARS + 3);
        assert!(long.ends_with("..."));
        assert_eq!(
            PushError::Server {
                status: 502,
                detail: String::new()
            }
            .to_string(),
            "the aggregator failed (502)"
        );
    }
}
