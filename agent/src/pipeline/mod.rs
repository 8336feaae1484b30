//! Turns a job into a finished build: checkout, backend plan, install and build in
//! containers, the `.medusa/server` check, packing, then the storefront (detected,
//! built with its framework's command, its output packed). Reaches Docker only
//! through `Executor`; talks to no control plane (the daemon reports and uploads).
//!
//! Not yet here: the secret scan of `.medusa/server/public` (issue 6).

pub mod artifact;
pub mod checkout;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{Component, ComponentStatus, EnvVar, LogStream};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Network, UidGid};
use crate::detect;
use crate::executor::{Executor, Limits, Step, StepOutcome, WORKSPACE_MOUNT};
use crate::logs::{JobLogs, LogSink};
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
    pub secret_scan: kiln_protocol::SecretScanSettings,
    pub timeout: Duration,
    /// Where component statuses go as they change (the daemon reports them).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<(Component, ComponentStatus)>>,
}

fn report(request: &BuildRequest, component: Component, status: ComponentStatus) {
    if let Some(progress) = &request.progress {
        let _ = progress.send((component, status));
    }
}

/// Exit code of the node-check step when the image's Node is not the one asked for.
const NODE_MISMATCH_EXIT: i64 = 97;

/// Checks, inside the build image, that its Node satisfies the requested version
/// (`.nvmrc` or `engines.node`), judged on majors; on a mismatch it names both.
const NODE_CHECK: &str = r#"
const want = process.argv[1], have = process.versions.node, major = Number(have.split(".")[0]);
const ok = want.startsWith("lts") || want.split("||").some((alt) => alt.trim().split(/\s+/).every((c) => {
  const m = c.match(/^(>=|<=|>|<|\^|~|=|v)?(\d+)/); if (!m) return true;
  const w = Number(m[2]), op = m[1] || "";
  return op === ">=" ? major >= w : op === ">" ? major > w : op === "<=" ? major <= w : op === "<" ? major < w : major === w;
}));
if (!ok) { console.error(`kiln: this storefront asks for Node ${want}, but the build image has Node ${have}; use a build image with that Node, or change .nvmrc / engines.node`); process.exit(97); }
console.log(`kiln: Node ${have} satisfies ${want}`);
"#;

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
        /// Structured detail for the status report (the secret scan's findings).
        detail: Option<serde_json::Value>,
    },
    Canceled,
}

pub struct Pipeline {
    pub executor: Arc<dyn Executor>,
    pub config: Arc<AgentConfig>,
    pub agent_id: String,
}

const DISK_FULL: &str = "the build host's disk is full";

