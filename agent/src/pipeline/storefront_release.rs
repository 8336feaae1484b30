//! The storefront's release image, made once the build's containers have
//! ended: a Next.js storefront run by `next start`. The node image it built
//! with, a layer of its production dependencies (installed from its own
//! `package-lock.json` in the sandbox, reused while they are unchanged), and a
//! layer of the app's files with the `.next` the build packed.
//!
//! The app's files are packed from the checkout (no link out of it, no
//! `node_modules`, `.next` or `.git`) and unpacked into a folder no build
//! container sees; the app layer is packed from there before the install runs
//! anything in it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_protocol::Component;

use super::artifact::{pack, pack_except, Packed};
use super::release::unpack;
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

    /// Why Kiln makes no release image of this storefront, if it makes none.
    fn unsupported(&self, src: &Path) -> Option<String> {
        let fix = "The storefront is not deployed; its build output stays an artifact";
        if self.framework != Framework::Nextjs {
            return Some(format!(
                "the storefront is {}, and Kiln runs a Next.js storefront only. {fix}",
                self.framework.slug()
            ));
        }
        if self.package_manager != "npm" || self.install_dir != self.app_dir {
            return Some(format!(
                "the storefront is installed by {} in {}; Kiln runs a Next.js storefront that is an npm project of its own (its own package-lock.json), not a workspace member. {fix}",
                self.package_manager,
                super::display_dir(&self.install_dir)
            ));
        }
        let has_lockfile = RepoFs::new(src)
            .map(|fs| fs.is_file(&self.app_dir.join("package-lock.json")))
            .unwrap_or(false);
        if !has_lockfile {
            return Some(format!(
                "{} has no package-lock.json to install its production dependencies from; run `npm install` and commit package-lock.json. {fix}",
                super::display_dir(&self.app_dir)
            ));
        }
        None
    }
}

impl Build<'_> {
    /// Makes the storefront's release image from its packed `.next`, or says
    /// why it makes none.
    pub(super) async fn storefront_release_image(
        &self,
        shape: &StorefrontShape,
        built: &Packed,
    ) -> Result<Option<BuiltArtifact>, Stop> {
        if let Some(why) = shape.unsupported(&self.workspace.src()) {
            self.system
                .line(format!("Release image: none for the storefront: {why}."));
            return Ok(None);
        }
        let started = Instant::now();
        let base = self.node_image(Component::Storefront).to_owned();
        let dir = self.workspace.root.join("release-storefront");
        let app_layer = self
            .workspace
            .artifacts()
            .join("release-storefront-app.tar.gz");
        let made = self
            .assemble_storefront(shape, built, &dir, &app_layer, &base)
            .await;
        let _ = std::fs::remove_file(&app_layer);
        let _ = std::fs::remove_dir_all(&dir);
        let built = made?;
        self.system.line(format!(
            "Storefront release image on {base} (`next start`): {} bytes, sha256 {} in {}.",
            built.packed.size,
            built.packed.sha256,
            seconds(started)
        ));
        Ok(Some(built))
    }

    async fn assemble_storefront(
        &self,
        shape: &StorefrontShape,
        built: &Packed,
        dir: &Path,
        app_layer: &Path,
        base: &str,
    ) -> Result<BuiltArtifact, Stop> {
        let source = self.workspace.src().join(&shape.app_dir);
        let sources = self
            .workspace
            .artifacts()
            .join("release-storefront-sources.tar.gz");
        let (app, next, layer) = (
            dir.join("storefront"),
            built.path.clone(),
            app_layer.to_owned(),
        );
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let packed = pack_except(&source, &sources, &["node_modules", ".next", ".git"])
                .map_err(|error| format!("cannot copy the storefront's files: {error}"));
            let unpacked =
                packed.and_then(|_| unpack(&sources, &app).map_err(|error| error.to_string()));
            let _ = std::fs::remove_file(&sources);
            unpacked?;
            unpack(&next, &app.join(".next"))
                .map_err(|error| format!("cannot unpack the storefront's .next: {error}"))?;
            pack(&app, &layer)
                .map(|_| ())
                .map_err(|error| format!("cannot pack the storefront's release layer: {error}"))
        })
        .await
        .expect("storefront release task")
        .map_err(|reason| fail(Component::Storefront, reason))?;
        let deps_tag = self
            .dependency_image(Component::Storefront, dir, "storefront", base)
            .await?;
        let release_tag = format!("kiln-release-storefront:{}", self.request.job_id);
        self.pipeline
            .executor
            .assemble_image(&ImageAssembly {
                base: deps_tag,
                layers: vec![app_layer.to_owned()],
                cmd: Some(vec![
                    format!("{RELEASE_DIR}/node_modules/.bin/next"),
                    "start".to_owned(),
                ]),
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
        self.deliver_release(Component::Storefront, &release_tag, reference)
            .await
    }
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
    fn only_a_nextjs_npm_project_of_its_own_gets_a_release_and_the_others_say_why() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("storefront")).unwrap();
        let own = shape(Framework::Nextjs, "npm", "storefront");
        let missing = own.unsupported(repo.path()).unwrap();
        assert!(missing.contains("package-lock.json"), "{missing}");
        std::fs::write(repo.path().join("storefront/package-lock.json"), "{}").unwrap();
        assert_eq!(own.unsupported(repo.path()), None);
        let vite = shape(Framework::Vite, "npm", "storefront")
            .unsupported(repo.path())
            .unwrap();
        assert!(vite.contains("vite") && vite.contains("Next.js"), "{vite}");
        let member = shape(Framework::Nextjs, "pnpm", "")
            .unsupported(repo.path())
            .unwrap();
        assert!(
            member.contains("pnpm") && member.contains("workspace"),
            "{member}"
        );
    }
}
