//! Signed monthly statements: Ed25519 over a statement's canonical bytes, so
//! that a customer can prove, offline, what they were billed.
//!
//! A signed statement is the JSON document
//! `{"statement": {...}, "signature": {"algorithm": "ed25519", "key_id", "value"}}`.
//! The signed bytes are [`DOMAIN`] followed by the statement's canonical
//! form ([`canonical`]): keys sorted by their UTF-8 bytes, no blanks, strings
//! and numbers as `serde_json` writes them. Money in a statement is always a
//! string, so no number is ever rounded on the way. `value` is the 64-byte
//! signature in hex; `key_id` the first 16 hex digits of the SHA-256 of the
//! public key, which `GET /v1/statement-key` serves as
//! `{"algorithm": "ed25519", "key_id", "public_key"}` (32 bytes in hex).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{hex, unhex};

/// What is signed before the statement's bytes, so that a signature over a
/// statement can never be taken for one over anything else.
pub const DOMAIN: &[u8] = b"core-meter statement v1\n";

/// The one algorithm.
pub const ALGORITHM: &str = "ed25519";

/// The service's signing key (its seed never leaves the store and this
/// value; `Debug` does not show it).
pub struct StatementKey {
    signing: SigningKey,
}

impl std::fmt::Debug for StatementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatementKey({})", self.public().key_id)
    }
}

/// The public half as served and as a customer saves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
}

/// The `signature` member of a signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementSignature {
    pub algorithm: String,
    pub key_id: String,
    pub value: String,
}

/// Why a statement or a key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the key is not what GET /v1/statement-key answers: {0}")]
    Key(String),
    #[error("the statement is not a signed statement: {0}")]
    Document(String),
    #[error("the statement was signed by key {signed_by}, not by the key given ({given})")]
    OtherKey { signed_by: String, given: String },
    #[error("the signature does not match the statement: it was altered after it was signed")]
    Altered,
}

fn key_id(public: &[u8; 32]) -> String {
    hex(&Sha256::digest(public)[..8])
}

impl StatementKey {
    pub fn from_seed(seed: [u8; 32]) -> StatementKey {
        StatementKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// A new seed from the operating system's randomness.
    pub fn new_seed() -> Result<[u8; 32], getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(seed)
    }

    pub fn public(&self) -> PublicKey {
        let bytes = self.signing.verifying_key().to_bytes();
        PublicKey {
            algorithm: ALGORITHM.into(),
            key_id: key_id(&bytes),
            public_key: hex(&bytes),
        }
    }

    /// `{"statement": statement, "signature": {...}}`.
    pub fn sign(&self, statement: Value) -> Value {
        let signature = self.signing.sign(&signed_bytes(&statement));
        let signed = StatementSignature {
            algorithm: ALGORITHM.into(),
            key_id: self.public().key_id,
            value: hex(&signature.to_bytes()),
        };
        serde_json::json!({"statement": statement, "signature": signed})
    }
}

impl PublicKey {
    /// The key as `GET /v1/statement-key` answers it.
    pub fn parse(text: &str) -> Result<PublicKey, VerifyError> {
        let key: PublicKey =
            serde_json::from_str(text.trim()).map_err(|e| VerifyError::Key(e.to_string()))?;
        if key.algorithm != ALGORITHM {
            return Err(VerifyError::Key(format!(
                "algorithm must be {ALGORITHM}, got {}",
                shared::domain::quote(&key.algorithm)
            )));
        }
        let bytes = key.bytes()?;
        if key_id(&bytes) != key.key_id {
            return Err(VerifyError::Key(format!(
                "key_id {} is not the public key's ({})",
                shared::domain::quote(&key.key_id),
                key_id(&bytes)
            )));
        }
        Ok(key)
    }

    fn bytes(&self) -> Result<[u8; 32], VerifyError> {
        unhex(&self.public_key, 32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| VerifyError::Key("public_key must be 64 hex digits".into()))
    }

    /// Checks a signed statement (the document as served); answers the
    /// statement it carries.
    pub fn verify(&self, document: &[u8]) -> Result<Value, VerifyError> {
        let Unique(mut doc) = serde_json::from_slice(document)
            .map_err(|e| VerifyError::Document(format!("not JSON: {e}")))?;
        let Some(object) = doc.as_object_mut() else {
            return Err(VerifyError::Document("not a JSON object".into()));
        };
        if let Some(extra) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "statement" | "signature"))
        {
            return Err(VerifyError::Document(format!(
                "member {} is neither statement nor signature",
                shared::domain::quote(extra)
            )));
        }
        let signature: StatementSignature = object
            .remove("signature")
            .ok_or_else(|| VerifyError::Document("it has no signature".into()))
            .and_then(|s| {
                serde_json::from_value(s)
                    .map_err(|e| VerifyError::Document(format!("signature: {e}")))
            })?;
        let statement = object
            .remove("statement")
            .filter(Value::is_object)
            .ok_or_else(|| VerifyError::Document("it has no statement object".into()))?;
        if signature.algorithm != ALGORITHM {
            return Err(VerifyError::Document(format!(
                "signature.algorithm must be {ALGORITHM}, got {}",
                shared::domain::quote(&signature.algorithm)
            )));
        }
        if signature.key_id != self.key_id {
            return Err(VerifyError::OtherKey {
                signed_by: shared::domain::quote(&signature.key_id),
                given: self.key_id.clone(),
            });
        }
        let value: [u8; 64] = unhex(&signature.value, 64)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                VerifyError::Document("signature.value must be 128 hex digits".into())
            })?;
        let key = VerifyingKey::from_bytes(&self.bytes()?)
            .map_err(|e| VerifyError::Key(format!("not an Ed25519 public key: {e}")))?;
        key.verify(&signed_bytes(&statement), &Signature::from_bytes(&value))
            .map_err(|_| VerifyError::Altered)?;
        Ok(statement)
    }
}

