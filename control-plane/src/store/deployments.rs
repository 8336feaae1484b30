//! Deployments and their lifecycle: queued by a push, a pull request or a
//! redeploy (canceling older builds of the environment), every status change
//! through `set_status`, and the listing.

use crate::db::sql::{params, Connection, OptionalExtension, Transaction};
use kiln_protocol::{
    validate, ComponentStatus, Deployment, DeploymentStatus, Environment, EventOutcome,
    EventPeople, Project, PullRequestAction, PullRequestEvent, PushEvent,
};

use super::lifecycle::{finish_current_job, record_transition, set_status, settle_components};
use super::projects::{branch_matches, environment_from_row, get_environment_in, project_from_row};
use super::rows::{deployment_from_row, get_deployment_in, with_history};
use super::values::{check, check_name, new_id, normalize_repository, now_ms, parse_status};
use crate::error::ApiError;

pub fn get_deployment(conn: &mut Connection, id: &str) -> Result<Deployment, ApiError> {
    get_deployment_in(conn, id)
}

/// Which deployments a listing shows, newest first.
#[derive(Debug, Default, Clone)]
pub struct DeploymentFilter {
    pub project_id: Option<String>,
    pub environment_id: Option<String>,
    pub branch: Option<String>,
    pub status: Option<DeploymentStatus>,
    /// The dashboard's search (`q=`): a commit id's beginning, or words of the
    /// commit message or the author's name, in any case.
    pub commit_prefix: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

const FILTERED: &str = "FROM deployments
     WHERE (CAST(?1 AS TEXT) IS NULL OR project_id = ?1)
       AND (CAST(?2 AS TEXT) IS NULL OR environment_id = ?2)
       AND (CAST(?3 AS TEXT) IS NULL OR branch = ?3)
       AND (CAST(?4 AS TEXT) IS NULL OR status = ?4)
       AND (CAST(?5 AS TEXT) IS NULL OR commit_sha LIKE CAST(?5 AS TEXT) || '%' ESCAPE '\\'
            OR LOWER(message) LIKE '%' || CAST(?5 AS TEXT) || '%' ESCAPE '\\'
            OR LOWER(author) LIKE '%' || CAST(?5 AS TEXT) || '%' ESCAPE '\\')";

impl DeploymentFilter {
    fn params(&self) -> [Option<String>; 5] {
        [
            self.project_id.clone(),
            self.environment_id.clone(),
            self.branch.clone(),
            self.status.map(|status| status.as_str().to_owned()),
            // Searched for as written: LIKE's wildcards are escaped.
            self.commit_prefix.as_ref().map(|query| {
                query
                    .to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            }),
        ]
    }
}

pub fn list_deployments(
    conn: &mut Connection,
    filter: DeploymentFilter,
) -> Result<Vec<Deployment>, ApiError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT * {FILTERED} ORDER BY seq DESC LIMIT ?6 OFFSET ?7"
    ))?;
    let [a, b, c, d, e] = filter.params();
    let rows: Vec<Deployment> = stmt
        .query_map(
            params![a, b, c, d, e, filter.limit, filter.offset],
            deployment_from_row,
        )?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    rows.into_iter()
        .map(|deployment| with_history(conn, deployment))
        .collect()
}

/// How many deployments the filter matches (its `limit` and `offset` aside).
pub fn count_deployments(
    conn: &mut Connection,
    filter: &DeploymentFilter,
) -> Result<u64, ApiError> {
    let [a, b, c, d, e] = filter.params();
    let count: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) {FILTERED}"))?
        .query_row(params![a, b, c, d, e], |row| row.get(0))?;
    Ok(count as u64)
}

