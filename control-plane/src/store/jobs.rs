//! Jobs: a claim of a queued deployment by an agent, the lease its watch renews,
//! the agent's status reports, and leases that expire.

use crate::db::sql::{params, Connection, OptionalExtension, Params, Row, Transaction};
use kiln_protocol::{
    ComponentStatus, Deployment, DeploymentStatus, EnvVar, Job, JobCache, JobControl, JobDirective,
    JobLimits, JobStatusUpdate, Role,
};

use super::agent_deploys::{
    claim_deploy, deploy_settings_for, expire_deploy_leases, is_deploy_job, report_deploy,
    EXPIRED_DEPLOYS,
};
use super::agents::{carries_all, AgentRow};
use super::lifecycle::{
    allowed, changed_meanwhile, finish_current_job, record_transition, set_status,
    settle_components,
};
use super::outbox::ReportsTo;
use super::projects::project_from_row;
pub use super::rows::JobRow;
use super::rows::{deployment_from_row, job_in, owned_job, with_history};
use super::values::{cache_scopes_of, json_list, new_id, now_ms, time, to_json};
use super::variables::{variable_from_row, VARIABLES_IN};
use crate::error::ApiError;
use crate::signing::Signing;

/// Policy the store needs from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct JobPolicy {
    pub lease_ms: i64,
    pub job_timeout_seconds: u64,
    /// Claims of one deployment before a lost agent fails it ("agent lost").
    pub max_attempts: u32,
}

/// Queued deployments read at first while looking for one an agent may take;
/// each further page is four times larger, up to `CLAIM_PAGE_MAX`. Small in
/// tests, so paging is exercised.
const CLAIM_PAGE: i64 = if cfg!(test) { 2 } else { 16 };
const CLAIM_PAGE_MAX: i64 = 1024;

/// Hands the oldest queued deployment this agent's labels allow to the agent.
#[cfg(test)]
pub fn claim(
    conn: &mut Connection,
    agent: &AgentRow,
    policy: JobPolicy,
) -> Result<Option<Job>, ApiError> {
    claim_for_roles(conn, agent, &[Role::Build], policy)
}

