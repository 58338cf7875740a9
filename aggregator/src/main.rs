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
    /// Run a replay case (SPEC section 7) on a temporary database and print the bills as JSON.
    Replay {
        /// The case file.
        case: PathBuf,
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
