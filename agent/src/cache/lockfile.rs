//! A component's part of a workspace's shared lockfile: the entries its own
//! dependencies resolve to, through each other and through the workspace
//! packages it links, with the lockfile's settings. A change to the other
//! component's dependencies leaves it alone, so its output is reused (Vercel
//! and Turborepo read lockfiles the same way). pnpm's `pnpm-lock.yaml` (v6 to
//! v9) and npm's `package-lock.json` (v2, v3) at the repository's root are read
//! from the commit; any other lockfile counts whole.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Component as PathComponent, Path, PathBuf};

use yaml_rust2::Yaml;

/// The most of a lockfile read.
const MAX_LOCKFILE: usize = 64 << 20;

/// The root lockfile and the text of `component_dir`'s part of it, or `None`
/// when there is no lockfile this reads, or the component is not one of its
/// workspace members (then the lockfile counts whole).
pub fn component_part(
    read: impl Fn(&str) -> Option<String>,
    component_dir: &Path,
) -> Option<(PathBuf, String)> {
    let dir = normal(component_dir)?;
    if let Some(text) = read("pnpm-lock.yaml").filter(|text| text.len() <= MAX_LOCKFILE) {
        return pnpm_part(&text, &dir).map(|part| ("pnpm-lock.yaml".into(), part));
    }
    if let Some(text) = read("package-lock.json").filter(|text| text.len() <= MAX_LOCKFILE) {
        return npm_part(&text, &dir).map(|part| ("package-lock.json".into(), part));
    }
    None
}

