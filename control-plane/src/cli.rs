//! The `kiln-server` command line: parses flags and environment, binds, serves
//! until SIGTERM/SIGINT. `main.rs` (and the fault tests' copy) only call `cli::main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::{self, Role};
use crate::{serve, AppState, Config, ConnectionLimits};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kiln-server",
    version,
    about = "Kiln's reference control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Directory for the SQLite database, logs, artifacts and releases.
    #[arg(
        long,
        env = "KILN_DATA_DIR",
        default_value = "/var/lib/kiln-server",
        global = true
    )]
    data_dir: PathBuf,
    /// PostgreSQL instead of the data dir's SQLite file, e.g.
    /// `postgres://kiln@db.internal/kiln` or `host=/run/postgresql dbname=kiln`:
    /// for several replicas serving one fleet.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// On PostgreSQL, the most connections this replica holds at once. More
    /// serve more claims a second at saturation; fewer keep claims quick on a
    /// small database host (every replica counts toward its `max_connections`).
    #[arg(
        long,
        env = "KILN_DATABASE_CONNECTIONS",
        default_value_t = crate::db::POSTGRES_CONNECTIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    database_connections: u32,
    /// Logs and artifacts in an S3 bucket too (`s3://bucket` or
    /// `s3://bucket/prefix`), for replicas that share no disk. Credentials,
    /// region and endpoint come from the usual `AWS_*` variables
    /// (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a server of your own).
    #[arg(long, env = "KILN_OBJECT_STORE_URL")]
    object_store_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address to serve Prometheus `/metrics` on (the queue, the fleet), apart
    /// from the API, e.g. `127.0.0.1:9465`. Off when unset.
    #[arg(long, env = "KILN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Bearer token for user endpoints. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "KILN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Secret agents present to `kiln-agent register`.
    #[arg(long, env = "KILN_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: Option<String>,
    /// Where people reach this server, e.g. `https://kiln.example.com`: links
    /// sent to git hosts point there, and an `https` one marks the dashboard's
    /// session cookie Secure.
    #[arg(long, env = "KILN_PUBLIC_URL")]
    public_url: Option<String>,
    /// Milliseconds before a commit status a git host refused is sent again
    /// (doubling each time, up to 10 minutes).
    #[arg(long, env = "KILN_GIT_HOST_RETRY_MS", default_value_t = 2000)]
    git_host_retry_ms: u64,
    /// Seconds an agent may go without renewing before its job is handed out again.
    #[arg(long, env = "KILN_LEASE_SECONDS", default_value_t = 60)]
    lease_seconds: u64,
    /// With an object store: seconds after a job ends before its log's chunks
    /// are gathered into one object per stream.
    #[arg(long, env = "KILN_LOG_COMPACTION_DELAY_SECONDS", default_value_t = 60)]
    log_compaction_delay_seconds: u64,
    /// Days a deployment's artifacts and release are kept after it ended (and
    /// stopped being live): then they are deleted, from the object store too.
    /// Its log and its record stay; a redeploy builds it again. 0 keeps them
    /// for ever.
    #[arg(long, env = "KILN_ARTIFACT_RETENTION_DAYS", default_value_t = 0)]
    artifact_retention_days: u32,
    /// Wall-clock limit for one build, sent to agents with each job.
    #[arg(long, env = "KILN_JOB_TIMEOUT_SECONDS", default_value_t = 3600)]
    job_timeout_seconds: u64,
    /// Shell command run on deploy (KILN_RELEASE_DIR etc. in its environment).
    #[arg(long, env = "KILN_DEPLOY_HOOK")]
    deploy_hook: Option<String>,
    /// OCI registry release images are pushed to and deploy hosts pull from
    /// (host[:port][/path]); without one, deploy hosts load the artifact.
    #[arg(long, env = "KILN_REGISTRY")]
    registry: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Connections served at once; more wait in the kernel's backlog (capped by
    /// the open-files limit).
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Connections one client address may hold at once; half of
    /// --max-connections unless set. Behind a reverse proxy every client is the
    /// proxy's address: raise it there, and limit clients at the proxy.
    #[arg(long, env = "KILN_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<usize>,
    /// Seconds a client has to send a request's head; also the longest a kept-alive
    /// connection may sit idle.
    #[arg(long, env = "KILN_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    header_timeout_seconds: u64,
    /// Seconds a request body may stall between two pieces before it is cut off.
    #[arg(long, env = "KILN_BODY_TIMEOUT_SECONDS", default_value_t = 60)]
    body_timeout_seconds: u64,
    /// Bytes kept per log stream of a job; set it to the agents' `log_limit`.
    #[arg(long, env = "KILN_LOG_LIMIT_BYTES", default_value_t = 100 << 20)]
    log_limit_bytes: u64,
    /// Accept `file://` and absolute-path repository URLs (a single machine
    /// whose agent clones from the same disk, as the quick start does).
    #[arg(long, env = "KILN_ALLOW_LOCAL_REPOSITORIES")]
    allow_local_repositories: bool,
    /// Accept a git host API (`git_host.api_url`) on loopback, link-local or a
    /// private network, such as a self-hosted Gitea beside the server.
    #[arg(long, env = "KILN_ALLOW_PRIVATE_GIT_HOSTS")]
    allow_private_git_hosts: bool,
    /// Send project webhooks to loopback, link-local or a private network
    /// (a chat bridge or search indexer beside the server).
    #[arg(long, env = "KILN_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// The Ed25519 key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`)
    /// release provenance is signed with; else one made at first start in
    /// the data dir (`provenance/signing-key.pem`).
    #[arg(long, env = "KILN_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dashboard accounts (the server need not be stopped).
    Users {
        #[command(subcommand)]
        action: UsersCommand,
    },
    /// The fleet: list, pause, resume or revoke agents (the server need not be stopped).
    Agents {
        #[command(subcommand)]
        action: AgentsCommand,
    },
    /// Release provenance.
    Provenance {
        #[command(subcommand)]
        action: ProvenanceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ProvenanceCommand {
    /// Verifies DSSE envelopes (one, a list, or a deployment's
    /// `GET /api/v1/deployments/{id}/provenance`, from a file or that URL with
    /// `KILN_ADMIN_TOKEN`) against the public keys, and an artifact's sha256
    /// against the statement naming it. Exit 0 verified, 1 not.
    Verify {
        /// A file or an http(s) URL.
        envelopes: String,
        /// The public keys (a file or URL, as `GET /api/v1/provenance/keys`
        /// answers); by default that route of the envelopes' server.
        #[arg(long)]
        keys: Option<String>,
        /// An artifact to hold to the statement that names it.
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// The artifact's name in the statement (default: its file name).
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Lists agents: name, labels and where they came from, version, state, last contact, running jobs, and
    /// why one claims no jobs (its disk is low).
    List {
        /// `text` or `json` (the API's `GET /agents` form).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Finishes its running jobs and claims no new ones.
    Pause { id: String },
    /// Claims jobs again.
    Resume { id: String },
    /// Its token stops working at once; its running jobs go to another agent.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Adds an account; its password is the first line of stdin.
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Lists accounts and their roles.
    List,
    /// Removes an account and ends its sessions.
    Remove { name: String },
    /// Changes an account's role; it applies to open sessions at once.
    SetRole {
        name: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not a role; use admin, deployer or viewer"))
}

/// Runs the server (or a `users` command); errors end the process with a message.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Users { action }) => {
            users(&cli.data_dir, cli.database_url.as_deref(), action)
        }
        Some(Command::Agents { action }) => {
            agents(&cli.data_dir, cli.database_url.as_deref(), action)
        }
        Some(Command::Provenance {
            action:
                ProvenanceCommand::Verify {
                    envelopes,
                    keys,
                    artifact,
                    subject,
                },
        }) => tokio::runtime::Runtime::new()?.block_on(crate::verify::run(
            &envelopes,
            keys.as_deref(),
            artifact.as_deref(),
            subject,
        )),
        None => tokio::runtime::Runtime::new()?.block_on(run(cli)),
    }
}

fn users(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    action: UsersCommand,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "cannot create data directory {}; check it exists and is writable by this user",
            data_dir.display()
        )
    })?;
    let mut conn = crate::db::connect(&crate::db::Location::new(data_dir, database_url))?;
    match action {
        UsersCommand::Add { name, role } => {
            let password = read_password()?;
            let hash = crate::dashboard::hash_password(&password).map_err(anyhow::Error::msg)?;
            let user = store::add_user(&mut conn, &name, &hash, role)?;
            println!("Added {} ({}).", user.name, user.role);
        }
        UsersCommand::List => {
            for user in store::list_users(&mut conn)? {
                println!("{}\t{}", user.name, user.role);
            }
        }
        UsersCommand::Remove { name } => {
            store::remove_user(&mut conn, &name)?;
            println!("Removed {name}; their sessions have ended.");
        }
        UsersCommand::SetRole { name, role } => {
            store::set_role(&mut conn, &name, role)?;
            println!("{name} is now {role}.");
        }
    }
    Ok(())
}

