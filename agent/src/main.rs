//! The `agent` command: parses the command line (flags with environment fallbacks) and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent::daemon::{Settings, AGENT_VERSION};
use agent::identity::{node_name, TokenSource};
use agent::prepare::Owner;
use agent::sampler::{default_sys_root, Machine};
use agent::spool::Spool;
use chrono::SubsecRound;
use clap::{Args, Parser, Subcommand};
use shared::clock::{Clock, SystemClock};

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "core-meter's node agent: counts the node's cores every hour and pushes them"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "CORE_METER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon.
    Run(Box<RunArgs>),
    /// Sample once and print the sample as JSON; sends nothing.
    Once {
        /// Print the sample (the only thing `once` does).
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Give the spool's host directory to the agent's user (run as root, with only CAP_CHOWN, in an init container).
    PrepareSpool {
        /// The user and group the agent runs as.
        #[arg(long, default_value = "65532:65532")]
        owner: Owner,
        /// The directory the spool lives in (the hostPath's mount point).
        #[arg(default_value = "/var/lib/core-meter")]
        dir: PathBuf,
    },
    /// List the node's images through the container runtime once and print them as JSON; sends nothing.
    Images {
        /// Print the list (the only thing `images` does).
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        images: ImageArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Report the bytes of a log directory's day folders to the aggregator once and delete the days it says to purge (the log-storage add-on's reference client).
    LogRetention(Box<LogRetentionArgs>),
    /// List the samples waiting in the spool, as JSON lines.
    Spool {
        #[arg(
            long,
            env = "CORE_METER_SPOOL",
            default_value = "/var/lib/core-meter/spool"
        )]
        spool: PathBuf,
    },
}

#[derive(Args)]
struct ImageArgs {
    /// The container runtime's CRI socket (default: the first of /run/containerd/containerd.sock and /var/run/crio/crio.sock that exists).
    #[arg(long, env = "CORE_METER_CRI_SOCKET")]
    cri_socket: Option<PathBuf>,
}

#[derive(Args)]
struct NodeArgs {
    /// The node's name; defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Where the host's /sys is (default: /host/sys if mounted, else /sys).
    #[arg(long, env = "CORE_METER_SYS_ROOT")]
    sys_root: Option<PathBuf>,
}

/// How a subcommand reaches the aggregator: `run` and `log-retention` alike.
#[derive(Args)]
struct AggregatorArgs {
    /// The aggregator's base URL. Plain http:// only to this machine (loopback), unless --insecure-plaintext.
    #[arg(
        long,
        env = "CORE_METER_AGGREGATOR",
        default_value = "https://core-meter-aggregator:8443"
    )]
    aggregator: String,
    /// A PEM bundle of the CA certificates the aggregator's certificate is verified against, instead of the system's roots (a cluster's private CA).
    #[arg(long, env = "CORE_METER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The PEM certificate (chain) this agent shows when the aggregator asks for one (mutual TLS); needs --client-key.
    #[arg(long, env = "CORE_METER_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, env = "CORE_METER_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Allow plain http:// to an aggregator that is not on this machine: the token and what is sent cross the network in the clear.
    #[arg(long, env = "CORE_METER_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
}

