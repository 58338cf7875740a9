//! `aggregator audit verify`: the audit log's chain checked whole;
//! `aggregator audit export`: every entry, one JSON object a line.

use std::io::Write;
use std::path::PathBuf;

pub fn verify(config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<()> {
    let (_, mut store) = super::open_configured(config, database)?;
    match store.audit().verify()? {
        Ok(whole) => {
            println!(
                "the audit log holds: {} entries, each linked to the one before; last entry {}, hash {}",
                whole.entries, whole.last_seq, whole.last_hash
            );
            Ok(())
        }
        Err(broken) => anyhow::bail!("the audit log is broken: {broken}"),
    }
}

pub fn export(config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<()> {
    let (_, mut store) = super::open_configured(config, database)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut written: anyhow::Result<()> = Ok(());
    store.audit().each(|entry| {
        if written.is_ok() {
            written = serde_json::to_writer(&mut out, &entry)
                .map_err(anyhow::Error::from)
                .and_then(|()| out.write_all(b"\n").map_err(anyhow::Error::from));
        }
        Ok(())
    })?;
    written?;
    out.flush()?;
    Ok(())
}
