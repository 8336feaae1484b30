//! Agents: registration (only the token's hash is kept), lookup by token, what
//! they say of their hosts, pausing and revoking.

use crate::db::sql::{params, Connection, OptionalExtension};

use kiln_protocol::{
    validate, AgentInfo, AgentState, Deployment, DeploymentStatus, EnvironmentKind, HostFacts,
    RunningJobInfo,
};

use super::values::{check_name, json_list, new_id, now_ms, to_json};
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub labels: Vec<String>,
    /// A paused agent claims nothing new.
    pub paused: bool,
    /// What the agent said with its last claim that took no job (its disk is low).
    pub holding_back: Option<String>,
}

/// An agent's name and labels, each within bounds.
pub fn check_agent_fields(name: &str, labels: &[String]) -> Result<(), ApiError> {
    check_name("name", name, validate::MAX_NAME)?;
    super::projects::check_labels("labels", labels)
}

/// How a registration was authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationAuth {
    /// The server's bootstrap token (`KILN_REGISTRATION_TOKEN`).
    Bootstrap,
    /// A registration token object, by its hash: used up here if one-time.
    Token { token_hash: String },
}

fn facts_json(facts: Option<&HostFacts>) -> Option<String> {
    facts.and_then(|facts| serde_json::to_string(facts).ok())
}

#[cfg(test)]
pub fn register_agent(
    conn: &mut Connection,
    name: &str,
    labels: &[String],
    token_hash: &str,
) -> Result<String, ApiError> {
    register_agent_with(
        conn,
        name,
        labels,
        token_hash,
        None,
        &RegistrationAuth::Bootstrap,
    )
}

/// Registers an agent, using up a one-time registration token in the same
/// transaction (so two agents never register with one).
pub fn register_agent_with(
    conn: &mut Connection,
    name: &str,
    labels: &[String],
    token_hash: &str,
    facts: Option<&HostFacts>,
    auth: &RegistrationAuth,
) -> Result<String, ApiError> {
    let tx = conn.transaction()?;
    // The server's own token is the operator's, and grants any label; a made
    // token grants the labels it was made with, no others.
    let token_id = match auth {
        RegistrationAuth::Bootstrap => None,
        RegistrationAuth::Token { token_hash } => {
            let usable = super::registration_tokens::use_token(&tx, token_hash)?;
            let ungranted: Vec<&str> = labels
                .iter()
                .filter(|label| !usable.labels.contains(label))
                .map(String::as_str)
                .collect();
            if !ungranted.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "registration token {} grants the labels [{}], not {}; register without them, or have an admin make a token that grants them (POST /api/v1/registration-tokens with \"labels\")",
                    usable.id,
                    usable.labels.join(", "),
                    ungranted.join(", ")
                )));
            }
            Some(usable.id)
        }
    };
    let id = new_id("agt");
    tx.execute(
        "INSERT INTO agents (id, name, labels, token_hash, created_at, facts, registration_token_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, name, to_json(&labels), token_hash, now_ms(), facts_json(facts), token_id],
    )?;
    tx.commit()?;
    Ok(id)
}