/// The branches a project's deployments were made from, for a filter's choices.
pub fn deployment_branches(
    conn: &mut Connection,
    project_id: &str,
) -> Result<Vec<String>, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT branch FROM deployments WHERE project_id = ?1 ORDER BY branch LIMIT 200",
    )?;
    let branches = stmt
        .query_map([project_id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(branches)
}

/// The environment's live deployment when it is newer than `deployment`:
/// deploying `deployment` would take the environment back to an older commit.
pub fn live_newer_than(
    conn: &mut Connection,
    deployment: &Deployment,
) -> Result<Option<Deployment>, ApiError> {
    Ok(
        current_deployment(conn, &deployment.environment_id)?.filter(|live| {
            live.status == DeploymentStatus::Live
                && live.id != deployment.id
                && live.created_at > deployment.created_at
        }),
    )
}

/// An environment's live deployment, else its newest.
pub fn current_deployment(
    conn: &mut Connection,
    environment_id: &str,
) -> Result<Option<Deployment>, ApiError> {
    // Two indexed lookups: the live one (at most one per environment), else the newest.
    let live = conn
        .query_row(
            "SELECT * FROM deployments WHERE environment_id = ?1 AND status = 'live'",
            [environment_id],
            deployment_from_row,
        )
        .optional()?;
    let row = match live {
        Some(live) => Some(live),
        None => conn
            .query_row(
                "SELECT * FROM deployments WHERE environment_id = ?1 ORDER BY seq DESC LIMIT 1",
                [environment_id],
                deployment_from_row,
            )
            .optional()?,
    };
    row.map(|deployment| with_history(conn, deployment))
        .transpose()
}

/// The id of an environment's newest deployment, if it has one.
pub fn newest_deployment_id(
    conn: &Connection,
    environment_id: &str,
) -> Result<Option<String>, ApiError> {
    Ok(conn
        .query_row(
            "SELECT id FROM deployments WHERE environment_id = ?1 ORDER BY seq DESC LIMIT 1",
            [environment_id],
            |row| row.get(0),
        )
        .optional()?)
}

/// Cancels a queued or building deployment on a person's word.
pub fn cancel_deployment(
    conn: &mut Connection,
    id: &str,
    by: &str,
) -> Result<Deployment, ApiError> {
    let tx = conn.transaction()?;
    let deployment = get_deployment_in(&tx, id)?;
    if !deployment.status.is_build_pending() {
        return Err(ApiError::IllegalTransition {
            deployment_id: id.to_owned(),
            from: deployment.status,
            to: DeploymentStatus::BuildCanceled,
        });
    }
    cancel_build(&tx, id, &format!("canceled by {by}"))?;
    let deployment = get_deployment_in(&tx, id)?;
    tx.commit()?;
    Ok(deployment)
}

pub(super) fn cancel_build(
    tx: &Transaction,
    deployment_id: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let from = parse_status(&tx.query_row(
        "SELECT status FROM deployments WHERE id = ?1",
        [deployment_id],
        |row| row.get::<_, String>(0),
    )?)?;
    set_status(
        tx,
        deployment_id,
        from,
        DeploymentStatus::BuildCanceled,
        Some(reason),
    )?;
    settle_components(tx, deployment_id, ComponentStatus::Canceled)?;
    finish_current_job(tx, deployment_id)
}

pub(super) fn pending_builds(
    tx: &Transaction,
    environment_id: &str,
) -> Result<Vec<String>, ApiError> {
    let mut stmt = tx.prepare(&format!(
        "SELECT id FROM deployments WHERE environment_id = ?1 AND status IN ('queued', 'building') ORDER BY seq{}",
        tx.for_update()
    ))?;
    let ids = stmt
        .query_map([environment_id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub(super) struct NewDeployment<'a> {
    project_id: &'a str,
    environment_id: &'a str,
    commit_sha: &'a str,
    branch: &'a str,
    author: &'a str,
    message: &'a str,
    people: &'a EventPeople,
    redeploy_of: Option<&'a str>,
    use_cache: bool,
}

/// Queues a deployment and cancels every older one of the same environment that is
/// still queued or building: a newer commit wins at once.
///
/// Runs in a shared transaction: the environment's row lock puts two pushes to
/// one environment in turn (the second then sees the first's deployment and
/// cancels it), and the older builds' row locks wait out a claim or report of
/// them, whose outcome the statuses read afterwards reflect.
pub(super) fn queue_deployment(
    tx: &Transaction,
    new: NewDeployment,
    outcome: &mut EventOutcome,
) -> Result<(), ApiError> {
    tx.query_all(
        &format!(
            "SELECT id FROM environments WHERE id = ?1{}",
            tx.for_update()
        ),
        [new.environment_id],
    )?;
    let id = new_id("dpl");
    let short_sha = &new.commit_sha[..new.commit_sha.len().min(7)];
    for older in pending_builds(tx, new.environment_id)? {
        cancel_build(
            tx,
            &older,
            &format!("superseded by deployment {id} (commit {short_sha})"),
        )?;
        outcome.canceled.push(older);
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO deployments (id, project_id, environment_id, commit_sha, branch, author, message,
                                  status, backend_status, storefront_status, redeploy_of, created_at, updated_at,
                                  author_login, author_avatar, pusher, use_cache)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 'pending', 'pending', ?8, ?9, ?9, ?10, ?11, ?12, ?13)",
        params![
            id,
            new.project_id,
            new.environment_id,
            new.commit_sha,
            new.branch,
            new.author,
            new.message,
            new.redeploy_of,
            now,
            new.people.author_login,
            new.people.author_avatar,
            new.people.pusher,
            new.use_cache,
        ],
    )?;
    let reports = super::outbox::reports_to(tx, &id)?;
    record_transition(
        tx,
        reports.as_ref(),
        &id,
        None,
        DeploymentStatus::Queued,
        None,
        now,
    )?;
    outcome.deployments.push(get_deployment_in(tx, &id)?);
    Ok(())
}

/// The commit fields every event carries, each within its bounds.
fn check_commit(
    repository: &str,
    branch: &str,
    sha: &str,
    author: &str,
    message: &str,
) -> Result<(), ApiError> {
    check(
        "repository",
        validate::text(repository, validate::MAX_URL, false),
    )?;
    check_name("branch", branch, validate::MAX_BRANCH)?;
    check("sha", validate::commit_sha(sha))?;
    check(
        "author",
        validate::text(author, validate::MAX_AUTHOR, false),
    )?;
    check(
        "message",
        validate::text(message, validate::MAX_MESSAGE, true),
    )
}

fn check_push(push: &PushEvent) -> Result<(), ApiError> {
    check_commit(
        &push.repository,
        &push.branch,
        &push.sha,
        &push.author,
        &push.message,
    )?;
    check_people(&push.people)
}

fn check_pull_request(event: &PullRequestEvent) -> Result<(), ApiError> {
    check_commit(
        &event.repository,
        &event.branch,
        &event.sha,
        &event.author,
        &event.message,
    )?;
    check_people(&event.people)
}

fn check_people(people: &EventPeople) -> Result<(), ApiError> {
    if let Some(login) = &people.author_login {
        check(
            "author_login",
            validate::text(login, validate::MAX_AUTHOR, false),
        )?;
    }
    if let Some(pusher) = &people.pusher {
        check(
            "pusher",
            validate::text(pusher, validate::MAX_AUTHOR, false),
        )?;
    }
    if let Some(avatar) = &people.author_avatar {
        // Shown as an image: only a web address.
        check("author_avatar", validate::api_url(avatar))?;
    }
    Ok(())
}

pub(super) fn projects_for_repository(
    tx: &Transaction,
    repository: &str,
) -> Result<Vec<Project>, ApiError> {
    let wanted = normalize_repository(repository);
    let mut stmt = tx.prepare("SELECT * FROM projects ORDER BY created_at")?;
    let projects: Vec<Project> = stmt
        .query_map([], project_from_row)?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|project| normalize_repository(&project.repository_url) == wanted)
        .collect();
    if projects.is_empty() {
        return Err(ApiError::NotFound {
            kind: "project for repository",
            id: repository.to_owned(),
        });
    }
    Ok(projects)
}

pub fn on_push(conn: &mut Connection, push: PushEvent) -> Result<EventOutcome, ApiError> {
    // Checked before the repository is looked up, so a malformed one is a 400.
    check_push(&push)?;
    // Shared: a push locks the rows it changes (`queue_deployment`), so claims
    // and reports go on beside it.
    let tx = conn.transaction_shared()?;
    let projects = projects_for_repository(&tx, &push.repository)?;
    // An admin's push may go back to an older commit on purpose.
    let outcome = push_to(&tx, &projects, &push, false)?;
    tx.commit()?;
    Ok(outcome)
}

/// A push to `projects` (found by its repository, or verified by a webhook's
/// signature): a deployment for each long-lived environment whose branch rule
/// matches. With `only_forward` (a webhook's push the host did not mark as
/// forced), an environment is not taken back to a commit it had before its
/// live one: a replayed delivery must not roll production back.
pub(crate) fn push_to(
    tx: &Transaction,
    projects: &[Project],
    push: &PushEvent,
    only_forward: bool,
) -> Result<EventOutcome, ApiError> {
    check_push(push)?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
        ignored: Vec::new(),
    };
    let skip = skip_marker(&push.message);
    for project in projects {
        let environments: Vec<Environment> = tx
            .prepare(
                "SELECT * FROM environments WHERE project_id = ?1 AND kind = 'long_lived' AND removed_at IS NULL ORDER BY created_at",
            )?
            .query_map([&project.id], environment_from_row)?
            .collect::<Result<_, _>>()?;
        for environment in environments
            .iter()
            .filter(|environment| branch_matches(&environment.branch, &push.branch))
        {
            if let Some(marker) = skip {
                outcome.ignored.push(format!(
                    "environment {}: commit {} asks not to be built ({marker} in its message); nothing is queued or canceled (push without it, or redeploy, to build)",
                    environment.name,
                    &push.sha[..push.sha.len().min(12)]
                ));
                continue;
            }
            if only_forward && older_than_live(tx, &environment.id, &push.sha)? {
                outcome.ignored.push(format!(
                    "environment {} is live on a later deployment than commit {}; a push the git host did not mark as forced never takes it back (redeploy that deployment to go back on purpose)",
                    environment.name,
                    &push.sha[..push.sha.len().min(12)]
                ));
                continue;
            }
            queue_deployment(
                tx,
                NewDeployment {
                    project_id: &project.id,
                    environment_id: &environment.id,
                    commit_sha: &push.sha,
                    branch: &push.branch,
                    author: &push.author,
                    message: &push.message,
                    people: &push.people,
                    redeploy_of: None,
                    use_cache: true,
                },
                &mut outcome,
            )?;
        }
    }
    Ok(outcome)
}