/// A JSON value whose objects have no key twice. `serde_json` keeps the
/// last of two equal keys, so a document could show a reader a forged
/// first `"closing_balance"` while the signature covers the second: such a
/// document is refused, not verified.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "member {} appears twice",
                    shared::domain::quote(&key)
                )));
            }
            let Unique(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn signed_bytes(statement: &Value) -> Vec<u8> {
    let mut bytes = DOMAIN.to_vec();
    canonical(statement, &mut bytes);
    bytes
}

/// The canonical form of a JSON value: object members sorted by key bytes,
/// no blanks; strings and numbers as `serde_json` writes them.
pub fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                canonical(member, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null to a Vec cannot fail.
    serde_json::to_writer(out, value).expect("a JSON scalar writes to memory");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> StatementKey {
        StatementKey::from_seed([7u8; 32])
    }

    fn document() -> Vec<u8> {
        let statement = json!({"account": "acme", "month": "2026-11", "total": "12.34", "lines": [{"day": "2026-11-01", "amount": "12.34"}]});
        serde_json::to_vec_pretty(&key().sign(statement)).unwrap()
    }

    #[test]
    fn a_signed_statement_verifies_with_its_public_key_whatever_the_blanks_and_order() {
        let public = PublicKey::parse(&serde_json::to_string(&key().public()).unwrap()).unwrap();
        let statement = public.verify(&document()).unwrap();
        assert_eq!(statement["total"], "12.34");
        // Re-serialized compactly, members in another order: the same statement.
        let doc: Value = serde_json::from_slice(&document()).unwrap();
        let compact = format!(
            "{{\"signature\":{},\"statement\":{}}}",
            doc["signature"], doc["statement"]
        );
        assert!(public.verify(compact.as_bytes()).is_ok());
    }

    #[test]
    fn one_character_changed_anywhere_in_the_statement_is_refused() {
        let public = key().public();
        let doc = String::from_utf8(document()).unwrap();
        let at = doc.find("12.34").unwrap();
        let altered = format!("{}12.35{}", &doc[..at], &doc[at + 5..]);
        assert_eq!(public.verify(altered.as_bytes()), Err(VerifyError::Altered));
        let renamed = doc.replacen("acme", "acmf", 1);
        assert_eq!(public.verify(renamed.as_bytes()), Err(VerifyError::Altered));
    }

    #[test]
    fn a_member_given_twice_is_refused_though_the_signature_covers_the_last() {
        let public = key().public();
        let doc = String::from_utf8(document()).unwrap();
        // A forged first "total" a reader would see; serde_json alone would
        // keep the second, the signed one, and verify.
        let forged = doc.replacen("\"total\"", "\"total\": \"0.00\", \"total\"", 1);
        assert!(serde_json::from_str::<Value>(&forged).is_ok());
        assert!(
            matches!(public.verify(forged.as_bytes()), Err(VerifyError::Document(m)) if m.contains("appears twice")),
            "{forged}"
        );
        let two_statements = doc.replacen("\"statement\"", "\"statement\": {}, \"statement\"", 1);
        assert!(matches!(
            public.verify(two_statements.as_bytes()),
            Err(VerifyError::Document(_))
        ));
    }

    #[test]
    fn another_key_a_bad_key_or_a_bad_document_is_named() {
        let other = StatementKey::from_seed([8u8; 32]).public();
        assert!(matches!(
            other.verify(&document()),
            Err(VerifyError::OtherKey { .. })
        ));
        let mut wrong_id = key().public();
        wrong_id.key_id = other.key_id.clone();
        let text = serde_json::to_string(&wrong_id).unwrap();
        assert!(
            matches!(PublicKey::parse(&text), Err(VerifyError::Key(m)) if m.contains("key_id"))
        );
        assert!(matches!(PublicKey::parse("{}"), Err(VerifyError::Key(_))));
        let public = key().public();
        for bad in [
            "",
            "[]",
            "{\"statement\": {}}",
            "{\"statement\": 1, \"signature\": {}}",
        ] {
            assert!(
                matches!(public.verify(bad.as_bytes()), Err(VerifyError::Document(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_canonical_form_sorts_keys_by_bytes_and_drops_blanks() {
        let mut out = Vec::new();
        canonical(
            &serde_json::from_str::<Value>(
                r#"{ "b": [1, {"z": null, "a": "é"}], "a": true, "B": "x\"y" }"#,
            )
            .unwrap(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"B":"x\"y","a":true,"b":[1,{"a":"é","z":null}]}"#
        );
    }
}
