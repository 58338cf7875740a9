//! Every setting, once: its file key, its environment variable, the kind of
//! value it takes and what the reference shows for it. The environment
//! overlay and the settings table of `docs/settings.md` come from this list;
//! the file's keys are `FileConfig`'s fields, which a test holds to it.

/// The kind of value a setting takes, which the environment's text is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Path,
    /// `1`/`true`/`yes` or `0`/`false`/`no`, in any case.
    Boolean,
    /// A whole number up to the given maximum.
    Whole(u64),
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// The key in the TOML file; `section.key` inside a section.
    pub key: &'static str,
    /// The environment variable that overrides the file.
    pub env: &'static str,
    pub kind: Kind,
    /// The reference's "default" column: the default and what it means.
    pub shown: &'static str,
}

/// Where the settings table lives, generated from [`SETTINGS`].
pub const TABLE_DOC: &str = "docs/settings.md";

/// Every setting, in the reference table's order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        env: "CORE_METER_LISTEN",
        kind: Kind::Text,
        shown: "`127.0.0.1:8080`",
    },
    Setting {
        key: "database",
        env: "CORE_METER_DATABASE",
        kind: Kind::Text,
        shown: "`data/core-meter.sqlite`; a `postgres://user:password@host:5432/db` URL is a PostgreSQL database (it must exist; the schema is created on start; the password is never logged). Beyond loopback it needs `?sslmode=require` (or `insecure_plaintext`); TLS is rustls, the server's certificate verified against the system's roots or the PEM bundle of `&sslrootcert=/path/ca.crt`",
    },
    Setting {
        key: "admin_token",
        env: "CORE_METER_ADMIN_TOKEN",
        kind: Kind::Text,
        shown: "generated at first start, printed once",
    },
    Setting {
        key: "admin_token_file",
        env: "CORE_METER_ADMIN_TOKEN_FILE",
        kind: Kind::Path,
        shown: "none; a file (a mounted Secret) whose content, trimmed, is the admin token; read at start and again when the file changes (looked at every 10 s: a rotated Secret takes effect without a restart and the old token stops; a change that cannot be used is logged and the token in force stays); refused when anyone may read it (`o+r`); not together with `admin_token`",
    },
    Setting {
        key: "tls_cert",
        env: "CORE_METER_TLS_CERT",
        kind: Kind::Path,
        shown: "none; with `tls_key`, the service speaks HTTPS only: the PEM certificate chain, its own first (flag `--tls-cert`)",
    },
    Setting {
        key: "tls_key",
        env: "CORE_METER_TLS_KEY",
        kind: Kind::Path,
        shown: "none; the PEM private key (PKCS#8, PKCS#1 or SEC1), refused when anyone may read it (flag `--tls-key`)",
    },
    Setting {
        key: "tls_client_ca",
        env: "CORE_METER_TLS_CLIENT_CA",
        kind: Kind::Path,
        shown: "none; a PEM CA bundle: `POST /v1/samples` then takes only connections with a client certificate it signed (flag `--client-ca`)",
    },
    Setting {
        key: "insecure_plaintext",
        env: "CORE_METER_INSECURE_PLAINTEXT",
        kind: Kind::Boolean,
        shown: "`false`; clear text beyond this machine is refused at start unless set (flag `--insecure-plaintext`): plain HTTP on the listen address, `http://` webhooks, an unencrypted SMTP relay, PostgreSQL without `sslmode=require`. Each hop it lets through is named in a warning at start",
    },
    Setting {
        key: "log_json",
        env: "CORE_METER_LOG_JSON",
        kind: Kind::Boolean,
        shown: "`false`",
    },
    Setting {
        key: "request_timeout_secs",
        env: "CORE_METER_REQUEST_TIMEOUT_SECS",
        kind: Kind::Whole(u64::MAX),
        shown: "`30`",
    },
    Setting {
        key: "billing.timezone",
        env: "CORE_METER_TIMEZONE",
        kind: Kind::Text,
        shown: "`Asia/Shanghai`",
    },
    Setting {
        key: "billing.price_per_core_day",
        env: "CORE_METER_PRICE_PER_CORE_DAY",
        kind: Kind::Text,
        shown: "`0.25`",
    },
    Setting {
        key: "billing.billable_core_rounding",
        env: "CORE_METER_BILLABLE_CORE_ROUNDING",
        kind: Kind::Text,
        shown: "`ceil` (`half_up`, `none`)",
    },
    Setting {
        key: "billing.gap_bridge_hours",
        env: "CORE_METER_GAP_BRIDGE_HOURS",
        kind: Kind::Whole(u32::MAX as u64),
        shown: "`3` (at most 24)",
    },
    Setting {
        key: "billing.max_sample_age_hours",
        env: "CORE_METER_MAX_SAMPLE_AGE_HOURS",
        kind: Kind::Whole(u32::MAX as u64),
        shown: "`336`",
    },
    Setting {
        key: "billing.max_future_minutes",
        env: "CORE_METER_MAX_FUTURE_MINUTES",
        kind: Kind::Whole(u32::MAX as u64),
        shown: "`5`",
    },
    Setting {
        key: "billing.default_cap_cores",
        env: "CORE_METER_DEFAULT_CAP_CORES",
        kind: Kind::Whole(u32::MAX as u64),
        shown: "`500` (at least 500)",
    },
    Setting {
        key: "billing.currency",
        env: "CORE_METER_CURRENCY",
        kind: Kind::Text,
        shown: "`USD`",
    },
    Setting {
        key: "retention_days",
        env: "CORE_METER_RETENTION_DAYS",
        kind: Kind::Whole(u32::MAX as u64),
        shown: "`400`; at least the maximum sample age plus gap bridging plus 2 h, rounded up to days, plus a day (16 with the defaults)",
    },
    Setting {
        key: "webhook.url",
        env: "CORE_METER_WEBHOOK_URL",
        kind: Kind::Text,
        shown: "none: lines stay queryable; `http://` only to this machine (loopback) unless `insecure_plaintext`",
    },
    Setting {
        key: "webhook.secret",
        env: "CORE_METER_WEBHOOK_SECRET",
        kind: Kind::Text,
        shown: "required with `webhook.url` (or `webhook.secret_file`): the key requests are signed with, at least 32 bytes (`openssl rand -hex 32`); never logged",
    },
    Setting {
        key: "webhook.secret_file",
        env: "CORE_METER_WEBHOOK_SECRET_FILE",
        kind: Kind::Path,
        shown: "none; a file (a mounted Secret) holding the secret, trimmed, read once at start, not readable by every user (mode `o+r` is refused); not together with `webhook.secret`",
    },
    Setting {
        key: "webhook.timeout_secs",
        env: "CORE_METER_WEBHOOK_TIMEOUT_SECS",
        kind: Kind::Whole(u64::MAX),
        shown: "`10`",
    },
    Setting {
        key: "webhook.max_backoff_secs",
        env: "CORE_METER_WEBHOOK_MAX_BACKOFF_SECS",
        kind: Kind::Whole(u64::MAX),
        shown: "`300`",
    },
    Setting {
        key: "billing.licence_price_per_core_month",
        env: "CORE_METER_LICENCE_PRICE_PER_CORE_MONTH",
        kind: Kind::Text,
        shown: "`6.75` (prepaid licence orders and renewals)",
    },
    Setting {
        key: "notices.webhook_url",
        env: "CORE_METER_NOTICES_WEBHOOK_URL",
        kind: Kind::Text,
        shown: "none: notices are stored and listed, not sent",
    },
    Setting {
        key: "notices.webhook_secret",
        env: "CORE_METER_NOTICES_WEBHOOK_SECRET",
        kind: Kind::Text,
        shown: "one of it and `notices.webhook_secret_file` required with `notices.webhook_url`, as `webhook.secret`",
    },
    Setting {
        key: "notices.webhook_secret_file",
        env: "CORE_METER_NOTICES_WEBHOOK_SECRET_FILE",
        kind: Kind::Path,
        shown: "none; a file holding the notification webhook's secret, as `webhook.secret_file`; not together with `notices.webhook_secret`",
    },
    Setting {
        key: "notices.timeout_secs",
        env: "CORE_METER_NOTICES_TIMEOUT_SECS",
        kind: Kind::Whole(u64::MAX),
        shown: "`10` (1 to 600); the longest one delivery may take, on either channel",
    },
    Setting {
        key: "notices.max_backoff_secs",
        env: "CORE_METER_NOTICES_MAX_BACKOFF_SECS",
        kind: Kind::Whole(u64::MAX),
        shown: "`300` (1 to 86400)",
    },
    Setting {
        key: "notices.smtp_relay",
        env: "CORE_METER_NOTICES_SMTP_RELAY",
        kind: Kind::Text,
        shown: "none; `smtps://host:port` or `smtp://host:port?tls=required` (STARTTLS); plain `smtp://host:port` only on this machine (or with `insecure_plaintext`); optionally `user:password@` (never logged): notice emails go straight to this relay",
    },
    Setting {
        key: "notices.smtp_from",
        env: "CORE_METER_NOTICES_SMTP_FROM",
        kind: Kind::Text,
        shown: "required with `smtp_relay`: the sender, `billing@example.com` or `core-meter <billing@example.com>`",
    },
];