fn failed(reason: impl Into<String>, during_backend: bool) -> BuildOutcome {
    BuildOutcome::Failed {
        reason: reason.into(),
        during_backend,
        detail: None,
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
        let mut outcome = tokio::select! {
            outcome = self.build_inner(request, workspace, logs, cancel, deadline) => outcome,
            _ = tokio::time::sleep_until(deadline.into()) => {
                failed(format!("timed out after {}", crate::config::Span(request.timeout)), true)
            }
        };
        // A clone or a pack that ran out of disk says only "No space left on device";
        // name the disk, and what to do.
        if let BuildOutcome::Failed { reason, .. } = &mut outcome {
            if !reason.contains(DISK_FULL) {
                if let Some(free_bytes) = crate::executor::docker::disk_full(&self.config.work_dir)
                {
                    reason.push_str(&format!("; {}", self.disk_full(free_bytes, "")));
                }
            }
        }
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

    /// What a full disk under `work_dir` means for the operator; `during` names the step.
    fn disk_full(&self, free_bytes: u64, during: &str) -> String {
        format!(
            "{DISK_FULL}{during} ({} free under work_dir {}); free space there or move work_dir to a larger disk",
            crate::config::ByteSize(free_bytes),
            self.config.work_dir.display()
        )
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

        // 3. Install, then build, each in its own container.
        let backend = logs.sink(LogStream::Backend);
        let steps = vec![
            (
                "install",
                plan.install.clone(),
                plan.install_dir.clone(),
                self.config.install_network,
            ),
            (
                "build",
                plan.build.clone(),
                plan.app_dir.clone(),
                self.config.build_network,
            ),
        ];
        if let Some(outcome) = self
            .run_steps(
                request, workspace, steps, &backend, &system, cancel, deadline, "",
            )
            .await
        {
            return outcome;
        }

        // 4. The output Medusa deploys; its public folder is served to the world.
        let server = src.join(&plan.app_dir).join(".medusa/server");
        if !server.is_dir() {
            return failed("medusa build produced no .medusa/server", true);
        }
        if let Some(outcome) = scan_public(request, &server, &system).await {
            return outcome;
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
        let mut artifacts = vec![BuiltArtifact {
            name: "backend.tar.gz".to_owned(),
            packed,
        }];
        report(request, Component::Backend, ComponentStatus::Succeeded);

        // 5. The storefront, with the command its framework needs.
        match self
            .build_storefront(request, workspace, logs, cancel, deadline)
            .await
        {
            Ok(Some(artifact)) => artifacts.push(artifact),
            Ok(None) => {}
            Err(outcome) => return outcome,
        }
        BuildOutcome::Built { artifacts }
    }

    /// Runs steps in order; `Some(outcome)` when one did not succeed.
    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        steps: Vec<(&str, Vec<String>, PathBuf, Network)>,
        sink: &LogSink,
        system: &LogSink,
        cancel: &CancellationToken,
        deadline: Instant,
        label: &str,
    ) -> Option<BuildOutcome> {
        let during_backend = label.is_empty();
        for (name, command, dir, network) in steps {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let step = self.step(
                request,
                workspace,
                name,
                command.clone(),
                &dir,
                network,
                remaining,
            );
            let shown = match name {
                "node-check" => format!(
                    "node version check ({})",
                    command.last().map(String::as_str).unwrap_or("")
                ),
                _ => command.join(" "),
            };
            system.line(format!("Running `{shown}` ({label}{name})."));
            let step_started = Instant::now();
            let reason = match self.executor.run(step, sink.clone(), cancel.clone()).await {
                Ok(StepOutcome::Exited(0)) => {
                    system.line(format!("`{shown}` finished in {}.", seconds(step_started)));
                    continue;
                }
                Ok(StepOutcome::Exited(NODE_MISMATCH_EXIT)) if name == "node-check" => {
                    format!("{label}the build image's Node does not satisfy the requested version; see the {} log", sink.stream())
                }
                Ok(StepOutcome::Exited(code)) => {
                    format!("{label}`{shown}` ({name}) exited with code {code}")
                }
                Ok(StepOutcome::OutOfMemory) => {
                    format!(
                        "{label}`{shown}` ({name}) ran out of memory (limit {})",
                        self.config.memory
                    )
                }
                Ok(StepOutcome::TimedOut(limit)) if limit == self.config.step_timeout => {
                    format!(
                        "{label}timed out after {} (the step limit) during `{shown}`",
                        crate::config::Span(limit)
                    )
                }
                Ok(StepOutcome::TimedOut(_)) => {
                    format!(
                        "{label}timed out after {} during `{shown}`",
                        crate::config::Span(request.timeout)
                    )
                }
                Ok(StepOutcome::ProcessLimit) => {
                    format!(
                        "{label}process limit reached ({}) during `{shown}`",
                        self.config.pids
                    )
                }
                Ok(StepOutcome::WorkspaceLimit) => {
                    format!(
                        "{label}workspace exceeded {} during `{shown}`",
                        self.config.workspace_limit
                    )
                }
                Ok(StepOutcome::HostDiskFull { free_bytes }) => {
                    format!(
                        "{label}{}",
                        self.disk_full(free_bytes, &format!(" during `{shown}`"))
                    )
                }
                Ok(StepOutcome::Canceled) => return Some(BuildOutcome::Canceled),
                Err(error) => format!("{label}{error}"),
            };
            return Some(failed(reason, during_backend));
        }
        None
    }

    /// Detects and builds the storefront; `Ok(None)` when the repository has none.
    async fn build_storefront(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        logs: &JobLogs,
        cancel: &CancellationToken,
        deadline: Instant,
    ) -> Result<Option<BuiltArtifact>, BuildOutcome> {
        let system = logs.sink(LogStream::System);
        let src = workspace.src();
        let found = match detect::detect(
            &src,
            Some(&request.backend_path),
            request.storefront_path.as_deref(),
        ) {
            Ok(found) => found,
            Err(detect::DetectError::NoStorefrontFound) if request.storefront_path.is_none() => {
                system.line("No storefront in this repository; the backend is the whole build.");
                report(request, Component::Storefront, ComponentStatus::Skipped);
                return Ok(None);
            }
            Err(error) => return Err(failed(format!("storefront: {error}"), false)),
        };
        report(request, Component::Storefront, ComponentStatus::Building);
        for reason in &found.reasons {
            system.line(format!("Storefront: {reason}"));
        }
        for warning in &found.warning_messages {
            system.line(format!("Warning ({}): {}", warning.code, warning.message));
        }
        let app_dir = PathBuf::from(&found.app_dir);
        let install_dir = PathBuf::from(&found.install_dir);
        let mut steps = Vec::new();
        if let Some(wanted) = &found.node_version {
            let check = vec![
                "node".to_owned(),
                "-e".to_owned(),
                NODE_CHECK.to_owned(),
                wanted.clone(),
            ];
            steps.push(("node-check", check, app_dir.clone(), Network::None));
        }
        steps.push((
            "install",
            found.install.clone(),
            install_dir,
            self.config.install_network,
        ));
        steps.push((
            "build",
            found.exec_command.clone(),
            app_dir.clone(),
            self.config.build_network,
        ));
        let sink = logs.sink(LogStream::Storefront);
        if let Some(outcome) = self
            .run_steps(
                request,
                workspace,
                steps,
                &sink,
                &system,
                cancel,
                deadline,
                "storefront: ",
            )
            .await
        {
            return Err(outcome);
        }
        let output_name = found
            .output_dir
            .clone()
            .unwrap_or_else(|| "dist".to_owned());
        let output = src.join(&app_dir).join(&output_name);
        if !output.is_dir() {
            return Err(failed(
                format!(
                    "storefront: `{}` produced no {output_name}",
                    found.build_command
                ),
                false,
            ));
        }
        let skip: &[&str] = if found.framework == detect::Framework::Nextjs {
            &["cache"]
        } else {
            &[]
        };
        let out = workspace.artifacts().join("storefront.tar.gz");
        let step_started = Instant::now();
        let packed = tokio::task::spawn_blocking({
            let skip: Vec<String> = skip.iter().map(|s| s.to_string()).collect();
            move || {
                let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
                artifact::pack_except(&output, &out, &skip)
            }
        })
        .await
        .expect("pack task")
        .map_err(|error| {
            failed(
                format!("storefront: cannot package {output_name}: {error}"),
                false,
            )
        })?;
        system.line(format!(
            "Packed the storefront's {output_name}: {} files, {} bytes, sha256 {} in {}.",
            packed.files,
            packed.size,
            packed.sha256,
            seconds(step_started)
        ));
        report(request, Component::Storefront, ComponentStatus::Succeeded);
        Ok(Some(BuiltArtifact {
            name: "storefront.tar.gz".to_owned(),
            packed,
        }))
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
            limits: Limits::from_config(&self.config),
            user: self.config.build_user,
            ca_bundle: self.config.extra_ca_certs.clone(),
            timeout: timeout.min(self.config.step_timeout),
            stop_grace: self.config.cancel_grace,
        }
    }
}

