//! `gen-fleet`: writes a replay case of a simulated fleet to stdout (see `e2e::fleet`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Write a replay case of a simulated fleet to stdout")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    #[arg(long, default_value_t = 3)]
    days: u32,
    #[arg(long, default_value_t = 1)]
    accounts: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let a = Args::parse();
    let fleet = e2e::fleet::Fleet {
        nodes: a.nodes,
        days: a.days,
        accounts: a.accounts,
        seed: a.seed,
        ..Default::default()
    };
    print!("{}", e2e::fleet::generate(&fleet));
}
