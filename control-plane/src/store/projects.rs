//! Projects, their environments (a branch rule each; previews per pull request)
//! and environments' build variables.

use crate::db::sql::{params, Connection, OptionalExtension, Row};
use kiln_protocol::{
    validate, CreateEnvironment, CreateProject, Environment, EnvironmentKind, GitHostKind,
    GitHostSettings, GitHostView, Project, SecretScanSettings, UpdateEnvironment, UpdateProject,
};

use globset::Glob;

use super::values::{check, check_name, json_list, new_id, now_ms, time, to_json};
use crate::error::ApiError;

/// The settings every project must get right, whether created or updated.
struct ProjectFields<'a> {
    repository_url: Option<&'a str>,
    backend_path: Option<&'a str>,
    storefront_path: Option<&'a str>,
    agent_labels: Option<&'a [String]>,
    repository_token: Option<&'a str>,
    secret_scan: Option<&'a SecretScanSettings>,
    git_host: Option<&'a GitHostSettings>,
    long_lived_agent_labels: Option<&'a [String]>,
    preview_agent_labels: Option<&'a [String]>,
}

pub(super) fn check_labels(field: &str, labels: &[String]) -> Result<(), ApiError> {
    if labels.len() > validate::MAX_LABELS {
        return Err(ApiError::invalid_field(
            field,
            format!("{} labels; at most {}", labels.len(), validate::MAX_LABELS),
        ));
    }
    for (index, label) in labels.iter().enumerate() {
        check_name(&format!("{field}[{index}]"), label, validate::MAX_NAME)?;
    }
    Ok(())
}

impl ProjectFields<'_> {
    /// Refuses the first field that is not well formed, naming it.
    fn check(&self, rules: ProjectRules) -> Result<(), ApiError> {
        if let Some(url) = self.repository_url {
            check(
                "repository_url",
                validate::repository_url(url, rules.allow_local_repositories),
            )?;
        }
        if let Some(path) = self.backend_path {
            check("backend_path", validate::relative_path(path))?;
        }
        if let Some(path) = self.storefront_path {
            check("storefront_path", validate::relative_path(path))?;
        }
        if let Some(labels) = self.agent_labels {
            check_labels("agent_labels", labels)?;
        }
        if let Some(labels) = self.long_lived_agent_labels {
            check_labels("long_lived_agent_labels", labels)?;
        }
        if let Some(labels) = self.preview_agent_labels {
            check_labels("preview_agent_labels", labels)?;
        }
        if let Some(token) = self.repository_token {
            check(
                "repository_token",
                validate::text(token, validate::MAX_TOKEN, false),
            )?;
        }
        if let Some(host) = self.git_host {
            check(
                "git_host.api_url",
                validate::git_host_api_url(&host.api_url, rules.allow_private_git_hosts),
            )?;
            if let Some(token) = &host.token {
                check(
                    "git_host.token",
                    validate::text(token, validate::MAX_TOKEN, false),
                )?;
            }
        }
        if let Some(settings) = self.secret_scan {
            let lists = [
                ("secret_scan.allow_paths", &settings.allow_paths),
                ("secret_scan.allow_rules", &settings.allow_rules),
                (
                    "secret_scan.allow_fingerprints",
                    &settings.allow_fingerprints,
                ),
            ];
            for (field, list) in lists {
                if list.len() > validate::MAX_ALLOWLIST {
                    return Err(ApiError::invalid_field(
                        field,
                        format!(
                            "{} entries; at most {}",
                            list.len(),
                            validate::MAX_ALLOWLIST
                        ),
                    ));
                }
                for entry in list {
                    check(
                        field,
                        validate::text(entry, validate::MAX_ALLOWLIST_ENTRY, false),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// What the server's configuration says about projects.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectRules {
    /// Accept `file://` and absolute-path repository URLs (`--allow-local-repositories`).
    pub allow_local_repositories: bool,
    /// Accept a git host API on loopback or a private network
    /// (`--allow-private-git-hosts`).
    pub allow_private_git_hosts: bool,
}

pub(super) fn project_from_row(row: &Row) -> crate::db::sql::Result<Project> {
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
        submodules: row.get("submodules")?,
        git_host: git_host_of(row)?.map(|(kind, api_url, token)| GitHostView {
            kind,
            api_url,
            has_token: token.is_some(),
        }),
        webhook_secret: None,
        long_lived_agent_labels: json_list(&row.get::<_, String>("long_lived_agent_labels")?),
        preview_agent_labels: json_list(&row.get::<_, String>("preview_agent_labels")?),
        created_at: time(row.get("created_at")?),
    })
}

/// A project row's git host: kind, API URL and token.
fn git_host_of(row: &Row) -> crate::db::sql::Result<Option<(GitHostKind, String, Option<String>)>> {
    let kind: Option<String> = row.get("git_host_kind")?;
    let Some(kind) = kind.and_then(|kind| kind.parse::<GitHostKind>().ok()) else {
        return Ok(None);
    };
    Ok(Some((
        kind,
        row.get::<_, Option<String>>("git_host_api_url")?
            .unwrap_or_default(),
        row.get("git_host_token")?,
    )))
}

/// Where a project's commit statuses go, with the token: for the outbox only.
#[derive(Debug, Clone)]
pub struct GitHostAccess {
    pub kind: GitHostKind,
    pub api_url: String,
    pub token: Option<String>,
}

pub fn git_host_access(
    conn: &Connection,
    project_id: &str,
) -> Result<Option<GitHostAccess>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT git_host_kind, git_host_api_url, git_host_token FROM projects WHERE id = ?1",
            [project_id],
            git_host_of,
        )
        .optional()?
        .flatten()
        .map(|(kind, api_url, token)| GitHostAccess {
            kind,
            api_url,
            token,
        }))
}

