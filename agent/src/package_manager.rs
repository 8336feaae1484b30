//! Which package manager a JavaScript project uses, from its `packageManager` field
//! and lockfiles, and the frozen install and script commands that go with it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::repo_fs::{join, shown, RepoFs, RepoFsError, CONFIG_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageManager {
    Npm,
    YarnClassic,
    /// Yarn 2+; `yarn_path` is the committed release from `.yarnrc.yml`, if any.
    YarnBerry {
        yarn_path: Option<String>,
    },
    Pnpm,
    Bun,
}

impl PackageManager {
    pub fn slug(&self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::YarnClassic => "yarn-classic",
            PackageManager::YarnBerry { .. } => "yarn-berry",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Bun => "bun",
        }
    }

    /// The frozen install: the lockfile is the truth, never rewritten.
    pub fn install_command(&self, has_lockfile: bool) -> Vec<String> {
        let words: &[&str] = match self {
            PackageManager::Npm if has_lockfile => &["npm", "ci"],
            PackageManager::Npm => &["npm", "install", "--no-package-lock"],
            PackageManager::YarnClassic => &["corepack", "yarn", "install", "--frozen-lockfile"],
            PackageManager::YarnBerry {
                yarn_path: Some(path),
            } => {
                return vec![
                    "node".into(),
                    path.clone(),
                    "install".into(),
                    "--immutable".into(),
                ]
            }
            PackageManager::YarnBerry { yarn_path: None } => {
                &["corepack", "yarn", "install", "--immutable"]
            }
            PackageManager::Pnpm => &["corepack", "pnpm", "install", "--frozen-lockfile"],
            PackageManager::Bun => &["bun", "install", "--frozen-lockfile"],
        };
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Runs a `package.json` script.
    pub fn run_script(&self, script: &str) -> Vec<String> {
        let words: Vec<&str> = match self {
            PackageManager::Npm => vec!["npm", "run", script],
            PackageManager::YarnClassic | PackageManager::YarnBerry { yarn_path: None } => {
                vec!["corepack", "yarn", "run", script]
            }
            PackageManager::YarnBerry {
                yarn_path: Some(path),
            } => vec!["node", path, "run", script],
            PackageManager::Pnpm => vec!["corepack", "pnpm", "run", script],
            PackageManager::Bun => vec!["bun", "run", script],
        };
        words.into_iter().map(str::to_owned).collect()
    }

    /// Runs a binary from the project's dependencies (`next build`, `astro build`).
    pub fn exec(&self, command: &[&str]) -> Vec<String> {
        let mut words: Vec<String> = match self {
            PackageManager::Npm => vec!["npx".into(), "--no-install".into()],
            PackageManager::YarnClassic | PackageManager::YarnBerry { yarn_path: None } => {
                vec!["corepack".into(), "yarn".into()]
            }
            PackageManager::YarnBerry {
                yarn_path: Some(path),
            } => vec!["node".into(), path.clone()],
            PackageManager::Pnpm => vec!["corepack".into(), "pnpm".into(), "exec".into()],
            PackageManager::Bun => vec!["bunx".into()],
        };
        words.extend(command.iter().map(|w| w.to_string()));
        words
    }
}

/// The lockfiles each manager writes, by file name.
pub(crate) const LOCKFILES: &[(&str, &str)] = &[
    ("package-lock.json", "npm"),
    ("npm-shrinkwrap.json", "npm"),
    ("yarn.lock", "yarn"),
    ("pnpm-lock.yaml", "pnpm"),
    ("bun.lockb", "bun"),
    ("bun.lock", "bun"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageManagerError {
    #[error(
        "{dir} holds lockfiles of different package managers ({found}); delete the stale ones"
    )]
    AmbiguousLockfiles { dir: String, found: String },
    #[error(
        "package.json says packageManager {field:?} but {dir} has {lockfile}; make them agree"
    )]
    Mismatch {
        field: String,
        lockfile: String,
        dir: String,
    },
    #[error(transparent)]
    Read(#[from] RepoFsError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub manager: PackageManager,
    /// Where the install runs, relative to the checkout: the directory holding the
    /// lockfile (a workspace root in a monorepo), else the app's directory.
    pub install_dir: PathBuf,
    /// Relative to the checkout.
    pub lockfile: Option<PathBuf>,
    pub warnings: Vec<Warning>,
}

