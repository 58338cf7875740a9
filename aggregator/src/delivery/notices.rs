//! Notice delivery: each issued notice is POSTed to the notification webhook with its idempotency key and a signature, and emailed to each of its email addresses through the SMTP relay; every row is retried with backoff until its channel takes it, and the queue is the store's, so it survives restarts.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::worker::{self, post_signed, Queue};
use crate::config::{redact_relay, SmtpConfig, WebhookConfig};
use crate::metrics::ChannelLabels;
use crate::state::AppState;
use crate::store::{DueNotice, Notice, NoticeChannel, Recipient, Store, StoreError};
use std::sync::Arc;

/// The header every notice email carries: `notice/<id>`, the webhook's
/// idempotency key, so a duplicate is easy to spot.
pub const NOTICE_HEADER: &str = "X-Core-Meter-Notice";

/// The notice queues, as their workers name them.
pub const BY_WEBHOOK: &str = "notices to the notification webhook";
pub const BY_EMAIL: &str = "notices by email";

/// Delivers notices on every configured channel until `stop`. The channels
/// run side by side, so a relay that is down (each attempt waiting out its
/// timeout) never holds back the webhook, nor the other way round.
pub async fn run(state: Arc<AppState>, poll: Duration, stop: watch::Receiver<bool>) {
    let notices = state.config.notices.clone();
    let webhook = async {
        if let Some(sender) = notices.webhook.and_then(Sender::webhook) {
            worker::run(
                state.clone(),
                Arc::new(sender),
                poll,
                Some(state.notice_wake.clone()),
                stop.clone(),
            )
            .await;
        }
    };
    let email = async {
        if let Some(sender) = notices.smtp.and_then(Sender::email) {
            worker::run(
                state.clone(),
                Arc::new(sender),
                poll,
                Some(state.notice_wake.clone()),
                stop.clone(),
            )
            .await;
        }
    };
    tokio::join!(webhook, email);
}

/// One channel's way out.
enum Sender {
    Webhook {
        client: reqwest::Client,
        config: WebhookConfig,
    },
    Email {
        /// Boxed: the transport is many times the webhook client's size.
        mailer: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
        config: SmtpConfig,
    },
}

impl Sender {
    fn webhook(config: WebhookConfig) -> Option<Sender> {
        match worker::webhook_client(&config) {
            Ok(client) => {
                tracing::info!(url = %config.url, "delivering notices to the notification webhook");
                Some(Sender::Webhook { client, config })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the notification webhook client; notices stay in the outbox");
                None
            }
        }
    }

    fn email(config: SmtpConfig) -> Option<Sender> {
        let relay = redact_relay(&config.relay);
        // Config::load checked both; a failure here is a bug, logged, not a panic.
        let built = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.relay)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let from = config.from.parse::<Mailbox>().map_err(|e| e.to_string())?;
                Ok((Box::new(b.timeout(Some(config.timeout)).build()), from))
            });
        match built {
            Ok((mailer, from)) => {
                tracing::info!(%relay, "emailing notices through the SMTP relay");
                Some(Sender::Email {
                    mailer,
                    from,
                    config,
                })
            }
            Err(e) => {
                tracing::error!(%relay, error = %e, "cannot set up the SMTP relay; notice emails stay in the outbox");
                None
            }
        }
    }

    fn channel(&self) -> NoticeChannel {
        match self {
            Sender::Webhook { .. } => NoticeChannel::Webhook,
            Sender::Email { .. } => NoticeChannel::Email,
        }
    }
}

impl Queue for Sender {
    type Item = DueNotice;

