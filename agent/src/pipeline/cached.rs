//! The build cache as one build uses it (`crate::cache` keeps the entries):
//! before a step, what can be restored (a component's output, its installed
//! `node_modules`, the package manager's store and release, Next.js's cache and
//! the scope's own Server Actions key, without which that cache goes unused);
//! after a successful build, what to leave for the next one (`Harvest`, which the
//! job publishes once it has reported). The system log says, per step, what was
//! restored (key, size, time) or why not.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_protocol::Component;

use super::artifact::Packed;
use super::{Build, BuiltArtifact};
use crate::beneath::{self, BeneathError};
use crate::cache::inputs::{self, Key};
use crate::cache::{Cache, Found, Kind, Meta, Scopes, Slot, Source};
use crate::config::ByteSize;
use crate::package_manager::{PackageManager, Provision};
use crate::repo_fs::RepoFs;
use kiln_protocol::provenance::PublishedEntry;

/// The checkout's directory in the build directory (the containers' `/kiln`).
pub(super) const CHECKOUT: &str = "src";
/// `$HOME` of every step, in the build directory.
pub(super) const HOME: &str = "home";

/// What a job asks of the cache.
#[derive(Debug, Clone)]
pub struct CacheRequest {
    pub cache: Arc<Cache>,
    /// Entries are the project's alone.
    pub project: String,
    pub scopes: Scopes,
    /// The project's scopes to drop first (pull requests closed since).
    pub dropped: Vec<String>,
    /// Where outputs built on other hosts come from, when this host kept
    /// none: the control plane's grant for the job.
    pub shared: Option<Arc<dyn SharedOutputs>>,
}

/// An output another host's build published, fetched and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOutput {
    pub size: u64,
    pub sha256: String,
    /// The job that built it, and the scope it was published in.
    pub published_by_job: String,
    pub scope: String,
}

/// Outputs other hosts built that this build may reuse. The pipeline talks
/// to no control plane: the job gives it this.
#[async_trait::async_trait]
pub trait SharedOutputs: Send + Sync + std::fmt::Debug {
    /// The output of `component` under `key`, fetched into `out` and held
    /// to its recorded sha256; `None` when there is none (or it could not
    /// come whole, which the implementation logs).
    async fn fetch(&self, component: Component, key: &str, out: &Path) -> Option<FetchedOutput>;
}

/// Where an entry's files come from, found when it is published.
#[derive(Debug, Clone)]
pub(super) enum Sources {
    /// Every `node_modules` under `install_dir` of the checkout (`src/` of the
    /// build directory `root`), except under `exclude` (another install's
    /// directories).
    NodeModules {
        root: PathBuf,
        install_dir: PathBuf,
        exclude: Vec<PathBuf>,
    },
    /// One file or directory.
    One(Source),
}

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    group: String,
    key: String,
    meta: Meta,
    sources: Sources,
}

/// What a successful build leaves in the cache, published by the job after it
/// has reported (so no deployment waits for it) and before its workspace goes.
#[derive(Debug)]
pub struct Harvest {
    request: CacheRequest,
    items: Vec<Pending>,
}

/// Directories a build leaves inside `node_modules` that are its own, not the
/// install's.
const BUILD_LEFTOVERS: &[&str] = &[".cache", ".vite", ".astro", ".turbo"];

/// The `node_modules` trees under `install_dir` of the checkout in `root` (the
/// build directory), as sources; read after the build, when no container of it
/// runs, and each moved later without following a link.
fn node_modules_under(root: &Path, install_dir: &Path, exclude: &[PathBuf]) -> Vec<Source> {
    let src = root.join(CHECKOUT);
    // Not through a link the build left on the way.
    if beneath::open_dir(root, &Path::new(CHECKOUT).join(install_dir)).is_err() {
        return Vec::new();
    }
    let top = src.join(install_dir);
    let mut found = Vec::new();
    let mut walker = walkdir::WalkDir::new(&top)
        .follow_links(false)
        .max_depth(8)
        .into_iter();
    while let Some(Ok(entry)) = walker.next() {
        if !entry.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&src) else {
            continue;
        };
        let name = entry.file_name();
        if name == ".git"
            || exclude
                .iter()
                .any(|skip| !skip.as_os_str().is_empty() && rel.starts_with(skip))
        {
            walker.skip_current_dir();
            continue;
        }
        if name == "node_modules" {
            found.push(Source {
                root: root.to_owned(),
                path: Path::new(CHECKOUT).join(rel),
                rel: rel.to_owned(),
            });
            walker.skip_current_dir();
        }
    }
    found
}

