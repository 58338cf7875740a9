//! `aggregator report`: daily reports from the configured store, as text, JSON, CSV or HTML pages.

use std::path::PathBuf;

pub fn report(
    day: chrono::NaiveDate,
    account: Option<String>,
    format: &str,
    out: &std::path::Path,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use shared::clock::Clock;
    let (config, mut store) = super::open_configured(config, database)?;
    let accounts = match account {
        Some(a) => vec![a],
        None => store.accounts().all()?.into_iter().map(|a| a.id).collect(),
    };
    let now = shared::clock::SystemClock.now();
    let mut reports = Vec::new();
    for a in &accounts {
        reports.push(crate::reports::daily_report(
            &mut store,
            &config.billing,
            a,
            day,
            now,
        )?);
    }
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&reports)?),
        "html" => {
            std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
            for r in &reports {
                // An account id stored before ids had a domain may hold any
                // character: the file name keeps only the safe ones.
                let safe: String = r
                    .account
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let path = out.join(format!("report-{safe}-{}.html", r.day));
                std::fs::write(&path, crate::reports::html::render_html(r))
                    .with_context(|| format!("write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
        "csv" => {
            for (i, r) in reports.iter().enumerate() {
                let csv = crate::reports::render_csv(r);
                // One header for all accounts.
                print!(
                    "{}",
                    if i == 0 {
                        csv.as_str()
                    } else {
                        csv.split_once('\n').map_or("", |(_, rest)| rest)
                    }
                );
            }
        }
        _ => {
            for r in &reports {
                println!("{}", crate::reports::render_table(r));
            }
        }
    }
    Ok(())
}
