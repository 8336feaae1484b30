//! An environment's variables: each one's value, whether it is secret
//! (never shown back), and whether it reaches the build, the release's
//! containers or both; `.env` import and export.

use kiln_protocol::{validate, EnvVar, VariableInput, VariableView};

use super::projects::get_environment_in;
use super::values::check;
use crate::db::sql::{params, Connection, Row, Transaction};
use crate::error::ApiError;

/// Names Kiln sets itself in a release's containers: the server and the
/// worker are told apart by `MEDUSA_WORKER_MODE`, listen on `PORT`, and run
/// with `NODE_ENV=production`.
pub const RESERVED_VARIABLES: &[&str] = &["MEDUSA_WORKER_MODE", "PORT", "NODE_ENV"];

pub fn set_variables(
    conn: &mut Connection,
    environment_id: &str,
    variables: Vec<VariableInput>,
) -> Result<Vec<VariableView>, ApiError> {
    check_variables(&variables, |index, part| {
        format!("variables[{index}].{part}")
    })?;
    let tx = conn.transaction()?;
    get_environment_in(&tx, environment_id)?;
    replace_variables(&tx, environment_id, &variables)?;
    tx.commit()?;
    list_variables(conn, environment_id)
}

/// Every variable well formed and none reserved; `field` names the part
/// that is not, by its index.
fn check_variables(
    variables: &[VariableInput],
    field: impl Fn(usize, &str) -> String,
) -> Result<(), ApiError> {
    if variables.len() > validate::MAX_VARIABLES {
        return Err(ApiError::invalid_field(
            "variables",
            format!(
                "{} variables; at most {}",
                variables.len(),
                validate::MAX_VARIABLES
            ),
        ));
    }
    for (index, variable) in variables.iter().enumerate() {
        check(
            &field(index, "name"),
            validate::variable_name(&variable.name),
        )?;
        if RESERVED_VARIABLES.contains(&variable.name.as_str()) {
            return Err(ApiError::invalid_field(
                &field(index, "name"),
                format!(
                    "{} is set by Kiln itself ({} are reserved: Kiln sets them for the server, the worker and the build); remove it",
                    variable.name,
                    RESERVED_VARIABLES.join(", ")
                ),
            ));
        }
        if variable.value.len() > validate::MAX_VARIABLE_VALUE || variable.value.contains('\0') {
            return Err(ApiError::invalid_field(
                &field(index, "value"),
                format!(
                    "must be at most {} bytes, without NUL",
                    validate::MAX_VARIABLE_VALUE
                ),
            ));
        }
    }
    Ok(())
}

fn replace_variables(
    tx: &Transaction,
    environment_id: &str,
    variables: &[VariableInput],
) -> Result<(), ApiError> {
    tx.execute(
        "DELETE FROM variables WHERE environment_id = ?1",
        [environment_id],
    )?;
    for variable in variables {
        tx.execute(
            "INSERT INTO variables (environment_id, name, value, secret, build, runtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (environment_id, name) DO UPDATE SET value = excluded.value, secret = excluded.secret,
                 build = excluded.build, runtime = excluded.runtime",
            params![
                environment_id,
                variable.name,
                variable.value,
                variable.secret,
                variable.build,
                variable.runtime
            ],
        )?;
    }
    Ok(())
}

/// Removes one variable; one that is not there is `not_found`.
pub fn remove_variable(
    conn: &mut Connection,
    environment_id: &str,
    name: &str,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    get_environment_in(&tx, environment_id)?;
    let removed = tx.execute(
        "DELETE FROM variables WHERE environment_id = ?1 AND name = ?2",
        params![environment_id, name],
    )?;
    if removed == 0 {
        return Err(ApiError::not_found(
            "variable",
            format!("{environment_id}/{name}"),
        ));
    }
    tx.commit()?;
    Ok(())
}

/// The flags `?secret=`, `?build=` and `?runtime=` of an import give the
/// names it brings; unset, a name keeps its own (a new one: not secret,
/// build and runtime).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportFlags {
    pub secret: Option<bool>,
    pub build: Option<bool>,
    pub runtime: Option<bool>,
}

