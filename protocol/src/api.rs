//! What people (and their git hosting) say to the control plane: projects,
//! environments, push and pull-request events, deployments.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::{ArtifactDescriptor, SecretScanSettings};
use crate::status::{ComponentStatus, DeploymentStatus};

fn root_path() -> String {
    ".".to_owned()
}

/// `POST /api/v1/projects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub repository_url: String,
    #[serde(default = "root_path")]
    pub backend_path: String,
    #[serde(default)]
    pub storefront_path: Option<String>,
    /// Only agents carrying all of these labels build this project.
    #[serde(default)]
    pub agent_labels: Vec<String>,
    /// Handed to the agent with each job for cloning a private repository.
    #[serde(default)]
    pub repository_token: Option<String>,
    /// Added in v1.2.
    #[serde(default)]
    pub secret_scan: SecretScanSettings,
    /// Clone git submodules (bound to the repository's credential, which never
    /// travels to another URL). Added in v1.3; off by default.
    #[serde(default)]
    pub submodules: bool,
    /// Where commit statuses and preview comments go. Added in v1.4.
    #[serde(default)]
    pub git_host: Option<GitHostSettings>,
    /// Labels an agent must also carry to build a long-lived environment (its
    /// production secrets), e.g. `["trusted"]`. Added in v1.4.
    #[serde(default)]
    pub long_lived_agent_labels: Vec<String>,
    /// Labels an agent must also carry to build a pull request's preview, e.g.
    /// `["previews"]`. Added in v1.4.
    #[serde(default)]
    pub preview_agent_labels: Vec<String>,
}

impl CreateProject {
    /// A project of `repository_url` with everything else at its default: the
    /// backend at the root, the storefront detected, no labels, token or git host.
    pub fn new(name: &str, repository_url: &str) -> CreateProject {
        CreateProject {
            name: name.to_owned(),
            repository_url: repository_url.to_owned(),
            backend_path: root_path(),
            storefront_path: None,
            agent_labels: Vec::new(),
            repository_token: None,
            secret_scan: SecretScanSettings::default(),
            submodules: false,
            git_host: None,
            long_lived_agent_labels: Vec::new(),
            preview_agent_labels: Vec::new(),
        }
    }
}

/// `PATCH /api/v1/projects/{project_id}`; applies from the next claimed job on.
/// Added in v1.2 (`secret_scan`); the other fields in v1.3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default)]
    pub secret_scan: Option<SecretScanSettings>,
    #[serde(default)]
    pub repository_url: Option<String>,
    #[serde(default)]
    pub backend_path: Option<String>,
    #[serde(default)]
    pub storefront_path: Option<String>,
    #[serde(default)]
    pub agent_labels: Option<Vec<String>>,
    #[serde(default)]
    pub repository_token: Option<String>,
    #[serde(default)]
    pub submodules: Option<bool>,
    /// Added in v1.4.
    #[serde(default)]
    pub git_host: Option<GitHostSettings>,
    /// Added in v1.4.
    #[serde(default)]
    pub long_lived_agent_labels: Option<Vec<String>>,
    /// Added in v1.4.
    #[serde(default)]
    pub preview_agent_labels: Option<Vec<String>>,
}

/// Which kind of git host a project's repository lives on, for webhooks in and
/// commit statuses out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitHostKind {
    Github,
    Gitlab,
    /// Gitea and Forgejo.
    Gitea,
}

impl GitHostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GitHostKind::Github => "github",
            GitHostKind::Gitlab => "gitlab",
            GitHostKind::Gitea => "gitea",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            GitHostKind::Github => "GitHub",
            GitHostKind::Gitlab => "GitLab",
            GitHostKind::Gitea => "Gitea",
        }
    }
}

impl std::str::FromStr for GitHostKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [GitHostKind::Github, GitHostKind::Gitlab, GitHostKind::Gitea]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a git host; use github, gitlab or gitea"))
    }
}

/// `git_host` of a project, as set: the token is write-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHostSettings {
    pub kind: GitHostKind,
    /// The host's API base URL: `https://api.github.com`,
    /// `https://gitlab.example.com/api/v4`, `https://gitea.example.com/api/v1`.
    pub api_url: String,
    /// A token allowed to post commit statuses and comments. Stored like a
    /// secret variable and never shown back.
    #[serde(default)]
    pub token: Option<String>,
}

/// `git_host` of a project, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHostView {
    pub kind: GitHostKind,
    pub api_url: String,
    pub has_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub repository_url: String,
    pub backend_path: String,
    #[serde(default)]
    pub storefront_path: Option<String>,
    #[serde(default)]
    pub agent_labels: Vec<String>,
    /// Added in v1.2.
    #[serde(default)]
    pub secret_scan: SecretScanSettings,
    /// Added in v1.3.
    #[serde(default)]
    pub submodules: bool,
    /// Added in v1.4.
    #[serde(default)]
    pub git_host: Option<GitHostView>,
    /// Added in v1.4.
    #[serde(default)]
    pub long_lived_agent_labels: Vec<String>,
    /// Added in v1.4.
    #[serde(default)]
    pub preview_agent_labels: Vec<String>,
    /// The secret webhooks are signed with: only in the answer to creating the
    /// project or rotating it (`POST /projects/{id}/webhook-secret`), never
    /// again. Added in v1.4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentKind {
    /// Bound to a branch rule, e.g. Production ← `main`.
    LongLived,
    /// One per open pull request, removed when it closes.
    Preview,
}