/// The setting of `key`. Every key the code names is in [`SETTINGS`] (a
/// test reads the code for them), so an unknown one is a bug.
pub fn setting(key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting {key} in config::settings::SETTINGS"))
}

/// Reads `text` from the environment as `setting`'s kind.
pub fn from_env(setting: &Setting, text: &str) -> Result<toml::Value, String> {
    match setting.kind {
        // Text as given: a secret's spaces are its own.
        Kind::Text | Kind::Path => return Ok(toml::Value::String(text.to_string())),
        _ => {}
    }
    let text = text.trim();
    match setting.kind {
        Kind::Text | Kind::Path => unreachable!("returned above"),
        Kind::Boolean => match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(toml::Value::Boolean(true)),
            "0" | "false" | "no" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        Kind::Whole(max) => {
            let n = text
                .parse::<u64>()
                .map_err(|_| format!("{text:?} is not a whole number"))?;
            if n > max {
                return Err(format!("{n} is too large"));
            }
            Ok(toml::Value::Integer(n as i64))
        }
    }
}

/// The settings table of the reference, as Markdown.
pub fn table() -> String {
    let mut out = String::from("| file key | environment | default |\n|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!("| `{}` | `{}` | {} |\n", s.key, s.env, s.shown));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table_is_the_settings_list() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(TABLE_DOC);
        let doc = std::fs::read_to_string(&path).unwrap();
        let start = doc
            .find("| file key | environment | default |")
            .expect("the settings table");
        let end = doc[start..]
            .find("\n\n")
            .map_or(doc.len(), |e| start + e + 1);
        assert!(
            doc[start..end] == table(),
            "{TABLE_DOC}'s table differs from config::settings::SETTINGS; it should read:\n\n{}",
            table()
        );
    }

    #[test]
    fn every_setting_has_its_own_environment_variable() {
        let mut seen = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(s.env.starts_with("CORE_METER_"), "{}", s.env);
            assert!(seen.insert(s.env), "{} twice", s.env);
            assert!(!s.shown.is_empty(), "{}", s.key);
        }
    }

    #[test]
    fn every_key_the_code_names_is_a_setting() {
        let code = include_str!("mod.rs");
        let mut named = 0;
        for quoted in code.split("named(\"").skip(1) {
            let key = &quoted[..quoted.find('"').unwrap()];
            assert!(SETTINGS.iter().any(|s| s.key == key), "named({key:?})");
            named += 1;
        }
        assert!(named > 20, "found only {named}");
    }
}
