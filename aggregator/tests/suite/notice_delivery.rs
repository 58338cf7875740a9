//! The notice outbox over real sockets: the service on 127.0.0.1:0 with a manual clock, a real HTTP webhook, and a real SMTP relay (Python's aiosmtpd) that the test starts.

use crate::support;
use testkit::ports::HeldPort;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregator::config::{NoticesConfig, SmtpConfig, WebhookConfig};
use aggregator::store::{Durability, NewContact, Notice, NoticeDelivery, Store, StoreError};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::clock::{Clock, ManualClock};
use shared::lifecycle::{ContactRole, NoticeKind};
use support::{eventually_async, local, TestApp, Webhook};

/// The service with the given notice channels.
struct App {
    inner: TestApp,
    notices: NoticesConfig,
}

impl std::ops::Deref for App {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.inner
    }
}

impl App {
    async fn spawn(database: PathBuf, notices: NoticesConfig, now: DateTime<Utc>) -> App {
        App::spawn_on(database, notices, Arc::new(ManualClock::new(now))).await
    }

    /// The service posting notices to `webhook`, which checks signatures'
    /// time on the service's clock.
    async fn spawn_for(
        database: PathBuf,
        notices: NoticesConfig,
        webhook: &Webhook,
        now: DateTime<Utc>,
    ) -> App {
        let clock = Arc::new(ManualClock::new(now));
        webhook.keep_time_with(clock.clone());
        App::spawn_on(database, notices, clock).await
    }

    async fn spawn_on(database: PathBuf, notices: NoticesConfig, clock: Arc<ManualClock>) -> App {
        let mut config = support::config(database, None);
        config.notices = notices.clone();
        App {
            inner: TestApp::spawn_on(config, clock).await,
            notices,
        }
    }

    async fn stop(self) {
        self.inner.stop().await;
    }

    /// A second connection to the service's database, as a tool would open it.
    fn store(&self) -> Store {
        Store::connect(&self.database, Durability::Durable).unwrap()
    }

    /// Account acme and its contacts: Ann (creator: email and SMS), Bo
    /// (finance: email), Cy (global resources: SMS only).
    fn acme(&self, emails: [&str; 2]) {
        support::off_runtime(|| self.acme_here(emails))
    }

    fn acme_here(&self, emails: [&str; 2]) {
        let mut store = self.store();
        let now = self.clock.now();
        busy_retried(|| store.accounts().create_account("acme", now));
        let contacts = [
            (
                "Ann Lee",
                ContactRole::Creator,
                Some(emails[0]),
                Some("+8613800138000"),
            ),
            (
                "Bo Chen",
                ContactRole::FinanceCollaborator,
                Some(emails[1]),
                None,
            ),
            (
                "Cy Wu",
                ContactRole::GlobalResourceCollaborator,
                None,
                Some("+8613800138002"),
            ),
        ];
        for (name, role, email, sms) in contacts {
            let contact = NewContact {
                name: name.into(),
                role,
                email: email.map(String::from),
                sms: sms.map(String::from),
            };
            busy_retried(|| store.accounts().add_contact("acme", &contact, now));
        }
    }

    /// Issues an expiry warning to acme on the configured channels; its id.
    /// Plants a notice behind the service's back, then moves its clock by
    /// nothing: what waits on the clock looks again, as it does after a
    /// run that issued a notice itself.
    fn issue(&self, day: &str) -> i64 {
        let id = support::off_runtime(|| self.issue_here(day));
        self.clock.advance(TimeDelta::zero());
        id
    }

    fn issue_here(&self, day: &str) -> i64 {
        let mut store = self.store();
        let details = json!({"licences": [{"cores": 64, "end_day": "2026-12-01"}], "days_left": 6});
        busy_retried(|| {
            store.accounts().issue_notice(
                "acme",
                NoticeKind::ExpiryWarning,
                day.parse().unwrap(),
                &details,
                self.clock.now(),
                self.notices.channels(),
            )
        })
        .expect("a new notice")
    }

    fn notice(&self, id: i64) -> Notice {
        support::off_runtime(|| {
            self.store()
                .accounts()
                .notices("acme", 100)
                .unwrap()
                .into_iter()
                .find(|n| n.id == id)
                .unwrap()
        })
    }