impl AggregatorArgs {
    /// Checks the transport and reads the TLS files; `sent` says what would
    /// cross the network in the clear, for the warning.
    fn tls(&self, sent: &str) -> anyhow::Result<agent::tls::ClientTls> {
        let transport = agent::tls::transport(&self.aggregator, self.insecure_plaintext)?;
        if transport == agent::tls::Transport::InsecureHttp {
            tracing::warn!(
                aggregator = %self.aggregator,
                "--insecure-plaintext: {sent} go to the aggregator unencrypted and unauthenticated; use https:// outside a test"
            );
        }
        agent::tls::ClientTls::load(
            self.ca_file.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
        )
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    connection: AggregatorArgs,
    /// The spool directory (a hostPath in a DaemonSet, so samples outlive the pod).
    #[arg(
        long,
        env = "CORE_METER_SPOOL",
        default_value = "/var/lib/core-meter/spool"
    )]
    spool: PathBuf,
    /// Seconds between samples.
    #[arg(long, env = "CORE_METER_INTERVAL_SECS", default_value_t = 3600)]
    interval_secs: u64,
    /// Samples are spread over this many seconds at the start of each interval.
    #[arg(long, env = "CORE_METER_SPREAD_SECS", default_value_t = 600)]
    spread_secs: u64,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CORE_METER_LISTEN", default_value = "0.0.0.0:9464")]
    listen: SocketAddr,
    /// A file holding the cluster token (a mounted Secret).
    #[arg(long, env = "CORE_METER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The cluster token itself (prefer the file).
    #[arg(long, env = "CORE_METER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Pending samples kept at most (default: 30 days of hourly samples); the oldest go first.
    #[arg(long, env = "CORE_METER_MAX_SPOOL_SAMPLES", default_value_t = 720)]
    max_spool_samples: usize,
    /// Samples per request (at most 1000).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Seconds a push may take.
    #[arg(long, default_value_t = 10)]
    push_timeout_secs: u64,
    /// The longest wait between retries, in seconds.
    #[arg(long, default_value_t = 300)]
    max_backoff_secs: u64,
    /// Seconds the last push on SIGTERM may take.
    #[arg(long, default_value_t = 5)]
    shutdown_grace_secs: u64,
    /// List the node's images with each sample, for image scanning: on, off, or auto (on when a runtime socket is found).
    #[arg(long, env = "CORE_METER_IMAGES", default_value = "auto", value_parser = ["on", "off", "auto"])]
    images: String,
    #[command(flatten)]
    cri: ImageArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args)]
