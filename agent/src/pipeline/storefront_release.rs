//! The storefront's release image, made once the build's containers have
//! ended, for a Next.js storefront:
//! - with `output: "standalone"` (any layout, any package manager): the node
//!   image it built with and one layer, the standalone folder with
//!   `.next/static` and `public/` beside its `server.js`, run by `node`;
//! - else, for an npm project of its own: a layer of its production
//!   dependencies (installed from its `package-lock.json` in the sandbox,
//!   reused while they are unchanged) and a layer of the app's files with its
//!   `.next`, run by `next start`.
//!
//! The `.next` is the build's packed artifact, unpacked into a folder no
//! build container sees; the app's files are packed from the checkout (no
//! link out of it, no `node_modules`, `.next` or `.git`). Layers are packed
//! before the production install runs anything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_protocol::Component;

use super::artifact::{pack, pack_except, Packed};
use super::release::{unpack, unpack_built};
use super::{fail, seconds, Build, BuiltArtifact, Stop};
use crate::detect::{Detection, Framework};
use crate::executor::release::RELEASE_DIR;
use crate::executor::ImageAssembly;
use crate::repo_fs::RepoFs;

/// What the storefront's release needs to know of the detected storefront.
#[derive(Debug, Clone)]
pub(super) struct StorefrontShape {
    framework: Framework,
    package_manager: &'static str,
    app_dir: PathBuf,
    install_dir: PathBuf,
}

impl StorefrontShape {
    pub fn of(found: &Detection) -> StorefrontShape {
        StorefrontShape {
            framework: found.framework,
            package_manager: found.package_manager,
            app_dir: super::storefront::repo_path(&found.app_dir),
            install_dir: super::storefront::repo_path(&found.install_dir),
        }
    }

    /// Why `next start` cannot run this storefront on its own, if it cannot.
    fn unsupported(&self, src: &Path) -> Option<String> {
        if self.package_manager != "npm" || self.install_dir != self.app_dir {
            return Some(format!(
                "the storefront is installed by {} in {}; Kiln runs a Next.js storefront that is an npm project of its own (its own package-lock.json), not a workspace member",
                self.package_manager,
                super::display_dir(&self.install_dir)
            ));
        }
        let has_lockfile = RepoFs::new(src)
            .map(|fs| fs.is_file(&self.app_dir.join("package-lock.json")))
            .unwrap_or(false);
        if !has_lockfile {
            return Some(format!(
                "{} has no package-lock.json to install its production dependencies from; run `npm install` and commit package-lock.json",
                super::display_dir(&self.app_dir)
            ));
        }
        None
    }
}

/// How a release image of the storefront runs it.
enum Route {
    /// `output: "standalone"`: Next.js's own `server.js`, at this path under
    /// the standalone folder, with the dependencies it traced.
    Standalone(PathBuf),
    /// `next start`, with a production install.
    NextStart,
}

