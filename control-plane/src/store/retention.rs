//! The artifact retention policy (`--artifact-retention-days`): which ended
//! deployments have kept their artifacts long enough, and which removals each
//! replica has still to carry out on its own disk.

use crate::db::sql::{params, Connection};

use super::values::now_ms;
use crate::error::ApiError;

/// Statuses a deployment ends in without being live: its artifacts serve no
/// deploy any more (a redeploy builds its commit again). `awaiting_deployment`
/// may still be deployed, so it keeps them while its environment lasts.
const ENDED: &str = "('ready', 'build_failed', 'build_canceled', 'deploy_failed')";

/// A deployment whose artifacts the policy removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedArtifacts {
    pub deployment_id: String,
    pub environment_id: String,
    /// When it was marked removed (ms), for a replica's "removed since".
    pub removed_at: i64,
    /// `(job_id, name)` of every artifact any of its jobs stored.
    pub artifacts: Vec<(String, String)>,
}

/// Marks at most `limit` deployments that ended before `ended_before` (ms), or
/// whose environment was removed before then, and still have their artifacts
/// as removed, oldest first, and returns them with
/// their artifacts. Their files go after this (`removed_since`), so a crash in
/// between leaves only bytes behind, never a listed artifact that is gone.
pub fn expire_artifacts(
    conn: &mut Connection,
    ended_before: i64,
    limit: i64,
) -> Result<Vec<RemovedArtifacts>, ApiError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    // A closed pull request's preview ends with its environment's removal,
    // whatever its last deployment says (`ready` since the close, or
    // `awaiting_deployment`).
    let expired: Vec<(String, String)> = tx
        .prepare(&format!(
            "SELECT d.id, d.environment_id FROM deployments d
             LEFT JOIN environments e ON e.id = d.environment_id
             WHERE d.artifacts_removed_at IS NULL
               AND ((d.status IN {ENDED} AND d.updated_at < ?1)
                    OR (d.status IN ('live', 'ready', 'awaiting_deployment')
                        AND (e.id IS NULL OR e.removed_at < ?1)))
             ORDER BY d.seq LIMIT ?2"
        ))?
        .query_map(params![ended_before, limit], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    // The whole look in one update and one read: it holds the store's write lock.
    let ids: Vec<&dyn crate::db::sql::ToSql> = expired
        .iter()
        .map(|(id, _)| id as &dyn crate::db::sql::ToSql)
        .collect();
    let placeholders = (1..=ids.len())
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    // `now` bound after the ids: written into the text, each look would be a
    // statement of its own for the connection to prepare and keep.
    let mut marking = ids.clone();
    marking.push(&now);
    tx.execute_deferred(
        &format!(
            "UPDATE deployments SET artifacts_removed_at = ?{} WHERE id IN ({placeholders})",
            ids.len() + 1
        ),
        &marking[..],
    )?;
    let mut artifacts: std::collections::HashMap<String, Vec<(String, String)>> =
        Default::default();
    tx.prepare(&format!(
        "SELECT j.deployment_id, a.job_id, a.name FROM jobs j JOIN artifacts a ON a.job_id = j.id
         WHERE j.deployment_id IN ({placeholders}) ORDER BY a.job_id, a.name"
    ))?
    .query_map(&ids[..], |row| {
        Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
    })?
    .try_for_each(|row| {
        let (deployment_id, job_id, name) = row?;
        artifacts
            .entry(deployment_id)
            .or_default()
            .push((job_id, name));
        Ok::<_, crate::db::sql::Error>(())
    })?;
    tx.commit()?;
    Ok(expired
        .into_iter()
        .map(|(deployment_id, environment_id)| RemovedArtifacts {
            artifacts: artifacts.remove(&deployment_id).unwrap_or_default(),
            deployment_id,
            environment_id,
            removed_at: now,
        })
        .collect())
}

