//! The deployment model on SQLite: projects, environments, deployments, agents, jobs.
//!
//! Each public function is one transaction. Every status change goes through
//! `set_status`, which asks `kiln_protocol::check_transition` and records the
//! transition. No HTTP and no async here: handlers call these through `Db::call`.

use chrono::{DateTime, Utc};
use globset::Glob;
use kiln_protocol::{
    check_transition, ArtifactDescriptor, ComponentStatus, CreateEnvironment, CreateProject,
    Deployment, DeploymentStatus, EnvVar, Environment, EnvironmentKind, EventOutcome, Job,
    JobControl, JobDirective, JobLimits, JobStatusUpdate, Project, PullRequestAction,
    PullRequestEvent, PushEvent, StoredArtifact, Transition, UpdateEnvironment, UpdateProject,
    VariableView,
};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::error::ApiError;

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub fn new_id(prefix: &str) -> String {
    // v7 ids sort by creation time, which keeps logs and listings readable.
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

fn parse_status(text: &str) -> Result<DeploymentStatus, rusqlite::Error> {
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_component(text: &str) -> ComponentStatus {
    ComponentStatus::parse(text).unwrap_or(ComponentStatus::Pending)
}

/// Repository URLs as git hosts send them vary by a trailing slash or `.git`.
fn normalize_repository(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    url.strip_suffix(".git").unwrap_or(url).to_ascii_lowercase()
}

// ---------------------------------------------------------------- agents

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub labels: Vec<String>,
}

pub fn register_agent(
    conn: &mut Connection,
    name: &str,
    labels: &[String],
    token_hash: &str,
) -> Result<String, ApiError> {
    let id = new_id("agt");
    conn.execute(
        "INSERT INTO agents (id, name, labels, token_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name, to_json(&labels), token_hash, now_ms()],
    )?;
    Ok(id)
}

pub fn agent_by_token_hash(
    conn: &mut Connection,
    token_hash: &str,
) -> Result<Option<AgentRow>, ApiError> {
    let agent = conn
        .query_row(
            "SELECT id, labels FROM agents WHERE token_hash = ?1",
            [token_hash],
            |row| {
                Ok(AgentRow {
                    id: row.get(0)?,
                    labels: json_list(&row.get::<_, String>(1)?),
                })
            },
        )
        .optional()?;
    if let Some(agent) = &agent {
        conn.execute(
            "UPDATE agents SET last_seen_at = ?1 WHERE id = ?2",
            params![now_ms(), agent.id],
        )?;
    }
    Ok(agent)
}

// ---------------------------------------------------------------- projects

fn validate_relative_path(field: &str, path: &str) -> Result<(), ApiError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|part| part == "..")
        || path.contains('\0');
    if bad {
        return Err(ApiError::invalid_field(
            field,
            format!("{path:?} must be a relative path inside the repository, without `..`"),
        ));
    }
    Ok(())
}

fn require_non_empty(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    Ok(())
}

fn project_from_row(row: &Row) -> rusqlite::Result<Project> {
    Ok(Project {
        id: row.get("id")?,
        name: row.get("name")?,
        repository_url: row.get("repository_url")?,
        backend_path: row.get("backend_path")?,
        storefront_path: row.get("storefront_path")?,
        agent_labels: json_list(&row.get::<_, String>("agent_labels")?),
        // Written only by this module from a valid value.
        secret_scan: serde_json::from_str(&row.get::<_, String>("secret_scan")?)
            .unwrap_or_default(),
        created_at: time(row.get("created_at")?),
    })
}

pub fn create_project(conn: &mut Connection, new: CreateProject) -> Result<Project, ApiError> {
    require_non_empty("name", &new.name)?;
    require_non_empty("repository_url", &new.repository_url)?;
    validate_relative_path("backend_path", &new.backend_path)?;
    if let Some(path) = &new.storefront_path {
        validate_relative_path("storefront_path", path)?;
    }
    let tx = conn.transaction()?;
    let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)",
        [&new.name],
        |row| row.get(0),
    )?;
    if taken {
        return Err(ApiError::Conflict(format!(
            "a project named {:?} already exists; pick another name",
            new.name
        )));
    }
    let id = new_id("prj");
    tx.execute(
        "INSERT INTO projects (id, name, repository_url, backend_path, storefront_path, agent_labels, repository_token, secret_scan, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            new.name,
            new.repository_url.trim(),
            new.backend_path,
            new.storefront_path,
            to_json(&new.agent_labels),
            new.repository_token,
            to_json(&new.secret_scan),
            now_ms()
        ],
    )?;
    let project = get_project_in(&tx, &id)?;
    tx.commit()?;
    Ok(project)
}

