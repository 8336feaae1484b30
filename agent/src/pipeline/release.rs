//! The backend's release image, made once the build's containers have ended:
//! the node image the backend built with, a layer of its production
//! dependencies, and a layer of `.medusa/server` (the packed artifact itself),
//! with `medusa start` as the command.
//!
//! The dependencies install (as Medusa's deployment guide does) in a sandboxed
//! container on a copy of the artifact under the job's own `release/` folder,
//! which no build container sees. Their layer is an image named by what it is
//! made of (the node image, `package.json`, the lockfile), so a code-only change
//! reuses it, and the deploy host already holds it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_protocol::Component;
use sha2::{Digest, Sha256};

use super::artifact::{pack_only, Packed};
use super::steps::{PlannedStep, StepKind};
use super::{fail, seconds, Build, BuiltArtifact, Stop};
use crate::executor::{ImageAssembly, StepOutcome, WORKSPACE_MOUNT};

/// The production install in `.medusa/server`: from npm's lockfile when Medusa
/// copied one, else resolved (Medusa copies yarn's and pnpm's lockfiles too,
/// which npm does not read).
const PRODUCTION_INSTALL: &str = "if [ -f package-lock.json ]; then npm ci --omit=dev; else npm install --omit=dev --no-package-lock; fi";

/// On a release image: whether its `medusa-config` reads
/// `MEDUSA_WORKER_MODE`, so that a server and a worker can be told apart.
pub const LABEL_READS_WORKER_MODE: &str = "kiln.reads-worker-mode";

/// The repository of the dependency layers this host has made.
const DEPS_REPOSITORY: &str = "kiln-release-deps";

impl Build<'_> {
    /// Makes the backend's release image from its packed `.medusa/server` and
    /// saves it as an artifact.
    pub(super) async fn release_image(&self, server: &Packed) -> Result<BuiltArtifact, Stop> {
        let started = Instant::now();
        let executor = &self.pipeline.executor;
        let base = self.node_image(Component::Backend).to_owned();
        let dir = self.workspace.root.join("release");
        let app = dir.join("backend");
        unpack_built(Component::Backend, server, &app, ".medusa/server").await?;
        // Read while only the agent has touched the unpacked copy: the
        // production install below runs the dependencies' scripts in it.
        let worker_mode = reads_worker_mode(&app);
        let deps_tag = self
            .dependency_image(Component::Backend, &dir, "backend", &base)
            .await?;
        let release_tag = format!("kiln-release-backend:{}", self.request.job_id);
        executor
            .assemble_image(&ImageAssembly {
                base: deps_tag,
                layers: vec![server.path.clone()],
                cmd: Some(vec![
                    format!(
                        "{}/node_modules/.bin/medusa",
                        crate::executor::release::RELEASE_DIR
                    ),
                    "start".to_owned(),
                ]),
                env: vec!["NODE_ENV=production".to_owned()],
                tag: release_tag.clone(),
                labels: vec![(LABEL_READS_WORKER_MODE.to_owned(), worker_mode.to_string())],
            })
            .await
            .map_err(|error| fail(Component::Backend, error.to_string()))?;
        let reference = self.request.release_reference.clone();
        let built = self
            .deliver_release(Component::Backend, &release_tag, reference)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        let built = built?;
        self.system.line(format!(
            "Release image {release_tag} on {base}: {} bytes, sha256 {} in {}.",
            built.packed.size,
            built.packed.sha256,
            seconds(started)
        ));
        Ok(built)
    }

    /// The production dependencies of `dir/<app>` as an image on `base`,
    /// named by what they are made of and so reused while that is unchanged.
    /// Read before the install runs the dependencies' scripts in the copy.
    pub(super) async fn dependency_image(
        &self,
        component: Component,
        dir: &Path,
        app: &str,
        base: &str,
    ) -> Result<String, Stop> {
        let executor = &self.pipeline.executor;
        let deps_tag = format!(
            "{DEPS_REPOSITORY}:{}",
            deps_key(&self.image_id(component), &dir.join(app))
        );
        if executor.image_exists(&deps_tag).await.unwrap_or(false) {
            self.system.line(format!(
                "Release image: {component} production dependencies unchanged; reusing {deps_tag}."
            ));
            return Ok(deps_tag);
        }
        self.install_production(component, dir, app).await?;
        let layer = self
            .workspace
            .artifacts()
            .join(format!("release-deps-{component}.tar"));
        let (from, to) = (dir.join(app), layer.clone());
        tokio::task::spawn_blocking(move || pack_only(&from, &to, &["node_modules"]))
            .await
            .expect("pack task")
            .map_err(|error| {
                fail(
                    component,
                    format!("cannot pack the production dependencies: {error}"),
                )
            })?;
        let assembled = executor
            .assemble_image(&ImageAssembly {
                base: base.to_owned(),
                layers: vec![layer.clone()],
                cmd: None,
                env: Vec::new(),
                tag: deps_tag.clone(),
                labels: Vec::new(),
            })
            .await;
        let _ = std::fs::remove_file(&layer);
        assembled.map_err(|error| fail(component, error.to_string()))?;
        Ok(deps_tag)
    }

    /// Pushes an assembled release image (where the control plane has a
    /// registry) and saves it as the component's release artifact; this host
    /// keeps only its dependency layer.
    pub(super) async fn deliver_release(
        &self,
        component: Component,
        release_tag: &str,
        reference: Option<String>,
    ) -> Result<BuiltArtifact, Stop> {
        let executor = &self.pipeline.executor;
        if let Some(reference) = &reference {
            let pushing = Instant::now();
            if let Err(error) = executor.push_image(release_tag, reference).await {
                let _ = executor.untag_image(release_tag).await;
                return Err(fail(
                    component,
                    format!("cannot push the release image to {reference}: {error}; check that the control plane's --registry answers from this build host"),
                ));
            }
            self.system.line(format!(
                "Pushed the {component} release image to {reference} in {}.",
                seconds(pushing)
            ));
        }
        let artifact = BuiltArtifact {
            component,
            release: true,
            packed: Packed {
                path: PathBuf::new(),
                size: 0,
                sha256: String::new(),
                files: 0,
            },
        };
        let out = self.workspace.artifacts().join(artifact.name());
        // Its id (the sha256 of its config), the same loaded or pulled: what a
        // deploy host holds the image it runs to.
        match executor.inspect_image(release_tag).await {
            Ok(facts) => self.record.release_image(artifact.name(), &facts.id),
            Err(error) => {
                let _ = executor.untag_image(release_tag).await;
                return Err(fail(component, error.to_string()));
            }
        }
        let saved = executor.save_image(release_tag, &out).await;
        let _ = executor.untag_image(release_tag).await;
        let (size, sha256) = saved.map_err(|error| fail(component, error.to_string()))?;
        Ok(BuiltArtifact {
            packed: Packed {
                path: out,
                size,
                sha256,
                files: 0,
            },
            ..artifact
        })
    }

    /// Runs the production install in `dir/<app>`, `dir` mounted alone.
    async fn install_production(
        &self,
        component: Component,
        dir: &Path,
        app: &str,
    ) -> Result<(), Stop> {
        let config = &self.pipeline.config;
        crate::pipeline::workspace::hand_over_tree(dir, config.build_user).map_err(|error| {
            fail(
                component,
                format!(
                    "cannot give the release folder to uid {}: {error}",
                    config.build_user.uid
                ),
            )
        })?;
        let planned = PlannedStep::new(
            StepKind::Install,
            vec![
                "sh".to_owned(),
                "-c".to_owned(),
                PRODUCTION_INSTALL.to_owned(),
            ],
            ".".into(),
            config.install_network,
        );
        let mut step = self.step(&planned, component);
        step.name = "release-install".to_owned();
        step.workspace = dir.to_owned();
        step.working_dir = format!("{WORKSPACE_MOUNT}/{app}");
        for (name, value) in step.env.iter_mut() {
            if name == "HOME" || name == "npm_config_cache" {
                *value = format!("{WORKSPACE_MOUNT}/home");
            }
        }
        std::fs::create_dir_all(dir.join("home"))
            .and_then(|()| {
                crate::pipeline::workspace::hand_over_tree(&dir.join("home"), config.build_user)
            })
            .map_err(|error| {
                fail(
                    component,
                    format!("cannot prepare the release folder: {error}"),
                )
            })?;
        let label = super::steps::step_label(component, "release image dependencies");
        self.system
            .line(kiln_protocol::step_started_line(PRODUCTION_INSTALL, &label));
        let sink = self.logs.sink(component.log_stream());
        sink.mark_next_write();
        let started = std::time::Instant::now();
        match self
            .pipeline
            .executor
            .run(step, sink, self.cancel.clone())
            .await
        {
            Ok(StepOutcome::Exited(0)) => {
                self.system.line(kiln_protocol::step_finished_line(
                    PRODUCTION_INSTALL,
                    &label,
                    &super::seconds(started),
                ));
                Ok(())
            }
            Ok(StepOutcome::Canceled) => Err(Stop::Canceled),
            Ok(outcome) => Err(fail(
                component,
                format!(
                    "the production install for the {component}'s release image failed ({outcome:?}); the {component} log shows why. It installs `dependencies` of package.json with its lockfile"
                ),
            )),
            Err(error) => Err(fail(component, error.to_string())),
        }
    }
}

