//! The service's settings: defaults, then a TOML file, then `CORE_METER_*` environment variables, then flags; a bad one stops start-up naming it.

pub mod secret_file;
pub mod settings;
mod values;

pub use values::{
    BillingConfig, Database, NoticeChannels, Secret, TlsFiles, TokenText, MIN_SECRET_BYTES,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::TimeDelta;
use rust_decimal::Decimal;
use shared::overage::CoreRounding;
use shared::zone::BillingZone;

/// Everything `aggregator serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// A SQLite file, or a PostgreSQL database as a `postgres://` URL.
    pub database: Database,
    pub billing: BillingConfig,
    /// The admin bearer token, if configured (`admin_token`, or the content of
    /// `admin_token_file`); otherwise one is generated at first start.
    pub admin_token: Option<crate::config::TokenText>,
    /// Where `admin_token` was read from, when from a file: read again
    /// when it changes, so a rotated Secret takes effect without a restart.
    pub admin_token_file: Option<PathBuf>,
    pub webhook: Option<WebhookConfig>,
    pub log_json: bool,
    /// The runtime's threads serving requests: the setting, or when it is
    /// 0, one per CPU the process may use.
    pub worker_threads: usize,
    /// The longest any request may take.
    pub request_timeout: Duration,
    /// Raw samples (and rejections) older than this many days before today
    /// in the billing zone are pruned after each billing run; bill lines stay.
    pub retention_days: u32,
    /// The prepaid licence price per core per month (default 6.75).
    pub licence_price_per_core_month: Decimal,
    /// The price of one image-scan authorization (default 0.25, SPEC 10.1).
    pub image_scan_price: Decimal,
    /// The authorizations a trial may use without buying (default 100).
    pub trial_image_authorizations: u64,
    /// Log storage's price per GB and month and a trial's GB (0.25, 10).
    pub log_storage: shared::logs::Terms,
    /// Where notices to account contacts go (SPEC section 8).
    pub notices: NoticesConfig,
    /// HTTPS: the certificate, its key and, for mutual TLS, the agents' CA.
    pub tls: Option<crate::config::TlsFiles>,
    /// Plain HTTP beyond this machine (the service's own port, webhooks,
    /// PostgreSQL), allowed only when set: a TLS-terminating mesh or proxy,
    /// or a network the operator trusts; a warning at start says so.
    pub insecure_plaintext: bool,
    /// The hops `insecure_plaintext` lets cross the network in clear text,
    /// each named for the warning at start (empty without it).
    pub plaintext_hops: Vec<String>,
}

/// Notice delivery: the notification webhook (every notice, every
/// recipient, SMS included) and, optionally, email straight to an SMTP relay.
#[derive(Debug, Clone, Default)]
pub struct NoticesConfig {
    pub webhook: Option<WebhookConfig>,
    pub smtp: Option<SmtpConfig>,
}

impl NoticesConfig {
    /// The delivery rows a notice issued now gets.
    pub fn channels(&self) -> crate::config::NoticeChannels {
        crate::config::NoticeChannels {
            webhook: self.webhook.is_some(),
            email: self.smtp.is_some(),
        }
    }
}

/// An SMTP relay for notice emails.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain, for a relay on the local network) or
    /// `smtps://host:port` / `smtp://host:port?tls=required`, as lettre reads it.
    pub relay: String,
    /// The sender address.
    pub from: String,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// Signs every request (`signature.rs`); its `Debug` is redacted.
    pub secret: Secret,
}

/// Flags given on the command line (they win over everything).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub database: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// `--insecure-plaintext`: only ever turns it on.
    pub insecure_plaintext: bool,
}

/// The setting `key` as error messages name it.
fn named(key: &str) -> String {
    settings::setting(key).named()
}

