//! What goes out to git hosts, and what came in from them: the outbox of commit
//! statuses and preview comments (queued in the same transaction as the status
//! change they report, so none is lost to a crash; delivered in order per commit
//! and context by `forge::outbox`), the one comment each preview keeps
//! editing, and the webhook deliveries already answered.

use crate::db::sql::{params, Connection, OptionalExtension, Transaction};
use kiln_protocol::DeploymentStatus;

use super::values::{now_ms, parse_status};
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A commit status (GitHub, Gitea) or pipeline status (GitLab).
    Status,
    /// The pull request's comment, edited in place.
    Comment,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Status => "status",
            OutboxKind::Comment => "comment",
        }
    }
}

/// One report waiting to go out.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub project_id: String,
    pub deployment_id: String,
    pub kind: OutboxKind,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub attempts: u32,
}

/// Where a deployment's reports go: read by the caller that has them at hand.
pub(super) struct ReportsTo {
    pub project_id: String,
    pub commit_sha: String,
    pub environment: String,
    pub pull_request: Option<i64>,
}

/// Where `deployment_id`'s reports go; `None` when its project has no git host.
pub(super) fn reports_to(
    tx: &Transaction,
    deployment_id: &str,
) -> Result<Option<ReportsTo>, ApiError> {
    Ok(tx
        .query_row(
            "SELECT d.project_id, d.commit_sha, e.name, e.pull_request
             FROM deployments d
             JOIN environments e ON e.id = d.environment_id
             JOIN projects p ON p.id = d.project_id
             WHERE d.id = ?1 AND p.git_host_kind IS NOT NULL",
            [deployment_id],
            |row| {
                Ok(ReportsTo {
                    project_id: row.get(0)?,
                    commit_sha: row.get(1)?,
                    environment: row.get(2)?,
                    pull_request: row.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Queues the reports of `deployment_id` reaching `status` to where `reports`
/// says (`reports_to`, or what the caller read): a commit status, and for a
/// preview its comment. The previous live deployment becoming ready changes
/// nothing about its commit.
pub(super) fn enqueue(
    tx: &Transaction,
    reports: Option<&ReportsTo>,
    deployment_id: &str,
    status: DeploymentStatus,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let Some(to) = reports.filter(|_| status != DeploymentStatus::Ready) else {
        return Ok(());
    };
    let now = now_ms();
    let insert = |kind: OutboxKind, key: String| {
        tx.execute_deferred(
            "INSERT INTO outbox (project_id, deployment_id, kind, ordering_key, status, reason, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![to.project_id, deployment_id, kind.as_str(), key, status.as_str(), reason, now],
        )
    };
    insert(
        OutboxKind::Status,
        format!(
            "status:{}:{}:{}",
            to.project_id, to.commit_sha, to.environment
        ),
    )?;
    if let Some(number) = to.pull_request {
        insert(
            OutboxKind::Comment,
            format!("comment:{}:{number}", to.project_id),
        )?;
    }
    Ok(())
}

/// The next report of each ordering key whose time has come: a key's later
/// reports wait for its earlier ones.
pub fn due(conn: &Connection, limit: u32) -> Result<Vec<OutboxItem>, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.id, o.project_id, o.deployment_id, o.kind, o.status, o.reason, o.attempts
         FROM outbox o
         WHERE o.done_at IS NULL
           AND o.next_attempt_at <= ?1
           AND o.id = (SELECT MIN(id) FROM outbox WHERE done_at IS NULL AND ordering_key = o.ordering_key)
         ORDER BY o.id LIMIT ?2",
    )?;
    let items = stmt
        .query_map(params![now_ms(), limit], |row| {
            let kind: String = row.get(3)?;
            Ok(OutboxItem {
                id: row.get(0)?,
                project_id: row.get(1)?,
                deployment_id: row.get(2)?,
                kind: if kind == "comment" {
                    OutboxKind::Comment
                } else {
                    OutboxKind::Status
                },
                status: parse_status(&row.get::<_, String>(4)?)?,
                reason: row.get(5)?,
                attempts: row.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(items)
}

/// When the next report falls due (Unix ms), if any waits.
pub fn next_due_at(conn: &Connection) -> Result<Option<i64>, ApiError> {
    Ok(conn.query_row(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE done_at IS NULL",
        [],
        |row| row.get(0),
    )?)
}

/// Records an attempt: delivered, to be retried at `retry_at`, or (neither)
/// given up.
pub fn record_attempt(
    conn: &Connection,
    id: i64,
    delivered: bool,
    retry_at: Option<i64>,
    result: &str,
) -> Result<(), ApiError> {
    let now = now_ms();
    let done = (delivered || retry_at.is_none()).then_some(now);
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, delivered = ?2, done_at = ?3,
                next_attempt_at = COALESCE(?4, next_attempt_at), result = ?5
         WHERE id = ?1",
        params![id, delivered, done, retry_at, result],
    )?;
    Ok(())
}

/// The last report made about a deployment, for its page.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub status: String,
    pub attempts: u32,
    pub delivered: bool,
    pub done: bool,
    pub next_attempt_at: i64,
    pub result: Option<String>,
}

pub fn last_delivery(
    conn: &Connection,
    deployment_id: &str,
) -> Result<Option<DeliveryView>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT status, attempts, delivered, done_at, next_attempt_at, result FROM outbox
             WHERE deployment_id = ?1 AND kind = 'status' AND (attempts > 0 OR done_at IS NULL)
             ORDER BY attempts = 0, id DESC LIMIT 1",
            [deployment_id],
            |row| {
                Ok(DeliveryView {
                    status: row.get(0)?,
                    attempts: row.get(1)?,
                    delivered: row.get(2)?,
                    done: row.get::<_, Option<i64>>(3)?.is_some(),
                    next_attempt_at: row.get(4)?,
                    result: row.get(5)?,
                })
            },
        )
        .optional()?)
}

pub fn preview_comment(
    conn: &Connection,
    project_id: &str,
    pull_request: u64,
) -> Result<Option<String>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT comment_id FROM preview_comments WHERE project_id = ?1 AND pull_request = ?2",
            params![project_id, pull_request as i64],
            |row| row.get(0),
        )
        .optional()?)
}