    fn what(&self) -> &'static str {
        match self {
            Sender::Webhook { .. } => BY_WEBHOOK,
            Sender::Email { .. } => BY_EMAIL,
        }
    }

    /// The longest one delivery may take.
    fn timeout(&self) -> Duration {
        match self {
            Sender::Webhook { config, .. } => config.timeout,
            Sender::Email { config, .. } => config.timeout,
        }
    }

    fn max_backoff(&self) -> Duration {
        match self {
            Sender::Webhook { config, .. } => config.max_backoff,
            Sender::Email { config, .. } => config.max_backoff,
        }
    }

    /// One attempt; `Err` says why it failed, for the row's `last_error`.
    fn attempts(item: &DueNotice) -> u32 {
        item.attempts
    }

    fn claim(
        &self,
        store: &mut Store,
        now: DateTime<Utc>,
        limit: usize,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<DueNotice>, StoreError> {
        store
            .delivery()
            .claim_notice_deliveries(now, self.channel(), limit, lease_until)
    }

    fn release(
        &self,
        store: &mut Store,
        items: &[DueNotice],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store.delivery().release_notice_claims(items, now)
    }

    fn next_due(&self, store: &mut Store) -> Result<Option<DateTime<Utc>>, StoreError> {
        store.delivery().next_notice_delivery_at(self.channel())
    }

    fn mark_delivered(
        &self,
        store: &mut Store,
        d: &DueNotice,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store
            .delivery()
            .mark_notice_delivered(d.notice.id, d.channel, &d.address, now)
    }

    fn mark_failed(
        &self,
        store: &mut Store,
        d: &DueNotice,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store
            .delivery()
            .mark_notice_failed(d.notice.id, d.channel, &d.address, error, retry_at)
    }

    fn delivered(&self, state: &AppState, d: &DueNotice) {
        state
            .metrics
            .notices_delivered
            .get_or_create(&labels(d.channel))
            .inc();
        tracing::info!(
            notice = d.notice.id,
            account = %d.notice.account,
            kind = %d.notice.kind,
            channel = d.channel.as_str(),
            "notice delivered"
        );
    }

    fn failed(&self, state: &AppState, d: &DueNotice, error: &str, wait: Duration) {
        state
            .metrics
            .notice_delivery_failures
            .get_or_create(&labels(d.channel))
            .inc();
        // The address stays in the store's row, out of the logs.
        tracing::warn!(
            notice = d.notice.id,
            account = %d.notice.account,
            channel = d.channel.as_str(),
            attempts = d.attempts + 1,
            %error,
            retry_in_ms = wait.as_millis() as u64,
            "notice not delivered"
        );
    }

    async fn send(&self, d: &DueNotice, now: DateTime<Utc>) -> Result<(), String> {
        match self {
            Sender::Webhook { client, config } => {
                let body = serde_json::to_vec(&Payload::of(&d.notice))
                    .map_err(|e| format!("cannot encode the notice: {e}"))?;
                let result = post_signed(client, config, &reference(&d.notice), body, now)
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("the notification webhook answered {}", r.status())),
                    // Without the URL: the error is stored, and shown in the account's notices.
                    Err(e) => Err(format!(
                        "cannot reach the notification webhook: {}",
                        e.without_url()
                    )),
                }
            }
            Sender::Email {
                mailer,
                from,
                config,
            } => {
                let message = email(&d.notice, from, &d.address, now.into())?;
                // lettre's timeout bounds each step of the conversation; this
                // bounds the whole delivery, so a stop waits at most this long.
                match tokio::time::timeout(config.timeout, mailer.send(message)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(format!(
                        "the SMTP relay refused the email for good ({e}); retried in case it was wrong"
                    )),
                    Ok(Err(e)) => Err(format!(
                        "cannot email through the SMTP relay {}: {e}",
                        redact_relay(&config.relay)
                    )),
                    Err(_) => Err(format!(
                        "the SMTP relay {} did not take the email within {} s",
                        redact_relay(&config.relay),
                        config.timeout.as_secs()
                    )),
                }
            }
        }
    }
}

fn labels(channel: NoticeChannel) -> ChannelLabels {
    ChannelLabels {
        channel: channel.as_str().to_string(),
    }
}

/// `notice/<id>`: the webhook's idempotency key and the email's reference.
pub fn reference(notice: &Notice) -> String {
    format!("notice/{}", notice.id)
}

/// The JSON the notification webhook gets.
#[derive(Serialize)]
struct Payload<'a> {
    id: i64,
    account: &'a str,
    product: &'a str,
    kind: &'a str,
    day: chrono::NaiveDate,
    issued_at: chrono::DateTime<chrono::Utc>,
    subject: &'a str,
    recipients: &'a [Recipient],
    details: &'a Value,
}

impl<'a> Payload<'a> {
    fn of(n: &'a Notice) -> Payload<'a> {
        Payload {
            id: n.id,
            account: &n.account,
            product: &n.product,
            kind: &n.kind,
            day: n.day,
            issued_at: n.issued_at,
            subject: subject(n),
            recipients: &n.recipients,
            details: &n.details,
        }
    }
}

fn subject(n: &Notice) -> &str {
    if n.subject.is_empty() {
        &n.kind
    } else {
        &n.subject
    }
}

/// One plain-text email of `notice` to `address`, named as its recipient.
/// The Message-ID is the same at every attempt, so a relay or a mailbox can
/// drop a resent copy.
fn email(
    notice: &Notice,
    from: &Mailbox,
    address: &str,
    now: SystemTime,
) -> Result<Message, String> {
    let to = address
        .parse()
        .map_err(|e| format!("{address:?} is not an email address ({e})"))?;
    let name = notice
        .recipients
        .iter()
        .find(|r| r.channel == "email" && r.address == address)
        .map(|r| r.name.clone());
    let digest = Sha256::digest(address.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let message_id = format!("<notice-{}.{hash}@{}>", notice.id, from.email.domain());
    let reference = reference(notice);
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(name, to))
        .subject(subject(notice))
        .message_id(Some(message_id))
        .date(now)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(NOTICE_HEADER),
            reference,
        ))
        .header(ContentType::TEXT_PLAIN)
        .body(body(notice))
        .map_err(|e| format!("cannot build the email: {e}"))
}

