//! The outbox's courier: a background task that sends each due report to its
//! project's git host, one at a time per commit and context, retrying with
//! backoff (base `Config::git_host_retry`, doubling to 10 minutes, 20 tries).
//! It reads the outbox from the database, so what was waiting when the server
//! stopped goes out when it starts.

use std::time::{Duration, Instant};

use kiln_protocol::{ComponentStatus, Deployment, DeploymentStatus, LogStream};

use super::{repository_path, CommitState, Delivery, GitHostClient, StatusReport};
use crate::error::ApiError;
use crate::store::{self, GitHostAccess, OutboxItem, OutboxKind};
use crate::AppState;

const MAX_ATTEMPTS: u32 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Webhook deliveries and finished reports are kept this long.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

pub async fn run(state: AppState) {
    let client = GitHostClient::new(state.config.allow_private_git_hosts);
    let mut pruned = Instant::now();
    loop {
        if !crate::leader::until_leading(&state).await {
            return;
        }
        match state.db.call(|conn| store::due(conn, 32)).await {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    deliver(&state, &client, item).await;
                }
                continue;
            }
            Ok(_) => {}
            Err(error) => tracing::error!(message = "Cannot read the outbox.", %error),
        }
        if pruned.elapsed() > Duration::from_secs(3600) {
            pruned = Instant::now();
            let age = KEEP.as_millis() as i64;
            if let Err(error) = state.db.call(move |conn| store::prune(conn, age)).await {
                tracing::warn!(message = "Cannot prune old webhook deliveries.", %error);
            }
        }
        let next = state
            .db
            .call(|conn| store::next_due_at(conn))
            .await
            .ok()
            .flatten();
        if !crate::leader::until_due(&state, next).await {
            return;
        }
    }
}

/// What GitHub's commit status says for a deployment status.
pub fn commit_state(status: DeploymentStatus) -> CommitState {
    use DeploymentStatus::*;
    match status {
        Queued | Building | Deploying => CommitState::Pending,
        AwaitingDeployment | Live | Ready => CommitState::Success,
        BuildFailed | DeployFailed => CommitState::Failure,
        BuildCanceled => CommitState::Error,
    }
}