/// Hands the agent a job of one of its roles: a deploy waiting for a deploy
/// host first (a shop waits on it), then the oldest build its labels allow.
pub fn claim_for_roles(
    conn: &mut Connection,
    agent: &AgentRow,
    roles: &[Role],
    policy: JobPolicy,
) -> Result<Option<Job>, ApiError> {
    let tx = conn.transaction_shared()?;
    if agent.paused {
        return Ok(None);
    }
    if roles.contains(&Role::Deploy) {
        if let Some(job) = claim_deploy(&tx, agent, policy.lease_ms, policy.job_timeout_seconds)? {
            tx.commit()?;
            return Ok(Some(job));
        }
    }
    if !roles.contains(&Role::Build) {
        return Ok(None);
    }
    // An agent gets only jobs whose every required label it carries: the
    // project's, and those of the environment's kind (production secrets go to
    // `trusted` hosts, previews elsewhere, as the project says). Pages through
    // the queue, so a job behind many others it may not take is still found.
    let mut after_seq = i64::MIN;
    let mut page_size = CLAIM_PAGE;
    let (deployment, environment) = loop {
        let page: Vec<QueuedRow> = tx
            .prepare(&format!(
                // The page first, then its joins: the queue's index gives it in
                // order whatever the planner thinks of the table's size. The
                // limit is written out (one of a few page sizes): bound as a
                // parameter, PostgreSQL plans the query anew on every claim.
                "SELECT d.seq, d.id, p.agent_labels, p.long_lived_agent_labels, p.preview_agent_labels,
                        e.kind, e.pull_request, e.base_branch, e.name
                 FROM (SELECT seq, id, project_id, environment_id FROM deployments
                       WHERE status = 'queued' AND seq > ?1 ORDER BY seq LIMIT {page_size}) d
                 JOIN projects p ON p.id = d.project_id JOIN environments e ON e.id = d.environment_id
                 ORDER BY d.seq",
            ))?
            .query_map([after_seq], |row| {
                let mut required = json_list(&row.get::<_, String>(2)?);
                let by_kind: String = if row.get::<_, String>(5)? == "preview" {
                    row.get(4)?
                } else {
                    row.get(3)?
                };
                required.extend(json_list(&by_kind));
                Ok(QueuedRow {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    required,
                    environment: EnvironmentOf {
                        name: row.get(8)?,
                        pull_request: row.get(6)?,
                        base_branch: row.get(7)?,
                    },
                })
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        after_seq = last.seq;
        page_size = (page_size * 4).min(CLAIM_PAGE_MAX);
        let allowed: Vec<QueuedRow> = page
            .into_iter()
            .filter(|queued| carries_all(&agent.labels, &queued.required))
            .collect();
        if let Some(taken) = take_first(&tx, allowed)? {
            break taken;
        }
    };
    let deployment_id = deployment.id.clone();
    let attempt = deployment.attempts + 1;
    let job_id = new_id("job");
    let now = now_ms();
    tx.execute_deferred(
        "INSERT INTO jobs (id, deployment_id, agent_id, attempt, claimed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![job_id, deployment_id, agent.id, attempt, now],
    )?;
    // The row is locked and queued: the move and the job's hold in one write.
    allowed(
        &deployment_id,
        deployment.status,
        DeploymentStatus::Building,
    )?;
    tx.execute_deferred(
        "UPDATE deployments SET status = 'building', reason = NULL, updated_at = ?1,
                                attempts = ?2, current_job_id = ?3, agent_id = ?4, lease_expires_at = ?5,
                                backend_status = 'pending', storefront_status = 'pending'
         WHERE id = ?6",
        params![now, attempt, job_id, agent.id, now + policy.lease_ms, deployment_id],
    )?;
    // What the job carries, read with the writes above in one round trip.
    let [projects, variables, dropped] = tx.query_together([
        (
            "SELECT * FROM projects WHERE id = ?1",
            [&deployment.project_id].values(),
        ),
        (VARIABLES_IN, [&deployment.environment_id].values()),
        (
            DROPPED_SCOPES,
            params![deployment.project_id, now - DROPPED_SCOPES_FOR_MS].values(),
        ),
    ])?;
    let row = projects.first().ok_or(crate::db::sql::Error::NoRows)?;
    let (project, repository_token): (_, Option<String>) =
        (project_from_row(row)?, row.get("repository_token")?);
    let env: Vec<EnvVar> = variables
        .iter()
        .map(variable_from_row)
        .collect::<Result<_, _>>()?;
    // Their names, for the build's provenance.
    tx.execute_deferred(
        "UPDATE jobs SET variables = ?1 WHERE id = ?2",
        params![super::provenance::given_variables(&env), job_id],
    )?;
    let reports = project.git_host.is_some().then(|| ReportsTo {
        project_id: project.id.clone(),
        commit_sha: deployment.commit_sha.clone(),
        environment: environment.name.clone(),
        pull_request: environment.pull_request,
    });
    record_transition(
        &tx,
        reports.as_ref(),
        &deployment_id,
        Some(DeploymentStatus::Queued),
        DeploymentStatus::Building,
        None,
        now,
    )?;
    let cache = cache_scopes(&deployment, environment, &dropped)?;
    // A release image only where an agent will run it.
    let release_image = deploy_settings_for(&tx, &deployment)?.is_some();
    tx.commit()?;
    Ok(Some(Job {
        job_id,
        deployment_id,
        project_id: project.id,
        environment_id: deployment.environment_id,
        attempt,
        repository_url: project.repository_url,
        commit_sha: deployment.commit_sha,
        branch: deployment.branch,
        author: deployment.author,
        message: deployment.message,
        backend_path: project.backend_path,
        storefront_path: project.storefront_path,
        env,
        repository_token,
        limits: JobLimits {
            timeout_seconds: policy.job_timeout_seconds,
        },
        lease_seconds: (policy.lease_ms / 1000).max(1) as u64,
        secret_scan: project.secret_scan,
        submodules: project.submodules,
        cache: Some(cache),
        deploy: None,
        release_image,
        // The server adds the registry's, when it has one.
        release_reference: None,
    }))
}

/// How long a closed pull request's scope is named for agents to drop.
const DROPPED_SCOPES_FOR_MS: i64 = 7 * 24 * 3600 * 1000;

/// Locks the first of `candidates` (in queue order) that is still queued and
/// that no other claim holds, in one statement: claims run side by side on
/// PostgreSQL and race for the head of the queue.
fn take_first(
    tx: &Transaction,
    candidates: Vec<QueuedRow>,
) -> Result<Option<(Deployment, EnvironmentOf)>, ApiError> {
    let Some(last) = candidates.last().map(|queued| queued.seq) else {
        return Ok(None);
    };
    // A few list lengths, so a few statements to prepare: padded with the last.
    let length = [1, 4, 16, 64, 256]
        .into_iter()
        .find(|&length| length >= candidates.len())
        .unwrap_or(CLAIM_PAGE_MAX as usize)
        .max(candidates.len());
    let seqs: Vec<i64> = candidates
        .iter()
        .map(|queued| queued.seq)
        .chain(std::iter::repeat(last))
        .take(length)
        .collect();
    let placeholders = (1..=length)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT * FROM deployments WHERE seq IN ({placeholders}) AND status = 'queued'
         ORDER BY seq LIMIT 1{}",
        tx.for_update_skip_locked()
    );
    let values: Vec<&dyn crate::db::sql::ToSql> = seqs
        .iter()
        .map(|seq| seq as &dyn crate::db::sql::ToSql)
        .collect();
    let Some(deployment) = tx
        .query_row(&sql, &values[..], deployment_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    // The locked row is one of the candidates.
    Ok(candidates
        .into_iter()
        .find(|queued| queued.id == deployment.id)
        .map(|queued| (deployment, queued.environment)))
}

/// A queued deployment as a claim looks at it.
struct QueuedRow {
    seq: i64,
    id: String,
    /// Labels an agent must carry to take it.
    required: Vec<String>,
    environment: EnvironmentOf,
}

/// What a claim needs of the deployment's environment: its name, and what makes
/// it a pull request's preview.
struct EnvironmentOf {
    name: String,
    pull_request: Option<i64>,
    base_branch: Option<String>,
}

/// Closed pull requests of project `?1` whose cache scopes agents should drop:
/// removed since `?2`, and no open preview of the same number.
const DROPPED_SCOPES: &str = "SELECT DISTINCT pull_request FROM environments
     WHERE project_id = ?1 AND kind = 'preview' AND removed_at IS NOT NULL AND removed_at > ?2
       AND pull_request NOT IN (SELECT pull_request FROM environments
                                WHERE project_id = ?1 AND kind = 'preview' AND removed_at IS NULL)";

/// The cache scopes of a deployment's build: its branch's for a long-lived
/// environment; for a preview, its pull request's, reading its base branch's too.
/// `dropped` are the rows of `DROPPED_SCOPES`.
fn cache_scopes(
    deployment: &Deployment,
    EnvironmentOf {
        pull_request,
        base_branch,
        ..
    }: EnvironmentOf,
    dropped: &[Row],
) -> Result<JobCache, ApiError> {
    let (scope, fallback_scopes) =
        cache_scopes_of(&deployment.branch, pull_request, base_branch.as_deref());
    let dropped_scopes = dropped
        .iter()
        .map(|row| Ok(format!("pr:{}", row.get::<_, i64>(0)?)))
        .collect::<Result<Vec<_>, crate::db::sql::Error>>()?;
    Ok(JobCache {
        enabled: deployment.use_cache,
        scope,
        fallback_scopes,
        dropped_scopes,
    })
}

pub fn get_job(conn: &mut Connection, job_id: &str) -> Result<JobRow, ApiError> {
    job_in(conn, job_id)
}

pub fn owned_job_for(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
) -> Result<JobRow, ApiError> {
    owned_job(conn, agent_id, job_id)
}

/// Renews the lease of a running job and says whether the agent must stop it.
pub fn watch(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    policy: JobPolicy,
    renew: bool,
) -> Result<JobControl, ApiError> {
    let tx = conn.transaction_shared()?;
    let job = owned_job(&tx, agent_id, job_id)?;
    let deployment = locked_deployment(&tx, &job.deployment_id)?;
    let holds_it = deployment.current_job_id.as_deref() == Some(job_id);
    let mut lease_expires_at: i64 = tx.query_row(
        "SELECT COALESCE(lease_expires_at, ?2) FROM deployments WHERE id = ?1",
        params![deployment.id, now_ms()],
        |row| row.get(0),
    )?;
    let (directive, reason) = if !holds_it {
        (
            JobDirective::Cancel,
            Some("the lease expired and the deployment was handed out again".to_owned()),
        )
    } else if matches!(
        deployment.status,
        DeploymentStatus::Building | DeploymentStatus::Deploying
    ) {
        if renew {
            lease_expires_at = now_ms() + policy.lease_ms;
            tx.execute(
                "UPDATE deployments SET lease_expires_at = ?1 WHERE id = ?2",
                params![lease_expires_at, deployment.id],
            )?;
        }
        (JobDirective::Continue, None)
    } else if matches!(
        deployment.status,
        DeploymentStatus::BuildCanceled | DeploymentStatus::BuildFailed
    ) {
        (JobDirective::Cancel, deployment.reason.clone())
    } else {
        (JobDirective::Continue, None)
    };
    tx.commit()?;
    Ok(JobControl {
        job_id: job.id,
        directive,
        status: deployment.status,
        lease_expires_at: time(lease_expires_at),
        reason,
    })
}

/// Reads `deployment_id` (without history) and holds it for the rest of a
/// shared transaction.
fn locked_deployment(tx: &Transaction, deployment_id: &str) -> Result<Deployment, ApiError> {
    let sql = format!("SELECT * FROM deployments WHERE id = ?1{}", tx.for_update());
    tx.query_row(&sql, [deployment_id], deployment_from_row)
        .optional()?
        .ok_or_else(|| ApiError::not_found("deployment", deployment_id))
}

/// What a status update did, for the caller's follow-up work.
#[derive(Debug)]
pub struct StatusApplied {
    pub deployment: Deployment,
    pub start_deploy: bool,
}

pub fn report_status(
    conn: &mut Connection,
    signing: &Signing,
    agent_id: &str,
    job_id: &str,
    update: JobStatusUpdate,
) -> Result<StatusApplied, ApiError> {
    use DeploymentStatus::*;
    {
        let tx = conn.transaction()?;
        if is_deploy_job(&tx, job_id)? {
            let deployment = report_deploy(
                &tx,
                agent_id,
                job_id,
                update.status,
                update.reason.as_deref(),
            )?;
            tx.commit()?;
            return Ok(StatusApplied {
                deployment,
                start_deploy: false,
            });
        }
    }
    if !matches!(
        update.status,
        Building | AwaitingDeployment | BuildFailed | BuildCanceled
    ) {
        return Err(ApiError::Forbidden(format!(
            "agents report building, awaiting_deployment, build_failed or build_canceled, not {}",
            update.status
        )));
    }
    let tx = conn.transaction_shared()?;
    // The job, its deployment (locked) and whether its environment deploys on
    // its own, in one read.
    let sql = format!(
        "SELECT d.*, j.agent_id AS job_agent_id, e.auto_deploy AS environment_auto_deploy,
                e.name AS environment_name, e.pull_request AS environment_pull_request,
                p.git_host_kind IS NOT NULL AS project_has_git_host
         FROM jobs j JOIN deployments d ON d.id = j.deployment_id
         JOIN environments e ON e.id = d.environment_id JOIN projects p ON p.id = d.project_id
         WHERE j.id = ?1{}",
        tx.for_update_of("d")
    );
    let (deployment, job_agent, auto_deploy, reports) = tx
        .query_row(&sql, [job_id], |row| {
            let deployment = deployment_from_row(row)?;
            let reports = if row.get("project_has_git_host")? {
                Some(ReportsTo {
                    project_id: deployment.project_id.clone(),
                    commit_sha: deployment.commit_sha.clone(),
                    environment: row.get("environment_name")?,
                    pull_request: row.get("environment_pull_request")?,
                })
            } else {
                None
            };
            Ok((
                deployment,
                row.get::<_, String>("job_agent_id")?,
                row.get::<_, bool>("environment_auto_deploy")?,
                reports,
            ))
        })
        .optional()?
        .ok_or_else(|| ApiError::not_found("job", job_id))?;
    if job_agent != agent_id {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} belongs to another agent"
        )));
    }
    if deployment.current_job_id.as_deref() != Some(job_id) {
        return Err(ApiError::JobSuperseded {
            job_id: job_id.to_owned(),
            why: format!(
                "deployment {} was handed to job {} after this job's lease expired",
                deployment.id,
                deployment.current_job_id.as_deref().unwrap_or("(none)")
            ),
        });
    }
    // Everything the report changes, worked out here and written at once.
    let moves = deployment.status != update.status;
    if moves {
        allowed(&deployment.id, deployment.status, update.status)?;
    }
    // A repeated report (a retry after a lost response) keeps the reason it gave.
    let reason = if moves || update.reason.is_some() {
        update.reason.clone()
    } else {
        deployment.reason.clone()
    };
    // Components still pending or building take the end's word.
    let settle = match update.status {
        BuildFailed => Some(ComponentStatus::Failed),
        BuildCanceled => Some(ComponentStatus::Canceled),
        _ => None,
    };
    let component = |reported: Option<ComponentStatus>, current: ComponentStatus| {
        let status = reported.unwrap_or(current);
        match settle {
            Some(to) if matches!(status, ComponentStatus::Pending | ComponentStatus::Building) => {
                to
            }
            _ => status,
        }
    };
    let now = now_ms();
    let ends = update.status != Building;
    let updated = tx
        .query_row(
            "UPDATE deployments SET status = ?1, reason = ?2, backend_status = ?3, storefront_status = ?4,
                    detail = COALESCE(?5, detail), updated_at = COALESCE(?6, updated_at),
                    lease_expires_at = CASE WHEN ?7 THEN NULL ELSE lease_expires_at END
             WHERE id = ?8 AND status = ?9
             RETURNING *",
            params![
                update.status.as_str(),
                reason,
                component(update.backend, deployment.backend_status).as_str(),
                component(update.storefront, deployment.storefront_status).as_str(),
                update.detail.as_ref().map(to_json),
                (moves || update.detail.is_some()).then_some(now),
                ends,
                deployment.id,
                deployment.status.as_str()
            ],
            deployment_from_row,
        )
        .optional()?
        .ok_or_else(|| changed_meanwhile(&deployment.id))?;
    // A pull request's event named its title; the clone names the commit's
    // own message, which its preview's deployment shows instead.
    let mut updated = updated;
    if let Some(message) = update.commit_message.as_deref().filter(|message| {
        kiln_protocol::validate::text(message, kiln_protocol::validate::MAX_MESSAGE, true).is_ok()
    }) {
        let changed = tx.execute(
            "UPDATE deployments SET message = ?1 WHERE id = ?2
               AND environment_id IN (SELECT id FROM environments WHERE pull_request IS NOT NULL)",
            params![message, deployment.id],
        )?;
        if changed == 1 {
            updated.message = message.to_owned();
        }
    }
    if moves {
        record_transition(
            &tx,
            reports.as_ref(),
            &deployment.id,
            Some(deployment.status),
            update.status,
            reason.as_deref(),
            now,
        )?;
    }
    if ends {
        tx.execute_deferred(
            "UPDATE jobs SET finished_at = ?1 WHERE id = ?2 AND finished_at IS NULL",
            params![now, job_id],
        )?;
    }
    // The build's provenance, signed with its success: a built deployment
    // never lacks it. An older agent reports no record; it is signed from
    // what the control plane knows alone.
    if moves && update.status == AwaitingDeployment {
        let record = update.build.clone().unwrap_or_default();
        super::provenance::sign_build(&tx, signing, job_id, &updated, &record, now)?;
    }
    let deployment = with_history(&tx, updated)?;
    tx.commit()?;
    Ok(StatusApplied {
        start_deploy: auto_deploy && deployment.status == AwaitingDeployment,
        deployment,
    })
}