    fn delivery(&self, id: i64, channel: &str, address: &str) -> NoticeDelivery {
        self.notice(id)
            .deliveries
            .into_iter()
            .find(|d| d.channel == channel && d.address == address)
            .unwrap()
    }

    async fn metric(&self, line_start: &str) -> Option<String> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .map(String::from)
    }
}

/// `write` through this test's own connection, again while the service's
/// writer holds the database: a deferred transaction that read first gets
/// SQLITE_BUSY at once rather than waiting out the busy timeout.
fn busy_retried<T>(mut write: impl FnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match write() {
            Err(StoreError::Database(aggregator::store::db::DbError::Sqlite(
                rusqlite::Error::SqliteFailure(e, _),
            ))) if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

fn webhook_notices(url: &str) -> NoticesConfig {
    NoticesConfig {
        webhook: Some(WebhookConfig {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
            secret: support::webhook_secret(),
        }),
        smtp: None,
    }
}

fn smtp(port: u16) -> SmtpConfig {
    SmtpConfig {
        relay: format!("smtp://127.0.0.1:{port}"),
        from: "core-meter <billing@core-meter.example>".into(),
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(500),
    }
}

const ANN: &str = "ann@acme.example";
const BO: &str = "bo@acme.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_is_posted_to_the_webhook_once_with_its_idempotency_key_and_marked_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(0).await;
    let app = App::spawn_for(
        dir.path().join("core-meter.sqlite"),
        webhook_notices(&webhook.url),
        &webhook,
        local("2026-11-25T02:00:00"),
    )
    .await;
    app.acme([ANN, BO]);
    let issued = Instant::now();
    let id = app.issue("2026-11-25");
    eventually_async(
        Duration::from_secs(10),
        "the webhook took the notice",
        || async { !webhook.taken().is_empty() },
    )
    .await;
    eprintln!("webhook delivery latency: {:?}", issued.elapsed());
    eventually_async(
        Duration::from_secs(10),
        "the notice marked delivered",
        || async { app.delivery(id, "webhook", "").delivered_at.is_some() },
    )
    .await;
    app.settled().await;

    assert_eq!(webhook.taken(), vec![format!("notice/{id}")]);
    assert_eq!(webhook.attempts(), 1, "posted once");
    assert_eq!(webhook.verified(), 1, "signed, and the signature verified");
    assert_eq!(webhook.rejections(), Vec::<String>::new());
    let body = webhook.calls.lock().unwrap()[0].1.clone();
    assert_eq!(body["id"], id);
    assert_eq!(body["account"], "acme");
    assert_eq!(body["kind"], "expiry_warning");
    assert_eq!(body["day"], "2026-11-25");
    assert_eq!(body["subject"], NoticeKind::ExpiryWarning.subject());
    assert_eq!(body["details"]["days_left"], 6);
    assert!(body["issued_at"].is_string());
    let recipients = body["recipients"].as_array().unwrap();
    let addresses: Vec<(&str, &str)> = recipients
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap(),
                r["address"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        addresses,
        vec![
            ("email", ANN),
            ("sms", "+8613800138000"),
            ("email", BO),
            ("sms", "+8613800138002"),
        ],
        "every recipient, SMS included, goes to the webhook"
    );
    let notice = app.notice(id);
    assert_eq!(notice.deliveries.len(), 1, "no email rows without a relay");
    let row = &notice.deliveries[0];
    assert_eq!((row.attempts, row.last_error.as_deref()), (1, None));
    assert_eq!(
        app.metric("core_meter_notices_delivered_total{channel=\"webhook\"}")
            .await
            .as_deref(),
        Some("core_meter_notices_delivered_total{channel=\"webhook\"} 1")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_fails_twice_gets_the_notice_on_the_third_attempt_and_the_attempts_are_recorded(
) {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(2).await;
    let app = App::spawn_for(
        dir.path().join("core-meter.sqlite"),
        webhook_notices(&webhook.url),
        &webhook,
        local("2026-11-25T02:00:00"),
    )
    .await;
    app.acme([ANN, BO]);
    let id = app.issue("2026-11-25");
    // The clock stands still: the first failure is recorded with its cause.
    eventually_async(
        Duration::from_secs(10),
        "a failed attempt recorded",
        || async { app.delivery(id, "webhook", "").attempts >= 1 },
    )
    .await;
    let row = app.delivery(id, "webhook", "");
    if row.delivered_at.is_none() {
        let error = row.last_error.unwrap();
        assert!(error.contains("503"), "{error}");
        assert!(row.next_attempt_at >= app.clock.now());
    }
    // Retries are due on the service's clock.
    eventually_async(
        Duration::from_secs(20),
        "the third attempt taken",
        || async {
            app.clock.advance(TimeDelta::milliseconds(250));
            !webhook.taken().is_empty()
        },
    )
    .await;
    eventually_async(
        Duration::from_secs(10),
        "the notice marked delivered",
        || async { app.delivery(id, "webhook", "").delivered_at.is_some() },
    )
    .await;
    app.settled().await;
    assert_eq!(webhook.attempts(), 3);
    assert_eq!(webhook.verified(), 3, "every attempt signed and verified");
    assert_eq!(webhook.rejections(), Vec::<String>::new());
    assert_eq!(webhook.taken(), vec![format!("notice/{id}")]);
    let keys: Vec<String> = webhook
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert!(
        keys.iter().all(|k| *k == format!("notice/{id}")),
        "every attempt has the same key: {keys:?}"
    );
    let row = app.delivery(id, "webhook", "");
    assert_eq!(row.attempts, 3, "two failures and the delivery");
    assert_eq!(row.last_error, None);
    assert_eq!(
        app.metric("core_meter_notice_delivery_failures_total{channel=\"webhook\"}")
            .await
            .as_deref(),
        Some("core_meter_notice_delivery_failures_total{channel=\"webhook\"} 2")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_email_recipient_gets_one_email_through_the_relay_with_the_subject_and_the_notice_id_and_an_sms_only_contact_gets_none(
) {
    let Some(python) = smtp_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&python, dir.path(), HeldPort::new());
    let app = App::spawn(
        dir.path().join("core-meter.sqlite"),
        NoticesConfig {
            webhook: None,
            smtp: Some(smtp(relay.port)),
        },
        local("2026-11-25T02:00:00"),
    )
    .await;
    app.acme([ANN, BO]);
    let issued = Instant::now();
    let id = app.issue("2026-11-25");
    eventually_async(Duration::from_secs(10), "two emails", || async {
        relay.messages().len() >= 2
    })
    .await;
    eprintln!("email delivery latency (both): {:?}", issued.elapsed());
    eventually_async(Duration::from_secs(10), "both rows delivered", || async {
        app.notice(id)
            .deliveries
            .iter()
            .all(|d| d.delivered_at.is_some())
    })
    .await;
    app.settled().await;

    let mut messages = relay.messages();
    assert_eq!(messages.len(), 2, "one email per address: {messages:?}");
    messages.sort_by_key(|m| m["rcpt_tos"].to_string());
    let reference = format!("notice/{id}");
    for (m, (name, address)) in messages.iter().zip([("Ann Lee", ANN), ("Bo Chen", BO)]) {
        assert_eq!(m["rcpt_tos"], json!([address]));
        assert_eq!(m["mail_from"], "billing@core-meter.example");
        assert_eq!(m["subject"], NoticeKind::ExpiryWarning.subject());
        assert_eq!(m["notice"], reference.as_str());
        let to = m["to"].as_str().unwrap();
        assert!(to.contains(name) && to.contains(address), "{to}");
        assert!(m["from"].as_str().unwrap().contains("core-meter"), "{m}");
        let body = m["body"].as_str().unwrap();
        for line in [
            "Account: acme",
            "Notice: expiry_warning",
            "Day: 2026-11-25",
            "days_left: 6",
            "licences.1.cores: 64",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} in {body}");
        }
        assert!(body.contains(&format!("Reference: {reference}")), "{body}");
        assert!(
            m["message_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("<notice-{id}.")),
            "{m}"
        );
    }
    assert_ne!(messages[0]["message_id"], messages[1]["message_id"]);
    let notice = app.notice(id);
    let rows: Vec<(&str, &str, u32)> = notice
        .deliveries
        .iter()
        .map(|d| (d.channel.as_str(), d.address.as_str(), d.attempts))
        .collect();
    assert_eq!(
        rows,
        vec![("email", ANN, 1), ("email", BO, 1)],
        "the SMS-only contact has no email row"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_at_first_still_gets_the_email_after_retries() {
    let Some(python) = smtp_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Held, so refused, until the relay takes it.
    let port = HeldPort::new();
    let app = App::spawn(
        dir.path().join("core-meter.sqlite"),
        NoticesConfig {
            webhook: None,
            smtp: Some(smtp(port.addr().port())),
        },
        local("2026-11-25T02:00:00"),
    )
    .await;
    app.acme([ANN, BO]);
    let id = app.issue("2026-11-25");
    eventually_async(
        Duration::from_secs(20),
        "two failed attempts each",
        || async {
            app.clock.advance(TimeDelta::milliseconds(250));
            app.notice(id).deliveries.iter().all(|d| d.attempts >= 2)
        },
    )
    .await;
    let row = app.delivery(id, "email", ANN);
    assert_eq!(row.delivered_at, None);
    let error = row.last_error.unwrap();
    assert!(error.contains("SMTP relay"), "{error}");

    let relay = Relay::start(&python, dir.path(), port);
    eventually_async(
        Duration::from_secs(20),
        "both emails after retries",
        || async {
            app.clock.advance(TimeDelta::milliseconds(250));
            app.notice(id)
                .deliveries
                .iter()
                .all(|d| d.delivered_at.is_some())
        },
    )
    .await;
    app.settled().await;
    let mut to: Vec<String> = relay
        .messages()
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap().to_string())
        .collect();
    to.sort();
    assert_eq!(to, vec![ANN, BO], "each address got exactly one email");
    let row = app.delivery(id, "email", ANN);
    assert!(row.attempts >= 3, "{row:?}");
    assert_eq!(row.last_error, None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_relay_refuses_for_good_is_retried_with_the_refusal_recorded() {
    let Some(python) = smtp_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&python, dir.path(), HeldPort::new());
    let app = App::spawn(
        dir.path().join("core-meter.sqlite"),
        NoticesConfig {
            webhook: None,
            smtp: Some(smtp(relay.port)),
        },
        local("2026-11-25T02:00:00"),
    )
    .await;
    let refused = "refused@acme.example";
    app.acme([ANN, refused]);
    let id = app.issue("2026-11-25");
    eventually_async(Duration::from_secs(20), "the refusal retried", || async {
        app.clock.advance(TimeDelta::milliseconds(250));
        app.delivery(id, "email", refused).attempts >= 3
    })
    .await;
    let row = app.delivery(id, "email", refused);
    assert_eq!(row.delivered_at, None);
    let error = row.last_error.unwrap();
    assert!(
        error.contains("550") && error.contains("for good"),
        "{error}"
    );
    assert!(app.delivery(id, "email", ANN).delivered_at.is_some());
    let to: Vec<Value> = relay
        .messages()
        .iter()
        .map(|m| m["rcpt_tos"].clone())
        .collect();
    assert_eq!(to, vec![json!([ANN])], "the good address got one email");
    // The operators see the relay's answer; the customer's own view of its
    // notices does not carry it.
    let (_, admin_view) = app
        .admin(
            reqwest::Method::GET,
            "/v1/admin/accounts/acme/notices",
            None,
        )
        .await;
    let refused_delivery = |view: &Value| {
        view["notices"][0]["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["address"] == refused)
            .cloned()
            .unwrap()
    };
    assert!(refused_delivery(&admin_view)["last_error"]
        .as_str()
        .unwrap()
        .contains("550"));
    let (s, issued) = app
        .admin(
            reqwest::Method::POST,
            "/v1/admin/accounts/acme/reader-tokens",
            Some(json!({"name": "finance"})),
        )
        .await;
    assert_eq!(s, 201, "{issued}");
    let (s, customer_view) = app
        .call(
            reqwest::Method::GET,
            "/v1/accounts/acme/notices",
            issued["token"].as_str(),
            None,
        )
        .await;
    assert_eq!(s, 200, "{customer_view}");
    let delivery = refused_delivery(&customer_view);
    // The worker may have tried once more between the two reads.
    assert!(
        delivery["attempts"].as_u64().unwrap()
            >= refused_delivery(&admin_view)["attempts"].as_u64().unwrap(),
        "{delivery}"
    );
    assert!(delivery.get("last_error").is_none(), "{delivery}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_service_does_not_send_a_delivered_notice_again() {
    let Some(python) = smtp_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("core-meter.sqlite");
    let webhook = Webhook::start(0).await;
    let relay = Relay::start(&python, dir.path(), HeldPort::new());
    let notices = NoticesConfig {
        smtp: Some(smtp(relay.port)),
        ..webhook_notices(&webhook.url)
    };
    let app = App::spawn_for(
        db.clone(),
        notices.clone(),
        &webhook,
        local("2026-11-25T02:00:00"),
    )
    .await;
    app.acme([ANN, BO]);
    let id = app.issue("2026-11-25");
    eventually_async(
        Duration::from_secs(10),
        "every channel delivered",
        || async {
            let rows = app.notice(id).deliveries;
            rows.len() == 3 && rows.iter().all(|d| d.delivered_at.is_some())
        },
    )
    .await;
    app.stop().await;

    let app = App::spawn_for(db, notices, &webhook, local("2026-11-25T02:10:00")).await;
    for _ in 0..10 {
        app.clock.advance(TimeDelta::minutes(10));
        app.settled().await;
    }
    assert_eq!(webhook.attempts(), 1, "the webhook got it once");
    assert_eq!(relay.messages().len(), 2, "one email per address, once");
    let rows = app.notice(id).deliveries;
    assert!(rows.iter().all(|d| d.attempts == 1), "{rows:?}");
    app.stop().await;
}

/// A Python with aiosmtpd (`CORE_METER_SMTP_PYTHON`, else `python3`), or None
/// where there is none: then the relay tests are skipped, unless
/// `CORE_METER_REQUIRE_SMTP=1` (as in CI) turns that into a failure.
fn smtp_python() -> Option<String> {
    let python = std::env::var("CORE_METER_SMTP_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        testkit::skip(
            "SMTP",
            &format!(
                "{python} cannot import aiosmtpd for the SMTP relay tests (pip install \
                 aiosmtpd, or point CORE_METER_SMTP_PYTHON at a Python that has it)"
            ),
        );
        return None;
    }
    Some(python)
}

/// The relay: accepts every message (refusing addresses that start with
/// "refused" with 550) and writes each, parsed, as one JSON file.
const RELAY_PY: &str = r#"
import asyncio, email, email.policy, itertools, json, os, socket, sys
from aiosmtpd.smtp import SMTP

# The test hands over the port it held: descriptor 3, listening.
assert os.environ.get("LISTEN_FDS") == "1"
out = sys.argv[1]
numbers = itertools.count(1)

class Relay:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused"):
            return "550 5.1.1 <%s>: no such mailbox" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        m = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(m["From"]),
            "to": str(m["To"]),
            "subject": str(m["Subject"]),
            "message_id": str(m["Message-ID"]),
            "notice": str(m["X-Core-Meter-Notice"]),
            "body": m.get_content(),
        }
        n = next(numbers)
        tmp = os.path.join(out, "%06d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out, "%06d.json" % n))
        return "250 2.0.0 accepted"

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
loop.run_until_complete(loop.create_server(lambda: SMTP(Relay()), sock=socket.socket(fileno=3)))
print("ready", flush=True)
loop.run_forever()
"#;

/// The SMTP relay, a child process; killed when dropped.
struct Relay {
    port: u16,
    out: PathBuf,
    child: Child,
}

impl Relay {
    /// Serves `port`, which the test held until now.
    fn start(python: &str, dir: &Path, port: HeldPort) -> Relay {
        let script = dir.join("relay.py");
        std::fs::write(&script, RELAY_PY).unwrap();
        let mut command = Command::new(python);
        let port = port.hand_to(&mut command).port();
        let out = dir.join(format!("mail-{port}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut child = command
            .arg(&script)
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        drop(command);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let relay = Relay { port, out, child };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP relay did not start on port {port}"
        );
        relay
    }

    /// The messages received so far, in order.
    fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
