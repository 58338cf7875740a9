//! What the binary does, one module per command: serve, replay a
//! conformance case, the demo, reports, exports, migrate-store, the
//! statements' key and their offline check, the audit log's check and export, backups and their restore.

use std::path::PathBuf;

pub mod audit;
pub mod backup;
pub mod demo;
pub mod export;
pub mod migrate;
pub mod replay;
pub mod report;
pub mod serve;
pub mod statements;

/// The settings (file and environment, `--database` over them) and their store, which must exist.
fn open_configured(
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<(crate::config::Config, crate::store::Store)> {
    use anyhow::Context;
    let flags = crate::config::Flags {
        config,
        database,
        ..Default::default()
    };
    let config = crate::app::load_config(&flags, &|k| std::env::var(k).ok())?;
    if let crate::config::Database::Sqlite(path) = &config.database {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    let store = crate::store::Store::connect(&config.database, crate::store::Durability::Durable)
        .with_context(|| format!("open the database {}", config.database))?;
    Ok((config, store))
}
