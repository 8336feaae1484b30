//! The artifact retention policy (`--artifact-retention-days`): artifacts of a
//! deployment that ended that long ago and is not live are deleted, with its
//! release directory. The leader marks them in the database and deletes them
//! from the object store; every replica deletes its own disk's copies of what
//! is marked, so one that was down catches up when it starts.

use std::time::Duration;

use kiln_protocol::validate;

use crate::artifacts::remove_dir_if_there;
use crate::deployer::{release_dirs, CURRENT_LINK};
use crate::store::{self, RemovedArtifacts};
use crate::AppState;

/// Deployments one look marks, in one short transaction.
const EXPIRED_PER_LOOK: i64 = 100;
/// Looks one tick takes at most while they come full.
const LOOKS_PER_TICK: usize = 100;

/// How far back a replica reads removals again: one marked by a transaction
/// that committed after the replica's last read may carry an earlier time.
const LATE_COMMIT_MARGIN_MS: i64 = 60_000;

pub(crate) async fn remove_expired_artifacts(state: AppState) {
    let Some(keep) = state.config.artifact_retention else {
        return;
    };
    let mut tick = tokio::time::interval(state.config.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every removal on record at first: this replica may have missed some.
    let mut since = i64::MIN;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        if state.replicas.is_leader() {
            mark_expired(&state, keep).await;
        }
        let removals = match state
            .db
            .call(move |conn| store::removed_since(conn, since))
            .await
        {
            Ok(removals) => removals,
            Err(error) => {
                tracing::error!(message = "Cannot read which artifacts retention removed.", %error);
                continue;
            }
        };
        let mut all_removed = true;
        for removal in &removals {
            if let Err(error) = remove_from_disk(&state, removal).await {
                all_removed = false;
                tracing::error!(message = "Cannot delete expired artifacts from this server's disk; will try again.",
                    deployment_id = %removal.deployment_id, %error);
            }
        }
        if let (true, Some(newest)) = (all_removed, removals.last()) {
            since = newest.removed_at - LATE_COMMIT_MARGIN_MS;
        }
    }
}

/// On the leader: marks the deployments whose artifacts have been kept long
/// enough, then deletes them from the object store (each replica's disk is
/// its own to clear). Look after look while they come full, so a policy set on
/// a long history catches up within a few ticks.
async fn mark_expired(state: &AppState, keep: Duration) {
    for _ in 0..LOOKS_PER_TICK {
        let ended_before = store::now_ms() - keep.as_millis() as i64;
        let expired = match state
            .db
            .call(move |conn| store::expire_artifacts(conn, ended_before, EXPIRED_PER_LOOK))
            .await
        {
            Ok(expired) => expired,
            Err(error) => {
                tracing::error!(message = "Cannot look for expired artifacts.", %error);
                return;
            }
        };
        for removal in &expired {
            tracing::info!(
                message = "Artifacts removed by the retention policy.",
                deployment_id = %removal.deployment_id,
                artifacts = removal.artifacts.len(),
                retention_days = keep.as_secs() / 86_400
            );
            // Best effort, warned of: an object left behind costs only its bytes.
            state.artifacts.remove_shared(removal).await;
        }
        if (expired.len() as i64) < EXPIRED_PER_LOOK || state.shutdown.is_cancelled() {
            return;
        }
    }
}

/// This replica's copies of a removed deployment's artifacts and its release.
async fn remove_from_disk(state: &AppState, removal: &RemovedArtifacts) -> std::io::Result<()> {
    // Ids the store made; anything else is no path to delete.
    let well_formed = validate::id(&removal.deployment_id, validate::prefix::DEPLOYMENT).and(
        validate::id(&removal.environment_id, validate::prefix::ENVIRONMENT),
    );
    if let Err(why) = well_formed {
        tracing::error!(message = "Not deleting expired artifacts under an id the store did not make.", %why);
        return Ok(());
    }
    state.artifacts.remove_local(&removal.deployment_id).await?;
    let (environment_dir, release_dir) = release_dirs(
        &state.config.data_dir,
        &removal.environment_id,
        &removal.deployment_id,
    );
    remove_dir_if_there(&release_dir).await?;
    // A closed pull request's preview was live to the end: its `current` link
    // would point at nothing, and its directory would stay behind empty.
    let current = environment_dir.join(CURRENT_LINK);
    if tokio::fs::read_link(&current).await.ok().as_deref() == Some(release_dir.as_path()) {
        tokio::fs::remove_file(&current).await?;
        let _ = tokio::fs::remove_dir(&environment_dir).await;
    }
    Ok(())
}
