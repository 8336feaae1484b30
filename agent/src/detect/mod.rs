//! Detection of a repository's layout and its storefront: which directory is the
//! Medusa backend, which is the storefront, its framework (`frameworks.rs`), the
//! command that builds it, where the output goes (`output_dir.rs`), the package
//! manager, the workspace (`workspace.rs`) and the Node version
//! (`node_version.rs`). Every decision carries the signal that made it.
//!
//! The backend is recognised first (`@medusajs/*` dependencies or a
//! `medusa-config.*` file) and never taken for a frontend: its admin build lists
//! vite and react, which is how other detectors call a Medusa backend "Vite".
//! Reads repository files only through `RepoFs` (regular files inside the checkout,
//! capped in size); runs nothing.

mod frameworks;
mod node_version;
mod output_dir;
mod workspace;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use frameworks::Framework;
pub(crate) use node_version::node_requirement;
pub use node_version::NodeRequirement;
pub(crate) use workspace::workspace_patterns;

use crate::package_manager::{self, PackageManagerError, Warning, LOCKFILES};
use crate::repo_fs::{join, shown, RepoFs, RepoFsError};
use frameworks::{dependencies, framework_of};
use workspace::{child_dirs, has_package, workspace_dirs};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("no package.json in {dir}")]
    NoPackageJson { dir: String },
    #[error("{dir} uses no storefront framework Kiln knows ({known}); storefronts are built with their framework's own command")]
    NoFrameworkDetected { dir: String, known: String },
    #[error("no storefront found (looked at the root, its top-level folders and the workspace packages); set the project's storefront path if there is one")]
    NoStorefrontFound,
    #[error("two or more storefronts ({candidates}); set the project's storefront path to the one to build")]
    AmbiguousStorefront { candidates: String },
    #[error("two or more Medusa backends ({candidates}); set the project's backend path to the one to build")]
    AmbiguousBackend { candidates: String },
    #[error(transparent)]
    PackageManager(#[from] PackageManagerError),
    #[error("{dir} asks for Node {file} in {source_file} but engines.node is {engines:?}; make them agree")]
    NodeVersionConflict {
        dir: String,
        file: String,
        source_file: String,
        engines: String,
    },
    #[error("{file} in {dir} sets the output directory to {output:?}, which leaves the app; Kiln packs only output inside the storefront's own directory")]
    UnsafeOutputDir {
        dir: String,
        output: String,
        file: String,
    },
    #[error(transparent)]
    Read(RepoFsError),
}

