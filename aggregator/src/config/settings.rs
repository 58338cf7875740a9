//! Every setting, once: its file key, its environment variable, the kind of
//! value it takes, its default and what the reference says of it. The file's
//! keys, the environment overlay, the checks of kind and range, the defaults
//! and the settings table of `docs/settings.md` all come from this list, so a
//! new setting is one entry here and the code that uses its value.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The kind of value a setting takes, which the environment's text is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Path,
    /// `1`/`true`/`yes` or `0`/`false`/`no`, in any case.
    Boolean,
    /// A whole number from `min` to `max`.
    Whole {
        min: u64,
        max: u64,
    },
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// The key in the TOML file; `section.key` inside a section.
    pub key: &'static str,
    /// The environment variable that overrides the file.
    pub env: &'static str,
    pub kind: Kind,
    /// The value in force when it is not set, as the file would write it;
    /// empty when there is none.
    pub default: &'static str,
    /// What the reference says beyond the default (with no default, what
    /// leaving it unset means).
    pub doc: &'static str,
}

impl Setting {
    /// The setting as error messages name it: its key and its variable.
    pub fn named(&self) -> String {
        format!(
            "setting {} (file key {}, environment {})",
            self.key, self.key, self.env
        )
    }

    /// The reference's "default" column.
    fn shown(&self) -> String {
        let mut shown = match (self.default, self.kind) {
            ("", _) => String::new(),
            (d, Kind::Whole { min, max }) => format!("`{d}` ({min} to {max})"),
            (d, _) => format!("`{d}`"),
        };
        if !self.doc.is_empty() {
            if !shown.is_empty() {
                shown.push_str("; ");
            }
            shown.push_str(self.doc);
        }
        shown
    }
}

/// Where the settings table lives, generated from [`SETTINGS`].
pub const TABLE_DOC: &str = "docs/settings.md";

