//! `aggregator migrate-store`: copies one store into another and checks they agree.

pub fn migrate_store(from: &str, to: &str) -> anyhow::Result<()> {
    use crate::config::Database;
    use crate::store::{Durability, Store};
    use anyhow::Context;
    let (from, to) = (Database::parse(from), Database::parse(to));
    if let Database::Sqlite(path) = &from {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    anyhow::ensure!(from != to, "--from and --to are the same store ({from})");
    let started = std::time::Instant::now();
    let mut source =
        Store::connect(&from, Durability::Durable).with_context(|| format!("open {from}"))?;
    let mut target =
        Store::connect(&to, Durability::Durable).with_context(|| format!("open {to}"))?;
    let report = source
        .copy_into(&mut target)
        .with_context(|| format!("copy {from} into {to}"))?;
    for (table, rows) in &report.rows {
        println!("{table:<18} {rows:>12} rows");
    }
    println!(
        "copied {from} into {to} in {:.1} s; the stores agree: {} bill lines, the rows of every table, the samples of {} accounts",
        started.elapsed().as_secs_f64(),
        report.bill_lines,
        report.accounts
    );
    Ok(())
}
