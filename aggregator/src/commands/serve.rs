//! `aggregator serve`: the settings, the logs, the runtime, the service until a signal.

pub fn serve(mut flags: crate::config::Flags) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // Read (and cleared from the environment) before any thread starts.
    let handed = handed_socket()?;
    if let Some(socket) = &handed {
        // The socket is the listen address: every check of it applies.
        flags.listen = Some(socket.local_addr()?.to_string());
    }
    let config = crate::app::load_config(&flags, &|k| std::env::var(k).ok())?;
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
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = crate::app::Application::build_on(
            config,
            std::sync::Arc::new(shared::clock::SystemClock),
            crate::app::Timing::default(),
            handed,
        )
        .await?;
        if let Some(token) = &app.generated_admin_token {
            // Shown once: only its hash is stored.
            println!("admin token (shown once, store it now): {token}");
        }
        app.run(crate::app::shutdown_signal()).await
    })
}

/// The listening socket a supervisor hands over, systemd's way (socket
/// activation: `LISTEN_FDS=1`, and `LISTEN_PID` this process or unset; the
/// socket is descriptor 3). Served instead of binding `listen`, so the port
/// is never free between the supervisor and the service. More than one
/// socket, or a descriptor that is not a TCP listener, is an error.
fn handed_socket() -> anyhow::Result<Option<std::net::TcpListener>> {
    let mut handed = listenfd::ListenFd::from_env();
    match handed.len() {
        0 => Ok(None),
        1 => handed
            .take_tcp_listener(0)
            .map_err(|e| anyhow::anyhow!("LISTEN_FDS: descriptor 3 is not a TCP socket ({e})")),
        n => anyhow::bail!("LISTEN_FDS: {n} sockets handed over; aggregator serve takes one"),
    }
}
