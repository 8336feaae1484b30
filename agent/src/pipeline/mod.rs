//! Turns a job into a finished build: checkout, backend plan, install and build in
//! containers, the `.medusa/server` check, packing. Reaches Docker only through
//! `Executor`; talks to no control plane (the daemon reports and uploads).
//!
//! Not yet here: the storefront build (issue 5) and the secret scan (issue 6).

pub mod artifact;
pub mod checkout;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{EnvVar, LogStream};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Network, UidGid};
use crate::executor::{Executor, Limits, Step, StepOutcome, WORKSPACE_MOUNT};
use crate::logs::JobLogs;
use artifact::Packed;

/// Where the code to build comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Git {
        url: String,
        commit: String,
        token: Option<String>,
    },
    /// `kiln-agent build DIR`: a copy of a local directory.
    Local(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub job_id: String,
    pub source: Source,
    pub backend_path: String,
    pub storefront_path: Option<String>,
    pub env: Vec<EnvVar>,
    pub timeout: Duration,
}

/// A job's directories: `build/` is the only thing containers see (at `/kiln`),
/// holding `src/` (the checkout) and `home/`; `artifacts/` stays outside their reach.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
}

impl Workspace {
    pub fn new(work_dir: &Path, job_id: &str) -> Workspace {
        Workspace {
            root: work_dir.join(job_id),
        }
    }
    pub fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }
    pub fn src(&self) -> PathBuf {
        self.build_dir().join("src")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }
}

#[derive(Debug, Clone)]
pub struct BuiltArtifact {
    pub name: String,
    pub packed: Packed,
}

#[derive(Debug, Clone)]
pub enum BuildOutcome {
    Built {
        artifacts: Vec<BuiltArtifact>,
    },
    /// `reason` is for a person: what failed and, where we know, what to do.
    Failed {
        reason: String,
        during_backend: bool,
    },
    Canceled,
}

pub struct Pipeline {
    pub executor: Arc<dyn Executor>,
    pub config: Arc<AgentConfig>,
    pub agent_id: String,
}

