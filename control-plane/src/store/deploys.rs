//! The deploy step's records: `awaiting_deployment → deploying → live` (the
//! previous live one becoming `ready`) or `deploy_failed`.

use crate::db::sql::{params, Connection};
use kiln_protocol::{DeployAction, Deployment, DeploymentStatus};

use super::agent_deploys::{deploy_settings_for, queue_agent_deploy};

use super::lifecycle::{set_status, settle_deploy};
use super::rows::get_deployment_in;
use super::values::now_ms;
use crate::error::ApiError;

/// Gives a deploy to a replica, held until a time.
const HOLD: &str = "UPDATE deployments SET deployer = ?1, lease_expires_at = ?2 WHERE id = ?3";

/// How a begun deploy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployRunner {
    /// This replica runs the deploy step (the hook, the release link).
    Replica,
    /// It waits for an agent with the deploy role to claim it.
    Agent,
}

/// Moves a deployment to `deploying`. Where its environment has deploy
/// settings, an agent with the deploy role runs it; otherwise `deployer` (a
/// replica), which holds it for `lease_ms` and renews it while the step runs.
pub fn begin_deploy(
    conn: &mut Connection,
    id: &str,
    deployer: &str,
    lease_ms: i64,
) -> Result<(Deployment, DeployRunner), ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    // Deploy takes a build in; a release that ran before comes back by a
    // rollback (`begin_rollback`), not by this.
    if deployment.status != DeploymentStatus::AwaitingDeployment {
        return Err(ApiError::IllegalTransition {
            deployment_id: id.to_owned(),
            from: deployment.status,
            to: DeploymentStatus::Deploying,
        });
    }
    let runner = match deploy_settings_for(&tx, &deployment)? {
        Some(settings) => {
            queue_agent_deploy(&tx, &deployment, &settings, DeployAction::Deploy)?;
            DeployRunner::Agent
        }
        None => {
            set_status(
                &tx,
                id,
                deployment.status,
                DeploymentStatus::Deploying,
                None,
            )?;
            tx.execute(HOLD, params![deployer, now_ms() + lease_ms, id])?;
            DeployRunner::Replica
        }
    };
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok((deployment, runner))
}

/// Extends `deployer`'s hold on a deploy it runs; false when the deploy is no
/// longer its own (taken over, or ended).
pub fn renew_deploy(
    conn: &mut Connection,
    id: &str,
    deployer: &str,
    lease_ms: i64,
) -> Result<bool, ApiError> {
    let renewed = conn.execute(
        "UPDATE deployments SET lease_expires_at = ?1
         WHERE id = ?2 AND status = 'deploying' AND deployer = ?3",
        params![now_ms() + lease_ms, id, deployer],
    )?;
    Ok(renewed == 1)
}

/// Deploys `deployer` takes over to run again: those another replica began
/// and stopped renewing, or, with `every_other`, all begun by someone else (a
/// lone server's previous run).
pub fn take_over_deploys(
    conn: &mut Connection,
    deployer: &str,
    lease_ms: i64,
    every_other: bool,
) -> Result<Vec<String>, ApiError> {
    const ORPHANED: &str = "SELECT id FROM deployments
         WHERE status = 'deploying' AND deploy_settings IS NULL
           AND (deployer IS NULL OR deployer <> ?1)
           AND (lease_expires_at IS NULL OR lease_expires_at < ?2)
         ORDER BY seq";
    let now = now_ms();
    let lapsed_before = if every_other { i64::MAX } else { now };
    let orphaned = params![deployer, lapsed_before];
    // The leader looks every second; most looks find nothing and take no lock.
    if conn.query_all(ORPHANED, orphaned)?.is_empty() {
        return Ok(Vec::new());
    }
    let tx = conn.transaction()?;
    let ids: Vec<String> = tx
        .prepare(ORPHANED)?
        .query_map(orphaned, |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        tx.execute(HOLD, params![deployer, now + lease_ms, id])?;
    }
    tx.commit()?;
    Ok(ids)
}

