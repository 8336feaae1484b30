//! What agents and the control plane say to each other: registration, jobs, the
//! job watch (lease renewal and cancellation), status updates, logs and artifacts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::{ComponentStatus, DeploymentStatus, LogStream};

/// `POST /api/v1/agents/register`, authorised by the registration token: in the
/// `Authorization: Bearer` header (since v1.3, checked before the body is read),
/// or in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgentRequest {
    /// Empty when the header carries it.
    #[serde(default)]
    pub registration_token: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// The build host, as the agent sees it. Added in v1.4.
    #[serde(default)]
    pub facts: Option<HostFacts>,
}

/// What an agent reports of its build host, at registration and with each claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    #[serde(default)]
    pub cores: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    /// `Docker 26.1.5 (API 1.45)`.
    #[serde(default)]
    pub docker_version: String,
    /// Free space under the agent's `work_dir`.
    #[serde(default)]
    pub free_disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgentResponse {
    pub agent_id: String,
    /// Shown once; the control plane keeps only its hash.
    pub token: String,
}

/// `POST /api/v1/agent/jobs/claim`: a long-poll for the next job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// How long the server may hold the request when no job is queued; capped at 30.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// The build host now. Added in v1.4.
    #[serde(default)]
    pub facts: Option<HostFacts>,
    /// Set when the agent takes no job now, and why: its disk is below
    /// `min_free_disk`. The control plane answers 204 at once and shows the
    /// reason on the agent until a claim comes without it. Added in v1.6; older
    /// control planes ignore it and may still hand the agent a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_back: Option<String>,
    /// What the agent takes jobs for. Added in v1.7; empty (older agents) means
    /// builds only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<crate::deploy::Role>,
}

/// A build an agent has claimed: everything it needs, nothing it must look up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// One claim of a deployment; a deployment handed out again gets a new job id.
    pub job_id: String,
    pub deployment_id: String,
    pub project_id: String,
    pub environment_id: String,
    /// 1 for the first claim, 2 after a lost agent's job was handed out again.
    pub attempt: u32,
    pub repository_url: String,
    pub commit_sha: String,
    pub branch: String,
    pub author: String,
    pub message: String,
    /// Directory of the Medusa backend inside the repository, `.` for the root.
    pub backend_path: String,
    #[serde(default)]
    pub storefront_path: Option<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Credential for cloning; never logged, never written to disk by the agent.
    #[serde(default)]
    pub repository_token: Option<String>,
    pub limits: JobLimits,
    /// The agent must call the job watch at least this often or lose the job.
    pub lease_seconds: u64,
    /// The project's secret-scan settings. Added in v1.2; older control planes omit
    /// it and get the defaults (findings fail the build, nothing allowed).
    #[serde(default)]
    pub secret_scan: SecretScanSettings,
    /// Whether to clone git submodules (with the credential bound to the
    /// repository's own URL). Added in v1.3; older control planes omit it: none.
    #[serde(default)]
    pub submodules: bool,
    /// How the build may use the agent's build cache. Added in v1.4; older control
    /// planes omit it, and the agent then keeps to a scope of the job's branch.
    #[serde(default)]
    pub cache: Option<JobCache>,
    /// Set on a deploy job (an agent with the deploy role): run this release
    /// instead of building. Added in v1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployJob>,
    /// Also make the backend's release image: its environment deploys to
    /// agents. Added in v1.7.
    #[serde(default)]
    pub release_image: bool,
    /// Where to push the release image too (`registry/repository:tag`), when
    /// the control plane has a registry. Added in v1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_reference: Option<String>,
}

/// The build cache's trust scopes for one job, as GitHub Actions scopes caches:
/// a long-lived environment's builds read and write `branch:<name>`; a preview
/// reads its own `pr:<number>` and then its base branch's, and writes only its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCache {
    /// Whether to use the cache at all (a redeploy with `{"cache": false}` says no).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The scope this build reads first and writes.
    pub scope: String,
    /// Scopes it may read after its own, in order.
    #[serde(default)]
    pub fallback_scopes: Vec<String>,
    /// The project's scopes whose entries are to go (pull requests since closed).
    #[serde(default)]
    pub dropped_scopes: Vec<String>,
}

fn enabled() -> bool {
    true
}

