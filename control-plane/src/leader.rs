//! The singleton work, run by the replica that leads (always, on SQLite): the
//! lease reaper, the take-over of deploys whose replica stopped renewing them,
//! and the compaction of finished logs.

use std::time::Duration;

use crate::{deployer, store, AppState};

/// Runs again the deploys whose replica stopped renewing them: it died, or it
/// was this server's previous run. A deploy hook may so run twice for one
/// deployment, as it always has after a restart.
async fn take_over_orphaned_deploys(state: &AppState) {
    let deployer = state.replicas.id().to_owned();
    let lease_ms = state.config.lease.as_millis() as i64;
    // A lone server's database holds no other live replica's deploys.
    let every_other = !state.replicas.shared();
    match state
        .db
        .call(move |conn| store::take_over_deploys(conn, &deployer, lease_ms, every_other))
        .await
    {
        Ok(ids) => {
            for id in ids {
                tracing::warn!(message = "Taking over a deploy its replica stopped renewing; running it again.", deployment_id = %id);
                tokio::spawn(deployer::run(state.clone(), id));
            }
        }
        Err(error) => tracing::error!(message = "Cannot look for orphaned deploys.", %error),
    }
}

/// Jobs whose logs one look compacts; the next look takes the next ones.
const LOGS_COMPACTED_PER_LOOK: i64 = 16;
/// Looks at one log that fails before it is left in its chunks.
const COMPACTION_TRIES: u32 = 3;

/// On the leader, with an object store: gathers the logs of jobs that ended
/// `log_compaction_delay` ago into one object per stream.
pub(crate) async fn compact_finished_logs(state: AppState) {
    if !state.logs.is_shared() {
        return;
    }
    let mut ticks = LeaderTicks::new(
        &state,
        state.config.reaper_interval.max(Duration::from_secs(1)),
    );
    let mut failed: std::collections::HashMap<String, u32> = Default::default();
    while ticks.next().await {
        let ended_before = store::now_ms() - state.config.log_compaction_delay.as_millis() as i64;
        let jobs = match state
            .db
            .call(move |conn| {
                store::jobs_with_logs_to_compact(conn, ended_before, LOGS_COMPACTED_PER_LOOK)
            })
            .await
        {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::error!(message = "Cannot look for logs to compact.", %error);
                continue;
            }
        };
        for job_id in jobs {
            match state.logs.compact(&job_id).await {
                Ok(replaced) if replaced > 0 => {
                    tracing::info!(
                        message = "Log compacted.",
                        job_id,
                        chunks_replaced = replaced
                    );
                }
                Ok(_) => {}
                // The chunks still hold the log: it is only read with more
                // requests. Given up after a few looks, so it never holds up
                // the jobs behind it.
                Err(error) => {
                    let failures = failed.entry(job_id.clone()).or_insert(0);
                    *failures += 1;
                    if *failures < COMPACTION_TRIES {
                        tracing::warn!(message = "Cannot compact a log; will try again.", job_id, %error);
                        continue;
                    }
                    tracing::error!(message = "Cannot compact a log; leaving it in its chunks.", job_id, %error);
                }
            }
            failed.remove(&job_id);
            let id = job_id.clone();
            if let Err(error) = state
                .db
                .call(move |conn| store::mark_logs_compacted(conn, &id))
                .await
            {
                tracing::error!(message = "Cannot note a log compacted.", job_id, %error);
            }
        }
    }
}

/// The least time between two looks at a courier's queue that changes woke: a
/// busy fleet changes statuses hundreds of times a second, and one look per
/// tick serves them all.
const CHANGES_TICK: Duration = Duration::from_millis(50);

/// A courier's wait until this replica leads; `false` once the server stops.
pub(crate) async fn until_leading(state: &AppState) -> bool {
    while !state.replicas.is_leader() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = state.shutdown.cancelled() => return false,
        }
    }
    true
}

/// A courier's wait for its next due item (`next_due`, Unix ms), looking again
/// at least each second (another replica may queue one) and after a status
/// change; `false` once the server stops.
pub(crate) async fn until_due(state: &AppState, next_due: Option<i64>) -> bool {
    let wait = next_due
        .map(|at| Duration::from_millis((at - store::now_ms()).clamp(10, 1000) as u64))
        .unwrap_or(Duration::from_secs(1));
    tokio::select! {
        _ = state.changes.notified() => {
            tokio::time::sleep(CHANGES_TICK).await;
            true
        }
        _ = tokio::time::sleep(wait) => true,
        _ = state.shutdown.cancelled() => false,
    }
}

/// The ticks of singleton work: one each `every` while this replica leads,
/// none once the server stops.
pub(crate) struct LeaderTicks {
    state: AppState,
    tick: tokio::time::Interval,
}

impl LeaderTicks {
    pub(crate) fn new(state: &AppState, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            state: state.clone(),
            tick,
        }
    }

    /// Waits for the next tick on which this replica leads; `false` once the
    /// server stops.
    pub(crate) async fn next(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.tick.tick() => {}
                _ = self.state.shutdown.cancelled() => return false,
            }
            if self.state.replicas.is_leader() {
                return true;
            }
        }
    }
}

pub(crate) async fn reap_expired_leases(state: AppState) {
    let mut ticks = LeaderTicks::new(&state, state.config.reaper_interval);
    while ticks.next().await {
        let policy = state.job_policy();
        match state
            .db
            .call(move |conn| store::expire_leases(conn, policy))
            .await
        {
            Ok(expired) if !expired.is_empty() => {
                tracing::warn!(message = "Agent leases expired.", deployments = ?expired);
                state.announce_queue_change();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(message = "Lease reaper failed.", %error),
        }
        take_over_orphaned_deploys(&state).await;
    }
}