/// The email's text: the subject, what the notice is about, its details as
/// `key: value` lines, and its reference.
pub fn body(n: &Notice) -> String {
    let mut lines = vec![
        subject(n).to_string(),
        String::new(),
        format!("Account: {}", n.account),
        format!("Product: {}", n.product),
        format!("Notice: {}", n.kind),
        format!("Day: {}", n.day),
        format!("Issued at: {}", n.issued_at.to_rfc3339()),
    ];
    let mut details = Vec::new();
    detail_lines("", &n.details, &mut details);
    if !details.is_empty() {
        lines.push(String::new());
        lines.extend(details);
    }
    lines.push(String::new());
    lines.push(format!(
        "Reference: {} (core-meter; the same reference means the same notice)",
        reference(n)
    ));
    lines.join("\n") + "\n"
}

/// `value` as `path: value` lines: nested objects and lists of objects by
/// dotted paths (lists count from 1), lists of plain values on one line.
fn detail_lines(path: &str, value: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let plain = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                detail_lines(&join(key), v, out);
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_object() || v.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                detail_lines(&join(&(i + 1).to_string()), v, out);
            }
        }
        Value::Array(items) => {
            let text: Vec<String> = items.iter().map(plain).collect();
            out.push(format!("{}: {}", join_or(path), text.join(", ")));
        }
        v => out.push(format!("{}: {}", join_or(path), plain(v))),
    }
}

fn join_or(path: &str) -> &str {
    if path.is_empty() {
        "details"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::json;

    fn notice(details: Value) -> Notice {
        Notice {
            id: 42,
            account: "acme".into(),
            product: "pro".into(),
            kind: "expiry_warning".into(),
            day: "2026-12-19".parse().unwrap(),
            issued_at: DateTime::parse_from_rfc3339("2026-12-18T18:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            subject: "Your core-meter licence ends soon".into(),
            recipients: vec![Recipient {
                contact: 1,
                name: "Ann Lee".into(),
                role: "creator".into(),
                channel: "email".into(),
                address: "ann@example.com".into(),
            }],
            details,
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn the_email_text_says_what_the_notice_is_about_and_lists_its_details() {
        let n = notice(json!({
            "licences": [{"cores": 64, "end_day": "2026-12-26"}],
            "days_left": 7,
            "tags": ["a", "b"],
            "note": null,
        }));
        let text = body(&n);
        for line in [
            "Your core-meter licence ends soon",
            "Account: acme",
            "Notice: expiry_warning",
            "Day: 2026-12-19",
            "days_left: 7",
            "licences.1.cores: 64",
            "licences.1.end_day: 2026-12-26",
            "tags: a, b",
            "note: none",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(text.contains("Reference: notice/42"), "{text}");
    }

    #[test]
    fn an_email_names_its_recipient_and_carries_the_notice_reference() {
        let n = notice(json!({"days_left": 7}));
        let from: Mailbox = "core-meter <billing@example.com>".parse().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let raw = String::from_utf8(email(&n, &from, "ann@example.com", at).unwrap().formatted())
            .unwrap();
        assert!(
            raw.contains("To: \"Ann Lee\" <ann@example.com>")
                || raw.contains("To: Ann Lee <ann@example.com>"),
            "{raw}"
        );
        assert!(
            raw.contains("Subject: Your core-meter licence ends soon"),
            "{raw}"
        );
        assert!(raw.contains("X-Core-Meter-Notice: notice/42"), "{raw}");
        assert!(raw.contains("Message-ID: <notice-42."), "{raw}");
        assert!(raw.contains("@example.com>"), "{raw}");
        let again = String::from_utf8(email(&n, &from, "ann@example.com", at).unwrap().formatted())
            .unwrap();
        let id = |r: &str| {
            r.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string()
        };
        assert_eq!(id(&raw), id(&again), "a resend has the same Message-ID");
        assert!(email(&n, &from, "not an address", at).is_err());
    }
}
