//! The one interface between the build pipeline and the container engine.
//!
//! The pipeline describes a `Step` (image, command, mounts, limits) and calls
//! `dyn Executor`; only `docker.rs` knows about bollard.

pub mod docker;
mod oci;
pub use oci::digest_file;
pub mod release;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::{Network, UidGid};
use crate::logs::LogSink;

pub use docker::DockerExecutor;

/// Where the job's workspace is mounted inside every build container.
pub const WORKSPACE_MOUNT: &str = "/kiln";
/// Where the extra CA bundle is mounted, read-only.
pub const CA_BUNDLE_MOUNT: &str = "/etc/kiln/extra-ca.pem";

/// Output `Executor::capture` keeps of a step; the rest is dropped.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// Labels on every container the agent starts, so it can find its own leftovers.
pub const LABEL_AGENT: &str = "kiln.agent";
pub const LABEL_JOB: &str = "kiln.job";
pub const LABEL_STEP: &str = "kiln.step";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: i64,
    pub open_files: i64,
    /// Disk the workspace may use; also the largest file a build may write.
    pub workspace_bytes: u64,
}

impl Limits {
    /// The operator's limits, the same for every container the agent starts.
    pub fn from_config(config: &crate::config::AgentConfig) -> Limits {
        Limits {
            memory_bytes: config.memory.0,
            cpus: config.cpus,
            pids: config.pids,
            open_files: config.open_files,
            workspace_bytes: config.workspace_limit.0,
        }
    }
}

/// One command in one container.
#[derive(Debug, Clone)]
pub struct Step {
    /// `install` or `build`: named in logs and failure reasons.
    pub name: String,
    pub agent_id: String,
    pub job_id: String,
    pub image: String,
    pub command: Vec<String>,
    /// Working directory inside the container.
    pub working_dir: String,
    /// Host directory mounted read-write at `WORKSPACE_MOUNT`: the only writable mount.
    pub workspace: PathBuf,
    pub env: Vec<(String, String)>,
    pub network: Network,
    pub limits: Limits,
    pub user: UidGid,
    pub ca_bundle: Option<PathBuf>,
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when the step is stopped.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Exited(i64),
    OutOfMemory,
    TimedOut(Duration),
    /// The container's processes reached the pids limit (a fork bomb, or a runaway
    /// pool); the step is stopped at once.
    ProcessLimit,
    /// The workspace grew past its cap; the step is stopped at once.
    WorkspaceLimit,
    /// The step failed with the file system under the workspace (nearly) full: the
    /// host ran out of disk before the workspace reached its cap.
    HostDiskFull {
        free_bytes: u64,
    },
    Canceled,
}

/// A container an earlier run of this agent left behind.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub container_id: String,
    pub job_id: Option<String>,
}

/// An image made of `base` and layers, each a tar.gz unpacked at `RELEASE_DIR`.
#[derive(Debug, Clone)]
pub struct ImageAssembly {
    pub base: String,
    pub layers: Vec<std::path::PathBuf>,
    /// The command; `None` keeps the base's.
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    /// `repository:tag`.
    pub tag: String,
    /// Labels of the image (the last layer's commit).
    pub labels: Vec<(String, String)>,
}

/// A build image as Docker describes it.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// `sha256:…`.
    pub id: String,
    /// Its `NODE_VERSION` variable (`22.23.5`), which Node's own images set.
    pub node_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Docker is unreachable: {reason}; is dockerd running, and is this user in the docker group?")]
    Unreachable { reason: String },
    #[error("build image {image} is not on this host; build it (sandbox-images/build-local.sh) or `docker pull {image}`, or set build_image")]
    ImageMissing { image: String },
    #[error("Docker failed to {action}: {reason}")]
    Docker {
        action: &'static str,
        reason: String,
    },
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs the step to its end, streaming stdout and stderr into `output`. The
    /// container is removed on every path.
    async fn run(
        &self,
        step: Step,
        output: LogSink,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, ExecError>;

    /// Runs the step like `run`, but keeps its output (at most `CAPTURE_LIMIT`
    /// bytes) instead of logging it: for facts the pipeline asks the build image,
    /// such as its Node version.
    async fn capture(
        &self,
        step: Step,
        cancel: CancellationToken,
    ) -> Result<(StepOutcome, Vec<u8>), ExecError>;

    /// Containers labelled with this agent, running or not.
    async fn leftovers(&self, agent_id: &str) -> Result<Vec<Leftover>, ExecError>;

    /// Force-removes a container.
    async fn remove(&self, container_id: &str) -> Result<(), ExecError>;

    /// What the pipeline needs of a build image: its id (cache keys change with
    /// it) and the Node it says it has.
    async fn inspect_image(&self, image: &str) -> Result<ImageFacts, ExecError>;

    /// `Docker 26.1.5 (API 1.45)`, for the host facts.
    async fn engine_version(&self) -> Result<String, ExecError>;

    /// Makes an image of layers with no command run in it; its id.
    async fn assemble_image(&self, assembly: &ImageAssembly) -> Result<String, ExecError>;

    async fn image_exists(&self, image: &str) -> Result<bool, ExecError>;

    /// `docker save` into `out`: its size and sha256.
    async fn save_image(
        &self,
        image: &str,
        out: &std::path::Path,
    ) -> Result<(u64, String), ExecError>;

    /// Removes an image's name.
    async fn untag_image(&self, image: &str) -> Result<(), ExecError>;

    /// Names `image` `reference` too and pushes it to its registry.
    async fn push_image(&self, image: &str, reference: &str) -> Result<(), ExecError>;
}
