//! The storefront, after the backend: detected (the project's storefront path, or
//! the single frontend app in the repository), its Node version checked against
//! the build image, installed, built with its framework's own command (a custom
//! build script is not used), and its output directory packed.

use std::path::{Path, PathBuf};

use kiln_protocol::{Component, ComponentStatus};

use super::steps::{image_node_version, run_steps, PlannedStep, StepKind};
use super::workspace::{output_dir, OutputError};
use super::{fail, Build, BuiltArtifact, Stop};
use crate::detect::{self, DetectError, Detection, Framework};
use crate::repo_fs::RepoFs;

/// Detects and builds the storefront; `Ok(None)` when the repository has none.
pub(super) async fn build(build: &Build<'_>) -> Result<Option<BuiltArtifact>, Stop> {
    let system = &build.system;
    let request = build.request;
    let Some(found) = detect(build).await? else {
        system.line("No storefront in this repository; the backend is the whole build.");
        request.progress(Component::Storefront, ComponentStatus::Skipped);
        return Ok(None);
    };
    request.progress(Component::Storefront, ComponentStatus::Building);
    for reason in &found.reasons {
        system.line(format!("Storefront: {reason}"));
    }
    for warning in &found.warning_messages {
        system.line(format!("Warning ({}): {}", warning.code, warning.message));
    }
    let app_dir = PathBuf::from(&found.app_dir);
    if let Some(wanted) = &found.node_requirement {
        let have = image_node_version(build, Component::Storefront, &app_dir).await?;
        wanted
            .judge(&have)
            .map_err(|reason| fail(Component::Storefront, reason))?;
        // Beside the storefront's output: it is a fact of its build environment.
        build
            .logs
            .sink(Component::Storefront.log_stream())
            .line(format!(
                "Node {have} in the build image satisfies {wanted}."
            ));
    }
    let config = &build.pipeline.config;
    let steps = [
        PlannedStep {
            kind: StepKind::Install,
            command: found.install.clone(),
            dir: PathBuf::from(&found.install_dir),
            network: config.install_network,
        },
        PlannedStep {
            kind: StepKind::Build,
            command: found.exec_command.clone(),
            dir: app_dir.clone(),
            network: config.build_network,
        },
    ];
    run_steps(build, Component::Storefront, &steps).await?;

    let output_name = found.output_dir.as_deref().unwrap_or("dist");
    let output = match output_dir(build.workspace, &app_dir.join(output_name)) {
        Ok(output) => output,
        Err(OutputError::Missing { .. }) => {
            return Err(fail(
                Component::Storefront,
                format!("`{}` produced no {output_name}", found.build_command),
            ))
        }
        Err(error) => {
            return Err(fail(
                Component::Storefront,
                format!(
                "unsafe_output_dir: the output directory {output_name} cannot be packed: {error}"
            ),
            ))
        }
    };
    // Next.js's cache is for the next build, not for deploying.
    let skip: &'static [&'static str] = if found.framework == Framework::Nextjs {
        &["cache"]
    } else {
        &[]
    };
    let shown = format!("the storefront's {output_name}");
    let packed = build
        .pack(Component::Storefront, &shown, output, skip)
        .await?;
    request.progress(Component::Storefront, ComponentStatus::Succeeded);
    Ok(Some(BuiltArtifact {
        component: Component::Storefront,
        packed,
    }))
}

/// Runs detection off the async runtime, under the job's cancel (its deadline
/// covers the whole build); `Ok(None)` when there is no storefront to build.
async fn detect(build: &Build<'_>) -> Result<Option<Detection>, Stop> {
    let request = build.request;
    let src = build.workspace.src();
    let (backend, storefront) = (
        request.backend_path.clone(),
        request.storefront_path.clone(),
    );
    let detecting = tokio::task::spawn_blocking(move || {
        let fs = RepoFs::new(Path::new(&src)).map_err(|error| {
            DetectError::Read(crate::repo_fs::RepoFsError::Io {
                path: ".".to_owned(),
                message: error.to_string(),
            })
        })?;
        detect::detect_in(&fs, Some(&backend), storefront.as_deref())
    });
    let detected = tokio::select! {
        detected = detecting => detected.expect("detection task"),
        _ = build.cancel.cancelled() => return Err(Stop::Canceled),
    };
    match detected {
        Ok(found) => Ok(Some(found)),
        Err(DetectError::NoStorefrontFound) if request.storefront_path.is_none() => Ok(None),
        Err(error) => Err(fail(
            Component::Storefront,
            format!("{}: {error}", error.code()),
        )),
    }
}