/// Scans `.medusa/server/public` for secrets; `Some(outcome)` when findings fail the
/// build. Findings go to the system log either way.
async fn scan_public(
    request: &BuildRequest,
    server: &Path,
    system: &LogSink,
) -> Option<BuildOutcome> {
    use crate::scan::{report, NamedSecret, ScanPolicy, Scanner};
    let public = server.join("public");
    if !public.is_dir() {
        system.line("No .medusa/server/public in the build output; nothing public to scan.");
        return None;
    }
    let secrets: Vec<NamedSecret> = request
        .env
        .iter()
        .filter(|var| var.secret)
        .map(|var| NamedSecret {
            name: var.name.clone(),
            value: var.value.clone(),
        })
        .collect();
    let policy: ScanPolicy = request.secret_scan.clone();
    let mode = policy.mode;
    let started = Instant::now();
    let scanned = tokio::task::spawn_blocking(move || {
        Scanner::new(&secrets, &policy).and_then(|scanner| scanner.scan_dir(&public))
    })
    .await
    .expect("scan task");
    let found = match scanned {
        Ok(found) => found,
        Err(error) => {
            return Some(failed(
                format!("the secret scan of .medusa/server/public could not run: {error}"),
                true,
            ))
        }
    };
    system.line(format!(
        "Scanned .medusa/server/public for secrets: {} files, {} bytes, {} binary skipped, {} allowed, {} finding(s) in {}.",
        found.files_scanned,
        found.bytes_scanned,
        found.binary_files_skipped,
        found.allowed,
        found.findings.len(),
        seconds(started)
    ));
    if found.findings.is_empty() {
        return None;
    }
    for finding in &found.findings {
        system.line(format!("  {}: {}", finding.path, report::describe(finding)));
    }
    system.line(
        "Everything in .medusa/server/public is served publicly: remove these from the build \
         output and rotate each credential; to accept one on purpose, allowlist its \
         fingerprint in the project's secret_scan settings.",
    );
    if mode == kiln_protocol::SecretScanMode::Warn {
        system.line("Warning: the project's secret_scan mode is `warn`, so the build goes on.");
        return None;
    }
    Some(BuildOutcome::Failed {
        reason: format!(
            "secrets found in .medusa/server/public ({} finding(s), e.g. {} in {})",
            found.findings.len(),
            found.findings[0].rule,
            found.findings[0].path
        ),
        during_backend: true,
        detail: Some(serde_json::json!({ "secret_scan": report::json_value(&found) })),
    })
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
