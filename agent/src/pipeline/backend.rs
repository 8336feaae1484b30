//! The backend, planned from the checkout (`plan.rs`, the `medusa build` rule)
//! and built: its install (with the cache, the one step both components share:
//! `Build::restore_install`), `medusa build`, then once no container of the job
//! runs, the `.medusa/server` check, the secret scan of its `public/`, and the
//! pack; or, with the cache, an earlier build's output reused.

use std::path::{Path, PathBuf};

use kiln_protocol::{Component, ComponentStatus};

use super::cached::BuildCache;
use super::steps::{run_steps, PlannedStep, StepKind};
use super::{display_dir, fail, plan, restore, scan, workspace, Build, BuiltArtifact, Stop};

impl Build<'_> {
    /// Reads the backend's plan from the checkout and says it in the log.
    pub(super) fn plan_backend(&self) -> Result<plan::BackendPlan, Stop> {
        let (system, src) = (&self.system, self.workspace.src());
        let plan = crate::repo_fs::RepoFs::new(&src)
            .map_err(|error| error.to_string())
            .and_then(|fs| {
                plan::plan_backend(&fs, &self.request.backend_path).map_err(|e| e.to_string())
            })
            .map_err(|reason| fail(Component::Backend, reason))?;
        for reason in &plan.reasons {
            system.line(format!("Backend: {reason}"));
        }
        for warning in &plan.warnings {
            system.line(format!("Warning ({}): {}", warning.code, warning.message));
        }
        system.line(format!(
            "Backend in {}: {} ({}), install `{}` in {}, build `{}`.",
            display_dir(&plan.app_dir),
            plan.manager.slug(),
            if plan.frozen {
                "frozen lockfile"
            } else {
                "no lockfile"
            },
            plan.install.join(" "),
            display_dir(&plan.install_dir),
            plan.build.join(" "),
        ));
        Ok(plan)
    }

    /// Installs and builds the backend, checks and scans `.medusa/server`, and
    /// packs it; or, with the cache, reuses an earlier build's output when its
    /// inputs are the same, and restores its install. `storefront` is the
    /// storefront's app and install directories, if it has one.
    pub(super) async fn backend(
        &self,
        plan: &plan::BackendPlan,
        cache: Option<&BuildCache>,
        storefront: Option<&(PathBuf, PathBuf)>,
    ) -> Result<BuiltArtifact, Stop> {
        let config = &self.pipeline.config;
        let output_key = match cache {
            Some(cache) => {
                let exclude = storefront.map(|(app, _)| app.as_path());
                let release = plan
                    .provision
                    .as_ref()
                    .map(|p| p.label())
                    .unwrap_or_default();
                let install = plan.install.join(" ");
                let build = plan.build.join(" ");
                let dir = plan.app_dir.display().to_string();
                self.output_key(
                    cache,
                    Component::Backend,
                    &plan.app_dir,
                    exclude,
                    &[&dir, &install, &build, &release],
                )
                .await
            }
            None => None,
        };
        if let (Some(cache), Some(key)) = (cache, &output_key) {
            if let Some(artifact) = self.reuse_output(cache, Component::Backend, key).await {
                self.settle_backend_install();
                self.request
                    .progress(Component::Backend, ComponentStatus::Succeeded);
                return Ok(artifact);
            }
        }
        let mut install = Some(PlannedStep::new(
            StepKind::Install,
            plan.install.clone(),
            plan.install_dir.clone(),
            config.install_network,
        ));
        let mut provided = false;
        if let Some(cache) = cache {
            let inputs = restore::InstallInputs {
                dir: &plan.install_dir,
                manager: Some(&plan.manager),
                provision: plan.provision.as_ref(),
                other_dir: storefront.map(|(_, install_dir)| install_dir.as_path()),
                component: Component::Backend,
            };
            let (release, needed) = self.restore_install(cache, inputs, true).await?;
            provided = release;
            if !needed {
                install = None;
            }
        }
        let steps = PlannedStep::with_manager(
            plan.provision.as_ref(),
            provided,
            install,
            PlannedStep::new(
                StepKind::Build,
                plan.build.clone(),
                plan.app_dir.clone(),
                config.build_network,
            ),
        );
        // The build step is last: the storefront may install once the rest ran.
        let (build, before) = steps.split_last().expect("a build step");
        run_steps(self, Component::Backend, before).await?;
        self.mark_installed(&plan.install_dir, &plan.install);
        self.settle_backend_install();
        run_steps(self, Component::Backend, std::slice::from_ref(build)).await?;
        self.until_no_container_runs(Component::Backend).await;

        // The output Medusa deploys; its public folder is served to the world.
        let server =
            match workspace::output_dir(self.workspace, &plan.app_dir.join(".medusa/server")) {
                Ok(server) => server,
                Err(workspace::OutputError::Missing { .. }) => {
                    return Err(fail(
                        Component::Backend,
                        "medusa build produced no .medusa/server",
                    ))
                }
                Err(error) => {
                    return Err(fail(
                        Component::Backend,
                        format!("cannot package .medusa/server: {error}"),
                    ))
                }
            };
        self.check_admin(&plan.app_dir)?;
        scan::scan_public(self, &plan.app_dir.join(".medusa/server/public")).await?;
        let packed = self
            .pack(Component::Backend, ".medusa/server", server, &[])
            .await?;
        self.request
            .progress(Component::Backend, ComponentStatus::Succeeded);
        let artifact = BuiltArtifact {
            release: false,
            component: Component::Backend,
            packed,
        };
        if let (Some(cache), Some(key)) = (cache, output_key) {
            self.keep_output(cache, &artifact, key);
        }
        Ok(artifact)
    }

    /// `medusa build` can finish without the admin (medusajs/medusa#12245);
    /// `medusa start` then fails. Unless the config turns the admin off, that
    /// fails the build here, with what to look at.
    fn check_admin(&self, app_dir: &Path) -> Result<(), Stop> {
        let index = self
            .workspace
            .src()
            .join(app_dir)
            .join(".medusa/server/public/admin/index.html");
        // No container runs now: what is there stays there.
        if std::fs::symlink_metadata(&index).is_ok_and(|meta| meta.is_file()) {
            return Ok(());
        }
        let config = crate::repo_fs::RepoFs::new(&self.workspace.src())
            .ok()
            .and_then(|fs| {
                ["ts", "js", "mjs", "cjs"].iter().find_map(|ext| {
                    let file = app_dir.join(format!("medusa-config.{ext}"));
                    fs.read(&file, crate::repo_fs::CONFIG_LIMIT).ok().flatten()
                })
            })
            .unwrap_or_default();
        if ADMIN_DISABLED.is_match(&config) {
            self.system
                .line("Backend: no admin in .medusa/server, as medusa-config turns it off.");
            return Ok(());
        }
        Err(fail(
            Component::Backend,
            "admin_missing: `medusa build` finished without the admin (.medusa/server/public/admin/index.html is missing), so `medusa start` would fail with \"Could not find index.html in the admin build directory\" (medusajs/medusa#12245); look for the admin build's errors in the backend log, and check that @medusajs/* packages share one version; if the admin is meant to be off, set `admin: { disable: true }` in medusa-config",
        ))
    }
}

/// `admin: { …, disable: true }` (or read from the environment) in medusa-config.
static ADMIN_DISABLED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"(?s)admin\s*:\s*\{[^}]*?disable\s*:\s*(?:true|process\.env|!)")
        .expect("admin disable pattern")
});