/// How many deploys of `id`'s environment, begun before it, have not ended,
/// whichever replica runs them: it runs once none is left. Deploys of one
/// environment take turns (they share its target), so the one begun last ends
/// live.
pub fn deploys_ahead(conn: &mut Connection, id: &str) -> Result<u64, ApiError> {
    let ahead: i64 = conn.query_row(
        "SELECT COUNT(*) FROM deployments d, deployments me
         WHERE me.id = ?1 AND d.environment_id = me.environment_id AND d.id <> me.id
           AND d.status = 'deploying'
           AND (SELECT MAX(seq) FROM transitions
                WHERE deployment_id = d.id AND status = 'deploying')
             < (SELECT MAX(seq) FROM transitions
                WHERE deployment_id = me.id AND status = 'deploying')",
        [id],
        |row| row.get(0),
    )?;
    Ok(ahead as u64)
}

/// Ends the deploy step: live (the previous live deployment becomes ready) or
/// deploy_failed with the reason.
pub fn finish_deploy(
    conn: &mut Connection,
    id: &str,
    deployer: &str,
    failure: Option<&str>,
) -> Result<Deployment, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    let running: Option<String> = tx.query_row(
        "SELECT deployer FROM deployments WHERE id = ?1",
        [id],
        |row| row.get(0),
    )?;
    if deployment.status == DeploymentStatus::Deploying && running.as_deref() != Some(deployer) {
        return Err(ApiError::Conflict(format!(
            "deployment {id}'s deploy was taken over by another replica after this one stopped renewing it; that replica records its end"
        )));
    }
    settle_deploy(&tx, &deployment, failure)?;
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok(deployment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, shop};
    use kiln_protocol::{DeploymentStatus::*, JobStatusUpdate};

    const LEASE: i64 = 60_000;

    /// Pushes commit `n` and builds it to `awaiting_deployment`.
    fn built(conn: &mut Connection, n: u8) -> String {
        let deployment = push(conn, "main", n).remove(0);
        build_queued(conn);
        deployment.id
    }

    /// Builds the oldest queued deployment to `awaiting_deployment`.
    fn build_queued(conn: &mut Connection) {
        let builder = agent(conn, &[]);
        let job = claim_one(conn, &builder);
        crate::store::report_status(
            conn,
            &crate::signing::Signing::for_tests(),
            &builder.id,
            &job.job_id,
            JobStatusUpdate {
                status: AwaitingDeployment,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
                commit_message: None,
                build: None,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_deploy_goes_live_and_the_previous_live_one_becomes_ready() {
        let (mut conn, _, _) = shop(&[]);
        let first = built(&mut conn, 1);
        assert_eq!(
            begin_deploy(&mut conn, &first, "replica-a", LEASE)
                .unwrap()
                .0
                .status,
            Deploying
        );
        assert_eq!(
            finish_deploy(&mut conn, &first, "replica-a", None)
                .unwrap()
                .status,
            Live
        );
        let second = built(&mut conn, 2);
        begin_deploy(&mut conn, &second, "replica-a", LEASE).unwrap();
        finish_deploy(&mut conn, &second, "replica-a", None).unwrap();
        let previous = crate::store::get_deployment(&mut conn, &first).unwrap();
        assert_eq!(previous.status, Ready);
        assert_eq!(
            previous.reason,
            Some(format!("replaced by deployment {second}"))
        );
        assert!(matches!(
            begin_deploy(&mut conn, &first, "replica-a", LEASE),
            Err(ApiError::IllegalTransition {
                from: Ready,
                to: Deploying,
                ..
            })
        ));
    }

    #[test]
    fn a_closed_pull_requests_live_preview_is_no_longer_live() {
        let (mut conn, _, _) = shop(&[]);
        let event = |action| kiln_protocol::PullRequestEvent {
            repository: crate::store::testing::REPO.into(),
            number: 9,
            action,
            branch: "feature/cart".into(),
            sha: crate::store::testing::sha(1),
            author: "Grace".into(),
            message: "Cart".into(),
            people: Default::default(),
            base_branch: Some("main".into()),
        };
        let opened = crate::store::on_pull_request(
            &mut conn,
            event(kiln_protocol::PullRequestAction::Opened),
        )
        .unwrap();
        let preview = opened.deployments[0].id.clone();
        build_queued(&mut conn);
        begin_deploy(&mut conn, &preview, "replica-a", LEASE).unwrap();
        finish_deploy(&mut conn, &preview, "replica-a", None).unwrap();
        crate::store::on_pull_request(&mut conn, event(kiln_protocol::PullRequestAction::Closed))
            .unwrap();
        let closed = crate::store::get_deployment(&mut conn, &preview).unwrap();
        assert_eq!(closed.status, Ready);
        assert_eq!(
            closed.reason.as_deref(),
            Some("pull request #9 was closed and its preview environment removed")
        );
    }

    #[test]
    fn a_failed_deploy_keeps_the_live_one() {
        let (mut conn, _, _) = shop(&[]);
        let live = built(&mut conn, 1);
        begin_deploy(&mut conn, &live, "replica-a", LEASE).unwrap();
        finish_deploy(&mut conn, &live, "replica-a", None).unwrap();
        let next = built(&mut conn, 2);
        begin_deploy(&mut conn, &next, "replica-a", LEASE).unwrap();
        let failed = finish_deploy(
            &mut conn,
            &next,
            "replica-a",
            Some("hook exited with status 3"),
        )
        .unwrap();
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

    #[test]
    fn a_deploy_is_taken_over_only_once_its_replica_stops_renewing_it() {
        let (mut conn, _, _) = shop(&[]);
        let first = built(&mut conn, 1);
        begin_deploy(&mut conn, &first, "replica-a", LEASE).unwrap();
        // Replica a renews its hold: b leaves the deploy alone, and a lone
        // server takes nothing of its own.
        assert!(renew_deploy(&mut conn, &first, "replica-a", LEASE).unwrap());
        assert!(take_over_deploys(&mut conn, "replica-b", LEASE, false)
            .unwrap()
            .is_empty());
        assert!(take_over_deploys(&mut conn, "replica-a", LEASE, true)
            .unwrap()
            .is_empty());

        // Replica a dies: its hold lapses and b takes the deploy over.
        assert!(renew_deploy(&mut conn, &first, "replica-a", -1).unwrap());
        assert_eq!(
            take_over_deploys(&mut conn, "replica-b", LEASE, false).unwrap(),
            std::slice::from_ref(&first)
        );
        assert!(take_over_deploys(&mut conn, "replica-c", LEASE, false)
            .unwrap()
            .is_empty());
        // Had a only stalled, it learns the deploy is no longer its own, and
        // cannot record an end.
        assert!(!renew_deploy(&mut conn, &first, "replica-a", LEASE).unwrap());
        assert!(matches!(
            finish_deploy(&mut conn, &first, "replica-a", None),
            Err(ApiError::Conflict(why)) if why.contains("taken over")
        ));
        assert_eq!(
            finish_deploy(&mut conn, &first, "replica-b", None)
                .unwrap()
                .status,
            Live
        );
        assert!(!renew_deploy(&mut conn, &first, "replica-b", LEASE).unwrap());
    }

    #[test]
    fn deploys_of_one_environment_wait_for_those_begun_before_them() {
        let (mut conn, _, _) = shop(&[]);
        let (first, second, third) = (
            built(&mut conn, 1),
            built(&mut conn, 2),
            built(&mut conn, 3),
        );
        // Begun out of push order, on two replicas: the order of beginning counts.
        begin_deploy(&mut conn, &second, "replica-a", LEASE).unwrap();
        begin_deploy(&mut conn, &first, "replica-b", LEASE).unwrap();
        begin_deploy(&mut conn, &third, "replica-a", LEASE).unwrap();
        let ahead = |conn: &mut Connection, id: &str| deploys_ahead(conn, id).unwrap();
        assert_eq!(
            [&second, &first, &third].map(|id| ahead(&mut conn, id)),
            [0, 1, 2]
        );
        finish_deploy(&mut conn, &second, "replica-a", Some("hook failed")).unwrap();
        assert_eq!(ahead(&mut conn, &first), 0);
        assert_eq!(ahead(&mut conn, &third), 1);
        finish_deploy(&mut conn, &first, "replica-b", None).unwrap();
        assert_eq!(ahead(&mut conn, &third), 0);
    }

    #[test]
    fn a_lone_server_takes_over_its_previous_runs_deploys_at_once() {
        let (mut conn, _, _) = shop(&[]);
        let first = built(&mut conn, 1);
        begin_deploy(&mut conn, &first, "previous-run", LEASE).unwrap();
        assert_eq!(
            take_over_deploys(&mut conn, "this-run", LEASE, true).unwrap(),
            std::slice::from_ref(&first)
        );
        assert!(renew_deploy(&mut conn, &first, "this-run", LEASE).unwrap());
    }
}
