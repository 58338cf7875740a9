//! Pushing samples to the aggregator: one HTTP request per batch, errors sorted into those worth retrying and those not, and the backoff between tries.

use std::time::Duration;

use shared::wire::{AgentSample, IngestResponse, SampleBatch, SampleResult, SAMPLES_PATH};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect to the aggregator: {0}")]
    Connect(String),
    #[error("the aggregator did not answer in time")]
    Timeout,
    #[error("the aggregator asks to slow down (429)")]
    Throttled,
    #[error("the aggregator failed ({0})")]
    Server(u16),
    #[error("the aggregator refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the aggregator's answer is not what SPEC section 9 describes: {0}")]
    Decode(String),
    #[error("{0}")]
    Token(String),
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
            PushError::Throttled => "throttled",
            PushError::Server(_) => "server",
            PushError::Refused { .. } => "refused",
            PushError::Decode(_) => "decode",
            PushError::Token(_) => "token",
        }
    }
}

#[derive(Clone)]
pub struct Pusher {
    client: reqwest::Client,
    url: String,
}

impl Pusher {
    pub fn new(aggregator: &str, timeout: Duration) -> anyhow::Result<Pusher> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("core-meter-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Pusher {
            client,
            url: format!("{}{SAMPLES_PATH}", aggregator.trim_end_matches('/')),
        })
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
            .map_err(classify)?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(PushError::Throttled);
        }
        if status.is_server_error() {
            return Err(PushError::Server(status.as_u16()));
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

fn classify(e: reqwest::Error) -> PushError {
    if e.is_timeout() {
        PushError::Timeout
    } else {
        PushError::Connect(format!("{e}"))
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
        assert!(PushError::Throttled.retryable());
        assert!(PushError::Server(503).retryable());
        assert!(PushError::Connect("refused".into()).retryable());
        assert!(!PushError::Refused {
            status: 401,
            body: String::new()
        }
        .retryable());
    }
}
