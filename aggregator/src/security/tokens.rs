//! Tokens: generated from the OS's random source (or supplied in the same form), stored only as SHA-256 hashes, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hex characters of a token: 32 random bytes.
const TOKEN_HEX_CHARS: usize = 64;

/// A new secret token: 32 random bytes as hex, with a prefix saying what it is.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// Whether a supplied token has the form `new_token(prefix)` gives: the
/// prefix, `_`, and 64 lowercase hex characters; if not, why. The reason never
/// quotes the token, which is a secret.
pub fn check_token_form(prefix: &str, token: &str) -> Result<(), String> {
    let Some(hex) = token
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return Err(format!("it does not start with {prefix}_"));
    };
    let chars = hex.chars().count();
    if chars != TOKEN_HEX_CHARS {
        return Err(format!("it has {chars} characters after {prefix}_"));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "it has characters other than 0-9 and a-f after {prefix}_"
        ));
    }
    Ok(())
}

/// The prefix of every cluster token: `cmc_` and 64 lowercase hex characters.
pub const CLUSTER_TOKEN_PREFIX: &str = "cmc";

/// Whether `token` has the form of a cluster token. Generated and supplied
/// cluster tokens all do, so anything else is refused without a look-up.
pub fn looks_like_cluster_token(token: &str) -> bool {
    check_token_form(CLUSTER_TOKEN_PREFIX, token).is_ok()
}

/// The prefix of every reader token (a customer's read-only token bound to
/// one account): `cmr_` and 64 lowercase hex characters.
pub const READER_TOKEN_PREFIX: &str = "cmr";

/// Whether `token` has the form of a reader token; anything else is never looked up as one.
pub fn looks_like_reader_token(token: &str) -> bool {
    check_token_form(READER_TOKEN_PREFIX, token).is_ok()
}

/// The prefix of a log service's `logs` token.
pub const LOGS_TOKEN_PREFIX: &str = "cml";

/// Whether `token` has the form of a `logs` token (no look-up).
pub fn looks_like_logs_token(token: &str) -> bool {
    check_token_form(LOGS_TOKEN_PREFIX, token).is_ok()
}

/// The prefix of a customer token: the reader's reads and the customer's
/// own actions on its account (the cap, auto-renewal, image authorizations,
/// orders paid from the balance).
pub const CUSTOMER_TOKEN_PREFIX: &str = "cmu";

/// Whether `token` has the form of a customer token (no look-up).
pub fn looks_like_customer_token(token: &str) -> bool {
    check_token_form(CUSTOMER_TOKEN_PREFIX, token).is_ok()
}

/// What is stored in place of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a presented token hashes to `stored`, in time that does not depend on where they differ.
pub fn token_matches(presented: &str, stored: &[u8]) -> bool {
    stored.len() == 32 && bool::from(hash_token(presented).ct_eq(stored))
}

/// The admin token in force, as its hash. Read from a file, it is replaced
/// when the file changes (see [`watch_admin_token_file`]); the old one stops
/// at once.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<std::sync::RwLock<[u8; 32]>>);

impl AdminToken {
    pub fn from_hash(hash: [u8; 32]) -> AdminToken {
        AdminToken(std::sync::Arc::new(std::sync::RwLock::new(hash)))
    }

    /// Whether `presented` is the admin token, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        token_matches(presented, &*self.0.read().expect("admin token lock"))
    }

    /// Whether `hash` is the admin token's hash now, in constant time: a
    /// console session opened with an admin token ends when it is replaced.
    pub fn is_hash(&self, hash: &[u8]) -> bool {
        hash.len() == 32 && bool::from(self.0.read().expect("admin token lock").ct_eq(hash))
    }

    /// Makes `token` the admin token; whether it was not already.
    fn replace(&self, token: &str) -> bool {
        let hash = hash_token(token);
        let mut current = self.0.write().expect("admin token lock");
        let changed = !bool::from(current.ct_eq(&hash));
        *current = hash;
        changed
    }
}

