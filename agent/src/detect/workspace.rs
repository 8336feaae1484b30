//! Where a repository's packages are: workspace members (package.json
//! `workspaces`, `pnpm-workspace.yaml`, and the conventional `apps/*` and
//! `packages/*`), and top-level folders (create-medusa-app's `<name>-storefront`,
//! the `backend/` + `storefront/` siblings of shops with no root package).
//! Paths are relative to the checkout.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::repo_fs::{
    is_inside_relative, join, shown, RepoFs, RepoFsError, CONFIG_LIMIT, JSON_LIMIT,
};

/// The workspace patterns a repository names: the conventional `apps/*` and
/// `packages/*`, its root package.json's `workspaces` (a list, or Yarn's
/// `{"packages": [...]}`), and `pnpm-workspace.yaml`'s list items. The one
/// reading of them, for detection and for the build cache's component trees.
pub(crate) fn workspace_patterns(
    root_package: Option<&Value>,
    pnpm_workspace: Option<&str>,
) -> Vec<String> {
    let mut patterns: Vec<String> = vec!["apps/*".into(), "packages/*".into()];
    if let Some(package) = root_package {
        let listed = package.get("workspaces").and_then(|w| {
            w.as_array()
                .or_else(|| w.get("packages").and_then(Value::as_array))
        });
        patterns.extend(
            listed
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned),
        );
    }
    if let Some(text) = pnpm_workspace {
        patterns.extend(
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("- "))
                .map(|p| p.trim().trim_matches(['"', '\'']).to_owned()),
        );
    }
    patterns
}

/// Member directories (each with a package.json), sorted.
pub(super) fn workspace_dirs(
    fs: &RepoFs,
    root_package: Option<&Value>,
) -> Result<Vec<PathBuf>, RepoFsError> {
    let pnpm_workspace = fs.read(Path::new("pnpm-workspace.yaml"), CONFIG_LIMIT)?;
    let patterns = workspace_patterns(root_package, pnpm_workspace.as_deref());
    let mut dirs = Vec::new();
    for pattern in patterns {
        let pattern = pattern.trim_end_matches('/');
        // A pattern is the repository's word: one that leaves it names nothing.
        if !crate::repo_fs::is_inside_relative(Path::new(pattern.trim_end_matches("/*"))) {
            continue;
        }
        match pattern.strip_suffix("/*") {
            Some(parent) => dirs.extend(
                fs.child_dirs(Path::new(parent))
                    .into_iter()
                    .filter(|dir| has_package(fs, dir)),
            ),
            None => {
                let dir = join(Path::new(""), Path::new(pattern));
                if has_package(fs, &dir) {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

pub(super) fn has_package(fs: &RepoFs, dir: &Path) -> bool {
    fs.is_file(&join(dir, Path::new("package.json")))
}

/// Top-level folders with a package.json, sorted.
pub(super) fn child_dirs(fs: &RepoFs) -> Vec<PathBuf> {
    fs.child_dirs(Path::new(""))
        .into_iter()
        .filter(|dir| has_package(fs, dir) && !dir.ends_with("node_modules"))
        .collect()
}

/// Nx apps: `apps/*` folders with a `project.json` and no `package.json` of their
/// own (their dependencies are the root's).
pub(super) fn nx_apps(fs: &RepoFs) -> Vec<PathBuf> {
    if !fs.is_file(Path::new("nx.json")) {
        return Vec::new();
    }
    fs.child_dirs(Path::new("apps"))
        .into_iter()
        .filter(|dir| fs.is_file(&join(dir, Path::new("project.json"))) && !has_package(fs, dir))
        .collect()
}

/// How Nx builds an app of an integrated repository: `nx build <project>` at
/// the workspace root, writing to the project's `outputPath` (relative to the
/// root), by default `dist/apps/<folder>`.
pub(super) struct NxBuild {
    pub project: String,
    pub output: String,
    /// Why that output: "set in apps/web/project.json" or "Nx's default".
    pub reason: String,
}

pub(super) fn nx_build(fs: &RepoFs, dir: &Path) -> Result<NxBuild, super::DetectError> {
    let manifest = join(dir, Path::new("project.json"));
    let project: Value = fs
        .read(&manifest, JSON_LIMIT)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let folder = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // An argument to nx: a name that reads as an option is not one.
    let project_name = project
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| {
            !name.starts_with('-')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@/_.-".contains(c))
        })
        .unwrap_or(&folder)
        .to_owned();
    let configured = project
        .pointer("/targets/build/options/outputPath")
        .and_then(Value::as_str)
        .map(|path| {
            path.replace("{workspaceRoot}/", "")
                .trim_start_matches("./")
                .to_owned()
        });
    match configured {
        Some(output) if output.is_empty() || !is_inside_relative(Path::new(&output)) => {
            Err(super::DetectError::UnsafeOutputDir {
                dir: shown(dir),
                output,
                file: "project.json".to_owned(),
            })
        }
        Some(output) => Ok(NxBuild {
            project: project_name,
            output,
            reason: format!("set in {}", shown(&manifest)),
        }),
        None => Ok(NxBuild {
            project: project_name,
            output: format!("dist/apps/{folder}"),
            reason: "Nx's default".to_owned(),
        }),
    }
}
