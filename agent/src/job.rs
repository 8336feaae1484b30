//! One claimed job's life: spool its logs and ship them, watch it for a cancel
//! (renewing the lease), report `building`, run the pipeline, upload what it
//! built, drain the logs, report the final status, and clean up. A job is a
//! `JobRun`, holding only what one job needs; the `JobGuard` it is handed
//! (`crate::running`) gives back its slot and entries when the task ends.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_protocol::{
    ArtifactDescriptor, Component, ComponentStatus, DeploymentStatus, Job, JobDirective,
    JobStatusUpdate, LogStream,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::client::{retry_transient, Client, ClientError, GaveUp};
use crate::config::AgentConfig;
use crate::logs::{JobLogs, LogOptions, LOG_DRAIN_LIMIT};
use crate::pipeline::Pipeline;
use crate::pipeline::{BuildOutcome, BuildRequest, BuiltArtifact, Source, Workspace};
use crate::running::JobGuard;
use crate::state::SpooledJob;
use crate::state::StateDir;

/// Short next to the lease (60 s by default), so a watch lost to a network drop is
/// renewed well before the lease runs out.
const WATCH_WAIT: Duration = Duration::from_secs(15);
/// How long uploads and status reports keep retrying while the control plane is
/// away (restarting, unreachable) before the job gives up on them.
const RETRY_LIMIT: Duration = Duration::from_secs(600);

/// A job the agent will not touch: a field is not what the protocol allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the agent refuses this job: {0}; fix the control plane that sent it")]
pub(crate) struct JobInvalid(kiln_protocol::validate::Invalid);

/// Checks every field of a job before it touches the disk or runs git.
pub(crate) fn check_job(job: &Job, allow_local_repositories: bool) -> Result<(), JobInvalid> {
    kiln_protocol::validate::job(job, allow_local_repositories).map_err(JobInvalid)
}

/// Why a job could not spool its logs (and so was not built).
#[derive(Debug, thiserror::Error)]
enum SpoolError {
    #[error("the agent cannot spool logs: {0}")]
    Remember(#[from] crate::state::StateError),
    #[error("the agent cannot open its log spool: {0}")]
    Open(std::io::Error),
}

/// An artifact that could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("upload of {name} failed after {attempts} attempts: {error}")]
pub(crate) struct UploadFailed {
    name: &'static str,
    attempts: u32,
    error: ClientError,
}

fn update(status: DeploymentStatus, reason: Option<String>) -> JobStatusUpdate {
    JobStatusUpdate {
        status,
        backend: None,
        storefront: None,
        reason,
        detail: None,
        commit_message: None,
        build: None,
    }
}

/// The values of the variables marked secret: masked in every log.
fn secret_values(variables: &[kiln_protocol::EnvVar]) -> Vec<String> {
    variables
        .iter()
        .filter(|var| var.secret)
        .map(|var| var.value.clone())
        .collect()
}

/// `build_failed` with the backend failed: a job that never got to build.
pub(crate) fn failed_update(reason: String) -> JobStatusUpdate {
    let mut failed = update(DeploymentStatus::BuildFailed, Some(reason));
    failed.backend = Some(ComponentStatus::Failed);
    failed
}

/// What one job needs of the agent, and nothing else of the daemon: its
/// client, pipeline, configuration, state directory, build cache and id.
pub(crate) struct JobRun {
    pub client: Client,
    pub pipeline: Arc<Pipeline>,
    pub config: Arc<AgentConfig>,
    pub state: StateDir,
    pub cache: Arc<crate::cache::Cache>,
    pub agent_id: String,
    /// A deploy host's follows of its live releases' output.
    pub runtime_logs: Option<Arc<crate::runtime_logs::RuntimeLogs>>,
}

/// Runs `job` to its end; `guard` goes when it does.
pub(crate) async fn run(
    job_run: Arc<JobRun>,
    job: Job,
    cancel: CancellationToken,
    claimed_at: Instant,
    guard: JobGuard,
) {
    let span = tracing::info_span!("job", job_id = %job.job_id, deployment_id = %job.deployment_id, commit = %job.commit_sha);
    async move {
        let metrics = crate::metrics::metrics();
        if let Err(invalid) = check_job(&job, job_run.config.allow_local_repositories) {
            warn!(message = "Refusing a job the control plane sent.", error = %invalid);
            metrics.finished("failed");
            // A job whose own id is malformed cannot be answered about.
            if invalid.0.field != "job_id" {
                let _ = job_run
                    .client
                    .report(&job.job_id, &failed_update(invalid.to_string()))
                    .await;
            }
            return;
        }
        metrics.jobs_running.inc();
        // Cancel latency runs from the moment anything cancels the build.
        let canceled_at: Arc<OnceLock<Instant>> = Arc::default();
        let cancel_clock = {
            let (cancel, canceled_at) = (cancel.clone(), canceled_at.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                let _ = canceled_at.set(Instant::now());
            })
        };
        let ended = job_run
            .run_job(&job, cancel, claimed_at, &canceled_at)
            .await;
        cancel_clock.abort();
        metrics.jobs_running.dec();
        // The slot goes as soon as the build has reported and its containers
        // are gone: a newer commit waiting for it need not wait for a large
        // workspace to be removed, which this task then does.
        drop(guard);
        if let Some(ended) = ended {
            job_run.clean_up(&job.job_id, ended).await;
        }
    }
    .instrument(span)
    .await
}