/// `POST /api/v1/projects/{project_id}/environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    pub name: String,
    /// A branch name or a glob such as `release/*`.
    pub branch: String,
    /// Deploy as soon as the build reaches `awaiting_deployment`. On by
    /// default, as on Medusa Cloud (v1.7; before, off).
    #[serde(default = "on")]
    pub auto_deploy: bool,
}

fn on() -> bool {
    true
}

/// `PATCH /api/v1/environments/{environment_id}`; applies from the next push on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub auto_deploy: Option<bool>,
    /// Deploys go to an agent with the deploy role (`crate::deploy`). Added in v1.7.
    #[serde(default)]
    pub deploy: Option<crate::deploy::DeploySettings>,
    /// What a release's provenance must show before it deploys here. Added
    /// in v1.10.
    #[serde(default)]
    pub require: Option<crate::provenance::ProvenancePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub kind: EnvironmentKind,
    pub branch: String,
    #[serde(default)]
    pub pull_request: Option<u64>,
    pub auto_deploy: bool,
    pub created_at: DateTime<Utc>,
    /// Set when an agent with the deploy role runs its deploys. Added in v1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<crate::deploy::DeploySettings>,
    /// What a release's provenance must show before it deploys here. Added
    /// in v1.10.
    #[serde(default)]
    pub require: crate::provenance::ProvenancePolicy,
}

/// `PUT /api/v1/environments/{environment_id}/variables`: replaces the whole set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVariables {
    pub variables: Vec<VariableInput>,
}

/// A variable as it is set: where it reaches (the build, the running release's
/// containers, both by default) and whether its value is secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableInput {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub secret: bool,
    #[serde(default = "yes")]
    pub build: bool,
    #[serde(default = "yes")]
    pub runtime: bool,
}

impl std::fmt::Debug for VariableInput {
    // A secret must not leak through a `{:?}` in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret { "***" } else { &self.value };
        f.debug_struct("VariableInput")
            .field("name", &self.name)
            .field("value", &value)
            .field("secret", &self.secret)
            .field("build", &self.build)
            .field("runtime", &self.runtime)
            .finish()
    }
}

/// A variable as the API shows it: secret values are never sent back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableView {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    pub secret: bool,
    #[serde(default = "yes")]
    pub build: bool,
    #[serde(default = "yes")]
    pub runtime: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableList {
    pub variables: Vec<VariableView>,
}

/// `POST /api/v1/events/push`: a branch moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub repository: String,
    pub branch: String,
    pub sha: String,
    pub author: String,
    pub message: String,
    #[serde(flatten)]
    pub people: EventPeople,
}

/// Who an event came from, beyond the author's name, as git hosts tell it.
/// Added in v1.4; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPeople {
    /// The author's user name on the git host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_avatar: Option<String>,
    /// Who pushed (may differ from the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestAction {
    Opened,
    Reopened,
    Synchronize,
    Closed,
}

/// `POST /api/v1/events/pull_request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestEvent {
    pub repository: String,
    pub number: u64,
    pub action: PullRequestAction,
    /// The pull request's head branch.
    pub branch: String,
    pub sha: String,
    pub author: String,
    pub message: String,
    #[serde(flatten)]
    pub people: EventPeople,
    /// The branch it would merge into: the preview's builds read that branch's
    /// build cache. Added in v1.4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
}

/// `POST /api/v1/deployments/{id}/redeploy`; the body is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeployRequest {
    /// `false` builds everything afresh, using no cache entry. Added in v1.4.
    #[serde(default)]
    pub cache: Option<bool>,
}

