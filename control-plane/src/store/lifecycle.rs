//! A deployment's lifecycle: the one place its status changes (`set_status`),
//! asking `kiln_protocol::check_transition`, recording the transition and
//! queuing what the git host is told, in the change's own transaction.

use kiln_protocol::{check_transition, ComponentStatus, Deployment, DeploymentStatus};

use super::values::now_ms;
use crate::db::sql::{params, OptionalExtension, Transaction};
use crate::error::ApiError;

/// Moves a deployment from `from` to `to`, or refuses with both statuses named.
pub(super) fn set_status(
    tx: &Transaction,
    deployment_id: &str,
    from: DeploymentStatus,
    to: DeploymentStatus,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    allowed(deployment_id, from, to)?;
    let now = now_ms();
    let changed = tx.execute(
        "UPDATE deployments SET status = ?1, reason = ?2, updated_at = ?3 WHERE id = ?4 AND status = ?5",
        params![to.as_str(), reason, now, deployment_id, from.as_str()],
    )?;
    if changed != 1 {
        return Err(changed_meanwhile(deployment_id));
    }
    let reports = super::outbox::reports_to(tx, deployment_id)?;
    record_transition(
        tx,
        reports.as_ref(),
        deployment_id,
        Some(from),
        to,
        reason,
        now,
    )
}

/// Refuses a move the lifecycle does not allow.
pub(super) fn allowed(
    deployment_id: &str,
    from: DeploymentStatus,
    to: DeploymentStatus,
) -> Result<(), ApiError> {
    check_transition(from, to).map_err(|_| ApiError::IllegalTransition {
        deployment_id: deployment_id.to_owned(),
        from,
        to,
    })
}

/// A status update that found the deployment no longer in the status it read.
pub(super) fn changed_meanwhile(deployment_id: &str) -> ApiError {
    ApiError::Conflict(format!(
        "deployment {deployment_id} changed status while this request ran; retry"
    ))
}

/// What follows a deployment's move from `from` (`None`: just made) to `to`
/// (made by the caller at `now`): its history, the reports to its git host
/// (`outbox::reports_to`, or what the caller read of it), and its project's
/// webhooks.
pub(super) fn record_transition(
    tx: &Transaction,
    reports: Option<&super::outbox::ReportsTo>,
    deployment_id: &str,
    from: Option<DeploymentStatus>,
    to: DeploymentStatus,
    reason: Option<&str>,
    now: i64,
) -> Result<(), ApiError> {
    tx.execute_deferred(
        "INSERT INTO transitions (deployment_id, status, at, reason) VALUES (?1, ?2, ?3, ?4)",
        params![deployment_id, to.as_str(), now, reason],
    )?;
    super::outbox::enqueue(tx, reports, deployment_id, to, reason)?;
    super::webhooks::enqueue(tx, deployment_id, from, to, now)
}

/// Components still pending or building take `to` when the build ends early.
pub(super) fn settle_components(
    tx: &Transaction,
    deployment_id: &str,
    to: ComponentStatus,
) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE deployments SET
           backend_status = CASE WHEN backend_status IN ('pending', 'building') THEN ?1 ELSE backend_status END,
           storefront_status = CASE WHEN storefront_status IN ('pending', 'building') THEN ?1 ELSE storefront_status END
         WHERE id = ?2",
        params![to.as_str(), deployment_id],
    )?;
    Ok(())
}

pub(super) fn finish_current_job(tx: &Transaction, deployment_id: &str) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE jobs SET finished_at = ?1
         WHERE finished_at IS NULL AND id = (SELECT current_job_id FROM deployments WHERE id = ?2)",
        params![now_ms(), deployment_id],
    )?;
    tx.execute(
        "UPDATE deployments SET lease_expires_at = NULL WHERE id = ?1",
        [deployment_id],
    )?;
    Ok(())
}

/// A deploy's end: live (the previous live deployment becomes ready) or
/// deploy_failed with the reason.
pub(super) fn settle_deploy(
    tx: &Transaction,
    deployment: &Deployment,
    failure: Option<&str>,
) -> Result<(), ApiError> {
    let id = &deployment.id;
    match failure {
        None => {
            let previous: Option<String> = tx
                .query_row(
                    "SELECT id FROM deployments WHERE environment_id = ?1 AND status = 'live'",
                    [&deployment.environment_id],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(previous) = previous {
                set_status(
                    tx,
                    &previous,
                    DeploymentStatus::Live,
                    DeploymentStatus::Ready,
                    Some(&format!("replaced by deployment {id}")),
                )?;
            }
            set_status(tx, id, deployment.status, DeploymentStatus::Live, None)?;
        }
        Some(reason) => {
            set_status(
                tx,
                id,
                deployment.status,
                DeploymentStatus::DeployFailed,
                Some(reason),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The invariant, held over the store's own sources (less their tests):
    /// every statement that sets a deployment's status sits in `set_status`, or
    /// in the claim or the status report (the hot path, which sets other
    /// columns in the same statement), and each of those asks `allowed` before
    /// it and calls `record_transition` after it.
    #[test]
    fn every_status_write_asks_the_lifecycle_and_records_the_transition() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store");
        let mut writers = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(end) => &text[..end],
                None => &text,
            };
            for (at, _) in code.match_indices("UPDATE deployments SET status") {
                let start = ["\npub fn ", "\nfn ", "\npub(super) fn ", "\npub(crate) fn "]
                    .iter()
                    .filter_map(|opening| code[..at].rfind(opening))
                    .max()
                    .expect("a status write inside a function");
                let end = at + code[at..].find("\n}\n").expect("the function ends");
                let name = code[start..]
                    .split("fn ")
                    .nth(1)
                    .and_then(|rest| rest.split('(').next())
                    .unwrap()
                    .to_owned();
                assert!(
                    code[start..at].contains("allowed("),
                    "{file}::{name} sets a status without asking `allowed` first"
                );
                assert!(
                    code[at..end].contains("record_transition("),
                    "{file}::{name} sets a status without `record_transition` after"
                );
                writers.push(format!("{file}::{name}"));
            }
        }
        writers.sort();
        assert_eq!(
            writers,
            [
                "jobs.rs::claim_for_roles",
                "jobs.rs::report_status",
                "lifecycle.rs::set_status"
            ]
        );
    }
}
