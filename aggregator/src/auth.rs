//! Tokens: generated from the OS's random source, stored only as SHA-256 hashes, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new secret token: 32 random bytes as hex, with a prefix saying what it is.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// What is stored in place of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a presented token hashes to `stored`, in time that does not depend on where they differ.
pub fn token_matches(presented: &str, stored: &[u8]) -> bool {
    stored.len() == 32 && bool::from(hash_token(presented).ct_eq(stored))
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
    fn a_bearer_header_gives_its_token() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
