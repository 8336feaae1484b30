//! Deploys run by agents with the deploy role: where an environment's deploys
//! go, the deploy job a deploy host claims, its end, and its lease.
//!
//! A deploy begun for an environment with deploy settings waits in
//! `deploying` with its settings fixed on the deployment (`deploy_settings`)
//! and no current job, until an agent whose labels match claims it.

use crate::db::sql::{params, Connection, OptionalExtension, Transaction};
use kiln_protocol::{
    DeployAction, DeployJob, DeploySettings, Deployment, DeploymentStatus, EnvVar, Job, JobCache,
    JobLimits, ReleaseImage, SecretScanSettings, BACKEND_RELEASE, STOREFRONT_RELEASE,
};

use super::agents::{carries_all, AgentRow};
use super::lifecycle::{finish_current_job, set_status, settle_deploy};
use super::rows::{deployment_from_row, get_deployment_in};
use super::values::{new_id, now_ms, to_json};
use super::variables::variable_from_row;
use crate::error::ApiError;

/// The runtime variables of an environment, as the containers get them.
const RUNTIME_VARIABLES_IN: &str =
    "SELECT name, value, secret FROM variables WHERE environment_id = ?1 AND runtime = 1 ORDER BY name";

/// The deploy settings a deployment's deploy uses: its environment's own, or
/// for a pull request's preview, those of the long-lived environment of its
/// base branch, with the hostnames the preview rule derives. `None`: the
/// control plane's own deploy step.
pub(super) fn deploy_settings_for(
    tx: &Transaction,
    deployment: &Deployment,
) -> Result<Option<DeploySettings>, ApiError> {
    let (own, pull_request, base_branch): (Option<String>, Option<i64>, Option<String>) = tx
        .query_row(
            "SELECT deploy, pull_request, base_branch FROM environments WHERE id = ?1",
            [&deployment.environment_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
    let parse = |json: String| serde_json::from_str::<DeploySettings>(&json).ok();
    if let Some(own) = own.and_then(parse) {
        return Ok(Some(own));
    }
    let (Some(number), Some(base)) = (pull_request, base_branch) else {
        return Ok(None);
    };
    let parent: Option<String> = tx
        .query_row(
            "SELECT deploy FROM environments
             WHERE project_id = ?1 AND kind = 'long_lived' AND branch = ?2 AND removed_at IS NULL
               AND deploy IS NOT NULL
             ORDER BY created_at LIMIT 1",
            params![deployment.project_id, base],
            |row| row.get(0),
        )
        .optional()?;
    Ok(parent
        .and_then(parse)
        .map(|settings| settings.for_preview(number as u64)))
}

/// Moves `deployment` to `deploying` for an agent to claim, its settings fixed.
/// Refused when its build left no release image to run.
pub(super) fn queue_agent_deploy(
    tx: &Transaction,
    deployment: &Deployment,
    settings: &DeploySettings,
    action: DeployAction,
) -> Result<(), ApiError> {
    if !deployment
        .artifacts
        .iter()
        .any(|artifact| artifact.descriptor.name == BACKEND_RELEASE)
    {
        return Err(ApiError::Conflict(format!(
            "deployment {} has no release image ({BACKEND_RELEASE}) to run: it was built before this environment deployed to agents, or its artifacts were deleted; redeploy it to build one",
            deployment.id
        )));
    }
    set_status(
        tx,
        &deployment.id,
        deployment.status,
        DeploymentStatus::Deploying,
        None,
    )?;
    tx.execute(
        "UPDATE deployments SET deploy_settings = ?1, deploy_action = ?2, deployer = NULL,
                current_job_id = NULL, lease_expires_at = NULL
         WHERE id = ?3",
        params![
            to_json(settings),
            match action {
                DeployAction::Deploy => "deploy",
                DeployAction::Rollback => "rollback",
            },
            deployment.id
        ],
    )?;
    Ok(())
}

/// What a rollback began, and what it cannot undo.
#[derive(Debug, serde::Serialize)]
pub struct RollbackStarted {
    pub deployment: Deployment,
    /// Deployments of the environment after this one that ran migrations
    /// (newest first): their database changes stay.
    pub migrations_ahead: Vec<String>,
}

/// Puts a deployment that was live before (now `ready`) live again through
/// the deploy steps, with no build and no migrations. Refused, with the
/// reason, where that cannot be done.
pub fn begin_rollback(conn: &mut Connection, id: &str) -> Result<RollbackStarted, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    if deployment.status != DeploymentStatus::Ready {
        return Err(ApiError::Conflict(format!(
            "deployment {id} is {}; only a deployment that was live and was replaced (ready) can be rolled back to",
            deployment.status
        )));
    }
    let Some(settings) = deploy_settings_for(&tx, &deployment)? else {
        return Err(ApiError::Conflict(format!(
            "deployment {id}'s environment does not deploy to agents, so there is no release to start again; redeploy it to build and deploy it anew"
        )));
    };
    if let Some(removed_at) = deployment.artifacts_removed_at {
        return Err(ApiError::Gone(format!(
            "the release image of deployment {id} was deleted on {} by the server's retention policy (--artifact-retention-days); redeploy it to build it again",
            removed_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    let migrations_ahead = migrations_ahead_in(&tx, id)?;
    queue_agent_deploy(&tx, &deployment, &settings, DeployAction::Rollback)?;
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok(RollbackStarted {
        deployment,
        migrations_ahead,
    })
}

/// The environment's deployments after `id` whose deploy ran migrations
/// (they went live), newest first: a rollback to `id` leaves their changes.
pub fn migrations_ahead(conn: &mut Connection, id: &str) -> Result<Vec<String>, ApiError> {
    migrations_ahead_in(conn, id)
}

fn migrations_ahead_in(conn: &Connection, id: &str) -> Result<Vec<String>, ApiError> {
    Ok(conn
        .prepare(
            "SELECT d.id FROM deployments d, deployments me
             WHERE me.id = ?1 AND d.environment_id = me.environment_id AND d.seq > me.seq
               AND d.deploy_action = 'deploy' AND d.status IN ('live', 'ready')
             ORDER BY d.seq DESC",
        )?
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Hands the deploy host the oldest deploy waiting for an agent it may run:
/// the agent carries every label of the settings, and no other deploy of the
/// environment is in flight (they share its containers and its route).
pub(super) fn claim_deploy(
    tx: &Transaction,
    agent: &AgentRow,
    lease_ms: i64,
    job_timeout_seconds: u64,
) -> Result<Option<Job>, ApiError> {
    let waiting: Vec<(String, String)> = tx
        .prepare(
            "SELECT d.id, d.deploy_settings FROM deployments d
             WHERE d.status = 'deploying' AND d.deploy_settings IS NOT NULL
               AND d.current_job_id IS NULL
               AND NOT EXISTS (SELECT 1 FROM deployments other
                               WHERE other.environment_id = d.environment_id
                                 AND other.status = 'deploying'
                                 AND other.current_job_id IS NOT NULL)
             ORDER BY d.updated_at, d.seq LIMIT 64",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, settings) in waiting {
        let Ok(settings) = serde_json::from_str::<DeploySettings>(&settings) else {
            continue;
        };
        if !carries_all(&agent.labels, &settings.agent_labels) {
            continue;
        }
        let sql = format!(
            "SELECT * FROM deployments WHERE id = ?1 AND status = 'deploying' AND current_job_id IS NULL{}",
            tx.for_update_skip_locked()
        );
        if tx
            .query_row(&sql, [&id], deployment_from_row)
            .optional()?
            .is_none()
        {
            continue;
        }
        // With its artifacts, which the row alone does not carry.
        let deployment = get_deployment_in(tx, &id)?;
        return deploy_job(
            tx,
            agent,
            deployment,
            settings,
            lease_ms,
            job_timeout_seconds,
        )
        .map(Some);
    }
    Ok(None)
}

fn deploy_job(
    tx: &Transaction,
    agent: &AgentRow,
    deployment: Deployment,
    settings: DeploySettings,
    lease_ms: i64,
    job_timeout_seconds: u64,
) -> Result<Job, ApiError> {
    let job_id = new_id("job");
    let now = now_ms();
    let attempt: u32 = tx.query_row(
        "SELECT COUNT(*) + 1 FROM jobs WHERE deployment_id = ?1",
        [&deployment.id],
        |row| row.get(0),
    )?;
    tx.execute(
        "INSERT INTO jobs (id, deployment_id, agent_id, attempt, claimed_at, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, 'deploy')",
        params![job_id, deployment.id, agent.id, attempt, now],
    )?;
    tx.execute(
        "UPDATE deployments SET current_job_id = ?1, lease_expires_at = ?2 WHERE id = ?3",
        params![job_id, now + lease_ms, deployment.id],
    )?;
    let (repository_url, backend_path, storefront_path, environment_name, action, require): (
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    ) = tx.query_row(
        "SELECT p.repository_url, p.backend_path, p.storefront_path, e.name, d.deploy_action,
                e.require_policy
         FROM deployments d JOIN projects p ON p.id = d.project_id
         JOIN environments e ON e.id = d.environment_id WHERE d.id = ?1",
        [&deployment.id],
        |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        },
    )?;
    let runtime_env: Vec<EnvVar> = tx
        .prepare(RUNTIME_VARIABLES_IN)?
        .query_map([&deployment.environment_id], variable_from_row)?
        .collect::<Result<_, _>>()?;
    let release_image = |name: &str| -> Result<Option<ReleaseImage>, ApiError> {
        let Some(release) = deployment
            .artifacts
            .iter()
            .find(|artifact| artifact.descriptor.name == name)
        else {
            return Ok(None);
        };
        Ok(Some(ReleaseImage {
            name: name.to_owned(),
            size: release.descriptor.size,
            sha256: release.descriptor.sha256.clone(),
            url: format!("/api/v1/agent/jobs/{job_id}/artifacts/{name}"),
            // The server adds the registry's, when it has one.
            reference: None,
            provenance: super::provenance::envelope_of(tx, &deployment.id, name)?,
        }))
    };
    let backend = release_image(BACKEND_RELEASE)?.ok_or_else(|| {
        ApiError::Conflict(format!("deployment {} has no release image", deployment.id))
    })?;
    let storefront = release_image(STOREFRONT_RELEASE)?;
    let releases_kept = settings.releases_kept;
    Ok(Job {
        job_id,
        deployment_id: deployment.id.clone(),
        project_id: deployment.project_id.clone(),
        environment_id: deployment.environment_id.clone(),
        attempt,
        repository_url,
        commit_sha: deployment.commit_sha.clone(),
        branch: deployment.branch.clone(),
        author: deployment.author.clone(),
        message: deployment.message.clone(),
        backend_path,
        storefront_path,
        env: Vec::new(),
        repository_token: None,
        limits: JobLimits {
            timeout_seconds: job_timeout_seconds,
        },
        lease_seconds: (lease_ms / 1000).max(1) as u64,
        secret_scan: SecretScanSettings::default(),
        submodules: false,
        cache: Some(JobCache {
            enabled: false,
            scope: format!("branch:{}", deployment.branch),
            fallback_scopes: Vec::new(),
            dropped_scopes: Vec::new(),
        }),
        deploy: Some(DeployJob {
            action: if action.as_deref() == Some("rollback") {
                DeployAction::Rollback
            } else {
                DeployAction::Deploy
            },
            environment_name,
            settings,
            backend,
            storefront,
            runtime_env,
            releases_kept,
            require: require
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default(),
        }),
        release_image: false,
        release_reference: None,
    })
}

/// Whether `job_id` is a deploy job.
pub(super) fn is_deploy_job(tx: &Transaction, job_id: &str) -> Result<bool, ApiError> {
    let kind: Option<String> = tx
        .query_row("SELECT kind FROM jobs WHERE id = ?1", [job_id], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(kind.as_deref() == Some("deploy"))
}

/// A deploy job's end as its agent reports it: `live` (the previous live
/// deployment becomes `ready`) or `deploy_failed` with the reason; `deploying`
/// changes nothing.
pub(super) fn report_deploy(
    tx: &Transaction,
    agent_id: &str,
    job_id: &str,
    status: DeploymentStatus,
    reason: Option<&str>,
) -> Result<Deployment, ApiError> {
    let (deployment_id, owner): (String, String) = tx.query_row(
        "SELECT deployment_id, agent_id FROM jobs WHERE id = ?1",
        [job_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if owner != agent_id {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} belongs to another agent"
        )));
    }
    let deployment = get_deployment_in(tx, &deployment_id)?;
    if deployment.current_job_id.as_deref() != Some(job_id)
        || deployment.status != DeploymentStatus::Deploying
    {
        if deployment.status == status {
            // A repeated report after a lost answer.
            return Ok(deployment);
        }
        return Err(ApiError::JobSuperseded {
            job_id: job_id.to_owned(),
            why: format!(
                "deployment {deployment_id} is {} and no longer deployed by this job",
                deployment.status
            ),
        });
    }
    let failure = match status {
        DeploymentStatus::Deploying => return Ok(deployment),
        DeploymentStatus::Live => None,
        DeploymentStatus::DeployFailed => Some(reason.unwrap_or("the deploy failed")),
        other => {
            return Err(ApiError::Forbidden(format!(
                "a deploy job reports deploying, live or deploy_failed, not {other}"
            )))
        }
    };
    finish_current_job(tx, &deployment_id)?;
    settle_deploy(tx, &deployment, failure)?;
    get_deployment_in(tx, &deployment_id)
}

/// Deploy jobs whose agent stopped renewing: failed, since a deploy half done
/// is not blindly repeated; the previous release keeps serving.
pub(super) fn expire_deploy_leases(tx: &Transaction, now: i64) -> Result<Vec<String>, ApiError> {
    let expired: Vec<String> = tx
        .prepare(EXPIRED_DEPLOYS)?
        .query_map([now], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &expired {
        finish_current_job(tx, id)?;
        set_status(
            tx,
            id,
            DeploymentStatus::Deploying,
            DeploymentStatus::DeployFailed,
            Some("the deploy host stopped renewing its lease (lost or restarted) before the deploy ended; the previous release keeps serving: deploy again"),
        )?;
    }
    Ok(expired)
}

pub(super) const EXPIRED_DEPLOYS: &str = "SELECT id FROM deployments
     WHERE status = 'deploying' AND deploy_settings IS NOT NULL
       AND current_job_id IS NOT NULL AND lease_expires_at < ?1";

/// Refuses a download of `name` through deploy job `job_id` unless the job is
/// `agent_id`'s, a deploy job, still running; answers its deployment.
pub fn release_download(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
) -> Result<String, ApiError> {
    let row: Option<(String, String, String, bool)> = conn
        .query_row(
            "SELECT deployment_id, agent_id, kind, finished_at IS NOT NULL FROM jobs WHERE id = ?1",
            [job_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((deployment_id, owner, kind, finished)) = row else {
        return Err(ApiError::not_found("job", job_id));
    };
    if owner != agent_id || kind != "deploy" {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} is not a deploy job of this agent"
        )));
    }
    if finished {
        return Err(ApiError::Conflict(format!("job {job_id} has ended")));
    }
    Ok(deployment_id)
}

/// Which of `ids` name no environment in use: removed (a closed pull
/// request's preview) or never known.
pub fn removed_environments(
    conn: &mut Connection,
    ids: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut removed = Vec::new();
    for id in ids {
        let in_use: Option<bool> = conn
            .query_row(
                "SELECT removed_at IS NULL FROM environments WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?;
        if in_use != Some(true) {
            removed.push(id.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, shop, POLICY};
    use crate::store::{begin_deploy, expire_leases, report_status, DeployRunner};
    use kiln_protocol::{JobStatusUpdate, Role, UpdateEnvironment};

    fn report(status: DeploymentStatus, reason: Option<&str>) -> JobStatusUpdate {
        JobStatusUpdate {
            status,
            backend: None,
            storefront: None,
            reason: reason.map(str::to_owned),
            detail: None,
            commit_message: None,
            build: None,
        }
    }

    /// Pushes commit `n`, builds it with a release image, and begins its deploy.
    fn deploying(conn: &mut Connection, n: u8, with_release: bool) -> Result<String, ApiError> {
        let deployment = push(conn, "main", n).remove(0);
        let builder = agent(conn, &[]);
        let job = claim_one(conn, &builder);
        if with_release {
            conn.execute(
                "INSERT INTO artifacts (deployment_id, job_id, name, size, sha256, created_at)
                 VALUES (?1, ?2, ?3, 10, ?4, 0)",
                params![deployment.id, job.job_id, BACKEND_RELEASE, "ab".repeat(32)],
            )
            .unwrap();
        }
        report_status(
            conn,
            &crate::signing::Signing::for_tests(),
            &builder.id,
            &job.job_id,
            report(DeploymentStatus::AwaitingDeployment, None),
        )
        .unwrap();
        let (started, runner) = begin_deploy(conn, &deployment.id, "replica-a", 60_000)?;
        assert_eq!(
            (started.status, runner),
            (DeploymentStatus::Deploying, DeployRunner::Agent)
        );
        Ok(deployment.id)
    }

    fn deploy_to_agents(conn: &mut Connection, environment_id: &str) {
        let settings: DeploySettings = serde_json::from_str(
            r#"{"agent_labels": ["edge"], "backend_hostname": "api.shop.example"}"#,
        )
        .unwrap();
        crate::store::update_environment(
            conn,
            environment_id,
            UpdateEnvironment {
                deploy: Some(settings),
                require: None,
                ..Default::default()
            },
        )
        .unwrap();
    }

    fn claim_as(conn: &mut Connection, agent: &AgentRow, roles: &[Role]) -> Option<Job> {
        crate::store::claim_for_roles(conn, agent, roles, POLICY).unwrap()
    }

    #[test]
    fn a_deploy_waits_for_a_deploy_host_with_the_labels_and_goes_live_by_its_report() {
        let (mut conn, _, environment_id) = shop(&[]);
        deploy_to_agents(&mut conn, &environment_id);
        let first = deploying(&mut conn, 1, true).unwrap();
        let builder = agent(&mut conn, &["edge"]);
        let unlabelled = agent(&mut conn, &[]);
        let host = agent(&mut conn, &["edge"]);
        assert!(claim_as(&mut conn, &builder, &[Role::Build]).is_none());
        assert!(claim_as(&mut conn, &unlabelled, &[Role::Deploy]).is_none());
        let job = claim_as(&mut conn, &host, &[Role::Deploy]).expect("a deploy job");
        let deploy = job.deploy.as_ref().unwrap();
        assert_eq!(deploy.action, DeployAction::Deploy);
        assert_eq!(
            deploy.settings.backend_hostname.as_deref(),
            Some("api.shop.example")
        );
        assert_eq!(
            deploy.backend.url,
            format!(
                "/api/v1/agent/jobs/{}/artifacts/{BACKEND_RELEASE}",
                job.job_id
            )
        );
        // Only the holder downloads the release.
        assert!(release_download(&mut conn, &unlabelled.id, &job.job_id).is_err());
        assert_eq!(
            release_download(&mut conn, &host.id, &job.job_id).unwrap(),
            first
        );
        let live = report_status(
            &mut conn,
            &crate::signing::Signing::for_tests(),
            &host.id,
            &job.job_id,
            report(DeploymentStatus::Live, None),
        )
        .unwrap();
        assert_eq!(live.deployment.status, DeploymentStatus::Live);
        assert!(release_download(&mut conn, &host.id, &job.job_id).is_err());

        let second = deploying(&mut conn, 2, true).unwrap();
        let job = claim_as(&mut conn, &host, &[Role::Build, Role::Deploy]).unwrap();
        assert_eq!(job.deployment_id, second);
        report_status(
            &mut conn,
            &crate::signing::Signing::for_tests(),
            &host.id,
            &job.job_id,
            report(DeploymentStatus::Live, None),
        )
        .unwrap();
        let first = get_deployment_in(&conn, &first).unwrap();
        assert_eq!(first.status, DeploymentStatus::Ready);
    }

    #[test]
    fn a_failed_deploy_keeps_its_reason_and_a_lost_host_fails_the_deploy() {
        let (mut conn, _, environment_id) = shop(&[]);
        deploy_to_agents(&mut conn, &environment_id);
        let host = agent(&mut conn, &["edge"]);
        let first = deploying(&mut conn, 1, true).unwrap();
        let job = claim_as(&mut conn, &host, &[Role::Deploy]).unwrap();
        let failed = report_status(
            &mut conn,
            &crate::signing::Signing::for_tests(),
            &host.id,
            &job.job_id,
            report(DeploymentStatus::DeployFailed, Some("health check failed")),
        )
        .unwrap();
        assert_eq!(failed.deployment.status, DeploymentStatus::DeployFailed);
        assert_eq!(
            failed.deployment.reason.as_deref(),
            Some("health check failed")
        );
        assert_eq!(first, failed.deployment.id);

        let second = deploying(&mut conn, 2, true).unwrap();
        claim_as(&mut conn, &host, &[Role::Deploy]).unwrap();
        conn.execute(
            "UPDATE deployments SET lease_expires_at = 1 WHERE id = ?1",
            [&second],
        )
        .unwrap();
        assert_eq!(
            expire_leases(&mut conn, POLICY).unwrap(),
            vec![second.clone()]
        );
        let lost = get_deployment_in(&conn, &second).unwrap();
        assert_eq!(lost.status, DeploymentStatus::DeployFailed);
        assert!(lost.reason.unwrap().contains("stopped renewing"));
    }

    /// Deploys commit `n` through `host` to live.
    fn live(conn: &mut Connection, host: &AgentRow, n: u8) -> String {
        let id = deploying(conn, n, true).unwrap();
        let job = claim_as(conn, host, &[Role::Deploy]).unwrap();
        report_status(
            conn,
            &crate::signing::Signing::for_tests(),
            &host.id,
            &job.job_id,
            report(DeploymentStatus::Live, None),
        )
        .unwrap();
        id
    }

    #[test]
    fn a_rollback_runs_a_replaced_release_again_with_no_build_and_names_the_migrations_ahead() {
        let (mut conn, _, environment_id) = shop(&[]);
        deploy_to_agents(&mut conn, &environment_id);
        let host = agent(&mut conn, &["edge"]);
        let first = live(&mut conn, &host, 1);
        let second = live(&mut conn, &host, 2);
        let refused = begin_rollback(&mut conn, &second).unwrap_err().to_string();
        assert!(refused.contains("is live"), "{refused}");

        let started = begin_rollback(&mut conn, &first).unwrap();
        assert_eq!(started.deployment.status, DeploymentStatus::Deploying);
        assert_eq!(started.migrations_ahead, vec![second.clone()]);
        let job = claim_as(&mut conn, &host, &[Role::Deploy]).unwrap();
        assert_eq!(job.deploy.as_ref().unwrap().action, DeployAction::Rollback);
        assert_eq!(job.deployment_id, first);
        report_status(
            &mut conn,
            &crate::signing::Signing::for_tests(),
            &host.id,
            &job.job_id,
            report(DeploymentStatus::Live, None),
        )
        .unwrap();
        assert_eq!(
            get_deployment_in(&conn, &first).unwrap().status,
            DeploymentStatus::Live
        );
        assert_eq!(
            get_deployment_in(&conn, &second).unwrap().status,
            DeploymentStatus::Ready
        );
        // No build was queued for it.
        assert!(claim_as(&mut conn, &host, &[Role::Build]).is_none());
    }

    #[test]
    fn a_rollback_where_nothing_runs_releases_is_refused_with_the_fix() {
        let (mut conn, _, _) = shop(&[]);
        let deployment = push(&mut conn, "main", 1).remove(0);
        let error = begin_rollback(&mut conn, &deployment.id)
            .unwrap_err()
            .to_string();
        assert!(error.contains("only a deployment that was live"), "{error}");
    }

    #[test]
    fn a_deploy_host_learns_which_environments_are_gone() {
        let (mut conn, _, environment_id) = shop(&[]);
        let asked = vec![environment_id.clone(), "env_never".to_owned()];
        assert_eq!(
            removed_environments(&mut conn, &asked).unwrap(),
            ["env_never"]
        );
        conn.execute(
            "UPDATE environments SET removed_at = 1 WHERE id = ?1",
            [&environment_id],
        )
        .unwrap();
        assert_eq!(removed_environments(&mut conn, &asked).unwrap(), asked);
    }

    #[test]
    fn a_deploy_without_a_release_image_is_refused_with_the_fix() {
        let (mut conn, _, environment_id) = shop(&[]);
        deploy_to_agents(&mut conn, &environment_id);
        let error = deploying(&mut conn, 1, false).unwrap_err().to_string();
        assert!(
            error.contains("no release image") && error.contains("redeploy"),
            "{error}"
        );
    }
}
