//! The reference deploy step: `awaiting_deployment → deploying → live`.
//!
//! It promotes the deployment's artifacts into `<data>/releases/<environment>/<deployment>/`,
//! runs the configured deploy hook (if any) with the release's location in its
//! environment, and on success points `<data>/releases/<environment>/current` at the
//! release. A real deployer (containers, a PaaS) replaces the hook; the statuses stay.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_protocol::Deployment;
use tokio::process::Command;

use crate::store;
use crate::AppState;

/// Runs the deploy of a deployment already moved to `deploying`, to its end.
#[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
pub async fn run(state: AppState, deployment_id: String) {
    let result = promote(&state, &deployment_id).await;
    if let Err(reason) = &result {
        tracing::warn!(message = "Deploy failed.", reason = %reason);
    }
    let id = deployment_id.clone();
    match state
        .db
        .call(move |conn| store::finish_deploy(conn, &id, result))
        .await
    {
        Ok(deployment) => tracing::info!(message = "Deploy finished.", status = %deployment.status),
        Err(error) => tracing::error!(message = "Could not record the deploy's end.", %error),
    }
    state.changes.notify_waiters();
}

async fn promote(state: &AppState, deployment_id: &str) -> Result<(), String> {
    let id = deployment_id.to_owned();
    let deployment: Deployment = state
        .db
        .call(move |conn| store::get_deployment(conn, &id))
        .await
        .map_err(|e| format!("cannot read deployment: {e}"))?;
    let environment_dir = state
        .config
        .data_dir
        .join("releases")
        .join(&deployment.environment_id);
    let release_dir = environment_dir.join(&deployment.id);
    copy_artifacts(state, &deployment, &release_dir)
        .await
        .map_err(|e| format!("cannot promote artifacts to {}: {e}", release_dir.display()))?;
    if let Some(hook) = &state.config.deploy_hook {
        run_hook(hook, &deployment, &release_dir, state.config.deploy_timeout).await?;
    }
    point_current_at(&environment_dir, &release_dir)
        .await
        .map_err(|e| format!("cannot switch {}/current: {e}", environment_dir.display()))
}

async fn copy_artifacts(
    state: &AppState,
    deployment: &Deployment,
    release_dir: &Path,
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(release_dir).await?;
    for artifact in &deployment.artifacts {
        let source =
            state
                .artifacts
                .path(&deployment.id, &artifact.job_id, &artifact.descriptor.name);
        let dest = release_dir.join(&artifact.descriptor.name);
        let _ = tokio::fs::remove_file(&dest).await;
        // A hard link costs nothing; a copy covers a releases dir on another filesystem.
        if tokio::fs::hard_link(&source, &dest).await.is_err() {
            tokio::fs::copy(&source, &dest).await?;
        }
    }
    Ok(())
}

async fn run_hook(
    hook: &str,
    deployment: &Deployment,
    release_dir: &Path,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("KILN_DEPLOYMENT_ID", &deployment.id)
        .env("KILN_PROJECT_ID", &deployment.project_id)
        .env("KILN_ENVIRONMENT_ID", &deployment.environment_id)
        .env("KILN_COMMIT_SHA", &deployment.commit_sha)
        .env("KILN_RELEASE_DIR", release_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start deploy hook `{hook}`: {e}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("deploy hook timed out after {}s", timeout.as_secs()))?
        .map_err(|e| format!("deploy hook failed to run: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last_line = stderr.lines().rev().find(|line| !line.trim().is_empty());
    let status = match output.status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    };
    Err(match last_line {
        Some(line) => format!("deploy hook {status}: {}", line.trim()),
        None => format!("deploy hook {status}"),
    })
}

async fn point_current_at(environment_dir: &Path, release_dir: &Path) -> std::io::Result<()> {
    let link = environment_dir.join("current");
    let staged: PathBuf = environment_dir.join(".current.new");
    let _ = tokio::fs::remove_file(&staged).await;
    tokio::fs::symlink(release_dir, &staged).await?;
    // rename(2) swaps the link atomically: readers see the old or the new release.
    tokio::fs::rename(&staged, &link).await
}
