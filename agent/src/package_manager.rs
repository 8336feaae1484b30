//! Which package manager a JavaScript project uses, from its `packageManager` field
//! and lockfiles, and the frozen install and script commands that go with it.
//!
//! pnpm and yarn are not taken from the build image (corepack there may be too old
//! to verify current releases, and registries behind proxies drop the signatures
//! it needs): the build provisions the exact release `packageManager` names with
//! npm, which checks the registry's integrity hash, holds it to the project's own
//! hash when `packageManager` carries one, and puts it first on `PATH`
//! (`Provision`).

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

    /// The manager a `slug` names (a yarn berry without its `yarnPath`).
    pub fn from_slug(slug: &str) -> Option<PackageManager> {
        Some(match slug {
            "npm" => PackageManager::Npm,
            "yarn-classic" => PackageManager::YarnClassic,
            "yarn-berry" => PackageManager::YarnBerry { yarn_path: None },
            "pnpm" => PackageManager::Pnpm,
            "bun" => PackageManager::Bun,
            _ => return None,
        })
    }

    /// The frozen install: the lockfile is the truth, never rewritten.
    pub fn install_command(&self, has_lockfile: bool) -> Vec<String> {
        let words: &[&str] = match self {
            PackageManager::Npm if has_lockfile => &["npm", "ci"],
            PackageManager::Npm => &["npm", "install", "--no-package-lock"],
            PackageManager::YarnClassic => &["yarn", "install", "--frozen-lockfile"],
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
            PackageManager::YarnBerry { yarn_path: None } => &["yarn", "install", "--immutable"],
            PackageManager::Pnpm => &["pnpm", "install", "--frozen-lockfile"],
            // Without a lockfile the frozen form fails; the warning says so.
            PackageManager::Bun if !has_lockfile => &["bun", "install"],
            PackageManager::Bun => &["bun", "install", "--frozen-lockfile"],
        };
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Runs a `package.json` script.
    pub fn run_script(&self, script: &str) -> Vec<String> {
        let words: Vec<&str> = match self {
            PackageManager::Npm => vec!["npm", "run", script],
            PackageManager::YarnClassic | PackageManager::YarnBerry { yarn_path: None } => {
                vec!["yarn", "run", script]
            }
            PackageManager::YarnBerry {
                yarn_path: Some(path),
            } => vec!["node", path, "run", script],
            PackageManager::Pnpm => vec!["pnpm", "run", script],
            PackageManager::Bun => vec!["bun", "run", script],
        };
        words.into_iter().map(str::to_owned).collect()
    }

    /// Runs a binary from the project's dependencies (`next build`, `astro build`).
    pub fn exec(&self, command: &[impl AsRef<str>]) -> Vec<String> {
        let mut words: Vec<String> = match self {
            PackageManager::Npm => vec!["npx".into(), "--no-install".into()],
            PackageManager::YarnClassic | PackageManager::YarnBerry { yarn_path: None } => {
                vec!["yarn".into()]
            }
            PackageManager::YarnBerry {
                yarn_path: Some(path),
            } => vec!["node".into(), path.clone()],
            PackageManager::Pnpm => vec!["pnpm".into(), "exec".into()],
            PackageManager::Bun => vec!["bunx".into()],
        };
        words.extend(command.iter().map(|w| w.as_ref().to_owned()));
        words
    }
}

/// A package manager release the build provides itself, on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    /// The npm package that ships it: `pnpm`, `yarn` (classic), `@yarnpkg/cli-dist`.
    pub package: &'static str,
    /// A version or range, as `packageManager` gives it (checked: `[0-9A-Za-z.+-~^<>=| ]`).
    pub version: String,
    /// `(algorithm, hex digest)` of the release tarball, from `packageManager`'s
    /// `+sha512.…` suffix.
    pub hash: Option<(String, String)>,
}

/// Where provisioned releases live in a build: the job's home, in its workspace.
pub const PROVISION_ROOT: &str = "/kiln/home/.kiln/package-managers";

impl Provision {
    /// `name@version`, the directory and the name a person reads.
    pub fn label(&self) -> String {
        format!(
            "{}@{}",
            self.package.rsplit('/').next().unwrap_or(self.package),
            self.version
        )
    }

    /// Where the release is installed, relative to the build's `$HOME`.
    pub fn home_dir(&self) -> String {
        let root = PROVISION_ROOT.trim_start_matches("/kiln/home/");
        format!("{root}/{}", self.dir_name())
    }

    /// The directory holding the release's binaries, to go first on `PATH`.
    pub fn bin_dir(&self) -> String {
        format!("{PROVISION_ROOT}/{}/node_modules/.bin", self.dir_name())
    }

    fn dir_name(&self) -> String {
        self.label()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "@.+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// The step that provides it: fetch with npm (integrity-checked against the
    /// registry), check the project's own hash, install into the job's home. Run
    /// again, it finds the release in place and does nothing.
    pub fn command(&self) -> Vec<String> {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            PROVISION_SCRIPT.to_owned(),
            "provision".to_owned(),
            format!("{PROVISION_ROOT}/{}", self.dir_name()),
            self.package.to_owned(),
            self.version.clone(),
            self.hash
                .as_ref()
                .map(|(algorithm, _)| algorithm.clone())
                .unwrap_or_default(),
            self.hash
                .as_ref()
                .map(|(_, digest)| digest.clone())
                .unwrap_or_default(),
        ]
    }
}

