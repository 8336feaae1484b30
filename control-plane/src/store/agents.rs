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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_found_by_its_token_hash_only() {
        let mut conn = crate::db::in_memory();
        let id = register_agent(&mut conn, "builder", &["trusted".into()], "hash-1").unwrap();
        let found = agent_by_token_hash(&mut conn, "hash-1").unwrap().unwrap();
        assert_eq!(
            (found.id.as_str(), found.labels),
            (id.as_str(), vec!["trusted".to_owned()])
        );
        assert!(agent_by_token_hash(&mut conn, "hash-2").unwrap().is_none());
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
