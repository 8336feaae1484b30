//! Turns a `BuildRequest` into a `BuildOutcome`: the source (a git checkout or a
//! local copy), then the backend (`backend.rs`) and the storefront
//! (`storefront.rs`) side by side, each restoring its install from the cache
//! through one shared step (`restore.rs`). Reaches Docker only through
//! `Executor`; talks to no control plane (the job reports and uploads).
//!
//! Every stage returns `Result<_, Stop>`, so a failure or a cancel travels up with
//! `?` and becomes the outcome in one place, `Pipeline::build`.

pub mod artifact;
mod backend;
mod cached;
pub(crate) mod checkout;
mod diagnose;
mod node;
pub(crate) mod plan;
mod record;
mod release;
mod restore;
mod scan;
mod steps;
mod storefront;
mod storefront_release;
mod workspace;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{Component, ComponentStatus, EnvVar, LogStream};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::executor::Executor;
use crate::logs::{JobLogs, LogSink};
use artifact::Packed;
pub use cached::{CacheRequest, FetchedOutput, Harvest, SharedOutputs};
pub use release::LABEL_READS_WORKER_MODE;
pub use workspace::Workspace;

/// Where the code to build comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Git {
        url: String,
        commit: String,
        token: Option<String>,
        /// Clone submodules too (the project's setting).
        submodules: bool,
    },
    /// `kiln-agent build DIR`: a copy of a local directory.
    Local(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub job_id: String,
    pub source: Source,
    pub backend_path: String,
    pub storefront_path: Option<String>,
    pub env: Vec<EnvVar>,
    pub secret_scan: kiln_protocol::SecretScanSettings,
    pub timeout: Duration,
    /// Where component statuses and the commit's message go as they are
    /// known (the job reports them).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    /// The build cache and this build's scopes; `None` builds without it.
    pub cache: Option<CacheRequest>,
    /// Also make the backend's release image (its environment deploys to agents).
    pub release_image: bool,
    /// And push it there (`registry/repository:tag`).
    pub release_reference: Option<String>,
}

/// What a build learns as it goes, for the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Component(Component, ComponentStatus),
    /// The commit's own message, from the clone.
    CommitMessage(String),
}

impl BuildRequest {
    fn progress(&self, component: Component, status: ComponentStatus) {
        if let Some(progress) = &self.progress {
            let _ = progress.send(Progress::Component(component, status));
        }
    }
}

/// A component's packed build output.
#[derive(Debug, Clone)]
pub struct BuiltArtifact {
    pub component: Component,
    /// The component's release image (`release.rs`), not its build output.
    pub release: bool,
    pub packed: Packed,
}

impl BuiltArtifact {
    pub fn name(&self) -> &'static str {
        if self.release {
            match self.component {
                Component::Backend => kiln_protocol::BACKEND_RELEASE,
                Component::Storefront => kiln_protocol::STOREFRONT_RELEASE,
            }
        } else {
            self.component.artifact_name()
        }
    }
}

/// Why a build failed, and which component it was building.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildFailure {
    pub component: Component,
    /// For a person: what failed and, where we know, what to do.
    pub reason: String,
    /// Structured detail for the status report (the secret scan's findings).
    pub detail: Option<serde_json::Value>,
}

impl BuildFailure {
    fn new(component: Component, reason: impl Into<String>) -> BuildFailure {
        BuildFailure {
            component,
            reason: reason.into(),
            detail: None,
        }
    }
}

/// The reason as the deployment shows it: a storefront failure says so first.
impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.component {
            Component::Backend => f.write_str(&self.reason),
            Component::Storefront => write!(f, "storefront: {}", self.reason),
        }
    }
}

#[derive(Debug)]
pub enum BuildOutcome {
    Built {
        artifacts: Vec<BuiltArtifact>,
        /// What to leave in the build cache, once the job has reported.
        harvest: Option<Harvest>,
        /// What the build's provenance is to say.
        record: kiln_protocol::provenance::BuildRecord,
    },
    Failed(BuildFailure),
    Canceled,
}

/// Why a stage ended the build early.
#[derive(Debug)]
enum Stop {
    Failed(BuildFailure),
    Canceled,
}

fn fail(component: Component, reason: impl Into<String>) -> Stop {
    Stop::Failed(BuildFailure::new(component, reason))
}

pub struct Pipeline {
    pub executor: Arc<dyn Executor>,
    pub config: Arc<AgentConfig>,
    pub agent_id: String,
}

const DISK_FULL: &str = "the build host's disk is full";

