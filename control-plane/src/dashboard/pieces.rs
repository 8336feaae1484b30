//! The pieces pages are made of: a status as icon, words and colour, commit
//! and time texts, links to the git host, and the deployments table.

use chrono::{DateTime, Utc};
use kiln_protocol::{ComponentStatus, Deployment, DeploymentStatus, Environment, EnvironmentKind};
use maud::{html, Markup};

pub(super) fn status_class(status: DeploymentStatus) -> &'static str {
    use DeploymentStatus::*;
    match status {
        Live => "ok",
        AwaitingDeployment | Ready => "done",
        Queued | Building | Deploying => "busy",
        BuildFailed | DeployFailed => "bad",
        BuildCanceled => "off",
    }
}

pub(super) fn status_icon(status: DeploymentStatus) -> &'static str {
    use DeploymentStatus::*;
    match status {
        Live => "●",
        AwaitingDeployment => "◆",
        Ready => "◇",
        Queued => "○",
        Building => "◐",
        Deploying => "◑",
        BuildFailed => "✕",
        DeployFailed => "⚠",
        BuildCanceled => "⊘",
    }
}

/// A deployment's status: icon and words, coloured.
pub fn status_badge(status: DeploymentStatus) -> Markup {
    html! {
        span class={"badge " (status_class(status))} data-status=(status.as_str()) {
            span aria-hidden="true" { (status_icon(status)) } " " (status.label())
        }
    }
}

pub(super) fn component_badge(name: &str, status: ComponentStatus) -> Markup {
    let class = match status {
        ComponentStatus::Succeeded => "ok",
        ComponentStatus::Failed => "bad",
        ComponentStatus::Building => "busy",
        ComponentStatus::Canceled | ComponentStatus::Skipped => "off",
        ComponentStatus::Pending => "done",
    };
    html! {
        span class={"badge small " (class)} title=(format!("{name}: {}", status.label())) {
            (name) ": " (status.label())
        }
    }
}

pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

pub(super) fn when(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S UTC")) { (ago(at, Utc::now())) }
    }
}

/// How long before `now` a moment was, for people ("3 min ago"); a week or
/// more back, the date itself. The exact time is the element's title.
pub(super) fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds();
    match seconds {
        ..60 => "just now".to_owned(),
        60..3_600 => format!("{} min ago", seconds / 60),
        3_600..86_400 => format!("{} h ago", seconds / 3_600),
        86_400..172_800 => "yesterday".to_owned(),
        172_800..604_800 => format!("{} days ago", seconds / 86_400),
        _ => at.format("%Y-%m-%d %H:%M").to_string(),
    }
}

pub(super) fn when_millis(millis: i64) -> Markup {
    match DateTime::from_timestamp_millis(millis) {
        Some(at) => when(at),
        None => html! { "—" },
    }
}

/// `1m 23s`.
pub fn span_text(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// How long the build took (or has taken so far): from `building` to the end of
/// the build.
pub fn build_duration(deployment: &Deployment) -> Option<String> {
    use DeploymentStatus::*;
    let started = deployment
        .transitions
        .iter()
        .find(|t| t.status == Building)?
        .at;
    let ended = deployment
        .transitions
        .iter()
        .find(|t| {
            matches!(t.status, AwaitingDeployment | BuildFailed | BuildCanceled) && t.at >= started
        })
        .map(|t| t.at)
        .unwrap_or_else(|| {
            if deployment.status == Building {
                Utc::now()
            } else {
                deployment.updated_at
            }
        });
    Some(span_text((ended - started).num_seconds()))
}

/// When a deployment that is building began (milliseconds), for a clock that ticks.
pub fn building_since(deployment: &Deployment) -> Option<i64> {
    if deployment.status != DeploymentStatus::Building {
        return None;
    }
    deployment
        .transitions
        .iter()
        .find(|t| t.status == DeploymentStatus::Building)
        .map(|t| t.at.timestamp_millis())
}

/// The web page of a commit, where the repository's host is one Kiln knows the
/// shape of (GitHub, GitLab, Gitea/Forgejo and their self-hosted kin).
pub fn commit_url(repository_url: &str, sha: &str) -> Option<String> {
    let url = repository_url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let web = if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let rest = rest
            .rsplit_once('@')
            .map_or(rest, |(_, host_path)| host_path);
        format!("https://{rest}")
    } else if let Some((user_host, path)) = url.split_once(':') {
        let host = user_host.rsplit('@').next()?;
        if host.contains('/') || path.starts_with("//") {
            return None;
        }
        format!("https://{host}/{}", path.trim_start_matches('/'))
    } else {
        return None;
    };
    let host = web.trim_start_matches("https://").split('/').next()?;
    if host.contains("127.0.0.1") || host.starts_with("localhost") {
        return None;
    }
    let separator = if host.contains("gitlab") {
        "/-/commit/"
    } else {
        "/commit/"
    };
    Some(format!("{web}{separator}{sha}"))
}

pub(super) fn environment_kind(environment: &Environment) -> Markup {
    html! {
        @match environment.kind {
            EnvironmentKind::LongLived => span.kind { "Long-lived" },
            EnvironmentKind::Preview => span.kind.preview {
                "Preview" @if let Some(number) = environment.pull_request { " · PR #" (number) }
            },
        }
    }
}

