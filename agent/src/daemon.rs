//! The `run` loop: claim jobs by long-poll, build them side by side (up to
//! `concurrency`), watch each for cancellation, report, upload, clean up; and on
//! start, clean up after a previous run that died.
//!
//! Shutdown: the first signal stops claiming and gives running builds
//! `shutdown_grace`; then (or at a second signal) they are canceled and reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_protocol::{
    ArtifactDescriptor, Component, ComponentStatus, DeploymentStatus, Job, JobDirective,
    JobStatusUpdate, LogStream,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::client::{retry_transient, Client, ClientError, GaveUp};
use crate::config::AgentConfig;
use crate::executor::{ExecError, Executor};
use crate::logs::{JobLogs, LogOptions};
use crate::pipeline::{BuildOutcome, BuildRequest, BuiltArtifact, Pipeline, Source, Workspace};
use crate::state::{SpooledJob, StateDir};

const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// Short next to the lease (60 s by default), so a watch lost to a network drop is
/// renewed well before the lease runs out.
const WATCH_WAIT: Duration = Duration::from_secs(15);
/// How long uploads and status reports keep retrying while the control plane is
/// away (restarting, unreachable) before the job gives up on them.
const RETRY_LIMIT: Duration = Duration::from_secs(600);
/// How long a finished job waits for its logs to reach a control plane that is away;
/// after that the spool stays on disk and is delivered by the next start.
const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How often workspaces and containers of jobs no longer running are swept up (also
/// once at start, after recovery).
const SWEEP_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Unauthorized(ClientError),
    #[error(transparent)]
    Docker(#[from] ExecError),
}

pub struct Daemon {
    pub client: Client,
    pub pipeline: Arc<Pipeline>,
    pub executor: Arc<dyn Executor>,
    pub config: Arc<AgentConfig>,
    pub state: StateDir,
    pub agent_id: String,
}

/// Builds currently running, by environment: a newer job for the same environment
/// cancels the older one at once, even before the control plane says so.
type Running = Arc<Mutex<HashMap<String, (String, CancellationToken)>>>;

/// Jobs whose task is alive (also a canceled one still winding down).
type InFlight = Arc<Mutex<std::collections::HashSet<String>>>;

impl Daemon {
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(), DaemonError> {
        self.recover().await;
        let builds = CancellationToken::new();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let running: Running = Arc::default();
        let in_flight: InFlight = Arc::default();
        let sweeper = {
            let (daemon, in_flight, stop) = (self.clone(), in_flight.clone(), shutdown.clone());
            tokio::spawn(async move {
                // `recover` has just removed every container of ours.
                let mut containers_too = false;
                loop {
                    daemon.sweep(&in_flight, containers_too).await;
                    containers_too = true;
                    tokio::select! {
                        _ = tokio::time::sleep(SWEEP_EVERY) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            })
        };
        crate::metrics::metrics().set_capacity(self.config.concurrency);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        info!(message = "Agent running.", agent_id = %self.agent_id, concurrency = self.config.concurrency, control_plane = %self.client.base_url());
        let fatal = loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break None,
            };
            crate::metrics::metrics().loop_turned();
            let claimed = tokio::select! {
                claimed = self.client.claim(CLAIM_WAIT) => claimed,
                _ = shutdown.cancelled() => break None,
            };
            crate::metrics::metrics().loop_turned();
            match claimed {
                Ok(Some(job)) => {
                    backoff.reset();
                    let token = builds.child_token();
                    if let Some((older, previous)) =
                        running.lock().unwrap_or_else(|p| p.into_inner()).insert(
                            job.environment_id.clone(),
                            (job.job_id.clone(), token.clone()),
                        )
                    {
                        info!(message = "A newer job for the same environment cancels the older build.", older_job = %older, job_id = %job.job_id);
                        previous.cancel();
                    }
                    let daemon = self.clone();
                    let running = running.clone();
                    let claimed_at = std::time::Instant::now();
                    let in_flight = in_flight.clone();
                    in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job.job_id.clone());
                    let span = tracing::info_span!("job", job_id = %job.job_id, deployment_id = %job.deployment_id, commit = %job.commit_sha);
                    tracker.spawn(
                        async move {
                            daemon.run_job(&job, token, claimed_at).await;
                            in_flight
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&job.job_id);
                            let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                            if running
                                .get(&job.environment_id)
                                .is_some_and(|(id, _)| *id == job.job_id)
                            {
                                running.remove(&job.environment_id);
                            }
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => backoff.reset(),
                Err(error @ ClientError::Unauthorized { .. }) => {
                    break Some(DaemonError::Unauthorized(error))
                }
                Err(ClientError::Malformed {
                    what,
                    reason,
                    job_id: Some(job_id),
                }) => {
                    warn!(message = "Claimed a malformed job; failing it.", %job_id, %reason);
                    let update = failed_update(format!("the agent could not read this job ({what}: {reason}); upgrade the agent or fix the control plane"));
                    let _ = self.client.report(&job_id, &update).await;
                }
                Err(error) => {
                    let pause = backoff.next_delay();
                    warn!(message = "Claim failed; backing off.", %error, retry_in_ms = pause.as_millis() as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => break None,
                    }
                }
            }
        };
        sweeper.abort();
        tracker.close();
        if !tracker.is_empty() {
            info!(
                message = "Waiting for running builds to finish.",
                builds = tracker.len(),
                grace_s = self.config.shutdown_grace.as_secs()
            );
        }
        let cancel_now = fatal.is_some();
        tokio::select! {
            _ = tracker.wait() => {}
            _ = tokio::time::sleep(if cancel_now { Duration::ZERO } else { self.config.shutdown_grace }) => {
                info!(message = "Canceling running builds.");
                builds.cancel();
                tracker.wait().await;
            }
            _ = abort.cancelled() => {
                info!(message = "Second signal: canceling running builds now.");
                builds.cancel();
                tracker.wait().await;
            }
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Removes containers, workspaces and spools a previous run left, delivering the
    /// spooled logs first and telling the control plane those jobs were lost.
    async fn recover(&self) {
        let mut lost: Vec<String> = Vec::new();
        match self.executor.leftovers(&self.agent_id).await {
            Ok(leftovers) => {
                for leftover in leftovers {
                    info!(message = "Removing a container a previous run left.", container_id = %leftover.container_id, job_id = ?leftover.job_id);
                    if let Err(error) = self.executor.remove(&leftover.container_id).await {
                        warn!(message = "Could not remove a leftover container.", %error);
                    }
                    lost.extend(leftover.job_id);
                }
            }
            Err(error) => warn!(message = "Cannot list leftover containers.", %error),
        }
        let spooled = self.state.spooled_jobs();
        lost.extend(spooled.iter().map(|job| job.job_id.clone()));
        lost.sort();
        lost.dedup();
        for job_id in lost {
            let spool = self.state.spool_dir(&job_id);
            let mut delivered = true;
            if spool.is_dir() {
                if let Ok(logs) = JobLogs::open(&spool, &LogOptions::default()) {
                    logs.sink(LogStream::System)
                        .line("The agent restarted while this build ran; the build was lost.");
                    let finish = CancellationToken::new();
                    finish.cancel();
                    let give_up = CancellationToken::new();
                    let _guard = give_up.clone().drop_guard();
                    delivered = tokio::time::timeout(
                        LOG_DRAIN_LIMIT,
                        logs.ship(&self.client, &job_id, finish, give_up),
                    )
                    .await
                    .unwrap_or(false);
                }
            }
            let update =
                failed_update("agent lost: the agent restarted while the build ran".to_owned());
            crate::metrics::metrics().finished("lost");
            match self.client.report(&job_id, &update).await {
                Ok(()) => info!(message = "Reported a job lost by a previous run.", %job_id),
                // Already requeued, finished or unknown: nothing more to say.
                Err(error) => info!(message = "Lost job needs no report.", %job_id, %error),
            }
            let _ = tokio::fs::remove_dir_all(Workspace::new(&self.config.work_dir, &job_id).root)
                .await;
            if delivered {
                self.state.forget_job(&job_id);
            }
        }
    }

    /// Removes workspaces and build containers of jobs that are not running (left by
    /// a crash, a kill, or a removal that failed) and says what it reclaimed.
    /// Workspaces kept on purpose (`keep_failed_workspaces`) are the operator's.
    async fn sweep(&self, in_flight: &InFlight, containers_too: bool) {
        let live = in_flight.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut containers = 0;
        let listed = if containers_too {
            self.executor.leftovers(&self.agent_id).await
        } else {
            Ok(Vec::new())
        };
        match listed {
            Ok(leftovers) => {
                for leftover in leftovers {
                    if leftover
                        .job_id
                        .as_ref()
                        .is_some_and(|job| live.contains(job))
                    {
                        continue;
                    }
                    match self.executor.remove(&leftover.container_id).await {
                        Ok(()) => containers += 1,
                        Err(error) => {
                            warn!(message = "Could not remove a stale container.", container_id = %leftover.container_id, %error)
                        }
                    }
                }
            }
            Err(error) => warn!(message = "Cannot list containers to sweep.", %error),
        }
        let (mut workspaces, mut bytes) = (0, 0u64);
        if !self.config.keep_failed_workspaces {
            let Ok(entries) = std::fs::read_dir(&self.config.work_dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // `doctor-*` is a running `kiln-agent doctor`'s probe.
                if live.contains(&name) || name.starts_with("doctor-") || !entry.path().is_dir() {
                    continue;
                }
                let path = entry.path();
                let size = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || crate::executor::docker::disk_usage(&path)
                })
                .await
                .unwrap_or(0);
                match tokio::fs::remove_dir_all(&path).await {
                    Ok(()) => {
                        workspaces += 1;
                        bytes += size;
                    }
                    Err(error) => {
                        warn!(message = "Could not remove a stale workspace.", path = %path.display(), %error)
                    }
                }
            }
        }
        if containers + workspaces > 0 {
            info!(
                message = "Reclaimed disk from jobs no longer running.",
                workspaces,
                containers,
                bytes,
                reclaimed = %crate::config::ByteSize(bytes)
            );
        }
    }

    async fn run_job(&self, job: &Job, cancel: CancellationToken, claimed_at: std::time::Instant) {
        let metrics = crate::metrics::metrics();
        metrics.jobs_running.inc();
        // Cancel latency runs from the moment anything cancels the build.
        let canceled_at: Arc<std::sync::OnceLock<std::time::Instant>> = Arc::default();
        let cancel_clock = {
            let (cancel, canceled_at) = (cancel.clone(), canceled_at.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                let _ = canceled_at.set(std::time::Instant::now());
            })
        };
        self.run_job_inner(job, cancel, claimed_at, &canceled_at)
            .await;
        cancel_clock.abort();
        metrics.jobs_running.dec();
    }

    async fn run_job_inner(
        &self,
        job: &Job,
        cancel: CancellationToken,
        claimed_at: std::time::Instant,
        canceled_at: &std::sync::OnceLock<std::time::Instant>,
    ) {
        let spooled = SpooledJob {
            job_id: job.job_id.clone(),
            deployment_id: job.deployment_id.clone(),
        };
        let spool = match self.state.remember_job(&spooled) {
            Ok(dir) => dir,
            Err(error) => {
                let _ = self
                    .client
                    .report(
                        &job.job_id,
                        &failed_update(format!("the agent cannot spool logs: {error}")),
                    )
                    .await;
                return;
            }
        };
        let mut secrets: Vec<String> = job
            .env
            .iter()
            .filter(|var| var.secret)
            .map(|var| var.value.clone())
            .collect();
        secrets.extend(job.repository_token.clone());
        let options = LogOptions {
            secrets,
            echo: false,
            limit: self.config.log_limit.0,
        };
        let logs = match JobLogs::open(&spool, &options) {
            Ok(logs) => Arc::new(logs),
            Err(error) => {
                let _ = self
                    .client
                    .report(
                        &job.job_id,
                        &failed_update(format!("the agent cannot open its log spool: {error}")),
                    )
                    .await;
                return;
            }
        };
        let system = logs.sink(LogStream::System);
        system.line(format!(
            "Job {} (deployment {}, attempt {}) on agent {} ({}).",
            job.job_id, job.deployment_id, job.attempt, self.config.name, self.agent_id
        ));
        let finish = CancellationToken::new();
        let give_up = CancellationToken::new();
        let shipper = {
            let (logs, client, job_id) = (logs.clone(), self.client.clone(), job.job_id.clone());
            let (finish, give_up) = (finish.clone(), give_up.clone());
            tokio::spawn(
                async move { logs.ship(&client, &job_id, finish, give_up).await }.in_current_span(),
            )
        };
        let watch_done = CancellationToken::new();
        let cancel_reason: Arc<Mutex<Option<String>>> = Arc::default();
        let watcher = tokio::spawn(
            watch(
                self.client.clone(),
                job.job_id.clone(),
                cancel.clone(),
                watch_done.clone(),
                cancel_reason.clone(),
            )
            .in_current_span(),
        );

        let mut started = update(DeploymentStatus::Building, None);
        started.backend = Some(ComponentStatus::Building);
        started.storefront = Some(if job.storefront_path.is_some() {
            ComponentStatus::Pending
        } else {
            ComponentStatus::Skipped
        });
        self.report(&job.job_id, &started).await;
        crate::metrics::metrics()
            .claim_latency
            .observe(claimed_at.elapsed().as_secs_f64());

        // The control plane's limit, capped by the operator's: the host is theirs.
        let timeout = match job.limits.timeout_seconds {
            0 => self.config.job_timeout,
            seconds => Duration::from_secs(seconds).min(self.config.job_timeout),
        };
        // Component statuses as they change, reported in order.
        let (progress, mut changes) =
            tokio::sync::mpsc::unbounded_channel::<(Component, ComponentStatus)>();
        let forwarder = {
            let (client, job_id) = (self.client.clone(), job.job_id.clone());
            tokio::spawn(async move {
                while let Some((component, status)) = changes.recv().await {
                    let mut building = update(DeploymentStatus::Building, None);
                    match component {
                        Component::Backend => building.backend = Some(status),
                        Component::Storefront => building.storefront = Some(status),
                    }
                    if let Err(error) = client.report(&job_id, &building).await {
                        warn!(message = "Component status not reported.", %error);
                    }
                }
            })
        };
        let request = BuildRequest {
            job_id: job.job_id.clone(),
            source: Source::Git {
                url: job.repository_url.clone(),
                commit: job.commit_sha.clone(),
                token: job.repository_token.clone(),
            },
            backend_path: job.backend_path.clone(),
            storefront_path: job.storefront_path.clone(),
            env: job.env.clone(),
            secret_scan: job.secret_scan.clone(),
            timeout,
            progress: Some(progress),
        };
        let workspace = Workspace::new(&self.config.work_dir, &job.job_id);
        let outcome = self
            .pipeline
            .build(&request, &workspace, &logs, &cancel)
            .await;
        drop(request);
        let _ = forwarder.await;
        watch_done.cancel();
        let _ = watcher.await;

        let last = match outcome {
            BuildOutcome::Built { artifacts } => {
                match self.upload_all(&job.job_id, &artifacts, &logs).await {
                    Ok(()) => {
                        let mut done = update(DeploymentStatus::AwaitingDeployment, None);
                        done.backend = Some(ComponentStatus::Succeeded);
                        let has_storefront =
                            artifacts.iter().any(|a| a.name == "storefront.tar.gz");
                        done.storefront = Some(if has_storefront {
                            ComponentStatus::Succeeded
                        } else {
                            ComponentStatus::Skipped
                        });
                        done
                    }
                    Err(reason) => failed_update(reason),
                }
            }
            BuildOutcome::Failed {
                reason,
                during_backend,
                detail,
            } => {
                let mut failed = failed_update(reason);
                failed.detail = detail;
                if !during_backend {
                    failed.backend = Some(ComponentStatus::Succeeded);
                    failed.storefront = Some(ComponentStatus::Failed);
                }
                failed
            }
            BuildOutcome::Canceled => {
                let reason = cancel_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| {
                        "the agent was stopped before the build finished".to_owned()
                    });
                let mut canceled = update(DeploymentStatus::BuildCanceled, Some(reason));
                canceled.backend = Some(ComponentStatus::Canceled);
                canceled
            }
        };
        info!(message = "Build ended.", status = %last.status, reason = ?last.reason);
        let metrics = crate::metrics::metrics();
        match last.status {
            DeploymentStatus::AwaitingDeployment => metrics.finished("succeeded"),
            DeploymentStatus::BuildCanceled => {
                metrics.finished("canceled");
                if let Some(at) = canceled_at.get() {
                    metrics.cancel_latency.observe(at.elapsed().as_secs_f64());
                }
            }
            _ => metrics.finished("failed"),
        }

        // Logs first, so whoever sees the final status can read the whole story.
        finish.cancel();
        let delivered = match tokio::time::timeout(LOG_DRAIN_LIMIT, shipper).await {
            Ok(Ok(delivered)) => delivered,
            _ => {
                give_up.cancel();
                warn!(message = "Logs not delivered yet; they stay spooled for the next start.", spool = %spool.display());
                false
            }
        };
        self.report(&job.job_id, &last).await;
        let keep =
            self.config.keep_failed_workspaces && last.status == DeploymentStatus::BuildFailed;
        if keep {
            info!(message = "Keeping the failed job's workspace.", path = %workspace.root.display());
        } else if let Err(error) = tokio::fs::remove_dir_all(&workspace.root).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                warn!(message = "Could not remove the workspace.", path = %workspace.root.display(), %error);
            }
        }
        if delivered {
            self.state.forget_job(&job.job_id);
        }
    }

    /// Reports a status, retrying while the control plane is away, for up to
    /// `RETRY_LIMIT`.
    async fn report(&self, job_id: &str, update: &JobStatusUpdate) {
        let reported = retry_transient(
            RETRY_LIMIT,
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            || self.client.report(job_id, update),
            |error, pause| warn!(message = "Status report failed; retrying.", status = %update.status, %error, retry_in_ms = pause.as_millis() as u64),
        )
        .await;
        if let Err(GaveUp { error, .. }) = reported {
            warn!(message = "Status report not delivered.", status = %update.status, %error);
        }
    }

    async fn upload_all(
        &self,
        job_id: &str,
        artifacts: &[BuiltArtifact],
        logs: &JobLogs,
    ) -> Result<(), String> {
        let system = logs.sink(LogStream::System);
        for artifact in artifacts {
            let descriptor = ArtifactDescriptor {
                name: artifact.name.clone(),
                size: artifact.packed.size,
                sha256: artifact.packed.sha256.clone(),
            };
            let started = std::time::Instant::now();
            retry_transient(
                RETRY_LIMIT,
                Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                || async {
                    let ticket = self.client.request_upload(job_id, &descriptor).await?;
                    self.client
                        .upload(&ticket, &descriptor, &artifact.packed.path)
                        .await
                },
                |error, _| {
                    system.line(format!(
                        "Upload of {} failed ({error}); retrying.",
                        artifact.name
                    ))
                },
            )
            .await
            .map_err(|GaveUp { error, attempts }| {
                format!(
                    "upload of {} failed after {attempts} attempts: {error}",
                    artifact.name
                )
            })?;
            system.line(format!(
                "Uploaded {} ({} bytes) in {:.1}s.",
                artifact.name,
                descriptor.size,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

fn update(status: DeploymentStatus, reason: Option<String>) -> JobStatusUpdate {
    JobStatusUpdate {
        status,
        backend: None,
        storefront: None,
        reason,
        detail: None,
    }
}

fn failed_update(reason: String) -> JobStatusUpdate {
    let mut failed = update(DeploymentStatus::BuildFailed, Some(reason));
    failed.backend = Some(ComponentStatus::Failed);
    failed
}

/// Keeps the job's lease and cancels the build the moment the control plane says so.
async fn watch(
    client: Client,
    job_id: String,
    cancel: CancellationToken,
    done: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
) {
    // A short cap: after an outage the lease must be renewed within seconds.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        let answer = tokio::select! {
            answer = client.watch(&job_id, WATCH_WAIT) => answer,
            _ = done.cancelled() => return,
        };
        match answer {
            Ok(control) if control.directive == JobDirective::Cancel => {
                info!(message = "Control plane canceled the build.", reason = ?control.reason);
                *reason.lock().unwrap_or_else(|p| p.into_inner()) = control.reason;
                cancel.cancel();
                return;
            }
            Ok(_) => backoff.reset(),
            Err(error) if error.is_transient() => {
                // The build goes on; the lease may lapse if this lasts, which the
                // control plane handles by handing the job out again.
                let pause = backoff.next_delay();
                warn!(message = "Job watch failed; the build continues.", %error);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = done.cancelled() => return,
                }
            }
            Err(error) => {
                warn!(message = "Control plane no longer knows this job; canceling it.", %error);
                *reason.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("the control plane refused the job watch: {error}"));
                cancel.cancel();
                return;
            }
        }
    }
}