/// Merges a `.env` file into an environment's variables: the names it holds
/// are set, the others stay. An empty value for a stored secret keeps the
/// secret's value (an export leaves secrets empty), unless `?secret=false`.
pub fn import_variables(
    conn: &mut Connection,
    environment_id: &str,
    text: &str,
    flags: ImportFlags,
) -> Result<VariablesImported, ApiError> {
    let entries = crate::dotenv::parse(text)
        .map_err(|error| ApiError::invalid_field("body", format!("{error} (a .env file)")))?;
    let imported: Vec<VariableInput> = entries
        .iter()
        .map(|(_, name, value)| VariableInput {
            name: name.clone(),
            value: value.clone(),
            secret: flags.secret.unwrap_or(false),
            build: flags.build.unwrap_or(true),
            runtime: flags.runtime.unwrap_or(true),
        })
        .collect();
    check_variables(&imported, |index, part| {
        format!("body: line {} ({part})", entries[index].0)
    })?;
    let tx = conn.transaction()?;
    get_environment_in(&tx, environment_id)?;
    let mut merged = variables_in(&tx, environment_id)?;
    let mut kept_secrets = Vec::new();
    for variable in imported {
        match merged
            .iter_mut()
            .find(|stored| stored.name == variable.name)
        {
            Some(stored) => {
                if variable.value.is_empty() && stored.secret && flags.secret != Some(false) {
                    kept_secrets.push(stored.name.clone());
                } else {
                    stored.value = variable.value;
                }
                stored.secret = flags.secret.unwrap_or(stored.secret);
                stored.build = flags.build.unwrap_or(stored.build);
                stored.runtime = flags.runtime.unwrap_or(stored.runtime);
            }
            None => merged.push(variable),
        }
    }
    check_variables(&merged, |_, part| format!("variables ({part})"))?;
    replace_variables(&tx, environment_id, &merged)?;
    tx.commit()?;
    let mut names: Vec<String> = entries.into_iter().map(|(_, name, _)| name).collect();
    names.dedup();
    Ok(VariablesImported {
        variables: list_variables(conn, environment_id)?,
        imported: names,
        kept_secrets,
    })
}

/// What an import did: the environment's variables after it, the names it
/// set, and the secrets whose empty value in the file left them as stored.
#[derive(Debug, serde::Serialize)]
pub struct VariablesImported {
    pub variables: Vec<VariableView>,
    pub imported: Vec<String>,
    pub kept_secrets: Vec<String>,
}

/// An environment's variables as a `.env` file: secret values left empty,
/// each with a comment saying so; a variable that reaches only the build or
/// only the release says that too.
pub fn export_variables(conn: &mut Connection, environment_id: &str) -> Result<String, ApiError> {
    let environment = get_environment_in(conn, environment_id)?;
    let mut text = format!(
        "# The variables of environment {} ({}), exported by Kiln.\n# Secret values are not exported: each is empty, with a comment. Imported\n# again, an empty value keeps a secret's stored value.\n",
        environment.name, environment.id
    );
    for variable in variables_in(conn, environment_id)? {
        let reach = match (variable.build, variable.runtime) {
            (true, false) => Some("the build only"),
            (false, true) => Some("the release's containers only"),
            (false, false) => Some("neither the build nor the release"),
            (true, true) => None,
        };
        if let Some(reach) = reach {
            text.push_str(&format!("# {} reaches {reach}.\n", variable.name));
        }
        if variable.secret {
            text.push_str(&format!(
                "# {} is secret: its value is not exported.\n{}=\n",
                variable.name, variable.name
            ));
        } else {
            text.push_str(&format!(
                "{}={}\n",
                variable.name,
                crate::dotenv::quote(&variable.value)
            ));
        }
    }
    Ok(text)
}

/// The build variables of environment `?1`, by name: what its jobs carry.
pub(super) const VARIABLES_IN: &str =
    "SELECT name, value, secret FROM variables WHERE environment_id = ?1 AND build = 1 ORDER BY name";

pub(super) fn variable_from_row(row: &Row) -> Result<EnvVar, crate::db::sql::Error> {
    Ok(EnvVar {
        name: row.get(0)?,
        value: row.get(1)?,
        secret: row.get(2)?,
    })
}

