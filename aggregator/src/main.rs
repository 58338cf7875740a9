//! The `aggregator` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use aggregator::commands;
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
    /// Print the public key that signs monthly statements, as GET /v1/statement-key answers it.
    StatementKey {
        /// The SQLite file, or a postgres:// URL [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// The service's settings file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a signed monthly statement (the JSON format) offline against the
    /// service's public key; exits non-zero, naming why, when it does not hold.
    VerifyStatement {
        /// The statement as served (GET .../statements/YYYY-MM).
        file: PathBuf,
        /// A file holding what GET /v1/statement-key answers.
        #[arg(long)]
        key: PathBuf,
    },
    /// The audit log of every change: check its chain, or print it.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        /// The SQLite file, or a postgres:// URL [default: data/core-meter.sqlite].
        #[arg(long, global = true)]
        database: Option<String>,
        /// The service's settings file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Copy a SQLite store, running or not, into a new file with SQLite's
    /// online backup; say its size, its last bill line and its audit log.
    Backup {
        /// The file to write; it must not exist.
        #[arg(long, required_unless_present = "into", conflicts_with = "into")]
        to: Option<PathBuf>,
        /// A directory to write core-meter-YYYYMMDDTHHMMSSZ.sqlite into (a
        /// CronJob's volume), keeping the newest --keep.
        #[arg(long, requires = "keep")]
        into: Option<PathBuf>,
        /// With --into: how many backups to keep, 1 to 1000; older ones are
        /// deleted once the new one is written.
        #[arg(long, requires = "into", value_parser = clap::value_parser!(u16).range(1..=1000))]
        keep: Option<u16>,
        /// The SQLite file [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// The service's settings file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Put a backup in place of an empty store after checking it (integrity,
    /// schema version, the audit log's chain). Stop the service first.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The SQLite file to fill: absent or empty [default: data/core-meter.sqlite].
        #[arg(long)]
        database: Option<String>,
        /// The service's settings file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the service: ingest, admin API, 02:00 billing, bill delivery.
    Serve {
        /// A TOML file of settings (docs/settings.md lists every key).
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

#[derive(Subcommand)]
enum AuditAction {
    /// Walk the chain: exits non-zero naming the first entry missing,
    /// altered or unlinked; prints the count and the last entry's hash.
    Verify,
    /// Print every entry, oldest first, one JSON object a line.
    Export,
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
        Command::Replay { case } => commands::replay::print(&case),
        Command::MigrateStore { from, to } => commands::migrate::migrate_store(&from, &to),
        Command::Demo => commands::demo::run(),
        Command::Report {
            day,
            account,
            format,
            out,
            database,
            config,
        } => commands::report::report(day, account, &format, &out, config, database),
        Command::Export {
            day,
            account,
            database,
            config,
        } => commands::export::export(day, &account, config, database),
        Command::StatementKey { database, config } => {
            commands::statements::print_key(config, database)
        }
        Command::VerifyStatement { file, key } => commands::statements::verify(&file, &key),
        Command::Backup {
            to,
            into,
            keep,
            database,
            config,
        } => match (to, into, keep) {
            (Some(to), None, None) => commands::backup::backup(&to, config, database),
            (None, Some(dir), Some(keep)) => {
                commands::backup::backup_into(&dir, usize::from(keep), config, database)
            }
            _ => unreachable!("clap holds --to or --into with --keep"),
        },
        Command::Restore {
            from,
            database,
            config,
        } => commands::backup::restore(&from, config, database),
        Command::Audit {
            action,
            database,
            config,
        } => match action {
            AuditAction::Verify => commands::audit::verify(config, database),
            AuditAction::Export => commands::audit::export(config, database),
        },
        Command::Serve {
            config,
            listen,
            database,
            tls_cert,
            tls_key,
            client_ca,
            insecure_plaintext,
        } => commands::serve::serve(aggregator::config::Flags {
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