/// The agent with this token hash, unless revoked; records the contact (and the
/// version its client says, from `User-Agent: kiln-agent/<version>`).
pub fn agent_by_token_hash(
    conn: &mut Connection,
    token_hash: &str,
    version: Option<&str>,
) -> Result<Option<AgentRow>, ApiError> {
    // Every agent request passes here: a read, and a write only when the last
    // contact on record is stale or the version changed (a write per request
    // would be a commit per request).
    let version = version.map(validate::shorten);
    let Some((agent, last_seen_at, known_version)) = conn
        .query_row(
            "SELECT id, labels, paused, last_seen_at, version, holding_back FROM agents
             WHERE token_hash = ?1 AND revoked_at IS NULL",
            [token_hash],
            |row| {
                let agent = AgentRow {
                    id: row.get(0)?,
                    labels: json_list(&row.get::<_, String>(1)?),
                    paused: row.get(2)?,
                    holding_back: row.get(5)?,
                };
                Ok((
                    agent,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let now = now_ms();
    let contact_is_stale = last_seen_at.is_none_or(|seen| now - seen >= CONTACT_RECORDED_EVERY_MS);
    let version_changed = version
        .as_deref()
        .is_some_and(|version| known_version.as_deref() != Some(version));
    if contact_is_stale || version_changed {
        conn.execute(
            "UPDATE agents SET last_seen_at = ?2, version = COALESCE(?3, version) WHERE id = ?1",
            params![agent.id, now, version],
        )?;
    }
    Ok(Some(agent))
}

/// How often an agent's contact is written down: far inside `OFFLINE_AFTER_MS`.
const CONTACT_RECORDED_EVERY_MS: i64 = 5_000;

/// Records what an agent says of its host now.
pub fn record_facts(
    conn: &mut Connection,
    agent_id: &str,
    facts: &HostFacts,
) -> Result<(), ApiError> {
    conn.execute(
        "UPDATE agents SET facts = ?1 WHERE id = ?2",
        params![facts_json(Some(facts)), agent_id],
    )?;
    Ok(())
}

/// Longest reason an agent may give for holding back.
const MAX_HOLDING_BACK: usize = 1024;

/// Records why an agent claims no jobs now (`None`: it claims again). Writes only
/// when that changed, so the claim path stays one read.
pub fn record_holding_back(
    conn: &mut Connection,
    agent: &AgentRow,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(reason) = reason {
        super::values::check_name("holding_back", reason, MAX_HOLDING_BACK)?;
    }
    if agent.holding_back.as_deref() != reason {
        conn.execute(
            "UPDATE agents SET holding_back = ?1 WHERE id = ?2",
            params![reason, agent.id],
        )?;
    }
    Ok(())
}

/// A job an agent is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub job_id: String,
    pub deployment_id: String,
}

/// An agent as the fleet page and `GET /agents` show it.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub version: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub running: Vec<RunningJob>,
    pub paused: bool,
    pub facts: Option<HostFacts>,
    pub holding_back: Option<String>,
    /// The registration token that granted its labels; `None`: the server's own.
    pub registration_token_id: Option<String>,
}

/// Two minutes without a call: an agent long-polls every 30 s.
const OFFLINE_AFTER_MS: i64 = 120_000;

impl AgentView {
    pub fn state(&self) -> AgentState {
        let recent = self
            .last_seen_at
            .is_some_and(|seen| now_ms() - seen < OFFLINE_AFTER_MS);
        match (recent, self.paused, self.running.is_empty()) {
            (false, _, true) => AgentState::Offline,
            (_, true, _) => AgentState::Paused,
            (_, false, false) => AgentState::Busy,
            (true, false, true) => AgentState::Idle,
        }
    }

    pub fn info(&self) -> AgentInfo {
        AgentInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            version: self.version.clone(),
            facts: self.facts.clone(),
            state: self.state(),
            paused: self.paused,
            running_jobs: self
                .running
                .iter()
                .map(|job| RunningJobInfo {
                    job_id: job.job_id.clone(),
                    deployment_id: job.deployment_id.clone(),
                })
                .collect(),
            last_contact_at: self.last_seen_at.map(super::values::time),
            registered_at: super::values::time(self.created_at),
            holding_back: self.holding_back.clone(),
            labels_from: Some(match &self.registration_token_id {
                Some(id) => format!("registration token {id}"),
                None => "the server's registration token (KILN_REGISTRATION_TOKEN)".to_owned(),
            }),
        }
    }
}

/// Every agent not revoked.
pub fn list_agents(conn: &mut Connection) -> Result<Vec<AgentView>, ApiError> {
    let mut agents: Vec<AgentView> = conn
        .prepare(
            "SELECT id, name, labels, version, created_at, last_seen_at, paused, facts, holding_back,
                    registration_token_id
             FROM agents
             WHERE revoked_at IS NULL ORDER BY name, id",
        )?
        .query_map([], |row| {
            Ok(AgentView {
                id: row.get(0)?,
                name: row.get(1)?,
                labels: json_list(&row.get::<_, String>(2)?),
                version: row.get(3)?,
                created_at: row.get(4)?,
                last_seen_at: row.get(5)?,
                running: Vec::new(),
                paused: row.get(6)?,
                facts: row
                    .get::<_, Option<String>>(7)?
                    .and_then(|text| serde_json::from_str(&text).ok()),
                holding_back: row.get(8)?,
                registration_token_id: row.get(9)?,
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

pub fn get_agent(conn: &mut Connection, id: &str) -> Result<AgentView, ApiError> {
    list_agents(conn)?
        .into_iter()
        .find(|agent| agent.id == id)
        .ok_or_else(|| ApiError::not_found("agent", id))
}

/// Pauses or resumes an agent.
pub fn set_paused(conn: &mut Connection, id: &str, paused: bool) -> Result<AgentView, ApiError> {
    let changed = conn.execute(
        "UPDATE agents SET paused = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![paused, id],
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("agent", id));
    }
    get_agent(conn, id)
}

/// Revokes an agent: its token stops working at once, and its running jobs'
/// leases end now, so the reaper queues them again for another agent.
pub fn revoke_agent(conn: &mut Connection, id: &str) -> Result<Vec<String>, ApiError> {
    let tx = conn.transaction()?;
    let changed = tx.execute(
        "UPDATE agents SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![now_ms(), id],
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("agent", id));
    }
    let deployments: Vec<String> = tx
        .prepare("SELECT deployment_id FROM jobs WHERE agent_id = ?1 AND finished_at IS NULL")?
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for deployment in &deployments {
        tx.execute(
            "UPDATE deployments SET lease_expires_at = 0 WHERE id = ?1 AND agent_id = ?2",
            params![deployment, id],
        )?;
    }
    // Its upload URLs die with it, at once: a lost host must not hand in an
    // artifact while its job still holds the deployment.
    tx.execute(
        "DELETE FROM upload_tickets WHERE job_id IN (SELECT id FROM jobs WHERE agent_id = ?1)",
        [id],
    )?;
    tx.commit()?;
    Ok(deployments)
}

/// Agents named in a waiting reason before "and N more".
const NAMED_IN_WAIT: usize = 5;

/// A deployment, read alone; when it is queued, with why no agent has taken it
/// (`waiting_for`): what a user looks at when a build does not start.
pub fn get_deployment_explained(conn: &mut Connection, id: &str) -> Result<Deployment, ApiError> {
    let mut deployment = super::get_deployment(conn, id)?;
    if deployment.status == DeploymentStatus::Queued {
        deployment.waiting_for = why_waiting(conn, &deployment)?;
    }
    Ok(deployment)
}

/// Why no agent has claimed a queued deployment; `None` when one may claim it
/// now (it will, at its next poll).
fn why_waiting(conn: &mut Connection, deployment: &Deployment) -> Result<Option<String>, ApiError> {
    let project = super::get_project(conn, &deployment.project_id)?;
    let environment = super::get_environment(conn, &deployment.environment_id)?;
    let mut required = project.agent_labels.clone();
    required.extend(match environment.kind {
        EnvironmentKind::LongLived => project.long_lived_agent_labels,
        EnvironmentKind::Preview => project.preview_agent_labels,
    });
    let agents = list_agents(conn)?;
    if agents.is_empty() {
        return Ok(Some(
            "no agent is registered; run `kiln-agent register` on a build host".to_owned(),
        ));
    }
    let able: Vec<&AgentView> = agents
        .iter()
        .filter(|agent| carries_all(&agent.labels, &required))
        .collect();
    if able.is_empty() {
        return Ok(Some(format!(
            "no agent carries every label this build requires ({}); register one with them, or change the project's agent labels",
            required.join(", ")
        )));
    }
    // Each able agent with why it takes nothing now, if it does not.
    let unavailable: Vec<(&AgentView, Option<String>)> = able
        .iter()
        .map(|agent| {
            let why = match agent.state() {
                AgentState::Offline => Some("offline".to_owned()),
                AgentState::Paused => Some("paused".to_owned()),
                _ => agent
                    .holding_back
                    .as_ref()
                    .map(|reason| format!("claims no jobs: {reason}")),
            };
            (*agent, why)
        })
        .collect();
    if unavailable.iter().all(|(_, why)| why.is_some()) {
        let mut named: Vec<String> = unavailable
            .iter()
            .take(NAMED_IN_WAIT)
            .filter_map(|(agent, why)| Some(format!("{} {}", agent.name, why.as_ref()?)))
            .collect();
        if able.len() > NAMED_IN_WAIT {
            named.push(format!("and {} more", able.len() - NAMED_IN_WAIT));
        }
        return Ok(Some(format!(
            "no agent that may build it is available: {}",
            named.join("; ")
        )));
    }
    if unavailable
        .iter()
        .all(|(agent, why)| why.is_some() || !agent.running.is_empty())
    {
        let ahead: i64 = conn.query_row(
            "SELECT COUNT(*) FROM deployments WHERE status = 'queued'
             AND seq < (SELECT seq FROM deployments WHERE id = ?1)",
            [&deployment.id],
            |row| row.get(0),
        )?;
        let queue = match ahead {
            0 => "it is next in the queue".to_owned(),
            1 => "1 queued deployment is ahead of it".to_owned(),
            n => format!("{n} queued deployments are ahead of it"),
        };
        return Ok(Some(format!(
            "waiting for a free agent: every agent that may build it is running a build; {queue}"
        )));
    }
    // An able agent is free: it claims this at its next ask, within seconds.
    // Said all the same, so a queue that does not move is never unexplained.
    let now = now_ms();
    let idle: Vec<&AgentView> = unavailable
        .iter()
        .filter(|(agent, why)| why.is_none() && agent.running.is_empty())
        .map(|(agent, _)| *agent)
        .collect();
    let mut named: Vec<String> = idle
        .iter()
        .take(NAMED_IN_WAIT)
        .map(|agent| match agent.last_seen_at {
            Some(seen) => format!(
                "{} (last heard from {} s ago)",
                agent.name,
                (now - seen).max(0) / 1000
            ),
            None => agent.name.clone(),
        })
        .collect();
    if idle.len() > NAMED_IN_WAIT {
        named.push(format!("and {} more", idle.len() - NAMED_IN_WAIT));
    }
    Ok(Some(format!(
        "waiting for a free agent to ask for it: {}; an agent asks at least every 30 s, so if this lasts, read that agent's log",
        named.join(", ")
    )))
}

/// Whether an agent with `labels` may take a job that requires `required`: it
/// carries every one. The claim's rule, and the waiting reason's.
pub(super) fn carries_all(labels: &[String], required: &[String]) -> bool {
    required.iter().all(|label| labels.contains(label))
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

    #[test]
    fn contact_is_written_when_stale_or_when_the_version_changes() {
        let mut conn = crate::db::in_memory();
        let id = register_agent(&mut conn, "builder", &[], "hash-1").unwrap();
        let set_seen = |conn: &mut Connection, at: i64, version: &str| {
            conn.execute(
                "UPDATE agents SET last_seen_at = ?1, version = ?2 WHERE id = ?3",
                params![at, version, id],
            )
            .unwrap();
        };
        let seen = |conn: &mut Connection| -> (i64, String) {
            conn.query_row(
                "SELECT last_seen_at, version FROM agents WHERE id = ?1",
                [&id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
        };
        let recent = now_ms() - 1_000;
        set_seen(&mut conn, recent, "kiln-agent/0.1.0");
        agent_by_token_hash(&mut conn, "hash-1", Some("kiln-agent/0.1.0")).unwrap();
        assert_eq!(seen(&mut conn), (recent, "kiln-agent/0.1.0".to_owned()));

        agent_by_token_hash(&mut conn, "hash-1", Some("kiln-agent/0.2.0")).unwrap();
        let (at, version) = seen(&mut conn);
        assert!(
            at > recent && version == "kiln-agent/0.2.0",
            "{at} {version}"
        );

        let stale = now_ms() - CONTACT_RECORDED_EVERY_MS - 1;
        set_seen(&mut conn, stale, "kiln-agent/0.2.0");
        agent_by_token_hash(&mut conn, "hash-1", None).unwrap();
        assert!(
            seen(&mut conn).0 > stale,
            "a stale contact is written again"
        );
    }

    #[test]
    fn a_queued_deployment_says_which_agents_could_take_it_and_why_none_has() {
        let (mut conn, _, _) = crate::store::testing::shop(&["trusted"]);
        let queued = crate::store::testing::push(&mut conn, "main", 1).remove(0);
        let add_environment = |conn: &mut Connection, name: &str, branch: &str| {
            super::super::create_environment(
                conn,
                &queued.project_id,
                kiln_protocol::CreateEnvironment {
                    name: name.into(),
                    branch: branch.into(),
                    auto_deploy: false,
                },
            )
            .unwrap();
        };
        let waiting = |conn: &mut Connection| {
            get_deployment_explained(conn, &queued.id)
                .unwrap()
                .waiting_for
                .unwrap_or_default()
        };
        assert!(waiting(&mut conn).starts_with("no agent is registered"));

        register_agent(&mut conn, "plain", &[], "hash-plain").unwrap();
        assert!(
            waiting(&mut conn)
                .starts_with("no agent carries every label this build requires (trusted)"),
            "{}",
            waiting(&mut conn)
        );

        let id = register_agent(&mut conn, "builder", &["trusted".into()], "hash-1").unwrap();
        assert_eq!(
            waiting(&mut conn),
            "no agent that may build it is available: builder offline"
        );
        let agent = agent_by_token_hash(&mut conn, "hash-1", None)
            .unwrap()
            .unwrap();
        record_holding_back(&mut conn, &agent, Some("disk low")).unwrap();
        assert_eq!(
            waiting(&mut conn),
            "no agent that may build it is available: builder claims no jobs: disk low"
        );
        set_paused(&mut conn, &id, true).unwrap();
        assert_eq!(
            waiting(&mut conn),
            "no agent that may build it is available: builder paused"
        );
        set_paused(&mut conn, &id, false).unwrap();
        let agent = agent_by_token_hash(&mut conn, "hash-1", None)
            .unwrap()
            .unwrap();
        record_holding_back(&mut conn, &agent, None).unwrap();
        // Free and asking: said all the same (issue 30: never unexplained).
        assert!(
            waiting(&mut conn).starts_with(
                "waiting for a free agent to ask for it: builder (last heard from 0 s ago)"
            ),
            "{}",
            waiting(&mut conn)
        );

        // Busy with that build, while another environment's waits.
        let agent = agent_by_token_hash(&mut conn, "hash-1", None)
            .unwrap()
            .unwrap();
        let job = crate::store::testing::claim_one(&mut conn, &agent);
        assert_eq!(job.deployment_id, queued.id);
        add_environment(&mut conn, "Staging", "develop");
        let staging = crate::store::testing::push(&mut conn, "develop", 2).remove(0);
        assert_eq!(
            get_deployment_explained(&mut conn, &staging.id)
                .unwrap()
                .waiting_for
                .as_deref(),
            Some("waiting for a free agent: every agent that may build it is running a build; it is next in the queue")
        );
        add_environment(&mut conn, "QA", "qa");
        let behind = crate::store::testing::push(&mut conn, "qa", 3).remove(0);
        let waiting = get_deployment_explained(&mut conn, &behind.id)
            .unwrap()
            .waiting_for
            .unwrap();
        assert!(
            waiting.ends_with("; 1 queued deployment is ahead of it"),
            "{waiting}"
        );
        // Only a queued deployment is explained.
        assert_eq!(
            get_deployment_explained(&mut conn, &job.deployment_id)
                .unwrap()
                .waiting_for,
            None
        );
    }
}