/// Deployments whose artifacts were marked removed at `since` (ms) or later,
/// in that order: what a replica still has to delete from its disk.
pub fn removed_since(conn: &mut Connection, since: i64) -> Result<Vec<RemovedArtifacts>, ApiError> {
    Ok(conn
        .prepare(
            "SELECT id, environment_id, artifacts_removed_at FROM deployments
             WHERE artifacts_removed_at >= ?1 ORDER BY artifacts_removed_at",
        )?
        .query_map([since], |row| {
            Ok(RemovedArtifacts {
                deployment_id: row.get(0)?,
                environment_id: row.get(1)?,
                removed_at: row.get(2)?,
                artifacts: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{agent, push, sha, shop, REPO};
    use kiln_protocol::{Deployment, PullRequestAction, PullRequestEvent};

    /// Pull request `number` of the shop's repository opened (its preview's
    /// deployment returned) or closed (none).
    fn pull_request(
        conn: &mut Connection,
        number: u64,
        action: PullRequestAction,
    ) -> Option<Deployment> {
        let outcome = crate::store::on_pull_request(
            conn,
            PullRequestEvent {
                repository: REPO.into(),
                number,
                action,
                branch: format!("feature/{number}"),
                sha: sha(number as u8),
                author: "Grace".into(),
                message: "Cart".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .unwrap();
        outcome.deployments.into_iter().next()
    }

    /// Sets deployment `id`'s status and when it last changed, as its life would.
    fn ended(conn: &mut Connection, id: &str, status: &str, updated_at: i64) {
        conn.execute(
            "UPDATE deployments SET status = ?1, updated_at = ?2 WHERE id = ?3",
            params![status, updated_at, id],
        )
        .unwrap();
    }

    #[test]
    fn only_deployments_that_ended_before_the_cutoff_and_are_not_live_lose_their_artifacts() {
        let (mut conn, _, _) = shop(&[]);
        let statuses = [
            "ready",
            "build_failed",
            "build_canceled",
            "deploy_failed",
            "live",
            "awaiting_deployment",
            "building",
            "queued",
        ];
        let mut ids = Vec::new();
        for (n, status) in statuses.iter().enumerate() {
            let id = push(&mut conn, "main", n as u8 + 1)[0].id.clone();
            ended(&mut conn, &id, status, 1_000);
            ids.push(id);
        }
        // One that ended after the cutoff keeps them.
        let recent = push(&mut conn, "main", 20)[0].id.clone();
        ended(&mut conn, &recent, "ready", 5_000);
        // A closed pull request's live preview turns ready at the close, which
        // is recent; its environment's removal before the cutoff counts.
        let preview = pull_request(&mut conn, 7, PullRequestAction::Opened).unwrap();
        ended(&mut conn, &preview.id, "live", 5_000);
        pull_request(&mut conn, 7, PullRequestAction::Closed);
        conn.execute(
            "UPDATE environments SET removed_at = 1000 WHERE id = ?1",
            [&preview.environment_id],
        )
        .unwrap();
        let open_preview = pull_request(&mut conn, 8, PullRequestAction::Opened).unwrap();
        ended(&mut conn, &open_preview.id, "live", 1_000);
        let builder = agent(&mut conn, &[]);
        conn.execute(
            "INSERT INTO jobs (id, deployment_id, agent_id, attempt, claimed_at) VALUES ('job_a', ?1, ?2, 1, 0)",
            params![ids[0], builder.id],
        )
        .unwrap();
        for name in ["backend.tar.gz", "storefront.tar.gz"] {
            conn.execute(
                "INSERT INTO artifacts (deployment_id, job_id, name, size, sha256, created_at) VALUES (?1, 'job_a', ?2, 1, 'x', 0)",
                params![ids[0], name],
            )
            .unwrap();
        }

        let removed = expire_artifacts(&mut conn, 2_000, 100).unwrap();
        let removed_ids: Vec<&str> = removed.iter().map(|r| r.deployment_id.as_str()).collect();
        let mut expected: Vec<&str> = ids[..4].iter().map(String::as_str).collect();
        expected.push(&preview.id);
        assert_eq!(removed_ids, expected);
        assert_eq!(
            removed[0].artifacts,
            vec![
                ("job_a".to_owned(), "backend.tar.gz".to_owned()),
                ("job_a".to_owned(), "storefront.tar.gz".to_owned())
            ]
        );
        let read = crate::store::get_deployment(&mut conn, &ids[0]).unwrap();
        assert!(read.artifacts_removed_at.is_some());
        assert_eq!(
            read.artifacts.len(),
            2,
            "the record of what was built stays"
        );
        assert!(crate::store::get_deployment(&mut conn, &ids[4])
            .unwrap()
            .artifacts_removed_at
            .is_none());

        // Marked once; a replica reads what it still has to delete.
        assert!(expire_artifacts(&mut conn, 2_000, 100).unwrap().is_empty());
        let since = removed[0].removed_at;
        assert_eq!(removed_since(&mut conn, since).unwrap().len(), 5);
        assert!(removed_since(&mut conn, since + 1).unwrap().is_empty());
    }

    #[test]
    fn a_look_marks_at_most_its_limit_oldest_first() {
        let (mut conn, _, _) = shop(&[]);
        let ids: Vec<String> = (1..=3)
            .map(|n| {
                let id = push(&mut conn, "main", n)[0].id.clone();
                ended(&mut conn, &id, "build_failed", 1_000);
                id
            })
            .collect();
        let first = expire_artifacts(&mut conn, 2_000, 2).unwrap();
        assert_eq!(
            first.iter().map(|r| &r.deployment_id).collect::<Vec<_>>(),
            vec![&ids[0], &ids[1]]
        );
        let next = expire_artifacts(&mut conn, 2_000, 2).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].deployment_id, ids[2]);
    }
}
