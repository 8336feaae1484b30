//! The deploy step's records: `awaiting_deployment → deploying → live` (the
//! previous live one becoming `ready`) or `deploy_failed`.

use crate::sql::{Connection, OptionalExtension};
use kiln_protocol::{Deployment, DeploymentStatus};

use super::deployments::{get_deployment_in, set_status};
use crate::error::ApiError;

pub fn begin_deploy(conn: &mut Connection, id: &str) -> Result<Deployment, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    set_status(
        &tx,
        id,
        deployment.status,
        DeploymentStatus::Deploying,
        None,
    )?;
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok(deployment)
}

/// Ends the deploy step: live (the previous live deployment becomes ready) or
/// deploy_failed with the reason.
pub fn finish_deploy(
    conn: &mut Connection,
    id: &str,
    failure: Option<&str>,
) -> Result<Deployment, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
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
                    &tx,
                    &previous,
                    DeploymentStatus::Live,
                    DeploymentStatus::Ready,
                    Some(&format!("replaced by deployment {id}")),
                )?;
            }
            set_status(&tx, id, deployment.status, DeploymentStatus::Live, None)?;
        }
        Some(reason) => {
            set_status(
                &tx,
                id,
                deployment.status,
                DeploymentStatus::DeployFailed,
                Some(reason),
            )?;
        }
    }
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok(deployment)
}

/// Deployments a previous run of the server left in `deploying`.
pub fn interrupted_deploys(conn: &mut Connection) -> Result<Vec<String>, ApiError> {
    let ids = conn
        .prepare("SELECT id FROM deployments WHERE status = 'deploying' ORDER BY seq")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, shop};
    use kiln_protocol::{DeploymentStatus::*, JobStatusUpdate};

    /// Pushes commit `n` and builds it to `awaiting_deployment`.
    fn built(conn: &mut Connection, n: u8) -> String {
        let deployment = push(conn, "main", n).remove(0);
        let builder = agent(conn, &[]);
        let job = claim_one(conn, &builder);
        crate::store::report_status(
            conn,
            &builder.id,
            &job.job_id,
            JobStatusUpdate {
                status: AwaitingDeployment,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
            },
        )
        .unwrap();
        deployment.id
    }

    #[test]
    fn a_deploy_goes_live_and_the_previous_live_one_becomes_ready() {
        let (mut conn, _, _) = shop(&[]);
        let first = built(&mut conn, 1);
        assert_eq!(begin_deploy(&mut conn, &first).unwrap().status, Deploying);
        assert_eq!(
            interrupted_deploys(&mut conn).unwrap(),
            std::slice::from_ref(&first)
        );
        assert_eq!(finish_deploy(&mut conn, &first, None).unwrap().status, Live);
        let second = built(&mut conn, 2);
        begin_deploy(&mut conn, &second).unwrap();
        finish_deploy(&mut conn, &second, None).unwrap();
        let previous = crate::store::get_deployment(&mut conn, &first).unwrap();
        assert_eq!(previous.status, Ready);
        assert_eq!(
            previous.reason,
            Some(format!("replaced by deployment {second}"))
        );
        assert!(matches!(
            begin_deploy(&mut conn, &first),
            Err(ApiError::IllegalTransition {
                from: Ready,
                to: Deploying,
                ..
            })
        ));
    }

    #[test]
    fn a_failed_deploy_keeps_the_live_one() {
        let (mut conn, _, _) = shop(&[]);
        let live = built(&mut conn, 1);
        begin_deploy(&mut conn, &live).unwrap();
        finish_deploy(&mut conn, &live, None).unwrap();
        let next = built(&mut conn, 2);
        begin_deploy(&mut conn, &next).unwrap();
        let failed = finish_deploy(&mut conn, &next, Some("hook exited with status 3")).unwrap();
        assert_eq!(
            (failed.status, failed.reason.as_deref()),
            (DeployFailed, Some("hook exited with status 3"))
        );
        assert_eq!(
            crate::store::get_deployment(&mut conn, &live)
                .unwrap()
                .status,
            Live
        );
    }
}
