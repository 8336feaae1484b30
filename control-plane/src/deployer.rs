//! The reference deploy step: `awaiting_deployment → deploying → live`.
//!
//! It promotes the deployment's artifacts into `<data>/releases/<environment>/<deployment>/`,
//! runs the configured deploy hook (if any) with the release's location in its
//! environment, and on success points `<data>/releases/<environment>/current` at the
//! release. A real deployer (containers, a PaaS) replaces the hook; the statuses stay.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use kiln_protocol::Deployment;
use tokio::process::Command;

use crate::error::ApiError;
use crate::store;
use crate::AppState;

/// Why a deploy failed; becomes the deployment's `deploy_failed` reason.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read deployment: {0}")]
    Read(ApiError),
    #[error("cannot promote artifacts to {dir}: {source}")]
    Promote { dir: String, source: std::io::Error },
    #[error("cannot start deploy hook `{hook}`: {source}")]
    HookStart {
        hook: String,
        source: std::io::Error,
    },
    #[error("deploy hook timed out after {seconds}s")]
    HookTimeout { seconds: u64 },
    #[error("deploy hook failed to run: {0}")]
    HookWait(std::io::Error),
    #[error("deploy hook {status}{}", last_line.as_deref().map(|line| format!(": {line}")).unwrap_or_default())]
    HookFailed {
        /// `exited with status 3`, `was killed by a signal`.
        status: String,
        /// The last line the hook wrote to stderr.
        last_line: Option<String>,
    },
    #[error("cannot switch {dir}/current: {source}")]
    Switch { dir: String, source: std::io::Error },
    #[error("refused {artifact}: its provenance check failed: {why}")]
    Provenance { artifact: String, why: String },
}

/// Runs the deploy of a deployment already moved to `deploying` by this
/// replica, to its end, holding it all the while; stops (the hook killed) if
/// another replica took it over meanwhile.
#[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
pub async fn run(state: AppState, deployment_id: String) {
    let deploy = async {
        wait_for_turn(&state, &deployment_id).await;
        promote(&state, &deployment_id)
            .await
            .err()
            .map(|error| error.to_string())
    };
    let failure = tokio::select! {
        failure = deploy => failure,
        () = hold(&state, &deployment_id) => {
            tracing::warn!(message = "Another replica took this deploy over; stopped it here.");
            return;
        }
    };
    if let Some(reason) = &failure {
        tracing::warn!(message = "Deploy failed.", %reason);
    }
    let (id, deployer) = (deployment_id.clone(), state.replicas.id().to_owned());
    match state
        .db
        .call(move |conn| store::finish_deploy(conn, &id, &deployer, failure.as_deref()))
        .await
    {
        Ok(deployment) => tracing::info!(message = "Deploy finished.", status = %deployment.status),
        Err(error) => tracing::error!(message = "Could not record the deploy's end.", %error),
    }
    state.announce_change();
}

/// Waits until the deploys of this deployment's environment begun before it,
/// on any replica, have ended: they share its target and its `current` link,
/// and the one begun last must end live.
async fn wait_for_turn(state: &AppState, deployment_id: &str) {
    loop {
        let mut changed = pin!(state.changes.notified());
        changed.as_mut().enable();
        let id = deployment_id.to_owned();
        match state
            .db
            .call(move |conn| store::deploys_ahead(conn, &id))
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(message = "Cannot tell whether it is this deploy's turn.", %error)
            }
        }
        // An end on another replica wakes this one too, or a look each second
        // finds it.
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Renews this replica's hold on a deploy three times a lease, so the leader
/// takes it over only once this replica is gone; completes when the hold is
/// lost.
async fn hold(state: &AppState, deployment_id: &str) {
    let lease = state.config.lease;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once, and the hold was just taken.
    tick.tick().await;
    loop {
        tick.tick().await;
        let (id, deployer) = (deployment_id.to_owned(), state.replicas.id().to_owned());
        let lease_ms = lease.as_millis() as i64;
        match state
            .db
            .call(move |conn| store::renew_deploy(conn, &id, &deployer, lease_ms))
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            // The next tick tries again, well within the lease.
            Err(error) => tracing::warn!(message = "Cannot renew the deploy's lease.", %error),
        }
    }
}

/// The link in an environment's directory to its live release.
pub(crate) const CURRENT_LINK: &str = "current";