/// Every setting, in the reference table's order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        env: "CORE_METER_LISTEN",
        kind: Kind::Text,
        default: "127.0.0.1:8080",
        doc: "",
    },
    Setting {
        key: "database",
        env: "CORE_METER_DATABASE",
        kind: Kind::Text,
        default: "data/core-meter.sqlite",
        doc: "a `postgres://user:password@host:5432/db` URL is a PostgreSQL database (it must exist; the schema is created on start; the password is never logged). Beyond loopback it needs `?sslmode=require` (or `insecure_plaintext`); TLS is rustls, the server's certificate verified against the system's roots or the PEM bundle of `&sslrootcert=/path/ca.crt`",
    },
    Setting {
        key: "admin_token",
        env: "CORE_METER_ADMIN_TOKEN",
        kind: Kind::Text,
        default: "",
        doc: "generated at first start, printed once",
    },
    Setting {
        key: "admin_token_file",
        env: "CORE_METER_ADMIN_TOKEN_FILE",
        kind: Kind::Path,
        default: "",
        doc: "none; a file (a mounted Secret) whose content, trimmed, is the admin token; read at start and again when the file changes (looked at every 10 s: a rotated Secret takes effect without a restart and the old token stops; a change that cannot be used is logged and the token in force stays); refused when anyone may read it (`o+r`); not together with `admin_token`",
    },
    Setting {
        key: "tls_cert",
        env: "CORE_METER_TLS_CERT",
        kind: Kind::Path,
        default: "",
        doc: "none; with `tls_key`, the service speaks HTTPS only: the PEM certificate chain, its own first (flag `--tls-cert`)",
    },
    Setting {
        key: "tls_key",
        env: "CORE_METER_TLS_KEY",
        kind: Kind::Path,
        default: "",
        doc: "none; the PEM private key (PKCS#8, PKCS#1 or SEC1), refused when anyone may read it (flag `--tls-key`)",
    },
    Setting {
        key: "tls_client_ca",
        env: "CORE_METER_TLS_CLIENT_CA",
        kind: Kind::Path,
        default: "",
        doc: "none; a PEM CA bundle: `POST /v1/samples` then takes only connections with a client certificate it signed (flag `--client-ca`)",
    },
    Setting {
        key: "insecure_plaintext",
        env: "CORE_METER_INSECURE_PLAINTEXT",
        kind: Kind::Boolean,
        default: "false",
        doc: "clear text beyond this machine is refused at start unless set (flag `--insecure-plaintext`): plain HTTP on the listen address, `http://` webhooks, an unencrypted SMTP relay, PostgreSQL without `sslmode=require`. Each hop it lets through is named in a warning at start",
    },
    Setting {
        key: "log_json",
        env: "CORE_METER_LOG_JSON",
        kind: Kind::Boolean,
        default: "false",
        doc: "",
    },
    Setting {
        key: "worker_threads",
        env: "CORE_METER_WORKER_THREADS",
        kind: Kind::Whole { min: 0, max: 256 },
        default: "0",
        doc: "the threads serving requests; `0` is one per CPU the process may use (a container's CPU limit counted). Replicas that share a host each take their share of its CPUs: see docs/replicas.md",
    },
    Setting {
        key: "request_timeout_secs",
        env: "CORE_METER_REQUEST_TIMEOUT_SECS",
        kind: Kind::Whole { min: 1, max: 86_400 },
        default: "30",
        doc: "",
    },
    Setting {
        key: "billing.timezone",
        env: "CORE_METER_TIMEZONE",
        kind: Kind::Text,
        default: "Asia/Shanghai",
        doc: "",
    },
    Setting {
        key: "billing.price_per_core_day",
        env: "CORE_METER_PRICE_PER_CORE_DAY",
        kind: Kind::Text,
        default: "0.25",
        doc: "",
    },
    Setting {
        key: "billing.billable_core_rounding",
        env: "CORE_METER_BILLABLE_CORE_ROUNDING",
        kind: Kind::Text,
        default: "ceil",
        doc: "or `half_up` or `none`",
    },
    Setting {
        key: "billing.gap_bridge_hours",
        env: "CORE_METER_GAP_BRIDGE_HOURS",
        kind: Kind::Whole { min: 0, max: 24 },
        default: "3",
        doc: "",
    },
    Setting {
        key: "billing.max_sample_age_hours",
        env: "CORE_METER_MAX_SAMPLE_AGE_HOURS",
        kind: Kind::Whole { min: 1, max: 8784 },
        default: "336",
        doc: "",
    },
    Setting {
        key: "billing.max_future_minutes",
        env: "CORE_METER_MAX_FUTURE_MINUTES",
        kind: Kind::Whole { min: 0, max: 1440 },
        default: "5",
        doc: "",
    },
    Setting {
        key: "billing.default_cap_cores",
        env: "CORE_METER_DEFAULT_CAP_CORES",
        kind: Kind::Whole { min: 500, max: 1_000_000 },
        default: "500",
        doc: "",
    },
    Setting {
        key: "billing.currency",
        env: "CORE_METER_CURRENCY",
        kind: Kind::Text,
        default: "USD",
        doc: "",
    },
    Setting {
        key: "retention_days",
        env: "CORE_METER_RETENTION_DAYS",
        kind: Kind::Whole { min: 1, max: 36_500 },
        default: "400",
        doc: "at least the maximum sample age plus gap bridging plus 2 h, rounded up to days, plus a day (16 with the defaults)",
    },
    Setting {
        key: "webhook.url",
        env: "CORE_METER_WEBHOOK_URL",
        kind: Kind::Text,
        default: "",
        doc: "none: lines stay queryable; `http://` only to this machine (loopback) unless `insecure_plaintext`",
    },
    Setting {
        key: "webhook.secret",
        env: "CORE_METER_WEBHOOK_SECRET",
        kind: Kind::Text,
        default: "",
        doc: "required with `webhook.url` (or `webhook.secret_file`): the key requests are signed with, at least 32 bytes (`openssl rand -hex 32`); never logged",
    },
    Setting {
        key: "webhook.secret_file",
        env: "CORE_METER_WEBHOOK_SECRET_FILE",
        kind: Kind::Path,
        default: "",
        doc: "none; a file (a mounted Secret) holding the secret, trimmed, read once at start, not readable by every user (mode `o+r` is refused); not together with `webhook.secret`",
    },
    Setting {
        key: "webhook.timeout_secs",
        env: "CORE_METER_WEBHOOK_TIMEOUT_SECS",
        kind: Kind::Whole { min: 1, max: 600 },
        default: "10",
        doc: "",
    },
    Setting {
        key: "webhook.max_backoff_secs",
        env: "CORE_METER_WEBHOOK_MAX_BACKOFF_SECS",
        kind: Kind::Whole { min: 1, max: 86_400 },
        default: "300",
        doc: "",
    },
    Setting {
        key: "billing.licence_price_per_core_month",
        env: "CORE_METER_LICENCE_PRICE_PER_CORE_MONTH",
        kind: Kind::Text,
        default: "6.75",
        doc: "the price of prepaid licence orders and renewals",
    },
    Setting {
        key: "billing.image_scan_price",
        env: "CORE_METER_IMAGE_SCAN_PRICE",
        kind: Kind::Text,
        default: "0.25",
        doc: "the price of one image-scan authorization, prepaid (SPEC 10.1)",
    },
    Setting {
        key: "billing.trial_image_authorizations",
        env: "CORE_METER_TRIAL_IMAGE_AUTHORIZATIONS",
        kind: Kind::Whole { min: 0, max: 100_000 },
        default: "100",
        doc: "the image-scan authorizations a trial may use without buying (SPEC 10.1)",
    },
    Setting {
        key: "billing.log_storage_price",
        env: "CORE_METER_LOG_STORAGE_PRICE",
        kind: Kind::Text,
        default: "0.25",
        doc: "the price of one GB of log storage for a month, prepaid (SPEC 10.1)",
    },
    Setting {
        key: "billing.trial_log_storage_gb",
        env: "CORE_METER_TRIAL_LOG_STORAGE_GB",
        kind: Kind::Whole { min: 0, max: 100_000 },
        default: "10",
        doc: "the GB of log storage a trial may use without buying (SPEC 10.1)",
    },
    Setting {
        key: "notices.webhook_url",
        env: "CORE_METER_NOTICES_WEBHOOK_URL",
        kind: Kind::Text,
        default: "",
        doc: "none: notices are stored and listed, not sent",
    },
    Setting {
        key: "notices.webhook_secret",
        env: "CORE_METER_NOTICES_WEBHOOK_SECRET",
        kind: Kind::Text,
        default: "",
        doc: "one of it and `notices.webhook_secret_file` required with `notices.webhook_url`, as `webhook.secret`",
    },
    Setting {
        key: "notices.webhook_secret_file",
        env: "CORE_METER_NOTICES_WEBHOOK_SECRET_FILE",
        kind: Kind::Path,
        default: "",
        doc: "none; a file holding the notification webhook's secret, as `webhook.secret_file`; not together with `notices.webhook_secret`",
    },
    Setting {
        key: "notices.timeout_secs",
        env: "CORE_METER_NOTICES_TIMEOUT_SECS",
        kind: Kind::Whole { min: 1, max: 600 },
        default: "10",
        doc: "the longest one delivery may take, on either channel",
    },
    Setting {
        key: "notices.max_backoff_secs",
        env: "CORE_METER_NOTICES_MAX_BACKOFF_SECS",
        kind: Kind::Whole { min: 1, max: 86_400 },
        default: "300",
        doc: "",
    },
    Setting {
        key: "notices.smtp_relay",
        env: "CORE_METER_NOTICES_SMTP_RELAY",
        kind: Kind::Text,
        default: "",
        doc: "none; `smtps://host:port` or `smtp://host:port?tls=required` (STARTTLS); plain `smtp://host:port` only on this machine (or with `insecure_plaintext`); optionally `user:password@` (never logged): notice emails go straight to this relay",
    },
    Setting {
        key: "notices.smtp_from",
        env: "CORE_METER_NOTICES_SMTP_FROM",
        kind: Kind::Text,
        default: "",
        doc: "required with `smtp_relay`: the sender, `billing@example.com` or `core-meter <billing@example.com>`",
    },
];

