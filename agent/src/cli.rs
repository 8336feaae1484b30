//! The `kiln-agent` command line. Errors become exit codes here and nowhere else;
//! `main.rs` (and the end-to-end tests' copy of the binary) only call `cli::main`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::client::Client;
use crate::config::{AgentConfig, PartialConfig, DEFAULT_CONFIG_PATH};
use crate::daemon::{Daemon, DaemonError};
use crate::env_vars;
use crate::executor::{DockerExecutor, Executor};
use crate::logs::{JobLogs, LogOptions};
use crate::pipeline::{BuildOutcome, BuildRequest, Pipeline, Source, Workspace};
use crate::state::{Identity, StateDir};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kiln_protocol::{EnvVar, RegisterAgentRequest};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "kiln-agent",
    version,
    about = "Builds Medusa apps for a Kiln control plane"
)]
struct Cli {
    /// Configuration file (default /etc/kiln/agent.toml; also KILN_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Operator log format: text or json (also KILN_LOG_FORMAT).
    #[arg(long, global = true, env = env_vars::KILN_LOG_FORMAT, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register with a control plane and store this agent's token in the state dir.
    Register {
        #[arg(long)]
        url: String,
        #[arg(long, env = env_vars::KILN_REGISTRATION_TOKEN, hide_env_values = true)]
        registration_token: String,
        /// `--name` and `--labels` come from the shared settings below.
        #[command(flatten)]
        settings: PartialConfig,
    },
    /// Claim and build jobs until stopped (SIGTERM/SIGINT drain; a second signal cancels).
    Run {
        #[command(flatten)]
        settings: PartialConfig,
    },
    /// Build a local directory the way CI would, without a control plane.
    Build {
        dir: PathBuf,
        /// Where the artifacts go.
        #[arg(long, default_value = "kiln-artifacts")]
        out: PathBuf,
        /// Backend directory inside DIR.
        #[arg(long, default_value = ".")]
        backend_path: String,
        /// Storefront directory inside DIR (default: detected).
        #[arg(long)]
        storefront_path: Option<String>,
        /// Build environment variable NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Build without the build cache (neither reading nor writing it).
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        settings: PartialConfig,
    },
    /// Detect a repository's layout, storefront framework, build command and package manager.
    Detect {
        dir: PathBuf,
        /// `text` (each decision with the signal that made it) or `json`.
        #[arg(long, default_value = "text")]
        format: String,
        /// The project's backend path, if set.
        #[arg(long)]
        backend_path: Option<String>,
        /// The project's storefront path, if set.
        #[arg(long)]
        storefront_path: Option<String>,
    },
    /// Scan a directory that will be served publicly for secrets. Exit 0 clean, 1 findings, 2 error.
    ///
    /// For this command `--config FILE` names the scan settings (TOML: `mode`,
    /// `allow_paths`, `allow_rules`, `allow_fingerprints`), the same shape as a
    /// project's `secret_scan` setting.
    Scan {
        dir: PathBuf,
        /// `text` (grouped by file, with what to do) or `json`.
        #[arg(long, default_value = "text")]
        format: String,
        /// Also search for the value of environment variable NAME, literally and
        /// base64-encoded, as builds do with the job's secret variables (repeatable).
        #[arg(long = "secret-env", value_name = "NAME")]
        secret_env: Vec<String>,
    },
    /// Verify a release's provenance offline: each DSSE envelope's signature
    /// against the control plane's public keys, and an artifact's sha256
    /// against the statement naming it. Exit 0 verified, 1 not.
    Verify {
        /// The envelopes: one, a JSON list, or `GET /api/v1/deployments/{id}/provenance`'s answer.
        envelopes: PathBuf,
        /// The public keys, as `GET /api/v1/provenance/keys` answers.
        #[arg(long)]
        keys: PathBuf,
        /// An artifact to hold to the statement that names it.
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// The artifact's name in the statement (default: its file name).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Check Docker, the build image, git, disk space and the control plane.
    Doctor {
        #[command(flatten)]
        settings: PartialConfig,
    },
}

fn load_config(path: Option<PathBuf>, flags: PartialConfig) -> anyhow::Result<AgentConfig> {
    let (path, required) =
        match path.or_else(|| std::env::var_os(env_vars::KILN_CONFIG).map(PathBuf::from)) {
            Some(path) => (path, true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
    let file = PartialConfig::from_file(&path, required)?;
    let env = PartialConfig::from_env(|name| std::env::var(name).ok())?;
    Ok(flags.over(env.over(file)).resolve()?)
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_vars::RUST_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format {other:?} is invalid; use text or json"),
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_tracing(&cli.log_format) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Register {
            url,
            registration_token,
            settings,
        } => {
            let config = load_config(cli.config, settings)?;
            let name = config.name.clone();
            let url = url.trim_end_matches('/').to_owned();
            let response = Client::register(
                &url,
                &RegisterAgentRequest {
                    registration_token,
                    name: name.clone(),
                    labels: config.labels.clone(),
                    facts: Some(crate::facts::collect(
                        &config.work_dir,
                        docker_version().await,
                    )),
                },
            )
            .await
            .context("registration failed")?;
            let state = StateDir::new(&config.state_dir);
            state.save_identity(&Identity {
                control_plane_url: url.clone(),
                agent_id: response.agent_id.clone(),
                token: response.token,
                name,
            })?;
            println!(
                "Registered as {} with {url}; token stored in {}.",
                response.agent_id,
                state.identity_path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { settings } => {
            let config = Arc::new(load_config(cli.config, settings)?);
            let state = StateDir::new(&config.state_dir);
            let identity = state.load_identity()?;
            let url = config
                .control_plane_url
                .clone()
                .unwrap_or(identity.control_plane_url.clone());
            let executor: Arc<dyn Executor> = Arc::new(DockerExecutor::connect().await?);
            std::fs::create_dir_all(&config.work_dir)
                .with_context(|| format!("cannot create work_dir {}", config.work_dir.display()))?;
            let cache = Arc::new(crate::cache::Cache::new(
                &config.cache_dir,
                config.cache_limit.0,
                config.build_user,
            ));
            let daemon = Arc::new(Daemon {
                cache,
                client: Client::new(&url, &identity.token),
                pipeline: Arc::new(Pipeline {
                    executor: executor.clone(),
                    config: config.clone(),
                    agent_id: identity.agent_id.clone(),
                }),
                executor,
                config,
                state,
                agent_id: identity.agent_id,
            });
            let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
            tokio::spawn(forward_signals(shutdown.clone(), abort.clone()));
            let telemetry = CancellationToken::new();
            let _stop_telemetry = telemetry.clone().drop_guard();
            if let Some(address) = daemon.config.metrics_listen {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| {
                        format!("cannot listen on metrics_listen {address}; is the port taken?")
                    })?;
                tracing::info!(message = "Serving /metrics, /healthz and /readyz.", address = %listener.local_addr()?);
                tokio::spawn(crate::metrics::serve(listener, telemetry.clone()));
                tokio::spawn(crate::metrics::measure_spool(
                    daemon.state.spool_root(),
                    telemetry.clone(),
                ));
            }
            // READY, the status line and the watchdog; STOPPING=1 goes out from
            // `forward_signals` at the first signal, when the drain begins.
            tokio::spawn(crate::metrics::notify_systemd(shutdown.clone()));
            match daemon.run(shutdown, abort).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(DaemonError::Unauthorized(error)) => bail!("{error}"),
                Err(error) => Err(error.into()),
            }
        }
        Command::Build {
            dir,
            out,
            backend_path,
            storefront_path,
            env,
            no_cache,
            settings,
        } => {
            let config = Arc::new(load_config(cli.config, settings)?);
            let local = LocalBuild {
                dir,
                out,
                backend_path,
                storefront_path,
                env,
                cache: !no_cache,
            };
            build_locally(config, local).await
        }
        Command::Detect {
            dir,
            format,
            backend_path,
            storefront_path,
        } => detect(
            &dir,
            &format,
            backend_path.as_deref(),
            storefront_path.as_deref(),
        ),
        Command::Scan {
            dir,
            format,
            secret_env,
        } => Ok(scan(&dir, &format, cli.config.as_deref(), &secret_env)),
        Command::Verify {
            envelopes,
            keys,
            artifact,
            subject,
        } => Ok(verify(&envelopes, &keys, artifact.as_deref(), subject)),
        Command::Doctor { settings } => {
            let config = load_config(cli.config, settings)?;
            Ok(if crate::doctor::run(&config).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn forward_signals(shutdown: CancellationToken, abort: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can handle SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("can handle SIGINT");
    for (first, token) in [(true, shutdown), (false, abort)] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if first {
            crate::metrics::notify_stopping();
        }
        token.cancel();
    }
}

/// What `kiln-agent build` was asked.
struct LocalBuild {
    dir: PathBuf,
    out: PathBuf,
    backend_path: String,
    storefront_path: Option<String>,
    env: Vec<String>,
    cache: bool,
}

async fn build_locally(config: Arc<AgentConfig>, local: LocalBuild) -> anyhow::Result<ExitCode> {
    let LocalBuild {
        dir,
        out,
        backend_path,
        storefront_path,
        env,
        cache,
    } = local;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let env = env
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => Ok(EnvVar {
                name: name.to_owned(),
                value: value.to_owned(),
                secret: false,
            }),
            None => bail!("--env {pair:?} must be NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let executor: Arc<dyn Executor> = Arc::new(DockerExecutor::connect().await?);
    let job_id = format!("local-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let scratch = ScratchDir::create(&config.work_dir)?;
    let logs = JobLogs::open(
        &scratch.0.join("logs"),
        &LogOptions {
            secrets: Vec::new(),
            echo: true,
            limit: config.log_limit.0,
        },
    )?;
    let pipeline = Pipeline {
        executor,
        config: config.clone(),
        agent_id: "local".to_owned(),
    };
    let workspace = Workspace::new(&scratch.0, &job_id);
    // Local builds keep to one scope per directory.
    let cache = cache.then(|| crate::pipeline::CacheRequest {
        cache: Arc::new(crate::cache::Cache::new(
            &config.cache_dir,
            config.cache_limit.0,
            config.build_user,
        )),
        project: format!("local:{}", dir.display()),
        scopes: crate::cache::Scopes {
            write: "local".to_owned(),
            read: Vec::new(),
        },
        dropped: Vec::new(),
        // No control plane: this host's cache alone.
        shared: None,
    });
    let request = BuildRequest {
        job_id: job_id.clone(),
        cache,
        source: Source::Local(dir),
        backend_path,
        storefront_path,
        env,
        secret_scan: Default::default(),
        timeout: config.job_timeout,
        progress: None,
        release_image: false,
        release_reference: None,
    };
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    let outcome = pipeline.build(&request, &workspace, &logs, &cancel).await;
    let code = match outcome {
        BuildOutcome::Built {
            artifacts, harvest, ..
        } => {
            if let Some(harvest) = harvest {
                for line in harvest.publish(&job_id).0 {
                    eprintln!("{line}");
                }
            }
            std::fs::create_dir_all(&out)?;
            for artifact in artifacts {
                let dest = out.join(artifact.name());
                std::fs::copy(&artifact.packed.path, &dest)?;
                println!(
                    "artifact  {}  {} bytes  sha256 {}",
                    dest.display(),
                    artifact.packed.size,
                    artifact.packed.sha256
                );
            }
            ExitCode::SUCCESS
        }
        BuildOutcome::Failed(failure) => {
            eprintln!("build failed: {failure}");
            ExitCode::FAILURE
        }
        BuildOutcome::Canceled => ExitCode::from(130),
    };
    Ok(code)
}

/// `kiln-agent build`'s working directory (logs and the workspace), under
/// `work_dir` where it can be made, else the system's temporary directory;
/// removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(work_dir: &std::path::Path) -> anyhow::Result<ScratchDir> {
        let base = if std::fs::create_dir_all(work_dir).is_ok() {
            work_dir.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kiln-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `kiln-agent scan`: errors are exit code 2, so a CI step can tell them from findings.
/// `kiln-agent verify`: offline, from files.
fn verify(
    envelopes: &std::path::Path,
    keys: &std::path::Path,
    artifact: Option<&std::path::Path>,
    subject: Option<String>,
) -> ExitCode {
    use kiln_protocol::provenance::{subject_of, verify_read, Artifact};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let checked = (|| -> Result<Vec<String>, String> {
        let digest = match artifact {
            Some(path) => {
                let (_, sha256) = crate::executor::digest_file(path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                Some((subject_of(path, subject), sha256))
            }
            None => None,
        };
        verify_read(
            (&envelopes.display().to_string(), &read(envelopes)?),
            (&keys.display().to_string(), &read(keys)?),
            digest
                .as_ref()
                .map(|(name, sha256)| Artifact { name, sha256 }),
        )
    })();
    match checked {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("not verified: {why}");
            ExitCode::FAILURE
        }
    }
}

fn scan(
    dir: &std::path::Path,
    format: &str,
    config: Option<&std::path::Path>,
    secret_env: &[String],
) -> ExitCode {
    use crate::scan::{report, NamedSecret, ScanPolicy, Scanner};
    let json = format == "json";
    let result = (|| -> anyhow::Result<(crate::scan::ScanReport, ScanPolicy)> {
        if format != "text" && format != "json" {
            bail!("--format {format:?} is invalid; use text or json");
        }
        let policy: ScanPolicy = match config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read scan settings {}", path.display()))?;
                let table: toml::Table = toml::from_str(&text).with_context(|| {
                    format!("scan settings {} are not valid TOML", path.display())
                })?;
                // The wire type ignores unknown fields (compatibility); a file should not.
                if let Some(unknown) = table
                    .keys()
                    .find(|key| !crate::scan::POLICY_KEYS.contains(&key.as_str()))
                {
                    bail!(
                        "scan settings {}: unknown key {unknown:?}; the keys are {}",
                        path.display(),
                        crate::scan::POLICY_KEYS.join(", ")
                    );
                }
                table.try_into().with_context(|| {
                    format!(
                        "scan settings {} are invalid (keys: mode = \"fail\"|\"warn\", \
                         allow_paths, allow_rules, allow_fingerprints)",
                        path.display()
                    )
                })?
            }
            None => ScanPolicy::default(),
        };
        let mut secrets = Vec::new();
        for name in secret_env {
            let value = std::env::var(name).with_context(|| {
                format!("--secret-env {name}: the variable is not set; export it or drop the flag")
            })?;
            secrets.push(NamedSecret {
                name: name.clone(),
                value,
            });
        }
        let scanner = Scanner::new(&secrets, &policy)?;
        Ok((scanner.scan_dir(dir)?, policy))
    })();
    match result {
        Ok((found, policy)) => {
            if json {
                println!("{}", report::json(&found));
            } else {
                print!("{}", report::human(&found, &dir.display().to_string()));
            }
            let fails = policy.mode == kiln_protocol::SecretScanMode::Fail;
            if found.findings.is_empty() || !fails {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": {"message": format!("{error:#}")}})
                );
            }
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn detect(
    dir: &std::path::Path,
    format: &str,
    backend: Option<&str>,
    storefront: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if format != "text" && format != "json" {
        bail!("--format {format:?} is invalid; use text or json");
    }
    // The backend as the build plans it: a repository that is a backend alone
    // is described, with "no storefront" said as the fact it is.
    let backend_plan = crate::repo_fs::RepoFs::new(dir)
        .map_err(|error| error.to_string())
        .and_then(|fs| {
            crate::pipeline::plan::plan_backend(&fs, backend.unwrap_or("."))
                .map_err(|error| error.to_string())
        });
    let backend_json = match &backend_plan {
        Ok(plan) => serde_json::json!({
            "app_dir": display_path(&plan.app_dir),
            "package_manager": plan.manager.slug(),
            "install": plan.install.join(" "),
            "install_dir": display_path(&plan.install_dir),
            "build": plan.build.join(" "),
            "node_version": plan.node_requirement.as_ref().map(|r| r.wanted.clone()),
        }),
        Err(error) => serde_json::json!({"error": error}),
    };
    let backend_only = matches!(
        crate::detect::detect(dir, backend, storefront),
        Err(crate::detect::DetectError::NoStorefrontFound)
    ) && storefront.is_none()
        && backend_plan.is_ok();
    if backend_only {
        if format == "json" {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "backend": backend_json,
                    "storefront": null,
                }))?
            );
        } else {
            print_backend(&backend_plan);
            println!(
                "no storefront: this repository is a backend alone, and the build builds it alone"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let result = crate::detect::detect(dir, backend, storefront);
    match (&result, format) {
        (Ok(found), "json") => {
            let mut shown = serde_json::to_value(found)?;
            if let Some(object) = shown.as_object_mut() {
                object.insert("backend".to_owned(), backend_json);
            }
            println!("{}", serde_json::to_string_pretty(&shown)?)
        }
        (Err(error), "json") => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"error": {"code": error.code(), "message": error.to_string()}})
            )?
        ),
        (Ok(found), _) => {
            print_backend(&backend_plan);
            for reason in &found.reasons {
                println!("{reason}");
            }
            for warning in &found.warning_messages {
                println!("warning ({}): {}", warning.code, warning.message);
            }
            println!(
                "=> build `{}` in {} ({}), install `{}` in {}, output {}",
                found.build_command,
                found.build_dir,
                found.exec_command.join(" "),
                found.install_command,
                found.install_dir,
                found.output_dir.as_deref().unwrap_or("unknown")
            );
        }
        (Err(error), _) => eprintln!("error ({}): {error}", error.code()),
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The backend's plan in one line, as the build's system log says it.
fn print_backend(plan: &Result<crate::pipeline::plan::BackendPlan, String>) {
    match plan {
        Ok(plan) => println!(
            "backend in {}: {}, install `{}` in {}, build `{}`",
            display_path(&plan.app_dir),
            plan.manager.slug(),
            plan.install.join(" "),
            display_path(&plan.install_dir),
            plan.build.join(" ")
        ),
        Err(error) => println!("backend: {error}"),
    }
}

/// A path inside the repository; the root is `.`.
fn display_path(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        path.display().to_string()
    }
}

/// The Docker engine's version, if one answers (for the host facts).
async fn docker_version() -> Option<String> {
    let docker = DockerExecutor::connect().await.ok()?;
    docker.server_version().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_flags_parse() {
        let cli = Cli::try_parse_from([
            "kiln-agent",
            "run",
            "--concurrency",
            "3",
            "--memory",
            "2GiB",
            "--labels",
            "a,b",
        ])
        .unwrap();
        let Command::Run { settings } = cli.command else {
            panic!("run")
        };
        assert_eq!(settings.concurrency, Some(3));
        assert_eq!(settings.labels.unwrap().0, ["a", "b"]);
    }
}