pub fn set_preview_comment(
    conn: &Connection,
    project_id: &str,
    pull_request: u64,
    comment_id: &str,
) -> Result<(), ApiError> {
    conn.execute(
        "INSERT INTO preview_comments (project_id, pull_request, comment_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (project_id, pull_request) DO UPDATE SET comment_id = excluded.comment_id",
        params![project_id, pull_request as i64, comment_id],
    )?;
    Ok(())
}

/// The answer a webhook delivery got, if it came before.
pub fn hook_answer(conn: &Connection, delivery: &str) -> Result<Option<(u16, String)>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT status, body FROM hook_deliveries WHERE delivery = ?1",
            [delivery],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

pub fn record_hook_answer(
    tx: &Transaction,
    delivery: &str,
    status: u16,
    body: &str,
) -> Result<(), ApiError> {
    tx.execute(
        "INSERT INTO hook_deliveries (delivery, status, body, received_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (delivery) DO NOTHING",
        params![delivery, status, body, now_ms()],
    )?;
    Ok(())
}

/// The last webhook delivery a project saw, as its Connect Git page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastHook {
    pub at_ms: i64,
    pub event: String,
    pub status: u16,
    pub answer: String,
}

/// Remembers a delivery as the last one `project_ids` saw.
pub fn record_last_hook(
    conn: &Connection,
    project_ids: &[String],
    event: &str,
    status: u16,
    answer: &str,
) -> Result<(), ApiError> {
    let answer: String = answer.chars().take(500).collect();
    for id in project_ids {
        conn.execute(
            "UPDATE projects SET last_hook_at = ?1, last_hook_event = ?2, last_hook_status = ?3, last_hook_answer = ?4 WHERE id = ?5",
            params![now_ms(), event, status, answer, id],
        )?;
    }
    Ok(())
}