/// The setting of `key`. Every key the code reads is in [`SETTINGS`] (and
/// every load reads them all), so an unknown one is a bug.
pub fn setting(key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting {key} in config::settings::SETTINGS"))
}

/// Reads `text` from the environment as `setting`'s kind; the range is
/// checked with the file's values, in [`Values::read`].
pub fn from_env(setting: &Setting, text: &str) -> Result<toml::Value, String> {
    match setting.kind {
        // Text as given: a secret's spaces are its own.
        Kind::Text | Kind::Path => Ok(toml::Value::String(text.to_string())),
        Kind::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(toml::Value::Boolean(true)),
            "0" | "false" | "no" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{:?} is not true or false", text.trim())),
        },
        Kind::Whole { .. } => {
            let text = text.trim();
            let n = text
                .parse::<u64>()
                .map_err(|_| format!("{text:?} is not a whole number"))?;
            i64::try_from(n)
                .map(toml::Value::Integer)
                .map_err(|_| format!("{n} is too large"))
        }
    }
}

/// Whether `value` is of `setting`'s kind and in its range.
fn check(setting: &Setting, value: &toml::Value) -> Result<(), String> {
    match (setting.kind, value) {
        (Kind::Text | Kind::Path, toml::Value::String(_))
        | (Kind::Boolean, toml::Value::Boolean(_)) => Ok(()),
        (Kind::Whole { min, max }, toml::Value::Integer(n)) => match u64::try_from(*n) {
            Ok(n) if n > max => Err(format!("{n} is too large: it must be {min} to {max}")),
            Ok(n) if n < min => Err(format!("{n} is too small: it must be {min} to {max}")),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{n} is below zero")),
        },
        (kind, other) => Err(format!(
            "{} is not {}",
            other,
            match kind {
                Kind::Text => "text",
                Kind::Path => "a path (text)",
                Kind::Boolean => "true or false",
                Kind::Whole { .. } => "a whole number",
            }
        )),
    }
}