/// What a secret found in the public build output does to the deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretScanMode {
    /// `build_failed` with the findings.
    #[default]
    Fail,
    /// Findings go to the system log as warnings; the build goes on.
    Warn,
}

/// A project's secret-scan settings: the mode, and findings accepted on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretScanSettings {
    #[serde(default)]
    pub mode: SecretScanMode,
    /// Globs over paths relative to the public directory, e.g. `docs/**`.
    #[serde(default)]
    pub allow_paths: Vec<String>,
    /// Rule ids, e.g. `jwt`.
    #[serde(default)]
    pub allow_rules: Vec<String>,
    /// Fingerprints of single findings, as the scan prints them.
    #[serde(default)]
    pub allow_fingerprints: Vec<String>,
}

/// A build environment variable. `secret` ones are masked in logs and searched for
/// in the public build output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

impl std::fmt::Debug for EnvVar {
    // A secret must not leak through a `{:?}` in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret { "***" } else { &self.value };
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &value)
            .field("secret", &self.secret)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Wall-clock limit for the whole build.
    pub timeout_seconds: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            timeout_seconds: 3600,
        }
    }
}

/// `POST /api/v1/agent/jobs/{job_id}/watch`: renews the lease and holds until the job
/// is canceled or `wait_seconds` pass. See ARCHITECTURE.md for why a long-poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

/// What the agent must do with a job it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobDirective {
    Continue,
    /// Stop the build, remove its container, report `build_canceled`.
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobControl {
    pub job_id: String,
    pub directive: JobDirective,
    pub status: DeploymentStatus,
    pub lease_expires_at: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/agent/jobs/{job_id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatusUpdate {
    pub status: DeploymentStatus,
    #[serde(default)]
    pub backend: Option<ComponentStatus>,
    #[serde(default)]
    pub storefront: Option<ComponentStatus>,
    /// Why, in words a person understands: "npm run build exited with code 2".
    #[serde(default)]
    pub reason: Option<String>,
    /// Structured extra detail (e.g. secret-scan findings), stored as given.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
    /// The built commit's own message, read from the clone: a pull request's
    /// event carries only its title. Added in v1.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
    /// On `awaiting_deployment`: what the control plane's provenance of the
    /// build is to say (its plan, images and the cache entries it restored).
    /// Added in v1.10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::provenance::BuildRecord>,
}

/// Answer to `PUT /api/v1/agent/jobs/{job_id}/logs/{stream}?offset=N`, whose body is
/// the chunk's bytes starting at stream offset `N`. An empty body at offset 0 asks
/// where the stream ends, e.g. to resume after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAppendResponse {
    pub stream: LogStream,
    /// Where the next chunk must start: the stream's length on the server.
    pub next_offset: u64,
}

/// An artifact as the agent declares it before upload, and as the server stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDescriptor {
    /// `backend.tar.gz` or `storefront.tar.gz` as the agent sends them
    /// (`Component::artifact_name`); `[a-z0-9._-]`, at most 64 bytes.
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Answer to `POST /api/v1/agent/jobs/{job_id}/artifacts`: where to `PUT` the bytes.
/// The URL carries its own authorisation, like an S3 presigned URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactUploadTicket {
    pub name: String,
    /// Absolute, or relative to the control plane's base URL.
    pub upload_url: String,
    pub expires_at: DateTime<Utc>,
}

/// Whether a deploy job brings a new release in or rolls back to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployAction {
    /// Migrations, then the cutover.
    Deploy,
    /// The cutover alone: a release that ran before, no migrations.
    Rollback,
}

/// A release image the deploy host loads: an artifact of the deployment's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseImage {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Where the agent downloads it (relative to the control plane's base URL).
    pub url: String,
    /// Where the agent pulls it from instead, when the control plane has a
    /// registry (`registry/repository:tag`). Added in v1.7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The control plane's signed provenance of this image, which the deploy
    /// host checks before it runs it. Added in v1.10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::provenance::Envelope>,
}