/// An environment's name and pull request, removed or not (reports about a
/// closed preview still name it).
pub fn environment_name(
    conn: &Connection,
    environment_id: &str,
) -> Result<(String, Option<u64>), ApiError> {
    conn.query_row(
        "SELECT name, pull_request FROM environments WHERE id = ?1",
        [environment_id],
        |row| Ok((row.get(0)?, row.get::<_, Option<i64>>(1)?.map(|n| n as u64))),
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("environment", environment_id))
}

/// A new webhook secret: 32 random bytes, hex.
fn new_webhook_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Gives the project a new webhook secret and returns the project with it, the
/// one time it is shown.
pub fn rotate_webhook_secret(conn: &mut Connection, id: &str) -> Result<Project, ApiError> {
    let secret = new_webhook_secret();
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE projects SET webhook_secret = ?1 WHERE id = ?2",
        params![secret, id],
    )?;
    let mut project = get_project_in(&tx, id)?;
    tx.commit()?;
    project.webhook_secret = Some(secret);
    Ok(project)
}

/// The projects building `repository` (by `validate::repository_key`), with
/// their webhook secrets, for a webhook to be checked against.
pub fn projects_with_secrets(
    conn: &Connection,
    repository_keys: &[String],
) -> Result<Vec<(Project, Option<String>)>, ApiError> {
    let mut stmt = conn.prepare("SELECT * FROM projects ORDER BY created_at, id")?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                project_from_row(row)?,
                row.get::<_, Option<String>>("webhook_secret")?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter(|(project, _)| {
            repository_keys.contains(&validate::repository_key(&project.repository_url))
        })
        .collect())
}

pub fn create_project(
    conn: &mut Connection,
    new: CreateProject,
    rules: ProjectRules,
) -> Result<Project, ApiError> {
    check_name("name", &new.name, validate::MAX_NAME)?;
    ProjectFields {
        repository_url: Some(new.repository_url.trim()),
        backend_path: Some(&new.backend_path),
        storefront_path: new.storefront_path.as_deref(),
        agent_labels: Some(&new.agent_labels),
        repository_token: new.repository_token.as_deref(),
        secret_scan: Some(&new.secret_scan),
        git_host: new.git_host.as_ref(),
        long_lived_agent_labels: Some(&new.long_lived_agent_labels),
        preview_agent_labels: Some(&new.preview_agent_labels),
    }
    .check(rules)?;
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
    let secret = new_webhook_secret();
    let host = new.git_host.as_ref();
    tx.execute(
        "INSERT INTO projects (id, name, repository_url, backend_path, storefront_path, agent_labels, repository_token, secret_scan, submodules, created_at,
                               webhook_secret, git_host_kind, git_host_api_url, git_host_token,
                               long_lived_agent_labels, preview_agent_labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            id,
            new.name,
            new.repository_url.trim(),
            new.backend_path,
            new.storefront_path,
            to_json(&new.agent_labels),
            new.repository_token,
            to_json(&new.secret_scan),
            new.submodules,
            now_ms(),
            secret,
            host.map(|host| host.kind.as_str()),
            host.map(|host| host.api_url.trim_end_matches('/')),
            host.and_then(|host| host.token.as_deref()),
            to_json(&new.long_lived_agent_labels),
            to_json(&new.preview_agent_labels),
        ],
    )?;
    let mut project = get_project_in(&tx, &id)?;
    tx.commit()?;
    // Shown this once; `POST /projects/{id}/webhook-secret` makes a new one.
    project.webhook_secret = Some(secret);
    Ok(project)
}

