//! `aggregator serve`: the settings, the logs, the runtime, the service until a signal.

pub fn serve(flags: crate::config::Flags) -> anyhow::Result<()> {
    use std::io::IsTerminal;
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
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = crate::app::Application::build(
            config,
            std::sync::Arc::new(shared::clock::SystemClock),
            crate::app::Timing::default(),
        )
        .await?;
        if let Some(token) = &app.generated_admin_token {
            // Shown once: only its hash is stored.
            println!("admin token (shown once, store it now): {token}");
        }
        app.run(crate::app::shutdown_signal()).await
    })
}