fn get_project_in(conn: &Connection, id: &str) -> Result<Project, ApiError> {
    conn.query_row(
        "SELECT * FROM projects WHERE id = ?1",
        [id],
        project_from_row,
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("project", id))
}

pub fn get_project(conn: &mut Connection, id: &str) -> Result<Project, ApiError> {
    get_project_in(conn, id)
}

pub fn update_project(
    conn: &mut Connection,
    id: &str,
    update: UpdateProject,
) -> Result<Project, ApiError> {
    let tx = conn.transaction()?;
    // An unknown id updates nothing and is refused by the read below.
    if let Some(settings) = &update.secret_scan {
        tx.execute(
            "UPDATE projects SET secret_scan = ?1 WHERE id = ?2",
            params![to_json(settings), id],
        )?;
    }
    let project = get_project_in(&tx, id)?;
    tx.commit()?;
    Ok(project)
}

pub fn list_projects(conn: &mut Connection) -> Result<Vec<Project>, ApiError> {
    let mut stmt = conn.prepare("SELECT * FROM projects ORDER BY created_at, id")?;
    let projects = stmt
        .query_map([], project_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(projects)
}

// ---------------------------------------------------------------- environments

fn environment_from_row(row: &Row) -> rusqlite::Result<Environment> {
    let kind: String = row.get("kind")?;
    Ok(Environment {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        name: row.get("name")?,
        kind: if kind == "preview" {
            EnvironmentKind::Preview
        } else {
            EnvironmentKind::LongLived
        },
        branch: row.get("branch")?,
        pull_request: row.get::<_, Option<i64>>("pull_request")?.map(|n| n as u64),
        auto_deploy: row.get("auto_deploy")?,
        created_at: time(row.get("created_at")?),
    })
}

fn validate_branch_rule(rule: &str) -> Result<(), ApiError> {
    require_non_empty("branch", rule)?;
    Glob::new(rule).map(|_| ()).map_err(|e| {
        ApiError::invalid_field(
            "branch",
            format!("{rule:?} is not a valid branch glob: {e}"),
        )
    })
}

fn branch_matches(rule: &str, branch: &str) -> bool {
    rule == branch
        || Glob::new(rule)
            .map(|glob| glob.compile_matcher().is_match(branch))
            .unwrap_or(false)
}

pub fn create_environment(
    conn: &mut Connection,
    project_id: &str,
    new: CreateEnvironment,
) -> Result<Environment, ApiError> {
    require_non_empty("name", &new.name)?;
    validate_branch_rule(&new.branch)?;
    let tx = conn.transaction()?;
    get_project_in(&tx, project_id)?;
    let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM environments WHERE project_id = ?1 AND name = ?2 AND removed_at IS NULL)",
        params![project_id, new.name],
        |row| row.get(0),
    )?;
    if taken {
        return Err(ApiError::Conflict(format!(
            "project {project_id} already has an environment named {:?}",
            new.name
        )));
    }
    let id = new_id("env");
    tx.execute(
        "INSERT INTO environments (id, project_id, name, kind, branch, auto_deploy, created_at)
         VALUES (?1, ?2, ?3, 'long_lived', ?4, ?5, ?6)",
        params![
            id,
            project_id,
            new.name,
            new.branch,
            new.auto_deploy,
            now_ms()
        ],
    )?;
    let environment = get_environment_in(&tx, &id)?;
    tx.commit()?;
    Ok(environment)
}

fn get_environment_in(conn: &Connection, id: &str) -> Result<Environment, ApiError> {
    conn.query_row(
        "SELECT * FROM environments WHERE id = ?1 AND removed_at IS NULL",
        [id],
        environment_from_row,
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("environment", id))
}

pub fn get_environment(conn: &mut Connection, id: &str) -> Result<Environment, ApiError> {
    get_environment_in(conn, id)
}