impl Harvest {
    /// Publishes every entry; returns a line for each, for the agent's log,
    /// and the entries now in the cache, for the control plane's records.
    pub fn publish(self, job_id: &str) -> (Vec<String>, Vec<PublishedEntry>) {
        let Harvest { request, items } = self;
        let mut lines = Vec::new();
        let mut published = Vec::new();
        for mut item in items {
            let sources = match &item.sources {
                Sources::NodeModules {
                    root,
                    install_dir,
                    exclude,
                } => node_modules_under(root, install_dir, exclude),
                Sources::One(source) => vec![source.clone()],
            };
            // What is there and reached without a link; a link the build
            // planted (to a host directory) is left, and said.
            let sources: Vec<Source> = sources
                .into_iter()
                .filter(|source| match beneath::vacant(&source.root, &source.path) {
                    Err(BeneathError::Exists { .. }) => true,
                    Ok(()) => false,
                    Err(error) => {
                        lines.push(format!("Not caching {}: {error}.", item.meta.label));
                        false
                    }
                })
                .collect();
            if sources.is_empty() {
                continue;
            }
            if item.kind == Kind::Deps {
                item.meta.paths = sources
                    .iter()
                    .map(|source| source.rel.display().to_string())
                    .collect();
                for source in &sources {
                    for leftover in BUILD_LEFTOVERS {
                        let _ = beneath::remove(&source.root, &source.path.join(leftover));
                    }
                }
            }
            item.meta.job_id = job_id.to_owned();
            let label = item.meta.label.clone();
            let slot = Slot {
                project: &request.project,
                scopes: &request.scopes,
                kind: item.kind,
                group: &item.group,
                key: &item.key,
            };
            let started = std::time::Instant::now();
            let entry = PublishedEntry {
                kind: item.kind.name().to_owned(),
                key: item.key.clone(),
            };
            lines.push(match request.cache.publish(slot, item.meta, &sources) {
                Ok(Some(meta)) => {
                    published.push(entry);
                    format!(
                        "Cached {label} for {} ({}, {} files, key {}) in {:.1}s.",
                        request.scopes.write,
                        ByteSize(meta.bytes),
                        meta.files,
                        &item.key[..12],
                        started.elapsed().as_secs_f64()
                    )
                }
                Ok(None) => format!(
                    "{label}: {} already has key {}.",
                    request.scopes.write,
                    &item.key[..12]
                ),
                Err(error) => format!("Could not cache {label}: {error}"),
            });
        }
        (lines, published)
    }
}

/// The inputs every key of one build shares, read once.
pub(super) struct BuildCache {
    pub request: CacheRequest,
    /// The image of each component (backend, storefront).
    image_ids: [String; 2],
    env: String,
    manifests: String,
    pending: Mutex<Vec<Pending>>,
}

impl Build<'_> {
    /// Notes an entry the build restored, for its provenance; says where it
    /// came from, for the log.
    pub(super) fn restored_from(
        &self,
        cache: &BuildCache,
        component: Component,
        kind: Kind,
        found: &Found,
    ) -> String {
        let meta = &found.meta;
        self.record
            .restored(component, kind, &meta.key, &meta.scope, &meta.job_id);
        origin(found, &cache.request.scopes)
    }
}

