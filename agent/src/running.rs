//! The jobs this agent is running: the newest per environment (a newer one
//! cancels the older at once) and every job whose task is alive, and the guard
//! each job's task holds, which frees its slot and forgets it on every path.
//! Below both the daemon (which starts jobs and sweeps around them) and a job.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kiln_protocol::Job;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The jobs whose task is alive, shared by the claim loop, the sweeper and the jobs.
#[derive(Default)]
pub(crate) struct Running {
    /// The newest job of each environment, and its cancel: a newer job for the
    /// same environment cancels the older one at once, even before the control
    /// plane says so.
    by_environment: Mutex<HashMap<String, (String, CancellationToken)>>,
    /// Every job whose task is alive (also a canceled one still winding down).
    in_flight: Mutex<HashSet<String>>,
}

impl Running {
    /// Records a claimed job, canceling an older one of its environment; the guard
    /// undoes this when the job's task ends.
    pub(crate) fn start(
        self: &Arc<Self>,
        job: &Job,
        cancel: CancellationToken,
        slot: OwnedSemaphorePermit,
    ) -> JobGuard {
        let older = crate::lock(&self.by_environment)
            .insert(job.environment_id.clone(), (job.job_id.clone(), cancel));
        if let Some((older, previous)) = older {
            info!(message = "A newer job for the same environment cancels the older build.", older_job = %older, job_id = %job.job_id);
            previous.cancel();
        }
        crate::lock(&self.in_flight).insert(job.job_id.clone());
        JobGuard {
            running: self.clone(),
            job_id: job.job_id.clone(),
            environment_id: job.environment_id.clone(),
            _slot: slot,
        }
    }

    /// Forgets a job whose task has ended (called by its `JobGuard`).
    pub(crate) fn finished(&self, job_id: &str, environment_id: &str) {
        crate::lock(&self.in_flight).remove(job_id);
        let mut by_environment = crate::lock(&self.by_environment);
        if by_environment
            .get(environment_id)
            .is_some_and(|(id, _)| id == job_id)
        {
            by_environment.remove(environment_id);
        }
    }

    pub(crate) fn in_flight(&self) -> HashSet<String> {
        crate::lock(&self.in_flight).clone()
    }
}

/// Held by a running job's task; dropping it frees the slot and forgets the job.
pub(crate) struct JobGuard {
    pub(crate) running: Arc<Running>,
    pub(crate) job_id: String,
    pub(crate) environment_id: String,
    pub(crate) _slot: OwnedSemaphorePermit,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.running.finished(&self.job_id, &self.environment_id);
    }
}