/// What tells a file changed without reading it: its inode, size, times.
fn stamp(path: &std::path::Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let nanos = |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
    Some((
        m.ino(),
        m.size(),
        nanos(m.mtime(), m.mtime_nsec()),
        nanos(m.ctime(), m.ctime_nsec()),
    ))
}

/// Looks at the admin token's file every `watch.poll` until `watch.stop`,
/// and reads it only when it changed. A new token takes effect at once; a
/// change that cannot be used (empty, readable by anyone) is logged once
/// and the token in force stays. No line names the token.
pub async fn watch_admin_token_file(
    token: AdminToken,
    path: std::path::PathBuf,
    mut watch: super::Watch,
) {
    // The first look reads the file: it may have changed since start-up read it.
    let mut seen = None;
    let mut last_fault: Option<String> = None;
    while watch.nap(super::ADMIN_TOKEN_FILE).await {
        let now = stamp(&path);
        if now.is_some() && now == seen {
            continue;
        }
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || crate::config::read_admin_token_file(&path))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the reading task failed: {e}")))
        };
        match read {
            Ok(new) => {
                seen = now;
                last_fault = None;
                if token.replace(&new) {
                    tracing::info!(file = %path.display(), "the admin token's file changed; the token it holds is now the admin token");
                }
            }
            // Looked at again at the next poll; said once while it lasts.
            Err(e) => {
                let fault = format!("{e:#}");
                if last_fault.as_ref() != Some(&fault) {
                    tracing::error!(error = %fault, "the admin token's file changed but cannot be used; the admin token stays as it was");
                    last_fault = Some(fault);
                }
            }
        }
    }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_its_own_hash() {
        let t = new_token("cm");
        assert!(t.starts_with("cm_") && t.len() == 3 + 64);
        assert_ne!(t, new_token("cm"));
        let stored = hash_token(&t);
        assert!(token_matches(&t, &stored));
        assert!(!token_matches(&new_token("cm"), &stored));
        assert!(!token_matches(&t, &stored[..16]));
    }

    #[test]
    fn a_supplied_token_must_have_the_form_of_a_generated_one() {
        assert_eq!(check_token_form("cmc", &new_token("cmc")), Ok(()));
        assert!(looks_like_cluster_token(&new_token(CLUSTER_TOKEN_PREFIX)));
        assert!(!looks_like_cluster_token(&new_token("cma")));
        assert!(looks_like_reader_token(&new_token(READER_TOKEN_PREFIX)));
        assert!(!looks_like_reader_token(&new_token(CLUSTER_TOKEN_PREFIX)));
        assert!(!looks_like_cluster_token(&new_token(READER_TOKEN_PREFIX)));
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(check_token_form("cmc", &format!("cmc_{hex}")), Ok(()));
        let refused = [
            (String::new(), "does not start with cmc_"),
            (format!("cma_{hex}"), "does not start with cmc_"),
            (format!("cmc{hex}"), "does not start with cmc_"),
            (format!("CMC_{hex}"), "does not start with cmc_"),
            (format!("cmc_{}", &hex[1..]), "63 characters"),
            (format!("cmc_{hex}0"), "65 characters"),
            (format!("cmc_{hex}\n"), "65 characters"),
            (
                format!("cmc_{}", hex.to_uppercase()),
                "other than 0-9 and a-f",
            ),
            (format!("cmc_{}g", &hex[1..]), "other than 0-9 and a-f"),
            (format!("cmc_{} ", &hex[1..]), "other than 0-9 and a-f"),
            (format!("cmc_{}é", &hex[1..]), "other than 0-9 and a-f"),
        ];
        for (token, reason) in refused {
            let err = check_token_form("cmc", &token).unwrap_err();
            assert!(err.contains(reason), "{token:?}: {err:?}");
            assert!(token.len() < 8 || !err.contains(&token[4..8]), "{err:?}");
        }
    }

    #[test]
    fn a_bearer_header_gives_its_token() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_kept_token_never_shows_in_debug_output() {
        let token = new_token("cma");
        let kept = crate::config::TokenText::from(token.as_str());
        assert_eq!(kept.expose(), token);
        let shown = format!("{kept:?} {:?}", Some(kept.clone()));
        assert!(!shown.contains(&token[4..]), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