/// What a restore found, for the log.
fn origin(found: &Found, scopes: &Scopes) -> String {
    let whose = if found.own_scope {
        format!("{}'s", scopes.write)
    } else {
        format!("{}'s (read-only for this build)", found.meta.scope)
    };
    let which = if found.exact {
        ""
    } else {
        ", the newest of its kind"
    };
    format!(
        "{whose} cache, key {}{which}",
        &found.meta.key[..12.min(found.meta.key.len())]
    )
}

impl BuildCache {
    pub(super) fn slot<'a>(&'a self, kind: Kind, group: &'a str, key: &'a str) -> Slot<'a> {
        Slot {
            project: &self.request.project,
            scopes: &self.request.scopes,
            kind,
            group,
            key,
        }
    }

    pub(super) fn keep(
        &self,
        kind: Kind,
        group: String,
        key: String,
        label: String,
        sources: Sources,
    ) {
        crate::lock(&self.pending).push(Pending {
            kind,
            group,
            key,
            meta: Meta {
                label,
                ..Default::default()
            },
            sources,
        });
    }

    pub fn harvest(&self) -> Harvest {
        Harvest {
            request: self.request.clone(),
            items: std::mem::take(&mut *crate::lock(&self.pending)),
        }
    }

    /// A key of `kind` for what `component` builds, in its image.
    pub(super) fn key(&self, kind: &str, component: Component) -> Key {
        let mut key = Key::new(kind);
        key.text("image", &self.image_ids[super::index(component)]);
        key
    }
}