fn seconds(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

/// One build in progress: what every stage needs.
struct Build<'a> {
    pipeline: &'a Pipeline,
    request: &'a BuildRequest,
    workspace: &'a Workspace,
    logs: &'a JobLogs,
    cancel: &'a CancellationToken,
    deadline: Instant,
    system: LogSink,
    /// Installs done (or restored) so far: directory and command.
    installed: std::sync::Mutex<Vec<(PathBuf, Vec<String>)>>,
    /// Whether the backend's install is behind it (`Some(true)`: done, restored
    /// or not needed; `Some(false)`: it failed): the storefront, built beside
    /// the backend, installs only after it, often in the same workspace.
    backend_installed: tokio::sync::watch::Sender<Option<bool>>,
    /// Which components may still have a container running (backend,
    /// storefront). Their outputs are read (checked, scanned, packed) only once
    /// none runs: a container beside them could swap a checked directory for a
    /// link while the agent reads it.
    containers: tokio::sync::watch::Sender<[bool; 2]>,
    /// The image each component builds in (backend, storefront), once chosen.
    nodes: [std::sync::OnceLock<node::NodeChoice>; 2],
    /// A local build's copied files as the copy left them, for its output keys.
    copied_files: std::sync::OnceLock<Vec<(String, String)>>,
    /// What its provenance is to say.
    record: record::Recorder,
}

impl Pipeline {
    #[tracing::instrument(skip_all, fields(job_id = %request.job_id))]
    pub async fn build(
        &self,
        request: &BuildRequest,
        workspace: &Workspace,
        logs: &JobLogs,
        cancel: &CancellationToken,
    ) -> BuildOutcome {
        let started = Instant::now();
        let build = Build {
            pipeline: self,
            request,
            workspace,
            logs,
            cancel,
            deadline: started + request.timeout,
            system: logs.sink(LogStream::System),
            installed: Default::default(),
            backend_installed: tokio::sync::watch::Sender::new(None),
            // One at a time, the storefront has none running while the backend
            // reads its output, and the backend's are over before it starts.
            containers: tokio::sync::watch::Sender::new([
                true,
                self.config.components_side_by_side,
            ]),
            nodes: Default::default(),
            copied_files: Default::default(),
            record: Default::default(),
        };
        let ran = tokio::select! {
            ran = build.run() => ran,
            _ = tokio::time::sleep_until(build.deadline.into()) => Err(fail(
                Component::Backend,
                format!("timed out after {}", crate::config::Span(request.timeout)),
            )),
        };
        let outcome = match ran {
            Ok((artifacts, harvest)) => BuildOutcome::Built {
                artifacts,
                harvest,
                record: build.record.finish(),
            },
            Err(Stop::Canceled) => BuildOutcome::Canceled,
            Err(Stop::Failed(mut failure)) => {
                // A clone or a pack that ran out of disk says only "No space left on
                // device"; name the disk, and what to do.
                if !failure.reason.contains(DISK_FULL) {
                    if let Some(full) = crate::disk::full(&self.config.work_dir) {
                        failure.reason = format!(
                            "{}; {}",
                            failure.reason,
                            self.disk_full(full.free_bytes, "")
                        );
                    }
                }
                BuildOutcome::Failed(failure)
            }
        };
        let system = &build.system;
        match &outcome {
            BuildOutcome::Built { .. } => {
                system.line(format!("Build succeeded in {}.", seconds(started)))
            }
            BuildOutcome::Failed(failure) => system.line(format!(
                "Build failed after {}: {failure}",
                seconds(started)
            )),
            BuildOutcome::Canceled => {
                system.line(format!("Build canceled after {}.", seconds(started)))
            }
        }
        outcome
    }

    /// What a full disk under `work_dir` means for the operator; `during` names the step.
    fn disk_full(&self, free_bytes: u64, during: &str) -> String {
        format!(
            "{DISK_FULL}{during} ({} free under work_dir {}); free space there or move work_dir to a larger disk",
            crate::config::ByteSize(free_bytes),
            self.config.work_dir.display()
        )
    }
}

/// A component's place in the per-component arrays of a build.
fn index(component: Component) -> usize {
    match component {
        Component::Backend => 0,
        Component::Storefront => 1,
    }
}

