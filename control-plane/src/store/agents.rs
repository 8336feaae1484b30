//! Agents: registration (only the token's hash is kept) and lookup by token.

use rusqlite::{params, Connection, OptionalExtension};

use kiln_protocol::validate;

use super::{check_name, json_list, new_id, now_ms, to_json};
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub labels: Vec<String>,
}

/// An agent's name and labels, each within bounds.
pub fn check_agent_fields(name: &str, labels: &[String]) -> Result<(), ApiError> {
    check_name("name", name, validate::MAX_NAME)?;
    super::projects::check_labels("labels", labels)
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

/// The agent with this token hash; records the contact (and the version its
/// client says, from `User-Agent: kiln-agent/<version>`).
pub fn agent_by_token_hash(
    conn: &mut Connection,
    token_hash: &str,
    version: Option<&str>,
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
        let version = version.map(validate::shorten);
        conn.execute(
            "UPDATE agents SET last_seen_at = ?1, version = COALESCE(?3, version) WHERE id = ?2",
            params![now_ms(), agent.id, version],
        )?;
    }
    Ok(agent)
}

/// A job an agent is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub job_id: String,
    pub deployment_id: String,
}

/// An agent as the fleet page shows it.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub version: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub running: Vec<RunningJob>,
}

pub fn list_agents(conn: &mut Connection) -> Result<Vec<AgentView>, ApiError> {
    let mut agents: Vec<AgentView> = conn
        .prepare("SELECT id, name, labels, version, created_at, last_seen_at FROM agents ORDER BY name, id")?
        .query_map([], |row| {
            Ok(AgentView {
                id: row.get(0)?,
                name: row.get(1)?,
                labels: json_list(&row.get::<_, String>(2)?),
                version: row.get(3)?,
                created_at: row.get(4)?,
                last_seen_at: row.get(5)?,
                running: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT agent_id, id, deployment_id FROM jobs WHERE finished_at IS NULL ORDER BY claimed_at",
    )?;
    let running = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            RunningJob {
                job_id: row.get(1)?,
                deployment_id: row.get(2)?,
            },
        ))
    })?;
    for job in running {
        let (agent_id, job) = job?;
        if let Some(agent) = agents.iter_mut().find(|agent| agent.id == agent_id) {
            agent.running.push(job);
        }
    }
    Ok(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_found_by_its_token_hash_only() {
        let mut conn = crate::db::in_memory();
        let id = register_agent(&mut conn, "builder", &["trusted".into()], "hash-1").unwrap();
        let found = agent_by_token_hash(&mut conn, "hash-1", Some("kiln-agent/0.1.0"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id.as_str(), found.labels),
            (id.as_str(), vec!["trusted".to_owned()])
        );
        assert!(agent_by_token_hash(&mut conn, "hash-2", None)
            .unwrap()
            .is_none());
        assert_eq!(
            list_agents(&mut conn).unwrap()[0].version.as_deref(),
            Some("kiln-agent/0.1.0")
        );
        let seen: Option<i64> = conn
            .query_row(
                "SELECT last_seen_at FROM agents WHERE id = ?1",
                [&id],
                |row| row.get(0),
            )
            .unwrap();
        assert!(seen.is_some(), "a lookup records the contact");
    }
}
