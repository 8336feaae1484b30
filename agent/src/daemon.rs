//! The `run` loop: claim jobs by long-poll and start each as its own task (up to
//! `concurrency`, see `job.rs`), a newer job of an environment canceling the older
//! one at once; on start, clean up after a previous run that died (`recover`); and
//! every 10 minutes, sweep workspaces and containers of jobs no longer running.
//!
//! Shutdown: the first signal stops claiming and gives running builds
//! `shutdown_grace`; then (or at a second signal) they are canceled and reported.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::LogStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::config::AgentConfig;
use crate::executor::{ExecError, Executor};
use crate::job::{failed_update, JobRun};
use crate::logs::{JobLogs, LogOptions, LOG_DRAIN_LIMIT};
use crate::pipeline::{Pipeline, Workspace};
use crate::running::Running;
use crate::state::StateDir;

const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// How often the claims carry the host's facts.
const FACTS_EVERY: Duration = Duration::from_secs(300);
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
    /// The host's build cache, shared by every job.
    pub cache: Arc<crate::cache::Cache>,
}

impl Daemon {
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(), DaemonError> {
        self.recover().await;
        let deploy_docker = self.deploy_docker().await;
        let runtime_logs = deploy_docker.clone().map(|docker| {
            crate::runtime_logs::RuntimeLogs::new(
                self.client.clone(),
                docker,
                self.state.runtime_root(),
                self.config.log_limit.0,
            )
        });
        if let Some(runtime_logs) = &runtime_logs {
            runtime_logs.resume(&self.agent_id).await;
        }
        let teardown = deploy_docker.map(|docker| {
            let (config, client, stop) =
                (self.config.clone(), self.client.clone(), shutdown.clone());
            let agent_id = self.agent_id.clone();
            tokio::spawn(async move {
                loop {
                    crate::teardown::tear_down_removed(&config, &client, &docker, &agent_id).await;
                    tokio::select! {
                        _ = tokio::time::sleep(crate::teardown::TEARDOWN_EVERY) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            })
        });
        let builds = CancellationToken::new();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let running: Arc<Running> = Arc::default();
        let job_run = Arc::new(JobRun {
            client: self.client.clone(),
            pipeline: self.pipeline.clone(),
            config: self.config.clone(),
            state: self.state.clone(),
            cache: self.cache.clone(),
            agent_id: self.agent_id.clone(),
            runtime_logs: runtime_logs.clone(),
        });
        let sweeper = {
            let (daemon, running, stop) = (self.clone(), running.clone(), shutdown.clone());
            tokio::spawn(async move {
                // `recover` has just removed every container of ours.
                let mut containers_too = false;
                loop {
                    daemon.sweep(&running.in_flight(), containers_too).await;
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
        let mut last_facts: Option<std::time::Instant> = None;
        let mut held_back = false;
        let docker_version = self.executor.engine_version().await.ok();
        info!(message = "Agent running.", agent_id = %self.agent_id, concurrency = self.config.concurrency, control_plane = %self.client.base_url());
        let fatal = loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break None,
            };
            crate::metrics::metrics().loop_turned();
            let holding_back = {
                let (config, cache) = (self.config.clone(), self.cache.clone());
                tokio::task::spawn_blocking(move || disk_too_low(&config, &cache))
                    .await
                    .ok()
                    .flatten()
            };
            crate::metrics::metrics().set_holding_back(holding_back.as_deref());
            if holding_back.is_some() != held_back {
                held_back = holding_back.is_some();
                // The listing's free disk should show why, and that it passed.
                last_facts = None;
                match &holding_back {
                    Some(reason) => warn!(message = "Claiming no jobs: the disk is low.", %reason),
                    None => info!(message = "The disk has room again; claiming jobs."),
                }
            }
            // What the host looks like, every few minutes (a claim is every 30 s).
            let facts = (last_facts
                .is_none_or(|at: std::time::Instant| at.elapsed() > FACTS_EVERY))
            .then(|| {
                last_facts = Some(std::time::Instant::now());
                crate::facts::collect(&self.config.work_dir, docker_version.clone())
            });
            let claimed = tokio::select! {
                claimed = self.client.claim(CLAIM_WAIT, facts, holding_back, &self.config.roles) => claimed,
                _ = shutdown.cancelled() => break None,
            };
            crate::metrics::metrics().loop_turned();
            match claimed {
                Ok(Some(job)) => {
                    backoff.reset();
                    info!(message = "Job claimed.", job_id = %job.job_id, deployment_id = %job.deployment_id);
                    let cancel = builds.child_token();
                    let guard = running.start(&job, cancel.clone(), slot);
                    let claimed_at = std::time::Instant::now();
                    tracker.spawn(crate::job::run(
                        job_run.clone(),
                        job,
                        cancel,
                        claimed_at,
                        guard,
                    ));
                }
                Ok(None) => backoff.reset(),
                Err(error @ ClientError::Unauthorized { .. }) => {
                    break Some(DaemonError::Unauthorized(error))
                }
                Err(ClientError::Malformed {
                    what,
                    reason,
                    job_id: Some(job_id),
                }) if kiln_protocol::validate::id(
                    &job_id,
                    kiln_protocol::validate::prefix::JOB,
                )
                .is_ok() =>
                {
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
        if let Some(teardown) = teardown {
            teardown.abort();
        }
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
        if let Some(runtime_logs) = &runtime_logs {
            runtime_logs.shut_down(Duration::from_secs(5)).await;
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// On a deploy host, Docker for the releases it runs: their output
    /// followed, and those of removed environments stopped.
    async fn deploy_docker(&self) -> Option<crate::executor::DockerExecutor> {
        if !self.config.roles.contains(&kiln_protocol::Role::Deploy) {
            return None;
        }
        match crate::executor::DockerExecutor::connect().await {
            Ok(docker) => Some(docker),
            Err(error) => {
                warn!(message = "Cannot reach Docker to look after the releases this host runs.", %error);
                None
            }
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
        // Ids name directories: only ones in the control plane's format.
        lost.retain(|job_id| {
            kiln_protocol::validate::id(job_id, kiln_protocol::validate::prefix::JOB).is_ok()
        });
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
    async fn sweep(&self, live: &HashSet<String>, containers_too: bool) {
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
                    move || crate::disk::usage(&path)
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
        let cache = self.cache.clone();
        let (entries, bytes) = tokio::task::spawn_blocking(move || cache.sweep())
            .await
            .unwrap_or_default();
        if entries > 0 {
            info!(
                message = "Dropped build cache entries unused for a week or past cache_limit.",
                entries,
                bytes,
                reclaimed = %crate::config::ByteSize(bytes)
            );
        }
    }
}

/// Why this host should take no job now: less than `min_free_disk` free under
/// `work_dir`, even after the build cache gave back what it could. A job claimed
/// then would fail on a full disk, where another host (or this one, later) builds
/// it. Blocking file-system calls.
fn disk_too_low(config: &AgentConfig, cache: &crate::cache::Cache) -> Option<String> {
    let wanted = config.min_free_disk.0;
    let low = |free: &u64| wanted > 0 && *free < wanted;
    crate::disk::free(&config.work_dir).ok().filter(low)?;
    let (entries, bytes) = cache.give_back(&config.work_dir, wanted);
    if entries > 0 {
        info!(
            message = "The disk is low: dropped build cache entries, least recently used first.",
            entries,
            reclaimed = %crate::config::ByteSize(bytes)
        );
    }
    let free = crate::disk::free(&config.work_dir).ok().filter(low)?;
    Some(format!(
        "only {} free under work_dir {} (min_free_disk is {}); free space there, move work_dir to a larger disk, or lower min_free_disk",
        crate::config::ByteSize(free),
        config.work_dir.display(),
        crate::config::ByteSize(wanted)
    ))
}
