//! Detection of a repository's layout and its storefront: which directory is the
//! Medusa backend, which is the storefront, its framework, the command that builds
//! it, where the output goes, the package manager and the Node version. Every
//! decision carries the signal that made it.
//!
//! The backend is recognised first (`@medusajs/*` dependencies or a
//! `medusa-config.*` file) and never taken for a frontend: its admin build lists
//! vite and react, which is how other detectors call a Medusa backend "Vite".
//! Reads files only; runs nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::package_manager::{self, PackageManager, Warning};

/// The storefront frameworks, in precedence order: the first whose signals match
/// wins, so meta-frameworks come before the bundlers they are built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    Hydrogen,
    ReactRouter,
    Remix,
    Nextjs,
    Gatsby,
    Nuxt,
    Sveltekit,
    Astro,
    Solidstart,
    Qwik,
    Docusaurus,
    Expo,
    Angular,
    VueCli,
    CreateReactApp,
    Vite,
    Storybook,
}

struct Rule {
    framework: Framework,
    slug: &'static str,
    /// Any of these dependencies marks the framework.
    dependencies: &'static [&'static str],
    command: &'static [&'static str],
    /// Output directory when its config does not say otherwise.
    output: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        framework: Framework::Hydrogen,
        slug: "hydrogen",
        dependencies: &["@shopify/hydrogen"],
        command: &["shopify", "hydrogen", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::ReactRouter,
        slug: "react-router",
        dependencies: &["@react-router/dev"],
        command: &["react-router", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Remix,
        slug: "remix",
        dependencies: &["@remix-run/dev"],
        command: &["remix", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Nextjs,
        slug: "nextjs",
        dependencies: &["next"],
        command: &["next", "build"],
        output: ".next",
    },
    Rule {
        framework: Framework::Gatsby,
        slug: "gatsby",
        dependencies: &["gatsby"],
        command: &["gatsby", "build"],
        output: "public",
    },
    Rule {
        framework: Framework::Nuxt,
        slug: "nuxt",
        dependencies: &["nuxt", "nuxt3"],
        command: &["nuxt", "build"],
        output: ".output",
    },
    Rule {
        framework: Framework::Sveltekit,
        slug: "sveltekit",
        dependencies: &["@sveltejs/kit"],
        command: &["vite", "build"],
        output: ".svelte-kit/output",
    },
    Rule {
        framework: Framework::Astro,
        slug: "astro",
        dependencies: &["astro"],
        command: &["astro", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Solidstart,
        slug: "solidstart",
        dependencies: &["@solidjs/start"],
        command: &["vinxi", "build"],
        output: ".output",
    },
    Rule {
        framework: Framework::Qwik,
        slug: "qwik",
        dependencies: &["@builder.io/qwik-city", "@builder.io/qwik"],
        command: &["qwik", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Docusaurus,
        slug: "docusaurus",
        dependencies: &["@docusaurus/core"],
        command: &["docusaurus", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Expo,
        slug: "expo",
        dependencies: &["expo"],
        command: &["expo", "export", "--platform", "web"],
        output: "dist",
    },
    Rule {
        framework: Framework::Angular,
        slug: "angular",
        dependencies: &["@angular/core"],
        command: &["ng", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::VueCli,
        slug: "vue-cli",
        dependencies: &["@vue/cli-service"],
        command: &["vue-cli-service", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::CreateReactApp,
        slug: "create-react-app",
        dependencies: &["react-scripts"],
        command: &["react-scripts", "build"],
        output: "build",
    },
    Rule {
        framework: Framework::Vite,
        slug: "vite",
        dependencies: &["vite"],
        command: &["vite", "build"],
        output: "dist",
    },
    Rule {
        framework: Framework::Storybook,
        slug: "storybook",
        dependencies: &["storybook", "@storybook/react", "@storybook/vue3"],
        command: &["storybook", "build"],
        output: "storybook-static",
    },
];

impl Framework {
    fn rule(self) -> &'static Rule {
        RULES
            .iter()
            .find(|rule| rule.framework == self)
            .expect("every framework has a rule")
    }

    pub fn slug(self) -> &'static str {
        self.rule().slug
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error("no package.json in {dir}")]
    NoPackageJson { dir: String },
    #[error("{path} is not valid JSON (line {line}, column {column}): {message}")]
    InvalidPackageJson {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{dir} uses no storefront framework Kiln knows ({known}); storefronts are built with their framework's own command")]
    NoFrameworkDetected { dir: String, known: String },
    #[error("no storefront found (looked at the root, `<name>-storefront` folders and workspaces); set the project's storefront path if there is one")]
    NoStorefrontFound,
    #[error("two or more storefronts ({candidates}); set the project's storefront path to the one to build")]
    AmbiguousStorefront { candidates: String },
    #[error(transparent)]
    PackageManager(#[from] package_manager::DetectError),
    #[error("{dir} asks for Node {file} in {source_file} but engines.node is {engines:?}; make them agree")]
    NodeVersionConflict {
        dir: String,
        file: String,
        source_file: String,
        engines: String,
    },
}

impl DetectError {
    pub fn code(&self) -> &'static str {
        match self {
            DetectError::NoPackageJson { .. } => "no_package_json",
            DetectError::InvalidPackageJson { .. } => "invalid_package_json",
            DetectError::NoFrameworkDetected { .. } => "no_framework_detected",
            DetectError::NoStorefrontFound => "no_storefront_found",
            DetectError::AmbiguousStorefront { .. } => "ambiguous_storefront",
            DetectError::PackageManager(inner) => inner.code(),
            DetectError::NodeVersionConflict { .. } => "node_version_conflict",
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
    pub framework: Framework,
    /// The framework's command, e.g. `next build`.
    pub build_command: String,
    /// The same, run through the package manager (`npx --no-install next build`).
    pub exec_command: Vec<String>,
    pub output_dir: Option<String>,
    pub package_manager: &'static str,
    pub install_command: String,
    /// `install_command` as argv.
    #[serde(skip)]
    pub install: Vec<String>,
    pub node_version: Option<String>,
    pub backend: Option<Backend>,
    pub warnings: Vec<&'static str>,
    /// Why, one line per decision: "nextjs: dependency `next` in storefront/package.json".
    #[serde(skip)]
    pub reasons: Vec<String>,
    #[serde(skip)]
    pub warning_messages: Vec<Warning>,
}

fn read_package(dir: &Path) -> Result<Option<Value>, DetectError> {
    let path = dir.join("package.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DetectError::InvalidPackageJson {
            path: path.display().to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
}

fn dependencies(package: &Value) -> impl Iterator<Item = &str> {
    ["dependencies", "devDependencies", "peerDependencies"]
        .into_iter()
        .filter_map(|key| package.get(key).and_then(Value::as_object))
        .flat_map(|deps| deps.keys().map(String::as_str))
}

fn relative(root: &Path, dir: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => dir.display().to_string(),
    }
}

/// Why `dir` is a Medusa backend, if it is one.
fn medusa_signal(dir: &Path, package: &Value) -> Option<String> {
    if let Some(dep) = dependencies(package).find(|dep| {
        dep.starts_with("@medusajs/")
            && *dep != "@medusajs/js-sdk"
            && *dep != "@medusajs/types"
            && *dep != "@medusajs/ui"
            && *dep != "@medusajs/icons"
            && *dep != "@medusajs/ui-preset"
    }) {
        return Some(format!("dependency `{dep}`"));
    }
    ["js", "ts", "mjs", "cjs"]
        .iter()
        .map(|ext| format!("medusa-config.{ext}"))
        .find(|file| dir.join(file).is_file())
        .map(|file| format!("file `{file}`"))
}

fn has_config(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["js", "ts", "mjs", "cjs", "mts"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|path| path.is_file())
}

/// Which framework `package` (in `dir`) uses, and the signal.
fn framework_of(dir: &Path, package: &Value) -> Option<(Framework, String)> {
    let deps: Vec<&str> = dependencies(package).collect();
    for rule in RULES {
        let Some(dep) = rule.dependencies.iter().find(|dep| deps.contains(dep)) else {
            continue;
        };
        // Storybook's own builder depends on vite; a Vite app has a vite config.
        if rule.framework == Framework::Vite
            && has_config(dir, "vite.config").is_none()
            && deps
                .iter()
                .any(|d| d.starts_with("@storybook/") || *d == "storybook")
        {
            continue;
        }
        return Some((rule.framework, format!("dependency `{dep}`")));
    }
    None
}

/// The first quoted string after `key` in a config file: enough for the literal
/// settings people write (`outDir: 'build'`, `distDir: "out"`).
fn config_string(text: &str, key: &str) -> Option<String> {
    let at = text.find(key)?;
    let rest = &text[at + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .or_else(|| rest.trim_start().strip_prefix('='))?
        .trim_start();
    let quote = rest
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\'' | '`'))?;
    let end = rest[1..].find(quote)?;
    Some(rest[1..1 + end].to_owned())
}

/// The output directory, from the framework's config where it can be set.
fn output_dir(
    framework: Framework,
    dir: &Path,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Option<String> {
    let read = |stem: &str| {
        has_config(dir, stem)
            .and_then(|path| std::fs::read_to_string(&path).ok().map(|text| (path, text)))
    };
    let from_config = match framework {
        Framework::Nextjs => read("next.config").and_then(|(path, text)| {
            if config_string(&text, "output").as_deref() == Some("export") {
                Some(("out".to_owned(), path))
            } else {
                config_string(&text, "distDir").map(|dist| (dist, path))
            }
        }),
        Framework::Vite | Framework::Sveltekit | Framework::Remix | Framework::ReactRouter => {
            read("vite.config")
                .and_then(|(path, text)| config_string(&text, "outDir").map(|out| (out, path)))
        }
        Framework::Astro => read("astro.config")
            .and_then(|(path, text)| config_string(&text, "outDir").map(|out| (out, path))),
        Framework::VueCli => read("vue.config")
            .and_then(|(path, text)| config_string(&text, "outputDir").map(|out| (out, path))),
        Framework::Angular => {
            let path = dir.join("angular.json");
            let angular: Option<Value> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            angular.and_then(|angular| {
                let projects = angular.get("projects")?.as_object()?;
                let name = angular
                    .get("defaultProject")
                    .and_then(Value::as_str)
                    .or_else(|| projects.keys().next().map(String::as_str))?;
                let options = projects.get(name)?.pointer("/architect/build/options")?;
                let output = options.get("outputPath")?;
                let out = output.as_str().map(str::to_owned).or_else(|| {
                    output
                        .get("base")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })?;
                Some((out, path))
            })
        }
        _ => None,
    };
    if let Some((out, path)) = from_config {
        reasons.push(format!(
            "output {out}: set in {}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        return Some(out.trim_start_matches("./").to_owned());
    }
    if framework == Framework::Sveltekit {
        warnings.push(Warning {
            code: "unknown_output_dir",
            message: "SvelteKit's output depends on its adapter; assuming .svelte-kit/output"
                .to_owned(),
        });
    }
    let default = framework.rule().output.to_owned();
    reasons.push(format!("output {default}: {}'s default", framework.slug()));
    Some(default)
}

/// Workspace globs from package.json (`workspaces`) and pnpm-workspace.yaml, plus
/// the conventional `apps/*` and `packages/*`.
fn workspace_dirs(root: &Path, package: Option<&Value>) -> Vec<PathBuf> {
    let mut patterns: Vec<String> = vec!["apps/*".into(), "packages/*".into()];
    if let Some(package) = package {
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
    if let Ok(text) = std::fs::read_to_string(root.join("pnpm-workspace.yaml")) {
        patterns.extend(
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("- "))
                .map(|p| p.trim().trim_matches(['"', '\'']).to_owned()),
        );
    }
    let mut dirs = Vec::new();
    for pattern in patterns {
        let pattern = pattern.trim_end_matches('/');
        match pattern.strip_suffix("/*") {
            Some(parent) => {
                if let Ok(entries) = std::fs::read_dir(root.join(parent)) {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.join("package.json").is_file())
                        .collect();
                    found.sort();
                    dirs.extend(found);
                }
            }
            None => {
                let dir = root.join(pattern);
                if dir.join("package.json").is_file() {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Node version wanted: `.nvmrc` / `.node-version` (in the app, then the root), and
/// `engines.node`; a file that contradicts engines is an error.
fn node_version(
    root: &Path,
    app: &Path,
    package: &Value,
    reasons: &mut Vec<String>,
) -> Result<Option<String>, DetectError> {
    let engines = package
        .pointer("/engines/node")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let file = [app, root]
        .iter()
        .flat_map(|dir| [".nvmrc", ".node-version"].map(|name| dir.join(name)))
        .find_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let version = text.trim().trim_start_matches('v').to_owned();
            (!version.is_empty()).then_some((version, path))
        });
    match (file, engines) {
        (Some((version, path)), engines) => {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if let (Some(engines), Some(major)) = (
                &engines,
                version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u64>().ok()),
            ) {
                if !major_satisfies(major, engines) {
                    return Err(DetectError::NodeVersionConflict {
                        dir: relative(root, app),
                        file: version,
                        source_file: name,
                        engines: engines.clone(),
                    });
                }
            }
            reasons.push(format!("node {version}: {name}"));
            Ok(Some(version))
        }
        (None, Some(engines)) => {
            reasons.push(format!("node {engines}: engines.node"));
            Ok(Some(engines))
        }
        (None, None) => Ok(None),
    }
}

/// Whether some `major.x.y` can satisfy an npm range, judged on majors: enough to
/// catch `.nvmrc` 18 against `engines.node` ">=20".
fn major_satisfies(major: u64, range: &str) -> bool {
    range.split("||").any(|alternative| {
        alternative.split_whitespace().all(|comparator| {
            let (op, version) = comparator
                .find(|c: char| c.is_ascii_digit())
                .map(|i| comparator.split_at(i))
                .unwrap_or(("", comparator));
            let Some(wanted) = version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u64>().ok())
            else {
                return true;
            };
            match op {
                ">=" => major >= wanted,
                ">" => major > wanted || (major == wanted && version.contains('.')),
                "<=" => major <= wanted,
                "<" => {
                    major < wanted
                        || (major == wanted
                            && version.split('.').skip(1).any(|p| p != "0" && p != "x"))
                }
                "^" | "~" | "=" | "" | "v" => major == wanted,
                _ => true,
            }
        })
    })
}

/// Detects the storefront of the checkout at `root`; `backend_path` and
/// `storefront_path` are the project's settings, when it has them.
pub fn detect(
    root: &Path,
    backend_path: Option<&str>,
    storefront_path: Option<&str>,
) -> Result<Detection, DetectError> {
    let mut reasons = Vec::new();
    let root_package = read_package(root)?;

    // 1. The backend, recognised before any frontend rule.
    let mut backend = None;
    let backend_candidates: Vec<PathBuf> = match backend_path {
        Some(path) => vec![root.join(path)],
        None => std::iter::once(root.to_owned())
            .chain(workspace_dirs(root, root_package.as_ref()))
            .chain(child_dirs(root))
            .collect(),
    };
    for dir in backend_candidates {
        if let Some(package) = read_package(&dir)? {
            if let Some(signal) = medusa_signal(&dir, &package) {
                reasons.push(format!(
                    "backend: Medusa, {signal} in {}",
                    relative(root, &dir.join("package.json"))
                ));
                backend = Some(dir);
                break;
            }
        }
    }

    // 2. The storefront: configured, else the single frontend app found.
    let (app_dir, package, framework, signal) = match storefront_path {
        Some(path) => {
            let dir = root.join(path);
            let package = read_package(&dir)?.ok_or_else(|| DetectError::NoPackageJson {
                dir: relative(root, &dir),
            })?;
            let (framework, signal) =
                framework_of(&dir, &package).ok_or_else(|| DetectError::NoFrameworkDetected {
                    dir: relative(root, &dir),
                    known: RULES
                        .iter()
                        .map(|rule| rule.slug)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            reasons.push(format!(
                "storefront: {} (the project's storefront path)",
                relative(root, &dir)
            ));
            (dir, package, framework, signal)
        }
        None => {
            let dirs: Vec<PathBuf> = std::iter::once(root.to_owned())
                .chain(storefront_siblings(root))
                .chain(workspace_dirs(root, root_package.as_ref()))
                .collect();
            if !dirs.iter().any(|dir| dir.join("package.json").is_file()) {
                return Err(DetectError::NoPackageJson {
                    dir: ".".to_owned(),
                });
            }
            let mut candidates = Vec::new();
            let mut seen = Vec::new();
            for dir in dirs {
                if seen.contains(&dir) || Some(&dir) == backend.as_ref() {
                    continue;
                }
                seen.push(dir.clone());
                let Some(package) = read_package(&dir)? else {
                    continue;
                };
                if medusa_signal(&dir, &package).is_some() {
                    continue;
                }
                if let Some((framework, signal)) = framework_of(&dir, &package) {
                    candidates.push((dir, package, framework, signal));
                }
            }
            match candidates.len() {
                0 => return Err(DetectError::NoStorefrontFound),
                1 => candidates.remove(0),
                _ => {
                    return Err(DetectError::AmbiguousStorefront {
                        candidates: candidates
                            .iter()
                            .map(|(dir, _, framework, _)| {
                                format!("{} ({})", relative(root, dir), framework.slug())
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
    };
    reasons.push(format!(
        "{}: {signal} in {}",
        framework.slug(),
        relative(root, &app_dir.join("package.json"))
    ));

    // 3. Package manager, install, output, Node.
    // In a workspace the root's lockfile and packageManager rule the install.
    let is_workspace = root_package
        .as_ref()
        .is_some_and(|p| p.get("workspaces").is_some())
        || root.join("pnpm-workspace.yaml").is_file();
    let detected = match (&root_package, is_workspace && app_dir != root) {
        (Some(root_package), true) => package_manager::detect(root, root, root_package)?,
        _ => package_manager::detect(&app_dir, root, &package)?,
    };
    let mut warnings = detected.warnings.clone();
    if let Some(lockfile) = &detected.lockfile {
        reasons.push(format!(
            "{}: {}",
            detected.manager.slug(),
            relative(root, lockfile)
        ));
        // A lockfile in the app beside the workspace root's is never used.
        if detected.install_dir != app_dir {
            for file in [
                "package-lock.json",
                "npm-shrinkwrap.json",
                "yarn.lock",
                "pnpm-lock.yaml",
                "bun.lockb",
                "bun.lock",
            ] {
                if app_dir.join(file).is_file() {
                    warnings.push(Warning {
                        code: "stray_lockfile",
                        message: format!(
                            "{} is ignored: the install runs at {}",
                            relative(root, &app_dir.join(file)),
                            relative(root, &detected.install_dir)
                        ),
                    });
                }
            }
        }
    }
    let output = output_dir(framework, &app_dir, &mut reasons, &mut warnings);
    let node_version = node_version(root, &app_dir, &package, &mut reasons)?;
    let rule = framework.rule();
    let exec_command = exec(&detected.manager, rule.command);
    Ok(Detection {
        app_dir: relative(root, &app_dir),
        install_dir: relative(root, &detected.install_dir),
        framework,
        build_command: rule.command.join(" "),
        exec_command,
        output_dir: output,
        package_manager: detected.manager.slug(),
        install_command: detected
            .manager
            .install_command(detected.lockfile.is_some())
            .join(" "),
        install: detected
            .manager
            .install_command(detected.lockfile.is_some()),
        node_version,
        backend: backend.map(|dir| Backend {
            dir: relative(root, &dir),
            kind: "medusa",
        }),
        warnings: warnings.iter().map(|w| w.code).collect(),
        reasons,
        warning_messages: warnings,
    })
}

fn exec(manager: &PackageManager, command: &[&str]) -> Vec<String> {
    manager.exec(command)
}

fn child_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("package.json").is_file() && !p.ends_with("node_modules"))
        .collect();
    dirs.sort();
    dirs
}

/// `<name>-storefront` folders, as older create-medusa-app made beside `<name>`.
fn storefront_siblings(root: &Path) -> Vec<PathBuf> {
    child_dirs(root)
        .into_iter()
        .filter(|dir| {
            dir.file_name()
                .is_some_and(|name| name.to_string_lossy().ends_with("-storefront"))
        })
        .collect()
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
            let found = detect(dir.path(), None, None).unwrap_or_else(|e| panic!("{slug}: {e}"));
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
        assert_eq!(
            found.exec_command,
            ["corepack", "pnpm", "exec", "remix", "build"]
        );
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
            matches!(err, DetectError::InvalidPackageJson { line: 4, .. }),
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
        let locks = tree(&[
            ("package.json", &app(r#""next": "15""#)),
            ("package-lock.json", "{}"),
            ("pnpm-lock.yaml", ""),
        ]);
        assert_eq!(
            detect(locks.path(), None, None).unwrap_err().code(),
            "ambiguous_lockfiles"
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

    #[test]
    fn npm_ranges_are_judged_on_majors() {
        assert!(major_satisfies(20, ">=20"));
        assert!(!major_satisfies(18, ">=20"));
        assert!(major_satisfies(22, "^20 || ^22"));
        assert!(!major_satisfies(21, "^20 || ^22"));
        assert!(major_satisfies(20, "20.x"));
        assert!(major_satisfies(20, ">=18 <21"));
        assert!(!major_satisfies(21, ">=18 <21"));
    }
}