/// The deployments table of the project and environment pages.
/// The crumbs, title and tabs of an environment's sub-page `current`.
pub(super) fn environment_heading(
    project: &kiln_protocol::Project,
    environment: &Environment,
    current: &str,
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Projects" } " / " a href={"/projects/" (project.id)} { (project.name) } " / " a href={"/environments/" (environment.id)} { (environment.name) } }
        h1 { (environment.name) }
        (environment_tabs(environment, current))
    }
}

/// An environment's tabs, `current` marked.
pub(super) fn environment_tabs(environment: &Environment, current: &str) -> Markup {
    let base = format!("/environments/{}", environment.id);
    let tabs = [
        ("Deployments", base.clone()),
        ("Variables", format!("{base}/variables")),
        ("Settings", format!("{base}/settings")),
    ];
    html! {
        nav.tabs aria-label="Environment" {
            @for (label, href) in tabs {
                a aria-current=[(label == current).then_some("page")] href=(href) { (label) }
            }
        }
    }
}

/// A project's tabs, `current` marked.
pub fn project_tabs(project: &kiln_protocol::Project, current: &str) -> Markup {
    let tabs = [
        ("Environments", String::new()),
        ("Deployments", "/deployments".to_owned()),
        ("Connect Git", "/connect".to_owned()),
        ("Webhooks", "/webhooks".to_owned()),
    ];
    html! {
        nav.tabs aria-label="Project" {
            @for (name, path) in tabs {
                a aria-current=[(name == current).then_some("page")] href={"/projects/" (project.id) (path)} { (name) }
            }
        }
    }
}

pub fn deployments_table(deployments: &[Deployment], environments: &[Environment]) -> Markup {
    let environment_of = |id: &str| environments.iter().find(|environment| environment.id == id);
    html! {
        @if deployments.is_empty() {
            p.empty { "No deployments match." }
        } @else {
            table.deployments {
                caption.visually-hidden { "Deployments, newest first" }
                thead { tr {
                    th scope="col" { "Commit" }
                    th scope="col" { "Status" }
                    th scope="col" { "Backend · Storefront" }
                    th scope="col" { "Branch" }
                    th scope="col" { "Environment" }
                    th scope="col" { "Author" }
                    th scope="col" { "Created" }
                    th scope="col" { "Duration" }
                } }
                tbody {
                    @for deployment in deployments {
                        tr data-deployment=(deployment.id) {
                            td {
                                a href={"/deployments/" (deployment.id)} {
                                    code { (short_sha(&deployment.commit_sha)) }
                                    " " (first_line(&deployment.message))
                                }
                            }
                            td data-label="Status" { (status_badge(deployment.status)) }
                            td.components data-label="Backend · Storefront" {
                                (component_badge("Backend", deployment.backend_status))
                                " "
                                (component_badge("Storefront", deployment.storefront_status))
                            }
                            td data-label="Branch" { code { (deployment.branch) } }
                            td data-label="Environment" {
                                // A removed environment (a closed pull request's) has no page.
                                @match environment_of(&deployment.environment_id) {
                                    Some(environment) => a href={"/environments/" (environment.id)} { (environment.name) },
                                    None => span.removed { "(removed)" },
                                }
                            }
                            td data-label="Author" { (deployment.author) }
                            td data-label="Created" { (when(deployment.created_at)) }
                            td data-label="Duration" { (build_duration(deployment).unwrap_or_else(|| "—".to_owned())) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_environment_is_named_but_not_linked() {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "id": "dpl_1", "project_id": "prj_1", "environment_id": "env_gone",
            "commit_sha": "0123456789abcdef0123456789abcdef01234567", "branch": "feature/cart",
            "author": "Grace", "message": "Cart", "status": "ready", "backend_status": "succeeded",
            "storefront_status": "skipped", "attempts": 1,
            "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:05:00Z",
        }))
        .unwrap();
        let html = deployments_table(&[deployment], &[]).into_string();
        assert!(
            html.contains("<span class=\"removed\">(removed)</span>"),
            "{html}"
        );
        assert!(!html.contains("/environments/env_gone"), "{html}");
    }

    #[test]
    fn times_read_as_how_long_ago_then_as_dates() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let before = |seconds: i64| ago(now - chrono::Duration::seconds(seconds), now);
        assert_eq!(before(20), "just now");
        assert_eq!(before(3 * 60 + 5), "3 min ago");
        assert_eq!(before(5 * 3_600), "5 h ago");
        assert_eq!(before(30 * 3_600), "yesterday");
        assert_eq!(before(3 * 86_400), "3 days ago");
        assert_eq!(before(9 * 86_400), "2026-11-28 12:00");
        // A clock a little behind the server's is not "in the future".
        assert_eq!(ago(now + chrono::Duration::seconds(5), now), "just now");
    }

    #[test]
    fn each_status_has_its_own_icon_and_colour() {
        let icons: std::collections::HashSet<&str> = DeploymentStatus::ALL
            .iter()
            .map(|s| status_icon(*s))
            .collect();
        assert_eq!(icons.len(), DeploymentStatus::ALL.len());
        // Live and canceled are the only ones of their class; the rest are told
        // apart by a rule of their own.
        let css = include_str!("assets/app.css");
        for status in DeploymentStatus::ALL {
            let own_rule = css.contains(&format!(".badge[data-status={}]", status.as_str()));
            let alone_in_class = DeploymentStatus::ALL
                .iter()
                .filter(|other| status_class(**other) == status_class(status))
                .count()
                == 1;
            assert!(own_rule || alone_in_class, "{status:?} shares a colour");
        }
    }
}