/// The settings' values, every one checked against its setting: the file's,
/// with the environment and the flags laid over them (by `Config::load`).
#[derive(Debug, Default)]
pub struct Values {
    set: BTreeMap<&'static str, toml::Value>,
}

impl Values {
    /// Takes the table's values; a key no setting has is an error naming it
    /// and `source`, a value of the wrong kind or range one naming its setting.
    pub fn read(table: toml::Table, source: &str) -> Result<Values, String> {
        let mut values = Values::default();
        for (key, value) in table {
            let is_section = SETTINGS.iter().any(|s| {
                s.key
                    .split_once('.')
                    .is_some_and(|(section, _)| section == key)
            });
            match value {
                toml::Value::Table(section) if is_section => {
                    for (inner, value) in section {
                        values.take(&format!("{key}.{inner}"), value, source)?;
                    }
                }
                // A key of a section is written inside it: a quoted
                // "section.key" at the top would dodge the section's order.
                _ if key.contains('.') => {
                    return Err(format!(
                        "{source}: unknown setting {key:?}; write it as {} inside [{}]",
                        key.split_once('.').map_or("", |(_, k)| k),
                        key.split_once('.').map_or("", |(s, _)| s),
                    ))
                }
                value => values.take(&key, value, source)?,
            }
        }
        Ok(values)
    }