/// The marker in a head commit's message that asks for no build, as GitHub,
/// GitLab and Vercel read it: `[skip ci]`, `[ci skip]`, or Kiln's own
/// `[kiln skip]`, in any case.
fn skip_marker(message: &str) -> Option<&'static str> {
    let message = message.to_ascii_lowercase();
    ["[skip ci]", "[ci skip]", "[kiln skip]"]
        .into_iter()
        .find(|marker| message.contains(marker))
}

/// Whether `environment` had `sha` built before its live deployment.
fn older_than_live(tx: &Transaction, environment: &str, sha: &str) -> Result<bool, ApiError> {
    let older = tx
        .query_row(
            "SELECT 1 FROM deployments earlier, deployments live
             WHERE live.environment_id = ?1 AND live.status = 'live'
               AND earlier.environment_id = ?1 AND earlier.commit_sha = ?2
               AND earlier.created_at < live.created_at AND earlier.commit_sha <> live.commit_sha
             LIMIT 1",
            params![environment, sha],
            |_| Ok(()),
        )
        .optional()?;
    Ok(older.is_some())
}

pub fn on_pull_request(
    conn: &mut Connection,
    event: PullRequestEvent,
) -> Result<EventOutcome, ApiError> {
    check_pull_request(&event)?;
    let tx = conn.transaction()?;
    let projects = projects_for_repository(&tx, &event.repository)?;
    let outcome = pull_request_to(&tx, &projects, &event)?;
    tx.commit()?;
    Ok(outcome)
}