impl Config {
    /// Reads the file named by `--config` (if any), the environment (through
    /// `env`, so tests can pass their own), and the flags. Whether a
    /// PostgreSQL URL keeps its traffic private is the driver's reading
    /// (`postgres_is_private`), which only the store knows: `app::load_config`
    /// passes it.
    pub fn load(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
        postgres_is_private: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Config> {
        let (mut table, source) = match &flags.config {
            Some(path) => (read_file(path)?, format!("config file {}", path.display())),
            None => (toml::Table::new(), "the environment".to_string()),
        };
        overlay_env(&mut table, env)?;
        let text = |t: &str| toml::Value::String(t.to_string());
        let path = |key: &str, p: Option<&PathBuf>| -> anyhow::Result<Option<toml::Value>> {
            p.map(|p| {
                p.to_str()
                    .map(text)
                    .ok_or_else(|| anyhow!("{}: {} is not UTF-8 text", named(key), p.display()))
            })
            .transpose()
        };
        for (key, value) in [
            ("listen", flags.listen.as_deref().map(text)),
            ("database", flags.database.as_deref().map(text)),
            ("tls_cert", path("tls_cert", flags.tls_cert.as_ref())?),
            ("tls_key", path("tls_key", flags.tls_key.as_ref())?),
            (
                "tls_client_ca",
                path("tls_client_ca", flags.tls_client_ca.as_ref())?,
            ),
            (
                "insecure_plaintext",
                flags
                    .insecure_plaintext
                    .then_some(toml::Value::Boolean(true)),
            ),
        ] {
            if let Some(value) = value {
                table.insert(settings::setting(key).key.to_string(), value);
            }
        }
        let values = settings::Values::read(table, &source).map_err(|e| anyhow!(e))?;
        Config::from_values(&values, postgres_is_private)
    }

    fn from_values(
        v: &settings::Values,
        postgres_is_private: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Config> {
        let listen = v.text("listen").unwrap_or_default();
        let listen = SocketAddr::from_str(&listen).map_err(|e| {
            anyhow!(
                "{}: {listen:?} is not an address such as 127.0.0.1:8080 ({e})",
                named("listen")
            )
        })?;
        let insecure_plaintext = v.flag("insecure_plaintext");
        let tls = tls_files(v)?;
        anyhow::ensure!(
            tls.is_some() || listen.ip().is_loopback() || insecure_plaintext,
            "{}: {listen} is reachable from other machines, and plain HTTP there would carry \
             cluster tokens and bills in clear text: serve HTTPS (set tls_cert and tls_key), or, \
             when a TLS-terminating proxy or mesh stands in front, set insecure_plaintext",
            named("listen")
        );
        let mut billing = BillingConfig::default();
        let text = |key: &str| v.text(key).unwrap_or_default();
        let hours = |key: &str| u32::try_from(v.whole(key)).expect("a bounded setting");
        billing.zone = BillingZone::from_str(&text("billing.timezone"))
            .with_context(|| named("billing.timezone"))?;
        billing.rules.price_per_core_day =
            shared::domain::parse_money(&text("billing.price_per_core_day"))
                .map_err(|e| anyhow!("{}: {e}", named("billing.price_per_core_day")))?;
        billing.rules.rounding = CoreRounding::from_str(&text("billing.billable_core_rounding"))
            .with_context(|| named("billing.billable_core_rounding"))?;
        billing.rules.gap_bridge_hours = hours("billing.gap_bridge_hours");
        billing.rules.default_cap_cores =
            shared::domain::check_total_cores(v.whole("billing.default_cap_cores"))
                .map_err(|e| anyhow!("{}: {e}", named("billing.default_cap_cores")))?;
        billing.limits.max_age = TimeDelta::hours(i64::from(hours("billing.max_sample_age_hours")));
        billing.limits.max_future =
            TimeDelta::minutes(i64::from(hours("billing.max_future_minutes")));
        let currency = text("billing.currency");
        anyhow::ensure!(
            currency.len() == 3 && currency.chars().all(|ch| ch.is_ascii_uppercase()),
            "{}: {currency:?} is not a three-letter currency code such as USD",
            named("billing.currency")
        );
        billing.currency = currency;
        billing.rules.check().context("billing settings")?;
        let retention_days = hours("retention_days");
        let least = min_retention_days(&billing);
        anyhow::ensure!(
            retention_days >= least,
            "{}: {retention_days} days is too short; it must be at least {least} so that pruning never \
             removes a sample a bill can still read: a sample is accepted up to \
             billing.max_sample_age_hours ({} h) late, changes its day and, through gap bridging \
             (billing.gap_bridge_hours {} h), the day before, plus a day for the day boundary",
            named("retention_days"),
            billing.limits.max_age.num_hours(),
            billing.rules.gap_bridge_hours,
        );
        let webhook = match v.text("webhook.url") {
            Some(url) if !url.trim().is_empty() => {
                check_webhook_url("webhook.url", &url, insecure_plaintext)?;
                let secret = webhook_secret(
                    SecretSettings {
                        url: "webhook.url",
                        inline: "webhook.secret",
                        file: "webhook.secret_file",
                        why: "bills are money: the billing backend must be able to verify them",
                    },
                    v.text("webhook.secret").as_deref(),
                    v.path("webhook.secret_file").as_deref(),
                )?;
                Some(WebhookConfig {
                    url,
                    timeout: Duration::from_secs(v.whole("webhook.timeout_secs")),
                    max_backoff: Duration::from_secs(v.whole("webhook.max_backoff_secs")),
                    secret,
                })
            }
            _ => None,
        };
        let notices = notices(v, insecure_plaintext)?;
        let admin_token_file = v.path("admin_token_file");
        let admin_token =
            admin_token(v.text("admin_token"), admin_token_file.as_deref())?.map(Into::into);
        let licence_price_per_core_month =
            shared::domain::parse_money(&text("billing.licence_price_per_core_month"))
                .map_err(|e| anyhow!("{}: {e}", named("billing.licence_price_per_core_month")))?;
        let image_scan_price = shared::domain::parse_money(&text("billing.image_scan_price"))
            .map_err(|e| anyhow!("{}: {e}", named("billing.image_scan_price")))?;
        let log_storage = shared::logs::Terms {
            price_per_gb_month: shared::domain::parse_money(&text("billing.log_storage_price"))
                .map_err(|e| anyhow!("{}: {e}", named("billing.log_storage_price")))?,
            trial_gb: u32::try_from(v.whole("billing.trial_log_storage_gb"))
                .map_err(|e| anyhow!("{}: {e}", named("billing.trial_log_storage_gb")))?,
        };
        let database = Database::parse(&text("database"));
        if let Database::Postgres(url) = &database {
            anyhow::ensure!(
                insecure_plaintext || postgres_is_private(url),
                "{}: {database} reaches PostgreSQL over the network without sslmode=require, \
                 so bills and tokens could cross it in clear text: add ?sslmode=require (and \
                 sslrootcert=CA.pem for a private CA), or set insecure_plaintext",
                named("database")
            );
        }
        let host = |url: &str| {
            reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default()
        };
        let mut plaintext_hops = Vec::new();
        if tls.is_none() && !listen.ip().is_loopback() {
            plaintext_hops.push(format!("listen: plain HTTP on {listen}"));
        }
        for (key, hook) in [
            ("webhook.url", &webhook),
            ("notices.webhook_url", &notices.webhook),
        ] {
            if let Some(h) = hook.as_ref().filter(|h| webhook_in_clear(&h.url)) {
                plaintext_hops.push(format!("{key}: plain HTTP to {}", host(&h.url)));
            }
        }
        if let Some(smtp) = notices.smtp.as_ref().filter(|m| smtp_in_clear(&m.relay)) {
            plaintext_hops.push(format!(
                "notices.smtp_relay: mail in clear text to {}",
                host(&smtp.relay)
            ));
        }
        if let Database::Postgres(url) = &database {
            if !postgres_is_private(url) {
                plaintext_hops.push("database: PostgreSQL without sslmode=require".to_string());
            }
        }
        Ok(Config {
            listen,
            database,
            billing,
            admin_token,
            admin_token_file,
            webhook,
            log_json: v.flag("log_json"),
            worker_threads: match v.whole("worker_threads") {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => usize::try_from(n).expect("checked at most 256"),
            },
            request_timeout: Duration::from_secs(v.whole("request_timeout_secs")),
            retention_days,
            licence_price_per_core_month,
            image_scan_price,
            trial_image_authorizations: v.whole("billing.trial_image_authorizations"),
            log_storage,
            notices,
            tls,
            insecure_plaintext,
            plaintext_hops,
        })
    }
}

/// The TLS files, when `tls_cert` and `tls_key` are set (both or neither);
/// a client CA alone is refused, as it means nothing without HTTPS.
fn tls_files(v: &settings::Values) -> anyhow::Result<Option<crate::config::TlsFiles>> {
    let client_ca = v.path("tls_client_ca");
    match (v.path("tls_cert"), v.path("tls_key")) {
        (Some(cert), Some(key)) => Ok(Some(crate::config::TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) => {
            anyhow::ensure!(
                client_ca.is_none(),
                "{}: set, but a client CA needs HTTPS: set tls_cert and tls_key too",
                named("tls_client_ca")
            );
            Ok(None)
        }
        (Some(_), None) => Err(anyhow!(
            "{}: set without {}; set both",
            named("tls_cert"),
            named("tls_key")
        )),
        (None, Some(_)) => Err(anyhow!(
            "{}: set without {}; set both",
            named("tls_key"),
            named("tls_cert")
        )),
    }
}

/// The notice channels from `[notices]`: each is on when its address is set.
fn notices(v: &settings::Values, insecure_plaintext: bool) -> anyhow::Result<NoticesConfig> {
    let timeout = Duration::from_secs(v.whole("notices.timeout_secs"));
    let max_backoff = Duration::from_secs(v.whole("notices.max_backoff_secs"));
    let set = |key: &str| {
        v.text(key)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let webhook = match set("notices.webhook_url").as_deref() {
        Some(url) => {
            check_webhook_url("notices.webhook_url", url, insecure_plaintext)?;
            let secret = webhook_secret(
                SecretSettings {
                    url: "notices.webhook_url",
                    inline: "notices.webhook_secret",
                    file: "notices.webhook_secret_file",
                    why: "the notification service must be able to verify that notices come from core-meter",
                },
                v.text("notices.webhook_secret").as_deref(),
                v.path("notices.webhook_secret_file").as_deref(),
            )?;
            Some(WebhookConfig {
                url: url.to_string(),
                timeout,
                max_backoff,
                secret,
            })
        }
        None => None,
    };
    let smtp = match (
        set("notices.smtp_relay").as_deref(),
        set("notices.smtp_from").as_deref(),
    ) {
        (Some(relay), from) => {
            check_smtp_relay(relay, insecure_plaintext)?;
            let from = from.ok_or_else(|| {
                anyhow!(
                    "{}: an email address to send from is required when {} is set",
                    named("notices.smtp_from"),
                    named("notices.smtp_relay")
                )
            })?;
            from.parse::<lettre::message::Mailbox>().map_err(|e| {
                anyhow!(
                    "{}: {from:?} is not an email address such as core-meter@example.com ({e})",
                    named("notices.smtp_from")
                )
            })?;
            Some(SmtpConfig {
                relay: relay.to_string(),
                from: from.to_string(),
                timeout,
                max_backoff,
            })
        }
        (None, Some(_)) => anyhow::bail!(
            "{}: set, but {} is not; notices are emailed only through a relay",
            named("notices.smtp_from"),
            named("notices.smtp_relay")
        ),
        (None, None) => None,
    };
    Ok(NoticesConfig { webhook, smtp })
}

/// An SMTP relay URL lettre can use: `smtp://` or `smtps://`, a host, and
/// nothing it would refuse at the first delivery. A message never quotes a
/// password the URL holds.
/// Whether mail to `relay` would cross the network unencrypted: neither
/// `smtps://` nor STARTTLS required (the first `tls=`, as lettre reads it),
/// to a host other than this machine.
fn smtp_in_clear(relay: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(relay) else {
        return false;
    };
    let starttls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v);
    url.scheme() != "smtps"
        && starttls.as_deref() != Some("required")
        && !is_loopback_host(url.host_str().unwrap_or_default())
}

/// Whether a webhook URL is plain HTTP to a host other than this machine.
fn webhook_in_clear(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|u| u.scheme() == "http" && !is_loopback_host(u.host_str().unwrap_or_default()))
}

/// A relay URL lettre takes; beyond this machine, one that encrypts
/// (`smtps://`, or `smtp://…?tls=required` for STARTTLS) unless
/// `insecure_plaintext`: notices name customers and amounts.
fn check_smtp_relay(relay: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let shown = redact_relay(relay);
    anyhow::ensure!(
        relay.starts_with("smtp://") || relay.starts_with("smtps://"),
        "{}: {shown:?} is not an smtp:// or smtps:// URL",
        named("notices.smtp_relay")
    );
    {
        anyhow::ensure!(
            !smtp_in_clear(relay) || insecure_plaintext,
            "{}: {shown:?} sends mail in clear text to a host other than this machine; use \
             smtps://host:465 or smtp://host:587?tls=required, or turn on {} where the network is trusted",
            named("notices.smtp_relay"),
            named("insecure_plaintext")
        );
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(relay).map_err(|e| {
        anyhow!(
            "{}: {shown:?} is not a relay URL such as smtp://mail.example.com:25 ({})",
            named("notices.smtp_relay"),
            redact_password(&e.to_string(), relay)
        )
    })?;
    Ok(())
}

/// The relay URL with its password, if any, replaced, for logs and messages.
pub fn redact_relay(relay: &str) -> String {
    match reqwest::Url::parse(relay) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("redacted"));
            url.to_string()
        }
        Ok(_) => relay.to_string(),
        // Unparsable: show only the scheme, which cannot hold a password.
        Err(_) => format!("{}...", relay.split("://").next().unwrap_or("")),
    }
}