pub(super) fn get_project_in(conn: &Connection, id: &str) -> Result<Project, ApiError> {
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
    rules: ProjectRules,
) -> Result<Project, ApiError> {
    ProjectFields {
        repository_url: update.repository_url.as_deref().map(str::trim),
        backend_path: update.backend_path.as_deref(),
        storefront_path: update.storefront_path.as_deref(),
        agent_labels: update.agent_labels.as_deref(),
        repository_token: update.repository_token.as_deref(),
        secret_scan: update.secret_scan.as_ref(),
        git_host: update.git_host.as_ref(),
        long_lived_agent_labels: update.long_lived_agent_labels.as_deref(),
        preview_agent_labels: update.preview_agent_labels.as_deref(),
    }
    .check(rules)?;
    let tx = conn.transaction()?;
    token_follows_its_url(&tx, id, &update)?;
    // An unknown id updates nothing and is refused by the read below.
    let set = |column: &str, value: &dyn crate::db::sql::ToSql| {
        tx.execute(
            &format!("UPDATE projects SET {column} = ?1 WHERE id = ?2"),
            params![value, id],
        )
    };
    if let Some(settings) = &update.secret_scan {
        set("secret_scan", &to_json(settings))?;
    }
    if let Some(url) = &update.repository_url {
        set("repository_url", &url.trim())?;
    }
    if let Some(path) = &update.backend_path {
        set("backend_path", path)?;
    }
    if let Some(path) = &update.storefront_path {
        set("storefront_path", path)?;
    }
    if let Some(labels) = &update.agent_labels {
        set("agent_labels", &to_json(labels))?;
    }
    if let Some(labels) = &update.long_lived_agent_labels {
        set("long_lived_agent_labels", &to_json(labels))?;
    }
    if let Some(labels) = &update.preview_agent_labels {
        set("preview_agent_labels", &to_json(labels))?;
    }
    if let Some(token) = &update.repository_token {
        // "" builds without one.
        let token = (!token.is_empty()).then_some(token.as_str());
        set("repository_token", &token)?;
    }
    if let Some(submodules) = update.submodules {
        set("submodules", &submodules)?;
    }
    if let Some(host) = &update.git_host {
        set("git_host_kind", &host.kind.as_str())?;
        set("git_host_api_url", &host.api_url.trim_end_matches('/'))?;
        // A PATCH without a token keeps the one stored.
        if let Some(token) = &host.token {
            set("git_host_token", token)?;
        }
    }
    let project = get_project_in(&tx, id)?;
    tx.commit()?;
    Ok(project)
}

/// A stored token goes only where it was given for: an update that moves the
/// repository or the git host elsewhere must give that token again.
fn token_follows_its_url(
    tx: &crate::db::sql::Transaction,
    id: &str,
    update: &UpdateProject,
) -> Result<(), ApiError> {
    let Some((url, has_token, kind, api_url, has_host_token)) = tx
        .query_row(
            "SELECT repository_url, repository_token IS NOT NULL AND repository_token <> '',
                    git_host_kind, git_host_api_url, git_host_token IS NOT NULL
             FROM projects WHERE id = ?1",
            [id],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, bool>(4)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(());
    };
    let moves_repository = update
        .repository_url
        .as_deref()
        .is_some_and(|new| new.trim() != url);
    if moves_repository && has_token && update.repository_token.is_none() {
        return Err(ApiError::invalid_field(
            "repository_token",
            "is needed with a new repository_url: the stored token was given for the old URL and is never sent elsewhere; give the token for the new URL (or \"\" for none)",
        ));
    }
    if let Some(host) = &update.git_host {
        let moves_host = kind.as_deref() != Some(host.kind.as_str())
            || api_url.as_deref() != Some(host.api_url.trim_end_matches('/'));
        if moves_host && has_host_token && host.token.is_none() {
            return Err(ApiError::invalid_field(
                "git_host.token",
                "is needed with a new git_host kind or api_url: the stored token was given for the old host and is never sent elsewhere; give the token for the new host",
            ));
        }
    }
    Ok(())
}

