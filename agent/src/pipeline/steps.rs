//! Steps: one command in one container, in the job's workspace, with the job's
//! environment. `run_steps` runs a component's steps in order and turns any
//! outcome but exit 0 into the failure a person reads, naming the limit that
//! stopped it. Also the one question the pipeline asks the build image itself:
//! its Node version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_protocol::Component;

use super::diagnose::{diagnose, Diagnosis, StepContext};
use super::{fail, seconds, Build, Stop};
use crate::config::{Network, Span};
use crate::executor::{Limits, Step, StepOutcome, WORKSPACE_MOUNT};
use crate::package_manager::{Provision, PROVISION_HASH_MISMATCH};

/// What a step is for; its name labels the container and the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepKind {
    /// `node --version`, asked of the build image (its output is kept, not logged).
    NodeVersion,
    /// Provides the project's package manager release (`Provision`).
    PackageManager,
    Install,
    Build,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::NodeVersion => "node-version",
            StepKind::PackageManager => "package-manager",
            StepKind::Install => "install",
            StepKind::Build => "build",
        }
    }
}

/// A command the pipeline has decided to run, before it becomes a container.
#[derive(Debug, Clone)]
pub(super) struct PlannedStep {
    pub kind: StepKind,
    pub command: Vec<String>,
    /// Working directory, relative to the checkout.
    pub dir: PathBuf,
    pub network: Network,
    /// A directory to put first on `PATH` (the provisioned package manager's).
    pub bin_dir: Option<String>,
    /// What the log calls it, where not the command itself (a long script).
    pub shown: Option<String>,
    /// Variables for this step alone, after the project's.
    pub env: Vec<(String, String)>,
}

/// `PATH` in build containers: the official node image's and ours.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl PlannedStep {
    /// A step of `kind` running `command` in `dir` on `network`, under its own
    /// command's name, with the job's variables alone.
    pub(super) fn new(
        kind: StepKind,
        command: Vec<String>,
        dir: PathBuf,
        network: Network,
    ) -> Self {
        PlannedStep {
            kind,
            command,
            dir,
            network,
            bin_dir: None,
            shown: None,
            env: Vec::new(),
        }
    }

    /// The provisioning step (unless the release is `provided` already, from the
    /// build cache), install and build for a package manager `provision`, with
    /// its release first on `PATH` for all three.
    pub(super) fn with_manager(
        provision: Option<&Provision>,
        provided: bool,
        install: Option<PlannedStep>,
        build: PlannedStep,
    ) -> Vec<PlannedStep> {
        let Some(provision) = provision else {
            return install.into_iter().chain([build]).collect();
        };
        let bin_dir = Some(provision.bin_dir());
        let provisioning = PlannedStep {
            kind: StepKind::PackageManager,
            command: provision.command(),
            dir: PathBuf::new(),
            network: install
                .as_ref()
                .map_or(build.network, |install| install.network),
            bin_dir: bin_dir.clone(),
            shown: Some(format!("provide {}", provision.label())),
            env: Vec::new(),
        };
        let install = install.map(|install| PlannedStep {
            bin_dir: bin_dir.clone(),
            ..install
        });
        (!provided)
            .then_some(provisioning)
            .into_iter()
            .chain(install)
            .chain([PlannedStep { bin_dir, ..build }])
            .collect()
    }

    /// The command as the log shows it.
    fn shown(&self) -> String {
        self.shown.clone().unwrap_or_else(|| self.command.join(" "))
    }
}

/// A step's label in the system log: its name, with the storefront's prefixed.
pub(super) fn step_label(component: Component, name: &str) -> String {
    match component {
        Component::Backend => name.to_owned(),
        Component::Storefront => format!("storefront: {name}"),
    }
}

