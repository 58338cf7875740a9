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
