//! `aggregator backup --to FILE`: a consistent copy of a running SQLite
//! store; `aggregator restore --from FILE`: a checked copy put in place of
//! an empty store, before the service starts on it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Database;
use crate::store::{Copied, Durability, Store};

fn said(copied: &Copied) -> String {
    let line = copied.last_line.as_ref().map_or_else(
        || "no bill line yet".to_string(),
        |(account, day, seq, issued)| {
            format!(
                "last bill line {account} {day} #{seq} issued {}",
                issued.format("%Y-%m-%dT%H:%M:%SZ")
            )
        },
    );
    format!(
        "{} bytes, schema {}, {} samples, {line}; audit log {} entries, last {} hash {}",
        copied.bytes,
        copied.schema_version,
        copied.samples,
        copied.audit.entries,
        copied.audit.last_seq,
        copied.audit.last_hash
    )
}

/// The configured database, which must be a SQLite file.
fn sqlite_of(config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<PathBuf> {
    let flags = crate::config::Flags {
        config,
        database,
        ..Default::default()
    };
    let config = crate::app::load_config(&flags, &|k| std::env::var(k).ok())?;
    match config.database {
        Database::Sqlite(path) => Ok(path),
        Database::Postgres(_) => anyhow::bail!(
            "the database is PostgreSQL: back it up with its own tools, base backups (pg_basebackup) and WAL archiving (docs/backups.md)"
        ),
    }
}

pub fn backup(to: &Path, config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<()> {
    let path = sqlite_of(config, database)?;
    anyhow::ensure!(path.exists(), "no database at {}", path.display());
    let mut store = Store::open(&path, Durability::Durable)
        .with_context(|| format!("open the database {}", path.display()))?;
    let copied = store
        .backup_to(to)
        .with_context(|| format!("back up {} to {}", path.display(), to.display()))?;
    println!(
        "backup of {} written to {}: {}",
        path.display(),
        to.display(),
        said(&copied)
    );
    Ok(())
}

/// The backups `backup --into` writes: `core-meter-` and the instant, so
/// that their names sort as their instants.
const PREFIX: &str = "core-meter-";

/// A backup into `dir` named by the instant, then the oldest beyond `keep` deleted.
pub fn backup_into(
    dir: &Path,
    keep: usize,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    use shared::clock::Clock;
    anyhow::ensure!(dir.is_dir(), "no directory at {}", dir.display());
    let now = shared::clock::SystemClock.now();
    let file = dir.join(format!("{PREFIX}{}.sqlite", now.format("%Y%m%dT%H%M%SZ")));
    backup(&file, config, database)?;
    let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".sqlite"))
        })
        .collect();
    kept.sort();
    let excess = kept.len().saturating_sub(keep);
    for old in &kept[..excess] {
        std::fs::remove_file(old).with_context(|| format!("delete {}", old.display()))?;
        println!("deleted {}: {keep} newer backups are kept", old.display());
    }
    Ok(())
}

pub fn restore(
    from: &Path,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    let path = sqlite_of(config, database)?;
    anyhow::ensure!(from.is_file(), "no backup at {}", from.display());
    let copied = Store::restore(from, &path)
        .with_context(|| format!("restore {} to {}", from.display(), path.display()))?;
    println!(
        "{} restored to {}: {}; the service may start on it",
        from.display(),
        path.display(),
        said(&copied)
    );
    Ok(())
}
