//! `Executor` on a Docker engine through bollard: the only module that imports it.
//!
//! The API version is negotiated down to the daemon's (Debian's engine speaks 1.41).
//! The image is never pulled: a build host provides it, and a missing one is an error
//! that says how to get it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{
    ExecError, Executor, ImageFacts, Leftover, Step, StepOutcome, CAPTURE_LIMIT, CA_BUNDLE_MOUNT,
    LABEL_AGENT, LABEL_JOB, LABEL_STEP, WORKSPACE_MOUNT,
};
use crate::logs::LogSink;

#[derive(Debug, Clone)]
pub struct DockerExecutor {
    pub(super) docker: Docker,
}

pub(super) fn docker_error(action: &'static str, error: BollardError) -> ExecError {
    crate::metrics::metrics().docker_failed(&format!("{action}: {error}"));
    match error {
        BollardError::DockerResponseServerError { message, .. } => ExecError::Docker {
            action,
            reason: message,
        },
        BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError => ExecError::Unreachable {
            reason: format!("{action}: {error}"),
        },
        other => ExecError::Docker {
            action,
            reason: other.to_string(),
        },
    }
}

pub(super) fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Open files for build containers: as configured, but never above what the agent
/// itself may raise to (runc refuses that).
fn open_files_limit(wanted: i64) -> i64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(4096);
    (hard.min(i64::MAX as u64) as i64).min(wanted)
}

/// Exit status of a process killed by SIGXFSZ: it wrote a file past `fsize`.
const EXIT_FILE_TOO_LARGE: i64 = 128 + 25;