/// Something worth saying that does not stop a build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// Stable: `missing_lockfile`, `multiple_lockfiles`, `stray_lockfile`, `unknown_output_dir`.
    pub code: &'static str,
    pub message: String,
}

impl PackageManagerError {
    pub fn code(&self) -> &'static str {
        match self {
            PackageManagerError::AmbiguousLockfiles { .. } => "ambiguous_lockfiles",
            PackageManagerError::Mismatch { .. } => "package_manager_lockfile_mismatch",
            PackageManagerError::Read(inner) => inner.code(),
        }
    }
}

fn manager_from_field(field: &str) -> Option<(&'static str, u32)> {
    let (name, version) = field.split_once('@').unwrap_or((field, ""));
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let name = match name {
        "npm" => "npm",
        "yarn" => "yarn",
        "pnpm" => "pnpm",
        "bun" => "bun",
        _ => return None,
    };
    Some((name, major))
}

fn yarn_path(fs: &RepoFs, dir: &Path) -> Result<Option<String>, RepoFsError> {
    let Some(text) = fs.read(&join(dir, Path::new(".yarnrc.yml")), CONFIG_LIMIT)? else {
        return Ok(None);
    };
    Ok(text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("yarnPath:")?;
        Some(value.trim().trim_matches('"').trim_matches('\'').to_owned())
    }))
}

/// Berry lockfiles open with a `__metadata:` block; classic ones never have it.
fn is_berry_lockfile(fs: &RepoFs, path: &Path) -> Result<bool, RepoFsError> {
    Ok(fs
        .read_prefix(path, 4096)?
        .is_some_and(|text| text.contains("__metadata:")))
}