impl Build<'_> {
    /// Makes the storefront's release image from its packed `.next`, or says
    /// why it makes none.
    pub(super) async fn storefront_release_image(
        &self,
        shape: &StorefrontShape,
        built: &Packed,
    ) -> Result<Option<BuiltArtifact>, Stop> {
        if shape.framework != Framework::Nextjs {
            self.system.line(format!(
                "Release image: none for the storefront: it is {}, and Kiln runs a Next.js storefront only. The storefront is not deployed; its build output stays an artifact.",
                shape.framework.slug()
            ));
            return Ok(None);
        }
        let started = Instant::now();
        let dir = self.workspace.root.join("release-storefront");
        let layer = self
            .workspace
            .artifacts()
            .join("release-storefront-app.tar.gz");
        let made = self.assemble_storefront(shape, built, &dir, &layer).await;
        let _ = std::fs::remove_file(&layer);
        let _ = std::fs::remove_dir_all(&dir);
        let Some((built, route)) = made? else {
            return Ok(None);
        };
        self.system.line(format!(
            "Storefront release image on {} ({}): {} bytes, sha256 {} in {}.",
            self.node_image(Component::Storefront),
            match route {
                Route::Standalone(_) => "the standalone server.js",
                Route::NextStart => "`next start`",
            },
            built.packed.size,
            built.packed.sha256,
            seconds(started)
        ));
        Ok(Some(built))
    }

    /// The release of `.next` (unpacked under `dir`, which no build container
    /// sees): standalone where the build made one, else `next start` where the
    /// storefront can be installed on its own; `None` (said why) otherwise.
    async fn assemble_storefront(
        &self,
        shape: &StorefrontShape,
        built: &Packed,
        dir: &Path,
        layer: &Path,
    ) -> Result<Option<(BuiltArtifact, Route)>, Stop> {
        let next = dir.join("next");
        unpack_built(
            Component::Storefront,
            built,
            &next,
            "the storefront's .next",
        )
        .await?;
        let route = match standalone_server(&next.join("standalone")) {
            Some(server) => Route::Standalone(server),
            None => match shape.unsupported(&self.workspace.src()) {
                None => Route::NextStart,
                Some(why) => {
                    self.system.line(format!(
                        "Release image: none for the storefront: {why}; or set `output: \"standalone\"` in its next.config, which any layout can deploy."
                    ));
                    return Ok(None);
                }
            },
        };
        let source = self.workspace.src().join(&shape.app_dir);
        let (dir_owned, layer_owned) = (dir.to_owned(), layer.to_owned());
        let standalone = match &route {
            Route::Standalone(server) => Some(server.clone()),
            Route::NextStart => None,
        };
        tokio::task::spawn_blocking(move || match standalone {
            Some(server) => lay_out_standalone(&source, &dir_owned, &server, &layer_owned),
            None => lay_out_next_start(&source, &dir_owned, &layer_owned),
        })
        .await
        .expect("storefront release task")
        .map_err(|reason| fail(Component::Storefront, reason))?;
        let base = self.node_image(Component::Storefront).to_owned();
        let (base, cmd) = match &route {
            Route::Standalone(server) => (
                base,
                vec![
                    "node".to_owned(),
                    format!("{RELEASE_DIR}/{}", server.display()),
                ],
            ),
            Route::NextStart => (
                self.dependency_image(Component::Storefront, dir, "storefront", &base)
                    .await?,
                vec![
                    format!("{RELEASE_DIR}/node_modules/.bin/next"),
                    "start".to_owned(),
                ],
            ),
        };
        let release_tag = format!("kiln-release-storefront:{}", self.request.job_id);
        self.pipeline
            .executor
            .assemble_image(&ImageAssembly {
                base,
                layers: vec![layer.to_owned()],
                cmd: Some(cmd),
                env: vec!["NODE_ENV=production".to_owned()],
                tag: release_tag.clone(),
                labels: Vec::new(),
            })
            .await
            .map_err(|error| fail(Component::Storefront, error.to_string()))?;
        let reference = self
            .request
            .release_reference
            .as_deref()
            .map(kiln_protocol::storefront_reference);
        let built = self
            .deliver_release(Component::Storefront, &release_tag, reference)
            .await?;
        Ok(Some((built, route)))
    }
}

/// Where Next.js's standalone output keeps its `server.js` (under the app's
/// path from the tracing root, in a monorepo): the shallowest one outside
/// `node_modules`, by the standalone folder's own files and folders, no link
/// followed.
fn standalone_server(standalone: &Path) -> Option<PathBuf> {
    let mut level = vec![PathBuf::new()];
    for _ in 0..8 {
        let mut next_level = Vec::new();
        for rel in level {
            let dir = standalone.join(&rel);
            let server = dir.join("server.js");
            if std::fs::symlink_metadata(&server).is_ok_and(|meta| meta.is_file()) {
                return Some(rel.join("server.js"));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.file_name())
                .filter(|name| name != "node_modules" && name != ".next")
                .map(|name| rel.join(name))
                .collect();
            children.sort();
            next_level.extend(children);
        }
        level = next_level;
    }
    None
}

/// The app's own files (from the checkout: no `node_modules`, `.next`, `.git`,
/// no link out of it), copied into `into` by a pack the agent makes.
fn copy_from_checkout(source: &Path, into: &Path, scratch: &Path) -> Result<(), String> {
    let packed = pack_except(source, scratch, &["node_modules", ".next", ".git"])
        .map_err(|error| format!("cannot copy the storefront's files: {error}"));
    let unpacked = packed.and_then(|_| unpack(scratch, into).map_err(|error| error.to_string()));
    let _ = std::fs::remove_file(scratch);
    unpacked
}