/// One line of at most 140 characters: the reason, or the status's words.
pub fn description(status: DeploymentStatus, reason: Option<&str>) -> String {
    let text = reason
        .and_then(|reason| reason.lines().find(|line| !line.trim().is_empty()))
        .map(str::trim)
        .unwrap_or(status.label());
    if text.chars().count() <= 140 {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(139).collect();
    cut.push('…');
    cut
}

/// Everything a report needs, read in one go.
struct Report {
    host: GitHostAccess,
    path: String,
    deployment: Deployment,
    environment: String,
    pull_request: Option<u64>,
    comment_id: Option<String>,
    /// A comment item about a deployment the preview has since replaced.
    superseded: bool,
    /// The failed build's job and the log where it failed.
    failing: Option<(String, LogStream)>,
}

fn read_report(
    conn: &mut crate::db::sql::Connection,
    item: &OutboxItem,
) -> Result<Result<Report, String>, ApiError> {
    let Some(host) = store::git_host_access(conn, &item.project_id)? else {
        return Ok(Err("the project no longer has a git host".to_owned()));
    };
    let project = store::get_project(conn, &item.project_id)?;
    let Some(path) = repository_path(&project.repository_url) else {
        return Ok(Err(format!(
            "cannot tell the repository's path on its host from {}",
            project.repository_url
        )));
    };
    let deployment = store::get_deployment(conn, &item.deployment_id)?;
    let (environment, pull_request) = store::environment_name(conn, &deployment.environment_id)?;
    let comment_id = match pull_request {
        Some(number) => store::preview_comment(conn, &item.project_id, number)?,
        None => None,
    };
    // The comment shows the preview's newest deployment: an older one's later
    // news (its deploy finishing after a newer push) would make it lie.
    let superseded = item.kind == OutboxKind::Comment
        && store::newest_deployment_id(conn, &deployment.environment_id)?
            .is_some_and(|newest| newest != deployment.id);
    let failing = if item.status == DeploymentStatus::BuildFailed {
        let stream = if deployment.storefront_status == ComponentStatus::Failed {
            LogStream::Storefront
        } else if deployment.backend_status == ComponentStatus::Failed {
            LogStream::Backend
        } else {
            LogStream::System
        };
        store::job_for_logs(conn, &item.deployment_id, None, stream)?.map(|job| (job.id, stream))
    } else {
        None
    };
    Ok(Ok(Report {
        host,
        path,
        deployment,
        environment,
        pull_request,
        comment_id,
        superseded,
        failing,
    }))
}

/// The dashboard's page of the deployment, at the failing log's last line.
async fn target_url(state: &AppState, report: &Report) -> Option<String> {
    let base = state.config.public_url.as_deref()?;
    let mut url = format!("{base}/deployments/{}", report.deployment.id);
    if let Some((job_id, stream)) = &report.failing {
        if let Ok(window) = state.logs.window(job_id, *stream, Some(0), 0).await {
            if window.total > 0 {
                url.push_str(&format!("#{stream}-L{}", window.total));
            } else {
                url.push_str(&format!("#{stream}"));
            }
        }
    }
    Some(url)
}

fn comment_body(report: &Report, item: &OutboxItem, target: Option<&str>) -> String {
    let deployment = &report.deployment;
    let short = &deployment.commit_sha[..deployment.commit_sha.len().min(7)];
    let link = target.map_or(String::new(), |url| format!(" · [Open in Kiln]({url})"));
    let mut body = format!(
        "**Kiln** · preview environment `{}`\n\n**{}** at `{short}`{link}\n",
        report.environment,
        item.status.label(),
    );
    if let Some(reason) = &item.reason {
        body.push_str(&format!("\n> {}\n", description(item.status, Some(reason))));
    }
    body
}

async fn deliver(state: &AppState, client: &GitHostClient, item: OutboxItem) {
    let id = item.id;
    let read = {
        let item = item.clone();
        state.db.call(move |conn| read_report(conn, &item)).await
    };
    let outcome = match read {
        Ok(Ok(report)) if report.superseded => {
            let result = "not sent: the preview has a newer deployment";
            if let Err(error) = state
                .db
                .call(move |conn| store::record_attempt(conn, id, false, None, result))
                .await
            {
                tracing::error!(message = "Cannot record a report's delivery.", outbox_id = id, %error);
            }
            return;
        }
        Ok(Ok(report)) => send(state, client, &item, &report).await,
        Ok(Err(why)) => Delivery::GiveUp(why),
        Err(error) => Delivery::Retry(format!("cannot read the report: {error}")),
    };
    let attempts = item.attempts + 1;
    let (delivered, retry_at, result) = match outcome {
        Delivery::Done { answer, .. } => (true, None, answer),
        Delivery::Retry(why) if attempts < MAX_ATTEMPTS => {
            let backoff = state
                .config
                .git_host_retry
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(MAX_BACKOFF);
            tracing::warn!(message = "A git host refused a report for now; retrying.", outbox_id = id, attempts, %why, retry_in_ms = backoff.as_millis() as u64);
            (
                false,
                Some(store::now_ms() + backoff.as_millis() as i64),
                why,
            )
        }
        Delivery::Retry(why) | Delivery::GiveUp(why) => {
            tracing::warn!(message = "Gave up on a report to a git host.", outbox_id = id, attempts, %why);
            (false, None, why)
        }
    };
    if let Err(error) = state
        .db
        .call(move |conn| store::record_attempt(conn, id, delivered, retry_at, &result))
        .await
    {
        tracing::error!(message = "Cannot record a report's delivery.", outbox_id = id, %error);
    }
}

async fn send(
    state: &AppState,
    client: &GitHostClient,
    item: &OutboxItem,
    report: &Report,
) -> Delivery {
    let target = target_url(state, report).await;
    match item.kind {
        OutboxKind::Status => {
            let context = format!("kiln/{}", report.environment);
            let description = description(item.status, item.reason.as_deref());
            client
                .post_status(
                    &report.host,
                    &report.path,
                    &StatusReport {
                        sha: &report.deployment.commit_sha,
                        state: commit_state(item.status),
                        context: &context,
                        description: &description,
                        target_url: target.as_deref(),
                    },
                )
                .await
        }
        OutboxKind::Comment => {
            let Some(number) = report.pull_request else {
                return Delivery::GiveUp("the environment is not a pull request's preview".into());
            };
            let body = comment_body(report, item, target.as_deref());
            let outcome = client
                .put_comment(
                    &report.host,
                    &report.path,
                    number,
                    report.comment_id.as_deref(),
                    &body,
                )
                .await;
            if let (
                Delivery::Done {
                    id: Some(comment), ..
                },
                None,
            ) = (&outcome, &report.comment_id)
            {
                let (project, comment) = (item.project_id.clone(), comment.clone());
                if let Err(error) = state
                    .db
                    .call(move |conn| store::set_preview_comment(conn, &project, number, &comment))
                    .await
                {
                    tracing::error!(message = "Cannot remember the preview's comment.", %error);
                }
            }
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_commit_states() {
        use DeploymentStatus::*;
        assert_eq!(commit_state(Queued), CommitState::Pending);
        assert_eq!(commit_state(Building), CommitState::Pending);
        assert_eq!(commit_state(AwaitingDeployment), CommitState::Success);
        assert_eq!(commit_state(Live), CommitState::Success);
        assert_eq!(commit_state(BuildFailed), CommitState::Failure);
        assert_eq!(commit_state(DeployFailed), CommitState::Failure);
        assert_eq!(commit_state(BuildCanceled), CommitState::Error);
    }

    #[test]
    fn descriptions_are_one_short_line() {
        assert_eq!(description(DeploymentStatus::Live, None), "Live");
        assert_eq!(
            description(
                DeploymentStatus::BuildFailed,
                Some("\nbackend: exit 1\nmore")
            ),
            "backend: exit 1"
        );
        let long = "x".repeat(300);
        assert_eq!(
            description(DeploymentStatus::BuildFailed, Some(&long))
                .chars()
                .count(),
            140
        );
    }
}