pub fn list_projects(conn: &mut Connection) -> Result<Vec<Project>, ApiError> {
    let mut stmt = conn.prepare("SELECT * FROM projects ORDER BY created_at, id")?;
    let projects = stmt
        .query_map([], project_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(projects)
}

pub(super) fn environment_from_row(row: &Row) -> crate::db::sql::Result<Environment> {
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
        deploy: row
            .get::<_, Option<String>>("deploy")?
            .and_then(|json| serde_json::from_str(&json).ok()),
        require: row
            .get::<_, Option<String>>("require_policy")?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

pub(super) fn validate_branch_rule(rule: &str) -> Result<(), ApiError> {
    check_name("branch", rule, validate::MAX_BRANCH)?;
    Glob::new(rule).map(|_| ()).map_err(|e| {
        ApiError::invalid_field(
            "branch",
            format!("{rule:?} is not a valid branch glob: {e}"),
        )
    })
}

pub(super) fn branch_matches(rule: &str, branch: &str) -> bool {
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
    check_name("name", &new.name, validate::MAX_NAME)?;
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

pub(super) fn get_environment_in(conn: &Connection, id: &str) -> Result<Environment, ApiError> {
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
    if let Some(deploy) = &update.deploy {
        deploy
            .check()
            .map_err(|why| ApiError::invalid_field("deploy", why))?;
        tx.execute(
            "UPDATE environments SET deploy = ?1 WHERE id = ?2",
            params![to_json(deploy), id],
        )?;
    }
    if let Some(require) = &update.require {
        tx.execute(
            "UPDATE environments SET require_policy = ?1 WHERE id = ?2",
            params![to_json(require), id],
        )?;
    }
    let environment = get_environment_in(&tx, id)?;
    tx.commit()?;
    Ok(environment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::shop;

    #[test]
    fn projects_refuse_bad_paths_empty_names_and_duplicates() {
        let (mut conn, project_id, _) = shop(&[]);
        let new = |name: &str, backend: &str| CreateProject {
            backend_path: backend.into(),
            ..CreateProject::new(name, "https://git.example/x.git")
        };
        for (name, backend, field) in [
            ("", ".", "name"),
            ("x", "/etc", "backend_path"),
            ("x", "a/../../b", "backend_path"),
        ] {
            let error =
                create_project(&mut conn, new(name, backend), ProjectRules::default()).unwrap_err();
            assert!(error.to_string().contains(field), "{error}");
        }
        let error =
            create_project(&mut conn, new("shop", "."), ProjectRules::default()).unwrap_err();
        assert!(matches!(error, ApiError::Conflict(_)), "{error}");
        let updated = update_project(
            &mut conn,
            &project_id,
            UpdateProject {
                secret_scan: Some(kiln_protocol::SecretScanSettings {
                    mode: kiln_protocol::SecretScanMode::Warn,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ProjectRules::default(),
        )
        .unwrap();
        assert_eq!(
            updated.secret_scan.mode,
            kiln_protocol::SecretScanMode::Warn
        );
        assert!(matches!(
            update_project(
                &mut conn,
                "prj_missing",
                UpdateProject::default(),
                ProjectRules::default()
            ),
            Err(ApiError::NotFound { .. })
        ));
    }

    #[test]
    fn environments_have_unique_names_and_valid_branch_rules() {
        let (mut conn, project_id, environment_id) = shop(&[]);
        let new = |name: &str, branch: &str| CreateEnvironment {
            name: name.into(),
            branch: branch.into(),
            auto_deploy: false,
        };
        assert!(matches!(
            create_environment(&mut conn, &project_id, new("Production", "main")),
            Err(ApiError::Conflict(_))
        ));
        let error =
            create_environment(&mut conn, &project_id, new("Staging", "release/[")).unwrap_err();
        assert!(error.to_string().contains("branch"), "{error}");
        let staging =
            create_environment(&mut conn, &project_id, new("Staging", "release/*")).unwrap();
        assert_eq!(list_environments(&mut conn, &project_id).unwrap().len(), 2);
        let moved = update_environment(
            &mut conn,
            &environment_id,
            UpdateEnvironment {
                branch: Some("trunk".into()),
                auto_deploy: Some(true),
                deploy: None,
                require: None,
            },
        )
        .unwrap();
        assert_eq!((moved.branch.as_str(), moved.auto_deploy), ("trunk", true));
        assert_eq!(staging.kind, EnvironmentKind::LongLived);
    }

    #[test]
    fn branch_rules_are_names_or_globs() {
        assert!(branch_matches("main", "main"));
        assert!(!branch_matches("main", "main2"));
        assert!(branch_matches("release/*", "release/1.2"));
        assert!(!branch_matches("release/*", "feature/x"));
    }
}
