//! The `kiln-server` command line: parses flags and environment, binds, serves
//! until SIGTERM/SIGINT. `main.rs` (and the fault tests' copy) only call `cli::main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{serve, AppState, Config};
use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "kiln-server",
    version,
    about = "Kiln's reference control plane"
)]
struct Cli {
    /// Directory for the SQLite database, logs, artifacts and releases.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "/var/lib/kiln-server")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer token for user endpoints. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "KILN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Secret agents present to `kiln-agent register`.
    #[arg(long, env = "KILN_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: String,
    /// Seconds an agent may go without renewing before its job is handed out again.
    #[arg(long, env = "KILN_LEASE_SECONDS", default_value_t = 60)]
    lease_seconds: u64,
    /// Wall-clock limit for one build, sent to agents with each job.
    #[arg(long, env = "KILN_JOB_TIMEOUT_SECONDS", default_value_t = 3600)]
    job_timeout_seconds: u64,
    /// Shell command run on deploy (KILN_RELEASE_DIR etc. in its environment).
    #[arg(long, env = "KILN_DEPLOY_HOOK")]
    deploy_hook: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Runs the server; errors end the process with a message.
pub fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format)?;
    if cli.lease_seconds < 2 {
        anyhow::bail!(
            "KILN_LEASE_SECONDS={} is too short; use 2 or more",
            cli.lease_seconds
        );
    }
    let mut config = Config::new(
        cli.data_dir.clone(),
        cli.admin_token,
        cli.registration_token,
    );
    config.lease = Duration::from_secs(cli.lease_seconds);
    config.job_timeout = Duration::from_secs(cli.job_timeout_seconds);
    config.deploy_hook = cli.deploy_hook;
    let state = AppState::open(config)?;
    let listener = TcpListener::bind(cli.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another server using it?",
            cli.listen
        )
    })?;
    tracing::info!(
        message = "Control plane listening.",
        address = %listener.local_addr()?,
        data_dir = %cli.data_dir.display()
    );
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!(message = "Control plane stopped.");
    Ok(())
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => anyhow::bail!("KILN_LOG_FORMAT={other:?} is invalid; use text or json"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