fn failed(reason: impl Into<String>, during_backend: bool) -> BuildOutcome {
    BuildOutcome::Failed {
        reason: reason.into(),
        during_backend,
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

impl Pipeline {
    #[tracing::instrument(skip_all, fields(job_id = %request.job_id))]
    pub async fn build(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        logs: &JobLogs,
        cancel: &CancellationToken,
    ) -> BuildOutcome {
        let started = Instant::now();
        let system = logs.sink(LogStream::System);
        let deadline = started + request.timeout;
        let outcome = tokio::select! {
            outcome = self.build_inner(request, workspace, logs, cancel, deadline) => outcome,
            _ = tokio::time::sleep_until(deadline.into()) => {
                failed(format!("timed out after {}", crate::config::Span(request.timeout)), true)
            }
        };
        match &outcome {
            BuildOutcome::Built { .. } => {
                system.line(format!("Build succeeded in {}.", seconds(started)))
            }
            BuildOutcome::Failed { reason, .. } => {
                system.line(format!("Build failed after {}: {reason}", seconds(started)))
            }
            BuildOutcome::Canceled => {
                system.line(format!("Build canceled after {}.", seconds(started)))
            }
        }
        outcome
    }

    async fn build_inner(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        logs: &JobLogs,
        cancel: &CancellationToken,
        deadline: Instant,
    ) -> BuildOutcome {
        let system = logs.sink(LogStream::System);
        let src = workspace.src();
        if let Err(error) = prepare_dirs(workspace) {
            return failed(format!("cannot create the workspace {}: {error}; check free space and permissions of work_dir", workspace.root.display()), true);
        }

        // 1. Source.
        let step_started = Instant::now();
        match &request.source {
            Source::Git { url, commit, token } => {
                system.line(format!(
                    "Cloning {} at {commit}.",
                    checkout::redact_url(url)
                ));
                match checkout::checkout(url, commit, token.as_deref(), &src, &system, cancel).await
                {
                    Ok(()) => system.line(format!(
                        "Checked out {} in {}.",
                        &commit[..commit.len().min(12)],
                        seconds(step_started)
                    )),
                    Err(checkout::CheckoutError::Canceled) => return BuildOutcome::Canceled,
                    Err(error) => return failed(error.to_string(), true),
                }
            }
            Source::Local(dir) => {
                system.line(format!("Copying {}.", dir.display()));
                let (from, to) = (dir.clone(), src.clone());
                match tokio::task::spawn_blocking(move || copy_tree(&from, &to))
                    .await
                    .expect("copy task")
                {
                    Ok(files) => system.line(format!(
                        "Copied {files} files in {}.",
                        seconds(step_started)
                    )),
                    Err(error) => {
                        return failed(format!("cannot copy {}: {error}", dir.display()), true)
                    }
                }
            }
        }
        if let Err(error) = hand_over(workspace, self.config.build_user) {
            return failed(
                format!(
                    "cannot give the workspace to uid {}: {error}",
                    self.config.build_user.uid
                ),
                true,
            );
        }

        // 2. Plan.
        let plan = match plan::plan_backend(&src, &request.backend_path) {
            Ok(plan) => plan,
            Err(error) => return failed(error.to_string(), true),
        };
        for warning in &plan.warnings {
            system.line(format!("Warning ({}): {}", warning.code, warning.message));
        }
        system.line(format!(
            "Backend in {}: {} ({}), install `{}` in {}, build `{}`.",
            display_dir(&plan.app_dir),
            plan.manager.slug(),
            if plan.install.contains(&"ci".to_owned())
                || plan
                    .install
                    .iter()
                    .any(|w| w.starts_with("--frozen") || w == "--immutable")
            {
                "frozen lockfile"
            } else {
                "no lockfile"
            },
            plan.install.join(" "),
            display_dir(&plan.install_dir),
            plan.build.join(" "),
        ));
        if let Some(storefront) = &request.storefront_path {
            system.line(format!("Storefront at {storefront}: storefront builds are not supported by this agent version yet; building the backend only."));
        }

        // 3. Install, then build, each in its own container.
        let backend = logs.sink(LogStream::Backend);
        let steps = [
            (
                "install",
                plan.install.clone(),
                &plan.install_dir,
                self.config.install_network,
            ),
            (
                "build",
                plan.build.clone(),
                &plan.app_dir,
                self.config.build_network,
            ),
        ];
        for (name, command, dir, network) in steps {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let step = self.step(
                request,
                workspace,
                name,
                command.clone(),
                dir,
                network,
                remaining,
            );
            system.line(format!("Running `{}` ({name}).", command.join(" ")));
            let step_started = Instant::now();
            let outcome = self
                .executor
                .run(step, backend.clone(), cancel.clone())
                .await;
            match outcome {
                Ok(StepOutcome::Exited(0)) => system.line(format!(
                    "`{}` finished in {}.",
                    command.join(" "),
                    seconds(step_started)
                )),
                Ok(StepOutcome::Exited(code)) => {
                    return failed(
                        format!("`{}` ({name}) exited with code {code}", command.join(" ")),
                        true,
                    )
                }
                Ok(StepOutcome::OutOfMemory) => {
                    return failed(
                        format!(
                            "`{}` ({name}) ran out of memory (limit {})",
                            command.join(" "),
                            self.config.memory
                        ),
                        true,
                    )
                }
                Ok(StepOutcome::TimedOut(_)) => {
                    return failed(
                        format!(
                            "timed out after {} during `{}`",
                            crate::config::Span(request.timeout),
                            command.join(" ")
                        ),
                        true,
                    )
                }
                Ok(StepOutcome::Canceled) => return BuildOutcome::Canceled,
                Err(error) => return failed(error.to_string(), true),
            }
        }

        // 4. The output Medusa deploys.
        let server = src.join(&plan.app_dir).join(".medusa/server");
        if !server.is_dir() {
            return failed("medusa build produced no .medusa/server", true);
        }
        let step_started = Instant::now();
        let out = workspace.artifacts().join("backend.tar.gz");
        let packed = match tokio::task::spawn_blocking(move || artifact::pack(&server, &out))
            .await
            .expect("pack task")
        {
            Ok(packed) => packed,
            Err(error) => return failed(format!("cannot package .medusa/server: {error}"), true),
        };
        system.line(format!(
            "Packed .medusa/server: {} files, {} bytes, sha256 {} in {}.",
            packed.files,
            packed.size,
            packed.sha256,
            seconds(step_started)
        ));
        BuildOutcome::Built {
            artifacts: vec![BuiltArtifact {
                name: "backend.tar.gz".to_owned(),
                packed,
            }],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        name: &str,
        command: Vec<String>,
        dir: &Path,
        network: Network,
        timeout: Duration,
    ) -> Step {
        let mount = Path::new(WORKSPACE_MOUNT);
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), mount.join("home").display().to_string()),
            ("CI".into(), "true".into()),
            (
                "npm_config_cache".into(),
                mount.join("home/.npm").display().to_string(),
            ),
            ("npm_config_update_notifier".into(), "false".into()),
            ("npm_config_fund".into(), "false".into()),
            ("npm_config_audit".into(), "false".into()),
            ("COREPACK_ENABLE_DOWNLOAD_PROMPT".into(), "0".into()),
            ("MEDUSA_DISABLE_TELEMETRY".into(), "true".into()),
            ("NEXT_TELEMETRY_DISABLED".into(), "1".into()),
        ];
        env.extend(
            request
                .env
                .iter()
                .map(|var| (var.name.clone(), var.value.clone())),
        );
        Step {
            name: name.to_owned(),
            agent_id: self.agent_id.clone(),
            job_id: request.job_id.clone(),
            image: self.config.build_image.clone(),
            command,
            working_dir: mount.join("src").join(dir).display().to_string(),
            workspace: workspace.build_dir(),
            env,
            network,
            limits: Limits {
                memory_bytes: self.config.memory.0,
                cpus: self.config.cpus,
                pids: self.config.pids,
            },
            user: self.config.build_user,
            ca_bundle: self.config.extra_ca_certs.clone(),
            timeout,
            stop_grace: self.config.cancel_grace,
        }
    }
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        dir.display().to_string()
    }
}

fn prepare_dirs(workspace: &Workspace) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&workspace.root)?;
    std::fs::create_dir_all(workspace.build_dir().join("home"))?;
    std::fs::create_dir_all(workspace.artifacts())?;
    Ok(())
}

/// When the agent runs as root, builds run as `build_user`: the tree they write
/// must be theirs. `artifacts/` stays the agent's.
fn hand_over(workspace: &Workspace, user: UidGid) -> std::io::Result<()> {
    let me = nix::unistd::getuid().as_raw();
    if me == user.uid {
        return Ok(());
    }
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    );
    for entry in walkdir::WalkDir::new(workspace.build_dir()).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            entry.path(),
            uid,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Copies a local project, leaving out what a build recreates.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    const SKIP: &[&str] = &["node_modules", ".git", ".medusa", ".next"];
    let mut files = 0;
    let walker = walkdir::WalkDir::new(from)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !SKIP.iter().any(|skip| entry.file_name() == *skip)
        });
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let dest = to.join(
            entry
                .path()
                .strip_prefix(from)
                .expect("walk stays under root"),
        );
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
            files += 1;
        }
    }
    Ok(files)
}
