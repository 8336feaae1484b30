//! Deployment and component statuses, and the one function that decides which
//! deployment transitions are legal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life. The names are Medusa Cloud's, plus `queued`
/// for a deployment that no agent has claimed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Queued,
    Building,
    BuildCanceled,
    BuildFailed,
    AwaitingDeployment,
    Deploying,
    DeployFailed,
    Live,
    Ready,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 9] = [
        Self::Queued,
        Self::Building,
        Self::BuildCanceled,
        Self::BuildFailed,
        Self::AwaitingDeployment,
        Self::Deploying,
        Self::DeployFailed,
        Self::Live,
        Self::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::BuildCanceled => "build_canceled",
            Self::BuildFailed => "build_failed",
            Self::AwaitingDeployment => "awaiting_deployment",
            Self::Deploying => "deploying",
            Self::DeployFailed => "deploy_failed",
            Self::Live => "live",
            Self::Ready => "ready",
        }
    }

    /// The name a person reads (Medusa Cloud's).
    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "Queued",
            Self::Building => "Building",
            Self::BuildCanceled => "Build canceled",
            Self::BuildFailed => "Build failed",
            Self::AwaitingDeployment => "Awaiting deployment",
            Self::Deploying => "Deploying",
            Self::DeployFailed => "Deploy failed",
            Self::Live => "Live",
            Self::Ready => "Ready",
        }
    }

    /// Still waiting for, or inside, a build: what a newer commit cancels.
    pub fn is_build_pending(self) -> bool {
        matches!(self, Self::Queued | Self::Building)
    }

    /// No transition leaves this status.
    pub fn is_final(self) -> bool {
        DeploymentStatus::ALL
            .iter()
            .all(|&to| check_transition(self, to).is_err())
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown deployment status {value:?}; expected one of queued, building, build_canceled, build_failed, awaiting_deployment, deploying, deploy_failed, live, ready")]
pub struct UnknownStatus {
    pub value: String,
}

impl FromStr for DeploymentStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                value: s.to_owned(),
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition from {from} to {to}")]
pub struct IllegalTransition {
    pub from: DeploymentStatus,
    pub to: DeploymentStatus,
}

/// The single authority on the deployment lifecycle.
///
/// `building → queued` exists for one case only: an agent's lease expired and the
/// control plane hands the job out again. `ready → live` does not exist: putting an
/// older build back live is a redeploy, which is a new deployment.
pub fn check_transition(
    from: DeploymentStatus,
    to: DeploymentStatus,
) -> Result<(), IllegalTransition> {
    use DeploymentStatus::*;
    let legal = matches!(
        (from, to),
        (Queued, Building | BuildCanceled | BuildFailed)
            | (
                Building,
                Queued | AwaitingDeployment | BuildFailed | BuildCanceled
            )
            | (AwaitingDeployment, Deploying)
            | (Deploying, Live | DeployFailed)
            | (Live, Ready)
            // A rollback: a release that was live runs again, unbuilt.
            | (Ready, Deploying)
    );
    if legal {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

/// The two parts of a Medusa deployment, built separately and reported apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Backend,
    Storefront,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Storefront => "storefront",
        }
    }

    /// The name the component's build is uploaded under (`ArtifactDescriptor::name`).
    pub fn artifact_name(self) -> &'static str {
        match self {
            Self::Backend => "backend.tar.gz",
            Self::Storefront => "storefront.tar.gz",
        }
    }

    /// The log stream the component's build output goes to.
    pub fn log_stream(self) -> LogStream {
        match self {
            Self::Backend => LogStream::Backend,
            Self::Storefront => LogStream::Storefront,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    Pending,
    Building,
    Succeeded,
    Failed,
    Canceled,
    /// The project has no such component (e.g. no storefront).
    Skipped,
}

impl ComponentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
        }
    }

    /// The name a person reads.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Building => "Building",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
            Self::Skipped => "Skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Building,
            Self::Succeeded,
            Self::Failed,
            Self::Canceled,
            Self::Skipped,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

/// One of the three log streams a job writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// What the agent itself does: clone, detect, scan, upload.
    System,
    Backend,
    Storefront,
    /// A deploy job's steps: load, migrate, start, health, switch.
    Deploy,
    /// The live release's output (server, worker, storefront), each line
    /// prefixed with its service; on the deploy job that started them.
    Runtime,
}

impl LogStream {
    pub const ALL: [LogStream; 5] = [
        Self::System,
        Self::Backend,
        Self::Storefront,
        Self::Deploy,
        Self::Runtime,
    ];

    /// Whether the stream is a deploy job's rather than a build's.
    pub fn of_deploy_job(self) -> bool {
        matches!(self, Self::Deploy | Self::Runtime)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Backend => "backend",
            Self::Storefront => "storefront",
            Self::Deploy => "deploy",
            Self::Runtime => "runtime",
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log stream {value:?}; expected system, backend, storefront, deploy or runtime")]
pub struct UnknownLogStream {
    pub value: String,
}

impl FromStr for LogStream {
    type Err = UnknownLogStream;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|stream| stream.as_str() == s)
            .ok_or_else(|| UnknownLogStream {
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentStatus::*;

    #[test]
    fn happy_path_is_legal() {
        for pair in [Queued, Building, AwaitingDeployment, Deploying, Live, Ready].windows(2) {
            check_transition(pair[0], pair[1]).unwrap();
        }
    }

    #[test]
    fn live_never_goes_back_to_building() {
        let err = check_transition(Live, Building).unwrap_err();
        assert_eq!(err.to_string(), "illegal transition from live to building");
    }

    #[test]
    fn ready_goes_back_only_through_a_rollback_deploy() {
        assert!(check_transition(Ready, Live).is_err());
        assert!(check_transition(Ready, Building).is_err());
        assert!(check_transition(Ready, Deploying).is_ok());
    }

    #[test]
    fn failures_and_cancel_are_final() {
        for status in [BuildCanceled, BuildFailed, DeployFailed] {
            assert!(status.is_final(), "{status} should be final");
        }
        for status in [Queued, Building, AwaitingDeployment, Deploying, Live, Ready] {
            assert!(!status.is_final(), "{status} should not be final");
        }
    }

    #[test]
    fn no_status_transitions_to_itself() {
        for status in DeploymentStatus::ALL {
            assert!(check_transition(status, status).is_err());
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in DeploymentStatus::ALL {
            assert_eq!(status.as_str().parse::<DeploymentStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    #[test]
    fn unknown_status_is_a_clear_error() {
        let err = "exploded".parse::<DeploymentStatus>().unwrap_err();
        assert!(err.to_string().contains("\"exploded\""));
        let err = serde_json::from_str::<DeploymentStatus>("\"exploded\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `exploded`"),
            "{err}"
        );
    }
}
