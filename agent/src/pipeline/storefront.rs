//! The storefront, after the backend: detected (the project's storefront path, or
//! the single frontend app in the repository), its Node version checked against
//! the build image, installed, built with its framework's own command (a custom
//! build script is not used), and its output directory packed.

use std::path::{Path, PathBuf};

use kiln_protocol::{Component, ComponentStatus};

use super::plan::BackendPlan;
use super::steps::{image_node_version, run_steps, PlannedStep, StepKind};
use super::workspace::{output_dir, OutputError};
use super::{fail, Build, BuiltArtifact, Stop};
use crate::detect::{self, DetectError, Detection, Framework};
use crate::repo_fs::RepoFs;

/// Detects and builds the storefront; `Ok(None)` when the repository has none.
/// `backend` is the backend's plan: its directory is not a storefront, and an
/// install it ran at the same place (a workspace root) is not run twice.
pub(super) async fn build(
    build: &Build<'_>,
    backend: &BackendPlan,
) -> Result<Option<BuiltArtifact>, Stop> {
    let system = &build.system;
    let request = build.request;
    let Some(found) = detect(build, &backend.app_dir).await? else {
        system.line("No storefront in this repository; the backend is the whole build.");
        request.progress(Component::Storefront, ComponentStatus::Skipped);
        return Ok(None);
    };
    request.progress(Component::Storefront, ComponentStatus::Building);
    // The backend stage has said which directory is the backend.
    for reason in found.reasons.iter().filter(|r| !r.starts_with("backend:")) {
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
    let install_dir = PathBuf::from(&found.install_dir);
    let installed = found.install == backend.install
        && found.install_dir == crate::repo_fs::shown(&backend.install_dir)
        && found.provision == backend.provision;
    let install = if installed {
        system.line(format!(
            "Storefront: the install in {} the backend ran covers it.",
            found.install_dir
        ));
        None
    } else {
        Some(PlannedStep {
            kind: StepKind::Install,
            command: found.install.clone(),
            dir: install_dir,
            network: config.install_network,
            bin_dir: None,
            shown: None,
        })
    };
    let steps = PlannedStep::with_manager(
        found.provision.as_ref(),
        install,
        PlannedStep {
            kind: StepKind::Build,
            command: found.exec_command.clone(),
            dir: app_dir.clone(),
            network: config.build_network,
            bin_dir: None,
            shown: None,
        },
    );
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
async fn detect(build: &Build<'_>, backend_dir: &Path) -> Result<Option<Detection>, Stop> {
    let request = build.request;
    let src = build.workspace.src();
    // The backend the plan settled on: "." is the root, not "detect it".
    let backend = match crate::repo_fs::shown(backend_dir) {
        root if root == "." => "./".to_owned(),
        dir => dir,
    };
    let storefront = request.storefront_path.clone();
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
