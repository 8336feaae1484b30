//! Steps: one command in one container, in the job's workspace, with the job's
//! environment. `run_steps` runs a component's steps in order and turns any
//! outcome but exit 0 into the failure a person reads, naming the limit that
//! stopped it. Also the one question the pipeline asks the build image itself:
//! its Node version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_protocol::Component;

use super::{fail, seconds, Build, Stop};
use crate::config::{Network, Span};
use crate::executor::{Limits, Step, StepOutcome, WORKSPACE_MOUNT};

/// What a step is for; its name labels the container and the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepKind {
    /// `node --version`, asked of the build image (its output is kept, not logged).
    NodeVersion,
    Install,
    Build,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::NodeVersion => "node-version",
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
}

/// Runs `steps` in order, their output going to `component`'s log stream.
pub(super) async fn run_steps(
    build: &Build<'_>,
    component: Component,
    steps: &[PlannedStep],
) -> Result<(), Stop> {
    let config = &build.pipeline.config;
    let sink = build.logs.sink(component.log_stream());
    let label = match component {
        Component::Backend => "",
        Component::Storefront => "storefront: ",
    };
    for planned in steps {
        let step = build.step(planned);
        let (shown, name) = (planned.command.join(" "), planned.kind.name());
        build
            .system
            .line(format!("Running `{shown}` ({label}{name})."));
        let started = Instant::now();
        let reason = match build
            .pipeline
            .executor
            .run(step, sink.clone(), build.cancel.clone())
            .await
        {
            Ok(StepOutcome::Exited(0)) => {
                build
                    .system
                    .line(format!("`{shown}` finished in {}.", seconds(started)));
                continue;
            }
            Ok(StepOutcome::Exited(code)) => format!("`{shown}` ({name}) exited with code {code}"),
            Ok(StepOutcome::OutOfMemory) => format!(
                "`{shown}` ({name}) ran out of memory (limit {})",
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

/// The build image's Node version, as `node --version` prints it in a container
/// started like any step (no network), for `component`'s checks.
pub(super) async fn image_node_version(
    build: &Build<'_>,
    component: Component,
    dir: &Path,
) -> Result<node_semver::Version, Stop> {
    let step = build.step(&PlannedStep {
        kind: StepKind::NodeVersion,
        command: vec!["node".to_owned(), "--version".to_owned()],
        dir: dir.to_owned(),
        network: Network::None,
    });
    let captured = build
        .pipeline
        .executor
        .capture(step, build.cancel.clone())
        .await;
    let printed = match captured {
        Ok((StepOutcome::Exited(0), output)) => String::from_utf8_lossy(&output).into_owned(),
        Ok((StepOutcome::Canceled, _)) => return Err(Stop::Canceled),
        Ok((outcome, output)) => {
            return Err(fail(
                component,
                format!(
                    "`node --version` failed in the build image {} ({outcome:?}): {}; is node on its PATH?",
                    build.pipeline.config.build_image,
                    String::from_utf8_lossy(&output).trim()
                ),
            ))
        }
        Err(error) => return Err(fail(component, error.to_string())),
    };
    let text = printed.trim().trim_start_matches('v');
    text.parse().map_err(|_| {
        fail(
            component,
            format!(
                "the build image {} printed {:?} for `node --version`, which is not a version",
                build.pipeline.config.build_image,
                printed.trim()
            ),
        )
    })
}

impl Build<'_> {
    /// The container for a planned step: the workspace mounted, the job's
    /// environment, the operator's limits, and whatever time the job has left.
    fn step(&self, planned: &PlannedStep) -> Step {
        let config = &self.pipeline.config;
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
            self.request
                .env
                .iter()
                .map(|var| (var.name.clone(), var.value.clone())),
        );
        let remaining: Duration = self.deadline.saturating_duration_since(Instant::now());
        Step {
            name: planned.kind.name().to_owned(),
            agent_id: self.pipeline.agent_id.clone(),
            job_id: self.request.job_id.clone(),
            image: config.build_image.clone(),
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
