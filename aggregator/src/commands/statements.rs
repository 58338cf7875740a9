//! `aggregator statement-key`: the public key that signs statements;
//! `aggregator verify-statement FILE --key KEY`: a statement checked offline.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::security::statement_key::PublicKey;

/// The most bytes of a statement or key file read: a year of daily lines,
/// orders and ledger entries is far below it.
const MAX_FILE_BYTES: u64 = 64 << 20;

pub fn print_key(config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<()> {
    let (_, mut store) = super::open_configured(config, database)?;
    let key = crate::reports::statement::signing_key(&mut store, chrono::Utc::now())?;
    println!("{}", serde_json::to_string_pretty(&key.public())?);
    Ok(())
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{what} {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= MAX_FILE_BYTES,
        "{what} {} is {size} bytes, more than a statement's {MAX_FILE_BYTES}",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

pub fn verify(file: &Path, key: &Path) -> anyhow::Result<()> {
    let key_text = String::from_utf8(read(key, "the key file")?)
        .with_context(|| format!("the key file {} is not UTF-8", key.display()))?;
    let public =
        PublicKey::parse(&key_text).with_context(|| format!("the key file {}", key.display()))?;
    let statement = public
        .verify(&read(file, "the statement")?)
        .with_context(|| format!("the statement {}", file.display()))?;
    let field = |name: &str| statement.get(name).and_then(|v| v.as_str()).unwrap_or("?");
    println!(
        "statement {} of account {} for {}: signed by key {}, unaltered",
        file.display(),
        field("account"),
        field("month"),
        public.key_id
    );
    Ok(())
}
