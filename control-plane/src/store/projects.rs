//! Projects, their environments (a branch rule each; previews per pull request)
//! and environments' build variables.

use kiln_protocol::{
    CreateEnvironment, CreateProject, EnvVar, Environment, EnvironmentKind, Project,
    UpdateEnvironment, UpdateProject, VariableView,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use globset::Glob;

use super::{json_list, new_id, now_ms, time, to_json};
use crate::error::ApiError;

pub(super) fn validate_relative_path(field: &str, path: &str) -> Result<(), ApiError> {
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

pub(super) fn require_non_empty(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    Ok(())
}

pub(super) fn project_from_row(row: &Row) -> rusqlite::Result<Project> {
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

pub(super) fn environment_from_row(row: &Row) -> rusqlite::Result<Environment> {
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

pub(super) fn validate_branch_rule(rule: &str) -> Result<(), ApiError> {
    require_non_empty("branch", rule)?;
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
    let environment = get_environment_in(&tx, id)?;
    tx.commit()?;
    Ok(environment)
}

pub(super) fn valid_variable_name(name: &str) -> bool {
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

pub(super) fn variables_in(
    conn: &Connection,
    environment_id: &str,
) -> Result<Vec<EnvVar>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::shop;

    #[test]
    fn projects_refuse_bad_paths_empty_names_and_duplicates() {
        let (mut conn, project_id, _) = shop(&[]);
        let new = |name: &str, backend: &str| CreateProject {
            name: name.into(),
            repository_url: "https://git.example/x.git".into(),
            backend_path: backend.into(),
            storefront_path: None,
            agent_labels: vec![],
            repository_token: None,
            secret_scan: Default::default(),
        };
        for (name, backend, field) in [
            ("", ".", "name"),
            ("x", "/etc", "backend_path"),
            ("x", "a/../../b", "backend_path"),
        ] {
            let error = create_project(&mut conn, new(name, backend)).unwrap_err();
            assert!(error.to_string().contains(field), "{error}");
        }
        let error = create_project(&mut conn, new("shop", ".")).unwrap_err();
        assert!(matches!(error, ApiError::Conflict(_)), "{error}");
        let updated = update_project(
            &mut conn,
            &project_id,
            UpdateProject {
                secret_scan: Some(kiln_protocol::SecretScanSettings {
                    mode: kiln_protocol::SecretScanMode::Warn,
                    ..Default::default()
                }),
            },
        )
        .unwrap();
        assert_eq!(
            updated.secret_scan.mode,
            kiln_protocol::SecretScanMode::Warn
        );
        assert!(matches!(
            update_project(&mut conn, "prj_missing", UpdateProject::default()),
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

    #[test]
    fn variables_replace_the_set_and_secrets_are_never_shown() {
        let (mut conn, _, environment_id) = shop(&[]);
        let var = |name: &str, secret: bool| EnvVar {
            name: name.into(),
            value: format!("value of {name}"),
            secret,
        };
        let shown = set_variables(
            &mut conn,
            &environment_id,
            vec![var("A", false), var("JWT_SECRET", true)],
        )
        .unwrap();
        assert_eq!(shown[0].value.as_deref(), Some("value of A"));
        assert_eq!(
            (shown[1].name.as_str(), shown[1].value.as_deref()),
            ("JWT_SECRET", None)
        );
        assert_eq!(
            variables_in(&conn, &environment_id).unwrap()[1].value,
            "value of JWT_SECRET"
        );
        let error = set_variables(&mut conn, &environment_id, vec![var("1X", false)]).unwrap_err();
        assert!(error.to_string().contains("variables[0].name"), "{error}");
        set_variables(&mut conn, &environment_id, vec![]).unwrap();
        assert!(list_variables(&mut conn, &environment_id)
            .unwrap()
            .is_empty());
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
