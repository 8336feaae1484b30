//! The fleet and its queue in numbers, for `/metrics`: read from the store, so
//! every replica's scrape gives the same answer.

use crate::db::sql::{Connection, OptionalExtension};
use kiln_protocol::{AgentState, DeploymentStatus};

use super::list_agents;
use super::values::{now_ms, parse_status};
use crate::error::ApiError;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Deployments per status, every status present (0 when none).
    pub deployments: Vec<(DeploymentStatus, i64)>,
    /// How long the oldest queued deployment has waited (ms), 0 with none.
    pub oldest_queued_ms: i64,
    /// Agents per state, every state present.
    pub agents: Vec<(AgentState, i64)>,
    /// Agents that claim no jobs because their disk is low.
    pub agents_holding_back: i64,
}

const AGENT_STATES: [AgentState; 4] = [
    AgentState::Idle,
    AgentState::Busy,
    AgentState::Paused,
    AgentState::Offline,
];

pub fn fleet_counts(conn: &mut Connection) -> Result<FleetCounts, ApiError> {
    let by_status: Vec<(String, i64)> = conn
        .prepare("SELECT status, COUNT(*) FROM deployments GROUP BY status")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut deployments: Vec<(DeploymentStatus, i64)> = DeploymentStatus::ALL
        .iter()
        .map(|&status| (status, 0))
        .collect();
    for (status, count) in by_status {
        let status = parse_status(&status)?;
        if let Some(entry) = deployments.iter_mut().find(|(s, _)| *s == status) {
            entry.1 = count;
        }
    }
    // The queue's head by its index, not a scan of every deployment.
    let oldest_queued_at: Option<i64> = conn
        .query_row(
            "SELECT created_at FROM deployments WHERE status = 'queued' ORDER BY seq LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let agents = list_agents(conn)?;
    Ok(FleetCounts {
        deployments,
        oldest_queued_ms: oldest_queued_at.map_or(0, |at| (now_ms() - at).max(0)),
        agents: AGENT_STATES
            .iter()
            .map(|&state| {
                let count = agents.iter().filter(|agent| agent.state() == state).count();
                (state, count as i64)
            })
            .collect(),
        agents_holding_back: agents
            .iter()
            .filter(|agent| agent.holding_back.is_some())
            .count() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, claim_one, push, shop};

    #[test]
    fn counts_every_status_and_state_and_the_queue_wait() {
        let (mut conn, _, _) = shop(&[]);
        let empty = fleet_counts(&mut conn).unwrap();
        assert_eq!(empty.deployments.len(), DeploymentStatus::ALL.len());
        assert!(empty.deployments.iter().all(|(_, count)| *count == 0));
        assert_eq!(empty.oldest_queued_ms, 0);
        assert_eq!(empty.agents.len(), 4);

        let builder = agent(&mut conn, &[]);
        let paused = agent(&mut conn, &[]);
        crate::store::set_paused(&mut conn, &paused.id, true).unwrap();
        conn.execute(
            "UPDATE agents SET last_seen_at = ?1, holding_back = 'disk low' WHERE id = ?2",
            crate::db::sql::params![now_ms(), paused.id],
        )
        .unwrap();
        push(&mut conn, "main", 1);
        claim_one(&mut conn, &builder);
        push(&mut conn, "main", 2);
        conn.execute(
            "UPDATE deployments SET created_at = created_at - 90000 WHERE status = 'queued'",
            [],
        )
        .unwrap();
        let counts = fleet_counts(&mut conn).unwrap();
        let count = |status| {
            counts
                .deployments
                .iter()
                .find(|(s, _)| *s == status)
                .unwrap()
                .1
        };
        // The second push canceled the first build.
        assert_eq!(count(DeploymentStatus::Queued), 1);
        assert_eq!(count(DeploymentStatus::BuildCanceled), 1);
        assert_eq!(count(DeploymentStatus::Building), 0);
        assert!(
            (90_000..120_000).contains(&counts.oldest_queued_ms),
            "{}",
            counts.oldest_queued_ms
        );
        assert_eq!(counts.agents.iter().map(|(_, n)| n).sum::<i64>(), 2);
        // Never heard from: offline, paused or not; heard from and paused: paused.
        assert_eq!(
            counts.agents,
            vec![
                (AgentState::Idle, 0),
                (AgentState::Busy, 0),
                (AgentState::Paused, 1),
                (AgentState::Offline, 1)
            ]
        );
        assert_eq!(counts.agents_holding_back, 1);
    }
}