    fn take(&mut self, key: &str, value: toml::Value, source: &str) -> Result<(), String> {
        let setting = SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| {
            format!("{source}: unknown setting {key:?}; the settings are listed in {TABLE_DOC}")
        })?;
        check(setting, &value).map_err(|e| format!("{}: {e}", setting.named()))?;
        self.set.insert(setting.key, value);
        Ok(())
    }

    /// The value of `key`, or its default, as text; `None` when neither.
    pub fn text(&self, key: &str) -> Option<String> {
        let s = setting(key);
        match self.set.get(s.key) {
            Some(toml::Value::String(t)) => Some(t.clone()),
            Some(other) => panic!("{key} holds {other}, checked as text"),
            None => (!s.default.is_empty()).then(|| s.default.to_string()),
        }
    }

    /// The value of a path setting, or its default.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        assert_eq!(setting(key).kind, Kind::Path, "{key}");
        self.text(key).map(PathBuf::from)
    }

    /// The value of a boolean setting, or its default.
    pub fn flag(&self, key: &str) -> bool {
        let s = setting(key);
        match self.set.get(s.key) {
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => panic!("{key} holds {other}, checked as a boolean"),
            None => s.default == "true",
        }
    }

    /// The value of a whole-number setting, or its default.
    pub fn whole(&self, key: &str) -> u64 {
        let s = setting(key);
        match self.set.get(s.key) {
            Some(toml::Value::Integer(n)) => u64::try_from(*n).expect("checked in range"),
            Some(other) => panic!("{key} holds {other}, checked as a whole number"),
            None => s
                .default
                .parse()
                .expect("a whole-number default (a test reads them all)"),
        }
    }
}

/// The settings table of the reference, as Markdown.
pub fn table() -> String {
    let mut out = String::from("| file key | environment | default |\n|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!("| `{}` | `{}` | {} |\n", s.key, s.env, s.shown()));
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
    fn every_setting_has_its_own_environment_variable_and_says_what_it_is() {
        let mut seen = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(s.env.starts_with("CORE_METER_"), "{}", s.env);
            assert!(seen.insert(s.env), "{} twice", s.env);
            assert!(!s.shown().is_empty(), "{}", s.key);
        }
    }

    #[test]
    fn every_default_is_a_value_of_its_settings_kind_and_range() {
        for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            let value = from_env(s, s.default).unwrap_or_else(|e| panic!("{}: {e}", s.key));
            check(s, &value).unwrap_or_else(|e| panic!("{}: {e}", s.key));
        }
        for s in SETTINGS {
            if matches!(s.kind, Kind::Whole { .. } | Kind::Boolean) {
                assert!(!s.default.is_empty(), "{} has no default", s.key);
            }
        }
    }

    #[test]
    fn every_key_the_code_names_is_a_setting() {
        let code = include_str!("mod.rs");
        let mut named = 0;
        for call in ["named(\"", ".text(\"", ".path(\"", ".flag(\"", ".whole(\""] {
            for quoted in code.split(call).skip(1) {
                let key = &quoted[..quoted.find('"').unwrap()];
                assert!(SETTINGS.iter().any(|s| s.key == key), "{call}{key:?}");
                named += 1;
            }
        }
        assert!(named > 40, "found only {named}");
    }

    #[test]
    fn a_value_outside_its_range_or_of_another_kind_names_the_setting() {
        let table: toml::Table = toml::from_str("[billing]\nmax_future_minutes = 1441\n").unwrap();
        let e = Values::read(table, "config file f").unwrap_err();
        assert!(
            e.starts_with("setting billing.max_future_minutes ") && e.contains("0 to 1440"),
            "{e}"
        );
        let table: toml::Table = toml::from_str("log_json = \"yes\"\n").unwrap();
        let e = Values::read(table, "config file f").unwrap_err();
        assert!(e.contains("log_json") && e.contains("true or false"), "{e}");
        let table: toml::Table = toml::from_str("\"billing.timezone\" = \"UTC\"\n").unwrap();
        let e = Values::read(table, "config file f").unwrap_err();
        assert!(e.contains("write it as timezone inside [billing]"), "{e}");
        let table: toml::Table = toml::from_str("[notices]\nsmtp = 1\n").unwrap();
        let e = Values::read(table, "config file f").unwrap_err();
        assert!(
            e.starts_with("config file f: unknown setting \"notices.smtp\""),
            "{e}"
        );
    }
}