pub fn last_hook(conn: &mut Connection, project_id: &str) -> Result<Option<LastHook>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT last_hook_at, last_hook_event, last_hook_status, last_hook_answer FROM projects
             WHERE id = ?1 AND last_hook_at IS NOT NULL",
            [project_id],
            |row| {
                Ok(LastHook {
                    at_ms: row.get(0)?,
                    event: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    status: row.get::<_, Option<i64>>(2)?.unwrap_or(0) as u16,
                    answer: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                })
            },
        )
        .optional()?)
}

/// Forgets deliveries and finished reports older than `age_ms`: hosts redeliver
/// within hours, not weeks.
pub fn prune(conn: &Connection, age_ms: i64) -> Result<(), ApiError> {
    let before = now_ms() - age_ms;
    conn.execute(
        "DELETE FROM hook_deliveries WHERE received_at < ?1",
        [before],
    )?;
    conn.execute(
        "DELETE FROM outbox WHERE done_at IS NOT NULL AND done_at < ?1",
        [before],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{push, shop};
    use kiln_protocol::{GitHostKind, GitHostSettings, UpdateProject};

    #[test]
    fn a_project_remembers_its_last_webhook_delivery() {
        let (mut conn, project_id, _) = shop(&[]);
        assert_eq!(last_hook(&mut conn, &project_id).unwrap(), None);
        let long = "x".repeat(2000);
        record_last_hook(&conn, std::slice::from_ref(&project_id), "push", 201, &long).unwrap();
        let last = last_hook(&mut conn, &project_id).unwrap().unwrap();
        assert_eq!((last.event.as_str(), last.status), ("push", 201));
        assert_eq!(last.answer.len(), 500, "an answer is kept short");
    }

    fn with_git_host(conn: &mut Connection, project_id: &str) {
        crate::store::update_project(
            conn,
            project_id,
            UpdateProject {
                git_host: Some(GitHostSettings {
                    kind: GitHostKind::Github,
                    api_url: "https://api.github.com".into(),
                    token: Some("t".into()),
                }),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    }

    #[test]
    fn nothing_is_queued_without_a_git_host() {
        let (mut conn, _, _) = shop(&[]);
        push(&mut conn, "main", 1);
        assert!(due(&conn, 10).unwrap().is_empty());
    }

    #[test]
    fn reports_go_out_in_order_per_commit_and_context() {
        let (mut conn, project, _) = shop(&[]);
        with_git_host(&mut conn, &project);
        let first = push(&mut conn, "main", 1).remove(0);
        let second = push(&mut conn, "main", 2).remove(0);
        // Queued (1), canceled (1) and queued (2): two keys, the first with two reports.
        let items = due(&conn, 10).unwrap();
        let shown: Vec<_> = items
            .iter()
            .map(|item| (item.deployment_id.clone(), item.status))
            .collect();
        assert_eq!(
            shown,
            vec![
                (first.id.clone(), DeploymentStatus::Queued),
                (second.id.clone(), DeploymentStatus::Queued)
            ]
        );
        // A retry later holds its key's next report back.
        record_attempt(&conn, items[0].id, false, Some(now_ms() + 60_000), "500").unwrap();
        let items = due(&conn, 10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].deployment_id, second.id);
        // Once delivered, the key's next report (the cancel) is due.
        let first_report = conn
            .query_row("SELECT MIN(id) FROM outbox", [], |row| row.get::<_, i64>(0))
            .unwrap();
        record_attempt(&conn, first_report, true, None, "201").unwrap();
        let items = due(&conn, 10).unwrap();
        assert!(items
            .iter()
            .any(|item| item.deployment_id == first.id
                && item.status == DeploymentStatus::BuildCanceled));
        let view = last_delivery(&conn, &first.id).unwrap().unwrap();
        assert!(!view.done || view.delivered);
    }
}