/// Where the engine keeps a running container's pids cgroup (v1 or v2, cgroupfs or
/// systemd driver); its `pids.events` counts forks refused at the limit. `None` on
/// a layout not known here, where the pids limit still holds but is not named.
fn pids_events_path(id: &str) -> Option<String> {
    [
        format!("/sys/fs/cgroup/pids/docker/{id}/pids.events"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/pids.events"),
        format!("/sys/fs/cgroup/docker/{id}/pids.events"),
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
}

/// Whether the container has been refused a fork by its pids limit.
fn hit_process_limit(pids_events: &str) -> bool {
    std::fs::read_to_string(pids_events).is_ok_and(|events| {
        events
            .lines()
            .filter_map(|line| line.strip_prefix("max "))
            .any(|count| count.trim().parse::<u64>().is_ok_and(|n| n > 0))
    })
}

/// Watches a running step's limits that Docker does not enforce by stopping it: the
/// pids limit (Docker only refuses forks) and the workspace's disk use. Returns when
/// one is exceeded. The disk walk runs at most every 10× its own duration, so it
/// costs a build under 10% of one core even on a large node_modules.
async fn watch_limits(pids_events: Option<String>, step: &Step) -> StepOutcome {
    let mut disk_every = Duration::from_secs(1);
    let mut disk_due = tokio::time::Instant::now() + disk_every;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if pids_events.as_deref().is_some_and(hit_process_limit) {
            return StepOutcome::ProcessLimit;
        }
        if tokio::time::Instant::now() >= disk_due {
            let workspace = step.workspace.clone();
            let started = std::time::Instant::now();
            let used = tokio::task::spawn_blocking(move || crate::disk::usage(&workspace))
                .await
                .unwrap_or(0);
            if used > step.limits.workspace_bytes {
                return StepOutcome::WorkspaceLimit;
            }
            disk_every = (started.elapsed() * 10).max(Duration::from_secs(1));
            disk_due = tokio::time::Instant::now() + disk_every;
        }
    }
}

/// The most output written to a log at once when the agent is behind.
const OUTPUT_BATCH: usize = 1 << 20;

/// Where a container's output goes: a job's log, or memory (bounded) for the facts
/// the pipeline asks the image.
enum Output {
    Log(LogSink),
    Memory(Arc<Mutex<Vec<u8>>>),
}

impl Output {
    fn write(&self, bytes: &[u8]) {
        match self {
            Output::Log(sink) => sink.write(bytes),
            Output::Memory(buffer) => {
                let mut buffer = crate::lock(buffer);
                let room = CAPTURE_LIMIT.saturating_sub(buffer.len());
                buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
    }

    fn flush(&self) {
        if let Output::Log(sink) = self {
            sink.flush();
        }
    }
}

impl DockerExecutor {
    /// Runs a step's container and removes it on every path.
    async fn run_removing(
        &self,
        step: &Step,
        output: Output,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecError> {
        let name = format!("kiln-{}-{}", step.job_id, step.name);
        // A container of the same name is a leftover of this very job (a retry).
        let _ = self.remove(&name).await;
        let result = self.run_container(&name, step, output, cancel).await;
        if let Err(error) = self.remove(&name).await {
            tracing::warn!(message = "Could not remove a build container.", container = %name, %error);
        }
        result
    }

    /// Connects to the local engine (DOCKER_HOST or the default socket) and
    /// negotiates the API version.
    pub async fn connect() -> Result<Self, ExecError> {
        let at = std::env::var(crate::env_vars::DOCKER_HOST)
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |e: BollardError| ExecError::Unreachable {
            reason: format!("{e} (at {at})"),
        };
        let docker = Docker::connect_with_local_defaults()
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        Ok(Self { docker })
    }

    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    pub async fn server_version(&self) -> Result<String, ExecError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| docker_error("read its version", e))?;
        Ok(format!(
            "Docker {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    /// Every container, running or not, with `label` (`key=value`).
    pub(super) async fn labelled(
        &self,
        label: &str,
        action: &'static str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, ExecError> {
        let filters = HashMap::from([("label", vec![label.to_owned()])]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| docker_error(action, e))
    }

    pub async fn has_image(&self, image: &str) -> Result<bool, ExecError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(docker_error("inspect the build image", error)),
        }
    }

    fn container_body(step: &Step) -> ContainerCreateBody {
        let mut binds = vec![format!("{}:{WORKSPACE_MOUNT}:rw", step.workspace.display())];
        let mut env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(ca) = &step.ca_bundle {
            binds.push(format!("{}:{CA_BUNDLE_MOUNT}:ro", ca.display()));
            // Node adds it to its roots; npm and yarn berry use it for the registry.
            env.push(format!("NODE_EXTRA_CA_CERTS={CA_BUNDLE_MOUNT}"));
            env.push(format!("npm_config_cafile={CA_BUNDLE_MOUNT}"));
            env.push(format!("YARN_HTTPS_CA_FILE_PATH={CA_BUNDLE_MOUNT}"));
        }
        let labels = HashMap::from([
            (LABEL_AGENT.to_owned(), step.agent_id.clone()),
            (LABEL_JOB.to_owned(), step.job_id.clone()),
            (LABEL_STEP.to_owned(), step.name.clone()),
        ]);
        let memory = step.limits.memory_bytes as i64;
        ContainerCreateBody {
            image: Some(step.image.clone()),
            cmd: Some(step.command.clone()),
            env: Some(env),
            working_dir: Some(step.working_dir.clone()),
            user: Some(format!("{}:{}", step.user.uid, step.user.gid)),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(step.network.docker_mode().to_owned()),
                memory: Some(memory),
                // Swap equal to memory: no swap beyond the limit.
                memory_swap: Some(memory),
                nano_cpus: Some((step.limits.cpus * 1e9) as i64),
                pids_limit: Some(step.limits.pids),
                ulimits: Some(vec![
                    ResourcesUlimits {
                        name: Some("nofile".to_owned()),
                        soft: Some(open_files_limit(step.limits.open_files)),
                        hard: Some(open_files_limit(step.limits.open_files)),
                    },
                    // No single file past the workspace cap, even between disk checks.
                    ResourcesUlimits {
                        name: Some("fsize".to_owned()),
                        soft: Some(step.limits.workspace_bytes as i64),
                        hard: Some(step.limits.workspace_bytes as i64),
                    },
                ]),
                // The agent records the output from the attach stream. A second copy in
                // the engine's json-file log costs the build a third of its speed when
                // it floods, and fills /var/lib/docker past any cap of ours.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                // tini as PID 1 forwards SIGTERM and reaps zombies.
                init: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_owned(),
                    "rw,nosuid,nodev,exec,size=1g".to_owned(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run_container(
        &self,
        name: &str,
        step: &Step,
        output: Output,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecError> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                Self::container_body(step),
            )
            .await;
        if let Err(error) = &created {
            if is_not_found(error) {
                return Err(ExecError::ImageMissing {
                    image: step.image.clone(),
                });
            }
        }
        let id = created
            .map_err(|e| docker_error("create the build container", e))?
            .id;
        crate::metrics::metrics().docker_answered();
        // Attached before start, so the stream has every byte from the first; there is
        // no stored log to replay (`logs` would fail on the `none` driver).
        let attached = self
            .docker
            .attach_container(
                &id,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stream(true)
                        .stdout(true)
                        .stderr(true)
                        .logs(false)
                        .build(),
                ),
            )
            .await
            .map_err(|e| docker_error("attach to the build container", e))?;
        let sink = output;
        let pump = tokio::spawn(async move {
            let mut stream = attached.output;
            let mut batch = Vec::new();
            let mut broken = false;
            while let Some(frame) = stream.next().await {
                // A frame is one write of the build; when the agent falls behind,
                // the frames already here go to the log in one write, so a
                // flooding build costs the agent per batch, not per line. A frame
                // arriving alone is written at once, uncopied.
                let mut alone: Option<bytes::Bytes> = None;
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    match frame {
                        Ok(
                            LogOutput::StdOut { message }
                            | LogOutput::StdErr { message }
                            | LogOutput::Console { message },
                        ) => match alone.take() {
                            None if batch.is_empty() => alone = Some(message),
                            first => {
                                batch.extend_from_slice(&first.unwrap_or_default());
                                batch.extend_from_slice(&message);
                            }
                        },
                        Ok(LogOutput::StdIn { .. }) => {}
                        Err(error) => {
                            tracing::warn!(message = "Container output stream broke off.", %error);
                            broken = true;
                            break;
                        }
                    }
                    let held = batch.len() + alone.as_ref().map_or(0, |message| message.len());
                    if held < OUTPUT_BATCH {
                        next = stream.next().now_or_never().flatten();
                    }
                }
                match alone {
                    Some(message) => sink.write(&message),
                    None => {
                        sink.write(&batch);
                        batch.clear();
                    }
                }
                if broken {
                    break;
                }
            }
            sink.flush();
        });
        self.docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(|e| docker_error("start the build container", e))?;
        // Found once, now that the container (and so its cgroup) exists.
        let pids_events = pids_events_path(&id);

        let mut wait = self
            .docker
            .wait_container(&id, None::<WaitContainerOptions>);
        let stopped_because = tokio::select! {
            // A non-zero exit arrives as an error; the exit code is read below.
            _ = wait.next() => None,
            _ = cancel.cancelled() => Some(StepOutcome::Canceled),
            _ = tokio::time::sleep(step.timeout) => Some(StepOutcome::TimedOut(step.timeout)),
            outcome = watch_limits(pids_events.clone(), step) => Some(outcome),
        };
        if stopped_because.is_some() {
            let grace = step.stop_grace.as_secs().min(i32::MAX as u64) as i32;
            if let Err(error) = self
                .docker
                .stop_container(
                    &id,
                    Some(StopContainerOptionsBuilder::new().t(grace).build()),
                )
                .await
            {
                tracing::warn!(message = "Stopping the container failed; it will be force-removed.", %error);
            }
        }
        // The attach stream ends when the container does; bounded in case it doesn't.
        let _ = tokio::time::timeout(Duration::from_secs(10), pump).await;
        if let Some(outcome) = stopped_because {
            return Ok(outcome);
        }
        let inspected = self
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| docker_error("inspect the finished container", e))?;
        let state = inspected.state.unwrap_or_default();
        if state.oom_killed == Some(true) {
            return Ok(StepOutcome::OutOfMemory);
        }
        let code = state.exit_code.unwrap_or(-1);
        if code != 0 {
            // A step that died of a limit between two checks still names the limit.
            if pids_events.as_deref().is_some_and(hit_process_limit) {
                return Ok(StepOutcome::ProcessLimit);
            }
            let workspace = step.workspace.clone();
            let used = tokio::task::spawn_blocking(move || crate::disk::usage(&workspace))
                .await
                .unwrap_or(0);
            if code == EXIT_FILE_TOO_LARGE || used >= step.limits.workspace_bytes {
                return Ok(StepOutcome::WorkspaceLimit);
            }
            if let Some(full) = crate::disk::full(&step.workspace) {
                return Ok(StepOutcome::HostDiskFull {
                    free_bytes: full.free_bytes,
                });
            }
        }
        Ok(StepOutcome::Exited(code))
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn run(
        &self,
        step: Step,
        output: LogSink,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, ExecError> {
        self.run_removing(&step, Output::Log(output), &cancel).await
    }

    async fn capture(
        &self,
        step: Step,
        cancel: CancellationToken,
    ) -> Result<(StepOutcome, Vec<u8>), ExecError> {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let outcome = self
            .run_removing(&step, Output::Memory(captured.clone()), &cancel)
            .await?;
        let bytes = std::mem::take(&mut *crate::lock(&captured));
        Ok((outcome, bytes))
    }

    async fn engine_version(&self) -> Result<String, ExecError> {
        self.server_version().await
    }

    async fn inspect_image(&self, image: &str) -> Result<ImageFacts, ExecError> {
        let inspected = match self.docker.inspect_image(image).await {
            Ok(inspected) => inspected,
            Err(error) if is_not_found(&error) => {
                return Err(ExecError::ImageMissing {
                    image: image.to_owned(),
                })
            }
            Err(error) => return Err(docker_error("inspect the build image", error)),
        };
        // Node's official images and build-local.sh's say their Node here.
        let node_version = inspected
            .config
            .and_then(|config| config.env)
            .into_iter()
            .flatten()
            .find_map(|var| var.strip_prefix("NODE_VERSION=").map(str::to_owned));
        Ok(ImageFacts {
            id: inspected.id.unwrap_or_else(|| image.to_owned()),
            node_version,
        })
    }

    async fn leftovers(&self, agent_id: &str) -> Result<Vec<Leftover>, ExecError> {
        let containers = self
            .labelled(&format!("{LABEL_AGENT}={agent_id}"), "list containers")
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                Some(Leftover {
                    job_id: container
                        .labels
                        .as_ref()
                        .and_then(|labels| labels.get(LABEL_JOB).cloned()),
                    container_id: container.id?,
                })
            })
            .collect())
    }

    async fn assemble_image(&self, assembly: &super::ImageAssembly) -> Result<String, ExecError> {
        self.assemble(assembly).await
    }

    async fn image_exists(&self, image: &str) -> Result<bool, ExecError> {
        self.has_image(image).await
    }

    async fn save_image(
        &self,
        image: &str,
        out: &std::path::Path,
    ) -> Result<(u64, String), ExecError> {
        DockerExecutor::save_image(self, image, out).await
    }

    async fn untag_image(&self, image: &str) -> Result<(), ExecError> {
        DockerExecutor::untag_image(self, image).await
    }

    async fn push_image(&self, image: &str, reference: &str) -> Result<(), ExecError> {
        self.tag_image(image, reference).await?;
        let pushed = self.push(reference).await;
        let _ = DockerExecutor::untag_image(self, reference).await;
        pushed
    }

    async fn remove(&self, container_id: &str) -> Result<(), ExecError> {
        match self
            .docker
            .remove_container(
                container_id,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(docker_error("remove a container", error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Network, UidGid};
    use crate::executor::Limits;

    #[test]
    fn build_containers_are_sandboxed_and_leave_no_engine_log() {
        let step = Step {
            name: "build".to_owned(),
            agent_id: "agent".to_owned(),
            job_id: "job".to_owned(),
            image: "kiln/node:local".to_owned(),
            command: vec!["npm".to_owned(), "run".to_owned(), "build".to_owned()],
            working_dir: WORKSPACE_MOUNT.to_owned(),
            workspace: "/var/lib/kiln/jobs/job".into(),
            env: Vec::new(),
            network: Network::None,
            limits: Limits {
                memory_bytes: 1 << 30,
                cpus: 1.0,
                pids: 256,
                open_files: 1024,
                workspace_bytes: 1 << 30,
            },
            user: UidGid {
                uid: 10000,
                gid: 10000,
            },
            ca_bundle: None,
            timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
        };
        let host = DockerExecutor::container_body(&step).host_config.unwrap();
        assert_eq!(host.log_config.unwrap().typ.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(
            host.binds,
            Some(vec![format!("/var/lib/kiln/jobs/job:{WORKSPACE_MOUNT}:rw")])
        );
    }
}
