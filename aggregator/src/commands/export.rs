//! `aggregator export`: one account's day as a replay case, on standard output.

use std::path::PathBuf;

pub fn export(
    day: chrono::NaiveDate,
    account: &str,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    let (config, mut store) = super::open_configured(config, database)?;
    let case = crate::reports::export::export_case(&mut store, &config.billing, account, day)?;
    println!("{}", serde_json::to_string_pretty(&case)?);
    Ok(())
}
