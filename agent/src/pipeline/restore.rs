//! Restores from the build cache before a step runs, each said in the system
//! log with where it came from (or why not): an install's `node_modules` (the
//! install is then skipped), else the package manager's store; the package
//! manager release a build provides; Next.js's `.next/cache` and the scope's
//! own Server Actions key. What the step makes is kept for the next build
//! (`BuildCache::keep`). Every path is worked on through `crate::beneath`.

use std::path::{Path, PathBuf};

use kiln_protocol::Component;

use super::cached::{BuildCache, Sources, CHECKOUT, HOME};
use super::{Build, Stop};
use crate::beneath;
use crate::cache::{Kind, Source};
use crate::config::ByteSize;
use crate::package_manager::{PackageManager, Provision};

/// The variable Next.js reads its Server Actions key from.
pub(super) const SERVER_ACTIONS_KEY: &str = "NEXT_SERVER_ACTIONS_ENCRYPTION_KEY";
/// How long Next.js keeps its key in `.next/cache`; the agent does the same.
const SERVER_ACTIONS_KEY_DAYS: i64 = 14;

/// A key as Next.js makes one: 256 random bits for AES-GCM, in base64.
fn new_server_actions_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `$HOME` directory (under the build's `home/`) where a package manager
/// keeps what it downloads.
fn store_dir(manager: &PackageManager) -> &'static str {
    match manager {
        PackageManager::Npm => ".npm/_cacache",
        PackageManager::YarnClassic => ".cache/yarn",
        PackageManager::YarnBerry { .. } => ".yarn/berry/cache",
        PackageManager::Pnpm => ".local/share/pnpm/store",
        PackageManager::Bun => ".bun/install/cache",
    }
}

/// What an install asks of the cache.
pub(super) struct InstallInputs<'a> {
    pub dir: &'a Path,
    /// `None` when the package manager is not one the cache keys.
    pub manager: Option<&'a PackageManager>,
    pub provision: Option<&'a Provision>,
    /// The other component's install directory: its trees are not this one's.
    pub other_dir: Option<&'a Path>,
    /// Whose install it is: its cache keys name that component's image.
    pub component: Component,
}