/// `dir/storefront`: the app's files and its `.next`, packed into `layer`
/// before the production install runs anything there.
fn lay_out_next_start(source: &Path, dir: &Path, layer: &Path) -> Result<(), String> {
    let app = dir.join("storefront");
    copy_from_checkout(source, &app, &dir.join("sources.tar.gz"))?;
    std::fs::rename(dir.join("next"), app.join(".next"))
        .map_err(|error| format!("cannot place the storefront's .next: {error}"))?;
    pack(&app, layer)
        .map(drop)
        .map_err(|error| format!("cannot pack the storefront's release layer: {error}"))
}

/// `dir/app`: the standalone folder, with `.next/static` and the app's
/// `public/` beside its `server.js`, as Next.js's deployment guide places
/// them, packed into `layer`.
fn lay_out_standalone(
    source: &Path,
    dir: &Path,
    server: &Path,
    layer: &Path,
) -> Result<(), String> {
    let next = dir.join("next");
    let app = dir.join("app");
    std::fs::rename(next.join("standalone"), &app)
        .map_err(|error| format!("cannot place the standalone output: {error}"))?;
    let beside = app.join(server.parent().unwrap_or(Path::new("")));
    if next.join("static").is_dir() {
        std::fs::create_dir_all(beside.join(".next"))
            .and_then(|()| std::fs::rename(next.join("static"), beside.join(".next/static")))
            .map_err(|error| format!("cannot place .next/static: {error}"))?;
    }
    let public = source.join("public");
    if std::fs::symlink_metadata(&public).is_ok_and(|meta| meta.is_dir()) {
        copy_from_checkout(&public, &beside.join("public"), &dir.join("public.tar.gz"))?;
    }
    pack(&app, layer)
        .map(drop)
        .map_err(|error| format!("cannot pack the storefront's release layer: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(framework: Framework, manager: &'static str, install_dir: &str) -> StorefrontShape {
        StorefrontShape {
            framework,
            package_manager: manager,
            app_dir: PathBuf::from("storefront"),
            install_dir: PathBuf::from(install_dir),
        }
    }

    #[test]
    fn next_start_needs_an_npm_project_of_its_own_and_the_others_say_why() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("storefront")).unwrap();
        let own = shape(Framework::Nextjs, "npm", "storefront");
        let missing = own.unsupported(repo.path()).unwrap();
        assert!(missing.contains("package-lock.json"), "{missing}");
        std::fs::write(repo.path().join("storefront/package-lock.json"), "{}").unwrap();
        assert_eq!(own.unsupported(repo.path()), None);
        let member = shape(Framework::Nextjs, "pnpm", "")
            .unsupported(repo.path())
            .unwrap();
        assert!(
            member.contains("pnpm") && member.contains("workspace"),
            "{member}"
        );
    }

    #[test]
    fn the_standalone_server_is_found_under_the_apps_path_and_never_in_node_modules() {
        let standalone = tempfile::tempdir().unwrap();
        let root = standalone.path();
        assert_eq!(standalone_server(root), None);
        std::fs::create_dir_all(root.join("node_modules/next/dist")).unwrap();
        std::fs::write(root.join("node_modules/next/dist/server.js"), "").unwrap();
        std::fs::create_dir_all(root.join("apps/storefront/.next")).unwrap();
        std::fs::write(root.join("apps/storefront/server.js"), "").unwrap();
        assert_eq!(
            standalone_server(root),
            Some(PathBuf::from("apps/storefront/server.js"))
        );
        // A link is not followed, even to a server.js.
        std::os::unix::fs::symlink(
            root.join("apps/storefront/server.js"),
            root.join("server.js"),
        )
        .unwrap();
        assert_eq!(
            standalone_server(root),
            Some(PathBuf::from("apps/storefront/server.js"))
        );
        std::fs::remove_file(root.join("server.js")).unwrap();
        std::fs::write(root.join("server.js"), "").unwrap();
        assert_eq!(standalone_server(root), Some(PathBuf::from("server.js")));
    }
}