impl Build<'_> {
    async fn run(&self) -> Result<(Vec<BuiltArtifact>, Option<Harvest>), Stop> {
        self.workspace.prepare().map_err(|error| {
            fail(
                Component::Backend,
                format!(
                    "cannot create the workspace {}: {error}; check free space and permissions of work_dir",
                    self.workspace.root.display()
                ),
            )
        })?;
        self.fetch_source().await?;
        let build_user = self.pipeline.config.build_user;
        self.workspace.hand_over(build_user).map_err(|error| {
            fail(
                Component::Backend,
                format!(
                    "cannot give the workspace to uid {}: {error}",
                    build_user.uid
                ),
            )
        })?;
        let plan = self.plan_backend()?;
        // Before anything builds: which directory is the storefront's tells what
        // each component's cached output depends on. Its errors wait for its turn.
        let storefront = match storefront::detect(self, &plan.app_dir).await {
            Err(Stop::Canceled) => return Err(Stop::Canceled),
            detected => detected,
        };
        // Each component's Node, before anything installs.
        let backend_node = self
            .choose_node(
                Component::Backend,
                &plan.app_dir,
                plan.node_requirement.as_ref(),
            )
            .await?;
        self.record.image(
            Component::Backend,
            &backend_node.image,
            &backend_node.image_id,
        );
        self.record.described(
            Component::Backend,
            Some("medusa".to_owned()),
            Some(plan.manager.slug().to_owned()),
        );
        let _ = self.nodes[index(Component::Backend)].set(backend_node);
        let storefront = match storefront {
            Ok(Some(found)) => {
                let dir = storefront::repo_path(&found.app_dir);
                match self
                    .choose_node(Component::Storefront, &dir, found.node_requirement.as_ref())
                    .await
                {
                    Ok(choice) => {
                        self.record
                            .image(Component::Storefront, &choice.image, &choice.image_id);
                        self.record.described(
                            Component::Storefront,
                            Some(found.framework.slug().to_owned()),
                            Some(found.package_manager.to_owned()),
                        );
                        let _ = self.nodes[index(Component::Storefront)].set(choice);
                        Ok(Some(found))
                    }
                    Err(Stop::Canceled) => return Err(Stop::Canceled),
                    Err(stop) => Err(stop),
                }
            }
            other => other,
        };
        let storefront_shape = match &storefront {
            Ok(Some(found)) => Some(storefront_release::StorefrontShape::of(found)),
            _ => None,
        };
        let storefront_dirs = match &storefront {
            Ok(Some(found)) => Some((
                storefront::repo_path(&found.app_dir),
                storefront::repo_path(&found.install_dir),
            )),
            _ => None,
        };
        let cache = self.open_cache().await;
        // The two components build side by side unless the operator says not
        // to (each step's limits apply to its own container); each runs to its
        // end, so the deployment shows how both fared, and the backend's
        // failure is the one told first.
        let backend = async {
            let built = self
                .backend(&plan, cache.as_ref(), storefront_dirs.as_ref())
                .await;
            self.containers_ended(Component::Backend);
            // Unless it said so already: its install failed, or it ended early.
            self.backend_installed.send_if_modified(|settled| {
                let unsaid = settled.is_none();
                if unsaid {
                    *settled = Some(built.is_ok());
                }
                unsaid
            });
            built
        };
        let storefront = async {
            let built = match storefront {
                Ok(detected) => storefront::build(self, &plan, detected, cache.as_ref()).await,
                Err(stop) => Err(stop),
            };
            self.containers_ended(Component::Storefront);
            built
        };
        let (backend, storefront) = if self.pipeline.config.components_side_by_side {
            tokio::join!(backend, storefront)
        } else {
            // One at a time (the operator's choice for a small host): a failed
            // backend ends the build.
            let backend = backend.await;
            let storefront = match backend {
                Ok(_) => storefront.await,
                Err(_) => {
                    drop(storefront);
                    Ok(None)
                }
            };
            (backend, storefront)
        };
        let (backend, storefront) = match (backend, storefront) {
            (Err(Stop::Failed(failure)), _) | (_, Err(Stop::Failed(failure))) => {
                return Err(Stop::Failed(failure))
            }
            (Err(Stop::Canceled), _) | (_, Err(Stop::Canceled)) => return Err(Stop::Canceled),
            (Ok(backend), Ok(storefront)) => (backend, storefront),
        };
        // Once no container of the build runs.
        let mut releases = Vec::new();
        if self.request.release_image {
            releases.push(self.release_image(&backend.packed).await?);
            if let (Some(shape), Some(storefront)) = (&storefront_shape, &storefront) {
                releases.extend(
                    self.storefront_release_image(shape, &storefront.packed)
                        .await?,
                );
            }
        }
        let mut artifacts = vec![backend];
        artifacts.extend(storefront);
        artifacts.extend(releases);
        Ok((artifacts, cache.map(|cache| cache.harvest())))
    }

    /// Waits until the backend's install is behind it; `false` if it failed.
    async fn backend_install_settled(&self) -> bool {
        let mut settled = self.backend_installed.subscribe();
        let done = match settled.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(false),
            Err(_) => false,
        };
        done
    }

    /// The image `component` builds in: its choice, or `build_image` before one.
    fn node_image(&self, component: Component) -> &str {
        self.nodes[index(component)]
            .get()
            .map(|choice| choice.image.as_str())
            .unwrap_or(&self.pipeline.config.build_image)
    }

    /// The id of the image `component` builds in ("" before one is chosen).
    fn image_id(&self, component: Component) -> String {
        self.nodes[index(component)]
            .get()
            .map(|choice| choice.image_id.clone())
            .unwrap_or_default()
    }

    /// The Node version `component` builds with, when its image says it.
    fn node_version(&self, component: Component) -> Option<&str> {
        self.nodes[index(component)].get()?.version.as_deref()
    }

    /// Says `component` runs no more containers in this build.
    fn containers_ended(&self, component: Component) {
        let index = index(component);
        self.containers.send_if_modified(|running| {
            let was = running[index];
            running[index] = false;
            was
        });
    }

    /// Waits until no container of this build runs, so that what `component`
    /// reads of the workspace can no longer change under it.
    async fn until_no_container_runs(&self, component: Component) {
        self.containers_ended(component);
        let mut running = self.containers.subscribe();
        if running.borrow().iter().any(|&one| one) {
            self.system.line(format!(
                "{}: its build is done; its output is read once the other component's containers have ended too.",
                node::title(component)
            ));
        }
        let _ = running
            .wait_for(|running| !running.iter().any(|&one| one))
            .await;
    }

    /// Says the backend's install is done (or restored, or not needed).
    fn settle_backend_install(&self) {
        self.backend_installed.send_replace(Some(true));
    }

    /// Whether an install of `command` in `dir` already ran (or was restored).
    fn installed(&self, dir: &std::path::Path, command: &[String]) -> bool {
        crate::lock(&self.installed)
            .iter()
            .any(|(done, with)| done == dir && with == command)
    }

    fn mark_installed(&self, dir: &std::path::Path, command: &[String]) {
        crate::lock(&self.installed).push((dir.to_owned(), command.to_owned()));
    }

    async fn fetch_source(&self) -> Result<(), Stop> {
        let (system, src) = (&self.system, self.workspace.src());
        let started = Instant::now();
        match &self.request.source {
            Source::Git {
                url,
                commit,
                token,
                submodules,
            } => {
                system.line(format!(
                    "Cloning {} at {commit}.",
                    checkout::redact_url(url)
                ));
                let fetch = checkout::Fetch {
                    url,
                    commit,
                    token: token.as_deref(),
                    allow_local: self.pipeline.config.allow_local_repositories,
                    submodules: *submodules,
                };
                match checkout::checkout(fetch, &src, system, self.cancel).await {
                    Ok(()) => {
                        system.line(format!(
                            "Checked out {} in {}.",
                            &commit[..commit.len().min(12)],
                            seconds(started)
                        ));
                        if let (Some(progress), Some(message)) =
                            (&self.request.progress, checkout::commit_message(&src).await)
                        {
                            let _ = progress.send(Progress::CommitMessage(message));
                        }
                    }
                    Err(checkout::CheckoutError::Canceled) => return Err(Stop::Canceled),
                    Err(error) => return Err(fail(Component::Backend, error.to_string())),
                }
            }
            Source::Local(dir) => {
                system.line(format!("Copying {}.", dir.display()));
                let (from, to) = (dir.clone(), src);
                // Its files are read once here, before any step writes beside
                // them: the key of an output reused from an earlier local build.
                let with_cache = self.request.cache.is_some();
                match tokio::task::spawn_blocking(move || {
                    let copied = workspace::copy_tree(&from, &to)?;
                    let files = with_cache
                        .then(|| crate::cache::inputs::files_of(&to))
                        .transpose()?;
                    Ok::<_, std::io::Error>((copied, files))
                })
                .await
                .expect("copy task")
                {
                    Ok((files, listed)) => {
                        if let Some(listed) = listed {
                            let _ = self.copied_files.set(listed);
                        }
                        system.line(format!("Copied {files} files in {}.", seconds(started)))
                    }
                    Err(error) => {
                        return Err(fail(
                            Component::Backend,
                            format!("cannot copy {}: {error}", dir.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Packs `dir` (leaving out the top-level `skip` entries) as the component's
    /// artifact; `shown` names it in the log.
    async fn pack(
        &self,
        component: Component,
        shown: &str,
        dir: PathBuf,
        skip: &'static [&'static str],
    ) -> Result<Packed, Stop> {
        let out = self.workspace.artifacts().join(component.artifact_name());
        let started = Instant::now();
        let packed = tokio::task::spawn_blocking(move || artifact::pack_except(&dir, &out, skip))
            .await
            .expect("pack task")
            .map_err(|error| fail(component, format!("cannot package {shown}: {error}")))?;
        self.system.line(format!(
            "Packed {shown}: {} files, {} bytes, sha256 {} in {}.",
            packed.files,
            packed.size,
            packed.sha256,
            seconds(started)
        ));
        Ok(packed)
    }
}

fn display_dir(dir: &std::path::Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        dir.display().to_string()
    }
}