/// An environment's directory of releases, and deployment `deployment_id`'s
/// release in it: `<data>/releases/<environment>/<deployment>/`. Deploys fill
/// them; retention empties them.
pub(crate) fn release_dirs(
    data_dir: &Path,
    environment_id: &str,
    deployment_id: &str,
) -> (PathBuf, PathBuf) {
    let environment_dir = data_dir.join("releases").join(environment_id);
    let release_dir = environment_dir.join(deployment_id);
    (environment_dir, release_dir)
}

async fn promote(state: &AppState, deployment_id: &str) -> Result<(), DeployError> {
    let id = deployment_id.to_owned();
    let deployment: Deployment = state
        .db
        .call(move |conn| store::get_deployment(conn, &id))
        .await
        .map_err(DeployError::Read)?;
    let (environment_dir, release_dir) = release_dirs(
        &state.config.data_dir,
        &deployment.environment_id,
        &deployment.id,
    );
    copy_artifacts(state, &deployment, &release_dir)
        .await
        .map_err(|source| DeployError::Promote {
            dir: release_dir.display().to_string(),
            source,
        })?;
    check_provenance(state, &deployment, &release_dir).await?;
    if let Some(hook) = &state.config.deploy_hook {
        let env = [
            ("KILN_DEPLOYMENT_ID", deployment.id.as_ref()),
            ("KILN_PROJECT_ID", deployment.project_id.as_ref()),
            ("KILN_ENVIRONMENT_ID", deployment.environment_id.as_ref()),
            ("KILN_COMMIT_SHA", deployment.commit_sha.as_ref()),
            ("KILN_RELEASE_DIR", release_dir.as_os_str()),
        ];
        run_hook(hook, &env, state.config.deploy_timeout).await?;
    }
    point_current_at(&environment_dir, &release_dir)
        .await
        .map_err(|source| DeployError::Switch {
            dir: environment_dir.display().to_string(),
            source,
        })
}

async fn copy_artifacts(
    state: &AppState,
    deployment: &Deployment,
    release_dir: &Path,
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(release_dir).await?;
    for artifact in &deployment.artifacts {
        let source = state
            .artifacts
            .local(&deployment.id, &artifact.job_id, &artifact.descriptor.name)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let dest = release_dir.join(&artifact.descriptor.name);
        let _ = tokio::fs::remove_file(&dest).await;
        // A hard link costs nothing; a copy covers a releases dir on another filesystem.
        if tokio::fs::hard_link(&source, &dest).await.is_err() {
            tokio::fs::copy(&source, &dest).await?;
        }
    }
    Ok(())
}

/// Holds each promoted artifact, as it now is on disk, to its signed
/// provenance and the environment's policy, before the hook runs it.
async fn check_provenance(
    state: &AppState,
    deployment: &Deployment,
    release_dir: &Path,
) -> Result<(), DeployError> {
    let id = deployment.id.clone();
    let signed = state
        .db
        .call(move |conn| store::release_provenance(conn, &id))
        .await
        .map_err(DeployError::Read)?;
    for artifact in &deployment.artifacts {
        let name = &artifact.descriptor.name;
        let path = release_dir.join(name);
        let refused = |why: String| DeployError::Provenance {
            artifact: name.clone(),
            why,
        };
        let sha256 = tokio::task::spawn_blocking(move || crate::secrets::sha256_file(&path))
            .await
            .map_err(|error| refused(error.to_string()))?
            .map_err(|error| refused(format!("cannot read it: {error}")))?;
        kiln_protocol::provenance::ReleaseCheck {
            keys: &signed.keys,
            policy: &signed.policy,
            project: &deployment.project_id,
        }
        .check(signed.envelopes.get(name), name, &sha256, None)
        .map_err(|error| refused(error.to_string()))?;
    }
    Ok(())
}

/// The hook's process group, killed whole when the hook times out or its deploy
/// is given up (another replica took it over, the server stops): killing `sh`
/// alone would leave what it started running beside the next deploy. A hook that
/// ends by itself keeps what it started in the background.
struct HookGroup(Option<nix::unistd::Pid>);