fn agents(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    action: AgentsCommand,
) -> anyhow::Result<()> {
    let mut conn = crate::db::connect(&crate::db::Location::new(data_dir, database_url))?;
    match action {
        AgentsCommand::List { format } => {
            let agents: Vec<kiln_protocol::AgentInfo> = store::list_agents(&mut conn)?
                .iter()
                .map(store::AgentView::info)
                .collect();
            match format.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&kiln_protocol::AgentList { agents })?
                ),
                "text" => {
                    for agent in agents {
                        let running: Vec<&str> = agent
                            .running_jobs
                            .iter()
                            .map(|job| job.deployment_id.as_str())
                            .collect();
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            agent.id,
                            agent.name,
                            agent.state.as_str(),
                            agent.labels.join(","),
                            agent.labels_from.as_deref().unwrap_or("-"),
                            agent.version.as_deref().unwrap_or("-"),
                            agent
                                .last_contact_at
                                .map_or("never".to_owned(), |at| at.to_rfc3339()),
                            if running.is_empty() {
                                "-".to_owned()
                            } else {
                                running.join(",")
                            },
                            agent.holding_back.as_deref().unwrap_or("-")
                        );
                    }
                }
                other => anyhow::bail!("--format {other:?} is not text or json"),
            }
        }
        AgentsCommand::Pause { id } => {
            store::set_paused(&mut conn, &id, true)?;
            println!("{id} is paused: it finishes its running jobs and claims no new ones.");
        }
        AgentsCommand::Resume { id } => {
            store::set_paused(&mut conn, &id, false)?;
            println!("{id} claims jobs again.");
        }
        AgentsCommand::Revoke { id } => {
            let running = store::revoke_agent(&mut conn, &id)?;
            println!(
                "{id} is revoked; {} running job(s) go to another agent.",
                running.len()
            );
        }
    }
    Ok(())
}