/// What an event did: the deployments it queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventOutcome {
    pub deployments: Vec<Deployment>,
    /// Deployments the event canceled (a newer commit, a closed pull request).
    #[serde(default)]
    pub canceled: Vec<String>,
    /// Why an environment the event matched queued nothing (a webhook's push
    /// of a commit older than the live one). Added in v1.8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// One status a deployment passed through, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub status: DeploymentStatus,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArtifact {
    #[serde(flatten)]
    pub descriptor: ArtifactDescriptor,
    pub job_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub project_id: String,
    pub environment_id: String,
    pub commit_sha: String,
    pub branch: String,
    pub author: String,
    /// The author's picture, when the git host sent one. Added in v1.3.
    #[serde(default)]
    pub author_avatar: Option<String>,
    /// The author's user name on the git host. Added in v1.4.
    #[serde(default)]
    pub author_login: Option<String>,
    /// Who pushed the commit, when a git host said. Added in v1.4.
    #[serde(default)]
    pub pusher: Option<String>,
    /// Whether its build may use the build cache (a redeploy may say no). Added in v1.4.
    #[serde(default = "yes")]
    pub use_cache: bool,
    pub message: String,
    pub status: DeploymentStatus,
    pub backend_status: ComponentStatus,
    pub storefront_status: ComponentStatus,
    /// Why the deployment is where it is, when that is a failure or a cancel.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
    /// The deployment this one rebuilds, for a redeploy.
    #[serde(default)]
    pub redeploy_of: Option<String>,
    /// How many times an agent claimed it (2 after a lost agent).
    pub attempts: u32,
    #[serde(default)]
    pub current_job_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    #[serde(default)]
    pub artifacts: Vec<StoredArtifact>,
    /// When the server's retention policy removed its artifacts (they stay
    /// listed, and are no longer served; a redeploy builds them again). Added
    /// in v1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_removed_at: Option<DateTime<Utc>>,
    /// For a queued deployment read alone (`GET /deployments/{id}`), why no agent
    /// has taken it yet: none registered, none with the labels it requires, or
    /// every one that may offline, paused, holding back or busy. Added in v1.6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentList {
    pub environments: Vec<Environment>,
}

/// An agent, as `GET /api/v1/agents` lists it. Added in v1.4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    /// `kiln-agent/0.1.0`, from its requests.
    pub version: Option<String>,
    pub facts: Option<crate::HostFacts>,
    pub state: AgentState,
    pub paused: bool,
    pub running_jobs: Vec<RunningJobInfo>,
    pub last_contact_at: Option<DateTime<Utc>>,
    pub registered_at: DateTime<Utc>,
    /// Why the agent, though not paused, claims no jobs now (it said so with
    /// its last claim: its disk is low). Added in v1.6.
    #[serde(default)]
    pub holding_back: Option<String>,
    /// Where its labels came from: the registration token that granted them,
    /// or the server's own. Added in v1.8.
    #[serde(default)]
    pub labels_from: Option<String>,
}

/// What an agent is doing, from its running jobs, `paused` and its last contact
/// (an agent long-polls every 30 s; two minutes of silence is `offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Idle,
    Busy,
    Paused,
    Offline,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Busy => "busy",
            AgentState::Paused => "paused",
            AgentState::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJobInfo {
    pub job_id: String,
    pub deployment_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// `PATCH /api/v1/agents/{id}`. Added in v1.4.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// A paused agent finishes what it runs and claims nothing new.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// `POST /api/v1/registration-tokens`. Added in v1.4.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegistrationToken {
    /// What it is for, e.g. `build host 7`.
    #[serde(default)]
    pub name: Option<String>,
    /// Registers one agent, then no more.
    #[serde(default)]
    pub one_time: bool,
    /// Stops working this many seconds from now.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
    /// The labels an agent registered with it may carry; it may carry no
    /// others. Added in v1.8; a token made without them grants none.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A registration token. `token` is in the answer to creating it only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationTokenInfo {
    pub id: String,
    pub name: Option<String>,
    pub one_time: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The labels it grants. Added in v1.8.
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationTokenList {
    pub registration_tokens: Vec<RegistrationTokenInfo>,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_from_v1_5_parses_without_waiting_for_and_omits_it_when_unset() {
        let text = r#"{"id": "dpl_1", "project_id": "prj_1", "environment_id": "env_1",
            "commit_sha": "0123456789abcdef0123456789abcdef01234567", "branch": "main",
            "author": "Ada", "message": "m", "status": "queued", "backend_status": "pending",
            "storefront_status": "pending", "attempts": 0,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}"#;
        let deployment: Deployment = serde_json::from_str(text).unwrap();
        assert_eq!(deployment.waiting_for, None);
        assert!(!serde_json::to_string(&deployment)
            .unwrap()
            .contains("waiting_for"));
    }

    #[test]
    fn an_agent_from_v1_4_parses_without_holding_back() {
        let agent: AgentInfo = serde_json::from_str(
            r#"{"id": "agt_1", "name": "a", "labels": [], "version": null, "facts": null,
                "state": "idle", "paused": false, "running_jobs": [],
                "last_contact_at": null, "registered_at": "2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(agent.holding_back, None);
    }

    #[test]
    fn project_defaults_backend_to_root() {
        let project: CreateProject = serde_json::from_str(
            r#"{"name": "shop", "repository_url": "https://git.example/shop.git"}"#,
        )
        .unwrap();
        assert_eq!(project.backend_path, ".");
        assert_eq!(project.storefront_path, None);
    }

    #[test]
    fn pull_request_action_is_checked() {
        let err = serde_json::from_str::<PullRequestEvent>(
            r#"{"repository": "r", "number": 1, "action": "merged", "branch": "b", "sha": "s", "author": "a", "message": "m"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `merged`"),
            "{err}"
        );
    }
}