/// Jobs whose agent stopped renewing: queued again once, then failed as lost.
pub fn expire_leases(conn: &mut Connection, policy: JobPolicy) -> Result<Vec<String>, ApiError> {
    const EXPIRED: &str =
        "SELECT id, attempts FROM deployments WHERE status = 'building' AND lease_expires_at < ?1";
    let now = now_ms();
    // A look without the store-wide lock first: the reaper runs every second,
    // and taking the lock each time would stall every claim and report.
    if conn.query_all(EXPIRED, [now])?.is_empty()
        && conn.query_all(EXPIRED_DEPLOYS, [now])?.is_empty()
    {
        return Ok(Vec::new());
    }
    let tx = conn.transaction()?;
    let mut touched = expire_deploy_leases(&tx, now)?;
    let expired: Vec<(String, u32)> = tx
        .prepare(EXPIRED)?
        .query_map([now], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, attempts) in expired {
        finish_current_job(&tx, &id)?;
        if attempts < policy.max_attempts {
            set_status(
                &tx,
                &id,
                DeploymentStatus::Building,
                DeploymentStatus::Queued,
                Some(&format!(
                    "agent lost; queued again (attempt {} of {})",
                    attempts + 1,
                    policy.max_attempts
                )),
            )?;
            tx.execute(
                "UPDATE deployments SET current_job_id = NULL, agent_id = NULL,
                        backend_status = 'pending', storefront_status = 'pending'
                 WHERE id = ?1",
                [&id],
            )?;
        } else {
            set_status(
                &tx,
                &id,
                DeploymentStatus::Building,
                DeploymentStatus::BuildFailed,
                Some("agent lost"),
            )?;
            settle_components(&tx, &id, ComponentStatus::Failed)?;
        }
        touched.push(id);
    }
    tx.commit()?;
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::get_deployment_in;
    use crate::store::testing::{
        agent, claim_one, push, queue_in_new_environments, shared_shop, shop, POLICY,
    };
    use kiln_protocol::DeploymentStatus::*;

    /// A preview shows the built commit's own message, read from the clone, in
    /// place of its pull request's title; a push's message stays as pushed.
    #[test]
    fn a_previews_deployment_takes_the_commits_own_message() {
        let (mut conn, _, _) = shop(&[]);
        let opened = crate::store::on_pull_request(
            &mut conn,
            kiln_protocol::PullRequestEvent {
                repository: crate::store::testing::REPO.into(),
                number: 7,
                action: kiln_protocol::PullRequestAction::Opened,
                branch: "feature/cart".into(),
                sha: crate::store::testing::sha(1),
                author: "Grace".into(),
                message: "Add a cart (the pull request's title)".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .unwrap()
        .deployments;
        let pushed = push(&mut conn, "main", 2);
        let builder = agent(&mut conn, &[]);
        for expected in [
            (&opened[0].id, "Fix the cart total\n\nIt summed twice."),
            (&pushed[0].id, "commit 2"),
        ] {
            let job = claim_one(&mut conn, &builder);
            assert_eq!(&job.deployment_id, expected.0);
            let building = JobStatusUpdate {
                status: Building,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
                commit_message: Some("Fix the cart total\n\nIt summed twice.".into()),
                build: None,
            };
            let applied = report_status(
                &mut conn,
                &crate::signing::Signing::for_tests(),
                &builder.id,
                &job.job_id,
                building.clone(),
            )
            .unwrap();
            assert_eq!(applied.deployment.message, expected.1);
            let stored = get_deployment_in(&conn, expected.0).unwrap();
            assert_eq!(stored.message, expected.1);
        }
    }

    /// The message comes from the repository: one past the limit, or with a
    /// NUL, leaves the pull request's title in place and fails nothing.
    #[test]
    fn a_hostile_commit_message_is_not_taken() {
        let (mut conn, _, _) = shop(&[]);
        crate::store::on_pull_request(
            &mut conn,
            kiln_protocol::PullRequestEvent {
                repository: crate::store::testing::REPO.into(),
                number: 7,
                action: kiln_protocol::PullRequestAction::Opened,
                branch: "feature/cart".into(),
                sha: crate::store::testing::sha(1),
                author: "Grace".into(),
                message: "Add a cart".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .unwrap();
        let builder = agent(&mut conn, &[]);
        let job = claim_one(&mut conn, &builder);
        for hostile in [
            "x".repeat(kiln_protocol::validate::MAX_MESSAGE + 1),
            "nul\0byte".to_owned(),
        ] {
            let report = JobStatusUpdate {
                status: Building,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
                commit_message: Some(hostile),
                build: None,
            };
            let applied = report_status(
                &mut conn,
                &crate::signing::Signing::for_tests(),
                &builder.id,
                &job.job_id,
                report,
            )
            .unwrap();
            assert_eq!(applied.deployment.message, "Add a cart");
        }
    }

    /// An agent finds the one job it may take behind a page and more of jobs
    /// it may not.
    #[test]
    fn a_claim_looks_past_a_long_queue_of_jobs_for_other_agents() {
        let (mut conn, gpu_project, _) = shop(&["gpu"]);
        queue_in_new_environments(&mut conn, &gpu_project, CLAIM_PAGE as usize * 5 + 3);
        let other = crate::store::create_project(
            &mut conn,
            kiln_protocol::CreateProject::new("docs", "https://git.example/acme/docs.git"),
            Default::default(),
        )
        .unwrap();
        crate::store::create_environment(
            &mut conn,
            &other.id,
            kiln_protocol::CreateEnvironment {
                name: "Production".into(),
                branch: "main".into(),
                auto_deploy: false,
            },
        )
        .unwrap();
        let queued = crate::store::on_push(
            &mut conn,
            kiln_protocol::PushEvent {
                repository: "https://git.example/acme/docs.git".into(),
                branch: "main".into(),
                sha: "ab".repeat(20),
                author: "Ada".into(),
                message: "docs".into(),
                people: Default::default(),
            },
        )
        .unwrap()
        .deployments;
        let plain = agent(&mut conn, &[]);
        assert_eq!(claim_one(&mut conn, &plain).deployment_id, queued[0].id);
        assert!(claim(&mut conn, &plain, POLICY).unwrap().is_none());
    }

    /// Agents on separate connections (as on separate replicas) claim at once:
    /// every queued deployment goes to exactly one of them.
    #[test]
    fn racing_claims_never_hand_one_job_to_two_agents() {
        const ENVIRONMENTS: usize = 40;
        const AGENTS: usize = 8;
        let (_dir, location, mut conn, project) = shared_shop();
        queue_in_new_environments(&mut conn, &project.id, ENVIRONMENTS);
        let agents: Vec<_> = (0..AGENTS).map(|_| agent(&mut conn, &[])).collect();
        let start = std::sync::Barrier::new(AGENTS);
        let claimed: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> = agents
                .iter()
                .map(|agent| {
                    let (location, start) = (&location, &start);
                    scope.spawn(move || {
                        let mut conn = crate::db::connect(location).unwrap();
                        start.wait();
                        let mut mine = Vec::new();
                        while let Some(job) = claim(&mut conn, agent, POLICY).unwrap() {
                            mine.push(job.deployment_id);
                        }
                        mine
                    })
                })
                .collect();
            racers
                .into_iter()
                .flat_map(|racer| racer.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<&String> = claimed.iter().collect();
        assert_eq!(claimed.len(), ENVIRONMENTS, "every deployment claimed once");
        assert_eq!(distinct.len(), ENVIRONMENTS, "no deployment claimed twice");
    }

    /// Pushes to one environment from several connections (on PostgreSQL, side
    /// by side) while agents claim its builds and start them: every push lands,
    /// no status move is refused as changed meanwhile, and each push cancels
    /// the build queued just before it.
    #[test]
    fn racing_pushes_each_cancel_the_build_queued_before_them() {
        const PUSHERS: usize = 4;
        const PUSHES: usize = 25;
        const AGENTS: usize = 4;
        /// Counts a pusher out even when it panics, so the agents stop.
        struct Pushing<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Pushing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let (_dir, location, mut conn, project) = shared_shop();
        let environment = crate::store::create_environment(
            &mut conn,
            &project.id,
            kiln_protocol::CreateEnvironment {
                name: "Production".into(),
                branch: "main".into(),
                auto_deploy: false,
            },
        )
        .unwrap();
        let agents: Vec<_> = (0..AGENTS).map(|_| agent(&mut conn, &[])).collect();
        let start = std::sync::Barrier::new(PUSHERS + AGENTS);
        let pushing = std::sync::atomic::AtomicUsize::new(PUSHERS);
        std::thread::scope(|scope| {
            for pusher in 0..PUSHERS {
                let (location, start, pushing) = (&location, &start, &pushing);
                scope.spawn(move || {
                    let _counted = Pushing(pushing);
                    let mut conn = crate::db::connect(location).unwrap();
                    start.wait();
                    for n in 0..PUSHES {
                        let queued = push(&mut conn, "main", (pusher * PUSHES + n) as u8);
                        assert_eq!(queued.len(), 1);
                    }
                });
            }
            for agent in &agents {
                let (location, start, pushing) = (&location, &start, &pushing);
                scope.spawn(move || {
                    let mut conn = crate::db::connect(location).unwrap();
                    start.wait();
                    while pushing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        let Some(job) = claim(&mut conn, agent, POLICY).unwrap() else {
                            continue;
                        };
                        // Started, not ended: a build no push cancels stays pending.
                        // A newer push may cancel it first; nothing else may refuse.
                        match report(&mut conn, &agent.id, &job.job_id, Building) {
                            Ok(_) => {}
                            Err(ApiError::IllegalTransition {
                                from: BuildCanceled,
                                ..
                            }) => {}
                            Err(error) => panic!("{error}"),
                        }
                    }
                });
            }
        });
        // In the order they were queued, each deployment was canceled by the
        // next one (not by a later one, after two builds ran at once); the
        // last is still pending.
        let queued: Vec<(String, String, Option<String>)> = conn
            .query_all(
                "SELECT id, status, reason FROM deployments WHERE environment_id = ?1 ORDER BY seq",
                [&environment.id],
            )
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.get(0).unwrap(),
                    row.get(1).unwrap(),
                    row.get(2).unwrap(),
                )
            })
            .collect();
        assert_eq!(queued.len(), PUSHERS * PUSHES);
        for pair in queued.windows(2) {
            let ((older, status, reason), (newer, _, _)) = (&pair[0], &pair[1]);
            assert_eq!(status, "build_canceled", "{older}");
            let superseded = format!("superseded by deployment {newer} ");
            assert!(
                reason
                    .as_deref()
                    .is_some_and(|reason| reason.starts_with(&superseded)),
                "{older}: {reason:?}, not {superseded}"
            );
        }
        let (_, last, _) = queued.last().unwrap();
        assert!(["queued", "building"].contains(&last.as_str()), "{last}");
    }

    fn report(
        conn: &mut Connection,
        agent_id: &str,
        job_id: &str,
        status: DeploymentStatus,
    ) -> Result<StatusApplied, ApiError> {
        report_status(
            conn,
            &crate::signing::Signing::for_tests(),
            agent_id,
            job_id,
            JobStatusUpdate {
                status,
                backend: None,
                storefront: None,
                reason: None,
                detail: None,
                commit_message: None,
                build: None,
            },
        )
    }

    #[test]
    fn claims_go_oldest_first_to_agents_with_the_labels() {
        let (mut conn, _, _) = shop(&["trusted"]);
        push(&mut conn, "main", 1);
        let untrusted = agent(&mut conn, &[]);
        assert!(claim(&mut conn, &untrusted, POLICY).unwrap().is_none());
        let trusted = agent(&mut conn, &["trusted", "fast"]);
        let job = claim_one(&mut conn, &trusted);
        assert_eq!((job.attempt, job.lease_seconds), (1, 60));
        let deployment = get_deployment_in(&conn, &job.deployment_id).unwrap();
        assert_eq!(deployment.status, Building);
        assert_eq!(
            deployment.current_job_id.as_deref(),
            Some(job.job_id.as_str())
        );
        assert!(
            claim(&mut conn, &trusted, POLICY).unwrap().is_none(),
            "claimed once"
        );
    }

    #[test]
    fn a_job_reports_its_way_to_awaiting_deployment() {
        let (mut conn, _, _) = shop(&[]);
        push(&mut conn, "main", 1);
        let builder = agent(&mut conn, &[]);
        let job = claim_one(&mut conn, &builder);
        report(&mut conn, &builder.id, &job.job_id, Building).unwrap();
        let done = report(&mut conn, &builder.id, &job.job_id, AwaitingDeployment).unwrap();
        assert_eq!(done.deployment.status, AwaitingDeployment);
        assert!(!done.start_deploy, "auto_deploy is off");
        assert!(job_in(&conn, &job.job_id).unwrap().finished);
        let error = report(&mut conn, &builder.id, &job.job_id, Live).unwrap_err();
        assert!(matches!(error, ApiError::Forbidden(_)), "{error}");
        let stranger = agent(&mut conn, &[]);
        let error = report(&mut conn, &stranger.id, &job.job_id, BuildFailed).unwrap_err();
        assert!(matches!(error, ApiError::Forbidden(_)), "{error}");
    }

    #[test]
    fn a_newer_push_tells_the_watch_to_cancel() {
        let (mut conn, _, _) = shop(&[]);
        push(&mut conn, "main", 1);
        let builder = agent(&mut conn, &[]);
        let job = claim_one(&mut conn, &builder);
        let control = watch(&mut conn, &builder.id, &job.job_id, POLICY, true).unwrap();
        assert_eq!(control.directive, JobDirective::Continue);
        push(&mut conn, "main", 2);
        let control = watch(&mut conn, &builder.id, &job.job_id, POLICY, true).unwrap();
        assert_eq!(control.directive, JobDirective::Cancel);
        assert!(control
            .reason
            .unwrap()
            .starts_with("superseded by deployment"));
    }

    #[test]
    fn an_expired_lease_requeues_once_then_fails_as_agent_lost() {
        let (mut conn, _, _) = shop(&[]);
        let deployment = push(&mut conn, "main", 1).remove(0);
        let builder = agent(&mut conn, &[]);
        let expire = |conn: &mut Connection| {
            conn.execute(
                "UPDATE deployments SET lease_expires_at = 0 WHERE id = ?1",
                [&deployment.id],
            )
            .unwrap();
            expire_leases(conn, POLICY).unwrap()
        };
        let first = claim_one(&mut conn, &builder);
        assert_eq!(expire(&mut conn), std::slice::from_ref(&deployment.id));
        assert_eq!(
            get_deployment_in(&conn, &deployment.id).unwrap().status,
            Queued
        );
        let second = claim_one(&mut conn, &builder);
        assert_eq!(second.attempt, 2);
        let error = report(&mut conn, &builder.id, &first.job_id, AwaitingDeployment).unwrap_err();
        assert!(matches!(error, ApiError::JobSuperseded { .. }), "{error}");
        expire(&mut conn);
        let lost = get_deployment_in(&conn, &deployment.id).unwrap();
        assert_eq!(
            (lost.status, lost.reason.as_deref()),
            (BuildFailed, Some("agent lost"))
        );
    }

    #[test]
    fn cache_scopes_keep_previews_from_writing_their_base_branch() {
        let (mut conn, _, _) = shop(&[]);
        let builder = agent(&mut conn, &[]);
        push(&mut conn, "main", 1);
        let main = claim_one(&mut conn, &builder).cache.unwrap();
        assert_eq!(
            (
                main.enabled,
                main.scope.as_str(),
                main.fallback_scopes.len()
            ),
            (true, "branch:main", 0)
        );
        let event = |action| kiln_protocol::PullRequestEvent {
            repository: crate::store::testing::REPO.into(),
            number: 12,
            action,
            branch: "feature".into(),
            sha: crate::store::testing::sha(2),
            author: "Grace".into(),
            message: "Feature".into(),
            people: Default::default(),
            base_branch: Some("main".into()),
        };
        crate::store::on_pull_request(&mut conn, event(kiln_protocol::PullRequestAction::Opened))
            .unwrap();
        let preview = claim_one(&mut conn, &builder).cache.unwrap();
        assert_eq!(preview.scope, "pr:12");
        assert_eq!(preview.fallback_scopes, ["branch:main"]);
        crate::store::on_pull_request(&mut conn, event(kiln_protocol::PullRequestAction::Closed))
            .unwrap();
        // The next job of the project tells its agent to drop the closed one's scope;
        // a redeploy without cache says so too.
        let built = push(&mut conn, "main", 3).remove(0);
        let after = claim_one(&mut conn, &builder).cache.unwrap();
        assert_eq!(after.dropped_scopes, ["pr:12"]);
        conn.execute(
            "UPDATE deployments SET status = 'awaiting_deployment' WHERE id = ?1",
            [&built.id],
        )
        .unwrap();
        crate::store::redeploy(&mut conn, &built.id, false).unwrap();
        assert!(!claim_one(&mut conn, &builder).cache.unwrap().enabled);
    }
}
