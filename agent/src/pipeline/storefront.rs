//! The storefront, beside the backend: detected (the project's storefront path, or
//! the single frontend app in the repository), installed, built with its framework's own command (a custom
//! build script is not used), and its output directory packed.

use std::path::{Path, PathBuf};

use kiln_protocol::{Component, ComponentStatus};

use super::cached::BuildCache;
use super::plan::BackendPlan;
use super::restore::SERVER_ACTIONS_KEY;
use super::steps::{run_steps, PlannedStep, StepKind};
use super::workspace::{output_dir, OutputError};
use super::{fail, Build, BuiltArtifact, Stop};
use crate::detect::{self, DetectError, Detection, Framework};
use crate::repo_fs::RepoFs;

/// Builds the storefront `detect` found; `Ok(None)` when the repository has none.
/// `backend` is the backend's plan: its directory is not part of the
/// storefront's inputs, and an install already run (or restored) at the same
/// place, a workspace root, is not run twice.
pub(super) async fn build(
    build: &Build<'_>,
    backend: &BackendPlan,
    detected: Option<Detection>,
    cache: Option<&BuildCache>,
) -> Result<Option<BuiltArtifact>, Stop> {
    let system = &build.system;
    let request = build.request;
    let Some(found) = detected else {
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
    // As the backend's plan writes them: the root is the empty path.
    let app_dir = repo_path(&found.app_dir);
    let install_dir = repo_path(&found.install_dir);
    let build_dir = repo_path(&found.build_dir);
    let server_actions_key = match cache {
        Some(cache) if found.framework == Framework::Nextjs => build.server_actions_key(cache),
        _ => None,
    };
    let output_key = match cache {
        Some(cache) => {
            let exclude =
                (!backend.app_dir.as_os_str().is_empty()).then_some(backend.app_dir.as_path());
            let release = found.package_manager_release.clone().unwrap_or_default();
            let install = found.install.join(" ");
            let command = found.exec_command.join(" ");
            let output = found.output_dir.clone().unwrap_or_default();
            build
                .output_key(
                    cache,
                    Component::Storefront,
                    Path::new(&found.app_dir),
                    exclude,
                    &[
                        &found.app_dir,
                        &install,
                        &command,
                        &output,
                        &release,
                        // Its output holds the key: a new key, a new build.
                        server_actions_key.as_deref().unwrap_or_default(),
                    ],
                )
                .await
        }
        None => None,
    };
    if let (Some(cache), Some(key)) = (cache, &output_key) {
        if let Some(artifact) = build.reuse_output(cache, Component::Storefront, key).await {
            request.progress(Component::Storefront, ComponentStatus::Succeeded);
            return Ok(Some(artifact));
        }
    }
    let config = &build.pipeline.config;
    // One install at a time: the backend's may be this one, and otherwise they
    // would share the package manager's release and the host's bandwidth.
    if !build.backend_install_settled().await {
        system.line("Storefront: not built, as the backend's install failed.");
        return Err(Stop::Canceled);
    }
    // The same install at the same place, with the same package manager and Node.
    let installed = build.installed(&install_dir, &found.install)
        && found.provision == backend.provision
        && build.node_image(Component::Storefront) == build.node_image(Component::Backend);
    let mut install = if installed {
        system.line(format!(
            "Storefront: the install in {} the backend ran covers it.",
            found.install_dir
        ));
        None
    } else {
        Some(PlannedStep::new(
            StepKind::Install,
            found.install.clone(),
            install_dir.clone(),
            config.install_network,
        ))
    };
    let mut provided = false;
    if let Some(cache) = cache {
        let manager = crate::package_manager::PackageManager::from_slug(found.package_manager);
        let inputs = super::restore::InstallInputs {
            dir: &install_dir,
            manager: manager.as_ref(),
            provision: found.provision.as_ref(),
            other_dir: Some(&backend.install_dir),
            component: Component::Storefront,
        };
        let (release, needed) = build
            .restore_install(cache, inputs, install.is_some())
            .await?;
        provided = release;
        if !needed {
            install = None;
        }
        if found.framework == Framework::Nextjs {
            build
                .restore_framework_cache(cache, &app_dir, &install_dir)
                .await;
        }
    }
    let steps = PlannedStep::with_manager(
        found.provision.as_ref(),
        provided,
        install,
        PlannedStep {
            env: server_actions_key
                .map(|key| vec![(SERVER_ACTIONS_KEY.to_owned(), key)])
                .unwrap_or_default(),
            ..PlannedStep::new(
                StepKind::Build,
                found.exec_command.clone(),
                build_dir.clone(),
                config.build_network,
            )
        },
    );
    run_steps(build, Component::Storefront, &steps).await?;
    build.mark_installed(&install_dir, &found.install);
    build.until_no_container_runs(Component::Storefront).await;

    let output_name = found.output_dir.as_deref().unwrap_or("dist");
    let output = match output_dir(build.workspace, &build_dir.join(output_name)) {
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
    let artifact = BuiltArtifact {
        release: false,
        component: Component::Storefront,
        packed,
    };
    if let (Some(cache), Some(key)) = (cache, output_key) {
        build.keep_output(cache, &artifact, key);
    }
    Ok(Some(artifact))
}

/// Runs detection off the async runtime, under the job's cancel (its deadline
/// covers the whole build); `Ok(None)` when there is no storefront to build.
pub(super) async fn detect(
    build: &Build<'_>,
    backend_dir: &Path,
) -> Result<Option<Detection>, Stop> {
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

/// A directory as detection shows it (`.` for the root) as a path in the checkout.
pub(super) fn repo_path(shown: &str) -> PathBuf {
    if shown == "." {
        PathBuf::new()
    } else {
        PathBuf::from(shown)
    }
}
