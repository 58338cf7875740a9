//! The values settings take, which the layers above read: where the store
//! lives, the TLS files, secrets that never show themselves, the billing
//! rules, the notice channels.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use shared::bill::DEFAULT_CURRENCY;
use shared::overage::Rules;
use shared::sample::AgeLimits;
use shared::zone::BillingZone;

/// Where the store lives: a SQLite file (the default) or a PostgreSQL
/// database given as a `postgres://` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else is a SQLite file's path.
    pub fn parse(s: &str) -> Database {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Database::Postgres(s.to_string())
        } else {
            Database::Sqlite(PathBuf::from(s))
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

impl From<PathBuf> for Database {
    fn from(p: PathBuf) -> Database {
        Database::Sqlite(p)
    }
}

/// The path, or the URL without its password (logs and errors show it).
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The PEM files the service's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the service's own first (`tls_cert`).
    pub cert: PathBuf,
    /// Its private key (`tls_key`); refused when anyone may read it.
    pub key: PathBuf,
    /// With it, `POST /v1/samples` takes only connections whose client
    /// certificate this CA signed (`tls_client_ca`).
    pub client_ca: Option<PathBuf>,
}

/// The shortest secret accepted: 32 bytes, the size of the HMAC's output.
pub const MIN_SECRET_BYTES: usize = 32;

/// A webhook's signing secret. It never shows itself: `Debug` prints
/// `Secret(redacted)`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl AsRef<[u8]>) -> Secret {
        Secret(Arc::from(bytes.as_ref()))
    }

    /// The length in bytes (the only thing about it an error may say).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret's bytes, for the one place that signs with them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// A token's text where it must be kept (the configured admin token):
/// `Debug` never shows it, so no log line, panic or test failure can.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenText(String);

impl TokenText {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for TokenText {
    fn from(s: String) -> TokenText {
        TokenText(s)
    }
}

impl From<&str> for TokenText {
    fn from(s: &str) -> TokenText {
        TokenText(s.to_string())
    }
}

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenText(<redacted>)")
    }
}

/// Everything that decides how samples become bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    pub zone: BillingZone,
    pub rules: Rules,
    pub limits: AgeLimits,
    pub currency: String,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            zone: BillingZone::default(),
            rules: Rules::default(),
            limits: AgeLimits::default(),
            currency: DEFAULT_CURRENCY.to_string(),
        }
    }
}

/// Which delivery rows a new notice gets: the webhook's, and one per email
/// address when an SMTP relay is set. Decided when the notice is issued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticeChannels {
    pub webhook: bool,
    pub email: bool,
}
