//! The `aggregator` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aggregator",
    version,
    about = "core-meter's aggregator: stores core samples and bills the daily overage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A self-contained tour: the service, a simulated fleet, a billed day, the report.
    Demo,
    /// Print the daily overage report of a day (all accounts, or one).
    Report {
        /// The day, YYYY-MM-DD in the billing zone (2000-01-01 to 2199-12-31).
        #[arg(long, value_parser = shared::domain::parse_day)]
        day: chrono::NaiveDate,
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json", "html"])]
        format: String,
        /// With --format html: the directory the pages are written to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The SQLite file, or a postgres:// URL [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// The service's settings file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a replay case holding the inputs of one account's bill for one day.
    Export {
        /// The day, YYYY-MM-DD in the billing zone (2000-01-01 to 2199-12-31).
        #[arg(long, value_parser = shared::domain::parse_day)]
        day: chrono::NaiveDate,
        #[arg(long)]
        account: String,
        /// The SQLite file, or a postgres:// URL [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// The service's settings file (the billing zone and rules come from it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the service: ingest, admin API, 02:00 billing, bill delivery.
    Serve {
        /// A TOML file of settings (see the README for every key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// The SQLite file, or a postgres:// URL [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM); read again when it changes.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM); must not be readable by others.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A CA bundle (PEM): agents must present a client certificate it signed to push.
        #[arg(long = "client-ca")]
        client_ca: Option<PathBuf>,
        /// Allow plain HTTP on an address other than loopback (a TLS-terminating proxy or mesh in front).
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Run a replay case (SPEC section 7) on a temporary database and print the bills as JSON.
    Replay {
        /// The case file.
        case: PathBuf,
    },
    /// Copy one store into another, empty one (SQLite to PostgreSQL to move to
    /// replicas), then compare them: every bill line, every table's rows and
    /// each account's samples must agree. Stop the service first.
    MigrateStore {
        /// The store to copy: a SQLite file or a postgres:// URL (only read).
        #[arg(long)]
        from: String,
        /// The empty store to fill: a postgres:// URL or a SQLite file (created if missing).
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    // A bug must still end in one line that says what happened, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "aggregator: internal error: {}{place}",
            message.replace('\n', " ")
        );
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay { case } => replay(&case),
        Command::MigrateStore { from, to } => migrate_store(&from, &to),
        Command::Demo => aggregator::demo::run(),
        Command::Report {
            day,
            account,
            format,
            out,
            database,
            config,
        } => report(day, account, &format, &out, config, database),
        Command::Export {
            day,
            account,
            database,
            config,
        } => export(day, &account, config, database),
        Command::Serve {
            config,
            listen,
            database,
            tls_cert,
            tls_key,
            client_ca,
            insecure_plaintext,
        } => serve(aggregator::config::Flags {
            config,
            listen,
            database,
            tls_cert,
            tls_key,
            tls_client_ca: client_ca,
            insecure_plaintext,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that names the problem, outermost context first.
            eprintln!("aggregator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn replay(case: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let output = aggregator::replay::replay_file(case)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer(&mut out, &output)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn serve(flags: aggregator::config::Flags) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let config = aggregator::config::Config::load(&flags, &|k| std::env::var(k).ok())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if config.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = aggregator::startup::Application::build(
            config,
            std::sync::Arc::new(shared::clock::SystemClock),
            aggregator::startup::Timing::default(),
        )
        .await?;
        if let Some(token) = &app.generated_admin_token {
            // Shown once: only its hash is stored.
            println!("admin token (shown once, store it now): {token}");
        }
        app.run(aggregator::startup::shutdown_signal()).await
    })
}

fn export(
    day: chrono::NaiveDate,
    account: &str,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    let (config, mut store) = open_configured(config, database)?;
    let case = aggregator::export::export_case(&mut store, &config.billing, account, day)?;
    println!("{}", serde_json::to_string_pretty(&case)?);
    Ok(())
}

fn migrate_store(from: &str, to: &str) -> anyhow::Result<()> {
    use aggregator::store::{Database, Durability, Store};
    use anyhow::Context;
    let (from, to) = (Database::parse(from), Database::parse(to));
    if let Database::Sqlite(path) = &from {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    anyhow::ensure!(from != to, "--from and --to are the same store ({from})");
    let started = std::time::Instant::now();
    let source =
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

fn open_configured(
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<(aggregator::config::Config, aggregator::store::Store)> {
    use anyhow::Context;
    let flags = aggregator::config::Flags {
        config,
        database,
        ..Default::default()
    };
    let config = aggregator::config::Config::load(&flags, &|k| std::env::var(k).ok())?;
    if let aggregator::store::Database::Sqlite(path) = &config.database {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    let store =
        aggregator::store::Store::connect(&config.database, aggregator::store::Durability::Durable)
            .with_context(|| format!("open the database {}", config.database))?;
    Ok((config, store))
}

fn report(
    day: chrono::NaiveDate,
    account: Option<String>,
    format: &str,
    out: &std::path::Path,
    config: Option<PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use shared::clock::Clock;
    let (config, mut store) = open_configured(config, database)?;
    let accounts = match account {
        Some(a) => vec![a],
        None => store.accounts()?.into_iter().map(|a| a.id).collect(),
    };
    let now = shared::clock::SystemClock.now();
    let mut reports = Vec::new();
    for a in &accounts {
        reports.push(aggregator::report::daily_report(
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
                std::fs::write(&path, aggregator::report_html::render_html(r))
                    .with_context(|| format!("write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
        "csv" => {
            for (i, r) in reports.iter().enumerate() {
                let csv = aggregator::report::render_csv(r);
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
                println!("{}", aggregator::report::render_table(r));
            }
        }
    }
    Ok(())
}