struct LogRetentionArgs {
    /// The log directory: one folder per day, named YYYY-MM-DD.
    #[arg(long, env = "CORE_METER_LOG_DIR")]
    dir: PathBuf,
    #[command(flatten)]
    connection: AggregatorArgs,
    /// A file holding the account's logs token (a mounted Secret).
    #[arg(long, env = "CORE_METER_LOG_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The logs token itself (prefer the file).
    #[arg(long, env = "CORE_METER_LOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Report, and print what would be deleted; delete nothing.
    #[arg(long, env = "CORE_METER_LOG_DRY_RUN")]
    dry_run: bool,
    /// Seconds the report may take.
    #[arg(long, default_value_t = 30)]
    push_timeout_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Once { print: _, node } => once(node),
        Command::Images {
            print: _,
            images,
            node,
        } => print_images(images, node),
        Command::PrepareSpool { owner, dir } => prepare_spool(&dir, owner),
        Command::LogRetention(args) => log_retention(*args),
        Command::Spool { spool } => list_spool(&spool),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "agent failed");
            eprintln!("agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn machine(args: &NodeArgs) -> Machine {
    Machine::new(
        args.sys_root
            .clone()
            .unwrap_or_else(|| default_sys_root().to_path_buf()),
    )
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let tls = args.connection.tls("the cluster token and the samples")?;
    let settings = Settings {
        aggregator: args.connection.aggregator,
        tls,
        token: TokenSource::from_settings(args.token_file, args.token)?,
        node: node_name(args.node.node.as_deref())?,
        spool_dir: args.spool,
        machine: machine(&args.node),
        interval_secs: args.interval_secs,
        spread_secs: args.spread_secs,
        listen: args.listen,
        max_spool_samples: args.max_spool_samples,
        max_memory_samples: args.max_spool_samples,
        batch_size: args.batch_size,
        push_timeout: Duration::from_secs(args.push_timeout_secs.max(1)),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(args.max_backoff_secs.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        images: match (args.images.as_str(), args.cri.cri_socket) {
            ("off", _) => agent::daemon::ImagesMode::Off,
            ("on", socket) => agent::daemon::ImagesMode::On(socket),
            (_, Some(socket)) => agent::daemon::ImagesMode::On(Some(socket)),
            (_, None) => agent::daemon::ImagesMode::Auto,
        },
    };
    if let Some(warning) = agent::identity::node_name_warning(&settings.node) {
        tracing::warn!("{warning}");
    }
    // One thread is plenty for one sample an hour, and keeps the footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(agent::daemon::run(settings, Arc::new(SystemClock)))
}

fn once(args: NodeArgs) -> anyhow::Result<()> {
    let node = node_name(args.node.as_deref())?;
    let count = machine(&args).cores()?;
    let out = serde_json::json!({
        "node": node,
        "cores": count.cores,
        "at": SystemClock.now().trunc_subsecs(3),
        "agent_version": AGENT_VERSION,
        "sysfs_cores": count.sysfs,
        "sysinfo_cores": count.sysinfo,
    });
    println!("{out}");
    Ok(())
}

fn print_images(args: ImageArgs, node: NodeArgs) -> anyhow::Result<()> {
    let node = node_name(node.node.as_deref())?;
    let socket = args
        .cri_socket
        .or_else(|| agent::images::find_socket(std::path::Path::new("/")))
        .ok_or(agent::images::ImagesError::NoSocket)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (images, cut) = runtime.block_on(agent::images::list(&socket, Duration::from_secs(30)))?;
    if cut > 0 {
        eprintln!(
            "agent: {cut} images beyond {} left out",
            agent::images::MAX_IMAGES
        );
    }
    let out = serde_json::json!({
        "node": node,
        "at": SystemClock.now().trunc_subsecs(3),
        "images": images,
    });
    println!("{out}");
    Ok(())
}

fn log_retention(args: LogRetentionArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let tls = args.connection.tls("the logs token and the usage report")?;
    let value = args.token.filter(|v| !v.trim().is_empty());
    anyhow::ensure!(
        args.token_file.is_some() || value.is_some(),
        "no logs token: set --token-file (CORE_METER_LOG_TOKEN_FILE, a mounted Secret) or CORE_METER_LOG_TOKEN"
    );
    let token = TokenSource::from_settings(args.token_file, value)
        .and_then(|mut source| source.current())
        .context("the logs token")?;
    let options = agent::log_retention::Options {
        dir: args.dir,
        aggregator: args.connection.aggregator,
        tls,
        token,
        dry_run: args.dry_run,
        timeout: Duration::from_secs(args.push_timeout_secs.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(agent::log_retention::run(&options, &SystemClock))?;
    if summary.dry_run {
        for d in &summary.purged {
            let path = options.dir.join(agent::log_retention::folder_name(d.day));
            eprintln!(
                "agent: --dry-run: would delete {} ({} bytes)",
                path.display(),
                d.bytes
            );
        }
    }
    if !summary.accept_writes {
        eprintln!(
            "agent: the log storage is {}: it accepts no writes; the log service must stop writing",
            summary.state.as_str()
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn prepare_spool(dir: &std::path::Path, owner: Owner) -> anyhow::Result<()> {
    let done = agent::prepare::prepare(dir, owner)?;
    tracing::info!(
        dir = %dir.display(),
        uid = owner.uid,
        gid = owner.gid,
        changed = done.changed,
        unchanged = done.unchanged,
        "the spool directory belongs to the agent's user"
    );
    Ok(())
}

fn list_spool(dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "no spool at {}", dir.display());
    let mut spool = Spool::open(dir, usize::MAX)?;
    let loaded = spool.load(usize::MAX);
    for s in &loaded.samples {
        println!("{}", serde_json::to_string(s)?);
    }
    eprintln!(
        "{} pending, {} bytes, next seq {}{}",
        loaded.samples.len(),
        spool.bytes(),
        spool.next_seq(),
        if loaded.corrupt > 0 {
            format!(", {} corrupt set aside", loaded.corrupt)
        } else {
            String::new()
        }
    );
    Ok(())
}