/// Detects the package manager of the app in `app_dir`, looking for lockfiles from
/// there up to the checkout's root. Paths are relative to the checkout.
pub fn detect(
    fs: &RepoFs,
    app_dir: &Path,
    package_json: &Value,
) -> Result<Detected, PackageManagerError> {
    let mut dir = app_dir.to_owned();
    let mut found: Vec<(&str, &str)>;
    loop {
        found = LOCKFILES
            .iter()
            .copied()
            .filter(|(file, _)| fs.is_file(&join(&dir, Path::new(file))))
            .collect();
        if !found.is_empty() || !dir.pop() {
            break;
        }
    }
    let field = package_json.get("packageManager").and_then(Value::as_str);
    let mut warnings = Vec::new();
    let mut kinds: Vec<&str> = found.iter().map(|(_, kind)| *kind).collect();
    kinds.dedup();
    if kinds.len() > 1 {
        // The packageManager field settles it; without it, it is a guess.
        let Some((wanted, _)) = field.and_then(manager_from_field) else {
            return Err(PackageManagerError::AmbiguousLockfiles {
                dir: shown(&dir),
                found: found
                    .iter()
                    .map(|(file, _)| *file)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        warnings.push(Warning {
            code: "multiple_lockfiles",
            message: format!(
                "multiple lockfiles in {}; using {wanted} as packageManager says",
                shown(&dir)
            ),
        });
        found.retain(|(_, kind)| *kind == wanted);
        kinds = vec![wanted];
    }
    let lockfile = found.first().map(|(file, _)| join(&dir, Path::new(file)));
    let from_lock = kinds.first().copied();
    let from_field = field.and_then(manager_from_field);
    if let (Some(lock_kind), Some((field_kind, _))) = (from_lock, from_field) {
        if lock_kind != field_kind {
            return Err(PackageManagerError::Mismatch {
                field: field.unwrap_or_default().to_owned(),
                lockfile: found[0].0.to_owned(),
                dir: shown(&dir),
            });
        }
    }
    let install_dir = if lockfile.is_some() {
        dir.clone()
    } else {
        app_dir.to_owned()
    };
    let kind = from_lock
        .or(from_field.map(|(kind, _)| kind))
        .unwrap_or("npm");
    let manager = match kind {
        "yarn" => {
            let berry = match (&lockfile, from_field) {
                (Some(lock), _) => is_berry_lockfile(fs, lock)?,
                (None, Some((_, major))) => major >= 2,
                (None, None) => false,
            };
            if berry {
                PackageManager::YarnBerry {
                    yarn_path: yarn_path(fs, &install_dir)?,
                }
            } else {
                PackageManager::YarnClassic
            }
        }
        "pnpm" => PackageManager::Pnpm,
        "bun" => PackageManager::Bun,
        _ => PackageManager::Npm,
    };
    if lockfile.is_none() {
        warnings.push(Warning {
            code: "missing_lockfile",
            message: "no lockfile: the install is not reproducible; commit your lockfile"
                .to_owned(),
        });
    }
    Ok(Detected {
        manager,
        install_dir,
        lockfile,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tree;
    use serde_json::json;

    fn detect_in(dir: &Path, app: &str, package: Value) -> Result<Detected, PackageManagerError> {
        detect(&RepoFs::new(dir).unwrap(), Path::new(app), &package)
    }

    #[test]
    fn npm_from_lockfile_or_shrinkwrap() {
        for lock in ["package-lock.json", "npm-shrinkwrap.json"] {
            let dir = tree(&[(lock, "{}")]);
            let found = detect_in(dir.path(), "", json!({})).unwrap();
            assert_eq!(found.manager, PackageManager::Npm);
            assert_eq!(found.manager.install_command(true), ["npm", "ci"]);
        }
    }

    #[test]
    fn yarn_berry_with_committed_release_runs_it() {
        let dir = tree(&[
            ("yarn.lock", "__metadata:\n  version: 8\n"),
            (
                ".yarnrc.yml",
                "nodeLinker: node-modules\nyarnPath: .yarn/releases/yarn-4.12.0.cjs\n",
            ),
        ]);
        let found = detect_in(dir.path(), "", json!({"packageManager": "yarn@4.12.0"})).unwrap();
        assert_eq!(
            found.manager.install_command(true),
            [
                "node",
                ".yarn/releases/yarn-4.12.0.cjs",
                "install",
                "--immutable"
            ]
        );
        assert_eq!(
            found.manager.run_script("build"),
            ["node", ".yarn/releases/yarn-4.12.0.cjs", "run", "build"]
        );
    }

    #[test]
    fn yarn_classic_from_v1_lockfile() {
        let dir = tree(&[("yarn.lock", "# yarn lockfile v1\n")]);
        let found = detect_in(dir.path(), "", json!({})).unwrap();
        assert_eq!(found.manager, PackageManager::YarnClassic);
        assert_eq!(
            found.manager.install_command(true).last().unwrap(),
            "--frozen-lockfile"
        );
    }

    #[test]
    fn pnpm_and_bun() {
        let dir = tree(&[("pnpm-lock.yaml", "")]);
        assert_eq!(
            detect_in(dir.path(), "", json!({})).unwrap().manager,
            PackageManager::Pnpm
        );
        let dir = tree(&[("bun.lockb", "")]);
        assert_eq!(
            detect_in(dir.path(), "", json!({})).unwrap().manager,
            PackageManager::Bun
        );
    }

    #[test]
    fn monorepo_installs_at_the_lockfile() {
        let dir = tree(&[
            ("package-lock.json", "{}"),
            ("apps/backend/package.json", "{}"),
        ]);
        let found = detect_in(dir.path(), "apps/backend", json!({})).unwrap();
        assert_eq!(found.install_dir, Path::new(""));
    }

    #[test]
    fn missing_lockfile_warns_and_uses_npm_install() {
        let dir = tree(&[]);
        let found = detect_in(dir.path(), "", json!({})).unwrap();
        assert_eq!(
            found.manager.install_command(false),
            ["npm", "install", "--no-package-lock"]
        );
        assert_eq!(found.warnings[0].code, "missing_lockfile");
    }

    #[test]
    fn conflicting_signals_are_errors() {
        let dir = tree(&[("package-lock.json", "{}"), ("yarn.lock", "")]);
        assert!(matches!(
            detect_in(dir.path(), "", json!({})),
            Err(PackageManagerError::AmbiguousLockfiles { .. })
        ));
        let dir = tree(&[("package-lock.json", "{}")]);
        let err = detect_in(dir.path(), "", json!({"packageManager": "pnpm@9.1.0"})).unwrap_err();
        assert!(
            err.to_string().contains("pnpm@9.1.0") && err.to_string().contains("package-lock.json"),
            "{err}"
        );
    }
}