/// How a job that ran ended, for its clean-up once its slot is free.
struct Ended {
    status: DeploymentStatus,
    /// Its logs reached the control plane (else its spool stays).
    delivered: bool,
}

impl JobRun {
    /// Removes the job's workspace (unless it is a failed build the operator
    /// keeps) and forgets its spool once its logs were delivered.
    async fn clean_up(&self, job_id: &str, ended: Ended) {
        let workspace = Workspace::new(&self.config.work_dir, job_id);
        let keep =
            self.config.keep_failed_workspaces && ended.status == DeploymentStatus::BuildFailed;
        let started = Instant::now();
        if keep {
            info!(message = "Keeping the failed job's workspace.", path = %workspace.root.display());
        } else {
            match tokio::fs::remove_dir_all(&workspace.root).await {
                Ok(()) => {
                    info!(
                        message = "Workspace removed.",
                        took_ms = started.elapsed().as_millis() as u64
                    )
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    warn!(message = "Could not remove the workspace.", path = %workspace.root.display(), %error)
                }
            }
        }
        if ended.delivered {
            self.state.forget_job(job_id);
        }
    }

    async fn run_job(
        &self,
        job: &Job,
        cancel: CancellationToken,
        claimed_at: Instant,
        canceled_at: &OnceLock<Instant>,
    ) -> Option<Ended> {
        let (spool, logs) = match self.open_spool(job) {
            Ok(opened) => opened,
            Err(error) => {
                let _ = self
                    .client
                    .report(&job.job_id, &failed_update(error.to_string()))
                    .await;
                return None;
            }
        };
        logs.sink(LogStream::System).line(format!(
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

        let mut harvest = None;
        let last = if let Some(deploy) = &job.deploy {
            let run = crate::deploy::DeployRun {
                config: &self.config,
                client: &self.client,
                job,
                deploy,
                log: logs.sink(LogStream::Deploy),
                cancel: &cancel,
                spool_dir: self.config.work_dir.join(&job.job_id),
                agent_id: &self.agent_id,
            };
            match run.run().await {
                Ok(live) => {
                    if let Some(runtime_logs) = &self.runtime_logs {
                        runtime_logs.follow(&job.job_id, live, secret_values(&deploy.runtime_env));
                    }
                    update(DeploymentStatus::Live, None)
                }
                Err(reason) => {
                    logs.sink(LogStream::Deploy)
                        .line(format!("Deploy failed: {reason}"));
                    update(DeploymentStatus::DeployFailed, Some(reason))
                }
            }
        } else {
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

            let outcome = self.build(job, &logs, &cancel).await;

            match outcome {
                BuildOutcome::Built {
                    artifacts,
                    harvest: built,
                    record,
                } => match self.upload_all(&job.job_id, &artifacts, &logs).await {
                    Ok(()) => {
                        harvest = built;
                        let mut done = built_update(&artifacts);
                        done.build = Some(record);
                        done
                    }
                    Err(error) => failed_update(error.to_string()),
                },
                BuildOutcome::Failed(failure) => {
                    let mut failed = failed_update(failure.to_string());
                    failed.detail = failure.detail;
                    if failure.component == Component::Storefront {
                        failed.backend = Some(ComponentStatus::Succeeded);
                        failed.storefront = Some(ComponentStatus::Failed);
                    }
                    failed
                }
                BuildOutcome::Canceled => {
                    let reason = crate::lock(&cancel_reason).clone().unwrap_or_else(|| {
                        "the agent was stopped before the build finished".to_owned()
                    });
                    let mut canceled = update(DeploymentStatus::BuildCanceled, Some(reason));
                    canceled.backend = Some(ComponentStatus::Canceled);
                    canceled
                }
            }
        };
        info!(message = "Build ended.", status = %last.status, reason = ?last.reason);
        let metrics = crate::metrics::metrics();
        match last.status {
            DeploymentStatus::AwaitingDeployment | DeploymentStatus::Live => {
                metrics.finished("succeeded")
            }
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
        // The watch renews the lease until here: uploads and the log drain may
        // ride out an outage longer than a lease, and a lost lease means the
        // deployment is built again.
        watch_done.cancel();
        let _ = watcher.await;
        self.report(&job.job_id, &last).await;
        // What the build leaves for the next: after the report, so no
        // deployment waits on it, and before its workspace goes.
        if let Some(harvest) = harvest {
            let job_id = job.job_id.clone();
            let (lines, published) = tokio::task::spawn_blocking(move || harvest.publish(&job_id))
                .await
                .unwrap_or_default();
            for line in lines {
                info!(message = "Build cache.", %line);
            }
            // The control plane's record of them is what later builds'
            // provenance is checked against.
            if !published.is_empty() {
                let told = crate::client::retry_transient(
                    Duration::from_secs(60),
                    Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
                    || {
                        self.client
                            .report_cache_entries(&job.job_id, published.clone())
                    },
                    |_, _| {},
                )
                .await;
                match told {
                    Ok(()) => {
                        info!(message = "Cache entries recorded by the control plane.", job_id = %job.job_id)
                    }
                    Err(gave_up) => {
                        warn!(message = "Could not tell the control plane of the cache entries published; builds that restore them will show them as unverified.", error = %gave_up.error)
                    }
                }
            }
        }
        Some(Ended {
            status: last.status,
            delivered,
        })
    }

    /// Records the job in the state dir and opens its log spool (masking the job's
    /// secrets and its repository token).
    fn open_spool(&self, job: &Job) -> Result<(PathBuf, Arc<JobLogs>), SpoolError> {
        let spool = self.state.remember_job(&SpooledJob {
            job_id: job.job_id.clone(),
            deployment_id: job.deployment_id.clone(),
        })?;
        let mut secrets = secret_values(&job.env);
        if let Some(deploy) = &job.deploy {
            secrets.extend(secret_values(&deploy.runtime_env));
        }
        secrets.extend(job.repository_token.clone());
        let options = LogOptions {
            secrets,
            echo: false,
            limit: self.config.log_limit.0,
        };
        let logs = JobLogs::open(&spool, &options).map_err(SpoolError::Open)?;
        Ok((spool, Arc::new(logs)))
    }

    /// Runs the pipeline on the job, forwarding component statuses as they change.
    async fn build(&self, job: &Job, logs: &JobLogs, cancel: &CancellationToken) -> BuildOutcome {
        // The control plane's limit, capped by the operator's: the host is theirs.
        let timeout = match job.limits.timeout_seconds {
            0 => self.config.job_timeout,
            seconds => Duration::from_secs(seconds).min(self.config.job_timeout),
        };
        let (progress, mut changes) =
            tokio::sync::mpsc::unbounded_channel::<crate::pipeline::Progress>();
        let forwarder = {
            let (client, job_id) = (self.client.clone(), job.job_id.clone());
            tokio::spawn(async move {
                while let Some(change) = changes.recv().await {
                    let mut building = update(DeploymentStatus::Building, None);
                    match change {
                        crate::pipeline::Progress::Component(Component::Backend, status) => {
                            building.backend = Some(status)
                        }
                        crate::pipeline::Progress::Component(Component::Storefront, status) => {
                            building.storefront = Some(status)
                        }
                        crate::pipeline::Progress::CommitMessage(message) => {
                            building.commit_message = Some(message)
                        }
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
                submodules: job.submodules,
            },
            backend_path: job.backend_path.clone(),
            storefront_path: job.storefront_path.clone(),
            env: job.env.clone(),
            secret_scan: job.secret_scan.clone(),
            timeout,
            progress: Some(progress),
            cache: self.cache_request(job),
            release_image: job.release_image,
            release_reference: job.release_reference.clone(),
        };
        let workspace = Workspace::new(&self.config.work_dir, &job.job_id);
        let outcome = self
            .pipeline
            .build(&request, &workspace, logs, cancel)
            .await;
        // The sender goes with the request; the forwarder then drains and ends.
        drop(request);
        let _ = forwarder.await;
        outcome
    }

    /// How the job may use the build cache: the scopes the control plane gave
    /// (an older one gives none: the job's branch alone), or none at all.
    fn cache_request(&self, job: &Job) -> Option<crate::pipeline::CacheRequest> {
        let (scopes, dropped) = match &job.cache {
            Some(cache) if !cache.enabled => return None,
            Some(cache) => (
                crate::cache::Scopes {
                    write: cache.scope.clone(),
                    read: cache.fallback_scopes.clone(),
                },
                cache.dropped_scopes.clone(),
            ),
            None => (
                crate::cache::Scopes {
                    write: format!("branch:{}", job.branch),
                    read: Vec::new(),
                },
                Vec::new(),
            ),
        };
        Some(crate::pipeline::CacheRequest {
            cache: self.cache.clone(),
            project: job.project_id.clone(),
            scopes,
            dropped,
            shared: Some(Arc::new(GrantedOutputs {
                client: self.client.clone(),
                job_id: job.job_id.clone(),
            })),
        })
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
    ) -> Result<(), UploadFailed> {
        let system = logs.sink(LogStream::System);
        for artifact in artifacts {
            let descriptor = ArtifactDescriptor {
                name: artifact.name().to_owned(),
                size: artifact.packed.size,
                sha256: artifact.packed.sha256.clone(),
            };
            let started = Instant::now();
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
                        artifact.name()
                    ))
                },
            )
            .await
            .map_err(|GaveUp { error, attempts }| UploadFailed {
                name: artifact.name(),
                attempts,
                error,
            })?;
            system.line(format!(
                "Uploaded {} ({} bytes) in {:.1}s.",
                artifact.name(),
                descriptor.size,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// `awaiting_deployment`, with each component as built (a storefront is skipped
/// when it produced no artifact).
fn built_update(artifacts: &[BuiltArtifact]) -> JobStatusUpdate {
    let mut done = update(DeploymentStatus::AwaitingDeployment, None);
    done.backend = Some(ComponentStatus::Succeeded);
    let has_storefront = artifacts
        .iter()
        .any(|artifact| artifact.component == Component::Storefront);
    done.storefront = Some(if has_storefront {
        ComponentStatus::Succeeded
    } else {
        ComponentStatus::Skipped
    });
    done
}

/// Outputs other hosts built, through the control plane's grant for one job.
#[derive(Debug)]
struct GrantedOutputs {
    client: Client,
    job_id: String,
}

/// The largest output fetched from another host.
const SHARED_OUTPUT_LIMIT: u64 = 10 << 30;

#[async_trait::async_trait]
impl crate::pipeline::SharedOutputs for GrantedOutputs {
    async fn fetch(
        &self,
        component: Component,
        key: &str,
        out: &std::path::Path,
    ) -> Option<crate::pipeline::FetchedOutput> {
        match self
            .client
            .shared_output(
                &self.job_id,
                component.as_str(),
                key,
                out,
                SHARED_OUTPUT_LIMIT,
            )
            .await
        {
            Ok(fetched) => fetched,
            Err(error) => {
                warn!(message = "A shared output could not be fetched; building instead.", %component, %error);
                None
            }
        }
    }
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
                *crate::lock(&reason) = control.reason;
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
                *crate::lock(&reason) =
                    Some(format!("the control plane refused the job watch: {error}"));
                cancel.cancel();
                return;
            }
        }
    }
}