/// Whether the compiled config in `app` reads `MEDUSA_WORKER_MODE`.
fn reads_worker_mode(app: &Path) -> bool {
    [
        "medusa-config.js",
        "medusa-config.ts",
        "medusa-config.mjs",
        "medusa-config.cjs",
    ]
    .iter()
    .filter_map(|name| std::fs::read(app.join(name)).ok())
    .any(|text| String::from_utf8_lossy(&text).contains("MEDUSA_WORKER_MODE"))
}

/// Unpacks a component's packed build output into `into`, off the runtime.
pub(super) async fn unpack_built(
    component: Component,
    built: &Packed,
    into: &Path,
    shown: &str,
) -> Result<(), Stop> {
    let (archive, into) = (built.path.clone(), into.to_owned());
    tokio::task::spawn_blocking(move || unpack(&archive, &into))
        .await
        .expect("unpack task")
        .map_err(|error| {
            fail(
                component,
                format!("cannot unpack {shown} for its release image: {error}"),
            )
        })
}

/// Unpacks the agent's own archive into a fresh folder.
pub(super) fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    if into.exists() {
        std::fs::remove_dir_all(into)?;
    }
    std::fs::create_dir_all(into)?;
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    tar.unpack(into)
}

/// What the dependency layer is made of: the base image, `package.json` and
/// the lockfiles.
fn deps_key(image_id: &str, app: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(image_id.as_bytes());
    hasher.update(PRODUCTION_INSTALL.as_bytes());
    for name in [
        "package.json",
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
    ] {
        hasher.update(name.as_bytes());
        hasher.update(std::fs::read(app.join(name)).unwrap_or_default());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..12])
}
