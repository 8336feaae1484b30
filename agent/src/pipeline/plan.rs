//! The backend build plan: read `package.json`, check the build runs `medusa build`
//! (Medusa's deployment guide requires it), pick the package manager and commands.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::package_manager::{self, PackageManager, PackageManagerError, Provision, Warning};
use crate::repo_fs::{join, shown, RepoFs, RepoFsError};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no package.json in {dir}; is the project's backend path right?")]
    NoPackageJson { dir: String },
    #[error(
        "{path} has no \"build\" script; Medusa backends build with \"build\": \"medusa build\""
    )]
    NoBuildScript { path: String },
    #[error("the build script {script:?} in {path} does not run `medusa build`, which Medusa deployments require; set \"build\": \"medusa build\"")]
    NotMedusaBuild { path: String, script: String },
    #[error(transparent)]
    Read(#[from] RepoFsError),
    #[error(transparent)]
    PackageManager(#[from] PackageManagerError),
    #[error(transparent)]
    Detect(crate::detect::DetectError),
}

impl From<crate::detect::DetectError> for PlanError {
    fn from(error: crate::detect::DetectError) -> Self {
        match error {
            // A file that cannot be read is the same failure whoever reads it.
            crate::detect::DetectError::Read(error) => PlanError::Read(error),
            other => PlanError::Detect(other),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendPlan {
    /// The backend's directory, relative to the checkout.
    pub app_dir: PathBuf,
    /// Where the install runs, relative to the checkout.
    pub install_dir: PathBuf,
    pub manager: PackageManager,
    /// Whether the install is frozen to a lockfile.
    pub frozen: bool,
    /// The package manager release the build provides (pnpm, yarn).
    pub provision: Option<Provision>,
    pub install: Vec<String>,
    pub build: Vec<String>,
    pub warnings: Vec<Warning>,
    /// Why this directory is the backend.
    pub reasons: Vec<String>,
    /// The Node version it asks for, if any.
    pub node_requirement: Option<crate::detect::NodeRequirement>,
}

/// Whether `script` runs `medusa build`, directly or through other scripts
/// (`npm run build:backend`, `yarn build:server`, …).
fn runs_medusa_build(scripts: &serde_json::Map<String, Value>, script: &str, depth: u32) -> bool {
    if depth > 4 {
        return false;
    }
    for command in script.split(['&', ';', '|']) {
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.windows(2).any(|pair| pair == ["medusa", "build"]) {
            return true;
        }
        let called = match words.as_slice() {
            ["npm" | "pnpm" | "bun", "run", name, ..] | ["yarn", "run", name, ..] => Some(*name),
            ["yarn" | "pnpm", name, ..] => Some(*name),
            _ => None,
        };
        if let Some(inner) = called
            .and_then(|name| scripts.get(name))
            .and_then(Value::as_str)
        {
            if runs_medusa_build(scripts, inner, depth + 1) {
                return true;
            }
        }
    }
    false
}

/// Plans the backend of the checkout read through `fs`: the project's
/// `backend_path`, or (where that is `.`) the Medusa backend detection finds,
/// falling back to the root.
pub fn plan_backend(fs: &RepoFs, backend_path: &str) -> Result<BackendPlan, PlanError> {
    let mut reasons = Vec::new();
    let app_dir =
        crate::detect::find_backend(fs, Some(backend_path), &mut reasons)?.unwrap_or_default();
    let Some(package) = fs.package_json(&app_dir)? else {
        return Err(PlanError::NoPackageJson {
            dir: shown(&app_dir),
        });
    };
    let path = shown(&join(&app_dir, Path::new("package.json")));
    let scripts = package
        .get("scripts")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(build) = scripts.get("build").and_then(Value::as_str) else {
        return Err(PlanError::NoBuildScript { path });
    };
    if !runs_medusa_build(&scripts, build, 0) {
        return Err(PlanError::NotMedusaBuild {
            path,
            script: build.to_owned(),
        });
    }
    let root_package = fs.package_json(Path::new(""))?;
    let detected = package_manager::for_app(fs, &app_dir, &package, root_package.as_ref())?;
    let frozen = detected.lockfile.is_some();
    let node_requirement = crate::detect::node_requirement(fs, &app_dir, &package, &mut reasons)?;
    Ok(BackendPlan {
        app_dir,
        install_dir: detected.install_dir,
        install: detected.manager.install_command(frozen),
        build: detected.manager.run_script("build"),
        frozen,
        provision: detected.provision,
        manager: detected.manager,
        warnings: detected.warnings,
        reasons,
        node_requirement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &tempfile::TempDir, backend_path: &str) -> Result<BackendPlan, PlanError> {
        plan_backend(&RepoFs::new(dir.path()).unwrap(), backend_path)
    }

    fn project(package_json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), package_json).unwrap();
        std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
        dir
    }

    #[test]
    fn medusa_build_is_required() {
        let dir = project(r#"{"scripts": {"build": "tsc -p ."}}"#);
        let err = plan(&dir, ".").unwrap_err().to_string();
        assert!(
            err.contains("does not run `medusa build`") && err.contains("tsc -p ."),
            "{err}"
        );
        let dir = project(r#"{"scripts": {}}"#);
        assert!(matches!(
            plan(&dir, "."),
            Err(PlanError::NoBuildScript { .. })
        ));
    }

    #[test]
    fn medusa_build_through_other_scripts_counts() {
        for build in [
            "medusa build",
            "npx medusa build --admin-only",
            "npm run build:server",
            "rm -rf dist && yarn build:server",
        ] {
            let dir = project(&format!(
                r#"{{"scripts": {{"build": "{build}", "build:server": "medusa build"}}}}"#
            ));
            let plan = plan(&dir, ".").unwrap_or_else(|e| panic!("{build}: {e}"));
            assert_eq!(plan.install, ["npm", "ci"]);
            assert_eq!(plan.build, ["npm", "run", "build"]);
        }
    }

    #[test]
    fn invalid_package_json_names_line_and_column() {
        let dir = project("{\n  \"scripts\": {\n    \"build\": medusa build\n  }\n}");
        let err = plan(&dir, ".").unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Read(RepoFsError::InvalidJson { line: 3, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_package_json_says_check_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = plan(&dir, "backend").unwrap_err().to_string();
        assert!(err.contains("backend path"), "{err}");
    }
}