/// `text` without the password of `relay` in it.
fn redact_password(text: &str, relay: &str) -> String {
    match reqwest::Url::parse(relay)
        .ok()
        .and_then(|u| u.password().map(String::from))
    {
        Some(p) if !p.is_empty() => text.replace(&p, "redacted"),
        _ => text.to_string(),
    }
}

/// `localhost` or a loopback address (`[::1]` as a URL writes it).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A webhook URL: http(s), and plain HTTP only to this machine unless
/// `insecure_plaintext` says the network is trusted.
fn check_webhook_url(key: &str, url: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| anyhow!("{}: {url:?} is not an http(s) URL", named(key)))?;
    anyhow::ensure!(
        !webhook_in_clear(parsed.as_str()) || insecure_plaintext,
        "{}: {url:?} is plain HTTP to a host other than this machine, so the requests could be \
         read and changed on the way; use https://, or turn on {} where the network is trusted",
        named(key),
        named("insecure_plaintext")
    );
    Ok(())
}

/// The settings of one webhook's secret, for its messages.
struct SecretSettings {
    url: &'static str,
    inline: &'static str,
    file: &'static str,
    /// Why a secret is required.
    why: &'static str,
}

/// A webhook's signing secret, from its inline setting or its file (read
/// once, here), never both; required, and at least [`MIN_SECRET_BYTES`]
/// long. No message quotes the secret or the file's content.
fn webhook_secret(
    s: SecretSettings,
    inline: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<Secret> {
    let inline = inline.map(str::trim).filter(|t| !t.is_empty());
    let (secret, from) = match (inline, file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "{} and {}: both are set; set only one",
            named(s.inline),
            named(s.file)
        ),
        (Some(secret), None) => (secret.to_string(), s.inline),
        (None, Some(path)) => (
            crate::config::secret_file::read_secret(&named(s.file), path, TOKEN_FILE_MAX_BYTES)?,
            s.file,
        ),
        (None, None) => anyhow::bail!(
            "{}: set, but neither {} nor {} is; every request is signed, and {}",
            named(s.url),
            named(s.inline),
            named(s.file),
            s.why
        ),
    };
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "{}: the secret is {} bytes; it must be at least {MIN_SECRET_BYTES} \
         (for example 32 random bytes as 64 hex digits: openssl rand -hex 32)",
        named(from),
        secret.len()
    );
    Ok(Secret::new(secret))
}