impl Build<'_> {
    /// Opens the cache for this build, or says in the log why it is not used.
    pub(super) async fn open_cache(&self) -> Option<BuildCache> {
        let Some(request) = self.request.cache.clone() else {
            self.system.line("Build cache: off for this build.");
            return None;
        };
        // Each component's keys name the image it builds in (chosen by now).
        let image_ids = [Component::Backend, Component::Storefront].map(|component| {
            self.nodes[super::index(component)]
                .get()
                .or(self.nodes[super::index(Component::Backend)].get())
                .map(|choice| choice.image_id.clone())
                .unwrap_or_default()
        });
        let src = self.workspace.src();
        let dropped = request.dropped.clone();
        let cache = request.cache.clone();
        let project = request.project.clone();
        let read = tokio::task::spawn_blocking(move || {
            let reclaimed = cache.drop_scopes(&project, &dropped);
            let manifests = RepoFs::new(&src).map(|fs| inputs::manifests(&fs));
            (reclaimed, manifests)
        })
        .await
        .expect("cache inputs task");
        let (reclaimed, manifests) = read;
        let manifests = match manifests {
            Ok(manifests) => manifests,
            Err(error) => {
                self.system.line(format!(
                    "Build cache: not used: cannot read the checkout: {error}"
                ));
                return None;
            }
        };
        if reclaimed > 0 {
            self.system.line(format!(
                "Build cache: dropped {} of closed pull requests ({}).",
                ByteSize(reclaimed),
                request.dropped.join(", ")
            ));
        }
        let mut env = Key::new("env");
        inputs::add_env(&mut env, &self.request.env);
        let reads = if request.scopes.read.is_empty() {
            String::new()
        } else {
            format!(", then {}", request.scopes.read.join(", "))
        };
        let short = |id: &str| id[..id.len().min(19)].to_owned();
        let images = match &image_ids {
            [backend, storefront] if backend == storefront => format!("image {}", short(backend)),
            [backend, storefront] => format!(
                "images {} (backend), {} (storefront)",
                short(backend),
                short(storefront)
            ),
        };
        self.system.line(format!(
            "Build cache: scope {} (reads {}{reads}; writes only {}); {images}.",
            request.scopes.write, request.scopes.write, request.scopes.write,
        ));
        Some(BuildCache {
            request,
            image_ids,
            env: env.finish(),
            manifests,
            pending: Mutex::default(),
        })
    }

    /// The key of a component's output (its own directory `own_dir`): its tree
    /// (less the other component's directory and the workspace packages it
    /// does not depend on), the plan, the variables, the image and Kiln's
    /// version.
    pub(super) async fn output_key(
        &self,
        cache: &BuildCache,
        component: Component,
        own_dir: &Path,
        exclude: Option<&Path>,
        plan: &[&str],
    ) -> Option<String> {
        let tree = match &self.request.source {
            super::Source::Git { .. } => {
                let src = self.workspace.src();
                let (own_dir, exclude) = (own_dir.to_owned(), exclude.map(Path::to_owned));
                let inputs::ComponentTree {
                    tree,
                    unrelated,
                    lockfile,
                } = tokio::task::spawn_blocking(move || {
                    inputs::component_tree(&src, &own_dir, exclude.as_deref())
                })
                .await
                .expect("tree task");
                if let Some(path) = lockfile {
                    self.system.line(format!(
                        "Build cache: the {} output's key reads only its own part of {}.",
                        component.as_str(),
                        path.display()
                    ));
                }
                if !unrelated.is_empty() {
                    let shown: Vec<String> = unrelated
                        .iter()
                        .map(|dir| dir.display().to_string())
                        .collect();
                    self.system.line(format!(
                        "Build cache: the {} output's key leaves out {}, workspace packages it does not depend on.",
                        component.as_str(),
                        shown.join(", ")
                    ));
                }
                tree
            }
            // A local build's copy, as it was before any step ran.
            super::Source::Local(_) => Ok(inputs::files_tree(self.copied_files.get()?, exclude)),
        };
        let tree = match tree {
            Ok(tree) => tree,
            Err(error) => {
                self.system
                    .line(format!("Build cache: outputs not reused: {error}"));
                return None;
            }
        };
        let mut key = cache.key("output", component);
        key.text("component", component.as_str())
            .text("kiln", env!("CARGO_PKG_VERSION"))
            .text("env", &cache.env)
            .text("tree", &tree)
            .text(
                "secret_scan",
                &serde_json::to_string(&self.request.secret_scan).unwrap_or_default(),
            );
        for part in plan {
            key.text("plan", part);
        }
        Some(key.finish())
    }

    /// A component's output from an earlier build with the same inputs, linked
    /// into this job's artifacts; `None` to build it.
    pub(super) async fn reuse_output(
        &self,
        cache: &BuildCache,
        component: Component,
        key: &str,
    ) -> Option<BuiltArtifact> {
        let Some(found) = cache
            .request
            .cache
            .find(cache.slot(Kind::Output, component.as_str(), key), false)
        else {
            return self.fetch_shared_output(cache, component, key).await;
        };
        let name = component.artifact_name();
        let out = self.workspace.artifacts().join(name);
        let from = found.data().join(name);
        let linked =
            std::fs::hard_link(&from, &out).or_else(|_| std::fs::copy(&from, &out).map(drop));
        if let Err(error) = linked {
            self.system.line(format!(
                "Build cache: the {} output could not be reused: {error}",
                component.as_str()
            ));
            return None;
        }
        let (Some(sha256), Some(files)) = (found.meta.sha256.clone(), found.meta.packed_files)
        else {
            return None;
        };
        self.system.line(kiln_protocol::reused_output_line(
            component.as_str(),
            &found.meta.job_id,
            &self.restored_from(cache, component, Kind::Output, &found),
            found.meta.bytes,
        ));
        Some(BuiltArtifact {
            release: false,
            component,
            packed: Packed {
                path: out,
                size: found.meta.bytes,
                sha256,
                files,
            },
        })
    }

    /// The output another host built from the same inputs, when this host
    /// kept none and the control plane grants one of the job's scopes.
    async fn fetch_shared_output(
        &self,
        cache: &BuildCache,
        component: Component,
        key: &str,
    ) -> Option<BuiltArtifact> {
        let shared = cache.request.shared.as_ref()?;
        let out = self.workspace.artifacts().join(component.artifact_name());
        let started = std::time::Instant::now();
        let fetched = shared.fetch(component, key, &out).await?;
        self.record.restored(
            component,
            Kind::Output,
            key,
            &fetched.scope,
            &fetched.published_by_job,
        );
        self.system.line(kiln_protocol::reused_output_line(
            component.as_str(),
            &fetched.published_by_job,
            &format!(
                "another host, through the control plane ({}'s cache, key {}, fetched in {:.1}s)",
                fetched.scope,
                &key[..12.min(key.len())],
                started.elapsed().as_secs_f64()
            ),
            fetched.size,
        ));
        Some(BuiltArtifact {
            release: false,
            component,
            packed: Packed {
                path: out,
                size: fetched.size,
                sha256: fetched.sha256,
                files: 0,
            },
        })
    }

    /// Keeps a built component's artifact for builds with the same inputs.
    pub(super) fn keep_output(&self, cache: &BuildCache, artifact: &BuiltArtifact, key: String) {
        let component = artifact.component;
        let mut pending = Pending {
            kind: Kind::Output,
            group: component.as_str().to_owned(),
            key,
            meta: Meta {
                label: format!("the {} output", component.as_str()),
                sha256: Some(artifact.packed.sha256.clone()),
                packed_files: Some(artifact.packed.files),
                ..Default::default()
            },
            sources: Sources::One(Source {
                root: PathBuf::new(),
                path: PathBuf::new(),
                rel: PathBuf::from(artifact.name()),
            }),
        };
        // A link of the packed file: the upload reads it, the entry keeps it.
        let keep_dir = self.workspace.root.join("cache-output");
        let keep = keep_dir.join(artifact.name());
        let linked = keep
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::hard_link(&artifact.packed.path, &keep));
        if linked.is_ok() {
            pending.sources = Sources::One(Source {
                root: keep_dir,
                path: PathBuf::from(artifact.name()),
                rel: PathBuf::from(artifact.name()),
            });
            crate::lock(&cache.pending).push(pending);
        }
    }

    /// The key of an install's result: the package manager and its release, the
    /// lockfiles, every manifest, the variables and the image. `None` without a
    /// lockfile (nothing pins what an install gets).
    pub(super) fn deps_key(
        &self,
        cache: &BuildCache,
        install_dir: &Path,
        manager: &PackageManager,
        provision: Option<&Provision>,
        component: Component,
    ) -> Option<String> {
        let fs = RepoFs::new(&self.workspace.src()).ok()?;
        let lockfiles = inputs::lockfiles(&fs, install_dir)?;
        let mut key = cache.key("deps", component);
        key.text("manager", manager.slug())
            .text(
                "release",
                &provision.map(Provision::label).unwrap_or_default(),
            )
            .text("dir", &install_dir.display().to_string())
            .text("lockfiles", &lockfiles)
            .text("manifests", &cache.manifests)
            .text("env", &cache.env);
        Some(key.finish())
    }

    pub(super) fn lockfiles_of(&self, install_dir: &Path) -> Option<String> {
        let fs = RepoFs::new(&self.workspace.src()).ok()?;
        inputs::lockfiles(&fs, install_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_modules_under_an_install_but_not_another_s() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "node_modules/a",
            "packages/x/node_modules/b",
            "storefront/node_modules/c",
            "node_modules/a/node_modules/d",
        ] {
            std::fs::create_dir_all(dir.path().join(CHECKOUT).join(path)).unwrap();
        }
        let mut found: Vec<String> =
            node_modules_under(dir.path(), Path::new(""), &[PathBuf::from("storefront")])
                .into_iter()
                .map(|source| source.rel.display().to_string())
                .collect();
        found.sort();
        assert_eq!(found, ["node_modules", "packages/x/node_modules"]);
        // Under an install directory reached through a link: nothing.
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("node_modules/x")).unwrap();
        std::os::unix::fs::symlink(host.path(), dir.path().join("src/linked")).unwrap();
        assert!(node_modules_under(dir.path(), Path::new("linked"), &[]).is_empty());
    }
}