/// Runs `steps` in order, their output going to `component`'s log stream.
pub(super) async fn run_steps(
    build: &Build<'_>,
    component: Component,
    steps: &[PlannedStep],
) -> Result<(), Stop> {
    let config = &build.pipeline.config;
    let sink = build.logs.sink(component.log_stream());
    for planned in steps {
        let step = build.step(planned, component);
        let (shown, name) = (planned.shown(), planned.kind.name());
        let label = step_label(component, name);
        build
            .system
            .line(kiln_protocol::step_started_line(&shown, &label));
        build.record.step(component, name, &shown);
        // The step's first output gets a time mark of its own, so the outline
        // can tell exactly where in the stream it began.
        sink.mark_next_write();
        let started = Instant::now();
        let printed_from = sink.len();
        let reason = match build
            .pipeline
            .executor
            .run(step, sink.clone(), build.cancel.clone())
            .await
        {
            Ok(StepOutcome::Exited(0)) => {
                build.system.line(kiln_protocol::step_finished_line(
                    &shown,
                    &label,
                    &seconds(started),
                ));
                continue;
            }
            Ok(StepOutcome::Exited(PROVISION_HASH_MISMATCH))
                if planned.kind == StepKind::PackageManager =>
            {
                format!("`{shown}` ({name}): the release npm fetched does not match the hash in package.json's packageManager; correct the hash (or the version) there")
            }
            Ok(StepOutcome::Exited(code)) => {
                let output = sink.tail_since(printed_from, 64 << 10);
                let context = build.step_context(planned, component);
                let exited = format!("`{shown}` ({name}) exited with code {code}");
                match diagnose(&String::from_utf8_lossy(&output), &context) {
                    // The fix first: a commit status shows the first 140 characters.
                    Some(Diagnosis {
                        fix,
                        line: Some(line),
                    }) => format!("{fix} ({exited}; the log says: {line})"),
                    Some(Diagnosis { fix, line: None }) => format!("{fix} ({exited})"),
                    // SIGKILL from inside: the memory limit, most often.
                    None if code == 137 => format!(
                        "{exited}, killed (SIGKILL), most often by the memory limit ({}); raise the agent's `memory` setting (KILN_MEMORY) or make the build use less",
                        config.memory
                    ),
                    None => exited,
                }
            }
            Ok(StepOutcome::OutOfMemory) => format!(
                "`{shown}` ({name}) ran out of memory (limit {}); raise the agent's `memory` setting (KILN_MEMORY) or make the build use less",
                config.memory
            ),
            Ok(StepOutcome::TimedOut(limit)) if limit == config.step_timeout => format!(
                "timed out after {} (the step limit) during `{shown}`",
                Span(limit)
            ),
            Ok(StepOutcome::TimedOut(_)) => format!(
                "timed out after {} during `{shown}`",
                Span(build.request.timeout)
            ),
            Ok(StepOutcome::ProcessLimit) => {
                format!("process limit reached ({}) during `{shown}`", config.pids)
            }
            Ok(StepOutcome::WorkspaceLimit) => format!(
                "workspace exceeded {} during `{shown}`",
                config.workspace_limit
            ),
            Ok(StepOutcome::HostDiskFull { free_bytes }) => build
                .pipeline
                .disk_full(free_bytes, &format!(" during `{shown}`")),
            Ok(StepOutcome::Canceled) => return Err(Stop::Canceled),
            Err(error) => error.to_string(),
        };
        return Err(fail(component, reason));
    }
    Ok(())
}

impl Build<'_> {
    /// What a failed step's diagnosis knows besides its output.
    fn step_context<'s>(&'s self, planned: &PlannedStep, component: Component) -> StepContext<'s> {
        // A provided release's binaries are at `<PROVISION_ROOT>/<name@version>/…`.
        let release = planned
            .bin_dir
            .as_deref()
            .and_then(|dir| dir.strip_prefix(crate::package_manager::PROVISION_ROOT))
            .and_then(|rest| rest.trim_start_matches('/').split('/').next())
            .map(str::to_owned);
        StepContext {
            network: planned.network,
            release,
            node: self.node_version(component),
            variables: self
                .request
                .env
                .iter()
                .map(|var| var.name.as_str())
                .collect(),
            memory: self.pipeline.config.memory.to_string(),
        }
    }

    /// The container for a planned step: the workspace mounted, the job's
    /// environment, the operator's limits, and whatever time the job has left.
    pub(super) fn step(&self, planned: &PlannedStep, component: Component) -> Step {
        let config = &self.pipeline.config;
        let mount = Path::new(WORKSPACE_MOUNT);
        let path = match &planned.bin_dir {
            Some(bin_dir) => format!("{bin_dir}:{PATH}"),
            None => PATH.to_owned(),
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
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
            self.request
                .env
                .iter()
                .map(|var| (var.name.clone(), var.value.clone())),
        );
        env.extend(planned.env.iter().cloned());
        let remaining: Duration = self.deadline.saturating_duration_since(Instant::now());
        // The components build side by side: their containers' names differ.
        let name = match component {
            Component::Backend => planned.kind.name().to_owned(),
            Component::Storefront => format!("storefront-{}", planned.kind.name()),
        };
        Step {
            name,
            agent_id: self.pipeline.agent_id.clone(),
            job_id: self.request.job_id.clone(),
            image: self.node_image(component).to_owned(),
            command: planned.command.clone(),
            working_dir: mount.join("src").join(&planned.dir).display().to_string(),
            workspace: self.workspace.build_dir(),
            env,
            network: planned.network,
            limits: Limits::from_config(config),
            user: config.build_user,
            ca_bundle: config.extra_ca_certs.clone(),
            timeout: remaining.min(config.step_timeout),
            stop_grace: config.cancel_grace,
        }
    }
}