impl HookGroup {
    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for HookGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn run_hook(
    hook: &str,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: std::time::Duration,
) -> Result<(), DeployError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(hook)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DeployError::HookStart {
            hook: hook.to_owned(),
            source,
        })?;
    let group = HookGroup(child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32)));
    let stdout = child.stdout.take().map(|out| tokio::spawn(tail(out)));
    let stderr = child.stderr.take().map(|err| tokio::spawn(tail(err)));
    let status = tokio::time::timeout(timeout, child.wait())
        .await
        .map_err(|_| DeployError::HookTimeout {
            seconds: timeout.as_secs(),
        })?
        .map_err(DeployError::HookWait)?;
    group.ended();
    // A process the hook left running may hold the pipes open: read what is
    // there, not forever.
    let drained = |task: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        let task = task?;
        let abort = task.abort_handle();
        let output = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        abort.abort();
        output.ok()?.ok()
    };
    drained(stdout).await;
    let stderr = drained(stderr).await.unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&stderr);
    let last_line = stderr.lines().rev().find(|line| !line.trim().is_empty());
    let status = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    };
    Err(DeployError::HookFailed {
        status,
        last_line: last_line.map(|line| line.trim().to_owned()),
    })
}

/// Output of the deploy hook kept, from its end: what a failure's last line needs,
/// however much the hook prints.
const HOOK_OUTPUT_KEPT: usize = 64 << 10;

/// Reads a stream to its end, keeping only its last `HOOK_OUTPUT_KEPT` bytes.
async fn tail(mut stream: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 16 << 10];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        kept.extend_from_slice(&buffer[..read]);
        if kept.len() > 2 * HOOK_OUTPUT_KEPT {
            kept.drain(..kept.len() - HOOK_OUTPUT_KEPT);
        }
    }
    let cut = kept.len().saturating_sub(HOOK_OUTPUT_KEPT);
    kept.split_off(cut)
}

async fn point_current_at(environment_dir: &Path, release_dir: &Path) -> std::io::Result<()> {
    let link = environment_dir.join(CURRENT_LINK);
    // Named after the release, so no two deploys ever share a staging link.
    let staged: PathBuf = environment_dir.join(format!(
        ".current.{}.new",
        release_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    let _ = tokio::fs::remove_file(&staged).await;
    tokio::fs::symlink(release_dir, &staged).await?;
    // rename(2) swaps the link atomically: readers see the old or the new release.
    tokio::fs::rename(&staged, &link).await
}

/// Starts the deploy of a built deployment: it goes `deploying` now, and runs in
/// the background on this replica.
pub(crate) async fn start_deploy(
    state: &AppState,
    id: String,
) -> Result<kiln_protocol::Deployment, ApiError> {
    let (deployment_id, deployer) = (id.clone(), state.replicas.id().to_owned());
    let lease_ms = state.config.lease.as_millis() as i64;
    let (deployment, runner) = state
        .db
        .call(move |conn| store::begin_deploy(conn, &deployment_id, &deployer, lease_ms))
        .await?;
    match runner {
        store::DeployRunner::Replica => {
            state.announce_change();
            tokio::spawn(run(state.clone(), id));
        }
        // A deploy host claims it.
        store::DeployRunner::Agent => state.announce_queue_change(),
    }
    Ok(deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a process runs (a zombie waiting to be reaped does not).
    fn runs(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    }

    /// The pid the hook wrote to `file`, once it is there.
    async fn pid_in(file: &Path) -> i32 {
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the hook never wrote {}", file.display());
    }

    async fn gone(pid: i32) -> bool {
        for _ in 0..100 {
            if !runs(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A hook that starts a child and waits for it, noting the child's pid.
    fn waiting_hook(pid_file: &Path) -> String {
        format!("sleep 300 & echo $! > '{}'; wait", pid_file.display())
    }

    #[tokio::test]
    async fn a_hook_that_times_out_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let error = run_hook(&waiting_hook(&pid_file), &[], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(error, DeployError::HookTimeout { .. }), "{error}");
        let child = pid_in(&pid_file).await;
        assert!(gone(child).await, "the hook's child {child} still runs");
    }

    #[tokio::test]
    async fn a_hook_given_up_midway_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let hook = waiting_hook(&pid_file);
        let child = tokio::select! {
            ended = run_hook(&hook, &[], Duration::from_secs(60)) => panic!("the hook ended: {ended:?}"),
            child = pid_in(&pid_file) => child,
        };
        assert!(gone(child).await, "the hook's child {child} still runs");
    }

    #[tokio::test]
    async fn a_hook_that_ends_keeps_what_it_started_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let hook = format!(
            "sleep 300 >/dev/null 2>&1 & echo $! > '{}'",
            pid_file.display()
        );
        let env = [("KILN_COMMIT_SHA", std::ffi::OsStr::new("abc"))];
        run_hook(&hook, &env, Duration::from_secs(30))
            .await
            .unwrap();
        let child = pid_in(&pid_file).await;
        let kept = runs(child);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(kept, "the hook's background child {child} was killed");
    }
}