/// What a deploy host needs to put a deployment live. Sent in `Job::deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployJob {
    pub action: DeployAction,
    pub environment_name: String,
    pub settings: crate::deploy::DeploySettings,
    pub backend: ReleaseImage,
    /// The storefront's release image (a Next.js storefront the build could
    /// make one for), started and routed where `storefront_hostname` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storefront: Option<ReleaseImage>,
    /// The runtime variables (`"runtime": true`).
    #[serde(default)]
    pub runtime_env: Vec<EnvVar>,
    /// Release images kept per environment on the host, for rollbacks.
    pub releases_kept: u32,
    /// The environment's provenance policy. Added in v1.10.
    #[serde(default)]
    pub require: crate::provenance::ProvenancePolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB_V1: &str = r#"{
        "job_id": "job_1", "deployment_id": "dpl_1", "project_id": "prj_1",
        "environment_id": "env_1", "attempt": 1,
        "repository_url": "https://git.example/shop.git", "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "branch": "main", "author": "Ada", "message": "Add cart",
        "backend_path": ".", "limits": {"timeout_seconds": 900}, "lease_seconds": 60
    }"#;

    #[test]
    fn job_from_v1_0_parses_with_defaults() {
        let job: Job = serde_json::from_str(JOB_V1).unwrap();
        assert_eq!(job.storefront_path, None);
        assert!(job.env.is_empty());
        assert_eq!(job.repository_token, None);
        assert_eq!(job.limits.timeout_seconds, 900);
        assert_eq!(job.secret_scan, SecretScanSettings::default());
        assert_eq!(job.secret_scan.mode, SecretScanMode::Fail);
        assert!(!job.submodules);
    }

    #[test]
    fn a_claim_from_v1_4_parses_and_holding_back_is_sent_only_when_set() {
        let claim: ClaimRequest =
            serde_json::from_str(r#"{"wait_seconds": 30, "facts": {"cores": 2}}"#).unwrap();
        assert_eq!(claim.holding_back, None);
        assert!(!serde_json::to_string(&claim)
            .unwrap()
            .contains("holding_back"));
        let held = ClaimRequest {
            holding_back: Some("disk low".into()),
            ..claim
        };
        let again: ClaimRequest =
            serde_json::from_str(&serde_json::to_string(&held).unwrap()).unwrap();
        assert_eq!(again, held);
    }

    #[test]
    fn secret_scan_settings_parse_with_defaults() {
        let settings: SecretScanSettings =
            serde_json::from_str(r#"{"mode": "warn", "allow_rules": ["jwt"]}"#).unwrap();
        assert_eq!(settings.mode, SecretScanMode::Warn);
        assert_eq!(settings.allow_rules, ["jwt"]);
        assert!(settings.allow_paths.is_empty());
        let error = serde_json::from_str::<SecretScanSettings>(r#"{"mode": "loud"}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `loud`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut value: serde_json::Value = serde_json::from_str(JOB_V1).unwrap();
        value["added_in_v9"] = serde_json::json!({"anything": true});
        let job: Job = serde_json::from_value(value).unwrap();
        assert_eq!(job.job_id, "job_1");
    }

    #[test]
    fn missing_required_field_names_it() {
        let mut value: serde_json::Value = serde_json::from_str(JOB_V1).unwrap();
        value.as_object_mut().unwrap().remove("commit_sha");
        let err = serde_json::from_value::<Job>(value).unwrap_err();
        assert_eq!(err.to_string(), "missing field `commit_sha`");
    }

    #[test]
    fn job_round_trips() {
        let mut job: Job = serde_json::from_str(JOB_V1).unwrap();
        job.env.push(EnvVar {
            name: "JWT_SECRET".into(),
            value: "hunter2".into(),
            secret: true,
        });
        job.storefront_path = Some("storefront".into());
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn secret_values_stay_out_of_debug_output() {
        let var = EnvVar {
            name: "JWT_SECRET".into(),
            value: "hunter2".into(),
            secret: true,
        };
        assert!(!format!("{var:?}").contains("hunter2"));
    }

    #[test]
    fn status_update_wire_form() {
        let update = JobStatusUpdate {
            status: DeploymentStatus::BuildFailed,
            backend: Some(ComponentStatus::Failed),
            storefront: None,
            reason: Some("npm run build exited with code 2".into()),
            detail: None,
            commit_message: None,
            build: None,
        };
        insta::assert_json_snapshot!(update, @r###"
        {
          "status": "build_failed",
          "backend": "failed",
          "storefront": null,
          "reason": "npm run build exited with code 2",
          "detail": null
        }
        "###);
    }

    #[test]
    fn unknown_status_in_update_is_an_error() {
        let err = serde_json::from_str::<JobStatusUpdate>(r#"{"status": "done"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `done`"), "{err}");
    }
}