/// The shortest retention that can never prune a sample a bill still reads.
///
/// A sample is accepted up to `max_age` before it is received, and the
/// billing run it marks recomputes from the day of (`at` less the bridging
/// reach), reading from that day's start less the reach and a bucket. So at
/// instant `now` nothing before `now - max_age - reach` can be marked again;
/// a retention of whole days past that, plus one day for the day boundary
/// (a local day can be short, and `now` can be early in its day), prunes only
/// what no future run reads. Accepted samples never reach a pruned day: they
/// are refused `too_old` first.
pub fn min_retention_days(billing: &BillingConfig) -> u32 {
    let hours = billing.limits.max_age.num_hours() + i64::from(billing.rules.reach_hours()) + 1;
    u32::try_from((hours + 23) / 24 + 1).expect("max_sample_age_hours is bounded")
}

/// The most a token file may hold: a token is under a hundred bytes, so more
/// means the setting names the wrong file.
const TOKEN_FILE_MAX_BYTES: u64 = 4096;

/// The admin token from `admin_token` or from the file `admin_token_file`
/// names (here at start, and again when it changes; refused when anyone may
/// read it), never both. A blank `admin_token` counts as unset.
/// No message quotes the token or the file's content.
fn admin_token(token: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = token.filter(|t| !t.trim().is_empty());
    let Some(path) = file else {
        return Ok(token);
    };
    anyhow::ensure!(
        token.is_none(),
        "{} and {}: both are set; set only one",
        named("admin_token"),
        named("admin_token_file")
    );
    read_admin_token_file(path).map(Some)
}

/// The admin token a file holds (see [`admin_token`]), at start and at each change.
pub fn read_admin_token_file(path: &Path) -> anyhow::Result<String> {
    crate::config::secret_file::read_secret(&named("admin_token_file"), path, TOKEN_FILE_MAX_BYTES)
}

/// The TOML file as a table of tables; its keys and values are checked
/// against the settings list (`settings::Values::read`) once the environment
/// and the flags are laid over it.
fn read_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim().replace('\n', " ")
        )
    })
}