/// A pull request event for `projects`: its preview environment made, moved to
/// the new head and built, or canceled and removed when it closes.
pub(crate) fn pull_request_to(
    tx: &Transaction,
    projects: &[Project],
    event: &PullRequestEvent,
) -> Result<EventOutcome, ApiError> {
    check_pull_request(event)?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
        ignored: Vec::new(),
    };
    for project in projects {
        let preview = tx
            .query_row(
                "SELECT * FROM environments WHERE project_id = ?1 AND kind = 'preview' AND pull_request = ?2 AND removed_at IS NULL",
                params![project.id, event.number as i64],
                environment_from_row,
            )
            .optional()?;
        match event.action {
            PullRequestAction::Closed => {
                let Some(preview) = preview else { continue };
                for pending in pending_builds(tx, &preview.id)? {
                    cancel_build(
                        tx,
                        &pending,
                        &format!("pull request #{} was closed", event.number),
                    )?;
                    outcome.canceled.push(pending);
                }
                // Nothing serves a removed preview: its live deployment says so.
                let live: Option<String> = tx
                    .query_row(
                        "SELECT id FROM deployments WHERE environment_id = ?1 AND status = 'live'",
                        [&preview.id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(live) = live {
                    super::lifecycle::set_status(
                        tx,
                        &live,
                        DeploymentStatus::Live,
                        DeploymentStatus::Ready,
                        Some(&format!(
                            "pull request #{} was closed and its preview environment removed",
                            event.number
                        )),
                    )?;
                }
                tx.execute(
                    "UPDATE environments SET removed_at = ?1 WHERE id = ?2",
                    params![now_ms(), preview.id],
                )?;
            }
            PullRequestAction::Opened
            | PullRequestAction::Reopened
            | PullRequestAction::Synchronize => {
                let environment_id = match preview {
                    Some(preview) => {
                        tx.execute(
                            "UPDATE environments SET branch = ?1, base_branch = COALESCE(?2, base_branch) WHERE id = ?3",
                            params![event.branch, event.base_branch, preview.id],
                        )?;
                        preview.id
                    }
                    None => {
                        let id = new_id("env");
                        tx.execute(
                            "INSERT INTO environments (id, project_id, name, kind, branch, pull_request, auto_deploy, created_at, base_branch)
                             VALUES (?1, ?2, ?3, 'preview', ?4, ?5, 1, ?6, ?7)",
                            params![id, project.id, format!("pr-{}", event.number), event.branch, event.number as i64, now_ms(), event.base_branch],
                        )?;
                        id
                    }
                };
                queue_deployment(
                    tx,
                    NewDeployment {
                        project_id: &project.id,
                        environment_id: &environment_id,
                        commit_sha: &event.sha,
                        branch: &event.branch,
                        author: &event.author,
                        message: &event.message,
                        people: &event.people,
                        redeploy_of: None,
                        use_cache: true,
                    },
                    &mut outcome,
                )?;
            }
        }
    }
    Ok(outcome)
}

/// Rebuilds deployment `id`'s commit; `use_cache: false` builds it with no cache entry.
pub fn redeploy(
    conn: &mut Connection,
    id: &str,
    use_cache: bool,
) -> Result<EventOutcome, ApiError> {
    let tx = conn.transaction()?;
    let original = get_deployment_in(&tx, id)?;
    get_environment_in(&tx, &original.environment_id).map_err(|_| {
        ApiError::Conflict(format!(
            "deployment {id} belongs to environment {}, which was removed",
            original.environment_id
        ))
    })?;
    let mut outcome = EventOutcome {
        deployments: Vec::new(),
        canceled: Vec::new(),
        ignored: Vec::new(),
    };
    queue_deployment(
        &tx,
        NewDeployment {
            project_id: &original.project_id,
            environment_id: &original.environment_id,
            commit_sha: &original.commit_sha,
            branch: &original.branch,
            author: &original.author,
            message: &original.message,
            people: &EventPeople {
                author_login: original.author_login.clone(),
                author_avatar: original.author_avatar.clone(),
                pusher: original.pusher.clone(),
            },
            redeploy_of: Some(id),
            use_cache,
        },
        &mut outcome,
    )?;
    tx.commit()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{push, sha, shop, REPO};
    use kiln_protocol::{CreateEnvironment, DeploymentStatus::*};

    fn pull_request(conn: &mut Connection, action: PullRequestAction, n: u8) -> EventOutcome {
        on_pull_request(
            conn,
            PullRequestEvent {
                repository: REPO.into(),
                number: 7,
                action,
                branch: "feature/cart".into(),
                sha: sha(n),
                author: "Grace".into(),
                message: "Cart".into(),
                people: Default::default(),
                base_branch: Some("main".into()),
            },
        )
        .unwrap()
    }

    #[test]
    fn the_search_finds_sha_prefixes_messages_and_authors_in_any_case() {
        let (mut conn, project_id, _) = shop(&[]);
        for n in 1..=3 {
            push(&mut conn, "main", n);
        }
        let found = |conn: &mut Connection, query: &str| {
            count_deployments(
                conn,
                &DeploymentFilter {
                    project_id: Some(project_id.clone()),
                    commit_prefix: Some(query.to_owned()),
                    limit: 50,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        assert_eq!(found(&mut conn, &sha(2)[..8]), 1);
        assert_eq!(found(&mut conn, "COMMIT 3"), 1);
        assert_eq!(found(&mut conn, "ada"), 3);
        // Wildcards are searched for, not obeyed.
        assert_eq!(found(&mut conn, "%"), 0);
        assert_eq!(found(&mut conn, "commit_"), 0);
    }

    #[test]
    fn a_head_commit_that_says_skip_ci_queues_and_cancels_nothing() {
        let (mut conn, _, _) = shop(&[]);
        let building = push(&mut conn, "main", 1);
        let skip = |conn: &mut Connection, message: &str, n: u8| {
            on_push(
                conn,
                PushEvent {
                    repository: REPO.into(),
                    branch: "main".into(),
                    sha: sha(n),
                    author: "Ada".into(),
                    message: message.into(),
                    people: Default::default(),
                },
            )
            .unwrap()
        };
        for (n, message) in [
            (2, "Fix typo [skip ci]"),
            (3, "Docs\n\n[Kiln Skip]"),
            (4, "[CI SKIP] bump"),
        ] {
            let outcome = skip(&mut conn, message, n);
            assert!(
                outcome.deployments.is_empty() && outcome.canceled.is_empty(),
                "{message}"
            );
            assert!(
                outcome.ignored[0].starts_with("environment Production: commit ")
                    && outcome.ignored[0].contains("asks not to be built"),
                "{:?}",
                outcome.ignored
            );
        }
        assert_eq!(
            get_deployment(&mut conn, &building[0].id).unwrap().status,
            Queued
        );
        // Words without the brackets are a message, not a marker.
        assert_eq!(
            skip(&mut conn, "skip ci checks for docs", 5)
                .deployments
                .len(),
            1
        );
    }

    #[test]
    fn a_push_queues_one_deployment_per_matching_environment_and_cancels_older_ones() {
        let (mut conn, project_id, production) = shop(&[]);
        crate::store::create_environment(
            &mut conn,
            &project_id,
            CreateEnvironment {
                name: "Releases".into(),
                branch: "release/*".into(),
                auto_deploy: false,
            },
        )
        .unwrap();
        assert!(push(&mut conn, "feature/x", 1).is_empty());
        let first = push(&mut conn, "main", 1);
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].status, first[0].environment_id.as_str()),
            (Queued, production.as_str())
        );
        assert_eq!(push(&mut conn, "release/2", 2).len(), 1);
        let second = push(&mut conn, "main", 3);
        let older = get_deployment(&mut conn, &first[0].id).unwrap();
        assert_eq!(older.status, BuildCanceled);
        assert_eq!(
            older.reason.as_deref(),
            Some(format!("superseded by deployment {} (commit 0303030)", second[0].id).as_str())
        );
        assert_eq!(
            older
                .transitions
                .iter()
                .map(|t| t.status)
                .collect::<Vec<_>>(),
            [Queued, BuildCanceled]
        );
        let listed = list_deployments(
            &mut conn,
            DeploymentFilter {
                environment_id: Some(production),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            listed.iter().map(|d| &d.id).collect::<Vec<_>>(),
            [&second[0].id, &first[0].id]
        );
    }

    #[test]
    fn events_for_unknown_repositories_or_bad_shas_are_refused() {
        let (mut conn, _, _) = shop(&[]);
        let mut event = PushEvent {
            repository: "https://git.example/other.git".into(),
            branch: "main".into(),
            sha: sha(1),
            author: "Ada".into(),
            message: "m".into(),
            people: Default::default(),
        };
        assert!(matches!(
            on_push(&mut conn, event.clone()),
            Err(ApiError::NotFound { .. })
        ));
        event.repository = "https://GIT.example/acme/shop/".into();
        event.sha = "abc".into();
        let error = on_push(&mut conn, event.clone()).unwrap_err();
        assert!(error.to_string().contains("`sha`"), "{error}");
        event.sha = sha(1);
        assert_eq!(on_push(&mut conn, event).unwrap().deployments.len(), 1);
    }

    #[test]
    fn a_pull_request_gets_a_preview_until_it_closes() {
        let (mut conn, project_id, _) = shop(&[]);
        let opened = pull_request(&mut conn, PullRequestAction::Opened, 1);
        let preview_id = opened.deployments[0].environment_id.clone();
        let preview = crate::store::get_environment(&mut conn, &preview_id).unwrap();
        assert_eq!(
            (preview.kind, preview.pull_request, preview.name.as_str()),
            (kiln_protocol::EnvironmentKind::Preview, Some(7), "pr-7")
        );
        let synced = pull_request(&mut conn, PullRequestAction::Synchronize, 2);
        assert_eq!(synced.deployments[0].environment_id, preview_id);
        assert_eq!(synced.canceled, [opened.deployments[0].id.clone()]);
        let closed = pull_request(&mut conn, PullRequestAction::Closed, 2);
        assert_eq!(closed.canceled, [synced.deployments[0].id.clone()]);
        assert!(matches!(
            crate::store::get_environment(&mut conn, &preview_id),
            Err(ApiError::NotFound { .. })
        ));
        assert_eq!(
            crate::store::list_environments(&mut conn, &project_id)
                .unwrap()
                .len(),
            1
        );
        let reopened = pull_request(&mut conn, PullRequestAction::Reopened, 3);
        assert_ne!(
            reopened.deployments[0].environment_id, preview_id,
            "a new preview"
        );
    }

    #[test]
    fn a_redeploy_queues_the_same_commit_again() {
        let (mut conn, _, _) = shop(&[]);
        let first = push(&mut conn, "main", 1).remove(0);
        let again = redeploy(&mut conn, &first.id, true).unwrap();
        let copy = &again.deployments[0];
        assert_eq!(
            (copy.commit_sha.as_str(), copy.redeploy_of.as_deref()),
            (first.commit_sha.as_str(), Some(first.id.as_str()))
        );
        assert_eq!(
            again.canceled,
            std::slice::from_ref(&first.id),
            "the queued original is superseded"
        );
        assert!(matches!(
            redeploy(&mut conn, "dpl_missing", true),
            Err(ApiError::NotFound { .. })
        ));
    }

    #[test]
    fn set_status_allows_only_the_lifecycle() {
        let (mut conn, _, _) = shop(&[]);
        let queued = push(&mut conn, "main", 1).remove(0);
        let tx = conn.transaction().unwrap();
        let error = set_status(&tx, &queued.id, Queued, Live, None).unwrap_err();
        assert!(
            matches!(
                error,
                ApiError::IllegalTransition {
                    from: Queued,
                    to: Live,
                    ..
                }
            ),
            "{error}"
        );
        let error = set_status(&tx, &queued.id, Building, BuildFailed, None).unwrap_err();
        assert!(
            matches!(error, ApiError::Conflict(_)),
            "a stale `from` is refused: {error}"
        );
    }
}