/// `apps/backend` as the lockfiles write it; `None` for the root or a path
/// that leaves the repository.
fn normal(dir: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for part in dir.components() {
        match part {
            PathComponent::Normal(name) => parts.push(name.to_str()?.to_owned()),
            PathComponent::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `a/b/../c` → `a/c`; `None` if it leaves the root.
fn resolve(base: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = base
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

fn pnpm_part(text: &str, dir: &str) -> Option<String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    let lock = docs.first()?.as_hash()?;
    let section = |name: &str| {
        lock.get(&Yaml::String(name.to_owned()))
            .and_then(Yaml::as_hash)
    };
    let importers = section("importers")?;
    let importer = |path: &str| importers.get(&Yaml::String(path.to_owned()));
    importer(dir)?;
    let packages = section("packages");
    // v9 keeps each resolved copy's dependencies in `snapshots`; v6 in `packages`
    // under `/name@version`.
    let snapshots = section("snapshots");
    let mut part: BTreeMap<String, String> = BTreeMap::new();
    // Everything but the three dependency sections counts whole: settings,
    // overrides, patched dependencies, catalogs, the version.
    for (key, value) in lock {
        let key = key.as_str().unwrap_or_default();
        if !matches!(key, "importers" | "packages" | "snapshots") {
            part.insert(format!("lock {key}"), format!("{value:?}"));
        }
    }
    let mut importers_to_visit: VecDeque<String> = VecDeque::from([dir.to_owned(), ".".to_owned()]);
    let mut seen_importers: BTreeSet<String> = BTreeSet::new();
    let mut resolved: VecDeque<String> = VecDeque::new();
    let dependency_sections = ["dependencies", "devDependencies", "optionalDependencies"];
    while let Some(path) = importers_to_visit.pop_front() {
        if !seen_importers.insert(path.clone()) {
            continue;
        }
        let Some(entry) = importer(&path) else {
            continue;
        };
        part.insert(format!("importer {path}"), format!("{entry:?}"));
        for section in dependency_sections {
            let Some(deps) = entry[section].as_hash() else {
                continue;
            };
            for (name, spec) in deps {
                let version = spec["version"]
                    .as_str()
                    .or_else(|| spec.as_str())
                    .unwrap_or_default();
                match version.strip_prefix("link:") {
                    Some(target) => importers_to_visit.extend(resolve(&path, target)),
                    None => resolved
                        .push_back(format!("{}@{version}", name.as_str().unwrap_or_default())),
                }
            }
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some(key) = resolved.pop_front() {
        if !seen.insert(key.clone()) {
            continue;
        }
        // `name@1.2.3(peer@4)`: its package is `name@1.2.3`.
        let base = key.split('(').next().unwrap_or(&key).to_owned();
        let found = |map: Option<&yaml_rust2::yaml::Hash>, key: &str| {
            map.and_then(|map| map.get(&Yaml::String(key.to_owned())))
                .cloned()
        };
        let package = found(packages, &base).or_else(|| found(packages, &format!("/{base}")));
        let snapshot = found(snapshots, &key).or_else(|| found(packages, &format!("/{key}")));
        if let Some(package) = &package {
            part.insert(format!("package {base}"), format!("{package:?}"));
        }
        let Some(snapshot) = snapshot.or(package) else {
            // Unknown to the lockfile: name it, so a change is still seen.
            part.insert(format!("missing {key}"), String::new());
            continue;
        };
        part.insert(format!("snapshot {key}"), format!("{snapshot:?}"));
        for section in ["dependencies", "optionalDependencies"] {
            for (name, version) in snapshot[section].as_hash().into_iter().flatten() {
                let (Some(name), Some(version)) = (name.as_str(), version.as_str()) else {
                    continue;
                };
                resolved.push_back(format!("{name}@{version}"));
            }
        }
    }
    Some(render(&part))
}

fn npm_part(text: &str, dir: &str) -> Option<String> {
    let lock: serde_json::Value = serde_json::from_str(text).ok()?;
    let packages = lock.get("packages")?.as_object()?;
    packages.get(dir)?;
    let mut part: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in lock.as_object()? {
        if key != "packages" && key != "dependencies" {
            part.insert(format!("lock {key}"), value.to_string());
        }
    }
    // Node's resolution: `name` from the package at `at` is the first of
    // `<dir>/node_modules/name` for `at` and each folder above it that is not
    // itself a `node_modules`.
    let find = |at: &str, name: &str| -> Option<String> {
        let parts: Vec<&str> = at.split('/').filter(|part| !part.is_empty()).collect();
        (0..=parts.len()).rev().find_map(|len| {
            if len > 0 && parts[len - 1] == "node_modules" {
                return None;
            }
            let candidate = match len {
                0 => format!("node_modules/{name}"),
                _ => format!("{}/node_modules/{name}", parts[..len].join("/")),
            };
            packages.contains_key(&candidate).then_some(candidate)
        })
    };
    let mut queue: VecDeque<String> = VecDeque::from([dir.to_owned(), String::new()]);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(entry) = packages.get(&path) else {
            continue;
        };
        part.insert(format!("package {path}"), entry.to_string());
        // A workspace member's link: its target's entry counts too.
        if entry.get("link").and_then(serde_json::Value::as_bool) == Some(true) {
            if let Some(target) = entry.get("resolved").and_then(serde_json::Value::as_str) {
                queue.push_back(target.to_owned());
            }
            continue;
        }
        for section in [
            "dependencies",
            "devDependencies",
            "optionalDependencies",
            "peerDependencies",
        ] {
            for name in entry
                .get(section)
                .and_then(serde_json::Value::as_object)
                .into_iter()
                .flat_map(|deps| deps.keys())
            {
                match find(&path, name) {
                    Some(found) => queue.push_back(found),
                    None => {
                        part.insert(format!("missing {path} {name}"), String::new());
                    }
                }
            }
        }
    }
    Some(render(&part))
}

fn render(part: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (key, value) in part {
        text.push_str(key);
        text.push('\t');
        text.push_str(value);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNPM: &str = r#"lockfileVersion: '9.0'

settings:
  autoInstallPeers: true

importers:

  .:
    devDependencies:
      turbo:
        specifier: 2.5.8
        version: 2.5.8

  apps/backend:
    dependencies:
      '@medusajs/medusa':
        specifier: 2.15.3
        version: 2.15.3(react@18.3.1)
      '@acme/utils':
        specifier: workspace:*
        version: link:../../packages/utils

  apps/storefront:
    dependencies:
      next:
        specifier: 15.0.0
        version: 15.0.0(react@18.3.1)

  packages/utils:
    dependencies:
      dayjs:
        specifier: ^1.11.0
        version: 1.11.13

packages:

  '@medusajs/medusa@2.15.3':
    resolution: {integrity: sha512-medusa}

  dayjs@1.11.13:
    resolution: {integrity: sha512-dayjs}

  next@15.0.0:
    resolution: {integrity: sha512-next}

  react@18.3.1:
    resolution: {integrity: sha512-react}

  turbo@2.5.8:
    resolution: {integrity: sha512-turbo}

snapshots:

  '@medusajs/medusa@2.15.3(react@18.3.1)':
    dependencies:
      react: 18.3.1

  dayjs@1.11.13: {}

  next@15.0.0(react@18.3.1):
    dependencies:
      react: 18.3.1

  react@18.3.1: {}

  turbo@2.5.8: {}
"#;

    fn part(text: &str, file: &str, dir: &str) -> String {
        component_part(
            |name| (name == file).then(|| text.to_owned()),
            Path::new(dir),
        )
        .unwrap()
        .1
    }

    #[test]
    fn a_pnpm_bump_of_the_storefronts_next_leaves_the_backends_part_alone() {
        let backend = part(PNPM, "pnpm-lock.yaml", "apps/backend");
        assert!(backend.contains("dayjs@1.11.13") && backend.contains("turbo@2.5.8"));
        assert!(!backend.contains("next@15"), "{backend}");
        let bumped = PNPM
            .replace(
                "version: 15.0.0(react@18.3.1)",
                "version: 15.1.0(react@18.3.1)",
            )
            .replace("next@15.0.0", "next@15.1.0");
        assert_eq!(part(&bumped, "pnpm-lock.yaml", "apps/backend"), backend);
        assert_ne!(
            part(&bumped, "pnpm-lock.yaml", "apps/storefront"),
            part(PNPM, "pnpm-lock.yaml", "apps/storefront")
        );
        // A transitive change through a linked workspace package reaches it.
        let dayjs = PNPM.replace("sha512-dayjs", "sha512-dayjs-2");
        assert_ne!(part(&dayjs, "pnpm-lock.yaml", "apps/backend"), backend);
        // As does a shared one, and the settings.
        let react = PNPM.replace("sha512-react", "sha512-react-2");
        assert_ne!(part(&react, "pnpm-lock.yaml", "apps/backend"), backend);
        let settings = PNPM.replace("autoInstallPeers: true", "autoInstallPeers: false");
        assert_ne!(part(&settings, "pnpm-lock.yaml", "apps/backend"), backend);
        // The root, or a folder that is not a workspace member: the whole file.
        assert!(component_part(|_| Some(PNPM.to_owned()), Path::new("")).is_none());
        assert!(component_part(|_| Some(PNPM.to_owned()), Path::new("docs")).is_none());
    }

    #[test]
    fn an_npm_bump_of_the_storefronts_dependency_leaves_the_backends_part_alone() {
        let lock = serde_json::json!({
            "name": "shop", "lockfileVersion": 3, "requires": true,
            "packages": {
                "": {"name": "shop", "workspaces": ["apps/*"], "devDependencies": {"turbo": "2.5.8"}},
                "apps/backend": {"name": "backend", "dependencies": {"@medusajs/medusa": "2.15.3", "@acme/utils": "*"}},
                "apps/storefront": {"name": "storefront", "dependencies": {"next": "15.0.0"}},
                "packages/utils": {"name": "@acme/utils", "dependencies": {"dayjs": "^1"}},
                "node_modules/@acme/utils": {"resolved": "packages/utils", "link": true},
                "node_modules/@medusajs/medusa": {"version": "2.15.3", "integrity": "sha512-medusa", "dependencies": {"react": "18"}},
                "node_modules/react": {"version": "18.3.1", "integrity": "sha512-react"},
                "node_modules/dayjs": {"version": "1.11.13", "integrity": "sha512-dayjs"},
                "node_modules/turbo": {"version": "2.5.8", "integrity": "sha512-turbo"},
                "apps/storefront/node_modules/next": {"version": "15.0.0", "integrity": "sha512-next", "dependencies": {"react": "18"}}
            }
        })
        .to_string();
        let backend = part(&lock, "package-lock.json", "apps/backend");
        assert!(backend.contains("node_modules/dayjs") && backend.contains("node_modules/react"));
        assert!(!backend.contains("next"), "{backend}");
        let bumped = lock.replace("sha512-next", "sha512-next-2");
        assert_eq!(part(&bumped, "package-lock.json", "apps/backend"), backend);
        assert_ne!(
            part(&bumped, "package-lock.json", "apps/storefront"),
            part(&lock, "package-lock.json", "apps/storefront")
        );
        let dayjs = lock.replace("sha512-dayjs", "sha512-dayjs-2");
        assert_ne!(part(&dayjs, "package-lock.json", "apps/backend"), backend);
    }

    /// The real pnpm 10 lockfile of the acceptance monorepo (12,000 lines):
    /// the backend's part holds Medusa and not Next.js, the storefront's the
    /// other way round, and a bump of the storefront's Next.js leaves the
    /// backend's part as it was.
    #[test]
    fn the_real_monorepo_lockfile_splits_between_its_apps() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/accept/medusa-monorepo/pnpm-lock.yaml"),
        )
        .unwrap();
        let backend = part(&text, "pnpm-lock.yaml", "apps/backend");
        let storefront = part(&text, "pnpm-lock.yaml", "apps/storefront");
        assert!(backend.contains("package @medusajs/medusa@2.15.3\t"));
        assert!(
            !backend.contains("package next@"),
            "Next.js in the backend's part"
        );
        assert!(storefront.contains("package next@15.5.29\t"));
        assert!(!storefront.contains("package @medusajs/medusa@"));
        assert!(!backend.contains("missing ") && !storefront.contains("missing "));
        let bumped = text.replace("next@15.5.29", "next@15.5.30");
        assert_eq!(part(&bumped, "pnpm-lock.yaml", "apps/backend"), backend);
        assert_ne!(
            part(&bumped, "pnpm-lock.yaml", "apps/storefront"),
            storefront
        );
    }

    /// A repository's lockfile is hostile input: malformed, of the wrong
    /// shape, or linking out of the repository, it counts whole or is refused,
    /// never followed.
    #[test]
    fn hostile_lockfiles_count_whole() {
        for text in [
            "{{{{ not yaml",
            "importers: [1, 2]",
            "- a\n- b\n",
            "importers:\n  apps/backend: 7\n",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            let found = component_part(
                |name| (name == "pnpm-lock.yaml").then(|| text.to_owned()),
                Path::new("apps/backend"),
            );
            assert!(found.is_none() || text.contains("apps/backend"), "{text:?}");
        }
        for text in [
            "not json",
            r#"{"packages": 3}"#,
            r#"{"packages": {"apps/backend": 1}}"#,
        ] {
            let _ = component_part(
                |name| (name == "package-lock.json").then(|| text.to_owned()),
                Path::new("apps/backend"),
            );
        }
        // A link out of the repository is not followed.
        let escaping = "importers:\n  apps/backend:\n    dependencies:\n      x:\n        specifier: link:../../../etc\n        version: link:../../../etc\n";
        let part = part(escaping, "pnpm-lock.yaml", "apps/backend");
        let importers: Vec<&str> = part
            .lines()
            .filter(|line| line.starts_with("importer "))
            .map(|line| line.split('\t').next().unwrap())
            .collect();
        assert_eq!(importers, ["importer apps/backend"], "{part}");
    }

    #[test]
    fn paths_resolve_inside_the_repository_only() {
        assert_eq!(
            resolve("apps/backend", "../../packages/utils").as_deref(),
            Some("packages/utils")
        );
        assert_eq!(resolve("apps/backend", "../../../etc"), None);
        assert_eq!(
            normal(Path::new("./apps/backend")).as_deref(),
            Some("apps/backend")
        );
        assert_eq!(normal(Path::new("../x")), None);
    }
}