impl DetectError {
    pub fn code(&self) -> &'static str {
        match self {
            DetectError::NoPackageJson { .. } => "no_package_json",
            DetectError::NoFrameworkDetected { .. } => "no_framework_detected",
            DetectError::NoStorefrontFound => "no_storefront_found",
            DetectError::AmbiguousStorefront { .. } => "ambiguous_storefront",
            DetectError::AmbiguousBackend { .. } => "ambiguous_backend",
            DetectError::PackageManager(inner) => inner.code(),
            DetectError::NodeVersionConflict { .. } => "node_version_conflict",
            DetectError::UnsafeOutputDir { .. } => "unsafe_output_dir",
            DetectError::Read(inner) => inner.code(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub dir: String,
    pub kind: &'static str,
}

/// What `kiln-agent detect --format json` prints (paths relative to the root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub app_dir: String,
    pub install_dir: String,
    /// Where the build command runs: the app, or the root for an Nx app.
    pub build_dir: String,
    pub framework: Framework,
    /// The framework's command, e.g. `next build`.
    pub build_command: String,
    /// The same, run through the package manager (`npx --no-install next build`).
    pub exec_command: Vec<String>,
    /// Relative to `build_dir`.
    pub output_dir: Option<String>,
    pub package_manager: &'static str,
    pub install_command: String,
    /// `install_command` as argv.
    #[serde(skip)]
    pub install: Vec<String>,
    /// The package manager release the build provides (`pnpm@10.11.1`), if any.
    pub package_manager_release: Option<String>,
    #[serde(skip)]
    pub provision: Option<crate::package_manager::Provision>,
    /// As written in `.nvmrc`, `.node-version` or `engines.node`.
    pub node_version: Option<String>,
    #[serde(skip)]
    pub node_requirement: Option<NodeRequirement>,
    pub backend: Option<Backend>,
    pub warnings: Vec<&'static str>,
    /// Why, one line per decision: "nextjs: dependency `next` in storefront/package.json".
    #[serde(skip)]
    pub reasons: Vec<String>,
    #[serde(skip)]
    pub warning_messages: Vec<Warning>,
}

/// Dependencies that make a package a Medusa backend. Medusa's tooling packages
/// (`@medusajs/eslint-plugin`, `types`, `ui`, `icons`, `js-sdk`, `test-utils`, …)
/// do not: a monorepo's root lists them.
const MEDUSA_BACKEND_DEPENDENCIES: &[&str] = &["@medusajs/medusa", "@medusajs/framework"];

/// Why `dir` is a Medusa backend, if it is one.
fn medusa_signal(fs: &RepoFs, dir: &Path, package: &Value) -> Option<String> {
    if let Some(dep) = dependencies(package).find(|dep| MEDUSA_BACKEND_DEPENDENCIES.contains(dep)) {
        return Some(format!("dependency `{dep}`"));
    }
    ["js", "ts", "mjs", "cjs"]
        .iter()
        .map(|ext| format!("medusa-config.{ext}"))
        .find(|file| fs.is_file(&join(dir, Path::new(file))))
        .map(|file| format!("file `{file}`"))
}

/// The root, then `more`, each once.
fn root_and(more: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::new()];
    for dir in more {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The Medusa backend: the configured directory (`.` counts as not configured),
/// else the root when it is one, else the one package of the workspace (or
/// top-level folder) that is one. `None` when there is none.
pub(crate) fn find_backend(
    fs: &RepoFs,
    configured: Option<&str>,
    reasons: &mut Vec<String>,
) -> Result<Option<PathBuf>, DetectError> {
    let root_package = fs.package_json(Path::new(""))?;
    if let Some(path) = configured.filter(|path| *path != ".") {
        let dir = join(Path::new(""), Path::new(path));
        reasons.push(format!(
            "backend: {} (the project's backend path)",
            shown(&dir)
        ));
        return Ok(Some(dir));
    }
    let mut found = Vec::new();
    let dirs = root_and(
        workspace_dirs(fs, root_package.as_ref())?
            .into_iter()
            .chain(child_dirs(fs)),
    );
    for dir in dirs {
        let Some(package) = fs.package_json(&dir)? else {
            continue;
        };
        if let Some(signal) = medusa_signal(fs, &dir, &package) {
            found.push((dir, signal));
            // A backend at the root is the backend.
            if found[0].0.as_os_str().is_empty() {
                break;
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => {
            let (dir, signal) = found.remove(0);
            reasons.push(format!(
                "backend: Medusa, {signal} in {}",
                shown(&join(&dir, Path::new("package.json")))
            ));
            Ok(Some(dir))
        }
        _ => Err(DetectError::AmbiguousBackend {
            candidates: found
                .iter()
                .map(|(dir, _)| shown(dir))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Detects the storefront of the checkout at `root`; `backend_path` and
/// `storefront_path` are the project's settings, when it has them.
pub fn detect(
    root: &Path,
    backend_path: Option<&str>,
    storefront_path: Option<&str>,
) -> Result<Detection, DetectError> {
    let fs = RepoFs::new(root).map_err(|error| {
        DetectError::Read(RepoFsError::Io {
            path: root.display().to_string(),
            message: error.to_string(),
        })
    })?;
    detect_in(&fs, backend_path, storefront_path)
}

/// A storefront found: its directory, the package that holds its dependencies
/// (its own, or the root's for an Nx app), its framework and why.
struct App {
    dir: PathBuf,
    package: Value,
    manifest: PathBuf,
    framework: Framework,
    signal: String,
}

/// The project's storefront path, which must use a framework Kiln knows.
fn configured_storefront(
    fs: &RepoFs,
    path: &str,
    root_package: Option<&Value>,
    reasons: &mut Vec<String>,
) -> Result<App, DetectError> {
    let dir = join(Path::new(""), Path::new(path));
    reasons.push(format!(
        "storefront: {} (the project's storefront path)",
        shown(&dir)
    ));
    if let Some(package) = fs.package_json(&dir)? {
        let (framework, signal) =
            framework_of(fs, &dir, &package).ok_or_else(|| DetectError::NoFrameworkDetected {
                dir: shown(&dir),
                known: frameworks::known(),
            })?;
        return Ok(App {
            manifest: join(&dir, Path::new("package.json")),
            dir,
            package,
            framework,
            signal,
        });
    }
    let nx = nx_app(fs, &dir, root_package);
    nx.ok_or_else(|| DetectError::NoPackageJson { dir: shown(&dir) })
}

fn nx_app(fs: &RepoFs, dir: &Path, root_package: Option<&Value>) -> Option<App> {
    let (framework, signal) = frameworks::nx_framework(fs, dir)?;
    Some(App {
        dir: dir.to_owned(),
        package: root_package.cloned().unwrap_or(Value::Null),
        manifest: join(dir, Path::new("project.json")),
        framework,
        signal,
    })
}

/// The one frontend app of the repository: not the backend, not a documentation
/// site, not a library; among several, the one that talks to Medusa
/// (`@medusajs/js-sdk`) or is called a storefront.
fn find_storefront(
    fs: &RepoFs,
    root_package: Option<&Value>,
    backend: Option<&PathBuf>,
    reasons: &mut Vec<String>,
) -> Result<App, DetectError> {
    let dirs = root_and(
        child_dirs(fs)
            .into_iter()
            .chain(workspace_dirs(fs, root_package)?),
    );
    let nx_apps = workspace::nx_apps(fs);
    if !dirs.iter().any(|dir| has_package(fs, dir)) && nx_apps.is_empty() {
        return Err(DetectError::NoPackageJson {
            dir: ".".to_owned(),
        });
    }
    let mut candidates = Vec::new();
    let mut frameworkless = Vec::new();
    let mut set_aside = Vec::new();
    for dir in dirs {
        if Some(&dir) == backend {
            continue;
        }
        let Some(package) = fs.package_json(&dir)? else {
            continue;
        };
        if medusa_signal(fs, &dir, &package).is_some() {
            continue;
        }
        match framework_of(fs, &dir, &package) {
            Some((framework, _)) if framework.is_docs() => {
                set_aside.push(format!("{} (a {} site)", shown(&dir), framework.slug()));
            }
            Some((Framework::Vite, _)) if frameworks::is_vite_library(fs, &dir, &package) => {
                set_aside.push(format!("{} (a library)", shown(&dir)));
            }
            Some((framework, signal)) => candidates.push(App {
                manifest: join(&dir, Path::new("package.json")),
                dir,
                package,
                framework,
                signal,
            }),
            None if frameworks::looks_like_frontend(&dir, &package)
                && !dir.as_os_str().is_empty() =>
            {
                frameworkless.push(dir)
            }
            None => {}
        }
    }
    candidates.extend(
        nx_apps
            .iter()
            .filter_map(|dir| nx_app(fs, dir, root_package)),
    );
    if !set_aside.is_empty() {
        reasons.push(format!("not the storefront: {}", set_aside.join(", ")));
    }
    if candidates.len() > 1 {
        let preferred: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, app)| {
                dependencies(&app.package).any(|dep| dep == "@medusajs/js-sdk")
                    || frameworks::named_storefront(&app.dir, &app.package)
            })
            .map(|(index, _)| index)
            .collect();
        if let [only] = preferred[..] {
            let chosen = candidates.swap_remove(only);
            reasons.push(format!(
                "storefront: {}, which uses @medusajs/js-sdk or is named a storefront, over {}",
                shown(&chosen.dir),
                candidates
                    .iter()
                    .map(|app| shown(&app.dir))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return Ok(chosen);
        }
        return Err(DetectError::AmbiguousStorefront {
            candidates: candidates
                .iter()
                .map(|app| format!("{} ({})", shown(&app.dir), app.framework.slug()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if let Some(app) = candidates.pop() {
        return Ok(app);
    }
    match frameworkless.first() {
        Some(dir) => Err(DetectError::NoFrameworkDetected {
            dir: shown(dir),
            known: frameworks::known(),
        }),
        None => Err(DetectError::NoStorefrontFound),
    }
}

/// `detect` on a checkout already opened.
pub(crate) fn detect_in(
    fs: &RepoFs,
    backend_path: Option<&str>,
    storefront_path: Option<&str>,
) -> Result<Detection, DetectError> {
    let root = Path::new("");
    let mut reasons = Vec::new();
    let root_package = fs.package_json(root)?;

    // 1. The backend, recognised before any frontend rule.
    let backend = find_backend(fs, backend_path, &mut reasons)?;

    // 2. The storefront: configured, else the single frontend app found.
    let app = match storefront_path {
        Some(path) => configured_storefront(fs, path, root_package.as_ref(), &mut reasons)?,
        None => find_storefront(fs, root_package.as_ref(), backend.as_ref(), &mut reasons)?,
    };
    let App {
        dir: app_dir,
        package,
        manifest,
        framework,
        signal,
    } = app;
    reasons.push(format!(
        "{}: {signal} in {}",
        framework.slug(),
        shown(&manifest)
    ));

    // 3. Package manager, install, output, Node.
    let detected = package_manager::for_app(fs, &app_dir, &package, root_package.as_ref())?;
    let mut warnings = detected.warnings.clone();
    if let Some(lockfile) = &detected.lockfile {
        reasons.push(format!("{}: {}", detected.manager.slug(), shown(lockfile)));
        // A lockfile in the app beside the workspace root's is never used.
        if detected.install_dir != app_dir {
            for (file, _) in LOCKFILES {
                let stray = join(&app_dir, Path::new(file));
                if fs.is_file(&stray) {
                    warnings.push(Warning {
                        code: "stray_lockfile",
                        message: format!(
                            "{} is ignored: the install runs at {}",
                            shown(&stray),
                            shown(&detected.install_dir)
                        ),
                    });
                }
            }
        }
    }
    // An Nx app (a project.json, no package.json) is built by Nx at the root.
    let (build_dir, command, output) = if manifest.ends_with("project.json") {
        let nx = workspace::nx_build(fs, &app_dir)?;
        reasons.push(format!(
            "build `nx build {}` at {}; output {}: {}",
            nx.project,
            shown(&detected.install_dir),
            nx.output,
            nx.reason
        ));
        let command = vec!["nx".to_owned(), "build".to_owned(), nx.project];
        (detected.install_dir.clone(), command, nx.output)
    } else {
        let output = output_dir::output_dir(fs, framework, &app_dir, &mut reasons, &mut warnings)?;
        let command = framework.command(fs, &app_dir);
        (
            app_dir.clone(),
            command.iter().map(|w| w.to_string()).collect(),
            output,
        )
    };
    let node_requirement = node_version::node_requirement(fs, &app_dir, &package, &mut reasons)?;
    let frozen = detected.lockfile.is_some();
    Ok(Detection {
        app_dir: shown(&app_dir),
        install_dir: shown(&detected.install_dir),
        build_dir: shown(&build_dir),
        framework,
        build_command: command.join(" "),
        exec_command: detected.manager.exec(&command),
        output_dir: Some(output),
        package_manager: detected.manager.slug(),
        install_command: detected.manager.install_command(frozen).join(" "),
        install: detected.manager.install_command(frozen),
        package_manager_release: detected.provision.as_ref().map(|p| p.label()),
        provision: detected.provision.clone(),
        node_version: node_requirement.as_ref().map(|r| r.wanted.clone()),
        node_requirement,
        backend: backend.map(|dir| Backend {
            dir: shown(&dir),
            kind: "medusa",
        }),
        warnings: warnings.iter().map(|w| w.code).collect(),
        reasons,
        warning_messages: warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tree;

    fn app(deps: &str) -> String {
        format!(r#"{{"name": "web", "dependencies": {{{deps}}}}}"#)
    }

    /// Dependencies, expected slug, expected command, extra files.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );

    #[test]
    fn every_framework_by_its_dependency() {
        let cases: &[Case] = &[
            (
                r#""@shopify/hydrogen": "1", "vite": "5""#,
                "hydrogen",
                "shopify hydrogen build",
                &[],
            ),
            (
                r#""@react-router/dev": "7", "vite": "5""#,
                "react-router",
                "react-router build",
                &[],
            ),
            (
                r#""@remix-run/dev": "2", "@remix-run/react": "2""#,
                "remix",
                "remix build",
                &[],
            ),
            (
                r#""next": "15", "react": "19""#,
                "nextjs",
                "next build",
                &[],
            ),
            (r#""gatsby": "5""#, "gatsby", "gatsby build", &[]),
            (r#""nuxt": "3""#, "nuxt", "nuxt build", &[]),
            (
                r#""@sveltejs/kit": "2", "vite": "5""#,
                "sveltekit",
                "vite build",
                &[],
            ),
            (r#""astro": "4""#, "astro", "astro build", &[]),
            (
                r#""@solidjs/start": "1", "vinxi": "0""#,
                "solidstart",
                "vinxi build",
                &[],
            ),
            (
                r#""@builder.io/qwik-city": "1", "@builder.io/qwik": "1""#,
                "qwik",
                "qwik build",
                &[],
            ),
            (
                r#""@docusaurus/core": "3""#,
                "docusaurus",
                "docusaurus build",
                &[],
            ),
            (
                r#""expo": "51", "react-native-web": "0""#,
                "expo",
                "expo export --platform web",
                &[],
            ),
            (r#""@angular/core": "18""#, "angular", "ng build", &[]),
            (
                r#""@vue/cli-service": "5", "vue": "3""#,
                "vue-cli",
                "vue-cli-service build",
                &[],
            ),
            (
                r#""react-scripts": "5""#,
                "create-react-app",
                "react-scripts build",
                &[],
            ),
            (
                r#""vite": "5", "react": "18""#,
                "vite",
                "vite build",
                &[("vite.config.ts", "export default {}")],
            ),
            (
                r#""storybook": "8", "@storybook/react-vite": "8", "vite": "5""#,
                "storybook",
                "storybook build",
                &[],
            ),
        ];
        for (deps, slug, command, extra) in cases {
            let mut files = vec![
                ("package.json", app(deps)),
                ("package-lock.json", "{}".to_owned()),
            ];
            files.extend(extra.iter().map(|(p, t)| (*p, t.to_string())));
            let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
            let dir = tree(&files);
            let found =
                detect(dir.path(), None, Some(".")).unwrap_or_else(|e| panic!("{slug}: {e}"));
            assert_eq!(found.framework.slug(), *slug);
            assert_eq!(found.build_command, *command, "{slug}");
            assert_eq!(found.app_dir, ".");
        }
    }

    #[test]
    fn a_medusa_backend_is_never_taken_for_vite() {
        let backend = r#"{"name": "shop", "dependencies": {"@medusajs/medusa": "2.15.3", "@medusajs/framework": "2.15.3"}, "devDependencies": {"vite": "^5.4.14", "react": "^18.3.1"}}"#;
        let dir = tree(&[
            ("package.json", backend),
            ("medusa-config.ts", "export default {}"),
            ("package-lock.json", "{}"),
            ("shop-storefront/package.json", &app(r#""next": "15""#)),
            ("shop-storefront/package-lock.json", "{}"),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.app_dir, "shop-storefront");
        assert_eq!(found.framework, Framework::Nextjs);
        assert_eq!(
            found.backend,
            Some(Backend {
                dir: ".".into(),
                kind: "medusa"
            })
        );
        assert!(
            found
                .reasons
                .iter()
                .any(|r| r == "nextjs: dependency `next` in shop-storefront/package.json"),
            "{:?}",
            found.reasons
        );
        // A backend alone has no storefront, whatever its devDependencies say.
        let alone = tree(&[("package.json", backend), ("package-lock.json", "{}")]);
        assert_eq!(
            detect(alone.path(), None, None).unwrap_err().code(),
            "no_storefront_found"
        );
    }

    #[test]
    fn create_medusa_app_siblings_without_a_root_package() {
        let dir = tree(&[
            (
                "my-store/package.json",
                r#"{"dependencies": {"@medusajs/medusa": "2", "vite": "5"}}"#,
            ),
            ("my-store/package-lock.json", "{}"),
            ("my-store-storefront/package.json", &app(r#""next": "15""#)),
            ("my-store-storefront/yarn.lock", "# yarn lockfile v1\n"),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.app_dir, "my-store-storefront");
        assert_eq!(found.backend.unwrap().dir, "my-store");
        assert_eq!(found.package_manager, "yarn-classic");
        assert_eq!(found.install_dir, "my-store-storefront");
    }

    #[test]
    fn pnpm_workspaces_are_followed() {
        let dir = tree(&[
            ("package.json", r#"{"name": "mono", "private": true}"#),
            ("pnpm-workspace.yaml", "packages:\n  - 'sites/*'\n"),
            ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
            ("sites/shop/package.json", &app(r#""@remix-run/dev": "2""#)),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.app_dir, "sites/shop");
        assert_eq!(found.framework, Framework::Remix);
        assert_eq!(
            (found.package_manager, found.install_dir.as_str()),
            ("pnpm", ".")
        );
        assert_eq!(found.exec_command, ["pnpm", "exec", "remix", "build"]);
    }

    #[test]
    fn monorepo_installs_at_the_workspace_root() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"name": "mono", "private": true, "workspaces": ["apps/*"], "packageManager": "yarn@4.12.0"}"#,
            ),
            ("yarn.lock", "__metadata:\n  version: 8\n"),
            (".yarnrc.yml", "yarnPath: .yarn/releases/yarn-4.12.0.cjs\n"),
            (
                "apps/backend/package.json",
                r#"{"dependencies": {"@medusajs/medusa": "2"}}"#,
            ),
            ("apps/storefront/package.json", &app(r#""next": "15""#)),
            ("apps/storefront/package-lock.json", "{}"),
            (
                "apps/storefront/next.config.js",
                "module.exports = { output: 'export' }",
            ),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.app_dir, "apps/storefront");
        assert_eq!(found.install_dir, ".");
        assert_eq!(found.package_manager, "yarn-berry");
        assert_eq!(
            found.install_command,
            "node .yarn/releases/yarn-4.12.0.cjs install --immutable"
        );
        assert_eq!(found.output_dir.as_deref(), Some("out"));
        assert_eq!(found.backend.unwrap().dir, "apps/backend");
        assert!(
            found.warnings.contains(&"stray_lockfile"),
            "{:?}",
            found.warnings
        );
    }

    #[test]
    fn output_dirs_come_from_framework_configs() {
        let vite = tree(&[
            ("package.json", &app(r#""vite": "5""#)),
            (
                "vite.config.ts",
                "export default { build: { outDir: 'public-build' } }",
            ),
        ]);
        assert_eq!(
            detect(vite.path(), None, None)
                .unwrap()
                .output_dir
                .as_deref(),
            Some("public-build")
        );
        let next = tree(&[
            ("package.json", &app(r#""next": "15""#)),
            ("next.config.mjs", "export default { distDir: \"build\" }"),
        ]);
        assert_eq!(
            detect(next.path(), None, None)
                .unwrap()
                .output_dir
                .as_deref(),
            Some("build")
        );
        let angular = tree(&[
            ("package.json", &app(r#""@angular/core": "18""#)),
            (
                "angular.json",
                r#"{"projects": {"shop": {"architect": {"build": {"options": {"outputPath": "dist/shop"}}}}}}"#,
            ),
        ]);
        assert_eq!(
            detect(angular.path(), None, None)
                .unwrap()
                .output_dir
                .as_deref(),
            Some("dist/shop")
        );
    }

    #[test]
    fn each_error_has_its_code() {
        let empty = tree(&[]);
        assert_eq!(
            detect(empty.path(), None, None).unwrap_err().code(),
            "no_package_json"
        );
        let invalid = tree(&[(
            "package.json",
            "{\n  \"dependencies\": {\n    \"next\": 15,\n  }\n}",
        )]);
        let err = detect(invalid.path(), None, None).unwrap_err();
        assert!(
            matches!(
                err,
                DetectError::Read(RepoFsError::InvalidJson { line: 4, .. })
            ),
            "{err:?}"
        );
        let plain = tree(&[("web/package.json", &app(r#""lodash": "4""#))]);
        assert_eq!(
            detect(plain.path(), None, Some("web")).unwrap_err().code(),
            "no_framework_detected"
        );
        let two = tree(&[
            ("apps/a/package.json", &app(r#""next": "15""#)),
            ("apps/b/package.json", &app(r#""astro": "4""#)),
        ]);
        let err = detect(two.path(), None, None).unwrap_err();
        assert_eq!(err.code(), "ambiguous_storefront");
        assert!(
            err.to_string().contains("apps/a (nextjs), apps/b (astro)"),
            "{err}"
        );
        let bad_field = tree(&[(
            "package.json",
            r#"{"packageManager": "pnpm@10;rm -rf /", "dependencies": {"next": "15"}}"#,
        )]);
        assert_eq!(
            detect(bad_field.path(), None, None).unwrap_err().code(),
            "invalid_package_manager"
        );
        let mismatch = tree(&[
            (
                "package.json",
                r#"{"packageManager": "pnpm@9.0.0", "dependencies": {"next": "15"}}"#,
            ),
            ("yarn.lock", ""),
        ]);
        assert_eq!(
            detect(mismatch.path(), None, None).unwrap_err().code(),
            "package_manager_lockfile_mismatch"
        );
        let node = tree(&[
            (
                "package.json",
                r#"{"engines": {"node": ">=20"}, "dependencies": {"next": "15"}}"#,
            ),
            (".nvmrc", "18.19.0\n"),
        ]);
        assert_eq!(
            detect(node.path(), None, None).unwrap_err().code(),
            "node_version_conflict"
        );
    }

    #[test]
    fn node_version_and_lockfile_warnings() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"engines": {"node": ">=20"}, "dependencies": {"next": "15"}}"#,
            ),
            (".nvmrc", "v20.11.1\n"),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.node_version.as_deref(), Some("20.11.1"));
        assert_eq!(found.warnings, ["missing_lockfile"]);
        assert_eq!(found.exec_command, ["npx", "--no-install", "next", "build"]);
    }

    /// Medusa's official starter: a pnpm 10 + turbo monorepo.
    fn official_starter() -> tempfile::TempDir {
        tree(&[
            (
                "package.json",
                r#"{"name": "medusa-starter", "private": true, "packageManager": "pnpm@10.11.1",
                   "scripts": {"build": "turbo run build"},
                   "devDependencies": {"@medusajs/eslint-plugin": "2", "turbo": "2"}}"#,
            ),
            ("pnpm-workspace.yaml", "packages:\n  - \"apps/*\"\n"),
            ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
            (
                "apps/backend/package.json",
                r#"{"name": "backend", "scripts": {"build": "medusa build"},
                   "dependencies": {"@medusajs/framework": "2.15.3", "@medusajs/medusa": "2.15.3"}}"#,
            ),
            ("apps/backend/medusa-config.ts", "export default {}"),
            (
                "apps/storefront/package.json",
                r#"{"name": "storefront", "dependencies": {"next": "15", "@medusajs/js-sdk": "2"}}"#,
            ),
        ])
    }

    #[test]
    fn the_official_monorepo_starter_builds_its_backend_and_storefront() {
        let dir = official_starter();
        let fs = RepoFs::new(dir.path()).unwrap();
        let plan = crate::pipeline::plan::plan_backend(&fs, ".").unwrap();
        assert_eq!(plan.app_dir, Path::new("apps/backend"));
        assert_eq!(plan.install_dir, Path::new(""));
        assert_eq!(plan.install, ["pnpm", "install", "--frozen-lockfile"]);
        assert_eq!(plan.build, ["pnpm", "run", "build"]);
        assert_eq!(plan.provision.unwrap().label(), "pnpm@10.11.1");
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.backend.unwrap().dir, "apps/backend");
        assert_eq!(
            (found.app_dir.as_str(), found.install_dir.as_str()),
            ("apps/storefront", ".")
        );
        assert_eq!(found.exec_command, ["pnpm", "exec", "next", "build"]);
        assert_eq!(
            found.package_manager_release.as_deref(),
            Some("pnpm@10.11.1")
        );
    }

    #[test]
    fn medusa_tooling_packages_do_not_make_a_backend() {
        for tool in [
            "@medusajs/eslint-plugin",
            "@medusajs/types",
            "@medusajs/ui",
            "@medusajs/test-utils",
        ] {
            let dir = tree(&[(
                "package.json",
                &format!(r#"{{"dependencies": {{"{tool}": "2", "next": "15"}}}}"#),
            )]);
            let found = detect(dir.path(), None, None).unwrap();
            assert_eq!(
                (found.app_dir.as_str(), found.backend),
                (".", None),
                "{tool}"
            );
        }
    }

    #[test]
    fn vite_based_routers_write_the_client_to_build_client() {
        let router = tree(&[("package.json", &app(r#""@react-router/dev": "7""#))]);
        assert_eq!(
            detect(router.path(), None, None)
                .unwrap()
                .output_dir
                .as_deref(),
            Some("build/client")
        );
        let remix = tree(&[
            (
                "package.json",
                &app(r#""@remix-run/dev": "2", "vite": "5""#),
            ),
            (
                "vite.config.ts",
                "import { vitePlugin as remix } from '@remix-run/dev'",
            ),
        ]);
        let found = detect(remix.path(), None, None).unwrap();
        assert_eq!(found.build_command, "remix vite:build");
        assert_eq!(found.output_dir.as_deref(), Some("build/client"));
    }

    #[test]
    fn angulars_application_builder_writes_to_browser() {
        let angular = |builder: &str, output: &str| {
            tree(&[
                ("package.json", &app(r#""@angular/core": "19""#)),
                (
                    "angular.json",
                    &format!(
                        r#"{{"projects": {{"shop": {{"architect": {{"build": {{"builder": "{builder}", "options": {{{output}}}}}}}}}}}}}"#
                    ),
                ),
            ])
        };
        for (builder, output, expected) in [
            (
                "@angular-devkit/build-angular:application",
                r#""outputPath": "dist/shop""#,
                "dist/shop/browser",
            ),
            ("@angular/build:application", "", "dist/shop/browser"),
            (
                "@angular/build:application",
                r#""outputPath": {"base": "out", "browser": ""}"#,
                "out",
            ),
            (
                "@angular-devkit/build-angular:browser",
                r#""outputPath": "dist/shop""#,
                "dist/shop",
            ),
        ] {
            let dir = angular(builder, output);
            assert_eq!(
                detect(dir.path(), None, None)
                    .unwrap()
                    .output_dir
                    .as_deref(),
                Some(expected),
                "{builder} {output}"
            );
        }
    }

    #[test]
    fn docs_sites_and_libraries_are_not_storefronts() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"private": true, "workspaces": ["apps/*", "packages/*"]}"#,
            ),
            ("package-lock.json", "{}"),
            ("apps/docs/package.json", &app(r#""@docusaurus/core": "3""#)),
            ("apps/guide/package.json", &app(r#""vitepress": "1""#)),
            ("apps/stories/package.json", &app(r#""storybook": "8""#)),
            (
                "packages/ui/package.json",
                r#"{"name": "ui", "main": "dist/index.js", "dependencies": {"vite": "5", "react": "18"}}"#,
            ),
            (
                "packages/ui/vite.config.ts",
                "export default { build: { lib: { entry: 'src/index.ts' } } }",
            ),
            ("apps/shop/package.json", &app(r#""next": "15""#)),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.app_dir, "apps/shop");
        assert!(
            found
                .reasons
                .iter()
                .any(|r| r.contains("apps/docs (a docusaurus site)")
                    && r.contains("packages/ui (a library)")),
            "{:?}",
            found.reasons
        );
    }

    #[test]
    fn among_several_apps_the_one_that_talks_to_medusa_is_the_storefront() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"private": true, "workspaces": ["apps/*"]}"#,
            ),
            ("package-lock.json", "{}"),
            ("apps/marketing/package.json", &app(r#""astro": "4""#)),
            (
                "apps/web/package.json",
                &app(r#""next": "15", "@medusajs/js-sdk": "2""#),
            ),
        ]);
        assert_eq!(detect(dir.path(), None, None).unwrap().app_dir, "apps/web");
    }

    #[test]
    fn a_frontend_without_a_known_framework_says_so() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"private": true, "workspaces": ["apps/*"]}"#,
            ),
            (
                "apps/storefront/package.json",
                &app(r#""react": "19", "parcel": "2""#),
            ),
        ]);
        let err = detect(dir.path(), None, None).unwrap_err();
        assert_eq!(err.code(), "no_framework_detected");
        assert!(
            err.to_string().contains("apps/storefront") && err.to_string().contains("nextjs"),
            "{err}"
        );
    }

    #[test]
    fn sibling_backend_and_storefront_folders_with_no_root_package_are_found() {
        let dir = tree(&[
            (
                "backend/package.json",
                r#"{"name": "backend", "packageManager": "yarn@4.9.2", "dependencies": {"@medusajs/medusa": "2"}}"#,
            ),
            ("backend/yarn.lock", "__metadata:\n  version: 8\n"),
            (
                "storefront/package.json",
                r#"{"name": "storefront", "packageManager": "pnpm@9.15.0", "dependencies": {"next": "15", "react": "19"}}"#,
            ),
            ("storefront/pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(
            (found.app_dir.as_str(), found.install_dir.as_str()),
            ("storefront", "storefront")
        );
        assert_eq!(found.framework, Framework::Nextjs);
        assert_eq!(found.package_manager, "pnpm");
        assert_eq!(found.backend.unwrap().dir, "backend");
    }

    #[test]
    fn an_app_with_a_build_script_and_no_known_framework_says_so() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"name": "shop", "dependencies": {"@medusajs/medusa": "2"}}"#,
            ),
            ("package-lock.json", "{}"),
            (
                "web/package.json",
                r#"{"name": "web", "scripts": {"build": "parcel build index.html"}}"#,
            ),
            // A library with a build script is built for other packages.
            (
                "packages/ui/package.json",
                r#"{"name": "ui", "scripts": {"build": "tsc"}}"#,
            ),
        ]);
        let err = detect(dir.path(), None, None).unwrap_err();
        assert_eq!(err.code(), "no_framework_detected");
        assert!(
            err.to_string()
                .starts_with("web uses no storefront framework"),
            "{err}"
        );
        std::fs::remove_dir_all(dir.path().join("web")).unwrap();
        let err = detect(dir.path(), None, None).unwrap_err();
        assert_eq!(err.code(), "no_storefront_found");
    }

    #[test]
    fn nx_apps_without_a_package_json_are_found_by_their_project() {
        let dir = tree(&[
            (
                "package.json",
                r#"{"name": "acme", "dependencies": {"next": "15", "react": "19"}}"#,
            ),
            ("package-lock.json", "{}"),
            ("nx.json", "{}"),
            (
                "apps/storefront/project.json",
                r#"{"targets": {"build": {"executor": "@nx/next:build"}}}"#,
            ),
        ]);
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(
            (found.app_dir.as_str(), found.install_dir.as_str()),
            ("apps/storefront", ".")
        );
        assert_eq!(found.framework, Framework::Nextjs);
        assert!(
            found.reasons.iter().any(|r| r.contains("@nx/next:build")),
            "{:?}",
            found.reasons
        );
        assert_eq!(
            (found.build_dir.as_str(), found.build_command.as_str()),
            (".", "nx build storefront")
        );
        assert_eq!(
            found.exec_command,
            ["npx", "--no-install", "nx", "build", "storefront"]
        );
        assert_eq!(found.output_dir.as_deref(), Some("dist/apps/storefront"));

        std::fs::write(
            dir.path().join("apps/storefront/project.json"),
            r#"{"name": "shop-web", "targets": {"build": {"executor": "@nx/next:build",
                "options": {"outputPath": "{workspaceRoot}/dist/shop-web"}}}}"#,
        )
        .unwrap();
        let found = detect(dir.path(), None, None).unwrap();
        assert_eq!(found.build_command, "nx build shop-web");
        assert_eq!(found.output_dir.as_deref(), Some("dist/shop-web"));

        std::fs::write(
            dir.path().join("apps/storefront/project.json"),
            r#"{"name": "--help", "targets": {"build": {"executor": "@nx/next:build",
                "options": {"outputPath": "../../etc"}}}}"#,
        )
        .unwrap();
        let err = detect(dir.path(), None, None).unwrap_err();
        assert_eq!(err.code(), "unsafe_output_dir");
    }
}