/// Every variable of an environment, with where it reaches.
pub(super) fn variables_in(
    conn: &Connection,
    environment_id: &str,
) -> Result<Vec<VariableInput>, ApiError> {
    let variables = conn
        .prepare(
            "SELECT name, value, secret, build, runtime FROM variables WHERE environment_id = ?1 ORDER BY name",
        )?
        .query_map([environment_id], |row| {
            Ok(VariableInput {
                name: row.get(0)?,
                value: row.get(1)?,
                secret: row.get(2)?,
                build: row.get(3)?,
                runtime: row.get(4)?,
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
            build: variable.build,
            runtime: variable.runtime,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::shop;

    #[test]
    fn variables_replace_the_set_and_secrets_are_never_shown() {
        let (mut conn, _, environment_id) = shop(&[]);
        let var = |name: &str, secret: bool| VariableInput {
            name: name.into(),
            value: format!("value of {name}"),
            secret,
            build: true,
            runtime: true,
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
        for reserved in RESERVED_VARIABLES {
            let error = set_variables(
                &mut conn,
                &environment_id,
                vec![var("A", false), var(reserved, false)],
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("variables[1].name") && error.contains("set by Kiln itself"),
                "{error}"
            );
        }
        // A runtime-only variable stays out of the build.
        let runtime_only = VariableInput {
            build: false,
            ..var("DATABASE_URL", true)
        };
        let shown = set_variables(
            &mut conn,
            &environment_id,
            vec![var("A", false), runtime_only],
        )
        .unwrap();
        assert_eq!((shown[1].build, shown[1].runtime), (false, true));
        let built: Vec<String> = conn
            .prepare(VARIABLES_IN)
            .unwrap()
            .query_map([&environment_id], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(built, ["A"]);
        set_variables(&mut conn, &environment_id, vec![]).unwrap();
        assert!(list_variables(&mut conn, &environment_id)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn variable_names_follow_posix() {
        for (name, ok) in [
            ("JWT_SECRET", true),
            ("_X1", true),
            ("1X", false),
            ("A-B", false),
            ("", false),
        ] {
            assert_eq!(validate::variable_name(name).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn a_dotenv_import_merges_keeps_secrets_an_export_left_empty_and_round_trips() {
        let (mut conn, _, environment_id) = shop(&[]);
        set_variables(
            &mut conn,
            &environment_id,
            vec![
                VariableInput {
                    name: "A".into(),
                    value: "1".into(),
                    secret: false,
                    build: true,
                    runtime: false,
                },
                VariableInput {
                    name: "DATABASE_URL".into(),
                    value: "postgres://db/shop".into(),
                    secret: true,
                    build: false,
                    runtime: true,
                },
                VariableInput {
                    name: "UNTOUCHED".into(),
                    value: "stays".into(),
                    secret: false,
                    build: true,
                    runtime: true,
                },
            ],
        )
        .unwrap();
        let outcome = import_variables(
            &mut conn,
            &environment_id,
            "A=2\nDATABASE_URL=\nNEW='x y'\n",
            ImportFlags::default(),
        )
        .unwrap();
        assert_eq!(outcome.imported, ["A", "DATABASE_URL", "NEW"]);
        assert_eq!(outcome.kept_secrets, ["DATABASE_URL"]);
        let stored = variables_in(&conn, &environment_id).unwrap();
        let find = |name: &str| stored.iter().find(|v| v.name == name).unwrap().clone();
        assert_eq!((find("A").value.as_str(), find("A").runtime), ("2", false));
        assert_eq!(find("DATABASE_URL").value, "postgres://db/shop");
        assert_eq!(find("UNTOUCHED").value, "stays");
        assert!(!find("NEW").secret && find("NEW").build && find("NEW").runtime);

        // The flags give the imported names theirs.
        import_variables(
            &mut conn,
            &environment_id,
            "STRIPE_KEY=sk_live\n",
            ImportFlags {
                secret: Some(true),
                runtime: Some(true),
                build: Some(false),
            },
        )
        .unwrap();
        let export = export_variables(&mut conn, &environment_id).unwrap();
        assert!(
            export.contains("# STRIPE_KEY is secret: its value is not exported.\nSTRIPE_KEY=\n")
                && export.contains("# DATABASE_URL reaches the release's containers only.")
                && export.contains("# A reaches the build only.\nA=2\n")
                && export.contains("NEW='x y'\n")
                && !export.contains("sk_live")
                && !export.contains("postgres://db/shop"),
            "{export}"
        );
        // Imported again as it was exported, nothing changes.
        let before = variables_in(&conn, &environment_id).unwrap();
        import_variables(&mut conn, &environment_id, &export, ImportFlags::default()).unwrap();
        assert_eq!(variables_in(&conn, &environment_id).unwrap(), before);

        // A bad line or a reserved name is named by its line; nothing is stored.
        for (text, wanted) in [
            ("OK=1\nPORT=9000\n", "line 2"),
            ("OK=1\n\nnot a line\n", "line 3"),
            ("1BAD=1\n", "line 1"),
        ] {
            let error = import_variables(&mut conn, &environment_id, text, ImportFlags::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
        assert_eq!(variables_in(&conn, &environment_id).unwrap(), before);
    }
}