impl Build<'_> {
    /// The one install-with-cache step of both components: the package
    /// manager release the build provides, then (when the install is still
    /// `needed`) its `node_modules`, else its store, keeping what the install
    /// makes. Returns whether the release was provided, and whether the
    /// install must still run.
    pub(super) async fn restore_install(
        &self,
        cache: &BuildCache,
        install: InstallInputs<'_>,
        needed: bool,
    ) -> Result<(bool, bool), Stop> {
        let provided = match install.provision {
            Some(provision) => {
                self.restore_provision(cache, provision, install.component)
                    .await
            }
            None => false,
        };
        if !needed {
            return Ok((provided, false));
        }
        let keyed = install.manager.and_then(|manager| {
            self.deps_key(
                cache,
                install.dir,
                manager,
                install.provision,
                install.component,
            )
            .map(|key| (manager, key))
        });
        let Some((manager, key)) = keyed else {
            self.system.line(format!(
                "Build cache: no lockfile, so {}node_modules are not cached.",
                match install.component {
                    Component::Backend => "",
                    Component::Storefront => "the storefront's ",
                }
            ));
            return Ok((provided, true));
        };
        if self
            .restore_deps(cache, install.dir, &key, install.component)
            .await?
        {
            return Ok((provided, false));
        }
        self.restore_store(cache, install.dir, manager, install.component)
            .await;
        let exclude = install
            .other_dir
            .filter(|other| *other != install.dir)
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        self.keep_deps(cache, install.dir, key, exclude);
        Ok((provided, true))
    }

    /// Restores an install's `node_modules` trees; `Ok(true)` when the install
    /// need not run.
    pub(super) async fn restore_deps(
        &self,
        cache: &BuildCache,
        install_dir: &Path,
        key: &str,
        component: Component,
    ) -> Result<bool, Stop> {
        let group = install_dir.display().to_string();
        let Some(found) = cache
            .request
            .cache
            .find(cache.slot(Kind::Deps, &group, key), false)
        else {
            self.system.line(format!(
                "Build cache: no node_modules for {} with key {} yet; installing.",
                super::display_dir(install_dir),
                &key[..12]
            ));
            return Ok(false);
        };
        let root = self.workspace.build_dir();
        for rel in &found.meta.paths {
            if let Err(why) = beneath::vacant(&root, &Path::new(CHECKOUT).join(rel)) {
                self.system.line(format!(
                    "Build cache: node_modules not restored: {why}; installing."
                ));
                return Ok(false);
            }
        }
        let cache_store = cache.request.cache.clone();
        let (paths, found_for_task) = (found.meta.paths.clone(), found.clone());
        let started = std::time::Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            let mut linked = None;
            for rel in paths {
                let restored = cache_store.restore_path(
                    &found_for_task,
                    Path::new(&rel),
                    &root,
                    &Path::new(CHECKOUT).join(&rel),
                    true,
                )?;
                linked = Some(restored.linked);
            }
            Ok::<_, std::io::Error>(linked)
        })
        .await
        .expect("restore task");
        match restored {
            Ok(Some(linked)) => {
                self.system.line(format!(
                    "Restored node_modules of {} from {} ({}, {} files, {} in {:.1}s); the install is skipped.",
                    super::display_dir(install_dir),
                    self.restored_from(cache, component, Kind::Deps, &found),
                    ByteSize(found.meta.bytes),
                    found.meta.files,
                    if linked { "linked" } else { "copied" },
                    started.elapsed().as_secs_f64()
                ));
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(error) => {
                // What was half restored must not meet the install.
                for rel in &found.meta.paths {
                    let _ = beneath::remove(
                        &self.workspace.build_dir(),
                        &Path::new(CHECKOUT).join(rel),
                    );
                }
                self.system.line(format!(
                    "Build cache: node_modules not restored: {error}; installing."
                ));
                Ok(false)
            }
        }
    }

    /// After an install: keeps its `node_modules` trees (all of them under the
    /// install directory, less `exclude`) for the next build with this key.
    pub(super) fn keep_deps(
        &self,
        cache: &BuildCache,
        install_dir: &Path,
        key: String,
        exclude: Vec<PathBuf>,
    ) {
        cache.keep(
            Kind::Deps,
            install_dir.display().to_string(),
            key,
            format!("node_modules of {}", super::display_dir(install_dir)),
            Sources::NodeModules {
                root: self.workspace.build_dir(),
                install_dir: install_dir.to_owned(),
                exclude,
            },
        );
    }

    /// Before an install that will run: the package manager's store (this
    /// lockfile's, else the newest), so it downloads only what changed; kept
    /// again after.
    pub(super) async fn restore_store(
        &self,
        cache: &BuildCache,
        install_dir: &Path,
        manager: &PackageManager,
        component: Component,
    ) {
        let Some(lockfiles) = self.lockfiles_of(install_dir) else {
            return;
        };
        let group = format!("store:{}", manager.slug());
        let mut key = cache.key("store", component);
        key.text("manager", manager.slug())
            .text("lockfiles", &lockfiles);
        let key = key.finish();
        let rel = Path::new(HOME).join(store_dir(manager));
        let root = self.workspace.build_dir();
        let found = cache
            .request
            .cache
            .find(cache.slot(Kind::Store, &group, &key), true);
        let exact = found.as_ref().is_some_and(|found| found.exact);
        if let Some(found) = found {
            match beneath::vacant(&root, &rel) {
                Err(why) => self
                    .system
                    .line(format!("Build cache: store not restored: {why}.")),
                Ok(()) => {
                    // npm appends to its index files: it gets a copy.
                    let link = !matches!(manager, PackageManager::Npm);
                    let store = cache.request.cache.clone();
                    let task_found = found.clone();
                    let (root, dest) = (root.clone(), rel.clone());
                    let restored = tokio::task::spawn_blocking(move || {
                        store.restore_path(&task_found, Path::new("store"), &root, &dest, link)
                    })
                    .await
                    .expect("restore task");
                    match restored {
                        Ok(restored) => self.system.line(format!(
                            "Restored the {} store from {} ({}, {} in {:.1}s).",
                            manager.slug(),
                            self.restored_from(cache, component, Kind::Store, &found),
                            ByteSize(found.meta.bytes),
                            if restored.linked { "linked" } else { "copied" },
                            restored.took.as_secs_f64()
                        )),
                        Err(error) => self
                            .system
                            .line(format!("Build cache: store not restored: {error}.")),
                    }
                }
            }
        }
        if !exact {
            cache.keep(
                Kind::Store,
                group,
                key,
                format!("the {} store", manager.slug()),
                Sources::One(Source {
                    root,
                    path: rel,
                    rel: PathBuf::from("store"),
                }),
            );
        }
    }

    /// The package manager release a build provides, from the cache; `true`
    /// when the provisioning step need not run.
    pub(super) async fn restore_provision(
        &self,
        cache: &BuildCache,
        provision: &Provision,
        component: Component,
    ) -> bool {
        let group = "provision";
        let mut key = cache.key("provision", component);
        key.text("release", &provision.label())
            .text("command", &provision.command().join(" "));
        let key = key.finish();
        let rel = Path::new(HOME).join(provision.home_dir());
        let root = self.workspace.build_dir();
        // Provided already in this build (for the backend): the storefront uses it.
        if beneath::open_dir(&root, &rel).is_ok() {
            return true;
        }
        if let Some(found) = cache
            .request
            .cache
            .find(cache.slot(Kind::Store, group, &key), false)
        {
            if beneath::vacant(&root, &rel).is_ok() {
                let store = cache.request.cache.clone();
                let task_found = found.clone();
                let (root, dest) = (root.clone(), rel.clone());
                let restored = tokio::task::spawn_blocking(move || {
                    store.restore_path(&task_found, Path::new("release"), &root, &dest, true)
                })
                .await
                .expect("restore task");
                if let Ok(restored) = restored {
                    self.system.line(format!(
                        "Restored {} from {} in {:.1}s; it is not fetched again.",
                        provision.label(),
                        self.restored_from(cache, component, Kind::Store, &found),
                        restored.took.as_secs_f64()
                    ));
                    return true;
                }
            }
        }
        cache.keep(
            Kind::Store,
            group.to_owned(),
            key,
            provision.label(),
            Sources::One(Source {
                root,
                path: rel,
                rel: PathBuf::from("release"),
            }),
        );
        false
    }

    /// The Server Actions key for a Next.js storefront's build, kept for this
    /// build's own scope; `None` when the project sets one itself.
    ///
    /// Outside Docker, Next.js keeps its key in `.next/cache` for 14 days. In a
    /// container, where every build runs, it makes a new one each build, and as
    /// that key also salts its webpack cache, a restored `.next/cache` would
    /// never be used. A preview never gets its base branch's key: it is a secret
    /// (it decrypts the values Server Actions carry), so each scope has its own.
    pub(super) fn server_actions_key(&self, cache: &BuildCache) -> Option<String> {
        if self
            .request
            .env
            .iter()
            .any(|var| var.name == SERVER_ACTIONS_KEY)
        {
            return None;
        }
        let period = (crate::cache::unix_days() / SERVER_ACTIONS_KEY_DAYS).to_string();
        let slot = cache.slot(Kind::Secret, "next-server-actions", &period);
        match cache.request.cache.own_secret(slot, new_server_actions_key) {
            Ok(key) => {
                self.logs.mask_also(&key);
                self.system.line(format!(
                    "Next.js: {SERVER_ACTIONS_KEY} is {}'s own, kept by the agent for {SERVER_ACTIONS_KEY_DAYS} days, so .next/cache stays valid from one build to the next.",
                    cache.request.scopes.write
                ));
                Some(key)
            }
            Err(error) => {
                self.system.line(format!(
                    "Build cache: no {SERVER_ACTIONS_KEY} kept ({error}); Next.js makes one for this build, and cannot reuse .next/cache."
                ));
                None
            }
        }
    }

    /// Next.js's own cache (`.next/cache`) before its build, copied from the
    /// storefront's newest; kept again after.
    pub(super) async fn restore_framework_cache(
        &self,
        cache: &BuildCache,
        app_dir: &Path,
        install_dir: &Path,
    ) {
        let group = format!("next:{}", app_dir.display());
        let mut key = cache.key("framework", Component::Storefront);
        key.text("app", &app_dir.display().to_string()).text(
            "lockfiles",
            &self.lockfiles_of(install_dir).unwrap_or_default(),
        );
        let key = key.finish();
        let rel = app_dir.join(".next/cache");
        let root = self.workspace.build_dir();
        let in_root = Path::new(CHECKOUT).join(&rel);
        if let Some(found) = cache
            .request
            .cache
            .find(cache.slot(Kind::Framework, &group, &key), true)
        {
            match beneath::vacant(&root, &in_root) {
                Err(why) => self
                    .system
                    .line(format!("Build cache: .next/cache not restored: {why}.")),
                Ok(()) => {
                    let store = cache.request.cache.clone();
                    let task_found = found.clone();
                    let (root, dest) = (root.clone(), in_root.clone());
                    // Next rewrites its cache files: a copy, never links.
                    let restored = tokio::task::spawn_blocking(move || {
                        store.restore_path(&task_found, Path::new("cache"), &root, &dest, false)
                    })
                    .await
                    .expect("restore task");
                    match restored {
                        Ok(restored) => self.system.line(format!(
                            "Restored {} from {} ({}, copied in {:.1}s).",
                            rel.display(),
                            self.restored_from(
                                cache,
                                Component::Storefront,
                                Kind::Framework,
                                &found
                            ),
                            ByteSize(found.meta.bytes),
                            restored.took.as_secs_f64()
                        )),
                        Err(error) => self
                            .system
                            .line(format!("Build cache: .next/cache not restored: {error}.")),
                    }
                }
            }
        }
        cache.keep(
            Kind::Framework,
            group,
            key,
            format!("{}", rel.display()),
            Sources::One(Source {
                root,
                path: in_root,
                rel: PathBuf::from("cache"),
            }),
        );
    }
}