pub fn list_environments(
    conn: &mut Connection,
    project_id: &str,
) -> Result<Vec<Environment>, ApiError> {
    get_project_in(conn, project_id)?;
    let mut stmt = conn.prepare(
        "SELECT * FROM environments WHERE project_id = ?1 AND removed_at IS NULL ORDER BY created_at, id",
    )?;
    let environments = stmt
        .query_map([project_id], environment_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(environments)
}

pub fn update_environment(
    conn: &mut Connection,
    id: &str,
    update: UpdateEnvironment,
) -> Result<Environment, ApiError> {
    let tx = conn.transaction()?;
    let environment = get_environment_in(&tx, id)?;
    if let Some(branch) = &update.branch {
        if environment.kind == EnvironmentKind::Preview {
            return Err(ApiError::Conflict(format!(
                "environment {id} is a pull-request preview; its branch follows the pull request"
            )));
        }
        validate_branch_rule(branch)?;
        tx.execute(
            "UPDATE environments SET branch = ?1 WHERE id = ?2",
            params![branch, id],
        )?;
    }
    if let Some(auto_deploy) = update.auto_deploy {
        tx.execute(
            "UPDATE environments SET auto_deploy = ?1 WHERE id = ?2",
            params![auto_deploy, id],
        )?;
    }
    let environment = get_environment_in(&tx, id)?;
    tx.commit()?;
    Ok(environment)
}

fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn set_variables(
    conn: &mut Connection,
    environment_id: &str,
    variables: Vec<EnvVar>,
) -> Result<Vec<VariableView>, ApiError> {
    for (index, variable) in variables.iter().enumerate() {
        if !valid_variable_name(&variable.name) {
            return Err(ApiError::invalid_field(
                &format!("variables[{index}].name"),
                format!(
                    "{:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    variable.name
                ),
            ));
        }
    }
    let tx = conn.transaction()?;
    get_environment_in(&tx, environment_id)?;
    tx.execute(
        "DELETE FROM variables WHERE environment_id = ?1",
        [environment_id],
    )?;
    for variable in &variables {
        tx.execute(
            "INSERT OR REPLACE INTO variables (environment_id, name, value, secret) VALUES (?1, ?2, ?3, ?4)",
            params![environment_id, variable.name, variable.value, variable.secret],
        )?;
    }
    tx.commit()?;
    list_variables(conn, environment_id)
}

fn variables_in(conn: &Connection, environment_id: &str) -> Result<Vec<EnvVar>, ApiError> {
    let mut stmt = conn.prepare(
        "SELECT name, value, secret FROM variables WHERE environment_id = ?1 ORDER BY name",
    )?;
    let variables = stmt
        .query_map([environment_id], |row| {
            Ok(EnvVar {
                name: row.get(0)?,
                value: row.get(1)?,
                secret: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(variables)
}

pub fn list_variables(
    conn: &mut Connection,
    environment_id: &str,
) -> Result<Vec<VariableView>, ApiError> {
    get_environment_in(conn, environment_id)?;
    Ok(variables_in(conn, environment_id)?
        .into_iter()
        .map(|variable| VariableView {
            value: (!variable.secret).then_some(variable.value),
            name: variable.name,
            secret: variable.secret,
        })
        .collect())
}

// ---------------------------------------------------------------- deployments

fn deployment_from_row(row: &Row) -> rusqlite::Result<Deployment> {
    let detail: Option<String> = row.get("detail")?;
    Ok(Deployment {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        environment_id: row.get("environment_id")?,
        commit_sha: row.get("commit_sha")?,
        branch: row.get("branch")?,
        author: row.get("author")?,
        message: row.get("message")?,
        status: parse_status(&row.get::<_, String>("status")?)?,
        backend_status: parse_component(&row.get::<_, String>("backend_status")?),
        storefront_status: parse_component(&row.get::<_, String>("storefront_status")?),
        reason: row.get("reason")?,
        detail: detail.and_then(|text| serde_json::from_str(&text).ok()),
        redeploy_of: row.get("redeploy_of")?,
        attempts: row.get("attempts")?,
        current_job_id: row.get("current_job_id")?,
        agent_id: row.get("agent_id")?,
        created_at: time(row.get("created_at")?),
        updated_at: time(row.get("updated_at")?),
        transitions: Vec::new(),
        artifacts: Vec::new(),
    })
}

fn with_history(conn: &Connection, mut deployment: Deployment) -> Result<Deployment, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, at, reason FROM transitions WHERE deployment_id = ?1 ORDER BY seq",
    )?;
    deployment.transitions = stmt
        .query_map([&deployment.id], |row| {
            Ok(Transition {
                status: parse_status(&row.get::<_, String>(0)?)?,
                at: time(row.get(1)?),
                reason: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    deployment.artifacts = artifacts_of(conn, &deployment.id)?;
    Ok(deployment)
}

fn get_deployment_in(conn: &Connection, id: &str) -> Result<Deployment, ApiError> {
    let deployment = conn
        .query_row(
            "SELECT * FROM deployments WHERE id = ?1",
            [id],
            deployment_from_row,
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("deployment", id))?;
    with_history(conn, deployment)
}

pub fn get_deployment(conn: &mut Connection, id: &str) -> Result<Deployment, ApiError> {
    get_deployment_in(conn, id)
}

#[derive(Debug, Default)]
pub struct DeploymentFilter {
    pub project_id: Option<String>,
    pub environment_id: Option<String>,
    pub limit: u32,
}

pub fn list_deployments(
    conn: &mut Connection,
    filter: DeploymentFilter,
) -> Result<Vec<Deployment>, ApiError> {
    let mut stmt = conn.prepare(
        "SELECT * FROM deployments
         WHERE (?1 IS NULL OR project_id = ?1) AND (?2 IS NULL OR environment_id = ?2)
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows: Vec<Deployment> = stmt
        .query_map(
            params![filter.project_id, filter.environment_id, filter.limit],
            deployment_from_row,
        )?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|deployment| with_history(conn, deployment))
        .collect()
}

/// Moves a deployment from `from` to `to`, or refuses with both statuses named.
fn set_status(
    tx: &Transaction,
    deployment_id: &str,
    from: DeploymentStatus,
    to: DeploymentStatus,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    check_transition(from, to).map_err(|_| ApiError::IllegalTransition {
        deployment_id: deployment_id.to_owned(),
        from,
        to,
    })?;
    let now = now_ms();
    let changed = tx.execute(
        "UPDATE deployments SET status = ?1, reason = ?2, updated_at = ?3 WHERE id = ?4 AND status = ?5",
        params![to.as_str(), reason, now, deployment_id, from.as_str()],
    )?;
    if changed != 1 {
        return Err(ApiError::Conflict(format!(
            "deployment {deployment_id} changed status while this request ran; retry"
        )));
    }
    tx.execute(
        "INSERT INTO transitions (deployment_id, status, at, reason) VALUES (?1, ?2, ?3, ?4)",
        params![deployment_id, to.as_str(), now, reason],
    )?;
    Ok(())
}

/// Components still pending or building take `to` when the build ends early.
fn settle_components(
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

fn finish_current_job(tx: &Transaction, deployment_id: &str) -> Result<(), ApiError> {
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

fn cancel_build(tx: &Transaction, deployment_id: &str, reason: &str) -> Result<(), ApiError> {
    let from = parse_status(&tx.query_row(
        "SELECT status FROM deployments WHERE id = ?1",
        [deployment_id],
        |row| row.get::<_, String>(0),
    )?)?;
    set_status(
        tx,
        deployment_id,
        from,
        DeploymentStatus::BuildCanceled,
        Some(reason),
    )?;
    settle_components(tx, deployment_id, ComponentStatus::Canceled)?;
    finish_current_job(tx, deployment_id)
}

fn pending_builds(tx: &Transaction, environment_id: &str) -> Result<Vec<String>, ApiError> {
    let mut stmt = tx.prepare(
        "SELECT id FROM deployments WHERE environment_id = ?1 AND status IN ('queued', 'building') ORDER BY seq",
    )?;
    let ids = stmt
        .query_map([environment_id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

struct NewDeployment<'a> {
    project_id: &'a str,
    environment_id: &'a str,
    commit_sha: &'a str,
    branch: &'a str,
    author: &'a str,
    message: &'a str,
    redeploy_of: Option<&'a str>,
}

/// Queues a deployment and cancels every older one of the same environment that is
/// still queued or building: a newer commit wins at once.
fn queue_deployment(
    tx: &Transaction,
    new: NewDeployment,
    outcome: &mut EventOutcome,
) -> Result<(), ApiError> {
    let id = new_id("dpl");
    let short_sha = &new.commit_sha[..new.commit_sha.len().min(7)];
    for older in pending_builds(tx, new.environment_id)? {
        cancel_build(
            tx,
            &older,
            &format!("superseded by deployment {id} (commit {short_sha})"),
        )?;
        outcome.canceled.push(older);
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO deployments (id, project_id, environment_id, commit_sha, branch, author, message,
                                  status, backend_status, storefront_status, redeploy_of, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 'pending', 'pending', ?8, ?9, ?9)",
        params![
            id,
            new.project_id,
            new.environment_id,
            new.commit_sha,
            new.branch,
            new.author,
            new.message,
            new.redeploy_of,
            now
        ],
    )?;
    tx.execute(
        "INSERT INTO transitions (deployment_id, status, at) VALUES (?1, 'queued', ?2)",
        params![id, now],
    )?;
    outcome.deployments.push(get_deployment_in(tx, &id)?);
    Ok(())
}

fn validate_sha(sha: &str) -> Result<(), ApiError> {
    let hex = sha.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex && (sha.len() == 40 || sha.len() == 64)) {
        return Err(ApiError::invalid_field(
            "sha",
            format!("{sha:?} is not a full commit id (40 or 64 hex characters)"),
        ));
    }
    Ok(())
}

fn projects_for_repository(tx: &Transaction, repository: &str) -> Result<Vec<Project>, ApiError> {
    let wanted = normalize_repository(repository);
    let mut stmt = tx.prepare("SELECT * FROM projects ORDER BY created_at")?;
    let projects: Vec<Project> = stmt
        .query_map([], project_from_row)?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|project| normalize_repository(&project.repository_url) == wanted)
        .collect();
    if projects.is_empty() {
        return Err(ApiError::NotFound {
            kind: "project for repository",
            id: repository.to_owned(),
        });
    }
    Ok(projects)
}

pub fn on_push(conn: &mut Connection, push: PushEvent) -> Result<EventOutcome, ApiError> {
    require_non_empty("branch", &push.branch)?;
    validate_sha(&push.sha)?;
    let tx = conn.transaction()?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
    };
    for project in projects_for_repository(&tx, &push.repository)? {
        let environments: Vec<Environment> = tx
            .prepare(
                "SELECT * FROM environments WHERE project_id = ?1 AND kind = 'long_lived' AND removed_at IS NULL ORDER BY created_at",
            )?
            .query_map([&project.id], environment_from_row)?
            .collect::<Result<_, _>>()?;
        for environment in environments
            .iter()
            .filter(|environment| branch_matches(&environment.branch, &push.branch))
        {
            queue_deployment(
                &tx,
                NewDeployment {
                    project_id: &project.id,
                    environment_id: &environment.id,
                    commit_sha: &push.sha,
                    branch: &push.branch,
                    author: &push.author,
                    message: &push.message,
                    redeploy_of: None,
                },
                &mut outcome,
            )?;
        }
    }
    tx.commit()?;
    Ok(outcome)
}

pub fn on_pull_request(
    conn: &mut Connection,
    event: PullRequestEvent,
) -> Result<EventOutcome, ApiError> {
    require_non_empty("branch", &event.branch)?;
    validate_sha(&event.sha)?;
    let tx = conn.transaction()?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
    };
    for project in projects_for_repository(&tx, &event.repository)? {
        let preview = tx
            .query_row(
                "SELECT * FROM environments WHERE project_id = ?1 AND kind = 'preview' AND pull_request = ?2 AND removed_at IS NULL",
                params![project.id, event.number as i64],
                environment_from_row,
            )
            .optional()?;
        match event.action {
            PullRequestAction::Closed => {
                let Some(preview) = preview else { continue };
                for pending in pending_builds(&tx, &preview.id)? {
                    cancel_build(
                        &tx,
                        &pending,
                        &format!("pull request #{} was closed", event.number),
                    )?;
                    outcome.canceled.push(pending);
                }
                tx.execute(
                    "UPDATE environments SET removed_at = ?1 WHERE id = ?2",
                    params![now_ms(), preview.id],
                )?;
            }
            PullRequestAction::Opened
            | PullRequestAction::Reopened
            | PullRequestAction::Synchronize => {
                let environment_id = match preview {
                    Some(preview) => {
                        tx.execute(
                            "UPDATE environments SET branch = ?1 WHERE id = ?2",
                            params![event.branch, preview.id],
                        )?;
                        preview.id
                    }
                    None => {
                        let id = new_id("env");
                        tx.execute(
                            "INSERT INTO environments (id, project_id, name, kind, branch, pull_request, auto_deploy, created_at)
                             VALUES (?1, ?2, ?3, 'preview', ?4, ?5, 1, ?6)",
                            params![id, project.id, format!("pr-{}", event.number), event.branch, event.number as i64, now_ms()],
                        )?;
                        id
                    }
                };
                queue_deployment(
                    &tx,
                    NewDeployment {
                        project_id: &project.id,
                        environment_id: &environment_id,
                        commit_sha: &event.sha,
                        branch: &event.branch,
                        author: &event.author,
                        message: &event.message,
                        redeploy_of: None,
                    },
                    &mut outcome,
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(outcome)
}

pub fn redeploy(conn: &mut Connection, id: &str) -> Result<EventOutcome, ApiError> {
    let tx = conn.transaction()?;
    let original = get_deployment_in(&tx, id)?;
    get_environment_in(&tx, &original.environment_id).map_err(|_| {
        ApiError::Conflict(format!(
            "deployment {id} belongs to environment {}, which was removed",
            original.environment_id
        ))
    })?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
    };
    queue_deployment(
        &tx,
        NewDeployment {
            project_id: &original.project_id,
            environment_id: &original.environment_id,
            commit_sha: &original.commit_sha,
            branch: &original.branch,
            author: &original.author,
            message: &original.message,
            redeploy_of: Some(id),
        },
        &mut outcome,
    )?;
    tx.commit()?;
    Ok(outcome)
}

// ---------------------------------------------------------------- jobs

/// Policy the store needs from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct JobPolicy {
    pub lease_ms: i64,
    pub job_timeout_seconds: u64,
    /// Claims of one deployment before a lost agent fails it ("agent lost").
    pub max_attempts: u32,
}

/// Hands the oldest queued deployment this agent's labels allow to the agent.
pub fn claim(
    conn: &mut Connection,
    agent: &AgentRow,
    policy: JobPolicy,
) -> Result<Option<Job>, ApiError> {
    let tx = conn.transaction()?;
    let candidates: Vec<(String, String)> = tx
        .prepare(
            "SELECT d.id, p.agent_labels FROM deployments d JOIN projects p ON p.id = d.project_id
             WHERE d.status = 'queued' ORDER BY d.seq LIMIT 500",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let Some((deployment_id, _)) = candidates.into_iter().find(|(_, labels)| {
        json_list(labels)
            .iter()
            .all(|label| agent.labels.contains(label))
    }) else {
        return Ok(None);
    };
    let deployment = get_deployment_in(&tx, &deployment_id)?;
    let project = get_project_in(&tx, &deployment.project_id)?;
    let repository_token: Option<String> = tx.query_row(
        "SELECT repository_token FROM projects WHERE id = ?1",
        [&project.id],
        |row| row.get(0),
    )?;
    let attempt = deployment.attempts + 1;
    let job_id = new_id("job");
    let now = now_ms();
    tx.execute(
        "INSERT INTO jobs (id, deployment_id, agent_id, attempt, claimed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![job_id, deployment_id, agent.id, attempt, now],
    )?;
    set_status(
        &tx,
        &deployment_id,
        deployment.status,
        DeploymentStatus::Building,
        None,
    )?;
    tx.execute(
        "UPDATE deployments SET attempts = ?1, current_job_id = ?2, agent_id = ?3, lease_expires_at = ?4,
                                backend_status = 'pending', storefront_status = 'pending'
         WHERE id = ?5",
        params![attempt, job_id, agent.id, now + policy.lease_ms, deployment_id],
    )?;
    let env = variables_in(&tx, &deployment.environment_id)?;
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
    }))
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub deployment_id: String,
    pub agent_id: String,
    pub finished: bool,
}

fn job_in(conn: &Connection, job_id: &str) -> Result<JobRow, ApiError> {
    conn.query_row(
        "SELECT id, deployment_id, agent_id, finished_at IS NOT NULL FROM jobs WHERE id = ?1",
        [job_id],
        |row| {
            Ok(JobRow {
                id: row.get(0)?,
                deployment_id: row.get(1)?,
                agent_id: row.get(2)?,
                finished: row.get(3)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("job", job_id))
}

pub fn get_job(conn: &mut Connection, job_id: &str) -> Result<JobRow, ApiError> {
    job_in(conn, job_id)
}

/// The job, if it belongs to this agent.
fn owned_job(conn: &Connection, agent_id: &str, job_id: &str) -> Result<JobRow, ApiError> {
    let job = job_in(conn, job_id)?;
    if job.agent_id != agent_id {
        return Err(ApiError::Forbidden(format!(
            "job {job_id} belongs to another agent"
        )));
    }
    Ok(job)
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
    let tx = conn.transaction()?;
    let job = owned_job(&tx, agent_id, job_id)?;
    let deployment = get_deployment_in(&tx, &job.deployment_id)?;
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
    } else if deployment.status == DeploymentStatus::Building {
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

/// What a status update did, for the caller's follow-up work.
#[derive(Debug)]
pub struct StatusApplied {
    pub deployment: Deployment,
    pub start_deploy: bool,
}

pub fn report_status(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    update: JobStatusUpdate,
) -> Result<StatusApplied, ApiError> {
    use DeploymentStatus::*;
    if !matches!(
        update.status,
        Building | AwaitingDeployment | BuildFailed | BuildCanceled
    ) {
        return Err(ApiError::Forbidden(format!(
            "agents report building, awaiting_deployment, build_failed or build_canceled, not {}",
            update.status
        )));
    }
    let tx = conn.transaction()?;
    let job = owned_job(&tx, agent_id, job_id)?;
    let deployment = get_deployment_in(&tx, &job.deployment_id)?;
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
    // A repeated report (a retry after a lost response) is accepted as it is.
    if deployment.status != update.status {
        set_status(
            &tx,
            &deployment.id,
            deployment.status,
            update.status,
            update.reason.as_deref(),
        )?;
    } else if update.reason.is_some() {
        tx.execute(
            "UPDATE deployments SET reason = ?1 WHERE id = ?2",
            params![update.reason, deployment.id],
        )?;
    }
    if let Some(backend) = update.backend {
        tx.execute(
            "UPDATE deployments SET backend_status = ?1 WHERE id = ?2",
            params![backend.as_str(), deployment.id],
        )?;
    }
    if let Some(storefront) = update.storefront {
        tx.execute(
            "UPDATE deployments SET storefront_status = ?1 WHERE id = ?2",
            params![storefront.as_str(), deployment.id],
        )?;
    }
    if let Some(detail) = &update.detail {
        tx.execute(
            "UPDATE deployments SET detail = ?1, updated_at = ?2 WHERE id = ?3",
            params![to_json(detail), now_ms(), deployment.id],
        )?;
    }
    match update.status {
        BuildFailed => settle_components(&tx, &deployment.id, ComponentStatus::Failed)?,
        BuildCanceled => settle_components(&tx, &deployment.id, ComponentStatus::Canceled)?,
        _ => {}
    }
    if update.status != Building {
        finish_current_job(&tx, &deployment.id)?;
    }
    let auto_deploy: bool = tx.query_row(
        "SELECT auto_deploy FROM environments WHERE id = ?1",
        [&deployment.environment_id],
        |row| row.get(0),
    )?;
    let deployment = get_deployment_in(&tx, &deployment.id)?;
    tx.commit()?;
    Ok(StatusApplied {
        start_deploy: auto_deploy && deployment.status == AwaitingDeployment,
        deployment,
    })
}

/// Jobs whose agent stopped renewing: queued again once, then failed as lost.
pub fn expire_leases(conn: &mut Connection, policy: JobPolicy) -> Result<Vec<String>, ApiError> {
    let tx = conn.transaction()?;
    let expired: Vec<(String, u32)> = tx
        .prepare(
            "SELECT id, attempts FROM deployments WHERE status = 'building' AND lease_expires_at < ?1",
        )?
        .query_map([now_ms()], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut touched = Vec::new();
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

// ---------------------------------------------------------------- deploy step

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
    result: Result<(), String>,
) -> Result<Deployment, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    match result {
        Ok(()) => {
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
        Err(reason) => {
            set_status(
                &tx,
                id,
                deployment.status,
                DeploymentStatus::DeployFailed,
                Some(&reason),
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

// ---------------------------------------------------------------- artifacts and logs

fn artifacts_of(conn: &Connection, deployment_id: &str) -> Result<Vec<StoredArtifact>, ApiError> {
    // The artifacts of the job that currently holds (or last held) the deployment.
    let mut stmt = conn.prepare_cached(
        "SELECT a.name, a.size, a.sha256, a.job_id, a.created_at FROM artifacts a
         WHERE a.deployment_id = ?1
           AND a.job_id = (SELECT j.id FROM jobs j WHERE j.deployment_id = ?1 ORDER BY j.attempt DESC LIMIT 1)
         ORDER BY a.name",
    )?;
    let artifacts = stmt
        .query_map([deployment_id], |row| {
            Ok(StoredArtifact {
                descriptor: ArtifactDescriptor {
                    name: row.get(0)?,
                    size: row.get::<_, i64>(1)? as u64,
                    sha256: row.get(2)?,
                },
                job_id: row.get(3)?,
                created_at: time(row.get(4)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(artifacts)
}

pub fn artifact(
    conn: &mut Connection,
    deployment_id: &str,
    name: &str,
) -> Result<StoredArtifact, ApiError> {
    get_deployment_in(conn, deployment_id)?
        .artifacts
        .into_iter()
        .find(|artifact| artifact.descriptor.name == name)
        .ok_or_else(|| ApiError::not_found("artifact", format!("{deployment_id}/{name}")))
}

pub fn create_upload_ticket(
    conn: &mut Connection,
    agent_id: &str,
    job_id: &str,
    descriptor: &ArtifactDescriptor,
    token_hash: &str,
    expires_at: i64,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    let job = owned_job(&tx, agent_id, job_id)?;
    tx.execute(
        "INSERT INTO upload_tickets (token_hash, job_id, deployment_id, name, size, sha256, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            token_hash,
            job.id,
            job.deployment_id,
            descriptor.name,
            descriptor.size as i64,
            descriptor.sha256,
            expires_at
        ],
    )?;
    tx.commit()?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct UploadTicket {
    pub job_id: String,
    pub deployment_id: String,
    pub descriptor: ArtifactDescriptor,
}

pub fn upload_ticket(conn: &mut Connection, token_hash: &str) -> Result<UploadTicket, ApiError> {
    conn.query_row(
        "SELECT job_id, deployment_id, name, size, sha256 FROM upload_tickets WHERE token_hash = ?1 AND expires_at > ?2",
        params![token_hash, now_ms()],
        |row| {
            Ok(UploadTicket {
                job_id: row.get(0)?,
                deployment_id: row.get(1)?,
                descriptor: ArtifactDescriptor {
                    name: row.get(2)?,
                    size: row.get::<_, i64>(3)? as u64,
                    sha256: row.get(4)?,
                },
            })
        },
    )
    .optional()?
    .ok_or_else(|| {
        ApiError::Unauthorized(
            "upload URL unknown or expired; ask for a new one with POST /api/v1/agent/jobs/{job_id}/artifacts".to_owned(),
        )
    })
}

pub fn record_artifact(
    conn: &mut Connection,
    token_hash: &str,
    ticket: &UploadTicket,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO artifacts (deployment_id, job_id, name, size, sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ticket.deployment_id,
            ticket.job_id,
            ticket.descriptor.name,
            ticket.descriptor.size as i64,
            ticket.descriptor.sha256,
            now_ms()
        ],
    )?;
    tx.execute(
        "DELETE FROM upload_tickets WHERE token_hash = ?1",
        [token_hash],
    )?;
    tx.commit()?;
    Ok(())
}

/// The job whose logs a reader sees: the one named, or the deployment's latest.
pub fn job_for_logs(
    conn: &mut Connection,
    deployment_id: &str,
    job_id: Option<&str>,
) -> Result<Option<JobRow>, ApiError> {
    get_deployment_in(conn, deployment_id)?;
    if let Some(job_id) = job_id {
        let job = job_in(conn, job_id)?;
        if job.deployment_id != deployment_id {
            return Err(ApiError::not_found(
                "job",
                format!("{deployment_id}/{job_id}"),
            ));
        }
        return Ok(Some(job));
    }
    let latest: Option<String> = conn
        .query_row(
            "SELECT id FROM jobs WHERE deployment_id = ?1 ORDER BY attempt DESC LIMIT 1",
            [deployment_id],
            |row| row.get(0),
        )
        .optional()?;
    latest.map(|id| job_in(conn, &id)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_compare_loosely() {
        assert_eq!(
            normalize_repository("https://Git.example/Shop.git/"),
            normalize_repository("https://git.example/shop")
        );
    }

    #[test]
    fn branch_rules_are_names_or_globs() {
        assert!(branch_matches("main", "main"));
        assert!(!branch_matches("main", "main2"));
        assert!(branch_matches("release/*", "release/1.2"));
        assert!(!branch_matches("release/*", "feature/x"));
    }

    #[test]
    fn variable_names_follow_posix() {
        assert!(valid_variable_name("JWT_SECRET"));
        assert!(valid_variable_name("_X1"));
        assert!(!valid_variable_name("1X"));
        assert!(!valid_variable_name("A-B"));
        assert!(!valid_variable_name(""));
    }
}