/// Lays the environment over the file's table: every setting's variable
/// that is set and not empty, read as the setting's kind.
fn overlay_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    for s in settings::SETTINGS {
        let Some(text) = env(s.env).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = settings::from_env(s, &text).map_err(|e| anyhow!("{}: {e}", named(s.key)))?;
        match s.key.split_once('.') {
            Some((section, key)) => {
                let section = table
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(section) = section {
                    section.insert(key.to_string(), value);
                }
            }
            None => {
                table.insert(s.key.to_string(), value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A secret file only its owner may read.
    fn write_secret(path: &Path, text: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: Flags) -> anyhow::Result<Config> {
        // The driver's reading of PostgreSQL URLs is the store's; its tests
        // with this module's are in `app` (`load_config`).
        load_reading(file, env, flags, &|_| true)
    }

    /// `Config::load` of `file` (written to a temporary file), `env` and
    /// `flags`, PostgreSQL URLs read by `postgres_is_private`.
    pub(crate) fn load_reading(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: Flags,
        postgres_is_private: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = flags;
        if let Some(text) = file {
            let path = dir.path().join("core-meter.toml");
            std::fs::write(&path, text).unwrap();
            flags.config = Some(path);
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, &|k| env.get(k).cloned(), postgres_is_private)
    }

    #[test]
    fn with_nothing_set_the_service_listens_on_8080_with_sqlite_under_data() {
        let c = load(None, &[], Flags::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database,
            Database::Sqlite(PathBuf::from("data/core-meter.sqlite"))
        );
        assert_eq!(c.billing, BillingConfig::default());
        assert!(c.webhook.is_none());
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let file =
            "listen = \"127.0.0.1:1000\"\n[billing]\ntimezone = \"UTC\"\ngap_bridge_hours = 2\n";
        let c = load(
            Some(file),
            &[
                ("CORE_METER_LISTEN", "127.0.0.1:2000"),
                ("CORE_METER_TIMEZONE", "Asia/Kolkata"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2000");
        assert_eq!(c.billing.zone.name(), "Asia/Kolkata");
        assert_eq!(c.billing.rules.gap_bridge_hours, 2);
        let flags = Flags {
            listen: Some("127.0.0.1:3000".into()),
            ..Flags::default()
        };
        let c = load(
            Some(file),
            &[("CORE_METER_LISTEN", "127.0.0.1:2000")],
            flags,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn a_bad_setting_names_itself() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                None,
                &[("CORE_METER_TIMEZONE", "Mars/Base")],
                "billing.timezone",
            ),
            (None, &[("CORE_METER_DEFAULT_CAP_CORES", "499")], "499"),
            (
                None,
                &[("CORE_METER_GAP_BRIDGE_HOURS", "three")],
                "CORE_METER_GAP_BRIDGE_HOURS",
            ),
            (None, &[("CORE_METER_LISTEN", "localhost")], "listen"),
            (
                None,
                &[("CORE_METER_WEBHOOK_URL", "ftp://x")],
                "webhook.url",
            ),
            (
                None,
                &[("CORE_METER_PRICE_PER_CORE_DAY", "cheap")],
                "billing.price_per_core_day",
            ),
            (Some("[billing]\ntimezon = \"UTC\"\n"), &[], "timezon"),
            (Some("listen = 8080\n"), &[], "listen"),
        ];
        for (file, env, needle) in cases {
            let err = format!("{:#}", load(*file, env, Flags::default()).unwrap_err());
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn notices_go_nowhere_unless_a_webhook_or_a_relay_is_set() {
        let c = load(None, &[], Flags::default()).unwrap();
        assert!(c.notices.webhook.is_none() && c.notices.smtp.is_none());
        assert_eq!(
            c.notices.channels(),
            crate::config::NoticeChannels::default()
        );
        let c = load(
            Some("[notices]\nwebhook_url = \"\"\ntimeout_secs = 5\n"),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert!(c.notices.webhook.is_none(), "a blank URL is unset");
    }

    #[test]
    fn the_notice_settings_come_from_the_file_and_the_environment_beats_it() {
        let file = "[notices]\n\
                    webhook_url = \"https://hooks.example.com/notices\"\n\
                    webhook_secret = \"notices-secret-of-at-least-32-bytes\"\n\
                    timeout_secs = 7\n\
                    smtp_relay = \"smtp://mail.example.com:2525?tls=required\"\n\
                    smtp_from = \"core-meter <billing@example.com>\"\n";
        let c = load(Some(file), &[], Flags::default()).unwrap();
        let webhook = c.notices.webhook.clone().unwrap();
        assert_eq!(webhook.url, "https://hooks.example.com/notices");
        assert_eq!(webhook.timeout, Duration::from_secs(7));
        assert_eq!(webhook.max_backoff, Duration::from_secs(300));
        let smtp = c.notices.smtp.clone().unwrap();
        assert_eq!(smtp.relay, "smtp://mail.example.com:2525?tls=required");
        assert_eq!(smtp.from, "core-meter <billing@example.com>");
        assert_eq!(smtp.timeout, Duration::from_secs(7));
        assert_eq!(
            c.notices.channels(),
            crate::config::NoticeChannels {
                webhook: true,
                email: true
            }
        );
        let c = load(
            Some(file),
            &[
                ("CORE_METER_NOTICES_WEBHOOK_URL", "http://127.0.0.1:9/n"),
                ("CORE_METER_NOTICES_TIMEOUT_SECS", "3"),
                ("CORE_METER_NOTICES_MAX_BACKOFF_SECS", "60"),
                (
                    "CORE_METER_NOTICES_SMTP_RELAY",
                    "smtps://notices:secret@relay.example.com",
                ),
                ("CORE_METER_NOTICES_SMTP_FROM", "ops@example.com"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.notices.webhook.unwrap().url, "http://127.0.0.1:9/n");
        let smtp = c.notices.smtp.unwrap();
        assert_eq!(smtp.relay, "smtps://notices:secret@relay.example.com");
        assert_eq!(smtp.from, "ops@example.com");
        assert_eq!(smtp.timeout, Duration::from_secs(3));
        assert_eq!(smtp.max_backoff, Duration::from_secs(60));
        assert!(
            c.webhook.is_none(),
            "the bill webhook is a setting of its own"
        );
    }

    #[test]
    fn a_bad_notice_setting_names_itself() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let relay = ("CORE_METER_NOTICES_SMTP_RELAY", "smtps://mail.example.com");
        let cases: &[Case] = &[
            (
                None,
                &[("CORE_METER_NOTICES_WEBHOOK_URL", "ftp://x")],
                &["notices.webhook_url", "CORE_METER_NOTICES_WEBHOOK_URL"],
            ),
            (
                None,
                &[
                    ("CORE_METER_NOTICES_SMTP_RELAY", "http://mail.example.com"),
                    ("CORE_METER_NOTICES_SMTP_FROM", "a@example.com"),
                ],
                &["notices.smtp_relay", "smtp:// or smtps://"],
            ),
            (
                None,
                &[
                    (
                        "CORE_METER_NOTICES_SMTP_RELAY",
                        "smtp://mail.example.com?tls=sometimes",
                    ),
                    ("CORE_METER_NOTICES_SMTP_FROM", "a@example.com"),
                ],
                &["notices.smtp_relay", "CORE_METER_NOTICES_SMTP_RELAY"],
            ),
            (
                None,
                &[relay],
                &["notices.smtp_from", "required", "notices.smtp_relay"],
            ),
            (
                None,
                &[
                    relay,
                    ("CORE_METER_NOTICES_SMTP_FROM", "billing at example"),
                ],
                &["notices.smtp_from", "not an email address"],
            ),
            (
                Some("[notices]\nsmtp_from = \"a@example.com\"\n"),
                &[],
                &["notices.smtp_from", "set, but setting notices.smtp_relay"],
            ),
            (
                Some("[notices]\ntimeout_secs = 0\n"),
                &[],
                &["notices.timeout_secs", "1 to 600"],
            ),
            (
                None,
                &[("CORE_METER_NOTICES_MAX_BACKOFF_SECS", "soon")],
                &["CORE_METER_NOTICES_MAX_BACKOFF_SECS", "whole number"],
            ),
            (
                Some("[notices]\nsmtp_host = \"mail\"\n"),
                &[],
                &["smtp_host"],
            ),
        ];
        for (file, env, needles) in cases {
            let err = format!("{:#}", load(*file, env, Flags::default()).unwrap_err());
            for needle in *needles {
                assert!(err.contains(needle), "{err:?} should name {needle:?}");
            }
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn a_refused_relay_url_never_quotes_its_password() {
        for relay in [
            "http://notices:hunter2@mail.example.com",
            "smtp://notices:hunter2@mail.example.com?tls=sometimes",
        ] {
            let err = format!(
                "{:#}",
                load(
                    None,
                    &[
                        ("CORE_METER_NOTICES_SMTP_RELAY", relay),
                        ("CORE_METER_NOTICES_SMTP_FROM", "a@example.com"),
                    ],
                    Flags::default(),
                )
                .unwrap_err()
            );
            assert!(err.contains("notices.smtp_relay"), "{err:?}");
            assert!(!err.contains("hunter2"), "{err:?}");
        }
        assert_eq!(
            redact_relay("smtps://notices:hunter2@mail.example.com:465"),
            "smtps://notices:redacted@mail.example.com:465"
        );
        assert_eq!(
            redact_relay("smtp://mail.example.com:25"),
            "smtp://mail.example.com:25"
        );
    }

    #[test]
    fn retention_defaults_to_400_days_and_is_set_by_file_or_environment() {
        assert_eq!(
            load(None, &[], Flags::default()).unwrap().retention_days,
            400
        );
        let c = load(Some("retention_days = 30\n"), &[], Flags::default()).unwrap();
        assert_eq!(c.retention_days, 30);
        let c = load(
            Some("retention_days = 30\n"),
            &[("CORE_METER_RETENTION_DAYS", "16")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.retention_days, 16);
    }

    #[test]
    fn a_retention_that_could_prune_a_sample_a_bill_still_reads_is_refused_naming_why() {
        assert_eq!(min_retention_days(&BillingConfig::default()), 16);
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (None, &[("CORE_METER_RETENTION_DAYS", "15")]),
            (Some("retention_days = 3\n"), &[]),
            (
                None,
                &[
                    ("CORE_METER_RETENTION_DAYS", "31"),
                    ("CORE_METER_MAX_SAMPLE_AGE_HOURS", "720"),
                ],
            ),
        ];
        for (file, env) in cases {
            let err = format!("{:#}", load(*file, env, Flags::default()).unwrap_err());
            for needle in [
                "retention_days",
                "CORE_METER_RETENTION_DAYS",
                "too short",
                "max_sample_age_hours",
            ] {
                assert!(err.contains(needle), "{err:?} should name {needle:?}");
            }
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        let ok = load(
            None,
            &[
                ("CORE_METER_RETENTION_DAYS", "32"),
                ("CORE_METER_MAX_SAMPLE_AGE_HOURS", "720"),
            ],
            Flags::default(),
        );
        assert_eq!(ok.unwrap().retention_days, 32);
    }

    #[test]
    fn the_shortest_retention_outlasts_every_late_sample_and_its_bridging() {
        // At `now`, the oldest instant a future run may read is
        // now - max_age - reach - 1 h; the first kept day starts no later than
        // `retention_days` whole days before today, of which one may be short.
        for max_age_hours in [1, 23, 24, 25, 336, 337, 8784] {
            for gap_bridge_hours in [0, 3, 20, 24] {
                let mut billing = BillingConfig::default();
                billing.limits.max_age = TimeDelta::hours(max_age_hours);
                billing.rules.gap_bridge_hours = gap_bridge_hours;
                let days = i64::from(min_retention_days(&billing));
                let read_back = max_age_hours + i64::from(gap_bridge_hours) + 1 + 1;
                assert!(
                    (days - 1) * 24 >= read_back,
                    "{max_age_hours} h, {gap_bridge_hours} h: {days} days"
                );
            }
        }
    }

    #[test]
    fn the_admin_token_can_come_from_a_file_trimmed_of_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        write_secret(&path, "  cma_from_a_secret \n\n");
        let by_env = load(
            None,
            &[("CORE_METER_ADMIN_TOKEN_FILE", path.to_str().unwrap())],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(
            by_env.admin_token.as_ref().map(|t| t.expose()),
            Some("cma_from_a_secret")
        );
        let by_file = load(
            Some(&format!(
                "admin_token_file = {:?}\n",
                path.to_str().unwrap()
            )),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(
            by_file.admin_token.as_ref().map(|t| t.expose()),
            Some("cma_from_a_secret")
        );
        let neither = load(None, &[], Flags::default()).unwrap();
        assert_eq!(neither.admin_token, None);
    }

    #[test]
    fn an_unreadable_admin_token_file_names_the_setting_the_path_and_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-secret");
        let err = format!(
            "{:#}",
            load(
                None,
                &[("CORE_METER_ADMIN_TOKEN_FILE", missing.to_str().unwrap())],
                Flags::default(),
            )
            .unwrap_err()
        );
        for needle in [
            "admin_token_file",
            "CORE_METER_ADMIN_TOKEN_FILE",
            missing.to_str().unwrap(),
            "os error",
        ] {
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
        assert!(!err.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn an_empty_admin_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", " \n\t\n"] {
            let path = dir.path().join("admin-token");
            write_secret(&path, content);
            let err = format!(
                "{:#}",
                load(
                    None,
                    &[("CORE_METER_ADMIN_TOKEN_FILE", path.to_str().unwrap())],
                    Flags::default(),
                )
                .unwrap_err()
            );
            assert!(
                err.contains("admin_token_file") && err.contains("is empty"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn an_admin_token_file_larger_than_any_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        write_secret(&path, "x".repeat(5000));
        let err = format!(
            "{:#}",
            load(
                None,
                &[("CORE_METER_ADMIN_TOKEN_FILE", path.to_str().unwrap())],
                Flags::default(),
            )
            .unwrap_err()
        );
        assert!(
            err.contains("admin_token_file") && err.contains("4096 bytes"),
            "{err:?}"
        );
        assert!(
            !err.contains("xxxx"),
            "the content is never quoted: {err:?}"
        );
    }

    #[test]
    fn an_admin_token_and_an_admin_token_file_together_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        write_secret(&path, "cma_from_a_secret\n");
        let path = path.to_str().unwrap();
        let file_and_env = format!("admin_token_file = {path:?}\n");
        type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                None,
                vec![
                    ("CORE_METER_ADMIN_TOKEN", "cma_inline"),
                    ("CORE_METER_ADMIN_TOKEN_FILE", path),
                ],
            ),
            (
                Some("admin_token = \"cma_inline\"\n"),
                vec![("CORE_METER_ADMIN_TOKEN_FILE", path)],
            ),
            (
                Some(&file_and_env),
                vec![("CORE_METER_ADMIN_TOKEN", "cma_inline")],
            ),
        ];
        for (file, env) in cases {
            let err = format!("{:#}", load(file, &env, Flags::default()).unwrap_err());
            for needle in [
                "setting admin_token ",
                "CORE_METER_ADMIN_TOKEN)",
                "setting admin_token_file ",
                "CORE_METER_ADMIN_TOKEN_FILE",
            ] {
                assert!(err.contains(needle), "{err:?} should name {needle:?}");
            }
            assert!(!err.contains("cma_"), "no token is quoted: {err:?}");
        }
    }

    #[test]
    fn plain_http_beyond_loopback_is_refused_unless_insecure_plaintext_is_set() {
        let flags = |listen: &str| Flags {
            listen: Some(listen.into()),
            ..Flags::default()
        };
        let e = load(None, &[], flags("0.0.0.0:8080"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("setting listen"), "{e}");
        assert!(e.contains("clear text") && e.contains("tls_cert"), "{e}");
        assert!(e.contains("insecure_plaintext"), "{e}");
        assert!(load(None, &[], flags("127.0.0.1:8080")).is_ok());
        assert!(load(None, &[], flags("[::1]:8080")).is_ok());

        let c = load(
            None,
            &[("CORE_METER_INSECURE_PLAINTEXT", "true")],
            flags("0.0.0.0:8080"),
        )
        .unwrap();
        assert!(c.insecure_plaintext && c.tls.is_none());
        let c = load(
            Some("insecure_plaintext = true"),
            &[],
            flags("10.0.0.5:8080"),
        )
        .unwrap();
        assert!(c.insecure_plaintext);
        let by_flag = Flags {
            insecure_plaintext: true,
            ..flags("0.0.0.0:8080")
        };
        assert!(load(None, &[], by_flag).unwrap().insecure_plaintext);
        let e = load(
            None,
            &[("CORE_METER_INSECURE_PLAINTEXT", "perhaps")],
            Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("CORE_METER_INSECURE_PLAINTEXT") && e.contains("perhaps"),
            "{e}"
        );
    }

    #[test]
    fn tls_needs_both_a_certificate_and_a_key_and_serves_any_address() {
        let c = load(
            Some("listen = \"0.0.0.0:8443\"\ntls_cert = \"/tls/tls.crt\"\ntls_key = \"/tls/tls.key\""),
            &[("CORE_METER_TLS_CLIENT_CA", "/ca/ca.crt")],
            Flags::default(),
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/ca/ca.crt")));
        assert!(!c.insecure_plaintext);

        let e = load(
            None,
            &[("CORE_METER_TLS_CERT", "/tls/tls.crt")],
            Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("setting tls_cert") && e.contains("without setting tls_key"),
            "{e}"
        );
        let e = load(
            None,
            &[],
            Flags {
                tls_key: Some("/tls/tls.key".into()),
                ..Flags::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("setting tls_key") && e.contains("without setting tls_cert"),
            "{e}"
        );
        let e = load(Some("tls_client_ca = \"/ca.crt\""), &[], Flags::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("setting tls_client_ca") && e.contains("needs HTTPS"),
            "{e}"
        );
    }

    #[test]
    fn a_webhook_signs_with_its_secret_from_the_setting_or_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, format!("  {SECRET}\n")).unwrap();
        set_mode(&path, 0o640);
        let url = (
            "CORE_METER_WEBHOOK_URL",
            "https://billing.example.com/lines",
        );
        let by_file = load(
            None,
            &[
                url,
                ("CORE_METER_WEBHOOK_SECRET_FILE", path.to_str().unwrap()),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(by_file.webhook.unwrap().secret, Secret::new(SECRET));
        let by_env = load(
            None,
            &[url, ("CORE_METER_WEBHOOK_SECRET", SECRET)],
            Flags::default(),
        )
        .unwrap();
        let webhook = by_env.webhook.unwrap();
        assert_eq!(webhook.secret, Secret::new(SECRET));
        assert!(
            !format!("{webhook:?}").contains(SECRET),
            "Debug never shows the secret: {webhook:?}"
        );
        let notices = format!(
            "[notices]\nwebhook_url = \"http://localhost:9/n\"\nwebhook_secret_file = {:?}\n",
            path.to_str().unwrap()
        );
        let c = load(Some(&notices), &[], Flags::default()).unwrap();
        assert_eq!(c.notices.webhook.unwrap().secret, Secret::new(SECRET));
    }

    #[test]
    fn a_webhook_without_a_secret_is_refused_naming_the_settings_and_why() {
        let err = err_of(
            None,
            &[("CORE_METER_WEBHOOK_URL", "https://billing.example.com/l")],
        );
        for needle in [
            "webhook.url",
            "CORE_METER_WEBHOOK_SECRET)",
            "CORE_METER_WEBHOOK_SECRET_FILE",
            "bills are money",
        ] {
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
        let err = err_of(
            None,
            &[(
                "CORE_METER_NOTICES_WEBHOOK_URL",
                "https://hooks.example.com/n",
            )],
        );
        for needle in [
            "notices.webhook_url",
            "CORE_METER_NOTICES_WEBHOOK_SECRET_FILE",
        ] {
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
        assert!(!err.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn a_short_secret_is_refused_naming_the_setting_and_its_length_but_never_the_secret() {
        let err = err_of(
            None,
            &[
                ("CORE_METER_WEBHOOK_URL", "https://billing.example.com/l"),
                ("CORE_METER_WEBHOOK_SECRET", "hunter2-is-short"),
            ],
        );
        for needle in [
            "webhook.secret",
            "CORE_METER_WEBHOOK_SECRET",
            "16 bytes",
            "at least 32",
        ] {
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
        assert!(
            !err.contains("hunter2"),
            "the secret is never quoted: {err:?}"
        );
    }

    #[test]
    fn a_secret_both_inline_and_in_a_file_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, SECRET).unwrap();
        set_mode(&path, 0o600);
        let err = err_of(
            None,
            &[
                (
                    "CORE_METER_NOTICES_WEBHOOK_URL",
                    "https://hooks.example.com/n",
                ),
                ("CORE_METER_NOTICES_WEBHOOK_SECRET", SECRET),
                (
                    "CORE_METER_NOTICES_WEBHOOK_SECRET_FILE",
                    path.to_str().unwrap(),
                ),
            ],
        );
        for needle in [
            "setting notices.webhook_secret ",
            "notices.webhook_secret_file",
            "both",
        ] {
            assert!(err.contains(needle), "{err:?} should name {needle:?}");
        }
        assert!(!err.contains(SECRET), "{err:?}");
    }

    #[test]
    fn a_world_readable_empty_or_missing_secret_file_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let url = ("CORE_METER_WEBHOOK_URL", "https://billing.example.com/l");
        let open = dir.path().join("open-secret");
        std::fs::write(&open, SECRET).unwrap();
        set_mode(&open, 0o644);
        // Through a link, as Kubernetes mounts a Secret: the target's mode counts.
        let link = dir.path().join("linked-secret");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        for path in [&open, &link] {
            let err = err_of(
                None,
                &[
                    url,
                    ("CORE_METER_WEBHOOK_SECRET_FILE", path.to_str().unwrap()),
                ],
            );
            for needle in [
                "webhook.secret_file",
                path.to_str().unwrap(),
                "read by anyone",
                "644",
            ] {
                assert!(err.contains(needle), "{err:?} should name {needle:?}");
            }
            assert!(!err.contains(SECRET), "{err:?}");
        }
        let empty = dir.path().join("empty-secret");
        std::fs::write(&empty, " \n").unwrap();
        set_mode(&empty, 0o600);
        let err = err_of(
            None,
            &[
                url,
                ("CORE_METER_WEBHOOK_SECRET_FILE", empty.to_str().unwrap()),
            ],
        );
        assert!(err.contains("is empty"), "{err:?}");
        let missing = dir.path().join("no-such-secret");
        let err = err_of(
            None,
            &[
                url,
                ("CORE_METER_WEBHOOK_SECRET_FILE", missing.to_str().unwrap()),
            ],
        );
        assert!(
            err.contains(missing.to_str().unwrap()) && err.contains("os error"),
            "{err:?}"
        );
    }

    #[test]
    fn plain_http_goes_only_to_this_machine_unless_insecure_plaintext_is_set() {
        let secret = ("CORE_METER_WEBHOOK_SECRET", SECRET);
        for url in [
            "http://127.0.0.1:9/l",
            "http://127.1.2.3/l",
            "http://localhost:9/l",
            "http://[::1]:9/l",
            "https://billing.example.com/l",
        ] {
            let c = load(
                None,
                &[("CORE_METER_WEBHOOK_URL", url), secret],
                Flags::default(),
            );
            assert!(c.is_ok(), "{url}: {:#}", c.unwrap_err());
        }
        for url in [
            "http://billing.example.com/l",
            "http://10.0.0.7:8080/l",
            "http://[fd00::1]/l",
        ] {
            let err = err_of(None, &[("CORE_METER_WEBHOOK_URL", url), secret]);
            for needle in [
                "webhook.url",
                "plain HTTP",
                "https://",
                "insecure_plaintext",
            ] {
                assert!(err.contains(needle), "{err:?} should name {needle:?}");
            }
            let c = load(
                None,
                &[
                    ("CORE_METER_WEBHOOK_URL", url),
                    secret,
                    ("CORE_METER_INSECURE_PLAINTEXT", "true"),
                ],
                Flags::default(),
            )
            .unwrap();
            assert!(c.insecure_plaintext);
            assert_eq!(c.webhook.unwrap().url, url);
        }
        let notices = "insecure_plaintext = false\n[notices]\n\
                       webhook_url = \"http://notifications.billing.svc/n\"\n\
                       webhook_secret = \"a-webhook-secret-of-at-least-32-bytes\"\n";
        let err = err_of(Some(notices), &[]);
        assert!(
            err.contains("notices.webhook_url") && err.contains("plain HTTP"),
            "{err:?}"
        );
        let c = load(
            Some(&notices.replace("false", "true")),
            &[],
            Flags::default(),
        )
        .unwrap();
        assert!(c.notices.webhook.is_some());
        assert!(
            !load(None, &[], Flags::default())
                .unwrap()
                .insecure_plaintext
        );
        let err = err_of(None, &[("CORE_METER_INSECURE_PLAINTEXT", "maybe")]);
        assert!(err.contains("CORE_METER_INSECURE_PLAINTEXT"), "{err:?}");
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn mail_to_a_relay_beyond_loopback_must_be_encrypted_unless_insecure_plaintext() {
        let from = ("CORE_METER_NOTICES_SMTP_FROM", "billing@example.com");
        for fine in [
            "smtp://127.0.0.1:2525",
            "smtp://localhost:25",
            "smtps://mail.example.com:465",
            "smtp://mail.example.com:587?tls=required",
        ] {
            let c = load(
                None,
                &[("CORE_METER_NOTICES_SMTP_RELAY", fine), from],
                Flags::default(),
            );
            assert!(c.is_ok(), "{fine}: {:?}", c.err());
        }
        for plain in [
            "smtp://mail.example.com:25",
            "smtp://user:hunter2@10.0.0.9:25?tls=opportunistic",
        ] {
            let e = load(
                None,
                &[("CORE_METER_NOTICES_SMTP_RELAY", plain), from],
                Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("setting notices.smtp_relay") && e.contains("clear text"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
            let c = load(
                None,
                &[
                    ("CORE_METER_NOTICES_SMTP_RELAY", plain),
                    from,
                    ("CORE_METER_INSECURE_PLAINTEXT", "true"),
                ],
                Flags::default(),
            );
            assert!(c.is_ok(), "{plain}");
        }
    }

    const SECRET: &str = "a-webhook-secret-of-at-least-32-bytes";

    fn err_of(file: Option<&str>, env: &[(&str, &str)]) -> String {
        format!(
            "{:#}",
            load(file, env, crate::config::Flags::default()).unwrap_err()
        )
    }

    #[test]
    fn an_unknown_key_in_the_file_or_a_section_is_an_error_naming_it() {
        for (text, key) in [
            ("listne = \"127.0.0.1:8080\"\n", "listne"),
            ("[billing]\ntimezon = \"UTC\"\n", "timezon"),
            ("[webhooks]\nurl = \"https://b.example\"\n", "webhooks"),
        ] {
            let e = load(Some(text), &[], Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("config file ") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn a_malformed_value_from_the_file_or_the_environment_names_its_key() {
        let e = load(
            Some("[billing]\ngap_bridge_hours = \"three\"\n"),
            &[],
            Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gap_bridge_hours"), "{e}");
        for (var, value, key, why) in [
            (
                "CORE_METER_GAP_BRIDGE_HOURS",
                "three",
                "billing.gap_bridge_hours",
                "is not a whole number",
            ),
            (
                "CORE_METER_RETENTION_DAYS",
                "5000000000",
                "retention_days",
                "is too large",
            ),
            (
                "CORE_METER_LOG_JSON",
                "maybe",
                "log_json",
                "is not true or false",
            ),
            (
                "CORE_METER_INSECURE_PLAINTEXT",
                "2",
                "insecure_plaintext",
                "is not true or false",
            ),
        ] {
            let e = load(None, &[(var, value)], Flags::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("setting {key} ")) && e.contains(var) && e.contains(why),
                "{e}"
            );
        }
        let c = load(None, &[("CORE_METER_LOG_JSON", "Yes")], Flags::default()).unwrap();
        assert!(c.log_json);
    }

    #[test]
    fn worker_threads_default_to_the_cpus_the_process_may_use_and_are_bounded() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            load(None, &[], Flags::default()).unwrap().worker_threads,
            cpus
        );
        let one = load(
            None,
            &[("CORE_METER_WORKER_THREADS", "1")],
            Flags::default(),
        );
        assert_eq!(one.unwrap().worker_threads, 1);
        let e = load(
            None,
            &[("CORE_METER_WORKER_THREADS", "257")],
            Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("setting worker_threads ") && e.contains("257"),
            "{e}"
        );
    }

    #[test]
    fn every_setting_in_the_list_is_a_key_of_the_file_and_of_the_environment() {
        // Each setting alone, from the file and from the environment, with a
        // value of its kind: taken, and read back the same.
        for s in settings::SETTINGS {
            let (file, env) = match s.kind {
                settings::Kind::Boolean => ("true".to_string(), "true".to_string()),
                settings::Kind::Whole { min, .. } => (min.to_string(), min.to_string()),
                settings::Kind::Text | settings::Kind::Path => {
                    ("\"x\"".to_string(), "x".to_string())
                }
            };
            let text = match s.key.split_once('.') {
                Some((section, key)) => format!("[{section}]\n{key} = {file}\n"),
                None => format!("{} = {file}\n", s.key),
            };
            let from_file = settings::Values::read(toml::from_str(&text).unwrap(), "f").unwrap();
            let mut table = toml::Table::new();
            overlay_env(&mut table, &|var| (var == s.env).then(|| env.to_string())).unwrap();
            let from_env = settings::Values::read(table, "env").unwrap();
            for values in [from_file, from_env] {
                match s.kind {
                    settings::Kind::Boolean => assert!(values.flag(s.key), "{}", s.key),
                    settings::Kind::Whole { min, .. } => assert_eq!(values.whole(s.key), min),
                    _ => assert_eq!(values.text(s.key).as_deref(), Some("x"), "{}", s.key),
                }
            }
        }
    }

    #[test]
    fn the_defaults_in_the_settings_list_are_the_billing_defaults() {
        let c = load(None, &[], Flags::default()).unwrap();
        let d = BillingConfig::default();
        assert_eq!(c.billing.zone, d.zone);
        assert_eq!(c.billing.rules, d.rules);
        assert_eq!(c.billing.limits.max_age, d.limits.max_age);
        assert_eq!(c.billing.limits.max_future, d.limits.max_future);
        assert_eq!(c.billing.currency, d.currency);
        assert_eq!(
            c.licence_price_per_core_month,
            shared::lifecycle::default_price_per_core_month()
        );
    }
}