/// Exit code of the provisioning step when the release does not match the hash
/// `packageManager` gives.
pub const PROVISION_HASH_MISMATCH: i64 = 96;

/// `sh -c` script; arguments (never interpolated into the script): directory,
/// package, version, hash algorithm, hex digest.
const PROVISION_SCRIPT: &str = r#"set -eu
dir=$1 package=$2 version=$3 algorithm=$4 digest=$5
[ -e "$dir/.ready" ] && exit 0
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
tarball=$(npm pack --silent "$package@$version" | tail -n 1)
if [ -n "$digest" ]; then
  echo "$digest  $tarball" | "${algorithm}sum" -c >/dev/null 2>&1 || {
    echo "kiln: $tarball does not match the $algorithm hash in packageManager" >&2
    exit 96
  }
fi
npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix "$dir" "./$tarball"
touch "$dir/.ready"
"#;

/// The lockfiles each manager writes, by file name, in the order one is chosen
/// when several managers' lockfiles sit together (as Vercel and Netlify choose:
/// bun's over the yarn.lock bun also writes, pnpm's, then yarn's over npm's).
pub(crate) const LOCKFILES: &[(&str, &str)] = &[
    ("bun.lockb", "bun"),
    ("bun.lock", "bun"),
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
    ("package-lock.json", "npm"),
    ("npm-shrinkwrap.json", "npm"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageManagerError {
    #[error(
        "package.json says packageManager {field:?} but {dir} has {lockfile}; make them agree"
    )]
    Mismatch {
        field: String,
        lockfile: String,
        dir: String,
    },
    #[error("package.json's packageManager {field:?} is not `name@version` (with an optional +sha512.<hex>); fix it, as corepack would refuse it too")]
    InvalidField { field: String },
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
    /// The release the build provides, for the managers not in the image.
    pub provision: Option<Provision>,
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
            PackageManagerError::Mismatch { .. } => "package_manager_lockfile_mismatch",
            PackageManagerError::InvalidField { .. } => "invalid_package_manager",
            PackageManagerError::Read(inner) => inner.code(),
        }
    }
}

/// `packageManager`, read: the manager, its version (or range) and the hash.
struct Field {
    name: &'static str,
    version: String,
    hash: Option<(String, String)>,
}

impl Field {
    fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads `packageManager` (`pnpm@10.11.1+sha512.abc…`); a value that is there but
/// malformed is an error, since it ends up in a build's commands.
fn read_field(field: &str) -> Result<Option<Field>, PackageManagerError> {
    let invalid = || PackageManagerError::InvalidField {
        field: field.to_owned(),
    };
    let (name, rest) = field.split_once('@').unwrap_or((field, ""));
    let name = match name {
        "npm" => "npm",
        "yarn" => "yarn",
        "pnpm" => "pnpm",
        "bun" => "bun",
        _ => return Ok(None),
    };
    let (version, hash) = match rest.split_once('+') {
        Some((version, hash)) => {
            let (algorithm, digest) = hash.split_once('.').ok_or_else(invalid)?;
            let algorithm_ok = matches!(
                algorithm,
                "sha1" | "sha224" | "sha256" | "sha384" | "sha512"
            );
            if !algorithm_ok || digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid());
            }
            (
                version,
                Some((algorithm.to_owned(), digest.to_ascii_lowercase())),
            )
        }
        None => (rest, None),
    };
    let version_ok = version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
    if !version_ok {
        return Err(invalid());
    }
    Ok(Some(Field {
        name,
        version: version.to_owned(),
        hash,
    }))
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

/// The release to provide for `manager`: `packageManager`'s, or the current one
/// of the major the project's tooling implies.
fn provision(manager: &PackageManager, field: Option<&Field>) -> Option<Provision> {
    let (package, default) = match manager {
        PackageManager::Pnpm => ("pnpm", "10"),
        PackageManager::YarnClassic => ("yarn", "1"),
        PackageManager::YarnBerry { yarn_path: None } => ("@yarnpkg/cli-dist", "4"),
        _ => return None,
    };
    let pinned = field.filter(|field| !field.version.is_empty());
    Some(Provision {
        package,
        version: pinned.map_or(default.to_owned(), |field| field.version.clone()),
        hash: pinned.and_then(|field| field.hash.clone()),
    })
}