/// The first line of stdin, without its line break.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.chars().count() < 8 {
        anyhow::bail!(
            "the password (the first line of stdin) must be at least 8 characters; e.g. `openssl rand -base64 18 | tee /dev/stderr | kiln-server users add NAME --role viewer`"
        );
    }
    Ok(password)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing(&cli.log_format)?;
    if cli.lease_seconds < 2 {
        anyhow::bail!(
            "KILN_LEASE_SECONDS={} is too short; use 2 or more",
            cli.lease_seconds
        );
    }
    let required = |value: Option<String>, name: &str| {
        value.ok_or_else(|| {
            anyhow::anyhow!("{name} is not set; the server needs it (a long random secret, e.g. `openssl rand -hex 32`)")
        })
    };
    let mut config = Config::new(
        cli.data_dir.clone(),
        required(cli.admin_token, "KILN_ADMIN_TOKEN (--admin-token)")?,
        required(
            cli.registration_token,
            "KILN_REGISTRATION_TOKEN (--registration-token)",
        )?,
    );
    config.public_url = cli
        .public_url
        .map(|url| url.trim_end_matches('/').to_owned());
    config.git_host_retry = Duration::from_millis(cli.git_host_retry_ms.max(10));
    config.lease = Duration::from_secs(cli.lease_seconds);
    config.log_compaction_delay = Duration::from_secs(cli.log_compaction_delay_seconds);
    config.job_timeout = Duration::from_secs(cli.job_timeout_seconds);
    config.artifact_retention = (cli.artifact_retention_days > 0)
        .then(|| Duration::from_secs(u64::from(cli.artifact_retention_days) * 86_400));
    config.deploy_hook = cli.deploy_hook;
    config.registry = cli
        .registry
        .as_deref()
        .map(kiln_protocol::registry_prefix)
        .transpose()
        .map_err(|why| anyhow::anyhow!("--registry: {why}"))?;
    config.database_url = cli.database_url;
    config.database_connections = cli.database_connections as usize;
    config.object_store = cli.object_store_url.map(|url| crate::ObjectStoreConfig {
        url,
        options: Vec::new(),
    });
    config.allow_local_repositories = cli.allow_local_repositories;
    config.allow_private_git_hosts = cli.allow_private_git_hosts;
    config.allow_private_webhooks = cli.allow_private_webhooks;
    config.signing_key = cli.signing_key;
    config.metrics_listen = cli.metrics_listen;
    config.log_limit = cli.log_limit_bytes;
    config.connections = ConnectionLimits {
        max_connections: cli.max_connections.max(1),
        max_per_client: cli
            .max_connections_per_client
            .unwrap_or(cli.max_connections / 2)
            .max(1),
        header_timeout: Duration::from_secs(cli.header_timeout_seconds.max(1)),
        body_timeout: Duration::from_secs(cli.body_timeout_seconds.max(1)),
    };
    let state = AppState::open(config)?;
    let listener = crate::connections::bind(cli.listen).with_context(|| {
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
    // Colours only for a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
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