/// The package manager of an app in a checkout: in a workspace (package.json
/// `workspaces`, `pnpm-workspace.yaml`) the root's lockfile and `packageManager`
/// rule, and the install runs once, at the root; elsewhere the app's own.
pub fn for_app(
    fs: &RepoFs,
    app_dir: &Path,
    app_package: &Value,
    root_package: Option<&Value>,
) -> Result<Detected, PackageManagerError> {
    let workspace = root_package.is_some_and(|p| p.get("workspaces").is_some())
        || fs.is_file(Path::new("pnpm-workspace.yaml"));
    match root_package {
        Some(root_package) if workspace && !app_dir.as_os_str().is_empty() => {
            detect(fs, Path::new(""), root_package)
        }
        _ => detect(fs, app_dir, app_package),
    }
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
    let raw_field = package_json.get("packageManager").and_then(Value::as_str);
    let field = raw_field.map(read_field).transpose()?.flatten();
    let mut warnings = Vec::new();
    let mut kinds: Vec<&str> = found.iter().map(|(_, kind)| *kind).collect();
    kinds.dedup();
    if kinds.len() > 1 {
        // packageManager settles it; without it, the precedence of LOCKFILES.
        let chosen = match &field {
            Some(field) if kinds.contains(&field.name) => field.name,
            _ => kinds[0],
        };
        warnings.push(Warning {
            code: "multiple_lockfiles",
            message: format!(
                "lockfiles of several package managers in {} ({}); using {chosen}'s, delete the others",
                shown(&dir),
                found
                    .iter()
                    .map(|(file, _)| *file)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        found.retain(|(_, kind)| *kind == chosen);
        kinds = vec![chosen];
    }
    let lockfile = found.first().map(|(file, _)| join(&dir, Path::new(file)));
    let from_lock = kinds.first().copied();
    if let (Some(lock_kind), Some(field)) = (from_lock, &field) {
        if lock_kind != field.name {
            return Err(PackageManagerError::Mismatch {
                field: raw_field.unwrap_or_default().to_owned(),
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
        .or(field.as_ref().map(|field| field.name))
        .unwrap_or("npm");
    let manager = match kind {
        "yarn" => {
            let berry = match (&lockfile, &field) {
                (Some(lock), _) => is_berry_lockfile(fs, lock)?,
                (None, Some(field)) => field.major() >= 2,
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
        provision: provision(&manager, field.as_ref()),
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
    fn lockfiles_of_several_managers_are_chosen_by_precedence_with_a_warning() {
        let dir = tree(&[
            ("package-lock.json", "{}"),
            ("yarn.lock", "# yarn lockfile v1\n"),
        ]);
        let found = detect_in(dir.path(), "", json!({})).unwrap();
        assert_eq!(found.manager, PackageManager::YarnClassic, "yarn over npm");
        assert_eq!(found.warnings[0].code, "multiple_lockfiles");
        let dir = tree(&[("bun.lock", ""), ("yarn.lock", "# yarn lockfile v1\n")]);
        assert_eq!(
            detect_in(dir.path(), "", json!({})).unwrap().manager,
            PackageManager::Bun,
            "bun over the yarn.lock it wrote"
        );
        let found = detect_in(dir.path(), "", json!({"packageManager": "yarn@1.22.22"})).unwrap();
        assert_eq!(
            found.manager,
            PackageManager::YarnClassic,
            "packageManager settles it"
        );
    }

    #[test]
    fn pinned_managers_are_provisioned_with_their_hash() {
        let dir = tree(&[("pnpm-lock.yaml", "lockfileVersion: '9.0'\n")]);
        let found = detect_in(
            dir.path(),
            "",
            json!({"packageManager": "pnpm@10.11.1+sha512.E519b9f7"}),
        )
        .unwrap();
        let provision = found.provision.unwrap();
        assert_eq!(provision.label(), "pnpm@10.11.1");
        assert_eq!(
            provision.hash,
            Some(("sha512".to_owned(), "e519b9f7".to_owned()))
        );
        assert_eq!(
            provision.bin_dir(),
            "/kiln/home/.kiln/package-managers/pnpm@10.11.1/node_modules/.bin"
        );
        assert_eq!(
            found.manager.install_command(true),
            ["pnpm", "install", "--frozen-lockfile"]
        );
        let berry = tree(&[("yarn.lock", "__metadata:\n  version: 8\n")]);
        let found = detect_in(berry.path(), "", json!({})).unwrap();
        assert_eq!(found.provision.unwrap().label(), "cli-dist@4");
        for hostile in ["pnpm@$(touch x)", "pnpm@10+md5.abc", "pnpm@10+sha512.xyz"] {
            let err = detect_in(dir.path(), "", json!({"packageManager": hostile})).unwrap_err();
            assert_eq!(err.code(), "invalid_package_manager", "{hostile}");
        }
    }

    #[test]
    fn bun_without_a_lockfile_installs_unfrozen() {
        assert_eq!(
            PackageManager::Bun.install_command(false),
            ["bun", "install"]
        );
    }

    #[test]
    fn conflicting_signals_are_errors() {
        let dir = tree(&[("package-lock.json", "{}")]);
        let err = detect_in(dir.path(), "", json!({"packageManager": "pnpm@9.1.0"})).unwrap_err();
        assert!(
            err.to_string().contains("pnpm@9.1.0") && err.to_string().contains("package-lock.json"),
            "{err}"
        );
    }
}
